/// An append-only little-endian byte buffer: the building block of frames and
/// of the binary Codable encoding.
package struct ByteWriter: Sendable {
    /// The bytes written so far.
    package var bytes: [UInt8]
    /// Large byte arrays the encoder left out of `bytes` (it writes their
    /// index instead); nil: everything goes inline. Frames send them as
    /// attachments, without copying them.
    package var attachments: [[UInt8]]?

    package init(capacity: Int = 64) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    package init(reusing buffer: [UInt8]) {
        bytes = buffer
        bytes.removeAll(keepingCapacity: true)
    }

    package var count: Int { bytes.count }

    @inline(__always)
    package mutating func write(_ value: UInt8) { bytes.append(value) }

    @inline(__always)
    package mutating func write<I: FixedWidthInteger>(_ value: I) {
        withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
    }

    @inline(__always)
    package mutating func write(_ value: Double) { write(value.bitPattern) }

    @inline(__always)
    package mutating func write(_ value: Float) { write(value.bitPattern) }

    /// Writes a tag byte then a little-endian fixed-width value, in one append
    /// (the generic raw-buffer append costs more than the copy itself).
    @inline(__always)
    package mutating func write<I: FixedWidthInteger>(tag: UInt8, _ value: I) {
        var scratch: (UInt64, UInt64, UInt64) = (0, 0, 0)
        withUnsafeMutableBytes(of: &scratch) { raw in
            raw[0] = tag
            raw.storeBytes(of: value.littleEndian, toByteOffset: 1, as: I.self)
            let start = raw.baseAddress!.assumingMemoryBound(to: UInt8.self)
            bytes.append(contentsOf: UnsafeBufferPointer(start: start, count: 1 + MemoryLayout<I>.size))
        }
    }

    /// Writes raw bytes with no length prefix.
    @inline(__always)
    package mutating func writeRaw(_ raw: UnsafeRawBufferPointer) { bytes.append(contentsOf: raw) }

    /// Writes raw bytes with no length prefix.
    @inline(__always)
    package mutating func writeRaw(_ raw: some Collection<UInt8>) { bytes.append(contentsOf: raw) }

    /// Writes a variable-length unsigned integer (LEB128).
    @inline(__always)
    package mutating func writeVarint(_ value: UInt64) {
        var v = value
        while v >= 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: v) | 0x80)
            v >>= 7
        }
        bytes.append(UInt8(v))
    }

    /// Writes a varint length followed by the UTF-8 bytes.
    @inline(__always)
    package mutating func writeString(_ string: String) {
        var s = string
        s.withUTF8 { utf8 in
            writeVarint(UInt64(utf8.count))
            bytes.append(contentsOf: UnsafeRawBufferPointer(utf8))
        }
    }

    /// Writes a varint length followed by the bytes.
    @inline(__always)
    package mutating func writeBytes(_ raw: some Collection<UInt8>) {
        writeVarint(UInt64(raw.count))
        bytes.append(contentsOf: raw)
    }

    /// Overwrites a little-endian UInt32 at `offset` (used to patch lengths).
    package mutating func patch(_ value: UInt32, at offset: Int) {
        withUnsafeBytes(of: value.littleEndian) { raw in
            for i in 0..<4 { bytes[offset + i] = raw[i] }
        }
    }
}

extension ByteWriter {
    /// Overwrites a little-endian UInt64 at `offset`.
    package mutating func patchUInt64(_ value: UInt64, at offset: Int) {
        withUnsafeBytes(of: value.littleEndian) { raw in
            for i in 0..<8 { bytes[offset + i] = raw[i] }
        }
    }
}
