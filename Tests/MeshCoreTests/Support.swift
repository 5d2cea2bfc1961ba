import MeshCore
import Testing

// MARK: - deterministic randomness

/// SplitMix64: a tiny, fast, seedable generator so fuzz runs are reproducible from their seed.
struct SplitMix64: RandomNumberGenerator {
    private(set) var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in 0..<n (n > 0).
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
    mutating func chance(_ percent: Int) -> Bool { below(100) < percent }
    mutating func pick<T>(_ items: [T]) -> T { items[below(items.count)] }
    mutating func bytes(_ n: Int) -> [UInt8] { (0..<n).map { _ in UInt8(truncatingIfNeeded: next()) } }
}

/// Seed for the fuzz tests: `MESHD_FUZZ_SEED` when set (to replay a failure), else a fixed default.
func fuzzSeed(default value: UInt64) -> UInt64 {
    if let s = environment("MESHD_FUZZ_SEED"), let v = UInt64(s) { return v }
    return value
}

/// Iteration count for the fuzz tests: `MESHD_FUZZ_SCALE` multiplies it (default 1×).
func fuzzIterations(_ n: Int) -> Int {
    if let s = environment("MESHD_FUZZ_SCALE"), let v = Double(s), v > 0 { return max(1, Int(Double(n) * v)) }
    return n
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

func environment(_ name: String) -> String? {
    guard let p = getenv(name) else { return nil }
    return String(cString: p)
}

// MARK: - small helpers

func utf8(_ s: String) -> [UInt8] { Array(s.utf8) }

/// Parses or returns the error.
func jsonResult(_ bytes: [UInt8], maxDepth: Int = JSONParser.defaultMaxDepth) -> Result<JSON, JSONParseError> {
    do throws(JSONParseError) {
        return .success(try JSONParser.parse(bytes, maxDepth: maxDepth))
    } catch {
        return .failure(error)
    }
}

func jsonError(_ text: String, maxDepth: Int = JSONParser.defaultMaxDepth) -> JSONParseError? {
    jsonError(utf8(text), maxDepth: maxDepth)
}

func jsonError(_ bytes: [UInt8], maxDepth: Int = JSONParser.defaultMaxDepth) -> JSONParseError? {
    if case .failure(let e) = jsonResult(bytes, maxDepth: maxDepth) { return e }
    return nil
}

/// Parses a JSON literal written in a test (must be valid).
func J(_ text: String, sourceLocation: SourceLocation = #_sourceLocation) -> JSON {
    switch jsonResult(utf8(text)) {
    case .success(let j): return j
    case .failure(let e):
        Issue.record("test JSON does not parse: \(e): \(text)", sourceLocation: sourceLocation)
        return .null
    }
}

func requestResult(_ route: InferenceRoute, _ body: [UInt8]) -> Result<InferenceRequest, APIError> {
    do throws(APIError) {
        return .success(try RequestParser.parse(route: route, body: body))
    } catch {
        return .failure(error)
    }
}

func requestResult(_ route: InferenceRoute, json: JSON) -> Result<InferenceRequest, APIError> {
    do throws(APIError) {
        return .success(try RequestParser.parse(route: route, json: json))
    } catch {
        return .failure(error)
    }
}

/// Parses a request that must be valid.
func request(_ route: InferenceRoute, _ body: String, sourceLocation: SourceLocation = #_sourceLocation) throws -> InferenceRequest {
    switch requestResult(route, utf8(body)) {
    case .success(let r): return r
    case .failure(let e):
        Issue.record("request rejected: \(e) (param \(e.param ?? "nil"))", sourceLocation: sourceLocation)
        throw e
    }
}

/// The error a request must produce.
func requestError(_ route: InferenceRoute, _ body: String) -> APIError? {
    if case .failure(let e) = requestResult(route, utf8(body)) { return e }
    return nil
}

/// Structural equality that, unlike `==`, distinguishes `.int` from `.number` and compares object
/// members in order (duplicates included).
func identical(_ a: JSON, _ b: JSON) -> Bool {
    switch (a, b) {
    case (.null, .null): return true
    case let (.bool(x), .bool(y)): return x == y
    case let (.int(x), .int(y)): return x == y
    case let (.number(x), .number(y)): return x == y || (x.isNaN && y.isNaN)
    case let (.string(x), .string(y)): return x == y
    case let (.array(x), .array(y)): return x.count == y.count && zip(x, y).allSatisfy { identical($0, $1) }
    case let (.object(x), .object(y)):
        return x.count == y.count && zip(x, y).allSatisfy { $0.0 == $1.0 && identical($0.1, $1.1) }
    default: return false
    }
}

func keys(_ j: JSON?) -> [String] { j?.objectValue?.map(\.0) ?? [] }

// MARK: - stream output decoding

/// Splits OpenAI SSE output into event payloads; nil when the framing is broken
/// (every event must be exactly `data: PAYLOAD\n\n`, with no CR anywhere).
func sseEvents(_ bytes: [UInt8]) -> [String]? {
    if bytes.contains(0x0D) { return nil }
    let text = String(decoding: bytes, as: UTF8.self)
    guard Array(text.utf8) == bytes else { return nil }  // valid UTF-8
    if text.isEmpty { return [] }
    guard text.hasSuffix("\n\n") else { return nil }
    var events: [String] = []
    for block in text.dropLast(2).split(separator: "\n\n", omittingEmptySubsequences: false) {
        guard block.hasPrefix("data: "), !block.contains("\n") else { return nil }
        events.append(String(block.dropFirst(6)))
    }
    return events
}

/// The JSON payloads of SSE events (nil for `[DONE]`); nil overall when a payload is neither.
func sseJSON(_ bytes: [UInt8]) -> [JSON?]? {
    guard let events = sseEvents(bytes) else { return nil }
    var out: [JSON?] = []
    for e in events {
        if e == "[DONE]" { out.append(nil); continue }
        guard case .success(let j) = jsonResult(utf8(e)) else { return nil }
        out.append(j)
    }
    return out
}

/// Splits NDJSON output into parsed lines; nil when a line is not JSON or the framing is broken.
func ndjsonLines(_ bytes: [UInt8]) -> [JSON]? {
    if bytes.isEmpty { return [] }
    if bytes.contains(0x0D) || bytes.last != 0x0A { return nil }
    var out: [JSON] = []
    for line in bytes.dropLast().split(separator: 0x0A, omittingEmptySubsequences: false) {
        guard case .success(let j) = jsonResult(Array(line)) else { return nil }
        out.append(j)
    }
    return out
}

func hexDump(_ bytes: [UInt8], limit: Int = 400) -> String {
    let shown = bytes.prefix(limit)
    let s = String(decoding: shown, as: UTF8.self)
    return "\(bytes.count) bytes: \(s.debugDescription)\(bytes.count > limit ? "…" : "")"
}
