import CLibSSH2
import CProcessPoolShim
import Glibc
import Logging
import ProcessPoolCore

/// Short commands run on a host during set-up (architecture check, upload),
/// driven in libssh2's non-blocking mode with our own waits, so that each
/// phase has its own limit:
/// - opening the channel and starting the command: `timeout` (blocking mode,
///   libssh2's own timeout);
/// - the input (the upload): every write must make progress within
///   `timeout`; progress resets the clock, so a slow but moving transfer
///   takes as long as it needs, and a stalled one fails naming the host;
/// - after the input (or at once without one): sending EOF, reading the
///   output and closing must be done within `timeout`, so a command that
///   prints forever cannot hold set-up forever. Input already written but
///   still on its way restarts that clock while it moves (see `FinishClock`);
///   output never does.
///
/// Output is bounded: at most `outputLimit` bytes of stdout (the last ones:
/// the answers follow a marker printed last) and of stderr (the first ones:
/// the first message names the cause) are kept; the rest is read and
/// dropped, so the command can end, and counted.
///
/// Every call is repeated exactly while it returns EAGAIN (the one-pending-
/// send rule of libssh2 1.10). After an error the session must not be used
/// again: a packet may be left half sent.
extension SSHSession {
    /// What a finished command printed and how it ended.
    struct CommandResult {
        var status: Int32
        /// The last `outputLimit` bytes of stdout.
        var output: String
        /// The first `outputLimit` bytes of stderr.
        var errorOutput: String
        /// Bytes of stdout that were read and dropped (before the kept tail).
        var outputDropped = 0
        /// Bytes of stderr that were read and dropped (after the kept head).
        var errorOutputDropped = 0

        /// Whether any output was dropped.
        var truncated: Bool { outputDropped > 0 || errorOutputDropped > 0 }

        /// The lines printed after `marker` (login shells may print junk first).
        func lines(after marker: String) -> [String] {
            let all = output.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
            guard let index = all.lastIndex(of: marker) else { return [] }
            return Array(all[(index + 1)...]).filter { !$0.isEmpty }
        }

        /// stderr as a reason, marked when cut.
        var errorText: String {
            errorOutputDropped > 0 ? errorOutput + "… (\(errorOutputDropped) more bytes)" : errorOutput
        }
    }

    /// The most of each output stream a command's result keeps.
    static let outputLimit = 64 * 1024

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

    /// Runs `command` to completion, feeding it `inputFile` on stdin when
    /// given, under the limits above (`timeout` in nanoseconds). Upload
    /// progress goes to `logger` at debug level (at most a dozen lines).
    /// The session is left non-blocking.
    func run(_ command: String, inputFile: String? = nil, timeout: UInt64, logger: Logger? = nil) throws -> CommandResult {
        libssh2_session_set_blocking(handle, 1)
        setTimeout(until: cpp_monotonic_ns() &+ timeout)
        let channel = try startCommand(command)
        libssh2_session_set_blocking(handle, 0)
        defer { _ = libssh2_channel_free(channel) }
        if let inputFile {
            try send(file: inputFile, to: channel, stallLimit: timeout, logger: logger)
        }
        var clock = FinishClock(session: self, channel: channel, timeout: timeout, watchesInput: inputFile != nil)
        let overdue = SSHError.failed(host: host.label, "a set-up command did not finish within \(seconds(timeout)) s of \(inputFile == nil ? "its start" : "the last of its input moving")")
        guard let eof = repeatWhileBlocked(&clock, { libssh2_channel_send_eof(channel) }) else { throw overdue }
        guard eof == 0 else { throw SSHError.failed(host: host.label, "cannot end a command's input: \(lastError())") }
        var output = OutputCapture(limit: SSHSession.outputLimit, keepsTail: true)
        var errorOutput = OutputCapture(limit: SSHSession.outputLimit, keepsTail: false)
        try readOutputs(channel, into: &output, &errorOutput, clock: &clock, overdue: overdue)
        guard let closed = repeatWhileBlocked(&clock, { libssh2_channel_close(channel) }) else { throw overdue }
        if closed == 0 {
            guard repeatWhileBlocked(&clock, { libssh2_channel_wait_closed(channel) }) != nil else { throw overdue }
        }
        return CommandResult(status: libssh2_channel_get_exit_status(channel),
                             output: String(decoding: output.kept, as: UTF8.self),
                             errorOutput: String(decoding: errorOutput.kept, as: UTF8.self),
                             outputDropped: output.dropped, errorOutputDropped: errorOutput.dropped)
    }

    /// Streams a file into the channel's stdin. Fails when no byte was
    /// taken for `stallLimit` ns; each byte taken resets that clock.
    private func send(file path: String, to channel: OpaquePointer, stallLimit: UInt64, logger: Logger?) throws {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw SSHError.failed(host: host.label, "cannot read \(path): \(SystemErrorText())") }
        defer { Glibc.close(fd) }
        var info = stat()
        let total = fstat(fd, &info) == 0 ? Int(info.st_size) : 0
        var progress = TransferProgress(total: total, label: host.label, logger: logger)
        var chunk = [UInt8](repeating: 0, count: 1 << 17)
        var lastMoved = cpp_monotonic_ns()
        while true {
            let count: Int
            switch chunk.withUnsafeMutableBytes({ Syscall.read(fd, into: $0) }) {
            case .bytes(let n): count = n
            case .endOfStream: progress.finish(); return
            case .wouldBlock, .failed: throw SSHError.failed(host: host.label, "cannot read \(path): \(SystemErrorText())")
            }
            var offset = 0
            while offset < count {
                // The same call with the same bytes until it takes some (a
                // packet it left half written is finished by this call only).
                let written = chunk.withUnsafeBytes { raw in
                    libssh2_channel_write_ex(channel, 0, raw.baseAddress!.advanced(by: offset).assumingMemoryBound(to: CChar.self),
                                             count - offset)
                }
                if written > 0 {
                    offset += written
                    lastMoved = cpp_monotonic_ns()
                    progress.moved(written)
                    continue
                }
                // EAGAIN: the socket is full; 0: the channel's window is used
                // up (its adjust arrives from the host).
                guard written == 0 || written == Int(LIBSSH2_ERROR_EAGAIN) else {
                    throw SSHError.failed(host: host.label, "upload failed: \(lastError())")
                }
                let stallEnds = lastMoved &+ stallLimit
                guard cpp_monotonic_ns() < stallEnds else {
                    throw SSHError.failed(host: host.label, "the upload made no progress for \(seconds(stallLimit)) s (\(progress.summary) sent)")
                }
                waitForSocket(until: stallEnds, inbound: written == 0)
            }
        }
    }

    /// Reads stdout and stderr until both end, keeping what the captures
    /// keep; fails with `overdue` once the clock runs out.
    private func readOutputs(_ channel: OpaquePointer, into output: inout OutputCapture, _ errorOutput: inout OutputCapture,
                             clock: inout FinishClock, overdue: SSHError) throws {
        var chunk = [UInt8](repeating: 0, count: 32768)
        let streams: [Int32] = [0, SSH_EXTENDED_DATA_STDERR]
        var open = [true, true]
        // A read whose window adjust is half sent: only it may be repeated.
        var pending: Int?
        while open[0] || open[1] {
            var moved = false
            for index in 0..<2 where open[index] && (pending == nil || pending == index) {
                let n = chunk.withUnsafeMutableBytes { raw in
                    libssh2_channel_read_ex(channel, streams[index], raw.baseAddress!.assumingMemoryBound(to: CChar.self), raw.count)
                }
                if n > 0 {
                    if index == 0 { output.take(chunk[0..<n]) } else { errorOutput.take(chunk[0..<n]) }
                    moved = true
                    pending = nil
                } else if n == 0 {
                    open[index] = false
                    pending = nil
                } else if n == Int(LIBSSH2_ERROR_EAGAIN) {
                    if libssh2_session_block_directions(handle) & LIBSSH2_SESSION_BLOCK_OUTBOUND != 0 {
                        pending = index
                        break
                    }
                } else {
                    throw SSHError.failed(host: host.label, "reading a command's output failed: \(lastError())")
                }
            }
            // Checked on every turn: a command that prints forever always moves.
            guard clock.timeLeft() else { throw overdue }
            guard !moved && (open[0] || open[1]) else { continue }
            // A read of one stream takes every packet off the socket: the
            // other stream's bytes or the EOF may now wait inside libssh2,
            // where no poll sees them. Look again before waiting.
            if pending == nil && (libssh2_poll_channel_read(channel, 1) == 1 || libssh2_channel_eof(channel) == 1) { continue }
            waitForSocket(until: clock.nextLook(), inbound: false)
        }
    }

    /// Repeats a non-blocking libssh2 call while it returns EAGAIN, waiting
    /// for the socket between tries; its result, or nil once the clock ran out.
    private func repeatWhileBlocked<R: BinaryInteger>(_ clock: inout FinishClock, _ call: () -> R) -> R? {
        while true {
            let rc = call()
            guard rc == R(LIBSSH2_ERROR_EAGAIN) else { return rc }
            guard clock.timeLeft() else { return nil }
            waitForSocket(until: clock.nextLook(), inbound: false)
        }
    }

    /// Bytes written on the socket that the peer has not acknowledged yet.
    fileprivate func unsentBytes() -> Int32 {
        var count: Int32 = 0
        return ioctl(socket, UInt(TIOCOUTQ), &count) == 0 ? count : 0
    }

    /// Waits (at most until `deadline`) for the socket in the directions
    /// libssh2 last blocked on; `inbound` waits for bytes from the host.
    private func waitForSocket(until deadline: UInt64, inbound: Bool) {
        let now = cpp_monotonic_ns()
        guard now < deadline else { return }
        let directions = inbound ? LIBSSH2_SESSION_BLOCK_INBOUND : libssh2_session_block_directions(handle)
        var events: Int32 = 0
        if directions & LIBSSH2_SESSION_BLOCK_INBOUND != 0 { events |= Int32(POLLIN) }
        if directions & LIBSSH2_SESSION_BLOCK_OUTBOUND != 0 { events |= Int32(POLLOUT) }
        if events == 0 { events = Int32(POLLIN) }
        var fds = [pollfd(fd: socket, events: Int16(events), revents: 0)]
        let ms = Int32(min((deadline - now + 999_999) / 1_000_000, 1 << 30))
        _ = Syscall.poll(&fds, timeoutMilliseconds: ms)
    }

    private func seconds(_ nanos: UInt64) -> String {
        let tenths = (nanos + 50_000_000) / 100_000_000
        return tenths % 10 == 0 ? "\(tenths / 10)" : "\(tenths / 10).\(tenths % 10)"
    }
}

/// The clock of a command's last phase (EOF, output, close): `timeout`
/// from the end of its input, restarted whenever input already written
/// still moves: the channel's write window grows (the host consumed some
/// and said so) or the socket's unacknowledged queue shrinks. A slow link
/// thus drains the last of an upload (up to sshd's 2 MiB channel window)
/// however long that takes while it moves; once nothing of the input
/// moves, `timeout` bounds the rest. Output never restarts it.
///
/// Limit: sshd acknowledges consumed input in window adjusts only while
/// more than half its window is outstanding, so the last ~1 MiB may reach
/// the host with no sign once our socket's queue is empty (a buffering
/// middlebox): a link slower than about 1 MiB per `timeout` can fail there.
struct FinishClock {
    private unowned let session: SSHSession
    private let channel: OpaquePointer
    private let timeout: UInt64
    private let watchesInput: Bool
    private var deadline: UInt64
    private var window: UInt
    private var unsent: Int32

    init(session: SSHSession, channel: OpaquePointer, timeout: UInt64, watchesInput: Bool) {
        self.session = session
        self.channel = channel
        self.timeout = timeout
        self.watchesInput = watchesInput
        deadline = cpp_monotonic_ns() &+ timeout
        window = watchesInput ? libssh2_channel_window_write_ex(channel, nil) : 0
        unsent = watchesInput ? session.unsentBytes() : 0
    }

    /// Whether time is left; restarts the clock when the input moved.
    mutating func timeLeft() -> Bool {
        let now = cpp_monotonic_ns()
        if watchesInput {
            let window = libssh2_channel_window_write_ex(channel, nil)
            let unsent = session.unsentBytes()
            if window > self.window || unsent < self.unsent { deadline = now &+ timeout }
            self.window = window
            self.unsent = unsent
        }
        return now < deadline
    }

    /// When to look again at the latest: often while our socket still holds
    /// input (its queue shrinks without waking us), else at the deadline.
    func nextLook() -> UInt64 {
        watchesInput && unsent > 0 ? min(deadline, cpp_monotonic_ns() &+ 100_000_000) : deadline
    }
}

/// One output stream of a set-up command, bounded: the first or the last
/// `limit` bytes are kept, the rest counted.
struct OutputCapture {
    let limit: Int
    let keepsTail: Bool
    private var bytes: [UInt8] = []
    private var trimmed = 0

    init(limit: Int, keepsTail: Bool) {
        self.limit = limit
        self.keepsTail = keepsTail
    }

    mutating func take(_ chunk: ArraySlice<UInt8>) {
        if !keepsTail {
            let room = max(0, limit - bytes.count)
            bytes += chunk.prefix(room)
            trimmed += chunk.count - min(room, chunk.count)
            return
        }
        if chunk.count > limit { trimmed += chunk.count - limit }
        bytes += chunk.suffix(limit)
        // Trimmed in batches: never more than twice the limit is held.
        if bytes.count > 2 * limit {
            trimmed += bytes.count - limit
            bytes.removeFirst(bytes.count - limit)
        }
    }

    /// The kept bytes: the first (or last) `limit` at most.
    var kept: [UInt8] { keepsTail ? Array(bytes.suffix(limit)) : bytes }
    /// How many bytes were read and not kept.
    var dropped: Int { trimmed + max(0, bytes.count - limit) }
}

/// Upload progress as debug log lines: one at the start, one per tenth
/// moved, one at the end (at most a dozen lines, whatever the size).
struct TransferProgress {
    let total: Int
    let label: String
    let logger: Logger?
    let started = cpp_monotonic_ns()
    private(set) var sent = 0
    private var tenthsLogged = 0

    init(total: Int, label: String, logger: Logger?) {
        self.total = total
        self.label = label
        self.logger = logger
        logger?.debug("[\(label)] uploading the worker executable (\(TransferProgress.megabytes(total)) MB)")
    }

    mutating func moved(_ count: Int) {
        sent += count
        guard total > 0 else { return }
        let tenths = min(10, sent * 10 / total)
        guard tenths > tenthsLogged, tenths < 10 else { return }
        tenthsLogged = tenths
        logger?.debug("[\(label)] upload \(tenths * 10)%: \(summary) at \(rate) MB/s")
    }

    mutating func finish() {
        logger?.debug("[\(label)] upload done: \(TransferProgress.megabytes(sent)) MB at \(rate) MB/s")
    }

    /// "1.2 of 6.7 MB".
    var summary: String { "\(TransferProgress.megabytes(sent)) of \(TransferProgress.megabytes(total)) MB" }

    private var rate: String {
        let elapsed = max(1, cpp_monotonic_ns() &- started)
        return TransferProgress.megabytes(Int(Double(sent) * 1e9 / Double(elapsed)))
    }

    /// Bytes as MB with one decimal.
    static func megabytes(_ bytes: Int) -> String {
        let tenths = (bytes + 50_000) / 100_000
        return "\(tenths / 10).\(tenths % 10)"
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
