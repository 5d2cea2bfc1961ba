@testable import MeshCore
import Testing

/// The same-dialect relay reads plain content chunks with `OpenAIChunkScan` instead of the full
/// parser. Whatever the scanner accepts must be valid to `JSONParser` and read the same way.
@Suite struct OpenAIChunkScanTests {
    static let plain = #"{"choices":[{"finish_reason":null,"index":0,"delta":{"content":"Hel"}}],"created":1700000001,"id":"chatcmpl-eng","model":"tiny","object":"chat.completion.chunk"}"#

    /// What the full path reads as an event's content.
    static func fullPathContent(_ json: JSON) -> String {
        let choice = json["choices"]?[0]
        return choice?["delta"]?["content"]?.stringValue ?? choice?["text"]?.stringValue ?? ""
    }

    /// The content the scanner found in `payload`, unescaped (none: empty).
    static func scannedText(_ content: OpenAIChunkScan.Text?, in payload: [UInt8]) -> [UInt8] {
        guard let content else { return [] }
        var bytes: [UInt8] = []
        OpenAIChunkScan.unescape(payload[content.range], into: &bytes)
        #expect(content.escaped || bytes.elementsEqual(payload[content.range]), "unescaped bytes changed")
        return bytes
    }

    /// Checks one payload: accepted only if the parser accepts it as a plain content chunk, with the
    /// same content reading. Returns whether the scanner accepted it.
    @discardableResult
    static func check(_ payload: [UInt8], _ note: @autoclosure () -> String = "") -> Bool {
        guard let scan = OpenAIChunkScan.scan(payload[...]) else { return false }
        guard let json = try? JSONParser.parse(payload) else {
            Issue.record("scanner accepted what the parser rejects: \(note()) \(String(decoding: payload, as: UTF8.self).debugDescription)")
            return true
        }
        let plain = json["error"] == nil && (json["usage"] == nil || json["usage"] == .null)
            && !(json["choices"]?.arrayValue?.isEmpty ?? true)
            && json["choices"]?[0]?["finish_reason"]?.stringValue == nil
        #expect(plain, "not a plain chunk: \(note())")
        #expect(scan.hasContent == !fullPathContent(json).isEmpty, "content differs: \(note())")
        #expect(scannedText(scan.content, in: payload) == utf8(fullPathContent(json)), "content text differs: \(note())")
        return true
    }

    @Test func readsEngineChunks() {
        #expect(OpenAIChunkScan.scan(utf8(Self.plain)[...])?.hasContent == true)
        let cases: [(String, Bool?)] = [
            (#"{"choices":[{"index":0,"delta":{"content":""}}]}"#, false),
            (#"{"choices":[{"index":0,"delta":{"content":null},"text":"x"}]}"#, true),
            (#"{"choices":[{"index":0,"delta":{"content":""},"text":"x"}]}"#, false),
            (#"{"choices":[{"index":0,"text":"hi \u00e9\n","finish_reason":null}],"usage":null}"#, true),
            (#" {"choices":[{"delta":{"content":"wörld 😀","role":"assistant"}},{"delta":{}}]} "#, true),
            (#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"a\":1}"}}]}}],"x":[1.5,-0,true,false,null,{}]}"#, false),
            // Needs the full path.
            (#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#, nil),
            (#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#, nil),
            (#"{"error":{"message":"boom"}}"#, nil),
            (#"{"choices":[{"delta":{"content":"a"}}],"usage":{"prompt_tokens":1}}"#, nil),
            (#"{"choices":[{"delta":{"content":"a","content":"b"}}]}"#, nil),
            (#"{"choi\u0063es":[{"delta":{"content":"a"}}]}"#, nil),
            (#"{"choices":[{"delta":{"content":"\ud83d\ude00"}}]}"#, nil),
            (#"{"choices":[{"delta":{"content":"a"}}],"n":1e5}"#, nil),
            (#"{"choices":[{"delta":{"content":"a"}}]} x"#, nil),
            (#"{"choices":[{"delta":{"content":"a"}}],}"#, nil),
            (#"{"choices":{"delta":{"content":"a"}}}"#, nil),
            (#"[{"choices":[{"delta":{"content":"a"}}]}]"#, nil),
        ]
        for (text, expected) in cases {
            let got = OpenAIChunkScan.scan(utf8(text)[...])
            #expect(got?.hasContent == expected, "\(text)")
            Self.check(utf8(text), text)
        }
        // The content's bytes, unescaped.
        let escaped = utf8(#"{"choices":[{"delta":{"content":"a\"b\\c\/d\b\f\n\r\te \u00e9\u20AC\u0041 ü 😀"}}]}"#)
        let content = OpenAIChunkScan.scan(escaped[...])?.content
        #expect(content?.escaped == true)
        #expect(Self.scannedText(content, in: escaped) == utf8("a\"b\\c/d\u{8}\u{C}\n\r\te é€A ü 😀"))
        #expect(OpenAIChunkScan.scan(utf8(Self.plain)[...])?.content?.escaped == false)
        // Invalid UTF-8 and raw control characters inside strings are the parser's to reject.
        var bad = utf8(Self.plain)
        bad.insert(0xFF, at: bad.firstIndex(of: UInt8(ascii: "H"))!)
        #expect(OpenAIChunkScan.scan(bad[...]) == nil)
        bad = utf8(Self.plain)
        bad.insert(0x01, at: bad.firstIndex(of: UInt8(ascii: "H"))!)
        #expect(OpenAIChunkScan.scan(bad[...]) == nil)
    }

    /// Mutated engine chunks: the scanner never accepts what the parser would not, never traps.
    @Test func mutatedChunks() {
        let seed = fuzzSeed(default: 0x5CA7_C0DE)
        print("OpenAIChunkScanTests.mutatedChunks seed \(seed)")
        var rng = SplitMix64(seed: seed)
        let seeds = [Self.plain,
                     #"{"choices":[{"text":"x","index":0,"logprobs":null,"finish_reason":null}],"model":"m","usage":null}"#,
                     #"{"choices":[{"delta":{"content":"é\n\"q\""}},{"delta":{}}],"created":1,"x":[[],{},-1.25]}"#].map(utf8)
        var accepted = 0
        for iteration in 0..<20_000 {
            let input = FuzzTests.mutate(rng.pick(seeds), &rng)
            if Self.check(input, "seed \(seed) iteration \(iteration)") { accepted += 1 }
        }
        // Some mutations leave a plain chunk plain.
        #expect(accepted > 100)
    }

    // MARK: non-streamed answers relayed as they came

    static let completion = #"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Hello!"},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":8,"total_tokens":17,"prompt_tokens_details":{"cached_tokens":0}}}"#

    /// Accepted only where the parser accepts, with the usage ResponseTranslator reads.
    @discardableResult
    static func checkUsage(_ body: [UInt8], _ note: @autoclosure () -> String = "") -> Bool {
        guard let read = OpenAIChunkScan.completion(body) else { return false }
        guard let json = try? JSONParser.parse(body) else {
            Issue.record("scanner accepted what the parser rejects: \(note()) \(String(decoding: body, as: UTF8.self).debugDescription)")
            return true
        }
        #expect(ResponseTranslator.engineError(json) == nil, "error body accepted: \(note())")
        #expect(read.usage == ResponseTranslator.openAIUsage(json["usage"], timings: json["timings"]), "usage differs: \(note())")
        #expect(scannedText(read.content, in: body) == utf8(ResponseTranslator.answer(json, route: .openaiChat)), "answer differs: \(note())")
        return true
    }

    @Test func readsCompletionUsage() {
        #expect(OpenAIChunkScan.completion(utf8(Self.completion))?.usage == TokenUsage(promptTokens: 9, completionTokens: 8, cachedTokens: 0))
        let cases: [(String, TokenUsage??)] = [
            (#"{"choices":[]}"#, .some(nil)),
            (#"{"usage":null}"#, .some(nil)),
            (#"{"usage":{"completion_tokens":3}}"#, .some(nil)),
            (#"{"usage":{"prompt_tokens":-2}}"#, .some(TokenUsage(promptTokens: -2, completionTokens: 0))),
            (#"{"usage":{"prompt_tokens":4.0,"completion_tokens":1}}"#, nil),
            (#"{"usage":{"prompt_tokens":"4"}}"#, nil),
            (#"{"usage":{"prompt_tokens":1,"prompt_tokens":2}}"#, nil),
            (#"{"usage":{"prompt_tokens":1},"usage":null}"#, nil),
            (#"{"error":{"message":"boom"},"usage":{"prompt_tokens":1}}"#, nil),
            (#"[{"usage":{"prompt_tokens":1}}]"#, nil),
            (#"{"usage":{"prompt_tokens":1}"#, nil),
            // The cached part: usage details first, else llama-server's timings.
            (#"{"usage":{"prompt_tokens":90,"prompt_tokens_details":{"cached_tokens":64}},"timings":{"cache_n":60}}"#, nil),
            (#"{"usage":{"prompt_tokens":90,"prompt_tokens_details":{"cached_tokens":64}}}"#,
             .some(TokenUsage(promptTokens: 90, completionTokens: 0, cachedTokens: 64))),
            (#"{"usage":{"prompt_tokens":9,"prompt_tokens_details":null}}"#, .some(TokenUsage(promptTokens: 9, completionTokens: 0))),
            (#"{"usage":{"prompt_tokens":9,"prompt_tokens_details":{"cached_tokens":1.5}}}"#, nil),
            (#"{"timings":{"prompt_n":26,"cache_n":64}}"#, nil),
        ]
        for (text, expected) in cases {
            #expect(OpenAIChunkScan.completion(utf8(text)).map(\.usage) == expected, "\(text)")
            Self.checkUsage(utf8(text), text)
        }
        #expect(ResponseTranslator.relayed(route: .ollamaChat, body: utf8(Self.completion), answer: true) == nil)
    }

    @Test func readsCompletionAnswers() {
        #expect(ResponseTranslator.relayed(route: .openaiChat, body: utf8(Self.completion), answer: true)?.answer == utf8("Hello!"))
        #expect(ResponseTranslator.relayed(route: .openaiChat, body: utf8(Self.completion), answer: false)?.answer == [])
        let cases: [(String, String?)] = [
            (#"{"choices":[{"message":{"role":"assistant","content":"caf\u00e9\n\"x\""}}]}"#, "café\n\"x\""),
            (#"{"choices":[{"text":"plain ü","finish_reason":"length"}]}"#, "plain ü"),
            (#"{"choices":[{"message":{"content":null,"tool_calls":[]},"text":"t"}]}"#, "t"),
            (#"{"choices":[{"message":{"content":""},"text":"t"}]}"#, ""),
            (#"{"choices":[{"index":0},{"message":{"content":"second"}}]}"#, ""),
            (#"{"choices":[]}"#, ""),
            (#"{"choices":{"message":{"content":"x"}}}"#, ""),
            // Needs the full path.
            (#"{"choices":[{"message":{"content":[{"type":"text","text":"x"}]}}]}"#, nil),
            (#"{"choices":[{"message":{"content":"a","content":"b"}}]}"#, nil),
            (#"{"choices":[{"message":{"content":"\ud83d\ude00"}}]}"#, nil),
            (#"{"choices":[],"choices":[]}"#, nil),
        ]
        for (text, expected) in cases {
            let read = ResponseTranslator.relayed(route: .openaiChat, body: utf8(text), answer: true)
            #expect(read?.answer == expected.map(utf8), "\(text)")
            Self.checkUsage(utf8(text), text)
        }
    }

    @Test func mutatedCompletions() {
        let seed = fuzzSeed(default: 0x05A6_E5ED)
        print("OpenAIChunkScanTests.mutatedCompletions seed \(seed)")
        var rng = SplitMix64(seed: seed)
        let seeds = [Self.completion, #"{"choices":[{"text":"x"}],"usage":{"total_tokens":3,"prompt_tokens":1,"completion_tokens":2}}"#,
                     #"{"choices":[{"message":{"content":"caf\u00e9\n\"q\"\t\/ ü"},"finish_reason":"stop"}],"usage":null}"#].map(utf8)
        var accepted = 0
        for iteration in 0..<20_000 {
            if Self.checkUsage(FuzzTests.mutate(rng.pick(seeds), &rng), "seed \(seed) iteration \(iteration)") { accepted += 1 }
        }
        #expect(accepted > 100)
    }
}
