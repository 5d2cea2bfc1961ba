// A llama-server-like prompt (KV) cache model: a stand-in tokenizer, per-slot contexts,
// slot choice by longest common prefix, and the number of prompt tokens a request can reuse.
import ArgumentParser
import MeshCore

/// How the simulator counts prompt tokens and whether slots reuse a cached prefix.
enum CacheMode: String, Sendable, CaseIterable, ExpressibleByArgument {
    /// Today's model: prompt tokens are words, no contexts are kept, the first free slot runs a request.
    case legacy
    /// Prompt tokens are 4-byte chunks of the rendered prompt; slots keep their context and a request
    /// prefills only the tokens after the prefix it shares with its slot's context.
    case on
    /// Tokens and slot contexts as with `on`, but every request prefills its whole prompt.
    case off
}

/// What the scheduler needs to know about one request's prompt.
struct CacheRequest: Sendable {
    /// The prompt's token ids (empty for untracked requests).
    var ids: [UInt64]
    /// Slot asked for with `id_slot` / `slot_id`, when it exists.
    var pin: Int?
    /// False when the body says `"cache_prompt": false`.
    var reuse: Bool
    /// Whether the request takes part in the cache model (not in legacy mode, not for embeddings).
    var tracked: Bool

    /// A request outside the cache model (legacy mode, embeddings).
    static let untracked = CacheRequest(ids: [], pin: nil, reuse: false, tracked: false)
}

// MARK: - tokens

/// The deterministic stand-in tokenizer: a token is a 4-byte chunk of the UTF-8 rendering.
enum SimTokens {
    /// Id of a prompt chunk: its bytes (little-endian) and its length in bits 32...; exact, no hashing.
    static func chunks(_ bytes: [UInt8]) -> [UInt64] {
        var ids: [UInt64] = []
        ids.reserveCapacity((bytes.count + 3) / 4)
        bytes.withUnsafeBufferPointer { p in
            var i = 0
            while i < p.count {
                let n = min(4, p.count - i)
                var v = UInt64(n) << 32
                for k in 0..<n { v |= UInt64(p[i + k]) << (8 * k) }
                ids.append(v)
                i += n
            }
        }
        return ids
    }

    /// Id of the `k`-th generated token (`"tok<k> "`); disjoint from every prompt chunk id.
    @inline(__always) static func generated(_ k: Int) -> UInt64 { (1 << 40) | UInt64(truncatingIfNeeded: k) }

    /// Length of the common prefix of `a` and `b`: one pass, no allocation.
    static func commonPrefix(_ a: [UInt64], _ b: [UInt64]) -> Int {
        a.withUnsafeBufferPointer { pa in
            b.withUnsafeBufferPointer { pb in
                let n = min(pa.count, pb.count)
                var i = 0
                while i < n && pa[i] == pb[i] { i += 1 }
                return i
            }
        }
    }

    /// A stable FNV-1a hash of a token sequence (for `GET /sim/cache`).
    static func hash(_ ids: [UInt64]) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for id in ids {
            var v = id
            for _ in 0..<8 {
                h ^= v & 0xff
                h = h &* 0x0000_0100_0000_01B3
                v >>= 8
            }
        }
        return h
    }
}

// MARK: - rendering

/// The text of a message `content`: a string, or the `text` of each part, concatenated.
private func appendContent(_ c: JSON?, into bytes: inout [UInt8]) {
    guard let c else { return }
    switch c {
    case .string(let s): bytes.append(contentsOf: s.utf8)
    case .array(let parts):
        for p in parts {
            if let t = p["text"]?.stringValue {
                bytes.append(contentsOf: t.utf8)
            } else if let s = p.stringValue {
                bytes.append(contentsOf: s.utf8)
            }
        }
    default: break
    }
}

/// A chat as the engine sees it: `<|role|>\ncontent\n` per message, then `<|assistant|>\n`.
func renderChat(_ messages: [JSON]) -> [UInt8] {
    var bytes: [UInt8] = []
    for m in messages {
        bytes.append(contentsOf: "<|".utf8)
        bytes.append(contentsOf: (m["role"]?.stringValue ?? "user").utf8)
        bytes.append(contentsOf: "|>\n".utf8)
        appendContent(m["content"], into: &bytes)
        bytes.append(0x0A)
    }
    bytes.append(contentsOf: "<|assistant|>\n".utf8)
    return bytes
}

/// A completion / generate prompt as the engine sees it: the system text (if any), then the prompt.
func renderPrompt(system: String?, prompt: String) -> [UInt8] {
    var bytes: [UInt8] = []
    if let system { bytes.append(contentsOf: system.utf8) }
    bytes.append(contentsOf: prompt.utf8)
    return bytes
}

/// The slot a body asks for with `id_slot` (or `slot_id`), when it is a slot of this engine.
func pinnedSlot(_ json: JSON, slotCount: Int) -> Int? {
    guard let n = (json["id_slot"] ?? json["slot_id"])?.intValue, n >= 0, n < slotCount else { return nil }
    return n
}

// MARK: - host-RAM prompt cache

/// llama-server's host-memory prompt cache (`--cache-ram`, `server_prompt_cache`), counted in tokens: a FIFO of whole
/// slot contexts. A slot's context is saved here when the slot is about to lose most of it, and (like
/// `--cache-idle-slots`) idle slots' contexts are copied here after each launch; loading an entry moves it back into a
/// slot and out of the cache. Not thread-safe: `Engine` keeps it under its mutex.
struct RAMPromptCache {
    /// Most tokens held at once (0 = off).
    private(set) var limit: Int
    /// Saved contexts, oldest first.
    private(set) var entries: [[UInt64]] = []
    /// Tokens held (the sum of the entries' lengths).
    private(set) var tokens = 0

    init(limit: Int) { self.limit = max(0, limit) }

    var isOn: Bool { limit > 0 }

    /// Stores a copy of `context` like `server_prompt_cache::alloc`: nothing when it is empty, already inside an entry,
    /// or longer than the limit; else drops the entries it contains, evicts the oldest until it fits, and appends it.
    mutating func save(_ context: [UInt64]) {
        guard isOn, !context.isEmpty, context.count <= limit else { return }
        if entries.contains(where: { SimTokens.commonPrefix($0, context) == context.count }) { return }
        remove { SimTokens.commonPrefix($0, context) == $0.count }
        while !entries.isEmpty && tokens + context.count > limit { dropOldest() }
        entries.append(context)
        tokens += context.count
    }

    /// The entry `load` would restore for `prompt` into a slot holding `context` (`server_prompt_cache::load`): the
    /// first entry, in age order, that keeps at least a quarter of itself and beats the best so far (the slot's own
    /// context first) on both the fraction of itself kept and the fraction of the prompt covered.
    func best(for prompt: [UInt64], slotContext context: [UInt64]) -> Int? {
        guard !prompt.isEmpty else { return nil }
        let n = Double(prompt.count)
        let lcp = SimTokens.commonPrefix(context, prompt)
        // An empty slot: any usable entry wins.
        var keepBest = context.isEmpty ? -1 : Double(lcp) / Double(context.count)
        var simBest = Double(lcp) / n
        var best: Int?
        for (k, entry) in entries.enumerated() {
            let cur = SimTokens.commonPrefix(entry, prompt)
            let keep = Double(cur) / Double(entry.count)
            let sim = Double(cur) / n
            // As llama-server: "don't trash large prompts".
            if keep < 0.25 { continue }
            if keepBest < keep && simBest < sim {
                keepBest = keep
                simBest = sim
                best = k
            }
        }
        return best
    }

    /// Replaces `context` with the best entry for `prompt` (see ``best(for:slotContext:)``), which leaves the cache.
    /// Returns the tokens restored (0 when no entry is better than the context).
    mutating func load(_ prompt: [UInt64], into context: inout [UInt64]) -> Int {
        guard let k = best(for: prompt, slotContext: context) else { return 0 }
        context = entries.remove(at: k)
        tokens -= context.count
        return context.count
    }

    /// Changes the limit, evicting the oldest entries that no longer fit (0 empties the cache).
    mutating func setLimit(_ n: Int) {
        limit = max(0, n)
        while !entries.isEmpty && tokens > limit { dropOldest() }
    }

    /// Empties the cache (`POST /sim/cache/clear`, mode changes).
    mutating func clear() {
        entries = []
        tokens = 0
    }

    private mutating func dropOldest() {
        tokens -= entries.removeFirst().count
    }

    private mutating func remove(where drop: ([UInt64]) -> Bool) {
        entries.removeAll { e in
            guard drop(e) else { return false }
            tokens -= e.count
            return true
        }
    }
}

// MARK: - slot contexts

/// What starting a request on a slot does with the cache.
struct Claim: Sendable, Equatable {
    /// Prompt tokens reused (including any restored from the RAM cache).
    var cached = 0
    /// Tokens copied back from the RAM cache into the slot before the request ran (0 = none).
    var restored = 0
}

/// Per-slot contexts, recency, and the host-RAM prompt cache behind them. Not thread-safe: `Engine` keeps it under its mutex.
struct SlotCache {
    /// Tokens each slot holds (prompt + output of its last request, at most `nCtx`).
    private(set) var contexts: [[UInt64]]
    /// Use stamp per slot (0 = never used); the smallest stamp among idle slots is the LRU one.
    private(set) var lastUsed: [UInt64]
    /// Prompt tokens and cached tokens of each slot's last (or current) request.
    private(set) var lastPrompt: [Int]
    private(set) var lastCached: [Int]
    /// Contexts saved to host RAM (`--cache-ram-tokens`; off at 0). Used only in mode `on`.
    private(set) var ram: RAMPromptCache
    private var stamp: UInt64 = 0
    let nCtx: Int

    init(slots: Int, nCtx: Int, ramLimit: Int = 0) {
        contexts = Array(repeating: [], count: slots)
        lastUsed = Array(repeating: 0, count: slots)
        lastPrompt = Array(repeating: 0, count: slots)
        lastCached = Array(repeating: 0, count: slots)
        ram = RAMPromptCache(limit: ramLimit)
        self.nCtx = max(1, nCtx)
    }

    /// Tokens of `req` that `slot` could reuse now: the common prefix, at most prompt − 1 (one token is
    /// always evaluated); 0 unless the mode is `on` and the request allows reuse.
    func cachedTokens(slot: Int, _ req: CacheRequest, mode: CacheMode) -> Int {
        guard req.tracked, req.reuse, mode == .on, !req.ids.isEmpty else { return 0 }
        return min(SimTokens.commonPrefix(contexts[slot], req.ids), req.ids.count - 1)
    }

    /// Whether `slot`'s context shares more than `similarity` of the prompt (the test `select` uses; 0 = never).
    private func isSimilar(slot: Int, _ req: CacheRequest, similarity: Double) -> Bool {
        similarity > 0 && !req.ids.isEmpty
            && Double(SimTokens.commonPrefix(contexts[slot], req.ids)) > similarity * Double(req.ids.count)
    }

    /// The idle slot a request takes, like llama-server: the pinned slot; else the idle slot sharing the
    /// longest prefix when that prefix is more than `similarity` of the prompt (0 turns this off); else the
    /// least recently used idle slot. Legacy / untracked requests take the first idle slot. Nil: wait.
    func select(_ req: CacheRequest, busy: [Bool], mode: CacheMode, similarity: Double) -> Int? {
        if let pin = req.pin { return busy[pin] ? nil : pin }
        guard req.tracked, mode != .legacy else { return busy.firstIndex(of: false) }
        if similarity > 0 && !req.ids.isEmpty {
            var best = -1
            var bestLen = 0
            for s in busy.indices where !busy[s] {
                let n = SimTokens.commonPrefix(contexts[s], req.ids)
                if n > bestLen {
                    best = s
                    bestLen = n
                }
            }
            // As llama-server: strictly above the threshold.
            if best >= 0 && Double(bestLen) > similarity * Double(req.ids.count) { return best }
        }
        var lru: Int?
        for s in busy.indices where !busy[s] {
            // As llama-server (`t_last_used <= t_last`): among equally old slots, the last.
            if lru == nil || lastUsed[s] <= lastUsed[lru!] { lru = s }
        }
        return lru
    }

    /// Whether llama-server updates its RAM cache before running `req` on `slot` (`update_cache` in
    /// `get_available_slot`): a slot taken by similarity only when it would keep less than half of its context; a
    /// slot taken by LRU always. A pinned slot goes through the similarity step alone (none with similarity 0):
    /// an empty one never updates, a dissimilar one keeps none of its context (f_keep 0) so always does.
    private func updatesRAM(slot: Int, _ req: CacheRequest, similarity: Double) -> Bool {
        if req.pin != nil && (similarity <= 0 || contexts[slot].isEmpty) { return false }
        guard isSimilar(slot: slot, req, similarity: similarity) else { return true }
        let keep = Double(SimTokens.commonPrefix(contexts[slot], req.ids)) / Double(contexts[slot].count)
        return keep < 0.5
    }

    /// The RAM-cache step and reuse count of starting `req` on `slot`: when llama-server would update its cache, saves
    /// the slot's context to RAM and loads the best entry for the prompt into the slot; then counts the cached tokens.
    /// Changes only `slot`'s context and the RAM cache; ``plan(_:busy:mode:similarity:)`` runs it on a copy.
    private mutating func restore(slot: Int, _ req: CacheRequest, mode: CacheMode, similarity: Double) -> Claim {
        var restored = 0
        if mode == .on && ram.isOn && req.tracked && !req.ids.isEmpty
            && updatesRAM(slot: slot, req, similarity: similarity) {
            ram.save(contexts[slot])
            restored = ram.load(req.ids, into: &contexts[slot])
        }
        return Claim(cached: cachedTokens(slot: slot, req, mode: mode), restored: restored)
    }

    /// What `req` would get if it started now, without changing anything: the slot `select` picks among `busy` and
    /// its ``Claim`` (including a RAM load). Nil when the request would wait. The same steps as ``claim``.
    func plan(_ req: CacheRequest, busy: [Bool], mode: CacheMode, similarity: Double) -> (slot: Int, claim: Claim)? {
        guard let slot = select(req, busy: busy, mode: mode, similarity: similarity) else { return nil }
        var copy = self
        return (slot, copy.restore(slot: slot, req, mode: mode, similarity: similarity))
    }

    /// Starts `req` on `slot` (marked busy in `busy`): runs the RAM-cache step, makes the prompt the slot's context,
    /// then copies every other idle slot's context to RAM (llama-server's `--cache-idle-slots`). Returns the claim.
    mutating func claim(slot: Int, _ req: CacheRequest, promptTokens: Int, mode: CacheMode, similarity: Double,
                        busy: [Bool]) -> Claim {
        let claim = restore(slot: slot, req, mode: mode, similarity: similarity)
        stamp &+= 1
        lastUsed[slot] = stamp
        lastPrompt[slot] = promptTokens
        lastCached[slot] = claim.cached
        if req.tracked && mode != .legacy {
            contexts[slot] = req.ids.count > nCtx ? Array(req.ids.prefix(nCtx)) : req.ids
        }
        if mode == .on && ram.isOn {
            for s in busy.indices where !busy[s] && s != slot { ram.save(contexts[s]) }
        }
        return claim
    }

    /// Appends the `generated` output tokens of the request that ran on `slot` (up to `nCtx`).
    mutating func finish(slot: Int, generated: Int, tracked: Bool) {
        guard tracked, generated > 0 else { return }
        let room = min(generated, nCtx - contexts[slot].count)
        guard room > 0 else { return }
        contexts[slot].reserveCapacity(contexts[slot].count + room)
        for k in 0..<room { contexts[slot].append(SimTokens.generated(k)) }
    }

    /// Sets the RAM cache's token limit (`--cache-ram-tokens`), evicting what no longer fits.
    mutating func setRAMLimit(_ n: Int) { ram.setLimit(n) }

    /// Empties every context and the RAM cache (`POST /sim/cache/clear`, mode changes).
    mutating func clear() {
        for s in contexts.indices { contexts[s] = [] }
        ram.clear()
    }
}
