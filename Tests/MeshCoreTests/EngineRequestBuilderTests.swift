import MeshCore
import Testing

@Suite struct EngineRequestBuilderTests {
    func build(_ route: InferenceRoute, _ body: String, engine: Dialect, model: String = "engine-model") throws -> EngineRequest {
        EngineRequestBuilder.build(try request(route, body), engine: engine, engineModel: model)
    }

    // MARK: OpenAI client → OpenAI engine

    @Test func openAIPassthroughKeepsUnknownFieldsAndOrder() throws {
        let e = try build(.openaiChat, #"""
            {"model":"client-name","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function"}],"logit_bias":{"5":1},"n":1}
            """#, engine: .openai)
        #expect(e.path == "/v1/chat/completions")
        #expect(e.engineRoute == .openaiChat)
        #expect(e.stream == false)
        #expect(keys(e.body) == ["model", "messages", "tools", "logit_bias", "n"])
        #expect(e.body["model"]?.stringValue == "engine-model")
        #expect(e.body["tools"] == J(#"[{"type":"function"}]"#))
        #expect(e.body["logit_bias"] == J(#"{"5":1}"#))
        #expect(e.body["stream_options"] == nil)  // not streaming: nothing added
    }

    @Test func clientBodyIsRelayedAsItCameOnlyWhenNothingChanges() throws {
        let chat = #"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#
        #expect(try build(.openaiChat, chat, engine: .openai, model: "m").isClientBody)
        #expect(try !build(.openaiChat, chat, engine: .openai, model: "m:latest").isClientBody)  // model renamed
        #expect(try !build(.openaiChat, #"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}"#, engine: .openai, model: "m").isClientBody)  // include_usage
        #expect(try !build(.openaiChat, chat, engine: .ollama, model: "m").isClientBody)  // translated
        #expect(try build(.openaiEmbeddings, #"{"model":"m","input":[1,2]}"#, engine: .openai, model: "m").isClientBody)
        #expect(try build(.ollamaChat, #"{"model":"m","messages":[],"stream":false}"#, engine: .ollama, model: "m").isClientBody)
        #expect(try !build(.ollamaChat, #"{"model":"m","messages":[]}"#, engine: .ollama, model: "m").isClientBody)  // stream made explicit
        #expect(try build(.ollamaEmbed, #"{"model":"m","input":"x"}"#, engine: .ollama, model: "m").isClientBody)
        // A duplicated routing key: rebuilt, never relayed as it came.
        #expect(try !build(.openaiChat, #"{"model":"x","model":"m","messages":[{"role":"user","content":"hi"}]}"#, engine: .openai, model: "m").isClientBody)
        #expect(try !build(.ollamaChat, #"{"model":"m","messages":[],"stream":true,"stream":false}"#, engine: .ollama, model: "m").isClientBody)
        let e = try build(.openaiChat, chat, engine: .openai, model: "m")
        #expect(e.body == J(chat) && e.path == "/v1/chat/completions" && !e.stream)
    }

    @Test func openAIPassthroughAddsIncludeUsageOnlyWhenStreaming() throws {
        let s = try build(.openaiChat, #"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}"#, engine: .openai)
        #expect(s.stream)
        #expect(s.body["stream_options"] == J(#"{"include_usage":true}"#))
        // Other stream_options members survive; a client's include_usage:false is overridden (meshd counts tokens).
        let k = try build(.openaiCompletion, #"{"model":"m","prompt":"p","stream":true,"stream_options":{"include_usage":false,"x":1}}"#, engine: .openai)
        #expect(k.path == "/v1/completions")
        #expect(k.body["stream_options"]?["include_usage"]?.boolValue == true)
        #expect(k.body["stream_options"]?["x"]?.intValue == 1)
        #expect(keys(k.body["stream_options"]) == ["include_usage", "x"])
        // stream:false with stream_options: left as the client sent it.
        let n = try build(.openaiChat, #"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":false,"stream_options":{"include_usage":false}}"#, engine: .openai)
        #expect(n.body["stream_options"]?["include_usage"]?.boolValue == false)
    }

    @Test func duplicateModelKeysCannotSmuggleAnotherModel() throws {
        let e = try build(.openaiChat, #"{"model":"other","messages":[{"role":"user","content":"hi"}],"model":"routed"}"#, engine: .openai)
        #expect(e.body["model"]?.stringValue == "engine-model")
        #expect(keys(e.body).filter { $0 == "model" }.count == 1)
        let o = try build(.ollamaChat, #"{"model":"other","messages":[],"model":"routed","stream":true,"stream":false}"#, engine: .ollama)
        #expect(keys(o.body).filter { $0 == "model" }.count == 1)
        #expect(keys(o.body).filter { $0 == "stream" }.count == 1)
        #expect(o.body["stream"]?.boolValue == false)
    }

    @Test func openAIEmbeddingsPassthrough() throws {
        let e = try build(.openaiEmbeddings, #"{"model":"m","input":["a","b"],"encoding_format":"float"}"#, engine: .openai)
        #expect(e.path == "/v1/embeddings" && !e.stream && e.engineRoute == .openaiEmbeddings)
        #expect(e.body == J(#"{"model":"engine-model","input":["a","b"],"encoding_format":"float"}"#))
    }

    // MARK: Ollama client → OpenAI engine

    @Test func ollamaChatToOpenAIChat() throws {
        let e = try build(.ollamaChat, #"""
            {"model":"llama3","messages":[{"role":"system","content":"s"},{"role":"user","content":"what?","images":["QUJD","data:image/jpeg;base64,REVG"]}],
             "format":"json","options":{"num_predict":32,"temperature":0.25,"top_p":0.5,"top_k":20,"seed":11,"stop":["\n\n"],"num_ctx":2048}}
            """#, engine: .openai)
        #expect(e.path == "/v1/chat/completions")
        #expect(e.engineRoute == .openaiChat)
        #expect(e.stream)  // Ollama streams by default
        let b = e.body
        #expect(b["model"]?.stringValue == "engine-model")
        #expect(b["max_tokens"]?.intValue == 32)
        #expect(b["temperature"]?.doubleValue == 0.25)
        #expect(b["top_p"]?.doubleValue == 0.5)
        #expect(b["top_k"]?.intValue == 20)
        #expect(b["seed"]?.intValue == 11)
        #expect(b["stop"] == J(#"["\n\n"]"#))
        #expect(b["response_format"] == J(#"{"type":"json_object"}"#))
        #expect(b["stream"]?.boolValue == true)
        #expect(b["stream_options"] == J(#"{"include_usage":true}"#))
        #expect(b["options"] == nil && b["format"] == nil && b["num_ctx"] == nil)
        let msgs = b["messages"]?.arrayValue ?? []
        #expect(msgs.count == 2)
        #expect(msgs.first == J(#"{"role":"system","content":"s"}"#))
        #expect(msgs.last == J(#"""
            {"role":"user","content":[{"type":"text","text":"what?"},
              {"type":"image_url","image_url":{"url":"data:image/png;base64,QUJD"}},
              {"type":"image_url","image_url":{"url":"data:image/jpeg;base64,REVG"}}]}
            """#))
    }

    @Test func ollamaChatNotStreamingHasNoStreamOptions() throws {
        let e = try build(.ollamaChat, #"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":false}"#, engine: .openai)
        #expect(!e.stream)
        #expect(e.body["stream"]?.boolValue == false)
        #expect(e.body["stream_options"] == nil)
        #expect(e.body["max_tokens"] == nil && e.body["response_format"] == nil && e.body["stop"] == nil)
    }

    @Test func templatedGenerateBecomesChat() throws {
        let e = try build(.ollamaGenerate, #"{"model":"m","prompt":"why is the sky blue","system":"be short","images":["QUJD"],"stream":false,"options":{"num_predict":5}}"#, engine: .openai)
        #expect(e.path == "/v1/chat/completions" && e.engineRoute == .openaiChat && !e.stream)
        #expect(e.body["messages"] == J(#"""
            [{"role":"system","content":"be short"},
             {"role":"user","content":[{"type":"text","text":"why is the sky blue"},{"type":"image_url","image_url":{"url":"data:image/png;base64,QUJD"}}]}]
            """#))
        #expect(e.body["max_tokens"]?.intValue == 5)
        let noSystem = try build(.ollamaGenerate, #"{"model":"m","prompt":"hi","system":""}"#, engine: .openai)
        #expect(noSystem.body["messages"] == J(#"[{"role":"user","content":"hi"}]"#))
    }

    @Test func rawGenerateBecomesCompletion() throws {
        let e = try build(.ollamaGenerate, #"{"model":"m","prompt":"<s>[INST] hi [/INST]","raw":true,"options":{"temperature":0,"stop":["</s>"]}}"#, engine: .openai)
        #expect(e.path == "/v1/completions" && e.engineRoute == .openaiCompletion && e.stream)
        #expect(e.body["prompt"]?.stringValue == "<s>[INST] hi [/INST]")
        #expect(e.body["temperature"]?.doubleValue == 0)
        #expect(e.body["stop"] == J(#"["</s>"]"#))
        #expect(e.body["messages"] == nil)
        #expect(e.body["stream_options"] == J(#"{"include_usage":true}"#))
        #expect(keys(e.body).first == "model")
    }

    @Test func ollamaEmbeddingsToOpenAI() throws {
        let embed = try build(.ollamaEmbed, #"{"model":"m","input":"one","truncate":true}"#, engine: .openai)
        #expect(embed.path == "/v1/embeddings" && embed.engineRoute == .openaiEmbeddings && !embed.stream)
        #expect(embed.body == J(#"{"model":"engine-model","input":["one"]}"#))
        let old = try build(.ollamaEmbeddings, #"{"model":"m","prompt":"p"}"#, engine: .openai)
        #expect(old.path == "/v1/embeddings" && old.engineRoute == .openaiEmbeddings)
        #expect(old.body == J(#"{"model":"engine-model","input":"p"}"#))
    }

    // MARK: OpenAI client → Ollama engine

    @Test func openAIChatToOllamaChat() throws {
        let e = try build(.openaiChat, #"""
            {"model":"gpt","messages":[{"role":"developer","content":"d"},{"role":"user","content":[{"type":"text","text":"see"},
              {"type":"image_url","image_url":{"url":"data:image/png;base64,QUJD"}},{"type":"image_url","image_url":{"url":"RAW"}}]}],
             "stream":true,"max_tokens":12,"temperature":0.5,"top_p":0.25,"seed":3,"stop":"END","frequency_penalty":0.5,"presence_penalty":0.25,
             "response_format":{"type":"json_object"}}
            """#, engine: .ollama)
        #expect(e.path == "/api/chat" && e.engineRoute == .ollamaChat && e.stream)
        #expect(e.body["stream"]?.boolValue == true)
        #expect(e.body["format"]?.stringValue == "json")
        #expect(e.body["options"] == J(#"{"num_predict":12,"temperature":0.5,"top_p":0.25,"seed":3,"frequency_penalty":0.5,"presence_penalty":0.25,"stop":["END"]}"#))
        #expect(e.body["messages"] == J(#"""
            [{"role":"system","content":"d"},{"role":"user","content":"see","images":["QUJD","RAW"]}]
            """#))
        #expect(e.body["stream_options"] == nil && e.body["max_tokens"] == nil)
    }

    @Test func openAIChatToOllamaWithoutOptions() throws {
        let e = try build(.openaiChat, #"{"model":"gpt","messages":[{"role":"user","content":"x"}]}"#, engine: .ollama)
        #expect(e.body == J(#"{"model":"engine-model","messages":[{"role":"user","content":"x"}],"stream":false}"#))
        #expect(!e.stream)  // OpenAI's default, made explicit for Ollama (which streams by default)
    }

    @Test func openAICompletionToRawGenerate() throws {
        let e = try build(.openaiCompletion, #"{"model":"m","prompt":"Once upon","max_tokens":7,"stream":true}"#, engine: .ollama)
        #expect(e.path == "/api/generate" && e.engineRoute == .ollamaGenerate && e.stream)
        #expect(e.body["raw"]?.boolValue == true)
        #expect(e.body["prompt"]?.stringValue == "Once upon")
        #expect(e.body["options"]?["num_predict"]?.intValue == 7)
        #expect(e.body["stream"]?.boolValue == true)
    }

    @Test func openAIEmbeddingsToOllamaEmbed() throws {
        let e = try build(.openaiEmbeddings, #"{"model":"m","input":"solo"}"#, engine: .ollama)
        #expect(e.path == "/api/embed" && e.engineRoute == .ollamaEmbed && !e.stream)
        #expect(e.body == J(#"{"model":"engine-model","input":["solo"]}"#))
    }

    // MARK: Ollama client → Ollama engine

    @Test func ollamaPassthroughMakesStreamExplicit() throws {
        let e = try build(.ollamaChat, #"{"model":"llama3","messages":[],"keep_alive":-1}"#, engine: .ollama)
        #expect(e.path == "/api/chat" && e.stream)
        #expect(e.body == J(#"{"model":"engine-model","messages":[],"keep_alive":-1,"stream":true}"#))
        let g = try build(.ollamaGenerate, #"{"stream":false,"model":"llama3","prompt":"p"}"#, engine: .ollama)
        #expect(keys(g.body) == ["stream", "model", "prompt"])
        #expect(g.body["stream"]?.boolValue == false && !g.stream)
        let emb = try build(.ollamaEmbed, #"{"model":"m","input":"x"}"#, engine: .ollama)
        #expect(emb.body == J(#"{"model":"engine-model","input":"x"}"#))  // no stream field for embeddings
        let old = try build(.ollamaEmbeddings, #"{"model":"m","prompt":"x"}"#, engine: .ollama)
        #expect(old.path == "/api/embeddings" && old.engineRoute == .ollamaEmbeddings)
    }
}
