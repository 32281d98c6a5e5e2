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

    /// Creates a pool that starts workers with `context` (no process starts
    /// until the first submit). The public initializer lives in `ProcessPool`,
    /// which resolves a nil context.
    package init(maxWorkers: Int?, context: StartMethod, tasks: TaskRegistry,
                 initializer: (any ProcessTask)?, maxTasksPerChild: Int?, logger: Logger) throws {
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
        self.maxWorkers = workers
        self.startMethod = context
        self.core = try PoolCore(launcher: launcher, registry: tasks, maxWorkers: workers,
                                 maxTasksPerChild: maxTasksPerChild, initializer: initializer, logger: logger)
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
        if let broken = core.brokenReason { throw BrokenProcessPool(reason: broken) }
        let future = TaskFuture<T.Output>()
        let item = try makeItem([task], sink: future)
        try core.submit(item)
        return future
    }

    /// Encodes calls into one `run` frame.
    func makeItem<T: ProcessTask>(_ tasks: some Collection<T>, sink: any WorkSink) throws -> WorkItem {
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
        return WorkItem(id: id, frame: frame.take(), attachments: attachments, sink: sink)
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
