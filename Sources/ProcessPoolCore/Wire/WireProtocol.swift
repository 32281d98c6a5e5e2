/// The framed protocol between a pool and its workers.
///
/// A worker's stream starts with `preamble` (8 bytes, so a stream carrying
/// anything else is recognised at once), then both sides exchange frames:
///
///     u32 LE  length of what follows (kind + body), at most `maxFrameBytes`
///     u8      kind
///     ...     body
///
/// Parent to worker: `configure` (once, first), `run`, `exit`.
/// Worker to parent: `hello` (at once), `ready` (after the initializer
/// ran), `results`, `goodbye`.
/// Either way: `attachments`, which announces byte arrays sent raw right
/// after it and handed to the next frame (large `[UInt8]` values travel so,
/// uncopied).
/// Variable-length integers are LEB128 varints; strings are a varint length
/// and UTF-8; payloads are a u32 LE length and bytes.
package enum WireProtocol {
    /// Bumped whenever a frame's layout changes.
    package static let version: UInt16 = 3
    /// "\0PPOOL" + version + "\n".
    package static let preamble: [UInt8] = [0, 0x50, 0x50, 0x4F, 0x4F, 0x4C, UInt8(version), 0x0A]
    /// The largest frame either side accepts (1 GiB): bigger lengths are
    /// rejected before anything is allocated.
    package static let maxFrameBytes = 1 << 30
    /// Bytes of the length field.
    package static let headerBytes = 4
    /// Socket buffers both ends of a stream ask for (the kernel caps them at
    /// net.core.wmem_max/rmem_max; memory is used only while bytes wait):
    /// fewer hand-offs between writer and reader for large payloads.
    package static let socketBufferBytes: Int32 = 4 << 20
    /// The most attachments one frame may carry.
    package static let maxAttachments = 4096

    /// An `attachments` frame announcing `attachments` (the caller sends
    /// their bytes after it, then the frame they belong to).
    package static func attachmentsFrame(for attachments: [[UInt8]]) -> [UInt8] {
        var frame = FrameBuilder(capacity: 16 + 10 * attachments.count)
        AttachmentsAnnouncement(lengths: attachments.map(\.count)).write(to: &frame)
        try! frame.end()  // at most 4096 lengths of 5 bytes: far below the limit
        return frame.take()
    }
}

/// Frame kinds.
package enum FrameKind: UInt8, Sendable {
    // parent -> worker
    /// version u16, maxTasks varint (0: none), hasInitializer u8, [task name, payload]
    case configure = 1
    /// item id varint, task name, call count varint, layout u8 (`ValueLayout`),
    /// then a block of the calls or one payload per call
    case run = 2
    /// finish what was sent, say goodbye, exit 0
    case exit = 3
    // worker -> parent
    /// version u16, pid varint (sent before the initializer runs)
    case hello = 101
    /// item id varint, run time ns u64, count varint, layout u8 (`ValueLayout`),
    /// then a block of the outputs or one outcome per call
    case results = 102
    /// initializer ok u8, [its error as an outcome]
    case ready = 103
    /// reason varint (`GoodbyeReason`)
    case goodbye = 104
    // either way
    /// count varint, then each attachment's length varint; the attachments'
    /// bytes follow, then the frame they belong to
    case attachments = 5
}

/// Why a worker leaves cleanly.
package enum GoodbyeReason: UInt64, Sendable {
    case maxTasksReached = 1
    case exitRequested = 2
}

/// A frame that cannot be accepted.
package struct ProtocolViolation: Error, CustomStringConvertible, Sendable {
    package var description: String
    package init(_ description: String) { self.description = description }
}

/// Builds frames: reserves the length, lets the caller write the body, patches.
package struct FrameBuilder {
    package var writer: ByteWriter
    private var start = 0

    package init(capacity: Int = 256) { writer = ByteWriter(capacity: capacity) }

    /// Starts a frame of `kind` (frames may be appended back to back).
    package mutating func begin(_ kind: FrameKind) {
        start = writer.count
        writer.write(UInt32(0))
        writer.write(kind.rawValue)
    }

    /// Patches the length of the frame begun last.
    package mutating func end() throws {
        let length = writer.count - start - WireProtocol.headerBytes
        guard length <= WireProtocol.maxFrameBytes else {
            throw ProtocolViolation("a frame of \(length) bytes exceeds the limit of \(WireProtocol.maxFrameBytes)")
        }
        writer.patch(UInt32(length), at: start)
    }

    /// Writes a u32-length-prefixed payload produced by `body`; a payload
    /// over the frame limit is taken back out and refused.
    package mutating func writePayload(_ body: (inout ByteWriter) throws -> Void) throws {
        let mark = writer.count
        writer.write(UInt32(0))
        try body(&writer)
        let length = writer.count - mark - 4
        guard length <= WireProtocol.maxFrameBytes else {
            writer.bytes.removeSubrange(mark...)
            throw ValueTooLarge("a value of \(length) bytes encoded", limit: "\(WireProtocol.maxFrameBytes) bytes")
        }
        writer.patch(UInt32(length), at: mark)
    }

    /// Cuts the frame begun last out of the builder (frames before it stay).
    package mutating func takeLastFrame() -> [UInt8] {
        defer {
            writer.bytes.removeSubrange(start...)
            start = writer.count
        }
        return Array(writer.bytes[start...])
    }

    /// The bytes built so far; the builder is emptied.
    package mutating func take() -> [UInt8] {
        defer { writer = ByteWriter(capacity: 256); start = 0 }
        return writer.bytes
    }

    package var count: Int { writer.count }

    /// Empties the builder, keeping its memory for the next frames.
    package mutating func reset() {
        writer.bytes.removeAll(keepingCapacity: true)
        start = 0
    }
}

extension ByteReader {
    /// Reads a u32-length-prefixed payload (the length checked against
    /// what is left before anything is read).
    package mutating func readPayload() throws -> UnsafeRawBufferPointer {
        let n = Int(try read(UInt32.self))
        return try readRaw(n)
    }
}
