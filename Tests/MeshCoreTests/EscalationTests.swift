import Testing
@testable import MeshCore

@Suite struct EscalationTests {
    func provider(_ name: String, _ kind: ProviderKind, models: [String] = []) -> CloudProviderConfig {
        var p = CloudProviderConfig(name: name, kind: kind)
        p.keyEnv = "K"
        p.models = models
        return p
    }

    var policy: EscalationPolicy {
        var c = CloudConfig()
        c.escalateAfterMs = 2000
        c.providers = [provider("pricey", .openai), provider("cheap", .openai, models: ["gpt-4o-mini"]), provider("claude", .anthropic)]
        c.aliases = ["gpt-4o-mini": "llama3.1:8b"]
        c.localOnlyModels = ["secret-model"]
        c.localOnlyKeys = ["ci"]
        let prices = PriceTable(models: [
            "gpt-4o-mini": ModelPrice(input: 0.15, output: 0.60), "pricey/gpt-4o-mini": ModelPrice(input: 5, output: 20),
            "claude-haiku": ModelPrice(input: 0.8, output: 4), "secret-model": ModelPrice(input: 1, output: 1),
        ])
        return EscalationPolicy(cloud: c, prices: prices, hasGateway: true)
    }

    func route(waitMs: Double) -> RouteDecision {
        RouteDecision(nodeID: "b", isLocal: false, engineID: "ollama@b", engineModel: "llama3.1:8b", loaded: true,
                      expectedSeconds: waitMs / 1000 + 3, reason: "b/ollama: loaded", expectedWaitSeconds: waitMs / 1000)
    }

    let notFound = Result<RouteDecision, APIError>.failure(.modelNotFound("gpt-4o-mini", available: ["llama3.1:8b"]))
    let allHealthy: (String) -> Bool = { _ in true }

    @Test func meshFirstWhileItIsQuickEnough() {
        let d = policy.decide(model: "gpt-4o-mini", apiKeyName: nil, mesh: .success(route(waitMs: 1999)),
                              estimatedPromptTokens: 100, maxTokens: 50, healthy: allHealthy)
        guard case .mesh(let r, _) = d else { Issue.record("\(d)"); return }
        #expect(r.nodeID == "b")
    }

    @Test func busyMeshEscalatesToTheCheapestHealthyProvider() {
        let d = policy.decide(model: "gpt-4o-mini", apiKeyName: nil, mesh: .success(route(waitMs: 2500)),
                              estimatedPromptTokens: 1000, maxTokens: 100, healthy: allHealthy)
        guard case .cloud(let cands, let why) = d else { Issue.record("\(d)"); return }
        #expect(cands.map(\.provider) == ["cheap", "pricey"])  // claude has no price for gpt-4o-mini or its alias
        #expect(cands[0].worstCase == 150 + 60 && cands[1].worstCase == 5_000 + 2_000)
        #expect(why.contains("over 2000 ms") && why.contains("2500 ms"))
        // The cheap one in cooldown: the next one.
        let d2 = policy.decide(model: "gpt-4o-mini", apiKeyName: nil, mesh: .success(route(waitMs: 2500)),
                               estimatedPromptTokens: 1000, maxTokens: 100, healthy: { $0 != "cheap" })
        guard case .cloud(let c2, _) = d2 else { Issue.record("\(d2)"); return }
        #expect(c2.map(\.provider) == ["pricey"])
        // Nobody can: keep waiting in the mesh rather than fail.
        let d3 = policy.decide(model: "gpt-4o-mini", apiKeyName: nil, mesh: .success(route(waitMs: 2500)),
                               estimatedPromptTokens: 1000, maxTokens: 100, healthy: { _ in false })
        guard case .mesh(_, let why3) = d3 else { Issue.record("\(d3)"); return }
        #expect(why3.contains("no cloud provider can serve"))
    }

    @Test func missingModelGoesToTheCloudThroughAliases() {
        let d = policy.decide(model: "gpt-4o-mini", apiKeyName: nil, mesh: notFound, estimatedPromptTokens: 10, maxTokens: 10, healthy: allHealthy)
        guard case .cloud(let c, let why) = d else { Issue.record("\(d)"); return }
        #expect(c.first?.provider == "cheap" && why.contains("cannot serve"))
        // A local model name the mesh lacks may be served by the cloud model it is an alias of.
        let d2 = policy.decide(model: "llama3.1:8b", apiKeyName: nil, mesh: .failure(.noHealthyEngine("down")),
                               estimatedPromptTokens: 10, maxTokens: 10, healthy: allHealthy)
        guard case .cloud(let c2, _) = d2 else { Issue.record("\(d2)"); return }
        #expect(c2.first?.model == "gpt-4o-mini")
        #expect(policy.equivalents(of: "llama3.1:8b") == ["llama3.1:8b", "gpt-4o-mini"])
    }

    @Test func localOnlyNeverLeaves() {
        for (model, key) in [("secret-model", nil), ("gpt-4o-mini", "ci")] as [(String, String?)] {
            let busy = policy.decide(model: model, apiKeyName: key, mesh: .success(route(waitMs: 60_000)),
                                     estimatedPromptTokens: 10, maxTokens: 10, healthy: allHealthy)
            guard case .mesh = busy else { Issue.record("\(model)/\(String(describing: key)): \(busy)"); continue }
            let missing = policy.decide(model: model, apiKeyName: key, mesh: .failure(.modelNotFound(model, available: [])),
                                        estimatedPromptTokens: 10, maxTokens: 10, healthy: allHealthy)
            guard case .refuse(let e) = missing else { Issue.record("\(missing)"); continue }
            #expect(e.status == 404 && e.message.contains("local-only"))
        }
    }

    @Test func withoutAGatewayOrPriceTheRoutersErrorStands() {
        var p = policy
        p.hasGateway = false
        let d = p.decide(model: "gpt-4o-mini", apiKeyName: nil, mesh: notFound, estimatedPromptTokens: 10, maxTokens: 10, healthy: allHealthy)
        #expect(d == .refuse(.modelNotFound("gpt-4o-mini", available: ["llama3.1:8b"])))
        let busy = p.decide(model: "gpt-4o-mini", apiKeyName: nil, mesh: .success(route(waitMs: 9_000)),
                            estimatedPromptTokens: 10, maxTokens: 10, healthy: allHealthy)
        guard case .mesh = busy else { Issue.record("\(busy)"); return }
        let unpriced = policy.decide(model: "mystery", apiKeyName: nil, mesh: .failure(.modelNotFound("mystery", available: [])),
                                     estimatedPromptTokens: 10, maxTokens: 10, healthy: allHealthy)
        guard case .refuse(let e) = unpriced else { Issue.record("\(unpriced)"); return }
        #expect(e.status == 404 && e.message.contains("no healthy cloud provider with a price"))
    }
}

@Suite struct ProviderModelTests {
    @Test func providersServeTheirFamilyWhenTheyListNoModels() {
        let prices = PriceTable(models: ["gpt-4o-mini": ModelPrice(input: 1, output: 1), "claude-haiku": ModelPrice(input: 1, output: 1),
                                         "gemini-2.0-flash": ModelPrice(input: 1, output: 1), "lab/qwen": ModelPrice(input: 0, output: 0)])
        let oa = CloudProviderConfig(name: "oa", kind: .openai), an = CloudProviderConfig(name: "an", kind: .anthropic)
        let ge = CloudProviderConfig(name: "ge", kind: .gemini), lab = CloudProviderConfig(name: "lab", kind: .openai)
        #expect(EscalationPolicy.serves(oa, "gpt-4o-mini", prices: prices) && !EscalationPolicy.serves(oa, "claude-haiku", prices: prices))
        #expect(EscalationPolicy.serves(an, "claude-haiku", prices: prices) && !EscalationPolicy.serves(an, "gpt-4o-mini", prices: prices))
        #expect(EscalationPolicy.serves(ge, "gemini-2.0-flash", prices: prices) && !EscalationPolicy.serves(ge, "claude-haiku", prices: prices))
        #expect(EscalationPolicy.serves(lab, "qwen", prices: prices) && !EscalationPolicy.serves(oa, "qwen", prices: prices))
        #expect(!EscalationPolicy.serves(oa, "unpriced", prices: prices))
        // Groq hosts its own catalogue: only what is priced (or listed) for it, never the OpenAI-family models.
        let groq = CloudProviderConfig(name: "groq", kind: .groq)
        let withGroq = PriceTable(models: prices.models.merging(["groq/llama-3.3-70b-versatile": ModelPrice(input: 1, output: 1)]) { a, _ in a })
        #expect(EscalationPolicy.serves(groq, "llama-3.3-70b-versatile", prices: withGroq) && !EscalationPolicy.serves(groq, "gpt-4o-mini", prices: withGroq))
        #expect(!EscalationPolicy.serves(oa, "llama-3.3-70b-versatile", prices: withGroq))
        #expect(CloudProviderConfig(name: "g", kind: .groq).effectiveBaseURL == "https://api.groq.com/openai/v1")
        // So does Bedrock, at its region's endpoint.
        var bedrock = CloudProviderConfig(name: "bedrock", kind: .bedrock)
        let withBedrock = PriceTable(models: prices.models.merging(["bedrock/amazon.nova-lite-v1:0": ModelPrice(input: 1, output: 1)]) { a, _ in a })
        #expect(EscalationPolicy.serves(bedrock, "amazon.nova-lite-v1:0", prices: withBedrock) && !EscalationPolicy.serves(bedrock, "gpt-4o-mini", prices: withBedrock))
        #expect(!EscalationPolicy.serves(oa, "amazon.nova-lite-v1:0", prices: withBedrock))
        #expect(bedrock.effectiveBaseURL == nil)
        bedrock.region = "ap-southeast-2"
        #expect(bedrock.effectiveBaseURL == "https://bedrock-runtime.ap-southeast-2.amazonaws.com")
        var listed = oa
        listed.models = ["only-this"]
        #expect(EscalationPolicy.serves(listed, "only-this", prices: prices) && !EscalationPolicy.serves(listed, "gpt-4o-mini", prices: prices))
    }
}

@Suite struct ClientKeyTests {
    @Test func namedAndPositionalKeys() {
        let keys = ClientKey.parse(["ci:s3cret", "plainkey", "sk-live:abc:def", "bad name:x", "trailing:"])
        #expect(keys.map(\.name) == ["ci", "key2", "sk-live", "key4", "key5"])
        #expect(keys.map(\.secret) == ["s3cret", "plainkey", "abc:def", "bad name:x", "trailing:"])
        #expect(ClientKey.isName("a.b-c_9") && !ClientKey.isName("") && !ClientKey.isName(Substring(String(repeating: "x", count: 65))))
    }
}
