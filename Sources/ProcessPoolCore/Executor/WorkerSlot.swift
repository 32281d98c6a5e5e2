import CProcessPoolShim
import Glibc

/// The pool's record of one worker: its connection, the items it holds, the
/// bytes waiting to be written to it and the frames read from it.
///
/// Mutable state is guarded by the pool's lock, except `splitter`, which only
/// the I/O thread touches.
final class WorkerSlot: @unchecked Sendable {
    enum Phase {
        /// Started; waiting for its hello (the initializer runs meanwhile).
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
    var saidGoodbye = false
    var signalled = false
    var exit: WorkerExit?
    var helloDeadline: UInt64
    var eofDeadline: UInt64?

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
        return max(1, min(64, Int(200_000 / averageNanos)))
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
            let n = first.withUnsafeBytes { raw in
                cpp_send_nosignal(stream, raw.baseAddress! + outboundOffset, raw.count - outboundOffset)
            }
            if n < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN || errno == EWOULDBLOCK { return true }
                outbound.removeAll()
                outboundOffset = 0
                return false
            }
            outboundOffset += n
            if outboundOffset == first.count {
                outbound.removeFirst()
                outboundOffset = 0
            }
        }
        return true
    }

    var hasOutbound: Bool { !outbound.isEmpty }
}
