// Fuzz target: BinaryDecoder over a set of shapes (see decodeShape in
// Shared/FuzzSupport.swift).
//
// Input: byte 0 = shape, byte 1 = attachments (low 2 bits: how many, each
// of (byte 1 >> 2) bytes), then the encoded value.
import ProcessPoolCore

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzDecoder(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    var input = FuzzInput(data, size)
    let shape = Int(input.byte())
    let spec = input.byte()
    let attachments = (0..<Int(spec & 3)).map { i in [UInt8](repeating: UInt8(i), count: Int(spec >> 2) * (i + 1)) }
    _ = decodeShape(shape, input.rest(), attachments: attachments)
    return 0
}
