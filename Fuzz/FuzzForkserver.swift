// Fuzz target: what the forkserver side reads from a peer. The request is
// read inside ForkServerLoop.readRequest, which is not separable from the
// poll loop (accept, SO_PEERCRED, SCM_RIGHTS, fork), so this fuzzes the
// pure pieces it and the client use: ForkServerProtocol.decodeStatus (the
// exit status the client reads), readLittleEndian (the reply's pid),
// constantTimeEqual (the key check) and the request checks as
// readRequest applies them to bytes arriving in pieces.
//
// Input: byte 0 = read-size seed, then the bytes a peer sends.
import ProcessPoolCore

let fuzzKey: [UInt8] = (0..<UInt8(ForkServerProtocol.keyLength)).map { $0 &* 37 &+ 11 }

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzForkserver(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    var input = FuzzInput(data, size)
    let seed = input.byte()
    let bytes = input.rest()

    // The client: status bytes and a reply pid.
    if let exit = ForkServerProtocol.decodeStatus(bytes) {
        let again = ForkServerProtocol.encode(exit)
        precondition(ForkServerProtocol.decodeStatus(again).map { "\($0)" } == "\(exit)", "status round trip")
    }
    _ = Int32(bitPattern: ForkServerProtocol.readLittleEndian(bytes[...]))
    if bytes.count >= 4 { _ = ForkServerProtocol.readLittleEndian(bytes[(bytes.count - 4)...]) }

    // The server: a request arriving in pieces, checked as readRequest does.
    var received: [UInt8] = []
    var offset = 0
    var rng = UInt32(seed) &+ 1
    while offset < bytes.count {
        rng = rng &* 1_103_515_245 &+ 12345
        let want = ForkServerProtocol.requestLength - received.count
        let n = min(want, Int((rng >> 8) % 40) + 1, bytes.count - offset)
        received += bytes[offset..<(offset + n)]
        offset += n
        guard received.count == ForkServerProtocol.requestLength else { continue }
        if ForkServerProtocol.constantTimeEqual(received.prefix(ForkServerProtocol.keyLength), fuzzKey) {
            _ = received[ForkServerProtocol.keyLength] == ForkServerProtocol.forkWorker
        }
        received = []
    }
    _ = ForkServerProtocol.constantTimeEqual(bytes[...], fuzzKey)
    return 0
}
