/// When a provider is taken out of rotation and for how long.
public struct ProviderHealthPolicy: Sendable, Equatable {
    /// Consecutive failures that open the circuit.
    public var failureThreshold: Int
    /// Cooldown of the first opening; each further opening without a success in between doubles it.
    public var baseCooldownSeconds: Double
    /// Upper bound of the doubled cooldown.
    public var maxCooldownSeconds: Double
    /// Cooldown after a 429 without a usable `retry-after`.
    public var defaultRetryAfterSeconds: Double
    /// Upper bound of a provider's `retry-after`.
    public var maxRetryAfterSeconds: Double
    /// A half-open probe that reports nothing for this long no longer blocks the next probe.
    public var probeTimeoutSeconds: Double

    /// Creates a policy; the defaults are 3 failures, 30 s doubling up to 10 min.
    public init(failureThreshold: Int = 3, baseCooldownSeconds: Double = 30, maxCooldownSeconds: Double = 600,
                defaultRetryAfterSeconds: Double = 30, maxRetryAfterSeconds: Double = 3600, probeTimeoutSeconds: Double = 120) {
        self.failureThreshold = max(1, failureThreshold)
        self.baseCooldownSeconds = max(0, baseCooldownSeconds)
        self.maxCooldownSeconds = max(self.baseCooldownSeconds, maxCooldownSeconds)
        self.defaultRetryAfterSeconds = max(0, defaultRetryAfterSeconds)
        self.maxRetryAfterSeconds = max(0, maxRetryAfterSeconds)
        self.probeTimeoutSeconds = max(0, probeTimeoutSeconds)
    }
}

/// The outcome of one provider request, as far as the provider's health is concerned.
public enum ProviderOutcome: Sendable, Equatable {
    case success
    /// Server error, transport failure, cut stream, rejected key: counts towards opening the circuit.
    case failure(String)
    /// HTTP 429; the provider's `retry-after` in seconds when it sent one.
    case rateLimited(retryAfterSeconds: Double?)
}

/// Circuit-breaker state of a provider.
public enum CircuitState: String, Sendable, Equatable, Codable {
    /// Serving.
    case closed
    /// Cooling down: no requests.
    case open
    /// The cooldown is over: one probe request may go; its outcome closes or re-opens the circuit.
    case halfOpen = "half_open"
}

/// Health of one provider: consecutive failures open a circuit for a cooldown (doubling up to a
/// cap), a 429 opens it for the provider's `retry-after`, and after the cooldown one probe request
/// decides whether it closes again. Pure: every time is passed in as Unix nanoseconds.
public struct ProviderHealth: Sendable, Equatable {
    /// The rules applied.
    public let policy: ProviderHealthPolicy
    /// Failures since the last success.
    public private(set) var consecutiveFailures = 0
    /// While set, the circuit is open until then (half-open afterwards).
    public private(set) var cooldownUntilNanos: UInt64?
    /// The most recent failure's description.
    public private(set) var lastError: String?
    /// When the most recent failure happened.
    public private(set) var lastErrorNanos: UInt64?
    /// Openings for failures since the last success (the cooldown doubles with each).
    public private(set) var openings = 0
    /// When the current half-open probe was let through.
    var probeStartedNanos: UInt64?

    /// A healthy provider.
    public init(policy: ProviderHealthPolicy = ProviderHealthPolicy()) {
        self.policy = policy
    }

    /// The circuit's state at `nowNanos`.
    public func state(nowNanos: UInt64) -> CircuitState {
        guard let until = cooldownUntilNanos else { return .closed }
        return nowNanos < until ? .open : .halfOpen
    }

    /// Whether a request may be sent now: closed, or half-open with no probe under way. Does not
    /// take the probe slot: call ``admit(nowNanos:)`` for the request actually sent.
    public func isAvailable(nowNanos: UInt64) -> Bool {
        switch state(nowNanos: nowNanos) {
        case .closed: return true
        case .open: return false
        case .halfOpen: return !probeInFlight(nowNanos: nowNanos)
        }
    }

    /// Like ``isAvailable(nowNanos:)``, and in the half-open state takes the one probe slot.
    public mutating func admit(nowNanos: UInt64) -> Bool {
        guard isAvailable(nowNanos: nowNanos) else { return false }
        if state(nowNanos: nowNanos) == .halfOpen { probeStartedNanos = nowNanos }
        return true
    }

    func probeInFlight(nowNanos: UInt64) -> Bool {
        guard let started = probeStartedNanos else { return false }
        return nowNanos < started &+ Self.nanos(policy.probeTimeoutSeconds)
    }

    /// Records the outcome of a request that finished at `nowNanos`.
    public mutating func record(_ outcome: ProviderOutcome, nowNanos: UInt64) {
        let state = state(nowNanos: nowNanos)
        switch outcome {
        case .success:
            // A late answer to a request sent before the circuit opened does not cut a cooldown short.
            guard state != .open else { return }
            consecutiveFailures = 0
            openings = 0
            cooldownUntilNanos = nil
            probeStartedNanos = nil
        case .failure(let reason):
            consecutiveFailures += 1
            lastError = reason
            lastErrorNanos = nowNanos
            if state == .halfOpen || (state == .closed && consecutiveFailures >= policy.failureThreshold) {
                let cooldown = min(policy.maxCooldownSeconds, policy.baseCooldownSeconds * Double(1 << min(openings, 30)))
                openings += 1
                open(until: nowNanos &+ Self.nanos(cooldown))
            }
        case .rateLimited(let retryAfter):
            lastError = "rate limited (429)"
            lastErrorNanos = nowNanos
            let seconds = min(policy.maxRetryAfterSeconds, max(0, retryAfter ?? policy.defaultRetryAfterSeconds))
            open(until: max(cooldownUntilNanos ?? 0, nowNanos &+ Self.nanos(seconds)))
        }
    }

    mutating func open(until: UInt64) {
        cooldownUntilNanos = until
        probeStartedNanos = nil
    }

    static func nanos(_ seconds: Double) -> UInt64 {
        seconds >= Double(UInt64.max / 1_000_000_000) ? UInt64.max / 2 : UInt64((seconds * 1e9).rounded(.up))
    }

    /// What `meshctl` shows.
    public func snapshot(name: String, nowNanos: UInt64) -> ProviderHealthSnapshot {
        let state = state(nowNanos: nowNanos)
        return ProviderHealthSnapshot(name: name, state: state, available: isAvailable(nowNanos: nowNanos),
                                      consecutiveFailures: consecutiveFailures,
                                      cooldownUntilNanos: state == .open ? cooldownUntilNanos : nil,
                                      lastError: lastError, lastErrorNanos: lastErrorNanos)
    }
}

/// One provider's health at a moment, for `meshctl` and the control socket.
public struct ProviderHealthSnapshot: Sendable, Equatable {
    public var name: String
    public var state: CircuitState
    /// Whether a request would be let through now.
    public var available: Bool
    public var consecutiveFailures: Int
    /// End of the cooldown while the circuit is open.
    public var cooldownUntilNanos: UInt64?
    public var lastError: String?
    public var lastErrorNanos: UInt64?

    /// Creates a snapshot.
    public init(name: String, state: CircuitState, available: Bool, consecutiveFailures: Int,
                cooldownUntilNanos: UInt64?, lastError: String?, lastErrorNanos: UInt64?) {
        self.name = name
        self.state = state
        self.available = available
        self.consecutiveFailures = consecutiveFailures
        self.cooldownUntilNanos = cooldownUntilNanos
        self.lastError = lastError
        self.lastErrorNanos = lastErrorNanos
    }

    /// `{"name","state","available","consecutive_failures","cooldown_until","last_error","last_error_at"}`,
    /// times in Unix seconds (`null` when unset).
    public var json: JSON {
        func seconds(_ n: UInt64?) -> JSON { n.map { .number(Double($0) / 1e9) } ?? .null }
        return ["name": .string(name), "state": .string(state.rawValue), "available": .bool(available),
                "consecutive_failures": .integer(consecutiveFailures), "cooldown_until": seconds(cooldownUntilNanos),
                "last_error": lastError.map(JSON.string) ?? .null, "last_error_at": seconds(lastErrorNanos)]
    }
}

/// The HTTP `Retry-After` header: delay-seconds or an HTTP date (IMF-fixdate, RFC 850 or asctime).
public enum RetryAfter {
    /// Seconds to wait from `nowNanos` (0 for a date in the past), or nil when `value` is neither form.
    public static func seconds(_ value: String, nowNanos: UInt64) -> Double? {
        let v = value.trimmingSpaces()
        if !v.isEmpty, v.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 || $0 == 0x2E }), let s = Double(v) {
            return s
        }
        guard let date = httpDate(v) else { return nil }
        return max(0, Double(date) - Double(nowNanos) / 1e9)
    }

    /// An HTTP date as Unix seconds.
    public static func httpDate(_ value: String) -> Int64? {
        let words = value.split(whereSeparator: { $0 == " " || $0 == "," }).map(String.init)
        var day: Int?, month: Int?, year: Int?, time: [Int]?
        for w in words {
            if w.count == 3, let m = months.firstIndex(of: w.lowercased()) {
                month = m + 1
            } else if w.contains(":") {
                let parts = w.split(separator: ":").compactMap { Int($0) }
                guard parts.count == 3 else { return nil }
                time = parts
            } else if w.contains("-") {  // RFC 850: 06-Nov-94
                let parts = w.split(separator: "-").map(String.init)
                guard parts.count == 3, let d = Int(parts[0]), let m = months.firstIndex(of: parts[1].lowercased()),
                      var y = Int(parts[2]) else { return nil }
                if y < 100 { y += y < 70 ? 2000 : 1900 }
                (day, month, year) = (d, m + 1, y)
            } else if let n = Int(w) {
                if n > 31 || day != nil { year = n } else { day = n }
            }
        }
        guard let d = day, let m = month, let y = year, let t = time, (1...31).contains(d),
              (0...23).contains(t[0]), (0...59).contains(t[1]), (0...60).contains(t[2]) else { return nil }
        return BudgetCalendar.days(fromCivil: y, m, d) * 86_400 + Int64(t[0] * 3600 + t[1] * 60 + t[2])
    }

    static let months = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
}
