/// Token counts of one request.
public struct TokenUsage: Sendable, Equatable {
    public var promptTokens: Int
    public var completionTokens: Int
    /// Of the prompt tokens, those the engine took from its cache, when it says
    /// (`usage.prompt_tokens_details.cached_tokens`, llama-server's `timings.cache_n`).
    public var cachedTokens: Int?
    /// Seconds the engine says it spent on the prompt (llama-server `timings.prompt_ms`, Ollama
    /// `prompt_eval_duration`): its prefill speed without the time the request waited in its queue.
    public var promptSeconds: Double?
    public init(promptTokens: Int, completionTokens: Int, cachedTokens: Int? = nil, promptSeconds: Double? = nil) {
        self.promptTokens = promptTokens
        self.completionTokens = completionTokens
        self.cachedTokens = cachedTokens
        self.promptSeconds = promptSeconds
    }
    public var totalTokens: Int { promptTokens + completionTokens }

    /// Equal when the token counts are: the prompt time is a measurement that comes with them.
    public static func == (a: TokenUsage, b: TokenUsage) -> Bool {
        a.promptTokens == b.promptTokens && a.completionTokens == b.completionTokens && a.cachedTokens == b.cachedTokens
    }
}

/// Everything the translators need to know about the request being answered.
public struct ResponseContext: Sendable {
    public var clientRoute: InferenceRoute
    public var engineRoute: InferenceRoute
    /// The model name the client asked for (echoed in synthesised bodies).
    public var clientModel: String
    /// OpenAI `stream_options.include_usage` from the client.
    public var includeUsage: Bool
    /// Response id for synthesised OpenAI bodies (`chatcmpl-…`, `cmpl-…`).
    public var id: String
    /// When the request arrived, in nanoseconds since the Unix epoch (from the injected clock).
    public var startNanos: UInt64

    public init(clientRoute: InferenceRoute, engineRoute: InferenceRoute, clientModel: String, includeUsage: Bool,
                id: String, startNanos: UInt64) {
        self.clientRoute = clientRoute
        self.engineRoute = engineRoute
        self.clientModel = clientModel
        self.includeUsage = includeUsage
        self.id = id
        self.startNanos = startNanos
    }

    public init(request: InferenceRequest, engine: EngineRequest, id: String, startNanos: UInt64) {
        self.init(clientRoute: request.route, engineRoute: engine.engineRoute, clientModel: request.model,
                  includeUsage: request.includeUsage, id: id, startNanos: startNanos)
    }

    var createdSeconds: Int64 { Int64(startNanos / 1_000_000_000) }
    var sameDialect: Bool { clientRoute.dialect == engineRoute.dialect }
}

/// The parts of a finished generation both dialects carry.
struct GenerationResult {
    var text: String = ""
    var finishReason: String?
    var usage: TokenUsage?
    /// Engine-reported prompt and generation durations in nanoseconds, when it says.
    var promptNanos: UInt64?
    var evalNanos: UInt64?
    var loadNanos: UInt64?
}

/// Non-streamed translation of an engine's answer into the client's dialect.
public enum ResponseTranslator {
    /// Returns the client body and the usage found. `endNanos` is when the engine answered.
    public static func translate(engineBody: JSON, context ctx: ResponseContext, endNanos: UInt64) throws(APIError) -> (JSON, TokenUsage?) {
        if let err = engineError(engineBody) {
            throw APIError.engineFailed(err)
        }
        if ctx.clientRoute.operation == .embedding {
            return try embeddings(engineBody, ctx)
        }
        let result = extract(engineBody, route: ctx.engineRoute)
        if ctx.sameDialect && ctx.clientRoute == ctx.engineRoute {
            return (engineBody, result.usage)
        }
        return (render(result, ctx: ctx, endNanos: endNanos), result.usage)
    }

    /// For a non-streamed answer relayed unchanged (client and engine on the same route): the
    /// usage it reports (nil: none) and, when `answer` is set, its text's UTF-8 bytes (else empty),
    /// read without parsing it into a tree. Nil when it needs
    /// ``translate(engineBody:context:endNanos:)`` (an error body, an unusual one, or not an OpenAI
    /// chat/completion route).
    public static func relayed(route: InferenceRoute, body: [UInt8], answer: Bool) -> (usage: TokenUsage?, answer: [UInt8])? {
        guard route == .openaiChat || route == .openaiCompletion, let scan = OpenAIChunkScan.completion(body) else { return nil }
        var text: [UInt8] = []
        if answer, let content = scan.content {
            if content.escaped { OpenAIChunkScan.unescape(body[content.range], into: &text) } else { text += body[content.range] }
        }
        return (scan.usage, text)
    }

    /// The text of an engine's non-streamed answer (empty when it has none).
    public static func answer(_ b: JSON, route: InferenceRoute) -> String {
        switch route {
        case .openaiChat, .openaiCompletion:
            let choice = b["choices"]?[0]
            return choice?["message"]?["content"]?.stringValue ?? choice?["text"]?.stringValue ?? ""
        case .ollamaChat, .ollamaGenerate:
            return b["message"]?["content"]?.stringValue ?? b["response"]?.stringValue ?? ""
        default:
            return ""
        }
    }

    /// The message of an `{"error": …}` body in either dialect.
    public static func engineError(_ body: JSON) -> String? {
        guard let e = body["error"], !e.isNull else { return nil }
        if let s = e.stringValue { return s }
        return e["message"]?.stringValue ?? e.compactString
    }

    static func extract(_ b: JSON, route: InferenceRoute) -> GenerationResult {
        var r = GenerationResult(text: answer(b, route: route))
        switch route {
        case .openaiChat, .openaiCompletion:
            let choice = b["choices"]?[0]
            r.finishReason = choice?["finish_reason"]?.stringValue
            r.usage = openAIUsage(b["usage"], timings: b["timings"])
            if let t = b["timings"] {
                r.promptNanos = t["prompt_ms"]?.doubleValue.map(nanos(milliseconds:))
                r.evalNanos = t["predicted_ms"]?.doubleValue.map(nanos(milliseconds:))
            }
        case .ollamaChat, .ollamaGenerate:
            r.finishReason = b["done_reason"]?.stringValue
            if let p = b["prompt_eval_count"]?.intValue ?? (b["eval_count"] != nil ? 0 : nil) {
                // `prompt_eval_count` counts the whole prompt; newer Ollama says how much of it came
                // from its cache in `prompt_eval_cached_count`.
                r.usage = TokenUsage(promptTokens: p, completionTokens: b["eval_count"]?.intValue ?? 0,
                                     cachedTokens: b["prompt_eval_cached_count"]?.intValue,
                                     promptSeconds: b["prompt_eval_duration"]?.intValue.map { Double(max(0, $0)) / 1e9 })
            }
            r.promptNanos = b["prompt_eval_duration"]?.intValue.map { UInt64(max(0, $0)) }
            r.evalNanos = b["eval_duration"]?.intValue.map { UInt64(max(0, $0)) }
            r.loadNanos = b["load_duration"]?.intValue.map { UInt64(max(0, $0)) }
        default:
            break
        }
        return r
    }

    /// An OpenAI `usage` object, with the cached part from `prompt_tokens_details` or from
    /// llama-server's `timings` (whose `prompt_n` + `cache_n` stand in when there is no usage).
    static func openAIUsage(_ u: JSON?, timings t: JSON? = nil) -> TokenUsage? {
        let cached = u?["prompt_tokens_details"]?["cached_tokens"]?.intValue ?? t?["cache_n"]?.intValue
        let promptSeconds = t?["prompt_ms"]?.doubleValue.map { $0 / 1000 }
        if let u, let p = u["prompt_tokens"]?.intValue {
            return TokenUsage(promptTokens: p, completionTokens: u["completion_tokens"]?.intValue ?? 0, cachedTokens: cached,
                              promptSeconds: promptSeconds)
        }
        guard let t, let evaluated = t["prompt_n"]?.intValue, let c = t["cache_n"]?.intValue else { return nil }
        return TokenUsage(promptTokens: evaluated + c, completionTokens: t["predicted_n"]?.intValue ?? 0, cachedTokens: c,
                          promptSeconds: promptSeconds)
    }

    static func render(_ r: GenerationResult, ctx: ResponseContext, endNanos: UInt64) -> JSON {
        switch ctx.clientRoute {
        case .openaiChat, .openaiCompletion:
            let isChat = ctx.clientRoute == .openaiChat
            let choice: JSON = isChat
                ? ["index": 0, "message": ["role": "assistant", "content": .string(r.text)], "logprobs": nil,
                   "finish_reason": .string(r.finishReason ?? "stop")]
                : ["text": .string(r.text), "index": 0, "logprobs": nil, "finish_reason": .string(r.finishReason ?? "stop")]
            var members: [(String, JSON)] = [
                ("id", .string(ctx.id)), ("object", .string(isChat ? "chat.completion" : "text_completion")),
                ("created", .int(ctx.createdSeconds)), ("model", .string(ctx.clientModel)), ("choices", [choice]),
            ]
            if let u = r.usage { members.append(("usage", usageJSON(u))) }
            return .object(members)
        case .ollamaChat, .ollamaGenerate:
            var members: [(String, JSON)] = [("model", .string(ctx.clientModel)), ("created_at", .string(ISO8601.format(nanos: endNanos)))]
            if ctx.clientRoute == .ollamaChat {
                members.append(("message", ["role": "assistant", "content": .string(r.text)]))
            } else {
                members.append(("response", .string(r.text)))
            }
            members.append(("done", true))
            members += ollamaCounters(r, ctx: ctx, endNanos: endNanos)
            return .object(members)
        default:
            return .null
        }
    }

    /// Engine-reported milliseconds as nanoseconds, clamped to 0...9e18 so absurd values cannot trap.
    static func nanos(milliseconds ms: Double) -> UInt64 { UInt64(min(max(0, ms) * 1e6, 9e18)) }

    static func usageJSON(_ u: TokenUsage) -> JSON {
        var fields: [(String, JSON)] = [("prompt_tokens", .integer(u.promptTokens)), ("completion_tokens", .integer(u.completionTokens)),
                                        ("total_tokens", .integer(u.totalTokens))]
        if let c = u.cachedTokens { fields.append(("prompt_tokens_details", ["cached_tokens": .integer(c)])) }
        return .object(fields)
    }

    /// Ollama's final-line fields: reason, durations (ns) and counts.
    static func ollamaCounters(_ r: GenerationResult, ctx: ResponseContext, endNanos: UInt64) -> [(String, JSON)] {
        let total = endNanos > ctx.startNanos ? endNanos - ctx.startNanos : 0
        let evalNanos = r.evalNanos ?? 0
        let promptNanos = r.promptNanos ?? 0
        var fields: [(String, JSON)] = [
            ("done_reason", .string(r.finishReason ?? "stop")),
            ("total_duration", .int(Int64(clamping: total))),
            ("load_duration", .int(Int64(clamping: r.loadNanos ?? 0))),
            ("prompt_eval_count", .integer(r.usage?.promptTokens ?? 0)),
            ("prompt_eval_duration", .int(Int64(clamping: promptNanos))),
            ("eval_count", .integer(r.usage?.completionTokens ?? 0)),
            ("eval_duration", .int(Int64(clamping: evalNanos))),
        ]
        // What Ollama itself reports as `prompt_eval_cached_count`, when the engine said.
        if let c = r.usage?.cachedTokens { fields.insert(("prompt_eval_cached_count", .integer(c)), at: 4) }
        return fields
    }

    static func embeddings(_ b: JSON, _ ctx: ResponseContext) throws(APIError) -> (JSON, TokenUsage?) {
        // Collect vectors and prompt tokens from either engine dialect.
        var vectors: [JSON] = []
        var promptTokens = 0
        if let data = b["data"]?.arrayValue {
            vectors = data.compactMap { $0["embedding"] }
            promptTokens = b["usage"]?["prompt_tokens"]?.intValue ?? 0
        } else if let e = b["embeddings"]?.arrayValue {
            vectors = e
            promptTokens = b["prompt_eval_count"]?.intValue ?? 0
        } else if let e = b["embedding"] {
            vectors = [e]
        } else {
            throw APIError.engineFailed("engine answered an embedding request without embeddings")
        }
        let usage = TokenUsage(promptTokens: promptTokens, completionTokens: 0)
        switch ctx.clientRoute {
        case .openaiEmbeddings:
            if ctx.engineRoute == .openaiEmbeddings { return (b, usage) }
            let data: [JSON] = vectors.enumerated().map { i, v in ["object": "embedding", "index": .integer(i), "embedding": v] }
            return (["object": "list", "data": .array(data), "model": .string(ctx.clientModel),
                     "usage": ["prompt_tokens": .integer(promptTokens), "total_tokens": .integer(promptTokens)]], usage)
        case .ollamaEmbeddings:
            return (["embedding": vectors.first ?? .array([])], usage)
        default:
            if ctx.engineRoute == .ollamaEmbed { return (b, usage) }
            return (["model": .string(ctx.clientModel), "embeddings": .array(vectors), "total_duration": 0, "load_duration": 0,
                     "prompt_eval_count": .integer(promptTokens)], usage)
        }
    }
}

/// Streamed translation: feed the engine's bytes as they arrive (any chunking), get the bytes to
/// send to the client. Same-dialect streams are relayed event by event without re-encoding.
public struct StreamTranslator: Sendable {
    public let context: ResponseContext
    private var lineBuffer: [UInt8] = []
    private var sentRole = false
    private var openAIMeta: (id: String, created: Int64, model: String)?
    /// Usage reported by the engine (or counted, if it never said).
    public private(set) var usage: TokenUsage?
    /// Content pieces relayed so far (a floor for completion tokens when the engine dies mid-stream).
    public private(set) var contentChunks = 0
    /// When the first content piece arrived.
    public private(set) var firstTokenNanos: UInt64?
    /// Whether the engine ended the stream properly.
    public private(set) var finished = false
    /// Whether any byte has been produced for the client.
    public private(set) var startedOutput = false
    /// Output other than text arrived (tool calls, reasoning, a finish reason).
    private var sawOtherOutput = false
    /// Tool calls or reasoning arrived (an answer the response cache does not keep).
    public private(set) var sawToolsOrReasoning = false
    /// The stream ended with an error (the engine's, or ``fail(message:nowNanos:)``).
    public private(set) var failed = false
    /// Whether ``usage`` is what the engine reported (not a count of the pieces relayed).
    public private(set) var usageReported = false
    /// The finish reason the engine gave, once it did.
    public var finishReason: String? { result.finishReason }
    /// Whether the engine has produced some of the answer (text, tool calls, reasoning) or ended:
    /// until then a relay can hold the client's head back and retry a failed engine elsewhere.
    public var answerStarted: Bool { firstTokenNanos != nil || finished || sawOtherOutput }
    private var result = GenerationResult()
    /// Whether the answer's text is kept in ``answer`` (for the engine's cache shadow).
    public let collectsAnswer: Bool
    /// The answer's text so far, UTF-8 (`choices[0]`'s content, the message's or response's for
    /// Ollama; not tool calls or reasoning), at most ``answerCap`` bytes: its start when longer.
    /// Empty unless ``collectsAnswer``.
    public private(set) var answer: [UInt8] = []
    /// Most bytes of the answer kept.
    public static let answerCap = 256 * 1024
    /// Longest line accepted from an engine before the stream is declared broken.
    public static let maxLineBytes = 4 * 1024 * 1024

    public init(context: ResponseContext, collectsAnswer: Bool = false) {
        self.context = context
        self.collectsAnswer = collectsAnswer
    }

    /// Consumes engine bytes; returns client bytes (possibly empty). Throws when the engine sent
    /// something that cannot be a valid stream (over-long line).
    public mutating func feed(_ bytes: [UInt8], nowNanos: UInt64) throws(APIError) -> [UInt8] {
        var out: [UInt8] = []
        var start = 0
        var i = 0
        // Split on '\n' across calls; the tail stays buffered.
        while i < bytes.count {
            if bytes[i] == 0x0A {
                if lineBuffer.isEmpty {
                    handleLine(bytes[start..<i], nowNanos: nowNanos, out: &out)
                } else {
                    lineBuffer.append(contentsOf: bytes[start..<i])
                    let line = lineBuffer
                    lineBuffer.removeAll(keepingCapacity: true)
                    handleLine(line[...], nowNanos: nowNanos, out: &out)
                }
                start = i + 1
            }
            i += 1
        }
        if start < bytes.count {
            lineBuffer.append(contentsOf: bytes[start...])
            if lineBuffer.count > Self.maxLineBytes {
                throw APIError.engineFailed("engine sent a line longer than \(Self.maxLineBytes) bytes")
            }
        }
        if !out.isEmpty { startedOutput = true }
        return out
    }

    /// Call when the engine's body ended. Returns the closing bytes, or an error event when the
    /// engine stopped before finishing.
    public mutating func finish(nowNanos: UInt64) -> [UInt8] {
        var out: [UInt8] = []
        if !lineBuffer.isEmpty {
            let line = lineBuffer
            lineBuffer.removeAll()
            handleLine(line[...], nowNanos: nowNanos, out: &out)
        }
        if !finished {
            out += fail(message: "engine closed the stream before it finished", nowNanos: nowNanos)
        }
        if !out.isEmpty { startedOutput = true }
        return out
    }

    /// The bytes that tell the client the stream failed: `data: {"error":…}` for OpenAI,
    /// `{"error":"…"}` for Ollama.
    public mutating func fail(message: String, nowNanos: UInt64) -> [UInt8] {
        finished = true
        failed = true
        startedOutput = true
        return Self.errorEvent(dialect: context.clientRoute.dialect, message: message)
    }

    /// A mid-stream error event in a client dialect.
    public static func errorEvent(dialect: Dialect, message: String) -> [UInt8] {
        let err = APIError(status: 502, message: message, type: "server_error", code: "engine_error")
        var out: [UInt8] = []
        switch dialect {
        case .openai:
            out += Array("data: ".utf8)
            err.body(for: .openai).write(into: &out)
            out += [0x0A, 0x0A]
        case .ollama:
            err.body(for: .ollama).write(into: &out)
            out.append(0x0A)
        }
        return out
    }

    // MARK: lines

    private mutating func handleLine(_ raw: ArraySlice<UInt8>, nowNanos: UInt64, out: inout [UInt8]) {
        var line = raw
        if line.last == 0x0D { line = line.dropLast() }
        if line.isEmpty || finished { return }
        switch context.engineRoute.dialect {
        case .openai:
            // SSE: only `data:` lines matter; comments (":") and other fields are ignored.
            guard line.starts(with: Self.dataPrefix) else { return }
            var payload = line.dropFirst(5)
            if payload.first == 0x20 { payload = payload.dropFirst() }
            if payload.elementsEqual(Self.doneMarker) {
                handleOpenAIDone(nowNanos: nowNanos, out: &out)
                return
            }
            if relayPlainChunk(payload, nowNanos: nowNanos, out: &out) { return }
            guard let json = try? JSONParser.parse(payload) else { return }
            handleOpenAIChunk(json, payload: payload, nowNanos: nowNanos, out: &out)
        case .ollama:
            guard let json = try? JSONParser.parse(line) else { return }
            handleOllamaLine(json, raw: line, nowNanos: nowNanos, out: &out)
        }
    }

    static let dataPrefix = Array("data:".utf8)
    static let doneMarker = Array("[DONE]".utf8)

    private mutating func noteContent(_ s: String, nowNanos: UInt64) {
        guard !s.isEmpty else { return }
        countContent(nowNanos: nowNanos)
        if collectsAnswer && answer.count < Self.answerCap { keepAnswer(s.utf8) }
    }

    /// Appends answer bytes, up to ``answerCap``.
    private mutating func keepAnswer<C: Collection>(_ bytes: C) where C.Element == UInt8 {
        answer.append(contentsOf: bytes.prefix(Self.answerCap - answer.count))
    }

    private mutating func countContent(nowNanos: UInt64) {
        contentChunks += 1
        if firstTokenNanos == nil { firstTokenNanos = nowNanos }
    }

    // MARK: OpenAI engine

    /// OpenAI engine to OpenAI client, after the first event: a plain content chunk goes out as it
    /// came, read by ``OpenAIChunkScan`` instead of being parsed into a tree. False when the event
    /// needs the full path (first event, usage, finish reason, error, a CR, anything unusual).
    private mutating func relayPlainChunk(_ payload: ArraySlice<UInt8>, nowNanos: UInt64, out: inout [UInt8]) -> Bool {
        guard context.clientRoute.dialect == .openai, openAIMeta != nil,
              sentRole || context.clientRoute != .openaiChat, !payload.contains(0x0D),
              let scan = OpenAIChunkScan.scan(payload) else { return false }
        // Before the answer starts, a chunk without text may carry tool calls or reasoning: the full
        // path reads them (so `answerStarted` sees them).
        // (Collecting the answer, every chunk without text takes the full path: tool calls after
        // text must be seen.)
        if !scan.hasContent && (!answerStarted || collectsAnswer) { return false }
        if scan.hasContent {
            countContent(nowNanos: nowNanos)
            if collectsAnswer && answer.count < Self.answerCap, let content = scan.content {
                let raw = payload[(payload.startIndex + content.range.lowerBound)..<(payload.startIndex + content.range.upperBound)]
                if content.escaped {
                    OpenAIChunkScan.unescape(raw, into: &answer)
                    if answer.count > Self.answerCap { answer.removeLast(answer.count - Self.answerCap) }
                } else {
                    keepAnswer(raw)
                }
            }
        }
        out += Self.dataPrefix
        out.append(0x20)
        out += payload
        out += [0x0A, 0x0A]
        return true
    }

    private mutating func handleOpenAIChunk(_ json: JSON, payload: ArraySlice<UInt8>, nowNanos: UInt64, out: inout [UInt8]) {
        if let err = ResponseTranslator.engineError(json) {
            out += fail(message: err, nowNanos: nowNanos)
            return
        }
        if openAIMeta == nil {
            openAIMeta = (json["id"]?.stringValue ?? context.id, json["created"].flatMap { $0.intValue.map(Int64.init) } ?? context.createdSeconds,
                          json["model"]?.stringValue ?? context.clientModel)
        }
        if var u = ResponseTranslator.openAIUsage(json["usage"], timings: json["timings"]) {
            // llama-server tells the cached part in the last chunk's timings, a usage chunk may follow.
            if u.cachedTokens == nil { u.cachedTokens = usage?.cachedTokens }
            if u.promptSeconds == nil { u.promptSeconds = usage?.promptSeconds }
            usage = u
            result.usage = u
            usageReported = true
        }
        if let t = json["timings"] {
            result.promptNanos = t["prompt_ms"]?.doubleValue.map(ResponseTranslator.nanos(milliseconds:))
            result.evalNanos = t["predicted_ms"]?.doubleValue.map(ResponseTranslator.nanos(milliseconds:))
        }
        let choice = json["choices"]?[0]
        let delta = choice?["delta"]
        let content = delta?["content"]?.stringValue ?? choice?["text"]?.stringValue ?? ""
        noteContent(content, nowNanos: nowNanos)
        if let fr = choice?["finish_reason"]?.stringValue { result.finishReason = fr; sawOtherOutput = true }
        if delta?["tool_calls"] != nil || !(delta?["reasoning_content"]?.stringValue ?? "").isEmpty {
            sawOtherOutput = true
            sawToolsOrReasoning = true
        }
        let usageOnly = (json["choices"]?.arrayValue?.isEmpty ?? true) && json["usage"] != nil

        if context.clientRoute.dialect == .openai {
            if usageOnly && !context.includeUsage { return }
            if context.clientRoute == .openaiChat && !sentRole && !usageOnly {
                if delta?["role"] == nil {
                    out += sse(openAIChatChunk(delta: ["role": "assistant", "content": ""], finish: nil))
                }
                sentRole = true
            }
            out += Self.dataPrefix
            out.append(0x20)
            // A bare CR is JSON whitespace but ends the line for SSE readers: re-encode such payloads.
            if payload.contains(0x0D) { json.write(into: &out) } else { out += payload }
            out += [0x0A, 0x0A]
            return
        }
        // Ollama client.
        if !content.isEmpty {
            out += ndjson(ollamaLine(content: content, nowNanos: nowNanos))
        }
    }

    private mutating func handleOpenAIDone(nowNanos: UInt64, out: inout [UInt8]) {
        finished = true
        if usage == nil { usage = TokenUsage(promptTokens: 0, completionTokens: contentChunks) }
        result.usage = usage
        switch context.clientRoute.dialect {
        case .openai:
            out += Array("data: [DONE]\n\n".utf8)
        case .ollama:
            out += ndjson(ollamaFinal(nowNanos: nowNanos))
        }
    }

    // MARK: Ollama engine

    private mutating func handleOllamaLine(_ json: JSON, raw: ArraySlice<UInt8>, nowNanos: UInt64, out: inout [UInt8]) {
        if let err = ResponseTranslator.engineError(json) {
            out += fail(message: err, nowNanos: nowNanos)
            return
        }
        let content = json["message"]?["content"]?.stringValue ?? json["response"]?.stringValue ?? ""
        noteContent(content, nowNanos: nowNanos)
        if json["message"]?["tool_calls"] != nil || !(json["message"]?["thinking"]?.stringValue ?? json["thinking"]?.stringValue ?? "").isEmpty {
            sawOtherOutput = true
            sawToolsOrReasoning = true
        }
        let done = json["done"]?.boolValue ?? false
        if done {
            let r = ResponseTranslator.extract(json, route: context.engineRoute)
            result.finishReason = r.finishReason
            usageReported = r.usage != nil
            result.usage = r.usage ?? TokenUsage(promptTokens: 0, completionTokens: contentChunks)
            usage = result.usage
            finished = true
        }
        switch context.clientRoute.dialect {
        case .ollama:
            // A bare CR is JSON whitespace but ends the line for line readers: re-encode such lines.
            if raw.contains(0x0D) { json.write(into: &out) } else { out += raw }
            out.append(0x0A)
        case .openai:
            let isChat = context.clientRoute == .openaiChat
            if isChat && !sentRole {
                out += sse(openAIChatChunk(delta: ["role": "assistant", "content": ""], finish: nil))
                sentRole = true
            }
            if !content.isEmpty {
                out += sse(isChat ? openAIChatChunk(delta: ["content": .string(content)], finish: nil)
                                  : openAICompletionChunk(text: content, finish: nil))
            }
            if done {
                let reason = result.finishReason ?? "stop"
                out += sse(isChat ? openAIChatChunk(delta: [:], finish: reason) : openAICompletionChunk(text: "", finish: reason))
                if context.includeUsage, let u = usage {
                    out += sse(.object([
                        ("id", .string(context.id)), ("object", .string(isChat ? "chat.completion.chunk" : "text_completion")),
                        ("created", .int(context.createdSeconds)), ("model", .string(context.clientModel)),
                        ("choices", []), ("usage", ResponseTranslator.usageJSON(u)),
                    ]))
                }
                out += Array("data: [DONE]\n\n".utf8)
            }
        }
    }

    // MARK: encoders

    private func sse(_ json: JSON) -> [UInt8] {
        var out = Array("data: ".utf8)
        json.write(into: &out)
        out += [0x0A, 0x0A]
        return out
    }

    private func ndjson(_ json: JSON) -> [UInt8] {
        var out: [UInt8] = []
        json.write(into: &out)
        out.append(0x0A)
        return out
    }

    private func openAIChatChunk(delta: JSON, finish: String?) -> JSON {
        let meta = openAIMeta ?? (context.id, context.createdSeconds, context.clientModel)
        return .object([
            ("id", .string(meta.id)), ("object", "chat.completion.chunk"), ("created", .int(meta.created)),
            ("model", .string(meta.model)),
            ("choices", [["index": 0, "delta": delta, "logprobs": nil, "finish_reason": finish.map(JSON.string) ?? .null]]),
        ])
    }

    private func openAICompletionChunk(text: String, finish: String?) -> JSON {
        .object([
            ("id", .string(context.id)), ("object", "text_completion"), ("created", .int(context.createdSeconds)),
            ("model", .string(context.clientModel)),
            ("choices", [["text": .string(text), "index": 0, "logprobs": nil, "finish_reason": finish.map(JSON.string) ?? .null]]),
        ])
    }

    private func ollamaLine(content: String, nowNanos: UInt64) -> JSON {
        var members: [(String, JSON)] = [("model", .string(context.clientModel)), ("created_at", .string(ISO8601.format(nanos: nowNanos)))]
        if context.clientRoute == .ollamaChat {
            members.append(("message", ["role": "assistant", "content": .string(content)]))
        } else {
            members.append(("response", .string(content)))
        }
        members.append(("done", false))
        return .object(members)
    }

    private func ollamaFinal(nowNanos: UInt64) -> JSON {
        var members: [(String, JSON)] = [("model", .string(context.clientModel)), ("created_at", .string(ISO8601.format(nanos: nowNanos)))]
        if context.clientRoute == .ollamaChat {
            members.append(("message", ["role": "assistant", "content": ""]))
        } else {
            members.append(("response", ""))
        }
        members.append(("done", true))
        var r = result
        if r.evalNanos == nil, let first = firstTokenNanos, nowNanos > first { r.evalNanos = nowNanos - first }
        if r.promptNanos == nil, let first = firstTokenNanos, first > context.startNanos { r.promptNanos = first - context.startNanos }
        members += ResponseTranslator.ollamaCounters(r, ctx: context, endNanos: nowNanos)
        return .object(members)
    }
}

/// RFC 3339 timestamps for Ollama's `created_at`, without Foundation.
public enum ISO8601 {
    /// Formats nanoseconds since the Unix epoch as `2026-11-23T12:00:00.123456789Z`.
    public static func format(nanos: UInt64) -> String {
        let secs = Int64(nanos / 1_000_000_000)
        let frac = nanos % 1_000_000_000
        let days = secs >= 0 ? secs / 86400 : (secs - 86399) / 86400
        let rem = secs - days * 86400
        let (y, m, d) = civil(days: days)
        func pad(_ v: Int64, _ w: Int) -> String {
            let s = String(v)
            return s.count >= w ? s : String(repeating: "0", count: w - s.count) + s
        }
        return "\(pad(y, 4))-\(pad(m, 2))-\(pad(d, 2))T\(pad(rem / 3600, 2)):\(pad(rem % 3600 / 60, 2)):\(pad(rem % 60, 2)).\(pad(Int64(frac), 9))Z"
    }

    /// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar.
    public static func civil(days: Int64) -> (Int64, Int64, Int64) {
        let z = days + 719468
        let era = (z >= 0 ? z : z - 146096) / 146097
        let doe = z - era * 146097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365
        let y = yoe + era * 400
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let d = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        return (m <= 2 ? y + 1 : y, m, d)
    }
}
