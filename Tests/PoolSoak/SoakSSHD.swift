// The ssh side of pool-soak: a throwaway sshd on loopback, as the ssh tests'
// SSHDFixture starts it (its own host key, client key, config and
// known_hosts in a temporary directory), with what the soak checks about it.
import Glibc
import PoolTestSupport
import ProcessPoolSSH

struct SoakSetupError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// A throwaway `sshd` on 127.0.0.1. `stop()` stops it and removes its directory.
final class SoakSSHD: Sendable {
    let directory: String
    let port: Int
    let pid: pid_t
    /// "ssh-ed25519 AAAA...": the host key as known_hosts lists it.
    let hostKeyFields: String
    var clientKey: String { directory + "/client" }
    var knownHosts: String { directory + "/known_hosts" }
    /// Where the pools upload the worker (this program): inside `directory`.
    var cache: String { directory + "/cache" }

    static let sshd = "/usr/sbin/sshd"
    static let keygen = "/usr/bin/ssh-keygen"

    /// Whether sshd and ssh-keygen are installed.
    static var available: Bool { access(sshd, X_OK) == 0 && access(keygen, X_OK) == 0 }

    init() throws {
        var template = Array("/tmp/ppool-soak-sshd-XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else { throw SoakSetupError("mkdtemp failed") }
        directory = String(decoding: template.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        _ = mkdir("/run/sshd", 0o755)
        for key in ["host_ed25519", "client"] {
            guard soakRun([SoakSSHD.keygen, "-q", "-t", "ed25519", "-N", "", "-f", directory + "/" + key]) == 0 else {
                throw SoakSetupError("ssh-keygen failed")
            }
        }
        try soakWriteFile(directory + "/authorized_keys", readTextFile(directory + "/client.pub") ?? "")
        port = try soakFreePort()
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
            MaxStartups 100
            LogLevel ERROR

            """
        try soakWriteFile(directory + "/sshd_config", config)
        pid = try soakSpawn([SoakSSHD.sshd, "-D", "-f", directory + "/sshd_config", "-e"], stderr: directory + "/sshd.log")
        let hostKey = (readTextFile(directory + "/host_ed25519.pub") ?? "").split(separator: " ")
        guard hostKey.count >= 2 else { throw SoakSetupError("ssh-keygen wrote no host key") }
        hostKeyFields = "\(hostKey[0]) \(hostKey[1])"
        try soakWriteFile(knownHosts, "[127.0.0.1]:\(port) \(hostKeyFields)\n")
        let deadline = soakNow() + 20
        while !soakPortOpen(port) {
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid {
                let log = readTextFile(directory + "/sshd.log") ?? ""
                _ = soakRun(["/bin/rm", "-rf", directory])
                throw SoakSetupError("sshd exited: \(log)")
            }
            if soakNow() > deadline {
                let log = readTextFile(directory + "/sshd.log") ?? ""
                stop()
                throw SoakSetupError("sshd did not start: \(log)")
            }
            usleep(5000)
        }
    }

    /// Trusts this server's host key on another port too (a relay in front of it).
    func trust(port other: Int) throws {
        try soakWriteFile(knownHosts, soakReadText(knownHosts) + "[127.0.0.1]:\(other) \(hostKeyFields)\n")
    }

    /// Options that use only this server's files; the worker uploaded is this
    /// program (its `main` bootstraps the test registry first).
    func options() -> SSHOptions {
        var options = SSHOptions()
        options.identityFiles = [clientKey]
        options.useAgent = false
        options.knownHostsFile = knownHosts
        options.globalKnownHostsFiles = []
        options.configFile = nil
        options.localExecutable = nil
        options.remoteCacheDirectory = cache
        options.connectTimeout = .seconds(20)
        return options
    }

    /// The per-connection sshd processes (children of the listener).
    func connectionProcesses() -> [pid_t] { soakProcesses().filter { $0.ppid == pid && $0.state != "Z" }.map(\.pid) }

    /// Every live process running an executable from this server's upload
    /// cache, or a command naming it (a worker's shell before its `exec`, an
    /// upload): the remote workers, orphaned ones included (a worker whose
    /// connection was cut is re-parented, and must still go away).
    func remoteWorkers() -> [pid_t] {
        let me = getpid()
        return soakProcesses().filter { process in
            guard process.state != "Z", process.pid != me else { return false }
            return soakReadLink("/proc/\(process.pid)/exe").hasPrefix(cache + "/")
                || soakReadText("/proc/\(process.pid)/cmdline").contains(cache + "/")
        }.map(\.pid)
    }

    /// Stops sshd (SIGTERM, reaped), kills what is left of its connections
    /// and removes the directory. Returns what went wrong, if anything.
    @discardableResult
    func stop() -> [String] {
        var problems: [String] = []
        _ = kill(pid, SIGTERM)
        var status: Int32 = 0
        var reaped = false
        for _ in 0..<500 {
            if waitpid(pid, &status, WNOHANG) == pid { reaped = true; break }
            usleep(10_000)
        }
        if !reaped {
            problems.append("sshd (pid \(pid)) did not stop on SIGTERM within 5 s")
            _ = kill(pid, SIGKILL)
            _ = waitpid(pid, &status, 0)
        }
        let leftovers = soakProcesses().filter { $0.state != "Z" && soakReadText("/proc/\($0.pid)/cmdline").contains(directory) }
        for process in leftovers { _ = kill(process.pid, SIGKILL) }
        let workers = remoteWorkers()
        if !workers.isEmpty { problems.append("remote workers \(workers) outlived sshd") }
        for worker in workers { _ = kill(worker, SIGKILL) }
        _ = soakRun(["/bin/rm", "-rf", directory])
        if access(directory, F_OK) == 0 { problems.append("\(directory) was not removed") }
        return problems
    }
}

// MARK: Helpers (posix_spawn, sockets, /proc)

func soakNow() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

/// posix_spawn with stdin from /dev/null and stdout/stderr to files (or /dev/null).
func soakSpawn(_ argv: [String], stderr: String? = nil) throws -> pid_t {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 2, stderr ?? "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    let cargs = argv.map { strdup($0) } + [nil]
    defer { for p in cargs { free(p) } }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, argv[0], &actions, nil, cargs, environ)
    guard rc == 0 else { throw SoakSetupError("cannot start \(argv[0]): \(rc)") }
    return pid
}

/// Runs a program to completion; its exit code (or -1).
@discardableResult
func soakRun(_ argv: [String]) -> Int32 {
    guard let pid = try? soakSpawn(argv) else { return -1 }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    return (status & 0x7f) == 0 ? (status >> 8) & 0xff : -1
}

func soakWriteFile(_ path: String, _ text: String) throws {
    guard let f = fopen(path, "w") else { throw SoakSetupError("cannot write \(path)") }
    fputs(text, f)
    fclose(f)
}

func soakReadText(_ path: String) -> String { readTextFile(path) ?? "" }

func soakReadLink(_ path: String) -> String {
    var buffer = [CChar](repeating: 0, count: 4096)
    let n = readlink(path, &buffer, buffer.count - 1)
    return n > 0 ? String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : ""
}

func soakLoopback(port: Int) -> sockaddr_in {
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = UInt16(port).bigEndian
    return address
}

func soakFreePort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    defer { close(fd) }
    var address = soakLoopback(port: 0)
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let ok = withUnsafeMutablePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
    }
    guard ok else { throw SoakSetupError("no free port") }
    return Int(UInt16(bigEndian: address.sin_port))
}

func soakPortOpen(_ port: Int) -> Bool {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    defer { close(fd) }
    var address = soakLoopback(port: port)
    return withUnsafePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
    }
}

/// (pid, ppid, state) of every process.
func soakProcesses() -> [(pid: pid_t, ppid: pid_t, state: Character)] {
    var result: [(pid_t, pid_t, Character)] = []
    guard let dir = opendir("/proc") else { return [] }
    defer { closedir(dir) }
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
        guard let pid = pid_t(name), let stat = readTextFile("/proc/\(name)/stat"), let close = stat.lastIndex(of: ")") else { continue }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 2, let ppid = pid_t(fields[1]) else { continue }
        result.append((pid, ppid, fields[0].first ?? "?"))
    }
    return result
}
