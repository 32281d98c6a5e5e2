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
/// collapse. Futures cancelled by a shutdown count as done. An empty
/// collection returns `([], [])` at once, whatever `returnWhen` says.
///
/// Cancelling the Swift task that awaits it ends the wait at once, as a
/// time-out does: it returns the split as it stands (check
/// `Task.isCancelled` to tell the two apart). The futures themselves are not
/// cancelled. The wait leaves nothing registered on the futures once it
/// returns, however it ends.
///
/// - Parameters:
///   - futures: The futures to watch (duplicates count once).
///   - timeout: The longest wait; `nil` waits until `returnWhen` holds.
///   - returnWhen: When to return: at the first completion, at the first
///     failure, or when all are done (the default).
/// - Returns: The futures done when it returned, and the others.
public func wait<Output>(for futures: some Collection<TaskFuture<Output>>,
                         timeout: Duration? = nil, returnWhen: ReturnWhen = .allCompleted)
    async -> (done: [TaskFuture<Output>], notDone: [TaskFuture<Output>]) {
    let unique = uniqueFutures(futures)
    if unique.isEmpty { return ([], []) }
    let deadline = MonotonicClock.deadline(after: timeout)
    let (done, notDone) = split(unique)
    if isSatisfied(returnWhen, done: done, notDone: notDone) { return (done, notDone) }
    if Task.isCancelled { return (done, notDone) }
    if let deadline, deadline <= MonotonicClock.now() { return (done, notDone) }

    let observer = WaitObserver<Output>(returnWhen: returnWhen, watching: notDone.count)
    for future in notDone where !future.register(observer) {
        observer.futureDidFinish(future)
    }
    let timer = deadline.map { WaitTimer.start(deadline: $0) { observer.stop() } }
    await withTaskCancellationHandler {
        await observer.wait()
    } onCancel: {
        observer.stop()
    }
    timer?.cancel()
    for future in notDone { future.unregister(observer) }
    return split(unique)
}

/// Yields each future as it completes: those already done first, then in
/// completion order, each once. Throws `ProcessPoolError.timeout` if not all
/// completed within `timeout` (counted from this call; checked when the
/// sequence has to wait, so futures already done are yielded first).
///
/// Cancelling the Swift task that iterates it while it waits for the next
/// future ends the iteration with `CancellationError`; an iteration started
/// in a task already cancelled ends at once (`AsyncThrowingStream` returns
/// nil then). The futures themselves are not cancelled. Whenever the
/// sequence ends (all yielded, time-out, cancellation, or the stream and its
/// iterators dropped) it unregisters from the futures and stops its timer.
///
/// - Parameters:
///   - futures: The futures to watch (duplicates are yielded once).
///   - timeout: The longest time for all of them to complete, counted from
///     this call; `nil` means no limit.
/// - Returns: A stream of the futures in completion order; iterating it
///   throws ``ProcessPoolError/timeout`` if not all completed in time, or
///   `CancellationError` if the iterating task is cancelled while it waits.
public func asCompleted<Output>(_ futures: some Collection<TaskFuture<Output>>, timeout: Duration? = nil)
    -> AsyncThrowingStream<TaskFuture<Output>, any Error> {
    let unique = uniqueFutures(futures)
    if unique.isEmpty {
        let (stream, continuation) = AsyncThrowingStream<TaskFuture<Output>, any Error>.makeStream()
        continuation.finish()
        return stream
    }
    let (done, notDone) = split(unique)
    let inbox = CompletionInbox<Output>(ready: done, waitingFor: notDone.count,
                                        deadline: MonotonicClock.deadline(after: timeout))
    for future in notDone where !future.register(inbox) {
        inbox.futureDidFinish(future)
    }
    // Only the stream holds the registration: when the stream (and every
    // iterator) is gone, or AsyncThrowingStream drops the closure because
    // the consuming task was cancelled, it unregisters.
    let registration = InboxRegistration(inbox: inbox, futures: notDone)
    return AsyncThrowingStream {
        try await registration.next()
    }
}

/// Whether `wait(for:)` may return with this split.
private func isSatisfied<Output>(_ returnWhen: ReturnWhen, done: [TaskFuture<Output>],
                                 notDone: [TaskFuture<Output>]) -> Bool {
    switch returnWhen {
    case .allCompleted: return notDone.isEmpty
    case .firstCompleted: return !done.isEmpty
    case .firstException: return notDone.isEmpty || done.contains { $0.failedWithError }
    }
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
        state.guarded { if case .finished(.failure) = $0.phase { return true } else { return false } }
    }
}

/// What one `wait(for:)` call registers on the futures not done when it
/// started: counts them as they finish and wakes the waiting task when its
/// condition holds, or when `stop()` is called (time-out, cancellation).
final class WaitObserver<Output: Sendable>: FutureObserver {
    private struct State {
        /// Watched futures not finished yet.
        var remaining: Int
        /// The condition held, or the wait was stopped.
        var woken = false
        var continuation: UnsafeContinuation<Void, Never>?

        /// Marks the wait woken; returns the continuation to resume (once).
        mutating func wake() -> UnsafeContinuation<Void, Never>? {
            woken = true
            defer { continuation = nil }
            return continuation
        }
    }

    private let returnWhen: ReturnWhen
    private let state: Mutex<State>

    /// Watches `count` futures, none of them done.
    init(returnWhen: ReturnWhen, watching count: Int) {
        self.returnWhen = returnWhen
        state = Mutex(State(remaining: count))
    }

    func futureDidFinish(_ future: AnyObject) {
        let failed = returnWhen == .firstException
            && unsafeDowncast(future, to: TaskFuture<Output>.self).failedWithError
        let resume = state.guarded { s -> UnsafeContinuation<Void, Never>? in
            s.remaining -= 1
            let satisfied = switch returnWhen {
            case .allCompleted: s.remaining == 0
            case .firstCompleted: true
            case .firstException: failed || s.remaining == 0
            }
            return satisfied ? s.wake() : nil
        }
        resume?.resume()
    }

    /// Ends the wait now (its time-out passed or its task was cancelled).
    func stop() {
        state.guarded { $0.wake() }?.resume()
    }

    /// Suspends until the condition holds or `stop()` is called; returns at
    /// once if either happened already.
    func wait() async {
        await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
            let resumeNow = state.guarded { s -> Bool in
                if s.woken { return true }
                s.continuation = continuation
                return false
            }
            if resumeNow { continuation.resume() }
        }
    }
}

/// The completed futures `asCompleted` has not yielded yet, filled by the
/// futures (it is registered on each one not done at the start) and drained
/// by the consumer. Also holds the time-out.
final class CompletionInbox<Output: Sendable>: FutureObserver {
    private struct State {
        /// Done futures not yet yielded; a slot is emptied as it is yielded,
        /// so the sequence keeps no future it has handed out.
        var ready: [TaskFuture<Output>?]
        var readIndex = 0
        /// Futures not yet in `ready`.
        var outstanding: Int
        /// The consumer waiting for the next one.
        var consumer: UnsafeContinuation<Void, Never>?
        /// Set by the timer at the deadline, or when the consumer is cancelled.
        var interrupted = false
        /// Nothing more will be yielded.
        var ended = false
    }

    private let state: Mutex<State>
    /// Monotonic ns; nil for no time-out.
    let deadline: UInt64?

    init(ready: [TaskFuture<Output>], waitingFor outstanding: Int, deadline: UInt64?) {
        state = Mutex(State(ready: ready, outstanding: outstanding))
        self.deadline = deadline
    }

    func futureDidFinish(_ future: AnyObject) {
        let future = unsafeDowncast(future, to: TaskFuture<Output>.self)
        let consumer = state.guarded { s -> UnsafeContinuation<Void, Never>? in
            s.ready.append(future)
            s.outstanding -= 1
            defer { s.consumer = nil }
            return s.consumer
        }
        consumer?.resume()
    }

    /// Wakes the consumer if it is waiting (time-out or cancellation); the
    /// next wait returns at once until `next` has seen it.
    func interrupt() {
        state.guarded { s -> UnsafeContinuation<Void, Never>? in
            s.interrupted = true
            defer { s.consumer = nil }
            return s.consumer
        }?.resume()
    }

    /// What the consumer does next.
    enum Step {
        /// Yield this future.
        case yield(TaskFuture<Output>)
        /// End the sequence (every future yielded, or it ended already).
        case end
        /// Wait for a future to arrive.
        case wait
    }

    /// The next future if one is ready; `.end` once all were yielded or the
    /// sequence ended; otherwise `.wait`.
    func take() -> Step {
        state.guarded { s in
            if s.ended { return .end }
            if s.readIndex < s.ready.count {
                let future = s.ready[s.readIndex]!
                s.ready[s.readIndex] = nil
                s.readIndex += 1
                if s.readIndex == s.ready.count {
                    s.ready.removeAll(keepingCapacity: true)
                    s.readIndex = 0
                }
                return .yield(future)
            }
            if s.outstanding == 0 {
                s.ended = true
                return .end
            }
            s.interrupted = false
            return .wait
        }
    }

    /// Marks the sequence ended (time-out or cancellation): `take()` says
    /// `.end` from now on.
    func end() {
        state.guarded { $0.ended = true }
    }

    /// Suspends until a future arrives or `interrupt()` is called (at once if
    /// either happened since the last `take()`).
    func waitForArrival() async {
        await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
            let resumeNow = state.guarded { s -> Bool in
                if s.interrupted || s.readIndex < s.ready.count || s.outstanding == 0 { return true }
                s.consumer = continuation
                return false
            }
            if resumeNow { continuation.resume() }
        }
    }
}

/// The consumer side of `asCompleted`, owned by its stream's closure alone.
/// It unregisters the inbox from the futures and stops the timer when the
/// sequence ends, and in `deinit`: when the stream and its iterators are
/// dropped, or when `AsyncThrowingStream` drops the closure because the
/// consuming task was cancelled.
final class InboxRegistration<Output: Sendable>: Sendable {
    /// A future to unregister from at the end, held weakly: the sequence
    /// must not keep alive a future the caller has let go of (one that is
    /// gone needs no unregistering).
    private struct WeakFuture: @unchecked Sendable {
        weak var future: TaskFuture<Output>?
    }

    private let inbox: CompletionInbox<Output>
    private let futures: [WeakFuture]
    /// The time-out's timer: started the first time the consumer has to
    /// wait (none if it never does), stopped when the sequence ends or is
    /// dropped.
    private let timer = Mutex<Task<Void, Never>?>(nil)

    init(inbox: CompletionInbox<Output>, futures: [TaskFuture<Output>]) {
        self.inbox = inbox
        self.futures = futures.map { WeakFuture(future: $0) }
    }

    deinit { release() }

    /// Unregisters from the futures not done and cancels the timer. Idempotent.
    private func release() {
        timer.guarded { t -> Task<Void, Never>? in
            defer { t = nil }
            return t
        }?.cancel()
        for entry in futures { entry.future?.unregister(inbox) }
    }

    /// The stream's next element: a done future, nil at the end; throws
    /// `ProcessPoolError.timeout` past the deadline and `CancellationError`
    /// when the consuming task is cancelled while it waits.
    func next() async throws -> TaskFuture<Output>? {
        while true {
            switch inbox.take() {
            case .yield(let future):
                return future
            case .end:
                release()
                return nil
            case .wait:
                break
            }
            if Task.isCancelled {
                inbox.end()
                release()
                throw CancellationError()
            }
            if let deadline = inbox.deadline {
                if MonotonicClock.now() >= deadline {
                    inbox.end()
                    release()
                    throw ProcessPoolError.timeout
                }
                startTimer(deadline)
            }
            let inbox = self.inbox
            await withTaskCancellationHandler {
                await inbox.waitForArrival()
            } onCancel: {
                inbox.interrupt()
            }
        }
    }

    private func startTimer(_ deadline: UInt64) {
        timer.guarded { t in
            guard t == nil else { return }
            let inbox = self.inbox
            t = WaitTimer.start(deadline: deadline) { inbox.interrupt() }
        }
    }
}

/// The time-outs of waits (`waitDone`, `wait(for:)`, `asCompleted`): a task
/// that sleeps until a deadline, then fires unless cancelled first. Every
/// wait cancels its timer as it returns, so none outlives its wait.
package enum WaitTimer {
    private static let live = Atomic<Int>(0)

    /// How many timers are running (started, not yet ended). A cancelled
    /// timer ends promptly. For tests: 0 once no wait with a time-out is
    /// in progress.
    package static var running: Int { live.load(ordering: .acquiring) }

    /// Starts a timer that calls `fire` at `deadline` (monotonic ns) unless
    /// the returned task is cancelled first.
    static func start(deadline: UInt64, fire: @escaping @Sendable () -> Void) -> Task<Void, Never> {
        live.add(1, ordering: .releasing)
        return Task {
            defer { live.subtract(1, ordering: .releasing) }
            let now = MonotonicClock.now()
            if deadline > now { try? await Task.sleep(nanoseconds: deadline - now) }
            if !Task.isCancelled { fire() }
        }
    }
}
