import Glibc
import PoolTestSupport
import ProcessPool
import ProcessPoolSSH
import Testing

/// Key types and their errors, and a host with more workers than one
/// session's channels, against a real sshd.
@Suite("ssh keys and sessions", .boundedExitWait, .serialized, .timeLimit(.minutes(3)))
struct SSHKeyKindsTests {
    /// Makes a key of `type` in the fixture's directory and authorizes it.
    func authorizedKey(_ server: SSHDFixture, type: String, bits: String? = nil, passphrase: String = "") throws -> String {
        let path = server.directory + "/key_" + type + (passphrase.isEmpty ? "" : "_enc")
        var argv = ["/usr/bin/ssh-keygen", "-q", "-t", type, "-N", passphrase, "-f", path]
        if let bits { argv += ["-b", bits] }
        guard run(argv) == 0 else { throw FixtureError("ssh-keygen -t \(type) failed") }
        try writeFile(server.directory + "/authorized_keys",
                      readText(server.directory + "/authorized_keys") + readText(path + ".pub"))
        return path
    }

    @Test("an ECDSA key authenticates")
    func ecdsa() async throws {
        try await withServer { server in
            var options = server.options()
            options.identityFiles = [try authorizedKey(server, type: "ecdsa", bits: "256")]
            let pool = try ProcessPoolExecutor(context: .ssh([try server.host(workers: 1)], options: options),
                                               tasks: testRegistry)
            #expect(try await settle(try pool.submit(Square(4))) == 16)
            await pool.shutdown()
        }
    }

    @Test("an RSA key is refused with an error that says why")
    func rsaRefused() async throws {
        try await withServer { server in
            var options = server.options()
            options.identityFiles = [try authorizedKey(server, type: "rsa", bits: "2048")]
            let pool = try ProcessPoolExecutor(context: .ssh([try server.host(workers: 1)], options: options),
                                               tasks: testRegistry)
            let reason = await brokenReason { _ = try await settle(try pool.submit(Echo(1))) }
            #expect(reason.contains("RSA") && reason.contains("ed25519"), "\(reason)")
            await pool.shutdown()
        }
    }

    @Test("an encrypted key without a passphrase gets a clear error; with it, it works")
    func encryptedKey() async throws {
        try await withServer { server in
            var options = server.options()
            options.identityFiles = [try authorizedKey(server, type: "ed25519", passphrase: "s3cret pass")]
            let refused = try ProcessPoolExecutor(context: .ssh([try server.host(workers: 1)], options: options),
                                                  tasks: testRegistry)
            let reason = await brokenReason { _ = try await settle(try refused.submit(Echo(1))) }
            #expect(reason.contains("encrypted") && reason.contains("passphrase"), "\(reason)")
            await refused.shutdown()

            options.passphrase = "s3cret pass"
            let pool = try ProcessPoolExecutor(context: .ssh([try server.host(workers: 1)], options: options),
                                               tasks: testRegistry)
            #expect(try await settle(try pool.submit(Echo(2))) == 2)
            await pool.shutdown()
        }
    }

    @Test("more workers on one host than one session's channels (sshd allows 10)")
    func manyWorkersOneHost() async throws {
        try await withServer { server in
            let pool = try ProcessPoolExecutor(context: .ssh([try server.host(workers: 12)], options: server.options()),
                                               tasks: testRegistry)
            #expect(pool.maxWorkers == 12)
            let gate = server.directory + "/gate"
            let futures = try (0..<12).map { _ in try pool.submit(WaitForFile(path: gate)) }
            #expect(eventually(60) { futures.allSatisfy { $0.isRunning } })
            #expect(server.remoteWorkers().count == 12)
            try writeFile(gate, "")
            var pids = Set<Int>()
            for f in futures { pids.insert(try await settle(f)) }
            #expect(pids.count == 12)
            await pool.shutdown()
        }
    }

    @Test("terminateWorkers stops a busy remote worker")
    func terminateRemote() async throws {
        try await withServer { server in
            let pool = try ProcessPoolExecutor(context: .ssh([try server.host(workers: 1)], options: server.options()),
                                               tasks: testRegistry)
            let future = try pool.submit(WaitForFile(path: server.directory + "/never"))
            #expect(eventually(30) { future.isRunning && server.remoteWorkers().count == 1 })
            pool.terminateWorkers()
            let reason = await brokenReason { _ = try await settle(future) }
            #expect(reason.contains("terminateWorkers"), "\(reason)")
            #expect(eventually(30) { server.remoteWorkers().isEmpty })
            await pool.shutdown()
        }
    }

    @Test("a host that stops answering is lost after three keepalive intervals")
    func silentHost() async throws {
        try await withServer { server in
            var options = server.options()
            options.keepaliveInterval = .seconds(1)
            let pool = try ProcessPoolExecutor(context: .ssh([try server.host(workers: 1)], options: options),
                                               tasks: testRegistry)
            let future = try pool.submit(WaitForFile(path: server.directory + "/never"))
            #expect(eventually(30) { future.isRunning })
            let connections = server.connectionProcesses()
            for connection in connections { kill(connection, SIGSTOP) }
            defer { for connection in connections { kill(connection, SIGKILL) } }
            let reason = await brokenReason { _ = try await settle(future, within: 60) }
            #expect(reason.contains("lost") && reason.contains("127.0.0.1:\(server.port)"), "\(reason)")
            await pool.shutdown()
        }
    }
}
