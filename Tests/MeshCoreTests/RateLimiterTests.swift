import MeshCore
import Testing

private let t0: UInt64 = 1_700_000_000_000_000_000
private func at(_ seconds: Double) -> UInt64 { t0 + UInt64(seconds * 1e9) }

private func admitted(_ d: LimitDecision) -> LimitStatus? { if case .admitted(let s) = d { return s } else { return nil } }
private func refused(_ d: LimitDecision) -> LimitRefusal? { if case .refused(let r) = d { return r } else { return nil } }

@Suite struct RateLimiterTests {
    @Test func requestsSlideOutOfTheMinuteSecondBySecond() {
        var l = RateLimiter(node: "A", instance: "i")
        let lim = KeyLimits(rpm: 3)
        do { let ok = admitted(l.admit(key: "k", model: "m", limits: lim, estimatedTokens: 1, nowNanos: at(0.2)))?.requests == 1; #expect(ok) }
        do { let ok = admitted(l.admit(key: "k", model: "m", limits: lim, estimatedTokens: 1, nowNanos: at(10.5))) != nil; #expect(ok) }
        let third = admitted(l.admit(key: "k", model: "m", limits: lim, estimatedTokens: 1, nowNanos: at(20.5)))
        #expect(third?.requests == 3)
        // Reset: until the newest request (second 20) leaves the window.
        #expect(third.map { abs($0.resetRequestsSeconds - 59.5) < 0.01 } == true)
        let r = refused(l.admit(key: "k", model: "m", limits: lim, estimatedTokens: 1, nowNanos: at(30)))
        #expect(r?.kind == .requests)
        // One must leave: the oldest (second 0) goes at 60 s, 30 s from now.
        #expect(r.map { abs(($0.retryAfterSeconds ?? 0) - 30) < 0.01 } == true)
        #expect(r?.headers.first { $0.0 == "Retry-After" }?.1 == "30")
        #expect(r?.error.status == 429 && r?.error.type == "requests" && r?.error.code == "rate_limit_exceeded")
        do { let ok = refused(l.admit(key: "k", model: "m", limits: lim, estimatedTokens: 1, nowNanos: at(59.9))) != nil; #expect(ok) }
        do { let ok = admitted(l.admit(key: "k", model: "m", limits: lim, estimatedTokens: 1, nowNanos: at(60.0))) != nil; #expect(ok) }
        // Another key is not touched, and refusals are counted per key and kind.
        do { let ok = admitted(l.admit(key: "other", model: "m", limits: lim, estimatedTokens: 1, nowNanos: at(60))) != nil; #expect(ok) }
        #expect(l.refused == ["k": [.requests: 2]])
    }

    @Test func peersCountsAddUpAndAgeOnTheReceiversClock() {
        var a = RateLimiter(node: "A", instance: "a1")
        var b = RateLimiter(node: "B", instance: "b1")
        let lim = KeyLimits(rpm: 4)
        for s in [0.0, 1.0] { _ = b.admit(key: "k", model: "m", limits: lim, estimatedTokens: 1, nowNanos: at(s)) }
        // B's clock runs 100 s ahead of A's: ages, not times, travel.
        let report = b.report(nowNanos: at(2))
        #expect(report.entries.first?.seconds.map(\.age) == [1, 2])
        do { let ok = a.receive(KeyUsageReport(report.wire)!, nowNanos: at(2) - 100_000_000_000); #expect(ok) }
        #expect(a.used(key: "k", nowNanos: at(2) - 100_000_000_000).requests == 2)
        #expect(a.used(key: "k", nowNanos: at(2) - 100_000_000_000).inFlight == 2)
        _ = a.admit(key: "k", model: "m", limits: lim, estimatedTokens: 1, nowNanos: at(2) - 100_000_000_000)
        _ = a.admit(key: "k", model: "m", limits: lim, estimatedTokens: 1, nowNanos: at(2) - 100_000_000_000)
        do { let ok = refused(a.admit(key: "k", model: "m", limits: lim, estimatedTokens: 1, nowNanos: at(2) - 100_000_000_000))?.kind == .requests; #expect(ok) }
        // An older report of B is ignored; a newer one replaces the key's counts.
        do { let ok = !a.receive(report, nowNanos: at(3) - 100_000_000_000); #expect(ok) }
        b.release(key: "k", estimatedTokens: 1)
        do { let ok = a.receive(b.report(keys: ["k"], nowNanos: at(3)), nowNanos: at(3) - 100_000_000_000); #expect(ok) }
        #expect(a.used(key: "k", nowNanos: at(3) - 100_000_000_000).inFlight == 3)
        // B's counts leave A's window 60 s after they were made.
        #expect(a.used(key: "k", nowNanos: at(60.5) - 100_000_000_000).requests == 3)
        #expect(a.used(key: "k", nowNanos: at(61.5) - 100_000_000_000).requests == 2)
    }

    @Test func aLostPeersRequestsEndAndARestartReplacesItsCounts() {
        var a = RateLimiter(node: "A", instance: "a1")
        var b = RateLimiter(node: "B", instance: "b1")
        let lim = KeyLimits(rpm: 100, concurrency: 2)
        _ = b.admit(key: "k", model: "m", limits: lim, estimatedTokens: 1, nowNanos: at(0))
        _ = b.admit(key: "k", model: "m", limits: lim, estimatedTokens: 1, nowNanos: at(0))
        a.receive(b.report(nowNanos: at(0)), nowNanos: at(0))
        do { let ok = refused(a.admit(key: "k", model: "m", limits: lim, estimatedTokens: 1, nowNanos: at(1)))?.kind == .concurrency; #expect(ok) }
        a.peerLost("B")
        #expect(a.used(key: "k", nowNanos: at(1)).inFlight == 0 && a.used(key: "k", nowNanos: at(1)).requests == 2)
        do { let ok = admitted(a.admit(key: "k", model: "m", limits: lim, estimatedTokens: 1, nowNanos: at(1))) != nil; #expect(ok) }
        // B restarted (another instance, numbering from 1 again): its new report is taken whole.
        var b2 = RateLimiter(node: "B", instance: "b2")
        do { let ok = a.receive(b2.report(nowNanos: at(2)), nowNanos: at(2)); #expect(ok) }
        #expect(a.used(key: "k", nowNanos: at(2)).requests == 1)
        // Our own report coming back is not counted twice.
        do { let ok = !a.receive(a.report(nowNanos: at(2)), nowNanos: at(2)); #expect(ok) }
    }

    @Test func tokensSettleAfterTheAnswerAndPendingOnesCountMeanwhile() {
        var l = RateLimiter(node: "A", instance: "i")
        let lim = KeyLimits(tpm: 100)
        do { let ok = admitted(l.admit(key: "k", model: "m", limits: lim, estimatedTokens: 30, nowNanos: at(0)))?.tokens == 30; #expect(ok) }
        // While the first is in flight its estimate counts: 30 + 80 > 100.
        let r = refused(l.admit(key: "k", model: "m", limits: lim, estimatedTokens: 80, nowNanos: at(1)))
        #expect(r?.kind == .tokens && r?.error.type == "tokens" && r?.retryAfterSeconds == 1)
        l.release(key: "k", estimatedTokens: 30)
        l.settle(key: "k", tokens: 45, nowNanos: at(1))  // 30 prompt + 15 output, as the answer said
        #expect(l.used(key: "k", nowNanos: at(1)).tokens == 45)
        let s = admitted(l.admit(key: "k", model: "m", limits: lim, estimatedTokens: 50, nowNanos: at(2)))
        #expect(s?.tokens == 95)
        #expect(RateLimitHeaders.headers(s!).contains { $0 == ("x-ratelimit-remaining-tokens", "5") })
        l.release(key: "k", estimatedTokens: 50)
        l.settle(key: "k", tokens: 60, nowNanos: at(2))
        // 105 settled: 10 must leave; the 45 of second 1 go at 61 s.
        let w = refused(l.admit(key: "k", model: "m", limits: lim, estimatedTokens: 5, nowNanos: at(10)))
        #expect(w.map { abs(($0.retryAfterSeconds ?? 0) - 51) < 0.01 } == true)
        // Larger than the whole minute's budget: no time to wait helps.
        let big = refused(l.admit(key: "k", model: "m", limits: lim, estimatedTokens: 101, nowNanos: at(70)))
        #expect(big?.retryAfterSeconds == nil && big?.message.contains("Request too large") == true)
        #expect(big?.headers.contains { $0.0 == "Retry-After" } == false)
    }

    @Test func concurrencyAndModels() {
        var l = RateLimiter(node: "A", instance: "i")
        let lim = KeyLimits(concurrency: 1, models: ["llama3", "qwen*"])
        do { let ok = admitted(l.admit(key: "k", model: "llama3:latest", limits: lim, estimatedTokens: 1, nowNanos: at(0))) != nil; #expect(ok) }
        do { let ok = refused(l.admit(key: "k", model: "qwen2.5:7b", limits: lim, estimatedTokens: 1, nowNanos: at(0)))?.kind == .concurrency; #expect(ok) }
        l.release(key: "k", estimatedTokens: 1)
        do { let ok = admitted(l.admit(key: "k", model: "qwen2.5:7b", limits: lim, estimatedTokens: 1, nowNanos: at(0))) != nil; #expect(ok) }
        l.release(key: "k", estimatedTokens: 1)
        let m = refused(l.admit(key: "k", model: "mistral", limits: lim, estimatedTokens: 1, nowNanos: at(0)))
        #expect(m?.kind == .model && m?.error.status == 403 && m?.error.param == "model" && m?.retryAfterSeconds == nil)
        #expect(l.used(key: "k", nowNanos: at(0)).requests == 2)
    }

    @Test func keyLimitsInheritKindByKind() {
        let c = LimitsConfig(defaultLimits: KeyLimits(rpm: 60, tpm: 1000, models: ["a"]), perKey: ["x": KeyLimits(tpm: 5)])
        #expect(c.limits(for: "x") == KeyLimits(rpm: 60, tpm: 5, models: ["a"]))
        #expect(c.limits(for: "y") == c.defaultLimits && c.enabled)
        #expect(!LimitsConfig().enabled && LimitsConfig().limits(for: "").isEmpty)
    }

    @Test func headerDurationsReadLikeOpenAIs() {
        #expect(RateLimitHeaders.duration(0.25) == "250ms")
        #expect(RateLimitHeaders.duration(12) == "12s")
        #expect(RateLimitHeaders.duration(12.41) == "12.5s")
        #expect(RateLimitHeaders.duration(60) == "1m0s")
        #expect(RateLimitHeaders.duration(89.2) == "1m30s")
    }

    @Test func reportsRoundTripAndBadOnesAreRejected() throws {
        var l = RateLimiter(node: "A", instance: "i")
        _ = l.admit(key: "k", model: "m", limits: KeyLimits(rpm: 9), estimatedTokens: 7, nowNanos: at(0))
        l.settle(key: "", tokens: 12, nowNanos: at(3))
        let r = l.report(nowNanos: at(5))
        let frames = MeshWireCodec.encode(r.wire)
        let back = try #require(KeyUsageReport(try MeshWireCodec.decode(frames)))
        #expect(back == r && back.full && back.entries.count == 2)
        func bad(_ keys: JSON) -> KeyUsageReport? {
            KeyUsageReport(WireMessage(type: .keyUsage, header: .object([("node", "B"), ("instance", "x"), ("seq", 1), ("full", true), ("keys", keys)])))
        }
        #expect(bad(.array([])) != nil)
        #expect(bad(.array([.object([("k", "k"), ("f", -1), ("p", 0), ("s", .array([]))])])) == nil)
        #expect(bad(.array([.object([("k", "k"), ("f", 0), ("p", 0), ("s", .array([.array([60, 1, 1])]))])])) == nil)
        #expect(bad(.array([.object([("k", "no spaces"), ("f", 0), ("p", 0), ("s", .array([]))])])) == nil)
        #expect(bad(.array(Array(repeating: .object([("k", "k"), ("f", 0), ("p", 0), ("s", .array([]))]), count: RateLimiter.maxReportKeys + 1))) == nil)
        #expect(throws: MeshWireError.self) {
            try MeshWireCodec.decode(MeshWireCodec.encode(WireMessage(type: .keyUsage, header: .object([("node", "B")]))))
        }
    }
}
