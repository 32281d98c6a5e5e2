import Glibc
import ProcessPool
import ProcessPoolCore

/// Returns its input.
public struct Echo: ProcessTask {
    public var value: Int
    public init(_ value: Int) { self.value = value }
    public func run() -> Int { value }
}

/// Returns the bytes it was given.
public struct EchoBytes: ProcessTask {
    public var bytes: [UInt8]
    public init(_ bytes: [UInt8]) { self.bytes = bytes }
    public func run() -> [UInt8] { bytes }
}

/// Returns a buffer of `count` bytes whose byte i is `UInt8(i % 251)`.
public struct MakeBytes: ProcessTask {
    public var count: Int
    public init(count: Int) { self.count = count }
    public func run() -> [UInt8] { periodicBytes(count: count, period: 251) { UInt8($0 % 251) } }
}

/// Squares a number.
public struct Square: ProcessTask {
    public var value: Int
    public init(_ value: Int) { self.value = value }
    public func run() -> Int { value * value }
}

/// The worker's pid.
public struct GetPID: ProcessTask {
    public init() {}
    public func run() -> Int32 { getpid() }
}

/// The pid of the worker's parent (this process, a forkserver or a fork template).
public struct GetParentPID: ProcessTask {
    public init() {}
    public func run() -> Int32 { getppid() }
}

/// Sleeps, then returns the worker's pid.
public struct SleepTask: ProcessTask {
    public var milliseconds: Int
    public init(milliseconds: Int) { self.milliseconds = milliseconds }
    public func run() -> Int32 {
        usleep(UInt32(milliseconds * 1000))
        return getpid()
    }
}

/// Blocks until the file at `path` exists (a gate the test opens), then returns.
public struct WaitForFile: ProcessTask {
    public var path: String
    public init(path: String) { self.path = path }
    public func run() -> Int {
        while access(path, F_OK) != 0 { usleep(1000) }
        return Int(getpid())
    }
}

/// Creates the file at `path`, then blocks until `gate` exists.
public struct SignalThenWait: ProcessTask {
    public var started: String
    public var gate: String
    public init(started: String, gate: String) {
        self.started = started
        self.gate = gate
    }
    public func run() -> Int32 {
        let fd = open(started, O_CREAT | O_WRONLY, 0o644)
        if fd >= 0 { close(fd) }
        while access(gate, F_OK) != 0 { usleep(1000) }
        return getpid()
    }
}

/// An error type the registry knows: it comes back as itself.
public struct RegisteredFailure: Error, Codable, Equatable {
    public var code: Int
    public var note: String
    public init(code: Int, note: String) {
        self.code = code
        self.note = note
    }
}

/// An error type the registry does not know: it comes back as `RemoteTaskError`.
public struct UnregisteredFailure: Error, CustomStringConvertible {
    public var detail: String
    public var description: String { "unregistered failure: \(detail)" }
}

/// Throws a registered or an unregistered error.
public struct Fail: ProcessTask {
    public var registered: Bool
    public var code: Int
    /// Returns `code` instead of throwing.
    public var succeed: Bool
    public init(registered: Bool, code: Int = 7, succeed: Bool = false) {
        self.registered = registered
        self.code = code
        self.succeed = succeed
    }
    public func run() throws -> Int {
        if succeed { return code }
        if registered { throw RegisteredFailure(code: code, note: "as asked") }
        throw UnregisteredFailure(detail: "code \(code)")
    }
}

/// Returns its value and the worker's pid, after `microseconds` of sleep.
public struct TaggedEcho: ProcessTask {
    public struct Output: Codable, Sendable, Equatable {
        public var value: Int
        public var pid: Int32
        /// The worker's parent (this process, a forkserver or a fork template).
        public var parent: Int32
    }
    public var value: Int
    public var microseconds: UInt32
    public init(_ value: Int, microseconds: UInt32 = 0) {
        self.value = value
        self.microseconds = microseconds
    }
    public func run() -> Output {
        if microseconds > 0 { usleep(microseconds) }
        return Output(value: value, pid: getpid(), parent: getppid())
    }
}

/// How the pool reports a worker that segfaulted: "signal SIGSEGV"; under a
/// sanitizer, whose runtime catches the fault in the worker and exits with
/// its own code, "exit code 66" (ThreadSanitizer) or "exit code 1"
/// (AddressSanitizer).
public var segfaultEnd: String {
    if threadSanitizerIsActive { return "exit code 66" }
    if addressSanitizerIsActive { return "exit code 1" }
    return "signal SIGSEGV"
}

/// Whether this process runs under AddressSanitizer (its runtime is linked in).
public let addressSanitizerIsActive: Bool = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "__asan_init") != nil

/// Ends the worker in a chosen way.
public struct Die: ProcessTask {
    public enum How: String, Codable, Sendable { case sigkill, sigsegv, exit3, trap }
    public var how: How
    public init(_ how: How) { self.how = how }
    public func run() -> Int {
        switch how {
        case .sigkill: kill(getpid(), SIGKILL)
        case .sigsegv:
            // A real fault: a raised SIGSEGV can be swallowed by a crash handler.
            let address = UnsafeMutablePointer<Int>(bitPattern: Int(Glibc.getpid() & 0) | 8)!
            address.pointee = 1
        case .exit3: exit(3)
        case .trap: fatalError("Die(.trap) asked for a trap")
        }
        return 0
    }
}

/// Prints noise to stdout (which must not disturb the protocol), returns its input.
public struct Noisy: ProcessTask {
    public var value: Int
    public init(_ value: Int) { self.value = value }
    public func run() -> Int {
        for i in 0..<200 { print("noise \(i) from task \(value) \u{0}\u{1}PPOOL garbage") }
        return value
    }
}

/// Writes lines to stderr without end (until the worker is killed).
public struct StderrForever: ProcessTask {
    public init() {}
    public func run() -> Int {
        let line = Array("chatter on stderr until killed\n".utf8)
        while true { _ = line.withUnsafeBytes { write(2, $0.baseAddress, $0.count) } }
    }
}

/// Writes garbage straight into the worker's protocol stream.
public struct CorruptStream: ProcessTask {
    public init() {}
    public func run() -> Int {
        let descriptor = ProcessPoolWorker.activeDescriptor
        let garbage: [UInt8] = [0xff, 0xff, 0xff, 0x7f, 0xee, 1, 2, 3, 4, 5, 6, 7]
        _ = garbage.withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
        return 0
    }
}

/// Sets a value in the worker that `ReadInitialized` returns (the initializer).
public struct SetInitialized: ProcessTask {
    public var value: Int
    public var fail: Bool
    public init(value: Int, fail: Bool = false) {
        self.value = value
        self.fail = fail
    }
    public func run() throws -> Int {
        if fail { throw RegisteredFailure(code: -1, note: "initializer failed on purpose") }
        InitializedValue.value = value
        return value
    }
}

/// Returns what the initializer set (0 if it did not run).
public struct ReadInitialized: ProcessTask {
    public init() {}
    public func run() -> Int { InitializedValue.value }
}

enum InitializedValue {
    nonisolated(unsafe) static var value = 0
}

/// A task whose result cannot be encoded.
public struct Unencodable: ProcessTask {
    public struct Output: Codable, Sendable {
        public init(from decoder: any Decoder) throws { self.init() }
        init() {}
        public func encode(to encoder: any Encoder) throws {
            throw EncodingError.invalidValue(0, .init(codingPath: [], debugDescription: "refuses to encode"))
        }
    }
    public init() {}
    public func run() -> Output { Output() }
}

/// Counts primes below `below` by trial division.
public struct CountPrimes: ProcessTask {
    public var below: Int
    public init(below: Int) { self.below = below }
    public func run() -> Int {
        var count = 0
        var k = 2
        while k < below {
            var d = 2
            var prime = true
            while d * d <= k {
                if k % d == 0 { prime = false; break }
                d += 1
            }
            if prime { count += 1 }
            k += 1
        }
        return count
    }
}

/// A plain-bits result.
public struct Pair: BitwiseCodable, Equatable, Sendable {
    public var count: Int32
    public var ratio: Double
    public init(count: Int32, ratio: Double) {
        self.count = count
        self.ratio = ratio
    }
}

/// A plain-bits task with a plain-bits result: both cross as memory blocks.
public struct BitwiseSquare: ProcessTask, BitwiseCodable {
    public var value: Int
    /// Throws `RegisteredFailure(code: value)` instead of returning.
    public var fail: Bool
    public init(_ value: Int, fail: Bool = false) {
        self.value = value
        self.fail = fail
    }
    public func run() throws -> Int {
        if fail { throw RegisteredFailure(code: value, note: "bitwise task failed on purpose") }
        return value * value
    }
}

/// A plain-bits task whose result is a plain-bits struct.
public struct MakePair: ProcessTask, BitwiseCodable {
    public var count: Int32
    public init(count: Int32) { self.count = count }
    public func run() -> Pair { Pair(count: count, ratio: Double(count) / 4) }
}

/// Large byte arrays in several places (all become attachments); returns
/// them in reverse order, with `small` and the optional one's presence noted.
public struct ShuffleBlobs: ProcessTask {
    public var first: [UInt8]
    public var second: [UInt8]?
    public var small: [UInt8]
    public var fail: Bool
    public init(first: [UInt8], second: [UInt8]?, small: [UInt8], fail: Bool = false) {
        self.first = first
        self.second = second
        self.small = small
        self.fail = fail
    }
    public func run() throws -> [[UInt8]] {
        if fail { throw RegisteredFailure(code: first.count, note: "blobs refused on purpose") }
        return [small] + (second.map { [$0] } ?? []) + [first]
    }
}

/// Keeps the bytes it gets in a global (as a task may) and returns the first
/// and last byte of the ones it kept before, then its own first byte: the
/// worker must never reuse memory a task still holds.
public struct KeepBytes: ProcessTask {
    public var bytes: [UInt8]
    public init(_ bytes: [UInt8]) { self.bytes = bytes }
    public func run() -> [UInt8] {
        let previous = KeptBytes.value
        KeptBytes.value = bytes
        return [previous.first ?? 0, previous.last ?? 0, bytes.first ?? 0]
    }
}

enum KeptBytes {
    nonisolated(unsafe) static var value: [UInt8] = []
}

/// Writes an `attachments` frame announcing a 2 GiB attachment into the
/// worker's protocol stream (over the 1 GiB limit).
public struct AnnounceHugeAttachment: ProcessTask {
    public init() {}
    public func run() -> Int {
        // length 1 + 1 + 5 (kind, count varint, length varint 2^31)
        let frame: [UInt8] = [7, 0, 0, 0, 5, 1, 0x80, 0x80, 0x80, 0x80, 0x08]
        _ = frame.withUnsafeBytes { write(ProcessPoolWorker.activeDescriptor, $0.baseAddress, $0.count) }
        return 0
    }
}

/// A task no registry lists.
public struct NotRegistered: ProcessTask {
    public init() {}
    public func run() -> Int { 0 }
}

/// Everything the tests run, in the test process and in the worker executable.
public let testRegistry = TaskRegistry(
    tasks: [Echo.self, EchoBytes.self, MakeBytes.self, Square.self, GetPID.self, GetParentPID.self, SleepTask.self,
            WaitForFile.self, SignalThenWait.self, Fail.self, Die.self, TaggedEcho.self, Noisy.self, StderrForever.self, CorruptStream.self,
            SetInitialized.self, ReadInitialized.self, Unencodable.self, CountPrimes.self,
            BitwiseSquare.self, MakePair.self, ShuffleBlobs.self, AnnounceHugeAttachment.self, KeepBytes.self,
            EchoPayload.self, MakePayload.self, TouchFile.self, MaybeUnencodable.self, MakeBox.self] + cpythonPortTaskTypes,
    errors: [RegisteredFailure.self])
