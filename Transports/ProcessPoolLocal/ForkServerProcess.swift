import CProcessPoolShim
import Glibc
import ProcessPoolCore
import Synchronization

/// A running forkserver as its parent (this process) sees it: a spawned
/// `forkserver`, or a fork pool's template (see `ForkTemplate`).
///
/// Started on the launcher thread (its `PR_SET_PDEATHSIG` is tied to the
/// thread that starts it). The server is our child: `dispose()` reaps it.
final class ForkServerProcess: Sendable {
    /// What kind of server this is.
    enum Kind: Sendable {
        /// A spawned executable whose `main()` hands over to
        /// `ProcessPoolExecutor.bootstrap` (the forkserver start method).
        case forkserver
        /// A fork of this process running the server loop (a fork pool
        /// that replaces workers).
        case forkTemplate

        /// What the server is called in messages.
        var name: String {
            switch self {
            case .forkserver: "forkserver"
            case .forkTemplate: "fork template"
            }
        }
    }

    /// What kind of server this is.
    let kind: Kind
    /// What the server is called in messages ("forkserver", "fork template").
    var name: String { kind.name }
    /// The executable the server runs.
    let executable: String
    /// The server's pid.
    let pid: pid_t
    /// A pidfd for the server: readable once it has exited.
    let pidfd: Int32
    /// Our end of the control socketpair; the server exits at its EOF.
    let control: Int32
    /// The abstract-namespace name the server listens on (no leading NUL).
    let address: [UInt8]
    /// The key every request must present.
    let key: [UInt8]
    private let served = Atomic<Bool>(false)

    init(kind: Kind = .forkserver, executable: String, pid: pid_t, pidfd: Int32, control: Int32,
         address: [UInt8], key: [UInt8], served: Bool = false) {
        self.kind = kind
        self.served.store(served, ordering: .relaxed)
        self.executable = executable
        self.pid = pid
        self.pidfd = pidfd
        self.control = control
        self.address = address
        self.key = key
    }

    /// Spawns a server running `executable`. Call on the launcher thread.
    ///
    /// The listening socket is made here and handed over with the key
    /// before the spawn, so requests can queue at once: nothing waits for
    /// the server to come up.
    static func start(executable: String) throws -> ForkServerProcess {
        let setup = try Setup()
        let (pid, pidfd) = try ProcessSpawner.start(executable: executable, role: .forkserver, channel: setup.channel)
        ParentDescriptors.insert(setup.channel.parentEnd)
        ParentDescriptors.insert(pidfd)
        return ForkServerProcess(executable: executable, pid: pid, pidfd: pidfd, control: setup.channel.parentEnd,
                                 address: setup.address, key: setup.key)
    }

    /// What a new server is handed before it starts: a key, a listening
    /// socket on a fresh abstract address, both already written to the
    /// parent's end of a new control channel (the listener is then closed
    /// here; the server gets its own copy from the message).
    struct Setup {
        let key: [UInt8]
        let address: [UInt8]
        let channel: Channel

        init() throws {
            key = try ForkServerProtocol.makeKey()
            address = try ForkServerProtocol.makeAddress()
            let listener = address.withUnsafeBytes { cpp_unix_listen_abstract($0.baseAddress, $0.count, 128) }
            guard listener >= 0 else { throw SystemError("listen on the forkserver socket") }
            defer { closeDescriptor(listener) }
            channel = try Channel.make()
            var attached = [listener]
            let sent = key.withUnsafeBytes { cpp_send_fds(channel.parentEnd, $0.baseAddress, $0.count, &attached, 1) }
            guard sent == key.count else {
                let failure = SystemError("sendmsg to the forkserver")
                closeDescriptor(channel.parentEnd)
                closeDescriptor(channel.childEnd)
                throw failure
            }
        }
    }

    /// Whether the server has answered a request (so it does run as a forkserver).
    var hasServed: Bool { served.load(ordering: .relaxed) }

    /// Records that the server answered a request.
    func markServed() { served.store(true, ordering: .relaxed) }

    /// Whether the server has ended or is ending (its pidfd is readable, or
    /// its end of the control socketpair is closed). Does not block.
    var hasEnded: Bool {
        var fds = [pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: control, events: Int16(POLLIN), revents: 0)]
        _ = Syscall.poll(&fds, timeoutMilliseconds: 0)
        return fds[0].revents != 0 || fds[1].revents != 0
    }

    /// Stops the server if it still runs, reaps it and closes our
    /// descriptors. Call once, after removing it from `ForkServers`.
    func dispose() {
        _ = cpp_pidfd_send_signal(pidfd, SIGKILL)
        _ = Syscall.wait(for: pid, blocking: true)
        ParentDescriptors.remove(control)
        ParentDescriptors.remove(pidfd)
        closeDescriptor(control)
        closeDescriptor(pidfd)
    }
}
