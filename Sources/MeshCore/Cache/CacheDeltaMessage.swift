/// What a node tells its peers of its engines' caches: the tier changes of block hashes since
/// its last message (numbered 1, 2, 3, … per process), or, asked after a gap, a snapshot of
/// everything held with the number of the last change it includes. Carried by a `cacheDelta`
/// mesh message: the header names the engines and how many entries each has, the payload packs
/// the entries (8 bytes of hash, little-endian, and 1 byte of tier), so a request's new blocks
/// cost 9 bytes each.
public struct CacheDeltaMessage: Sendable, Equatable {
    public struct EngineChanges: Sendable, Equatable {
        public var id: String
        public var entries: [CacheEntry]
        public init(id: String, entries: [CacheEntry]) {
            self.id = id
            self.entries = entries
        }
    }

    public struct CacheEntry: Sendable, Equatable {
        public var hash: UInt64
        public var tier: CacheTier
        public init(_ hash: UInt64, _ tier: CacheTier) {
            self.hash = hash
            self.tier = tier
        }
    }

    public var node: String
    /// The sender's per-process instance: numbers restart with it.
    public var instance: String
    public var number: UInt64
    public var snapshot: Bool
    public var engines: [EngineChanges]

    public init(node: String, instance: String, number: UInt64, snapshot: Bool, engines: [EngineChanges]) {
        self.node = node
        self.instance = instance
        self.number = number
        self.snapshot = snapshot
        self.engines = engines
    }

    /// Most entries accepted in one message (a snapshot of 8 engines × 65,536 blocks).
    public static let maxEntries = 8 * 65_536

    public var wire: WireMessage {
        var payload: [UInt8] = []
        payload.reserveCapacity(9 * engines.reduce(0) { $0 + $1.entries.count })
        var list: [JSON] = []
        for e in engines {
            list.append(.object([("id", .string(e.id)), ("count", .int(Int64(e.entries.count)))]))
            for entry in e.entries {
                for k in 0..<8 { payload.append(UInt8(truncatingIfNeeded: entry.hash >> (8 * UInt64(k)))) }
                payload.append(entry.tier.rawValue)
            }
        }
        let header: JSON = .object([("node", .string(node)), ("instance", .string(instance)), ("n", .int(Int64(number))),
                                    ("snapshot", .bool(snapshot)), ("engines", .array(list))])
        return WireMessage(type: .cacheDelta, header: header, payload: payload)
    }

    /// Reads a `cacheDelta` message; nil when its counts, payload or tiers do not add up.
    public init?(_ m: WireMessage) {
        guard m.type == .cacheDelta, let node = m.header["node"]?.stringValue, let n = m.header["n"]?.intValue, n >= 0,
              let list = m.header["engines"]?.arrayValue else { return nil }
        var engines: [EngineChanges] = []
        var offset = 0
        let p = m.payload
        for item in list {
            guard let id = item["id"]?.stringValue, let count = item["count"]?.intValue, count >= 0,
                  count <= Self.maxEntries, offset + 9 * count <= p.count else { return nil }
            var entries: [CacheEntry] = []
            entries.reserveCapacity(count)
            for _ in 0..<count {
                var h: UInt64 = 0
                for k in 0..<8 { h |= UInt64(p[offset + k]) << (8 * UInt64(k)) }
                guard let tier = CacheTier(rawValue: p[offset + 8]) else { return nil }
                entries.append(CacheEntry(h, tier))
                offset += 9
            }
            engines.append(EngineChanges(id: id, entries: entries))
        }
        guard offset == p.count else { return nil }
        self.init(node: node, instance: m.header["instance"]?.stringValue ?? "", number: UInt64(n),
                  snapshot: m.header["snapshot"]?.boolValue ?? false, engines: engines)
    }
}
