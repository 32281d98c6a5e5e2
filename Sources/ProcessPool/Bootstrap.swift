import CProcessPoolShim
import Glibc

extension ProcessPoolExecutor {
    /// Call first thing in `main()`. In a process started as a worker or as
    /// a forkserver it runs that role and exits; otherwise it returns at once.
    ///
    /// Spawn, forkserver and ssh start this same executable in worker mode,
    /// so `tasks` must list the same task types as the pools of the program.
    ///
    /// - Parameter tasks: The task (and error) types this program's pools
    ///   run, served when this process is a worker or a forkserver.
    public static func bootstrap(_ tasks: TaskRegistry) {
        guard let assignment = WorkerEnvironment.take() else { return }
        tieLifetimeToParent(assignment.parent)
        switch assignment.role {
        case .worker:
            let code = assignment.descriptor < 0
                ? ProcessPoolWorker.serveOverStandardIO(registry: tasks)
                : ProcessPoolWorker.serve(descriptor: assignment.descriptor, registry: tasks)
            cpp_flush_all()
            exit(code)
        case .forkserver:
            exit(runForkServer(descriptor: assignment.descriptor, registry: tasks))
        }
    }
}
