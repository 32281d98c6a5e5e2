import FoundationEssentials
import Glibc
import ProcessPool

/// A value of one of the shapes the size sweep sends: each shape crosses the
/// wire by a different path (inline bytes, a byte run, packed numbers,
/// keyed containers, attachments).
public enum SweepShape: String, Codable, Sendable, CaseIterable {
    case data, string, doubles, nested, bytes, mixed
}

/// A payload of about `size` bytes in one shape, filled from `seed` so the
/// far end can be checked byte for byte.
public struct SweepPayload: Codable, Sendable, Equatable {
    public struct Leaf: Codable, Sendable, Equatable {
        public var name: String
        public var values: [Int32]
        public var flag: Bool?
        public init(name: String, values: [Int32], flag: Bool?) {
            self.name = name
            self.values = values
            self.flag = flag
        }
    }
    public var shape: SweepShape
    public var data: Data?
    public var string: String?
    public var doubles: [Double]?
    public var leaves: [Leaf]?
    public var bytes: [UInt8]?

    public init(shape: SweepShape, size: Int, seed: Int) {
        self.shape = shape
        // Byte i is UInt8(truncatingIfNeeded: i &* 31 &+ seed); double i is
        // Double(i &+ seed) * 0.5 (Patterns.swift builds them fast).
        switch shape {
        case .data: data = Data(sweepBytes(count: size, seed: seed))
        case .string:
            let letters = periodicBytes(count: size, period: 256) { 0x61 + UInt8(truncatingIfNeeded: $0 &* 31 &+ seed) % 26 }
            string = String(decoding: letters, as: UTF8.self)
        case .doubles: doubles = PoolTestSupport.doubles(count: size / 8) { Double($0 &+ seed) * 0.5 }
        case .nested:
            // About 24 bytes per leaf on the wire.
            leaves = (0..<max(0, size / 24)).map { (i: Int) -> Leaf in
                let flag: Bool? = i % 3 == 0 ? nil : i % 2 == 0
                return Leaf(name: "l\(i % 100)", values: [Int32(truncatingIfNeeded: i &+ seed)], flag: flag)
            }
        case .bytes: bytes = sweepBytes(count: size, seed: seed)
        case .mixed:
            data = Data(sweepBytes(count: size / 3, seed: seed))
            doubles = PoolTestSupport.doubles(count: size / 24) { Double($0) }
            bytes = sweepBytes(count: size / 3, seed: seed)
        }
    }
}

/// Returns its payload (reversed where that changes the bytes, so an echo
/// of stale memory cannot pass).
public struct EchoPayload: ProcessTask {
    public var payload: SweepPayload
    public init(_ payload: SweepPayload) { self.payload = payload }
    public func run() -> SweepPayload {
        var out = payload
        out.data = payload.data.map { Data(reversedFast([UInt8]($0))) }
        out.bytes = payload.bytes.map(reversedFast)
        out.doubles = payload.doubles.map(reversedFast)
        return out
    }
}

/// Makes a payload in the worker (the result direction of the sweep).
public struct MakePayload: ProcessTask {
    public var shape: SweepShape
    public var size: Int
    public var seed: Int
    public init(shape: SweepShape, size: Int, seed: Int) {
        self.shape = shape
        self.size = size
        self.seed = seed
    }
    public func run() -> SweepPayload { SweepPayload(shape: shape, size: size, seed: seed) }
}

/// Creates the file at `path` (the exit-wait test counts them).
public struct TouchFile: ProcessTask {
    public var path: String
    public var delayMilliseconds: Int
    public init(path: String, delayMilliseconds: Int = 0) {
        self.path = path
        self.delayMilliseconds = delayMilliseconds
    }
    public func run() -> Bool {
        if delayMilliseconds > 0 { usleep(UInt32(delayMilliseconds * 1000)) }
        let fd = open(path, O_CREAT | O_WRONLY, 0o644)
        if fd >= 0 { close(fd) }
        return fd >= 0
    }
}

/// Fails to encode when `poison` is set (map's encode errors surface at their item).
public struct MaybeUnencodable: ProcessTask {
    public var value: Int
    public var poison: Bool
    public init(_ value: Int, poison: Bool = false) {
        self.value = value
        self.poison = poison
    }
    public func encode(to encoder: any Encoder) throws {
        if poison { throw EncodingError.invalidValue(value, .init(codingPath: [], debugDescription: "poisoned \(value)")) }
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(value, forKey: .value)
        try c.encode(poison, forKey: .poison)
    }
    public func run() -> Int { value }
}

/// Returns a class instance (an output that holds a reference), so a test
/// can watch when the parent lets go of it.
public struct MakeBox: ProcessTask {
    public final class Box: Codable, @unchecked Sendable {
        public var value: Int
        public init(_ value: Int) { self.value = value }
    }
    public var value: Int
    public init(_ value: Int) { self.value = value }
    public func run() -> Box { Box(value) }
}
