import Synchronization

/// A unit of work: the value is the call (function + arguments), `run()`
/// executes in a worker.
///
/// ```swift
/// struct CountPrimes: ProcessTask {
///     var below: Int
///     func run() -> Int { (2..<below).count(where: isPrime) }
/// }
/// ```
public protocol ProcessTask: Codable, Sendable {
    /// What `run()` returns; it travels back to the parent encoded.
    associatedtype Output: Codable & Sendable
    /// Name on the wire. Default: the type's name. Must be unique in a registry.
    static var taskName: String { get }
    /// Runs in the worker process, synchronously, on the worker's only thread.
    ///
    /// - Returns: The output, sent back to the parent as the future's value.
    /// - Throws: Whatever the task fails with: it fails only this task's
    ///   future, arriving in the parent as itself when its type is listed in
    ///   the registry's `errors:`, else as ``RemoteTaskError``.
    func run() throws -> Output
}

extension ProcessTask {
    /// The type's name, as `String(describing:)` spells it.
    public static var taskName: String { String(describing: Self.self) }
}

/// `taskName` per type, computed once: the default spells the type's name
/// through reflection, which costs microseconds on every submit.
package enum TaskNames {
    private static let cache = Mutex<[ObjectIdentifier: String]>([:])

    package static func name<T: ProcessTask>(of type: T.Type) -> String {
        let key = ObjectIdentifier(type)
        if let name = cache.guarded({ $0[key] }) { return name }
        let name = T.taskName
        cache.guarded { $0[key] = name }
        return name
    }
}
