// Fuzz target: the parent's handling of a worker's stream. IOLoop.handleFrame
// is private and needs a live PoolCore, so this runs the same steps on the
// same pieces: FrameSplitter(expectPreamble: true), then per frame
// HelloMessage / ReadyHeader + readOutcome / ResultsHeader + the sink's
// complete(outcomes:header:context:) / GoodbyeMessage, with IOLoop's
// ordering checks, and attachments passed in the OutcomeContext.
//
// Input: byte 0 = read-size seed, byte 1 = which sinks are in flight
// (the item ids 1, 2, 3, ... get sinks of kinds picked from it), then the stream.
@testable import ProcessPoolCore  // OutcomeContext.init is internal (the core is built with -enable-testing)

/// One in-flight item: its id and its sink.
struct InFlight {
    let id: UInt64
    let sink: any WorkSink
}

func makeSink(kind: Int, expected: Int) -> any WorkSink {
    switch kind % 10 {
    case 0: return TaskFuture<Int>()  // Square: blocks
    case 1: return TaskFuture<[UInt8]>()  // Echo
    case 2: return TaskFuture<[String: Double]>()  // Describe
    case 3: return ChunkSink<Int>(expected: expected)
    case 4: return ChunkSink<[UInt8]>(expected: expected)
    case 5: return ChunkSink<[Double]>(expected: expected)
    case 6: return TaskFuture<Shape>()
    case 7: return ChunkSink<Record>(expected: expected)
    case 8: return TaskFuture<Double>()
    default: return ChunkSink<Bool>(expected: expected)
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzParent(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    var input = FuzzInput(data, size)
    let seed = input.byte()
    let sinkPlan = input.byte()
    let stream = input.rest()
    let splitter = FrameSplitter(expectPreamble: true, initialCapacity: 64)
    var offset = 0
    var rng = UInt32(seed) &+ 7
    var state = ParentState(plan: sinkPlan)
    while true {
        let got = splitter.fill { buffer in
            rng = rng &* 1_103_515_245 &+ 12345
            let n = min(buffer.count, Int((rng >> 8) % 300) + 1, stream.count - offset)
            guard n > 0 else { return 0 }
            stream.withUnsafeBytes { buffer.baseAddress!.copyMemory(from: $0.baseAddress! + offset, byteCount: n) }
            offset += n
            return n
        }
        if got <= 0 { break }
        do {
            while try splitter.nextFrame({ kind, body, attachments in
                try state.handle(kind, body, attachments)
            }) {}
        } catch {
            if fuzzVerbose { print("parent: stream refused: \(error)") }
            splitter.discard()
            state.failAll()
            return 0
        }
        splitter.shrinkIfIdle()
    }
    if fuzzVerbose { print("parent: stream ended; \(state.inFlight.count) items in flight, goodbye: \(state.saidGoodbye)") }
    state.failAll()
    return 0
}

/// A connection with no process behind it (the slot only sizes its window here).
final class NoConnection: WorkerConnection, @unchecked Sendable {
    var streamDescriptor: Int32 { -1 }
    var exitDescriptor: Int32 { -1 }
    var label: String { "pid 1 (fuzz)" }
    func collectExit() -> WorkerExit? { nil }
    func terminate() {}
    func kill() {}
    func close() {}
}

/// What IOLoop keeps per worker slot, reduced to what frame handling checks;
/// the run times go through a real WorkerSlot (its window arithmetic is fed
/// by the peer's numbers).
struct ParentState {
    let slot = WorkerSlot(connection: NoConnection(), tasksLeft: nil, helloDeadline: 0)
    var saidHello = false
    var ready = false
    var saidGoodbye = false
    var inFlight: [InFlight] = []
    var nextID: UInt64 = 1
    let plan: UInt8

    init(plan: UInt8) {
        self.plan = plan
        // Items 1...4 in flight (ids as a pool would assign them).
        for i in 0..<4 { addItem(kind: Int(plan >> UInt8(2 * i)) & 3 + i * 2, expected: i + 1) }
    }

    mutating func addItem(kind: Int, expected: Int) {
        inFlight.append(InFlight(id: nextID, sink: makeSink(kind: kind, expected: expected)))
        nextID += 1
    }

    mutating func handle(_ kind: FrameKind, _ body: UnsafeRawBufferPointer, _ attachments: [[UInt8]]) throws {
        var reader = ByteReader(body)
        let context = OutcomeContext(registry: fuzzRegistry, worker: "pid 1 (fuzz)", attachments: attachments)
        switch kind {
        case .results:
            let header = try ResultsHeader(from: &reader)
            guard let head = inFlight.first else {
                throw ProtocolViolation("results for item \(header.itemID), which this worker does not hold")
            }
            guard head.id == header.itemID else {
                throw ProtocolViolation("results for item \(header.itemID), expected \(head.id)")
            }
            inFlight.removeFirst()
            slot.recordRunTime(nanos: header.runNanos)
            precondition((1...64).contains(slot.window), "window \(slot.window)")
            // Keep work in flight: the next item's sink kind and size come from the header.
            addItem(kind: Int(header.itemID &+ UInt64(plan)) % 10, expected: header.count)
            _ = head.sink.markRunning()
            do {
                try head.sink.complete(outcomes: &reader, header: header, context: context)
            } catch {
                head.sink.fail(ProtocolViolation("malformed results: \(error)"))
                throw error
            }
            if let chunk = head.sink as? ChunkSink<Int> { _ = chunk.takeOutcomes() }
            if let chunk = head.sink as? ChunkSink<[UInt8]> { _ = chunk.takeOutcomes() }
            if let chunk = head.sink as? ChunkSink<Record> { _ = chunk.takeOutcomes() }
        case .hello:
            _ = try HelloMessage(from: &reader)
            guard !saidHello else { throw ProtocolViolation("a second hello") }
            saidHello = true
        case .ready:
            let header = try ReadyHeader(from: &reader)
            if !header.ok {
                switch try readOutcome(Never?.self, from: &reader, context: context) {
                case .failure(let error): _ = String(describing: error)
                case .success: break
                }
            }
            guard saidHello, !ready else { throw ProtocolViolation("ready before hello, or twice") }
            ready = true
        case .goodbye:
            _ = try GoodbyeMessage(from: &reader)
            saidGoodbye = true
        case .configure, .run, .exit, .attachments:
            throw ProtocolViolation("unexpected frame \(kind) from a worker")
        }
    }

    func failAll() {
        for item in inFlight { item.sink.fail(ProtocolViolation("fuzz input ended")) }
    }
}
