import MeshCore
import MeshHTTPClient

/// What a Bedrock provider signs its requests with besides its key (the secret access key).
public struct AWSAccount: Sendable, Equatable {
    /// The region (`us-east-1`): the endpoint's and the signature's.
    public var region: String
    public var accessKeyID: String
    /// The session token of temporary credentials.
    public var sessionToken: ProviderSecret?

    public init(region: String, accessKeyID: String, sessionToken: ProviderSecret? = nil) {
        self.region = region
        self.accessKeyID = accessKeyID
        self.sessionToken = sessionToken
    }
}

/// One configured cloud provider: where it is, which dialect it speaks, and its key.
public struct ProviderSettings: Sendable, Equatable {
    /// Name used in logs, budgets, health and route explanations.
    public var name: String
    public var kind: ProviderKind
    /// API root: `https://api.openai.com/v1`, `https://api.anthropic.com/v1`,
    /// `https://generativelanguage.googleapis.com/v1beta`, for Azure the deployment URL
    /// (`https://RESOURCE.openai.azure.com/openai/deployments/DEPLOYMENT`), for Bedrock
    /// `https://bedrock-runtime.REGION.amazonaws.com`.
    public var baseURL: String
    /// The API key; for Bedrock, the secret access key.
    public var secret: ProviderSecret
    /// Bedrock: region, access key ID and session token (requests are SigV4-signed).
    public var aws: AWSAccount?
    /// PEM bundle of CA certificates trusted for this provider only (a lab server with its own CA).
    public var caFile: String?
    /// Azure `api-version` (``ProviderKind/defaultAzureAPIVersion`` when nil).
    public var apiVersion: String?
    /// Headers sent with every request; one named like a default header replaces it.
    public var extraHeaders: [(String, String)]
    /// Overrides the HTTP client's wait for the response head.
    public var firstByteTimeout: Duration?

    /// Creates settings; `baseURL` nil takes the kind's public API (required for Azure; Bedrock's
    /// is in `aws`'s region).
    public init(name: String, kind: ProviderKind, baseURL: String? = nil, secret: ProviderSecret, aws: AWSAccount? = nil, caFile: String? = nil,
                apiVersion: String? = nil, extraHeaders: [(String, String)] = [], firstByteTimeout: Duration? = nil) {
        self.name = name
        self.kind = kind
        self.baseURL = baseURL ?? (kind == .bedrock ? aws.map { BedrockDialect.baseURL(region: $0.region) } : kind.defaultBaseURL) ?? ""
        self.secret = secret
        self.aws = aws
        self.caFile = caFile
        self.apiVersion = apiVersion
        self.extraHeaders = extraHeaders
        self.firstByteTimeout = firstByteTimeout
    }

    public static func == (a: ProviderSettings, b: ProviderSettings) -> Bool {
        a.name == b.name && a.kind == b.kind && a.baseURL == b.baseURL && a.secret == b.secret && a.aws == b.aws && a.caFile == b.caFile
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
    /// (Bedrock's key signs the request instead: see ``httpRequest(for:nowNanos:)``.)
    public func headers(stream: Bool) -> [(String, String)] {
        let key = secret.value
        let streamType = kind == .bedrock ? BedrockDialect.streamContentType : "text/event-stream"
        var h: [(String, String)] = [("Content-Type", "application/json"), ("Accept", stream ? streamType : "application/json")]
        switch kind {
        case .openai, .groq: h.append(("Authorization", "Bearer " + key))
        case .azure: h.append(("api-key", key))
        case .anthropic: h += [("x-api-key", key), ("anthropic-version", ProviderKind.anthropicVersion)]
        case .gemini: h.append(("x-goog-api-key", key))
        case .bedrock: break
        }
        for (name, value) in extraHeaders {
            h.removeAll { $0.0.lowercased() == name.lowercased() }
            h.append((name, value))
        }
        return h
    }

    /// The SigV4 signer of a Bedrock provider (nil for the other kinds, or without an account).
    public var signer: SigV4Signer? {
        guard kind == .bedrock, let aws else { return nil }
        return SigV4Signer(accessKeyID: aws.accessKeyID, secretAccessKey: secret, sessionToken: aws.sessionToken, region: aws.region,
                           service: BedrockDialect.signingService)
    }

    /// The HTTP request that carries `request` to this provider; a Bedrock request is signed for
    /// the time `nowNanos` (AWS refuses a signature more than 5 minutes off its clock).
    public func httpRequest(for request: EngineRequest, nowNanos: UInt64) -> HTTPClientRequest {
        let url = url(path: request.path)
        let body = request.body.serialized()
        var headers = headers(stream: request.stream)
        if let signer { headers = signer.sign(method: "POST", url: url, headers: headers, body: body, nowNanos: nowNanos) }
        return HTTPClientRequest(method: "POST", url: url, headers: headers, body: body, firstByteTimeout: firstByteTimeout, caFile: caFile)
    }
}
