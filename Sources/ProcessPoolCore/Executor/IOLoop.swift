import CProcessPoolShim
import Glibc

/// The pool's I/O thread (CPython's "executor manager thread"): polls every
/// worker's stream and exit descriptor, reads and routes results, writes
/// what the submitters could not, notices deaths, retires and replaces
/// workers, and winds the pool down.
final class IOLoop: @unchecked Sendable {
    let core: PoolCore
    /// How long a worker whose stream closed may take to report its exit
    /// before it is killed.
    static let exitGraceNanos: UInt64 = 2_000_000_000

    init(core: PoolCore) { self.core = core }

    func run() {
        core.ioThreadID.guarded { $0 = pthread_self() }
        var fds: [pollfd] = []
        var slots: [WorkerSlot] = []
        while true {
            let timeout = core.locked { () -> Int32? in
                maintainLocked()
                if isFinishedLocked() { return nil }
                fds.removeAll(keepingCapacity: true)
                slots.removeAll(keepingCapacity: true)
                fds.append(pollfd(fd: core.wakeDescriptor, events: Int16(POLLIN), revents: 0))
                var deadline: UInt64 = .max
                for slot in core.workers {
                    slots.append(slot)
                    var events = Int16(0)
                    if !slot.streamClosed {
                        events = Int16(POLLIN)
                        if slot.hasOutbound { events |= Int16(POLLOUT) }
                    }
                    fds.append(pollfd(fd: slot.streamClosed ? -1 : slot.stream, events: events, revents: 0))
                    fds.append(pollfd(fd: slot.exitDescriptor, events: Int16(POLLIN), revents: 0))
                    if slot.phase == .starting && !slot.saidHello { deadline = min(deadline, slot.helloDeadline) }
                    if let eof = slot.eofDeadline { deadline = min(deadline, eof) }
                    if let limit = slot.headDeadline { deadline = min(deadline, limit) }
                }
                if let relaunch = core.relaunchAt { deadline = min(deadline, relaunch) }
                core.ioSleeping = true
                if deadline == .max { return -1 }
                let now = MonotonicClock.now()
                return deadline <= now ? 0 : Int32(min((deadline - now) / 1_000_000 + 1, 60_000))
            }
            guard let timeout else { break }
            let ready = Syscall.poll(&fds, timeoutMilliseconds: timeout)
            core.locked {
                core.ioSleeping = false
                core.wakePosted = false
            }
            if ready < 0 {
                core.locked { core.breakLocked("poll failed: \(SystemError("poll"))") }
                continue
            }
            if fds[0].revents != 0 {
                var value: UInt64 = 0
                _ = Glibc.read(core.wakeDescriptor, &value, 8)
            }
            for (index, slot) in slots.enumerated() {
                let stream = fds[1 + 2 * index].revents
                let exited = fds[2 + 2 * index].revents
                if stream & Int16(POLLOUT) != 0 {
                    core.locked { core.flushLocked(slot) }
                }
                if stream & Int16(POLLIN | POLLHUP | POLLERR) != 0 || exited != 0 {
                    readAvailable(slot, untilDrained: exited != 0)
                }
                if exited != 0 { collectExit(slot) }
            }
            // Everything dispatched while reading goes out now, one write per worker.
            core.locked { core.flushAllLocked() }
        }
        finish()
    }

    // MARK: Reading

    /// Reads what the worker sent and handles each complete frame.
    private func readAvailable(_ slot: WorkerSlot, untilDrained: Bool) {
        if core.locked({ slot.streamClosed }) { return }
        var rounds = 0
        while untilDrained || rounds < 16 {
            rounds += 1
            var outcome = Syscall.IO.endOfStream
            _ = slot.splitter.fill { buffer in
                outcome = Syscall.read(slot.stream, into: buffer)
                if case .bytes(let n) = outcome { return n }
                return 0
            }
            if case .bytes = outcome {
                do {
                    while try slot.splitter.nextFrame({ kind, body, attachments in
                        try handleFrame(slot, kind, body, attachments)
                    }) {}
                } catch {
                    // The stream is out of step: read no more of it (what
                    // the worker sends next is not buffered), break the
                    // pool, which stops the worker.
                    slot.splitter.discard()
                    core.locked {
                        core.breakLocked("malformed frame from worker \(slot.label): \(error)")
                        core.abandonStreamLocked(slot)
                    }
                    return
                }
                continue
            }
            if outcome == .wouldBlock { break }
            // EOF or a broken stream.
            core.locked {
                if !slot.streamClosed {
                    slot.streamClosed = true
                    if slot.exit == nil {
                        slot.eofDeadline = MonotonicClock.now() &+ Self.exitGraceNanos
                    }
                }
            }
            break
        }
        slot.splitter.shrinkIfIdle()
    }

    private func handleFrame(_ slot: WorkerSlot, _ kind: FrameKind, _ body: UnsafeRawBufferPointer,
                             _ attachments: [[UInt8]]) throws {
        var reader = ByteReader(body)
        switch kind {
        case .results:
            let header = try ResultsHeader(from: &reader)
            let item = try core.locked { () throws -> WorkItem? in
                // A worker stopped to interrupt a task may have sent results
                // for items now queued again: they are not read. (Checked
                // under this lock: another thread may interrupt the worker,
                // taking its items, between two frames.)
                if slot.interrupted { return nil }
                guard let head = slot.inFlight.first else {
                    if core.broken != nil { return nil }
                    throw ProtocolViolation("results for item \(header.itemID), which this worker does not hold")
                }
                guard head.id == header.itemID else {
                    throw ProtocolViolation("results for item \(header.itemID), expected \(head.id)")
                }
                _ = slot.inFlight.popFirst()
                slot.headStartedAt = MonotonicClock.now()
                slot.recordRunTime(nanos: header.runNanos)
                core.dispatchLocked(deferWrites: true)
                return head
            }
            guard let item else { return }
            let context = OutcomeContext(registry: core.registry, worker: slot.label, attachments: attachments)
            do {
                try item.sink.complete(outcomes: &reader, header: header, context: context)
            } catch {
                item.sink.fail(BrokenProcessPool(reason: "malformed results from worker \(slot.label): \(error)"))
                throw error
            }
        case .hello:
            let hello = try HelloMessage(from: &reader)
            try core.locked {
                guard slot.phase == .starting, !slot.saidHello else {
                    throw ProtocolViolation("a second hello")
                }
                slot.saidHello = true
                // Transports that cannot know the pid (ssh) name the host; the
                // hello's pid goes into the label only, never into a signal.
                if !slot.label.contains("pid") { slot.label = "pid \(hello.pid) on \(slot.label)" }
            }
        case .ready:
            let ready = try ReadyHeader(from: &reader)
            var failure: String?
            if !ready.ok {
                let context = OutcomeContext(registry: core.registry, worker: slot.label)
                switch try readOutcome(Never?.self, from: &reader, context: context) {
                case .failure(let error): failure = String(describing: error)
                case .success: failure = "unknown error"
                }
            }
            try core.locked {
                guard slot.saidHello, slot.phase == .starting else {
                    throw ProtocolViolation("ready before hello, or twice")
                }
                if let failure {
                    core.breakLocked("the initializer failed in worker \(slot.label): \(failure)")
                    return
                }
                slot.phase = slot.exitRequested ? .leaving : .ready
                core.earlyDeaths = 0
                core.dispatchLocked()
            }
        case .goodbye:
            _ = try GoodbyeMessage(from: &reader)
            core.locked {
                slot.saidGoodbye = true
                slot.phase = .leaving
            }
        case .configure, .run, .exit, .attachments:
            throw ProtocolViolation("unexpected frame \(kind) from a worker")
        }
    }

    // MARK: Exits

    private func collectExit(_ slot: WorkerSlot) {
        guard let exit = slot.connection.collectExit() else { return }
        core.locked {
            slot.exit = exit
            slot.streamClosed = true
            slot.eofDeadline = nil
            let expected = slot.interrupted
                || ((slot.saidGoodbye || slot.exitRequested) && exit.isClean && slot.inFlight.isEmpty)
                || (slot.stoppedBeforeHello && slot.inFlight.isEmpty)
            let early = slot.phase == .starting
            if !expected {
                if let terminating = core.terminating {
                    core.breakLocked("\(terminating); worker \(slot.label) ended with \(exit)")
                } else if core.broken == nil, let attempts = core.failurePolicy.maxAttempts,
                          !early || core.earlyDeaths + 1 < PoolCore.maxEarlyDeaths {
                    if early { core.earlyDeaths += 1 }
                    core.retryLocked(slot, exit: exit, maxAttempts: attempts)
                } else if core.broken == nil {
                    let held = slot.inFlight.count
                    let what = held == 0 ? "while idle" : "while holding \(held) work item\(held == 1 ? "" : "s")"
                    let method = slot.label.contains(core.launcher.name) ? "" : " (\(core.launcher.name))"
                    core.breakLocked("a process in the pool was terminated abruptly: worker \(slot.label)"
                        + "\(method) ended with \(exit) \(what)")
                }
            }
            core.workers.removeAll { $0 === slot }
            slot.connection.close()
            // Replace a retired, lost or interrupted worker while work
            // remains (fork, which starts no worker on demand: always, until
            // shutdown).
            let wanted = !core.pending.isEmpty || (core.launcher.startsAllWorkersAtOnce && !core.shutdownRequested)
            if core.broken == nil && wanted && core.liveWorkerCount < core.maxWorkers {
                core.launchLocked()
            }
        }
    }

    // MARK: Upkeep

    /// Deadlines, shutdown progress (lock held).
    private func maintainLocked() {
        let now = MonotonicClock.now()
        for slot in core.workers where slot.exit == nil {
            if slot.phase == .starting && !slot.saidHello && now >= slot.helloDeadline && core.broken == nil
                && !slot.stoppedBeforeHello {
                let limit = core.launcher.helloTimeout
                if core.launcher.restartsSilentStarts {
                    if core.silentRestarts < PoolCore.maxSilentRestarts {
                        // It holds no work (work goes only to workers that
                        // said hello); its exit brings a replacement.
                        core.silentRestarts += 1
                        core.logger.warning("a worker did not start within its limit; stopping it and starting another",
                                            metadata: ["worker": "\(slot.label)", "limit": "\(limit)"])
                        slot.stopBeforeHello()
                    } else {
                        core.breakLocked("worker \(slot.label) did not start the protocol within \(limit), "
                            + "nor did \(PoolCore.maxSilentRestarts) started again in its place: a \(core.launcher.name) "
                            + "child may be waiting for a lock another thread of this process held at the fork")
                    }
                } else {
                    core.breakLocked("worker \(slot.label) did not start the protocol within "
                        + "\(limit): does main() call ProcessPoolExecutor.bootstrap first?")
                }
            }
            if let limit = slot.headDeadline, now >= limit, core.broken == nil {
                let worker = slot.label
                core.interruptLocked(slot) { item in
                    item.sink.fail(TaskTimeLimitExceeded(task: item.taskName, worker: worker,
                                                         limit: item.timeLimitPerTask ?? .zero))
                }
            }
            if let eof = slot.eofDeadline, now >= eof, !slot.signalled {
                slot.signalled = true
                slot.connection.kill()
                slot.eofDeadline = nil
            }
        }
        // Workers that could not start: try again (FailurePolicy.retry).
        if let relaunch = core.relaunchAt, now >= relaunch {
            core.relaunchAt = nil
            let wanted = !core.pending.isEmpty || core.launcher.startsAllWorkersAtOnce
            // After a shutdown only for work still queued (none may be left to run it).
            if core.broken == nil && (!core.shutdownRequested || !core.pending.isEmpty) && wanted {
                for _ in 0..<max(0, core.maxWorkers - core.liveWorkerCount) { core.launchLocked() }
            }
        }
        // Shutdown: once no work is left, ask every worker to exit.
        if core.shutdownRequested && core.broken == nil {
            // Cancelled items at the head go (the rest are skipped when
            // dispatch reaches them): no rescan of a long backlog per pass.
            while let head = core.pending.first, head.sink.isCancelled { _ = core.pending.popFirst() }
            let busy = !core.pending.isEmpty || core.workers.contains { !$0.inFlight.isEmpty }
            if !busy {
                for slot in core.workers where slot.exit == nil {
                    if slot.phase == .starting && !slot.saidHello && !slot.signalled {
                        // No work for it, and it has run none of the user's
                        // code (hello comes before the initializer): stop
                        // it rather than wait for it. A fork child caught in
                        // a runtime lock another thread held at the fork
                        // never reads its exit, and shutdown waited for its
                        // hello limit (30 s).
                        slot.stopBeforeHello()
                        continue
                    }
                    core.requestExitLocked(slot)
                    core.flushLocked(slot)
                }
            } else if core.liveWorkerCount == 0 && core.launching == 0 && !core.pending.isEmpty {
                core.launchLocked()
            }
        }
    }

    private func isFinishedLocked() -> Bool {
        (core.shutdownRequested || core.broken != nil) && core.workers.isEmpty && core.launching == 0
            && (core.pending.isEmpty || core.broken != nil)
    }

    private func finish() {
        LivePools.remove(core)
        let callbacks = core.locked { () -> [@Sendable () -> Void] in
            core.finishedFlag = true
            core.ioSleeping = false
            closeDescriptor(core.wakeDescriptor)
            core.session?.close()
            core.session = nil
            defer { core.finishCallbacks = [] }
            return core.finishCallbacks
        }
        core.ioThreadID.guarded { $0 = nil }
        core.finished.set()
        for callback in callbacks { callback() }
    }
}
