import Synchronization

/// Runs the calls of one registered task type inside a worker.
package struct TaskRunner: Sendable {
    /// Runs a `run` frame's calls (layout byte, then a block or one payload
    /// per call) and appends their results (layout byte, then a block or one
    /// outcome per call). Throws only for a malformed frame.
    package let runChunk: @Sendable (_ calls: inout ByteReader, _ layout: ValueLayout, _ count: Int,
                                     _ attachments: [[UInt8]], _ registry: TaskRegistry,
                                     _ out: inout ByteWriter) throws -> Void
    /// Answers, in this process, whether the task and output types travel
    /// as blocks, and instantiates the runtime metadata a worker's first
    /// call needs (see `warmForFork`), so that a forked worker later reads
    /// them without
    /// taking a lock (see `TaskRegistry.prepareForFork`).
    package let prepare: @Sendable (_ registry: TaskRegistry) -> Void
    /// Runs one encoded call (the initializer) and appends its outcome.
    package let runOne: @Sendable (_ payload: UnsafeRawBufferPointer, _ registry: TaskRegistry,
                                   _ out: inout ByteWriter) -> Void

    /// A runner for `T`, registered under `name` (its `taskName`).
    init<T: ProcessTask>(_: T.Type, name: String) {
        runOne = { payload, registry, out in
            writeOutcome(call(T.self, payload: payload, attachments: []), of: name, registry: registry,
                         into: &out)
        }
        let flags = BlockFlags()
        let chunk: @Sendable (_ calls: inout ByteReader, _ layout: ValueLayout, _ count: Int,
                              _ attachments: [[UInt8]], _ registry: TaskRegistry,
                              _ out: inout ByteWriter) throws -> Void = { calls, layout, count, attachments, registry, out in
            // Asked here, not when the registry is built: a dynamic conformance
            // check per registered type would run at every process's start.
            let (bitwiseTasks, bitwiseOutputs) = flags.answer(T.self)
            var block: [T] = []
            if layout == .block {
                guard bitwiseTasks else {
                    throw ProtocolViolation("\(name) arrived as a block but is not BitwiseCodable in this worker")
                }
                block = try BitwiseTypes.readBlock(T.self, count: count, from: &calls)
            }
            func outcome(_ index: Int) throws -> CallOutcome<T.Output> {
                if layout == .block { return run(block[index]) }
                return call(T.self, payload: try calls.readPayload(), attachments: attachments)
            }
            var done = 0
            if bitwiseOutputs {
                // All outputs in one block unless some call fails; then each on its own.
                var outputs: [T.Output] = []
                outputs.reserveCapacity(count)
                var failure: CallOutcome<T.Output>?
                while done < count, failure == nil {
                    let result = try outcome(done)
                    done += 1
                    if case .success(let value) = result { outputs.append(value) } else { failure = result }
                }
                guard let failure else {
                    out.write(ValueLayout.block.rawValue)
                    BitwiseTypes.writeBlock(outputs, into: &out)
                    return
                }
                out.write(ValueLayout.separate.rawValue)
                for value in outputs { writeOutcome(.success(value), of: name, registry: registry, into: &out) }
                writeOutcome(failure, of: name, registry: registry, into: &out)
            } else {
                out.write(ValueLayout.separate.rawValue)
            }
            while done < count {
                writeOutcome(try outcome(done), of: name, registry: registry, into: &out)
                done += 1
            }
        }
        runChunk = chunk
        prepare = { registry in
            _ = flags.answer(T.self)
            warmForFork(T.self, runChunk: chunk, registry: registry)
        }
    }
}

/// Instantiates in this process the generic metadata a worker's first call
/// of `T` needs: the runner's own types, and the decoder's containers for
/// `T` (by decoding `T` from an empty keyed container, which builds them
/// and, for a `T` with fields, fails; the task is never run).
///
/// Swift's runtime takes a lock to instantiate metadata it has not seen.
/// A fork child inherits that lock as it was at the fork: if another thread
/// of the parent held it then, the child's first new instantiation waits
/// for ever (seen under load: a forked worker stuck in
/// `swift_getGenericMetadata` on its first call). Metadata already present
/// is found without the lock.
private func warmForFork<T: ProcessTask>(
    _: T.Type,
    runChunk: (_ calls: inout ByteReader, _ layout: ValueLayout, _ count: Int, _ attachments: [[UInt8]],
               _ registry: TaskRegistry, _ out: inout ByteWriter) throws -> Void,
    registry: TaskRegistry
) {
    keepAlive([T].self)
    keepAlive([T.Output].self)
    keepAlive(CallOutcome<T.Output>.self)
    keepAlive(CallOutcome<T.Output>?.self)
    guard let empty = try? BinaryEncoder().encode(NoFieldsProbe()) else { return }
    empty.withUnsafeBytes { raw in
        _ = try? BinaryDecoder().decode(T.self, from: raw)
        var calls = ByteReader(raw)
        var out = ByteWriter()
        try? runChunk(&calls, .separate, 0, [], registry, &out)
    }
}

/// A value with no fields: it encodes as an empty keyed container.
private struct NoFieldsProbe: Codable {}

/// Keeps a metatype from being optimised away (its metadata is the point).
@inline(never)
private func keepAlive(_ type: Any.Type) {
    withExtendedLifetime(type) {}
}

/// What one call came to in the worker.
private enum CallOutcome<Output> {
    case success(Output)
    /// The task threw.
    case thrown(any Error)
    /// The call's payload did not decode as the task type.
    case undecodable(any Error)
}

private func call<T: ProcessTask>(_: T.Type, payload: UnsafeRawBufferPointer,
                                  attachments: [[UInt8]]) -> CallOutcome<T.Output> {
    do {
        return run(try BinaryDecoder(attachments: attachments).decode(T.self, from: payload))
    } catch {
        return .undecodable(error)
    }
}

private func run<T: ProcessTask>(_ task: T) -> CallOutcome<T.Output> {
    do { return .success(try task.run()) } catch { return .thrown(error) }
}

/// Appends one outcome of a call of `taskName`: tag, then the
/// u32-length-prefixed output, or the error.
private func writeOutcome<Output: Encodable>(_ outcome: CallOutcome<Output>, of taskName: String,
                                             registry: TaskRegistry, into out: inout ByteWriter) {
    switch outcome {
    case .success(let output):
        let mark = out.count
        out.write(OutcomeTag.success.rawValue)
        out.write(UInt32(0))
        do {
            try BinaryEncoder().encode(output, into: &out)
            let length = out.count - mark - 5
            guard length <= WireProtocol.maxFrameBytes else {
                throw ProtocolViolation("the encoded result is \(length) bytes, over the frame limit")
            }
            out.patch(UInt32(length), at: mark + 1)
        } catch {
            out.bytes.removeSubrange(mark...)
            writeRemoteError(typeName: String(reflecting: type(of: error)),
                             message: "the result of \(taskName) could not be encoded: \(error)", into: &out)
        }
    case .thrown(let error):
        writeThrown(error, registry: registry, into: &out)
    case .undecodable(let error):
        writeRemoteError(typeName: "ProcessPool.DecodingFailure",
                         message: "could not decode \(taskName) in the worker: \(error)", into: &out)
    }
}

/// Whether a task type and its output travel as memory blocks, found once
/// and then read without a lock: a worker forked from a multi-threaded
/// parent must never take a lock another thread of the parent may hold.
private final class BlockFlags: Sendable {
    /// Bit 0: known; bit 1: the task type; bit 2: the output type.
    private let state = Atomic<UInt8>(0)

    func answer<T: ProcessTask>(_: T.Type) -> (tasks: Bool, outputs: Bool) {
        let known = state.load(ordering: .acquiring)
        if known & 1 != 0 { return (known & 2 != 0, known & 4 != 0) }
        let tasks = BitwiseTypes.isBitwise(T.self)
        let outputs = BitwiseTypes.isBitwise(T.Output.self)
        state.store(1 | (tasks ? 2 : 0) | (outputs ? 4 : 0), ordering: .releasing)
        return (tasks, outputs)
    }
}
