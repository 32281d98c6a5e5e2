import ProcessPoolCore

extension StartMethod {
    /// Fork this process for each worker, all at the first submit. Fast, but
    /// see the fork-in-a-threaded-process hazard in the README.
    public static var fork: StartMethod { StartMethod(launcher: ForkLauncher()) }

    /// Start each worker as a fresh run of this executable.
    public static var spawn: StartMethod { spawn(executable: ProcessSpawner.currentExecutable) }

    /// Start each worker as a run of `executable`, whose `main` must call
    /// `ProcessPoolExecutor.bootstrap` with the same registry (useful when
    /// this process cannot be its own worker, e.g. a test runner).
    ///
    /// - Parameter executable: The path of the worker program.
    /// - Returns: The spawn start method running that program.
    public static func spawn(executable: String) -> StartMethod {
        StartMethod(launcher: SpawnLauncher(executable: executable))
    }
}
