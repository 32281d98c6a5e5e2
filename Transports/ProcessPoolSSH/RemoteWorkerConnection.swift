import CProcessPoolShim
import Glibc
import ProcessPoolCore
import Synchronization

/// A worker on a host, as the core sees it: our end of a socketpair whose
/// other end the host's thread pumps to and from the ssh channel, and an
/// eventfd that thread signals once the channel has closed.
final class RemoteWorkerConnection: WorkerConnection, @unchecked Sendable {
    let streamDescriptor: Int32
    let exitDescriptor: Int32
    let label: String
    let id: Int
    private let link: HostLink
    /// Shared by the core's threads and the host thread, under `lock` (a
    /// pthread mutex: ThreadSanitizer does not see `Synchronization.Mutex`).
    private let lock = ConditionLock()
    private var exit: WorkerExit?
    private var released = false

    init(id: Int, stream: Int32, exitEvent: Int32, link: HostLink) {
        self.id = id
        self.streamDescriptor = stream
        self.exitDescriptor = exitEvent
        self.link = link
        self.label = link.host.label
    }

    func collectExit() -> WorkerExit? { lock.withLock { exit } }

    func terminate() { link.post(.signal(id: id, SIGTERM)) }
    func kill() { link.post(.signal(id: id, SIGKILL)) }

    func close() {
        lock.withLock {
            guard !released else { return }
            released = true
            closeDescriptor(streamDescriptor)
            closeDescriptor(exitDescriptor)
        }
        link.post(.released(id: id))
    }

    /// Records how the worker ended and wakes the core (host thread; once).
    func finish(_ exit: WorkerExit) {
        lock.withLock {
            guard self.exit == nil, !released else { return }
            self.exit = exit
            var one: UInt64 = 1
            _ = Glibc.write(exitDescriptor, &one, 8)
        }
    }
}
