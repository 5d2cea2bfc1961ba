/// A request's priority (`X-Meshd-Priority: high|normal|low`).
public enum RequestPriority: Int, Sendable, Hashable, Comparable, CaseIterable {
    case low = 0
    case normal = 1
    case high = 2

    /// The header's value, case-insensitively; nil when it names none of the three.
    public init?(header: String) {
        switch header.trimmingSpaces().lowercased() {
        case "high": self = .high
        case "normal": self = .normal
        case "low": self = .low
        default: return nil
        }
    }

    public var name: String { self == .high ? "high" : self == .low ? "low" : "normal" }

    public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
}

/// The mesh-wide queue of one deciding node: requests that no engine could start soon wait here
/// and are bound to the first engine that frees up. Bounded; served high priority first, and
/// within a priority the client key served least since it began waiting first, in turn on a tie
/// (a key that sends 100 requests does not starve one that sends 10: one that arrives behind a
/// flood catches up first), first come first served within a key. Pure: time is an argument.
public struct FairQueue<Item: Sendable>: Sendable {
    struct Entry: Sendable {
        let ticket: UInt64
        let item: Item
        let enqueuedAt: UInt64
    }

    /// One priority class: keys in turn, each with its entries in arrival order.
    struct Class: Sendable {
        var ring: [String] = []
        var entries: [String: [Entry]] = [:]
        var cursor = 0
        /// Requests let go per key since it began waiting (forgotten when its last one leaves):
        /// the key served least goes next, so one that arrives behind a flood catches up first.
        var served: [String: Int] = [:]
        var count = 0
    }

    public let capacity: Int
    private var classes = [Class](repeating: Class(), count: RequestPriority.allCases.count)
    private var nextTicket: UInt64 = 1
    /// ticket → (priority, key), to remove a request whose client went away.
    private var where_: [UInt64: (RequestPriority, String)] = [:]

    public init(capacity: Int) {
        self.capacity = max(0, capacity)
    }

    public var count: Int { where_.count }
    public var isEmpty: Bool { where_.isEmpty }

    /// Whether a waiting request satisfies `predicate` (no copy of the queue).
    public func contains(where predicate: (Item) -> Bool) -> Bool {
        classes.contains { c in c.entries.values.contains { $0.contains { predicate($0.item) } } }
    }

    /// What ``enqueue(_:key:priority:now:)`` did.
    public enum Enqueued: Sendable {
        case queued(ticket: UInt64)
        /// Queued, but the queue was full: a lower-priority request (the newest one of the key
        /// with most waiting) made room and must be answered 429.
        case displaced(ticket: UInt64, victim: Item, victimTicket: UInt64)
        /// The queue is full of requests at least as important: answer 429.
        case full
    }

    public mutating func enqueue(_ item: Item, key: String, priority: RequestPriority, now: UInt64) -> Enqueued {
        var displaced: (Item, UInt64)?
        if count >= capacity {
            guard let lowest = RequestPriority.allCases.first(where: { classes[$0.rawValue].count > 0 }), lowest < priority,
                  let victim = removeNewest(lowest) else { return .full }
            displaced = victim
        }
        let ticket = nextTicket
        nextTicket += 1
        var c = classes[priority.rawValue]
        if c.entries[key] == nil {
            // A new key joins the ring just before the cursor: it is served after every key
            // already waiting has had its turn once.
            c.ring.insert(key, at: c.cursor)
            c.cursor += 1
            if c.cursor >= c.ring.count { c.cursor = 0 }
            c.entries[key] = []
        }
        c.entries[key]!.append(Entry(ticket: ticket, item: item, enqueuedAt: now))
        c.count += 1
        classes[priority.rawValue] = c
        where_[ticket] = (priority, key)
        if let (victim, victimTicket) = displaced { return .displaced(ticket: ticket, victim: victim, victimTicket: victimTicket) }
        return .queued(ticket: ticket)
    }

    /// The next request to start, among those `fits` accepts (the freed engine serves its model):
    /// high priority first; within a priority, the key let go least since it began waiting (ties:
    /// in turn from the last one served), its oldest fitting request. Returns it with its ticket
    /// and nanoseconds waited.
    public mutating func dequeue(now: UInt64, where fits: (Item) -> Bool = { _ in true }) -> (ticket: UInt64, item: Item, waited: UInt64)? {
        for p in RequestPriority.allCases.reversed() {
            var c = classes[p.rawValue]
            guard c.count > 0 else { continue }
            // The key served least so far (ties: the next in turn from the cursor) with a fitting request.
            var pick: (k: Int, i: Int, served: Int)?
            for step in 0..<c.ring.count {
                let k = (c.cursor + step) % c.ring.count
                let key = c.ring[k]
                let n = c.served[key] ?? 0
                if let p = pick, p.served <= n { continue }
                guard let i = c.entries[key]!.firstIndex(where: { fits($0.item) }) else { continue }
                pick = (k, i, n)
            }
            if let (k, i, n) = pick {
                let key = c.ring[k]
                let e = c.entries[key]!.remove(at: i)
                c.count -= 1
                if c.entries[key]!.isEmpty {
                    c.entries[key] = nil
                    c.served[key] = nil
                    c.ring.remove(at: k)
                    c.cursor = c.ring.isEmpty ? 0 : k % c.ring.count
                } else {
                    c.served[key] = n + 1
                    c.cursor = (k + 1) % c.ring.count
                }
                classes[p.rawValue] = c
                where_[e.ticket] = nil
                return (e.ticket, e.item, now >= e.enqueuedAt ? now - e.enqueuedAt : 0)
            }
        }
        return nil
    }

    /// Takes a request out (its client went away, or it was sent elsewhere); nil if not waiting.
    public mutating func remove(ticket: UInt64) -> Item? {
        guard let (p, key) = where_[ticket] else { return nil }
        var c = classes[p.rawValue]
        guard let i = c.entries[key]?.firstIndex(where: { $0.ticket == ticket }) else { return nil }
        let e = c.entries[key]!.remove(at: i)
        c.count -= 1
        if c.entries[key]!.isEmpty, let k = c.ring.firstIndex(of: key) {
            c.entries[key] = nil
            c.served[key] = nil
            c.ring.remove(at: k)
            if k < c.cursor { c.cursor -= 1 }
            if c.cursor >= c.ring.count { c.cursor = 0 }
        }
        classes[p.rawValue] = c
        where_[ticket] = nil
        return e.item
    }

    /// Every waiting item with its ticket, priority and key (for status pages and tests).
    public func waiting() -> [(ticket: UInt64, item: Item, priority: RequestPriority, key: String)] {
        var out: [(UInt64, Item, RequestPriority, String)] = []
        for p in RequestPriority.allCases.reversed() {
            let c = classes[p.rawValue]
            for key in c.ring { for e in c.entries[key] ?? [] { out.append((e.ticket, e.item, p, key)) } }
        }
        return out
    }

    /// Oldest enqueue time among the waiting requests, if any (how long the head has waited).
    public func oldest() -> UInt64? {
        classes.flatMap { c in c.entries.values.compactMap { $0.first?.enqueuedAt } }.min()
    }

    private mutating func removeNewest(_ p: RequestPriority) -> (Item, UInt64)? {
        let c = classes[p.rawValue]
        // The key with the most waiting pays (ties: the later in the ring), its newest request.
        guard let key = c.ring.reversed().max(by: { (c.entries[$0]?.count ?? 0) < (c.entries[$1]?.count ?? 0) }),
              let last = c.entries[key]?.last else { return nil }
        guard let item = remove(ticket: last.ticket) else { return nil }
        return (item, last.ticket)
    }
}
