/// Who a cap applies to.
public enum BudgetScope: Hashable, Sendable, CustomStringConvertible {
    case global
    case provider(String)
    /// A client API key, by its name (never the key itself).
    case key(String)

    public var description: String {
        switch self {
        case .global: return "global"
        case .provider(let p): return "provider '\(p)'"
        case .key(let k): return "API key '\(k)'"
        }
    }
}

/// A cap's period.
public enum BudgetPeriod: String, Sendable, CaseIterable {
    case daily, monthly
}

/// Daily and monthly USD caps (nil = no cap), global, per provider and per client key.
public struct BudgetCaps: Sendable, Equatable {
    /// One scope's caps.
    public struct Limit: Sendable, Equatable {
        public var daily: MicroUSD?
        public var monthly: MicroUSD?
        public init(daily: MicroUSD? = nil, monthly: MicroUSD? = nil) {
            self.daily = daily
            self.monthly = monthly
        }
        func cap(_ p: BudgetPeriod) -> MicroUSD? { p == .daily ? daily : monthly }
    }

    public var global: Limit
    public var providers: [String: Limit]
    public var keys: [String: Limit]
    /// Fraction of a cap at which an alert fires (once per cap and period).
    public var alertAt: Double

    public init(global: Limit = Limit(), providers: [String: Limit] = [:], keys: [String: Limit] = [:], alertAt: Double = 0.8) {
        self.global = global
        self.providers = providers
        self.keys = keys
        self.alertAt = alertAt
    }

    public func limit(_ s: BudgetScope) -> Limit? {
        switch s {
        case .global: return global
        case .provider(let p): return providers[p]
        case .key(let k): return keys[k]
        }
    }
}

/// A request for money: the worst case of one cloud request.
public struct BudgetRequest: Sendable, Equatable {
    public var id: String
    public var provider: String
    /// Name of the client key, if the client used one.
    public var apiKey: String?
    public var amount: MicroUSD

    public init(id: String, provider: String, apiKey: String?, amount: MicroUSD) {
        self.id = id
        self.provider = provider
        self.apiKey = apiKey
        self.amount = amount
    }

    var scopes: [BudgetScope] { [.global, .provider(provider)] + (apiKey.map { [.key($0)] } ?? []) }
}

/// Why a reservation was refused: the first cap it would have exceeded.
public struct BudgetDenial: Error, Sendable, Equatable, CustomStringConvertible {
    public var scope: BudgetScope
    public var period: BudgetPeriod
    public var limit: MicroUSD
    public var spent: MicroUSD
    public var reserved: MicroUSD
    public var requested: MicroUSD
    /// Unix seconds when the period resets.
    public var resetsAt: Int64

    public var description: String {
        "\(period.rawValue) budget of the \(scope) exhausted: limit $\(fmt(limit)), spent $\(fmt(spent)), reserved $\(fmt(reserved)), "
            + "this request needs up to $\(fmt(requested)); resets at unix time \(resetsAt)"
    }

    func fmt(_ m: MicroUSD) -> String {
        let cents = (m + 9_999) / 10_000
        return "\(cents / 100).\(cents % 100 < 10 ? "0" : "")\(cents % 100)"
    }
}

/// A cap crossed its alert threshold.
public struct BudgetAlert: Sendable, Equatable {
    public var scope: BudgetScope
    public var period: BudgetPeriod
    public var limit: MicroUSD
    /// Spent plus reserved when the alert fired.
    public var used: MicroUSD
}

/// One cap's standing.
public struct CapUsage: Sendable, Equatable {
    public var scope: BudgetScope
    public var period: BudgetPeriod
    public var limit: MicroUSD?
    public var spent: MicroUSD
    public var reserved: MicroUSD
    public var resetsAt: Int64
    public var remaining: MicroUSD? { limit.map { max(0, $0 - spent - reserved) } }
}

/// The budget as a pure state machine. The owner keeps it behind one lock and writes each step to
/// the durable ledger in the same critical section, so concurrent admissions can never together
/// exceed a cap: a reservation is admitted only if, for every cap that applies, spent + reserved +
/// this request's worst case stays within the limit.
public struct BudgetBook: Sendable {
    public var caps: BudgetCaps
    public let calendar: BudgetCalendar

    struct Key: Hashable, Sendable {
        var scope: BudgetScope
        var period: String  // "d:2026-11-23" or "m:2026-11"
    }

    /// An admitted reservation not yet settled or released.
    public struct Open: Sendable, Equatable {
        public var request: BudgetRequest
        public var day: String
        public var month: String
    }

    var spent: [Key: MicroUSD] = [:]
    var reserved: [Key: MicroUSD] = [:]
    public private(set) var open: [String: Open] = [:]
    var alerted: Set<Key> = []

    public init(caps: BudgetCaps, calendar: BudgetCalendar = .utc) {
        self.caps = caps
        self.calendar = calendar
    }

    func keys(_ r: BudgetRequest, day: String, month: String) -> [(Key, BudgetPeriod)] {
        r.scopes.flatMap { s in [(Key(scope: s, period: "d:" + day), .daily), (Key(scope: s, period: "m:" + month), .monthly)] }
    }

    /// Admits `r` if every applicable cap has room for its worst case, reserving it; otherwise
    /// returns the first cap it would exceed. Alerts that the reservation triggers are returned.
    public mutating func reserve(_ r: BudgetRequest, nowNanos: UInt64) -> Result<[BudgetAlert], BudgetDenial> {
        precondition(open[r.id] == nil, "reservation \(r.id) exists")
        let p = calendar.periods(atNanos: nowNanos)
        for (k, period) in keys(r, day: p.day, month: p.month) {
            guard let limit = caps.limit(k.scope)?.cap(period) else { continue }
            let s = spent[k, default: 0], res = reserved[k, default: 0]
            if s + res + max(0, r.amount) > limit {
                return .failure(BudgetDenial(scope: k.scope, period: period, limit: limit, spent: s, reserved: res, requested: r.amount,
                                             resetsAt: period == .daily ? p.dayResetsAt : p.monthResetsAt))
            }
        }
        apply(reserve: r, day: p.day, month: p.month)
        return .success(alerts(r, day: p.day, month: p.month))
    }

    /// Records a reservation without checking caps (ledger replay at start).
    public mutating func apply(reserve r: BudgetRequest, day: String, month: String) {
        for (k, _) in keys(r, day: day, month: month) { reserved[k, default: 0] += max(0, r.amount) }
        open[r.id] = Open(request: r, day: day, month: month)
    }

    /// Turns reservation `id` into spending of `actual` (what the response really cost; a stream
    /// cut mid-way is billed for what was generated). Unknown ids are ignored (returns nil).
    @discardableResult
    public mutating func settle(id: String, actual: MicroUSD) -> [BudgetAlert]? {
        guard let o = open.removeValue(forKey: id) else { return nil }
        for (k, _) in keys(o.request, day: o.day, month: o.month) {
            reserved[k, default: 0] -= max(0, o.request.amount)
            spent[k, default: 0] += max(0, actual)
        }
        return alerts(o.request, day: o.day, month: o.month)
    }

    /// Drops reservation `id` with nothing spent (the request never reached the provider).
    @discardableResult
    public mutating func release(id: String) -> Bool { settle(id: id, actual: 0) != nil }

    /// Counts every open reservation as spent at its full amount (after a crash nobody knows what
    /// those requests cost); returns them so the ledger can record the reconciliation.
    public mutating func reconcileOpen() -> [Open] {
        let all = open.values.sorted { $0.request.id < $1.request.id }
        for o in all { settle(id: o.request.id, actual: o.request.amount) }
        return all
    }

    mutating func alerts(_ r: BudgetRequest, day: String, month: String) -> [BudgetAlert] {
        var out: [BudgetAlert] = []
        for (k, period) in keys(r, day: day, month: month) {
            guard let limit = caps.limit(k.scope)?.cap(period), limit > 0, !alerted.contains(k) else { continue }
            let used = spent[k, default: 0] + reserved[k, default: 0]
            if Double(used) >= caps.alertAt * Double(limit) {
                alerted.insert(k)
                out.append(BudgetAlert(scope: k.scope, period: period, limit: limit, used: used))
            }
        }
        return out
    }

    /// Standing of one scope's cap at `nowNanos` (amounts of the current period).
    public func usage(_ scope: BudgetScope, _ period: BudgetPeriod, nowNanos: UInt64) -> CapUsage {
        let p = calendar.periods(atNanos: nowNanos)
        let k = Key(scope: scope, period: period == .daily ? "d:" + p.day : "m:" + p.month)
        return CapUsage(scope: scope, period: period, limit: caps.limit(scope)?.cap(period), spent: spent[k, default: 0],
                        reserved: reserved[k, default: 0], resetsAt: period == .daily ? p.dayResetsAt : p.monthResetsAt)
    }

    /// Every capped scope, plus providers and keys seen this month.
    public func scopes() -> [BudgetScope] {
        var s: Set<BudgetScope> = [.global]
        for p in caps.providers.keys { s.insert(.provider(p)) }
        for k in caps.keys.keys { s.insert(.key(k)) }
        for k in spent.keys { s.insert(k.scope) }
        for k in reserved.keys { s.insert(k.scope) }
        return s.sorted { $0.description < $1.description }
    }
}
