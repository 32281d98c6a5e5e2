import Glibc
import PoolTestSupport
import ProcessPool
import ProcessPoolSSH
import Testing

/// The tests' throwaway sshd: PoolTestSupport's LoopbackSSHD, with what
/// needs Swift Testing or ProcessPoolSSH.
typealias SSHDFixture = LoopbackSSHD

extension LoopbackSSHD {
    /// Whether the tests can run; records a failure instead of skipping when
    /// PROCESSPOOL_REQUIRE_ALL_TESTS=1.
    static func available() -> Bool {
        if isInstalled { return true }
        if getenv("PROCESSPOOL_REQUIRE_ALL_TESTS").map({ String(cString: $0) }) == "1" {
            Issue.record("sshd or ssh-keygen is missing (apt-get install openssh-server) and PROCESSPOOL_REQUIRE_ALL_TESTS=1")
        } else {
            print("SKIPPED: ssh tests need /usr/sbin/sshd and ssh-keygen (apt-get install openssh-server)")
        }
        return false
    }

    /// The destination "root@127.0.0.1:port".
    func host(workers: Int = 2) throws -> SSHHost { try SSHHost("root@127.0.0.1:\(port)", workers: workers) }

    /// Options that use only this server's files, uploading the test worker.
    func options() -> SSHOptions {
        var options = SSHOptions()
        options.identityFiles = [clientKey]
        options.useAgent = false
        options.knownHostsFile = knownHosts
        options.globalKnownHostsFiles = []
        options.configFile = nil
        options.localExecutable = TestEnvironment.workerExecutable
        options.remoteCacheDirectory = cache
        options.connectTimeout = .seconds(20)
        return options
    }
}

func cpp_now() -> Double { monotonicNow() }

/// Polls `condition` until it holds or `seconds` pass.
func eventually(_ seconds: Double = 30, _ condition: () -> Bool) -> Bool {
    let deadline = cpp_now() + seconds
    while cpp_now() < deadline {
        if condition() { return true }
        usleep(2000)
    }
    return condition()
}

/// Runs `body` with a fresh sshd, stopped afterwards; skips (or fails under
/// PROCESSPOOL_REQUIRE_ALL_TESTS=1) when sshd is missing.
func withServer(_ body: (SSHDFixture) async throws -> Void) async throws {
    guard SSHDFixture.available() else { return }
    let server = try SSHDFixture()
    defer { server.stop() }
    try await body(server)
}

/// The value, waiting at most `seconds`.
func settle<T>(_ future: TaskFuture<T>, within seconds: Int = 120) async throws -> T {
    let (done, _) = await wait(for: [future], timeout: .seconds(seconds))
    guard !done.isEmpty else {
        Issue.record("a future did not finish within \(seconds) s")
        throw FixtureError("future not done after \(seconds) s")
    }
    return try future.result()
}

/// The BrokenProcessPool reason `body` throws (records an issue otherwise).
func brokenReason(_ body: () async throws -> Void) async -> String {
    do {
        try await body()
        Issue.record("expected BrokenProcessPool, got success")
    } catch let error as BrokenProcessPool {
        return error.reason
    } catch {
        Issue.record("expected BrokenProcessPool, got \(error)")
    }
    return ""
}

/// The ssh-farm example, built next to the test worker.
var farmExecutable: String {
    let worker = TestEnvironment.workerExecutable
    return String(worker[..<worker.lastIndex(of: "/")!]) + "/ssh-farm"
}
