import Glibc
import PoolTestSupport
import ProcessPool
import ProcessPoolCore
import Synchronization
import Testing

// A worker is untrusted: whatever bytes it sends, decoding them in the parent
// must not crash, hang or balloon. These tests feed the decoder hostile
// shapes: very deep nesting through every API that descends, wide containers
// deep down, containers that overrun their parents, malformed bytes after
// every tag, and raw blocks holding invalid bit patterns.

// MARK: - Stack measurement

/// The lowest stack address the walkers below touched (a debug build keeps
/// `marker` on the stack, so this approximates the stack pointer).
private enum StackProbe {
    static let lowest = Mutex<UInt>(.max)

    static func reset() { lowest.guarded { $0 = .max } }

    @inline(never)
    static func touch() {
        var marker: UInt8 = 0
        let address = withUnsafeMutablePointer(to: &marker) { UInt(bitPattern: $0) }
        lowest.guarded { $0 = min($0, address) }
    }
}

private final class ThreadJob: @unchecked Sendable {
    let body: () -> Void
    var stackTop: UInt = 0
    init(_ body: @escaping () -> Void) { self.body = body }
}

/// What running on a default pthread gave: the result, the thread's stack
/// size and how much of it the body used (from `StackProbe`).
private struct ThreadRun<R> {
    var result: R
    var stackSize: Int
    var used: Int
}

/// Runs `body` on a new pthread created with default attributes, as
/// `PoolThread` starts the pool's I/O thread (which decodes worker output).
private func onDefaultThread<R>(_ body: @escaping () -> R) -> ThreadRun<R> {
    var result: R?
    let job = ThreadJob { result = body() }
    let raw = Unmanaged.passRetained(job).toOpaque()
    var thread = pthread_t()
    let rc = pthread_create(&thread, nil, { raw in
        let job = Unmanaged<ThreadJob>.fromOpaque(raw!).takeRetainedValue()
        var marker: UInt8 = 0
        job.stackTop = withUnsafeMutablePointer(to: &marker) { UInt(bitPattern: $0) }
        StackProbe.reset()
        job.body()
        return nil
    }, raw)
    precondition(rc == 0, "pthread_create: \(rc)")
    pthread_join(thread, nil)
    var attr = pthread_attr_t()
    pthread_attr_init(&attr)
    var stackSize = 0
    pthread_attr_getstacksize(&attr, &stackSize)
    pthread_attr_destroy(&attr)
    let lowest = StackProbe.lowest.guarded { $0 }
    let used = lowest == .max || lowest > job.stackTop ? 0 : Int(job.stackTop - lowest)
    return ThreadRun(result: result!, stackSize: stackSize, used: used)
}

// MARK: - Types that descend through every API

private enum ChainKey: String, CodingKey { case next, `super`, children }

/// `length` keyed containers, each the only entry of the previous one under
/// "next", walked recursively through `nestedContainer(keyedBy:forKey:)`.
private struct KeyedChain: Codable {
    var length: Int
    init(length: Int) { self.length = length }
    init(from decoder: any Decoder) throws { length = try Self.walk(decoder.container(keyedBy: ChainKey.self)) }
    private static func walk(_ container: KeyedDecodingContainer<ChainKey>) throws -> Int {
        StackProbe.touch()
        guard container.contains(.next) else { return 1 }
        return try walk(container.nestedContainer(keyedBy: ChainKey.self, forKey: .next)) + 1
    }
    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: ChainKey.self)
        for _ in 1..<max(length, 1) { container = container.nestedContainer(keyedBy: ChainKey.self, forKey: .next) }
    }
}

/// Unkeyed containers nested through `nestedUnkeyedContainer()`.
private struct UnkeyedChain: Codable {
    var length: Int
    init(length: Int) { self.length = length }
    init(from decoder: any Decoder) throws {
        var container = try decoder.unkeyedContainer()
        length = try Self.walk(&container)
    }
    private static func walk(_ container: inout any UnkeyedDecodingContainer) throws -> Int {
        StackProbe.touch()
        guard !container.isAtEnd else { return 1 }
        var nested = try container.nestedUnkeyedContainer()
        return try walk(&nested) + 1
    }
    func encode(to encoder: any Encoder) throws {
        var container = encoder.unkeyedContainer()
        for _ in 1..<max(length, 1) { container = container.nestedUnkeyedContainer() }
    }
}

/// Keyed and unkeyed containers alternating, through the keyed container's
/// `nestedUnkeyedContainer(forKey:)` and the unkeyed one's `nestedContainer(keyedBy:)`.
private struct AlternatingChain: Codable {
    var length: Int
    init(length: Int) { self.length = length }
    init(from decoder: any Decoder) throws { length = try Self.walkKeyed(decoder.container(keyedBy: ChainKey.self)) }
    private static func walkKeyed(_ container: KeyedDecodingContainer<ChainKey>) throws -> Int {
        StackProbe.touch()
        guard container.contains(.next) else { return 1 }
        var nested = try container.nestedUnkeyedContainer(forKey: .next)
        return try walkUnkeyed(&nested) + 1
    }
    private static func walkUnkeyed(_ container: inout any UnkeyedDecodingContainer) throws -> Int {
        StackProbe.touch()
        guard !container.isAtEnd else { return 1 }
        return try walkKeyed(container.nestedContainer(keyedBy: ChainKey.self)) + 1
    }
    func encode(to encoder: any Encoder) throws {
        var keyed = encoder.container(keyedBy: ChainKey.self)
        var remaining = length - 1
        while remaining > 0 {
            var unkeyed = keyed.nestedUnkeyedContainer(forKey: .next)
            remaining -= 1
            guard remaining > 0 else { break }
            keyed = unkeyed.nestedContainer(keyedBy: ChainKey.self)
            remaining -= 1
        }
    }
}

/// A class hierarchy's shape: each level's superclass part under "super",
/// through `superDecoder()` / `superEncoder()`.
private struct SuperChain: Codable {
    var length: Int
    init(length: Int) { self.length = length }
    init(from decoder: any Decoder) throws { length = try Self.walk(decoder) }
    private static func walk(_ decoder: any Decoder) throws -> Int {
        StackProbe.touch()
        let container = try decoder.container(keyedBy: ChainKey.self)
        guard container.contains(.super) else { return 1 }
        return try walk(container.superDecoder()) + 1
    }
    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: ChainKey.self)
        for _ in 1..<max(length, 1) { container = container.superEncoder().container(keyedBy: ChainKey.self) }
    }
}

/// The same through `superDecoder(forKey:)` / `superEncoder(forKey:)`.
private struct SuperForKeyChain: Codable {
    var length: Int
    init(length: Int) { self.length = length }
    init(from decoder: any Decoder) throws { length = try Self.walk(decoder) }
    private static func walk(_ decoder: any Decoder) throws -> Int {
        StackProbe.touch()
        let container = try decoder.container(keyedBy: ChainKey.self)
        guard container.contains(.next) else { return 1 }
        return try walk(container.superDecoder(forKey: .next)) + 1
    }
    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: ChainKey.self)
        for _ in 1..<max(length, 1) {
            container = container.superEncoder(forKey: .next).container(keyedBy: ChainKey.self)
        }
    }
}

/// Unkeyed containers nested through the unkeyed container's `superDecoder()`.
private struct UnkeyedSuperChain: Codable {
    var length: Int
    init(length: Int) { self.length = length }
    init(from decoder: any Decoder) throws { length = try Self.walk(decoder) }
    private static func walk(_ decoder: any Decoder) throws -> Int {
        StackProbe.touch()
        var container = try decoder.unkeyedContainer()
        guard !container.isAtEnd else { return 1 }
        return try walk(container.superDecoder()) + 1
    }
    func encode(to encoder: any Encoder) throws {
        var container = encoder.unkeyedContainer()
        for _ in 1..<max(length, 1) { container = container.superEncoder().unkeyedContainer() }
    }
}

/// `length` single-value wrappers around a nil: `some` prefixes on the wire.
private struct SingleChain: Codable {
    var length: Int
    init(length: Int) { self.length = length }
    init(from decoder: any Decoder) throws {
        StackProbe.touch()
        let container = try decoder.singleValueContainer()
        length = container.decodeNil() ? 0 : try container.decode(SingleChain.self).length + 1
    }
    func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        if length == 0 { try container.encodeNil() } else { try container.encode(SingleChain(length: length - 1)) }
    }
}

/// Decodes itself from its own single value container until it finds a nil:
/// recursion that consumes no input at all.
private struct Bottomless: Decodable {
    init(from decoder: any Decoder) throws {
        StackProbe.touch()
        let container = try decoder.singleValueContainer()
        if !container.decodeNil() { _ = try container.decode(Bottomless.self) }
    }
}

/// A linked list as synthesized code reads it (`decodeIfPresent`).
private final class Link: Codable {
    let next: Link?
    init(next: Link?) { self.next = next }
    private enum CodingKeys: String, CodingKey { case next }
    init(from decoder: any Decoder) throws {
        next = try decoder.container(keyedBy: CodingKeys.self).decodeIfPresent(Link.self, forKey: .next)
        StackProbe.touch()
    }
    static func chain(_ length: Int) -> Link {
        var link = Link(next: nil)
        for _ in 1..<max(length, 1) { link = Link(next: link) }
        return link
    }
    var length: Int {
        var n = 1
        var link = self
        while let next = link.next { n += 1; link = next }
        return n
    }
}

/// A tree through arrays, as synthesized code reads it: two levels per node.
private struct Node: Codable {
    var children: [Node]
    init(children: [Node]) { self.children = children }
    private enum CodingKeys: String, CodingKey { case children }
    init(from decoder: any Decoder) throws {
        children = try decoder.container(keyedBy: CodingKeys.self).decode([Node].self, forKey: .children)
        StackProbe.touch()
    }
    static func spine(_ nodes: Int) -> Node {
        var node = Node(children: [])
        for _ in 1..<max(nodes, 1) { node = Node(children: [node]) }
        return node
    }
    var nodes: Int { 1 + (children.first?.nodes ?? 0) }
}

/// A tree through `[String: Tree]` dictionaries.
private final class Tree: Codable {
    var children: [String: Tree]
    init(_ children: [String: Tree] = [:]) { self.children = children }
}

// MARK: - Hand-made bytes

private func appendLength(_ value: Int, to bytes: inout [UInt8]) {
    withUnsafeBytes(of: UInt32(value).littleEndian) { bytes.append(contentsOf: $0) }
}

/// `levels` containers, each holding the next as its only entry, the
/// innermost empty; `level(i)` gives the tag of level i and, for a keyed
/// one, the key of its entry. Built front to back in O(levels).
private func chainBytes(levels: Int, _ level: (Int) -> (tag: UInt8, key: String?)) -> [UInt8] {
    var sizes = [Int](repeating: 5, count: levels)
    if levels >= 2 {
        for i in stride(from: levels - 2, through: 0, by: -1) {
            let key = level(i).key.map { 1 + $0.utf8.count } ?? 0
            sizes[i] = 5 + key + sizes[i + 1]
        }
    }
    var bytes: [UInt8] = []
    bytes.reserveCapacity(sizes.first ?? 0)
    for i in 0..<levels {
        let (tag, key) = level(i)
        bytes.append(tag)
        appendLength(sizes[i] - 5, to: &bytes)
        if i < levels - 1, let key {
            bytes.append(UInt8(key.utf8.count))
            bytes.append(contentsOf: key.utf8)
        }
    }
    return bytes
}

private let keyedTag: UInt8 = 0x13
private let unkeyedTag: UInt8 = 0x14

private func keyedChainBytes(_ levels: Int, key: String = "next") -> [UInt8] {
    chainBytes(levels: levels) { _ in (keyedTag, key) }
}

private func unkeyedChainBytes(_ levels: Int) -> [UInt8] {
    chainBytes(levels: levels) { _ in (unkeyedTag, nil) }
}

private func alternatingBytes(_ levels: Int, key: String = "next") -> [UInt8] {
    chainBytes(levels: levels) { $0 % 2 == 0 ? (keyedTag, key) : (unkeyedTag, nil) }
}

private func someChainBytes(_ length: Int) -> [UInt8] {
    [UInt8](repeating: 0x04, count: length) + [0x00]
}

/// One way of nesting: how to encode and decode it `n` levels deep (`n` as
/// the type counts it), the bytes of `n` levels made by hand, and how many
/// levels fit in `BinaryCodingLimits.maxDepth`.
private struct NestingShape: @unchecked Sendable {
    var name: String
    var atLimit: Int
    var encode: (Int) throws -> [UInt8]
    var decode: ([UInt8]) throws -> Int
    var handMade: (Int) -> [UInt8]
}

private let maxDepth = BinaryCodingLimits.maxDepth

private let nestingShapes: [NestingShape] = [
    NestingShape(name: "keyed nestedContainer(keyedBy:forKey:)", atLimit: maxDepth,
                 encode: { try BinaryEncoder().encode(KeyedChain(length: $0)) },
                 decode: { try BinaryDecoder().decode(KeyedChain.self, from: $0).length },
                 handMade: { keyedChainBytes($0) }),
    NestingShape(name: "unkeyed nestedUnkeyedContainer()", atLimit: maxDepth,
                 encode: { try BinaryEncoder().encode(UnkeyedChain(length: $0)) },
                 decode: { try BinaryDecoder().decode(UnkeyedChain.self, from: $0).length },
                 handMade: { unkeyedChainBytes($0) }),
    NestingShape(name: "keyed nestedUnkeyedContainer(forKey:) + unkeyed nestedContainer(keyedBy:)", atLimit: maxDepth,
                 encode: { try BinaryEncoder().encode(AlternatingChain(length: $0)) },
                 decode: { try BinaryDecoder().decode(AlternatingChain.self, from: $0).length },
                 handMade: { alternatingBytes($0) }),
    NestingShape(name: "keyed superDecoder()", atLimit: maxDepth,
                 encode: { try BinaryEncoder().encode(SuperChain(length: $0)) },
                 decode: { try BinaryDecoder().decode(SuperChain.self, from: $0).length },
                 handMade: { keyedChainBytes($0, key: "super") }),
    NestingShape(name: "keyed superDecoder(forKey:)", atLimit: maxDepth,
                 encode: { try BinaryEncoder().encode(SuperForKeyChain(length: $0)) },
                 decode: { try BinaryDecoder().decode(SuperForKeyChain.self, from: $0).length },
                 handMade: { keyedChainBytes($0) }),
    NestingShape(name: "unkeyed superDecoder()", atLimit: maxDepth,
                 encode: { try BinaryEncoder().encode(UnkeyedSuperChain(length: $0)) },
                 decode: { try BinaryDecoder().decode(UnkeyedSuperChain.self, from: $0).length },
                 handMade: { unkeyedChainBytes($0) }),
    NestingShape(name: "single value decode(_:)", atLimit: maxDepth - 1,
                 encode: { try BinaryEncoder().encode(SingleChain(length: $0)) },
                 decode: { try BinaryDecoder().decode(SingleChain.self, from: $0).length },
                 handMade: { someChainBytes($0) }),
    NestingShape(name: "decodeIfPresent (a linked list)", atLimit: maxDepth,
                 encode: { try BinaryEncoder().encode(Link.chain($0)) },
                 decode: { try BinaryDecoder().decode(Link.self, from: $0).length },
                 handMade: { keyedChainBytes($0) }),
    NestingShape(name: "synthesized arrays (a tree of nodes)", atLimit: maxDepth / 2,
                 encode: { try BinaryEncoder().encode(Node.spine($0)) },
                 decode: { try BinaryDecoder().decode(Node.self, from: $0).nodes },
                 handMade: { alternatingBytes(2 * $0, key: "children") }),
]

/// Whether `error` is a `DecodingError` that says the nesting was too deep.
private func isDepthError(_ error: any Error) -> Bool {
    error is DecodingError && "\(error)".contains("nesting depth exceeds the limit of \(maxDepth)")
}

// MARK: - Bit pattern fixtures

private struct PlainPair: BitwiseCodable { var a: Int32; var b: Double }
private struct Lanes: BitwiseCodable { var v: SIMD4<Float> }
private struct Nothing: BitwiseCodable, Equatable {}
private struct WithBool: BitwiseCodable, Equatable { var x: Int; var flag: Bool }
private enum Three: BitwiseCodable, Equatable { case a, b, c }
private enum TwoBools: BitwiseCodable, Equatable { case a(Bool), b(Bool) }
private enum TwoInts: BitwiseCodable, Equatable { case a(Int), b(Int) }
private enum IntOrNone: BitwiseCodable, Equatable { case value(Int), none }
private struct WithOptional: BitwiseCodable, Equatable { var x: Int?; var y: Int }
private struct Wrapped<T: BitwiseCodable>: BitwiseCodable { var inner: T; var tail: Int }
private enum Byte: UInt8, BitwiseCodable {
    case c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15, c16, c17, c18, c19, c20, c21, c22, c23, c24, c25, c26, c27, c28, c29, c30, c31, c32, c33, c34, c35, c36, c37, c38, c39, c40, c41, c42, c43, c44, c45, c46, c47, c48, c49, c50, c51, c52, c53, c54, c55, c56, c57, c58, c59, c60, c61, c62, c63, c64, c65, c66, c67, c68, c69, c70, c71, c72, c73, c74, c75, c76, c77, c78, c79, c80, c81, c82, c83, c84, c85, c86, c87, c88, c89, c90, c91, c92, c93, c94, c95, c96, c97, c98, c99, c100, c101, c102, c103, c104, c105, c106, c107, c108, c109, c110, c111, c112, c113, c114, c115, c116, c117, c118, c119, c120, c121, c122, c123, c124, c125, c126, c127
    case c128, c129, c130, c131, c132, c133, c134, c135, c136, c137, c138, c139, c140, c141, c142, c143, c144, c145, c146, c147, c148, c149, c150, c151, c152, c153, c154, c155, c156, c157, c158, c159, c160, c161, c162, c163, c164, c165, c166, c167, c168, c169, c170, c171, c172, c173, c174, c175, c176, c177, c178, c179, c180, c181, c182, c183, c184, c185, c186, c187, c188, c189, c190, c191, c192, c193, c194, c195, c196, c197, c198, c199, c200, c201, c202, c203, c204, c205, c206, c207, c208, c209, c210, c211, c212, c213, c214, c215, c216, c217, c218, c219, c220, c221, c222, c223, c224, c225, c226, c227, c228, c229, c230, c231, c232, c233, c234, c235, c236, c237, c238, c239, c240, c241, c242, c243, c244, c245, c246, c247, c248, c249, c250, c251, c252, c253, c254, c255
}

private func readBlock<T>(_: T.Type, count: Int, from bytes: [UInt8]) throws -> [T] {
    try bytes.withUnsafeBytes { raw in
        var reader = ByteReader(raw)
        return try BitwiseTypes.readBlock(T.self, count: count, from: &reader)
    }
}

private func blockBytes<T>(_ values: [T]) -> [UInt8] {
    var writer = ByteWriter()
    BitwiseTypes.writeBlock(values, into: &writer)
    return writer.bytes
}

private func roundTrip<T: Codable>(_ value: T) throws -> T {
    try BinaryDecoder().decode(T.self, from: BinaryEncoder().encode(value))
}

// MARK: - Audit fixtures

/// Reads `inner` through `decode(_:forKey:)`; `Inner` asks for its count.
private struct CountingElement: Decodable {
    struct Inner: Decodable {
        init(from decoder: any Decoder) throws { _ = try decoder.unkeyedContainer().count }
    }
    private enum CodingKeys: String, CodingKey { case inner }
    init(from decoder: any Decoder) throws {
        _ = try decoder.container(keyedBy: CodingKeys.self).decode(Inner.self, forKey: .inner)
    }
}

/// Decodes nothing, so skipping the value.
private struct Skip: Decodable {
    init(from decoder: any Decoder) throws {}
}

/// An array that keeps going past elements it cannot read (a common
/// "lossy array" pattern), counting both kinds.
private struct Lossy<Element: Decodable>: Decodable {
    var read = 0
    var skipped = 0
    init(from decoder: any Decoder) throws {
        var container = try decoder.unkeyedContainer()
        while !container.isAtEnd {
            if (try? container.decode(Element.self)) != nil {
                read += 1
            } else {
                _ = try container.decode(Skip.self)
                skipped += 1
            }
        }
    }
}

private struct OneString: Codable { var s: String }

private struct AnyKey: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(_ string: String) { stringValue = string }
    init?(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
}

/// A keyed container with entries in the given order.
private struct Ordered: Encodable {
    var pairs: [(String, Int)]
    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: AnyKey.self)
        for (key, value) in pairs { try container.encode(value, forKey: AnyKey(key)) }
    }
}

/// Two dictionaries read side by side, one key from each in turn: the
/// second container takes the first one's hint slot (same level).
private struct Zipped: Decodable {
    var sum = 0
    init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: AnyKey.self)
        let left = try container.nestedContainer(keyedBy: AnyKey.self, forKey: AnyKey("left"))
        let right = try container.nestedContainer(keyedBy: AnyKey.self, forKey: AnyKey("right"))
        for key in left.allKeys {
            sum += try left.decode(Int.self, forKey: key) + right.decode(Int.self, forKey: key)
        }
    }
}
private struct OnePair: Codable { var a: Int; var b: [Int] }

// MARK: - Tests

@Suite("Decoder bounds: depth, work, bit patterns", .boundedExitWait, .timeLimit(.minutes(3)))
struct HostileDecodingTests {
    // MARK: Work

    @Test("keyed lookups stay O(1) at every depth: 50,000 keys in dictionaries 42 to 114 levels down")
    func wideDictionariesDeepDown() throws {
        let wide = 5_000
        var node = Tree()
        var entries = 0
        var trees = 1
        for level in stride(from: 59, through: 0, by: -1) {
            var children = ["spine": node]
            if level >= 20, level % 4 == 0 {
                for i in 0..<wide { children["w\(i)"] = Tree() }
                trees += wide
            }
            entries += children.count
            trees += 1
            node = Tree(children)
        }
        let bytes = try BinaryEncoder().encode(node)
        let (decoded, work) = try BinaryDecoder().decodeMeasuringWork(Tree.self, from: bytes)

        var decodedEntries = 0
        var spine: Tree? = decoded
        while let tree = spine {
            decodedEntries += tree.children.count
            spine = tree.children["spine"]
        }
        #expect(decodedEntries == entries)
        // Listing a dictionary's keys visits each entry once, finding each
        // key one probe, and each tree's one key one probe. Without hints
        // below level 32, each lookup rescanned its dictionary: 125 million.
        #expect(work <= 2 * entries + trees + 100, "work \(work) for \(entries) entries and \(trees) trees")
    }

    @Test("a struct whose keys arrive out of order, with unknown keys among them: lookups scan only what they skip")
    func reorderedAndUnknownKeys() throws {
        // "b" first, 10,000 unknown keys, then "a": in declaration order,
        // finding "a" scans forward from the hint, and "b" wraps around.
        var body: [UInt8] = [0x01, UInt8(ascii: "b"), 0x15, 0x01] + withUnsafeBytes(of: Int64(7).littleEndian, Array.init)
        for i in 0..<10_000 {
            let key = Array("x\(i)".utf8)
            body += [UInt8(key.count)] + key + [0x00]
        }
        body += [0x01, UInt8(ascii: "a"), 0x08] + withUnsafeBytes(of: Int64(5).littleEndian, Array.init)
        var bytes: [UInt8] = [0x14]
        appendLength(100 * (5 + body.count), to: &bytes)
        for _ in 0..<100 {
            bytes.append(keyedTag)
            appendLength(body.count, to: &bytes)
            bytes += body
        }
        let (pairs, work) = try BinaryDecoder().decodeMeasuringWork([OnePair].self, from: bytes)
        #expect(pairs.count == 100 && pairs.allSatisfy { $0.a == 5 && $0.b == [7] })
        // Per struct: "a" costs the 10,002 entries up to it, "b" one more.
        #expect(work <= 100 * 10_010, "work \(work)")
    }

    @Test("sibling containers read in turn keep their own cursors; keys in any order stay O(1) amortised")
    func siblingsReadInTurn() throws {
        let n = 5_000
        let keys = (0..<n).map { "k\($0)" }
        let inOrder = Ordered(pairs: keys.map { ($0, 1) })
        let reversed = Ordered(pairs: keys.reversed().map { ($0, 2) })
        // `right` takes `left`'s hint slot: `left` must not rescan from its start for each key.
        let (same, sameWork) = try BinaryDecoder().decodeMeasuringWork(
            Zipped.self, from: BinaryEncoder().encode(["left": inOrder, "right": inOrder]))
        #expect(same.sum == 2 * n)
        #expect(sameWork <= 3 * n + 10, "work \(sameWork)")
        // `right` holds the keys in reverse: each lookup would scan n/2 entries
        // (n²/2 in all) if the container did not get an index.
        let (zipped, work) = try BinaryDecoder().decodeMeasuringWork(
            Zipped.self, from: BinaryEncoder().encode(["left": inOrder, "right": reversed]))
        #expect(zipped.sum == 3 * n)
        #expect(work <= 25 * n + 1_000, "work \(work)")
    }

    @Test("a value whose container claims more than its parent holds is refused before it is read")
    func overrunningChildIsRefusedAtOnce() throws {
        // n elements; each is a keyed container whose "inner" value is an
        // unkeyed header claiming every later element. A lossy reader
        // catches each failure and moves on: if the inner container were
        // read, counting it would walk all later elements, n²/2 in all.
        let n = 2_000
        let elementSize = 5 + 1 + 5 + 5
        var bytes: [UInt8] = [unkeyedTag]
        appendLength(n * elementSize, to: &bytes)
        for i in 0..<n {
            bytes.append(keyedTag)
            appendLength(1 + 5 + 5, to: &bytes)
            bytes += [5] + Array("inner".utf8)
            bytes.append(unkeyedTag)
            appendLength((n - 1 - i) * elementSize, to: &bytes)
        }
        let (lossy, work) = try BinaryDecoder().decodeMeasuringWork(Lossy<CountingElement>.self, from: bytes)
        #expect(lossy.read == 1 && lossy.skipped == n - 1)  // the last one claims nothing, so it is fine
        #expect(work <= 4 * n, "work \(work)")

        // The same with a string that runs past its container.
        var strings: [UInt8] = [unkeyedTag]
        appendLength(n * 9 + 1_000, to: &strings)
        for _ in 0..<n {
            strings.append(keyedTag)
            appendLength(4, to: &strings)
            strings += [1, UInt8(ascii: "s"), 0x11, 0x80 | 0x7F]  // a varint cut short by the container's end
        }
        strings += [UInt8](repeating: 0x03, count: 1_000)
        let lossyStrings = try BinaryDecoder().decode(Lossy<OneString>.self, from: strings)
        #expect(lossyStrings.read == 0 && lossyStrings.skipped == n + 1_000)
    }

    // MARK: Depth

    @Test("every way of nesting: maxDepth levels decode on a default pthread, one more is refused by both sides")
    func depthLimitOnEveryPath() throws {
        var report: [String] = []
        for shape in nestingShapes {
            let n = shape.atLimit
            let encoded = try shape.encode(n)
            #expect(encoded == shape.handMade(n), "\(shape.name): the encoder's bytes differ from the hand-made ones")
            let run = onDefaultThread { Result { try shape.decode(encoded) } }
            #expect(try run.result.get() == n, "\(shape.name)")
            // Half the default stack is the budget: user types' frames come on top.
            #expect(run.used < run.stackSize / 2, "\(shape.name): \(run.used) bytes of stack for \(maxDepth) levels")
            report.append("\(shape.name): \(run.used / 1024) KiB of \(run.stackSize / 1024) KiB, \(run.used / maxDepth) B/level")

            let encodeError = #expect(throws: EncodingError.self, "\(shape.name)") { try shape.encode(n + 1) }
            #expect(encodeError.map { "\($0)".contains("nesting depth exceeds") } == true, "\(shape.name): \(String(describing: encodeError))")
            let tooDeep = shape.handMade(n + 1)
            let refused = onDefaultThread { Result { try shape.decode(tooDeep) } }
            switch refused.result {
            case .success: Issue.record("\(shape.name): \(n + 1) levels decoded")
            case .failure(let error): #expect(isDepthError(error), "\(shape.name): \(error)")
            }
        }
        print("Stack used at maxDepth (\(maxDepth)) on a default pthread, debug build:\n  " + report.joined(separator: "\n  "))
    }

    @Test("100,000 levels through every way of nesting throw a depth error, not a stack overflow")
    func depthBombs() throws {
        let levels = 100_000
        for shape in nestingShapes {
            let bytes = shape.handMade(shape.name.hasPrefix("synthesized arrays") ? levels / 2 : levels)
            let run = onDefaultThread { Result { try shape.decode(bytes) } }
            switch run.result {
            case .success: Issue.record("\(shape.name): a \(levels)-level bomb decoded")
            case .failure(let error): #expect(isDepthError(error), "\(shape.name): \(error)")
            }
        }
        // Recursion that consumes no input stops at the limit too.
        let run = onDefaultThread { Result { try BinaryDecoder().decode(Bottomless.self, from: [0x03]) } }
        switch run.result {
        case .success: Issue.record("bottomless recursion returned")
        case .failure(let error): #expect(isDepthError(error), "\(error)")
        }
    }

    // MARK: Bit patterns

    @Test("only types whose every bit pattern is a value (and Bool) travel as raw blocks")
    func blockSafety() throws {
        // Every pattern valid: blocks.
        #expect(BitwiseTypes.blockSafe(Int.self))
        #expect(BitwiseTypes.blockSafe(Double.self))
        #expect(BitwiseTypes.blockSafe(UInt8.self))
        #expect(BitwiseTypes.blockSafe(PlainPair.self))
        #expect(BitwiseTypes.blockSafe(Lanes.self))
        #expect(BitwiseTypes.blockSafe(Nothing.self))
        #expect(BitwiseTypes.blockSafe(Wrapped<PlainPair>.self))
        #expect(BitwiseTypes.blockSafe(Pair.self))
        // Bool: validated when read.
        #expect(BitwiseTypes.blockSafe(Bool.self))
        // Invalid patterns exist (extra inhabitants): Codable.
        #expect(!BitwiseTypes.blockSafe(WithBool.self))
        #expect(!BitwiseTypes.blockSafe(BitwiseSquare.self))
        #expect(!BitwiseTypes.blockSafe(Three.self))
        #expect(!BitwiseTypes.blockSafe(TwoBools.self))
        #expect(!BitwiseTypes.blockSafe(TwoInts.self))
        // Invalid patterns without extra inhabitants (the size rule misses them).
        #expect(MemoryLayout<IntOrNone?>.size != MemoryLayout<IntOrNone>.size)
        #expect(!BitwiseTypes.blockSafe(IntOrNone.self))
        #expect(MemoryLayout<WithOptional?>.size != MemoryLayout<WithOptional>.size)
        #expect(!BitwiseTypes.blockSafe(WithOptional.self))
        #expect(!BitwiseTypes.blockSafe(Wrapped<IntOrNone>.self))
        // Every pattern valid, but an enum: refused too (it only loses the fast path).
        #expect(!BitwiseTypes.blockSafe(Byte.self))
        // Not BitwiseCodable at all.
        #expect(!BitwiseTypes.blockSafe(String.self))
        #expect(!BitwiseTypes.blockSafe(Int?.self))
        // isBitwise asks the same question.
        #expect(BitwiseTypes.isBitwise(Int.self) && BitwiseTypes.isBitwise(Double.self) && BitwiseTypes.isBitwise(Bool.self))
        #expect(!BitwiseTypes.isBitwise(WithBool.self) && !BitwiseTypes.isBitwise(IntOrNone.self) && !BitwiseTypes.isBitwise(Three.self))
    }

    @Test("a block of Bool holding a byte other than 0 or 1 is refused")
    func boolBlocksAreValidated() throws {
        let good = blockBytes([true, false, true, true])
        #expect(try readBlock(Bool.self, count: 4, from: good) == [true, false, true, true])
        for bad: UInt8 in [2, 0x80, 0xFF] {
            var bytes = good
            bytes[4 + 2] = bad
            let error = #expect(throws: ProtocolViolation.self) { try readBlock(Bool.self, count: 4, from: bytes) }
            #expect(error?.description.contains("Bool") == true && error?.description.contains("index 2") == true,
                    "\(String(describing: error))")
        }
    }

    @Test("Int and Double still travel as blocks, bit for bit")
    func numbersStillUseBlocks() throws {
        let ints = [0, 1, -1, .min, .max]
        #expect(try readBlock(Int.self, count: ints.count, from: blockBytes(ints)) == ints)
        let doubles = [0.0, -0.0, .infinity, .pi, .leastNonzeroMagnitude]
        let read = try readBlock(Double.self, count: doubles.count, from: blockBytes(doubles))
        #expect(read.map(\.bitPattern) == doubles.map(\.bitPattern))
        let nan = Double(bitPattern: 0x7FF8_0000_DEAD_BEEF)
        #expect(try readBlock(Double.self, count: 1, from: blockBytes([nan]))[0].bitPattern == nan.bitPattern)
        // A negative count or a short block is refused, for sized and zero-sized types.
        #expect(throws: ProtocolViolation.self) { try readBlock(Int.self, count: -1, from: blockBytes(ints)) }
        #expect(throws: ProtocolViolation.self) { try readBlock(Nothing.self, count: -1, from: blockBytes([Nothing()])) }
        #expect(throws: (any Error).self) { try readBlock(Int.self, count: ints.count + 1, from: blockBytes(ints)) }
    }

    @Test("enums and structs with a Bool map correctly through Codable, which checks each value")
    func invalidPatternTypesUseCodable() throws {
        let withBools = [WithBool(x: 1, flag: true), WithBool(x: -2, flag: false)]
        #expect(try roundTrip(withBools) == withBools)
        let enums: [TwoBools] = [.a(true), .b(false), .b(true)]
        #expect(try roundTrip(enums) == enums)
        #expect(try roundTrip([Three.a, .c, .b]) == [.a, .c, .b])
        #expect(try roundTrip([IntOrNone.value(.min), .none]) == [.value(.min), .none])
        #expect(try roundTrip([Byte.c0, .c255, .c128]) == [.c0, .c255, .c128])
        #expect(try roundTrip(WithOptional(x: nil, y: 3)) == WithOptional(x: nil, y: 3))
        // Codable refuses what is not a value.
        #expect(throws: DecodingError.self) { try BinaryDecoder().decode(Byte.self, from: BinaryEncoder().encode(300)) }
        #expect(throws: DecodingError.self) { try BinaryDecoder().decode(Bool.self, from: [0x05, 0x02]) }
        let bogusCase: [UInt8] = [keyedTag, 7, 0, 0, 0, 1, UInt8(ascii: "d"), keyedTag, 0, 0, 0, 0]
        #expect(throws: DecodingError.self) { try BinaryDecoder().decode(Three.self, from: bogusCase) }
    }

    @Test("a BitwiseCodable task with a Bool field maps through a pool (as Codable)")
    func structWithBoolThroughPool() async throws {
        #expect(!BitwiseTypes.isBitwise(BitwiseSquare.self))
        let pool = try makePool(.fork)
        var results: [Int] = []
        for try await value in try pool.map((0..<500).map { BitwiseSquare($0) }, chunkSize: 64) { results.append(value) }
        #expect(results == (0..<500).map { $0 * $0 })
        await pool.shutdown()
    }

    // MARK: Malformed input

    @Test("a table of malformed inputs, after every tag: each is refused with a DecodingError")
    func malformedInputTable() throws {
        func int64(_ value: Int64) -> [UInt8] { withUnsafeBytes(of: value.littleEndian, Array.init) }
        let huge: [UInt8] = [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]  // 2^63 - 1
        let tooLong = [UInt8](repeating: 0xFF, count: 11)
        let overflow = [UInt8](repeating: 0xFF, count: 9) + [0x02]
        let decoder = BinaryDecoder(attachments: [[1, 2, 3]])
        let table: [(String, [UInt8], ([UInt8]) throws -> Void)] = [
            ("null as Int", [0x00], { _ = try decoder.decode(Int.self, from: $0) }),
            ("false as String", [0x01], { _ = try decoder.decode(String.self, from: $0) }),
            ("true as [Int]", [0x02], { _ = try decoder.decode([Int].self, from: $0) }),
            ("empty as Double", [0x03], { _ = try decoder.decode(Double.self, from: $0) }),
            ("some, then nothing", [0x04], { _ = try decoder.decode(Int?.self, from: $0) }),
            ("some × 600", someChainBytes(600), { _ = try decoder.decode(Int???.self, from: $0) }),
            ("i8 truncated", [0x05], { _ = try decoder.decode(Int8.self, from: $0) }),
            ("i16 truncated", [0x06, 1], { _ = try decoder.decode(Int16.self, from: $0) }),
            ("i32 truncated", [0x07, 1, 2, 3], { _ = try decoder.decode(Int32.self, from: $0) }),
            ("i64 truncated", [0x08, 1, 2, 3, 4, 5, 6, 7], { _ = try decoder.decode(Int.self, from: $0) }),
            ("i128 truncated", [0x09] + [UInt8](repeating: 1, count: 15), { _ = try decoder.decode(Int128.self, from: $0) }),
            ("u8 truncated", [0x0A], { _ = try decoder.decode(UInt8.self, from: $0) }),
            ("u16 truncated", [0x0B, 1], { _ = try decoder.decode(UInt16.self, from: $0) }),
            ("u32 truncated", [0x0C, 1, 2], { _ = try decoder.decode(UInt32.self, from: $0) }),
            ("u64 truncated", [0x0D, 1], { _ = try decoder.decode(UInt64.self, from: $0) }),
            ("u128 truncated", [0x0E, 1], { _ = try decoder.decode(UInt128.self, from: $0) }),
            ("u64 too large for Int", [0x0D] + [UInt8](repeating: 0xFF, count: 8), { _ = try decoder.decode(Int.self, from: $0) }),
            ("f32 truncated", [0x0F, 1, 2, 3], { _ = try decoder.decode(Float.self, from: $0) }),
            ("f64 truncated", [0x10, 1, 2, 3], { _ = try decoder.decode(Double.self, from: $0) }),
            ("f64 not a Float", [0x10] + withUnsafeBytes(of: (0.1).bitPattern.littleEndian, Array.init), { _ = try decoder.decode(Float.self, from: $0) }),
            ("string: lying length", [0x11] + huge, { _ = try decoder.decode(String.self, from: $0) }),
            ("string: varint of 11 bytes", [0x11] + tooLong, { _ = try decoder.decode(String.self, from: $0) }),
            ("string: varint beyond 64 bits", [0x11] + overflow, { _ = try decoder.decode(String.self, from: $0) }),
            ("string: invalid UTF-8", [0x11, 2, 0xC3, 0x28], { _ = try decoder.decode(String.self, from: $0) }),
            ("string: past its container", [keyedTag, 4, 0, 0, 0, 1, UInt8(ascii: "s"), 0x11, 3] + Array("abc".utf8),
             { _ = try decoder.decode(OneString.self, from: $0) }),
            ("bytes: lying length", [0x12] + huge, { _ = try decoder.decode([UInt8].self, from: $0) }),
            ("bytes: past its container", [unkeyedTag, 3, 0, 0, 0, 0x12, 4, 1, 2, 3, 4],
             { _ = try decoder.decode([[UInt8]].self, from: $0) }),
            ("keyed: longer than the input", [keyedTag, 0xFF, 0xFF, 0xFF, 0xFF], { _ = try decoder.decode([String: Int].self, from: $0) }),
            ("keyed: header cut short", [keyedTag, 1, 0], { _ = try decoder.decode([String: Int].self, from: $0) }),
            ("keyed: key past the container", [keyedTag, 2, 0, 0, 0, 5] + Array("abcde".utf8) + [0x00],
             { _ = try decoder.decode([String: Int?].self, from: $0) }),
            ("keyed: key length varint cut by the container", [keyedTag, 1, 0, 0, 0, 0x80, 0x01, 0x61, 0x00],
             { _ = try decoder.decode([String: Int?].self, from: $0) }),
            ("keyed: key without a value", [keyedTag, 2, 0, 0, 0, 1, UInt8(ascii: "k")], { _ = try decoder.decode([String: Int].self, from: $0) }),
            ("keyed: invalid UTF-8 key", [keyedTag, 3, 0, 0, 0, 1, 0xFF, 0x00], { _ = try decoder.decode([String: Int?].self, from: $0) }),
            ("keyed: value past the container", [keyedTag, 4, 0, 0, 0, 1, UInt8(ascii: "a"), 0x08, 1] + int64(1).dropFirst(1),
             { _ = try decoder.decode(OnePair.self, from: $0) }),
            ("unkeyed: longer than the input", [unkeyedTag, 0xFF, 0xFF, 0xFF, 0x7F, 0x08], { _ = try decoder.decode([Int].self, from: $0) }),
            ("unkeyed: element past the container", [unkeyedTag, 2, 0, 0, 0] + [0x08] + int64(9),
             { _ = try decoder.decode([Int].self, from: $0) }),
            ("unkeyed: nested container past its parent", [unkeyedTag, 5, 0, 0, 0, unkeyedTag, 9, 0, 0, 0] + [0x08] + int64(1),
             { _ = try decoder.decode([[Int]].self, from: $0) }),
            ("unkeyed: count of a malformed container", [unkeyedTag, 2, 0, 0, 0, 0x7F, 0x00],
             { _ = try decoder.decode(Set<Int>.self, from: $0) }),
            ("packed i64: count past the container", [0x15, 2] + int64(1), { _ = try decoder.decode([Int].self, from: $0) }),
            ("packed i32: count past the container", [0x16, 2, 1, 2, 3, 4], { _ = try decoder.decode([Int32].self, from: $0) }),
            ("packed u64: lying count", [0x17] + huge, { _ = try decoder.decode([UInt64].self, from: $0) }),
            ("packed u32: count × size beyond Int", [0x18, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40],
             { _ = try decoder.decode([UInt32].self, from: $0) }),
            ("packed f64: count past the container", [unkeyedTag, 3, 0, 0, 0, 0x19, 1, 0] + int64(0),
             { _ = try decoder.decode([[Double]].self, from: $0) }),
            ("packed f32: truncated", [0x1A, 1, 0, 0], { _ = try decoder.decode([Float].self, from: $0) }),
            ("attachment: index out of range", [0x1B, 5], { _ = try decoder.decode([UInt8].self, from: $0) }),
            ("attachment: index varint of 11 bytes", [0x1B] + tooLong, { _ = try decoder.decode([UInt8].self, from: $0) }),
            ("attachment: past its container", [unkeyedTag, 1, 0, 0, 0, 0x1B, 0x00],
             { _ = try decoder.decode([[UInt8]].self, from: $0) }),
            ("byte run read as Int8", [unkeyedTag, 3, 0, 0, 0, 0x1C, 1, 7], { _ = try decoder.decode([Int8].self, from: $0) }),
            ("byte run: empty", [unkeyedTag, 2, 0, 0, 0, 0x1C, 0], { _ = try decoder.decode([UInt8].self, from: $0) }),
            ("byte run: past its container", [unkeyedTag, 3, 0, 0, 0, 0x1C, 4, 1, 2, 3, 4], { _ = try decoder.decode([UInt8].self, from: $0) }),
            ("byte run at the top level", [0x1C, 1, 7], { _ = try decoder.decode([UInt8].self, from: $0) }),
            ("trailing bytes", [0x00, 0x00], { _ = try decoder.decode(Int?.self, from: $0) }),
            ("empty input", [], { _ = try decoder.decode(Int.self, from: $0) }),
        ]
        for (name, bytes, decode) in table {
            #expect(throws: DecodingError.self, "\(name)") { try decode(bytes) }
        }
        // Tags no version of the format uses.
        for tag in UInt8(0x1D)...UInt8.max {
            #expect(throws: DecodingError.self) { try decoder.decode(OneString.self, from: [tag]) }
            #expect(throws: DecodingError.self) { try decoder.decode([Int?].self, from: [unkeyedTag, 1, 0, 0, 0, tag]) }
            #expect(throws: DecodingError.self) { try decoder.decode(Int.self, from: [tag] + int64(0)) }
        }
    }

    @Test("every tag followed by hostile payloads: decoding as many types never crashes")
    func everyTagWithHostilePayloads() throws {
        let payloads: [[UInt8]] = [
            [], [0], [1], [0xFF], [0x80], [UInt8](repeating: 0x80, count: 12), [UInt8](repeating: 0xFF, count: 16),
            [0xFF, 0xFF, 0xFF, 0xFF], [0xFF, 0xFF, 0xFF, 0x7F, 0x00], [4, 0, 0, 0, 0x04, 0x04, 0x04, 0x04],
            [5, 0, 0, 0, 1, 0x61, 0x13, 0xFF, 0xFF], [3, 0, 0, 0, 0x1C, 0xFF, 0x7F],
        ]
        let decoder = BinaryDecoder(attachments: [[9]])
        for tag in UInt8.min...UInt8.max {
            for payload in payloads {
                let bytes = [tag] + payload
                _ = try? decoder.decode(Int.self, from: bytes)
                _ = try? decoder.decode(String.self, from: bytes)
                _ = try? decoder.decode([UInt8].self, from: bytes)
                _ = try? decoder.decode([Int?].self, from: bytes)
                _ = try? decoder.decode([String: [Double]].self, from: bytes)
                _ = try? decoder.decode(OnePair.self, from: bytes)
                _ = try? decoder.decode(Lossy<OneString>.self, from: bytes)
                _ = try? decoder.decode(KeyedChain.self, from: bytes)
                _ = try? decoder.decode(UnkeyedSuperChain.self, from: bytes)
                _ = try? decoder.decode(SingleChain.self, from: bytes)
                _ = try? decoder.decode(Set<Int8>.self, from: bytes)
                _ = try? decoder.decode([Byte: Three].self, from: bytes)
            }
        }
    }

    @Test("ByteReader refuses lying lengths, long varints and negative sizes")
    func byteReaderBounds() throws {
        func read<R>(_ bytes: [UInt8], _ body: (inout ByteReader) throws -> R) throws -> R {
            try bytes.withUnsafeBytes { raw in
                var reader = ByteReader(raw)
                return try body(&reader)
            }
        }
        #expect(throws: ByteReaderError.self) { try read([0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]) { try $0.readLength() } }
        #expect(throws: ByteReaderError.self) { try read([UInt8](repeating: 0xFF, count: 11)) { try $0.readVarint() } }
        #expect(throws: ByteReaderError.self) { try read([UInt8](repeating: 0xFF, count: 9) + [2]) { try $0.readVarint() } }
        #expect(throws: ByteReaderError.self) { try read([1, 2, 3]) { try $0.readRaw(-1) } }
        #expect(throws: ByteReaderError.self) { try read([1, 2, 3]) { try $0.readRaw(4) } }
        #expect(throws: ByteReaderError.self) { try read([2, 0xC3, 0x28]) { try $0.readString() } }
        #expect(throws: ByteReaderError.self) { try read([1, 2, 3]) { try $0.read(UInt32.self) } }
        #expect(try read([3, 0x61, 0x62, 0x63]) { try $0.readString() } == "abc")
    }
}
