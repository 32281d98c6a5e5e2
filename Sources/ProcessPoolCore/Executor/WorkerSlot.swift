import CProcessPoolShim
import Glibc

/// The pool's record of one worker: its connection, the items it holds, the
/// bytes waiting to be written to it and the frames read from it.
///
/// Mutable state is guarded by the pool's lock, except `splitter`, which only
/// the I/O thread touches.
final class WorkerSlot: @unchecked Sendable {
    enum Phase {
        /// Started; waiting for its hello, then for `ready` (its initializer
        /// runs in between, with no deadline).
        case starting
        /// Takes work.
        case ready
        /// Said goodbye or was asked to exit; takes no more work.
        case leaving
    }

    let connection: any WorkerConnection
    let stream: Int32
    let exitDescriptor: Int32
    var label: String
    var phase: Phase = .starting
    var inFlight = RingQueue<WorkItem>()
    /// Items this worker may still be sent (maxTasksPerChild), nil: no limit.
    var tasksLeft: Int?
    var outbound: [[UInt8]] = []
    var outboundOffset = 0
    /// Whether later frames may be appended to the last outbound buffer
    /// (not to an attachment: that is the caller's array, sent as it is).
    var lastOutboundTakesMore = false
    let splitter = FrameSplitter(expectPreamble: true)
    /// Moving average of the time a worker spends on one item (ns).
    var averageNanos: Double = 0
    var streamClosed = false
    var exitRequested = false
    /// The worker has said hello (the hello deadline no longer applies).
    var saidHello = false
    var saidGoodbye = false
    var signalled = false
    /// Stopped before it said hello, holding no work (by a shutdown, or as a
    /// silent start to be replaced): its death is expected.
    private(set) var stoppedBeforeHello = false
    var exit: WorkerExit?
    var helloDeadline: UInt64
    var eofDeadline: UInt64?
    /// When the item at the head of `inFlight` (the one the worker runs)
    /// started: when it was sent to an idle worker, or when the results of
    /// the item before it arrived.
    var headStartedAt: UInt64 = 0
    /// Stopped by the pool to interrupt its running item: its exit is
    /// expected and breaks nothing.
    var interrupted = false

    /// When the running item passes its time limit, if it has one.
    var headDeadline: UInt64? {
        guard !interrupted, exit == nil, let head = inFlight.first, let limit = head.timeLimit else { return nil }
        let (deadline, overflow) = headStartedAt.addingReportingOverflow(limit)
        return overflow ? .max : deadline
    }

    init(connection: any WorkerConnection, tasksLeft: Int?, helloDeadline: UInt64) {
        self.connection = connection
        self.stream = connection.streamDescriptor
        self.exitDescriptor = connection.exitDescriptor
        self.label = connection.label
        self.tasksLeft = tasksLeft
        self.helloDeadline = helloDeadline
        _ = cpp_set_nonblocking(stream, 1)
        cpp_set_socket_buffers(stream, WireProtocol.socketBufferBytes)
    }

    /// How many items may be in flight: about 200 µs of work, 1 to 64 items.
    /// One item at a time until the worker has shown its tasks are short, so
    /// a long task never holds another back while some worker is free, and
    /// `cancel()` stays meaningful; many for tiny tasks, to keep the pipe full.
    var window: Int {
        guard averageNanos > 0 else { return 1 }
        // In floating point, then clamped: a worker's tiny or huge numbers
        // can make neither an infinity nor an out-of-range Int.
        let items = (200_000 / max(averageNanos, 1)).rounded(.down)
        return items >= 64 ? 64 : max(1, Int(items))
    }

    /// Feeds one reported run time (already clamped by `ResultsHeader`)
    /// into the moving average the window is sized from.
    func recordRunTime(nanos: UInt64) {
        let sample = Double(nanos)
        averageNanos = averageNanos == 0 ? sample : averageNanos * 0.8 + sample * 0.2
    }

    /// Kills a worker that has not said hello and so holds no work; its
    /// death is then expected (lock held).
    func stopBeforeHello() {
        signalled = true
        stoppedBeforeHello = true
        connection.kill()
    }

    var canTakeWork: Bool {
        phase == .ready && !streamClosed && tasksLeft != 0 && inFlight.count < window
    }

    var isIdle: Bool { phase == .ready && inFlight.isEmpty }

    /// Queues frame bytes; small frames are merged so one write carries many.
    func enqueue(_ frame: [UInt8]) {
        if lastOutboundTakesMore, let last = outbound.indices.last, frame.count < 64 * 1024,
           outbound[last].count < 256 * 1024, !(last == 0 && outboundOffset > 0) {
            outbound[last].append(contentsOf: frame)
        } else {
            outbound.append(frame)
            lastOutboundTakesMore = true
        }
    }

    /// Queues an item's frame, after its attachments if it has any.
    func enqueue(_ item: WorkItem) {
        if !item.attachments.isEmpty {
            enqueue(WireProtocol.attachmentsFrame(for: item.attachments))
            outbound.append(contentsOf: item.attachments)
            lastOutboundTakesMore = false
        }
        enqueue(item.frame)
    }

    /// Writes as much as the socket takes. Returns false if the stream is broken.
    func flush() -> Bool {
        while let first = outbound.first {
            let sent = first.withUnsafeBytes { raw in
                Syscall.send(stream, UnsafeRawBufferPointer(rebasing: raw[outboundOffset...]))
            }
            switch sent {
            case .bytes(let n):
                outboundOffset += n
                if outboundOffset == first.count {
                    outbound.removeFirst()
                    outboundOffset = 0
                }
            case .wouldBlock:
                return true
            case .endOfStream, .failed:
                outbound.removeAll()
                outboundOffset = 0
                return false
            }
        }
        return true
    }

    var hasOutbound: Bool { !outbound.isEmpty }
}
