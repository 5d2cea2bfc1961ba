import Testing
@testable import MeshCore

@Suite struct ProviderHealthTests {
    let t0: UInt64 = 1_700_000_000_000_000_000
    func at(_ seconds: Double) -> UInt64 { t0 + UInt64(seconds * 1e9) }
    func admit(_ h: inout ProviderHealth, _ seconds: Double) -> Bool { h.admit(nowNanos: at(seconds)) }

    @Test func failuresOpenTheCircuitWithDoublingCooldown() {
        var h = ProviderHealth(policy: ProviderHealthPolicy(failureThreshold: 3, baseCooldownSeconds: 30, maxCooldownSeconds: 100))
        #expect(h.state(nowNanos: t0) == .closed && h.isAvailable(nowNanos: t0))
        h.record(.failure("HTTP 500"), nowNanos: at(0))
        h.record(.failure("HTTP 502"), nowNanos: at(1))
        #expect(h.state(nowNanos: at(1)) == .closed && h.consecutiveFailures == 2)
        h.record(.failure("timeout"), nowNanos: at(2))
        #expect(h.state(nowNanos: at(2)) == .open && !h.isAvailable(nowNanos: at(31.9)))
        #expect(h.cooldownUntilNanos == at(32) && h.lastError == "timeout" && h.lastErrorNanos == at(2))
        // Half-open after the cooldown: exactly one probe.
        #expect(h.state(nowNanos: at(32)) == .halfOpen && h.isAvailable(nowNanos: at(32)))
        #expect(admit(&h, 32))
        #expect(!admit(&h, 33) && !h.isAvailable(nowNanos: at(33)))
        // The probe fails: open again for twice as long.
        h.record(.failure("HTTP 500"), nowNanos: at(34))
        #expect(h.state(nowNanos: at(93.9)) == .open && h.cooldownUntilNanos == at(94))
        #expect(admit(&h, 94))
        h.record(.failure("HTTP 500"), nowNanos: at(95))
        #expect(h.cooldownUntilNanos == at(195))  // 120 s capped at 100
        // A probe that succeeds closes the circuit and forgets the failures.
        #expect(admit(&h, 195))
        h.record(.success, nowNanos: at(196))
        #expect(h.state(nowNanos: at(196)) == .closed && h.consecutiveFailures == 0 && h.openings == 0)
        h.record(.failure("x"), nowNanos: at(200))
        h.record(.failure("x"), nowNanos: at(200))
        h.record(.failure("x"), nowNanos: at(200))
        #expect(h.cooldownUntilNanos == at(230))  // back to the base cooldown
    }

    @Test func successResetsTheCountAndALateSuccessKeepsTheCooldown() {
        var h = ProviderHealth()
        h.record(.failure("a"), nowNanos: at(0))
        h.record(.failure("b"), nowNanos: at(0))
        h.record(.success, nowNanos: at(1))
        h.record(.failure("c"), nowNanos: at(2))
        #expect(h.state(nowNanos: at(2)) == .closed && h.consecutiveFailures == 1)
        h.record(.failure("d"), nowNanos: at(3))
        h.record(.failure("e"), nowNanos: at(4))
        #expect(h.state(nowNanos: at(4)) == .open)
        h.record(.success, nowNanos: at(5))  // a request sent before the opening
        #expect(h.state(nowNanos: at(5)) == .open)
        h.record(.failure("f"), nowNanos: at(6))  // more late failures do not extend it
        #expect(h.cooldownUntilNanos == at(34))
    }

    @Test func rateLimitHonoursRetryAfter() {
        var h = ProviderHealth(policy: ProviderHealthPolicy(defaultRetryAfterSeconds: 20, maxRetryAfterSeconds: 300))
        h.record(.rateLimited(retryAfterSeconds: 2), nowNanos: at(0))
        #expect(h.state(nowNanos: at(1.9)) == .open && h.state(nowNanos: at(2)) == .halfOpen)
        #expect(h.consecutiveFailures == 0 && h.lastError == "rate limited (429)")
        #expect(admit(&h, 2))
        h.record(.rateLimited(retryAfterSeconds: nil), nowNanos: at(3))
        #expect(h.cooldownUntilNanos == at(23))
        h.record(.rateLimited(retryAfterSeconds: 1), nowNanos: at(4))  // never shortens a cooldown
        #expect(h.cooldownUntilNanos == at(23))
        h.record(.rateLimited(retryAfterSeconds: 86_400), nowNanos: at(30))
        #expect(h.cooldownUntilNanos == at(330))
        // A probe that never reports stops blocking after the probe timeout.
        var p = ProviderHealth(policy: ProviderHealthPolicy(probeTimeoutSeconds: 60))
        p.record(.rateLimited(retryAfterSeconds: 1), nowNanos: at(0))
        #expect(admit(&p, 1) && !admit(&p, 60) && admit(&p, 61))
    }

    @Test func snapshot() {
        var h = ProviderHealth()
        #expect(h.snapshot(name: "openai", nowNanos: t0).json.compactString
            == #"{"name":"openai","state":"closed","available":true,"consecutive_failures":0,"cooldown_until":null,"last_error":null,"last_error_at":null}"#)
        h.record(.rateLimited(retryAfterSeconds: 2), nowNanos: 4_000_000_000)
        let s = h.snapshot(name: "claude", nowNanos: 5_000_000_000)
        #expect(s.state == .open && !s.available && s.cooldownUntilNanos == 6_000_000_000 && s.lastErrorNanos == 4_000_000_000)
        #expect(s.json["cooldown_until"]?.doubleValue == 6 && s.json["state"] == "open" && s.json["last_error"] == "rate limited (429)")
        #expect(h.snapshot(name: "claude", nowNanos: 6_000_000_000).json["state"] == "half_open")
        #expect(h.snapshot(name: "claude", nowNanos: 6_000_000_000).cooldownUntilNanos == nil)
    }

    @Test func retryAfterParsing() {
        let now: UInt64 = 784_111_777 * 1_000_000_000  // Sun, 06 Nov 1994 08:49:37 GMT
        #expect(RetryAfter.seconds("2", nowNanos: now) == 2)
        #expect(RetryAfter.seconds(" 120 ", nowNanos: now) == 120)
        #expect(RetryAfter.seconds("1.5", nowNanos: now) == 1.5)
        #expect(RetryAfter.httpDate("Sun, 06 Nov 1994 08:49:37 GMT") == 784_111_777)
        #expect(RetryAfter.httpDate("Sunday, 06-Nov-94 08:49:37 GMT") == 784_111_777)
        #expect(RetryAfter.httpDate("Sun Nov  6 08:49:37 1994") == 784_111_777)
        #expect(RetryAfter.seconds("Sun, 06 Nov 1994 08:50:07 GMT", nowNanos: now) == 30)
        #expect(RetryAfter.seconds("Sun, 06 Nov 1994 08:00:00 GMT", nowNanos: now) == 0)  // in the past
        #expect(RetryAfter.httpDate("Thu, 29 Feb 2024 23:59:60 GMT") == 1_709_251_200)
        for bad in ["", "soon", "-1", "Sun, 06 Nov 1994", "Sun, 32 Nov 1994 08:49:37 GMT", "Sun, 06 Nox 1994 08:49:37 GMT", "06 Nov 1994 25:00:00 GMT", "."] {
            #expect(RetryAfter.seconds(bad, nowNanos: now) == nil, "\(bad)")
        }
    }
}
