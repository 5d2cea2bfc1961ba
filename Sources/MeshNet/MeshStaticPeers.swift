import MeshCore
import MeshZMQ

extension MeshService {
    /// Replaces the configured peers (a reload of `mesh.peers`): new ones are dialed now; a
    /// removed one is hung up and no longer redialed unless a live node is behind it (its streams
    /// are not cut: it stays until it goes away). Returns the endpoints added and removed.
    @discardableResult
    public func setStaticPeers(_ peers: [HostPort]) async -> (added: [String], removed: [String]) {
        let new = peers.map { Self.normalize($0.description) }
        let (added, removed, hangUp) = state.withLock { s -> ([String], [String], [String]) in
            let added = new.filter { !s.staticPeers.contains($0) }
            let removed = s.staticPeers.filter { !new.contains($0) }
            s.staticPeers = new
            var hangUp: [String] = []
            for ep in removed {
                let live = s.peers.peers.contains { Self.normalize($0.state.meshEndpoint) == ep }
                guard !live, s.dialed.contains(ep) else { continue }
                s.dialed.remove(ep)
                s.redialAttempts[ep] = nil
                hangUp.append(ep)
            }
            return (added, removed, hangUp)
        }
        for ep in hangUp { _ = loop.disconnect(peer: MeshPeerID(ep)) }
        if !boundEndpoint.isEmpty { for ep in added { await dial(ep) } }
        return (added, removed)
    }
}
