import MeshCore
import ArgumentParser
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

enum FailMode: String, Sendable, CaseIterable, ExpressibleByArgument {
    case none
    case refuse
    case hang
    case dieMidStream = "die-mid-stream"
}

/// Behaviour that can be changed at runtime through `POST /sim/control`.
struct Settings: Sendable {
    var fail: FailMode
    var failRate: Double
    var failAfterTokens: Int
    var latencyMs: Double
    var promptTps: Double
    var genTps: Double
    var maxTokens: Int
    var loadMs: Double
    /// Prompt-cache model (`--cache`).
    var cache: CacheMode = .legacy
    /// Minimum shared-prefix fraction for choosing a slot by prefix (`--slot-prompt-similarity`; 0 = LRU only).
    var slotPromptSimilarity: Double = 0.1
    /// Host-RAM prompt cache size in tokens (`--cache-ram-tokens`; 0 = off). Used only with `cache == .on`.
    var cacheRamTokens: Int = 0
    /// Tokens/s at which a prompt state is copied back from the RAM cache (`--cache-ram-restore-tps`; 0 = 20 × promptTps).
    var cacheRamRestoreTps: Double = 0

    /// The speed restores actually run at (0 = instant).
    var effectiveRestoreTps: Double { cacheRamRestoreTps > 0 ? cacheRamRestoreTps : 20 * promptTps }

    func json() -> String {
        var s = "{\"fail\":"
        s.appendJSONString(fail.rawValue)
        s += ",\"fail_rate\":\(fmt(failRate)),\"fail_after_tokens\":\(failAfterTokens)"
        s += ",\"latency_ms\":\(fmt(latencyMs)),\"prompt_tps\":\(fmt(promptTps)),\"gen_tps\":\(fmt(genTps))"
        s += ",\"max_tokens\":\(maxTokens),\"load_ms\":\(fmt(loadMs))"
        s += ",\"cache\":\"\(cache.rawValue)\",\"slot_prompt_similarity\":\(fmt(slotPromptSimilarity))"
        s += ",\"cache_ram_tokens\":\(cacheRamTokens),\"cache_ram_restore_tps\":\(fmt(cacheRamRestoreTps))}"
        return s
    }
}

/// JSON number text for a Double (integral values without a fraction).
func fmt(_ d: Double) -> String {
    if d.rounded() == d && abs(d) < 1e15 { return String(Int(d)) }
    return d.description
}

struct ModelInfo: Sendable {
    let name: String
    let family: String
    let parameterSize: String
    let parameterCount: Int
    let size: Int
    let digest: String
}

/// What the scheduler decided for an incoming request.
enum Admission {
    case run(slot: Int, claim: Claim)
    case queued(ticket: UInt64)
    case rejected(waiting: Int)
}

/// A request parked in the FIFO queue. `resume(slot, claim)` hops to the request's event loop.
struct Waiter: Sendable {
    let ticket: UInt64
    let request: CacheRequest
    let promptTokens: Int
    let resume: @Sendable (Int, Claim) -> Void
}

/// What a finished (or abandoned) request did on its slot, for the counters and the slot's context.
struct SlotUsage {
    var promptTokens = 0
    var cachedTokens = 0
    var generated = 0
    /// Whether the request's tokens became the slot's context (see ``CacheRequest/tracked``).
    var tracked = false
}

/// Per-request data handed out by `Engine.begin`.
struct Begin {
    let settings: Settings
    let fail: FailMode
    let seq: UInt64
    let needsLoad: Bool
}

struct Counters: Sendable {
    var requests = 0
    var completed = 0
    var cancelled = 0
    var failed = 0
    var rejected = 0
    var errors = 0
    var maxConcurrent = 0
    var promptTokens = 0
    var cachedTokens = 0
    var generatedTokens = 0
}

/// Shared scheduler state. All mutation happens under one mutex; the hot path takes it a couple of times per request.
final class Engine: Sendable {
    /// The models it has now (Ollama's `/api/pull` adds one, `/api/delete` removes one).
    var models: [ModelInfo] { state.withLock { $0.models } }
    let slotCount: Int
    let queueLimit: Int
    let embeddingDim: Int
    let contextLength: Int
    let startUnix: Int
    let startStamp: String

    private struct State {
        var models: [ModelInfo]
        var blobs: Set<String> = []
        var settings: Settings
        var counters = Counters()
        var failSeq: UInt64 = 0
        var idSeq: UInt64 = 0
        var ticketSeq: UInt64 = 0
        var slotBusy: [Bool]
        var running = 0
        var queue: [Waiter] = []
        var queueHead = 0
        var hanging = 0
        var loaded: [String] = []
        var cache: SlotCache

        /// Marks `slot` busy and starts `req` on it (see ``SlotCache/claim(slot:_:promptTokens:mode:similarity:busy:)``).
        mutating func take(_ slot: Int, _ req: CacheRequest, promptTokens: Int) -> Claim {
            if !slotBusy[slot] {
                slotBusy[slot] = true
                running += 1
                if running > counters.maxConcurrent { counters.maxConcurrent = running }
            }
            return cache.claim(slot: slot, req, promptTokens: promptTokens, mode: settings.cache,
                               similarity: settings.slotPromptSimilarity, busy: slotBusy)
        }
    }

    private let state: Mutex<State>

    init(models: [ModelInfo], loaded: [String], slots: Int, queue: Int, embeddingDim: Int,
         contextLength: Int, settings: Settings) {
        self.slotCount = slots
        self.queueLimit = queue
        self.embeddingDim = embeddingDim
        self.contextLength = contextLength
        self.startUnix = Int(time(nil))
        self.startStamp = rfc3339(epochNanos: UInt64(self.startUnix) * 1_000_000_000)
        var st = State(models: models, settings: settings, slotBusy: Array(repeating: false, count: slots),
                       cache: SlotCache(slots: slots, nCtx: contextLength, ramLimit: settings.cacheRamTokens))
        st.loaded = loaded
        self.state = Mutex(st)
    }

    // MARK: models

    func resolve(_ name: String) -> ModelInfo? {
        let models = self.models
        for m in models where m.name == name { return m }
        func base(_ s: Substring) -> Substring { s.hasSuffix(":latest") ? s.dropLast(7) : s }
        let b = base(Substring(name))
        for m in models where base(Substring(m.name)) == b { return m }
        return nil
    }

    /// Ollama's pull, as its registry would: the model is added (a no-op when it is there).
    func pull(_ name: String) -> ModelInfo {
        if let m = resolve(name) { return m }
        let m = makeModelInfo(name)
        state.withLock { $0.models.append(m) }
        return m
    }

    /// Ollama's copy: false when it has no `source`.
    func copy(_ source: String, to destination: String) -> Bool {
        guard resolve(source) != nil else { return false }
        _ = pull(destination)
        return true
    }

    /// Blobs uploaded (Ollama's `/api/blobs/sha256:HEX`), by digest.
    func hasBlob(_ digest: String) -> Bool { state.withLock { $0.blobs.contains(digest) } }
    func addBlob(_ digest: String) { state.withLock { _ = $0.blobs.insert(digest) } }

    /// Ollama's delete: false when it has no such model.
    func delete(_ name: String) -> Bool {
        guard let m = resolve(name) else { return false }
        state.withLock { st in
            st.models.removeAll { $0.name == m.name }
            st.loaded.removeAll { $0 == m.name }
        }
        return true
    }

    func loadedModels() -> [ModelInfo] {
        let (names, models) = state.withLock { ($0.loaded, $0.models) }
        return names.compactMap { n in models.first { $0.name == n } }
    }

    func unload(_ name: String) {
        state.withLock { $0.loaded.removeAll { $0 == name } }
    }

    func markLoaded(_ name: String) -> Bool {
        state.withLock { st in
            if st.loaded.contains(name) { return false }
            st.loaded.append(name)
            return true
        }
    }

    // MARK: settings

    var settings: Settings { state.withLock { $0.settings } }

    func update(_ body: (inout Settings) -> Void) -> Settings {
        state.withLock { st in
            let mode = st.settings.cache
            body(&st.settings)
            if st.settings.cache != mode { st.cache.clear() }
            st.cache.setRAMLimit(st.settings.cacheRamTokens)
            st.failSeq = 0
            return st.settings
        }
    }

    // MARK: request lifecycle

    func countError() {
        state.withLock { st in
            st.counters.requests += 1
            st.counters.errors += 1
        }
    }

    /// Counts a valid inference request, decides deterministically whether a failure is injected, marks the model loaded.
    func begin(model: String) -> Begin {
        state.withLock { st in
            st.counters.requests += 1
            st.idSeq &+= 1
            var mode = FailMode.none
            if st.settings.fail != .none {
                st.failSeq &+= 1
                let r = min(max(st.settings.failRate, 0), 1)
                let n = Double(st.failSeq)
                if (n * r + 1e-9).rounded(.down) > ((n - 1) * r + 1e-9).rounded(.down) {
                    mode = st.settings.fail
                }
            }
            var needsLoad = false
            if !st.loaded.contains(model) {
                st.loaded.append(model)
                needsLoad = true
            }
            return Begin(settings: st.settings, fail: mode, seq: st.idSeq, needsLoad: needsLoad)
        }
    }

    func noteFailed() { state.withLock { $0.counters.failed += 1 } }

    func hangStarted() {
        state.withLock { st in
            st.hanging += 1
            st.counters.failed += 1
        }
    }

    func hangEnded() {
        state.withLock { st in
            st.hanging -= 1
            st.counters.cancelled += 1
        }
    }

    /// Takes a free slot (see ``SlotCache/select(_:busy:mode:similarity:)``), or parks the request in the
    /// FIFO queue, or rejects it when the queue is full.
    func admit(_ req: CacheRequest, promptTokens: Int, makeWaiter: (UInt64) -> Waiter) -> Admission {
        state.withLock { st in
            if st.running < st.slotBusy.count,
               let slot = st.cache.select(req, busy: st.slotBusy, mode: st.settings.cache,
                                          similarity: st.settings.slotPromptSimilarity) {
                return .run(slot: slot, claim: st.take(slot, req, promptTokens: promptTokens))
            }
            let waiting = st.queue.count - st.queueHead
            if waiting >= queueLimit {
                st.counters.rejected += 1
                return .rejected(waiting: waiting)
            }
            st.ticketSeq &+= 1
            st.queue.append(makeWaiter(st.ticketSeq))
            return .queued(ticket: st.ticketSeq)
        }
    }

    /// Removes a queued request (client went away). False when it was already handed a slot.
    func cancelQueued(ticket: UInt64) -> Bool {
        state.withLock { st in
            guard let idx = st.queue[st.queueHead...].firstIndex(where: { $0.ticket == ticket }) else { return false }
            st.queue.remove(at: idx)
            st.counters.cancelled += 1
            return true
        }
    }

    enum Outcome { case completed, cancelled, failed, none }

    /// Frees `slot` (its context gains the generated tokens), handing it straight to the first queued
    /// request that may run there (unpinned, or pinned to `slot`) if there is one.
    func release(slot: Int, outcome: Outcome, usage: SlotUsage = SlotUsage()) {
        let next: (Waiter, Claim)? = state.withLock { st in
            switch outcome {
            case .completed: st.counters.completed += 1
            case .cancelled: st.counters.cancelled += 1
            case .failed: st.counters.failed += 1
            case .none: break
            }
            st.counters.promptTokens += usage.promptTokens
            st.counters.cachedTokens += usage.cachedTokens
            st.counters.generatedTokens += usage.generated
            st.cache.finish(slot: slot, generated: usage.generated, tracked: usage.tracked && st.settings.cache != .legacy)
            if let idx = st.queue[st.queueHead...].firstIndex(where: { $0.request.pin == nil || $0.request.pin == slot }) {
                let w = st.queue[idx]
                if idx == st.queueHead {
                    st.queueHead += 1
                    if st.queueHead > 64 && st.queueHead * 2 > st.queue.count {
                        st.queue.removeFirst(st.queueHead)
                        st.queueHead = 0
                    }
                } else {
                    st.queue.remove(at: idx)
                }
                // The slot stays busy; ownership moves to the waiter.
                return (w, st.take(slot, w.request, promptTokens: w.promptTokens))
            }
            st.slotBusy[slot] = false
            st.running -= 1
            return nil
        }
        if let (w, claim) = next { w.resume(slot, claim) }
    }

    /// `POST /sim/cache/match`: what each slot's own context could reuse of `req` now, and the slot it would run on
    /// (among all slots when none is idle) with what it would really get there, a RAM-cache restore included
    /// (``SlotCache/plan(_:busy:mode:similarity:)``). Changes nothing.
    func match(_ req: CacheRequest) -> (slots: [(cached: Int, busy: Bool)], best: (id: Int, claim: Claim)) {
        state.withLock { st in
            let mode = st.settings.cache
            let slots = st.slotBusy.indices.map { (st.cache.cachedTokens(slot: $0, req, mode: mode), st.slotBusy[$0]) }
            let idle = st.slotBusy.contains(false) ? st.slotBusy : Array(repeating: false, count: st.slotBusy.count)
            if let p = st.cache.plan(req, busy: idle, mode: mode, similarity: st.settings.slotPromptSimilarity) {
                return (slots, (p.slot, p.claim))
            }
            // Pinned to a busy slot: it waits for that slot.
            let id = req.pin ?? 0
            return (slots, (id, Claim(cached: slots[id].0)))
        }
    }

    /// Each slot's context: (token count, stable hash).
    func cacheContexts() -> [(count: Int, hash: UInt64)] {
        state.withLock { st in st.cache.contexts.map { ($0.count, SimTokens.hash($0)) } }
    }

    /// The host-RAM prompt cache: its limit, tokens held, and each entry (token count, stable hash), oldest first.
    func ramCache() -> (limit: Int, tokens: Int, entries: [(count: Int, hash: UInt64)]) {
        state.withLock { st in
            let ram = st.cache.ram
            return (ram.limit, ram.tokens, ram.entries.map { ($0.count, SimTokens.hash($0)) })
        }
    }

    /// Empties every slot's context and the RAM cache.
    func clearCache() { state.withLock { $0.cache.clear() } }

    struct Snapshot {
        var counters: Counters
        var running: Int
        var waiting: Int
        var hanging: Int
        var slotBusy: [Bool]
        /// Per slot: context length, prompt tokens and cached tokens of its last (or current) request.
        var slotContext: [Int]
        var slotPrompt: [Int]
        var slotCached: [Int]
    }

    func snapshot() -> Snapshot {
        state.withLock { st in
            Snapshot(counters: st.counters, running: st.running, waiting: st.queue.count - st.queueHead,
                     hanging: st.hanging, slotBusy: st.slotBusy, slotContext: st.cache.contexts.map(\.count),
                     slotPrompt: st.cache.lastPrompt, slotCached: st.cache.lastCached)
        }
    }

    func resetCounters() {
        state.withLock { st in
            st.counters = Counters()
            st.counters.maxConcurrent = st.running
        }
    }
}

// MARK: - time helpers

func wallNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

private func pad(_ v: Int, _ width: Int, into s: inout String) {
    let d = String(v)
    if d.count < width { s.append(String(repeating: "0", count: width - d.count)) }
    s.append(d)
}

/// RFC 3339 UTC timestamp with nanoseconds, the way Ollama prints `created_at`.
func rfc3339(epochNanos: UInt64) -> String {
    var t = time_t(epochNanos / 1_000_000_000)
    let ns = Int(epochNanos % 1_000_000_000)
    var tmv = tm()
    gmtime_r(&t, &tmv)
    var s = ""
    s.reserveCapacity(30)
    pad(Int(tmv.tm_year) + 1900, 4, into: &s); s.append("-")
    pad(Int(tmv.tm_mon) + 1, 2, into: &s); s.append("-")
    pad(Int(tmv.tm_mday), 2, into: &s); s.append("T")
    pad(Int(tmv.tm_hour), 2, into: &s); s.append(":")
    pad(Int(tmv.tm_min), 2, into: &s); s.append(":")
    pad(Int(tmv.tm_sec), 2, into: &s); s.append(".")
    pad(ns, 9, into: &s); s.append("Z")
    return s
}

// MARK: - deterministic hashing

func fnv1a(_ s: String) -> UInt64 {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    for b in s.utf8 {
        h ^= UInt64(b)
        h = h &* 0x0000_0100_0000_01B3
    }
    return h
}

func splitmix(_ x: UInt64) -> UInt64 {
    var z = x &+ 0x9E37_79B9_7F4A_7C15
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
}

/// Deterministic unit-length embedding of `text`.
func embedding(of text: String, dim: Int) -> [Float] {
    let seed = fnv1a(text)
    var v = [Float](repeating: 0, count: dim)
    var norm: Double = 0
    for j in 0..<dim {
        let r = splitmix(seed &+ UInt64(j) &* 0x1000_0000_01B3)
        let x = Double(r >> 11) / Double(1 << 53) * 2 - 1
        v[j] = Float(x)
        norm += x * x
    }
    let n = norm.squareRoot()
    if n > 0 { for j in 0..<dim { v[j] = Float(Double(v[j]) / n) } }
    return v
}

func appendVector(_ v: [Float], into s: inout String) {
    s.append("[")
    for (k, x) in v.enumerated() {
        if k > 0 { s.append(",") }
        s.append(x.description)
    }
    s.append("]")
}

/// Number of whitespace-separated words.
func wordCount(_ s: String) -> Int {
    var n = 0
    var inWord = false
    for b in s.utf8 {
        let ws = b == 0x20 || (b >= 0x09 && b <= 0x0D)
        if ws {
            inWord = false
        } else if !inWord {
            inWord = true
            n += 1
        }
    }
    return n
}

func makeModelInfo(_ name: String) -> ModelInfo {
    let lower = name.lowercased()
    let (ps, count, size): (String, Int, Int)
    if lower.contains("large") || lower.contains("70b") {
        (ps, count, size) = ("70.6B", 70_553_706_496, 42_520_413_916)
    } else if lower.contains("medium") || lower.contains("8b") {
        (ps, count, size) = ("8.0B", 8_030_261_248, 4_920_753_328)
    } else {
        (ps, count, size) = ("1.2B", 1_235_814_400, 807_694_464)
    }
    let h = fnv1a(name)
    var digest = ""
    for k in 0..<4 {
        let part = String(splitmix(h &+ UInt64(k)), radix: 16)
        digest += String(repeating: "0", count: 16 - part.count) + part
    }
    return ModelInfo(name: name, family: "llama", parameterSize: ps, parameterCount: count, size: size, digest: digest)
}
