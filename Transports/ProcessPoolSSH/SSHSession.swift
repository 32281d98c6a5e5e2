import CLibSSH2
import CProcessPoolShim
import Glibc
import ProcessPoolCore

/// One authenticated libssh2 session over its own TCP connection. Not
/// thread-safe: only its host's thread uses it. Set up in libssh2's blocking
/// mode (bounded by a timeout), then switched to non-blocking for the pump.
final class SSHSession {
    let socket: Int32
    let handle: OpaquePointer
    let host: ResolvedHost
    /// Worker channels on this session (sshd allows 10 per connection).
    var channelCount = 0
    /// When bytes last arrived from the host (monotonic ns): set when poll
    /// reports the socket readable.
    var lastHeard = cpp_monotonic_ns()
    /// A liveness probe (a request the server must answer) is under way
    /// since this time (monotonic ns).
    var probeSince: UInt64?
    /// The connection hung up or failed (poll said so); channels drain, then it goes.
    var hungUp = false
    /// Which channel is served first in the next pump turn (round robin).
    var turn = 0
    private var freed = false

    /// A libssh2 call on this session that may send a packet.
    enum SendOp: Equatable {
        case write, eof, close, waitClosed, read(Int32), probe
    }

    /// The call whose packet libssh2 1.10 has half written (it returned
    /// EAGAIN with the socket blocked outbound). Until that same call (same
    /// owner, same operation, same buffer) is repeated to completion, any
    /// other send on the session fails with LIBSSH2_ERROR_BAD_USE (-39), and
    /// reads may send window adjusts: nothing else on the session runs.
    struct PendingSend: Equatable {
        var owner: ObjectIdentifier
        var op: SendOp
    }
    private(set) var pendingSend: PendingSend?

    /// Whether `owner` may make call `op` now (nothing else is half sent).
    func maySend(_ owner: AnyObject, _ op: SendOp) -> Bool {
        guard let pendingSend else { return true }
        return pendingSend == PendingSend(owner: ObjectIdentifier(owner), op: op)
    }

    /// Records the result of a call `maySend` allowed: EAGAIN while blocked
    /// outbound leaves a half-written packet that only this call may finish.
    func noteSend(_ owner: AnyObject, _ op: SendOp, _ rc: Int) {
        let record = PendingSend(owner: ObjectIdentifier(owner), op: op)
        if rc == Int(LIBSSH2_ERROR_EAGAIN) && libssh2_session_block_directions(handle) & LIBSSH2_SESSION_BLOCK_OUTBOUND != 0 {
            pendingSend = record
        } else if pendingSend == record {
            pendingSend = nil
        }
    }

    /// Forgets a pending call whose owner went away with the session.
    func clearPending(of owner: AnyObject) {
        if pendingSend?.owner == ObjectIdentifier(owner) { pendingSend = nil }
    }

    private static let initialized: Bool = { libssh2_init(0) == 0 }()

    /// Connects, checks the host key and authenticates before `deadline` (monotonic ns).
    init(host: ResolvedHost, options: SSHOptions, deadline: UInt64) throws {
        self.host = host
        guard SSHSession.initialized else { throw SSHError.failed(host: host.label, "libssh2_init failed") }
        socket = try SSHSession.connect(host, deadline: deadline)
        guard let session = libssh2_session_init_ex(nil, nil, nil, nil) else {
            Glibc.close(socket)
            throw SSHError.failed(host: host.label, "libssh2_session_init failed")
        }
        handle = session
        do {
            try setUp(options: options, deadline: deadline)
        } catch {
            free()
            throw error
        }
    }

    deinit { free() }

    /// Disconnects and releases the session and its socket.
    func free() {
        guard !freed else { return }
        freed = true
        _ = libssh2_session_disconnect_ex(handle, SSH_DISCONNECT_BY_APPLICATION, "bye", "")
        _ = libssh2_session_free(handle)
        Glibc.close(socket)
    }

    /// Sets libssh2's blocking-call timeout to what is left before `deadline`.
    func setTimeout(until deadline: UInt64) {
        let now = cpp_monotonic_ns()
        let ms = deadline > now ? max(1, (deadline - now) / 1_000_000) : 1
        libssh2_session_set_timeout(handle, Int(ms))
    }

    private func setUp(options: SSHOptions, deadline: UInt64) throws {
        libssh2_session_set_blocking(handle, 1)
        setTimeout(until: deadline)
        // known_hosts files, HostKeyAlias and the policy as ssh config and
        // SSHOptions resolve them for this host.
        let knownHosts = KnownHosts(host: host, options: options)
        if knownHosts.policy != .insecureAcceptAny {
            let algorithms = knownHosts.knownAlgorithms(handle)
            if !algorithms.isEmpty {
                _ = libssh2_session_method_pref(handle, LIBSSH2_METHOD_HOSTKEY, algorithms.joined(separator: ","))
            }
        }
        guard libssh2_session_handshake(handle, socket) == 0 else {
            throw SSHError.failed(host: host.label, "ssh handshake failed: \(lastError())")
        }
        try knownHosts.verify(handle, policy: knownHosts.policy, label: host.label)
        try SSHAuthentication(session: self, options: options).authenticate()
        let seconds = max(1, Int(options.keepaliveInterval.components.seconds))
        // want_reply 0: libssh2 1.10 never consumes the replies (they pile up
        // in the session's packet list, libssh2 issue 623). libssh2 sends
        // these only while it waits in blocking mode (set-up, launches,
        // signals); the non-blocking pump sends none. Liveness is ours: the
        // time of the last bytes received, and a probe that must be answered.
        libssh2_keepalive_config(handle, 0, UInt32(seconds))
        // A dead network with no channel to probe: the kernel's keepalives
        // notice. (Not TCP_USER_TIMEOUT: a slow receiver's zero window
        // counts against it, and an upload under ThreadSanitizer hit it.)
        var on: Int32 = 1
        var idle = Int32(seconds), count: Int32 = 3
        _ = setsockopt(socket, SOL_SOCKET, SO_KEEPALIVE, &on, socklen_t(MemoryLayout<Int32>.size))
        _ = setsockopt(socket, Int32(IPPROTO_TCP), TCP_KEEPIDLE, &idle, socklen_t(MemoryLayout<Int32>.size))
        _ = setsockopt(socket, Int32(IPPROTO_TCP), TCP_KEEPINTVL, &idle, socklen_t(MemoryLayout<Int32>.size))
        _ = setsockopt(socket, Int32(IPPROTO_TCP), TCP_KEEPCNT, &count, socklen_t(MemoryLayout<Int32>.size))
    }

    /// Runs a short `command` in blocking mode (nothing may be half sent),
    /// keeping at most `limit` bytes of its output; returns its exit status
    /// (-1 when it could not run). The session is left non-blocking.
    func runBounded(_ command: String, limit: Int = 4096, deadline: UInt64) -> (status: Int32, output: String) {
        precondition(pendingSend == nil)
        libssh2_session_set_blocking(handle, 1)
        setTimeout(until: deadline)
        defer { libssh2_session_set_blocking(handle, 0) }
        guard let channel = try? startCommand(command) else { return (-1, "") }
        defer { _ = libssh2_channel_free(channel) }
        _ = libssh2_channel_send_eof(channel)
        var kept: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        for stream in [Int32(0), SSH_EXTENDED_DATA_STDERR] {
            while true {
                let n = chunk.withUnsafeMutableBytes { raw in
                    libssh2_channel_read_ex(channel, stream, raw.baseAddress!.assumingMemoryBound(to: CChar.self), raw.count)
                }
                guard n > 0 else { break }
                if kept.count < limit { kept += chunk[0..<min(n, limit - kept.count)] }
                // Past the limit: stop reading; closing the channel ends the rest.
                if kept.count >= limit { break }
            }
        }
        _ = libssh2_channel_close(channel)
        _ = libssh2_channel_wait_closed(channel)
        return (libssh2_channel_get_exit_status(channel), String(decoding: kept, as: UTF8.self))
    }

    /// libssh2's last error message.
    func lastError() -> String {
        var message: UnsafeMutablePointer<CChar>?
        var length: Int32 = 0
        let code = libssh2_session_last_error(handle, &message, &length, 0)
        let text = message.map { String(cString: $0) } ?? "unknown error"
        return "\(text) (libssh2 error \(code))"
    }

    /// Re-arms TCP_QUICKACK: Linux clears it, and without it opening a
    /// channel waited 40 ms for a delayed ACK.
    func quickAck() {
        var on: Int32 = 1
        _ = setsockopt(socket, Int32(IPPROTO_TCP), 12 /* TCP_QUICKACK */, &on, socklen_t(MemoryLayout<Int32>.size))
    }

    /// A non-blocking TCP connection to the host, before `deadline`.
    private static func connect(_ host: ResolvedHost, deadline: UInt64) throws -> Int32 {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_family = AF_UNSPEC
        var list: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host.address, String(host.port), &hints, &list)
        guard rc == 0, let first = list else {
            throw SSHError.failed(host: host.label, "cannot resolve \(host.address): \(String(cString: gai_strerror(rc)))")
        }
        defer { freeaddrinfo(list) }
        var lastError = "no address"
        var cursor: UnsafeMutablePointer<addrinfo>? = first
        while let info = cursor {
            cursor = info.pointee.ai_next
            let fd = Glibc.socket(info.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { lastError = SystemErrorText(); continue }
            _ = cpp_set_nonblocking(fd, 1)
            var on: Int32 = 1
            _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &on, socklen_t(MemoryLayout<Int32>.size))
            if Glibc.connect(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 { return fd }
            guard errno == EINPROGRESS else { lastError = SystemErrorText(); Glibc.close(fd); continue }
            var fds = [pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)]
            let now = cpp_monotonic_ns()
            let ms = deadline > now ? Int32(min((deadline - now) / 1_000_000, 1 << 30)) : 0
            let n = Syscall.poll(&fds, timeoutMilliseconds: ms)
            if n == 0 { Glibc.close(fd); lastError = "connection timed out"; continue }
            var soError: Int32 = 0
            var len = socklen_t(MemoryLayout<Int32>.size)
            _ = getsockopt(fd, SOL_SOCKET, SO_ERROR, &soError, &len)
            if n > 0 && soError == 0 { return fd }
            lastError = String(cString: strerror(soError != 0 ? soError : errno))
            Glibc.close(fd)
        }
        throw SSHError.failed(host: host.label, "cannot connect: \(lastError)")
    }
}
