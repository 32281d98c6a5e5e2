import Foundation
import PoolTestSupport
import ProcessPool
import ProcessPoolCore
import Testing

// Ports of CPython's Lib/test/test_concurrent_futures (3.14 and main): one
// test per CPython case that applies, named after it. Where we differ on
// purpose (SEMANTICS 26, 30, 38, 43, 44) the CPython scenario is kept and
// our documented behaviour asserted. CPythonPortReport.md lists every
// CPython case and what became of it.

// MARK: - Helpers (private to this file)

/// Runs `body` on a thread of its own. A test asks whether it returned in
/// time; if not, the thread is left behind (the test has failed by then).
private final class PortBackground: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)

    init(_ body: @escaping @Sendable () -> Void) {
        let done = self.done
        let thread = Thread {
            body()
            done.signal()
        }
        thread.start()
    }

    /// Whether the body returned within `seconds` (counted from this call).
    func finished(within seconds: Double) -> Bool {
        done.wait(timeout: .now() + seconds) == .success
    }
}

/// `shutdown(wait: true)`, bounded: a pool that never finishes fails the test.
private func portShutDown(_ pool: ProcessPoolExecutor, cancelFutures: Bool = false, within seconds: Double = 60,
                          sourceLocation: SourceLocation = #_sourceLocation) {
    let call = PortBackground { pool.shutdown(wait: true, cancelFutures: cancelFutures) }
    #expect(call.finished(within: seconds), "shutdown(wait: true) did not return within \(seconds) s",
            sourceLocation: sourceLocation)
}

/// A value shared with a callback or another thread.
private final class PortBox<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: T
    init(_ value: T) { stored = value }
    var value: T {
        get { lock.withLock { stored } }
        set { lock.withLock { stored = newValue } }
    }
    /// Changes the value under the lock and returns what `body` returns.
    func update<R>(_ body: (inout T) -> R) -> R { lock.withLock { body(&stored) } }
}

/// Launches wait until `release()`: no worker of the pool can start before.
private final class PortLaunchGate: @unchecked Sendable {
    private let lock = NSLock()
    private var open = false
    private var parked: [() -> Void] = []

    func run(_ launch: @escaping () -> Void) {
        lock.lock()
        if open {
            lock.unlock()
            launch()
            return
        }
        parked.append(launch)
        lock.unlock()
    }

    func release() {
        let launches = lock.withLock { () -> [() -> Void] in
            open = true
            defer { parked = [] }
            return parked
        }
        for launch in launches { launch() }
    }
}

/// Wraps a launcher (not fork's: it starts every worker inside the first
/// submit) so that its launches wait for a `PortLaunchGate`.
private struct PortHeldLauncher: WorkerLauncher {
    let base: any WorkerLauncher
    let gate: PortLaunchGate
    var name: String { base.name }
    var supportsMaxTasksPerChild: Bool { base.supportsMaxTasksPerChild }
    var helloTimeout: Duration { base.helloTimeout }
    func makeSession(for pool: PoolDescription) throws -> any LaunchSession {
        PortHeldSession(base: try base.makeSession(for: pool), gate: gate)
    }
}

private struct PortHeldSession: LaunchSession {
    let base: any LaunchSession
    let gate: PortLaunchGate
    func launchWorker(_ completion: @escaping @Sendable (Result<any WorkerConnection, any Error>) -> Void) {
        gate.run { base.launchWorker(completion) }
    }
    func close() { base.close() }
}

/// A launch refused by `PortRefusingLauncher`.
private struct PortLaunchRefused: Error, CustomStringConvertible {
    var description: String { "the test's launcher refuses to start another worker" }
}

/// Wraps a launcher: the first `allowed` launches go through, later ones
/// fail at once (as a host out of processes would).
private struct PortRefusingLauncher: WorkerLauncher {
    let base: any WorkerLauncher
    let allowed: Int
    let launches = PortBox(0)
    var name: String { base.name }
    var supportsMaxTasksPerChild: Bool { base.supportsMaxTasksPerChild }
    func makeSession(for pool: PoolDescription) throws -> any LaunchSession {
        PortRefusingSession(base: try base.makeSession(for: pool), allowed: allowed, launches: launches)
    }
}

private struct PortRefusingSession: LaunchSession {
    let base: any LaunchSession
    let allowed: Int
    let launches: PortBox<Int>
    func launchWorker(_ completion: @escaping @Sendable (Result<any WorkerConnection, any Error>) -> Void) {
        let launch = launches.update { count -> Int in
            count += 1
            return count
        }
        if launch > allowed {
            completion(.failure(PortLaunchRefused()))
        } else {
            base.launchWorker(completion)
        }
    }
    func close() { base.close() }
}

/// Futures in the states CPython's util.py builds by hand.
private enum PortFutures {
    static func pending() -> TaskFuture<Int> { TaskFuture<Int>() }
    static func running() -> TaskFuture<Int> {
        let f = TaskFuture<Int>()
        _ = f.markRunning()
        return f
    }
    /// CPython has CANCELLED and CANCELLED_AND_NOTIFIED; ours has one
    /// cancelled state, done at once.
    static func cancelled() -> TaskFuture<Int> {
        let f = TaskFuture<Int>()
        f.cancel()
        return f
    }
    static func failed() -> TaskFuture<Int> {
        TaskFuture<Int>(result: .failure(RegisteredFailure(code: -1, note: "EXCEPTION_FUTURE")))
    }
    static func successful() -> TaskFuture<Int> { TaskFuture<Int>(result: .success(42)) }
}

private func ids<T>(_ futures: [TaskFuture<T>]) -> Set<ObjectIdentifier> { Set(futures.map(ObjectIdentifier.init)) }

private func expectedDeath(_ how: CrashKind) -> String {
    switch how {
    case .sigsegv: segfaultEnd
    case .exit: "exit code \(crashExitCode)"
    case .sigkill: "signal SIGKILL"
    }
}

/// Expects `future` to fail with BrokenProcessPool naming `how`, the death
/// of the worker that wrote its pid into `pidFile`. A worker that does not
/// end within 20 s is recorded as hung and killed, so that the pool (and
/// this test process, which waits for live pools at exit) can finish.
private func expectCrashBreaks<T>(_ future: TaskFuture<T>, _ how: CrashKind, pidFile: String,
                                  sourceLocation: SourceLocation = #_sourceLocation) async {
    let (done, _) = await wait(for: [future], timeout: .seconds(20))
    if done.isEmpty {
        let pid = readPIDFile(pidFile)
        Issue.record("the worker (pid \(pid.map(String.init) ?? "?")) did not end within 20 s of its crash (\(how)): it hangs",
                     sourceLocation: sourceLocation)
        if let pid { kill(pid, SIGKILL) }
    }
    let reason = await expectBroken({ _ = try await settle(future, within: 60) }, sourceLocation: sourceLocation)
    #expect(reason?.contains(expectedDeath(how)) == true, "\(reason ?? "")", sourceLocation: sourceLocation)
    #expect(reason?.contains("pid") == true, "\(reason ?? "")", sourceLocation: sourceLocation)
}

// MARK: - test_deadlock.py

@Suite("CPython port: test_deadlock.py", .boundedExitWait, .timeLimit(.minutes(3)))
struct CPythonDeadlockPortTests {
    @Test("test_deadlock test_error_at_task_pickle: a task that cannot be encoded fails its own submit; the pool stays usable",
          arguments: localMethods)
    func errorAtTaskPickle(method: StartMethod) async throws {
        // CPython fails the future with PicklingError; ours encodes in
        // submit, so submit throws. Before the pool started and after.
        let pool = try makePool(method)
        #expect(throws: EncodingError.self) { _ = try pool.submit(MaybeUnencodable(1, poison: true)) }
        #expect(try await settle(pool.submit(Echo(5))) == 5)
        #expect(throws: EncodingError.self) { _ = try pool.submit(MaybeUnencodable(2, poison: true)) }
        #expect(try await settle(pool.submit(Echo(6))) == 6)
        #expect(pool.brokenReason == nil)
        portShutDown(pool)
    }

    private func crashWhileDecodingTask(_ method: StartMethod, _ how: CrashKind) async throws {
        let gates = GateDirectory()
        defer { gates.cleanup() }
        let pool = try makePool(method, maxWorkers: 2)
        let future = try pool.submit(CrashesWhileDecoding(how, pidFile: gates.file("pid")))
        await expectCrashBreaks(future, how, pidFile: gates.file("pid"))
        #expect(throws: BrokenProcessPool.self) { _ = try pool.submit(Echo(1)) }
        portShutDown(pool)
    }

    @Test("test_deadlock test_exit_at_task_unpickle: exit() while the worker decodes the task breaks the pool",
          arguments: localMethods)
    func exitAtTaskUnpickle(method: StartMethod) async throws {
        try await crashWhileDecodingTask(method, .exit)
    }

    @Test("test_deadlock test_crash_at_task_unpickle: a segfault while the worker decodes the task breaks the pool",
          arguments: localMethods)
    func crashAtTaskUnpickle(method: StartMethod) async throws {
        try await crashWhileDecodingTask(method, .sigsegv)
    }

    @Test("test_deadlock test_error_at_task_unpickle (SEMANTICS 38): a task the worker cannot decode fails only its future",
          arguments: localMethods)
    func errorAtTaskUnpickle(method: StartMethod) async throws {
        // CPython breaks the pool here; ours fails that future alone.
        let pool = try makePool(method)
        do {
            _ = try await settle(pool.submit(DecodesOnlyInParent(3)))
            Issue.record("a task that cannot be decoded in the worker succeeded")
        } catch let error as RemoteTaskError {
            #expect(error.message.contains("DecodesOnlyInParent"), "\(error)")
            #expect(error.message.contains("task 3 refuses to decode in a worker"), "\(error)")
            #expect(error.worker.contains("pid"), "\(error)")
        }
        #expect(pool.brokenReason == nil)
        #expect(try await settle(pool.submit(Echo(4))) == 4)
        // Inside a map chunk only that item fails; the items before it arrive.
        let tasks = (0..<8).map { DecodesOnlyInParent($0, poison: $0 == 5) }
        var got: [Int] = []
        do {
            for try await value in try pool.map(tasks, timeout: .seconds(60), chunkSize: 4) { got.append(value) }
            Issue.record("the undecodable item did not fail")
        } catch let error as RemoteTaskError {
            #expect(error.message.contains("task 5 refuses"), "\(error)")
        }
        #expect(got == [0, 1, 2, 3, 4])
        #expect(pool.brokenReason == nil)
        #expect(try await settle(pool.submit(Echo(7))) == 7)
        portShutDown(pool)
    }

    private func crashWhileEncodingResult(_ method: StartMethod, _ trouble: Troublesome.Trouble,
                                          _ how: CrashKind) async throws {
        let gates = GateDirectory()
        defer { gates.cleanup() }
        let pool = try makePool(method, maxWorkers: 2)
        let future = try pool.submit(MakeTroublesome(trouble, value: 1, pidFile: gates.file("pid")))
        await expectCrashBreaks(future, how, pidFile: gates.file("pid"))
        #expect(throws: BrokenProcessPool.self) { _ = try pool.submit(Echo(1)) }
        portShutDown(pool)
    }

    @Test("test_deadlock test_crash_during_result_pickle_on_worker: a segfault while the worker encodes the result breaks the pool",
          arguments: localMethods)
    func crashDuringResultPickle(method: StartMethod) async throws {
        try await crashWhileEncodingResult(method, .segfaultWhileEncoding, .sigsegv)
    }

    @Test("test_deadlock test_exit_during_result_pickle_on_worker: exit() while the worker encodes the result breaks the pool",
          arguments: localMethods)
    func exitDuringResultPickle(method: StartMethod) async throws {
        // CPython's sys.exit raises SystemExit, which comes back as the
        // future's exception; Swift's exit() ends the process: a broken pool.
        try await crashWhileEncodingResult(method, .exitWhileEncoding, .exit)
    }

    @Test("test_deadlock test_error_during_result_pickle_on_worker: a result that cannot be encoded fails only its future",
          arguments: localMethods)
    func errorDuringResultPickle(method: StartMethod) async throws {
        let pool = try makePool(method)
        do {
            _ = try await settle(pool.submit(MakeTroublesome(.throwWhileEncoding, value: 8)))
            Issue.record("a result that cannot be encoded arrived")
        } catch let error as RemoteTaskError {
            #expect(error.message.contains("could not be encoded"), "\(error)")
            #expect(error.message.contains("result 8 refuses to encode"), "\(error)")
        }
        #expect(pool.brokenReason == nil)
        #expect(try await settle(pool.submit(MakeTroublesome(.none, value: 9))) == Troublesome(trouble: .none, value: 9))
        portShutDown(pool)
    }

    @Test("test_deadlock test_error_during_result_unpickle_in_result_handler (SEMANTICS 38): a result the parent cannot decode fails only its future",
          arguments: localMethods)
    func errorDuringResultUnpickle(method: StartMethod) async throws {
        // CPython breaks the pool here; ours fails that future alone.
        let pool = try makePool(method)
        do {
            _ = try await settle(pool.submit(MakeTroublesome(.throwWhileDecodingInParent, value: 3)))
            Issue.record("a result the parent cannot decode arrived")
        } catch let error as RemoteTaskError {
            #expect(error.message.contains("could not decode the result as Troublesome"), "\(error)")
            #expect(error.message.contains("result 3 refuses to decode in the parent"), "\(error)")
        }
        #expect(pool.brokenReason == nil)
        #expect(try await settle(pool.submit(Echo(2))) == 2)
        // In a map chunk: the results before it arrive, then its error.
        let troubles: [Troublesome.Trouble] = [.none, .none, .throwWhileDecodingInParent, .none]
        var got: [Int] = []
        do {
            for try await result in try pool.map(troubles.enumerated().map { MakeTroublesome($1, value: $0) },
                                                 timeout: .seconds(60), chunkSize: 4) {
                got.append(result.value)
            }
            Issue.record("the undecodable result did not fail")
        } catch let error as RemoteTaskError {
            #expect(error.message.contains("result 2 refuses"), "\(error)")
        }
        #expect(got == [0, 1])
        #expect(pool.brokenReason == nil)
        portShutDown(pool)
    }

    @Test("test_deadlock test_shutdown_deadlock: a worker crashing after shutdown was called, with work pending: no hang",
          arguments: localMethods)
    func shutdownDeadlock(method: StartMethod) async throws {
        let gates = GateDirectory()
        defer { gates.cleanup() }
        let pool = try makePool(method, maxWorkers: 2)
        let crashing = try pool.submit(CrashAfterGate(started: gates.file("crash-started"), gate: gates.file("go"),
                                                      how: .sigsegv))
        let blocked = try pool.submit(SignalThenWait(started: gates.file("blocked-started"), gate: gates.file("never")))
        #expect(eventually { gates.exists("crash-started") && gates.exists("blocked-started") })
        // Both workers are busy (one item each): these stay pending.
        let pending = try (0..<10).map { try pool.submit(Echo($0)) }
        pool.shutdown(wait: false)
        #expect(throws: ProcessPoolError.shutdown) { _ = try pool.submit(Echo(0)) }
        let waiting = PortBackground { pool.shutdown(wait: true) }
        gates.open("go")
        #expect(waiting.finished(within: 60), "shutdown(wait: true) hung after a worker crashed")
        let reason = await expectBroken { _ = try await settle(crashing) }
        #expect(reason?.contains(segfaultEnd) == true, "\(reason ?? "")")
        _ = await expectBroken { _ = try await settle(blocked) }
        for future in pending { _ = await expectBroken { _ = try await settle(future) } }
        #expect(pool.liveWorkerCount == 0)
    }

    @Test("test_deadlock test_shutdown_deadlock_pickle: a task that fails to encode, then shutdown(wait: false): the pool still finishes",
          arguments: localMethods)
    func shutdownDeadlockPickle(method: StartMethod) async throws {
        let pool = try makePool(method, maxWorkers: 2)
        #expect(try await settle(pool.submit(Echo(42))) == 42)
        #expect(throws: EncodingError.self) { _ = try pool.submit(MaybeUnencodable(1, poison: true)) }
        pool.shutdown(wait: false)
        portShutDown(pool)
        #expect(pool.liveWorkerCount == 0)
    }

    @Test("test_deadlock test_crash_big_data: map over tasks with 4 MiB arguments that crash gives BrokenProcessPool",
          arguments: localMethods)
    func crashBigData(method: StartMethod) async throws {
        let pool = try makePool(method, maxWorkers: 2)
        // support.PIPE_MAX_SIZE is 4 MiB + 1; a byte array rides along as an attachment.
        let text = String(repeating: "a", count: (4 << 20) + 1)
        let bytes = [UInt8](repeating: 1, count: 1 << 20)
        // SIGKILL, not SIGSEGV: two workers crashing at once with SIGSEGV
        // each start the Swift runtime's crash reporter, and the pool kills
        // the second one mid-report (an orphaned swift-backtrace then holds
        // the test runner's output open).
        let tasks = (0..<10).map { _ in CrashWithData(text: text, bytes: bytes, how: .sigkill) }
        await #expect(throws: BrokenProcessPool.self) {
            for try await _ in try pool.map(tasks, timeout: .seconds(90)) {}
        }
        portShutDown(pool)
    }

    @Test("test_deadlock test_crash_big_data (gh-94777): a worker killed while the parent writes a 64 MiB argument to it",
          arguments: localMethods)
    func killedWhileSendingLargeArgument(method: StartMethod) async throws {
        let pool = try makePool(method, maxWorkers: 1)
        let pid = try await settle(pool.submit(GetPID()))
        // Stopped, the worker reads nothing: the parent cannot get 64 MiB
        // into the socket and is part-way through writing when it dies.
        #expect(kill(pid, SIGSTOP) == 0)
        let big = try pool.submit(EchoBytes([UInt8](repeating: 3, count: 64 << 20)))
        #expect(!big.isDone)
        #expect(kill(pid, SIGKILL) == 0)
        let reason = await expectBroken { _ = try await settle(big, within: 60) }
        #expect(reason?.contains("SIGKILL") == true, "\(reason ?? "")")
        #expect(throws: BrokenProcessPool.self) { _ = try pool.submit(Echo(1)) }
        portShutDown(pool)
    }

    @Test("test_deadlock test_crash_big_data (gh-94777): a worker killed while it sends a large result, inline or as an attachment",
          arguments: localMethods, [false, true])
    func killedWhileSendingLargeResult(method: StartMethod, asAttachment: Bool) async throws {
        let pool = try makePool(method, maxWorkers: 1)
        let future = try pool.submit(DieWhileSendingLargeResult(announcedBytes: 64 << 20, sentBytes: 1 << 20,
                                                                asAttachment: asAttachment))
        let reason = await expectBroken { _ = try await settle(future, within: 60) }
        #expect(reason?.contains("SIGKILL") == true, "\(reason ?? "")")
        #expect(throws: BrokenProcessPool.self) { _ = try pool.submit(Echo(1)) }
        portShutDown(pool)
    }

    @Test("test_deadlock test_gh105829_should_not_deadlock_if_wakeup_pipe_full: many submits while the I/O thread is busy",
          arguments: localMethods)
    func manySubmitsWhileIOThreadBusy(method: StartMethod) async throws {
        let gates = GateDirectory()
        defer { gates.cleanup() }
        let pool = try makePool(method, maxWorkers: 2)
        // Occupy the pool's I/O thread: a done callback runs there, and this
        // one blocks until the test opens "release".
        let first = try pool.submit(WaitForFile(path: gates.file("go")))
        let inCallback = gates.file("in-callback")
        let release = gates.file("release")
        first.addDoneCallback { _ in
            _ = FileManager.default.createFile(atPath: inCallback, contents: Data())
            while !FileManager.default.fileExists(atPath: release) { usleep(1000) }
        }
        gates.open("go")
        #expect(eventually { gates.exists("in-callback") })
        let futures = PortBox<[TaskFuture<Int>]>([])
        let mapped = PortBox<MapResults<Int>?>(nil)
        let submitter = PortBackground {
            do {
                futures.value = try (0..<1000).map { try pool.submit(Echo($0)) }
                mapped.value = try pool.map((0..<1000).map { Square($0) }, timeout: .seconds(120))
            } catch {
                Issue.record("submit failed while the I/O thread was busy: \(error)")
            }
        }
        let submitted = submitter.finished(within: 60)
        #expect(submitted, "submit blocked while the I/O thread was busy")
        gates.open("release")
        guard submitted else { return }
        for (i, future) in futures.value.enumerated() { #expect(try await settle(future) == i) }
        var squares: [Int] = []
        if let results = mapped.value {
            for try await value in results { squares.append(value) }
        }
        #expect(squares == (0..<1000).map { $0 * $0 })
        portShutDown(pool)
    }
}

// MARK: - test_shutdown.py

@Suite("CPython port: test_shutdown.py", .boundedExitWait, .timeLimit(.minutes(3)))
struct CPythonShutdownPortTests {
    @Test("test_shutdown test_hang_issue12364: 50 tasks, then shutdown; every result arrives (wait: true and wait: false)",
          arguments: localMethods)
    func hangIssue12364(method: StartMethod) async throws {
        for waitForIt in [true, false] {
            let pool = try makePool(method, maxWorkers: 5)
            let futures = try (0..<50).map { _ in try pool.submit(SleepTask(milliseconds: 10)) }
            if waitForIt {
                portShutDown(pool)
                #expect(futures.allSatisfy { $0.isDone })
            } else {
                pool.shutdown(wait: false)
            }
            for future in futures { #expect(try await settle(future) > 0) }
            portShutDown(pool)
        }
    }

    @Test("test_shutdown test_cancel_futures (SEMANTICS 43): shutdown(cancelFutures:) cancels all but what workers hold",
          arguments: localMethods)
    func cancelFutures(method: StartMethod) async throws {
        let pool = try makePool(method, maxWorkers: 5)
        let futures = try (0..<50).map { _ in try pool.submit(SleepTask(milliseconds: 300)) }
        portShutDown(pool, cancelFutures: true)
        let cancelled = futures.filter { $0.isCancelled }
        #expect(cancelled.count > 20)
        // The others were taken by a worker before the shutdown and finished.
        let others = futures.filter { !$0.isCancelled }
        for future in others {
            #expect(future.isDone)
            #expect(try future.error() == nil)
        }
        // CPython also asserts that at least one finished; ours cancels
        // everything no worker had taken (43), which may be everything: at
        // most one item per worker was handed over (12), none if no worker
        // was ready yet.
        #expect(others.count <= 5)
        let (done, notDone) = await wait(for: futures, timeout: .seconds(30))
        #expect(done.count == 50 && notDone.isEmpty)
    }

    @Test("test_shutdown test_cancel_futures (SEMANTICS 43): with no worker started yet, every future is cancelled",
          arguments: replacingMethods)
    func cancelFuturesBeforeAnyWorker(method: StartMethod) async throws {
        let gate = PortLaunchGate()
        let held = StartMethod(launcher: PortHeldLauncher(base: method.launcher, gate: gate))
        let pool = try ProcessPoolExecutor(maxWorkers: 5, context: held, tasks: testRegistry)
        let futures = try (0..<50).map { _ in try pool.submit(SleepTask(milliseconds: 100)) }
        #expect(futures.allSatisfy { !$0.isRunning && !$0.isDone })
        pool.shutdown(wait: false, cancelFutures: true)
        #expect(futures.allSatisfy { $0.isCancelled })
        gate.release()
        portShutDown(pool)
        #expect(pool.liveWorkerCount == 0)
    }

    @Test("test_shutdown test_hang_gh94440: submit, cancel at once, then shutdown(wait: true) does not hang",
          arguments: localMethods)
    func hangGH94440(method: StartMethod) async throws {
        let pool = try makePool(method, maxWorkers: 1)
        #expect(try await settle(pool.submit(Echo(0))) == 0)
        let future = try pool.submit(Echo(1))
        future.cancel()
        portShutDown(pool, within: 5)
        #expect(future.isDone)
    }

    @Test("test_shutdown test_processes_terminate: the workers exit on shutdown (fork starts them all, the others on demand)",
          arguments: localMethods)
    func processesTerminate(method: StartMethod) async throws {
        let gates = GateDirectory()
        defer { gates.cleanup() }
        let pool = try makePool(method, maxWorkers: 5)
        let futures = try (0..<3).map { i in
            try pool.submit(SignalThenWait(started: gates.file("s\(i)"), gate: gates.file("go")))
        }
        #expect(pool.liveWorkerCount == (method.name == "fork" ? 5 : 3))
        // All three run at once, so on three workers.
        #expect(eventually { (0..<3).allSatisfy { gates.exists("s\($0)") } })
        gates.open("go")
        portShutDown(pool)
        let pids = try futures.map { try $0.result() }
        #expect(Set(pids).count == 3)
        #expect(pids.allSatisfy { processGone($0) })
        #expect(pool.liveWorkerCount == 0)
    }

    @Test("test_shutdown test_context_manager_shutdown: withProcessPool runs map and leaves no worker behind",
          arguments: localMethods)
    func contextManagerShutdown(method: StartMethod) async throws {
        let pairs = try await withProcessPool(maxWorkers: 5, context: method, tasks: testRegistry) { pool in
            var pairs: [[Int]] = []
            for try await pair in try pool.map((-5..<5).map { AbsAndPID($0) }, timeout: .seconds(60)) {
                pairs.append(pair)
            }
            return pairs
        }
        #expect(pairs.map { $0[0] } == [5, 4, 3, 2, 1, 0, 1, 2, 3, 4])
        let pids = Set(pairs.map { Int32($0[1]) })
        #expect(pids.allSatisfy { processGone($0) })
    }

    @Test("test_shutdown test_del_shutdown (SEMANTICS 44): dropping the executor with map results unconsumed",
          arguments: localMethods)
    func delShutdown(method: StartMethod) async throws {
        weak var weakPool: ProcessPoolExecutor?
        var values: [Int] = []
        var pids = Set<Int32>()
        var aliveWhileResultsHeld = false
        do {
            var pool: ProcessPoolExecutor? = try makePool(method, maxWorkers: 5)
            weakPool = pool
            let results = try pool!.map((-5..<5).map { AbsAndPID($0) }, timeout: .seconds(60))
            pool = nil
            // CPython collects the executor here; ours stays alive while its
            // map results are unconsumed (44), so they all arrive.
            aliveWhileResultsHeld = weakPool != nil
            for try await pair in results {
                values.append(pair[0])
                pids.insert(Int32(pair[1]))
            }
        }
        #expect(aliveWhileResultsHeld)
        #expect(values == [5, 4, 3, 2, 1, 0, 1, 2, 3, 4])
        // Results consumed and dropped: the pool goes, and its workers exit.
        #expect(eventually { weakPool == nil })
        #expect(eventually { pids.allSatisfy { processGone($0) } })
    }

    @Test("test_shutdown test_shutdown_no_wait: shutdown(wait: false) with map results pending; they arrive, then the workers exit",
          arguments: localMethods)
    func shutdownNoWait(method: StartMethod) async throws {
        let pool = try makePool(method, maxWorkers: 5)
        let results = try pool.map((-5..<5).map { AbsAndPID($0) }, timeout: .seconds(60))
        pool.shutdown(wait: false)
        var values: [Int] = []
        var pids = Set<Int32>()
        for try await pair in results {
            values.append(pair[0])
            pids.insert(Int32(pair[1]))
        }
        #expect(values == [5, 4, 3, 2, 1, 0, 1, 2, 3, 4])
        #expect(eventually { pids.allSatisfy { processGone($0) } })
        portShutDown(pool)
        #expect(pool.liveWorkerCount == 0)
    }

    private func gh132969(_ method: StartMethod, maxWorkers: Int) async throws {
        let pool = try makePool(method, maxWorkers: maxWorkers, maxTasksPerChild: 1)
        let f1 = try pool.submit(Fail(registered: false, code: 1, succeed: true))
        let f2 = try pool.submit(Fail(registered: true, code: 2))
        let f3 = try pool.submit(Fail(registered: false, code: 3, succeed: true))
        var result = 0
        do {
            result += try await settle(f1)
            result += try await settle(f2)
            result += try await settle(f3)
        } catch let error as RegisteredFailure {
            #expect(error.code == 2)
        }
        #expect(result == 1)
        pool.shutdown(wait: false)
        portShutDown(pool)
        #expect(try f3.result() == 3)
        #expect(pool.liveWorkerCount == 0)
    }

    @Test("test_shutdown test_shutdown_gh_132969_case_1: maxTasksPerChild 1, a failing task, shutdown(wait: false) (2 workers)",
          arguments: replacingMethods)
    func shutdownGH132969Case1(method: StartMethod) async throws {
        try await gh132969(method, maxWorkers: 2)
    }

    @Test("test_shutdown test_shutdown_gh_132969_case_2: the same with 4 workers does not hang",
          arguments: replacingMethods)
    func shutdownGH132969Case2(method: StartMethod) async throws {
        try await gh132969(method, maxWorkers: 4)
    }

    @Test("test_shutdown (shutdown from a done callback): shutdown(wait: true) in a callback on the I/O thread neither deadlocks nor drops work",
          arguments: localMethods)
    func shutdownFromDoneCallback(method: StartMethod) async throws {
        let gates = GateDirectory()
        defer { gates.cleanup() }
        let pool = try makePool(method, maxWorkers: 1)
        let first = try pool.submit(WaitForFile(path: gates.file("go")))
        let queued = try (0..<5).map { try pool.submit(Echo($0)) }
        let returned = gates.file("callback-returned")
        first.addDoneCallback { _ in
            pool.shutdown(wait: true)
            _ = FileManager.default.createFile(atPath: returned, contents: Data())
        }
        gates.open("go")
        #expect(eventually { gates.exists("callback-returned") }, "shutdown(wait: true) in a done callback deadlocked")
        #expect(throws: ProcessPoolError.shutdown) { _ = try pool.submit(Echo(9)) }
        for (i, future) in queued.enumerated() { #expect(try await settle(future) == i) }
        portShutDown(pool)
        #expect(pool.liveWorkerCount == 0)
    }
}

// MARK: - executor.py

@Suite("CPython port: executor.py", .boundedExitWait, .timeLimit(.minutes(3)))
struct CPythonExecutorPortTests {
    @Test("executor.py test_map_exception (SEMANTICS 30): the error surfaces at its item, then the sequence ends",
          arguments: localMethods)
    func mapException(method: StartMethod) async throws {
        let pool = try makePool(method)
        // divmod(5, 0) at index 2 (chunksize 1), at index 1 (chunksize 3).
        for (failAt, chunkSize) in [(2, 1), (1, 3)] {
            let tasks = (0..<4).map { Fail(registered: true, code: $0, succeed: $0 != failAt) }
            var iterator = try pool.map(tasks, timeout: .seconds(60), chunkSize: chunkSize).makeAsyncIterator()
            for i in 0..<failAt { #expect(try await iterator.next() == i) }
            do {
                _ = try await iterator.next()
                Issue.record("item \(failAt) did not fail")
            } catch let error as RegisteredFailure {
                #expect(error.code == failAt)
            }
            // CPython main goes on with the items after it; 3.14 and ours
            // (30) end the sequence there.
            #expect(try await iterator.next() == nil)
            #expect(try await iterator.next() == nil)
        }
        #expect(try await settle(pool.submit(Echo(1))) == 1)
        portShutDown(pool)
    }

    @Test("executor.py test_map_timeout_from_callable: a task's own timeout error is not map's timeout",
          arguments: localMethods)
    func mapTimeoutFromCallable(method: StartMethod) async throws {
        let pool = try makePool(method)
        for timeout in [nil, Duration.seconds(60)] {
            var iterator = try pool.map((0..<4).map { TimeoutOnOne($0) }, timeout: timeout).makeAsyncIterator()
            #expect(try await iterator.next() == 0)
            do {
                _ = try await iterator.next()
                Issue.record("item 1 did not fail")
            } catch let error as RemoteTaskError {
                #expect(error.typeName.hasSuffix("ProcessPoolError"), "\(error)")
                #expect(error.message == "timed out", "\(error)")
            } catch {
                Issue.record("expected the task's error as RemoteTaskError, got \(error)")
            }
            // CPython main yields 2 and 3 next; ours ends the sequence (30).
            #expect(try await iterator.next() == nil)
        }
        portShutDown(pool)
    }

    @Test("executor.py test_map_timeout: map's timeout counts from the call; the iterator is then exhausted",
          arguments: localMethods)
    func mapTimeout(method: StartMethod) async throws {
        let gates = GateDirectory()
        defer { gates.cleanup() }
        let pool = try makePool(method, maxWorkers: 1)
        // time.sleep(0), time.sleep(0), time.sleep(6) with timeout=5.
        let tasks = [WaitForFile(path: "/"), WaitForFile(path: "/"), WaitForFile(path: gates.file("go"))]
        let clock = ContinuousClock()
        let start = clock.now
        var iterator = try pool.map(tasks, timeout: .seconds(2)).makeAsyncIterator()
        var results: [Int] = []
        do {
            while let pid = try await iterator.next() { results.append(pid) }
            Issue.record("expected a timeout")
        } catch let error as ProcessPoolError {
            #expect(error == .timeout)
        }
        #expect(clock.now - start >= .milliseconds(1990))
        // gh-110097: a slow start may leave fewer than two results.
        #expect(results.count <= 2 && results.allSatisfy { $0 > 0 })
        #expect(try await iterator.next() == nil)
        #expect(try await iterator.next() == nil)
        gates.open("go")
        #expect(try await settle(pool.submit(Echo(3))) == 3)
        portShutDown(pool)
    }

    @Test("executor.py test_map_close: dropping the iterator after one result cancels what no worker took",
          arguments: localMethods)
    func mapClose(method: StartMethod) async throws {
        let gates = GateDirectory()
        defer { gates.cleanup() }
        let pool = try makePool(method, maxWorkers: 1)
        // Each item takes over a millisecond: the worker is handed one at a
        // time (SEMANTICS 12), the next as the previous one's result arrives.
        let tasks = (0..<6).map {
            ReportWaitReturn(started: gates.file("s\($0)"), gate: gates.file("g\($0)"), value: $0, holdMilliseconds: 2)
        }
        gates.open("g0")
        do {
            let results = try pool.map(tasks, timeout: .seconds(60))
            var iterator = results.makeAsyncIterator()
            #expect(try await iterator.next() == 0)
            // Item 1 was handed to the worker as item 0 came back; it blocks on g1.
        }
        // The map (results and iterator) is gone: items 2...5 were cancelled.
        for i in 1..<6 { gates.open("g\(i)") }
        portShutDown(pool)
        #expect(gates.exists("s0") && gates.exists("s1"))
        #expect((2..<6).allSatisfy { !gates.exists("s\($0)") })
    }

    @Test("executor.py test_map_buffersize_value_validation: bufferSize 0 and -1 are refused", arguments: localMethods)
    func mapBufferSizeValueValidation(method: StartMethod) async throws {
        let pool = try makePool(method)
        for bufferSize in [0, -1] {
            #expect(throws: ProcessPoolError.invalidOption("bufferSize must be nil or >= 1 (got \(bufferSize))")) {
                _ = try pool.map((0..<4).map { Echo($0) }, bufferSize: bufferSize)
            }
        }
        portShutDown(pool)
    }

    @Test("executor.py test_map_buffersize: results in order for bufferSize 1, 2, 4, 8", arguments: localMethods)
    func mapBufferSize(method: StartMethod) async throws {
        let pool = try makePool(method)
        for bufferSize in [1, 2, 4, 8] {
            var got: [Int] = []
            for try await value in try pool.map((0..<4).map { Echo($0) }, timeout: .seconds(60), bufferSize: bufferSize) {
                got.append(value)
            }
            #expect(got == [0, 1, 2, 3], "bufferSize \(bufferSize)")
        }
        portShutDown(pool)
    }

    @Test("executor.py test_map_buffersize_on_infinite_iterable: an endless input with bufferSize 2",
          arguments: localMethods)
    func mapBufferSizeOnInfiniteIterable(method: StartMethod) async throws {
        let pool = try makePool(method)
        do {
            var iterator = try pool.map((0...).lazy.map { Square($0) }, timeout: .seconds(60), bufferSize: 2)
                .makeAsyncIterator()
            #expect(try await iterator.next() == 0)
            #expect(try await iterator.next() == 1)
            #expect(try await iterator.next() == 4)
        }
        #expect(try await settle(pool.submit(Echo(5))) == 5)
        portShutDown(pool)
    }

    @Test("executor.py test_map_buffersize_on_empty_iterable: an empty input with bufferSize yields nothing",
          arguments: localMethods)
    func mapBufferSizeOnEmptyIterable(method: StartMethod) async throws {
        let pool = try makePool(method)
        var iterator = try pool.map([Echo](), bufferSize: 2).makeAsyncIterator()
        #expect(try await iterator.next() == nil)
        var lazyIterator = try pool.map((0..<0).lazy.map { Echo($0) }, bufferSize: 2).makeAsyncIterator()
        #expect(try await lazyIterator.next() == nil)
        portShutDown(pool)
    }

    @Test("executor.py test_map_buffersize_when_buffer_is_full: map reads only bufferSize items of its input ahead",
          arguments: localMethods)
    func mapBufferSizeWhenBufferIsFull(method: StartMethod) async throws {
        let pool = try makePool(method)
        let pulled = PortBox(0)
        let input = (0..<4).lazy.map { (i: Int) -> Echo in
            pulled.value += 1
            return Echo(i)
        }
        let results = try pool.map(input, bufferSize: 2)
        portShutDown(pool)  // waits for the submitted tasks to complete
        #expect(pulled.value == 2, "map should have read only bufferSize items of its input")
        withExtendedLifetime(results) {}
    }

    @Test("executor.py test_shutdown_race_issue12456: shutdown with more map items than workers, unconsumed",
          arguments: localMethods)
    func shutdownRaceIssue12456(method: StartMethod) async throws {
        let pool = try makePool(method, maxWorkers: 5)
        let results = try pool.map((0..<6).map { _ in Echo(2) })
        portShutDown(pool)
        var got: [Int] = []
        for try await value in results { got.append(value) }
        #expect(got == [Int](repeating: 2, count: 6))
    }

    @Test("executor.py test_no_stale_references: the pool keeps no reference to a submitted task's arguments",
          arguments: localMethods)
    func noStaleReferences(method: StartMethod) async throws {
        let pool = try makePool(method)
        weak var weakBox: MakeBox.Box?
        do {
            let box = MakeBox.Box(11)
            weakBox = box
            _ = try pool.submit(CarryBox(box))  // the future is discarded on purpose
        }
        let released = weakBox == nil
        #expect(released, "the pool still holds the task's argument")
        portShutDown(pool)
    }

    @Test("executor.py test_free_reference: a future's result is released once the future is released",
          arguments: localMethods)
    func freeReference(method: StartMethod) async throws {
        let pool = try makePool(method)
        weak var weakBox: MakeBox.Box?
        var values: [Int] = []
        for i in 0..<10 {
            do {
                let future = try pool.submit(MakeBox(i))
                let box = try await settle(future)
                weakBox = box
                values.append(box.value)
            }
            // Only the pool's I/O thread may still hold the future for a moment.
            let released = eventually(10) { weakBox == nil }
            if !released { Issue.record("result \(i) outlived its future") }
        }
        #expect(values == Array(0..<10))
        portShutDown(pool)
    }
}

// MARK: - test_process_pool.py

@Suite("CPython port: test_process_pool.py", .boundedExitWait, .timeLimit(.minutes(3)))
struct CPythonProcessPoolPortTests {
    @Test("test_process_pool test_killed_child: a worker terminated from outside breaks the pool", arguments: localMethods)
    func killedChild(method: StartMethod) async throws {
        let gates = GateDirectory()
        defer { gates.cleanup() }
        let pool = try makePool(method, maxWorkers: 2)
        let future = try pool.submit(PIDThenWait(pidFile: gates.file("pid"), gate: gates.file("never")))
        #expect(eventually { readPIDFile(gates.file("pid")) != nil })
        let pid = try #require(readPIDFile(gates.file("pid")))
        #expect(kill(pid, SIGTERM) == 0)
        let reason = await expectBroken { _ = try await settle(future) }
        #expect(reason?.contains("signal SIGTERM") == true, "\(reason ?? "")")
        #expect(reason?.contains("pid \(pid)") == true, "\(reason ?? "")")
        #expect(throws: BrokenProcessPool.self) { _ = try pool.submit(Square(2)) }
        portShutDown(pool)
    }

    @Test("test_process_pool test_map_chunksize: chunk sizes 6, 50, 40 give the same results; < 1 is refused",
          arguments: localMethods)
    func mapChunkSize(method: StartMethod) async throws {
        let pool = try makePool(method)
        let reference = (0..<40).map { $0 * $0 }
        for chunkSize in [6, 50, 40] {
            var got: [Int] = []
            for try await value in try pool.map((0..<40).map { Square($0) }, timeout: .seconds(60), chunkSize: chunkSize) {
                got.append(value)
            }
            #expect(got == reference, "chunkSize \(chunkSize)")
        }
        for chunkSize in [-1, 0] {
            do {
                _ = try pool.map((0..<40).map { Square($0) }, chunkSize: chunkSize)
                Issue.record("chunkSize \(chunkSize) was accepted")
            } catch let ProcessPoolError.invalidOption(why) {
                #expect(why.contains("chunkSize must be >= 1"), "\(why)")
            }
        }
        portShutDown(pool)
    }

    @Test("test_process_pool test_traceback: a task's error comes back with its type and message",
          arguments: localMethods)
    func traceback(method: StartMethod) async throws {
        let pool = try makePool(method)
        do {
            _ = try await settle(pool.submit(Fail(registered: false, code: 123)))
            Issue.record("expected the task's error")
        } catch let error as RemoteTaskError {
            #expect(error.typeName.hasSuffix("UnregisteredFailure"), "\(error)")
            #expect(error.message == "unregistered failure: code 123", "\(error)")
            #expect(error.worker.contains("pid"), "\(error)")
        }
        // A registered error type comes back as itself, with its value.
        do {
            _ = try await settle(pool.submit(Fail(registered: true, code: 123)))
            Issue.record("expected the task's error")
        } catch let error as RegisteredFailure {
            #expect(error == RegisteredFailure(code: 123, note: "as asked"))
        }
        portShutDown(pool)
    }

    @Test("test_process_pool test_ressources_gced_in_workers: a task's arguments are released in the worker after it ran",
          arguments: localMethods)
    func resourcesReleasedInWorkers(method: StartMethod) async throws {
        let gates = GateDirectory()
        defer { gates.cleanup() }
        let pool = try makePool(method)
        let marker = ReleaseMarker(path: gates.file("released"))
        #expect(try await settle(pool.submit(TakeMarker(marker))))
        #expect(eventually(10) { gates.exists("released") })
        portShutDown(pool)
    }

    @Test("test_process_pool test_idle_process_reuse_multiple: at most three workers for this submit pattern",
          arguments: replacingMethods)
    func idleProcessReuseMultiple(method: StartMethod) async throws {
        let pool = try makePool(method, maxWorkers: 5)
        _ = try await settle(pool.submit(Square(12)))
        _ = try pool.submit(Square(33))
        _ = try await settle(pool.submit(Square(25)))
        _ = try pool.submit(Square(18))
        _ = try await settle(pool.submit(Square(1)))
        _ = try pool.submit(Square(0))
        #expect(pool.liveWorkerCount <= 3)
        portShutDown(pool)
    }

    @Test("test_process_pool test_max_tasks_per_child: a worker runs 3 tasks, then a new one takes over (refused with fork)",
          arguments: localMethods)
    func maxTasksPerChild(method: StartMethod) async throws {
        if method.name == "fork" {
            do {
                _ = try makePool(method, maxWorkers: 1, maxTasksPerChild: 3)
                Issue.record("maxTasksPerChild was accepted with fork")
            } catch let ProcessPoolError.invalidOption(why) {
                #expect(why.contains("fork"), "\(why)")
            }
            return
        }
        let pool = try makePool(method, maxWorkers: 1, maxTasksPerChild: 3)
        let original = try await settle(pool.submit(GetPID()))
        #expect(try await settle(pool.submit(GetPID())) == original)
        #expect(pool.liveWorkerCount == 1)
        #expect(try await settle(pool.submit(GetPID())) == original)
        let replacement = try await settle(pool.submit(GetPID()))
        #expect(replacement != original)
        #expect(pool.liveWorkerCount == 1)
        portShutDown(pool)
    }

    @Test("test_process_pool test_max_tasks_per_child_pending_tasks_gh115634: a backlog behind retiring workers completes",
          arguments: replacingMethods)
    func maxTasksPerChildPendingTasks(method: StartMethod) async throws {
        for (maxWorkers, maxTasks, count) in [(1, 2, 6), (2, 2, 8)] {
            let pool = try makePool(method, maxWorkers: maxWorkers, maxTasksPerChild: maxTasks)
            let futures = try (0..<count).map { try pool.submit(Square($0)) }
            var results: [Int] = []
            for future in futures { results.append(try await settle(future, within: 60)) }
            #expect(results == (0..<count).map { $0 * $0 }, "\(maxWorkers) workers, \(maxTasks) tasks each")
            portShutDown(pool, cancelFutures: true)
        }
    }

    private func strandedWorkerExit(_ method: StartMethod, shutdown: Bool, dropReference: Bool) async throws {
        let gates = GateDirectory()
        defer { gates.cleanup() }
        var pool: ProcessPoolExecutor? = try makePool(method, maxWorkers: 1, maxTasksPerChild: 1)
        let futures = try (0..<3).map {
            try pool!.submit(ReportWaitReturn(started: gates.file("s\($0)"), gate: gates.file("go"), value: $0))
        }
        // The worker is inside the first task: it reaches its limit only
        // after the shutdown or the drop below.
        #expect(eventually { gates.exists("s0") })
        if shutdown { pool!.shutdown(wait: false) }
        if dropReference {
            weak let weakPool = pool
            pool = nil
            let released = weakPool == nil
            #expect(released)
        }
        gates.open("go")
        // CPython fails futures 1 and 2 with BrokenProcessPool ("garbage
        // collected") once the executor is gone; ours (SEMANTICS 26) lets
        // pending work finish: a replacement worker runs each.
        var results: [Int] = []
        for future in futures { results.append(try await settle(future, within: 60)) }
        #expect(results == [0, 1, 2])
        if let pool { portShutDown(pool) }
    }

    @Test("test_process_pool test_shutdown_no_wait_max_tasks_gh119592 (SEMANTICS 26): a retiring worker is replaced after shutdown(wait: false)",
          arguments: replacingMethods, [false, true])
    func shutdownNoWaitMaxTasks(method: StartMethod, dropReference: Bool) async throws {
        try await strandedWorkerExit(method, shutdown: true, dropReference: dropReference)
    }

    @Test("test_process_pool test_gc_during_max_tasks_worker_exit_gh152967 (SEMANTICS 26): dropped without shutdown, the backlog still runs",
          arguments: replacingMethods)
    func gcDuringMaxTasksWorkerExit(method: StartMethod) async throws {
        try await strandedWorkerExit(method, shutdown: false, dropReference: true)
    }

    @Test("test_process_pool test_force_shutdown_during_max_tasks_worker_exit: no replacement worker after terminateWorkers",
          arguments: replacingMethods)
    func forceShutdownDuringMaxTasksWorkerExit(method: StartMethod) async throws {
        let gates = GateDirectory()
        defer { gates.cleanup() }
        let pool = try makePool(method, maxWorkers: 1, maxTasksPerChild: 1)
        let futures = try (0..<3).map {
            try pool.submit(ReportWaitReturn(started: gates.file("s\($0)"), gate: gates.file("never"), value: $0))
        }
        #expect(eventually { gates.exists("s0") })
        pool.terminateWorkers()
        let reason = await expectBroken { _ = try await settle(futures[0]) }
        #expect(reason?.contains("terminateWorkers") == true, "\(reason ?? "")")
        // CPython fails the queued futures with BrokenProcessPool; ours
        // cancels them (SEMANTICS 28: terminateWorkers cancels pending work).
        #expect(futures[1].isCancelled && futures[2].isCancelled)
        portShutDown(pool)
        #expect(pool.liveWorkerCount == 0)
        #expect(!gates.exists("s1") && !gates.exists("s2"))
    }

    @Test("test_process_pool test_failed_worker_replacement_breaks_pool: a replacement that cannot start breaks the pool",
          arguments: replacingMethods)
    func failedWorkerReplacementBreaksPool(method: StartMethod) async throws {
        let gates = GateDirectory()
        defer { gates.cleanup() }
        let refusing = StartMethod(launcher: PortRefusingLauncher(base: method.launcher, allowed: 1))
        let pool = try ProcessPoolExecutor(maxWorkers: 1, context: refusing, tasks: testRegistry, maxTasksPerChild: 1)
        let futures = try (0..<3).map {
            try pool.submit(ReportWaitReturn(started: gates.file("s\($0)"), gate: gates.file("go"), value: $0))
        }
        #expect(eventually { gates.exists("s0") })
        gates.open("go")
        #expect(try await settle(futures[0]) == 0)
        for future in futures.dropFirst() {
            let reason = await expectBroken { _ = try await settle(future, within: 60) }
            #expect(reason?.contains("refuses to start another worker") == true, "\(reason ?? "")")
        }
        portShutDown(pool)
    }

    @Test("test_process_pool test_max_tasks_early_shutdown: 3 workers of one task each, 6 tasks, shutdown: every result arrives",
          arguments: replacingMethods)
    func maxTasksEarlyShutdown(method: StartMethod) async throws {
        let pool = try makePool(method, maxWorkers: 3, maxTasksPerChild: 1)
        let futures = try (0..<6).map { try pool.submit(Square($0)) }
        portShutDown(pool)
        for (i, future) in futures.enumerated() { #expect(try future.result() == i * i) }
    }

    @Test("test_process_pool test_force_shutdown_workers: terminateWorkers sends SIGTERM, killWorkers SIGKILL, to a running worker",
          arguments: localMethods, [false, true])
    func forceShutdownWorkers(method: StartMethod, kill force: Bool) async throws {
        let gates = GateDirectory()
        defer { gates.cleanup() }
        let pool = try makePool(method, maxWorkers: 1)
        // Under TSan a fork child never runs a signal handler it installs
        // (the runtime defers the signal and, in a fork of a multi-threaded
        // process, never delivers it: the worker lives on). There the
        // worker keeps SIGTERM's default action, and the signal is read
        // from the break reason alone.
        let handlerRuns = !(threadSanitizerIsActive && method.name == "fork")
        let future = try pool.submit(PIDThenWait(pidFile: gates.file("pid"), gate: gates.file("never"),
                                                 termMark: handlerRuns ? gates.file("got-sigterm") : nil))
        #expect(eventually { readPIDFile(gates.file("pid")) != nil })
        let pid = try #require(readPIDFile(gates.file("pid")))
        if force { pool.killWorkers() } else { pool.terminateWorkers() }
        // Started, never finished.
        let reason = await expectBroken { _ = try await settle(future) }
        #expect(eventually { processGone(pid) })
        #expect(reason?.contains(force ? "signal SIGKILL" : "signal SIGTERM") == true, "\(reason ?? "")")
        if force {
            #expect(!gates.exists("got-sigterm"), "killWorkers sent SIGTERM")
        } else if handlerRuns {
            #expect(gates.exists("got-sigterm"), "terminateWorkers did not send SIGTERM")
        }
        portShutDown(pool)
    }

    @Test("test_process_pool test_force_shutdown_workers_stops_pool: after terminate/kill, submit refuses and the worker is gone",
          arguments: localMethods, [false, true])
    func forceShutdownWorkersStopsPool(method: StartMethod, kill force: Bool) async throws {
        let pool = try makePool(method, maxWorkers: 1)
        let pid = try await settle(pool.submit(GetPID()))
        if force { pool.killWorkers() } else { pool.terminateWorkers() }
        // CPython: RuntimeError (shut down). Ours: shut down, and broken as
        // soon as the signalled worker's end is seen (the broken check comes first).
        do {
            _ = try pool.submit(Echo(0))
            Issue.record("submit was accepted after \(force ? "killWorkers" : "terminateWorkers")")
        } catch is BrokenProcessPool {
        } catch ProcessPoolError.shutdown {
        }
        #expect(eventually { processGone(pid) })
        portShutDown(pool)
        #expect(pool.liveWorkerCount == 0)
    }
}

// MARK: - test_wait.py

@Suite("CPython port: test_wait.py", .boundedExitWait, .timeLimit(.minutes(3)))
struct CPythonWaitPortTests {
    @Test("test_wait test_20369: a future listed twice counts once", arguments: localMethods)
    func duplicates20369(method: StartMethod) async throws {
        let pool = try makePool(method)
        let future = try pool.submit(Square(2))
        let (done, notDone) = await wait(for: [future, future], timeout: .seconds(60), returnWhen: .allCompleted)
        #expect(done.count == 1 && done[0] === future)
        #expect(notDone.isEmpty)
        portShutDown(pool)
    }

    @Test("test_wait test_first_completed: returns with the one done, the blocked one not done", arguments: localMethods)
    func firstCompleted(method: StartMethod) async throws {
        let gates = GateDirectory()
        defer { gates.cleanup() }
        let pool = try makePool(method)
        let future1 = try pool.submit(Square(21))
        let future2 = try pool.submit(WaitForFile(path: gates.file("go")))
        let (done, notDone) = await wait(for: [future1, future2], timeout: .seconds(60), returnWhen: .firstCompleted)
        #expect(ids(done) == ids([future1]))
        #expect(ids(notDone) == ids([future2]))
        gates.open("go")
        _ = try await settle(future2)
        portShutDown(pool)
    }

    @Test("test_wait test_first_completed_some_already_completed: futures already done return at once",
          arguments: localMethods)
    func firstCompletedSomeAlreadyCompleted(method: StartMethod) async throws {
        let gates = GateDirectory()
        defer { gates.cleanup() }
        let pool = try makePool(method)
        let future1 = try pool.submit(WaitForFile(path: gates.file("go")))
        let cancelled = PortFutures.cancelled()
        let successful = PortFutures.successful()
        let (done, notDone) = await wait(for: [cancelled, successful, future1], timeout: .seconds(60),
                                         returnWhen: .firstCompleted)
        #expect(ids(done) == ids([cancelled, successful]))
        #expect(ids(notDone) == ids([future1]))
        gates.open("go")
        _ = try await settle(future1)
        portShutDown(pool)
    }

    @Test("test_wait test_first_exception: returns at the first failure with what finished before it",
          arguments: localMethods)
    func firstException(method: StartMethod) async throws {
        let gates = GateDirectory()
        defer { gates.cleanup() }
        let pool = try makePool(method, maxWorkers: 3)
        let future1 = try pool.submit(Square(21))
        let future2 = try pool.submit(FailAfterGate(gate: gates.file("event1"), code: 2))
        let future3 = try pool.submit(WaitForFile(path: gates.file("event2")))
        // future1 completes before future2 raises.
        _ = try await settle(future1)
        gates.open("event1")
        let (done, notDone) = await wait(for: [future1, future2, future3], timeout: .seconds(60),
                                         returnWhen: .firstException)
        #expect(ids(done) == ids([future1, future2]))
        #expect(ids(notDone) == ids([future3]))
        gates.open("event2")
        _ = try await settle(future3)
        portShutDown(pool)
    }

    @Test("test_wait test_first_exception_some_already_complete: a cancelled future is done but not an exception",
          arguments: localMethods)
    func firstExceptionSomeAlreadyComplete(method: StartMethod) async throws {
        let gates = GateDirectory()
        defer { gates.cleanup() }
        let pool = try makePool(method)
        let future1 = try pool.submit(Fail(registered: true, code: 0))  // divmod(21, 0)
        let future2 = try pool.submit(WaitForFile(path: gates.file("go")))
        let successful = PortFutures.successful()
        let cancelled = PortFutures.cancelled()
        let (done, notDone) = await wait(for: [successful, cancelled, future1, future2], timeout: .seconds(60),
                                         returnWhen: .firstException)
        // CPython's CANCELLED (not yet notified) stays in not_done; ours has
        // no such state: a cancelled future is done (SEMANTICS 25, 33).
        #expect(ids(done) == ids([successful, cancelled, future1]))
        #expect(ids(notDone) == ids([future2]))
        gates.open("go")
        _ = try await settle(future2)
        portShutDown(pool)
    }

    @Test("test_wait test_first_exception_one_already_failed: a future that already failed returns at once",
          arguments: localMethods)
    func firstExceptionOneAlreadyFailed(method: StartMethod) async throws {
        let gates = GateDirectory()
        defer { gates.cleanup() }
        let pool = try makePool(method)
        let future1 = try pool.submit(WaitForFile(path: gates.file("go")))
        let failed = PortFutures.failed()
        let (done, notDone) = await wait(for: [failed, future1], timeout: .seconds(60), returnWhen: .firstException)
        #expect(ids(done) == ids([failed]))
        #expect(ids(notDone) == ids([future1]))
        gates.open("go")
        _ = try await settle(future1)
        portShutDown(pool)
    }

    @Test("test_wait test_all_completed: finished, cancelled, failed and pool futures all done", arguments: localMethods)
    func allCompleted(method: StartMethod) async throws {
        let pool = try makePool(method)
        let future1 = try pool.submit(Fail(registered: true, code: 0))
        let future2 = try pool.submit(Square(21))
        let all = [PortFutures.successful(), PortFutures.cancelled(), PortFutures.failed(), future1, future2]
        let (done, notDone) = await wait(for: all, timeout: .seconds(60), returnWhen: .allCompleted)
        #expect(ids(done) == ids(all))
        #expect(notDone.isEmpty)
        portShutDown(pool)
    }

    @Test("test_wait test_timeout: a 50 ms timeout splits done from not done", arguments: localMethods)
    func timeout(method: StartMethod) async throws {
        let gates = GateDirectory()
        defer { gates.cleanup() }
        let pool = try makePool(method)
        let future = try pool.submit(WaitForFile(path: gates.file("go")))
        let finished = [PortFutures.cancelled(), PortFutures.failed(), PortFutures.successful()]
        let (done, notDone) = await wait(for: finished + [future], timeout: .milliseconds(50),
                                         returnWhen: .allCompleted)
        #expect(ids(done) == ids(finished))
        #expect(ids(notDone) == ids([future]))
        gates.open("go")
        _ = try await settle(future)
        portShutDown(pool)
    }
}

// MARK: - test_as_completed.py

@Suite("CPython port: test_as_completed.py", .boundedExitWait, .timeLimit(.minutes(3)))
struct CPythonAsCompletedPortTests {
    @Test("test_as_completed test_no_timeout: every future is yielded", arguments: localMethods)
    func noTimeout(method: StartMethod) async throws {
        let pool = try makePool(method)
        let all = [PortFutures.cancelled(), PortFutures.failed(), PortFutures.successful(),
                   try pool.submit(Square(21)), try pool.submit(Square(7))]
        var completed: [TaskFuture<Int>] = []
        for try await future in asCompleted(all, timeout: .seconds(60)) { completed.append(future) }
        #expect(completed.count == 5)
        #expect(ids(completed) == ids(all))
        portShutDown(pool)
    }

    @Test("test_as_completed test_future_times_out: done futures are yielded, then the timeout (0 and 100 ms)",
          arguments: localMethods)
    func futureTimesOut(method: StartMethod) async throws {
        let gates = GateDirectory()
        defer { gates.cleanup() }
        let pool = try makePool(method)
        let alreadyCompleted = [PortFutures.cancelled(), PortFutures.failed(), PortFutures.successful()]
        for timeout in [Duration.zero, .milliseconds(100)] {
            let future = try pool.submit(WaitForFile(path: gates.file("go")))
            var completed: [TaskFuture<Int>] = []
            do {
                for try await f in asCompleted(alreadyCompleted + [future], timeout: timeout) { completed.append(f) }
                Issue.record("expected a timeout (\(timeout))")
            } catch let error as ProcessPoolError {
                #expect(error == .timeout)
            }
            #expect(ids(completed) == ids(alreadyCompleted), "timeout \(timeout)")
        }
        gates.open("go")
        portShutDown(pool)
    }

    @Test("test_as_completed test_duplicate_futures: a future given three times is yielded once", arguments: localMethods)
    func duplicateFutures(method: StartMethod) async throws {
        let pool = try makePool(method)
        let future = try pool.submit(SleepTask(milliseconds: 50))
        var completed: [TaskFuture<Int32>] = []
        for try await f in asCompleted(repeatElement(future, count: 3), timeout: .seconds(60)) { completed.append(f) }
        #expect(completed.count == 1 && completed[0] === future)
        portShutDown(pool)
    }

    @Test("test_as_completed test_free_reference_yielded_future: the sequence keeps no future it has yielded")
    func freeReferenceYieldedFuture() async throws {
        var futures: [TaskFuture<Int>] = (0..<8).map { _ in PortFutures.pending() }
        futures.append(PortFutures.cancelled())
        futures.append(PortFutures.successful())
        // (No #expect in the loops: it may keep what it evaluated.)
        weak var previous: TaskFuture<Int>?
        var heldWhileIterating: [Int] = []
        var yielded = 0
        var timedOut = false
        let first = asCompleted(futures, timeout: .zero)
        do {
            for try await future in first {
                if previous != nil { heldWhileIterating.append(yielded - 1) }
                futures.removeAll { $0 === future }
                previous = future
                yielded += 1
            }
        } catch ProcessPoolError.timeout {
            timedOut = true
        }
        let lastHeld = previous != nil
        withExtendedLifetime(first) {}
        #expect(timedOut)
        #expect(yielded == 2)
        #expect(heldWhileIterating.isEmpty, "yielded futures still referenced: \(heldWhileIterating)")
        #expect(!lastHeld, "the last future yielded before the timeout is still referenced")

        // Then each completes in turn while the sequence runs.
        futures[0].finish(.success(0))
        previous = nil
        heldWhileIterating = []
        yielded = 0
        let second = asCompleted(futures, timeout: .seconds(30))
        for try await future in second {
            if previous != nil { heldWhileIterating.append(yielded - 1) }
            futures.removeAll { $0 === future }
            previous = future
            yielded += 1
            if let next = futures.first { next.finish(.success(yielded)) }
        }
        let lastHeldAgain = previous != nil
        withExtendedLifetime(second) {}
        #expect(yielded == 8)
        #expect(heldWhileIterating.isEmpty, "yielded futures still referenced: \(heldWhileIterating)")
        #expect(!lastHeldAgain)
    }

    @Test("test_as_completed test_correct_timeout_exception_msg: two of four unfinished at timeout 0 is a timeout")
    func correctTimeoutExceptionMessage() async throws {
        let futures = [PortFutures.cancelled(), PortFutures.pending(), PortFutures.running(), PortFutures.successful()]
        var yielded = 0
        do {
            for try await _ in asCompleted(futures, timeout: .zero) { yielded += 1 }
            Issue.record("expected a timeout")
        } catch let error as ProcessPoolError {
            // CPython's message is "2 (of 4) futures unfinished"; ours
            // (ProcessPoolError.timeout carries no counts) says "timed out".
            #expect(error == .timeout)
        }
        #expect(yielded == 2)
    }
}

// MARK: - test_future.py

@Suite("CPython port: test_future.py", .boundedExitWait, .timeLimit(.minutes(3)))
struct CPythonFuturePortTests {
    @Test("test_future test_done_callback_with_result")
    func doneCallbackWithResult() throws {
        let seen = PortBox<Int?>(nil)
        let f = PortFutures.pending()
        f.addDoneCallback { seen.value = try? $0.result() }
        f.finish(.success(5))
        #expect(seen.value == 5)
    }

    @Test("test_future test_done_callback_with_exception")
    func doneCallbackWithException() throws {
        let seen = PortBox<RegisteredFailure?>(nil)
        let f = PortFutures.pending()
        f.addDoneCallback { seen.value = (try? $0.error()) as? RegisteredFailure }
        f.finish(.failure(RegisteredFailure(code: 1, note: "test")))
        #expect(seen.value == RegisteredFailure(code: 1, note: "test"))
    }

    @Test("test_future test_done_callback_with_cancel")
    func doneCallbackWithCancel() throws {
        let seen = PortBox<Bool?>(nil)
        let f = PortFutures.pending()
        f.addDoneCallback { seen.value = $0.isCancelled }
        #expect(f.cancel())
        #expect(seen.value == true)
    }

    @Test("test_future test_done_callback_already_successful: runs at once")
    func doneCallbackAlreadySuccessful() throws {
        let seen = PortBox<Int?>(nil)
        let f = PortFutures.pending()
        f.finish(.success(5))
        f.addDoneCallback { seen.value = try? $0.result() }
        #expect(seen.value == 5)
    }

    @Test("test_future test_done_callback_already_failed: runs at once")
    func doneCallbackAlreadyFailed() throws {
        let seen = PortBox<RegisteredFailure?>(nil)
        let f = PortFutures.pending()
        f.finish(.failure(RegisteredFailure(code: 1, note: "test")))
        f.addDoneCallback { seen.value = (try? $0.error()) as? RegisteredFailure }
        #expect(seen.value == RegisteredFailure(code: 1, note: "test"))
    }

    @Test("test_future test_done_callback_already_cancelled: runs at once")
    func doneCallbackAlreadyCancelled() throws {
        let seen = PortBox<Bool?>(nil)
        let f = PortFutures.pending()
        #expect(f.cancel())
        f.addDoneCallback { seen.value = $0.isCancelled }
        #expect(seen.value == true)
    }

    @Test("test_future test_cancel: true while pending or cancelled, false once running or finished")
    func cancel() throws {
        let f1 = PortFutures.pending()
        let f2 = PortFutures.running()
        let f3 = PortFutures.cancelled()
        let f5 = PortFutures.failed()
        let f6 = TaskFuture<Int>(result: .success(5))
        #expect(f1.cancel())
        #expect(f1.isCancelled)
        #expect(!f2.cancel())
        #expect(f2.isRunning && !f2.isCancelled)
        #expect(f3.cancel())
        #expect(f3.isCancelled)
        #expect(!f5.cancel())
        #expect(f5.isDone && !f5.isCancelled)
        #expect(!f6.cancel())
        #expect(try f6.result() == 5)
    }

    @Test("test_future test_cancelled")
    func cancelled() throws {
        #expect(!PortFutures.pending().isCancelled)
        #expect(!PortFutures.running().isCancelled)
        #expect(PortFutures.cancelled().isCancelled)
        #expect(!PortFutures.failed().isCancelled)
        #expect(!PortFutures.successful().isCancelled)
    }

    @Test("test_future test_done")
    func done() throws {
        #expect(!PortFutures.pending().isDone)
        #expect(!PortFutures.running().isDone)
        #expect(PortFutures.cancelled().isDone)
        #expect(PortFutures.failed().isDone)
        #expect(PortFutures.successful().isDone)
    }

    @Test("test_future test_running")
    func running() throws {
        #expect(!PortFutures.pending().isRunning)
        #expect(PortFutures.running().isRunning)
        #expect(!PortFutures.cancelled().isRunning)
        #expect(!PortFutures.failed().isRunning)
        #expect(!PortFutures.successful().isRunning)
    }

    @Test("test_future test_result_with_timeout: timeout 0 on every state")
    func resultWithTimeout() throws {
        #expect(throws: ProcessPoolError.timeout) { _ = try PortFutures.pending().result(timeout: .zero) }
        #expect(throws: ProcessPoolError.timeout) { _ = try PortFutures.running().result(timeout: .zero) }
        #expect(throws: CancellationError.self) { _ = try PortFutures.cancelled().result(timeout: .zero) }
        #expect(throws: RegisteredFailure(code: -1, note: "EXCEPTION_FUTURE")) {
            _ = try PortFutures.failed().result(timeout: .zero)
        }
        #expect(try PortFutures.successful().result(timeout: .zero) == 42)
    }

    @Test("test_future test_result_with_success: result(timeout:) wakes when another thread finishes the future")
    func resultWithSuccess() throws {
        let f = PortFutures.pending()
        let finisher = PortBackground {
            // Once the main thread waits (its observer is registered).
            _ = eventually(30) { f.pendingObserverCount > 0 }
            f.finish(.success(42))
        }
        #expect(try f.result(timeout: .seconds(30)) == 42)
        #expect(finisher.finished(within: 30))
    }

    @Test("test_future test_result_with_cancel: result(timeout:) wakes when another thread cancels the future")
    func resultWithCancel() throws {
        let f = PortFutures.pending()
        let canceller = PortBackground {
            _ = eventually(30) { f.pendingObserverCount > 0 }
            f.cancel()
        }
        #expect(throws: CancellationError.self) { _ = try f.result(timeout: .seconds(30)) }
        #expect(canceller.finished(within: 30))
    }

    @Test("test_future test_exception_with_timeout: error(timeout: 0) on every state")
    func exceptionWithTimeout() throws {
        #expect(throws: ProcessPoolError.timeout) { _ = try PortFutures.pending().error(timeout: .zero) }
        #expect(throws: ProcessPoolError.timeout) { _ = try PortFutures.running().error(timeout: .zero) }
        // CPython raises CancelledError; ours returns CancellationError (API 5).
        #expect(try PortFutures.cancelled().error(timeout: .zero) is CancellationError)
        #expect(try PortFutures.failed().error(timeout: .zero) as? RegisteredFailure
                == RegisteredFailure(code: -1, note: "EXCEPTION_FUTURE"))
        #expect(try PortFutures.successful().error(timeout: .zero) == nil)
    }

    @Test("test_future test_exception_with_success: error(timeout:) wakes when another thread fails the future")
    func exceptionWithSuccess() throws {
        let f = PortFutures.pending()
        let failer = PortBackground {
            _ = eventually(30) { f.pendingObserverCount > 0 }
            f.finish(.failure(RegisteredFailure(code: 3, note: "late")))
        }
        #expect(try f.error(timeout: .seconds(30)) as? RegisteredFailure == RegisteredFailure(code: 3, note: "late"))
        #expect(failer.finished(within: 30))
    }

    @Test("test_future test_multiple_set_result: the first completion wins")
    func multipleSetResult() throws {
        let f = PortFutures.pending()
        f.finish(.success(1))
        f.finish(.success(2))
        #expect(f.isDone)
        #expect(try f.result() == 1)
    }

    @Test("test_future test_multiple_set_exception: the first completion wins")
    func multipleSetException() throws {
        let f = PortFutures.pending()
        f.finish(.failure(RegisteredFailure(code: 1, note: "first")))
        f.finish(.failure(RegisteredFailure(code: 2, note: "second")))
        #expect(try f.error() as? RegisteredFailure == RegisteredFailure(code: 1, note: "first"))
    }
}
