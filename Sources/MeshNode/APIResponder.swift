import MeshCore
import MeshHTTPClient
import MeshHTTPServer
import NIOCore
import NIOHTTP1
import Synchronization

/// The node's client API: a small route table over the OpenAI and Ollama endpoints, health,
/// readiness and metrics, with bearer-key checks when keys are configured.
/// The client keys (`http.api_keys`) and admin keys (`http.admin_keys`) a node accepts now.
public final class KeyRing: Sendable {
    public struct Keys: Sendable {
        /// Name and secret bytes.
        var api: [(name: String, secret: [UInt8])]
        var admin: [[UInt8]]
    }

    private let keys: Mutex<Keys>

    public init(apiKeys: [String], adminKeys: [String]) {
        keys = Mutex(Self.parse(apiKeys, adminKeys))
    }

    static func parse(_ api: [String], _ admin: [String]) -> Keys {
        Keys(api: ClientKey.parse(api).map { ($0.name, Array($0.secret.utf8)) }, admin: ClientKey.parse(admin).map { Array($0.secret.utf8) })
    }

    var current: Keys { keys.withLock { $0 } }

    /// Takes reloaded keys: the next request is checked against them.
    public func set(apiKeys: [String], adminKeys: [String]) {
        let k = Self.parse(apiKeys, adminKeys)
        keys.withLock { $0 = k }
    }
}

public struct APIResponder: HTTPResponder {
    public static let version = MeshdVersion.version
    /// The Ollama API version meshd serves at `/api/version`: the one whose endpoints and fields it
    /// implements, not meshd's own (clients gate on it: VS Code's Ollama mode needs at least 0.6.4).
    public static let ollamaAPIVersion = "0.6.4"

    let proxy: InferenceProxy
    let engines: any EngineDirectory
    let metrics: NodeMetrics
    /// Client keys and admin keys (a reload replaces them).
    let keys: KeyRing
    let clock: any WallClock
    let nodeName: String
    /// The client HTTP server's connection counters, once it exists.
    let connections: HTTPConnectionStats?
    /// Extra `/metrics` text (splits), rendered at scrape time.
    let extraMetrics: @Sendable () -> String
    /// `/api/pull` and `/api/delete` for the whole mesh (nil: answered 501 as not served).
    var modelOps: ModelOps?
    /// The dashboard's data (`/ui/state`); nil: no dashboard.
    var dashboard: Dashboard?

    public init(nodeName: String, proxy: InferenceProxy, engines: any EngineDirectory, metrics: NodeMetrics, apiKeys: [String], clock: any WallClock,
                connections: HTTPConnectionStats? = nil, extraMetrics: @escaping @Sendable () -> String = { "" }) {
        self.extraMetrics = extraMetrics
        self.nodeName = nodeName
        self.proxy = proxy
        self.engines = engines
        self.metrics = metrics
        self.keys = KeyRing(apiKeys: apiKeys, adminKeys: [])
        self.clock = clock
        self.connections = connections
    }

    enum Route {
        case root, healthz, readyz, metrics
        /// The dashboard page and its data.
        case ui, uiState
        case inference(InferenceRoute)
        case openaiModels, openaiModel(String)
        case ollamaTags, ollamaPs, ollamaShow, ollamaVersion
        /// Ollama model management meshd does not serve yet (issue 15): what to call it.
        case ollamaNotServed(String)
        case ollamaPull, ollamaDelete, ollamaCopy
        /// Relayed to an Ollama engine of this node: `/api/create`, `/api/blobs/DIGEST`, `/api/push`.
        case ollamaToEngine
    }

    /// The route table: (method, path) → route; nil with `allowed` methods when the path exists but not the method.
    static func match(_ method: HTTPMethod, _ path: String) -> (Route?, [HTTPMethod]) {
        let get: [HTTPMethod] = [.GET, .HEAD]
        switch path {
        case "/", "": return get.contains(method) ? (.root, get) : (nil, get)
        case "/ui", "/ui/": return get.contains(method) ? (.ui, get) : (nil, get)
        case "/ui/state": return get.contains(method) ? (.uiState, get) : (nil, get)
        case "/healthz": return get.contains(method) ? (.healthz, get) : (nil, get)
        case "/readyz": return get.contains(method) ? (.readyz, get) : (nil, get)
        case "/metrics": return get.contains(method) ? (.metrics, get) : (nil, get)
        case "/v1/models": return get.contains(method) ? (.openaiModels, get) : (nil, get)
        case "/api/tags": return get.contains(method) ? (.ollamaTags, get) : (nil, get)
        case "/api/ps": return get.contains(method) ? (.ollamaPs, get) : (nil, get)
        case "/api/version": return get.contains(method) ? (.ollamaVersion, get) : (nil, get)
        case "/api/show": return method == .POST ? (.ollamaShow, [.POST]) : (nil, [.POST])
        case "/api/pull": return method == .POST ? (.ollamaPull, [.POST]) : (nil, [.POST])
        case "/api/push": return method == .POST ? (.ollamaToEngine, [.POST]) : (nil, [.POST])
        case "/api/delete": return method == .DELETE ? (.ollamaDelete, [.DELETE]) : (nil, [.DELETE])
        case "/api/copy": return method == .POST ? (.ollamaCopy, [.POST]) : (nil, [.POST])
        case "/api/create": return method == .POST ? (.ollamaToEngine, [.POST]) : (nil, [.POST])
        default:
            if path.hasPrefix("/api/blobs/") {
                return [.HEAD, .POST].contains(method) ? (.ollamaToEngine, [.HEAD, .POST]) : (nil, [.HEAD, .POST])
            }
            if let r = InferenceRoute(rawValue: path) {
                return method == .POST ? (.inference(r), [.POST]) : (nil, [.POST])
            }
            if path.hasPrefix("/v1/models/") {
                let id = String(path.dropFirst("/v1/models/".count))
                return get.contains(method) ? (.openaiModel(id.removingPercentEncoding()), get) : (nil, get)
            }
            return (nil, [])
        }
    }

    static func dialect(forPath path: String) -> Dialect { path.hasPrefix("/api/") ? .ollama : .openai }

    public func respond(to incoming: HTTPServerRequest) async -> HTTPServerResponse {
        var request = incoming
        let path = request.path
        let dialect = Self.dialect(forPath: path)
        let (route, allowed) = Self.match(request.method, path)
        guard let route else {
            if allowed.isEmpty {
                return error(APIError(status: 404, message: "no route for \(request.method) \(path)", code: "not_found"), dialect)
            }
            var h = HTTPHeaders()
            h.add(name: "Allow", value: allowed.map(\.rawValue).joined(separator: ", "))
            return error(APIError(status: 405, message: "method \(request.method) not allowed on \(path); use \(allowed.map(\.rawValue).joined(separator: " or "))",
                                  code: "method_not_allowed"), dialect, headers: h)
        }
        switch route {
        case .healthz, .readyz, .root: break
        case .ui, .uiState:
            // Admin keys or loopback, never client keys.
            let ip = request.remoteAddress?.ipAddress
            if case .unauthorized(let why) = DashboardAccess.decide(remoteIP: ip, authorization: request.header("authorization"),
                                                                     adminKeys: keys.current.admin) {
                var h = HTTPHeaders()
                h.add(name: "WWW-Authenticate", value: "Basic realm=\"meshd \(nodeName)\", charset=\"UTF-8\"")
                return error(APIError(status: 401, message: why, type: "invalid_request_error", code: "admin_key_required"), .openai, headers: h)
            }
        default:
            guard let key = authorizedKey(request) else {
                var h = HTTPHeaders()
                h.add(name: "WWW-Authenticate", value: "Bearer")
                return error(.unauthorized, dialect, headers: h)
            }
            // Which key the client used (for per-key budgets and local-only keys): set here only,
            // never taken from the client.
            request.head.headers.remove(name: Self.keyNameHeader)
            if !key.isEmpty { request.head.headers.add(name: Self.keyNameHeader, value: key) }
        }
        switch route {
        case .root: return .text(.ok, "meshd is running")
        case .ui:
            var h = HTTPHeaders()
            h.add(name: "Cache-Control", value: "no-store")
            // The page loads nothing from anywhere else, and runs only its own script.
            h.add(name: "Content-Security-Policy",
                  value: "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
            h.add(name: "X-Content-Type-Options", value: "nosniff")
            return .bytes(.ok, DashboardPage.html, contentType: "text/html; charset=utf-8", headers: h)
        case .uiState:
            guard let dashboard else { return .json(.notFound, ["error": "no dashboard on this node"]) }
            var h = HTTPHeaders()
            h.add(name: "Cache-Control", value: "no-store")
            return .json(.ok, await dashboard.snapshot(), headers: h)
        case .healthz: return .json(.ok, ["status": "ok", "node": .string(nodeName)])
        case .readyz:
            // Engines that would take a request now: a drained node's own do not (it forwards only).
            let healthy = proxy.routingView(localOnly: false).filter { !$0.draining }.flatMap(\.engines).filter(\.healthy).map(\.id)
            if healthy.isEmpty {
                let why = proxy.localDraining() ? "draining (meshctl drain) and no peer engine is healthy" : "no healthy engine"
                return .json(.serviceUnavailable, ["status": "not ready", "reason": .string(why)])
            }
            return .json(.ok, ["status": "ready", "engines": .array(healthy.map(JSON.string))])
        case .metrics:
            var body = metrics.render()
            body += Array(EngineLoadMetrics.render(engines.snapshot()).utf8)
            body += Array(extraMetrics().utf8)
            if let mesh = proxy.mesh {
                body += Array("""
                # HELP meshd_mesh_peers Live mesh peers.
                # TYPE meshd_mesh_peers gauge
                meshd_mesh_peers \(mesh.peers().count)
                # HELP meshd_mesh_nodes_down Nodes of the mesh seen lately and now down (lost: no heartbeat, connection closed).
                # TYPE meshd_mesh_nodes_down gauge
                meshd_mesh_nodes_down \(mesh.recentlyDown().count)
                # HELP meshd_mesh_rejected_frames_total Mesh messages rejected as malformed, oversized or of an unknown version.
                # TYPE meshd_mesh_rejected_frames_total counter
                meshd_mesh_rejected_frames_total \(mesh.rejectedFrames)
                # HELP meshd_mesh_auth_failures_total Mesh connections refused by CURVE/ZAP authentication.
                # TYPE meshd_mesh_auth_failures_total counter
                meshd_mesh_auth_failures_total \(mesh.authFailureCount)
                # HELP meshd_mesh_handshakes_aborted_total Connections to the mesh port closed before their handshake finished (probes, clients that gave up).
                # TYPE meshd_mesh_handshakes_aborted_total counter
                meshd_mesh_handshakes_aborted_total \(mesh.abortedHandshakeCount)

                """.utf8)
            }
            if let gw = proxy.cloud.gateway { body += Array(gw.metricsText().utf8) }
            if let limiter = proxy.limiter, limiter.limits.enabled { body += Array(limiter.metricsText().utf8) }
            if let server = connections?.server {
                body += Array("""
                # HELP meshd_http_connections Client HTTP connections open now.
                # TYPE meshd_http_connections gauge
                meshd_http_connections \(server.openConnections)
                # HELP meshd_http_connections_refused_total Client HTTP connections refused with 503 because http.max_connections were open.
                # TYPE meshd_http_connections_refused_total counter
                meshd_http_connections_refused_total \(server.refusedConnections)
                # HELP meshd_http_connections_refused_per_client_total Client HTTP connections refused with 429 because their address held http.max_connections_per_client.
                # TYPE meshd_http_connections_refused_per_client_total counter
                meshd_http_connections_refused_per_client_total \(server.refusedPerClientConnections)
                # HELP meshd_http_connections_timed_out_total Client HTTP connections closed for a slow head or body (a stall, or a body under http.min_body_bytes_per_second), or idle keep-alive.
                # TYPE meshd_http_connections_timed_out_total counter
                meshd_http_connections_timed_out_total \(server.timedOutConnections)

                """.utf8)
            }
            return .bytes(.ok, body, contentType: "text/plain; version=0.0.4; charset=utf-8")
        case .inference(let r):
            return await proxy.handle(route: r, request: request)
        case .openaiModels:
            return .json(.ok, ["object": "list", "data": .array(modelList().map { openAIModel($0.0) })], headers: nodeHeader)
        case .openaiModel(let id):
            guard let m = modelList().first(where: { ModelName.matches($0.0.name, id) }) else {
                return error(.modelNotFound(id, available: modelList().map(\.0.name)), .openai)
            }
            return .json(.ok, openAIModel(m.0), headers: nodeHeader)
        case .ollamaTags:
            return .json(.ok, ["models": .array(modelList().map { ollamaTag($0.0) })], headers: nodeHeader)
        case .ollamaPs:
            return .json(.ok, ["models": .array(modelList().filter(\.0.loaded).map { ollamaPs($0.0) })], headers: nodeHeader)
        case .ollamaVersion:
            // meshd's own version alongside, for people (clients read `version`).
            return .json(.ok, ["version": .string(Self.ollamaAPIVersion), "meshd_version": .string(Self.version)], headers: nodeHeader)
        case .ollamaShow:
            return await show(request)
        case .ollamaPull:
            guard let modelOps else { return error(Self.notServed("pulling models (/api/pull)"), dialect) }
            return await modelOps.ollamaPull(request)
        case .ollamaDelete:
            guard let modelOps else { return error(Self.notServed("deleting models (/api/delete)"), dialect) }
            return await modelOps.ollamaDelete(request)
        case .ollamaCopy:
            guard let modelOps else { return error(Self.notServed("copying models (/api/copy)"), dialect) }
            return await modelOps.ollamaCopy(request)
        case .ollamaToEngine:
            guard let modelOps else { return error(Self.notServed("creating models (/api/create, /api/blobs)"), dialect) }
            return await modelOps.ollamaToEngine(request, path: path)
        case .ollamaNotServed(let what):
            return error(Self.notServed(what), dialect)
        }
    }

    /// A clear "not here yet", never a 404 that a client reads as "no such model".
    static func notServed(_ what: String) -> APIError {
        APIError(status: 501, message: "meshd does not serve \(what) yet; manage models on the engine's own node "
                 + "(ollama pull, ollama rm) and meshd sees them at its next poll", code: "not_implemented")
    }

    public func serverError(status: HTTPResponseStatus, message: String, code: String, path: String) -> HTTPServerResponse {
        error(APIError(status: Int(status.code), message: message, code: code), Self.dialect(forPath: path))
    }

    // MARK: helpers

    var nodeHeader: HTTPHeaders {
        var h = HTTPHeaders()
        h.add(name: "X-Meshd-Node", value: nodeName)
        return h
    }

    func error(_ e: APIError, _ dialect: Dialect, headers: HTTPHeaders = HTTPHeaders()) -> HTTPServerResponse {
        var h = headers
        h.replaceOrAdd(name: "X-Meshd-Node", value: nodeName)
        return .json(HTTPResponseStatus(statusCode: e.status), e.body(for: dialect), headers: h)
    }

    /// Header carrying the name of the client key a request was authorized with, inside meshd and
    /// across the mesh.
    static let keyNameHeader = "X-Meshd-Key-Name"

    /// The name of the key the request presents ("" when no keys are configured), or nil.
    func authorizedKey(_ request: HTTPServerRequest) -> String? {
        let apiKeys = keys.current.api
        if apiKeys.isEmpty { return "" }
        guard let auth = request.header("authorization") else { return nil }
        let parts = auth.split(separator: " ", maxSplits: 1)
        guard parts.count == 2, parts[0].lowercased() == "bearer" else { return nil }
        let presented = Array(parts[1].utf8)
        var found: String?
        for k in apiKeys where Self.constantTimeEqual(k.secret, presented) { found = k.name }
        return found
    }

    static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool { DashboardAccess.constantTimeEqual(a, b) }

    /// Models of healthy engines on this node and its live peers, deduplicated by name (local
    /// first), with the engine.
    func modelList() -> [(ModelInfo, EngineSnapshot)] {
        var seen = Set<String>()
        var out: [(ModelInfo, EngineSnapshot)] = []
        for e in proxy.routingView(localOnly: false).flatMap(\.engines) where e.healthy {
            for m in e.models where seen.insert(m.name).inserted { out.append((m, e)) }
        }
        // The gateway's cloud models: served too (escalated), never loaded here.
        for (model, provider) in proxy.cloudModels() where seen.insert(model).inserted {
            let m = ModelInfo(name: model, loaded: false)
            out.append((m, EngineSnapshot(id: "cloud:\(provider)", kind: .openai, url: "", healthy: true, models: [m])))
        }
        return out
    }

    var createdSeconds: Int64 { Int64(clock.nowNanos() / 1_000_000_000) }

    func openAIModel(_ m: ModelInfo) -> JSON {
        ["id": .string(m.name), "object": "model", "created": .int(createdSeconds), "owned_by": .string("meshd:\(nodeName)")]
    }

    func details(_ m: ModelInfo) -> JSON {
        [
            "parent_model": "", "format": "gguf", "family": .string(m.family ?? ""),
            "families": m.family.map { JSON.array([.string($0)]) } ?? .null,
            "parameter_size": .string(m.parameterSize ?? ""), "quantization_level": .string(m.quantization ?? ""),
        ]
    }

    func ollamaTag(_ m: ModelInfo) -> JSON {
        [
            "name": .string(m.name), "model": .string(m.name), "modified_at": .string(ISO8601.format(nanos: clock.nowNanos())),
            "size": .int(m.sizeBytes ?? 0), "digest": .string(Self.digest(m.name)), "details": details(m),
        ]
    }

    func ollamaPs(_ m: ModelInfo) -> JSON {
        [
            "name": .string(m.name), "model": .string(m.name), "size": .int(m.sizeBytes ?? 0), "digest": .string(Self.digest(m.name)),
            "details": details(m), "expires_at": .string(m.expiresAt ?? ISO8601.format(nanos: clock.nowNanos() + 300_000_000_000)),
            "size_vram": .int(m.vramBytes ?? 0), "context_length": m.contextLength.map { .integer($0) } ?? .null,
        ]
    }

    func show(_ request: HTTPServerRequest) async -> HTTPServerResponse {
        let body: JSON
        do {
            body = try JSONParser.parse(request.bodyBytes)
        } catch {
            return self.error(.badJSON(error), .ollama)
        }
        guard let name = body["model"]?.stringValue ?? body["name"]?.stringValue else {
            return self.error(.missing("model"), .ollama)
        }
        guard let (m, e) = modelList().first(where: { ModelName.matches($0.0.name, name) }) else {
            return self.error(.modelNotFound(name, available: modelList().map(\.0.name)), .ollama)
        }
        // An Ollama engine on this node knows its model best (template, parameters, model_info).
        if let local = engines.snapshot().first(where: { $0.kind == .ollama && $0.healthy && $0.model(named: name) != nil }),
           let own = await engineShow(local, model: local.model(named: name)!.name) {
            return .json(.ok, own, headers: nodeHeader)
        }
        var info: [(String, JSON)] = [("general.architecture", .string(m.family ?? "unknown"))]
        if let c = m.contextLength { info.append(("\(m.family ?? "general").context_length", .integer(c))) }
        var caps: [JSON] = [m.embeddings == true ? "embedding" : "completion"]
        if m.embeddings == nil { caps.append("embedding") }
        return .json(.ok, [
            "modelfile": "", "parameters": "", "template": "", "details": details(m), "model_info": .object(info),
            "capabilities": .array(caps), "modified_at": .string(ISO8601.format(nanos: clock.nowNanos())),
            "meshd": ["node": .string(nodeName), "engine": .string(e.id)],
        ], headers: nodeHeader)
    }

    /// The engine's own `/api/show` answer, with where meshd found it; nil when it gives none (meshd
    /// then describes the model from the mesh state).
    func engineShow(_ e: EngineSnapshot, model: String) async -> JSON? {
        var body: [UInt8] = []
        (["model": .string(model)] as JSON).write(into: &body)
        var req = HTTPClientRequest(method: "POST", url: InferenceProxy.join(e.url, "/api/show"),
                                    headers: [("Content-Type", "application/json")] + engines.requestHeaders(engineID: e.id), body: body)
        req.firstByteTimeout = .seconds(5)
        req.idleTimeout = .seconds(5)
        guard let (head, raw) = try? await proxy.client.execute(req), head.status == 200,
              case .object(var members)? = try? JSONParser.parse(raw) else { return nil }
        members.append(("meshd", ["node": .string(nodeName), "engine": .string(e.id)]))
        return .object(members)
    }

    /// A stable pseudo digest for engines that do not report one (FNV-1a, hex).
    static func digest(_ s: String) -> String {
        var h: UInt64 = 0xcbf29ce484222325
        for b in s.utf8 { h = (h ^ UInt64(b)) &* 0x100000001b3 }
        let hex = String(h, radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex
    }
}

extension String {
    /// Decodes `%XX` escapes (model ids with `:` or `/` arrive escaped).
    func removingPercentEncoding() -> String {
        var out: [UInt8] = []
        var it = Array(utf8)[...]
        while let c = it.popFirst() {
            if c == UInt8(ascii: "%"), it.count >= 2, let v = UInt8(String(decoding: it.prefix(2), as: UTF8.self), radix: 16) {
                out.append(v)
                it = it.dropFirst(2)
            } else {
                out.append(c)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// The client HTTP server as `/metrics` sees it: set once the server exists (the responder is
/// built first). Holds the server weakly, so the server → responder → stats chain is no cycle.
public final class HTTPConnectionStats: Sendable {
    private struct Ref { weak var server: HTTPServer? }
    private let ref = Mutex(Ref())

    public init() {}

    public var server: HTTPServer? {
        get { ref.withLock { $0.server } }
        set { ref.withLock { $0.server = newValue } }
    }
}
