import CProcessPoolShim
import Logging

/// A pool of worker processes that run `ProcessTask`s: Python's
/// `concurrent.futures.ProcessPoolExecutor`, for Swift.
///
/// ```swift
/// let pool = try ProcessPoolExecutor(tasks: registry)
/// let future = try pool.submit(CountPrimes(below: 1_000_000))
/// print(try await future.value)
/// await pool.shutdown()
/// ```
///
/// Dropping the last reference shuts the pool down: pending work finishes,
/// then the workers exit.
public final class ProcessPoolExecutor: Sendable {
    let core: PoolCore

    /// The most workers this pool runs at once.
    public let maxWorkers: Int
    /// How the workers are started.
    public let startMethod: StartMethod
    /// What a dead worker does to the pool.
    public let failurePolicy: FailurePolicy

    /// Creates a pool that starts workers with `context` (no process starts
    /// until the first submit). The public initializer lives in `ProcessPool`,
    /// which resolves a nil context.
    package init(maxWorkers: Int?, context: StartMethod, tasks: TaskRegistry,
                 initializer: (any ProcessTask)?, maxTasksPerChild: Int?, logger: Logger,
                 failurePolicy: FailurePolicy = .breakPool) throws {
        let launcher = context.launcher
        let workers = maxWorkers ?? launcher.defaultWorkerCount ?? ProcessPoolExecutor.usableCPUCount
        guard workers > 0 else { throw ProcessPoolError.invalidMaxWorkers(workers) }
        if let maxTasksPerChild {
            guard maxTasksPerChild >= 1 else {
                throw ProcessPoolError.invalidOption("maxTasksPerChild must be >= 1 (got \(maxTasksPerChild))")
            }
            guard launcher.supportsMaxTasksPerChild else {
                throw ProcessPoolError.invalidOption(
                    "maxTasksPerChild is incompatible with the '\(launcher.name)' start method")
            }
        }
        if let attempts = failurePolicy.maxAttempts, attempts < 1 {
            throw ProcessPoolError.invalidOption("maxAttempts must be >= 1 (got \(attempts))")
        }
        self.maxWorkers = workers
        self.startMethod = context
        self.failurePolicy = failurePolicy
        self.core = try PoolCore(launcher: launcher, registry: tasks, maxWorkers: workers,
                                 maxTasksPerChild: maxTasksPerChild, initializer: initializer, logger: logger,
                                 failurePolicy: failurePolicy)
    }

    deinit { core.shutdown(wait: false, cancelFutures: false) }

    /// The CPUs this process may run on (`sched_getaffinity`).
    public static var usableCPUCount: Int {
        let n = Int(cpp_affinity_cpu_count())
        return n > 0 ? n : 1
    }

    /// Schedules one task. Throws `BrokenProcessPool` once the pool is broken,
    /// `ProcessPoolError.shutdown` after shutdown, and
    /// `ProcessPoolError.unregisteredTask` for a task type the registry lacks.
    ///
    /// The first submit starts the pool (its start method's session, and
    /// with `fork` every worker); a worker starts when none is idle and the
    /// pool has fewer than ``maxWorkers``.
    ///
    /// - Parameter task: The call to run in a worker; its type must be in the
    ///   pool's registry.
    /// - Returns: The task's future.
    /// - Throws: ``BrokenProcessPool`` once the pool is broken (or when its
    ///   start method cannot start); ``ProcessPoolError/shutdown`` after
    ///   shutdown; ``ProcessPoolError/unregisteredTask(_:)`` for a task type
    ///   the registry lacks; an encoding error if `task` cannot be encoded.
    public func submit<T: ProcessTask>(_ task: T) throws -> TaskFuture<T.Output> {
        try submit(task, timeLimit: nil)
    }

    /// Schedules one task that may run for at most `timeLimit`, counted from
    /// when a worker takes it (not from this call). On expiry the task is
    /// interrupted (its worker stopped and replaced, the other work it held
    /// queued again) and its future fails with ``TaskTimeLimitExceeded``,
    /// naming the task and the worker; the pool stays usable.
    ///
    /// - Parameters:
    ///   - task: The call to run in a worker; its type must be in the
    ///     pool's registry.
    ///   - timeLimit: The longest the task may run; `nil`: no limit.
    /// - Returns: The task's future (``TaskFuture/interrupt()`` also stops it
    ///   while it runs).
    /// - Throws: As ``submit(_:)``, and ``ProcessPoolError/invalidOption(_:)``
    ///   for a time limit that is not positive.
    public func submit<T: ProcessTask>(_ task: T, timeLimit: Duration?) throws -> TaskFuture<T.Output> {
        if let broken = core.brokenReason { throw BrokenProcessPool(reason: broken) }
        try Self.checkTimeLimit(timeLimit)
        let future = TaskFuture<T.Output>()
        let item = try makeItem([task], sink: future, timeLimit: timeLimit)
        future.setInterrupter { [weak core, weak future] in
            guard let core, let future else { return false }
            return core.interrupt(future)
        }
        try core.submit(item)
        return future
    }

    /// Refuses a time limit that is zero or negative.
    static func checkTimeLimit(_ limit: Duration?) throws {
        if let limit, limit <= .zero {
            throw ProcessPoolError.invalidOption("timeLimit must be nil or positive (got \(limit))")
        }
    }

    /// Encodes calls into one `run` frame; `timeLimit` is per call.
    func makeItem<T: ProcessTask>(_ tasks: some Collection<T>, sink: any WorkSink,
                                  timeLimit: Duration? = nil) throws -> WorkItem {
        let name = TaskNames.name(of: T.self)
        guard core.registry.contains(name) else { throw ProcessPoolError.unregisteredTask(name) }
        let id = core.makeItemID()
        let bitwise = BitwiseTypes.isBitwise(T.self)
        let blockBytes = bitwise ? tasks.count.multipliedReportingOverflow(by: MemoryLayout<T>.stride)
            : (partialValue: 0, overflow: false)
        guard !blockBytes.overflow, blockBytes.partialValue <= WireProtocol.maxFrameBytes else {
            throw ProcessPoolError.valueTooLarge("a chunk of \(tasks.count) \(name) tasks exceeds the protocol's "
                + "limit of \(WireProtocol.maxFrameBytes) bytes per message")
        }
        var frame = FrameBuilder(capacity: 64 + name.utf8.count + blockBytes.partialValue)
        RunHeader(itemID: id, taskName: name, count: tasks.count, layout: bitwise ? .block : .separate)
            .write(to: &frame)
        if bitwise {
            BitwiseTypes.writeBlock(tasks, into: &frame.writer)
        } else {
            frame.writer.attachments = []
            let encoder = BinaryEncoder()
            for task in tasks {
                do {
                    try frame.writePayload { try encoder.encode(task, into: &$0) }
                } catch let tooLarge as ValueTooLarge {
                    throw ProcessPoolError.valueTooLarge("the arguments of \(name): \(tooLarge)")
                }
                if frame.count > WireProtocol.maxFrameBytes { break }
            }
        }
        let attachments = frame.writer.attachments ?? []
        frame.writer.attachments = nil
        do {
            try AttachmentsAnnouncement.check(attachments)
            try frame.end()
        } catch {
            throw ProcessPoolError.valueTooLarge("the arguments of \(name) (\(tasks.count) call\(tasks.count == 1 ? "" : "s")): \(error)")
        }
        var item = WorkItem(id: id, frame: frame.take(), attachments: attachments, sink: sink)
        item.taskName = name
        if let timeLimit {
            item.timeLimitPerTask = timeLimit
            let perTask = MonotonicClock.nanoseconds(timeLimit)
            let total = perTask.multipliedReportingOverflow(by: UInt64(max(1, tasks.count)))
            item.timeLimit = total.overflow ? .max : total.partialValue
        }
        return item
    }

    /// Stops accepting work. `wait`: block until pending and running work
    /// finished and every worker exited. `cancelFutures`: cancel every future
    /// that has not started. Idempotent. (Disfavoured so that a bare
    /// `await pool.shutdown()` in async code picks the async twin.)
    ///
    /// - Parameters:
    ///   - wait: Block the calling thread until pending and running work has
    ///     finished and every worker has exited; `false` returns at once.
    ///   - cancelFutures: Cancel every future that has not started running.
    @_disfavoredOverload
    public func shutdown(wait: Bool = true, cancelFutures: Bool = false) {
        core.shutdown(wait: wait, cancelFutures: cancelFutures)
    }

    /// The same as `shutdown(wait: true)`, without blocking a thread.
    ///
    /// - Parameter cancelFutures: Cancel every future that has not started
    ///   running.
    public func shutdown(cancelFutures: Bool = false) async {
        await core.shutdownAsync(cancelFutures: cancelFutures)
    }

    /// Shuts down without waiting, cancels pending work and sends SIGTERM
    /// (or the transport's equivalent) to every live worker.
    public func terminateWorkers() { core.stopWorkers(force: false) }

    /// As `terminateWorkers()`, with SIGKILL.
    public func killWorkers() { core.stopWorkers(force: true) }

    /// Why the pool broke, or nil while it works.
    public var brokenReason: String? { core.brokenReason }

    /// Workers running or starting now (Python's `len(executor._processes)`).
    public var liveWorkerCount: Int { core.locked { core.liveWorkerCount } }
}

extension PoolCore {
    var brokenReason: String? { locked { broken } }
}
