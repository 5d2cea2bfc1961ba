/// Memory as one pool (issue 13): when a model no single node can hold should be split across
/// nodes with llama.cpp RPC, and how. Pure: the caller passes what the mesh state says.
///
/// A split has a head (a node with the GGUF file; it runs `llama-server --rpc ... --tensor-split`)
/// and workers (nodes running `ggml-rpc-server` under a lease). llama.cpp puts the RPC devices
/// first and the head's own device last, so the head keeps the output layer.

/// `split:` on a `llama.cpp` engine entry.
public enum SplitPolicy: String, Sendable, Hashable, Codable, CaseIterable {
    /// Split when no node can hold the model (the default).
    case auto
    /// Never split this model: a request that no single node can hold gets an error instead.
    case never
}

/// `split.transport`: how the head's llama-server reaches the workers' rpc-servers.
public enum SplitTransport: String, Sendable, Hashable, Codable, CaseIterable {
    /// Relayed by meshd over the mesh's encrypted, authenticated channel; no RPC port on the LAN.
    case mesh
    /// Each worker's rpc-server listens on its LAN address for the life of the lease (trusted LANs only).
    case direct
}

/// `split:` section.
public struct SplitSettings: Sendable, Hashable, Codable {
    /// Whether the mesh splits models that no node can hold.
    public var enabled = true
    /// Most workers in one split (the head not counted).
    public var maxWorkers = 3
    public var transport = SplitTransport.mesh
    /// How long a worker keeps its rpc-server without the head renewing the lease.
    public var leaseSeconds = 30
    public init() {}
}

/// A model as the planner sees it.
public struct SplitModel: Sendable, Hashable {
    public var name: String
    /// Bytes of the weights (the GGUF file's tensors).
    public var weightsBytes: Int64
    /// Bytes of the KV cache for the context the engine will be started with.
    public var kvBytes: Int64
    public var policy: SplitPolicy
    /// Its repeating layers (`<arch>.block_count`), when known: how a head without a GPU of its own
    /// keeps its share (see ``SplitView/arguments(plan:endpoints:layers:headHasDevice:)``).
    public var layers: Int?

    public init(name: String, weightsBytes: Int64, kvBytes: Int64, policy: SplitPolicy = .auto, layers: Int? = nil) {
        self.layers = layers
        self.name = name
        self.weightsBytes = weightsBytes
        self.kvBytes = kvBytes
        self.policy = policy
    }
}

/// A node as the planner sees it (from its advertised state and this node's own measurements).
public struct SplitNode: Sendable, Hashable {
    public var id: String
    public var isLocal: Bool
    /// Memory it offers for models now: free VRAM (RAM for CPU engines), capped by `hardware.offer_bytes`.
    public var offerBytes: Int64
    /// The llama.cpp build it runs (`llama-server --version`), nil when it has none.
    public var llamaBuild: String?
    /// It has the model's GGUF file (a managed `llama.cpp` engine entry or its models directory).
    public var hasModelFile: Bool
    /// Its memory is already leased to another split.
    public var leased: Bool
    /// Measured hop time from the head-to-be, in seconds (nil: not measured).
    public var hopSeconds: Double?
    /// A recent split failed because of this node: avoided until its back-off ends.
    public var backingOff: Bool

    public init(id: String, isLocal: Bool = false, offerBytes: Int64, llamaBuild: String?, hasModelFile: Bool = false,
                leased: Bool = false, hopSeconds: Double? = nil, backingOff: Bool = false) {
        self.id = id
        self.isLocal = isLocal
        self.offerBytes = offerBytes
        self.llamaBuild = llamaBuild
        self.hasModelFile = hasModelFile
        self.leased = leased
        self.hopSeconds = hopSeconds
        self.backingOff = backingOff
    }
}

/// One node's share of a split.
public struct SplitPart: Sendable, Hashable {
    public var node: String
    public var bytes: Int64
    public var isHead: Bool

    public init(node: String, bytes: Int64, isHead: Bool) {
        self.node = node
        self.bytes = bytes
        self.isHead = isHead
    }
}

/// A planned split.
public struct SplitPlan: Sendable, Hashable {
    public var model: String
    public var head: String
    public var build: String
    /// Workers first (the order of `--rpc`), the head last: the order of `--tensor-split`.
    public var parts: [SplitPart]
    public var neededBytes: Int64
    /// Why these nodes, for people (`meshctl route`).
    public var reason: String

    public var workers: [SplitPart] { parts.filter { !$0.isHead } }

    public init(model: String, head: String, build: String, parts: [SplitPart], neededBytes: Int64, reason: String) {
        self.model = model
        self.head = head
        self.build = build
        self.parts = parts
        self.neededBytes = neededBytes
        self.reason = reason
    }

    /// `--tensor-split` for the head's llama-server: each part's bytes, in parts order, as
    /// proportions (llama.cpp normalises them).
    public var tensorSplit: [Double] {
        let total = Double(parts.reduce(Int64(0)) { $0 + $1.bytes })
        guard total > 0 else { return parts.map { _ in 0 } }
        return parts.map { (Double($0.bytes) / total * 1000).rounded() / 1000 }
    }

    /// The `--tensor-split` argument text, e.g. `0.4,0.35,0.25`.
    public var tensorSplitArgument: String {
        tensorSplit.map { v in
            var s = String(v)
            if s.hasSuffix(".0") { s.removeLast(2) }
            return s
        }.joined(separator: ",")
    }
}

/// What the planner decided, with the reason in words.
public enum SplitDecision: Sendable, Hashable {
    /// The model fits this node: serve it there, never split.
    case single(node: String, reason: String)
    case split(SplitPlan)
    /// It does not fit one node and cannot be split (the reason says why).
    case refused(reason: String)

    public var reason: String {
        switch self {
        case .single(_, let r), .refused(let r): return r
        case .split(let p): return p.reason
        }
    }
}

public enum SplitPlanner {
    /// Memory kept free beyond weights + KV (compute buffers, fragmentation).
    public static let marginFraction = 0.10

    /// Weights + KV + the margin.
    public static func neededBytes(_ m: SplitModel) -> Int64 {
        let base = Double(max(0, m.weightsBytes)) + Double(max(0, m.kvBytes))
        return Int64((base * (1 + marginFraction)).rounded(.up))
    }

    public static func plan(model: SplitModel, nodes: [SplitNode], settings: SplitSettings) -> SplitDecision {
        let need = neededBytes(model)
        let needText = "\(mib(need)) needed (weights \(mib(model.weightsBytes)) + KV \(mib(model.kvBytes)) + \(Int(marginFraction * 100))%)"
        let holders = nodes.filter(\.hasModelFile)
        guard !holders.isEmpty else {
            return .refused(reason: "no node has the model file of '\(model.name)'")
        }
        // A model that fits one node is never split: the holder with the most room (this node on a tie).
        if let fit = ordered(holders).first(where: { $0.offerBytes >= need }) {
            return .single(node: fit.id, reason: "'\(model.name)' fits \(fit.id) (\(mib(fit.offerBytes)) offered, \(needText)): not split")
        }
        let largest = holders.map(\.offerBytes).max() ?? 0
        let noFit = "no node can hold '\(model.name)' (\(needText); the most any node with the file offers is \(mib(largest)))"
        guard settings.enabled else { return .refused(reason: "\(noFit), and splitting is off (split.enabled: false)") }
        guard model.policy == .auto else { return .refused(reason: "\(noFit), and its engine entry says split: never") }

        var notes: [String] = []
        for head in ordered(holders.filter { $0.llamaBuild != nil && !$0.leased && !$0.backingOff }) {
            let build = head.llamaBuild!
            var eligible: [SplitNode] = []
            for n in nodes where n.id != head.id {
                if n.offerBytes <= 0 { continue }
                if n.leased { notes.append("\(n.id) is leased to another split"); continue }
                if n.backingOff { notes.append("\(n.id) is backing off after a failed split"); continue }
                guard let b = n.llamaBuild else { notes.append("\(n.id) has no llama.cpp"); continue }
                if b != build { notes.append("\(n.id) runs llama.cpp \(b), not \(build)"); continue }
                eligible.append(n)
            }
            let maxWorkers = max(1, settings.maxWorkers)
            func covers(_ set: [SplitNode]) -> Bool {
                let best = set.map(\.offerBytes).sorted(by: >).prefix(maxWorkers)
                return head.offerBytes + best.reduce(0, +) >= need
            }
            guard covers(eligible) else { continue }
            // Worst link first out, while the rest can still hold the model.
            var pool = eligible.sorted { (hop($0), -$0.offerBytes, $0.id) < (hop($1), -$1.offerBytes, $1.id) }
            var dropped: [String] = []
            while let worst = pool.last, covers(Array(pool.dropLast())) {
                pool.removeLast()
                dropped.append(worst.id)
            }
            // Fewest nodes: the largest offers first (the better link on a tie).
            var chosen: [SplitNode] = []
            var total = head.offerBytes
            for n in pool.sorted(by: { ($0.offerBytes, -hop($0)) > ($1.offerBytes, -hop($1)) }) where total < need {
                chosen.append(n)
                total += n.offerBytes
            }
            let parts = shares(need: need, workers: chosen, head: head)
            var reason = "'\(model.name)' split over \(parts.count) nodes (\(needText), llama.cpp \(build)): "
                + parts.map { "\($0.node)\($0.isHead ? " (head)" : "") \(mib($0.bytes))" }.joined(separator: ", ")
            if !dropped.isEmpty { reason += "; left out for their links: \(dropped.joined(separator: ", "))" }
            if !notes.isEmpty { reason += "; skipped: \(notes.joined(separator: "; "))" }
            return .split(SplitPlan(model: model.name, head: head.id, build: build, parts: parts, neededBytes: need, reason: reason))
        }
        if holders.allSatisfy({ $0.llamaBuild == nil }) {
            return .refused(reason: "\(noFit), and no node with the file runs llama.cpp to head a split")
        }
        let offered = nodes.filter { !$0.leased && !$0.backingOff }.map(\.offerBytes).reduce(0, +)
        var reason = "\(noFit), and no split of at most \(settings.maxWorkers) workers on one llama.cpp build can hold it "
            + "(\(mib(offered)) offered in all)"
        if !notes.isEmpty { reason += "; skipped: \(Array(Set(notes)).sorted().joined(separator: "; "))" }
        return .refused(reason: reason)
    }

    /// Bytes per node, in proportion to what each offers (never above it); workers first, head last.
    static func shares(need: Int64, workers: [SplitNode], head: SplitNode) -> [SplitPart] {
        let all = workers + [head]
        let offered = Double(all.reduce(Int64(0)) { $0 + $1.offerBytes })
        var parts = all.enumerated().map { i, n in
            SplitPart(node: n.id, bytes: min(n.offerBytes, Int64((Double(need) * Double(n.offerBytes) / offered).rounded(.down))),
                      isHead: i == all.count - 1)
        }
        // Rounding: the remainder goes to the head (it has at least its share of room).
        let assigned = parts.reduce(Int64(0)) { $0 + $1.bytes }
        parts[parts.count - 1].bytes += max(0, need - assigned)
        return parts
    }

    /// Holders by room, this node first on a tie, then by name.
    static func ordered(_ nodes: [SplitNode]) -> [SplitNode] {
        nodes.sorted { ($0.offerBytes, $0.isLocal ? 1 : 0, $1.id) > ($1.offerBytes, $1.isLocal ? 1 : 0, $0.id) }
    }

    /// Unmeasured links count as a LAN hop (1 ms).
    static func hop(_ n: SplitNode) -> Double { n.hopSeconds ?? 0.001 }

    static func mib(_ bytes: Int64) -> String {
        let m = Double(bytes) / 1_048_576
        return m >= 100 ? "\(Int(m.rounded())) MiB" : "\((m * 10).rounded() / 10) MiB"
    }
}
