/// Where a block of a prompt is held: in an engine's KV cache (a slot's context), only in its
/// host-RAM prompt cache (llama-server `--cache-ram`: restored, not recomputed), or nowhere.
public enum CacheTier: UInt8, Sendable, Hashable, Codable {
    case none = 0
    case ram = 1
    case device = 2
}

/// How much of a prompt an engine holds, as meshd's shadow of its cache predicts.
public struct CachedPrefix: Sendable, Hashable {
    /// Leading blocks of the prompt held in a slot's context.
    public var deviceBlocks: Int
    /// Leading blocks held in either tier (≥ `deviceBlocks`): the rest of them would be restored from host RAM.
    public var anyBlocks: Int
    /// The slot (sequence) holding the device-tier match, when known and idle (requests are pinned to it).
    public var slot: Int?

    public init(deviceBlocks: Int = 0, anyBlocks: Int = 0, slot: Int? = nil) {
        self.deviceBlocks = deviceBlocks
        self.anyBlocks = max(anyBlocks, deviceBlocks)
        self.slot = slot
    }

    public static let none = CachedPrefix()

    /// The longest prefix of `chain` held, found with a binary search over `tier(hash)`: block `i`
    /// of a chain is held only with all blocks before it (its hash covers them), so "held" is
    /// monotone along the chain. O(log n) lookups.
    public static func match(_ chain: PromptChain, tier: (UInt64) -> CacheTier) -> CachedPrefix {
        match(chain, stride: 1, tier: tier)
    }

    /// As ``match(_:tier:)`` over every `stride`-th block (blocks `stride − 1`, `2·stride − 1`, …:
    /// what a peer's view holds): the held prefix to within `stride` blocks, rounded down.
    public static func match(_ chain: PromptChain, stride: Int, tier: (UInt64) -> CacheTier) -> CachedPrefix {
        let all = chain.hashes
        let h = stride <= 1 ? all : Swift.stride(from: stride - 1, to: all.count, by: stride).map { all[$0] }
        let scale = max(1, stride)
        func deepest(_ minimum: CacheTier, from lower: Int) -> Int {
            // Invariant: blocks < lo are held (at `minimum` or above); blocks ≥ hi are not.
            var lo = lower, hi = h.count
            while lo < hi {
                let mid = (lo + hi) / 2
                if tier(h[mid]).rawValue >= minimum.rawValue { lo = mid + 1 } else { hi = mid }
            }
            return lo
        }
        let device = deepest(.device, from: 0)
        return CachedPrefix(deviceBlocks: device * scale, anyBlocks: deepest(.ram, from: device) * scale)
    }
}

/// meshd's picture of one engine's prompt cache: what each of its sequences (llama-server slots,
/// Ollama parallel slots; for a vLLM-style block pool, recent prompts) holds, as chains of block
/// hashes, plus the host-RAM tier. Kept by the node that fronts the engine, from the requests it
/// sends and the answers it relays; corrected by what the engine reports it reused and what its
/// slots hold (``observe(_:)``). Pure: time comes in as arguments. Memory is bounded (`maxBlocks`,
/// `ramMaxBlocks`), least recently used out.
///
/// The host-RAM tier follows llama-server's prompt cache (`--cache-ram`, `--cache-idle-slots`, both on
/// by default): when a request takes a slot by least-recently-used choice (or a similar slot it
/// would mostly overwrite), the slot's prompt is saved to RAM and the saved prompt that best fits
/// the request is loaded back (moved out of RAM); then every other idle slot is saved too. Saved
/// prompts leave oldest first. An engine that turns out to have no RAM cache (its reports never
/// show a predicted restore) loses the tier after ``ramMissesToDisable`` misses.
public struct CacheShadow: Sendable {
    public struct Options: Sendable, Hashable {
        /// Most blocks held across the sequences (each 8 bytes of hash plus index space).
        public var maxBlocks = 16_384
        /// Most blocks in the host-RAM tier (0: the engine has none).
        public var ramMaxBlocks = 0
        /// Blocks one sequence can hold (its context); nil: unbounded but for `maxBlocks`.
        public var sequenceBlocks: Int? = nil
        /// llama-server's `--slot-prompt-similarity`: a slot is reused for a prompt only when their
        /// common prefix is at least this fraction of the prompt; else the least recently used slot.
        public var slotSimilarity = 0.1
        public init() {}
    }

    struct Sequence: Sendable {
        var hashes: [UInt64] = []
        var lastUsed: UInt64 = 0
        var busy = 0
        /// Blocks of the last prediction on this sequence that came from a host-RAM restore.
        var restoredBlocks = 0
    }

    /// Misses in a row (a restore predicted, the engine reused no more than its slot held) after
    /// which the engine is taken to have no host-RAM prompt cache (`--cache-ram 0`).
    public static let ramMissesToDisable = 3

    public private(set) var options: Options
    private(set) var sequences: [Sequence]
    /// hash → bitmask of the sequences holding it (so at most 64 sequences).
    private var deviceIndex: [UInt64: UInt64] = [:]
    /// Saved prompts, oldest first (llama-server's `server_prompt_cache::states`).
    private var ram: [[UInt64]] = []
    /// hash → how many RAM entries hold it.
    private var ramIndex: [UInt64: Int32] = [:]
    private var ramBlocks = 0
    private var ramMisses = 0
    /// Tier changes not yet sent to peers: hash → its tier now.
    private var pending: [UInt64: CacheTier] = [:]
    /// The share of predicted cached tokens the engine really reused (1: all), smoothed: matches
    /// on this engine are discounted by it.
    public private(set) var accuracy = 1.0
    /// Tokens per rendered byte, learned from the engine's prompt token counts (≈ 1/4 for English).
    public private(set) var tokensPerByte = 0.25
    /// Predicted and reported cached tokens, summed (for metrics).
    public private(set) var predictedTokens = 0
    public private(set) var reportedTokens = 0
    /// Slots corrected by the engine's slot reports (``observe(_:)``), summed (for metrics).
    public private(set) var slotCorrections = 0

    /// A shadow for an engine with `slots` sequences (1...64).
    public init(slots: Int, options: Options = .init()) {
        self.options = options
        sequences = Array(repeating: Sequence(), count: min(64, max(1, slots)))
    }

    public var slotCount: Int { sequences.count }
    /// Blocks held in slots, and in the RAM tier.
    public var deviceBlockCount: Int { sequences.reduce(0) { $0 + $1.hashes.count } }
    public var ramBlockCount: Int { ramBlocks }
    /// Whether the shadow keeps a host-RAM tier (configured, and not disproved by the engine's reports).
    public var hasRAMTier: Bool { options.ramMaxBlocks > 0 }

    /// The tier of one block hash.
    public func tier(_ hash: UInt64) -> CacheTier {
        if deviceIndex[hash] != nil { return .device }
        return ramIndex[hash] != nil ? .ram : .none
    }

    /// Whether some sequence runs no request now.
    public var hasIdleSequence: Bool { sequences.contains { $0.busy == 0 } }

    /// How much of `chain` the engine holds; `slot` is an idle sequence holding the device match.
    /// `idleOnly`: only what idle sequences hold (a busy one's prompt is not reused: the engine
    /// gives the request another slot), the host-RAM tier still counting.
    public func match(_ chain: PromptChain, idleOnly: Bool = false) -> CachedPrefix {
        var idle: UInt64 = 0
        if idleOnly { for (i, q) in sequences.enumerated() where q.busy == 0 { idle |= UInt64(1) << UInt64(i) } }
        var m = CachedPrefix.match(chain) { h in
            if let mask = deviceIndex[h], !idleOnly || mask & idle != 0 { return .device }
            return ramIndex[h] != nil ? .ram : .none
        }
        if m.deviceBlocks > 0, let mask = deviceIndex[chain.hashes[m.deviceBlocks - 1]] {
            m.slot = bestSequence(in: mask, idleOnly: true)
        }
        return m
    }

    /// Tokens a match stands for, with this engine's token rate: device blocks in full, RAM-tier
    /// blocks as `ramWeight` of a token each (restoring is cheaper than prefill, not free).
    public func tokens(_ m: CachedPrefix, ramWeight: Double = 0.8) -> Double {
        let bytesPerBlock = Double(PromptChain.blockBytes)
        return (Double(m.deviceBlocks) + ramWeight * Double(m.anyBlocks - m.deviceBlocks)) * bytesPerBlock * tokensPerByte
    }

    // MARK: requests

    /// A request with prompt `chain` is sent to the engine: the sequence it will use (the slot it
    /// is pinned to, else the one the engine would pick, as llama-server does) is marked busy, and
    /// the host-RAM tier moves as llama-server's would (see the type's notes).
    /// Returns that sequence and the blocks it is predicted to reuse.
    public mutating func begin(_ chain: PromptChain, pinned: Int? = nil, now: UInt64) -> (sequence: Int, blocks: Int) {
        let pin = pinned.flatMap { $0 >= 0 && $0 < sequences.count ? $0 : nil }
        let s = pin ?? pick(chain)
        var restored = 0
        if hasRAMTier {
            let before = commonBlocks(sequences[s].hashes, chain.hashes)
            if savesToRAM(s, chain, common: before, pinned: pin != nil) {
                saveToRAM(sequences[s].hashes)
                if loadFromRAM(into: s, for: chain.hashes) {
                    restored = max(0, commonBlocks(sequences[s].hashes, chain.hashes) - before)
                }
            }
            // `--cache-idle-slots`: every other idle slot is saved as the request starts.
            for i in sequences.indices where i != s && sequences[i].busy == 0 { saveToRAM(sequences[i].hashes) }
        }
        sequences[s].busy += 1
        sequences[s].lastUsed = now
        sequences[s].restoredBlocks = restored
        return (s, commonBlocks(sequences[s].hashes, chain.hashes))
    }

    /// The request on `sequence` ended. `held` is the chain of its prompt and answer (nil when it
    /// failed: the sequence's content is then unknown and forgotten); `slot` is the slot the engine
    /// says it used, when it says (corrects a wrong guess). `predictedBlocks` came from `begin`;
    /// `promptTokens` and `cachedTokens` are what the engine reported, when it did.
    public mutating func finish(sequence: Int, held: PromptChain?, slot: Int? = nil, predictedBlocks: Int,
                                promptBytes: Int, promptTokens: Int?, cachedTokens: Int?, now: UInt64) {
        guard sequence >= 0 && sequence < sequences.count else { return }
        sequences[sequence].busy = max(0, sequences[sequence].busy - 1)
        if let p = promptTokens, p > 0, promptBytes > 0 {
            tokensPerByte = 0.8 * tokensPerByte + 0.2 * min(2, Double(p) / Double(promptBytes))
        }
        if let c = cachedTokens {
            noteRAMEvidence(sequence: sequence, predictedBlocks: predictedBlocks, cachedTokens: c)
            let predicted = Int((Double(predictedBlocks * PromptChain.blockBytes) * tokensPerByte).rounded())
            predictedTokens += predicted
            reportedTokens += c
            if predicted > 0 {
                // The share of the predicted tokens the engine really reused (more than predicted is
                // no error: the shadow holds prompts, not answers). A block's worth is slack.
                let slack = Double(PromptChain.blockBytes) * tokensPerByte
                let score = (Double(min(predicted, c)) + slack) / (Double(predicted) + slack)
                accuracy = 0.8 * accuracy + 0.2 * min(1, score)
            }
        }
        let target = slot.flatMap { $0 >= 0 && $0 < sequences.count ? $0 : nil } ?? sequence
        if target != sequence { sequences[target].lastUsed = now }
        replace(target, with: held?.hashes ?? [], now: now)
    }

    /// The engine restarted or lost its cache: nothing is held any more.
    public mutating func reset() {
        for s in sequences.indices { replace(s, with: [], now: sequences[s].lastUsed) }
        dropAllRAM()
    }

    /// Checks the shadow against what the engine says its slots hold (llama-server `/slots`), so
    /// that a wrong guess corrects itself. Only slots idle in both, and unused by meshd since the
    /// poll began (`report.polledAt`), are compared: a slot the engine says is empty while the
    /// shadow holds blocks is forgotten; one holding clearly fewer tokens than the shadow thinks
    /// (under half, less a block of slack) keeps the blocks those tokens cover. Content is never
    /// added (the shadow cannot know what it is), and the host-RAM tier stays as it is. Returns the
    /// corrections made (also summed in ``slotCorrections``).
    @discardableResult
    public mutating func observe(_ report: SlotReport) -> Int {
        let blockTokens = Double(PromptChain.blockBytes) * tokensPerByte
        var corrected = 0
        for slot in report.slots {
            guard !slot.processing, let tokens = slot.tokens, slot.id >= 0, slot.id < sequences.count else { continue }
            let q = sequences[slot.id]
            guard q.busy == 0, q.lastUsed < report.polledAt, !q.hashes.isEmpty else { continue }
            let keep: Int
            if tokens <= 0 {
                keep = 0
            } else if Double(tokens) < 0.5 * Double(q.hashes.count) * blockTokens - blockTokens {
                keep = Int(Double(tokens) / blockTokens)
            } else {
                continue
            }
            replace(slot.id, with: Array(q.hashes.prefix(keep)), now: q.lastUsed)
            corrected += 1
        }
        slotCorrections += corrected
        return corrected
    }

    /// Tier changes since the last call, for peers (of the blocks they learn, see ``peerStride``):
    /// (hash, tier now), `.none` meaning dropped.
    public mutating func drainChanges() -> [(UInt64, CacheTier)] {
        defer { pending.removeAll(keepingCapacity: true) }
        return pending.map { ($0.key, $0.value) }
    }

    /// Peers learn every `peerStride`-th block of a chain (blocks 3, 7, 11, …): a quarter of the
    /// bytes, prefixes known to within 4 blocks (~64 tokens), which is all routing needs.
    public static let peerStride = 4

    /// Whether block `i` of a chain is one peers learn.
    @inline(__always) static func shared(_ i: Int) -> Bool { (i + 1) % peerStride == 0 }

    /// Every held hash peers learn, with its tier (a peer's snapshot).
    public func snapshot() -> [(UInt64, CacheTier)] {
        var tiers: [UInt64: CacheTier] = [:]
        for e in ram { for i in stride(from: Self.peerStride - 1, to: e.count, by: Self.peerStride) { tiers[e[i]] = .ram } }
        for q in sequences {
            for i in stride(from: Self.peerStride - 1, to: q.hashes.count, by: Self.peerStride) { tiers[q.hashes[i]] = .device }
        }
        return tiers.map { ($0.key, $0.value) }
    }

    // MARK: internals

    private func commonBlocks(_ a: [UInt64], _ b: [UInt64]) -> Int {
        // Chains: equal at i means equal before i, so a binary search finds the common prefix.
        var lo = 0, hi = min(a.count, b.count)
        while lo < hi {
            let mid = (lo + hi) / 2
            if a[mid] == b[mid] { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }

    /// The sequence llama-server would give a prompt: the idle one sharing the longest prefix when
    /// that is more than `slotSimilarity` of the prompt, else the least recently used idle one
    /// (all busy: the least loaded, as the request waits for it).
    private func pick(_ chain: PromptChain) -> Int {
        var best = -1, bestCommon = 0
        for (i, s) in sequences.enumerated() where s.busy == 0 {
            let c = commonBlocks(s.hashes, chain.hashes)
            if c > bestCommon { best = i; bestCommon = c }
        }
        let needed = Double(max(1, chain.hashes.count)) * options.slotSimilarity
        if best >= 0, Double(bestCommon) > needed { return best }
        // As llama-server picks (`t_last_used <= t_last`): among equally old idle slots, the last
        // one. A pinned request must land where the engine put the prompt.
        let idle = sequences.indices.filter { sequences[$0].busy == 0 }
        let pool = idle.isEmpty ? Array(sequences.indices) : idle
        var pick = pool[0]
        for i in pool where (sequences[i].busy, sequences[i].lastUsed) <= (sequences[pick].busy, sequences[pick].lastUsed) { pick = i }
        return pick
    }

    private func bestSequence(in mask: UInt64, idleOnly: Bool) -> Int? {
        var best: Int?
        var m = mask
        while m != 0 {
            let i = m.trailingZeroBitCount
            m &= m - 1
            guard i < sequences.count, !idleOnly || sequences[i].busy == 0 else { continue }
            if best == nil || sequences[i].lastUsed > sequences[best!].lastUsed { best = i }
        }
        return best
    }

    private mutating func replace(_ s: Int, with hashes: [UInt64], now: UInt64) {
        var new = hashes
        if let cap = options.sequenceBlocks, new.count > cap { new.removeLast(new.count - cap) }
        let old = sequences[s].hashes
        let keep = commonBlocks(old, new)
        let bit = UInt64(1) << UInt64(s)
        for i in keep..<old.count {
            let h = old[i]
            guard var mask = deviceIndex[h] else { continue }
            mask &= ~bit
            if mask == 0 {
                deviceIndex[h] = nil
                if Self.shared(i) { pending[h] = ramIndex[h] != nil ? .ram : CacheTier.none }
            } else {
                deviceIndex[h] = mask
            }
        }
        for i in keep..<new.count {
            let h = new[i]
            if let mask = deviceIndex[h] {
                deviceIndex[h] = mask | bit
            } else {
                deviceIndex[h] = bit
                if Self.shared(i) { pending[h] = .device }
            }
        }
        sequences[s].hashes = new
        sequences[s].lastUsed = max(sequences[s].lastUsed, now)
        evictDevice()
    }

    /// Whether llama-server saves the slot's prompt and looks for a better one in RAM: always when
    /// it chose the slot as least recently used; when it chose it by similarity, only if the
    /// request keeps less than half of what the slot holds. A pinned slot goes through the
    /// similarity step alone (skipped at similarity 0): empty, never; otherwise unless it is similar
    /// and keeps half.
    private func savesToRAM(_ s: Int, _ chain: PromptChain, common: Int, pinned: Bool) -> Bool {
        let held = sequences[s].hashes.count
        if pinned && (options.slotSimilarity <= 0 || held == 0) { return false }
        let similar = options.slotSimilarity > 0
            && Double(common) > options.slotSimilarity * Double(max(1, chain.hashes.count)) && held > 0
        let keepsLittle = held > 0 && Double(common) / Double(held) < 0.5
        return similar ? keepsLittle : true
    }

    /// llama-server's `server_prompt_cache::alloc`: a copy of `hashes` is kept unless a saved prompt
    /// already holds all of it; saved prompts it holds whole are dropped; the oldest leave for room.
    private mutating func saveToRAM(_ hashes: [UInt64]) {
        guard !hashes.isEmpty, hashes.count <= options.ramMaxBlocks else { return }
        if ram.contains(where: { commonBlocks($0, hashes) == hashes.count }) { return }
        var i = 0
        while i < ram.count {
            if commonBlocks(ram[i], hashes) == ram[i].count { removeRAM(at: i) } else { i += 1 }
        }
        while !ram.isEmpty && ramBlocks + hashes.count > options.ramMaxBlocks { removeRAM(at: 0) }
        for (i, h) in hashes.enumerated() {
            ramIndex[h, default: 0] += 1
            if deviceIndex[h] == nil, ramIndex[h] == 1, Self.shared(i) { pending[h] = .ram }
        }
        ram.append(hashes)
        ramBlocks += hashes.count
    }

    /// llama-server's `server_prompt_cache::load`: the saved prompt that keeps at least a quarter of
    /// itself and beats the slot's own content on both the share kept and the share of the request
    /// it covers moves into slot `s`. True when one did.
    private mutating func loadFromRAM(into s: Int, for chain: [UInt64]) -> Bool {
        let held = sequences[s].hashes
        let n = Double(max(1, chain.count))
        let common = commonBlocks(held, chain)
        var keepBest = held.isEmpty ? -1 : Double(common) / Double(held.count)
        var simBest = Double(common) / n
        var best: Int?
        for (i, e) in ram.enumerated() {
            let c = commonBlocks(e, chain)
            let keep = Double(c) / Double(e.count), sim = Double(c) / n
            if keep < 0.25 { continue }
            if keepBest < keep && simBest < sim {
                keepBest = keep
                simBest = sim
                best = i
            }
        }
        guard let best else { return false }
        let entry = ram[best]
        removeRAM(at: best)
        replace(s, with: entry, now: sequences[s].lastUsed)
        return true
    }

    /// A restore was predicted on `sequence`: did the engine reuse more than the slot itself held?
    /// Misses in a row mean the engine has no RAM cache: the tier is dropped.
    private mutating func noteRAMEvidence(sequence: Int, predictedBlocks: Int, cachedTokens: Int) {
        let restored = sequences[sequence].restoredBlocks
        sequences[sequence].restoredBlocks = 0
        guard hasRAMTier, restored > 0 else { return }
        let blockTokens = Double(PromptChain.blockBytes) * tokensPerByte
        let slotOnly = Double(max(0, predictedBlocks - restored)) * blockTokens
        // Reusing at least half of what the restore adds confirms it.
        if Double(cachedTokens) >= slotOnly + 0.5 * Double(restored) * blockTokens {
            ramMisses = 0
        } else {
            ramMisses += 1
            if ramMisses >= Self.ramMissesToDisable {
                options.ramMaxBlocks = 0
                dropAllRAM()
            }
        }
    }

    private mutating func removeRAM(at i: Int) {
        let e = ram.remove(at: i)
        ramBlocks -= e.count
        for (k, h) in e.enumerated() { dropRAM(h, at: k) }
    }

    private mutating func dropAllRAM() {
        while !ram.isEmpty { removeRAM(at: ram.count - 1) }
    }

    private mutating func dropRAM(_ h: UInt64, at i: Int) {
        guard let n = ramIndex[h] else { return }
        if n > 1 {
            ramIndex[h] = n - 1
        } else {
            ramIndex[h] = nil
            if deviceIndex[h] == nil, Self.shared(i) { pending[h] = CacheTier.none }
        }
    }

    /// Over `maxBlocks`: the least recently used idle sequences are forgotten from the end.
    private mutating func evictDevice() {
        var total = deviceBlockCount
        while total > options.maxBlocks {
            guard let victim = sequences.indices.filter({ !sequences[$0].hashes.isEmpty })
                .min(by: { (sequences[$0].busy, sequences[$0].lastUsed) < (sequences[$1].busy, sequences[$1].lastUsed) }) else { return }
            let excess = total - options.maxBlocks
            let keep = max(0, sequences[victim].hashes.count - excess)
            replace(victim, with: Array(sequences[victim].hashes.prefix(keep)), now: sequences[victim].lastUsed)
            total = deviceBlockCount
        }
    }
}
