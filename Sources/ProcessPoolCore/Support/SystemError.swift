import Glibc

/// A failed system call: its name and errno, with the C library's text.
package struct SystemError: Error, CustomStringConvertible, Sendable {
    package var call: String
    package var errno: Int32

    package init(_ call: String, errno: Int32 = Glibc.errno) {
        self.call = call
        self.errno = errno
    }

    package var description: String {
        "\(call) failed: \(String(cString: strerror(errno))) (errno \(errno))"
    }
}

/// Closes a descriptor, retrying on EINTR is wrong on Linux: close once.
@inline(__always)
package func closeDescriptor(_ fd: Int32) {
    if fd >= 0 { _ = Glibc.close(fd) }
}

/// The name of a signal ("SIGKILL"), or "signal N".
package func signalName(_ signal: Int32) -> String { SignalNames.name(signal) }
