extension ProcessPoolExecutor {
    /// Creates a pool. No process starts until the first submit.
    ///
    /// - maxWorkers: nil = the CPUs this process may run on
    ///   (`sched_getaffinity`), or for `.ssh` the sum of the hosts' worker
    ///   counts. `<= 0` throws `ProcessPoolError.invalidMaxWorkers`.
    /// - context: nil = `.forkserver`, or `.spawn` when `maxTasksPerChild` is set.
    /// - initializer: a registered task run once in each worker before its
    ///   first task; if it throws, the pool is broken.
    /// - maxTasksPerChild: a worker exits after that many tasks and is
    ///   replaced. `<= 0` throws `ProcessPoolError.invalidOption`, and so does
    ///   combining it with `.fork`.
    public convenience init(maxWorkers: Int? = nil, context: StartMethod? = nil, tasks: TaskRegistry,
                            initializer: (any ProcessTask)? = nil, maxTasksPerChild: Int? = nil) throws {
        let method = context ?? (maxTasksPerChild != nil ? .spawn : StartMethod.defaultMethod)
        try self.init(maxWorkers: maxWorkers, context: method, tasks: tasks,
                      initializer: initializer, maxTasksPerChild: maxTasksPerChild)
    }
}

extension StartMethod {
    /// Like `multiprocessing.get_context(name)`: "fork", "spawn" or
    /// "forkserver"; anything else throws `ProcessPoolError.invalidStartMethod`.
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

/// Scoped use, like Python's `with`: the pool is shut down (waiting for its
/// work) when `body` returns or throws.
public func withProcessPool<R>(maxWorkers: Int? = nil, context: StartMethod? = nil,
                               tasks: TaskRegistry, initializer: (any ProcessTask)? = nil,
                               maxTasksPerChild: Int? = nil,
                               _ body: (ProcessPoolExecutor) async throws -> R) async throws -> R {
    let pool = try ProcessPoolExecutor(maxWorkers: maxWorkers, context: context, tasks: tasks,
                                       initializer: initializer, maxTasksPerChild: maxTasksPerChild)
    do {
        let result = try await body(pool)
        await pool.shutdown()
        return result
    } catch {
        await pool.shutdown()
        throw error
    }
}
