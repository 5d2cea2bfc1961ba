/// The caller-chosen name of one outbound connection (one DEALER), e.g. a node name or "host:port".
public struct MeshPeerID: Hashable, Sendable, CustomStringConvertible, ExpressibleByStringLiteral {
    /// The name.
    public let rawValue: String
    /// Wraps a name.
    public init(_ rawValue: String) { self.rawValue = rawValue }
    public init(stringLiteral value: String) { self.rawValue = value }
    public var description: String { rawValue }
}

/// One end of a mesh conversation: where a message came from, and where a reply goes.
public enum MeshLink: Hashable, Sendable, CustomStringConvertible {
    /// A remote node's DEALER connected to our ROUTER, named by the routing id our ROUTER assigned to it
    /// (valid for that connection only; a reconnecting client gets a new one).
    case inbound(routingID: [UInt8])
    /// Our DEALER connected to a remote node's ROUTER.
    case outbound(MeshPeerID)

    public var description: String {
        switch self {
        case let .inbound(routingID): "inbound(\(routingID.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()))"
        case let .outbound(peer): "outbound(\(peer))"
        }
    }
}

/// One multi-frame message received from the mesh.
public struct MeshMessage: Sendable, Equatable {
    /// Where it came from; pass it to ``MeshSocketLoop/send(_:to:)`` to reply.
    public var link: MeshLink
    /// The payload frames (for inbound messages the ROUTER's routing-id frame is stripped).
    public var frames: [[UInt8]]
    /// The sender's CURVE public key: for inbound messages the key the ZAP handler authenticated (libzmq's
    /// "User-Id" property), for outbound ones the server key we connected with.
    public var peerKey: [UInt8]?
    /// The sender's IP address as libzmq reports it ("Peer-Address"), when available.
    public var peerAddress: String?

    /// Builds a message value (used by the loop and by tests).
    public init(link: MeshLink, frames: [[UInt8]], peerKey: [UInt8]? = nil, peerAddress: String? = nil) {
        self.link = link
        self.frames = frames
        self.peerKey = peerKey
        self.peerAddress = peerAddress
    }
}

/// Everything the loop reports, in order, through ``MeshSocketLoop/events``.
public enum MeshSocketEvent: Sendable, Equatable {
    /// A message arrived on the ROUTER or on one of our DEALERs.
    case message(MeshMessage)
    /// Our DEALER to `peer` finished its CURVE handshake (the server accepted us).
    case peerConnected(MeshPeerID)
    /// Our DEALER to `peer` lost an established connection (libzmq reconnects by itself).
    case peerDisconnected(MeshPeerID)
    /// Our DEALER's handshake with `peer` failed: refused by the server's ZAP handler, or (typically) the server
    /// key is wrong, i.e. the peer uses another mesh secret. Repeated identical failures are reported once.
    /// After a ZAP refusal libzmq 4.3 does not retry that connection: call ``MeshSocketLoop/disconnect(peer:)``
    /// and connect again once the server may admit us. Other failures are retried with back-off by libzmq.
    case handshakeFailed(peer: MeshPeerID, reason: String)
    /// A client was refused by our ZAP handler, or its handshake with our ROUTER failed (wrong server key, another
    /// mechanism), or a revoked key's open connection carried a message. `address` is the client IP for ZAP
    /// refusals and our bound endpoint otherwise (libzmq's monitor does not report the remote address).
    case authFailure(address: String, reason: String)
    /// A connection to our ROUTER closed before its handshake finished: a port probe (`meshctl doctor` on a
    /// peer, a scanner), a client that gave up, a network failure. Not counted as an authentication failure.
    case handshakeAborted(address: String, reason: String)
    /// A message was dropped because it broke a limit this layer enforces (frame count, total size).
    case malformed(link: MeshLink, reason: String)
    /// A message could not be handed to libzmq (peer gone, queue full, unknown peer) and was dropped.
    case sendFailed(link: MeshLink, reason: String)
}

/// Socket-level settings of a ``MeshSocketLoop``. Defaults suit a LAN mesh forwarding LLM requests.
public struct MeshSocketConfiguration: Sendable {
    /// This node's CURVE keypair: the ROUTER's server key and every DEALER's client key.
    /// Normally the mesh keypair, ``MeshSecret/curveKeyPair()``.
    public var keyPair: CurveKeyPair
    /// The keypair DEALERs authenticate with, when it differs from the server keypair (a node's
    /// own key in `trust: keys` meshes). nil: `keyPair`.
    public var clientKeyPair: CurveKeyPair?
    /// The client key the ZAP handler always accepts (unless revoked). Defaults to `keyPair.publicKey`.
    public var meshPublicKey: [UInt8]
    /// Further client keys accepted by ZAP (per-node keypairs); changeable at runtime with ``MeshSocketLoop/allow(key:)``.
    public var allowedKeys: Set<[UInt8]> = []
    /// Client keys refused by ZAP; changeable at runtime with ``MeshSocketLoop/revoke(key:)``.
    public var revokedKeys: Set<[UInt8]> = []
    /// `ZMQ_ZAP_DOMAIN` of the ROUTER; the ZAP handler refuses requests for any other domain.
    public var zapDomain = "meshd"
    /// `ZMQ_MAXMSGSIZE` of every socket (a larger inbound frame drops the connection), also the limit on the sum of
    /// a message's frames checked by the loop.
    public var maxMessageSize = 16 << 20
    /// Messages with more frames are dropped (reported as ``MeshSocketEvent/malformed(link:reason:)``).
    public var maxFramesPerMessage = 64
    /// `ZMQ_SNDHWM` of every socket (messages).
    public var sendHighWaterMark: Int32 = 1000
    /// `ZMQ_RCVHWM` of every socket (messages).
    public var receiveHighWaterMark: Int32 = 1000
    /// `ZMQ_LINGER` for sockets closed while running (`disconnect`); `stop` always closes with linger 0.
    public var lingerMilliseconds: Int32 = 100
    /// `ZMQ_HEARTBEAT_IVL` (0 disables ZMTP heartbeats).
    public var heartbeatIntervalMilliseconds: Int32 = 5000
    /// `ZMQ_HEARTBEAT_TIMEOUT`: a connection silent this long after a PING is dropped.
    public var heartbeatTimeoutMilliseconds: Int32 = 15000
    /// `ZMQ_RECONNECT_IVL` of DEALERs.
    public var reconnectIntervalMilliseconds: Int32 = 100
    /// `ZMQ_RECONNECT_IVL_MAX` of DEALERs (exponential back-off cap).
    public var reconnectIntervalMaxMilliseconds: Int32 = 5000
    /// Messages queued per outbound peer while its DEALER is not connected / not writable; more are dropped.
    public var maxQueuedMessagesPerPeer = 1024
    /// Events buffered for a slow ``MeshSocketLoop/events`` consumer; newer events are dropped (and logged).
    public var eventBufferLimit = 65_536

    /// Settings for `keyPair`, accepting `keyPair.publicKey` as the mesh key.
    public init(keyPair: CurveKeyPair) {
        self.keyPair = keyPair
        self.meshPublicKey = keyPair.publicKey
    }

    /// Settings for the mesh keypair derived from `secret`.
    public init(secret: MeshSecret) throws(MeshZMQError) {
        self.init(keyPair: try secret.curveKeyPair())
    }
}
