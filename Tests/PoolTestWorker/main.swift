import Glibc
import PoolTestSupport
import ProcessPool

// The tests' worker executable: the test runner cannot be its own worker,
// so spawn and forkserver pools in the tests start this program instead.
// It also has helper modes for tests that must run in a process of their own.
ProcessPoolExecutor.bootstrap(testRegistry)

let arguments = Array(CommandLine.arguments.dropFirst())
guard arguments.count >= 2, let method = try? StartMethod(named: arguments[1]) else {
    print("usage: PoolTestWorker hundred-pools|orphan-maker|exit-with-work fork|spawn|forkserver [dir]")
    exit(2)
}

switch arguments[0] {
case "hundred-pools":
    // Warm up once (the forkserver stays for the run), then count.
    try await runPool(method)
    let fdsBefore = openDescriptorCount()
    for _ in 0..<100 { try await runPool(method) }
    let extra = openDescriptorCount() - fdsBefore
    let children = childProcesses(excludingServer: true)
    print("RESULT \(extra) \(children.live) \(children.zombies)")
case "orphan-maker":
    let pool = try ProcessPoolExecutor(maxWorkers: 2, context: method, tasks: testRegistry)
    let gate = "/nonexistent-gate-\(getpid())"
    let a = try pool.submit(SignalThenWait(started: "/dev/null", gate: gate))
    let b = try pool.submit(SignalThenWait(started: "/dev/null", gate: gate))
    var pids = Set<Int32>()
    while pids.count < 2 {
        pids = Set(childProcesses(excludingServer: true).pids)
        usleep(1000)
    }
    print("PIDS " + pids.map(String.init).joined(separator: " "))
    fflush(nil)
    _ = try await a.value
    _ = try await b.value
case "exit-with-work":
    // Returns from main with work still queued behind slow tasks, the pool
    // neither shut down nor awaited: the work must still run (SEMANTICS 40).
    // One pool is dropped at once (its deinit shuts it down without
    // waiting); the other stays referenced by a global until exit.
    let dir = arguments[2]
    func submitAndDrop() throws {
        let dropped = try ProcessPoolExecutor(maxWorkers: 1, context: method, tasks: testRegistry)
        for i in 0..<10 { _ = try dropped.submit(TouchFile(path: "\(dir)/dropped-\(i)", delayMilliseconds: 20)) }
    }
    try submitAndDrop()
    let kept = try ProcessPoolExecutor(maxWorkers: 2, context: method, tasks: testRegistry)
    for i in 0..<20 { _ = try kept.submit(TouchFile(path: "\(dir)/kept-\(i)", delayMilliseconds: 20)) }
    print("SUBMITTED")
    fflush(nil)
default:
    exit(2)
}

func runPool(_ method: StartMethod) async throws {
    let pool = try ProcessPoolExecutor(maxWorkers: 2, context: method, tasks: testRegistry)
    let a = try pool.submit(Echo(1))
    let b = try pool.submit(Echo(2))
    guard try await a.value + b.value == 3 else { exit(3) }
    await pool.shutdown()
}

func openDescriptorCount() -> Int {
    guard let dir = opendir("/proc/self/fd") else { return -1 }
    defer { closedir(dir) }
    var count = 0
    while readdir(dir) != nil { count += 1 }
    return count
}

/// This process's children, and for forkserver the server's children, as
/// (pids of live workers, live count, zombie count). The forkserver itself
/// (a child that outlives pools by design) is not counted.
func childProcesses(excludingServer: Bool) -> (pids: [Int32], live: Int, zombies: Int) {
    var parents: Set<Int32> = [getpid()]
    var infos: [(pid: Int32, ppid: Int32, state: Character, isServer: Bool)] = []
    guard let dir = opendir("/proc") else { return ([], 0, 0) }
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
            String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
        }
        guard let pid = Int32(name), let stat = readTextFile("/proc/\(name)/stat"),
              let close = stat.lastIndex(of: ")") else { continue }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 2, let ppid = Int32(fields[1]) else { continue }
        infos.append((pid, ppid, fields[0].first ?? "?", false))
    }
    closedir(dir)
    // Children of ours; for forkserver, a child with children of its own that
    // are workers is the server: count its children instead.
    var pids: [Int32] = []
    var live = 0
    var zombies = 0
    let mine = infos.filter { parents.contains($0.ppid) }
    for child in mine {
        let grandchildren = infos.filter { $0.ppid == child.pid }
        if excludingServer && isForkServer(child.pid) {
            for g in grandchildren {
                if g.state == "Z" { zombies += 1 } else { live += 1; pids.append(g.pid) }
            }
            continue
        }
        if child.state == "Z" { zombies += 1 } else { live += 1; pids.append(child.pid) }
    }
    parents.removeAll()
    return (pids, live, zombies)
}

/// The forkserver is the child started with the forkserver role (its
/// initial environment, in /proc, still shows it).
func isForkServer(_ pid: Int32) -> Bool {
    (readTextFile("/proc/\(pid)/environ") ?? "").contains("SWIFT_PROCESSPOOL_ROLE=forkserver")
}
