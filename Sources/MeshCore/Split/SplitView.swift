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

    /// The `llama-server` arguments of a planned split: the RPC endpoints in the plan's worker
    /// order, every layer offloaded (RPC devices are offload targets), the planned bytes per node
    /// as `--tensor-split`, and no host-RAM prompt cache (saving it aborts under RPC upstream).
    public static func arguments(plan: SplitPlan, endpoints: [String]) -> [String] {
        ["--rpc", endpoints.joined(separator: ","), "-ngl", "999", "--tensor-split", plan.tensorSplitArgument, "--cache-ram", "0"]
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
