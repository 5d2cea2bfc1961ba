/// A peer's engine cache as this node knows it: the block hashes it holds, kept current by the
/// numbered deltas the peer sends with its load messages. A delta whose number does not follow
/// the last one applied means one was lost: the view is then stale and asks for a snapshot.
public struct PeerCacheView: Sendable {
    public private(set) var tiers: [UInt64: CacheTier] = [:]
    /// Number of the last delta (or snapshot) applied; nil before the first snapshot.
    public private(set) var sequence: UInt64?
    /// Largest number of hashes kept (a peer cannot make this node hold unbounded state).
    public let maxEntries: Int

    public init(maxEntries: Int = 65_536) {
        self.maxEntries = maxEntries
    }

    /// What applying a delta did.
    public enum Outcome: Sendable, Equatable {
        case applied
        /// Already applied (a duplicate or an old one): ignored.
        case stale
        /// One or more deltas are missing (or no snapshot yet): ask the peer for a snapshot.
        case gap
    }

    /// Applies delta `number` (the peer numbers them 1, 2, 3, …; a snapshot carries the number of
    /// the last delta it includes).
    public mutating func apply(number: UInt64, changes: [(UInt64, CacheTier)]) -> Outcome {
        guard let last = sequence else { return .gap }
        if number <= last { return .stale }
        guard number == last + 1 else { return .gap }
        for (h, t) in changes {
            if t == .none { tiers[h] = nil } else if tiers.count < maxEntries || tiers[h] != nil { tiers[h] = t }
        }
        sequence = number
        return .applied
    }

    /// Replaces the whole view with a snapshot that includes the peer's deltas up to `number`.
    public mutating func load(number: UInt64, entries: [(UInt64, CacheTier)]) {
        tiers.removeAll(keepingCapacity: true)
        for (h, t) in entries.prefix(maxEntries) where t != .none { tiers[h] = t }
        sequence = number
    }

    /// Forgets everything (the peer left or restarted).
    public mutating func clear() {
        tiers = [:]
        sequence = nil
    }

    /// How much of `chain` the peer's engine holds (no slot: the peer pins requests itself).
    public func match(_ chain: PromptChain) -> CachedPrefix {
        CachedPrefix.match(chain) { tiers[$0] ?? .none }
    }
}
