import Foundation
import PoolTestSupport
import ProcessPool
import Testing

@Suite("map (SEMANTICS F)", .boundedExitWait, .timeLimit(.minutes(3)))
struct MapTests {
    @Test("F29: results in input order at every chunk size", arguments: localMethods, [1, 7, 64])
    func orderedResults(method: StartMethod, chunkSize: Int) async throws {
        let pool = try makePool(method)
        var results: [Int] = []
        for try await value in try pool.map((0..<500).map { Square($0) }, chunkSize: chunkSize) {
            results.append(value)
        }
        #expect(results == (0..<500).map { $0 * $0 })
        // An empty input yields nothing.
        var count = 0
        for try await _ in try pool.map([Square](), chunkSize: chunkSize) { count += 1 }
        #expect(count == 0)
        await pool.shutdown()
    }

    @Test("F30: an error surfaces at its item; the sequence then ends", arguments: localMethods)
    func errorAtItem(method: StartMethod) async throws {
        let pool = try makePool(method)
        let tasks = (0..<20).map { Fail(registered: true, code: $0) }
        do {
            var index = 0
            for try await _ in try pool.map(tasks, chunkSize: 4) { index += 1 }
            Issue.record("expected the first item to throw")
        } catch let error as RegisteredFailure {
            #expect(error.code == 0)
        }
        // Items before a failing one are delivered, even inside one chunk.
        let mixed = (0..<6).map { Fail(registered: false, code: $0, succeed: true) } + [Fail(registered: true, code: 6)]
            + (7..<10).map { Fail(registered: false, code: $0, succeed: true) }
        var delivered: [Int] = []
        do {
            for try await v in try pool.map(mixed, chunkSize: 8) { delivered.append(v) }
            Issue.record("expected item 6 to throw")
        } catch let error as RegisteredFailure {
            #expect(error.code == 6)
        }
        #expect(delivered == Array(0..<6))
        await pool.shutdown()
    }

    @Test("F31: timeout counts from the map call and cancels the rest", arguments: localMethods)
    func mapTimeout(method: StartMethod) async throws {
        let gates = GateDirectory()
        defer { gates.cleanup() }
        let pool = try makePool(method, maxWorkers: 1)
        let tasks = [WaitForFile(path: gates.file("go"))] + (0..<5).map { _ in WaitForFile(path: gates.file("go")) }
        let results = try pool.map(tasks, timeout: .milliseconds(200))
        await #expect(throws: ProcessPoolError.timeout) {
            for try await _ in results {}
        }
        gates.open("go")
        #expect(try await settle(pool.submit(Echo(3))) == 3)
        await pool.shutdown()
    }

    @Test("F32: bufferSize bounds what is submitted ahead; an endless input works; break cancels",
          arguments: localMethods)
    func bufferSize(method: StartMethod) async throws {
        let pool = try makePool(method)
        let endless = (0...).lazy.map { Square($0) }
        var got: [Int] = []
        for try await v in try pool.map(endless, bufferSize: 4) {
            got.append(v)
            if got.count == 100 { break }
        }
        #expect(got == (0..<100).map { $0 * $0 })
        #expect(try await settle(pool.submit(Echo(2))) == 2)
        #expect(throws: ProcessPoolError.invalidOption("bufferSize must be nil or >= 1 (got 0)")) {
            _ = try pool.map([Echo(1)], bufferSize: 0)
        }
        await pool.shutdown()
    }
}

