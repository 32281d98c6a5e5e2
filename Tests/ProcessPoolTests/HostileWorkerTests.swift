import Glibc
import PoolTestSupport
import ProcessPool
import Synchronization
import Testing

// SEMANTICS 39: the parent trusts no byte from a worker. Each case below is
// a scripted fake worker (FakeWorker.swift) sending one kind of malformed
// message; the parent must break the pool naming the worker ("fake worker
// N") or deliver valid data, must never trap or hang, and must commit memory
// only for bytes that actually arrived. One @Test per case, so that a case
// that crashes the runner is named by the last test started.

// MARK: - Test-local tasks (the fake never runs them; the pool needs their types)

/// A task whose output is a `Bool` (a block of outputs: one byte each).
struct HostileFlag: ProcessTask {
    var n: Int
    func run() -> Bool { n % 2 == 0 }
}

/// A `BitwiseCodable` enum: only 0...3 are valid bit patterns.
enum HostileSuit: UInt8, BitwiseCodable {
    case clubs, diamonds, hearts, spades
}

/// A task whose output is a `HostileSuit` (a block of outputs: one byte each).
struct HostileDrawSuit: ProcessTask {
    var n: Int
    func run() -> HostileSuit { .clubs }
}

/// Nested unkeyed containers, `depth` deep below the outermost.
struct HostileDeepList: Codable, Sendable, Equatable {
    var depth: Int

    init(depth: Int) { self.depth = depth }

    init(from decoder: any Decoder) throws {
        var container = try decoder.unkeyedContainer()
        depth = container.isAtEnd ? 0 : try container.decode(HostileDeepList.self).depth + 1
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.unkeyedContainer()
        if depth > 0 { try container.encode(HostileDeepList(depth: depth - 1)) }
    }
}

/// A task whose output is a `HostileDeepList`.
struct HostileMakeDeepList: ProcessTask {
    func run() -> HostileDeepList { HostileDeepList(depth: 1) }
}

/// A dictionary of dictionaries.
struct HostileDictNest: Codable, Sendable {
    var children: [String: HostileDictNest]

    /// How deep the first path goes (a loop: no recursion 100,000 deep here).
    var depth: Int {
        var depth = 0
        var node = self
        while let next = node.children.values.first {
            depth += 1
            node = next
        }
        return depth
    }
}

/// A task whose output is a `[String: HostileDictNest]`.
struct HostileMakeDictNest: ProcessTask {
    func run() -> [String: HostileDictNest] { [:] }
}

/// A task whose output is an `[Int]` (encoded as a packed array).
struct HostileMakeInts: ProcessTask {
    func run() -> [Int] { [1, 2] }
}

/// A task whose output is a `String`.
struct HostileMakeText: ProcessTask {
    func run() -> String { "text" }
}

/// The pool's registry for these tests.
let hostileRegistry = TaskRegistry(tasks: [Echo.self, EchoBytes.self, HostileFlag.self, HostileDrawSuit.self,
                                           HostileMakeDeepList.self, HostileMakeDictNest.self, HostileMakeInts.self, HostileMakeText.self])

// MARK: - Helpers

/// Helpers for these tests (a namespace: other test files declare helpers too).
enum Hostile {

    /// How a future ended, within a bound.
    enum Settled<T> {
        case value(T)
        case broken(String)
        case failed(any Error)
        case timedOut
    }

    /// Waits at most `seconds` for `future` and says how it ended.
    static func settleOutcome<T>(_ future: TaskFuture<T>, within seconds: Int = 30) async -> Hostile.Settled<T> {
        let (done, _) = await wait(for: [future], timeout: .seconds(seconds))
        guard !done.isEmpty else { return .timedOut }
        do {
            return .value(try future.result())
        } catch let error as BrokenProcessPool {
            return .broken(error.reason)
        } catch {
            return .failed(error)
        }
    }

    /// SEMANTICS 39: `future` delivered valid data (`valid` holds), or the pool
    /// broke with a reason naming `worker`; with `allowTaskError`, a failure of
    /// this future alone (a decoding error, item 38) is fine too. Returns the
    /// break reason, if the pool broke.
    @discardableResult
    static func expectValidOrBroken<T>(_ future: TaskFuture<T>, naming worker: String = "fake worker 1",
                                allowTaskError: Bool = false, within seconds: Int = 30,
                                sourceLocation: SourceLocation = #_sourceLocation,
                                valid: (T) -> Bool) async -> String? {
        switch await Hostile.settleOutcome(future, within: seconds) {
        case .value(let value):
            #expect(valid(value), "an invalid value was delivered: \(value)", sourceLocation: sourceLocation)
        case .broken(let reason):
            #expect(reason.contains(worker), "the reason does not name \(worker): \(reason)",
                    sourceLocation: sourceLocation)
            return reason
        case .failed(let error):
            if !allowTaskError {
                Issue.record("expected a value or BrokenProcessPool, got \(error)", sourceLocation: sourceLocation)
            }
        case .timedOut:
            Issue.record("the future did not settle within \(seconds) s (the parent hangs)", sourceLocation: sourceLocation)
        }
        return nil
    }

    /// The pool must break, naming `worker`. Returns the reason.
    @discardableResult
    static func expectBrokenNaming<T>(_ future: TaskFuture<T>, _ worker: String = "fake worker 1", within seconds: Int = 30,
                               sourceLocation: SourceLocation = #_sourceLocation) async -> String? {
        switch await Hostile.settleOutcome(future, within: seconds) {
        case .value(let value):
            Issue.record("expected BrokenProcessPool, got the value \(value)", sourceLocation: sourceLocation)
        case .broken(let reason):
            #expect(reason.contains(worker), "the reason does not name \(worker): \(reason)",
                    sourceLocation: sourceLocation)
            return reason
        case .failed(let error):
            Issue.record("expected BrokenProcessPool, got \(error)", sourceLocation: sourceLocation)
        case .timedOut:
            Issue.record("the future did not settle within \(seconds) s (the parent hangs)", sourceLocation: sourceLocation)
        }
        return nil
    }

    /// A flag set from another task.
    fileprivate final class DoneFlag: Sendable {
        let done = Mutex(false)
    }

    /// `pool.shutdown()`, bounded: false if it did not return within `seconds`
    /// (the shutdown is left running; the test goes on and fails).
    static func shutdownWithin(_ pool: ProcessPoolExecutor, seconds: Int = 30) async -> Bool {
        let flag = DoneFlag()
        Task.detached {
            await pool.shutdown()
            flag.done.guarded { $0 = true }
        }
        let deadline = ContinuousClock.now + .seconds(seconds)
        while ContinuousClock.now < deadline {
            if flag.done.guarded({ $0 }) { return true }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return flag.done.guarded { $0 }
    }

    /// Polls `condition` (async sleeps) until it holds or `seconds` pass.
    static func eventuallyAsync(_ seconds: Double = 10, _ condition: () -> Bool) async -> Bool {
        let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
        while ContinuousClock.now < deadline {
            if condition() { return true }
            try? await Task.sleep(for: .milliseconds(5))
        }
        return condition()
    }

    /// The end of every case: `shutdown()` returns, every fake has ended, and
    /// the pool released every connection.
    static func finish(_ pool: ProcessPoolExecutor, _ launcher: FakeLauncher,
                sourceLocation: SourceLocation = #_sourceLocation) async {
        #expect(await Hostile.shutdownWithin(pool), "shutdown() did not return", sourceLocation: sourceLocation)
        #expect(await Hostile.eventuallyAsync(15) { launcher.connections.allSatisfy(\.hasEnded) },
                "a fake worker is still running", sourceLocation: sourceLocation)
        #expect(await Hostile.eventuallyAsync(5) { launcher.connections.allSatisfy(\.wasClosedByPool) },
                "the pool did not close a connection", sourceLocation: sourceLocation)
    }

    /// A pool of `maxWorkers` fakes running `hostileRegistry`.
    static func makeFakePool(_ launcher: FakeLauncher, maxWorkers: Int = 1) throws -> ProcessPoolExecutor {
        try ProcessPoolExecutor(maxWorkers: maxWorkers, context: launcher.method, tasks: hostileRegistry)
    }

    /// The memory a case may commit beyond what it was sent.
    static let memoryAllowance = 64 << 20

    /// `n` nested empty-at-the-bottom unkeyed containers, as `BinaryEncoder`
    /// writes them: each is tag 0x14, a u32 length of what it holds, the rest.
    static func nestedUnkeyed(depth n: Int) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(5 * n)
        for level in 0..<n {
            bytes.append(FakeWire.unkeyedTag)
            bytes += FakeWire.u32(UInt32(5 * (n - 1 - level)))
        }
        return bytes
    }

    /// A `[String: HostileDictNest]` nested `n` levels deep, built inside out: each
    /// level is `{"k": {"children": <next level>}}` and the bottom is `{}`.
    static func nestedDictionaries(depth n: Int) -> [UInt8] {
        // Headers from the innermost out; each container's length covers
        // everything after its header (there is nothing after the innermost).
        var chunks: [[UInt8]] = [[FakeWire.keyedTag] + FakeWire.u32(0)]
        var inner = 5
        let children = FakeWire.string("children")
        let k = FakeWire.string("k")
        for _ in 0..<n {
            // HostileDictNest: keyed { "children": inner }
            let nestLength = children.count + inner
            chunks.append([FakeWire.keyedTag] + FakeWire.u32(UInt32(nestLength)) + children)
            inner = 5 + nestLength
            // [String: HostileDictNest]: keyed { "k": nest }
            let dictLength = k.count + inner
            chunks.append([FakeWire.keyedTag] + FakeWire.u32(UInt32(dictLength)) + k)
            inner = 5 + dictLength
        }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(inner)
        for chunk in chunks.reversed() { bytes += chunk }
        return bytes
    }

    /// A `Bool` (or a one-byte enum) read as its byte.
    static func bitPattern<T: BitwiseCopyable>(_ value: T) -> UInt8 {
        withUnsafeBytes(of: value) { $0[0] }
    }
}

// MARK: - The harness itself

@Suite("Fake worker harness", .boundedExitWait, .timeLimit(.minutes(3)), .serialized)
struct FakeWorkerHarnessTests {
    @Test("a well-behaved fake completes Echo(5), says goodbye on exit and ends cleanly")
    func wellBehaved() async throws {
        let launcher = FakeLauncher { try $0.handshake(); try $0.serveEcho() }
        let pool = try Hostile.makeFakePool(launcher)
        let outcome = await Hostile.settleOutcome(try pool.submit(Echo(5)))
        guard case .value(let value) = outcome else {
            Issue.record("Echo(5) did not complete: \(outcome)")
            await Hostile.finish(pool, launcher)
            return
        }
        #expect(value == 5)
        await Hostile.finish(pool, launcher)
        // A clean exit: nobody was signalled, the fake exited 0.
        for connection in launcher.connections {
            #expect(connection.signals.isEmpty, "\(connection.label) was signalled")
            #expect(connection.collectExit() == .exited(0))
        }
    }

    @Test("two well-behaved fakes complete 200 Echo calls in order")
    func wellBehavedMany() async throws {
        let launcher = FakeLauncher { try $0.handshake(); try $0.serveEcho() }
        let pool = try Hostile.makeFakePool(launcher, maxWorkers: 2)
        let futures = try (0..<200).map { try pool.submit(Echo($0)) }
        for (i, future) in futures.enumerated() {
            let outcome = await Hostile.settleOutcome(future)
            guard case .value(let v) = outcome else {
                Issue.record("Echo(\(i)): \(outcome)")
                break
            }
            #expect(v == i)
        }
        await Hostile.finish(pool, launcher)
        for connection in launcher.connections {
            #expect(connection.signals.isEmpty, "\(connection.label) was signalled")
        }
    }
}

// MARK: - Hostile workers

@Suite("Hostile workers (SEMANTICS 39)", .boundedExitWait, .timeLimit(.minutes(3)), .serialized)
struct HostileWorkerTests {
    // MARK: Counts

    @Test("results whose call count is 2^64-1")
    func countUInt64Max() async throws {
        let launcher = FakeLauncher { w in
            try w.handshake()
            let run = try w.readRun()
            try w.sendResults(itemID: run.itemID, count: .max, payload: FakeWire.success(FakeWire.encodedInt(5)))
            try w.lingerUntilKilled()
        }
        let pool = try Hostile.makeFakePool(launcher)
        await Hostile.expectValidOrBroken(try pool.submit(Echo(5))) { $0 == 5 }
        await Hostile.finish(pool, launcher)
    }

    @Test("results whose call count is 2^63 (one past Int.max)")
    func countPastIntMax() async throws {
        let launcher = FakeLauncher { w in
            try w.handshake()
            let run = try w.readRun()
            try w.sendResults(itemID: run.itemID, count: 1 << 63, payload: FakeWire.success(FakeWire.encodedInt(5)))
            try w.lingerUntilKilled()
        }
        let pool = try Hostile.makeFakePool(launcher)
        await Hostile.expectValidOrBroken(try pool.submit(Echo(5))) { $0 == 5 }
        await Hostile.finish(pool, launcher)
    }

    @Test("results claiming more calls than the frame could hold (single task)")
    func countLargerThanFrame() async throws {
        let launcher = FakeLauncher { w in
            try w.handshake()
            let run = try w.readRun()
            try w.sendResults(itemID: run.itemID, count: 1 << 40, payload: FakeWire.success(FakeWire.encodedInt(5)))
            try w.lingerUntilKilled()
        }
        let pool = try Hostile.makeFakePool(launcher)
        await Hostile.expectBrokenNaming(try pool.submit(Echo(5)))
        await Hostile.finish(pool, launcher)
    }

    @Test("results claiming more calls than the frame could hold (map chunk)")
    func chunkCountLargerThanFrame() async throws {
        let launcher = FakeLauncher { w in
            try w.handshake()
            let run = try w.readRun()
            try w.sendResults(itemID: run.itemID, count: 1 << 40,
                              payload: FakeWire.success(FakeWire.encodedInt(0)))
            try w.lingerUntilKilled()
        }
        let pool = try Hostile.makeFakePool(launcher)
        let results = try pool.map((0..<4).map(Echo.init), timeout: .seconds(30), chunkSize: 4)
        do {
            for try await _ in results {}
            Issue.record("the map completed")
        } catch let error as BrokenProcessPool {
            #expect(error.reason.contains("fake worker 1"), "\(error.reason)")
        } catch {
            Issue.record("expected BrokenProcessPool, got \(error)")
        }
        await Hostile.finish(pool, launcher)
    }

    @Test("a chunk's results with fewer outcomes than calls (count says so)")
    func chunkFewerOutcomesHonestCount() async throws {
        let launcher = FakeLauncher { w in
            try w.handshake()
            let run = try w.readRun()
            let outcomes = FakeWire.success(FakeWire.encodedInt(0)) + FakeWire.success(FakeWire.encodedInt(1))
            try w.sendResults(itemID: run.itemID, count: 2, payload: outcomes)
            try w.lingerUntilKilled()
        }
        let pool = try Hostile.makeFakePool(launcher)
        let results = try pool.map((0..<4).map(Echo.init), timeout: .seconds(30), chunkSize: 4)
        var got: [Int] = []
        do {
            for try await value in results { got.append(value) }
            Issue.record("the map completed with \(got)")
        } catch let error as BrokenProcessPool {
            #expect(error.reason.contains("fake worker 1"), "\(error.reason)")
        } catch {
            Issue.record("expected BrokenProcessPool, got \(error)")
        }
        await Hostile.finish(pool, launcher)
    }

    @Test("a chunk's results claiming every call but carrying fewer outcomes")
    func chunkFewerOutcomesThanCount() async throws {
        let launcher = FakeLauncher { w in
            try w.handshake()
            let run = try w.readRun()
            let outcomes = FakeWire.success(FakeWire.encodedInt(0)) + FakeWire.success(FakeWire.encodedInt(1))
            try w.sendResults(itemID: run.itemID, count: UInt64(run.count), payload: outcomes)
            try w.lingerUntilKilled()
        }
        let pool = try Hostile.makeFakePool(launcher)
        let results = try pool.map((0..<4).map(Echo.init), timeout: .seconds(30), chunkSize: 4)
        var got: [Int] = []
        do {
            for try await value in results { got.append(value) }
            Issue.record("the map completed with \(got)")
        } catch let error as BrokenProcessPool {
            #expect(error.reason.contains("fake worker 1"), "\(error.reason)")
        } catch {
            Issue.record("expected BrokenProcessPool, got \(error)")
        }
        await Hostile.finish(pool, launcher)
    }

    @Test("results for an item the worker does not hold")
    func resultsForUnknownItem() async throws {
        let launcher = FakeLauncher { w in
            try w.handshake()
            let run = try w.readRun()
            try w.sendResults(itemID: run.itemID &+ 1000, count: 1, payload: FakeWire.success(FakeWire.encodedInt(5)))
            try w.lingerUntilKilled()
        }
        let pool = try Hostile.makeFakePool(launcher)
        await Hostile.expectBrokenNaming(try pool.submit(Echo(5)))
        await Hostile.finish(pool, launcher)
    }

    @Test("results while the worker holds nothing")
    func unsolicitedResults() async throws {
        let launcher = FakeLauncher { w in
            try w.handshake()
            let run = try w.readRun()
            try w.answerEcho(run)
            try w.sendResults(itemID: run.itemID, count: 1, payload: FakeWire.success(FakeWire.encodedInt(6)))
            try w.lingerUntilKilled()
        }
        let pool = try Hostile.makeFakePool(launcher)
        await Hostile.expectValidOrBroken(try pool.submit(Echo(5))) { $0 == 5 }
        // The unsolicited frame must break the pool (the worker's stream is wrong).
        #expect(await Hostile.eventuallyAsync(10) { pool.brokenReason != nil })
        if let reason = pool.brokenReason { #expect(reason.contains("fake worker 1"), "\(reason)") }
        await Hostile.finish(pool, launcher)
    }

    // MARK: Run times

    /// Answers every Echo, with run times from `times(k)` for the k-th run.
    private func runTimesCase(_ times: @escaping @Sendable (Int) -> UInt64) async throws {
        let launcher = FakeLauncher { w in
            try w.handshake()
            var k = 0
            while true {
                let run = try w.readRun()
                try w.answerEcho(run, runNanos: times(k))
                k += 1
            }
        }
        let pool = try Hostile.makeFakePool(launcher)
        let futures = try (0..<1000).map { try pool.submit(Echo($0)) }
        let (_, notDone) = await wait(for: futures, timeout: .seconds(60))
        #expect(notDone.isEmpty, "\(notDone.count) futures did not settle (the parent hangs)")
        var broken = false
        for (i, future) in futures.enumerated() where future.isDone {
            switch await Hostile.settleOutcome(future, within: 0) {
            case .value(let v): #expect(v == i)
            case .broken(let reason):
                broken = true
                #expect(reason.contains("fake worker 1"), "\(reason)")
            default: Issue.record("Echo(\(i)) ended otherwise")
            }
        }
        // Then a normal result must still be delivered (or the pool broke with a reason).
        if !broken, pool.brokenReason == nil {
            await Hostile.expectValidOrBroken(try pool.submit(Echo(-1))) { $0 == -1 }
        }
        await Hostile.finish(pool, launcher)
    }

    @Test("1 ns, then 0 ns run times 1,000 times (the window average must not reach ~0)")
    func zeroRunTimes() async throws {
        try await runTimesCase { $0 == 0 ? 1 : ($0 < 1000 ? 0 : 1000) }
    }

    @Test("UInt64.max run times 1,000 times")
    func maxRunTimes() async throws {
        try await runTimesCase { $0 < 1000 ? .max : 1000 }
    }

    @Test("UInt64.max once, then 0 ns run times 999 times")
    func maxThenZeroRunTimes() async throws {
        try await runTimesCase { $0 == 0 ? .max : ($0 < 1000 ? 0 : 1000) }
    }

    // MARK: Hello

    /// A worker whose hello is `hello` (then ready, then it serves Echo).
    private func helloCase(_ hello: @escaping @Sendable (FakeWorker) -> [UInt8]) async throws {
        let launcher = FakeLauncher { w in
            try w.readPreambleAndConfigure()
            var bytes = hello(w)
            if w.protocolVersion >= 3 { bytes += FakeWire.frame(kind: FakeWire.ready, body: [1]) }
            try w.send(bytes)
            try w.serveEcho()
        }
        let pool = try Hostile.makeFakePool(launcher)
        await Hostile.expectValidOrBroken(try pool.submit(Echo(5))) { $0 == 5 }
        await Hostile.finish(pool, launcher)
    }

    @Test("hello with a wrong protocol version")
    func helloWrongVersion() async throws {
        let launcher = FakeLauncher { w in
            try w.readPreambleAndConfigure()
            var bytes = w.hello(version: w.protocolVersion &+ 1)
            if w.protocolVersion >= 3 { bytes += FakeWire.frame(kind: FakeWire.ready, body: [1]) }
            try w.send(bytes)
            try w.serveEcho()
        }
        let pool = try Hostile.makeFakePool(launcher)
        let reason = await Hostile.expectBrokenNaming(try pool.submit(Echo(5)))
        #expect(reason?.contains("protocol") == true, "\(reason ?? "")")
        await Hostile.finish(pool, launcher)
    }

    @Test("hello with pid 0")
    func helloPidZero() async throws {
        try await helloCase { $0.hello(pid: 0) }
    }

    @Test("hello with pid -1 (2^64-1 as a varint)")
    func helloPidMinusOne() async throws {
        try await helloCase { $0.hello(pid: .max) }
    }

    @Test("hello with a pid varint longer than 10 bytes")
    func helloPidOverlongVarint() async throws {
        try await helloCase { w in
            var body = FakeWire.u16(w.protocolVersion) + [UInt8](repeating: 0xFF, count: 12) + [0x01]
            if w.protocolVersion < 3 { body.append(1) }
            return FakeWire.frame(kind: FakeWire.hello, body: body)
        }
    }

    @Test("a worker that never says hello (not even the preamble) breaks the pool after helloTimeout")
    func neverHello() async throws {
        let launcher = FakeLauncher { try $0.lingerUntilKilled() }
        let pool = try Hostile.makeFakePool(launcher)
        let start = ContinuousClock.now
        await Hostile.expectBrokenNaming(try pool.submit(Echo(5)), within: 20)
        #expect(ContinuousClock.now - start < .seconds(10), "the 1 s hello timeout took \(ContinuousClock.now - start)")
        await Hostile.finish(pool, launcher)
    }

    /// Found under TSan: a fork child caught in a runtime lock another
    /// thread held at the fork never reads its exit frame, and shutdown
    /// waited for its hello limit (30 s) though the pool had no work left.
    @Test("shutdown stops a worker that has not said hello and holds no work, instead of waiting for its hello limit")
    func shutdownStopsWorkerBeforeHello() async throws {
        let started = Mutex(0)
        let launcher = FakeLauncher(helloTimeout: .seconds(60)) { w in
            started.guarded { $0 += 1 }
            if w.index == 1 {
                try w.handshake()
                // Holds its first item until the pool has started a second
                // worker for the rest.
                let first = try w.readRun()
                while started.guarded({ $0 }) < 2 { try w.checkAlive(); usleep(5_000) }
                try w.answerEcho(first)
                try w.serveEcho()
            } else {
                try w.lingerUntilKilled()
            }
        }
        let pool = try Hostile.makeFakePool(launcher, maxWorkers: 2)
        let futures = try (0..<4).map { try pool.submit(Echo($0)) }
        #expect(await Hostile.eventuallyAsync(10) { launcher.connections.count == 2 }, "a second worker was started")
        for (i, future) in futures.enumerated() { #expect(try await settle(future, within: 20) == i) }
        #expect(await Hostile.shutdownWithin(pool, seconds: 20), "shutdown waited for the silent worker's hello limit")
        #expect(pool.brokenReason == nil, "stopping a worker that never started is no failure")
        await Hostile.finish(pool, launcher)
    }

    /// Fork children under TSan (in CI, one or two per run): a child caught
    /// in a runtime lock or one-time initialization another thread held at
    /// the fork never says hello, and broke its pool after 30 s.
    @Test("a start method that restarts silent starts (fork): a worker silent at start is replaced, the pool works on")
    func silentStartRestarted() async throws {
        let launcher = FakeLauncher(restartsSilentStarts: true) { w in
            if w.index == 1 { try w.lingerUntilKilled() }
            try w.handshake()
            try w.serveEcho()
        }
        let pool = try Hostile.makeFakePool(launcher)
        #expect(try await settle(pool.submit(Echo(5)), within: 20) == 5)
        #expect(pool.brokenReason == nil)
        #expect(launcher.connections.count == 2, "the silent worker was replaced once")
        await Hostile.finish(pool, launcher)
    }

    @Test("a start whose every worker stays silent breaks the pool after three restarts, saying why")
    func silentStartsGiveUp() async throws {
        let launcher = FakeLauncher(restartsSilentStarts: true) { try $0.lingerUntilKilled() }
        let pool = try Hostile.makeFakePool(launcher)
        let reason = await expectBroken { _ = try await settle(pool.submit(Echo(5)), within: 30) }
        #expect(reason?.contains("nor did 3 started again") == true, "\(reason ?? "")")
        #expect(launcher.connections.count == 4)
        await Hostile.finish(pool, launcher)
    }

    @Test("a worker that sends the preamble but never says hello")
    func preambleNoHello() async throws {
        let launcher = FakeLauncher { w in
            try w.readPreambleAndConfigure()
            try w.lingerUntilKilled()
        }
        let pool = try Hostile.makeFakePool(launcher)
        await Hostile.expectBrokenNaming(try pool.submit(Echo(5)), within: 20)
        await Hostile.finish(pool, launcher)
    }

    @Test("a worker whose stream starts with garbage instead of the preamble")
    func garbagePreamble() async throws {
        let launcher = FakeLauncher { w in
            try w.readConfigure()
            try w.send(Array("HTTP/1.1 200 OK\r\nServer: not a worker\r\n\r\n".utf8))
            try w.lingerUntilKilled()
        }
        let pool = try Hostile.makeFakePool(launcher)
        await Hostile.expectBrokenNaming(try pool.submit(Echo(5)))
        await Hostile.finish(pool, launcher)
    }

    // MARK: Framing

    @Test("a frame length over 1 GiB")
    func frameOverLimit() async throws {
        let launcher = FakeLauncher { w in
            try w.handshake()
            _ = try w.readRun()
            try w.send(FakeWire.header(length: UInt32(FakeWire.maxFrameBytes + 1), kind: FakeWire.results) + [1, 2, 3])
            try w.lingerUntilKilled()
        }
        let pool = try Hostile.makeFakePool(launcher)
        let sampler = FakeMemoryProbe()
        await Hostile.expectBrokenNaming(try pool.submit(Echo(5)))
        let growth = sampler.stop()
        #expect(growth < Hostile.memoryAllowance, "resident memory grew by \(growth >> 20) MiB")
        await Hostile.finish(pool, launcher)
    }

    @Test("a frame length of 0")
    func frameLengthZero() async throws {
        let launcher = FakeLauncher { w in
            try w.handshake()
            _ = try w.readRun()
            try w.send(FakeWire.u32(0) + [FakeWire.results, 0, 0, 0])
            try w.lingerUntilKilled()
        }
        let pool = try Hostile.makeFakePool(launcher)
        await Hostile.expectBrokenNaming(try pool.submit(Echo(5)))
        await Hostile.finish(pool, launcher)
    }

    @Test("an unknown frame kind")
    func unknownKind() async throws {
        let launcher = FakeLauncher { w in
            try w.handshake()
            _ = try w.readRun()
            try w.sendFrame(kind: 99, body: [1, 2, 3])
            try w.lingerUntilKilled()
        }
        let pool = try Hostile.makeFakePool(launcher)
        await Hostile.expectBrokenNaming(try pool.submit(Echo(5)))
        await Hostile.finish(pool, launcher)
    }

    @Test("a truncated frame, then EOF and exit 0")
    func truncatedThenEOF() async throws {
        let launcher = FakeLauncher { w in
            try w.handshake()
            let run = try w.readRun()
            let frame = w.results(itemID: run.itemID, count: 1, payload: FakeWire.success(FakeWire.encodedInt(5)))
            try w.send(Array(frame.prefix(frame.count - 4)))
            // Returning closes the stream and exits 0.
        }
        let pool = try Hostile.makeFakePool(launcher)
        await Hostile.expectBrokenNaming(try pool.submit(Echo(5)))
        await Hostile.finish(pool, launcher)
    }

    @Test("a worker that closes its stream mid-frame and lingers")
    func closesMidFrameAndLingers() async throws {
        let launcher = FakeLauncher { w in
            try w.handshake()
            let run = try w.readRun()
            let frame = w.results(itemID: run.itemID, count: 1, payload: FakeWire.success(FakeWire.encodedInt(5)))
            try w.send(Array(frame.prefix(7)))
            w.closeStream()
            try w.lingerUntilKilled()
        }
        let pool = try Hostile.makeFakePool(launcher)
        await Hostile.expectBrokenNaming(try pool.submit(Echo(5)))
        await Hostile.finish(pool, launcher)
    }

    @Test("a 1 GiB frame announced, then 1 MiB and silence: memory follows the bytes")
    func hugeFrameTrickle() async throws {
        let launcher = FakeLauncher { w in
            try w.handshake()
            let run = try w.readRun()
            try w.send(FakeWire.header(length: UInt32(FakeWire.maxFrameBytes), kind: FakeWire.results)
                       + FakeWire.varint(run.itemID))
            try w.flood(byte: 0, total: 1 << 20)
            try w.lingerUntilKilled()
        }
        let pool = try Hostile.makeFakePool(launcher)
        let sampler = FakeMemoryProbe()
        let future = try pool.submit(Echo(5))
        try await Task.sleep(for: .seconds(2))
        let growth = sampler.stop()
        #expect(growth < Hostile.memoryAllowance, "resident memory grew by \(growth >> 20) MiB for 1 MiB received")
        pool.killWorkers()
        await Hostile.expectBrokenNaming(future)
        await Hostile.finish(pool, launcher)
    }

    // MARK: Attachments

    @Test("4096 attachments of 1 GiB announced, then silence: nothing is committed ahead of the bytes")
    func hugeAttachmentsThenSilence() async throws {
        let launcher = FakeLauncher { w in
            try w.handshake()
            _ = try w.readRun()
            let lengths = [UInt64](repeating: UInt64(FakeWire.maxFrameBytes), count: 4096)
            try w.sendFrame(kind: FakeWire.attachments, body: FakeWire.attachmentsBody(count: 4096, lengths: lengths))
            try w.lingerUntilKilled()
        }
        let pool = try Hostile.makeFakePool(launcher)
        let sampler = FakeMemoryProbe()
        let future = try pool.submit(Echo(5))
        try await Task.sleep(for: .seconds(2))
        let growth = sampler.stop()
        #expect(growth < Hostile.memoryAllowance, "resident memory grew by \(growth >> 20) MiB with no attachment byte sent")
        // The pool waits (or broke already); either way it ends when told to.
        pool.killWorkers()
        await Hostile.expectBrokenNaming(future)
        await Hostile.finish(pool, launcher)
    }

    @Test("an attachments frame announcing 2^64-1 attachments")
    func attachmentCountUInt64Max() async throws {
        let launcher = FakeLauncher { w in
            try w.handshake()
            _ = try w.readRun()
            try w.sendFrame(kind: FakeWire.attachments, body: FakeWire.attachmentsBody(count: .max, lengths: [1, 1]))
            try w.lingerUntilKilled()
        }
        let pool = try Hostile.makeFakePool(launcher)
        await Hostile.expectBrokenNaming(try pool.submit(Echo(5)))
        await Hostile.finish(pool, launcher)
    }

    @Test("an announced attachment, then a flood of bytes past its length: the parent stops reading")
    func attachmentThenFlood() async throws {
        let launcher = FakeLauncher(killGrace: .seconds(4)) { w in
            try w.handshake()
            _ = try w.readRun()
            try w.sendFrame(kind: FakeWire.attachments, body: FakeWire.attachmentsBody(count: 1, lengths: [65536]))
            try w.flood(byte: 0xAB, total: 65536)
            try w.flood(byte: 0xFF, total: 1 << 30)
            try w.lingerUntilKilled()
        }
        let pool = try Hostile.makeFakePool(launcher)
        let sampler = FakeMemoryProbe()
        await Hostile.expectBrokenNaming(try pool.submit(Echo(5)))
        let sentAtBreak = launcher.connections.first?.bytesSent ?? 0
        // The fake keeps flooding for 4 s after the kill: the parent must not buffer it.
        try await Task.sleep(for: .seconds(4))
        let growth = sampler.stop()
        let sentAfter = (launcher.connections.first?.bytesSent ?? 0) - sentAtBreak
        #expect(growth < Hostile.memoryAllowance,
                "resident memory grew by \(growth >> 20) MiB; the fake sent \(sentAfter >> 20) MiB after the break")
        // The parent stops reading a stream it has given up on: after the
        // break the fake can only fill the socket buffers (a few MiB).
        #expect(sentAfter < Hostile.memoryAllowance,
                "the parent read \(sentAfter >> 20) MiB from the worker after the pool broke")
        await Hostile.finish(pool, launcher)
    }

    // MARK: Floods

    @Test("a flood of garbage after a malformed frame: the parent stops reading that worker")
    func floodAfterMalformedFrame() async throws {
        let launcher = FakeLauncher(killGrace: .seconds(4)) { w in
            try w.handshake()
            _ = try w.readRun()
            try w.sendFrame(kind: 99, body: [0])
            try w.flood(byte: 0, total: 1 << 30)
            try w.lingerUntilKilled()
        }
        let pool = try Hostile.makeFakePool(launcher)
        let sampler = FakeMemoryProbe()
        await Hostile.expectBrokenNaming(try pool.submit(Echo(5)))
        let sentAtBreak = launcher.connections.first?.bytesSent ?? 0
        // The fake keeps flooding for 4 s after the kill: the parent must not buffer it.
        try await Task.sleep(for: .seconds(4))
        let growth = sampler.stop()
        let sentAfter = (launcher.connections.first?.bytesSent ?? 0) - sentAtBreak
        #expect(growth < Hostile.memoryAllowance,
                "resident memory grew by \(growth >> 20) MiB; the fake sent \(sentAfter >> 20) MiB after the break")
        // The parent stops reading a stream it has given up on: after the
        // break the fake can only fill the socket buffers (a few MiB).
        #expect(sentAfter < Hostile.memoryAllowance,
                "the parent read \(sentAfter >> 20) MiB from the worker after the pool broke")
        await Hostile.finish(pool, launcher)
    }

    @Test("a worker that stops reading its stream: submit never blocks, the pool still ends")
    func stopsReading() async throws {
        let launcher = FakeLauncher { w in
            try w.handshake()
            try w.answerEcho(try w.readRun())
            try w.stallUntilKilled()
        }
        let pool = try Hostile.makeFakePool(launcher)
        // One answer first: the worker is ready, so the next item is handed to it.
        guard case .value(0) = await Hostile.settleOutcome(try pool.submit(Echo(0))) else {
            Issue.record("the first Echo did not complete")
            pool.killWorkers()
            await Hostile.finish(pool, launcher)
            return
        }
        let start = ContinuousClock.now
        // 64 MiB to a worker that reads none of it (far more than the socket
        // buffers hold), then more behind it.
        var futures = [try pool.submit(EchoBytes([UInt8](repeating: 1, count: 64 << 20)))]
        futures += try (0..<8).map { try pool.submit(EchoBytes([UInt8](repeating: UInt8($0), count: 1 << 20))) }
        #expect(ContinuousClock.now - start < .seconds(10), "the submits took \(ContinuousClock.now - start)")
        #expect(await Hostile.eventuallyAsync(10) { futures[0].isRunning })
        pool.killWorkers()
        // The one handed to the worker fails with the pool; killWorkers()
        // cancels the ones still pending.
        await Hostile.expectBrokenNaming(futures[0])
        for future in futures.dropFirst() {
            switch await Hostile.settleOutcome(future) {
            case .broken(let reason): #expect(reason.contains("fake worker 1"), "\(reason)")
            case .failed(let error): #expect(error is CancellationError, "\(error)")
            case .value: Issue.record("a future completed")
            case .timedOut: Issue.record("a future did not settle (the parent hangs)")
            }
        }
        await Hostile.finish(pool, launcher)
    }

    // MARK: Payloads

    @Test("unkeyed containers nested 100,000 deep in a success outcome")
    func deepUnkeyedNesting() async throws {
        let launcher = FakeLauncher { w in
            try w.handshake()
            let run = try w.readRun()
            try w.sendResults(itemID: run.itemID, count: 1, payload: FakeWire.success(Hostile.nestedUnkeyed(depth: 100_000)))
            try w.serveEcho()
        }
        let pool = try Hostile.makeFakePool(launcher)
        let reason = await Hostile.expectValidOrBroken(try pool.submit(HostileMakeDeepList()), allowTaskError: true) {
            $0.depth == 99_999
        }
        if reason == nil {
            // Only that future failed: the pool stays usable (item 38).
            await Hostile.expectValidOrBroken(try pool.submit(Echo(3))) { $0 == 3 }
        }
        await Hostile.finish(pool, launcher)
    }

    @Test("[String: V] nested 100,000 deep in a success outcome")
    func deepDictionaryNesting() async throws {
        let launcher = FakeLauncher { w in
            try w.handshake()
            let run = try w.readRun()
            try w.sendResults(itemID: run.itemID, count: 1,
                              payload: FakeWire.success(Hostile.nestedDictionaries(depth: 100_000)))
            try w.serveEcho()
        }
        let pool = try Hostile.makeFakePool(launcher)
        let reason = await Hostile.expectValidOrBroken(try pool.submit(HostileMakeDictNest()), allowTaskError: true) { value in
            value.count == 1 && value["k"].map { $0.depth == 100_000 - 1 } == true
        }
        if reason == nil {
            await Hostile.expectValidOrBroken(try pool.submit(Echo(3))) { $0 == 3 }
        }
        await Hostile.finish(pool, launcher)
    }

    @Test("a Bool block (layout 1, stride 1) holding the byte 2")
    func boolBlockBadBitPattern() async throws {
        let launcher = FakeLauncher { w in
            try w.handshake()
            let run = try w.readRun()
            try w.sendResults(itemID: run.itemID, count: 1, layout: FakeWire.blockLayout,
                              payload: FakeWire.block(stride: 1, [2]))
            try w.serveEcho()
        }
        let pool = try Hostile.makeFakePool(launcher)
        let reason = await Hostile.expectValidOrBroken(try pool.submit(HostileFlag(n: 1)), allowTaskError: true) {
            Hostile.bitPattern($0) <= 1
        }
        if reason == nil {
            await Hostile.expectValidOrBroken(try pool.submit(Echo(3))) { $0 == 3 }
        }
        await Hostile.finish(pool, launcher)
    }

    @Test("a Bool block in a map chunk holding the byte 2")
    func boolBlockInChunk() async throws {
        let launcher = FakeLauncher { w in
            try w.handshake()
            let run = try w.readRun()
            try w.sendResults(itemID: run.itemID, count: UInt64(run.count), layout: FakeWire.blockLayout,
                              payload: FakeWire.block(stride: 1, [1, 0, 2, 1]))
            try w.serveEcho()
        }
        let pool = try Hostile.makeFakePool(launcher)
        let results = try pool.map((0..<4).map(HostileFlag.init), timeout: .seconds(30), chunkSize: 4)
        var delivered = 0
        do {
            for try await flag in results {
                delivered += 1
                #expect(Hostile.bitPattern(flag) <= 1, "a Bool with bit pattern \(Hostile.bitPattern(flag)) was delivered")
            }
            // A Bool holding 2 reads as nil through `Bool?`: the sequence
            // must not just end early as if it had no more results.
            #expect(delivered == 4, "the map ended after \(delivered) of 4 results, with no error")
        } catch let error as BrokenProcessPool {
            #expect(error.reason.contains("fake worker 1"), "\(error.reason)")
        } catch ProcessPoolError.timeout {
            Issue.record("the map did not finish within 30 s (the parent hangs)")
        } catch {
            // That chunk failing alone is fine (item 38).
        }
        await Hostile.finish(pool, launcher)
    }

    @Test("an enum block holding a discriminator the enum does not have")
    func enumBlockBadBitPattern() async throws {
        let launcher = FakeLauncher { w in
            try w.handshake()
            let run = try w.readRun()
            try w.sendResults(itemID: run.itemID, count: 1, layout: FakeWire.blockLayout,
                              payload: FakeWire.block(stride: 1, [9]))
            try w.serveEcho()
        }
        let pool = try Hostile.makeFakePool(launcher)
        let reason = await Hostile.expectValidOrBroken(try pool.submit(HostileDrawSuit(n: 1)), allowTaskError: true) {
            Hostile.bitPattern($0) <= 3
        }
        if reason == nil {
            await Hostile.expectValidOrBroken(try pool.submit(Echo(3))) { $0 == 3 }
        }
        await Hostile.finish(pool, launcher)
    }

    /// A worker that answers its first run with `payload` as a success
    /// outcome, then serves Echo; the future must deliver valid data, fail
    /// alone (item 38: the pool then still works), or the pool breaks
    /// naming the worker.
    private func payloadCase<T: ProcessTask>(_ task: T, payload: [UInt8], valid: (T.Output) -> Bool) async throws {
        let launcher = FakeLauncher { w in
            try w.handshake()
            let run = try w.readRun()
            try w.sendResults(itemID: run.itemID, count: 1, payload: FakeWire.success(payload))
            try w.serveEcho()
        }
        let pool = try Hostile.makeFakePool(launcher)
        let reason = await Hostile.expectValidOrBroken(try pool.submit(task), allowTaskError: true, valid: valid)
        if reason == nil {
            await Hostile.expectValidOrBroken(try pool.submit(Echo(3))) { $0 == 3 }
        }
        await Hostile.finish(pool, launcher)
    }

    @Test("a [UInt8] result naming attachment 2^64-1 of a frame that has none")
    func attachmentIndexOutOfRange() async throws {
        try await payloadCase(EchoBytes([1]), payload: [0x1B] + FakeWire.varint(.max)) { _ in false }
    }

    @Test("a packed [Int] result claiming 2^61 elements")
    func packedCountHuge() async throws {
        try await payloadCase(HostileMakeInts(), payload: [0x15] + FakeWire.varint(1 << 61) + [UInt8](repeating: 0, count: 16)) {
            $0.count <= 2
        }
    }

    @Test("a container whose length runs past the container holding it")
    func containerOverrunsParent() async throws {
        let payload = [FakeWire.unkeyedTag] + FakeWire.u32(5) + [FakeWire.unkeyedTag] + FakeWire.u32(100)
            + [UInt8](repeating: FakeWire.unkeyedTag, count: 100)
        try await payloadCase(HostileMakeDeepList(), payload: payload) { $0.depth <= 1 }
    }

    @Test("a String result holding invalid UTF-8")
    func invalidUTF8String() async throws {
        try await payloadCase(HostileMakeText(), payload: [0x11, 4, 0xFF, 0xFE, 0xC0, 0x80]) {
            String(validating: Array($0.utf8), as: UTF8.self) != nil
        }
    }

    // MARK: Start-up order (protocol 3: hello, then ready)

    /// A worker that starts with `start` (after reading configure), then serves Echo.
    private func startCase(_ start: @escaping @Sendable (FakeWorker) -> [UInt8]) async throws {
        let launcher = FakeLauncher { w in
            try w.readPreambleAndConfigure()
            try w.send(start(w))
            try w.serveEcho()
        }
        let pool = try Hostile.makeFakePool(launcher)
        await Hostile.expectValidOrBroken(try pool.submit(Echo(5))) { $0 == 5 }
        await Hostile.finish(pool, launcher)
    }

    @Test("hello twice")
    func helloTwice() async throws {
        try await startCase { $0.hello() + $0.helloAndReady() }
    }

    @Test("ready before hello")
    func readyBeforeHello() async throws {
        try await startCase { FakeWire.frame(kind: FakeWire.ready, body: [1]) + $0.hello() }
    }

    @Test("ready twice")
    func readyTwice() async throws {
        try await startCase { $0.helloAndReady() + FakeWire.frame(kind: FakeWire.ready, body: [1]) }
    }

    @Test("ready whose flag is neither 0 nor 1")
    func readyBadFlag() async throws {
        try await startCase { $0.hello() + FakeWire.frame(kind: FakeWire.ready, body: [7]) }
    }

    @Test("ready reporting a failed initializer with a garbage outcome")
    func readyGarbageFailure() async throws {
        try await startCase { $0.hello() + FakeWire.frame(kind: FakeWire.ready, body: [0, 9, 0xFF, 0xFF]) }
    }

    @Test("results right after hello, before any work was sent")
    func resultsBeforeWork() async throws {
        try await startCase { w in
            w.hello() + w.results(itemID: 1, count: 1, payload: FakeWire.success(FakeWire.encodedInt(5)))
        }
    }

    // MARK: Goodbye

    @Test("goodbye with an unknown reason, then exit 0")
    func goodbyeUnknownReason() async throws {
        let launcher = FakeLauncher { w in
            try w.handshake()
            if w.index == 1 {
                try w.answerEcho(try w.readRun())
                try w.sendFrame(kind: FakeWire.goodbye, body: FakeWire.varint(999))
                return
            }
            try w.serveEcho()
        }
        let pool = try Hostile.makeFakePool(launcher)
        await Hostile.expectValidOrBroken(try pool.submit(Echo(1))) { $0 == 1 }
        #expect(await Hostile.eventuallyAsync(10) { launcher.connections.first?.hasEnded == true })
        // The goodbye may be read before or after this point: the pool may
        // break between a look at brokenReason and a submit.
        do {
            await Hostile.expectValidOrBroken(try pool.submit(Echo(2))) { $0 == 2 }
        } catch let broken as BrokenProcessPool {
            #expect(broken.reason.contains("fake worker 1"), "\(broken.reason)")
        }
        await Hostile.finish(pool, launcher)
    }

    @Test("goodbye whose reason is an overlong varint")
    func goodbyeGarbageReason() async throws {
        let launcher = FakeLauncher { w in
            try w.handshake()
            if w.index == 1 {
                try w.answerEcho(try w.readRun())
                try w.sendFrame(kind: FakeWire.goodbye, body: [UInt8](repeating: 0xFF, count: 16))
                try w.lingerUntilKilled()
            }
            try w.serveEcho()
        }
        let pool = try Hostile.makeFakePool(launcher)
        await Hostile.expectValidOrBroken(try pool.submit(Echo(1))) { $0 == 1 }
        #expect(await Hostile.eventuallyAsync(10) { pool.brokenReason != nil })
        #expect(pool.brokenReason?.contains("fake worker 1") == true, "\(pool.brokenReason ?? "none")")
        await Hostile.finish(pool, launcher)
    }
}
