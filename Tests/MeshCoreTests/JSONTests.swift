import MeshCore
import Testing

@Suite struct JSONParserValidDocuments {
    @Test func literalsAndEmptyContainers() throws {
        #expect(identical(try JSONParser.parse("null"), .null))
        #expect(identical(try JSONParser.parse("true"), .bool(true)))
        #expect(identical(try JSONParser.parse("false"), .bool(false)))
        #expect(identical(try JSONParser.parse("[]"), .array([])))
        #expect(identical(try JSONParser.parse("{}"), .object([])))
        #expect(identical(try JSONParser.parse("\"\""), .string("")))
        #expect(identical(try JSONParser.parse(" \t\r\n [ 1 , { \"a\" : [ ] } ] \n\t"), .array([.int(1), .object([("a", .array([]))])])))
    }

    @Test func integersStayExact() throws {
        #expect(identical(try JSONParser.parse("0"), .int(0)))
        #expect(identical(try JSONParser.parse("42"), .int(42)))
        #expect(identical(try JSONParser.parse("-17"), .int(-17)))
        #expect(identical(try JSONParser.parse("9223372036854775807"), .int(Int64.max)))
        #expect(identical(try JSONParser.parse("-9223372036854775808"), .int(Int64.min)))
        // Nanosecond durations beyond 2^53 stay exact.
        #expect(identical(try JSONParser.parse("9007199254740993"), .int(9_007_199_254_740_993)))
    }

    @Test func negativeZero() throws {
        let z = try JSONParser.parse("-0")
        #expect(z.doubleValue == 0)
        #expect(z.intValue == 0)
        let zf = try JSONParser.parse("-0.0")
        #expect(zf.doubleValue == 0)
        #expect(zf.doubleValue?.sign == .minus)
    }

    @Test func integersBeyondInt64BecomeDoubles() throws {
        #expect(identical(try JSONParser.parse("9223372036854775808"), .number(9_223_372_036_854_775_808)))
        #expect(identical(try JSONParser.parse("-9223372036854775809"), .number(Double("-9223372036854775809")!)))
        let big = try JSONParser.parse("123456789012345678901234567890")
        #expect(identical(big, .number(1.2345678901234568e29)))
        #expect(big.intValue == nil)  // not representable as Int: never silently truncated
    }

    @Test func fractionsAndExponents() throws {
        #expect(identical(try JSONParser.parse("1.5"), .number(1.5)))
        #expect(identical(try JSONParser.parse("-0.25"), .number(-0.25)))
        #expect(identical(try JSONParser.parse("1e3"), .number(1000)))
        #expect(identical(try JSONParser.parse("1E+2"), .number(100)))
        #expect(identical(try JSONParser.parse("2.5e-3"), .number(0.0025)))
        #expect(identical(try JSONParser.parse("-1.0E-2"), .number(-0.01)))
        #expect(identical(try JSONParser.parse("1.7976931348623157e308"), .number(Double.greatestFiniteMagnitude)))
        #expect(try JSONParser.parse("1e-400").doubleValue == 0)  // underflow rounds to zero; still a number
        // An integral literal written with an exponent is a number, and still reads as an Int.
        #expect(try JSONParser.parse("1e3").intValue == 1000)
        #expect(try JSONParser.parse("1.5").intValue == nil)
    }

    @Test func numbersOutOfRangeAreRejected() {
        for text in ["1e400", "-1e400", "1.8e308", String(repeating: "9", count: 400)] {
            let e = jsonError(text)
            #expect(e?.reason.contains("out of range") == true, "\(text): \(String(describing: e))")
            #expect(e?.offset == 0, "\(text) error should point at the number: \(String(describing: e))")
        }
        #expect(jsonError("[1, 2e999]")?.offset == 4)
    }

    @Test func escapes() throws {
        #expect(try JSONParser.parse(#""\"\\\/\b\f\n\r\t""#).stringValue == "\"\\/\u{08}\u{0C}\n\r\t")
        #expect(try JSONParser.parse(#""\u0041\u00e9\u20AC\u20ac""#).stringValue == "Aé€€")
        #expect(try JSONParser.parse(#""\uD83D\uDE00""#).stringValue == "😀")
        #expect(try JSONParser.parse(#""\ud834\udd1e!""#).stringValue == "𝄞!")
        #expect(try JSONParser.parse(#""x\uDBFF\uDFFFy""#).stringValue == "x\u{10FFFF}y")
        let nul = try JSONParser.parse(#""a\u0000b""#).stringValue
        #expect(nul.map { Array($0.utf8) } == [0x61, 0x00, 0x62])
        // Raw multi-byte UTF-8 before and after escapes.
        #expect(try JSONParser.parse("\"héllo\\n😀 wörld\"").stringValue == "héllo\n😀 wörld")
        #expect(try JSONParser.parse("\"\u{7F}\"").stringValue == "\u{7F}")  // DEL is not a control character in JSON
        // Escapes in keys.
        #expect(try JSONParser.parse(#"{"k\u00e9y":1}"#)["kéy"]?.intValue == 1)
    }

    @Test func keyOrderAndDuplicateKeys() throws {
        let j = try JSONParser.parse(#"{"z":1,"a":2,"m":3,"a":4}"#)
        #expect(keys(j) == ["z", "a", "m", "a"])
        #expect(j["a"]?.intValue == 4)  // last wins
        #expect(j["z"]?.intValue == 1)
        #expect(j["missing"] == nil)
        #expect(j.compactString == #"{"z":1,"a":2,"m":3,"a":4}"#)
    }
}

@Suite struct JSONParserRejections {
    struct Bad: Sendable, CustomTestStringConvertible {
        let bytes: [UInt8]
        let offset: Int
        let reason: String
        init(_ text: String, _ offset: Int, _ reason: String) { bytes = utf8(text); self.offset = offset; self.reason = reason }
        init(bytes: [UInt8], _ offset: Int, _ reason: String) { self.bytes = bytes; self.offset = offset; self.reason = reason }
        var testDescription: String { String(decoding: bytes, as: UTF8.self).debugDescription }
    }

    static let cases: [Bad] = [
        // empty and trailing garbage
        Bad("", 0, "end of input"),
        Bad("   ", 3, "end of input"),
        Bad("1 2", 2, "trailing"),
        Bad("{}}", 2, "trailing"),
        Bad("[] ,", 3, "trailing"),
        Bad("nullx", 4, "trailing"),
        Bad(#""a""b""#, 3, "trailing"),
        Bad(bytes: [0x31, 0x00], 1, "trailing"),
        Bad("\u{0C}1", 0, "unexpected character"),  // form feed is not JSON whitespace
        // numbers
        Bad("01", 1, "trailing"),
        Bad("-01", 2, "trailing"),
        Bad("[01]", 2, "expected ','"),
        Bad("00", 1, "trailing"),
        Bad("-", 1, "truncated"),
        Bad("- 1", 1, "invalid number"),
        Bad("-a", 1, "invalid number"),
        Bad("+1", 0, "unexpected character"),
        Bad(".5", 0, "unexpected character"),
        Bad("1.", 2, "digit expected"),
        Bad("1.x", 2, "digit expected"),
        Bad("1e", 2, "digit expected"),
        Bad("1e+", 3, "digit expected"),
        Bad("0x10", 1, "trailing"),
        Bad("NaN", 0, "unexpected character"),
        Bad("Infinity", 0, "unexpected character"),
        // literals: the offset is the first byte that differs
        Bad("tru", 3, "end of input"),
        Bad("trux", 3, "invalid literal"),
        Bad("[nul]", 4, "invalid literal"),
        Bad("True", 0, "unexpected character"),
        // structure
        Bad("[1,]", 3, "unexpected character"),
        Bad("[,1]", 1, "unexpected character"),
        Bad("[1 2]", 3, "expected ','"),
        Bad("[1", 2, "end of input"),
        Bad(#"{"a":1,}"#, 7, "expected a string key"),
        Bad(#"{"a" 1}"#, 5, "expected ':'"),
        Bad(#"{"a":1 "b":2}"#, 7, "expected ','"),
        Bad("{1:2}", 1, "expected a string key"),
        Bad("{'a':1}", 1, "expected a string key"),
        Bad(#"{"a":1"#, 6, "end of input"),
        Bad(#"{"a":"#, 5, "end of input"),
        Bad("{", 1, "expected a string key"),
        // strings
        Bad(#""abc"#, 4, "unterminated"),
        Bad(#""abc\"#, 5, "unterminated"),
        Bad(#""a\n"#, 4, "unterminated"),
        Bad("\"a\nb\"", 2, "control character"),
        Bad("\"a\tb\"", 2, "control character"),
        Bad(bytes: [0x22, 0x5C, 0x6E, 0x01, 0x22], 3, "control character"),
        Bad(bytes: [0x22, 0x1F, 0x22], 1, "control character"),
        Bad(bytes: [0x22, 0x00, 0x22], 1, "control character"),
        Bad(#""\x""#, 2, "invalid escape"),
        Bad(#""ab\'""#, 4, "invalid escape"),
        Bad(#""\u12G4""#, 5, "invalid hex"),
        Bad(#""\u12""#, 3, "truncated"),
        // surrogates
        Bad(#""\uD800""#, 7, "unpaired surrogate"),
        Bad(#""\uD800x""#, 7, "unpaired surrogate"),
        Bad(#""\uD800\n""#, 7, "unpaired surrogate"),
        Bad(#""\uDC00""#, 1, "unpaired surrogate"),
        Bad(#""ab\uDFFF\uD800""#, 3, "unpaired surrogate"),
        Bad(#""\uD800\u0041""#, 7, "invalid low surrogate"),
        Bad(#""\uD800\uD800""#, 7, "invalid low surrogate"),
        // invalid UTF-8: the offset is the first bad byte, escapes or not
        Bad(bytes: [0x22, 0xFF, 0x22], 1, "UTF-8"),
        Bad(bytes: [0x22, 0x61, 0x80, 0x22], 2, "UTF-8"),  // lone continuation byte
        Bad(bytes: [0x22, 0xC0, 0xAF, 0x22], 1, "UTF-8"),  // overlong '/'
        Bad(bytes: [0x22, 0x61, 0xE2, 0x82, 0x22], 2, "UTF-8"),  // truncated sequence
        Bad(bytes: [0x22, 0xED, 0xA0, 0x80, 0x22], 1, "UTF-8"),  // encoded surrogate
        Bad(bytes: [0x22, 0xF4, 0x90, 0x80, 0x80, 0x22], 1, "UTF-8"),  // beyond U+10FFFF
        Bad(bytes: [0x22, 0x5C, 0x6E, 0x61, 0xFF, 0x22], 4, "UTF-8"),  // after an escape (slow path)
        Bad(bytes: [0x22, 0xE2, 0x5C, 0x6E, 0x22], 1, "UTF-8"),  // sequence cut by an escape
        Bad(bytes: [0x7B, 0x22, 0xFE, 0x22, 0x3A, 0x31, 0x7D], 2, "UTF-8"),  // in a key
        Bad(bytes: [0xEF, 0xBB, 0xBF, 0x31], 0, "unexpected character"),  // BOM is not accepted
        Bad(bytes: [0xFF], 0, "unexpected character"),
    ]

    @Test(arguments: cases) func rejected(_ c: Bad) {
        let e = jsonError(c.bytes)
        #expect(e != nil, "accepted invalid JSON")
        guard let e else { return }
        #expect(e.offset == c.offset, "offset: \(e)")
        #expect(e.reason.contains(c.reason), "reason: \(e)")
        #expect(e.description == "invalid JSON at byte \(e.offset): \(e.reason)")
    }

    @Test func nestingLimit() throws {
        func nested(_ n: Int) -> String { String(repeating: "[", count: n) + String(repeating: "]", count: n) }
        #expect(jsonError(nested(128)) == nil)
        let e = jsonError(nested(129))
        #expect(e?.offset == 128)
        #expect(e?.reason.contains("nesting") == true)
        // Objects count too, mixed with arrays.
        let mixed = String(repeating: #"{"a":["#, count: 64) + String(repeating: "]}", count: 64)
        #expect(jsonError(mixed) == nil)  // 128 levels
        let tooDeep = String(repeating: #"{"a":["#, count: 64) + "{}" + String(repeating: "]}", count: 64)
        #expect(jsonError(tooDeep)?.reason.contains("nesting") == true)
        // A hostile document of a million brackets fails fast instead of overflowing the stack.
        #expect(jsonError(String(repeating: "[", count: 1_000_000))?.offset == 128)
        #expect(jsonError(String(repeating: #"{"":"#, count: 200_000))?.reason.contains("nesting") == true)
        // Custom limits.
        #expect(jsonError("[[1]]", maxDepth: 1)?.offset == 1)
        #expect(jsonError("[[1]]", maxDepth: 2) == nil)
        #expect(jsonError("[]", maxDepth: 0)?.offset == 0)
        #expect(jsonError("7", maxDepth: 0) == nil)
    }

    @Test func bytesAndStringOverloadsAgree() throws {
        let text = #"{"a":[1,2.5,"x\u00e9",null,true]}"#
        #expect(identical(try JSONParser.parse(text), try JSONParser.parse(Array(text.utf8))))
        #expect(identical(try JSONParser.parse(text), try JSONParser.parse(Array(text.utf8)[...])))
    }
}

@Suite struct JSONSerialisation {
    @Test func compactOutput() {
        let v: JSON = ["b": 1, "a": [true, false, nil, 1.5, "s"], "c": [:]]
        #expect(v.compactString == #"{"b":1,"a":[true,false,null,1.5,"s"],"c":{}}"#)
        #expect(JSON.int(-5).compactString == "-5")
        #expect(JSON.int(Int64.min).compactString == "-9223372036854775808")
        #expect(JSON.number(3).compactString == "3")
        #expect(JSON.number(-0.0).compactString == "0" || JSON.number(-0.0).compactString == "-0")
        #expect(JSON.number(.infinity).compactString == "null")
        #expect(JSON.number(.nan).compactString == "null")
        #expect(JSON.integer(7).compactString == "7")
    }

    @Test func stringEscaping() throws {
        let s = "q\"b\\n\nr\rt\tc\u{01}\u{1F}\u{7F}é😀/\u{0}"
        let out = JSON.string(s).compactString
        #expect(out == #""q\"b\\n\nr\rt\tc\u0001\u001f"# + "\u{7F}é😀/" + #"\u0000""#)
        #expect(try JSONParser.parse(out).stringValue == s)
    }

    @Test func largeAndSmallDoublesRoundTrip() throws {
        for d in [1e15, 1e16, 1.5e300, -2.5e-300, Double.leastNonzeroMagnitude, 0.1, 1.0 / 3.0, 123456789.125, Double.greatestFiniteMagnitude, 9.223372036854775808e18] {
            let text = JSON.number(d).compactString
            let back = try JSONParser.parse(text)
            #expect(back.doubleValue == d, "\(d) → \(text)")
        }
    }

    @Test func roundTripKeepsStructureAndOrder() throws {
        let doc: JSON = .object([
            ("zeta", .int(1)), ("alpha", .array([.int(-3), .number(2.5), .string("é\n\"x\""), .null, .bool(false)])),
            ("mid", .object([("y", .object([])), ("x", .array([]))])), ("alpha", .string("dup")),
            ("big", .int(Int64.max)), ("neg", .int(Int64.min)), ("float", .number(-1.25e-7)),
        ])
        let back = try JSONParser.parse(doc.serialized())
        #expect(identical(back, doc))
        #expect(keys(back) == ["zeta", "alpha", "mid", "alpha", "big", "neg", "float"])
        #expect(keys(back["mid"]) == ["y", "x"])
        #expect(back == doc)
    }

    /// Random documents: serialize → parse gives the same value, and serialising again gives the same bytes.
    @Test func randomRoundTrips() throws {
        var rng = SplitMix64(seed: 0x5EED_0001)
        for iteration in 0..<2000 {
            let v = randomJSON(&rng, depth: 0)
            let bytes = v.serialized()
            let back = try JSONParser.parse(bytes)
            #expect(back == v, "iteration \(iteration): \(hexDump(bytes))")
            #expect(back.serialized() == bytes, "iteration \(iteration): \(hexDump(bytes))")
            #expect(keys(back) == keys(v))
        }
    }
}

@Suite struct JSONValueSemantics {
    @Test func equalityIsAnEquivalence() throws {
        let dup = try JSONParser.parse(#"{"a":1,"a":2}"#)
        #expect(dup == dup)  // reflexive even with duplicate keys
        #expect(try JSONParser.parse(#"{"a":1,"a":2}"#) == dup)
        let x = JSON.object([("a", 1), ("a", 1)])
        let y = JSON.object([("a", 1), ("b", 1)])
        #expect((x == y) == (y == x))  // symmetric
        #expect(x != y)
        // Order does not matter, values do; ints and doubles compare by value.
        #expect(J(#"{"a":1,"b":[2]}"#) == J(#"{"b":[2.0],"a":1}"#))
        #expect(J(#"{"a":1}"#) != J(#"{"a":2}"#))
        #expect(J(#"{"a":1}"#) != J(#"{"a":1,"b":2}"#))
        #expect(J("[1,2]") != J("[2,1]"))
        #expect(JSON.int(1) != JSON.string("1"))
        #expect(JSON.null != JSON.bool(false))
    }

    @Test func accessors() {
        let j = J(#"{"s":"x","b":true,"i":3,"d":2.5,"big":1e20,"n":null,"a":[1],"o":{"k":1}}"#)
        #expect(j["s"]?.stringValue == "x")
        #expect(j["b"]?.boolValue == true)
        #expect(j["i"]?.intValue == 3)
        #expect(j["d"]?.intValue == nil)
        #expect(j["d"]?.doubleValue == 2.5)
        #expect(j["big"]?.intValue == nil)
        #expect(j["n"]?.isNull == true)
        #expect(j["a"]?[0]?.intValue == 1)
        #expect(j["a"]?[1] == nil)
        #expect(j["a"]?[-1] == nil)
        #expect(j["o"]?["k"]?.intValue == 1)
        #expect(j["s"]?["k"] == nil)
        #expect(j["s"]?.intValue == nil)
        #expect(j["i"]?.stringValue == nil)
        #expect(j[0] == nil)
    }

    @Test func settingAndRemoving() {
        let j: JSON = .object([("a", 1), ("b", 2)])
        #expect(keys(j.setting("a", 9)) == ["a", "b"])
        #expect(j.setting("a", 9)["a"]?.intValue == 9)
        #expect(keys(j.setting("c", 3)) == ["a", "b", "c"])
        #expect(keys(j.removing("a")) == ["b"])
        #expect(identical(JSON.int(1).setting("a", 2), .int(1)))
        // With duplicate keys the new value must be the one readers see, and the only one sent on.
        let dup: JSON = .object([("model", "x"), ("b", 2), ("model", "y")])
        let set = dup.setting("model", "z")
        #expect(set["model"]?.stringValue == "z")
        #expect(keys(set).filter { $0 == "model" }.count == 1)
        #expect(keys(dup.removing("model")) == ["b"])
    }
}

/// A random JSON value whose serialisation parses back to an `==` value.
func randomJSON(_ rng: inout SplitMix64, depth: Int) -> JSON {
    let kind = depth > 4 ? rng.below(6) : rng.below(8)
    switch kind {
    case 0: return .null
    case 1: return .bool(rng.chance(50))
    case 2: return .int(Int64(bitPattern: rng.next()) >> rng.below(64))
    case 3:
        let d = Double(bitPattern: rng.next())
        return d.isFinite ? .number(d) : .number(Double(rng.below(1000)) / 8)
    case 4, 5: return .string(randomString(&rng))
    case 6: return .array((0..<rng.below(5)).map { _ in randomJSON(&rng, depth: depth + 1) })
    default: return .object((0..<rng.below(5)).map { _ in (randomString(&rng), randomJSON(&rng, depth: depth + 1)) })
    }
}

func randomString(_ rng: inout SplitMix64) -> String {
    let pool: [Unicode.Scalar] = ["a", "Z", "0", " ", "\"", "\\", "/", "\n", "\r", "\t", "\u{0}", "\u{1F}", "\u{7F}", "é", "€", "😀", "\u{10FFFF}", "\u{FFFD}", "\u{2028}"]
    var s = String.UnicodeScalarView()
    for _ in 0..<rng.below(12) { s.append(rng.pick(pool)) }
    return String(s)
}
