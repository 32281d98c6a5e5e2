/// How a pool starts its workers (Python's `mp_context`): `.fork`, `.spawn`,
/// `.forkserver` (from `ProcessPool`) or `.ssh(...)` (from `ProcessPoolSSH`).
public struct StartMethod: Sendable, CustomStringConvertible {
    /// The transport behind this start method.
    public let launcher: any WorkerLauncher

    /// A start method backed by a custom launcher.
    ///
    /// - Parameter launcher: Starts the workers of every pool that uses
    ///   this start method.
    public init(launcher: any WorkerLauncher) { self.launcher = launcher }

    /// "fork", "spawn", "forkserver" or "ssh".
    public var name: String { launcher.name }

    /// The name.
    public var description: String { name }
}
