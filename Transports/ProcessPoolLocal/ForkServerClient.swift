import CProcessPoolShim
import Glibc
import ProcessPoolCore

/// Asks a forkserver for workers (on the launcher thread).
enum ForkServerClient {
    /// The server could not be reached or died during the request.
    struct ServerGone: Error, CustomStringConvertible {
        let name: String
        let pid: pid_t
        let detail: String
        var description: String { "the \(name) (pid \(pid)) \(detail)" }
    }

    /// The server did not answer a request in time.
    struct ServerSilent: Error, CustomStringConvertible {
        let kind: ForkServerProcess.Kind
        let pid: pid_t
        let executable: String
        var description: String {
            // A fork template runs our own code: no bootstrap to forget.
            guard kind == .forkserver else { return "the \(kind.name) (pid \(pid)) did not answer within 30 s" }
            return "the forkserver (pid \(pid)) did not answer within 30 s; does main() of \(executable) "
                + "call ProcessPoolExecutor.bootstrap first?"
        }
    }

    /// Starts one worker for `executable`, starting the server first if
    /// needed. A server found dead is replaced and the request retried once.
    static func startWorker(executable: String) throws -> any WorkerConnection {
        try startWorker(server: { try ForkServers.server(for: executable) }, discard: ForkServers.discard)
    }

    /// Starts one worker from the server `server()` gives (starting one if
    /// needed). A server found dead is discarded, and the request made
    /// once more to the next one.
    static func startWorker(server: () throws -> ForkServerProcess,
                            discard: (ForkServerProcess) -> Void) throws -> any WorkerConnection {
        var attempt = 0
        while true {
            attempt += 1
            let current = try server()
            do {
                return try requestWorker(from: current)
            } catch let gone as ServerGone {
                discard(current)
                if attempt >= 2 { throw gone }
            } catch let silent as ServerSilent {
                // Not a forkserver, or wedged: stop it rather than wait again next time.
                discard(current)
                throw silent
            }
        }
    }

    /// One request: a new channel's child end goes to the server, which
    /// forks a worker on it and answers with its pid and a pidfd.
    static func requestWorker(from server: ForkServerProcess) throws -> ForkServerWorkerConnection {
        let deadline = cpp_monotonic_ns() &+ ForkServerProtocol.replyTimeoutNanos
        let connection = try connect(to: server, deadline: deadline)
        let channel: Channel
        do {
            channel = try Channel.make()
        } catch {
            closeDescriptor(connection)
            throw error
        }
        do {
            let (pid, pidfd) = try exchange(on: connection, channel: channel.childEnd, server: server, deadline: deadline)
            closeDescriptor(channel.childEnd)
            return ForkServerWorkerConnection(pid: pid, stream: channel.parentEnd, exitConnection: connection,
                                              pidfd: pidfd, serverPID: server.pid, serverName: server.name)
        } catch {
            closeDescriptor(channel.childEnd)
            closeDescriptor(channel.parentEnd)
            closeDescriptor(connection)
            throw error
        }
    }

    /// Connects to the server's socket (non-blocking; waits out a full backlog).
    private static func connect(to server: ForkServerProcess, deadline: UInt64) throws -> Int32 {
        while true {
            let fd = server.address.withUnsafeBytes { cpp_unix_connect_abstract($0.baseAddress, $0.count) }
            if fd >= 0 { return fd }
            let failure = errno
            if failure == ECONNREFUSED || failure == ENOENT {
                throw gone(server, "refused the connection (it has died)")
            }
            guard failure == EAGAIN, cpp_monotonic_ns() < deadline, !server.hasEnded else {
                if server.hasEnded { throw gone(server, "has died") }
                throw SystemError("connect to the \(server.name) (pid \(server.pid))", errno: failure)
            }
            // The backlog is full: the server is busy accepting. Try again shortly.
            usleep(1000)
        }
    }

    /// Sends the request and reads the answer: the worker's pid and pidfd.
    private static func exchange(on connection: Int32, channel: Int32, server: ForkServerProcess,
                                 deadline: UInt64) throws -> (pid_t, Int32) {
        let request = server.key + [ForkServerProtocol.forkWorker]
        var attached = [channel]
        let sent = Syscall.retrying {
            request.withUnsafeBytes { cpp_send_fds(connection, $0.baseAddress, $0.count, &attached, 1) }
        }
        guard sent == request.count else {
            if sent < 0 && (errno == EPIPE || errno == ECONNRESET) {
                throw gone(server, "closed the connection (it has died)")
            }
            throw SystemError("sendmsg to the \(server.name) (pid \(server.pid))")
        }
        var reply: [UInt8] = []
        var pidfd: Int32 = -1
        while reply.count < ForkServerProtocol.replyLength {
            var fds = [pollfd(fd: connection, events: Int16(POLLIN), revents: 0)]
            let now = cpp_monotonic_ns()
            guard now < deadline else {
                closeDescriptor(pidfd)
                throw ServerSilent(kind: server.kind, pid: server.pid, executable: server.executable)
            }
            let ready = Syscall.poll(&fds, timeoutMilliseconds: Int32(min((deadline - now) / 1_000_000 + 1, 1_000)))
            if ready <= 0 { continue }
            var chunk = [UInt8](repeating: 0, count: ForkServerProtocol.replyLength - reply.count)
            var received: [Int32] = [-1, -1]
            var count: Int32 = 0
            let n = Syscall.retrying {
                chunk.withUnsafeMutableBytes { cpp_recv_fds(connection, $0.baseAddress, $0.count, &received, 2, &count) }
            }
            for fd in received.prefix(Int(count)) {
                if pidfd < 0 { pidfd = fd } else { closeDescriptor(fd) }
            }
            if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { continue }
            if n <= 0 {
                closeDescriptor(pidfd)
                let detail = server.hasEnded ? "died before it answered"
                    : "closed the connection without an answer"
                throw gone(server, detail)
            }
            reply += chunk.prefix(n)
        }
        server.markServed()
        let pid = Int32(bitPattern: ForkServerProtocol.readLittleEndian(reply[...]))
        guard pid > 0 else {
            closeDescriptor(pidfd)
            throw SystemError("fork in the \(server.name) (pid \(server.pid))", errno: -pid)
        }
        guard pidfd >= 0 else {
            throw SystemError("the \(server.name) (pid \(server.pid)) sent no pidfd for worker \(pid)", errno: EPROTO)
        }
        return (pid, pidfd)
    }

    /// The error for a server that went away. A server that never served
    /// and exited with a code (or hung up while still running) may be a
    /// program whose `main` does not call bootstrap: the reason says so. One
    /// killed by a signal (SIGKILL from a user, the OOM killer) is just
    /// that: the reason names the signal and gives no hint.
    private static func gone(_ server: ForkServerProcess, _ detail: String) -> ServerGone {
        let status = endStatus(of: server)
        var text = detail
        if let status { text += " (\(status))" }
        if !server.hasServed {
            if case .signaled = status {} else {
                text += "; does main() of \(server.executable) call ProcessPoolExecutor.bootstrap first?"
            }
        }
        return ServerGone(name: server.name, pid: server.pid, detail: text)
    }

    /// How the server ended, if it has (waiting up to 500 ms for a server
    /// that dropped its sockets to finish exiting); nil while it runs. The
    /// server is left unreaped (`WNOWAIT`): `dispose()` reaps it.
    private static func endStatus(of server: ForkServerProcess) -> WorkerExit? {
        var fds = [pollfd(fd: server.pidfd, events: Int16(POLLIN), revents: 0)]
        guard Syscall.poll(&fds, timeoutMilliseconds: 500) > 0 else { return nil }
        var info = siginfo_t()
        let pidfdType = idtype_t(rawValue: 3)  // P_PIDFD (Linux 5.4)
        guard Syscall.retrying({ waitid(pidfdType, id_t(server.pidfd), &info, WEXITED | WNOHANG | WNOWAIT) }) == 0,
              info._sifields._sigchld.si_pid != 0 else { return nil }
        let code = info._sifields._sigchld.si_status
        switch info.si_code {
        case Int32(CLD_EXITED): return .exited(code)
        case Int32(CLD_KILLED), Int32(CLD_DUMPED): return .signaled(code)
        default: return nil
        }
    }
}
