import MeshCore
#if canImport(Glibc)
import Glibc
#endif

/// The seed corpus: small valid inputs of every target, made with meshd's own encoders where it
/// has them (`meshd-fuzz seed Tests/Fuzz/corpus` wrote the committed files).
enum Seeds {
    static func write(to dir: String) -> Bool {
        mkdir(dir, 0o755)
        for target in FuzzTarget.allCases {
            let sub = dir + "/" + target.rawValue
            mkdir(sub, 0o755)
            for (name, bytes) in seeds(target) {
                guard Corpus.write(bytes, to: sub + "/" + name) else {
                    printError("cannot write \(sub)/\(name)\n")
                    return false
                }
            }
        }
        return true
    }

    static func seeds(_ target: FuzzTarget) -> [(String, [UInt8])] {
        switch target {
        case .api: return api
        case .http: return http
        case .wire: return wire
        case .txt: return txt
        case .config: return config
        case .stream: return stream
        }
    }

    static func utf8(_ s: String) -> [UInt8] { Array(s.utf8) }

    // MARK: api

    static let api: [(String, [UInt8])] = apiBodies.map { ($0.0, utf8($0.1.rawValue + "\n" + $0.2)) }

    static let apiBodies: [(String, InferenceRoute, String)] = [
        ("openai-chat", .openaiChat, #"{"model":"qwen2.5-7b","messages":[{"role":"system","content":"terse"},{"role":"user","content":[{"type":"text","text":"what is in it?"},{"type":"image_url","image_url":{"url":"data:image/png;base64,iVBO"}}]}],"stream":true,"stream_options":{"include_usage":true},"max_tokens":32,"temperature":0.2,"top_p":0.9,"stop":["END"],"seed":3,"response_format":{"type":"json_object"}}"#),
        ("openai-chat-tools", .openaiChat, #"{"model":"m","messages":[{"role":"user","content":"weather?"},{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"w","arguments":"{}"}}]},{"role":"tool","tool_call_id":"c1","content":"sunny"}],"tools":[{"type":"function","function":{"name":"w","parameters":{"type":"object"}}}]}"#),
        ("openai-completion", .openaiCompletion, #"{"model":"tiny","prompt":["Once","upon"],"max_tokens":8,"stream":false,"echo":false,"n":1,"logprobs":null}"#),
        ("openai-completion-tokens", .openaiCompletion, #"{"model":"tiny","prompt":[1,2,3,4],"max_tokens":4}"#),
        ("openai-embeddings", .openaiEmbeddings, #"{"model":"nomic-embed","input":["a","b"],"encoding_format":"float","dimensions":64}"#),
        ("ollama-chat", .ollamaChat, #"{"model":"llama3.2:1b","messages":[{"role":"user","content":"hi","images":["iVBO"]}],"stream":false,"format":"json","keep_alive":"1h30m","options":{"num_predict":16,"num_ctx":2048,"temperature":0.5,"top_k":20,"repeat_penalty":1.1,"stop":["\n\n"]}}"#),
        ("ollama-generate", .ollamaGenerate, #"{"model":"llama3.2:1b","prompt":"why?","system":"be short","template":"{{ .Prompt }}","raw":false,"keep_alive":-1,"options":{"seed":1}}"#),
        ("ollama-generate-raw", .ollamaGenerate, #"{"model":"m","prompt":"[INST] hi [/INST]","raw":true,"stream":true,"keep_alive":0}"#),
        ("ollama-embed", .ollamaEmbed, #"{"model":"nomic-embed","input":["x","y"],"truncate":false,"keep_alive":"5m"}"#),
        ("ollama-embeddings", .ollamaEmbeddings, #"{"model":"nomic-embed","prompt":"x"}"#),
        ("openai-chat-bad", .openaiChat, #"{"model":"","messages":"no"}"#),
    ]

    // MARK: http

    static let http: [(String, [UInt8])] = httpText.map { ($0.0, utf8($0.1)) }

    static let httpText: [(String, String)] = [
        ("get-health", "GET /health HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("post-chat", request("POST", "/v1/chat/completions", #"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#)),
        ("post-chat-stream-key", request("POST", "/v1/chat/completions", #"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
                                         extra: "Authorization: Bearer fuzz-key\r\n")),
        ("post-ollama-chunked", "POST /api/chat?x=1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + "1a\r\n{\"model\":\"m\",\"messages\":[\r\n3\r\n]}\n\r\n0\r\n\r\n"),
        ("pipelined", "GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\nGET /api/tags HTTP/1.1\r\nHost: x\r\n\r\n"
            + request("POST", "/api/generate", #"{"model":"m","prompt":"p"}"#, extra: "Connection: close\r\n")),
        ("too-large-declared", "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{\"model\":"),
        ("too-large", request("POST", "/v1/completions", #"{"model":"m","prompt":""# + String(repeating: "x", count: 5000) + #""}"#)),
        ("too-large-chunked", "POST /api/generate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + "1000\r\n" + String(repeating: "y", count: 4096) + "\r\n10\r\n" + String(repeating: "z", count: 16) + "\r\n0\r\n\r\n"),
        ("expect-continue", request("POST", "/v1/embeddings", #"{"model":"e","input":"x"}"#, extra: "Expect: 100-continue\r\n")),
        ("bad-key-http10", "GET /api/tags HTTP/1.0\r\nAuthorization: Bearer nope\r\n\r\n"),
        ("head", "HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("garbage", "\u{1}\u{2}NOT HTTP\r\n\r\n"),
    ]

    static func request(_ method: String, _ path: String, _ body: String, extra: String = "") -> String {
        "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\(extra)Content-Length: \(body.utf8.count)\r\n\r\n\(body)"
    }

    // MARK: wire

    static var wire: [(String, [UInt8])] {
        let engine = EngineSnapshot(id: "e1", kind: .llamaCpp, url: "http://127.0.0.1:8080", healthy: true,
                                    models: [ModelInfo(name: "qwen", loaded: true, sizeBytes: 1 << 30, contextLength: 4096)],
                                    load: EngineLoad(inFlight: 1, running: 1, waiting: 0, slots: 4),
                                    speeds: EngineSpeeds(prefillTokensPerSecond: 900, decodeTokensPerSecond: 40))
        var state = NodeState(id: "n1", name: "gpu-box", meshEndpoint: "tcp://127.0.0.1:11436", httpEndpoint: "http://127.0.0.1:11435",
                              seq: 7, vramTotalBytes: 8 << 30, vramFreeBytes: 4 << 30, gpuSummary: "1x RTX", engines: [engine],
                              knownPeers: ["tcp://127.0.0.1:11437"])
        state.instance = "i1"
        let load = NodeLoad(node: "n1", seq: 8, instance: "i1",
                            engines: [.init(id: "e1", load: EngineLoad(inFlight: 2), speeds: EngineSpeeds(decodeTokensPerSecond: 38))])
        let delta = CacheDeltaMessage(node: "n1", instance: "i1", number: 3, snapshot: false, engines: [
            .init(id: "e1", entries: [.init(0x0123_4567_89ab_cdef, .device), .init(42, .ram), .init(7, .none)]),
        ])
        let messages: [(String, WireMessage)] = [
            ("hello", WireMessage(type: .hello, header: ["node": "n1", "name": "gpu-box", "proto": 1, "endpoint": "tcp://*:11436", "instance": "i1"])),
            ("state", WireMessage(type: .state, header: (try? JSONValueCoding.encode(state)) ?? ["id": "n1"])),
            ("load", WireMessage(type: .load, header: (try? JSONValueCoding.encode(load)) ?? ["node": "n1"])),
            ("request", WireMessage(type: .request, header: ["req": "r1", "path": "/v1/chat/completions", "method": "POST", "model": "qwen"],
                                    payload: utf8(#"{"model":"qwen","messages":[]}"#))),
            ("chunk", WireMessage(type: .chunk, header: ["req": "r1", "seq": 1], payload: utf8("data: {}\n\n"))),
            ("end", WireMessage(type: .end, header: ["req": "r1"])),
            ("credit", WireMessage(type: .credit, header: ["req": "r1", "bytes": 65536])),
            ("tunnel-open", WireMessage(type: .tunnelOpen, header: ["tun": "t1", "target": "127.0.0.1:50052", "window": 262144, "silenceMs": 30000])),
            ("tunnel-opened-refused", WireMessage(type: .tunnelOpened, header: ["tun": "t1", "refused": "no"])),
            ("tunnel-credit", WireMessage(type: .tunnelCredit, header: ["tun": "t1", "bytes": 4096, "msgs": 2])),
            ("cache-delta", delta.wire),
            ("key-usage", KeyUsageReport(node: "n1", instance: "i1", seq: 4, full: false, entries: [
                .init(key: "alice", inFlight: 1, pendingTokens: 12, seconds: [.init(age: 0, requests: 2, tokens: 40), .init(age: 59, requests: 1, tokens: 0)]),
                .init(key: "", inFlight: 0, pendingTokens: 0, seconds: []),
            ]).wire),
            ("cache-snapshot-request", WireMessage(type: .cacheSnapshotRequest, header: ["node": "n1"])),
        ]
        return messages.map { ($0.0, WireFuzz.layout(MeshWireCodec.encode($0.1))) }
    }

    // MARK: txt

    static let txt: [(String, [UInt8])] = txtStrings.map { ($0.0, TXTFuzz.wire($0.1)) }

    static let txtStrings: [(String, [String])] = [
        ("record", DiscoveryTXT(nodeID: "gpu-box", proto: 1, meshPort: 11436, httpPort: 11435, gpu: "1x NVIDIA RTX 4090",
                                vramTotalBytes: 24 << 30, meshFingerprint: "3f2a9c", version: "0.9.0").encode()),
        ("minimal", ["id=a", "proto=1", "mesh=1"]),
        ("unknown-keys", ["id=b", "proto=1", "mesh=65535", "http=0", "future=yes", "flag", "vram=-5"]),
        ("other-mesh", ["id=c", "proto=1", "mesh=11436", "fp=fuzz-own-fingerprint"]),
    ]

    // MARK: config

    static let config: [(String, [UInt8])] = configText.map { ($0.0, utf8($0.1)) }

    static let configText: [(String, String)] = [
        ("node", """
            node: { name: box }
            http:
              listen: "0.0.0.0:11435"
              api_keys: ["k1", "k2"]
              max_body_bytes: 1048576
            engines:
              - { kind: ollama, url: "http://127.0.0.1:11434" }
              - kind: llama.cpp
                url: http://127.0.0.1:8080
            routing: { policy: cache-aware, queue_after_ms: 250 }

            """),
        ("gateway", """
            mesh: { listen: "127.0.0.1:11436", peers: ["127.0.0.1:11437"], secret_file: /tmp/none }
            cloud:
              escalate_after_ms: 2000
              providers:
                - { name: a, kind: anthropic, key_env: KEY }
                - { name: bedrock, kind: bedrock, region: us-east-1, access_key_id: AKIAEXAMPLE, key_env: AWS_SECRET }
              prices: { "claude-x": { input: 3, output: 15 } }
              aliases: { gpt-4o-mini: "llama3.1:8b" }
            budget: { daily_usd: 5, monthly_usd: 50, per_key: { k1: { daily_usd: 1 } } }

            """),
        ("env", "http: { auth: none }\n\0MESHD_HTTP_LISTEN=127.0.0.1:9\nMESHD_HTTP_API_KEYS=a,b\nMESHD_ROUTING_POLICY=least-busy\nMESHD_NOPE=1\n"),
        ("bad", "http:\n  listen: [1, 2\n"),
    ]

    // MARK: stream

    static var stream: [(String, [UInt8])] {
        func header(_ source: Int, client: UInt8, usage: Bool = true, chunk: UInt8) -> [UInt8] {
            [UInt8(source), chunk << 4 | (usage ? 4 : 0) | client]
        }
        let anthropic = """
            event: message_start
            data: {"type":"message_start","message":{"usage":{"input_tokens":9,"cache_read_input_tokens":4,"output_tokens":1}}}

            event: content_block_delta
            data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hel"}}

            data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"lo"}}

            event: message_delta
            data: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":2}}

            event: message_stop
            data: {"type":"message_stop"}


            """
        let gemini = """
            data: {"candidates":[{"content":{"parts":[{"text":"Hi"}]}}]}

            data: {"candidates":[{"content":{"parts":[{"text":" there"}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":2}}


            """
        let openai = """
            data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}

            data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}

            data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"timings":{"cache_n":3}}

            data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}

            data: [DONE]


            """
        let completion = """
            data: {"id":"c","object":"text_completion","created":1,"model":"m","choices":[{"index":0,"text":"Once","finish_reason":null}]}

            data: {"id":"c","object":"text_completion","created":1,"model":"m","choices":[{"index":0,"text":"","finish_reason":"length"}],"usage":{"prompt_tokens":2,"completion_tokens":1}}

            data: [DONE]


            """
        let ollamaChat = """
            {"model":"m","created_at":"2025-01-01T00:00:00Z","message":{"role":"assistant","content":"Hi"},"done":false}
            {"model":"m","created_at":"2025-01-01T00:00:00Z","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","prompt_eval_count":5,"eval_count":1,"prompt_eval_duration":1000,"eval_duration":2000,"prompt_eval_cached_count":2}

            """
        let ollamaGenerate = """
            {"model":"m","created_at":"2025-01-01T00:00:00Z","response":"Once","done":false}
            {"model":"m","created_at":"2025-01-01T00:00:00Z","response":"","done":true,"done_reason":"length","context":[1,2],"prompt_eval_count":2,"eval_count":1}

            """
        func event(_ type: String, _ payload: String, messageType: String = "event") -> [UInt8] {
            EventStreamMessage(headers: [(":event-type", .string(type)), (":content-type", .string("application/json")),
                                         (":message-type", .string(messageType))], payload: utf8(payload)).encoded()
        }
        let bedrock = event("messageStart", #"{"role":"assistant"}"#)
            + event("contentBlockDelta", #"{"contentBlockIndex":0,"delta":{"text":"Hi"}}"#)
            + event("contentBlockStop", #"{"contentBlockIndex":0}"#)
            + event("messageStop", #"{"stopReason":"end_turn"}"#)
            + event("metadata", #"{"usage":{"inputTokens":4,"outputTokens":1,"totalTokens":5},"metrics":{"latencyMs":10}}"#)
        let bedrockError = event("contentBlockDelta", #"{"delta":{"text":"x"}}"#)
            + EventStreamMessage(headers: [(":exception-type", .string("throttlingException")), (":message-type", .string("exception"))],
                                 payload: utf8(#"{"message":"slow down"}"#)).encoded()
        return [
            ("anthropic-openai", header(0, client: 0, chunk: 3) + utf8(anthropic)),
            ("anthropic-ollama-error", header(0, client: 1, chunk: 15) + utf8(#"data: {"type":"error","error":{"type":"overloaded_error","message":"busy"}}"# + "\n\n")),
            ("gemini-ollama", header(1, client: 1, chunk: 0) + utf8(gemini)),
            ("bedrock-openai", header(2, client: 0, chunk: 7) + bedrock),
            ("bedrock-generate-exception", header(2, client: 2, chunk: 2) + bedrockError),
            ("openai-provider-ollama", header(3, client: 1, chunk: 9) + utf8(openai)),
            ("engine-openai-chat", header(4, client: 0, chunk: 4) + utf8(openai)),
            ("engine-openai-chat-to-ollama", header(4, client: 1, usage: false, chunk: 1) + utf8(openai)),
            ("engine-ollama-chat-to-openai", header(5, client: 0, chunk: 6) + utf8(ollamaChat)),
            ("engine-completion", header(6, client: 0, chunk: 5) + utf8(completion)),
            ("engine-completion-to-generate", header(6, client: 1, chunk: 15) + utf8(completion)),
            ("engine-generate-to-completion", header(7, client: 0, chunk: 8) + utf8(ollamaGenerate)),
            ("engine-cut", header(4, client: 0, chunk: 10) + utf8(String(openai.prefix(200)))),
        ]
    }
}
