import NIOCore

/// Minimal JSON value used for request bodies (the sim never needs a full Codable stack).
enum JSON: Sendable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSON])
    case object([String: JSON])

    subscript(key: String) -> JSON? {
        if case .object(let o) = self { return o[key] }
        return nil
    }

    var stringValue: String? {
        if case .string(let s) = self { return s }
        return nil
    }

    var doubleValue: Double? {
        if case .number(let d) = self { return d }
        return nil
    }

    /// Integral numbers only (1.0 is accepted, 1.5 is not).
    var intValue: Int? {
        guard case .number(let d) = self, d.rounded() == d, abs(d) < 9.0e15 else { return nil }
        return Int(d)
    }

    var boolValue: Bool? {
        if case .bool(let b) = self { return b }
        return nil
    }

    var arrayValue: [JSON]? {
        if case .array(let a) = self { return a }
        return nil
    }

    var isObject: Bool {
        if case .object = self { return true }
        return false
    }

    var isNull: Bool {
        if case .null = self { return true }
        return false
    }
}

struct JSONParseError: Error, CustomStringConvertible {
    let message: String
    let offset: Int
    var description: String { "\(message) at offset \(offset)" }
}

/// Recursive-descent JSON parser over raw UTF-8 bytes.
struct JSONParser {
    private let bytes: UnsafeBufferPointer<UInt8>
    private var i = 0
    private var depth = 0
    private static let maxDepth = 256

    private init(_ bytes: UnsafeBufferPointer<UInt8>) {
        self.bytes = bytes
    }

    static func parse(_ buffer: ByteBuffer) throws(JSONParseError) -> JSON {
        let result: Result<JSON, JSONParseError> = buffer.withUnsafeReadableBytes { raw in
            var p = JSONParser(raw.assumingMemoryBound(to: UInt8.self))
            do throws(JSONParseError) {
                p.skipWS()
                let v = try p.value()
                p.skipWS()
                if p.i != p.bytes.count { throw p.error("unexpected trailing characters") }
                return .success(v)
            } catch {
                return .failure(error)
            }
        }
        return try result.get()
    }

    static func parse(_ string: String) throws(JSONParseError) -> JSON {
        var buf = ByteBuffer()
        buf.writeString(string)
        return try parse(buf)
    }

    private func error(_ m: String) -> JSONParseError { JSONParseError(message: m, offset: i) }

    private mutating func skipWS() {
        while i < bytes.count {
            switch bytes[i] {
            case 0x20, 0x09, 0x0A, 0x0D: i += 1
            default: return
            }
        }
    }

    private mutating func value() throws(JSONParseError) -> JSON {
        guard i < bytes.count else { throw error("unexpected end of input") }
        switch bytes[i] {
        case UInt8(ascii: "{"): return try object()
        case UInt8(ascii: "["): return try array()
        case UInt8(ascii: "\""): return .string(try string())
        case UInt8(ascii: "t"): try literal("true"); return .bool(true)
        case UInt8(ascii: "f"): try literal("false"); return .bool(false)
        case UInt8(ascii: "n"): try literal("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return .number(try number())
        default: throw error("invalid character looking for beginning of value")
        }
    }

    private mutating func literal(_ word: StaticString) throws(JSONParseError) {
        let n = word.utf8CodeUnitCount
        guard i + n <= bytes.count else { throw error("unexpected end of input") }
        let p = word.utf8Start
        for k in 0..<n where bytes[i + k] != p[k] {
            throw error("invalid literal")
        }
        i += n
    }

    private mutating func object() throws(JSONParseError) -> JSON {
        depth += 1
        guard depth <= Self.maxDepth else { throw error("nesting too deep") }
        defer { depth -= 1 }
        i += 1  // {
        var dict: [String: JSON] = [:]
        skipWS()
        if i < bytes.count, bytes[i] == UInt8(ascii: "}") {
            i += 1
            return .object(dict)
        }
        while true {
            skipWS()
            guard i < bytes.count, bytes[i] == UInt8(ascii: "\"") else { throw error("expected object key") }
            let key = try string()
            skipWS()
            guard i < bytes.count, bytes[i] == UInt8(ascii: ":") else { throw error("expected ':'") }
            i += 1
            skipWS()
            dict[key] = try value()
            skipWS()
            guard i < bytes.count else { throw error("unexpected end of input") }
            if bytes[i] == UInt8(ascii: ",") {
                i += 1
                continue
            }
            if bytes[i] == UInt8(ascii: "}") {
                i += 1
                return .object(dict)
            }
            throw error("expected ',' or '}'")
        }
    }

    private mutating func array() throws(JSONParseError) -> JSON {
        depth += 1
        guard depth <= Self.maxDepth else { throw error("nesting too deep") }
        defer { depth -= 1 }
        i += 1  // [
        var arr: [JSON] = []
        skipWS()
        if i < bytes.count, bytes[i] == UInt8(ascii: "]") {
            i += 1
            return .array(arr)
        }
        while true {
            skipWS()
            arr.append(try value())
            skipWS()
            guard i < bytes.count else { throw error("unexpected end of input") }
            if bytes[i] == UInt8(ascii: ",") {
                i += 1
                continue
            }
            if bytes[i] == UInt8(ascii: "]") {
                i += 1
                return .array(arr)
            }
            throw error("expected ',' or ']'")
        }
    }

    private static func hexValue(_ c: UInt8) -> UInt32? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return UInt32(c - UInt8(ascii: "0"))
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return UInt32(c - UInt8(ascii: "a") + 10)
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return UInt32(c - UInt8(ascii: "A") + 10)
        default: return nil
        }
    }

    private mutating func hex4() throws(JSONParseError) -> UInt32 {
        guard i + 4 <= bytes.count else { throw error("unexpected end of input in \\u escape") }
        var v: UInt32 = 0
        for k in 0..<4 {
            guard let h = Self.hexValue(bytes[i + k]) else { throw error("invalid \\u escape") }
            v = v << 4 | h
        }
        i += 4
        return v
    }

    private mutating func string() throws(JSONParseError) -> String {
        i += 1  // opening quote
        let start = i
        // Fast path: no escapes.
        while i < bytes.count {
            let c = bytes[i]
            if c == UInt8(ascii: "\"") {
                let s = String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<i]), as: UTF8.self)
                i += 1
                return s
            }
            if c == UInt8(ascii: "\\") { break }
            if c < 0x20 { throw error("invalid control character in string") }
            i += 1
        }
        guard i < bytes.count else { throw error("unterminated string") }
        var out = [UInt8](UnsafeBufferPointer(rebasing: bytes[start..<i]))
        while i < bytes.count {
            let c = bytes[i]
            if c == UInt8(ascii: "\"") {
                i += 1
                return String(decoding: out, as: UTF8.self)
            }
            if c < 0x20 { throw error("invalid control character in string") }
            if c != UInt8(ascii: "\\") {
                out.append(c)
                i += 1
                continue
            }
            i += 1
            guard i < bytes.count else { throw error("unterminated string") }
            let e = bytes[i]
            i += 1
            switch e {
            case UInt8(ascii: "\""): out.append(0x22)
            case UInt8(ascii: "\\"): out.append(0x5C)
            case UInt8(ascii: "/"): out.append(0x2F)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                var scalar = try hex4()
                if scalar >= 0xD800 && scalar < 0xDC00 {
                    // High surrogate: expect a low surrogate.
                    if i + 6 <= bytes.count, bytes[i] == UInt8(ascii: "\\"), bytes[i + 1] == UInt8(ascii: "u") {
                        i += 2
                        let low = try hex4()
                        if low >= 0xDC00 && low < 0xE000 {
                            scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                        } else {
                            scalar = 0xFFFD
                        }
                    } else {
                        scalar = 0xFFFD
                    }
                } else if scalar >= 0xDC00 && scalar < 0xE000 {
                    scalar = 0xFFFD
                }
                let us = Unicode.Scalar(scalar) ?? "\u{FFFD}"
                out.append(contentsOf: String(Character(us)).utf8)
            default:
                throw error("invalid escape character")
            }
        }
        throw error("unterminated string")
    }

    private mutating func number() throws(JSONParseError) -> Double {
        let start = i
        if bytes[i] == UInt8(ascii: "-") { i += 1 }
        func isDigit(_ c: UInt8) -> Bool { c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9") }
        guard i < bytes.count, isDigit(bytes[i]) else { throw error("invalid number") }
        if bytes[i] == UInt8(ascii: "0") {
            i += 1
        } else {
            while i < bytes.count, isDigit(bytes[i]) { i += 1 }
        }
        if i < bytes.count, bytes[i] == UInt8(ascii: ".") {
            i += 1
            guard i < bytes.count, isDigit(bytes[i]) else { throw error("invalid number") }
            while i < bytes.count, isDigit(bytes[i]) { i += 1 }
        }
        if i < bytes.count, bytes[i] == UInt8(ascii: "e") || bytes[i] == UInt8(ascii: "E") {
            i += 1
            if i < bytes.count, bytes[i] == UInt8(ascii: "+") || bytes[i] == UInt8(ascii: "-") { i += 1 }
            guard i < bytes.count, isDigit(bytes[i]) else { throw error("invalid number") }
            while i < bytes.count, isDigit(bytes[i]) { i += 1 }
        }
        let text = String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<i]), as: UTF8.self)
        guard let d = Double(text) else { throw error("invalid number") }
        return d
    }
}

// MARK: - Output helpers

extension String {
    /// Appends `s` as a quoted JSON string literal.
    mutating func appendJSONString(_ s: String) {
        self.append("\"")
        var needsEscape = false
        for b in s.utf8 where b < 0x20 || b == 0x22 || b == 0x5C {
            needsEscape = true
            break
        }
        if !needsEscape {
            self.append(s)
        } else {
            for u in s.unicodeScalars {
                switch u {
                case "\"": self.append("\\\"")
                case "\\": self.append("\\\\")
                case "\n": self.append("\\n")
                case "\r": self.append("\\r")
                case "\t": self.append("\\t")
                default:
                    if u.value < 0x20 {
                        self.append("\\u00")
                        let hex = Array("0123456789abcdef")
                        self.append(hex[Int(u.value >> 4)])
                        self.append(hex[Int(u.value & 0xF)])
                    } else {
                        self.unicodeScalars.append(u)
                    }
                }
            }
        }
        self.append("\"")
    }
}

/// `s` as a quoted JSON string literal.
func jsonQuote(_ s: String) -> String {
    var out = ""
    out.reserveCapacity(s.utf8.count + 2)
    out.appendJSONString(s)
    return out
}
