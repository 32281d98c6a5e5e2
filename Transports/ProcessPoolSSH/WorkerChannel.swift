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
final class WorkerChannel {
    let connection: RemoteWorkerConnection
    let session: SSHSession
    let channel: OpaquePointer
    let socket: Int32
    private let logger: Logger

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
    private var stderrLine: [UInt8] = []
    /// The first bytes after the preamble, until the hello frame gave the pid.
    private var helloBytes: [UInt8] = []
    /// The remote worker's pid (from its hello frame), for signals.
    private(set) var pid: Int32?
    /// The channel has closed and the exit was recorded.
    private(set) var finished = false
    /// Close the channel as soon as possible (signals without a pid, release).
    var closeRequested = false

    private static let bufferSize = 256 * 1024
    private var buffer = [UInt8](repeating: 0, count: WorkerChannel.bufferSize)

    init(connection: RemoteWorkerConnection, session: SSHSession, channel: OpaquePointer, socket: Int32, logger: Logger) {
        self.connection = connection
        self.session = session
        self.channel = channel
        self.socket = socket
        self.logger = logger
    }

    /// Ready to take bytes from the channel (nothing waits for the core).
    var wantsChannelData: Bool { !finished && toCoreOffset >= toCore.count }
    /// Bytes wait for the core's socket to drain.
    var wantsSocketWrite: Bool { !finished && toCoreOffset < toCore.count }
    /// Room to read more from the core.
    var wantsSocketRead: Bool { !finished && !coreClosed && toRemoteOffset >= toRemote.count }

    /// Moves what can move without blocking; returns whether anything did.
    func pump() throws(SessionLost) -> Bool {
        guard !finished else { return false }
        var progress = false
        progress = flushToCore() || progress
        // channel -> core
        var rounds = 0
        while toCoreOffset >= toCore.count && rounds < 8 && !remoteEnded {
            rounds += 1
            let n = read(stream: 0)
            if n > 0 {
                progress = true
                deliver(n)
                _ = flushToCore()
            } else if n == 0 || n == Int(LIBSSH2_ERROR_EAGAIN) {
                break
            } else {
                try check(n)
                break
            }
        }
        // stderr -> log
        while true {
            let n = read(stream: SSH_EXTENDED_DATA_STDERR)
            if n > 0 { progress = true; logStderr(n); continue }
            if n < 0 && n != Int(LIBSSH2_ERROR_EAGAIN) { try check(n) }
            break
        }
        // core -> channel
        progress = try sendToRemote() || progress
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

    private func read(stream: Int32) -> Int {
        buffer.withUnsafeMutableBytes { raw in
            libssh2_channel_read_ex(channel, stream, raw.baseAddress!.assumingMemoryBound(to: CChar.self), raw.count)
        }
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
    private func deliver(_ n: Int) {
        if synced {
            toCore = Array(buffer[0..<n])
            toCoreOffset = 0
            if pid == nil { noteHello(toCore[...]) }
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
        noteHello(toCore[preamble.count...])
    }

    /// Reads the worker's pid from its hello frame, parsed by the one
    /// validating `HelloMessage` parser (a pid outside 1...2^22 is refused,
    /// and then no signal is ever sent by pid), for later signals.
    private func noteHello(_ bytes: ArraySlice<UInt8>) {
        guard helloBytes.count < 32 else { return }
        helloBytes += bytes.prefix(32 - helloBytes.count)
        guard helloBytes.count >= 5 else { return }
        let length = Int(helloBytes[0]) | Int(helloBytes[1]) << 8 | Int(helloBytes[2]) << 16 | Int(helloBytes[3]) << 24
        guard helloBytes[4] == FrameKind.hello.rawValue, length >= 1, length <= 27 else {
            helloBytes = Array(repeating: 0, count: 32)  // not a hello: never look again
            return
        }
        guard helloBytes.count >= 4 + length else { return }
        helloBytes.withUnsafeBytes { raw in
            var reader = ByteReader(UnsafeRawBufferPointer(rebasing: raw[5..<(4 + length)]))
            pid = (try? HelloMessage(from: &reader))?.pid
        }
        helloBytes = Array(repeating: 0, count: 32)
    }

    private func flushToCore() -> Bool {
        var progress = false
        while toCoreOffset < toCore.count {
            let n = toCore.withUnsafeBytes { raw in
                cpp_send_nosignal(socket, raw.baseAddress! + toCoreOffset, raw.count - toCoreOffset)
            }
            if n > 0 { toCoreOffset += n; progress = true; continue }
            if n < 0 && errno == EINTR { continue }
            if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { break }
            // The core closed its end: drop what it will never read.
            toCore = []
            toCoreOffset = 0
            coreClosed = true
            break
        }
        return progress
    }

    private func sendToRemote() throws(SessionLost) -> Bool {
        var progress = false
        while !remoteEnded {
            if toRemoteOffset >= toRemote.count {
                guard !coreClosed else { break }
                let n = buffer.withUnsafeMutableBytes { raw in Glibc.recv(socket, raw.baseAddress!, 65536, 0) }
                if n > 0 {
                    toRemote = Array(buffer[0..<n])
                    toRemoteOffset = 0
                    progress = true
                } else if n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                    coreClosed = true
                    progress = true
                    break
                } else {
                    break
                }
            }
            let n = toRemote.withUnsafeBytes { raw in
                libssh2_channel_write_ex(channel, 0, raw.baseAddress!.assumingMemoryBound(to: CChar.self) + toRemoteOffset,
                                         raw.count - toRemoteOffset)
            }
            if n > 0 { toRemoteOffset += n; progress = true; continue }
            if n == Int(LIBSSH2_ERROR_EAGAIN) { break }
            try check(n)
            break
        }
        if coreClosed && toRemoteOffset >= toRemote.count && !sentEOF && !remoteEnded {
            let rc = libssh2_channel_send_eof(channel)
            if rc == 0 { sentEOF = true; progress = true } else if rc != LIBSSH2_ERROR_EAGAIN { try check(Int(rc)) }
        }
        return progress
    }

    /// Closes the channel and, once the server confirmed, records the exit.
    private func closeChannel() throws(SessionLost) -> Bool {
        if !closeSent {
            let rc = libssh2_channel_close(channel)
            if rc == LIBSSH2_ERROR_EAGAIN { return false }
            if rc != 0 { try check(Int(rc)) }
            closeSent = true
        }
        let rc = libssh2_channel_wait_closed(channel)
        if rc == LIBSSH2_ERROR_EAGAIN { return false }
        if rc != 0 && rc != LIBSSH2_ERROR_CHANNEL_CLOSED && rc != LIBSSH2_ERROR_INVAL { try check(Int(rc)) }
        if !stderrLine.isEmpty { logLine(stderrLine); stderrLine = [] }
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
        connection.finish(exit)
        _ = libssh2_channel_free(channel)
        _ = shutdown(socket, Int32(SHUT_RDWR))
        Glibc.close(socket)
        session.channelCount -= 1
    }

    private func logStderr(_ n: Int) {
        for byte in buffer[0..<n] {
            if byte == UInt8(ascii: "\n") {
                logLine(stderrLine)
                stderrLine = []
            } else {
                stderrLine.append(byte)
                if stderrLine.count > 8192 { logLine(stderrLine); stderrLine = [] }
            }
        }
    }

    private func logLine(_ bytes: [UInt8]) {
        logger.info("[\(session.host.label)] \(String(decoding: bytes, as: UTF8.self))")
    }

    private func logJunk() {
        let text = String(decoding: junk, as: UTF8.self)
        junk = []
        for line in text.split(separator: "\n") where !line.isEmpty {
            logger.info("[\(session.host.label)] \(line)")
        }
    }
}

/// "KILL" (or "SIGKILL") as a signal number; 0 if unknown.
func signalNumber(_ name: String) -> Int32 { SignalNames.number(name) ?? 0 }
