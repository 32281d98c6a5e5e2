import CProcessPoolShim
import Glibc
import Logging
import Synchronization

/// The transport-neutral heart of a pool: the queue of pending work, the
/// workers and what each holds, and the rules for starting, feeding,
/// retiring and losing workers. `IOLoop` (its I/O thread) drives it.
///
/// All mutable state is guarded by `lock`. Futures are completed and failed
/// outside the lock.
package final class PoolCore: @unchecked Sendable {
    let launcher: any WorkerLauncher
    let registry: TaskRegistry
    let maxWorkers: Int
    let maxTasksPerChild: Int?
    let initializer: (name: String, payload: [UInt8])?
    let logger: Logger
    let failurePolicy: FailurePolicy

    let lock = ConditionLock()
    // Guarded by lock:
    var pending = RingQueue<WorkItem>()
    var workers: [WorkerSlot] = []
    var launching = 0
    var session: (any LaunchSession)?
    var started = false
    var shutdownRequested = false
    var terminating: String?
    var broken: String?
    var ioSleeping = false
    var wakePosted = false
    var finishedFlag = false
    var finishCallbacks: [@Sendable () -> Void] = []
    /// Workers in a row that died before they were ready (FailurePolicy.retry
    /// gives up replacing them at `maxEarlyDeaths`: the start method itself
    /// is failing, and retrying would start processes for ever).
    var earlyDeaths = 0
    static let maxEarlyDeaths = 3
    /// Workers stopped and started again for not saying hello in time
    /// (launchers with `restartsSilentStarts`), at most `maxSilentRestarts`.
    var silentRestarts = 0
    static let maxSilentRestarts = 3
    /// When to try again to start the workers that could not start
    /// (FailurePolicy.retry), and the wait after the next failure.
    var relaunchAt: UInt64?
    var launchBackoff = PoolCore.firstLaunchBackoff
    static let firstLaunchBackoff: UInt64 = 1_000_000_000
    static let maxLaunchBackoff: UInt64 = 30_000_000_000
    /// Under FailurePolicy.retry: since when the pool has had work, no
    /// worker, and only failed launches (an ssh host reconnecting after its
    /// connection was cut, a passing EMFILE); it breaks once that has lasted
    /// the launcher's `relaunchGrace`.
    var workerlessSince: UInt64?

    /// Work to do once the lock is released (failing and cancelling futures
    /// runs their callbacks, which may call back into the pool).
    var afterUnlock: [() -> Void] = []

    let finished = OneShotEvent()
    let wakeDescriptor: Int32
    private let nextItemID = Atomic<UInt64>(1)
    let ioThreadID = Mutex<pthread_t?>(nil)

    package init(launcher: any WorkerLauncher, registry: TaskRegistry, maxWorkers: Int,
                 maxTasksPerChild: Int?, initializer: (any ProcessTask)?, logger: Logger,
                 failurePolicy: FailurePolicy = .breakPool) throws {
        self.launcher = launcher
        self.logger = logger
        self.failurePolicy = failurePolicy
        self.registry = registry
        self.maxWorkers = maxWorkers
        self.maxTasksPerChild = maxTasksPerChild
        if let initializer {
            let name = type(of: initializer).taskName
            guard registry.contains(name) else { throw ProcessPoolError.unregisteredTask(name) }
            let payload = try BinaryEncoder().encode(initializer)
            guard payload.count <= WireProtocol.maxFrameBytes - 64 * 1024 else {
                throw ProcessPoolError.valueTooLarge("the initializer \(name) encodes to \(payload.count) bytes, over "
                    + "the protocol's limit of \(WireProtocol.maxFrameBytes) bytes per message")
            }
            self.initializer = (name, payload)
        } else {
            self.initializer = nil
        }
        let fd = cpp_eventfd_cloexec(0, 1)
        guard fd >= 0 else { throw SystemError("eventfd") }
        wakeDescriptor = fd
    }

    deinit {
        // The I/O thread closes it when it finishes; a pool that never started closes it here.
        if !started { closeDescriptor(wakeDescriptor) }
    }

    package func makeItemID() -> UInt64 { nextItemID.add(1, ordering: .relaxed).oldValue }

    // MARK: Locking helpers

    /// Runs `body` under the lock, then what it left in `afterUnlock`.
    @discardableResult
    func locked<R>(_ body: () throws -> R) rethrows -> R {
        lock.lock()
        defer {
            let work = afterUnlock
            afterUnlock = []
            lock.unlock()
            for action in work { action() }
        }
        return try body()
    }

    /// Wakes the I/O thread if it sleeps in poll (lock held).
    func wakeLocked() {
        guard ioSleeping, !wakePosted, !finishedFlag else { return }
        wakePosted = true
        var one: UInt64 = 1
        _ = Glibc.write(wakeDescriptor, &one, 8)
    }

    // MARK: Submitting

    /// Queues an item; starts the pool on first use and a worker when none is idle.
    package func submit(_ item: WorkItem) throws {
        try ensureStarted()
        try locked {
            if let broken { throw BrokenProcessPool(reason: broken) }
            if shutdownRequested { throw ProcessPoolError.shutdown }
            let hadIdle = workers.contains { $0.isIdle }
            pending.append(item)
            if !hadIdle && !launcher.startsAllWorkersAtOnce && liveWorkerCount < maxWorkers {
                launchLocked()
            }
            dispatchLocked()
        }
    }

    /// Queues several items at once (map), with one lock round trip.
    package func submit(_ items: [WorkItem]) throws {
        guard !items.isEmpty else { return }
        try ensureStarted()
        try locked {
            if let broken { throw BrokenProcessPool(reason: broken) }
            if shutdownRequested { throw ProcessPoolError.shutdown }
            let idle = workers.count { $0.isIdle }
            for item in items { pending.append(item) }
            if !launcher.startsAllWorkersAtOnce {
                var wanted = max(0, items.count - idle)
                while wanted > 0 && liveWorkerCount < maxWorkers {
                    launchLocked()
                    wanted -= 1
                }
            }
            dispatchLocked()
        }
    }

    var liveWorkerCount: Int {
        workers.count { $0.phase != .leaving && $0.exit == nil } + launching
    }

    /// Starts the session and the I/O thread once. Workers that start all at
    /// once (fork) are started before the I/O thread exists.
    private func ensureStarted() throws {
        let first = try locked { () throws -> Bool in
            if let broken { throw BrokenProcessPool(reason: broken) }
            if shutdownRequested { throw ProcessPoolError.shutdown }
            if started { return false }
            started = true
            return true
        }
        guard first else { return }
        LivePools.add(self)
        do {
            let description = PoolDescription(registry: registry, maxWorkers: maxWorkers, logger: logger,
                                              replacesWorkers: failurePolicy.maxAttempts != nil || maxTasksPerChild != nil)
            let session = try launcher.makeSession(for: description)
            locked { self.session = session }
        } catch {
            let reason = "could not start the \(launcher.name) start method: \(error)"
            locked { breakLocked(reason) }
            try startIOThread()
            throw BrokenProcessPool(reason: reason)
        }
        if launcher.startsAllWorkersAtOnce {
            let group = CountdownEvent(count: maxWorkers)
            locked {
                for _ in 0..<maxWorkers { launchLocked(then: { group.countDown() }) }
            }
            group.wait()
        }
        try startIOThread()
    }

    /// Starts the I/O thread; if the system refuses a thread, the pool is
    /// broken with the reason (and the error thrown to the submitter).
    private func startIOThread() throws {
        let loop = IOLoop(core: self)
        do {
            try PoolThread.start(name: "ProcessPool I/O") {
                loop.run()
            }
        } catch {
            let reason = "could not start the pool's I/O thread: \(error)"
            let session = locked { () -> (any LaunchSession)? in
                breakLocked(reason)
                // Nothing will watch these workers: stop them here.
                for slot in workers where slot.exit == nil { slot.connection.kill() }
                finishedFlag = true
                defer { self.session = nil }
                return self.session
            }
            session?.close()
            LivePools.remove(self)
            finished.set()
            throw BrokenProcessPool(reason: reason)
        }
    }

    // MARK: Launching

    /// Asks the session for one more worker (lock held).
    func launchLocked(then done: (@Sendable () -> Void)? = nil) {
        guard let session, broken == nil else {
            done?()
            return
        }
        launching += 1
        // Asked once the lock is released: a launcher may call back at once,
        // on this thread.
        afterUnlock.append { [self] in session.launchWorker { [self] result in
            locked {
                launching -= 1
                switch result {
                case .success(let connection):
                    launchBackoff = PoolCore.firstLaunchBackoff
                    workerlessSince = nil
                    adopt(connection)
                case .failure(let error):
                    // One more worker could not start (EAGAIN, EMFILE, a host
                    // down): the pool carries on with the workers it has, and
                    // breaks only when none is left to run its work.
                    let reason = "could not start a \(launcher.name) worker: \(error)"
                    let now = MonotonicClock.now()
                    let retrying = failurePolicy.maxAttempts != nil && broken == nil
                    if liveWorkerCount == 0 && !pending.isEmpty {
                        // No worker for the work waiting. Under retry, try
                        // again, backing off, for a while; then break.
                        guard retrying && now &- (workerlessSince ?? now) < MonotonicClock.nanoseconds(launcher.relaunchGrace) else {
                            breakLocked(reason)
                            break
                        }
                        if workerlessSince == nil { workerlessSince = now }
                        logger.info("could not start a worker, and none is left; trying again",
                                    metadata: ["error": "\(error)", "in": "\(launchBackoff / 1_000_000) ms"])
                        relaunchLaterLocked(now: now)
                    } else {
                        logger.info("could not start one more worker; carrying on",
                                    metadata: ["error": "\(error)", "workers": "\(liveWorkerCount)"])
                        // Under FailurePolicy.retry the pool tries again later,
                        // backing off, so that a host that comes back rejoins.
                        if retrying && !shutdownRequested { relaunchLaterLocked(now: now) }
                    }
                }
                wakeLocked()
            }
            done?()
        } }
    }

    /// Asks the I/O thread to start the missing workers after the current
    /// back-off, and doubles it for the next failure (lock held).
    private func relaunchLaterLocked(now: UInt64) {
        relaunchAt = now &+ launchBackoff
        launchBackoff = min(launchBackoff * 2, PoolCore.maxLaunchBackoff)
    }

    /// Takes a started worker into the pool and sends it its configuration.
    private func adopt(_ connection: any WorkerConnection) {
        let deadline = MonotonicClock.now() &+ MonotonicClock.nanoseconds(launcher.helloTimeout)
        let slot = WorkerSlot(connection: connection, tasksLeft: maxTasksPerChild, helloDeadline: deadline)
        workers.append(slot)
        if broken != nil || terminating != nil {
            slot.signalled = true
            connection.kill()
            return
        }
        var frame = FrameBuilder()
        // The initializer's size was checked when the pool was made.
        try? ConfigureMessage(maxTasks: UInt64(maxTasksPerChild ?? 0), initializer: initializer).write(to: &frame)
        try? frame.end()
        slot.enqueue(frame.take())
        if shutdownRequested && pending.isEmpty { requestExitLocked(slot) }
        flushLocked(slot)
    }

    // MARK: Dispatching

    /// Hands pending items to workers with room, least loaded first (lock held).
    ///
    /// A worker that was idle is written to at once (the caller's thread, no
    /// hop: lowest latency). Bytes for a busy worker are left for the I/O
    /// thread, which writes everything queued in one call per worker (many
    /// frames per syscall under load). `deferWrites`: the I/O thread itself
    /// is dispatching and flushes after it has read all it could.
    func dispatchLocked(deferWrites: Bool = false) {
        guard broken == nil else { return }
        var idleTouched: [WorkerSlot] = []
        var busyTouched = false
        var timedDispatch = false
        while !pending.isEmpty {
            var best: WorkerSlot?
            // An item with a time limit goes only to a worker with nothing
            // in hand, so that it is timed from when it really starts.
            let needsIdle = pending.first.map { $0.timeLimit != nil || $0.isolated } ?? false
            for slot in workers where slot.canTakeWork && (!needsIdle || (slot.inFlight.isEmpty && !slot.hasOutbound)) {
                if best == nil || slot.inFlight.count < best!.inFlight.count { best = slot }
            }
            guard let slot = best else { break }
            let item = pending.popFirst()!
            guard item.sink.markRunning() else { continue }
            let wasIdle = slot.inFlight.isEmpty && !slot.hasOutbound
            if slot.inFlight.isEmpty { slot.headStartedAt = MonotonicClock.now() }
            // The I/O thread must wake to time a limited item.
            if item.timeLimit != nil { timedDispatch = true }
            slot.enqueue(item)
            slot.inFlight.append(item)
            if let left = slot.tasksLeft { slot.tasksLeft = left - 1 }
            if wasIdle && !deferWrites {
                idleTouched.append(slot)
            } else {
                busyTouched = true
            }
        }
        var needsPoll = (busyTouched || timedDispatch) && !deferWrites
        for slot in idleTouched {
            flushLocked(slot)
            if slot.hasOutbound { needsPoll = true }
        }
        if needsPoll { wakeLocked() }
    }

    /// Writes what is queued for every worker (lock held; the I/O thread).
    func flushAllLocked() {
        for slot in workers where slot.hasOutbound { flushLocked(slot) }
    }

    /// Writes what the worker's socket takes (lock held). A failed write
    /// leaves a frame half sent: the worker can never be in step again, so
    /// it is stopped and its exit decides what the pool reports.
    func flushLocked(_ slot: WorkerSlot) {
        guard !slot.streamClosed else { return }
        if !slot.flush() { abandonStreamLocked(slot) }
    }

    /// Stops using a worker's stream (a failed write, a malformed frame):
    /// nothing more is read from it or written to it, and the worker is
    /// killed; its exit is collected as usual (lock held).
    func abandonStreamLocked(_ slot: WorkerSlot) {
        slot.streamClosed = true
        slot.outbound.removeAll()
        slot.outboundOffset = 0
        if slot.exit == nil && !slot.signalled {
            slot.signalled = true
            slot.connection.kill()
        }
    }

    /// Sends the exit frame to a worker (lock held).
    func requestExitLocked(_ slot: WorkerSlot) {
        guard !slot.exitRequested, slot.exit == nil else { return }
        slot.exitRequested = true
        var frame = FrameBuilder(capacity: 8)
        frame.begin(.exit)
        try? frame.end()
        slot.enqueue(frame.take())
        if slot.phase == .ready { slot.phase = .leaving }
    }

    // MARK: Interrupting and retrying

    /// Interrupts `sink`'s item (``TaskFuture/interrupt()``): its worker is
    /// stopped (and replaced), the item ends cancelled and the other items
    /// that worker held are queued again. That holds for an item queued in
    /// the worker behind others too: a worker may already be running an item
    /// whose predecessors' results it has not sent yet, so the pool cannot
    /// tell which it runs. False if no worker holds it.
    package func interrupt(_ sink: any WorkSink) -> Bool {
        locked { () -> Bool in
            for slot in workers where !slot.interrupted && slot.exit == nil {
                guard let index = slot.inFlight.firstIndex(where: { $0.sink === sink }) else { continue }
                interruptLocked(slot, settling: index) { $0.sink.interrupted() }
                return true
            }
            return false
        }
    }

    /// Stops `slot`'s worker to end the item at `index` of what it holds
    /// (0: the one it runs), which `end` settles; the others go back to the
    /// front of the queue, and a replacement starts when its exit is
    /// collected (lock held).
    func interruptLocked(_ slot: WorkerSlot, settling index: Int = 0, end: @escaping (WorkItem) -> Void) {
        var items = slot.inFlight.drain()
        guard items.indices.contains(index) else { return }
        let target = items.remove(at: index)
        afterUnlock.append { end(target) }
        requeueLocked(items)
        slot.interrupted = true
        logger.debug("worker stopped to interrupt its task",
                     metadata: ["worker": "\(slot.label)", "task": "\(target.taskName)"])
        abandonStreamLocked(slot)
        wakeLocked()
    }

    /// Puts items a worker held back at the front of the queue, in order
    /// (lock held). Items whose consumer gave up are dropped.
    func requeueLocked(_ items: [WorkItem]) {
        pending.prepend(items.filter { !$0.sink.isCancelled })
    }

    /// A worker died unexpectedly under FailurePolicy.retry (lock held).
    ///
    /// Holding one item, the worker was running it: that item is charged an
    /// attempt and retried, or fails with ``WorkerLost`` when it has had them
    /// all. Holding several, the pool cannot tell which one it ran (results
    /// made but not yet sent die with the worker), so none is charged: they
    /// all go back to the queue isolated, each to be sent to a worker holding
    /// nothing else, where a death is its own.
    func retryLocked(_ slot: WorkerSlot, exit: WorkerExit, maxAttempts: Int) {
        var items = slot.inFlight.drain()
        if items.count == 1 {
            items[0].attempts.append(WorkerLost.Attempt(worker: slot.label, end: "\(exit)"))
            items[0].isolated = true
            if items[0].attempts.count >= maxAttempts {
                let lost = items.removeFirst()
                let error = WorkerLost(task: lost.taskName, attempts: lost.attempts)
                afterUnlock.append { lost.sink.fail(error) }
            }
        } else {
            for index in items.indices { items[index].isolated = true }
        }
        logger.info("worker lost; its work is retried",
                    metadata: ["worker": "\(slot.label)", "end": "\(exit)", "items": "\(items.count)"])
        requeueLocked(items)
    }

    // MARK: Breaking

    /// Marks the pool broken, fails everything not finished and stops the
    /// workers (lock held). The first reason wins.
    func breakLocked(_ reason: String) {
        guard broken == nil else { return }
        broken = reason
        logger.debug("process pool broken", metadata: ["reason": "\(reason)"])
        let error = BrokenProcessPool(reason: reason)
        var lost = pending.drain()
        for slot in workers { lost += slot.inFlight.drain() }
        afterUnlock.append { for item in lost { item.sink.fail(error) } }
        for slot in workers {
            slot.outbound.removeAll()
            slot.outboundOffset = 0
            if slot.exit == nil && !slot.signalled {
                slot.signalled = true
                slot.connection.kill()
            }
        }
        wakeLocked()
    }

    // MARK: Shutting down

    /// Stops accepting work; optionally cancels what has not started; waits
    /// for the workers to exit when `wait` is set (not on the I/O thread).
    package func shutdown(wait: Bool, cancelFutures: Bool) {
        let mustWait = locked { () -> Bool in
            shutdownRequested = true
            if cancelFutures { cancelPendingLocked() }
            wakeLocked()
            return started
        }
        guard wait, mustWait, !isIOThread else { return }
        finished.wait()
    }

    /// The async twin of `shutdown(wait: true, ...)`.
    package func shutdownAsync(cancelFutures: Bool) async {
        let mustWait = locked { () -> Bool in
            shutdownRequested = true
            if cancelFutures { cancelPendingLocked() }
            wakeLocked()
            return started
        }
        guard mustWait, !isIOThread, !Task.isCancelled else { return }
        // Cancelling the awaiting task ends the wait at once (SEMANTICS 41);
        // the pool goes on shutting down by itself.
        let resumer = OnceResumer()
        await withTaskCancellationHandler {
            await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
                resumer.set(continuation)
                onFinished { resumer.resume() }
            }
        } onCancel: {
            resumer.resume()
        }
    }

    /// Shuts down at once, cancels pending work and signals every worker.
    package func stopWorkers(force: Bool) {
        locked {
            shutdownRequested = true
            cancelPendingLocked()
            if broken == nil && terminating == nil {
                terminating = force ? "the pool's workers were killed (killWorkers())"
                    : "the pool's workers were terminated (terminateWorkers())"
            }
            for slot in workers where slot.exit == nil && !slot.signalled {
                slot.signalled = true
                if force { slot.connection.kill() } else { slot.connection.terminate() }
            }
            wakeLocked()
        }
    }

    /// `shutdown(cancelFutures: true)`: cancels the queued items that never
    /// ran (lock held). Items queued again after their worker died or was
    /// interrupted are running futures, which cancel() cannot end: they stay
    /// queued and run, as running futures do under CPython's cancel_futures.
    /// (Dropping them left their futures running forever: pool-soak.)
    private func cancelPendingLocked() {
        let items = pending.drain()
        var cancelled: [WorkItem] = []
        for item in items {
            if item.sink.isRunning { pending.append(item) } else { cancelled.append(item) }
        }
        afterUnlock.append { for item in cancelled { item.sink.cancel() } }
    }

    /// Runs `body` once the pool has finished (at once if it has).
    func onFinished(_ body: @escaping @Sendable () -> Void) {
        let now = locked { () -> Bool in
            if finishedFlag { return true }
            finishCallbacks.append(body)
            return false
        }
        if now { body() }
    }

    var isIOThread: Bool {
        let me = pthread_self()
        return ioThreadID.guarded { id in id.map { pthread_equal($0, me) != 0 } ?? false }
    }
}

/// Blocks until `count` events happened.
final class CountdownEvent: @unchecked Sendable {
    private let lock = ConditionLock()
    private var count: Int

    init(count: Int) { self.count = count }

    func countDown() {
        lock.withLock {
            count -= 1
            if count <= 0 { lock.broadcast() }
        }
    }

    func wait() {
        lock.lock()
        while count > 0 { _ = lock.wait(untilNanos: nil) }
        lock.unlock()
    }
}

/// Resumes a continuation once, whichever of several events comes first
/// (and whether it comes before or after the continuation is set).
final class OnceResumer: @unchecked Sendable {
    private let lock = ConditionLock()
    private var continuation: UnsafeContinuation<Void, Never>?
    private var fired = false

    func set(_ continuation: UnsafeContinuation<Void, Never>) {
        let resumeNow = lock.withLock { () -> Bool in
            if fired { return true }
            self.continuation = continuation
            return false
        }
        if resumeNow { continuation.resume() }
    }

    func resume() {
        let continuation = lock.withLock { () -> UnsafeContinuation<Void, Never>? in
            if fired { return nil }
            fired = true
            defer { self.continuation = nil }
            return self.continuation
        }
        continuation?.resume()
    }
}
