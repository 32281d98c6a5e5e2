import Glibc
import Logging
import Synchronization
import PoolTestSupport
import ProcessPool
import ProcessPoolSSH
import Testing

/// Two sshd instances stand in for a farm of two hosts.
@Suite("ssh farm of two hosts", .boundedExitWait, .serialized, .timeLimit(.minutes(3)))
struct SSHTwoHostTests {
    /// Options that reach both servers: both client keys, both host keys.
    static func options(_ a: SSHDFixture, _ b: SSHDFixture) throws -> SSHOptions {
        var options = a.options()
        options.identityFiles = [a.clientKey, b.clientKey]
        options.knownHostsFile = a.directory + "/farm_known_hosts"
        try writeFile(options.knownHostsFile,
                      a.knownHostsLine(hostKey: a.directory + "/host_ed25519.pub")
                      + b.knownHostsLine(hostKey: b.directory + "/host_ed25519.pub"))
        return options
    }

    @Test("work runs on both hosts; a host cut mid-task breaks the pool naming that host, not the other")
    func oneHostCut() async throws {
        try await withServer { a in
            try await withServer { b in
                let pool = try ProcessPoolExecutor(
                    context: .ssh([try a.host(workers: 1), try b.host(workers: 1)], options: try Self.options(a, b)),
                    tasks: testRegistry)
                // A round of short tasks reaches both hosts.
                var sum = 0
                for try await value in try pool.map((1...200).map { Echo($0) }, chunkSize: 5) { sum += value }
                #expect(sum == 200 * 201 / 2)
                // One endless task per host; then host b's connection dies.
                let gate = a.directory + "/never"
                let first = try pool.submit(WaitForFile(path: gate))
                let second = try pool.submit(WaitForFile(path: gate))
                #expect(eventually(30) { !a.remoteWorkers().isEmpty && !b.remoteWorkers().isEmpty },
                        "both hosts run a worker")
                #expect(eventually(30) { first.isRunning && second.isRunning })
                for pid in b.connectionProcesses() { kill(pid, SIGKILL) }
                let reason = await brokenReason { _ = try await settle(second, within: 60) }
                #expect(reason.contains("127.0.0.1:\(b.port)"), "the reason names host b: \(reason)")
                #expect(!reason.contains("127.0.0.1:\(a.port)"), "the reason does not blame host a: \(reason)")
                #expect(first.isDone, "the whole pool is broken (default policy), so host a's future ends too")
                await pool.shutdown()
                #expect(eventually(30) { a.remoteWorkers().isEmpty }, "host a's worker is stopped")
            }
        }
    }

    @Test("retry: a host lost mid-map; the map completes on the other host, and the lost host rejoins when its sshd is back")
    func hostLostWithRetries() async throws {
        try await withServer { a in
            try await withServer { b in
                var options = try Self.options(a, b)
                options.connectTimeout = .seconds(3)
                let log = CapturedLog()
                let pool = try ProcessPoolExecutor(
                    context: .ssh([try a.host(workers: 1), try b.host(workers: 1)], options: options),
                    tasks: testRegistry, logger: log.logger, failurePolicy: .retry(maxAttempts: 5))
                var values: [Int] = []
                var restarted: pid_t?
                for try await output in try pool.map((0..<300).map { TaggedEcho($0, microseconds: 3_000) }) {
                    values.append(output.value)
                    if values.count == 60 {
                        // Host b goes down: its listener first (killed after its
                        // connections, it could still accept the pool's reconnect,
                        // whose orphaned connection then served on: seen under TSan),
                        // then its connections.
                        let connections = b.connectionProcesses()
                        kill(b.pid, SIGKILL)
                        for pid in connections { kill(pid, SIGKILL) }
                    }
                }
                #expect(values == Array(0..<300), "every result once, in order, though host b was lost")
                #expect(pool.brokenReason == nil)
                // The pool keeps trying host b, backing off.
                let gate = a.directory + "/never"
                let holders = try (0..<2).map { _ in try pool.submit(WaitForFile(path: gate)) }
                #expect(eventually(30) { log.count(containing: "could not start one more worker") >= 2 },
                        "the pool tried host b again after failing; it logged: \(log.all)")
                // Host b comes back on the same port: it rejoins.
                restarted = try spawn([SSHDFixture.sshd, "-D", "-f", b.directory + "/sshd_config", "-e"],
                                      stderr: b.directory + "/sshd2.log")
                #expect(eventually(60) { b.remoteWorkers(listener: restarted!).count == 1 }, "host b rejoined the pool")
                for holder in holders { holder.interrupt() }
                #expect(try await settle(pool.submit(Echo(3))) == 3)
                await pool.shutdown()
                #expect(eventually(30) { a.remoteWorkers().isEmpty && b.remoteWorkers(listener: restarted!).isEmpty })
                if let restarted {
                    kill(restarted, SIGTERM)
                    var status: Int32 = 0
                    _ = waitpid(restarted, &status, 0)
                }
            }
        }
    }

    @Test("retry over ssh: a poison task that always segfaults among 300 good ones fails alone, naming each attempt")
    func poisonTaskOverSSH() async throws {
        try await withServer { server in
            let pool = try ProcessPoolExecutor(context: .ssh([try server.host(workers: 2)], options: server.options()),
                                               tasks: testRegistry, failurePolicy: .retry(maxAttempts: 3))
            var good: [TaskFuture<Int>] = []
            for i in 0..<150 { good.append(try pool.submit(Echo(i))) }
            let poison = try pool.submit(Die(.sigsegv))
            for i in 150..<300 { good.append(try pool.submit(Echo(i))) }
            do {
                _ = try await settle(poison)
                Issue.record("the poison task succeeded")
            } catch let lost as WorkerLost {
                #expect(lost.attempts.count == 3, "\(lost)")
                #expect(lost.attempts.allSatisfy { $0.end.contains(segfaultEnd) }, "\(lost)")
                #expect(lost.attempts.allSatisfy { $0.worker.contains("127.0.0.1:\(server.port)") }, "\(lost)")
                #expect(Set(lost.attempts.map(\.worker)).count == 3, "three different workers: \(lost)")
            }
            var sum = 0
            for future in good { sum += try await settle(future) }
            #expect(sum == (0..<300).reduce(0, +), "every good task ran")
            #expect(pool.brokenReason == nil)
            #expect(try await settle(pool.submit(Echo(9))) == 9, "the pool still works")
            await pool.shutdown()
            #expect(eventually(30) { server.remoteWorkers().isEmpty })
        }
    }

    @Test("interrupt over ssh: the remote worker is stopped and replaced; the pool stays healthy")
    func interruptOverSSH() async throws {
        try await withServer { server in
            let pool = try ProcessPoolExecutor(context: .ssh([try server.host(workers: 1)], options: server.options()),
                                               tasks: testRegistry)
            let blocker = try pool.submit(WaitForFile(path: server.directory + "/never"))
            #expect(eventually(30) { blocker.isRunning && !server.remoteWorkers().isEmpty })
            let first = Set(server.remoteWorkers())
            #expect(blocker.interrupt())
            do {
                _ = try await blocker.value
                Issue.record("the interrupted task returned")
            } catch is CancellationError {}
            #expect(try await settle(pool.submit(Echo(4))) == 4)
            #expect(eventually(30) { first.isDisjoint(with: server.remoteWorkers()) }, "the old remote worker is gone")
            // And a time limit over ssh.
            do {
                _ = try await settle(pool.submit(WaitForFile(path: server.directory + "/never"), timeLimit: .milliseconds(500)))
                Issue.record("the endless task returned")
            } catch let exceeded as TaskTimeLimitExceeded {
                #expect(exceeded.worker.contains("127.0.0.1:\(server.port)"), "\(exceeded)")
            }
            #expect(pool.brokenReason == nil)
            await pool.shutdown()
            #expect(eventually(30) { server.remoteWorkers().isEmpty })
        }
    }
}

/// A logger that keeps what the pool says, for tests to wait on.
final class CapturedLog: LogHandler, @unchecked Sendable {
    private let lines = Mutex<[String]>([])
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .info

    var logger: Logger { Logger(label: "captured") { _ in self } }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        lines.guarded { $0.append("\(event.message) \(event.metadata ?? [:])") }
    }

    /// Everything logged so far.
    var all: [String] { lines.guarded { $0 } }

    /// How many lines so far contain `text`.
    func count(containing text: String) -> Int { lines.guarded { $0.count { $0.contains(text) } } }
}
