import ProcessPoolCore

// Placeholder until the forkserver lands: forkserver starts workers like spawn.
extension StartMethod {
    /// The forkserver start method.
    public static var forkserver: StartMethod { .spawn }
    /// The forkserver start method with a given executable.
    public static func forkserver(executable: String) -> StartMethod { .spawn(executable: executable) }
}

/// Runs the fork server on `descriptor`; returns the exit status.
public func runForkServer(descriptor: Int32, registry: TaskRegistry) -> Int32 { 2 }
