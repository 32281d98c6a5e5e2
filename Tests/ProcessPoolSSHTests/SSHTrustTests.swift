import Glibc
import PoolTestSupport
import ProcessPool
import ProcessPoolSSH
import Testing

// MARK: Helpers

/// A fresh temporary directory.
private func temporaryDirectory(_ prefix: String = "ppool-trust") throws -> String {
    var template = Array("/tmp/\(prefix)-XXXXXX".utf8CString)
    guard mkdtemp(&template) != nil else { throw FixtureError("mkdtemp failed") }
    return String(decoding: template.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// Runs `script` with /bin/sh locally (HOME set to `home` when given):
/// (exit status, stdout, stderr).
private func sh(_ script: String, home: String? = nil) throws -> (status: Int32, out: String, err: String) {
    let directory = try temporaryDirectory("ppool-sh")
    defer { _ = run(["/bin/rm", "-rf", directory]) }
    var argv = ["/usr/bin/env"]
    if let home { argv.append("HOME=\(home)") }
    argv += ["/bin/sh", "-c", script]
    let pid = try spawn(argv, stderr: directory + "/err", stdout: directory + "/out")
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    let code = (status & 0x7f) == 0 ? (status >> 8) & 0xff : -1
    return (code, readText(directory + "/out"), readText(directory + "/err"))
}

private func base64(_ bytes: [UInt8]) -> String {
    let table = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
    var out = ""
    var i = 0
    while i < bytes.count {
        let b0 = Int(bytes[i]), b1 = i + 1 < bytes.count ? Int(bytes[i + 1]) : 0, b2 = i + 2 < bytes.count ? Int(bytes[i + 2]) : 0
        out.append(table[b0 >> 2])
        out.append(table[((b0 & 3) << 4) | (b1 >> 4)])
        out.append(i + 1 < bytes.count ? table[((b1 & 15) << 2) | (b2 >> 6)] : "=")
        out.append(i + 2 < bytes.count ? table[b2 & 63] : "=")
        i += 3
    }
    return out
}

private func wire(_ bytes: [UInt8]) -> [UInt8] {
    let n = bytes.count
    return [UInt8(n >> 24 & 255), UInt8(n >> 16 & 255), UInt8(n >> 8 & 255), UInt8(n & 255)] + bytes
}

/// A fake ed25519 (or other type) public key blob.
private func fakeKey(_ seed: UInt8, type: String = "ssh-ed25519") -> [UInt8] {
    wire(Array(type.utf8)) + wire([UInt8](repeating: seed, count: 32))
}

private func line(_ hosts: String, _ key: [UInt8], type: String = "ssh-ed25519", marker: String = "") -> String {
    (marker.isEmpty ? "" : marker + " ") + "\(hosts) \(type) \(base64(key))\n"
}

// MARK: Unit tests

@Suite("ssh trust: quoting, cache, known_hosts, auth order", .boundedExitWait)
struct SSHTrustUnitTests {
    @Test("remote paths are single-quoted; a leading ~/ or $HOME/ stays the remote home")
    func pathWords() throws {
        let home = try temporaryDirectory()
        defer { _ = run(["/bin/rm", "-rf", home]) }
        let cases: [(String, String)] = [
            ("/tmp/a b/c", "/tmp/a b/c"),
            ("/tmp/it's; rm -rf x", "/tmp/it's; rm -rf x"),
            ("/x/$HOME/`id`/a=b", "/x/$HOME/`id`/a=b"),
            ("$HOME/.cache/sp ace", home + "/.cache/sp ace"),
            ("~/q'uote", home + "/q'uote"),
            ("~", home),
        ]
        for (path, expected) in cases {
            let result = try sh("printf '%s' \(remotePathWord(path))", home: home)
            #expect(result.out == expected, "\(path) -> \(remotePathWord(path))")
        }
    }

    @Test("the launch command runs a path with spaces, quotes and = (not read as an assignment)")
    func launchPathWithEquals() throws {
        let directory = try temporaryDirectory() + "/dir with 'quote' and a=b"
        #expect(mkdir(directory, 0o700) == 0)
        let program = directory + "/w=1 x"
        try writeFile(program, "#!/bin/sh\nprintf 'ran %s' \"$PPOOL_TEST_ROLE\"\n")
        chmod(program, 0o700)
        var options = SSHOptions()
        options.remoteWorker = .path(program)
        let command = try WorkerShipping.launchCommand(remotePath: program, options: options,
                                                       environment: [("PPOOL_TEST_ROLE", "worker:1 'x'")], label: "test")
        let result = try sh(command)
        #expect(result.status == 0, "\(result.err)")
        #expect(result.out == "ran worker:1 'x'")
    }

    /// A local "worker" and a copy of it at `path`; options uploading it.
    private func uploadSetup(_ path: String) throws -> SSHOptions {
        let local = String(path[..<path.lastIndex(of: "/")!]) + "/local-worker"
        try writeFile(local, "#!/bin/sh\nprintf 'ok %s' \"$PPOOL_TEST_ROLE\"\n")
        chmod(local, 0o700)
        var options = SSHOptions()
        options.localExecutable = local
        options.remoteWorker = .upload
        return options
    }

    @Test("an uploaded worker's SHA-256 is checked in the command that execs it")
    func launchChecksHash() throws {
        let directory = try temporaryDirectory() + "/ca che'd=x"
        #expect(mkdir(directory, 0o700) == 0)
        var options = try uploadSetup(directory + "/placeholder")
        let digest = try WorkerShipping.sha256(of: options.localExecutable!, label: "test")
        let path = directory + "/" + digest
        try copyFile(options.localExecutable!, to: path)
        chmod(path, 0o700)
        let command = { try WorkerShipping.launchCommand(remotePath: path, options: options,
                                                        environment: [("PPOOL_TEST_ROLE", "w")], label: "test") }
        var result = try sh(try command())
        #expect(result.status == 0, "\(result.err)")
        #expect(result.out == "ok w")

        // Planted: same name, other content.
        try writeFile(path, "#!/bin/sh\nprintf planted\n")
        result = try sh(try command())
        #expect(result.status == 126)
        #expect(!result.out.contains("planted"))
        #expect(result.err.contains("SHA-256"), "\(result.err)")

        // No hash tool: fails closed.
        try copyFile(options.localExecutable!, to: path)
        options.remoteHashTools = [(probe: "ppool-no-such-sha256", command: "ppool-no-such-sha256")]
        result = try sh(try command())
        #expect(result.status == 126)
        #expect(result.out.isEmpty)
        #expect(result.err.contains("no SHA-256 tool"), "\(result.err)")
    }

    @Test("each SHA-256 tool gives the same digest (sha256sum, shasum -a 256, openssl)")
    func hashTools() throws {
        let directory = try temporaryDirectory()
        defer { _ = run(["/bin/rm", "-rf", directory]) }
        try writeFile(directory + "/f", "some bytes\n")
        let digest = try WorkerShipping.sha256(of: directory + "/f", label: "test")
        for tool in SSHOptions().remoteHashTools where access("/usr/bin/" + tool.probe, X_OK) == 0 {
            var options = SSHOptions()
            options.remoteHashTools = [tool]
            let result = try sh(WorkerShipping.hashFunction(options) + "\nppool_sha \(shellQuote(directory + "/f"))")
            #expect(result.out == digest + "\n", "\(tool.command): \(result.out) \(result.err)")
        }
    }

    @Test("the cache directory is created 700; one others can write, or a symlink, is refused")
    func cacheDirectoryChecks() throws {
        let root = try temporaryDirectory()
        defer { _ = run(["/bin/rm", "-rf", root]) }
        var options = SSHOptions()
        options.remoteCacheDirectory = root + "/new cache"
        var result = try sh(WorkerShipping.cacheDirectoryScript(options) + "\nprintf '%s' \"$p\"")
        #expect(result.status == 0, "\(result.err)")
        var info = stat()
        #expect(stat(root + "/new cache", &info) == 0 && info.st_mode & 0o777 == 0o700)

        #expect(mkdir(root + "/shared", 0o700) == 0)
        chmod(root + "/shared", 0o770)
        options.remoteCacheDirectory = root + "/shared"
        result = try sh(WorkerShipping.cacheDirectoryScript(options))
        #expect(result.status == 3)
        #expect(result.err.contains("writable by other users"), "\(result.err)")

        // A parent others can write.
        #expect(mkdir(root + "/open", 0o700) == 0)
        chmod(root + "/open", 0o777)
        options.remoteCacheDirectory = root + "/open/cache"
        result = try sh(WorkerShipping.cacheDirectoryScript(options))
        #expect(result.status == 3)
        #expect(result.err.contains("open is writable by other users"), "\(result.err)")

        #expect(symlink(root + "/new cache", root + "/link") == 0)
        options.remoteCacheDirectory = root + "/link"
        result = try sh(WorkerShipping.cacheDirectoryScript(options))
        #expect(result.status == 3)
        #expect(result.err.contains("symbolic link"), "\(result.err)")
    }

    // MARK: known_hosts

    private func knownHosts(_ user: String, global: String = "", host: String, port: Int = 22, alias: String? = nil,
                            policy: HostKeyPolicy = .strict) throws -> KnownHosts {
        let directory = try temporaryDirectory()
        try writeFile(directory + "/known_hosts", user)
        try writeFile(directory + "/global", global)
        return KnownHosts(userFiles: [directory + "/known_hosts"], globalFiles: [directory + "/global"],
                          host: host, port: port, alias: alias, policy: policy)
    }

    private func verdict(_ hosts: KnownHosts, _ key: [UInt8], policy: HostKeyPolicy = .strict) -> String {
        do {
            try hosts.verify(key: key, fingerprint: "SHA256:test", policy: policy, label: "test")
            return "ok"
        } catch {
            let text = "\(error)"
            if text.contains("REVOKED") { return "revoked" }
            if text.contains("CHANGED") { return "changed" }
            if text.contains("unknown") { return "unknown" }
            return text
        }
    }

    @Test("@revoked keys are refused, even when also listed, and never appended")
    func revoked() throws {
        let key = fakeKey(1)
        let hosts = try knownHosts(line("node1", key) + line("*", key, marker: "@revoked"), host: "node1")
        #expect(verdict(hosts, key) == "revoked")
        let fresh = try knownHosts(line("*", key, marker: "@revoked"), host: "node1")
        #expect(verdict(fresh, key, policy: .acceptNew) == "revoked")
        #expect(!readText(fresh.path).contains("node1"))
        // A revoked line elsewhere in the global file.
        let global = try knownHosts(line("node1", key), global: line("node*", key, marker: "@revoked"), host: "node1")
        #expect(verdict(global, key) == "revoked")
    }

    @Test("names are lowercased: a changed key for LOCALHOST is a change, not a new host")
    func caseInsensitive() throws {
        let known = fakeKey(1), impostor = fakeKey(2)
        let hosts = try knownHosts(line("localhost", known), host: "LOCALHOST")
        #expect(verdict(hosts, impostor, policy: .acceptNew) == "changed")
        #expect(!readText(hosts.path).contains(base64(impostor)))
        #expect(verdict(hosts, known) == "ok")
        let upper = try knownHosts(line("Node1.Example.COM", known), host: "node1.example.com")
        #expect(verdict(upper, known) == "ok")
    }

    @Test("wildcards, comma lists and negations match as in OpenSSH")
    func patterns() throws {
        let known = fakeKey(1), other = fakeKey(2)
        let wildcard = try knownHosts(line("web1,node*", known), host: "node7")
        #expect(verdict(wildcard, other, policy: .acceptNew) == "changed")
        #expect(verdict(wildcard, known) == "ok")
        let single = try knownHosts(line("node?", known), host: "node12")
        #expect(verdict(single, known) == "unknown")
        // A negated match excludes the whole line.
        let negated = try knownHosts(line("node*,!node7", known), host: "node7")
        #expect(verdict(negated, known) == "unknown")
        #expect(verdict(negated, other, policy: .acceptNew) == "ok")
        #expect(readText(negated.path).contains("node7 ssh-ed25519 \(base64(other))"))
        #expect(KnownHosts.hostMatches("NODE8", "node*,!node7"))
        #expect(!KnownHosts.hostMatches("node7", "!node7,node*"))
    }

    @Test("hashed entries (ssh-keygen -H) match, case-insensitively")
    func hashed() throws {
        // RFC 2202 test case 1.
        #expect(KnownHosts.hmacSHA1(key: [UInt8](repeating: 0x0b, count: 20), message: Array("Hi There".utf8))
            == [0xb6, 0x17, 0x31, 0x86, 0x55, 0x05, 0x72, 0x64, 0xe2, 0x8b, 0xc0, 0xb6, 0xfb, 0x37, 0x8c, 0x8e, 0xf1, 0x46, 0xbe, 0x00])
        guard access("/usr/bin/ssh-keygen", X_OK) == 0 else { return }
        let known = fakeKey(1), other = fakeKey(2)
        let hosts = try knownHosts(line("node1", known) + line("[node2]:2222", known), host: "Node1")
        #expect(run(["/usr/bin/ssh-keygen", "-q", "-H", "-f", hosts.path]) == 0)
        #expect(readText(hosts.path).hasPrefix("|1|"))
        #expect(verdict(hosts, known) == "ok")
        #expect(verdict(hosts, other, policy: .acceptNew) == "changed")
        let port = KnownHosts(userFiles: [hosts.path], globalFiles: [], host: "node2", port: 2222, alias: nil, policy: .strict)
        #expect(verdict(port, known) == "ok")
    }

    @Test("off port 22 only [host]:port counts: a bare-name key neither matches nor wins")
    func ports() throws {
        let bare = fakeKey(1), pinned = fakeKey(2)
        let hosts = try knownHosts(line("node1", bare) + line("[node1]:2222", pinned), host: "node1", port: 2222)
        #expect(verdict(hosts, pinned) == "ok")
        #expect(verdict(hosts, bare) == "changed")
        let onlyBare = try knownHosts(line("node1", bare), host: "node1", port: 2222)
        #expect(verdict(onlyBare, bare) == "unknown")
        #expect(onlyBare.entryName == "[node1]:2222")
    }

    @Test("the global known_hosts is read after the user's; a mismatch there is a change")
    func globalFile() throws {
        let known = fakeKey(1), other = fakeKey(2)
        let hosts = try knownHosts("", global: line("node1", known), host: "node1")
        #expect(verdict(hosts, known) == "ok")
        #expect(verdict(hosts, other, policy: .acceptNew) == "changed")
        #expect(readText(hosts.path).isEmpty)
    }

    @Test("HostKeyAlias names the entry; algorithms are listed in preference order")
    func aliasAndAlgorithms() throws {
        let key = fakeKey(1), ecdsa = fakeKey(3, type: "ecdsa-sha2-nistp256")
        let hosts = try knownHosts(line("farm-alias", ecdsa, type: "ecdsa-sha2-nistp256") + line("farm-alias", key),
                                   host: "10.0.0.5", port: 2222, alias: "Farm-Alias")
        #expect(hosts.entryName == "farm-alias")
        #expect(verdict(hosts, key) == "ok")
        #expect(hosts.knownAlgorithms() == ["ssh-ed25519", "ecdsa-sha2-nistp256"])
        // A key of a type not on file while another type is: refused, not appended.
        let other = fakeKey(4, type: "ecdsa-sha2-nistp384")
        #expect(verdict(hosts, other, policy: .acceptNew).contains("holds only"))
    }

    // MARK: Authentication order

    @Test("identity files first (through their agent copies), then other agent keys unless IdentitiesOnly")
    func authenticationOrder() {
        let a = fakeKey(1), b = fakeKey(2), x = fakeKey(7), y = fakeKey(8)
        let files: [(path: String, publicKey: [UInt8]?)] = [("/k/a", a), ("/k/b", b), ("/k/c", nil)]
        let agent = [x, b, y, a]
        #expect(SSHAuthentication.plan(files: files, agentKeys: agent, identitiesOnly: false) == [
            .agent(index: 3, file: "/k/a"), .agent(index: 1, file: "/k/b"), .file("/k/c"),
            .agent(index: 0, file: nil), .agent(index: 2, file: nil),
        ])
        #expect(SSHAuthentication.plan(files: files, agentKeys: agent, identitiesOnly: true) == [
            .agent(index: 3, file: "/k/a"), .agent(index: 1, file: "/k/b"), .file("/k/c"),
        ])
        #expect(SSHAuthentication.plan(files: [], agentKeys: agent, identitiesOnly: false).count == 4)
    }
}

// MARK: End to end

@Suite("ssh trust against sshd", .boundedExitWait, .serialized, .timeLimit(.minutes(3)))
struct SSHTrustEndToEndTests {
    // (A `=` in the path is covered by launchPathWithEquals: HostLink's own
    // `exec env` line still reads such a path as an assignment.)
    @Test("upload into a cache directory whose name has a space, a quote and $")
    func awkwardCacheDirectory() async throws {
        try await withServer { server in
            var options = server.options()
            options.remoteCacheDirectory = server.directory + "/ca che'd $x; y"
            let pool = try ProcessPoolExecutor(context: .ssh([try server.host(workers: 1)], options: options), tasks: testRegistry)
            #expect(try await settle(try pool.submit(Square(7))) == 49)
            await pool.shutdown()
            let digest = try WorkerShipping.sha256(of: TestEnvironment.workerExecutable, label: "test")
            #expect(access(options.remoteCacheDirectory + "/" + digest, X_OK) == 0)
            var info = stat()
            #expect(stat(options.remoteCacheDirectory, &info) == 0 && info.st_mode & 0o077 == 0)
        }
    }

    @Test("a file planted under the digest name is replaced, never run")
    func plantedFile() async throws {
        try await withServer { server in
            let options = server.options()
            let digest = try WorkerShipping.sha256(of: TestEnvironment.workerExecutable, label: "test")
            #expect(mkdir(server.cache, 0o700) == 0)
            let cached = server.cache + "/" + digest
            let marker = server.directory + "/planted-ran"
            try writeFile(cached, "#!/bin/sh\ntouch \(shellQuote(marker))\nexit 1\n")
            chmod(cached, 0o755)
            let pool = try ProcessPoolExecutor(context: .ssh([try server.host(workers: 1)], options: options), tasks: testRegistry)
            #expect(try await settle(try pool.submit(Square(3))) == 9)
            await pool.shutdown()
            #expect(access(marker, F_OK) != 0)
            #expect(try WorkerShipping.sha256(of: cached, label: "test") == digest)
        }
    }

    @Test("a cache directory other users can write is refused")
    func groupWritableCache() async throws {
        try await withServer { server in
            #expect(mkdir(server.cache, 0o700) == 0)
            chmod(server.cache, 0o770)
            let pool = try ProcessPoolExecutor(context: .ssh([try server.host(workers: 1)], options: server.options()), tasks: testRegistry)
            let reason = await brokenReason { _ = try await settle(try pool.submit(Echo(1))) }
            #expect(reason.contains("writable by other users"), "\(reason)")
            await pool.shutdown()
        }
    }

    @Test("a host without a SHA-256 tool fails closed")
    func noHashTool() async throws {
        try await withServer { server in
            var options = server.options()
            options.remoteHashTools = [(probe: "ppool-no-such-sha256", command: "ppool-no-such-sha256")]
            let pool = try ProcessPoolExecutor(context: .ssh([try server.host(workers: 1)], options: options), tasks: testRegistry)
            let reason = await brokenReason { _ = try await settle(try pool.submit(Echo(1))) }
            #expect(reason.contains("no SHA-256 tool"), "\(reason)")
            await pool.shutdown()
        }
    }

    @Test("with 6 wrong keys in the agent, the IdentityFile key is offered first (no 'Too many authentication failures')")
    func identityFileBeforeAgentKeys() async throws {
        try await withServer { server in
            let socket = server.directory + "/agent.sock"
            let agent = try spawn(["/usr/bin/ssh-agent", "-D", "-a", socket])
            defer {
                kill(agent, SIGKILL)
                var status: Int32 = 0
                waitpid(agent, &status, 0)
            }
            #expect(eventually(10) { access(socket, F_OK) == 0 })
            var wrong: [String] = []
            for index in 0..<6 {
                let key = server.directory + "/wrong\(index)"
                #expect(run(["/usr/bin/ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key]) == 0)
                wrong.append(key)
            }
            #expect(run(["/usr/bin/env", "SSH_AUTH_SOCK=\(socket)", "/usr/bin/ssh-add", "-q"] + wrong) == 0)
            let configPath = server.directory + "/ssh_config"
            try writeFile(configPath, "Host *\n  IdentityAgent \(socket)\n")
            chmod(configPath, 0o600)
            var options = server.options()
            options.configFile = configPath
            options.useAgent = true
            let pool = try ProcessPoolExecutor(context: .ssh([try server.host(workers: 1)], options: options), tasks: testRegistry)
            #expect(try await settle(try pool.submit(Echo(4))) == 4)
            await pool.shutdown()

            // IdentitiesOnly with no usable file: the agent's keys are not offered.
            try writeFile(configPath, "Host *\n  IdentityAgent \(socket)\n  IdentitiesOnly yes\n")
            options.identityFiles = []
            let only = try ProcessPoolExecutor(context: .ssh([try server.host(workers: 1)], options: options), tasks: testRegistry)
            let reason = await brokenReason { _ = try await settle(try only.submit(Echo(1))) }
            #expect(reason.contains("IdentitiesOnly"), "\(reason)")
            await only.shutdown()
        }
    }

    @Test("ProxyJump in the ssh config for the host is refused before connecting")
    func proxyJumpRefused() async throws {
        try await withServer { server in
            let configPath = server.directory + "/ssh_config"
            try writeFile(configPath, "Host farm\n  HostName 127.0.0.1\n  Port \(server.port)\n  ProxyJump bastion\n")
            chmod(configPath, 0o600)
            var options = server.options()
            options.configFile = configPath
            // Refused when the pool is made (ResolvedHost(resolving:)) or at the first submit.
            var reason = ""
            do {
                let pool = try ProcessPoolExecutor(context: .ssh([try SSHHost("root@farm", workers: 1)], options: options), tasks: testRegistry)
                reason = await brokenReason { _ = try await settle(try pool.submit(Echo(1))) }
                await pool.shutdown()
            } catch {
                reason = "\(error)"
            }
            #expect(reason.contains("proxyjump") && reason.contains(configPath + ":4"), "\(reason)")
        }
    }
}
