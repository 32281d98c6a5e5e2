// Fuzz target: the worker loop fed a parent's stream. ProcessPoolWorker.serve
// runs on one end of a socketpair in this process with a registry of a few
// tasks (Shared/FuzzSupport.swift); a helper thread writes the fuzz input to
// the other end (then shuts down its writing side) and drains whatever the
// worker answers. The worker must return, never crash or hang.
//
// Input: the parent's stream (no preamble: the worker sends one, it does not
// expect one).
import CProcessPoolShim
import Glibc
import ProcessPoolCore

/// The parent side of one run: the input to send, the descriptor.
final class ParentEnd {
    let fd: Int32
    let bytes: [UInt8]
    init(fd: Int32, bytes: [UInt8]) { self.fd = fd; self.bytes = bytes }

    /// Sends everything (until the worker closes its end), reading as it goes;
    /// then reads until EOF.
    func pump() {
        var sent = 0
        var sending = true
        var sink = [UInt8](repeating: 0, count: 64 * 1024)
        if bytes.isEmpty { shutdown(fd, Int32(SHUT_WR)); sending = false }
        while true {
            var p = pollfd(fd: fd, events: Int16(POLLIN) | (sending ? Int16(POLLOUT) : 0), revents: 0)
            let r = poll(&p, 1, 20_000)
            if r < 0 { if errno == EINTR { continue }; return }
            if r == 0 { return }  // the worker hangs: libFuzzer's -timeout reports it
            if p.revents & Int16(POLLIN | POLLHUP | POLLERR) != 0 {
                let n = sink.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
                if n == 0 { return }
                if n < 0 && errno != EAGAIN && errno != EINTR { return }
            }
            if sending && p.revents & Int16(POLLOUT) != 0 {
                let n = bytes.withUnsafeBytes {
                    send(fd, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_DONTWAIT | MSG_NOSIGNAL))
                }
                if n > 0 { sent += n }
                if n < 0 && errno != EAGAIN && errno != EINTR { sending = false }
                if sent == bytes.count || !sending {
                    shutdown(fd, Int32(SHUT_WR))
                    sending = false
                }
            }
        }
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzWorker(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let input = FuzzInput(data, size)
    var fds: [Int32] = [-1, -1]
    guard cpp_socketpair_cloexec(&fds) == 0 else { fatalError("socketpair: \(errno)") }
    let parent = ParentEnd(fd: fds[0], bytes: input.bytes)
    var thread = pthread_t()
    let box = Unmanaged.passRetained(parent).toOpaque()
    guard pthread_create(&thread, nil, { raw in
        let parent = Unmanaged<ParentEnd>.fromOpaque(raw!).takeRetainedValue()
        parent.pump()
        return nil
    }, box) == 0 else { fatalError("pthread_create") }
    let code = ProcessPoolWorker.serve(descriptor: fds[1], registry: fuzzRegistry)
    precondition(code >= 0 && code <= 2, "exit status \(code)")
    close(fds[1])
    pthread_join(thread, nil)
    close(fds[0])
    return 0
}
