/// Why the `ssh` start method could not reach a host or start a worker.
public enum SSHError: Error, CustomStringConvertible, Sendable {
    /// A destination string `SSHHost` could not parse.
    case invalidDestination(String, String)
    /// Connecting, handshaking, authenticating or shipping failed.
    case failed(host: String, String)
    /// The host's key is unknown or changed (says what to do).
    case hostKey(host: String, String)
    /// No key was accepted.
    case authentication(host: String, String)

    /// A sentence naming the host.
    public var description: String {
        switch self {
        case .invalidDestination(let text, let why): return "invalid ssh destination '\(text)': \(why)"
        case .failed(let host, let why): return "ssh to \(host): \(why)"
        case .hostKey(let host, let why): return "host key of \(host): \(why)"
        case .authentication(let host, let why): return "ssh authentication to \(host) failed: \(why)"
        }
    }
}
