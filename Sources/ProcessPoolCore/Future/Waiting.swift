import Synchronization

/// When `wait(for:)` returns.
public enum ReturnWhen: Sendable {
    /// As soon as any future is done.
    case firstCompleted
    /// As soon as any future fails (cancelled does not count), or all are done.
    case firstException
    /// When every future is done.
    case allCompleted
}

/// Waits for futures (Python's `concurrent.futures.wait`). Returns the split
/// when the condition holds or `timeout` passes; never throws. Duplicates
/// collapse. Futures cancelled by a shutdown count as done.
public func wait<Output>(for futures: some Collection<TaskFuture<Output>>,
                         timeout: Duration? = nil, returnWhen: ReturnWhen = .allCompleted)
    async -> (done: [TaskFuture<Output>], notDone: [TaskFuture<Output>]) {
    let unique = uniqueFutures(futures)
    let deadline = MonotonicClock.deadline(after: timeout)
    let signal = ChangeSignal()
    for future in unique { future.addDoneCallback { _ in signal.notify() } }
    while true {
        let generation = signal.generation
        let (done, notDone) = split(unique)
        let satisfied: Bool
        switch returnWhen {
        case .allCompleted: satisfied = notDone.isEmpty
        case .firstCompleted: satisfied = !done.isEmpty
        case .firstException:
            satisfied = notDone.isEmpty || done.contains { $0.failedWithError }
        }
        if satisfied { return (done, notDone) }
        if !(await signal.wait(after: generation, deadline: deadline)) { return split(unique) }
    }
}

/// Yields each future as it completes: those already done first, then in
/// completion order, each once. Throws `ProcessPoolError.timeout` if not all
/// completed within `timeout`.
public func asCompleted<Output>(_ futures: some Collection<TaskFuture<Output>>, timeout: Duration? = nil)
    -> AsyncThrowingStream<TaskFuture<Output>, any Error> {
    let unique = uniqueFutures(futures)
    let (stream, continuation) = AsyncThrowingStream<TaskFuture<Output>, any Error>.makeStream()
    let remaining = Mutex(unique.count)
    if unique.isEmpty {
        continuation.finish()
        return stream
    }
    let (done, notDone) = split(unique)
    let yieldOne: @Sendable (TaskFuture<Output>) -> Void = { future in
        continuation.yield(future)
        let left = remaining.withLock { n -> Int in
            n -= 1
            return n
        }
        if left == 0 { continuation.finish() }
    }
    for future in done { yieldOne(future) }
    for future in notDone { future.addDoneCallback(yieldOne) }
    if let timeout, !notDone.isEmpty {
        let timer = Task {
            try? await Task.sleep(for: timeout)
            if Task.isCancelled { return }
            let left = remaining.withLock { n -> Int in
                defer { n = -1 }
                return n
            }
            if left > 0 { continuation.finish(throwing: ProcessPoolError.timeout) }
        }
        continuation.onTermination = { _ in timer.cancel() }
    }
    return stream
}

private func uniqueFutures<Output>(_ futures: some Collection<TaskFuture<Output>>) -> [TaskFuture<Output>] {
    var seen = Set<ObjectIdentifier>()
    return futures.filter { seen.insert(ObjectIdentifier($0)).inserted }
}

private func split<Output>(_ futures: [TaskFuture<Output>]) -> ([TaskFuture<Output>], [TaskFuture<Output>]) {
    var done: [TaskFuture<Output>] = []
    var notDone: [TaskFuture<Output>] = []
    for future in futures {
        if future.isDone { done.append(future) } else { notDone.append(future) }
    }
    return (done, notDone)
}

extension TaskFuture {
    /// Finished with an error (a cancelled future does not count).
    var failedWithError: Bool {
        state.withLock { if case .finished(.failure) = $0.phase { return true } else { return false } }
    }
}

/// A counter that async waiters can sleep on until it moves past a value.
final class ChangeSignal: Sendable {
    private struct State {
        var generation = 0
        var waiters: [UnsafeContinuation<Void, Never>] = []
    }

    private let state = Mutex(State())

    var generation: Int { state.withLock { $0.generation } }

    func notify() {
        let ready = state.withLock { s -> [UnsafeContinuation<Void, Never>] in
            s.generation += 1
            defer { s.waiters = [] }
            return s.waiters
        }
        for continuation in ready { continuation.resume() }
    }

    /// Suspends until the generation moves past `seen` (true) or `deadline` passes (false).
    func wait(after seen: Int, deadline: UInt64?) async -> Bool {
        let timer: Task<Void, Never>? = deadline.map { deadline in
            Task { [self] in
                let now = MonotonicClock.now()
                if deadline > now { try? await Task.sleep(nanoseconds: deadline - now) }
                if !Task.isCancelled { notify() }
            }
        }
        await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
            let resumeNow = state.withLock { s -> Bool in
                if s.generation != seen { return true }
                s.waiters.append(continuation)
                return false
            }
            if resumeNow { continuation.resume() }
        }
        timer?.cancel()
        if let deadline, MonotonicClock.now() >= deadline { return false }
        return true
    }
}
