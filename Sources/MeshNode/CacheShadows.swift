import MeshCore
import MeshNet
import Synchronization

/// The node's side of cache-aware routing: a ``CacheShadow`` of each of its own engines (kept
/// from the requests it sends and what the engines report), and a ``PeerCacheView`` of each
/// peer engine (kept from the peers' deltas). Thread-safe; every decision is in MeshCore.
public final class CacheShadows: Sendable {
    /// A request's place in a local engine's shadow, from `begin` to `finish`.
    public struct Ticket: Sendable {
        let engineID: String
        let sequence: Int
        let predictedBlocks: Int
        let prompt: PromptChain
        /// The request's operation (how its answer extends the prompt).
        let operation: APIOperation
        /// The engine's shadow generation at `begin` (a reset since then voids the ticket).
        let generation: Int
    }

    struct Local: Sendable {
        var shadow: CacheShadow
        var generation = 0
        var healthy = true
        /// Number of the last slot report applied (see ``SlotReport``).
        var slotReport: UInt64 = 0
    }

    struct State: Sendable {
        var local: [String: Local] = [:]
        var peers: [String: PeerCaches] = [:]
        /// Number of the last delta this node drained for its peers.
        var number: UInt64 = 0
    }

    private let state = Mutex(State())
    private let clock: any WallClock

    public init(clock: any WallClock) {
        self.clock = clock
    }

    // MARK: local engines

    /// Keeps the shadows in step with the engines: one per engine, sized to its slots and
    /// context; an engine that went down (restarted) loses what it held; each slot report (from a
    /// quiet poll) is checked against the shadow once.
    public func sync(_ snapshots: [EngineSnapshot]) {
        state.withLock { s in
            for e in snapshots {
                let slots = Self.sequences(e)
                if var l = s.local[e.id] {
                    if !e.healthy && l.healthy {
                        l.shadow.reset()
                        l.generation += 1
                    }
                    l.healthy = e.healthy
                    if l.shadow.slotCount != min(64, slots) {
                        // Slots changed (the engine was restarted with another -np): start afresh.
                        l.shadow = CacheShadow(slots: slots, options: Self.options(e))
                        l.generation += 1
                    }
                    if let r = e.slotReport, r.number > l.slotReport {
                        l.shadow.observe(r)
                        l.slotReport = r.number
                    }
                    s.local[e.id] = l
                } else {
                    s.local[e.id] = Local(shadow: CacheShadow(slots: slots, options: Self.options(e)), healthy: e.healthy,
                                          slotReport: e.slotReport?.number ?? 0)
                }
            }
        }
    }

    /// Sequences the shadow keeps for an engine: its slots (llama-server), else meshd's limit for it
    /// (Ollama's parallel requests); an OpenAI-compatible engine that reports neither (vLLM) keeps
    /// prefix blocks of many prompts in one pool: 16 recent prompts stand for it.
    static func sequences(_ e: EngineSnapshot) -> Int {
        if let s = e.load.slots { return max(1, s) }
        if e.kind == .openai { return 16 }
        return max(1, e.load.limit ?? 1)
    }

    static func options(_ e: EngineSnapshot) -> CacheShadow.Options {
        var o = CacheShadow.Options()
        // A slot holds its context: at ~4 bytes a token, a block is ~16 tokens.
        if let ctx = e.models.compactMap(\.contextLength).max(), ctx > 0 {
            o.sequenceBlocks = max(1, ctx * 4 / PromptChain.blockBytes)
        }
        // llama-server keeps prompts in host RAM (`--cache-ram`, 8 GiB by default): meshd's own
        // llama-servers, and OpenAI-compatible engines that report slots (llama-server's `/slots`).
        // One that has none (`--cache-ram 0`) is found out by its reports (CacheShadow).
        if e.kind == .llamaCpp || (e.kind == .openai && e.load.slots != nil) {
            o.ramMaxBlocks = max(16_384, 4 * max(1, e.load.slots ?? 1) * (o.sequenceBlocks ?? 4096))
        }
        return o
    }

    /// What a local engine holds of `chain`, in tokens discounted by its shadow's accuracy.
    public func local(_ engineID: String, _ chain: PromptChain) -> CacheEstimate? {
        state.withLock { s -> CacheEstimate? in
            guard let l = s.local[engineID] else { return nil }
            // An idle slot takes the request: only what idle slots hold counts. All busy: it waits
            // for whichever frees first, the holder about one time in `slots`.
            let idle = l.shadow.hasIdleSequence
            let m = l.shadow.match(chain, idleOnly: idle)
            guard m.anyBlocks > 0 else { return nil }
            let share = idle ? 1 : 1 / Double(l.shadow.slotCount)
            // Pinned to a slot only while the shadow has been right: a wrong pin would cost the
            // prefix llama-server itself would have found (it picks by similarity, else least recently used).
            return CacheEstimate(tokens: l.shadow.tokens(m) * l.shadow.accuracy * share, slot: l.shadow.accuracy >= 0.9 ? m.slot : nil)
        }
    }

    /// What a peer's engine holds of `chain` (from its deltas), in tokens at ~4 bytes a token. The
    /// views do not say which slots are busy: with `busy` of `slots` taken, the holder is free
    /// about `1 − busy/slots` of the time (all taken: about one time in `slots`).
    public func peer(_ node: String, _ engineID: String, _ chain: PromptChain, busy: Int = 0, slots: Int = 1) -> CacheEstimate? {
        state.withLock { s -> CacheEstimate? in
            guard let m = s.peers[node]?.match(engineID, chain) else { return nil }
            guard m.anyBlocks > 0 else { return nil }
            let blockTokens = Double(PromptChain.blockBytes) / 4
            let n = Double(max(1, slots))
            let free = busy < slots ? 1 - Double(busy) / n : 1 / n
            let device = Double(m.deviceBlocks) * free
            return CacheEstimate(tokens: (device + 0.8 * Double(m.anyBlocks - m.deviceBlocks)) * blockTokens)
        }
    }

    /// Blocks an engine's cache holds in its slots: a local engine's (`node` nil) or a peer's.
    public func held(node: String?, engine: String) -> Int {
        state.withLock { s in
            // In peer-view units (every `peerStride`-th block), so local and peer engines compare.
            guard let node else { return (s.local[engine]?.shadow.deviceBlockCount ?? 0) / CacheShadow.peerStride }
            return s.peers[node]?.engines[engine]?.tiers.count ?? 0
        }
    }

    /// A request of `operation` with prompt `chain` goes to local engine `engineID`.
    public func begin(_ engineID: String, _ chain: PromptChain, operation: APIOperation, pinned: Int? = nil) -> Ticket? {
        let now = clock.nowNanos()
        return state.withLock { s -> Ticket? in
            guard var l = s.local[engineID] else { return nil }
            let (seq, predicted) = l.shadow.begin(chain, pinned: pinned, now: now)
            s.local[engineID] = l
            return Ticket(engineID: engineID, sequence: seq, predictedBlocks: predicted, prompt: chain, operation: operation,
                          generation: l.generation)
        }
    }

    /// The request ended: `usage` is what the engine reported (nil: it failed or said nothing),
    /// `answer` the UTF-8 text it generated (or its start), which the engine's slot now holds
    /// after the prompt. A failed request leaves the slot's content unknown.
    public func finish(_ t: Ticket, ok: Bool, usage: TokenUsage?, answer: [UInt8]) {
        let now = clock.nowNanos()
        var held: PromptChain?
        if ok {
            held = t.prompt
            if !answer.isEmpty { held?.append(PromptRendering.answer(answer, operation: t.operation)) }
        }
        state.withLock { s in
            guard var l = s.local[t.engineID], l.generation == t.generation else { return }
            l.shadow.finish(sequence: t.sequence, held: held, predictedBlocks: t.predictedBlocks,
                            promptBytes: t.prompt.byteCount, promptTokens: usage?.promptTokens, cachedTokens: usage?.cachedTokens, now: now)
            s.local[t.engineID] = l
        }
    }

    // MARK: sharing with peers

    /// This node's cache changes since the last call, as the next numbered delta; nil if none.
    public func drain(node: String) -> CacheDeltaMessage? {
        state.withLock { s -> CacheDeltaMessage? in
            var engines: [CacheDeltaMessage.EngineChanges] = []
            for id in s.local.keys.sorted() {
                let changes = s.local[id]!.shadow.drainChanges()
                if !changes.isEmpty { engines.append(.init(id: id, entries: changes.map { .init($0.0, $0.1) })) }
            }
            guard !engines.isEmpty else { return nil }
            s.number += 1
            return CacheDeltaMessage(node: node, instance: "", number: s.number, snapshot: false, engines: engines)
        }
    }

    /// Everything this node's engines hold; changes not yet drained are in it, and in the next delta too (harmless).
    public func snapshot(node: String) -> CacheDeltaMessage {
        state.withLock { s in
            CacheDeltaMessage(node: node, instance: "", number: s.number, snapshot: true,
                              engines: s.local.keys.sorted().map { id in
                                  .init(id: id, entries: s.local[id]!.shadow.snapshot().map { .init($0.0, $0.1) })
                              })
        }
    }

    /// A peer's delta or snapshot; false when one is missing (ask it for a snapshot).
    public func receive(_ m: CacheDeltaMessage) -> Bool {
        let now = clock.nowNanos()
        return state.withLock { s in s.peers[m.node, default: PeerCaches()].receive(m, now: now) != .gap }
    }

    /// A peer left: its caches are forgotten.
    public func forget(node: String) {
        _ = state.withLock { $0.peers.removeValue(forKey: node) }
    }

    /// Hooks for the mesh to carry this node's deltas and its peers'.
    public func meshHooks(node: String) -> MeshCacheHooks {
        MeshCacheHooks(drain: { [self] in drain(node: node) }, snapshot: { [self] in snapshot(node: node) },
                       received: { [self] in receive($0) }, forget: { [self] in forget(node: $0) })
    }

    /// Per local engine: predicted and reported cached tokens (summed), accuracy, blocks held, slots
    /// corrected by its slot reports.
    public func stats() -> [(engine: String, predicted: Int, reported: Int, accuracy: Double, blocks: Int, ramBlocks: Int,
                             slotCorrections: Int)] {
        state.withLock { s in
            s.local.sorted { $0.key < $1.key }.map { id, l in
                (id, l.shadow.predictedTokens, l.shadow.reportedTokens, l.shadow.accuracy, l.shadow.deviceBlockCount,
                 l.shadow.ramBlockCount, l.shadow.slotCorrections)
            }
        }
    }
}
