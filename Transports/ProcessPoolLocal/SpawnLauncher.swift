import Glibc
import ProcessPoolCore

/// The `spawn` start method: each worker is a fresh run of this executable
/// (or of `executable`), entered through `ProcessPoolExecutor.bootstrap`.
struct SpawnLauncher: WorkerLauncher {
    let executable: String
    var name: String { "spawn" }

    func makeSession(for pool: PoolDescription) throws -> any LaunchSession {
        let executable = self.executable
        return LauncherThreadSession { try spawnWorker(executable: executable) }
    }
}

/// Spawns `executable` as a worker on a new channel; returns our side.
func spawnWorker(executable: String) throws -> any WorkerConnection {
    let channel = try Channel.make()
    let (pid, pidfd) = try ProcessSpawner.start(executable: executable, role: .worker, channel: channel)
    return LocalWorkerConnection(pid: pid, stream: channel.parentEnd, pidfd: pidfd)
}
