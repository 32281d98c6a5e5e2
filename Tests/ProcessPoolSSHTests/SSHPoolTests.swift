import Glibc
import PoolTestSupport
import ProcessPool
import ProcessPoolSSH
import Testing

/// The ssh start method against real `sshd`s on loopback.
@Suite("ssh start method", .boundedExitWait, .serialized, .timeLimit(.minutes(3)))
struct SSHPoolTests {
    /// Runs `body` with a fresh sshd (skipped when sshd is missing).
    @Test("submit, map and errors over ssh")
    func submitMapErrors() async throws {
        try await withServer { server in
            let pool = try ProcessPoolExecutor(context: .ssh([try server.host()], options: server.options()), tasks: testRegistry)
            #expect(pool.maxWorkers == 2)
            #expect(try await settle(try pool.submit(Echo(42))) == 42)
            var squares: [Int] = []
            for try await value in try pool.map((0..<200).map { Square($0) }) { squares.append(value) }
            #expect(squares == (0..<200).map { $0 * $0 })
            await #expect(throws: RegisteredFailure(code: 5, note: "as asked")) {
                _ = try await settle(try pool.submit(Fail(registered: true, code: 5)))
            }
            await #expect(throws: RemoteTaskError.self) {
                _ = try await settle(try pool.submit(Fail(registered: false)))
            }
            #expect(pool.brokenReason == nil)
            await pool.shutdown()
        }
    }

    @Test("payloads of several MiB both ways")
    func largePayloads() async throws {
        try await withServer { server in
            let pool = try ProcessPoolExecutor(context: .ssh([try server.host()], options: server.options()), tasks: testRegistry)
            let bytes = sweepBytes(count: 5 << 20, seed: 0)
            let echoed = try await settle(try pool.submit(EchoBytes(bytes)))
            #expect(echoed == bytes)
            let made = try await settle(try pool.submit(MakeBytes(count: 6 << 20)))
            #expect(made.count == 6 << 20 && made[1000] == UInt8(1000 % 251))
            await pool.shutdown()
        }
    }

    @Test("two hosts share the work")
    func twoHosts() async throws {
        try await withServer { first in
            try await withServer { second in
                var options = first.options()
                try writeFile(options.knownHostsFile, readText(first.knownHosts) + readText(second.knownHosts))
                options.identityFiles = [first.clientKey]
                try copyFile(first.clientKey + ".pub", to: second.directory + "/authorized_keys")
                let pool = try ProcessPoolExecutor(
                    context: .ssh([try first.host(workers: 1), try second.host(workers: 1)], options: options), tasks: testRegistry)
                #expect(pool.maxWorkers == 2)
                let gate = first.directory + "/gate"
                let a = try pool.submit(WaitForFile(path: gate))
                let b = try pool.submit(WaitForFile(path: gate))
                // Both running: with one item per new worker, each is on its own host.
                #expect(eventually(30) { a.isRunning && b.isRunning })
                #expect(first.remoteWorkers().count == 1 && second.remoteWorkers().count == 1)
                try writeFile(gate, "")
                #expect(try await settle(a) != settle(b))
                await pool.shutdown()
            }
        }
    }

    @Test("a changed host key is refused under .strict")
    func wrongHostKey() async throws {
        try await withServer { server in
            #expect(run(["/usr/bin/ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", server.directory + "/other"]) == 0)
            try writeFile(server.knownHosts, server.knownHostsLine(hostKey: server.directory + "/other.pub"))
            let pool = try ProcessPoolExecutor(context: .ssh([try server.host()], options: server.options()), tasks: testRegistry)
            let reason = await brokenReason { _ = try await settle(try pool.submit(Echo(1))) }
            #expect(reason.contains("host key") && reason.contains("CHANGED") && reason.contains("127.0.0.1:\(server.port)"), "\(reason)")
            #expect(reason.contains("ssh-keygen -R"))
            await pool.shutdown()
        }
    }

    @Test("an unknown host: refused by .strict, added by .acceptNew")
    func unknownHost() async throws {
        try await withServer { server in
            try writeFile(server.knownHosts, "# nothing yet\n")
            let strict = try ProcessPoolExecutor(context: .ssh([try server.host()], options: server.options()), tasks: testRegistry)
            let reason = await brokenReason { _ = try await settle(try strict.submit(Echo(1))) }
            #expect(reason.contains("host key") && reason.contains("unknown") && reason.contains(".acceptNew"), "\(reason)")
            await strict.shutdown()

            var options = server.options()
            options.hostKeyPolicy = .acceptNew
            let accepting = try ProcessPoolExecutor(context: .ssh([try server.host()], options: options), tasks: testRegistry)
            #expect(try await settle(try accepting.submit(Echo(2))) == 2)
            await accepting.shutdown()
            #expect(readText(server.knownHosts).contains("[127.0.0.1]:\(server.port) ssh-ed25519 "))

            let again = try ProcessPoolExecutor(context: .ssh([try server.host()], options: server.options()), tasks: testRegistry)
            #expect(try await settle(try again.submit(Echo(3))) == 3)
            await again.shutdown()
        }
    }

    @Test("a client key the host does not accept")
    func rejectedClientKey() async throws {
        try await withServer { server in
            var options = server.options()
            options.identityFiles = [server.strangerKey]
            let pool = try ProcessPoolExecutor(context: .ssh([try server.host()], options: options), tasks: testRegistry)
            let reason = await brokenReason { _ = try await settle(try pool.submit(Echo(1))) }
            #expect(reason.contains("authentication") && reason.contains(server.strangerKey), "\(reason)")
            await pool.shutdown()
        }
    }

    @Test("a remote worker killed by SIGKILL breaks the pool, naming host and signal")
    func remoteSigkill() async throws {
        try await withServer { server in
            let pool = try ProcessPoolExecutor(context: .ssh([try server.host()], options: server.options()), tasks: testRegistry)
            #expect(try await settle(try pool.submit(Echo(1))) == 1)
            let reason = await brokenReason { _ = try await settle(try pool.submit(Die(.sigkill))) }
            #expect(reason.contains("127.0.0.1:\(server.port)") && reason.contains("SIGKILL"), "\(reason)")
            await pool.shutdown()
            #expect(eventually(30) { server.remoteWorkers().isEmpty })
        }
    }

    @Test("the connection killed mid-task breaks the pool, naming the host")
    func connectionKilled() async throws {
        try await withServer { server in
            let pool = try ProcessPoolExecutor(context: .ssh([try server.host()], options: server.options()), tasks: testRegistry)
            let future = try pool.submit(WaitForFile(path: server.directory + "/never"))
            #expect(eventually(30) { !server.remoteWorkers().isEmpty })
            for connection in server.connectionProcesses() { _ = kill(connection, SIGKILL) }
            let reason = await brokenReason { _ = try await settle(future) }
            #expect(reason.contains("127.0.0.1:\(server.port)") && reason.contains("lost"), "\(reason)")
            await pool.shutdown()
            #expect(eventually(30) { server.remoteWorkers().isEmpty })
        }
    }

    @Test("the uploaded executable is cached and reused by a second pool")
    func uploadCacheReused() async throws {
        try await withServer { server in
            let first = try ProcessPoolExecutor(context: .ssh([try server.host()], options: server.options()), tasks: testRegistry)
            #expect(try await settle(try first.submit(Echo(1))) == 1)
            await first.shutdown()
            let entries = cacheEntries(server.cache)
            #expect(entries.count == 1 && entries[0].count == 64, "\(entries)")
            var before = stat()
            #expect(stat(server.cache + "/" + (entries.first ?? ""), &before) == 0)

            let second = try ProcessPoolExecutor(context: .ssh([try server.host()], options: server.options()), tasks: testRegistry)
            #expect(try await settle(try second.submit(Echo(2))) == 2)
            await second.shutdown()
            var after = stat()
            #expect(stat(server.cache + "/" + (entries.first ?? ""), &after) == 0)
            #expect(before.st_ino == after.st_ino && before.st_mtim.tv_nsec == after.st_mtim.tv_nsec)
            #expect(cacheEntries(server.cache) == entries)
        }
    }

    @Test("no process is left on the host when the parent is killed")
    func parentKilled() async throws {
        try await withServer { server in
            guard access(farmExecutable, X_OK) == 0 else {
                Issue.record("ssh-farm not built at \(farmExecutable)")
                return
            }
            let farm = try spawn([farmExecutable, "--identity", server.clientKey, "--known-hosts", server.knownHosts,
                                  "--cache", server.cache, "root@127.0.0.1:\(server.port)=2", "4000000000", "--chunks", "4"],
                                 stderr: server.directory + "/farm.log", stdout: server.directory + "/farm.out")
            #expect(eventually(60) { server.remoteWorkers().count == 2 }, "\(readText(server.directory + "/farm.log"))")
            let workers = server.remoteWorkers()
            _ = kill(farm, SIGKILL)
            var status: Int32 = 0
            _ = waitpid(farm, &status, 0)
            #expect(eventually(30) { workers.allSatisfy { kill($0, 0) != 0 } }, "still running: \(workers)")
        }
    }

    @Test("the ssh-farm example runs with retries on (--retries)")
    func farmWithRetries() async throws {
        try await withServer { server in
            guard access(farmExecutable, X_OK) == 0 else {
                Issue.record("ssh-farm not built at \(farmExecutable)")
                return
            }
            let farm = try spawn([farmExecutable, "--identity", server.clientKey, "--known-hosts", server.knownHosts,
                                  "--cache", server.cache, "--retries", "3", "root@127.0.0.1:\(server.port)=2",
                                  "200000", "--chunks", "8"],
                                 stderr: server.directory + "/farm.log", stdout: server.directory + "/farm.out")
            var status: Int32 = 0
            #expect(eventually(120) { waitpid(farm, &status, WNOHANG) == farm }, "\(readText(server.directory + "/farm.log"))")
            #expect(status == 0)
            // pi(200,000) = 17,984.
            #expect(readText(server.directory + "/farm.out").contains("primes below 200000: 17984"),
                    "\(readText(server.directory + "/farm.out"))")
        }
    }

    @Test("destinations parse")
    func destinations() throws {
        let host = try SSHHost("alice@example.org:2200", workers: 3)
        #expect(host.user == "alice" && host.hostname == "example.org" && host.port == 2200 && host.workers == 3)
        let bare = try SSHHost("example.org")
        #expect(bare.user == nil && bare.port == 22 && bare.workers == 1)
        #expect(throws: SSHError.self) { try SSHHost("a@b:notaport") }
    }
}

func cacheEntries(_ directory: String) -> [String] {
    guard let dir = opendir(directory) else { return [] }
    defer { closedir(dir) }
    var names: [String] = []
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
        if name != "." && name != ".." { names.append(name) }
    }
    return names.sorted()
}
