import Foundation
import PoolTestSupport
import ProcessPool
import Testing

/// A fresh temporary directory for gate files, removed by `cleanup()`.
struct GateDirectory {
    let path: String

    init() {
        path = NSTemporaryDirectory() + "ppool-test-" + UUID().uuidString
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    func file(_ name: String) -> String { path + "/" + name }

    func open(_ name: String) {
        _ = FileManager.default.createFile(atPath: file(name), contents: Data())
    }

    func exists(_ name: String) -> Bool { FileManager.default.fileExists(atPath: file(name)) }

    func cleanup() { try? FileManager.default.removeItem(atPath: path) }
}

/// Polls `condition` until it holds or `seconds` pass; returns whether it held.
/// For conditions that no callback reports (a file appearing, a process gone).
func eventually(_ seconds: Double = 30, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if condition() { return true }
        usleep(2000)
    }
    return condition()
}

/// Whether a process is gone (or a zombie about to be reaped).
func processGone(_ pid: Int32) -> Bool {
    if kill(pid, 0) != 0 { return true }
    guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return true }
    return status.contains("State:\tZ")
}

/// A pool on `method` with the test registry.
func makePool(_ method: StartMethod, maxWorkers: Int = 2, initializer: (any ProcessTask)? = nil,
              maxTasksPerChild: Int? = nil) throws -> ProcessPoolExecutor {
    try ProcessPoolExecutor(maxWorkers: maxWorkers, context: method, tasks: testRegistry,
                            initializer: initializer, maxTasksPerChild: maxTasksPerChild)
}

/// Asserts that `body` throws BrokenProcessPool and returns its reason.
func expectBroken(_ body: () async throws -> Void, sourceLocation: SourceLocation = #_sourceLocation) async -> String? {
    do {
        try await body()
        Issue.record("expected BrokenProcessPool, got success", sourceLocation: sourceLocation)
    } catch let error as BrokenProcessPool {
        return error.reason
    } catch {
        Issue.record("expected BrokenProcessPool, got \(error)", sourceLocation: sourceLocation)
    }
    return nil
}

/// Seconds on the monotonic clock.
func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

/// A helper process started from the test worker executable, its stdout on a pipe.
///
/// Not Foundation's `Process`: that parks two of Dispatch's threads for good,
/// and on a 2-core machine those are all the threads Swift concurrency has.
struct HelperProcess {
    let pid: pid_t
    let output: Int32

    /// Reads stdout until a line starts with `prefix`; nil at EOF, or when
    /// `seconds` pass first (the helper hangs: it is killed and the hang
    /// recorded, so the test fails instead of blocking the runner).
    func readLine(prefix: String, within seconds: Double = 60,
                  sourceLocation: SourceLocation = #_sourceLocation) -> String? {
        let deadline = monotonicSeconds() + seconds
        var buffer: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            var ready = pollfd(fd: output, events: Int16(POLLIN), revents: 0)
            let left = Int32(max(0, (deadline - monotonicSeconds()) * 1000))
            if poll(&ready, 1, left) == 0 {
                killAfterHang("no line starting with \(prefix) within \(seconds) s", sourceLocation)
                return nil
            }
            let n = read(output, &chunk, chunk.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return nil }
            buffer += chunk[0..<n]
            let text = String(decoding: buffer, as: UTF8.self)
            for line in text.split(separator: "\n") where line.hasPrefix(prefix) && text.contains(line + "\n") {
                return String(line)
            }
        }
    }

    /// Waits for the helper to exit and returns its status (exit code, or
    /// 128 + signal); nil if it did not exit within `seconds` (it is killed
    /// and the hang recorded).
    func waitForExit(within seconds: Double = 60, sourceLocation: SourceLocation = #_sourceLocation) -> Int32? {
        defer { close(output) }
        let deadline = monotonicSeconds() + seconds
        var status: Int32 = 0
        while true {
            let reaped = waitpid(pid, &status, WNOHANG)
            if reaped == pid { break }
            if reaped < 0 && errno != EINTR { return nil }
            if monotonicSeconds() > deadline {
                killAfterHang("it did not exit within \(seconds) s", sourceLocation)
                while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
                return nil
            }
            usleep(2000)
        }
        let signal = status & 0x7f
        return signal == 0 ? (status >> 8) & 0xff : 128 + signal
    }

    /// Records that the helper hung, with the state of its threads, and kills it.
    private func killAfterHang(_ what: String, _ sourceLocation: SourceLocation) {
        let threads = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
        let states = threads.sorted().map { tid in
            let wchan = (try? String(contentsOfFile: "/proc/\(pid)/task/\(tid)/wchan", encoding: .utf8)) ?? "?"
            let name = (try? String(contentsOfFile: "/proc/\(pid)/task/\(tid)/comm", encoding: .utf8)) ?? "?"
            return "\(name.trimmingCharacters(in: .whitespacesAndNewlines)) in \(wchan)"
        }
        Issue.record("helper \(pid) hangs: \(what); its threads: \(states.joined(separator: ", "))",
                     sourceLocation: sourceLocation)
        kill(pid, SIGKILL)
    }
}

/// Runs the test worker executable in a helper mode.
func runHelper(_ arguments: [String]) throws -> HelperProcess {
    var fds: [Int32] = [-1, -1]
    guard pipe(&fds) == 0 else { throw POSIXError(.EIO) }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_adddup2(&actions, fds[1], 1)
    posix_spawn_file_actions_addclose(&actions, fds[0])
    let argv = ([TestEnvironment.workerExecutable] + arguments).map { strdup($0) } + [nil]
    defer { for p in argv { free(p) } }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, TestEnvironment.workerExecutable, &actions, nil, argv, environ)
    close(fds[1])
    guard rc == 0 else {
        close(fds[0])
        throw POSIXError(POSIXErrorCode(rawValue: rc) ?? .EIO)
    }
    return HelperProcess(pid: pid, output: fds[0])
}

let localMethods = TestEnvironment.localMethods
let replacingMethods = TestEnvironment.replacingMethods

/// A future did not finish within the test's bound.
struct TestTimedOut: Error, CustomStringConvertible {
    var description: String
}

/// The future's value, waiting at most `seconds`: a test never hangs on a
/// future; a bug shows as a failure instead.
func settle<T>(_ future: TaskFuture<T>, within seconds: Int = 120,
               sourceLocation: SourceLocation = #_sourceLocation) async throws -> T {
    let (done, _) = await wait(for: [future], timeout: .seconds(seconds))
    guard !done.isEmpty else {
        Issue.record("a future did not finish within \(seconds) s", sourceLocation: sourceLocation)
        throw TestTimedOut(description: "future not done after \(seconds) s")
    }
    return try future.result()
}
