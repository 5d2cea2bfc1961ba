/// API dialects of cloud providers.
public enum ProviderKind: String, Sendable, Codable, CaseIterable {
    /// OpenAI and every OpenAI-compatible service (Groq, Together, OpenRouter, Mistral, DeepSeek).
    case openai
    /// Azure OpenAI: OpenAI bodies at a deployment URL with `api-version` and an `api-key` header.
    case azure
    /// Anthropic Messages API.
    case anthropic
    /// Google Gemini `generateContent` / `streamGenerateContent?alt=sse`.
    case gemini
    /// Groq: the OpenAI dialect at Groq's base URL; asked only for the models priced (or listed) for it.
    case groq
    /// AWS Bedrock Runtime `Converse` / `ConverseStream` (SigV4-signed, its event-stream framing);
    /// asked only for the models priced (or listed) for it.
    case bedrock
}

/// Builds provider requests from client requests. Provider answers are turned into OpenAI
/// chat-completion form (``ProviderResponse``, ``ProviderStreamAdapter``), so the existing
/// translators carry them on to either client dialect, usage included.
public enum ProviderRequestBuilder {
    /// Anthropic requires `max_tokens`; this is used when the client sets none.
    public static let anthropicDefaultMaxTokens = 4096

    /// The request for `model` at a provider of `kind`. The path is relative to the provider's
    /// base URL (for Azure, the deployment URL; for Gemini, `.../v1beta`; for Bedrock, the regional
    /// Bedrock Runtime endpoint). Embeddings go to OpenAI-compatible providers only.
    public static func build(_ req: InferenceRequest, kind: ProviderKind, model: String) throws(APIError) -> EngineRequest {
        switch kind {
        case .openai, .azure, .groq:
            var r = EngineRequestBuilder.build(req, engine: .openai, engineModel: model)
            if kind == .azure { r.body = r.body.removing("model") }  // the deployment names the model
            return r
        case .anthropic, .gemini, .bedrock:
            guard req.operation != .embedding else {
                throw APIError(status: 400, message: "model '\(req.model)' is served by a \(kind.rawValue) provider, which has no embeddings API",
                               param: "model", code: "unsupported_operation")
            }
            let (system, turns) = conversation(req)
            switch kind {
            case .anthropic: return anthropic(req, model: model, system: system, turns: turns)
            case .gemini: return gemini(req, model: model, system: system, turns: turns)
            default: return BedrockDialect.request(req, model: model, system: system, turns: turns)  // .bedrock
            }
        }
    }

    /// System text and alternating user/assistant turns (consecutive messages of one role merged).
    static func conversation(_ req: InferenceRequest) -> (String?, [(role: String, text: String)]) {
        var messages = req.messages
        if messages.isEmpty {
            if let s = req.system, !s.isEmpty { messages.append(ChatMessage(role: "system", content: s)) }
            messages.append(ChatMessage(role: "user", content: req.prompt))
        }
        var system: [String] = []
        var turns: [(role: String, text: String)] = []
        for m in messages {
            switch m.role {
            case "system", "developer": system.append(m.content)
            default:
                let role = m.role == "assistant" ? "assistant" : "user"
                if let last = turns.last, last.role == role {
                    turns[turns.count - 1].text += "\n\n" + m.content
                } else {
                    turns.append((role, m.content))
                }
            }
        }
        if turns.first?.role == "assistant" { turns.insert(("user", "(continue)"), at: 0) }
        if turns.isEmpty { turns.append(("user", "")) }
        return (system.isEmpty ? nil : system.joined(separator: "\n\n"), turns)
    }

    static func anthropic(_ req: InferenceRequest, model: String, system: String?, turns: [(role: String, text: String)]) -> EngineRequest {
        let o = req.options
        var m: [(String, JSON)] = [("model", .string(model)), ("max_tokens", .integer(o.maxTokens ?? anthropicDefaultMaxTokens))]
        if let system { m.append(("system", .string(system))) }
        m.append(("messages", .array(turns.map { ["role": .string($0.role), "content": .string($0.text)] })))
        if let v = o.temperature { m.append(("temperature", .number(min(1, v)))) }
        if let v = o.topP { m.append(("top_p", .number(v))) }
        if let v = o.topK { m.append(("top_k", .integer(v))) }
        if !o.stop.isEmpty { m.append(("stop_sequences", .array(o.stop.map(JSON.string)))) }
        if req.stream { m.append(("stream", true)) }
        return EngineRequest(path: "/messages", body: .object(m), stream: req.stream, engineRoute: .openaiChat)
    }

    static func gemini(_ req: InferenceRequest, model: String, system: String?, turns: [(role: String, text: String)]) -> EngineRequest {
        let o = req.options
        var m: [(String, JSON)] = [("contents", .array(turns.map {
            ["role": .string($0.role == "assistant" ? "model" : "user"), "parts": [["text": .string($0.text)]]]
        }))]
        if let system { m.append(("systemInstruction", ["parts": [["text": .string(system)]]])) }
        var g: [(String, JSON)] = []
        if let v = o.maxTokens { g.append(("maxOutputTokens", .integer(v))) }
        if let v = o.temperature { g.append(("temperature", .number(v))) }
        if let v = o.topP { g.append(("topP", .number(v))) }
        if let v = o.topK { g.append(("topK", .integer(v))) }
        if let v = o.seed { g.append(("seed", .integer(v))) }
        if !o.stop.isEmpty { g.append(("stopSequences", .array(o.stop.map(JSON.string)))) }
        if o.jsonMode { g.append(("responseMimeType", "application/json")) }
        if !g.isEmpty { m.append(("generationConfig", .object(g))) }
        let path = "/models/\(model):" + (req.stream ? "streamGenerateContent?alt=sse" : "generateContent")
        return EngineRequest(path: path, body: .object(m), stream: req.stream, engineRoute: .openaiChat)
    }
}

/// Provider answers in OpenAI chat-completion form.
public enum ProviderResponse {
    /// A whole (non-streamed) provider body as an OpenAI `chat.completion`, or the provider's error
    /// message.
    public static func toOpenAI(_ body: JSON, kind: ProviderKind, model: String, id: String, created: Int64) -> Result<JSON, APIError> {
        if let err = errorMessage(body) { return .failure(APIError.engineFailed("\(kind.rawValue) provider: \(err)")) }
        switch kind {
        case .openai, .azure, .groq:
            return .success(body)
        case .anthropic:
            guard body["type"]?.stringValue == "message" || body["content"] != nil else {
                return .failure(APIError.engineFailed("anthropic provider: unexpected answer"))
            }
            let text = (body["content"]?.arrayValue ?? []).compactMap { $0["type"]?.stringValue == "text" ? $0["text"]?.stringValue : nil }.joined()
            let u = body["usage"]
            let cached = u?["cache_read_input_tokens"]?.intValue ?? 0
            let prompt = (u?["input_tokens"]?.intValue ?? 0) + cached + (u?["cache_creation_input_tokens"]?.intValue ?? 0)
            return .success(completion(id: id, created: created, model: model, text: text,
                                       finish: anthropicFinish(body["stop_reason"]?.stringValue),
                                       usage: usage(prompt: prompt, completion: u?["output_tokens"]?.intValue ?? 0, cached: cached)))
        case .gemini:
            guard let cand = body["candidates"]?[0] else {
                let why = body["promptFeedback"]?["blockReason"]?.stringValue.map { "prompt blocked: \($0)" } ?? "no candidates"
                return .failure(APIError.engineFailed("gemini provider: \(why)"))
            }
            let text = (cand["content"]?["parts"]?.arrayValue ?? []).compactMap { $0["text"]?.stringValue }.joined()
            return .success(completion(id: id, created: created, model: model, text: text,
                                       finish: geminiFinish(cand["finishReason"]?.stringValue), usage: geminiUsage(body["usageMetadata"])))
        case .bedrock:
            return BedrockDialect.completion(body, model: model, id: id, created: created)
        }
    }

    /// The error message of a provider error body (`{"error":{"message"}}`, Anthropic's
    /// `{"type":"error","error":{...}}`, Gemini's `{"error":{"code","message","status"}}`).
    public static func errorMessage(_ body: JSON) -> String? {
        guard let e = body["error"] else { return nil }
        if let s = e.stringValue { return s }
        return e["message"]?.stringValue ?? "error"
    }

    /// The message of an error body of a provider of `kind` (Bedrock's is `{"message": ...}`).
    public static func errorMessage(_ body: JSON, kind: ProviderKind) -> String? {
        kind == .bedrock ? BedrockDialect.errorMessage(body) ?? errorMessage(body) : errorMessage(body)
    }

    static func completion(id: String, created: Int64, model: String, text: String, finish: String, usage: JSON) -> JSON {
        ["id": .string(id), "object": "chat.completion", "created": .int(created), "model": .string(model),
         "choices": [["index": 0, "message": ["role": "assistant", "content": .string(text)], "finish_reason": .string(finish)]],
         "usage": usage]
    }

    static func usage(prompt: Int, completion: Int, cached: Int) -> JSON {
        var u: JSON = ["prompt_tokens": .integer(prompt), "completion_tokens": .integer(completion), "total_tokens": .integer(prompt + completion)]
        if cached > 0 { u = u.setting("prompt_tokens_details", ["cached_tokens": .integer(cached)]) }
        return u
    }

    static func geminiUsage(_ m: JSON?) -> JSON {
        usage(prompt: m?["promptTokenCount"]?.intValue ?? 0,
              completion: (m?["candidatesTokenCount"]?.intValue ?? 0) + (m?["thoughtsTokenCount"]?.intValue ?? 0),
              cached: m?["cachedContentTokenCount"]?.intValue ?? 0)
    }

    static func anthropicFinish(_ r: String?) -> String {
        switch r {
        case "max_tokens": return "length"
        case "tool_use": return "tool_calls"
        default: return "stop"
        }
    }

    static func geminiFinish(_ r: String?) -> String {
        switch r {
        case "MAX_TOKENS": return "length"
        case "SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII": return "content_filter"
        default: return "stop"
        }
    }
}

/// Turns a provider's event stream into an OpenAI chat-completion SSE stream (content chunks, a
/// finish chunk, a usage chunk, `data: [DONE]`), chunk by chunk, for ``StreamTranslator``. A
/// provider error event becomes `data: {"error":...}`; a stream that ends without the provider's
/// end marker gets no `[DONE]`, so it is reported as cut.
public struct ProviderStreamAdapter: Sendable {
    public let kind: ProviderKind
    let model: String
    let id: String
    let created: Int64
    var buffer: [UInt8] = []
    var promptTokens = 0
    var completionTokens = 0
    var cachedTokens = 0
    var sawUsage = false
    var finishReason: String?
    /// Bedrock's event-stream messages.
    var frames = EventStreamDecoder()
    /// The provider ended its stream properly.
    public private(set) var done = false

    public init(kind: ProviderKind, model: String, id: String, created: Int64) {
        self.kind = kind
        self.model = model
        self.id = id
        self.created = created
    }

    /// Consumes provider bytes; returns OpenAI SSE bytes (possibly none).
    public mutating func feed(_ bytes: [UInt8]) throws(APIError) -> [UInt8] {
        if kind == .openai || kind == .azure || kind == .groq { return bytes }
        if kind == .bedrock { return try feedBedrock(bytes) }
        buffer += bytes
        guard buffer.count <= StreamTranslator.maxLineBytes else {
            throw APIError.engineFailed("\(kind.rawValue) provider sent an event longer than \(StreamTranslator.maxLineBytes) bytes")
        }
        var out: [UInt8] = []
        while let nl = buffer.firstIndex(of: 0x0A) {
            var line = buffer[..<nl]
            if line.last == 0x0D { line = line.dropLast() }
            let data = Self.dataField(line)
            buffer.removeSubrange(...nl)
            if let data { handle(data, out: &out) }
        }
        return out
    }

    /// Call when the provider's body ended: the closing events (Gemini has no end marker: its
    /// stream is done when a candidate carried a finish reason; a Bedrock stream that passed
    /// `messageStop` but not its `metadata` is done too, without usage).
    public mutating func finish() -> [UInt8] {
        var out: [UInt8] = []
        if !buffer.isEmpty, let data = Self.dataField(buffer[...]) { handle(data, out: &out) }
        buffer.removeAll()
        if (kind == .gemini || kind == .bedrock) && finishReason != nil && !done { close(&out) }
        return out
    }

    static func dataField(_ line: ArraySlice<UInt8>) -> ArraySlice<UInt8>? {
        guard line.starts(with: Array("data:".utf8)) else { return nil }
        var d = line.dropFirst(5)
        if d.first == 0x20 { d = d.dropFirst() }
        return d
    }

    mutating func handle(_ data: ArraySlice<UInt8>, out: inout [UInt8]) {
        guard !done, let event = try? JSONParser.parse(data) else { return }
        if let err = ProviderResponse.errorMessage(event) {
            fail(err, &out)
            return
        }
        switch kind {
        case .anthropic: anthropic(event, &out)
        case .gemini: gemini(event, &out)
        case .openai, .azure, .groq, .bedrock: break
        }
    }

    /// Ends the stream with the provider's error, as an OpenAI error event.
    mutating func fail(_ message: String, _ out: inout [UInt8]) {
        emit(["error": ["message": .string("\(kind.rawValue) provider: \(message)"), "type": "server_error"]], &out)
        done = true
    }

    /// Takes the token counts of an OpenAI `usage` object.
    mutating func take(usage u: JSON) {
        promptTokens = u["prompt_tokens"]?.intValue ?? 0
        completionTokens = u["completion_tokens"]?.intValue ?? 0
        cachedTokens = u["prompt_tokens_details"]?["cached_tokens"]?.intValue ?? 0
        sawUsage = true
    }

    mutating func anthropic(_ e: JSON, _ out: inout [UInt8]) {
        switch e["type"]?.stringValue {
        case "message_start":
            let u = e["message"]?["usage"]
            cachedTokens = u?["cache_read_input_tokens"]?.intValue ?? 0
            promptTokens = (u?["input_tokens"]?.intValue ?? 0) + cachedTokens + (u?["cache_creation_input_tokens"]?.intValue ?? 0)
            completionTokens = u?["output_tokens"]?.intValue ?? 0
        case "content_block_delta":
            if let t = e["delta"]?["text"]?.stringValue, !t.isEmpty { content(t, &out) }
        case "message_delta":
            if let r = e["delta"]?["stop_reason"]?.stringValue { finishReason = ProviderResponse.anthropicFinish(r) }
            if let n = e["usage"]?["output_tokens"]?.intValue { completionTokens = n; sawUsage = true }
        case "message_stop":
            close(&out)
        default:
            break  // ping, content_block_start/stop
        }
    }

    mutating func gemini(_ e: JSON, _ out: inout [UInt8]) {
        if let m = e["usageMetadata"] { take(usage: ProviderResponse.geminiUsage(m)) }
        guard let cand = e["candidates"]?[0] else { return }
        let text = (cand["content"]?["parts"]?.arrayValue ?? []).compactMap { $0["text"]?.stringValue }.joined()
        if !text.isEmpty { content(text, &out) }
        if let r = cand["finishReason"]?.stringValue { finishReason = ProviderResponse.geminiFinish(r) }
    }

    mutating func content(_ text: String, _ out: inout [UInt8]) {
        emit(chunk([("content", .string(text))], finish: nil), &out)
    }

    mutating func close(_ out: inout [UInt8]) {
        emit(chunk([], finish: finishReason ?? "stop"), &out)
        var usage = ProviderResponse.usage(prompt: promptTokens, completion: completionTokens, cached: cachedTokens)
        if !sawUsage && completionTokens == 0 { usage = .null }
        if usage != .null {
            emit(["id": .string(id), "object": "chat.completion.chunk", "created": .int(created), "model": .string(model),
                  "choices": [], "usage": usage], &out)
        }
        out += Array("data: [DONE]\n\n".utf8)
        done = true
    }

    func chunk(_ delta: [(String, JSON)], finish: String?) -> JSON {
        ["id": .string(id), "object": "chat.completion.chunk", "created": .int(created), "model": .string(model),
         "choices": [["index": 0, "delta": .object(delta), "finish_reason": finish.map(JSON.string) ?? .null]]]
    }

    func emit(_ j: JSON, _ out: inout [UInt8]) {
        out += Array("data: ".utf8)
        j.write(into: &out)
        out += [0x0A, 0x0A]
    }
}
