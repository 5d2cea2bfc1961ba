/// An HTTP request to send to an engine, built from a client's ``InferenceRequest``.
public struct EngineRequest: Sendable, Equatable {
    /// Path below the engine's base URL.
    public var path: String
    public var body: JSON
    /// Whether the engine will stream its answer.
    public var stream: Bool
    /// The operation the engine performs; may differ from the client's (Ollama generate → OpenAI chat).
    public var engineRoute: InferenceRoute
    /// `body` is the client's body as it came (same dialect and model name, nothing to set): the
    /// client's bytes can be sent as they are instead of serialising `body` again.
    public var isClientBody: Bool

    public init(path: String, body: JSON, stream: Bool, engineRoute: InferenceRoute, isClientBody: Bool = false) {
        self.path = path
        self.body = body
        self.stream = stream
        self.engineRoute = engineRoute
        self.isClientBody = isClientBody
    }
}

/// Translates client requests into the dialect of the engine that serves them.
///
/// Same dialect: the client's body goes through unchanged except for the model name (and, for
/// OpenAI streams, `stream_options.include_usage`, so meshd can count tokens; the usage chunk is
/// dropped again on the way back when the client did not ask for it).
public enum EngineRequestBuilder {
    public static func build(_ req: InferenceRequest, engine: Dialect, engineModel: String) -> EngineRequest {
        switch engine {
        case .openai: return openAI(req, model: engineModel)
        case .ollama: return ollama(req, model: engineModel)
        }
    }

    // MARK: to an OpenAI-compatible engine

    static func openAI(_ req: InferenceRequest, model: String) -> EngineRequest {
        if req.clientDialect == .openai {
            if !req.stream && req.model == model && Self.readsAlike(req.body) {
                return EngineRequest(path: req.route.rawValue, body: req.body, stream: false, engineRoute: req.route, isClientBody: true)
            }
            var body = req.body.setting("model", .string(model))
            if req.stream {
                let so = (body["stream_options"]?.objectValue.map(JSON.object) ?? JSON.object([]))
                    .setting("include_usage", true)
                body = body.setting("stream_options", so)
            }
            return EngineRequest(path: req.route.rawValue, body: body, stream: req.stream, engineRoute: req.route)
        }
        switch req.route {
        case .ollamaChat:
            return chatToOpenAI(model: model, messages: req.messages, req: req)
        case .ollamaGenerate:
            if req.rawPrompt {
                var members: [(String, JSON)] = [("model", .string(model)), ("prompt", .string(req.prompt))]
                members += samplingOpenAI(req.options)
                members.append(("stream", .bool(req.stream)))
                if req.stream { members.append(("stream_options", ["include_usage": true])) }
                return EngineRequest(path: InferenceRoute.openaiCompletion.rawValue, body: .object(members), stream: req.stream,
                                     engineRoute: .openaiCompletion)
            }
            // Ollama applies the model's chat template to a generate prompt; an OpenAI server does that
            // for chat requests, so a templated generate becomes a chat.
            var messages: [ChatMessage] = []
            if let s = req.system, !s.isEmpty { messages.append(ChatMessage(role: "system", content: s)) }
            messages.append(ChatMessage(role: "user", content: req.prompt, images: req.body["images"]?.arrayValue?.compactMap(\.stringValue) ?? []))
            return chatToOpenAI(model: model, messages: messages, req: req)
        case .ollamaEmbed, .ollamaEmbeddings:
            let input: JSON = req.inputs.count == 1 && req.route == .ollamaEmbeddings
                ? .string(req.inputs[0]) : .array(req.inputs.map(JSON.string))
            return EngineRequest(path: InferenceRoute.openaiEmbeddings.rawValue, body: ["model": .string(model), "input": input],
                                 stream: false, engineRoute: .openaiEmbeddings)
        default:
            return EngineRequest(path: req.route.rawValue, body: req.body.setting("model", .string(model)), stream: req.stream, engineRoute: req.route)
        }
    }

    /// Whether an engine reads the routing keys of `body` as meshd did: each at most once (with a
    /// duplicate, meshd and most parsers take the last, but a relayed body must not depend on it).
    static func readsAlike(_ body: JSON) -> Bool {
        guard let members = body.objectValue else { return false }
        var models = 0, streams = 0
        for (k, _) in members {
            if k == "model" { models += 1 } else if k == "stream" { streams += 1 }
        }
        return models <= 1 && streams <= 1
    }

    static func chatToOpenAI(model: String, messages: [ChatMessage], req: InferenceRequest) -> EngineRequest {
        let msgs: [JSON] = messages.map { m in
            if m.images.isEmpty {
                return ["role": .string(m.role), "content": .string(m.content)]
            }
            var parts: [JSON] = [["type": "text", "text": .string(m.content)]]
            for img in m.images {
                let url = img.hasPrefix("data:") || img.hasPrefix("http") ? img : "data:image/png;base64," + img
                parts.append(["type": "image_url", "image_url": ["url": .string(url)]])
            }
            return ["role": .string(m.role), "content": .array(parts)]
        }
        var members: [(String, JSON)] = [("model", .string(model)), ("messages", .array(msgs))]
        members += samplingOpenAI(req.options)
        members.append(("stream", .bool(req.stream)))
        if req.stream { members.append(("stream_options", ["include_usage": true])) }
        return EngineRequest(path: InferenceRoute.openaiChat.rawValue, body: .object(members), stream: req.stream, engineRoute: .openaiChat)
    }

    static func samplingOpenAI(_ o: SamplingOptions) -> [(String, JSON)] {
        var m: [(String, JSON)] = []
        if let v = o.maxTokens { m.append(("max_tokens", .integer(v))) }
        if let v = o.temperature { m.append(("temperature", .number(v))) }
        if let v = o.topP { m.append(("top_p", .number(v))) }
        if let v = o.topK { m.append(("top_k", .integer(v))) }  // llama-server and vLLM accept top_k
        if let v = o.seed { m.append(("seed", .integer(v))) }
        if let v = o.frequencyPenalty { m.append(("frequency_penalty", .number(v))) }
        if let v = o.presencePenalty { m.append(("presence_penalty", .number(v))) }
        if !o.stop.isEmpty { m.append(("stop", .array(o.stop.map(JSON.string)))) }
        if o.jsonMode { m.append(("response_format", ["type": "json_object"])) }
        return m
    }

    // MARK: to an Ollama engine

    static func ollama(_ req: InferenceRequest, model: String) -> EngineRequest {
        if req.clientDialect == .ollama {
            // Ollama streams unless told otherwise; make the choice explicit so both sides agree.
            if req.model == model && (req.operation == .embedding || req.body["stream"]?.boolValue == req.stream) && Self.readsAlike(req.body) {
                return EngineRequest(path: req.route.rawValue, body: req.body, stream: req.stream, engineRoute: req.route, isClientBody: true)
            }
            var body = req.body.setting("model", .string(model))
            if req.operation != .embedding { body = body.setting("stream", .bool(req.stream)) }
            return EngineRequest(path: req.route.rawValue, body: body, stream: req.stream, engineRoute: req.route)
        }
        switch req.route {
        case .openaiChat:
            let msgs: [JSON] = req.messages.map { m in
                var members: [(String, JSON)] = [("role", .string(m.role)), ("content", .string(m.content))]
                if !m.images.isEmpty {
                    members.append(("images", .array(m.images.map { .string(stripDataURL($0)) })))
                }
                return .object(members)
            }
            var members: [(String, JSON)] = [("model", .string(model)), ("messages", .array(msgs)), ("stream", .bool(req.stream))]
            if req.options.jsonMode { members.append(("format", "json")) }
            let opts = samplingOllama(req.options)
            if !opts.isEmpty { members.append(("options", .object(opts))) }
            return EngineRequest(path: InferenceRoute.ollamaChat.rawValue, body: .object(members), stream: req.stream, engineRoute: .ollamaChat)
        case .openaiCompletion:
            // OpenAI completions take the prompt as written: no template.
            var members: [(String, JSON)] = [("model", .string(model)), ("prompt", .string(req.prompt)), ("raw", true), ("stream", .bool(req.stream))]
            if req.options.jsonMode { members.append(("format", "json")) }
            let opts = samplingOllama(req.options)
            if !opts.isEmpty { members.append(("options", .object(opts))) }
            return EngineRequest(path: InferenceRoute.ollamaGenerate.rawValue, body: .object(members), stream: req.stream, engineRoute: .ollamaGenerate)
        case .openaiEmbeddings:
            return EngineRequest(path: InferenceRoute.ollamaEmbed.rawValue,
                                 body: ["model": .string(model), "input": .array(req.inputs.map(JSON.string))],
                                 stream: false, engineRoute: .ollamaEmbed)
        default:
            return EngineRequest(path: req.route.rawValue, body: req.body.setting("model", .string(model)), stream: req.stream, engineRoute: req.route)
        }
    }

    static func samplingOllama(_ o: SamplingOptions) -> [(String, JSON)] {
        var m: [(String, JSON)] = []
        if let v = o.maxTokens { m.append(("num_predict", .integer(v))) }
        if let v = o.temperature { m.append(("temperature", .number(v))) }
        if let v = o.topP { m.append(("top_p", .number(v))) }
        if let v = o.topK { m.append(("top_k", .integer(v))) }
        if let v = o.seed { m.append(("seed", .integer(v))) }
        if let v = o.frequencyPenalty { m.append(("frequency_penalty", .number(v))) }
        if let v = o.presencePenalty { m.append(("presence_penalty", .number(v))) }
        if !o.stop.isEmpty { m.append(("stop", .array(o.stop.map(JSON.string)))) }
        return m
    }

    static func stripDataURL(_ s: String) -> String {
        guard s.hasPrefix("data:"), let comma = s.firstIndex(of: ",") else { return s }
        return String(s[s.index(after: comma)...])
    }
}
