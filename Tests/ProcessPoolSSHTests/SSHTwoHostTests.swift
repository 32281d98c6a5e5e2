import Glibc
import PoolTestSupport
import ProcessPool
import ProcessPoolSSH
import Testing

/// Two sshd instances stand in for a farm of two hosts.
@Suite("ssh farm of two hosts", .boundedExitWait, .serialized, .timeLimit(.minutes(3)))
struct SSHTwoHostTests {
    /// Options that reach both servers: both client keys, both host keys.
    static func options(_ a: SSHDFixture, _ b: SSHDFixture) throws -> SSHOptions {
        var options = a.options()
        options.identityFiles = [a.clientKey, b.clientKey]
        options.knownHostsFile = a.directory + "/farm_known_hosts"
        try writeFile(options.knownHostsFile,
                      a.knownHostsLine(hostKey: a.directory + "/host_ed25519.pub")
                      + b.knownHostsLine(hostKey: b.directory + "/host_ed25519.pub"))
        return options
    }

    @Test("work runs on both hosts; a host cut mid-task breaks the pool naming that host, not the other")
    func oneHostCut() async throws {
        try await withServer { a in
            try await withServer { b in
                let pool = try ProcessPoolExecutor(
                    context: .ssh([try a.host(workers: 1), try b.host(workers: 1)], options: try Self.options(a, b)),
                    tasks: testRegistry)
                // A round of short tasks reaches both hosts.
                var sum = 0
                for try await value in try pool.map((1...200).map { Echo($0) }, chunkSize: 5) { sum += value }
                #expect(sum == 200 * 201 / 2)
                // One endless task per host; then host b's connection dies.
                let gate = a.directory + "/never"
                let first = try pool.submit(WaitForFile(path: gate))
                let second = try pool.submit(WaitForFile(path: gate))
                #expect(eventually(30) { !a.remoteWorkers().isEmpty && !b.remoteWorkers().isEmpty },
                        "both hosts run a worker")
                #expect(eventually(30) { first.isRunning && second.isRunning })
                for pid in b.connectionProcesses() { kill(pid, SIGKILL) }
                let reason = await brokenReason { _ = try await settle(second, within: 60) }
                #expect(reason.contains("127.0.0.1:\(b.port)"), "the reason names host b: \(reason)")
                #expect(!reason.contains("127.0.0.1:\(a.port)"), "the reason does not blame host a: \(reason)")
                #expect(first.isDone, "the whole pool is broken (default policy), so host a's future ends too")
                await pool.shutdown()
                #expect(eventually(30) { a.remoteWorkers().isEmpty }, "host a's worker is stopped")
            }
        }
    }
}
