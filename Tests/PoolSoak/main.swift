// pool-soak: a chaos soak of the pool. For N minutes, on each start method,
// it runs rounds of random work against fresh pools — tasks of every size
// and shape, maps with chunk and buffer sizes, workers that die by SIGKILL,
// SIGSEGV or exit mid-task, a killed forkserver, cancels, Swift task
// cancellations, time-outs, every way of shutting down — and checks all the
// time that every future resolves within a bound with the right value or a
// defined error, that no descriptor, process or zombie accumulates, and that
// memory stops growing after warm-up. Every violation is printed with the
// seed and round that replay it.
//
// It also exercises surviving faults (SoakFaults.swift): some rounds use a
// pool with `FailurePolicy.retry(maxAttempts: k)`, where maps run while
// workers are SIGKILLed (or, over ssh, the connection is cut) and must still
// deliver every result once and in order, and a poison task must fail alone
// with `WorkerLost` after exactly k attempts; and every round may interrupt a
// running task (`TaskFuture.interrupt()`) or submit endless tasks with a
// short time limit, which must end with `TaskTimeLimitExceeded`.
//
// `--methods ...,ssh` adds the ssh start method: the soak starts its own sshd
// on loopback with throwaway keys (SoakSSHD.swift), optionally behind a
// throttling relay (`--relay`, PoolTestSupport's ThrottlingRelay), uploads itself as the worker
// and runs the same rounds, with the connection cut (its sshd process
// SIGKILLed, or the relay's sockets shut) instead of a forkserver killed. It
// also checks that no remote worker or sshd connection outlives its pool, and
// that sshd is stopped and its directory removed at the end.
//
//   swift run -c release pool-soak --minutes 10 [--seed S] [--methods fork,spawn,forkserver,ssh] [--relay]
//
// `--replay R` runs only the round whose seed a violation printed (seed=R),
// over and over for the given minutes; POOL_SOAK_TRACE=1 prints each action.
import Glibc
import PoolTestSupport
import ProcessPool
import ProcessPoolCore
import ProcessPoolLocal
import ProcessPoolSSH

ProcessPoolExecutor.bootstrap(testRegistry)

// MARK: Options

var minutes = 1.0
var seed = UInt64(cpp_monotonic_ns_for_seed())
var methods = ["fork", "spawn", "forkserver"]
var useRelay = false
var replaySeed: UInt64?
var arguments = CommandLine.arguments.dropFirst().makeIterator()
while let argument = arguments.next() {
    switch argument {
    case "--minutes": minutes = Double(arguments.next() ?? "") ?? minutes
    case "--seed": seed = UInt64(arguments.next() ?? "") ?? seed
    case "--methods": methods = (arguments.next() ?? "").split(separator: ",").map(String.init)
    case "--relay": useRelay = true
    case "--replay": replaySeed = UInt64(arguments.next() ?? "")
    default:
        print("usage: pool-soak [--minutes N] [--seed S] [--methods fork,spawn,forkserver,ssh] [--relay] [--replay ROUNDSEED]")
        exit(2)
    }
}
for name in methods where name != "ssh" && (try? StartMethod(named: name)) == nil {
    print("pool-soak: unknown start method \(name) (fork, spawn, forkserver, ssh)")
    exit(2)
}

func cpp_monotonic_ns_for_seed() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_007 &+ UInt64(ts.tv_nsec)
}

/// SplitMix64: a small seeded generator, so a seed replays a run.
struct SoakRandom: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

// MARK: Accounting

struct Counts {
    var rounds = 0, tasks = 0, maps = 0, kills = 0, breaks = 0, cancels = 0
    var swiftCancels = 0, timeouts = 0, serverKills = 0, connectionCuts = 0, violations = 0
    // Surviving faults (SoakFaults.swift).
    var retryRounds = 0, retryMaps = 0, retryKills = 0, retryCuts = 0, poisons = 0
    var interrupts = 0, timeLimitsHit = 0
}
nonisolated(unsafe) var counts = Counts()
nonisolated(unsafe) var currentRound = (method: "", round: 0, seed: UInt64(0))

/// POOL_SOAK_TRACE=1 prints each action as it starts (to find a hang).
let tracing = getenv("POOL_SOAK_TRACE") != nil

func violation(_ what: String) {
    counts.violations += 1
    print("VIOLATION seed=\(currentRound.seed) method=\(currentRound.method) round=\(currentRound.round): \(what)")
    fflush(nil)  // kept even if the soak is killed while hung, output in a file
}

/// The outcome of a future, waited for within `seconds` (a hang is a violation).
enum Settled<T> { case value(T), failed(any Error), hung }

func settle<T>(_ future: TaskFuture<T>, _ seconds: Int = 60) async -> Settled<T> {
    let (done, _) = await wait(for: [future], timeout: .seconds(seconds))
    guard !done.isEmpty else { return .hung }
    do { return .value(try future.result()) } catch { return .failed(error) }
}

/// An error a future may end with in a round where the pool may break or be
/// stopped: anything else is a violation.
func isDefined(_ error: any Error) -> Bool {
    error is BrokenProcessPool || error is CancellationError || error is RegisteredFailure
        || error is RemoteTaskError || (error as? ProcessPoolError) != nil
}

// MARK: ssh

/// Where the ssh rounds connect: the soak's sshd, maybe through the relay.
struct SSHTarget: Sendable {
    let server: SoakSSHD
    let relay: ThrottlingRelay?
    let options: SSHOptions
    /// The port the pools connect to (the relay's, if there is one).
    var port: Int { relay?.port ?? server.port }
    /// How break reasons name the host.
    var label: String { "root@127.0.0.1:\(port)" }

    func method(workers: Int) throws -> StartMethod {
        .ssh([try SSHHost(label, workers: workers)], options: options)
    }
}

// MARK: One round

func runRound(method name: String, ssh: SSHTarget?, random: inout SoakRandom) async {
    let workers = Int.random(in: 1...3, using: &random)
    // Some rounds retry work lost with a dead worker instead of breaking.
    let retryAttempts: Int? = Int.random(in: 0..<10, using: &random) < 4 ? Int.random(in: 2...5, using: &random) : nil
    let pool: ProcessPoolExecutor
    do {
        let method = try ssh.map { try $0.method(workers: workers) } ?? StartMethod(named: name)
        pool = try ProcessPoolExecutor(maxWorkers: workers, context: method, tasks: testRegistry,
                                       failurePolicy: retryAttempts.map { .retry(maxAttempts: $0) } ?? .breakPool)
    } catch {
        violation("pool creation failed: \(error)")
        return
    }
    var pending: [(TaskFuture<Int>, Int?)] = []  // future, expected value (nil: may fail)
    let actions = Int.random(in: 3...12, using: &random)
    var broken = false
    for _ in 0..<actions {
        let action = Int.random(in: 0..<116, using: &random)
        if tracing {
            print("trace round \(currentRound.round): action \(action), retry \(retryAttempts.map(String.init) ?? "-"), workers \(workers)")
            fflush(nil)
        }
        do {
            switch action {
            case 30..<50 where retryAttempts != nil:
                // Workers killed during a map: every result still arrives, once, in order.
                await retryMap(pool, ssh: ssh, attempts: retryAttempts!, workers: workers, random: &random)
            case 78..<88 where retryAttempts != nil:
                // A poison task among good ones fails alone, after exactly k attempts.
                try await poisonTask(pool, ssh: ssh, attempts: retryAttempts!, random: &random)
            case 100..<108 where !broken:
                // A running task interrupted: cancelled; the rest runs; the pool stays healthy.
                try await interruptRunning(pool, random: &random)
            case 108..<116 where !broken:
                // Endless tasks with short time limits among quick ones.
                try await timeLimits(pool, random: &random)
            case 0..<30:
                // Payloads of every shape and size, checked byte for byte.
                let shape = SweepShape.allCases.randomElement(using: &random)!
                let size = [0, 1, 65_537, 262_144, 600 * 1024, (1 << 20) + 1, 8 << 20].randomElement(using: &random)!
                let payload = SweepPayload(shape: shape, size: shape == .bytes ? size : min(size, 1 << 20),
                                           seed: Int.random(in: 0..<1000, using: &random))
                let future = try pool.submit(EchoPayload(payload))
                counts.tasks += 1
                switch await settle(future) {
                case .value(let echoed):
                    if echoed != EchoPayload(payload).run() { violation("payload \(shape) \(size) came back wrong") }
                case .failed(let error): if !broken || !isDefined(error) { violation("payload failed: \(error)") }
                case .hung: violation("a payload future did not settle in 60 s")
                }
            case 30..<50:
                // A map with random chunk and buffer sizes, maybe left early.
                let n = Int.random(in: 0...400, using: &random)
                let chunk = Int.random(in: 1...64, using: &random)
                let buffer: Int? = Bool.random(using: &random) ? nil : Int.random(in: 1...4, using: &random)
                let stopAt = Bool.random(using: &random) ? Int.random(in: 0...max(0, n), using: &random) : n
                counts.maps += 1
                counts.tasks += n
                var index = 0
                do {
                    for try await value in try pool.map((0..<n).map { Square($0) }, timeout: .seconds(60),
                                                        chunkSize: chunk, bufferSize: buffer) {
                        if index >= stopAt { break }
                        if value != index * index { violation("map item \(index) was \(value)") }
                        index += 1
                    }
                    if index != min(n, stopAt) { violation("map ended after \(index) of \(min(n, stopAt))") }
                } catch {
                    if !broken || !isDefined(error) { violation("map failed: \(error)") }
                }
            case 50..<62:
                // Work left pending, some of it cancelled, some waited on by
                // Swift tasks that are then cancelled.
                for i in 0..<Int.random(in: 1...20, using: &random) {
                    let future = try pool.submit(Echo(i))
                    counts.tasks += 1
                    if Bool.random(using: &random) {
                        if future.cancel() { counts.cancels += 1 }
                        pending.append((future, nil))
                    } else if Int.random(in: 0..<4, using: &random) == 0 {
                        let waiter = Task { try await future.value }
                        waiter.cancel()
                        counts.swiftCancels += 1
                        _ = await waiter.result
                        pending.append((future, nil))
                    } else {
                        pending.append((future, i))
                    }
                }
            case 62..<70:
                // A time-out that passes while the task runs on.
                let future = try pool.submit(SleepTask(milliseconds: 30))
                counts.tasks += 1
                do {
                    _ = try future.result(timeout: .milliseconds(1))
                } catch ProcessPoolError.timeout {
                    counts.timeouts += 1
                } catch {
                    if !broken || !isDefined(error) { violation("result(timeout:) threw \(error)") }
                }
                if case .hung = await settle(future) { violation("a timed-out task never finished") }
            case 70..<78:
                // Errors thrown by tasks fail only their futures.
                let future = try pool.submit(Fail(registered: Bool.random(using: &random)))
                counts.tasks += 1
                switch await settle(future) {
                case .value: violation("a failing task succeeded")
                case .failed(let error): if !isDefined(error) { violation("unexpected error \(error)") }
                case .hung: violation("a failing task did not settle")
                }
            case 78..<88:
                // A worker dies mid-task: the pool breaks, naming it.
                let how = [Die.How.sigkill, .sigsegv, .exit3].randomElement(using: &random)!
                let future = try pool.submit(Die(how))
                counts.kills += 1
                switch await settle(future) {
                case .failed(let error as BrokenProcessPool):
                    if let ssh {
                        if !error.reason.contains(ssh.label) { violation("break reason names no host: \(error.reason)") }
                    } else if !error.reason.contains("pid") {
                        violation("break reason names no worker: \(error.reason)")
                    }
                    broken = true
                    counts.breaks += 1
                case .failed(let error): violation("a dying worker gave \(error)")
                case .value: violation("a dying task returned a value")
                case .hung: violation("a dying worker's future did not settle")
                }
            case 88..<92 where name == "forkserver" && retryAttempts == nil:
                // The forkserver itself is killed: its pools break, the next gets a new one.
                let future = try pool.submit(SleepTask(milliseconds: 1))
                _ = await settle(future)
                if let pid = ForkServerHooks.serverPID(executable: "/proc/self/exe") {
                    kill(pid, SIGKILL)
                    counts.serverKills += 1
                    broken = true
                }
            case 88..<92 where ssh != nil && !broken && retryAttempts == nil:
                // The connection is cut (its sshd process SIGKILLed, or the
                // relay's sockets shut): the pool breaks, naming the host, and
                // nothing hangs.
                let ssh = ssh!
                let future = try pool.submit(Echo(3))
                counts.tasks += 1
                switch await settle(future) {
                case .value(let value): if value != 3 { violation("Echo gave \(value), not 3") }
                case .failed(let error): violation("Echo failed before the cut: \(error)")
                case .hung: violation("an Echo future did not settle in 60 s")
                }
                // Sometimes mid-task: a task in flight when the connection goes.
                let inFlight = Bool.random(using: &random) ? try pool.submit(SleepTask(milliseconds: 100)) : nil
                if inFlight != nil {
                    counts.tasks += 1
                    usleep(20_000)
                }
                let viaRelay = ssh.relay != nil && Bool.random(using: &random)
                if viaRelay {
                    ssh.relay!.cutConnections()
                } else {
                    for connection in ssh.server.connectionProcesses() { _ = kill(connection, SIGKILL) }
                }
                counts.connectionCuts += 1
                broken = true
                let deadline = soakNow() + 60
                while pool.brokenReason == nil && soakNow() < deadline { usleep(2000) }
                if let reason = pool.brokenReason {
                    if !reason.contains(ssh.label) { violation("cut connection: break reason names no host: \(reason)") }
                    counts.breaks += 1
                } else {
                    violation("the pool did not break within 60 s of its connection being cut (\(viaRelay ? "relay" : "SIGKILL"))")
                }
                if let inFlight {
                    switch await settle(inFlight) {
                    case .value: break  // it finished before the cut
                    case .failed(let error as BrokenProcessPool):
                        if !error.reason.contains(ssh.label) { violation("task in flight at the cut: reason names no host: \(error.reason)") }
                    case .failed(let error): violation("task in flight at the cut failed with \(error)")
                    case .hung: violation("a task in flight at the cut did not settle in 60 s")
                    }
                }
                let after = try pool.submit(Echo(4))
                violation("submit after the cut was accepted (\(String(describing: after)))")
            default:
                let future = try pool.submit(Echo(7))
                counts.tasks += 1
                pending.append((future, 7))
            }
        } catch {
            // submit/map refused: only after the pool broke (never under retry).
            if retryAttempts != nil {
                violation("submit threw \(error) in a pool with retry(maxAttempts: \(retryAttempts!))")
                broken = true
            } else if !(error is BrokenProcessPool) || !broken {
                if error is BrokenProcessPool { broken = true } else { violation("submit threw \(error)") }
            }
        }
    }
    if let retryAttempts {
        counts.retryRounds += 1
        if let reason = pool.brokenReason { violation("a pool with retry(maxAttempts: \(retryAttempts)) broke: \(reason)") }
    }
    // Every way of ending a pool.
    let ending = Int.random(in: 0..<6, using: &random)
    if tracing {
        print("trace round \(currentRound.round): ending \(ending), \(pending.count) pending")
        fflush(nil)
    }
    switch ending {
    case 0: pool.shutdown(wait: true)
    case 1: pool.shutdown(wait: false)
    case 2: await pool.shutdown(cancelFutures: true)
    case 3: pool.terminateWorkers()
    case 4: pool.killWorkers()
    default: break  // dropped
    }
    for (future, expected) in pending {
        switch await settle(future) {
        case .value(let value): if let expected, value != expected { violation("Echo gave \(value), not \(expected)") }
        case .failed(let error): if !isDefined(error) { violation("pending future failed with \(error)") }
        case .hung: violation("a pending future did not settle in 60 s")
        }
    }
    await pool.shutdown()
}

// MARK: Hygiene

func openDescriptors() -> Int {
    guard let dir = opendir("/proc/self/fd") else { return -1 }
    defer { closedir(dir) }
    var n = 0
    while readdir(dir) != nil { n += 1 }
    return n
}

/// Children of ours that are not workers (the soak's sshd).
nonisolated(unsafe) var notWorkers: Set<pid_t> = []

/// Live children and zombies of this process, the forkserver (which lives
/// for the whole run by design) and the soak's sshd excepted, but the
/// forkserver's children counted.
func children() -> (live: Int, zombies: Int) {
    let me = getpid()
    var infos: [(pid: Int32, ppid: Int32, state: Character)] = []
    guard let dir = opendir("/proc") else { return (0, 0) }
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
        guard let pid = Int32(name), let stat = readTextFile("/proc/\(name)/stat"), let close = stat.lastIndex(of: ")") else { continue }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 2, let ppid = Int32(fields[1]) else { continue }
        infos.append((pid, ppid, fields[0].first ?? "?"))
    }
    closedir(dir)
    var live = 0, zombies = 0
    for child in infos where child.ppid == me && !notWorkers.contains(child.pid) {
        let isServer = (readTextFile("/proc/\(child.pid)/environ") ?? "").contains("SWIFT_PROCESSPOOL_ROLE=forkserver")
        let group = isServer ? infos.filter { $0.ppid == child.pid } : [child]
        for process in group { if process.state == "Z" { zombies += 1 } else { live += 1 } }
    }
    return (live, zombies)
}

func residentMiB() -> Int {
    guard let text = readTextFile("/proc/self/statm") else { return 0 }
    let fields = text.split(separator: " ")
    return fields.count > 1 ? ((Int(fields[1]) ?? 0) * 4096) >> 20 : 0
}

// MARK: Main

signal(SIGPIPE, SIG_IGN)
print("pool-soak: seed \(seed), \(minutes) min per method, methods \(methods.joined(separator: ","))")
var random = SoakRandom(state: seed)
for name in methods {
    // ssh: the soak's own sshd (and relay) for this method's rounds.
    var ssh: SSHTarget?
    if name == "ssh" {
        guard SoakSSHD.available else {
            print("pool-soak: ssh needs /usr/sbin/sshd and ssh-keygen (apt-get install openssh-server)")
            exit(2)
        }
        do {
            let server = try SoakSSHD()
            notWorkers.insert(server.pid)
            let relay = useRelay ? try ThrottlingRelay(to: server.port, latency: 0.002, bytesPerSecond: 64_000_000) : nil
            if let relay { try server.trust(port: relay.port) }
            ssh = SSHTarget(server: server, relay: relay, options: server.options())
            print("pool-soak ssh: sshd pid \(server.pid) on 127.0.0.1:\(server.port), directory \(server.directory)"
                + (relay.map { ", relay on port \($0.port)" } ?? ""))
        } catch {
            print("pool-soak: cannot start sshd: \(error)")
            exit(2)
        }
    }
    var clockStart = timespec()
    clock_gettime(CLOCK_MONOTONIC, &clockStart)
    func elapsedSeconds() -> Double {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return Double(now.tv_sec - clockStart.tv_sec) + Double(now.tv_nsec - clockStart.tv_nsec) / 1e9
    }
    var round = 0
    var baselineDescriptors: Int?
    var warmMemory: Int?
    let before = counts
    while elapsedSeconds() < minutes * 60 {
        round += 1
        // --replay: the round a violation named (its seed=), again and again.
        let roundSeed = replaySeed ?? random.next()
        currentRound = (name, round, roundSeed)
        var roundRandom = SoakRandom(state: roundSeed)
        await runRound(method: name, ssh: ssh, random: &roundRandom)
        counts.rounds += 1
        // Every worker of a finished pool is gone and reaped.
        var (live, zombies) = children()
        var waited = 0
        while (live > 0 || zombies > 0) && waited < 500 {
            usleep(10_000)
            waited += 1
            (live, zombies) = children()
        }
        if live > 0 || zombies > 0 { violation("\(live) live workers and \(zombies) zombies after the round") }
        if let ssh {
            // No remote worker and no sshd connection outlives its pool.
            var remote = ssh.server.remoteWorkers(), connections = ssh.server.connectionProcesses()
            let deadline = soakNow() + 30
            while (!remote.isEmpty || !connections.isEmpty) && soakNow() < deadline {
                usleep(10_000)
                (remote, connections) = (ssh.server.remoteWorkers(), ssh.server.connectionProcesses())
            }
            if !remote.isEmpty { violation("remote workers \(remote) still run 30 s after their pool ended") }
            if !connections.isEmpty { violation("sshd connections \(connections) still open 30 s after their pool ended") }
        }
        let descriptors = openDescriptors()
        if let baseline = baselineDescriptors {
            if descriptors > baseline + 8 { violation("descriptors grew from \(baseline) to \(descriptors)") }
        } else if round == 3 {
            baselineDescriptors = descriptors
        }
        // Memory: after a warm-up fifth of the time, it must stop growing.
        let memory = residentMiB()
        if elapsedSeconds() > minutes * 12 {
            if let warm = warmMemory {
                if memory > warm + 128 { violation("resident memory grew from \(warm) MiB to \(memory) MiB after warm-up") }
            } else {
                warmMemory = memory
            }
        }
    }
    let c = counts
    print("pool-soak \(name): \(c.rounds - before.rounds) rounds, \(c.tasks - before.tasks) tasks, "
        + "\(c.maps - before.maps) maps, \(c.kills - before.kills) kills, \(c.breaks - before.breaks) breaks, "
        + "\(c.cancels - before.cancels) cancels, \(c.swiftCancels - before.swiftCancels) Swift cancellations, "
        + "\(c.timeouts - before.timeouts) time-outs, \(c.serverKills - before.serverKills) forkserver kills, "
        + (ssh == nil ? "" : "\(c.connectionCuts - before.connectionCuts) connection cuts, ")
        + "resident \(residentMiB()) MiB, \(openDescriptors()) descriptors, "
        + "\(c.violations - before.violations) violations")
    let retryLine = "\(c.retryRounds - before.retryRounds) retry rounds (\(c.retryMaps - before.retryMaps) maps), "
        + "\(c.retryKills - before.retryKills) workers killed under retry"
        + (ssh == nil ? "" : ", \(c.retryCuts - before.retryCuts) connections cut under retry")
    print("pool-soak \(name) faults: \(retryLine), \(c.poisons - before.poisons) poison tasks, "
        + "\(c.interrupts - before.interrupts) interrupts, \(c.timeLimitsHit - before.timeLimitsHit) time limits hit")
    if let ssh {
        // sshd stopped and reaped, its directory (keys, upload cache) removed.
        currentRound = (name, round + 1, 0)
        if let relay = ssh.relay {
            let relayed = relay.connections
            if !relay.stop() { violation("the relay's threads did not end within 5 s") }
            print("pool-soak ssh: \(relayed) connections relayed")
        }
        for problem in ssh.server.stop() { violation(problem) }
        notWorkers.remove(ssh.server.pid)
        if access(ssh.server.directory, F_OK) == 0 { violation("\(ssh.server.directory) is still there") }
        let (live, zombies) = children()
        if live > 0 || zombies > 0 { violation("\(live) children and \(zombies) zombies after sshd stopped") }
    }
}
print("pool-soak: \(counts.violations) violations in all (seed \(seed))")
exit(counts.violations == 0 ? 0 : 1)
