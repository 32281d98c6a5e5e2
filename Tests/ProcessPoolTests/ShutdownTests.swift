import Foundation
import PoolTestSupport
import ProcessPool
import Testing

@Suite("Shutdown (SEMANTICS E)", .boundedExitWait, .timeLimit(.minutes(3)))
struct ShutdownTests {
    @Test("E22: shutdown(wait: true) finishes all work and every worker exits; idempotent",
          arguments: localMethods)
    func shutdownWaits(method: StartMethod) async throws {
        let pool = try makePool(method)
        let futures = try (0..<20).map { try pool.submit(SleepTask(milliseconds: $0 % 3)) }
        pool.shutdown(wait: true)
        #expect(futures.allSatisfy { $0.isDone })
        let workerPIDs = Set(futures.compactMap { try? $0.result() })
        #expect(workerPIDs.allSatisfy { processGone($0) })
        pool.shutdown(wait: true)
        await pool.shutdown()
    }

    @Test("E23: shutdown(wait: false) returns at once and the work still completes", arguments: localMethods)
    func shutdownNoWait(method: StartMethod) async throws {
        let gates = GateDirectory()
        defer { gates.cleanup() }
        let pool = try makePool(method)
        let future = try pool.submit(WaitForFile(path: gates.file("go")))
        pool.shutdown(wait: false)
        #expect(!future.isDone)
        gates.open("go")
        #expect(try await settle(future) > 0)
    }

    @Test("E24/E25: cancelFutures cancels what is pending; cancelled futures count as done",
          arguments: localMethods)
    func cancelFutures(method: StartMethod) async throws {
        let gates = GateDirectory()
        defer { gates.cleanup() }
        let pool = try makePool(method, maxWorkers: 2)
        let blockers = try (0..<2).map { i in
            try pool.submit(SignalThenWait(started: gates.file("s\(i)"), gate: gates.file("go")))
        }
        #expect(eventually { gates.exists("s0") && gates.exists("s1") })
        let rest = try (0..<50).map { try pool.submit(Echo($0)) }
        let waiter = Task { await wait(for: rest, timeout: .seconds(60)) }
        pool.shutdown(wait: false, cancelFutures: true)
        gates.open("go")
        let cancelled = rest.filter { $0.isCancelled }.count
        #expect(cancelled > 20)
        let (done, notDone) = await waiter.value
        #expect(notDone.isEmpty && done.count == 50)
        var seen = 0
        for try await _ in asCompleted(rest, timeout: .seconds(60)) { seen += 1 }
        #expect(seen == 50)
        for b in blockers { #expect(try await settle(b) > 0) }
        await pool.shutdown()
    }

    @Test("E26: dropping the last reference shuts the pool down after its work", arguments: localMethods)
    func dropShutsDown(method: StartMethod) async throws {
        var pool: ProcessPoolExecutor? = try makePool(method)
        let future = try pool!.submit(SleepTask(milliseconds: 20))
        let pid = try pool!.submit(GetPID())
        let workerPID = try await settle(pid)
        pool = nil
        #expect(try await settle(future) > 0)
        #expect(eventually { processGone(workerPID) })
    }

    @Test("E28: terminateWorkers / killWorkers stop everything and never hang", arguments: localMethods)
    func terminateAndKill(method: StartMethod) async throws {
        for force in [false, true] {
            let gates = GateDirectory()
            defer { gates.cleanup() }
            let pool = try makePool(method, maxWorkers: 2)
            let running = try (0..<2).map { i in
                try pool.submit(SignalThenWait(started: gates.file("s\(i)"), gate: gates.file("never")))
            }
            #expect(eventually { gates.exists("s0") && gates.exists("s1") })
            let pending = try (0..<10).map { try pool.submit(Echo($0)) }
            if force { pool.killWorkers() } else { pool.terminateWorkers() }
            for f in running { _ = await expectBroken { _ = try await settle(f) } }
            for f in pending { #expect(f.isDone) }
            #expect(throws: (any Error).self) { try pool.submit(Echo(1)) }
            await pool.shutdown()
        }
        // Harmless on a pool without workers and on a broken one.
        let idle = try makePool(method)
        idle.terminateWorkers()
        idle.killWorkers()
        let broken = try makePool(method)
        _ = await expectBroken { _ = try await settle(broken.submit(Die(.sigkill))) }
        broken.killWorkers()
        await broken.shutdown()
    }

    @Test("withProcessPool shuts the pool down when the body returns or throws")
    func scoped() async throws {
        let method = StartMethod.spawn(executable: TestEnvironment.workerExecutable)
        var captured: ProcessPoolExecutor?
        let value = try await withProcessPool(maxWorkers: 1, context: method, tasks: testRegistry) { pool in
            captured = pool
            return try await settle(pool.submit(Square(6)))
        }
        #expect(value == 36)
        #expect(throws: ProcessPoolError.shutdown) { try captured!.submit(Echo(1)) }
        struct Oops: Error {}
        await #expect(throws: Oops.self) {
            try await withProcessPool(maxWorkers: 1, context: method, tasks: testRegistry) { pool in
                captured = pool
                throw Oops()
            }
        }
        #expect(throws: ProcessPoolError.shutdown) { try captured!.submit(Echo(1)) }
    }
}
