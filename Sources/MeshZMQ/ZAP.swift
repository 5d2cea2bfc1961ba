/// Which CURVE client keys are admitted: the mesh key or an allow-listed key, and not revoked.
/// The ZAP handler applies it to the mesh's sockets; meshd's secure relays (MeshRelay) admit the
/// same keys, so both share this one rule.
public struct CurveKeyAdmission: Sendable, Equatable {
    /// The mesh's shared public key (always accepted unless revoked).
    public var meshKey: [UInt8]
    /// Further accepted client keys (per-node keypairs), updatable at runtime.
    public var allowedKeys: Set<[UInt8]>
    /// Keys refused even if they are the mesh key or allow-listed.
    public var revokedKeys: Set<[UInt8]>

    public init(meshKey: [UInt8], allowedKeys: Set<[UInt8]>, revokedKeys: Set<[UInt8]>) {
        self.meshKey = meshKey
        self.allowedKeys = allowedKeys
        self.revokedKeys = revokedKeys
    }

    /// Whether a client authenticating with `key` is admitted.
    public func admits(_ key: [UInt8]) -> Bool {
        key.count == CurveKeyPair.keyLength && !revokedKeys.contains(key) && (key == meshKey || allowedKeys.contains(key))
    }

    /// Admits `key` (and un-revokes it).
    public mutating func allow(_ key: [UInt8]) {
        revokedKeys.remove(key)
        allowedKeys.insert(key)
    }

    /// Refuses `key` for new handshakes (and removes it from the allowlist).
    public mutating func revoke(_ key: [UInt8]) {
        allowedKeys.remove(key)
        revokedKeys.insert(key)
    }
}

/// The ZAP (ZeroMQ RFC 27) policy the loop's handler applies: CURVE only, our domain only, and a client key that
/// ``CurveKeyAdmission`` admits. Pure value logic; the socket side lives in the loop runner.
struct ZAPPolicy: Sendable {
    /// The domain our server sockets set with `ZMQ_ZAP_DOMAIN`; requests for any other domain are refused.
    var domain: String
    var keys: CurveKeyAdmission

    init(domain: String, meshKey: [UInt8], allowedKeys: Set<[UInt8]>, revokedKeys: Set<[UInt8]>) {
        self.domain = domain
        self.keys = CurveKeyAdmission(meshKey: meshKey, allowedKeys: allowedKeys, revokedKeys: revokedKeys)
    }

    var revokedKeys: Set<[UInt8]> { keys.revokedKeys }
    mutating func allow(_ key: [UInt8]) { keys.allow(key) }
    mutating func revoke(_ key: [UInt8]) { keys.revoke(key) }

    /// Judges one ZAP request (its frames as received on the handler's REP socket).
    func evaluate(_ frames: [[UInt8]]) -> ZAPDecision {
        let requestID = frames.count > 1 ? frames[1] : []
        func refuse(_ reason: String, address: String = "unknown", key: [UInt8]? = nil) -> ZAPDecision {
            ZAPDecision(requestID: requestID, accepted: false, address: address, clientKey: key, reason: reason)
        }
        guard frames.count >= 6 else { return refuse("malformed ZAP request: \(frames.count) frames") }
        guard frames[0] == Array("1.0".utf8) else { return refuse("malformed ZAP request: unsupported version") }
        let address = String(decoding: frames[3], as: UTF8.self)
        let domain = String(decoding: frames[2], as: UTF8.self)
        guard domain == self.domain else { return refuse("wrong ZAP domain \"\(domain.prefix(64))\"", address: address) }
        let mechanism = String(decoding: frames[5], as: UTF8.self)
        guard mechanism == "CURVE" else { return refuse("mechanism \(mechanism.prefix(16)) is not allowed (CURVE only)", address: address) }
        guard frames.count == 7, frames[6].count == CurveKeyPair.keyLength else {
            return refuse("malformed CURVE credentials", address: address)
        }
        let key = frames[6]
        if keys.revokedKeys.contains(key) { return refuse("client key is revoked", address: address, key: key) }
        guard keys.admits(key) else {
            return refuse("client key is not the mesh key and not allow-listed", address: address, key: key)
        }
        return ZAPDecision(requestID: requestID, accepted: true, address: address, clientKey: key, reason: nil)
    }
}

/// The outcome of one ZAP request.
struct ZAPDecision: Sendable, Equatable {
    var requestID: [UInt8]
    var accepted: Bool
    /// The client's address as libzmq reported it (an IP for TCP).
    var address: String
    /// The client's CURVE public key when the request carried a well-formed one.
    var clientKey: [UInt8]?
    /// Why it was refused (nil when accepted). Never contains key material other than public keys.
    var reason: String?

    /// The RFC 27 reply: version, request id, status code, status text, user id, metadata.
    /// On success the user id is the client key in Z85, which libzmq attaches to every message as "User-Id".
    var replyFrames: [[UInt8]] {
        let userID = accepted ? (clientKey.flatMap(Z85.encode) ?? "") : ""
        return [
            Array("1.0".utf8), requestID,
            Array((accepted ? "200" : "400").utf8),
            Array((accepted ? "OK" : "Access denied").utf8),
            Array(userID.utf8), [],
        ]
    }
}
