import ProcessPool
import ProcessPoolCore
import Synchronization

extension StartMethod {
    /// Run workers on remote hosts over ssh (libssh2): one authenticated
    /// session per host carries its workers as exec channels. `maxWorkers`
    /// defaults to the sum of the hosts' worker counts; work goes to free
    /// slots on any host. The executable is shipped per `options.remoteWorker`,
    /// and its `main` must call `ProcessPoolExecutor.bootstrap` with the same tasks.
    ///
    /// - Parameters:
    ///   - hosts: The farm: each host with its worker slots. An empty list
    ///     breaks the pool at its first submit.
    ///   - options: How to authenticate, check host keys and ship the worker.
    /// - Returns: The ssh start method for those hosts.
    public static func ssh(_ hosts: [SSHHost], options: SSHOptions = SSHOptions()) -> StartMethod {
        StartMethod(launcher: SSHLauncher(hosts: hosts, options: options))
    }
}

/// The `ssh` start method's launcher.
struct SSHLauncher: WorkerLauncher {
    let hosts: [SSHHost]
    let options: SSHOptions

    var name: String { "ssh" }
    var defaultWorkerCount: Int? { hosts.isEmpty ? nil : hosts.reduce(0) { $0 + $1.workers } }

    func makeSession(for pool: PoolDescription) throws -> any LaunchSession {
        guard !hosts.isEmpty else { throw ProcessPoolError.invalidOption("the ssh start method needs at least one host") }
        // An ssh config that cannot be honoured (a refused directive, a file
        // others can write) fails the pool's start, naming the file and line.
        let resolved = try hosts.map { try ResolvedHost(resolving: $0, options: options) }
        return SSHLaunchSession(links: resolved.map { HostLink(host: $0, options: options, logger: pool.logger) })
    }
}

/// One pool's hosts: each connects at once (in parallel, on its own thread);
/// a new worker goes to the host with the most free slots.
final class SSHLaunchSession: LaunchSession {
    let links: [HostLink]

    /// Worker numbers, unique in this process ("worker 3 on ...").
    static let nextWorkerID = Atomic<Int>(0)

    init(links: [HostLink]) { self.links = links }

    func launchWorker(_ completion: @escaping @Sendable (Result<any WorkerConnection, any Error>) -> Void) {
        // Free slots first; past every host's count, the least loaded relative to its size.
        let link = links.min { a, b in
            let fa = a.host.workers - a.load.load(ordering: .relaxed)
            let fb = b.host.workers - b.load.load(ordering: .relaxed)
            if fa != fb { return fa > fb }
            return a.host.workers > b.host.workers
        }!
        link.load.add(1, ordering: .relaxed)
        link.post(.launch(completion))
    }

    /// Closes every host's sessions, waiting (at most 2 s) so that libssh2
    /// is done before a program that returns from `shutdown()` exits (its
    /// OpenSSL clean-up at exit would pull the rug from under the threads).
    func close() {
        for link in links { link.post(.shutdown) }
        let deadline = MonotonicClock.now() &+ 2_000_000_000
        for link in links { _ = link.stopped.wait(untilNanos: deadline) }
    }
}
