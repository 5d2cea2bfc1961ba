/// The DNS-SD TXT record a node publishes with its `_meshd._tcp` service, and its validation.
///
/// The record is a hint, not a credential: it says where a node's mesh socket is, so a peer can
/// dial it; the node is used only after the CURVE handshake with it succeeds and it sends its
/// state over the mesh. The full model list travels over the mesh, never here, so the record
/// stays small (``maxBytes``).
public struct DiscoveryTXT: Sendable, Equatable {
    /// Service type meshd publishes and browses.
    public static let serviceType = "_meshd._tcp"
    /// Upper bound for the whole record (sum of `key=value` strings plus their length bytes).
    public static let maxBytes = 200

    /// Node id (`id`).
    public var nodeID: String
    /// Mesh protocol version (`proto`).
    public var proto: Int
    /// Port of the mesh ROUTER (`mesh`); the address is the one mDNS resolved.
    public var meshPort: Int
    /// Port of the client API (`http`), informational.
    public var httpPort: Int
    /// Short hardware summary (`gpu`), e.g. `2x RTX 4090` or `cpu`.
    public var gpu: String
    /// Total accelerator memory in bytes (`vram`).
    public var vramTotalBytes: Int64
    /// First 8 bytes of SHA-256 of the mesh's public key, hex (`fp`): lets a node skip services of
    /// another mesh without a failed handshake. Not a secret and not trusted: a wrong value only
    /// makes the handshake fail.
    public var meshFingerprint: String
    /// meshd version (`v`).
    public var version: String

    public init(nodeID: String, proto: Int, meshPort: Int, httpPort: Int, gpu: String, vramTotalBytes: Int64,
                meshFingerprint: String, version: String) {
        self.nodeID = nodeID
        self.proto = proto
        self.meshPort = meshPort
        self.httpPort = httpPort
        self.gpu = gpu
        self.vramTotalBytes = vramTotalBytes
        self.meshFingerprint = meshFingerprint
        self.version = version
    }

    /// The record as `key=value` strings, within ``maxBytes``: the GPU summary is shortened first,
    /// then the version, when the whole would not fit.
    public func encode() -> [String] {
        func render(gpu: String, version: String) -> [String] {
            ["id=\(nodeID)", "proto=\(proto)", "mesh=\(meshPort)", "http=\(httpPort)", "gpu=\(gpu)",
             "vram=\(vramTotalBytes)", "fp=\(meshFingerprint)", "v=\(version)"]
        }
        var g = Self.clip(gpu, 64), v = Self.clip(version, 24)
        var out = render(gpu: g, version: v)
        while Self.size(out) > Self.maxBytes && (!g.isEmpty || !v.isEmpty) {
            if !g.isEmpty { g = String(g.dropLast(max(1, Self.size(out) - Self.maxBytes))) } else { v = "" }
            out = render(gpu: g, version: v)
        }
        return out
    }

    /// Bytes the strings take in a TXT record (each is length-prefixed).
    public static func size(_ strings: [String]) -> Int { strings.reduce(0) { $0 + $1.utf8.count + 1 } }

    static func clip(_ s: String, _ n: Int) -> String {
        var out = ""
        for ch in s where ch.isASCII && !ch.isNewline {
            guard out.utf8.count < n else { break }
            out.append(ch)
        }
        return out
    }

    /// Why a discovered record is not worth dialing.
    public enum Rejection: Error, Equatable, Sendable, CustomStringConvertible {
        case missing(String)
        case invalid(key: String, value: String)
        case ownNode
        case otherProtocol(Int)
        case otherMesh(String)

        public var description: String {
            switch self {
            case .missing(let k): return "TXT record has no '\(k)'"
            case .invalid(let k, let v): return "TXT '\(k)' is not valid: '\(v.prefix(40))'"
            case .ownNode: return "this node's own service"
            case .otherProtocol(let p): return "mesh protocol \(p), this node speaks \(meshProtocolVersion)"
            case .otherMesh(let fp): return "another mesh (fingerprint \(fp.prefix(16)))"
            }
        }
    }

    /// Parses and checks a discovered record against this node (`ownID`, `ownFingerprint`).
    /// Unknown keys are ignored (newer versions may add some); `gpu`, `vram`, `v` are optional.
    public static func decode(_ txt: [String: String], ownID: String, ownFingerprint: String) -> Result<DiscoveryTXT, Rejection> {
        guard let id = txt["id"], !id.isEmpty else { return .failure(.missing("id")) }
        guard id.utf8.count <= 128, !id.contains(where: { $0.isNewline || $0 == "\0" }) else {
            return .failure(.invalid(key: "id", value: id))
        }
        if id == ownID { return .failure(.ownNode) }
        guard let ps = txt["proto"] else { return .failure(.missing("proto")) }
        guard let proto = Int(ps) else { return .failure(.invalid(key: "proto", value: ps)) }
        guard proto == Int(meshProtocolVersion) else { return .failure(.otherProtocol(proto)) }
        guard let ms = txt["mesh"] else { return .failure(.missing("mesh")) }
        guard let mesh = Int(ms), (1...65535).contains(mesh) else { return .failure(.invalid(key: "mesh", value: ms)) }
        let http = txt["http"].flatMap { Int($0) }.flatMap { (1...65535).contains($0) ? $0 : nil } ?? 0
        let fp = txt["fp"] ?? ""
        if !fp.isEmpty && !ownFingerprint.isEmpty && fp != ownFingerprint { return .failure(.otherMesh(fp)) }
        let vram = txt["vram"].flatMap { Int64($0) }.map { max(0, $0) } ?? 0
        return .success(DiscoveryTXT(nodeID: id, proto: proto, meshPort: mesh, httpPort: http, gpu: clip(txt["gpu"] ?? "", 64),
                                     vramTotalBytes: vram, meshFingerprint: fp, version: clip(txt["v"] ?? "", 24)))
    }
}
