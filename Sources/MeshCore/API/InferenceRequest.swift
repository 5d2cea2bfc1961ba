/// What a client asks for, independent of the dialect it asked in.
public enum APIOperation: String, Sendable, Hashable {
    case chat
    case completion
    case embedding
}

/// The client routes that carry an inference request.
public enum InferenceRoute: String, Sendable, Hashable, CaseIterable {
    case openaiChat = "/v1/chat/completions"
    case openaiCompletion = "/v1/completions"
    case openaiEmbeddings = "/v1/embeddings"
    case ollamaChat = "/api/chat"
    case ollamaGenerate = "/api/generate"
    case ollamaEmbed = "/api/embed"
    /// Ollama's older single-prompt embedding route.
    case ollamaEmbeddings = "/api/embeddings"

    public var dialect: Dialect { rawValue.hasPrefix("/v1/") ? .openai : .ollama }

    public var operation: APIOperation {
        switch self {
        case .openaiChat, .ollamaChat: return .chat
        case .openaiCompletion, .ollamaGenerate: return .completion
        case .openaiEmbeddings, .ollamaEmbed, .ollamaEmbeddings: return .embedding
        }
    }
}

/// One chat message in the common form (text content; images as base64 or URLs).
public struct ChatMessage: Sendable, Equatable {
    public var role: String
    public var content: String
    /// Base64 image data (Ollama style) or `data:`/`http` URLs (OpenAI style).
    public var images: [String]

    public init(role: String, content: String, images: [String] = []) {
        self.role = role
        self.content = content
        self.images = images
    }
}

/// Sampling settings both dialects know.
public struct SamplingOptions: Sendable, Equatable {
    public var maxTokens: Int?
    public var temperature: Double?
    public var topP: Double?
    public var topK: Int?
    public var seed: Int?
    public var stop: [String] = []
    public var frequencyPenalty: Double?
    public var presencePenalty: Double?
    /// Ask for a JSON object (OpenAI `response_format: json_object`, Ollama `format: "json"`).
    public var jsonMode = false

    public init() {}
}

/// An inference request parsed from a client body, carrying the original body for same-dialect relay.
public struct InferenceRequest: Sendable {
    public var route: InferenceRoute
    public var model: String
    public var stream: Bool
    /// OpenAI `stream_options.include_usage`.
    public var includeUsage: Bool
    public var messages: [ChatMessage]
    /// Completion prompt (OpenAI `prompt`, Ollama `prompt`).
    public var prompt: String
    /// Ollama generate `system`.
    public var system: String?
    /// Ollama generate `raw` (no template applied).
    public var rawPrompt: Bool
    /// Embedding inputs.
    public var inputs: [String]
    /// OpenAI embedding inputs given as token ids (one array per input) instead of text: relayed to
    /// OpenAI-compatible engines as they are; an Ollama engine takes text only.
    public var tokenInputs: [[Int]] = []
    public var options: SamplingOptions
    /// The body as the client sent it.
    public var body: JSON
    /// Ollama `keep_alive` in seconds: how long the model stays loaded after this request (0: unload
    /// it now, negative: keep it); nil when not given (the engine's or store's default).
    public var keepAliveSeconds: Double? = nil

    /// An Ollama generate without a prompt or a chat without messages: loads the model (or, with
    /// `keep_alive: 0`, unloads it) and generates nothing; Open WebUI's "unload" is one.
    public var isLoadOnly: Bool {
        switch route {
        case .ollamaGenerate: return prompt.isEmpty && (body["images"]?.arrayValue?.isEmpty ?? true)
        case .ollamaChat: return messages.isEmpty
        default: return false
        }
    }

    public var clientDialect: Dialect { route.dialect }
    public var operation: APIOperation { route.operation }

    /// Rough prompt size in tokens (≈ 4 characters a token), for routing estimates.
    public var estimatedPromptTokens: Int {
        let chars = messages.reduce(0) { $0 + $1.content.utf8.count } + prompt.utf8.count + (system?.utf8.count ?? 0)
            + inputs.reduce(0) { $0 + $1.utf8.count }
        return max(1, chars / 4 + tokenInputs.reduce(0) { $0 + $1.count })
    }
}

/// Parses client request bodies into ``InferenceRequest``s, with field-level errors.
public enum RequestParser {
    /// Parses and validates `bytes` sent to `route`.
    public static func parse(route: InferenceRoute, body bytes: [UInt8]) throws(APIError) -> InferenceRequest {
        let json: JSON
        do {
            json = try JSONParser.parse(bytes)
        } catch {
            throw APIError.badJSON(error)
        }
        return try parse(route: route, json: json)
    }

    /// Validates an already-parsed body.
    public static func parse(route: InferenceRoute, json: JSON) throws(APIError) -> InferenceRequest {
        guard json.objectValue != nil else {
            throw APIError(status: 400, message: "request body must be a JSON object", code: "invalid_json")
        }
        guard let modelValue = json["model"] else { throw APIError.missing("model") }
        guard let model = modelValue.stringValue, !model.trimmingSpaces().isEmpty else {
            throw APIError.invalid("model", "must be a non-empty string")
        }
        var req = InferenceRequest(
            route: route, model: model, stream: route.dialect == .ollama && route != .ollamaEmbed && route != .ollamaEmbeddings,
            includeUsage: false, messages: [], prompt: "", system: nil, rawPrompt: false, inputs: [],
            options: SamplingOptions(), body: json)

        if let s = json["stream"], !s.isNull {
            guard let b = s.boolValue else { throw APIError.invalid("stream", "must be a boolean") }
            req.stream = b
        }
        if route.operation == .embedding { req.stream = false }

        switch route.dialect {
        case .openai: try parseOpenAI(&req, json)
        case .ollama: try parseOllama(&req, json)
        }
        return req
    }

    /// Ollama's `keep_alive`: a number of seconds, or a Go duration string (`"5m"`, `"1h30m"`,
    /// `"0s"`, `"-1"`, `"300"`), in seconds; nil when it is neither.
    public static func keepAlive(_ value: JSON) -> Double? {
        if let n = value.doubleValue { return n.isFinite ? n : nil }
        guard var text = value.stringValue?.trimmingSpaces(), !text.isEmpty else { return nil }
        if let n = Double(text) { return n.isFinite ? n : nil }
        var sign = 1.0
        if text.hasPrefix("-") { sign = -1; text.removeFirst() }
        let units: [(String, Double)] = [("ms", 0.001), ("h", 3600), ("m", 60), ("s", 1)]
        var total = 0.0
        var rest = Substring(text)
        while !rest.isEmpty {
            let digits = rest.prefix { $0.isNumber || $0 == "." }
            guard !digits.isEmpty, let n = Double(digits) else { return nil }
            rest = rest.dropFirst(digits.count)
            guard let (unit, scale) = units.first(where: { rest.hasPrefix($0.0) }) else { return nil }
            rest = rest.dropFirst(unit.count)
            total += n * scale
        }
        return sign * total
    }

    // MARK: OpenAI

    static func parseOpenAI(_ req: inout InferenceRequest, _ json: JSON) throws(APIError) {
        if let so = json["stream_options"], !so.isNull {
            guard so.objectValue != nil else { throw APIError.invalid("stream_options", "must be an object") }
            if let iu = so["include_usage"], !iu.isNull {
                guard let b = iu.boolValue else { throw APIError.invalid("stream_options.include_usage", "must be a boolean") }
                req.includeUsage = b
            }
        }
        var o = SamplingOptions()
        let mct = try optInt(json, "max_completion_tokens", min: 0)
        let mt = try optInt(json, "max_tokens", min: 0)
        o.maxTokens = mct ?? mt
        o.temperature = try optDouble(json, "temperature", range: 0...2)
        o.topP = try optDouble(json, "top_p", range: 0...1)
        o.seed = try optInt(json, "seed", min: nil)
        o.frequencyPenalty = try optDouble(json, "frequency_penalty", range: -2...2)
        o.presencePenalty = try optDouble(json, "presence_penalty", range: -2...2)
        o.stop = try stopList(json["stop"], field: "stop")
        if let rf = json["response_format"], let t = rf["type"]?.stringValue {
            o.jsonMode = t == "json_object" || t == "json_schema"
        }
        req.options = o

        switch req.route {
        case .openaiChat:
            guard let msgs = json["messages"] else { throw APIError.missing("messages") }
            guard let arr = msgs.arrayValue else { throw APIError.invalid("messages", "must be an array") }
            if arr.isEmpty { throw APIError.invalid("messages", "must contain at least one message") }
            for (i, m) in arr.enumerated() {
                req.messages.append(try openAIMessage(m, index: i))
            }
        case .openaiCompletion:
            guard let p = json["prompt"] else { throw APIError.missing("prompt") }
            if let s = p.stringValue {
                req.prompt = s
            } else if let a = p.arrayValue, a.count == 1, let s = a[0].stringValue {
                req.prompt = s
            } else {
                throw APIError.invalid("prompt", "must be a string (or an array of one string)")
            }
        case .openaiEmbeddings:
            guard let input = json["input"] else { throw APIError.missing("input") }
            if let tokens = try tokenArrays(input, field: "input") {
                req.tokenInputs = tokens
            } else {
                req.inputs = try stringOrStrings(input, field: "input")
            }
        default:
            break
        }
    }

    static func openAIMessage(_ m: JSON, index i: Int) throws(APIError) -> ChatMessage {
        guard m.objectValue != nil else { throw APIError.invalid("messages[\(i)]", "must be an object") }
        guard let role = m["role"]?.stringValue else { throw APIError.invalid("messages[\(i)].role", "must be a string") }
        guard ["system", "user", "assistant", "tool", "developer", "function"].contains(role) else {
            throw APIError.invalid("messages[\(i)].role", "unknown role '\(role)'")
        }
        var msg = ChatMessage(role: role == "developer" ? "system" : role, content: "")
        switch m["content"] {
        case nil, .null?:
            if m["tool_calls"] == nil && role != "assistant" {
                throw APIError.invalid("messages[\(i)].content", "is required for role '\(role)'")
            }
        case .string(let s)?:
            msg.content = s
        case .array(let parts)?:
            var text = ""
            for (k, part) in parts.enumerated() {
                switch part["type"]?.stringValue {
                case "text"?:
                    guard let t = part["text"]?.stringValue else {
                        throw APIError.invalid("messages[\(i)].content[\(k)].text", "must be a string")
                    }
                    text += text.isEmpty ? t : "\n" + t
                case "image_url"?:
                    guard let u = part["image_url"]?["url"]?.stringValue ?? part["image_url"]?.stringValue else {
                        throw APIError.invalid("messages[\(i)].content[\(k)].image_url", "must carry a url")
                    }
                    msg.images.append(u)
                default:
                    throw APIError.invalid("messages[\(i)].content[\(k)].type", "must be 'text' or 'image_url'")
                }
            }
            msg.content = text
        default:
            throw APIError.invalid("messages[\(i)].content", "must be a string or an array of parts")
        }
        return msg
    }

    // MARK: Ollama

    static func parseOllama(_ req: inout InferenceRequest, _ json: JSON) throws(APIError) {
        if let k = json["keep_alive"], !k.isNull {
            guard let seconds = keepAlive(k) else {
                throw APIError.invalid("keep_alive", "must be a number of seconds or a duration such as \"5m\", \"1h30m\", \"0\" or \"-1\"")
            }
            req.keepAliveSeconds = seconds
        }
        var o = SamplingOptions()
        if let opts = json["options"], !opts.isNull {
            guard opts.objectValue != nil else { throw APIError.invalid("options", "must be an object") }
            o.maxTokens = try optInt(opts, "num_predict", min: -2, prefix: "options.")
            if let m = o.maxTokens, m < 0 { o.maxTokens = nil }  // -1 infinite, -2 fill context
            o.temperature = try optDouble(opts, "temperature", range: 0...100, prefix: "options.")
            o.topP = try optDouble(opts, "top_p", range: 0...1, prefix: "options.")
            o.topK = try optInt(opts, "top_k", min: 0, prefix: "options.")
            o.seed = try optInt(opts, "seed", min: nil, prefix: "options.")
            o.frequencyPenalty = try optDouble(opts, "frequency_penalty", range: -100...100, prefix: "options.")
            o.presencePenalty = try optDouble(opts, "presence_penalty", range: -100...100, prefix: "options.")
            o.stop = try stopList(opts["stop"], field: "options.stop")
        }
        if let f = json["format"], !f.isNull {
            if let s = f.stringValue {
                guard s == "json" || s.isEmpty else { throw APIError.invalid("format", "must be \"json\" or a JSON schema object") }
                o.jsonMode = s == "json"
            } else if f.objectValue != nil {
                o.jsonMode = true
            } else {
                throw APIError.invalid("format", "must be \"json\" or a JSON schema object")
            }
        }
        req.options = o

        switch req.route {
        case .ollamaChat:
            // As Ollama: no `messages` (or null) is an empty chat, which loads the model.
            let msgs = json["messages"] ?? .array([])
            guard let arr = msgs == .null ? [] : msgs.arrayValue else { throw APIError.invalid("messages", "must be an array") }
            for (i, m) in arr.enumerated() {
                guard m.objectValue != nil else { throw APIError.invalid("messages[\(i)]", "must be an object") }
                guard let role = m["role"]?.stringValue else { throw APIError.invalid("messages[\(i)].role", "must be a string") }
                guard ["system", "user", "assistant", "tool"].contains(role) else {
                    throw APIError.invalid("messages[\(i)].role", "unknown role '\(role)'")
                }
                let content: String
                switch m["content"] {
                case nil, .null?: content = ""
                case .string(let s)?: content = s
                default: throw APIError.invalid("messages[\(i)].content", "must be a string")
                }
                var images: [String] = []
                if let imgs = m["images"], !imgs.isNull {
                    guard let a = imgs.arrayValue else { throw APIError.invalid("messages[\(i)].images", "must be an array of base64 strings") }
                    for (k, img) in a.enumerated() {
                        guard let s = img.stringValue else { throw APIError.invalid("messages[\(i)].images[\(k)]", "must be a base64 string") }
                        images.append(s)
                    }
                }
                req.messages.append(ChatMessage(role: role, content: content, images: images))
            }
        case .ollamaGenerate:
            switch json["prompt"] {
            case nil, .null?: req.prompt = ""
            case .string(let s)?: req.prompt = s
            default: throw APIError.invalid("prompt", "must be a string")
            }
            if let s = json["system"], !s.isNull {
                guard let t = s.stringValue else { throw APIError.invalid("system", "must be a string") }
                req.system = t
            }
            if let r = json["raw"], !r.isNull {
                guard let b = r.boolValue else { throw APIError.invalid("raw", "must be a boolean") }
                req.rawPrompt = b
            }
        case .ollamaEmbed:
            guard let input = json["input"] else { throw APIError.missing("input") }
            req.inputs = try stringOrStrings(input, field: "input")
        case .ollamaEmbeddings:
            guard let p = json["prompt"] else { throw APIError.missing("prompt") }
            guard let s = p.stringValue else { throw APIError.invalid("prompt", "must be a string") }
            req.inputs = [s]
        default:
            break
        }
    }

    // MARK: field helpers

    static func optInt(_ json: JSON, _ key: String, min: Int?, prefix: String = "") throws(APIError) -> Int? {
        guard let v = json[key], !v.isNull else { return nil }
        guard let i = v.intValue else { throw APIError.invalid(prefix + key, "must be an integer") }
        if let min, i < min { throw APIError.invalid(prefix + key, "must be at least \(min)") }
        return i
    }

    static func optDouble(_ json: JSON, _ key: String, range: ClosedRange<Double>, prefix: String = "") throws(APIError) -> Double? {
        guard let v = json[key], !v.isNull else { return nil }
        guard let d = v.doubleValue else { throw APIError.invalid(prefix + key, "must be a number") }
        guard range.contains(d) else {
            throw APIError.invalid(prefix + key, "must be between \(range.lowerBound) and \(range.upperBound)")
        }
        return d
    }

    static func stopList(_ v: JSON?, field: String) throws(APIError) -> [String] {
        guard let v, !v.isNull else { return [] }
        if let s = v.stringValue { return [s] }
        guard let a = v.arrayValue else { throw APIError.invalid(field, "must be a string or an array of strings") }
        var out: [String] = []
        for x in a {
            guard let s = x.stringValue else { throw APIError.invalid(field, "must be a string or an array of strings") }
            out.append(s)
        }
        return out
    }

    /// OpenAI's token forms of `input`: an array of token ids (one input) or an array of such
    /// arrays; nil when `v` is in neither form (text, or a mix: the string check then names the
    /// first element that is not a string).
    static func tokenArrays(_ v: JSON, field: String) throws(APIError) -> [[Int]]? {
        guard let a = v.arrayValue, !a.isEmpty else { return nil }
        func ids(_ items: [JSON], at path: String) throws(APIError) -> [Int] {
            guard !items.isEmpty else { throw APIError.invalid(path, "must be a non-empty array of token ids") }
            var out: [Int] = []
            out.reserveCapacity(items.count)
            for (i, x) in items.enumerated() {
                guard let t = x.intValue, t >= 0, t <= Int(Int32.max) else {
                    throw APIError.invalid("\(path)[\(i)]", "must be a token id (a non-negative integer)")
                }
                out.append(t)
            }
            return out
        }
        // Every element a number: one input of ids (a fraction or a negative one is named below).
        if a.allSatisfy({ $0.doubleValue != nil }) { return [try ids(a, at: field)] }
        guard a.allSatisfy({ $0.arrayValue != nil }) else { return nil }
        var out: [[Int]] = []
        for (i, x) in a.enumerated() { out.append(try ids(x.arrayValue ?? [], at: "\(field)[\(i)]")) }
        return out
    }

    static func stringOrStrings(_ v: JSON, field: String) throws(APIError) -> [String] {
        if let s = v.stringValue { return [s] }
        guard let a = v.arrayValue, !a.isEmpty else { throw APIError.invalid(field, "must be a string or a non-empty array of strings") }
        var out: [String] = []
        for (i, x) in a.enumerated() {
            guard let s = x.stringValue else { throw APIError.invalid("\(field)[\(i)]", "must be a string") }
            out.append(s)
        }
        return out
    }
}
