import CProcessPoolShim
import Glibc
import ProcessPoolCore
import Synchronization

/// A worker on a host, as the core sees it: our end of a socketpair whose
/// other end the host's thread pumps to and from the ssh channel, and an
/// eventfd that thread signals once the channel has closed.
final class RemoteWorkerConnection: WorkerConnection {
    let streamDescriptor: Int32
    let exitDescriptor: Int32
    let label: String
    let id: Int
    private let link: HostLink
    private let state = Mutex<(exit: WorkerExit?, released: Bool)>((nil, false))

    init(id: Int, stream: Int32, exitEvent: Int32, link: HostLink) {
        self.id = id
        self.streamDescriptor = stream
        self.exitDescriptor = exitEvent
        self.link = link
        self.label = link.host.label
    }

    func collectExit() -> WorkerExit? { state.withLock { $0.exit } }

    func terminate() { link.post(.signal(id: id, SIGTERM)) }
    func kill() { link.post(.signal(id: id, SIGKILL)) }

    func close() {
        state.withLock { state in
            guard !state.released else { return }
            state.released = true
            closeDescriptor(streamDescriptor)
            closeDescriptor(exitDescriptor)
        }
        link.post(.released(id: id))
    }

    /// Records how the worker ended and wakes the core (host thread; once).
    func finish(_ exit: WorkerExit) {
        state.withLock { state in
            guard state.exit == nil, !state.released else { return }
            state.exit = exit
            var one: UInt64 = 1
            _ = Glibc.write(exitDescriptor, &one, 8)
        }
    }
}
