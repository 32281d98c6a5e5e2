import Glibc
import ProcessPool

// Counts the primes below N across a process pool, once per start method,
// and prints workers, wall time, speedup over one process and the time to
// the first result.
//
//   swift run -c release primes [N] [chunks]

/// Counts primes in [lower, upper) by trial division.
struct CountPrimesInRange: ProcessTask {
    var lower: Int
    var upper: Int

    func run() -> Int {
        var count = 0
        for k in max(lower, 2)..<max(upper, 2) where isPrime(k) { count += 1 }
        return count
    }

    private func isPrime(_ k: Int) -> Bool {
        var d = 2
        while d * d <= k {
            if k % d == 0 { return false }
            d += 1
        }
        return true
    }
}

/// Returns at once: measures how soon a fresh pool answers.
struct Ping: ProcessTask {
    func run() -> Int { 1 }
}

let registry = TaskRegistry(CountPrimesInRange.self, Ping.self)
ProcessPoolExecutor.bootstrap(registry)

let arguments = CommandLine.arguments.dropFirst()
let limit = arguments.first.flatMap { Int($0) } ?? 3_000_000
let chunkCount = arguments.dropFirst().first.flatMap { Int($0) } ?? 64

func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

/// Formats `value` with `decimals` digits after the point.
func fixed(_ value: Double, _ decimals: Int) -> String {
    var scale = 1.0
    for _ in 0..<decimals { scale *= 10 }
    let scaled = Int((value * scale).rounded())
    let whole = String(scaled / Int(scale))
    guard decimals > 0 else { return whole }
    let fraction = String(abs(scaled) % Int(scale))
    return whole + "." + String(repeating: "0", count: decimals - fraction.count) + fraction
}

func pad(_ text: String, _ width: Int, left: Bool = false) -> String {
    let padding = String(repeating: " ", count: max(0, width - text.count))
    return left ? text + padding : padding + text
}

func row(_ name: String, _ workers: Int, _ wall: Double, _ speedup: Double, _ firstMs: Double?) -> String {
    pad(name, 12, left: true) + " | " + pad(String(workers), 7) + " | " + pad(fixed(wall, 3), 9) + " | "
        + pad(fixed(speedup, 2) + "x", 7) + " | " + pad(firstMs.map { fixed($0, 1) } ?? "-", 17)
}

let step = (limit + chunkCount - 1) / chunkCount
let ranges = stride(from: 0, to: limit, by: step).map { CountPrimesInRange(lower: $0, upper: min($0 + step, limit)) }

// One process: the baseline.
let serialStart = now()
let serialCount = ranges.reduce(0) { $0 + $1.run() }
let serialTime = now() - serialStart

print("Primes below \(limit): \(serialCount) (\(ranges.count) tasks)")
print("")
print("start method | workers |  wall (s) | speedup | first result (ms)")
print("-------------|---------|-----------|---------|------------------")
print(row("1 process", 1, serialTime, 1.0, nil))

/// Runs the job on each start method; returns how many failed.
func runOnEachStartMethod() async -> Int {
    var failures = 0
    for method in [StartMethod.forkserver, .spawn, .fork] {
        do {
            let created = now()
            let pool = try ProcessPoolExecutor(context: method, tasks: registry)
            _ = try await pool.submit(Ping()).value
            let firstResult = now() - created

            let start = now()
            var total = 0
            for try await count in try pool.map(ranges) { total += count }
            let wall = now() - start
            await pool.shutdown()
            guard total == serialCount else {
                print("\(method): counted \(total), expected \(serialCount)")
                failures += 1
                continue
            }
            print(row(method.name, pool.maxWorkers, wall, serialTime / wall, firstResult * 1000))
        } catch {
            print("\(method): \(error)")
            failures += 1
        }
    }
    return failures
}

exit(await runOnEachStartMethod() == 0 ? 0 : 1)
