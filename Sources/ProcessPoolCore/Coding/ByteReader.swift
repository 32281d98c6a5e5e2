/// Why bytes could not be read: every read is bounds-checked, so malformed
/// input surfaces as this error, never as a crash or an oversized allocation.
package struct ByteReaderError: Error, CustomStringConvertible, Sendable {
    package var description: String
    package init(_ description: String) { self.description = description }
}

/// A bounds-checked little-endian reader over borrowed bytes.
///
/// It does not own its memory: keep the buffer alive while reading.
package struct ByteReader {
    package let base: UnsafeRawBufferPointer
    package private(set) var offset: Int

    package init(_ base: UnsafeRawBufferPointer, offset: Int = 0) {
        // Every check below measures from `offset`: it must be inside.
        precondition(offset >= 0 && offset <= base.count, "ByteReader offset \(offset) outside 0...\(base.count)")
        self.base = base
        self.offset = offset
    }

    package var remaining: Int { base.count - offset }
    package var isAtEnd: Bool { offset >= base.count }

    @inline(__always)
    package mutating func need(_ n: Int) throws {
        guard n >= 0, n <= base.count - offset else {
            throw ByteReaderError("truncated input: need \(n) bytes at offset \(offset), have \(base.count - offset)")
        }
    }

    @inline(__always)
    package mutating func readByte() throws -> UInt8 {
        try need(1)
        defer { offset += 1 }
        return base[offset]
    }

    @inline(__always)
    package mutating func read<I: FixedWidthInteger>(_: I.Type = I.self) throws -> I {
        let size = MemoryLayout<I>.size
        try need(size)
        var value = I.zero
        withUnsafeMutableBytes(of: &value) { dst in
            dst.copyMemory(from: UnsafeRawBufferPointer(rebasing: base[offset..<offset + size]))
        }
        offset += size
        return I(littleEndian: value)
    }

    @inline(__always)
    package mutating func readDouble() throws -> Double { Double(bitPattern: try read(UInt64.self)) }

    @inline(__always)
    package mutating func readFloat() throws -> Float { Float(bitPattern: try read(UInt32.self)) }

    @inline(__always)
    package mutating func readVarint() throws -> UInt64 {
        var result: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            let byte = try readByte()
            if shift == 63 && byte > 1 { throw ByteReaderError("varint overflows 64 bits") }
            result |= UInt64(byte & 0x7f) << shift
            if byte & 0x80 == 0 { return result }
            shift += 7
            if shift > 63 { throw ByteReaderError("varint longer than 10 bytes") }
        }
    }

    /// Reads a varint length and checks it against what is left, so a lying
    /// length can never make the reader allocate beyond the input.
    @inline(__always)
    package mutating func readLength() throws -> Int {
        let n = try readVarint()
        guard n <= UInt64(remaining) else {
            throw ByteReaderError("length \(n) exceeds the \(remaining) bytes left")
        }
        return Int(n)
    }

    /// Borrows `count` raw bytes and advances past them.
    @inline(__always)
    package mutating func readRaw(_ count: Int) throws -> UnsafeRawBufferPointer {
        try need(count)
        defer { offset += count }
        return UnsafeRawBufferPointer(rebasing: base[offset..<offset + count])
    }

    /// Reads a varint-length-prefixed UTF-8 string (validated).
    package mutating func readString() throws -> String {
        let n = try readLength()
        let raw = try readRaw(n)
        guard let s = String(validating: raw.bindMemory(to: UInt8.self), as: UTF8.self) else {
            throw ByteReaderError("invalid UTF-8 in string")
        }
        return s
    }
}
