/// The fuzz targets: each takes one input of arbitrary bytes and drives one parser of hostile
/// input the way meshd does, checking invariants on the way. A crash, a trap, a hang or an
/// unbounded allocation is a finding; a rejected input is not.
///
/// Input layouts (how the bytes are split into a route, frames, chunks, ...) are described on each
/// target and in Tests/Fuzz/README.md; the committed seed corpus (`meshd-fuzz seed DIR`) uses them.
public enum FuzzTarget: String, CaseIterable, Sendable {
    /// Raw bytes on a connection to the real HTTP server (NIO pipeline, limits, timeouts) with a
    /// small responder that parses inference bodies and streams answers.
    case http
    /// Client request bodies of both dialects (`RequestParser`), then the engine and provider
    /// request builders.
    case api
    /// Mesh wire frames (`MeshWireCodec`) and the decoders run on what they carry (state, load,
    /// cache deltas), with an encode/decode round trip.
    case wire
    /// mDNS TXT records (`DiscoveryTXT`).
    case txt
    /// The configuration loader: YAML text plus `MESHD_*` environment overrides.
    case config
    /// Provider and engine stream parsers: Anthropic/Gemini SSE, Bedrock event-stream, OpenAI
    /// SSE and Ollama NDJSON into `StreamTranslator`, in chunks of varying sizes.
    case stream

    /// The longest input worth trying (libFuzzer's `-max_len`).
    public var maxLength: Int {
        switch self {
        case .txt: return 2048
        case .wire, .stream: return 65536
        case .http, .api: return 16384
        case .config: return 32768  // the documented Config/meshd.yaml is a seed
        }
    }

    /// Runs one input.
    public func run(_ bytes: [UInt8]) {
        switch self {
        case .http: HTTPFuzz.run(bytes)
        case .api: APIFuzz.run(bytes)
        case .wire: WireFuzz.run(bytes)
        case .txt: TXTFuzz.run(bytes)
        case .config: ConfigFuzz.run(bytes)
        case .stream: StreamFuzz.run(bytes)
        }
    }
}

/// A broken invariant: stops the process the way a crash does, so libFuzzer keeps the input.
func invariant(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String,
               file: StaticString = #fileID, line: UInt = #line) {
    if !condition() { fatalError("fuzz invariant: \(message())", file: file, line: line) }
}

/// Splits bytes at the first newline: (first line, rest). No newline: (all, []).
func splitFirstLine(_ bytes: [UInt8]) -> (ArraySlice<UInt8>, ArraySlice<UInt8>) {
    guard let nl = bytes.firstIndex(of: 0x0A) else { return (bytes[...], []) }
    return (bytes[..<nl], bytes[(nl + 1)...])
}
