import MeshCore
import NIOCore
import NIOHTTP1

/// The prompt-cache endpoints: `GET /sim/cache`, `POST /sim/cache/match`, `POST /sim/cache/clear`.
extension HTTPHandler {
    /// The inference route a `/sim/cache/match` body names in `"route"` (default: OpenAI chat).
    static func matchKind(_ route: String?) -> Kind? {
        switch route ?? "chat" {
        case "chat", "/v1/chat/completions", "v1/chat/completions": return .oaChat
        case "completion", "completions", "/v1/completions", "v1/completions": return .oaCompletion
        case "/api/chat", "api/chat", "ollama-chat": return .olChat
        case "generate", "/api/generate", "api/generate": return .olGenerate
        default: return nil
        }
    }

    /// Answers `GET /sim/cache`, `POST /sim/cache/match` and `POST /sim/cache/clear` (404 for other `/sim/cache…` paths).
    func cacheRoute(_ path: Substring, isGet: Bool, isPost: Bool, body: ByteBuffer)
        -> (HTTPResponseStatus, String, String)
    {
        let json = "application/json"
        let notAllowed: (HTTPResponseStatus, String, String) = (.methodNotAllowed, "{\"error\":\"method not allowed\"}", json)
        switch path {
        case "/sim/cache/match":
            return isPost ? match(body) : notAllowed
        case "/sim/cache/clear":
            guard isPost else { return notAllowed }
            engine.clearCache()
            return (.ok, "{\"ok\":true}", json)
        case "/sim/cache":
            return isGet ? (.ok, contextsJSON(), json) : notAllowed
        default:
            return (.notFound, "{\"error\":\"404 page not found\"}", json)
        }
    }

    /// `GET /sim/cache`: the mode, n_ctx, per slot its context length, a stable hash of it, and whether it runs; and
    /// the host-RAM cache (`ram`): its token limit, tokens held, and each entry's length and hash, oldest first.
    private func contextsJSON() -> String {
        let busy = engine.snapshot().slotBusy
        var s = "{\"cache\":\"\(engine.settings.cache.rawValue)\",\"n_ctx\":\(engine.contextLength),\"slots\":["
        for (k, ctx) in engine.cacheContexts().enumerated() {
            if k > 0 { s += "," }
            s += "{\"id\":\(k),\"n_ctx_used\":\(ctx.count),\"hash\":\"\(Self.hex16(ctx.hash))\",\"busy\":\(busy[k])}"
        }
        let ram = engine.ramCache()
        s += "],\"ram\":{\"limit_tokens\":\(ram.limit),\"tokens\":\(ram.tokens),\"entries\":["
        for (k, e) in ram.entries.enumerated() {
            if k > 0 { s += "," }
            s += "{\"tokens\":\(e.count),\"hash\":\"\(Self.hex16(e.hash))\"}"
        }
        return s + "]}}"
    }

    /// A hash as 16 lower-case hex digits.
    private static func hex16(_ h: UInt64) -> String {
        let hex = String(h, radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex
    }

    /// Renders and tokenizes `body` like the route it names and reports what each slot's context could reuse, and what
    /// the request would get on the slot it would take (`best`, a RAM-cache restore included: `restored_tokens`).
    private func match(_ body: ByteBuffer) -> (HTTPResponseStatus, String, String) {
        let ct = "application/json"
        guard let req = try? JSONParser.parse(body), req.isObject else {
            return (.badRequest, ollamaError(.badRequest, "invalid JSON body").body, ct)
        }
        guard let kind = Self.matchKind(req["route"]?.stringValue) else {
            let err = ollamaError(.badRequest, "route must be chat, completions, /api/chat or /api/generate")
            return (err.status, err.body, ct)
        }
        let settings = engine.settings
        let spec: RequestSpec
        switch parseSpec(kind: kind, json: req, engine: engine, defaultMaxTokens: settings.maxTokens,
                         mode: settings.cache) {
        case .failure(let err): return (err.status, err.body, ct)
        case .success(let s): spec = s
        }
        let m = engine.match(spec.cache)
        var s = "{\"prompt_tokens\":\(spec.promptTokens),\"slots\":["
        for (k, slot) in m.slots.enumerated() {
            if k > 0 { s += "," }
            s += "{\"id\":\(k),\"cached_tokens\":\(slot.cached),\"busy\":\(slot.busy)}"
        }
        s += "],\"best\":{\"id\":\(m.best.id),\"cached_tokens\":\(m.best.claim.cached)"
        s += ",\"restored_tokens\":\(m.best.claim.restored)}}"
        return (.ok, s, ct)
    }
}
