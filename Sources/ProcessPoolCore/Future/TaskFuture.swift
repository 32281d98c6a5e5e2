import Glibc
import Synchronization

/// The eventual result of a task submitted to a pool (Python's `Future`).
///
/// Pending until a worker takes it, then running, then done: finished with a
/// value or an error, or cancelled. Every accessor is thread-safe.
public final class TaskFuture<Output: Sendable>: Sendable {
    enum Phase {
        case pending
        case running
        case finished(Result<Output, any Error>)
        case cancelled
    }

    struct State {
        var phase: Phase = .pending
        /// Done callbacks and registered observers (waiting threads and
        /// tasks, `wait`, `asCompleted`), told in the order they were added.
        var waiters: [Waiter] = []
        /// Stops the worker running this future (set by the pool at submit).
        var interrupter: (@Sendable () -> Bool)?
    }

    /// Something to tell when the future is done.
    enum Waiter {
        /// Added by `addDoneCallback`; never removed before it runs.
        case callback(@Sendable (TaskFuture<Output>) -> Void)
        /// Added by `register`; `unregister` removes it.
        case observer(any FutureObserver)
    }

    let state = Mutex(State())

    package init() {}

    /// A future that is already finished (used for empty work and tests).
    package init(result: Result<Output, any Error>) {
        state.guarded { $0.phase = .finished(result) }
    }

    // MARK: Public API

    /// The task's output; waits for it. Throws the task's error,
    /// `BrokenProcessPool`, or `CancellationError` if the future was cancelled.
    ///
    /// Cancelling the Swift task that awaits `value` ends the wait at once
    /// with `CancellationError` (SEMANTICS 41). A future still pending then
    /// (no worker has taken it) is cancelled too and never runs, as asyncio
    /// does for an awaited future, even if other tasks await it as well; a
    /// running one is not interrupted: it finishes, and its value reaches
    /// every other awaiter, `result()` and the done callbacks.
    ///
    /// - Throws: The task's error (as its registered type, else
    ///   ``RemoteTaskError``), ``BrokenProcessPool`` if the pool broke before
    ///   the task finished, or `CancellationError` if the future was cancelled
    ///   or the awaiting Swift task was.
    public var value: Output {
        get async throws {
            if let outcome = doneOutcome() { return try outcome.get() }
            guard await waitDone(deadline: nil) else {
                // Only cancellation ends a wait without a deadline early.
                cancel()
                throw CancellationError()
            }
            return try doneOutcome()!.get()
        }
    }

    /// Blocks the calling thread until done. Throws `ProcessPoolError.timeout`
    /// when not done within `timeout` (the task keeps going), otherwise as `value`.
    ///
    /// - Parameter timeout: How long to wait; `nil` waits as long as it takes.
    /// - Returns: The task's output.
    /// - Throws: ``ProcessPoolError/timeout`` when not done in time; else the
    ///   task's error, ``BrokenProcessPool`` or `CancellationError`, as
    ///   ``value`` does.
    public func result(timeout: Duration? = nil) throws -> Output {
        guard blockUntilDone(deadline: MonotonicClock.deadline(after: timeout)) else {
            throw ProcessPoolError.timeout
        }
        return try doneOutcome()!.get()
    }

    /// Blocks until done and returns the error the task failed with, or nil
    /// on success. A cancelled future returns `CancellationError`.
    /// Throws `ProcessPoolError.timeout` when not done in time.
    ///
    /// - Parameter timeout: How long to wait; `nil` waits as long as it takes.
    /// - Returns: The error the task failed with, or nil if it succeeded.
    /// - Throws: ``ProcessPoolError/timeout`` when not done in time.
    public func error(timeout: Duration? = nil) throws -> (any Error)? {
        guard blockUntilDone(deadline: MonotonicClock.deadline(after: timeout)) else {
            throw ProcessPoolError.timeout
        }
        if case .failure(let error) = doneOutcome()! { return error }
        return nil
    }

    /// Cancels the task if it is still pending: returns true then (and if it
    /// was already cancelled); false once it is running or finished.
    @discardableResult
    public func cancel() -> Bool {
        let (changed, alreadyCancelled) = state.guarded { s -> (Bool, Bool) in
            switch s.phase {
            case .pending:
                s.phase = .cancelled
                return (true, false)
            case .cancelled: return (false, true)
            case .running, .finished: return (false, false)
            }
        }
        if changed { fireCompletion() }
        return changed || alreadyCancelled
    }

    /// Cancels the task even while it runs.
    ///
    /// A pending task is cancelled as by ``cancel()``. A running one is
    /// interrupted: the pool stops the worker running it and starts another
    /// in its place, the other work that worker held goes back to the queue
    /// (it is not failed; a task it had finished but not yet reported runs
    /// again), and this future ends cancelled (its `value` throws
    /// `CancellationError`). The pool stays usable. A task already sent to a
    /// worker but queued there behind others is interrupted the same way:
    /// the pool cannot tell which of the tasks it sent a worker is running.
    ///
    /// - Returns: True if the future is now cancelled; false if it had
    ///   already finished (or was not made by a pool).
    @discardableResult
    public func interrupt() -> Bool {
        if cancel() { return true }
        guard let interrupter = state.guarded({ $0.interrupter }) else { return isCancelled }
        return interrupter() || isCancelled
    }

    /// Lets ``interrupt()`` reach the pool that runs this future.
    package func setInterrupter(_ interrupter: @escaping @Sendable () -> Bool) {
        state.guarded { $0.interrupter = interrupter }
    }

    /// True once cancelled.
    public var isCancelled: Bool {
        state.guarded { if case .cancelled = $0.phase { return true } else { return false } }
    }

    /// True while a worker holds the task.
    public var isRunning: Bool {
        state.guarded { if case .running = $0.phase { return true } else { return false } }
    }

    /// True once finished or cancelled.
    public var isDone: Bool {
        state.guarded {
            switch $0.phase {
            case .finished, .cancelled: return true
            case .pending, .running: return false
            }
        }
    }

    /// Calls `body` once when the future is done (finished or cancelled), in
    /// the order callbacks were added; at once, on this thread, if it is
    /// already done. Callbacks of completed tasks run on the pool's I/O
    /// thread: keep them short. A callback stays registered until the future
    /// is done (there is no way to remove one): `wait(for:)`, `asCompleted`
    /// and `value` do not use callbacks, so they leave nothing behind.
    /// Callbacks and waits are told in the order they began: a callback
    /// added before a `wait(for:)` or `value` started waiting has run by the
    /// time that wait returns.
    ///
    /// - Parameter body: Called once with this future when it is done.
    public func addDoneCallback(_ body: @escaping @Sendable (TaskFuture<Output>) -> Void) {
        let runNow = state.guarded { s -> Bool in
            switch s.phase {
            case .finished, .cancelled: return true
            case .pending, .running:
                s.waiters.append(.callback(body))
                return false
            }
        }
        if runNow { body(self) }
    }

    /// How many done callbacks and observers (waiting threads and tasks,
    /// `wait(for:)` calls, `asCompleted` sequences) this future still holds.
    /// 0 once it is done, and 0 while it is pending or running if nobody
    /// waits for it: every wait unregisters itself when it returns, whether
    /// by its condition, a time-out or cancellation. For tests.
    package var pendingObserverCount: Int {
        state.guarded { $0.waiters.count }
    }

    // MARK: Pool side

    /// Pending → running; false if the future was cancelled (then it must not run).
    package func markRunning() -> Bool {
        state.guarded { s in
            switch s.phase {
            case .pending:
                s.phase = .running
                return true
            case .running: return true
            case .finished, .cancelled: return false
            }
        }
    }

    /// Running (or pending) → cancelled: the pool stopped the worker that
    /// ran it (``interrupt()``). Ignored once done.
    package func cancelRunning() {
        let changed = state.guarded { s -> Bool in
            switch s.phase {
            case .pending, .running:
                s.phase = .cancelled
                return true
            case .finished, .cancelled: return false
            }
        }
        if changed { fireCompletion() }
    }

    /// Finishes the future; ignored if it is already done.
    package func finish(_ result: Result<Output, any Error>) {
        let changed = state.guarded { s -> Bool in
            switch s.phase {
            case .pending, .running:
                s.phase = .finished(result)
                return true
            case .finished, .cancelled: return false
            }
        }
        if changed { fireCompletion() }
    }

    // MARK: Waiting

    /// The outcome once done: the result, or `CancellationError`.
    func doneOutcome() -> Result<Output, any Error>? {
        state.guarded { s in
            switch s.phase {
            case .finished(let result): return result
            case .cancelled: return .failure(CancellationError())
            case .pending, .running: return nil
            }
        }
    }

    private func fireCompletion() {
        let waiters = state.guarded { s in
            defer { s.waiters = [] }
            return s.waiters
        }
        // In the order added: a wait that began after a callback was added
        // returns after that callback ran.
        for waiter in waiters {
            switch waiter {
            case .callback(let body): body(self)
            case .observer(let observer): observer.futureDidFinish(self)
            }
        }
    }

    /// Registers `observer`, to be told once when this future is done, unless
    /// it is already done (then returns false and never calls it). An
    /// observer is dropped once told; `unregister` drops it before that.
    /// Registering the same observer twice tells it twice.
    package func register(_ observer: any FutureObserver) -> Bool {
        state.guarded { s in
            switch s.phase {
            case .finished, .cancelled: return false
            case .pending, .running:
                s.waiters.append(.observer(observer))
                return true
            }
        }
    }

    /// Removes `observer` if it is still registered (it will not be told);
    /// harmless if it was told already or never registered.
    package func unregister(_ observer: any FutureObserver) {
        state.guarded { s in
            let index = s.waiters.lastIndex { waiter in
                if case .observer(let registered) = waiter { return registered === observer }
                return false
            }
            if let index { s.waiters.remove(at: index) }
        }
    }

    /// Blocks the thread until done or `deadline`; false on time-out.
    func blockUntilDone(deadline: UInt64?) -> Bool {
        if isDone { return true }
        // A short spin first: a result a round trip away usually arrives in
        // tens of microseconds, sooner than a sleeping thread can be woken.
        // Each turn yields, so that on a busy machine the spinner does not
        // keep the worker or the I/O thread off the CPU it is waiting for
        // (measured: round trip 30 µs; 46-51 µs with a 30 µs busy spin,
        // 65-85 µs without spinning).
        let spinUntil = MonotonicClock.now() &+ 100_000
        while MonotonicClock.now() < spinUntil {
            if isDone { return true }
            sched_yield()
        }
        let event = OneShotEvent()
        let waiter = FutureWaiter(event: event)
        guard register(waiter) else { return true }
        if event.wait(untilNanos: deadline) { return true }
        unregister(waiter)
        return isDone
    }

    /// Suspends until done (true), or until `deadline` (monotonic ns) passes
    /// or the awaiting task is cancelled (false: callers tell the two apart
    /// with `Task.isCancelled`). Returns at once if the task is already
    /// cancelled and the future not done. Leaves no observer and no timer
    /// behind: both are gone when it returns.
    @discardableResult
    package func waitDone(deadline: UInt64?) async -> Bool {
        if isDone { return true }
        if Task.isCancelled { return false }
        if let deadline, deadline <= MonotonicClock.now() { return false }
        let waiter = FutureWaiter(event: nil)
        let timer = deadline.map { WaitTimer.start(deadline: $0) { waiter.wake() } }
        await withTaskCancellationHandler {
            await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
                // Not registered if already woken (cancelled, timed out):
                // setContinuation has resumed it then.
                if waiter.setContinuation(continuation), !register(waiter) { waiter.wake() }
            }
        } onCancel: {
            waiter.wake()
        }
        timer?.cancel()
        unregister(waiter)
        return isDone
    }
}

/// Told once when a future it is registered with (`TaskFuture.register`) is
/// done: the one way `wait(for:)`, `asCompleted`, `value` and the blocking
/// accessors wait, so that each can unregister when it stops waiting.
package protocol FutureObserver: AnyObject, Sendable {
    /// `future` (a `TaskFuture`) is done. Called on the thread that finished
    /// or cancelled it (often the pool's I/O thread), outside the future's
    /// lock: must be short and must not block.
    func futureDidFinish(_ future: AnyObject)
}

/// One thread or task waiting for a future: woken exactly once.
final class FutureWaiter: FutureObserver {
    let event: OneShotEvent?
    private let continuation = Mutex<(UnsafeContinuation<Void, Never>?, Bool)>((nil, false))

    init(event: OneShotEvent?) { self.event = event }

    func futureDidFinish(_ future: AnyObject) { wake() }

    /// Stores the continuation to resume on `wake()`; if already woken,
    /// resumes it at once and returns false.
    func setContinuation(_ c: UnsafeContinuation<Void, Never>) -> Bool {
        let resumeNow = continuation.guarded { state -> Bool in
            if state.1 { return true }
            state.0 = c
            return false
        }
        if resumeNow { c.resume() }
        return !resumeNow
    }

    /// Sets the event, or resumes the continuation (now or when it is set);
    /// later calls do nothing.
    func wake() {
        if let event {
            event.set()
            return
        }
        let c = continuation.guarded { state -> UnsafeContinuation<Void, Never>? in
            if state.1 { return nil }
            state.1 = true
            defer { state.0 = nil }
            return state.0
        }
        c?.resume()
    }
}
