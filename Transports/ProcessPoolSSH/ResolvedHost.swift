/// A host after `~/.ssh/config`: the address, port, user and keys to use.
struct ResolvedHost: Sendable {
    var address: String
    var port: Int
    var user: String
    var identityFiles: [String]
    var workers: Int

    /// "user@host:port", as errors and logs name the host.
    var label: String { "\(user)@\(address):\(port)" }

    init(_ host: SSHHost, options: SSHOptions) {
        let config = SSHConfigFile(path: options.configFile).resolve(host.hostname)
        address = config.hostname ?? host.hostname
        port = host.portGiven ? host.port : (config.port ?? host.port)
        user = host.user ?? config.user ?? SSHOptions.localUser
        var files = config.identityFiles
        for file in options.identityFiles.map(expandTilde) where !files.contains(file) { files.append(file) }
        identityFiles = files
        workers = host.workers
    }
}
