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

/// Runs the test worker executable in a helper mode and returns it.
func runHelper(_ arguments: [String]) throws -> (Process, Pipe) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: TestEnvironment.workerExecutable)
    process.arguments = arguments
    let pipe = Pipe()
    process.standardOutput = pipe
    try process.run()
    return (process, pipe)
}

/// Reads lines from a pipe until one starts with `prefix`.
func readLine(from pipe: Pipe, prefix: String, timeout: Double = 60) -> String? {
    let handle = pipe.fileHandleForReading
    var buffer = Data()
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        let chunk = handle.availableData
        if chunk.isEmpty { return nil }
        buffer.append(chunk)
        let text = String(decoding: buffer, as: UTF8.self)
        for line in text.split(separator: "\n") where line.hasPrefix(prefix) { return String(line) }
    }
    return nil
}

let localMethods = TestEnvironment.localMethods
let replacingMethods = TestEnvironment.replacingMethods
