@_spi(Reflection) import Swift
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

    /// Runs `body` while holding the answers' lock (tests: a lock another
    /// thread holds when a worker is forked must never be needed there).
    package static func withCacheLocked<R>(_ body: () -> R) -> R {
        cache.guarded { _ in body() }
    }

    package static func isBitwise<T>(_: T.Type) -> Bool {
        let key = ObjectIdentifier(T.self)
        if let known = cache.guarded({ $0[key] }) { return known }
        let answer = blockSafe(T.self)
        cache.guarded { $0[key] = answer }
        return answer
    }

    /// Whether `T` may travel as a raw block: it is `BitwiseCodable`, and
    /// every bit pattern of its size is a valid value, or it is `Bool`, whose
    /// blocks `readBlock` validates. A block comes from another process (a
    /// worker is untrusted), and a value with an invalid bit pattern is
    /// undefined behaviour the moment it is used, so any other type whose
    /// patterns are not all valid goes through `Codable` instead, which
    /// checks each value. Both sides ask this, so they agree on the layout.
    ///
    /// What was measured on Swift 6.3 (x86_64 Linux) about detecting types
    /// with invalid patterns:
    /// - `MemoryLayout<T?>.size == MemoryLayout<T>.size` (`T` has extra
    ///   inhabitants, which `Optional` uses for `nil`) flags `Bool`, structs
    ///   and tuples with a `Bool` field, no-payload enums of 3 cases, and
    ///   multi-payload enums (`enum { case a(Bool), b(Bool) }`,
    ///   `enum { case a(Int), b(Int) }`: both have spare tag values as extra
    ///   inhabitants). It does not flag `Int`, `Double`, `{Int32, Double}`, a
    ///   256-case enum (right: every pattern is a case), nor, wrongly,
    ///   single-payload enums with an extra tag byte: `Int?`,
    ///   `enum { case a(Int), b }` (tag bytes 2...255 are invalid, yet there
    ///   are no extra inhabitants) and structs holding one. The value witness
    ///   table's extra-inhabitant count says the same as the size rule, so it
    ///   is no better.
    /// - So enums are excluded by shape: the type's stored fields are walked
    ///   (recursively, through structs and tuples) and any enum or `Optional`
    ///   among them makes it unsafe; only plain builtin leaves (integers,
    ///   floats, SIMD vectors) are accepted. This also refuses enums that are
    ///   safe (a 256-case enum): they lose only the fast path.
    /// Invariants that the layout does not show (e.g. a `Unicode.Scalar`
    /// field, which must not be a surrogate) remain the declaring type's
    /// promise, as `BitwiseCodable`'s documentation says.
    package static func blockSafe<T>(_: T.Type) -> Bool {
        guard T.self is any BitwiseCodable.Type else { return false }
        if T.self == Bool.self { return true }
        if MemoryLayout<T?>.size == MemoryLayout<T>.size { return false }
        // Walked as the field of a probe struct, so that `T`'s own kind is
        // checked too (`_forEachField` lists an enum's payload cases as if
        // they were fields).
        return everyPatternValid(_FieldProbe<T>.self)
    }

    private struct _FieldProbe<T> { var value: T }

    /// Whether `type` is a struct or tuple whose fields, recursively, are
    /// structs, tuples or builtin leaves only (no enum, optional, class …).
    private static func everyPatternValid(_ type: Any.Type) -> Bool {
        var valid = true
        let walked = _forEachField(of: type) { _, _, field, kind in
            switch kind {
            case .struct, .tuple: valid = everyPatternValid(field)
            case .opaque: valid = true
            default: valid = false
            }
            return valid
        }
        return walked && valid
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
        guard count >= 0, !overflow else { throw ProtocolViolation("a block of \(count) values is too large") }
        let source = try reader.readRaw(bytes)
        if T.self == Bool.self, let bad = source.firstIndex(where: { $0 > 1 }) {
            throw ProtocolViolation("a block of Bool holds byte \(source[bad]) at index \(bad): a Bool is 0 or 1")
        }
        return [T](unsafeUninitializedCapacity: count) { buffer, initialized in
            if bytes > 0 { UnsafeMutableRawBufferPointer(buffer).copyMemory(from: source) }
            initialized = count
        }
    }
}
