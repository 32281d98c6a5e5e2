import CProcessPoolShim
import Glibc
import ProcessPool

/// Seconds on the monotonic clock.
func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    guard !sorted.isEmpty else { return .nan }
    let mid = sorted.count / 2
    return sorted.count % 2 == 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
}

/// VmRSS of a process in KiB.
func residentKiB(_ pid: Int32) -> Double {
    guard let f = fopen("/proc/\(pid)/status", "r") else { return .nan }
    defer { fclose(f) }
    var line = [CChar](repeating: 0, count: 512)
    while fgets(&line, Int32(line.count), f) != nil {
        let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        if text.hasPrefix("VmRSS:") {
            return Double(text.split(separator: " ").dropFirst().first.map(String.init) ?? "") ?? .nan
        }
    }
    return .nan
}

/// The sizes of one run (full or quick), mirroring the Python script.
struct Sizes {
    var roundTrips = 2_000
    var submits = 20_000
    var mapC1 = 20_000
    var mapLarge = 200_000
    var payload = 64 << 20
    var pendingFutures = 1_000_000

    static let quick = Sizes(roundTrips: 200, submits: 2_000, mapC1: 2_000, mapLarge: 20_000,
                             payload: 8 << 20, pendingFutures: 100_000)
}

/// Our side of every figure, for one start method.
struct Bench {
    let method: StartMethod
    let sizes: Sizes
    let primesN: Int

    /// A pool whose two workers have both started and run a task.
    func warmPool() async throws -> ProcessPoolExecutor {
        let pool = try ProcessPoolExecutor(maxWorkers: 2, context: method, tasks: benchRegistry)
        var pids = Set<Int32>()
        while pids.count < 2 || pool.liveWorkerCount < 2 {
            let a = try pool.submit(SlowPID())
            let b = try pool.submit(SlowPID())
            pids.insert(try a.result())
            pids.insert(try b.result())
        }
        for i in 0..<10 { _ = try pool.submit(Noop(x: i)).result() }
        return pool
    }

    func firstResult() async throws -> Double {
        let start = now()
        let pool = try ProcessPoolExecutor(maxWorkers: 2, context: method, tasks: benchRegistry)
        _ = try pool.submit(Noop(x: 1)).result()
        let elapsed = now() - start
        await pool.shutdown()
        return elapsed
    }

    func roundTripMicros() async throws -> Double {
        let pool = try await warmPool()
        let start = now()
        for i in 0..<sizes.roundTrips { _ = try pool.submit(Noop(x: i)).result() }
        let elapsed = now() - start
        await pool.shutdown()
        return elapsed / Double(sizes.roundTrips) * 1e6
    }

    func submitThroughput() async throws -> Double {
        let pool = try await warmPool()
        let start = now()
        var futures: [TaskFuture<Int>] = []
        futures.reserveCapacity(sizes.submits)
        for i in 0..<sizes.submits { futures.append(try pool.submit(Noop(x: i))) }
        for f in futures { _ = try f.result() }
        let elapsed = now() - start
        await pool.shutdown()
        return Double(sizes.submits) / elapsed
    }

    /// `codableTasks`: the same trivial task, but only Codable (not BitwiseCodable).
    func mapThroughput(chunkSize: Int, codableTasks: Bool = false) async throws -> Double {
        let n = chunkSize == 1 ? sizes.mapC1 : sizes.mapLarge
        let pool = try await warmPool()
        let tasks = (0..<n).map { Noop(x: $0) }
        let codable = (0..<n).map { CodableNoop(x: $0) }
        let start = now()
        var count = 0
        if codableTasks {
            for try await _ in try pool.map(codable, chunkSize: chunkSize) { count += 1 }
        } else {
            for try await _ in try pool.map(tasks, chunkSize: chunkSize) { count += 1 }
        }
        let elapsed = now() - start
        precondition(count == n)
        await pool.shutdown()
        return Double(n) / elapsed
    }

    func payloadMBps() async throws -> Double {
        let pool = try await warmPool()
        let blob = [UInt8](repeating: 0, count: sizes.payload)
        let start = now()
        for _ in 0..<4 {
            let back = try pool.submit(Echo(bytes: blob)).result()
            precondition(back.count == blob.count)
        }
        let elapsed = now() - start
        await pool.shutdown()
        return 2 * Double(sizes.payload) * 4 / 1e6 / elapsed
    }

    func cpuSpeedup() async throws -> Double {
        let serialStart = now()
        for _ in 0..<8 { _ = CountPrimes(n: primesN).run() }
        let serial = now() - serialStart
        let pool = try await warmPool()
        let start = now()
        for try await _ in try pool.map(Array(repeating: CountPrimes(n: primesN), count: 8)) {}
        let parallel = now() - start
        await pool.shutdown()
        return serial / parallel
    }

    func workerRSS() async throws -> Double {
        let pool = try ProcessPoolExecutor(maxWorkers: 2, context: method, tasks: benchRegistry)
        let pid = try pool.submit(WorkerPID()).result()
        let rss = residentKiB(pid)
        await pool.shutdown()
        return rss
    }

    /// Parent memory (MiB) that `count` pending futures hold: the growth of
    /// malloc's bytes in use (RSS would not show memory reused from earlier
    /// figures, nor count what a previous test left for reuse).
    func pendingFuturesMiB(count: Int) async throws -> Double {
        let gate = "/tmp/pool-bench-gate-\(getpid())"
        unlink(gate)
        let pool = try ProcessPoolExecutor(maxWorkers: 1, context: method, tasks: benchRegistry)
        let blocker = try pool.submit(Gate(path: gate))
        let before = mallocBytesInUse()
        var futures: [TaskFuture<Int>] = []
        futures.reserveCapacity(count)
        for i in 0..<count { futures.append(try pool.submit(Noop(x: i))) }
        let after = mallocBytesInUse()
        pool.shutdown(wait: false, cancelFutures: true)
        let fd = open(gate, O_CREAT | O_WRONLY, 0o600)
        close(fd)
        _ = try blocker.result()
        await pool.shutdown()
        unlink(gate)
        return Double(after - before) / 1_048_576
    }
}

/// Bytes malloc has handed out and not had back (arenas and mmapped blocks).
func mallocBytesInUse() -> Int { Int(cpp_malloc_bytes_in_use()) }
