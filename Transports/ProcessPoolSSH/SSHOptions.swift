import Glibc

/// How the `ssh` start method connects, authenticates and runs workers.
public struct SSHOptions: Sendable {
    /// Private key files to try, in order. Default: `~/.ssh/id_ed25519` and
    /// `~/.ssh/id_ecdsa`, those that exist. RSA keys are refused by servers
    /// of OpenSSH 8.8+ with this libssh2 (it lacks rsa-sha2-*): use ed25519.
    public var identityFiles: [String]
    /// The passphrase for encrypted key files; nil: encrypted keys are skipped
    /// with an error that says so.
    public var passphrase: String?
    /// Try the keys of an ssh-agent reached through `SSH_AUTH_SOCK` (default true).
    public var useAgent: Bool
    /// The user known_hosts file host keys are checked against (default
    /// `~/.ssh/known_hosts`), before the global `/etc/ssh/ssh_known_hosts`.
    /// Set here, it wins over the ssh config's `UserKnownHostsFile`.
    public var knownHostsFile: String { didSet { knownHostsFileGiven = true } }
    /// What to do with unknown and changed host keys (default `.strict`).
    /// Set here, it wins over the ssh config's `StrictHostKeyChecking`.
    public var hostKeyPolicy: HostKeyPolicy { didSet { hostKeyPolicyGiven = true } }
    /// Whether the program set `knownHostsFile` / `hostKeyPolicy` (then the
    /// ssh config does not override them, as ssh's -o beats its config).
    var knownHostsFileGiven = false
    var hostKeyPolicyGiven = false
    /// The global known_hosts files, read after the user's (tests override it).
    package var globalKnownHostsFiles: [String] = SSHOptions.defaultGlobalKnownHostsFiles
    package static let defaultGlobalKnownHostsFiles = ["/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2"]
    /// How the worker executable gets to the hosts (default `.upload`).
    public var remoteWorker: RemoteWorker
    /// The limit for each step of reaching a host (default 10 s): connecting
    /// with its handshake and authentication; each set-up command. Shipping
    /// the worker is bounded by progress instead: it fails only when no byte
    /// moved for this long, so a big executable on a slow link still gets there.
    public var connectTimeout: Duration
    /// Keepalive period (default 5 s); a host silent for three periods is lost.
    public var keepaliveInterval: Duration
    /// The ssh client configuration (default `~/.ssh/config`; nil: none):
    /// `Host` blocks, `Include`, `HostName`, `User`, `Port`, `IdentityFile`,
    /// `IdentitiesOnly`, `IdentityAgent`, `HostKeyAlias`, `UserKnownHostsFile`,
    /// `GlobalKnownHostsFile`, `StrictHostKeyChecking`. `Match`, `ProxyJump`,
    /// `ProxyCommand` and other directives that change where or how we would
    /// connect make connecting fail, naming the file and line.
    public var configFile: String?
    /// The executable `.upload` copies; nil: this program (`/proc/self/exe`).
    /// Its `main` must call `ProcessPoolExecutor.bootstrap` with the pool's tasks.
    public var localExecutable: String?
    /// Where `.upload` caches executables on the hosts (a shell word; `~` and
    /// `$HOME` are the remote home). Default `$HOME/.cache/swift-processpool`.
    public var remoteCacheDirectory: String
    /// The SHA-256 tools looked for on a host, in order: `probe` is the
    /// command name, `command` reads stdin and prints the hex digest (a
    /// leading `NAME= ` is stripped). Tests replace it to simulate a host
    /// without one.
    package var remoteHashTools: [(probe: String, command: String)] = [
        ("sha256sum", "sha256sum"), ("shasum", "shasum -a 256"), ("openssl", "openssl dgst -sha256"),
    ]

    /// The defaults described on each property.
    public init() {
        let home = SSHOptions.localHome
        identityFiles = ["id_ed25519", "id_ecdsa"].map { home + "/.ssh/" + $0 }.filter { access($0, R_OK) == 0 }
        passphrase = nil
        useAgent = true
        knownHostsFile = home + "/.ssh/known_hosts"
        hostKeyPolicy = .strict
        remoteWorker = .upload
        connectTimeout = .seconds(10)
        keepaliveInterval = .seconds(5)
        configFile = home + "/.ssh/config"
        localExecutable = nil
        remoteCacheDirectory = "$HOME/.cache/swift-processpool"
    }

    /// `connectTimeout` in nanoseconds (at least 1 ms).
    var connectTimeoutNanos: UInt64 {
        let (seconds, attoseconds) = connectTimeout.components
        return max(1_000_000, UInt64(max(0, seconds)) &* 1_000_000_000 &+ UInt64(max(0, attoseconds / 1_000_000_000)))
    }

    /// `$HOME`, else the passwd entry's home directory.
    package static var localHome: String {
        if let home = getenv("HOME"), home.pointee != 0 { return String(cString: home) }
        if let entry = getpwuid(getuid()), let dir = entry.pointee.pw_dir { return String(cString: dir) }
        return "/"
    }

    /// The local user's login name.
    package static var localUser: String {
        if let entry = getpwuid(getuid()), let name = entry.pointee.pw_name { return String(cString: name) }
        if let user = getenv("USER") { return String(cString: user) }
        return "root"
    }
}

/// How host keys are checked against the known_hosts file.
public enum HostKeyPolicy: Sendable {
    /// Refuse hosts whose key is unknown or changed (the default, like
    /// OpenSSH's `StrictHostKeyChecking yes`).
    case strict
    /// Add unknown hosts' keys to known_hosts; refuse changed keys.
    case acceptNew
    /// Accept any key: for throwaway test machines only.
    case insecureAcceptAny
}

/// How the worker executable reaches the hosts.
public enum RemoteWorker: Sendable {
    /// Copy this executable to the host (once, cached by its SHA-256) and run it.
    /// Build with `--static-swift-stdlib` so the hosts need no Swift installed.
    case upload
    /// Run an executable already on the host; its `main` must call
    /// `ProcessPoolExecutor.bootstrap` with the pool's tasks.
    case path(String)
}
