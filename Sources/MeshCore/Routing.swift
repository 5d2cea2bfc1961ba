/// The outcome of choosing where a request runs, with the reason in words.
public struct RouteDecision: Sendable, Equatable {
    /// Engine that serves the request.
    public var engineID: String
    /// Model name as that engine knows it.
    public var engineModel: String
    /// Whether the model was already loaded there.
    public var loaded: Bool
    /// Expected seconds until the request completes there (wait + prefill + decode + cold load).
    public var expectedSeconds: Double
    /// One line for people: why this engine (sent as a response header and shown by meshctl).
    public var reason: String
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
    public init() {}
}

/// Pure routing: a function of (request, engine view) with no I/O and no clock reads.
///
/// Expected completion time per candidate = queue wait + prompt ÷ prefill speed + expected output ÷
/// decode speed + cold-load time. Candidates with the model loaded win over ones that would have
/// to load it; ties keep configuration order (local engines first).
public enum Router {
    public static func choose(model: String, operation: APIOperation, promptTokens: Int, maxTokens: Int?,
                              engines: [EngineSnapshot], defaults: RoutingDefaults = .init()) -> Result<RouteDecision, APIError> {
        var candidates: [(EngineSnapshot, ModelInfo)] = []
        var unhealthyHolders: [EngineSnapshot] = []
        for e in engines {
            guard let m = e.model(named: model) else { continue }
            if operation == .embedding, m.embeddings == false { continue }
            if e.healthy { candidates.append((e, m)) } else { unhealthyHolders.append(e) }
        }
        if candidates.isEmpty {
            if !unhealthyHolders.isEmpty {
                let detail = unhealthyHolders.map { "\($0.id): \($0.healthDetail ?? "unhealthy")" }.joined(separator: "; ")
                return .failure(.noHealthyEngine(detail))
            }
            if !engines.contains(where: \.healthy) {
                let detail = engines.isEmpty ? "no engines are configured"
                    : engines.map { "\($0.id): \($0.healthDetail ?? "unhealthy")" }.joined(separator: "; ")
                return .failure(.noHealthyEngine(detail))
            }
            return .failure(.modelNotFound(model, available: availableModels(engines)))
        }
        let anyLoaded = candidates.contains { $0.1.loaded }
        if anyLoaded { candidates = candidates.filter { $0.1.loaded } }

        let output = Double(maxTokens ?? defaults.expectedOutputTokens)
        var best: (EngineSnapshot, ModelInfo, Double, Double)?
        for (e, m) in candidates {
            let slots = Double(max(1, e.load.slots ?? 1))
            let service = e.speeds.meanServiceSeconds ?? defaults.serviceSeconds
            let wait = Double(e.load.busy) / slots * service
            let prefill = Double(promptTokens) / (e.speeds.prefillTokensPerSecond ?? defaults.prefillTokensPerSecond)
            let decode = operation == .embedding ? 0 : output / (e.speeds.decodeTokensPerSecond ?? defaults.decodeTokensPerSecond)
            let cold = m.loaded ? 0 : defaults.loadFixedSeconds + Double(m.sizeBytes ?? 0) / defaults.loadBytesPerSecond
            let total = wait + prefill + decode + cold
            if best == nil || total < best!.2 - 1e-9 { best = (e, m, total, wait) }
        }
        let (e, m, total, wait) = best!
        let slotText = e.load.slots.map { " of \($0) slots" } ?? ""
        let reason = "\(e.id): model \(m.loaded ? "loaded" : "available, not loaded"), \(e.load.busy) busy\(slotText), "
            + "expected wait \(Int((wait * 1000).rounded())) ms, of \(candidates.count) candidate\(candidates.count == 1 ? "" : "s")"
        return .success(RouteDecision(engineID: e.id, engineModel: m.name, loaded: m.loaded, expectedSeconds: total, reason: reason))
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
