import MeshCore
import MeshZMQ
import Synchronization

/// Where a node's per-key counts come from and where its peers' go (per-key limits). The node
/// sets these; the mesh only carries the `keyUsage` messages.
public struct MeshKeyUsageHooks: Sendable {
    /// This node's counts of `keys` (nil: all of them); nil when it counts nothing (no limits).
    public var report: @Sendable (_ keys: [String]?) -> KeyUsageReport?
    /// A peer's counts arrived.
    public var received: @Sendable (KeyUsageReport) -> Void
    /// A peer left: its requests in flight end with it.
    public var peerLost: @Sendable (String) -> Void

    public init(report: @escaping @Sendable ([String]?) -> KeyUsageReport?, received: @escaping @Sendable (KeyUsageReport) -> Void,
                peerLost: @escaping @Sendable (String) -> Void) {
        self.report = report
        self.received = received
        self.peerLost = peerLost
    }
}

/// Counts of the key-usage messages this node sent and received.
public struct MeshKeyUsageTraffic: Sendable, Equatable {
    public var sent = 0
    public var bytesSent = 0
    public var received = 0
    public var rejected = 0
}

final class MeshKeyUsageSharing: Sendable {
    let hooks = Mutex<MeshKeyUsageHooks?>(nil)
    let traffic = Mutex(MeshKeyUsageTraffic())
}

extension MeshService {
    public func setKeyUsageHooks(_ h: MeshKeyUsageHooks?) { keyUsage.hooks.withLock { $0 = h } }

    public var keyUsageTraffic: MeshKeyUsageTraffic { keyUsage.traffic.withLock { $0 } }

    /// Sends this node's counts of `keys` (nil: all, as on each heartbeat) to every peer it dialed
    /// whose state says it reads them. Called as a key's counts change, so peers see a request
    /// within a message's time of its admission.
    public func broadcastKeyUsage(keys: [String]?) {
        guard let hooks = keyUsage.hooks.withLock({ $0 }) else { return }
        let links = state.withLock { s -> [MeshLink] in
            let accepting = Set(s.peers.entries.values.filter { $0.state.acceptsKeyUsage == true }.map { Self.normalize($0.state.meshEndpoint) })
            return s.dialed.filter { accepting.contains($0) }.map { MeshLink.outbound(MeshPeerID($0)) }
        }
        guard !links.isEmpty, let m = hooks.report(keys)?.wire else { return }
        let bytes = MeshWireCodec.encode(m).reduce(0) { $0 + $1.count }
        var sent = 0
        for link in links where send(m, to: link) { sent += 1 }
        keyUsage.traffic.withLock { t in
            t.sent += sent
            t.bytesSent += sent * bytes
        }
    }

    /// A `keyUsage` message from a peer.
    func handleKeyUsageMessage(_ msg: WireMessage, _ m: MeshMessage) {
        guard let node = msg.header["node"]?.stringValue, node != configuration.nodeID else { return }
        let allowed = state.withLock { st -> Bool in
            guard st.revokedNodes[node] == nil, st.peers.entries[node] != nil else { return false }
            if let key = m.peerKey, let bound = st.nodeKeys[node], bound != key { return false }
            return true
        }
        guard allowed, let hooks = keyUsage.hooks.withLock({ $0 }) else { return }
        guard let r = KeyUsageReport(msg) else {
            keyUsage.traffic.withLock { $0.rejected += 1 }
            state.withLock { $0.rejectedFrames += 1 }
            logger.warning("rejected mesh frame", metadata: ["link": "\(m.link)", "reason": "key usage that does not decode"])
            return
        }
        keyUsage.traffic.withLock { $0.received += 1 }
        hooks.received(r)
    }
}
