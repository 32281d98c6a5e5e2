import Glibc
import PoolTestSupport
import ProcessPool
import Testing

/// Surviving faults: FailurePolicy.retry, interrupting a running task,
/// per-task time limits, on every local start method.
@Suite("Surviving faults: retries, interrupts, time limits", .boundedExitWait, .timeLimit(.minutes(3)))
struct FailurePolicyTests {
    static func retryingPool(_ method: StartMethod, maxWorkers: Int = 2, attempts: Int = 5) throws -> ProcessPoolExecutor {
        try ProcessPoolExecutor(maxWorkers: maxWorkers, context: method, tasks: testRegistry,
                                failurePolicy: .retry(maxAttempts: attempts))
    }

    /// In a one-worker pool: an endless task running, and five `Echo` items
    /// (100...104) behind it. Short tasks first, so that the worker is then
    /// sent several items at once: as many as its in-flight window allows,
    /// which depends on how long an `Echo` took it (under TSan, fewer).
    /// Returns the blocker, the five, and how many of them the worker holds
    /// (at least one: the pool decides at `submit`, and nothing changes it
    /// while the blocker runs).
    static func blockerWithFiveBehind(_ pool: ProcessPoolExecutor,
                                      gates: GateDirectory) async throws -> (TaskFuture<Int>, [TaskFuture<Int>], held: Int) {
        for try await _ in try pool.map((0..<300).map { Echo($0) }, chunkSize: 1) {}
        let blocker = try pool.submit(WaitForFile(path: gates.file("never")))
        let behind = try (0..<5).map { try pool.submit(Echo(100 + $0)) }
        #expect(await Hostile.eventuallyAsync(30) { blocker.isRunning }, "the worker runs the blocker")
        let held = behind.prefix { $0.isRunning }.count
        #expect(held >= 1, "the worker holds items behind the blocker")
        #expect(behind.dropFirst(held).allSatisfy { !$0.isRunning }, "items are sent in order")
        return (blocker, behind, held)
    }

    @Test("retry: workers SIGKILLed at random points of a long map; every result arrives, in order, once",
          arguments: localMethods)
    func killsDuringMap(method: StartMethod) async throws {
        let pool = try Self.retryingPool(method)
        var random = SystemRandomNumberGenerator()
        let killAt = Set((0..<6).map { _ in Int.random(in: 20..<380, using: &random) })
        var values: [Int] = []
        var pids = Set<Int32>()
        var kills = 0
        for try await output in try pool.map((0..<400).map { TaggedEcho($0, microseconds: 2_000) }, chunkSize: 2) {
            values.append(output.value)
            pids.insert(output.pid)
            if killAt.contains(values.count) {
                kill(output.pid, SIGKILL)
                kills += 1
            }
        }
        #expect(values == Array(0..<400), "every result once, in order")
        #expect(kills == killAt.count)
        #expect(pids.count > 2, "killed workers were replaced (\(pids.count) workers answered)")
        #expect(pool.brokenReason == nil)
        #expect(try await settle(pool.submit(Echo(7))) == 7, "the pool still works")
        await pool.shutdown()
    }

    @Test("retry: a poison task that always segfaults among 1,000 good ones fails alone, naming each attempt",
          arguments: localMethods)
    func poisonTask(method: StartMethod) async throws {
        let pool = try Self.retryingPool(method, attempts: 3)
        var good: [TaskFuture<Int>] = []
        for i in 0..<500 { good.append(try pool.submit(Echo(i))) }
        let poison = try pool.submit(Die(.sigsegv))
        for i in 500..<1000 { good.append(try pool.submit(Echo(i))) }
        do {
            _ = try await poison.value
            Issue.record("the poison task succeeded")
        } catch let lost as WorkerLost {
            #expect(lost.attempts.count == 3, "\(lost)")
            #expect(lost.task.contains("Die"), "\(lost)")
            #expect(lost.attempts.allSatisfy { $0.end.contains(segfaultEnd) }, "\(lost)")
            #expect(Set(lost.attempts.map(\.worker)).count == 3, "three different workers: \(lost)")
            #expect("\(lost)".contains("attempt 3"), "\(lost)")
        }
        var sum = 0
        for future in good { sum += try await settle(future) }
        #expect(sum == (0..<1000).reduce(0, +), "every good task ran once")
        #expect(pool.brokenReason == nil)
        await pool.shutdown()
    }

    @Test("retry: a task that exits the worker is retried, then fails alone; the default policy still breaks",
          arguments: localMethods)
    func defaultStillBreaks(method: StartMethod) async throws {
        let retrying = try Self.retryingPool(method, attempts: 2)
        do {
            _ = try await retrying.submit(Die(.exit3)).value
            Issue.record("Die(.exit3) succeeded")
        } catch let lost as WorkerLost {
            #expect(lost.attempts.count == 2 && lost.attempts.allSatisfy { $0.end.contains("3") }, "\(lost)")
        }
        #expect(try await settle(retrying.submit(Echo(1))) == 1)
        await retrying.shutdown()

        let breaking = try makePool(method)
        #expect(breaking.failurePolicy == .breakPool)
        let reason = await expectBroken { _ = try await breaking.submit(Die(.exit3)).value }
        #expect(reason?.contains("terminated abruptly") == true, "\(String(describing: reason))")
        await breaking.shutdown()
    }

    @Test("interrupt: a running task's worker is stopped and replaced; the work it held runs; the pool stays healthy",
          arguments: localMethods)
    func interruptRunning(method: StartMethod) async throws {
        let pool = try makePool(method, maxWorkers: 1)
        let gates = GateDirectory()
        defer { gates.cleanup() }
        let (blocker, behind, _) = try await Self.blockerWithFiveBehind(pool, gates: gates)
        #expect(blocker.interrupt(), "interrupt() reports the future cancelled")
        do {
            _ = try await blocker.value
            Issue.record("the interrupted task returned a value")
        } catch is CancellationError {}
        #expect(blocker.isCancelled && blocker.isDone)
        var values: [Int] = []
        for future in behind { values.append(try await settle(future)) }
        #expect(values == Array(100..<105), "the items behind it ran, none failed")
        #expect(try await settle(pool.submit(Echo(9))) == 9)
        #expect(pool.brokenReason == nil)
        #expect(pool.liveWorkerCount <= 1)
        #expect(!blocker.interrupt() || blocker.isCancelled, "interrupting again changes nothing")
        await pool.shutdown()
    }

    @Test("shutdown(cancelFutures:) right after an interrupt: the items queued again are running futures; they run (found by pool-soak)",
          arguments: localMethods)
    func cancelFuturesAfterInterrupt(method: StartMethod) async throws {
        let pool = try makePool(method, maxWorkers: 1)
        let gates = GateDirectory()
        defer { gates.cleanup() }
        let (blocker, behind, held) = try await Self.blockerWithFiveBehind(pool, gates: gates)
        let queued = Array(behind.dropFirst(held)) + (try (0..<3).map { try pool.submit(Echo(200 + $0)) })
        #expect(blocker.interrupt())
        // The items the worker held go back to the queue, still running
        // futures; the others never ran. Dropping the held ones with the
        // queue left them running forever.
        await pool.shutdown(cancelFutures: true)
        var values: [Int] = []
        for future in behind.prefix(held) { values.append(try await settle(future, within: 30)) }
        #expect(values == Array(100..<(100 + held)), "the interrupted worker's other items ran")
        for future in queued {
            // Cancelled, unless a worker took it before the shutdown began.
            #expect(future.isDone)
        }
    }

    @Test("retry: with no worker left, failed launches are tried again for a while; only launches that keep failing break the pool (found by pool-soak over ssh)")
    func launchesRetriedWithNoWorker() async throws {
        let base = StartMethod.spawn(executable: TestEnvironment.workerExecutable).launcher
        // Both first launches fail: no worker at all, and work waiting (as
        // when an ssh host's only connection was cut and the first channel
        // opened on the dying session fails).
        let flaky = StartMethod(launcher: FlakyLauncher(base: base, failEvery: 0, failFirst: 2))
        let pool = try ProcessPoolExecutor(maxWorkers: 2, context: flaky, tasks: testRegistry,
                                           failurePolicy: .retry(maxAttempts: 3))
        #expect(try await settle(pool.submit(Echo(5)), within: 30) == 5)
        #expect(pool.brokenReason == nil)
        await pool.shutdown()
        // Launches that never succeed: the pool breaks after its grace, naming why.
        // (A 3 s grace, not the default 10 s: attempts after 1 and 2 s.)
        let failing = FlakyLauncher(base: base, failEvery: 1, relaunchGrace: .seconds(3))
        let dead = try ProcessPoolExecutor(maxWorkers: 1, context: StartMethod(launcher: failing),
                                           tasks: testRegistry, failurePolicy: .retry(maxAttempts: 3))
        let started = ContinuousClock.now
        let reason = await expectBroken { _ = try await settle(dead.submit(Echo(1)), within: 60) }
        #expect(reason?.contains("errno 24") == true, "\(reason ?? "")")
        #expect(ContinuousClock.now - started >= .seconds(3), "it kept trying for its grace")
        await dead.shutdown()
    }

    @Test("time limits: endless tasks among short ones end with TaskTimeLimitExceeded; the short ones succeed",
          arguments: localMethods)
    func timeLimits(method: StartMethod) async throws {
        let pool = try makePool(method, maxWorkers: 2)
        let gates = GateDirectory()
        defer { gates.cleanup() }
        var short: [TaskFuture<Int>] = []
        var endless: [TaskFuture<Int>] = []
        for i in 0..<12 {
            if i % 4 == 1 {
                endless.append(try pool.submit(WaitForFile(path: gates.file("never")), timeLimit: .milliseconds(300)))
            } else {
                short.append(try pool.submit(Echo(i), timeLimit: .seconds(60)))
            }
        }
        for future in endless {
            do {
                _ = try await settle(future, within: 60)
                Issue.record("an endless task returned")
            } catch let exceeded as TaskTimeLimitExceeded {
                #expect(exceeded.task.contains("WaitForFile"), "\(exceeded)")
                #expect(exceeded.limit == .milliseconds(300))
                #expect("\(exceeded)".contains("worker"), "\(exceeded)")
            }
        }
        var values: [Int] = []
        for future in short { values.append(try await settle(future)) }
        #expect(values == (0..<12).filter { $0 % 4 != 1 })
        // In a map: the limit fails the chunk at its first item.
        var got: [Int] = []
        do {
            let tasks = (0..<6).map { $0 == 3 ? WaitForFile(path: gates.file("never")) : WaitForFile(path: "/") }
            for try await value in try pool.map(tasks, timeLimit: .milliseconds(300)) { got.append(value) }
            Issue.record("the map's endless item did not fail")
        } catch is TaskTimeLimitExceeded {}
        #expect(got.count == 3, "the items before it arrived")
        #expect(try await settle(pool.submit(Echo(5))) == 5)
        #expect(pool.brokenReason == nil)
        #expect(throws: ProcessPoolError.self) { try pool.submit(Echo(1), timeLimit: .zero) }
        await pool.shutdown()
    }

    @Test("interrupt while the worker still sends results for the items ahead: the pool stays healthy (found by pool-soak)",
          arguments: localMethods)
    func interruptWhileResultsArrive(method: StartMethod) async throws {
        let pool = try makePool(method, maxWorkers: 1)
        for try await _ in try pool.map((0..<200).map { Echo($0) }) {}
        let gates = GateDirectory()
        defer { gates.cleanup() }
        for round in 0..<20 {
            let quick = try (0..<8).map { try pool.submit(Echo(round * 100 + $0)) }
            let blocker = try pool.submit(WaitForFile(path: gates.file("never")))
            #expect(await Hostile.eventuallyAsync(30) { blocker.isRunning })
            #expect(blocker.interrupt())
            for (index, future) in quick.enumerated() {
                #expect(try await settle(future) == round * 100 + index, "round \(round)")
            }
            #expect(pool.brokenReason == nil, "round \(round): \(pool.brokenReason ?? "")")
            if pool.brokenReason != nil { break }
        }
        await pool.shutdown()
    }

    @Test("retry: tasks that ran beside a poison task on its worker are never charged its deaths (found by pool-soak)",
          arguments: localMethods)
    func neighboursNotBlamed(method: StartMethod) async throws {
        let pool = try Self.retryingPool(method, maxWorkers: 1, attempts: 2)
        for try await _ in try pool.map((0..<200).map { Echo($0) }) {}
        for round in 0..<5 {
            let before = try (0..<6).map { try pool.submit(Echo($0)) }
            let poison = try pool.submit(Die(.sigsegv))
            let after = try (0..<6).map { try pool.submit(Echo(10 + $0)) }
            for (index, future) in before.enumerated() {
                #expect(try await settle(future) == index, "round \(round)")
            }
            for (index, future) in after.enumerated() {
                #expect(try await settle(future) == 10 + index, "round \(round)")
            }
            do {
                _ = try await settle(poison)
                Issue.record("the poison task succeeded")
            } catch let lost as WorkerLost {
                #expect(lost.attempts.count == 2 && lost.task.contains("Die"), "\(lost)")
            }
        }
        #expect(pool.brokenReason == nil)
        await pool.shutdown()
    }
}
