import CLibSSH2
import Glibc
import Synchronization

/// Gets the worker executable onto a host: `.path` names one already there;
/// `.upload` copies ours once into a per-user cache named by its SHA-256
/// (written to a temporary name, then renamed: atomic), after checking that
/// the host's architecture matches. Later pools and runs reuse the copy.
enum WorkerShipping {
    /// The executable path on the host, shipped if needed.
    static func remoteExecutable(on session: SSHSession, options: SSHOptions, deadline: UInt64) throws -> String {
        switch options.remoteWorker {
        case .path(let path):
            return path
        case .upload:
            return try upload(on: session, options: options, deadline: deadline)
        }
    }

    private static func upload(on session: SSHSession, options: SSHOptions, deadline: UInt64) throws -> String {
        let local = options.localExecutable ?? "/proc/self/exe"
        let digest = try sha256(of: local, label: session.host.label)
        var directory = options.remoteCacheDirectory
        if directory == "~" || directory.hasPrefix("~/") { directory = "$HOME" + directory.dropFirst() }
        let marker = "PPOOL-SHIP-\(digest.prefix(8))"
        let probe = "d=\(directory); echo; echo \(marker); uname -m; echo \"$d/\(digest)\"; "
            + "if [ -x \"$d/\(digest)\" ]; then echo have; else echo missing; fi"
        let answer = try session.run(probe, deadline: deadline)
        let lines = answer.lines(after: marker)
        guard answer.status == 0, lines.count >= 3 else {
            throw SSHError.failed(host: session.host.label, "cannot inspect the host (status \(answer.status)): \(answer.errorOutput)")
        }
        let remoteArch = lines[0], path = lines[1]
        let localArch = machine()
        guard remoteArch == localArch else {
            throw SSHError.failed(host: session.host.label, """
                the host is \(remoteArch) but this executable is \(localArch): build one for \(remoteArch) \
                and use RemoteWorker.path
                """)
        }
        if lines[2] == "have" { return path }
        let quoted = shellQuote(path)
        let temporary = shellQuote(path + ".tmp") + ".$$"
        let command = "mkdir -p \"$(dirname \(quoted))\" && cat > \(temporary) && chmod 755 \(temporary) && "
            + "{ ! command -v sha256sum >/dev/null || [ \"$(sha256sum < \(temporary) | cut -c1-64)\" = \(digest) ]; } && "
            + "mv -f \(temporary) \(quoted) || { rm -f \(temporary); exit 1; }"
        let result = try session.run(command, inputFile: local, deadline: deadline)
        guard result.status == 0 else {
            throw SSHError.failed(host: session.host.label, "uploading the worker to \(path) failed (status \(result.status)): \(result.errorOutput)")
        }
        return path
    }

    /// Digests already computed, by path, size and modification time.
    private static let digests = Mutex<[String: String]>([:])

    /// The hex SHA-256 of a file.
    static func sha256(of path: String, label: String) throws -> String {
        var info = stat()
        guard stat(path, &info) == 0 else {
            throw SSHError.failed(host: label, "cannot read the worker executable \(path): \(SystemErrorText())")
        }
        let key = "\(path)|\(info.st_size)|\(info.st_mtim.tv_sec).\(info.st_mtim.tv_nsec)|\(info.st_ino)"
        if let known = digests.withLock({ $0[key] }) { return known }
        var bytes = [UInt8](repeating: 0, count: 32)
        guard cssh2_sha256_file(path, &bytes) == 0 else {
            throw SSHError.failed(host: label, "cannot hash the worker executable \(path)")
        }
        let hex = bytes.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined()
        digests.withLock { $0[key] = hex }
        return hex
    }

    /// This machine's architecture, as `uname -m` prints it.
    static func machine() -> String {
        var name = utsname()
        uname(&name)
        return withUnsafeBytes(of: name.machine) { raw in
            String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
        }
    }
}
