/// One machine of a farm: where to reach it and how many workers it runs.
public struct SSHHost: Sendable, Hashable, CustomStringConvertible {
    /// The host name or address (after `~/.ssh/config`'s `HostName`, when the
    /// pool connects).
    public var hostname: String
    /// The ssh port; 22 unless given (or set by `~/.ssh/config`).
    public var port: Int
    /// The login name; nil: `~/.ssh/config`'s `User`, else the local user.
    public var user: String?
    /// Worker slots on this host.
    public var workers: Int
    /// Whether `port` was given explicitly (then `~/.ssh/config` does not override it).
    var portGiven: Bool

    /// Parses "host", "user@host", "user@host:port" or "user@[v6addr]:port";
    /// `workers` is the number of worker slots on this host (at least 1).
    ///
    /// ```swift
    /// let host = try SSHHost("alice@node1:2222", workers: 8)
    /// ```
    ///
    /// - Parameters:
    ///   - destination: "host", "user@host", "user@host:port" or
    ///     "user@[v6addr]:port". Without a user or port, `~/.ssh/config` or
    ///     the defaults (the local user, port 22) apply when the pool connects.
    ///   - workers: Worker slots on this host, at least 1.
    /// - Throws: ``SSHError/invalidDestination(_:_:)`` for a `workers` below
    ///   1, an empty user or host name, a bad or out-of-range port, or a
    ///   missing `]`.
    public init(_ destination: String, workers: Int = 1) throws {
        guard workers >= 1 else {
            throw SSHError.invalidDestination(destination, "workers must be at least 1 (got \(workers))")
        }
        var rest = Substring(destination)
        var user: String?
        if let at = rest.lastIndex(of: "@") {
            user = String(rest[..<at])
            rest = rest[rest.index(after: at)...]
            if user!.isEmpty { throw SSHError.invalidDestination(destination, "empty user name") }
        }
        var host = rest
        var port = 22
        var portGiven = false
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else {
                throw SSHError.invalidDestination(destination, "missing ']'")
            }
            host = rest[rest.index(after: rest.startIndex)..<close]
            let after = rest[rest.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":"), let p = Int(after.dropFirst()) else {
                    throw SSHError.invalidDestination(destination, "bad port")
                }
                port = p
                portGiven = true
            }
        } else if let colon = rest.lastIndex(of: ":"), rest.firstIndex(of: ":") == colon {
            host = rest[..<colon]
            guard let p = Int(rest[rest.index(after: colon)...]) else {
                throw SSHError.invalidDestination(destination, "bad port")
            }
            port = p
            portGiven = true
        }
        guard !host.isEmpty else { throw SSHError.invalidDestination(destination, "empty host name") }
        guard (1...65535).contains(port) else { throw SSHError.invalidDestination(destination, "port out of range") }
        self.hostname = String(host)
        self.port = port
        self.user = user
        self.workers = workers
        self.portGiven = portGiven
    }

    /// "user@host:port" (user and port when known).
    public var description: String {
        (user.map { $0 + "@" } ?? "") + hostname + ":\(port)"
    }
}
