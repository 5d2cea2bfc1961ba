import Foundation
import MeshCore
import MeshEngines
import MeshHTTPClient
import MeshHTTPServer
import NIOHTTP1

/// Model management for the whole mesh, behind Ollama's `/api/pull` and `/api/delete` (what Open
/// WebUI's admin page calls) and the admin API's `/v1/models/copy` and `/v1/models/rm` (`meshctl
/// models copy|rm`). A stored model some node has is copied over the mesh; a model no node has is
/// pulled by an Ollama engine of this node from its registry.
struct ModelOps: Sendable {
    let nodeName: String
    let store: ModelStore?
    /// Copies over the mesh (nil: no mesh, this node alone).
    let copier: ModelCopier?
    let engines: any EngineDirectory
    let client: CurlHTTPClient
    let timeouts: TimeoutConfig

    /// The store's name for a client's model name (`name:latest` is `name`); nil when no store file could have it.
    static func storeName(_ name: String) -> String? {
        var n = name.trimmingCharacters(in: .whitespaces)
        if n.hasSuffix(":latest") { n.removeLast(7) }
        return ModelCopyPlan.isStoreName(n) ? n : nil
    }

    /// `model` or `name` of an Ollama management body (Open WebUI sends both), or the error to answer.
    static func modelField(_ body: [UInt8]) -> Result<(String, JSON), APIError> {
        let json: JSON
        do { json = try JSONParser.parse(body) } catch { return .failure(.badJSON(error)) }
        guard json.objectValue != nil else { return .failure(APIError(status: 400, message: "request body must be a JSON object", code: "invalid_json")) }
        guard let name = json["model"]?.stringValue ?? json["name"]?.stringValue else { return .failure(.missing("model")) }
        guard !name.trimmingCharacters(in: .whitespaces).isEmpty else { return .failure(.invalid("model", "must be a non-empty string")) }
        return .success((name, json))
    }

    private func ollamaEngines() -> [EngineSnapshot] { engines.snapshot().filter { $0.kind == .ollama && $0.healthy } }

    // MARK: /api/pull

    /// Ollama's pull: streamed progress lines (unless `"stream": false`), ending in `success` or an `error` line.
    func ollamaPull(_ request: HTTPServerRequest) async -> HTTPServerResponse {
        let (name, json): (String, JSON)
        switch Self.modelField(request.bodyBytes) {
        case .failure(let e): return .json(HTTPResponseStatus(statusCode: e.status), ["error": .string(e.message)])
        case .success(let v): (name, json) = v
        }
        let stream = json["stream"]?.boolValue ?? true
        let stored = Self.storeName(name)
        let inMesh = stored.map { s in store?.file(s) != nil || !(copier?.holders(s).isEmpty ?? true) } ?? false
        if let stored, inMesh, let store {
            return progressResponse(stream: stream) { progress in
                if let copier {
                    try await copier.pull(stored, progress: progress)
                } else if store.file(stored) != nil {
                    progress(OllamaPullProgress.manifest)
                    progress(OllamaPullProgress.success)
                }
            }
        }
        // No node's store has it: an Ollama engine of this node pulls it from its registry.
        if let engine = ollamaEngines().first {
            return await relay(method: "POST", engine: engine, path: "/api/pull", body: request.bodyBytes, stream: stream)
        }
        let why = store == nil
            ? "model '\(name)' is on no node of the mesh, and this node has no Ollama engine to pull it from a registry"
            : "model '\(name)' is in no node's model store, and this node has no Ollama engine to pull it from a registry; "
                + "put its GGUF file in a node's store folder (models.dir) and pull again"
        return .json(.notFound, ["error": .string(why)])
    }

    /// Runs `work`, which reports Ollama pull lines: streamed as NDJSON, or (not streamed) the last line alone.
    private func progressResponse(stream: Bool, _ work: @escaping @Sendable (@escaping @Sendable (JSON) -> Void) async throws -> Void) -> HTTPServerResponse {
        if !stream {
            return HTTPServerResponse(status: .ok, headers: ["Content-Type": "application/json"], body: .stream { writer in
                do {
                    try await work { _ in }
                    try await writer.write(OllamaPullProgress.success.serialized())
                } catch {
                    try await writer.write(OllamaPullProgress.error("\(error)").serialized())
                }
            })
        }
        return HTTPServerResponse(status: .ok, headers: ["Content-Type": "application/x-ndjson"], body: .stream { writer in
            try await Self.writeLines(to: writer, tag: { $0 }, work)
        })
    }

    /// Runs `work` and writes each line it reports as NDJSON as it comes (`tag` applied); a failure
    /// becomes an `{"error": ...}` line. A client that goes away cancels the work.
    static func writeLines(to writer: ResponseBodyWriter, tag: @escaping @Sendable (JSON) -> JSON,
                           _ work: @escaping @Sendable (@escaping @Sendable (JSON) -> Void) async throws -> Void) async throws {
        let lines = AsyncStream<JSON>.makeStream()
        let run = Task {
            do { try await work { lines.continuation.yield(tag($0)) } } catch { lines.continuation.yield(tag(OllamaPullProgress.error("\(error)"))) }
            lines.continuation.finish()
        }
        do {
            for await line in lines.stream { try await writer.write(line.serialized() + [10]) }
        } catch {
            run.cancel()
            throw error
        }
    }

    /// Sends a management request to a local Ollama engine and relays its answer (streamed as it comes).
    private func relay(method: String, engine: EngineSnapshot, path: String, body: [UInt8], stream: Bool) async -> HTTPServerResponse {
        var req = HTTPClientRequest(method: method, url: InferenceProxy.join(engine.url, path),
                                    headers: [("Content-Type", "application/json")] + engines.requestHeaders(engineID: engine.id), body: body)
        // A pull can take minutes between lines (a large layer); a delete answers at once.
        req.firstByteTimeout = .seconds(600)
        req.idleTimeout = .seconds(600)
        do {
            let response = try await client.stream(req)
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: response.head.headers.first { $0.0.lowercased() == "content-type" }?.1
                        ?? (stream ? "application/x-ndjson" : "application/json"))
            headers.add(name: "X-Meshd-Engine", value: engine.id)
            return HTTPServerResponse(status: HTTPResponseStatus(statusCode: response.head.status), headers: headers, body: .stream { writer in
                for try await chunk in response { try await writer.write(chunk) }
            })
        } catch {
            return .json(.badGateway, ["error": .string("the Ollama engine \(engine.id) did not answer: \(error)")])
        }
    }

    // MARK: /api/delete

    /// Ollama's delete, for the whole mesh: the model leaves every node's store and this node's
    /// Ollama engines. 200 when it was deleted somewhere, 404 (Ollama's shape) when nowhere.
    func ollamaDelete(_ request: HTTPServerRequest) async -> HTTPServerResponse {
        let name: String
        switch Self.modelField(request.bodyBytes) {
        case .failure(let e): return .json(HTTPResponseStatus(statusCode: e.status), ["error": .string(e.message)])
        case .success(let v): name = v.0
        }
        var deleted: [String] = []
        var errors: [String] = []
        if let stored = Self.storeName(name) {
            var nodes = copier?.holders(stored).map(\.node) ?? []
            if store?.file(stored) != nil { nodes.insert(nodeName, at: 0) }
            for node in nodes {
                do {
                    if try await delete(stored, on: node) { deleted.append(node) }
                } catch {
                    errors.append("\(node): \(error)")
                }
            }
        }
        await onOllamaEngines(having: name, method: "DELETE", path: "/api/delete", body: JSON.object([("model", .string(name))]).serialized(),
                              done: &deleted, errors: &errors)
        return outcome(done: deleted, errors: errors, header: "X-Meshd-Deleted", doing: "deleting", model: name)
    }

    /// Sends a management request to every Ollama engine of this node that has `model`: who did it, what failed.
    private func onOllamaEngines(having model: String, method: String, path: String, body: [UInt8],
                                 done: inout [String], errors: inout [String]) async {
        for engine in ollamaEngines() where engine.model(named: model) != nil {
            var req = HTTPClientRequest(method: method, url: InferenceProxy.join(engine.url, path),
                                        headers: [("Content-Type", "application/json")] + engines.requestHeaders(engineID: engine.id),
                                        body: body)
            req.firstByteTimeout = .seconds(60)
            do {
                let (head, answer) = try await client.execute(req)
                if head.status == 200 { done.append(engine.id) } else {
                    errors.append("\(engine.id): status \(head.status) \(String(decoding: answer.prefix(200), as: UTF8.self))")
                }
            } catch {
                errors.append("\(engine.id): \(error)")
            }
        }
    }

    /// Ollama's answer to a delete or copy: 200 (empty, `header` naming where it was done) when done
    /// somewhere, 502 with the failures when it failed everywhere it was tried, else 404.
    private func outcome(done: [String], errors: [String], header: String, doing: String, model: String) -> HTTPServerResponse {
        if !done.isEmpty {
            var h = HTTPHeaders()
            h.add(name: header, value: done.joined(separator: ", "))
            return HTTPServerResponse(status: .ok, headers: h, body: .buffer(.init()))
        }
        if !errors.isEmpty { return .json(.badGateway, ["error": .string("\(doing) '\(model)' failed: " + errors.joined(separator: "; "))]) }
        return .json(.notFound, ["error": .string("model '\(model)' not found")])
    }

    private func delete(_ model: String, on node: String) async throws -> Bool {
        if node == nodeName { return try await store?.delete(model) ?? false }
        guard let copier else { return false }
        return try await copier.delete(model, on: node)
    }

    // MARK: /api/copy, /api/create, /api/blobs

    /// Ollama's copy, for the whole mesh: every node whose store holds `source` stores it again as
    /// `destination` (a hard link), and this node's Ollama engines that have it copy it. 200 when
    /// it was copied somewhere, 404 when `source` is nowhere.
    func ollamaCopy(_ request: HTTPServerRequest) async -> HTTPServerResponse {
        let json: JSON
        do { json = try JSONParser.parse(request.bodyBytes) } catch { return Self.ollamaError(.badJSON(error)) }
        guard let source = json["source"]?.stringValue, !source.isEmpty else { return Self.ollamaError(.missing("source")) }
        guard let destination = json["destination"]?.stringValue, !destination.isEmpty else { return Self.ollamaError(.missing("destination")) }
        var copied: [String] = []
        var errors: [String] = []
        if let s = Self.storeName(source) {
            guard let d = Self.storeName(destination) else {
                return Self.ollamaError(.invalid("destination", "must be a name a model file can have (no '/', no leading '.')"))
            }
            var nodes = copier?.holders(s).map(\.node) ?? []
            if store?.file(s) != nil { nodes.insert(nodeName, at: 0) }
            for node in nodes {
                do {
                    if node == nodeName {
                        if try await store?.copy(s, to: d) == true { copied.append(node) }
                    } else if try await copier?.copy(s, as: d, on: node) == true {
                        copied.append(node)
                    }
                } catch {
                    errors.append("\(node): \(error)")
                }
            }
        }
        await onOllamaEngines(having: source, method: "POST", path: "/api/copy", body: request.bodyBytes, done: &copied, errors: &errors)
        return outcome(done: copied, errors: errors, header: "X-Meshd-Copied", doing: "copying", model: source)
    }

    /// Ollama's create, blob upload and push: made by an Ollama engine of this node (the blobs a
    /// create names must be on the engine that creates), relayed as they come; without one, a clear 501.
    func ollamaToEngine(_ request: HTTPServerRequest, path: String) async -> HTTPServerResponse {
        guard let engine = ollamaEngines().first else {
            return Self.ollamaError(APIError(status: 501, message: "meshd creates, uploads and pushes models through an Ollama engine, "
                                             + "and this node has none; put a model's GGUF file in a node's model store (models.dir) instead",
                                             code: "not_implemented"))
        }
        let stream = (try? JSONParser.parse(request.bodyBytes))?["stream"]?.boolValue ?? true
        return await relay(method: request.method.rawValue, engine: engine, path: path, body: request.bodyBytes, stream: stream)
    }

    static func ollamaError(_ e: APIError) -> HTTPServerResponse {
        .json(HTTPResponseStatus(statusCode: e.status), ["error": .string(e.message)])
    }

    // MARK: admin: meshctl models copy | rm

    /// The nodes a copy or removal names: `["all"]` is every node of the mesh (this one included).
    private func targets(_ json: JSON, key: String) -> Result<[String], ModelCopier.CopyError> {
        guard let list = json[key]?.arrayValue?.compactMap(\.stringValue), !list.isEmpty else {
            return .failure(.init("\(key) must be a non-empty list of node names, or [\"all\"]"))
        }
        if list == ["all"] {
            return .success([nodeName] + (copier.map { c in c.view().filter { !$0.isLocal }.map(\.id) } ?? []))
        }
        let known = Set([nodeName] + (copier?.view().filter { !$0.isLocal }.map(\.id) ?? []))
        if let unknown = list.first(where: { !known.contains($0) }) { return .failure(.init("no live node '\(unknown)' in the mesh")) }
        return .success(list)
    }

    /// `POST /v1/models/copy {"model": M, "to": [NODE...] | ["all"]}`: each node copies M into its
    /// store from the nearest holder, one after another; NDJSON lines `{"node", ...pull line}`.
    func adminCopy(_ request: HTTPServerRequest) async -> HTTPServerResponse {
        guard let json = try? JSONParser.parse(request.bodyBytes), let name = json["model"]?.stringValue else {
            return .json(.badRequest, ["error": "body must be {\"model\": NAME, \"to\": [NODE...] or [\"all\"]}"])
        }
        guard let model = Self.storeName(name) else { return .json(.badRequest, ["error": .string("'\(name)' is not a model name a store file can have")]) }
        guard store != nil else { return .json(.conflict, ["error": "this node has no model store (models.enabled: false)"]) }
        let nodes: [String]
        switch targets(json, key: "to") {
        case .failure(let why): return .json(.badRequest, ["error": .string(why.description)])
        case .success(let n): nodes = n
        }
        let copier = self.copier
        let local = self
        return HTTPServerResponse(status: .ok, headers: ["Content-Type": "application/x-ndjson"], body: .stream { writer in
            for node in nodes {
                try await Self.writeLines(to: writer, tag: { $0.setting("node", .string(node)) }) { progress in
                    if let copier {
                        try await copier.pull(model, on: node, progress: progress)
                    } else if local.store?.file(model) != nil {
                        progress(OllamaPullProgress.success)
                    } else {
                        progress(OllamaPullProgress.error("no mesh: nothing to copy '\(model)' from"))
                    }
                }
            }
        })
    }

    /// `POST /v1/models/rm {"model": M, "nodes": [NODE...] | ["all"]}`: deletes M from those nodes'
    /// stores; `{"deleted": [NODE...], "absent": [NODE...], "errors": {NODE: why}}`.
    func adminRemove(_ request: HTTPServerRequest) async -> HTTPServerResponse {
        guard let json = try? JSONParser.parse(request.bodyBytes), let name = json["model"]?.stringValue else {
            return .json(.badRequest, ["error": "body must be {\"model\": NAME, \"nodes\": [NODE...] or [\"all\"]}"])
        }
        guard let model = Self.storeName(name) else { return .json(.badRequest, ["error": .string("'\(name)' is not a model name a store file can have")]) }
        let nodes: [String]
        switch targets(json, key: "nodes") {
        case .failure(let why): return .json(.badRequest, ["error": .string(why.description)])
        case .success(let n): nodes = n
        }
        var deleted: [JSON] = [], absent: [JSON] = []
        var errors: [(String, JSON)] = []
        for node in nodes {
            do {
                if try await delete(model, on: node) { deleted.append(.string(node)) } else { absent.append(.string(node)) }
            } catch {
                errors.append((node, .string("\(error)")))
            }
        }
        return .json(errors.isEmpty ? .ok : .badGateway, ["deleted": .array(deleted), "absent": .array(absent), "errors": .object(errors)])
    }
}

