import CLibSSH2
import Glibc
import Logging
import Synchronization

/// Gets the worker executable onto a host: `.path` names one already there;
/// `.upload` copies ours into a per-user cache named by its SHA-256, after
/// checking that the host's architecture matches. Later pools and runs
/// reuse the copy, but never trust it: its hash is checked before use.
///
/// The cache is guarded as follows (all in `/bin/sh` on the host):
/// - commands run under `umask 077`; the directory is created `mkdir -m 700`;
/// - the directory must be ours, not a symbolic link, and writable by no one
///   else; every parent up to `$HOME` (or `/` for a cache outside the home)
///   must belong to us or root and be writable by no one else, except a
///   root-owned sticky directory such as `/tmp`;
/// - an upload goes to a `mktemp` name in that directory, is hashed, renamed
///   over the digest name with `mv -f` (which replaces a planted file or
///   symlink, never follows it), and hashed again;
/// - the probe at connect time re-hashes a cached copy before reusing it
///   (a file planted under the digest name is replaced, never run);
/// - ``launchCommand(remotePath:options:environment:label:)`` checks the
///   SHA-256 and `exec`s in the same remote command, for the host link to
///   start each worker with. The window left is between that check and the
///   `exec`'s open of the file: only a process of ours or root can write the
///   directory then. Hashing costs each start one read of the executable.
/// - With no SHA-256 tool on the host (`sha256sum`, `shasum -a 256`,
///   `openssl dgst -sha256`) shipping fails with an error that says so.
package enum WorkerShipping {
    /// The executable path on the host, shipped if needed. Each set-up
    /// command is bounded by `options.connectTimeout`; the upload itself
    /// only by progress (see `SSHSession.run`), logged to `logger` at debug level.
    static func remoteExecutable(on session: SSHSession, options: SSHOptions, logger: Logger? = nil) throws -> String {
        switch options.remoteWorker {
        case .path(let path):
            return path
        case .upload:
            return try upload(on: session, options: options, logger: logger)
        }
    }

    /// The command that starts a worker at `remotePath` with `environment`:
    /// for `.upload`, the file's SHA-256 is checked first in the same
    /// command. Every word is quoted; the path is never read as `NAME=value`.
    package static func launchCommand(remotePath: String, options: SSHOptions, environment: [(String, String)], label: String) throws -> String {
        var script = ""
        let exported = environment.map { "\($0.0)=\(shellQuote($0.1)); export \($0.0); " }.joined()
        switch options.remoteWorker {
        case .path(let path):
            let word = path.hasPrefix("-") ? "./" + path : path
            script = exported + "exec " + remotePathWord(word)
        case .upload:
            let digest = try sha256(of: options.localExecutable ?? "/proc/self/exe", label: label)
            let file = "f=\(remotePathWord(remotePath))\n"
            let regular = "if [ -L \"$f\" ] || [ ! -f \"$f\" ]; then echo \"ppool: $f is not a regular file\" >&2; exit 126; fi\n"
            let hash = "h=$(ppool_sha \"$f\") || exit 126\n"
            let compare = "if [ \"$h\" != \(digest) ]; then echo \"ppool: $f does not have the expected SHA-256 (\(digest)): refusing to run it\" >&2; exit 126; fi\n"
            let parts: [String] = [hashFunction(options) + "\n", file, regular, hash, compare, exported, "exec \"$f\""]
            script = parts.joined()
        }
        return script
    }

    /// `ppool_sha FILE` prints the hex SHA-256 of FILE with the first tool
    /// found, or fails naming the tools it looked for.
    package static func hashFunction(_ options: SSHOptions) -> String {
        var body = "ppool_sha() {\n"
        for (index, tool) in options.remoteHashTools.enumerated() {
            body += (index == 0 ? "  if" : "  elif") + " command -v \(shellQuote(tool.probe)) >/dev/null 2>&1; then "
                + "\(tool.command) < \"$1\" | sed 's/^.*= *//' | cut -c1-64\n"
        }
        let names = options.remoteHashTools.map(\.probe).joined(separator: ", ")
        let message = shellQuote("ppool: no SHA-256 tool on the host (looked for \(names)): refusing to trust the worker cache")
        body += options.remoteHashTools.isEmpty ? "  echo \(message) >&2; return 127\n" : "  else echo \(message) >&2; return 127; fi\n"
        return body + "}"
    }

    /// Shell functions and checks shared by the probe and the upload: sets
    /// `d` (the cache directory, created 700) and `p` (its physical path),
    /// and exits 3 with a reason on stderr when it is not safe.
    package static func cacheDirectoryScript(_ options: SSHOptions) -> String {
        """
        umask 077
        set -f
        \(hashFunction(options))
        me=$(id -u)
        ppool_bad() {
          if [ -L "$1" ]; then echo "$1 is a symbolic link"; return 0; fi
          l=$(ls -ldn -- "$1") || { echo "cannot inspect $1"; return 0; }
          set -- $l "$1" "$2"
          m=$1; u=$3
          shift $(($# - 2))
          if [ "$2" = 1 ] && [ "$u" != "$me" ]; then echo "$1 belongs to uid $u, not to us (uid $me)"; return 0; fi
          if [ "$u" != "$me" ] && [ "$u" != 0 ]; then echo "$1 belongs to uid $u"; return 0; fi
          case $m in
            ?????w*|????????w*)
              case $m in ?????????[tT]*) if [ "$2" != 1 ] && [ "$u" = 0 ]; then return 1; fi ;; esac
              echo "$1 is writable by other users ($m)"; return 0 ;;
          esac
          return 1
        }
        d=\(remotePathWord(options.remoteCacheDirectory))
        case $d in /*) ;; *) d=$HOME/$d ;; esac
        if [ -L "$d" ]; then echo "ppool: refusing the worker cache $d: it is a symbolic link" >&2; exit 3; fi
        mkdir -p -m 700 -- "$d" || { echo "ppool: cannot create the worker cache $d" >&2; exit 3; }
        p=$(cd -- "$d" && pwd -P) || exit 3
        h=$(cd && pwd -P)
        x=$p; own=1
        while :; do
          if why=$(ppool_bad "$x" $own); then echo "ppool: refusing the worker cache $d: $why" >&2; exit 3; fi
          if [ "$x" = "$h" ] || [ "$x" = / ]; then break; fi
          x=$(dirname -- "$x"); own=0
        done
        """
    }

    private static func upload(on session: SSHSession, options: SSHOptions, logger: Logger?) throws -> String {
        let label = session.host.label
        let local = options.localExecutable ?? "/proc/self/exe"
        let digest = try sha256(of: local, label: label)
        let marker = "PPOOL-SHIP-\(digest.prefix(8))"
        let probe = cacheDirectoryScript(options) + """

            f=$p/\(digest)
            echo; echo \(marker); uname -m; printf '%s\\n' "$f"
            if [ -f "$f" ] && [ ! -L "$f" ] && ! why=$(ppool_bad "$f" 1) && [ "$(ppool_sha "$f")" = \(digest) ]; then echo have; else echo missing; fi
            """
        let timeout = options.connectTimeoutNanos
        let answer = try session.run(inShell(probe), timeout: timeout)
        let lines = answer.lines(after: marker)
        guard answer.status == 0, lines.count >= 3 else {
            throw SSHError.failed(host: label, "cannot prepare the worker cache (status \(answer.status)): \(answer.errorText)")
        }
        let remoteArch = lines[0], path = lines[1]
        let localArch = machine()
        guard remoteArch == localArch else {
            throw SSHError.failed(host: label, """
                the host is \(remoteArch) but this executable is \(localArch): build one for \(remoteArch) \
                and use RemoteWorker.path
                """)
        }
        if lines[2] == "have" { return path }
        let script = cacheDirectoryScript(options) + """

            f=$p/\(digest)
            if [ -d "$f" ] && [ ! -L "$f" ]; then echo "ppool: $f is a directory" >&2; exit 3; fi
            t=$(mktemp "$p/.upload.XXXXXXXX") || exit 3
            trap 'rm -f "$t"' EXIT
            cat >| "$t" || exit 4
            chmod 700 "$t" || exit 4
            [ "$(ppool_sha "$t")" = \(digest) ] || { echo "ppool: the uploaded file's SHA-256 does not match" >&2; exit 5; }
            mv -f -- "$t" "$f" || exit 4
            trap - EXIT
            [ ! -L "$f" ] && [ "$(ppool_sha "$f")" = \(digest) ] || { echo "ppool: $f changed after the upload" >&2; exit 5; }
            """
        let result = try session.run(inShell(script), inputFile: local, timeout: timeout, logger: logger)
        guard result.status == 0 else {
            throw SSHError.failed(host: label, "uploading the worker to \(path) failed (status \(result.status)): \(result.errorText)")
        }
        return path
    }

    /// `script` run by `/bin/sh` whatever the login shell is.
    static func inShell(_ script: String) -> String { "exec /bin/sh -c " + shellQuote(script) }

    /// Digests already computed, by path, size and modification time.
    private static let digests = Mutex<[String: String]>([:])

    /// The hex SHA-256 of a file.
    package static func sha256(of path: String, label: String) throws -> String {
        var info = stat()
        guard stat(path, &info) == 0 else {
            throw SSHError.failed(host: label, "cannot read the worker executable \(path): \(SystemErrorText())")
        }
        let key = "\(path)|\(info.st_size)|\(info.st_mtim.tv_sec).\(info.st_mtim.tv_nsec)|\(info.st_ino)"
        if let known = digests.guarded({ $0[key] }) { return known }
        var bytes = [UInt8](repeating: 0, count: 32)
        guard cssh2_sha256_file(path, &bytes) == 0 else {
            throw SSHError.failed(host: label, "cannot hash the worker executable \(path)")
        }
        let hex = hexString(bytes)
        digests.guarded { $0[key] = hex }
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

/// Lowercase hex.
func hexString(_ bytes: [UInt8]) -> String {
    let digits = Array("0123456789abcdef")
    var text = ""
    for byte in bytes { text.append(digits[Int(byte >> 4)]); text.append(digits[Int(byte & 15)]) }
    return text
}
