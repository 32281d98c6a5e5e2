// A throttling TCP relay for the soak's ssh mode (--relay), after the ssh
// tests' ThrottlingRelay: latency each way, a rate cap per direction, and
// connections that can be cut. Unlike the tests' relay it runs for the whole
// soak, so each connection's thread closes its sockets and ends when both
// directions are done: no descriptor or thread piles up across rounds.
import Glibc
import Synchronization

final class SoakRelay: Sendable {
    let port: Int
    let targetPort: Int
    let latency: Double
    let bytesPerSecond: Double
    private let listener: Int32
    private struct State {
        var sockets: Set<Int32> = []
        var closed = false
        var threads = 0
        var connections = 0
        var cuts = 0
    }
    private let state = Mutex(State())

    init(to targetPort: Int, latency: Double, bytesPerSecond: Double) throws {
        self.targetPort = targetPort
        self.latency = latency
        self.bytesPerSecond = bytesPerSecond
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        listener = fd
        var on: Int32 = 1
        _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, socklen_t(MemoryLayout<Int32>.size))
        var address = soakLoopback(port: 0)
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0
            }
        }
        guard ok, listen(fd, 64) == 0 else { close(fd); throw SoakSetupError("relay: cannot listen") }
        port = Int(UInt16(bigEndian: address.sin_port))
        startThread { [self] in acceptLoop() }
    }

    /// Connections relayed so far.
    var connections: Int { state.withLock { $0.connections } }

    /// Cuts every open connection (both ends see EOF or a reset); new ones still work.
    /// Returns how many connections were cut.
    @discardableResult
    func cutConnections() -> Int {
        state.withLock { state in
            for fd in state.sockets { _ = shutdown(fd, Int32(SHUT_RDWR)) }
            state.cuts += 1
            return state.sockets.count / 2
        }
    }

    /// Stops accepting, cuts everything and waits (up to 5 s) for every
    /// thread to end. Returns false if some did not.
    func stop() -> Bool {
        state.withLock { state in
            state.closed = true
            for fd in state.sockets { _ = shutdown(fd, Int32(SHUT_RDWR)) }
        }
        _ = shutdown(listener, Int32(SHUT_RDWR))
        let deadline = soakNow() + 5
        while state.withLock({ $0.threads }) > 0 && soakNow() < deadline { usleep(2000) }
        let done = state.withLock { $0.threads } == 0
        close(listener)
        return done
    }

    // MARK: Inside

    private final class Box { let body: () -> Void; init(_ body: @escaping () -> Void) { self.body = body } }

    private func startThread(_ body: @escaping @Sendable () -> Void) {
        state.withLock { $0.threads += 1 }
        let wrapped: @Sendable () -> Void = { [self] in
            body()
            state.withLock { $0.threads -= 1 }
        }
        let box = Unmanaged.passRetained(Box(wrapped)).toOpaque()
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { raw in
            let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
            box.body()
            return nil
        }, box)
        if rc == 0 {
            pthread_detach(thread)
        } else {
            Unmanaged<Box>.fromOpaque(box).release()
            state.withLock { $0.threads -= 1 }
        }
    }

    private func acceptLoop() {
        while true {
            let client = accept(listener, nil, nil)
            if client < 0 {
                if errno == EINTR || errno == ECONNABORTED { continue }
                return
            }
            _ = fcntl(client, F_SETFD, FD_CLOEXEC)
            let server = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            var address = soakLoopback(port: targetPort)
            let connected = withUnsafePointer(to: &address) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(server, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
                }
            }
            let accepted = state.withLock { state -> Bool in
                guard !state.closed, connected else { return false }
                state.sockets.insert(client)
                state.sockets.insert(server)
                state.connections += 1
                return true
            }
            guard accepted else {
                close(client)
                close(server)
                if state.withLock({ $0.closed }) { return }
                continue
            }
            var on: Int32 = 1
            for fd in [client, server] {
                _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &on, socklen_t(MemoryLayout<Int32>.size))
                _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            }
            startThread { [self] in relay(client, server) }
        }
    }

    /// One connection, both directions, on one thread; closes both sockets at the end.
    private func relay(_ client: Int32, _ server: Int32) {
        var up = Direction(source: client, target: server)
        var down = Direction(source: server, target: client)
        while !(up.finished && down.finished) {
            if state.withLock({ $0.closed }) { break }
            let now = soakNow()
            up.send(now: now, rate: bytesPerSecond)
            down.send(now: now, rate: bytesPerSecond)
            if up.failed || down.failed { break }
            var fds: [pollfd] = []
            var wait = 0.050
            for direction in [up, down] {
                // A finished source is left out (-1): its hang-up would wake poll at once, again and again.
                fds.append(pollfd(fd: direction.sourceDone ? -1 : direction.source,
                                  events: direction.wantsInput ? Int16(POLLIN) : 0, revents: 0))
                fds.append(pollfd(fd: direction.blocked ? direction.target : -1, events: Int16(POLLOUT), revents: 0))
                if let next = direction.nextDue(now: now, rate: bytesPerSecond) { wait = min(wait, next) }
            }
            _ = poll(&fds, nfds_t(fds.count), Int32(max(1, wait * 1000)))
            if fds[0].revents != 0 { up.receive(latency: latency) }
            if fds[2].revents != 0 { down.receive(latency: latency) }
            if up.reset || down.reset { break }
        }
        state.withLock { state in
            state.sockets.remove(client)
            state.sockets.remove(server)
        }
        close(client)
        close(server)
    }

    /// One direction: bytes read from `source` go to `target` `latency`
    /// later, paced by a token bucket (16 KiB burst).
    private struct Direction {
        struct Chunk { var bytes: [UInt8]; var offset: Int; var due: Double }
        let source: Int32
        let target: Int32
        var queue: [Chunk] = []
        var queued = 0
        var tokens = 0.0
        var last = soakNow()
        var sourceDone = false
        var shutDownTarget = false
        var blocked = false
        var failed = false
        var reset = false

        init(source: Int32, target: Int32) {
            self.source = source
            self.target = target
        }

        var finished: Bool { sourceDone && queue.isEmpty }
        var wantsInput: Bool { !sourceDone && queued < 1 << 20 }

        mutating func send(now: Double, rate: Double) {
            tokens = min(16384, tokens + (now - last) * rate)
            last = now
            blocked = false
            while let head = queue.first, head.due <= now, tokens >= 1 {
                let size = min(head.bytes.count - head.offset, Int(tokens))
                let n = head.bytes.withUnsafeBytes { raw in
                    Glibc.send(target, raw.baseAddress! + head.offset, size, Int32(MSG_NOSIGNAL))
                }
                if n > 0 {
                    tokens -= Double(n)
                    queued -= n
                    queue[0].offset += n
                    if queue[0].offset == queue[0].bytes.count { queue.removeFirst() }
                    continue
                }
                if n < 0 && (errno == EAGAIN || errno == EINTR) { blocked = true; return }
                failed = true
                return
            }
            if sourceDone && queue.isEmpty && !shutDownTarget {
                _ = shutdown(target, Int32(SHUT_WR))
                shutDownTarget = true
            }
        }

        /// Seconds until something can be sent, if anything waits.
        func nextDue(now: Double, rate: Double) -> Double? {
            guard let head = queue.first, !blocked else { return nil }
            return max(max(0, head.due - now), tokens >= 1 ? 0 : (1 - tokens) / rate)
        }

        mutating func receive(latency: Double) {
            var buffer = [UInt8](repeating: 0, count: 65536)
            let n = buffer.withUnsafeMutableBytes { raw in recv(source, raw.baseAddress!, raw.count, 0) }
            if n > 0 {
                queue.append(Chunk(bytes: Array(buffer[0..<n]), offset: 0, due: soakNow() + latency))
                queued += n
            } else if n == 0 {
                sourceDone = true
            } else if errno != EAGAIN && errno != EINTR {
                sourceDone = true
                reset = true  // a reset (or a cut): cut the other side too
            }
        }
    }
}
