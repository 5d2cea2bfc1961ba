import Foundation
import MeshCore
import MeshEngines
import MeshHardware
import MeshHTTPServer
import MeshNet
import MeshZMQ
import NIOCore
import NIOHTTP1

/// The admin API on the node's unix socket (mode 0600): what `meshctl` reads.
/// `GET /v1/status`, `/v1/engines`, `/v1/models`, `/v1/route?model=NAME`.
struct AdminResponder: HTTPResponder {
    let nodeName: String
    let engines: any EngineDirectory
    let clock: any WallClock
    let proxy: InferenceProxy
    let mesh: MeshService?
    let draining: DrainFlag
    let httpListen: String
    let meshConfig: MeshConfig
    let hardware: HardwareMonitor
    let startedNanos: UInt64
    let discovery: DiscoveryAgent?
    let gateway: Gateway?
    let mdnsEnabled: Bool

    /// This node's llama.cpp build, once read.
    let llama: @Sendable () -> LlamaAdvert?
    /// Leases granted to heads of splits.
    let splitWorker: SplitWorker?
    /// Splits this node heads.
    let splitHead: SplitHead?
    /// This node's managed llama.cpp engines (their split state).
    let managedLlama: [ManagedLlamaCppEngine]
    /// Model copy and removal across the mesh (`meshctl models copy|rm`).
    var modelOps: ModelOps?
    /// The node's open alerts (`meshctl status`).
    var alerts: AlertCenter?
    /// The usage report (`meshctl usage`).
    var usage: UsageReporter?

    init(nodeName: String, engines: any EngineDirectory, clock: any WallClock, proxy: InferenceProxy, mesh: MeshService?,
         draining: DrainFlag, httpListen: String, meshConfig: MeshConfig, hardware: HardwareMonitor,
         discovery: DiscoveryAgent? = nil, mdnsEnabled: Bool = false, gateway: Gateway? = nil,
         llama: @escaping @Sendable () -> LlamaAdvert? = { nil }, splitWorker: SplitWorker? = nil, splitHead: SplitHead? = nil,
         managedLlama: [ManagedLlamaCppEngine] = []) {
        self.splitHead = splitHead
        self.managedLlama = managedLlama
        self.llama = llama
        self.splitWorker = splitWorker
        self.gateway = gateway
        self.meshConfig = meshConfig
        self.hardware = hardware
        self.discovery = discovery
        self.mdnsEnabled = mdnsEnabled
        self.nodeName = nodeName
        self.engines = engines
        self.clock = clock
        self.proxy = proxy
        self.mesh = mesh
        self.draining = draining
        self.httpListen = httpListen
        self.startedNanos = clock.nowNanos()
    }

    func respond(to request: HTTPServerRequest) async -> HTTPServerResponse {
        if request.path.hasPrefix("/v1/trust") {
            return await trust(request)
        }
        if request.method == .POST {
            if request.path == "/v1/route" { return routePrompt(request) }
            if request.path == "/v1/models/copy" {
                guard let modelOps else { return .json(.notFound, ["error": "this node has no model store"]) }
                return await modelOps.adminCopy(request)
            }
            if request.path == "/v1/models/rm" {
                guard let modelOps else { return .json(.notFound, ["error": "this node has no model store"]) }
                return await modelOps.adminRemove(request)
            }
            return control(request)
        }
        guard request.method == .GET || request.method == .HEAD else {
            return .json(.methodNotAllowed, ["error": "use GET (or POST for /v1/drain and /v1/undrain)"])
        }
        let snap = engines.snapshot()
        switch request.path {
        case "/v1/nodes":
            return .json(.ok, .array(nodes(snap)))
        case "/v1/status":
            let healthy = snap.filter(\.healthy).count
            return .json(.ok, [
                "node": .string(nodeName), "version": .string(APIResponder.version),
                "uptime_seconds": .number(Double(clock.nowNanos() - startedNanos) / 1e9),
                "engines_total": .integer(snap.count), "engines_healthy": .integer(healthy),
                "in_flight": .integer(snap.reduce(0) { $0 + $1.load.inFlight }),
                "queued": .integer(snap.reduce(0) { $0 + ($1.load.queued ?? 0) }),
                "engines": .array(snap.map { e in
                    ["id": .string(e.id), "healthy": .bool(e.healthy), "open": .integer(e.load.open),
                     "queued": .integer(e.load.queued ?? 0), "limit": e.load.limit.map { .integer($0) } ?? .null]
                }),
                "models": .array(Router.availableModels(snap).map(JSON.string)),
                "discovery": discovery?.statusJSON() ?? ["enabled": .bool(false)],
                "hardware": Self.hardwareJSON(hardware.latest),
                "alerts": alerts?.json() ?? .array([]),
                "limits": proxy.limiter?.json() ?? .array([]),
            ])
        case "/v1/budget":
            guard let gateway else {
                return .json(.notFound, ["gateway": false, "error": .string(
                    "\(nodeName) is not a gateway: it lists no cloud.providers, so it keeps no budget (ask the gateway node)")])
            }
            return .json(.ok, gateway.budgetJSON())
        case "/v1/usage":
            return await usageReport(request)
        case "/v1/doctor":
            return .json(.ok, await doctor(snap))
        case "/v1/engines":
            return .json(.ok, .array(snap.map(Self.engineJSON)))
        case "/v1/splits":
            var out = splitWorker?.statusJSON() ?? ["leases": []]
            let speeds = Dictionary(snap.map { ($0.id, $0.speeds.decodeTokensPerSecond) }, uniquingKeysWith: { a, _ in a })
            out = out.setting("heads", .array(splitHead?.statusJSON(decodeSpeed: { speeds[$0] ?? nil }) ?? []))
            if let splitHead { out = out.setting("head_stats", splitHead.backoffJSON()) }
            return .json(.ok, out)
        case "/v1/models":
            // Every model of the mesh, with the nodes and engines that have it (local first).
            // `where`: per node and engine, its state there (loaded, loading, or available: on disk,
            // loaded by the first request) and size.
            var byName: [String: (ModelInfo, [String], [String], [JSON])] = [:]
            var order: [String] = []
            for n in proxy.routingView(localOnly: false) {
                let node = n.isLocal ? nodeName : n.id
                for e in n.engines where e.healthy {
                    for m in e.models {
                        if byName[m.name] == nil { order.append(m.name); byName[m.name] = (m, [], [], []) }
                        byName[m.name]!.1.append(n.isLocal ? e.id : "\(n.id)/\(e.id)")
                        if !byName[m.name]!.2.contains(node) { byName[m.name]!.2.append(node) }
                        if m.loaded { byName[m.name]!.0.loaded = true }
                        if byName[m.name]!.0.sizeBytes == nil { byName[m.name]!.0.sizeBytes = m.sizeBytes }
                        let state = m.loaded ? "loaded" : (m.loading == true ? "loading" : "available")
                        byName[m.name]!.3.append(["node": .string(node), "engine": .string(e.id), "kind": .string(e.kind.rawValue),
                                                  "state": .string(state), "size_bytes": m.sizeBytes.map { .int($0) } ?? .null,
                                                  "split": .bool(m.split == true)])
                    }
                }
            }
            return .json(.ok, .array(order.map { n in
                let (m, ids, nodes, places) = byName[n]!
                return ["name": .string(n), "loaded": .bool(m.loaded), "size_bytes": m.sizeBytes.map { .int($0) } ?? .null,
                        "context_length": m.contextLength.map { .integer($0) } ?? .null,
                        "engines": .array(ids.map(JSON.string)), "node": .string(nodes.first ?? nodeName),
                        "nodes": .array(nodes.map(JSON.string)), "where": .array(places)]
            }))
        case "/v1/route":
            let model = Self.queryValue(request.query, "model") ?? ""
            guard !model.isEmpty else { return .json(.badRequest, ["error": "missing ?model="]) }
            let routed = proxy.explain(model: model)
            let key = Self.queryValue(request.query, "key")
            if let (decision, peer) = proxy.cloudDecision(model: model, keyName: key, routed: routed, estimatedPromptTokens: 1, maxTokens: nil) {
                switch decision {
                case .cloud(let candidates, let why):
                    return .json(.ok, ["model": .string(model), "node": .string(peer ?? nodeName), "cloud": true,
                                       "providers": .array(candidates.map { .string("\($0.provider) (\($0.model))") }),
                                       "reason": .string(why)])
                case .refuse(let e):
                    return .json(HTTPResponseStatus(statusCode: e.status), ["model": .string(model), "error": .string(e.message)])
                case .mesh:
                    break
                }
            }
            switch routed {
            case .success(let d):
                var out: JSON = ["model": .string(model), "node": .string(d.nodeID ?? nodeName), "engine": .string(d.engineID),
                                 "engine_model": .string(d.engineModel), "loaded": .bool(d.loaded),
                                 "expected_seconds": .number(d.expectedSeconds), "reason": .string(d.reason)]
                if let split = splitExplanation(d) { out = out.setting("split", .string(split)) }
                return .json(.ok, out)
            case .failure(let e):
                return .json(HTTPResponseStatus(statusCode: e.status), ["model": .string(model), "error": .string(e.message)])
            }
        default:
            return .json(.notFound, ["error": .string("no admin route \(request.path)")])
        }
    }

    /// `POST /v1/route?model=NAME` with a chat or completion request body: where it would go, with
    /// every candidate's terms (`meshctl route MODEL --prompt-file FILE`).
    func routePrompt(_ request: HTTPServerRequest) -> HTTPServerResponse {
        let req: InferenceRequest
        do {
            let json = try JSONParser.parse(request.bodyBytes)
            let route: InferenceRoute = json["messages"] != nil ? .openaiChat : .openaiCompletion
            req = try RequestParser.parse(route: route, json: json)
        } catch let e as APIError {
            return .json(HTTPResponseStatus(statusCode: e.status), ["error": .string(e.message), "param": e.param.map(JSON.string) ?? .null])
        } catch {
            return .json(.badRequest, ["error": .string("the body must be a chat or completion request in JSON: \(error)")])
        }
        switch proxy.rank(req) {
        case .success(let r):
            let d = r.decision
            return .json(.ok, ["model": .string(req.model), "node": .string(d.nodeID ?? nodeName), "engine": .string(d.engineID),
                               "policy": .string(proxy.routing.policy.rawValue), "prompt_tokens": .integer(req.estimatedPromptTokens),
                               "cached_tokens": .integer(d.cachedTokens), "slot": d.slot.map { .integer($0) } ?? .null,
                               "expected_seconds": .number(d.expectedSeconds), "reason": .string(d.reason),
                               "candidates": .array(r.candidates.map { c in
                                   ["node": .string(c.node.isEmpty ? nodeName : c.node), "engine": .string(c.engine), "loaded": .bool(c.loaded),
                                    "wait": .number(c.wait), "prefill": .number(c.prefill), "decode": .number(c.decode), "cold": .number(c.cold),
                                    "hop": .number(c.hop), "total": .number(c.total), "cached_tokens": .integer(c.cachedTokens),
                                    "uncached_tokens": .integer(c.uncachedTokens), "skipped": c.skipped.map(JSON.string) ?? .null]
                               })])
        case .failure(let e):
            return .json(HTTPResponseStatus(statusCode: e.status), ["model": .string(req.model), "error": .string(e.message)])
        }
    }

    /// `POST /v1/drain?node=NAME` and `/v1/undrain?node=NAME` (default: this node).
    func control(_ request: HTTPServerRequest) -> HTTPServerResponse {
        let drain: Bool
        switch request.path {
        case "/v1/drain": drain = true
        case "/v1/undrain": drain = false
        default: return .json(.notFound, ["error": .string("no admin route POST \(request.path)")])
        }
        let node = Self.queryValue(request.query, "node") ?? nodeName
        if node == nodeName {
            draining.set(drain)
            return .json(.ok, ["node": .string(node), "draining": .bool(drain)])
        }
        guard let mesh, mesh.peers().contains(where: { $0.state.id == node }) else {
            return .json(.notFound, ["error": .string("no live node named '\(node)'")])
        }
        mesh.setDrained(node, drain)
        _ = mesh.sendControl(to: node, action: drain ? "drain" : "undrain")
        return .json(.ok, ["node": .string(node), "draining": .bool(drain)])
    }

    /// `GET /v1/trust`; `POST /v1/trust/add?key=HEX&name=N`, `POST /v1/trust/revoke?key=HEX`.
    func trust(_ request: HTTPServerRequest) async -> HTTPServerResponse {
        let path = meshConfig.trustedKeysFile
        var entries: [(key: [UInt8], name: String)]
        do {
            entries = try TrustStore.loadTrusted(path: path)
        } catch {
            return .json(.internalServerError, ["error": .string("\(error)")])
        }
        var nodeKey: JSON = .null
        if meshConfig.trust == .keys, let pair = try? TrustStore.loadOrCreateNodeKey(path: meshConfig.nodeKeyFile) {
            nodeKey = .string(TrustStore.hex(pair.publicKey))
        }
        func listing() -> JSON {
            ["mode": .string(meshConfig.trust.rawValue), "node_key": nodeKey, "trusted_keys_file": .string(path),
             "trusted": .array(entries.map { ["key": .string(TrustStore.hex($0.key)), "name": .string($0.name)] })]
        }
        if request.method == .GET || request.method == .HEAD { return .json(.ok, listing()) }
        guard request.method == .POST else { return .json(.methodNotAllowed, ["error": "use GET or POST"]) }
        guard let text = Self.queryValue(request.query, "key"), let key = TrustStore.parseKey(text) else {
            return .json(.badRequest, ["error": "key: expected a public key, 64 hex digits (meshctl trust show on that node)"])
        }
        switch request.path {
        case "/v1/trust/add":
            entries.removeAll { $0.key == key }
            entries.append((key, Self.queryValue(request.query, "name") ?? ""))
            do { try TrustStore.saveTrusted(path: path, entries) } catch { return .json(.internalServerError, ["error": .string("\(error)")]) }
            if meshConfig.trust == .keys { try? await mesh?.trust(key: key) }
        case "/v1/trust/revoke":
            entries.removeAll { $0.key == key }
            do { try TrustStore.saveTrusted(path: path, entries) } catch { return .json(.internalServerError, ["error": .string("\(error)")]) }
            if meshConfig.trust == .keys { try? await mesh?.revoke(key: key) }
        default:
            return .json(.notFound, ["error": .string("no admin route POST \(request.path)")])
        }
        return .json(.ok, listing())
    }

    /// This node, live peers and recently lost ones, in the `meshctl nodes --json` shape.
    func nodes(_ snap: [EngineSnapshot]) -> [JSON] {
        // host:port like the peers' endpoints (the bound one reads tcp://host:port).
        let bound = mesh?.boundEndpoint ?? ""
        let ownMesh = bound.hasPrefix("tcp://") ? String(bound.dropFirst(6)) : bound
        let hw = hardware.latest
        var own = NodeState(id: nodeName, name: nodeName, meshEndpoint: ownMesh, httpEndpoint: httpListen, engines: snap)
        own.apply(hw)
        own.llama = mesh?.localState().llama ?? llama()
        var local = nodeJSON(own, state: draining.value ? "draining" : "up", local: true)
        local = local.setting("devices", .array(hw.devices.map(Self.deviceJSON)))
        var out: [JSON] = [local]
        if let mesh {
            for p in mesh.peers() {
                out.append(nodeJSON(p.state, state: p.state.draining || p.drainedLocally ? "draining" : "up", local: false))
            }
            for var st in mesh.recentlyDown() {
                st.engines = []
                out.append(nodeJSON(st, state: "down", local: false))
            }
        }
        return out
    }

    /// Why the chosen engine's model is split or not, for `meshctl route`: the planner's reason for
    /// a managed llama.cpp model of this node; the head's name for a peer's split.
    func splitExplanation(_ d: RouteDecision) -> String? {
        if d.isLocal || d.nodeID == nil || d.nodeID == nodeName {
            guard let splitHead, let engine = managedLlama.first(where: { $0.id == d.engineID }) else { return nil }
            if let running = engine.runningSplit { return "split running: " + running.plan.reason }
            guard let model = engine.splitModel else { return nil }
            if engine.status.phase != .awaitingSplit {
                if model.policy == .never { return "not split: its engine entry says split: never" }
                return "not split: '\(model.name)' fits \(nodeName) and runs whole there"
            }
            return splitHead.plan(model).reason
        }
        let peer = mesh?.peers().first { $0.state.id == d.nodeID }
        let m = peer?.state.engines.first { $0.id == d.engineID }?.models.first { $0.name == d.engineModel }
        guard m?.split == true else { return nil }
        return "split across nodes, headed by \(d.nodeID ?? "?") (meshctl route there shows the plan)"
    }

    /// One node in the `meshctl nodes --json` shape; RAM is null for peers that do not send it.
    func nodeJSON(_ st: NodeState, state: String, local: Bool) -> JSON {
        [
            "name": .string(st.id), "state": .string(state), "address": .string(st.httpEndpoint), "mesh_endpoint": .string(st.meshEndpoint),
            "local": .bool(local), "models": .array(Router.availableModels(st.engines).map(JSON.string)),
            "gpu": .string(st.gpuSummary), "vram_total_bytes": .int(st.vramTotalBytes), "vram_free_bytes": .int(st.vramFreeBytes),
            "ram_total_bytes": st.ramTotalBytes.map(JSON.int) ?? .null, "ram_free_bytes": st.ramFreeBytes.map(JSON.int) ?? .null,
            "in_flight": .integer(st.inFlight),
            "llama_build": st.llama.map { .string($0.build) } ?? .null, "rpc_server": .bool(st.llama?.rpcServer ?? false),
            "offer_bytes": st.llama?.offerBytes.map(JSON.int) ?? .null, "leased_bytes": .int(st.llama?.leasedBytes ?? 0),
            "leased_to": st.llama?.leasedTo.map(JSON.string) ?? .null,
            "heads": .array((st.llama?.heads ?? []).map(JSON.string)),
        ]
    }

    /// The local hardware reading for `/v1/status`.
    static func hardwareJSON(_ hw: HardwareSnapshot) -> JSON {
        [
            "gpu": .string(hw.gpuSummary), "source": .string(hw.source.rawValue),
            "vram_total_bytes": .int(hw.vramTotalBytes), "vram_free_bytes": .int(hw.vramFreeBytes),
            "ram_total_bytes": hw.ram.map { .int($0.totalBytes) } ?? .null,
            "ram_free_bytes": hw.ram.map { .int($0.availableBytes) } ?? .null,
            "devices": .array(hw.devices.map(deviceJSON)), "problems": .array(hw.problems.map(JSON.string)),
        ]
    }

    static func deviceJSON(_ d: DeviceMemory) -> JSON {
        ["kind": .string(d.kind.rawValue), "index": .integer(d.index), "name": .string(d.name),
         "total_bytes": d.totalBytes.map(JSON.int) ?? .null, "free_bytes": d.freeBytes.map(JSON.int) ?? .null]
    }

    func serverError(status: HTTPResponseStatus, message: String, code: String, path: String) -> HTTPServerResponse {
        .json(status, ["error": .string(message)])
    }

    static func engineJSON(_ e: EngineSnapshot) -> JSON {
        [
            "id": .string(e.id), "kind": .string(e.kind.rawValue), "url": .string(e.url), "healthy": .bool(e.healthy),
            "detail": e.healthDetail.map(JSON.string) ?? .null,
            "in_flight": .integer(e.load.inFlight), "running": e.load.running.map { .integer($0) } ?? .null,
            "waiting": e.load.waiting.map { .integer($0) } ?? .null, "slots": e.load.slots.map { .integer($0) } ?? .null,
            "open": .integer(e.load.open), "queued": .integer(e.load.queued ?? 0),
            "limit": e.load.limit.map { .integer($0) } ?? .null,
            "decode_tokens_per_second": e.speeds.decodeTokensPerSecond.map(JSON.number) ?? .null,
            "models": .array(e.models.map { m in
                ["name": .string(m.name), "loaded": .bool(m.loaded), "size_bytes": m.sizeBytes.map { .int($0) } ?? .null]
            }),
        ]
    }

    /// `GET /v1/usage?by=key&since=7d[&scope=node]`: the mesh's usage report (this node's alone with `scope=node`).
    func usageReport(_ request: HTTPServerRequest) async -> HTTPServerResponse {
        guard let usage else { return .json(.notFound, ["error": "this node keeps no usage log (audit.enabled is false)"]) }
        let byText = Self.queryValue(request.query, "by") ?? "key"
        guard let by = UsageDimension(rawValue: byText) else {
            return .json(.badRequest, ["error": .string("by: '\(byText.prefix(40))' is not one of \(UsageDimension.allCases.map(\.rawValue).joined(separator: ", "))"),
                                       "field": "by"])
        }
        let nowMs = Int64(clock.nowNanos() / 1_000_000)
        let sinceMs: Int64
        switch UsageReport.since(Self.queryValue(request.query, "since") ?? "30d", nowMs: nowMs) {
        case .success(let ms): sinceMs = ms
        case .failure(let e): return .json(.badRequest, ["error": .string(e.description), "field": "since"])
        }
        let scope = Self.queryValue(request.query, "scope") ?? "mesh"
        guard scope == "mesh" || scope == "node" else {
            return .json(.badRequest, ["error": .string("scope: '\(scope.prefix(40))' is not mesh or node"), "field": "scope"])
        }
        var out = await usage.report(by: by, sinceMs: sinceMs, meshWide: scope == "mesh")
        // The keys' limits and their use over the last minute, as this node sees the mesh.
        if let limiter = proxy.limiter { out = out.setting("limits", limiter.json()) }
        return .json(.ok, out)
    }

    static func queryValue(_ query: String?, _ key: String) -> String? {
        guard let query else { return nil }
        for pair in query.split(separator: "&") {
            let kv = pair.split(separator: "=", maxSplits: 1)
            if kv.count == 2, kv[0] == key { return String(kv[1]).removingPercentEncoding() }
        }
        return nil
    }
}
