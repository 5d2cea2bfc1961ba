import Testing
@testable import MeshCore

@Suite struct ResponseCacheTests {
    func parse(_ route: InferenceRoute, _ json: String) throws -> InferenceRequest {
        try RequestParser.parse(route: route, body: Array(json.utf8))
    }

    @Test func deterministicRequestsOnlyAndBothDialectsShareAKey() throws {
        let openai = try parse(.openaiChat, #"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0,"max_tokens":5,"stream":true,"user":"x"}"#)
        let ollama = try parse(.ollamaChat, #"{"model":"m","messages":[{"role":"user","content":"hi"}],"options":{"temperature":0,"num_predict":5},"keep_alive":"1m","tools":[],"format":null}"#)
        let k = ResponseCachePolicy.key(openai, identity: "1:Q4:llama")
        #expect(k != nil && k == ResponseCachePolicy.key(ollama, identity: "1:Q4:llama"))
        // Another model file, token limit, message, or unparsed member: another key.
        #expect(k != ResponseCachePolicy.key(openai, identity: "2:Q4:llama"))
        #expect(k != ResponseCachePolicy.key(try parse(.openaiChat, #"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0,"max_tokens":6}"#), identity: "1:Q4:llama"))
        #expect(k != ResponseCachePolicy.key(try parse(.openaiChat, #"{"model":"m","messages":[{"role":"user","content":"hi!"}],"temperature":0,"max_tokens":5}"#), identity: "1:Q4:llama"))
        let tools = try parse(.openaiChat, #"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0,"max_tokens":5,"tools":[{"type":"function","function":{"name":"f"}}]}"#)
        #expect(ResponseCachePolicy.key(tools, identity: "1:Q4:llama").map { $0 != k } == true)
        let ollamaExtra = try parse(.ollamaChat, #"{"model":"m","messages":[{"role":"user","content":"hi"}],"options":{"temperature":0,"num_predict":5,"mirostat":2}}"#)
        #expect(ResponseCachePolicy.key(ollamaExtra, identity: "1:Q4:llama").map { $0 != k } == true)
        // A fixed seed is deterministic too; sampling without one is not; nor n > 1, logprobs, embeddings, loads.
        #expect(ResponseCachePolicy.key(try parse(.openaiChat, #"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0.8,"seed":7}"#), identity: "") != nil)
        for body in [#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
                     #"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0.7}"#,
                     #"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0,"n":2}"#,
                     #"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0,"logprobs":true}"#] {
            #expect(ResponseCachePolicy.key(try parse(.openaiChat, body), identity: "") == nil, "\(body)")
        }
        #expect(ResponseCachePolicy.key(try parse(.openaiEmbeddings, #"{"model":"m","input":"x"}"#), identity: "") == nil)
        #expect(ResponseCachePolicy.key(try parse(.ollamaChat, #"{"model":"m","messages":[],"options":{"temperature":0}}"#), identity: "") == nil)
        // Generate and completions meet too.
        let gen = try parse(.ollamaGenerate, #"{"model":"m","prompt":"once","options":{"seed":1,"num_predict":3}}"#)
        let cmp = try parse(.openaiCompletion, #"{"model":"m","prompt":"once","seed":1,"max_tokens":3}"#)
        #expect(ResponseCachePolicy.key(gen, identity: "") == ResponseCachePolicy.key(cmp, identity: ""))
    }

    @Test func identityNamesTheModelFilesHoldingIt() {
        var a = ModelInfo(name: "m", loaded: true)
        a.sizeBytes = 100
        a.quantization = "Q4_K_M"
        var b = a
        b.sizeBytes = 200
        #expect(ResponseCachePolicy.identity(model: "m", holders: [a, a]) == "100:Q4_K_M:?")
        #expect(ResponseCachePolicy.identity(model: "m", holders: [b, a]) == "100:Q4_K_M:?,200:Q4_K_M:?")
        #expect(ResponseCachePolicy.identity(model: "m", holders: []) == "cloud")
    }

    @Test func capturedAnswersReplayInEveryDialect() throws {
        let openAIBody = try JSONParser.parse(Array(#"{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"tok0 tok1"},"finish_reason":"length"}],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}"#.utf8))
        let a = try #require(ResponseCachePolicy.capture(body: openAIBody, route: .openaiChat))
        #expect(a == CachedAnswer(text: "tok0 tok1", finishReason: "length", promptTokens: 9, completionTokens: 2))
        // Tool calls, errors and several choices are not kept.
        let toolBody = try JSONParser.parse(Array(#"{"choices":[{"message":{"role":"assistant","content":null,"tool_calls":[{"id":"1"}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#.utf8))
        #expect(ResponseCachePolicy.capture(body: toolBody, route: .openaiChat) == nil)
        #expect(ResponseCachePolicy.capture(body: ["error": "boom"], route: .ollamaChat) == nil)

        let ctx = { (r: InferenceRoute, usage: Bool) in ResponseContext(clientRoute: r, engineRoute: r, clientModel: "m", includeUsage: usage, id: "chatcmpl-1", startNanos: 1_000_000_000) }
        let ollama = ResponseCachePolicy.body(a, context: ctx(.ollamaChat, false), nowNanos: 2_000_000_000)
        #expect(ollama["message"]?["content"]?.stringValue == "tok0 tok1" && ollama["eval_count"]?.intValue == 2
                && ollama["prompt_eval_count"]?.intValue == 9 && ollama["done_reason"]?.stringValue == "length")
        let completion = ResponseCachePolicy.body(a, context: ctx(.openaiCompletion, false), nowNanos: 2_000_000_000)
        #expect(completion["choices"]?[0]?["text"]?.stringValue == "tok0 tok1" && completion["usage"]?["total_tokens"]?.intValue == 11)

        // Streams: an OpenAI stream with usage, read back by a translator as a client would.
        let sse = ResponseCachePolicy.stream(a, context: ctx(.openaiChat, true), nowNanos: 2_000_000_000)
        var reader = StreamTranslator(context: ctx(.openaiChat, true), collectsAnswer: true)
        _ = try reader.feed(sse, nowNanos: 0)
        #expect(reader.finished && !reader.failed && reader.usageReported)
        #expect(ResponseCachePolicy.capture(stream: reader) == a)
        let text = String(decoding: sse, as: UTF8.self)
        #expect(text.hasSuffix("data: [DONE]\n\n") && text.contains(#""role":"assistant""#) && text.contains(#""finish_reason":"length""#))
        // Ollama generate: NDJSON with `response`, the counts on the last line.
        let nd = String(decoding: ResponseCachePolicy.stream(a, context: ctx(.ollamaGenerate, false), nowNanos: 2_000_000_000), as: UTF8.self)
        let lines = nd.split(separator: "\n").map { try? JSONParser.parse(Array($0.utf8)) }
        #expect(lines.count == 2 && lines[0]?["response"]?.stringValue == "tok0 tok1" && lines[1]?["done"]?.boolValue == true
                && lines[1]?["eval_count"]?.intValue == 2)
        // An OpenAI stream without include_usage has no counts: it answers only like requests.
        var bare = StreamTranslator(context: ctx(.openaiChat, false), collectsAnswer: true)
        _ = try bare.feed(ResponseCachePolicy.stream(a, context: ctx(.openaiChat, false), nowNanos: 0), nowNanos: 0)
        let partial = try #require(ResponseCachePolicy.capture(stream: bare))
        #expect(!partial.usageKnown && partial.text == "tok0 tok1")
        #expect(partial.canAnswer(try parse(.openaiChat, #"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}"#)))
        #expect(!partial.canAnswer(try parse(.openaiChat, #"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}"#)))
        #expect(!partial.canAnswer(try parse(.ollamaChat, #"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#)))
        // A stream that failed is not kept.
        var failed = StreamTranslator(context: ctx(.ollamaChat, false), collectsAnswer: true)
        _ = try failed.feed(Array("{\"message\":{\"content\":\"a\"},\"done\":false}\n{\"error\":\"boom\"}\n".utf8), nowNanos: 0)
        #expect(ResponseCachePolicy.capture(stream: failed) == nil)
    }

    @Test func storeIsBoundedByBytesAndTimeLeastRecentlyUsedOut() {
        let answer = CachedAnswer(text: String(repeating: "x", count: 100), finishReason: "stop", promptTokens: 1, completionTokens: 1)
        let size = ResponseCacheStore.size("k1", answer)
        var s = ResponseCacheStore(maxBytes: 3 * size, maxEntryBytes: size, ttlSeconds: 10)
        var kept = [s.put("k1", answer, nowNanos: 0), s.put("k2", answer, nowNanos: 0), s.put("k3", answer, nowNanos: 0)]
        #expect(kept == [true, true, true])
        let first = s.get("k1", nowNanos: 1)  // k1 is now the most recent
        #expect(first == answer)
        kept = [s.put("k4", answer, nowNanos: 2)]  // evicts k2, the least recently used
        #expect(kept == [true] && s.order == ["k4", "k1", "k3"] && s.bytes == 3 * size && s.evictions == 1)
        let gone = s.get("k2", nowNanos: 3)
        #expect(gone == nil && s.misses == 1)
        // Too large for one entry: refused.
        kept = [s.put("big", CachedAnswer(text: String(repeating: "y", count: 200), finishReason: "stop", promptTokens: 1, completionTokens: 1), nowNanos: 3)]
        #expect(kept == [false])
        // Expired after the TTL.
        let expired = s.get("k3", nowNanos: 10_000_000_000)
        #expect(expired == nil && s.count == 2 && s.bytes == 2 * size)
        // An answer without counts does not replace one with them.
        var bare = answer
        bare.usageKnown = false
        kept = [s.put("k1", bare, nowNanos: 11)]
        let still = s.get("k1", nowNanos: 12)
        #expect(kept == [false] && still?.usageKnown == true)
        #expect(s.hits == 2 && s.stores == 4)
    }
}
