import MeshCore
import Testing

struct ReadCoalescerTests {
    static let ms: UInt64 = 1_000_000

    @Test func aFastStreamIsLeftUnreadForTheWindowAfterEachRead() {
        var c = ReadCoalescer(windowNanos: 5 * Self.ms)
        // The first read sets no rate: the first token is never held.
        #expect(c.afterRead(nowNanos: 100 * Self.ms, chunks: 1) == nil)
        // A chunk a millisecond: snooze until now + 5 ms.
        #expect(c.afterRead(nowNanos: 101 * Self.ms, chunks: 1) == 106 * Self.ms)
        // After the snooze five chunks came in one read: still fast, snooze again.
        #expect(c.afterRead(nowNanos: 106 * Self.ms, chunks: 5) == 111 * Self.ms)
        let perChunk = c.nanosPerChunk ?? 0
        #expect(perChunk > 0.9e6 && perChunk < 1.1e6)
    }

    @Test func aSlowStreamIsReadAsEachChunkComes() {
        var c = ReadCoalescer(windowNanos: 5 * Self.ms)
        var t: UInt64 = 0
        for _ in 0..<20 {
            t += 50 * Self.ms  // 20 tokens/s
            #expect(c.afterRead(nowNanos: t, chunks: 1) == nil)
        }
        // Just slower than one per half window: never snoozed either.
        var d = ReadCoalescer(windowNanos: 5 * Self.ms)
        t = 0
        for _ in 0..<20 {
            t += 3 * Self.ms
            #expect(d.afterRead(nowNanos: t, chunks: 1) == nil)
        }
    }

    @Test func aStreamThatSlowsDownStopsBeingSnoozed() {
        var c = ReadCoalescer(windowNanos: 4 * Self.ms)
        var t: UInt64 = 0
        _ = c.afterRead(nowNanos: t, chunks: 1)
        t += 1 * Self.ms
        #expect(c.afterRead(nowNanos: t, chunks: 1) != nil)
        var snoozed = 0
        for _ in 0..<10 {
            t += 40 * Self.ms  // the engine stalls between tokens now
            if c.afterRead(nowNanos: t, chunks: 1) != nil { snoozed += 1 }
        }
        #expect(snoozed == 0)
    }

    @Test func offOrEmptyReadsNeverSnooze() {
        var off = ReadCoalescer(windowNanos: 0)
        #expect(off.afterRead(nowNanos: 1, chunks: 1) == nil)
        #expect(off.afterRead(nowNanos: 2, chunks: 100) == nil)
        var c = ReadCoalescer(windowNanos: 5 * Self.ms)
        _ = c.afterRead(nowNanos: 10 * Self.ms, chunks: 1)
        // A read that brought nothing (a spurious wake) changes nothing.
        #expect(c.afterRead(nowNanos: 10 * Self.ms + 1, chunks: 0) == nil)
        #expect(c.lastReadNanos == 10 * Self.ms)
        // A clock that went back (never on the monotonic clock, but harmless) counts as no interval.
        #expect(c.afterRead(nowNanos: 5 * Self.ms, chunks: 1) == 10 * Self.ms)
    }
}
