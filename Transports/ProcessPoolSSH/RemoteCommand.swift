import CLibSSH2
import Glibc

/// Short commands run on a host during set-up (architecture check, upload,
/// signals), in the session's blocking mode with a timeout.
extension SSHSession {
    /// What a finished command printed and how it ended.
    struct CommandResult {
        var status: Int32
        var output: String
        var errorOutput: String

        /// The lines printed after `marker` (login shells may print junk first).
        func lines(after marker: String) -> [String] {
            let all = output.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
            guard let index = all.lastIndex(of: marker) else { return [] }
            return Array(all[(index + 1)...]).filter { !$0.isEmpty }
        }
    }

    /// Opens a session channel and starts `command` (blocking mode).
    func startCommand(_ command: String) throws -> OpaquePointer {
        quickAck()
        guard let channel = libssh2_channel_open_ex(handle, "session", 7, 2 * 1024 * 1024,
                                                    32768, nil, 0) else {
            throw SSHError.failed(host: host.label, "cannot open a channel: \(lastError())")
        }
        quickAck()
        let rc = libssh2_channel_process_startup(channel, "exec", 4, command, UInt32(command.utf8.count))
        guard rc == 0 else {
            _ = libssh2_channel_free(channel)
            throw SSHError.failed(host: host.label, "cannot run a command: \(lastError())")
        }
        return channel
    }

    /// Runs `command` to completion, feeding it `inputFile` on stdin when given.
    func run(_ command: String, inputFile: String? = nil, deadline: UInt64) throws -> CommandResult {
        libssh2_session_set_blocking(handle, 1)
        setTimeout(until: deadline)
        let channel = try startCommand(command)
        defer { _ = libssh2_channel_free(channel) }
        if let inputFile {
            let fd = open(inputFile, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { throw SSHError.failed(host: host.label, "cannot read \(inputFile): \(SystemErrorText())") }
            defer { Glibc.close(fd) }
            var chunk = [UInt8](repeating: 0, count: 1 << 17)
            while true {
                let n = read(fd, &chunk, chunk.count)
                if n < 0 && errno == EINTR { continue }
                if n < 0 { throw SSHError.failed(host: host.label, "cannot read \(inputFile): \(SystemErrorText())") }
                if n == 0 { break }
                var offset = 0
                while offset < n {
                    let written = chunk.withUnsafeBytes { raw in
                        libssh2_channel_write_ex(channel, 0, raw.baseAddress!.advanced(by: offset).assumingMemoryBound(to: CChar.self), n - offset)
                    }
                    guard written > 0 else { throw SSHError.failed(host: host.label, "upload failed: \(lastError())") }
                    offset += written
                }
            }
        }
        _ = libssh2_channel_send_eof(channel)
        let output = try readAll(channel, stream: 0)
        let errorOutput = try readAll(channel, stream: SSH_EXTENDED_DATA_STDERR)
        _ = libssh2_channel_close(channel)
        _ = libssh2_channel_wait_closed(channel)
        let status = libssh2_channel_get_exit_status(channel)
        return CommandResult(status: status, output: output, errorOutput: errorOutput)
    }

    private func readAll(_ channel: OpaquePointer, stream: Int32) throws -> String {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16384)
        while true {
            let n = chunk.withUnsafeMutableBytes { raw in
                libssh2_channel_read_ex(channel, stream, raw.baseAddress!.assumingMemoryBound(to: CChar.self), raw.count)
            }
            if n > 0 { bytes += chunk[0..<n]; continue }
            if n == 0 { break }
            throw SSHError.failed(host: host.label, "reading a command's output failed: \(lastError())")
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// A remote path as one shell word. A leading `~/` or `$HOME/` (or the
/// bare `~`/`$HOME`) stays the remote home: `"$HOME"/'rest'`; the rest,
/// and every other path, is single-quoted, so spaces, quotes, `$`, `;`
/// and `=` are taken literally.
package func remotePathWord(_ path: String) -> String {
    if path == "~" || path == "$HOME" || path == "${HOME}" { return "\"$HOME\"" }
    for prefix in ["~/", "$HOME/", "${HOME}/"] where path.hasPrefix(prefix) {
        let rest = String(path.dropFirst(prefix.count))
        return rest.isEmpty ? "\"$HOME\"/" : "\"$HOME\"/" + shellQuote(rest)
    }
    return shellQuote(path)
}

/// `text` as one single-quoted shell word.
package func shellQuote(_ text: String) -> String {
    "'" + text.replacingOccurrences(of: "'", with: "'\\''") + "'"
}

extension String {
    /// A plain substring replacement (no Foundation).
    func replacingOccurrences(of target: String, with replacement: String) -> String {
        guard !target.isEmpty else { return self }
        var result = ""
        var rest = Substring(self)
        while let range = rest.firstRange(of: target) {
            result += rest[..<range.lowerBound]
            result += replacement
            rest = rest[range.upperBound...]
        }
        return result + rest
    }
}
