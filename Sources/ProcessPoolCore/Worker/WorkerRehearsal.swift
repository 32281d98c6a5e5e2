import CProcessPoolShim
import Glibc

extension ProcessPoolWorker {
    /// Runs a worker's start and end once in this process, before it forks
    /// workers: the preamble, a `configure` without an initializer, hello,
    /// ready, an `exit` and the goodbye, over a socketpair, on the calling
    /// thread.
    ///
    /// A fork copies every lazily initialized piece of runtime state as it
    /// is at that instant. If another thread of the parent is just then
    /// initializing one (a Swift runtime `once`, a generic metadata entry)
    /// that the child's first steps need, the child waits for a thread it
    /// does not have, forever. Seen under TSan, which widens the window: a
    /// fork child stuck in `swift_once` inside `Set.init`, in
    /// `WorkerStream.init`, silent until the pool's hello limit. After this
    /// rehearsal every such step on the worker's start path is done in the
    /// parent (if another thread was mid-way, the rehearsal waited for it),
    /// so no fork can catch one half done.
    ///
    /// - Returns: The worker loop's exit status (0: it ran to the exit
    ///   frame), or -1 if the socketpair or the script could not be made.
    @discardableResult
    package static func rehearse(registry: TaskRegistry) -> Int32 {
        var fds: [Int32] = [-1, -1]
        guard cpp_socketpair_cloexec(&fds) == 0 else { return -1 }
        defer {
            _ = Glibc.close(fds[0])
            _ = Glibc.close(fds[1])
        }
        var frames = FrameBuilder(capacity: 64)
        guard (try? ConfigureMessage(maxTasks: 0, initializer: nil).write(to: &frames)) != nil,
              (try? frames.end()) != nil else { return -1 }
        frames.begin(.exit)
        guard (try? frames.end()) != nil else { return -1 }
        let script = frames.take()
        // Everything both ways fits in the socket buffers: the worker's
        // answers (preamble, hello, ready, goodbye) are a few dozen bytes.
        let sent = script.withUnsafeBytes { send(fds[0], $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
        guard sent == script.count else { return -1 }
        shutdown(fds[0], Int32(SHUT_WR))
        let served = activeDescriptor
        defer { activeDescriptor = served }
        let loop = WorkerLoop(stream: WorkerStream(fd: fds[1]), registry: registry)
        return loop.run()
    }
}
