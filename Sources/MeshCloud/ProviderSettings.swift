import MeshCore
import MeshHTTPClient

/// One configured cloud provider: where it is, which dialect it speaks, and its key.
public struct ProviderSettings: Sendable, Equatable {
    /// Name used in logs, budgets, health and route explanations.
    public var name: String
    public var kind: ProviderKind
    /// API root: `https://api.openai.com/v1`, `https://api.anthropic.com/v1`,
    /// `https://generativelanguage.googleapis.com/v1beta`, or for Azure the deployment URL
    /// (`https://RESOURCE.openai.azure.com/openai/deployments/DEPLOYMENT`).
    public var baseURL: String
    public var secret: ProviderSecret
    /// PEM bundle of CA certificates trusted for this provider only (a lab server with its own CA).
    public var caFile: String?
    /// Azure `api-version` (``ProviderKind/defaultAzureAPIVersion`` when nil).
    public var apiVersion: String?
    /// Headers sent with every request; one named like a default header replaces it.
    public var extraHeaders: [(String, String)]
    /// Overrides the HTTP client's wait for the response head.
    public var firstByteTimeout: Duration?

    /// Creates settings; `baseURL` nil takes the kind's public API (required for Azure).
    public init(name: String, kind: ProviderKind, baseURL: String? = nil, secret: ProviderSecret, caFile: String? = nil,
                apiVersion: String? = nil, extraHeaders: [(String, String)] = [], firstByteTimeout: Duration? = nil) {
        self.name = name
        self.kind = kind
        self.baseURL = baseURL ?? kind.defaultBaseURL ?? ""
        self.secret = secret
        self.caFile = caFile
        self.apiVersion = apiVersion
        self.extraHeaders = extraHeaders
        self.firstByteTimeout = firstByteTimeout
    }

    public static func == (a: ProviderSettings, b: ProviderSettings) -> Bool {
        a.name == b.name && a.kind == b.kind && a.baseURL == b.baseURL && a.secret == b.secret && a.caFile == b.caFile
            && a.apiVersion == b.apiVersion && a.extraHeaders.elementsEqual(b.extraHeaders, by: ==) && a.firstByteTimeout == b.firstByteTimeout
    }

    /// The full URL of `path` (an ``EngineRequest`` path from ``ProviderRequestBuilder``). OpenAI
    /// paths carry `/v1`, which OpenAI-style base URLs already end with, so it is dropped; Azure
    /// gets its `api-version` query.
    public func url(path: String) -> String {
        var base = Substring(baseURL)
        var baseQuery: Substring?
        if let q = base.firstIndex(of: "?") {
            baseQuery = base[base.index(after: q)...]
            base = base[..<q]
        }
        while base.last == "/" { base = base.dropLast() }
        var p = Substring(path)
        if (kind == .openai || kind == .azure || kind == .groq) && p.hasPrefix("/v1/") { p = p.dropFirst(3) }
        if !p.hasPrefix("/") && !p.isEmpty { p = "/" + p }
        var queries: [Substring] = []
        if let q = p.firstIndex(of: "?") {
            queries.append(p[p.index(after: q)...])
            p = p[..<q]
        }
        if let baseQuery, !baseQuery.isEmpty { queries.append(baseQuery) }
        if kind == .azure && !queries.contains(where: { $0.hasPrefix("api-version=") || $0.contains("&api-version=") }) {
            queries.append("api-version=" + (apiVersion ?? ProviderKind.defaultAzureAPIVersion))
        }
        return String(base) + String(p) + (queries.isEmpty ? "" : "?" + queries.joined(separator: "&"))
    }

    /// Headers of every request: the key in the kind's header, JSON content type, extra headers.
    public func headers(stream: Bool) -> [(String, String)] {
        let key = secret.value
        var h: [(String, String)] = [("Content-Type", "application/json"), ("Accept", stream ? "text/event-stream" : "application/json")]
        switch kind {
        case .openai, .groq: h.append(("Authorization", "Bearer " + key))
        case .azure: h.append(("api-key", key))
        case .anthropic: h += [("x-api-key", key), ("anthropic-version", ProviderKind.anthropicVersion)]
        case .gemini: h.append(("x-goog-api-key", key))
        }
        for (name, value) in extraHeaders {
            h.removeAll { $0.0.lowercased() == name.lowercased() }
            h.append((name, value))
        }
        return h
    }

    /// The HTTP request that carries `request` to this provider.
    public func httpRequest(for request: EngineRequest) -> HTTPClientRequest {
        HTTPClientRequest(method: "POST", url: url(path: request.path), headers: headers(stream: request.stream),
                          body: request.body.serialized(), firstByteTimeout: firstByteTimeout, caFile: caFile)
    }
}
