/// Decodes values written by `BinaryEncoder`.
///
/// Every read is bounds-checked: malformed, truncated or hostile input throws
/// a `DecodingError`, never crashes, never allocates more than the input could
/// hold, and nesting deeper than `BinaryCodingLimits.maxDepth` is refused on
/// every path that descends (values, nested containers, super decoders).
/// Every value must lie inside the container that holds it (checked before
/// the value is read), and keyed lookups cost O(1) amortised at any depth and
/// in any order (see `_KeyHint`), so the work of a decode is linear in the
/// input whatever its shape, as long as the decoding types list a
/// container's keys (`allKeys`, `count`) a bounded number of times.
/// `codingPath` is not tracked (always empty); error descriptions carry the
/// byte offset instead.
package struct BinaryDecoder: Sendable {
    /// The frame's attachments, which `attachment` values refer to by index.
    let attachments: [[UInt8]]

    package init(attachments: [[UInt8]] = []) { self.attachments = attachments }

    package func decode<T: Decodable>(_ type: T.Type, from bytes: UnsafeRawBufferPointer) throws -> T {
        var work = 0
        return try decode(type, from: bytes, work: &work)
    }

    package func decode<T: Decodable>(_ type: T.Type, from bytes: [UInt8]) throws -> T {
        try bytes.withUnsafeBytes { try decode(type, from: $0) }
    }

    package func decode<T: Decodable>(_ type: T.Type, from bytes: ArraySlice<UInt8>) throws -> T {
        try bytes.withUnsafeBytes { try decode(type, from: $0) }
    }

    /// Decodes like `decode(_:from:)` and also returns the work it did: how
    /// many container entries keyed lookups, key listings and unkeyed counts
    /// visited. Tests use it to check that decoding stays linear.
    package func decodeMeasuringWork<T: Decodable>(_ type: T.Type, from bytes: [UInt8]) throws -> (value: T, work: Int) {
        var work = 0
        let value = try bytes.withUnsafeBytes { try decode(type, from: $0, work: &work) }
        return (value, work)
    }

    private func decode<T: Decodable>(_ type: T.Type, from bytes: UnsafeRawBufferPointer, work: inout Int) throws -> T {
        guard let base = bytes.baseAddress, !bytes.isEmpty else {
            throw _DecodingContext.corrupted("empty input")
        }
        let context = _DecodingContext.make(base: base, count: bytes.count, attachments: attachments)
        defer { work += context.state.pointee.work }
        var end = 0
        let value = try withExtendedLifetime(context) {
            try context.decodeValue(T.self, at: 0, limit: bytes.count, depth: 1, end: &end)
        }
        if let error = context.state.pointee.deferredError { throw error }
        guard end == bytes.count else {
            throw _DecodingContext.corrupted("\(bytes.count - end) trailing bytes after the value")
        }
        return value
    }
}

/// The input and the mutable state of one `decode` call.
struct _DecodingState {
    let base: UnsafeRawPointer
    let count: Int
    let attachments: [[UInt8]]
    var nextID = 0
    /// The hints of levels `hintLevels...maxDepth`, allocated when first needed.
    var deepHints: UnsafeMutablePointer<_KeyHint>?
    /// Container entries visited by keyed lookups, key listings and unkeyed
    /// counts (see `BinaryDecoder.decodeMeasuringWork`).
    var work = 0
    /// The hints of keyed containers that lost their slot to a sibling and
    /// were used again after that (see `_KeyHint`).
    var evictedHints: [Int: _KeyHint] = [:]
    /// Hash indexes of the keys of containers whose lookups scanned too much.
    var keyIndexes: [Int: [[UInt8]: Int]] = [:]
    /// Malformed input found by an API that cannot throw (`allKeys`,
    /// `contains`, `count`): thrown when the value is complete.
    var deferredError: (any Error)?
}

/// Where the keyed container `id` expects its next key: synthesized code reads
/// keys in the order it wrote them, so lookups usually hit without a scan.
/// A miss scans on from there, wrapping around; when the entries scanned by
/// misses exceed the container's byte size (plus a margin that small structs
/// read out of order never reach), the container gets a hash index of its
/// keys instead, so lookups in any order cost O(1) amortised.
///
/// There is one hint per nesting level (a container's depth), at every level
/// up to `maxDepth`: a container at level n owns slot n from its creation
/// until another container of the same level is created (a sibling, e.g. the
/// next element of an array, which is usually done by then). A container
/// that is used after losing its slot (siblings read in turn) keeps its
/// hint in `_DecodingState.evictedHints` instead: its first lookup there
/// scans from its start, later ones go on from its cursor. Ids are unique
/// within a decode, so a hint is never applied to the wrong container.
struct _KeyHint {
    var id: Int
    var cursor: Int
    /// Entries visited by this container's lookups that missed the cursor.
    var scanned = 0
}

/// The object shared by every decoder and container of one `decode` call.
/// Reads take an offset and return the value with the offset just past it, so
/// containers are plain values with no shared cursor.
///
/// The state lives in the `ManagedBuffer` header, reached through a pointer,
/// which avoids the dynamic exclusivity checks of class stored properties.
/// The elements are the `_KeyHint`s of the first `hintLevels` levels (deeper
/// ones are in `deepHints`), each written before it is read.
final class _DecodingContext: ManagedBuffer<_DecodingState, _KeyHint> {
    static let hintLevels = 32

    static func make(base: UnsafeRawPointer, count: Int, attachments: [[UInt8]]) -> _DecodingContext {
        let buffer = create(minimumCapacity: hintLevels) { _ in
            _DecodingState(base: base, count: count, attachments: attachments)
        }
        return unsafeDowncast(buffer, to: _DecodingContext.self)
    }

    deinit {
        withUnsafeMutablePointerToHeader { $0.pointee.deepHints?.deallocate() }
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

    static func tooDeep(at offset: Int) -> DecodingError {
        corrupted("nesting depth exceeds the limit of \(BinaryCodingLimits.maxDepth) at offset \(offset)")
    }

    static func overrun(at offset: Int) -> DecodingError {
        corrupted("value at offset \(offset) overruns its container")
    }

    /// Records an error found where none can be thrown (the first one wins).
    func deferError(_ error: any Error) {
        if state.pointee.deferredError == nil { state.pointee.deferredError = error }
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
    /// follow before `limit` (the end of the enclosing container, or of the
    /// input), so a lying count can never cause a large allocation, nor make
    /// a value reach into its container's neighbours.
    @inline(__always)
    func readCount(at offset: Int, elementSize: Int, limit: Int) throws -> (Int, Int) {
        let (n, start) = try readVarint(at: offset)
        let available = limit &- start
        guard available >= 0, n <= UInt64(available / elementSize) else {
            throw Self.corrupted("count \(n) at offset \(offset) exceeds the \(max(available, 0)) bytes left in its container")
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

    /// Reads a string that must end by `limit`.
    @inline(__always)
    func readString(at offset: Int, limit: Int) throws -> (String, Int) {
        guard try tag(at: offset) == BinaryTag.string else { throw mismatch(String.self, at: offset) }
        let (length, start) = try readCount(at: offset + 1, elementSize: 1, limit: limit)
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

    /// The offset just past the value at `offset`, without decoding it, and
    /// checking that the value ends by `limit`: O(1), since containers carry
    /// their byte length (a chain of `some` prefixes costs its length, which
    /// is below `maxDepth`: each `some` is one level of nesting).
    func skipValue(at offset: Int, limit: Int) throws -> Int {
        let start = offset
        var offset = offset
        guard offset < limit else { throw Self.overrun(at: offset) }
        var tag = try tag(at: offset)
        while tag == BinaryTag.some {
            offset += 1
            guard offset - start < BinaryCodingLimits.maxDepth else { throw Self.tooDeep(at: start) }
            guard offset < limit else { throw Self.overrun(at: offset) }
            tag = try self.tag(at: offset)
        }
        if let size = BinaryTag.fixedSize(tag) {
            guard size < limit &- offset else {
                throw offset + 1 + size > count ? truncated(offset) : Self.overrun(at: offset)
            }
            return offset + 1 + size
        }
        if let elementSize = BinaryTag.packedElementSize(tag) {
            let (n, start) = try readCount(at: offset + 1, elementSize: elementSize, limit: limit)
            return start + n * elementSize
        }
        switch tag {
        case BinaryTag.string, BinaryTag.byteRun:
            let (n, start) = try readCount(at: offset + 1, elementSize: 1, limit: limit)
            return start + n
        case BinaryTag.keyed, BinaryTag.unkeyed:
            return try containerBounds(at: offset, tag: tag, type: Any.self, limit: limit).end
        case BinaryTag.attachment:
            let next = try readVarint(at: offset + 1).1
            guard next <= limit else { throw Self.overrun(at: offset) }
            return next
        default:
            throw Self.corrupted("unknown tag 0x\(String(tag, radix: 16)) at offset \(offset)")
        }
    }

    /// The entries of the container at `offset`, which must end by `limit`:
    /// `empty` reads as an empty container.
    func containerBounds(at offset: Int, tag expected: UInt8, type: Any.Type, limit: Int) throws -> (start: Int, end: Int) {
        let tag = try tag(at: offset)
        if tag == expected {
            try need(4, at: offset + 1)
            let length = Int(load(UInt32.self, at: offset + 1))
            // `offset + 5 <= count` here, so neither side can overflow.
            guard length <= limit &- (offset + 5) else {
                throw length > count - (offset + 5)
                    ? Self.corrupted("container of \(length) bytes at offset \(offset) overruns the input")
                    : Self.overrun(at: offset)
            }
            return (offset + 5, offset + 5 + length)
        }
        if tag == BinaryTag.empty { return (offset + 1, offset + 1) }
        throw mismatch(type, at: offset)
    }

    /// Decodes one complete value, which must end by `limit`, at nesting
    /// level `depth` (the top-level value is at 1), and sets `end` just past it.
    /// (No `(T, Int)` tuple: in unspecialized code it costs a metadata lookup.)
    func decodeValue<T: Decodable>(_: T.Type, at offset: Int, limit: Int, depth: Int, end: inout Int) throws -> T {
        if try hasFastPath(T.self, at: offset) { return try decodeFastPath(T.self, at: offset, limit: limit, end: &end) }
        guard depth <= BinaryCodingLimits.maxDepth else { throw Self.tooDeep(at: offset) }
        // The value's extent is checked first, so nothing inside it is read
        // beyond `limit`: the containers it opens carry the same length.
        let valueEnd = try skipValue(at: offset, limit: limit)
        let value = try T(from: _BinaryDecoderImpl(context: self, offset: offset, depth: depth))
        end = valueEnd
        return value
    }

    // MARK: Keyed lookup

    /// Registers a keyed container at nesting level `depth` and returns its id.
    @inline(__always)
    func registerKeyed(start: Int, depth: Int) -> Int {
        let s = state
        s.pointee.nextID += 1
        let id = s.pointee.nextID
        hint(depth).initialize(to: _KeyHint(id: id, cursor: start))
        return id
    }

    /// The hint slot of level `depth` (`1...maxDepth`).
    @inline(__always)
    func hint(_ depth: Int) -> UnsafeMutablePointer<_KeyHint> {
        depth < Self.hintLevels ? hints + depth : deepHint(depth)
    }

    @inline(never)
    private func deepHint(_ depth: Int) -> UnsafeMutablePointer<_KeyHint> {
        let s = state
        let levels = BinaryCodingLimits.maxDepth + 1 - Self.hintLevels
        let deep: UnsafeMutablePointer<_KeyHint>
        if let existing = s.pointee.deepHints {
            deep = existing
        } else {
            deep = .allocate(capacity: levels)
            deep.initialize(repeating: _KeyHint(id: 0, cursor: 0), count: levels)
            s.pointee.deepHints = deep
        }
        // Depths beyond the limit are refused before a container exists;
        // clamped anyway, so a slip can only cost a scan, never memory.
        return deep + (min(depth, BinaryCodingLimits.maxDepth) - Self.hintLevels)
    }

    /// Records that the container's next key is expected at `cursor`.
    @inline(__always)
    func advance(depth: Int, id: Int, to cursor: Int) {
        let slot = hint(depth)
        if slot.pointee.id == id {
            slot.pointee.cursor = cursor
        } else {
            state.pointee.evictedHints[id, default: _KeyHint(id: id, cursor: cursor)].cursor = cursor
        }
    }

    /// The offset of the value stored under `key`, or nil: tries the hinted
    /// position first, then the container's index if it has one, else scans
    /// on from the hint and wraps around to `start`. So reading keys in
    /// stored order costs one probe each, skipping unknown keys costs the
    /// entries skipped, and any order costs O(1) amortised.
    func findValue(key: UnsafeBufferPointer<UInt8>, start: Int, end: Int, id: Int, depth: Int) throws -> Int? {
        let s = state
        let slot = hint(depth)
        let owned = slot.pointee.id == id
        let hint = owned ? slot.pointee : s.pointee.evictedHints[id] ?? _KeyHint(id: id, cursor: end)
        var offset = start
        var wrap = start
        if hint.cursor < end {
            s.pointee.work += 1
            let (matches, value) = try matchKey(key, at: hint.cursor, limit: end)
            if matches { return value }
            offset = try skipValue(at: value, limit: end)
            wrap = hint.cursor
        }
        if hint.scanned > end - start + Self.scanMargin {
            s.pointee.work += 1
            return try keyIndex(start: start, end: end, id: id)[Array(key)]
        }
        var visited = 0
        var found: Int?
        search: do {
            while offset < end {
                visited += 1
                let (matches, value) = try matchKey(key, at: offset, limit: end)
                if matches { found = value; break search }
                offset = try skipValue(at: value, limit: end)
            }
            offset = start
            while offset < wrap {
                visited += 1
                let (matches, value) = try matchKey(key, at: offset, limit: end)
                if matches { found = value; break search }
                offset = try skipValue(at: value, limit: end)
            }
        }
        s.pointee.work += visited
        if owned {
            slot.pointee.scanned += visited
        } else {
            s.pointee.evictedHints[id, default: hint].scanned += visited
        }
        return found
    }

    /// Entries that misses may scan beyond a container's byte size before
    /// it gets an index: more than small structs read out of order use.
    static let scanMargin = 256

    /// The index of the container `id`'s keys (raw bytes; the first of
    /// duplicate keys wins), built on first use: O(entries) once.
    private func keyIndex(start: Int, end: Int, id: Int) throws -> [[UInt8]: Int] {
        let s = state
        if let index = s.pointee.keyIndexes[id] { return index }
        var index: [[UInt8]: Int] = [:]
        var offset = start
        while offset < end {
            s.pointee.work += 1
            let (length, keyStart) = try readCount(at: offset, elementSize: 1, limit: end)
            let key = [UInt8](UnsafeRawBufferPointer(start: base + keyStart, count: length))
            if index[key] == nil { index[key] = keyStart + length }
            offset = try skipValue(at: keyStart + length, limit: end)
        }
        s.pointee.keyIndexes[id] = index
        return index
    }

    /// Whether the entry at `offset` has `key`, and where its value starts.
    @inline(__always)
    private func matchKey(_ key: UnsafeBufferPointer<UInt8>, at offset: Int, limit: Int) throws -> (Bool, Int) {
        let (length, start) = try readCount(at: offset, elementSize: 1, limit: limit)
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
            state.pointee.work += 1
            let (length, keyStart) = try readCount(at: offset, elementSize: 1, limit: end)
            guard let key = makeString(at: keyStart, count: length) else {
                throw Self.corrupted("invalid UTF-8 in key at offset \(offset)")
            }
            result.append((key, keyStart + length))
            offset = try skipValue(at: keyStart + length, limit: end)
        }
        return result
    }
}

/// The `Decoder` handed to `init(from:)`: three words, no allocation.
/// The extent of the value at `offset` was checked against its container
/// before this decoder was made.
struct _BinaryDecoderImpl: Decoder {
    let context: _DecodingContext
    let offset: Int
    /// The value's nesting level: 1 at the top, +1 per value or nested
    /// container below (`BinaryCodingLimits.maxDepth` at most).
    let depth: Int

    var codingPath: [any CodingKey] { [] }
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        let (start, end) = try context.containerBounds(
            at: offset, tag: BinaryTag.keyed, type: [String: Any].self, limit: context.count)
        return KeyedDecodingContainer(_KeyedDecoder<Key>(context: context, start: start, end: end, depth: depth))
    }

    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        let (start, end) = try context.containerBounds(
            at: offset, tag: BinaryTag.unkeyed, type: [Any].self, limit: context.count)
        return _UnkeyedDecoder(context: context, cursor: start, end: end, depth: depth)
    }

    func singleValueContainer() throws -> any SingleValueDecodingContainer {
        _SingleValueDecoder(context: context, offset: offset, depth: depth)
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
    /// The container's nesting level (its hint slot).
    private let depth: Int

    init(context: _DecodingContext, start: Int, end: Int, depth: Int) {
        self.context = context
        self.start = start
        self.end = end
        self.depth = depth
        id = context.registerKeyed(start: start, depth: depth)
    }

    var codingPath: [any CodingKey] { [] }

    var allKeys: [Key] {
        do {
            return try context.entries(start: start, end: end).compactMap { Key(stringValue: $0.key) }
        } catch {
            context.deferError(error)
            return []
        }
    }

    func contains(_ key: Key) -> Bool {
        do {
            return try locate(key) != nil
        } catch {
            context.deferError(error)
            return false
        }
    }

    private func locate(_ key: Key) throws -> Int? {
        try locate(name: key.stringValue)
    }

    private func locate(name: String) throws -> Int? {
        var name = name
        return try name.withUTF8 { try context.findValue(key: $0, start: start, end: end, id: id, depth: depth) }
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
        context.advance(depth: depth, id: id, to: next)
    }

    /// Throws unless a container or decoder one level down is allowed.
    @inline(__always)
    private func descend(at offset: Int) throws {
        guard depth < BinaryCodingLimits.maxDepth else { throw _DecodingContext.tooDeep(at: offset) }
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
    func decode(_ type: String.Type, forKey key: Key) throws -> String { try read(key) { try context.readString(at: $0, limit: end) } }
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
        let value = try context.decodeValue(type, at: try valueOffset(key), limit: end, depth: depth + 1, end: &next)
        try finish(next)
        return value
    }

    func decodeIfPresent(_ type: Bool.Type, forKey key: Key) throws -> Bool? { try readIfPresent(key, context.readBool) }
    func decodeIfPresent(_ type: String.Type, forKey key: Key) throws -> String? { try readIfPresent(key) { try context.readString(at: $0, limit: end) } }
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
        let value = try context.decodeValue(type, at: offset, limit: end, depth: depth + 1, end: &next)
        try finish(next)
        return value
    }

    func nestedContainer<NestedKey: CodingKey>(
        keyedBy type: NestedKey.Type, forKey key: Key
    ) throws -> KeyedDecodingContainer<NestedKey> {
        let offset = try valueOffset(key)
        try descend(at: offset)
        let (start, end) = try context.containerBounds(
            at: offset, tag: BinaryTag.keyed, type: [String: Any].self, limit: end)
        try finish(end)
        return KeyedDecodingContainer(_KeyedDecoder<NestedKey>(context: context, start: start, end: end, depth: depth + 1))
    }

    func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer {
        let offset = try valueOffset(key)
        try descend(at: offset)
        let (start, end) = try context.containerBounds(at: offset, tag: BinaryTag.unkeyed, type: [Any].self, limit: end)
        try finish(end)
        return _UnkeyedDecoder(context: context, cursor: start, end: end, depth: depth + 1)
    }

    func superDecoder() throws -> any Decoder { try superDecoder(at: try valueOffset(_SuperKey())) }
    func superDecoder(forKey key: Key) throws -> any Decoder { try superDecoder(at: try valueOffset(key)) }

    private func superDecoder(at offset: Int) throws -> any Decoder {
        try descend(at: offset)
        try finish(try context.skipValue(at: offset, limit: end))
        return _BinaryDecoderImpl(context: context, offset: offset, depth: depth + 1)
    }
}

/// Unkeyed container: a cursor over consecutive values.
struct _UnkeyedDecoder: UnkeyedDecodingContainer {
    let context: _DecodingContext
    private var cursor: Int
    private let end: Int
    /// The container's nesting level.
    private let depth: Int
    private(set) var currentIndex = 0
    /// Elements already read from the byte run at `cursor`.
    private var runOffset = 0
    /// Where the bytes of that run start, and how many it holds: parsed
    /// once, at its first byte (`Data` reads itself one byte at a time).
    private var runStart = 0
    private var runLength = 0

    init(context: _DecodingContext, cursor: Int, end: Int, depth: Int) {
        self.context = context
        self.cursor = cursor
        self.end = end
        self.depth = depth
    }

    var codingPath: [any CodingKey] { [] }
    var isAtEnd: Bool { cursor >= end }

    /// Counted by skipping the remaining values (O(1) each; a byte run
    /// counts its bytes); nil if malformed.
    var count: Int? {
        var n = currentIndex - runOffset
        var offset = cursor
        do {
            while offset < end {
                context.state.pointee.work += 1
                if try context.tag(at: offset) == BinaryTag.byteRun {
                    n += try context.readCount(at: offset + 1, elementSize: 1, limit: end).0
                } else {
                    n += 1
                }
                offset = try context.skipValue(at: offset, limit: end)
            }
        } catch {
            context.deferError(error)
            return nil
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
    private func checkNotAtEnd(_ type: Any.Type) throws {
        guard cursor < end else {
            throw DecodingError.valueNotFound(type, .init(codingPath: [], debugDescription: "BinaryDecoder: unkeyed container is at its end"))
        }
    }

    /// Throws unless a container or decoder one level down is allowed.
    @inline(__always)
    private func descend() throws {
        guard depth < BinaryCodingLimits.maxDepth else { throw _DecodingContext.tooDeep(at: cursor) }
    }

    @inline(__always)
    private mutating func next<R>(_ type: Any.Type, _ reader: (_DecodingContext, Int) throws -> (R, Int)) throws -> R {
        try checkNotInRun(type)
        try checkNotAtEnd(type)
        let (value, next) = try reader(context, cursor)
        guard next <= end else { throw _DecodingContext.corrupted("value overruns its container at offset \(cursor)") }
        cursor = next
        currentIndex += 1
        return value
    }

    mutating func decodeNil() throws -> Bool {
        if runOffset > 0 { return false }
        try checkNotAtEnd(Any?.self)
        guard try context.tag(at: cursor) == BinaryTag.null else { return false }
        cursor += 1
        currentIndex += 1
        return true
    }

    mutating func decode(_ type: Bool.Type) throws -> Bool { try next(type) { try $0.readBool(at: $1) } }
    mutating func decode(_ type: String.Type) throws -> String {
        let end = self.end
        return try next(type) { try $0.readString(at: $1, limit: end) }
    }
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
        if runOffset == 0, cursor < end, try context.tag(at: cursor) == BinaryTag.byteRun {
            let (length, start) = try context.readCount(at: cursor + 1, elementSize: 1, limit: end)
            guard length > 0 else {
                throw _DecodingContext.corrupted("empty byte run at offset \(cursor)")
            }
            runStart = start
            runLength = length
        }
        if runLength > 0 {
            let byte = context.base.load(fromByteOffset: runStart + runOffset, as: UInt8.self)
            runOffset += 1
            currentIndex += 1
            if runOffset == runLength {
                cursor = runStart + runLength
                runOffset = 0
                runLength = 0
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
        try checkNotAtEnd(type)
        var next = 0
        let value = try context.decodeValue(type, at: cursor, limit: end, depth: depth + 1, end: &next)
        guard next <= end else { throw _DecodingContext.corrupted("value overruns its container at offset \(cursor)") }
        cursor = next
        currentIndex += 1
        return value
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type) throws -> KeyedDecodingContainer<NestedKey> {
        try descend()
        let end = self.end
        let (start, nestedEnd) = try next([String: Any].self) { context, offset in
            let bounds = try context.containerBounds(at: offset, tag: BinaryTag.keyed, type: [String: Any].self, limit: end)
            return (bounds, bounds.end)
        }
        return KeyedDecodingContainer(_KeyedDecoder<NestedKey>(context: context, start: start, end: nestedEnd, depth: depth + 1))
    }

    mutating func nestedUnkeyedContainer() throws -> any UnkeyedDecodingContainer {
        try descend()
        let end = self.end
        let (start, nestedEnd) = try next([Any].self) { context, offset in
            let bounds = try context.containerBounds(at: offset, tag: BinaryTag.unkeyed, type: [Any].self, limit: end)
            return (bounds, bounds.end)
        }
        return _UnkeyedDecoder(context: context, cursor: start, end: nestedEnd, depth: depth + 1)
    }

    mutating func superDecoder() throws -> any Decoder {
        try descend()
        let end = self.end
        let offset = try next(Any.self) { ($1, try $0.skipValue(at: $1, limit: end)) }
        return _BinaryDecoderImpl(context: context, offset: offset, depth: depth + 1)
    }
}

/// Single value container: the value at one offset (its extent already checked).
struct _SingleValueDecoder: SingleValueDecodingContainer {
    let context: _DecodingContext
    let offset: Int
    /// The nesting level of the value.
    let depth: Int

    var codingPath: [any CodingKey] { [] }

    func decodeNil() -> Bool { (try? context.tag(at: offset)) == BinaryTag.null }
    func decode(_ type: Bool.Type) throws -> Bool { try context.readBool(at: offset).0 }
    func decode(_ type: String.Type) throws -> String { try context.readString(at: offset, limit: context.count).0 }
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

    /// Skips the `some` prefix the encoder adds before a nested nil. The
    /// value is one level down, and ends where this one does (checked).
    func decode<T: Decodable>(_ type: T.Type) throws -> T {
        let start = try context.tag(at: offset) == BinaryTag.some ? offset + 1 : offset
        var end = 0
        return try context.decodeValue(type, at: start, limit: context.count, depth: depth + 1, end: &end)
    }
}
