import CProcessPoolShim
import Synchronization

extension Mutex where Value: ~Copyable {
    /// `withLock`, made visible to ThreadSanitizer.
    ///
    /// Synchronization's `Mutex` locks with futex system calls, which TSan
    /// does not see: every access it guards was reported as a data race. This
    /// tells TSan about the acquire (right after locking, before the value is
    /// touched) and the release (after the last touch, before unlocking),
    /// through weak symbols: free when TSan is not linked. Use it for every
    /// `Mutex` in the package.
    @inline(__always)
    package borrowing func guarded<Result, E: Error>(
        _ body: (inout sending Value) throws(E) -> sending Result
    ) throws(E) -> sending Result {
        let address = withUnsafePointer(to: self) { UnsafeRawPointer($0) }
        return try withLock { (value: inout sending Value) throws(E) -> sending Result in
            cpp_tsan_acquire(address)
            defer { cpp_tsan_release(address) }
            return try body(&value)
        }
    }
}

/// Whether this process runs under ThreadSanitizer (its runtime handles
/// some signals itself: a worker's SIGSEGV then ends it with an exit code).
package var threadSanitizerIsActive: Bool { cpp_tsan_active() != 0 }
