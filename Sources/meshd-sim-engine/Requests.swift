import MeshCore
import NIOHTTP1

enum APIStyle { case openAI, ollama }

enum Kind {
    case oaChat, oaCompletion, oaEmbedding
    case olChat, olGenerate, olEmbed, olEmbeddingsLegacy

    var style: APIStyle {
        switch self {
        case .oaChat, .oaCompletion, .oaEmbedding: return .openAI
        default: return .ollama
        }
    }

    var isEmbedding: Bool {
        switch self {
        case .oaEmbedding, .olEmbed, .olEmbeddingsLegacy: return true
        default: return false
        }
    }
}

/// A validated inference request.
struct RequestSpec {
    let kind: Kind
    /// The model name as the client sent it (echoed back, like the real servers do).
    let model: String
    let info: ModelInfo
    let stream: Bool
    let nTokens: Int
    let promptTokens: Int
    let finishReason: String
    let includeUsage: Bool
    let inputs: [String]
    let dimensions: Int
    /// Ollama: empty prompt means "load the model" (or unload with keep_alive 0); answered without generating.
    let ollamaLoadOnly: Bool
    let ollamaUnload: Bool
    /// The prompt's tokens and slot wishes for the prompt-cache model.
    let cache: CacheRequest
}

struct HTTPError: Error {
    let status: HTTPResponseStatus
    let body: String
}

func openAIError(_ status: HTTPResponseStatus, _ message: String, type: String = "invalid_request_error",
                 param: String? = nil, code: String? = nil) -> HTTPError {
    var s = "{\"error\":{\"message\":"
    s.appendJSONString(message)
    s += ",\"type\":"
    s.appendJSONString(type)
    s += ",\"param\":"
    if let param { s.appendJSONString(param) } else { s += "null" }
    s += ",\"code\":"
    if let code { s.appendJSONString(code) } else { s += "null" }
    s += "}}"
    return HTTPError(status: status, body: s)
}

func ollamaError(_ status: HTTPResponseStatus, _ message: String) -> HTTPError {
    var s = "{\"error\":"
    s.appendJSONString(message)
    s += "}"
    return HTTPError(status: status, body: s)
}

func styleError(_ style: APIStyle, _ status: HTTPResponseStatus, _ message: String) -> HTTPError {
    switch style {
    case .openAI: return openAIError(status, message)
    case .ollama: return ollamaError(status, message)
    }
}

func modelNotFound(_ style: APIStyle, _ name: String) -> HTTPError {
    switch style {
    case .openAI:
        return openAIError(.notFound, "The model `\(name)` does not exist or you do not have access to it.",
                           param: "model", code: "model_not_found")
    case .ollama:
        return ollamaError(.notFound, "model \"\(name)\" not found, try pulling it first")
    }
}

/// Words in an OpenAI/Ollama message `content` (string, or array of parts with `text`).
private func contentWords(_ c: JSON?) -> Int {
    guard let c else { return 0 }
    switch c {
    case .string(let s): return wordCount(s)
    case .array(let parts):
        var n = 0
        for p in parts {
            if let t = p["text"]?.stringValue {
                n += wordCount(t)
            } else if let s = p.stringValue {
                n += wordCount(s)
            }
        }
        return n
    default: return 0
    }
}

private func messagesWords(_ msgs: [JSON]) -> Int {
    var n = 0
    for m in msgs { n += contentWords(m["content"]) }
    return n
}

/// Words (or token ids) in an OpenAI `prompt` / embeddings `input`; also returns the texts for embeddings.
private func inputTexts(_ v: JSON) -> [(text: String, tokens: Int)]? {
    switch v {
    case .string(let s): return [(s, max(1, wordCount(s)))]
    case .array(let items):
        if items.isEmpty { return nil }
        if items.allSatisfy({ $0.doubleValue != nil }) {
            // A single tokenized input.
            let text = items.map { fmt($0.doubleValue ?? 0) }.joined(separator: " ")
            return [(text, max(1, items.count))]
        }
        var out: [(String, Int)] = []
        for it in items {
            switch it {
            case .string(let s): out.append((s, max(1, wordCount(s))))
            case .array(let toks) where toks.allSatisfy({ $0.doubleValue != nil }):
                out.append((toks.map { fmt($0.doubleValue ?? 0) }.joined(separator: " "), max(1, toks.count)))
            default: return nil
            }
        }
        return out
    default: return nil
    }
}

/// Validates an inference body. With `mode` other than legacy, generation prompts are counted with the
/// stand-in tokenizer (``SimTokens``) over their rendering (``renderChat(_:)``, ``renderPrompt(system:prompt:)``).
func parseSpec(kind: Kind, json: JSON, engine: Engine, defaultMaxTokens: Int,
               mode: CacheMode = .legacy) -> Result<RequestSpec, HTTPError> {
    let style = kind.style
    guard json.isObject else {
        return .failure(styleError(style, .badRequest, "request body must be a JSON object"))
    }
    guard let modelJSON = json["model"], !modelJSON.isNull else {
        return .failure(style == .openAI
            ? openAIError(.badRequest, "you must provide a model parameter", param: "model")
            : ollamaError(.badRequest, "model is required"))
    }
    guard let model = modelJSON.stringValue, !model.isEmpty else {
        return .failure(style == .openAI
            ? openAIError(.badRequest, "'model' must be a non-empty string", param: "model")
            : ollamaError(.badRequest, "model is required"))
    }
    guard let info = engine.resolve(model) else { return .failure(modelNotFound(style, model)) }

    var stream = style == .ollama
    if let s = json["stream"], !s.isNull {
        guard let b = s.boolValue else { return .failure(styleError(style, .badRequest, "'stream' must be a boolean")) }
        stream = b
    }

    // Output length.
    var nTokens = defaultMaxTokens
    var explicitLimit = false
    switch style {
    case .openAI:
        for key in ["max_completion_tokens", "max_tokens"] {
            guard let v = json[key], !v.isNull else { continue }
            guard let n = v.intValue, n >= 0 else {
                return .failure(openAIError(.badRequest, "'\(key)' must be a non-negative integer", param: key))
            }
            nTokens = n
            explicitLimit = true
            break
        }
    case .ollama:
        if let v = json["options"]?["num_predict"], !v.isNull {
            guard let n = v.intValue else {
                return .failure(ollamaError(.badRequest, "option \"num_predict\" must be an integer"))
            }
            if n >= 0 {
                nTokens = n
                explicitLimit = true
            }
        }
    }
    nTokens = min(nTokens, 1_000_000)

    var includeUsage = false
    if let u = json["stream_options"]?["include_usage"]?.boolValue { includeUsage = u }

    var promptTokens = 0
    var inputs: [String] = []
    var loadOnly = false
    var unload = false
    var dims = engine.embeddingDim
    var rendered: [UInt8]?
    if let d = json["dimensions"]?.intValue, d > 0, d <= 65536 { dims = d }

    switch kind {
    case .oaChat:
        guard let msgs = json["messages"]?.arrayValue else {
            return .failure(openAIError(.badRequest, "Missing required parameter: 'messages'.", param: "messages"))
        }
        promptTokens = messagesWords(msgs)
        if mode != .legacy { rendered = renderChat(msgs) }
    case .oaCompletion:
        guard let p = json["prompt"], let texts = inputTexts(p) else {
            return .failure(openAIError(.badRequest, "Missing or invalid parameter: 'prompt'.", param: "prompt"))
        }
        promptTokens = texts.reduce(0) { $0 + $1.tokens }
        if mode != .legacy { rendered = renderPrompt(system: nil, prompt: texts.map(\.text).joined()) }
    case .oaEmbedding:
        guard let p = json["input"], let texts = inputTexts(p) else {
            return .failure(openAIError(.badRequest, "Missing or invalid parameter: 'input'.", param: "input"))
        }
        inputs = texts.map(\.text)
        promptTokens = texts.reduce(0) { $0 + $1.tokens }
    case .olChat:
        let msgs = json["messages"]?.arrayValue ?? []
        if msgs.isEmpty { loadOnly = true }
        promptTokens = messagesWords(msgs)
        if mode != .legacy { rendered = renderChat(msgs) }
    case .olGenerate:
        let prompt = json["prompt"]?.stringValue ?? ""
        if prompt.isEmpty { loadOnly = true }
        let system = json["system"]?.stringValue
        promptTokens = wordCount(prompt) + wordCount(system ?? "")
        if mode != .legacy { rendered = renderPrompt(system: system, prompt: prompt) }
    case .olEmbed:
        guard let p = json["input"], let texts = inputTexts(p) else {
            return .failure(ollamaError(.badRequest, "invalid input type"))
        }
        inputs = texts.map(\.text)
        promptTokens = texts.reduce(0) { $0 + $1.tokens }
    case .olEmbeddingsLegacy:
        let p = json["prompt"]?.stringValue ?? ""
        inputs = [p]
        promptTokens = max(1, wordCount(p))
    }
    if loadOnly, let ka = json["keep_alive"] {
        if let n = ka.doubleValue, n == 0 { unload = true }
        if let s = ka.stringValue, s == "0" || s == "0s" || s == "0m" { unload = true }
    }
    var cache = CacheRequest.untracked
    if let rendered {
        cache = CacheRequest(ids: SimTokens.chunks(rendered), pin: pinnedSlot(json, slotCount: engine.slotCount),
                             reuse: json["cache_prompt"]?.boolValue ?? true, tracked: true)
        promptTokens = cache.ids.count
    } else if !kind.isEmbedding {
        cache.pin = pinnedSlot(json, slotCount: engine.slotCount)
    }
    promptTokens = max(1, promptTokens)
    if kind.isEmbedding {
        stream = false
        nTokens = 0
    }

    return .success(RequestSpec(
        kind: kind, model: model, info: info, stream: stream, nTokens: nTokens, promptTokens: promptTokens,
        finishReason: explicitLimit ? "length" : "stop", includeUsage: includeUsage, inputs: inputs,
        dimensions: dims, ollamaLoadOnly: loadOnly, ollamaUnload: unload, cache: cache))
}
