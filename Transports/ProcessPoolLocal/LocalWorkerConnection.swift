import CProcessPoolShim
import Glibc
import ProcessPoolCore
import Synchronization

/// A worker that is a child process of this one: its stream is our end of a
/// socketpair, its exit descriptor a pidfd, and `waitpid` reaps it.
final class LocalWorkerConnection: WorkerConnection {
    let pid: pid_t
    let streamDescriptor: Int32
    let exitDescriptor: Int32
    let label: String
    private let reaped = Mutex<WorkerExit?>(nil)

    init(pid: pid_t, stream: Int32, pidfd: Int32) {
        self.pid = pid
        self.streamDescriptor = stream
        self.exitDescriptor = pidfd
        self.label = "pid \(pid) on localhost"
        ParentDescriptors.insert(stream)
        ParentDescriptors.insert(pidfd)
    }

    func collectExit() -> WorkerExit? {
        reaped.guarded { exit in
            if let exit { return exit }
            switch Syscall.wait(for: pid, blocking: false) {
            case .running: return nil
            case .ended(let status): exit = status
            case .failed(let failure):
                exit = .lost("exit status unavailable (\(SystemError("waitpid", errno: failure)))")
            }
            return exit
        }
    }

    func terminate() { send(SIGTERM) }
    func kill() { send(SIGKILL) }

    private func send(_ signal: Int32) {
        reaped.guarded { exit in
            guard exit == nil else { return }
            if cpp_pidfd_send_signal(exitDescriptor, signal) != 0 && errno == ENOSYS {
                _ = Glibc.kill(pid, signal)
            }
        }
    }

    func close() {
        ParentDescriptors.remove(streamDescriptor)
        ParentDescriptors.remove(exitDescriptor)
        closeDescriptor(streamDescriptor)
        closeDescriptor(exitDescriptor)
    }
}

/// A connected socketpair: our end and the child's end, both close-on-exec.
struct Channel {
    let parentEnd: Int32
    let childEnd: Int32

    static func make() throws -> Channel {
        var fds: [Int32] = [-1, -1]
        guard cpp_socketpair_cloexec(&fds) == 0 else { throw SystemError("socketpair") }
        // Larger buffers: fewer wake-ups for large payloads.
        var size: Int32 = 1 << 20
        for fd in fds {
            _ = setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
            _ = setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        }
        return Channel(parentEnd: fds[0], childEnd: fds[1])
    }
}

/// Opens a pidfd for a child we just started; if that fails the child is
/// killed and reaped (no zombie) and the error thrown.
func openPidfdOrReap(_ pid: pid_t) throws -> Int32 {
    let fd = cpp_pidfd_open(pid)
    guard fd >= 0 else {
        let failure = SystemError("pidfd_open")
        Syscall.killAndReap(pid)
        throw failure
    }
    return fd
}
