// A throttling TCP relay on loopback, for the ssh tests and pool-soak's
// `--relay` mode: it stands between the pool and an sshd and makes the link
// slow (latency each way, a rate cap per direction), can stall it, and can
// cut its connections. One thread accepts; each connection gets one thread
// (both directions, poll, non-blocking sockets) that closes its sockets and
// ends when the connection is done, so a relay that runs for a whole soak
// piles up no descriptor or thread.
import Glibc
import ProcessPoolCore
import Synchronization

public final class ThrottlingRelay: Sendable {
    /// Where the pool connects (127.0.0.1).
    public let port: Int
    /// The sshd on 127.0.0.1 relayed to.
    public let targetPort: Int
    public let latency: Double
    public let bytesPerSecond: Double
    private let listener: Int32
    private struct State {
        var sockets: Set<Int32> = []
        var closed = false
        var stalledUntil = 0.0
        var moved = 0
        var threads = 0
        var connections = 0
        var cuts = 0
    }
    private let state = Mutex(State())

    /// - Parameters:
    ///   - targetPort: The sshd on 127.0.0.1 to relay to.
    ///   - latency: Seconds added each way (20 ms by default).
    ///   - bytesPerSecond: Cap per direction and connection (4 MB/s by default).
    public init(to targetPort: Int, latency: Double = 0.020, bytesPerSecond: Double = 4_000_000) throws {
        self.targetPort = targetPort
        self.latency = latency
        self.bytesPerSecond = bytesPerSecond
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        listener = fd
        var on: Int32 = 1
        _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, socklen_t(MemoryLayout<Int32>.size))
        guard let bound = bindLoopback(fd), listen(fd, 64) == 0 else { close(fd); throw FixtureError("relay: cannot listen") }
        port = bound
        startThread { [self] in acceptLoop() }
    }

    /// Bytes moved so far (both directions, every connection).
    public var bytesMoved: Int { state.guarded { $0.moved } }

    /// Connections relayed so far.
    public var connections: Int { state.guarded { $0.connections } }

    /// How many times `cutConnections()` was called.
    public var cuts: Int { state.guarded { $0.cuts } }

    /// Threads running now (the accepting one and one per open connection).
    public var threads: Int { state.guarded { $0.threads } }

    /// Nothing moves (either way, every connection) for `seconds`.
    public func stall(for seconds: Double) { state.guarded { $0.stalledUntil = monotonicNow() + seconds } }

    /// Cuts every open connection (both ends see EOF or a reset); new ones still work.
    /// Returns how many connections were cut.
    @discardableResult
    public func cutConnections() -> Int {
        state.guarded { state in
            for fd in state.sockets { _ = shutdown(fd, Int32(SHUT_RDWR)) }
            state.cuts += 1
            return state.sockets.count / 2
        }
    }

    /// Stops accepting, cuts everything and waits (up to 5 s) for every
    /// thread to end. Returns false if some did not.
    @discardableResult
    public func stop() -> Bool {
        state.guarded { state in
            state.closed = true
            for fd in state.sockets { _ = shutdown(fd, Int32(SHUT_RDWR)) }
        }
        _ = shutdown(listener, Int32(SHUT_RDWR))
        let deadline = monotonicNow() + 5
        while threads > 0 && monotonicNow() < deadline { usleep(2000) }
        let done = threads == 0
        close(listener)
        return done
    }

    // MARK: Inside

    private final class Box { let body: () -> Void; init(_ body: @escaping () -> Void) { self.body = body } }

    private func startThread(_ body: @escaping @Sendable () -> Void) {
        state.guarded { $0.threads += 1 }
        let wrapped: @Sendable () -> Void = { [self] in
            body()
            state.guarded { $0.threads -= 1 }
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
            state.guarded { $0.threads -= 1 }
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
            let connected = connectLoopback(server, port: targetPort)
            let accepted = state.guarded { state -> Bool in
                guard !state.closed, connected else { return false }
                state.sockets.insert(client)
                state.sockets.insert(server)
                state.connections += 1
                return true
            }
            guard accepted else {
                close(client)
                close(server)
                if state.guarded({ $0.closed }) { return }
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
            let (closed, stalledUntil) = state.guarded { ($0.closed, $0.stalledUntil) }
            if closed { break }
            let now = monotonicNow()
            let sent = up.send(now: now, rate: bytesPerSecond, stalledUntil: stalledUntil)
                + down.send(now: now, rate: bytesPerSecond, stalledUntil: stalledUntil)
            if sent > 0 { state.guarded { $0.moved += sent } }
            if up.failed || down.failed { break }
            var fds: [pollfd] = []
            var wait = 0.050
            for direction in [up, down] {
                // A finished source is left out (-1): its hang-up would wake poll at once, again and again.
                fds.append(pollfd(fd: direction.sourceDone ? -1 : direction.source,
                                  events: direction.wantsInput ? Int16(POLLIN) : 0, revents: 0))
                fds.append(pollfd(fd: direction.blocked ? direction.target : -1, events: Int16(POLLOUT), revents: 0))
                if let next = direction.nextDue(now: now, rate: bytesPerSecond, stalledUntil: stalledUntil) {
                    wait = min(wait, next)
                }
            }
            _ = poll(&fds, nfds_t(fds.count), Int32(max(1, wait * 1000)))
            if fds[0].revents != 0 { up.receive(latency: latency) }
            if fds[2].revents != 0 { down.receive(latency: latency) }
            if up.reset || down.reset { break }
        }
        state.guarded { state in
            state.sockets.remove(client)
            state.sockets.remove(server)
        }
        close(client)
        close(server)
    }

    /// One direction: bytes read from `source` go to `target` `latency`
    /// later (and not before a stall ends), paced by a token bucket (16 KiB burst).
    private struct Direction {
        struct Chunk { var bytes: [UInt8]; var offset: Int; var due: Double }
        let source: Int32
        let target: Int32
        var queue: [Chunk] = []
        var queued = 0
        var tokens = 0.0
        var last = monotonicNow()
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

        /// Sends what is due, as the bucket allows; returns the bytes sent.
        mutating func send(now: Double, rate: Double, stalledUntil: Double) -> Int {
            tokens = min(16384, tokens + (now - last) * rate)
            last = now
            blocked = false
            var sent = 0
            while let head = queue.first, head.due <= now, stalledUntil <= now, tokens >= 1 {
                let size = min(head.bytes.count - head.offset, Int(tokens))
                let n = head.bytes.withUnsafeBytes { raw in
                    Glibc.send(target, raw.baseAddress! + head.offset, size, Int32(MSG_NOSIGNAL))
                }
                if n > 0 {
                    tokens -= Double(n)
                    queued -= n
                    sent += n
                    queue[0].offset += n
                    if queue[0].offset == queue[0].bytes.count { queue.removeFirst() }
                    continue
                }
                if n < 0 && (errno == EAGAIN || errno == EINTR) { blocked = true; return sent }
                failed = true
                return sent
            }
            if sourceDone && queue.isEmpty && !shutDownTarget {
                _ = shutdown(target, Int32(SHUT_WR))
                shutDownTarget = true
            }
            return sent
        }

        /// Seconds until something can be sent, if anything waits.
        func nextDue(now: Double, rate: Double, stalledUntil: Double) -> Double? {
            guard let head = queue.first, !blocked else { return nil }
            return max(max(0, max(head.due, stalledUntil) - now), tokens >= 1 ? 0 : (1 - tokens) / rate)
        }

        mutating func receive(latency: Double) {
            var buffer = [UInt8](repeating: 0, count: 65536)
            let n = buffer.withUnsafeMutableBytes { raw in recv(source, raw.baseAddress!, raw.count, 0) }
            if n > 0 {
                queue.append(Chunk(bytes: Array(buffer[0..<n]), offset: 0, due: monotonicNow() + latency))
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
