#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import ProcessPoolCore
import Testing

// MARK: - Fixtures

private struct Point: Codable, Equatable, Hashable {
    var x: Double
    var y: Double
}

private struct Everything: Codable, Equatable {
    var bool = true
    var int = -42
    var int8: Int8 = -8
    var int16: Int16 = -1600
    var int32: Int32 = -320_000
    var int64: Int64 = .min
    var int128: Int128 = -(Int128(1) << 100)
    var uint: UInt = .max
    var uint8: UInt8 = 255
    var uint16: UInt16 = 65_000
    var uint32: UInt32 = 4_000_000_000
    var uint64: UInt64 = .max
    var uint128: UInt128 = UInt128.max
    var float: Float = 1.5
    var double = Double.pi
    var string = "héllo, wörld ✓"
    var empty = ""
    var optionalSome: Int? = 7
    var optionalNone: String? = nil
    var points = [Point(x: 1, y: 2), Point(x: -3, y: 4.5)]
    var nested = [[1, 2], [], [3]]
    var set: Set<Int> = [1, 5, 9]
    var byName: [String: Point] = ["a": Point(x: 0, y: 1), "b": Point(x: 2, y: 3)]
    var byNumber: [Int: String] = [1: "one", -2: "minus two", 300: "many"]
    var optionalArray: [Int?] = [1, nil, 3]
    var doubleOptionals: [Int??] = [.some(.some(1)), .some(.none), .none]
}

private enum Shape: Codable, Equatable {
    case circle(radius: Double)
    case rectangle(width: Double, height: Double)
    case labelled(String, Point)
    case empty
}

private final class Node: Codable, Equatable {
    var value: Int
    var children: [Node]
    init(_ value: Int, _ children: [Node] = []) {
        self.value = value
        self.children = children
    }
    static func == (a: Node, b: Node) -> Bool { a.value == b.value && a.children == b.children }
}

private class Animal: Codable {
    var name: String
    init(name: String) { self.name = name }
}

/// Uses `superEncoder()` / `superDecoder()` like a hand-written subclass.
private final class Dog: Animal, Equatable {
    var breed: String
    init(name: String, breed: String) {
        self.breed = breed
        super.init(name: name)
    }
    private enum CodingKeys: String, CodingKey { case breed }
    required init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        breed = try container.decode(String.self, forKey: .breed)
        try super.init(from: container.superDecoder())
    }
    override func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(breed, forKey: .breed)
        try super.encode(to: container.superEncoder())
    }
    static func == (a: Dog, b: Dog) -> Bool { a.name == b.name && a.breed == b.breed }
}

/// Shares the encoder with `super` (both keyed containers merge into one).
private final class Cat: Animal, Equatable {
    var lives: Int
    init(name: String, lives: Int) {
        self.lives = lives
        super.init(name: name)
    }
    private enum CodingKeys: String, CodingKey { case lives }
    required init(from decoder: any Decoder) throws {
        lives = try decoder.container(keyedBy: CodingKeys.self).decode(Int.self, forKey: .lives)
        try super.init(from: decoder)
    }
    override func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(lives, forKey: .lives)
        try super.encode(to: encoder)
    }
    static func == (a: Cat, b: Cat) -> Bool { a.name == b.name && a.lives == b.lives }
}

/// Writes keys in one order, reads them in another and skips one.
private struct Reordered: Codable, Equatable {
    var a: Int, b: String, c: [Double]
    private enum CodingKeys: String, CodingKey { case a, b, c, extra }
    init(a: Int, b: String, c: [Double]) { (self.a, self.b, self.c) = (a, b, c) }
    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(a, forKey: .a)
        try container.encode(["ignored": [1, 2, 3]], forKey: .extra)
        try container.encode(b, forKey: .b)
        try container.encode(c, forKey: .c)
    }
    init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        c = try container.decode([Double].self, forKey: .c)
        a = try container.decode(Int.self, forKey: .a)
        b = try container.decode(String.self, forKey: .b)
    }
}

/// Nested containers obtained explicitly, used interleaved on the decode side.
private struct Manual: Codable, Equatable {
    var name: String
    var tags: [String]
    var origin: Point
    private enum CodingKeys: String, CodingKey { case name, tags, origin }
    private enum PointKeys: String, CodingKey { case x, y }
    init(name: String, tags: [String], origin: Point) { (self.name, self.tags, self.origin) = (name, tags, origin) }
    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        var tags = container.nestedUnkeyedContainer(forKey: .tags)
        for tag in self.tags { try tags.encode(tag) }
        var origin = container.nestedContainer(keyedBy: PointKeys.self, forKey: .origin)
        try origin.encode(self.origin.x, forKey: .x)
        try origin.encode(self.origin.y, forKey: .y)
        try container.encode(name, forKey: .name)
    }
    init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        let origin = try container.nestedContainer(keyedBy: PointKeys.self, forKey: .origin)
        var tags = try container.nestedUnkeyedContainer(forKey: .tags)
        name = try container.decode(String.self, forKey: .name)
        let y = try origin.decode(Double.self, forKey: .y)
        var collected: [String] = []
        while !tags.isAtEnd { collected.append(try tags.decode(String.self)) }
        self.tags = collected
        self.origin = Point(x: try origin.decode(Double.self, forKey: .x), y: y)
    }
}

/// A value whose `encode(to:)` writes nothing at all.
private struct Silent: Codable, Equatable {
    init() {}
    init(from decoder: any Decoder) throws {}
    func encode(to encoder: any Encoder) throws {}
}

private struct WithFoundation: Codable, Equatable {
    var date: Date
    var url: URL
    var id: UUID
    var data: Data
}

/// Byte runs between other elements of one unkeyed container.
private struct RunsAndValues: Codable, Equatable {
    var head = "head"
    var first: [UInt8] = [1, 2, 3]
    var middle = 42
    var second: [UInt8] = [9]

    init() {}

    init(from decoder: any Decoder) throws {
        var container = try decoder.unkeyedContainer()
        #expect(container.count == 6)
        head = try container.decode(String.self)
        first = try (0..<3).map { _ in try container.decode(UInt8.self) }
        middle = try container.decode(Int.self)
        second = [try container.decode(UInt8.self)]
        #expect(container.isAtEnd)
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.unkeyedContainer()
        try container.encode(head)
        try first.withUnsafeBytes { try container.encode(contentsOf: $0) }
        try container.encode(middle)
        try container.encode(contentsOf: second)
    }
}

private struct Small: Codable, Equatable {
    var id: Int
    var name: String
    var score: Double
    var values: [Int]
}

/// Recursive optional chain, to build deep nesting.
private final class Chain: Codable {
    var next: Chain?
    init(next: Chain?) { self.next = next }
    static func depth(_ n: Int) -> Chain {
        var c = Chain(next: nil)
        for _ in 0..<n { c = Chain(next: c) }
        return c
    }
}

/// Deterministic generator for the fuzz tests.
private struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

private func roundTrip<T: Codable>(_ value: T) throws -> T {
    let bytes = try BinaryEncoder().encode(value)
    return try BinaryDecoder().decode(T.self, from: bytes)
}

// MARK: - Tests

@Suite("Binary coder", .boundedExitWait, .timeLimit(.minutes(3)))
struct BinaryCoderTests {
    @Test func primitivesAtTopLevel() throws {
        #expect(try roundTrip(42) == 42)
        #expect(try roundTrip(-1.25) == -1.25)
        #expect(try roundTrip(Float(2.5)) == 2.5)
        #expect(try roundTrip(true) == true)
        #expect(try roundTrip("") == "")
        #expect(try roundTrip("日本語 and emoji 🎉") == "日本語 and emoji 🎉")
        #expect(try roundTrip(UInt8(7)) == 7)
        #expect(try roundTrip(Int16.min) == .min)
        #expect(try roundTrip(Int128.max) == .max)
        #expect(try roundTrip(Double.nan).isNaN)
        #expect(try roundTrip(-0.0).sign == .minus)
    }

    @Test func everythingRoundTrips() throws {
        let value = Everything()
        #expect(try roundTrip(value) == value)
    }

    @Test func optionalsOfOptionals() throws {
        let values: [Int??] = [.none, .some(.none), .some(.some(3))]
        for value in values { #expect(try roundTrip(value) == value) }
        let triple: Int??? = .some(.some(.none))
        #expect(try roundTrip(triple) == triple)
        let nested: [String?]? = [nil, "x"]
        #expect(try roundTrip(nested) == nested)
        #expect(try roundTrip([Point?.none, Point(x: 1, y: 1)]) == [nil, Point(x: 1, y: 1)])
    }

    @Test func enumsWithAssociatedValues() throws {
        let shapes: [Shape] = [
            .circle(radius: 2), .rectangle(width: 3, height: 4),
            .labelled("tag", Point(x: 5, y: 6)), .empty,
        ]
        #expect(try roundTrip(shapes) == shapes)
        for shape in shapes { #expect(try roundTrip(shape) == shape) }
    }

    @Test func dictionariesAndSets() throws {
        let byString: [String: [Int]] = ["": [], "a": [1], "long key with spaces": [1, 2, 3]]
        #expect(try roundTrip(byString) == byString)
        let byInt: [Int: Double] = [Int.min: 1, 0: 2, Int.max: 3]
        #expect(try roundTrip(byInt) == byInt)
        let numericStrings: [String: Int] = ["42": 1, "042": 2, "-0": 3]
        #expect(try roundTrip(numericStrings) == numericStrings)
        let byPoint: [Point: String] = [Point(x: 1, y: 2): "p"]
        #expect(try roundTrip(byPoint) == byPoint)
        let set: Set<String> = ["x", "y", "z"]
        #expect(try roundTrip(set) == set)
    }

    @Test func classesAndRecursion() throws {
        let tree = Node(1, [Node(2), Node(3, [Node(4), Node(5, [Node(6)])])])
        #expect(try roundTrip(tree) == tree)
    }

    @Test func superEncoderAndSharedContainers() throws {
        let dog = Dog(name: "Rex", breed: "collie")
        #expect(try roundTrip(dog) == dog)
        let cat = Cat(name: "Tom", lives: 9)
        #expect(try roundTrip(cat) == cat)
    }

    @Test func keysInAnyOrderAndUnknownKeysSkipped() throws {
        let value = Reordered(a: 1, b: "two", c: [3, 4])
        #expect(try roundTrip(value) == value)
        let manual = Manual(name: "m", tags: ["t1", "t2", "t3"], origin: Point(x: 7, y: 8))
        #expect(try roundTrip(manual) == manual)
    }

    @Test func emptyContainersAndSilentValues() throws {
        #expect(try roundTrip([Int]()) == [])
        #expect(try roundTrip([Point]()) == [])
        #expect(try roundTrip([String: Int]()) == [:])
        #expect(try roundTrip([[Int]](repeating: [], count: 3)) == [[], [], []])
        #expect(try roundTrip(Silent()) == Silent())
        #expect(try roundTrip([Silent(), Silent()]) == [Silent(), Silent()])
        #expect(try roundTrip(Optional(Silent())) == Optional(Silent()))
    }

    @Test func foundationTypes() throws {
        let value = WithFoundation(
            date: Date(timeIntervalSinceReferenceDate: 123_456.789),
            url: URL(string: "https://example.com/a/b?c=d")!,
            id: UUID(),
            data: Data([0, 1, 2, 255]))
        #expect(try roundTrip(value) == value)
    }

    @Test("Data encodes as one byte run: compact, and read back byte by byte")
    func dataAsByteRun() throws {
        var rng = SplitMix64(state: 3)
        let bytes = Data((0..<(1 << 20)).map { _ in UInt8.random(in: .min ... .max, using: &rng) })
        let encoded = try BinaryEncoder().encode(bytes)
        #expect(encoded.count <= bytes.count + 16)
        #expect(try BinaryDecoder().decode(Data.self, from: encoded) == bytes)
        #expect(try roundTrip(Data()) == Data())
        #expect(try roundTrip([Data([1, 2]), Data(), Data([3])]) == [Data([1, 2]), Data(), Data([3])])
        // A run reads as UInt8 elements only.
        #expect(try BinaryDecoder().decode([UInt8].self, from: BinaryEncoder().encode(Data([4, 5, 6]))) == [4, 5, 6])
        #expect(throws: DecodingError.self) { try BinaryDecoder().decode([Int8].self, from: encoded) }
        #expect(try roundTrip(RunsAndValues()) == RunsAndValues())
    }

    /// The decoder parses a run's header at its first byte and keeps it
    /// while the run lasts: a read of another type part way through, or a
    /// nil check, must still see that it is inside the run.
    @Test("a byte run read part way: another type fails, nil is false, the rest reads on")
    func byteRunPartWay() throws {
        struct PartWay: Decodable {
            var read: [UInt8] = []
            init(from decoder: any Decoder) throws {
                var container = try decoder.unkeyedContainer()
                read.append(try container.decode(UInt8.self))
                #expect(try container.decodeNil() == false)
                #expect(throws: DecodingError.self) { _ = try container.decode(Int.self) }
                #expect(throws: DecodingError.self) { _ = try container.decode(String.self) }
                read.append(try container.decode(UInt8.self))
                read.append(try container.decode(UInt8.self))
                #expect(container.isAtEnd)
                #expect(throws: DecodingError.self) { _ = try container.decode(UInt8.self) }
            }
        }
        #expect(try BinaryDecoder().decode(PartWay.self, from: BinaryEncoder().encode(Data([7, 8, 9]))).read == [7, 8, 9])
    }

    @Test func bulkFastPaths() throws {
        var rng = SplitMix64(state: 1)
        let bytes = (0..<(8 << 20)).map { _ in UInt8.random(in: .min ... .max, using: &rng) }
        let encodedBytes = try BinaryEncoder().encode(bytes)
        #expect(encodedBytes.count <= bytes.count + 12)
        #expect(try BinaryDecoder().decode([UInt8].self, from: encodedBytes) == bytes)

        let doubles = (0..<1_000_000).map { _ in Double.random(in: -1e9...1e9, using: &rng) }
        let encodedDoubles = try BinaryEncoder().encode(doubles)
        #expect(encodedDoubles.count <= doubles.count * 8 + 12)
        #expect(try BinaryDecoder().decode([Double].self, from: encodedDoubles) == doubles)

        let ints = (0..<1000).map { _ in Int.random(in: .min ... .max, using: &rng) }
        #expect(try roundTrip(ints) == ints)
        #expect(try roundTrip(ints.map { Int32(truncatingIfNeeded: $0) }) == ints.map { Int32(truncatingIfNeeded: $0) })
        #expect(try roundTrip(ints.map { Int64($0) }) == ints.map { Int64($0) })
        #expect(try roundTrip(ints.map { UInt32(truncatingIfNeeded: $0) }) == ints.map { UInt32(truncatingIfNeeded: $0) })
        #expect(try roundTrip(ints.map { UInt64(bitPattern: Int64($0)) }) == ints.map { UInt64(bitPattern: Int64($0)) })
        let floats: [Float] = ints.map { Float($0 % 1000) / 8 }
        #expect(try roundTrip(floats) == floats)
        #expect(try roundTrip(Data(bytes.prefix(1000))) == Data(bytes.prefix(1000)))
    }

    @Test func fastPathsInsideContainersAndSlices() throws {
        let value = Small(id: 1, name: "n", score: 2, values: [1, 2, 3, 4])
        #expect(try roundTrip([value, value]) == [value, value])
        #expect(try roundTrip(["k": [1.5, 2.5]]) == ["k": [1.5, 2.5]])
        let encoded = try BinaryEncoder().encode(value)
        let framed = [0xEE] + encoded + [0xEE]
        #expect(try BinaryDecoder().decode(Small.self, from: framed[1..<(framed.count - 1)]) == value)
    }

    @Test func encodeIntoAppendsAndRestoresOnError() throws {
        var writer = ByteWriter()
        writer.write(UInt32(0xDEAD_BEEF))
        try BinaryEncoder().encode("payload", into: &writer)
        #expect(Array(writer.bytes.prefix(4)) == [0xEF, 0xBE, 0xAD, 0xDE])
        #expect(try BinaryDecoder().decode(String.self, from: writer.bytes[4...]) == "payload")

        let before = writer.bytes
        #expect(throws: EncodingError.self) { try BinaryEncoder().encode(Chain.depth(2_000), into: &writer) }
        #expect(writer.bytes == before)
    }

    @Test func typeMismatchesThrow() throws {
        let encoded = try BinaryEncoder().encode(Point(x: 1, y: 2))
        #expect(throws: DecodingError.self) { try BinaryDecoder().decode([Int].self, from: encoded) }
        #expect(throws: DecodingError.self) { try BinaryDecoder().decode(String.self, from: encoded) }
        #expect(throws: DecodingError.self) { try BinaryDecoder().decode(Small.self, from: encoded) }
        // Integers convert between widths only when the value fits.
        #expect(try BinaryDecoder().decode(Int8.self, from: BinaryEncoder().encode(100)) == 100)
        #expect(throws: DecodingError.self) { try BinaryDecoder().decode(Int8.self, from: BinaryEncoder().encode(1000)) }
        #expect(throws: DecodingError.self) { try BinaryDecoder().decode(UInt.self, from: BinaryEncoder().encode(-1)) }
        // Trailing bytes are an error.
        #expect(throws: DecodingError.self) { try BinaryDecoder().decode(Int.self, from: BinaryEncoder().encode(1) + [0]) }
        #expect(throws: DecodingError.self) { try BinaryDecoder().decode(Int.self, from: [UInt8]()) }
    }

    @Test func everyTruncationThrows() throws {
        let encoded = try BinaryEncoder().encode(Everything())
        for length in 0..<encoded.count {
            #expect(throws: (any Error).self) { try BinaryDecoder().decode(Everything.self, from: encoded[0..<length]) }
        }
        let shapes = try BinaryEncoder().encode([Shape.labelled("x", Point(x: 1, y: 2)), .empty])
        for length in 0..<shapes.count {
            #expect(throws: (any Error).self) { try BinaryDecoder().decode([Shape].self, from: shapes[0..<length]) }
        }
    }

    @Test func lyingLengthsThrowWithoutAllocating() throws {
        // Tag + a varint for 2^63 - 1 elements, then nothing.
        let huge: [UInt8] = [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]
        for tag: UInt8 in 0x11...0x1A {
            #expect(throws: (any Error).self) { try BinaryDecoder().decode([UInt8].self, from: [tag] + huge) }
            #expect(throws: (any Error).self) { try BinaryDecoder().decode([Double].self, from: [tag] + huge) }
            #expect(throws: (any Error).self) { try BinaryDecoder().decode(String.self, from: [tag] + huge) }
            #expect(throws: (any Error).self) { try BinaryDecoder().decode([Point].self, from: [tag] + huge) }
        }
        // A count that fits the remaining bytes only as bytes, not as 8-byte elements.
        #expect(throws: (any Error).self) { try BinaryDecoder().decode([Double].self, from: [0x19, 16] + [UInt8](repeating: 0, count: 16)) }
        // Varint overflow and over-long varints.
        #expect(throws: (any Error).self) { try BinaryDecoder().decode(String.self, from: [0x11] + [UInt8](repeating: 0xFF, count: 11)) }
        // A container length beyond the input.
        #expect(throws: (any Error).self) { try BinaryDecoder().decode([Int].self, from: [0x14, 0xFF, 0xFF, 0xFF, 0x7F, 0x08]) }
        // Invalid UTF-8.
        #expect(throws: DecodingError.self) { try BinaryDecoder().decode(String.self, from: [0x11, 2, 0xC3, 0x28]) }
    }

    @Test func depthIsCapped() throws {
        let limit = BinaryCodingLimits.maxDepth
        // Within the cap: fine both ways.
        let shallow = Chain.depth(limit / 4)
        let decoded = try roundTrip(shallow)
        var depth = 0
        var node: Chain? = decoded
        while let next = node?.next { depth += 1; node = next }
        #expect(depth == limit / 4)
        // Beyond the cap: the encoder refuses.
        #expect(throws: EncodingError.self) { try BinaryEncoder().encode(Chain.depth(limit * 2)) }
        // A hand-made bomb: unkeyed containers nested far beyond the cap.
        var bomb: [UInt8] = []
        let levels = 100_000
        for level in 0..<levels {
            let inner = UInt32(5 * (levels - level - 1))
            bomb.append(0x14)
            withUnsafeBytes(of: inner.littleEndian) { bomb.append(contentsOf: $0) }
        }
        #expect(throws: DecodingError.self) { try BinaryDecoder().decode(Nested.self, from: bomb) }
        // A chain of `some` prefixes is skipped without recursion.
        let somes = [UInt8](repeating: 0x04, count: 1_000_000) + [0x00]
        #expect(throws: (any Error).self) { try BinaryDecoder().decode(Small.self, from: somes) }
    }

    @Test(arguments: [1, 2, 3, 4])
    func randomGarbageNeverCrashes(seed: UInt64) throws {
        var rng = SplitMix64(state: seed)
        let valid = [
            try BinaryEncoder().encode(Everything()),
            try BinaryEncoder().encode([Shape.labelled("x", Point(x: 1, y: 2)), .circle(radius: 1)]),
            try BinaryEncoder().encode(Node(1, [Node(2, [Node(3)])])),
        ]
        for round in 0..<3000 {
            var input: [UInt8]
            if round % 2 == 0 {
                // Pure noise, biased toward valid tags.
                let count = Int.random(in: 0...64, using: &rng)
                input = (0..<count).map { _ in
                    Bool.random(using: &rng) ? UInt8.random(in: 0...0x1B, using: &rng) : UInt8.random(in: 0...255, using: &rng)
                }
            } else {
                // A valid encoding with a few bytes flipped.
                input = valid[Int.random(in: 0..<valid.count, using: &rng)]
                for _ in 0..<Int.random(in: 1...4, using: &rng) {
                    input[Int.random(in: 0..<input.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
                }
            }
            _ = try? BinaryDecoder().decode(Everything.self, from: input)
            _ = try? BinaryDecoder().decode([Shape].self, from: input)
            _ = try? BinaryDecoder().decode(Node.self, from: input)
            _ = try? BinaryDecoder().decode([String: [Int?]].self, from: input)
            _ = try? BinaryDecoder().decode(Int??.self, from: input)
            _ = try? BinaryDecoder().decode(Manual.self, from: input)
        }
    }
}

/// Decodes arbitrarily nested unkeyed containers (for the depth bomb).
private struct Nested: Decodable {
    init(from decoder: any Decoder) throws {
        var container = try decoder.unkeyedContainer()
        while !container.isAtEnd { _ = try container.decode(Nested.self) }
    }
}
