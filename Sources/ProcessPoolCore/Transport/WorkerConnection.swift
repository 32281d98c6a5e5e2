import Logging

/// How a worker ended, as its transport reports it.
public enum WorkerExit: Sendable, Equatable, CustomStringConvertible {
    /// The worker exited with this code.
    case exited(Int32)
    /// The worker was killed by this signal.
    case signaled(Int32)
    /// The worker is gone and no status is known (a lost connection, a reaped child).
    case lost(String)

    /// "exit code 3", "signal SIGKILL", or the loss's explanation.
    public var description: String {
        switch self {
        case .exited(let code): return "exit code \(code)"
        case .signaled(let signal): return "signal \(signalName(signal))"
        case .lost(let why): return why
        }
    }

    /// A clean exit (code 0).
    public var isClean: Bool { self == .exited(0) }
}

/// One running worker as the core sees it: a byte stream and news of its end.
///
/// A transport (local processes, ssh) implements this; the core never learns
/// how the worker was started. The core reads and writes `streamDescriptor`
/// (it makes it non-blocking) and polls `exitDescriptor`; it never closes
/// either: it calls `close()` once the worker's exit has been collected.
public protocol WorkerConnection: AnyObject, Sendable {
    /// A connected stream socket carrying the framed protocol both ways.
    var streamDescriptor: Int32 { get }
    /// Becomes readable once the worker has ended (a pidfd, an eventfd, ...).
    var exitDescriptor: Int32 { get }
    /// Names the worker for errors and logs, e.g. "pid 4242 on localhost".
    var label: String { get }
    /// How the worker ended, once `exitDescriptor` is readable; nil while it runs.
    /// Reaps the worker where that applies. Called on the pool's I/O thread.
    func collectExit() -> WorkerExit?
    /// Asks the worker to stop now (SIGTERM or its equivalent).
    func terminate()
    /// Stops the worker by force (SIGKILL or its equivalent).
    func kill()
    /// Releases the descriptors; called once, after the exit was collected.
    func close()
}

/// What a launcher needs to know about the pool it starts workers for.
public struct PoolDescription: Sendable {
    /// The tasks the workers run (a fork child serves these directly).
    public var registry: TaskRegistry
    /// How many workers the pool will run at most.
    public var maxWorkers: Int
    /// The pool's logger (the caller's): transports log here too, at `info`
    /// level or below.
    public var logger: Logger
    /// Whether the pool may start workers after its first ones: to replace
    /// workers that died (a retrying `FailurePolicy`) or that ran their
    /// `maxTasksPerChild`. The fork start method then forks every worker
    /// from a template process taken at the first launch, never from this
    /// busy multi-threaded process mid-run.
    public var replacesWorkers: Bool

    /// A description of a pool.
    ///
    /// - Parameters:
    ///   - registry: The tasks the workers run.
    ///   - maxWorkers: How many workers the pool runs at most.
    ///   - logger: Where the transport logs.
    ///   - replacesWorkers: Whether workers may be started after the first ones.
    public init(registry: TaskRegistry, maxWorkers: Int, logger: Logger = Logger.current,
                replacesWorkers: Bool = false) {
        self.registry = registry
        self.maxWorkers = maxWorkers
        self.logger = logger
        self.replacesWorkers = replacesWorkers
    }
}

/// A way of starting workers: the transport-neutral interface behind
/// `StartMethod`. A third party can add a start method by implementing it.
public protocol WorkerLauncher: Sendable {
    /// The start method's name ("spawn", "fork", "forkserver", "ssh").
    var name: String { get }
    /// Workers to run when `maxWorkers` is nil; nil means the usable CPUs.
    var defaultWorkerCount: Int? { get }
    /// Start every worker at the first submit (fork) rather than on demand.
    var startsAllWorkersAtOnce: Bool { get }
    /// Whether workers may be retired and replaced (false for fork).
    var supportsMaxTasksPerChild: Bool { get }
    /// How long a started worker may take to say hello before the pool breaks.
    var helloTimeout: Duration { get }
    /// Whether a worker that has not said hello within ``helloTimeout`` is
    /// stopped and started again (up to three times per pool) rather than
    /// breaking the pool. True for fork: a forked child can inherit a lock,
    /// or a one-time initialization, that another thread of the parent held
    /// at that instant, and wait for it forever before it says hello; it has
    /// run none of the user's code, and a new fork will most likely not be
    /// caught again.
    var restartsSilentStarts: Bool { get }
    /// Under a retrying failure policy, how long a pool with work waiting
    /// and no live worker keeps trying to start one (backing off from 1 s)
    /// before it breaks, naming the last error.
    var relaunchGrace: Duration { get }
    /// Called once per pool, at its first submit, from the submitting thread.
    ///
    /// - Parameter pool: The pool's registry, worker count and logger.
    /// - Returns: The session that starts this pool's workers.
    /// - Throws: Any error that keeps the start method from starting (no
    ///   hosts, a server that cannot start): the pool is then broken, and
    ///   that submit throws ``BrokenProcessPool`` naming this error.
    func makeSession(for pool: PoolDescription) throws -> any LaunchSession
}

extension WorkerLauncher {
    /// Start on demand.
    public var startsAllWorkersAtOnce: Bool { false }
    /// Workers may be replaced.
    public var supportsMaxTasksPerChild: Bool { true }
    /// The CPUs this process may run on.
    public var defaultWorkerCount: Int? { nil }
    /// Thirty seconds.
    public var helloTimeout: Duration { .seconds(30) }
    /// Ten seconds.
    public var relaunchGrace: Duration { .seconds(10) }
    /// False: a silent start breaks the pool.
    public var restartsSilentStarts: Bool { false }
}

/// A pool's use of a launcher: starts its workers, releases what they share.
public protocol LaunchSession: Sendable {
    /// Starts one worker and calls `completion` exactly once, from any thread.
    /// Must not block the caller for long: start-up may be slow (ssh).
    ///
    /// - Parameter completion: Receives the new worker's connection, or the
    ///   error that kept it from starting (the pool carries on with the
    ///   workers it has, and breaks when none is left to run its work).
    func launchWorker(_ completion: @escaping @Sendable (Result<any WorkerConnection, any Error>) -> Void)
    /// The pool is finished: release shared resources (connections, servers).
    func close()
}
