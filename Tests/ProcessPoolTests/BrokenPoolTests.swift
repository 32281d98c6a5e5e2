import Foundation
import PoolTestSupport
import ProcessPool
import ProcessPoolCore
import Testing

@Suite("Broken pool (SEMANTICS D)", .boundedExitWait, .timeLimit(.minutes(3)))
struct BrokenPoolTests {
    @Test("D18/D20: a worker killed mid-task breaks the pool, naming the worker and its end",
          arguments: localMethods, [Die.How.sigkill, .sigsegv, .exit3])
    func workerDeath(method: StartMethod, how: Die.How) async throws {
        let gates = GateDirectory()
        defer { gates.cleanup() }
        let pool = try makePool(method)
        let blocked = try pool.submit(WaitForFile(path: gates.file("never")))
        let reason = await expectBroken { _ = try await settle(pool.submit(Die(how))) }
        let expected: String
        switch how {
        case .sigkill: expected = "signal SIGKILL"
        // Under ThreadSanitizer its runtime catches the fault and exits the
        // worker with a code of its own: the reason then names that end.
        case .sigsegv: expected = segfaultEnd
        case .exit3: expected = "exit code 3"
        case .trap: expected = "signal"
        }
        #expect(reason?.contains(expected) == true, "\(reason ?? "")")
        #expect(reason?.contains("pid") == true)
        // Every unfinished future fails, the other workers stop, submit refuses.
        _ = await expectBroken { _ = try await settle(blocked) }
        #expect(throws: BrokenProcessPool.self) { try pool.submit(Echo(1)) }
        pool.shutdown(wait: true)
    }

    @Test("D18: a trap in a task breaks the pool", arguments: localMethods)
    func trap(method: StartMethod) async throws {
        let pool = try makePool(method)
        let reason = await expectBroken { _ = try await settle(pool.submit(Die(.trap))) }
        #expect(reason?.contains("signal") == true)
        await pool.shutdown()
    }

    @Test("D19: results that arrived before the death are kept; cancelled stays cancelled",
          arguments: localMethods)
    func resultsBeforeDeathSurvive(method: StartMethod) async throws {
        let gates = GateDirectory()
        defer { gates.cleanup() }
        let pool = try makePool(method, maxWorkers: 1)
        // A first task of 5 ms keeps the worker's window at one item, so
        // the Echo(1) below is still pending (cancellable) when cancelled.
        let done = try pool.submit(TaggedEcho(7, microseconds: 5_000))
        #expect(try await settle(done).value == 7)
        let blocker = try pool.submit(SignalThenWait(started: gates.file("started"), gate: gates.file("go")))
        #expect(eventually { gates.exists("started") })
        _ = try pool.submit(Echo(0))
        let cancelled = try pool.submit(Echo(1))
        #expect(cancelled.cancel())
        let dying = try pool.submit(Die(.sigkill))
        gates.open("go")
        _ = try await settle(blocker)
        _ = await expectBroken { _ = try await settle(dying) }
        #expect(try done.result().value == 7)
        #expect(cancelled.isCancelled)
    }

    @Test("D18: a failing initializer breaks the pool", arguments: localMethods)
    func failingInitializer(method: StartMethod) async throws {
        let pool = try makePool(method, initializer: SetInitialized(value: 1, fail: true))
        let reason = await expectBroken { _ = try await settle(pool.submit(Echo(1))) }
        #expect(reason?.contains("initializer") == true, "\(reason ?? "")")
        await pool.shutdown()
    }

    @Test("D21/C17: garbage on the stream breaks the pool cleanly", arguments: localMethods)
    func garbageOnStream(method: StartMethod) async throws {
        let pool = try makePool(method, maxWorkers: 1)
        let reason = await expectBroken { _ = try await settle(pool.submit(CorruptStream())) }
        #expect(reason?.contains("malformed frame") == true, "\(reason ?? "")")
        #expect(throws: BrokenProcessPool.self) { try pool.submit(Echo(1)) }
        await pool.shutdown()
    }

    @Test("D21: a crash while a large payload is in flight gives a clean break", arguments: localMethods)
    func crashWithLargePayload(method: StartMethod) async throws {
        let pool = try makePool(method, maxWorkers: 1)
        let big = try pool.submit(EchoBytes([UInt8](repeating: 7, count: 32 << 20)))
        let dying = try pool.submit(Die(.sigkill))
        var bigger: TaskFuture<[UInt8]>?
        do {
            bigger = try pool.submit(EchoBytes([UInt8](repeating: 9, count: 64 << 20)))
        } catch is BrokenProcessPool {
            // The worker may already be dead: then submit refuses.
        }
        #expect(try await settle(big).count == 32 << 20)
        _ = await expectBroken { _ = try await settle(dying) }
        if let bigger { _ = await expectBroken { _ = try await settle(bigger) } }
        await pool.shutdown()
    }
}
