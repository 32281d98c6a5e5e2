import CProcessPoolShim
import Glibc
import Synchronization

/// Starts a detached-on-exit pthread running `body`.
///
/// The pool's I/O thread and the local launcher thread are plain pthreads:
/// they block in `poll` and must not occupy a Swift concurrency thread.
package enum PoolThread {
    /// Fault injection for tests: the next N thread starts fail with EAGAIN,
    /// as they do when a process reaches its thread limit.
    package static let injectedFailures = Atomic<Int>(0)

    private final class Box {
        let body: () -> Void
        init(_ body: @escaping () -> Void) { self.body = body }
    }

    /// Starts the thread; throws `SystemError` if the system refuses one
    /// (EAGAIN: too many threads or processes).
    package static func start(name: String, _ body: @escaping @Sendable () -> Void) throws {
        if injectedFailures.load(ordering: .relaxed) > 0,
           injectedFailures.wrappingSubtract(1, ordering: .relaxed).oldValue > 0 {
            throw SystemError("pthread_create", errno: EAGAIN)
        }
        let box = Unmanaged.passRetained(Box {
            cpp_set_thread_name(name)
            body()
        }).toOpaque()
        var thread = pthread_t()
        var attr = pthread_attr_t()
        pthread_attr_init(&attr)
        pthread_attr_setdetachstate(&attr, Int32(PTHREAD_CREATE_DETACHED))
        let rc = pthread_create(&thread, &attr, { raw in
            let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
            box.body()
            return nil
        }, box)
        pthread_attr_destroy(&attr)
        if rc != 0 {
            Unmanaged<Box>.fromOpaque(box).release()
            throw SystemError("pthread_create", errno: rc)
        }
    }
}
