import Logging
import MeshCore
import MeshEngines
import MeshNet
import Synchronization

/// How the head's llama-server reaches a worker's rpc-server over the mesh: a loopback port on
/// this node whose connections are relayed to the worker's loopback rpc-server over the mesh's
/// encrypted, authenticated channel.
protocol SplitRelayOpener: Sendable {
    /// Listens on a loopback port for `split`'s connections to `worker`; `onFailure` hears why a
    /// relayed connection broke (the worker went silent, its rpc-server closed).
    /// `secure`: the worker's secure relay (a direct TCP connection, encrypted and authenticated
    /// with the mesh's keys); nil: over mesh tunnels.
    func open(worker: String, split: String, secure: (host: String, port: Int)?,
              onFailure: @escaping @Sendable (String) -> Void) async throws -> SplitRelayHandle
}

/// One open relay listener.
struct SplitRelayHandle: Sendable {
    var port: Int
    /// `secure` (the worker's secure relay) or `tunnel` (mesh tunnels).
    var kind: String
    var close: @Sendable () async -> Void
}

/// The head side of splits (issue 13): plans a split for a managed llama.cpp engine whose model no
/// node can hold, takes a lease on each worker over the mesh, opens the relays (or uses the
/// workers' direct ports), renews the leases while the split lives and watches the workers: one
/// that stops answering, or loses its lease, ends the split within `silenceLimit` (its llama-server
/// is stopped; streams in flight end with an error; the next request plans again, without it).
public final class SplitHead: SplitLaunching, Sendable {
    struct Active {
        var launch: SplitLaunch
        var engineID: String
        var startedNanos: UInt64
        var phase: String
        var endpoints: [String]
        var relays: [SplitRelayHandle] = []
        /// How each worker is reached: `secure`, `tunnel` or `direct`.
        var paths: [String] = []
        var watch: Task<Void, Never>?
        /// A worker that failed the split (its lease lost, silent, its relay broke).
        var blamed: [String: String] = [:]
    }

    struct State {
        var active: [String: Active] = [:]
        var backoff = SplitBackoff()
        var serial = 0
        var started = 0
        var failed = 0
        var lastFailure: String?
        var hops = HopTable()
    }

    let nodeName: String
    let settings: SplitSettings
    let clock: any WallClock
    let mesh: MeshService
    let offerBytes: @Sendable () -> Int64
    let relays: (any SplitRelayOpener)?
    let abort: @Sendable (_ engineID: String, _ reason: String) async -> Void
    /// Polls the engines again (a split that ended is servable again at once: the next request plans anew).
    let repoll: @Sendable () async -> Void
    let logger: Logger
    let state = Mutex(State())
    /// How often leases are renewed (also the workers' liveness check), and how long a worker may
    /// stay silent before the split is ended.
    let renewInterval: Duration
    let silenceLimit: Duration

    init(nodeName: String, settings: SplitSettings, clock: any WallClock, mesh: MeshService,
         offerBytes: @escaping @Sendable () -> Int64, relays: (any SplitRelayOpener)?,
         abort: @escaping @Sendable (_ engineID: String, _ reason: String) async -> Void,
         repoll: @escaping @Sendable () async -> Void = {}, logger: Logger,
         renewInterval: Duration = .milliseconds(500), silenceLimit: Duration = .milliseconds(1500)) {
        self.nodeName = nodeName
        self.settings = settings
        self.clock = clock
        self.mesh = mesh
        self.offerBytes = offerBytes
        self.relays = relays
        self.abort = abort
        self.repoll = repoll
        self.logger = logger
        self.renewInterval = renewInterval
        self.silenceLimit = silenceLimit
    }

    // MARK: planning

    public func splitReason(engineID: String, model: SplitModel) -> String? {
        guard settings.enabled else { return nil }
        return SplitView.splitReason(model: model, offerBytes: offerBytes())
    }

    /// What the planner decides for `model` headed here, from the mesh as this node sees it now.
    public func plan(_ model: SplitModel, excluding: Set<String> = []) -> SplitDecision {
        let now = clock.monotonicNanos()
        let backingOff = state.withLock { $0.backoff.active(now: now) }.union(excluding)
        let hops = state.withLock { $0.hops }
        let peers = mesh.peersForRouting().map { (state: $0.state, hopSeconds: hops[$0.state.id]) }
        var local = mesh.localState()
        // This node's memory is its own to head with, whatever it lends (it lends none while heading).
        local.llama?.leasedTo = nil
        let nodes = SplitView.nodes(local: local, localHasFile: true, peers: peers, backingOff: backingOff)
        return SplitPlanner.plan(model: model, nodes: nodes, settings: settings)
    }

    public func prepareSplit(engineID: String, model: SplitModel) async throws -> SplitLaunch {
        await probeHops()
        var excluded: Set<String> = []
        var refusals: [String] = []
        // A worker that refuses its lease is left out and the split planned once more without it.
        for _ in 0..<2 {
            let plan: SplitPlan
            switch self.plan(model, excluding: excluded) {
            case .refused(let reason):
                throw SplitUnavailable(([reason] + refusals).joined(separator: "; "))
            case .single(let node, let reason):
                guard node == nodeName else { throw SplitUnavailable(reason) }
                // Room was freed since the engine started: it runs whole here.
                return SplitLaunch(id: "\(nodeName)-\(model.name)-whole", plan: SplitPlan(
                    model: model.name, head: nodeName, build: "", parts: [SplitPart(node: nodeName, bytes: SplitPlanner.neededBytes(model), isHead: true)],
                    neededBytes: SplitPlanner.neededBytes(model), reason: reason), arguments: [])
            case .split(let p):
                plan = p
            }
            let id = state.withLock { s -> String in
                s.serial += 1
                return "\(nodeName)-\(model.name)-\(s.serial)"
            }
            let (granted, failures) = await leaseAll(plan: plan, id: id)
            if failures.isEmpty {
                do {
                    return try await launch(plan: plan, id: id, engineID: engineID, grants: granted, layers: model.layers)
                } catch {
                    await releaseAll(id: id, workers: Array(granted.keys))
                    throw error
                }
            }
            await releaseAll(id: id, workers: Array(granted.keys))
            for (node, why) in failures {
                excluded.insert(node)
                refusals.append("\(node) refused its lease: \(why)")
                logger.warning("split lease refused", metadata: ["split": "\(id)", "worker": "\(node)", "why": "\(why)"])
            }
        }
        throw SplitUnavailable("no split of '\(model.name)' could be leased: \(refusals.joined(separator: "; "))")
    }

    // MARK: leases

    struct Grant: Sendable {
        var port: Int
        var host: String?
        /// The worker's secure relay port (relayed transport), nil from a worker without one.
        var relayPort: Int?
    }

    /// Asks every worker of `plan` for its lease at once.
    func leaseAll(plan: SplitPlan, id: String) async -> (granted: [String: Grant], failures: [String: String]) {
        await withTaskGroup(of: (String, Result<Grant, SplitUnavailable>).self) { group in
            for part in plan.workers {
                let req = LeaseRequest(split: id, head: nodeName, model: plan.model, bytes: part.bytes, build: plan.build,
                                       ttlSeconds: settings.leaseSeconds, transport: settings.transport)
                group.addTask { [self] in (part.node, await lease(req, worker: part.node)) }
            }
            var granted: [String: Grant] = [:]
            var failures: [String: String] = [:]
            for await (node, r) in group {
                switch r {
                case .success(let g): granted[node] = g
                case .failure(let e): failures[node] = e.description
                }
            }
            return (granted, failures)
        }
    }

    func lease(_ r: LeaseRequest, worker: String) async -> Result<Grant, SplitUnavailable> {
        guard let body = try? JSONValueCoding.encode(r) else { return .failure(SplitUnavailable("cannot encode the lease request")) }
        // Starting an rpc-server takes a moment; a worker that does not answer in 15 s is not used.
        switch await call(worker, path: "/_mesh/split/lease", body: body, timeout: .seconds(15)) {
        case .failure(let e): return .failure(e)
        case .success(let json):
            guard let port = json["port"]?.intValue else { return .failure(SplitUnavailable("its answer has no port")) }
            return .success(Grant(port: port, host: json["host"]?.stringValue, relayPort: json["relay_port"]?.intValue))
        }
    }

    /// One JSON request to a peer's meshd over the mesh; the answer's JSON, or why not (its error
    /// message for a refusal).
    /// `measureHop`: the round trip is a hop measurement (a call the peer answers at once).
    func call(_ node: String, path: String, body: JSON, timeout: Duration, measureHop: Bool = false) async -> Result<JSON, SplitUnavailable> {
        let mesh = self.mesh
        let outcome: Result<JSON, SplitUnavailable>? = await withTaskGroup(of: Result<JSON, SplitUnavailable>?.self) { group in
            group.addTask { [self] in
                do {
                    let t0 = ContinuousClock.now
                    let response = try await mesh.forward(to: node, path: path, headers: [("Content-Type", "application/json")],
                                                          body: body.serialized())
                    if measureHop {
                        let rtt = ContinuousClock.now - t0
                        state.withLock { $0.hops.record(node, rtt: Double(rtt.components.seconds) + Double(rtt.components.attoseconds) / 1e18) }
                    }
                    var bytes: [UInt8] = []
                    for try await chunk in response.body { bytes += chunk }
                    let json = (try? JSONParser.parse(bytes)) ?? .null
                    guard response.status == 200 else {
                        return .failure(SplitUnavailable(json["error"]?.stringValue ?? "status \(response.status)"))
                    }
                    return .success(json)
                } catch {
                    return .failure(SplitUnavailable("\(error)"))
                }
            }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return nil
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first
        }
        return outcome ?? .failure(SplitUnavailable("no answer within \(timeout)"))
    }

    /// Measures the hop to every peer that could lend memory and has no measurement yet (a cheap
    /// call its meshd answers at once); one that does not answer within 1 s counts as a 1 s hop.
    func probeHops() async {
        let known = state.withLock { $0.hops }
        let candidates = mesh.peersForRouting().map(\.state).filter { s in
            s.llama?.rpcServer == true && (s.llama?.offerBytes ?? 0) > 0 && known[s.id] == nil
        }
        guard !candidates.isEmpty else { return }
        await withTaskGroup(of: Void.self) { group in
            for c in candidates {
                group.addTask { [self] in
                    // A renewal of no split: answered at once (404) by the peer's meshd.
                    let r = await call(c.id, path: "/_mesh/split/renew", body: ["split": "probe"], timeout: .seconds(1), measureHop: true)
                    if case .failure(let e) = r, e.description.hasPrefix("no answer") {
                        state.withLock { $0.hops.record(c.id, rtt: 2.0) }
                    }
                }
            }
        }
    }

    func releaseAll(id: String, workers: [String]) async {
        await withTaskGroup(of: Void.self) { group in
            for w in workers {
                group.addTask { [self] in _ = await call(w, path: "/_mesh/split/release", body: ["split": .string(id)], timeout: .seconds(2)) }
            }
        }
    }

    // MARK: launching and watching

    /// Opens the relays (or takes the direct endpoints), records the split and starts watching it.
    func launch(plan: SplitPlan, id: String, engineID: String, grants: [String: Grant], layers: Int?) async throws -> SplitLaunch {
        var endpoints: [String] = []
        var handles: [SplitRelayHandle] = []
        var paths: [String] = []
        for part in plan.workers {
            guard let g = grants[part.node] else { throw SplitUnavailable("no lease from \(part.node)") }
            switch settings.transport {
            case .direct:
                guard let host = g.host ?? peerHost(part.node) else {
                    throw SplitUnavailable("no address for \(part.node)'s rpc-server")
                }
                endpoints.append("\(host):\(g.port)")
                paths.append("direct")
            case .mesh:
                guard let relays else { throw SplitUnavailable("no mesh relay on this node") }
                do {
                    let node = part.node
                    let secure = g.relayPort.flatMap { p in peerHost(node).map { (host: $0, port: p) } }
                    let h = try await relays.open(worker: node, split: id, secure: secure) { [weak self] why in
                        self?.workerFailed(split: id, worker: node, why: why)
                    }
                    handles.append(h)
                    endpoints.append("127.0.0.1:\(h.port)")
                    paths.append(h.kind)
                } catch {
                    for h in handles { await h.close() }
                    throw SplitUnavailable("cannot relay to \(part.node): \(error)")
                }
            }
        }
        // Without a GPU the head keeps its share as layers on its CPU (llama.cpp offloads to GPUs and RPC devices only).
        let headHasDevice = mesh.localState().vramTotalBytes > 0
        let launch = SplitLaunch(id: id, plan: plan, arguments: SplitView.arguments(plan: plan, endpoints: endpoints, layers: layers,
                                                                                     headHasDevice: headHasDevice))
        let now = clock.monotonicNanos()
        state.withLock { s in
            s.active[id] = Active(launch: launch, engineID: engineID, startedNanos: now, phase: "loading", endpoints: endpoints,
                                  relays: handles, paths: paths)
        }
        let watch = Task { [self] in await watchWorkers(id: id, workers: plan.workers.map(\.node)) }
        state.withLock { $0.active[id]?.watch = watch }
        mesh.broadcastState()
        logger.notice("split planned", metadata: ["split": "\(id)", "plan": "\(plan.reason)", "endpoints": "\(endpoints.joined(separator: ","))"])
        return launch
    }

    /// The host part of a peer's mesh endpoint (where its direct rpc-server listens).
    func peerHost(_ node: String) -> String? {
        guard let ep = mesh.peersForRouting().first(where: { $0.state.id == node })?.state.meshEndpoint,
              let hp = HostPort(parsing: ep) else { return nil }
        return hp.host
    }

    /// Renews every worker's lease every `renewInterval`; a worker that does not answer within
    /// `silenceLimit`, or no longer holds the lease, fails the split.
    func watchWorkers(id: String, workers: [String]) async {
        while !Task.isCancelled {
            await withTaskGroup(of: Void.self) { group in
                for w in workers {
                    group.addTask { [self] in
                        let started = ContinuousClock.now
                        switch await call(w, path: "/_mesh/split/renew", body: ["split": .string(id)], timeout: silenceLimit,
                                          measureHop: true) {
                        case .success: break
                        case .failure(let e):
                            if Task.isCancelled { return }
                            let waited = ContinuousClock.now - started
                            workerFailed(split: id, worker: w, why: waited >= silenceLimit ? "silent for \(waited)" : "lease renewal failed: \(e)")
                        }
                    }
                }
            }
            do { try await Task.sleep(for: renewInterval) } catch { return }
        }
    }

    /// A worker failed a running split: blame it and stop the head's llama-server (it would abort,
    /// or hang on a silent link); the engine then reports the end (``splitEnded(_:failure:)``).
    func workerFailed(split id: String, worker: String, why: String) {
        let engine = state.withLock { s -> String? in
            guard var a = s.active[id], a.blamed[worker] == nil else { return nil }
            a.blamed[worker] = why
            s.active[id] = a
            return a.blamed.count == 1 ? a.engineID : nil
        }
        guard let engine else { return }
        logger.warning("split worker failed", metadata: ["split": "\(id)", "worker": "\(worker)", "why": "\(why)"])
        Task { await abort(engine, "worker \(worker) failed: \(why)") }
    }

    public func splitServing(_ launch: SplitLaunch) async {
        state.withLock { s in
            guard s.active[launch.id] != nil else { return }
            s.active[launch.id]!.phase = "serving"
            s.started += 1
            for p in launch.plan.workers { s.backoff.served(p.node) }
        }
        logger.notice("split serving", metadata: ["split": "\(launch.id)", "model": "\(launch.plan.model)"])
    }

    public func splitEnded(_ launch: SplitLaunch, failure: String?) async {
        let now = clock.monotonicNanos()
        let active = state.withLock { s -> Active? in
            guard let a = s.active.removeValue(forKey: launch.id) else { return nil }
            if failure != nil || !a.blamed.isEmpty {
                s.failed += 1
                let blamed = a.blamed.isEmpty ? Set(launch.plan.workers.map(\.node)) : Set(a.blamed.keys)
                for node in blamed { s.backoff.failed(node, now: now) }
                s.lastFailure = a.blamed.isEmpty ? failure : a.blamed.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }.joined(separator: "; ")
            }
            return a
        }
        guard let active else { return }
        active.watch?.cancel()
        await repoll()
        mesh.broadcastState()
        for r in active.relays { await r.close() }
        await releaseAll(id: launch.id, workers: launch.plan.workers.map(\.node))
        logger.notice("split ended", metadata: ["split": "\(launch.id)", "failure": "\(failure ?? "none")"])
    }

    // MARK: status

    /// Splits this node heads, for the node state.
    public var headedSplits: [String] { state.withLock { Array($0.active.keys).sorted() } }

    /// Serving splits: (id, model, engine id).
    public var runningSplits: [(String, String, String)] {
        state.withLock { s in
            s.active.values.filter { $0.phase == "serving" }.sorted { $0.launch.id < $1.launch.id }
                .map { ($0.launch.id, $0.launch.plan.model, $0.engineID) }
        }
    }

    /// Counters for `/metrics`: splits that served, splits that failed.
    public var counts: (started: Int, failed: Int) { state.withLock { ($0.started, $0.failed) } }

    /// This node's splits as head, for `meshctl splits` (`speeds` gives an engine's decode tokens/s).
    public func statusJSON(decodeSpeed: (String) -> Double?) -> [JSON] {
        let now = clock.monotonicNanos()
        let rows = state.withLock { s in s.active.values.sorted { $0.launch.id < $1.launch.id } }
        return rows.map { a in
            let p = a.launch.plan
            var row: [(String, JSON)] = [
                ("split", .string(a.launch.id)), ("role", "head"), ("head", .string(nodeName)), ("model", .string(p.model)),
                ("build", .string(p.build)), ("state", .string(a.phase)), ("transport", .string(settings.transport.rawValue)),
                ("age_seconds", .number((Double(now - min(now, a.startedNanos)) / 1e8).rounded() / 10)),
                ("parts", .array(p.parts.map { ["node": .string($0.node), "bytes": .int($0.bytes), "head": .bool($0.isHead)] })),
                ("endpoints", .array(a.endpoints.map { .string($0) })),
                ("paths", .array(a.paths.map { .string($0) })),
                ("reason", .string(p.reason)),
            ]
            if let tps = decodeSpeed(a.engineID) { row.append(("tokens_per_second", .number((tps * 10).rounded() / 10))) }
            return .object(row)
        }
    }

    /// Back-off and the last failure, for `meshctl splits`.
    public func backoffJSON() -> JSON {
        let now = clock.monotonicNanos()
        return state.withLock { s in
            var out: [(String, JSON)] = [("started", .integer(s.started)), ("failed", .integer(s.failed)),
                                         ("backing_off", .object(s.backoff.active(now: now).sorted().map {
                                             ($0, JSON.number((s.backoff.secondsLeft($0, now: now) * 10).rounded() / 10))
                                         }))]
            if let f = s.lastFailure { out.append(("last_failure", .string(f))) }
            out.append(("hop_ms", .object(s.hops.seconds.sorted { $0.key < $1.key }.map { ($0.key, JSON.number(($0.value * 1e5).rounded() / 100)) })))
            return .object(out)
        }
    }
}
