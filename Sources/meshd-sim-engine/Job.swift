import MeshCore
import NIOCore
import NIOHTTP1

/// One admitted inference request. Lives on its connection's event loop; never blocks it.
final class Job {
    enum Phase {
        case created
        case queued(ticket: UInt64)
        case running(slot: Int)
        case hanging
        /// Client left while the queue was already handing us a slot; release it when it arrives.
        case cancelledAwaitingSlot
        case done
    }

    let spec: RequestSpec
    let begin: Begin
    let engine: Engine
    let handler: HTTPHandler
    let context: ChannelHandlerContext
    let version: HTTPVersion
    let keepAlive: Bool
    let arrival: NIODeadline
    let created: Int
    let id: String

    private(set) var phase = Phase.created
    private var startAt: NIODeadline
    private var firstTokenAt: NIODeadline
    private var delayNs: Double = 0
    private var loadNs: Double = 0
    /// Time spent copying a prompt state back from the RAM cache (see ``RAMPromptCache``), outside `prompt_ms`.
    private var restoreNs: Double = 0
    private var intervalNs: Double = 0
    private var emitted = 0
    /// Prompt tokens reused from the slot's context, a RAM-cache restore included (see ``SlotCache``).
    private var cached = 0
    private var headSent = false
    private var scheduled: Scheduled<Void>?
    private var out = ""
    private var chunkPrefix = ""

    init(spec: RequestSpec, begin: Begin, engine: Engine, handler: HTTPHandler, context: ChannelHandlerContext,
         version: HTTPVersion, keepAlive: Bool, arrival: NIODeadline) {
        self.spec = spec
        self.begin = begin
        self.engine = engine
        self.handler = handler
        self.context = context
        self.version = version
        // HTTP/1.0 cannot frame a stream without closing the connection.
        self.keepAlive = keepAlive && (!spec.stream || version.minor >= 1)
        self.arrival = arrival
        self.startAt = arrival
        self.firstTokenAt = arrival
        self.created = Int(wallNanos() / 1_000_000_000)
        switch spec.kind {
        case .oaChat: self.id = "chatcmpl-sim\(begin.seq)"
        case .oaCompletion: self.id = "cmpl-sim\(begin.seq)"
        default: self.id = ""
        }
    }

    private var failAfter: Int { max(0, begin.settings.failAfterTokens) }
    private var dies: Bool { begin.fail == .dieMidStream }

    // MARK: lifecycle

    func run() {
        switch begin.fail {
        case .refuse:
            phase = .done
            engine.noteFailed()
            handler.jobEnded(self)
            context.close(promise: nil)
            return
        case .hang:
            phase = .hanging
            engine.hangStarted()
            return
        case .none, .dieMidStream:
            break
        }
        let loop = context.eventLoop
        let admission = engine.admit(spec.cache, promptTokens: spec.promptTokens) { ticket in
            let bound = NIOLoopBound(self, eventLoop: loop)
            return Waiter(ticket: ticket, request: spec.cache, promptTokens: spec.promptTokens) { slot, claim in
                loop.execute { bound.value.resumed(slot: slot, claim: claim) }
            }
        }
        switch admission {
        case .run(let slot, let claim):
            start(slot: slot, claim: claim)
        case .queued(let ticket):
            phase = .queued(ticket: ticket)
        case .rejected(let waiting):
            phase = .done
            let err: HTTPError
            switch spec.kind.style {
            case .openAI:
                err = openAIError(.serviceUnavailable, "Server is busy: request queue is full (\(waiting) waiting).",
                                  type: "server_error", code: "queue_full")
            case .ollama:
                err = ollamaError(.serviceUnavailable, "server busy, please try again.  maximum pending requests exceeded")
            }
            handler.jobEnded(self)
            handler.respond(context, status: err.status, body: err.body, version: version, keepAlive: keepAlive)
        }
    }

    private func resumed(slot: Int, claim: Claim) {
        switch phase {
        case .queued:
            start(slot: slot, claim: claim)
        case .cancelledAwaitingSlot:
            phase = .done
            engine.release(slot: slot, outcome: .cancelled)
        default:
            engine.release(slot: slot, outcome: .none)
        }
    }

    /// What this request did on its slot, for ``Engine/release(slot:outcome:usage:)``.
    private var usage: SlotUsage {
        SlotUsage(promptTokens: spec.promptTokens, cachedTokens: cached, generated: emitted, tracked: spec.cache.tracked)
    }

    /// The client went away (channel inactive).
    func clientGone() {
        switch phase {
        case .created, .done, .cancelledAwaitingSlot:
            return
        case .queued(let ticket):
            phase = engine.cancelQueued(ticket: ticket) ? .done : .cancelledAwaitingSlot
        case .running(let slot):
            scheduled?.cancel()
            scheduled = nil
            phase = .done
            engine.release(slot: slot, outcome: .cancelled, usage: usage)
        case .hanging:
            phase = .done
            engine.hangEnded()
        }
    }

    /// Schedules the request on `slot`: latency, a RAM-cache restore (`claim.restored` tokens at the restore speed),
    /// the prefill of the uncached tokens, a model load, then the tokens.
    private func start(slot: Int, claim: Claim) {
        phase = .running(slot: slot)
        cached = claim.cached
        startAt = .now()
        let s = begin.settings
        delayNs = max(0, s.latencyMs) * 1e6
        if s.promptTps > 0 { delayNs += Double(spec.promptTokens - cached) / s.promptTps * 1e9 }
        if claim.restored > 0 && s.effectiveRestoreTps > 0 {
            restoreNs = Double(claim.restored) / s.effectiveRestoreTps * 1e9
            delayNs += restoreNs
        }
        if begin.needsLoad && s.loadMs > 0 {
            loadNs = s.loadMs * 1e6
            delayNs += loadNs
        }
        intervalNs = s.genTps > 0 ? 1e9 / s.genTps : 0
        if spec.kind.isEmbedding {
            at(tokenDeadline(0)) { $0.finishEmbedding() }
        } else if spec.stream {
            at(tokenDeadline(0)) { $0.streamStep() }
        } else {
            let n = dies ? min(failAfter, spec.nTokens) : spec.nTokens
            at(tokenDeadline(max(0, n - 1))) { $0.finishNonStream() }
        }
    }

    private func tokenDeadline(_ k: Int) -> NIODeadline {
        startAt + .nanoseconds(Int64(delayNs + Double(k) * intervalNs))
    }

    private func at(_ deadline: NIODeadline, _ body: @escaping (Job) -> Void) {
        if deadline <= .now() {
            body(self)
        } else {
            scheduled = context.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) { [self] in
                self.scheduled = nil
                body(self)
            }
        }
    }

    private var isRunning: Bool {
        if case .running = phase { return true }
        return false
    }

    private func slot() -> Int {
        if case .running(let s) = phase { return s }
        return -1
    }

    /// Writes the final bytes, ends the response and frees the slot.
    private func complete() {
        let s = slot()
        phase = .done
        handler.jobEnded(self)
        handler.endResponse(context, keepAlive: keepAlive)
        engine.release(slot: s, outcome: .completed, usage: usage)
    }

    /// die-mid-stream: drop the connection without a terminator.
    private func abort() {
        let s = slot()
        phase = .done
        handler.jobEnded(self)
        context.close(promise: nil)
        engine.release(slot: s, outcome: .failed, usage: usage)
    }

    // MARK: streaming

    private func streamStep() {
        guard isRunning else { return }
        let now = NIODeadline.now()
        if !headSent {
            headSent = true
            firstTokenAt = now
            let ct = spec.kind.style == .openAI ? "text/event-stream" : "application/x-ndjson"
            handler.writeStreamHead(context, contentType: ct, version: version, keepAlive: keepAlive)
            buildPrefix()
            if spec.kind == .oaChat {
                appendOpenAIChunk(delta: "{\"role\":\"assistant\",\"content\":\"\"}", finish: nil)
            }
        }
        while true {
            if dies && emitted >= failAfter {
                flushOut()
                abort()
                return
            }
            if emitted >= spec.nTokens {
                appendFinal()
                flushOut()
                complete()
                return
            }
            appendToken(emitted)
            emitted += 1
            if out.utf8.count >= 64 * 1024 { flushOut() }  // gen-tps 0: coalesce, but bound the buffer
            if emitted < spec.nTokens && !(dies && emitted >= failAfter) {
                let next = tokenDeadline(emitted)
                if next > now {
                    flushOut()
                    at(next) { $0.streamStep() }
                    return
                }
            }
        }
    }

    private func flushOut() {
        guard !out.isEmpty else { return }
        handler.writeChunk(context, out)
        out = ""
    }

    private func buildPrefix() {
        var p = ""
        switch spec.kind {
        case .oaChat, .oaCompletion:
            p = "data: {\"id\":\"\(id)\",\"object\":\""
            p += spec.kind == .oaChat ? "chat.completion.chunk" : "text_completion"
            p += "\",\"created\":\(created),\"model\":"
            p.appendJSONString(spec.model)
            p += ",\"choices\":["
        case .olChat, .olGenerate:
            p = "{\"model\":"
            p.appendJSONString(spec.model)
            p += ",\"created_at\":\""
        default:
            break
        }
        chunkPrefix = p
    }

    /// `extra`: members added to the chunk object (the final chunk's `timings` and `id_slot`).
    private func appendOpenAIChunk(delta: String, finish: String?, extra: String = "") {
        out += chunkPrefix
        if spec.kind == .oaChat {
            out += "{\"index\":0,\"delta\":"
            out += delta
        } else {
            out += "{\"text\":"
            out += delta
            out += ",\"index\":0"
        }
        out += ",\"logprobs\":null,\"finish_reason\":"
        if let finish { out += "\"\(finish)\"" } else { out += "null" }
        out += spec.includeUsage ? "}],\"usage\":null" : "}]"
        out += extra
        out += "}\n\n"
    }

    private func appendToken(_ k: Int) {
        switch spec.kind {
        case .oaChat:
            appendOpenAIChunk(delta: "{\"content\":\"tok\(k) \"}", finish: nil)
        case .oaCompletion:
            appendOpenAIChunk(delta: "\"tok\(k) \"", finish: nil)
        case .olChat:
            out += chunkPrefix
            out += rfc3339(epochNanos: wallNanos())
            out += "\",\"message\":{\"role\":\"assistant\",\"content\":\"tok\(k) \"},\"done\":false}\n"
        case .olGenerate:
            out += chunkPrefix
            out += rfc3339(epochNanos: wallNanos())
            out += "\",\"response\":\"tok\(k) \",\"done\":false}\n"
        default:
            break
        }
    }

    private func usageJSON() -> String {
        "{\"prompt_tokens\":\(spec.promptTokens),\"completion_tokens\":\(emitted),\"total_tokens\":\(spec.promptTokens + emitted)"
            + ",\"prompt_tokens_details\":{\"cached_tokens\":\(cached)}}"
    }

    /// `,"timings":{…},"id_slot":K`: llama-server's per-request timings (prompt_n = tokens evaluated,
    /// cache_n = tokens reused) and the slot that ran the request.
    private func cacheExtras(measured: Bool) -> String {
        let (promptNs, evalNs) = phaseNanos(measured: measured)
        let promptN = spec.promptTokens - cached
        let promptMs = Double(promptNs) / 1e6
        let evalMs = Double(evalNs) / 1e6
        func perSecond(_ n: Int, _ ms: Double) -> String { ms > 0 ? fmt(Double(n) / ms * 1000) : "0" }
        var s = ",\"timings\":{\"cache_n\":\(cached),\"prompt_n\":\(promptN),\"prompt_ms\":\(fmt(promptMs))"
        s += ",\"prompt_per_second\":\(perSecond(promptN, promptMs)),\"predicted_n\":\(emitted)"
        s += ",\"predicted_ms\":\(fmt(evalMs)),\"predicted_per_second\":\(perSecond(emitted, evalMs))}"
        s += ",\"id_slot\":\(slot())"
        return s
    }

    /// Prompt-evaluation and generation time in ns: measured (streams) or as scheduled (whole answers).
    private func phaseNanos(measured: Bool) -> (prompt: Int64, eval: Int64) {
        if measured {
            let now = NIODeadline.now()
            return (max(0, (firstTokenAt - startAt).nanoseconds - Int64(loadNs + restoreNs)),
                    max(0, (now - firstTokenAt).nanoseconds))
        }
        return (Int64(max(0, delayNs - loadNs - restoreNs)), Int64(Double(max(0, emitted - 1)) * intervalNs))
    }

    private func appendFinal() {
        switch spec.kind {
        case .oaChat, .oaCompletion:
            let extras = cacheExtras(measured: true)
            appendOpenAIChunk(delta: spec.kind == .oaChat ? "{}" : "\"\"", finish: spec.finishReason, extra: extras)
            if spec.includeUsage {
                out += chunkPrefix
                out += "],\"usage\":"
                out += usageJSON()
                out += extras
                out += "}\n\n"
            }
            out += "data: [DONE]\n\n"
        case .olChat, .olGenerate:
            out += chunkPrefix
            out += rfc3339(epochNanos: wallNanos())
            out += spec.kind == .olChat ? "\",\"message\":{\"role\":\"assistant\",\"content\":\"\"}," : "\",\"response\":\"\","
            appendOllamaStats(measured: true)
            out += "}\n"
        default:
            break
        }
    }

    /// `"done_reason":…,"done":true,"total_duration":…` (no braces).
    private func appendOllamaStats(measured: Bool) {
        let total = max(0, (NIODeadline.now() - arrival).nanoseconds)
        let (promptEval, eval) = phaseNanos(measured: measured)
        out += "\"done_reason\":\"\(spec.finishReason)\",\"done\":true,\"total_duration\":\(total)"
        // Ollama counts only the prompt tokens it evaluated, not those reused from its cache.
        out += ",\"load_duration\":\(Int64(loadNs)),\"prompt_eval_count\":\(spec.promptTokens - cached)"
        out += ",\"prompt_eval_duration\":\(promptEval),\"eval_count\":\(emitted),\"eval_duration\":\(eval)"
    }

    // MARK: non-streamed

    private func generatedText() -> String {
        var s = ""
        s.reserveCapacity(spec.nTokens * 7)
        for k in 0..<spec.nTokens {
            s += "tok"
            s += String(k)
            s += " "
        }
        return s
    }

    private func finishNonStream() {
        guard isRunning else { return }
        if dies {
            abort()
            return
        }
        emitted = spec.nTokens
        let text = generatedText()
        out.reserveCapacity(256 + text.utf8.count)
        switch spec.kind {
        case .oaChat:
            out += "{\"id\":\"\(id)\",\"object\":\"chat.completion\",\"created\":\(created),\"model\":"
            out.appendJSONString(spec.model)
            out += ",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\""
            out += text
            out += "\"},\"logprobs\":null,\"finish_reason\":\"\(spec.finishReason)\"}],\"usage\":"
            out += usageJSON()
            out += cacheExtras(measured: false)
            out += "}"
        case .oaCompletion:
            out += "{\"id\":\"\(id)\",\"object\":\"text_completion\",\"created\":\(created),\"model\":"
            out.appendJSONString(spec.model)
            out += ",\"choices\":[{\"text\":\""
            out += text
            out += "\",\"index\":0,\"logprobs\":null,\"finish_reason\":\"\(spec.finishReason)\"}],\"usage\":"
            out += usageJSON()
            out += cacheExtras(measured: false)
            out += "}"
        case .olChat, .olGenerate:
            out += "{\"model\":"
            out.appendJSONString(spec.model)
            out += ",\"created_at\":\""
            out += rfc3339(epochNanos: wallNanos())
            out += spec.kind == .olChat ? "\",\"message\":{\"role\":\"assistant\",\"content\":\"" : "\",\"response\":\""
            out += text
            out += spec.kind == .olChat ? "\"}," : "\","
            appendOllamaStats(measured: false)
            out += "}"
        default:
            break
        }
        sendWhole()
    }

    private func finishEmbedding() {
        guard isRunning else { return }
        if dies {
            abort()
            return
        }
        let dim = spec.dimensions
        switch spec.kind {
        case .oaEmbedding:
            out += "{\"object\":\"list\",\"data\":["
            for (k, text) in spec.inputs.enumerated() {
                if k > 0 { out += "," }
                out += "{\"object\":\"embedding\",\"index\":\(k),\"embedding\":"
                appendVector(embedding(of: text, dim: dim), into: &out)
                out += "}"
            }
            out += "],\"model\":"
            out.appendJSONString(spec.model)
            out += ",\"usage\":{\"prompt_tokens\":\(spec.promptTokens),\"total_tokens\":\(spec.promptTokens)}}"
        case .olEmbed:
            out += "{\"model\":"
            out.appendJSONString(spec.model)
            out += ",\"embeddings\":["
            for (k, text) in spec.inputs.enumerated() {
                if k > 0 { out += "," }
                appendVector(embedding(of: text, dim: dim), into: &out)
            }
            let total = max(0, (NIODeadline.now() - arrival).nanoseconds)
            out += "],\"total_duration\":\(total),\"load_duration\":\(Int64(loadNs)),\"prompt_eval_count\":\(spec.promptTokens)}"
        case .olEmbeddingsLegacy:
            out += "{\"embedding\":"
            appendVector(embedding(of: spec.inputs.first ?? "", dim: dim), into: &out)
            out += "}"
        default:
            break
        }
        sendWhole()
    }

    private func sendWhole() {
        let s = slot()
        phase = .done
        handler.jobEnded(self)
        handler.respond(context, status: .ok, body: out, version: version, keepAlive: keepAlive)
        out = ""
        engine.release(slot: s, outcome: .completed, usage: usage)
    }
}
