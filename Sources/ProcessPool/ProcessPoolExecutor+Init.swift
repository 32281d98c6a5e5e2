import Logging

extension ProcessPoolExecutor {
    /// Creates a pool. No process starts until the first submit.
    ///
    /// ```swift
    /// let pool = try ProcessPoolExecutor(tasks: TaskRegistry(CountPrimes.self))
    /// ```
    ///
    /// - Parameters:
    ///   - maxWorkers: The most workers run at once. `nil` means the CPUs this
    ///     process may run on (`sched_getaffinity`), or for `.ssh` the sum of
    ///     the hosts' worker counts.
    ///   - context: How workers start. `nil` means `.forkserver`, or `.spawn`
    ///     when `maxTasksPerChild` is set.
    ///   - tasks: The task types the pool may run; workers build the same
    ///     registry in ``ProcessPoolExecutor/bootstrap(_:)``.
    ///   - initializer: A registered task run once in each worker before its
    ///     first task; if it throws, the pool is broken.
    ///   - maxTasksPerChild: A worker exits after that many tasks and is
    ///     replaced; `nil` means no limit.
    ///   - logger: Where the pool logs (worker starts and ends, breaks, remote
    ///     stderr over ssh), at `info` level or below. Defaults to the
    ///     task-local `Logger.current`.
    ///   - failurePolicy: What a dead worker does to the pool: ``FailurePolicy/breakPool``
    ///     (the default, CPython's behaviour) breaks it;
    ///     ``FailurePolicy/retry(maxAttempts:)`` requeues the dead worker's
    ///     work, replaces the worker and fails only a task that lost its
    ///     worker on every attempt (``WorkerLost``).
    /// - Throws: ``ProcessPoolError/invalidMaxWorkers(_:)`` when `maxWorkers`
    ///   is `<= 0`; ``ProcessPoolError/invalidOption(_:)`` when
    ///   `maxTasksPerChild` is `<= 0` or combined with `.fork`, or when
    ///   `maxAttempts` is below 1;
    ///   ``ProcessPoolError/unregisteredTask(_:)`` for an initializer whose
    ///   type `tasks` lacks.
    public convenience init(maxWorkers: Int? = nil, context: StartMethod? = nil, tasks: TaskRegistry,
                            initializer: (any ProcessTask)? = nil, maxTasksPerChild: Int? = nil,
                            logger: Logger = Logger.current, failurePolicy: FailurePolicy = .breakPool) throws {
        let method = context ?? (maxTasksPerChild != nil ? .spawn : StartMethod.defaultMethod)
        try self.init(maxWorkers: maxWorkers, context: method, tasks: tasks,
                      initializer: initializer, maxTasksPerChild: maxTasksPerChild, logger: logger,
                      failurePolicy: failurePolicy)
    }
}

extension StartMethod {
    /// Looks a local start method up by name, like Python's
    /// `multiprocessing.get_context(name)`.
    ///
    /// - Parameter name: `"fork"`, `"spawn"` or `"forkserver"`.
    /// - Throws: ``ProcessPoolError/invalidStartMethod(_:)`` for any other name.
    public init(named name: String) throws {
        switch name {
        case "fork": self = .fork
        case "spawn": self = .spawn
        case "forkserver": self = .forkserver
        default: throw ProcessPoolError.invalidStartMethod(name)
        }
    }

    /// The start method used when a pool is given none: forkserver.
    public static var defaultMethod: StartMethod { .forkserver }
}

/// Runs `body` with a new pool and shuts the pool down (waiting for its
/// work) when `body` returns or throws, like Python's `with` statement.
///
/// Callable from any isolation (the main actor, an actor, top-level code,
/// nonisolated code): `body` runs in the caller's isolation, as
/// `withTaskGroup`'s does.
///
/// ```swift
/// let n = try await withProcessPool(tasks: registry) { pool in
///     try await pool.submit(CountPrimes(below: 100_000)).value
/// }
/// ```
///
/// - Parameters:
///   - maxWorkers: As in ``ProcessPoolExecutor/init(maxWorkers:context:tasks:initializer:maxTasksPerChild:logger:failurePolicy:)``.
///   - context: As there: `nil` means forkserver (spawn with `maxTasksPerChild`).
///   - tasks: The task types the pool may run.
///   - initializer: A registered task run once in each worker first.
///   - maxTasksPerChild: A worker exits after that many tasks and is replaced.
///   - logger: Where the pool logs; defaults to `Logger.current`.
///   - failurePolicy: What a dead worker does to the pool (default: break it).
///   - isolation: The caller's isolation, inherited; leave the default.
///   - body: Uses the pool; its result is returned.
/// - Returns: What `body` returned.
/// - Throws: The construction errors of ``ProcessPoolExecutor``, or what `body` throws.
public func withProcessPool<R>(maxWorkers: Int? = nil, context: StartMethod? = nil,
                               tasks: TaskRegistry, initializer: (any ProcessTask)? = nil,
                               maxTasksPerChild: Int? = nil, logger: Logger = Logger.current,
                               failurePolicy: FailurePolicy = .breakPool,
                               isolation: isolated (any Actor)? = #isolation,
                               _ body: (ProcessPoolExecutor) async throws -> R) async throws -> R {
    let pool = try ProcessPoolExecutor(maxWorkers: maxWorkers, context: context, tasks: tasks,
                                       initializer: initializer, maxTasksPerChild: maxTasksPerChild,
                                       logger: logger, failurePolicy: failurePolicy)
    do {
        let result = try await body(pool)
        await pool.shutdown()
        return result
    } catch {
        await pool.shutdown()
        throw error
    }
}
