import FoundationEssentials
import Glibc
import PoolTestSupport
import ProcessPoolCore
import ProcessPool
import Testing

@Suite("Lifecycle edges (SEMANTICS 30, 40, 44)", .boundedExitWait, .timeLimit(.minutes(3)))
struct LifecycleEdgeTests {
    @Test("40: returning from main with work queued waits for it, dropped pool or not",
          arguments: ["fork", "spawn", "forkserver"])
    func exitWaitsForWork(method: String) throws {
        let gates = GateDirectory()
        defer { gates.cleanup() }
        let helper = try runHelper(["exit-with-work", method, gates.path])
        #expect(helper.readLine(prefix: "SUBMITTED") != nil)
        #expect(helper.waitForExit() == 0)
        for i in 0..<10 { #expect(gates.exists("dropped-\(i)"), "dropped pool's task \(i)") }
        for i in 0..<20 { #expect(gates.exists("kept-\(i)"), "kept pool's task \(i)") }
    }

    @Test("30: a task that cannot be encoded fails at its own item, after the items before it",
          arguments: localMethods, [1, 4])
    func encodeErrorAtItsItem(method: StartMethod, chunkSize: Int) async throws {
        let pool = try makePool(method)
        let tasks = (0..<10).map { MaybeUnencodable($0, poison: $0 == 6) }
        // Not from map() itself, and not early with bufferSize either.
        for bufferSize in [nil, 1] as [Int?] {
            var got: [Int] = []
            do {
                for try await value in try pool.map(tasks, chunkSize: chunkSize, bufferSize: bufferSize) {
                    got.append(value)
                }
                Issue.record("the poisoned item did not fail")
            } catch let error as EncodingError {
                #expect("\(error)".contains("poisoned 6"))
            }
            #expect(got == Array(0..<6), "bufferSize \(String(describing: bufferSize))")
        }
        // A lazy sequence takes the same path.
        var got: [Int] = []
        do {
            for try await value in try pool.map(tasks.lazy.map { $0 }, chunkSize: chunkSize) { got.append(value) }
        } catch is EncodingError {}
        #expect(got == Array(0..<6))
        #expect(try await settle(pool.submit(Echo(1))) == 1)
        await pool.shutdown()
    }

    @Test("44: the map iterator keeps no reference to an element it handed out", arguments: localMethods)
    func iteratorReleasesElements(method: StartMethod) async throws {
        let pool = try makePool(method)
        weak var previous: MakeBox.Box?
        var count = 0
        var stillAlive: [Int] = []
        var wrong: [Int] = []
        // (No #expect inside the loop: it may keep the values it evaluated.)
        for try await box in try pool.map((0..<50).map { MakeBox($0) }, chunkSize: 10) {
            // The box handed out before this one is gone: only the consumer held it.
            if previous != nil { stillAlive.append(count - 1) }
            if box.value != count { wrong.append(count) }
            previous = box
            count += 1
        }
        #expect(stillAlive == [])
        #expect(wrong == [])
        #expect(count == 50)
        await pool.shutdown()
    }

    @Test("a slow initializer is not cut off by the start-up deadline")
    func slowInitializerIsNotAHelloTimeout() async throws {
        // A launcher whose hello deadline is far shorter than the initializer.
        let method = StartMethod(launcher: ShortHelloLauncher(
            base: StartMethod.spawn(executable: TestEnvironment.workerExecutable).launcher))
        let pool = try ProcessPoolExecutor(maxWorkers: 1, context: method, tasks: testRegistry,
                                           initializer: SleepTask(milliseconds: 1500))
        #expect(try await settle(pool.submit(Echo(4))) == 4)
        await pool.shutdown()
    }

    @Test("a worker that fails to start does not break a pool whose workers are healthy")
    func failedLaunchKeepsHealthyPool() async throws {
        let base = StartMethod.spawn(executable: TestEnvironment.workerExecutable).launcher
        let method = StartMethod(launcher: FlakyLauncher(base: base, failEvery: 2))
        let pool = try ProcessPoolExecutor(maxWorkers: 4, context: method, tasks: testRegistry)
        let futures = try (0..<40).map { try pool.submit(SleepTask(milliseconds: $0 % 3)) }
        for future in futures { _ = try await settle(future) }
        #expect(pool.brokenReason == nil)
        await pool.shutdown()
        // With no worker at all, the launch failure breaks the pool, naming why.
        let dead = try ProcessPoolExecutor(maxWorkers: 1, context: StartMethod(launcher: FlakyLauncher(base: base, failEvery: 1)),
                                           tasks: testRegistry)
        let reason = await expectBroken { _ = try await settle(dead.submit(Echo(1))) }
        #expect(reason?.contains("errno 24") == true, "\(reason ?? "")")
        await dead.shutdown()
    }

    @Test("shutdown with a long backlog of cancelled work is not quadratic")
    func shutdownWithLongBacklog() async throws {
        let gates = GateDirectory()
        defer { gates.cleanup() }
        let pool = try makePool(.spawn(executable: TestEnvironment.workerExecutable), maxWorkers: 1)
        let blocker = try pool.submit(SignalThenWait(started: gates.file("s"), gate: gates.file("go")))
        #expect(eventually { gates.exists("s") })
        let backlog = try (0..<100_000).map { try pool.submit(Echo($0)) }
        // Cancel every other one: the I/O thread must not rescan the queue per pass.
        for (i, f) in backlog.enumerated() where i % 2 == 0 { f.cancel() }
        pool.shutdown(wait: false)
        gates.open("go")
        _ = try await settle(blocker)
        let last = try await settle(backlog.last!, within: 60)
        #expect(last == 99_999)
        await pool.shutdown()
    }
}

/// Wraps a launcher with a 200 ms hello deadline.
struct ShortHelloLauncher: WorkerLauncher {
    let base: any WorkerLauncher
    var name: String { base.name }
    var helloTimeout: Duration { .milliseconds(200) }
    func makeSession(for pool: PoolDescription) throws -> any LaunchSession { try base.makeSession(for: pool) }
}

/// Wraps a launcher so that the first `failFirst` launches, and every
/// `failEvery`-th one (0: none), fail with EMFILE, as a process out of
/// descriptors would; completes the failure at once, on the calling thread
/// (a launcher may).
struct FlakyLauncher: WorkerLauncher {
    let base: any WorkerLauncher
    let failEvery: Int
    var failFirst = 0
    var relaunchGrace: Duration = .seconds(10)
    var name: String { base.name }
    func makeSession(for pool: PoolDescription) throws -> any LaunchSession {
        FlakySession(base: try base.makeSession(for: pool), failEvery: failEvery, failFirst: failFirst)
    }
}

final class FlakySession: LaunchSession, @unchecked Sendable {
    let base: any LaunchSession
    let failEvery: Int
    let failFirst: Int
    private let lock = NSLockLike()
    private var launches = 0

    init(base: any LaunchSession, failEvery: Int, failFirst: Int) {
        self.base = base
        self.failEvery = failEvery
        self.failFirst = failFirst
    }

    func launchWorker(_ completion: @escaping @Sendable (Result<any WorkerConnection, any Error>) -> Void) {
        let n = lock.withLock { () -> Int in
            launches += 1
            return launches
        }
        if n <= failFirst || (failEvery > 0 && n % failEvery == 0) {
            completion(.failure(SystemError("posix_spawn", errno: EMFILE)))
        } else {
            base.launchWorker(completion)
        }
    }

    func close() { base.close() }
}

/// A tiny mutex for test helpers.
final class NSLockLike: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    init() { pthread_mutex_init(&mutex, nil) }
    func withLock<R>(_ body: () -> R) -> R {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return body()
    }
}

@Suite("Faults the system injects", .boundedExitWait, .serialized, .timeLimit(.minutes(2)))
struct InjectedFaultTests {
    @Test("a thread the system refuses breaks the pool with the reason; nothing traps or hangs")
    func threadRefused() async throws {
        let pool = try makePool(.spawn(executable: TestEnvironment.workerExecutable), maxWorkers: 1)
        PoolThread.injectedFailures.store(1, ordering: .relaxed)
        defer { PoolThread.injectedFailures.store(0, ordering: .relaxed) }
        do {
            _ = try pool.submit(Echo(1))
            Issue.record("submit succeeded without an I/O thread")
        } catch let error as BrokenProcessPool {
            #expect(error.reason.contains("pthread_create"), "\(error.reason)")
        }
        #expect(throws: BrokenProcessPool.self) { try pool.submit(Echo(2)) }
        await pool.shutdown()
        // The next pool is fine.
        let next = try makePool(.spawn(executable: TestEnvironment.workerExecutable), maxWorkers: 1)
        #expect(try await settle(next.submit(Echo(3))) == 3)
        await next.shutdown()
    }

    @Test("a failed write stops the worker; its future fails naming it instead of hanging")
    func failedWrite() async throws {
        // The fake stops reading before it answers, so the parent's next
        // write fails whatever the timing. (Stopping after the answer raced
        // with the parent: when the 16 MiB write filled the socket first, it
        // waited for room that never came, as it would for a live worker that
        // stopped reading; on a loaded machine the test then timed out, and its
        // busy pool kept the test runner from exiting.)
        let launcher = FakeLauncher { w in
            try w.handshake()
            let run = try w.readRun()
            w.shutdownReading()
            try w.answerEcho(run)
            try w.stallUntilKilled()
        }
        let pool = try Hostile.makeFakePool(launcher)
        guard case .value(0) = await Hostile.settleOutcome(try pool.submit(Echo(0))) else {
            Issue.record("the first Echo did not complete")
            pool.killWorkers()
            await Hostile.finish(pool, launcher)
            return
        }
        // More than the socket buffers hold: the write fails part way (EPIPE).
        let future = try pool.submit(EchoBytes([UInt8](repeating: 1, count: 16 << 20)))
        await Hostile.expectBrokenNaming(future)
        await Hostile.finish(pool, launcher)
    }
}

/// A plain-bits task only this test registers (so nothing has asked about
/// its type before the pool does).
struct ForkLockProbe: ProcessTask, BitwiseCodable {
    var value: Int
    func run() -> Int { value &* 3 }
}

/// A thread that takes the block-answers lock when asked and holds it until
/// told to let go: the lock is held by another thread at the moment of a fork.
final class LockHolder: @unchecked Sendable {
    private let held = OneShotEvent()
    private let release = OneShotEvent()

    func holdNow() {
        try? PoolThread.start(name: "test lock holder") { [self] in
            BitwiseTypes.withCacheLocked {
                held.set()
                release.wait()
            }
        }
        held.wait()
    }

    func letGo() { release.set() }
}

@Suite("fork safety", .boundedExitWait, .serialized, .timeLimit(.minutes(2)))
struct ForkSafetyTests {
    @Test("a forked worker takes no lock of the parent's: a lock held at the fork does not hang it")
    func lockHeldAtFork() async throws {
        let holder = LockHolder()
        ForkHooks.current = ForkHooks.Hooks(before: { holder.holdNow() }, after: { holder.letGo() })
        defer { ForkHooks.current = ForkHooks.Hooks() }
        let registry = TaskRegistry(ForkLockProbe.self)
        let pool = try ProcessPoolExecutor(maxWorkers: 1, context: .fork, tasks: registry)
        var got: [Int] = []
        let results = try pool.map((0..<200).map { ForkLockProbe(value: $0) }, timeout: .seconds(20), chunkSize: 50)
        do {
            for try await value in results { got.append(value) }
        } catch {
            Issue.record("the forked worker did not answer: \(error)")
            pool.killWorkers()
        }
        #expect(got == (0..<200).map { $0 * 3 })
        await pool.shutdown()
    }
}
