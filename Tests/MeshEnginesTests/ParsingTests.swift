import MeshCore
import Testing
@testable import MeshEngines

@Suite struct ParsingTests {
    @Test func ollamaModels() throws {
        let tags = try JSONParser.parse("""
        {"models":[
          {"name":"llama3.1:8b","model":"llama3.1:8b","size":4920753328,"digest":"x",
           "details":{"format":"gguf","family":"llama","families":["llama"],"parameter_size":"8.0B","quantization_level":"Q4_K_M"}},
          {"name":"nomic-embed-text:latest","size":274302450,"details":{"family":"nomic-bert","parameter_size":"137M","quantization_level":"F16"}},
          {"name":"all-minilm:latest","size":45960996,"details":{"family":"bert","families":["bert"]}},
          {"name":"weird","size":"not a number","details":null},
          {"model":"no-name-key:1b"},
          {"size":1},
          "garbage"
        ]}
        """)
        let ps = try JSONParser.parse("""
        {"models":[
          {"name":"llama3.1:8b","size":6000000000,"size_vram":5500000000,"context_length":8192},
          {"name":"only-in-ps:latest","size_vram":1.0e9,"details":{"family":"qwen2"}}
        ]}
        """)
        let models = OllamaAdapter.models(tags: tags, ps: ps)
        #expect(models.map(\.name) == ["llama3.1:8b", "nomic-embed-text:latest", "all-minilm:latest", "weird", "no-name-key:1b", "only-in-ps:latest"])
        let llama = models[0]
        #expect(llama.loaded && llama.sizeBytes == 4920753328 && llama.vramBytes == 5500000000 && llama.contextLength == 8192)
        #expect(llama.family == "llama" && llama.parameterSize == "8.0B" && llama.quantization == "Q4_K_M")
        #expect(llama.embeddings == nil)
        #expect(models[1].embeddings == true && !models[1].loaded)
        #expect(models[2].embeddings == true)
        #expect(models[3].sizeBytes == nil && models[3].family == nil)
        #expect(models[5].loaded && models[5].vramBytes == 1_000_000_000 && models[5].family == "qwen2")
        #expect(OllamaAdapter.models(tags: .null, ps: .object([])).isEmpty)
    }

    @Test func embeddingHeuristic() {
        #expect(OllamaAdapter.embeddingHeuristic(name: "mxbai-EMBED-large", family: "bert") == true)
        #expect(OllamaAdapter.embeddingHeuristic(name: "x", family: "nomic-bert") == true)
        #expect(OllamaAdapter.embeddingHeuristic(name: "x", family: "llama", families: ["llama", "bert"]) == true)
        #expect(OllamaAdapter.embeddingHeuristic(name: "x", family: "llama", capabilities: ["embedding"]) == true)
        #expect(OllamaAdapter.embeddingHeuristic(name: "llama3", family: "llama") == nil)
    }

    @Test func openAIModels() throws {
        let llama = try JSONParser.parse("""
        {"object":"list","data":[{"id":"meshd-tiny","object":"model","owned_by":"llamacpp",
          "meta":{"n_ctx":512,"n_ctx_train":2048,"n_params":4260416,"size":17041664}}]}
        """)
        let m = OpenAIAdapter.models(from: llama)
        #expect(m == [ModelInfo(name: "meshd-tiny", loaded: true, sizeBytes: 17041664, contextLength: 512, parameterSize: "4M")])
        let vllm = try JSONParser.parse("""
        {"data":[{"id":"Qwen/Qwen2.5-7B","max_model_len":32768},{"id":"BAAI/bge-embedding"},{"id":"Qwen/Qwen2.5-7B"},{"object":"model"},{"id":7}]}
        """)
        let v = OpenAIAdapter.models(from: vllm)
        #expect(v.map(\.name) == ["Qwen/Qwen2.5-7B", "BAAI/bge-embedding"])
        #expect(v[0].contextLength == 32768 && v[0].loaded)
        #expect(v[1].embeddings == true)
        #expect(OpenAIAdapter.models(from: .array([])).isEmpty)
        #expect(OpenAIAdapter.formatParams(8.03e9) == "8.0B")
        #expect(OpenAIAdapter.formatParams(70.55e9) == "70.6B")
        #expect(OpenAIAdapter.formatParams(135e6) == "135M")
    }

    @Test func onlyAnEngineOnThisMachineHasItsModelFileRead() {
        for local in ["http://127.0.0.1:8080", "http://localhost:8080", "http://[::1]:8080", "http://127.0.0.2:1"] {
            #expect(EngineURL(local, dropV1: false)?.hostPort.isLoopback == true, "\(local)")
        }
        for remote in ["http://198.18.0.2:8080", "http://gpu-box:8080", "http://128.0.0.1:8080"] {
            #expect(EngineURL(remote, dropV1: false)?.hostPort.isLoopback == false, "\(remote)")
        }
    }

    @Test func propsAndSlots() throws {
        let props = try JSONParser.parse(#"{"default_generation_settings":{"n_ctx":4096,"params":{}},"total_slots":4}"#)
        let p = OpenAIAdapter.parseProps(props)
        #expect(p.totalSlots == 4 && p.contextLength == 4096)
        let odd = OpenAIAdapter.parseProps(try JSONParser.parse(#"{"total_slots":"4","n_ctx":0}"#))
        #expect(odd.totalSlots == nil && odd.contextLength == nil)
        let slots = try JSONParser.parse(#"[{"id":0,"is_processing":true},{"id":1,"is_processing":false},{"id":2,"state":1},{"id":3,"state":0},{"id":4}]"#)
        let s = try #require(OpenAIAdapter.parseSlots(slots))
        #expect(s.busy == 2 && s.total == 5)
        #expect(s.report.slots.map(\.processing) == [true, false, true, false, false] && s.report.slots.allSatisfy { $0.tokens == nil })
        // What each slot holds (`n_prompt_tokens`, once it ran a task); the id, else the place.
        let held = try JSONParser.parse(#"[{"is_processing":false,"n_prompt_tokens":1200},{"id":5,"is_processing":true,"n_prompt_tokens":0}]"#)
        let r = try #require(OpenAIAdapter.parseSlots(held)).report
        #expect(r.slots == [.init(id: 0, processing: false, tokens: 1200), .init(id: 5, processing: true, tokens: 0)])
        #expect(OpenAIAdapter.parseSlots(try JSONParser.parse(#"{"error":"no"}"#)) == nil)
    }

    @Test func engineURLsAndIDs() {
        #expect(engineID(kind: .ollama, url: "http://127.0.0.1:11434") == "ollama@127.0.0.1:11434")
        #expect(engineID(kind: .openai, url: "http://localhost:8000/v1/") == "openai@localhost:8000")
        #expect(engineID(kind: .openai, url: "https://gpu.lan") == "openai@gpu.lan:443")
        #expect(engineID(kind: .openai, url: "http://[::1]:8080") == "openai@[::1]:8080")
        #expect(EngineURL("http://localhost:8000/v1/", dropV1: true)?.base == "http://localhost:8000")
        #expect(EngineURL("http://h:1/prefix/v1", dropV1: false)?.base == "http://h:1/prefix/v1")
        #expect(EngineURL("http://h", dropV1: true)?.base == "http://h:80")
        #expect(EngineURL("ftp://h:1", dropV1: true) == nil)
        #expect(EngineURL("http://h:99999", dropV1: true) == nil)
        #expect(EngineURL("h:80", dropV1: true) == nil)
    }

    @Test func prefillSpeedComesFromTheEnginesOwnPromptTimeWhenItReportsOne() {
        // 500 computed tokens: the engine says 0.1 s on them, the first token came after 1 s (it queued).
        let s = EngineRegistry.updated(EngineSpeeds(), with: EngineRequestOutcome(
            succeeded: true, promptTokens: 500, generatedTokens: 2, timeToFirstToken: .seconds(1), totalTime: .milliseconds(1100),
            prefillTime: .milliseconds(100)))
        #expect(s.prefillTokensPerSecond == 5000)
        // The load meshd sent plus other clients' (as the engine last reported): not stale when meshd's end.
        #expect(EngineLoad(inFlight: 1, running: 3, slots: 4).busy == 3)
        var l = EngineLoad(inFlight: 1, running: 3, slots: 4)
        l.external = 0
        #expect(l.busy == 1)
        l.external = 2
        #expect(l.busy == 3)
    }

    @Test func speedsAreSmoothed() {
        let first = EngineRegistry.updated(EngineSpeeds(), with: EngineRequestOutcome(
            succeeded: true, promptTokens: 100, generatedTokens: 11, timeToFirstToken: .milliseconds(500), totalTime: .milliseconds(1500)))
        #expect(first.prefillTokensPerSecond == 200)
        #expect(first.decodeTokensPerSecond == 10)
        #expect(first.meanServiceSeconds == 1.5)
        let second = EngineRegistry.updated(first, with: EngineRequestOutcome(
            succeeded: true, promptTokens: 300, generatedTokens: 1, timeToFirstToken: .milliseconds(500), totalTime: .milliseconds(500)))
        #expect(abs(second.prefillTokensPerSecond! - (200 + 0.3 * 400)) < 1e-9)
        #expect(second.decodeTokensPerSecond == 10)  // one token: no decode sample
        // Non-streamed (no first-token time): only the service time moves.
        let third = EngineRegistry.updated(second, with: EngineRequestOutcome(succeeded: true, promptTokens: 10, generatedTokens: 50, totalTime: .seconds(2)))
        #expect(third.prefillTokensPerSecond == second.prefillTokensPerSecond && third.decodeTokensPerSecond == 10)
        #expect(third.meanServiceSeconds! > second.meanServiceSeconds!)
    }

    @Test func lineRingAndFormatting() {
        var r = LineRing(capacity: 3)
        for i in 1...5 { r.append("\(i)") }
        #expect(r.lines == ["3", "4", "5"])
        var small = LineRing(capacity: 3)
        small.append("a")
        #expect(small.lines == ["a"])
        #expect(formatSeconds(.milliseconds(500)) == "0.5 s")
        #expect(formatSeconds(.seconds(2)) == "2 s")
        #expect(formatSeconds(.seconds(120)) == "120 s")
    }

    @Test func processExitDecoding() {
        #expect(ProcessExit(waitStatus: 1 << 8) == .exited(1))
        #expect(ProcessExit(waitStatus: 9) == .signaled(9))
        #expect(ProcessExit(waitStatus: 0) == .exited(0))
        #expect(ProcessExit.exited(1).description == "exited with status 1")
        #expect(ProcessExit.signaled(9).description == "was killed by signal 9 (SIGKILL)")
    }
}
