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
    /// Prompt tokens expected to come from the chosen engine's cache (cache-aware routing).
    public var cachedTokens: Int = 0
    /// The idle llama-server slot holding the prompt's prefix, to pin the request to (`id_slot`).
    public var slot: Int? = nil
    /// The soonest any candidate could start the request (seconds; 0: one has a free place): past
    /// `routing.queue_after_ms`, the request waits in the mesh queue instead.
    public var startDelaySeconds: Double = 0
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

/// What routing knows of a candidate's cache for this request's prompt.
public struct CacheEstimate: Sendable, Hashable {
    /// Prompt tokens the engine is expected to reuse, already discounted by how well the shadow
    /// has predicted that engine so far.
    public var tokens: Double
    /// An idle slot holding the prefix (llama-server): the request is pinned to it with `id_slot`.
    public var slot: Int?

    public init(tokens: Double, slot: Int? = nil) {
        self.tokens = tokens
        self.slot = slot
    }
}

/// One candidate's expected completion time, term by term (seconds), as `meshctl route` shows it.
public struct RouteTerms: Sendable, Hashable {
    public var node: String
    public var engine: String
    public var isLocal: Bool
    public var loaded: Bool
    public var wait: Double
    public var prefill: Double
    public var decode: Double
    public var cold: Double
    public var hop: Double
    /// Prompt tokens expected to come from the engine's cache, and those left to compute.
    public var cachedTokens: Int
    public var uncachedTokens: Int
    /// The engine's outstanding work in seconds of its own speed (the bounded-load rule's measure).
    public var work: Double
    /// Why the policy passed it over before scoring (bounded load), if it did.
    public var skipped: String?
    public var slot: Int?
    /// Seconds until the engine could start the request: 0 with a free place, else the expected
    /// time until enough running requests end (the mesh queue's measure).
    public var startDelay: Double = 0

    public var total: Double { wait + prefill + decode + cold + hop }

    /// What `cache-aware` ranks by: ``total`` with the decode term weighted (see ``RoutingContext/decodeWeight``).
    public func score(decodeWeight: Double) -> Double { wait + prefill + decodeWeight * decode + cold + hop }
}

/// Everything routing takes besides the mesh view: the policy and, for `cache-aware`, the
/// request's cache matches.
public struct RoutingContext {
    public var policy: RoutingPolicy
    /// The cached part of the prompt on a candidate (nil or absent: nothing cached).
    public var cached: ((RoutingNode, EngineSnapshot) -> CacheEstimate?)?
    /// Turn counter for `round-robin` (the caller advances it per request).
    public var rotation: Int
    /// Bounded load: a candidate whose outstanding work exceeds `loadBound` × the candidates'
    /// mean plus one of its own service times is passed over (unless that leaves none).
    public var loadBound: Double
    /// Blocks a candidate's cache holds: between candidates about as good (within 10 % or 10 ms),
    /// the emptier cache takes the prompt, so new prefixes spread instead of evicting each other
    /// on one engine.
    public var held: ((RoutingNode, EngineSnapshot) -> Int)?
    /// `cache-aware`: how much a candidate's decode time counts in its score (1: this request's
    /// expected completion). Under load, waiting for the fastest engine delays the requests behind
    /// too, and leaves slower engines idle; a weight below 1 starts requests sooner.
    public var decodeWeight = 1.0

    public init(policy: RoutingPolicy = .expectedCompletion, cached: ((RoutingNode, EngineSnapshot) -> CacheEstimate?)? = nil,
                rotation: Int = 0, loadBound: Double = 1.25, held: ((RoutingNode, EngineSnapshot) -> Int)? = nil) {
        self.policy = policy
        self.cached = cached
        self.held = held
        self.rotation = rotation
        self.loadBound = loadBound
    }
}

/// Pure routing: a function of (request, mesh view) with no I/O and no clock reads.
///
/// Expected completion time per candidate = queue wait + uncached prompt ÷ prefill speed +
/// expected output ÷ decode speed + cold-load time + mesh hop. Candidates with the model loaded
/// win over ones that would have to load it; ties keep order with the local node first. The
/// policy (``RoutingPolicy``) decides how the winner is picked among them.
public enum Router {
    /// Local-only routing over this node's engines.
    public static func choose(model: String, operation: APIOperation, promptTokens: Int, maxTokens: Int?,
                              engines: [EngineSnapshot], defaults: RoutingDefaults = .init()) -> Result<RouteDecision, APIError> {
        choose(model: model, operation: operation, promptTokens: promptTokens, maxTokens: maxTokens,
               nodes: [RoutingNode(id: "", isLocal: true, engines: engines)], defaults: defaults)
    }

    /// Routing across the mesh: `nodes` holds this node (isLocal) and every live peer.
    public static func choose(model: String, operation: APIOperation, promptTokens: Int, maxTokens: Int?,
                              nodes: [RoutingNode], context: RoutingContext = .init(),
                              defaults: RoutingDefaults = .init()) -> Result<RouteDecision, APIError> {
        let ranked = rank(model: model, operation: operation, promptTokens: promptTokens, maxTokens: maxTokens,
                          nodes: nodes, context: context, defaults: defaults)
        return ranked.map { r in r.decision }
    }

    /// Every candidate's terms, in the order the policy ranks them (the winner first), and the decision.
    public struct Ranking: Sendable {
        public var decision: RouteDecision
        public var candidates: [RouteTerms]
    }

    public static func rank(model: String, operation: APIOperation, promptTokens: Int, maxTokens: Int?,
                            nodes: [RoutingNode], context: RoutingContext = .init(),
                            defaults: RoutingDefaults = .init()) -> Result<Ranking, APIError> {
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
        let useCache = context.policy == .cacheAware && operation != .embedding
        var terms: [RouteTerms] = []
        terms.reserveCapacity(candidates.count)
        var services: [Double] = []
        for c in candidates {
            let e = c.engine
            // Requests that run at once: meshd's limit for the engine when set (the rest queue), else its slots.
            let places = e.load.limit ?? e.load.slots
            let slots = Double(max(1, places ?? 1))
            let service = e.speeds.meanServiceSeconds ?? priorService
            // Places free now start at once; beyond them, one request must end per request ahead.
            // An engine with neither a limit nor slots (vLLM, SGLang, any OpenAI-compatible server
            // that batches) starts every request at once: it never waits for a place, so it never
            // sends requests to the mesh queue (which would hand it one at a time).
            let ahead = places == nil ? 0 : Double(e.load.busy) - slots + 1
            let startDelay = ahead <= 0 ? 0 : ahead / slots * service
            // Outstanding work in seconds of the engine's own speed (the bounded-load measure, and
            // expected-completion's smooth guess at the wait); cache-aware waits only for a place.
            let work = Double(e.load.busy) / slots * service
            let wait = context.policy == .cacheAware ? startDelay : work
            let estimate = useCache && c.model.loaded ? context.cached?(c.node, e) : nil
            let cached = min(max(0, Int(estimate?.tokens ?? 0)), max(0, promptTokens - 1))
            let uncached = promptTokens - cached
            let prefill = Double(uncached) / (e.speeds.prefillTokensPerSecond ?? priorPrefill)
            let decode = operation == .embedding ? 0 : output / (e.speeds.decodeTokensPerSecond ?? priorDecode)
            let cold = c.model.loaded ? 0 : defaults.loadFixedSeconds + Double(c.model.sizeBytes ?? 0) / defaults.loadBytesPerSecond
            let hop = c.node.isLocal ? 0 : max(c.node.hopSeconds, defaults.hopSeconds)
            terms.append(RouteTerms(node: c.node.id, engine: e.id, isLocal: c.node.isLocal, loaded: c.model.loaded, wait: wait,
                                    prefill: prefill, decode: decode, cold: cold, hop: hop, cachedTokens: cached,
                                    uncachedTokens: uncached, work: work, skipped: nil, slot: cached > 0 ? estimate?.slot : nil))
            terms[terms.count - 1].startDelay = startDelay
            services.append(service)
        }
        // Bounded load (cache-aware): a hot candidate is passed over even when it holds the prefix.
        if context.policy == .cacheAware, terms.count > 1 {
            let meanWork = terms.reduce(0) { $0 + $1.work } / Double(terms.count)
            for i in terms.indices where terms[i].work > context.loadBound * meanWork + services[i] {
                terms[i].skipped = "\(Int((terms[i].work * 1000).rounded())) ms of work queued, over \(context.loadBound)× the mean "
                    + "(\(Int((meanWork * 1000).rounded())) ms) + one request"
            }
            if terms.allSatisfy({ $0.skipped != nil }) { for i in terms.indices { terms[i].skipped = nil } }
        }
        // Rank: skipped last; then by the policy's key; ties keep order (local first).
        let order: [Int]
        switch context.policy {
        case .expectedCompletion:
            order = terms.indices.sorted { a, b in
                if abs(terms[a].total - terms[b].total) > 1e-9 { return terms[a].total < terms[b].total }
                return a < b
            }
        case .cacheAware:
            // The best, then among those about as good as it, the emptiest cache (then order).
            let eligible = terms.indices.filter { terms[$0].skipped == nil }
            let score = terms.map { $0.score(decodeWeight: context.decodeWeight) }
            let best = eligible.map { score[$0] }.min() ?? 0
            // Within 10 %: measured speeds of like engines differ by a few percent, and the faster
            // one must not take every request until its places run out.
            let near = max(0.01, 0.1 * best)
            let held = candidates.map { c in context.held?(c.node, c.engine) ?? 0 }
            let busyPerSlot = candidates.map { c in
                Double(c.engine.load.busy) / Double(max(1, c.engine.load.limit ?? c.engine.load.slots ?? 1))
            }
            order = terms.indices.sorted { a, b in
                let (x, y) = (terms[a], terms[b])
                if (x.skipped == nil) != (y.skipped == nil) { return x.skipped == nil }
                let (xNear, yNear) = (score[a] <= best + near, score[b] <= best + near)
                if xNear != yNear { return xNear }
                if xNear {
                    // About as good: more of the prompt cached, then the less busy, then the emptier cache.
                    if x.cachedTokens != y.cachedTokens { return x.cachedTokens > y.cachedTokens }
                    if abs(busyPerSlot[a] - busyPerSlot[b]) > 1e-9 { return busyPerSlot[a] < busyPerSlot[b] }
                    if held[a] != held[b] { return held[a] < held[b] }
                }
                if abs(score[a] - score[b]) > 1e-9 { return score[a] < score[b] }
                return a < b
            }
        case .leastBusy:
            let busyPerSlot = candidates.map { c in
                Double(c.engine.load.busy) / Double(max(1, c.engine.load.limit ?? c.engine.load.slots ?? 1))
            }
            order = terms.indices.sorted { a, b in
                if abs(busyPerSlot[a] - busyPerSlot[b]) > 1e-9 { return busyPerSlot[a] < busyPerSlot[b] }
                return a < b
            }
        case .roundRobin:
            let n = terms.count
            let first = ((context.rotation % n) + n) % n
            order = (0..<n).map { (first + $0) % n }
        }
        let ranked = order.map { terms[$0] }
        let w = ranked[0]
        let c = candidates[order[0]]
        let e = c.engine
        let slotText = e.load.slots.map { " of \($0) slots" } ?? ""
        var reason = "\(label(c.node, e)): model \(c.model.loaded ? "loaded" : "available, not loaded"), \(e.load.busy) busy\(slotText), "
            + "expected wait \(Int((w.wait * 1000).rounded())) ms"
        if useCache { reason += ", \(w.cachedTokens) of \(promptTokens) prompt tokens cached" }
        reason += ", of \(candidates.count) candidate\(candidates.count == 1 ? "" : "s")"
        if context.policy != .expectedCompletion && context.policy != .cacheAware { reason += " (\(context.policy.rawValue))" }
        let decision = RouteDecision(nodeID: c.node.id.isEmpty ? nil : c.node.id, isLocal: c.node.isLocal, engineID: e.id,
                                     engineModel: c.model.name, loaded: c.model.loaded, expectedSeconds: w.total, reason: reason,
                                     expectedWaitSeconds: w.wait + w.cold + w.hop, cachedTokens: w.cachedTokens, slot: w.slot,
                                     startDelaySeconds: terms.map(\.startDelay).min() ?? 0)
        return .success(Ranking(decision: decision, candidates: ranked))
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
