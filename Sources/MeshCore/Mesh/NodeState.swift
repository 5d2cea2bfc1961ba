/// What a node tells its peers about itself (the `state` message), also what routing sees.
public struct NodeState: Sendable, Equatable, Codable {
    /// Stable node id (the node name unless configured otherwise).
    public var id: String
    public var name: String
    /// Mesh protocol version.
    public var proto: Int
    /// `host:port` of the node's mesh ROUTER, as peers should dial it.
    public var meshEndpoint: String
    /// `host:port` of the node's client API.
    public var httpEndpoint: String
    /// Increases with every change; a peer ignores older states.
    public var seq: UInt64
    public var draining: Bool
    /// Accelerator memory in bytes (0 when the node has none), summed over devices.
    public var vramTotalBytes: Int64
    public var vramFreeBytes: Int64
    /// Short hardware summary (`2x NVIDIA GeForce RTX 4090`, `cpu` when the node has no GPU).
    public var gpuSummary: String
    /// System RAM in bytes (`MemTotal`, `MemAvailable`), separate from VRAM, so a CPU-only node
    /// still shows its memory. nil when unknown or sent by a build that predates these fields.
    public var ramTotalBytes: Int64?
    public var ramFreeBytes: Int64?
    /// The node's engines with their models, load and measured speeds.
    public var engines: [EngineSnapshot]
    /// Mesh endpoints of peers this node knows (one seed is enough to find the rest).
    public var knownPeers: [String]

    public init(id: String, name: String, proto: Int = Int(meshProtocolVersion), meshEndpoint: String, httpEndpoint: String,
                seq: UInt64 = 0, draining: Bool = false, vramTotalBytes: Int64 = 0, vramFreeBytes: Int64 = 0,
                gpuSummary: String = "cpu", ramTotalBytes: Int64? = nil, ramFreeBytes: Int64? = nil,
                engines: [EngineSnapshot] = [], knownPeers: [String] = []) {
        self.id = id
        self.name = name
        self.proto = proto
        self.meshEndpoint = meshEndpoint
        self.httpEndpoint = httpEndpoint
        self.seq = seq
        self.draining = draining
        self.vramTotalBytes = vramTotalBytes
        self.vramFreeBytes = vramFreeBytes
        self.gpuSummary = gpuSummary
        self.ramTotalBytes = ramTotalBytes
        self.ramFreeBytes = ramFreeBytes
        self.engines = engines
        self.knownPeers = knownPeers
    }

    /// Set on a gateway (a node with cloud providers): what it can escalate to. Optional on the
    /// wire (added after protocol 1): older nodes neither send nor read it.
    public var gateway: GatewayAdvert? = nil

    /// Random per meshd process (optional on the wire, added after protocol 1): tells a restart of a
    /// node (same name, same endpoint) from another machine that uses the same name.
    public var instance: String? = nil

    /// Its llama.cpp build and whether it can lend memory to a split (optional on the wire, added
    /// after protocol 1; nil: no llama-server, or an older node).
    public var llama: LlamaAdvert? = nil

    /// The sender reads ``NodeLoad`` (`load`) messages (optional on the wire, added after protocol
    /// 1): only such a peer is sent them; an older one gets a full state instead.
    public var acceptsLoad: Bool? = nil

    /// The sender counts client keys' use for per-key limits and reads `keyUsage` messages
    /// (optional on the wire, added after protocol 1).
    public var acceptsKeyUsage: Bool? = nil

    /// This state's engine load and speeds as a `load` message.
    public var load: NodeLoad {
        NodeLoad(node: id, seq: seq, instance: instance, engines: engines.map { NodeLoad.Engine(id: $0.id, load: $0.load, speeds: $0.speeds) })
    }

    /// Requests in flight on this node's engines.
    public var inFlight: Int { engines.reduce(0) { $0 + $1.load.inFlight } }

    /// Distinct model names on healthy engines.
    public var modelNames: [String] { Router.availableModels(engines) }
}

/// The part of a node's state that changes with every request: each engine's load and measured
/// speeds (the `load` message). Under load a node sends this every few ms instead of its whole
/// state (models, hardware, peers), which stays on heartbeats and real changes.
public struct NodeLoad: Sendable, Equatable, Codable {
    /// One engine's numbers, by the engine's id within the node.
    public struct Engine: Sendable, Equatable, Codable {
        public var id: String
        public var load: EngineLoad
        public var speeds: EngineSpeeds

        public init(id: String, load: EngineLoad, speeds: EngineSpeeds) {
            self.id = id
            self.load = load
            self.speeds = speeds
        }
    }

    /// The sending node's id.
    public var node: String
    /// Ordered with the sender's ``NodeState/seq``: a load no newer than the state or load a peer holds is ignored.
    public var seq: UInt64
    /// The sender's per-process instance, as in its state.
    public var instance: String?
    public var engines: [Engine]

    public init(node: String, seq: UInt64, instance: String?, engines: [Engine]) {
        self.node = node
        self.seq = seq
        self.instance = instance
        self.engines = engines
    }
}

/// The peers a node has heard from, with expiry: pure bookkeeping, time passed in.
public struct PeerTable: Sendable {
    public struct Entry: Sendable, Equatable {
        public var state: NodeState
        public var lastHeardNanos: UInt64
        /// Set by `meshctl drain` on this node, independent of what the peer says.
        public var drainedLocally: Bool
        /// `seq` of the newest `load` applied; kept apart from the state's, so a whole state built
        /// before it (a model change) is still taken.
        public var loadSeq: UInt64 = 0
    }

    public private(set) var entries: [String: Entry] = [:]
    /// A peer unheard for this long is gone.
    public var expiryNanos: UInt64

    public init(heartbeatMs: Int, deadAfterMissed: Int) {
        expiryNanos = UInt64(max(1, heartbeatMs)) * UInt64(max(1, deadAfterMissed)) * 1_000_000
    }

    /// Records a state; returns true when it is new or changed what routing sees. An older state
    /// (lower `seq`) of the same process only counts as a sign of life; another process at that
    /// endpoint (a restarted meshd, whose clock may now be behind) is taken whatever its `seq`.
    /// `nowNanos` is monotonic, as for `expire`.
    @discardableResult
    public mutating func update(_ s: NodeState, nowNanos: UInt64) -> Bool {
        if var e = entries[s.id] {
            let changed = s.seq != e.state.seq || e.state != s
            if s.seq < e.state.seq && e.state.meshEndpoint == s.meshEndpoint && s.instance == e.state.instance {
                e.lastHeardNanos = nowNanos
                entries[s.id] = e
                return false
            }
            if s.instance != e.state.instance { e.loadSeq = 0 }
            e.state = s
            e.lastHeardNanos = nowNanos
            entries[s.id] = e
            return changed
        }
        entries[s.id] = Entry(state: s, lastHeardNanos: nowNanos, drainedLocally: false)
        return true
    }

    /// Applies a peer's `load` to the engines its last state listed (engines it does not list wait
    /// for the next state); counts as a sign of life. False, and nothing changes, for an unknown
    /// peer, another instance of it, or a load no newer than the state or load held.
    @discardableResult
    public mutating func apply(_ l: NodeLoad, nowNanos: UInt64) -> Bool {
        guard var e = entries[l.node], l.seq > e.state.seq, l.seq > e.loadSeq, l.instance == e.state.instance else { return false }
        for report in l.engines {
            if let i = e.state.engines.firstIndex(where: { $0.id == report.id }) {
                e.state.engines[i].load = report.load
                e.state.engines[i].speeds = report.speeds
            }
        }
        e.loadSeq = l.seq
        e.lastHeardNanos = nowNanos
        entries[l.node] = e
        return true
    }

    /// Any sign of life (a hello, a chunk) keeps a peer alive.
    public mutating func touch(_ id: String, nowNanos: UInt64) {
        entries[id]?.lastHeardNanos = nowNanos
    }

    /// Treats every peer as just heard (after this node itself was stalled).
    public mutating func touchAll(nowNanos: UInt64) {
        for k in entries.keys { entries[k]?.lastHeardNanos = nowNanos }
    }

    /// Drops peers not heard within the expiry; returns their ids.
    public mutating func expire(nowNanos: UInt64) -> [String] {
        let dead = entries.filter { nowNanos > $0.value.lastHeardNanos && nowNanos - $0.value.lastHeardNanos > expiryNanos }.map(\.key)
        for id in dead { entries[id] = nil }
        return dead.sorted()
    }

    public mutating func remove(_ id: String) { entries[id] = nil }

    public mutating func setDrained(_ id: String, _ drained: Bool) { entries[id]?.drainedLocally = drained }

    /// Live peers, sorted by id.
    public var peers: [Entry] { entries.values.sorted { $0.state.id < $1.state.id } }
}
