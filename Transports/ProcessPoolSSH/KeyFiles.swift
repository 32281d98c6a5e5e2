/// What a private key file is, read before libssh2 tries it, so that an
/// encrypted key without a passphrase or an RSA key gets a clear error
/// instead of libssh2's generic one, and so that its copy in an agent can
/// be recognised (by public key blob).
struct KeyFileInfo {
    var isEncrypted: Bool
    var isRSA: Bool
    /// The public key blob: from an "openssh-key-v1" file's header (clear
    /// even when the key is encrypted), else from `path.pub`.
    var publicKey: [UInt8]?

    /// Inspects an OpenSSH ("openssh-key-v1") or PEM private key; nil if unreadable.
    init?(path: String) {
        guard let text = readTextFile(path) else { return nil }
        publicKey = nil
        if text.contains("BEGIN OPENSSH PRIVATE KEY") {
            let body = text.split(separator: "\n").filter { !$0.hasPrefix("-----") }.joined()
            guard let blob = Base64.decode(Substring(body)) else { return nil }
            let magic = Array("openssh-key-v1".utf8) + [0]
            guard blob.starts(with: magic) else { return nil }
            var reader = SSHWireReader(bytes: blob, offset: magic.count)
            let cipher = reader.string().map { String(decoding: $0, as: UTF8.self) } ?? "none"
            _ = reader.string()  // kdf name
            _ = reader.string()  // kdf options
            reader.offset += 4  // key count
            var keyType = ""
            if let key = reader.string() {
                var inner = SSHWireReader(bytes: key)
                keyType = inner.string().map { String(decoding: $0, as: UTF8.self) } ?? ""
                publicKey = key
            }
            isEncrypted = cipher != "none"
            isRSA = keyType == "ssh-rsa"
        } else {
            isEncrypted = text.contains("ENCRYPTED")
            isRSA = text.contains("BEGIN RSA PRIVATE KEY")
        }
        if publicKey == nil { publicKey = KeyFileInfo.publicKey(fromPubFile: path + ".pub") }
    }

    /// The blob of an OpenSSH public key file ("type base64 comment").
    static func publicKey(fromPubFile path: String) -> [UInt8]? {
        guard let text = readTextFile(path) else { return nil }
        let fields = text.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" })
        guard fields.count >= 2 else { return nil }
        return Base64.decode(fields[1])
    }
}
