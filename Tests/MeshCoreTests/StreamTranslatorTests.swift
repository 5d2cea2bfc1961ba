import MeshCore
import Testing

// MARK: - realistic engine streams

enum EngineStreams {
    static let created = 1_700_000_001

    static func sse(_ payloads: [String]) -> [UInt8] {
        utf8(payloads.map { "data: \($0)\n\n" }.joined())
    }

    /// llama-server style `/v1/chat/completions` stream.
    static func openAIChat(role: Bool = true, finish: Bool = true, usage: Bool = true, done: Bool = true,
                           pieces: [String] = ["Hel", "lo, wörld 😀"], id: String = "chatcmpl-eng") -> [UInt8] {
        let meta = #""created":\#(created),"id":"\#(id)","model":"tiny","object":"chat.completion.chunk""#
        var events: [String] = []
        if role {
            events.append(#"{"choices":[{"finish_reason":null,"index":0,"delta":{"role":"assistant","content":null}}],\#(meta),"system_fingerprint":"b1"}"#)
        }
        for p in pieces {
            events.append(#"{"choices":[{"finish_reason":null,"index":0,"delta":{"content":\#(JSON.string(p).compactString)}}],\#(meta)}"#)
        }
        if finish {
            events.append(#"{"choices":[{"finish_reason":"stop","index":0,"delta":{}}],\#(meta),"timings":{"prompt_n":5,"prompt_ms":12.5,"predicted_n":2,"predicted_ms":40.25}}"#)
        }
        if usage {
            events.append(#"{"choices":[],\#(meta),"usage":{"completion_tokens":2,"prompt_tokens":5,"total_tokens":7}}"#)
        }
        if done { events.append("[DONE]") }
        return sse(events)
    }

    /// llama-server style `/v1/completions` stream.
    static func openAICompletion(finish: Bool = true, usage: Bool = true, done: Bool = true, pieces: [String] = ["Hel", "lo, wörld 😀"]) -> [UInt8] {
        let meta = #""created":\#(created),"id":"cmpl-eng","model":"tiny","object":"text_completion""#
        var events: [String] = []
        for p in pieces {
            events.append(#"{"choices":[{"text":\#(JSON.string(p).compactString),"index":0,"logprobs":null,"finish_reason":null}],\#(meta)}"#)
        }
        if finish {
            events.append(#"{"choices":[{"text":"","index":0,"logprobs":null,"finish_reason":"stop"}],\#(meta)}"#)
        }
        if usage {
            events.append(#"{"choices":[],\#(meta),"usage":{"completion_tokens":2,"prompt_tokens":5,"total_tokens":7}}"#)
        }
        if done { events.append("[DONE]") }
        return sse(events)
    }

    /// Ollama NDJSON stream for `/api/chat` (chat) or `/api/generate`.
    static func ollama(chat: Bool, done: Bool = true, pieces: [String] = ["Hel", "lo, wörld 😀"]) -> [UInt8] {
        func field(_ s: String) -> String {
            chat ? #""message":{"role":"assistant","content":\#(JSON.string(s).compactString)}"# : #""response":\#(JSON.string(s).compactString)"#
        }
        var lines: [String] = []
        for p in pieces {
            lines.append(#"{"model":"llama3:latest","created_at":"2024-06-01T10:00:00.1Z",\#(field(p)),"done":false}"#)
        }
        if done {
            lines.append(#"{"model":"llama3:latest","created_at":"2024-06-01T10:00:00.2Z",\#(field("")),"done":true,"done_reason":"stop","total_duration":900000,"load_duration":1000,"prompt_eval_count":5,"prompt_eval_duration":2000,"eval_count":2,"eval_duration":3000}"#)
        }
        return utf8(lines.map { $0 + "\n" }.joined())
    }

    static func forEngine(_ route: InferenceRoute, done: Bool = true, role: Bool = true) -> [UInt8] {
        switch route {
        case .openaiChat: return openAIChat(role: role, done: done)
        case .openaiCompletion: return openAICompletion(done: done)
        case .ollamaChat: return ollama(chat: true, done: done)
        default: return ollama(chat: false, done: done)
        }
    }
}

// MARK: - driving a translator

struct StreamRun {
    var out: [UInt8]
    var translator: StreamTranslator
    var error: APIError?
}

let streamNow: UInt64 = testStart + 1_000_000_000

func runStream(_ ctx: ResponseContext, _ chunks: [[UInt8]], now: UInt64 = streamNow, finish: Bool = true,
               collectsAnswer: Bool = false) -> StreamRun {
    var t = StreamTranslator(context: ctx, collectsAnswer: collectsAnswer)
    var out: [UInt8] = []
    do throws(APIError) {
        for c in chunks { out += try t.feed(c, nowNanos: now) }
    } catch {
        return StreamRun(out: out, translator: t, error: error)
    }
    if finish { out += t.finish(nowNanos: now) }
    return StreamRun(out: out, translator: t, error: nil)
}

func randomSplits(_ bytes: [UInt8], _ rng: inout SplitMix64) -> [[UInt8]] {
    var chunks: [[UInt8]] = []
    var i = 0
    while i < bytes.count {
        let n = rng.chance(20) ? 0 : 1 + rng.below(rng.chance(50) ? 8 : 200)
        let end = min(bytes.count, i + n)
        chunks.append(Array(bytes[i..<end]))
        i = end
    }
    return chunks
}

/// The ways a stream is chunked in these tests: whole, byte by byte, random pieces.
func chunkings(_ bytes: [UInt8], seed: UInt64 = 7) -> [(String, [[UInt8]])] {
    var rng = SplitMix64(seed: seed)
    var out: [(String, [[UInt8]])] = [("whole", [bytes]), ("bytes", bytes.map { [$0] })]
    for k in 0..<4 { out.append(("random\(k)", randomSplits(bytes, &rng))) }
    return out
}

/// The (client, engine) route pairs meshd can produce, covering all four dialect combinations.
let streamPairs: [(InferenceRoute, InferenceRoute)] = [
    (.openaiChat, .openaiChat), (.openaiCompletion, .openaiCompletion),
    (.openaiChat, .ollamaChat), (.openaiCompletion, .ollamaGenerate),
    (.ollamaChat, .openaiChat), (.ollamaGenerate, .openaiChat), (.ollamaGenerate, .openaiCompletion),
    (.ollamaChat, .ollamaChat), (.ollamaGenerate, .ollamaGenerate),
]

struct StreamPair: Sendable, CustomTestStringConvertible {
    let client: InferenceRoute
    let engine: InferenceRoute
    let includeUsage: Bool
    var testDescription: String { "\(client.rawValue) ← \(engine.rawValue)\(includeUsage ? " +usage" : "")" }
    var ctx: ResponseContext { context(client, engine, includeUsage: includeUsage) }

    static let all: [StreamPair] = streamPairs.flatMap { (c, e) in
        c.dialect == .openai ? [StreamPair(client: c, engine: e, includeUsage: false), StreamPair(client: c, engine: e, includeUsage: true)]
            : [StreamPair(client: c, engine: e, includeUsage: false)]
    }
}

// MARK: - checks of client output

let expectedText = "Hello, wörld 😀"
let expectedUsage = TokenUsage(promptTokens: 5, completionTokens: 2)

func text(ofChunk j: JSON, chat: Bool) -> String {
    chat ? (j["choices"]?[0]?["delta"]?["content"]?.stringValue ?? "") : (j["choices"]?[0]?["text"]?.stringValue ?? "")
}

func checkOpenAIClient(_ out: [UInt8], pair: StreamPair, sourceLocation: SourceLocation = #_sourceLocation) {
    let chat = pair.client == .openaiChat
    guard let events = sseJSON(out) else {
        Issue.record("bad SSE framing: \(hexDump(out))", sourceLocation: sourceLocation)
        return
    }
    #expect(events.last.map { $0 == nil } == true, "last event must be [DONE]", sourceLocation: sourceLocation)
    #expect(events.filter { $0 == nil }.count == 1, "one [DONE]", sourceLocation: sourceLocation)
    let chunks = events.compactMap { $0 }
    #expect(Set(chunks.compactMap { $0["id"]?.stringValue }).count == 1, "one id across chunks", sourceLocation: sourceLocation)
    #expect(chunks.allSatisfy { $0["id"]?.stringValue != nil }, sourceLocation: sourceLocation)
    #expect(chunks.allSatisfy { $0["object"]?.stringValue == (chat ? "chat.completion.chunk" : "text_completion") }, sourceLocation: sourceLocation)
    if chat {
        #expect(chunks.first?["choices"]?[0]?["delta"]?["role"]?.stringValue == "assistant", "role chunk first", sourceLocation: sourceLocation)
    }
    #expect(chunks.map { text(ofChunk: $0, chat: chat) }.joined() == expectedText, sourceLocation: sourceLocation)
    #expect(chunks.contains { $0["choices"]?[0]?["finish_reason"]?.stringValue == "stop" }, sourceLocation: sourceLocation)
    let usageChunks = chunks.enumerated().filter { $0.element["choices"]?.arrayValue?.isEmpty == true && $0.element["usage"] != nil }
    #expect(usageChunks.count == (pair.includeUsage ? 1 : 0), "usage chunk only when asked", sourceLocation: sourceLocation)
    if let u = usageChunks.first {
        #expect(u.offset == chunks.count - 1, "usage chunk comes last", sourceLocation: sourceLocation)
        #expect(u.element["usage"]?["prompt_tokens"]?.intValue == 5, sourceLocation: sourceLocation)
        #expect(u.element["usage"]?["completion_tokens"]?.intValue == 2, sourceLocation: sourceLocation)
        #expect(u.element["usage"]?["total_tokens"]?.intValue == 7, sourceLocation: sourceLocation)
    }
}

func checkOllamaClient(_ out: [UInt8], pair: StreamPair, sourceLocation: SourceLocation = #_sourceLocation) {
    let chat = pair.client == .ollamaChat
    guard let lines = ndjsonLines(out) else {
        Issue.record("bad NDJSON: \(hexDump(out))", sourceLocation: sourceLocation)
        return
    }
    #expect(lines.dropLast().allSatisfy { $0["done"]?.boolValue == false }, sourceLocation: sourceLocation)
    let content = lines.map { chat ? ($0["message"]?["content"]?.stringValue ?? "") : ($0["response"]?.stringValue ?? "") }.joined()
    #expect(content == expectedText, sourceLocation: sourceLocation)
    for l in lines {
        #expect(l["created_at"]?.stringValue != nil, sourceLocation: sourceLocation)
        #expect(l["model"]?.stringValue != nil, sourceLocation: sourceLocation)
        if chat { #expect(l["message"]?["role"]?.stringValue == "assistant", sourceLocation: sourceLocation) }
    }
    guard let last = lines.last else {
        Issue.record("no output", sourceLocation: sourceLocation)
        return
    }
    #expect(last["done"]?.boolValue == true, sourceLocation: sourceLocation)
    #expect(last["done_reason"]?.stringValue == "stop", sourceLocation: sourceLocation)
    #expect(last["prompt_eval_count"]?.intValue == 5, sourceLocation: sourceLocation)
    #expect(last["eval_count"]?.intValue == 2, sourceLocation: sourceLocation)
    for k in ["total_duration", "load_duration", "prompt_eval_duration", "eval_duration"] {
        #expect((last[k]?.intValue ?? -1) >= 0, "\(k) in \(last.compactString)", sourceLocation: sourceLocation)
    }
}

// MARK: - tests

@Suite struct StreamTranslatorTests {
    @Test(arguments: StreamPair.all) func realisticStreamAnyChunking(_ pair: StreamPair) {
        let engine = EngineStreams.forEngine(pair.engine)
        var reference: [UInt8]?
        for (name, chunks) in chunkings(engine) {
            let run = runStream(pair.ctx, chunks)
            #expect(run.error == nil)
            #expect(run.translator.finished, "\(name)")
            #expect(run.translator.usage == expectedUsage, "\(name)")
            #expect(run.translator.contentChunks == 2, "\(name)")
            #expect(run.translator.startedOutput, "\(name)")
            #expect(run.translator.firstTokenNanos == streamNow, "\(name)")
            if let reference {
                #expect(run.out == reference, "\(name) chunking changed the output")
            } else {
                reference = run.out
            }
        }
        guard let out = reference else { return }
        switch pair.client.dialect {
        case .openai: checkOpenAIClient(out, pair: pair)
        case .ollama: checkOllamaClient(out, pair: pair)
        }
    }

    @Test func sameDialectRelaysEngineEventsVerbatim() {
        let engine = EngineStreams.openAIChat()
        let run = runStream(context(.openaiChat, .openaiChat, includeUsage: true), [engine])
        #expect(run.out == engine)  // includes role chunk, usage chunk and [DONE], byte for byte
        let o = EngineStreams.ollama(chat: true)
        #expect(runStream(context(.ollamaChat, .ollamaChat), [o]).out == o)
    }

    @Test func usageChunkDroppedWhenNotAsked() {
        let engine = EngineStreams.openAIChat()
        let run = runStream(context(.openaiChat, .openaiChat, includeUsage: false), [engine])
        let events = sseEvents(run.out) ?? []
        #expect(events.count == 5)  // role, 2 content, finish, [DONE]
        #expect(!events.contains { $0.contains("\"usage\"") })
        #expect(run.translator.usage == expectedUsage)  // still counted for meshd
    }

    @Test(arguments: [InferenceRoute.openaiChat, .ollamaChat]) func roleChunkInjectedWhenEngineSendsNone(_ engineRoute: InferenceRoute) {
        let engine = engineRoute == .openaiChat ? EngineStreams.openAIChat(role: false) : EngineStreams.ollama(chat: true)
        let pair = StreamPair(client: .openaiChat, engine: engineRoute, includeUsage: true)
        for (name, chunks) in chunkings(engine) {
            let run = runStream(pair.ctx, chunks)
            checkOpenAIClient(run.out, pair: pair)
            let firstEvent: JSON? = sseJSON(run.out)?.first ?? nil
            let first = firstEvent?["choices"]?[0]?["delta"]
            #expect(first == J(#"{"role":"assistant","content":""}"#), "\(name)")
            let roles = (sseJSON(run.out) ?? []).compactMap { $0?["choices"]?[0]?["delta"]?["role"] }
            #expect(roles.count == 1, "exactly one role chunk (\(name))")
        }
        // The injected chunk carries the engine's id when the engine has one, so all chunks agree.
        if engineRoute == .openaiChat {
            let ids = (sseJSON(runStream(pair.ctx, [engine]).out) ?? []).compactMap { $0?["id"]?.stringValue }
            #expect(Set(ids) == ["chatcmpl-eng"])
        }
    }

    @Test func synthesisedOpenAIChunksUseTheContextID() {
        let run = runStream(context(.openaiChat, .ollamaChat, includeUsage: true, id: "chatcmpl-xyz"), [EngineStreams.ollama(chat: true)])
        let chunks = (sseJSON(run.out) ?? []).compactMap { $0 }
        #expect(!chunks.isEmpty)
        #expect(chunks.allSatisfy { $0["id"]?.stringValue == "chatcmpl-xyz" && $0["model"]?.stringValue == "client-model" && $0["created"]?.intValue == 1_700_000_000 })
        let c = runStream(context(.openaiCompletion, .ollamaGenerate, id: "cmpl-q"), [EngineStreams.ollama(chat: false)])
        #expect((sseJSON(c.out) ?? []).compactMap { $0 }.allSatisfy { $0["id"]?.stringValue == "cmpl-q" })
    }

    @Test func ollamaFinalLineFromOpenAIEngineCarriesTimings() {
        let run = runStream(context(.ollamaChat, .openaiChat), [EngineStreams.openAIChat()])
        let last = ndjsonLines(run.out)?.last
        #expect(last?["prompt_eval_duration"]?.intValue == 12_500_000)
        #expect(last?["eval_duration"]?.intValue == 40_250_000)
        #expect(last?["total_duration"]?.intValue == Int(streamNow - testStart))
        #expect(last?["model"]?.stringValue == "client-model")
        #expect(last?["created_at"]?.stringValue == ISO8601.format(nanos: streamNow))
    }

    @Test func ollamaDurationsMeasuredWhenEngineHasNoTimings() {
        // A stream without timings, fed event by event at known times.
        let engine = EngineStreams.openAIChat(finish: false)
        var events = (sseEvents(engine) ?? []).map { utf8("data: \($0)\n\n") }
        events.insert(utf8(#"data: {"choices":[{"index":0,"delta":{},"finish_reason":"length"}],"id":"x"}"# + "\n\n"), at: 3)
        let ms: UInt64 = 1_000_000
        let times: [UInt64] = [100, 200, 300, 400, 450, 500].map { testStart + $0 * ms }
        var t = StreamTranslator(context: context(.ollamaGenerate, .openaiChat))
        var out: [UInt8] = []
        for (e, now) in zip(events, times) {
            out += (try? t.feed(e, nowNanos: now)) ?? []
        }
        out += t.finish(nowNanos: testStart + 600 * ms)
        let lines = ndjsonLines(out) ?? []
        #expect(lines.count == 3)
        #expect(lines.first?["created_at"]?.stringValue == ISO8601.format(nanos: testStart + 200 * ms))
        let last = lines.last
        #expect(last?["done_reason"]?.stringValue == "length")
        #expect(last?["prompt_eval_duration"]?.intValue == 200_000_000)  // request start → first token
        #expect(last?["eval_duration"]?.intValue == 300_000_000)  // first token → [DONE]
        #expect(last?["total_duration"]?.intValue == 500_000_000)
        #expect(last?["created_at"]?.stringValue == ISO8601.format(nanos: testStart + 500 * ms))
        #expect(t.firstTokenNanos == testStart + 200 * ms)
    }

    @Test func missingUsageIsCountedFromContent() {
        let run = runStream(context(.ollamaChat, .openaiChat), [EngineStreams.openAIChat(usage: false, pieces: ["a", "", "b", "c"])])
        #expect(run.translator.usage == TokenUsage(promptTokens: 0, completionTokens: 3))
        #expect(ndjsonLines(run.out)?.last?["eval_count"]?.intValue == 3)
        let o = runStream(context(.openaiChat, .ollamaChat, includeUsage: true),
                          [utf8(#"{"message":{"content":"a"},"done":false}"# + "\n" + #"{"message":{"content":""},"done":true}"# + "\n")])
        #expect(o.translator.usage == TokenUsage(promptTokens: 0, completionTokens: 1))
        let usage = (sseJSON(o.out) ?? []).compactMap { $0?["usage"] }
        #expect(usage == [J(#"{"prompt_tokens":0,"completion_tokens":1,"total_tokens":1}"#)])
    }

    @Test(arguments: StreamPair.all) func unterminatedStreamEndsWithErrorEvent(_ pair: StreamPair) {
        let engine = EngineStreams.forEngine(pair.engine, done: false)
        for (name, chunks) in chunkings(engine) {
            let run = runStream(pair.ctx, chunks)
            #expect(run.translator.finished, "\(name)")
            switch pair.client.dialect {
            case .openai:
                guard let events = sseJSON(run.out), let last = events.last, let err = last?["error"] else {
                    Issue.record("\(name): no error event at the end: \(hexDump(run.out))")
                    continue
                }
                #expect(!events.contains { $0 == nil }, "no [DONE] after a failure")
                #expect(err["message"]?.stringValue?.contains("before it finished") == true)
                #expect(err["type"]?.stringValue == "server_error")
                #expect(err["code"]?.stringValue == "engine_error")
            case .ollama:
                guard let lines = ndjsonLines(run.out), let last = lines.last else {
                    Issue.record("\(name): bad output \(hexDump(run.out))")
                    continue
                }
                #expect(last["error"]?.stringValue?.contains("before it finished") == true)
                #expect(!lines.contains { $0["done"]?.boolValue == true })
            }
        }
    }

    @Test(arguments: StreamPair.all) func finishAfterProperEndAddsNothing(_ pair: StreamPair) {
        var t = StreamTranslator(context: pair.ctx)
        _ = try? t.feed(EngineStreams.forEngine(pair.engine), nowNanos: streamNow)
        #expect(t.finished)
        #expect(t.finish(nowNanos: streamNow).isEmpty)
    }

    @Test func finalLineWithoutNewlineIsHandledByFinish() {
        var engine = EngineStreams.ollama(chat: true)
        engine.removeLast()
        let pair = StreamPair(client: .ollamaChat, engine: .ollamaChat, includeUsage: false)
        var t = StreamTranslator(context: pair.ctx)
        let first = (try? t.feed(engine, nowNanos: streamNow)) ?? []
        #expect(!t.finished)
        let rest = t.finish(nowNanos: streamNow)
        #expect(t.finished)
        checkOllamaClient(first + rest, pair: pair)
        var sse = EngineStreams.openAIChat()
        sse.removeLast(2)  // "data: [DONE]" without its blank line
        let run = runStream(context(.openaiChat, .openaiChat), [sse])
        #expect(sseEvents(run.out)?.last == "[DONE]")
    }

    @Test(arguments: StreamPair.all) func engineErrorMidStream(_ pair: StreamPair) {
        let good = EngineStreams.forEngine(pair.engine)
        let errorLine: [UInt8] = pair.engine.dialect == .openai
            ? utf8(#"data: {"error":{"message":"boom: out of memory","type":"server_error","code":500}}"# + "\n\n")
            : utf8(#"{"error":"boom: out of memory"}"# + "\n")
        // Cut the good stream after its second event/line, insert the error, then the rest (to be ignored).
        let separator: [UInt8] = pair.engine.dialect == .openai ? [0x0A, 0x0A] : [0x0A]
        var cut = 0
        var seen = 0
        var i = 0
        while i + separator.count <= good.count {
            if Array(good[i..<(i + separator.count)]) == separator {
                seen += 1
                if seen == 2 { cut = i + separator.count; break }
            }
            i += 1
        }
        let engine = Array(good[..<cut]) + errorLine + Array(good[cut...])
        var reference: [UInt8]?
        for (name, chunks) in chunkings(engine) {
            let run = runStream(pair.ctx, chunks)
            #expect(run.translator.finished, "\(name)")
            if let reference { #expect(run.out == reference, "\(name)") } else { reference = run.out }
        }
        let out = reference ?? []
        switch pair.client.dialect {
        case .openai:
            let events = sseJSON(out)
            #expect(events != nil, "framing: \(hexDump(out))")
            let last = events?.last ?? nil
            #expect(last?["error"]?["message"]?.stringValue == "boom: out of memory")
            #expect(last?["error"]?["code"]?.stringValue == "engine_error")
            #expect(events?.contains { $0 == nil } == false, "no [DONE] after the error")
            #expect((events ?? []).compactMap { $0.map { text(ofChunk: $0, chat: pair.client == .openaiChat) } }.joined().hasPrefix("Hel"))
        case .ollama:
            let lines = ndjsonLines(out)
            #expect(lines != nil, "framing: \(hexDump(out))")
            #expect(lines?.last == J(#"{"error":"boom: out of memory"}"#))
            #expect(lines?.contains { $0["done"]?.boolValue == true } == false)
        }
    }

    @Test func overLongLineThrows() {
        let limit = StreamTranslator.maxLineBytes
        for route in [InferenceRoute.openaiChat, .ollamaChat] {
            var t = StreamTranslator(context: context(route, route))
            let big = [UInt8](repeating: 0x61, count: limit)
            #expect(throws: Never.self) { _ = try t.feed(big, nowNanos: streamNow) }  // exactly the limit: fine
            do throws(APIError) {
                _ = try t.feed([0x61], nowNanos: streamNow)
                Issue.record("no error for a line of \(limit + 1) bytes")
            } catch {
                #expect(error.status == 502)
                #expect(error.code == "engine_error")
            }
            var fresh = StreamTranslator(context: context(route, route))
            #expect(throws: APIError.self) { _ = try fresh.feed([UInt8](repeating: 0x7B, count: limit + 10), nowNanos: streamNow) }
        }
        // Long lines that end inside the same chunk are fine.
        var t = StreamTranslator(context: context(.ollamaChat, .ollamaChat))
        let long = utf8(#"{"message":{"content":""# + String(repeating: "x", count: limit + 100) + #""},"done":false}"# + "\n")
        #expect(throws: Never.self) { _ = try t.feed(long, nowNanos: streamNow) }
    }

    @Test(arguments: StreamPair.all) func commentsAndOtherSSEFieldsIgnored(_ pair: StreamPair) {
        guard pair.engine.dialect == .openai else { return }
        let clean = EngineStreams.forEngine(pair.engine)
        let events = sseEvents(clean) ?? []
        var noisy = utf8(": connected\n\nretry: 3000\n\n")
        for e in events {
            noisy += utf8(": keep-alive\nevent: message\nid: 17\ndata: \(e)\n\n:\n\n")
        }
        let a = runStream(pair.ctx, [clean]).out
        for (name, chunks) in chunkings(noisy) {
            #expect(runStream(pair.ctx, chunks).out == a, "\(name)")
        }
        // `data:` without the optional space is the same event.
        let tight = utf8(events.map { "data:\($0)\n\n" }.joined())
        #expect(runStream(pair.ctx, [tight]).out == a)
    }

    @Test(arguments: StreamPair.all) func crlfLineEndings(_ pair: StreamPair) {
        let lf = EngineStreams.forEngine(pair.engine)
        var crlf: [UInt8] = []
        for b in lf {
            if b == 0x0A { crlf.append(0x0D) }
            crlf.append(b)
        }
        let a = runStream(pair.ctx, [lf]).out
        for (name, chunks) in chunkings(crlf) {
            #expect(runStream(pair.ctx, chunks).out == a, "\(name)")
        }
    }

    @Test func garbageLinesIgnored() {
        let pair = StreamPair(client: .ollamaChat, engine: .ollamaChat, includeUsage: false)
        let engine = utf8("not json\n\n{broken\n") + EngineStreams.ollama(chat: true)
        let run = runStream(pair.ctx, [engine])
        checkOllamaClient(run.out, pair: pair)
        let s = StreamPair(client: .openaiChat, engine: .openaiChat, includeUsage: false)
        let sse = utf8("data: {nope\n\ndata: \n\ndata\n\n") + EngineStreams.openAIChat()
        checkOpenAIClient(runStream(s.ctx, [sse]).out, pair: s)
    }

    @Test func linesAfterTheEndAreIgnored() {
        let pair = StreamPair(client: .ollamaChat, engine: .openaiChat, includeUsage: false)
        let engine = EngineStreams.openAIChat() + EngineStreams.openAIChat(pieces: ["MORE"])
        let run = runStream(pair.ctx, [engine])
        checkOllamaClient(run.out, pair: pair)
    }

    @Test func bareCarriageReturnInsidePayloadDoesNotBreakFraming() {
        // JSON allows CR as whitespace; SSE and line readers treat a bare CR as a line break.
        let payload = "{\"choices\":[{\"index\":0,\r\"delta\":{\"content\":\"x\"}}],\"id\":\"i\"}"
        let pair = StreamPair(client: .openaiChat, engine: .openaiChat, includeUsage: false)
        let out = runStream(pair.ctx, [utf8("data: \(payload)\n\ndata: [DONE]\n\n")]).out
        #expect(sseJSON(out) != nil, "\(hexDump(out))")
        let o = runStream(context(.ollamaChat, .ollamaChat), [utf8("{\"message\":{\"content\":\"x\"},\r\"done\":true}\n")]).out
        #expect(ndjsonLines(o) != nil, "\(hexDump(o))")
    }

    @Test func failProducesDialectErrorEvent() {
        var a = StreamTranslator(context: context(.openaiChat, .ollamaChat))
        let e = a.fail(message: "engine timed out", nowNanos: streamNow)
        #expect(String(decoding: e, as: UTF8.self)
            == #"data: {"error":{"message":"engine timed out","type":"server_error","param":null,"code":"engine_error"}}"# + "\n\n")
        #expect(a.finished && a.startedOutput)
        #expect(a.finish(nowNanos: streamNow).isEmpty)
        var b = StreamTranslator(context: context(.ollamaGenerate, .openaiChat))
        #expect(String(decoding: b.fail(message: "x\"y", nowNanos: streamNow), as: UTF8.self) == #"{"error":"x\"y"}"# + "\n")
        #expect((try? b.feed(EngineStreams.openAIChat(), nowNanos: streamNow))?.isEmpty == true)  // nothing after a failure
    }

    @Test func emptyFeedsProduceNothing() throws {
        var t = StreamTranslator(context: context(.openaiChat, .openaiChat))
        #expect(try t.feed([], nowNanos: streamNow).isEmpty)
        #expect(try t.feed(utf8("\n\n\r\n"), nowNanos: streamNow).isEmpty)
        #expect(!t.startedOutput)
    }
}

// MARK: - the answer, kept for the engine's cache shadow

@Suite struct StreamAnswerTests {
    /// Content pieces as they stand in the engine's JSON (escapes and all), and the text they make.
    static let rawPieces = [#"Hel"#, #"lo\n"#, #" \"wörld\" 😀"#, #" caf\u00e9\t\/"#]
    static let text = "Hello\n \"wörld\" 😀 café\t/"

    /// An OpenAI engine's chat (or completion) stream of `pieces` (raw JSON string contents).
    static func openAI(chat: Bool = true, role: Bool = true, pieces: [String] = rawPieces) -> [UInt8] {
        let meta = #""created":1,"id":"chatcmpl-eng","model":"tiny","object":"\#(chat ? "chat.completion.chunk" : "text_completion")""#
        func content(_ raw: String) -> String { chat ? #""delta":{"content":"\#(raw)"}"# : #""text":"\#(raw)""# }
        var events: [String] = []
        if chat && role { events.append(#"{"choices":[{"finish_reason":null,"index":0,"delta":{"role":"assistant","content":null}}],\#(meta)}"#) }
        events += pieces.map { #"{"choices":[{"finish_reason":null,"index":0,\#(content($0))}],\#(meta)}"# }
        events.append(#"{"choices":[{"finish_reason":"stop","index":0,\#(content(""))}],\#(meta)}"#)
        events.append("[DONE]")
        return EngineStreams.sse(events)
    }

    /// Runs `engine` through a translator for `client`, chunked every way, collecting the answer;
    /// the client's bytes must be those of a translator that does not collect it.
    static func answers(_ client: InferenceRoute, _ engine: InferenceRoute, _ stream: [UInt8],
                        sourceLocation: SourceLocation = #_sourceLocation) -> [(String, [UInt8])] {
        let reference = runStream(context(client, engine), [stream])
        #expect(reference.translator.answer.isEmpty, "collecting off", sourceLocation: sourceLocation)
        return chunkings(stream).map { name, chunks in
            let run = runStream(context(client, engine), chunks, collectsAnswer: true)
            #expect(run.error == nil && run.translator.finished, "\(name)", sourceLocation: sourceLocation)
            let same = run.out == reference.out  // not in #expect: it would print both streams
            #expect(same, "\(name): collecting changed the output", sourceLocation: sourceLocation)
            return (name, run.translator.answer)
        }
    }

    @Test(arguments: [true, false]) func plainChunksAfterTheFirstEventAreCollectedOnTheFastPath(chat: Bool) {
        let route: InferenceRoute = chat ? .openaiChat : .openaiCompletion
        // Chat: every piece comes after the role event. Completion: the first piece is the first event.
        for (name, answer) in Self.answers(route, route, Self.openAI(chat: chat)) {
            #expect(answer == utf8(Self.text), "\(name): \(String(decoding: answer, as: UTF8.self).debugDescription)")
        }
    }

    @Test func aFirstEventWithContentIsCollectedOnTheFullPath() {
        for (name, answer) in Self.answers(.openaiChat, .openaiChat, Self.openAI(role: false)) {
            #expect(answer == utf8(Self.text), "\(name)")
        }
        // An Ollama client reads every OpenAI event on the full path.
        for (name, answer) in Self.answers(.ollamaChat, .openaiChat, Self.openAI()) {
            #expect(answer == utf8(Self.text), "\(name)")
        }
    }

    @Test(arguments: [(InferenceRoute.ollamaChat, InferenceRoute.ollamaChat), (.openaiChat, .ollamaChat), (.ollamaGenerate, .ollamaGenerate)])
    func anOllamaEnginesLinesAreCollected(client: InferenceRoute, engine: InferenceRoute) {
        let pieces = ["Hel", "lo\n", " \"wörld\" 😀", " café\t/"]
        for (name, answer) in Self.answers(client, engine, EngineStreams.ollama(chat: engine == .ollamaChat, pieces: pieces)) {
            #expect(answer == utf8(Self.text), "\(name)")
        }
    }

    @Test(arguments: [false, true]) func theAnswerStopsAtTheCap(escapedAcross: Bool) {
        // 260,000 bytes, then a piece that crosses the cap (escaped or not), then one past it.
        let long = String(repeating: "x", count: 65_000)
        let across = escapedAcross ? String(repeating: #"\u00e9\n"#, count: 2_000) : String(repeating: "y", count: 6_000)
        let stream = Self.openAI(pieces: [long, long, long, long, across, "z"])
        let full = utf8(String(repeating: long, count: 4) + (escapedAcross ? String(repeating: "é\n", count: 2_000) : across) + "z")
        for (name, answer) in Self.answers(.openaiChat, .openaiChat, stream) {
            let prefix = answer[...] == full.prefix(StreamTranslator.answerCap)  // not in #expect: it would print both
            #expect(answer.count == StreamTranslator.answerCap && prefix, "\(name): \(answer.count) bytes")
        }
    }
}
