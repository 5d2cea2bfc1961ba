import MeshCore

/// An Ollama server: `GET /api/tags` (what it has) and `GET /api/ps` (what is loaded).
///
/// Healthy when both calls succeed. Load is meshd's own in-flight count (Ollama reports none).
/// `embeddings` is a heuristic: `true` when the name contains "embed", the family is `bert` or
/// `nomic-bert`, or the engine lists an `embedding` capability; otherwise unknown (`nil`), since
/// Ollama can embed with most generative models too.
public final class OllamaAdapter: EngineAdapter {
    public let id: String
    public let kind: EngineKind = .ollama
    public let baseURL: String
    private let transport: any EngineHTTPTransport
    private let timeout: Duration
    private let configError: String?

    /// - Parameters:
    ///   - url: base URL (`http://127.0.0.1:11434`).
    ///   - timeout: limit for each poll request.
    public init(url: String, transport: any EngineHTTPTransport, id: String? = nil, timeout: Duration = .seconds(3)) {
        let parsed = EngineURL(url, dropV1: false)
        self.baseURL = parsed?.base ?? url
        self.id = id ?? engineID(kind: .ollama, url: url)
        self.transport = transport
        self.timeout = timeout
        self.configError = parsed == nil ? "invalid engine url \(url)" : nil
    }

    public func refresh() async -> EngineSnapshot {
        var snap = EngineSnapshot(id: id, kind: kind, url: baseURL, healthy: false)
        if let configError {
            snap.healthDetail = configError
            return snap
        }
        async let tagsResult = fetchJSON("/api/tags")
        async let psResult = fetchJSON("/api/ps")
        let tags: JSON
        let ps: JSON
        switch await tagsResult {
        case .success(let j): tags = j
        case .failure(let e):
            _ = await psResult
            snap.healthDetail = e.message
            snap.pollTimedOut = e.slowAnswer
            return snap
        }
        switch await psResult {
        case .success(let j): ps = j
        case .failure(let e):
            snap.healthDetail = e.message
            snap.pollTimedOut = e.slowAnswer
            return snap
        }
        snap.models = Self.models(tags: tags, ps: ps)
        snap.healthy = true
        return snap
    }

    /// Builds the model list from `/api/tags` and `/api/ps` bodies (pure; unit-tested).
    public static func models(tags: JSON, ps: JSON) -> [ModelInfo] {
        var models: [ModelInfo] = []
        var index: [String: Int] = [:]
        for entry in tags["models"]?.arrayValue ?? [] {
            guard let name = entry["name"]?.stringValue ?? entry["model"]?.stringValue, !name.isEmpty else { continue }
            if index[name] != nil { continue }
            index[name] = models.count
            models.append(modelInfo(entry, name: name, loaded: false))
        }
        for entry in ps["models"]?.arrayValue ?? [] {
            guard let name = entry["name"]?.stringValue ?? entry["model"]?.stringValue, !name.isEmpty else { continue }
            let i: Int
            if let existing = index[name] ?? models.firstIndex(where: { ModelName.matches($0.name, name) }) {
                i = existing
            } else {
                i = models.count
                index[name] = i
                models.append(modelInfo(entry, name: name, loaded: true))
            }
            models[i].loaded = true
            if let v = entry["size_vram"]?.int64Value { models[i].vramBytes = v }
            if let e = entry["expires_at"]?.stringValue, !e.isEmpty { models[i].expiresAt = e }
            if let c = entry["context_length"]?.intValue, c > 0 { models[i].contextLength = c }
        }
        return models
    }

    static func modelInfo(_ entry: JSON, name: String, loaded: Bool) -> ModelInfo {
        let details = entry["details"]
        let family = details?["family"]?.stringValue.flatMap { $0.isEmpty ? nil : $0 }
        let families = details?["families"]?.arrayValue?.compactMap(\.stringValue) ?? []
        var info = ModelInfo(
            name: name, loaded: loaded,
            sizeBytes: entry["size"]?.int64Value,
            family: family,
            parameterSize: details?["parameter_size"]?.stringValue.flatMap { $0.isEmpty ? nil : $0 },
            quantization: details?["quantization_level"]?.stringValue.flatMap { $0.isEmpty ? nil : $0 })
        info.embeddings = embeddingHeuristic(name: name, family: family, families: families,
                                             capabilities: entry["capabilities"]?.arrayValue?.compactMap(\.stringValue))
        return info
    }

    /// `true` for what looks like an embedding model, else nil (unknown). Heuristic.
    public static func embeddingHeuristic(name: String, family: String?, families: [String] = [], capabilities: [String]? = nil) -> Bool? {
        if let capabilities, capabilities.contains("embedding") { return true }
        if name.lowercased().contains("embed") { return true }
        let embedFamilies: Set<String> = ["bert", "nomic-bert"]
        if let f = family?.lowercased(), embedFamilies.contains(f) { return true }
        if families.contains(where: { embedFamilies.contains($0.lowercased()) }) { return true }
        return nil
    }

    private func fetchJSON(_ path: String) async -> Result<JSON, DetailError> {
        do {
            let (status, body) = try await transport.get(baseURL + path, headers: [], timeout: timeout)
            guard status == 200 else {
                return .failure(DetailError("GET \(path) returned HTTP \(status)\(bodyHint(body))"))
            }
            do {
                return .success(try JSONParser.parse(body))
            } catch {
                return .failure(DetailError("GET \(path): \(error)"))
            }
        } catch {
            return .failure(DetailError("GET \(path): \(describeTransportError(error))", slowAnswer: isSlowAnswer(error)))
        }
    }
}

extension JSON {
    /// A number as Int64 (integers exactly; doubles when integral and in range).
    var int64Value: Int64? {
        switch self {
        case .int(let i): return i
        case .number(let d): return d.isFinite && d >= -9e18 && d <= 9e18 ? Int64(d) : nil
        default: return nil
        }
    }
}

/// `: message` from a JSON error body (`{"error":"..."}` or `{"error":{"message":"..."}}`), else "".
func bodyHint(_ body: [UInt8]) -> String {
    guard !body.isEmpty, body.count < 64 * 1024, let j = try? JSONParser.parse(body) else { return "" }
    if let s = j["error"]?.stringValue { return ": \(s)" }
    if let s = j["error"]?["message"]?.stringValue { return ": \(s)" }
    if let s = j["message"]?.stringValue { return ": \(s)" }
    return ""
}
