import Yams

/// The tag YAML 1.1 gives a plain scalar (Yams' default resolver's rules, in its order: bool, int,
/// float, merge, null, timestamp, value), decided without regular expressions: Yams' resolver
/// compiles ICU patterns at the first parse, which kept about 3 MB of ICU and regex code resident
/// in every node for a config read once.
enum ScalarTags {
    static func resolve(_ s: String) -> Tag.Name {
        let b = Array(s.utf8)
        if isBool(s) { return .bool }
        if isInt(b) { return .int }
        if isFloat(b) { return .float }
        if s == "<<" { return .merge }
        if s.isEmpty || s == "~" || s == "null" || s == "Null" || s == "NULL" { return .null }
        if isTimestamp(b) { return .timestamp }
        if s == "=" { return .value }
        return .str
    }

    static let bools: Set<String> = ["yes", "Yes", "YES", "no", "No", "NO", "true", "True", "TRUE", "false", "False", "FALSE",
                                     "on", "On", "ON", "off", "Off", "OFF"]

    static func isBool(_ s: String) -> Bool { bools.contains(s) }

    /// The value of a bool scalar.
    static func bool(_ s: String) -> Bool? {
        switch s.lowercased() {
        case "true", "yes", "on": return true
        case "false", "no", "off": return false
        default: return nil
        }
    }

    // MARK: a tiny cursor

    struct Cursor {
        let b: [UInt8]
        var i = 0
        var atEnd: Bool { i == b.count }
        func peek(_ k: Int = 0) -> UInt8? { i + k < b.count ? b[i + k] : nil }
        mutating func eat(_ c: UInt8) -> Bool {
            if peek() == c { i += 1; return true }
            return false
        }
        mutating func eatAny(_ set: (UInt8) -> Bool) -> Bool {
            if let c = peek(), set(c) { i += 1; return true }
            return false
        }
        /// One or more (`min` 1) or any number (`min` 0) of `set`.
        mutating func run(_ set: (UInt8) -> Bool, min: Int = 1) -> Bool {
            var n = 0
            while let c = peek(), set(c) { i += 1; n += 1 }
            return n >= min
        }
        mutating func sign() { _ = eat(UInt8(ascii: "-")) || eat(UInt8(ascii: "+")) }
    }

    static func digit(_ c: UInt8) -> Bool { c >= 0x30 && c <= 0x39 }
    static func digitU(_ c: UInt8) -> Bool { digit(c) || c == UInt8(ascii: "_") }
    static func octU(_ c: UInt8) -> Bool { (c >= 0x30 && c <= 0x37) || c == UInt8(ascii: "_") }
    static func binU(_ c: UInt8) -> Bool { c == 0x30 || c == 0x31 || c == UInt8(ascii: "_") }
    static func hexU(_ c: UInt8) -> Bool { digitU(c) || (c >= 0x61 && c <= 0x66) || (c >= 0x41 && c <= 0x46) }

    /// Whole-string match of each alternative.
    static func whole(_ b: [UInt8], _ alternatives: [(inout Cursor) -> Bool]) -> Bool {
        alternatives.contains { alt in
            var c = Cursor(b: b)
            return alt(&c) && c.atEnd
        }
    }

    /// `(?::[0-5]?[0-9])+`
    static func sexagesimalTail(_ c: inout Cursor) -> Bool {
        var n = 0
        while c.peek() == UInt8(ascii: ":") {
            var d = c
            d.i += 1
            if let x = d.peek(), let y = d.peek(1), x >= 0x30 && x <= 0x35 && digit(y) {
                d.i += 2
            } else if let x = d.peek(), digit(x) {
                d.i += 1
            } else {
                break
            }
            c = d
            n += 1
        }
        return n > 0
    }

    static func isInt(_ b: [UInt8]) -> Bool {
        whole(b, [
            { c in c.sign(); return c.eat(0x30) && c.eat(UInt8(ascii: "b")) && c.run(binU) },
            { c in c.sign(); return c.eat(0x30) && { _ = c.eat(UInt8(ascii: "o")); return c.run(octU) }() },
            { c in c.sign(); return c.eat(0x30) || (c.eatAny { $0 >= 0x31 && $0 <= 0x39 } && c.run(digitU, min: 0)) },
            { c in c.sign(); return c.eat(0x30) && c.eat(UInt8(ascii: "x")) && c.run(hexU) },
            { c in c.sign(); return c.eatAny { $0 >= 0x31 && $0 <= 0x39 } && c.run(digitU, min: 0) && sexagesimalTail(&c) },
        ])
    }

    static func isFloat(_ b: [UInt8]) -> Bool {
        func exponent(_ c: inout Cursor, signRequired: Bool) -> Bool {
            // Optional `[eE][-+]?[0-9]+` (the sign required in the second form).
            guard c.peek() == UInt8(ascii: "e") || c.peek() == UInt8(ascii: "E") else { return true }
            var d = c
            d.i += 1
            let signed = d.eat(UInt8(ascii: "-")) || d.eat(UInt8(ascii: "+"))
            if signRequired && !signed { return true }
            guard d.run(digit) else { return true }
            c = d
            return true
        }
        return whole(b, [
            { c in
                c.sign()
                guard c.eatAny(digit) && c.run(digitU, min: 0) else { return false }
                if c.eat(UInt8(ascii: ".")) { _ = c.run(digitU, min: 0) }
                return exponent(&c, signRequired: false)
            },
            { c in c.eat(UInt8(ascii: ".")) && c.run(digitU) && exponent(&c, signRequired: true) },
            { c in
                c.sign()
                return c.eatAny(digit) && c.run(digitU, min: 0) && sexagesimalTail(&c) && c.eat(UInt8(ascii: ".")) && c.run(digitU, min: 0)
            },
            { c in c.sign(); return c.eat(UInt8(ascii: ".")) && ["inf", "Inf", "INF"].contains { w in eatWord(&c, w) } },
            { c in c.eat(UInt8(ascii: ".")) && ["nan", "NaN", "NAN"].contains { w in eatWord(&c, w) } },
        ])
    }

    static func eatWord(_ c: inout Cursor, _ w: String) -> Bool {
        let bytes = Array(w.utf8)
        guard c.i + bytes.count <= c.b.count, Array(c.b[c.i..<(c.i + bytes.count)]) == bytes else { return false }
        c.i += bytes.count
        return true
    }

    static func isTimestamp(_ b: [UInt8]) -> Bool {
        func digits(_ c: inout Cursor, _ lo: Int, _ hi: Int) -> Bool {
            var n = 0
            while n < hi, c.eatAny(digit) { n += 1 }
            return n >= lo
        }
        return whole(b, [
            { c in digits(&c, 4, 4) && c.eat(UInt8(ascii: "-")) && digits(&c, 2, 2) && c.eat(UInt8(ascii: "-")) && digits(&c, 2, 2) },
            { c in
                guard digits(&c, 4, 4) && c.eat(UInt8(ascii: "-")) && digits(&c, 1, 2) && c.eat(UInt8(ascii: "-")) && digits(&c, 1, 2) else { return false }
                let blank: (UInt8) -> Bool = { $0 == 0x20 || $0 == 0x09 }
                guard c.eat(UInt8(ascii: "T")) || c.eat(UInt8(ascii: "t")) || c.run(blank) else { return false }
                guard digits(&c, 1, 2) && c.eat(UInt8(ascii: ":")) && digits(&c, 2, 2) && c.eat(UInt8(ascii: ":")) && digits(&c, 2, 2) else { return false }
                if c.eat(UInt8(ascii: ".")) { _ = c.run(digit, min: 0) }
                // Optional `[ \t]*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?)`.
                var d = c
                _ = d.run(blank, min: 0)
                if d.eat(UInt8(ascii: "Z")) {
                    c = d
                } else if d.eat(UInt8(ascii: "-")) || d.eat(UInt8(ascii: "+")) {
                    if digits(&d, 1, 2) {
                        var e = d
                        if e.eat(UInt8(ascii: ":")) && digits(&e, 2, 2) { d = e }
                        c = d
                    }
                }
                return true
            },
        ])
    }
}
