import Synchronization

/// The parent-side descriptors of every local worker and server, so that a
/// forked child can close them: a child holding another worker's stream
/// would keep that worker from ever seeing EOF.
enum ParentDescriptors {
    private static let set = Mutex<Set<Int32>>([])

    static func insert(_ fd: Int32) { _ = set.guarded { $0.insert(fd) } }
    static func remove(_ fd: Int32) { _ = set.guarded { $0.remove(fd) } }
    static func snapshot() -> [Int32] { set.guarded { Array($0) } }
}
