/// One sample of a Prometheus text-format exposition: `name{label="v",...} value [timestamp]`.
public struct PrometheusSample: Sendable, Hashable {
    public var name: String
    public var labels: [String: String]
    public var value: Double

    public init(name: String, labels: [String: String] = [:], value: Double) {
        self.name = name
        self.labels = labels
        self.value = value
    }
}

/// A small, forgiving parser for the Prometheus text exposition format (version 0.0.4), enough
/// to read load gauges from vLLM (`vllm:num_requests_running`) and llama-server
/// (`llamacpp:requests_processing`). Pure: no I/O. Malformed lines are skipped, never fatal.
public enum PrometheusText {
    /// Every well-formed sample in `text`, in order. Comments (`# HELP`, `# TYPE`) and blank
    /// lines are ignored; so is any line that cannot be parsed.
    public static func parse(_ text: String) -> [PrometheusSample] {
        var out: [PrometheusSample] = []
        for line in text.split(omittingEmptySubsequences: true, whereSeparator: { $0 == "\n" || $0 == "\r\n" || $0 == "\r" }) {
            if let s = parseLine(Substring(line)) { out.append(s) }
        }
        return out
    }

    /// The sum of all samples named exactly `name` (over every label set), or nil when there is none.
    public static func sum(_ name: String, in samples: [PrometheusSample]) -> Double? {
        var total: Double?
        for s in samples where s.name == name && !s.value.isNaN {
            total = (total ?? 0) + s.value
        }
        return total
    }

    /// Convenience: parse and sum `name` in one call.
    public static func sum(_ name: String, in text: String) -> Double? {
        sum(name, in: parse(text))
    }

    /// Parses one sample line; nil for comments, blank or malformed lines.
    public static func parseLine(_ raw: Substring) -> PrometheusSample? {
        let chars = Array(raw.utf8)
        var i = 0
        func skipSpaces() { while i < chars.count, chars[i] == 0x20 || chars[i] == 0x09 { i += 1 } }
        skipSpaces()
        guard i < chars.count, chars[i] != UInt8(ascii: "#") else { return nil }
        // Metric name: [a-zA-Z_:][a-zA-Z0-9_:]*
        let nameStart = i
        while i < chars.count, isNameByte(chars[i], first: i == nameStart) { i += 1 }
        guard i > nameStart else { return nil }
        let name = String(decoding: chars[nameStart..<i], as: UTF8.self)
        var labels: [String: String] = [:]
        skipSpaces()
        if i < chars.count, chars[i] == UInt8(ascii: "{") {
            i += 1
            while true {
                skipSpaces()
                guard i < chars.count else { return nil }
                if chars[i] == UInt8(ascii: "}") { i += 1; break }
                let ls = i
                while i < chars.count, isNameByte(chars[i], first: i == ls), chars[i] != UInt8(ascii: ":") { i += 1 }
                guard i > ls else { return nil }
                let label = String(decoding: chars[ls..<i], as: UTF8.self)
                skipSpaces()
                guard i < chars.count, chars[i] == UInt8(ascii: "=") else { return nil }
                i += 1
                skipSpaces()
                guard i < chars.count, chars[i] == UInt8(ascii: "\"") else { return nil }
                i += 1
                var value: [UInt8] = []
                var closed = false
                while i < chars.count {
                    let c = chars[i]
                    if c == UInt8(ascii: "\\"), i + 1 < chars.count {
                        let e = chars[i + 1]
                        value.append(e == UInt8(ascii: "n") ? 0x0A : e)
                        i += 2
                        continue
                    }
                    if c == UInt8(ascii: "\"") { closed = true; i += 1; break }
                    value.append(c)
                    i += 1
                }
                guard closed else { return nil }
                labels[label] = String(decoding: value, as: UTF8.self)
                skipSpaces()
                guard i < chars.count else { return nil }
                if chars[i] == UInt8(ascii: ",") { i += 1; continue }
                if chars[i] == UInt8(ascii: "}") { i += 1; break }
                return nil
            }
        }
        skipSpaces()
        let vs = i
        while i < chars.count, chars[i] != 0x20, chars[i] != 0x09 { i += 1 }
        guard i > vs, let value = parseValue(String(decoding: chars[vs..<i], as: UTF8.self)) else { return nil }
        // An optional integer timestamp may follow; anything else makes the line malformed.
        skipSpaces()
        if i < chars.count {
            let ts = i
            while i < chars.count, chars[i] != 0x20, chars[i] != 0x09 { i += 1 }
            guard Int64(String(decoding: chars[ts..<i], as: UTF8.self)) != nil else { return nil }
            skipSpaces()
            guard i == chars.count else { return nil }
        }
        return PrometheusSample(name: name, labels: labels, value: value)
    }

    static func isNameByte(_ c: UInt8, first: Bool) -> Bool {
        switch c {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
             UInt8(ascii: "_"), UInt8(ascii: ":"):
            return true
        case UInt8(ascii: "0")...UInt8(ascii: "9"):
            return !first
        default:
            return false
        }
    }

    static func parseValue(_ s: String) -> Double? {
        switch s {
        case "+Inf", "Inf": return .infinity
        case "-Inf": return -.infinity
        case "NaN": return .nan
        default: return Double(s)
        }
    }
}
