import ProcessPoolCore

extension StartMethod {
    /// One server process per program run, started on first use as a run of
    /// this executable, forks every worker: workers start in about the time
    /// of a fork, from a small single-threaded process rather than from this
    /// (possibly multi-threaded) one. The default start method.
    public static var forkserver: StartMethod { forkserver(executable: ProcessSpawner.currentExecutable) }

    /// The forkserver start method with the server running `executable`,
    /// whose `main` must call `ProcessPoolExecutor.bootstrap` with the same
    /// registry (useful when this process cannot be its own worker, e.g. a
    /// test runner). One server per executable path serves every pool.
    ///
    /// - Parameter executable: The path of the program run as the server
    ///   (and so as every worker it forks).
    /// - Returns: The forkserver start method using that program.
    public static func forkserver(executable: String) -> StartMethod {
        StartMethod(launcher: ForkServerLauncher(executable: executable))
    }
}

/// The `forkserver` start method: workers are forked by a server process
/// shared by every pool of this program (see `ForkServers`).
struct ForkServerLauncher: WorkerLauncher {
    let executable: String
    var name: String { "forkserver" }

    /// The server outlives the pool: the session releases nothing.
    func makeSession(for pool: PoolDescription) throws -> any LaunchSession {
        let executable = self.executable
        return LauncherThreadSession(start: { try ForkServerClient.startWorker(executable: executable) },
                                     onClose: { ForkServers.reapEnded() })
    }
}
