import Foundation
import Logging
import MeshCore
import MeshZMQ
import Synchronization

/// Settings of the mesh service.
public struct MeshServiceConfiguration: Sendable {
    /// How the heartbeat loop waits between ticks (meshd: on its event loop's own timers, one
    /// thread woken per tick instead of libdispatch's timer thread, a worker and the loop).
    public var sleep: Sleeper = { try? await Task.sleep(for: $0) }
    public var nodeID: String
    public var listen: HostPort
    public var staticPeers: [HostPort]
    public var heartbeatMs: Int
    public var deadAfterMissed: Int
    public var secret: MeshSecret
    /// Unacknowledged response bytes a serving node may have in flight per request.
    public var creditWindowBytes: Int = 512 * 1024
    /// Admission: every secret holder, or only trusted node keys.
    public var trust: MeshTrustMode = .secret
    /// This node's own keypair (dialling identity with `trust: keys`).
    public var nodeKeyPair: CurveKeyPair?
    /// Node public keys admitted with `trust: keys`.
    public var trustedKeys: Set<[UInt8]> = []
    public var maxPayloadBytes: Int = 8 << 20
    /// A forwarded response whose serving node sends nothing for this long while its reader waits
    /// fails (`timeouts.between_chunks_ms`); nil: it waits until the peer is lost.
    public var forwardIdleMs: Int?

    public init(nodeID: String, listen: HostPort, staticPeers: [HostPort], heartbeatMs: Int, deadAfterMissed: Int, secret: MeshSecret) {
        self.nodeID = nodeID
        self.listen = listen
        self.staticPeers = staticPeers
        self.heartbeatMs = heartbeatMs
        self.deadAfterMissed = deadAfterMissed
        self.secret = secret
    }
}

/// The ZeroMQ mesh of one node: hello and state exchange with heartbeats and expiry, peer
/// discovery through peers' known-peer lists, request forwarding with streamed, credit-limited
/// responses and cancellation, and drain control. All sockets live on the `MeshSocketLoop` thread;
/// this type only enqueues frames and consumes its event stream.
public final class MeshService: Sendable {
    public let configuration: MeshServiceConfiguration
    let logger: Logger
    let clock: any WallClock
    let loop: MeshSocketLoop
    /// This node's state as it would be sent now.
    public let localState: @Sendable () -> NodeState
    let handler: Mutex<(any MeshRequestHandler)?> = Mutex(nil)
    let state: Mutex<State>
    let stopped = Mutex(false)
    /// Byte tunnels to and from peers (MeshTunnels.swift).
    let tunnelTable: MeshTunnelTable
    let cacheSharing = MeshCacheSharing()
    let keyUsage = MeshKeyUsageSharing()
    /// The ZAP policy mirrored for secure relays (MeshRelayKeys.swift).
    let relayAdmission: Mutex<CurveKeyAdmission>

    struct Pending {
        var node: String
        var head: CheckedContinuation<ForwardedResponse, any Error>?
        /// The streamed body's writer, made when a head arrives (an answer that comes whole needs none).
        var body: AsyncThrowingStream<[UInt8], any Error>.Continuation?
        /// The serving node's credit window, from its head; nil (an older peer): credit per chunk.
        var window: Int?
        /// Bytes the client consumed that were not yet credited back.
        var ungranted = 0
        /// Since when the body's reader has been waiting for the next chunk (nil: it is not), and
        /// when the last chunk came: a peer that sends nothing for `forwardIdleMs` while we wait
        /// has stalled (a lost credit, a peer stuck short of being declared lost).
        var waitingSince: UInt64?
        var lastChunkNanos: UInt64 = 0
    }

    struct Served {
        var link: MeshLink
        var node: String
        var outstanding: Int
        var waiter: CheckedContinuation<Void, any Error>?
        var task: Task<Void, Never>?
        var cancelled: Bool
    }

    struct State {
        var peers: PeerTable
        /// Node id → mesh endpoint we dial it on.
        var endpoints: [String: String] = [:]
        /// Endpoints with a DEALER connected.
        var dialed: Set<String> = []
        /// Inbound routing id → node id (from hello/state).
        var inbound: [[UInt8]: String] = [:]
        var pending: [String: Pending] = [:]
        var served: [String: Served] = [:]
        /// Peers gone lately: their last state and when (monotonic nanoseconds), kept 5 minutes.
        var recentlyDown: [String: (NodeState, UInt64)] = [:]
        var boundEndpoint: String = ""
        var rejectedFrames = 0
        var authFailures = 0
        var abortedHandshakes = 0
        var nextID: UInt64 = 0
        var redialAttempts: [String: Int] = [:]
        /// The configured peers (`mesh.peers`, `host:port`): dialed at start, replaced by a reload.
        var staticPeers: [String] = []
        /// Our own forwards to each peer's engines since its last state: (started, completed).
        /// Routing adds started − completed to the reported load, so a stale state does not
        /// herd requests onto a node that has just been given work (or keep one marked busy
        /// with work we already saw finish).
        var forwardDelta: [String: [String: (started: Int, completed: Int)]] = [:]
        /// Node id → the client key it dialled us with (learned from its hello/state over our ROUTER).
        var nodeKeys: [String: [UInt8]] = [:]
        /// Nodes whose key was revoked (id → key), and the endpoints we dialled them on: never
        /// dialled again, and nothing they send over a connection we made is used, until trusted again.
        var revokedNodes: [String: [UInt8]] = [:]
        var revokedEndpoints: Set<String> = []
        /// Other machines found using a node name that is taken (by us or by a live peer), by
        /// "name@endpoint": the first holder keeps the name, the other is ignored.
        var nameConflicts: [String: NameConflict] = [:]
        /// The `seq` of the last state or load sent (see `stamped`).
        var lastSeq: UInt64 = 0
    }

    /// Another machine uses a node name already in use in this mesh.
    public struct NameConflict: Sendable, Equatable {
        /// The contested node name.
        public var name: String
        /// The mesh endpoint of the machine that is ignored.
        public var endpoint: String
        /// Whether the name is this node's own.
        public var isOwnName: Bool
        /// Wall-clock nanoseconds when it was first seen.
        public var sinceNanos: UInt64
    }

    /// Random id of this meshd process (see `NodeState.instance`).
    let instance: String = (0..<8).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()

    /// Name conflicts seen since start (newest first), for status and `meshctl doctor`.
    public func nameConflicts() -> [NameConflict] {
        state.withLock { $0.nameConflicts.values.sorted { $0.sinceNanos > $1.sinceNanos } }
    }

    /// `ZMQ_RECONNECT_IVL_MAX` of our DEALERs: one heartbeat (100 ms ... 5 s). A node learns a peer's
    /// state only over the peer's own connection to it, so a node that comes back (restarted, or a
    /// link healed after the connection dropped) sees each peer only once that peer's DEALER has
    /// reconnected; libzmq's back-off (doubling up to 5 s) kept a restarted node's view of the mesh
    /// empty for up to 5 s while the mesh already saw it up.
    static func reconnectBackoffCapMs(heartbeatMs: Int) -> Int32 {
        Int32(clamping: max(100, min(heartbeatMs, 5000)))
    }

    /// Whether a node claiming `id` from `endpoint` with `instance` is another machine than the one
    /// that holds that name (us, or a live peer at another endpoint); records and logs it once.
    /// An older peer sends no instance: only its endpoint can tell, so it is never judged here.
    func isNameConflict(_ s: inout State, id: String, endpoint: String, instance: String?, now: UInt64) -> Bool {
        guard let instance else { return false }
        let isOwn = id == configuration.nodeID
        let key = "\(id)@\(endpoint)"
        if isOwn {
            guard instance != self.instance else { return false }
        } else if let holder = s.peers.entries[id]?.state {
            guard let held = holder.instance, held != instance,
                  Self.normalize(holder.meshEndpoint) != Self.normalize(endpoint) else { return false }
        } else {
            // The holder is down (a restart, a reboot): a machine already found using its name must
            // not take the name over in the gap, or the holder coming back at its endpoint would be
            // the one ignored. Only one seen conflicting: a node that moved to a new address is not.
            guard let down = s.recentlyDown[id]?.0, Self.normalize(down.meshEndpoint) != Self.normalize(endpoint),
                  s.nameConflicts[key] != nil else { return false }
            return true
        }
        if s.nameConflicts[key] == nil {
            s.nameConflicts[key] = NameConflict(name: id, endpoint: endpoint, isOwnName: isOwn, sinceNanos: now)
            if s.nameConflicts.count > 64, let oldest = s.nameConflicts.min(by: { $0.value.sinceNanos < $1.value.sinceNanos }) {
                s.nameConflicts[oldest.key] = nil
            }
            logger.error("another machine uses a node name that is taken; it is ignored until renamed", metadata: [
                "name": "\(id)", "endpoint": "\(endpoint)", "taken_by": "\(isOwn ? "this node" : "a live peer")",
                "fix": "give every machine its own node.name (meshd.yaml or MESHD_NODE_NAME)"])
        }
        return true
    }

    public init(configuration: MeshServiceConfiguration, logger: Logger, clock: any WallClock,
                localState: @escaping @Sendable () -> NodeState) throws {
        self.configuration = configuration
        tunnelTable = MeshTunnelTable(sleep: configuration.sleep)
        self.logger = logger
        self.clock = clock
        self.localState = localState
        var sc = try MeshSocketConfiguration(secret: configuration.secret)
        sc.maxMessageSize = configuration.maxPayloadBytes + (1 << 20)
        sc.reconnectIntervalMaxMilliseconds = Self.reconnectBackoffCapMs(heartbeatMs: configuration.heartbeatMs)
        if configuration.trust == .keys {
            // The secret-derived key still serves (encryption, server authentication), but no
            // longer admits clients: each node dials with its own key, admitted only if trusted.
            sc.clientKeyPair = configuration.nodeKeyPair
            sc.allowedKeys = configuration.trustedKeys
            sc.revokedKeys = [sc.meshPublicKey]
        }
        loop = try MeshSocketLoop(configuration: sc, logger: logger)
        relayAdmission = Mutex(CurveKeyAdmission(meshKey: sc.meshPublicKey, allowedKeys: sc.allowedKeys, revokedKeys: sc.revokedKeys))
        var st = State(peers: PeerTable(heartbeatMs: configuration.heartbeatMs, deadAfterMissed: configuration.deadAfterMissed))
        st.staticPeers = configuration.staticPeers.map { Self.normalize($0.description) }
        state = Mutex(st)
    }

    /// Sets who serves forwarded requests.
    public func setHandler(_ h: any MeshRequestHandler) { handler.withLock { $0 = h } }

    /// The endpoint the ROUTER is bound to (`tcp://host:port`), once started.
    public var boundEndpoint: String { state.withLock { $0.boundEndpoint } }

    /// Frames rejected (bad version, malformed, oversized) since start.
    public var rejectedFrames: Int { state.withLock { $0.rejectedFrames } }

    /// Admits a node key from now on (`meshctl trust add`); a node revoked earlier under that key
    /// is dialled again (it may not know us any more, e.g. after a restart).
    public func trust(key: [UInt8]) async throws {
        try await loop.allow(key: key)
        relayAdmission.withLock { $0.allow(key) }
        let redial = state.withLock { s -> [String] in
            var endpoints: [String] = []
            for (id, k) in s.revokedNodes where k == key {
                s.revokedNodes[id] = nil
                if let ep = s.endpoints[id], s.revokedEndpoints.remove(ep) != nil { endpoints.append(ep) }
            }
            return endpoints
        }
        for ep in redial { await dial(ep) }
    }

    /// Shuts a node key out (`meshctl trust revoke`), connections made before included: new
    /// handshakes with it are refused, what arrives over its open connection to us is dropped (by
    /// the socket loop), and the node is out of rotation at once: its pending forwards fail over,
    /// the connection we dialled to it is closed and not redialled.
    public func revoke(key: [UInt8]) async throws {
        relayAdmission.withLock { $0.revoke(key) }
        try await loop.revoke(key: key)
        let (ids, endpoints) = state.withLock { s -> ([String], [String]) in
            let ids = s.nodeKeys.filter { $0.value == key }.map(\.key)
            var endpoints: [String] = []
            for id in ids {
                s.revokedNodes[id] = key
                if let ep = s.endpoints[id] {
                    s.revokedEndpoints.insert(ep)
                    s.dialed.remove(ep)
                    endpoints.append(ep)
                }
            }
            return (ids, endpoints)
        }
        for ep in endpoints { _ = loop.disconnect(peer: MeshPeerID(ep)) }
        for id in ids where state.withLock({ $0.peers.entries[id] != nil }) { peerLost(id, reason: "its key was revoked") }
    }

    /// Connections refused by authentication (ZAP or handshake) since start.
    public var authFailureCount: Int { state.withLock { $0.authFailures } }

    /// Connections to our ROUTER that closed before their handshake finished (probes, clients that
    /// gave up) since start: not authentication failures.
    public var abortedHandshakeCount: Int { state.withLock { $0.abortedHandshakes } }

    /// Sends this node's state to every peer now (call when engines or models change, so peers
    /// need not wait for the next heartbeat).
    public func broadcastState() {
        sendState(to: state.withLock { s in s.dialed.map { MeshLink.outbound(MeshPeerID($0)) } })
    }

    /// Sends this node's engine load to every peer now (a request started or ended): a `load`
    /// message to peers whose state says they read it, the whole state to the others.
    public func broadcastLoad() {
        let links = state.withLock { s -> [(MeshLink, Bool)] in
            let accepting = Set(s.peers.entries.values.filter { $0.state.acceptsLoad == true }.map { Self.normalize($0.state.meshEndpoint) })
            return s.dialed.map { (MeshLink.outbound(MeshPeerID($0)), accepting.contains($0)) }
        }
        guard !links.isEmpty else { return }
        var current = stamped(localState())
        current.instance = instance
        let accepting = links.filter(\.1).map(\.0)
        if !accepting.isEmpty, let header = try? JSONValueCoding.encode(current.load) {
            for link in accepting { send(WireMessage(type: .load, header: header), to: link) }
        }
        sendState(to: links.filter { !$0.1 }.map(\.0), built: current)
        broadcastCacheDelta(to: links.map(\.0))
    }

    /// Notes a forward to `engine` on `node` starting (`started`) or ending.
    public func noteForward(node: String, engine: String, started: Bool) {
        state.withLock { s in
            var d = s.forwardDelta[node, default: [:]][engine, default: (0, 0)]
            if started { d.started += 1 } else { d.completed += 1 }
            s.forwardDelta[node, default: [:]][engine] = d
        }
    }

    /// Live peers, with each engine's in-flight count corrected by our own forwards since the
    /// peer's last state.
    public func peersForRouting() -> [PeerTable.Entry] {
        state.withLock { s in
            s.peers.peers.map { e in
                guard let delta = s.forwardDelta[e.state.id] else { return e }
                var e = e
                for i in e.state.engines.indices {
                    if let d = delta[e.state.engines[i].id] {
                        e.state.engines[i].load.inFlight = max(0, e.state.engines[i].load.inFlight + d.started - d.completed)
                    }
                }
                return e
            }
        }
    }

    /// Hex of the first 8 bytes of SHA-256 of the mesh's server public key: published in the
    /// mDNS TXT record so nodes of other meshes are not dialed. Not a secret, not a credential.
    public var meshFingerprint: String {
        SHA256.hash(loop.publicKey).prefix(8).map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
    }

    /// Dials a peer that mDNS (or another hint) says listens at `endpoint` (`host:port`). It is a
    /// hint only: the node is used once the CURVE handshake succeeds and it sends its state.
    public func dialDiscovered(_ endpoint: String) {
        Task { await self.dial(endpoint) }
    }

    /// The hint for `endpoint` went away (its mDNS service was withdrawn). A live peer there stays
    /// (heartbeats decide); a dialed endpoint with no live node behind it is hung up and forgotten,
    /// so vanished hosts are not redialed forever.
    public func forgetDiscovered(_ endpoint: String) {
        let ep = Self.normalize(endpoint)
        let drop = state.withLock { s -> Bool in
            let live = s.peers.peers.contains { Self.normalize($0.state.meshEndpoint) == ep }
            guard !live, s.dialed.contains(ep), !s.staticPeers.contains(ep) else { return false }
            s.dialed.remove(ep)
            s.redialAttempts[ep] = nil
            return true
        }
        if drop { _ = loop.disconnect(peer: MeshPeerID(ep)) }
    }

    /// Live peers.
    public func peers() -> [PeerTable.Entry] { state.withLock { $0.peers.peers } }

    /// Peers lost recently (for `meshctl nodes`): state and when they went.
    public func recentlyDown() -> [NodeState] { state.withLock { $0.recentlyDown.values.map(\.0).sorted { $0.id < $1.id } } }

    /// Binds, dials static peers, then runs until ``stop()``: consumes socket events and sends
    /// heartbeats. Returns when stopped.
    /// Binds the mesh ROUTER to `listen` (once; ``run()`` does it when not done): call it before
    /// binding other ephemeral ports on the same host, which could otherwise take a configured port.
    public func bind() async throws {
        guard state.withLock({ $0.boundEndpoint.isEmpty }) else { return }
        let l = configuration.listen
        let bound = try await loop.bind("tcp://\(l.host.contains(":") ? "[\(l.host)]" : l.host):\(l.port)")
        state.withLock { $0.boundEndpoint = bound }
    }

    public func run() async throws {
        try await bind()
        let bound = boundEndpoint
        let peers = state.withLock { $0.staticPeers }
        logger.info("mesh listening", metadata: ["endpoint": "\(bound)", "peers": "\(peers)"])
        for p in peers { await dial(p) }
        await withTaskGroup(of: Void.self) { group in
            // On the socket thread: a message is handled (and a reply to it queued) where it arrived,
            // without waking another thread in between.
            group.addTask(executorPreference: loop) { await self.consumeEvents() }
            group.addTask { await self.heartbeatLoop() }
            await group.next()
            group.cancelAll()
        }
    }

    /// Stops the mesh: fails pending forwards, cancels served requests, closes sockets.
    public func stop() {
        let first = stopped.withLock { s -> Bool in
            defer { s = true }
            return !s
        }
        guard first else { return }
        let (pending, served) = state.withLock { s -> ([Pending], [Served]) in
            let p = Array(s.pending.values)
            let sv = Array(s.served.values)
            s.pending.removeAll()
            s.served.removeAll()
            return (p, sv)
        }
        for p in pending {
            p.head?.resume(throwing: MeshForwardError.unreachable("mesh stopped"))
            p.body?.finish(throwing: MeshForwardError.lost("mesh stopped"))
        }
        for s in served {
            s.task?.cancel()
            s.waiter?.resume(throwing: CancellationError())
        }
        for t in tunnelTable.all { t.end(error: .lost("mesh stopped"), notify: .some("mesh stopped")) }
        loop.stop()
    }

    var isStopped: Bool { stopped.withLock { $0 } }

    // MARK: dialing

    func dial(_ endpoint: String) async {
        let ep = Self.normalize(endpoint)
        let skip = state.withLock { s -> Bool in
            if s.dialed.contains(ep) || ep == Self.normalize(s.boundEndpoint) || s.revokedEndpoints.contains(ep) { return true }
            s.dialed.insert(ep)
            return false
        }
        if skip { return }
        do {
            try await loop.connect(peer: MeshPeerID(ep), endpoint: "tcp://\(ep)", serverKey: loop.publicKey)
            sendHello(to: .outbound(MeshPeerID(ep)))
            sendState(to: .outbound(MeshPeerID(ep)))
        } catch {
            _ = state.withLock { $0.dialed.remove(ep) }
            logger.warning("cannot dial peer", metadata: ["endpoint": "\(ep)", "error": "\(error)"])
        }
    }

    func scheduleRedial(_ endpoint: String) {
        let attempt = state.withLock { s -> Int in
            s.dialed.remove(endpoint)
            s.redialAttempts[endpoint, default: 0] += 1
            return s.redialAttempts[endpoint]!
        }
        _ = loop.disconnect(peer: MeshPeerID(endpoint))
        let delay = Duration.milliseconds(min(30_000, 1000 << min(5, attempt - 1)))
        Task {
            await self.configuration.sleep(delay)
            if !self.isStopped { await self.dial(endpoint) }
        }
    }

    /// `host:port` of an endpoint written with or without `tcp://`.
    public static func normalize(_ endpoint: String) -> String {
        endpoint.hasPrefix("tcp://") ? String(endpoint.dropFirst(6)) : endpoint
    }

    /// The endpoint peers should dial us on: the bound one, with a wildcard host replaced by what
    /// the peer sees as our address (filled in by the receiver).
    var advertisedEndpoint: String {
        Self.normalize(boundEndpoint)
    }

    func sendHello(to link: MeshLink) {
        let s = localState()
        send(WireMessage(type: .hello, header: [
            "node": .string(configuration.nodeID), "name": .string(s.name), "proto": .integer(Int(meshProtocolVersion)),
            "endpoint": .string(advertisedEndpoint), "instance": .string(instance),
        ]), to: link)
    }

    func sendState(to link: MeshLink) {
        sendState(to: [link])
    }

    /// Sends this node's state to `links`, built and encoded once (from `built` when the caller has it).
    func sendState(to links: [MeshLink], built: NodeState? = nil) {
        guard !links.isEmpty else { return }
        var s = built ?? stamped(localState())
        s.meshEndpoint = advertisedEndpoint
        s.instance = instance
        s.acceptsLoad = true
        if keyUsage.hooks.withLock({ $0 }) != nil { s.acceptsKeyUsage = true }
        s.knownPeers = state.withLock { st in st.peers.peers.map(\.state.meshEndpoint) }
        guard let header = Self.encodeState(s) else { return }
        for l in links { send(WireMessage(type: .state, header: header), to: l) }
    }

    /// `s` with a `seq` above every one sent before. The state's builder stamps the wall clock,
    /// which can be set back (NTP, an RTC that ran ahead); peers take from this instance only a
    /// newer `seq`, so a state stamped after such a step would be ignored until the clock caught up.
    func stamped(_ s: NodeState) -> NodeState {
        var s = s
        s.seq = state.withLock { st in
            st.lastSeq = max(s.seq, st.lastSeq &+ 1)
            return st.lastSeq
        }
        return s
    }

    static func encodeState(_ s: NodeState) -> JSON? {
        try? JSONValueCoding.encode(s)
    }

    static func decodeState(_ header: JSON) -> NodeState? {
        try? JSONValueCoding.decode(NodeState.self, from: header)
    }

    @discardableResult
    func send(_ m: WireMessage, to link: MeshLink) -> Bool {
        loop.send(MeshWireCodec.encode(m), to: link)
    }

    // MARK: heartbeats and expiry

    func heartbeatLoop() async {
        let interval = Duration.milliseconds(max(50, configuration.heartbeatMs))
        // A tenth of the heartbeat while forwards are waiting on peers (their stalls are checked
        // each tick); a quarter otherwise, when only peer expiry needs the tick: an idle node
        // wakes 4 times a second for it instead of 10.
        let tick = Duration.milliseconds(max(20, configuration.heartbeatMs / 10))
        let idleTick = max(tick, Duration.milliseconds(configuration.heartbeatMs / 4))
        var step = tick
        var sinceBeat = Duration.zero
        let monotonic = ContinuousClock()
        var lastTick = monotonic.now
        while !Task.isCancelled && !isStopped {
            // If this loop itself was held up (a CPU-heavy request on the executor, a suspended
            // process), peers' silence is our own: credit them the stall instead of expiring them.
            let now = monotonic.now
            let late = now - lastTick - step
            lastTick = now
            if late > interval {
                let heard = clock.monotonicNanos()
                state.withLock { s in
                    s.peers.touchAll(nowNanos: heard)
                    // Chunks that came meanwhile wait in the socket: not the serving nodes' silence.
                    for k in s.pending.keys { s.pending[k]!.lastChunkNanos = heard }
                }
                logger.notice("mesh heartbeat loop was stalled; not expiring peers for it", metadata: ["late": "\(late)"])
            }
            if sinceBeat >= interval || sinceBeat == .zero {
                sinceBeat = .zero
                let links = state.withLock { s in s.dialed.map { MeshLink.outbound(MeshPeerID($0)) } }
                sendState(to: links)
                broadcastKeyUsage(keys: nil)
            }
            expirePeers()
            expireStalledForwards()
            step = state.withLock { $0.pending.isEmpty } ? idleTick : tick
            await configuration.sleep(step)
            sinceBeat += step
        }
    }

    /// Peers unheard for `heartbeatMs × deadAfterMissed` by the monotonic clock (a step of the
    /// wall clock, NTP setting the time, must not expire every peer at once).
    func expirePeers() {
        let now = clock.monotonicNanos()
        let dead = state.withLock { s -> [String] in
            let before = s.peers.entries
            let ids = s.peers.expire(nowNanos: now)
            // `expire` already dropped them, so `peerLost` cannot find their state: keep it here so
            // `meshctl nodes` shows them `down`, as it does for a closed connection.
            for id in ids { if let e = before[id] { s.recentlyDown[id] = (e.state, now) } }
            return ids
        }
        for id in dead { peerLost(id, reason: "no heartbeat for \(configuration.heartbeatMs * configuration.deadAfterMissed) ms") }
    }

    /// Drops a peer: out of rotation, its pending forwards fail, requests it sent are cancelled.
    func peerLost(_ id: String, reason: String) {
        let now = clock.monotonicNanos()
        cacheSharing.hooks.withLock { $0 }?.forget(id)
        keyUsage.hooks.withLock { $0 }?.peerLost(id)
        let (pending, served) = state.withLock { s -> ([(String, Pending)], [Served]) in
            if let e = s.peers.entries[id] { s.recentlyDown[id] = (e.state, now) }
            s.peers.remove(id)
            let p = s.pending.filter { $0.value.node == id }
            for k in p.keys { s.pending[k] = nil }
            let sv = s.served.filter { $0.value.node == id }
            for k in sv.keys { s.served[k] = nil }
            // Kept 5 minutes by the monotonic clock (a step of the wall clock neither keeps nor drops them).
            s.recentlyDown = s.recentlyDown.filter { $0.value.1 > now || now - $0.value.1 < 300_000_000_000 }
            return (Array(p), Array(sv.values))
        }
        logger.warning("peer lost", metadata: ["peer": "\(id)", "reason": "\(reason)"])
        closeTunnels(peer: id, reason: reason)
        for (_, p) in pending {
            if let h = p.head {
                h.resume(throwing: MeshForwardError.unreachable("\(id): \(reason)"))
            }
            p.body?.finish(throwing: MeshForwardError.lost("\(id): \(reason)"))
        }
        for s in served {
            s.task?.cancel()
            s.waiter?.resume(throwing: CancellationError())
        }
    }

    // MARK: events

    func consumeEvents() async {
        for await event in loop.events {
            switch event {
            case .message(let m):
                handleMessage(m)
            case .peerDisconnected(let peer):
                // The TCP connection to a peer we dial dropped: if it belongs to a known node, that
                // node is out of rotation now, not at heartbeat expiry.
                let ep = peer.rawValue
                let id = state.withLock { s in s.endpoints.first(where: { $0.value == ep })?.key }
                closeTunnels(peer: id, link: .outbound(peer), reason: "connection closed")
                if let id, state.withLock({ $0.peers.entries[id] != nil }) { peerLost(id, reason: "connection closed") }
            case .peerConnected(let peer):
                sendHello(to: .outbound(peer))
                sendState(to: .outbound(peer))
            case .handshakeAborted:
                state.withLock { $0.abortedHandshakes += 1 }
            case .authFailure(let address, let reason):
                state.withLock { $0.authFailures += 1 }
                logger.warning("mesh peer refused", metadata: ["address": "\(address)", "reason": "\(reason)"])
            case .handshakeFailed(let peer, let reason):
                state.withLock { $0.authFailures += 1 }
                logger.warning("mesh handshake failed", metadata: ["peer": "\(peer)", "reason": "\(reason)"])
                // libzmq does not retry a DEALER refused by authentication: redial with backoff
                // (the peer may trust us later, e.g. after `meshctl trust add`).
                scheduleRedial(peer.rawValue)
            case .malformed(let link, let reason):
                state.withLock { $0.rejectedFrames += 1 }
                logger.warning("malformed mesh message", metadata: ["link": "\(link)", "reason": "\(reason)"])
            case .sendFailed(let link, let reason):
                logger.debug("mesh send failed", metadata: ["link": "\(link)", "reason": "\(reason)"])
            }
        }
    }

    func handleMessage(_ m: MeshMessage) {
        let msg: WireMessage
        do {
            msg = try MeshWireCodec.decode(m.frames, maxPayloadBytes: configuration.maxPayloadBytes)
        } catch {
            state.withLock { $0.rejectedFrames += 1 }
            logger.warning("rejected mesh frame", metadata: ["link": "\(m.link)", "reason": "\(error)"])
            return
        }
        let now = clock.nowNanos()
        // When it was heard, for liveness: monotonic.
        let heard = clock.monotonicNanos()
        if case .outbound(let peer) = m.link, state.withLock({ $0.revokedEndpoints.contains(peer.rawValue) }) {
            return  // a revoked node answering over a connection we made before revoking it
        }
        switch msg.type {
        case .hello:
            guard let node = msg.header["node"]?.stringValue else { return }
            let helloEndpoint = msg.header["endpoint"]?.stringValue.map { Self.fillHost($0, peerAddress: m.peerAddress) }
            let conflict = state.withLock { s in
                isNameConflict(&s, id: node, endpoint: helloEndpoint ?? "?", instance: msg.header["instance"]?.stringValue, now: now)
            }
            if conflict, let helloEndpoint {
                // Dial it back anyway: our state (and the peers it lists) lets it find the holder of
                // the name, and see the conflict itself (its doctor then says so). It is never routed to.
                Task(executorPreference: loop) { await self.dial(helloEndpoint) }
            }
            guard !conflict, node != configuration.nodeID else { return }
            if case .inbound(let rid) = m.link {
                state.withLock { s in
                    s.inbound[rid] = node
                    if let key = m.peerKey { s.nodeKeys[node] = key }
                }
            }
            guard state.withLock({ $0.revokedNodes[node] == nil }) else { return }
            if let helloEndpoint {
                state.withLock { $0.endpoints[node] = helloEndpoint }
                Task { await self.dial(helloEndpoint) }
            }
        case .state:
            guard var s = Self.decodeState(msg.header) else {
                state.withLock { $0.rejectedFrames += 1 }
                logger.warning("rejected mesh frame", metadata: ["link": "\(m.link)", "reason": "state that does not decode"])
                return
            }
            s.meshEndpoint = Self.fillHost(s.meshEndpoint, peerAddress: m.peerAddress)
            let conflict = state.withLock { st in isNameConflict(&st, id: s.id, endpoint: s.meshEndpoint, instance: s.instance, now: now) }
            guard !conflict, s.id != configuration.nodeID else { return }
            let known = s.knownPeers
            let isNew = state.withLock { st -> Bool? in
                if case .inbound(let rid) = m.link {
                    st.inbound[rid] = s.id
                    if let key = m.peerKey { st.nodeKeys[s.id] = key }
                }
                // A revoked node's state is ignored whichever way it came (the loop drops its own
                // connection's messages; this also covers one that moved to a new endpoint).
                guard st.revokedNodes[s.id] == nil else { return nil }
                st.endpoints[s.id] = s.meshEndpoint
                let new = st.peers.entries[s.id] == nil
                st.peers.update(s, nowNanos: heard)
                st.recentlyDown[s.id] = nil
                st.redialAttempts[s.meshEndpoint] = nil
                st.forwardDelta[s.id] = nil
                return new
            }
            guard let isNew else { return }
            if isNew {
                logger.info("peer joined", metadata: ["peer": "\(s.id)", "endpoint": "\(s.meshEndpoint)", "models": "\(s.modelNames)"])
                // What its engines hold already: its deltas only tell what changes from now on.
                askCacheSnapshot(over: m.link)
            }
            let ep = s.meshEndpoint
            Task {
                await self.dial(ep)
                for p in known { await self.dial(p) }
            }
        case .load:
            guard let l = try? JSONValueCoding.decode(NodeLoad.self, from: msg.header) else {
                state.withLock { $0.rejectedFrames += 1 }
                logger.warning("rejected mesh frame", metadata: ["link": "\(m.link)", "reason": "load that does not decode"])
                return
            }
            state.withLock { st in
                // Only for a peer we hold a state of, over its own key when we know it.
                guard st.revokedNodes[l.node] == nil, l.node != configuration.nodeID else { return }
                if let key = m.peerKey, let bound = st.nodeKeys[l.node], bound != key { return }
                // Fresh counts from the peer itself: our own forwards since its last report are in them.
                if st.peers.apply(l, nowNanos: heard) { st.forwardDelta[l.node] = nil }
            }
        case .request:
            startServing(msg, link: m.link)
        case .cancel:
            if let id = msg.requestID { cancelServed(id) }
        case .credit:
            if let id = msg.requestID, let n = msg.header["bytes"]?.intValue { creditReceived(id, bytes: n) }
        case .responseHead, .chunk, .end, .error, .response:
            forwardReply(msg)
        case .tunnelOpen, .tunnelOpened, .tunnelData, .tunnelCredit, .tunnelClose, .tunnelPing, .tunnelPong:
            handleTunnelMessage(msg, m)
        case .cacheDelta, .cacheSnapshotRequest:
            handleCacheMessage(msg, m)
        case .keyUsage:
            handleKeyUsageMessage(msg, m)
        }
    }

    static func fillHost(_ endpoint: String, peerAddress: String?) -> String {
        guard let hp = HostPort(parsing: endpoint) else { return endpoint }
        if hp.host == "0.0.0.0" || hp.host == "::" || hp.host == "*" {
            if let a = peerAddress, !a.isEmpty { return HostPort(host: a, port: hp.port).description }
        }
        return endpoint
    }

    // MARK: control

    /// Asks `node` to drain or undrain itself (sent over the authenticated mesh).
    public func sendControl(to node: String, action: String) -> Bool {
        guard let ep = state.withLock({ $0.endpoints[node] }) else { return false }
        return send(WireMessage(type: .request, header: [
            "req": .string("ctl-\(configuration.nodeID)-\(clock.nowNanos())"), "path": .string("/_mesh/\(action)"),
            "from": .string(configuration.nodeID), "headers": [],
        ]), to: .outbound(MeshPeerID(ep)))
    }

    /// Marks a peer drained from this node's point of view (no new work routed there).
    public func setDrained(_ node: String, _ drained: Bool) {
        state.withLock { $0.peers.setDrained(node, drained) }
    }
}
