import Glibc
import ProcessPool
import ProcessPoolCore

// Tasks for the ports of CPython's Lib/test/test_concurrent_futures (see
// Tests/ProcessPoolTests/CPythonPortTests.swift). CPython makes its bad
// objects with `__reduce__`; ours misbehave in `init(from:)` / `encode(to:)`,
// and only on the side of the process boundary the test is about:
// `ProcessPoolWorker.activeDescriptor` is >= 0 in a worker, -1 in the parent.

/// Whether this process is a pool worker (serving a pool right now).
public var isWorkerProcess: Bool { ProcessPoolWorker.activeDescriptor >= 0 }

/// How a test asks a worker to end abruptly.
public enum CrashKind: String, Codable, Sendable, CaseIterable {
    /// A real segmentation fault (not a raised signal: a crash handler could swallow that).
    case sigsegv
    /// `exit(crashExitCode)`: the process ends, no Swift error unwinds.
    case exit
    /// SIGKILL to itself (a crash that starts no crash reporter).
    case sigkill
}

/// The exit code `CrashKind.exit` uses (CPython's `_exit()` helper uses 1;
/// ours is distinctive, so a test can tell it from any other exit).
public let crashExitCode: Int32 = 7

/// Ends this process now, as `kind` says.
public func crashNow(_ kind: CrashKind) -> Never {
    switch kind {
    case .sigsegv:
        let address = UnsafeMutablePointer<Int>(bitPattern: Int(Glibc.getpid() & 0) | 8)!
        address.pointee = 1
        fatalError("unreachable: the write above faults")
    case .exit:
        exit(crashExitCode)
    case .sigkill:
        kill(getpid(), SIGKILL)
        fatalError("unreachable: SIGKILL to itself")
    }
}

/// Writes this process's pid into `path` (atomically), so that a test can
/// find a worker that is about to crash.
public func writePIDFile(_ path: String) {
    let temporary = path + ".tmp"
    let fd = open(temporary, O_CREAT | O_WRONLY | O_TRUNC, 0o644)
    guard fd >= 0 else { return }
    let text = Array("\(getpid())\n".utf8)
    _ = text.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    close(fd)
    rename(temporary, path)
}

/// The error `DecodesOnlyInParent` and `Troublesome` throw on purpose.
public struct DeliberateCodingFailure: Error, CustomStringConvertible {
    public var what: String
    public init(_ what: String) { self.what = what }
    public var description: String { "deliberate coding failure: \(what)" }
}

/// test_deadlock `ErrorAtUnpickle` as a task: its `init(from:)` throws in a
/// worker when `poison` is set (so the task cannot be decoded there); the
/// parent encodes it normally.
public struct DecodesOnlyInParent: ProcessTask {
    public var value: Int
    public var poison: Bool
    public init(_ value: Int, poison: Bool = true) {
        self.value = value
        self.poison = poison
    }
    enum CodingKeys: String, CodingKey { case value, poison }
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        value = try c.decode(Int.self, forKey: .value)
        poison = try c.decode(Bool.self, forKey: .poison)
        if poison && isWorkerProcess { throw DeliberateCodingFailure("task \(value) refuses to decode in a worker") }
    }
    public func run() -> Int { value }
}

/// test_deadlock `CrashAtUnpickle` / `ExitAtUnpickle` as a task: its
/// `init(from:)` crashes the worker (never the parent).
/// `pidFile`: where the worker writes its pid first.
public struct CrashesWhileDecoding: ProcessTask {
    public var how: CrashKind
    public var pidFile: String
    public init(_ how: CrashKind, pidFile: String) {
        self.how = how
        self.pidFile = pidFile
    }
    enum CodingKeys: String, CodingKey { case how, pidFile }
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        how = try c.decode(CrashKind.self, forKey: .how)
        pidFile = try c.decode(String.self, forKey: .pidFile)
        if isWorkerProcess {
            writePIDFile(pidFile)
            crashNow(how)
        }
    }
    public func run() -> Int { 0 }
}

/// A result that misbehaves while it is encoded in the worker or decoded in
/// the parent (test_deadlock's `*AtPickle` / `*AtUnpickle` results).
public struct Troublesome: Codable, Sendable, Equatable {
    public enum Trouble: String, Codable, Sendable {
        case none
        /// `encode(to:)` throws in the worker.
        case throwWhileEncoding
        /// `encode(to:)` segfaults the worker.
        case segfaultWhileEncoding
        /// `encode(to:)` calls `exit` in the worker.
        case exitWhileEncoding
        /// `init(from:)` throws in the parent.
        case throwWhileDecodingInParent
    }
    public var trouble: Trouble
    public var value: Int
    /// Where a worker writes its pid before it crashes (nil: nowhere).
    public var pidFile: String?
    public init(trouble: Trouble, value: Int, pidFile: String? = nil) {
        self.trouble = trouble
        self.value = value
        self.pidFile = pidFile
    }
    enum CodingKeys: String, CodingKey { case trouble, value, pidFile }
    public func encode(to encoder: any Encoder) throws {
        if isWorkerProcess {
            if let pidFile { writePIDFile(pidFile) }
            switch trouble {
            case .throwWhileEncoding: throw DeliberateCodingFailure("result \(value) refuses to encode")
            case .segfaultWhileEncoding: crashNow(.sigsegv)
            case .exitWhileEncoding: crashNow(.exit)
            case .none, .throwWhileDecodingInParent: break
            }
        }
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(trouble, forKey: .trouble)
        try c.encode(value, forKey: .value)
        try c.encodeIfPresent(pidFile, forKey: .pidFile)
    }
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        trouble = try c.decode(Trouble.self, forKey: .trouble)
        value = try c.decode(Int.self, forKey: .value)
        pidFile = try c.decodeIfPresent(String.self, forKey: .pidFile)
        if trouble == .throwWhileDecodingInParent && !isWorkerProcess {
            throw DeliberateCodingFailure("result \(value) refuses to decode in the parent")
        }
    }
}

/// Returns a `Troublesome` result (test_deadlock's `_return_instance`).
public struct MakeTroublesome: ProcessTask {
    public var trouble: Troublesome.Trouble
    public var value: Int
    public var pidFile: String?
    public init(_ trouble: Troublesome.Trouble, value: Int = 0, pidFile: String? = nil) {
        self.trouble = trouble
        self.value = value
        self.pidFile = pidFile
    }
    public func run() -> Troublesome { Troublesome(trouble: trouble, value: value, pidFile: pidFile) }
}

/// test_deadlock `_crash_with_data`: carries a large argument (inline text
/// and a byte array that travels as an attachment), then crashes.
public struct CrashWithData: ProcessTask {
    public var text: String
    public var bytes: [UInt8]
    public var how: CrashKind
    public init(text: String, bytes: [UInt8], how: CrashKind) {
        self.text = text
        self.bytes = bytes
        self.how = how
    }
    public func run() -> Int { crashNow(how) }
}

/// Creates `started`, waits for `gate`, then crashes (test_deadlock
/// `_crash(delay=...)`: the crash comes after the test called shutdown).
public struct CrashAfterGate: ProcessTask {
    public var started: String
    public var gate: String
    public var how: CrashKind
    public init(started: String, gate: String, how: CrashKind) {
        self.started = started
        self.gate = gate
        self.how = how
    }
    public func run() -> Int {
        touch(started)
        while access(gate, F_OK) != 0 { usleep(1000) }
        crashNow(how)
    }
}

/// Writes the worker's pid into `pidFile` (atomically), then blocks until
/// `gate` exists and returns the pid. With `termMark`, SIGTERM first creates
/// that file, then ends the worker by SIGTERM as usual: a test can tell a
/// SIGTERM (the file appears) from a SIGKILL (it does not).
public struct PIDThenWait: ProcessTask {
    public var pidFile: String
    public var gate: String
    public var termMark: String?
    public init(pidFile: String, gate: String, termMark: String? = nil) {
        self.pidFile = pidFile
        self.gate = gate
        self.termMark = termMark
    }
    public func run() -> Int32 {
        if let termMark {
            TermMark.path = strdup(termMark)
            signal(SIGTERM, termMarkHandler)
        }
        writePIDFile(pidFile)
        while access(gate, F_OK) != 0 { usleep(1000) }
        return getpid()
    }
}

enum TermMark {
    nonisolated(unsafe) static var path: UnsafeMutablePointer<CChar>?
}

private let termMarkHandler: @convention(c) (Int32) -> Void = { signalNumber in
    if let path = TermMark.path {
        let fd = open(path, O_CREAT | O_WRONLY, 0o644)
        if fd >= 0 { close(fd) }
    }
    signal(signalNumber, SIG_DFL)
    raise(signalNumber)
}

/// Reads the pid a `PIDThenWait` wrote (nil until the file exists).
public func readPIDFile(_ path: String) -> Int32? {
    guard let text = readTextFile(path) else { return nil }
    return Int32(text.split(separator: "\n").first ?? "")
}

/// test_process_pool `_report_wait_return`: creates `started`, waits for
/// `gate`, then `holdMilliseconds` more, returns `value`. (A task that takes
/// a millisecond or more keeps the pool handing its worker one item at a
/// time: SEMANTICS 12.)
public struct ReportWaitReturn: ProcessTask {
    public var started: String
    public var gate: String
    public var value: Int
    public var holdMilliseconds: Int
    public init(started: String, gate: String, value: Int, holdMilliseconds: Int = 0) {
        self.started = started
        self.gate = gate
        self.value = value
        self.holdMilliseconds = holdMilliseconds
    }
    public func run() -> Int {
        touch(started)
        while access(gate, F_OK) != 0 { usleep(1000) }
        if holdMilliseconds > 0 { usleep(UInt32(holdMilliseconds * 1000)) }
        return value
    }
}

/// Writes the start of a large frame into the worker's protocol stream and
/// then kills its own process with SIGKILL: the worker dies while the
/// parent is part-way through reading a large result. `asAttachment`: the
/// frame is an `attachments` announcement of a large byte array (the path
/// a big `[UInt8]` result takes) rather than an inline `results` frame.
public struct DieWhileSendingLargeResult: ProcessTask {
    public var announcedBytes: Int
    public var sentBytes: Int
    public var asAttachment: Bool
    public init(announcedBytes: Int, sentBytes: Int, asAttachment: Bool) {
        self.announcedBytes = announcedBytes
        self.sentBytes = sentBytes
        self.asAttachment = asAttachment
    }
    public func run() -> Int {
        var frame: [UInt8]
        if asAttachment {
            // kind 5 (attachments), count 1, the length; then the bytes follow.
            let body: [UInt8] = [5] + leb128(1) + leb128(UInt64(announcedBytes))
            frame = littleEndian32(body.count) + body
        } else {
            // kind 102 (results), claiming `announcedBytes` of body.
            frame = littleEndian32(announcedBytes + 1) + [102]
        }
        frame += [UInt8](repeating: 0x5a, count: sentBytes)
        let descriptor = ProcessPoolWorker.activeDescriptor
        var offset = 0
        while offset < frame.count {
            let n = frame.withUnsafeBytes { write(descriptor, $0.baseAddress! + offset, $0.count - offset) }
            if n <= 0 { break }
            offset += n
        }
        kill(getpid(), SIGKILL)
        return 0
    }
}

private func leb128(_ value: UInt64) -> [UInt8] {
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

private func littleEndian32(_ value: Int) -> [UInt8] {
    let v = UInt32(value)
    return [UInt8(v & 0xff), UInt8((v >> 8) & 0xff), UInt8((v >> 16) & 0xff), UInt8(v >> 24)]
}

/// Returns `[abs(value), the worker's pid]` (test_shutdown's `map(abs, ...)`,
/// with the pid so a test can watch the workers exit).
public struct AbsAndPID: ProcessTask {
    public var value: Int
    public init(_ value: Int) { self.value = value }
    public func run() -> [Int] { [abs(value), Int(getpid())] }
}

/// Throws `ProcessPoolError.timeout` in the worker when `value == throwAt`
/// (executor.py `timeout_on_one`: a task's own timeout error is not map's).
public struct TimeoutOnOne: ProcessTask {
    public var value: Int
    public init(_ value: Int) { self.value = value }
    public func run() throws -> Int {
        if value == 1 { throw ProcessPoolError.timeout }
        return value
    }
}

/// Carries a class instance as its argument (executor.py
/// `test_no_stale_references`: the pool must not keep it).
public struct CarryBox: ProcessTask {
    public var box: MakeBox.Box
    public init(_ box: MakeBox.Box) { self.box = box }
    public func run() -> Int { box.value }
}

/// An argument that, once released in a worker, creates a file
/// (test_process_pool `EventfulGCObj`). Releasing it in the parent does nothing.
public final class ReleaseMarker: Codable, @unchecked Sendable {
    public let path: String
    public init(path: String) { self.path = path }
    deinit {
        if isWorkerProcess { touch(path) }
    }
}

/// Takes a `ReleaseMarker` and returns at once.
public struct TakeMarker: ProcessTask {
    public var marker: ReleaseMarker
    public init(_ marker: ReleaseMarker) { self.marker = marker }
    public func run() -> Bool { true }
}

/// test_wait `wait_and_raise`: waits for `gate`, then throws
/// `RegisteredFailure(code: code)`.
public struct FailAfterGate: ProcessTask {
    public var gate: String
    public var code: Int
    public init(gate: String, code: Int) {
        self.gate = gate
        self.code = code
    }
    public func run() throws -> Int {
        while access(gate, F_OK) != 0 { usleep(1000) }
        throw RegisteredFailure(code: code, note: "raised after the gate opened")
    }
}

/// Creates an empty file.
func touch(_ path: String) {
    let fd = open(path, O_CREAT | O_WRONLY, 0o644)
    if fd >= 0 { close(fd) }
}

/// The task types of the CPython ports (appended to `testRegistry`).
public let cpythonPortTaskTypes: [any ProcessTask.Type] = [
    DecodesOnlyInParent.self, CrashesWhileDecoding.self, MakeTroublesome.self, CrashWithData.self,
    CrashAfterGate.self, PIDThenWait.self, ReportWaitReturn.self, DieWhileSendingLargeResult.self,
    AbsAndPID.self, TimeoutOnOne.self, CarryBox.self, TakeMarker.self, FailAfterGate.self,
]
