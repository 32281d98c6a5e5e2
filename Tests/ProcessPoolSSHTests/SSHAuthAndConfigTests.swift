import Glibc
import PoolTestSupport
import ProcessPool
import ProcessPoolSSH
import Testing

/// ssh-agent authentication and ~/.ssh/config resolution, against a real sshd.
@Suite("ssh agent and config", .boundedExitWait, .serialized, .timeLimit(.minutes(3)))
struct SSHAuthAndConfigTests {
    @Test("a Host alias in the ssh config supplies HostName, Port, User and IdentityFile")
    func configAlias() async throws {
        try await withServer { server in
            let configPath = server.directory + "/ssh_config"
            try writeFile(configPath, """
                Host other
                    HostName 192.0.2.1
                Host farm-*
                    HostName 127.0.0.1
                    Port \(server.port)
                    User root
                    IdentityFile \(server.clientKey)

                """)
            var options = server.options()
            options.identityFiles = []
            options.configFile = configPath
            let pool = try ProcessPoolExecutor(context: .ssh([try SSHHost("farm-node1", workers: 1)], options: options),
                                               tasks: testRegistry)
            #expect(try await settle(try pool.submit(Square(9))) == 81)
            await pool.shutdown()
        }
    }

    @Test("keys held by an ssh-agent (SSH_AUTH_SOCK) authenticate")
    func agent() async throws {
        try await withServer { server in
            let socket = server.directory + "/agent.sock"
            let agent = try spawn(["/usr/bin/ssh-agent", "-D", "-a", socket])
            defer {
                kill(agent, SIGKILL)  // SIGTERM may be blocked: we spawn from a Dispatch thread
                var status: Int32 = 0
                waitpid(agent, &status, 0)
            }
            #expect(eventually(10) { access(socket, F_OK) == 0 })
            #expect(run(["/usr/bin/env", "SSH_AUTH_SOCK=\(socket)", "/usr/bin/ssh-add", "-q", server.clientKey]) == 0)
            let previous = getenv("SSH_AUTH_SOCK").map { String(cString: $0) }
            setenv("SSH_AUTH_SOCK", socket, 1)
            defer {
                if let previous { setenv("SSH_AUTH_SOCK", previous, 1) } else { unsetenv("SSH_AUTH_SOCK") }
            }
            var options = server.options()
            options.identityFiles = []
            options.useAgent = true
            let pool = try ProcessPoolExecutor(context: .ssh([try server.host(workers: 1)], options: options),
                                               tasks: testRegistry)
            #expect(try await settle(try pool.submit(Echo(5))) == 5)
            await pool.shutdown()
        }
    }
}
