import Synchronization

/// A value made of plain bits — numbers, `Bool`s, enums, and structs or
/// tuples of those; no references, no pointers, nothing that means something
/// only in this process — whose `Codable` form carries all of its bits.
///
/// Arrays of such values cross the wire as one block of memory instead of
/// value by value: a `map` chunk of a thousand `BitwiseCodable` tasks costs
/// one copy, not a thousand encodes. Declare it on task and result types you
/// own; `Int`, `Double`, `Bool` and the other fixed-width numbers already are.
///
/// ```swift
/// struct Square: ProcessTask, BitwiseCodable {
///     var x: Int
///     func run() -> Int { x * x }
/// }
/// ```
///
/// What the promise means: the worker receives a bit-for-bit copy, not what
/// `init(from:)` would build. Do not declare it on a type whose `Codable`
/// conformance drops, recomputes or checks fields (use plain `Codable` for
/// those). Parent and worker must run the same build of the type: the block
/// carries the type's stride and a worker whose stride differs refuses it.
public protocol BitwiseCodable: Codable, BitwiseCopyable {}

extension Int: BitwiseCodable {}
extension Int8: BitwiseCodable {}
extension Int16: BitwiseCodable {}
extension Int32: BitwiseCodable {}
extension Int64: BitwiseCodable {}
extension UInt: BitwiseCodable {}
extension UInt8: BitwiseCodable {}
extension UInt16: BitwiseCodable {}
extension UInt32: BitwiseCodable {}
extension UInt64: BitwiseCodable {}
extension Double: BitwiseCodable {}
extension Float: BitwiseCodable {}
extension Bool: BitwiseCodable {}

/// How the values of a `run` or `results` frame are laid out.
package enum ValueLayout: UInt8, Sendable {
    /// Each value on its own: encoded calls, or tagged outcomes.
    case separate = 0
    /// `BitwiseCodable` values as one block: u32 stride, then count × stride bytes.
    case block = 1
}

/// Whether a type is `BitwiseCodable`, asked once per type (a dynamic
/// conformance check costs about as much as encoding a small value).
package enum BitwiseTypes {
    private static let cache = Mutex<[ObjectIdentifier: Bool]>([:])

    package static func isBitwise<T>(_: T.Type) -> Bool {
        let key = ObjectIdentifier(T.self)
        if let known = cache.withLock({ $0[key] }) { return known }
        let answer = T.self is any BitwiseCodable.Type
        cache.withLock { $0[key] = answer }
        return answer
    }

    /// Appends `values` as a block: stride, then their memory.
    /// Only for types for which `isBitwise` is true.
    package static func writeBlock<T>(_ values: some Collection<T>, into writer: inout ByteWriter) {
        writer.write(UInt32(MemoryLayout<T>.stride))
        let copied: Void? = values.withContiguousStorageIfAvailable { buffer in
            writer.writeRaw(UnsafeRawBufferPointer(buffer))
        }
        if copied == nil {
            for value in values { withUnsafeBytes(of: value) { writer.writeRaw($0) } }
        }
    }

    /// Reads a block of `count` values written by `writeBlock`.
    /// Only for types for which `isBitwise` is true.
    package static func readBlock<T>(_: T.Type, count: Int, from reader: inout ByteReader) throws -> [T] {
        let stride = Int(try reader.read(UInt32.self))
        guard stride == MemoryLayout<T>.stride else {
            throw ProtocolViolation("a block of \(T.self) has stride \(stride) here \(MemoryLayout<T>.stride):"
                + " parent and worker were built from different versions of the type")
        }
        let (bytes, overflow) = count.multipliedReportingOverflow(by: stride)
        guard !overflow else { throw ProtocolViolation("a block of \(count) values is too large") }
        let source = try reader.readRaw(bytes)
        return [T](unsafeUninitializedCapacity: count) { buffer, initialized in
            if bytes > 0 { UnsafeMutableRawBufferPointer(buffer).copyMemory(from: source) }
            initialized = count
        }
    }
}
