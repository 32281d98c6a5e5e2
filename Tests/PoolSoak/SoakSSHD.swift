// The ssh side of pool-soak: PoolTestSupport's throwaway sshd on loopback
// (LoopbackSSHD, as the ssh tests use it), with the soak's options and its
// stricter view of which remote workers are left. The relay in front of it
// (--relay) is PoolTestSupport's ThrottlingRelay.
import Glibc
import PoolTestSupport
import ProcessPoolSSH

final class SoakSSHD: LoopbackSSHD, @unchecked Sendable {
    /// Whether sshd and ssh-keygen are installed.
    static var available: Bool { isInstalled }

    init() throws { try super.init(directoryPrefix: "ppool-soak-sshd") }

    /// Options that use only this server's files; the worker uploaded is this
    /// program (its `main` bootstraps the test registry first).
    func options() -> SSHOptions {
        var options = SSHOptions()
        options.identityFiles = [clientKey]
        options.useAgent = false
        options.knownHostsFile = knownHosts
        options.globalKnownHostsFiles = []
        options.configFile = nil
        options.localExecutable = nil
        options.remoteCacheDirectory = cache
        options.connectTimeout = .seconds(20)
        return options
    }

    /// Every live process from this server's upload cache, orphaned workers
    /// included: whatever the soak started remotely must go away.
    override func remoteWorkers() -> [pid_t] { uploadedProcesses() }
}

func soakNow() -> Double { monotonicNow() }
