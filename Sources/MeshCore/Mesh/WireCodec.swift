/// Mesh protocol version spoken by this build (see docs/PROTOCOL.md).
public let meshProtocolVersion: UInt8 = 1

/// Message types on the mesh wire.
public enum WireMessageType: UInt8, Sendable, CaseIterable {
    case hello = 0x01
    case state = 0x02
    /// A node's engine load and speeds only (``NodeLoad``), sent between full states while requests
    /// start and end, to a peer whose state says it accepts them.
    case load = 0x03
    case request = 0x10
    case responseHead = 0x11
    case chunk = 0x12
    case end = 0x13
    case error = 0x14
    case cancel = 0x15
    case credit = 0x16
    /// A whole response in one message (head, body and end), for a request that asked for it.
    case response = 0x17
    /// Opens a byte tunnel (see "Tunnels" in docs/PROTOCOL.md): `tun`, `target`, `window`, `silenceMs`.
    case tunnelOpen = 0x20
    /// The answer to `tunnelOpen`: `tun` and either `window` (accepted) or `refused` (a message).
    case tunnelOpened = 0x21
    /// Tunnel bytes: `tun`, the payload.
    case tunnelData = 0x22
    /// Tunnel credit: `tun`, `bytes`, `msgs` (what the receiver consumed since its last credit).
    case tunnelCredit = 0x23
    /// Ends a tunnel either way: `tun`, optional `reason` (absent: a clean close).
    case tunnelClose = 0x24
    /// Liveness of a tunnel, opener → acceptor: `tun`.
    case tunnelPing = 0x25
    /// The acceptor's node answers a ping at once: `tun`.
    case tunnelPong = 0x26
    /// Changes to the sender's engine caches (``CacheDeltaMessage``): header `node`, `instance`,
    /// `n`, `engines` [{`id`, `count`}], `snapshot`; payload 9 bytes an entry (hash, tier).
    case cacheDelta = 0x30
    /// Asks the receiver for a snapshot of its engine caches (a delta was missing): `node`.
    case cacheSnapshotRequest = 0x31
    /// The sender's counts per client key over the last minute (``KeyUsageReport``): header
    /// `node`, `instance`, `seq`, `full`, `keys`; to peers whose state sets `limits`.
    case keyUsage = 0x32
}

/// One decoded mesh message: a type, a JSON header and an optional binary payload.
///
/// On the wire a message is 2 or 3 ZeroMQ frames: `[version, type]`, the header as compact JSON
/// (an object), and for `request` and `chunk` the payload bytes.
public struct WireMessage: Sendable, Equatable {
    public var type: WireMessageType
    public var header: JSON
    public var payload: [UInt8]

    public init(type: WireMessageType, header: JSON, payload: [UInt8] = []) {
        self.type = type
        self.header = header
        self.payload = payload
    }

    /// `req` of request-scoped messages.
    public var requestID: String? { header["req"]?.stringValue }

    /// `tun` of tunnel messages.
    public var tunnelID: String? { header["tun"]?.stringValue }
}

/// Why a frame set was rejected. Counted by the receiver, never fatal.
public enum MeshWireError: Error, Sendable, Equatable, CustomStringConvertible {
    case frameCount(Int)
    case badPrelude
    case unsupportedVersion(UInt8)
    case unknownType(UInt8)
    case headerTooLarge(Int)
    case badHeader(String)
    case missingField(String)
    case payloadTooLarge(Int)

    public var description: String {
        switch self {
        case .frameCount(let n): return "expected 2 or 3 frames, got \(n)"
        case .badPrelude: return "first frame must be [version, type]"
        case .unsupportedVersion(let v): return "unsupported protocol version \(v)"
        case .unknownType(let t): return "unknown message type 0x\(String(t, radix: 16))"
        case .headerTooLarge(let n): return "header of \(n) bytes exceeds the limit"
        case .badHeader(let why): return "header is not a JSON object: \(why)"
        case .missingField(let f): return "header lacks '\(f)'"
        case .payloadTooLarge(let n): return "payload of \(n) bytes exceeds the limit"
        }
    }
}

/// Encodes and decodes mesh messages. Pure and defensive: hostile frames produce errors.
public enum MeshWireCodec {
    public static let maxHeaderBytes = 1 << 20

    public static func encode(_ m: WireMessage) -> [[UInt8]] {
        var frames: [[UInt8]] = [[meshProtocolVersion, m.type.rawValue], m.header.serialized()]
        if !m.payload.isEmpty || m.type == .request || m.type == .chunk || m.type == .response || m.type == .tunnelData {
            frames.append(m.payload)
        }
        return frames
    }

    public static func decode(_ frames: [[UInt8]], maxPayloadBytes: Int = 16 << 20) throws(MeshWireError) -> WireMessage {
        guard frames.count == 2 || frames.count == 3 else { throw .frameCount(frames.count) }
        let prelude = frames[0]
        guard prelude.count == 2 else { throw .badPrelude }
        guard prelude[0] == meshProtocolVersion else { throw .unsupportedVersion(prelude[0]) }
        guard let type = WireMessageType(rawValue: prelude[1]) else { throw .unknownType(prelude[1]) }
        guard frames[1].count <= maxHeaderBytes else { throw .headerTooLarge(frames[1].count) }
        let header: JSON
        do {
            header = try JSONParser.parse(frames[1], maxDepth: 32)
        } catch {
            throw .badHeader(error.description)
        }
        guard header.objectValue != nil else { throw .badHeader("not an object") }
        let payload = frames.count == 3 ? frames[2] : []
        guard payload.count <= maxPayloadBytes else { throw .payloadTooLarge(payload.count) }
        switch type {
        case .hello:
            for f in ["node", "name", "proto"] where header[f] == nil { throw .missingField(f) }
        case .state:
            if header["id"]?.stringValue == nil { throw .missingField("id") }
        case .load, .cacheSnapshotRequest:
            if header["node"]?.stringValue == nil { throw .missingField("node") }
        case .cacheDelta:
            if header["node"]?.stringValue == nil { throw .missingField("node") }
            guard let n = header["n"]?.intValue, n >= 0 else { throw .missingField("n") }
        case .keyUsage:
            if header["node"]?.stringValue == nil { throw .missingField("node") }
            guard let n = header["seq"]?.intValue, n >= 0 else { throw .missingField("seq") }
        case .request, .responseHead, .chunk, .end, .error, .cancel, .credit, .response:
            if header["req"]?.stringValue == nil { throw .missingField("req") }
        case .tunnelOpen, .tunnelOpened, .tunnelData, .tunnelCredit, .tunnelClose, .tunnelPing, .tunnelPong:
            guard header["tun"]?.stringValue != nil else { throw .missingField("tun") }
            switch type {
            case .tunnelOpen:
                if header["target"]?.stringValue == nil { throw .missingField("target") }
                guard let w = header["window"]?.intValue, w > 0 else { throw .missingField("window") }
            case .tunnelOpened:
                let accepted = header["window"]?.intValue.map { $0 > 0 } ?? false
                if !accepted && header["refused"]?.stringValue == nil { throw .missingField("window") }
            case .tunnelCredit:
                guard let b = header["bytes"]?.intValue, b >= 0, let n = header["msgs"]?.intValue, n >= 0 else {
                    throw .missingField("bytes")
                }
            default:
                break
            }
        }
        return WireMessage(type: type, header: header, payload: payload)
    }
}
