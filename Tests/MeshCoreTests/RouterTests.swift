import MeshCore
import Testing

func snapshot(_ id: String, healthy: Bool = true, detail: String? = nil, _ models: [ModelInfo], busy: Int = 0, slots: Int? = nil,
              speeds: EngineSpeeds = .init()) -> EngineSnapshot {
    EngineSnapshot(id: id, kind: .openai, url: "http://127.0.0.1:1", healthy: healthy, healthDetail: detail, models: models,
                   load: EngineLoad(inFlight: busy, slots: slots), speeds: speeds)
}

func route(_ model: String, _ engines: [EngineSnapshot], operation: APIOperation = .chat, prompt: Int = 100, maxTokens: Int? = nil)
    -> Result<RouteDecision, APIError>
{
    Router.choose(model: model, operation: operation, promptTokens: prompt, maxTokens: maxTokens, engines: engines)
}

func chosen(_ r: Result<RouteDecision, APIError>) -> String? {
    if case .success(let d) = r { return d.engineID }
    return nil
}

func failure(_ r: Result<RouteDecision, APIError>) -> APIError? {
    if case .failure(let e) = r { return e }
    return nil
}

@Suite struct RouterTests {
    let m = ModelInfo(name: "llama3:latest", loaded: true)
    let cold = ModelInfo(name: "llama3:latest", loaded: false, sizeBytes: 4_000_000_000)

    @Test func loadedBeatsNotLoadedEvenWhenBusier() {
        let engines = [snapshot("cold", [cold]), snapshot("hot", [m], busy: 20)]
        let r = route("llama3", engines)
        #expect(chosen(r) == "hot")
        if case .success(let d) = r {
            #expect(d.loaded)
            #expect(d.engineModel == "llama3:latest")
            #expect(d.reason.contains("of 1 candidate"))  // the cold one is not a candidate once one is loaded
        }
    }

    @Test func lowerExpectedWaitWins() {
        #expect(chosen(route("llama3", [snapshot("a", [m], busy: 3), snapshot("b", [m], busy: 1)])) == "b")
        // Slots divide the queue: 3 busy over 4 slots waits less than 1 busy over 1 slot.
        #expect(chosen(route("llama3", [snapshot("one-slot", [m], busy: 1, slots: 1), snapshot("four-slots", [m], busy: 3, slots: 4)])) == "four-slots")
        // Engine-reported running + waiting counts when it exceeds meshd's own count.
        var reported = snapshot("reported", [m], busy: 0)
        reported.load = EngineLoad(inFlight: 0, running: 2, waiting: 3)
        #expect(reported.load.busy == 5)
        #expect(chosen(route("llama3", [reported, snapshot("quiet", [m], busy: 1)])) == "quiet")
    }

    @Test func tiesKeepConfigurationOrder() {
        #expect(chosen(route("llama3", [snapshot("first", [m]), snapshot("second", [m])])) == "first")
        #expect(chosen(route("llama3", [snapshot("second", [m]), snapshot("first", [m])])) == "second")
        #expect(chosen(route("llama3", [snapshot("x", [m], busy: 2), snapshot("y", [m], busy: 2), snapshot("z", [m], busy: 2)])) == "x")
    }

    @Test func unhealthyEnginesAreSkipped() {
        let engines = [snapshot("down", healthy: false, [m]), snapshot("up", [m], busy: 9)]
        #expect(chosen(route("llama3", engines)) == "up")
        // Even a loaded model on an unhealthy engine does not beat a cold one on a healthy engine.
        #expect(chosen(route("llama3", [snapshot("down", healthy: false, [m]), snapshot("up", [cold])])) == "up")
    }

    @Test func modelOnlyOnUnhealthyEngine() {
        let engines = [snapshot("ollama@a", healthy: false, detail: "connection refused", [m]), snapshot("other", [ModelInfo(name: "qwen", loaded: true)])]
        let e = failure(route("llama3", engines))
        #expect(e?.status == 503)
        #expect(e?.code == "engine_unavailable")
        #expect(e?.type == "server_error")
        #expect(e?.message.contains("ollama@a: connection refused") == true, "\(String(describing: e))")
        let noDetail = failure(route("llama3", [snapshot("x", healthy: false, [m])]))
        #expect(noDetail?.message.contains("x: unhealthy") == true)
    }

    @Test func unknownModelListsAvailableModels() {
        let engines = [
            snapshot("a", [ModelInfo(name: "qwen:7b", loaded: true), ModelInfo(name: "llama3:latest", loaded: false)]),
            snapshot("b", [ModelInfo(name: "llama3:latest", loaded: true), ModelInfo(name: "gemma", loaded: false)]),
            snapshot("sick", healthy: false, [ModelInfo(name: "zzz", loaded: true)]),
        ]
        let e = failure(route("mistral", engines))
        #expect(e?.status == 404)
        #expect(e?.code == "model_not_found")
        #expect(e?.param == "model")
        #expect(e?.message == "model 'mistral' not found; available models: gemma, llama3:latest, qwen:7b")
        #expect(Router.availableModels(engines) == ["gemma", "llama3:latest", "qwen:7b"])
        let none = failure(route("x", [snapshot("empty", [])]))
        #expect(none?.status == 404)
        #expect(none?.message.contains("no models are available") == true)
    }

    @Test func noEngines() {
        let e = failure(route("llama3", []))
        #expect(e?.status == 503)
        #expect(e?.message.contains("no engines are configured") == true)
        let allDown = failure(route("llama3", [snapshot("a", healthy: false, detail: "boom", [])]))
        #expect(allDown?.status == 503)
        #expect(allDown?.message.contains("a: boom") == true)
    }

    @Test func modelNames() {
        #expect(ModelName.matches("llama3", "llama3:latest"))
        #expect(ModelName.matches("llama3:latest", "llama3"))
        #expect(ModelName.matches(" llama3 ", "llama3:latest"))
        #expect(!ModelName.matches("llama3", "llama3:8b"))
        #expect(!ModelName.matches("llama3", "llama3.1"))
        #expect(ModelName.normalized("llama3") == "llama3:latest")
        #expect(ModelName.normalized("org/model:q4") == "org/model:q4")
        let r = route("llama3:latest", [snapshot("a", [ModelInfo(name: "llama3", loaded: true)])])
        if case .success(let d) = r { #expect(d.engineModel == "llama3") } else { Issue.record("not routed: \(r)") }
        #expect(snapshot("a", [m]).model(named: "llama3")?.name == "llama3:latest")
        #expect(snapshot("a", [m]).model(named: "llama2") == nil)
    }

    @Test func embeddingSkipsModelsThatCannotEmbed() {
        let noEmbed = ModelInfo(name: "llama3:latest", loaded: true, embeddings: false)
        let canEmbed = ModelInfo(name: "llama3:latest", loaded: false, embeddings: true)
        let engines = [snapshot("chat-only", [noEmbed]), snapshot("embedder", [canEmbed], busy: 5)]
        #expect(chosen(route("llama3", engines, operation: .embedding)) == "embedder")
        #expect(chosen(route("llama3", engines, operation: .chat)) == "chat-only")
        // Unknown capability (nil) is allowed.
        #expect(chosen(route("llama3", [snapshot("a", [m])], operation: .embedding)) == "a")
        // Only a model that cannot embed: not servable.
        #expect(failure(route("llama3", [snapshot("chat-only", [noEmbed])], operation: .embedding)) != nil)
    }

    @Test func measuredSpeedsChangeTheChoice() {
        let fast = EngineSpeeds(decodeTokensPerSecond: 100)
        let slowish = EngineSpeeds(decodeTokensPerSecond: 20)
        #expect(chosen(route("llama3", [snapshot("slowish", [m], speeds: slowish), snapshot("fast", [m], speeds: fast)], maxTokens: 200)) == "fast")
        // A long prompt favours fast prefill; embeddings ignore decode speed entirely.
        let prefill = EngineSpeeds(prefillTokensPerSecond: 5000, decodeTokensPerSecond: 1)
        let normal = EngineSpeeds(prefillTokensPerSecond: 500, decodeTokensPerSecond: 30)
        #expect(chosen(route("llama3", [snapshot("normal", [m], speeds: normal), snapshot("prefill", [m], speeds: prefill)], operation: .embedding, prompt: 10000)) == "prefill")
        #expect(chosen(route("llama3", [snapshot("normal", [m], speeds: normal), snapshot("prefill", [m], speeds: prefill)], operation: .chat, prompt: 10, maxTokens: 100)) == "normal")
        // Measured service time scales the queue wait.
        let steady = EngineSpeeds(meanServiceSeconds: 1)
        let quick = EngineSpeeds(meanServiceSeconds: 0.1)
        #expect(chosen(route("llama3", [snapshot("a", [m], busy: 1, speeds: steady), snapshot("b", [m], busy: 3, speeds: quick)])) == "b")
    }

    @Test func anEngineNotMeasuredYetIsAssumedLikeTheMeasuredOnes() {
        // b is measured fast but busy; a has never been measured (its first requests failed, say).
        // With the fixed 30 tokens/s default a would look 8 s away and never be tried again.
        let measured = EngineSpeeds(decodeTokensPerSecond: 400, meanServiceSeconds: 0.7)
        #expect(chosen(route("llama3", [snapshot("b", [m], busy: 2, speeds: measured), snapshot("a", [m])])) == "a")
        // Measured slower than the others, it does lose.
        let slow = EngineSpeeds(decodeTokensPerSecond: 5)
        #expect(chosen(route("llama3", [snapshot("slow", [m], speeds: slow), snapshot("unmeasured", [m]),
                                        snapshot("fast", [m], speeds: EngineSpeeds(decodeTokensPerSecond: 200))])) != "slow")
        // Nothing measured at all: the defaults, and the first candidate on a tie.
        #expect(chosen(route("llama3", [snapshot("x", [m]), snapshot("y", [m])])) == "x")
    }

    @Test func coldLoadCostsBySize() {
        let small = ModelInfo(name: "llama3:latest", loaded: false, sizeBytes: 1_000_000_000)
        let big = ModelInfo(name: "llama3:latest", loaded: false, sizeBytes: 40_000_000_000)
        #expect(chosen(route("llama3", [snapshot("big", [big]), snapshot("small", [small])])) == "small")
    }

    @Test func expectedSecondsAndReason() {
        let r = route("llama3", [snapshot("e1", [m], busy: 2, slots: 4)], prompt: 500, maxTokens: 30)
        guard case .success(let d) = r else {
            Issue.record("not routed")
            return
        }
        // wait 2/4 × 1 s + prefill 500/500 + decode 30/30
        #expect(abs(d.expectedSeconds - 2.5) < 1e-9)
        #expect(d.reason == "e1: model loaded, 2 busy of 4 slots, expected wait 500 ms, of 1 candidate")
        let c = route("llama3", [snapshot("e2", [cold]), snapshot("e3", [cold])], prompt: 0, maxTokens: 0)
        if case .success(let d) = c {
            #expect(!d.loaded)
            #expect(abs(d.expectedSeconds - 3.0) < 1e-9)  // 1 s fixed + 4 GB at 2 GB/s
            #expect(d.reason == "e2: model available, not loaded, 0 busy, expected wait 0 ms, of 2 candidates")
        } else {
            Issue.record("not routed")
        }
    }
}
