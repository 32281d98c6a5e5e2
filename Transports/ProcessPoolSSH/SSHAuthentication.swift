import CLibSSH2
import Glibc

/// Public-key authentication: the ssh-agent's keys (SSH_AUTH_SOCK), then
/// the key files. Errors list what was tried and why each failed.
struct SSHAuthentication {
    let session: SSHSession
    let options: SSHOptions

    func authenticate() throws {
        let user = session.host.user
        var notes: [String] = []
        if options.useAgent, getenv("SSH_AUTH_SOCK") != nil {
            if tryAgent(user: user, notes: &notes) { return }
        }
        for file in session.host.identityFiles {
            guard access(file, R_OK) == 0 else {
                if options.identityFiles.contains(file) { notes.append("\(file): cannot read it") }
                continue
            }
            let info = KeyFileInfo(path: file)
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
        if notes.isEmpty { notes.append("no key to offer: no ssh-agent and no identity file (~/.ssh/id_ed25519, ~/.ssh/id_ecdsa)") }
        throw SSHError.authentication(host: session.host.label,
                                      "user \(user): " + notes.joined(separator: "; ") + ". Is the public key in the host's authorized_keys?")
    }

    private func tryAgent(user: String, notes: inout [String]) -> Bool {
        guard let agent = libssh2_agent_init(session.handle) else { return false }
        defer {
            _ = libssh2_agent_disconnect(agent)
            libssh2_agent_free(agent)
        }
        guard libssh2_agent_connect(agent) == 0 else {
            notes.append("ssh-agent: cannot connect to SSH_AUTH_SOCK")
            return false
        }
        guard libssh2_agent_list_identities(agent) == 0 else {
            notes.append("ssh-agent: cannot list its keys")
            return false
        }
        var identity: UnsafeMutablePointer<libssh2_agent_publickey>?
        var previous: UnsafeMutablePointer<libssh2_agent_publickey>?
        var offered = 0
        while libssh2_agent_get_identity(agent, &identity, previous) == 0, let current = identity {
            offered += 1
            if libssh2_agent_userauth(agent, user, current) == 0 { return true }
            previous = current
        }
        notes.append("ssh-agent: none of its \(offered) keys was accepted (RSA keys cannot work with this libssh2)")
        return false
    }
}
