import Glibc
import ProcessPool

/// Returns its argument: the "trivial task". Plain bits, so chunks of it
/// travel as memory blocks.
struct Noop: ProcessTask, BitwiseCodable {
    var x: Int
    func run() -> Int { x }
}

/// The same task, Codable only: each call is encoded on its own.
struct CodableNoop: ProcessTask {
    var x: Int
    func run() -> Int { x }
}

/// Returns the bytes it was given.
struct Echo: ProcessTask {
    var bytes: [UInt8]
    func run() -> [UInt8] { bytes }
}

/// The worker's pid.
struct WorkerPID: ProcessTask {
    func run() -> Int32 { getpid() }
}

/// Sleeps 50 ms and returns the worker's pid (warm-up).
struct SlowPID: ProcessTask {
    func run() -> Int32 {
        usleep(50_000)
        return getpid()
    }
}

/// Blocks until the file exists (keeps futures pending for the memory figure).
struct Gate: ProcessTask {
    var path: String
    func run() -> Int {
        while access(path, F_OK) != 0 { usleep(1000) }
        return 0
    }
}

/// Primes below n by trial division, exactly as the Python script counts them.
struct CountPrimes: ProcessTask {
    var n: Int
    func run() -> Int {
        var count = 0
        var k = 2
        while k < n {
            var d = 2
            var prime = true
            while d * d <= k {
                if k % d == 0 {
                    prime = false
                    break
                }
                d += 1
            }
            if prime { count += 1 }
            k += 1
        }
        return count
    }
}

let benchRegistry = TaskRegistry(Noop.self, CodableNoop.self, Echo.self, WorkerPID.self, SlowPID.self, Gate.self, CountPrimes.self)
