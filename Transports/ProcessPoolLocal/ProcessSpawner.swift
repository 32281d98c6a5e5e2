import CProcessPoolShim
import Glibc
import ProcessPoolCore

/// posix_spawn of an executable (by default this one) in a role, with the
/// child end of a channel as descriptor 3 and /dev/null as stdin.
enum ProcessSpawner {
    /// The executable a worker runs: this program, even if its file was
    /// replaced since it started.
    static let currentExecutable = "/proc/self/exe"

    static func spawn(executable: String, role: WorkerEnvironment.Role, channel: Channel) throws -> pid_t {
        let argv0 = CommandLine.arguments.first ?? executable
        let environment = WorkerEnvironment.childEnvironment(role: role, descriptor: 3)
        let pid = withCStrings([argv0]) { argv in
            withCStrings(environment) { envp in
                cpp_spawn(executable, argv, envp, channel.childEnd, 3, 1)
            }
        }
        guard pid > 0 else { throw SystemError("posix_spawn \(executable)") }
        return pid
    }

    /// Spawns `executable` in `role` on `channel` and watches it: returns its
    /// pid and pidfd. The child's end of the channel is closed either way;
    /// on failure the parent's end too.
    static func start(executable: String, role: WorkerEnvironment.Role, channel: Channel) throws -> (pid_t, Int32) {
        defer { closeDescriptor(channel.childEnd) }
        do {
            let pid = try spawn(executable: executable, role: role, channel: channel)
            return (pid, try openPidfdOrReap(pid))
        } catch {
            closeDescriptor(channel.parentEnd)
            throw error
        }
    }

    private static func withCStrings<R>(_ strings: [String], _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) -> R) -> R {
        let pointers = strings.map { strdup($0) } + [nil]
        defer { for p in pointers { free(p) } }
        return pointers.withUnsafeBufferPointer { body($0.baseAddress!) }
    }
}

/// Checks that the parent which started this process still lives and arms
/// `PR_SET_PDEATHSIG`, so the process dies with it (even by SIGKILL).
package func tieLifetimeToParent(_ parent: pid_t) {
    _ = cpp_prctl_set_pdeathsig(SIGKILL)
    if parent > 0 && getppid() != parent { cpp_exit_now(0) }
}
