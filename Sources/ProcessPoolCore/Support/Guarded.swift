import CProcessPoolShim
import Synchronization

extension Mutex where Value: ~Copyable {
    /// `withLock`, made visible to ThreadSanitizer.
    ///
    /// Synchronization's `Mutex` locks with futex system calls, which TSan
    /// does not see: every access it guards was reported as a data race. This
    /// tells TSan about the acquire and release (through weak symbols: free
    /// when TSan is not linked). Use it for every `Mutex` in the package.
    @inline(__always)
    package borrowing func guarded<Result, E: Error>(
        _ body: (inout sending Value) throws(E) -> sending Result
    ) throws(E) -> sending Result {
        try withLock { (value: inout sending Value) throws(E) -> sending Result in
            let address = withUnsafeMutablePointer(to: &value) { UnsafeRawPointer($0) }
            cpp_tsan_acquire(address)
            defer { cpp_tsan_release(address) }
            return try body(&value)
        }
    }
}
