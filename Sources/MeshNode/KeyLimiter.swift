import MeshCore
import MeshEngines
import MeshHTTPServer
import MeshNet
import Synchronization

/// Per-key limits on this node (`limits`): the pure ``RateLimiter`` behind a lock, with the
/// node's clock and the mesh to tell peers what changed. Windows run on the monotonic clock (a
/// step of the wall clock neither forgets nor freezes a minute of use); peers exchange ages, not
/// times, so their clocks need not agree.
public final class KeyLimiter: Sendable {
    private let limiter: Mutex<RateLimiter>
    private let config: Mutex<LimitsConfig>
    let clock: any WallClock
    /// Tells peers a key's new counts (set once the mesh exists).
    private let changed = Mutex<(@Sendable ([String]?) -> Void)?>(nil)

    private let sleep: Sleeper

    public init(node: String, config: LimitsConfig, clock: any WallClock, sleep: @escaping Sleeper = taskSleep) {
        self.sleep = sleep
        let instance = (0..<8).map { _ in String(UInt8.random(in: 0...255), radix: 16) }.joined()
        limiter = Mutex(RateLimiter(node: node, instance: instance))
        self.config = Mutex(config)
        self.clock = clock
    }

    public var limits: LimitsConfig { config.withLock { $0 } }

    /// Takes reloaded limits: the next request is judged by them (counts are kept).
    public func set(_ c: LimitsConfig) { config.withLock { $0 = c } }

    /// Connects the limiter to the mesh: peers' counts come in, ours go out as they change.
    public func attach(to mesh: MeshService) {
        mesh.setKeyUsageHooks(MeshKeyUsageHooks(
            report: { [self] keys in
                // Nothing counted and nothing to count: peers need not hear from us.
                guard limits.enabled || limiter.withLock({ $0.countsLocally }) else { return nil }
                return limiter.withLock { $0.report(keys: keys, nowNanos: clock.monotonicNanos()) }
            },
            received: { [self] r in limiter.withLock { _ = $0.receive(r, nowNanos: clock.monotonicNanos()) } },
            peerLost: { [self] node in limiter.withLock { $0.peerLost(node) } }))
        changed.withLock { $0 = { [weak mesh] keys in mesh?.broadcastKeyUsage(keys: keys) } }
    }

    /// Admits a request of `key` (nil when no limit applies to it).
    func admit(key: String, model: String, estimatedTokens: Int) -> LimitDecision? {
        let l = config.withLock { $0.limits(for: key) }
        guard !l.isEmpty else { return nil }
        let d = limiter.withLock { $0.admit(key: key, model: model, limits: l, estimatedTokens: estimatedTokens, nowNanos: clock.monotonicNanos()) }
        if case .admitted = d { tell(key) }
        return d
    }

    func release(key: String, estimatedTokens: Int) {
        limiter.withLock { $0.release(key: key, estimatedTokens: estimatedTokens) }
        tell(key)
    }

    /// Counts the tokens of a request this node answered for `key` (when any limit applies to it).
    func settle(key: String, tokens: Int) {
        guard tokens > 0, config.withLock({ !$0.limits(for: key).isEmpty }) else { return }
        limiter.withLock { $0.settle(key: key, tokens: tokens, nowNanos: clock.monotonicNanos()) }
        tell(key)
    }

    /// Keys changed since peers were last told, and whether a telling is scheduled.
    private let unsent = Mutex<(keys: Set<String>, scheduled: Bool)>(([], false))

    /// Changes within this long of the first go out together.
    static let gatherChanges: Duration = .milliseconds(2)

    /// Tells peers `key` changed, within ``gatherChanges``: the changes one request makes in a row
    /// (its tokens settled, its place released; a request fast enough, its admission too) go out
    /// as one message, not one each, and so do those of requests ending together.
    private func tell(_ key: String) {
        let schedule = unsent.withLock { u -> Bool in
            u.keys.insert(key)
            if u.scheduled { return false }
            u.scheduled = true
            return true
        }
        if schedule {
            Task {
                await sleep(Self.gatherChanges)
                self.flushChanges()
            }
        }
    }

    /// Sends what `tell` gathered.
    private func flushChanges() {
        let keys = unsent.withLock { u -> [String] in
            u.scheduled = false
            defer { u.keys = [] }
            return u.keys.sorted()
        }
        if !keys.isEmpty { changed.withLock { $0 }?(keys) }
    }

    /// One key's limits and use over the last minute, mesh-wide.
    public struct KeyView: Sendable {
        public var key: String
        public var limits: KeyLimits
        public var used: RateLimiter.Used
        public var refused: [LimitKind: Int]
    }

    /// Every configured key and every key used lately (the anonymous key `""` included when it is).
    public func view() -> [KeyView] {
        let c = config.withLock { $0 }
        let now = clock.monotonicNanos()
        return limiter.withLock { l in
            var keys = Set(c.perKey.keys).union(l.activeKeys(nowNanos: now)).union(l.refused.keys)
            if !c.defaultLimits.isEmpty, keys.isEmpty { keys.insert("") }
            return keys.sorted().map { k in
                KeyView(key: k, limits: c.limits(for: k), used: l.used(key: k, nowNanos: now), refused: l.refused[k] ?? [:])
            }
        }
    }

    /// `limits` of `/v1/status` and `/v1/usage`.
    public func json() -> JSON {
        .array(view().map { v in
            var o: [(String, JSON)] = [("key", .string(v.key))]
            func opt(_ i: Int?) -> JSON { i.map { .number(Double($0)) } ?? .null }
            o.append(("rpm", opt(v.limits.rpm)))
            o.append(("tpm", opt(v.limits.tpm)))
            o.append(("concurrency", opt(v.limits.concurrency)))
            o.append(("models", .array(v.limits.models.map(JSON.string))))
            o.append(("requests", .number(Double(v.used.requests))))
            o.append(("tokens", .number(Double(v.used.tokens))))
            o.append(("in_flight", .number(Double(v.used.inFlight))))
            o.append(("refused", .object(LimitKind.allCases.map { ($0.rawValue, .number(Double(v.refused[$0] ?? 0))) })))
            return .object(o)
        })
    }

    /// `/metrics` lines: each key's limits, use over the last minute (mesh-wide) and refusals.
    public func metricsText() -> String {
        let views = view()
        var out = """
        # HELP meshd_key_limit A client key's limit per kind (requests and tokens per minute, concurrent requests).
        # TYPE meshd_key_limit gauge
        # HELP meshd_key_requests_window Requests of a client key admitted over the last minute, mesh-wide.
        # TYPE meshd_key_requests_window gauge
        # HELP meshd_key_tokens_window Tokens of a client key over the last minute (settled, and estimated for those in flight), mesh-wide.
        # TYPE meshd_key_tokens_window gauge
        # HELP meshd_key_in_flight Requests of a client key in flight, mesh-wide.
        # TYPE meshd_key_in_flight gauge
        # HELP meshd_key_refused_total Requests of a client key this node refused, per limit (requests, tokens, concurrency, model).
        # TYPE meshd_key_refused_total counter

        """
        for v in views {
            let k = EngineLoadMetrics.label(v.key)
            for (kind, value) in [("rpm", v.limits.rpm), ("tpm", v.limits.tpm), ("concurrency", v.limits.concurrency)] {
                if let value { out += "meshd_key_limit{key=\"\(k)\",kind=\"\(kind)\"} \(value)\n" }
            }
            out += "meshd_key_requests_window{key=\"\(k)\"} \(v.used.requests)\n"
            out += "meshd_key_tokens_window{key=\"\(k)\"} \(v.used.tokens)\n"
            out += "meshd_key_in_flight{key=\"\(k)\"} \(v.used.inFlight)\n"
            for kind in LimitKind.allCases { out += "meshd_key_refused_total{key=\"\(k)\",limit=\"\(kind.rawValue)\"} \(v.refused[kind] ?? 0)\n" }
        }
        return out
    }
}

/// An admitted request's place under its key's limits: freed once, when its answer has gone out
/// (or the answer is dropped unsent).
final class LimitLease: Sendable {
    let limiter: KeyLimiter
    let key: String
    let estimatedTokens: Int
    private let done = Atomic<Bool>(false)

    init(limiter: KeyLimiter, key: String, estimatedTokens: Int) {
        self.limiter = limiter
        self.key = key
        self.estimatedTokens = estimatedTokens
    }

    func release() {
        if !done.exchange(true, ordering: .acquiringAndReleasing) { limiter.release(key: key, estimatedTokens: estimatedTokens) }
    }

    deinit { release() }

    /// `response` with the key's `x-ratelimit-*` headers, releasing this lease when its body has gone out.
    func holding(_ response: HTTPServerResponse, status: LimitStatus) -> HTTPServerResponse {
        var out = response
        for (n, v) in RateLimitHeaders.headers(status) { out.headers.replaceOrAdd(name: n, value: v) }
        switch response.body {
        case .buffer:
            release()
        case .stream(let produce):
            out.body = .stream { [self] writer in
                defer { release() }
                try await produce(writer)
            }
        }
        return out
    }
}
