/// Decodes values written by `BinaryEncoder`.
///
/// Every read is bounds-checked: malformed, truncated or hostile input throws
/// a `DecodingError`, never crashes, never allocates more than the input could
/// hold, and nesting deeper than `BinaryCodingLimits.maxDepth` is refused.
/// `codingPath` is not tracked (always empty); error descriptions carry the
/// byte offset instead.
package struct BinaryDecoder: Sendable {
    /// The frame's attachments, which `attachment` values refer to by index.
    let attachments: [[UInt8]]

    package init(attachments: [[UInt8]] = []) { self.attachments = attachments }

    package func decode<T: Decodable>(_ type: T.Type, from bytes: UnsafeRawBufferPointer) throws -> T {
        guard let base = bytes.baseAddress, !bytes.isEmpty else {
            throw _DecodingContext.corrupted("empty input")
        }
        let context = _DecodingContext.make(base: base, count: bytes.count, attachments: attachments)
        var end = 0
        let value = try withExtendedLifetime(context) { try context.decodeValue(T.self, at: 0, end: &end) }
        guard end == bytes.count else {
            throw _DecodingContext.corrupted("\(bytes.count - end) trailing bytes after the value")
        }
        return value
    }

    package func decode<T: Decodable>(_ type: T.Type, from bytes: [UInt8]) throws -> T {
        try bytes.withUnsafeBytes { try decode(type, from: $0) }
    }

    package func decode<T: Decodable>(_ type: T.Type, from bytes: ArraySlice<UInt8>) throws -> T {
        try bytes.withUnsafeBytes { try decode(type, from: $0) }
    }
}

/// The input and the mutable state of one `decode` call.
struct _DecodingState {
    let base: UnsafeRawPointer
    let count: Int
    let attachments: [[UInt8]]
    var depth = 0
    var nextID = 0
}

/// Where the keyed container `id` expects its next key: synthesized code reads
/// keys in the order it wrote them, so lookups usually hit without a scan.
struct _KeyHint {
    var id: Int
    var cursor: Int
}

/// The object shared by every decoder and container of one `decode` call.
/// Reads take an offset and return the value with the offset just past it, so
/// containers are plain values with no shared cursor.
///
/// The state lives in the `ManagedBuffer` header, reached through a pointer,
/// which avoids the dynamic exclusivity checks of class stored properties.
/// The elements are one `_KeyHint` per nesting level (the first `hintLevels`
/// levels; deeper containers just scan), written before they are read.
final class _DecodingContext: ManagedBuffer<_DecodingState, _KeyHint> {
    static let hintLevels = 32

    static func make(base: UnsafeRawPointer, count: Int, attachments: [[UInt8]]) -> _DecodingContext {
        let buffer = create(minimumCapacity: hintLevels) { _ in
            _DecodingState(base: base, count: count, attachments: attachments)
        }
        return unsafeDowncast(buffer, to: _DecodingContext.self)
    }

    @inline(__always)
    var state: UnsafeMutablePointer<_DecodingState> { withUnsafeMutablePointerToHeader { $0 } }
    @inline(__always)
    var hints: UnsafeMutablePointer<_KeyHint> { withUnsafeMutablePointerToElements { $0 } }
    @inline(__always)
    var base: UnsafeRawPointer { state.pointee.base }
    @inline(__always)
    var count: Int { state.pointee.count }

    // MARK: Errors

    static func corrupted(_ message: String) -> DecodingError {
        .dataCorrupted(.init(codingPath: [], debugDescription: "BinaryDecoder: \(message)"))
    }

    func mismatch(_ type: Any.Type, at offset: Int) -> DecodingError {
        let found = offset < count ? "tag 0x\(String(base.load(fromByteOffset: offset, as: UInt8.self), radix: 16))" : "end of input"
        return .typeMismatch(type, .init(codingPath: [], debugDescription: "BinaryDecoder: expected \(type), found \(found) at offset \(offset)"))
    }

    func truncated(_ offset: Int) -> DecodingError {
        Self.corrupted("truncated input at offset \(offset)")
    }

    // MARK: Primitive reads

    @inline(__always)
    func tag(at offset: Int) throws -> UInt8 {
        guard offset < count else { throw truncated(offset) }
        return base.load(fromByteOffset: offset, as: UInt8.self)
    }

    /// Throws unless `size` bytes are available at `offset` (`offset <= count`).
    @inline(__always)
    func need(_ size: Int, at offset: Int) throws {
        guard size <= count &- offset else { throw truncated(offset) }
    }

    @inline(__always)
    func load<I: FixedWidthInteger>(_: I.Type, at offset: Int) -> I {
        I(littleEndian: base.loadUnaligned(fromByteOffset: offset, as: I.self))
    }

    /// Reads a varint; returns it and the offset after it.
    @inline(__always)
    func readVarint(at start: Int) throws -> (UInt64, Int) {
        var offset = start
        var result: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            let byte = try tag(at: offset)
            offset += 1
            if shift == 63 && byte > 1 { throw Self.corrupted("varint overflows 64 bits at offset \(start)") }
            result |= UInt64(byte & 0x7f) << shift
            if byte & 0x80 == 0 { return (result, offset) }
            shift += 7
            if shift > 63 { throw Self.corrupted("varint longer than 10 bytes at offset \(start)") }
        }
    }

    /// Reads an element count and checks that `count * elementSize` bytes
    /// follow, so a lying count can never cause a large allocation.
    @inline(__always)
    func readCount(at offset: Int, elementSize: Int) throws -> (Int, Int) {
        let (n, start) = try readVarint(at: offset)
        guard n <= UInt64((count - start) / elementSize) else {
            throw Self.corrupted("count \(n) at offset \(offset) exceeds the \(count - start) bytes left")
        }
        return (Int(n), start)
    }

    @inline(__always)
    func readInteger<I: FixedWidthInteger>(_: I.Type, at offset: Int) throws -> (I, Int) {
        let tag = try tag(at: offset)
        if tag == BinaryTag.integer(I.self) {
            let size = MemoryLayout<I>.size
            try need(size, at: offset + 1)
            return (load(I.self, at: offset + 1), offset + 1 + size)
        }
        return try readConvertingInteger(I.self, tag: tag, at: offset)
    }

    /// An integer of another width or signedness: accepted if it fits.
    private func readConvertingInteger<I: FixedWidthInteger>(_: I.Type, tag: UInt8, at offset: Int) throws -> (I, Int) {
        let value: I?
        let size: Int
        switch tag {
        case BinaryTag.i8: (value, size) = (I(exactly: try loadChecked(Int8.self, at: offset)), 1)
        case BinaryTag.i16: (value, size) = (I(exactly: try loadChecked(Int16.self, at: offset)), 2)
        case BinaryTag.i32: (value, size) = (I(exactly: try loadChecked(Int32.self, at: offset)), 4)
        case BinaryTag.i64: (value, size) = (I(exactly: try loadChecked(Int64.self, at: offset)), 8)
        case BinaryTag.i128: (value, size) = (I(exactly: try loadChecked(Int128.self, at: offset)), 16)
        case BinaryTag.u8: (value, size) = (I(exactly: try loadChecked(UInt8.self, at: offset)), 1)
        case BinaryTag.u16: (value, size) = (I(exactly: try loadChecked(UInt16.self, at: offset)), 2)
        case BinaryTag.u32: (value, size) = (I(exactly: try loadChecked(UInt32.self, at: offset)), 4)
        case BinaryTag.u64: (value, size) = (I(exactly: try loadChecked(UInt64.self, at: offset)), 8)
        case BinaryTag.u128: (value, size) = (I(exactly: try loadChecked(UInt128.self, at: offset)), 16)
        default: throw mismatch(I.self, at: offset)
        }
        guard let value else { throw Self.corrupted("number at offset \(offset) does not fit in \(I.self)") }
        return (value, offset + 1 + size)
    }

    private func loadChecked<I: FixedWidthInteger>(_: I.Type, at offset: Int) throws -> I {
        try need(MemoryLayout<I>.size, at: offset + 1)
        return load(I.self, at: offset + 1)
    }

    @inline(__always)
    func readBool(at offset: Int) throws -> (Bool, Int) {
        switch try tag(at: offset) {
        case BinaryTag.true: return (true, offset + 1)
        case BinaryTag.false: return (false, offset + 1)
        default: throw mismatch(Bool.self, at: offset)
        }
    }

    @inline(__always)
    func readDouble(at offset: Int) throws -> (Double, Int) {
        let tag = try tag(at: offset)
        if tag == BinaryTag.f64 {
            try need(8, at: offset + 1)
            return (Double(bitPattern: load(UInt64.self, at: offset + 1)), offset + 9)
        }
        if tag == BinaryTag.f32 {
            try need(4, at: offset + 1)
            return (Double(Float(bitPattern: load(UInt32.self, at: offset + 1))), offset + 5)
        }
        throw mismatch(Double.self, at: offset)
    }

    @inline(__always)
    func readFloat(at offset: Int) throws -> (Float, Int) {
        let tag = try tag(at: offset)
        if tag == BinaryTag.f32 {
            try need(4, at: offset + 1)
            return (Float(bitPattern: load(UInt32.self, at: offset + 1)), offset + 5)
        }
        if tag == BinaryTag.f64 {
            try need(8, at: offset + 1)
            let double = Double(bitPattern: load(UInt64.self, at: offset + 1))
            let float = Float(double)
            guard Double(float) == double || double.isNaN else {
                throw Self.corrupted("number at offset \(offset) does not fit in Float")
            }
            return (float, offset + 9)
        }
        throw mismatch(Float.self, at: offset)
    }

    @inline(__always)
    func readString(at offset: Int) throws -> (String, Int) {
        guard try tag(at: offset) == BinaryTag.string else { throw mismatch(String.self, at: offset) }
        let (length, start) = try readCount(at: offset + 1, elementSize: 1)
        guard let string = makeString(at: start, count: length) else {
            throw Self.corrupted("invalid UTF-8 in string at offset \(offset)")
        }
        return (string, start + length)
    }

    /// A validated string from `count` UTF-8 bytes at `offset` (already bounds-checked).
    /// ASCII (the common case) skips the generic, unspecialized validating initializer.
    @inline(__always)
    func makeString(at offset: Int, count: Int) -> String? {
        let utf8 = UnsafeBufferPointer(start: (base + offset).assumingMemoryBound(to: UInt8.self), count: count)
        var high: UInt8 = 0
        for byte in utf8 { high |= byte }
        if high < 0x80 { return String(decoding: utf8, as: UTF8.self) }
        return String(validating: utf8, as: UTF8.self)
    }

    // MARK: Structure

    /// The offset just past the value at `offset`, without decoding it: O(1),
    /// since containers carry their byte length.
    func skipValue(at offset: Int) throws -> Int {
        var offset = offset
        var tag = try tag(at: offset)
        while tag == BinaryTag.some {
            offset += 1
            tag = try self.tag(at: offset)
        }
        if let size = BinaryTag.fixedSize(tag) {
            try need(size, at: offset + 1)
            return offset + 1 + size
        }
        if let elementSize = BinaryTag.packedElementSize(tag) {
            let (n, start) = try readCount(at: offset + 1, elementSize: elementSize)
            return start + n * elementSize
        }
        switch tag {
        case BinaryTag.string:
            let (n, start) = try readCount(at: offset + 1, elementSize: 1)
            return start + n
        case BinaryTag.keyed, BinaryTag.unkeyed:
            return try containerBounds(at: offset, tag: tag, type: Any.self).end
        case BinaryTag.attachment:
            return try readVarint(at: offset + 1).1
        case BinaryTag.byteRun:
            let (n, start) = try readCount(at: offset + 1, elementSize: 1)
            return start + n
        default:
            throw Self.corrupted("unknown tag 0x\(String(tag, radix: 16)) at offset \(offset)")
        }
    }

    /// The entries of the container at `offset`: `empty` reads as an empty container.
    func containerBounds(at offset: Int, tag expected: UInt8, type: Any.Type) throws -> (start: Int, end: Int) {
        let tag = try tag(at: offset)
        if tag == expected {
            try need(4, at: offset + 1)
            let length = Int(load(UInt32.self, at: offset + 1))
            try need(length, at: offset + 5)
            return (offset + 5, offset + 5 + length)
        }
        if tag == BinaryTag.empty { return (offset + 1, offset + 1) }
        throw mismatch(type, at: offset)
    }

    /// Decodes one complete value and sets `end` just past it.
    /// (No `(T, Int)` tuple: in unspecialized code it costs a metadata lookup.)
    func decodeValue<T: Decodable>(_: T.Type, at offset: Int, end: inout Int) throws -> T {
        if try hasFastPath(T.self, at: offset) { return try decodeFastPath(T.self, at: offset, end: &end) }
        let s = state
        guard s.pointee.depth < BinaryCodingLimits.maxDepth else {
            throw Self.corrupted("nesting deeper than \(BinaryCodingLimits.maxDepth) at offset \(offset)")
        }
        s.pointee.depth += 1
        defer { s.pointee.depth -= 1 }
        let value = try T(from: _BinaryDecoderImpl(context: self, offset: offset))
        end = try skipValue(at: offset)
        return value
    }

    // MARK: Keyed lookup

    /// Registers a keyed container and returns (id, hint slot).
    func registerKeyed(start: Int, level: Int? = nil) -> (id: Int, slot: Int) {
        let s = state
        s.pointee.nextID += 1
        let id = s.pointee.nextID
        let slot = level ?? s.pointee.depth
        guard slot < Self.hintLevels else { return (id, -1) }
        (hints + slot).initialize(to: _KeyHint(id: id, cursor: start))
        return (id, slot)
    }

    /// Records that the container's next key is expected at `cursor`.
    @inline(__always)
    func advance(slot: Int, id: Int, to cursor: Int) {
        if slot >= 0 { hints[slot] = _KeyHint(id: id, cursor: cursor) }
    }

    /// The offset of the value stored under `key`, or nil: tries the hinted
    /// position first, then scans the container.
    func findValue(key: UnsafeBufferPointer<UInt8>, start: Int, end: Int, id: Int, slot: Int) throws -> Int? {
        if slot >= 0 {
            let hint = hints[slot]
            if hint.id == id, hint.cursor < end {
                let (matches, value) = try matchKey(key, at: hint.cursor)
                if matches { return value }
            }
        }
        var offset = start
        while offset < end {
            let (matches, value) = try matchKey(key, at: offset)
            if matches { return value }
            offset = try skipValue(at: value)
        }
        return nil
    }

    /// Whether the entry at `offset` has `key`, and where its value starts.
    @inline(__always)
    private func matchKey(_ key: UnsafeBufferPointer<UInt8>, at offset: Int) throws -> (Bool, Int) {
        let (length, start) = try readCount(at: offset, elementSize: 1)
        let value = start + length
        guard length == key.count else { return (false, value) }
        let stored = (base + start).assumingMemoryBound(to: UInt8.self)
        for i in 0..<length where stored[i] != key[i] { return (false, value) }
        return (true, value)
    }

    /// Every key of the container, in stored order (offsets of their values).
    func entries(start: Int, end: Int) throws -> [(key: String, value: Int)] {
        var result: [(key: String, value: Int)] = []
        var offset = start
        while offset < end {
            let (length, keyStart) = try readCount(at: offset, elementSize: 1)
            guard let key = makeString(at: keyStart, count: length) else {
                throw Self.corrupted("invalid UTF-8 in key at offset \(offset)")
            }
            result.append((key, keyStart + length))
            offset = try skipValue(at: keyStart + length)
        }
        return result
    }
}

/// The `Decoder` handed to `init(from:)`: two words, no allocation.
struct _BinaryDecoderImpl: Decoder {
    let context: _DecodingContext
    let offset: Int

    var codingPath: [any CodingKey] { [] }
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        let (start, end) = try context.containerBounds(at: offset, tag: BinaryTag.keyed, type: [String: Any].self)
        return KeyedDecodingContainer(_KeyedDecoder<Key>(context: context, start: start, end: end))
    }

    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        let (start, end) = try context.containerBounds(at: offset, tag: BinaryTag.unkeyed, type: [Any].self)
        return _UnkeyedDecoder(context: context, cursor: start, end: end)
    }

    func singleValueContainer() throws -> any SingleValueDecodingContainer {
        _SingleValueDecoder(context: context, offset: offset)
    }
}

/// The key of a `superDecoder()` value.
private struct _SuperKey: CodingKey {
    var stringValue: String { "super" }
    var intValue: Int? { nil }
    init() {}
    init?(stringValue: String) { nil }
    init?(intValue: Int) { nil }
}

/// Keyed container: looks each key up (hinted position first, then a scan).
struct _KeyedDecoder<Key: CodingKey>: KeyedDecodingContainerProtocol {
    let context: _DecodingContext
    let start: Int
    let end: Int
    private let id: Int
    private let slot: Int

    init(context: _DecodingContext, start: Int, end: Int, level: Int? = nil) {
        self.context = context
        self.start = start
        self.end = end
        (id, slot) = context.registerKeyed(start: start, level: level)
    }

    var codingPath: [any CodingKey] { [] }

    var allKeys: [Key] {
        ((try? context.entries(start: start, end: end)) ?? []).compactMap { Key(stringValue: $0.key) }
    }

    func contains(_ key: Key) -> Bool { ((try? locate(key)) ?? nil) != nil }

    private func locate(_ key: Key) throws -> Int? {
        try locate(name: key.stringValue)
    }

    private func locate(name: String) throws -> Int? {
        var name = name
        return try name.withUTF8 { try context.findValue(key: $0, start: start, end: end, id: id, slot: slot) }
    }

    private func valueOffset(_ key: some CodingKey) throws -> Int {
        guard let offset = try locate(name: key.stringValue) else {
            throw DecodingError.keyNotFound(
                key, .init(codingPath: [], debugDescription: "BinaryDecoder: no value for key \"\(key.stringValue)\""))
        }
        return offset
    }

    /// Records the end of a decoded value as the place of the next key.
    @inline(__always)
    private func finish(_ next: Int) throws {
        guard next <= end else { throw _DecodingContext.corrupted("value overruns its container at offset \(next)") }
        context.advance(slot: slot, id: id, to: next)
    }

    @inline(__always)
    private func read<R>(_ key: Key, _ reader: (Int) throws -> (R, Int)) throws -> R {
        let (value, next) = try reader(try valueOffset(key))
        try finish(next)
        return value
    }

    @inline(__always)
    private func readIfPresent<R>(_ key: Key, _ reader: (Int) throws -> (R, Int)) throws -> R? {
        guard let offset = try locate(key) else { return nil }
        if try context.tag(at: offset) == BinaryTag.null {
            try finish(offset + 1)
            return nil
        }
        let (value, next) = try reader(offset)
        try finish(next)
        return value
    }

    func decodeNil(forKey key: Key) throws -> Bool {
        let offset = try valueOffset(key)
        guard try context.tag(at: offset) == BinaryTag.null else { return false }
        try finish(offset + 1)
        return true
    }

    func decode(_ type: Bool.Type, forKey key: Key) throws -> Bool { try read(key, context.readBool) }
    func decode(_ type: String.Type, forKey key: Key) throws -> String { try read(key, context.readString) }
    func decode(_ type: Double.Type, forKey key: Key) throws -> Double { try read(key, context.readDouble) }
    func decode(_ type: Float.Type, forKey key: Key) throws -> Float { try read(key, context.readFloat) }
    func decode(_ type: Int.Type, forKey key: Key) throws -> Int { try read(key) { try context.readInteger(type, at: $0) } }
    func decode(_ type: Int8.Type, forKey key: Key) throws -> Int8 { try read(key) { try context.readInteger(type, at: $0) } }
    func decode(_ type: Int16.Type, forKey key: Key) throws -> Int16 { try read(key) { try context.readInteger(type, at: $0) } }
    func decode(_ type: Int32.Type, forKey key: Key) throws -> Int32 { try read(key) { try context.readInteger(type, at: $0) } }
    func decode(_ type: Int64.Type, forKey key: Key) throws -> Int64 { try read(key) { try context.readInteger(type, at: $0) } }
    func decode(_ type: Int128.Type, forKey key: Key) throws -> Int128 { try read(key) { try context.readInteger(type, at: $0) } }
    func decode(_ type: UInt.Type, forKey key: Key) throws -> UInt { try read(key) { try context.readInteger(type, at: $0) } }
    func decode(_ type: UInt8.Type, forKey key: Key) throws -> UInt8 { try read(key) { try context.readInteger(type, at: $0) } }
    func decode(_ type: UInt16.Type, forKey key: Key) throws -> UInt16 { try read(key) { try context.readInteger(type, at: $0) } }
    func decode(_ type: UInt32.Type, forKey key: Key) throws -> UInt32 { try read(key) { try context.readInteger(type, at: $0) } }
    func decode(_ type: UInt64.Type, forKey key: Key) throws -> UInt64 { try read(key) { try context.readInteger(type, at: $0) } }
    func decode(_ type: UInt128.Type, forKey key: Key) throws -> UInt128 { try read(key) { try context.readInteger(type, at: $0) } }
    func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T {
        var next = 0
        let value = try context.decodeValue(type, at: try valueOffset(key), end: &next)
        try finish(next)
        return value
    }

    func decodeIfPresent(_ type: Bool.Type, forKey key: Key) throws -> Bool? { try readIfPresent(key, context.readBool) }
    func decodeIfPresent(_ type: String.Type, forKey key: Key) throws -> String? { try readIfPresent(key, context.readString) }
    func decodeIfPresent(_ type: Double.Type, forKey key: Key) throws -> Double? { try readIfPresent(key, context.readDouble) }
    func decodeIfPresent(_ type: Float.Type, forKey key: Key) throws -> Float? { try readIfPresent(key, context.readFloat) }
    func decodeIfPresent(_ type: Int.Type, forKey key: Key) throws -> Int? { try readIfPresent(key) { try context.readInteger(type, at: $0) } }
    func decodeIfPresent(_ type: Int8.Type, forKey key: Key) throws -> Int8? { try readIfPresent(key) { try context.readInteger(type, at: $0) } }
    func decodeIfPresent(_ type: Int16.Type, forKey key: Key) throws -> Int16? { try readIfPresent(key) { try context.readInteger(type, at: $0) } }
    func decodeIfPresent(_ type: Int32.Type, forKey key: Key) throws -> Int32? { try readIfPresent(key) { try context.readInteger(type, at: $0) } }
    func decodeIfPresent(_ type: Int64.Type, forKey key: Key) throws -> Int64? { try readIfPresent(key) { try context.readInteger(type, at: $0) } }
    func decodeIfPresent(_ type: Int128.Type, forKey key: Key) throws -> Int128? { try readIfPresent(key) { try context.readInteger(type, at: $0) } }
    func decodeIfPresent(_ type: UInt.Type, forKey key: Key) throws -> UInt? { try readIfPresent(key) { try context.readInteger(type, at: $0) } }
    func decodeIfPresent(_ type: UInt8.Type, forKey key: Key) throws -> UInt8? { try readIfPresent(key) { try context.readInteger(type, at: $0) } }
    func decodeIfPresent(_ type: UInt16.Type, forKey key: Key) throws -> UInt16? { try readIfPresent(key) { try context.readInteger(type, at: $0) } }
    func decodeIfPresent(_ type: UInt32.Type, forKey key: Key) throws -> UInt32? { try readIfPresent(key) { try context.readInteger(type, at: $0) } }
    func decodeIfPresent(_ type: UInt64.Type, forKey key: Key) throws -> UInt64? { try readIfPresent(key) { try context.readInteger(type, at: $0) } }
    func decodeIfPresent(_ type: UInt128.Type, forKey key: Key) throws -> UInt128? { try readIfPresent(key) { try context.readInteger(type, at: $0) } }
    func decodeIfPresent<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T? {
        guard let offset = try locate(key) else { return nil }
        if try context.tag(at: offset) == BinaryTag.null {
            try finish(offset + 1)
            return nil
        }
        var next = 0
        let value = try context.decodeValue(type, at: offset, end: &next)
        try finish(next)
        return value
    }

    func nestedContainer<NestedKey: CodingKey>(
        keyedBy type: NestedKey.Type, forKey key: Key
    ) throws -> KeyedDecodingContainer<NestedKey> {
        let offset = try valueOffset(key)
        let (start, end) = try context.containerBounds(at: offset, tag: BinaryTag.keyed, type: [String: Any].self)
        try finish(end)
        let level = slot < 0 ? Int.max : slot + 1
        return KeyedDecodingContainer(_KeyedDecoder<NestedKey>(context: context, start: start, end: end, level: level))
    }

    func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer {
        let offset = try valueOffset(key)
        let (start, end) = try context.containerBounds(at: offset, tag: BinaryTag.unkeyed, type: [Any].self)
        try finish(end)
        return _UnkeyedDecoder(context: context, cursor: start, end: end)
    }

    func superDecoder() throws -> any Decoder { try superDecoder(at: try valueOffset(_SuperKey())) }
    func superDecoder(forKey key: Key) throws -> any Decoder { try superDecoder(at: try valueOffset(key)) }

    private func superDecoder(at offset: Int) throws -> any Decoder {
        try finish(try context.skipValue(at: offset))
        return _BinaryDecoderImpl(context: context, offset: offset)
    }
}

/// Unkeyed container: a cursor over consecutive values.
struct _UnkeyedDecoder: UnkeyedDecodingContainer {
    let context: _DecodingContext
    private var cursor: Int
    private let end: Int
    private(set) var currentIndex = 0
    /// Elements already read from the byte run at `cursor`.
    private var runOffset = 0

    init(context: _DecodingContext, cursor: Int, end: Int) {
        self.context = context
        self.cursor = cursor
        self.end = end
    }

    var codingPath: [any CodingKey] { [] }
    var isAtEnd: Bool { cursor >= end }

    /// Counted by skipping the remaining values (O(1) each; a byte run
    /// counts its bytes); nil if malformed.
    var count: Int? {
        var n = currentIndex - runOffset
        var offset = cursor
        while offset < end {
            if (try? context.tag(at: offset)) == BinaryTag.byteRun {
                guard let (length, _) = try? context.readCount(at: offset + 1, elementSize: 1) else { return nil }
                n += length
            } else {
                n += 1
            }
            guard let next = try? context.skipValue(at: offset) else { return nil }
            offset = next
        }
        return n
    }

    /// Fails a read of anything but a `UInt8` in the middle of a byte run.
    @inline(__always)
    private func checkNotInRun(_ type: Any.Type) throws {
        guard runOffset == 0 else {
            throw DecodingError.typeMismatch(type, .init(codingPath: [], debugDescription:
                "BinaryDecoder: expected \(type), found the rest of a byte run at offset \(cursor)"))
        }
    }

    @inline(__always)
    private mutating func next<R>(_ type: Any.Type, _ reader: (_DecodingContext, Int) throws -> (R, Int)) throws -> R {
        try checkNotInRun(type)
        guard cursor < end else {
            throw DecodingError.valueNotFound(type, .init(codingPath: [], debugDescription: "BinaryDecoder: unkeyed container is at its end"))
        }
        let (value, next) = try reader(context, cursor)
        guard next <= end else { throw _DecodingContext.corrupted("value overruns its container at offset \(cursor)") }
        cursor = next
        currentIndex += 1
        return value
    }

    mutating func decodeNil() throws -> Bool {
        if runOffset > 0 { return false }
        guard cursor < end else {
            throw DecodingError.valueNotFound(Any?.self, .init(codingPath: [], debugDescription: "BinaryDecoder: unkeyed container is at its end"))
        }
        guard try context.tag(at: cursor) == BinaryTag.null else { return false }
        cursor += 1
        currentIndex += 1
        return true
    }

    mutating func decode(_ type: Bool.Type) throws -> Bool { try next(type) { try $0.readBool(at: $1) } }
    mutating func decode(_ type: String.Type) throws -> String { try next(type) { try $0.readString(at: $1) } }
    mutating func decode(_ type: Double.Type) throws -> Double { try next(type) { try $0.readDouble(at: $1) } }
    mutating func decode(_ type: Float.Type) throws -> Float { try next(type) { try $0.readFloat(at: $1) } }
    mutating func decode(_ type: Int.Type) throws -> Int { try next(type) { try $0.readInteger(type, at: $1) } }
    mutating func decode(_ type: Int8.Type) throws -> Int8 { try next(type) { try $0.readInteger(type, at: $1) } }
    mutating func decode(_ type: Int16.Type) throws -> Int16 { try next(type) { try $0.readInteger(type, at: $1) } }
    mutating func decode(_ type: Int32.Type) throws -> Int32 { try next(type) { try $0.readInteger(type, at: $1) } }
    mutating func decode(_ type: Int64.Type) throws -> Int64 { try next(type) { try $0.readInteger(type, at: $1) } }
    mutating func decode(_ type: Int128.Type) throws -> Int128 { try next(type) { try $0.readInteger(type, at: $1) } }
    mutating func decode(_ type: UInt.Type) throws -> UInt { try next(type) { try $0.readInteger(type, at: $1) } }
    mutating func decode(_ type: UInt8.Type) throws -> UInt8 {
        if cursor < end, try context.tag(at: cursor) == BinaryTag.byteRun {
            let (length, start) = try context.readCount(at: cursor + 1, elementSize: 1)
            guard length > 0, start + length <= end else {
                throw _DecodingContext.corrupted("byte run of \(length) bytes at offset \(cursor) is empty or overruns its container")
            }
            let byte = context.base.load(fromByteOffset: start + runOffset, as: UInt8.self)
            runOffset += 1
            currentIndex += 1
            if runOffset == length {
                cursor = start + length
                runOffset = 0
            }
            return byte
        }
        return try next(type) { try $0.readInteger(type, at: $1) }
    }
    mutating func decode(_ type: UInt16.Type) throws -> UInt16 { try next(type) { try $0.readInteger(type, at: $1) } }
    mutating func decode(_ type: UInt32.Type) throws -> UInt32 { try next(type) { try $0.readInteger(type, at: $1) } }
    mutating func decode(_ type: UInt64.Type) throws -> UInt64 { try next(type) { try $0.readInteger(type, at: $1) } }
    mutating func decode(_ type: UInt128.Type) throws -> UInt128 { try next(type) { try $0.readInteger(type, at: $1) } }
    mutating func decode<T: Decodable>(_ type: T.Type) throws -> T {
        if T.self == UInt8.self { return _identityCast(try decode(UInt8.self), to: T.self) }
        try checkNotInRun(type)
        guard cursor < end else {
            throw DecodingError.valueNotFound(type, .init(codingPath: [], debugDescription: "BinaryDecoder: unkeyed container is at its end"))
        }
        var next = 0
        let value = try context.decodeValue(type, at: cursor, end: &next)
        guard next <= end else { throw _DecodingContext.corrupted("value overruns its container at offset \(cursor)") }
        cursor = next
        currentIndex += 1
        return value
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type) throws -> KeyedDecodingContainer<NestedKey> {
        let (start, end) = try next([String: Any].self) { context, offset in
            let bounds = try context.containerBounds(at: offset, tag: BinaryTag.keyed, type: [String: Any].self)
            return (bounds, bounds.end)
        }
        return KeyedDecodingContainer(_KeyedDecoder<NestedKey>(context: context, start: start, end: end))
    }

    mutating func nestedUnkeyedContainer() throws -> any UnkeyedDecodingContainer {
        let (start, end) = try next([Any].self) { context, offset in
            let bounds = try context.containerBounds(at: offset, tag: BinaryTag.unkeyed, type: [Any].self)
            return (bounds, bounds.end)
        }
        return _UnkeyedDecoder(context: context, cursor: start, end: end)
    }

    mutating func superDecoder() throws -> any Decoder {
        let offset = try next(Any.self) { ($1, try $0.skipValue(at: $1)) }
        return _BinaryDecoderImpl(context: context, offset: offset)
    }
}

/// Single value container: the value at one offset.
struct _SingleValueDecoder: SingleValueDecodingContainer {
    let context: _DecodingContext
    let offset: Int

    var codingPath: [any CodingKey] { [] }

    func decodeNil() -> Bool { (try? context.tag(at: offset)) == BinaryTag.null }
    func decode(_ type: Bool.Type) throws -> Bool { try context.readBool(at: offset).0 }
    func decode(_ type: String.Type) throws -> String { try context.readString(at: offset).0 }
    func decode(_ type: Double.Type) throws -> Double { try context.readDouble(at: offset).0 }
    func decode(_ type: Float.Type) throws -> Float { try context.readFloat(at: offset).0 }
    func decode(_ type: Int.Type) throws -> Int { try context.readInteger(type, at: offset).0 }
    func decode(_ type: Int8.Type) throws -> Int8 { try context.readInteger(type, at: offset).0 }
    func decode(_ type: Int16.Type) throws -> Int16 { try context.readInteger(type, at: offset).0 }
    func decode(_ type: Int32.Type) throws -> Int32 { try context.readInteger(type, at: offset).0 }
    func decode(_ type: Int64.Type) throws -> Int64 { try context.readInteger(type, at: offset).0 }
    func decode(_ type: Int128.Type) throws -> Int128 { try context.readInteger(type, at: offset).0 }
    func decode(_ type: UInt.Type) throws -> UInt { try context.readInteger(type, at: offset).0 }
    func decode(_ type: UInt8.Type) throws -> UInt8 { try context.readInteger(type, at: offset).0 }
    func decode(_ type: UInt16.Type) throws -> UInt16 { try context.readInteger(type, at: offset).0 }
    func decode(_ type: UInt32.Type) throws -> UInt32 { try context.readInteger(type, at: offset).0 }
    func decode(_ type: UInt64.Type) throws -> UInt64 { try context.readInteger(type, at: offset).0 }
    func decode(_ type: UInt128.Type) throws -> UInt128 { try context.readInteger(type, at: offset).0 }

    /// Skips the `some` prefix the encoder adds before a nested nil.
    func decode<T: Decodable>(_ type: T.Type) throws -> T {
        let start = try context.tag(at: offset) == BinaryTag.some ? offset + 1 : offset
        var end = 0
        return try context.decodeValue(type, at: start, end: &end)
    }
}
