import Glibc
import Logging
import PoolTestSupport
import ProcessPool
import ProcessPoolCore
@testable import ProcessPoolSSH
import Synchronization
import Testing

/// Real networks and untrusted hosts: uploads over slow or stalled links,
/// set-up commands that print without bound, a worker that floods stderr,
/// and throughput through the relay.
@Suite("ssh on real networks", .boundedExitWait, .serialized, .timeLimit(.minutes(3)))
struct SSHNetworkTests {
    /// Options for `server` reached through `relay` (its known_hosts names the relay's port as well).
    static func options(_ server: SSHDFixture, through relay: ThrottlingRelay) throws -> SSHOptions {
        let options = server.options()
        let key = readText(server.directory + "/host_ed25519.pub").split(separator: " ")
        // Added: the server's own port stays known too.
        try writeFile(options.knownHostsFile,
                      readText(options.knownHostsFile) + "[127.0.0.1]:\(relay.port) \(key[0]) \(key[1])\n")
        return options
    }

    /// The size of the test worker executable that `.upload` ships.
    static var workerSize: Int {
        var info = stat()
        return stat(TestEnvironment.workerExecutable, &info) == 0 ? Int(info.st_size) : 0
    }

    @Test("a big upload over a slow, healthy link outlasts connectTimeout: the pool starts; progress is logged, bounded")
    func slowUpload() async throws {
        try await withServer { server in
            let size = SSHNetworkTests.workerSize
            try #require(size > 1 << 20)
            // The upload alone needs about 8 s at this cap: four times connectTimeout.
            let timeout = 2.0
            let relay = try ThrottlingRelay(to: server.port, latency: 0.005, bytesPerSecond: Double(size) / (4 * timeout))
            defer { relay.stop() }
            var options = try SSHNetworkTests.options(server, through: relay)
            options.connectTimeout = .seconds(2)
            let log = LogCapture()
            let started = cpp_now()
            let pool = try ProcessPoolExecutor(
                context: .ssh([try SSHHost("root@127.0.0.1:\(relay.port)", workers: 1)], options: options),
                tasks: testRegistry, logger: log.logger)
            #expect(try await settle(try pool.submit(Echo(7)), within: 120) == 7)
            let seconds = cpp_now() - started
            print("slow upload: \(size) bytes at \(Int(Double(size) / (4 * timeout))) B/s; first result after \(seconds) s")
            #expect(seconds > 3 * timeout, "the upload was not slower than connectTimeout (\(seconds) s): the test proves nothing")
            #expect(pool.brokenReason == nil)
            await pool.shutdown()
            let progress = log.messages(at: .debug).filter { $0.contains("upload") }
            #expect(progress.contains { $0.contains("upload 50%") }, "\(progress)")
            #expect(progress.contains { $0.contains("upload done") }, "\(progress)")
            #expect(progress.count <= 12, "\(progress)")
        }
    }

    @Test("an upload that stops moving fails the pool within about the stall limit, naming the host")
    func stalledUpload() async throws {
        try await withServer { server in
            let size = SSHNetworkTests.workerSize
            try #require(size > 4 << 20)
            // Slow enough that the upload is surely under way when the stall begins.
            let relay = try ThrottlingRelay(to: server.port, latency: 0.005, bytesPerSecond: Double(size) / 8)
            defer { relay.stop() }
            var options = try SSHNetworkTests.options(server, through: relay)
            options.connectTimeout = .seconds(2)
            let pool = try ProcessPoolExecutor(
                context: .ssh([try SSHHost("root@127.0.0.1:\(relay.port)", workers: 1)], options: options), tasks: testRegistry)
            let future = try pool.submit(Echo(1))
            // Past the handshake and the probe (a few KB): the executable is moving.
            #expect(eventually(60) { relay.bytesMoved > 1 << 20 })
            relay.stall(for: 600)
            let stalled = cpp_now()
            let reason = await brokenReason { _ = try await settle(future, within: 60) }
            let seconds = cpp_now() - stalled
            print("stalled upload: failed \(seconds) s after the stall: \(reason)")
            #expect(reason.contains("127.0.0.1:\(relay.port)") && reason.contains("no progress"), "\(reason)")
            // The stall limit (2 s) after the last byte that moved, plus what
            // the buffers along the way still took.
            #expect(seconds < 10, "\(seconds) s")
            await pool.shutdown()
        }
    }

    @Test("a set-up command's output is kept bounded; the rest is drained so it ends")
    func boundedCommandOutput() async throws {
        try await withServer { server in
            let options = server.options()
            let host = try ResolvedHost(resolving: try server.host(), options: options)
            let session = try SSHSession(host: host, options: options, deadline: monotonicNanos() + 20_000_000_000)
            let limit = SSHSession.outputLimit
            let started = cpp_now()
            let result = try session.run(
                "head -c 50000000 /dev/zero; head -c 300000 /dev/zero | tr '\\0' e >&2; echo; echo MARK; echo last",
                timeout: 60_000_000_000)
            print("50 MB of output drained in \(cpp_now() - started) s")
            #expect(result.status == 0)
            #expect(result.output.utf8.count == limit)
            #expect(result.output.hasSuffix("\nMARK\nlast\n"))
            #expect(result.lines(after: "MARK") == ["last"])
            #expect(result.outputDropped == 50_000_000 + 11 - limit)
            #expect(result.errorOutput == String(repeating: "e", count: limit))
            #expect(result.errorOutputDropped == 300_000 - limit)
            #expect(result.truncated && result.errorText.hasSuffix("(\(300_000 - limit) more bytes)"))
            // Small output is kept whole.
            let small = try session.run("echo hi; echo there >&2; exit 3", timeout: 20_000_000_000)
            #expect(small.status == 3 && small.output == "hi\n" && small.errorOutput == "there\n" && !small.truncated)
        }
    }

    @Test("a set-up command that prints forever fails after its limit, naming the host")
    func endlessCommandOutput() async throws {
        try await withServer { server in
            let options = server.options()
            let host = try ResolvedHost(resolving: try server.host(), options: options)
            let session = try SSHSession(host: host, options: options, deadline: monotonicNanos() + 20_000_000_000)
            let started = cpp_now()
            var message = ""
            do {
                _ = try session.run("yes", timeout: 2_000_000_000)
                Issue.record("an endless command returned")
            } catch {
                message = "\(error)"
            }
            let seconds = cpp_now() - started
            #expect(message.contains("127.0.0.1:\(server.port)") && message.contains("did not finish"), "\(message)")
            #expect(seconds >= 1.9 && seconds < 8, "\(seconds) s")
        }
    }

    @Test("captured command output: the head or the tail, never more than the limit")
    func outputCapture() {
        var head = OutputCapture(limit: 10, keepsTail: false)
        var tail = OutputCapture(limit: 10, keepsTail: true)
        for i in 0..<100 {
            let chunk = Array(repeating: UInt8(i), count: 7)[...]
            head.take(chunk)
            tail.take(chunk)
        }
        #expect(head.kept == [0, 0, 0, 0, 0, 0, 0, 1, 1, 1] && head.dropped == 690)
        #expect(tail.kept == [98, 98, 98, 99, 99, 99, 99, 99, 99, 99] && tail.dropped == 690)
        var big = OutputCapture(limit: 4, keepsTail: true)
        big.take(Array(0..<100)[...])
        #expect(big.kept == [96, 97, 98, 99] && big.dropped == 96)
    }

    @Test("a worker writing stderr without end: its sibling's round trips stay fast; the pool shuts down")
    func endlessStderr() async throws {
        try await withServer { server in
            let log = LogCapture()
            var options = server.options()
            // A reply left inside libssh2 once waited for the poll timeout
            // (up to this interval): 10 s makes that plain against `worst`.
            options.keepaliveInterval = .seconds(10)
            let pool = try ProcessPoolExecutor(context: .ssh([try server.host(workers: 2)], options: options),
                                               tasks: testRegistry, logger: log.logger)
            #expect(try await settle(try pool.submit(Echo(0))) == 0)
            let chatty = try pool.submit(StderrForever())
            #expect(eventually(30) { chatty.isRunning && log.count(containing: "chatter on stderr") > 0 })
            let chatterBefore = log.count(containing: "chatter on stderr")
            let droppedBefore = log.droppedLines()
            // At least 40 round trips over at least 2.5 s: the log's rate
            // limit (per second) then shows how much chatter went on meanwhile.
            let startedAt = cpp_now()
            var times: [Double] = []
            while times.count < 40 || cpp_now() - startedAt < 2.5 {
                let i = times.count + 1
                let started = cpp_now()
                #expect(try await settle(try pool.submit(Echo(i))) == i)
                times.append(cpp_now() - started)
            }
            let elapsed = cpp_now() - startedAt
            let logged = log.count(containing: "chatter on stderr") - chatterBefore
            let dropped = log.droppedLines() - droppedBefore
            times.sort()
            let median = times[times.count / 2]
            print("endless stderr: \(times.count) sibling round trips, median \(median) s, worst \(times.last!) s; in \(elapsed) s the chatty worker's stderr gave \(logged) lines logged, \(dropped) dropped")
            #expect(median < 0.5, "median round trip \(median) s")
            #expect(times.last! < 3, "worst round trip \(times.last!) s")
            // The chatter went on all along (thousands of lines a second),
            // and its log stayed rate-limited.
            #expect(!chatty.isDone && dropped > 1000, "\(dropped) lines dropped")
            #expect(Double(logged) <= Double(BoundedLineLog.maxLinesPerSecond) * (elapsed + 2), "\(logged) lines in \(elapsed) s")
            pool.killWorkers()
            let reason = await brokenReason { _ = try await settle(chatty, within: 60) }
            #expect(!reason.isEmpty)
            #expect(eventually(30) { server.remoteWorkers().isEmpty })
            await pool.shutdown()
        }
    }

    /// Information only: small tasks per second through the relay's 20 ms
    /// each way against straight loopback (2 workers, 2,000 Echo tasks via
    /// map, chunks of 50).
    @Test("throughput of small tasks: relay (20 ms each way) against loopback (printed, not asserted)")
    func smallTaskThroughput() async throws {
        try await withServer { server in
            let relay = try ThrottlingRelay(to: server.port, latency: 0.020, bytesPerSecond: 100_000_000)
            defer { relay.stop() }
            let relayed = try SSHNetworkTests.options(server, through: relay)
            let direct = server.options()
            for (name, host, options) in [("loopback", try server.host(workers: 2), direct),
                                          ("relay 20 ms", try SSHHost("root@127.0.0.1:\(relay.port)", workers: 2), relayed)] {
                let pool = try ProcessPoolExecutor(context: .ssh([host], options: options), tasks: testRegistry)
                // Both workers up before the clock starts.
                let warm = try (0..<2).map { try pool.submit(Echo($0)) }
                for future in warm { _ = try await settle(future) }
                let count = 2000
                let started = cpp_now()
                var sum = 0
                for try await value in try pool.map((0..<count).map { Echo($0) }, chunkSize: 50) { sum += value }
                let seconds = cpp_now() - started
                #expect(sum == count * (count - 1) / 2)
                print("throughput \(name): \(count) Echo tasks (map, chunkSize 50, 2 workers) in \(seconds) s = \(Int(Double(count) / seconds)) tasks/s")
                await pool.shutdown()
            }
        }
    }
}

/// The monotonic clock in nanoseconds (the clock `SSHSession` deadlines use).
func monotonicNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// Log messages kept for tests to look at (every level), under a
/// `Mutex.guarded` (ThreadSanitizer sees it).
final class LogCapture: Sendable {
    private let entries = Mutex<[(level: Logger.Level, message: String)]>([])

    var logger: Logger {
        var logger = Logger(label: "ssh-test") { _ in Handler(capture: self) }
        logger.logLevel = .trace
        return logger
    }

    func messages(at level: Logger.Level) -> [String] {
        entries.guarded { $0.filter { $0.level == level }.map(\.message) }
    }

    func count(containing text: String) -> Int {
        entries.guarded { $0.reduce(0) { $0 + ($1.message.contains(text) ? 1 : 0) } }
    }

    /// The sum of N over the "…N lines dropped" notes of the bounded stderr log.
    func droppedLines() -> Int {
        entries.guarded { entries in
            entries.reduce(0) { total, entry in
                guard entry.message.hasSuffix(" lines dropped"), let mark = entry.message.lastIndex(of: "…") else { return total }
                let number = entry.message[entry.message.index(after: mark)...].prefix { $0.isNumber }
                return total + (Int(number) ?? 0)
            }
        }
    }

    fileprivate func append(_ level: Logger.Level, _ message: String) {
        entries.guarded { $0.append((level, message)) }
    }

    struct Handler: LogHandler {
        let capture: LogCapture
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(event: LogEvent) { capture.append(event.level, event.message.description) }
    }
}
