import Synchronization

/// Where a work item's outcomes go: a single task's future, or a map chunk.
package protocol WorkSink: AnyObject, Sendable {
    /// Pending → running; false if cancelled (the item is then dropped).
    func markRunning() -> Bool
    /// Reads this item's outcomes (`header` gives their count, already
    /// checked against the frame's size, and their layout); throws only when
    /// the frame itself is malformed (which breaks the pool).
    func complete(outcomes: inout ByteReader, header: ResultsHeader, context: OutcomeContext) throws
    /// Fails the item (a broken pool).
    func fail(_ error: any Error)
    /// Cancels the item if it is still pending.
    @discardableResult func cancel() -> Bool
    /// Ends the item as cancelled although it was running (its worker was
    /// stopped to interrupt it): `CancellationError` for its consumer.
    func interrupted()
    /// Whether the consumer gave up on it.
    var isCancelled: Bool { get }
    /// Whether it was sent to a worker once (it may be queued again since,
    /// after its worker died or was stopped): no longer cancellable.
    var isRunning: Bool { get }
}

/// What the parent needs to turn an outcome into a Swift value or error.
package struct OutcomeContext {
    package let registry: TaskRegistry
    package let worker: String
    /// The attachments that came with the results frame.
    package var attachments: [[UInt8]] = []
}

/// One message's worth of work: an encoded `run` frame, the byte arrays sent
/// beside it, and where its results go.
///
/// The frame and attachments are kept until the results arrive: a worker
/// that dies or is interrupted may leave the item to be sent again.
package struct WorkItem: Sendable {
    package let id: UInt64
    package var frame: [UInt8]
    package var attachments: [[UInt8]]
    package let sink: any WorkSink
    /// The task type's registered name (for errors).
    package var taskName: String = ""
    /// How long a worker may run the item, from when it takes it (ns); nil: no limit.
    package var timeLimit: UInt64?
    /// The limit as the caller gave it (per task), for the error.
    package var timeLimitPerTask: Duration?
    /// Earlier attempts that ended with a dead worker (FailurePolicy.retry).
    package var attempts: [WorkerLost.Attempt] = []
    /// Sent only to a worker holding nothing else: it was on a worker that
    /// died holding several items, so which one it ran is not known (results
    /// a worker has made but not yet sent die with it). Alone, a death is
    /// its own.
    package var isolated = false

    package init(id: UInt64, frame: [UInt8], attachments: [[UInt8]], sink: any WorkSink) {
        self.id = id
        self.frame = frame
        self.attachments = attachments
        self.sink = sink
    }
}

/// Reads one outcome written by a worker's runner.
package func readOutcome<T: Decodable>(_: T.Type, from reader: inout ByteReader,
                                       context: OutcomeContext) throws -> Result<T, any Error> {
    let tagByte = try reader.readByte()
    guard let tag = OutcomeTag(rawValue: tagByte) else {
        throw ProtocolViolation("unknown outcome tag \(tagByte)")
    }
    switch tag {
    case .success:
        let payload = try reader.readPayload()
        do {
            return .success(try BinaryDecoder(attachments: context.attachments).decode(T.self, from: payload))
        } catch {
            return .failure(RemoteTaskError(
                typeName: String(reflecting: type(of: error)),
                message: "the parent could not decode the result as \(T.self): \(error)",
                worker: context.worker))
        }
    case .registeredError:
        let name = try reader.readString()
        let payloadLength = try reader.readLength()
        let payload = try reader.readRaw(payloadLength)
        if let decode = context.registry.errorDecoders[name], let error = try? decode(payload) {
            return .failure(error)
        }
        return .failure(RemoteTaskError(typeName: name, message: "(an error the parent could not decode)",
                                        worker: context.worker))
    case .remoteError:
        let typeName = try reader.readString()
        let message = try reader.readString()
        return .failure(RemoteTaskError(typeName: typeName, message: message, worker: context.worker))
    }
}

extension TaskFuture: WorkSink where Output: Decodable {
    package func complete(outcomes: inout ByteReader, header: ResultsHeader, context: OutcomeContext) throws {
        guard header.count == 1 else { throw ProtocolViolation("\(header.count) outcomes for a single task") }
        switch header.layout {
        case .block:
            finish(.success(try readResultBlock(Output.self, count: 1, from: &outcomes)[0]))
        case .separate:
            finish(try readOutcome(Output.self, from: &outcomes, context: context))
        }
    }

    package func fail(_ error: any Error) { finish(.failure(error)) }
    package func interrupted() { cancelRunning() }
}

/// Reads the layout byte in front of a frame's values.
package func readLayout(from reader: inout ByteReader) throws -> ValueLayout {
    let byte = try reader.readByte()
    guard let layout = ValueLayout(rawValue: byte) else { throw ProtocolViolation("unknown value layout \(byte)") }
    return layout
}

/// Reads a block of `count` results, refusing one for a type that is not
/// `BitwiseCodable` in this process.
private func readResultBlock<Output>(_: Output.Type, count: Int, from reader: inout ByteReader) throws -> [Output] {
    guard BitwiseTypes.isBitwise(Output.self) else {
        throw ProtocolViolation("a block of results for \(Output.self), which is not BitwiseCodable here")
    }
    return try BitwiseTypes.readBlock(Output.self, count: count, from: &reader)
}

/// The outcomes of one map chunk.
package enum ChunkOutcomes<Output: Sendable>: Sendable {
    /// Every call succeeded (outputs that came as a block).
    case values([Output])
    /// Each item's outcome on its own.
    case outcomes([Result<Output, any Error>])

    var count: Int {
        switch self {
        case .values(let values): values.count
        case .outcomes(let outcomes): outcomes.count
        }
    }
}

/// A map chunk: decodes each outcome separately so one failing item does not
/// take its neighbours' results with it.
///
/// The outcomes wait in a slot of their own that the consumer empties
/// (`takeOutcomes`), not in the future: whoever still holds the sink for a
/// moment (the I/O thread that completed it) holds no output the consumer
/// was given.
package final class ChunkSink<Output: Decodable & Sendable>: WorkSink {
    /// Done when the outcomes are in (its value is the empty placeholder),
    /// or failed or cancelled.
    package let future = TaskFuture<ChunkOutcomes<Output>>()
    let expected: Int
    private let slot = Mutex<ChunkOutcomes<Output>?>(nil)

    package init(expected: Int) { self.expected = expected }

    /// The outcomes, once: the sink keeps none of them afterwards.
    package func takeOutcomes() -> ChunkOutcomes<Output> {
        slot.guarded { slot in
            defer { slot = nil }
            return slot ?? .values([])
        }
    }

    /// Moves the outcomes into the slot (keeping no copy here: the waiting
    /// consumer may run through them before this thread returns), then
    /// completes the future.
    private func deliver(_ outcomes: consuming ChunkOutcomes<Output>) {
        var moved: ChunkOutcomes<Output>? = consume outcomes
        slot.guarded { swap(&$0, &moved) }
        moved = nil
        future.finish(.success(.values([])))
    }

    package func markRunning() -> Bool { future.markRunning() }
    package var isCancelled: Bool { future.isCancelled }
    package var isRunning: Bool { future.isRunning }
    package func fail(_ error: any Error) { future.finish(.failure(error)) }
    @discardableResult package func cancel() -> Bool { future.cancel() }
    package func interrupted() { future.cancelRunning() }

    package func complete(outcomes: inout ByteReader, header: ResultsHeader, context: OutcomeContext) throws {
        let count = header.count
        guard count == expected else {
            throw ProtocolViolation("\(count) outcomes for a chunk of \(expected)")
        }
        switch header.layout {
        case .block:
            let values = try readResultBlock(Output.self, count: count, from: &outcomes)
            deliver(.values(consume values))
        case .separate:
            var results: [Result<Output, any Error>] = []
            results.reserveCapacity(count)
            for _ in 0..<count { results.append(try readOutcome(Output.self, from: &outcomes, context: context)) }
            deliver(.outcomes(consume results))
        }
    }
}
