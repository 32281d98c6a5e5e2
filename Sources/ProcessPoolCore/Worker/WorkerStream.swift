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
            let rest = UnsafeRawBufferPointer(rebasing: bytes[offset...])
            var written = isSocket ? Syscall.send(output, rest) : Syscall.write(output, rest)
            if written == .failed(ENOTSOCK) && isSocket {
                // stdout over ssh is a pipe: plain writes, and no SIGPIPE.
                isSocket = false
                signal(SIGPIPE, SIG_IGN)
                written = Syscall.write(output, rest)
            }
            guard case .bytes(let n) = written else { return false }
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
    ///
    /// The frame splitter never hands a buffer over 64 KiB that is larger
    /// than what the parent has promised to send, so the wait always ends.
    mutating func read(into buffer: UnsafeMutableRawBufferPointer) -> Int {
        var result: Syscall.IO
        if inputIsSocket && buffer.count >= 1 << 20 {
            result = Syscall.receive(fd, into: buffer, flags: Int32(MSG_WAITALL))
            if result == .failed(ENOTSOCK) {
                inputIsSocket = false  // a pipe (stdin over ssh): plain reads
                result = Syscall.read(fd, into: buffer)
            }
        } else {
            result = Syscall.read(fd, into: buffer)
        }
        switch result {
        case .bytes(let n): return n
        case .endOfStream: return 0
        case .wouldBlock, .failed: return -1
        }
    }
}
