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
///
/// ``exitWaitLimit`` bounds that wait (no bound by default, as in CPython):
/// a test runner sets it so that a test that failed while a task of its pool
/// was stuck cannot keep the whole run from ending.
package enum LivePools {
    private struct Entry {
        weak var core: PoolCore?
    }

    private static let state = Mutex<(pools: [ObjectIdentifier: Entry], registered: Bool)>(([:], false))
    /// The process that registered the handler. A fork child inherits the
    /// handler and a copy of this table; a task there that calls `exit()`
    /// must not wait for its parent's pools (nor take the table's lock,
    /// which another parent thread may have held at the fork).
    nonisolated(unsafe) private static var owner: pid_t = 0

    /// How long the exit handler waits for live pools before it kills their
    /// workers and names them on standard error; `nil` waits for as long as
    /// their work takes.
    package static var exitWaitLimit: Duration? {
        get { limit.guarded { $0 } }
        set { limit.guarded { $0 = newValue } }
    }
    private static let limit = Mutex<Duration?>(nil)

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
        guard let limit = exitWaitLimit else {
            for core in cores { core.shutdown(wait: true, cancelFutures: false) }
            return
        }
        let deadline = MonotonicClock.now() &+ UInt64(max(0, limit.components.seconds)) * 1_000_000_000
        for core in cores { core.shutdown(wait: false, cancelFutures: false) }
        var stuck: [PoolCore] = []
        for core in cores where !core.finished.wait(untilNanos: deadline) { stuck.append(core) }
        guard !stuck.isEmpty else { return }
        let names = stuck.map { "a \($0.launcher.name) pool (\($0.liveWorkerCount) live workers)" }.joined(separator: "; ")
        let message = "ProcessPool: at exit, \(stuck.count) pool(s) still had work after \(limit): "
            + "their workers are killed: \(names)\n"
        var bytes = Array(message.utf8)[...]
        while !bytes.isEmpty {
            let n = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
            if n <= 0 && errno != EINTR { break }
            if n > 0 { bytes = bytes.dropFirst(n) }
        }
        for core in stuck { core.stopWorkers(force: true) }
        for core in stuck { core.finished.wait(untilNanos: MonotonicClock.now() &+ 5_000_000_000) }
    }
}
