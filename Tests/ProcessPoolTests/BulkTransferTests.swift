import PoolTestSupport
import ProcessPool
import ProcessPoolCore
import Testing

/// The two bulk paths of the wire: `BitwiseCodable` values as memory blocks,
/// large `[UInt8]` as attachments read straight into their arrays.
@Suite("Bulk transfer: blocks and attachments", .boundedExitWait, .timeLimit(.minutes(3)))
struct BulkTransferTests {
    // MARK: Blocks

    @Test("BitwiseCodable tasks map in order at every chunk size, from arrays and lazy sequences",
          arguments: localMethods, [1, 7, 1024])
    func bitwiseMap(method: StartMethod, chunkSize: Int) async throws {
        let pool = try makePool(method)
        var fromArray: [Int] = []
        for try await value in try pool.map((0..<3000).map { BitwiseSquare($0) }, chunkSize: chunkSize) {
            fromArray.append(value)
        }
        #expect(fromArray == (0..<3000).map { $0 * $0 })
        var fromSequence: [Int] = []
        let lazy = (0..<3000).lazy.map { BitwiseSquare($0) }
        for try await value in try pool.map(lazy, chunkSize: chunkSize, bufferSize: 2) {
            fromSequence.append(value)
        }
        #expect(fromSequence == fromArray)
        await pool.shutdown()
    }

    @Test("a failing call inside a block: the items before it arrive, its error surfaces at it",
          arguments: localMethods)
    func failureInsideBlock(method: StartMethod) async throws {
        let pool = try makePool(method)
        let tasks = (0..<100).map { BitwiseSquare($0, fail: $0 == 37) }
        var delivered: [Int] = []
        do {
            for try await value in try pool.map(tasks, chunkSize: 64) { delivered.append(value) }
            Issue.record("expected item 37 to throw")
        } catch let error as RegisteredFailure {
            #expect(error.code == 37)
        }
        #expect(delivered == (0..<37).map { $0 * $0 })
        // The pool is fine afterwards, for blocks and single submits alike.
        #expect(try await settle(pool.submit(MakePair(count: 10))) == Pair(count: 10, ratio: 2.5))
        let failed = try pool.submit(BitwiseSquare(5, fail: true))
        await #expect(throws: RegisteredFailure.self) { try await settle(failed) }
        await pool.shutdown()
    }

    @Test("a block whose stride differs from this build's is refused with a reason")
    func strideMismatch() throws {
        var writer = ByteWriter()
        BitwiseTypes.writeBlock([Int32(1), 2, 3], into: &writer)
        let bytes = writer.bytes
        func read<T>(_: T.Type, count: Int) throws -> [T] {
            try bytes.withUnsafeBytes { raw in
                var reader = ByteReader(raw)
                return try BitwiseTypes.readBlock(T.self, count: count, from: &reader)
            }
        }
        #expect(try read(Int32.self, count: 3) == [1, 2, 3])
        let error = #expect(throws: ProtocolViolation.self) { try read(Int64.self, count: 3) }
        #expect(error?.description.contains("different versions") == true)
        #expect(throws: (any Error).self) { try read(Int32.self, count: 4) }
    }

    // MARK: Attachments

    @Test("several large arrays per call, optional and nested, both ways, in chunks", arguments: localMethods)
    func attachmentsBothWays(method: StartMethod) async throws {
        let pool = try makePool(method)
        func blob(_ count: Int, _ seed: Int) -> [UInt8] { periodicBytes(count: count, period: 256) { UInt8(truncatingIfNeeded: $0 &* seed) } }
        let tasks = (0..<5).map { i in
            ShuffleBlobs(first: blob(300_000 + i, 3 + i), second: i % 2 == 0 ? blob(1 << 20, 7 + i) : nil,
                         small: blob(100, i))
        }
        var index = 0
        for try await parts in try pool.map(tasks, chunkSize: 3) {
            let task = tasks[index]
            #expect(parts == [task.small] + (task.second.map { [$0] } ?? []) + [task.first])
            index += 1
        }
        #expect(index == tasks.count)
        await pool.shutdown()
    }

    @Test("a task that throws after receiving attachments leaves the stream in step", arguments: localMethods)
    func attachmentsThenError(method: StartMethod) async throws {
        let pool = try makePool(method, maxWorkers: 1)
        let big = [UInt8](repeating: 9, count: 2 << 20)
        let failing = try pool.submit(ShuffleBlobs(first: big, second: big, small: [], fail: true))
        await #expect(throws: RegisteredFailure.self) { try await settle(failing) }
        let echoed = try await settle(pool.submit(EchoBytes(big)))
        #expect(echoed == big)
        await pool.shutdown()
    }

    @Test("a worker reuses attachment memory only when no task still holds it", arguments: localMethods)
    func recycledMemoryIsNeverShared(method: StartMethod) async throws {
        let pool = try makePool(method, maxWorkers: 1)
        var seen: [[UInt8]] = []
        for value in UInt8(1)...4 {
            seen.append(try await settle(pool.submit(KeepBytes([UInt8](repeating: value, count: 2 << 20)))))
        }
        #expect(seen == [[0, 0, 1], [1, 1, 2], [2, 2, 3], [3, 3, 4]])
        // Echoes of one size in a row reuse memory; the bytes still come back right.
        for value in UInt8(5)...8 {
            let blob = [UInt8](repeating: value, count: 3 << 20)
            #expect(try await settle(pool.submit(EchoBytes(blob))) == blob)
        }
        await pool.shutdown()
    }

    @Test("an attachment announced over the limit breaks the pool with a reason", arguments: localMethods)
    func hugeAnnouncement(method: StartMethod) async throws {
        let pool = try makePool(method)
        let reason = await expectBroken {
            _ = try await settle(pool.submit(AnnounceHugeAttachment()))
        }
        #expect(reason?.contains("exceeds the limit") == true, "reason: \(reason ?? "none")")
        await pool.shutdown()
    }

    @Test("the splitter hands a frame its attachments however the stream is cut")
    func splitterAttachments() throws {
        let first = (0..<1000).map { UInt8(truncatingIfNeeded: $0) }
        let second: [UInt8] = []
        let third = [UInt8](repeating: 0xAB, count: 70_000)
        var stream = WireProtocol.preamble
        stream += WireProtocol.attachmentsFrame(for: [first, second, third])
        stream += first + second + third
        var frame = FrameBuilder()
        frame.begin(.exit)
        frame.writer.write(UInt8(42))
        try frame.end()
        let exitFrame = frame.take()
        stream += exitFrame + exitFrame
        for cut in [1, 7, 4096, stream.count] {
            let splitter = FrameSplitter(expectPreamble: true)
            var offset = 0
            var seen: [(FrameKind, [UInt8], [[UInt8]])] = []
            while offset < stream.count {
                let got = splitter.fill { buffer in
                    let n = min(cut, buffer.count, stream.count - offset)
                    stream.withUnsafeBytes { buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[offset..<offset + n])) }
                    return n
                }
                offset += got
                while try splitter.nextFrame({ kind, body, attachments in seen.append((kind, Array(body), attachments)) }) {}
            }
            #expect(seen.count == 2, "cut \(cut)")
            #expect(seen.first?.0 == .exit && seen.first?.1 == [42])
            #expect(seen.first?.2 == [first, second, third], "cut \(cut)")
            #expect(seen.last?.2 == [], "cut \(cut): attachments belong to one frame only")
        }
    }

    @Test("an attachment index beyond the frame's attachments is a decoding error")
    func attachmentIndexChecked() throws {
        var writer = ByteWriter()
        writer.attachments = []
        try BinaryEncoder().encode([UInt8](repeating: 1, count: 300_000), into: &writer)
        #expect(writer.attachments?.count == 1)
        #expect(writer.bytes.count < 16)
        let decoded = try BinaryDecoder(attachments: writer.attachments!).decode([UInt8].self, from: writer.bytes)
        #expect(decoded.count == 300_000)
        #expect(throws: DecodingError.self) { try BinaryDecoder().decode([UInt8].self, from: writer.bytes) }
    }
}
