// pool-soak: the rounds that exercise surviving faults — FailurePolicy.retry
// (workers killed under a map, a poison task), TaskFuture.interrupt() and
// per-task time limits. Each checks its invariants and reports a violation
// (with the seed and round) through `violation`.
import Glibc
import PoolTestSupport
import ProcessPool
import ProcessPoolCore

/// A file that never exists: a `WaitForFile` on it runs until stopped.
let neverGate = "/nonexistent-pool-soak-gate/never"

/// The parent of a live (not zombie) process, from /proc.
func parentOf(_ pid: pid_t) -> pid_t? {
    guard let stat = readTextFile("/proc/\(pid)/stat"), let close = stat.lastIndex(of: ")") else { return nil }
    let fields = stat[stat.index(after: close)...].split(separator: " ")
    guard fields.count > 2, fields[0] != "Z" else { return nil }
    return pid_t(fields[1])
}

/// Whether `pid` is a live worker of this soak: a child of ours, or of our
/// forkserver or a fork pool's template; over ssh, one of the soak sshd's remote workers (they run on
/// this machine, so the pid a task reports can be signalled). A pid that is
/// neither is never signalled.
func isOurWorker(_ pid: pid_t, ssh: SSHTarget?) -> Bool {
    guard pid > 1, pid != getpid() else { return false }
    if let ssh { return ssh.server.remoteWorkers().contains(pid) }
    guard let parent = parentOf(pid) else { return false }
    if parent == getpid() { return true }
    // A worker of a forkserver or of a fork pool's template: our grandchild.
    return parentOf(parent) == getpid()
}

/// Workers the retry maps SIGKILLed (local methods).
nonisolated(unsafe) var killedBySoak = Set<pid_t>()

/// Whether a worker label ("pid N on localhost ...") names a worker the soak killed.
func killedBySoak(label: String) -> Bool {
    let words = label.split(separator: " ")
    guard let at = words.firstIndex(of: "pid"), at + 1 < words.count, let pid = pid_t(words[at + 1]) else { return false }
    return killedBySoak.contains(pid)
}

/// Cuts the ssh connection of a pool: the relay's sockets shut, or the sshd
/// connection processes SIGKILLed.
func cutConnection(_ ssh: SSHTarget, viaRelay: Bool) {
    if viaRelay, let relay = ssh.relay {
        _ = relay.cutConnections()
    } else {
        for connection in ssh.server.connectionProcesses() { _ = kill(connection, SIGKILL) }
    }
}

// MARK: Retry

/// A map of TaggedEcho items in a pool with `retry(maxAttempts: attempts)`,
/// with the workers that answer SIGKILLed at random points (over ssh, now and
/// then the connection cut instead): every result arrives once, in order,
/// and the pool is not broken. A map may only fail with `WorkerLost` (of
/// exactly `attempts` attempts) if it saw at least that many kills.
func retryMap(_ pool: ProcessPoolExecutor, ssh: SSHTarget?, attempts: Int, workers: Int,
              random: inout SoakRandom) async {
    let n = Int.random(in: 10...300, using: &random)
    let chunk = Int.random(in: 1...16, using: &random)
    let buffer: Int? = Bool.random(using: &random) ? nil : Int.random(in: 1...4, using: &random)
    let sleep = [0, 200, 1000, 3000].randomElement(using: &random)!
    let killAt = Set((0..<Int.random(in: 1...4, using: &random)).map { _ in Int.random(in: 1...n, using: &random) })
    counts.maps += 1
    counts.retryMaps += 1
    counts.tasks += n
    var index = 0
    var charged = 0  // attempts the kills may have charged, at most
    let what = "retry map of \(n) (chunk \(chunk), buffer \(buffer.map(String.init) ?? "-"), \(sleep) µs, maxAttempts \(attempts))"
    do {
        for try await output in try pool.map((0..<n).map { TaggedEcho($0, microseconds: UInt32(sleep)) },
                                             timeout: .seconds(120), chunkSize: chunk, bufferSize: buffer) {
            if output.value != index {
                violation("\(what): result \(index) was item \(output.value)")
                return
            }
            index += 1
            guard killAt.contains(index) else { continue }
            let cut = ssh != nil && Int.random(in: 0..<4, using: &random) == 0
            let viaRelay = Bool.random(using: &random)
            if let ssh, cut {
                cutConnection(ssh, viaRelay: viaRelay)
                counts.retryCuts += 1
                charged += workers
            } else if isOurWorker(output.pid, ssh: ssh) {
                _ = kill(output.pid, SIGKILL)
                killedBySoak.insert(output.pid)
                counts.retryKills += 1
                charged += 1
            }
        }
        if index != n { violation("\(what) ended after \(index) results") }
    } catch let lost as WorkerLost {
        if charged < attempts || lost.attempts.count != attempts {
            violation("\(what) failed after \(index) results and \(charged) kills: \(lost)")
        }
    } catch {
        violation("\(what) failed after \(index) results and \(charged) kills: \(error)")
    }
    if let reason = pool.brokenReason { violation("\(what): the pool broke: \(reason)") }
}

/// A poison task (`Die(.sigsegv)`) among good ones in a pool with
/// `retry(maxAttempts: attempts)`: it fails alone with `WorkerLost` naming
/// exactly `attempts` attempts; every good task succeeds; the pool works on.
func poisonTask(_ pool: ProcessPoolExecutor, ssh: SSHTarget?, attempts: Int, random: inout SoakRandom) async throws {
    let before = Int.random(in: 0...40, using: &random)
    let after = Int.random(in: 0...40, using: &random)
    var good: [(TaskFuture<Int>, Int)] = []
    for i in 0..<before { good.append((try pool.submit(Echo(i)), i)) }
    let poison = try pool.submit(Die(.sigsegv))
    for i in before..<(before + after) { good.append((try pool.submit(Echo(i)), i)) }
    counts.poisons += 1
    counts.tasks += before + after + 1
    var poisonOutcome = "unsettled"
    switch await settle(poison, 120) {
    case .failed(let lost as WorkerLost):
        poisonOutcome = "\(lost)"
        if lost.attempts.count != attempts { violation("poison task: \(lost.attempts.count) attempts, not \(attempts): \(lost)") }
        if !lost.task.contains("Die") { violation("poison task: WorkerLost names \(lost.task), not Die: \(lost)") }
        // An attempt may also have landed on a worker a retry map had just
        // SIGKILLed (its death not yet noticed when the poison task came):
        // that end is SIGKILL, and its pid is one the soak killed.
        if ssh == nil, !lost.attempts.allSatisfy({ $0.end.contains("SIGSEGV") || killedBySoak(label: $0.worker) }) {
            violation("poison task: an attempt did not end with SIGSEGV: \(lost)")
        }
        if !"\(lost)".contains("attempt \(attempts)") { violation("poison task: description lacks attempt \(attempts): \(lost)") }
    case .failed(let error): violation("poison task failed with \(error), not WorkerLost")
    case .value(let value): violation("poison task returned \(value)")
    case .hung: violation("poison task did not settle in 120 s")
    }
    for (future, expected) in good {
        switch await settle(future) {
        case .value(let value): if value != expected { violation("good task beside a poison one gave \(value), not \(expected)") }
        case .failed(let error):
            violation("good task \(expected) (of \(before) before and \(after) after the poison task) failed: \(error); "
                + "the poison task: \(poisonOutcome)")
        case .hung: violation("good task \(expected) beside a poison one did not settle in 60 s")
        }
    }
    if let reason = pool.brokenReason { violation("a poison task broke a retrying pool: \(reason)") }
    switch await settle(try pool.submit(Echo(11))) {
    case .value(let value): if value != 11 { violation("Echo after a poison task gave \(value)") }
    case .failed(let error): violation("Echo after a poison task failed: \(error)")
    case .hung: violation("Echo after a poison task did not settle in 60 s")
    }
    counts.tasks += 1
}

// MARK: Interrupt

/// An endless task among quick ones, interrupted once it runs: it ends
/// cancelled, the quick ones all succeed, the pool is not broken.
func interruptRunning(_ pool: ProcessPoolExecutor, random: inout SoakRandom) async throws {
    let before = Int.random(in: 0...5, using: &random)
    let after = Int.random(in: 1...8, using: &random)
    var quick: [(TaskFuture<Int>, Int)] = []
    for i in 0..<before { quick.append((try pool.submit(Echo(200 + i)), 200 + i)) }
    let blocker = try pool.submit(WaitForFile(path: neverGate))
    for i in before..<(before + after) { quick.append((try pool.submit(Echo(200 + i)), 200 + i)) }
    counts.tasks += before + after + 1
    let deadline = soakNow() + 30
    while !blocker.isRunning && !blocker.isDone && soakNow() < deadline { try? await Task.sleep(for: .milliseconds(1)) }
    if !blocker.isRunning { violation("an endless task was not running 30 s after its submission (done: \(blocker.isDone))") }
    let cancelled = blocker.interrupt()
    counts.interrupts += 1
    if !cancelled { violation("interrupt() of a running task returned false") }
    switch await settle(blocker) {
    case .failed(is CancellationError): break
    case .failed(let error): violation("an interrupted task failed with \(error), not CancellationError")
    case .value(let value): violation("an interrupted endless task returned \(value)")
    case .hung: violation("an interrupted task did not settle in 60 s")
    }
    if !blocker.isCancelled { violation("an interrupted future is not cancelled") }
    for (future, expected) in quick {
        switch await settle(future) {
        case .value(let value): if value != expected { violation("quick task beside an interrupted one gave \(value), not \(expected)") }
        case .failed(let error): violation("quick task \(expected) beside an interrupted one failed: \(error)")
        case .hung: violation("quick task \(expected) beside an interrupted one did not settle in 60 s")
        }
    }
    if let reason = pool.brokenReason { violation("interrupting a task broke the pool: \(reason)") }
}

// MARK: Time limits

/// Endless tasks submitted with a short time limit among quick ones with a
/// generous limit (sometimes in a map too): each endless one fails with
/// `TaskTimeLimitExceeded` naming it and its limit, the quick ones succeed,
/// all within a bound.
func timeLimits(_ pool: ProcessPoolExecutor, random: inout SoakRandom) async throws {
    let endless = Int.random(in: 1...3, using: &random)
    let quick = Int.random(in: 1...10, using: &random)
    let milliseconds = Int.random(in: 100...400, using: &random)
    let limit = Duration.milliseconds(milliseconds)
    let order = (Array(repeating: true, count: endless) + Array(repeating: false, count: quick)).shuffled(using: &random)
    let start = soakNow()
    var limited: [TaskFuture<Int>] = []
    var quickOnes: [(TaskFuture<Int>, Int)] = []
    for (i, isEndless) in order.enumerated() {
        if isEndless {
            limited.append(try pool.submit(WaitForFile(path: neverGate), timeLimit: limit))
        } else {
            quickOnes.append((try pool.submit(Echo(300 + i), timeLimit: .seconds(60)), 300 + i))
        }
    }
    counts.tasks += order.count
    for future in limited {
        switch await settle(future) {
        case .failed(let exceeded as TaskTimeLimitExceeded):
            counts.timeLimitsHit += 1
            if !exceeded.task.contains("WaitForFile") { violation("TaskTimeLimitExceeded names \(exceeded.task), not WaitForFile: \(exceeded)") }
            if exceeded.limit != limit { violation("TaskTimeLimitExceeded gives the limit \(exceeded.limit), not \(limit)") }
        case .failed(let error): violation("an endless task with a \(milliseconds) ms limit failed with \(error)")
        case .value(let value): violation("an endless task with a \(milliseconds) ms limit returned \(value)")
        case .hung: violation("an endless task with a \(milliseconds) ms limit did not settle in 60 s")
        }
    }
    for (future, expected) in quickOnes {
        switch await settle(future) {
        case .value(let value): if value != expected { violation("quick task with a time limit gave \(value), not \(expected)") }
        case .failed(let error): violation("quick task \(expected) with a 60 s limit failed: \(error)")
        case .hung: violation("quick task \(expected) with a 60 s limit did not settle in 60 s")
        }
    }
    // Each endless task holds a worker for its limit, then a new one starts.
    let bound = 20 + Double(endless) * (Double(milliseconds) / 1000 + 5)
    let took = soakNow() - start
    if took > bound { violation("\(endless) endless tasks with a \(milliseconds) ms limit took \(Int(took)) s (bound \(Int(bound)) s)") }
    if Int.random(in: 0..<3, using: &random) == 0 {
        // In a map: the endless item fails the map; the items before it arrive.
        let count = Int.random(in: 1...8, using: &random)
        let at = Int.random(in: 0..<count, using: &random)
        let tasks = (0..<count).map { $0 == at ? WaitForFile(path: neverGate) : WaitForFile(path: "/") }
        counts.maps += 1
        counts.tasks += count
        var got = 0
        do {
            for try await _ in try pool.map(tasks, timeout: .seconds(60), timeLimit: limit) { got += 1 }
            violation("a map whose item \(at) is endless, with a \(milliseconds) ms limit, completed")
        } catch is TaskTimeLimitExceeded {
            counts.timeLimitsHit += 1
            // An item before the endless one may itself run past a short
            // limit on a loaded machine (the limit runs from when the pool
            // sends the item; over ssh that includes the trip): fewer
            // results first is possible, more is not.
            if got > at { violation("a map whose item \(at) ran past its limit gave \(got) results first") }
        } catch {
            violation("a map whose item \(at) is endless, with a \(milliseconds) ms limit, failed with \(error)")
        }
    }
    if let reason = pool.brokenReason { violation("time limits broke the pool: \(reason)") }
}
