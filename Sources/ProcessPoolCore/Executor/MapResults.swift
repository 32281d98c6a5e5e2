extension ProcessPoolExecutor {
    /// Runs every task and yields the outputs in input order.
    ///
    /// - chunkSize: tasks per message each way (< 1 throws `invalidOption`).
    /// - timeout: counts from this call; iteration throws
    ///   `ProcessPoolError.timeout` when a result is not ready by then.
    /// - bufferSize: at most that many chunks submitted ahead of the consumer,
    ///   so an endless input works; nil submits everything now.
    ///
    /// A task's error surfaces while iterating, at its item; the iteration then
    /// ends and work not yet started is cancelled, as it is when the consumer
    /// stops early.
    public func map<S: Sequence>(_ tasks: S, timeout: Duration? = nil, chunkSize: Int = 1,
                                 bufferSize: Int? = nil) throws -> MapResults<S.Element.Output>
    where S.Element: ProcessTask {
        guard chunkSize >= 1 else { throw ProcessPoolError.invalidOption("chunksize must be >= 1.") }
        if let bufferSize, bufferSize < 1 {
            throw ProcessPoolError.invalidOption("buffersize must be None or >= 1.")
        }
        let name = TaskNames.name(of: S.Element.self)
        guard core.registry.contains(name) else { throw ProcessPoolError.unregisteredTask(name) }
        if let broken = core.brokenReason { throw BrokenProcessPool(reason: broken) }
        let deadline = MonotonicClock.deadline(after: timeout)
        var iterator = tasks.makeIterator()
        var exhausted = false
        let nextChunk: () throws -> (WorkItem, ChunkSink<S.Element.Output>)? = { [self] in
            guard !exhausted else { return nil }
            var chunk: [S.Element] = []
            chunk.reserveCapacity(chunkSize)
            while chunk.count < chunkSize, let task = iterator.next() { chunk.append(task) }
            if chunk.count < chunkSize { exhausted = true }
            guard !chunk.isEmpty else { return nil }
            let sink = ChunkSink<S.Element.Output>(expected: chunk.count)
            return (try makeItem(chunk, sink: sink), sink)
        }
        let state = MapState<S.Element.Output>(pool: self, deadline: deadline, nextChunk: nextChunk)
        try state.submitAhead(limit: bufferSize)
        return MapResults(state: state)
    }
}

/// The outputs of `ProcessPoolExecutor.map`, in input order. Iterate it once.
public struct MapResults<Output: Codable & Sendable>: AsyncSequence, @unchecked Sendable {
    /// One task's output.
    public typealias Element = Output
    let state: MapState<Output>

    /// The iterator; errors surface at the failing item.
    public struct AsyncIterator: AsyncIteratorProtocol {
        let state: MapState<Output>
        /// The next output in input order, nil at the end.
        public mutating func next() async throws -> Output? { try await state.next() }
    }

    /// Starts (the single) iteration.
    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(state: state) }
}

/// The consumer's side of a map: submitted chunks in order, the chunk being
/// read, and the input not yet submitted. Used by one consumer at a time.
final class MapState<Output: Codable & Sendable>: @unchecked Sendable {
    let pool: ProcessPoolExecutor
    let deadline: UInt64?
    var nextChunk: (() throws -> (WorkItem, ChunkSink<Output>)?)?
    var bufferSize: Int?
    var submitted = RingQueue<ChunkSink<Output>>()
    var current: ChunkOutcomes<Output> = []
    var index = 0
    var done = false

    init(pool: ProcessPoolExecutor, deadline: UInt64?,
         nextChunk: @escaping () throws -> (WorkItem, ChunkSink<Output>)?) {
        self.pool = pool
        self.deadline = deadline
        self.nextChunk = nextChunk
    }

    deinit { cancelRest() }

    /// Submits chunks until `limit` are outstanding (nil: the whole input).
    func submitAhead(limit: Int?) throws {
        bufferSize = limit
        var items: [WorkItem] = []
        while limit == nil || submitted.count < limit!, let make = nextChunk {
            guard let (item, sink) = try make() else {
                nextChunk = nil
                break
            }
            items.append(item)
            submitted.append(sink)
        }
        try pool.core.submit(items)
    }

    func next() async throws -> Output? {
        while true {
            if done { return nil }
            if index < current.count {
                let outcome = current[index]
                index += 1
                switch outcome {
                case .success(let value): return value
                case .failure(let error): throw finish(error)
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
