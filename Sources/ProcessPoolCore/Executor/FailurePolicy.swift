/// What a pool does when a worker dies while it holds work.
///
/// ``breakPool`` is CPython's behaviour and the default: the pool is broken
/// and every future not yet finished fails with ``BrokenProcessPool``.
/// ``retry(maxAttempts:)`` keeps the pool going: the work the dead worker
/// held goes back to the queue for another worker, the worker is replaced,
/// and only a task whose every attempt ended with a dead worker fails, alone,
/// with ``WorkerLost``. Execution is then *at least once*: a task whose
/// worker died mid-run runs again, so tasks should be safe to repeat. Each
/// future still gets one result.
public enum FailurePolicy: Sendable, Equatable, CustomStringConvertible {
    /// A dead worker breaks the pool (CPython's behaviour).
    case breakPool
    /// A dead worker's work is retried elsewhere; a task fails with
    /// ``WorkerLost`` after `maxAttempts` attempts that each ended with a
    /// dead worker. Only the task a worker was running when it died is
    /// charged an attempt; the items queued behind it are simply sent again.
    case retry(maxAttempts: Int = 3)

    /// `breakPool`, or `retry(maxAttempts: N)`.
    public var description: String {
        switch self {
        case .breakPool: "breakPool"
        case .retry(let attempts): "retry(maxAttempts: \(attempts))"
        }
    }

    /// The attempts a task gets, or nil for ``breakPool``.
    var maxAttempts: Int? {
        if case .retry(let attempts) = self { return attempts }
        return nil
    }
}

/// A task whose every attempt ended with its worker dead (under
/// ``FailurePolicy/retry(maxAttempts:)``): a poison task fails alone.
public struct WorkerLost: Error, Sendable, CustomStringConvertible {
    /// One attempt: the worker that ran the task and how it ended.
    public struct Attempt: Sendable, Equatable {
        /// The worker, as break reasons name it (pid, start method, host).
        public let worker: String
        /// How it ended ("signal 11 (SIGSEGV)", "exit code 3", "connection lost", ...).
        public let end: String
    }

    /// The task type's registered name.
    public let task: String
    /// Every attempt, oldest first.
    public let attempts: [Attempt]

    /// Names the task and every attempt.
    public var description: String {
        let list = attempts.enumerated().map { "attempt \($0.offset + 1): worker \($0.element.worker) ended with \($0.element.end)" }
        return "\(task) lost its worker on each of \(attempts.count) attempt\(attempts.count == 1 ? "" : "s"): "
            + list.joined(separator: "; ")
    }
}

/// A task that ran longer than the time limit it was submitted with; its
/// worker was stopped (and replaced) to end it.
public struct TaskTimeLimitExceeded: Error, Sendable, CustomStringConvertible {
    /// The task type's registered name.
    public let task: String
    /// The worker that was running it.
    public let worker: String
    /// The limit, counted from when that worker took the task.
    public let limit: Duration

    /// Names the task, the worker and the limit.
    public var description: String {
        "\(task) ran past its time limit of \(limit) in worker \(worker), which was stopped"
    }
}
