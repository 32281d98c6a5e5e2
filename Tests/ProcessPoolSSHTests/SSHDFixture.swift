import Glibc
import PoolTestSupport
import ProcessPool
import ProcessPoolSSH
import Testing

/// A throwaway `sshd` on loopback: its own host key, client keys, config and
/// known_hosts in a temporary directory. Stopped (and the directory removed) by `stop()`.
final class SSHDFixture: @unchecked Sendable {
    let directory: String
    let port: Int
    let pid: pid_t
    var clientKey: String { directory + "/client" }
    var strangerKey: String { directory + "/stranger" }
    var knownHosts: String { directory + "/known_hosts" }
    var cache: String { directory + "/cache" }

    static let sshd = "/usr/sbin/sshd"

    /// Whether the tests can run; records a failure instead of skipping when
    /// PROCESSPOOL_REQUIRE_ALL_TESTS=1.
    static func available() -> Bool {
        if access(sshd, X_OK) == 0 && access("/usr/bin/ssh-keygen", X_OK) == 0 { return true }
        if getenv("PROCESSPOOL_REQUIRE_ALL_TESTS").map({ String(cString: $0) }) == "1" {
            Issue.record("sshd or ssh-keygen is missing (apt-get install openssh-server) and PROCESSPOOL_REQUIRE_ALL_TESTS=1")
        } else {
            print("SKIPPED: ssh tests need /usr/sbin/sshd and ssh-keygen (apt-get install openssh-server)")
        }
        return false
    }

    init() throws {
        var template = Array("/tmp/ppool-sshd-XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else { throw FixtureError("mkdtemp failed") }
        directory = String(decoding: template.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        _ = mkdir("/run/sshd", 0o755)
        for key in ["host_ed25519", "client", "stranger"] {
            guard run(["/usr/bin/ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", directory + "/" + key]) == 0 else {
                throw FixtureError("ssh-keygen failed")
            }
        }
        try copyFile(directory + "/client.pub", to: directory + "/authorized_keys")
        port = try freePort()
        let config = """
            Port \(port)
            ListenAddress 127.0.0.1
            HostKey \(directory)/host_ed25519
            AuthorizedKeysFile \(directory)/authorized_keys
            StrictModes no
            UsePAM no
            PermitRootLogin yes
            PasswordAuthentication no
            KbdInteractiveAuthentication no
            PidFile \(directory)/sshd.pid
            LogLevel ERROR

            """
        try writeFile(directory + "/sshd_config", config)
        pid = try spawn([SSHDFixture.sshd, "-D", "-f", directory + "/sshd_config", "-e"], stderr: directory + "/sshd.log")
        try writeFile(knownHosts, knownHostsLine(hostKey: directory + "/host_ed25519.pub"))
        let deadline = cpp_now() + 20
        while !portOpen(port) {
            if cpp_now() > deadline { stop(); throw FixtureError("sshd did not start: \(readText(directory + "/sshd.log"))") }
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid { throw FixtureError("sshd exited: \(readText(directory + "/sshd.log"))") }
            usleep(5000)
        }
    }

    /// A known_hosts line for this server with the key in `hostKey` (a .pub file).
    func knownHostsLine(hostKey: String) -> String {
        let fields = readText(hostKey).split(separator: " ")
        return "[127.0.0.1]:\(port) \(fields[0]) \(fields[1])\n"
    }

    /// The destination "root@127.0.0.1:port".
    func host(workers: Int = 2) throws -> SSHHost { try SSHHost("root@127.0.0.1:\(port)", workers: workers) }

    /// Options that use only this fixture's files, uploading the test worker.
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

    /// The per-connection sshd processes (children of the listener).
    func connectionProcesses() -> [pid_t] { processes().filter { $0.ppid == pid }.map(\.pid) }

    /// Worker processes serving over this server's connections.
    func remoteWorkers() -> [pid_t] { remoteWorkers(listener: pid) }

    /// Worker processes serving over the connections of the sshd `listener`
    /// (this server's, or one restarted on its configuration).
    func remoteWorkers(listener: pid_t) -> [pid_t] {
        let all = processes()
        let sessions = Set(all.filter { $0.ppid == listener }.map(\.pid))
        // sshd's per-connection process forks a per-user child on privilege separation.
        let inner = sessions.union(all.filter { sessions.contains($0.ppid) }.map(\.pid))
        return all.filter { inner.contains($0.ppid) && readText("/proc/\($0.pid)/environ").contains("SWIFT_PROCESSPOOL_ROLE=worker:1:stdio:0") }.map(\.pid)
    }

    func stop() {
        _ = kill(pid, SIGTERM)
        var status: Int32 = 0
        _ = waitpid(pid, &status, 0)
        for child in processes().filter({ $0.ppid == 1 && readText("/proc/\($0.pid)/cmdline").contains(directory) }) {
            _ = kill(child.pid, SIGKILL)
        }
        _ = run(["/bin/rm", "-rf", directory])
    }
}

struct FixtureError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

func cpp_now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

/// Polls `condition` until it holds or `seconds` pass.
func eventually(_ seconds: Double = 30, _ condition: () -> Bool) -> Bool {
    let deadline = cpp_now() + seconds
    while cpp_now() < deadline {
        if condition() { return true }
        usleep(2000)
    }
    return condition()
}

/// posix_spawn with stdout/stderr to `stderr` (or /dev/null); returns the pid.
func spawn(_ argv: [String], stderr: String? = nil, stdout: String? = nil) throws -> pid_t {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, stdout ?? "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    posix_spawn_file_actions_addopen(&actions, 2, stderr ?? "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    let cargs = argv.map { strdup($0) } + [nil]
    defer { for p in cargs { free(p) } }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, argv[0], &actions, nil, cargs, environ)
    guard rc == 0 else { throw FixtureError("cannot start \(argv[0]): \(rc)") }
    return pid
}

/// Runs a program to completion; its exit code (or -1).
@discardableResult
func run(_ argv: [String]) -> Int32 {
    guard let pid = try? spawn(argv) else { return -1 }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    return (status & 0x7f) == 0 ? (status >> 8) & 0xff : -1
}

func freePort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let ok = withUnsafeMutablePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
    }
    guard ok else { throw FixtureError("no free port") }
    return Int(UInt16(bigEndian: address.sin_port))
}

func portOpen(_ port: Int) -> Bool {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = UInt16(port).bigEndian
    return withUnsafePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
    }
}

/// A file's text ("" if it cannot be read), NULs shown as spaces.
func readText(_ path: String) -> String { readTextFile(path) ?? "" }

/// Runs `body` with a fresh sshd, stopped afterwards; skips (or fails under
/// PROCESSPOOL_REQUIRE_ALL_TESTS=1) when sshd is missing.
func withServer(_ body: (SSHDFixture) async throws -> Void) async throws {
    guard SSHDFixture.available() else { return }
    let server = try SSHDFixture()
    defer { server.stop() }
    try await body(server)
}

func writeFile(_ path: String, _ text: String) throws {
    guard let f = fopen(path, "w") else { throw FixtureError("cannot write \(path)") }
    fputs(text, f)
    fclose(f)
}

func copyFile(_ from: String, to: String) throws { try writeFile(to, readText(from)) }

/// (pid, ppid) of every process.
func processes() -> [(pid: pid_t, ppid: pid_t)] {
    var result: [(pid_t, pid_t)] = []
    guard let dir = opendir("/proc") else { return [] }
    defer { closedir(dir) }
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
        guard let pid = pid_t(name) else { continue }
        let stat = readText("/proc/\(name)/stat")
        guard let close = stat.lastIndex(of: ")") else { continue }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 2, let ppid = pid_t(fields[1]), fields[0] != "Z" else { continue }
        result.append((pid, ppid))
    }
    return result
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
