/// The alerts of the design that meshd raises itself (besides the budget threshold, which the
/// ledger raises when a cap crosses `budget.alert_at`): each is logged, counted, sent to the
/// webhook and shown by `meshctl status` while it is open. Pure: fed readings with their time.
public enum AlertKind: String, Sendable, Hashable, Codable, CaseIterable {
    case budgetThreshold = "budget_threshold"
    case providerDegraded = "provider_degraded"
    case costSpike = "cost_spike"
    case highFailoverRate = "high_failover_rate"
    case nodeLost = "node_lost"
    case splitFailed = "split_failed"
}

/// One alert: what, about what (a provider, a node, a cap), why in words, since when.
public struct Alert: Sendable, Hashable {
    public var kind: AlertKind
    public var subject: String
    public var message: String
    public var sinceNanos: UInt64

    public init(kind: AlertKind, subject: String, message: String, sinceNanos: UInt64) {
        self.kind = kind
        self.subject = subject
        self.message = message
        self.sinceNanos = sinceNanos
    }
}

/// What the evaluator is given at each look: cumulative counters and current sets.
public struct AlertReadings: Sendable, Hashable {
    public var now: UInt64
    /// Cloud providers not taking requests now (cooling down after failures).
    public var providersUnavailable: Set<String> = []
    /// Cloud spend settled since start, by provider, USD (cumulative).
    public var spendUSD: [String: Double] = [:]
    /// Requests ended since start, and of them the ones that failed over (cumulative).
    public var requests: Int = 0
    public var failovers: Int = 0
    /// Nodes of the mesh seen lately and now down.
    public var nodesDown: Set<String> = []
    /// Splits this node headed that failed (cumulative).
    public var splitsFailed: Int = 0

    public init(now: UInt64) { self.now = now }
}

/// `alerts:` section: where alerts go and how often meshd looks.
public struct AlertSettings: Sendable, Hashable, Codable {
    /// URL alerts are POSTed to (JSON: event, alert, state firing/resolved, subject, message, node);
    /// nil: `budget.webhook`, if set.
    public var webhook: String? = nil
    /// Seconds between two looks.
    public var intervalSeconds: Double = 10
    /// Seconds a cloud provider must be unavailable to be degraded.
    public var providerDegradedSeconds: Double = 120
    public init() {}
}

/// When each alert opens. The defaults are the Prometheus rules' (`Config/prometheus/meshd-rules.yml`).
public struct AlertThresholds: Sendable, Hashable, Codable {
    /// A provider unavailable this long is degraded.
    public var providerDegradedSeconds: Double = 120
    /// The last hour's spend over this many times the hourly average of the day before it...
    public var costSpikeFactor: Double = 3
    /// ... and over this many USD.
    public var costSpikeMinUSD: Double = 0.10
    /// More than this share of the requests of the last `failoverWindowSeconds` failed over...
    public var failoverRatio: Double = 0.1
    public var failoverWindowSeconds: Double = 300
    /// ... out of at least this many requests.
    public var failoverMinRequests: Int = 20
    /// An event alert (a split failure, a budget threshold crossed) stays shown this long.
    public var eventShownSeconds: Double = 600
    public init() {}
}

/// Opens and resolves alerts from successive readings.
public struct AlertEvaluator: Sendable {
    public var thresholds: AlertThresholds
    /// Open alerts by (kind, subject).
    public private(set) var open: [String: Alert] = [:]
    private var unavailableSince: [String: UInt64] = [:]
    /// Readings kept for the windows: (time, spend by provider, requests, failovers), oldest first, about one a minute.
    private var history: [(at: UInt64, spend: [String: Double], requests: Int, failovers: Int)] = []
    private var lastSplitsFailed: Int?

    public init(thresholds: AlertThresholds = .init()) { self.thresholds = thresholds }

    static func key(_ k: AlertKind, _ subject: String) -> String { k.rawValue + "\u{0}" + subject }

    /// Takes a reading; returns the alerts that opened and those that resolved.
    public mutating func evaluate(_ r: AlertReadings) -> (opened: [Alert], resolved: [Alert]) {
        record(r)
        var want: [String: Alert] = [:]
        func raise(_ kind: AlertKind, _ subject: String, _ message: String) {
            let k = Self.key(kind, subject)
            want[k] = open[k] ?? Alert(kind: kind, subject: subject, message: message, sinceNanos: r.now)
            want[k]!.message = message
        }
        // Providers down long enough.
        for p in r.providersUnavailable where unavailableSince[p] == nil { unavailableSince[p] = r.now }
        for p in unavailableSince.keys where !r.providersUnavailable.contains(p) { unavailableSince[p] = nil }
        for (p, since) in unavailableSince where seconds(r.now, since) >= thresholds.providerDegradedSeconds {
            raise(.providerDegraded, p, "cloud provider \(p) has not taken requests for \(Int(seconds(r.now, since))) s (cooling down after failures)")
        }
        // Spend spikes: the last hour against the hourly average of the (up to) 24 hours before it.
        if let hourAgo = reading(atOrBefore: r.now &- 3_600_000_000_000) {
            let dayAgo = reading(atOrBefore: r.now &- 25 * 3_600_000_000_000) ?? history[0]
            for (p, total) in r.spendUSD {
                let lastHour = total - (hourAgo.spend[p] ?? 0)
                let before = (hourAgo.spend[p] ?? 0) - (dayAgo.spend[p] ?? 0)
                let hours = max(1, seconds(hourAgo.at, dayAgo.at) / 3600)
                if lastHour > thresholds.costSpikeMinUSD && lastHour > thresholds.costSpikeFactor * before / hours {
                    raise(.costSpike, p, "cloud spend on \(p): \(Self.usd(lastHour)) USD in the last hour, over \(Self.usd(thresholds.costSpikeFactor))x "
                                         + "the hourly average (\(Self.usd(before / hours)) USD) before it")
                }
            }
        }
        // Failovers over the window.
        if let start = reading(atOrBefore: r.now &- UInt64(thresholds.failoverWindowSeconds * 1e9)) ?? history.first {
            let n = r.requests - start.requests, f = r.failovers - start.failovers
            if n >= thresholds.failoverMinRequests, Double(f) > thresholds.failoverRatio * Double(n) {
                raise(.highFailoverRate, "", "\(f) of the last \(n) requests failed over to another engine, node or provider")
            }
        }
        // Nodes lost.
        for n in r.nodesDown { raise(.nodeLost, n, "node \(n) is down (no heartbeat, or its connection closed)") }
        // Split failures: shown for a while after each.
        if let last = lastSplitsFailed, r.splitsFailed > last {
            let k = Self.key(.splitFailed, "")
            open[k] = nil   // a new failure opens (and is reported) again
            raise(.splitFailed, "", "\(r.splitsFailed - last) split(s) failed (a worker died or went silent); the head plans again on the next request")
        } else if let a = open[Self.key(.splitFailed, "")], seconds(r.now, a.sinceNanos) < thresholds.eventShownSeconds {
            want[Self.key(.splitFailed, "")] = a
        }
        lastSplitsFailed = r.splitsFailed
        // Budget alerts are events (see ``fire(_:)``): kept while recent.
        for (k, a) in open where a.kind == .budgetThreshold && seconds(r.now, a.sinceNanos) < thresholds.eventShownSeconds { want[k] = a }

        let opened = want.filter { open[$0.key] == nil }.map(\.value).sorted { ($0.kind.rawValue, $0.subject) < ($1.kind.rawValue, $1.subject) }
        let resolved = open.filter { want[$0.key] == nil }.map(\.value).sorted { ($0.kind.rawValue, $0.subject) < ($1.kind.rawValue, $1.subject) }
        open = want
        return (opened, resolved)
    }

    /// An alert raised elsewhere (the budget ledger's): open now, shown for a while.
    public mutating func fire(_ a: Alert) {
        open[Self.key(a.kind, a.subject)] = a
    }

    private mutating func record(_ r: AlertReadings) {
        if let last = history.last, seconds(r.now, last.at) < 60 { return }
        history.append((r.now, r.spendUSD, r.requests, r.failovers))
        // 26 hours at one a minute.
        while let first = history.first, seconds(r.now, first.at) > 26 * 3600 { history.removeFirst() }
    }

    private func reading(atOrBefore t: UInt64) -> (at: UInt64, spend: [String: Double], requests: Int, failovers: Int)? {
        history.last { $0.at <= t }
    }

    private func seconds(_ a: UInt64, _ b: UInt64) -> Double { a >= b ? Double(a - b) / 1e9 : 0 }

    /// `1.25`, `0.10`, `3.00`: two decimals.
    static func usd(_ v: Double) -> String {
        let cents = Int((v * 100).rounded())
        let frac = abs(cents % 100)
        return "\(cents / 100).\(frac < 10 ? "0" : "")\(frac)"
    }
}
