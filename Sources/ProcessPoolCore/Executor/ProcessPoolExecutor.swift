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
        var frame = FrameBuilder(capacity: 64 + name.utf8.count + (bitwise ? tasks.count * MemoryLayout<T>.stride : 0))
        frame.begin(.run)
        frame.writer.writeVarint(id)
        frame.writer.writeString(name)
        frame.writer.writeVarint(UInt64(tasks.count))
        if bitwise {
            frame.writer.write(ValueLayout.block.rawValue)
            BitwiseTypes.writeBlock(tasks, into: &frame.writer)
        } else {
            frame.writer.write(ValueLayout.separate.rawValue)
            frame.writer.attachments = []
            let encoder = BinaryEncoder()
            for task in tasks { try frame.writePayload { try encoder.encode(task, into: &$0) } }
        }
        let attachments = frame.writer.attachments ?? []
        frame.writer.attachments = nil
        try frame.end()
        return WorkItem(id: id, frame: frame.take(), attachments: attachments, sink: sink)
    }

    /// Stops accepting work. `wait`: block until pending and running work
    /// finished and every worker exited. `cancelFutures`: cancel every future
    /// that has not started. Idempotent. (Disfavoured so that a bare
    /// `await pool.shutdown()` in async code picks the async twin.)
    @_disfavoredOverload
    public func shutdown(wait: Bool = true, cancelFutures: Bool = false) {
        core.shutdown(wait: wait, cancelFutures: cancelFutures)
    }

    /// The same as `shutdown(wait: true)`, without blocking a thread.
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
