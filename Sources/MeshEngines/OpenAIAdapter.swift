import MeshCore
import Synchronization

/// Any OpenAI-compatible server (llama-server, vLLM, LM Studio, ...).
///
/// Required: `GET /v1/models` (every listed model counts as loaded: these servers serve what they
/// have loaded). Best effort, never failing health when absent: `GET /health` (503 = still loading),
/// llama-server `GET /props` and `GET /slots`, and Prometheus `GET /metrics` (vLLM and llama-server
/// gauges). Optional endpoints that answer 404/405/501 (or something unparseable) are remembered and
/// not asked again until the engine has been unreachable (it may have been replaced).
public final class OpenAIAdapter: EngineAdapter {
    public let id: String
    public let kind: EngineKind
    private let url: Mutex<String>
    private let transport: any EngineHTTPTransport
    private let timeout: Duration
    private let apiKeyFile: String?
    private let configError: String?
    private let state = Mutex(State())

    struct State {
        var missing: Set<String> = []
        var apiKey: String?
        /// The architecture read from the GGUF file llama-server names in `/props` (`model_path`), per path.
        var architectures: [String: String?] = [:]
    }

    /// Optional endpoints this adapter may ask.
    public static let optionalEndpoints = ["/health", "/props", "/slots", "/metrics"]

    public init(url: String, transport: any EngineHTTPTransport, apiKeyFile: String? = nil,
                id: String? = nil, kind: EngineKind = .openai, timeout: Duration = .seconds(3)) {
        let parsed = EngineURL(url, dropV1: true)
        self.url = Mutex(parsed?.base ?? url)
        self.id = id ?? engineID(kind: kind, url: url)
        self.kind = kind
        self.transport = transport
        self.timeout = timeout
        self.apiKeyFile = apiKeyFile
        self.configError = parsed == nil ? "invalid engine url \(url)" : nil
    }

    public var baseURL: String { url.withLock { $0 } }

    /// Points the adapter at a new base URL (a managed engine restarted on another port) and forgets
    /// what it learnt about optional endpoints.
    func setBaseURL(_ newURL: String) {
        url.withLock { $0 = newURL }
        state.withLock { $0.missing = [] }
    }

    public var requestHeaders: [(String, String)] {
        if let key = currentAPIKey() { return [("Authorization", "Bearer \(key)")] }
        return []
    }

    /// Endpoints found missing so far (for tests and diagnostics).
    public var missingEndpoints: Set<String> { state.withLock { $0.missing } }

    private func currentAPIKey() -> String? {
        guard let apiKeyFile else { return nil }
        if let k = state.withLock({ $0.apiKey }) { return k }
        if case .success(let k) = readAPIKeyFile(apiKeyFile) {
            state.withLock { $0.apiKey = k }
            return k
        }
        return nil
    }

    public func refresh() async -> EngineSnapshot {
        let base = baseURL
        var snap = EngineSnapshot(id: id, kind: kind, url: base, healthy: false)
        if let configError {
            snap.healthDetail = configError
            return snap
        }
        var headers: [(String, String)] = []
        if let apiKeyFile {
            guard let key = currentAPIKey() else {
                if case .failure(let e) = readAPIKeyFile(apiKeyFile) { snap.healthDetail = e.message }
                return snap
            }
            headers.append(("Authorization", "Bearer \(key)"))
        }
        let missing = state.withLock { $0.missing }

        // 1. /health, when the server has one.
        if !missing.contains("/health") {
            switch await get(base, "/health", headers) {
            case .failure(let e):
                forgetMissing()
                snap.healthDetail = e.message
                snap.pollTimedOut = e.slowAnswer
                return snap
            case .success((let status, let body)):
                if status == 503 {
                    let hint = bodyHint(body)
                    snap.healthDetail = "loading model" + (hint.isEmpty || hint.lowercased().contains("loading model") ? "" : hint)
                    return snap
                }
                if Self.isMissingStatus(status) { markMissing("/health") }
            }
        }

        // 2. /v1/models, required.
        let modelsJSON: JSON
        switch await get(base, "/v1/models", headers) {
        case .failure(let e):
            forgetMissing()
            snap.healthDetail = e.message
            snap.pollTimedOut = e.slowAnswer
            return snap
        case .success((let status, let body)):
            guard status == 200 else {
                snap.healthDetail = status == 503 ? "loading model" : "GET /v1/models returned HTTP \(status)\(bodyHint(body))"
                return snap
            }
            guard let j = try? JSONParser.parse(body) else {
                snap.healthDetail = "GET /v1/models returned invalid JSON"
                return snap
            }
            modelsJSON = j
        }

        // 3. Optional load and context signals, concurrently.
        async let propsR = optional(base, "/props", headers, missing)
        async let slotsR = optional(base, "/slots", headers, missing)
        async let metricsR = optional(base, "/metrics", headers, missing)
        let propsBody = await propsR
        let slotsBody = await slotsR
        let metricsBody = await metricsR
        let props = propsBody.flatMap { try? JSONParser.parse($0) }
        let slots = slotsBody.flatMap { try? JSONParser.parse($0) }
        // A 200 that is not JSON: some other server answering every path; stop asking.
        if propsBody != nil, props == nil { markMissing("/props") }
        if slotsBody != nil, slots == nil { markMissing("/slots") }

        var models = Self.models(from: modelsJSON)
        var load = EngineLoad()
        if let props {
            let info = Self.parseProps(props)
            load.slots = info.totalSlots
            if let ctx = info.contextLength, models.count == 1 { models[0].contextLength = ctx }
            if models.count == 1, models[0].family == nil, let path = props["model_path"]?.stringValue {
                models[0].family = architecture(ofModelAt: path, base: base)
            }
        }
        if let slots, let info = Self.parseSlots(slots) {
            load.running = info.busy
            if load.slots == nil { load.slots = info.total }
            snap.slotReport = info.report
        }
        if let metricsBody {
            let text = String(decoding: metricsBody, as: UTF8.self)
            let m = Self.parseMetrics(text)
            if m.running == nil && m.waiting == nil {
                if !missing.contains("/metrics") { markMissing("/metrics") }
            } else {
                if load.running == nil { load.running = m.running }
                load.waiting = m.waiting
            }
        }
        snap.models = models
        snap.load = load
        snap.healthy = true
        return snap
    }

    static func isMissingStatus(_ status: Int) -> Bool { status == 404 || status == 405 || status == 501 }

    /// llama-server does not say its model's architecture (`/api/show` needs it); the GGUF file it
    /// names does. Read once per path, and only for an engine on this machine (a path on another
    /// host could name some other local file).
    private func architecture(ofModelAt path: String, base: String) -> String? {
        if let known = state.withLock({ $0.architectures[path] }) { return known }
        var arch: String?
        if EngineURL(base, dropV1: false)?.hostPort.isLoopback == true, path.hasPrefix("/"), let (m, _) = try? GGUFFile.read(path: path) { arch = m.architecture }
        state.withLock { $0.architectures[path] = .some(arch) }
        return arch
    }

    private func markMissing(_ path: String) { _ = state.withLock { $0.missing.insert(path) } }
    private func forgetMissing() { state.withLock { $0.missing = [] } }

    /// GET base+path: `.success((status, body))`, or `.failure(detail)` on a transport error.
    private func get(_ base: String, _ path: String, _ headers: [(String, String)]) async -> Result<(Int, [UInt8]), DetailError> {
        do {
            let r = try await transport.get(base + path, headers: headers, timeout: timeout)
            return .success((r.status, r.body))
        } catch {
            return .failure(DetailError("GET \(path): \(describeTransportError(error))", slowAnswer: isSlowAnswer(error)))
        }
    }

    /// The body of an optional endpoint when it answered 200; remembers 404/405/501.
    private func optional(_ base: String, _ path: String, _ headers: [(String, String)], _ missing: Set<String>) async -> [UInt8]? {
        guard !missing.contains(path) else { return nil }
        guard case .success((let status, let body)) = await get(base, path, headers) else { return nil }
        if status == 200 { return body }
        if Self.isMissingStatus(status) { markMissing(path) }
        return nil
    }

    // MARK: pure parsing (unit-tested)

    /// Models from a `/v1/models` body: `data[].id`; context from vLLM `max_model_len` or
    /// llama-server `meta.n_ctx` / `meta.n_ctx_train`; size and parameter count from llama-server `meta`.
    public static func models(from json: JSON) -> [ModelInfo] {
        var out: [ModelInfo] = []
        var seen: Set<String> = []
        for entry in json["data"]?.arrayValue ?? [] {
            guard let name = entry["id"]?.stringValue, !name.isEmpty, seen.insert(name).inserted else { continue }
            var info = ModelInfo(name: name, loaded: true)
            let meta = entry["meta"]
            info.contextLength = entry["max_model_len"]?.intValue ?? meta?["n_ctx"]?.intValue ?? meta?["n_ctx_train"]?.intValue
            info.sizeBytes = meta?["size"]?.int64Value
            if let n = meta?["n_params"]?.doubleValue, n > 0 { info.parameterSize = formatParams(n) }
            info.embeddings = OllamaAdapter.embeddingHeuristic(name: name, family: nil)
            out.append(info)
        }
        return out
    }

    /// `8.0B`, `135M`: the way Ollama prints parameter counts.
    static func formatParams(_ n: Double) -> String {
        if n >= 1e9 { return "\((n / 1e8).rounded() / 10)B" }
        if n >= 1e6 { return "\(Int((n / 1e6).rounded()))M" }
        if n >= 1e3 { return "\(Int((n / 1e3).rounded()))K" }
        return "\(Int(n))"
    }

    /// llama-server `/props`: `total_slots` and `default_generation_settings.n_ctx`.
    public static func parseProps(_ json: JSON) -> (totalSlots: Int?, contextLength: Int?) {
        let slots = json["total_slots"]?.intValue
        let ctx = json["default_generation_settings"]?["n_ctx"]?.intValue ?? json["n_ctx"]?.intValue
        return (slots.flatMap { $0 > 0 ? $0 : nil }, ctx.flatMap { $0 > 0 ? $0 : nil })
    }

    /// llama-server `/slots`: how many slots are processing (`is_processing`, or a non-zero `state`
    /// in older builds) out of how many, and each slot's state: its `id` (else its place), whether
    /// it is processing, and the tokens it holds (`n_prompt_tokens`, once it has run a task).
    /// Nil when the body is not an array.
    public static func parseSlots(_ json: JSON) -> (busy: Int, total: Int, report: SlotReport)? {
        guard let slots = json.arrayValue else { return nil }
        var busy = 0
        var report = SlotReport(slots: [])
        for (i, s) in slots.enumerated() {
            var processing = false
            if let p = s["is_processing"]?.boolValue {
                processing = p
            } else if let st = s["state"]?.intValue {
                processing = st != 0
            }
            if processing { busy += 1 }
            report.slots.append(.init(id: s["id"]?.intValue ?? i, processing: processing, tokens: s["n_prompt_tokens"]?.intValue))
        }
        return (busy, slots.count, report)
    }

    /// Running and waiting request counts from a Prometheus body: vLLM
    /// `vllm:num_requests_running` / `vllm:num_requests_waiting`, else llama-server
    /// `llamacpp:requests_processing` / `llamacpp:requests_deferred` (summed over labels).
    public static func parseMetrics(_ text: String) -> (running: Int?, waiting: Int?) {
        let samples = PrometheusText.parse(text)
        func count(_ names: String...) -> Int? {
            for n in names {
                if let v = PrometheusText.sum(n, in: samples), v.isFinite { return max(0, Int(v.rounded())) }
            }
            return nil
        }
        return (count("vllm:num_requests_running", "llamacpp:requests_processing"),
                count("vllm:num_requests_waiting", "llamacpp:requests_deferred"))
    }
}

/// An error that is just a message for a health detail.
public struct DetailError: Error, Sendable, Hashable, CustomStringConvertible {
    public var message: String
    /// The engine answered too slowly (a poll's timeout), rather than refusing or failing.
    public var slowAnswer = false
    public init(_ m: String, slowAnswer: Bool = false) {
        message = m
        self.slowAnswer = slowAnswer
    }
    public var description: String { message }
}
