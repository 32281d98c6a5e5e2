/// The consumer's side of a map: submitted chunks in order, the chunk being
/// read, and the input not yet submitted. Used by one consumer at a time.
///
/// Errors keep their place: a chunk that could not be encoded or submitted
/// is queued already failed, so its error surfaces at its position, after
/// every output before it.
///
/// Outputs that hold references (not plain bits) are handed out one at a
/// time and dropped from here as they go, so nothing the consumer was given
/// stays alive because of the map.
@usableFromInline
final class MapState<Output: Codable & Sendable>: @unchecked Sendable {
    let pool: ProcessPoolExecutor
    let deadline: UInt64?
    var nextChunk: (() -> [MapChunk<Output>])?
    var bufferSize: Int?
    var submitted = RingQueue<ChunkSink<Output>>()
    /// Plain-bits outputs of the chunk being read, handed out in batches.
    var values: [Output] = []
    /// Any other chunk's outcomes, last first (handed out by `popLast`).
    var outcomes: [Result<Output, any Error>] = []
    var done = false
    /// Whether outputs hold no references: batches may then be shared.
    let plainBits = _isPOD(Output.self)

    init(pool: ProcessPoolExecutor, deadline: UInt64?, nextChunk: @escaping () -> [MapChunk<Output>]) {
        self.pool = pool
        self.deadline = deadline
        self.nextChunk = nextChunk
    }

    deinit { cancelRest() }

    /// Submits chunks until `limit` are outstanding (nil: the whole input),
    /// a few at a time so that workers start while the rest is encoded.
    ///
    /// A pool that is shut down or broken throws here only on the first call
    /// (from `map` itself, as CPython's does); later, the chunks it refused
    /// are failed in place and the input is read no further.
    func submitAhead(limit: Int?, first: Bool = false) throws {
        bufferSize = limit
        var items: [WorkItem] = []
        var sinks: [ChunkSink<Output>] = []
        var bytes = 0
        func send() throws {
            guard !items.isEmpty else { return }
            do {
                try pool.core.submit(items)
            } catch {
                if first { throw error }
                for sink in sinks { sink.fail(error) }
                nextChunk = nil
            }
            items.removeAll(keepingCapacity: true)
            sinks.removeAll(keepingCapacity: true)
            bytes = 0
        }
        while limit == nil || submitted.count < limit!, let make = nextChunk {
            let chunks = make()
            if chunks.isEmpty {
                nextChunk = nil
                break
            }
            for chunk in chunks {
                submitted.append(chunk.sink)
                guard let item = chunk.item else { continue }
                bytes += item.frame.count
                items.append(item)
                sinks.append(chunk.sink)
            }
            if items.count >= 16 || bytes >= 256 * 1024 { try send() }
        }
        try send()
    }

    /// The next outputs in input order (never empty), nil at the end. Throws
    /// at a failed item, after the outputs before it were handed out.
    func nextBatch(isolation actor: isolated (any Actor)?) async throws -> [Output]? {
        while true {
            if done { return nil }
            if !values.isEmpty {
                defer { values = [] }
                return values
            }
            if let outcome = outcomes.popLast() {
                switch outcome {
                case .success(let value): return [value]
                case .failure(let error): throw finish(error)
                }
            }
            guard let sink = submitted.popFirst() else {
                done = true
                return nil
            }
            if bufferSize != nil && nextChunk != nil {
                try? submitAhead(limit: bufferSize)
            }
            if !(await sink.future.waitDone(deadline: deadline)) {
                if Task.isCancelled {
                    // The consumer's task was cancelled: stop waiting, give
                    // up what has not started.
                    sink.cancel()
                    throw finish(CancellationError())
                }
                sink.cancel()
                throw finish(ProcessPoolError.timeout)
            }
            if case .failure(let error) = sink.future.doneOutcome()! { throw finish(error) }
            switch sink.takeOutcomes() {
            case .values(let chunk):
                if plainBits {
                    values = chunk
                } else {
                    outcomes = chunk.reversed().map { .success($0) }
                }
            case .outcomes(let chunk):
                if plainBits, chunk.allSatisfy({ if case .success = $0 { true } else { false } }) {
                    values = chunk.map { try! $0.get() }
                } else {
                    outcomes = chunk.reversed()
                }
            }
        }
    }

    private func finish(_ error: any Error) -> any Error {
        done = true
        values = []
        outcomes = []
        cancelRest()
        return error
    }

    private func cancelRest() {
        nextChunk = nil
        while let sink = submitted.popFirst() { sink.cancel() }
    }
}
