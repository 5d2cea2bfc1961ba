import Foundation
import MeshCore
import Testing
@testable import MeshEngines

@Suite struct AdapterFakeTransportTests {
    static let models = #"{"object":"list","data":[{"id":"m"}]}"#

    @Test func optionalEndpointsThatAre404AreAskedOnce() async {
        let t = FakeTransport()
        t.set("/v1/models", 200, Self.models)
        t.set("/metrics", 200, "vllm:num_requests_running{model_name=\"m\"} 2\nvllm:num_requests_waiting{model_name=\"m\"} 3\n")
        let a = OpenAIAdapter(url: "http://127.0.0.1:8000/v1", transport: t)
        #expect(a.id == "openai@127.0.0.1:8000" && a.baseURL == "http://127.0.0.1:8000")
        let s1 = await a.refresh()
        #expect(s1.healthy && s1.models.map(\.name) == ["m"] && s1.models[0].loaded)
        #expect(s1.load.running == 2 && s1.load.waiting == 3 && s1.load.slots == nil)
        #expect(a.missingEndpoints == ["/health", "/props", "/slots"])
        t.reset()
        let s2 = await a.refresh()
        #expect(s2.healthy)
        #expect(t.paths.sorted() == ["/metrics", "/v1/models"])
    }

    @Test func llamaServerSignalsAndLoading() async {
        let t = FakeTransport()
        t.set("/health", 503, #"{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}"#)
        t.set("/v1/models", 503, #"{"error":{"code":503,"message":"Loading model"}}"#)
        let a = OpenAIAdapter(url: "http://127.0.0.1:8080", transport: t)
        let loading = await a.refresh()
        #expect(!loading.healthy && loading.healthDetail == "loading model")
        t.set("/health", 200, #"{"status":"ok"}"#)
        t.set("/v1/models", 200, Self.models)
        t.set("/props", 200, #"{"default_generation_settings":{"n_ctx":2048},"total_slots":2}"#)
        t.set("/slots", 200, #"[{"id":0,"is_processing":true},{"id":1,"is_processing":false}]"#)
        t.set("/metrics", 501, #"{"error":{"code":501,"message":"This server does not support metrics endpoint."}}"#)
        let up = await a.refresh()
        #expect(up.healthy && up.load.running == 1 && up.load.slots == 2 && up.models[0].contextLength == 2048)
        #expect(a.missingEndpoints == ["/metrics"])
        // Too slow to answer: a timed-out poll, which the registry weighs against its requests there.
        t.slow = ["/v1/models"]
        let slow = await a.refresh()
        #expect(!slow.healthy && slow.pollTimedOut && slow.healthDetail == "GET /v1/models: timed out waiting for the response head")
        t.slow = []
        // Unreachable: forgets what it learnt (the next server on this port may differ).
        t.refuse = true
        let down = await a.refresh()
        #expect(!down.healthy && down.healthDetail!.contains("connection failed"))
        #expect(!down.pollTimedOut, "a refused connection is no slow answer")
        #expect(a.missingEndpoints.isEmpty)
    }

    @Test func nonJSONOptionalBodiesAreNotAskedAgain() async {
        let t = FakeTransport()
        t.set("/health", 200, "OK")
        t.set("/v1/models", 200, Self.models)
        t.set("/props", 200, "<html>hello</html>")
        t.set("/slots", 200, "<html>hello</html>")
        t.set("/metrics", 200, "<html>hello</html>")
        let a = OpenAIAdapter(url: "http://127.0.0.1:1234", transport: t)
        let s = await a.refresh()
        #expect(s.healthy && s.load == EngineLoad())
        #expect(a.missingEndpoints == ["/props", "/slots", "/metrics"])
    }

    @Test func modelsFailureIsUnhealthy() async {
        let t = FakeTransport()
        t.set("/v1/models", 401, #"{"error":{"message":"Invalid API key"}}"#)
        let a = OpenAIAdapter(url: "http://127.0.0.1:1234", transport: t)
        let s = await a.refresh()
        #expect(!s.healthy && s.healthDetail == "GET /v1/models returned HTTP 401: Invalid API key")
        t.set("/v1/models", 200, "{not json")
        #expect(await a.refresh().healthDetail == "GET /v1/models returned invalid JSON")
        let bad = OpenAIAdapter(url: "not a url", transport: t)
        #expect(await bad.refresh().healthDetail == "invalid engine url not a url")
    }

    @Test func apiKeyFileIsSentAsBearer() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("meshd-key-\(UUID().uuidString)").path
        try "  sk-test-123  \n\nignored\n".write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let t = FakeTransport()
        t.set("/v1/models", 200, Self.models)
        let a = OpenAIAdapter(url: "http://127.0.0.1:1234", transport: t, apiKeyFile: path)
        #expect(await a.refresh().healthy)
        #expect(t.lastHeaders.contains { $0.0 == "Authorization" && $0.1 == "Bearer sk-test-123" })
        #expect(a.requestHeaders.first?.1 == "Bearer sk-test-123")
        let missing = OpenAIAdapter(url: "http://127.0.0.1:1234", transport: t, apiKeyFile: path + ".absent")
        let s = await missing.refresh()
        #expect(!s.healthy && s.healthDetail!.contains("cannot read api key file"))
    }

    @Test func ollamaNeedsBothCalls() async {
        let t = FakeTransport()
        t.set("/api/tags", 200, #"{"models":[{"name":"a:latest","size":1,"details":{"family":"llama"}}]}"#)
        let a = OllamaAdapter(url: "http://127.0.0.1:11434/", transport: t)
        #expect(a.baseURL == "http://127.0.0.1:11434" && a.id == "ollama@127.0.0.1:11434")
        let s1 = await a.refresh()
        #expect(!s1.healthy && s1.healthDetail == "GET /api/ps returned HTTP 404")
        t.set("/api/ps", 200, #"{"models":[]}"#)
        let s2 = await a.refresh()
        #expect(s2.healthy && s2.models.count == 1 && !s2.models[0].loaded)
        t.set("/api/tags", 500, #"{"error":"boom"}"#)
        let s3 = await a.refresh()
        #expect(s3.healthDetail == "GET /api/tags returned HTTP 500: boom" && !s3.pollTimedOut)
        t.set("/api/tags", 200, #"{"models":[]}"#)
        t.slow = ["/api/ps"]
        let s4 = await a.refresh()
        #expect(!s4.healthy && s4.pollTimedOut && s4.healthDetail == "GET /api/ps: timed out waiting for the response head")
    }
}

/// The next element matching `predicate`, skipping others; nil if the stream ends first.
func next(_ it: inout AsyncStream<[EngineSnapshot]>.AsyncIterator, _ predicate: ([EngineSnapshot]) -> Bool) async -> [EngineSnapshot]? {
    while let v = await it.next() {
        if predicate(v) { return v }
    }
    return nil
}

@Suite(.timeLimit(.minutes(1))) struct RegistryTests {
    @Test func inFlightMarksAndChanges() async throws {
        let a = ScriptedAdapter(id: "openai@a:1")
        let b = ScriptedAdapter(id: "openai@b:1")
        b.set(healthy: false)
        let reg = EngineRegistry(adapters: [a, b], logger: testLogger, pollInterval: .milliseconds(100))
        #expect(reg.snapshot().map(\.healthy) == [false, false])
        #expect(reg.snapshot("openai@a:1")?.healthDetail == "not polled yet")
        var changes = reg.changes().makeAsyncIterator()
        #expect(await changes.next()?.map(\.healthy) == [false, false])
        await reg.start()
        #expect(reg.snapshot().map(\.healthy) == [true, false])
        #expect(await next(&changes) { $0.map(\.healthy) == [true, false] } != nil)

        reg.beginRequest("openai@a:1")
        reg.beginRequest("openai@a:1")
        reg.beginRequest("nope")
        #expect(reg.snapshot("openai@a:1")?.load.inFlight == 2)
        reg.endRequest("openai@a:1", outcome: EngineRequestOutcome(succeeded: true, promptTokens: 10, generatedTokens: 3,
                                                                   timeToFirstToken: .milliseconds(100), totalTime: .milliseconds(300)))
        reg.endRequest("openai@a:1", outcome: .failed)
        reg.endRequest("openai@a:1", outcome: .failed)
        let s = try #require(reg.snapshot("openai@a:1"))
        #expect(s.load.inFlight == 0 && s.speeds.prefillTokensPerSecond == 100 && s.speeds.decodeTokensPerSecond == 10)

        // A connection failure seen by the proxy: unhealthy now, restored by a later poll.
        reg.markUnhealthy("openai@a:1", reason: "connection refused")
        #expect(reg.snapshot("openai@a:1")?.healthy == false)
        #expect(reg.snapshot("openai@a:1")?.healthDetail == "connection refused")
        #expect(await next(&changes) { $0.map(\.healthy) == [true, false] } != nil)

        // Model set changes are published; the engine going away is seen within ~2 intervals.
        a.set(healthy: true, models: ["m1", "m2"])
        #expect(await next(&changes) { $0.first?.models.map(\.name) == ["m1", "m2"] } != nil)
        a.set(healthy: false)
        let t0 = ContinuousClock.now
        #expect(await next(&changes) { $0.map(\.healthy) == [false, false] } != nil)
        #expect(ContinuousClock.now - t0 < .seconds(3))  // 2 intervals + slack for loaded CI machines
        #expect(reg.snapshot().first?.healthDetail == "scripted down")

        await reg.shutdown()
        let refreshes = a.refreshes
        try await Task.sleep(for: .milliseconds(250))
        #expect(a.refreshes == refreshes)
        #expect(await next(&changes) { _ in false } == nil)  // drains, then ends
    }

    @Test func slotReportsComeFromQuietPollsOnlyNumberedAndStampedAndStayLocal() async throws {
        let a = ScriptedAdapter(id: "e", slots: 2)
        let report = SlotReport(slots: [.init(id: 0, processing: false, tokens: 0), .init(id: 1, processing: true, tokens: 90)])
        a.set(slotReport: report)
        let clock = ManualClock(nanos: 1_000)
        let reg = EngineRegistry(adapters: [a], logger: testLogger, pollInterval: .seconds(30), clock: clock)
        await reg.start()
        let first = try #require(reg.snapshot("e")?.slotReport)
        #expect(first.slots == report.slots && first.number == 1 && first.polledAt == 1_000)
        // A request meshd sent starts, then one ends, while a poll runs: those reports are dropped
        // and the last quiet one stays.
        clock.advance(nanos: 1_000)
        a.set(duringRefresh: { reg.beginRequest("e") })
        await reg.refreshNow()
        #expect(reg.snapshot("e")?.slotReport == first)
        a.set(duringRefresh: { reg.endRequest("e", outcome: .failed) })
        await reg.refreshNow()
        #expect(reg.snapshot("e")?.slotReport == first)
        // A quiet poll again (a request open throughout is no activity during it).
        a.set(duringRefresh: nil)
        reg.beginRequest("e")
        clock.advance(nanos: 1_000)
        await reg.refreshNow()
        let quiet = try #require(reg.snapshot("e")?.slotReport)
        #expect(quiet.number == 2 && quiet.polledAt == 3_000)
        // Peers never see it.
        let wire = String(decoding: try JSONEncoder().encode(try #require(reg.snapshot("e"))), as: UTF8.self)
        #expect(!wire.contains("slotReport") && !wire.contains("polledAt") && wire.contains("\"speeds\""))
        #expect(try JSONDecoder().decode(EngineSnapshot.self, from: Data(wire.utf8)).slotReport == nil)
        await reg.shutdown()
    }

    /// An engine serving hundreds of streams can take longer than the poll's timeout to answer
    /// `/v1/models` (seen in CI: 1,000 streams to one engine, every new request refused with 503
    /// for 5 s). A timed-out poll while the engine answers meshd's requests leaves it in service;
    /// one while it answers nothing, or any other failure, takes it out.
    @Test func aPollThatTimesOutWhileTheEngineAnswersRequestsLeavesItInService() async throws {
        let a = ScriptedAdapter(id: "e", slots: 4)
        let reg = EngineRegistry(adapters: [a], logger: testLogger, pollInterval: .seconds(30))
        await reg.start()
        #expect(reg.snapshot("e")?.healthy == true)
        for _ in 0..<3 { reg.beginRequest("e") }
        let answered = EngineRequestOutcome(succeeded: true, generatedTokens: 5, totalTime: .milliseconds(50))
        // Busy: the poll times out, and a request there is answered meanwhile.
        a.set(timedOut: true)
        a.set(duringRefresh: { reg.endRequest("e", outcome: answered) })
        await reg.refreshNow()
        #expect(reg.snapshot("e")?.healthy == true)
        #expect(reg.snapshot("e")?.models.map(\.name) == ["m1"], "what the last good poll said stands")
        #expect(reg.snapshot("e")?.load.slots == 4)
        // Hung: it times out and answers nothing meanwhile.
        a.set(duringRefresh: nil)
        await reg.refreshNow()
        #expect(reg.snapshot("e")?.healthy == false)
        // Out of service, it stays out while polls time out, whatever ends (it was not in service).
        a.set(duringRefresh: { reg.endRequest("e", outcome: answered) })
        await reg.refreshNow()
        #expect(reg.snapshot("e")?.healthy == false)
        // Back once a poll answers; a request that failed during a timed-out poll is no sign of life.
        a.set(timedOut: false)
        a.set(duringRefresh: nil)
        await reg.refreshNow()
        #expect(reg.snapshot("e")?.healthy == true)
        reg.beginRequest("e")
        a.set(timedOut: true)
        a.set(duringRefresh: { reg.endRequest("e", outcome: .failed) })
        await reg.refreshNow()
        #expect(reg.snapshot("e")?.healthy == false)
        // A failure that is not a slow answer (refused, an error status) takes it out even while
        // requests are answered.
        a.set(timedOut: false)
        a.set(duringRefresh: nil)
        await reg.refreshNow()
        reg.beginRequest("e")
        a.set(healthy: false)
        a.set(duringRefresh: { reg.endRequest("e", outcome: answered) })
        await reg.refreshNow()
        #expect(reg.snapshot("e")?.healthy == false)
        await reg.shutdown()
    }

    @Test func adaptersFromConfig() {
        let t = FakeTransport()
        let adapters = EngineRegistry.makeAdapters(engines: [
            EngineConfig(kind: .ollama, url: "http://127.0.0.1:11434"),
            EngineConfig(kind: .openai, url: "http://127.0.0.1:8080/v1"),
            EngineConfig(kind: .openai, url: "http://127.0.0.1:8080"),
            EngineConfig(kind: .llamaCpp, model: "/models/Qwen2.5-0.5B.gguf"),
            EngineConfig(kind: .llamaCpp, model: "/m/x.gguf", alias: "tiny"),
        ], transport: t, logger: testLogger)
        #expect(adapters.map(\.id) == ["ollama@127.0.0.1:11434", "openai@127.0.0.1:8080", "openai@127.0.0.1:8080#2",
                                       "llama.cpp:Qwen2.5-0.5B", "llama.cpp:tiny"])
        #expect(adapters.map(\.kind) == [.ollama, .openai, .openai, .llamaCpp, .llamaCpp])
        #expect(adapters[1].baseURL == "http://127.0.0.1:8080")
    }

    @Test func autodetectedEnginesStayUnhealthyQuietly() async throws {
        // Nothing listens on these ports (picked free a moment ago).
        let p1 = try freeLoopbackPort(), p2 = try freeLoopbackPort()
        let client = try makeClient()
        defer { client.shutdown() }
        var config = MeshdConfig(nodeName: "t")
        config.enginePoll.intervalMs = 100
        let reg = EngineRegistry(engines: [EngineConfig(kind: .ollama, url: "http://127.0.0.1:\(p1)"),
                                           EngineConfig(kind: .openai, url: "http://127.0.0.1:\(p2)")],
                                 httpClient: client, logger: testLogger, pollInterval: .milliseconds(100), autodetected: true)
        await reg.start()
        let snaps = reg.snapshot()
        #expect(snaps.count == 2 && snaps.allSatisfy { !$0.healthy })
        #expect(snaps.allSatisfy { $0.healthDetail?.contains("connection failed") == true })
        await reg.shutdown()
        let fromConfig = EngineRegistry(config: config, httpClient: client, logger: testLogger)
        #expect(fromConfig.autodetected && fromConfig.pollInterval == .milliseconds(100))
        #expect(fromConfig.snapshot().map(\.id) == ["ollama@127.0.0.1:11434", "openai@127.0.0.1:8080"])
    }
}
