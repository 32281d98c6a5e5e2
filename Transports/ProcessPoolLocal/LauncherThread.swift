import ProcessPoolCore

/// The one long-lived thread that starts every local worker.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that started a child ends, not
/// the process: starting children from a pool's or a Task's thread would kill
/// them when that thread goes. This thread never ends.
final class LauncherThread: @unchecked Sendable {
    static let shared = LauncherThread()

    private let lock = ConditionLock()
    private var jobs: [() -> Void] = []
    /// Why the thread could not be started (then no local worker can start).
    private(set) var startFailure: (any Error)?

    private init() {
        do {
            try PoolThread.start(name: "ProcessPool launch") { [self] in loop() }
        } catch {
            startFailure = error
        }
    }

    /// Runs `job` on the launcher thread, after the jobs queued before it;
    /// returns the reason instead if there is no launcher thread.
    func enqueue(_ job: @escaping @Sendable () -> Void) -> (any Error)? {
        if let startFailure { return startFailure }
        lock.withLock {
            jobs.append(job)
            lock.broadcast()
        }
        return nil
    }

    private func loop() {
        while true {
            lock.lock()
            while jobs.isEmpty { _ = lock.wait(untilNanos: nil) }
            let batch = jobs
            jobs = []
            lock.unlock()
            for job in batch { job() }
        }
    }
}

/// A pool's session for the local start methods: each launch runs `start`
/// on the launcher thread. Nothing is shared per pool; `close()` runs
/// `onClose` (the forkserver's reaps a server that died meanwhile).
struct LauncherThreadSession: LaunchSession {
    let start: @Sendable () throws -> any WorkerConnection
    /// Runs when the pool is finished (the forkserver's: reap a server that died).
    var onClose: (@Sendable () -> Void)? = nil

    func launchWorker(_ completion: @escaping @Sendable (Result<any WorkerConnection, any Error>) -> Void) {
        let start = self.start
        if let failure = LauncherThread.shared.enqueue({ completion(Result { try start() }) }) {
            completion(.failure(failure))
        }
    }

    func close() { onClose?() }
}
