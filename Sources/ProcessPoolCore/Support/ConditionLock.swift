import Glibc

/// A pthread mutex with a condition variable on the monotonic clock.
///
/// Used where a thread must block (a future's `result(timeout:)`, the I/O
/// thread's join); everything else uses `Synchronization.Mutex`.
package final class ConditionLock: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let cond = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    package init() {
        pthread_mutex_init(mutex, nil)
        var attr = pthread_condattr_t()
        pthread_condattr_init(&attr)
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
        pthread_cond_init(cond, &attr)
        pthread_condattr_destroy(&attr)
    }

    deinit {
        pthread_cond_destroy(cond)
        pthread_mutex_destroy(mutex)
        cond.deallocate()
        mutex.deallocate()
    }

    package func lock() { pthread_mutex_lock(mutex) }
    package func unlock() { pthread_mutex_unlock(mutex) }
    package func broadcast() { pthread_cond_broadcast(cond) }

    /// Waits (lock held) until signalled or `deadline` (monotonic ns) passes.
    /// Returns false on time-out.
    package func wait(untilNanos deadline: UInt64?) -> Bool {
        guard let deadline else {
            pthread_cond_wait(cond, mutex)
            return true
        }
        var ts = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
        return pthread_cond_timedwait(cond, mutex, &ts) == 0
    }

    package func withLock<R>(_ body: () throws -> R) rethrows -> R {
        lock()
        defer { unlock() }
        return try body()
    }
}

/// A one-shot flag a thread can block on until another sets it.
package final class OneShotEvent: @unchecked Sendable {
    private let lock = ConditionLock()
    private var isSet = false

    package init() {}

    package func set() {
        lock.withLock {
            isSet = true
            lock.broadcast()
        }
    }

    /// Returns false if `deadline` passed first.
    @discardableResult
    package func wait(untilNanos deadline: UInt64? = nil) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        while !isSet {
            if !lock.wait(untilNanos: deadline), !isSet { return false }
        }
        return true
    }
}
