/// How a node picks the engine (anywhere in the mesh) that serves a request.
public enum RoutingPolicy: String, Sendable, Hashable, Codable, CaseIterable {
    /// Expected completion time, counting the prompt tokens an engine already holds in its KV
    /// cache (meshd's shadow of each engine's cache), with bounded load against hot spots.
    case cacheAware = "cache-aware"
    /// Expected completion time from load and measured speeds, blind to caches (the router before issue 14).
    case expectedCompletion = "expected-completion"
    /// The candidate with the fewest requests ahead of a new one (busy ÷ slots).
    case leastBusy = "least-busy"
    /// Candidates in turn.
    case roundRobin = "round-robin"
}

/// `routing:` section.
public struct RoutingSettings: Sendable, Hashable, Codable {
    /// How the engine is chosen; every policy is in the build so benchmarks compare them in one run.
    public var policy = RoutingPolicy.cacheAware
    /// A request that no candidate could start within this many milliseconds waits in the deciding
    /// node's queue and is bound to the first engine that frees up, anywhere in the mesh.
    public var queueAfterMs = 250
    /// Most requests waiting in one node's queue; beyond: 429 with `Retry-After`.
    public var maxQueue = 256
    /// Whether this node shares its engines' cache shadows with its peers (cache deltas) and reads
    /// theirs. Off: peers route to it blind to its caches, and it to theirs (its own still count).
    public var cacheDeltas = true
    /// `cache-aware`: how much an engine's decode time counts when choosing (1: each request's own
    /// expected completion; lower: a free slower engine is taken sooner instead of queueing for a faster one).
    public var decodeWeight = 1.0
    public init() {}
}
