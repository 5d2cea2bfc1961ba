/// A JSON value with object keys kept in document order.
///
/// meshd relays JSON between dialects; keeping key order makes translated bodies look like what
/// the original servers send, and an ordered array of pairs is cheaper than a dictionary for the
/// small objects that dominate this traffic.
public enum JSON: Sendable, Equatable {
    case null
    case bool(Bool)
    case number(Double)
    /// An integer literal that fits in Int64 (kept exact: token counts, nanosecond durations).
    case int(Int64)
    case string(String)
    case array([JSON])
    case object([(String, JSON)])

    public static func == (lhs: JSON, rhs: JSON) -> Bool {
        switch (lhs, rhs) {
        case (.null, .null): return true
        case let (.bool(a), .bool(b)): return a == b
        case let (.number(a), .number(b)): return a == b
        case let (.int(a), .int(b)): return a == b
        case let (.int(a), .number(b)), let (.number(b), .int(a)): return Double(a) == b
        case let (.string(a), .string(b)): return a == b
        case let (.array(a), .array(b)): return a == b
        case let (.object(a), .object(b)):
            // Same members in any order; with duplicate keys the last one counts (as in the subscript).
            guard a.count == b.count else { return false }
            for (k, _) in a {
                guard let v = lhs[k], let w = rhs[k], v == w else { return false }
            }
            return b.allSatisfy { m in a.contains { $0.0 == m.0 } }
        default: return false
        }
    }

    // MARK: access

    /// The member named `key` when this is an object (the last one wins on duplicates).
    public subscript(key: String) -> JSON? {
        guard case .object(let members) = self else { return nil }
        return members.last(where: { $0.0 == key })?.1
    }

    /// The element at `index` when this is an array.
    public subscript(index: Int) -> JSON? {
        guard case .array(let items) = self, items.indices.contains(index) else { return nil }
        return items[index]
    }

    public var stringValue: String? { if case .string(let s) = self { return s } else { return nil } }
    public var boolValue: Bool? { if case .bool(let b) = self { return b } else { return nil } }
    public var arrayValue: [JSON]? { if case .array(let a) = self { return a } else { return nil } }
    public var objectValue: [(String, JSON)]? { if case .object(let o) = self { return o } else { return nil } }
    public var isNull: Bool { if case .null = self { return true } else { return false } }

    /// A number as Double (either representation).
    public var doubleValue: Double? {
        switch self {
        case .number(let d): return d
        case .int(let i): return Double(i)
        default: return nil
        }
    }

    /// A number as Int when it is integral and in range.
    public var intValue: Int? {
        switch self {
        case .int(let i): return Int(exactly: i)
        case .number(let d): return d.isFinite && d.rounded() == d && abs(d) < 9e15 ? Int(d) : nil
        default: return nil
        }
    }

    /// Returns a copy with `key` set (replaced in place if present, appended otherwise). Duplicates of
    /// `key` are dropped, so the new value is the one both meshd and the next hop read.
    public func setting(_ key: String, _ value: JSON) -> JSON {
        guard case .object(var members) = self else { return self }
        if let i = members.firstIndex(where: { $0.0 == key }) {
            members[i].1 = value
            members = members.enumerated().filter { $0.offset <= i || $0.element.0 != key }.map(\.element)
        } else {
            members.append((key, value))
        }
        return .object(members)
    }

    /// Returns a copy without `key`.
    public func removing(_ key: String) -> JSON {
        guard case .object(let members) = self else { return self }
        return .object(members.filter { $0.0 != key })
    }
}

extension JSON: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByBooleanLiteral,
    ExpressibleByFloatLiteral, ExpressibleByArrayLiteral, ExpressibleByDictionaryLiteral, ExpressibleByNilLiteral
{
    public init(stringLiteral value: String) { self = .string(value) }
    public init(integerLiteral value: Int64) { self = .int(value) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(floatLiteral value: Double) { self = .number(value) }
    public init(arrayLiteral elements: JSON...) { self = .array(elements) }
    public init(dictionaryLiteral elements: (String, JSON)...) { self = .object(elements) }
    public init(nilLiteral: ()) { self = .null }
}

extension JSON {
    /// `.int` for an Int.
    public static func integer(_ v: Int) -> JSON { .int(Int64(v)) }
}

// MARK: - Parsing

/// Why a JSON document was rejected, with the byte offset where it went wrong.
public struct JSONParseError: Error, Sendable, Equatable, CustomStringConvertible {
    public let offset: Int
    public let reason: String
    public var description: String { "invalid JSON at byte \(offset): \(reason)" }
}

/// A strict RFC 8259 parser over bytes with a nesting limit, written for hostile input:
/// it never traps, never recurses deeper than `maxDepth`, and reports where it failed.
public struct JSONParser {
    public static let defaultMaxDepth = 128

    /// The byte a one-letter escape (`\"`, `\\`, `\/`, `\b`, `\f`, `\n`, `\r`, `\t`) stands for,
    /// given the letter; nil for any other.
    @inline(__always) static func escapedByte(_ letter: UInt8) -> UInt8? {
        switch letter {
        case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): return letter
        case UInt8(ascii: "b"): return 0x08
        case UInt8(ascii: "f"): return 0x0C
        case UInt8(ascii: "n"): return 0x0A
        case UInt8(ascii: "r"): return 0x0D
        case UInt8(ascii: "t"): return 0x09
        default: return nil
        }
    }

    /// Parses one JSON document (surrounding whitespace allowed).
    public static func parse<C: Collection>(_ bytes: C, maxDepth: Int = defaultMaxDepth) throws(JSONParseError) -> JSON
    where C.Element == UInt8 {
        let buf = Array(bytes)
        return try buf.withUnsafeBufferPointer { (p) throws(JSONParseError) -> JSON in
            var parser = Impl(p: p, maxDepth: maxDepth)
            parser.skipWS()
            let v = try parser.value(depth: 0)
            parser.skipWS()
            if parser.i != p.count { throw parser.err("trailing characters after the document") }
            return v
        }
    }

    /// Parses a string holding one JSON document.
    public static func parse(_ text: String, maxDepth: Int = defaultMaxDepth) throws(JSONParseError) -> JSON {
        try parse(Array(text.utf8), maxDepth: maxDepth)
    }

    private struct Impl {
        let p: UnsafeBufferPointer<UInt8>
        let maxDepth: Int
        var i = 0

        init(p: UnsafeBufferPointer<UInt8>, maxDepth: Int) {
            self.p = p
            self.maxDepth = maxDepth
        }

        func err(_ reason: String) -> JSONParseError { JSONParseError(offset: i, reason: reason) }

        /// The error for a string whose raw bytes from `start` to the closing quote at `i` are not
        /// valid UTF-8, pointing at the first bad byte. (Escapes are ASCII, so the raw bytes are valid
        /// exactly when the decoded string is.)
        func utf8Error(_ start: Int) -> JSONParseError {
            var it = UnsafeBufferPointer(rebasing: p[start..<i]).makeIterator()
            var decoder = Unicode.UTF8.ForwardParser()
            var offset = start
            while case .valid(let scalar) = decoder.parseScalar(from: &it) { offset += scalar.count }
            return JSONParseError(offset: min(offset, i), reason: "invalid UTF-8 in string")
        }

        mutating func skipWS() {
            while i < p.count {
                switch p[i] {
                case 0x20, 0x09, 0x0A, 0x0D: i += 1
                default: return
                }
            }
        }

        mutating func value(depth: Int) throws(JSONParseError) -> JSON {
            guard i < p.count else { throw err("unexpected end of input") }
            switch p[i] {
            case UInt8(ascii: "{"): return try object(depth: depth + 1)
            case UInt8(ascii: "["): return try array(depth: depth + 1)
            case UInt8(ascii: "\""): return .string(try string())
            case UInt8(ascii: "t"): try literal("true"); return .bool(true)
            case UInt8(ascii: "f"): try literal("false"); return .bool(false)
            case UInt8(ascii: "n"): try literal("null"); return .null
            case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try number()
            default: throw err("unexpected character '\(Unicode.Scalar(p[i]))'")
            }
        }

        mutating func literal(_ word: StaticString) throws(JSONParseError) {
            let w = word.utf8Start
            for k in 0..<word.utf8CodeUnitCount {
                guard i < p.count else { throw err("unexpected end of input") }
                guard p[i] == w[k] else { throw err("invalid literal") }
                i += 1
            }
        }

        mutating func object(depth: Int) throws(JSONParseError) -> JSON {
            if depth > maxDepth { throw err("nesting deeper than \(maxDepth)") }
            i += 1
            var members: [(String, JSON)] = []
            skipWS()
            if i < p.count, p[i] == UInt8(ascii: "}") { i += 1; return .object(members) }
            while true {
                skipWS()
                guard i < p.count, p[i] == UInt8(ascii: "\"") else { throw err("expected a string key") }
                let key = try string()
                skipWS()
                guard i < p.count, p[i] == UInt8(ascii: ":") else { throw err("expected ':'") }
                i += 1
                skipWS()
                let v = try value(depth: depth)
                members.append((key, v))
                skipWS()
                guard i < p.count else { throw err("unexpected end of input in object") }
                if p[i] == UInt8(ascii: ",") { i += 1; continue }
                if p[i] == UInt8(ascii: "}") { i += 1; return .object(members) }
                throw err("expected ',' or '}'")
            }
        }

        mutating func array(depth: Int) throws(JSONParseError) -> JSON {
            if depth > maxDepth { throw err("nesting deeper than \(maxDepth)") }
            i += 1
            var items: [JSON] = []
            skipWS()
            if i < p.count, p[i] == UInt8(ascii: "]") { i += 1; return .array(items) }
            while true {
                skipWS()
                items.append(try value(depth: depth))
                skipWS()
                guard i < p.count else { throw err("unexpected end of input in array") }
                if p[i] == UInt8(ascii: ",") { i += 1; continue }
                if p[i] == UInt8(ascii: "]") { i += 1; return .array(items) }
                throw err("expected ',' or ']'")
            }
        }

        mutating func hex4() throws(JSONParseError) -> UInt32 {
            guard i + 4 <= p.count else { throw err("truncated \\u escape") }
            var v: UInt32 = 0
            for _ in 0..<4 {
                let c = p[i]
                let d: UInt32
                switch c {
                case UInt8(ascii: "0")...UInt8(ascii: "9"): d = UInt32(c - UInt8(ascii: "0"))
                case UInt8(ascii: "a")...UInt8(ascii: "f"): d = UInt32(c - UInt8(ascii: "a") + 10)
                case UInt8(ascii: "A")...UInt8(ascii: "F"): d = UInt32(c - UInt8(ascii: "A") + 10)
                default: throw err("invalid hex digit in \\u escape")
                }
                v = v << 4 | d
                i += 1
            }
            return v
        }

        mutating func string() throws(JSONParseError) -> String {
            i += 1  // opening quote
            let start = i
            // Fast path: no escapes.
            while i < p.count {
                let c = p[i]
                if c == UInt8(ascii: "\"") {
                    let raw = UnsafeBufferPointer(rebasing: p[start..<i])
                    guard let s = String(validating: raw, as: UTF8.self) else { throw utf8Error(start) }
                    i += 1
                    return s
                }
                if c == UInt8(ascii: "\\") { break }
                if c < 0x20 { throw err("control character in string") }
                i += 1
            }
            var out: [UInt8] = Array(p[start..<i])
            while i < p.count {
                let c = p[i]
                if c == UInt8(ascii: "\"") {
                    guard let s = String(validating: out, as: UTF8.self) else { throw utf8Error(start) }
                    i += 1
                    return s
                }
                if c < 0x20 { throw err("control character in string") }
                if c != UInt8(ascii: "\\") { out.append(c); i += 1; continue }
                i += 1
                guard i < p.count else { break }
                let e = p[i]
                i += 1
                switch e {
                case UInt8(ascii: "u"):
                    var scalar = try hex4()
                    if (0xD800...0xDBFF).contains(scalar) {
                        guard i + 6 <= p.count, p[i] == UInt8(ascii: "\\"), p[i + 1] == UInt8(ascii: "u") else {
                            throw err("unpaired surrogate")
                        }
                        i += 2
                        let low = try hex4()
                        guard (0xDC00...0xDFFF).contains(low) else { i -= 6; throw err("invalid low surrogate") }
                        scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                    } else if (0xDC00...0xDFFF).contains(scalar) {
                        i -= 6
                        throw err("unpaired surrogate")
                    }
                    guard let u = Unicode.Scalar(scalar) else { throw err("invalid code point") }
                    out.append(contentsOf: Array(String(Character(u)).utf8))
                default:
                    guard let b = JSONParser.escapedByte(e) else { i -= 1; throw err("invalid escape") }
                    out.append(b)
                }
            }
            throw err("unterminated string")
        }

        mutating func number() throws(JSONParseError) -> JSON {
            let start = i
            var isInt = true
            if p[i] == UInt8(ascii: "-") { i += 1 }
            guard i < p.count else { throw err("truncated number") }
            if p[i] == UInt8(ascii: "0") {
                i += 1
            } else if (UInt8(ascii: "1")...UInt8(ascii: "9")).contains(p[i]) {
                while i < p.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(p[i]) { i += 1 }
            } else {
                throw err("invalid number")
            }
            if i < p.count, p[i] == UInt8(ascii: ".") {
                isInt = false
                i += 1
                let d = i
                while i < p.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(p[i]) { i += 1 }
                if i == d { throw err("digit expected after '.'") }
            }
            if i < p.count, p[i] == UInt8(ascii: "e") || p[i] == UInt8(ascii: "E") {
                isInt = false
                i += 1
                if i < p.count, p[i] == UInt8(ascii: "+") || p[i] == UInt8(ascii: "-") { i += 1 }
                let d = i
                while i < p.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(p[i]) { i += 1 }
                if i == d { throw err("digit expected in exponent") }
            }
            let text = String(decoding: UnsafeBufferPointer(rebasing: p[start..<i]), as: UTF8.self)
            if isInt, let v = Int64(text) { return .int(v) }
            guard let d = Double(text), d.isFinite else { throw JSONParseError(offset: start, reason: "number out of range") }
            return .number(d)
        }
    }
}

// MARK: - Serialising

extension JSON {
    /// Compact UTF-8 serialisation (no spaces), keys in stored order.
    public func serialized() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(128)
        write(into: &out)
        return out
    }

    /// Compact serialisation as a String.
    public var compactString: String { String(decoding: serialized(), as: UTF8.self) }

    /// Appends the compact serialisation to `out`.
    public func write(into out: inout [UInt8]) {
        switch self {
        case .null: out.append(contentsOf: [0x6E, 0x75, 0x6C, 0x6C])
        case .bool(let b): out.append(contentsOf: b ? Array("true".utf8) : Array("false".utf8))
        case .int(let v): out.append(contentsOf: String(v).utf8)
        case .number(let d):
            if d.isFinite {
                if d.rounded() == d, abs(d) < 1e15 {
                    out.append(contentsOf: String(Int64(d)).utf8)
                } else {
                    out.append(contentsOf: "\(d)".utf8)
                }
            } else {
                out.append(contentsOf: [0x6E, 0x75, 0x6C, 0x6C])
            }
        case .string(let s): JSON.writeString(s, into: &out)
        case .array(let items):
            out.append(UInt8(ascii: "["))
            for (n, v) in items.enumerated() {
                if n > 0 { out.append(UInt8(ascii: ",")) }
                v.write(into: &out)
            }
            out.append(UInt8(ascii: "]"))
        case .object(let members):
            out.append(UInt8(ascii: "{"))
            for (n, (k, v)) in members.enumerated() {
                if n > 0 { out.append(UInt8(ascii: ",")) }
                JSON.writeString(k, into: &out)
                out.append(UInt8(ascii: ":"))
                v.write(into: &out)
            }
            out.append(UInt8(ascii: "}"))
        }
    }

    static let hexDigits: [UInt8] = Array("0123456789abcdef".utf8)

    /// Appends `s` as a JSON string literal.
    public static func writeString(_ s: String, into out: inout [UInt8]) {
        out.append(0x22)
        for c in s.utf8 {
            switch c {
            case 0x22: out.append(0x5C); out.append(0x22)
            case 0x5C: out.append(0x5C); out.append(0x5C)
            case 0x0A: out.append(0x5C); out.append(UInt8(ascii: "n"))
            case 0x0D: out.append(0x5C); out.append(UInt8(ascii: "r"))
            case 0x09: out.append(0x5C); out.append(UInt8(ascii: "t"))
            case 0..<0x20:
                out.append(contentsOf: [0x5C, UInt8(ascii: "u"), 0x30, 0x30])
                out.append(hexDigits[Int(c >> 4)])
                out.append(hexDigits[Int(c & 0xF)])
            default: out.append(c)
            }
        }
        out.append(0x22)
    }
}
