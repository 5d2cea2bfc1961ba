import MeshCore
import Testing

@Suite struct RoutingPolicyTests {
    let m = ModelInfo(name: "m", loaded: true)
    let speeds = EngineSpeeds(prefillTokensPerSecond: 1000, decodeTokensPerSecond: 50, meanServiceSeconds: 4)

    func nodes(_ busy: [Int], slots: Int = 2) -> [RoutingNode] {
        busy.enumerated().map { i, b in
            RoutingNode(id: "n\(i)", isLocal: i == 0, hopSeconds: 0.001,
                        engines: [snapshot("e", [m], busy: b, slots: slots, speeds: speeds)])
        }
    }

    func rank(_ nodes: [RoutingNode], _ context: RoutingContext, prompt: Int = 2200) -> Router.Ranking? {
        try? Router.rank(model: "m", operation: .chat, promptTokens: prompt, maxTokens: 100, nodes: nodes, context: context).get()
    }

    @Test func cacheAwareSendsThePromptWhereItsPrefixIsCachedAndSaysSo() throws {
        let cached: (RoutingNode, EngineSnapshot) -> CacheEstimate? = { n, _ in n.id == "n2" ? CacheEstimate(tokens: 2048, slot: 1) : nil }
        let r = try #require(rank(nodes([0, 0, 0]), RoutingContext(policy: .cacheAware, cached: cached)))
        #expect(r.decision.nodeID == "n2" && r.decision.cachedTokens == 2048 && r.decision.slot == 1)
        #expect(r.decision.reason.contains("2048 of 2200 prompt tokens cached"))
        let w = r.candidates[0]
        #expect(w.uncachedTokens == 152 && abs(w.prefill - 0.152) < 1e-9 && abs(w.decode - 2) < 1e-9 && w.hop == 0.001)
        #expect(r.candidates.count == 3 && r.candidates[1].cachedTokens == 0 && abs(r.candidates[1].prefill - 2.2) < 1e-9)
        // The same view under expected-completion: blind to the cache, the local node (tie) wins.
        let blind = try #require(rank(nodes([0, 0, 0]), RoutingContext(policy: .expectedCompletion, cached: cached)))
        #expect(blind.decision.isLocal && blind.decision.cachedTokens == 0 && blind.decision.slot == nil)
    }

    @Test func theCacheWinsOverAShortQueueButAHotNodeIsPassedOver() throws {
        let cached: (RoutingNode, EngineSnapshot) -> CacheEstimate? = { n, _ in n.id == "n1" ? CacheEstimate(tokens: 2048) : nil }
        // n1 holds the prefix with one request running (of 2 slots): a free place starts it at
        // once, 0.15 s of prefill beat 2.2 s on an idle node.
        let r1 = try #require(rank(nodes([0, 1, 0]), RoutingContext(policy: .cacheAware, cached: cached)))
        #expect(r1.decision.nodeID == "n1" && r1.candidates[0].wait == 0)
        // Both places taken: 2 s until one frees (one of 4 s requests ends, on average, in 2 s) + 0.15 s still beat 2.2 s.
        let r2 = try #require(rank(nodes([0, 2, 0]), RoutingContext(policy: .cacheAware, cached: cached)))
        #expect(r2.decision.nodeID == "n1" && r2.candidates[0].wait == 2)
        // One more waiting ahead: 4 s until a place frees lose to recomputing the prefix.
        let r3 = try #require(rank(nodes([0, 3, 0]), RoutingContext(policy: .cacheAware, cached: cached)))
        #expect(r3.decision.nodeID == "n0")
        // A huge cached prefix outweighs any queue in seconds, so bounded load decides: 3 busy
        // (6 s of work, under 1.25 × the mean 2 s + one 4 s request) is still chosen; 4 busy
        // (8 s, over 1.25 × 2.67 s + 4 s) is passed over though its score is the best.
        let big: (RoutingNode, EngineSnapshot) -> CacheEstimate? = { n, _ in n.id == "n1" ? CacheEstimate(tokens: 19_000) : nil }
        let warm = try #require(rank(nodes([0, 3, 0]), RoutingContext(policy: .cacheAware, cached: big), prompt: 20_000))
        #expect(warm.decision.nodeID == "n1" && warm.candidates[0].skipped == nil)
        let hot = try #require(rank(nodes([0, 4, 0]), RoutingContext(policy: .cacheAware, cached: big), prompt: 20_000))
        #expect(hot.decision.nodeID == "n0")
        let skipped = try #require(hot.candidates.last)
        #expect(skipped.node == "n1" && skipped.total < hot.candidates[0].total && skipped.skipped?.contains("over 1.25× the mean") == true)
        // When every candidate is hot, none is skipped.
        let all = try #require(rank(nodes([4]), RoutingContext(policy: .cacheAware, cached: big), prompt: 20_000))
        #expect(all.candidates[0].skipped == nil)
    }

    @Test func aLowDecodeWeightTakesAFreeSlowerEngineInsteadOfQueueingForAFastOne() throws {
        // n0: twice the speed (3 s per request), both places taken: 1.5 s until one frees. n1: half its
        // speed, free. Expected completion (weight 1): 1.5 + 1.1 + 1 = 3.6 s on n0 against 2.2 + 2 = 4.2 s
        // on n1: n0. With the decode counted at 0.25: 1.5 + 1.1 + 0.25 = 2.85 s against 2.2 + 0.5 = 2.7 s: n1.
        let fast = EngineSpeeds(prefillTokensPerSecond: 2000, decodeTokensPerSecond: 100, meanServiceSeconds: 3)
        func view(_ fastBusy: Int) -> [RoutingNode] {
            [RoutingNode(id: "n0", isLocal: true, engines: [snapshot("e", [m], busy: fastBusy, slots: 2, speeds: fast)]),
             RoutingNode(id: "n1", isLocal: false, hopSeconds: 0.001, engines: [snapshot("e", [m], busy: 0, slots: 2, speeds: speeds)])]
        }
        var weighted = RoutingContext(policy: .cacheAware)
        weighted.decodeWeight = 0.25
        #expect(rank(view(2), RoutingContext(policy: .cacheAware))?.decision.nodeID == "n0")
        let r = try #require(rank(view(2), weighted))
        #expect(r.decision.nodeID == "n1")
        // The terms shown stay those of the expected completion.
        #expect(abs(r.candidates[0].total - (2.2 + 2 + 0.001)) < 1e-9 && abs(r.decision.expectedSeconds - r.candidates[0].total) < 1e-12)
        // A free place on the fast engine: it wins either way.
        #expect(rank(view(1), weighted)?.decision.nodeID == "n0")
    }

    @Test func theStartDelayIsZeroWithAFreePlaceAndGrowsWithTheRequestsAhead() throws {
        // 2 slots, 4 s per request: 1 busy starts now; 2 busy wait for one to end (2 s); 5 busy, 4 ahead… (4 - 2 + 1) / 2 × 4 = 8 s.
        let free = try #require(rank(nodes([1, 3]), RoutingContext(policy: .expectedCompletion)))
        #expect(free.decision.startDelaySeconds == 0 && free.candidates.map(\.startDelay) == [0, 4])
        let full = try #require(rank(nodes([2, 5]), RoutingContext(policy: .expectedCompletion)))
        #expect(full.decision.startDelaySeconds == 2 && full.candidates.map(\.startDelay) == [2, 8])
    }

    /// An engine with neither a limit nor slots (vLLM, SGLang, a plain OpenAI-compatible server)
    /// batches what it is sent: a request never waits for a place there, however many are busy, so
    /// the mesh queue (which hands out places) never holds requests back from it. Its outstanding
    /// work still counts for expected completion and the bounded-load rule.
    @Test func anEngineWithoutLimitOrSlotsStartsEveryRequestAtOnce() throws {
        let unlimited = [RoutingNode(id: "n0", isLocal: true, engines: [snapshot("e", [m], busy: 8, slots: nil, speeds: speeds)])]
        for policy in [RoutingPolicy.cacheAware, .expectedCompletion] {
            let r = try #require(rank(unlimited, RoutingContext(policy: policy)))
            #expect(r.decision.startDelaySeconds == 0 && r.candidates.map(\.startDelay) == [0])
            #expect(r.candidates[0].work == 8 * 4, "eight requests of 4 s outstanding")
        }
        // With a limit (learned or configured) it waits for a place like a slotted engine.
        var limited = unlimited
        limited[0].engines[0].load.limit = 4
        #expect(rank(limited, RoutingContext(policy: .cacheAware))?.decision.startDelaySeconds == 5, "(8 - 4 + 1) / 4 places × 4 s")
    }

    @Test func aNewPrefixGoesToTheEmptierCacheAmongCandidatesAboutAsGood() throws {
        let held: (RoutingNode, EngineSnapshot) -> Int = { n, _ in ["n0": 500, "n1": 20, "n2": 300][n.id]! }
        let r = try #require(rank(nodes([0, 0, 0]), RoutingContext(policy: .cacheAware, held: held)))
        #expect(r.candidates.map(\.node) == ["n1", "n2", "n0"])
        // Not when it is clearly slower: one request running on n1 (2 s of wait) outweighs its empty cache.
        let busy = try #require(rank(nodes([0, 1, 0]), RoutingContext(policy: .cacheAware, held: held)))
        #expect(busy.decision.nodeID == "n2")
        // And a cached prefix still wins among the near ones.
        let cached: (RoutingNode, EngineSnapshot) -> CacheEstimate? = { n, _ in n.id == "n0" ? CacheEstimate(tokens: 10) : nil }
        let c = try #require(rank(nodes([0, 0, 0]), RoutingContext(policy: .cacheAware, cached: cached, held: held)))
        #expect(c.decision.nodeID == "n0")
    }

    @Test func uncachedPromptsStillBalanceByLoad() throws {
        let r = try #require(rank(nodes([2, 1, 0]), RoutingContext(policy: .cacheAware)))
        #expect(r.decision.nodeID == "n2")
        #expect(r.candidates.map(\.node) == ["n2", "n1", "n0"])
    }

    @Test func leastBusyAndRoundRobinIgnoreCachesAndSpeeds() throws {
        let cached: (RoutingNode, EngineSnapshot) -> CacheEstimate? = { _, _ in CacheEstimate(tokens: 2000) }
        let lb = try #require(rank(nodes([3, 1, 2]), RoutingContext(policy: .leastBusy, cached: cached)))
        #expect(lb.decision.nodeID == "n1" && lb.decision.cachedTokens == 0 && lb.decision.reason.hasSuffix("(least-busy)"))
        let picks = (0..<6).compactMap { i in rank(nodes([9, 0, 0]), RoutingContext(policy: .roundRobin, rotation: i))?.decision.nodeID }
        #expect(picks == ["n0", "n1", "n2", "n0", "n1", "n2"])
    }
}
