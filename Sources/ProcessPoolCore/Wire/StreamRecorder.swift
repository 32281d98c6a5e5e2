import Glibc
import Synchronization

/// Copies the bytes a `FrameSplitter` reads into a file, when the
/// environment variable `PROCESSPOOL_RECORD_STREAMS` names a directory, so
/// that the fuzzers' seeds come from real traffic (`Scripts/fuzz.sh record`
/// runs tests with it set). Off otherwise: then it costs one check per
/// splitter. Workers inherit the variable (spawn, fork and forkserver
/// alike), so both directions are recorded.
///
/// Each stream goes to `<directory>/<to-parent|to-worker>-<pid>-<n>.stream`,
/// at most `limit` bytes of it. Failures to write are ignored: recording
/// never changes what the pool does.
struct StreamRecorder: ~Copyable {
    /// The environment variable that turns recording on.
    static let variable = "PROCESSPOOL_RECORD_STREAMS"
    /// The most kept of one stream.
    static let limit = 1 << 20
    private static let directory: String? = getenv(variable).map { String(cString: $0) }
    private static let streams = Atomic<Int>(0)

    private let fd: Int32
    private var written = 0

    /// A recorder for a stream read by the parent (`toParent`) or by a
    /// worker; nil when recording is off or the file cannot be made.
    init?(toParent: Bool) {
        guard let directory = Self.directory, !directory.isEmpty else { return nil }
        let n = Self.streams.add(1, ordering: .relaxed).newValue
        let path = "\(directory)/\(toParent ? "to-parent" : "to-worker")-\(getpid())-\(n).stream"
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return nil }
        self.fd = fd
    }

    deinit { close(fd) }

    /// Appends `bytes` (as far as `limit` allows).
    mutating func record(_ bytes: UnsafeRawBufferPointer) {
        let take = min(bytes.count, Self.limit - written)
        guard take > 0, let base = bytes.baseAddress else { return }
        var done = 0
        while done < take {
            let n = write(fd, base + done, take - done)
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { written = Self.limit; return }
            done += n
        }
        written += take
    }
}
