/// AWS Bedrock Runtime's `Converse` API: request bodies, whole answers, and `ConverseStream`
/// events (event-stream messages) in OpenAI chat-completion form.
public enum BedrockDialect {
    /// The Bedrock Runtime endpoint of `region` (`https://bedrock-runtime.us-east-1.amazonaws.com`).
    public static func baseURL(region: String) -> String { "https://bedrock-runtime.\(region).amazonaws.com" }

    /// The SigV4 service name of Bedrock Runtime.
    public static let signingService = "bedrock"

    /// Media type of a `ConverseStream` answer.
    public static let streamContentType = "application/vnd.amazon.eventstream"

    /// `/model/{modelId}/converse` (or `converse-stream`), the model ID percent-encoded: IDs carry
    /// `:` (`amazon.nova-lite-v1:0`), inference-profile ARNs also `/`.
    public static func path(model: String, stream: Bool) -> String {
        "/model/\(URIEncoding.encode(model))/" + (stream ? "converse-stream" : "converse")
    }

    /// The `Converse` request for a client request: the conversation as text content blocks, the
    /// system text, and `inferenceConfig`. Bedrock's common parameters have no top-k, seed or JSON
    /// mode; those client options are not sent.
    static func request(_ req: InferenceRequest, model: String, system: String?, turns: [(role: String, text: String)]) -> EngineRequest {
        let o = req.options
        var m: [(String, JSON)] = [("messages", .array(turns.map { ["role": .string($0.role), "content": [["text": .string($0.text)]]] }))]
        if let system { m.append(("system", [["text": .string(system)]])) }
        var c: [(String, JSON)] = []
        if let v = o.maxTokens { c.append(("maxTokens", .integer(v))) }
        if let v = o.temperature { c.append(("temperature", .number(min(1, v)))) }  // Bedrock's range is 0...1
        if let v = o.topP { c.append(("topP", .number(v))) }
        if !o.stop.isEmpty { c.append(("stopSequences", .array(o.stop.map(JSON.string)))) }
        if !c.isEmpty { m.append(("inferenceConfig", .object(c))) }
        return EngineRequest(path: path(model: model, stream: req.stream), body: .object(m), stream: req.stream, engineRoute: .openaiChat)
    }

    /// A whole `Converse` answer as an OpenAI `chat.completion`.
    static func completion(_ body: JSON, model: String, id: String, created: Int64) -> Result<JSON, APIError> {
        guard let message = body["output"]?["message"] else {
            return .failure(APIError.engineFailed("bedrock provider: unexpected answer (no output.message)"))
        }
        let text = (message["content"]?.arrayValue ?? []).compactMap { $0["text"]?.stringValue }.joined()
        return .success(ProviderResponse.completion(id: id, created: created, model: model, text: text,
                                                    finish: finish(body["stopReason"]?.stringValue), usage: usage(body["usage"])))
    }

    /// Bedrock's `usage` in OpenAI form: input tokens exclude the cache reads and writes, which
    /// are added (the reads as cached tokens).
    static func usage(_ u: JSON?) -> JSON {
        let cached = u?["cacheReadInputTokens"]?.intValue ?? 0
        return ProviderResponse.usage(prompt: (u?["inputTokens"]?.intValue ?? 0) + cached + (u?["cacheWriteInputTokens"]?.intValue ?? 0),
                                      completion: u?["outputTokens"]?.intValue ?? 0, cached: cached)
    }

    /// `stopReason` as an OpenAI `finish_reason`.
    static func finish(_ r: String?) -> String {
        switch r {
        case "max_tokens", "model_context_window_exceeded": return "length"
        case "tool_use": return "tool_calls"
        case "guardrail_intervened", "content_filtered": return "content_filter"
        default: return "stop"
        }
    }

    /// The message of a Bedrock error body (`{"message": ...}`; some services write `Message`).
    public static func errorMessage(_ body: JSON) -> String? {
        body["message"]?.stringValue ?? body["Message"]?.stringValue
    }
}

extension ProviderStreamAdapter {
    /// Bedrock's event-stream bytes: each whole message is handled as it completes.
    mutating func feedBedrock(_ bytes: [UInt8]) throws(APIError) -> [UInt8] {
        let messages: [EventStreamMessage]
        do {
            messages = try frames.feed(bytes)
        } catch {
            throw APIError.engineFailed("bedrock provider sent a malformed event stream: \(error)")
        }
        var out: [UInt8] = []
        for m in messages where !done { bedrock(m, &out) }
        return out
    }

    /// One `ConverseStream` message: `contentBlockDelta` text, `messageStop` (its stop reason),
    /// `metadata` (usage; the last event, which closes the stream); an exception or error message
    /// ends the stream with an error event.
    mutating func bedrock(_ m: EventStreamMessage, _ out: inout [UInt8]) {
        let payload = (try? JSONParser.parse(m.payload)) ?? .null
        switch m.string(":message-type") {
        case "event":
            break
        case "exception":
            let type = m.string(":exception-type") ?? "exception"
            fail("\(type): \(BedrockDialect.errorMessage(payload) ?? "no message")", &out)
            return
        default:  // "error": the message is in headers
            fail("\(m.string(":error-code") ?? "error"): \(m.string(":error-message") ?? "no message")", &out)
            return
        }
        switch m.string(":event-type") {
        case "contentBlockDelta":
            if let t = payload["delta"]?["text"]?.stringValue, !t.isEmpty { content(t, &out) }
        case "messageStop":
            finishReason = BedrockDialect.finish(payload["stopReason"]?.stringValue)
        case "metadata":
            if let u = payload["usage"] { take(usage: BedrockDialect.usage(u)) }
            close(&out)
        default:
            break  // messageStart, contentBlockStart/Stop
        }
    }
}
