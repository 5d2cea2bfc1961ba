import MeshCore

/// What a managed `llama.cpp` engine asks of meshd's split head (issue 13) when its model may be
/// split across nodes. The engine runs the process; the head decides whether to split, takes the
/// workers' leases and sets up the RPC relays, and learns when the split ends.
public protocol SplitLaunching: Sendable {
    /// Why the model must be split rather than run whole here, or nil when it fits this node (it is
    /// then started at once, as always). Asked when the engine starts.
    func splitReason(engineID: String, model: SplitModel) -> String?
    /// Plans a split and prepares it for a launch (leases granted, relays listening); throws with
    /// the reason, for people, when there is no split to be had now.
    func prepareSplit(engineID: String, model: SplitModel) async throws -> SplitLaunch
    /// The split's llama-server answers `/health`: it serves.
    func splitServing(_ launch: SplitLaunch) async
    /// The split's llama-server is gone (or never became healthy): release its leases and relays.
    /// `failure` says why when it ended on its own (a worker died, the link went silent).
    func splitEnded(_ launch: SplitLaunch, failure: String?) async
}

/// One launch of a split: the extra `llama-server` arguments and who takes part.
public struct SplitLaunch: Sendable, Hashable {
    /// The split's id (leases carry it).
    public var id: String
    public var plan: SplitPlan
    /// `--rpc ... --tensor-split ... --cache-ram 0`.
    public var arguments: [String]

    public init(id: String, plan: SplitPlan, arguments: [String]) {
        self.id = id
        self.plan = plan
        self.arguments = arguments
    }
}

public struct SplitUnavailable: Error, Sendable, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}
