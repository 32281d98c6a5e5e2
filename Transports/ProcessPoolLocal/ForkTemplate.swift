import CProcessPoolShim
import Glibc
import ProcessPoolCore
import Synchronization

/// A fork pool's template: a fork of this process, taken at the pool's
/// first launch, that runs the forkserver loop and forks every worker of
/// the pool (used when the pool replaces workers: see
/// `PoolDescription.replacesWorkers`).
///
/// A fork copies only the forking thread; a lock another thread held at
/// that moment stays locked in the child. Replacing a dead worker by
/// forking this process mid-run, while its I/O thread, the caller's tasks
/// and the runtime are busy, risks a worker that hangs on its first call.
/// The template is forked once, like the first workers (after
/// `TaskRegistry.prepareForFork`); it stays single-threaded, so every
/// worker it forks starts from the state this process had at the first
/// launch, whenever it starts.
enum ForkTemplate {
    /// Forks a template serving `registry`. Call on the launcher thread (the
    /// template's `PR_SET_PDEATHSIG` is tied to the thread that forks it).
    static func start(registry: TaskRegistry) throws -> ForkServerProcess {
        let setup = try ForkServerProcess.Setup()
        let channel = setup.channel
        ForkServerLoop.prepareForFork()
        let (pid, pidfd) = try forkChild(on: channel) { runForkServer(descriptor: $0, registry: registry) }
        ParentDescriptors.insert(channel.parentEnd)
        ParentDescriptors.insert(pidfd)
        return ForkServerProcess(kind: .forkTemplate, executable: ProcessSpawner.currentExecutable, pid: pid,
                                 pidfd: pidfd, control: channel.parentEnd, address: setup.address,
                                 key: setup.key, served: true)
    }
}

/// The launch session of a fork pool that replaces workers: every worker
/// comes from the pool's template, forked at the first launch and again
/// only if it dies. `close()` stops and reaps it.
final class ForkTemplateSession: LaunchSession {
    private let registry: TaskRegistry
    private let template = Mutex<ForkServerProcess?>(nil)

    init(registry: TaskRegistry) {
        self.registry = registry
    }

    func launchWorker(_ completion: @escaping @Sendable (Result<any WorkerConnection, any Error>) -> Void) {
        if let failure = LauncherThread.shared.enqueue({ [self] in completion(Result { try startWorker() }) }) {
            completion(.failure(failure))
        }
    }

    /// On the launcher thread: one worker from the template (forked first if
    /// there is none or it has died).
    private func startWorker() throws -> any WorkerConnection {
        try ForkServerClient.startWorker(server: { try currentTemplate() }, discard: { discard($0) })
    }

    private func currentTemplate() throws -> ForkServerProcess {
        try template.guarded { template in
            if let current = template {
                if !current.hasEnded { return current }
                template = nil
                current.dispose()
            }
            let started = try ForkTemplate.start(registry: registry)
            template = started
            return started
        }
    }

    private func discard(_ server: ForkServerProcess) {
        template.guarded { template in
            guard template === server else { return }
            template = nil
            server.dispose()
        }
    }

    func close() {
        let last = template.guarded { template -> ForkServerProcess? in
            defer { template = nil }
            return template
        }
        last?.dispose()
    }
}
