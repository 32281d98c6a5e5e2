import CProcessPoolShim
import Glibc

/// The worker side of the protocol, for transports: serve a pool over a
/// connected stream until it says exit, closes the stream, or the worker
/// reaches its task limit.
///
/// Purely synchronous and single-threaded, so it also runs in a child made by
/// `fork` from a multi-threaded parent. Tasks run on the calling thread.
public enum ProcessPoolWorker {
    /// Serves one pool over `descriptor` and returns the process exit status
    /// to use: 0 after a clean end (exit frame, task limit, parent gone),
    /// 1 if the initializer failed, 2 on a protocol error.
    public static func serve(descriptor: Int32, registry: TaskRegistry) -> Int32 {
        activeDescriptor = descriptor
        let loop = WorkerLoop(stream: WorkerStream(fd: descriptor), registry: registry)
        return loop.run()
    }

    /// Serves one pool over the process's stdin and stdout (a remote worker
    /// started over ssh). Stdout is moved out of the way first: the protocol
    /// keeps a private copy of it and descriptor 1 becomes stderr, so `print`
    /// in a task lands in the parent's log instead of corrupting the stream.
    public static func serveOverStandardIO(registry: TaskRegistry) -> Int32 {
        let output = dup(1)
        guard output >= 0 else { return 2 }
        _ = dup2(2, 1)
        activeDescriptor = output
        let loop = WorkerLoop(stream: WorkerStream(input: 0, output: output), registry: registry)
        return loop.run()
    }
}

extension ProcessPoolWorker {
    /// The descriptor this worker process serves (tests use it to corrupt the stream).
    package nonisolated(unsafe) static var activeDescriptor: Int32 = -1
}

/// Flush results at once when tasks take longer than this (ns); batch below.
private let batchThresholdNanos: Double = 50_000

/// A class, not a struct: the frame handler runs inside a closure, and a
/// struct would be copied there along with its output buffer.
final class WorkerLoop {
    var stream: WorkerStream
    let registry: TaskRegistry
    let splitter = FrameSplitter(expectPreamble: false)
    var out = FrameBuilder(capacity: 64 * 1024)
    var tasksLeft: UInt64 = 0  // 0: unlimited
    var configured = false
    var averageNanos: Double = 0
    var finished: Int32? = nil

    init(stream: WorkerStream, registry: TaskRegistry) {
        self.stream = stream
        self.registry = registry
    }

    func run() -> Int32 {
        guard WireProtocol.preamble.withUnsafeBytes({ stream.writeAll($0) }) else { return 0 }
        while true {
            do {
                while try splitter.nextFrame({ kind, body, attachments in try handle(kind, body, attachments) }) {
                    if let code = finished {
                        flush()
                        return code
                    }
                }
            } catch {
                cpp_log_stderr("ProcessPool worker \(getpid()): \(error)\n")
                return 2
            }
            flush()
            let n = splitter.fill { stream.read(into: $0) }
            if n <= 0 { return 0 }  // parent gone (EOF) or stream broken
        }
    }

    private func flush() {
        cpp_flush_stdout()
        guard out.count > 0 else { return }
        let ok = out.writer.bytes.withUnsafeBytes { stream.writeAll($0) }
        if !ok { finished = finished ?? 0 }
        // Keep the memory: a fresh buffer for every large result costs more in
        // page faults than the copy itself.
        out.reset()
    }

    private func handle(_ kind: FrameKind, _ body: UnsafeRawBufferPointer, _ attachments: [[UInt8]]) throws {
        var reader = ByteReader(body)
        switch kind {
        case .configure:
            let version = try reader.read(UInt16.self)
            guard version == WireProtocol.version else {
                throw ProtocolViolation("parent speaks protocol \(version), worker \(WireProtocol.version)")
            }
            tasksLeft = try reader.readVarint()
            let hasInitializer = try reader.readByte() != 0
            var initOutcome = ByteWriter()
            var ok = true
            if hasInitializer {
                let name = try reader.readString()
                let payload = try reader.readPayload()
                runCall(name: name, payload: payload, into: &initOutcome)
                ok = initOutcome.bytes.first == OutcomeTag.success.rawValue
            }
            configured = true
            out.begin(.hello)
            out.writer.write(WireProtocol.version)
            out.writer.writeVarint(UInt64(getpid()))
            out.writer.write(UInt8(ok ? 1 : 0))
            if !ok { out.writer.writeRaw(initOutcome.bytes) }
            try out.end()
            if !ok { finished = 1 }
        case .run:
            guard configured else { throw ProtocolViolation("run before configure") }
            let itemID = try reader.readVarint()
            let name = try reader.readString()
            let count = try reader.readVarint()
            // Every call takes at least a byte, so this bounds the loops below.
            guard count <= UInt64(reader.remaining) else {
                throw ProtocolViolation("\(count) calls in \(reader.remaining) bytes")
            }
            let started = cpp_monotonic_ns()
            out.begin(.results)
            out.writer.writeVarint(itemID)
            let timeMark = out.count
            out.writer.write(UInt64(0))  // run time, patched below
            out.writer.writeVarint(count)
            out.writer.attachments = []
            if let runner = registry.runners[name] {
                try runner.runChunk(&reader, Int(count), attachments, registry, &out.writer)
            } else {
                out.writer.write(ValueLayout.separate.rawValue)
                for _ in 0..<count { writeUnregistered(name, into: &out.writer) }
            }
            let outgoing = out.writer.attachments ?? []
            out.writer.attachments = nil
            let elapsed = cpp_monotonic_ns() &- started
            out.writer.patchUInt64(elapsed, at: timeMark)
            try out.end()
            if !outgoing.isEmpty { send(lastFrameWith: outgoing) }
            if let largest = (attachments + outgoing).max(by: { $0.count < $1.count }) {
                splitter.recycle(largest)
            }
            averageNanos = averageNanos == 0 ? Double(elapsed) : averageNanos * 0.8 + Double(elapsed) * 0.2
            if tasksLeft > 0 {
                tasksLeft -= 1
                if tasksLeft == 0 {
                    goodbye(.maxTasksReached)
                    return
                }
            }
            if averageNanos > batchThresholdNanos || out.count > 1 << 20 { flush() }
        case .exit:
            goodbye(.exitRequested)
        case .hello, .results, .goodbye, .attachments:
            throw ProtocolViolation("unexpected frame \(kind) from the parent")
        }
    }

    private func goodbye(_ reason: GoodbyeReason) {
        out.begin(.goodbye)
        out.writer.writeVarint(reason.rawValue)
        try? out.end()
        finished = 0
    }

    /// Sends what is buffered, then the frame built last with its attachments
    /// (announcement, their bytes straight from the arrays, the frame).
    private func send(lastFrameWith attachments: [[UInt8]]) {
        let frame = out.takeLastFrame()
        flush()
        var ok = finished == nil
        if ok { ok = stream.writeAll(WireProtocol.attachmentsFrame(for: attachments)) }
        for attachment in attachments where ok { ok = stream.writeAll(attachment) }
        if ok { ok = stream.writeAll(frame) }
        if !ok { finished = finished ?? 0 }
    }

    /// Runs one call (the initializer) and appends its outcome (tag + data) to `into`.
    private func runCall(name: String, payload: UnsafeRawBufferPointer, into writer: inout ByteWriter) {
        guard let runner = registry.runners[name] else {
            writeUnregistered(name, into: &writer)
            return
        }
        runner.runOne(payload, registry, &writer)
    }

    private func writeUnregistered(_ name: String, into writer: inout ByteWriter) {
        writeRemoteError(typeName: "ProcessPool.UnregisteredTask",
                         message: "task '\(name)' is not registered in this worker's bootstrap(TaskRegistry)",
                         into: &writer)
    }
}
