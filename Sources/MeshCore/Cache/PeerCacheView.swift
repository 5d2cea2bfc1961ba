/// One engine of a peer as this node knows it: the block hashes it holds (every
/// `CacheShadow.peerStride`-th block of its chains), with their tiers. Numbering and gaps are
/// ``PeerCaches``' business, per peer.
public struct PeerCacheView: Sendable {
    public private(set) var tiers: [UInt64: CacheTier] = [:]
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

    /// Applies tier changes (`.none`: dropped).
    public mutating func merge(_ changes: [(UInt64, CacheTier)]) {
        for (h, t) in changes {
            if t == .none { tiers[h] = nil } else if tiers.count < maxEntries || tiers[h] != nil { tiers[h] = t }
        }
    }

    /// Replaces the whole view with a snapshot.
    public mutating func load(_ entries: [(UInt64, CacheTier)]) {
        tiers.removeAll(keepingCapacity: true)
        for (h, t) in entries.prefix(maxEntries) where t != .none { tiers[h] = t }
    }

    /// How much of `chain` the peer's engine holds (no slot: the peer pins requests itself).
    public func match(_ chain: PromptChain) -> CachedPrefix {
        CachedPrefix.match(chain, stride: CacheShadow.peerStride) { tiers[$0] ?? .none }
    }
}

/// Every engine cache of one peer, kept from its numbered ``CacheDeltaMessage``s: numbers are per
/// peer process (a new `instance` starts afresh), a missing one leaves the views as they are
/// (mostly right) and asks for a snapshot, again after `retryNanos` if none came.
public struct PeerCaches: Sendable {
    public private(set) var instance: String?
    /// Number of the last message applied; nil until a snapshot.
    public private(set) var number: UInt64?
    public private(set) var engines: [String: PeerCacheView] = [:]
    private var askedAt: UInt64?
    public let retryNanos: UInt64

    public init(retryNanos: UInt64 = 2_000_000_000) {
        self.retryNanos = retryNanos
    }

    /// Applies a message; `.gap` means: ask the peer for a snapshot now.
    public mutating func receive(_ m: CacheDeltaMessage, now: UInt64) -> PeerCacheView.Outcome {
        if m.instance != instance {
            // The peer restarted: what we knew of it is void, and its numbers start again.
            instance = m.instance
            number = nil
            engines = [:]
            askedAt = nil
        }
        if m.snapshot {
            engines = [:]
            for e in m.engines {
                var v = PeerCacheView()
                v.load(e.entries.map { ($0.hash, $0.tier) })
                engines[e.id] = v
            }
            number = m.number
            askedAt = nil
            return .applied
        }
        if let last = number {
            if m.number <= last { return .stale }
            if m.number == last + 1 {
                for e in m.engines { engines[e.id, default: PeerCacheView()].merge(e.entries.map { ($0.hash, $0.tier) }) }
                number = m.number
                return .applied
            }
        }
        // A gap (or no snapshot yet): ask once, and again if no snapshot came within retryNanos.
        if let a = askedAt, now < a &+ retryNanos { return .stale }
        askedAt = now
        return .gap
    }

    /// How much of `chain` the peer's engine `id` holds.
    public func match(_ engine: String, _ chain: PromptChain) -> CachedPrefix? {
        engines[engine]?.match(chain)
    }
}
