import CProcessPoolShim

/// Cuts a byte stream into frames, checking the preamble and the size limit.
///
/// Reads go straight into its own buffer (no zero-filling, no copies); a
/// frame is handed out as borrowed bytes. A length above the limit is a
/// `ProtocolViolation` before anything is allocated for it.
///
/// Attachments (announced by an `attachments` frame) are read straight into
/// arrays of their own, which the next frame receives: a 64 MiB payload is
/// never copied between buffers on this side.
///
/// What a peer announces is not what it sends: memory is committed as bytes
/// arrive (an attachment's array is reserved, not touched, and its pages
/// are faulted in a window at a time just ahead of the data), and a read is
/// never handed more than the stream owes when that is more than
/// `smallReadBytes` (so a blocking reader that waits for a whole buffer,
/// as the worker's does, cannot wait for bytes that will never come).
package final class FrameSplitter {
    /// The most a read is handed when the stream's next need is unknown
    /// or small.
    package static let smallReadBytes = 64 * 1024
    /// How far ahead of the data an attachment's pages are faulted in.
    static let prefaultWindow = 8 << 20

    private var storage: UnsafeMutableRawPointer
    private var capacity: Int
    private var readIndex = 0
    private var writeIndex = 0
    private var preamblePending: Bool
    /// Lengths of the attachments announced for the next frame.
    private var announced: [Int] = []
    /// The attachments received in full so far.
    private var received: [[UInt8]] = []
    /// The attachment being received and how much of it has arrived.
    private var partial: [UInt8] = []
    private var partialFilled = 0
    /// How far `partial`'s pages have been faulted in.
    private var partialPrefaulted = 0
    /// A large array the owner is done with, reused for the next attachment
    /// that fits (fresh memory costs a page fault and zeroing per page).
    private var spare: [UInt8]?

    /// A copy of what is read, for fuzz seeds (nil unless
    /// `PROCESSPOOL_RECORD_STREAMS` is set).
    private var recorder: StreamRecorder?

    /// Whether an announced attachment is still arriving.
    private var receivingAttachment: Bool { received.count < announced.count }

    package init(expectPreamble: Bool, initialCapacity: Int = 64 * 1024) {
        preamblePending = expectPreamble
        recorder = StreamRecorder(toParent: expectPreamble)
        capacity = initialCapacity
        storage = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 16)
    }

    deinit { storage.deallocate() }

    private var available: Int { writeIndex - readIndex }

    private func peekLength() -> Int {
        var v: UInt32 = 0
        memcpyFrom(&v, offset: readIndex, count: 4)
        return Int(UInt32(littleEndian: v))
    }

    private func memcpyFrom(_ dst: UnsafeMutablePointer<UInt32>, offset: Int, count: Int) {
        UnsafeMutableRawPointer(dst).copyMemory(from: storage + offset, byteCount: count)
    }

    /// Bytes the stream owes for the frame being received, when the header
    /// is buffered and the length is valid; nil otherwise.
    private var bytesOwed: Int? {
        if preamblePending { return max(1, WireProtocol.preamble.count - available) }
        guard available >= WireProtocol.headerBytes else { return nil }
        let length = peekLength()
        guard length >= 1, length <= WireProtocol.maxFrameBytes else { return nil }
        return max(0, WireProtocol.headerBytes + length - available)
    }

    /// Makes room and lets `read` fill it: `read` gets free space and returns
    /// how many bytes it stored (<= 0 is passed back untouched).
    ///
    /// The space handed out is at most `smallReadBytes`, or exactly what the
    /// current frame or attachment still owes when that is more: a large
    /// frame gets its whole buffer at once (no doubling), and no read is
    /// ever asked to wait for more than the peer has promised.
    package func fill(_ read: (UnsafeMutableRawBufferPointer) -> Int) -> Int {
        // Buffered bytes go first; then the stream goes straight into the attachment.
        if receivingAttachment && drainIntoAttachments() == false {
            let window = prefaultAhead()
            let start = partialFilled
            let got = partial.withUnsafeMutableBytes { raw in
                read(UnsafeMutableRawBufferPointer(rebasing: raw[start..<window]))
            }
            if got > 0 {
                if recorder != nil {
                    partial.withUnsafeBytes { recorder?.record(UnsafeRawBufferPointer(rebasing: $0[start..<start + got])) }
                }
                partialFilled += got
                finishAttachmentIfComplete()
            }
            return got
        }
        let owed = bytesOwed ?? 0
        let want = owed > Self.smallReadBytes ? owed : Self.smallReadBytes
        reserveFree(want)
        let got = read(UnsafeMutableRawBufferPointer(start: storage + writeIndex, count: want))
        if got > 0 {
            if recorder != nil { recorder?.record(UnsafeRawBufferPointer(start: storage + writeIndex, count: got)) }
            writeIndex += got
        }
        return got
    }

    /// Faults in the next window of the attachment being received (one
    /// `MADV_POPULATE_WRITE` per window rather than a trap per page) and
    /// returns where the window ends: reads go no further, so pages are
    /// committed only just ahead of bytes that arrive.
    private func prefaultAhead() -> Int {
        let end = min(partial.count, partialFilled + Self.prefaultWindow)
        if end > partialPrefaulted {
            let start = max(partialPrefaulted, partialFilled)
            if end - start >= 1 << 20 {
                partial.withUnsafeMutableBytes { cpp_prefault($0.baseAddress! + start, end - start) }
            }
            partialPrefaulted = end
        }
        return end
    }

    private func reserveFree(_ want: Int) {
        if readIndex == writeIndex {
            readIndex = 0
            writeIndex = 0
        }
        if capacity - writeIndex >= want { return }
        // Compact first; grow only if that is not enough.
        if readIndex > 0 {
            (storage).copyMemory(from: storage + readIndex, byteCount: available)
            writeIndex = available
            readIndex = 0
            if capacity - writeIndex >= want { return }
        }
        var newCapacity = capacity
        while newCapacity - writeIndex < want { newCapacity *= 2 }
        if want > 1 << 20 { newCapacity = writeIndex + want }
        let bigger = UnsafeMutableRawPointer.allocate(byteCount: newCapacity, alignment: 16)
        bigger.copyMemory(from: storage, byteCount: writeIndex)
        storage.deallocate()
        storage = bigger
        capacity = newCapacity
    }

    /// Gives back memory after a frame over 128 MiB (smaller buffers are kept:
    /// a fresh 64 MiB buffer costs more in page faults than its copy).
    package func shrinkIfIdle() {
        guard available == 0, capacity > 128 * 1024 * 1024 else { return }
        storage.deallocate()
        capacity = Self.smallReadBytes
        storage = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 16)
        readIndex = 0
        writeIndex = 0
    }

    /// Allocates the array for the next announced attachment that has bytes
    /// (left uninitialised: the stream fills it before anyone reads it);
    /// empty attachments are complete at once.
    private func startAttachmentIfNeeded() {
        while receivingAttachment && partial.isEmpty {
            let length = announced[received.count]
            guard length > 0 else {
                received.append([])
                continue
            }
            partialFilled = 0
            if let count = spare?.count, count >= length, count / 2 <= length {
                partial = spare!
                spare = nil
                partial.removeLast(count - length)  // in place: the array is ours alone now
                partialPrefaulted = length  // its pages are in memory already
                continue
            }
            // Reserved, not touched: pages are committed as data arrives.
            partial = [UInt8](unsafeUninitializedCapacity: length) { _, initialized in initialized = length }
            partialPrefaulted = 0
        }
    }

    /// Offers an array its owner no longer needs for the next attachment of
    /// about its size. An array still shared elsewhere is copied on first
    /// write (never overwritten), so this is only ever an optimisation.
    package func recycle(_ array: [UInt8]) {
        if array.count >= 1 << 20 && array.count > (spare?.count ?? 0) { spare = array }
    }

    private func finishAttachmentIfComplete() {
        guard !partial.isEmpty, partialFilled == partial.count else { return }
        received.append(partial)
        partial = []
        partialFilled = 0
        partialPrefaulted = 0
    }

    /// Moves buffered bytes into the attachments still arriving; true once
    /// every announced attachment is complete.
    private func drainIntoAttachments() -> Bool {
        while receivingAttachment {
            startAttachmentIfNeeded()
            guard receivingAttachment else { break }
            let take = min(partial.count - partialFilled, available)
            guard take > 0 else { return false }
            partial.withUnsafeMutableBytes { raw in
                (raw.baseAddress! + partialFilled).copyMemory(from: storage + readIndex, byteCount: take)
            }
            readIndex += take
            partialFilled += take
            finishAttachmentIfComplete()
        }
        return true
    }

    /// Reads an `attachments` frame (validated by `AttachmentsAnnouncement`).
    private func announceAttachments(_ body: UnsafeRawBufferPointer) throws {
        guard announced.isEmpty else { throw ProtocolViolation("attachments announced twice for one frame") }
        var reader = ByteReader(body)
        announced = try AttachmentsAnnouncement(from: &reader).lengths
    }

    /// Drops everything buffered and received (after a malformed stream,
    /// whose owner stops reading it).
    package func discard() {
        readIndex = 0
        writeIndex = 0
        announced = []
        received = []
        partial = []
        partialFilled = 0
        partialPrefaulted = 0
        spare = nil
        if capacity > Self.smallReadBytes {
            storage.deallocate()
            capacity = Self.smallReadBytes
            storage = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 16)
        }
    }

    /// Calls `body` with the next complete frame (kind, body, the attachments
    /// sent for it) if one is buffered; returns false otherwise. The bytes are
    /// valid during `body` only.
    package func nextFrame(_ body: (FrameKind, UnsafeRawBufferPointer, [[UInt8]]) throws -> Void) throws -> Bool {
        guard drainIntoAttachments() else { return false }
        if preamblePending {
            let n = WireProtocol.preamble.count
            guard available >= n else { return false }
            let got = Array(UnsafeRawBufferPointer(start: storage + readIndex, count: n))
            guard got == WireProtocol.preamble else {
                let shown = got.map { String($0, radix: 16) }.joined(separator: " ")
                throw ProtocolViolation("the stream does not start with the protocol preamble (got \(shown))")
            }
            readIndex += n
            preamblePending = false
        }
        guard available >= WireProtocol.headerBytes else { return false }
        let length = peekLength()
        guard length >= 1, length <= WireProtocol.maxFrameBytes else {
            throw ProtocolViolation("frame length \(length) is outside 1...\(WireProtocol.maxFrameBytes)")
        }
        guard available >= WireProtocol.headerBytes + length else { return false }
        let start = readIndex + WireProtocol.headerBytes
        readIndex = start + length
        let kindByte = storage.load(fromByteOffset: start, as: UInt8.self)
        guard let kind = FrameKind(rawValue: kindByte) else {
            throw ProtocolViolation("unknown frame kind \(kindByte)")
        }
        let frame = UnsafeRawBufferPointer(start: storage + start + 1, count: length - 1)
        if kind == .attachments {
            try announceAttachments(frame)
            return true
        }
        let attachments = received
        announced = []
        received = []
        try body(kind, frame, attachments)
        return true
    }
}
