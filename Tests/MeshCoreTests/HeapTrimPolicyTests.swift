import MeshCore
import Testing

@Suite struct HeapTrimPolicyTests {
    @Test func trimsOnceABurstEndedAndNotMoreOftenThanTheInterval() {
        let p = HeapTrimPolicy(minDrop: 64, minIntervalSeconds: 30)
        var s = HeapTrimPolicy.State()
        let t0: UInt64 = 1_000_000_000_000
        func at(_ sec: Double) -> UInt64 { t0 + UInt64(sec * 1e9) }
        // A steady load never trims; neither does a small dip.
        for i in 0..<10 { #expect(!p.sample(load: 40 + i % 3, nowNanos: at(Double(i)), state: &s)) }
        #expect(!p.sample(load: 0, nowNanos: at(10), state: &s))
        // A burst of 4,000 connections that closed: trim, and the peak starts again from now.
        #expect(!p.sample(load: 4000, nowNanos: at(11), state: &s))
        #expect(!p.sample(load: 3990, nowNanos: at(12), state: &s))
        #expect(p.sample(load: 10, nowNanos: at(13), state: &s))
        #expect(s.peak == 10 && s.lastTrimNanos == at(13))
        // Another burst ends 10 s later: it waits for the interval, then trims.
        #expect(!p.sample(load: 500, nowNanos: at(20), state: &s))
        #expect(!p.sample(load: 0, nowNanos: at(23), state: &s))
        #expect(!p.sample(load: 0, nowNanos: at(42.9), state: &s))
        #expect(p.sample(load: 0, nowNanos: at(43), state: &s))
        #expect(!p.sample(load: 0, nowNanos: at(80), state: &s))
    }
}
