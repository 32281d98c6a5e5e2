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
        let context = _EncodingContext.make()
        try withExtendedLifetime(context) {
            let state = context.state
            swap(&state.pointee.writer, &writer)
            defer { swap(&state.pointee.writer, &writer) }
            let mark = state.pointee.writer.count
            let attachmentMark = state.pointee.writer.attachments?.count ?? 0
            do {
                try context.encodeValue(value, depth: 1)
                if let error = state.pointee.deferredError { throw error }
            } catch {
                state.pointee.writer.bytes.removeSubrange(mark...)
                if let count = state.pointee.writer.attachments?.count, count > attachmentMark {
                    state.pointee.writer.attachments!.removeSubrange(attachmentMark...)
                }
                throw error
            }
        }
    }
}

/// The mutable state of one `encode` call: the output and the stack of
/// containers whose byte length is not patched yet.
struct _EncodingState {
    var writer = ByteWriter(reusing: [])
    /// How many containers are open (the stack is in the context's elements).
    var frameCount = 0
    /// Open containers beyond the first `_EncodingContext.inlineFrames`.
    var overflowFrames: [_EncodingFrame] = []
    /// The id of the innermost open container (0 if none), for the per-write check.
    var topID = 0
    /// The nesting level of the innermost open container (0 if none): a value
    /// written to it is one level deeper.
    var topDepth = 0
    var nextID = 0
    /// An error found by a non-throwing API (`container(keyedBy:)` …), thrown at the end.
    var deferredError: (any Error)?

}

/// An open container of the encoder.
struct _EncodingFrame {
    var id: Int
    /// Where the container's tag is, or where a super-encoder's value starts.
    var offset: Int
    /// A super-encoder slot: has no header, must hold exactly one value.
    var isSlot: Bool
    /// The nesting level, counted as `BinaryDecoder` counts it: the top-level
    /// value is at 1; a value's container is at the value's level; a value,
    /// nested container or super encoder below a container is one deeper.
    var depth: Int
}

/// The object shared by every encoder and container of one `encode` call.
///
/// The state lives in the `ManagedBuffer` header and is reached through a
/// pointer: class stored properties would pay a dynamic exclusivity check on
/// every access, a quarter of the time of a small message.
///
/// A container is closed (its length patched) when the value that opened it
/// finishes, or when an enclosing container writes again; writing to a closed
/// container is an error rather than silent corruption.
final class _EncodingContext: ManagedBuffer<_EncodingState, _EncodingFrame> {
    /// Open containers kept in the object itself (deeper ones go to an array).
    static let inlineFrames = 32

    static func make() -> _EncodingContext {
        unsafeDowncast(create(minimumCapacity: inlineFrames) { _ in _EncodingState() }, to: _EncodingContext.self)
    }

    deinit {
        _ = withUnsafeMutablePointers { state, frames in
            frames.deinitialize(count: min(state.pointee.frameCount, Self.inlineFrames))
        }
    }

    @inline(__always)
    var state: UnsafeMutablePointer<_EncodingState> { withUnsafeMutablePointerToHeader { $0 } }

    @inline(__always)
    private var inline: UnsafeMutablePointer<_EncodingFrame> { withUnsafeMutablePointerToElements { $0 } }

    @inline(__always)
    var frameCount: Int { state.pointee.frameCount }

    @inline(__always)
    func frame(at index: Int) -> _EncodingFrame {
        index < Self.inlineFrames ? inline[index] : state.pointee.overflowFrames[index - Self.inlineFrames]
    }

    private func push(_ frame: _EncodingFrame) {
        let index = state.pointee.frameCount
        if index < Self.inlineFrames {
            (inline + index).initialize(to: frame)
        } else {
            state.pointee.overflowFrames.append(frame)
        }
        state.pointee.frameCount = index + 1
    }

    private func pop() -> _EncodingFrame {
        let index = state.pointee.frameCount - 1
        state.pointee.frameCount = index
        return index < Self.inlineFrames ? (inline + index).move() : state.pointee.overflowFrames.removeLast()
    }

    // MARK: Container stack

    /// Makes the container `id` the innermost open one, closing any container
    /// nested in it; throws if it was closed already.
    @inline(__always)
    func enter(_ id: Int) throws {
        if state.pointee.topID != id { try reenter(id) }
    }

    private func reenter(_ id: Int) throws {
        guard let index = (0..<frameCount).last(where: { frame(at: $0).id == id }) else {
            throw EncodingError.invalidValue(
                id, .init(codingPath: [], debugDescription: "BinaryEncoder: write to a container that is closed or invalid"))
        }
        try close(downTo: index + 1)
    }

    /// Closes every container above `height`, innermost first.
    func close(downTo height: Int) throws {
        let s = state
        while s.pointee.frameCount > height {
            let frame = pop()
            if frame.isSlot {
                if s.pointee.writer.count == frame.offset { s.pointee.writer.write(BinaryTag.empty) }
            } else {
                let length = s.pointee.writer.count - frame.offset - 5
                guard length <= Int(UInt32.max) else {
                    throw EncodingError.invalidValue(
                        length, .init(codingPath: [], debugDescription: "BinaryEncoder: container larger than 4 GiB"))
                }
                s.pointee.writer.patch(UInt32(length), at: frame.offset + 1)
            }
        }
        if height > 0 {
            let top = frame(at: height - 1)
            s.pointee.topID = top.id
            s.pointee.topDepth = top.depth
        } else {
            s.pointee.topID = 0
            s.pointee.topDepth = 0
        }
    }

    /// Opens a container (or a slot) at nesting level `depth` at the end of
    /// the output; returns its id, or -1 (every write then throws) when
    /// nesting is too deep.
    func open(tag: UInt8?, depth: Int) -> Int {
        let s = state
        guard depth <= BinaryCodingLimits.maxDepth else {
            fail(Self.tooDeep)
            return -1
        }
        s.pointee.nextID += 1
        let id = s.pointee.nextID
        push(_EncodingFrame(id: id, offset: s.pointee.writer.count, isSlot: tag == nil, depth: depth))
        if let tag {
            s.pointee.writer.write(tag: tag, UInt32(0))
        }
        s.pointee.topID = id
        s.pointee.topDepth = depth
        return id
    }

    static let tooDeep = "nesting depth exceeds the limit of \(BinaryCodingLimits.maxDepth)"

    /// Opens a container or slot one level below the innermost open container
    /// (the one that just wrote, so it is on top).
    @inline(__always)
    func openNested(tag: UInt8?) -> Int {
        open(tag: tag, depth: state.pointee.topDepth + 1)
    }

    /// The container a value asks for: opened on first request, the same one
    /// again on a second request of the same kind (e.g. `super.encode(to:)`).
    func container(tag: UInt8, base: Int, start: Int, depth: Int) -> Int {
        let s = state
        if s.pointee.frameCount > base {
            let frame = frame(at: base)
            if !frame.isSlot, frame.offset == start, s.pointee.writer.bytes[start] == tag { return frame.id }
            fail("a value asked for two different kinds of container")
            return -1
        }
        guard s.pointee.writer.count == start else {
            fail("a value asked for a container after writing a single value")
            return -1
        }
        return open(tag: tag, depth: depth)
    }

    func fail(_ message: String) {
        if state.pointee.deferredError == nil {
            state.pointee.deferredError = EncodingError.invalidValue(
                message, .init(codingPath: [], debugDescription: "BinaryEncoder: \(message)"))
        }
    }

    // MARK: Values

    /// Writes one complete value at nesting level `depth`; anything it opened
    /// is closed on return.
    func encodeValue<T: Encodable>(_ value: T, depth: Int) throws {
        if encodeFastPath(value) { return }
        guard depth <= BinaryCodingLimits.maxDepth else {
            throw EncodingError.invalidValue(
                value, .init(codingPath: [], debugDescription: "BinaryEncoder: \(Self.tooDeep)"))
        }
        let s = state
        let base = s.pointee.frameCount, start = s.pointee.writer.count
        try value.encode(to: _BinaryEncoderImpl(context: self, start: start, base: base, depth: depth))
        if s.pointee.frameCount > base { try close(downTo: base) }
        if s.pointee.writer.count == start { s.pointee.writer.write(BinaryTag.empty) }
    }

    @inline(__always)
    func writeInteger<I: FixedWidthInteger>(_ value: I) {
        state.pointee.writer.write(tag: BinaryTag.integer(I.self), value)
    }

    @inline(__always)
    func writeDouble(_ value: Double) {
        state.pointee.writer.write(tag: BinaryTag.f64, value.bitPattern)
    }

    @inline(__always)
    func writeFloat(_ value: Float) {
        state.pointee.writer.write(tag: BinaryTag.f32, value.bitPattern)
    }

    @inline(__always)
    func writeBool(_ value: Bool) {
        state.pointee.writer.write(value ? BinaryTag.true : BinaryTag.false)
    }

    @inline(__always)
    func writeNil() {
        state.pointee.writer.write(BinaryTag.null)
    }

    @inline(__always)
    func writeString(_ value: String) {
        state.pointee.writer.write(BinaryTag.string)
        writeUTF8(value)
    }

    /// Varint length then UTF-8 (appending a typed buffer is cheaper than a raw one).
    @inline(__always)
    func writeUTF8(_ string: String) {
        var string = string
        let s = state
        string.withUTF8 { utf8 in
            s.pointee.writer.writeVarint(UInt64(utf8.count))
            s.pointee.writer.bytes.append(contentsOf: utf8)
        }
    }

    @inline(__always)
    func writeKey(_ key: some CodingKey) {
        writeUTF8(key.stringValue)
    }
}

/// The `Encoder` handed to `encode(to:)`: one per value, three words (no
/// allocation: an existential holds three words inline).
struct _BinaryEncoderImpl: Encoder {
    let context: _EncodingContext
    /// Output size when this value started.
    let start: Int
    /// Container-stack height when this value started, and the value's
    /// nesting level; both are at most about 2 × `maxDepth`, so they share a word.
    private let _base: Int32
    private let _depth: Int32

    init(context: _EncodingContext, start: Int, base: Int, depth: Int) {
        self.context = context
        self.start = start
        _base = Int32(truncatingIfNeeded: base)
        _depth = Int32(truncatingIfNeeded: depth)
    }

    var base: Int { Int(_base) }
    var depth: Int { Int(_depth) }

    var codingPath: [any CodingKey] { [] }
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        let id = context.container(tag: BinaryTag.keyed, base: base, start: start, depth: depth)
        return KeyedEncodingContainer(_KeyedEncoder<Key>(context: context, id: id))
    }

    func unkeyedContainer() -> any UnkeyedEncodingContainer {
        _UnkeyedEncoder(context: context, id: context.container(tag: BinaryTag.unkeyed, base: base, start: start, depth: depth))
    }

    func singleValueContainer() -> any SingleValueEncodingContainer {
        _SingleValueEncoder(context: context, start: start, base: _base, depth: _depth)
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

    mutating func encodeNil(forKey key: Key) throws { try begin(key); context.writeNil() }
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
        try context.encodeValue(value, depth: context.state.pointee.topDepth + 1)
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
        return context.openNested(tag: tag)
    }

    private func superEncoder(key: String) -> any Encoder {
        do { try context.enter(id) } catch { context.fail("super encoder of a closed container") }
        context.writeUTF8(key)
        let depth = context.state.pointee.topDepth + 1
        _ = context.open(tag: nil, depth: depth)
        return _BinaryEncoderImpl(context: context, start: context.state.pointee.writer.count,
                                  base: context.frameCount, depth: depth)
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

    mutating func encodeNil() throws { try begin(); context.writeNil() }
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
        try context.encodeValue(value, depth: context.state.pointee.topDepth + 1)
    }

    /// Contiguous bytes (how `Data` encodes itself) become one byte run:
    /// their count of `UInt8` elements in one copy.
    mutating func encode<T: Sequence>(contentsOf sequence: T) throws where T.Element == UInt8 {
        let written: Void?? = try sequence.withContiguousStorageIfAvailable { buffer -> Void? in
            guard !buffer.isEmpty else { return () }
            try context.enter(id)
            count += buffer.count
            context.state.pointee.writer.write(BinaryTag.byteRun)
            context.state.pointee.writer.writeVarint(UInt64(buffer.count))
            context.state.pointee.writer.writeRaw(UnsafeRawBufferPointer(buffer))
            return ()
        }
        if written == nil {
            for byte in sequence { try encode(byte) }
        }
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type) -> KeyedEncodingContainer<NestedKey> {
        KeyedEncodingContainer(_KeyedEncoder<NestedKey>(context: context, id: nested(tag: BinaryTag.keyed)))
    }

    mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer {
        _UnkeyedEncoder(context: context, id: nested(tag: BinaryTag.unkeyed))
    }

    mutating func superEncoder() -> any Encoder {
        do { try begin() } catch { context.fail("super encoder of a closed container") }
        let depth = context.state.pointee.topDepth + 1
        _ = context.open(tag: nil, depth: depth)
        return _BinaryEncoderImpl(context: context, start: context.state.pointee.writer.count,
                                  base: context.frameCount, depth: depth)
    }

    private mutating func nested(tag: UInt8) -> Int {
        do { try begin() } catch { context.fail("nested container of a closed container"); return -1 }
        return context.openNested(tag: tag)
    }
}

/// Single value container: exactly one value, where the value began.
struct _SingleValueEncoder: SingleValueEncodingContainer {
    let context: _EncodingContext
    let start: Int
    /// As in `_BinaryEncoderImpl` (three words in all).
    let base: Int32
    let depth: Int32

    var codingPath: [any CodingKey] { [] }

    @inline(__always)
    private func claim() throws {
        guard context.state.pointee.writer.count == start, context.frameCount == Int(base) else {
            throw EncodingError.invalidValue(
                start, .init(codingPath: [], debugDescription: "BinaryEncoder: single value container written twice"))
        }
    }

    mutating func encodeNil() throws { try claim(); context.writeNil() }
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
        try context.encodeValue(value, depth: Int(depth) + 1)
        let first = context.state.pointee.writer.bytes[start]
        if first == BinaryTag.null || first == BinaryTag.some {
            context.state.pointee.writer.bytes.insert(BinaryTag.some, at: start)
        }
    }
}
