/// The outcome of choosing where a request runs, with the reason in words.
public struct RouteDecision: Sendable, Equatable {
    /// Node that serves the request (nil: this node, when routing without a mesh).
    public var nodeID: String?
    /// Whether that node is the one deciding.
    public var isLocal: Bool
    /// Engine that serves the request.
    public var engineID: String
    /// Model name as that engine knows it.
    public var engineModel: String
    /// Whether the model was already loaded there.
    public var loaded: Bool
    /// Expected seconds until the request completes there (wait + prefill + decode + cold load + hop).
    public var expectedSeconds: Double
    /// One line for people: why this engine (sent as a response header and shown by meshctl).
    public var reason: String
    /// Expected seconds before generation starts there (queue wait + cold load + hop): what
    /// `cloud.escalate_after_ms` is compared with.
    public var expectedWaitSeconds: Double = 0
}

/// What the router assumes when nothing has been measured yet.
public struct RoutingDefaults: Sendable {
    public var serviceSeconds = 1.0
    public var prefillTokensPerSecond = 500.0
    public var decodeTokensPerSecond = 30.0
    /// Cold-load bandwidth (bytes/s) and fixed cost for a model not yet loaded.
    public var loadBytesPerSecond = 2.0e9
    public var loadFixedSeconds = 1.0
    public var expectedOutputTokens = 256
    /// Cost of one mesh hop when not measured.
    public var hopSeconds = 0.001
    public init() {}
}

/// A node as routing sees it: its engines, whether it is this node, the hop to it, draining.
public struct RoutingNode: Sendable {
    public var id: String
    public var isLocal: Bool
    public var hopSeconds: Double
    public var draining: Bool
    public var engines: [EngineSnapshot]

    public init(id: String, isLocal: Bool, hopSeconds: Double = 0, draining: Bool = false, engines: [EngineSnapshot]) {
        self.id = id
        self.isLocal = isLocal
        self.hopSeconds = hopSeconds
        self.draining = draining
        self.engines = engines
    }
}

/// Pure routing: a function of (request, mesh view) with no I/O and no clock reads.
///
/// Expected completion time per candidate = queue wait + prompt ÷ prefill speed + expected output ÷
/// decode speed + cold-load time + mesh hop. Candidates with the model loaded win over ones that
/// would have to load it; ties keep order with the local node first.
public enum Router {
    /// Local-only routing over this node's engines.
    public static func choose(model: String, operation: APIOperation, promptTokens: Int, maxTokens: Int?,
                              engines: [EngineSnapshot], defaults: RoutingDefaults = .init()) -> Result<RouteDecision, APIError> {
        choose(model: model, operation: operation, promptTokens: promptTokens, maxTokens: maxTokens,
               nodes: [RoutingNode(id: "", isLocal: true, engines: engines)], defaults: defaults)
    }

    /// Routing across the mesh: `nodes` holds this node (isLocal) and every live peer.
    public static func choose(model: String, operation: APIOperation, promptTokens: Int, maxTokens: Int?,
                              nodes: [RoutingNode], defaults: RoutingDefaults = .init()) -> Result<RouteDecision, APIError> {
        struct Candidate {
            let node: RoutingNode
            let engine: EngineSnapshot
            let model: ModelInfo
        }
        var candidates: [Candidate] = []
        var unhealthyHolders: [String] = []
        var drainingHolders: [String] = []
        let ordered = nodes.filter(\.isLocal) + nodes.filter { !$0.isLocal }
        for n in ordered {
            for e in n.engines {
                guard let m = e.model(named: model) else { continue }
                if operation == .embedding, m.embeddings == false { continue }
                if !e.healthy { unhealthyHolders.append(label(n, e) + ": " + (e.healthDetail ?? "unhealthy")); continue }
                if n.draining { drainingHolders.append(n.id); continue }
                candidates.append(Candidate(node: n, engine: e, model: m))
            }
        }
        let allEngines = nodes.flatMap(\.engines)
        if candidates.isEmpty {
            if !drainingHolders.isEmpty && unhealthyHolders.isEmpty {
                return .failure(.noHealthyEngine("every node with '\(model)' is draining (\(Set(drainingHolders).sorted().joined(separator: ", ")))"))
            }
            if !unhealthyHolders.isEmpty {
                return .failure(.noHealthyEngine(unhealthyHolders.joined(separator: "; ")))
            }
            if !allEngines.contains(where: \.healthy) {
                let detail = allEngines.isEmpty ? "no engines are configured"
                    : nodes.flatMap { n in n.engines.map { label(n, $0) + ": " + ($0.healthDetail ?? "unhealthy") } }.joined(separator: "; ")
                return .failure(.noHealthyEngine(detail))
            }
            return .failure(.modelNotFound(model, available: availableModels(allEngines)))
        }
        let anyLoaded = candidates.contains { $0.model.loaded }
        if anyLoaded { candidates = candidates.filter { $0.model.loaded } }

        let output = Double(maxTokens ?? defaults.expectedOutputTokens)
        // An engine not measured yet is assumed as fast as the measured candidates on average (the
        // fixed defaults only when none is measured): a pessimistic guess would keep it unchosen,
        // so never measured, for good (seen when its first requests failed).
        func mean(_ values: [Double?]) -> Double? {
            let v = values.compactMap { $0 }.filter { $0.isFinite && $0 > 0 }
            return v.isEmpty ? nil : v.reduce(0, +) / Double(v.count)
        }
        let priorService = mean(candidates.map(\.engine.speeds.meanServiceSeconds)) ?? defaults.serviceSeconds
        let priorPrefill = mean(candidates.map(\.engine.speeds.prefillTokensPerSecond)) ?? defaults.prefillTokensPerSecond
        let priorDecode = mean(candidates.map(\.engine.speeds.decodeTokensPerSecond)) ?? defaults.decodeTokensPerSecond
        var best: (Candidate, Double, Double, Double)?
        for c in candidates {
            let e = c.engine
            // Requests that run at once: meshd's limit for the engine when set (the rest queue), else its slots.
            let slots = Double(max(1, e.load.limit ?? e.load.slots ?? 1))
            let service = e.speeds.meanServiceSeconds ?? priorService
            let wait = Double(e.load.busy) / slots * service
            let prefill = Double(promptTokens) / (e.speeds.prefillTokensPerSecond ?? priorPrefill)
            let decode = operation == .embedding ? 0 : output / (e.speeds.decodeTokensPerSecond ?? priorDecode)
            let cold = c.model.loaded ? 0 : defaults.loadFixedSeconds + Double(c.model.sizeBytes ?? 0) / defaults.loadBytesPerSecond
            let hop = c.node.isLocal ? 0 : max(c.node.hopSeconds, defaults.hopSeconds)
            let total = wait + prefill + decode + cold + hop
            if best == nil || total < best!.1 - 1e-9 { best = (c, total, wait, wait + cold + hop) }
        }
        let (c, total, wait, delay) = best!
        let e = c.engine
        let slotText = e.load.slots.map { " of \($0) slots" } ?? ""
        let reason = "\(label(c.node, e)): model \(c.model.loaded ? "loaded" : "available, not loaded"), \(e.load.busy) busy\(slotText), "
            + "expected wait \(Int((wait * 1000).rounded())) ms, of \(candidates.count) candidate\(candidates.count == 1 ? "" : "s")"
        return .success(RouteDecision(nodeID: c.node.id.isEmpty ? nil : c.node.id, isLocal: c.node.isLocal, engineID: e.id,
                                      engineModel: c.model.name, loaded: c.model.loaded, expectedSeconds: total, reason: reason,
                                      expectedWaitSeconds: delay))
    }

    static func label(_ n: RoutingNode, _ e: EngineSnapshot) -> String {
        n.isLocal || n.id.isEmpty ? e.id : "\(n.id)/\(e.id)"
    }

    /// Distinct model names offered by healthy engines, sorted.
    public static func availableModels(_ engines: [EngineSnapshot]) -> [String] {
        var seen = Set<String>()
        var out: [String] = []
        for e in engines where e.healthy {
            for m in e.models where seen.insert(m.name).inserted { out.append(m.name) }
        }
        return out.sorted()
    }
}
