/// A provider that could serve a request, with what it may cost at most.
public struct CloudCandidate: Sendable, Equatable {
    public var provider: String
    public var kind: ProviderKind
    /// The model name the provider is asked for (the client's, or an alias of it).
    public var model: String
    /// Worst-case cost reserved at admission.
    public var worstCase: MicroUSD
}

/// Where a request goes: the local → LAN → cloud tree, decided as a pure function.
public enum EscalationDecision: Sendable, Equatable {
    /// Serve in the mesh (`route` as the router chose it).
    case mesh(route: RouteDecision, why: String)
    /// Escalate; try these providers in order (cheapest healthy first), falling back before the
    /// first byte.
    case cloud(candidates: [CloudCandidate], why: String)
    /// Neither can serve: the router's error, or why the cloud may not.
    case refuse(APIError)

    /// One line for `X-Meshd-Route` and `meshctl route`.
    public var explanation: String {
        switch self {
        case .mesh(_, let why), .cloud(_, let why): return why
        case .refuse(let e): return e.message
        }
    }
}

/// The inputs of an escalation besides the request itself.
public struct EscalationPolicy: Sendable {
    public var cloud: CloudConfig
    public var prices: PriceTable
    /// Whether this mesh has a gateway (a node with providers) at all.
    public var hasGateway: Bool

    public init(cloud: CloudConfig, prices: PriceTable, hasGateway: Bool) {
        self.cloud = cloud
        self.prices = prices
        self.hasGateway = hasGateway
    }

    /// The names a model may be served under: itself, its alias, and models aliased to it.
    public func equivalents(of model: String) -> [String] {
        var out = [model]
        if let a = cloud.aliases[model], !out.contains(a) { out.append(a) }
        for (k, v) in cloud.aliases.sorted(by: { $0.key < $1.key }) where v == model && !out.contains(k) { out.append(k) }
        return out
    }

    /// Whether a request may ever leave the mesh.
    public func isLocalOnly(model: String, apiKeyName: String?) -> Bool {
        equivalents(of: model).contains { cloud.localOnlyModels.contains($0) } || apiKeyName.map { cloud.localOnlyKeys.contains($0) } == true
    }

    /// Providers able to serve `model` (or an equivalent), with a price, healthy, cheapest first.
    public func cloudCandidates(model: String, estimatedPromptTokens: Int, maxTokens: Int?,
                                healthy: (String) -> Bool) -> [CloudCandidate] {
        var out: [CloudCandidate] = []
        for p in cloud.providers where healthy(p.name) {
            for m in equivalents(of: model) where Self.serves(p, m, prices: prices) {
                if let cost = prices.worstCase(provider: p.name, model: m, estimatedPromptTokens: estimatedPromptTokens, maxTokens: maxTokens) {
                    out.append(CloudCandidate(provider: p.name, kind: p.kind, model: m, worstCase: cost))
                    break
                }
            }
        }
        // Stable: equal costs keep the configured order.
        return out.enumerated().sorted { ($0.element.worstCase, $0.offset) < ($1.element.worstCase, $1.offset) }.map(\.element)
    }

    /// Whether provider `p` is asked for model `m`: the models it lists, or, when it lists none,
    /// models priced for it by name (`name/model`) and priced models of its family (`claude-*` at
    /// Anthropic, `gemini-*` at Gemini, any other at OpenAI-compatible and Azure providers; Groq and
    /// Bedrock, which host their own catalogues under their own model IDs, only the models priced
    /// or listed for them).
    public static func serves(_ p: CloudProviderConfig, _ m: String, prices: PriceTable) -> Bool {
        if !p.models.isEmpty { return p.models.contains(m) }
        if prices.models["\(p.name)/\(m)"] != nil { return true }
        guard prices.models[m] != nil else { return false }
        let family: ProviderKind? = m.hasPrefix("claude") ? .anthropic : m.hasPrefix("gemini") ? .gemini : nil
        switch p.kind {
        case .anthropic, .gemini: return family == p.kind
        case .openai, .azure: return family == nil
        case .groq, .bedrock: return false
        }
    }

    /// The decision. `mesh` is the router's answer over the live nodes (for the requested model
    /// or, failing that, an alias); `meshUp` says whether any node can serve at all.
    public func decide(model: String, apiKeyName: String?, mesh: Result<RouteDecision, APIError>,
                       estimatedPromptTokens: Int, maxTokens: Int?, healthy: (String) -> Bool) -> EscalationDecision {
        guard hasGateway else {
            switch mesh {
            case .success(let r): return .mesh(route: r, why: r.reason)
            case .failure(let e): return .refuse(e)
            }
        }
        let localOnly = isLocalOnly(model: model, apiKeyName: apiKeyName)
        let waitMs = { (r: RouteDecision) in Int((r.expectedWaitSeconds * 1000).rounded()) }
        if case .success(let r) = mesh, localOnly || waitMs(r) <= cloud.escalateAfterMs {
            return .mesh(route: r, why: r.reason)
        }
        if localOnly, case .failure(let e) = mesh {
            return .refuse(APIError(status: e.status, message: "\(e.message); '\(model)' is local-only, so it is never sent to the cloud",
                                    type: e.type, param: e.param, code: e.code))
        }
        let candidates = cloudCandidates(model: model, estimatedPromptTokens: estimatedPromptTokens, maxTokens: maxTokens, healthy: healthy)
        switch mesh {
        case .success(let r):
            // Every mesh candidate is busier than the threshold: the cloud if it can, else wait.
            guard let first = candidates.first else {
                return .mesh(route: r, why: "\(r.reason); expected wait \(waitMs(r)) ms exceeds cloud.escalate_after_ms but no cloud provider can serve '\(model)'")
            }
            return .cloud(candidates: candidates, why: "escalated to \(first.provider) (\(first.model)): every mesh candidate would wait over \(cloud.escalateAfterMs) ms (best: \(waitMs(r)) ms)")
        case .failure(let e):
            guard let first = candidates.first else {
                let why = cloud.providers.isEmpty ? "no cloud provider is configured" : "no healthy cloud provider with a price serves it"
                return .refuse(APIError(status: e.status, message: "\(e.message); \(why)", type: e.type, param: e.param, code: e.code))
            }
            return .cloud(candidates: candidates, why: "escalated to \(first.provider) (\(first.model)): the mesh cannot serve '\(model)' (\(e.message))")
        }
    }
}
