import Glibc
import ProcessPool
import Synchronization

// A fake start method for hostile-worker tests (SEMANTICS 39).
//
// Everything here uses the public `WorkerLauncher` / `LaunchSession` /
// `WorkerConnection` API only, as a third party adding a start method would:
// a "worker" is a thread of this test process speaking the worker side of
// the protocol over a socketpair, following a script. The script decides
// every byte the parent receives, so it can send what no real worker would:
// absurd counts and lengths, impossible bit patterns, floods, silence.
//
//     pool I/O thread  <-- socketpair -->  fake worker thread (runs the script)
//     exitDescriptor   <-- eventfd    <--  signalled when the script ends
//
// The protocol is spelled out here byte by byte (`FakeWire`) rather than
// borrowed from the core: the point is to test the parent against bytes it
// did not produce. The fake learns the protocol version from the parent's
// `configure` frame and speaks that version (v2: hello carries the
// initializer's "ok" byte; v3 and later: hello, then a separate `ready`).

// MARK: - Wire format

/// The worker protocol, spelled out for the fake (the core's own definitions
/// are not public API). See `Sources/ProcessPoolCore/Wire/WireProtocol.swift`.
///
/// After an 8-byte preamble (worker to parent only), frames are
/// `u32 LE length (kind + body) | u8 kind | body`. Varints are LEB128,
/// strings a varint length and UTF-8, payloads a u32 LE length and bytes.
enum FakeWire {
    // Parent -> worker.
    static let configure: UInt8 = 1
    static let run: UInt8 = 2
    static let exit: UInt8 = 3
    // Either way.
    static let attachments: UInt8 = 5
    // Worker -> parent.
    static let hello: UInt8 = 101
    static let results: UInt8 = 102
    /// Protocol 3 and later: the initializer's outcome, after `hello`.
    static let ready: UInt8 = 103
    static let goodbye: UInt8 = 104

    /// `results` layouts.
    static let separateLayout: UInt8 = 0
    static let blockLayout: UInt8 = 1

    /// Outcome tags (separate layout).
    static let successTag: UInt8 = 0
    static let registeredErrorTag: UInt8 = 1
    static let remoteErrorTag: UInt8 = 2

    /// Goodbye reasons.
    static let maxTasksReached: UInt64 = 1
    static let exitRequested: UInt64 = 2

    /// The largest frame either side accepts.
    static let maxFrameBytes = 1 << 30

    /// "\0PPOOL", the protocol version, "\n".
    static func preamble(version: UInt16) -> [UInt8] {
        [0, 0x50, 0x50, 0x4F, 0x4F, 0x4C, UInt8(truncatingIfNeeded: version), 0x0A]
    }

    /// LEB128.
    static func varint(_ value: UInt64) -> [UInt8] {
        var value = value
        var out: [UInt8] = []
        repeat {
            var byte = UInt8(value & 0x7f)
            value >>= 7
            if value != 0 { byte |= 0x80 }
            out.append(byte)
        } while value != 0
        return out
    }

    static func u16(_ value: UInt16) -> [UInt8] { withUnsafeBytes(of: value.littleEndian, Array.init) }
    static func u32(_ value: UInt32) -> [UInt8] { withUnsafeBytes(of: value.littleEndian, Array.init) }
    static func u64(_ value: UInt64) -> [UInt8] { withUnsafeBytes(of: value.littleEndian, Array.init) }

    /// A varint length and UTF-8.
    static func string(_ value: String) -> [UInt8] {
        varint(UInt64(value.utf8.count)) + Array(value.utf8)
    }

    /// A u32-length-prefixed payload.
    static func payload(_ bytes: [UInt8]) -> [UInt8] { u32(UInt32(bytes.count)) + bytes }

    /// A whole frame: length, kind, body.
    static func frame(kind: UInt8, body: [UInt8]) -> [UInt8] {
        u32(UInt32(1 + body.count)) + [kind] + body
    }

    /// A frame header announcing `length` bytes (kind included) of `kind`,
    /// for lying about lengths.
    static func header(length: UInt32, kind: UInt8) -> [UInt8] { u32(length) + [kind] }

    /// The body of a `hello` in protocol `version`.
    static func helloBody(version: UInt16, pid: UInt64, ok: Bool = true) -> [UInt8] {
        var body = u16(version) + varint(pid)
        if version < 3 { body.append(ok ? 1 : 0) }
        return body
    }

    /// The body of a `results` frame: the header, then `values` as they are
    /// (outcomes for the separate layout, a `block(stride:_:)` for the block one).
    static func resultsBody(itemID: UInt64, runNanos: UInt64, count: UInt64, layout: UInt8,
                            values: [UInt8]) -> [UInt8] {
        varint(itemID) + u64(runNanos) + varint(count) + [layout] + values
    }

    /// A success outcome carrying a `BinaryEncoder` encoding.
    static func success(_ encoded: [UInt8]) -> [UInt8] { [successTag] + payload(encoded) }

    /// An unregistered-error outcome.
    static func remoteError(type: String, message: String) -> [UInt8] {
        [remoteErrorTag] + string(type) + string(message)
    }

    /// A block: u32 stride, then the values' bytes.
    static func block(stride: UInt32, _ bytes: [UInt8]) -> [UInt8] { u32(stride) + bytes }

    /// `BinaryEncoder`'s encoding of an `Int`: tag 0x08 and 8 bytes LE.
    static func encodedInt(_ value: Int) -> [UInt8] { [0x08] + u64(UInt64(bitPattern: Int64(value))) }

    /// `BinaryEncoder`'s encoding of a `Bool`: tag 0x01 (false) or 0x02 (true).
    static func encodedBool(_ value: Bool) -> [UInt8] { [value ? 0x02 : 0x01] }

    /// `BinaryEncoder` container tags: a container is its tag, a u32 LE byte
    /// length, then its entries (keyed: key string + value; unkeyed: values).
    static let keyedTag: UInt8 = 0x13
    static let unkeyedTag: UInt8 = 0x14

    /// An `attachments` frame body announcing these lengths.
    static func attachmentsBody(count: UInt64, lengths: [UInt64]) -> [UInt8] {
        varint(count) + lengths.flatMap { varint($0) }
    }
}

/// A bounds-checked little-endian reader for what the parent sends the fake.
struct FakeReader {
    let bytes: [UInt8]
    var offset = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    var isAtEnd: Bool { offset >= bytes.count }

    mutating func byte() throws -> UInt8 {
        guard offset < bytes.count else { throw FakeWorkerError.malformed("truncated frame from the parent") }
        defer { offset += 1 }
        return bytes[offset]
    }

    mutating func raw(_ n: Int) throws -> [UInt8] {
        guard n >= 0, n <= bytes.count - offset else {
            throw FakeWorkerError.malformed("truncated frame from the parent")
        }
        defer { offset += n }
        return Array(bytes[offset..<offset + n])
    }

    mutating func u16() throws -> UInt16 { UInt16(try byte()) | UInt16(try byte()) << 8 }

    mutating func u32() throws -> UInt32 {
        var value: UInt32 = 0
        for shift in stride(from: 0, to: 32, by: 8) { value |= UInt32(try byte()) << UInt32(shift) }
        return value
    }

    mutating func varint() throws -> UInt64 {
        var value: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            let b = try byte()
            guard shift < 64 else { throw FakeWorkerError.malformed("varint too long") }
            value |= UInt64(b & 0x7f) << shift
            if b & 0x80 == 0 { return value }
            shift += 7
        }
    }

    mutating func string() throws -> String {
        let n = try varint()
        guard n <= UInt64(bytes.count - offset) else { throw FakeWorkerError.malformed("string too long") }
        return String(decoding: try raw(Int(n)), as: UTF8.self)
    }
}

/// One frame the parent sent, with the attachments announced before it.
struct FakeFrame {
    var kind: UInt8
    var body: [UInt8]
    var attachments: [[UInt8]] = []
}

/// A parsed `run` frame: item id, task name, call count, layout, and either
/// one payload per call (separate layout) or the calls' block.
struct FakeRunRequest {
    var itemID: UInt64
    var taskName: String
    var count: Int
    var layout: UInt8
    /// Separate layout: each call's `BinaryEncoder` payload.
    var payloads: [[UInt8]] = []
    /// Block layout: the stride and the calls' bytes.
    var stride: Int = 0
    var block: [UInt8] = []

    init(_ frame: FakeFrame) throws {
        guard frame.kind == FakeWire.run else { throw FakeWorkerError.malformed("expected run, got kind \(frame.kind)") }
        var reader = FakeReader(frame.body)
        itemID = try reader.varint()
        taskName = try reader.string()
        let rawCount = try reader.varint()
        guard rawCount <= UInt64(frame.body.count) else { throw FakeWorkerError.malformed("run count \(rawCount)") }
        count = Int(rawCount)
        layout = try reader.byte()
        if layout == FakeWire.blockLayout {
            stride = Int(try reader.u32())
            block = try reader.raw(stride * count)
        } else {
            for _ in 0..<count { payloads.append(try reader.raw(Int(try reader.u32()))) }
        }
    }

    /// The `value` of an `Echo` call: its payload is a keyed container whose
    /// last entry is `value`, an Int (tag 0x08 + 8 bytes LE).
    func echoValue(_ call: Int) throws -> Int {
        let payload = payloads[call]
        guard payload.count >= 9, payload[payload.count - 9] == 0x08 else {
            throw FakeWorkerError.malformed("not an Echo payload: \(payload)")
        }
        var value: UInt64 = 0
        for (i, b) in payload[(payload.count - 8)...].enumerated() { value |= UInt64(b) << UInt64(8 * i) }
        return Int(Int64(bitPattern: value))
    }
}

/// Why a fake worker's script stopped early.
enum FakeWorkerError: Error, CustomStringConvertible {
    /// The pool killed or terminated the worker (after the launcher's grace).
    case stopped(signal: Int32)
    /// The watchdog ended a worker that outlived the launcher's `lifetime`.
    case watchdog
    /// The parent closed its end of the stream.
    case parentClosed
    /// The parent sent something the fake cannot parse.
    case malformed(String)

    var description: String {
        switch self {
        case .stopped(let signal): "stopped by signal \(signal)"
        case .watchdog: "watchdog: the fake outlived its lifetime"
        case .parentClosed: "the parent closed the stream"
        case .malformed(let why): "malformed frame from the parent: \(why)"
        }
    }
}

// MARK: - Launcher

/// A start method whose workers are scripted threads (see the file comment).
///
/// ```swift
/// let launcher = FakeLauncher { worker in
///     try worker.handshake()
///     let run = try worker.readRun()
///     try worker.sendResults(itemID: run.itemID, count: .max, payload: [])
///     try worker.lingerUntilKilled()
/// }
/// let pool = try ProcessPoolExecutor(maxWorkers: 1, context: StartMethod(launcher: launcher), tasks: testRegistry)
/// ```
///
/// - `helloTimeout` is 1 s (the pool breaks when a fake never says hello).
/// - `kill()`/`terminate()` from the pool stop the script at its next I/O
///   call, `killGrace` after the signal (zero: at once). A grace models a
///   worker that keeps sending after it was told to die (a slow remote, a
///   process stuck in the kernel), so a test can see whether the parent
///   keeps reading it meanwhile.
/// - `lifetime` bounds every fake: a script still running then is ended (a
///   test never hangs on a fake the pool forgot).
final class FakeLauncher: WorkerLauncher {
    /// A worker's behaviour; it runs on the worker's own thread. Returning
    /// ends the worker with `worker.exitStatus`; throwing `stopped` (the pool
    /// killed it) with that signal; `parentClosed` with exit code 0; any
    /// other error with exit code 2 (a real worker's protocol-error status).
    typealias Script = @Sendable (FakeWorker) throws -> Void

    let name = "fake"
    let helloTimeout: Duration
    let restartsSilentStarts: Bool
    let killGrace: Duration
    let lifetime: Duration
    let script: Script
    private let launched = Mutex<[FakeWorkerConnection]>([])

    init(helloTimeout: Duration = .seconds(1), restartsSilentStarts: Bool = false, killGrace: Duration = .zero,
         lifetime: Duration = .seconds(90), script: @escaping Script) {
        self.helloTimeout = helloTimeout
        self.restartsSilentStarts = restartsSilentStarts
        self.killGrace = killGrace
        self.lifetime = lifetime
        self.script = script
    }

    /// This launcher as a start method.
    var method: StartMethod { StartMethod(launcher: self) }

    func makeSession(for pool: PoolDescription) throws -> any LaunchSession { FakeSession(launcher: self) }

    /// Every connection started so far, in launch order.
    var connections: [FakeWorkerConnection] { launched.guarded { $0 } }

    fileprivate func register(_ connection: FakeWorkerConnection) {
        launched.guarded { $0.append(connection) }
    }

    /// Waits until every fake started so far has ended its script (closed
    /// its end and reported its exit); false after `seconds`.
    func waitUntilAllEnded(seconds: Double = 10) -> Bool {
        let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
        while ContinuousClock.now < deadline {
            if connections.allSatisfy(\.hasEnded) { return true }
            usleep(5000)
        }
        return connections.allSatisfy(\.hasEnded)
    }
}

/// A pool's use of a `FakeLauncher`: one socketpair, eventfd and thread per worker.
final class FakeSession: LaunchSession {
    let launcher: FakeLauncher
    private let indexLock = Mutex(0)

    init(launcher: FakeLauncher) { self.launcher = launcher }

    func launchWorker(_ completion: @escaping @Sendable (Result<any WorkerConnection, any Error>) -> Void) {
        let index = indexLock.guarded { n -> Int in
            n += 1
            return n
        }
        do {
            let connection = try FakeWorkerConnection(index: index, launcher: launcher)
            launcher.register(connection)
            let worker = FakeWorker(connection: connection, launcher: launcher)
            let script = launcher.script
            // The completion takes the pool's lock, which the caller holds:
            // call it from the worker's thread, as a real launcher would.
            FakeLauncher.startThread {
                completion(.success(connection))
                worker.runScript(script)
            }
        } catch {
            FakeLauncher.startThread { completion(.failure(error)) }
        }
    }

    func close() {}
}

/// A launch failure (descriptors could not be made).
struct FakeLaunchError: Error, CustomStringConvertible {
    var description: String
}

extension FakeWorkerConnection {
    /// Calls eventfd(2) (Swift's Glibc module does not expose it).
    fileprivate static func makeEventFD() -> Int32 {
        typealias EventFD = @convention(c) (UInt32, Int32) -> Int32
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "eventfd") else { return -1 }
        return unsafeBitCast(symbol, to: EventFD.self)(0, O_CLOEXEC)
    }
}

extension FakeLauncher {
    /// Starts a detached pthread (not a Swift concurrency thread: a fake blocks).
    static func startThread(_ body: @escaping @Sendable () -> Void) {
        final class Box {
            let body: @Sendable () -> Void
            init(_ body: @escaping @Sendable () -> Void) { self.body = body }
        }
        let box = Unmanaged.passRetained(Box(body)).toOpaque()
        var thread = pthread_t()
        var attr = pthread_attr_t()
        pthread_attr_init(&attr)
        pthread_attr_setdetachstate(&attr, Int32(PTHREAD_CREATE_DETACHED))
        let rc = pthread_create(&thread, &attr, { raw in
            Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue().body()
            return nil
        }, box)
        pthread_attr_destroy(&attr)
        precondition(rc == 0, "pthread_create failed: \(rc)")
    }
}

// MARK: - Connection

/// The pool's side of one fake worker: its end of the socketpair and an
/// eventfd the fake signals once its script has ended and its end is closed.
/// `label` is "fake worker N" (N counts launches from 1), which every
/// break reason about this worker must contain.
final class FakeWorkerConnection: WorkerConnection {
    struct State {
        /// The fake's end of the socketpair (-1 once closed).
        var workerFD: Int32
        /// The first signal the pool sent, and when it takes effect.
        var signal: Int32?
        var stopAt: ContinuousClock.Instant?
        /// Every signal the pool sent, in order.
        var signals: [Int32] = []
        /// Set when the script has ended; then the eventfd is signalled.
        var exit: WorkerExit?
        var closedByPool = false
        /// Bytes the fake has written into the stream so far.
        var bytesSent = 0
    }

    let streamDescriptor: Int32
    let exitDescriptor: Int32
    let label: String
    let index: Int
    let state: Mutex<State>
    let killGrace: Duration

    init(index: Int, launcher: FakeLauncher) throws {
        var fds: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
            throw FakeLaunchError(description: "socketpair failed: errno \(errno)")
        }
        let event = Self.makeEventFD()
        guard event >= 0 else {
            Glibc.close(fds[0])
            Glibc.close(fds[1])
            throw FakeLaunchError(description: "eventfd failed: errno \(errno)")
        }
        // 4 MiB buffers on the fake's end, as a real worker asks for
        // (capped by net.core.wmem_max/rmem_max): floods arrive at full speed.
        var size: Int32 = 4 << 20
        for option in [SO_SNDBUF, SO_RCVBUF] {
            _ = setsockopt(fds[1], SOL_SOCKET, option, &size, socklen_t(MemoryLayout<Int32>.size))
        }
        streamDescriptor = fds[0]
        exitDescriptor = event
        self.index = index
        label = "fake worker \(index)"
        killGrace = launcher.killGrace
        state = Mutex(State(workerFD: fds[1]))
    }

    func collectExit() -> WorkerExit? { state.guarded { $0.exit } }

    func terminate() { deliver(SIGTERM) }

    func kill() { deliver(SIGKILL) }

    private func deliver(_ signal: Int32) {
        let grace = killGrace
        state.guarded {
            $0.signals.append(signal)
            if $0.signal == nil {
                $0.signal = signal
                $0.stopAt = ContinuousClock.now + grace
            }
        }
    }

    func close() {
        let first = state.guarded { s -> Bool in
            defer { s.closedByPool = true }
            return !s.closedByPool
        }
        guard first else { return }
        Glibc.close(streamDescriptor)
        Glibc.close(exitDescriptor)
    }

    /// The signals the pool sent this worker.
    var signals: [Int32] { state.guarded { $0.signals } }

    /// Bytes the fake has written into the stream so far (what the parent
    /// has not read yet waits in the socket buffers, a few MiB at most).
    var bytesSent: Int { state.guarded { $0.bytesSent } }

    /// Whether the script has ended and the exit was reported.
    var hasEnded: Bool { state.guarded { $0.exit != nil } }

    /// Whether the pool released the descriptors (after collecting the exit).
    var wasClosedByPool: Bool { state.guarded { $0.closedByPool } }
}

// MARK: - The worker's side

/// What a script uses to speak the worker side of the protocol.
///
/// Reads and writes poll in short slices so that a kill from the pool (after
/// the launcher's grace) or the watchdog ends them: every I/O call may throw
/// `FakeWorkerError.stopped`/`.watchdog`, which a script just lets propagate.
final class FakeWorker: @unchecked Sendable {
    let connection: FakeWorkerConnection
    /// 1 for the first worker a pool launched, 2 for its replacement, ...
    var index: Int { connection.index }
    /// The version from the parent's `configure` (set by `readConfigure`).
    private(set) var protocolVersion: UInt16 = 0
    /// The `configure` body as received.
    private(set) var configureBody: [UInt8] = []
    /// How the worker ends when its script returns normally.
    var exitStatus: WorkerExit = .exited(0)
    /// The pid this worker announces by default (arbitrary, but a valid pid).
    var pid: UInt64 { UInt64(40_000 + index) }

    private let fd: Int32
    private let deadline: ContinuousClock.Instant
    private var inbox: [UInt8] = []
    private var inboxStart = 0
    /// Bytes sent so far.
    var bytesSent: Int { connection.bytesSent }

    init(connection: FakeWorkerConnection, launcher: FakeLauncher) {
        self.connection = connection
        fd = connection.state.guarded { $0.workerFD }
        deadline = ContinuousClock.now + launcher.lifetime
    }

    // MARK: Running

    /// Runs the script, then closes the stream and reports the exit (in that
    /// order: the pool drains the stream when the exit descriptor fires).
    fileprivate func runScript(_ script: FakeLauncher.Script) {
        let exit: WorkerExit
        do {
            try script(self)
            exit = exitStatus
        } catch FakeWorkerError.stopped(let signal) {
            exit = .signaled(signal)
        } catch FakeWorkerError.watchdog {
            exit = .lost("fake worker \(index) outlived its lifetime (watchdog)")
        } catch FakeWorkerError.parentClosed {
            exit = .exited(0)
        } catch {
            exit = .exited(2)
        }
        closeStream()
        connection.state.guarded { $0.exit = exit }
        var one: UInt64 = 1
        _ = Glibc.write(connection.exitDescriptor, &one, 8)
    }

    /// Throws if the pool's signal took effect or the watchdog fired.
    func checkAlive() throws {
        let now = ContinuousClock.now
        let (signal, stopAt) = connection.state.guarded { ($0.signal, $0.stopAt) }
        if let signal, let stopAt, now >= stopAt { throw FakeWorkerError.stopped(signal: signal) }
        if now >= deadline { throw FakeWorkerError.watchdog }
    }

    /// Whether the pool has sent a signal (whether or not it took effect yet).
    var wasSignalled: Bool { connection.state.guarded { $0.signal != nil } }

    /// Throws `parentClosed` once the script closed its own end
    /// (`closeStream()`): the descriptor number may belong to something else now.
    private func ensureOpen() throws {
        guard connection.state.guarded({ $0.workerFD >= 0 }) else { throw FakeWorkerError.parentClosed }
    }

    /// Waits for `events` on the stream for up to 20 ms.
    private func waitFor(_ events: Int32) throws {
        try checkAlive()
        var pfd = pollfd(fd: fd, events: Int16(events), revents: 0)
        _ = poll(&pfd, 1, 20)
    }

    // MARK: Raw I/O

    /// Sends all of `bytes`.
    func send(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try send(raw: $0) }
    }

    func send(raw bytes: UnsafeRawBufferPointer) throws {
        guard let base = bytes.baseAddress else { return }
        var offset = 0
        while offset < bytes.count {
            try checkAlive()
            try ensureOpen()
            let n = Glibc.send(fd, base + offset, bytes.count - offset, Int32(MSG_DONTWAIT | MSG_NOSIGNAL))
            if n > 0 {
                offset += n
                connection.state.guarded { $0.bytesSent += n }
                continue
            }
            if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                try waitFor(Int32(POLLOUT))
                continue
            }
            if n < 0 && errno == EINTR { continue }
            throw FakeWorkerError.parentClosed
        }
    }

    /// Sends a whole frame.
    func sendFrame(kind: UInt8, body: [UInt8]) throws {
        try send(FakeWire.frame(kind: kind, body: body))
    }

    /// Reads exactly `n` bytes.
    func read(_ n: Int) throws -> [UInt8] {
        while inbox.count - inboxStart < n {
            if inboxStart > 0 {
                inbox.removeFirst(inboxStart)
                inboxStart = 0
            }
            try checkAlive()
            try ensureOpen()
            var chunk = [UInt8](repeating: 0, count: 64 * 1024)
            let got = chunk.withUnsafeMutableBytes { Glibc.recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if got > 0 {
                inbox += chunk[0..<got]
                continue
            }
            if got == 0 { throw FakeWorkerError.parentClosed }
            if errno == EAGAIN || errno == EWOULDBLOCK {
                try waitFor(Int32(POLLIN))
                continue
            }
            if errno == EINTR { continue }
            throw FakeWorkerError.parentClosed
        }
        defer { inboxStart += n }
        return Array(inbox[inboxStart..<inboxStart + n])
    }

    // MARK: Frames

    /// The next frame from the parent (an `attachments` frame, its bytes and
    /// the frame they belong to are read as one); nil when the parent closed
    /// the stream between frames.
    func readFrame() throws -> FakeFrame? {
        let header: [UInt8]
        do {
            header = try read(4)
        } catch FakeWorkerError.parentClosed {
            return nil
        }
        let length = Int(UInt32(header[0]) | UInt32(header[1]) << 8 | UInt32(header[2]) << 16 | UInt32(header[3]) << 24)
        guard length >= 1, length <= FakeWire.maxFrameBytes else {
            throw FakeWorkerError.malformed("frame length \(length)")
        }
        let frame = try read(length)
        let kind = frame[0]
        let body = Array(frame[1...])
        guard kind == FakeWire.attachments else { return FakeFrame(kind: kind, body: body) }
        var reader = FakeReader(body)
        let count = try reader.varint()
        var attachments: [[UInt8]] = []
        for _ in 0..<count { attachments.append(try read(Int(try reader.varint()))) }
        guard var next = try readFrame() else { throw FakeWorkerError.parentClosed }
        next.attachments = attachments
        return next
    }

    /// Reads the parent's `configure` frame (the parent sends no preamble:
    /// only the worker does) and learns the protocol version from it.
    func readConfigure() throws {
        guard let frame = try readFrame() else { throw FakeWorkerError.parentClosed }
        guard frame.kind == FakeWire.configure else {
            throw FakeWorkerError.malformed("expected configure, got kind \(frame.kind)")
        }
        var reader = FakeReader(frame.body)
        protocolVersion = try reader.u16()
        configureBody = frame.body
    }

    /// `readConfigure()`, then the preamble (the brief's name for the first step).
    func readPreambleAndConfigure() throws {
        try readConfigure()
        try sendPreamble()
    }

    /// Sends the preamble for the version the parent speaks.
    func sendPreamble() throws {
        try send(FakeWire.preamble(version: protocolVersion))
    }

    /// A `hello` frame for the version the parent speaks.
    func hello(pid: UInt64? = nil, version: UInt16? = nil) -> [UInt8] {
        FakeWire.frame(kind: FakeWire.hello, body: FakeWire.helloBody(version: version ?? protocolVersion,
                                                                      pid: pid ?? self.pid))
    }

    /// The frames that tell the parent this worker is ready for work: `hello`
    /// (protocol 2: with the initializer's ok byte) and, from protocol 3,
    /// `ready` (ok).
    func helloAndReady(pid: UInt64? = nil) -> [UInt8] {
        var bytes = hello(pid: pid)
        if protocolVersion >= 3 { bytes += FakeWire.frame(kind: FakeWire.ready, body: [1]) }
        return bytes
    }

    /// The whole start of a worker: configure in, preamble, hello (and ready) out.
    func handshake(pid: UInt64? = nil) throws {
        try readPreambleAndConfigure()
        try send(helloAndReady(pid: pid))
    }

    /// A `results` frame.
    func results(itemID: UInt64, runNanos: UInt64 = 1000, count: UInt64, layout: UInt8 = FakeWire.separateLayout,
                 payload: [UInt8]) -> [UInt8] {
        FakeWire.frame(kind: FakeWire.results,
                       body: FakeWire.resultsBody(itemID: itemID, runNanos: runNanos, count: count, layout: layout,
                                                  values: payload))
    }

    /// Sends a `results` frame.
    func sendResults(itemID: UInt64, runNanos: UInt64 = 1000, count: UInt64, layout: UInt8 = FakeWire.separateLayout,
                     payload: [UInt8]) throws {
        try send(results(itemID: itemID, runNanos: runNanos, count: count, layout: layout, payload: payload))
    }

    /// The next `run` frame; `exit` frames are answered with a goodbye and
    /// end the script (throws `parentClosed`, which ends it with code 0).
    func readRun() throws -> FakeRunRequest {
        while let frame = try readFrame() {
            switch frame.kind {
            case FakeWire.run: return try FakeRunRequest(frame)
            case FakeWire.exit:
                try sendFrame(kind: FakeWire.goodbye, body: FakeWire.varint(FakeWire.exitRequested))
                throw FakeWorkerError.parentClosed
            default: continue
            }
        }
        throw FakeWorkerError.parentClosed
    }

    /// Answers a run of `Echo` calls correctly (separate layout).
    func answerEcho(_ run: FakeRunRequest, runNanos: UInt64 = 1000) throws {
        var outcomes: [UInt8] = []
        for call in 0..<run.count { outcomes += FakeWire.success(FakeWire.encodedInt(try run.echoValue(call))) }
        try sendResults(itemID: run.itemID, runNanos: runNanos, count: UInt64(run.count), payload: outcomes)
    }

    /// Serves `Echo` correctly until the parent asks it to exit (goodbye,
    /// exit 0) or closes the stream.
    func serveEcho() throws {
        while true { try answerEcho(try readRun()) }
    }

    /// Shuts down the reading side of the fake's end: the parent's next
    /// write fails (EPIPE) while the worker "process" lives on.
    func shutdownReading() {
        connection.state.guarded {
            if $0.workerFD >= 0 { _ = Glibc.shutdown($0.workerFD, Int32(SHUT_RD)) }
        }
    }

    /// Closes the fake's end of the stream (the parent sees EOF); the
    /// worker "process" lives on until its script ends.
    func closeStream() {
        connection.state.guarded {
            if $0.workerFD >= 0 {
                Glibc.close($0.workerFD)
                $0.workerFD = -1
            }
        }
    }

    /// Reads and discards what the parent sends until the pool kills the
    /// worker (or the watchdog fires, or the parent closes the stream):
    /// a worker that has gone silent.
    func lingerUntilKilled() throws {
        let open = connection.state.guarded { $0.workerFD >= 0 }
        guard open else { try stallUntilKilled() }
        while true { _ = try read(1) }
    }

    /// Neither reads nor writes until the pool kills the worker (or the
    /// watchdog fires): a worker stuck in a task, its stream left to fill.
    func stallUntilKilled() throws -> Never {
        while true {
            try checkAlive()
            usleep(20_000)
        }
    }

    /// Sends `total` bytes of `byte` (in 1 MiB writes), or until the pool's
    /// kill takes effect (throws then); returns what was sent.
    @discardableResult
    func flood(byte: UInt8, total: Int) throws -> Int {
        let chunk = [UInt8](repeating: byte, count: 1 << 20)
        var sent = 0
        try chunk.withUnsafeBytes { raw in
            while sent < total {
                let n = min(raw.count, total - sent)
                try send(raw: UnsafeRawBufferPointer(rebasing: raw[0..<n]))
                sent += n
            }
        }
        return sent
    }
}

// MARK: - Memory

/// Samples the resident set every 2 ms on its own thread and keeps the peak:
/// a buffer the parent grows and frees between two looks still shows.
final class FakeMemoryProbe: Sendable {
    /// The resident set of this process, from /proc/self/statm (bytes).
    static func residentBytes() -> Int {
        let fd = open("/proc/self/statm", O_RDONLY)
        guard fd >= 0 else { return 0 }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 128)
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard n > 0 else { return 0 }
        let fields = String(decoding: buffer[0..<n], as: UTF8.self).split(separator: " ")
        guard fields.count > 1, let pages = Int(fields[1]) else { return 0 }
        return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
    }

    private struct State {
        var peak = 0
        var running = true
        var stopped = false
    }
    private let state = Mutex(State())
    /// Resident bytes when sampling started.
    let baseline: Int

    init() {
        baseline = Self.residentBytes()
        state.guarded { $0.peak = baseline }
        FakeLauncher.startThread { [self] in
            while state.guarded({ $0.running }) {
                let now = Self.residentBytes()
                state.guarded { $0.peak = max($0.peak, now) }
                usleep(2000)
            }
            state.guarded { $0.stopped = true }
        }
    }

    /// The highest resident set seen so far, minus the baseline.
    var growth: Int { state.guarded { $0.peak } - baseline }

    /// Stops sampling and returns the peak growth.
    func stop() -> Int {
        state.guarded { $0.running = false }
        while !state.guarded({ $0.stopped }) { usleep(1000) }
        return growth
    }
}
