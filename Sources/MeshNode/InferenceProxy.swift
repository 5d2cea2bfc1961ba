import Logging
import MeshCore
import MeshEngines
import MeshHTTPClient
import MeshHTTPServer
import MeshNet
import NIOCore
import NIOHTTP1
import Synchronization

/// What the proxy needs from the engine layer: the current view and bookkeeping hooks.
public protocol EngineDirectory: Sendable {
    /// Latest known state of every engine (cached; no I/O).
    func snapshot() -> [EngineSnapshot]
    /// Extra headers for requests to an engine (its API key).
    func requestHeaders(engineID: String) -> [(String, String)]
    /// Takes a place for a request to `engineID`, waiting in the node's queue for that engine while
    /// it has as many open as it can run.
    func acquire(engineID: String) async -> EngineAdmission
    /// An admitted request ended (frees its place); `usage` and timings feed the measured speeds,
    /// `overloaded` (the engine answered 429/503) its learned concurrency limit.
    func requestFinished(engineID: String, usage: TokenUsage?, firstTokenSeconds: Double?, totalSeconds: Double, ok: Bool,
                         overloaded: Bool)
    /// A request could not reach the engine: take it out of rotation until the next poll says otherwise.
    func engineUnreachable(engineID: String, reason: String)
    /// Makes an admitted request's engine ready (a split starts on its first request): its base
    /// URL now, or why it cannot serve (the request then goes to the next candidate).
    func prepare(engineID: String) async -> Result<String, DetailError>
    /// A request failed on a split before it answered: it is not taken out of rotation (it ends
    /// itself when a worker failed, and is planned again), but checks its llama-server first.
    func engineFailed(engineID: String)
    /// After ``engineFailed(engineID:)``, before routing again: waits until the split has ended (or
    /// is found running) and polls it, so routing does not see it unhealthy from its dying llama-server.
    func settle(engineID: String) async
    /// Unloads the engine's model now where it can (a stored model: its llama-server stops).
    func unload(engineID: String) async
    /// A request's own keep-alive for the engine's model (Ollama `keep_alive`, seconds; nil: the default).
    func keepAlive(engineID: String, seconds: Double?)
}

extension EngineDirectory {
    public func unload(engineID: String) async {}
    public func keepAlive(engineID: String, seconds: Double?) {}
}

/// Serves inference routes: parse, route, translate, relay. Same-dialect bodies and streams are
/// relayed as they come; cross-dialect ones are translated chunk by chunk, never buffered.
///
/// A class: a request's task and its closures share the one proxy instead of copying its ~20
/// fields (a retain each) at every capture; the copies were 2-3 % of a non-streamed request's CPU.
public final class InferenceProxy: Sendable {
    public let nodeName: String
    let engines: any EngineDirectory
    let client: CurlHTTPClient
    let metrics: NodeMetrics
    let clock: any WallClock
    let logger: Logger
    let timeouts: TimeoutConfig
    let mesh: MeshService?
    let localDraining: @Sendable () -> Bool
    /// Cloud escalation (issue 5): this node's cloud config and gateway role.
    let cloud: CloudSetup
    /// Cache-aware routing (issue 14): the policy, and the shadows of every engine's cache.
    let routing: RoutingSettings
    let cache: CacheShadows?
    let turns = RoundRobinTurns()
    /// Late binding: requests no engine could start soon wait here (nil: they go to the best engine's own queue).
    let queue: MeshQueue?
    /// The usage and audit log (nil: not kept).
    public let usage: UsageRecorder?
    /// The response cache (`cache.enabled`; nil: off).
    public let responseCache: ResponseCacheService?
    /// Per-key limits (`limits`; nil: none configured).
    public let limiter: KeyLimiter?

    public init(nodeName: String, engines: any EngineDirectory, client: CurlHTTPClient, metrics: NodeMetrics,
                clock: any WallClock, timeouts: TimeoutConfig, logger: Logger, mesh: MeshService? = nil,
                localDraining: @escaping @Sendable () -> Bool = { false }, cloud: CloudSetup = CloudSetup(config: CloudConfig()),
                routing: RoutingSettings = RoutingSettings(), cache: CacheShadows? = nil, queue: MeshQueue? = nil,
                usage: UsageRecorder? = nil, responseCache: ResponseCacheService? = nil, limiter: KeyLimiter? = nil) {
        self.usage = usage
        self.responseCache = responseCache
        self.limiter = limiter
        self.queue = queue
        self.cloud = cloud
        self.routing = routing
        self.cache = cache
        self.mesh = mesh
        self.localDraining = localDraining
        self.nodeName = nodeName
        self.engines = engines
        self.client = client
        self.metrics = metrics
        self.clock = clock
        self.timeouts = timeouts
        self.logger = logger
    }

    /// Answers one inference request.
    /// - Parameter localOnly: serve on this node's engines only (requests a peer forwarded here).
    public func handle(route: InferenceRoute, request: HTTPServerRequest, localOnly: Bool = false) async -> HTTPServerResponse {
        let started = ContinuousClock.now
        let startNanos = clock.nowNanos()
        let api = route.dialect.rawValue
        metrics.begin()
        let req: InferenceRequest
        let bodyBytes = request.bodyBytes
        do {
            req = try RequestParser.parse(route: route, body: bodyBytes)
        } catch {
            metrics.end(api: api, route: route.rawValue, model: "", status: error.status, duration: ContinuousClock.now - started)
            if !localOnly {
                let tag = auditTag(route: route, request: request, bodyUser: nil, localOnly: localOnly, startNanos: startNanos, started: started)
                record(tag, model: "", status: error.status, route: error.message)
            }
            return errorResponse(error, dialect: route.dialect)
        }
        // Without a usage log, a response cache or limits there is nothing to tag.
        if usage == nil && responseCache == nil && limiter == nil {
            return await serve(req, request: request, localOnly: localOnly, started: started, startNanos: startNanos)
        }
        let tag = auditTag(route: route, request: request, bodyUser: req.body["user"]?.stringValue, localOnly: localOnly,
                           startNanos: startNanos, started: started)
        // The key's limits, judged by the node the client asked (a peer serves what it admitted).
        if !localOnly, let limiter {
            let est = req.estimatedPromptTokens
            switch limiter.admit(key: tag.key, model: req.model, estimatedTokens: est) {
            case nil:
                break
            case .refused(let r)?:
                let e = r.error
                metrics.end(api: api, route: route.rawValue, model: req.model, status: e.status, duration: ContinuousClock.now - started)
                record(tag, model: req.model, status: e.status, route: "limit: \(r.kind.rawValue)")
                var h = HTTPHeaders()
                for (n, v) in r.headers { h.add(name: n, value: v) }
                return errorResponse(e, dialect: route.dialect, headers: h)
            case .admitted(let status)?:
                let lease = LimitLease(limiter: limiter, key: tag.key, estimatedTokens: est)
                let response = await Self.$auditTag.withValue(tag) { await answer(req, request: request, tag: tag, started: started, startNanos: startNanos) }
                return lease.holding(response, status: status)
            }
        }
        return await Self.$auditTag.withValue(tag) {
            await answer(req, request: request, tag: tag, started: started, startNanos: startNanos, localOnly: localOnly)
        }
    }

    /// A tagged request: from the response cache, or served (and kept there when it may be).
    private func answer(_ req: InferenceRequest, request: HTTPServerRequest, tag: AuditTag, started: ContinuousClock.Instant,
                        startNanos: UInt64, localOnly: Bool = false) async -> HTTPServerResponse {
        // The response cache answers this node's own clients (a peer's request was looked up there).
        let key = localOnly ? nil : responseCacheKey(req)
        if let key, let hit = cachedResponse(req, key: key) { return hit }
        let response = await serve(req, request: request, localOnly: localOnly, started: started, startNanos: startNanos)
        return key.map { capturing(response, req, key: $0) } ?? response
    }

    /// Routes a parsed request: cloud or mesh, this node's engines or a peer, retrying elsewhere
    /// while nothing was sent to the client.
    private func serve(_ req: InferenceRequest, request: HTTPServerRequest, localOnly: Bool, started: ContinuousClock.Instant,
                       startNanos: UInt64) async -> HTTPServerResponse {
        let route = req.route
        let api = route.dialect.rawValue
        let bodyBytes = request.bodyBytes
        if localOnly && request.header(Self.escalateHeader) == "1" {
            return await serveEscalated(req, request: request, started: started, startNanos: startNanos)
        }
        var excludedEngines = Set<String>()
        var excludedNodes = Set<String>()
        // Splits that broke under this request (a worker died): planned again once, without that worker.
        var replanned = Set<String>()
        var considered = false
        var failures = FailedAttempts()
        var queuedNanos: UInt64?
        let priority: RequestPriority
        if let p = request.header(Self.priorityHeader) {
            guard let parsed = RequestPriority(header: p) else {
                let e = APIError.invalid(Self.priorityHeader, "must be high, normal or low (got '\(p.prefix(40))')")
                metrics.end(api: api, route: route.rawValue, model: req.model, status: e.status, duration: ContinuousClock.now - started)
                recordError(req.model, status: e.status, message: e.message)
                return errorResponse(e, dialect: route.dialect)
            }
            priority = parsed
        } else {
            priority = .normal
        }
        // The prompt as block hashes: matched against every engine's cache, then recorded in the
        // shadow of the local engine that serves it.
        let prompt = cache == nil ? nil : PromptRendering.chain(req, model: req.model)
        let context = routingContext(prompt)
        // Retry on another engine or node while nothing has been sent to the client.
        while true {
            let nodes = routingView(localOnly: localOnly, excludedEngines: excludedEngines, excludedNodes: excludedNodes)
            var decision: RouteDecision
            let routed = Router.choose(model: req.model, operation: req.operation, promptTokens: req.estimatedPromptTokens,
                                       maxTokens: req.options.maxTokens, nodes: nodes, context: context)
            // Mesh or cloud: decided once per request (a retry after a failed mesh attempt may
            // still escalate when the mesh has nothing left).
            if !localOnly && req.operation != .embedding && (!considered || (try? routed.get()) == nil) {
                considered = true
                if let r = await escalate(req, request: request, routed: routed, started: started, startNanos: startNanos) { return r }
            }
            switch routed {
            case .success(let d):
                decision = d
                if let q = queuedNanos { decision.reason += ", after \(q / 1_000_000) ms in the mesh queue" }
            case .failure(let routingError):
                // No candidate left: after failed attempts, the error names every one of them.
                if !failures.isEmpty {
                    // Holders already out of rotation (other requests saw them fail) are named too.
                    for n in nodes {
                        for eng in n.engines where !eng.healthy && eng.model(named: req.model) != nil {
                            failures.add("\(n.isLocal ? nodeName : n.id)/\(eng.id)", status: 503,
                                         reason: "out of rotation: \(eng.healthDetail ?? "unhealthy")")
                        }
                    }
                }
                let e = failures.isEmpty ? routingError : failures.error(model: req.model)
                // A client can name any model: unknown ones share one label, so metrics stay bounded.
                let label = e.status == 404 ? "(unknown)" : req.model
                metrics.end(api: api, route: route.rawValue, model: label, status: e.status, duration: ContinuousClock.now - started)
                recordError(req.model, status: e.status, message: e.message, localOnly: localOnly)
                // Asked by a peer: it may try another node, since nothing was served here.
                return errorResponse(e, dialect: route.dialect, headers: localOnly ? Self.retryElsewhereHeaders : HTTPHeaders())
            }
            // Every engine is full for longer than queue_after_ms: wait in this node's queue for
            // the first one that frees up anywhere in the mesh (once; then it is routed again).
            if !localOnly, queuedNanos == nil, let queue, queue.shouldQueue(model: req.model, startDelay: decision.startDelaySeconds) {
                let key = request.header(APIResponder.keyNameHeader) ?? ""
                let since = clock.nowNanos()
                let wake = await queue.wait(model: req.model, key: key.isEmpty ? "-" : key, priority: priority)
                queuedNanos = clock.nowNanos() - since
                switch wake {
                case .go:
                    continue
                case .full(let why):
                    let retry = max(1, Int(decision.startDelaySeconds.rounded(.up)))
                    let e = APIError(status: 429, message: "\(why); retry in \(retry) s", type: "server_error", code: "queue_full")
                    metrics.end(api: api, route: route.rawValue, model: req.model, status: 429, duration: ContinuousClock.now - started)
                    recordError(req.model, status: 429, message: e.message)
                    return errorResponse(e, dialect: route.dialect, headers: ["Retry-After": "\(retry)"])
                case .timedOut:
                    let e = APIError(status: 503, message: "no engine serving '\(req.model)' freed up within \(queue.maxWait) in the mesh queue",
                                     type: "server_error", code: "queue_timeout")
                    metrics.end(api: api, route: route.rawValue, model: req.model, status: 503, duration: ContinuousClock.now - started)
                    recordError(req.model, status: 503, message: e.message)
                    return errorResponse(e, dialect: route.dialect, headers: ["Retry-After": "5"])
                case .cancelled:
                    metrics.end(api: api, route: route.rawValue, model: req.model, status: 499, duration: ContinuousClock.now - started)
                    recordError(req.model, status: 499, message: "client closed the request while it waited in the mesh queue")
                    return errorResponse(APIError(status: 499, message: "client closed the request", type: "server_error", code: "cancelled"),
                                         dialect: route.dialect)
                }
            }
            if !decision.isLocal, let node = decision.nodeID, let mesh {
                switch await forward(req, body: bodyBytes, to: node, engine: decision.engineID,
                                     route: { _ in "forwarded to \(node): \(decision.reason)" }, mesh: mesh, started: started) {
                case .response(let r):
                    return r
                case .retry(let status, let reason):
                    metrics.failover()
                    excludedNodes.insert(node)
                    failures.add(node, status: status, reason: reason)
                    logger.warning("peer failed before answering, trying another", metadata: ["peer": "\(node)", "reason": "\(reason)"])
                }
                continue
            }
            guard let engine = nodes.first(where: \.isLocal)?.engines.first(where: { $0.id == decision.engineID }) else { continue }
            let outcome = await attempt(req, clientBody: bodyBytes, engine: engine, decision: decision, prompt: prompt,
                                        startNanos: startNanos, started: started)
            switch outcome {
            case .response(let r):
                return r
            case .retry(let status, let reason):
                metrics.failover()
                failures.add("\(nodeName)/\(engine.id)", status: status, reason: reason)
                if status == 502, engine.models.contains(where: { $0.split == true }), replanned.insert(engine.id).inserted {
                    logger.warning("split failed before answering, planning it again", metadata: ["engine": "\(engine.id)", "reason": "\(reason)"])
                    await engines.settle(engineID: engine.id)
                    continue
                }
                excludedEngines.insert(engine.id)
                logger.warning("engine failed before answering, trying another", metadata: ["engine": "\(engine.id)", "reason": "\(reason)"])
            }
        }
    }

    /// Sends the request to a peer and relays its answer (already in the client's dialect).
    /// - Parameters:
    ///   - engine: the peer's engine routing chose (counted as pending until the answer ends), if any.
    ///   - headers: sent along besides `X-Meshd-Via`.
    ///   - route: the `X-Meshd-Route` to answer with, given the serving node's own.
    func forward(_ req: InferenceRequest, body: [UInt8], to node: String, engine: String?, headers extra: [(String, String)] = [],
                 route: @escaping (String?) -> String, mesh: MeshService, started: ContinuousClock.Instant) async -> Outcome {
        let api = req.route.dialect.rawValue
        let response: ForwardedResponse
        if let engine { mesh.noteForward(node: node, engine: engine, started: true) }
        let noted = ForwardNote(mesh: engine == nil ? nil : mesh, node: node, engine: engine ?? "")
        do {
            var headers = [("X-Meshd-Via", nodeName)] + extra
            for h in Self.auditHeaders(Self.auditTag) where !headers.contains(where: { $0.0 == h.0 }) { headers.append(h) }
            response = try await mesh.forward(to: node, path: req.route.rawValue, headers: headers, body: body)
        } catch let e as MeshForwardError {
            noted.finish()
            switch e {
            case .unreachable(let m), .lost(let m):
                return .retry(status: 502, reason: m)
            case .remote(let status, let message):
                metrics.end(api: api, route: req.route.rawValue, model: req.model, status: status, duration: ContinuousClock.now - started)
                recordError(req.model, status: status, message: "\(node): \(message)")
                return .response(errorResponse(APIError(status: status, message: message, type: "server_error", code: "peer_error"),
                                               dialect: req.clientDialect))
            }
        } catch {
            noted.finish()
            metrics.end(api: api, route: req.route.rawValue, model: req.model, status: 499, duration: ContinuousClock.now - started)
            recordError(req.model, status: 499, message: "client closed the request while \(node) served it")
            return .response(errorResponse(APIError(status: 499, message: "client closed the request", type: "server_error", code: "cancelled"),
                                           dialect: req.clientDialect))
        }
        var headers = HTTPHeaders()
        for (n, v) in response.headers where !Self.isFramingHeader(n) {
            headers.add(name: n, value: v)
        }
        headers.replaceOrAdd(name: "X-Meshd-Via", value: nodeName)
        headers.replaceOrAdd(name: "X-Meshd-Route", value: route(headers.first(name: "X-Meshd-Route")))
        let status = HTTPResponseStatus(statusCode: response.status)
        let streaming = headers.first(name: "content-type").map(Self.isStreamContentType) ?? false
        let metrics = self.metrics
        if !streaming {
            var bytes: [UInt8] = []
            defer { noted.finish() }
            do {
                for try await chunk in response.body {
                    if bytes.isEmpty { bytes = chunk } else { bytes += chunk }
                }
            } catch {
                return .retry(status: 502, reason: "\(error)")
            }
            if response.status >= 400, headers.first(name: Self.retryElsewhereHeader) != nil {
                // The peer served nothing (its engines failed or it no longer has the model): next candidate.
                let message = (try? JSONParser.parse(bytes)).flatMap(ResponseTranslator.engineError)
                    ?? String(decoding: bytes.prefix(512), as: UTF8.self)
                return .retry(status: response.status == 503 ? 503 : 502, reason: message)
            }
            metrics.end(api: api, route: req.route.rawValue, model: req.model, status: response.status, duration: ContinuousClock.now - started)
            return .response(HTTPServerResponse(status: status, headers: headers, body: .buffer(ByteBuffer(bytes: bytes))))
        }
        let dialect = req.clientDialect
        return .response(HTTPServerResponse(status: status, headers: headers, body: .stream { writer in
            var code = response.status
            defer {
                noted.finish()
                metrics.end(api: api, route: req.route.rawValue, model: req.model, status: code, duration: ContinuousClock.now - started)
            }
            do {
                for try await chunk in response.body { try await writer.write(chunk) }
            } catch let e as MeshForwardError {
                code = 502
                try await writer.write(StreamTranslator.errorEvent(dialect: dialect, message: "serving node failed: \(e)"))
            }
        }))
    }

    enum Outcome {
        case response(HTTPServerResponse)
        /// Failed before any byte reached the client: try the next candidate. `status` is what the
        /// failure maps to (502 broken, 503 overloaded or unavailable), `reason` names it.
        case retry(status: Int, reason: String)
    }

    /// Set on an error a node answers a peer's forwarded request with when it served nothing (no
    /// local candidate left): the peer then tries another node.
    static let retryElsewhereHeader = "X-Meshd-Retry-Elsewhere"
    static let retryElsewhereHeaders: HTTPHeaders = [retryElsewhereHeader: "1"]

    /// Most bytes of a stream held back while waiting for the engine's first output.
    static let holdBackLimit = 64 * 1024

    /// An Ollama generate without a prompt or chat without messages, for an engine that is not
    /// Ollama: loads the model (a stored model's llama-server starts), or with `keep_alive: 0`
    /// unloads it, and answers as Ollama does (`done_reason` `load` or `unload`), generating nothing.
    private func loadOnly(_ req: InferenceRequest, engine: EngineSnapshot, decision: RouteDecision,
                          started: ContinuousClock.Instant) async -> HTTPServerResponse {
        let unload = req.keepAliveSeconds == 0
        var headers = HTTPHeaders()
        headers.add(name: "X-Meshd-Node", value: nodeName)
        headers.add(name: "X-Meshd-Engine", value: engine.id)
        headers.add(name: "X-Meshd-Route", value: decision.reason)
        if unload {
            await engines.unload(engineID: engine.id)
        } else if case .failure(let e) = await engines.prepare(engineID: engine.id) {
            let err = APIError(status: 503, message: "cannot load '\(req.model)' on \(engine.id): \(e.message)", type: "server_error",
                               code: "engine_unavailable")
            metrics.end(api: req.route.dialect.rawValue, route: req.route.rawValue, model: req.model, status: 503, duration: ContinuousClock.now - started)
            record(Self.auditTag, model: req.model, status: 503, engine: engine.id, route: err.message)
            return errorResponse(err, dialect: req.clientDialect, headers: headers)
        }
        var body: JSON = ["model": .string(req.model), "created_at": .string(ISO8601.format(nanos: clock.nowNanos())),
                          "done": true, "done_reason": .string(unload ? "unload" : "load")]
        if req.route == .ollamaChat {
            body = body.setting("message", ["role": "assistant", "content": ""])
        } else {
            body = body.setting("response", "")
        }
        metrics.end(api: req.route.dialect.rawValue, route: req.route.rawValue, model: req.model, status: 200, duration: ContinuousClock.now - started)
        record(Self.auditTag, model: req.model, status: 200, engine: engine.id, route: unload ? "unload" : "load")
        return .bytes(.ok, body.serialized(), contentType: "application/json", headers: headers)
    }

    /// Client errors that mean the engine, not the request, failed: connection refused or reset,
    /// empty reply, a body cut off. Timeouts are not retried (the engine may still be working).
    static func isRetryable(_ e: HTTPClientError) -> Bool {
        switch e {
        case .connectFailed, .transport: return true
        case .firstByteTimeout, .idleTimeout, .cancelled, .shutdown: return false
        }
    }

    /// - Parameter clientBody: the client's body bytes, sent as they are when the engine takes them unchanged.
    private func attempt(_ req: InferenceRequest, clientBody: [UInt8], engine: EngineSnapshot, decision: RouteDecision,
                         prompt: PromptChain?, startNanos: UInt64, started: ContinuousClock.Instant) async -> Outcome {
        let api = req.route.dialect.rawValue
        if !req.tokenInputs.isEmpty && engine.kind.dialect == .ollama {
            let e = APIError.invalid("input", "token ids cannot be embedded by \(engine.id), an Ollama engine (it takes text): send the text, or serve \(req.model) from an OpenAI-compatible engine")
            metrics.end(api: api, route: req.route.rawValue, model: req.model, status: e.status, duration: ContinuousClock.now - started)
            record(Self.auditTag, model: req.model, status: e.status, engine: engine.id, route: e.message)
            return .response(errorResponse(e, dialect: req.clientDialect))
        }
        if engine.kind.dialect != .ollama {
            // Ollama's `keep_alive` for engines that do not read it (a stored model's llama-server):
            // meshd keeps or unloads the model after this request (an Ollama engine reads it itself).
            engines.keepAlive(engineID: engine.id, seconds: req.keepAliveSeconds)
            if req.isLoadOnly { return .response(await loadOnly(req, engine: engine, decision: decision, started: started)) }
        }
        var er = EngineRequestBuilder.build(req, engine: engine.kind.dialect, engineModel: decision.engineModel)
        // A llama-server slot (idle) holds the prompt's prefix: pin the request to it, so it is
        // not given to another slot (llama-server picks by similarity, or the least recently used).
        let pinned = engine.kind.dialect == .openai && engine.load.slots != nil ? decision.slot : nil
        if let slot = pinned, er.body["id_slot"] == nil {
            er.body = er.body.setting("id_slot", .integer(slot))
            er.isClientBody = false
        }
        let ctx = ResponseContext(request: req, engine: er, id: Self.newID(req.route), startNanos: startNanos)
        var headers: [(String, String)] = [("Content-Type", "application/json"), ("Accept", er.stream ? "text/event-stream, application/x-ndjson" : "application/json")]
        headers += engines.requestHeaders(engineID: engine.id)
        var httpReq = HTTPClientRequest(method: "POST", url: Self.join(engine.url, er.path), headers: headers,
                                        body: er.isClientBody ? clientBody : er.body.serialized())
        var respHeaders = HTTPHeaders()
        respHeaders.add(name: "X-Meshd-Node", value: nodeName)
        respHeaders.add(name: "X-Meshd-Engine", value: engine.id)
        respHeaders.add(name: "X-Meshd-Route", value: decision.reason)

        // The request's place in the engine's cache shadow, from when it is sent until it ends.
        let shadow = ShadowPlace()
        // `answer`: the generated text's UTF-8 bytes, for the shadow (empty when it has no ticket).
        let tag = Self.auditTag
        let finishMetrics: @Sendable (Int, TokenUsage?, UInt64?, [UInt8]) -> Void = { [engines, metrics] status, usage, firstToken, answer in
            shadow.end(ok: status < 400, usage: usage, answer: answer)
            self.record(tag, model: req.model, status: status, engine: engine.id, route: decision.reason, usage: usage, firstTokenNanos: firstToken)
            let total = ContinuousClock.now - started
            metrics.end(api: api, route: req.route.rawValue, model: req.model, status: status, duration: total)
            if let u = usage { metrics.tokens(model: req.model, prompt: u.promptTokens, completion: u.completionTokens) }
            var ttft: Double?
            if let f = firstToken, f > startNanos {
                ttft = Double(f - startNanos) / 1e9
                metrics.timeToFirstToken(api: api, model: req.model, .nanoseconds(Int64(f - startNanos)))
            }
            engines.requestFinished(engineID: engine.id, usage: usage, firstTokenSeconds: ttft,
                                    totalSeconds: Double(total.nanoseconds) / 1e9, ok: status < 400, overloaded: false)
        }

        // A failure before any byte went to the client: an error response in the client's dialect.
        let fail: (APIError) -> Outcome = { e in
            finishMetrics(e.status, nil, nil, [])
            return .response(self.errorResponse(e, dialect: req.clientDialect, headers: respHeaders))
        }
        // The engine failed before any byte went to the client: free the place, take the engine out
        // of rotation if it is broken, and let the caller try the next candidate.
        // A split that broke is not out of rotation: it ends itself and the next request plans it anew.
        let isSplit = engine.models.contains { $0.split == true }
        let retry: (Int, String, Bool, Bool) -> Outcome = { [engines] status, reason, unhealthy, overloaded in
            shadow.end(ok: false, usage: nil)
            engines.requestFinished(engineID: engine.id, usage: nil, firstTokenSeconds: nil, totalSeconds: 0, ok: false,
                                    overloaded: overloaded)
            if unhealthy { isSplit ? engines.engineFailed(engineID: engine.id) : engines.engineUnreachable(engineID: engine.id, reason: reason) }
            return .retry(status: status, reason: reason)
        }
        // The HTTP client failed: the next candidate if the engine broke, else an error.
        let clientFailed: (any Error) -> Outcome = { error in
            if let e = error as? HTTPClientError, Self.isRetryable(e) { return retry(502, "\(e)", true, false) }
            return fail(self.mapClientError(error))
        }
        // The engine answered an error status before the body: the next candidate for 5xx and 429.
        let statusFailed: (Int, [UInt8]) -> Outcome = { status, body in
            let e = self.engineStatusError(status, body: body, model: req.model)
            guard EngineConcurrency.isRetryable(status: status) else { return fail(e) }
            let overloaded = EngineConcurrency.isOverload(status: status)
            return retry(overloaded ? 503 : 502, "status \(status): \(e.message)", EngineConcurrency.marksUnhealthy(status: status), overloaded)
        }

        switch await engines.acquire(engineID: engine.id) {
        case .admitted:
            break
        case .cancelled:
            metrics.end(api: api, route: req.route.rawValue, model: req.model, status: 499, duration: ContinuousClock.now - started)
            record(Self.auditTag, model: req.model, status: 499, engine: engine.id, route: "client closed the request while it waited for \(engine.id)")
            return .response(errorResponse(APIError(status: 499, message: "client closed the request", type: "server_error", code: "cancelled"),
                                           dialect: req.clientDialect))
        case .unavailable(let why):
            return .retry(status: 503, reason: why)
        }
        switch await engines.prepare(engineID: engine.id) {
        case .success(let url):
            // A split's llama-server gets its port when it starts.
            httpReq.url = Self.join(url, er.path)
            if let prompt, let cache, let t = cache.begin(engine.id, prompt, operation: req.operation, pinned: pinned) { shadow.start(t, in: cache) }
        case .failure(let e):
            engines.requestFinished(engineID: engine.id, usage: nil, firstTokenSeconds: nil, totalSeconds: 0, ok: false, overloaded: false)
            return .retry(status: 503, reason: e.message)
        }
        if !er.stream {
            let head: HTTPClientResponseHead
            let body: [UInt8]
            do {
                (head, body) = try await client.execute(httpReq)
            } catch {
                return clientFailed(error)
            }
            let endNanos = clock.nowNanos()
            if head.status != 200 {
                return statusFailed(head.status, body)
            }
            if req.route == er.engineRoute, let read = ResponseTranslator.relayed(route: req.route, body: body, answer: shadow.isOpen) {
                // Same route: the engine's bytes go out as they came, read only for usage (and the answer).
                finishMetrics(200, read.usage, nil, read.answer)
                return .response(.bytes(.ok, body, contentType: "application/json", headers: respHeaders))
            }
            let json: JSON
            do {
                json = try JSONParser.parse(body)
            } catch {
                return fail(.engineFailed("engine answered with invalid JSON (\(error.description))"))
            }
            do {
                let (out, usage) = try ResponseTranslator.translate(engineBody: json, context: ctx, endNanos: endNanos)
                finishMetrics(200, usage, nil, shadow.isOpen ? Array(ResponseTranslator.answer(json, route: er.engineRoute).utf8) : [])
                if req.route == er.engineRoute {
                    // Same route and dialect: the engine's bytes go out as they came (parsed only for usage).
                    return .response(.bytes(.ok, body, contentType: "application/json", headers: respHeaders))
                }
                return .response(.json(.ok, out, headers: respHeaders))
            } catch {
                return fail(error)
            }
        }

        // Streaming.
        let stream: HTTPClientStreamingResponse
        do {
            stream = try await client.stream(httpReq)
        } catch {
            return clientFailed(error)
        }
        if stream.head.status != 200 {
            var body: [UInt8] = []
            do {
                for try await chunk in stream {
                    body += chunk
                    if body.count > 64 * 1024 { break }
                }
            } catch {}
            stream.cancel()
            return statusFailed(stream.head.status, body)
        }
        // The client's head waits for the engine's first output (prefill happens before it anyway):
        // an engine that dies before producing any is retried elsewhere, as nothing was sent yet.
        var translator = StreamTranslator(context: ctx, collectsAnswer: shadow.isOpen)
        var pending: [UInt8] = []
        var ended = false
        var earlyStatus: Int?
        do {
            var it = stream.makeAsyncIterator()
            while !translator.answerStarted && pending.count < Self.holdBackLimit {
                guard let chunk = try await it.next() else {
                    ended = true
                    break
                }
                pending += try translator.feed(chunk, nowNanos: clock.nowNanos())
            }
        } catch let e as APIError {
            pending += translator.fail(message: e.message, nowNanos: clock.nowNanos())
            ended = true
            earlyStatus = e.status
            stream.cancel()
        } catch let e as HTTPClientError {
            stream.cancel()
            if Self.isRetryable(e) { return retry(502, "stream broke before any output: \(e)", true, false) }
            return fail(mapClientError(e))
        } catch {
            stream.cancel()
            return fail(.engineFailed("\(error)"))
        }
        if ended && !translator.finished {
            return retry(502, "engine closed the stream before any output", true, false)
        }
        respHeaders.add(name: "Content-Type", value: req.clientDialect == .openai ? "text/event-stream; charset=utf-8" : "application/x-ndjson")
        respHeaders.add(name: "Cache-Control", value: "no-cache")
        let clock = self.clock
        let logger = self.logger
        let held = translator
        let first = pending
        let sourceEnded = ended
        let endStatus = earlyStatus
        return .response(HTTPServerResponse(status: .ok, headers: respHeaders, body: .stream { writer in
            var translator = held
            var status = 200
            defer {
                finishMetrics(status, translator.usage ?? (translator.contentChunks > 0 ? TokenUsage(promptTokens: 0, completionTokens: translator.contentChunks) : nil),
                              translator.firstTokenNanos, translator.answer)
            }
            do {
                if !first.isEmpty { try await writer.write(first) }
                if sourceEnded {
                    stream.cancel()
                    let tail = translator.finish(nowNanos: clock.nowNanos())
                    if !tail.isEmpty { try await writer.write(tail) }
                    if let endStatus { status = endStatus }
                    return
                }
                status = try await Self.pump(stream, through: &translator, to: writer, clock: clock, cancel: { stream.cancel() }) { error in
                    guard let e = error as? HTTPClientError else { return nil }
                    if e == .cancelled { return .cancelled }
                    logger.warning("engine stream failed", metadata: ["engine": "\(engine.id)", "error": "\(e)"])
                    return .failed(e == .idleTimeout ? 504 : 502, "engine stream failed: \(e)")
                }
            } catch {
                status = 499
                throw error
            }
        }))
    }

    /// How a source's error ends a relayed stream.
    enum StreamFailure {
        /// Our side cancelled (the client left): nothing more to write.
        case cancelled
        /// The source failed: the client gets an error event with this status and message.
        case failed(Int, String)
    }

    /// Feeds `source` through `translator` to `writer` chunk by chunk and closes the stream
    /// properly (the translator's tail, or an error event). Returns the status for metrics;
    /// rethrows when the client went away. `classify` maps the source's own errors.
    static func pump<S: AsyncSequence>(_ source: S, through translator: inout StreamTranslator, to writer: ResponseBodyWriter,
                                       clock: any WallClock, cancel: () -> Void,
                                       classify: (any Error) -> StreamFailure?) async throws -> Int where S.Element == [UInt8] {
        do {
            for try await chunk in source {
                let out = try translator.feed(chunk, nowNanos: clock.nowNanos())
                if !out.isEmpty { try await writer.write(out) }
                if translator.finished { break }
            }
        } catch let e as APIError {
            try await writer.write(translator.fail(message: e.message, nowNanos: clock.nowNanos()))
            cancel()
            return e.status
        } catch {
            switch classify(error) {
            case .failed(let status, let message)? where !Task.isCancelled:
                try await writer.write(translator.fail(message: message, nowNanos: clock.nowNanos()))
                return status
            case .cancelled?, .failed?:
                cancel()
                throw CancellationError()
            case nil:
                // The client went away (write failed) or the task was cancelled.
                cancel()
                throw error
            }
        }
        cancel()
        let tail = translator.finish(nowNanos: clock.nowNanos())
        if !tail.isEmpty { try await writer.write(tail) }
        return 200
    }

    private func mapClientError(_ error: any Error) -> APIError {
        switch error as? HTTPClientError {
        case .firstByteTimeout?: return .engineTimeout("no response within \(timeouts.firstByteMs) ms")
        case .idleTimeout?: return .engineTimeout("no data for \(timeouts.betweenChunksMs) ms")
        case .cancelled?: return APIError(status: 499, message: "client closed the request", type: "server_error", code: "cancelled")
        case .shutdown?: return .noHealthyEngine("node is shutting down")
        case .connectFailed(let m)?: return .noHealthyEngine(m)
        case .transport(_, let m)?: return .engineFailed(m)
        case nil: return .engineFailed("\(error)")
        }
    }

    private func engineStatusError(_ status: Int, body: [UInt8], model: String) -> APIError {
        let msg = (try? JSONParser.parse(body)).flatMap(ResponseTranslator.engineError) ?? String(decoding: body.prefix(512), as: UTF8.self)
        if status == 404 {
            return APIError(status: 404, message: "engine does not have model '\(model)': \(msg)", param: "model", code: "model_not_found")
        }
        if (400..<500).contains(status) && status != 429 {
            return APIError(status: status, message: msg)
        }
        if status == 429 || status == 503 {
            return APIError(status: 503, message: "engine is overloaded: \(msg)", type: "server_error", code: "engine_overloaded")
        }
        return .engineFailed("status \(status): \(msg)")
    }

    func errorResponse(_ e: APIError, dialect: Dialect, headers: HTTPHeaders = HTTPHeaders()) -> HTTPServerResponse {
        var h = headers
        h.replaceOrAdd(name: "X-Meshd-Node", value: nodeName)
        return .json(HTTPResponseStatus(statusCode: e.status), e.body(for: dialect), headers: h)
    }

    /// Headers of a forwarded answer that this node sets itself (framing and connection).
    static func isFramingHeader(_ name: String) -> Bool {
        ASCII.equalsIgnoringCase(name, "content-length") || ASCII.equalsIgnoringCase(name, "transfer-encoding")
            || ASCII.equalsIgnoringCase(name, "connection")
    }

    /// Whether a content type is a stream meshd relays (SSE or NDJSON).
    static func isStreamContentType(_ value: String) -> Bool {
        ASCII.contains(value, "event-stream") || ASCII.contains(value, "ndjson")
    }

    static func join(_ base: String, _ path: String) -> String {
        base.hasSuffix("/") ? String(base.dropLast()) + path : base + path
    }

    static func newID(_ route: InferenceRoute) -> String {
        let prefix: String
        switch route {
        case .openaiCompletion: prefix = "cmpl-"
        default: prefix = "chatcmpl-"
        }
        // A process-wide counter through a bijective mixer, keyed by one random draw at start: unique
        // ids that look random, without a getrandom syscall per request.
        let n = idCounter.wrappingAdd(1, ordering: .relaxed).newValue
        var out = Array(prefix.utf8)
        out.reserveCapacity(out.count + 24)
        appendHex(mix(idKey.0 &+ n), digits: 16, to: &out)
        appendHex(mix(idKey.1 ^ n), digits: 8, to: &out)
        return String(decoding: out, as: UTF8.self)
    }

    /// The SplitMix64 finaliser: a bijection on 64 bits that scatters consecutive inputs.
    static func mix(_ x: UInt64) -> UInt64 {
        var z = x &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    private static let hexDigits = Array("0123456789abcdef".utf8)

    /// Appends the low `digits` hex digits of `v` (most significant first).
    static func appendHex(_ v: UInt64, digits: Int, to out: inout [UInt8]) {
        for k in stride(from: digits - 1, through: 0, by: -1) {
            out.append(hexDigits[Int((v >> UInt64(4 * k)) & 0xF)])
        }
    }
}

/// Response ids: a counter and a random key drawn once per process (see `InferenceProxy.newID`).
private let idCounter = Atomic<UInt64>(0)
private let idKey: (UInt64, UInt64) = {
    var g = SystemRandomNumberGenerator()
    return (g.next(), g.next())
}()

/// Ends a forward's pending count exactly once, whichever path the response takes.
final class ForwardNote: Sendable {
    private let mesh: MeshService?
    private let node: String
    private let engine: String
    private let done = Mutex(false)

    /// `mesh` nil: nothing to count (a forward that routing did not pick an engine for).
    init(mesh: MeshService?, node: String, engine: String) {
        self.mesh = mesh
        self.node = node
        self.engine = engine
    }

    func finish() {
        let first = done.withLock { d -> Bool in
            defer { d = true }
            return !d
        }
        if first { mesh?.noteForward(node: node, engine: engine, started: false) }
    }

    deinit { finish() }
}
