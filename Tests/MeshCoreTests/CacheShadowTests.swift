import MeshCore
import Testing

/// `n` bytes of text that differ from `other` texts with another `tag` from the first byte.
func text(_ tag: String, _ n: Int) -> [UInt8] {
    var out: [UInt8] = []
    var i = 0
    while out.count < n {
        out.append(contentsOf: "\(tag) word \(i) ".utf8)
        i += 1
    }
    return Array(out.prefix(n))
}

func chat(_ messages: [(String, String)], model: String = "m") -> InferenceRequest {
    var r = try! RequestParser.parse(route: .openaiChat, body: Array("{\"model\":\"\(model)\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}".utf8))
    r.messages = messages.map { ChatMessage(role: $0.0, content: $0.1) }
    return r
}

@Suite struct PromptChainTests {
    @Test func sharedPrefixesShareExactlyTheirFullBlocks() {
        let prefix = text("system", 640)  // 10 blocks
        let a = PromptChain(model: "m", bytes: prefix + text("question-a", 100))
        let b = PromptChain(model: "m", bytes: prefix + text("question-b", 100))
        #expect(a.hashes.count == 11 && b.hashes.count == 11)
        #expect(Array(a.hashes.prefix(10)) == Array(b.hashes.prefix(10)))
        #expect(a.hashes[10] != b.hashes[10])
        #expect(a.byteCount == 740 && a.tail.count == 740 - 11 * 64)
        // Another model never shares a block, whatever the text.
        let c = PromptChain(model: "other", bytes: prefix)
        #expect(Set(c.hashes).isDisjoint(with: a.hashes))
        // "llama3" and "llama3:latest" are one model.
        #expect(PromptChain(model: "llama3", bytes: prefix).hashes == PromptChain(model: "llama3:latest", bytes: prefix).hashes)
    }

    @Test func appendingInPiecesEqualsHashingAtOnce() {
        let all = text("x", 1000)
        var piecewise = PromptChain(model: "m")
        var i = 0
        for size in [1, 63, 2, 200, 7, 64, 64, 500, 99] where i < all.count {
            piecewise.append(all[i..<min(all.count, i + size)])
            i += size
        }
        #expect(piecewise == PromptChain(model: "m", bytes: all))
        // Bytes without contiguous storage take the byte-at-a-time path: the same hashes.
        #expect(PromptChain(model: "m", bytes: all.indices.lazy.map { all[$0] }) == PromptChain(model: "m", bytes: all))
        var mixed = PromptChain(model: "m", bytes: all[0..<100].indices.lazy.map { all[$0] })
        mixed.append(all[100...])
        #expect(mixed == PromptChain(model: "m", bytes: all))
        // Hashes are stable across processes and builds (peers compare them): pinned values.
        #expect(PromptChain(model: "m", bytes: Array("hello".utf8) + [UInt8](repeating: 32, count: 59)).hashes.count == 1)
        #expect(PromptHash.seed("m") == PromptHash.seed("m:latest"))
    }

    @Test func aChatTurnsRenderingStartsWithThePreviousTurnAndItsAnswer() throws {
        let turn1 = chat([("system", String(decoding: text("sys", 900), as: UTF8.self)), ("user", "What is a KV cache?")])
        var held = try #require(PromptRendering.chain(turn1, model: "m"))
        held.append(PromptRendering.answer("A cache of attention keys and values.".utf8, operation: .chat))
        let turn2 = chat([("system", String(decoding: text("sys", 900), as: UTF8.self)), ("user", "What is a KV cache?"),
                          ("assistant", "A cache of attention keys and values."), ("user", "And a slot?")])
        let next = try #require(PromptRendering.chain(turn2, model: "m"))
        #expect(Array(next.hashes.prefix(held.hashes.count)) == held.hashes, "turn 2 extends turn 1 + its answer")
        // Embeddings have no prompt cache to use.
        let emb = try RequestParser.parse(route: .openaiEmbeddings, body: Array("{\"model\":\"m\",\"input\":\"hi\"}".utf8))
        #expect(PromptRendering.chain(emb, model: "m") == nil)
    }
}

@Suite struct CacheShadowTests {
    func chain(_ bytes: [UInt8]) -> PromptChain { PromptChain(model: "m", bytes: bytes) }

    @Test func aFinishedRequestIsHeldAndMatchedByTheNextOneWithItsPrefix() {
        var s = CacheShadow(slots: 2)
        let prefix = text("sys", 64 * 20)
        let first = chain(prefix + text("q1", 200))
        #expect(s.match(first) == .none)
        let (seq, predicted) = s.begin(first, now: 1)
        #expect(predicted == 0)
        var held = first
        held.append(text("answer", 300))
        s.finish(sequence: seq, held: held, predictedBlocks: predicted, promptBytes: first.byteCount, promptTokens: 400,
                 cachedTokens: 0, now: 2)
        let second = chain(prefix + text("q2", 200))
        let m = s.match(second)
        #expect(m.deviceBlocks == 20 && m.anyBlocks == 20 && m.slot == seq)
        // The engine's own token rate is learned: 400 tokens for 1,480 bytes.
        #expect(s.tokensPerByte > 0.25)
        #expect(s.tokens(m) > 20 * 64 * 0.25)
        // The next request goes to the slot holding the prefix, as llama-server picks it.
        let (seq2, predicted2) = s.begin(second, now: 3)
        #expect(seq2 == seq && predicted2 == 20)
        // While that slot is busy, it is not offered for pinning, and an idle slot (which the
        // engine would give the request) holds none of it.
        #expect(s.match(second).slot == nil && s.match(second).deviceBlocks == 20)
        #expect(s.hasIdleSequence && s.match(second, idleOnly: true).deviceBlocks == 0)
    }

    @Test func unrelatedPromptsTakeTheLeastRecentlyUsedSlotAndEvictIt() {
        var s = CacheShadow(slots: 2)
        let prompts = (0..<3).map { chain(text("group\($0)", 64 * 10)) }
        for (i, p) in prompts.enumerated() {
            let (seq, pred) = s.begin(p, now: UInt64(10 * (i + 1)))
            s.finish(sequence: seq, held: p, predictedBlocks: pred, promptBytes: p.byteCount, promptTokens: nil, cachedTokens: nil,
                     now: UInt64(10 * (i + 1) + 1))
        }
        #expect(s.match(prompts[0]).deviceBlocks == 0, "the oldest was evicted by the third")
        #expect(s.match(prompts[1]).deviceBlocks == 10 && s.match(prompts[2]).deviceBlocks == 10)
        #expect(s.deviceBlockCount == 20)
    }

    @Test func aSlotsOldPromptMovesToTheRAMTierAndIsMatchedThereUntilEvicted() {
        var o = CacheShadow.Options()
        o.ramMaxBlocks = 15
        var s = CacheShadow(slots: 1, options: o)
        let a = chain(text("a", 64 * 10)), b = chain(text("b", 64 * 10)), c = chain(text("c", 64 * 10))
        for (i, p) in [a, b].enumerated() {
            let (seq, pred) = s.begin(p, now: UInt64(i * 10))
            s.finish(sequence: seq, held: p, predictedBlocks: pred, promptBytes: 640, promptTokens: nil, cachedTokens: nil, now: UInt64(i * 10 + 1))
        }
        let m = s.match(a)
        #expect(m.deviceBlocks == 0 && m.anyBlocks == 10, "a was saved to host RAM when b took the slot")
        #expect(s.tokens(m, ramWeight: 0.5) == 10 * 64 * 0.25 * 0.5)
        let changes = Dictionary(uniqueKeysWithValues: s.drainChanges().map { ($0.0, $0.1) })
        // Peers learn every 4th block (3, 7, …): a quarter of the bytes.
        #expect(changes[a.hashes[3]] == .ram && changes[b.hashes[3]] == .device && changes[a.hashes[0]] == nil)
        #expect(changes.count == 4, "blocks 3 and 7 of a and of b")
        #expect(s.drainChanges().isEmpty, "drained")
        // c takes the slot: b goes to RAM, which overflows (20 > 15): a, the older, is dropped.
        let (seq, pred) = s.begin(c, now: 30)
        s.finish(sequence: seq, held: c, predictedBlocks: pred, promptBytes: 640, promptTokens: nil, cachedTokens: nil, now: 31)
        #expect(s.match(a).anyBlocks == 0 && s.match(b).anyBlocks == 10 && s.ramBlockCount == 10)
        let later = Dictionary(uniqueKeysWithValues: s.drainChanges().map { ($0.0, $0.1) })
        #expect(later[a.hashes[3]] == CacheTier.none && later[b.hashes[3]] == .ram && later[c.hashes[3]] == .device)
    }

    /// Runs `p` to completion on the shadow; returns the blocks predicted.
    @discardableResult
    func run(_ s: inout CacheShadow, _ p: PromptChain, at t: UInt64, cached: Int? = nil) -> Int {
        let (seq, pred) = s.begin(p, now: t)
        s.finish(sequence: seq, held: p, predictedBlocks: pred, promptBytes: p.byteCount, promptTokens: cached == nil ? nil : p.byteCount / 4,
                 cachedTokens: cached, now: t + 1)
        return pred
    }

    /// A shadow of `slots` slots with a host-RAM tier (100 blocks; `similarity`, else the default)
    /// after prompts `a` then `b` (10 blocks each) ran on it.
    func afterAThenB(slots: Int, similarity: Double? = nil) -> (shadow: CacheShadow, a: PromptChain, b: PromptChain) {
        var o = CacheShadow.Options()
        o.ramMaxBlocks = 100
        if let similarity { o.slotSimilarity = similarity }
        var s = CacheShadow(slots: slots, options: o)
        let a = chain(text("a", 64 * 10)), b = chain(text("b", 64 * 10))
        run(&s, a, at: 10)
        run(&s, b, at: 20)
        return (s, a, b)
    }

    @Test func aSavedPromptIsRestoredFromRAMAndLeavesIt() {
        var (s, a, b) = afterAThenB(slots: 1)
        let qa = chain(text("a", 64 * 10) + text("question", 64 * 2))
        #expect(s.match(qa).anyBlocks == 10 && s.match(qa).deviceBlocks == 0, "a waits in RAM")
        // As llama-server: b is saved, a (the best saved prompt for qa) moves back into the slot.
        #expect(run(&s, qa, at: 30) == 10)
        #expect(s.match(b).anyBlocks == 10 && s.match(b).deviceBlocks == 0)
        #expect(s.match(qa).deviceBlocks == 12)
        #expect(s.ramBlockCount == 10, "only b is saved: a left RAM when it was loaded")
    }

    @Test func aRequestPinnedToASlotHoldingAnotherPromptStillRestoresItsOwn() {
        var (s, a, b) = afterAThenB(slots: 2)
        let held = s.match(b).slot!
        // Pinned to b's slot, a's prompt keeps none of it: llama-server saves b and loads a.
        let (seq, pred) = s.begin(a, pinned: held, now: 30)
        #expect(seq == held && pred == 10)
        s.finish(sequence: seq, held: a, predictedBlocks: pred, promptBytes: 640, promptTokens: nil, cachedTokens: nil, now: 31)
        // With slot similarity off, a pinned request never touches the RAM cache.
        var (off, _, _) = afterAThenB(slots: 1, similarity: 0)
        #expect(off.begin(a, pinned: 0, now: 30).blocks == 0)
    }

    @Test func idleSlotsAreSavedWhenARequestStartsAndASimilarSlotIsKeptAsItIs() {
        var o = CacheShadow.Options()
        o.ramMaxBlocks = 100
        var s = CacheShadow(slots: 2, options: o)
        let a = chain(text("a", 64 * 10)), b = chain(text("b", 64 * 10))
        run(&s, a, at: 10)
        #expect(s.ramBlockCount == 0)
        // b takes the other (least recently used, empty) slot; the idle slot holding a is saved too.
        let (seq, _) = s.begin(b, now: 20)
        #expect(s.ramBlockCount == 10 && s.match(a).deviceBlocks == 10, "a copy: the slot keeps it")
        s.finish(sequence: seq, held: b, predictedBlocks: 0, promptBytes: 640, promptTokens: nil, cachedTokens: nil, now: 21)
        // a's follow-up keeps all of its slot (chosen by similarity): nothing is saved or loaded for it.
        let qa = chain(text("a", 64 * 10) + text("more", 64 * 4))
        let before = s.ramBlockCount
        #expect(run(&s, qa, at: 30) == 10)
        #expect(s.ramBlockCount == before + 10, "only the other idle slot (b) is saved")
    }

    @Test func anEngineWithoutARAMCacheLosesTheTierAfterMisses() {
        var o = CacheShadow.Options()
        o.ramMaxBlocks = 100
        var s = CacheShadow(slots: 1, options: o)
        let prompts = (0..<2).map { chain(text("g\($0)", 64 * 10)) }
        var t: UInt64 = 10
        // A confirmed restore keeps the tier...
        run(&s, prompts[0], at: t); t += 10
        run(&s, prompts[1], at: t); t += 10
        #expect(run(&s, prompts[0], at: t, cached: 160) == 10); t += 10
        #expect(s.hasRAMTier)
        // ...restores the engine never makes (`--cache-ram 0`) drop it.
        for k in 0..<CacheShadow.ramMissesToDisable {
            #expect(s.hasRAMTier)
            #expect(run(&s, prompts[(k + 1) % 2], at: t, cached: 0) == 10); t += 10
        }
        #expect(!s.hasRAMTier && s.ramBlockCount == 0)
        #expect(run(&s, prompts[0], at: t, cached: 0) == 0, "no restore predicted any more")
    }

    @Test func whatTheEngineReportsCorrectsTheSlotAndTheAccuracy() {
        var s = CacheShadow(slots: 4)
        let p = chain(text("p", 64 * 8))
        let (guess, _) = s.begin(p, now: 1)
        // The engine says it used slot 3, not the one guessed: slot 3 holds the prompt now.
        s.finish(sequence: guess, held: p, slot: 3, predictedBlocks: 0, promptBytes: 512, promptTokens: 128, cachedTokens: 0, now: 2)
        #expect(s.match(p).slot == 3)
        #expect(s.accuracy == 1, "predicted 0, reported 0")
        // Predicted 8 blocks (128 tokens) but the engine reused none (it was restarted outside meshd):
        // accuracy drops, so later matches on it count for less.
        let (seq, pred) = s.begin(p, now: 3)
        #expect(seq == 3 && pred == 8)
        s.finish(sequence: seq, held: p, predictedBlocks: pred, promptBytes: 512, promptTokens: 128, cachedTokens: 0, now: 4)
        #expect(s.accuracy < 0.85)
        #expect(s.predictedTokens == 128 && s.reportedTokens == 0)
        // A failed request leaves its slot unknown: forgotten.
        let (seq3, pred3) = s.begin(p, now: 5)
        s.finish(sequence: seq3, held: nil, predictedBlocks: pred3, promptBytes: 512, promptTokens: nil, cachedTokens: nil, now: 6)
        #expect(s.match(p).deviceBlocks == 0)
    }

    /// A slot report taken by a poll that began at `at`: per slot (id, processing, tokens held).
    func report(_ slots: [(Int, Bool, Int?)], at: UInt64) -> SlotReport {
        SlotReport(slots: slots.map { SlotReport.Slot(id: $0.0, processing: $0.1, tokens: $0.2) }, number: 1, polledAt: at)
    }

    @Test func aSlotTheEngineClearedIsForgottenItsRAMCopyKeptAndPeersTold() {
        // a's idle slot was saved to RAM as b started; it keeps a too.
        var (s, a, b) = afterAThenB(slots: 2)
        let slotA = s.match(a).slot!, slotB = s.match(b).slot!
        #expect(s.match(a).deviceBlocks == 10 && s.ramBlockCount == 10)
        _ = s.drainChanges()
        // llama-server cleared a's slot (after saving it to RAM) without meshd knowing; b's holds its
        // prompt and answer.
        #expect(s.observe(report([(slotA, false, 0), (slotB, false, 170)], at: 30)) == 1)
        #expect(s.match(a).deviceBlocks == 0 && s.match(a).anyBlocks == 10, "only the RAM copy is left")
        #expect(s.match(b).deviceBlocks == 10 && s.ramBlockCount == 10)
        #expect(s.slotCorrections == 1)
        // Peers learn that a's shared blocks (3 and 7) left the device for RAM, and nothing else.
        let changes = Dictionary(uniqueKeysWithValues: s.drainChanges().map { ($0.0, $0.1) })
        #expect(changes == [a.hashes[3]: .ram, a.hashes[7]: .ram])
        // Seen again, nothing more to correct.
        #expect(s.observe(report([(slotA, false, 0)], at: 40)) == 0 && s.slotCorrections == 1)
    }

    @Test func aSlotHoldingClearlyFewerTokensIsTruncatedToThem() {
        var s = CacheShadow(slots: 1)
        let p = chain(text("p", 64 * 40))  // 40 blocks, 640 tokens at 1/4 token a byte
        run(&s, p, at: 10)
        // A little short of the shadow (the engine's context cut it), or silent: left as it is.
        #expect(s.observe(report([(0, false, 400)], at: 20)) == 0)
        #expect(s.observe(report([(0, false, nil)], at: 20)) == 0)
        #expect(s.match(p).deviceBlocks == 40)
        _ = s.drainChanges()
        // 100 tokens: the first 6 blocks (16 tokens each) are all the slot holds of it.
        #expect(s.observe(report([(0, false, 100)], at: 30)) == 1)
        #expect(s.match(p).deviceBlocks == 6 && s.deviceBlockCount == 6)
        let changes = Dictionary(uniqueKeysWithValues: s.drainChanges().map { ($0.0, $0.1) })
        #expect(changes.count == 9 && changes.values.allSatisfy { $0 == .none }, "blocks 7, 11, … 39 dropped")
        #expect(changes[p.hashes[7]] == CacheTier.none && changes[p.hashes[3]] == nil)
    }

    @Test func busyOrRecentlyUsedSlotsAreLeftAlone() {
        var s = CacheShadow(slots: 3)
        let ps = (0..<3).map { chain(text("s\($0)", 64 * 10)) }
        for (i, p) in ps.enumerated() { run(&s, p, at: UInt64(10 * (i + 1))) }  // finished at 11, 21, 31
        let slots = ps.map { s.match($0).slot! }
        // ps[0]'s slot runs a request meshd sent (the shadow's busy; the engine had not begun it).
        let (busy, _) = s.begin(ps[0], now: 40)
        #expect(busy == slots[0])
        // The engine runs one on ps[1]'s slot; ps[2]'s slot was used after the poll began; an
        // unknown slot is ignored.
        let r = report([(slots[0], false, 0), (slots[1], true, 0), (slots[2], false, 0), (7, false, 0)], at: 31)
        #expect(s.observe(r) == 0)
        #expect(ps.allSatisfy { s.match($0).deviceBlocks == 10 } && s.slotCorrections == 0)
        // The same report from a later poll corrects the idle slot used before it.
        var later = r
        later.polledAt = 32
        #expect(s.observe(later) == 1)
        #expect(s.match(ps[2]).deviceBlocks == 0 && s.match(ps[0]).deviceBlocks == 10 && s.match(ps[1]).deviceBlocks == 10)
    }

    @Test func memoryIsBoundedLeastRecentlyUsedFirst() {
        var o = CacheShadow.Options()
        o.maxBlocks = 25
        o.sequenceBlocks = 12
        var s = CacheShadow(slots: 3, options: o)
        let ps = (0..<3).map { chain(text("s\($0)", 64 * 20)) }
        for (i, p) in ps.enumerated() {
            let (seq, pred) = s.begin(p, now: UInt64(i))
            s.finish(sequence: seq, held: p, predictedBlocks: pred, promptBytes: p.byteCount, promptTokens: nil, cachedTokens: nil, now: UInt64(i))
        }
        #expect(s.deviceBlockCount <= 25)
        #expect(s.match(ps[2]).deviceBlocks == 12, "capped at a sequence's context")
        #expect(s.match(ps[0]).deviceBlocks < 12, "the least recently used lost blocks first")
        #expect(s.match(ps[1]).deviceBlocks == 12)
        s.reset()
        #expect(s.deviceBlockCount == 0 && s.match(ps[2]).deviceBlocks == 0)
    }

    @Test func aPeersViewFollowsNumberedDeltasAndAsksForASnapshotOnAGap() {
        var shadow = CacheShadow(slots: 1)
        var view = PeerCaches()
        func message(_ n: UInt64, _ changes: [(UInt64, CacheTier)], snapshot: Bool = false) -> CacheDeltaMessage {
            CacheDeltaMessage(node: "b", instance: "i", number: n, snapshot: snapshot,
                              engines: [.init(id: "e", entries: changes.map { .init($0.0, $0.1) })])
        }
        let p = chain(text("p", 64 * 10))
        #expect(view.receive(message(1, []), now: 0) == .gap, "no snapshot yet")
        #expect(view.receive(message(0, shadow.snapshot(), snapshot: true), now: 1) == .applied)
        let (seq, pred) = shadow.begin(p, now: 1)
        shadow.finish(sequence: seq, held: p, predictedBlocks: pred, promptBytes: 640, promptTokens: nil, cachedTokens: nil, now: 2)
        let d1 = shadow.drainChanges()
        #expect(view.receive(message(1, d1), now: 2) == .applied)
        #expect(view.match("e", p)?.deviceBlocks == 8, "10 held: known to within 4 blocks, rounded down")
        #expect(view.receive(message(1, d1), now: 3) == .stale)
        // Delta 2 is lost; 3 arrives: a gap, nothing applied; a snapshot repairs it.
        let q = chain(text("q", 64 * 10))
        let (s2, p2) = shadow.begin(q, now: 3)
        shadow.finish(sequence: s2, held: q, predictedBlocks: p2, promptBytes: 640, promptTokens: nil, cachedTokens: nil, now: 4)
        _ = shadow.drainChanges()
        #expect(view.receive(message(3, []), now: 4) == .gap)
        #expect(view.match("e", p)?.deviceBlocks == 8 && view.match("e", q)?.deviceBlocks == 0, "stale")
        #expect(view.receive(message(3, shadow.snapshot(), snapshot: true), now: 5) == .applied)
        #expect(view.match("e", p)?.deviceBlocks == 0 && view.match("e", q)?.deviceBlocks == 8)
        #expect(view.receive(message(4, []), now: 6) == .applied)
    }

    @Test func matchingIsALogarithmicNumberOfLookups() {
        // 10,000 blocks held; a 2,000-block prompt matched with ~11 lookups, not 2,000.
        var o = CacheShadow.Options()
        o.maxBlocks = 20_000
        var s = CacheShadow(slots: 4, options: o)
        let long = chain(text("long", 64 * 2500))
        for i in 0..<4 {
            let p = i == 0 ? long : chain(text("other\(i)", 64 * 2500))
            let (seq, pred) = s.begin(p, now: UInt64(i + 1))
            s.finish(sequence: seq, held: p, predictedBlocks: pred, promptBytes: p.byteCount, promptTokens: nil, cachedTokens: nil, now: UInt64(i + 1))
        }
        #expect(s.deviceBlockCount == 10_000)
        var probe = long
        probe.truncate(toBlocks: 2000)
        var lookups = 0
        let m = CachedPrefix.match(probe) { h in
            lookups += 1
            return s.tier(h)
        }
        #expect(m.deviceBlocks == 2000 && lookups <= 12)
    }
}

@Suite struct CacheDeltaTests {
    func delta(_ n: UInt64, instance: String = "i1", snapshot: Bool = false, _ engines: [(String, [(UInt64, CacheTier)])]) -> CacheDeltaMessage {
        CacheDeltaMessage(node: "b", instance: instance, number: n, snapshot: snapshot,
                          engines: engines.map { .init(id: $0.0, entries: $0.1.map { .init($0.0, $0.1) }) })
    }

    @Test func theWireFormIsNineBytesAnEntryAndRoundTrips() throws {
        let d = delta(7, [("llama.cpp:m", [(0xDEAD_BEEF_0123_4567, .device), (42, .ram)]), ("ollama", [(1, CacheTier.none)])])
        let frames = MeshWireCodec.encode(d.wire)
        #expect(frames.count == 3 && frames[2].count == 27)
        let back = try #require(CacheDeltaMessage(try MeshWireCodec.decode(frames)))
        #expect(back == d)
        // Counts that do not add up, or an unknown tier, are refused.
        var m = d.wire
        m.payload.removeLast()
        #expect(CacheDeltaMessage(m) == nil)
        m = d.wire
        m.payload[8] = 9
        #expect(CacheDeltaMessage(m) == nil)
        m = d.wire
        m.payload += [0, 0, 0, 0, 0, 0, 0, 0, 2]
        #expect(CacheDeltaMessage(m) == nil)
    }

    @Test func aPeersCachesFollowItsNumbersAndRestartWithItsInstance() {
        var p = PeerCaches(retryNanos: 1000)
        let chain = PromptChain(model: "m", bytes: text("x", 64 * 8))
        let entries = chain.hashes.map { ($0, CacheTier.device) }
        #expect(p.receive(delta(1, [("e", entries)]), now: 0) == .gap, "no snapshot yet: ask")
        #expect(p.receive(delta(2, [("e", entries)]), now: 10) == .stale, "asked already, within the retry time")
        #expect(p.receive(delta(3, [("e", entries)]), now: 2000) == .gap, "no snapshot came: ask again")
        #expect(p.receive(delta(3, snapshot: true, [("e", entries)]), now: 2001) == .applied)
        #expect(p.match("e", chain)?.deviceBlocks == 8)
        #expect(p.receive(delta(4, [("e", [(chain.hashes[7], .none)])]), now: 2002) == .applied)
        #expect(p.match("e", chain)?.deviceBlocks == 4, "block 7 dropped: known up to block 3")
        #expect(p.receive(delta(4, [("e", [])]), now: 2003) == .stale)
        // The peer restarted: a new instance, numbers from 1, nothing known until its snapshot.
        #expect(p.receive(delta(1, instance: "i2", [("e", entries)]), now: 2004) == .gap)
        #expect(p.match("e", chain) == nil)
    }
}
