// A throwaway sshd on loopback for the ssh tests (SSHDFixture) and pool-soak
// (SoakSSHD), and the process and socket helpers it is built on. This
// library does not link ProcessPoolSSH (PoolTestWorker would carry libssh2),
// so the SSHOptions that use a server's files are made by those two.
import Glibc

/// A throwaway `sshd` on 127.0.0.1: its own host key, client keys, config
/// and known_hosts in a temporary directory. `stop()` stops it and removes
/// the directory.
open class LoopbackSSHD: @unchecked Sendable {
    public let directory: String
    public let port: Int
    public let pid: pid_t
    /// "ssh-ed25519 AAAA...": the host key as known_hosts lists it.
    public let hostKeyFields: String
    /// The key `authorized_keys` lists.
    public var clientKey: String { directory + "/client" }
    /// A key the server does not accept.
    public var strangerKey: String { directory + "/stranger" }
    public var knownHosts: String { directory + "/known_hosts" }
    /// Where pools upload their worker: inside `directory`.
    public var cache: String { directory + "/cache" }

    public static let sshd = "/usr/sbin/sshd"
    public static let keygen = "/usr/bin/ssh-keygen"

    /// Whether sshd and ssh-keygen are installed.
    public static var isInstalled: Bool { access(sshd, X_OK) == 0 && access(keygen, X_OK) == 0 }

    /// Starts the server and waits (up to 20 s) until it accepts connections.
    /// - Parameter directoryPrefix: The temporary directory's name in /tmp, before its random suffix.
    public init(directoryPrefix: String = "ppool-sshd") throws {
        var template = Array("/tmp/\(directoryPrefix)-XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else { throw FixtureError("mkdtemp failed") }
        directory = String(decoding: template.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        _ = mkdir("/run/sshd", 0o755)
        for key in ["host_ed25519", "client", "stranger"] {
            guard run([LoopbackSSHD.keygen, "-q", "-t", "ed25519", "-N", "", "-f", directory + "/" + key]) == 0 else {
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
            MaxStartups 100
            LogLevel ERROR

            """
        try writeFile(directory + "/sshd_config", config)
        pid = try spawn([LoopbackSSHD.sshd, "-D", "-f", directory + "/sshd_config", "-e"], stderr: directory + "/sshd.log")
        let hostKey = readText(directory + "/host_ed25519.pub").split(separator: " ")
        guard hostKey.count >= 2 else { throw FixtureError("ssh-keygen wrote no host key") }
        hostKeyFields = "\(hostKey[0]) \(hostKey[1])"
        try writeFile(knownHosts, "[127.0.0.1]:\(port) \(hostKeyFields)\n")
        let deadline = monotonicNow() + 20
        while !portOpen(port) {
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid {
                let log = readText(directory + "/sshd.log")
                _ = run(["/bin/rm", "-rf", directory])
                throw FixtureError("sshd exited: \(log)")
            }
            if monotonicNow() > deadline {
                let log = readText(directory + "/sshd.log")
                stop()
                throw FixtureError("sshd did not start: \(log)")
            }
            usleep(5000)
        }
    }

    /// A known_hosts line for this server with the key in `hostKey` (a .pub file).
    public func knownHostsLine(hostKey: String) -> String {
        let fields = readText(hostKey).split(separator: " ")
        return "[127.0.0.1]:\(port) \(fields[0]) \(fields[1])\n"
    }

    /// Trusts this server's host key on another port too (a relay in front of it).
    public func trust(port other: Int) throws {
        try writeFile(knownHosts, readText(knownHosts) + "[127.0.0.1]:\(other) \(hostKeyFields)\n")
    }

    /// The per-connection sshd processes (children of the listener).
    public func connectionProcesses() -> [pid_t] { processes().filter { $0.ppid == pid }.map(\.pid) }

    /// Worker processes serving over this server's connections.
    open func remoteWorkers() -> [pid_t] { remoteWorkers(listener: pid) }

    /// Worker processes serving over the connections of the sshd `listener`
    /// (this server's, or one restarted on its configuration).
    public func remoteWorkers(listener: pid_t) -> [pid_t] {
        let all = processes()
        let sessions = Set(all.filter { $0.ppid == listener }.map(\.pid))
        // sshd's per-connection process forks a per-user child on privilege separation.
        let inner = sessions.union(all.filter { sessions.contains($0.ppid) }.map(\.pid))
        return all.filter {
            inner.contains($0.ppid) && readText("/proc/\($0.pid)/environ").contains("SWIFT_PROCESSPOOL_ROLE=worker:1:stdio:0")
        }.map(\.pid)
    }

    /// Every live process running an executable from the upload cache, or a
    /// command naming it (a worker's shell before its `exec`, an upload),
    /// wherever its parent is: orphaned workers too (a worker whose
    /// connection was cut is re-parented, and must still go away).
    public func uploadedProcesses() -> [pid_t] {
        let me = getpid()
        return processes().filter { process in
            process.pid != me && (readLink("/proc/\(process.pid)/exe").hasPrefix(cache + "/")
                || readText("/proc/\(process.pid)/cmdline").contains(cache + "/"))
        }.map(\.pid)
    }

    /// Stops sshd (SIGTERM, reaped; SIGKILL after 5 s), kills what is left of
    /// its connections and uploads, and removes the directory. Returns what
    /// went wrong, if anything.
    @discardableResult
    public func stop() -> [String] {
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
        let me = getpid()
        for process in processes() where process.pid != me && readText("/proc/\(process.pid)/cmdline").contains(directory) {
            _ = kill(process.pid, SIGKILL)
        }
        let workers = uploadedProcesses()
        if !workers.isEmpty { problems.append("remote workers \(workers) outlived sshd") }
        for worker in workers { _ = kill(worker, SIGKILL) }
        _ = run(["/bin/rm", "-rf", directory])
        if access(directory, F_OK) == 0 { problems.append("\(directory) was not removed") }
        return problems
    }
}

// MARK: Helpers (posix_spawn, files, sockets, /proc)

public struct FixtureError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// CLOCK_MONOTONIC in seconds.
public func monotonicNow() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

/// posix_spawn with stdin from /dev/null and stdout/stderr to files (or
/// /dev/null); returns the pid.
public func spawn(_ argv: [String], stderr: String? = nil, stdout: String? = nil) throws -> pid_t {
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
public func run(_ argv: [String]) -> Int32 {
    guard let pid = try? spawn(argv) else { return -1 }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    return (status & 0x7f) == 0 ? (status >> 8) & 0xff : -1
}

/// A file's text ("" if it cannot be read), NULs shown as spaces.
public func readText(_ path: String) -> String { readTextFile(path) ?? "" }

public func writeFile(_ path: String, _ text: String) throws {
    guard let f = fopen(path, "w") else { throw FixtureError("cannot write \(path)") }
    fputs(text, f)
    fclose(f)
}

public func copyFile(_ from: String, to: String) throws { try writeFile(to, readText(from)) }

/// Where a symbolic link points ("" if it cannot be read).
public func readLink(_ path: String) -> String {
    var buffer = [CChar](repeating: 0, count: 4096)
    let n = readlink(path, &buffer, buffer.count - 1)
    return n > 0 ? String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : ""
}

/// A port on 127.0.0.1 that nothing listens on now.
public func freePort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    defer { close(fd) }
    guard let port = bindLoopback(fd) else { throw FixtureError("no free port") }
    return port
}

/// Whether something accepts connections on 127.0.0.1:`port`.
public func portOpen(_ port: Int) -> Bool {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    defer { close(fd) }
    return connectLoopback(fd, port: port)
}

/// (pid, ppid) of every live process (zombies left out).
public func processes() -> [(pid: pid_t, ppid: pid_t)] {
    var result: [(pid_t, pid_t)] = []
    guard let dir = opendir("/proc") else { return [] }
    defer { closedir(dir) }
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
        guard let pid = pid_t(name), let stat = readTextFile("/proc/\(name)/stat"), let close = stat.lastIndex(of: ")") else { continue }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 2, let ppid = pid_t(fields[1]), fields[0] != "Z" else { continue }
        result.append((pid, ppid))
    }
    return result
}

private func loopback(port: Int) -> sockaddr_in {
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = UInt16(port).bigEndian
    return address
}

/// Binds `fd` to a free port on 127.0.0.1; the port, or nil.
func bindLoopback(_ fd: Int32) -> Int? {
    var address = loopback(port: 0)
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let ok = withUnsafeMutablePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
    }
    return ok ? Int(UInt16(bigEndian: address.sin_port)) : nil
}

/// Connects `fd` to 127.0.0.1:`port` (blocking); whether it worked.
func connectLoopback(_ fd: Int32, port: Int) -> Bool {
    var address = loopback(port: port)
    return withUnsafePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
    }
}
