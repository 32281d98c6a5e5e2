import CProcessPoolShim
import Glibc

/// The worker's blocking side of the stream: whole writes, EINTR-safe reads.
struct WorkerStream {
    /// Where frames come from.
    let fd: Int32
    /// Where frames go (the same descriptor for a socket; stdout's copy over ssh).
    let output: Int32
    private var isSocket = true
    private var inputIsSocket = true

    init(fd: Int32) {
        self.init(input: fd, output: fd)
    }

    init(input: Int32, output: Int32) {
        self.fd = input
        self.output = output
        for d in Set([input, output]) {
            _ = cpp_set_nonblocking(d, 0)
            _ = cpp_set_cloexec(d, 1)
            cpp_set_socket_buffers(d, WireProtocol.socketBufferBytes)
        }
    }

    /// Writes all of `bytes`; false if the parent is gone.
    mutating func writeAll(_ bytes: UnsafeRawBufferPointer) -> Bool {
        var offset = 0
        while offset < bytes.count {
            let base = bytes.baseAddress! + offset
            let left = bytes.count - offset
            var n = isSocket ? cpp_send_nosignal(output, base, left) : Glibc.write(output, base, left)
            if n < 0 && errno == ENOTSOCK && isSocket {
                isSocket = false
                signal(SIGPIPE, SIG_IGN)
                n = Glibc.write(output, base, left)
            }
            if n < 0 {
                if errno == EINTR { continue }
                return false
            }
            offset += n
        }
        return true
    }

    mutating func writeAll(_ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { writeAll($0) }
    }

    /// Reads into `buffer`; 0 at EOF, -1 on error. A read of 1 MiB or more
    /// (the rest of an attachment) waits for the whole buffer, so the kernel
    /// fills it in one call rather than one socket buffer per wake-up.
    mutating func read(into buffer: UnsafeMutableRawBufferPointer) -> Int {
        while true {
            if inputIsSocket && buffer.count >= 1 << 20 {
                let n = recv(fd, buffer.baseAddress, buffer.count, Int32(MSG_WAITALL))
                if n >= 0 { return n }
                if errno == EINTR { continue }
                if errno != ENOTSOCK { return n }
                inputIsSocket = false  // a pipe (stdin over ssh): plain reads
            }
            let n = Glibc.read(fd, buffer.baseAddress, buffer.count)
            if n < 0 && errno == EINTR { continue }
            return n
        }
    }
}
