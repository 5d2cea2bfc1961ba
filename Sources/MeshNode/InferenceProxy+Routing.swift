import MeshCore
import Synchronization

// Routing: the mesh view, the policy's context (caches, turns), and the mesh queue's pump.
extension InferenceProxy {
    /// `X-Meshd-Priority: high|normal|low`: the request's place in the mesh queue.
    static let priorityHeader = "X-Meshd-Priority"

    /// Places free now, across the mesh, on healthy engines serving `model` (the mesh queue lets that
    /// many go). Counted from the requests meshd nodes have sent (they change the moment one ends),
    /// not from what the engines last reported running (up to a poll interval old).
    func freePlaces(model: String) -> Int {
        var free = 0
        for n in routingView(localOnly: false) where !n.draining {
            for e in n.engines where e.healthy && e.model(named: model) != nil {
                // No limit and no slots: the engine batches whatever it is sent (no place to wait for).
                guard let places = e.load.limit ?? e.load.slots else { return Int.max / 2 }
                free += max(0, max(1, places) - e.load.inFlight)
            }
        }
        return free
    }

    /// Lets waiting requests go while engines serving their models have free places.
    public func pumpQueue() {
        guard let queue, queue.count > 0 else { return }
        var budget: [String: Int] = [:]
        while let model = queue.pump(canStart: { model in
            let left = budget[model] ?? freePlaces(model: model)
            budget[model] = left
            return left > 0
        }) {
            // The one let go takes a place (it is admitted a moment later).
            budget[model, default: 1] -= 1
        }
    }

    /// This node and its live peers as routing sees them.
    func routingView(localOnly: Bool, excludedEngines: Set<String> = [], excludedNodes: Set<String> = []) -> [RoutingNode] {
        let local = engines.snapshot()
        cache?.sync(local)
        var nodes = [RoutingNode(id: nodeName, isLocal: true, draining: !localOnly && localDraining(),
                                 engines: local.filter { !excludedEngines.contains($0.id) })]
        if !localOnly, let mesh {
            for p in mesh.peersForRouting() where !excludedNodes.contains(p.state.id) {
                nodes.append(RoutingNode(id: p.state.id, isLocal: false, hopSeconds: 0.001,
                                         draining: p.state.draining || p.drainedLocally, engines: p.state.engines))
            }
        }
        return nodes
    }

    /// Explains where a request for `model` would go, without sending one (`meshctl route`).
    public func explain(model: String) -> Result<RouteDecision, APIError> {
        Router.choose(model: model, operation: .chat, promptTokens: 1, maxTokens: nil, nodes: routingView(localOnly: false),
                      context: routingContext(nil))
    }

    /// Every candidate's terms for a request (`meshctl route MODEL --prompt-file`), without sending it.
    public func rank(_ req: InferenceRequest) -> Result<Router.Ranking, APIError> {
        let prompt = cache == nil ? nil : PromptRendering.chain(req, model: req.model)
        return Router.rank(model: req.model, operation: req.operation, promptTokens: req.estimatedPromptTokens,
                           maxTokens: req.options.maxTokens, nodes: routingView(localOnly: false), context: routingContext(prompt, advance: false))
    }

    /// The policy and, with a prompt, where it is cached (this node's shadows, the peers' views).
    func routingContext(_ prompt: PromptChain?, advance: Bool = true) -> RoutingContext {
        var context = RoutingContext(policy: routing.policy)
        context.decodeWeight = routing.decodeWeight
        if routing.policy == .roundRobin { context.rotation = advance ? turns.next() : turns.current }
        if let prompt, let cache, routing.policy == .cacheAware {
            context.cached = { node, engine in
                node.isLocal ? cache.local(engine.id, prompt)
                    : cache.peer(node.id, engine.id, prompt, busy: engine.load.busy, slots: engine.load.limit ?? engine.load.slots ?? 1)
            }
            context.held = { node, engine in cache.held(node: node.isLocal ? nil : node.id, engine: engine.id) }
        }
        return context
    }
}

/// A request's ticket in a local engine's cache shadow, ended exactly once (by whichever path
/// finishes the request).
final class ShadowPlace: Sendable {
    private let ticket = Mutex<(CacheShadows.Ticket, CacheShadows)?>(nil)

    func start(_ t: CacheShadows.Ticket, in cache: CacheShadows) {
        ticket.withLock { $0 = (t, cache) }
    }

    /// Whether a ticket is held (the request's answer is then worth keeping for ``end(ok:usage:answer:)``).
    var isOpen: Bool { ticket.withLock { $0 != nil } }

    /// `answer`: the UTF-8 text the engine generated (or its start), held after the prompt when `ok`.
    func end(ok: Bool, usage: TokenUsage?, answer: [UInt8] = []) {
        guard let (t, cache) = ticket.withLock({ v -> (CacheShadows.Ticket, CacheShadows)? in defer { v = nil }; return v }) else { return }
        cache.finish(t, ok: ok, usage: usage, answer: answer)
    }
}

/// The turn counter of `round-robin` routing.
final class RoundRobinTurns: Sendable {
    private let value = Mutex(0)
    func next() -> Int { value.withLock { v in defer { v &+= 1 }; return v } }
    var current: Int { value.withLock { $0 } }
}
