import Foundation
import MeshCloud
import MeshCore
import Synchronization
import MeshHTTPClient
import MeshHTTPServer
import MeshLedger
import MeshNet
import NIOCore
import NIOHTTP1

/// What the proxy knows of the cloud: this node's `cloud:` section, and the gateway role if this
/// node has providers.
public struct CloudSetup: Sendable {
    private let live: Live<CloudConfig>
    /// The `cloud:` section now (a reload replaces it).
    var config: CloudConfig { live.value }
    let gateway: Gateway?

    public init(config: CloudConfig) {
        live = Live(config)
        gateway = nil
    }

    init(config: CloudConfig, gateway: Gateway?) {
        live = Live(config)
        self.gateway = gateway
    }

    /// Takes a reloaded `cloud:` section (escalation delay, local-only models and keys).
    func set(_ config: CloudConfig) { live.set(config) }
}

/// A value a configuration reload replaces; readers take what it holds now.
final class Live<T: Sendable>: Sendable {
    private let v: Mutex<T>
    init(_ value: T) { v = Mutex(value) }
    var value: T { v.withLock { $0 } }
    func set(_ value: T) { v.withLock { $0 = value } }
}

extension InferenceProxy {
    /// Header a node sets when it forwards a request to a gateway to be served from the cloud.
    static let escalateHeader = "X-Meshd-Escalate"

    /// The local → LAN → cloud decision for one request. Returns nil to go on with the mesh route
    /// (`routed`), or the final response (served from the cloud here or by a gateway peer, or an
    /// error that says why neither can serve).
    func escalate(_ req: InferenceRequest, request: HTTPServerRequest, routed: Result<RouteDecision, APIError>,
                  started: ContinuousClock.Instant, startNanos: UInt64) async -> HTTPServerResponse? {
        let keyName = request.header(APIResponder.keyNameHeader)
        let est = PriceTable.estimatePromptTokens(utf8Bytes: request.body.readableBytes, messages: req.messages.count)
        guard let (decision, peer) = cloudDecision(model: req.model, keyName: keyName, routed: routed, estimatedPromptTokens: est,
                                                   maxTokens: req.options.maxTokens) else { return nil }
        switch decision {
        case .mesh: return nil
        case .refuse(let e): return finishError(req, e, started: started)
        case .cloud(let candidates, let why):
            if let gw = cloud.gateway {
                return await serveFromCloud(req, gateway: gw, candidates: candidates, why: why, keyName: keyName, estimatedPromptTokens: est,
                                            meshWait: (try? routed.get())?.expectedWaitSeconds, started: started, startNanos: startNanos)
            }
            guard let mesh, let peer else { return nil }
            var headers: [(String, String)] = [(Self.escalateHeader, "1")]
            if let keyName { headers.append((APIResponder.keyNameHeader, keyName)) }
            switch await forward(req, body: request.bodyBytes, to: peer, engine: nil, headers: headers,
                                 route: { theirs in theirs.map { "\(why): \($0)" } ?? why }, mesh: mesh, started: started) {
            case .response(let r):
                return r
            case .retry(_, let reason):
                if (try? routed.get()) != nil { return nil }
                return finishError(req, .noHealthyEngine("gateway \(peer) unreachable: \(reason)"), started: started)
            }
        }
    }

    /// The escalation decision for `model` given the mesh route, with the gateway peer that would
    /// serve a cloud decision (nil when this node is the gateway). nil: no gateway anywhere, so the
    /// router's answer stands.
    func cloudDecision(model: String, keyName: String?, routed: Result<RouteDecision, APIError>, estimatedPromptTokens est: Int,
                       maxTokens: Int?) -> (EscalationDecision, String?)? {
        let now = clock.nowNanos()
        if let gw = cloud.gateway {
            let policy = EscalationPolicy(cloud: gw.cloud, prices: gw.prices, hasGateway: true)
            return (policy.decide(model: model, apiKeyName: keyName, mesh: routed, estimatedPromptTokens: est, maxTokens: maxTokens,
                                  healthy: { gw.client.health.isAvailable($0, nowNanos: now) }), nil)
        }
        guard let mesh, let (peer, advert) = gatewayPeer(mesh) else { return nil }
        // Another node is the gateway: decide with what it advertises, and let it pick the provider.
        var cc = cloud.config
        cc.providers = advert.providers.filter(\.healthy).map { p in
            var c = CloudProviderConfig(name: p.name, kind: p.kind)
            c.models = p.models
            return c
        }
        var advertised: [String: ModelPrice] = [:]
        for p in advert.providers { for m in p.models { advertised[m] = ModelPrice(input: 0, output: 0) } }
        let policy = EscalationPolicy(cloud: cc, prices: PriceTable(models: advertised), hasGateway: true)
        var d = policy.decide(model: model, apiKeyName: keyName, mesh: routed, estimatedPromptTokens: est, maxTokens: maxTokens,
                              healthy: { _ in true })
        if case .cloud(let c, let why) = d { d = .cloud(candidates: c, why: "\(why) via gateway \(peer)") }
        return (d, peer)
    }

    /// The cloud models the mesh can serve through its gateway (this node, or the peer that
    /// advertises providers), with the provider that serves each: what model lists show besides
    /// the engines' models. Only healthy providers' models, never local-only ones (a gateway does
    /// not advertise those).
    func cloudModels() -> [(model: String, provider: String)] {
        let advert: GatewayAdvert
        if let gw = cloud.gateway {
            advert = gw.advert()
        } else if let mesh, let (_, a) = gatewayPeer(mesh) {
            advert = a
        } else {
            return []
        }
        var seen = Set<String>()
        var out: [(String, String)] = []
        for p in advert.providers where p.healthy {
            for m in p.models.sorted() where !cloud.config.localOnlyModels.contains(m) && seen.insert(m).inserted { out.append((m, p.name)) }
        }
        return out
    }

    /// A live peer that advertises cloud providers (the first by name).
    func gatewayPeer(_ mesh: MeshService) -> (String, GatewayAdvert)? {
        mesh.peers().compactMap { e in e.state.gateway.map { (e.state.id, $0) } }.sorted { $0.0 < $1.0 }.first
    }

    func finishError(_ req: InferenceRequest, _ e: APIError, started: ContinuousClock.Instant,
                     headers: HTTPHeaders = HTTPHeaders()) -> HTTPServerResponse {
        let label = e.status == 404 ? "(unknown)" : req.model
        metrics.end(api: req.route.dialect.rawValue, route: req.route.rawValue, model: label, status: e.status,
                    duration: ContinuousClock.now - started)
        recordError(req.model, status: e.status, message: e.message)
        return errorResponse(e, dialect: req.clientDialect, headers: headers)
    }

    /// Serves a request a peer forwarded to this gateway for the cloud.
    func serveEscalated(_ req: InferenceRequest, request: HTTPServerRequest, started: ContinuousClock.Instant,
                        startNanos: UInt64) async -> HTTPServerResponse {
        guard let gw = cloud.gateway else {
            return finishError(req, .noHealthyEngine("\(nodeName) is not a gateway (no cloud.providers)"), started: started)
        }
        let keyName = request.header(APIResponder.keyNameHeader)
        let est = PriceTable.estimatePromptTokens(utf8Bytes: request.body.readableBytes, messages: req.messages.count)
        let policy = EscalationPolicy(cloud: gw.cloud, prices: gw.prices, hasGateway: true)
        if policy.isLocalOnly(model: req.model, apiKeyName: keyName) {
            return finishError(req, APIError(status: 403, message: "'\(req.model)' is local-only", code: "local_only"), started: started)
        }
        let now = clock.nowNanos()
        let candidates = policy.cloudCandidates(model: req.model, estimatedPromptTokens: est, maxTokens: req.options.maxTokens,
                                                healthy: { gw.client.health.isAvailable($0, nowNanos: now) })
        guard let first = candidates.first else {
            return finishError(req, .noHealthyEngine("no healthy cloud provider with a price serves '\(req.model)'"), started: started)
        }
        return await serveFromCloud(req, gateway: gw, candidates: candidates, why: "escalated to \(first.provider) (\(first.model)) at a peer's request",
                                    keyName: keyName, estimatedPromptTokens: est, meshWait: nil, started: started, startNanos: startNanos)
            ?? finishError(req, .noHealthyEngine("cloud unavailable"), started: started)
    }

    /// Tries the candidates in order: reserve the worst case in the ledger, send, settle to the
    /// real usage (or release when nothing was spent), falling back to the next provider before the
    /// first byte. Returns nil only when the budget refuses and the mesh can serve instead: when
    /// `meshWait` (the mesh route's expected wait, seconds) is within `timeouts.first_byte_ms`, the
    /// request queues there; a longer queue would only end in a timeout, so the client gets 429.
    func serveFromCloud(_ req: InferenceRequest, gateway gw: Gateway, candidates: [CloudCandidate], why: String, keyName: String?,
                        estimatedPromptTokens est: Int, meshWait: Double?, started: ContinuousClock.Instant,
                        startNanos: UInt64) async -> HTTPServerResponse? {
        let id = Self.newID(req.route)
        var denial: BudgetDenial?
        var lastError: APIError?
        for c in candidates {
            guard let settings = gw.settings[c.provider], let price = gw.prices.price(provider: c.provider, model: c.model) else { continue }
            let rid = "\(id)-\(c.provider)"
            // The prompt as the provider will bill it: the estimate grown by the overshoot its
            // answers taught (issue 17); the first request to a model nothing is known of goes
            // alone, and the others wait for its answer.
            guard let (reservePrompt, isProbe) = await overshootAdmission(gw, c, estimated: est) else {
                lastError = lastError ?? APIError(status: 503, message: "the first request to \(c.provider) (\(c.model)) is still running: its answer decides how much to reserve; retry shortly",
                                                  type: "server_error", code: "cloud_probe_pending")
                continue
            }
            let endProbe = { if isProbe { gw.overshoot.finishProbe(provider: c.provider, model: c.model) } }
            let worstCase = gw.prices.worstCase(provider: c.provider, model: c.model, estimatedPromptTokens: reservePrompt,
                                                maxTokens: req.options.maxTokens) ?? c.worstCase
            do {
                switch try gw.ledger.reserve(BudgetRequest(id: rid, provider: c.provider, apiKey: keyName, amount: worstCase),
                                             model: c.model, estimatedPromptTokens: est) {
                case .failure(let d):
                    endProbe()
                    denial = denial ?? d
                    continue
                case .success(let alerts):
                    gw.alert(alerts)
                }
            } catch {
                endProbe()
                // The ledger cannot record the reservation: spend nothing (fail closed).
                gw.logger.error("budget ledger write failed; not sending to the cloud", metadata: ["error": "\(error)"])
                lastError = .engineFailed("budget ledger unavailable")
                break
            }
            let release = {
                _ = try? gw.ledger.release(id: rid)
                endProbe()
            }
            guard gw.client.admit(settings) else {
                release()
                continue
            }
            let er: EngineRequest
            do {
                er = try ProviderRequestBuilder.build(req, kind: c.kind, model: c.model)
            } catch {
                release()
                return finishError(req, error, started: started)
            }
            var headers = HTTPHeaders()
            headers.add(name: "X-Meshd-Node", value: nodeName)
            headers.add(name: "X-Meshd-Provider", value: c.provider)
            headers.add(name: "X-Meshd-Route", value: c.provider == candidates.first?.provider ? why : "\(why); fell back to \(c.provider)")
            let ctx = ResponseContext(clientRoute: req.route, engineRoute: er.engineRoute, clientModel: req.model,
                                      includeUsage: req.includeUsage, id: id, startNanos: startNanos)
            let tag = Self.auditTag
            let settle: @Sendable (CloudUsage?, Int) -> TokenUsage = { usage, seenChunks in
                if let billed = usage?.promptTokens { gw.overshoot.learn(provider: c.provider, model: c.model, estimated: est, billed: billed) }
                if isProbe { gw.overshoot.finishProbe(provider: c.provider, model: c.model) }
                let prompt = usage?.promptTokens ?? est
                let completion = max(usage?.completionTokens ?? 0, seenChunks)
                let cost = price.cost(promptTokens: prompt, cachedPromptTokens: usage?.cachedPromptTokens ?? 0, completionTokens: completion)
                if let alerts = try? gw.ledger.settle(id: rid, model: c.model, promptTokens: prompt, completionTokens: completion, cost: cost) {
                    gw.alert(alerts)
                }
                gw.spentByProvider.withLock { $0[c.provider, default: 0] += Int64(cost) }
                return TokenUsage(promptTokens: prompt, completionTokens: completion, cachedTokens: usage?.cachedPromptTokens)
            }
            // The answer's record, with what it cost.
            let recordCloud: @Sendable (Int, TokenUsage, UInt64?) -> Void = { status, usage, firstToken in
                let cost = price.cost(promptTokens: usage.promptTokens, cachedPromptTokens: usage.cachedTokens ?? 0,
                                      completionTokens: usage.completionTokens)
                self.record(tag, model: req.model, status: status, engine: c.provider, provider: c.provider,
                       route: c.provider == candidates.first?.provider ? why : "\(why); fell back to \(c.provider)", usage: usage,
                       firstTokenNanos: firstToken, costMicros: Int64(cost))
            }
            if !req.stream {
                do {
                    let r = try await gw.client.send(er, to: settings, model: c.model, id: id)
                    let (out, _) = try ResponseTranslator.translate(engineBody: r.body, context: ctx, endNanos: clock.nowNanos())
                    let usage = settle(r.usage, 0)
                    recordCloud(200, usage, nil)
                    metrics.end(api: req.route.dialect.rawValue, route: req.route.rawValue, model: req.model, status: 200,
                                duration: ContinuousClock.now - started)
                    metrics.tokens(model: req.model, prompt: usage.promptTokens, completion: usage.completionTokens)
                    return .json(.ok, out, headers: headers)
                } catch let e as CloudError {
                    release()
                    lastError = Self.apiError(e, provider: c.provider)
                    metrics.failover()
                    logger.warning("cloud provider failed; trying the next", metadata: ["provider": "\(c.provider)", "error": "\(e)"])
                    continue
                } catch {
                    // The answer arrived but could not be translated: it was (probably) billed.
                    _ = settle(nil, 0)
                    return finishError(req, (error as? APIError) ?? .engineFailed("\(error)"), started: started, headers: headers)
                }
            }
            let stream: CloudStream
            do {
                stream = try await gw.client.stream(er, to: settings, model: c.model, id: id)
            } catch {
                release()
                lastError = Self.apiError(error, provider: c.provider)
                metrics.failover()
                logger.warning("cloud provider failed; trying the next", metadata: ["provider": "\(c.provider)", "error": "\(error)"])
                continue
            }
            headers.add(name: "Content-Type", value: req.clientDialect == .openai ? "text/event-stream; charset=utf-8" : "application/x-ndjson")
            headers.add(name: "Cache-Control", value: "no-cache")
            let clock = self.clock
            let metrics = self.metrics
            return HTTPServerResponse(status: .ok, headers: headers, body: .stream { writer in
                var translator = StreamTranslator(context: ctx)
                var status = 200
                defer {
                    // Billed for what was generated, also when the stream was cut or the client left.
                    let usage = settle(stream.usage, translator.contentChunks)
                    recordCloud(status, usage, translator.firstTokenNanos)
                    metrics.end(api: req.route.dialect.rawValue, route: req.route.rawValue, model: req.model, status: status,
                                duration: ContinuousClock.now - started)
                    metrics.tokens(model: req.model, prompt: usage.promptTokens, completion: usage.completionTokens)
                }
                do {
                    status = try await Self.pump(stream, through: &translator, to: writer, clock: clock, cancel: { stream.cancel() }) { error in
                        guard let e = error as? CloudError else { return nil }
                        return e == .cancelled ? .cancelled : .failed(502, "cloud provider \(c.provider): \(e)")
                    }
                } catch {
                    status = 499
                    throw error
                }
            })
        }
        if let denial {
            if let w = meshWait, w * 1000 <= Double(timeouts.firstByteMs) {
                logger.notice("cloud budget exhausted; queueing in the mesh instead", metadata: ["cap": "\(denial.scope) \(denial.period.rawValue)"])
                return nil
            }
            var h = HTTPHeaders()
            h.add(name: "X-Meshd-Node", value: nodeName)
            h.add(name: "Retry-After", value: "\(max(1, denial.resetsAt - Int64(clock.nowNanos() / 1_000_000_000)))")
            return finishError(req, APIError(status: 429, message: "\(denial.description) (\(ISO8601.format(nanos: UInt64(denial.resetsAt) * 1_000_000_000)))",
                                             type: "insufficient_quota", code: "budget_exceeded"), started: started, headers: h)
        }
        return finishError(req, lastError ?? .noHealthyEngine("no cloud provider could serve '\(req.model)'"), started: started)
    }

    /// The prompt tokens to reserve for candidate `c` and whether this request is its probe; nil
    /// when another request's probe is still running after `timeouts.first_byte_ms`.
    func overshootAdmission(_ gw: Gateway, _ c: CloudCandidate, estimated: Int) async -> (Int, Bool)? {
        let deadline = ContinuousClock.now + .milliseconds(timeouts.firstByteMs)
        while true {
            switch gw.overshoot.admission(provider: c.provider, model: c.model, estimated: estimated) {
            case .reserve(let n): return (n, false)
            case .probe: return (estimated, true)
            case .wait:
                guard ContinuousClock.now < deadline, !Task.isCancelled else { return nil }
                await gw.overshoot.waitForProbe(provider: c.provider, model: c.model, timeout: deadline - ContinuousClock.now)
            }
        }
    }

    static func apiError(_ error: any Error, provider: String) -> APIError {
        switch error as? CloudError {
        case .rateLimited(let after)?:
            return APIError(status: 429, message: "cloud provider \(provider) is rate-limited\(after.map { " for \(Int($0)) s" } ?? "")",
                            type: "server_error", code: "provider_rate_limited")
        case .http(let status, let message)?:
            return APIError(status: 502, message: "cloud provider \(provider) answered \(status): \(message)", type: "server_error", code: "provider_error")
        default:
            return .engineFailed("cloud provider \(provider): \(error)")
        }
    }
}

extension Gateway {
    /// Budget alerts: to the log, and to the webhook if one is configured.
    func alert(_ alerts: [BudgetAlert]) {
        for a in alerts {
            logger.warning("budget alert: cap nearly used", metadata: [
                "scope": "\(a.scope)", "period": "\(a.period.rawValue)", "limit_usd": "\(a.limit.usd)", "used_usd": "\(a.used.usd)",
                "alert_at": "\(budget.alertAt)"])
            alertCount.withLock { $0 += 1 }
            onAlert.withLock { $0 }?(Alert(kind: .budgetThreshold, subject: "\(a.scope) \(a.period.rawValue)",
                                           message: "budget \(a.scope) (\(a.period.rawValue)) at \(a.used.usd) of \(a.limit.usd) USD",
                                           sinceNanos: clock.nowNanos()))
            guard let url = budget.webhook else { continue }
            let body: JSON = ["event": "budget_alert", "scope": .string("\(a.scope)"), "period": .string(a.period.rawValue),
                              "limit_usd": .number(a.limit.usd), "used_usd": .number(a.used.usd), "alert_at": .number(budget.alertAt)]
            postWebhook(client.http, url: url, body: body, logger: logger, what: "budget alert")
        }
    }
}
