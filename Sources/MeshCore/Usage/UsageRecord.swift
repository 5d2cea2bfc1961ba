/// One answered request, as the usage and audit log keeps it (issue 16): who asked, what served
/// it, what it cost. Each node records the requests it answers: from its own engines, from the
/// cloud (a gateway) or from its response cache; and the requests it refuses before any node
/// served them. A request forwarded to a peer is recorded once, by the peer that answered
/// (`via` names the node the client asked).
public struct UsageRecord: Sendable, Equatable, Codable {
    /// When the request arrived (Unix milliseconds).
    public var ts: Int64
    public var requestID: String
    /// Name of the client key (never the key); "" when the node has no keys.
    public var key: String
    /// The end user a front end forwarded (`X-OpenWebUI-User-Email` and the like, or the OpenAI
    /// body's `user`); "" when none.
    public var user: String
    public var model: String
    /// The node that answered.
    public var node: String
    /// The node the client asked, when it is another one; "".
    public var via: String
    /// Engine id, or the cloud provider's name, or "cache"; "" when nothing served it.
    public var engine: String
    /// Cloud provider name; "" for the mesh's own engines.
    public var provider: String
    /// Why it went there (`X-Meshd-Route`), or the error.
    public var route: String
    /// The API path (`/v1/chat/completions`, `/api/chat`...).
    public var api: String
    public var promptTokens: Int
    public var cachedTokens: Int
    public var outputTokens: Int
    /// Milliseconds to the first token (streams; nil otherwise or unknown).
    public var ttftMs: Double?
    public var durationMs: Double
    public var status: Int
    /// Cost in micro-USD (cloud answers; 0 for the mesh and cache hits).
    public var costMicros: Int64
    /// Answered from the response cache.
    public var cacheHit: Bool

    public init(ts: Int64, requestID: String, key: String = "", user: String = "", model: String, node: String, via: String = "",
                engine: String = "", provider: String = "", route: String = "", api: String, promptTokens: Int = 0, cachedTokens: Int = 0,
                outputTokens: Int = 0, ttftMs: Double? = nil, durationMs: Double, status: Int, costMicros: Int64 = 0, cacheHit: Bool = false) {
        self.ts = ts
        self.requestID = requestID
        self.key = key
        self.user = user
        self.model = model
        self.node = node
        self.via = via
        self.engine = engine
        self.provider = provider
        self.route = route
        self.api = api
        self.promptTokens = promptTokens
        self.cachedTokens = cachedTokens
        self.outputTokens = outputTokens
        self.ttftMs = ttftMs
        self.durationMs = durationMs
        self.status = status
        self.costMicros = costMicros
        self.cacheHit = cacheHit
    }

    enum CodingKeys: String, CodingKey {
        case ts, requestID = "request_id", key, user, model, node, via, engine, provider, route, api, promptTokens = "prompt_tokens",
             cachedTokens = "cached_tokens", outputTokens = "output_tokens", ttftMs = "ttft_ms", durationMs = "duration_ms", status,
             costMicros = "cost_micros", cacheHit = "cache_hit"
    }

    /// Longest route text kept (a route reason names candidates and can grow with the mesh).
    public static let maxRouteLength = 300
    /// Longest forwarded user name kept.
    public static let maxUserLength = 200

    /// The record's value along `dimension`.
    public func value(_ dimension: UsageDimension) -> String {
        switch dimension {
        case .key: return key
        case .model: return model
        case .node: return node
        case .provider: return provider
        case .user: return user
        case .engine: return engine
        }
    }

    /// The end user a request names: the first of the front ends' forwarded-user headers, else
    /// the OpenAI body's `user`; cut to ``maxUserLength`` characters, control characters dropped.
    public static func forwardedUser(header: (String) -> String?, bodyUser: String?) -> String {
        for name in forwardedUserHeaders {
            if let v = header(name), !v.isEmpty { return clean(v, max: maxUserLength) }
        }
        return clean(bodyUser ?? "", max: maxUserLength)
    }

    /// Headers front ends put the signed-in user in, most specific first (Open WebUI's with
    /// `ENABLE_FORWARD_USER_INFO_HEADERS`, then a generic one proxies set).
    public static let forwardedUserHeaders = ["X-OpenWebUI-User-Email", "X-OpenWebUI-User-Name", "X-OpenWebUI-User-Id", "X-Forwarded-User"]

    /// `text` without control characters, at most `max` characters.
    public static func clean(_ text: String, max: Int) -> String {
        var out = String.UnicodeScalarView()
        for s in text.unicodeScalars where s.value >= 0x20 && s.value != 0x7F {
            out.append(s)
            if out.count >= max { break }
        }
        return String(out)
    }
}

/// What a usage report groups by (`meshctl usage --by`).
public enum UsageDimension: String, Sendable, CaseIterable, Codable {
    case key, model, node, provider, user, engine

    /// The name shown for records with no value (`provider` "" is the mesh's own engines).
    public func label(_ value: String) -> String {
        guard value.isEmpty else { return value }
        switch self {
        case .provider: return "(mesh)"
        case .key: return "(no key)"
        case .user: return "(none)"
        case .engine: return "(none)"
        case .model, .node: return "(unknown)"
        }
    }
}
