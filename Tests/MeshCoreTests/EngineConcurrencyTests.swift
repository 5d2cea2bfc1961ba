import MeshCore
import Testing

@Suite struct EngineConcurrencyTests {
    @Test func limitPrefersConfiguredThenSlotsThenLearned() {
        #expect(EngineConcurrency.limit(configured: 8, reportedSlots: 4, learned: 2) == 8)
        #expect(EngineConcurrency.limit(configured: nil, reportedSlots: 4, learned: 2) == 4)
        #expect(EngineConcurrency.limit(configured: nil, reportedSlots: nil, learned: 2) == 2)
        #expect(EngineConcurrency.limit(configured: nil, reportedSlots: nil, learned: nil) == nil)
        // Nonsense values are ignored rather than blocking every request.
        #expect(EngineConcurrency.limit(configured: 0, reportedSlots: 0, learned: 0) == nil)
        #expect(EngineConcurrency.limit(configured: nil, reportedSlots: 1200, learned: nil) == 1200)
    }

    @Test func learnedLimitShrinksOnOverloadAndGrowsBackAdditively() {
        var l = EngineConcurrency.Learned()
        l.succeeded()
        #expect(l.limit == nil)  // nothing learned before the engine says it is overloaded
        l.overloaded(open: 10)
        #expect(l.limit == 9)
        l.overloaded(open: 12)  // a later overload with more open never raises it
        #expect(l.limit == 9)
        l.overloaded(open: 1)
        #expect(l.limit == 1)  // never below one
        l.succeeded()
        #expect(l.limit == 2)
        l.succeeded()
        #expect(l.limit == 2)
        l.succeeded()
        #expect(l.limit == 3)
        l.overloaded(open: 3)
        #expect(l.limit == 2 && l.successes == 0)
    }

    @Test func whichStatusesAreRetriedAndWhichMarkTheEngine() {
        for s in [500, 501, 502, 503, 504, 429] { #expect(EngineConcurrency.isRetryable(status: s), "\(s)") }
        for s in [200, 400, 401, 404, 413, 422] { #expect(!EngineConcurrency.isRetryable(status: s), "\(s)") }
        #expect(EngineConcurrency.isOverload(status: 429) && EngineConcurrency.isOverload(status: 503))
        #expect(!EngineConcurrency.isOverload(status: 500))
        for s in [500, 502, 504, 505] { #expect(EngineConcurrency.marksUnhealthy(status: s), "\(s)") }
        for s in [501, 503, 429, 400, 404] { #expect(!EngineConcurrency.marksUnhealthy(status: s), "\(s)") }
    }

    @Test func failedAttemptsNameEveryEngineTried() {
        var f = FailedAttempts()
        #expect(f.isEmpty)
        f.add("a/llama.cpp:tiny", status: 502, reason: "connect failed: Connection refused")
        f.add("b", status: 503, reason: "status 503: engine is overloaded")
        let e = f.error(model: "tiny")
        #expect(e.status == 502 && e.code == "engine_error")
        #expect(e.message.contains("a/llama.cpp:tiny (connect failed: Connection refused)"))
        #expect(e.message.contains("b (status 503: engine is overloaded)"))
        #expect(e.message.hasPrefix("no engine could serve 'tiny'"))

        var busy = FailedAttempts()
        busy.add("x", status: 503, reason: "overloaded")
        #expect(busy.error(model: "m").status == 503)
        #expect(busy.error(model: "m").message.contains("x (overloaded)"))
    }

    @Test func answerStartedWaitsForTextToolCallsOrTheEnd() throws {
        let ctx = context(.openaiChat, .openaiChat)
        func started(_ events: [String]) throws -> Bool {
            var t = StreamTranslator(context: ctx)
            _ = try t.feed(EngineStreams.sse(events), nowNanos: streamNow)
            return t.answerStarted
        }
        let meta = #""created":1,"id":"c","model":"tiny","object":"chat.completion.chunk""#
        let role = #"{"choices":[{"finish_reason":null,"index":0,"delta":{"role":"assistant","content":null}}],\#(meta)}"#
        let text = #"{"choices":[{"finish_reason":null,"index":0,"delta":{"content":"hi"}}],\#(meta)}"#
        let tool = #"{"choices":[{"finish_reason":null,"index":0,"delta":{"tool_calls":[{"index":0,"function":{"name":"f"}}]}}],\#(meta)}"#
        #expect(try started([role]) == false)  // a role chunk alone is no answer yet: an engine dying now is retried
        #expect(try started([role, text]))
        #expect(try started([role, tool]))
        #expect(try started([role, "[DONE]"]))

        var ollama = StreamTranslator(context: context(.ollamaChat, .ollamaChat))
        _ = try ollama.feed(Array(#"{"model":"m","created_at":"x","message":{"role":"assistant","content":""},"done":false}"#.utf8) + [0x0A], nowNanos: streamNow)
        #expect(!ollama.answerStarted)
        _ = try ollama.feed(Array(#"{"model":"m","created_at":"x","message":{"role":"assistant","content":"a"},"done":false}"#.utf8) + [0x0A], nowNanos: streamNow)
        #expect(ollama.answerStarted)
    }
}

@Suite struct RouterLimitTests {
    @Test func theWaitEstimateUsesMeshdsLimitWhenItIsBelowTheSlots() {
        func engine(_ id: String, inFlight: Int, slots: Int?, limit: Int?) -> EngineSnapshot {
            EngineSnapshot(id: id, kind: .openai, url: "http://\(id)", healthy: true, models: [ModelInfo(name: "m", loaded: true)],
                           load: EngineLoad(inFlight: inFlight, slots: slots, limit: limit),
                           speeds: EngineSpeeds(meanServiceSeconds: 1))
        }
        // Same load; a's limit of 1 (max_concurrency) makes its 2 in flight a queue, b runs 2 of 4 at once.
        let a = engine("a", inFlight: 2, slots: 4, limit: 1)
        let b = engine("b", inFlight: 2, slots: 4, limit: nil)
        let d = try? Router.choose(model: "m", operation: .chat, promptTokens: 10, maxTokens: 10, engines: [a, b]).get()
        #expect(d?.engineID == "b")
        let same = try? Router.choose(model: "m", operation: .chat, promptTokens: 10, maxTokens: 10,
                                      engines: [engine("a", inFlight: 2, slots: 4, limit: 4), b]).get()
        #expect(same?.engineID == "a")  // equal: the first keeps it
    }
}
