/// The planner's picture of the mesh, built from node states (pure), and the back-off that keeps a
/// node that just failed a split out of the next plans.
public enum SplitView {
    /// The planner's nodes for a split headed by this node: `local` (with the model file when
    /// `localHasFile`) and the live peers with their measured hop times. A draining peer offers
    /// nothing; a peer already lending memory to a split, or heading one, counts as leased.
    public static func nodes(local: NodeState, localHasFile: Bool, peers: [(state: NodeState, hopSeconds: Double?)],
                             backingOff: Set<String>) -> [SplitNode] {
        func node(_ s: NodeState, isLocal: Bool, hop: Double?) -> SplitNode {
            let l = s.llama
            let leased = l?.leasedTo != nil || !(isLocal || (l?.heads ?? []).isEmpty)
            return SplitNode(id: s.id, isLocal: isLocal, offerBytes: s.draining ? 0 : max(0, l?.offerBytes ?? 0),
                             llamaBuild: l?.build, hasModelFile: isLocal && localHasFile, leased: leased,
                             hopSeconds: hop, backingOff: backingOff.contains(s.id))
        }
        return [node(local, isLocal: true, hop: 0)]
            + peers.filter { $0.state.id != local.id }.map { node($0.state, isLocal: false, hop: $0.hopSeconds) }
    }

    /// Why a model must be split rather than run whole on a node offering `offerBytes`, or nil
    /// when it fits (or its policy says never split).
    public static func splitReason(model: SplitModel, offerBytes: Int64) -> String? {
        guard model.policy == .auto else { return nil }
        let need = SplitPlanner.neededBytes(model)
        guard offerBytes < need else { return nil }
        return "'\(model.name)' needs \(SplitPlanner.mib(need)) (weights \(SplitPlanner.mib(model.weightsBytes)) + KV "
            + "\(SplitPlanner.mib(model.kvBytes)) + \(Int(SplitPlanner.marginFraction * 100))%), this node offers \(SplitPlanner.mib(max(0, offerBytes)))"
    }

    /// The `llama-server` arguments of a planned split, with no host-RAM prompt cache (saving it
    /// aborts under RPC upstream). llama.cpp lists the RPC devices first, then the head's own GPUs.
    /// - A head with a GPU (`headHasDevice`): every layer offloaded (`-ngl 999`) and the planned
    ///   bytes of every node, workers first, head last, as `--tensor-split`.
    /// - A head without one: the CPU is no offload device, so `--tensor-split` covers the workers
    ///   only, and the head's share is the layers *not* offloaded: `-ngl K` offloads the last K of
    ///   the model's `layers` (K in proportion to the workers' bytes), and the head keeps the first
    ///   layers and the output layer. Without a layer count every layer goes to the workers.
    public static func arguments(plan: SplitPlan, endpoints: [String], layers: Int? = nil, headHasDevice: Bool = true) -> [String] {
        let rpc = ["--rpc", endpoints.joined(separator: ",")]
        let noPromptCache = ["--cache-ram", "0"]
        if headHasDevice {
            return rpc + ["-ngl", "999", "--tensor-split", plan.tensorSplitArgument] + noPromptCache
        }
        let workers = plan.workers
        let workerBytes = Double(workers.reduce(Int64(0)) { $0 + $1.bytes })
        let total = Double(plan.parts.reduce(Int64(0)) { $0 + $1.bytes })
        let workerPlan = SplitPlan(model: plan.model, head: plan.head, build: plan.build, parts: workers, neededBytes: plan.neededBytes,
                                   reason: plan.reason)
        var offloaded = "999"
        if let layers, layers > 0, total > 0 {
            offloaded = String(min(layers, max(1, Int((Double(layers) * workerBytes / total).rounded()))))
        }
        return rpc + ["-ngl", offloaded, "--tensor-split", workerPlan.tensorSplitArgument] + noPromptCache
    }
}

/// Nodes that took part in a failed split are avoided for a while: 15 s after the first failure,
/// doubling with each further one up to 5 minutes; a split that served clears a node's record.
public struct SplitBackoff: Sendable {
    public static let firstNanos: UInt64 = 15_000_000_000
    public static let maxNanos: UInt64 = 300_000_000_000
    struct Record: Sendable { var failures: Int; var untilNanos: UInt64 }
    var records: [String: Record] = [:]

    public init() {}

    public mutating func failed(_ node: String, now: UInt64) {
        let n = (records[node]?.failures ?? 0) + 1
        let wait = min(Self.maxNanos, Self.firstNanos << UInt64(min(n - 1, 10)))
        records[node] = Record(failures: n, untilNanos: now + wait)
    }

    public mutating func served(_ node: String) { records[node] = nil }

    /// Nodes backing off now.
    public func active(now: UInt64) -> Set<String> { Set(records.filter { $0.value.untilNanos > now }.map(\.key)) }

    /// Seconds left for `node` (0: not backing off).
    public func secondsLeft(_ node: String, now: UInt64) -> Double {
        guard let r = records[node], r.untilNanos > now else { return 0 }
        return Double(r.untilNanos - now) / 1e9
    }
}

/// Measured hop times to other nodes (round trips of the head's mesh calls: probes, leases,
/// renewals), smoothed, for placement: the planner leaves the worst links out first.
public struct HopTable: Sendable {
    /// Weight of a new sample.
    public static let alpha = 0.3
    public private(set) var seconds: [String: Double] = [:]

    public init() {}

    /// A round trip of `rtt` seconds to `node` (a hop is half of it).
    public mutating func record(_ node: String, rtt: Double) {
        guard rtt.isFinite, rtt >= 0 else { return }
        let hop = rtt / 2
        seconds[node] = seconds[node].map { $0 + Self.alpha * (hop - $0) } ?? hop
    }

    public subscript(node: String) -> Double? { seconds[node] }
}
