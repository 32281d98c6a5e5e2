import Glibc

/// A host after `~/.ssh/config`: the address, port, user, keys and host-key
/// checking to use.
package struct ResolvedHost: Sendable {
    package var address: String
    package var port: Int
    package var user: String
    package var identityFiles: [String]
    package var workers: Int
    /// The host name as given (the config's `Host` patterns match it).
    package var originalName: String
    /// `IdentitiesOnly yes`: offer only the identity files (and their
    /// copies in the agent), no other agent key.
    package var identitiesOnly = false
    /// Whether to use an agent, and its socket (nil: `SSH_AUTH_SOCK`).
    package var useAgent = true
    package var agentSocket: String?
    /// The name looked up in known_hosts instead of the host's (`HostKeyAlias`).
    package var hostKeyAlias: String?
    /// The user known_hosts files, the first one taking new keys.
    package var userKnownHostsFiles: [String] = []
    /// The global known_hosts files (`GlobalKnownHostsFile`, else the options').
    package var globalKnownHostsFiles: [String] = SSHOptions.defaultGlobalKnownHostsFiles
    package var hostKeyPolicy: HostKeyPolicy = .strict
    /// Why the ssh config cannot be used for this host (names the file:line).
    package var configError: String?

    /// "user@host:port", as errors and logs name the host.
    package var label: String {
        if let configError { return "\(originalName) (ssh config: \(configError))" }
        return "\(user)@\(address):\(port)"
    }

    /// Resolves `host`; an unusable ssh config throws, naming the directive
    /// and its file:line.
    package init(resolving host: SSHHost, options: SSHOptions) throws {
        self.init(host, options: options)
        if let configError { throw SSHError.failed(host: originalName, "ssh config: \(configError)") }
    }

    /// Resolves `host`; an unusable ssh config is recorded in `configError`
    /// and makes the address unresolvable (`.invalid`), so that connecting
    /// fails closed with the reason in the label.
    package init(_ host: SSHHost, options: SSHOptions) {
        originalName = host.hostname
        workers = host.workers
        let settings: SSHConfigFile.Settings
        do {
            settings = try SSHConfigFile(path: options.configFile).resolve(host.hostname)
        } catch {
            configError = error.description
            settings = SSHConfigFile.Settings()
        }
        let hostname = settings.hostname.map {
            expandTokens($0, host: host.hostname, port: 0, remoteUser: "", originalHost: host.hostname, tokens: "%h")
        } ?? host.hostname
        address = configError == nil ? hostname : "ssh-config-error.invalid"
        port = host.portGiven ? host.port : (settings.port ?? host.port)
        user = host.user ?? settings.user ?? SSHOptions.localUser
        let expand = { [address, port, user] (path: String) in
            expandTokens(path, host: address, port: port, remoteUser: user, originalHost: host.hostname)
        }
        var files = settings.identityFiles.map(expand)
        for file in options.identityFiles.map(expandTilde) where !files.contains(file) { files.append(file) }
        identityFiles = files
        identitiesOnly = settings.identitiesOnly ?? false
        useAgent = options.useAgent
        if let agent = settings.identityAgent {
            if agent.lowercased() == "none" {
                useAgent = false
            } else if agent != "SSH_AUTH_SOCK" && agent != "$SSH_AUTH_SOCK" {
                agentSocket = agent.hasPrefix("$") ? getenvString(String(agent.dropFirst())) : expand(agent)
            }
        }
        hostKeyAlias = settings.hostKeyAlias
        if !options.knownHostsFileGiven, let files = settings.userKnownHostsFiles {
            userKnownHostsFiles = files.lowercased() == ["none"] ? [] : files.map(expand)
        } else {
            userKnownHostsFiles = [expandTilde(options.knownHostsFile)]
        }
        if let files = settings.globalKnownHostsFiles {
            globalKnownHostsFiles = files.lowercased() == ["none"] ? [] : files.map(expand)
        } else {
            globalKnownHostsFiles = options.globalKnownHostsFiles
        }
        hostKeyPolicy = options.hostKeyPolicy
        if !options.hostKeyPolicyGiven, let strict = settings.strictHostKeyChecking {
            hostKeyPolicy = ResolvedHost.policy(strictHostKeyChecking: strict)
        }
    }

    /// `StrictHostKeyChecking` as a policy: `yes` and `ask` (we cannot ask)
    /// are `.strict`; `accept-new` is `.acceptNew`; `no`/`off` are
    /// `.acceptNew` too: unlike ssh, a changed key is never accepted because
    /// of a config file (only `SSHOptions.hostKeyPolicy = .insecureAcceptAny`
    /// in code does that).
    package static func policy(strictHostKeyChecking value: String) -> HostKeyPolicy {
        switch value.lowercased() {
        case "accept-new", "no", "off": return .acceptNew
        default: return .strict
        }
    }
}

extension Array where Element == String {
    fileprivate func lowercased() -> [String] { map { $0.lowercased() } }
}

/// An environment variable's value, or nil.
func getenvString(_ name: String) -> String? {
    guard let value = getenv(name) else { return nil }
    return String(cString: value)
}
