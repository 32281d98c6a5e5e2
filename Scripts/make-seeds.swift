// Writes the seed corpora under Fuzz/Seeds/<target>/ from real traffic
// shapes: frames built with the library's FrameBuilder and message types,
// values with BinaryEncoder, and results produced by the worker's own task
// runners (TaskRunner.runChunk) for the tasks of Fuzz/Shared/FuzzSupport.swift.
// Built and run by `Scripts/fuzz.sh seeds` (compiled together with
// Fuzz/Shared/*.swift against the same core object as the fuzzers).
//
// Large [UInt8] values are encoded for real (so they become attachments,
// referred to by index), then their attachment's bytes are cut to a few
// bytes in the seed: the encoding's shape is real, the seed stays small.
import Glibc
import ProcessPoolCore

nonisolated(unsafe) var written = 0

func writeSeed(_ target: String, _ name: String, _ bytes: [UInt8]) {
    let dir = "Fuzz/Seeds/\(target)"
    mkdir("Fuzz/Seeds", 0o755)
    mkdir(dir, 0o755)
    let path = "\(dir)/\(name)"
    guard let f = fopen(path, "wb") else { fatalError("cannot write \(path)") }
    _ = bytes.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, f) }
    fclose(f)
    written += 1
}

/// Small stand-ins for the attachments of a real encoding.
func shrink(_ attachments: [[UInt8]]) -> [[UInt8]] {
    attachments.enumerated().map { i, a in Array(a.prefix(3 + i)) }
}

/// The attachments frame and bytes that go in front of a frame.
func withAttachments(_ attachments: [[UInt8]], frame: [UInt8]) -> [UInt8] {
    guard !attachments.isEmpty else { return frame }
    var out = WireProtocol.attachmentsFrame(for: attachments)
    for a in attachments { out += a }
    return out + frame
}

func end(_ frame: inout FrameBuilder) -> [UInt8] {
    try! frame.end()
    return frame.take()
}

// MARK: Parent -> worker

func configureFrame(maxTasks: UInt64, initializer: (String, any Encodable)?) -> [UInt8] {
    var frame = FrameBuilder()
    let payload = initializer.map { (name, value) in (name: name, payload: try! BinaryEncoder().encode(value)) }
    try! ConfigureMessage(maxTasks: maxTasks, initializer: payload).write(to: &frame)
    return end(&frame)
}

/// A run frame as ProcessPoolExecutor builds it (block for BitwiseCodable
/// tasks, else one payload per call, large byte arrays as attachments).
func runFrame<T: ProcessTask>(id: UInt64, _ tasks: [T], shrinkAttachments: Bool = true) -> [UInt8] {
    let bitwise = BitwiseTypes.isBitwise(T.self)
    var frame = FrameBuilder()
    RunHeader(itemID: id, taskName: T.taskName, count: tasks.count, layout: bitwise ? .block : .separate)
        .write(to: &frame)
    if bitwise {
        BitwiseTypes.writeBlock(tasks, into: &frame.writer)
    } else {
        frame.writer.attachments = []
        for task in tasks { try! frame.writePayload { try BinaryEncoder().encode(task, into: &$0) } }
    }
    let attachments = frame.writer.attachments ?? []
    frame.writer.attachments = nil
    let bytes = end(&frame)
    return withAttachments(shrinkAttachments ? shrink(attachments) : attachments, frame: bytes)
}

func exitFrame() -> [UInt8] {
    var frame = FrameBuilder()
    frame.begin(.exit)
    return end(&frame)
}

// MARK: Worker -> parent

func helloFrame(pid: Int32 = 4242) -> [UInt8] {
    var frame = FrameBuilder()
    HelloMessage(pid: pid).write(to: &frame)
    return end(&frame)
}

func readyFrame(failure: (String, String)? = nil) -> [UInt8] {
    var frame = FrameBuilder()
    ReadyHeader(ok: failure == nil).write(to: &frame)
    if let failure { writeRemoteError(typeName: failure.0, message: failure.1, into: &frame.writer) }
    return end(&frame)
}

func goodbyeFrame(_ reason: GoodbyeReason) -> [UInt8] {
    var frame = FrameBuilder()
    GoodbyeMessage(reason: reason).write(to: &frame)
    return end(&frame)
}

/// The results frame the worker's runner writes for these calls (the
/// worker loop's own steps: header, runner, attachments).
func resultsFrame<T: ProcessTask>(id: UInt64, _ tasks: [T]) -> [UInt8] {
    let bitwise = BitwiseTypes.isBitwise(T.self)
    // The calls as the worker receives them.
    var calls = ByteWriter()
    if bitwise {
        BitwiseTypes.writeBlock(tasks, into: &calls)
    } else {
        calls.attachments = []
        for task in tasks {
            var one = FrameBuilder()
            one.writer.attachments = []
            try! one.writePayload { try BinaryEncoder().encode(task, into: &$0) }
            calls.writeRaw(one.writer.bytes)
            calls.attachments! += one.writer.attachments ?? []
        }
    }
    let callAttachments = calls.attachments ?? []
    var out = FrameBuilder()
    ResultsHeader(itemID: id, runNanos: 12345, count: tasks.count, layout: .separate).write(to: &out)
    out.writer.attachments = []
    calls.bytes.withUnsafeBytes { raw in
        var reader = ByteReader(raw)
        try! fuzzRegistry.runners[T.taskName]!.runChunk(&reader, bitwise ? .block : .separate, tasks.count,
                                                         callAttachments, fuzzRegistry, &out.writer)
    }
    let attachments = out.writer.attachments ?? []
    out.writer.attachments = nil
    return withAttachments(shrink(attachments), frame: end(&out))
}

/// A results frame of hand-written outcomes (types no task returns).
func outcomesFrame(id: UInt64, count: Int, block: [UInt8]? = nil, _ values: [any Encodable]) -> [UInt8] {
    var out = FrameBuilder()
    ResultsHeader(itemID: id, runNanos: 999, count: count, layout: .separate).write(to: &out)
    if let block {
        out.writer.write(ValueLayout.block.rawValue)
        out.writer.writeRaw(block)
    } else {
        out.writer.write(ValueLayout.separate.rawValue)
        for (i, v) in values.enumerated() {
            if i == 1 {
                writeRemoteError(typeName: "Fuzz.Oops", message: "item \(i) failed", into: &out.writer)
                continue
            }
            out.writer.write(OutcomeTag.success.rawValue)
            try! out.writePayload { try BinaryEncoder().encode(v, into: &$0) }
        }
    }
    return end(&out)
}

let big = [UInt8](repeating: 0x5A, count: 300 * 1024)
let shape = Shape.map(["k": .list([.leaf(1), .text("t"), .pair(.nothing, .leaf(2))])])
let record = Record(id: 7, name: "r", tags: ["a"], scores: [3: 1.5], blob: [1, 2, 3], samples: [0.5],
                    flags: [nil, true], nested: [[1]], small: 1, ratio: 2)

/// Results for item `id` of sink kind `kind` (see makeSink in FuzzParent.swift)
/// with `count` outcomes.
func results(kind: Int, id: UInt64, count: Int, variant: Int) -> [UInt8] {
    switch kind {
    case 0: return variant == 0 ? resultsFrame(id: id, [Square(x: 12)])
        : resultsFrame(id: id, [Fail(code: 3, registered: variant == 1)])
    case 1: return resultsFrame(id: id, [Echo(bytes: variant == 0 ? [1, 2, 3] : big, label: "x")])
    case 2: return resultsFrame(id: id, [Describe(shape: shape)])
    case 3:
        if variant == 0 { return resultsFrame(id: id, (0..<count).map { Square(x: $0) }) }
        return resultsFrame(id: id, (0..<count).map { Fail(code: $0, registered: $0 % 2 == 0) })
    case 4: return resultsFrame(id: id, (0..<count).map { Echo(bytes: $0 == 0 && variant > 0 ? big : [UInt8($0)], label: nil) })
    case 5: return resultsFrame(id: id, (0..<count).map { Scale(values: [1, 2, Double($0)], factor: 0.5) })
    case 6: return outcomesFrame(id: id, count: 1, [shape])
    case 7: return outcomesFrame(id: id, count: count, Array(repeating: record, count: count))
    case 8:
        var w = ByteWriter()
        BitwiseTypes.writeBlock([2.5], into: &w)
        return variant == 0 ? outcomesFrame(id: id, count: 1, block: w.bytes, []) : outcomesFrame(id: id, count: 1, [2.5])
    default:
        var w = ByteWriter()
        BitwiseTypes.writeBlock((0..<count).map { $0 % 2 == 0 }, into: &w)
        return outcomesFrame(id: id, count: count, block: w.bytes, [])
    }
}

func format2(_ b: UInt8) -> String { let s = String(b, radix: 16); return s.count == 1 ? "plan0" + s : "plan" + s }
func exitedStatus(_ code: Int32) -> [UInt8] {
    [0] + (0..<4).map { UInt8(truncatingIfNeeded: UInt32(bitPattern: code) >> (8 * $0)) }
}

// MARK: Seeds

@main
enum MakeSeeds {
    static func main() {

        // parent: preamble, hello, ready, results for the four items in flight, goodbye.
        for plan in [0x00, 0x55, 0xAA, 0xFF, 0x1B, 0xE4] as [UInt8] {
            for variant in 0..<3 {
                var stream = WireProtocol.preamble + helloFrame() + readyFrame()
                for i in 0..<4 {
                    let kind = Int(plan >> UInt8(2 * i)) & 3 + i * 2
                    stream += results(kind: kind, id: UInt64(i + 1), count: i + 1, variant: variant)
                }
                // The harness's fifth item: kind (id + plan) % 10 for item 1's header count.
                let firstKind = Int(plan) & 3
                let firstCount = 1
                _ = firstKind
                stream += results(kind: Int((1 &+ UInt64(plan)) % 10), id: 5, count: firstCount, variant: variant)
                stream += goodbyeFrame(variant == 0 ? .exitRequested : .maxTasksReached)
                writeSeed("parent", String(format2(plan)) + "-\(variant)", [UInt8(variant * 40), plan] + stream)
            }
        }
        writeSeed("parent", "ready-failed", [1, 0] + WireProtocol.preamble + helloFrame()
                  + readyFrame(failure: ("Fuzz.InitError", "the initializer failed")))
        writeSeed("parent", "hello-only", [2, 0] + WireProtocol.preamble + helloFrame(pid: 1))


        // worker: configure, runs of every task and layout, exit.
        let workerStreams: [(String, [UInt8])] = [
            ("basic", configureFrame(maxTasks: 0, initializer: nil) + runFrame(id: 1, [Square(x: 3), Square(x: 4)])
                + runFrame(id: 2, [Echo(bytes: [1, 2], label: "a")]) + exitFrame()),
            ("all-tasks", configureFrame(maxTasks: 0, initializer: nil) + runFrame(id: 1, (0..<5).map { Square(x: $0) })
                + runFrame(id: 2, [Echo(bytes: big, label: nil), Echo(bytes: [], label: "e")])
                + runFrame(id: 3, [Fail(code: 1, registered: true), Fail(code: 2, registered: false)])
                + runFrame(id: 4, [Describe(shape: shape)]) + runFrame(id: 5, [Scale(values: [1, 2], factor: 3)]) + exitFrame()),
            ("max-tasks", configureFrame(maxTasks: 2, initializer: nil) + runFrame(id: 1, [Square(x: 1)])
                + runFrame(id: 2, [Square(x: 2)]) + runFrame(id: 3, [Square(x: 3)])),
            ("initializer", configureFrame(maxTasks: 0, initializer: ("Square", Square(x: 5)))
                + runFrame(id: 1, [Scale(values: [0.5], factor: -1)]) + exitFrame()),
            ("initializer-fails", configureFrame(maxTasks: 0, initializer: ("Fail", Fail(code: 9, registered: true)))),
            ("unregistered", configureFrame(maxTasks: 0, initializer: ("Nope", Square(x: 1)))
                + runFrame(id: 1, [Square(x: 1)]) + exitFrame()),
            ("eof", configureFrame(maxTasks: 0, initializer: nil) + runFrame(id: 1, [Describe(shape: .leaf(1))])),
        ]
        for (name, stream) in workerStreams { writeSeed("worker", name, stream) }

        // frames: both directions, reads of several sizes, with and without preamble.
        let parentStream = workerStreams[1].1
        var workerToParent = WireProtocol.preamble + helloFrame() + readyFrame()
        for kind in 0..<10 { workerToParent += results(kind: kind, id: UInt64(kind + 1), count: 2, variant: 1) }
        workerToParent += goodbyeFrame(.exitRequested)
        for (mode, maxRead) in [(0, 0), (0, 255), (2, 3), (0x80, 17)] as [(UInt8, UInt8)] {
            writeSeed("frames", "to-worker-\(mode)-\(maxRead)", [mode, maxRead] + parentStream)
            writeSeed("frames", "to-parent-\(mode)-\(maxRead)", [mode | 1, maxRead] + workerToParent)
        }
        writeSeed("frames", "attachments-empty", [1, 8] + WireProtocol.preamble
                  + withAttachments([[], [1], []], frame: goodbyeFrame(.exitRequested)))

        // decoder: every shape, encoded for real (large byte arrays as attachments,
        // whose count and size the spec byte then gives).
        for (i, (index, value)) in sampleShapes().enumerated() {
            var writer = ByteWriter()
            writer.attachments = []
            try! BinaryEncoder().encode(value, into: &writer)
            let n = writer.attachments?.count ?? 0
            let spec = UInt8(min(n, 3)) | (4 << 2)
            writeSeed("decoder", "shape\(index)-\(i)", [UInt8(index), spec] + writer.bytes)
        }

        // forkserver: statuses, replies, requests.
        let key: [UInt8] = (0..<UInt8(32)).map { $0 &* 37 &+ 11 }
        writeSeed("forkserver", "exited", [0] + exitedStatus(3))
        writeSeed("forkserver", "signaled", [0] + [1, 9, 0, 0, 0])
        writeSeed("forkserver", "request", [5] + key + [1])
        writeSeed("forkserver", "request-wrong-op", [9] + key + [2])
        writeSeed("forkserver", "reply", [0, 0x39, 0x30, 0, 0])


        print("make-seeds: wrote \(written) seeds")
    }
}
