import Glibc
import ProcessPool

// pool-bench: our pool against CPython's ProcessPoolExecutor, same machine,
// same run, same start method, 2 workers. Each figure is the median of
// several rounds.
//
//   swift run -c release pool-bench [--quick] [--rounds N] [--methods fork,spawn,forkserver] [--no-python]

ProcessPoolExecutor.bootstrap(benchRegistry)

/// Command-line options.
struct Options: Sendable {
    var rounds = 5
    var quick = false
    var runPython = true
    var methodNames = ["fork", "spawn", "forkserver"]
    /// Figures to measure (all when empty).
    var only: Set<String> = []

    static func parse() -> Options {
        var options = Options()
        var iterator = CommandLine.arguments.dropFirst().makeIterator()
        while let argument = iterator.next() {
            switch argument {
            case "--quick": options.quick = true
            case "--rounds": options.rounds = Int(iterator.next() ?? "") ?? options.rounds
            case "--methods": options.methodNames = (iterator.next() ?? "").split(separator: ",").map(String.init)
            case "--no-python": options.runPython = false
            case "--only": options.only = Set((iterator.next() ?? "").split(separator: ",").map(String.init))
            default:
                print("usage: pool-bench [--quick] [--rounds N] [--methods fork,spawn,forkserver] [--no-python] [--only figure,...]")
                exit(2)
            }
        }
        return options
    }

    var sizes: Sizes { quick ? Sizes.quick : Sizes() }
}

/// Picks N so that one CountPrimes(N) takes about 0.25 s here (CPython's task does).
func calibratePrimes(quick: Bool) -> Int {
    var n = quick ? 30_000 : 150_000
    while true {
        let start = now()
        _ = CountPrimes(n: n).run()
        let elapsed = now() - start
        if elapsed >= (quick ? 0.03 : 0.2) || n > 1 << 30 { return n }
        n = Int(Double(n) * min(8, max(1.2, 0.25 / max(elapsed, 1e-4))))
    }
}

/// The figures, in table order: key, label, unit, whether more is better, target ratio.
struct Figure {
    let key: String
    let label: String
    let higherIsBetter: Bool
    /// ours vs CPython, expressed so that bigger is better; nil: absolute target.
    let targetRatio: (String) -> Double?
    /// The CPython figure to compare with (default: the same key).
    var cpythonKey: String? = nil
}

let figures: [Figure] = [
    Figure(key: "worker_rss_kib", label: "worker RSS (KiB)", higherIsBetter: false, targetRatio: { _ in 2 }),
    Figure(key: "first_result_s", label: "first result (ms)", higherIsBetter: false,
           targetRatio: { $0 == "fork" ? 2 : 5 }),
    Figure(key: "round_trip_us", label: "round trip (µs)", higherIsBetter: false, targetRatio: { _ in 3 }),
    Figure(key: "submit_tasks_per_s", label: "submit (tasks/s)", higherIsBetter: true, targetRatio: { _ in 20 }),
    Figure(key: "map_c1_tasks_per_s", label: "map c=1 (tasks/s)", higherIsBetter: true, targetRatio: { _ in 20 }),
    Figure(key: "map_c64_tasks_per_s", label: "map c=64 (tasks/s)", higherIsBetter: true, targetRatio: { _ in nil }),
    Figure(key: "map_c1024_tasks_per_s", label: "map c=1024 (tasks/s)", higherIsBetter: true, targetRatio: { _ in 2 }),
    // The same workload with a task type that is only Codable (each task encoded on its own).
    Figure(key: "map_c1024_codable_tasks_per_s", label: "  same, Codable task", higherIsBetter: true,
           targetRatio: { _ in nil }, cpythonKey: "map_c1024_tasks_per_s"),
    Figure(key: "payload_64mib_mb_per_s", label: "64 MiB echo (MB/s)", higherIsBetter: true, targetRatio: { _ in 6 }),
    Figure(key: "cpu_speedup", label: "CPU speedup (x)", higherIsBetter: true, targetRatio: { _ in nil }),
]

func measureOurs(_ method: StartMethod, primesN: Int, options: Options) async throws -> [String: Double] {
    let rounds = options.rounds
    let bench = Bench(method: method, sizes: options.sizes, primesN: primesN)
    var samples: [String: [Double]] = [:]
    func measure(_ key: String, _ body: () async throws -> Double) async rethrows {
        let value = try await body()
        samples[key, default: []].append(value)
        progress("    [\(method)] \(key) round \(samples[key]!.count)/\(rounds): \(value)")
    }
    // Figure by figure, every round of one before the next, in the Python
    // script's order (worker RSS first: a fork worker inherits the parent's
    // heap), so both sides measure each figure in the same conditions.
    let steps: [(String, () async throws -> Double)] = [
        ("worker_rss_kib", { try await bench.workerRSS() }),
        ("first_result_s", { try await bench.firstResult() }),
        ("round_trip_us", { try await bench.roundTripMicros() }),
        ("submit_tasks_per_s", { try await bench.submitThroughput() }),
        ("map_c1_tasks_per_s", { try await bench.mapThroughput(chunkSize: 1) }),
        ("map_c64_tasks_per_s", { try await bench.mapThroughput(chunkSize: 64) }),
        ("map_c1024_tasks_per_s", { try await bench.mapThroughput(chunkSize: 1024) }),
        ("map_c1024_codable_tasks_per_s", { try await bench.mapThroughput(chunkSize: 1024, codableTasks: true) }),
        ("payload_64mib_mb_per_s", { try await bench.payloadMBps() }),
        ("cpu_speedup", { try await bench.cpuSpeedup() }),
    ]
    for (key, body) in steps where options.only.isEmpty || options.only.contains(key) {
        progress("  \(method) \(key), \(rounds) rounds")
        for _ in 0..<rounds { try await measure(key, body) }
    }
    return samples.mapValues(median)
}

/// Progress on stderr.
func progress(_ line: String) {
    let text = line + "\n"
    _ = text.withCString { write(2, $0, strlen($0)) }
}

/// Runs the CPython side (Benchmarks/cpython_bench.py) and parses its
/// "method figure value" lines.
func runCPython(_ options: Options) -> [String: [String: Double]] {
    guard options.runPython else { return [:] }
    let methodNames = options.methodNames
    var script = #filePath
    for _ in 0..<2 { script = String(script[..<script.lastIndex(of: "/")!]) }
    script += "/cpython_bench.py"
    var arguments = ["python3", script, "--rounds", String(options.rounds), "--format", "lines"]
    if methodNames.count == 1 { arguments += ["--start-method", methodNames[0]] }
    if options.quick { arguments.append("--quick") }
    guard let output = captureOutput(arguments) else {
        print("could not run python3")
        return [:]
    }
    var results: [String: [String: Double]] = [:]
    for line in String(decoding: output, as: UTF8.self).split(separator: "\n") {
        let fields = line.split(separator: " ")
        guard fields.count == 3, let value = Double(fields[2]) else { continue }
        results[String(fields[0]), default: [:]][String(fields[1])] = value
    }
    if results.isEmpty { print("could not parse the CPython results") }
    return results
}

/// Runs a command found on PATH and returns its stdout (stderr passes through).
func captureOutput(_ arguments: [String]) -> [UInt8]? {
    var fds: [Int32] = [-1, -1]
    guard pipe(&fds) == 0 else { return nil }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_adddup2(&actions, fds[1], 1)
    posix_spawn_file_actions_addclose(&actions, fds[0])
    let argv = arguments.map { strdup($0) } + [nil]
    defer { for p in argv { free(p) } }
    var pid: pid_t = 0
    let rc = posix_spawnp(&pid, arguments[0], &actions, nil, argv, environ)
    close(fds[1])
    guard rc == 0 else {
        close(fds[0])
        return nil
    }
    var output: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = read(fds[0], &chunk, chunk.count)
        if n <= 0 { break }
        output.append(contentsOf: chunk[0..<n])
    }
    close(fds[0])
    var status: Int32 = 0
    waitpid(pid, &status, 0)
    return output
}

/// `value` with `decimals` digits after the point.
func fixed(_ value: Double, _ decimals: Int) -> String {
    var scale = 1.0
    for _ in 0..<decimals { scale *= 10 }
    let scaled = (value * scale).rounded()
    guard abs(scaled) < 9e18 else { return String(value) }
    let integer = Int(scaled)
    let whole = String(integer / Int(scale))
    guard decimals > 0 else { return whole }
    let fraction = String(abs(integer) % Int(scale))
    return whole + "." + String(repeating: "0", count: decimals - fraction.count) + fraction
}

func format(_ value: Double?, _ key: String) -> String {
    guard let value, !value.isNaN else { return "-" }
    switch key {
    case "first_result_s": return fixed(value * 1000, 1)
    case "round_trip_us": return fixed(value, 1)
    case "cpu_speedup": return fixed(value, 2)
    default: return fixed(value, 0)
    }
}

func pad(_ s: String, _ width: Int, left: Bool = false) -> String {
    let padding = String(repeating: " ", count: max(0, width - s.count))
    return left ? s + padding : padding + s
}

let options = Options.parse()
let sizes = options.sizes
let methodNames = options.methodNames
let primesN = options.only.isEmpty || options.only.contains("cpu_speedup") ? calibratePrimes(quick: options.quick) : 150_000
progress("CountPrimes N = \(primesN) for Swift")
var ours: [String: [String: Double]] = [:]
var pending: [String: Double] = [:]
for name in methodNames {
    let method = try StartMethod(named: name)
    ours[name] = try await measureOurs(method, primesN: primesN, options: options)
    if options.only.isEmpty || options.only.contains("pending") {
        pending[name] = try await Bench(method: method, sizes: sizes, primesN: primesN)
            .pendingFuturesMiB(count: sizes.pendingFutures)
    }
}
progress("running CPython...")
let cpython = runCPython(options)

print("")
print("pool-bench: \(options.rounds) rounds, medians\(options.quick ? ", quick sizes" : ""); 2 workers; ratio = how many times better ours is")
print("")
print(pad("figure", 22, left: true) + " | " + pad("method", 10, left: true) + " | " + pad("ours", 11) + " | "
      + pad("CPython", 11) + " | " + pad("ratio", 7) + " | target")
print(String(repeating: "-", count: 22) + "-|-" + String(repeating: "-", count: 10) + "-|-"
      + String(repeating: "-", count: 11) + "-|-" + String(repeating: "-", count: 11) + "-|-"
      + String(repeating: "-", count: 7) + "-|-------")
var missed = 0
for figure in figures {
    for name in methodNames {
        let mine = ours[name]?[figure.key]
        let theirs = cpython[name]?[figure.cpythonKey ?? figure.key]
        var ratioText = "-"
        var targetText = ""
        if let mine, let theirs, mine > 0, theirs > 0 {
            let ratio = figure.higherIsBetter ? mine / theirs : theirs / mine
            ratioText = fixed(ratio, 1) + "x"
            if let target = figure.targetRatio(name) {
                let met = ratio >= target
                if !met { missed += 1 }
                targetText = ">= \(fixed(target, 0))x " + (met ? "met" : "MISSED")
            }
        }
        if figure.key == "cpu_speedup", let mine {
            let met = mine >= 1.8
            if !met { missed += 1 }
            targetText = ">= 1.8 " + (met ? "met" : "MISSED")
        }
        print(pad(figure.label, 22, left: true) + " | " + pad(name, 10, left: true) + " | "
              + pad(format(mine, figure.key), 11) + " | " + pad(format(theirs, figure.key), 11) + " | "
              + pad(ratioText, 7) + " | " + targetText)
    }
}
for name in methodNames where pending[name] != nil {
    let mib = pending[name] ?? .nan
    let met = mib < 1024
    if !met { missed += 1 }
    print(pad("\(sizes.pendingFutures) pending (MiB)", 22, left: true) + " | " + pad(name, 10, left: true) + " | "
          + pad(fixed(mib, 0), 11) + " | " + pad("-", 11) + " | " + pad("-", 7) + " | < 1024 "
          + (met ? "met" : "MISSED"))
}
print("")
print("targets missed: \(missed)")
