/// Reads one OpenAI stream event (`chat.completion.chunk` or `text_completion`) without building a
/// JSON tree, for relaying an OpenAI engine's stream to an OpenAI client.
///
/// It answers only for plain content chunks: one or more `choices`, no `error`, a `null` or absent
/// `usage`, a `null` or absent `finish_reason`. For anything else, and for anything it is not sure
/// the full parser accepts (escaped keys, surrogate escapes, long numbers, exponents), it returns
/// `nil` and the caller parses the event with ``JSONParser``. What it accepts is valid JSON that
/// ``JSONParser`` accepts too, so relaying the bytes is what the full path would have done.
struct OpenAIChunkScan {
    /// A string value as it stands in the scanned bytes: the offsets of the bytes between its
    /// quotes (from the start of what was scanned), and whether they hold escapes.
    typealias Text = (range: Range<Int>, escaped: Bool)

    /// `choices[0].delta.content` (or, without one, `text`), when it is a string.
    var content: Text?

    /// Whether the event carries a non-empty `choices[0].delta.content` (or, without one, `text`).
    var hasContent: Bool { !(content?.range.isEmpty ?? true) }

    static func scan(_ payload: ArraySlice<UInt8>) -> OpenAIChunkScan? {
        payload.withUnsafeBufferPointer { p -> OpenAIChunkScan? in
            var c = Cursor(p: p)
            var result = OpenAIChunkScan()
            var choices = 0
            c.skipWS()
            guard c.at(UInt8(ascii: "{")) else { return nil }
            let ok = object(&c, depth: 1) { c, key in
                if c.keyIs(key, Keys.error) { return false }
                if c.keyIs(key, Keys.usage) { return c.literal(Keys.null) }
                if c.keyIs(key, Keys.choices) {
                    guard choices == 0, c.at(UInt8(ascii: "[")) else { return false }
                    return array(&c, depth: 2) { c, index in
                        choices += 1
                        if index > 0 { return skip(&c, depth: 3) }
                        guard c.at(UInt8(ascii: "{")), let content = choice(&c, depth: 3, streamed: true) else { return false }
                        result.content = content
                        return true
                    }
                }
                return skip(&c, depth: 2)
            }
            guard ok, choices > 0 else { return nil }
            c.skipWS()
            return c.i == p.count ? result : nil
        }
    }

    /// Reads `choices[0]` (a stream's, with a `delta`, or a whole answer's, with a `message`): its
    /// content string (`.some(nil)`: none), nil to give up. A stream's choice must not be finished.
    private static func choice(_ c: inout Cursor, depth: Int, streamed: Bool) -> Text?? {
        let messageKey = streamed ? Keys.delta : Keys.message
        var message: Text??  // nil: no message; .some(nil): a message without string content
        var text: Text??
        var finishSeen = false
        let ok = object(&c, depth: depth) { c, key in
            if c.keyIs(key, messageKey) {
                guard message == nil, c.at(UInt8(ascii: "{")) else { return false }
                var content: Text??
                let ok = object(&c, depth: depth + 1) { c, key in
                    guard c.keyIs(key, Keys.content) else { return skip(&c, depth: depth + 2) }
                    guard content == nil, let s = c.stringOrNull() else { return false }
                    content = .some(s)
                    return true
                }
                message = .some(content ?? nil)
                return ok
            }
            if c.keyIs(key, Keys.text) {
                guard text == nil, let s = c.stringOrNull() else { return false }
                text = .some(s)
                return true
            }
            if streamed && c.keyIs(key, Keys.finishReason) {
                guard !finishSeen else { return false }
                finishSeen = true
                return c.literal(Keys.null)
            }
            return skip(&c, depth: depth + 1)
        }
        guard ok else { return nil }
        // As the full path reads it: the message's content if it is a string, else text if it is one.
        if case .some(.some(let s)) = message { return .some(s) }
        if case .some(.some(let s)) = text { return .some(s) }
        return .some(nil)
    }

    // MARK: generic walking (validates what it skips)

    /// Walks an object at `c` (which is at `{`); `member` reads each value (cursor at the value).
    private static func object(_ c: inout Cursor, depth: Int, _ member: (inout Cursor, Range<Int>) -> Bool) -> Bool {
        guard depth <= JSONParser.defaultMaxDepth else { return false }
        c.i += 1
        c.skipWS()
        if c.at(UInt8(ascii: "}")) { c.i += 1; return true }
        while true {
            c.skipWS()
            guard c.at(UInt8(ascii: "\"")), let key = c.string(), !key.escaped else { return false }
            c.skipWS()
            guard c.at(UInt8(ascii: ":")) else { return false }
            c.i += 1
            c.skipWS()
            guard member(&c, key.range) else { return false }
            c.skipWS()
            if c.at(UInt8(ascii: ",")) { c.i += 1; continue }
            if c.at(UInt8(ascii: "}")) { c.i += 1; return true }
            return false
        }
    }

    /// Walks an array at `c` (which is at `[`); `element` reads each element with its index.
    private static func array(_ c: inout Cursor, depth: Int, _ element: (inout Cursor, Int) -> Bool) -> Bool {
        guard depth <= JSONParser.defaultMaxDepth else { return false }
        c.i += 1
        c.skipWS()
        if c.at(UInt8(ascii: "]")) { c.i += 1; return true }
        var index = 0
        while true {
            c.skipWS()
            guard element(&c, index) else { return false }
            index += 1
            c.skipWS()
            if c.at(UInt8(ascii: ",")) { c.i += 1; continue }
            if c.at(UInt8(ascii: "]")) { c.i += 1; return true }
            return false
        }
    }

    /// Skips any value; `depth` is the nesting depth a container starting here would have.
    private static func skip(_ c: inout Cursor, depth: Int) -> Bool {
        guard c.i < c.p.count else { return false }
        switch c.p[c.i] {
        case UInt8(ascii: "{"): return object(&c, depth: depth) { c, _ in skip(&c, depth: depth + 1) }
        case UInt8(ascii: "["): return array(&c, depth: depth) { c, _ in skip(&c, depth: depth + 1) }
        case UInt8(ascii: "\""): return c.string() != nil
        case UInt8(ascii: "t"): return c.literal(Keys.true)
        case UInt8(ascii: "f"): return c.literal(Keys.false)
        case UInt8(ascii: "n"): return c.literal(Keys.null)
        default: return c.number()
        }
    }

    fileprivate enum Keys {
        static let error = Array("error".utf8)
        static let usage = Array("usage".utf8)
        static let choices = Array("choices".utf8)
        static let delta = Array("delta".utf8)
        static let message = Array("message".utf8)
        static let content = Array("content".utf8)
        static let text = Array("text".utf8)
        static let finishReason = Array("finish_reason".utf8)
        static let promptTokens = Array("prompt_tokens".utf8)
        static let completionTokens = Array("completion_tokens".utf8)
        static let promptTokensDetails = Array("prompt_tokens_details".utf8)
        static let timings = Array("timings".utf8)
        static let cachedTokens = Array("cached_tokens".utf8)
        static let null = Array("null".utf8)
        static let `true` = Array("true".utf8)
        static let `false` = Array("false".utf8)
    }

    fileprivate struct Cursor {
        let p: UnsafeBufferPointer<UInt8>
        var i = 0

        func at(_ byte: UInt8) -> Bool { i < p.count && p[i] == byte }

        mutating func skipWS() {
            while i < p.count, p[i] == 0x20 || p[i] == 0x09 || p[i] == 0x0A || p[i] == 0x0D { i += 1 }
        }

        func keyIs(_ key: Range<Int>, _ name: [UInt8]) -> Bool {
            key.count == name.count && UnsafeBufferPointer(rebasing: p[key]).elementsEqual(name)
        }

        mutating func literal(_ word: [UInt8]) -> Bool {
            guard i + word.count <= p.count, UnsafeBufferPointer(rebasing: p[i..<(i + word.count)]).elementsEqual(word) else { return false }
            i += word.count
            return true
        }

        /// A string value; `.some(nil)` for `null`; nil for anything else.
        mutating func stringOrNull() -> Text?? {
            if at(UInt8(ascii: "\"")) {
                guard let s = string() else { return nil }
                return .some(s)
            }
            return literal(Keys.null) ? .some(nil) : nil
        }

        /// Skips a string at `i` (at its opening quote), checking it as the parser would; the raw
        /// bytes between the quotes and whether they hold escapes, or nil to give up.
        mutating func string() -> Text? {
            i += 1
            let start = i
            var escaped = false
            var ascii = true
            while i < p.count {
                let b = p[i]
                if b == UInt8(ascii: "\"") {
                    let range = start..<i
                    i += 1
                    if !ascii && !Self.validUTF8(UnsafeBufferPointer(rebasing: p[range])) { return nil }
                    return (range, escaped)
                }
                if b < 0x20 { return nil }
                if b >= 0x80 { ascii = false }
                if b == UInt8(ascii: "\\") {
                    escaped = true
                    guard i + 1 < p.count else { return nil }
                    switch p[i + 1] {
                    case let letter where JSONParser.escapedByte(letter) != nil:
                        i += 2
                    case UInt8(ascii: "u"):
                        // Plain code points only; surrogate pairs go to the full parser.
                        guard i + 6 <= p.count else { return nil }
                        var v: UInt32 = 0
                        for k in (i + 2)..<(i + 6) {
                            guard let d = Self.hexValue(p[k]) else { return nil }
                            v = v << 4 | d
                        }
                        if (0xD800...0xDFFF).contains(v) { return nil }
                        i += 6
                    default:
                        return nil
                    }
                    continue
                }
                i += 1
            }
            return nil
        }

        /// A number in JSON's grammar, short and without exponent so that it surely converts.
        mutating func number() -> Bool {
            let start = i
            if at(UInt8(ascii: "-")) { i += 1 }
            guard i < p.count else { return false }
            if p[i] == UInt8(ascii: "0") {
                i += 1
            } else if Self.isDigit(p[i]) {
                while i < p.count, Self.isDigit(p[i]) { i += 1 }
            } else {
                return false
            }
            if at(UInt8(ascii: ".")) {
                i += 1
                let d = i
                while i < p.count, Self.isDigit(p[i]) { i += 1 }
                if i == d { return false }
            }
            if at(UInt8(ascii: "e")) || at(UInt8(ascii: "E")) { return false }
            return i - start <= 18
        }

        static func isDigit(_ b: UInt8) -> Bool { b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9") }

        static func hexValue(_ b: UInt8) -> UInt32? {
            switch b {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): return UInt32(b - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): return UInt32(b - UInt8(ascii: "a") + 10)
            case UInt8(ascii: "A")...UInt8(ascii: "F"): return UInt32(b - UInt8(ascii: "A") + 10)
            default: return nil
            }
        }

        static func validUTF8(_ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
            var it = bytes.makeIterator()
            var decoder = Unicode.UTF8.ForwardParser()
            while true {
                switch decoder.parseScalar(from: &it) {
                case .valid: continue
                case .emptyInput: return true
                case .error: return false
                }
            }
        }
    }
}

extension OpenAIChunkScan {
    /// A non-streamed OpenAI answer as ``completion(_:)`` read it.
    struct Completion {
        /// The usage it reports (nil: none).
        var usage: TokenUsage?
        /// `choices[0].message.content` (or, without one, `text`), when it is a string.
        var content: Text?
    }

    /// A non-streamed OpenAI answer that is relayed as it came (same route), read without building
    /// a JSON tree: its usage and answer text; nil when the full parser must decide (an `error`
    /// member, a usage count that is not a plain integer, a content that is not a string, anything
    /// the scanner is unsure of). Like ``scan(_:)``, it only accepts what ``JSONParser`` accepts.
    static func completion(_ body: [UInt8]) -> Completion? {
        body.withUnsafeBufferPointer { p -> Completion? in
            var c = Cursor(p: p)
            var result = Completion()
            var usageSeen = false
            var choicesSeen = false
            var detailsCached: Int?
            c.skipWS()
            guard c.at(UInt8(ascii: "{")) else { return nil }
            // Reads `{"cached_tokens": N, …}` (usage details).
            func cachedCount(_ c: inout Cursor, key cachedKey: [UInt8], depth: Int, into out: inout Int?) -> Bool {
                if c.literal(Keys.null) { return true }
                guard c.at(UInt8(ascii: "{")) else { return false }
                var seen = false
                return object(&c, depth: depth) { c, key in
                    guard c.keyIs(key, cachedKey) else { return skip(&c, depth: depth + 1) }
                    guard !seen, let v = c.integer() else { return false }
                    seen = true
                    out = v
                    return true
                }
            }
            let ok = object(&c, depth: 1) { c, key in
                if c.keyIs(key, Keys.error) { return false }
                // llama-server's timings (cache_n, prompt_ms as a fraction) are read by the full parser.
                if c.keyIs(key, Keys.timings) { return false }
                if c.keyIs(key, Keys.choices) {
                    guard !choicesSeen else { return false }
                    choicesSeen = true
                    guard c.at(UInt8(ascii: "[")) else { return skip(&c, depth: 2) }
                    return array(&c, depth: 2) { c, index in
                        guard index == 0, c.at(UInt8(ascii: "{")) else { return skip(&c, depth: 3) }
                        guard let content = choice(&c, depth: 3, streamed: false) else { return false }
                        result.content = content
                        return true
                    }
                }
                guard c.keyIs(key, Keys.usage) else { return skip(&c, depth: 2) }
                guard !usageSeen else { return false }
                usageSeen = true
                if c.literal(Keys.null) { return true }
                guard c.at(UInt8(ascii: "{")) else { return false }
                var prompt: Int?, completion: Int?
                var detailsSeen = false
                let ok = object(&c, depth: 2) { c, key in
                    if c.keyIs(key, Keys.promptTokensDetails) {
                        guard !detailsSeen else { return false }
                        detailsSeen = true
                        return cachedCount(&c, key: Keys.cachedTokens, depth: 3, into: &detailsCached)
                    }
                    let isPrompt = c.keyIs(key, Keys.promptTokens)
                    guard isPrompt || c.keyIs(key, Keys.completionTokens) else { return skip(&c, depth: 3) }
                    guard (isPrompt ? prompt : completion) == nil, let v = c.integer() else { return false }
                    if isPrompt { prompt = v } else { completion = v }
                    return true
                }
                // As ResponseTranslator.openAIUsage reads it: no prompt count, no usage.
                if let prompt { result.usage = TokenUsage(promptTokens: prompt, completionTokens: completion ?? 0) }
                return ok
            }
            result.usage?.cachedTokens = detailsCached
            guard ok else { return nil }
            c.skipWS()
            return c.i == p.count ? result : nil
        }
    }

    /// Appends the bytes a JSON string stands for, given the raw bytes between its quotes as the
    /// scanner accepted them (valid UTF-8; escapes `\"`, `\\`, `\/`, `\b`, `\f`, `\n`, `\r`,
    /// `\t` and `\uXXXX` outside the surrogates).
    static func unescape(_ raw: ArraySlice<UInt8>, into out: inout [UInt8]) {
        var i = raw.startIndex
        while let slash = raw[i...].firstIndex(of: UInt8(ascii: "\\")), slash + 1 < raw.endIndex {
            out.append(contentsOf: raw[i..<slash])
            if let b = JSONParser.escapedByte(raw[slash + 1]) {
                out.append(b)
                i = slash + 2
            } else {
                // `\uXXXX`, the only other escape the scanner accepts.
                i = min(slash + 6, raw.endIndex)
                var v: UInt32 = 0
                for k in (slash + 2)..<i { v = v << 4 | (Cursor.hexValue(raw[k]) ?? 0) }
                if let scalar = Unicode.Scalar(v) { UTF8.encode(scalar) { out.append($0) } }
            }
        }
        out.append(contentsOf: raw[i...])
    }
}

extension OpenAIChunkScan.Cursor {
    /// A plain integer literal (no fraction, no exponent, at most 18 characters), or nil.
    mutating func integer() -> Int? {
        let start = i
        guard number() else { return nil }
        var value = 0
        var negative = false
        for k in start..<i {
            let b = p[k]
            if b == UInt8(ascii: "-") { negative = true; continue }
            guard Self.isDigit(b) else { return nil }
            value = value * 10 + Int(b - UInt8(ascii: "0"))
        }
        return negative ? -value : value
    }
}
