import MeshCore
import Synchronization

/// The ``ProviderHealth`` of every provider, shared by concurrent requests. Providers never seen
/// are healthy.
public final class ProviderHealthRegistry: Sendable {
    /// Applied to every provider.
    public let policy: ProviderHealthPolicy
    private let entries = Mutex<[String: ProviderHealth]>([:])

    /// An empty registry.
    public init(policy: ProviderHealthPolicy = ProviderHealthPolicy()) {
        self.policy = policy
    }

    /// Whether a request to `provider` may be sent now (see ``ProviderHealth/isAvailable(nowNanos:)``).
    public func isAvailable(_ provider: String, nowNanos: UInt64) -> Bool {
        entries.withLock { $0[provider]?.isAvailable(nowNanos: nowNanos) ?? true }
    }

    /// Admits one request to `provider`, taking the probe slot when half-open.
    public func admit(_ provider: String, nowNanos: UInt64) -> Bool {
        entries.withLock { e in
            guard e[provider] != nil else { return true }
            return e[provider]!.admit(nowNanos: nowNanos)
        }
    }

    /// Records the outcome of a request to `provider`.
    public func record(_ provider: String, _ outcome: ProviderOutcome, nowNanos: UInt64) {
        entries.withLock { e in
            e[provider, default: ProviderHealth(policy: policy)].record(outcome, nowNanos: nowNanos)
        }
    }

    /// The health of `provider` now.
    public func snapshot(_ provider: String, nowNanos: UInt64) -> ProviderHealthSnapshot {
        entries.withLock { ($0[provider] ?? ProviderHealth(policy: policy)).snapshot(name: provider, nowNanos: nowNanos) }
    }

    /// The health of `providers` (and of every other provider with a record), by name.
    public func snapshots(_ providers: [String] = [], nowNanos: UInt64) -> [ProviderHealthSnapshot] {
        entries.withLock { e in
            Set(providers).union(e.keys).sorted().map { (e[$0] ?? ProviderHealth(policy: policy)).snapshot(name: $0, nowNanos: nowNanos) }
        }
    }
}
