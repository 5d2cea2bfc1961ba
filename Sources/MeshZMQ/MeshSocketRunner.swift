import CZeroMQ
import Logging

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The loop thread's state: the context and every socket. Only ever used on that thread.
final class MeshSocketRunner {
    /// One outbound connection: a DEALER, its monitor, and the messages waiting for it to become writable.
    private final class Peer {
        let id: MeshPeerID
        let endpoint: String
        let serverKey: [UInt8]
        let dealer: UnsafeMutableRawPointer
        let monitor: UnsafeMutableRawPointer
        var outbox: [[[UInt8]]] = []
        var connected = false
        var lastFailure: String?

        init(id: MeshPeerID, endpoint: String, serverKey: [UInt8], dealer: UnsafeMutableRawPointer, monitor: UnsafeMutableRawPointer) {
            self.id = id
            self.endpoint = endpoint
            self.serverKey = serverKey
            self.dealer = dealer
            self.monitor = monitor
        }
    }

    private enum Slot {
        case zap, router, routerMonitor
        case dealer(Peer)
        case dealerMonitor(Peer)
    }

    /// ZAP endpoint fixed by RFC 27; libzmq sends every handshake's ZAP request there (per context).
    static let zapEndpoint = "inproc://zeromq.zap.01"
    /// Messages read from one socket per wake-up before the others get a turn.
    private static let receiveBatch = 256
    /// Rounds of taking commands per wake-up before the sockets get a turn again.
    private static let commandRounds = 64
    private static let dealerMonitorEvents = ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_DISCONNECTED
        | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH
    private static let routerMonitorEvents = ZMQ_EVENT_HANDSHAKE_SUCCEEDED
        | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH

    private let shared: LoopShared
    /// The wake-up pipe's read end (owned by `shared`).
    private let wakeReadFD: Int32
    private let configuration: MeshSocketConfiguration
    private let logger: Logger
    private let continuation: AsyncStream<MeshSocketEvent>.Continuation
    private let startup: StartupSignal

    private var context: UnsafeMutableRawPointer?
    private var zap: UnsafeMutableRawPointer?
    private var router: UnsafeMutableRawPointer?
    private var routerMonitor: UnsafeMutableRawPointer?
    private var peers: [MeshPeerID: Peer] = [:]
    private struct Watched {
        let fd: Int32
        let slot: Slot
    }
    /// Every open socket the loop reads from, by handle.
    private var watchedSockets: [UnsafeMutableRawPointer: Watched] = [:]
    /// Sockets whose `ZMQ_EVENTS` must be read before the thread may sleep.
    private var dirty: Set<UnsafeMutableRawPointer> = []
    private var policy: ZAPPolicy
    private var monitorSerial = 0
    private var stopping = false
    private var droppedEvents = 0
    /// Inbound routing ids whose messages were dropped because their key was revoked (reported once).
    private var revokedLinks: Set<[UInt8]> = []

    init(shared: LoopShared, configuration: MeshSocketConfiguration, logger: Logger,
         continuation: AsyncStream<MeshSocketEvent>.Continuation, startup: StartupSignal) {
        self.shared = shared
        self.wakeReadFD = shared.wakeReadFD
        self.configuration = configuration
        self.logger = logger
        self.continuation = continuation
        self.startup = startup
        self.policy = ZAPPolicy(
            domain: configuration.zapDomain, meshKey: configuration.meshPublicKey,
            allowedKeys: configuration.allowedKeys, revokedKeys: configuration.revokedKeys)
    }

    func run() {
        shared.setLoopThread()
        do throws(MeshZMQError) {
            try setUp()
        } catch {
            logger.error("ZeroMQ loop failed to start", metadata: ["error": "\(error)"])
            tearDown()
            startup.finish(error)
            return
        }
        startup.finish(nil)
        logger.debug("ZeroMQ loop started", metadata: ["publicKey": "\(configuration.keyPair.publicKeyZ85)"])
        runLoop()
        tearDown()
        logger.debug("ZeroMQ loop stopped")
    }

    // MARK: set-up and tear-down

    /// Context, then the ZAP handler, before any other socket exists.
    private func setUp() throws(MeshZMQError) {
        guard let context = zmq_ctx_new() else { throw .lastZMQ("zmq_ctx_new") }
        self.context = context
        guard let zap = zmq_socket(context, ZMQ_REP) else { throw .lastZMQ("zmq_socket(ZAP REP)") }
        self.zap = zap
        try ZMQSocketOps.setInt(zap, ZMQ_LINGER, 0, "ZMQ_LINGER")
        guard zmq_bind(zap, Self.zapEndpoint) == 0 else { throw .lastZMQ("zmq_bind(\(Self.zapEndpoint))") }
        watch(zap, as: .zap)
    }

    /// Closes every socket with linger 0, terminates the context, fails leftover commands, closes the pipe and
    /// finishes the event stream. Never waits for a peer.
    private func tearDown() {
        watchedSockets.removeAll()
        dirty.removeAll()
        for peer in peers.values { closePeer(peer, lingerMilliseconds: 0) }
        peers.removeAll()
        if let router {
            _ = zmq_socket_monitor(router, nil, 0)
            if let routerMonitor { ZMQSocketOps.closeNow(routerMonitor) }
            ZMQSocketOps.closeNow(router)
        }
        router = nil
        routerMonitor = nil
        if let zap { ZMQSocketOps.closeNow(zap) }
        zap = nil
        if let context {
            while zmq_ctx_term(context) != 0 {
                guard zmq_errno() == EINTR else {
                    logger.error("zmq_ctx_term failed", metadata: ["error": "\(zmqErrorMessage(zmq_errno()))"])
                    break
                }
            }
        }
        context = nil
        shared.stopAccepting()
        for command in shared.takeCommands() { command.fail() }
        continuation.finish()
    }

    // MARK: the poll loop

    /// Waits with `poll(2)` on the wake-up pipe and every socket's `ZMQ_FD`, and asks `ZMQ_EVENTS` only of
    /// the sockets that may have work: their descriptor fired, or we sent or received on them (libzmq's
    /// descriptor is edge-triggered and does not fire for what our own send or receive changed). `zmq_poll`
    /// asks every socket on every wake-up, and in libzmq 4.3 each ask is a `poll` and a `getpid` syscall:
    /// about 12 per wake-up with one peer, two more per peer. Sockets with work left keep the next poll
    /// from sleeping; with none, it waits indefinitely (an idle loop uses no CPU).
    private func runLoop() {
        var pollfds: [pollfd] = []
        var owners: [UnsafeMutableRawPointer?] = []
        while !stopping {
            serviceDirtySockets()
            // Commands and jobs; what they submit from this thread (sends, more jobs) comes without a wake-up,
            // so take again until none is left (bounded, so sockets get their turn; leftovers re-arm the pipe).
            for round in 0..<Self.commandRounds {
                let commands = shared.takeCommands()
                if commands.isEmpty { break }
                for command in commands {
                    if stopping { command.fail() } else { handle(command) }
                }
                if round == Self.commandRounds - 1 { shared.rearmIfPending() }
            }
            if stopping { break }

            pollfds.removeAll(keepingCapacity: true)
            owners.removeAll(keepingCapacity: true)
            pollfds.append(pollfd(fd: wakeReadFD, events: Int16(POLLIN), revents: 0))
            owners.append(nil)
            for (socket, watched) in watchedSockets {
                pollfds.append(pollfd(fd: watched.fd, events: Int16(POLLIN), revents: 0))
                owners.append(socket)
            }
            let rc = poll(&pollfds, nfds_t(pollfds.count), dirty.isEmpty ? -1 : 0)
            if rc < 0 {
                if errno == EINTR { continue }
                logger.critical("poll failed; stopping the ZeroMQ loop", metadata: ["error": "\(String(cString: strerror(errno)))"])
                break
            }
            for index in pollfds.indices where pollfds[index].revents != 0 {
                if let socket = owners[index] { dirty.insert(socket) } else { drainWakePipe() }
            }
        }
    }

    /// Asks each socket that may have work for its events and does that work; a socket that had work is
    /// asked again next time round (until it has none).
    private func serviceDirtySockets() {
        guard !dirty.isEmpty else { return }
        let batch = dirty
        dirty.removeAll(keepingCapacity: true)
        for socket in batch {
            // A command may have closed it since it was marked.
            guard let watched = watchedSockets[socket] else { continue }
            let events = ZMQSocketOps.events(socket)
            var worked = false
            if events & ZMQ_POLLIN != 0 {
                worked = true
                switch watched.slot {
                case .zap: handleZAPRequests()
                case .router: receiveFromRouter()
                case .routerMonitor: readRouterMonitor()
                case let .dealer(peer): receive(from: peer)
                case let .dealerMonitor(peer): readMonitor(of: peer)
                }
            }
            if events & ZMQ_POLLOUT != 0, case let .dealer(peer) = watched.slot, !peer.outbox.isEmpty, watchedSockets[socket] != nil {
                flush(peer)
                worked = true
            }
            if worked, watchedSockets[socket] != nil { dirty.insert(socket) }
        }
    }

    /// Starts watching a new socket (its `ZMQ_FD`); it is asked for events on the next turn.
    private func watch(_ socket: UnsafeMutableRawPointer, as slot: Slot) {
        guard let fd = ZMQSocketOps.fileDescriptor(socket) else {
            logger.error("a ZeroMQ socket has no file descriptor to poll; it will be served only when others wake the loop")
            return
        }
        watchedSockets[socket] = Watched(fd: fd, slot: slot)
        dirty.insert(socket)
    }

    /// Stops watching a socket that is about to be closed.
    private func unwatch(_ socket: UnsafeMutableRawPointer) {
        watchedSockets[socket] = nil
        dirty.remove(socket)
    }

    /// Empties the wake-up pipe: one read unless it came back full (no read to EAGAIN each wake-up).
    private func drainWakePipe() {
        var buffer = (UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0))
        let size = MemoryLayout.size(ofValue: buffer)
        while true {
            let n = withUnsafeMutableBytes(of: &buffer) { read(wakeReadFD, $0.baseAddress, size) }
            if n == size { continue }
            if n < 0 && errno == EINTR { continue }
            return
        }
    }

    // MARK: commands

    private func handle(_ command: LoopShared.Command) {
        switch command {
        case let .bind(endpoint, reply):
            reply.resume(returning: Result { () throws(MeshZMQError) in try bind(endpoint) })
        case let .connect(id, endpoint, serverKey, reply):
            reply.resume(returning: Result { () throws(MeshZMQError) in try connect(id, endpoint: endpoint, serverKey: serverKey) })
        case let .disconnect(id):
            if let peer = peers.removeValue(forKey: id) {
                if !peer.outbox.isEmpty {
                    logger.debug("dropping queued messages of a disconnected peer", metadata: ["peer": "\(id)", "count": "\(peer.outbox.count)"])
                }
                closePeer(peer, lingerMilliseconds: configuration.lingerMilliseconds)
            }
        case let .send(link, frames):
            send(frames, to: link)
        case let .policy(.allow, key, reply):
            policy.allow(key)
            revokedLinks.removeAll()
            logger.info("client key allowed", metadata: ["key": "\(Z85.encode(key) ?? "?")"])
            reply.resume(returning: .success(()))
        case let .policy(.revoke, key, reply):
            policy.revoke(key)
            logger.info("client key revoked", metadata: ["key": "\(Z85.encode(key) ?? "?")"])
            reply.resume(returning: .success(()))
        case let .job(job, executor):
            job.runSynchronously(on: executor)
        case .stop:
            stopping = true
        }
    }

    private func bind(_ endpoint: String) throws(MeshZMQError) -> String {
        let router = try ensureRouter()
        guard zmq_bind(router, endpoint) == 0 else { throw .lastZMQ("zmq_bind(\(endpoint))") }
        let resolved = ZMQSocketOps.lastEndpoint(router) ?? endpoint
        logger.info("mesh ROUTER bound", metadata: ["endpoint": "\(resolved)"])
        return resolved
    }

    /// The ROUTER: CURVE server, ZAP domain enforced (refuse if the handler were missing), mandatory routing.
    private func ensureRouter() throws(MeshZMQError) -> UnsafeMutableRawPointer {
        if let router { return router }
        guard let context, let socket = zmq_socket(context, ZMQ_ROUTER) else { throw .lastZMQ("zmq_socket(ROUTER)") }
        do throws(MeshZMQError) {
            try applyCommonOptions(socket)
            try ZMQSocketOps.setInt(socket, ZMQ_ROUTER_MANDATORY, 1, "ZMQ_ROUTER_MANDATORY")
            try ZMQSocketOps.setString(socket, ZMQ_ZAP_DOMAIN, configuration.zapDomain, "ZMQ_ZAP_DOMAIN")
            try ZMQSocketOps.setInt(socket, ZMQ_ZAP_ENFORCE_DOMAIN, 1, "ZMQ_ZAP_ENFORCE_DOMAIN")
            try ZMQSocketOps.setInt(socket, ZMQ_CURVE_SERVER, 1, "ZMQ_CURVE_SERVER")
            try ZMQSocketOps.setBytes(socket, ZMQ_CURVE_SECRETKEY, configuration.keyPair.secretKey, "ZMQ_CURVE_SECRETKEY")
            routerMonitor = try attachMonitor(to: socket, events: Self.routerMonitorEvents)
        } catch {
            ZMQSocketOps.closeNow(socket)
            throw error
        }
        router = socket
        watch(socket, as: .router)
        if let routerMonitor { watch(routerMonitor, as: .routerMonitor) }
        return socket
    }

    private func connect(_ id: MeshPeerID, endpoint: String, serverKey: [UInt8]) throws(MeshZMQError) {
        guard peers[id] == nil else { throw .peerExists(id) }
        guard let context, let dealer = zmq_socket(context, ZMQ_DEALER) else { throw .lastZMQ("zmq_socket(DEALER)") }
        var monitor: UnsafeMutableRawPointer?
        do throws(MeshZMQError) {
            try applyCommonOptions(dealer)
            try ZMQSocketOps.setInt(dealer, ZMQ_IMMEDIATE, 1, "ZMQ_IMMEDIATE")
            try ZMQSocketOps.setInt(dealer, ZMQ_RECONNECT_IVL, configuration.reconnectIntervalMilliseconds, "ZMQ_RECONNECT_IVL")
            try ZMQSocketOps.setInt(dealer, ZMQ_RECONNECT_IVL_MAX, configuration.reconnectIntervalMaxMilliseconds, "ZMQ_RECONNECT_IVL_MAX")
            try ZMQSocketOps.setBytes(dealer, ZMQ_CURVE_SERVERKEY, serverKey, "ZMQ_CURVE_SERVERKEY")
            let client = configuration.clientKeyPair ?? configuration.keyPair
            try ZMQSocketOps.setBytes(dealer, ZMQ_CURVE_PUBLICKEY, client.publicKey, "ZMQ_CURVE_PUBLICKEY")
            try ZMQSocketOps.setBytes(dealer, ZMQ_CURVE_SECRETKEY, client.secretKey, "ZMQ_CURVE_SECRETKEY")
            monitor = try attachMonitor(to: dealer, events: Self.dealerMonitorEvents)
            guard zmq_connect(dealer, endpoint) == 0 else { throw MeshZMQError.lastZMQ("zmq_connect(\(endpoint))") }
        } catch {
            _ = zmq_socket_monitor(dealer, nil, 0)
            if let monitor { ZMQSocketOps.closeNow(monitor) }
            ZMQSocketOps.closeNow(dealer)
            throw error
        }
        let peer = Peer(id: id, endpoint: endpoint, serverKey: serverKey, dealer: dealer, monitor: monitor!)
        peers[id] = peer
        watch(dealer, as: .dealer(peer))
        watch(peer.monitor, as: .dealerMonitor(peer))
        logger.debug("connecting to peer", metadata: ["peer": "\(id)", "endpoint": "\(endpoint)"])
    }

    private func applyCommonOptions(_ socket: UnsafeMutableRawPointer) throws(MeshZMQError) {
        try ZMQSocketOps.setInt(socket, ZMQ_LINGER, configuration.lingerMilliseconds, "ZMQ_LINGER")
        try ZMQSocketOps.setInt64(socket, ZMQ_MAXMSGSIZE, Int64(configuration.maxMessageSize), "ZMQ_MAXMSGSIZE")
        try ZMQSocketOps.setInt(socket, ZMQ_SNDHWM, configuration.sendHighWaterMark, "ZMQ_SNDHWM")
        try ZMQSocketOps.setInt(socket, ZMQ_RCVHWM, configuration.receiveHighWaterMark, "ZMQ_RCVHWM")
        if configuration.heartbeatIntervalMilliseconds > 0 {
            try ZMQSocketOps.setInt(socket, ZMQ_HEARTBEAT_IVL, configuration.heartbeatIntervalMilliseconds, "ZMQ_HEARTBEAT_IVL")
            try ZMQSocketOps.setInt(socket, ZMQ_HEARTBEAT_TIMEOUT, configuration.heartbeatTimeoutMilliseconds, "ZMQ_HEARTBEAT_TIMEOUT")
        }
    }

    /// Starts libzmq's monitor on `socket` and returns the PAIR that receives its events.
    private func attachMonitor(to socket: UnsafeMutableRawPointer, events: Int32) throws(MeshZMQError) -> UnsafeMutableRawPointer {
        monitorSerial += 1
        let endpoint = "inproc://meshd-monitor-\(monitorSerial)"
        guard zmq_socket_monitor(socket, endpoint, events) == 0 else { throw .lastZMQ("zmq_socket_monitor") }
        guard let context, let pair = zmq_socket(context, ZMQ_PAIR) else {
            _ = zmq_socket_monitor(socket, nil, 0)
            throw .lastZMQ("zmq_socket(monitor PAIR)")
        }
        do throws(MeshZMQError) {
            try ZMQSocketOps.setInt(pair, ZMQ_LINGER, 0, "ZMQ_LINGER")
            guard zmq_connect(pair, endpoint) == 0 else { throw MeshZMQError.lastZMQ("zmq_connect(\(endpoint))") }
        } catch {
            _ = zmq_socket_monitor(socket, nil, 0)
            ZMQSocketOps.closeNow(pair)
            throw error
        }
        return pair
    }

    private func closePeer(_ peer: Peer, lingerMilliseconds: Int32) {
        unwatch(peer.dealer)
        unwatch(peer.monitor)
        _ = zmq_socket_monitor(peer.dealer, nil, 0)
        ZMQSocketOps.closeNow(peer.monitor)
        var linger = lingerMilliseconds
        _ = zmq_setsockopt(peer.dealer, ZMQ_LINGER, &linger, MemoryLayout<Int32>.size)
        _ = zmq_close(peer.dealer)
    }

    // MARK: sending

    private func send(_ frames: [[UInt8]], to link: MeshLink) {
        switch link {
        case let .inbound(routingID):
            guard let router else {
                emit(.sendFailed(link: link, reason: "no ROUTER is bound"))
                return
            }
            dirty.insert(router)  // a send may change its state without its descriptor firing
            if let code = ZMQSocketOps.sendMultipart(router, [routingID] + frames) {
                let reason = code == EHOSTUNREACH ? "the client is no longer connected"
                    : code == EAGAIN ? "the client's send queue is full" : zmqErrorMessage(code)
                emit(.sendFailed(link: link, reason: reason))
            }
        case let .outbound(id):
            guard let peer = peers[id] else {
                emit(.sendFailed(link: link, reason: "unknown peer"))
                return
            }
            guard peer.outbox.count < configuration.maxQueuedMessagesPerPeer else {
                emit(.sendFailed(link: link, reason: "the peer's send queue is full"))
                return
            }
            peer.outbox.append(frames)
            flush(peer)
        }
    }

    /// Hands queued messages to the DEALER until it would block (not connected, or at its high-water mark).
    private func flush(_ peer: Peer) {
        if watchedSockets[peer.dealer] != nil { dirty.insert(peer.dealer) }
        var handled = 0
        while handled < peer.outbox.count {
            if let code = ZMQSocketOps.sendMultipart(peer.dealer, peer.outbox[handled]) {
                if code == EAGAIN { break }
                emit(.sendFailed(link: .outbound(peer.id), reason: zmqErrorMessage(code)))
            }
            handled += 1
        }
        if handled > 0 { peer.outbox.removeFirst(handled) }
    }

    // MARK: receiving

    private func receiveFromRouter() {
        guard let router else { return }
        for _ in 0..<Self.receiveBatch {
            // Frame 0 is the routing id ROUTER prepends; allow it on top of the payload limits.
            guard let received = ZMQSocketOps.receiveMultipart(
                router, maxFrames: configuration.maxFramesPerMessage + 1,
                maxBytes: configuration.maxMessageSize + 256, metadataFrame: 1)
            else { return }
            guard let routingID = received.frames.first else { continue }
            let link = MeshLink.inbound(routingID: routingID)
            if let violation = received.violation {
                logger.warning("dropped a malformed inbound message", metadata: ["reason": "\(violation)"])
                emit(.malformed(link: link, reason: violation))
                continue
            }
            guard received.frames.count > 1 else {
                emit(.malformed(link: link, reason: "message has no payload frames"))
                continue
            }
            let key = received.userID.flatMap(Z85.decode)
            if let key, policy.revokedKeys.contains(key) {
                // Revocation reaches connections made before it: libzmq cannot close one ROUTER peer,
                // but nothing that arrives over it is used any more (reported once per connection).
                if revokedLinks.insert(routingID).inserted {
                    if revokedLinks.count > 4096 { revokedLinks = [routingID] }
                    let reason = "client key is revoked: its established connection is ignored"
                    logger.warning("dropping messages from a revoked key", metadata: [
                        "address": "\(received.peerAddress ?? "unknown")", "key": "\(received.userID ?? "-")"])
                    emit(.authFailure(address: received.peerAddress ?? "unknown", reason: reason))
                }
                continue
            }
            emit(.message(MeshMessage(
                link: link, frames: Array(received.frames.dropFirst()),
                peerKey: key, peerAddress: received.peerAddress)))
        }
    }

    private func receive(from peer: Peer) {
        for _ in 0..<Self.receiveBatch {
            guard let received = ZMQSocketOps.receiveMultipart(
                peer.dealer, maxFrames: configuration.maxFramesPerMessage,
                maxBytes: configuration.maxMessageSize, metadataFrame: 0)
            else { return }
            let link = MeshLink.outbound(peer.id)
            if let violation = received.violation {
                logger.warning("dropped a malformed message from a peer", metadata: ["peer": "\(peer.id)", "reason": "\(violation)"])
                emit(.malformed(link: link, reason: violation))
                continue
            }
            emit(.message(MeshMessage(link: link, frames: received.frames, peerKey: peer.serverKey, peerAddress: received.peerAddress)))
        }
    }

    // MARK: ZAP

    /// Answers every pending ZAP request (REP: one reply per request, in order).
    private func handleZAPRequests() {
        guard let zap else { return }
        for _ in 0..<Self.receiveBatch {
            guard let request = ZMQSocketOps.receiveMultipart(zap, maxFrames: 16, maxBytes: 64 * 1024, metadataFrame: -1) else { return }
            let decision: ZAPDecision
            if let violation = request.violation {
                decision = ZAPDecision(requestID: [], accepted: false, address: "unknown", clientKey: nil,
                                       reason: "malformed ZAP request: \(violation)")
            } else {
                decision = policy.evaluate(request.frames)
            }
            dirty.insert(zap)
            if let code = ZMQSocketOps.sendMultipart(zap, decision.replyFrames) {
                logger.error("could not answer a ZAP request", metadata: ["error": "\(zmqErrorMessage(code))"])
            }
            let key = decision.clientKey.flatMap(Z85.encode) ?? "-"
            if decision.accepted {
                logger.debug("ZAP accepted a client", metadata: ["address": "\(decision.address)", "key": "\(key)"])
            } else {
                let reason = decision.reason ?? "refused"
                logger.warning("ZAP refused a client", metadata: ["address": "\(decision.address)", "reason": "\(reason)", "key": "\(key)"])
                emit(.authFailure(address: decision.address, reason: reason))
            }
        }
    }

    // MARK: monitors

    private struct MonitorEvent {
        var event: Int32
        var value: UInt32
        var endpoint: String
    }

    /// Reads one monitor event: frame 1 = 16-bit event id + 32-bit value (native byte order), frame 2 = endpoint.
    private func readMonitorEvent(_ pair: UnsafeMutableRawPointer) -> MonitorEvent? {
        while let received = ZMQSocketOps.receiveMultipart(pair, maxFrames: 4, maxBytes: 4096, metadataFrame: -1) {
            guard received.violation == nil, received.frames.count >= 2, received.frames[0].count >= 6 else { continue }
            let head = received.frames[0]
            let event = head.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 0, as: UInt16.self) }
            let value = head.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 2, as: UInt32.self) }
            return MonitorEvent(event: Int32(event), value: value, endpoint: String(decoding: received.frames[1], as: UTF8.self))
        }
        return nil
    }

    private func readRouterMonitor() {
        guard let routerMonitor else { return }
        for _ in 0..<Self.receiveBatch {
            guard let event = readMonitorEvent(routerMonitor) else { return }
            switch event.event {
            case ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL:
                let reason = "CURVE handshake failed: \(Self.describeProtocolError(event.value))"
                logger.warning("a client failed the handshake", metadata: ["endpoint": "\(event.endpoint)", "reason": "\(reason)"])
                emit(.authFailure(address: event.endpoint, reason: reason))
            case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH:
                break  // the ZAP handler already reported it, with the client's address
            case ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                // The connection broke before the handshake finished: a client that gave up (e.g. a NULL client
                // that noticed the mechanism mismatch first), a port scan, or a network failure.
                let reason = "handshake aborted: \(String(cString: strerror(Int32(bitPattern: event.value))))"
                logger.info("a client went away during the handshake", metadata: ["endpoint": "\(event.endpoint)", "reason": "\(reason)"])
                emit(.handshakeAborted(address: event.endpoint, reason: reason))
            case ZMQ_EVENT_HANDSHAKE_SUCCEEDED:
                logger.debug("a client completed the handshake", metadata: ["endpoint": "\(event.endpoint)"])
            default:
                break
            }
        }
    }

    private func readMonitor(of peer: Peer) {
        for _ in 0..<Self.receiveBatch {
            guard let event = readMonitorEvent(peer.monitor) else { return }
            switch event.event {
            case ZMQ_EVENT_HANDSHAKE_SUCCEEDED:
                peer.lastFailure = nil
                if !peer.connected {
                    peer.connected = true
                    logger.debug("peer connected", metadata: ["peer": "\(peer.id)"])
                    emit(.peerConnected(peer.id))
                }
            case ZMQ_EVENT_DISCONNECTED:
                if peer.connected {
                    peer.connected = false
                    logger.info("peer disconnected", metadata: ["peer": "\(peer.id)"])
                    emit(.peerDisconnected(peer.id))
                }
            case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH:
                handshakeFailed(peer, "refused by the server's ZAP handler (status \(event.value)); libzmq will not retry this connection")
            case ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL:
                handshakeFailed(peer, "CURVE handshake failed: \(Self.describeProtocolError(event.value))")
            case ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                handshakeFailed(peer, "connection closed during the CURVE handshake (wrong server key or another mesh secret?)")
            default:
                break
            }
        }
    }

    private func handshakeFailed(_ peer: Peer, _ reason: String) {
        guard peer.lastFailure != reason else { return }
        peer.lastFailure = reason
        logger.warning("handshake with peer failed", metadata: ["peer": "\(peer.id)", "reason": "\(reason)"])
        emit(.handshakeFailed(peer: peer.id, reason: reason))
    }

    static func describeProtocolError(_ value: UInt32) -> String {
        switch Int32(bitPattern: value) {
        case ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC: "cryptographic error (wrong server key or another mesh secret?)"
        case ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH: "security mechanism mismatch (peer is not using CURVE)"
        case ZMQ_PROTOCOL_ERROR_ZMTP_KEY_EXCHANGE: "key exchange failed"
        case ZMQ_PROTOCOL_ERROR_ZAP_UNSPECIFIED, ZMQ_PROTOCOL_ERROR_ZAP_MALFORMED_REPLY, ZMQ_PROTOCOL_ERROR_ZAP_BAD_REQUEST_ID,
             ZMQ_PROTOCOL_ERROR_ZAP_BAD_VERSION, ZMQ_PROTOCOL_ERROR_ZAP_INVALID_STATUS_CODE, ZMQ_PROTOCOL_ERROR_ZAP_INVALID_METADATA:
            "ZAP handler error 0x\(String(value, radix: 16))"
        default: "ZMTP protocol error 0x\(String(value, radix: 16))"
        }
    }

    // MARK: events

    private func emit(_ event: MeshSocketEvent) {
        if case .dropped = continuation.yield(event) {
            droppedEvents += 1
            if droppedEvents == 1 || droppedEvents % 1000 == 0 {
                logger.warning("event buffer full; dropping ZeroMQ events", metadata: ["dropped": "\(droppedEvents)"])
            }
        }
    }
}
