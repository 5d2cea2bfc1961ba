/// The sums of one group of a usage report (one key, model, node, provider...). Groups of the
/// same name from several nodes add up (``merging(_:)``), so a node can gather the mesh's report
/// from every node's own.
public struct UsageGroup: Sendable, Equatable, Codable {
    public var name: String
    public var requests: Int = 0
    public var errors: Int = 0
    public var cacheHits: Int = 0
    public var promptTokens: Int = 0
    public var cachedTokens: Int = 0
    public var outputTokens: Int = 0
    public var costMicros: Int64 = 0
    /// Sum and count of the TTFTs recorded (a mean across nodes needs both).
    public var ttftSumMs: Double = 0
    public var ttftCount: Int = 0
    public var durationSumMs: Double = 0

    public init(name: String) { self.name = name }

    enum CodingKeys: String, CodingKey {
        case name, requests, errors, cacheHits = "cache_hits", promptTokens = "prompt_tokens", cachedTokens = "cached_tokens",
             outputTokens = "output_tokens", costMicros = "cost_micros", ttftSumMs = "ttft_sum_ms", ttftCount = "ttft_count",
             durationSumMs = "duration_sum_ms"
    }

    public mutating func add(_ r: UsageRecord) {
        requests += 1
        if r.status >= 400 { errors += 1 }
        if r.cacheHit { cacheHits += 1 }
        promptTokens += r.promptTokens
        cachedTokens += r.cachedTokens
        outputTokens += r.outputTokens
        costMicros += r.costMicros
        if let t = r.ttftMs {
            ttftSumMs += t
            ttftCount += 1
        }
        durationSumMs += r.durationMs
    }

    public mutating func add(_ g: UsageGroup) {
        requests += g.requests
        errors += g.errors
        cacheHits += g.cacheHits
        promptTokens += g.promptTokens
        cachedTokens += g.cachedTokens
        outputTokens += g.outputTokens
        costMicros += g.costMicros
        ttftSumMs += g.ttftSumMs
        ttftCount += g.ttftCount
        durationSumMs += g.durationSumMs
    }

    public var meanTTFTMs: Double? { ttftCount == 0 ? nil : ttftSumMs / Double(ttftCount) }
    public var meanDurationMs: Double? { requests == 0 ? nil : durationSumMs / Double(requests) }
    public var totalTokens: Int { promptTokens + outputTokens }
}

/// Usage reports: grouping, merging the nodes' reports, the `--since` window, and the table and
/// CSV `meshctl usage` prints. Pure.
public enum UsageReport {
    /// Groups `records` by `dimension`, largest first (by requests, then name).
    public static func aggregate(_ records: [UsageRecord], by dimension: UsageDimension) -> [UsageGroup] {
        var groups: [String: UsageGroup] = [:]
        for r in records {
            let name = r.value(dimension)
            groups[name, default: UsageGroup(name: name)].add(r)
        }
        return sorted(Array(groups.values))
    }

    /// Adds up groups of the same name from several reports (one per node).
    public static func merge(_ reports: [[UsageGroup]]) -> [UsageGroup] {
        var groups: [String: UsageGroup] = [:]
        for report in reports {
            for g in report { groups[g.name, default: UsageGroup(name: g.name)].add(g) }
        }
        return sorted(Array(groups.values))
    }

    static func sorted(_ groups: [UsageGroup]) -> [UsageGroup] {
        groups.sorted { $0.requests != $1.requests ? $0.requests > $1.requests : $0.name < $1.name }
    }

    /// The sum of every group.
    public static func total(_ groups: [UsageGroup]) -> UsageGroup {
        var t = UsageGroup(name: "total")
        for g in groups { t.add(g) }
        return t
    }

    /// Parses a `--since` window: a duration back from now (`90s`, `30m`, `24h`, `7d`, `2w`) or a
    /// UTC date or time (`2026-12-01`, `2026-12-01T08:00:00Z`). Returns the start in Unix
    /// milliseconds, or a message saying what is accepted.
    public static func since(_ text: String, nowMs: Int64) -> Result<Int64, UsageError> {
        let t = text.trimmingSpaces()
        if let unit = t.last, let n = Int64(t.dropLast()), n >= 0 {
            let seconds: Int64?
            switch unit {
            case "s": seconds = n
            case "m": seconds = n * 60
            case "h": seconds = n * 3600
            case "d": seconds = n * 86_400
            case "w": seconds = n * 7 * 86_400
            default: seconds = nil
            }
            if let seconds, seconds <= 100 * 365 * 86_400 { return .success(nowMs - seconds * 1000) }
        }
        if let ms = parseUTC(t) { return .success(ms) }
        return .failure(UsageError("since: '\(text.prefix(40))' is neither a duration (90s, 30m, 24h, 7d, 2w) nor a UTC date (2026-12-01 or 2026-12-01T08:00:00Z)"))
    }

    /// `YYYY-MM-DD` or `YYYY-MM-DDTHH:MM[:SS]Z` → Unix milliseconds.
    static func parseUTC(_ s: String) -> Int64? {
        let b = Array(s.utf8)
        func num(_ r: Range<Int>) -> Int64? {
            guard r.upperBound <= b.count, r.allSatisfy({ b[$0] >= 48 && b[$0] <= 57 }) else { return nil }
            return r.reduce(0) { $0 * 10 + Int64(b[$1] - 48) }
        }
        guard b.count >= 10, b[4] == 45, b[7] == 45, let y = num(0..<4), let mo = num(5..<7), let d = num(8..<10),
              (1...12).contains(mo), (1...31).contains(d) else { return nil }
        var secs: Int64 = 0
        if b.count > 10 {
            guard b[10] == 84 || b[10] == 116, b.last == 90 || b.last == 122, let hh = num(11..<13), b.count > 13, b[13] == 58,
                  let mm = num(14..<16), hh < 24, mm < 60 else { return nil }
            secs = hh * 3600 + mm * 60
            if b.count == 20 {
                guard b[16] == 58, let ss = num(17..<19), ss < 61 else { return nil }
                secs += ss
            } else if b.count != 17 {
                return nil
            }
        }
        // Days from the civil date (inverse of ISO8601.civil).
        let yy = mo <= 2 ? y - 1 : y
        let era = (yy >= 0 ? yy : yy - 399) / 400
        let yoe = yy - era * 400
        let doy = (153 * (mo > 2 ? mo - 3 : mo + 9) + 2) / 5 + d - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        let days = era * 146_097 + doe - 719_468
        return (days * 86_400 + secs) * 1000
    }

    /// Column titles of the table and the CSV.
    public static func columns(_ dimension: UsageDimension) -> [String] {
        [dimension.rawValue.uppercased(), "REQUESTS", "ERRORS", "CACHE HITS", "PROMPT TOKENS", "CACHED TOKENS", "OUTPUT TOKENS",
         "TOTAL TOKENS", "COST USD", "MEAN TTFT MS", "MEAN DURATION MS"]
    }

    /// One row per group, then a total row.
    public static func rows(_ groups: [UsageGroup], by dimension: UsageDimension) -> [[String]] {
        func ms(_ v: Double?) -> String { v.map { String(Int(($0).rounded())) } ?? "-" }
        func row(_ g: UsageGroup, _ name: String) -> [String] {
            [name, "\(g.requests)", "\(g.errors)", "\(g.cacheHits)", "\(g.promptTokens)", "\(g.cachedTokens)", "\(g.outputTokens)",
             "\(g.totalTokens)", usd(g.costMicros), ms(g.meanTTFTMs), ms(g.meanDurationMs)]
        }
        return groups.map { row($0, dimension.label($0.name)) } + [row(total(groups), "TOTAL")]
    }

    /// Micro-USD as dollars with 6 decimals (`0.000150`).
    public static func usd(_ micros: Int64) -> String {
        let sign = micros < 0 ? "-" : ""
        let m = micros.magnitude
        let frac = String(m % 1_000_000)
        return "\(sign)\(m / 1_000_000).\(String(repeating: "0", count: 6 - frac.count))\(frac)"
    }

    /// RFC 4180 CSV: a header line, then the rows; fields with commas, quotes or line breaks quoted.
    public static func csv(_ groups: [UsageGroup], by dimension: UsageDimension) -> String {
        func field(_ s: String) -> String {
            guard s.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" || $0 == "\r" }) else { return s }
            return "\"" + s.replacingAll("\"", with: "\"\"") + "\""
        }
        let header = columns(dimension).map { $0.lowercased().replacingAll(" ", with: "_") }
        return ([header] + rows(groups, by: dimension)).map { $0.map(field).joined(separator: ",") }.joined(separator: "\r\n") + "\r\n"
    }
}

/// A usage query that cannot be answered as asked.
public struct UsageError: Error, Sendable, Equatable, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}

extension String {
    func replacingAll(_ target: Character, with replacement: String) -> String {
        var out = ""
        for c in self { if c == target { out += replacement } else { out.append(c) } }
        return out
    }
}
