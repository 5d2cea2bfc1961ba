/// The response cache's decisions (issue 16, `cache:`): which requests may be answered from it,
/// their key, what is kept of an answer, and how a kept answer is replayed in the asking dialect.
/// Pure; the store (``ResponseCacheStore``) is a value type driven by an injected time.
public enum ResponseCachePolicy {
    /// Body members that are part of the key through the parsed request (or do not change the
    /// answer: streaming, keep-alive, the end user's name).
    static let parsedOrIgnored: Set<String> = [
        "model", "messages", "prompt", "system", "raw", "stream", "stream_options", "max_tokens", "max_completion_tokens",
        "temperature", "top_p", "top_k", "seed", "stop", "frequency_penalty", "presence_penalty", "keep_alive", "user", "options",
    ]
    /// Ollama `options` read into ``SamplingOptions``.
    static let parsedOptions: Set<String> = ["num_predict", "temperature", "top_p", "top_k", "seed", "stop", "frequency_penalty",
                                             "presence_penalty"]

    /// The key of `req` for a model known as `identity`, or nil when the request may not be cached:
    /// not a chat or completion, not deterministic (neither temperature 0 nor a seed), several
    /// choices or log-probabilities asked for, or a load/unload.
    ///
    /// The key is the whole request in a form both dialects share (so an OpenAI chat and an Ollama
    /// chat asking the same thing meet), plus, as they are, every member it does not parse
    /// (tools, formats, templates...).
    public static func key(_ req: InferenceRequest, identity: String) -> String? {
        let op = req.operation
        guard op == .chat || op == .completion, !req.isLoadOnly else { return nil }
        let o = req.options
        guard o.temperature == 0 || o.seed != nil else { return nil }
        if let n = req.body["n"], n.intValue != 1 { return nil }
        if req.body["logprobs"]?.boolValue == true || req.body["top_logprobs"] != nil { return nil }
        // Null or empty members are left out: clients send `"tools": []` where others send nothing.
        func absent(_ v: JSON) -> Bool { v.isNull || v.arrayValue?.isEmpty == true || v.objectValue?.isEmpty == true }
        var extra: [(String, JSON)] = []
        for (k, v) in req.body.objectValue ?? [] where !parsedOrIgnored.contains(k) && !absent(v) { extra.append((k, v)) }
        if let opts = req.body["options"]?.objectValue {
            for (k, v) in opts where !parsedOptions.contains(k) && !absent(v) { extra.append(("options." + k, v)) }
        }
        extra.sort { $0.0 < $1.0 }
        func num(_ d: Double?) -> JSON { d.map(JSON.number) ?? .null }
        func int(_ i: Int?) -> JSON { i.map(JSON.integer) ?? .null }
        let messages: [JSON] = req.messages.map { m in
            .array([.string(m.role), .string(m.content), .array(m.images.map(JSON.string))])
        }
        let canonical: JSON = .array([
            "meshd-response-cache-v1", .string(req.model), .string(identity), .string(op == .chat ? "chat" : "completion"),
            .array(messages), .string(req.prompt), req.system.map(JSON.string) ?? .null, .bool(req.rawPrompt),
            .array([int(o.maxTokens), num(o.temperature), num(o.topP), int(o.topK), int(o.seed), .array(o.stop.map(JSON.string)),
                    num(o.frequencyPenalty), num(o.presencePenalty), .bool(o.jsonMode)]),
            .object(extra),
        ])
        return String(decoding: canonical.serialized(), as: UTF8.self)
    }

    /// The model's identity in the key: its name and what the engines holding it say of it (size,
    /// quantization), so a changed model file does not answer from the old one's cache.
    public static func identity(model: String, holders: [ModelInfo]) -> String {
        let parts = Set(holders.map { "\($0.sizeBytes.map(String.init) ?? "?"):\($0.quantization ?? "?"):\($0.family ?? "?")" })
        return parts.isEmpty ? "cloud" : parts.sorted().joined(separator: ",")
    }

    /// What is kept of a non-streamed answer in the client's dialect (`route`): nil when it may not
    /// be kept (an error, tool calls, reasoning, several choices, no usage).
    public static func capture(body: JSON, route: InferenceRoute) -> CachedAnswer? {
        guard ResponseTranslator.engineError(body) == nil else { return nil }
        switch route {
        case .openaiChat, .openaiCompletion:
            guard let choices = body["choices"]?.arrayValue, choices.count == 1 else { return nil }
            let m = choices[0]["message"]
            if let t = m?["tool_calls"], !t.isNull { return nil }
            if !(m?["reasoning_content"]?.stringValue ?? "").isEmpty { return nil }
        case .ollamaChat, .ollamaGenerate:
            if let t = body["message"]?["tool_calls"], !t.isNull { return nil }
            if !(body["message"]?["thinking"]?.stringValue ?? body["thinking"]?.stringValue ?? "").isEmpty { return nil }
        default:
            return nil
        }
        let r = ResponseTranslator.extract(body, route: route)
        guard let usage = r.usage else { return nil }
        return CachedAnswer(text: r.text, finishReason: r.finishReason ?? "stop", promptTokens: usage.promptTokens,
                            completionTokens: usage.completionTokens)
    }

    /// What is kept of a streamed answer, read by a translator fed the client's bytes (client and
    /// engine route both the client's): nil unless it ended properly with text only.
    public static func capture(stream t: StreamTranslator) -> CachedAnswer? {
        guard t.finished, !t.failed, !t.sawToolsOrReasoning, t.answer.count < StreamTranslator.answerCap, let usage = t.usage,
              t.collectsAnswer else { return nil }
        return CachedAnswer(text: String(decoding: t.answer, as: UTF8.self), finishReason: t.finishReason ?? "stop",
                            promptTokens: usage.promptTokens, completionTokens: usage.completionTokens, usageKnown: t.usageReported)
    }

    /// A kept answer as a non-streamed body for `context.clientRoute`.
    public static func body(_ a: CachedAnswer, context: ResponseContext, nowNanos: UInt64) -> JSON {
        ResponseTranslator.render(a.result, ctx: context, endNanos: nowNanos)
    }

    /// A kept answer as the stream the client's dialect expects: the answer as an Ollama engine
    /// would stream it, translated by a ``StreamTranslator`` like any engine's stream.
    public static func stream(_ a: CachedAnswer, context: ResponseContext, nowNanos: UInt64) -> [UInt8] {
        var ctx = context
        ctx.engineRoute = ctx.clientRoute == .ollamaGenerate || ctx.clientRoute == .openaiCompletion ? .ollamaGenerate : .ollamaChat
        let created = JSON.string(ISO8601.format(nanos: nowNanos))
        let model = JSON.string(context.clientModel)
        func piece(_ text: String) -> [(String, JSON)] {
            ctx.engineRoute == .ollamaChat ? [("message", ["role": "assistant", "content": .string(text)])] : [("response", .string(text))]
        }
        var lines: [UInt8] = []
        if !a.text.isEmpty {
            JSON.object([("model", model), ("created_at", created)] + piece(a.text) + [("done", false)]).write(into: &lines)
            lines.append(0x0A)
        }
        let final = ResponseTranslator.ollamaCounters(a.result, ctx: ctx, endNanos: nowNanos)
        JSON.object([("model", model), ("created_at", created)] + piece("") + [("done", true)] + final).write(into: &lines)
        lines.append(0x0A)
        var t = StreamTranslator(context: ctx)
        var out = (try? t.feed(lines, nowNanos: nowNanos)) ?? []
        out += t.finish(nowNanos: nowNanos)
        return out
    }
}

/// An answer kept by the response cache: what both dialects need to replay it.
public struct CachedAnswer: Sendable, Equatable {
    public var text: String
    public var finishReason: String
    public var promptTokens: Int
    public var completionTokens: Int
    /// Whether the counts are the engine's (an OpenAI stream without `include_usage` tells none:
    /// then the answer replays only to requests that show no usage).
    public var usageKnown: Bool

    public init(text: String, finishReason: String, promptTokens: Int, completionTokens: Int, usageKnown: Bool = true) {
        self.text = text
        self.finishReason = finishReason
        self.promptTokens = promptTokens
        self.completionTokens = completionTokens
        self.usageKnown = usageKnown
    }

    /// Whether this answer can answer `req` (which may show usage: every non-streamed answer and
    /// Ollama stream does, an OpenAI stream with `include_usage`).
    public func canAnswer(_ req: InferenceRequest) -> Bool {
        usageKnown || (req.stream && req.clientDialect == .openai && !req.includeUsage)
    }

    public var usage: TokenUsage { TokenUsage(promptTokens: promptTokens, completionTokens: completionTokens) }
    var result: GenerationResult { GenerationResult(text: text, finishReason: finishReason, usage: usage) }
}

/// The kept answers: at most `maxBytes` (keys and texts), each for `ttlNanos`, the least recently
/// used out first. A value type; the caller serialises access and passes the time.
public struct ResponseCacheStore: Sendable {
    public let maxBytes: Int
    public let maxEntryBytes: Int
    public let ttlNanos: UInt64

    struct Entry {
        var answer: CachedAnswer
        var expires: UInt64
        var bytes: Int
        var prev: String?
        var next: String?
    }

    private var entries: [String: Entry] = [:]
    /// Most recently used first.
    private var head: String?
    private var tail: String?
    public private(set) var bytes = 0
    public private(set) var hits = 0
    public private(set) var misses = 0
    public private(set) var stores = 0
    public private(set) var evictions = 0

    public init(maxBytes: Int, maxEntryBytes: Int, ttlSeconds: Int) {
        self.maxBytes = maxBytes
        self.maxEntryBytes = maxEntryBytes
        ttlNanos = UInt64(max(1, ttlSeconds)) * 1_000_000_000
    }

    public var count: Int { entries.count }

    static func size(_ key: String, _ a: CachedAnswer) -> Int { key.utf8.count + a.text.utf8.count + a.finishReason.utf8.count + 96 }

    /// The answer kept for `key`, if fresh (and it becomes the most recently used).
    public mutating func get(_ key: String, nowNanos: UInt64) -> CachedAnswer? {
        guard let e = entries[key] else {
            misses += 1
            return nil
        }
        guard nowNanos < e.expires else {
            remove(key)
            misses += 1
            return nil
        }
        unlink(key)
        pushFront(key)
        hits += 1
        return e.answer
    }

    /// Keeps `answer` for `key`; false when it is larger than an entry may be (or than the cache).
    @discardableResult
    public mutating func put(_ key: String, _ answer: CachedAnswer, nowNanos: UInt64) -> Bool {
        let size = Self.size(key, answer)
        guard size <= maxEntryBytes, size <= maxBytes else { return false }
        // An answer without counts never replaces a fresh one with them.
        if let old = entries[key], old.answer.usageKnown, !answer.usageKnown, nowNanos < old.expires { return false }
        if entries[key] != nil { remove(key) }
        while bytes + size > maxBytes, let last = tail {
            remove(last)
            evictions += 1
        }
        entries[key] = Entry(answer: answer, expires: nowNanos + ttlNanos, bytes: size)
        pushFront(key)
        bytes += size
        stores += 1
        return true
    }

    private mutating func remove(_ key: String) {
        guard let e = entries[key] else { return }
        unlink(key)
        bytes -= e.bytes
        entries[key] = nil
    }

    private mutating func unlink(_ key: String) {
        guard let e = entries[key] else { return }
        if let p = e.prev { entries[p]?.next = e.next } else { head = e.next }
        if let n = e.next { entries[n]?.prev = e.prev } else { tail = e.prev }
        entries[key]?.prev = nil
        entries[key]?.next = nil
    }

    private mutating func pushFront(_ key: String) {
        entries[key]?.next = head
        entries[key]?.prev = nil
        if let h = head { entries[h]?.prev = key }
        head = key
        if tail == nil { tail = key }
    }

    /// Keys from the most to the least recently used (tests).
    public var order: [String] {
        var out: [String] = []
        var k = head
        while let key = k {
            out.append(key)
            k = entries[key]?.next
        }
        return out
    }
}
