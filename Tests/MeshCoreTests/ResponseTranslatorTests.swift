import MeshCore
import Testing

let testStart: UInt64 = 1_700_000_000_000_000_000  // 2023-11-14T22:13:20Z
let testEnd: UInt64 = testStart + 2_500_000_000

func context(_ client: InferenceRoute, _ engine: InferenceRoute, includeUsage: Bool = false,
             id: String = "chatcmpl-meshd1", model: String = "client-model", start: UInt64 = testStart) -> ResponseContext {
    ResponseContext(clientRoute: client, engineRoute: engine, clientModel: model, includeUsage: includeUsage, id: id, startNanos: start)
}

func translate(_ body: String, _ ctx: ResponseContext, end: UInt64 = testEnd) -> Result<(JSON, TokenUsage?), APIError> {
    do throws(APIError) {
        return .success(try ResponseTranslator.translate(engineBody: J(body), context: ctx, endNanos: end))
    } catch {
        return .failure(error)
    }
}

func translated(_ body: String, _ ctx: ResponseContext, end: UInt64 = testEnd, sourceLocation: SourceLocation = #_sourceLocation) throws -> (JSON, TokenUsage?) {
    switch translate(body, ctx, end: end) {
    case .success(let v): return v
    case .failure(let e):
        Issue.record("translation failed: \(e)", sourceLocation: sourceLocation)
        throw e
    }
}

let openAIChatBody = #"""
    {"id":"chatcmpl-engine","object":"chat.completion","created":1699999999,"model":"tiny.gguf",
     "choices":[{"index":0,"message":{"role":"assistant","content":"Hello there"},"finish_reason":"length"}],
     "usage":{"prompt_tokens":11,"completion_tokens":3,"total_tokens":14},
     "timings":{"prompt_n":11,"prompt_ms":12.5,"predicted_n":3,"predicted_ms":40.25}}
    """#

let openAICompletionBody = #"""
    {"id":"cmpl-engine","object":"text_completion","created":1699999999,"model":"tiny.gguf",
     "choices":[{"text":" upon a time","index":0,"logprobs":null,"finish_reason":"stop"}],
     "usage":{"prompt_tokens":2,"completion_tokens":4,"total_tokens":6}}
    """#

let ollamaChatBody = #"""
    {"model":"llama3:latest","created_at":"2024-06-01T10:00:00.123Z","message":{"role":"assistant","content":"Hi!"},
     "done_reason":"length","done":true,"total_duration":5000000000,"load_duration":1000,"prompt_eval_count":9,
     "prompt_eval_duration":2000,"eval_count":4,"eval_duration":3000}
    """#

let ollamaGenerateBody = #"""
    {"model":"llama3:latest","created_at":"2024-06-01T10:00:00.123Z","response":"42","done":true,"done_reason":"stop",
     "context":[1,2,3],"total_duration":10,"load_duration":1,"prompt_eval_count":6,"prompt_eval_duration":2,"eval_count":1,"eval_duration":3}
    """#

@Suite struct ResponseTranslatorTests {
    @Test func sameRouteIsRelayedUnchanged() throws {
        let (body, usage) = try translated(openAIChatBody, context(.openaiChat, .openaiChat))
        #expect(identical(body, J(openAIChatBody)))
        #expect(usage == TokenUsage(promptTokens: 11, completionTokens: 3))
        let (c, cu) = try translated(openAICompletionBody, context(.openaiCompletion, .openaiCompletion))
        #expect(identical(c, J(openAICompletionBody)))
        #expect(cu?.totalTokens == 6)
        let (o, ou) = try translated(ollamaChatBody, context(.ollamaChat, .ollamaChat))
        #expect(identical(o, J(ollamaChatBody)))
        #expect(ou == TokenUsage(promptTokens: 9, completionTokens: 4))
        let (g, gu) = try translated(ollamaGenerateBody, context(.ollamaGenerate, .ollamaGenerate))
        #expect(identical(g, J(ollamaGenerateBody)))
        #expect(gu == TokenUsage(promptTokens: 6, completionTokens: 1))
    }

    @Test func ollamaChatToOpenAIChat() throws {
        let (b, usage) = try translated(ollamaChatBody, context(.openaiChat, .ollamaChat))
        #expect(usage == TokenUsage(promptTokens: 9, completionTokens: 4))
        #expect(b == J(#"""
            {"id":"chatcmpl-meshd1","object":"chat.completion","created":1700000000,"model":"client-model",
             "choices":[{"index":0,"message":{"role":"assistant","content":"Hi!"},"logprobs":null,"finish_reason":"length"}],
             "usage":{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13}}
            """#))
        #expect(keys(b) == ["id", "object", "created", "model", "choices", "usage"])
    }

    @Test func cachedPromptTokensCrossBothDialects() throws {
        // Ollama says how much of the prompt its cache held (`prompt_eval_cached_count`): an OpenAI client
        // reads it as `prompt_tokens_details.cached_tokens`, and the shadow gets it as the cached count.
        let cachedOllama = ollamaChatBody.replacingOccurrences(of: #""prompt_eval_count":9,"#, with: #""prompt_eval_count":9,"prompt_eval_cached_count":7,"#)
        let (b, usage) = try translated(cachedOllama, context(.openaiChat, .ollamaChat))
        #expect(usage?.cachedTokens == 7 && usage?.promptTokens == 9)
        #expect(b["usage"]?["prompt_tokens_details"]?["cached_tokens"]?.intValue == 7)
        let (_, plain) = try translated(ollamaChatBody, context(.openaiChat, .ollamaChat))
        #expect(plain?.cachedTokens == nil, "an Ollama that does not say: unknown, not zero")
        // llama-server's cached count reaches an Ollama client the same way, next to prompt_eval_count.
        let cachedOpenAI = openAIChatBody.replacingOccurrences(of: #""prompt_n":11,"#, with: #""prompt_n":4,"cache_n":7,"#)
        let (o, ou) = try translated(cachedOpenAI, context(.ollamaChat, .openaiChat))
        #expect(ou?.cachedTokens == 7)
        #expect(o["prompt_eval_cached_count"]?.intValue == 7 && o["prompt_eval_count"]?.intValue == 11)
    }

    @Test func ollamaGenerateToOpenAICompletion() throws {
        let (b, _) = try translated(ollamaGenerateBody, context(.openaiCompletion, .ollamaGenerate, id: "cmpl-1"))
        #expect(b == J(#"""
            {"id":"cmpl-1","object":"text_completion","created":1700000000,"model":"client-model",
             "choices":[{"text":"42","index":0,"logprobs":null,"finish_reason":"stop"}],
             "usage":{"prompt_tokens":6,"completion_tokens":1,"total_tokens":7}}
            """#))
    }

    @Test func openAIChatToOllamaChatUsesTimings() throws {
        let (b, usage) = try translated(openAIChatBody, context(.ollamaChat, .openaiChat))
        #expect(usage == TokenUsage(promptTokens: 11, completionTokens: 3))
        #expect(b == J(#"""
            {"model":"client-model","created_at":"2023-11-14T22:13:22.500000000Z","message":{"role":"assistant","content":"Hello there"},
             "done":true,"done_reason":"length","total_duration":2500000000,"load_duration":0,"prompt_eval_count":11,
             "prompt_eval_duration":12500000,"eval_count":3,"eval_duration":40250000}
            """#))
        #expect(keys(b) == ["model", "created_at", "message", "done", "done_reason", "total_duration", "load_duration",
                            "prompt_eval_count", "prompt_eval_duration", "eval_count", "eval_duration"])
    }

    @Test func openAIToOllamaGenerate() throws {
        // Templated generate was sent as a chat; raw generate as a completion.
        let (chat, _) = try translated(openAIChatBody, context(.ollamaGenerate, .openaiChat))
        #expect(chat["response"]?.stringValue == "Hello there")
        #expect(chat["message"] == nil)
        #expect(chat["done"]?.boolValue == true)
        let (raw, _) = try translated(openAICompletionBody, context(.ollamaGenerate, .openaiCompletion))
        #expect(raw["response"]?.stringValue == " upon a time")
        #expect(raw["done_reason"]?.stringValue == "stop")
        #expect(raw["prompt_eval_count"]?.intValue == 2 && raw["eval_count"]?.intValue == 4)
        #expect(raw["prompt_eval_duration"]?.intValue == 0 && raw["eval_duration"]?.intValue == 0)  // no timings
    }

    @Test func missingUsageAndFinishReason() throws {
        let bare = #"{"choices":[{"index":0,"message":{"role":"assistant","content":"x"}}]}"#
        let (o, u) = try translated(bare, context(.ollamaChat, .openaiChat))
        #expect(u == nil)
        #expect(o["done_reason"]?.stringValue == "stop")
        #expect(o["prompt_eval_count"]?.intValue == 0 && o["eval_count"]?.intValue == 0)
        let (oa, _) = try translated(#"{"model":"m","message":{"role":"assistant","content":"x"},"done":true}"#, context(.openaiChat, .ollamaChat))
        #expect(oa["usage"] == nil)
        #expect(oa["choices"]?[0]?["finish_reason"]?.stringValue == "stop")
        // An empty engine body still gives a well-formed answer.
        let (empty, _) = try translated("{}", context(.openaiChat, .ollamaChat))
        #expect(empty["choices"]?[0]?["message"]?["content"]?.stringValue == "")
    }

    @Test func ollamaPromptCachedOmitsPromptCount() throws {
        let (_, u) = try translated(#"{"model":"m","response":"x","done":true,"eval_count":5}"#, context(.openaiCompletion, .ollamaGenerate))
        #expect(u == TokenUsage(promptTokens: 0, completionTokens: 5))
    }

    @Test func durationsAreNeverNegative() throws {
        let odd = #"{"choices":[{"message":{"content":"x"}}],"timings":{"prompt_ms":-5,"predicted_ms":1e300}}"#
        let (o, _) = try translated(odd, context(.ollamaChat, .openaiChat), end: testStart - 1)  // clock went backwards
        #expect(o["total_duration"]?.intValue == 0)
        #expect(o["prompt_eval_duration"]?.intValue == 0)
        #expect((o["eval_duration"]?.doubleValue ?? -1) >= 0)
        let negative = #"{"model":"m","response":"x","done":true,"prompt_eval_duration":-7,"eval_duration":-1,"load_duration":-3}"#
        let (n, _) = try translated(negative, context(.ollamaChat, .ollamaGenerate))
        for k in ["total_duration", "load_duration", "prompt_eval_duration", "eval_duration"] {
            #expect((n[k]?.intValue ?? -1) >= 0, "\(k)")
        }
    }

    @Test func engineErrorsBecomeAPIErrors() {
        let cases: [(String, String)] = [
            (#"{"error":{"message":"model is loading","type":"unavailable_error","code":503}}"#, "model is loading"),
            (#"{"error":"model 'x' not found"}"#, "model 'x' not found"),
            (#"{"error":{"code":500}}"#, #"{"code":500}"#),
        ]
        for (body, message) in cases {
            for ctx in [context(.openaiChat, .openaiChat), context(.ollamaChat, .openaiChat), context(.openaiEmbeddings, .ollamaEmbed)] {
                guard case .failure(let e) = translate(body, ctx) else {
                    Issue.record("no error for \(body)")
                    continue
                }
                #expect(e.status == 502)
                #expect(e.code == "engine_error")
                #expect(e.type == "server_error")
                #expect(e.message.contains(message), "\(e.message)")
            }
        }
        // "error": null is not an error.
        if case .failure(let e) = translate(#"{"error":null,"choices":[]}"#, context(.ollamaChat, .openaiChat)) {
            Issue.record("null error treated as failure: \(e)")
        }
        #expect(ResponseTranslator.engineError(J(#"{"error":null}"#)) == nil)
        #expect(ResponseTranslator.engineError(J("[1]")) == nil)
    }

    // MARK: embeddings

    static let openAIEmbeddingBody = #"""
        {"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.5,-1]},{"object":"embedding","index":1,"embedding":[2,3]}],
         "model":"nomic","usage":{"prompt_tokens":8,"total_tokens":8}}
        """#
    static let ollamaEmbedBody = #"{"model":"nomic","embeddings":[[0.5,-1],[2,3]],"total_duration":1,"load_duration":2,"prompt_eval_count":8}"#

    @Test func embeddingsSameDialect() throws {
        let (o, ou) = try translated(Self.openAIEmbeddingBody, context(.openaiEmbeddings, .openaiEmbeddings))
        #expect(identical(o, J(Self.openAIEmbeddingBody)))
        #expect(ou == TokenUsage(promptTokens: 8, completionTokens: 0))
        let (l, lu) = try translated(Self.ollamaEmbedBody, context(.ollamaEmbed, .ollamaEmbed))
        #expect(identical(l, J(Self.ollamaEmbedBody)))
        #expect(lu?.promptTokens == 8)
        let (old, _) = try translated(#"{"embedding":[1,2,3]}"#, context(.ollamaEmbeddings, .ollamaEmbeddings))
        #expect(old == J(#"{"embedding":[1,2,3]}"#))
    }

    @Test func ollamaEmbedToOpenAIClient() throws {
        let (b, u) = try translated(Self.ollamaEmbedBody, context(.openaiEmbeddings, .ollamaEmbed))
        #expect(u?.promptTokens == 8)
        #expect(b == J(#"""
            {"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.5,-1]},{"object":"embedding","index":1,"embedding":[2,3]}],
             "model":"client-model","usage":{"prompt_tokens":8,"total_tokens":8}}
            """#))
    }

    @Test func openAIEmbeddingsToOllamaClients() throws {
        let (b, _) = try translated(Self.openAIEmbeddingBody, context(.ollamaEmbed, .openaiEmbeddings))
        #expect(b == J(#"{"model":"client-model","embeddings":[[0.5,-1],[2,3]],"total_duration":0,"load_duration":0,"prompt_eval_count":8}"#))
        let (old, _) = try translated(Self.openAIEmbeddingBody, context(.ollamaEmbeddings, .openaiEmbeddings))
        #expect(old == J(#"{"embedding":[0.5,-1]}"#))
        let (none, _) = try translated(#"{"data":[]}"#, context(.ollamaEmbeddings, .openaiEmbeddings))
        #expect(none == J(#"{"embedding":[]}"#))
    }

    @Test func embeddingWithoutVectorsIsAnEngineFailure() {
        guard case .failure(let e) = translate(#"{"object":"list"}"#, context(.openaiEmbeddings, .ollamaEmbed)) else {
            Issue.record("accepted")
            return
        }
        #expect(e.status == 502)
    }

    @Test func contextFromRequest() throws {
        let req = try request(.ollamaGenerate, #"{"model":"llama3","prompt":"x"}"#)
        let eng = EngineRequestBuilder.build(req, engine: .openai, engineModel: "tiny")
        let ctx = ResponseContext(request: req, engine: eng, id: "x", startNanos: 5)
        #expect(ctx.clientRoute == .ollamaGenerate && ctx.engineRoute == .openaiChat && ctx.clientModel == "llama3" && !ctx.includeUsage)
    }
}
