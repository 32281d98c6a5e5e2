import Foundation
import PoolTestSupport
import ProcessPool
import Testing

@Suite("wait and asCompleted (SEMANTICS G)", .boundedExitWait, .timeLimit(.minutes(3)))
struct WaitTests {
    @Test("G33: wait returns on first completed, first exception, all completed; timeouts split",
          arguments: localMethods)
    func waitModes(method: StartMethod) async throws {
        let gates = GateDirectory()
        defer { gates.cleanup() }
        let pool = try makePool(method)
        let blocked = try pool.submit(WaitForFile(path: gates.file("go")))
        let quick = try pool.submit(Echo(1))

        let first = await wait(for: [blocked, quick], returnWhen: .firstCompleted)
        #expect(first.done.contains { $0 === quick })
        #expect(first.notDone.contains { $0 === blocked })

        let timedOut = await wait(for: [blocked, quick, quick], timeout: .milliseconds(50))
        #expect(timedOut.done.count == 1 && timedOut.notDone.count == 1)

        let failing = try pool.submit(Fail(registered: false))
        let cancelled = try pool.submit(Echo(2))
        _ = cancelled.cancel()
        let exceptional = await wait(for: [blocked, failing], returnWhen: .firstException)
        #expect(exceptional.done.contains { $0 === failing })
        #expect(exceptional.notDone.contains { $0 === blocked })

        gates.open("go")
        let all = await wait(for: [blocked, quick], returnWhen: .allCompleted)
        #expect(all.notDone.isEmpty && all.done.count == 2)
        await pool.shutdown()
    }

    @Test("G34: asCompleted yields done futures first, then by completion, each once; times out",
          arguments: localMethods)
    func asCompletedOrder(method: StartMethod) async throws {
        let gates = GateDirectory()
        defer { gates.cleanup() }
        let pool = try makePool(method)
        let done = try pool.submit(Echo(1))
        _ = try await settle(done)
        let blocked = try pool.submit(WaitForFile(path: gates.file("go")))
        var seen: [TaskFuture<Int>] = []
        do {
            for try await f in asCompleted([done, done], timeout: .seconds(5)) { seen.append(f) }
        }
        #expect(seen.count == 1 && seen[0] === done)

        var yielded = 0
        do {
            for try await _ in asCompleted([done, blocked], timeout: .milliseconds(100)) { yielded += 1 }
            Issue.record("expected a timeout")
        } catch let error as ProcessPoolError {
            #expect(error == .timeout)
        }
        #expect(yielded == 1)
        gates.open("go")
        _ = try await settle(blocked)
        await pool.shutdown()
    }
}

