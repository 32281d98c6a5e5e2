import Foundation
import PoolTestSupport
import ProcessPool
import ProcessPoolCore
import Synchronization
import Testing

/// Waits end promptly when the Swift task waiting is cancelled, never leave an
/// observer or a timer behind, and an empty wait returns at once.
///
/// "Promptly" is checked with a gate that stays closed: the future cannot
/// finish, so a wait that returns did so because of the cancellation.
/// `WaitTimer.running` counts every wait's timer in the process, so these
/// tests run one at a time (and the package's tests run `--no-parallel`).
@Suite("Waits and Swift cancellation (SEMANTICS 41, 42)", .boundedExitWait, .serialized, .timeLimit(.minutes(3)))
struct CancellationAndWaitTests {
    @Test("42: wait(for: []) returns ([], []) at once for every returnWhen")
    func emptyWait() async throws {
        for mode in [ReturnWhen.firstCompleted, .firstException, .allCompleted] {
            let run = launch { await wait(for: [TaskFuture<Int>](), returnWhen: mode) }
            #expect(await pollUntil(10) { run.box.outcome != nil }, "wait(for: [], returnWhen: \(mode)) did not return")
            if case .success(let split)? = run.box.outcome {
                #expect(split.done.isEmpty && split.notDone.isEmpty)
            }
            run.task.cancel()
            let timed = await wait(for: [TaskFuture<Int>](), timeout: .seconds(60), returnWhen: mode)
            #expect(timed.done.isEmpty && timed.notDone.isEmpty)
        }
        #expect(await pollUntil(10) { WaitTimer.running == 0 })
    }

    @Test("15/33: a done callback added before a wait began has run when the wait returns")
    func callbacksBeforeWaits() async throws {
        for useValue in [false, true] {
            let future = TaskFuture<Int>()
            let calls = Counter()
            future.addDoneCallback { _ in calls.increment() }
            let run = launch { () -> Int in
                if useValue { return try await future.value }
                _ = await wait(for: [future])
                return calls.value
            }
            #expect(await pollUntil { future.pendingObserverCount == 2 })
            future.finish(.success(calls.value))
            #expect(await pollUntil(10) { run.box.outcome != nil })
            if !useValue { #expect(try run.box.outcome?.get() == 1) }
            #expect(calls.value == 1 && future.pendingObserverCount == 0)
        }
    }

    @Test("33: repeated waits, by condition or time-out, leave no observer and no timer",
          arguments: localMethods)
    func repeatedWaitsLeaveNothing(method: StartMethod) async throws {
        let gates = GateDirectory()
        defer { gates.cleanup() }
        let pool = try makePool(method)
        let blocked = try (0..<2).map { _ in try pool.submit(WaitForFile(path: gates.file("go"))) }
        let queued = try (0..<20).map { try pool.submit(Echo($0)) }
        let all = blocked + queued

        for round in 0..<30 {
            let mode: ReturnWhen = [.firstCompleted, .firstException, .allCompleted][round % 3]
            let split = await wait(for: all, timeout: .milliseconds(1), returnWhen: mode)
            #expect(split.done.isEmpty && split.notDone.count == all.count)
        }
        #expect(all.allSatisfy { $0.pendingObserverCount == 0 },
                "observers left: \(all.map(\.pendingObserverCount))")
        #expect(await pollUntil(10) { WaitTimer.running == 0 }, "timers left: \(WaitTimer.running)")

        // The loop users write: each wait returns as one more finishes, and
        // those still running hold nothing from the waits before.
        gates.open("go")
        var rest = all
        var rounds = 0
        while !rest.isEmpty {
            rest = await wait(for: rest, timeout: .seconds(60), returnWhen: .firstCompleted).notDone
            rounds += 1
            #expect(rest.allSatisfy { $0.pendingObserverCount == 0 })
            if rounds > all.count { break }
        }
        #expect(rest.isEmpty)
        #expect(all.allSatisfy { $0.isDone && $0.pendingObserverCount == 0 })
        #expect(await pollUntil(10) { WaitTimer.running == 0 }, "timers left: \(WaitTimer.running)")
        await pool.shutdown()
    }

    @Test("41: cancelling a task awaiting value of a running future throws CancellationError at once; the value still arrives",
          arguments: localMethods)
    func cancelValueOfRunningFuture(method: StartMethod) async throws {
        let gates = GateDirectory()
        defer { gates.cleanup() }
        let pool = try makePool(method, maxWorkers: 1)
        let future = try pool.submit(SignalThenWait(started: gates.file("started"), gate: gates.file("go")))
        #expect(await pollUntil { gates.exists("started") })
        #expect(future.isRunning)

        let cancelled = launch { try await future.value }
        #expect(await pollUntil { future.pendingObserverCount == 1 }, "the awaiting task never registered")
        let other = launch { try await future.value }
        #expect(await pollUntil { future.pendingObserverCount == 2 })

        cancelled.task.cancel()
        #expect(await pollUntil(10) { cancelled.box.outcome != nil }, "value did not end on cancellation")
        #expect(throws: CancellationError.self) { try cancelled.box.outcome?.get() }
        #expect(future.isRunning && !future.isCancelled && !future.isDone)
        #expect(future.pendingObserverCount == 1)
        #expect(other.box.outcome == nil)

        gates.open("go")
        let pid = try await settle(future)
        #expect(pid > 0)
        #expect(await pollUntil { other.box.outcome != nil })
        #expect(try other.box.outcome?.get() == pid)
        #expect(future.pendingObserverCount == 0)
        await pool.shutdown()
    }

    @Test("41: cancelling a task awaiting value of a pending future cancels the future; it never runs",
          arguments: localMethods)
    func cancelValueOfPendingFuture(method: StartMethod) async throws {
        let gates = GateDirectory()
        defer { gates.cleanup() }
        gates.open("open")
        let pool = try makePool(method, maxWorkers: 1)
        let blocker = try pool.submit(SignalThenWait(started: gates.file("started"), gate: gates.file("go")))
        #expect(await pollUntil { gates.exists("started") })
        // Would create "target-ran" and return at once, if it ever ran.
        let target = try pool.submit(SignalThenWait(started: gates.file("target-ran"), gate: gates.file("open")))
        #expect(!target.isRunning && !target.isDone)

        let awaiting = launch { try await target.value }
        #expect(await pollUntil { target.pendingObserverCount == 1 }, "the awaiting task never registered")
        awaiting.task.cancel()
        #expect(await pollUntil(10) { awaiting.box.outcome != nil }, "value did not end on cancellation")
        #expect(throws: CancellationError.self) { try awaiting.box.outcome?.get() }
        #expect(target.isCancelled && target.isDone)
        #expect(target.pendingObserverCount == 0)
        // (A bound, so that a future left pending fails the test instead of hanging it.)
        #expect(throws: CancellationError.self) { try target.result(timeout: .milliseconds(1)) }

        // The one worker is FIFO: once a later task ran, the target had its turn.
        gates.open("go")
        #expect(try await settle(blocker) > 0)
        #expect(try await settle(pool.submit(Echo(7))) == 7)
        #expect(!gates.exists("target-ran"))
        await pool.shutdown()
    }

    @Test("41: waitDone returns false at once when its task is cancelled, leaving no observer or timer",
          arguments: localMethods)
    func cancelWaitDone(method: StartMethod) async throws {
        let gates = GateDirectory()
        defer { gates.cleanup() }
        let pool = try makePool(method, maxWorkers: 1)
        let future = try pool.submit(WaitForFile(path: gates.file("go")))
        for deadline in [nil, MonotonicClock.now() + 120_000_000_000] as [UInt64?] {
            let run = launch { () -> (Bool, Bool) in
                let done = await future.waitDone(deadline: deadline)
                return (done, Task.isCancelled)
            }
            #expect(await pollUntil { future.pendingObserverCount == 1 }, "waitDone never registered")
            run.task.cancel()
            #expect(await pollUntil(10) { run.box.outcome != nil }, "waitDone did not end on cancellation")
            if case .success(let (done, sawCancel))? = run.box.outcome {
                #expect(!done && sawCancel)
            }
            #expect(future.pendingObserverCount == 0)
            #expect(!future.isCancelled, "waitDone never cancels the future")
        }
        #expect(await pollUntil(10) { WaitTimer.running == 0 }, "timers left: \(WaitTimer.running)")
        gates.open("go")
        _ = try await settle(future)
        await pool.shutdown()
    }

    @Test("41: cancelling a task in wait(for:) returns the split at once and leaves nothing behind",
          arguments: localMethods)
    func cancelWait(method: StartMethod) async throws {
        let gates = GateDirectory()
        defer { gates.cleanup() }
        let pool = try makePool(method)
        let blocked = try pool.submit(WaitForFile(path: gates.file("go")))
        let quick = try pool.submit(Echo(1))
        _ = try await settle(quick)
        #expect(await pollUntil(10) { WaitTimer.running == 0 })
        for timeout in [nil, Duration.seconds(120)] {
            let run = launch { await wait(for: [blocked, quick], timeout: timeout, returnWhen: .allCompleted) }
            #expect(await pollUntil { blocked.pendingObserverCount == 1 }, "wait never registered")
            run.task.cancel()
            #expect(await pollUntil(10) { run.box.outcome != nil }, "wait did not end on cancellation")
            if case .success(let split)? = run.box.outcome {
                #expect(split.done.count == 1 && split.done[0] === quick)
                #expect(split.notDone.count == 1 && split.notDone[0] === blocked)
            }
            #expect(blocked.pendingObserverCount == 0)
            #expect(!blocked.isCancelled && !blocked.isDone)
        }
        #expect(await pollUntil(10) { WaitTimer.running == 0 }, "timers left: \(WaitTimer.running)")
        gates.open("go")
        _ = try await settle(blocked)
        await pool.shutdown()
    }

    @Test("41: cancelling a task iterating asCompleted ends it with CancellationError and releases the futures",
          arguments: localMethods)
    func cancelAsCompleted(method: StartMethod) async throws {
        let gates = GateDirectory()
        defer { gates.cleanup() }
        let pool = try makePool(method)
        let done = try pool.submit(Echo(1))
        _ = try await settle(done)
        let blocked = try (0..<2).map { _ in try pool.submit(WaitForFile(path: gates.file("go"))) }
        #expect(await pollUntil(10) { WaitTimer.running == 0 })

        for timeout in [nil, Duration.seconds(120)] {
            let yielded = Counter()
            let run = launch {
                for try await _ in asCompleted([done] + blocked, timeout: timeout) { yielded.increment() }
            }
            #expect(await pollUntil { yielded.value == 1 })
            #expect(blocked.allSatisfy { $0.pendingObserverCount == 1 })
            run.task.cancel()
            #expect(await pollUntil(10) { run.box.outcome != nil }, "asCompleted did not end on cancellation")
            #expect(throws: CancellationError.self) { try run.box.outcome?.get() }
            #expect(await pollUntil(10) { blocked.allSatisfy { $0.pendingObserverCount == 0 } },
                    "observers left: \(blocked.map(\.pendingObserverCount))")
            #expect(blocked.allSatisfy { !$0.isCancelled })
        }
        #expect(await pollUntil(10) { WaitTimer.running == 0 }, "timers left: \(WaitTimer.running)")

        // Leaving the loop early, or never iterating, releases the futures too.
        for try await _ in asCompleted([done] + blocked, timeout: .seconds(120)) { break }
        #expect(blocked.allSatisfy { $0.pendingObserverCount == 0 })
        do {
            let unused = asCompleted(blocked)
            #expect(blocked.allSatisfy { $0.pendingObserverCount == 1 })
            _ = unused
        }
        #expect(blocked.allSatisfy { $0.pendingObserverCount == 0 })
        #expect(await pollUntil(10) { WaitTimer.running == 0 }, "timers left: \(WaitTimer.running)")

        gates.open("go")
        for future in blocked { _ = try await settle(future) }
        await pool.shutdown()
    }

    @Test("34: asCompleted still times out, and its timer and observers are gone once it ended",
          arguments: localMethods)
    func asCompletedTimeoutCleansUp(method: StartMethod) async throws {
        let gates = GateDirectory()
        defer { gates.cleanup() }
        let pool = try makePool(method)
        let done = try pool.submit(Echo(1))
        _ = try await settle(done)
        let blocked = try pool.submit(WaitForFile(path: gates.file("go")))
        #expect(await pollUntil(10) { WaitTimer.running == 0 })

        var seen: [TaskFuture<Int>] = []
        do {
            for try await future in asCompleted([done, blocked, done], timeout: .milliseconds(200)) {
                seen.append(future)
            }
            Issue.record("expected a time-out")
        } catch let error as ProcessPoolError {
            #expect(error == .timeout)
        }
        #expect(seen.count == 1 && seen[0] === done)
        #expect(blocked.pendingObserverCount == 0)
        #expect(await pollUntil(10) { WaitTimer.running == 0 }, "timers left: \(WaitTimer.running)")

        // Finished normally before its time-out: the timer stops with it.
        let stream = asCompleted([done, blocked], timeout: .seconds(120))
        let run = launch {
            var count = 0
            for try await _ in stream { count += 1 }
            return count
        }
        #expect(await pollUntil { blocked.pendingObserverCount == 1 })
        gates.open("go")
        #expect(await pollUntil { run.box.outcome != nil })
        #expect(try run.box.outcome?.get() == 2)
        #expect(await pollUntil(10) { WaitTimer.running == 0 }, "timers left: \(WaitTimer.running)")
        #expect(blocked.pendingObserverCount == 0)
        _ = stream
        await pool.shutdown()
    }
}

/// How a background task ended, once it has.
private final class OutcomeBox<T: Sendable>: Sendable {
    private let stored = Mutex<Result<T, any Error>?>(nil)

    /// nil while the task runs.
    var outcome: Result<T, any Error>? { stored.guarded { $0 } }

    func set(_ outcome: Result<T, any Error>) { stored.guarded { $0 = outcome } }
}

/// A count shared with a background task.
private final class Counter: Sendable {
    private let count = Mutex(0)
    var value: Int { count.guarded { $0 } }
    func increment() { count.guarded { $0 += 1 } }
}

/// Runs `body` in a task of its own (to be cancelled by the test), recording
/// how it ended.
private func launch<T: Sendable>(_ body: @escaping @Sendable () async throws -> T)
    -> (task: Task<Void, Never>, box: OutcomeBox<T>) {
    let box = OutcomeBox<T>()
    let task = Task {
        do { box.set(.success(try await body())) } catch { box.set(.failure(error)) }
    }
    return (task, box)
}

/// Checks `condition` (a real event: an observer registered, a task ended, a
/// file created) every 2 ms until it holds or `seconds` pass, without
/// blocking one of the few threads Swift concurrency has on a small machine.
private func pollUntil(_ seconds: Double = 30, _ condition: () -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
    while ContinuousClock.now < deadline {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(2))
    }
    return condition()
}
