/// What one node counted for client keys over the last minute (``RateLimiter``), for its peers:
/// the `keyUsage` mesh message. Header `node`, `instance`, `seq`, `full` (every key the sender
/// holds: keys it leaves out are empty) and `keys` [{`k`, `f` in flight, `p` pending tokens,
/// `s` [[age seconds, requests, tokens], ...]}]. Each entry replaces what the receiver held of
/// that key from that node.
public struct KeyUsageReport: Sendable, Equatable {
    public struct Second: Sendable, Equatable {
        public var age: Int
        public var requests: Int
        public var tokens: Int
        public init(age: Int, requests: Int, tokens: Int) {
            self.age = age
            self.requests = requests
            self.tokens = tokens
        }
    }

    public struct Entry: Sendable, Equatable {
        public var key: String
        public var inFlight: Int
        public var pendingTokens: Int
        /// Newest first.
        public var seconds: [Second]
        public init(key: String, inFlight: Int, pendingTokens: Int, seconds: [Second]) {
            self.key = key
            self.inFlight = inFlight
            self.pendingTokens = pendingTokens
            self.seconds = seconds
        }
    }

    public var node: String
    public var instance: String
    public var seq: UInt64
    public var full: Bool
    public var entries: [Entry]

    public init(node: String, instance: String, seq: UInt64, full: Bool, entries: [Entry]) {
        self.node = node
        self.instance = instance
        self.seq = seq
        self.full = full
        self.entries = entries
    }

    public var wire: WireMessage {
        let keys: [JSON] = entries.map { e in
            .object([("k", .string(e.key)), ("f", .number(Double(e.inFlight))), ("p", .number(Double(e.pendingTokens))),
                     ("s", .array(e.seconds.map { .array([.number(Double($0.age)), .number(Double($0.requests)), .number(Double($0.tokens))]) }))])
        }
        return WireMessage(type: .keyUsage, header: .object([
            ("node", .string(node)), ("instance", .string(instance)), ("seq", .number(Double(seq))), ("full", .bool(full)),
            ("keys", .array(keys)),
        ]))
    }

    /// Decodes a `keyUsage` message; nil when anything is missing, negative, or out of bounds
    /// (more than ``RateLimiter/maxReportKeys`` keys, seconds outside the window, a bad key name).
    public init?(_ m: WireMessage) {
        guard m.type == .keyUsage, let node = m.header["node"]?.stringValue, let instance = m.header["instance"]?.stringValue,
              let seq = m.header["seq"]?.intValue, seq >= 0, let full = m.header["full"]?.boolValue,
              let keys = m.header["keys"]?.arrayValue, keys.count <= RateLimiter.maxReportKeys else { return nil }
        let window = Int(RateLimiter.windowSeconds)
        var entries: [Entry] = []
        for k in keys {
            guard let name = k["k"]?.stringValue, name.isEmpty || ClientKey.isName(Substring(name)),
                  let f = k["f"]?.intValue, f >= 0, let p = k["p"]?.intValue, p >= 0,
                  let secs = k["s"]?.arrayValue, secs.count <= window else { return nil }
            var seconds: [Second] = []
            for s in secs {
                guard let a = s.arrayValue, a.count == 3, let age = a[0].intValue, (0..<window).contains(age),
                      let r = a[1].intValue, r >= 0, let t = a[2].intValue, t >= 0 else { return nil }
                seconds.append(Second(age: age, requests: r, tokens: t))
            }
            entries.append(Entry(key: name, inFlight: f, pendingTokens: p, seconds: seconds))
        }
        self.init(node: node, instance: instance, seq: UInt64(seq), full: full, entries: entries)
    }
}
