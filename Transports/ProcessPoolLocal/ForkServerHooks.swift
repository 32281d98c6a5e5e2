import CProcessPoolShim
import Glibc

/// Test access to the forkservers of this process.
package enum ForkServerHooks {
    /// The pid of the server started for `executable`, if one was started
    /// (it may have died since).
    package static func serverPID(executable: String) -> pid_t? {
        ForkServers.existing(for: executable)?.pid
    }

    /// The abstract-namespace address that server listens on, as "@name".
    package static func socketAddress(executable: String) -> String? {
        ForkServers.existing(for: executable).map { ForkServerProtocol.displayAddress($0.address) }
    }

    /// Connects to an address given as "@name" (a non-blocking socket),
    /// or returns -1 with errno set.
    package static func connect(toAddress address: String) -> Int32 {
        let name = Array(address.utf8.dropFirst(address.hasPrefix("@") ? 1 : 0))
        return name.withUnsafeBytes { cpp_unix_connect_abstract($0.baseAddress, $0.count) }
    }
}
