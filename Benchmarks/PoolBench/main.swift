import Foundation
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

    static func parse() -> Options {
        var options = Options()
        var iterator = CommandLine.arguments.dropFirst().makeIterator()
        while let argument = iterator.next() {
            switch argument {
            case "--quick": options.quick = true
            case "--rounds": options.rounds = Int(iterator.next() ?? "") ?? options.rounds
            case "--methods": options.methodNames = (iterator.next() ?? "").split(separator: ",").map(String.init)
            case "--no-python": options.runPython = false
            default:
                print("usage: pool-bench [--quick] [--rounds N] [--methods fork,spawn,forkserver] [--no-python]")
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
    Figure(key: "payload_64mib_mb_per_s", label: "64 MiB echo (MB/s)", higherIsBetter: true, targetRatio: { _ in 6 }),
    Figure(key: "cpu_speedup", label: "CPU speedup (x)", higherIsBetter: true, targetRatio: { _ in nil }),
]

func measureOurs(_ method: StartMethod, primesN: Int, options: Options) async throws -> [String: Double] {
    let rounds = options.rounds
    let bench = Bench(method: method, sizes: options.sizes, primesN: primesN)
    var samples: [String: [Double]] = [:]
    // Worker RSS first, as the Python side does (a fork worker inherits the parent's heap).
    for _ in 0..<rounds { samples["worker_rss_kib", default: []].append(try await bench.workerRSS()) }
    for round in 0..<rounds {
        FileHandle.standardError.write("  \(method) round \(round + 1)/\(rounds)\n".data(using: .utf8)!)
        samples["first_result_s", default: []].append(try await bench.firstResult())
        samples["round_trip_us", default: []].append(try await bench.roundTripMicros())
        samples["submit_tasks_per_s", default: []].append(try await bench.submitThroughput())
        samples["map_c1_tasks_per_s", default: []].append(try await bench.mapThroughput(chunkSize: 1))
        samples["map_c64_tasks_per_s", default: []].append(try await bench.mapThroughput(chunkSize: 64))
        samples["map_c1024_tasks_per_s", default: []].append(try await bench.mapThroughput(chunkSize: 1024))
        samples["payload_64mib_mb_per_s", default: []].append(try await bench.payloadMBps())
        samples["cpu_speedup", default: []].append(try await bench.cpuSpeedup())
    }
    return samples.mapValues(median)
}

func runCPython(_ options: Options) -> [String: [String: Double]] {
    guard options.runPython else { return [:] }
    let methodNames = options.methodNames
    let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("cpython_bench.py").path
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    var arguments = ["python3", script, "--rounds", String(options.rounds)]
    if methodNames.count == 1 { arguments += ["--start-method", methodNames[0]] }
    if options.quick { arguments.append("--quick") }
    process.arguments = arguments
    let out = Pipe()
    process.standardOutput = out
    do { try process.run() } catch {
        print("could not run python3: \(error)")
        return [:]
    }
    let data = out.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    guard let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
          let results = json["results"] as? [String: [String: Any]] else {
        print("could not parse the CPython results")
        return [:]
    }
    return results.mapValues { $0.compactMapValues { ($0 as? NSNumber)?.doubleValue } }
}

func format(_ value: Double?, _ key: String) -> String {
    guard let value, !value.isNaN else { return "-" }
    switch key {
    case "first_result_s": return String(format: "%.1f", value * 1000)
    case "round_trip_us": return String(format: "%.1f", value)
    case "cpu_speedup": return String(format: "%.2f", value)
    case "payload_64mib_mb_per_s", "worker_rss_kib": return String(format: "%.0f", value)
    default: return String(format: "%.0f", value)
    }
}

func pad(_ s: String, _ width: Int, left: Bool = false) -> String {
    let padding = String(repeating: " ", count: max(0, width - s.count))
    return left ? s + padding : padding + s
}

let options = Options.parse()
let sizes = options.sizes
let methodNames = options.methodNames
let primesN = calibratePrimes(quick: options.quick)
FileHandle.standardError.write("CountPrimes N = \(primesN) for Swift\n".data(using: .utf8)!)
var ours: [String: [String: Double]] = [:]
var pending: [String: Double] = [:]
for name in methodNames {
    let method = try StartMethod(named: name)
    ours[name] = try await measureOurs(method, primesN: primesN, options: options)
    pending[name] = try await Bench(method: method, sizes: sizes, primesN: primesN)
        .pendingFuturesMiB(count: sizes.pendingFutures)
}
FileHandle.standardError.write("running CPython...\n".data(using: .utf8)!)
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
        let theirs = cpython[name]?[figure.key]
        var ratioText = "-"
        var targetText = ""
        if let mine, let theirs, mine > 0, theirs > 0 {
            let ratio = figure.higherIsBetter ? mine / theirs : theirs / mine
            ratioText = String(format: "%.1fx", ratio)
            if let target = figure.targetRatio(name) {
                let met = ratio >= target
                if !met { missed += 1 }
                targetText = String(format: ">= %.0fx %@", target, met ? "met" : "MISSED")
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
for name in methodNames {
    let mib = pending[name] ?? .nan
    let met = mib < 1024
    if !met { missed += 1 }
    print(pad("\(sizes.pendingFutures) pending (MiB)", 22, left: true) + " | " + pad(name, 10, left: true) + " | "
          + pad(String(format: "%.0f", mib), 11) + " | " + pad("-", 11) + " | " + pad("-", 7) + " | < 1024 "
          + (met ? "met" : "MISSED"))
}
print("")
print("targets missed: \(missed)")
