/// The protocol's messages, each built by one `write(to:)` and parsed by one
/// validating `init(from:)`: the parent, the worker and the transports use
/// these and nothing else, so every count, length and number read from a
/// peer is checked in one place before anything uses it.
///
/// A message's fixed part only: the values that follow (calls, outcomes)
/// are read by their own readers, bounded by the counts checked here.

/// The most a single pid may be on the wire (Linux's pid_max is at most 2^22).
private let maxPID: UInt64 = 1 << 22

/// Parent → worker, once, first: the protocol version, the task limit and
/// the initializer.
package struct ConfigureMessage {
    package var version: UInt16
    /// Tasks before the worker retires (0: no limit).
    package var maxTasks: UInt64
    /// The initializer's task name and encoded call, if any.
    package var initializer: (name: String, payload: [UInt8])?

    package init(maxTasks: UInt64, initializer: (name: String, payload: [UInt8])?) {
        version = WireProtocol.version
        self.maxTasks = maxTasks
        self.initializer = initializer
    }

    package func write(to frame: inout FrameBuilder) throws {
        frame.begin(.configure)
        frame.writer.write(version)
        frame.writer.writeVarint(maxTasks)
        if let initializer {
            frame.writer.write(UInt8(1))
            frame.writer.writeString(initializer.name)
            try frame.writePayload { $0.writeRaw(initializer.payload) }
        } else {
            frame.writer.write(UInt8(0))
        }
    }

    package init(from reader: inout ByteReader) throws {
        version = try reader.read(UInt16.self)
        guard version == WireProtocol.version else {
            throw ProtocolViolation("the parent speaks protocol \(version), this worker \(WireProtocol.version)")
        }
        maxTasks = try reader.readVarint()
        switch try reader.readByte() {
        case 0: initializer = nil
        case 1:
            let name = try reader.readString()
            initializer = (name, Array(try reader.readPayload()))
        case let flag: throw ProtocolViolation("configure: initializer flag \(flag)")
        }
        guard reader.isAtEnd else { throw ProtocolViolation("configure: \(reader.remaining) trailing bytes") }
    }
}

/// Worker → parent, right after `configure`: the worker runs the protocol
/// (its initializer runs next and is reported by `ReadyMessage`).
package struct HelloMessage {
    package var version: UInt16
    /// The worker's pid as it reports it (for labels only: nothing is
    /// signalled through a pid a worker chose).
    package var pid: Int32

    package init(pid: Int32) {
        version = WireProtocol.version
        self.pid = pid
    }

    package func write(to frame: inout FrameBuilder) {
        frame.begin(.hello)
        frame.writer.write(version)
        frame.writer.writeVarint(UInt64(max(0, pid)))
    }

    package init(from reader: inout ByteReader) throws {
        version = try reader.read(UInt16.self)
        guard version == WireProtocol.version else {
            throw ProtocolViolation("the worker speaks protocol \(version), the pool \(WireProtocol.version)")
        }
        let raw = try reader.readVarint()
        guard raw >= 1, raw <= maxPID else { throw ProtocolViolation("hello: pid \(raw) is not a pid") }
        pid = Int32(raw)
        guard reader.isAtEnd else { throw ProtocolViolation("hello: \(reader.remaining) trailing bytes") }
    }
}

/// Worker → parent, after its initializer ran: whether it succeeded. On
/// failure one outcome (the initializer's error) follows the flag.
package struct ReadyHeader {
    package var ok: Bool

    package init(ok: Bool) { self.ok = ok }

    package func write(to frame: inout FrameBuilder) {
        frame.begin(.ready)
        frame.writer.write(UInt8(ok ? 1 : 0))
    }

    package init(from reader: inout ByteReader) throws {
        switch try reader.readByte() {
        case 0: ok = false
        case 1: ok = true
        case let flag: throw ProtocolViolation("ready: flag \(flag)")
        }
        if ok && !reader.isAtEnd { throw ProtocolViolation("ready: \(reader.remaining) trailing bytes") }
    }
}

/// Parent → worker: the fixed part of a `run` frame. The calls follow.
package struct RunHeader {
    package var itemID: UInt64
    package var taskName: String
    /// Calls in the frame; at most the bytes left after the header (every
    /// call takes at least one byte, or a block's stride).
    package var count: Int
    package var layout: ValueLayout

    package init(itemID: UInt64, taskName: String, count: Int, layout: ValueLayout) {
        self.itemID = itemID
        self.taskName = taskName
        self.count = count
        self.layout = layout
    }

    package func write(to frame: inout FrameBuilder) {
        frame.begin(.run)
        frame.writer.writeVarint(itemID)
        frame.writer.writeString(taskName)
        frame.writer.writeVarint(UInt64(count))
        frame.writer.write(layout.rawValue)
    }

    package init(from reader: inout ByteReader) throws {
        itemID = try reader.readVarint()
        taskName = try reader.readString()
        count = try readCallCount(&reader, what: "run")
        layout = try readLayout(from: &reader)
    }
}

/// Worker → parent: the fixed part of a `results` frame. The outcomes follow.
package struct ResultsHeader {
    package var itemID: UInt64
    /// How long the calls took in the worker (ns), clamped to an hour: a
    /// peer's number feeds the pool's arithmetic and must stay finite.
    package var runNanos: UInt64
    /// Outcomes in the frame, at most the bytes left after the header.
    package var count: Int
    package var layout: ValueLayout

    /// The longest run time taken at its word (an hour).
    package static let maxRunNanos: UInt64 = 3_600_000_000_000

    package init(itemID: UInt64, runNanos: UInt64, count: Int, layout: ValueLayout) {
        self.itemID = itemID
        self.runNanos = runNanos
        self.count = count
        self.layout = layout
    }

    /// Writes the header; returns the offset of the run time, which the
    /// worker patches once the calls have run.
    @discardableResult
    package func write(to frame: inout FrameBuilder) -> Int {
        frame.begin(.results)
        frame.writer.writeVarint(itemID)
        let mark = frame.count
        frame.writer.write(runNanos)
        frame.writer.writeVarint(UInt64(count))
        return mark
    }

    package init(from reader: inout ByteReader) throws {
        itemID = try reader.readVarint()
        runNanos = min(try reader.read(UInt64.self), Self.maxRunNanos)
        count = try readCallCount(&reader, what: "results")
        layout = try readLayout(from: &reader)
    }
}

/// Worker → parent: the worker leaves cleanly.
package struct GoodbyeMessage {
    package var reason: GoodbyeReason

    package init(reason: GoodbyeReason) { self.reason = reason }

    package func write(to frame: inout FrameBuilder) {
        frame.begin(.goodbye)
        frame.writer.writeVarint(reason.rawValue)
    }

    package init(from reader: inout ByteReader) throws {
        let raw = try reader.readVarint()
        guard let reason = GoodbyeReason(rawValue: raw) else {
            throw ProtocolViolation("goodbye: unknown reason \(raw)")
        }
        self.reason = reason
        guard reader.isAtEnd else { throw ProtocolViolation("goodbye: \(reader.remaining) trailing bytes") }
    }
}

/// Either way: the byte arrays sent raw after this frame and handed to the
/// next one. Each is at most `WireProtocol.maxFrameBytes`, and there are at
/// most `WireProtocol.maxAttachments`.
package struct AttachmentsAnnouncement {
    package var lengths: [Int]

    package init(lengths: [Int]) { self.lengths = lengths }

    /// Checks what a sender is about to announce against the limits both
    /// sides apply, so an oversized value fails its own call instead of
    /// breaking the stream.
    package static func check(_ attachments: [[UInt8]]) throws(ValueTooLarge) {
        guard attachments.count <= WireProtocol.maxAttachments else {
            throw ValueTooLarge("\(attachments.count) large byte arrays in one message",
                                limit: "\(WireProtocol.maxAttachments)")
        }
        for attachment in attachments where attachment.count > WireProtocol.maxFrameBytes {
            throw ValueTooLarge("a byte array of \(attachment.count) bytes", limit: "\(WireProtocol.maxFrameBytes) bytes")
        }
    }

    package func write(to frame: inout FrameBuilder) {
        frame.begin(.attachments)
        frame.writer.writeVarint(UInt64(lengths.count))
        for length in lengths { frame.writer.writeVarint(UInt64(length)) }
    }

    package init(from reader: inout ByteReader) throws {
        let count = try reader.readVarint()
        guard count >= 1, count <= UInt64(WireProtocol.maxAttachments), count <= UInt64(reader.remaining) else {
            throw ProtocolViolation("\(count) attachments announced (1...\(WireProtocol.maxAttachments), "
                + "one length byte each in \(reader.remaining) bytes)")
        }
        var lengths: [Int] = []
        lengths.reserveCapacity(Int(count))
        for _ in 0..<count {
            let length = try reader.readVarint()
            guard length <= UInt64(WireProtocol.maxFrameBytes) else {
                throw ProtocolViolation("an attachment of \(length) bytes exceeds the limit of \(WireProtocol.maxFrameBytes)")
            }
            lengths.append(Int(length))
        }
        guard reader.isAtEnd else { throw ProtocolViolation("attachments: \(reader.remaining) trailing bytes") }
        self.lengths = lengths
    }
}

/// A value too large for the protocol: it fails its own call.
package struct ValueTooLarge: Error, CustomStringConvertible, Sendable {
    package var what: String
    package var limit: String
    package init(_ what: String, limit: String) {
        self.what = what
        self.limit = limit
    }
    package var description: String { "\(what) exceeds the protocol's limit of \(limit)" }
}

/// Reads a call or outcome count and checks it against what the frame can
/// hold (at least one byte each), so no count from a peer can trap or
/// size an allocation beyond the frame.
private func readCallCount(_ reader: inout ByteReader, what: String) throws -> Int {
    let raw = try reader.readVarint()
    // One layout byte follows the count.
    guard raw <= UInt64(max(0, reader.remaining - 1)) else {
        throw ProtocolViolation("\(what): \(raw) calls in a frame with \(reader.remaining) bytes left")
    }
    return Int(raw)
}
