import Crypto
import MeshCore
import NIOCore
import NIOHTTP1

/// One per connection. HTTPServerPipelineHandler in front of it serialises pipelined requests.
final class HTTPHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    static let maxBody = 16 << 20

    let engine: Engine
    private var head: HTTPRequestHead?
    private var body: ByteBuffer?
    private var bodyTooLarge = false
    private var job: Job?

    init(engine: Engine) {
        self.engine = engine
    }

    // MARK: inbound

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h):
            head = h
            body = nil
            bodyTooLarge = false
            // libcurl sends "Expect: 100-continue" for larger bodies and would otherwise stall ~1 s.
            if let expect = h.headers.first(name: "expect"), expect.lowercased() == "100-continue" {
                context.writeAndFlush(wrapOutboundOut(.head(HTTPResponseHead(version: h.version, status: .continue))),
                                      promise: nil)
            }
        case .body(var chunk):
            if bodyTooLarge { return }
            if body == nil {
                body = chunk
            } else {
                body!.writeBuffer(&chunk)
            }
            if body!.readableBytes > Self.maxBody {
                bodyTooLarge = true
                body = nil
            }
        case .end:
            guard let h = head else { return }
            head = nil
            let b = body ?? context.channel.allocator.buffer(capacity: 0)
            body = nil
            dispatch(context, h, b)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let j = job {
            job = nil
            j.clientGone()
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    func jobEnded(_ j: Job) {
        if job === j { job = nil }
    }

    // MARK: outbound helpers

    func respond(_ context: ChannelHandlerContext, status: HTTPResponseStatus, contentType: String = "application/json",
                 body: String, version: HTTPVersion, keepAlive: Bool, headOnly: Bool = false) {
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: contentType)
        headers.add(name: "content-length", value: String(body.utf8.count))
        if !keepAlive { headers.add(name: "connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: version, status: status, headers: headers))),
                      promise: nil)
        if !headOnly && !body.isEmpty {
            context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(string: body)))),
                          promise: nil)
        }
        endResponse(context, keepAlive: keepAlive)
    }

    func endResponse(_ context: ChannelHandlerContext, keepAlive: Bool) {
        if keepAlive {
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        } else {
            let p = context.eventLoop.makePromise(of: Void.self)
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: p)
            p.futureResult.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
        }
    }

    func writeStreamHead(_ context: ChannelHandlerContext, contentType: String, version: HTTPVersion, keepAlive: Bool) {
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: contentType)
        headers.add(name: "cache-control", value: "no-cache")
        if !keepAlive { headers.add(name: "connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: version, status: .ok, headers: headers))),
                      promise: nil)
    }

    func writeChunk(_ context: ChannelHandlerContext, _ s: String) {
        context.writeAndFlush(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(string: s)))),
                              promise: nil)
    }

    // MARK: routing

    private func dispatch(_ context: ChannelHandlerContext, _ h: HTTPRequestHead, _ body: ByteBuffer) {
        let keepAlive = h.isKeepAlive
        var path = Substring(h.uri)
        if let q = path.firstIndex(of: "?") { path = path[..<q] }
        if path.count > 1 && path.hasSuffix("/") { path = path.dropLast() }
        let isGet = h.method == .GET || h.method == .HEAD
        let isPost = h.method == .POST
        let headOnly = h.method == .HEAD

        func reply(_ status: HTTPResponseStatus, _ text: String, _ ct: String = "application/json") {
            respond(context, status: status, contentType: ct, body: text, version: h.version, keepAlive: keepAlive,
                    headOnly: headOnly)
        }
        func methodNotAllowed() { reply(.methodNotAllowed, "{\"error\":\"method not allowed\"}") }

        if bodyTooLarge {
            bodyTooLarge = false
            reply(.payloadTooLarge, "{\"error\":\"request body too large\"}")
            return
        }

        let kind: Kind
        switch path {
        case "/v1/chat/completions": kind = .oaChat
        case "/v1/completions": kind = .oaCompletion
        case "/v1/embeddings": kind = .oaEmbedding
        case "/api/chat": kind = .olChat
        case "/api/generate": kind = .olGenerate
        case "/api/embed": kind = .olEmbed
        case "/api/embeddings": kind = .olEmbeddingsLegacy
        default:
            if let (status, text, ct) = metaRoute(path, isGet: isGet, isPost: isPost, isDelete: h.method == .DELETE, body: body) {
                reply(status, text, ct)
            } else {
                reply(.notFound, "{\"error\":\"404 page not found\"}")
            }
            return
        }
        guard isPost else {
            methodNotAllowed()
            return
        }
        inference(context, kind: kind, head: h, body: body, keepAlive: keepAlive)
    }

    private func inference(_ context: ChannelHandlerContext, kind: Kind, head h: HTTPRequestHead, body: ByteBuffer,
                           keepAlive: Bool) {
        let arrival = NIODeadline.now()
        let json: JSON
        do {
            json = try JSONParser.parse(body)
        } catch {
            engine.countError()
            let err: HTTPError
            switch kind.style {
            case .openAI:
                err = openAIError(.badRequest, "We could not parse the JSON body of your request. (\(error))")
            case .ollama:
                err = ollamaError(.badRequest, "invalid JSON: \(error)")
            }
            respond(context, status: err.status, body: err.body, version: h.version, keepAlive: keepAlive)
            return
        }
        let spec: RequestSpec
        let settings = engine.settings
        switch parseSpec(kind: kind, json: json, engine: engine, defaultMaxTokens: settings.maxTokens,
                         mode: settings.cache) {
        case .failure(let err):
            engine.countError()
            respond(context, status: err.status, body: err.body, version: h.version, keepAlive: keepAlive)
            return
        case .success(let s):
            spec = s
        }
        if spec.ollamaLoadOnly {
            // Ollama answers an empty prompt by (un)loading the model.
            let reason: String
            if spec.ollamaUnload {
                engine.unload(spec.info.name)
                reason = "unload"
            } else {
                _ = engine.markLoaded(spec.info.name)
                reason = "load"
            }
            var s = "{\"model\":"
            s.appendJSONString(spec.model)
            s += ",\"created_at\":\"\(rfc3339(epochNanos: wallNanos()))\","
            s += kind == .olChat ? "\"message\":{\"role\":\"assistant\",\"content\":\"\"}," : "\"response\":\"\","
            s += "\"done_reason\":\"\(reason)\",\"done\":true}"
            if spec.stream { s += "\n" }
            respond(context, status: .ok, contentType: spec.stream ? "application/x-ndjson" : "application/json",
                    body: s, version: h.version, keepAlive: keepAlive)
            return
        }
        let j = Job(spec: spec, begin: engine.begin(model: spec.info.name), engine: engine, handler: self,
                    context: context, version: h.version, keepAlive: keepAlive, arrival: arrival)
        job = j
        j.run()
    }

    // MARK: metadata, llama-server / vLLM extras, sim control

    private func metaRoute(_ path: Substring, isGet: Bool, isPost: Bool, isDelete: Bool = false, body: ByteBuffer)
        -> (HTTPResponseStatus, String, String)?
    {
        let json = "application/json"
        let notAllowed: (HTTPResponseStatus, String, String) = (.methodNotAllowed, "{\"error\":\"method not allowed\"}", json)
        switch path {
        case "/":
            return isGet ? (.ok, "Ollama is running", "text/plain; charset=utf-8") : notAllowed
        case "/v1/models":
            guard isGet else { return notAllowed }
            var s = "{\"object\":\"list\",\"data\":["
            for (k, m) in engine.models.enumerated() {
                if k > 0 { s += "," }
                appendOpenAIModel(m, into: &s)
            }
            s += "]}"
            return (.ok, s, json)
        case "/api/tags":
            guard isGet else { return notAllowed }
            var s = "{\"models\":["
            for (k, m) in engine.models.enumerated() {
                if k > 0 { s += "," }
                s += "{\"name\":"
                s.appendJSONString(m.name)
                s += ",\"model\":"
                s.appendJSONString(m.name)
                s += ",\"modified_at\":\"\(engine.startStamp)\",\"size\":\(m.size),\"digest\":\"\(m.digest)\",\"details\":"
                appendDetails(m, into: &s)
                s += "}"
            }
            s += "]}"
            return (.ok, s, json)
        case "/api/ps":
            guard isGet else { return notAllowed }
            let expires = rfc3339(epochNanos: wallNanos() + 300 * 1_000_000_000)
            var s = "{\"models\":["
            for (k, m) in engine.loadedModels().enumerated() {
                if k > 0 { s += "," }
                s += "{\"name\":"
                s.appendJSONString(m.name)
                s += ",\"model\":"
                s.appendJSONString(m.name)
                s += ",\"size\":\(m.size),\"digest\":\"\(m.digest)\",\"details\":"
                appendDetails(m, into: &s)
                s += ",\"expires_at\":\"\(expires)\",\"size_vram\":\(m.size),\"context_length\":\(engine.contextLength)}"
            }
            s += "]}"
            return (.ok, s, json)
        case "/api/show":
            guard isPost else { return notAllowed }
            guard let req = try? JSONParser.parse(body), req.isObject else {
                return (.badRequest, ollamaError(.badRequest, "invalid JSON body").body, json)
            }
            guard let name = req["model"]?.stringValue ?? req["name"]?.stringValue, !name.isEmpty else {
                return (.badRequest, "{\"error\":\"model is required\"}", json)
            }
            guard let m = engine.resolve(name) else {
                let e = modelNotFound(.ollama, name)
                return (e.status, e.body, json)
            }
            var s = "{\"license\":\"\",\"modelfile\":"
            s.appendJSONString("# Modelfile generated by meshd-sim-engine\nFROM \(m.name)\n")
            s += ",\"parameters\":\"\",\"template\":\"{{ .Prompt }}\",\"details\":"
            appendDetails(m, into: &s)
            s += ",\"model_info\":{\"general.architecture\":\"llama\",\"general.basename\":"
            s.appendJSONString(m.name)
            s += ",\"general.file_type\":15,\"general.parameter_count\":\(m.parameterCount)"
            s += ",\"general.quantization_version\":2,\"llama.block_count\":16"
            s += ",\"llama.context_length\":\(engine.contextLength),\"llama.embedding_length\":\(engine.embeddingDim)"
            s += ",\"llama.attention.head_count\":32,\"llama.attention.head_count_kv\":8}"
            s += ",\"capabilities\":[\"completion\",\"embedding\"],\"modified_at\":\"\(engine.startStamp)\"}"
            return (.ok, s, json)
        case "/api/version":
            return isGet ? (.ok, "{\"version\":\"0.0.0-sim\"}", json) : notAllowed
        case "/api/pull":
            // As Ollama pulling from its registry: progress lines (NDJSON; one line with "stream": false), the model added.
            guard isPost else { return notAllowed }
            guard let req = try? JSONParser.parse(body), req.isObject,
                  let name = req["model"]?.stringValue ?? req["name"]?.stringValue, !name.isEmpty else {
                return (.badRequest, "{\"error\":\"model is required\"}", json)
            }
            let m = engine.pull(name)
            if req["stream"]?.boolValue == false { return (.ok, "{\"status\":\"success\"}", json) }
            let digest = m.digest.hasPrefix("sha256:") ? String(m.digest.dropFirst(7)) : m.digest
            var s = "{\"status\":\"pulling manifest\"}\n"
            for done in [0, m.size / 2, m.size] {
                s += "{\"status\":\"pulling \(digest.prefix(12))\",\"digest\":\"sha256:\(digest)\",\"total\":\(m.size),\"completed\":\(done)}\n"
            }
            s += "{\"status\":\"verifying sha256 digest\"}\n{\"status\":\"writing manifest\"}\n{\"status\":\"success\"}\n"
            return (.ok, s, "application/x-ndjson")
        case "/api/copy":
            guard isPost else { return notAllowed }
            guard let req = try? JSONParser.parse(body), let source = req["source"]?.stringValue,
                  let destination = req["destination"]?.stringValue else {
                return (.badRequest, "{\"error\":\"source and destination are required\"}", json)
            }
            return engine.copy(source, to: destination) ? (.ok, "", json) : (.notFound, "{\"error\":\"model '\(source)' not found\"}", json)
        case "/api/create":
            // As Ollama: every blob a create names must have been uploaded; status lines, the model added.
            guard isPost else { return notAllowed }
            guard let req = try? JSONParser.parse(body), let name = req["model"]?.stringValue, !name.isEmpty else {
                return (.badRequest, "{\"error\":\"model is required\"}", json)
            }
            var s = "{\"status\":\"parsing GGUF\"}\n"
            for (_, digest) in req["files"]?.objectValue ?? [] {
                let d = digest.stringValue ?? ""
                guard engine.hasBlob(d) else { return (.badRequest, "{\"error\":\"blob \(d) not found: upload it first\"}", json) }
                s += "{\"status\":\"using existing layer \(d)\"}\n"
            }
            _ = engine.pull(name)
            s += "{\"status\":\"writing manifest\"}\n{\"status\":\"success\"}\n"
            return req["stream"]?.boolValue == false ? (.ok, "{\"status\":\"success\"}", json) : (.ok, s, "application/x-ndjson")
        case "/api/push":
            guard isPost else { return notAllowed }
            guard let req = try? JSONParser.parse(body), let name = req["model"]?.stringValue ?? req["name"]?.stringValue,
                  engine.resolve(name) != nil else { return (.notFound, "{\"error\":\"model not found\"}", json) }
            return (.ok, "{\"status\":\"retrieving manifest\"}\n{\"status\":\"pushing manifest\"}\n{\"status\":\"success\"}\n", "application/x-ndjson")
        case "/api/delete":
            guard isDelete else { return notAllowed }
            guard let req = try? JSONParser.parse(body), req.isObject,
                  let name = req["model"]?.stringValue ?? req["name"]?.stringValue, !name.isEmpty else {
                return (.badRequest, "{\"error\":\"model is required\"}", json)
            }
            return engine.delete(name) ? (.ok, "", json) : (.notFound, "{\"error\":\"model '\(name)' not found\"}", json)
        case "/health":
            return isGet ? (.ok, "{\"status\":\"ok\"}", json) : notAllowed
        case "/slots":
            guard isGet else { return notAllowed }
            let snap = engine.snapshot()
            var s = "["
            for (k, busy) in snap.slotBusy.enumerated() {
                if k > 0 { s += "," }
                s += "{\"id\":\(k),\"id_task\":-1,\"n_ctx\":\(engine.contextLength),\"speculative\":false"
                s += ",\"is_processing\":\(busy),\"n_past\":\(snap.slotContext[k]),\"n_ctx_used\":\(snap.slotContext[k])"
                // As llama-server: `n_prompt_tokens` is what the slot holds now (prompt and output), not its last prompt.
                s += ",\"n_prompt_tokens\":\(snap.slotContext[k]),\"n_prompt_tokens_cache\":\(snap.slotCached[k])"
                s += ",\"n_prompt_tokens_processed\":\(snap.slotPrompt[k] - snap.slotCached[k])}"
            }
            s += "]"
            return (.ok, s, json)
        case "/props":
            guard isGet else { return notAllowed }
            var s = "{\"default_generation_settings\":{\"n_ctx\":\(engine.contextLength),\"params\":{\"n_predict\":\(engine.settings.maxTokens)}}"
            s += ",\"total_slots\":\(engine.slotCount),\"model_path\":"
            s.appendJSONString(engine.models.first?.name ?? "")
            s += ",\"chat_template\":\"\",\"build_info\":\"meshd-sim-engine\"}"
            return (.ok, s, json)
        case "/metrics":
            guard isGet else { return notAllowed }
            return (.ok, metricsText(), "text/plain; version=0.0.4; charset=utf-8")
        case "/sim/stats":
            guard isGet else { return notAllowed }
            let snap = engine.snapshot()
            let c = snap.counters
            var s = "{\"requests\":\(c.requests),\"completed\":\(c.completed),\"cancelled\":\(c.cancelled)"
            s += ",\"in_flight\":\(snap.running),\"queued\":\(snap.waiting),\"max_concurrent\":\(c.maxConcurrent)"
            s += ",\"failed\":\(c.failed),\"rejected\":\(c.rejected),\"errors\":\(c.errors),\"hanging\":\(snap.hanging)"
            s += ",\"prompt_tokens\":\(c.promptTokens),\"generated_tokens\":\(c.generatedTokens)"
            s += ",\"cached_tokens\":\(c.cachedTokens),\"prefilled_tokens\":\(c.promptTokens - c.cachedTokens)}"
            return (.ok, s, json)
        case "/sim/reset":
            guard isPost else { return notAllowed }
            engine.resetCounters()
            return (.ok, "{\"ok\":true}", json)
        case "/sim/control":
            if isGet { return (.ok, "{\"ok\":true,\"settings\":\(engine.settings.json())}", json) }
            guard isPost else { return notAllowed }
            switch control(body) {
            case .success(let settings): return (.ok, "{\"ok\":true,\"settings\":\(settings.json())}", json)
            case .failure(let err): return (err.status, err.body, json)
            }
        default:
            if path.hasPrefix("/api/blobs/") {
                // As Ollama: HEAD says whether the blob is there; POST takes it when its sha256 is the digest.
                let digest = String(path.dropFirst("/api/blobs/".count))
                if isGet { return engine.hasBlob(digest) ? (.ok, "", json) : (.notFound, "", json) }
                guard isPost else { return notAllowed }
                var bytes = body
                let data = bytes.readBytes(length: bytes.readableBytes) ?? []
                let hex = Crypto.SHA256.hash(data: data).map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
                guard digest == "sha256:" + hex else { return (.badRequest, "{\"error\":\"digest mismatch\"}", json) }
                engine.addBlob(digest)
                return (.created, "", json)
            }
            if path.hasPrefix("/sim/cache") {
                return cacheRoute(path, isGet: isGet, isPost: isPost, body: body)
            }
            if path.hasPrefix("/v1/models/") {
                guard isGet else { return notAllowed }
                let name = String(path.dropFirst("/v1/models/".count))
                guard let m = engine.resolve(name) else {
                    let e = modelNotFound(.openAI, name)
                    return (e.status, e.body, json)
                }
                var s = ""
                appendOpenAIModel(m, into: &s)
                return (.ok, s, json)
            }
            return nil
        }
    }

    private func appendOpenAIModel(_ m: ModelInfo, into s: inout String) {
        s += "{\"id\":"
        s.appendJSONString(m.name)
        s += ",\"object\":\"model\",\"created\":\(engine.startUnix),\"owned_by\":\"meshd-sim\""
        s += ",\"root\":"
        s.appendJSONString(m.name)
        s += ",\"parent\":null,\"max_model_len\":\(engine.contextLength)}"
    }

    private func appendDetails(_ m: ModelInfo, into s: inout String) {
        s += "{\"parent_model\":\"\",\"format\":\"gguf\",\"family\":\"\(m.family)\",\"families\":[\"\(m.family)\"]"
        s += ",\"parameter_size\":\"\(m.parameterSize)\",\"quantization_level\":\"Q4_K_M\"}"
    }

    private func metricsText() -> String {
        let snap = engine.snapshot()
        var label = "{model_name="
        label.appendJSONString(engine.models.first?.name ?? "")
        label += "}"
        let c = snap.counters
        var s = ""
        func metric(_ name: String, _ type: String, _ help: String, _ value: Int, labels: String) {
            s += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n\(name)\(labels) \(value).0\n"
        }
        metric("vllm:num_requests_running", "gauge", "Number of requests currently running on GPU.", snap.running, labels: label)
        metric("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.", snap.waiting, labels: label)
        metric("vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.", c.promptTokens, labels: label)
        metric("vllm:generation_tokens_total", "counter", "Number of generation tokens processed.", c.generatedTokens, labels: label)
        metric("llamacpp:requests_processing", "gauge", "Number of requests processing.", snap.running, labels: "")
        metric("llamacpp:requests_deferred", "gauge", "Number of requests deferred.", snap.waiting, labels: "")
        return s
    }

    private func control(_ body: ByteBuffer) -> Result<Settings, HTTPError> {
        guard let req = try? JSONParser.parse(body), req.isObject else {
            return .failure(ollamaError(.badRequest, "invalid JSON body"))
        }
        var fail: FailMode?
        if let v = req["fail"] {
            guard let s = v.stringValue, let f = FailMode(rawValue: s) else {
                return .failure(ollamaError(.badRequest, "fail must be one of none, refuse, hang, die-mid-stream"))
            }
            fail = f
        }
        func num(_ key: String, min lo: Double) -> Result<Double?, HTTPError> {
            guard let v = req[key] else { return .success(nil) }
            guard let d = v.doubleValue, d >= lo, d.isFinite else {
                return .failure(ollamaError(.badRequest, "\(key) must be a number >= \(fmt(lo))"))
            }
            return .success(d)
        }
        var values: [String: Double] = [:]
        for key in ["fail_rate", "latency_ms", "gen_tps", "prompt_tps", "fail_after_tokens", "max_tokens", "load_ms",
                    "cache_ram_tokens", "cache_ram_restore_tps"] {
            switch num(key, min: 0) {
            case .failure(let e): return .failure(e)
            case .success(let d): if let d { values[key] = d }
            }
        }
        if let r = values["fail_rate"], r > 1 {
            return .failure(ollamaError(.badRequest, "fail_rate must be between 0 and 1"))
        }
        if let n = values["cache_ram_tokens"], n.rounded() != n || n > 1e12 {
            return .failure(ollamaError(.badRequest, "cache_ram_tokens must be a whole number of tokens >= 0"))
        }
        switch num("slot_prompt_similarity", min: 0) {
        case .failure(let e): return .failure(e)
        case .success(let d):
            guard (d ?? 0) <= 1 else {
                return .failure(ollamaError(.badRequest, "slot_prompt_similarity must be in 0...1"))
            }
            values["slot_prompt_similarity"] = d
        }
        var cache: CacheMode?
        if let v = req["cache"] {
            guard let m = v.stringValue.flatMap(CacheMode.init(rawValue:)) else {
                return .failure(ollamaError(.badRequest, "cache must be one of legacy, on, off"))
            }
            cache = m
        }
        return .success(engine.update { s in
            if let fail { s.fail = fail }
            if let v = values["fail_rate"] { s.failRate = v }
            if let v = values["latency_ms"] { s.latencyMs = v }
            if let v = values["gen_tps"] { s.genTps = v }
            if let v = values["prompt_tps"] { s.promptTps = v }
            if let v = values["fail_after_tokens"] { s.failAfterTokens = Int(min(v, 1e9)) }
            if let v = values["max_tokens"] { s.maxTokens = Int(min(v, 1e6)) }
            if let v = values["load_ms"] { s.loadMs = v }
            if let v = values["slot_prompt_similarity"] { s.slotPromptSimilarity = v }
            if let v = values["cache_ram_tokens"] { s.cacheRamTokens = Int(v) }
            if let v = values["cache_ram_restore_tps"] { s.cacheRamRestoreTps = v }
            if let cache { s.cache = cache }
        })
    }
}
