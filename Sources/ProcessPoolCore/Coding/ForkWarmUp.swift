/// Builds the coder's lazy tables (fast-path type identities, metadata of
/// the common array types) in this process: a forked child then finds them
/// built and needs no lock to build them.
package func warmCoderForFork() {
    struct Probe: Codable {
        var bytes: [UInt8]; var ints: [Int]; var doubles: [Double]; var text: String
        var int64s: [Int64]; var int32s: [Int32]; var uint64s: [UInt64]; var uint32s: [UInt32]; var floats: [Float]
        var flag: Bool; var number: Int; var real: Double; var optional: Int?
    }
    let probe = Probe(bytes: [1], ints: [2], doubles: [3], text: "x", int64s: [4], int32s: [5], uint64s: [6],
                      uint32s: [7], floats: [8], flag: true, number: 9, real: 10, optional: nil)
    if let bytes = try? BinaryEncoder().encode(probe) { _ = try? BinaryDecoder().decode(Probe.self, from: bytes) }
}
