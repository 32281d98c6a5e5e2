// Fuzz target: the worker loop fed a parent's stream. ProcessPoolWorker.serve
// runs on one end of a socketpair in this process with a registry of a few
// tasks (Shared/FuzzSupport.swift); a helper thread writes the fuzz input to
// the other end (then shuts down its writing side) and drains whatever the
// worker answers. The worker must return, never crash or hang.
//
// The helper thread is started once and handed one input at a time: a thread
// started and joined per input made ASan's resident memory grow by about
// 190 bytes per input (1.9 GB after 10 million inputs; none of it in the
// heap's live allocations), and halved the rate. A real worker has no such
// thread.
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

/// The long-lived helper thread: it waits on `go` for the next `ParentEnd`,
/// pumps it, and answers on `done`. The pipes order the hand-over: `job` is
/// written before the byte on `go` and read after it.
enum Pump {
    nonisolated(unsafe) static var job: ParentEnd?
    nonisolated(unsafe) static var go: [Int32] = [-1, -1]
    nonisolated(unsafe) static var done: [Int32] = [-1, -1]
    nonisolated(unsafe) static var started = false

    static func start() {
        guard pipe(&go) == 0, pipe(&done) == 0 else { fatalError("pipe: \(errno)") }
        var thread = pthread_t()
        guard pthread_create(&thread, nil, { _ in
            var token: UInt8 = 0
            while true {
                let n = read(Pump.go[0], &token, 1)
                if n < 0 && errno == EINTR { continue }
                guard n == 1 else { fatalError("pump: read: \(errno)") }
                Pump.job?.pump()
                Pump.job = nil
                guard write(Pump.done[1], &token, 1) == 1 else { fatalError("pump: write: \(errno)") }
            }
            return nil
        }, nil) == 0 else { fatalError("pthread_create") }
        pthread_detach(thread)
        started = true
    }

    /// Hands `parent` to the helper thread.
    static func begin(_ parent: ParentEnd) {
        if !started { start() }
        job = parent
        var token: UInt8 = 1
        guard write(go[1], &token, 1) == 1 else { fatalError("pump: write: \(errno)") }
    }

    /// Waits until the helper thread is done with the current input.
    static func finish() {
        var token: UInt8 = 0
        while read(done[0], &token, 1) != 1 {
            guard errno == EINTR else { fatalError("pump: read: \(errno)") }
        }
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzWorker(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let input = FuzzInput(data, size)
    var fds: [Int32] = [-1, -1]
    guard cpp_socketpair_cloexec(&fds) == 0 else { fatalError("socketpair: \(errno)") }
    Pump.begin(ParentEnd(fd: fds[0], bytes: input.bytes))
    let code = ProcessPoolWorker.serve(descriptor: fds[1], registry: fuzzRegistry)
    precondition(code >= 0 && code <= 2, "exit status \(code)")
    close(fds[1])
    Pump.finish()
    close(fds[0])
    return 0
}
