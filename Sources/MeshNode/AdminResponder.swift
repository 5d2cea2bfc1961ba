import Foundation
import MeshCore
import MeshHTTPServer
import NIOCore
import NIOHTTP1

/// The admin API on the node's unix socket (mode 0600): what `meshctl` reads.
/// `GET /v1/status`, `/v1/engines`, `/v1/models`, `/v1/route?model=NAME`.
struct AdminResponder: HTTPResponder {
    let nodeName: String
    let engines: any EngineDirectory
    let clock: any WallClock
    let httpServer: HTTPServer?
    let startedNanos: UInt64

    init(nodeName: String, engines: any EngineDirectory, clock: any WallClock, httpServer: HTTPServer?) {
        self.nodeName = nodeName
        self.engines = engines
        self.clock = clock
        self.httpServer = httpServer
        self.startedNanos = clock.nowNanos()
    }

    func respond(to request: HTTPServerRequest) async -> HTTPServerResponse {
        guard request.method == .GET || request.method == .HEAD else {
            return .json(.methodNotAllowed, ["error": "only GET is supported on the admin socket"])
        }
        let snap = engines.snapshot()
        switch request.path {
        case "/v1/status":
            let healthy = snap.filter(\.healthy).count
            return .json(.ok, [
                "node": .string(nodeName), "version": .string(APIResponder.version),
                "uptime_seconds": .number(Double(clock.nowNanos() - startedNanos) / 1e9),
                "engines_total": .integer(snap.count), "engines_healthy": .integer(healthy),
                "in_flight": .integer(snap.reduce(0) { $0 + $1.load.inFlight }),
                "models": .array(Router.availableModels(snap).map(JSON.string)),
            ])
        case "/v1/engines":
            return .json(.ok, .array(snap.map(Self.engineJSON)))
        case "/v1/models":
            var byName: [String: (ModelInfo, [String])] = [:]
            var order: [String] = []
            for e in snap where e.healthy {
                for m in e.models {
                    if byName[m.name] == nil { order.append(m.name); byName[m.name] = (m, []) }
                    byName[m.name]!.1.append(e.id)
                    if m.loaded { byName[m.name]!.0.loaded = true }
                }
            }
            return .json(.ok, .array(order.map { n in
                let (m, ids) = byName[n]!
                return ["name": .string(n), "loaded": .bool(m.loaded), "size_bytes": m.sizeBytes.map { .int($0) } ?? .null,
                        "context_length": m.contextLength.map { .integer($0) } ?? .null,
                        "engines": .array(ids.map(JSON.string)), "node": .string(nodeName)]
            }))
        case "/v1/route":
            let model = Self.queryValue(request.query, "model") ?? ""
            guard !model.isEmpty else { return .json(.badRequest, ["error": "missing ?model="]) }
            switch Router.choose(model: model, operation: .chat, promptTokens: 1, maxTokens: nil, engines: snap) {
            case .success(let d):
                return .json(.ok, ["model": .string(model), "node": .string(nodeName), "engine": .string(d.engineID),
                                   "engine_model": .string(d.engineModel), "loaded": .bool(d.loaded),
                                   "expected_seconds": .number(d.expectedSeconds), "reason": .string(d.reason)])
            case .failure(let e):
                return .json(HTTPResponseStatus(statusCode: e.status), ["model": .string(model), "error": .string(e.message)])
            }
        default:
            return .json(.notFound, ["error": .string("no admin route \(request.path)")])
        }
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
            "decode_tokens_per_second": e.speeds.decodeTokensPerSecond.map(JSON.number) ?? .null,
            "models": .array(e.models.map { m in
                ["name": .string(m.name), "loaded": .bool(m.loaded), "size_bytes": m.sizeBytes.map { .int($0) } ?? .null]
            }),
        ]
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
