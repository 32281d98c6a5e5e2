import Foundation
import PoolTestSupport
import ProcessPool
import Testing

/// The forkserver start method: one server per executable forks every
/// worker; only this program may use it; its death breaks the pools that
/// use it and the next pool starts a fresh one.
@Suite("Forkserver", .boundedExitWait, .serialized, .timeLimit(.minutes(3)))
struct ForkServerTests {
    /// The test worker under a path of this suite's own: one server per
    /// executable path, so killing this suite's server cannot break the
    /// pools other suites run meanwhile on theirs.
    static let privateExecutable: String = {
        let directory = NSTemporaryDirectory() + "ppool-forkserver-suite-\(getpid())"
        try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let link = directory + "/PoolTestWorker"
        try? FileManager.default.removeItem(atPath: link)
        try? FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: TestEnvironment.workerExecutable)
        return link
    }()

    let executable = ForkServerTests.privateExecutable
    var method: StartMethod { .forkserver(executable: executable) }

    @Test("submit and map run on forkserver workers")
    func basic() async throws {
        let pool = try ProcessPoolExecutor(maxWorkers: 2, context: method, tasks: testRegistry)
        #expect(pool.startMethod.name == "forkserver")
        #expect(try await pool.submit(Square(7)).value == 49)
        var results: [Int] = []
        for try await value in try pool.map((0..<50).map { Echo($0) }) { results.append(value) }
        #expect(results == Array(0..<50))
        await pool.shutdown()
    }

    @Test("workers are forked by the server, which is our child")
    func workersAreServerChildren() async throws {
        let pool = try ProcessPoolExecutor(maxWorkers: 2, context: method, tasks: testRegistry)
        let worker = try await pool.submit(GetPID()).value
        let server = try #require(ForkServerHooks.serverPID(executable: executable))
        #expect(ProcInfo.stat(worker)?.parent == server)
        #expect(ProcInfo.stat(server)?.parent == getpid())
        await pool.shutdown()
    }

    @Test("SIGKILL to the server breaks its pools; the next pool gets a fresh server")
    func serverKilled() async throws {
        let gates = Gates()
        defer { gates.cleanup() }
        let pool = try ProcessPoolExecutor(maxWorkers: 1, context: method, tasks: testRegistry)
        let blocked = try pool.submit(SignalThenWait(started: gates.file("started"), gate: gates.file("never")))
        #expect(ProcInfo.eventually(30) { gates.exists("started") })
        let server = try #require(ForkServerHooks.serverPID(executable: executable))
        #expect(kill(server, SIGKILL) == 0)
        do {
            _ = try await blocked.value
            Issue.record("the task finished although its forkserver was killed")
        } catch let error as BrokenProcessPool {
            #expect(error.reason.contains("forkserver"), "\(error.reason)")
            #expect(error.reason.contains("died"), "\(error.reason)")
        }
        #expect(throws: BrokenProcessPool.self) { try pool.submit(Echo(1)) }
        await pool.shutdown()

        let next = try ProcessPoolExecutor(maxWorkers: 1, context: method, tasks: testRegistry)
        #expect(try await next.submit(Echo(5)).value == 5)
        let fresh = try #require(ForkServerHooks.serverPID(executable: executable))
        #expect(fresh != server)
        // The dead server was reaped: no zombie of ours is left behind.
        #expect(ProcInfo.eventually(10) { ProcInfo.stat(server)?.parent != getpid() })
        await next.shutdown()
    }

    @Test("a server killed while its pool is idle is reaped when the pool finishes (found by pool-soak)")
    func idleServerKilledIsReaped() async throws {
        for _ in 0..<5 {
            let pool = try ProcessPoolExecutor(maxWorkers: 1, context: method, tasks: testRegistry)
            #expect(try await pool.submit(Echo(1)).value == 1)
            let server = try #require(ForkServerHooks.serverPID(executable: executable))
            #expect(kill(server, SIGKILL) == 0)
            // The idle worker dies with its server; the pool notices and breaks.
            #expect(ProcInfo.eventually(10) { pool.brokenReason != nil })
            await pool.shutdown()
            // No zombie of ours is left, without waiting for another pool to start.
            #expect(ProcInfo.eventually(10) { ProcInfo.stat(server)?.parent != getpid() },
                    "the dead forkserver \(server) is still our unreaped child: \(String(describing: ProcInfo.stat(server))) \(pool.brokenReason ?? "")")
        }
    }

    @Test("a stranger's connection is refused and the server keeps serving")
    func strangerRefused() async throws {
        let pool = try ProcessPoolExecutor(maxWorkers: 1, context: method, tasks: testRegistry)
        #expect(try await pool.submit(Echo(1)).value == 1)
        let server = try #require(ForkServerHooks.serverPID(executable: executable))
        let address = try #require(ForkServerHooks.socketAddress(executable: executable))
        #expect(address.hasPrefix("@"))

        // A wrong key: the server hangs up at once.
        let wrongKey = ForkServerHooks.connect(toAddress: address)
        #expect(wrongKey >= 0)
        var request = [UInt8](repeating: 0xA5, count: 33)
        request[32] = 1
        #expect(request.withUnsafeBytes { send(wrongKey, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } == 33)
        #expect(ProcInfo.waitForHangUp(wrongKey, seconds: 10), "the server did not refuse a wrong key")
        close(wrongKey)

        // Silence: the server hangs up after about a second.
        let silent = ForkServerHooks.connect(toAddress: address)
        #expect(silent >= 0)
        #expect(ProcInfo.waitForHangUp(silent, seconds: 10), "the server did not drop a silent connection")
        close(silent)

        // Same server, still serving: the old pool starts another worker, a new pool works.
        #expect(ForkServerHooks.serverPID(executable: executable) == server)
        #expect(kill(server, 0) == 0)
        let futures = try (0..<4).map { try pool.submit(Square($0)) }
        for (i, future) in futures.enumerated() { #expect(try await future.value == i * i) }
        let other = try ProcessPoolExecutor(maxWorkers: 2, context: method, tasks: testRegistry)
        #expect(try await other.submit(Echo(9)).value == 9)
        #expect(ForkServerHooks.serverPID(executable: executable) == server)
        await other.shutdown()
        await pool.shutdown()
    }

    @Test("a program that is not a forkserver breaks the pool with a hint, not a hang")
    func notAForkServer() async throws {
        let pool = try ProcessPoolExecutor(maxWorkers: 1, context: .forkserver(executable: "/bin/true"),
                                           tasks: testRegistry)
        do {
            _ = try await pool.submit(Echo(1)).value
            Issue.record("/bin/true served as a forkserver")
        } catch let error as BrokenProcessPool {
            #expect(error.reason.contains("forkserver"), "\(error.reason)")
            #expect(error.reason.contains("bootstrap"), "\(error.reason)")
        }
        await pool.shutdown()
        // Both attempts were reaped.
        #expect(ProcInfo.eventually(10) { ProcInfo.zombieChildren(of: getpid()).isEmpty })
    }

    @Test("a fresh server killed by a signal before its first answer: the reason names the signal, no bootstrap hint")
    func freshServerKilledBeforeAnswer() async throws {
        // A "server" that is SIGKILLed before it can answer: as a forkserver
        // killed on purpose (pool-soak) or by the OOM killer looks.
        let gates = Gates()
        defer { gates.cleanup() }
        let script = gates.file("killed-server")
        try "#!/bin/sh\nkill -KILL $$\n".write(toFile: script, atomically: true, encoding: .utf8)
        #expect(chmod(script, 0o755) == 0)
        let pool = try ProcessPoolExecutor(maxWorkers: 1, context: .forkserver(executable: script), tasks: testRegistry)
        do {
            _ = try await pool.submit(Echo(1)).value
            Issue.record("a server killed at start served a worker")
        } catch let error as BrokenProcessPool {
            #expect(error.reason.contains("forkserver"), "\(error.reason)")
            #expect(error.reason.contains("SIGKILL"), "\(error.reason)")
            #expect(!error.reason.contains("bootstrap"), "\(error.reason)")
        }
        await pool.shutdown()
        #expect(ProcInfo.eventually(10) { ProcInfo.zombieChildren(of: getpid()).isEmpty })
    }

    @Test("a server that exits with a code before its first answer keeps the bootstrap hint and names the code")
    func freshServerExitsWithCode() async throws {
        let gates = Gates()
        defer { gates.cleanup() }
        let script = gates.file("exiting-server")
        try "#!/bin/sh\nexit 3\n".write(toFile: script, atomically: true, encoding: .utf8)
        #expect(chmod(script, 0o755) == 0)
        let pool = try ProcessPoolExecutor(maxWorkers: 1, context: .forkserver(executable: script), tasks: testRegistry)
        do {
            _ = try await pool.submit(Echo(1)).value
            Issue.record("a server that exits at start served a worker")
        } catch let error as BrokenProcessPool {
            #expect(error.reason.contains("bootstrap"), "\(error.reason)")
            #expect(error.reason.contains("exit code 3"), "\(error.reason)")
        }
        await pool.shutdown()
        #expect(ProcInfo.eventually(10) { ProcInfo.zombieChildren(of: getpid()).isEmpty })
    }

    @Test("100 pools share one server and leave no descriptor or zombie behind")
    func hundredPools() async throws {
        // Start the server first: its own two descriptors stay for the run.
        let warm = try ProcessPoolExecutor(maxWorkers: 1, context: method, tasks: testRegistry)
        _ = try await warm.submit(Echo(0)).value
        await warm.shutdown()
        let server = try #require(ForkServerHooks.serverPID(executable: executable))
        let before = ProcInfo.openDescriptorCount()

        var workers: [Int32] = []
        for i in 0..<100 {
            let pool = try ProcessPoolExecutor(maxWorkers: 1, context: method, tasks: testRegistry)
            #expect(try await pool.submit(Echo(i)).value == i)
            workers.append(try await pool.submit(GetPID()).value)
            await pool.shutdown()
        }
        #expect(ForkServerHooks.serverPID(executable: executable) == server)
        #expect(Set(workers).count == 100)

        // Every worker was reaped by the server: none is left, not even as a zombie.
        #expect(ProcInfo.eventually(10) { workers.allSatisfy { ProcInfo.stat($0)?.parent != server } },
                "workers left under the server")
        #expect(ProcInfo.eventually(10) { ProcInfo.children(of: server).isEmpty })
        #expect(ProcInfo.eventually(10) { ProcInfo.zombieChildren(of: getpid()).isEmpty })
        // Other suites may run meanwhile and hold descriptors for a moment;
        // a leak of even one descriptor per pool would show as 100 or more.
        let settled = ProcInfo.eventually(10) { ProcInfo.openDescriptorCount() <= before }
        let after = ProcInfo.openDescriptorCount()
        #expect(settled || after - before < 50, "descriptors before: \(before), after: \(after)")
    }
}

/// Gate files in a fresh temporary directory.
private struct Gates {
    let path = NSTemporaryDirectory() + "ppool-forkserver-" + UUID().uuidString

    init() { try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true) }
    func file(_ name: String) -> String { path + "/" + name }
    func exists(_ name: String) -> Bool { FileManager.default.fileExists(atPath: file(name)) }
    func cleanup() { try? FileManager.default.removeItem(atPath: path) }
}

/// What /proc says about processes and descriptors.
private enum ProcInfo {
    /// State letter and parent pid of `pid`, nil if there is no such process.
    static func stat(_ pid: Int32) -> (state: Character, parent: Int32)? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = text.lastIndex(of: ")") else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ")
        guard fields.count > 2, let state = fields[0].first, let parent = Int32(fields[1]) else { return nil }
        return (state, parent)
    }

    /// Every process whose parent is `parent`.
    static func children(of parent: Int32) -> [Int32] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap(Int32.init).filter { stat($0)?.parent == parent }
    }

    /// The children of `parent` that are zombies.
    static func zombieChildren(of parent: Int32) -> [Int32] {
        children(of: parent).filter { stat($0)?.state == "Z" }
    }

    static func openDescriptorCount() -> Int {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []).count
    }

    /// Polls `condition` until it holds or `seconds` pass.
    static func eventually(_ seconds: Double, _ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if condition() { return true }
            usleep(2000)
        }
        return condition()
    }

    /// Waits until the peer of `fd` closes (EOF or reset), up to `seconds`.
    static func waitForHangUp(_ fd: Int32, seconds: Int32) -> Bool {
        var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0)]
        guard poll(&fds, 1, seconds * 1000) > 0 else { return false }
        var byte: UInt8 = 0
        let n = recv(fd, &byte, 1, Int32(MSG_DONTWAIT))
        return n == 0 || (n < 0 && errno == ECONNRESET)
    }
}
