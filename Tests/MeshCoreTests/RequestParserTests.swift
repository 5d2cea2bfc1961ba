import MeshCore
import Testing

@Suite struct RequestParserFieldErrors {
    struct Case: Sendable, CustomTestStringConvertible {
        let route: InferenceRoute
        let body: String
        let param: String?
        let code: String
        init(_ route: InferenceRoute, _ body: String, _ param: String?, code: String = "invalid_value") {
            self.route = route
            self.body = body
            self.param = param
            self.code = code
        }
        var testDescription: String { "\(route.rawValue) \(body)" }
    }

    static let msg = #""messages":[{"role":"user","content":"hi"}]"#

    static let cases: [Case] = [
        // body and model
        Case(.openaiChat, "[]", nil, code: "invalid_json"),
        Case(.openaiChat, "\"x\"", nil, code: "invalid_json"),
        Case(.openaiChat, "{", nil, code: "invalid_json"),
        Case(.ollamaChat, "", nil, code: "invalid_json"),
        Case(.openaiChat, "{\(msg)}", "model", code: "missing_field"),
        Case(.openaiChat, #"{"model":null,\#(msg)}"#, "model"),
        Case(.openaiChat, #"{"model":"",\#(msg)}"#, "model"),
        Case(.openaiChat, #"{"model":"  \t",\#(msg)}"#, "model"),
        Case(.ollamaGenerate, #"{"model":5}"#, "model"),
        Case(.ollamaEmbed, #"{"model":["m"],"input":"x"}"#, "model"),
        // messages
        Case(.openaiChat, #"{"model":"m"}"#, "messages", code: "missing_field"),
        Case(.openaiChat, #"{"model":"m","messages":{}}"#, "messages"),
        Case(.openaiChat, #"{"model":"m","messages":"hi"}"#, "messages"),
        Case(.openaiChat, #"{"model":"m","messages":[]}"#, "messages"),
        Case(.openaiChat, #"{"model":"m","messages":[5]}"#, "messages[0]"),
        Case(.openaiChat, #"{"model":"m","messages":[{"role":"user","content":"a"},{"content":"b"}]}"#, "messages[1].role"),
        Case(.openaiChat, #"{"model":"m","messages":[{"role":3,"content":"b"}]}"#, "messages[0].role"),
        Case(.openaiChat, #"{"model":"m","messages":[{"role":"wizard","content":"b"}]}"#, "messages[0].role"),
        Case(.openaiChat, #"{"model":"m","messages":[{"role":"user","content":5}]}"#, "messages[0].content"),
        Case(.openaiChat, #"{"model":"m","messages":[{"role":"user","content":{"text":"x"}}]}"#, "messages[0].content"),
        Case(.openaiChat, #"{"model":"m","messages":[{"role":"user"}]}"#, "messages[0].content"),
        Case(.openaiChat, #"{"model":"m","messages":[{"role":"system","content":null}]}"#, "messages[0].content"),
        Case(.openaiChat, #"{"model":"m","messages":[{"role":"user","content":[{"type":"audio"}]}]}"#, "messages[0].content[0].type"),
        Case(.openaiChat, #"{"model":"m","messages":[{"role":"user","content":[5]}]}"#, "messages[0].content[0].type"),
        Case(.openaiChat, #"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":1}]}]}"#, "messages[0].content[0].text"),
        Case(.openaiChat, #"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{}}]}]}"#, "messages[0].content[1].image_url"),
        Case(.ollamaChat, #"{"model":"m","messages":{}}"#, "messages"),
        Case(.ollamaChat, #"{"model":"m","messages":[{"role":"user","content":"a"},[]]}"#, "messages[1]"),
        Case(.ollamaChat, #"{"model":"m","messages":[{"role":"developer","content":"a"}]}"#, "messages[0].role"),
        Case(.ollamaChat, #"{"model":"m","messages":[{"content":"a"}]}"#, "messages[0].role"),
        Case(.ollamaChat, #"{"model":"m","messages":[{"role":"user","content":["a"]}]}"#, "messages[0].content"),
        Case(.ollamaChat, #"{"model":"m","messages":[{"role":"user","content":"a","images":"b64"}]}"#, "messages[0].images"),
        Case(.ollamaChat, #"{"model":"m","messages":[{"role":"user","content":"a","images":["b64",7]}]}"#, "messages[0].images[1]"),
        // OpenAI sampling fields
        Case(.openaiChat, #"{"model":"m",\#(msg),"max_tokens":"10"}"#, "max_tokens"),
        Case(.openaiChat, #"{"model":"m",\#(msg),"max_tokens":1.5}"#, "max_tokens"),
        Case(.openaiChat, #"{"model":"m",\#(msg),"max_tokens":-1}"#, "max_tokens"),
        Case(.openaiChat, #"{"model":"m",\#(msg),"max_tokens":1e300}"#, "max_tokens"),
        Case(.openaiChat, #"{"model":"m",\#(msg),"max_completion_tokens":true}"#, "max_completion_tokens"),
        Case(.openaiCompletion, #"{"model":"m","prompt":"p","max_tokens":[1]}"#, "max_tokens"),
        Case(.openaiChat, #"{"model":"m",\#(msg),"temperature":2.5}"#, "temperature"),
        Case(.openaiChat, #"{"model":"m",\#(msg),"temperature":-0.1}"#, "temperature"),
        Case(.openaiChat, #"{"model":"m",\#(msg),"temperature":"hot"}"#, "temperature"),
        Case(.openaiChat, #"{"model":"m",\#(msg),"top_p":1.5}"#, "top_p"),
        Case(.openaiChat, #"{"model":"m",\#(msg),"top_p":"x"}"#, "top_p"),
        Case(.openaiChat, #"{"model":"m",\#(msg),"seed":0.5}"#, "seed"),
        Case(.openaiChat, #"{"model":"m",\#(msg),"frequency_penalty":3}"#, "frequency_penalty"),
        Case(.openaiChat, #"{"model":"m",\#(msg),"presence_penalty":-3}"#, "presence_penalty"),
        Case(.openaiChat, #"{"model":"m",\#(msg),"stop":5}"#, "stop"),
        Case(.openaiChat, #"{"model":"m",\#(msg),"stop":["a",5]}"#, "stop"),
        Case(.openaiChat, #"{"model":"m",\#(msg),"stop":{}}"#, "stop"),
        Case(.openaiChat, #"{"model":"m",\#(msg),"stream":"true"}"#, "stream"),
        Case(.openaiChat, #"{"model":"m",\#(msg),"stream":1}"#, "stream"),
        Case(.openaiEmbeddings, #"{"model":"m","input":"x","stream":"no"}"#, "stream"),
        Case(.openaiChat, #"{"model":"m",\#(msg),"stream_options":true}"#, "stream_options"),
        Case(.openaiChat, #"{"model":"m",\#(msg),"stream":true,"stream_options":{"include_usage":"yes"}}"#, "stream_options.include_usage"),
        Case(.openaiChat, #"{"model":"m",\#(msg),"stream":true,"stream_options":{"include_usage":1}}"#, "stream_options.include_usage"),
        // prompts and inputs
        Case(.openaiCompletion, #"{"model":"m"}"#, "prompt", code: "missing_field"),
        Case(.openaiCompletion, #"{"model":"m","prompt":5}"#, "prompt"),
        Case(.openaiCompletion, #"{"model":"m","prompt":["a","b"]}"#, "prompt"),
        Case(.openaiCompletion, #"{"model":"m","prompt":[]}"#, "prompt"),
        Case(.openaiCompletion, #"{"model":"m","prompt":[1]}"#, "prompt"),
        Case(.ollamaGenerate, #"{"model":"m","prompt":5}"#, "prompt"),
        Case(.ollamaGenerate, #"{"model":"m","prompt":["a"]}"#, "prompt"),
        Case(.ollamaGenerate, #"{"model":"m","prompt":"a","system":1}"#, "system"),
        Case(.ollamaGenerate, #"{"model":"m","prompt":"a","raw":"yes"}"#, "raw"),
        Case(.ollamaEmbeddings, #"{"model":"m"}"#, "prompt", code: "missing_field"),
        Case(.ollamaEmbeddings, #"{"model":"m","prompt":["a"]}"#, "prompt"),
        Case(.openaiEmbeddings, #"{"model":"m"}"#, "input", code: "missing_field"),
        Case(.openaiEmbeddings, #"{"model":"m","input":5}"#, "input"),
        Case(.openaiEmbeddings, #"{"model":"m","input":[]}"#, "input"),
        Case(.openaiEmbeddings, #"{"model":"m","input":null}"#, "input"),
        Case(.openaiEmbeddings, #"{"model":"m","input":["a",2]}"#, "input[1]"),
        // Token-id forms: every id a non-negative integer, no empty input.
        // A mix of ids and text reads as text: the first element that is not a string is named.
        Case(.openaiEmbeddings, #"{"model":"m","input":[1,"a"]}"#, "input[0]"),
        Case(.openaiEmbeddings, #"{"model":"m","input":["a",[1]]}"#, "input[1]"),
        Case(.openaiEmbeddings, #"{"model":"m","input":[1,-2]}"#, "input[1]"),
        Case(.openaiEmbeddings, #"{"model":"m","input":[1,2.5]}"#, "input[1]"),
        Case(.openaiEmbeddings, #"{"model":"m","input":[[1,2],[]]}"#, "input[1]"),
        Case(.openaiEmbeddings, #"{"model":"m","input":[[1,2],"a"]}"#, "input[0]"),
        Case(.openaiEmbeddings, #"{"model":"m","input":[[1,2],[3,null]]}"#, "input[1][1]"),
        Case(.ollamaEmbed, #"{"model":"m","input":[1,2]}"#, "input[0]"),
        Case(.ollamaEmbed, #"{"model":"m"}"#, "input", code: "missing_field"),
        Case(.ollamaEmbed, #"{"model":"m","input":{}}"#, "input"),
        Case(.ollamaEmbed, #"{"model":"m","input":[null]}"#, "input[0]"),
        // Ollama options and format
        Case(.ollamaChat, #"{"model":"m","messages":[],"options":[]}"#, "options"),
        Case(.ollamaChat, #"{"model":"m","messages":[],"options":{"num_predict":"10"}}"#, "options.num_predict"),
        Case(.ollamaChat, #"{"model":"m","messages":[],"options":{"num_predict":-3}}"#, "options.num_predict"),
        Case(.ollamaGenerate, #"{"model":"m","options":{"num_predict":2.5}}"#, "options.num_predict"),
        Case(.ollamaGenerate, #"{"model":"m","options":{"temperature":101}}"#, "options.temperature"),
        Case(.ollamaGenerate, #"{"model":"m","options":{"top_p":2}}"#, "options.top_p"),
        Case(.ollamaGenerate, #"{"model":"m","options":{"top_k":-1}}"#, "options.top_k"),
        Case(.ollamaGenerate, #"{"model":"m","options":{"seed":"s"}}"#, "options.seed"),
        Case(.ollamaGenerate, #"{"model":"m","options":{"stop":[1]}}"#, "options.stop"),
        Case(.ollamaGenerate, #"{"model":"m","options":{"frequency_penalty":"x"}}"#, "options.frequency_penalty"),
        Case(.ollamaGenerate, #"{"model":"m","format":"xml"}"#, "format"),
        Case(.ollamaChat, #"{"model":"m","messages":[],"format":5}"#, "format"),
        Case(.ollamaChat, #"{"model":"m","messages":[],"format":["json"]}"#, "format"),
        Case(.ollamaChat, #"{"model":"m","messages":[],"stream":"false"}"#, "stream"),
    ]

    @Test(arguments: cases) func fieldError(_ c: Case) {
        let e = requestError(c.route, c.body)
        #expect(e != nil, "accepted")
        guard let e else { return }
        #expect(e.status == 400)
        #expect(e.param == c.param)
        #expect(e.code == c.code)
        #expect(e.type == "invalid_request_error")
        #expect(!e.message.isEmpty)
        if let p = c.param { #expect(e.message.contains(p), "message should name the field: \(e.message)") }
    }

    @Test func badJSONMessageCarriesTheOffset() {
        let e = requestError(.openaiChat, #"{"model":"m",}"#)
        #expect(e?.code == "invalid_json")
        #expect(e?.message.contains("byte 13") == true, "\(String(describing: e))")
    }
}

@Suite struct RequestParserSuccess {
    @Test func streamDefaults() throws {
        #expect(try request(.openaiChat, #"{"model":"m","messages":[{"role":"user","content":"x"}]}"#).stream == false)
        #expect(try request(.openaiCompletion, #"{"model":"m","prompt":"x"}"#).stream == false)
        #expect(try request(.ollamaChat, #"{"model":"m","messages":[]}"#).stream == true)
        #expect(try request(.ollamaGenerate, #"{"model":"m","prompt":"x"}"#).stream == true)
        #expect(try request(.ollamaGenerate, #"{"model":"m","prompt":"x","stream":null}"#).stream == true)
        #expect(try request(.ollamaGenerate, #"{"model":"m","prompt":"x","stream":false}"#).stream == false)
        #expect(try request(.openaiChat, #"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":true}"#).stream == true)
        // Embeddings never stream, whatever the client says.
        #expect(try request(.ollamaEmbed, #"{"model":"m","input":"x"}"#).stream == false)
        #expect(try request(.ollamaEmbeddings, #"{"model":"m","prompt":"x","stream":true}"#).stream == false)
        #expect(try request(.openaiEmbeddings, #"{"model":"m","input":"x","stream":true}"#).stream == false)
    }

    @Test func openAIEmbeddingTokenIDs() throws {
        let one = try request(.openaiEmbeddings, #"{"model":"m","input":[450,4996,0]}"#)
        #expect(one.tokenInputs == [[450, 4996, 0]])
        #expect(one.inputs.isEmpty)
        #expect(one.estimatedPromptTokens == 3)
        let many = try request(.openaiEmbeddings, #"{"model":"m","input":[[1,2],[3]]}"#)
        #expect(many.tokenInputs == [[1, 2], [3]])
        let text = try request(.openaiEmbeddings, #"{"model":"m","input":["a","b"]}"#)
        #expect(text.tokenInputs.isEmpty)
        #expect(text.inputs == ["a", "b"])
        // Same dialect: the ids reach the engine as the client sent them.
        let er = EngineRequestBuilder.build(many, engine: .openai, engineModel: "e")
        #expect(er.body["input"] == [[1, 2], [3]])
        #expect(er.body["model"] == "e")
    }

    @Test func openAIChatFields() throws {
        let r = try request(.openaiChat, #"""
            {"model":"llama3","messages":[{"role":"developer","content":"be brief"},{"role":"user","content":"hi"},
             {"role":"assistant","content":null,"tool_calls":[]},{"role":"tool","content":"42","tool_call_id":"t"}],
             "stream":true,"stream_options":{"include_usage":true},"max_tokens":50,"max_completion_tokens":20,
             "temperature":0.7,"top_p":0.9,"seed":-3,"frequency_penalty":0.5,"presence_penalty":-0.5,"stop":"END",
             "response_format":{"type":"json_object"},"user":"u1","logit_bias":{}}
            """#)
        #expect(r.model == "llama3")
        #expect(r.route == .openaiChat && r.clientDialect == .openai && r.operation == .chat)
        #expect(r.stream && r.includeUsage)
        #expect(r.messages.map(\.role) == ["system", "user", "assistant", "tool"])
        #expect(r.messages.map(\.content) == ["be brief", "hi", "", "42"])
        #expect(r.options.maxTokens == 20)  // max_completion_tokens wins
        #expect(r.options.temperature == 0.7)
        #expect(r.options.topP == 0.9)
        #expect(r.options.seed == -3)
        #expect(r.options.frequencyPenalty == 0.5)
        #expect(r.options.presencePenalty == -0.5)
        #expect(r.options.stop == ["END"])
        #expect(r.options.jsonMode)
        #expect(r.body["user"]?.stringValue == "u1")  // original body kept
    }

    @Test func maxCompletionTokensWinsInEitherOrder() throws {
        let a = try request(.openaiChat, #"{"model":"m","messages":[{"role":"user","content":"x"}],"max_completion_tokens":7,"max_tokens":9}"#)
        #expect(a.options.maxTokens == 7)
        let b = try request(.openaiChat, #"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":9,"max_completion_tokens":null}"#)
        #expect(b.options.maxTokens == 9)
        let c = try request(.openaiChat, #"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":0}"#)
        #expect(c.options.maxTokens == 0)
        let d = try request(.openaiChat, #"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":5.0}"#)
        #expect(d.options.maxTokens == 5)  // integral doubles are integers
    }

    @Test func includeUsageDefaultsOff() throws {
        let r = try request(.openaiChat, #"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":true,"stream_options":{}}"#)
        #expect(r.includeUsage == false)
        let n = try request(.openaiChat, #"{"model":"m","messages":[{"role":"user","content":"x"}],"stream_options":null}"#)
        #expect(n.includeUsage == false)
    }

    @Test func contentParts() throws {
        let r = try request(.openaiChat, #"""
            {"model":"m","messages":[{"role":"user","content":[
              {"type":"text","text":"what is"},
              {"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA","detail":"low"}},
              {"type":"text","text":"in this picture?"},
              {"type":"image_url","image_url":"https://example.invalid/cat.png"}]}]}
            """#)
        #expect(r.messages.count == 1)
        #expect(r.messages[0].content == "what is\nin this picture?")
        #expect(r.messages[0].images == ["data:image/png;base64,AAAA", "https://example.invalid/cat.png"])
        let empty = try request(.openaiChat, #"{"model":"m","messages":[{"role":"user","content":[]}]}"#)
        #expect(empty.messages[0].content == "")
    }

    @Test func stopForms() throws {
        let base = #"{"model":"m","messages":[{"role":"user","content":"x"}]"#
        #expect(try request(.openaiChat, base + #","stop":["a","b"]}"#).options.stop == ["a", "b"])
        #expect(try request(.openaiChat, base + #","stop":null}"#).options.stop == [])
        #expect(try request(.openaiChat, base + #","stop":[]}"#).options.stop == [])
    }

    @Test func responseFormats() throws {
        let base = #"{"model":"m","messages":[{"role":"user","content":"x"}]"#
        #expect(try request(.openaiChat, base + #","response_format":{"type":"json_schema","json_schema":{}}}"#).options.jsonMode)
        #expect(try request(.openaiChat, base + #","response_format":{"type":"text"}}"#).options.jsonMode == false)
        #expect(try request(.openaiChat, base + "}").options.jsonMode == false)
    }

    @Test func completionPrompt() throws {
        #expect(try request(.openaiCompletion, #"{"model":"m","prompt":"once"}"#).prompt == "once")
        #expect(try request(.openaiCompletion, #"{"model":"m","prompt":["upon"]}"#).prompt == "upon")
    }

    @Test func ollamaChatFields() throws {
        let r = try request(.ollamaChat, #"""
            {"model":"llama3","messages":[{"role":"system","content":"s"},{"role":"user","content":"look","images":["QUJD","REVG"]},
             {"role":"assistant"}],"format":"json","keep_alive":"5m",
             "options":{"num_predict":64,"temperature":1.5,"top_p":0.5,"top_k":40,"seed":7,"stop":["x"],
                        "frequency_penalty":1,"presence_penalty":2,"num_ctx":4096}}
            """#)
        #expect(r.stream)
        #expect(r.messages == [ChatMessage(role: "system", content: "s"), ChatMessage(role: "user", content: "look", images: ["QUJD", "REVG"]),
                               ChatMessage(role: "assistant", content: "")])
        #expect(r.options.maxTokens == 64)
        #expect(r.options.temperature == 1.5)
        #expect(r.options.topP == 0.5)
        #expect(r.options.topK == 40)
        #expect(r.options.seed == 7)
        #expect(r.options.stop == ["x"])
        #expect(r.options.frequencyPenalty == 1)
        #expect(r.options.presencePenalty == 2)
        #expect(r.options.jsonMode)
        #expect(r.includeUsage == false)
    }

    @Test func ollamaNumPredictNegativeMeansUnlimited() throws {
        #expect(try request(.ollamaGenerate, #"{"model":"m","options":{"num_predict":-1}}"#).options.maxTokens == nil)
        #expect(try request(.ollamaGenerate, #"{"model":"m","options":{"num_predict":-2}}"#).options.maxTokens == nil)
        #expect(try request(.ollamaGenerate, #"{"model":"m","options":{"num_predict":0}}"#).options.maxTokens == 0)
    }

    @Test func ollamaFormats() throws {
        #expect(try request(.ollamaGenerate, #"{"model":"m","format":{"type":"object"}}"#).options.jsonMode)
        #expect(try request(.ollamaGenerate, #"{"model":"m","format":""}"#).options.jsonMode == false)
        #expect(try request(.ollamaGenerate, #"{"model":"m","format":null}"#).options.jsonMode == false)
    }

    @Test func ollamaGenerateFields() throws {
        let r = try request(.ollamaGenerate, #"{"model":"m","prompt":"why","system":"sys","raw":true,"images":["QQ=="]}"#)
        #expect(r.prompt == "why" && r.system == "sys" && r.rawPrompt)
        let load = try request(.ollamaGenerate, #"{"model":"m"}"#)  // Ollama's "load the model" request
        #expect(load.prompt == "" && load.system == nil && !load.rawPrompt)
    }

    @Test func embeddingInputs() throws {
        #expect(try request(.openaiEmbeddings, #"{"model":"m","input":"one"}"#).inputs == ["one"])
        #expect(try request(.openaiEmbeddings, #"{"model":"m","input":["a","b"]}"#).inputs == ["a", "b"])
        #expect(try request(.ollamaEmbed, #"{"model":"m","input":["a"]}"#).inputs == ["a"])
        #expect(try request(.ollamaEmbeddings, #"{"model":"m","prompt":"p"}"#).inputs == ["p"])
    }

    @Test func modelNameKeptAsSent() throws {
        #expect(try request(.ollamaGenerate, #"{"model":"llama3:8b-instruct"}"#).model == "llama3:8b-instruct")
        #expect(try request(.ollamaGenerate, #"{"model":"a","model":"b"}"#).model == "b")  // last duplicate wins
    }

    @Test func estimatedPromptTokens() throws {
        let r = try request(.openaiChat, #"{"model":"m","messages":[{"role":"user","content":"\#(String(repeating: "a", count: 400))"}]}"#)
        #expect(r.estimatedPromptTokens == 100)
        #expect(try request(.ollamaGenerate, #"{"model":"m"}"#).estimatedPromptTokens == 1)
    }

    @Test func routeProperties() {
        #expect(InferenceRoute.allCases.count == 7)
        for r in InferenceRoute.allCases {
            #expect(r.dialect == (r.rawValue.hasPrefix("/v1/") ? .openai : .ollama))
        }
        #expect(InferenceRoute.ollamaEmbeddings.operation == .embedding)
        #expect(InferenceRoute.ollamaGenerate.operation == .completion)
        #expect(InferenceRoute.openaiChat.operation == .chat)
    }
}

@Suite struct OllamaKeepAliveTests {
    func parse(_ route: InferenceRoute, _ body: String) throws -> InferenceRequest {
        try RequestParser.parse(route: route, body: Array(body.utf8))
    }

    @Test func keepAliveIsReadAsSecondsFromNumbersAndGoDurations() {
        let cases: [(JSON, Double?)] = [(.integer(300), 300), (.number(1.5), 1.5), (.integer(0), 0), (.integer(-1), -1),
                                        ("5m", 300), ("1h30m", 5400), ("0s", 0), ("0", 0), ("-1", -1), ("-1m", -60),
                                        ("250ms", 0.25), ("2.5s", 2.5), (" 10m ", 600),
                                        ("soon", nil), ("5x", nil), ("m", nil), ("", nil), (.bool(true), nil)]
        for (value, want) in cases {
            #expect(RequestParser.keepAlive(value) == want, "\(value)")
        }
    }

    @Test func ollamaRequestsCarryTheirKeepAliveAndABadOneNamesTheField() throws {
        #expect(try parse(.ollamaChat, #"{"model":"m","messages":[{"role":"user","content":"x"}],"keep_alive":"5m"}"#).keepAliveSeconds == 300)
        #expect(try parse(.ollamaGenerate, #"{"model":"m","prompt":"x"}"#).keepAliveSeconds == nil)
        #expect(try parse(.ollamaGenerate, #"{"model":"m","prompt":"x","keep_alive":null}"#).keepAliveSeconds == nil)
        #expect(throws: APIError.self) { try parse(.ollamaGenerate, #"{"model":"m","prompt":"x","keep_alive":"later"}"#) }
        do {
            _ = try RequestParser.parse(route: .ollamaGenerate, body: Array(#"{"model":"m","prompt":"x","keep_alive":[1]}"#.utf8))
            Issue.record("a list as keep_alive was taken")
        } catch {
            #expect(error.status == 400 && error.message.contains("keep_alive"))
        }
    }

    @Test func anEmptyGenerateOrChatOnlyLoadsOrUnloads() throws {
        #expect(try parse(.ollamaGenerate, #"{"model":"m"}"#).isLoadOnly)
        #expect(try parse(.ollamaGenerate, #"{"model":"m","prompt":"","keep_alive":0}"#).isLoadOnly)
        #expect(try parse(.ollamaChat, #"{"model":"m","messages":[],"keep_alive":0}"#).isLoadOnly)
        #expect(try parse(.ollamaGenerate, #"{"model":"m","prompt":"hi"}"#).isLoadOnly == false)
        #expect(try parse(.ollamaGenerate, #"{"model":"m","prompt":"","images":["aGk="]}"#).isLoadOnly == false)
        #expect(try parse(.ollamaChat, #"{"model":"m","messages":[{"role":"user","content":"x"}]}"#).isLoadOnly == false)
        #expect(try parse(.openaiCompletion, #"{"model":"m","prompt":""}"#).isLoadOnly == false)
    }

    /// As Ollama: a chat with no `messages` (absent or null) is an empty one, which loads the model.
    @Test func ollamaChatWithoutMessagesLoadsTheModel() throws {
        for body in [#"{"model":"m"}"#, #"{"model":"m","messages":null}"#, #"{"model":"m","messages":[]}"#] {
            let r = try RequestParser.parse(route: .ollamaChat, body: Array(body.utf8))
            #expect(r.isLoadOnly && r.messages.isEmpty, "\(body)")
        }
    }
}
