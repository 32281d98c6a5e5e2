import Glibc

/// The parts of an OpenSSH client configuration the `ssh` start method uses:
/// `Host` blocks (patterns with `*`, `?` and `!`) with `HostName`, `User`,
/// `Port` and `IdentityFile`. As in OpenSSH, the first value found wins.
struct SSHConfigFile {
    struct Block {
        var patterns: [String]
        var settings: [(key: String, value: String)]
    }

    var blocks: [Block] = []

    /// The file's blocks; an absent file is an empty configuration.
    init(path: String?) {
        guard let path, let text = readTextFile(path) else { return }
        var current = Block(patterns: ["*"], settings: [])
        for raw in text.split(whereSeparator: { $0 == "\n" || $0 == "\r" }) {
            let line = raw.drop(while: { $0 == " " || $0 == "\t" })
            if line.isEmpty || line.hasPrefix("#") { continue }
            var words = SSHConfigFile.words(line)
            guard !words.isEmpty else { continue }
            var key = words.removeFirst().lowercased()
            if let eq = key.firstIndex(of: "=") {
                let value = String(key[key.index(after: eq)...])
                key = String(key[..<eq])
                if !value.isEmpty { words.insert(value, at: 0) }
            }
            if words.first == "=" { words.removeFirst() }
            if key == "host" {
                blocks.append(current)
                current = Block(patterns: words, settings: [])
            } else if key == "match" {
                blocks.append(current)
                current = Block(patterns: [], settings: [])  // unsupported: never applies
            } else if let value = words.first {
                current.settings.append((key, value))
            }
        }
        blocks.append(current)
    }

    /// Splits on blanks, honouring double quotes.
    private static func words(_ line: Substring) -> [String] {
        var result: [String] = []
        var word = ""
        var quoted = false
        var inWord = false
        for c in line {
            if c == "\"" { quoted.toggle(); inWord = true; continue }
            if !quoted && (c == " " || c == "\t") {
                if inWord { result.append(word); word = ""; inWord = false }
                continue
            }
            word.append(c)
            inWord = true
        }
        if inWord { result.append(word) }
        return result
    }

    /// The values for `alias`, first match wins; IdentityFile accumulates.
    func resolve(_ alias: String) -> (hostname: String?, user: String?, port: Int?, identityFiles: [String]) {
        var hostname: String?, user: String?, port: Int?
        var identities: [String] = []
        for block in blocks where SSHConfigFile.matches(alias, block.patterns) {
            for (key, value) in block.settings {
                switch key {
                case "hostname": if hostname == nil { hostname = value.replacingPercentH(alias) }
                case "user": if user == nil { user = value }
                case "port": if port == nil { port = Int(value) }
                case "identityfile": identities.append(expandTilde(value))
                default: break
                }
            }
        }
        return (hostname, user, port, identities)
    }

    /// OpenSSH's rule: some positive pattern matches and no negated one does.
    static func matches(_ host: String, _ patterns: [String]) -> Bool {
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

extension String {
    fileprivate func replacingPercentH(_ host: String) -> String {
        var out = ""
        var it = makeIterator()
        while let c = it.next() {
            if c == "%", let n = it.next() {
                switch n {
                case "h": out += host
                case "%": out += "%"
                default: out.append(c); out.append(n)
                }
            } else {
                out.append(c)
            }
        }
        return out
    }
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
        let n = read(fd, &chunk, chunk.count)
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { return n == 0 ? bytes : nil }
        bytes += chunk[0..<n]
    }
}
