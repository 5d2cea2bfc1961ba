import Foundation
import MeshCore
@testable import MeshNode
import NIOHTTP1
import Testing

/// The gateway path: a node with a cloud provider (a fake OpenAI-compatible API on loopback, plain
/// HTTP) escalates what the mesh cannot serve, within its budget caps; a peer escalates through it.
@Suite(.timeLimit(.minutes(1))) struct NodeGatewayTests {
    static let providerKey = "sk-node-test-5b0e77"

    /// A gateway's `cloud:` and `budget:`: provider `fake` at `provider` serving `gpt-fake`
    /// (1 and 2 USD per million tokens), a daily cap of `dailyUSD`, and per-key caps.
    static func gateway(_ c: inout MeshdConfig, provider: FakeEngine, dailyUSD: Double, perKey: [String: CapConfig] = [:]) throws {
        let keyFile = c.stateDir + "/fake.key"
        guard FileManager.default.createFile(atPath: keyFile, contents: Data((providerKey + "\n").utf8),
                                             attributes: [.posixPermissions: 0o600]) else { throw TestNodeError("cannot write \(keyFile)") }
        var p = CloudProviderConfig(name: "fake", kind: .openai)
        p.baseURL = provider.url + "/v1"
        p.keyFile = keyFile
        p.models = ["gpt-fake"]
        c.cloud.providers = [p]
        c.cloud.pricesFile = c.stateDir + "/no-prices.yaml"
        c.cloud.prices = ["fake/gpt-fake": ModelPrice(input: 1, output: 2)]
        c.budget.dailyUSD = dailyUSD
        c.budget.perKey = perKey
    }

    @Test(arguments: [Dialect.openai, .ollama], [false, true])
    func aModelTheMeshLacksGoesToTheCloudWithinBudget(dialect: Dialect, stream: Bool) async throws {
        let provider = try await FakeEngine(models: ["gpt-fake"])
        provider.answer(["from ", "the cloud"])
        let local = try await FakeEngine(models: ["m"])
        let g = try await TestNode.start("g1", engines: [local]) { try Self.gateway(&$0, provider: provider, dailyUSD: 5) }
        let r = await g.chat(dialect, model: "gpt-fake", stream: stream, extra: #","max_tokens":100"#)
        #expect(r.status == 200, "\(r.text)")
        #expect(r.header("X-Meshd-Provider") == "fake" && r.header("X-Meshd-Route")?.contains("escalated to fake (gpt-fake)") == true)
        #expect(provider.requests == 1 && provider.lastModel == "gpt-fake" && provider.lastAuthorization == "Bearer \(Self.providerKey)")
        #expect(r.text.contains("from ") && r.text.contains("the cloud"))
        if !stream {
            let content = dialect == .openai ? r.json?["choices"]?[0]?["message"]?["content"] : r.json?["message"]?["content"]
            #expect(content?.stringValue == "from the cloud")
        }
        // A model the mesh has stays in the mesh.
        let meshServed = await g.chat(dialect, model: "m", stream: stream)
        #expect(meshServed.status == 200 && meshServed.header("X-Meshd-Engine") == local.id && provider.requests == 1)
        // The spend is in the ledger (the usage the provider reported: 3 prompt and 2 completion tokens,
        // 7 micro-USD; a stream reports none, so the estimate), settled: nothing left reserved.
        let budget = try #require(await g.admin(.GET, "/v1/budget").json)
        #expect(budget["gateway"]?.boolValue == true && budget["in_flight"]?.intValue == 0)
        let spent = try #require(budget["daily"]?["spent_usd"]?.doubleValue)
        #expect(stream ? spent > 0 && spent < 0.0002 : spent == 0.000007)
        #expect(budget["daily"]?["limit_usd"]?.doubleValue == 5 && budget["daily"]?["reserved_usd"]?.doubleValue == 0)
        // The model lists show the cloud model too.
        let ids = (await g.api(.GET, "/v1/models")).json?["data"]?.arrayValue?.compactMap { $0["id"]?.stringValue }
        #expect(ids?.sorted() == ["gpt-fake", "m"])
        await g.stop()
        await provider.close()
        await local.close()
    }

    @Test(arguments: [Dialect.openai, .ollama])
    func overTheCapTheCloudIsRefusedWith429(dialect: Dialect) async throws {
        let provider = try await FakeEngine(models: ["gpt-fake"])
        let g = try await TestNode.start("g2") { c in
            // 100 output tokens at 2 USD per million is 200 micro-USD at worst: over the key's cap, within the global one.
            try Self.gateway(&c, provider: provider, dailyUSD: 5, perKey: ["small": CapConfig(dailyUSD: 0.0001)])
            c.http.apiKeys = ["small:key-small-0123456789", "big:key-big-0123456789"]
        }
        let refused = await g.chat(dialect, model: "gpt-fake", headers: [("Authorization", "Bearer key-small-0123456789")],
                                   extra: #","max_tokens":100"#)
        #expect(refused.status == 429)
        #expect(refused.header("Retry-After").flatMap(Int.init).map { $0 >= 1 } == true)
        if dialect == .openai {
            #expect(refused.json?["error"]?["code"]?.stringValue == "budget_exceeded")
        }
        #expect(refused.errorMessage?.contains("small") == true)
        #expect(provider.requests == 0)
        // Another key within its budget is served.
        let served = await g.chat(dialect, model: "gpt-fake", headers: [("Authorization", "Bearer key-big-0123456789")],
                                  extra: #","max_tokens":100"#)
        #expect(served.status == 200 && provider.requests == 1)
        let keys = await g.admin(.GET, "/v1/budget").json?["keys"]
        #expect(keys?["small"]?["daily"]?["spent_usd"]?.doubleValue == 0 && keys?["small"]?["daily"]?["limit_usd"]?.doubleValue == 0.0001)
        await g.stop()
        await provider.close()
    }

    @Test func aPeerEscalatesThroughTheGatewayOverTheMesh() async throws {
        let provider = try await FakeEngine(models: ["gpt-fake"])
        let (g, n) = try await meshPair("gw", [], "gn", [], configureA: { try Self.gateway(&$0, provider: provider, dailyUSD: 5) })
        #expect(await eventually { n.node.mesh?.peers().first?.state.gateway != nil })
        for stream in [false, true] {
            let r = await n.chat(.openai, model: "gpt-fake", stream: stream, extra: #","max_tokens":100"#)
            #expect(r.status == 200, "\(r.text)")
            #expect(r.header("X-Meshd-Via") == "gn" && r.header("X-Meshd-Node") == "gw" && r.header("X-Meshd-Provider") == "fake")
            #expect(r.header("X-Meshd-Route")?.contains("via gateway gw") == true)
            #expect(r.text.contains("hello from \(provider.port)"))
        }
        #expect(provider.requests == 2)
        // The peer lists the gateway's cloud model; the gateway kept the spend.
        let ids = (await n.api(.GET, "/v1/models")).json?["data"]?.arrayValue?.compactMap { $0["id"]?.stringValue }
        #expect(ids == ["gpt-fake"])
        let spent = (await g.admin(.GET, "/v1/budget")).json?["daily"]?["spent_usd"]?.doubleValue ?? 0
        #expect(spent > 0.000007 && spent < 0.0004)
        await n.stop()
        await g.stop()
        await provider.close()
    }
}
