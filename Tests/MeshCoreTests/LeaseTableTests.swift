import MeshCore
import Testing

@Suite struct LeaseTableTests {
    let s: UInt64 = 1_000_000_000
    func req(_ split: String = "s1", bytes: Int64 = 100, build: String = "b1-abc1234", ttl: Int = 10,
             head: String = "A") -> LeaseRequest {
        LeaseRequest(split: split, head: head, model: "big", bytes: bytes, build: build, ttlSeconds: ttl)
    }
    func grant(_ t: inout LeaseTable, _ r: LeaseRequest, now: UInt64, offer: Int64 = 1000,
               build: String? = "b1-abc1234", rpc: Bool = true, enabled: Bool = true) -> Result<Lease, LeaseError> {
        t.request(r, now: now, enabled: enabled, build: build, rpcServer: rpc, offerBytes: offer)
    }

    @Test func grantRenewExpire() throws {
        var t = LeaseTable()
        let l = try grant(&t, req(), now: 5 * s).get()
        #expect(l.expiresNanos == 15 * s && l.secondsLeft(now: 10 * s) == 5)
        #expect(t.leasedBytes == 100)
        #expect(t.expire(now: 14 * s).isEmpty)
        // Renewed at 12 s: lives until 22 s.
        #expect(try t.renew(split: "s1", now: 12 * s).get().expiresNanos == 22 * s)
        #expect(t.expire(now: 21 * s).isEmpty)
        #expect(t.expire(now: 22 * s).map(\.split) == ["s1"])
        #expect(t.leases.isEmpty)
        #expect((try? t.renew(split: "s1", now: 23 * s).get()) == nil)
    }

    @Test func askingAgainForTheSameSplitRenews() throws {
        var t = LeaseTable()
        _ = try grant(&t, req(), now: 0).get()
        let again = try grant(&t, req(ttl: 30), now: 4 * s).get()
        #expect(again.expiresNanos == 34 * s && again.grantedNanos == 0)
        // Other terms for the same split are refused.
        guard case .failure(let e) = grant(&t, req(bytes: 200), now: 5 * s) else { Issue.record("expected a refusal"); return }
        #expect(e.code == .invalid)
    }

    @Test func refusalsNameWhatDiffers() throws {
        var t = LeaseTable()
        func code(_ r: Result<Lease, LeaseError>) -> LeaseError.Code? { if case .failure(let e) = r { return e.code } else { return nil } }
        func message(_ r: Result<Lease, LeaseError>) -> String { if case .failure(let e) = r { return e.message } else { return "" } }
        let mismatch = grant(&t, req(build: "b2-def5678"), now: 0)
        #expect(code(mismatch) == .buildMismatch)
        #expect(message(mismatch).contains("b2-def5678") && message(mismatch).contains("b1-abc1234"))
        #expect(code(grant(&t, req(), now: 0, enabled: false)) == .disabled)
        #expect(code(grant(&t, req(), now: 0, build: nil)) == .noRPCServer)
        #expect(code(grant(&t, req(), now: 0, rpc: false)) == .noRPCServer)
        #expect(code(grant(&t, req(bytes: 2000), now: 0)) == .tooLarge)
        #expect(code(grant(&t, req(ttl: 1), now: 0)) == .invalid)
        #expect(code(grant(&t, req(bytes: 0), now: 0)) == .invalid)
        #expect(t.leases.isEmpty)
        // One split at a time: an rpc-server serves one client.
        _ = try grant(&t, req(), now: 0).get()
        let busy = grant(&t, req("s2", head: "C"), now: 0)
        #expect(code(busy) == .busy && message(busy).contains("s1"))
        #expect(t.release(split: "s1") != nil && t.release(split: "s1") == nil)
        #expect((try? grant(&t, req("s2", head: "C"), now: 0).get()) != nil)
    }
}
