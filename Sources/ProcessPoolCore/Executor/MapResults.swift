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
        guard chunkSize >= 1 else { throw ProcessPoolError.invalidOption("chunkSize must be >= 1 (got \(chunkSize))") }
        if let bufferSize, bufferSize < 1 {
            throw ProcessPoolError.invalidOption("bufferSize must be nil or >= 1 (got \(bufferSize))")
        }
        let name = TaskNames.name(of: S.Element.self)
        guard core.registry.contains(name) else { throw ProcessPoolError.unregisteredTask(name) }
        if let broken = core.brokenReason { throw BrokenProcessPool(reason: broken) }
        let deadline = MonotonicClock.deadline(after: timeout)
        let nextChunk: () throws -> (WorkItem, ChunkSink<S.Element.Output>)?
        if let array = tasks as? [S.Element] {
            // An array is cut into slices: no per-element iteration, and a
            // block of BitwiseCodable tasks is copied straight from it.
            var start = array.startIndex
            nextChunk = { [self] in
                guard start < array.endIndex else { return nil }
                let end = min(start + chunkSize, array.endIndex)
                defer { start = end }
                let sink = ChunkSink<S.Element.Output>(expected: end - start)
                return (try makeItem(array[start..<end], sink: sink), sink)
            }
        } else {
            var iterator = tasks.makeIterator()
            var exhausted = false
            nextChunk = { [self] in
                guard !exhausted else { return nil }
                var chunk: [S.Element] = []
                chunk.reserveCapacity(chunkSize)
                while chunk.count < chunkSize, let task = iterator.next() { chunk.append(task) }
                if chunk.count < chunkSize { exhausted = true }
                guard !chunk.isEmpty else { return nil }
                let sink = ChunkSink<S.Element.Output>(expected: chunk.count)
                return (try makeItem(chunk, sink: sink), sink)
            }
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
    ///
    /// It hands out a chunk's outputs from a buffer of its own, in code the
    /// compiler specializes at the call site: most calls cost an array read.
    public struct AsyncIterator: AsyncIteratorProtocol {
        @usableFromInline let state: MapState<Output>
        @usableFromInline var buffer: [Output] = []
        @usableFromInline var index = 0

        init(state: MapState<Output>) { self.state = state }

        /// The next output in input order, nil at the end.
        @inlinable
        public mutating func next() async throws -> Output? { try await next(isolation: nil) }

        /// The next output in input order, nil at the end, without leaving
        /// the caller's isolation.
        @inlinable
        public mutating func next(isolation actor: isolated (any Actor)?) async throws -> Output? {
            if index < buffer.count {
                let value = buffer[index]
                index += 1
                return value
            }
            return try await refill(isolation: actor)
        }

        /// Waits for the next outputs, keeps them, returns the first.
        @usableFromInline
        mutating func refill(isolation actor: isolated (any Actor)?) async throws -> Output? {
            guard let batch = try await state.nextBatch(isolation: actor) else {
                buffer = []
                index = 0
                return nil
            }
            buffer = batch
            index = 1
            return batch[0]
        }
    }

    /// Starts (the single) iteration.
    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(state: state) }
}
