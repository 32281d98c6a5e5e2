import CLibSSH2
import CProcessPoolShim
import Glibc
import Logging
import ProcessPool
import ProcessPoolCore
import Synchronization

/// A request to a host's thread.
enum HostCommand: Sendable {
    /// Start one worker and report it.
    case launch(@Sendable (Result<any WorkerConnection, any Error>) -> Void)
    /// Signal a worker (through `kill` on the host once its pid is known).
    case signal(id: Int, Int32)
    /// The core is done with a worker.
    case released(id: Int)
    /// The pool is finished: close everything and end the thread.
    case shutdown
}

/// One host of a farm: a thread that owns its libssh2 sessions (libssh2 is
/// not thread-safe) and, in non-blocking mode, pumps every worker channel
/// between the ssh connection and the workers' socketpairs, sends keepalives
/// and notices lost connections.
final class HostLink: @unchecked Sendable {
    let host: ResolvedHost
    private let options: SSHOptions
    private let logger: Logger
    private let wake: Int32
    private let inbox = Mutex<(commands: [HostCommand], stopped: Bool)>(([], false))
    /// Set once the thread has closed its sessions and ended.
    let stopped = OneShotEvent()
    /// Workers started or being started here (for choosing a host).
    let load = Atomic<Int>(0)

    // Owned by the host thread.
    private var sessions: [SSHSession] = []
    private var channels: [Int: WorkerChannel] = [:]
    private var remotePath: String?
    private var connectError: SSHError?
    /// Set when the host's thread could not be started.
    private var threadFailure: String?

    /// sshd's MaxSessions is 10 per connection: 9 workers and room for a signal.
    private static let channelsPerSession = 9

    init(host: ResolvedHost, options: SSHOptions, logger: Logger) {
        self.host = host
        self.logger = logger
        self.options = options
        wake = cpp_eventfd_cloexec(0, 1)
        do {
            try PoolThread.start(name: "ProcessPool ssh") { [self] in run() }
        } catch {
            // No thread: every launch fails at once, naming why.
            inbox.withLock { $0.stopped = true }
            threadFailure = "could not start its thread: \(error)"
            stopped.set()
        }
    }

    /// Queues a command and wakes the thread (ignored once it stopped).
    func post(_ command: HostCommand) {
        inbox.withLock { inbox in
            guard !inbox.stopped else {
                if case .launch(let completion) = command {
                    completion(.failure(SSHError.failed(host: host.label, threadFailure ?? "the pool is closed")))
                }
                return
            }
            inbox.commands.append(command)
            var one: UInt64 = 1
            _ = Glibc.write(wake, &one, 8)
        }
    }

    private func deadline() -> UInt64 {
        cpp_monotonic_ns() &+ UInt64(max(0, options.connectTimeout.components.seconds)) * 1_000_000_000
            &+ UInt64(max(0, options.connectTimeout.components.attoseconds / 1_000_000_000))
    }

    private var keepaliveNanos: UInt64 {
        UInt64(max(1, options.keepaliveInterval.components.seconds)) * 1_000_000_000
    }

    // MARK: The thread

    private func run() {
        connectFirst()
        var pollfds: [pollfd] = []
        while true {
            let commands = inbox.withLock { inbox in
                let commands = inbox.commands
                inbox.commands = []
                return commands
            }
            var counter: UInt64 = 0
            _ = Glibc.read(wake, &counter, 8)
            for command in commands {
                if case .shutdown = command {
                    stop()
                    stopped.set()
                    return
                }
                handle(command)
            }
            pumpAll()
            let timeout = liveness()
            pollfds.removeAll(keepingCapacity: true)
            pollfds.append(pollfd(fd: wake, events: Int16(POLLIN), revents: 0))
            for session in sessions {
                let live = channels.values.filter { $0.session === session && !$0.finished }
                var events: Int32 = 0
                if live.contains(where: \.wantsChannelData) { events |= Int32(POLLIN) } else { session.lastHeard = cpp_monotonic_ns() }
                if libssh2_session_block_directions(session.handle) & LIBSSH2_SESSION_BLOCK_OUTBOUND != 0 { events |= Int32(POLLOUT) }
                pollfds.append(pollfd(fd: session.socket, events: Int16(events), revents: 0))
            }
            for channel in channels.values where !channel.finished {
                var events: Int32 = 0
                if channel.wantsSocketRead { events |= Int32(POLLIN) }
                if channel.wantsSocketWrite { events |= Int32(POLLOUT) }
                if events != 0 { pollfds.append(pollfd(fd: channel.socket, events: Int16(events), revents: 0)) }
            }
            let n = poll(&pollfds, nfds_t(pollfds.count), timeout)
            guard n > 0 else { continue }
            for (index, session) in sessions.enumerated() where pollfds[index + 1].revents & Int16(POLLIN) != 0 {
                session.lastHeard = cpp_monotonic_ns()
                session.quickAck()
            }
        }
    }

    /// The first session, and the worker executable shipped over it.
    private func connectFirst() {
        let until = deadline()
        do {
            let session = try SSHSession(host: host, options: options, deadline: until)
            remotePath = try WorkerShipping.remoteExecutable(on: session, options: options, deadline: until)
            libssh2_session_set_blocking(session.handle, 0)
            sessions.append(session)
        } catch let error as SSHError {
            connectError = error
        } catch {
            connectError = .failed(host: host.label, "\(error)")
        }
    }

    private func handle(_ command: HostCommand) {
        switch command {
        case .launch(let completion):
            do {
                completion(.success(try launch()))
            } catch {
                load.subtract(1, ordering: .relaxed)
                completion(.failure(error))
            }
        case .signal(let id, let signal):
            guard let channel = channels[id], !channel.finished else { return }
            if let pid = channel.pid {
                do {
                    let result = try channel.session.run("kill -\(signal) \(pid)", deadline: deadline())
                    libssh2_session_set_blocking(channel.session.handle, 0)
                    if result.status == 0 { return }
                } catch {
                    libssh2_session_set_blocking(channel.session.handle, 0)
                }
            }
            channel.closeRequested = true
        case .released(let id):
            load.subtract(1, ordering: .relaxed)
            guard let channel = channels.removeValue(forKey: id) else { return }
            if !channel.finished { channel.closeRequested = true; orphans.append(channel) }
        case .shutdown:
            break
        }
    }

    /// Channels the core let go of before they closed: closed, then dropped.
    private var orphans: [WorkerChannel] = []

    /// Opens an exec channel running the worker and wires it to a socketpair.
    private func launch() throws -> any WorkerConnection {
        if let connectError { throw connectError }
        guard let remotePath else { throw SSHError.failed(host: host.label, "no worker executable") }
        let session: SSHSession
        if let existing = sessions.first(where: { $0.channelCount < HostLink.channelsPerSession }) {
            session = existing
        } else {
            session = try SSHSession(host: host, options: options, deadline: deadline())
            sessions.append(session)
        }
        libssh2_session_set_blocking(session.handle, 1)
        session.setTimeout(until: deadline())
        defer { libssh2_session_set_blocking(session.handle, 0) }
        let command = "exec env \(WorkerEnvironment.variable)=worker:1:stdio:0 \(shellQuote(remotePath))"
        let handle = try session.startCommand(command)
        var fds: [Int32] = [-1, -1]
        guard cpp_socketpair_cloexec(&fds) == 0 else {
            _ = libssh2_channel_free(handle)
            throw SSHError.failed(host: host.label, "\(SystemError("socketpair"))")
        }
        var size: Int32 = 1 << 20
        for fd in fds {
            _ = setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
            _ = setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        }
        _ = cpp_set_nonblocking(fds[1], 1)
        let event = cpp_eventfd_cloexec(0, 1)
        guard event >= 0 else {
            Glibc.close(fds[0]); Glibc.close(fds[1])
            _ = libssh2_channel_free(handle)
            throw SSHError.failed(host: host.label, "\(SystemError("eventfd"))")
        }
        let id = SSHLaunchSession.nextWorkerID.add(1, ordering: .relaxed).newValue
        let connection = RemoteWorkerConnection(id: id, stream: fds[0], exitEvent: event, link: self)
        channels[id] = WorkerChannel(connection: connection, session: session, channel: handle, socket: fds[1], logger: logger)
        session.channelCount += 1
        return connection
    }

    /// Pumps every channel until nothing moves (bounded, to stay responsive).
    private func pumpAll() {
        for _ in 0..<64 {
            var progress = false
            for session in sessions {
                let members = channels.values.filter { $0.session === session } + orphans.filter { $0.session === session }
                do {
                    for channel in members where try channel.pump() { progress = true }
                } catch {
                    lose(session, because: "connection to host \(host.label) lost: \(error.reason)")
                    progress = true
                    break
                }
            }
            orphans.removeAll(where: \.finished)
            if !progress { return }
        }
    }

    /// Sends keepalives, drops silent hosts; returns the poll timeout (ms).
    private func liveness() -> Int32 {
        var timeout = Int32(keepaliveNanos / 1_000_000)
        let now = cpp_monotonic_ns()
        for session in sessions {
            let silent = now > session.lastHeard ? now - session.lastHeard : 0
            if silent > 3 * keepaliveNanos {
                lose(session, because: "connection to host \(host.label) lost: no answer for \(silent / 1_000_000_000) s")
                continue
            }
            var next: Int32 = 0
            _ = libssh2_keepalive_send(session.handle, &next)
            timeout = min(timeout, max(100, next * 1000))
        }
        return timeout
    }

    /// Every worker on `session` is lost; the session goes.
    private func lose(_ session: SSHSession, because reason: String) {
        for channel in channels.values where channel.session === session { channel.finish(.lost(reason)) }
        for channel in orphans where channel.session === session { channel.finish(.lost(reason)) }
        orphans.removeAll(where: \.finished)
        sessions.removeAll { $0 === session }
        session.free()
    }

    private func stop() {
        for session in sessions { lose(session, because: "the pool was closed") }
        inbox.withLock { inbox in
            inbox.stopped = true
            Glibc.close(wake)
            for case .launch(let completion) in inbox.commands {
                completion(.failure(SSHError.failed(host: host.label, "the pool is closed")))
            }
            inbox.commands = []
        }
    }
}
