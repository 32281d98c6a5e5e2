import Glibc
import ProcessPoolCore
import Synchronization

/// The forkservers of this program run: at most one per executable path,
/// started on first use and replaced when it has died.
enum ForkServers {
    private static let servers = Mutex<[String: ForkServerProcess]>([:])

    /// The live server for `executable`, started if there is none (or the
    /// last one died; that one is reaped). Call on the launcher thread.
    static func server(for executable: String) throws -> ForkServerProcess {
        try servers.guarded { servers in
            if let server = servers[executable] {
                if !server.hasEnded { return server }
                servers[executable] = nil
                server.dispose()
            }
            let server = try ForkServerProcess.start(executable: executable)
            servers[executable] = server
            return server
        }
    }

    /// `server` failed a request: forget it (reaping it) unless a newer one
    /// has already taken its place.
    static func discard(_ server: ForkServerProcess) {
        servers.guarded { servers in
            guard servers[server.executable] === server else { return }
            servers[server.executable] = nil
            server.dispose()
        }
    }

    /// A worker's connection reached EOF without a status: the server with
    /// `pid` died (or is dying, or drops connections, which is as bad): stop
    /// it if need be and reap it now, not at the next launch. (Waiting for it
    /// to look ended raced with its exit and left a zombie: pool-soak.)
    static func discardDead(pid: pid_t) {
        servers.guarded { servers in
            guard let (executable, server) = servers.first(where: { $0.value.pid == pid }) else { return }
            servers[executable] = nil
            server.dispose()
        }
    }

    /// Reaps every server that has died (a pool using one has finished):
    /// no dead server stays a zombie until the next forkserver pool.
    static func reapEnded() {
        servers.guarded { servers in
            for (executable, server) in servers where server.hasEnded {
                servers[executable] = nil
                server.dispose()
            }
        }
    }

    /// The current server for `executable`, if one was started (it may have died).
    static func existing(for executable: String) -> ForkServerProcess? {
        servers.guarded { $0[executable] }
    }
}
