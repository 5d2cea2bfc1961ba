import Testing
@testable import MeshCore

@Suite struct DiscoveryTXTTests {
    let sample = DiscoveryTXT(nodeID: "alpha", proto: Int(meshProtocolVersion), meshPort: 11436, httpPort: 11435,
                              gpu: "2x NVIDIA GeForce RTX 4090", vramTotalBytes: 51_539_607_552,
                              meshFingerprint: "0123456789abcdef", version: "0.1.0")

    static func dict(_ strings: [String]) -> [String: String] {
        var d: [String: String] = [:]
        for s in strings {
            let kv = s.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            d[String(kv[0])] = kv.count > 1 ? String(kv[1]) : ""
        }
        return d
    }

    @Test func roundTripsThroughTheRecord() throws {
        let strings = sample.encode()
        #expect(DiscoveryTXT.size(strings) <= DiscoveryTXT.maxBytes)
        #expect(strings.contains("mesh=11436"))
        let back = try DiscoveryTXT.decode(Self.dict(strings), ownID: "beta", ownFingerprint: "0123456789abcdef").get()
        #expect(back == sample)
    }

    @Test func longHardwareSummaryIsShortenedToFit() throws {
        var t = sample
        t.nodeID = String(repeating: "n", count: 60)
        t.gpu = "8x " + String(repeating: "NVIDIA H100 80GB HBM3 ", count: 10)
        t.version = "0.1.0-" + String(repeating: "x", count: 60)
        let strings = t.encode()
        #expect(DiscoveryTXT.size(strings) <= DiscoveryTXT.maxBytes)
        let back = try DiscoveryTXT.decode(Self.dict(strings), ownID: "beta", ownFingerprint: "").get()
        #expect(back.nodeID == t.nodeID)
        #expect(back.meshPort == 11436)
        #expect(t.gpu.hasPrefix(back.gpu))
        // Control characters never reach the record.
        t.gpu = "evil\ngpu"
        #expect(!t.encode().joined().contains("\n"))
    }

    @Test func rejectsWhatIsNotWorthDialing() {
        let good = Self.dict(sample.encode())
        func decode(_ change: (inout [String: String]) -> Void, own: String = "beta", fp: String = "0123456789abcdef")
            -> Result<DiscoveryTXT, DiscoveryTXT.Rejection> {
            var d = good
            change(&d)
            return DiscoveryTXT.decode(d, ownID: own, ownFingerprint: fp)
        }
        #expect(decode({ _ in }, own: "alpha") == .failure(.ownNode))
        #expect(decode({ $0["id"] = nil }) == .failure(.missing("id")))
        #expect(decode({ $0["id"] = "" }) == .failure(.missing("id")))
        #expect(decode({ $0["proto"] = nil }) == .failure(.missing("proto")))
        #expect(decode({ $0["proto"] = "x" }) == .failure(.invalid(key: "proto", value: "x")))
        #expect(decode({ $0["proto"] = "99" }) == .failure(.otherProtocol(99)))
        #expect(decode({ $0["mesh"] = nil }) == .failure(.missing("mesh")))
        #expect(decode({ $0["mesh"] = "0" }) == .failure(.invalid(key: "mesh", value: "0")))
        #expect(decode({ $0["mesh"] = "70000" }) == .failure(.invalid(key: "mesh", value: "70000")))
        #expect(decode({ $0["mesh"] = "-5" }) == .failure(.invalid(key: "mesh", value: "-5")))
        #expect(decode({ $0["fp"] = "ffffffffffffffff" }) == .failure(.otherMesh("ffffffffffffffff")))
        #expect(decode({ $0["id"] = String(repeating: "x", count: 200) }) ==
                .failure(.invalid(key: "id", value: String(repeating: "x", count: 200))))
    }

    @Test func optionalAndUnknownKeysAreTolerated() throws {
        var d = Self.dict(sample.encode())
        d["future"] = "something"
        d["gpu"] = nil
        d["vram"] = "not a number"
        d["http"] = "99999"
        d["fp"] = nil  // an older node without a fingerprint is still dialed (the handshake decides)
        let t = try DiscoveryTXT.decode(d, ownID: "beta", ownFingerprint: "0123456789abcdef").get()
        #expect(t.gpu == "")
        #expect(t.vramTotalBytes == 0)
        #expect(t.httpPort == 0)
        #expect(t.meshPort == 11436)
    }
}
