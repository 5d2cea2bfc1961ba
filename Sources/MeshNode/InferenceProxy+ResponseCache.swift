import MeshCore
import MeshHTTPServer
import NIOCore
import NIOHTTP1
import Synchronization

/// The node's response cache (`cache:`): answers to deterministic requests this node's clients
/// asked, whoever served them (its engines, a peer, the cloud), replayed in either dialect.
public final class ResponseCacheService: Sendable {
    private let store: Mutex<ResponseCacheStore>
    let clock: any WallClock

    public init(settings: ResponseCacheSettings, clock: any WallClock) {
        store = Mutex(ResponseCacheStore(maxBytes: settings.maxBytes, maxEntryBytes: settings.maxEntryBytes, ttlSeconds: settings.ttlSeconds))
        self.clock = clock
    }

    func get(_ key: String) -> CachedAnswer? {
        let now = clock.nowNanos()
        return store.withLock { $0.get(key, nowNanos: now) }
    }

    func put(_ key: String, _ answer: CachedAnswer) {
        let now = clock.nowNanos()
        store.withLock { _ = $0.put(key, answer, nowNanos: now) }
    }

    /// Prometheus lines: hits, misses, answers kept, evictions, bytes and entries.
    func metricsText() -> String {
        let s = store.withLock { $0 }
        return """
        # HELP meshd_response_cache_hits_total Requests answered from the response cache.
        # TYPE meshd_response_cache_hits_total counter
        meshd_response_cache_hits_total \(s.hits)
        # HELP meshd_response_cache_misses_total Cacheable requests the response cache did not hold.
        # TYPE meshd_response_cache_misses_total counter
        meshd_response_cache_misses_total \(s.misses)
        # HELP meshd_response_cache_stores_total Answers kept by the response cache.
        # TYPE meshd_response_cache_stores_total counter
        meshd_response_cache_stores_total \(s.stores)
        # HELP meshd_response_cache_evictions_total Answers dropped to stay within cache.max_bytes.
        # TYPE meshd_response_cache_evictions_total counter
        meshd_response_cache_evictions_total \(s.evictions)
        # HELP meshd_response_cache_bytes Bytes the response cache holds.
        # TYPE meshd_response_cache_bytes gauge
        meshd_response_cache_bytes \(s.bytes)
        # HELP meshd_response_cache_entries Answers the response cache holds.
        # TYPE meshd_response_cache_entries gauge
        meshd_response_cache_entries \(s.count)

        """
    }
}

/// Reads a relayed stream's answer as it goes out (shared by the writer's sink and the end).
private final class StreamCapture: Sendable {
    let translator: Mutex<StreamTranslator>
    init(_ t: StreamTranslator) { translator = Mutex(t) }
}

extension InferenceProxy {
    static let cacheHeader = "X-Meshd-Cache"

    /// The response cache's key for a client's request, or nil (no cache, or not cacheable).
    func responseCacheKey(_ req: InferenceRequest) -> String? {
        guard responseCache != nil else { return nil }
        let holders = routingView(localOnly: false).flatMap(\.engines).compactMap { $0.model(named: req.model) }
        return ResponseCachePolicy.key(req, identity: ResponseCachePolicy.identity(model: req.model, holders: holders))
    }

    /// The kept answer for `key`, replayed in the request's dialect (streamed or not); nil on a miss.
    func cachedResponse(_ req: InferenceRequest, key: String) -> HTTPServerResponse? {
        guard let cache = responseCache, let answer = cache.get(key), answer.canAnswer(req) else { return nil }
        let now = clock.nowNanos()
        let tag = Self.auditTag
        let ctx = ResponseContext(clientRoute: req.route, engineRoute: req.route, clientModel: req.model, includeUsage: req.includeUsage,
                                  id: Self.newID(req.route), startNanos: tag?.startNanos ?? now)
        var headers = HTTPHeaders()
        headers.add(name: "X-Meshd-Node", value: nodeName)
        headers.add(name: "X-Meshd-Route", value: "response cache")
        headers.add(name: Self.cacheHeader, value: "hit")
        let started = tag?.started ?? .now
        metrics.end(api: req.route.dialect.rawValue, route: req.route.rawValue, model: req.model, status: 200, duration: ContinuousClock.now - started)
        metrics.tokens(model: req.model, prompt: answer.promptTokens, completion: answer.completionTokens)
        record(tag, model: req.model, status: 200, engine: "cache", route: "response cache", usage: answer.usage,
               firstTokenNanos: req.stream ? now : nil, cacheHit: true)
        if req.stream {
            headers.add(name: "Content-Type", value: req.clientDialect == .openai ? "text/event-stream; charset=utf-8" : "application/x-ndjson")
            headers.add(name: "Cache-Control", value: "no-cache")
            return HTTPServerResponse(status: .ok, headers: headers, body: .buffer(ByteBuffer(bytes: ResponseCachePolicy.stream(answer, context: ctx, nowNanos: now))))
        }
        return .json(.ok, ResponseCachePolicy.body(answer, context: ctx, nowNanos: now), headers: headers)
    }

    /// `response` with its answer kept under `key` once it has gone out whole (200, text only).
    func capturing(_ response: HTTPServerResponse, _ req: InferenceRequest, key: String) -> HTTPServerResponse {
        guard let cache = responseCache, response.status == .ok else { return response }
        var out = response
        out.headers.replaceOrAdd(name: Self.cacheHeader, value: "miss")
        switch response.body {
        case .buffer(let b):
            if let json = try? JSONParser.parse(Array(b.readableBytesView)), let a = ResponseCachePolicy.capture(body: json, route: req.route) {
                cache.put(key, a)
            }
        case .stream(let produce):
            let ctx = ResponseContext(clientRoute: req.route, engineRoute: req.route, clientModel: req.model, includeUsage: true,
                                      id: "", startNanos: 0)
            let capture = StreamCapture(StreamTranslator(context: ctx, collectsAnswer: true))
            let clock = self.clock
            out.body = .stream { writer in
                try await produce(ResponseBodyWriter { bytes in
                    capture.translator.withLock { t in _ = try? t.feed(bytes, nowNanos: clock.nowNanos()) }
                    try await writer.write(bytes)
                })
                if let a = capture.translator.withLock({ ResponseCachePolicy.capture(stream: $0) }) { cache.put(key, a) }
            }
        }
        return out
    }
}

