/// Encodes `Encodable` values into the compact, self-describing binary format
/// of the wire protocol (see `BinaryTag` for the layout).
///
/// `codingPath` is not tracked (always empty) and `userInfo` is empty: both
/// would cost an allocation per nested value.
package struct BinaryEncoder: Sendable {
    package init() {}

    package func encode<T: Encodable>(_ value: T) throws -> [UInt8] {
        var writer = ByteWriter(capacity: 128)
        try encode(value, into: &writer)
        return writer.bytes
    }

    /// Appends the encoding of value to an existing writer (used to build frames without extra copies).
    /// On error the writer is left as it was.
    package func encode<T: Encodable>(_ value: T, into writer: inout ByteWriter) throws {
        let context = _EncodingContext()
        swap(&context.writer, &writer)
        defer { swap(&context.writer, &writer) }
        let mark = context.writer.count
        do {
            try context.encodeValue(value)
            if let error = context.deferredError { throw error }
        } catch {
            context.writer.bytes.removeSubrange(mark...)
            throw error
        }
    }
}

/// The state shared by every encoder and container of one `encode` call: the
/// output and the stack of containers whose byte length is not patched yet.
///
/// A container is closed (its length patched) when the value that opened it
/// finishes, or when an enclosing container writes again; writing to a closed
/// container is an error rather than silent corruption.
final class _EncodingContext {
    var writer = ByteWriter(capacity: 0)
    /// Open containers, innermost last.
    private(set) var frames: [Frame] = []
    /// `frames.last?.id ?? 0`, kept apart for the per-write check.
    private var topID = 0
    private var nextID = 0
    private var depth = 0
    /// An error found by a non-throwing API (`container(keyedBy:)` …), thrown at the end.
    var deferredError: (any Error)?

    struct Frame {
        var id: Int
        /// Where the container's tag is, or where a super-encoder's value starts.
        var offset: Int
        /// A super-encoder slot: has no header, must hold exactly one value.
        var isSlot: Bool
    }

    // MARK: Container stack

    /// Makes the container `id` the innermost open one, closing any container
    /// nested in it; throws if it was closed already.
    @inline(__always)
    func enter(_ id: Int) throws {
        if topID != id { try reenter(id) }
    }

    private func reenter(_ id: Int) throws {
        guard let index = frames.lastIndex(where: { $0.id == id }) else {
            throw EncodingError.invalidValue(
                id, .init(codingPath: [], debugDescription: "BinaryEncoder: write to a container that is closed or invalid"))
        }
        try close(downTo: index + 1)
    }

    /// Closes every container above `height`, innermost first.
    func close(downTo height: Int) throws {
        while frames.count > height {
            let frame = frames.removeLast()
            if frame.isSlot {
                if writer.count == frame.offset { writer.write(BinaryTag.empty) }
            } else {
                let length = writer.count - frame.offset - 5
                guard length <= Int(UInt32.max) else {
                    throw EncodingError.invalidValue(
                        length, .init(codingPath: [], debugDescription: "BinaryEncoder: container larger than 4 GiB"))
                }
                writer.patch(UInt32(length), at: frame.offset + 1)
            }
        }
        topID = frames.last?.id ?? 0
    }

    /// Opens a container (or a slot) at the end of the output; returns its id,
    /// or -1 (every write then throws) when nesting is too deep.
    func open(tag: UInt8?) -> Int {
        guard frames.count < BinaryCodingLimits.maxDepth else {
            fail("nesting deeper than \(BinaryCodingLimits.maxDepth)")
            return -1
        }
        nextID += 1
        frames.append(Frame(id: nextID, offset: writer.count, isSlot: tag == nil))
        if let tag {
            writer.write(tag)
            writer.write(UInt32(0))
        }
        topID = nextID
        return nextID
    }

    /// The container a value asks for: opened on first request, the same one
    /// again on a second request of the same kind (e.g. `super.encode(to:)`).
    func container(tag: UInt8, base: Int, start: Int) -> Int {
        if frames.count > base {
            let frame = frames[base]
            if !frame.isSlot, frame.offset == start, writer.bytes[start] == tag { return frame.id }
            fail("a value asked for two different kinds of container")
            return -1
        }
        guard writer.count == start else {
            fail("a value asked for a container after writing a single value")
            return -1
        }
        return open(tag: tag)
    }

    func fail(_ message: String) {
        if deferredError == nil {
            deferredError = EncodingError.invalidValue(
                message, .init(codingPath: [], debugDescription: "BinaryEncoder: \(message)"))
        }
    }

    // MARK: Values

    /// Writes one complete value; anything it opened is closed on return.
    func encodeValue<T: Encodable>(_ value: T) throws {
        if encodeFastPath(value) { return }
        guard depth < BinaryCodingLimits.maxDepth else {
            throw EncodingError.invalidValue(
                value, .init(codingPath: [], debugDescription: "BinaryEncoder: nesting deeper than \(BinaryCodingLimits.maxDepth)"))
        }
        depth += 1
        defer { depth -= 1 }
        let base = frames.count, start = writer.count
        try value.encode(to: _BinaryEncoderImpl(context: self, base: base, start: start))
        if frames.count > base { try close(downTo: base) }
        if writer.count == start { writer.write(BinaryTag.empty) }
    }

    @inline(__always)
    func writeInteger<I: FixedWidthInteger>(_ value: I) {
        writer.write(BinaryTag.integer(I.self))
        writer.write(value)
    }

    @inline(__always)
    func writeDouble(_ value: Double) {
        writer.write(BinaryTag.f64)
        writer.write(value.bitPattern)
    }

    @inline(__always)
    func writeFloat(_ value: Float) {
        writer.write(BinaryTag.f32)
        writer.write(value.bitPattern)
    }

    @inline(__always)
    func writeBool(_ value: Bool) {
        writer.write(value ? BinaryTag.true : BinaryTag.false)
    }

    @inline(__always)
    func writeString(_ value: String) {
        writer.write(BinaryTag.string)
        writer.writeString(value)
    }

    @inline(__always)
    func writeKey(_ key: some CodingKey) {
        writer.writeString(key.stringValue)
    }
}

/// The `Encoder` handed to `encode(to:)`: one per value, three words (no allocation).
struct _BinaryEncoderImpl: Encoder {
    let context: _EncodingContext
    /// Container-stack height and output size when this value started.
    let base: Int
    let start: Int

    var codingPath: [any CodingKey] { [] }
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        let id = context.container(tag: BinaryTag.keyed, base: base, start: start)
        return KeyedEncodingContainer(_KeyedEncoder<Key>(context: context, id: id))
    }

    func unkeyedContainer() -> any UnkeyedEncodingContainer {
        _UnkeyedEncoder(context: context, id: context.container(tag: BinaryTag.unkeyed, base: base, start: start))
    }

    func singleValueContainer() -> any SingleValueEncodingContainer {
        _SingleValueEncoder(context: context, base: base, start: start)
    }
}

/// Keyed container: entries are (key string, value).
struct _KeyedEncoder<Key: CodingKey>: KeyedEncodingContainerProtocol {
    let context: _EncodingContext
    let id: Int

    var codingPath: [any CodingKey] { [] }

    @inline(__always)
    private func begin(_ key: Key) throws {
        try context.enter(id)
        context.writeKey(key)
    }

    mutating func encodeNil(forKey key: Key) throws { try begin(key); context.writer.write(BinaryTag.null) }
    mutating func encode(_ value: Bool, forKey key: Key) throws { try begin(key); context.writeBool(value) }
    mutating func encode(_ value: String, forKey key: Key) throws { try begin(key); context.writeString(value) }
    mutating func encode(_ value: Double, forKey key: Key) throws { try begin(key); context.writeDouble(value) }
    mutating func encode(_ value: Float, forKey key: Key) throws { try begin(key); context.writeFloat(value) }
    mutating func encode(_ value: Int, forKey key: Key) throws { try begin(key); context.writeInteger(value) }
    mutating func encode(_ value: Int8, forKey key: Key) throws { try begin(key); context.writeInteger(value) }
    mutating func encode(_ value: Int16, forKey key: Key) throws { try begin(key); context.writeInteger(value) }
    mutating func encode(_ value: Int32, forKey key: Key) throws { try begin(key); context.writeInteger(value) }
    mutating func encode(_ value: Int64, forKey key: Key) throws { try begin(key); context.writeInteger(value) }
    mutating func encode(_ value: Int128, forKey key: Key) throws { try begin(key); context.writeInteger(value) }
    mutating func encode(_ value: UInt, forKey key: Key) throws { try begin(key); context.writeInteger(value) }
    mutating func encode(_ value: UInt8, forKey key: Key) throws { try begin(key); context.writeInteger(value) }
    mutating func encode(_ value: UInt16, forKey key: Key) throws { try begin(key); context.writeInteger(value) }
    mutating func encode(_ value: UInt32, forKey key: Key) throws { try begin(key); context.writeInteger(value) }
    mutating func encode(_ value: UInt64, forKey key: Key) throws { try begin(key); context.writeInteger(value) }
    mutating func encode(_ value: UInt128, forKey key: Key) throws { try begin(key); context.writeInteger(value) }

    mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws {
        try begin(key)
        try context.encodeValue(value)
    }

    mutating func nestedContainer<NestedKey: CodingKey>(
        keyedBy keyType: NestedKey.Type, forKey key: Key
    ) -> KeyedEncodingContainer<NestedKey> {
        KeyedEncodingContainer(_KeyedEncoder<NestedKey>(context: context, id: nested(key, tag: BinaryTag.keyed)))
    }

    mutating func nestedUnkeyedContainer(forKey key: Key) -> any UnkeyedEncodingContainer {
        _UnkeyedEncoder(context: context, id: nested(key, tag: BinaryTag.unkeyed))
    }

    mutating func superEncoder() -> any Encoder { superEncoder(key: "super") }
    mutating func superEncoder(forKey key: Key) -> any Encoder { superEncoder(key: key.stringValue) }

    private func nested(_ key: Key, tag: UInt8) -> Int {
        do { try begin(key) } catch { context.fail("nested container of a closed container"); return -1 }
        return context.open(tag: tag)
    }

    private func superEncoder(key: String) -> any Encoder {
        do { try context.enter(id) } catch { context.fail("super encoder of a closed container") }
        context.writer.writeString(key)
        _ = context.open(tag: nil)
        return _BinaryEncoderImpl(context: context, base: context.frames.count, start: context.writer.count)
    }
}

/// Unkeyed container: values one after the other.
struct _UnkeyedEncoder: UnkeyedEncodingContainer {
    let context: _EncodingContext
    let id: Int
    private(set) var count = 0

    init(context: _EncodingContext, id: Int) {
        self.context = context
        self.id = id
    }

    var codingPath: [any CodingKey] { [] }

    @inline(__always)
    private mutating func begin() throws {
        try context.enter(id)
        count += 1
    }

    mutating func encodeNil() throws { try begin(); context.writer.write(BinaryTag.null) }
    mutating func encode(_ value: Bool) throws { try begin(); context.writeBool(value) }
    mutating func encode(_ value: String) throws { try begin(); context.writeString(value) }
    mutating func encode(_ value: Double) throws { try begin(); context.writeDouble(value) }
    mutating func encode(_ value: Float) throws { try begin(); context.writeFloat(value) }
    mutating func encode(_ value: Int) throws { try begin(); context.writeInteger(value) }
    mutating func encode(_ value: Int8) throws { try begin(); context.writeInteger(value) }
    mutating func encode(_ value: Int16) throws { try begin(); context.writeInteger(value) }
    mutating func encode(_ value: Int32) throws { try begin(); context.writeInteger(value) }
    mutating func encode(_ value: Int64) throws { try begin(); context.writeInteger(value) }
    mutating func encode(_ value: Int128) throws { try begin(); context.writeInteger(value) }
    mutating func encode(_ value: UInt) throws { try begin(); context.writeInteger(value) }
    mutating func encode(_ value: UInt8) throws { try begin(); context.writeInteger(value) }
    mutating func encode(_ value: UInt16) throws { try begin(); context.writeInteger(value) }
    mutating func encode(_ value: UInt32) throws { try begin(); context.writeInteger(value) }
    mutating func encode(_ value: UInt64) throws { try begin(); context.writeInteger(value) }
    mutating func encode(_ value: UInt128) throws { try begin(); context.writeInteger(value) }

    mutating func encode<T: Encodable>(_ value: T) throws {
        try begin()
        try context.encodeValue(value)
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type) -> KeyedEncodingContainer<NestedKey> {
        KeyedEncodingContainer(_KeyedEncoder<NestedKey>(context: context, id: nested(tag: BinaryTag.keyed)))
    }

    mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer {
        _UnkeyedEncoder(context: context, id: nested(tag: BinaryTag.unkeyed))
    }

    mutating func superEncoder() -> any Encoder {
        do { try begin() } catch { context.fail("super encoder of a closed container") }
        _ = context.open(tag: nil)
        return _BinaryEncoderImpl(context: context, base: context.frames.count, start: context.writer.count)
    }

    private mutating func nested(tag: UInt8) -> Int {
        do { try begin() } catch { context.fail("nested container of a closed container"); return -1 }
        return context.open(tag: tag)
    }
}

/// Single value container: exactly one value, where the value began.
struct _SingleValueEncoder: SingleValueEncodingContainer {
    let context: _EncodingContext
    let base: Int
    let start: Int

    var codingPath: [any CodingKey] { [] }

    @inline(__always)
    private func claim() throws {
        guard context.writer.count == start, context.frames.count == base else {
            throw EncodingError.invalidValue(
                start, .init(codingPath: [], debugDescription: "BinaryEncoder: single value container written twice"))
        }
    }

    mutating func encodeNil() throws { try claim(); context.writer.write(BinaryTag.null) }
    mutating func encode(_ value: Bool) throws { try claim(); context.writeBool(value) }
    mutating func encode(_ value: String) throws { try claim(); context.writeString(value) }
    mutating func encode(_ value: Double) throws { try claim(); context.writeDouble(value) }
    mutating func encode(_ value: Float) throws { try claim(); context.writeFloat(value) }
    mutating func encode(_ value: Int) throws { try claim(); context.writeInteger(value) }
    mutating func encode(_ value: Int8) throws { try claim(); context.writeInteger(value) }
    mutating func encode(_ value: Int16) throws { try claim(); context.writeInteger(value) }
    mutating func encode(_ value: Int32) throws { try claim(); context.writeInteger(value) }
    mutating func encode(_ value: Int64) throws { try claim(); context.writeInteger(value) }
    mutating func encode(_ value: Int128) throws { try claim(); context.writeInteger(value) }
    mutating func encode(_ value: UInt) throws { try claim(); context.writeInteger(value) }
    mutating func encode(_ value: UInt8) throws { try claim(); context.writeInteger(value) }
    mutating func encode(_ value: UInt16) throws { try claim(); context.writeInteger(value) }
    mutating func encode(_ value: UInt32) throws { try claim(); context.writeInteger(value) }
    mutating func encode(_ value: UInt64) throws { try claim(); context.writeInteger(value) }
    mutating func encode(_ value: UInt128) throws { try claim(); context.writeInteger(value) }

    /// A nested value that itself encodes as `null` (or `some`) gets a `some`
    /// prefix, so `Optional<Optional<T>>.some(nil)` stays distinct from `nil`.
    mutating func encode<T: Encodable>(_ value: T) throws {
        try claim()
        try context.encodeValue(value)
        let first = context.writer.bytes[start]
        if first == BinaryTag.null || first == BinaryTag.some {
            context.writer.bytes.insert(BinaryTag.some, at: start)
        }
    }
}
