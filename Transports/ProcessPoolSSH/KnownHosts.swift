import CLibSSH2
import Glibc

/// Host-key checking against OpenSSH known_hosts files, with OpenSSH's rules
/// (hostfile.c, sshconnect.c), parsed and matched here (libssh2's matcher
/// ignores markers and tries the bare name for other ports):
/// - the name looked up is the host name lowercased, `[host]:port` off port
///   22 (only that: a key for the bare name does not count for another
///   port), or the `HostKeyAlias` as given;
/// - a line's host field is a comma list of patterns (`*`, `?`, `!negation`:
///   a negated match excludes the whole line) or one hashed `|1|salt|hash`;
/// - the user files are read, then the global ones (`/etc/ssh/ssh_known_hosts`);
/// - the key matches if any line for the name holds it; a line of the same
///   key type with another key makes it CHANGED (never new); a `@revoked`
///   line holding the key refuses it, checked last and final;
///   `@cert-authority` lines are ignored (no certificates here);
/// - new keys (`.acceptNew`) are appended by hand to the first user file,
///   never with libssh2's write-back (which drops lines it cannot parse).
package struct KnownHosts {
    /// The user file new keys go to (the first user file).
    package let path: String
    /// Files read, user files first.
    package let files: [String]
    package let host: String
    package let port: Int
    package let alias: String?
    /// The policy resolved from SSHOptions and ssh config (see ResolvedHost).
    package let policy: HostKeyPolicy

    /// One user file, plus the global files.
    package init(path: String, host: String, port: Int, globalFiles: [String] = SSHOptions.defaultGlobalKnownHostsFiles,
         alias: String? = nil, policy: HostKeyPolicy = .strict) {
        self.init(userFiles: [path], globalFiles: globalFiles, host: host, port: port, alias: alias, policy: policy)
    }

    package init(userFiles: [String], globalFiles: [String], host: String, port: Int, alias: String?, policy: HostKeyPolicy) {
        self.path = userFiles.first ?? SSHOptions.localHome + "/.ssh/known_hosts"
        self.files = userFiles + globalFiles
        self.host = host
        self.port = port
        self.alias = alias
        self.policy = policy
    }

    /// As a resolved host asks (its known_hosts files, alias and policy).
    init(host: ResolvedHost, options: SSHOptions) {
        self.init(userFiles: host.userKnownHostsFiles, globalFiles: host.globalKnownHostsFiles,
                  host: host.address, port: host.port, alias: host.hostKeyAlias, policy: host.hostKeyPolicy)
    }

    /// The known_hosts name of the host, as looked up and as appended.
    package var entryName: String {
        if let alias { return alias.lowercased() }
        return port == 22 ? host.lowercased() : "[\(host.lowercased())]:\(port)"
    }

    /// (libssh2 host-key type, algorithm name), preferred first.
    static let keyTypes: [(hostkey: Int32, algorithm: String)] = [
        (LIBSSH2_HOSTKEY_TYPE_ED25519, "ssh-ed25519"),
        (LIBSSH2_HOSTKEY_TYPE_ECDSA_256, "ecdsa-sha2-nistp256"),
        (LIBSSH2_HOSTKEY_TYPE_ECDSA_384, "ecdsa-sha2-nistp384"),
        (LIBSSH2_HOSTKEY_TYPE_ECDSA_521, "ecdsa-sha2-nistp521"),
        (LIBSSH2_HOSTKEY_TYPE_RSA, "ssh-rsa"),
    ]

    /// One parsed line.
    package struct Entry {
        package enum Marker { case none, revoked, certAuthority }
        package var marker: Marker
        package var hosts: String
        package var keyType: String
        package var key: [UInt8]
        package var file: String
        package var line: Int
        package var location: String { "\(file):\(line)" }
    }

    /// What the files say about a key.
    package enum Status {
        case match(Entry)
        case revoked(Entry)
        case changed([Entry])
        /// Keys of other types only.
        case otherTypes([String])
        case unknown
    }

    /// The lines of `text`; unparsable ones are skipped.
    package static func parse(_ text: String, file: String) -> [Entry] {
        var entries: [Entry] = []
        var number = 0
        for raw in text.split(separator: "\n", omittingEmptySubsequences: false) {
            number += 1
            var fields = raw.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" })
            guard let first = fields.first, !first.hasPrefix("#") else { continue }
            var marker = Entry.Marker.none
            if first.hasPrefix("@") {
                switch first.lowercased() {
                case "@revoked": marker = .revoked
                case "@cert-authority": marker = .certAuthority
                default: continue
                }
                fields.removeFirst()
            }
            guard fields.count >= 3, let key = Base64.decode(fields[2]) else { continue }
            var reader = SSHWireReader(bytes: key)
            guard let type = reader.string(), String(decoding: type, as: UTF8.self) == String(fields[1]) else { continue }
            entries.append(Entry(marker: marker, hosts: String(fields[0]), keyType: String(fields[1]), key: key, file: file, line: number))
        }
        return entries
    }

    /// OpenSSH's match_hostname: `name` (lowercased) against a host field.
    package static func hostMatches(_ name: String, _ field: String) -> Bool {
        let name = name.lowercased()
        if field.hasPrefix("|") { return hashedMatches(name, field) }
        var matched = false
        for pattern in field.lowercased().split(separator: ",") {
            if pattern.hasPrefix("!") {
                if SSHConfigFile.glob(Array(pattern.dropFirst()), Array(name)) { return false }
            } else if SSHConfigFile.glob(Array(pattern), Array(name)) {
                matched = true
            }
        }
        return matched
    }

    /// `|1|base64(salt)|base64(HMAC-SHA1(salt, name))`.
    package static func hashedMatches(_ name: String, _ field: String) -> Bool {
        let parts = field.split(separator: "|", omittingEmptySubsequences: false)
        guard parts.count == 4, parts[0].isEmpty, parts[1] == "1",
              let salt = Base64.decode(parts[2]), let hash = Base64.decode(parts[3]), hash.count == 20 else { return false }
        return hmacSHA1(key: salt, message: Array(name.utf8)) == hash
    }

    static func sha1(_ data: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 20)
        var length: UInt32 = 0
        _ = data.withUnsafeBytes { raw in EVP_Digest(raw.baseAddress, raw.count, &out, &length, EVP_sha1(), nil) }
        return out
    }

    package static func hmacSHA1(key: [UInt8], message: [UInt8]) -> [UInt8] {
        var block = key.count > 64 ? sha1(key) : key
        block += [UInt8](repeating: 0, count: 64 - block.count)
        let inner = sha1(block.map { $0 ^ 0x36 } + message)
        return sha1(block.map { $0 ^ 0x5c } + inner)
    }

    /// The lines of every file that name this host.
    package func entries() -> [Entry] {
        var all: [Entry] = []
        for file in files {
            guard let text = readTextFile(file) else { continue }
            all += KnownHosts.parse(text, file: file).filter { KnownHosts.hostMatches(entryName, $0.hosts) }
        }
        return all
    }

    /// OpenSSH's verdict on `key` (a public key blob) given `entries`.
    package static func check(key: [UInt8], entries: [Entry]) -> Status {
        var reader = SSHWireReader(bytes: key)
        let type = reader.string().map { String(decoding: $0, as: UTF8.self) } ?? ""
        var result = Status.unknown
        var changed: [Entry] = []
        var others: [String] = []
        for entry in entries where entry.marker == .none {
            if entry.key == key {
                result = .match(entry)
                break
            }
            if entry.keyType == type { changed.append(entry) } else if !others.contains(entry.keyType) { others.append(entry.keyType) }
        }
        if case .unknown = result {
            if !changed.isEmpty { result = .changed(changed) } else if !others.isEmpty { result = .otherTypes(others) }
        }
        if let revoked = entries.first(where: { $0.marker == .revoked && $0.key == key }) { return .revoked(revoked) }
        return result
    }

    /// The host-key algorithms known_hosts holds for this host, preferred
    /// first: libssh2 must ask for one of those, or a host with several keys
    /// looks "changed".
    package func knownAlgorithms(_ session: OpaquePointer? = nil) -> [String] {
        let known = Set(entries().filter { $0.marker == .none }.map(\.keyType))
        return KnownHosts.keyTypes.map(\.algorithm).filter { known.contains($0) }
    }

    /// Checks the key the server presented after the handshake.
    func verify(_ session: OpaquePointer, policy: HostKeyPolicy, label: String) throws {
        var length = 0
        var type: Int32 = 0
        guard let raw = libssh2_session_hostkey(session, &length, &type) else {
            throw SSHError.hostKey(host: label, "the server presented no host key")
        }
        let key = Array(UnsafeRawBufferPointer(start: raw, count: length))
        guard policy != .insecureAcceptAny else { return }
        try verify(key: key, fingerprint: KnownHosts.fingerprint(session), policy: policy, label: label)
    }

    /// Checks a public key blob (the part testable without a session).
    package func verify(key: [UInt8], fingerprint: String, policy: HostKeyPolicy, label: String) throws {
        guard policy != .insecureAcceptAny else { return }
        var reader = SSHWireReader(bytes: key)
        let algorithm = reader.string().map { String(decoding: $0, as: UTF8.self) } ?? "?"
        let where_ = files.joined(separator: ", ")
        switch KnownHosts.check(key: key, entries: entries()) {
        case .match:
            return
        case .revoked(let entry):
            throw SSHError.hostKey(host: label, """
                the \(algorithm) key \(fingerprint) is REVOKED (@revoked at \(entry.location)): refusing to connect
                """)
        case .changed(let entries):
            throw SSHError.hostKey(host: label, """
                the host key has CHANGED: the \(algorithm) key \(fingerprint) does not match \
                \(entries.map(\.location).joined(separator: ", ")). Someone may be intercepting the connection. \
                If the host was reinstalled, remove the old key (ssh-keygen -R '\(entryName)' -f \(entries[0].file)) and connect again
                """)
        case .otherTypes(let types):
            throw SSHError.hostKey(host: label, """
                the host presented a \(algorithm) key \(fingerprint), but known_hosts (\(where_)) holds only \
                \(types.joined(separator: ", ")) keys for '\(entryName)': refusing it (add it by hand if the host really has it)
                """)
        case .unknown where policy == .acceptNew:
            try append(algorithm: algorithm, key: key, label: label)
        case .unknown:
            throw SSHError.hostKey(host: label, """
                the host key is unknown (\(algorithm) \(fingerprint) for '\(entryName)' is not in \(where_)). \
                Check the fingerprint and add it (ssh-keyscan -p \(port) \(host) >> \(path), or connect once \
                with ssh), or use hostKeyPolicy .acceptNew
                """)
        }
    }

    /// Appends "name algorithm base64" to the user file (creating it, and
    /// its directory, as OpenSSH does).
    package func append(algorithm: String, key: [UInt8], label: String) throws {
        if let slash = path.lastIndex(of: "/"), slash != path.startIndex {
            _ = mkdir(String(path[..<slash]), 0o700)
        }
        let fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw SSHError.hostKey(host: label, "cannot add the host key to \(path): \(SystemErrorText())")
        }
        defer { close(fd) }
        var line = "\(entryName) \(algorithm) \(Base64.encode(key))\n"
        if let existing = readFileBytes(path), let last = existing.last, last != UInt8(ascii: "\n") {
            line = "\n" + line
        }
        let bytes = Array(line.utf8)
        guard write(fd, bytes, bytes.count) == bytes.count else {
            throw SSHError.hostKey(host: label, "cannot add the host key to \(path): \(SystemErrorText())")
        }
    }

    /// "SHA256:..." as OpenSSH prints it.
    static func fingerprint(_ session: OpaquePointer) -> String {
        guard let hash = libssh2_hostkey_hash(session, LIBSSH2_HOSTKEY_HASH_SHA256) else { return "(no fingerprint)" }
        let bytes = Array(UnsafeRawBufferPointer(start: hash, count: 32))
        var text = Base64.encode(bytes)
        while text.hasSuffix("=") { text.removeLast() }
        return "SHA256:" + text
    }
}

/// strerror(errno).
func SystemErrorText() -> String { String(cString: strerror(errno)) }
