import Glibc
import Logging
import ProcessPoolCore

/// An OpenSSH client configuration (readconf.c's rules), as far as the
/// `ssh` start method goes:
/// - keywords are case-insensitive, values keep their case; `key value`,
///   `key=value` and `key = value`; double or single quotes group words;
/// - `Host` patterns (`*`, `?`, `!negation`, comma or blank lists) select
///   blocks for the host name as given; the first value found wins
///   (`IdentityFile` and `CertificateFile` accumulate);
/// - `Include` (relative paths under `~/.ssh`, `~`, globs, nested up to 16
///   deep) reads files in place, as OpenSSH does;
/// - a file others can write, or owned by someone other than us or root, is
///   refused ("Bad owner or permissions", as OpenSSH);
/// - supported: HostName, User, Port, IdentityFile, IdentitiesOnly,
///   IdentityAgent, HostKeyAlias, UserKnownHostsFile, GlobalKnownHostsFile,
///   StrictHostKeyChecking; refused where they apply to the host (they change
///   where or how we would connect, or whom we trust): see `refused`;
///   anything else is ignored with a debug log.
package struct SSHConfigFile {
    /// One line that matters, in file order, includes expanded in place.
    indirect enum Item {
        case directive(key: String, args: [String], location: String)
        case host(patterns: [String], location: String)
        case match(location: String)
        case include([Item], location: String)
    }

    /// Why a configuration cannot be used (names the file:line).
    package struct ConfigError: Error, CustomStringConvertible {
        package var description: String
    }

    var items: [Item] = []
    /// A problem found while reading (bad permissions, bad Include): the
    /// configuration is unusable.
    var readError: ConfigError?

    /// Keywords that change where or how we connect, or whom we trust,
    /// that we cannot honour: an error when they apply to the host.
    static let refused: [String: String] = [
        "proxyjump": "jump hosts are not supported: connecting directly would bypass them",
        "proxycommand": "proxy commands are not supported: connecting directly would bypass them",
        "proxyusefdpass": "proxy commands are not supported",
        "match": "Match blocks are not supported",
        "canonicalizehostname": "host name canonicalization is not supported",
        "bindaddress": "binding to a local address is not supported",
        "bindinterface": "binding to an interface is not supported",
        "knownhostscommand": "KnownHostsCommand is not supported: host keys come from known_hosts files only",
        "revokedhostkeys": "RevokedHostKeys files are not supported (use @revoked lines in known_hosts)",
        "hostbasedauthentication": "host-based authentication is not supported",
        "addressfamily": "AddressFamily is not supported",
    ]

    /// Keywords we know and deliberately ignore (they do not change where
    /// we connect or whom we trust, or only concern the ssh command).
    static let ignored: Set<String> = [
        "serveraliveinterval", "serveralivecountmax", "compression", "forwardagent", "forwardx11",
        "forwardx11trusted", "forwardx11timeout", "localforward", "remoteforward", "dynamicforward", "sendenv", "setenv",
        "loglevel", "logverbose", "visualhostkey", "hashknownhosts", "controlmaster", "controlpath", "controlpersist",
        "addkeystoagent", "batchmode", "connectionattempts", "connecttimeout", "ciphers", "macs", "kexalgorithms",
        "hostkeyalgorithms", "pubkeyacceptedalgorithms", "pubkeyacceptedkeytypes", "preferredauthentications",
        "passwordauthentication", "kbdinteractiveauthentication", "kbdinteractivedevices",
        "challengeresponseauthentication", "gssapiauthentication", "gssapidelegatecredentials",
        "pubkeyauthentication", "requesttty", "escapechar", "exitonforwardfailure", "tcpkeepalive", "updatehostkeys",
        "stdinnull", "forkafterauthentication", "sessiontype", "numberofpasswordprompts", "ipqos", "rekeylimit",
        "streamlocalbindmask", "streamlocalbindunlink", "gatewayports", "clearallforwardings", "tunnel",
        "tunneldevice", "xauthlocation", "fingerprinthash", "verifyhostkeydns", "nohostauthenticationforlocalhost",
        "enablesshkeysign", "checkhostip", "syslogfacility", "permitlocalcommand", "localcommand",
        "obscurekeystroketiming", "enableescapecommandline", "canonicaldomains", "canonicalizefallbacklocal",
        "canonicalizemaxdots", "canonicalizepermittedcnames", "securitykeyprovider", "pkcs11provider",
        "certificatefile", "tag", "ignoreunknown", "permitremoteopen", "channeltimeout", "requiredrsasize",
        "casignaturealgorithms", "usekeychain", "protocol", "useprivilegedport",
        "useroaming", "rsaauthentication", "rhostsrsaauthentication", "cipher", "fallbacktorsh", "usersh",
        "warnweakcrypto", "refuseconnection", "pubkeyauthoptions", "versionaddendum",
    ]

    private static let logger = Logger(label: "ProcessPoolSSH.config")

    /// The file's items; an absent file is an empty configuration.
    package init(path: String?) {
        guard let path else { return }
        do {
            items = try SSHConfigFile.read(path, depth: 0, mustExist: false)
        } catch {
            readError = error
        }
    }

    /// Parses `text` as if read from `file` (for tests; no permission check).
    package init(text: String, file: String = "config") {
        do {
            items = try SSHConfigFile.parse(text, file: file, depth: 0)
        } catch {
            readError = error
        }
    }

    /// Reads a file after checking its owner and mode, as OpenSSH does.
    static func read(_ path: String, depth: Int, mustExist: Bool) throws(ConfigError) -> [Item] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            if errno == ENOENT && !mustExist { return [] }
            if errno == ENOENT { return [] }
            throw ConfigError(description: "cannot read the ssh config \(path): \(SystemErrorText())")
        }
        var info = stat()
        let statOK = fstat(fd, &info) == 0
        close(fd)
        guard statOK else { throw ConfigError(description: "cannot inspect the ssh config \(path): \(SystemErrorText())") }
        if (info.st_uid != 0 && info.st_uid != getuid()) || (info.st_mode & 0o022) != 0 {
            throw ConfigError(description: """
                bad owner or permissions on the ssh config \(path) (uid \(info.st_uid), mode \
                \(String(info.st_mode & 0o7777, radix: 8))): it must belong to you or root and be writable by no one else
                """)
        }
        guard let text = readTextFile(path) else {
            throw ConfigError(description: "cannot read the ssh config \(path): \(SystemErrorText())")
        }
        return try parse(text, file: path, depth: depth)
    }

    /// The lines of one file.
    static func parse(_ text: String, file: String, depth: Int) throws(ConfigError) -> [Item] {
        var items: [Item] = []
        var number = 0
        for raw in text.split(separator: "\n", omittingEmptySubsequences: false) {
            number += 1
            let location = "\(file):\(number)"
            guard let (key, args) = try splitLine(raw, location: location) else { continue }
            switch key {
            case "host":
                items.append(.host(patterns: args, location: location))
            case "match":
                items.append(.match(location: location))
            case "include":
                guard depth < 16 else { throw ConfigError(description: "\(location): Include nested too deeply") }
                var included: [Item] = []
                for arg in args {
                    var pattern = expandTilde(arg)
                    if !pattern.hasPrefix("/") { pattern = SSHOptions.localHome + "/.ssh/" + pattern }
                    for path in globPaths(pattern) {
                        included += try read(path, depth: depth + 1, mustExist: false)
                    }
                }
                items.append(.include(included, location: location))
            default:
                items.append(.directive(key: key, args: args, location: location))
            }
        }
        return items
    }

    /// (lowercased keyword, arguments) of a line; nil for blanks and comments.
    static func splitLine(_ line: Substring, location: String) throws(ConfigError) -> (String, [String])? {
        var rest = line.drop(while: { $0 == " " || $0 == "\t" || $0 == "\r" })
        if rest.isEmpty || rest.hasPrefix("#") { return nil }
        let keyEnd = rest.firstIndex(where: { $0 == " " || $0 == "\t" || $0 == "=" || $0 == "\r" }) ?? rest.endIndex
        let key = rest[..<keyEnd].lowercased()
        rest = rest[keyEnd...].drop(while: { $0 == " " || $0 == "\t" })
        if rest.hasPrefix("=") { rest = rest.dropFirst() }
        let args = try words(rest, location: location)
        guard !args.isEmpty else { throw ConfigError(description: "\(location): \(key) needs a value") }
        return (key, args)
    }

    /// Splits on blanks, honouring "double" and 'single' quotes and
    /// backslash escapes; a word starting with `#` ends the line.
    static func words(_ text: Substring, location: String) throws(ConfigError) -> [String] {
        var result: [String] = []
        var word = ""
        var quote: Character?
        var inWord = false
        var escaped = false
        for c in text {
            if escaped { word.append(c); escaped = false; continue }
            if let q = quote {
                if c == q { quote = nil } else if c == "\\" && q == "\"" { escaped = true } else { word.append(c) }
                continue
            }
            switch c {
            case "\"", "'": quote = c; inWord = true
            case "\\": escaped = true; inWord = true
            case " ", "\t", "\r":
                if inWord { result.append(word); word = ""; inWord = false }
            case "#" where !inWord:
                return result
            default:
                word.append(c); inWord = true
            }
        }
        if quote != nil { throw ConfigError(description: "\(location): unterminated quote") }
        if inWord { result.append(word) }
        return result
    }

    /// glob(3), sorted; the pattern itself when nothing matches and it has no wildcard.
    static func globPaths(_ pattern: String) -> [String] {
        var result = glob_t()
        defer { globfree(&result) }
        guard Glibc.glob(pattern, 0, nil, &result) == 0 else { return [] }
        return (0..<Int(result.gl_pathc)).compactMap { result.gl_pathv[$0].map { String(cString: $0) } }
    }

    /// What the configuration sets for a host.
    package struct Settings {
        package var hostname: String?
        package var user: String?
        package var port: Int?
        package var identityFiles: [String] = []
        package var identitiesOnly: Bool?
        package var identityAgent: String?
        package var hostKeyAlias: String?
        package var userKnownHostsFiles: [String]?
        package var globalKnownHostsFiles: [String]?
        package var strictHostKeyChecking: String?
        /// Directives ignored (for a debug log).
        package var ignored: [String] = []
    }

    /// The settings for `alias` (the host name as given), first value wins.
    package func resolve(_ alias: String) throws(ConfigError) -> Settings {
        if let readError { throw readError }
        var settings = Settings()
        var active = true
        try SSHConfigFile.apply(items, alias: alias.lowercased(), active: &active, neverMatch: false, to: &settings)
        for note in settings.ignored { SSHConfigFile.logger.debug("ssh config: ignoring \(note)") }
        return settings
    }

    private static func apply(_ items: [Item], alias: String, active: inout Bool, neverMatch: Bool,
                              to s: inout Settings) throws(ConfigError) {
        for item in items {
            switch item {
            case .host(let patterns, _):
                active = !neverMatch && matches(alias, patterns)
            case .match(let location):
                throw ConfigError(description: "\(location): Match is not supported (its conditions cannot be evaluated here); use Host blocks")
            case .include(let included, _):
                let saved = active
                var inner = active
                try apply(included, alias: alias, active: &inner, neverMatch: neverMatch || !saved, to: &s)
                active = saved
            case .directive(let key, let args, let location):
                guard active else { continue }
                try set(key, args, location: location, on: &s)
            }
        }
    }

    private static func set(_ key: String, _ args: [String], location: String, on s: inout Settings) throws(ConfigError) {
        let value = args[0]
        func yesNo() throws(ConfigError) -> Bool {
            switch value.lowercased() {
            case "yes", "true": return true
            case "no", "false": return false
            default: throw ConfigError(description: "\(location): \(key) must be yes or no (got \(value))")
            }
        }
        switch key {
        case "hostname": if s.hostname == nil { s.hostname = value }
        case "user": if s.user == nil { s.user = value }
        case "port":
            guard let port = Int(value), (1...65535).contains(port) else {
                throw ConfigError(description: "\(location): bad Port \(value)")
            }
            if s.port == nil { s.port = port }
        case "identityfile": if !s.identityFiles.contains(value) { s.identityFiles.append(value) }
        case "identitiesonly": let v = try yesNo(); if s.identitiesOnly == nil { s.identitiesOnly = v }
        case "identityagent": if s.identityAgent == nil { s.identityAgent = value }
        case "hostkeyalias": if s.hostKeyAlias == nil { s.hostKeyAlias = value }
        case "userknownhostsfile": if s.userKnownHostsFiles == nil { s.userKnownHostsFiles = args }
        case "globalknownhostsfile": if s.globalKnownHostsFiles == nil { s.globalKnownHostsFiles = args }
        case "stricthostkeychecking":
            guard ["yes", "no", "off", "accept-new", "ask"].contains(value.lowercased()) else {
                throw ConfigError(description: "\(location): bad StrictHostKeyChecking \(value)")
            }
            if s.strictHostKeyChecking == nil { s.strictHostKeyChecking = value.lowercased() }
        case "addressfamily" where value.lowercased() == "any",
             "canonicalizehostname" where value.lowercased() == "no",
             "hostbasedauthentication" where value.lowercased() == "no",
             "proxycommand" where value.lowercased() == "none",
             "proxyjump" where value.lowercased() == "none",
             "proxyusefdpass" where value.lowercased() == "no":
            s.ignored.append("\(key) \(value) at \(location) (the default)")
        default:
            if let why = refused[key] {
                throw ConfigError(description: "\(location): \(key) \(args.joined(separator: " ")) applies to this host but \(why)")
            }
            s.ignored.append("\(key) at \(location)" + (ignored.contains(key) ? "" : " (unknown keyword)"))
        }
    }

    /// OpenSSH's rule: some positive pattern matches and no negated one does.
    package static func matches(_ host: String, _ patterns: [String]) -> Bool {
        var matched = false
        for pattern in patterns.flatMap({ $0.split(separator: ",").map(String.init) }) {
            if pattern.hasPrefix("!") {
                if glob(Array(pattern.dropFirst()), Array(host)) { return false }
            } else if glob(Array(pattern), Array(host)) {
                matched = true
            }
        }
        return matched
    }

    /// `*` and `?` matching, case-insensitive.
    static func glob(_ pattern: [Character], _ text: [Character]) -> Bool {
        var p = 0, t = 0, star = -1, mark = 0
        while t < text.count {
            if p < pattern.count && (pattern[p] == "?" || pattern[p].lowercased() == text[t].lowercased()) {
                p += 1; t += 1
            } else if p < pattern.count && pattern[p] == "*" {
                star = p; mark = t; p += 1
            } else if star >= 0 {
                p = star + 1; mark += 1; t = mark
            } else {
                return false
            }
        }
        while p < pattern.count && pattern[p] == "*" { p += 1 }
        return p == pattern.count
    }
}

/// OpenSSH's percent tokens (`%%`, `%h`, `%p`, `%r`, `%u`, `%d`, `%n`, `%l`,
/// `%L`, `%i`) and a leading `~`, for paths and HostName.
func expandTokens(_ text: String, host: String, port: Int, remoteUser: String, originalHost: String,
                  tokens: String = "%hprudnlLi") -> String {
    var out = ""
    var it = text.makeIterator()
    while let c = it.next() {
        guard c == "%", let n = it.next() else { out.append(c); continue }
        guard n == "%" || tokens.contains(n) else { out.append(c); out.append(n); continue }
        switch n {
        case "%": out += "%"
        case "h": out += host
        case "p": out += String(port)
        case "r": out += remoteUser
        case "u": out += SSHOptions.localUser
        case "d": out += SSHOptions.localHome
        case "n": out += originalHost
        case "l", "L":
            var name = [CChar](repeating: 0, count: 256)
            gethostname(&name, name.count - 1)
            var local = String(decoding: name.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
            if n == "L", let dot = local.firstIndex(of: ".") { local = String(local[..<dot]) }
            out += local
        case "i": out += String(getuid())
        default: out.append(c); out.append(n)
        }
    }
    return expandTilde(out)
}

/// "~/x" with the local home directory.
func expandTilde(_ path: String) -> String {
    if path == "~" { return SSHOptions.localHome }
    if path.hasPrefix("~/") { return SSHOptions.localHome + String(path.dropFirst(1)) }
    return path
}

/// A whole (small) text file, or nil.
func readTextFile(_ path: String) -> String? {
    guard let bytes = readFileBytes(path) else { return nil }
    return String(decoding: bytes, as: UTF8.self)
}

/// A whole file's bytes, or nil.
func readFileBytes(_ path: String) -> [UInt8]? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        switch chunk.withUnsafeMutableBytes({ Syscall.read(fd, into: $0) }) {
        case .bytes(let n): bytes += chunk[0..<n]
        case .endOfStream: return bytes
        case .wouldBlock, .failed: return nil
        }
    }
}
