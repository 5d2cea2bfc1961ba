import Testing
@testable import MeshCore

@Suite struct BedrockDialectTests {
    func parse(_ route: InferenceRoute, _ body: String) throws -> InferenceRequest {
        try RequestParser.parse(route: route, body: Array(body.utf8))
    }

    static let chatBody = #"{"model":"nova","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"},{"role":"user","content":"there"},{"role":"assistant","content":"yes?"},{"role":"user","content":"sum 2+2"}],"max_tokens":50,"temperature":1.5,"top_p":0.9,"top_k":5,"stop":["END"],"stream":true}"#

    @Test func converseRequest() throws {
        let r = try ProviderRequestBuilder.build(try parse(.openaiChat, Self.chatBody), kind: .bedrock, model: "amazon.nova-lite-v1:0")
        #expect(r.path == "/model/amazon.nova-lite-v1%3A0/converse-stream" && r.stream && r.engineRoute == .openaiChat)
        let msgs = r.body["messages"]?.arrayValue ?? []
        #expect(msgs.map { $0["role"]?.stringValue ?? "" } == ["user", "assistant", "user"])
        #expect(msgs[0]["content"] == [["text": "hi\n\nthere"]] && msgs[2]["content"]?[0]?["text"] == "sum 2+2")
        #expect(r.body["system"] == [["text": "be brief"]])
        let c = r.body["inferenceConfig"]
        #expect(c?["maxTokens"]?.intValue == 50 && c?["temperature"]?.doubleValue == 1.0 && c?["topP"]?.doubleValue == 0.9)
        #expect(c?["stopSequences"] == ["END"] && c?["topK"] == nil)
        // The model is in the path, the stream in the operation: neither is in the body.
        #expect(r.body["model"] == nil && r.body["stream"] == nil)
        // Not streamed, no options, an inference-profile ARN (its `/` encoded too), an Ollama generate.
        let gen = try ProviderRequestBuilder.build(try parse(.ollamaGenerate, #"{"model":"m","prompt":"p","stream":false}"#), kind: .bedrock,
                                                   model: "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.amazon.nova-lite-v1:0")
        #expect(gen.path == "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.amazon.nova-lite-v1%3A0/converse")
        #expect(!gen.stream && gen.body["inferenceConfig"] == nil && gen.body["system"] == nil)
        #expect(gen.body["messages"]?[0]?["content"]?[0]?["text"] == "p")
        let emb = try parse(.openaiEmbeddings, #"{"model":"e","input":"x"}"#)
        #expect(throws: APIError.self) { try ProviderRequestBuilder.build(emb, kind: .bedrock, model: "amazon.titan-embed-text-v2:0") }
    }

    @Test func converseAnswerBecomesACompletion() throws {
        let body = try JSONParser.parse(#"{"output":{"message":{"role":"assistant","content":[{"text":"fo"},{"text":"ur"}]}},"stopReason":"max_tokens","usage":{"inputTokens":9,"outputTokens":3,"totalTokens":12,"cacheReadInputTokens":4,"cacheWriteInputTokens":2},"metrics":{"latencyMs":120}}"#)
        let c = try ProviderResponse.toOpenAI(body, kind: .bedrock, model: "nova", id: "chatcmpl-b", created: 7).get()
        #expect(c["id"] == "chatcmpl-b" && c["object"] == "chat.completion" && c["model"] == "nova")
        #expect(c["choices"]?[0]?["message"]?["content"] == "four" && c["choices"]?[0]?["finish_reason"] == "length")
        #expect(c["usage"]?["prompt_tokens"]?.intValue == 15 && c["usage"]?["completion_tokens"]?.intValue == 3)
        #expect(c["usage"]?["prompt_tokens_details"]?["cached_tokens"]?.intValue == 4)
        for (reason, finish) in [("end_turn", "stop"), ("stop_sequence", "stop"), ("tool_use", "tool_calls"), ("guardrail_intervened", "content_filter"),
                                 ("content_filtered", "content_filter")] {
            #expect(BedrockDialect.finish(reason) == finish)
        }
        // Not a Converse answer; an error body in Bedrock's shape.
        #expect(throws: APIError.self) { try ProviderResponse.toOpenAI(["foo": 1], kind: .bedrock, model: "n", id: "i", created: 0).get() }
        let err = try JSONParser.parse(#"{"message":"The security token included in the request is invalid."}"#)
        #expect(ProviderResponse.errorMessage(err, kind: .bedrock) == "The security token included in the request is invalid.")
        #expect(ProviderResponse.errorMessage(err, kind: .anthropic) == nil)
    }

    static func event(_ type: String, _ payload: String) -> [UInt8] { EventStreamTests.event(type, payload).encoded() }

    static let stream: [UInt8] = event("messageStart", #"{"role":"assistant","p":"abc"}"#)
        + event("contentBlockStart", #"{"contentBlockIndex":0,"start":{}}"#)
        + event("contentBlockDelta", #"{"contentBlockIndex":0,"delta":{"text":"Hel"},"p":"a"}"#)
        + event("contentBlockDelta", #"{"contentBlockIndex":0,"delta":{"text":"lo 😀"}}"#)
        + event("contentBlockStop", #"{"contentBlockIndex":0}"#)
        + event("messageStop", #"{"stopReason":"end_turn"}"#)
        + event("metadata", #"{"usage":{"inputTokens":12,"outputTokens":3,"totalTokens":15},"metrics":{"latencyMs":80}}"#)

    /// Feeds `pieces` through adapter and translator; returns the client bytes.
    func relay(_ pieces: [[UInt8]], client: InferenceRoute = .openaiChat) throws -> (String, ProviderStreamAdapter, StreamTranslator) {
        var a = ProviderStreamAdapter(kind: .bedrock, model: "nova", id: "chatcmpl-c", created: 5)
        var t = StreamTranslator(context: ResponseContext(clientRoute: client, engineRoute: .openaiChat, clientModel: "m",
                                                          includeUsage: true, id: "chatcmpl-c", startNanos: 0))
        var out: [UInt8] = []
        for p in pieces { out += try t.feed(try a.feed(p), nowNanos: 1) }
        out += try t.feed(a.finish(), nowNanos: 2)
        out += t.finish(nowNanos: 3)
        return (String(decoding: out, as: UTF8.self), a, t)
    }

    /// The stream split in two at every byte boundary gives the same OpenAI stream; and to Ollama.
    @Test func converseStreamAtEveryByteBoundary() throws {
        let bytes = Self.stream
        let (whole, _, _) = try relay([bytes])
        #expect(whole.contains(#""content":"Hel""#) && whole.contains(#""content":"lo 😀""#) && whole.contains(#""finish_reason":"stop""#))
        #expect(whole.hasSuffix("data: [DONE]\n\n"))
        for k in 0...bytes.count {
            let (sse, a, t) = try relay([Array(bytes[..<k]), Array(bytes[k...])])
            #expect(a.done && t.finished && sse == whole, "split at \(k)")
            #expect(t.usage == TokenUsage(promptTokens: 12, completionTokens: 3))
        }
        let (nd, _, t2) = try relay(bytes.map { [$0] }, client: .ollamaChat)
        let last = nd.split(separator: "\n").last.map(String.init) ?? ""
        #expect(last.contains(#""done":true"#) && last.contains(#""eval_count":3"#) && last.contains(#""prompt_eval_count":12"#))
        #expect(t2.contentChunks == 2)
    }

    @Test func exceptionEndsTheStreamWithAnError() throws {
        let exception = EventStreamMessage(headers: [(":exception-type", .string("modelStreamErrorException")), (":content-type", .string("application/json")),
                                                     (":message-type", .string("exception"))], payload: Array(#"{"message":"Overloaded"}"#.utf8)).encoded()
        let (sse, a, _) = try relay([Self.event("contentBlockDelta", #"{"delta":{"text":"x"}}"#) + exception + Self.event("metadata", "{}")])
        #expect(a.done && !sse.contains("[DONE]"))
        #expect(sse.contains(#""content":"x""#) && sse.contains("bedrock provider: modelStreamErrorException: Overloaded"))
        let error = EventStreamMessage(headers: [(":message-type", .string("error")), (":error-code", .string("InternalFailure")),
                                                 (":error-message", .string("boom"))], payload: []).encoded()
        let (sse2, a2, _) = try relay([error])
        #expect(a2.done && sse2.contains("InternalFailure: boom"))
    }

    @Test func endsWithoutMetadataOrCutOrCorrupt() throws {
        // messageStop passed, the body ended before the metadata: done, without usage.
        let stop = Self.event("contentBlockDelta", #"{"delta":{"text":"ok"}}"#) + Self.event("messageStop", #"{"stopReason":"max_tokens"}"#)
        let (sse, a, _) = try relay([stop])
        #expect(a.done && sse.contains(#""finish_reason":"length""#) && sse.hasSuffix("data: [DONE]\n\n"))
        // Cut before messageStop (and mid-message): not done; the client gets an error event.
        let cut = Self.event("contentBlockDelta", #"{"delta":{"text":"Hi"}}"#) + Self.event("contentBlockDelta", #"{"delta":{"text":"!"}}"#).dropLast(5)
        let (sse2, a2, t2) = try relay([Array(cut)])
        #expect(!a2.done && sse2.contains(#""content":"Hi""#) && sse2.contains(#"data: {"error":"#) && t2.contentChunks == 1)
        // A corrupted message is an error naming the event stream.
        var bad = Self.stream
        bad[40] ^= 0xFF
        var adapter = ProviderStreamAdapter(kind: .bedrock, model: "m", id: "i", created: 0)
        do {
            _ = try adapter.feed(bad)
            Issue.record("a corrupted frame was accepted")
        } catch {
            #expect(error.message.contains("malformed event stream") && error.message.contains("CRC mismatch"))
        }
    }
}
