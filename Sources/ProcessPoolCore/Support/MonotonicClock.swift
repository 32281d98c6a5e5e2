import CProcessPoolShim

/// Monotonic time in nanoseconds, and conversions from `Duration`.
package enum MonotonicClock {
    @inline(__always)
    package static func now() -> UInt64 { cpp_monotonic_ns() }

    /// The deadline `duration` from now, or nil for no deadline.
    package static func deadline(after duration: Duration?) -> UInt64? {
        guard let duration else { return nil }
        return now() &+ nanoseconds(duration)
    }

    package static func nanoseconds(_ duration: Duration) -> UInt64 {
        let (seconds, attoseconds) = duration.components
        if seconds < 0 { return 0 }
        let ns = Double(seconds) * 1e9 + Double(attoseconds) / 1e9
        return ns >= Double(UInt64.max / 2) ? UInt64.max / 2 : UInt64(ns)
    }
}
