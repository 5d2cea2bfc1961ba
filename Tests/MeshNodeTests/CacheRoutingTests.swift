import MeshCore
import MeshEngines
import MeshNode
import Testing

/// Cache-aware routing through the real proxy and registry, in process, over fake engines.
@Suite(.serialized, .timeLimit(.minutes(1))) struct CacheRoutingTests {
    static let system = String(repeating: "You are the office assistant; answer briefly and cite the handbook. ", count: 40)

    func messages(_ question: String) -> String {
        #"[{"role":"system","content":"\#(Self.system)"},{"role":"user","content":"\#(question)"}]"#
    }

    /// Engine b ends up holding the system prompt (a was busy when the first request came).
    func warmB(_ rig: ProxyRig, _ a: FakeEngine, _ b: FakeEngine) async throws {
        a.set(.held)
        let blocker = Task { await rig.chat(stream: false) }
        let deadline = ContinuousClock.now + .seconds(10)
        while a.open != 1 && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
        #expect(a.open == 1)
        b.set(.ok)
        let (status, headers, _) = await rig.chat(stream: false, messages: messages("Where is the printer?"))
        #expect(status == 200 && headers.first(name: "X-Meshd-Engine") == b.id)
        a.release(1)
        _ = await blocker.value
        a.set(.ok)
    }

    @Test func aPromptGoesWhereItsPrefixIsCachedAndTheRouteHeaderSaysSo() async throws {
        let a = try await FakeEngine(), b = try await FakeEngine()
        let cache = CacheShadows(clock: SystemWallClock())
        let rig = try await ProxyRig([a.url, b.url], cache: cache)
        try await warmB(rig, a, b)
        // Both idle now: the next question with the same system prompt goes to b, which holds it.
        for q in ["And the coffee machine?", "Who has the keys?"] {
            let (status, headers, _) = await rig.chat(stream: q.hasPrefix("Who"), messages: messages(q))
            #expect(status == 200 && headers.first(name: "X-Meshd-Engine") == b.id)
            let route = headers.first(name: "X-Meshd-Route") ?? ""
            #expect(route.contains("prompt tokens cached") && !route.contains(" 0 of "), "\(route)")
        }
        // An unrelated prompt has nothing cached anywhere: the first engine, as before.
        let (_, other, _) = await rig.chat(stream: false, messages: #"[{"role":"user","content":"unrelated"}]"#)
        #expect(other.first(name: "X-Meshd-Engine") == a.id)
        // Short prompts fill no block: only b's shadow holds anything (the system prompt's blocks).
        let stats = Dictionary(uniqueKeysWithValues: cache.stats().map { ($0.engine, $0.blocks) })
        #expect(stats[a.id] == 0 && (stats[b.id] ?? 0) >= Self.system.utf8.count / 64)
        await rig.stop()
        await a.close()
        await b.close()
    }

    @Test func aSlotReportCorrectsTheShadowAtTheNextSync() throws {
        let clock = ManualClock()
        let cache = CacheShadows(clock: clock)
        var e = EngineSnapshot(id: "e", kind: .openai, url: "http://127.0.0.1:1", healthy: true, load: EngineLoad(slots: 1))
        cache.sync([e])
        let p = PromptChain(model: "m", bytes: Array(Self.system.utf8))
        cache.finish(try #require(cache.begin("e", p, operation: .chat)), ok: true, usage: nil, answer: [])
        #expect(cache.local("e", p) != nil)
        // The engine's slot is empty at a poll that began after the request: the shadow forgets it.
        clock.advance(seconds: 1)
        e.slotReport = SlotReport(slots: [.init(id: 0, processing: false, tokens: 0)], number: 1, polledAt: clock.nowNanos())
        cache.sync([e])
        #expect(cache.local("e", p) == nil && cache.stats().first?.slotCorrections == 1)
    }

    @Test func aLlamaServerRequestIsPinnedToTheIdleSlotHoldingItsPrefix() async throws {
        let e = try await FakeEngine(slots: 2)
        let rig = try await ProxyRig([e.url], cache: CacheShadows(clock: SystemWallClock()))
        await rig.registry.refreshNow()
        func sys(_ tag: String) -> String {
            #"[{"role":"system","content":"\#(String(repeating: "\(tag) handbook chapter. ", count: 30))"},{"role":"user","content":"q"}]"#
        }
        // Nothing cached: no pin. X takes one slot, Y (unrelated) the other, least recently used.
        _ = await rig.chat(stream: false, messages: sys("X"))
        #expect(e.lastSlot == nil)
        _ = await rig.chat(stream: false, messages: sys("Y"))
        #expect(e.lastSlot == nil)
        // Each prefix again: pinned to the slot that holds it.
        _ = await rig.chat(stream: false, messages: sys("X"))
        let x = e.lastSlot
        _ = await rig.chat(stream: false, messages: sys("Y"))
        let y = e.lastSlot
        #expect(x != nil && y != nil && x != y, "\(String(describing: x)) \(String(describing: y))")
        _ = await rig.chat(stream: true, messages: sys("X"))
        #expect(e.lastSlot == x)
        await rig.stop()
        await e.close()
    }

    /// How an engine's answer reaches the proxy.
    enum AnswerPath: CaseIterable, Sendable {
        /// Streamed: the role event, then plain content events (the relay's fast path).
        case stream
        /// One body, relayed as it came (read by the scanner).
        case relayed
        /// One body with llama-server's timings (parsed into a tree).
        case parsed
    }

    @Test(arguments: AnswerPath.allCases) func theAnswerIsHeldAfterThePromptSoTheNextTurnMatchesFurther(path: AnswerPath) async throws {
        let e = try await FakeEngine()
        // ~500 bytes of answer (8 blocks), with escapes, as the engine's JSON has it.
        let pieces = (0..<12).map { #"Step \#($0): the printer is on floor \u00e9\#($0), \"room B\".\n"# }
        e.answer(pieces, timings: path == .parsed)
        let cache = CacheShadows(clock: SystemWallClock())
        let rig = try await ProxyRig([e.url], cache: cache)
        let first = messages("Where is the printer?")
        let (status, _, _) = await rig.chat(stream: path == .stream, messages: first)
        #expect(status == 200)
        func chain(_ messages: String) throws -> PromptChain {
            let req = try RequestParser.parse(route: .openaiChat, body: Array(#"{"model":"m","messages":\#(messages)}"#.utf8))
            return try #require(PromptRendering.chain(req, model: req.model))
        }
        // The next turn: the first's messages, the answer the client got, a new question.
        func nextTurn(_ answer: String) -> String {
            String(first.dropLast()) + #",{"role":"assistant","content":"\#(answer)"},{"role":"user","content":"And the coffee machine?"}]"#
        }
        let prompt = cache.local(e.id, try chain(first))?.tokens ?? 0
        let next = cache.local(e.id, try chain(nextTurn(pieces.joined())))?.tokens ?? 0
        let other = cache.local(e.id, try chain(nextTurn("Some other answer, long enough to fill a block or two of the prompt.")))?.tokens ?? 0
        // The answer's 8 blocks count on top of the prompt's; another answer matches the prompt only.
        #expect(prompt > 0 && next > prompt * 1.1, "prompt \(prompt), next turn \(next)")
        #expect(other == prompt, "prompt \(prompt), another answer \(other)")
        await rig.stop()
        await e.close()
    }

    @Test func expectedCompletionIsBlindToTheCache() async throws {
        let a = try await FakeEngine(), b = try await FakeEngine()
        var routing = RoutingSettings()
        routing.policy = .expectedCompletion
        let rig = try await ProxyRig([a.url, b.url], routing: routing, cache: CacheShadows(clock: SystemWallClock()))
        try await warmB(rig, a, b)
        let (_, headers, _) = await rig.chat(stream: false, messages: messages("And the coffee machine?"))
        #expect(headers.first(name: "X-Meshd-Engine") == a.id)
        #expect(headers.first(name: "X-Meshd-Route")?.contains("cached") == false)
        await rig.stop()
        await a.close()
        await b.close()
    }
}
