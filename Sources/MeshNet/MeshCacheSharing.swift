import MeshCore
import MeshZMQ
import Synchronization

/// Where a node's cache deltas come from and where its peers' go (cache-aware routing). The node
/// sets these; the mesh only carries the messages.
public struct MeshCacheHooks: Sendable {
    /// This node's cache changes since the last call, numbered; nil when nothing changed.
    public var drain: @Sendable () -> CacheDeltaMessage?
    /// Everything this node's engines hold, with the number of the last change it includes.
    public var snapshot: @Sendable () -> CacheDeltaMessage
    /// A peer's delta or snapshot arrived: false when one is missing (a snapshot is then asked for).
    public var received: @Sendable (CacheDeltaMessage) -> Bool
    /// A peer left: forget its caches.
    public var forget: @Sendable (String) -> Void

    public init(drain: @escaping @Sendable () -> CacheDeltaMessage?, snapshot: @escaping @Sendable () -> CacheDeltaMessage,
                received: @escaping @Sendable (CacheDeltaMessage) -> Bool, forget: @escaping @Sendable (String) -> Void) {
        self.drain = drain
        self.snapshot = snapshot
        self.received = received
        self.forget = forget
    }
}

/// Counts of the cache messages this node sent and received.
public struct MeshCacheTraffic: Sendable, Equatable {
    public var deltasSent = 0
    public var bytesSent = 0
    public var snapshotsSent = 0
    public var snapshotsAsked = 0
    public var received = 0
    public var rejected = 0
}

final class MeshCacheSharing: Sendable {
    let hooks = Mutex<MeshCacheHooks?>(nil)
    let traffic = Mutex(MeshCacheTraffic())
}

extension MeshService {
    public func setCacheHooks(_ h: MeshCacheHooks) { cacheSharing.hooks.withLock { $0 = h } }

    /// What this node sent and received of cache deltas since start.
    public var cacheTraffic: MeshCacheTraffic { cacheSharing.traffic.withLock { $0 } }

    /// Sends this node's cache changes (if any) to `links` (every peer it dialed): called with each
    /// load broadcast, so a request's blocks reach the peers as the request ends.
    func broadcastCacheDelta(to links: [MeshLink]) {
        guard !links.isEmpty, let hooks = cacheSharing.hooks.withLock({ $0 }), var d = hooks.drain() else { return }
        d.instance = instance
        let m = d.wire
        let bytes = MeshWireCodec.encode(m).reduce(0) { $0 + $1.count }
        var sent = 0
        for link in links where send(m, to: link) { sent += 1 }
        cacheSharing.traffic.withLock { t in
            t.deltasSent += sent
            t.bytesSent += sent * bytes
        }
    }

    /// Asks the peer at the other end of `link` for everything its engines hold.
    func askCacheSnapshot(over link: MeshLink) {
        guard cacheSharing.hooks.withLock({ $0 }) != nil else { return }
        cacheSharing.traffic.withLock { $0.snapshotsAsked += 1 }
        _ = send(WireMessage(type: .cacheSnapshotRequest, header: .object([("node", .string(configuration.nodeID))])), to: link)
    }

    /// A `cacheDelta` or `cacheSnapshotRequest` from a peer.
    func handleCacheMessage(_ msg: WireMessage, _ m: MeshMessage) {
        guard let node = msg.header["node"]?.stringValue, node != configuration.nodeID else { return }
        // Only from the node's own key, when we know it, and never from a revoked one.
        let allowed = state.withLock { st -> Bool in
            guard st.revokedNodes[node] == nil else { return false }
            if let key = m.peerKey, let bound = st.nodeKeys[node], bound != key { return false }
            return true
        }
        guard allowed, let hooks = cacheSharing.hooks.withLock({ $0 }) else { return }
        switch msg.type {
        case .cacheDelta:
            guard let d = CacheDeltaMessage(msg) else {
                cacheSharing.traffic.withLock { $0.rejected += 1 }
                state.withLock { $0.rejectedFrames += 1 }
                logger.warning("rejected mesh frame", metadata: ["link": "\(m.link)", "reason": "cache delta that does not add up"])
                return
            }
            cacheSharing.traffic.withLock { $0.received += 1 }
            if !hooks.received(d) { askCacheSnapshot(over: m.link) }
        case .cacheSnapshotRequest:
            var snap = hooks.snapshot()
            snap.instance = instance
            if send(snap.wire, to: m.link) { cacheSharing.traffic.withLock { $0.snapshotsSent += 1 } }
        default:
            break
        }
    }
}
