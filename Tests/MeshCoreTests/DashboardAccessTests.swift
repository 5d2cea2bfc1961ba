import Testing
@testable import MeshCore

@Suite struct DashboardAccessTests {
    let keys: [[UInt8]] = [Array("admin-key-1".utf8), Array("second".utf8)]

    @Test func loopbackClientsNeedNoKey() {
        for ip in ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "::ffff:127.0.0.1", "0:0:0:0:0:0:0:1"] {
            #expect(DashboardAccess.decide(remoteIP: ip, authorization: nil, adminKeys: []) == .allowed, "\(ip)")
        }
        for ip in ["198.18.0.11", "::2", "::ffff:198.18.0.12", "127.0.0", "127.0.0.256", "1127.0.0.1", ""] {
            #expect(!DashboardAccess.isLoopback(ip), "\(ip)")
        }
    }

    @Test func othersNeedAnAdminKeyAsBearerOrBasicPassword() {
        let ip = "198.18.0.12"
        guard case .unauthorized(let none) = DashboardAccess.decide(remoteIP: ip, authorization: nil, adminKeys: []) else {
            Issue.record("open without admin keys")
            return
        }
        #expect(none.contains("http.admin_keys"))
        #expect(DashboardAccess.decide(remoteIP: ip, authorization: "Bearer admin-key-1", adminKeys: keys) == .allowed)
        // "anyone:admin-key-1" and ":second" in base64, with and without padding.
        #expect(DashboardAccess.decide(remoteIP: ip, authorization: "Basic YW55b25lOmFkbWluLWtleS0x", adminKeys: keys) == .allowed)
        #expect(DashboardAccess.decide(remoteIP: ip, authorization: "basic OnNlY29uZA==", adminKeys: keys) == .allowed)
        #expect(DashboardAccess.decide(remoteIP: ip, authorization: "Basic OnNlY29uZA", adminKeys: keys) == .allowed)
        for bad in [nil, "Bearer admin-key-2", "Bearer admin-key-1x", "Basic YW55b25lOmFkbWluLWtleS0y", "Basic !!!", "Basic YWRtaW4ta2V5LTE=",
                    "Token admin-key-1", "admin-key-1", "Bearer"] {
            #expect(DashboardAccess.decide(remoteIP: ip, authorization: bad, adminKeys: keys) != .allowed, "\(bad ?? "nil")")
        }
        // No address known (not a TCP client): a key is needed.
        #expect(DashboardAccess.decide(remoteIP: nil, authorization: nil, adminKeys: keys) != .allowed)
    }

    @Test func base64() {
        #expect(DashboardAccess.base64Decode(Array("aGVsbG8gd29ybGQ=".utf8)) == Array("hello world".utf8))
        #expect(DashboardAccess.base64Decode(Array("+/8=".utf8)) == [0xFB, 0xFF])
        #expect(DashboardAccess.base64Decode(Array("a".utf8)) == nil)
        #expect(DashboardAccess.base64Decode(Array("ab$d".utf8)) == nil)
    }
}
