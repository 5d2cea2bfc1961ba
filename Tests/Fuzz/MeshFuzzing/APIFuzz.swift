import MeshCore

/// Client request bodies. Layout: the route's path on the first line (`/v1/chat/completions`,
/// `/api/generate`, ...; any other line picks a route by its length), the JSON body after it.
enum APIFuzz {
    static func route(_ line: ArraySlice<UInt8>) -> InferenceRoute {
        let text = String(decoding: line, as: UTF8.self)
        if let r = InferenceRoute(rawValue: text) { return r }
        return InferenceRoute.allCases[line.count % InferenceRoute.allCases.count]
    }

    static func run(_ bytes: [UInt8]) {
        let (line, body) = splitFirstLine(bytes)
        let route = route(line)
        let req: InferenceRequest
        do {
            req = try RequestParser.parse(route: route, body: Array(body))
        } catch {
            // Every rejection must render in the client's dialect.
            _ = error.body(for: route.dialect).serialized()
            invariant((400..<600).contains(error.status), "status \(error.status) for a rejected body")
            return
        }
        invariant(req.route == route, "parsed route differs")
        invariant(!req.model.isEmpty, "accepted an empty model")
        _ = req.estimatedPromptTokens
        // What meshd does next with an accepted request: build the engine request in either
        // engine dialect, and the provider requests a gateway would send.
        for dialect in [Dialect.openai, .ollama] {
            let e = EngineRequestBuilder.build(req, engine: dialect, engineModel: "fuzz-model")
            let text = e.body.serialized()
            invariant((try? JSONParser.parse(text)) != nil, "engine body for \(dialect) does not parse back")
            _ = ResponseContext(request: req, engine: e, id: "fuzz", startNanos: 0)
        }
        for kind in ProviderKind.allCases {
            _ = try? ProviderRequestBuilder.build(req, kind: kind, model: "fuzz-model").body.serialized()
        }
    }
}
