import CProcessPoolShim
import Glibc
import ProcessPoolCore

/// Runs the fork server on `descriptor` (the control socketpair the parent
/// spawned this process with) and returns the process exit status.
///
/// Entered through `ProcessPoolExecutor.bootstrap` in a process started in
/// the forkserver role. The server stays single-threaded (no Dispatch, no
/// Swift concurrency, no Foundation) so that it can fork safely: each worker
/// is a fork of it that serves `registry`, built once in this process. It
/// returns 0 when the parent goes away (EOF on `descriptor`), 2 if it could
/// not start.
package func runForkServer(descriptor: Int32, registry: TaskRegistry) -> Int32 {
    guard let setup = ForkServerSetup.receive(from: descriptor) else { return 2 }
    var server = ForkServerLoop(control: descriptor, listener: setup.listener, key: setup.key,
                                registry: registry)
    return server.run()
}

/// What the parent hands the server at start: the key and the listening socket.
struct ForkServerSetup {
    let key: [UInt8]
    let listener: Int32

    /// Reads the key and the listening socket from the control socketpair
    /// (blocking: the parent wrote both before it spawned us). Nil, with a
    /// message on stderr, if they are not there.
    static func receive(from control: Int32) -> ForkServerSetup? {
        var key: [UInt8] = []
        var listener: Int32 = -1
        var chunk = [UInt8](repeating: 0, count: ForkServerProtocol.keyLength)
        while key.count < ForkServerProtocol.keyLength {
            var fds: [Int32] = [-1, -1]
            var fdCount: Int32 = 0
            let want = ForkServerProtocol.keyLength - key.count
            let n = Syscall.retrying {
                chunk.withUnsafeMutableBytes { buffer in
                    cpp_recv_fds(control, buffer.baseAddress, want, &fds, 2, &fdCount)
                }
            }
            for fd in fds.prefix(Int(fdCount)) {
                if listener < 0 { listener = fd } else { closeDescriptor(fd) }
            }
            if n <= 0 {
                cpp_log_stderr("forkserver \(getpid()): no key from the parent (\(n < 0 ? "\(SystemError("recvmsg"))" : "EOF"))\n")
                closeDescriptor(listener)
                return nil
            }
            key += chunk.prefix(n)
        }
        guard listener >= 0 else {
            cpp_log_stderr("forkserver \(getpid()): the parent sent no listening socket\n")
            return nil
        }
        _ = cpp_set_nonblocking(listener, 1)
        return ForkServerSetup(key: key, listener: listener)
    }
}
