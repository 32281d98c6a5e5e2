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
    ///
    /// - Parameters:
    ///   - descriptor: A connected stream socket to the pool (the worker's
    ///     end of the transport's stream).
    ///   - registry: The task types this worker runs: the same as the pool's.
    /// - Returns: The exit status for the worker process.
    public static func serve(descriptor: Int32, registry: TaskRegistry) -> Int32 {
        activeDescriptor = descriptor
        let loop = WorkerLoop(stream: WorkerStream(fd: descriptor), registry: registry)
        return loop.run()
    }

    /// Serves one pool over the process's stdin and stdout (a remote worker
    /// started over ssh). Stdout is moved out of the way first: the protocol
    /// keeps a private copy of it and descriptor 1 becomes stderr, so `print`
    /// in a task lands in the parent's log instead of corrupting the stream.
    ///
    /// - Parameter registry: The task types this worker runs: the same as the
    ///   pool's.
    /// - Returns: The exit status for the worker process, as ``serve(descriptor:registry:)``.
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
    /// When the oldest result not yet written was made (0: none waits).
    var bufferedSince: UInt64 = 0

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

    /// How long results may wait for others to share their write.
    static let flushAfterNanos: UInt64 = 50_000

    private func flush() {
        cpp_flush_stdout()
        bufferedSince = 0
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
            guard !configured else { throw ProtocolViolation("configure sent twice") }
            let configure = try ConfigureMessage(from: &reader)
            tasksLeft = configure.maxTasks
            configured = true
            // Hello first, so the parent knows the worker started whatever
            // the initializer then takes; `ready` reports the initializer.
            HelloMessage(pid: getpid()).write(to: &out)
            try out.end()
            flush()
            var initOutcome = ByteWriter()
            var ok = true
            if let initializer = configure.initializer {
                initializer.payload.withUnsafeBytes { runCall(name: initializer.name, payload: $0, into: &initOutcome) }
                ok = initOutcome.bytes.first == OutcomeTag.success.rawValue
            }
            ReadyHeader(ok: ok).write(to: &out)
            if !ok { out.writer.writeRaw(initOutcome.bytes) }
            if (try? out.end()) == nil {
                // An error too large to report: say that it failed, not how.
                _ = out.takeLastFrame()
                ReadyHeader(ok: false).write(to: &out)
                writeRemoteError(typeName: "ProcessPool.InitializerFailure",
                                 message: "the initializer failed with an error too large to send",
                                 into: &out.writer)
                try out.end()
            }
            if !ok { finished = 1 }
        case .run:
            guard configured else { throw ProtocolViolation("run before configure") }
            let header = try RunHeader(from: &reader)
            // Results waiting for more than `flushAfterNanos` go out before
            // the next call runs: a long call must not hold back the results
            // of the ones before it for long, while results of tiny calls
            // still leave many to a write.
            if out.count > 0 && cpp_monotonic_ns() &- bufferedSince >= WorkerLoop.flushAfterNanos { flush() }
            let started = cpp_monotonic_ns()
            let timeMark = ResultsHeader(itemID: header.itemID, runNanos: 0, count: header.count,
                                         layout: .separate).write(to: &out)
            out.writer.attachments = []
            if let runner = registry.runners[header.taskName] {
                try runner.runChunk(&reader, header.layout, header.count, attachments, registry, &out.writer)
            } else {
                out.writer.write(ValueLayout.separate.rawValue)
                for _ in 0..<header.count { writeUnregistered(header.taskName, into: &out.writer) }
            }
            var outgoing = out.writer.attachments ?? []
            out.writer.attachments = nil
            let elapsed = cpp_monotonic_ns() &- started
            out.writer.patchUInt64(elapsed, at: timeMark)
            if (try? out.end()) == nil || (try? AttachmentsAnnouncement.check(outgoing)) == nil {
                // The results do not fit the protocol: each call fails on
                // its own, the stream stays in step.
                _ = out.takeLastFrame()
                outgoing = []
                ResultsHeader(itemID: header.itemID, runNanos: elapsed, count: header.count,
                              layout: .separate).write(to: &out)
                out.writer.write(ValueLayout.separate.rawValue)
                for _ in 0..<header.count {
                    writeRemoteError(typeName: "ProcessPool.ValueTooLarge",
                                     message: "the results of \(header.taskName) exceed the protocol's limits: "
                                        + "\(WireProtocol.maxFrameBytes) bytes per message, and at most "
                                        + "\(WireProtocol.maxAttachments) large byte arrays of at most that size",
                                     into: &out.writer)
                }
                try out.end()
            }
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
            if out.count > 0 && bufferedSince == 0 { bufferedSince = cpp_monotonic_ns() }
        case .exit:
            goodbye(.exitRequested)
        case .hello, .ready, .results, .goodbye, .attachments:
            throw ProtocolViolation("unexpected frame \(kind) from the parent")
        }
    }

    private func goodbye(_ reason: GoodbyeReason) {
        GoodbyeMessage(reason: reason).write(to: &out)
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
