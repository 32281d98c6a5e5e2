// Fuzz target: FrameSplitter fed in reads of random sizes, with or without the
// preamble, with attachments; each frame's body goes through the message
// parser of its kind.
//
// Input: byte 0 = mode (bit 0: expect the preamble; bits 1-7 seed the read
// sizes; bit 7 also asks for recycle/shrink calls), byte 1 = largest read
// size / 4 + 1, then the stream.
import ProcessPoolCore

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzFrames(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    var input = FuzzInput(data, size)
    let mode = input.byte()
    let maxRead = Int(input.byte()) * 4 + 1
    let stream = input.rest()
    runSplitter(stream: stream, expectPreamble: mode & 1 != 0, seed: UInt32(mode >> 1) &+ 1,
                maxRead: maxRead, churn: mode & 0x80 != 0)
    return 0
}

func runSplitter(stream: [UInt8], expectPreamble: Bool, seed: UInt32, maxRead: Int, churn: Bool) {
    let splitter = FrameSplitter(expectPreamble: expectPreamble, initialCapacity: 64)
    var offset = 0
    var rng = seed
    func nextRead() -> Int {
        rng = rng &* 1_103_515_245 &+ 12345
        return Int((rng >> 8) % UInt32(maxRead)) + 1
    }
    var frames = 0
    while true {
        let got = splitter.fill { buffer in
            let n = min(buffer.count, nextRead(), stream.count - offset)
            guard n > 0 else { return 0 }
            stream.withUnsafeBytes { src in
                buffer.baseAddress!.copyMemory(from: src.baseAddress! + offset, byteCount: n)
            }
            offset += n
            return n
        }
        if got <= 0 { break }
        do {
            while try splitter.nextFrame({ kind, body, attachments in
                frames += 1
                parseFrame(kind, body, attachments)
                if churn, let largest = attachments.max(by: { $0.count < $1.count }) { splitter.recycle(largest) }
            }) {}
        } catch {
            splitter.discard()
            return
        }
        if churn { splitter.shrinkIfIdle() }
    }
}

/// Parses a frame's fixed part with the message type of its kind (the same
/// parsers the parent and the worker use).
func parseFrame(_ kind: FrameKind, _ body: UnsafeRawBufferPointer, _ attachments: [[UInt8]]) {
    var reader = ByteReader(body)
    do {
        switch kind {
        case .configure: _ = try ConfigureMessage(from: &reader)
        case .run: _ = try RunHeader(from: &reader)
        case .exit: break
        case .hello: _ = try HelloMessage(from: &reader)
        case .ready: _ = try ReadyHeader(from: &reader)
        case .results: _ = try ResultsHeader(from: &reader)
        case .goodbye: _ = try GoodbyeMessage(from: &reader)
        case .attachments: _ = try AttachmentsAnnouncement(from: &reader)
        }
    } catch {}
}
