import Foundation
import PoolTestSupport
import ProcessPool
import Testing

@Suite("submit and futures (SEMANTICS C)", .boundedExitWait, .timeLimit(.minutes(3)))
struct SubmitTests {
    @Test("submit returns results; async value and blocking result agree", arguments: localMethods)
    func submitAndResult(method: StartMethod) async throws {
        let pool = try makePool(method)
        let futures = try (0..<50).map { try pool.submit(Square($0)) }
        for (i, future) in futures.enumerated() {
            #expect(try await settle(future) == i * i)
            #expect(try future.result() == i * i)
            #expect(future.isDone && !future.isRunning && !future.isCancelled)
        }
        await pool.shutdown()
    }

    @Test("C10: submit after shutdown throws shutdown; after a break, BrokenProcessPool", arguments: localMethods)
    func submitAfterShutdownOrBreak(method: StartMethod) async throws {
        let pool = try makePool(method)
        pool.shutdown(wait: true)
        #expect(throws: ProcessPoolError.shutdown) { try pool.submit(Echo(1)) }
        #expect(ProcessPoolError.shutdown.description == "cannot schedule new futures after shutdown")

        let broken = try makePool(method)
        _ = await expectBroken { _ = try await settle(broken.submit(Die(.sigkill))) }
        #expect(throws: BrokenProcessPool.self) { try broken.submit(Echo(1)) }
        broken.shutdown(wait: true)
        // The broken check comes first.
        #expect(throws: BrokenProcessPool.self) { try broken.submit(Echo(1)) }
    }

    @Test("C11/C12: FIFO dispatch; a future runs once handed to a worker", arguments: localMethods)
    func fifoAndRunning(method: StartMethod) async throws {
        let gates = GateDirectory()
        defer { gates.cleanup() }
        let pool = try makePool(method, maxWorkers: 1)
        let first = try pool.submit(SignalThenWait(started: gates.file("started"), gate: gates.file("go")))
        let later = try (0..<10).map { try pool.submit(Echo($0)) }
        #expect(eventually { gates.exists("started") })
        #expect(first.isRunning)
        // Only a bounded window is handed over; the rest stays pending.
        #expect(later.filter { !$0.isRunning }.count >= 8)
        let order = LockedLog()
        for future in later {
            future.addDoneCallback { f in order.append((try? f.result()) ?? -1) }
        }
        gates.open("go")
        for future in later { _ = try await settle(future) }
        // Callbacks run on the I/O thread once each future is done; the last
        // may still be running when its awaiter wakes.
        #expect(eventually { order.values.count == 10 })
        #expect(order.values == Array(0..<10))
        await pool.shutdown()
    }

    @Test("C13: cancel is true only while pending, and callbacks run on cancel", arguments: localMethods)
    func cancelSemantics(method: StartMethod) async throws {
        let gates = GateDirectory()
        defer { gates.cleanup() }
        let pool = try makePool(method, maxWorkers: 1)
        let running = try pool.submit(SignalThenWait(started: gates.file("started"), gate: gates.file("go")))
        #expect(eventually { gates.exists("started") })
        let fillers = try (0..<2).map { _ in try pool.submit(Echo(0)) }
        let pending = try pool.submit(Echo(42))
        let called = ManagedAtomicFlag()
        pending.addDoneCallback { _ in called.set() }
        #expect(running.cancel() == false)
        #expect(pending.isRunning == false)
        #expect(pending.cancel() == true)
        #expect(pending.cancel() == true)
        #expect(pending.isCancelled && pending.isDone)
        #expect(called.isSet)
        gates.open("go")
        #expect(try await settle(running) > 0)
        for f in fillers { _ = try? await settle(f) }
        await #expect(throws: CancellationError.self) { try await settle(pending) }
        #expect(throws: CancellationError.self) { try pending.result() }
        let done = try pool.submit(Echo(5))
        _ = try await settle(done)
        #expect(done.cancel() == false)
        await pool.shutdown()
    }

    @Test("C14: result(timeout:) times out and the future keeps going; errors repeat", arguments: localMethods)
    func resultTimeout(method: StartMethod) async throws {
        let gates = GateDirectory()
        defer { gates.cleanup() }
        let pool = try makePool(method, maxWorkers: 1)
        let future = try pool.submit(WaitForFile(path: gates.file("go")))
        #expect(throws: ProcessPoolError.timeout) { try future.result(timeout: .milliseconds(50)) }
        #expect(throws: ProcessPoolError.timeout) { try future.error(timeout: .milliseconds(10)) }
        gates.open("go")
        #expect(try future.result(timeout: .seconds(60)) > 0)
        #expect(try future.error() == nil)
        let failing = try pool.submit(Fail(registered: true, code: 9))
        for _ in 0..<2 {
            #expect(throws: RegisteredFailure(code: 9, note: "as asked")) { try failing.result() }
        }
        #expect(try failing.error() as? RegisteredFailure == RegisteredFailure(code: 9, note: "as asked"))
        await pool.shutdown()
    }

    @Test("C15: done callbacks run once each, in order, at once when already done")
    func doneCallbacks() async throws {
        let pool = try makePool(.spawn(executable: TestEnvironment.workerExecutable))
        let future = try pool.submit(Echo(3))
        let log = LockedLog()
        for i in 0..<5 { future.addDoneCallback { _ in log.append(i) } }
        _ = try await settle(future)
        #expect(eventually { log.values.count == 5 })
        #expect(log.values == [0, 1, 2, 3, 4])
        future.addDoneCallback { _ in log.append(99) }
        #expect(log.values == [0, 1, 2, 3, 4, 99])
        // A callback that submits more work cannot break the pool.
        let inner = LockedBox<TaskFuture<Int>>()
        let outer = try pool.submit(Echo(1))
        outer.addDoneCallback { _ in inner.value = try? pool.submit(Echo(2)) }
        _ = try await settle(outer)
        #expect(eventually { inner.value != nil })
        #expect(try await settle(inner.value!) == 2)
        await pool.shutdown()
    }

    @Test("C16: a throwing task fails only its future; registered errors come back as themselves",
          arguments: localMethods)
    func throwingTasks(method: StartMethod) async throws {
        let pool = try makePool(method)
        let registered = try pool.submit(Fail(registered: true, code: 11))
        let unregistered = try pool.submit(Fail(registered: false, code: 12))
        await #expect(throws: RegisteredFailure(code: 11, note: "as asked")) { try await settle(registered) }
        do {
            _ = try await settle(unregistered)
            Issue.record("expected an error")
        } catch let error as RemoteTaskError {
            #expect(error.typeName.hasSuffix("UnregisteredFailure"))
            #expect(error.message == "unregistered failure: code 12")
            #expect(error.worker.contains("pid"))
        }
        #expect(try await settle(pool.submit(Echo(8))) == 8)
        await pool.shutdown()
    }

    @Test("C17: a result that cannot be encoded fails only its future", arguments: localMethods)
    func unencodableResult(method: StartMethod) async throws {
        let pool = try makePool(method)
        do {
            _ = try await settle(pool.submit(Unencodable()))
            Issue.record("expected an error")
        } catch let error as RemoteTaskError {
            #expect(error.message.contains("could not be encoded"))
        }
        #expect(try await settle(pool.submit(Echo(4))) == 4)
        await pool.shutdown()
    }

    @Test("B9: print in a task cannot corrupt the protocol", arguments: localMethods)
    func noisyStdout(method: StartMethod) async throws {
        let pool = try makePool(method)
        let values = try (0..<20).map { try pool.submit(Noisy($0)) }
        for (i, future) in values.enumerated() { #expect(try await settle(future) == i) }
        await pool.shutdown()
    }

    @Test("8 MiB payloads both ways", arguments: localMethods)
    func largePayloads(method: StartMethod) async throws {
        let pool = try makePool(method)
        let blob = sweepBytes(count: 8 << 20, seed: 0)
        let echoed = try await settle(pool.submit(EchoBytes(blob)))
        #expect(echoed == blob)
        let made = try await settle(pool.submit(MakeBytes(count: 8 << 20)))
        #expect(made.count == 8 << 20 && made[1000] == UInt8(1000 % 251))
        await pool.shutdown()
    }
}

/// A flag set once from any thread.
final class ManagedAtomicFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var flag = false
    func set() { lock.lock(); flag = true; lock.unlock() }
    var isSet: Bool { lock.lock(); defer { lock.unlock() }; return flag }
}

/// An append-only log shared with callbacks.
final class LockedLog: @unchecked Sendable {
    private let lock = NSLock()
    private var items: [Int] = []
    func append(_ value: Int) { lock.lock(); items.append(value); lock.unlock() }
    var values: [Int] { lock.lock(); defer { lock.unlock() }; return items }
}

/// A value shared with callbacks.
final class LockedBox<T: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: T?
    var value: T? {
        get { lock.lock(); defer { lock.unlock() }; return stored }
        set { lock.lock(); stored = newValue; lock.unlock() }
    }
}
