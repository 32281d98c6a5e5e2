import CProcessPoolShim
import Glibc
import ProcessPoolCore

/// The small protocol between a program and its forkserver.
///
/// - At start the parent writes the key (32 random bytes) onto the control
///   socketpair, with the listening socket attached (SCM_RIGHTS), before it
///   spawns the server; the server reads both first thing. The control
///   socketpair carries nothing else: EOF on it means the parent is gone.
/// - A request is one connection to the listening socket (abstract
///   namespace): the key, then one operation byte, with the worker's end of
///   a new channel attached. The server answers with the worker's pid
///   (Int32, little-endian) and a pidfd for it attached, or with a negative
///   errno and nothing attached.
/// - The connection stays open while the worker runs. When the server has
///   reaped the worker it writes the status (one tag byte, Int32 value) and
///   closes the connection. EOF without a status: the server died.
enum ForkServerProtocol {
    /// Length of the key that proves a connection comes from the parent.
    static let keyLength = 32
    /// The operation byte of a request: fork one worker.
    static let forkWorker: UInt8 = 1
    /// Bytes in a request: the key plus the operation.
    static let requestLength = keyLength + 1
    /// Bytes in the answer to a request.
    static let replyLength = 4
    /// Bytes in an exit status: tag + value.
    static let statusLength = 5
    /// Status tag: the worker exited with a code.
    static let exitedTag: UInt8 = 0
    /// Status tag: the worker was killed by a signal.
    static let signaledTag: UInt8 = 1
    /// How long a new connection may take to send its request.
    static let requestTimeoutNanos: UInt64 = 1_000_000_000
    /// How long the parent waits for the server to answer a request.
    static let replyTimeoutNanos: UInt64 = 30_000_000_000

    /// A fresh random key.
    static func makeKey() throws -> [UInt8] {
        var key = [UInt8](repeating: 0, count: keyLength)
        guard key.withUnsafeMutableBytes({ cpp_random_bytes($0.baseAddress, $0.count) }) == 0 else {
            throw SystemError("getrandom")
        }
        return key
    }

    /// A fresh abstract-namespace socket name (without the leading NUL).
    static func makeAddress() throws -> [UInt8] {
        var salt = [UInt8](repeating: 0, count: 12)
        guard salt.withUnsafeMutableBytes({ cpp_random_bytes($0.baseAddress, $0.count) }) == 0 else {
            throw SystemError("getrandom")
        }
        let hex = salt.map { byte -> String in
            let digits = String(byte, radix: 16)
            return digits.count == 1 ? "0" + digits : digits
        }.joined()
        return Array("swift-processpool-forkserver-\(getpid())-\(hex)".utf8)
    }

    /// Compares two byte strings in time independent of where they differ.
    static func constantTimeEqual(_ a: ArraySlice<UInt8>, _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        var difference: UInt8 = 0
        for (x, y) in zip(a, b) { difference |= x ^ y }
        return difference == 0
    }

    /// Encodes how a worker ended.
    static func encode(_ exit: WorkerExit) -> [UInt8] {
        switch exit {
        case .signaled(let signal): return [signaledTag] + littleEndianBytes(UInt32(bitPattern: signal))
        case .exited(let code): return [exitedTag] + littleEndianBytes(UInt32(bitPattern: code))
        case .lost: return [exitedTag] + littleEndianBytes(UInt32(bitPattern: -1))
        }
    }

    /// Decodes what `encode` wrote.
    static func decodeStatus(_ bytes: [UInt8]) -> WorkerExit? {
        guard bytes.count == statusLength else { return nil }
        let value = Int32(bitPattern: readLittleEndian(bytes[1...]))
        switch bytes[0] {
        case exitedTag: return .exited(value)
        case signaledTag: return .signaled(value)
        default: return nil
        }
    }

    /// The four little-endian bytes of `value`.
    static func littleEndianBytes(_ value: UInt32) -> [UInt8] {
        (0..<4).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) }
    }

    /// Reads four little-endian bytes.
    static func readLittleEndian(_ bytes: ArraySlice<UInt8>) -> UInt32 {
        var value: UInt32 = 0
        for (i, byte) in bytes.prefix(4).enumerated() { value |= UInt32(byte) << (8 * i) }
        return value
    }

    /// The address as tests and logs show it: "@name".
    static func displayAddress(_ address: [UInt8]) -> String {
        "@" + String(decoding: address, as: UTF8.self)
    }
}
