/// Per-key limits enforced across the mesh, without a coordinator: every node counts what it
/// admits (requests, in-flight) and what it answers (tokens) for each key, per second over the
/// last minute, and tells its peers its counts (``KeyUsageReport``) as they change. A node admits
/// a request when the sum over itself and its live peers leaves room. Pure: time is passed in.
///
/// Counted once mesh-wide: requests and concurrency by the node the client asked, tokens by the
/// node that answered (a forwarded request settles its tokens on the peer).
public struct RateLimiter: Sendable {
    /// The window: a request counts for 60 seconds.
    public static let windowSeconds: Int64 = 60
    /// Most keys one report may carry, and most seconds an entry may list.
    public static let maxReportKeys = 1024

    /// What one node counted for one key in one second.
    public struct Second: Sendable, Equatable {
        public var requests: Int
        public var tokens: Int
    }

    /// One node's counts for one key.
    public struct Window: Sendable, Equatable {
        /// Absolute second (this node's clock) → counts.
        public var seconds: [Int64: Second] = [:]
        public var inFlight = 0
        /// Estimated prompt tokens of the requests in flight (counted until they settle).
        public var pendingTokens = 0

        var isEmpty: Bool { seconds.isEmpty && inFlight == 0 && pendingTokens == 0 }

        mutating func prune(before first: Int64) {
            if seconds.keys.contains(where: { $0 < first }) { seconds = seconds.filter { $0.key >= first } }
        }
    }

    struct Remote: Sendable {
        var instance: String
        var seq: UInt64
        var keys: [String: Window]
    }

    public let node: String
    public let instance: String
    private(set) var local: [String: Window] = [:]
    private var remote: [String: Remote] = [:]
    private var seq: UInt64 = 0
    /// Refusals since start, by key and kind.
    public private(set) var refused: [String: [LimitKind: Int]] = [:]

    public init(node: String, instance: String) {
        self.node = node
        self.instance = instance
    }

    static func second(_ nowNanos: UInt64) -> Int64 { Int64(nowNanos / 1_000_000_000) }

    // MARK: admission

    /// Admits one request of `key` for `model` (estimated `estimatedTokens` prompt tokens) under
    /// `limits`, counting it, or says which limit refuses it and when to come back.
    public mutating func admit(key: String, model: String, limits: KeyLimits, estimatedTokens: Int, nowNanos: UInt64) -> LimitDecision {
        let now = Self.second(nowNanos)
        let used = meshWide(key, now: now)
        func refuse(_ kind: LimitKind, retryAfter: Double?, _ message: String) -> LimitDecision {
            refused[key, default: [:]][kind, default: 0] += 1
            return .refused(LimitRefusal(kind: kind, key: key, message: message, retryAfterSeconds: retryAfter,
                                         status: status(limits, used, nowNanos: nowNanos)))
        }
        let who = key.isEmpty ? "this mesh's clients (no client keys)" : "key '\(key)'"
        if !limits.allows(model: model) {
            return refuse(.model, retryAfter: nil, "\(who) may not use model '\(model)'; it may use: \(limits.models.joined(separator: ", "))")
        }
        if let c = limits.concurrency, used.inFlight >= c {
            return refuse(.concurrency, retryAfter: 1,
                          "Concurrency limit reached for \(who): \(used.inFlight) requests in flight, limit \(c). Retry when one ends.")
        }
        if let r = limits.rpm, used.requests + 1 > r {
            let wait = Self.wait(toFree: used.requests + 1 - r, in: used.requestSeconds, nowNanos: nowNanos)
            return refuse(.requests, retryAfter: wait,
                          "Rate limit reached for \(who) on requests per minute (RPM): Limit \(r), Used \(used.requests), Requested 1. "
                          + "Please try again in \(RateLimitHeaders.duration(wait)).")
        }
        if let t = limits.tpm {
            if estimatedTokens > t {
                return refuse(.tokens, retryAfter: nil,
                              "Request too large for \(who) on tokens per minute (TPM): Limit \(t), Requested \(estimatedTokens). "
                              + "Send a smaller prompt.")
            }
            if used.tokens + estimatedTokens > t {
                // Settled tokens leave the window with their second; pending ones when their request ends.
                let settledOver = used.settledTokens + used.pendingTokens + estimatedTokens - t
                let wait = used.settledTokens > 0 ? max(1, Self.wait(toFree: min(settledOver, used.settledTokens), in: used.tokenSeconds, nowNanos: nowNanos)) : 1
                return refuse(.tokens, retryAfter: wait,
                              "Rate limit reached for \(who) on tokens per minute (TPM): Limit \(t), Used \(used.tokens), Requested \(estimatedTokens). "
                              + "Please try again in \(RateLimitHeaders.duration(wait)).")
            }
        }
        var w = local[key, default: Window()]
        w.seconds[now, default: Second(requests: 0, tokens: 0)].requests += 1
        w.inFlight += 1
        w.pendingTokens += max(0, estimatedTokens)
        local[key] = w
        return .admitted(status(limits, meshWide(key, now: now), nowNanos: nowNanos))
    }

    /// An admitted request ended (answered, failed or cut): frees its place and its pending tokens.
    public mutating func release(key: String, estimatedTokens: Int) {
        guard var w = local[key] else { return }
        w.inFlight = max(0, w.inFlight - 1)
        w.pendingTokens = max(0, w.pendingTokens - max(0, estimatedTokens))
        local[key] = w
    }

    /// Counts the tokens (prompt + output) of a request this node answered for `key`.
    public mutating func settle(key: String, tokens: Int, nowNanos: UInt64) {
        guard tokens > 0 else { return }
        local[key, default: Window()].seconds[Self.second(nowNanos), default: Second(requests: 0, tokens: 0)].tokens += tokens
    }

    // MARK: what the mesh used

    /// A key's use over the window, this node and its peers together.
    public struct Used: Sendable, Equatable {
        public var requests = 0
        public var settledTokens = 0
        public var pendingTokens = 0
        public var inFlight = 0
        /// Per second, oldest first (for when room frees).
        var requestSeconds: [(Int64, Int)] = []
        var tokenSeconds: [(Int64, Int)] = []

        public var tokens: Int { settledTokens + pendingTokens }

        public static func == (a: Used, b: Used) -> Bool {
            a.requests == b.requests && a.settledTokens == b.settledTokens && a.pendingTokens == b.pendingTokens && a.inFlight == b.inFlight
        }
    }

    /// `key`'s use over the window ending now, mesh-wide.
    public func used(key: String, nowNanos: UInt64) -> Used { meshWide(key, now: Self.second(nowNanos)) }

    func meshWide(_ key: String, now: Int64) -> Used {
        let first = now - Self.windowSeconds + 1
        var u = Used()
        var req: [Int64: Int] = [:]
        var tok: [Int64: Int] = [:]
        func add(_ w: Window) {
            u.inFlight += w.inFlight
            u.pendingTokens += w.pendingTokens
            for (s, c) in w.seconds where s >= first && s <= now {
                u.requests += c.requests
                u.settledTokens += c.tokens
                if c.requests > 0 { req[s, default: 0] += c.requests }
                if c.tokens > 0 { tok[s, default: 0] += c.tokens }
            }
        }
        if let w = local[key] { add(w) }
        for r in remote.values { if let w = r.keys[key] { add(w) } }
        u.requestSeconds = req.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
        u.tokenSeconds = tok.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
        return u
    }

    /// Seconds from `nowNanos` until `need` units have left the window (oldest seconds first).
    static func wait(toFree need: Int, in seconds: [(Int64, Int)], nowNanos: UInt64) -> Double {
        var freed = 0
        for (s, n) in seconds {
            freed += n
            if freed >= need { return max(0, Double((s + windowSeconds) * 1_000_000_000 - Int64(nowNanos)) / 1e9) }
        }
        return Double(windowSeconds)
    }

    func status(_ limits: KeyLimits, _ u: Used, nowNanos: UInt64) -> LimitStatus {
        func reset(_ seconds: [(Int64, Int)]) -> Double {
            guard let newest = seconds.last?.0 else { return 0 }
            return max(0, Double((newest + Self.windowSeconds) * 1_000_000_000 - Int64(nowNanos)) / 1e9)
        }
        return LimitStatus(limits: limits, requests: u.requests, tokens: u.tokens, inFlight: u.inFlight,
                           resetRequestsSeconds: reset(u.requestSeconds), resetTokensSeconds: reset(u.tokenSeconds))
    }

    /// The keys with any use in the window, here or on a peer.
    public func activeKeys(nowNanos: UInt64) -> [String] {
        let first = Self.second(nowNanos) - Self.windowSeconds + 1
        func active(_ w: Window) -> Bool { w.inFlight > 0 || w.pendingTokens > 0 || w.seconds.keys.contains { $0 >= first } }
        var keys = Set(local.filter { active($0.value) }.keys)
        for r in remote.values { keys.formUnion(r.keys.filter { active($0.value) }.keys) }
        return keys.sorted()
    }

    // MARK: sharing with peers

    /// This node's counts of `keys` (nil: every key it holds) for its peers; ages, not times, so
    /// the peers' clocks need not agree with ours.
    public mutating func report(keys: [String]? = nil, nowNanos: UInt64) -> KeyUsageReport {
        let now = Self.second(nowNanos)
        prune(now: now)
        seq += 1
        let names = keys ?? local.keys.sorted()
        var entries: [KeyUsageReport.Entry] = []
        for k in names.prefix(Self.maxReportKeys) {
            let w = local[k] ?? Window()
            let secs = w.seconds.sorted { $0.key > $1.key }.map { KeyUsageReport.Second(age: Int(now - $0.key), requests: $0.value.requests, tokens: $0.value.tokens) }
            entries.append(KeyUsageReport.Entry(key: k, inFlight: w.inFlight, pendingTokens: w.pendingTokens, seconds: secs))
        }
        return KeyUsageReport(node: node, instance: instance, seq: seq, full: keys == nil, entries: entries)
    }

    /// A peer's counts; false (and nothing changes) for our own or an older report.
    @discardableResult
    public mutating func receive(_ r: KeyUsageReport, nowNanos: UInt64) -> Bool {
        guard r.node != node else { return false }
        let now = Self.second(nowNanos)
        var peer = remote[r.node] ?? Remote(instance: r.instance, seq: 0, keys: [:])
        if peer.instance != r.instance {
            peer = Remote(instance: r.instance, seq: 0, keys: [:])
        } else if r.seq <= peer.seq {
            return false
        }
        peer.seq = r.seq
        if r.full { peer.keys = [:] }
        for e in r.entries {
            var w = Window(inFlight: e.inFlight, pendingTokens: e.pendingTokens)
            for s in e.seconds where s.age < Int(Self.windowSeconds) {
                w.seconds[now - Int64(s.age), default: Second(requests: 0, tokens: 0)].requests += s.requests
                w.seconds[now - Int64(s.age)]!.tokens += s.tokens
            }
            peer.keys[e.key] = w.isEmpty ? nil : w
        }
        remote[r.node] = peer
        return true
    }

    /// A peer is gone: its requests in flight end with it; what it counted stays until it ages out.
    public mutating func peerLost(_ node: String) {
        guard var peer = remote[node] else { return }
        for k in peer.keys.keys {
            peer.keys[k]?.inFlight = 0
            peer.keys[k]?.pendingTokens = 0
        }
        remote[node] = peer
    }

    /// Whether this node counted anything for any key still held.
    public var countsLocally: Bool { !local.isEmpty }

    /// Drops seconds that left the window, and empty entries.
    public mutating func prune(nowNanos: UInt64) { prune(now: Self.second(nowNanos)) }

    mutating func prune(now: Int64) {
        let first = now - Self.windowSeconds + 1
        for k in local.keys { local[k]?.prune(before: first) }
        for n in remote.keys {
            for k in remote[n]!.keys.keys { remote[n]!.keys[k]?.prune(before: first) }
            remote[n]!.keys = remote[n]!.keys.filter { !$0.value.isEmpty }
        }
    }
}

/// Which limit refused a request.
public enum LimitKind: String, Sendable, Hashable, CaseIterable, Codable {
    case requests, tokens, concurrency, model
}

/// The outcome of ``RateLimiter/admit(key:model:limits:estimatedTokens:nowNanos:)``.
public enum LimitDecision: Sendable, Equatable {
    case admitted(LimitStatus)
    case refused(LimitRefusal)
}

/// A key's limits and use after a decision: what the `x-ratelimit-*` headers tell.
public struct LimitStatus: Sendable, Equatable {
    public var limits: KeyLimits
    public var requests: Int
    public var tokens: Int
    public var inFlight: Int
    /// Until the window holds none of the key's requests (tokens).
    public var resetRequestsSeconds: Double
    public var resetTokensSeconds: Double
}

public struct LimitRefusal: Sendable, Equatable {
    public var kind: LimitKind
    public var key: String
    public var message: String
    /// When to come back (nil: not by waiting: a model the key may not use, a request too large).
    public var retryAfterSeconds: Double?
    public var status: LimitStatus

    /// The error in the API's terms: 429 (`rate_limit_exceeded`, OpenAI's type `requests` or
    /// `tokens`), or 403 for a model the key may not use.
    public var error: APIError {
        switch kind {
        case .model:
            return APIError(status: 403, message: message, type: "invalid_request_error", param: "model", code: "model_not_allowed")
        case .requests, .concurrency:
            return APIError(status: 429, message: message, type: "requests", code: "rate_limit_exceeded")
        case .tokens:
            return APIError(status: 429, message: message, type: "tokens", code: "rate_limit_exceeded")
        }
    }

    /// `Retry-After` (whole seconds, at least 1) and the `x-ratelimit-*` headers.
    public var headers: [(String, String)] {
        var h = RateLimitHeaders.headers(status)
        if let r = retryAfterSeconds { h.insert(("Retry-After", String(max(1, Int(r.rounded(.up))))), at: 0) }
        return h
    }
}

/// The `x-ratelimit-*` headers OpenAI sends and its clients read.
public enum RateLimitHeaders {
    public static func headers(_ s: LimitStatus) -> [(String, String)] {
        var h: [(String, String)] = []
        if let r = s.limits.rpm {
            h.append(("x-ratelimit-limit-requests", String(r)))
            h.append(("x-ratelimit-remaining-requests", String(max(0, r - s.requests))))
            h.append(("x-ratelimit-reset-requests", duration(s.resetRequestsSeconds)))
        }
        if let t = s.limits.tpm {
            h.append(("x-ratelimit-limit-tokens", String(t)))
            h.append(("x-ratelimit-remaining-tokens", String(max(0, t - s.tokens))))
            h.append(("x-ratelimit-reset-tokens", duration(s.resetTokensSeconds)))
        }
        return h
    }

    /// A duration as OpenAI writes them: `250ms`, `12s`, `12.5s`, `1m0s`.
    public static func duration(_ seconds: Double) -> String {
        let s = max(0, seconds)
        if s < 1 { return "\(Int((s * 1000).rounded(.up)))ms" }
        if s < 60 {
            let tenths = Int((s * 10).rounded(.up))
            return tenths % 10 == 0 ? "\(tenths / 10)s" : "\(tenths / 10).\(tenths % 10)s"
        }
        let whole = Int(s.rounded(.up))
        return "\(whole / 60)m\(whole % 60)s"
    }
}
