/// Fast builders for the large test payloads.
///
/// The obvious `(0..<size).map { ... }` runs a generic closure call per
/// element in a debug build: filling and reversing 64 MiB that way was 57%
/// of the size sweep's time (and, under TSan, 8 of its 9 minutes), against
/// well under 1% for the library's own encoding and decoding. These build
/// the same values with a handful of `memcpy`s or one plain loop.

/// `count` bytes whose byte `i` is `element(i)`, for an `element` that
/// repeats every `period` bytes: the first period is computed, then the
/// array doubles by copying itself (a multiple of the period each time),
/// and the rest is a copy of its start.
public func periodicBytes(count: Int, period: Int, _ element: (Int) -> UInt8) -> [UInt8] {
    precondition(count >= 0 && period > 0)
    var out = [UInt8]()
    out.reserveCapacity(count)
    var i = 0
    while i < min(period, count) {
        out.append(element(i))
        i += 1
    }
    while !out.isEmpty && out.count * 2 <= count { out.append(contentsOf: out) }
    if out.count < count { out.append(contentsOf: out[0..<(count - out.count)]) }
    return out
}

/// Byte `i` is `UInt8(truncatingIfNeeded: i &* 31 &+ seed)` (period 256).
public func sweepBytes(count: Int, seed: Int) -> [UInt8] {
    periodicBytes(count: count, period: 256) { UInt8(truncatingIfNeeded: $0 &* 31 &+ seed) }
}

/// `count` doubles, element `i` being `element(i)`, filled by one plain loop.
public func doubles(count: Int, _ element: (Int) -> Double) -> [Double] {
    [Double](unsafeUninitializedCapacity: count) { buffer, initialized in
        var i = 0
        while i < count {
            buffer[i] = element(i)
            i += 1
        }
        initialized = count
    }
}

/// `array` reversed, by one plain loop over its storage.
public func reversedFast<T: BitwiseCopyable>(_ array: [T]) -> [T] {
    let count = array.count
    return array.withUnsafeBufferPointer { source in
        [T](unsafeUninitializedCapacity: count) { buffer, initialized in
            var i = 0
            while i < count {
                buffer[i] = source[count - 1 - i]
                i += 1
            }
            initialized = count
        }
    }
}
