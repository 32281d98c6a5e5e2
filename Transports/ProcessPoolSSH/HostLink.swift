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
    /// What other threads hand the host thread. Nobody blocks on it (the
    /// thread waits in poll, woken through `wake`), so a plain `Mutex`
    /// through `guarded` (announced to ThreadSanitizer) is enough.
    private struct Inbox {
        var commands: [HostCommand] = []
        /// The thread ended (or never started): commands are refused.
        var stopped = false
        /// Set when the host's thread could not be started.
        var threadFailure: String?
    }
    private let inbox = Mutex(Inbox())
    /// Set once the thread has closed its sessions and ended.
    let stopped = OneShotEvent()
    /// Workers started or being started here (for choosing a host).
    let load = Atomic<Int>(0)

    // Owned by the host thread.
    private var sessions: [SSHSession] = []
    private var channels: [Int: WorkerChannel] = [:]
    private var remotePath: String?
    private var connectError: SSHError?
    /// When `connectError` happened.
    private var connectFailedAt: UInt64 = 0
    /// How long a failed connection's error answers further launches.
    static let reconnectAfter: UInt64 = 900_000_000

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
            let failure = "could not start its thread: \(error)"
            inbox.guarded { inbox in
                inbox.stopped = true
                inbox.threadFailure = failure
            }
            stopped.set()
        }
    }

    /// Queues a command and wakes the thread (ignored once it stopped).
    func post(_ command: HostCommand) {
        let wake = wake
        // Under the lock: `stop()` closes `wake` under it.
        let refused: String? = inbox.guarded { inbox in
            guard !inbox.stopped else { return inbox.threadFailure ?? "the pool is closed" }
            inbox.commands.append(command)
            var one: UInt64 = 1
            _ = withUnsafeBytes(of: &one) { Syscall.write(wake, $0) }
            return nil
        }
        if let refused, case .launch(let completion) = command {
            completion(.failure(SSHError.failed(host: host.label, refused)))
        }
    }

    /// `connectTimeout` from now (monotonic ns).
    private func deadline() -> UInt64 {
        cpp_monotonic_ns() &+ options.connectTimeoutNanos
    }

    private var keepaliveNanos: UInt64 {
        UInt64(max(1, options.keepaliveInterval.components.seconds)) * 1_000_000_000
    }

    // MARK: The thread

    /// Commands that wait until no send is half written on their session
    /// (launch and signal run libssh2 in blocking mode).
    private var deferred: [HostCommand] = []

    private func run() {
        connectFirst()
        var pollfds: [pollfd] = []
        var polled: [SSHSession] = []
        while true {
            let commands = inbox.guarded { inbox in
                let commands = inbox.commands
                inbox.commands = []
                return commands
            }
            var counter: UInt64 = 0
            _ = withUnsafeMutableBytes(of: &counter) { Syscall.read(wake, into: $0) }
            let retry = deferred
            deferred = []
            for command in retry + commands {
                if case .shutdown = command {
                    stop()
                    stopped.set()
                    return
                }
                handle(command)
            }
            let unfinished = pumpAll()
            let timeout = liveness()
            pollfds.removeAll(keepingCapacity: true)
            polled.removeAll(keepingCapacity: true)
            pollfds.append(pollfd(fd: wake, events: Int16(POLLIN), revents: 0))
            for session in sessions {
                let members = channels.values.filter { $0.session === session && !$0.finished }
                    + orphans.filter { $0.session === session && !$0.finished }
                // A hang-up or error is always reported: it must be seen even
                // on a session without channels (then nobody reads it).
                var events: Int32 = 0x2000  // POLLRDHUP
                if session.hungUp { events = 0 }
                if session.pendingSend == nil
                    && (members.contains(where: \.wantsChannelData) || members.contains(where: \.probing)) {
                    events |= Int32(POLLIN)
                }
                if session.pendingSend != nil {
                    events |= Int32(POLLOUT)
                }
                if session.hungUp && events == 0 { continue }
                pollfds.append(pollfd(fd: session.socket, events: Int16(truncatingIfNeeded: events), revents: 0))
                polled.append(session)
            }
            for channel in channels.values where !channel.finished {
                var events: Int32 = 0
                if channel.wantsSocketRead { events |= Int32(POLLIN) }
                if channel.wantsSocketWrite { events |= Int32(POLLOUT) }
                if events != 0 { pollfds.append(pollfd(fd: channel.socket, events: Int16(events), revents: 0)) }
            }
            // Turns left unfinished: libssh2 may hold bytes it already took
            // from the socket (no POLLIN for them; a channel whose window it
            // has not yet reopened gets no more): look again at once.
            let pause = unfinished ? 0 : deferred.isEmpty ? timeout : min(timeout, 10)
            let n = Syscall.poll(&pollfds, timeoutMilliseconds: pause)
            guard n > 0 else { continue }
            let now = cpp_monotonic_ns()
            for (index, session) in polled.enumerated() {
                let revents = Int32(pollfds[index + 1].revents)
                if revents & Int32(POLLIN) != 0 {
                    session.lastHeard = now
                    session.quickAck()
                }
                if revents & Int32(0x2000 | POLLHUP | POLLERR) != 0 {
                    session.lastHeard = now
                    session.hungUp = true
                }
            }
        }
    }

    /// The first session, and the worker executable shipped over it:
    /// connecting (with handshake and authentication) and each set-up
    /// command within `connectTimeout`; the upload as long as it moves.
    private func connectFirst() {
        do {
            let session = try SSHSession(host: host, options: options, deadline: deadline())
            remotePath = try WorkerShipping.remoteExecutable(on: session, options: options, logger: logger)
            libssh2_session_set_blocking(session.handle, 0)
            sessions.append(session)
        } catch let error as SSHError {
            connectError = error
            connectFailedAt = MonotonicClock.now()
        } catch {
            connectError = .failed(host: host.label, "\(error)")
            connectFailedAt = MonotonicClock.now()
        }
    }

    private func handle(_ command: HostCommand) {
        switch command {
        case .launch(let completion):
            do {
                guard let connection = try launch() else { deferred.append(command); return }
                completion(.success(connection))
            } catch {
                load.subtract(1, ordering: .relaxed)
                completion(.failure(error))
            }
        case .signal(let id, let signal):
            guard let channel = channels[id], !channel.finished else { return }
            if let pid = channel.pid {
                // `kill` runs in blocking mode: wait until nothing is half sent.
                guard channel.session.pendingSend == nil else { deferred.append(command); return }
                // The pid is the one our wrapper shell printed before it
                // exec'd the worker (never read from the worker's protocol).
                let result = channel.session.runBounded("kill -\(signal) \(pid)", deadline: deadline())
                if result.status == 0 { return }
            }
            channel.closeRequested = true
        case .released(let id):
            guard let channel = channels.removeValue(forKey: id) else {
                load.subtract(1, ordering: .relaxed)
                return
            }
            releaseSlot(channel)
            if !channel.finished { channel.closeRequested = true; orphans.append(channel) }
        case .shutdown:
            break
        }
    }

    /// Channels the core let go of before they closed: closed, then dropped.
    private var orphans: [WorkerChannel] = []

    /// The command an exec channel runs: a POSIX shell that prints its own
    /// pid on stderr, then runs `script` (`WorkerShipping.launchCommand`:
    /// checks the executable's SHA-256, then execs it, so the worker keeps
    /// that pid). Signals go to that pid, which comes from the shell we
    /// started, never from the worker's protocol.
    static func workerCommand(script: String) -> String {
        let inner = "echo \(WorkerChannel.pidMarker)$$ >&2\n" + script
        return "exec /bin/sh -c \(shellQuote(inner))"
    }

    /// Opens an exec channel running the worker and wires it to a socketpair;
    /// nil while the session has a send half written (try again later).
    private func launch() throws -> (any WorkerConnection)? {
        if let failed = connectError {
            // The host was unreachable: launches asked at about the same
            // time share that answer; a later one (the pool paces its
            // retries, a second apart at least) tries again, so that a host
            // that comes back rejoins the pool.
            guard MonotonicClock.now() &- connectFailedAt >= HostLink.reconnectAfter else { throw failed }
            connectError = nil
            connectFirst()
            if let connectError { throw connectError }
        }
        guard let remotePath else { throw SSHError.failed(host: host.label, "no worker executable") }
        let session: SSHSession
        if let existing = sessions.first(where: { $0.channelCount < HostLink.channelsPerSession && !$0.hungUp }) {
            guard existing.pendingSend == nil else { return nil }
            session = existing
        } else {
            session = try SSHSession(host: host, options: options, deadline: deadline())
            sessions.append(session)
        }
        libssh2_session_set_blocking(session.handle, 1)
        session.setTimeout(until: deadline())
        defer { libssh2_session_set_blocking(session.handle, 0) }
        let handle: OpaquePointer
        do {
            let script = try WorkerShipping.launchCommand(remotePath: remotePath, options: options,
                                                          environment: [(WorkerEnvironment.variable, "worker:1:stdio:0")],
                                                          label: host.label)
            handle = try session.startCommand(HostLink.workerCommand(script: script))
        } catch {
            // A blocking call that timed out may leave a packet half sent.
            if libssh2_session_last_errno(session.handle) == LIBSSH2_ERROR_TIMEOUT {
                lose(session, because: "connection to host \(host.label) lost: \(error)")
            }
            throw error
        }
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
        let channel = WorkerChannel(connection: connection, session: session, channel: handle, socket: fds[1], logger: logger)
        // The slot is free as soon as the worker ends, before the core hears
        // of it: a replacement then goes back to this host (and fails here,
        // paced by the pool, while it is down) instead of crowding others.
        channel.onFinish = { [unowned self, unowned channel] in self.releaseSlot(channel) }
        channels[id] = channel
        session.channelCount += 1
        return connection
    }

    /// Pumps every channel, round robin (each takes at most
    /// `WorkerChannel.turnBytes` per stream per turn), until nothing moves
    /// (bounded, to stay responsive). A session with a send half written
    /// runs only the call that must finish it. Returns whether it stopped
    /// at its bound with bytes still moving.
    private func pumpAll() -> Bool {
        var unfinished = false
        for turn in 0..<64 {
            var progress = false
            for session in sessions {
                let members = channels.values.filter { $0.session === session }.sorted { $0.connection.id < $1.connection.id }
                    + orphans.filter { $0.session === session }
                // Fairness across turns: start after the channel served first last time.
                let start = members.isEmpty ? 0 : session.turn % members.count
                session.turn &+= 1
                do {
                    for index in 0..<members.count where try members[(start + index) % members.count].pump() { progress = true }
                } catch {
                    lose(session, because: "connection to host \(host.label) lost: \(error.reason)")
                    progress = true
                    continue
                }
            }
            orphans.removeAll(where: \.finished)
            // Nothing moved, but a read may have left another channel's
            // bytes inside libssh2 (no poll would show them): one more turn.
            if !progress && !channels.values.contains(where: \.hasBufferedInput) && !orphans.contains(where: \.hasBufferedInput) {
                break
            }
            if turn == 63 { unfinished = true }
        }
        // A hung-up connection: what could be read was read; the rest is lost.
        for session in sessions where session.hungUp {
            lose(session, because: "connection to host \(host.label) lost: the connection was closed")
        }
        return unfinished
    }

    /// Probes silent sessions, drops the ones that stay silent; returns the
    /// poll timeout (ms). libssh2's keepalives (want_reply 0, so no replies
    /// pile up; sent only from its blocking waits) prove nothing: a session
    /// with channels that heard nothing for an interval gets a request the
    /// server must answer (the probe, which is also the idle session's
    /// traffic); three silent intervals lose it. A session without channels
    /// relies on TCP keepalives and hang-up notices.
    private func liveness() -> Int32 {
        let interval = keepaliveNanos
        var timeout = Int32(interval / 1_000_000)
        let now = cpp_monotonic_ns()
        for session in sessions {
            let members = channels.values.filter { $0.session === session && !$0.finished && !$0.closeRequested }
            guard !members.isEmpty else {
                session.lastHeard = now
                session.probeSince = nil
                continue
            }
            let silent = now > session.lastHeard ? now - session.lastHeard : 0
            if silent > 3 * interval {
                lose(session, because: "connection to host \(host.label) lost: no answer for \(silent / 1_000_000_000) s")
                continue
            }
            do {
                if let prober = members.first(where: \.probing) {
                    // Under way: drive it until the answer came.
                    try prober.probe()
                    timeout = min(timeout, 100)
                } else if silent >= interval && session.pendingSend == nil {
                    session.probeSince = now
                    try members.min(by: { $0.connection.id < $1.connection.id })!.probe()
                    timeout = min(timeout, 100)
                } else {
                    timeout = min(timeout, max(10, Int32((interval - min(silent, interval)) / 1_000_000) + 1))
                }
            } catch {
                lose(session, because: "connection to host \(host.label) lost: \(error.reason)")
                continue
            }
        }
        return timeout
    }

    /// Gives `channel`'s slot back to the host's count, once.
    private func releaseSlot(_ channel: WorkerChannel) {
        guard !channel.slotReleased else { return }
        channel.slotReleased = true
        load.subtract(1, ordering: .relaxed)
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
        for case .launch(let completion) in deferred {
            completion(.failure(SSHError.failed(host: host.label, "the pool is closed")))
        }
        deferred = []
        let wake = wake
        let left = inbox.guarded { inbox in
            inbox.stopped = true
            Glibc.close(wake)
            let left = inbox.commands
            inbox.commands = []
            return left
        }
        for case .launch(let completion) in left {
            completion(.failure(SSHError.failed(host: host.label, "the pool is closed")))
        }
    }
}
