/// When to read a fast stream again: the decision behind relaying a streamed answer in batches.
///
/// An engine that streams a token every millisecond makes a relay wake two threads per token (the
/// one reading the engine, the one writing to the client), and on a small machine those wakes cost
/// more CPU than the relaying itself and take it from the engine. So once a stream's chunks come
/// faster than one per half of `window`, its socket is left unread for `window` after each read:
/// the chunks that arrive meanwhile wait in the kernel and go out together, at one wake each way.
/// A slow stream (a chunk less often than every `window / 2`) is read as each chunk comes, so it
/// never waits for a snooze; the first chunks are never held (no rate is known yet), so time to
/// first token does not change; a chunk waits at most `window`.
///
/// Pure: the caller passes the time of each read and how many chunks it brought.
public struct ReadCoalescer: Sendable, Equatable {
    /// Longest a chunk may wait; 0 turns coalescing off.
    public let windowNanos: UInt64
    /// When the last read that brought data happened.
    public private(set) var lastReadNanos: UInt64?
    /// Smoothed time between chunks (nanoseconds), once two reads have brought data.
    public private(set) var nanosPerChunk: Double?

    /// Weight of the newest interval in `nanosPerChunk`.
    static let smoothing = 0.3

    public init(windowNanos: UInt64) {
        self.windowNanos = windowNanos
    }

    /// Records a read at `nowNanos` that brought `chunks` chunks; returns until when the stream's
    /// socket should be left unread, or nil to read it as soon as data comes.
    public mutating func afterRead(nowNanos: UInt64, chunks: Int) -> UInt64? {
        guard chunks > 0 else { return nil }
        defer { lastReadNanos = nowNanos }
        guard windowNanos > 0, let last = lastReadNanos else { return nil }
        let interval = nowNanos >= last ? nowNanos - last : 0
        let perChunk = Double(interval) / Double(chunks)
        let smoothed = nanosPerChunk.map { $0 + Self.smoothing * (perChunk - $0) } ?? perChunk
        nanosPerChunk = smoothed
        guard smoothed * 2 <= Double(windowNanos) else { return nil }
        return nowNanos &+ windowNanos
    }
}
