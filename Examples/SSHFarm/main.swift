import Glibc
import ProcessPool
import ProcessPoolSSH

// Counts the primes below N on a farm of ssh hosts and prints how many tasks
// each host ran. Hosts come from the arguments or a file, one per line:
//
//   swift run -c release ssh-farm [options] user@host:port=WORKERS ... [N]
//   swift run -c release ssh-farm [options] --hosts FILE [N]   (lines: "user@host:port WORKERS")
//
// options: --identity FILE, --known-hosts FILE, --accept-new, --cache DIR,
//          --chunks N, --bench (also time the first result and 20,000 trivial tasks),
//          --retries N (FailurePolicy.retry: a lost worker or host does not stop
//          the run; its chunks run again elsewhere, up to N attempts each)
//
// This program uploads itself to each host (cached by its SHA-256): build it
// with `--static-swift-stdlib` so the hosts need no Swift installed.

/// Counts primes in [lower, upper) by trial division; says where it ran.
struct CountPrimesOnHost: ProcessTask {
    struct Output: Codable, Sendable {
        var count: Int
        var host: String
    }

    var lower: Int
    var upper: Int

    func run() -> Output {
        var count = 0
        for k in max(lower, 2)..<max(upper, 2) where isPrime(k) { count += 1 }
        var name = [CChar](repeating: 0, count: 256)
        gethostname(&name, name.count)
        let host = String(decoding: name.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return Output(count: count, host: host + " pid \(getppid())")
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

/// Returns at once.
struct Ping: ProcessTask {
    func run() -> Int { 1 }
}

let registry = TaskRegistry(CountPrimesOnHost.self, Ping.self)
ProcessPoolExecutor.bootstrap(registry)

func fail(_ message: String) -> Never {
    print(message)
    exit(2)
}

var hosts: [SSHHost] = []
var options = SSHOptions()
var limit = 2_000_000
var chunks = 64
var bench = false
var policy = FailurePolicy.breakPool
var arguments = Array(CommandLine.arguments.dropFirst())
while !arguments.isEmpty {
    let argument = arguments.removeFirst()
    func value() -> String {
        guard !arguments.isEmpty else { fail("\(argument) needs a value") }
        return arguments.removeFirst()
    }
    switch argument {
    case "--identity": options.identityFiles = [value()]
    case "--known-hosts": options.knownHostsFile = value()
    case "--accept-new": options.hostKeyPolicy = .acceptNew
    case "--cache": options.remoteCacheDirectory = value()
    case "--chunks": chunks = Int(value()) ?? chunks
    case "--bench": bench = true
    case "--retries": policy = .retry(maxAttempts: Int(value()) ?? 3)
    case "--hosts":
        let path = value()
        guard let file = fopen(path, "r") else { fail("cannot read \(path)") }
        var line: UnsafeMutablePointer<CChar>?
        var capacity = 0
        while getline(&line, &capacity, file) > 0 {
            let words = String(cString: line!).split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" })
            guard let first = words.first, !first.hasPrefix("#") else { continue }
            do {
                hosts.append(try SSHHost(String(first), workers: words.count > 1 ? Int(words[1]) ?? 1 : 1))
            } catch { fail("\(error)") }
        }
        free(line)
        fclose(file)
    default:
        if let n = Int(argument) {
            limit = n
        } else {
            let parts = argument.split(separator: "=")
            do {
                hosts.append(try SSHHost(String(parts[0]), workers: parts.count > 1 ? Int(parts[1]) ?? 1 : 1))
            } catch { fail("\(error)") }
        }
    }
}
guard !hosts.isEmpty else { fail("usage: ssh-farm [options] user@host:port=WORKERS ... [N] | --hosts FILE [N]") }

func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

func run(hosts: [SSHHost], options: SSHOptions, limit: Int, chunks: Int, bench: Bool, policy: FailurePolicy) async throws {
    let created = now()
    let pool = try ProcessPoolExecutor(context: .ssh(hosts, options: options), tasks: registry, failurePolicy: policy)
    _ = try await pool.submit(Ping()).value
    print("workers: \(pool.maxWorkers) on \(hosts.count) host(s); first result after \(Int((now() - created) * 1000)) ms")
    if bench {
        let start = now()
        var futures: [TaskFuture<Int>] = []
        futures.reserveCapacity(20_000)
        for _ in 0..<20_000 { futures.append(try pool.submit(Ping())) }
        var sum = 0
        for future in futures { sum += try await future.value }
        let seconds = now() - start
        print("20,000 trivial tasks: \(Int(Double(sum) / seconds)) tasks/s")
    }
    let step = (limit + chunks - 1) / chunks
    let ranges = stride(from: 0, to: limit, by: step).map { CountPrimesOnHost(lower: $0, upper: min($0 + step, limit)) }
    let start = now()
    var total = 0
    var perHost: [String: Int] = [:]
    for try await output in try pool.map(ranges) {
        total += output.count
        perHost[output.host, default: 0] += 1
    }
    print("primes below \(limit): \(total) in \(Int((now() - start) * 1000)) ms")
    for (host, count) in perHost.sorted(by: { $0.key < $1.key }) { print("  \(host): \(count) tasks") }
    await pool.shutdown()
}

do {
    try await run(hosts: hosts, options: options, limit: limit, chunks: chunks, bench: bench, policy: policy)
} catch {
    print("error: \(error)")
    exit(1)
}
