import Foundation
import Testing
@testable import MeshCore

/// `JSONValueCoding` against Foundation's coders: the mesh's `state` must read the same either way
/// (older peers and tools use Foundation's), and bad input must fail the same way (an error, not a trap).
@Suite struct JSONValueCodingTests {
    static func sampleState() -> NodeState {
        var s = NodeState(
            id: "gpu-box", name: "gpu-box", meshEndpoint: "198.18.0.2:11436", httpEndpoint: "0.0.0.0:11435",
            seq: UInt64(Int64.max) - 7, draining: true, vramTotalBytes: 48 << 30, vramFreeBytes: 12 << 30,
            gpuSummary: "2x RTX 4090", ramTotalBytes: 64 << 30, ramFreeBytes: nil,
            engines: [
                EngineSnapshot(
                    id: "ollama@127.0.0.1:11434", kind: .ollama, url: "http://127.0.0.1:11434", healthy: true,
                    models: [
                        ModelInfo(name: "llama3.1:8b", loaded: true, sizeBytes: 4_920_000_000, vramBytes: 5_100_000_000, contextLength: 131_072),
                        ModelInfo(name: "nomic-embed-text", loaded: false),
                    ],
                    load: EngineLoad(inFlight: 3, running: 2, waiting: 1, slots: 4),
                    speeds: EngineSpeeds(prefillTokensPerSecond: 1234.5, decodeTokensPerSecond: 87.25, meanServiceSeconds: 0.5)),
                EngineSnapshot(id: "openai@127.0.0.1:8080", kind: .openai, url: "http://127.0.0.1:8080", healthy: false,
                               healthDetail: "connection refused \"quoted\" \u{1F600}"),
            ],
            knownPeers: ["198.18.0.3:11436", "198.18.0.4:11436"])
        s.gateway = GatewayAdvert(providers: [.init(name: "oa", kind: .openai, healthy: true, models: ["gpt-4o-mini"])], budgetLeft: true)
        s.instance = "0123456789abcdef"
        return s
    }

    @Test func roundTripsANodeState() throws {
        let s = Self.sampleState()
        let json = try JSONValueCoding.encode(s)
        #expect(try JSONValueCoding.decode(NodeState.self, from: json) == s)
        // Through bytes too (what the wire carries).
        #expect(try JSONValueCoding.decode(NodeState.self, from: JSONParser.parse(json.serialized())) == s)
        // nil optionals are omitted, as Foundation's encoder does.
        #expect(json["ramFreeBytes"] == nil)
        #expect(json["engines"]?[1]?["healthDetail"]?.stringValue == "connection refused \"quoted\" \u{1F600}")
    }

    @Test func agreesWithFoundationBothWays() throws {
        let s = Self.sampleState()
        let foundationBytes = try JSONEncoder().encode(s)
        // Foundation's bytes, read by ours.
        #expect(try JSONValueCoding.decode(NodeState.self, from: JSONParser.parse(Array(foundationBytes))) == s)
        // Ours, read by Foundation's (an older peer).
        let ours = try JSONValueCoding.encode(s).serialized()
        #expect(try JSONDecoder().decode(NodeState.self, from: Data(ours)) == s)
        // Same members, same values.
        #expect(try JSONParser.parse(Array(foundationBytes)) == JSONValueCoding.encode(s))
    }

    @Test func optionalFieldsAddedLaterMayBeMissing() throws {
        var json = try JSONValueCoding.encode(Self.sampleState())
        for key in ["gateway", "instance", "ramTotalBytes", "ramFreeBytes"] { json = json.removing(key) }
        let s = try JSONValueCoding.decode(NodeState.self, from: json)
        #expect(s.gateway == nil && s.instance == nil && s.ramTotalBytes == nil)
        #expect(s.engines.count == 2)
    }

    @Test func mismatchesThrowLikeFoundation() throws {
        let good = try JSONValueCoding.encode(Self.sampleState())
        let broken: [(String, JSON)] = [
            ("id as number", good.setting("id", .int(5))),
            ("missing id", good.removing("id")),
            ("seq negative", good.setting("seq", .int(-1))),
            ("seq fractional", good.setting("seq", .number(1.5))),
            ("engines not array", good.setting("engines", .string("x"))),
            ("engine kind unknown", good.setting("engines", .array([good["engines"]![0]!.setting("kind", "quantum")]))),
            ("vram overflow", good.setting("vramTotalBytes", .number(1e30))),
            ("not an object", .array([])),
            ("null", .null),
        ]
        for (what, json) in broken {
            #expect(throws: DecodingError.self, "\(what)") { try JSONValueCoding.decode(NodeState.self, from: json) }
            #expect(throws: DecodingError.self, "\(what) (Foundation)") {
                try JSONDecoder().decode(NodeState.self, from: Data(json.serialized()))
            }
        }
    }

    @Test func scalarsAndContainers() throws {
        struct Mixed: Codable, Equatable {
            var a: [Int8]
            var b: [String: Double]
            var c: UInt16?
            var d: Float
            var e: [[Bool]]
            var f: Int?
        }
        let m = Mixed(a: [-128, 0, 127], b: ["x": 0.1, "y": -2], c: 65535, d: 1.5, e: [[true], [], [false, true]], f: nil)
        let json = try JSONValueCoding.encode(m)
        #expect(try JSONValueCoding.decode(Mixed.self, from: json) == m)
        #expect(try JSONDecoder().decode(Mixed.self, from: Data(json.serialized())) == m)
        #expect(throws: DecodingError.self) { try JSONValueCoding.decode(Mixed.self, from: json.setting("a", [200])) }
        #expect(throws: EncodingError.self) { try JSONValueCoding.encode(["nan": Double.nan]) }
        #expect(try JSONValueCoding.encode(["k": 1]) == ["k": 1])
    }
}
