extension ProcessPoolExecutor {
    /// Runs every task and yields the outputs in input order.
    ///
    /// ```swift
    /// for try await square in try pool.map((1...1000).map { Square(x: $0) }, chunkSize: 64) {
    ///     print(square)
    /// }
    /// ```
    ///
    /// A task's error surfaces while iterating, at its item; the iteration then
    /// ends and work not yet started is cancelled, as it is when the consumer
    /// stops early.
    ///
    /// - Parameters:
    ///   - tasks: The calls to run, in the order their outputs are yielded.
    ///     An array is cut into chunks as slices; any other sequence is read
    ///     chunk by chunk as it is submitted.
    ///   - timeout: Counts from this call; iteration throws
    ///     ``ProcessPoolError/timeout`` when a result is not ready by then.
    ///     `nil`: no limit.
    ///   - chunkSize: Tasks per message each way (at least 1): larger chunks
    ///     cost fewer messages for many small tasks.
    ///   - bufferSize: At most that many chunks submitted ahead of the
    ///     consumer, so an endless input works; `nil` submits everything now.
    ///   - timeLimit: The longest each task may run, counted from when a
    ///     worker takes it (a chunk gets `timeLimit` times its size). On
    ///     expiry the worker is stopped and replaced, the other work it held
    ///     is queued again, and iteration throws ``TaskTimeLimitExceeded`` at
    ///     that chunk's first item. `nil`: no limit. Unlike `timeout`, this
    ///     does not count waiting in the queue.
    /// - Returns: The outputs, as an `AsyncSequence` to iterate once.
    /// - Throws: ``ProcessPoolError/invalidOption(_:)`` when `chunkSize` or
    ///   `bufferSize` is below 1; ``ProcessPoolError/unregisteredTask(_:)``
    ///   when the registry lacks the task type; ``BrokenProcessPool`` once the
    ///   pool is broken; ``ProcessPoolError/shutdown`` after shutdown; an
    ///   encoding error if a task submitted now cannot be encoded.
    public func map<S: Sequence>(_ tasks: S, timeout: Duration? = nil, chunkSize: Int = 1,
                                 bufferSize: Int? = nil, timeLimit: Duration? = nil) throws -> MapResults<S.Element.Output>
    where S.Element: ProcessTask {
        try Self.checkTimeLimit(timeLimit)
        guard chunkSize >= 1 else { throw ProcessPoolError.invalidOption("chunkSize must be >= 1 (got \(chunkSize))") }
        if let bufferSize, bufferSize < 1 {
            throw ProcessPoolError.invalidOption("bufferSize must be nil or >= 1 (got \(bufferSize))")
        }
        let name = TaskNames.name(of: S.Element.self)
        guard core.registry.contains(name) else { throw ProcessPoolError.unregisteredTask(name) }
        if let broken = core.brokenReason { throw BrokenProcessPool(reason: broken) }
        let deadline = MonotonicClock.deadline(after: timeout)
        let nextChunk: () -> [MapChunk<S.Element.Output>]
        if let array = tasks as? [S.Element] {
            // An array is cut into slices: no per-element iteration, and a
            // block of BitwiseCodable tasks is copied straight from it.
            var start = array.startIndex
            nextChunk = { [self] in
                guard start < array.endIndex else { return [] }
                let end = min(start + chunkSize, array.endIndex)
                let chunks = mapChunks(array[start..<end], timeLimit: timeLimit)
                // After an item that cannot be encoded, nothing more is read.
                start = chunks.last?.item == nil ? array.endIndex : end
                return chunks
            }
        } else {
            var iterator = tasks.makeIterator()
            var exhausted = false
            nextChunk = { [self] in
                guard !exhausted else { return [] }
                var chunk: [S.Element] = []
                chunk.reserveCapacity(chunkSize)
                while chunk.count < chunkSize, let task = iterator.next() { chunk.append(task) }
                if chunk.count < chunkSize { exhausted = true }
                guard !chunk.isEmpty else { return [] }
                let chunks = mapChunks(chunk, timeLimit: timeLimit)
                if chunks.last?.item == nil { exhausted = true }
                return chunks
            }
        }
        let state = MapState<S.Element.Output>(pool: self, deadline: deadline, nextChunk: nextChunk)
        try state.submitAhead(limit: bufferSize, first: true)
        return MapResults(state: state)
    }

    /// Encodes one chunk of a map. If a task cannot be encoded, the tasks
    /// before it go as chunks of one and the failing one becomes a chunk
    /// that is already failed: its error surfaces at its own position when
    /// the results are iterated, after the outputs before it.
    func mapChunks<C: Collection>(_ tasks: C, timeLimit: Duration? = nil) -> [MapChunk<C.Element.Output>]
    where C.Element: ProcessTask {
        let sink = ChunkSink<C.Element.Output>(expected: tasks.count)
        if let item = try? makeItem(tasks, sink: sink, timeLimit: timeLimit) { return [MapChunk(item: item, sink: sink)] }
        // The error path: find the first task that fails on its own.
        var chunks: [MapChunk<C.Element.Output>] = []
        for task in tasks {
            let one = ChunkSink<C.Element.Output>(expected: 1)
            do {
                chunks.append(MapChunk(item: try makeItem(CollectionOfOne(task), sink: one, timeLimit: timeLimit), sink: one))
            } catch {
                one.fail(error)
                chunks.append(MapChunk(item: nil, sink: one))
                break
            }
        }
        return chunks
    }
}

/// One chunk of a map: its work item, or nil when it failed before it could
/// be submitted (its sink then holds the error).
struct MapChunk<Output: Codable & Sendable> {
    let item: WorkItem?
    let sink: ChunkSink<Output>
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
        ///
        /// - Returns: The next task's output, or nil after the last one.
        /// - Throws: The error of the task at this position (as its registered
        ///   type, else ``RemoteTaskError``), ``BrokenProcessPool``,
        ///   `CancellationError` for work cancelled by a shutdown,
        ///   ``ProcessPoolError/timeout`` once the map's `timeout` passed, or
        ///   what submitting more of the input threw (with `bufferSize`).
        @inlinable
        public mutating func next() async throws -> Output? { try await next(isolation: nil) }

        /// The next output in input order, nil at the end, without leaving
        /// the caller's isolation.
        ///
        /// - Parameter actor: The caller's isolation, in which the iterator
        ///   waits (`for try await` passes it).
        /// - Returns: The next task's output, or nil after the last one.
        /// - Throws: As ``next()``.
        @inlinable
        public mutating func next(isolation actor: isolated (any Actor)?) async throws -> Output? {
            if index < buffer.count {
                let value = buffer[index]
                index += 1
                // Keep nothing that was handed out (batches of values that
                // hold references have one element: see MapState).
                if index == buffer.count {
                    buffer = []
                    index = 0
                }
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
            if batch.count > 1 {
                buffer = batch
                index = 1
            }
            return batch[0]
        }
    }

    /// Starts (the single) iteration.
    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(state: state) }
}
