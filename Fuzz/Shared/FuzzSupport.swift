// Shared by every fuzz target and by Scripts/make-seeds.swift: the tasks a
// fuzzed worker or parent knows, the shapes the decoder is fuzzed with, and a
// small reader that turns fuzz input into choices.
import Glibc
import ProcessPoolCore

/// FUZZ_VERBOSE=1: targets say why an input was refused (for checking seeds).
let fuzzVerbose = getenv("FUZZ_VERBOSE") != nil

// MARK: Input

/// Consumes fuzz input from the front (choices) while the rest stays a byte run.
struct FuzzInput {
    var bytes: [UInt8]
    var index = 0

    init(_ data: UnsafePointer<UInt8>?, _ size: Int) {
        bytes = size > 0 && data != nil ? Array(UnsafeBufferPointer(start: data, count: size)) : []
    }

    var isAtEnd: Bool { index >= bytes.count }

    mutating func byte() -> UInt8 {
        guard index < bytes.count else { return 0 }
        defer { index += 1 }
        return bytes[index]
    }

    /// The rest of the input.
    mutating func rest() -> [UInt8] {
        defer { index = bytes.count }
        return index < bytes.count ? Array(bytes[index...]) : []
    }
}

// MARK: Tasks and errors

struct FuzzError: Error, Codable, Equatable {
    var code: Int
    var message: String
}

/// A BitwiseCodable task with a BitwiseCodable output: travels as blocks.
struct Square: ProcessTask, BitwiseCodable {
    var x: Int
    func run() -> Int { x &* x }
}

/// Byte runs both ways (large ones travel as attachments).
struct Echo: ProcessTask {
    var bytes: [UInt8]
    var label: String?
    func run() -> [UInt8] { bytes }
}

/// Throws a registered error, or an unregistered one.
struct Fail: ProcessTask {
    var code: Int
    var registered: Bool
    struct Unregistered: Error { var code: Int }
    func run() throws -> Int {
        if registered { throw FuzzError(code: code, message: "failed \(code)") }
        throw Unregistered(code: code)
    }
}

/// A rich value in, a summary out.
struct Describe: ProcessTask {
    var shape: Shape
    func run() -> [String: Double] { ["depth": Double(shape.depth)] }
}

/// Doubles in, doubles out.
struct Scale: ProcessTask {
    var values: [Double]
    var factor: Double
    func run() -> [Double] { values.map { $0 * factor } }
}

let fuzzRegistry = TaskRegistry(tasks: [Square.self, Echo.self, Fail.self, Describe.self, Scale.self],
                                errors: [FuzzError.self])

// MARK: Shapes for the decoder

/// A recursive enum with `[String: Self]` and `[Self]`.
indirect enum Shape: Codable, Equatable, Sendable {
    case leaf(Int)
    case text(String)
    case list([Shape])
    case map([String: Shape])
    case pair(Shape, Shape?)
    case nothing

    var depth: Int {
        switch self {
        case .leaf, .text, .nothing: return 1
        case .list(let items): return 1 + (items.map(\.depth).max() ?? 0)
        case .map(let items): return 1 + (items.values.map(\.depth).max() ?? 0)
        case .pair(let a, let b): return 1 + max(a.depth, b?.depth ?? 0)
        }
    }
}

/// Optionals, sets, integer-keyed dictionaries, byte runs, numbers.
struct Record: Codable, Equatable, Sendable {
    var id: Int64
    var name: String?
    var tags: Set<String>
    var scores: [Int: Double]
    var blob: [UInt8]
    var samples: [Double]
    var flags: [Bool?]
    var nested: [[Int16]]
    var small: UInt8
    var ratio: Float?
}

class Base: Codable {
    var id: Int
    var label: String
    init(id: Int, label: String) { self.id = id; self.label = label }
    enum CodingKeys: String, CodingKey { case id, label }
}

/// A class that encodes its superclass through `superEncoder`/`superDecoder`.
final class Derived: Base, @unchecked Sendable {
    var extra: [String]
    var weight: Double?
    init(id: Int, label: String, extra: [String], weight: Double?) {
        self.extra = extra
        self.weight = weight
        super.init(id: id, label: label)
    }
    enum DerivedKeys: String, CodingKey { case extra, weight, base }
    required init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: DerivedKeys.self)
        extra = try c.decode([String].self, forKey: .extra)
        weight = try c.decodeIfPresent(Double.self, forKey: .weight)
        try super.init(from: c.superDecoder(forKey: .base))
    }
    override func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: DerivedKeys.self)
        try c.encode(extra, forKey: .extra)
        try c.encodeIfPresent(weight, forKey: .weight)
        try super.encode(to: c.superEncoder(forKey: .base))
    }
}

/// Walks nested containers by hand, and lists keys and counts.
struct HandWalked: Codable, Equatable, Sendable {
    var matrix: [[Int]]
    var header: [String: String]
    var trailer: Int?

    enum Keys: String, CodingKey { case matrix, header, trailer }
    struct AnyKey: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { return nil }
    }

    init(matrix: [[Int]], header: [String: String], trailer: Int?) {
        self.matrix = matrix
        self.header = header
        self.trailer = trailer
    }

    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: Keys.self)
        var rows = try c.nestedUnkeyedContainer(forKey: .matrix)
        var matrix: [[Int]] = []
        if let n = rows.count { matrix.reserveCapacity(min(n, 1024)) }
        while !rows.isAtEnd {
            var row = try rows.nestedUnkeyedContainer()
            var values: [Int] = []
            while !row.isAtEnd { values.append(try row.decode(Int.self)) }
            matrix.append(values)
        }
        self.matrix = matrix
        let h = try c.nestedContainer(keyedBy: AnyKey.self, forKey: .header)
        var header: [String: String] = [:]
        for key in h.allKeys where h.contains(key) { header[key.stringValue] = try h.decode(String.self, forKey: key) }
        self.header = header
        trailer = c.contains(.trailer) ? try c.decodeNil(forKey: .trailer) ? nil : c.decode(Int.self, forKey: .trailer) : nil
    }

    func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: Keys.self)
        var rows = c.nestedUnkeyedContainer(forKey: .matrix)
        for r in matrix {
            var row = rows.nestedUnkeyedContainer()
            for v in r { try row.encode(v) }
        }
        var h = c.nestedContainer(keyedBy: AnyKey.self, forKey: .header)
        for (k, v) in header.sorted(by: { $0.key < $1.key }) { try h.encode(v, forKey: AnyKey(stringValue: k)) }
        if let trailer { try c.encode(trailer, forKey: .trailer) } else { try c.encodeNil(forKey: .trailer) }
    }
}

/// Single-value containers and a nested enum with associated values.
enum Message: Codable, Equatable, Sendable {
    case ping
    case data(bytes: [UInt8], checksum: UInt32)
    case record(Record)
    case shapes([Shape], index: [Int: Shape]?)
}

/// The shapes the decoder target tries, by index (the first input byte picks one).
let decoderShapeCount = 14

/// Decodes `bytes` as shape `index`; returns whether it decoded (never traps).
func decodeShape(_ index: Int, _ bytes: [UInt8], attachments: [[UInt8]]) -> Bool {
    let d = BinaryDecoder(attachments: attachments)
    do {
        switch index % decoderShapeCount {
        case 0: _ = try d.decode(Shape.self, from: bytes)
        case 1: _ = try d.decode(Record.self, from: bytes)
        case 2: _ = try d.decode(Derived.self, from: bytes)
        case 3: _ = try d.decode(HandWalked.self, from: bytes)
        case 4: _ = try d.decode(Message.self, from: bytes)
        case 5: _ = try d.decode([Int: Shape].self, from: bytes)
        case 6: _ = try d.decode(Set<Int64>.self, from: bytes)
        case 7: _ = try d.decode([UInt8].self, from: bytes)
        case 8: _ = try d.decode([Double].self, from: bytes)
        case 9: _ = try d.decode([String: [Int?]].self, from: bytes)
        case 10: _ = try d.decode(Echo.self, from: bytes)
        case 11: _ = try d.decode([[UInt8]].self, from: bytes)
        case 12: _ = try d.decode(String?.self, from: bytes)
        default: _ = try d.decodeMeasuringWork([Shape?].self, from: bytes)
        }
        return true
    } catch {
        if fuzzVerbose { print("decoder: shape \(index % decoderShapeCount): \(error)") }
        return false
    }
}

/// Sample values of every decoder shape (for seeds).
func sampleShapes() -> [(Int, any Encodable)] {
    let shape = Shape.map(["a": .leaf(1), "b": .list([.text("x"), .nothing, .pair(.leaf(-7), nil)]),
                           "c": .pair(.map([:]), .list([]))])
    let record = Record(id: 42, name: "rec", tags: ["x", "yy"], scores: [1: 0.5, -3: 2.25],
                        blob: Array(0..<40), samples: [1, 2.5, -0.0, .infinity], flags: [true, nil, false],
                        nested: [[1, 2], [], [-3]], small: 7, ratio: nil)
    let big = [UInt8](repeating: 0xAB, count: 300 * 1024)  // an attachment
    return [
        (0, shape), (0, Shape.leaf(0)), (0, Shape.list(Array(repeating: .leaf(3), count: 5))),
        (1, record), (1, Record(id: -1, name: nil, tags: [], scores: [:], blob: [], samples: [], flags: [],
                                nested: [], small: 0, ratio: 1.5)),
        (2, Derived(id: 9, label: "derived", extra: ["e1", "e2"], weight: 3.5)),
        (3, HandWalked(matrix: [[1, 2, 3], [4]], header: ["k": "v", "z": ""], trailer: 5)),
        (3, HandWalked(matrix: [], header: [:], trailer: nil)),
        (4, Message.ping), (4, Message.data(bytes: [1, 2, 3], checksum: 0xDEADBEEF)), (4, Message.record(record)),
        (4, Message.shapes([shape, .nothing], index: [0: shape, 5: .leaf(1)])),
        (5, [1: shape, -2: Shape.nothing]), (6, Set<Int64>([1, 2, 3, .max])), (7, [UInt8](0..<100)),
        (7, big), (8, [1.0, 2.0, .nan]), (9, ["a": [1, nil, 3], "": []]),
        (10, Echo(bytes: [9, 8, 7], label: "e")), (10, Echo(bytes: big, label: nil)),
        (11, [[UInt8](), [1], big]), (12, String?.some("hello")), (12, String?.none),
        (13, [Shape?.some(shape), nil]),
    ]
}
