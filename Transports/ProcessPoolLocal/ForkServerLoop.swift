import CProcessPoolShim
import Glibc
import ProcessPoolCore

/// The forkserver's single-threaded poll loop: accepts requests, checks who
/// sends them, forks workers, reaps them and reports how they ended.
///
/// Never blocks on one connection: every socket is non-blocking, and a
/// connection that sends nothing for a second is dropped.
struct ForkServerLoop {
    /// A connection that has not yet sent a complete request.
    struct Pending {
        let fd: Int32
        let peerPID: pid_t
        let peerUID: uid_t
        let deadline: UInt64
        var bytes: [UInt8] = []
        var descriptors: [Int32] = []
    }

    /// A forked worker, the pidfd we watch it through, and the request
    /// connection its exit status goes to.
    struct Child {
        let pid: pid_t
        let pidfd: Int32
        let connection: Int32
    }

    let control: Int32
    let listener: Int32
    let key: [UInt8]
    let registry: TaskRegistry
    let serverPID = getpid()
    let serverUID = getuid()
    var pending: [Pending] = []
    var children: [Child] = []

    init(control: Int32, listener: Int32, key: [UInt8], registry: TaskRegistry) {
        self.control = control
        self.listener = listener
        self.key = key
        self.registry = registry
        _ = cpp_set_nonblocking(control, 1)
        // Like CPython's forkserver: ^C in the terminal reaches the whole
        // process group; the parent decides what it means, the server must
        // not die of it (its workers do, as spawned workers would).
        _ = signal(SIGINT, SIG_IGN)
    }

    /// Instantiates here the metadata the loop needs, before this process
    /// forks a template that runs it (see `ForkTemplate`): a lock another
    /// thread holds at the fork would stop the template's first new one.
    static func prepareForFork() {
        keepMetadata([Pending].self)
        keepMetadata([Child].self)
        keepMetadata([pollfd].self)
        keepMetadata([Int32].self)
        keepMetadata(ForkServerLoop.self)
    }

    @inline(never)
    private static func keepMetadata(_ type: Any.Type) {
        withExtendedLifetime(type) {}
    }

    /// Serves until the parent goes away; returns the exit status.
    mutating func run() -> Int32 {
        var fds: [pollfd] = []
        while true {
            fds.removeAll(keepingCapacity: true)
            fds.append(pollfd(fd: control, events: Int16(POLLIN), revents: 0))
            fds.append(pollfd(fd: listener, events: Int16(POLLIN), revents: 0))
            for connection in pending { fds.append(pollfd(fd: connection.fd, events: Int16(POLLIN), revents: 0)) }
            for child in children { fds.append(pollfd(fd: child.pidfd, events: Int16(POLLIN), revents: 0)) }
            let ready = Syscall.poll(&fds, timeoutMilliseconds: pollTimeout())
            if ready < 0 {
                cpp_log_stderr("forkserver \(serverPID): \(SystemError("poll"))\n")
                return 2
            }
            if fds[0].revents != 0 && parentIsGone() { return 0 }
            // Snapshot the counts: the handlers below append and remove.
            let pendingCount = pending.count
            let childCount = children.count
            var readable: [Int32] = []
            for i in 0..<pendingCount where fds[2 + i].revents != 0 { readable.append(fds[2 + i].fd) }
            var exited: [Int32] = []
            for i in 0..<childCount where fds[2 + pendingCount + i].revents != 0 {
                exited.append(fds[2 + pendingCount + i].fd)
            }
            for pidfd in exited { reap(pidfd: pidfd) }
            for fd in readable { readRequest(fd: fd) }
            expireRequests()
            if fds[1].revents != 0 { acceptConnections() }
        }
    }

    /// Milliseconds until the nearest request deadline, or -1.
    private func pollTimeout() -> Int32 {
        guard let nearest = pending.map(\.deadline).min() else { return -1 }
        let now = cpp_monotonic_ns()
        return nearest <= now ? 0 : Int32((nearest - now) / 1_000_000 + 1)
    }

    /// The control socket is readable: EOF (or an error) means the parent is gone.
    private func parentIsGone() -> Bool {
        var byte: UInt8 = 0
        while true {
            switch withUnsafeMutableBytes(of: &byte, { Syscall.receive(control, into: $0, flags: Int32(MSG_DONTWAIT)) }) {
            case .bytes: continue  // Nothing is ever sent; discard.
            case .wouldBlock: return false
            case .endOfStream, .failed: return true
            }
        }
    }

    // MARK: Connections

    private mutating func acceptConnections() {
        while true {
            let fd = Syscall.retrying { cpp_accept_nonblocking(listener) }
            if fd < 0 {
                if errno == ECONNABORTED { continue }
                if errno != EAGAIN && errno != EWOULDBLOCK {
                    cpp_log_stderr("forkserver \(serverPID): \(SystemError("accept"))\n")
                }
                return
            }
            var pid: pid_t = 0
            var uid: uid_t = 0
            var gid: gid_t = 0
            guard cpp_peer_credentials(fd, &pid, &uid, &gid) == 0 else {
                refuse(fd: fd, pid: 0, uid: uid_t.max, reason: "no peer credentials (\(SystemError("SO_PEERCRED")))")
                continue
            }
            guard uid == serverUID else {
                refuse(fd: fd, pid: pid, uid: uid, reason: "uid \(uid) is not the server's uid \(serverUID)")
                continue
            }
            pending.append(Pending(fd: fd, peerPID: pid, peerUID: uid,
                                   deadline: cpp_monotonic_ns() &+ ForkServerProtocol.requestTimeoutNanos))
        }
    }

    /// Reads what a pending connection sent; acts once the request is whole.
    private mutating func readRequest(fd: Int32) {
        guard let index = pending.firstIndex(where: { $0.fd == fd }) else { return }
        var buffer = [UInt8](repeating: 0, count: ForkServerProtocol.requestLength)
        var received: [Int32] = [-1, -1, -1, -1]
        var receivedCount: Int32 = 0
        let want = ForkServerProtocol.requestLength - pending[index].bytes.count
        let n = Syscall.retrying {
            buffer.withUnsafeMutableBytes { raw in
                cpp_recv_fds(fd, raw.baseAddress, want, &received, 4, &receivedCount)
            }
        }
        pending[index].descriptors += received.prefix(Int(receivedCount))
        if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { return }
        let connection = pending.remove(at: index)
        if n <= 0 {
            let why = n == 0 ? "closed before a complete request" : "\(SystemError("recvmsg"))"
            refuse(connection, reason: why)
            return
        }
        var request = connection
        request.bytes += buffer.prefix(n)
        guard request.bytes.count == ForkServerProtocol.requestLength else {
            pending.append(request)
            return
        }
        guard ForkServerProtocol.constantTimeEqual(request.bytes.prefix(ForkServerProtocol.keyLength), key) else {
            refuse(request, reason: "wrong key")
            return
        }
        guard request.bytes[ForkServerProtocol.keyLength] == ForkServerProtocol.forkWorker,
              request.descriptors.count == 1 else {
            refuse(request, reason: "malformed request (operation \(request.bytes[ForkServerProtocol.keyLength]), "
                + "\(request.descriptors.count) descriptors)")
            return
        }
        forkWorker(connection: request.fd, channel: request.descriptors[0])
    }

    /// Drops connections that did not send a request in time.
    private mutating func expireRequests() {
        let now = cpp_monotonic_ns()
        let late = pending.filter { $0.deadline <= now }
        guard !late.isEmpty else { return }
        pending.removeAll { $0.deadline <= now }
        for connection in late { refuse(connection, reason: "no request within 1 s") }
    }

    private func refuse(_ connection: Pending, reason: String) {
        for fd in connection.descriptors { closeDescriptor(fd) }
        refuse(fd: connection.fd, pid: connection.peerPID, uid: connection.peerUID, reason: reason)
    }

    private func refuse(fd: Int32, pid: pid_t, uid: uid_t, reason: String) {
        closeDescriptor(fd)
        cpp_log_stderr("forkserver: refused connection from pid \(pid) uid \(uid): \(reason)\n")
    }

    // MARK: Workers

    /// Forks a worker serving `channel`; answers on `connection`.
    private mutating func forkWorker(connection: Int32, channel: Int32) {
        cpp_flush_all()
        let pid = cpp_fork()
        if pid == 0 { runWorker(connection: connection, channel: channel) }
        let forkErrno = errno
        closeDescriptor(channel)
        guard pid > 0 else {
            answer(connection, pid: -forkErrno, pidfd: nil)
            closeDescriptor(connection)
            return
        }
        let pidfd = cpp_pidfd_open(pid)
        guard pidfd >= 0 else {
            let failure = errno
            Syscall.killAndReap(pid)
            answer(connection, pid: -failure, pidfd: nil)
            closeDescriptor(connection)
            return
        }
        answer(connection, pid: pid, pidfd: pidfd)
        children.append(Child(pid: pid, pidfd: pidfd, connection: connection))
    }

    /// The descriptor a worker's stream gets, as in a spawned worker.
    private static let workerDescriptor: Int32 = 3

    /// In the forked child: drop every descriptor of the server's, move the
    /// stream to descriptor 3, serve, exit.
    private func runWorker(connection: Int32, channel: Int32) -> Never {
        tieLifetimeToParent(serverPID)
        _ = signal(SIGINT, SIG_DFL)
        closeDescriptor(listener)
        closeDescriptor(control)
        closeDescriptor(connection)
        for other in pending {
            closeDescriptor(other.fd)
            for fd in other.descriptors { closeDescriptor(fd) }
        }
        for child in children {
            closeDescriptor(child.pidfd)
            closeDescriptor(child.connection)
        }
        // Descriptor 3, as in a spawned worker.
        var stream = channel
        if channel != Self.workerDescriptor && dup2(channel, Self.workerDescriptor) == Self.workerDescriptor {
            closeDescriptor(channel)
            stream = Self.workerDescriptor
        }
        let code = ProcessPoolWorker.serve(descriptor: stream, registry: registry)
        cpp_flush_all()
        cpp_exit_now(code)
    }

    /// Sends the reply to a request: the pid (or -errno) and the pidfd.
    private func answer(_ connection: Int32, pid: Int32, pidfd: Int32?) {
        let bytes = ForkServerProtocol.littleEndianBytes(UInt32(bitPattern: pid))
        var attached: [Int32] = pidfd.map { [$0] } ?? []
        // A fresh connection's buffer is empty: four bytes never block.
        _ = bytes.withUnsafeBytes { raw in
            cpp_send_fds(connection, raw.baseAddress, raw.count, &attached, Int32(attached.count))
        }
    }

    /// A child's pidfd is readable: reap it and report its status.
    private mutating func reap(pidfd: Int32) {
        guard let index = children.firstIndex(where: { $0.pidfd == pidfd }) else { return }
        let child = children[index]
        let result = Syscall.wait(for: child.pid, blocking: false)
        if result == .running { return }  // Not yet (should not happen once the pidfd is readable).
        children.remove(at: index)
        switch result {
        case .ended(let exit):
            let bytes = ForkServerProtocol.encode(exit)
            _ = bytes.withUnsafeBytes { Syscall.send(child.connection, $0) }
        case .failed(let failure):
            cpp_log_stderr("forkserver \(serverPID): worker \(child.pid): \(SystemError("waitpid", errno: failure))\n")
        case .running:
            break
        }
        closeDescriptor(child.connection)
        closeDescriptor(child.pidfd)
    }
}
