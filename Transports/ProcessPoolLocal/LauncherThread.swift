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

    private init() {
        PoolThread.start(name: "ProcessPool launch") { [self] in loop() }
    }

    /// Runs `job` on the launcher thread, after the jobs queued before it.
    func enqueue(_ job: @escaping @Sendable () -> Void) {
        lock.withLock {
            jobs.append(job)
            lock.broadcast()
        }
    }

    /// Runs `job` on the launcher thread and waits for its result.
    func run<R: Sendable>(_ job: @escaping @Sendable () -> R) -> R {
        let done = OneShotEvent()
        let box = ResultBox<R>()
        enqueue {
            box.value = job()
            done.set()
        }
        done.wait()
        return box.value!
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
/// on the launcher thread. Nothing is shared per pool, so `close()` is empty.
struct LauncherThreadSession: LaunchSession {
    let start: @Sendable () throws -> any WorkerConnection

    func launchWorker(_ completion: @escaping @Sendable (Result<any WorkerConnection, any Error>) -> Void) {
        let start = self.start
        LauncherThread.shared.enqueue { completion(Result { try start() }) }
    }

    func close() {}
}

private final class ResultBox<R>: @unchecked Sendable {
    var value: R?
}
