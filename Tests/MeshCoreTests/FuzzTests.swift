import MeshCore
import Testing

/// Fuzz tests of the request parsers and the stream translator. They run in CI with fixed seeds
/// (set `MESHD_FUZZ_SEED` to try another, `MESHD_FUZZ_SCALE` to run more iterations); every
/// failure names the seed and iteration that reproduce it.
@Suite struct FuzzTests {
    // MARK: seed bodies: one valid request per route, using as many fields as the route knows

    static let seeds: [InferenceRoute: String] = [
        .openaiChat: #"""
            {"model":"llama3","messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi"},
             {"type":"image_url","image_url":{"url":"data:image/png;base64,QUJD"}}]},{"role":"assistant","content":null,"tool_calls":[]}],
             "stream":true,"stream_options":{"include_usage":true},"max_tokens":64,"max_completion_tokens":32,"temperature":0.7,
             "top_p":0.9,"seed":42,"frequency_penalty":0.1,"presence_penalty":-0.1,"stop":["\n"],"response_format":{"type":"json_object"},"user":"u"}
            """#,
        .openaiCompletion: #"{"model":"tiny","prompt":"Once upon a time","max_tokens":16,"stream":false,"stop":"\n","temperature":0,"seed":-1}"#,
        .openaiEmbeddings: #"{"model":"nomic","input":["alpha","beta"],"encoding_format":"float"}"#,
        .ollamaChat: #"""
            {"model":"llama3:8b","messages":[{"role":"system","content":"s"},{"role":"user","content":"look","images":["QUJD"]}],
             "stream":false,"format":"json","keep_alive":"5m","options":{"num_predict":128,"temperature":0.8,"top_p":0.95,"top_k":40,
             "seed":7,"stop":["</s>"],"frequency_penalty":0.5,"presence_penalty":0.5,"num_ctx":4096}}
            """#,
        .ollamaGenerate: #"{"model":"llama3","prompt":"Why is the sky blue?","system":"short","raw":false,"images":["QUJD"],"format":{"type":"object"},"options":{"num_predict":-1,"temperature":1}}"#,
        .ollamaEmbed: #"{"model":"nomic","input":"hello","truncate":true}"#,
        .ollamaEmbeddings: #"{"model":"nomic","prompt":"hello"}"#,
    ]

    static func seedBytes(_ r: InferenceRoute) -> [UInt8] { utf8(seeds[r]!) }

    // MARK: invariants

    /// Nil when a parse outcome is acceptable; otherwise what is wrong with it.
    static func violation(_ route: InferenceRoute, _ result: Result<InferenceRequest, APIError>) -> String? {
        switch result {
        case .failure(let e):
            if e.status != 400 { return "status \(e.status)" }
            if e.message.isEmpty { return "empty message" }
            guard let code = e.code else { return "no code" }
            switch code {
            case "invalid_json":
                if e.param != nil { return "invalid_json with param \(e.param!)" }
            case "invalid_value", "missing_field":
                guard let p = e.param, !p.isEmpty else { return "\(code) without param" }
                if !e.message.contains("'\(p)'") { return "message does not name \(p): \(e.message)" }
            default:
                return "unexpected code \(code)"
            }
            return nil
        case .success(let r):
            if r.route != route { return "route changed" }
            if r.model.allSatisfy({ $0 == " " || $0 == "\t" || $0 == "\n" || $0 == "\r" }) { return "blank model" }
            if route == .openaiChat && r.messages.isEmpty { return "openai chat without messages" }
            if route.operation == .embedding {
                if r.inputs.isEmpty && r.tokenInputs.isEmpty { return "embedding without inputs" }
                if !r.inputs.isEmpty && !r.tokenInputs.isEmpty { return "embedding with both text and token ids" }
                if r.tokenInputs.contains(where: { $0.isEmpty || $0.contains { $0 < 0 } }) { return "empty or negative token ids" }
                if r.stream { return "streaming embedding" }
            } else if !r.inputs.isEmpty || !r.tokenInputs.isEmpty {
                return "inputs on a non-embedding route"
            }
            let roles: Set<String> = ["system", "user", "assistant", "tool", "function"]
            if let bad = r.messages.first(where: { !roles.contains($0.role) }) { return "role \(bad.role)" }
            if route.dialect == .ollama && r.includeUsage { return "include_usage on an Ollama route" }
            if let m = r.options.maxTokens, m < 0 { return "negative max tokens" }
            if let t = r.options.temperature, !(0...100).contains(t) { return "temperature \(t)" }
            if let p = r.options.topP, !(0...1).contains(p) { return "top_p \(p)" }
            if r.body.objectValue == nil { return "body not an object" }
            // Whatever was accepted must translate for both engine dialects into serialisable JSON.
            for dialect in [Dialect.openai, .ollama] {
                let e = EngineRequestBuilder.build(r, engine: dialect, engineModel: "engine:model")
                if e.body["model"]?.stringValue != "engine:model" { return "\(dialect) engine body model \(String(describing: e.body["model"]))" }
                if keys(e.body).filter({ $0 == "model" }).count != 1 { return "\(dialect) engine body has several model keys" }
                if e.engineRoute.dialect != dialect { return "engine route \(e.engineRoute) for \(dialect)" }
                if e.engineRoute.operation == .embedding && e.stream { return "streaming embedding to engine" }
                if e.stream != r.stream { return "stream flag changed" }
                guard case .success(let back) = jsonResult(e.body.serialized()), back == e.body else {
                    return "\(dialect) engine body does not round-trip: \(e.body.compactString)"
                }
            }
            return nil
        }
    }

    // MARK: (a) random byte strings

    @Test func randomBytes() {
        let seed = fuzzSeed(default: 0xA11C_E5ED)
        print("FuzzTests.randomBytes seed \(seed)")
        var rng = SplitMix64(seed: seed)
        let alphabet = utf8(#"{}[]:,"\ntrufalsn0123456789-+.eE \u"#) + [0x0A, 0x0D, 0x09, 0x00, 0x1F, 0x7F, 0x80, 0xBF, 0xC3, 0xE2, 0xF0, 0xFF]
        let routes = InferenceRoute.allCases
        var failures = 0
        for iteration in 0..<fuzzIterations(8000) {
            let n = rng.below(rng.chance(10) ? 400 : 48)
            let bytes: [UInt8] = (0..<n).map { _ in rng.chance(70) ? rng.pick(alphabet) : UInt8(truncatingIfNeeded: rng.next()) }
            let note = "seed \(seed) iteration \(iteration): \(hexDump(bytes))"
            switch jsonResult(bytes) {
            case .failure(let e):
                if !(0...bytes.count).contains(e.offset) || e.reason.isEmpty { failures += 1; Issue.record("bad parse error \(e); \(note)") }
            case .success(let j):
                if !(jsonResult(j.serialized()).map { $0 == j } == .success(true)) { failures += 1; Issue.record("round trip; \(note)") }
            }
            let route = routes[iteration % routes.count]
            if let v = Self.violation(route, requestResult(route, bytes)) { failures += 1; Issue.record("\(route.rawValue): \(v); \(note)") }
            if failures > 20 { return }
        }
    }

    // MARK: (b) mutations of valid bodies

    static let tokens: [[UInt8]] = [
        "{", "}", "[", "]", ",", ":", "\"", "\\", "\\u", "\\uD800", "\\uDC00", "null", "true", "false", "-", "0", "01", "-0",
        "1e999", "-1e999", "1e-999", "9223372036854775808", String(repeating: "9", count: 400), "1.", ".5", " ", "\t",
        "\"model\":\"\",", "\"model\":null,", "\"messages\":[],", "\"stream\":\"yes\",", "\"model\":\"dup\",",
        "\"options\":5,", "\"input\":[],", "\"prompt\":{},", "\"max_tokens\":-5,", "\"temperature\":1e308,",
    ].map { utf8($0) } + [[0x00], [0xFF], [0xC3], [0xED, 0xA0, 0x80], [0x0D], [0x0A], [0x1F]]

    static func mutate(_ input: [UInt8], _ rng: inout SplitMix64) -> [UInt8] {
        var b = input
        for _ in 0..<(1 + rng.below(3)) {
            let pos = b.isEmpty ? 0 : rng.below(b.count + 1)
            switch rng.below(10) {
            case 0:  // bit flips
                if !b.isEmpty { for _ in 0..<(1 + rng.below(3)) { b[rng.below(b.count)] ^= UInt8(1) << UInt8(rng.below(8)) } }
            case 1:  // truncation
                b = Array(b.prefix(pos))
            case 2:  // random bytes inserted
                b.insert(contentsOf: rng.bytes(1 + rng.below(8)), at: pos)
            case 3:  // a range deleted
                if pos < b.count { b.removeSubrange(pos..<min(b.count, pos + 1 + rng.below(16))) }
            case 4:  // a JSON-ish token inserted
                b.insert(contentsOf: rng.pick(tokens), at: pos)
            case 5:  // a duplicate key right after the opening brace
                if let brace = b.firstIndex(of: UInt8(ascii: "{")) { b.insert(contentsOf: rng.pick(tokens.filter { $0.last == UInt8(ascii: ",") }), at: brace + 1) }
            case 6:  // deep nesting around the whole body or at a random spot
                let depth = rng.pick([60, 127, 128, 129, 300])
                if rng.chance(50) {
                    b = [UInt8](repeating: UInt8(ascii: "["), count: depth) + b + [UInt8](repeating: UInt8(ascii: "]"), count: depth)
                } else {
                    b.insert(contentsOf: [UInt8](repeating: UInt8(ascii: "["), count: depth), at: pos)
                }
            case 7:  // a number replaced by a huge or odd one
                replaceNumber(&b, &rng)
            case 8:  // splice from another route's body
                let other = seedBytes(rng.pick(InferenceRoute.allCases))
                let s = rng.below(other.count)
                b.insert(contentsOf: other[s..<min(other.count, s + 1 + rng.below(40))], at: pos)
            default:  // a byte duplicated many times
                if pos < b.count { b.insert(contentsOf: [UInt8](repeating: b[pos], count: 1 + rng.below(64)), at: pos) }
            }
        }
        return b
    }

    static let oddNumbers = ["1e308", "-1e308", "1e400", "123456789012345678901234567890", "9223372036854775807", "-9223372036854775809",
                             "0.5", "1e-400", "2", "-1", "1e19", "1e13"]

    /// Replaces a random run of digits with a huge, negative or fractional number.
    static func replaceNumber(_ b: inout [UInt8], _ rng: inout SplitMix64) {
        let digits = b.indices.filter { (0x30...0x39).contains(b[$0]) }
        guard !digits.isEmpty else { return }
        var start = digits[rng.below(digits.count)]
        while start > 0, (0x30...0x39).contains(b[start - 1]) || b[start - 1] == UInt8(ascii: ".") || b[start - 1] == UInt8(ascii: "-") { start -= 1 }
        var end = start
        while end < b.count, (0x30...0x39).contains(b[end]) || b[end] == UInt8(ascii: ".") || b[end] == UInt8(ascii: "-") { end += 1 }
        b.replaceSubrange(start..<end, with: utf8(rng.pick(oddNumbers)))
    }

    @Test func mutatedRequestBodies() {
        let seed = fuzzSeed(default: 0xB0D1_E5)
        print("FuzzTests.mutatedRequestBodies seed \(seed)")
        var rng = SplitMix64(seed: seed)
        let routes = InferenceRoute.allCases
        var failures = 0
        var accepted = 0
        for iteration in 0..<fuzzIterations(5000) {
            let origin = routes[iteration % routes.count]
            let body = Self.mutate(Self.seedBytes(origin), &rng)
            let note = "seed \(seed) iteration \(iteration) (from \(origin.rawValue)): \(hexDump(body))"
            // Parse the JSON once and check every route against it, plus the bytes path for one route.
            let json = jsonResult(body)
            if case .success(let j) = json, !(jsonResult(j.serialized()).map { $0 == j } == .success(true)) {
                failures += 1
                Issue.record("round trip; \(note)")
            }
            for route in routes {
                let result: Result<InferenceRequest, APIError>
                if route == origin {
                    result = requestResult(route, body)
                } else if case .success(let j) = json {
                    result = requestResult(route, json: j)
                } else {
                    continue
                }
                if case .success = result { accepted += 1 }
                if let v = Self.violation(route, result) { failures += 1; Issue.record("\(route.rawValue): \(v); \(note)") }
            }
            if failures > 20 { return }
        }
        #expect(accepted > 100, "the mutator should still produce valid requests (\(accepted))")
    }

    // MARK: wrong types (and absence) for every field of every route

    enum Step: CustomStringConvertible {
        case key(String), index(Int)
        var description: String {
            switch self {
            case .key(let k): return ".\(k)"
            case .index(let i): return "[\(i)]"
            }
        }
    }

    static func paths(_ j: JSON, _ prefix: [Step] = []) -> [[Step]] {
        var out: [[Step]] = []
        if let members = j.objectValue {
            for (k, v) in members { out.append(prefix + [.key(k)]); out += paths(v, prefix + [.key(k)]) }
        } else if let items = j.arrayValue {
            for (i, v) in items.enumerated() { out.append(prefix + [.index(i)]); out += paths(v, prefix + [.index(i)]) }
        }
        return out
    }

    static func pathString(_ p: [Step]) -> String { String(p.map(\.description).joined().dropFirst()) }

    /// Replaces (or with nil removes) the value at `path`.
    static func replacing(_ j: JSON, _ path: ArraySlice<Step>, with v: JSON?) -> JSON {
        guard let step = path.first else { return v ?? .null }
        switch (step, j) {
        case (.key(let k), .object):
            if path.count == 1 && v == nil { return j.removing(k) }
            return j.setting(k, replacing(j[k] ?? .null, path.dropFirst(), with: v))
        case (.index(let i), .array(var items)):
            if path.count == 1 && v == nil { items.remove(at: i); return .array(items) }
            items[i] = replacing(items[i], path.dropFirst(), with: v)
            return .array(items)
        default:
            return j
        }
    }

    static let wrongValues: [JSON?] = [
        nil, .null, true, false, 0, -1, -3, 1.5, 1e300, -1e300, .int(Int64.max), .int(Int64.min), 1e20, 2.5, 101,
        "", " ", "x", "json", "user", [], [nil], ["a"], [1], [:], ["type": "text"], ["role": "user", "content": "c"],
        .array([.array([.array([.array([.string("deep")])])])]),
    ]

    /// Whether `a` names `b` or a part of it (or the other way round), component-wise.
    static func related(_ a: String, _ b: String) -> Bool {
        func within(_ x: String, _ y: String) -> Bool { x == y || x.hasPrefix(y + ".") || x.hasPrefix(y + "[") }
        return within(a, b) || within(b, a)
    }

    @Test func wrongTypesForEveryField() {
        var failures = 0
        var checked = 0
        for route in InferenceRoute.allCases {
            let seed = J(Self.seeds[route]!)
            #expect(Self.violation(route, requestResult(route, json: seed)) == nil)
            guard case .success = requestResult(route, json: seed) else {
                Issue.record("seed body for \(route.rawValue) is rejected")
                continue
            }
            for path in Self.paths(seed) {
                let name = Self.pathString(path)
                for value in Self.wrongValues {
                    let body = Self.replacing(seed, path[...], with: value)
                    let result = requestResult(route, json: body)
                    checked += 1
                    let note = "\(route.rawValue) \(name) = \(value?.compactString ?? "<removed>"): \(body.compactString)"
                    if let v = Self.violation(route, result) { failures += 1; Issue.record("\(v); \(note)") }
                    if case .failure(let e) = result {
                        if let p = e.param {
                            if !Self.related(p, name) { failures += 1; Issue.record("param \(p) for a change to \(name); \(note)") }
                        } else {
                            failures += 1
                            Issue.record("no param for a change to \(name): \(e); \(note)")
                        }
                    }
                    // The same body as bytes must give the same outcome.
                    let viaBytes = requestResult(route, body.serialized())
                    switch (result, viaBytes) {
                    case (.success, .success): break
                    case let (.failure(a), .failure(b)) where a == b: break
                    default: failures += 1; Issue.record("bytes and JSON paths disagree; \(note)")
                    }
                    if failures > 20 { return }
                }
            }
        }
        #expect(checked > 1000)
    }

    // MARK: the stream translator

    static let streamTokens: [[UInt8]] = [
        "data: ", "data:", "[DONE]", "\n", "\n\n", "\r\n", "\r", ":", "{", "}", "\"", "\"error\":", "\"done\":true",
        "\"choices\":[]", "\"usage\":{\"prompt_tokens\":1e300}", "\"timings\":{\"prompt_ms\":1e300,\"predicted_ms\":-1e300}",
        "\"prompt_eval_count\":-5", "\"eval_duration\":9223372036854775807", "\"total_duration\":-9223372036854775808",
        "data: {\"error\":{\"message\":\"boom\"}}\n\n", "{\"error\":\"boom\"}\n", "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3}}\n\n",
        "{\"done\":true,\"eval_count\":1e300,\"prompt_eval_duration\":1e19}\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"x\"},\"finish_reason\":5}],\"id\":7,\"created\":1e300,\"model\":[]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}],\"timings\":{\"prompt_ms\":1e13,\"predicted_ms\":1e14}}\n\n",
        "{\"message\":{\"content\":\"y\"},\"done\":false}\n", "5\n", "data: 5\n\n", "data: \"s\"\n\n", "[1,2]\n",
    ].map { utf8($0) }

    static func randomEngineStream(_ engine: InferenceRoute, _ rng: inout SplitMix64) -> [UInt8] {
        if rng.chance(15) {
            // Pure noise made of stream-ish tokens and random bytes.
            var b: [UInt8] = []
            for _ in 0..<rng.below(30) { b += rng.chance(70) ? rng.pick(streamTokens) : rng.bytes(1 + rng.below(6)) }
            return b
        }
        let pieces = (0..<rng.below(5)).map { _ in randomString(&rng) }
        var b: [UInt8]
        switch engine {
        case .openaiChat:
            b = EngineStreams.openAIChat(role: rng.chance(70), finish: rng.chance(80), usage: rng.chance(70), done: rng.chance(85), pieces: pieces)
        case .openaiCompletion:
            b = EngineStreams.openAICompletion(finish: rng.chance(80), usage: rng.chance(70), done: rng.chance(85), pieces: pieces)
        case .ollamaChat:
            b = EngineStreams.ollama(chat: true, done: rng.chance(85), pieces: pieces)
        default:
            b = EngineStreams.ollama(chat: false, done: rng.chance(85), pieces: pieces)
        }
        if rng.chance(25) {
            // CRLF line endings.
            var c: [UInt8] = []
            for x in b { if x == 0x0A { c.append(0x0D) }; c.append(x) }
            b = c
        }
        for _ in 0..<rng.below(4) {
            let pos = rng.below(b.count + 1)
            switch rng.below(8) {
            case 0: if !b.isEmpty { b[rng.below(b.count)] ^= UInt8(1) << UInt8(rng.below(8)) }
            case 6, 7: replaceNumber(&b, &rng)
            case 1: b.insert(contentsOf: rng.pick(streamTokens), at: pos)
            case 2: b.insert(contentsOf: rng.bytes(1 + rng.below(8)), at: pos)
            case 3: if pos < b.count { b.removeSubrange(pos..<min(b.count, pos + 1 + rng.below(30))) }
            case 4: b = Array(b.prefix(pos))
            default:
                let token = rng.pick(streamTokens)
                b.insert(contentsOf: mutate(token, &rng), at: pos)
            }
        }
        return b
    }

    /// Nil when the client output is well-formed for its dialect and properly terminated.
    static func streamViolation(_ pair: StreamPair, _ out: [UInt8]) -> String? {
        switch pair.client.dialect {
        case .openai:
            guard let events = sseJSON(out) else { return "bad SSE framing" }
            guard let last = events.last else { return "no terminating event" }
            let isDone = last == nil
            let isError = last?["error"].map { !$0.isNull } ?? false
            if !isDone && !isError { return "last event is neither [DONE] nor an error" }
            if events.dropLast().contains(where: { $0 == nil }) { return "events after [DONE]" }
            if events.dropLast().contains(where: { $0?["error"]?["type"]?.stringValue == "server_error" && $0?["error"]?["code"]?.stringValue == "engine_error" }) {
                return "events after an error"
            }
        case .ollama:
            guard let lines = ndjsonLines(out) else { return "bad NDJSON" }
            guard let last = lines.last else { return "no terminating line" }
            let isDone = last["done"]?.boolValue == true
            let isError = last["error"].map { !$0.isNull } ?? false
            if !isDone && !isError { return "last line is neither done nor an error" }
            if lines.dropLast().contains(where: { $0["done"]?.boolValue == true || ($0["error"].map { !$0.isNull } ?? false) }) { return "lines after the end" }
            if pair.engine.dialect == .openai && isDone {
                for k in ["total_duration", "load_duration", "prompt_eval_duration", "eval_duration"] {
                    guard let v = last[k]?.intValue, v >= 0 else { return "\(k) missing or negative" }
                }
            }
        }
        return nil
    }

    @Test func streamTranslatorRandomInput() {
        let seed = fuzzSeed(default: 0x57_12EA_11)
        print("FuzzTests.streamTranslatorRandomInput seed \(seed)")
        var rng = SplitMix64(seed: seed)
        var failures = 0
        for iteration in 0..<fuzzIterations(4000) {
            let pair = StreamPair.all[iteration % StreamPair.all.count]
            let engine = Self.randomEngineStream(pair.engine, &rng)
            let note = "seed \(seed) iteration \(iteration) \(pair.testDescription): \(hexDump(engine, limit: 1500))"
            let whole = runStream(pair.ctx, [engine])
            let split = runStream(pair.ctx, randomSplits(engine, &rng))
            if let e = whole.error ?? split.error { failures += 1; Issue.record("feed threw \(e); \(note)"); continue }
            if whole.out != split.out { failures += 1; Issue.record("chunking changed the output; \(note)") }
            if !whole.translator.finished { failures += 1; Issue.record("not finished after finish(); \(note)") }
            if let v = Self.streamViolation(pair, whole.out) {
                failures += 1
                Issue.record("\(v); output \(hexDump(whole.out, limit: 1500)); \(note)")
            }
            if failures > 20 { return }
        }
    }
}
