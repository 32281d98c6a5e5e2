/// The consumer's side of a map: submitted chunks in order, the chunk being
/// read, and the input not yet submitted. Used by one consumer at a time.
@usableFromInline
final class MapState<Output: Codable & Sendable>: @unchecked Sendable {
    let pool: ProcessPoolExecutor
    let deadline: UInt64?
    var nextChunk: (() throws -> (WorkItem, ChunkSink<Output>)?)?
    var bufferSize: Int?
    var submitted = RingQueue<ChunkSink<Output>>()
    var current: ChunkOutcomes<Output> = .values([])
    var index = 0
    var done = false

    init(pool: ProcessPoolExecutor, deadline: UInt64?,
         nextChunk: @escaping () throws -> (WorkItem, ChunkSink<Output>)?) {
        self.pool = pool
        self.deadline = deadline
        self.nextChunk = nextChunk
    }

    deinit { cancelRest() }

    /// Submits chunks until `limit` are outstanding (nil: the whole input),
    /// a few at a time so that workers start while the rest is encoded.
    func submitAhead(limit: Int?) throws {
        bufferSize = limit
        var items: [WorkItem] = []
        var bytes = 0
        while limit == nil || submitted.count < limit!, let make = nextChunk {
            guard let (item, sink) = try make() else {
                nextChunk = nil
                break
            }
            bytes += item.frame.count
            items.append(item)
            submitted.append(sink)
            if items.count >= 16 || bytes >= 256 * 1024 {
                try pool.core.submit(items)
                items.removeAll(keepingCapacity: true)
                bytes = 0
            }
        }
        if !items.isEmpty { try pool.core.submit(items) }
    }

    /// The next outputs in input order (never empty), nil at the end. Throws
    /// at a failed item, after the outputs before it were handed out.
    func nextBatch(isolation actor: isolated (any Actor)?) async throws -> [Output]? {
        while true {
            if done { return nil }
            if index < current.count {
                switch current {
                case .values(let values):
                    let batch = index == 0 ? values : Array(values[index...])
                    index = values.count
                    return batch
                case .outcomes(let outcomes):
                    var batch: [Output] = []
                    while index < outcomes.count, case .success(let value) = outcomes[index] {
                        batch.append(value)
                        index += 1
                    }
                    if !batch.isEmpty { return batch }
                    if case .failure(let error) = outcomes[index] { throw finish(error) }
                }
            }
            guard let sink = submitted.popFirst() else {
                done = true
                return nil
            }
            if bufferSize != nil && nextChunk != nil {
                do { try submitAhead(limit: bufferSize) } catch { throw finish(error) }
            }
            if !(await sink.future.waitDone(deadline: deadline)) {
                sink.cancel()
                throw finish(ProcessPoolError.timeout)
            }
            switch sink.future.doneOutcome()! {
            case .success(let outcomes):
                current = outcomes
                index = 0
            case .failure(let error):
                throw finish(error)
            }
        }
    }

    private func finish(_ error: any Error) -> any Error {
        done = true
        cancelRest()
        return error
    }

    private func cancelRest() {
        nextChunk = nil
        while let sink = submitted.popFirst() { sink.cancel() }
    }
}
