import MeshZMQ

extension MeshService {
    /// Whether a relay client authenticating with the static public `key` is admitted, by the same
    /// rule as the mesh's ZAP handler (mesh key or trusted, not revoked). Thread-safe: the ZAP
    /// handler's copy lives on the socket thread, the relay asks from NIO's event loops, so
    /// `trust`/`revoke` update a mirror (`relayAdmission`) too.
    public func relayKeyAllowed(_ key: [UInt8]) -> Bool {
        relayAdmission.withLock { $0.admits(key) }
    }

    /// The keypairs of this node's secure relays: `server`, the mesh keypair (what every node's
    /// ROUTER serves with, so a head knows a worker's relay key in advance), and `client`, the key
    /// this node authenticates with when it opens a relay (its own node key in `trust: keys`
    /// meshes, else the mesh keypair), as for its DEALERs.
    public func relayKeyPairs() throws(MeshZMQError) -> (server: CurveKeyPair, client: CurveKeyPair) {
        let server = try configuration.secret.curveKeyPair()
        return (server, configuration.nodeKeyPair ?? server)
    }
}
