import CProcessPoolShim
import Glibc
import ProcessPoolCore
import Synchronization

/// The `fork` start method: every worker is forked from this process at the
/// pool's first submit and serves the pool's registry directly (from a
/// template taken then, when the pool replaces workers).
///
/// Forking a multi-threaded process copies only the forking thread: a lock
/// another thread held stays locked in the child. The worker loop is purely
/// synchronous for that reason, but prefer `forkserver` or `spawn` when the
/// program runs threads of its own.
struct ForkLauncher: WorkerLauncher {
    var name: String { "fork" }
    var startsAllWorkersAtOnce: Bool { true }
    /// A fork child says hello within milliseconds (no exec, no loading):
    /// one silent for 10 s is caught in an inherited lock, and is restarted.
    var helloTimeout: Duration { .seconds(10) }
    var restartsSilentStarts: Bool { true }
    var supportsMaxTasksPerChild: Bool { false }

    /// A pool that may replace workers forks them all from a template
    /// (`ForkTemplate`); one that never does forks each from this process.
    func makeSession(for pool: PoolDescription) throws -> any LaunchSession {
        let registry = pool.registry
        registry.prepareForFork()
        if pool.replacesWorkers { return ForkTemplateSession(registry: registry) }
        return LauncherThreadSession { try forkWorker(registry: registry) }
    }
}

/// Forks a child that serves `registry` over a new channel; returns our side.
func forkWorker(registry: TaskRegistry) throws -> any WorkerConnection {
    let channel = try Channel.make()
    let (pid, pidfd) = try forkChild(on: channel) { ProcessPoolWorker.serve(descriptor: $0, registry: registry) }
    return LocalWorkerConnection(pid: pid, stream: channel.parentEnd, pidfd: pidfd)
}

/// Forks this process (on the launcher thread). The child unblocks
/// signals, ties its life to ours, closes our end of `channel` and every
/// pool descriptor it inherited, runs `body` on its own end and exits with
/// what `body` returns. Here: the child's end is closed, and the child's
/// pid and a pidfd for it are returned; on failure our end is closed too.
func forkChild(on channel: Channel, _ body: (_ descriptor: Int32) -> Int32) throws -> (pid_t, Int32) {
    let inherited = ParentDescriptors.snapshot()
    let parent = getpid()
    cpp_flush_all()
    let hooks = ForkHooks.current
    hooks.before?()
    let pid = cpp_fork()
    if pid != 0 { hooks.after?() }
    if pid == 0 {
        cpp_unblock_all_signals()
        tieLifetimeToParent(parent)
        _ = Glibc.close(channel.parentEnd)
        for fd in inherited { _ = Glibc.close(fd) }
        let code = body(channel.childEnd)
        cpp_flush_all()
        cpp_exit_now(code)
    }
    closeDescriptor(channel.childEnd)
    guard pid > 0 else {
        let failure = SystemError("fork")
        closeDescriptor(channel.parentEnd)
        throw failure
    }
    do {
        return (pid, try openPidfdOrReap(pid))
    } catch {
        closeDescriptor(channel.parentEnd)
        throw error
    }
}

/// Test hooks around each `fork` of a worker (parent side): a test uses
/// them to hold a lock in another thread at the moment of the fork.
package enum ForkHooks {
    package struct Hooks: Sendable {
        package var before: (@Sendable () -> Void)?
        package var after: (@Sendable () -> Void)?
        package init(before: (@Sendable () -> Void)? = nil, after: (@Sendable () -> Void)? = nil) {
            self.before = before
            self.after = after
        }
    }

    private static let hooks = Mutex(Hooks())

    /// The hooks in force (read before each fork, in the parent).
    package static var current: Hooks {
        get { hooks.guarded { $0 } }
        set { hooks.guarded { $0 = newValue } }
    }
}
