import Foundation
import Logging
import MeshCore
import MeshZMQ
import Synchronization

// Byte tunnels over the mesh (issue 13): a split's head relays llama.cpp RPC connections to its
// workers' rpc-servers through the mesh's CURVE-encrypted, ZAP-authenticated channel instead of
// exposing their unauthenticated ports. Wire messages and rules: "Tunnels" in docs/PROTOCOL.md.

/// Decides whether a peer may open a tunnel to this node (the split worker: "rpc/SPLITID").
public protocol MeshTunnelAcceptor: Sendable {
    /// A live, authenticated peer `node` opens a tunnel to `target` (an opaque string such as
    /// "rpc/SPLITID"). Return nil to accept (then read `tunnel.incoming` and send), or a message
    /// to refuse: the opener's `openTunnel` throws ``MeshTunnelError/refused(_:)`` with it.
    /// Pings are answered by the mesh while this runs, so it may take its time (connect a socket).
    func acceptTunnel(_ tunnel: MeshTunnel, from node: String, target: String) async -> String?
}

/// Why a tunnel could not open or ended abnormally.
public enum MeshTunnelError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The far end refused the open, with its message.
    case refused(String)
    /// The node is not a live peer, or the open could not be sent.
    case unreachable(String)
    /// Nothing came from `peer` for `milliseconds` (opener: no pong; acceptor: no ping).
    case silent(peer: String, milliseconds: Int)
    /// The far end closed the tunnel with this reason.
    case closedByPeer(String)
    /// The peer was lost (connection closed, heartbeats stopped, it reconnected, the mesh stopped)
    /// or broke the protocol (sent past its credit window).
    case lost(String)
    /// The tunnel was closed on this side.
    case closed

    public var description: String {
        switch self {
        case .refused(let m): return "tunnel refused: \(m)"
        case .unreachable(let m): return "tunnel peer unreachable: \(m)"
        case .silent(let peer, let ms): return "\(peer) silent for \(ms) ms"
        case .closedByPeer(let m): return "tunnel closed by peer: \(m)"
        case .lost(let m): return "tunnel lost: \(m)"
        case .closed: return "tunnel closed"
        }
    }
}

/// One bidirectional, ordered, flow-controlled byte stream between this node and a peer.
///
/// Each direction has a credit window (``windowBytes`` and ``windowMessages``): a sender never has
/// more than that unacknowledged, so a slow reader slows the writer instead of growing buffers, and
/// the socket loop's per-peer queue (about 1,000 messages) is never overrun by many small writes.
/// One task should call ``send(_:)`` at a time (ordering across concurrent senders is undefined).
public final class MeshTunnel: Sendable {
    /// Receive window announced to the far end, in bytes.
    public static let windowBytes = 1 << 20
    /// Receive window in messages: bounds what small writes queue in the socket loop.
    public static let windowMessages = 128
    /// The largest payload of one data message.
    public static let pieceBytes = 256 << 10
    /// How often the opener pings.
    static let pingInterval = Duration.milliseconds(250)

    /// A snapshot for status and metrics.
    public struct Info: Sendable, Equatable {
        public var id: String
        public var peer: String
        public var target: String
        /// This node opened it (the head side).
        public var isOpener: Bool
        public var bytesSent: Int
        public var bytesReceived: Int
        /// Sent bytes the far end has not credited yet (never over its window).
        public var inFlight: Int
        /// Received bytes not yet handed on with ``MeshTunnel/consumed(_:)``.
        public var buffered: Int
        public var age: Duration
    }

    public let id: String
    /// The node at the far end.
    public let peer: String
    public let target: String
    public let isOpener: Bool
    /// Bytes from the far end, in order. Finishes on a clean close (either side), throws a
    /// ``MeshTunnelError`` on a failure.
    public let incoming: AsyncThrowingStream<[UInt8], any Error>
    let continuation: AsyncThrowingStream<[UInt8], any Error>.Continuation
    /// Held strongly: the service's table drops the tunnel when it ends.
    let service: MeshService
    /// Where its messages go and must come from: our DEALER to the peer (opener) or the peer's
    /// connection to our ROUTER (acceptor).
    let link: MeshLink
    let silenceLimit: Duration
    let created = ContinuousClock.now
    let state: Mutex<State>

    struct State {
        /// The far end's window; nil until it accepted (opener).
        var sendWindow: Int?
        var inFlight = 0
        var inFlightMessages = 0
        var sendWaiter: (bytes: Int, continuation: CheckedContinuation<Void, any Error>)?
        var openWaiter: CheckedContinuation<Void, any Error>?
        var ended = false
        var failure: MeshTunnelError?
        var bytesSent = 0
        var bytesReceived = 0
        /// Received message ends as running byte offsets, from `nextEnd`: a message is consumed
        /// once the reader's running total passes its end (credit counts messages too).
        var ends: [Int] = []
        var nextEnd = 0
        var consumedTotal = 0
        var ungrantedBytes = 0
        var ungrantedMessages = 0
        var lastHeard: ContinuousClock.Instant
        var lastPing: ContinuousClock.Instant
        /// Takes what arrives instead of `incoming` (see ``deliver(to:)``).
        var sink: (@Sendable (Event) -> Void)?
        var buffered: Int { bytesReceived - consumedTotal }
    }

    init(service: MeshService, id: String, peer: String, target: String, link: MeshLink, isOpener: Bool,
         silenceLimit: Duration, sendWindow: Int?) {
        self.service = service
        self.id = id
        self.peer = peer
        self.target = target
        self.link = link
        self.isOpener = isOpener
        self.silenceLimit = silenceLimit
        (incoming, continuation) = AsyncThrowingStream<[UInt8], any Error>.makeStream()
        let now = ContinuousClock.now
        state = Mutex(State(sendWindow: sendWindow, lastHeard: now, lastPing: now))
    }

    /// What a sink (``deliver(to:)``) is told.
    public enum Event: Sendable {
        /// Bytes from the far end, in order (hand them on, then call ``consumed(_:)``).
        case data([UInt8])
        /// The tunnel ended: cleanly (nil) or with its failure.
        case ended(MeshTunnelError?)
    }

    /// Hands what arrives from the far end to `sink` instead of `incoming`, on the mesh's socket
    /// thread as it arrives (no task hop: a relay's round trip is on the path of every token), so
    /// `sink` must not block. Set it before the far end can send: data that came earlier went to
    /// `incoming`. A tunnel that already ended tells it at once.
    public func deliver(to sink: @escaping @Sendable (Event) -> Void) {
        let ended = state.withLock { s -> MeshTunnelError?? in
            s.sink = sink
            guard s.ended else { return nil }
            return .some(s.failure == .closed ? nil : s.failure)
        }
        if let e = ended { sink(.ended(e)) }
    }

    /// Sends `bytes` now, without suspending, when they fit one piece and the far end's window has
    /// room; false when they do not (then ``send(_:)``, which waits, in the same order).
    public func trySend(_ bytes: [UInt8]) -> Bool {
        guard !bytes.isEmpty, bytes.count <= pieceLimit else { return false }
        let taken = state.withLock { s -> Bool in
            guard !s.ended, s.sendWaiter == nil else { return false }
            return Self.take(&s, bytes.count)
        }
        guard taken else { return false }
        if !service.send(WireMessage(type: .tunnelData, header: ["tun": .string(id)], payload: bytes), to: link) {
            end(error: .lost("cannot send to \(peer)"), notify: nil)
        }
        return true
    }

    /// Sends bytes in order; suspends while the far end's credit window is full. Throws once the
    /// tunnel ended (with its failure, or ``MeshTunnelError/closed``) and on task cancellation.
    public func send(_ bytes: [UInt8]) async throws {
        var start = 0
        while start < bytes.count {
            let limit = pieceLimit
            let stop = min(bytes.count, start + limit)
            let piece = start == 0 && stop == bytes.count ? bytes : Array(bytes[start..<stop])
            try await reserve(piece.count)
            if !service.send(WireMessage(type: .tunnelData, header: ["tun": .string(id)], payload: piece), to: link) {
                let e = MeshTunnelError.lost("cannot send to \(peer)")
                end(error: e, notify: nil)
                throw e
            }
            start = stop
        }
    }

    /// Under the mesh's payload limit and at most half the far end's window, so a reader that
    /// credits in half-window batches never leaves us waiting (see `consumed`).
    var pieceLimit: Int {
        let window = state.withLock { $0.sendWindow } ?? Self.windowBytes
        return max(1, min(Self.pieceBytes, window / 2, service.configuration.maxPayloadBytes))
    }

    func reserve(_ n: Int) async throws {
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, any Error>) in
                let go = state.withLock { s -> Result<Bool, any Error> in
                    if s.ended { return .failure(s.failure ?? .closed) }
                    if Task.isCancelled { return .failure(CancellationError()) }
                    if Self.take(&s, n) { return .success(true) }
                    s.sendWaiter = (n, c)
                    return .success(false)
                }
                switch go {
                case .failure(let e): c.resume(throwing: e)
                case .success(true): c.resume()
                case .success(false): break
                }
            }
        } onCancel: {
            let w = state.withLock { s in
                defer { s.sendWaiter = nil }
                return s.sendWaiter?.continuation
            }
            w?.resume(throwing: CancellationError())
        }
    }

    /// Takes credit for one message of `n` bytes if the far end's window has room (always when
    /// nothing is in flight, so a piece over the window cannot wait forever).
    static func take(_ s: inout State, _ n: Int) -> Bool {
        guard let window = s.sendWindow else { return false }
        let idle = s.inFlight == 0 && s.inFlightMessages == 0
        guard idle || (s.inFlight + n <= window && s.inFlightMessages < windowMessages) else { return false }
        s.inFlight += n
        s.inFlightMessages += 1
        s.bytesSent += n
        return true
    }

    /// The reader handed `n` bytes of `incoming` on (written them out): credit goes back to the
    /// far end in batches of half a window (bytes or messages), which it never waits on (it sends
    /// pieces of at most half a window), so batching costs no stalls.
    public func consumed(_ n: Int) {
        guard n > 0 else { return }
        let grant = state.withLock { s -> (Int, Int)? in
            guard !s.ended else { return nil }
            s.consumedTotal += n
            s.ungrantedBytes += n
            var done = 0
            while done < s.ends.count && s.ends[done] <= s.consumedTotal { done += 1 }
            if done > 0 {
                s.ends.removeFirst(done)
                s.ungrantedMessages += done
            }
            guard s.ungrantedBytes >= Self.windowBytes / 2 || s.ungrantedMessages >= Self.windowMessages / 2 else { return nil }
            defer { (s.ungrantedBytes, s.ungrantedMessages) = (0, 0) }
            return (s.ungrantedBytes, s.ungrantedMessages)
        }
        if let (bytes, msgs) = grant {
            service.send(WireMessage(type: .tunnelCredit, header: [
                "tun": .string(id), "bytes": .integer(bytes), "msgs": .integer(msgs),
            ]), to: link)
        }
    }

    /// Ends the tunnel and tells the far end (`reason` nil: a clean close, its reader sees the end
    /// of `incoming`; else its reader gets ``MeshTunnelError/closedByPeer(_:)``). Idempotent.
    /// Our own `incoming` finishes cleanly; a waiting `send` throws ``MeshTunnelError/closed``.
    public func close(reason: String? = nil) {
        end(error: nil, notify: .some(reason))
    }

    /// A snapshot for status and metrics.
    public var info: Info {
        state.withLock { s in
            Info(id: id, peer: peer, target: target, isOpener: isOpener, bytesSent: s.bytesSent, bytesReceived: s.bytesReceived,
                 inFlight: s.inFlight, buffered: s.buffered, age: ContinuousClock.now - created)
        }
    }

    // MARK: driven by the service

    /// Ends the tunnel once: out of the table, waiters fail, `incoming` finishes (throwing `error`
    /// when there is one). `notify`: send the far end a close with this reason (`.some(nil)`: clean).
    func end(error: MeshTunnelError?, notify: String??) {
        let waiters = state.withLock { s -> (CheckedContinuation<Void, any Error>?, CheckedContinuation<Void, any Error>?)? in
            guard !s.ended else { return nil }
            s.ended = true
            s.failure = error ?? .closed
            defer { (s.openWaiter, s.sendWaiter) = (nil, nil) }
            return (s.openWaiter, s.sendWaiter?.continuation)
        }
        guard let (open, send) = waiters else { return }
        let sink = state.withLock { $0.sink }
        service.tunnelTable.remove(self)
        if case .some(let reason) = notify {
            let header: JSON = reason.map { ["tun": .string(id), "reason": .string($0)] } ?? ["tun": .string(id)]
            service.send(WireMessage(type: .tunnelClose, header: header), to: link)
        }
        open?.resume(throwing: error ?? .closed)
        send?.resume(throwing: error ?? .closed)
        sink?(.ended(error))
        if let error {
            service.logger.warning("mesh tunnel failed", metadata: ["tunnel": "\(id)", "peer": "\(peer)", "target": "\(target)", "error": "\(error)"])
            continuation.finish(throwing: error)
        } else {
            service.logger.debug("mesh tunnel closed", metadata: ["tunnel": "\(id)", "peer": "\(peer)"])
            continuation.finish()
        }
    }

    /// Any message from the far end proves it alive.
    func heard() {
        state.withLock { $0.lastHeard = ContinuousClock.now }
    }

    /// Opener: the far end accepted with its window, or refused.
    func opened(window: Int?, refused: String?) {
        if let refused {
            end(error: .refused(refused), notify: nil)
            return
        }
        let waiter = state.withLock { s -> CheckedContinuation<Void, any Error>? in
            guard !s.ended, s.sendWindow == nil, let window else { return nil }
            s.sendWindow = window
            defer { s.openWaiter = nil }
            return s.openWaiter
        }
        waiter?.resume()
    }

    /// Data from the far end (on the socket thread, so in order). More than our window unconsumed
    /// means the far end ignores credit: the tunnel ends rather than buffer without bound.
    func received(_ payload: [UInt8]) {
        guard !payload.isEmpty else { return }
        let (ok, sink) = state.withLock { s -> (Bool?, (@Sendable (Event) -> Void)?) in
            guard !s.ended else { return (nil, nil) }
            s.bytesReceived += payload.count
            s.ends.append(s.bytesReceived)
            return (s.buffered <= Self.windowBytes && s.ends.count <= Self.windowMessages, s.sink)
        }
        switch ok {
        case true?:
            if let sink { sink(.data(payload)) } else { continuation.yield(payload) }
        case false?: end(error: .lost("\(peer) sent past its credit window"), notify: .some("credit window exceeded"))
        case nil: break
        }
    }

    func credited(bytes: Int, messages: Int) {
        let waiter = state.withLock { s -> CheckedContinuation<Void, any Error>? in
            s.inFlight = max(0, s.inFlight - bytes)
            s.inFlightMessages = max(0, s.inFlightMessages - messages)
            guard let w = s.sendWaiter, Self.take(&s, w.bytes) else { return nil }
            s.sendWaiter = nil
            return w.continuation
        }
        waiter?.resume()
    }

    /// Called by the table's ticker: the opener pings every ``pingInterval``; either side ends a
    /// tunnel whose far end was silent for `silenceLimit` (opener: worker or its meshd gone;
    /// acceptor: head gone). Pongs come from the far meshd, not from what is behind the tunnel.
    func tick(now: ContinuousClock.Instant) {
        let (silence, ping) = state.withLock { s -> (Duration?, Bool) in
            guard !s.ended else { return (nil, false) }
            let quiet = now - s.lastHeard
            if quiet > silenceLimit { return (quiet, false) }
            guard isOpener, now - s.lastPing >= Self.pingInterval else { return (nil, false) }
            s.lastPing = now
            return (nil, true)
        }
        if let silence {
            let ms = silence.wholeMilliseconds
            end(error: .silent(peer: peer, milliseconds: ms), notify: .some("\(service.configuration.nodeID) heard nothing for \(ms) ms"))
        } else if ping {
            service.send(WireMessage(type: .tunnelPing, header: ["tun": .string(id)]), to: link)
        }
    }
}

/// The tunnels of one service, by id, on each side, plus the acceptor and the liveness ticker.
/// Opened and accepted tunnels are kept apart: an id is chosen by its opener, so an accepted id
/// may equal one of ours; which table a message belongs to follows from the link it came on.
final class MeshTunnelTable: Sendable {
    struct Tables {
        var opened: [String: MeshTunnel] = [:]
        var accepted: [String: MeshTunnel] = [:]
        var serial: UInt64 = 0
        var ticking = false
        var acceptor: (any MeshTunnelAcceptor)?
    }
    let tables = Mutex(Tables())
    /// The service's sleep (`MeshServiceConfiguration.sleep`: the event loop's timers in meshd).
    let sleep: Sleeper

    init(sleep: @escaping Sleeper) { self.sleep = sleep }
    /// How often silence is checked: well under the silence limit, so it is detected on time.
    static let tick = Duration.milliseconds(50)

    func nextID(_ node: String) -> String {
        let n = tables.withLock { t in
            t.serial += 1
            return t.serial
        }
        return "\(node)-t\(n)-\(UInt32.random(in: 0...UInt32.max))"
    }

    func find(_ id: String, opened: Bool) -> MeshTunnel? {
        tables.withLock { opened ? $0.opened[id] : $0.accepted[id] }
    }

    /// Adds a tunnel (false: an accepted id already in use) and starts the ticker if it is idle.
    func add(_ t: MeshTunnel) -> Bool {
        let start = tables.withLock { s -> Bool? in
            if t.isOpener { s.opened[t.id] = t } else {
                guard s.accepted[t.id] == nil else { return nil }
                s.accepted[t.id] = t
            }
            defer { s.ticking = true }
            return !s.ticking
        }
        guard let start else { return false }
        if start { Task { await self.runTicker() } }
        return true
    }

    func remove(_ t: MeshTunnel) {
        tables.withLock { s in
            if t.isOpener {
                if s.opened[t.id] === t { s.opened[t.id] = nil }
            } else if s.accepted[t.id] === t {
                s.accepted[t.id] = nil
            }
        }
    }

    var all: [MeshTunnel] {
        tables.withLock { Array($0.opened.values) + Array($0.accepted.values) }
    }

    /// Runs while there are tunnels; stops (and is restarted by `add`) when there are none.
    func runTicker() async {
        while true {
            await sleep(Self.tick)
            let tunnels = tables.withLock { s -> [MeshTunnel] in
                let all = Array(s.opened.values) + Array(s.accepted.values)
                if all.isEmpty { s.ticking = false }
                return all
            }
            if tunnels.isEmpty { return }
            let now = ContinuousClock.now
            for t in tunnels { t.tick(now: now) }
        }
    }
}

extension MeshService {
    /// Sets who decides on tunnels peers open to this node; without one, every open is refused.
    public func setTunnelAcceptor(_ a: any MeshTunnelAcceptor) {
        tunnelTable.tables.withLock { $0.acceptor = a }
    }

    /// Opens a tunnel to `node`; returns once the far end accepted. Throws
    /// ``MeshTunnelError/refused(_:)`` with the acceptor's message, ``MeshTunnelError/unreachable(_:)``
    /// when `node` is not a live peer, ``MeshTunnelError/silent(peer:milliseconds:)`` when its meshd
    /// answers nothing for `silenceLimit` (also the liveness limit of the open tunnel, both ways).
    public func openTunnel(to node: String, target: String, silenceLimit: Duration = .milliseconds(1500)) async throws -> MeshTunnel {
        let endpoint = state.withLock { s in s.peers.entries[node] != nil ? s.endpoints[node] : nil }
        guard let endpoint else { throw MeshTunnelError.unreachable("\(node) is not a live peer") }
        let t = MeshTunnel(service: self, id: tunnelTable.nextID(configuration.nodeID), peer: node, target: target,
                           link: .outbound(MeshPeerID(Self.normalize(endpoint))), isOpener: true,
                           silenceLimit: silenceLimit, sendWindow: nil)
        _ = tunnelTable.add(t)
        let ms = silenceLimit.wholeMilliseconds
        let open = WireMessage(type: .tunnelOpen, header: [
            "tun": .string(t.id), "target": .string(target), "window": .integer(MeshTunnel.windowBytes), "silenceMs": .integer(ms),
        ])
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, any Error>) in
                let early = t.state.withLock { s -> MeshTunnelError? in
                    if s.ended { return s.failure ?? .closed }
                    s.openWaiter = c
                    return nil
                }
                if let early {
                    c.resume(throwing: early)
                } else if !send(open, to: t.link) {
                    t.end(error: .unreachable("cannot send to \(node)"), notify: nil)
                }
            }
        } onCancel: {
            t.close(reason: "open cancelled")
        }
        return t
    }

    /// Open tunnels, both sides, for status and metrics.
    public func tunnels() -> [MeshTunnel.Info] {
        tunnelTable.all.map(\.info).sorted { $0.id < $1.id }
    }

    /// Ends the tunnels of a peer that was lost, or whose connection (`link`) closed.
    func closeTunnels(peer: String?, link: MeshLink? = nil, reason: String) {
        for t in tunnelTable.all where t.peer == peer || t.link == link {
            t.end(error: .lost("\(t.peer): \(reason)"), notify: .some(reason))
        }
    }

    /// A tunnel message (on the socket thread). Opens come over our ROUTER from a known node;
    /// everything else about a tunnel must come over the very link it was opened on.
    func handleTunnelMessage(_ msg: WireMessage, _ m: MeshMessage) {
        guard let id = msg.tunnelID else { return }
        if msg.type == .tunnelOpen {
            acceptTunnelOpen(id, msg, link: m.link)
            return
        }
        let viaRouter: Bool
        if case .inbound = m.link { viaRouter = true } else { viaRouter = false }
        // A tunnel that already ended may still get messages in flight: ignored.
        guard let t = tunnelTable.find(id, opened: !viaRouter) else { return }
        guard t.link == m.link else {
            if case .inbound(let rid) = m.link, state.withLock({ $0.inbound[rid] }) == t.peer {
                // Its node over a new connection: whatever the old one still held is lost.
                t.end(error: .lost("\(t.peer) reconnected; tunnel data may have been lost"), notify: .some("reconnected"))
            } else {
                rejectTunnelMessage(m.link, "tunnel message over a link that did not open it")
            }
            return
        }
        t.heard()
        switch msg.type {
        case .tunnelOpened:
            if t.isOpener { t.opened(window: msg.header["window"]?.intValue, refused: msg.header["refused"]?.stringValue) }
        case .tunnelData:
            t.received(msg.payload)
        case .tunnelCredit:
            t.credited(bytes: msg.header["bytes"]?.intValue ?? 0, messages: msg.header["msgs"]?.intValue ?? 0)
        case .tunnelClose:
            t.end(error: msg.header["reason"]?.stringValue.map { .closedByPeer($0) }, notify: nil)
        case .tunnelPing:
            // Answered here, at once: a busy rpc-server behind the tunnel must not look dead.
            if !t.isOpener { send(WireMessage(type: .tunnelPong, header: ["tun": .string(id)]), to: m.link) }
        default:
            break
        }
    }

    func rejectTunnelMessage(_ link: MeshLink, _ reason: String) {
        state.withLock { $0.rejectedFrames += 1 }
        logger.warning("rejected mesh frame", metadata: ["link": "\(link)", "reason": "\(reason)"])
    }

    /// Only a node we know over this very connection (its hello or state named it), and not
    /// revoked, may open a tunnel; the acceptor then decides.
    func acceptTunnelOpen(_ id: String, _ msg: WireMessage, link: MeshLink) {
        guard case .inbound(let rid) = link else {
            rejectTunnelMessage(link, "tunnel open over an outbound link")
            return
        }
        let node = state.withLock { s -> String? in
            guard let n = s.inbound[rid], s.revokedNodes[n] == nil else { return nil }
            return n
        }
        guard let node else {
            rejectTunnelMessage(link, "tunnel open from a connection that named no node")
            send(WireMessage(type: .tunnelOpened, header: ["tun": .string(id), "refused": "unknown node"]), to: link)
            return
        }
        let target = msg.header["target"]?.stringValue ?? ""
        let silenceMs = min(60_000, max(100, msg.header["silenceMs"]?.intValue ?? 1500))
        let t = MeshTunnel(service: self, id: id, peer: node, target: target, link: link, isOpener: false,
                           silenceLimit: .milliseconds(silenceMs), sendWindow: msg.header["window"]?.intValue ?? MeshTunnel.windowBytes)
        guard tunnelTable.add(t) else {
            rejectTunnelMessage(link, "tunnel open with an id in use")
            return
        }
        let acceptor = tunnelTable.tables.withLock { $0.acceptor }
        Task {
            let refusal = if let acceptor { await acceptor.acceptTunnel(t, from: node, target: target) } else {
                "node \(self.configuration.nodeID) does not accept tunnels"
            }
            let accepted = t.state.withLock { !$0.ended }
            if let refusal {
                t.end(error: .refused(refusal), notify: nil)
                self.send(WireMessage(type: .tunnelOpened, header: ["tun": .string(id), "refused": .string(refusal)]), to: link)
            } else if accepted {
                self.send(WireMessage(type: .tunnelOpened, header: ["tun": .string(id), "window": .integer(MeshTunnel.windowBytes)]), to: link)
            }
        }
    }
}

extension Duration {
    /// Whole milliseconds, for messages and headers.
    var wholeMilliseconds: Int {
        Int(components.seconds * 1000 + components.attoseconds / 1_000_000_000_000_000)
    }
}
