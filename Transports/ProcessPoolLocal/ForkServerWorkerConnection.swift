import CProcessPoolShim
import Glibc
import ProcessPoolCore
import Synchronization

/// A worker forked by the forkserver. Its stream is our end of a channel;
/// its exit descriptor is the request connection, on which the server
/// writes the exit status once it has reaped the worker (EOF without a
/// status: the server died). Signals go through a pidfd the server sent.
final class ForkServerWorkerConnection: WorkerConnection {
    let pid: pid_t
    let serverPID: pid_t
    /// What the server is called in messages ("forkserver", "fork template").
    let serverName: String
    let streamDescriptor: Int32
    let exitDescriptor: Int32
    let pidfd: Int32
    let label: String

    private struct State {
        var statusBytes: [UInt8] = []
        var exit: WorkerExit?
    }
    private let state = Mutex(State())

    init(pid: pid_t, stream: Int32, exitConnection: Int32, pidfd: Int32, serverPID: pid_t,
         serverName: String = "forkserver") {
        self.pid = pid
        self.serverPID = serverPID
        self.serverName = serverName
        self.streamDescriptor = stream
        self.exitDescriptor = exitConnection
        self.pidfd = pidfd
        self.label = "pid \(pid) on localhost (\(serverName) pid \(serverPID))"
        for fd in [stream, exitConnection, pidfd] { ParentDescriptors.insert(fd) }
    }

    func collectExit() -> WorkerExit? {
        let (exit, serverLost) = state.guarded { state -> (WorkerExit?, Bool) in
            if let exit = state.exit { return (exit, false) }
            var lost = false
            while state.exit == nil {
                var chunk = [UInt8](repeating: 0, count: ForkServerProtocol.statusLength - state.statusBytes.count)
                let got = chunk.withUnsafeMutableBytes {
                    Syscall.receive(exitDescriptor, into: $0, flags: Int32(MSG_DONTWAIT))
                }
                if case .bytes(let n) = got {
                    state.statusBytes += chunk.prefix(n)
                    if state.statusBytes.count == ForkServerProtocol.statusLength {
                        state.exit = ForkServerProtocol.decodeStatus(state.statusBytes)
                            ?? .lost("the \(serverName) (pid \(serverPID)) sent a malformed exit status")
                    }
                    continue
                }
                if got == .wouldBlock { break }
                // EOF (or a reset) before a status: the server is gone.
                state.exit = .lost("the \(serverName) (pid \(serverPID)) died")
                lost = true
            }
            return (state.exit, lost)
        }
        if serverLost { ForkServers.discardDead(pid: serverPID) }
        return exit
    }

    func terminate() { send(SIGTERM) }
    func kill() { send(SIGKILL) }

    private func send(_ signal: Int32) {
        state.guarded { state in
            guard state.exit == nil else { return }
            _ = cpp_pidfd_send_signal(pidfd, signal)
        }
    }

    func close() {
        for fd in [streamDescriptor, exitDescriptor, pidfd] {
            ParentDescriptors.remove(fd)
            closeDescriptor(fd)
        }
    }
}
