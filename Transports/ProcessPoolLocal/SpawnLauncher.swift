import Glibc
import ProcessPoolCore

/// The `spawn` start method: each worker is a fresh run of this executable
/// (or of `executable`), entered through `ProcessPoolExecutor.bootstrap`.
struct SpawnLauncher: WorkerLauncher {
    let executable: String
    var name: String { "spawn" }

    func makeSession(for pool: PoolDescription) throws -> any LaunchSession {
        SpawnSession(executable: executable)
    }
}

struct SpawnSession: LaunchSession {
    let executable: String

    func launchWorker(_ completion: @escaping @Sendable (Result<any WorkerConnection, any Error>) -> Void) {
        let executable = self.executable
        LauncherThread.shared.enqueue {
            completion(Result { try Self.start(executable: executable) })
        }
    }

    private static func start(executable: String) throws -> any WorkerConnection {
        let channel = try Channel.make()
        let (pid, pidfd) = try ProcessSpawner.start(executable: executable, role: .worker, channel: channel)
        return LocalWorkerConnection(pid: pid, stream: channel.parentEnd, pidfd: pidfd, startMethod: "spawn")
    }

    func close() {}
}
