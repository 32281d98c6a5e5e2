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
    /// When bytes last arrived from the host (monotonic ns).
    var lastHeard = cpp_monotonic_ns()
    private var freed = false

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
        let knownHosts = KnownHosts(path: expandTilde(options.knownHostsFile), host: host.address, port: host.port)
        if options.hostKeyPolicy != .insecureAcceptAny {
            let algorithms = knownHosts.knownAlgorithms(handle)
            if !algorithms.isEmpty {
                _ = libssh2_session_method_pref(handle, LIBSSH2_METHOD_HOSTKEY, algorithms.joined(separator: ","))
            }
        }
        guard libssh2_session_handshake(handle, socket) == 0 else {
            throw SSHError.failed(host: host.label, "ssh handshake failed: \(lastError())")
        }
        try knownHosts.verify(handle, policy: options.hostKeyPolicy, label: host.label)
        try SSHAuthentication(session: self, options: options).authenticate()
        let seconds = max(1, Int(options.keepaliveInterval.components.seconds))
        libssh2_keepalive_config(handle, 1, UInt32(seconds))
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
            var pfd = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            let now = cpp_monotonic_ns()
            let ms = deadline > now ? Int32(min((deadline - now) / 1_000_000, 1 << 30)) : 0
            let n = poll(&pfd, 1, ms)
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
