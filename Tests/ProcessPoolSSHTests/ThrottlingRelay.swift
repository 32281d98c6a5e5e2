import Glibc

/// A TCP relay on loopback between the pool and an sshd that makes the link
/// slow: `latency` each way, at most `bytesPerSecond` per direction, optional
/// stalls, and connections that can be cut. One thread accepts; each
/// connection gets one thread per direction (poll, non-blocking sockets).
final class ThrottlingRelay: @unchecked Sendable {
    let port: Int
    let targetPort: Int
    let latency: Double
    let bytesPerSecond: Double
    private let listener: Int32
    private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private var sockets: [Int32] = []
    private var stalledUntil = 0.0
    private var closed = false
    private var moved = 0
    private var threads: [pthread_t] = []

    /// - Parameters:
    ///   - targetPort: The sshd on 127.0.0.1 to relay to.
    ///   - latency: Seconds added each way (20 ms by default).
    ///   - bytesPerSecond: Cap per direction and connection (4 MB/s by default).
    init(to targetPort: Int, latency: Double = 0.020, bytesPerSecond: Double = 4_000_000) throws {
        self.targetPort = targetPort
        self.latency = latency
        self.bytesPerSecond = bytesPerSecond
        pthread_mutex_init(lock, nil)
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        listener = fd
        var on: Int32 = 1
        _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, socklen_t(MemoryLayout<Int32>.size))
        var address = ThrottlingRelay.loopback(port: 0)
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0
            }
        }
        guard ok, listen(fd, 64) == 0 else { close(fd); throw FixtureError("relay: cannot listen") }
        port = Int(UInt16(bigEndian: address.sin_port))
        startThread { [self] in acceptLoop() }
    }

    /// Bytes moved so far (both directions).
    var bytesMoved: Int { locked { moved } }

    /// Nothing moves (either way, every connection) for `seconds`.
    func stall(for seconds: Double) { locked { stalledUntil = cpp_now() + seconds } }

    /// Cuts every connection (both ends see a reset or EOF); new ones still work.
    func cutConnections() {
        locked {
            for fd in sockets { _ = shutdown(fd, Int32(SHUT_RDWR)) }
        }
    }

    /// Stops accepting, cuts everything and waits for the threads.
    func stop() {
        let all: [pthread_t] = locked {
            closed = true
            for fd in sockets { _ = shutdown(fd, Int32(SHUT_RDWR)) }
            _ = shutdown(listener, Int32(SHUT_RDWR))
            return threads
        }
        for thread in all { pthread_join(thread, nil) }
        locked {
            for fd in sockets { close(fd) }
            sockets = []
        }
        close(listener)
    }

    // MARK: Inside

    private func locked<R>(_ body: () -> R) -> R {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        return body()
    }

    private final class Box { let body: () -> Void; init(_ body: @escaping () -> Void) { self.body = body } }

    private func startThread(_ body: @escaping () -> Void) {
        let box = Unmanaged.passRetained(Box(body)).toOpaque()
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { raw in
            let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
            box.body()
            return nil
        }, box)
        guard rc == 0 else { Unmanaged<Box>.fromOpaque(box).release(); return }
        locked { threads.append(thread) }
    }

    private static func loopback(port: Int) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(port).bigEndian
        return address
    }

    private func acceptLoop() {
        while true {
            let client = accept(listener, nil, nil)
            if client < 0 {
                if errno == EINTR { continue }
                return
            }
            if locked({ closed }) { close(client); return }
            let server = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            var address = ThrottlingRelay.loopback(port: targetPort)
            let connected = withUnsafePointer(to: &address) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(server, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
                }
            }
            guard connected else { close(client); close(server); continue }
            var on: Int32 = 1
            for fd in [client, server] {
                _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &on, socklen_t(MemoryLayout<Int32>.size))
                _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            }
            locked { sockets += [client, server] }
            startThread { [self] in pump(from: client, to: server) }
            startThread { [self] in pump(from: server, to: client) }
        }
    }

    /// One direction: bytes read from `source` are delivered to `target`
    /// `latency` later, paced to `bytesPerSecond` (a token bucket, 16 KiB burst).
    private func pump(from source: Int32, to target: Int32) {
        struct Chunk { var bytes: [UInt8]; var offset: Int; var due: Double }
        var queue: [Chunk] = []
        var queued = 0
        var tokens = 0.0
        var last = cpp_now()
        let burst = 16384.0
        var buffer = [UInt8](repeating: 0, count: 65536)
        var sourceDone = false
        while true {
            let now = cpp_now()
            tokens = min(burst, tokens + (now - last) * bytesPerSecond)
            last = now
            let stalled = locked { closed ? -1 : stalledUntil }
            if stalled < 0 { return }
            // Send what is due, as the bucket allows.
            var blocked = false
            while let head = queue.first, head.due <= now, stalled <= now, tokens >= 1 {
                let size = min(head.bytes.count - head.offset, Int(tokens))
                let n = head.bytes.withUnsafeBytes { raw in send(target, raw.baseAddress! + head.offset, size, Int32(MSG_NOSIGNAL)) }
                if n > 0 {
                    tokens -= Double(n)
                    queued -= n
                    locked { moved += n }
                    queue[0].offset += n
                    if queue[0].offset == queue[0].bytes.count { queue.removeFirst() }
                    continue
                }
                if n < 0 && (errno == EAGAIN || errno == EINTR) { blocked = true; break }
                _ = shutdown(source, Int32(SHUT_RDWR))
                return
            }
            if sourceDone && queue.isEmpty {
                _ = shutdown(target, Int32(SHUT_WR))
                return
            }
            var fds = [pollfd(fd: source, events: 0, revents: 0), pollfd(fd: target, events: 0, revents: 0)]
            if !sourceDone && queued < 1 << 20 { fds[0].events = Int16(POLLIN) }
            var wait = 0.050
            if let head = queue.first {
                if blocked {
                    fds[1].events = Int16(POLLOUT)
                } else {
                    let ready = max(head.due, stalled)
                    wait = min(wait, max(0, ready - now), tokens >= 1 ? 0.050 : (1 - tokens) / bytesPerSecond)
                }
            }
            _ = poll(&fds, 2, Int32(max(1, wait * 1000)))
            if fds[0].revents != 0 {
                let n = buffer.withUnsafeMutableBytes { raw in recv(source, raw.baseAddress!, raw.count, 0) }
                if n > 0 {
                    queue.append(Chunk(bytes: Array(buffer[0..<n]), offset: 0, due: cpp_now() + latency))
                    queued += n
                } else if n == 0 || (errno != EAGAIN && errno != EINTR) {
                    sourceDone = true
                    if n < 0 {  // reset: cut the other side too
                        _ = shutdown(target, Int32(SHUT_RDWR))
                        return
                    }
                }
            }
        }
    }
}
