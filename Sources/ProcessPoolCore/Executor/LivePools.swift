import Glibc
import Synchronization

/// The pools of this process that have started and not yet finished, so
/// that a program returning from `main` waits for their work, as CPython
/// does at interpreter exit (SEMANTICS 40).
///
/// The first pool to start registers one `atexit` handler. At exit it asks
/// every live pool to shut down and waits until its pending work is done
/// and its workers have exited. Pools stopped with `terminateWorkers()`/
/// `killWorkers()`, or shut down with `cancelFutures: true`, have no
/// pending work left, so only what is running is waited for.
enum LivePools {
    private struct Entry {
        weak var core: PoolCore?
    }

    private static let state = Mutex<(pools: [ObjectIdentifier: Entry], registered: Bool)>(([:], false))
    /// The process that registered the handler. A fork child inherits the
    /// handler and a copy of this table; a task there that calls `exit()`
    /// must not wait for its parent's pools (nor take the table's lock,
    /// which another parent thread may have held at the fork).
    nonisolated(unsafe) private static var owner: pid_t = 0

    static func add(_ core: PoolCore) {
        let register = state.guarded { state -> Bool in
            state.pools[ObjectIdentifier(core)] = Entry(core: core)
            defer { state.registered = true }
            return !state.registered
        }
        if register {
            owner = getpid()
            atexit { LivePools.waitForAll() }
        }
    }

    static func remove(_ core: PoolCore) {
        _ = state.guarded { $0.pools.removeValue(forKey: ObjectIdentifier(core)) }
    }

    /// Runs at exit: lets every live pool finish its work.
    private static func waitForAll() {
        guard getpid() == owner else { return }
        let cores = state.guarded { $0.pools.values.compactMap(\.core) }
        for core in cores { core.shutdown(wait: true, cancelFutures: false) }
    }
}
