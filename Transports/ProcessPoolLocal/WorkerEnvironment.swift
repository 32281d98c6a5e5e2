import CProcessPoolShim
import Glibc

/// How a spawned process learns it is a worker (or a forkserver): one
/// environment variable, removed again by `bootstrap` so that the worker's
/// own children start as ordinary programs.
///
/// Value: "<role>:<protocol version>:<descriptor>:<parent pid>".
package enum WorkerEnvironment {
    /// The variable's name.
    package static let variable = "SWIFT_PROCESSPOOL_ROLE"

    /// What a process was started as.
    package enum Role: String, Sendable {
        /// Serve one pool over a descriptor.
        case worker
        /// Run the fork server on a descriptor.
        case forkserver
    }

    /// The role this process was started in, parsed (and removed) from the environment.
    package struct Assignment: Sendable {
        /// Worker or forkserver.
        package var role: Role
        /// The descriptor that carries the protocol; -1: stdin and stdout.
        package var descriptor: Int32
        /// The process that started this one (0: do not check).
        package var parent: pid_t
    }

    /// Reads and removes the variable; nil in an ordinary process.
    package static func take() -> Assignment? {
        guard let raw = getenv(variable) else { return nil }
        let value = String(cString: raw)
        unsetenv(variable)
        let parts = value.split(separator: ":").map(String.init)
        guard parts.count == 4, let role = Role(rawValue: parts[0]),
              let fd = parts[2] == "stdio" ? -1 : Int32(parts[2]), let parent = pid_t(parts[3]) else {
            cpp_log_stderr("ProcessPool: ignoring malformed \(variable)=\(value)\n")
            return nil
        }
        return Assignment(role: role, descriptor: fd, parent: parent)
    }

    /// The environment for a child in `role`: ours, plus the variable.
    static func childEnvironment(role: Role, descriptor: Int32) -> [String] {
        var result: [String] = []
        var cursor = environ
        while let entry = cursor.pointee {
            let line = String(cString: entry)
            if !line.hasPrefix(variable + "=") { result.append(line) }
            cursor += 1
        }
        result.append("\(variable)=\(role.rawValue):1:\(descriptor):\(getpid())")
        return result
    }
}
