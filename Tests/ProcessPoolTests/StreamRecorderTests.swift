import Foundation
import PoolTestSupport
import ProcessPool
@testable import ProcessPoolCore
import Testing

/// `PROCESSPOOL_RECORD_STREAMS` (fuzz seeds from real traffic): a worker
/// started with it set copies the stream it reads into a file, byte for byte.
@Suite("Stream recording for fuzz seeds", .boundedExitWait, .serialized, .timeLimit(.minutes(2)))
struct StreamRecorderTests {
    @Test("a spawned worker records the parent's stream: the file cuts into the frames the parent sent")
    func workerRecordsItsStream() async throws {
        let gates = GateDirectory()
        defer { gates.cleanup() }
        // Read by each worker at its start (this process decided long ago).
        setenv(StreamRecorder.variable, gates.path, 1)
        let pool: ProcessPoolExecutor
        do {
            defer { unsetenv(StreamRecorder.variable) }
            pool = try makePool(.spawn(executable: TestEnvironment.workerExecutable), maxWorkers: 1)
            #expect(try await settle(pool.submit(Echo(41))) == 41)
        }
        let payload = [UInt8](repeating: 7, count: 300_000)  // sent as an attachment
        #expect(try await settle(pool.submit(EchoBytes(payload))) == payload)
        await pool.shutdown()
        let files = try FileManager.default.contentsOfDirectory(atPath: gates.path).filter { $0.hasPrefix("to-worker-") }
        #expect(files.count == 1, "one worker, one stream: \(files)")
        let recorded = try [UInt8](Data(contentsOf: URL(fileURLWithPath: gates.file(try #require(files.first)))))
        // Cut the recording as the worker cut the live stream.
        let splitter = FrameSplitter(expectPreamble: false)
        var offset = 0
        var kinds: [FrameKind] = []
        var attachmentBytes = 0
        while offset < recorded.count {
            let got = splitter.fill { buffer in
                let n = min(buffer.count, recorded.count - offset)
                recorded.withUnsafeBytes { buffer.baseAddress!.copyMemory(from: $0.baseAddress! + offset, byteCount: n) }
                offset += n
                return n
            }
            #expect(got > 0)
            while try splitter.nextFrame({ kind, _, attachments in
                kinds.append(kind)
                attachmentBytes += attachments.reduce(0) { $0 + $1.count }
            }) {}
        }
        #expect(kinds.first == .configure, "\(kinds)")
        #expect(kinds.filter { $0 == .run }.count == 2, "\(kinds)")
        #expect(kinds.last == .exit, "\(kinds)")
        #expect(attachmentBytes == payload.count, "the attachment was recorded whole")
    }
}
