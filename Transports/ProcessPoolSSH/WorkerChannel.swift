import CLibSSH2
import CProcessPoolShim
import Glibc
import Logging
import ProcessPoolCore

/// The session broke: every channel on it is lost.
struct SessionLost: Error {
    var reason: String
}

/// One worker's exec channel and the host thread's end of its socketpair:
/// bytes flow channel -> socket (from the preamble on: a login shell may
/// print before it) and socket -> channel; stderr goes to the log.
///
/// Every libssh2 call that may send goes through the session's pending-send
/// record (`SSHSession.maySend`/`noteSend`): while another call's packet is
/// half written, this channel neither reads nor writes.
final class WorkerChannel {
    /// The host's slot this worker took has been given back (its
    /// connection was lost, or the core let go of it): counted once.
    var slotReleased = false
    /// Runs (on the host thread) when the channel finishes, before the core
    /// hears of it: the host link frees the worker's slot there.
    var onFinish: (() -> Void)?
    let connection: RemoteWorkerConnection
    let session: SSHSession
    let channel: OpaquePointer
    let socket: Int32
    private let logger: Logger
    private var stderrLog: BoundedLineLog

    private var synced = false
    private var junk: [UInt8] = []
    private var toCore: [UInt8] = []
    private var toCoreOffset = 0
    private var toRemote: [UInt8] = []
    private var toRemoteOffset = 0
    private var coreClosed = false
    private var sentEOF = false
    private var remoteEnded = false
    private var closeSent = false
    /// The pid of the shell that execs the worker, printed by that shell on
    /// stderr before the exec (`pidMarker`): not taken from the worker.
    private(set) var pid: Int32?
    /// The pid marker is no longer looked for (found, or stderr went past it).
    private var pidSettled = false
    private var pidLine: [UInt8] = []
    private var pidScanned = 0
    /// The channel has closed and the exit was recorded.
    private(set) var finished = false
    /// Close the channel as soon as possible (signals without a pid, release).
    var closeRequested = false
    /// A liveness probe on this channel is under way.
    private(set) var probing = false

    private static let bufferSize = 256 * 1024
    /// Bytes read from one stream of the channel per turn, so that every
    /// channel of a host gets its turn (round robin in `HostLink.pumpAll`).
    static let turnBytes = 64 * 1024
    private var buffer = [UInt8](repeating: 0, count: WorkerChannel.bufferSize)

    /// What the shell wrapper prints on stderr before exec'ing the worker.
    static let pidMarker = "PPOOL-SSH-PID "

    init(connection: RemoteWorkerConnection, session: SSHSession, channel: OpaquePointer, socket: Int32, logger: Logger) {
        self.connection = connection
        self.session = session
        self.channel = channel
        self.socket = socket
        self.logger = logger
        self.stderrLog = BoundedLineLog(prefix: "[\(session.host.label)] ") { [logger] line in logger.info("\(line)") }
    }

    /// Ready to take bytes from the channel (nothing waits for the core).
    var wantsChannelData: Bool { !finished && toCoreOffset >= toCore.count }
    /// Bytes wait for the core's socket to drain.
    var wantsSocketWrite: Bool { !finished && toCoreOffset < toCore.count }
    /// Bytes (or the EOF) for this channel that libssh2 already took off the
    /// socket while serving another call (every read drains the socket into
    /// libssh2's packet list): no poll shows them, so the pump must look
    /// again. Only when this channel can take them now.
    var hasBufferedInput: Bool {
        guard !finished, !remoteEnded, wantsChannelData, session.pendingSend == nil else { return false }
        return libssh2_poll_channel_read(channel, 1) == 1 || libssh2_channel_eof(channel) == 1
    }
    /// Room to read more from the core.
    var wantsSocketRead: Bool { !finished && !coreClosed && toRemoteOffset >= toRemote.count }

    /// Moves what can move without blocking, at most `turnBytes` per stream;
    /// returns whether anything did.
    func pump() throws(SessionLost) -> Bool {
        guard !finished else { return false }
        var progress = false
        // A call of ours left half sent: repeat exactly it first.
        if let pending = session.pendingSend, pending.owner == ObjectIdentifier(self) {
            progress = try resume(pending.op) || progress
            if session.pendingSend != nil { return progress }
        } else if session.pendingSend != nil {
            return false
        }
        progress = flushToCore() || progress
        // channel -> core
        var taken = 0
        while toCoreOffset >= toCore.count && taken < WorkerChannel.turnBytes && !remoteEnded {
            guard session.maySend(self, .read(0)) else { return progress }
            let n = read(stream: 0)
            session.noteSend(self, .read(0), n)
            if n > 0 {
                progress = true
                taken += n
                session.lastHeard = cpp_monotonic_ns()
                deliver(n, append: false)
                _ = flushToCore()
            } else if n == 0 || n == Int(LIBSSH2_ERROR_EAGAIN) {
                break
            } else {
                try check(n)
                break
            }
        }
        if session.pendingSend != nil { return progress }
        // stderr -> log
        progress = try readStderr() || progress
        if session.pendingSend != nil { return progress }
        // core -> channel
        progress = try sendToRemote() || progress
        if session.pendingSend != nil { return progress }
        // ends
        if libssh2_channel_eof(channel) == 1 && toCoreOffset >= toCore.count && !remoteEnded {
            remoteEnded = true
            progress = true
            if !junk.isEmpty { logJunk() }
            _ = shutdown(socket, Int32(SHUT_WR))
        }
        if (remoteEnded || closeRequested) && !finished {
            progress = try closeChannel() || progress
        }
        return progress
    }

    /// Repeats the call whose packet is half written.
    private func resume(_ op: SSHSession.SendOp) throws(SessionLost) -> Bool {
        switch op {
        case .read(let stream):
            let n = read(stream: stream)
            session.noteSend(self, op, n)
            if n > 0 {
                if stream == 0 { deliver(n, append: true) } else { noteStderr(n) }
                return true
            }
            if n < 0 && n != Int(LIBSSH2_ERROR_EAGAIN) { try check(n) }
            return n == 0 ? false : session.pendingSend == nil
        case .write:
            let n = writeRemote()
            session.noteSend(self, op, n)
            if n > 0 { toRemoteOffset += n; return true }
            if n != 0 && n != Int(LIBSSH2_ERROR_EAGAIN) { try check(n) }
            return false
        case .eof:
            let rc = Int(libssh2_channel_send_eof(channel))
            session.noteSend(self, op, rc)
            if rc == 0 { sentEOF = true; return true }
            if rc != Int(LIBSSH2_ERROR_EAGAIN) { try check(rc) }
            return false
        case .close, .waitClosed:
            return try closeChannel()
        case .probe:
            return try probe()
        }
    }

    /// A request the server must answer (an `env` request on a running
    /// channel: sshd replies failure), so that a silent host is told from an
    /// idle one. Returns whether the answer arrived.
    @discardableResult
    func probe() throws(SessionLost) -> Bool {
        guard !finished, session.maySend(self, .probe) else { return false }
        probing = true
        let rc = Int(libssh2_channel_setenv_ex(channel, "PPOOL_PROBE", 11, "1", 1))
        session.noteSend(self, .probe, rc)
        if rc == Int(LIBSSH2_ERROR_EAGAIN) { return false }
        probing = false
        session.lastHeard = cpp_monotonic_ns()  // an answer, or an error from the connection
        if rc == 0 || rc == Int(LIBSSH2_ERROR_CHANNEL_REQUEST_DENIED) { return true }
        try check(rc)
        return true
    }

    private func read(stream: Int32) -> Int {
        buffer.withUnsafeMutableBytes { raw in
            libssh2_channel_read_ex(channel, stream, raw.baseAddress!.assumingMemoryBound(to: CChar.self),
                                    min(raw.count, WorkerChannel.turnBytes))
        }
    }

    private func readStderr() throws(SessionLost) -> Bool {
        var progress = false
        var taken = 0
        while taken < WorkerChannel.turnBytes {
            guard session.maySend(self, .read(SSH_EXTENDED_DATA_STDERR)) else { break }
            let n = read(stream: SSH_EXTENDED_DATA_STDERR)
            session.noteSend(self, .read(SSH_EXTENDED_DATA_STDERR), n)
            if n > 0 { progress = true; taken += n; noteStderr(n); continue }
            if n < 0 && n != Int(LIBSSH2_ERROR_EAGAIN) { try check(n) }
            break
        }
        return progress
    }

    /// Channel-level errors end the channel; anything else, the session.
    private func check(_ code: Int) throws(SessionLost) {
        switch Int32(code) {
        case LIBSSH2_ERROR_CHANNEL_CLOSED, LIBSSH2_ERROR_CHANNEL_EOF_SENT, LIBSSH2_ERROR_CHANNEL_UNKNOWN:
            remoteEnded = true
        default:
            throw SessionLost(reason: session.lastError())
        }
    }

    /// Takes `n` bytes read from the channel: before the preamble they are
    /// scanned (and what precedes it is logged), after it they go to the core.
    private func deliver(_ n: Int, append: Bool) {
        if synced {
            if append && toCoreOffset < toCore.count {
                toCore.removeFirst(toCoreOffset)
                toCore += buffer[0..<n]
            } else {
                toCore = Array(buffer[0..<n])
            }
            toCoreOffset = 0
            return
        }
        junk += buffer[0..<n]
        let preamble = WireProtocol.preamble
        guard junk.count >= preamble.count else { return }
        var found: Int?
        for start in 0...(junk.count - preamble.count) where junk[start] == 0 {
            if junk[start..<start + preamble.count].elementsEqual(preamble) { found = start; break }
        }
        guard let start = found else {
            if junk.count > 1 << 20 { junk.removeFirst(junk.count - preamble.count) }
            return
        }
        let before = Array(junk[..<start])
        toCore = Array(junk[start...])
        toCoreOffset = 0
        junk = before
        if !junk.isEmpty { logJunk() }
        synced = true
    }

    private func flushToCore() -> Bool {
        var progress = false
        while toCoreOffset < toCore.count {
            let offset = toCoreOffset
            let result = toCore.withUnsafeBytes { raw in Syscall.send(socket, UnsafeRawBufferPointer(rebasing: raw[offset...])) }
            switch result {
            case .bytes(let n):
                toCoreOffset += n
                progress = true
            case .wouldBlock:
                return progress
            case .endOfStream, .failed:
                // The core closed its end: drop what it will never read.
                toCore = []
                toCoreOffset = 0
                coreClosed = true
                return progress
            }
        }
        return progress
    }

    /// One write of what is left of `toRemote` (the same buffer until it is all sent).
    private func writeRemote() -> Int {
        toRemote.withUnsafeBytes { raw in
            libssh2_channel_write_ex(channel, 0, raw.baseAddress!.assumingMemoryBound(to: CChar.self) + toRemoteOffset,
                                     raw.count - toRemoteOffset)
        }
    }

    private func sendToRemote() throws(SessionLost) -> Bool {
        var progress = false
        var sent = 0
        while !remoteEnded && sent < WorkerChannel.turnBytes {
            if toRemoteOffset >= toRemote.count {
                guard !coreClosed else { break }
                let result = buffer.withUnsafeMutableBytes { raw in
                    Syscall.receive(socket, into: UnsafeMutableRawBufferPointer(rebasing: raw[0..<65536]))
                }
                switch result {
                case .bytes(let n):
                    toRemote = Array(buffer[0..<n])
                    toRemoteOffset = 0
                    progress = true
                case .wouldBlock:
                    break
                case .endOfStream, .failed:
                    coreClosed = true
                    progress = true
                }
                guard case .bytes = result else { break }
            }
            guard session.maySend(self, .write) else { return progress }
            let n = writeRemote()
            session.noteSend(self, .write, n)
            if n > 0 { toRemoteOffset += n; sent += n; progress = true; session.lastHeard = cpp_monotonic_ns(); continue }
            // EAGAIN, or 0 when the channel's window is used up: wait.
            if n == 0 || n == Int(LIBSSH2_ERROR_EAGAIN) { return progress }
            try check(n)
            break
        }
        if coreClosed && toRemoteOffset >= toRemote.count && !sentEOF && !remoteEnded && session.maySend(self, .eof) {
            let rc = Int(libssh2_channel_send_eof(channel))
            session.noteSend(self, .eof, rc)
            if rc == 0 { sentEOF = true; progress = true } else if rc != Int(LIBSSH2_ERROR_EAGAIN) { try check(rc) }
        }
        return progress
    }

    /// Closes the channel and, once the server confirmed, records the exit.
    private func closeChannel() throws(SessionLost) -> Bool {
        if !closeSent {
            guard session.maySend(self, .close) else { return false }
            let rc = Int(libssh2_channel_close(channel))
            session.noteSend(self, .close, rc)
            if rc == Int(LIBSSH2_ERROR_EAGAIN) { return false }
            if rc != 0 { try check(rc) }
            closeSent = true
        }
        guard session.maySend(self, .waitClosed) else { return false }
        let rc = Int(libssh2_channel_wait_closed(channel))
        session.noteSend(self, .waitClosed, rc)
        if rc == Int(LIBSSH2_ERROR_EAGAIN) { return false }
        if rc != 0 && rc != Int(LIBSSH2_ERROR_CHANNEL_CLOSED) && rc != Int(LIBSSH2_ERROR_INVAL) { try check(rc) }
        if !pidSettled && !pidLine.isEmpty { settlePid() }
        stderrLog.flush()
        finish(exitStatus())
        return true
    }

    /// How the remote command ended, as the server reported it.
    private func exitStatus() -> WorkerExit {
        var name: UnsafeMutablePointer<CChar>?
        var length = 0
        if libssh2_channel_get_exit_signal(channel, &name, &length, nil, nil, nil, nil) == 0, let name {
            let text = String(cString: name)
            Glibc.free(name)
            if !text.isEmpty { return .signaled(signalNumber(text)) }
        }
        return .exited(libssh2_channel_get_exit_status(channel))
    }

    /// Records the end, wakes the core, frees the channel and our socket end.
    func finish(_ exit: WorkerExit) {
        guard !finished else { return }
        finished = true
        session.clearPending(of: self)
        onFinish?()
        onFinish = nil
        connection.finish(exit)
        _ = libssh2_channel_free(channel)
        _ = shutdown(socket, Int32(SHUT_RDWR))
        Glibc.close(socket)
        session.channelCount -= 1
    }

    /// Stderr bytes: the wrapper's pid line is looked for in the first
    /// lines (a login shell may print before it), the rest is logged (bounded).
    private func noteStderr(_ n: Int) {
        var bytes = buffer[0..<n]
        while !pidSettled, let byte = bytes.first {
            bytes = bytes.dropFirst()
            pidScanned += 1
            if byte == UInt8(ascii: "\n") {
                settlePid()
                continue
            }
            if pidLine.count < 256 { pidLine.append(byte) }
        }
        if !bytes.isEmpty { stderrLog.take(bytes) }
    }

    /// Checks one stderr line for the wrapper's marker (the first marker is
    /// ours: the shell prints it before it execs the worker).
    private func settlePid() {
        let marker = Array(WorkerChannel.pidMarker.utf8)
        if pidLine.starts(with: marker), let value = Int32(String(decoding: pidLine[marker.count...], as: UTF8.self)),
           value > 1, value <= 1 << 22 {
            pid = value
            pidSettled = true
        } else {
            stderrLog.take(pidLine[...])
            stderrLog.take([UInt8(ascii: "\n")][...])
            if pidScanned > 16384 { pidSettled = true }
        }
        pidLine = []
    }

    private func logJunk() {
        stderrLog.take(junk[...])
        stderrLog.take([UInt8(ascii: "\n")][...])
        junk = []
    }
}

/// A worker's stderr as log lines, bounded: control bytes shown as \xNN,
/// at most `maxLineBytes` per line, at most `maxLinesPerSecond` lines a
/// second (then one "…N lines dropped" note).
package struct BoundedLineLog {
    let prefix: String
    let emit: (String) -> Void
    package static let maxLineBytes = 1024
    package static let maxLinesPerSecond = 50
    private var line: [UInt8] = []
    private var truncated = false
    private var windowStart: UInt64 = 0
    private var linesInWindow = 0
    private(set) var dropped = 0

    package init(prefix: String, emit: @escaping (String) -> Void) {
        self.prefix = prefix
        self.emit = emit
    }

    package mutating func take(_ bytes: ArraySlice<UInt8>) {
        for byte in bytes {
            if byte == UInt8(ascii: "\n") {
                emitLine()
            } else if line.count < BoundedLineLog.maxLineBytes {
                line.append(byte)
            } else {
                truncated = true
            }
        }
    }

    package mutating func take(_ text: String) { take(Array(text.utf8)[...]) }


    package mutating func flush() {
        if !line.isEmpty || truncated { emitLine() }
        noteDropped(force: true)
    }

    private mutating func emitLine() {
        defer { line.removeAll(keepingCapacity: true); truncated = false }
        let now = cpp_monotonic_ns()
        if now &- windowStart >= 1_000_000_000 {
            noteDropped(force: true)
            windowStart = now
            linesInWindow = 0
        }
        guard linesInWindow < BoundedLineLog.maxLinesPerSecond else { dropped += 1; return }
        linesInWindow += 1
        emit("\(prefix)\(BoundedLineLog.escape(line))\(truncated ? "…" : "")")
    }

    private mutating func noteDropped(force: Bool) {
        guard dropped > 0 else { return }
        emit("\(prefix)…\(dropped) lines dropped")
        dropped = 0
    }

    /// UTF-8 text with control bytes (and invalid bytes) as \xNN.
    package static func escape(_ bytes: [UInt8]) -> String {
        var out = ""
        var index = 0
        while index < bytes.count {
            let byte = bytes[index]
            if byte < 0x20 || byte == 0x7f || byte == UInt8(ascii: "\\") {
                out += byte == UInt8(ascii: "\\") ? "\\\\" : "\\x" + hex(byte)
                index += 1
                continue
            }
            if byte < 0x80 { out.unicodeScalars.append(Unicode.Scalar(byte)); index += 1; continue }
            // A multi-byte sequence: keep it when valid, escape its bytes otherwise.
            let length = byte >= 0xf0 ? 4 : byte >= 0xe0 ? 3 : byte >= 0xc2 ? 2 : 0
            if length > 0, index + length <= bytes.count,
               let text = String(validating: bytes[index..<index + length], as: UTF8.self),
               text.unicodeScalars.allSatisfy({ $0.value >= 0xa0 }) {
                out += text
                index += length
            } else {
                out += "\\x" + hex(byte)
                index += 1
            }
        }
        return out
    }

    private static func hex(_ byte: UInt8) -> String {
        let digits = Array("0123456789abcdef")
        return String(digits[Int(byte >> 4)]) + String(digits[Int(byte & 15)])
    }
}

/// "KILL" (or "SIGKILL") as a signal number; 0 if unknown.
func signalNumber(_ name: String) -> Int32 { SignalNames.number(name) ?? 0 }
