import Foundation
import PoolTestSupport
import ProcessPool
import Testing

@Suite("Workers (SEMANTICS B)", .boundedExitWait, .timeLimit(.minutes(3)))
struct WorkerLifecycleTests {
    @Test("B5: fork starts every worker at the first submit")
    func forkStartsAllAtOnce() async throws {
        let pool = try makePool(.fork, maxWorkers: 2)
        #expect(pool.liveWorkerCount == 0)
        _ = try await settle(pool.submit(Echo(1)))
        #expect(pool.liveWorkerCount == 2)
        await pool.shutdown()
    }

    @Test("B6: an idle worker is reused rather than a new one started", arguments: replacingMethods)
    func idleReuse(method: StartMethod) async throws {
        let pool = try makePool(method, maxWorkers: 4)
        var pids = Set<Int32>()
        for _ in 0..<10 { pids.insert(try await settle(pool.submit(GetPID()))) }
        #expect(pids.count == 1)
        #expect(pool.liveWorkerCount == 1)
        await pool.shutdown()
    }

    @Test("B6: saturation starts exactly maxWorkers workers", arguments: localMethods)
    func saturation(method: StartMethod) async throws {
        let gates = GateDirectory()
        defer { gates.cleanup() }
        let pool = try makePool(method, maxWorkers: 3)
        let futures = try (0..<45).map { _ in try pool.submit(WaitForFile(path: gates.file("go"))) }
        #expect(pool.liveWorkerCount == 3)
        gates.open("go")
        for f in futures { _ = try await settle(f) }
        #expect(pool.liveWorkerCount <= 3)
        await pool.shutdown()
    }

    @Test("B7: the initializer runs once per worker before its first task", arguments: localMethods)
    func initializer(method: StartMethod) async throws {
        let pool = try makePool(method, initializer: SetInitialized(value: 41))
        for _ in 0..<10 { #expect(try await settle(pool.submit(ReadInitialized())) == 41) }
        await pool.shutdown()
    }

    @Test("B8: maxTasksPerChild retires workers after N tasks; the backlog never hangs",
          arguments: replacingMethods)
    func maxTasksPerChild(method: StartMethod) async throws {
        // gh-115634: 1 worker, N=2, 10 tasks deadlocked CPython.
        let pool = try makePool(method, maxWorkers: 1, maxTasksPerChild: 2)
        let futures = try (0..<10).map { _ in try pool.submit(GetPID()) }
        var counts: [Int32: Int] = [:]
        for f in futures { counts[try await settle(f), default: 0] += 1 }
        #expect(counts.count == 5)
        #expect(counts.values.allSatisfy { $0 == 2 })
        await pool.shutdown()

        // Failed tasks count too.
        let failing = try makePool(method, maxWorkers: 1, maxTasksPerChild: 2)
        let a = try failing.submit(GetPID())
        _ = try? await failing.submit(Fail(registered: false)).value
        let b = try failing.submit(GetPID())
        #expect(try await settle(a) != b.value)
        await failing.shutdown()
    }
}
