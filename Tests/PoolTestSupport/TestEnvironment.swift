import Glibc
import ProcessPool
import ProcessPoolCore

/// Where the tests find their worker executable and which start methods they run.
public enum TestEnvironment {
    /// PoolTestWorker, built next to the test bundle.
    public static let workerExecutable: String = {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        let me = n > 0 ? String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            : CommandLine.arguments[0]
        var dir = me
        // .build/debug/ProcessPoolPackageTests.xctest (a file on Linux)
        while let slash = dir.lastIndex(of: "/") {
            dir = String(dir[..<slash])
            let candidate = dir + "/PoolTestWorker"
            if access(candidate, X_OK) == 0 { return candidate }
            if dir.isEmpty { break }
        }
        return "PoolTestWorker"
    }()

    /// The local start methods, each starting the test worker executable.
    public static let localMethods: [StartMethod] = [
        .fork,
        .spawn(executable: workerExecutable),
        .forkserver(executable: workerExecutable),
    ]

    /// Bounds how long this process waits at exit for pools still busy (20 s,
    /// then their workers are killed and named on standard error). A test
    /// that fails while its pool runs an endless task would otherwise keep
    /// the test runner from exiting, and CI from ever ending.
    public static func boundExitWait() { LivePools.exitWaitLimit = .seconds(20) }

    /// Start methods that can replace workers (maxTasksPerChild).
    public static let replacingMethods: [StartMethod] = localMethods.filter { $0.name != "fork" }
}
