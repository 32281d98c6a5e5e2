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
    /// Shared by the core's threads and the host thread. Nobody waits on
    /// it, so a `Mutex` through `guarded` (announced to ThreadSanitizer).
    private struct State {
        var exit: WorkerExit?
        var released = false
    }
    private let state = Mutex(State())

    init(id: Int, stream: Int32, exitEvent: Int32, link: HostLink) {
        self.id = id
        self.streamDescriptor = stream
        self.exitDescriptor = exitEvent
        self.link = link
        self.label = link.host.label
    }

    func collectExit() -> WorkerExit? { state.guarded { $0.exit } }

    func terminate() { link.post(.signal(id: id, SIGTERM)) }
    func kill() { link.post(.signal(id: id, SIGKILL)) }

    func close() {
        let (stream, exitEvent) = (streamDescriptor, exitDescriptor)
        // The descriptors close under the lock: `finish` writes the exit
        // event under it, never to a closed (perhaps reused) descriptor.
        state.guarded { state in
            guard !state.released else { return }
            state.released = true
            closeDescriptor(stream)
            closeDescriptor(exitEvent)
        }
        link.post(.released(id: id))
    }

    /// Records how the worker ended and wakes the core (host thread; once).
    func finish(_ exit: WorkerExit) {
        let exitEvent = exitDescriptor
        state.guarded { state in
            guard state.exit == nil, !state.released else { return }
            state.exit = exit
            var one: UInt64 = 1
            _ = withUnsafeBytes(of: &one) { Syscall.write(exitEvent, $0) }
        }
    }
}
