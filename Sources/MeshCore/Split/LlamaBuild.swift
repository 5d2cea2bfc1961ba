/// What a node advertises about its llama.cpp (optional on the wire): the build its `llama-server`
/// reports, and whether it also has an RPC server (`ggml-rpc-server`, older builds `rpc-server`)
/// to lend memory to a split. Head and workers of a split must run the same build: llama.cpp's RPC
/// HELLO checks only the protocol version, and mismatched builds can silently compute garbage.
public struct LlamaAdvert: Sendable, Hashable, Codable {
    /// Build identity, e.g. `b1-0c1e570` (see ``LlamaBuild/parse(_:)``).
    public var build: String
    public var rpcServer: Bool
    /// Memory it offers to models and splits now (free VRAM, else available RAM, capped by
    /// `hardware.offer_bytes`); nil from an older node.
    public var offerBytes: Int64? = nil
    /// Memory leased to a split as a worker, and that split's id (nil: none).
    public var leasedBytes: Int64? = nil
    public var leasedTo: String? = nil
    /// Splits this node heads now (their ids).
    public var heads: [String]? = nil

    public init(build: String, rpcServer: Bool, offerBytes: Int64? = nil, leasedBytes: Int64? = nil, leasedTo: String? = nil,
                heads: [String]? = nil) {
        self.build = build
        self.rpcServer = rpcServer
        self.offerBytes = offerBytes
        self.leasedBytes = leasedBytes
        self.leasedTo = leasedTo
        self.heads = heads
    }
}

public enum LlamaBuild {
    /// The build identity in `llama-server --version` output: `b<number>-<commit>` from
    /// `version: 0.5.0-dev (build 1, commit 0c1e570)` or `version: 4567 (abc1234)`; the version
    /// text itself when no commit is given; nil when there is no `version:` line.
    public static func parse(_ output: String) -> String? {
        for raw in output.split(whereSeparator: { $0 == "\n" || $0 == "\r" }) {
            let line = String(raw).trimmingSpaces()
            guard line.hasPrefix("version:") else { continue }
            let rest = String(line.dropFirst("version:".count)).trimmingSpaces()
            guard !rest.isEmpty else { return nil }
            let head = rest.split(separator: " ", maxSplits: 1).first.map(String.init) ?? rest
            var number: String?
            var commit: String?
            if let open = rest.firstIndex(of: "("), let close = rest[open...].firstIndex(of: ")") {
                let inner = rest[rest.index(after: open)..<close]
                for part in inner.split(separator: ",").map({ String($0).trimmingSpaces() }) {
                    if part.hasPrefix("build ") { number = String(part.dropFirst(6)) }
                    else if part.hasPrefix("commit ") { commit = String(part.dropFirst(7)) }
                    else if isHex(part) { commit = part }
                }
            }
            if number == nil, head.allSatisfy(\.isNumber) { number = head }
            if let commit { return (number.map { "b\($0)-" } ?? "") + commit }
            return rest
        }
        return nil
    }

    static func isHex(_ s: String) -> Bool {
        s.count >= 7 && s.allSatisfy { $0.isHexDigit }
    }
}
