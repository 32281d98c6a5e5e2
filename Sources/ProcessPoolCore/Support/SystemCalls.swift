import CProcessPoolShim
import Glibc

/// The one place that makes the system calls the pool repeats everywhere:
/// EINTR is retried here and only here, results come back as values that
/// say what happened (bytes, would block, end of stream, failure), and a
/// child's status is decoded once.
///
/// In the manner of swift-nio's `NIOPosix/System.swift`. apple/swift-system
/// was considered: its `FileDescriptor` covers plain `read`/`write`, but
/// not what the pool mostly needs (socket calls with `MSG_NOSIGNAL` and
/// `MSG_WAITALL`, descriptor passing, `waitpid`, pidfds), so it would not
/// remove this layer, only add a dependency beside it.
package enum Syscall {
    /// What a read or write came to.
    package enum IO: Equatable {
        /// This many bytes moved (> 0).
        case bytes(Int)
        /// A non-blocking descriptor has nothing now (EAGAIN).
        case wouldBlock
        /// The peer closed the stream (a read of 0).
        case endOfStream
        /// The call failed with this errno.
        case failed(Int32)
    }

    /// Runs `call` until it does not fail with EINTR; returns its result
    /// with errno as the call left it.
    @inline(__always)
    package static func retrying<R: BinaryInteger>(_ call: () -> R) -> R {
        while true {
            let result = call()
            if result < 0 && errno == EINTR { continue }
            return result
        }
    }

    @inline(__always)
    private static func classify(_ n: Int) -> IO {
        if n > 0 { return .bytes(n) }
        if n == 0 { return .endOfStream }
        let failure = errno
        return failure == EAGAIN || failure == EWOULDBLOCK ? .wouldBlock : .failed(failure)
    }

    /// `read(2)` into `buffer`.
    @inline(__always)
    package static func read(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer) -> IO {
        guard buffer.count > 0 else { return .bytes(0) }
        return classify(retrying { Glibc.read(fd, buffer.baseAddress, buffer.count) })
    }

    /// `recv(2)` into `buffer` with `flags` (e.g. `MSG_WAITALL`, `MSG_DONTWAIT`).
    @inline(__always)
    package static func receive(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, flags: Int32 = 0) -> IO {
        guard buffer.count > 0 else { return .bytes(0) }
        return classify(retrying { Glibc.recv(fd, buffer.baseAddress, buffer.count, flags) })
    }

    /// `send(2)` with `MSG_NOSIGNAL` (a closed peer is EPIPE, never SIGPIPE).
    @inline(__always)
    package static func send(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> IO {
        guard bytes.count > 0 else { return .bytes(0) }
        return classify(retrying { cpp_send_nosignal(fd, bytes.baseAddress, bytes.count) })
    }

    /// `write(2)` (for pipes, which `send` refuses with ENOTSOCK).
    @inline(__always)
    package static func write(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> IO {
        guard bytes.count > 0 else { return .bytes(0) }
        return classify(retrying { Glibc.write(fd, bytes.baseAddress, bytes.count) })
    }

    /// `poll(2)`, retried on EINTR; the number of ready descriptors or -1.
    package static func poll(_ fds: inout [pollfd], timeoutMilliseconds: Int32) -> Int32 {
        let count = nfds_t(fds.count)
        return fds.withUnsafeMutableBufferPointer { buffer in
            retrying { Glibc.poll(buffer.baseAddress, count, timeoutMilliseconds) }
        }
    }

    /// What `waitpid` found.
    package enum Wait: Equatable {
        /// The child still runs (`WNOHANG`).
        case running
        /// The child ended so, and is reaped.
        case ended(WorkerExit)
        /// waitpid failed with this errno (e.g. ECHILD: someone else reaped it).
        case failed(Int32)
    }

    /// `waitpid(pid)`, blocking or not, with the status decoded.
    package static func wait(for pid: pid_t, blocking: Bool) -> Wait {
        var status: Int32 = 0
        let result = retrying { waitpid(pid, &status, blocking ? 0 : WNOHANG) }
        if result == 0 { return .running }
        if result < 0 { return .failed(errno) }
        return .ended(decodeStatus(status))
    }

    /// A `waitpid` status as an exit code or a signal.
    package static func decodeStatus(_ status: Int32) -> WorkerExit {
        cpp_wifsignaled(status) != 0 ? .signaled(cpp_wtermsig(status)) : .exited(cpp_wexitstatus(status))
    }

    /// Kills a child of ours with SIGKILL and reaps it (no zombie is left).
    package static func killAndReap(_ pid: pid_t) {
        _ = Glibc.kill(pid, SIGKILL)
        _ = wait(for: pid, blocking: true)
    }
}

/// Signal names, one table for the whole package: numbers to "SIGKILL" for
/// reasons and logs, names (with or without "SIG", as ssh reports them) to
/// numbers.
package enum SignalNames {
    private static let table: [(Int32, String)] = [
        (SIGHUP, "HUP"), (SIGINT, "INT"), (SIGQUIT, "QUIT"), (SIGILL, "ILL"), (SIGTRAP, "TRAP"),
        (SIGABRT, "ABRT"), (SIGBUS, "BUS"), (SIGFPE, "FPE"), (SIGKILL, "KILL"), (SIGUSR1, "USR1"),
        (SIGSEGV, "SEGV"), (SIGUSR2, "USR2"), (SIGPIPE, "PIPE"), (SIGALRM, "ALRM"), (SIGTERM, "TERM"),
        (SIGXCPU, "XCPU"), (SIGXFSZ, "XFSZ"), (SIGSYS, "SYS"),
    ]

    /// "SIGKILL" for 9; "signal N" for a number without a name.
    package static func name(_ signal: Int32) -> String {
        table.first { $0.0 == signal }.map { "SIG" + $0.1 } ?? "signal \(signal)"
    }

    /// 9 for "KILL" or "SIGKILL"; nil for a name not in the table.
    package static func number(_ name: String) -> Int32? {
        let bare = name.hasPrefix("SIG") ? String(name.dropFirst(3)) : name
        return table.first { $0.1 == bare }?.0
    }
}
