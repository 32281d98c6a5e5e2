import CLibSSH2
import Glibc

/// Host-key checking against an OpenSSH known_hosts file (hashed entries
/// included), done with libssh2's matcher but never its write-back (which
/// drops lines it cannot parse): new keys are appended by hand.
struct KnownHosts {
    let path: String
    let host: String
    let port: Int

    /// The known_hosts name of the host: "host", or "[host]:port" off port 22.
    var entryName: String { port == 22 ? host : "[\(host)]:\(port)" }

    /// (libssh2 host-key type, knownhost key mask, algorithm name)
    static let keyTypes: [(hostkey: Int32, mask: Int32, algorithm: String)] = [
        (LIBSSH2_HOSTKEY_TYPE_ED25519, LIBSSH2_KNOWNHOST_KEY_ED25519, "ssh-ed25519"),
        (LIBSSH2_HOSTKEY_TYPE_ECDSA_256, LIBSSH2_KNOWNHOST_KEY_ECDSA_256, "ecdsa-sha2-nistp256"),
        (LIBSSH2_HOSTKEY_TYPE_ECDSA_384, LIBSSH2_KNOWNHOST_KEY_ECDSA_384, "ecdsa-sha2-nistp384"),
        (LIBSSH2_HOSTKEY_TYPE_ECDSA_521, LIBSSH2_KNOWNHOST_KEY_ECDSA_521, "ecdsa-sha2-nistp521"),
        (LIBSSH2_HOSTKEY_TYPE_RSA, LIBSSH2_KNOWNHOST_KEY_SSHRSA, "ssh-rsa"),
    ]

    /// Loads the file into a libssh2 matcher line by line, skipping lines it
    /// cannot parse (its own reader stops at the first one).
    private func withMatcher<R>(_ session: OpaquePointer, _ body: (OpaquePointer) -> R) -> R? {
        guard let hosts = libssh2_knownhost_init(session) else { return nil }
        defer { libssh2_knownhost_free(hosts) }
        if let text = readTextFile(path) {
            for line in text.split(separator: "\n") {
                let trimmed = line.drop(while: { $0 == " " || $0 == "\t" })
                if trimmed.isEmpty || trimmed.hasPrefix("#") || trimmed.hasPrefix("@") { continue }
                let entry = String(trimmed)
                _ = libssh2_knownhost_readline(hosts, entry, entry.utf8.count, LIBSSH2_KNOWNHOST_FILE_OPENSSH)
            }
        }
        return body(hosts)
    }

    /// The host-key algorithms known_hosts holds for this host, preferred
    /// first: libssh2 must ask for one of those, or a host with several keys
    /// looks "changed". Probed with a dummy key: a mismatch means an entry
    /// of that type exists.
    func knownAlgorithms(_ session: OpaquePointer) -> [String] {
        withMatcher(session) { hosts in
            KnownHosts.keyTypes.filter { type in
                let dummy: [UInt8] = [0x78]
                let rc = dummy.withUnsafeBufferPointer { buf in
                    libssh2_knownhost_checkp(hosts, host, Int32(port), UnsafeRawPointer(buf.baseAddress!).assumingMemoryBound(to: CChar.self), 1,
                                             LIBSSH2_KNOWNHOST_TYPE_PLAIN | LIBSSH2_KNOWNHOST_KEYENC_RAW | type.mask, nil)
                }
                return rc == LIBSSH2_KNOWNHOST_CHECK_MISMATCH
            }.map(\.algorithm)
        } ?? []
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
        guard let kind = KnownHosts.keyTypes.first(where: { $0.hostkey == type }) else {
            throw SSHError.hostKey(host: label, "unsupported host key type \(type)")
        }
        let rc = withMatcher(session) { hosts in
            libssh2_knownhost_checkp(hosts, host, Int32(port), raw, length,
                                     LIBSSH2_KNOWNHOST_TYPE_PLAIN | LIBSSH2_KNOWNHOST_KEYENC_RAW | kind.mask, nil)
        } ?? LIBSSH2_KNOWNHOST_CHECK_FAILURE
        let fingerprint = KnownHosts.fingerprint(session)
        switch rc {
        case LIBSSH2_KNOWNHOST_CHECK_MATCH:
            return
        case LIBSSH2_KNOWNHOST_CHECK_MISMATCH:
            throw SSHError.hostKey(host: label, """
                the host key has CHANGED: the \(kind.algorithm) key \(fingerprint) does not match \(path). \
                Someone may be intercepting the connection. If the host was reinstalled, remove the old key \
                (ssh-keygen -R '\(entryName)' -f \(path)) and connect again
                """)
        case LIBSSH2_KNOWNHOST_CHECK_NOTFOUND where policy == .acceptNew:
            try append(algorithm: kind.algorithm, key: key, label: label)
        case LIBSSH2_KNOWNHOST_CHECK_NOTFOUND:
            throw SSHError.hostKey(host: label, """
                the host key is unknown (\(kind.algorithm) \(fingerprint) is not in \(path)). \
                Check the fingerprint and add it (ssh-keyscan -p \(port) \(host) >> \(path), or connect once \
                with ssh), or use hostKeyPolicy .acceptNew
                """)
        default:
            throw SSHError.hostKey(host: label, "could not check the host key against \(path)")
        }
    }

    /// Appends "name algorithm base64" to the file (creating it, and its
    /// directory, as OpenSSH does).
    private func append(algorithm: String, key: [UInt8], label: String) throws {
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
