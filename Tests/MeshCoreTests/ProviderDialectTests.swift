import Testing
@testable import MeshCore

@Suite struct ProviderDialectTests {
    func parse(_ route: InferenceRoute, _ body: String) throws -> InferenceRequest {
        try RequestParser.parse(route: route, body: Array(body.utf8))
    }

    let chatBody = #"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"},{"role":"user","content":"there"},{"role":"assistant","content":"yes?"},{"role":"user","content":"sum 2+2"}],"max_tokens":50,"temperature":1.5,"stop":["END"],"stream":true}"#

    @Test func anthropicRequest() throws {
        let r = try ProviderRequestBuilder.build(try parse(.openaiChat, chatBody), kind: .anthropic, model: "claude-haiku")
        #expect(r.path == "/messages" && r.stream && r.engineRoute == .openaiChat)
        #expect(r.body["model"] == "claude-haiku")
        #expect(r.body["system"] == "be brief")
        #expect(r.body["max_tokens"]?.intValue == 50)
        #expect(r.body["temperature"]?.doubleValue == 1.0)  // Anthropic's range is 0...1
        #expect(r.body["stop_sequences"] == ["END"])
        let msgs = r.body["messages"]?.arrayValue ?? []
        #expect(msgs.map { $0["role"]?.stringValue ?? "" } == ["user", "assistant", "user"])
        #expect(msgs[0]["content"] == "hi\n\nthere")
        // Without max_tokens the required field gets the default; an Ollama generate becomes a turn.
        let gen = try ProviderRequestBuilder.build(try parse(.ollamaGenerate, #"{"model":"m","prompt":"p","system":"s","stream":false}"#),
                                                   kind: .anthropic, model: "claude")
        #expect(gen.body["max_tokens"]?.intValue == ProviderRequestBuilder.anthropicDefaultMaxTokens)
        #expect(gen.body["system"] == "s" && gen.body["messages"]?[0]?["content"] == "p")
        #expect(gen.body["stream"] == nil && !gen.stream)
    }

    @Test func geminiRequest() throws {
        let r = try ProviderRequestBuilder.build(try parse(.openaiChat, chatBody), kind: .gemini, model: "gemini-2.0-flash")
        #expect(r.path == "/models/gemini-2.0-flash:streamGenerateContent?alt=sse")
        #expect(r.body["systemInstruction"]?["parts"]?[0]?["text"] == "be brief")
        let contents = r.body["contents"]?.arrayValue ?? []
        #expect(contents.map { $0["role"]?.stringValue ?? "" } == ["user", "model", "user"])
        #expect(r.body["generationConfig"]?["maxOutputTokens"]?.intValue == 50)
        #expect(r.body["generationConfig"]?["stopSequences"] == ["END"])
        let plain = try ProviderRequestBuilder.build(try parse(.ollamaChat, #"{"model":"g","messages":[{"role":"assistant","content":"hello"}],"stream":false}"#),
                                                     kind: .gemini, model: "g")
        #expect(plain.path == "/models/g:generateContent")
        #expect(plain.body["contents"]?[0]?["role"] == "user")  // a conversation must open with the user
        #expect(plain.body["generationConfig"] == nil)
    }

    @Test func openAICompatibleAndAzureAndEmbeddings() throws {
        let req = try parse(.ollamaChat, #"{"model":"local-name","messages":[{"role":"user","content":"hi"}]}"#)
        let oa = try ProviderRequestBuilder.build(req, kind: .openai, model: "gpt-4o-mini")
        #expect(oa.path == "/v1/chat/completions" && oa.body["model"] == "gpt-4o-mini")
        let az = try ProviderRequestBuilder.build(req, kind: .azure, model: "gpt-4o-mini")
        #expect(az.body["model"] == nil && az.body["messages"] != nil)
        let emb = try parse(.openaiEmbeddings, #"{"model":"e","input":"x"}"#)
        #expect(throws: APIError.self) { try ProviderRequestBuilder.build(emb, kind: .anthropic, model: "c") }
        #expect(try ProviderRequestBuilder.build(emb, kind: .openai, model: "e").path == "/v1/embeddings")
    }

    @Test func wholeAnswersBecomeOpenAICompletions() throws {
        let anthropic = try JSONParser.parse(#"{"id":"msg_1","type":"message","role":"assistant","content":[{"type":"text","text":"4"},{"type":"text","text":"!"}],"stop_reason":"max_tokens","usage":{"input_tokens":10,"cache_read_input_tokens":5,"output_tokens":2}}"#)
        let a = try ProviderResponse.toOpenAI(anthropic, kind: .anthropic, model: "claude", id: "chatcmpl-x", created: 7).get()
        #expect(a["choices"]?[0]?["message"]?["content"] == "4!")
        #expect(a["choices"]?[0]?["finish_reason"] == "length")
        #expect(a["usage"]?["prompt_tokens"]?.intValue == 15 && a["usage"]?["completion_tokens"]?.intValue == 2)
        #expect(a["usage"]?["prompt_tokens_details"]?["cached_tokens"]?.intValue == 5)
        let gemini = try JSONParser.parse(#"{"candidates":[{"content":{"role":"model","parts":[{"text":"fo"},{"text":"ur"}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":9,"candidatesTokenCount":3,"totalTokenCount":12}}"#)
        let g = try ProviderResponse.toOpenAI(gemini, kind: .gemini, model: "gem", id: "chatcmpl-y", created: 7).get()
        #expect(g["choices"]?[0]?["message"]?["content"] == "four" && g["usage"]?["total_tokens"]?.intValue == 12)
        // The client dialect is the existing translator's job: Ollama counters come out right.
        let ctx = ResponseContext(clientRoute: .ollamaChat, engineRoute: .openaiChat, clientModel: "gem", includeUsage: false, id: "x", startNanos: 0)
        let (ollama, usage) = try ResponseTranslator.translate(engineBody: g, context: ctx, endNanos: 1_000_000)
        #expect(ollama["message"]?["content"] == "four" && ollama["eval_count"]?.intValue == 3 && usage?.promptTokens == 9)
        // Errors and refusals.
        let err = try JSONParser.parse(#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#)
        guard case .failure(let e) = ProviderResponse.toOpenAI(err, kind: .anthropic, model: "c", id: "i", created: 0) else {
            Issue.record("expected an error")
            return
        }
        #expect(e.message.contains("Overloaded"))
        let blocked = try JSONParser.parse(#"{"promptFeedback":{"blockReason":"SAFETY"}}"#)
        #expect(throws: APIError.self) { try ProviderResponse.toOpenAI(blocked, kind: .gemini, model: "g", id: "i", created: 0).get() }
    }

    static let anthropicStream = """
    event: message_start
    data: {"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"usage":{"input_tokens":12,"output_tokens":1}}}

    event: content_block_start
    data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

    event: ping
    data: {"type":"ping"}

    event: content_block_delta
    data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hel"}}

    event: content_block_delta
    data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"lo 😀"}}

    event: content_block_stop
    data: {"type":"content_block_stop","index":0}

    event: message_delta
    data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":3}}

    event: message_stop
    data: {"type":"message_stop"}


    """

    /// Feeds `bytes` in pieces of `step` through adapter and translator; returns the client bytes.
    func relay(_ bytes: [UInt8], kind: ProviderKind, client: InferenceRoute, step: Int) throws -> (String, ProviderStreamAdapter, StreamTranslator) {
        var a = ProviderStreamAdapter(kind: kind, model: "cloud-m", id: "chatcmpl-c", created: 5)
        var t = StreamTranslator(context: ResponseContext(clientRoute: client, engineRoute: .openaiChat, clientModel: "m",
                                                          includeUsage: true, id: "chatcmpl-c", startNanos: 0))
        var out: [UInt8] = []
        var i = 0
        while i < bytes.count {
            let piece = Array(bytes[i..<min(bytes.count, i + step)])
            out += try t.feed(try a.feed(piece), nowNanos: 1)
            i += step
        }
        out += try t.feed(a.finish(), nowNanos: 2)
        out += t.finish(nowNanos: 3)
        return (String(decoding: out, as: UTF8.self), a, t)
    }

    @Test(arguments: [1, 7, 4096]) func anthropicStreamToBothDialects(step: Int) throws {
        let bytes = Array(Self.anthropicStream.utf8)
        let (sse, a, t) = try relay(bytes, kind: .anthropic, client: .openaiChat, step: step)
        #expect(a.done && t.finished)
        #expect(sse.contains(#""content":"Hel""#) && sse.contains(#""content":"lo 😀""#))
        #expect(sse.contains(#""finish_reason":"stop""#))
        #expect(sse.hasSuffix("data: [DONE]\n\n"))
        #expect(t.usage == TokenUsage(promptTokens: 12, completionTokens: 3))
        let (nd, _, t2) = try relay(bytes, kind: .anthropic, client: .ollamaChat, step: step)
        let last = nd.split(separator: "\n").last.map(String.init) ?? ""
        #expect(last.contains(#""done":true"#) && last.contains(#""eval_count":3"#) && last.contains(#""prompt_eval_count":12"#))
        #expect(t2.contentChunks == 2)
    }

    @Test func geminiStreamEndsWithTheBodyAndACutOneIsReported() throws {
        let events = [
            #"{"candidates":[{"content":{"role":"model","parts":[{"text":"Hi"}]}}],"usageMetadata":{"promptTokenCount":4,"candidatesTokenCount":1}}"#,
            #"{"candidates":[{"content":{"role":"model","parts":[{"text":" there"}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":4,"candidatesTokenCount":2,"totalTokenCount":6}}"#,
        ]
        let body = Array(events.map { "data: \($0)\r\n\r\n" }.joined().utf8)
        let (sse, a, t) = try relay(body, kind: .gemini, client: .openaiChat, step: 5)
        #expect(a.done && t.finished && sse.hasSuffix("data: [DONE]\n\n"))
        #expect(t.usage == TokenUsage(promptTokens: 4, completionTokens: 2))
        // The body stops before a finish reason: no [DONE], the client gets an error event.
        let cut = Array("data: \(events[0])\n\n".utf8)
        let (sse2, a2, t2) = try relay(cut, kind: .gemini, client: .openaiChat, step: 64)
        #expect(!a2.done)
        #expect(sse2.contains(#""content":"Hi""#) && sse2.contains(#"data: {"error":"#))
        #expect(t2.contentChunks == 1)  // what was generated, for billing
    }

    @Test func providerErrorEventEndsTheStream() throws {
        let body = Array("""
        event: message_start
        data: {"type":"message_start","message":{"usage":{"input_tokens":3,"output_tokens":0}}}

        event: error
        data: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}


        """.utf8)
        let (sse, a, _) = try relay(body, kind: .anthropic, client: .openaiChat, step: 3)
        #expect(a.done)
        #expect(sse.contains("Overloaded") && !sse.contains("[DONE]"))
        var huge = ProviderStreamAdapter(kind: .gemini, model: "m", id: "i", created: 0)
        #expect(throws: APIError.self) { try huge.feed([UInt8](repeating: 0x61, count: StreamTranslator.maxLineBytes + 1)) }
    }
}
