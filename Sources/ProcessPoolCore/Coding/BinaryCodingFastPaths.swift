// The binary Codable format, shared by `BinaryEncoder` and `BinaryDecoder`.
//
// Every value starts with a tag byte, so the format is self-describing: a value
// can be skipped without knowing its type, `decodeNil()` can peek anywhere, and
// a type mismatch is an error instead of a misread.
//
//   null | false | true | empty            tag only
//   i8 … i128, u8 … u128, f32, f64        tag + fixed-width little-endian payload
//   string, bytes                          tag + varint byte count + bytes (UTF-8 validated)
//   packed i64/i32/u64/u32/f64/f32         tag + varint element count + raw LE elements
//   keyed                                  tag + u32 byte length + (key string, value)*
//   unkeyed                                tag + u32 byte length + value*
//   some                                   tag + value that itself starts with null/some
//   attachment                             tag + varint index of a frame attachment (large [UInt8])
//   byte run (in unkeyed containers only)  tag + varint count + bytes: that many UInt8 elements
//
// Containers carry their byte length (patched when they close), so skipping one
// is O(1) and keyed lookups may happen in any order. Keys are always
// `stringValue`s, as in JSON. `empty` stands for a value whose `encode(to:)`
// wrote nothing; `some` keeps `Optional<Optional<T>>.some(nil)` apart from `nil`.

/// The tag byte that starts every encoded value.
enum BinaryTag {
    static let null: UInt8 = 0x00
    static let `false`: UInt8 = 0x01
    static let `true`: UInt8 = 0x02
    static let empty: UInt8 = 0x03
    static let some: UInt8 = 0x04
    static let i8: UInt8 = 0x05
    static let i16: UInt8 = 0x06
    static let i32: UInt8 = 0x07
    static let i64: UInt8 = 0x08
    static let i128: UInt8 = 0x09
    static let u8: UInt8 = 0x0A
    static let u16: UInt8 = 0x0B
    static let u32: UInt8 = 0x0C
    static let u64: UInt8 = 0x0D
    static let u128: UInt8 = 0x0E
    static let f32: UInt8 = 0x0F
    static let f64: UInt8 = 0x10
    static let string: UInt8 = 0x11
    static let bytes: UInt8 = 0x12
    static let keyed: UInt8 = 0x13
    static let unkeyed: UInt8 = 0x14
    static let packedI64: UInt8 = 0x15
    static let packedI32: UInt8 = 0x16
    static let packedU64: UInt8 = 0x17
    static let packedU32: UInt8 = 0x18
    static let packedF64: UInt8 = 0x19
    static let packedF32: UInt8 = 0x1A
    /// A `[UInt8]` sent beside the encoding, as one of its frame's attachments.
    static let attachment: UInt8 = 0x1B
    /// Consecutive `UInt8` elements of an unkeyed container (`Data` encodes so).
    static let byteRun: UInt8 = 0x1C

    /// `[UInt8]` values at least this long become attachments when the writer
    /// collects them: the frame then carries them without a copy.
    static let attachmentThreshold = 256 * 1024

    /// The tag of a fixed-width integer type.
    @inline(__always)
    static func integer<I: FixedWidthInteger>(_: I.Type) -> UInt8 {
        let base = I.isSigned ? i8 : u8
        switch I.bitWidth {
        case 8: return base
        case 16: return base + 1
        case 32: return base + 2
        case 64: return base + 3
        default: return base + 4
        }
    }

    /// The payload size of a fixed-size tag, or nil for variable-size tags.
    @inline(__always)
    static func fixedSize(_ tag: UInt8) -> Int? {
        switch tag {
        case null, `false`, `true`, empty: return 0
        case i8, u8: return 1
        case i16, u16: return 2
        case i32, u32, f32: return 4
        case i64, u64, f64: return 8
        case i128, u128: return 16
        default: return nil
        }
    }

    /// The element size of a packed array tag, or nil.
    @inline(__always)
    static func packedElementSize(_ tag: UInt8) -> Int? {
        switch tag {
        case bytes: return 1
        case packedI64, packedU64, packedF64: return 8
        case packedI32, packedU32, packedF32: return 4
        default: return nil
        }
    }
}

/// Limits that keep hostile input from exhausting the stack.
package enum BinaryCodingLimits {
    /// The deepest nesting either side accepts, counted alike by both (so
    /// whatever encodes also decodes): the top-level value is at level 1, a
    /// value's containers are at its level, and each value, nested container
    /// or super encoder/decoder reached from a container is one level deeper,
    /// as is the value inside a single-value container.
    ///
    /// Decoding 512 levels took 0.2 to 1.5 KiB of stack per level in a debug
    /// build (HostileDecodingTests measures each way of nesting), at most
    /// 0.8 MiB: a tenth of the 8 MiB of a default pthread such as the pool's
    /// I/O thread, leaving room for the decoding types' own frames.
    package static let maxDepth = 512
}

/// The metadata of the generic fast-path types, looked up once: comparing
/// `T.self == [UInt8].self` instantiates `[UInt8]`'s metadata on every call.
enum FastTypes {
    static let bytes = ObjectIdentifier([UInt8].self)
    static let ints = ObjectIdentifier([Int].self)
    static let doubles = ObjectIdentifier([Double].self)
    static let int64s = ObjectIdentifier([Int64].self)
    static let int32s = ObjectIdentifier([Int32].self)
    static let uint64s = ObjectIdentifier([UInt64].self)
    static let uint32s = ObjectIdentifier([UInt32].self)
    static let floats = ObjectIdentifier([Float].self)
}

@inline(__always)
func isFastType<T>(_: T.Type, _ id: ObjectIdentifier) -> Bool { ObjectIdentifier(T.self) == id }

/// Reinterprets a value whose type is already known to be `U` (checked by the
/// caller with `T.self == U.self`).
@inline(__always)
func _identityCast<T, U>(_ value: T, to _: U.Type = U.self) -> U {
    unsafeBitCast(value, to: U.self)
}

// MARK: - Encoding fast paths

extension _EncodingContext {
    /// Writes the types that have a dedicated representation (or that are
    /// common enough to skip `Encodable`); returns false for every other type.
    @inline(__always)
    func encodeFastPath<T: Encodable>(_ value: T) -> Bool {
        if T.self == String.self {
            writeString(_identityCast(value, to: String.self))
        } else if T.self == Int.self {
            writeInteger(_identityCast(value, to: Int.self))
        } else if T.self == Double.self {
            writeDouble(_identityCast(value, to: Double.self))
        } else if T.self == Bool.self {
            state.pointee.writer.write(_identityCast(value, to: Bool.self) ? BinaryTag.true : BinaryTag.false)
        } else if isFastType(T.self, FastTypes.bytes) {
            let array = _identityCast(value, to: [UInt8].self)
            if array.count >= BinaryTag.attachmentThreshold, let index = state.pointee.writer.attachments?.count {
                state.pointee.writer.attachments!.append(array)
                state.pointee.writer.write(BinaryTag.attachment)
                state.pointee.writer.writeVarint(UInt64(index))
                return true
            }
            state.pointee.writer.write(BinaryTag.bytes)
            state.pointee.writer.writeVarint(UInt64(array.count))
            array.withUnsafeBufferPointer { state.pointee.writer.bytes.append(contentsOf: $0) }
        } else if encodePackedFastPath(value) {
            return true
        } else {
            return false
        }
        return true
    }

    @inline(__always)
    private func encodePackedFastPath<T: Encodable>(_ value: T) -> Bool {
        #if _endian(little)
        if isFastType(T.self, FastTypes.ints) {
            writePacked(_identityCast(value, to: [Int].self), tag: BinaryTag.packedI64)
        } else if isFastType(T.self, FastTypes.doubles) {
            writePacked(_identityCast(value, to: [Double].self), tag: BinaryTag.packedF64)
        } else if isFastType(T.self, FastTypes.int64s) {
            writePacked(_identityCast(value, to: [Int64].self), tag: BinaryTag.packedI64)
        } else if isFastType(T.self, FastTypes.int32s) {
            writePacked(_identityCast(value, to: [Int32].self), tag: BinaryTag.packedI32)
        } else if isFastType(T.self, FastTypes.uint64s) {
            writePacked(_identityCast(value, to: [UInt64].self), tag: BinaryTag.packedU64)
        } else if isFastType(T.self, FastTypes.uint32s) {
            writePacked(_identityCast(value, to: [UInt32].self), tag: BinaryTag.packedU32)
        } else if isFastType(T.self, FastTypes.floats) {
            writePacked(_identityCast(value, to: [Float].self), tag: BinaryTag.packedF32)
        } else {
            return false
        }
        return true
        #else
        return false
        #endif
    }

    /// Tag, element count, then the elements' memory in one copy.
    @inline(__always)
    private func writePacked<E: BitwiseCopyable>(_ array: [E], tag: UInt8) {
        state.pointee.writer.write(tag)
        state.pointee.writer.writeVarint(UInt64(array.count))
        array.withUnsafeBytes { raw in
            state.pointee.writer.bytes.append(contentsOf: raw.assumingMemoryBound(to: UInt8.self))
        }
    }
}

// MARK: - Decoding fast paths

extension _DecodingContext {
    /// Whether `decodeFastPath` reads a `T` at `offset`: true for the types with
    /// a dedicated representation, false otherwise and for a packed type that
    /// was encoded generically (then `init(from:)` reads it).
    @inline(__always)
    func hasFastPath<T: Decodable>(_: T.Type, at offset: Int) throws -> Bool {
        if T.self == String.self || T.self == Int.self || T.self == Double.self || T.self == Bool.self { return true }
        if isFastType(T.self, FastTypes.bytes) {
            let tag = try tag(at: offset)
            return tag == BinaryTag.bytes || tag == BinaryTag.attachment
        }
        #if _endian(little)
        if isFastType(T.self, FastTypes.ints) || isFastType(T.self, FastTypes.int64s) { return try tag(at: offset) == BinaryTag.packedI64 }
        if isFastType(T.self, FastTypes.doubles) { return try tag(at: offset) == BinaryTag.packedF64 }
        if isFastType(T.self, FastTypes.int32s) { return try tag(at: offset) == BinaryTag.packedI32 }
        if isFastType(T.self, FastTypes.uint64s) { return try tag(at: offset) == BinaryTag.packedU64 }
        if isFastType(T.self, FastTypes.uint32s) { return try tag(at: offset) == BinaryTag.packedU32 }
        if isFastType(T.self, FastTypes.floats) { return try tag(at: offset) == BinaryTag.packedF32 }
        #endif
        return false
    }

    /// Reads a `T` for which `hasFastPath` returned true; a variable-size
    /// value must end by `limit` (a fixed-size one is checked by the caller).
    @inline(__always)
    func decodeFastPath<T: Decodable>(_: T.Type, at offset: Int, limit: Int, end: inout Int) throws -> T {
        if T.self == String.self {
            let (value, next) = try readString(at: offset, limit: limit)
            end = next
            return _identityCast(value, to: T.self)
        } else if T.self == Int.self {
            let (value, next) = try readInteger(Int.self, at: offset)
            end = next
            return _identityCast(value, to: T.self)
        } else if T.self == Double.self {
            let (value, next) = try readDouble(at: offset)
            end = next
            return _identityCast(value, to: T.self)
        } else if T.self == Bool.self {
            let (value, next) = try readBool(at: offset)
            end = next
            return _identityCast(value, to: T.self)
        } else if isFastType(T.self, FastTypes.bytes) {
            if try tag(at: offset) == BinaryTag.attachment {
                let (index, next) = try readVarint(at: offset + 1)
                guard next <= limit else { throw Self.overrun(at: offset) }
                let attachments = state.pointee.attachments
                guard index < UInt64(attachments.count) else {
                    throw Self.corrupted("attachment \(index) at offset \(offset), the frame has \(attachments.count)")
                }
                end = next
                return _identityCast(attachments[Int(index)], to: T.self)
            }
            let (count, start) = try readCount(at: offset + 1, elementSize: 1, limit: limit)
            end = start + count
            return _identityCast(Array(UnsafeRawBufferPointer(start: base + start, count: count)), to: T.self)
        }
        #if _endian(little)
        if isFastType(T.self, FastTypes.ints) { return _identityCast(try readPacked(Int.self, at: offset, limit: limit, end: &end), to: T.self) }
        if isFastType(T.self, FastTypes.doubles) { return _identityCast(try readPacked(Double.self, at: offset, limit: limit, end: &end), to: T.self) }
        if isFastType(T.self, FastTypes.int64s) { return _identityCast(try readPacked(Int64.self, at: offset, limit: limit, end: &end), to: T.self) }
        if isFastType(T.self, FastTypes.int32s) { return _identityCast(try readPacked(Int32.self, at: offset, limit: limit, end: &end), to: T.self) }
        if isFastType(T.self, FastTypes.uint64s) { return _identityCast(try readPacked(UInt64.self, at: offset, limit: limit, end: &end), to: T.self) }
        if isFastType(T.self, FastTypes.uint32s) { return _identityCast(try readPacked(UInt32.self, at: offset, limit: limit, end: &end), to: T.self) }
        if isFastType(T.self, FastTypes.floats) { return _identityCast(try readPacked(Float.self, at: offset, limit: limit, end: &end), to: T.self) }
        #endif
        preconditionFailure("decodeFastPath called for \(T.self) without a fast path")
    }

    /// Reads a packed array (tag already checked) in one copy.
    @inline(__always)
    private func readPacked<E: BitwiseCopyable>(_: E.Type, at offset: Int, limit: Int, end: inout Int) throws -> [E] {
        let size = MemoryLayout<E>.stride
        let (count, start) = try readCount(at: offset + 1, elementSize: size, limit: limit)
        let source = UnsafeRawBufferPointer(start: base + start, count: count * size)
        end = start + count * size
        return [E](unsafeUninitializedCapacity: count) { buffer, initialized in
            UnsafeMutableRawBufferPointer(buffer).copyMemory(from: source)
            initialized = count
        }
    }
}
