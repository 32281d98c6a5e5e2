import CLibSSH2
import Glibc

/// Public-key authentication, in this order (so that a user whose agent
/// holds many keys is not cut off by sshd's MaxAuthTries before the right
/// one): each identity file in turn (through its copy in the agent when the
/// agent holds the same public key, else from the file), then the agent's
/// other keys unless `IdentitiesOnly yes`. Errors list what was tried and
/// why each failed.
package struct SSHAuthentication {
    let session: SSHSession
    let options: SSHOptions

    /// One offer.
    package enum Attempt: Equatable {
        /// The agent's key at this index (`file`: the identity file it stands for).
        case agent(index: Int, file: String?)
        /// A key file.
        case file(String)
    }

    /// The offers, in order: identity files (an agent copy, matched by
    /// public key blob, replacing the file), then the other agent keys
    /// unless `identitiesOnly`.
    package static func plan(files: [(path: String, publicKey: [UInt8]?)], agentKeys: [[UInt8]], identitiesOnly: Bool) -> [Attempt] {
        var attempts: [Attempt] = []
        var used = Set<Int>()
        for file in files {
            if let key = file.publicKey, let index = agentKeys.indices.first(where: { agentKeys[$0] == key && !used.contains($0) }) {
                used.insert(index)
                attempts.append(.agent(index: index, file: file.path))
            } else {
                attempts.append(.file(file.path))
            }
        }
        if !identitiesOnly {
            for index in agentKeys.indices where !used.contains(index) { attempts.append(.agent(index: index, file: nil)) }
        }
        return attempts
    }

    func authenticate() throws {
        let host = session.host
        let user = host.user
        var notes: [String] = []
        let files = host.identityFiles.filter { file in
            guard access(file, R_OK) == 0 else {
                if options.identityFiles.contains(file) || !SSHAuthentication.isDefault(file) { notes.append("\(file): cannot read it") }
                return false
            }
            return true
        }
        let infos = Dictionary(files.map { ($0, KeyFileInfo(path: $0)) }, uniquingKeysWith: { a, _ in a })

        var agent: OpaquePointer?
        var identities: [UnsafeMutablePointer<libssh2_agent_publickey>] = []
        defer {
            if let agent {
                _ = libssh2_agent_disconnect(agent)
                libssh2_agent_free(agent)
            }
        }
        if host.useAgent, host.agentSocket != nil || getenv("SSH_AUTH_SOCK") != nil {
            agent = openAgent(socket: host.agentSocket, identities: &identities, notes: &notes)
        }
        let agentKeys = identities.map { Array(UnsafeBufferPointer(start: $0.pointee.blob, count: $0.pointee.blob_len)) }
        let plan = SSHAuthentication.plan(files: files.map { ($0, infos[$0]??.publicKey) }, agentKeys: agentKeys,
                                          identitiesOnly: host.identitiesOnly)
        var agentRefused = 0
        for attempt in plan {
            switch attempt {
            case .agent(let index, let file):
                if libssh2_agent_userauth(agent, user, identities[index]) == 0 { return }
                if let file { notes.append("\(file) (through ssh-agent) was refused") } else { agentRefused += 1 }
            case .file(let file):
                let info = infos[file] ?? nil
                if info?.isEncrypted == true && options.passphrase == nil {
                    notes.append("\(file) is encrypted and no passphrase was given (set SSHOptions.passphrase or add the key to ssh-agent)")
                    continue
                }
                let rc = libssh2_userauth_publickey_fromfile_ex(session.handle, user, UInt32(user.utf8.count),
                                                                nil, file, options.passphrase)
                if rc == 0 { return }
                if info?.isRSA == true {
                    notes.append("\(file) is an RSA key, which this libssh2 can only sign with ssh-rsa (SHA-1), refused by OpenSSH 8.8 and later: use an ed25519 or ECDSA key")
                } else {
                    notes.append("\(file) was refused (\(session.lastError()))")
                }
            }
        }
        if agentRefused > 0 {
            notes.append("ssh-agent: none of its other \(agentRefused) keys was accepted (RSA keys cannot work with this libssh2)")
        } else if agent != nil && host.identitiesOnly && agentKeys.count > 0 {
            notes.append("IdentitiesOnly: the agent's other keys were not offered")
        }
        if notes.isEmpty { notes.append("no key to offer: no ssh-agent and no identity file (~/.ssh/id_ed25519, ~/.ssh/id_ecdsa)") }
        throw SSHError.authentication(host: host.label,
                                      "user \(user): " + notes.joined(separator: "; ") + ". Is the public key in the host's authorized_keys?")
    }

    private static func isDefault(_ file: String) -> Bool {
        ["id_ed25519", "id_ecdsa", "id_rsa", "id_ecdsa_sk", "id_ed25519_sk", "id_dsa"].contains { file.hasSuffix("/.ssh/" + $0) }
    }

    /// Connects to the agent and lists its keys; nil (with a note) if it cannot.
    private func openAgent(socket: String?, identities: inout [UnsafeMutablePointer<libssh2_agent_publickey>],
                           notes: inout [String]) -> OpaquePointer? {
        guard let agent = libssh2_agent_init(session.handle) else { return nil }
        if let socket { libssh2_agent_set_identity_path(agent, socket) }
        guard libssh2_agent_connect(agent) == 0 else {
            notes.append("ssh-agent: cannot connect to \(socket ?? "SSH_AUTH_SOCK")")
            libssh2_agent_free(agent)
            return nil
        }
        guard libssh2_agent_list_identities(agent) == 0 else {
            notes.append("ssh-agent: cannot list its keys")
            _ = libssh2_agent_disconnect(agent)
            libssh2_agent_free(agent)
            return nil
        }
        var identity: UnsafeMutablePointer<libssh2_agent_publickey>?
        var previous: UnsafeMutablePointer<libssh2_agent_publickey>?
        while libssh2_agent_get_identity(agent, &identity, previous) == 0, let current = identity {
            identities.append(current)
            previous = current
        }
        return agent
    }
}
