/// The pool cannot run work any more: a worker died abruptly, an initializer
/// failed, a host was lost, or the transport broke. Every pending future fails
/// with it; submit throws it.
public struct BrokenProcessPool: Error, CustomStringConvertible, Equatable {
    /// Names the worker (pid, host) and its exit code or signal.
    public var reason: String

    /// A broken-pool error with the given reason.
    ///
    /// - Parameter reason: Why the pool broke: names the worker (pid, host)
    ///   and its exit code or signal, or what else failed.
    public init(reason: String) { self.reason = reason }

    /// "BrokenProcessPool: " followed by the reason.
    public var description: String { "BrokenProcessPool: \(reason)" }
}

/// An error thrown by a task in a worker whose type is not registered in the
/// `TaskRegistry`: its type name and description travel instead.
public struct RemoteTaskError: Error, CustomStringConvertible, Equatable {
    /// The Swift type of the error thrown in the worker.
    public var typeName: String
    /// `String(describing:)` of it.
    public var message: String
    /// Where it ran, e.g. "pid 4242 on localhost".
    public var worker: String

    /// A remote error with the given parts.
    ///
    /// - Parameters:
    ///   - typeName: The Swift type of the error thrown in the worker.
    ///   - message: `String(describing:)` of that error.
    ///   - worker: Where it ran, e.g. "pid 4242 on localhost".
    public init(typeName: String, message: String, worker: String) {
        self.typeName = typeName
        self.message = message
        self.worker = worker
    }

    /// "<typeName>: <message> (in <worker>)".
    public var description: String { "\(typeName): \(message) (in \(worker))" }
}

/// Misuse of the pool, or a time-out.
public enum ProcessPoolError: Error, Equatable, CustomStringConvertible {
    /// "maxWorkers must be greater than 0".
    case invalidMaxWorkers(Int)
    /// Says which option and why.
    case invalidOption(String)
    /// Not one of "fork", "spawn", "forkserver".
    case invalidStartMethod(String)
    /// The task's type is not in the pool's `TaskRegistry`.
    case unregisteredTask(String)
    /// "cannot schedule new futures after shutdown".
    case shutdown
    /// A result was not ready in time.
    case timeout
    /// A task's arguments exceed what one message may carry (1 GiB encoded,
    /// at most 4096 large byte arrays of at most 1 GiB each); says which.
    /// Only that submit (or that map item) fails; the pool stays usable.
    case valueTooLarge(String)

    /// A readable sentence, worded like CPython's where CPython has one.
    public var description: String {
        switch self {
        case .invalidMaxWorkers(let n): return "maxWorkers must be greater than 0 (got \(n))"
        case .invalidOption(let why): return why
        case .invalidStartMethod(let name):
            return "cannot find context for '\(name)': the start methods are fork, spawn, forkserver"
        case .unregisteredTask(let name):
            return "task '\(name)' is not in the pool's TaskRegistry (register it in the pool and in bootstrap)"
        case .shutdown: return "cannot schedule new futures after shutdown"
        case .timeout: return "timed out"
        case .valueTooLarge(let what): return what
        }
    }
}
