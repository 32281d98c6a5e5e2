import FoundationEssentials
import PoolTestSupport
import ProcessPool
import ProcessPoolCore
import Testing

/// Sizes that straddle every threshold in the code: the 64 KiB small read,
/// the 256 KiB attachment threshold, the 1 MiB blocking whole-buffer read,
/// the 4 MiB socket buffers, the 8 MiB prefault window, buffer doubling.
let sweepSizes: [Int] = [
    0, 1, 64 * 1024 - 1, 64 * 1024 + 1, 256 * 1024 - 1, 256 * 1024, 256 * 1024 + 1,
    600 * 1024, (1 << 20) - 1, (1 << 20) + 1,
]

/// The sizes past the socket buffers and the prefault window, for the shapes
/// with a bulk path (the others cost seconds per MiB in a debug build).
let largeSweepSizes: [Int] = [(4 << 20) + 3, (8 << 20) + 1]

@Suite("Any input, any size (SEMANTICS 37)", .boundedExitWait, .timeLimit(.minutes(5)))
struct SizeSweepTests {
    /// Every shape at every size, as argument and as result, each followed
    /// by a small task on the same (only) worker: a stream left out of step
    /// or a read waiting for bytes that never come shows up as a hang or a
    /// wrong value (the first release hung on a 600 KiB `Data`).
    ///
    /// Every start method gets every size (two shapes each); each pair of
    /// shape and size runs on one method, in turn. The thresholds are in the
    /// core's reading and framing, which every method shares (a socketpair
    /// to a worker running the same loop), so the 3x of every pair on every
    /// method bought no coverage, and cost a minute under TSan.
    @Test("every shape at every size both ways, then small tasks on the same worker", arguments: localMethods)
    func sweep(method: StartMethod) async throws {
        let turn = localMethods.firstIndex { $0.name == method.name } ?? 0
        func mine(_ shape: SweepShape, _ sizeIndex: Int) -> Bool {
            (SweepShape.allCases.firstIndex(of: shape)! + sizeIndex) % localMethods.count == turn
        }
        let pool = try makePool(method, maxWorkers: 1)
        var pairs = 0
        for shape in SweepShape.allCases {
            for (seed, size) in sweepSizes.enumerated() where mine(shape, seed) {
                let payload = SweepPayload(shape: shape, size: size, seed: seed)
                let echoed = try await settle(pool.submit(EchoPayload(payload)), within: 60)
                #expect(echoed == EchoPayload(payload).run(), "\(shape) \(size) B echoed")
                #expect(try await settle(pool.submit(Echo(seed))) == seed, "small task after \(shape) \(size) B")
                let made = try await settle(pool.submit(MakePayload(shape: shape, size: size, seed: seed)), within: 60)
                #expect(made == payload, "\(shape) \(size) B made in the worker")
                #expect(try await settle(pool.submit(Square(seed))) == seed * seed)
                pairs += 1
            }
        }
        #expect(pairs * localMethods.count >= SweepShape.allCases.count * sweepSizes.count, "this method's share of the pairs")
        for (index, shape) in [SweepShape.bytes, .doubles, .string].enumerated() {
            for (sizeIndex, size) in largeSweepSizes.enumerated() where (index + sizeIndex) % localMethods.count == turn {
                let payload = SweepPayload(shape: shape, size: size, seed: size)
                #expect(try await settle(pool.submit(EchoPayload(payload)), within: 60) == EchoPayload(payload).run())
                #expect(try await settle(pool.submit(Echo(size))) == size)
            }
        }
        await pool.shutdown()
    }

    @Test("64 MiB inline and as attachments, then small tasks", arguments: localMethods)
    func huge(method: StartMethod) async throws {
        let pool = try makePool(method, maxWorkers: 1)
        for shape in [SweepShape.bytes, .doubles] {
            let payload = SweepPayload(shape: shape, size: 64 << 20, seed: 7)
            let echoed = try await settle(pool.submit(EchoPayload(payload)), within: 120)
            #expect(echoed == EchoPayload(payload).run(), "\(shape) 64 MiB")
            #expect(try await settle(pool.submit(Echo(3))) == 3)
        }
        await pool.shutdown()
    }

    @Test("mixed shapes and sizes in one chunk, large before small, in order", arguments: localMethods)
    func mixedChunks(method: StartMethod) async throws {
        let pool = try makePool(method, maxWorkers: 2)
        var tasks: [EchoPayload] = []
        for (seed, size) in sweepSizes.reversed().enumerated() where size <= 256 * 1024 + 1 || seed % 2 == 0 {
            tasks.append(EchoPayload(SweepPayload(shape: SweepShape.allCases[seed % SweepShape.allCases.count],
                                                  size: size, seed: seed)))
        }
        for chunkSize in [1, 3, 7] {
            var index = 0
            for try await echoed in try pool.map(tasks, chunkSize: chunkSize, bufferSize: 2) {
                #expect(echoed == tasks[index].run(), "item \(index) at chunk size \(chunkSize)")
                index += 1
            }
            #expect(index == tasks.count)
        }
        await pool.shutdown()
    }

    @Test("a value over the frame limit fails its own submit; the pool stays usable")
    func overLimit() async throws {
        let pool = try makePool(.spawn(executable: TestEnvironment.workerExecutable), maxWorkers: 1)
        // 1 GiB + 1 of Int32s inline: refused in the parent before anything is sent.
        let tooMany = [Int32](repeating: 1, count: (1 << 28) + 1)
        let payload = SweepPayload(shape: .nested, size: 0, seed: 0)
        var big = payload
        big.leaves = [SweepPayload.Leaf(name: "big", values: tooMany, flag: nil)]
        do {
            _ = try pool.submit(EchoPayload(big))
            Issue.record("a 1 GiB argument was accepted")
        } catch let error as ProcessPoolError {
            guard case .valueTooLarge(let why) = error else {
                Issue.record("unexpected \(error)")
                return
            }
            #expect(why.contains("1073741824"))
        }
        #expect(try await settle(pool.submit(Echo(1))) == 1)
        await pool.shutdown()
    }
}

@Suite("The frame splitter's reads", .boundedExitWait, .timeLimit(.minutes(1)))
struct FrameSplitterReadTests {
    /// A blocking reader that waits for its whole buffer (the worker's, from
    /// 1 MiB) must never be handed more than the stream owes.
    @Test("a read is never handed more than the current frame owes, past 64 KiB",
          arguments: [0, 1, 65_535, 65_536, 600 * 1024, 1 << 20, (1 << 20) + 5, 3 << 20])
    func readsNeverExceedWhatIsOwed(bodySize: Int) throws {
        let splitter = FrameSplitter(expectPreamble: false)
        // Two frames back to back: the body of a `run`-kind frame of
        // `bodySize` bytes, then a small one.
        var stream: [UInt8] = []
        for size in [bodySize, 3] {
            let length = UInt32(size + 1)
            stream += withUnsafeBytes(of: length.littleEndian) { Array($0) }
            stream.append(FrameKind.run.rawValue)
            stream += (0..<size).map { UInt8(truncatingIfNeeded: $0) }
        }
        var offset = 0
        var frames: [Int] = []
        while offset < stream.count {
            let got = splitter.fill { buffer in
                let owedMax = buffer.count
                let n = min(owedMax, stream.count - offset)
                if owedMax > FrameSplitter.smallReadBytes {
                    // Only what the frame being read still needs.
                    #expect(offset + owedMax <= stream.count, "asked for \(owedMax) at \(offset)")
                }
                stream.withUnsafeBytes { raw in
                    UnsafeMutableRawBufferPointer(rebasing: buffer[0..<n])
                        .copyMemory(from: UnsafeRawBufferPointer(rebasing: raw[offset..<offset + n]))
                }
                offset += n
                return n
            }
            #expect(got > 0)
            while try splitter.nextFrame({ _, body, _ in frames.append(body.count) }) {}
        }
        #expect(frames == [bodySize, 3])
    }

    @Test("an announced attachment commits memory only as its bytes arrive")
    func attachmentMemoryFollowsTheBytes() throws {
        let splitter = FrameSplitter(expectPreamble: false)
        var announce = FrameBuilder()
        AttachmentsAnnouncement(lengths: [1 << 30]).write(to: &announce)
        try announce.end()
        let frame = announce.take()
        _ = splitter.fill { buffer in
            frame.withUnsafeBytes { buffer.copyMemory(from: $0) }
            return frame.count
        }
        #expect(try splitter.nextFrame { _, _, _ in } == true)
        let before = residentBytes()
        // Send 1 MiB of the 1 GiB and nothing more: the next read is handed
        // at most the prefault window, and resident memory grows by about
        // what arrived, not by the announced gigabyte.
        var asked = 0
        _ = splitter.fill { buffer in
            asked = buffer.count
            buffer.initializeMemory(as: UInt8.self, repeating: 7)
            return min(buffer.count, 1 << 20)
        }
        #expect(asked <= 8 << 20)
        let grown = residentBytes() - before
        #expect(grown < 64 << 20, "resident memory grew by \(grown) bytes")
    }
}

/// This process's resident set in bytes (/proc/self/statm).
func residentBytes() -> Int {
    guard let text = readTextFile("/proc/self/statm") else { return 0 }
    let fields = text.split(separator: " ")
    guard fields.count > 1, let pages = Int(fields[1]) else { return 0 }
    return pages * 4096
}
