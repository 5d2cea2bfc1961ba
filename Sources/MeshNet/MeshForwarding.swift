import Foundation
import Logging
import MeshCore
import MeshZMQ
import Synchronization

/// Request forwarding: the requesting side (forward, cancel, credit the serving node as the client
/// consumes) and the answering side (serve, stream under credit, cancel).
extension MeshService {
    // MARK: forwarding (requesting side)

    /// Forwards a client request to `node`; returns when its head arrives.
    public func forward(to node: String, path: String, headers: [(String, String)], body: [UInt8]) async throws -> ForwardedResponse {
        let target = state.withLock { s -> (endpoint: String, serial: UInt64)? in
            guard let ep = s.endpoints[node], s.peers.entries[node] != nil else { return nil }
            s.nextID += 1
            return (ep, s.nextID)
        }
        guard let (ep, serial) = target else { throw MeshForwardError.unreachable("\(node) is not a live peer") }
        let id = "\(configuration.nodeID)-\(serial)"
        // `whole`: we accept a one-message `response` (a peer that does not know it ignores it).
        let msg = WireMessage(type: .request, header: [
            "req": .string(id), "path": .string(path), "from": .string(configuration.nodeID),
            "headers": MeshResponder.encode(headers), "whole": true,
        ], payload: body)
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<ForwardedResponse, any Error>) in
                state.withLock { $0.pending[id] = Pending(node: node, head: c, body: nil) }
                if Task.isCancelled {
                    // Cancelled before the request was registered: `onCancel` found nothing to cancel.
                    let p = state.withLock { $0.pending.removeValue(forKey: id) }
                    p?.head?.resume(throwing: CancellationError())
                    return
                }
                if !send(msg, to: .outbound(MeshPeerID(ep))) {
                    let p = state.withLock { $0.pending.removeValue(forKey: id) }
                    p?.head?.resume(throwing: MeshForwardError.unreachable("cannot send to \(node)"))
                }
            }
        } onCancel: {
            self.cancelForward(id)
        }
    }

    /// Tells the serving node to stop (client gone).
    func cancelForward(_ id: String) {
        let p = state.withLock { $0.pending.removeValue(forKey: id) }
        guard let p else { return }
        p.head?.resume(throwing: CancellationError())
        // Only a consumer that is itself cancelled or gone reads this end (an error here would look
        // like a failed peer and be retried elsewhere).
        p.body?.finish()
        if let ep = state.withLock({ $0.endpoints[p.node] }) {
            send(WireMessage(type: .cancel, header: ["req": .string(id)]), to: .outbound(MeshPeerID(ep)))
        }
    }

    /// The body's reader waits for the next chunk of forward `id`.
    func awaiting(_ id: String) {
        guard configuration.forwardIdleMs != nil else { return }
        let now = clock.monotonicNanos()
        state.withLock { s in
            if s.pending[id] != nil { s.pending[id]!.waitingSince = now }
        }
    }

    /// Fails forwards whose serving node sent nothing for `forwardIdleMs` while their reader waited,
    /// and tells the node to stop (the client gets an error event, or the next candidate is tried).
    func expireStalledForwards() {
        guard let idleMs = configuration.forwardIdleMs else { return }
        let now = clock.monotonicNanos()
        let limit = UInt64(idleMs) * 1_000_000
        let stalled = state.withLock { s -> [(String, Pending, String?)] in
            let ids = s.pending.filter { _, p in
                guard p.head == nil, p.body != nil, let w = p.waitingSince else { return false }
                let since = max(w, p.lastChunkNanos)
                return now > since && now - since > limit
            }.map(\.key)
            return ids.compactMap { id in s.pending.removeValue(forKey: id).map { p in (id, p, s.endpoints[p.node]) } }
        }
        for (id, p, ep) in stalled {
            logger.warning("forwarded response stalled", metadata: ["peer": "\(p.node)", "request": "\(id)", "idle_ms": "\(idleMs)"])
            p.body?.finish(throwing: MeshForwardError.lost("\(p.node) sent nothing for \(idleMs) ms"))
            if let ep { send(WireMessage(type: .cancel, header: ["req": .string(id)]), to: .outbound(MeshPeerID(ep))) }
        }
    }

    /// The client consumed `bytes` of a forwarded response: credit them back to the serving node,
    /// batched to half its window when it announced one (it never sends a piece over half, so it
    /// cannot wait on credit we hold back), else one credit per chunk.
    func consumed(_ id: String, bytes: Int) {
        let grant = state.withLock { s -> (Int, String)? in
            guard var p = s.pending[id], let ep = s.endpoints[p.node] else { return nil }
            p.waitingSince = nil
            p.ungranted += bytes
            guard p.ungranted >= max(1, (p.window ?? 0) / 2) else {
                s.pending[id] = p
                return nil
            }
            let n = p.ungranted
            p.ungranted = 0
            s.pending[id] = p
            return (n, ep)
        }
        if let (n, ep) = grant {
            send(WireMessage(type: .credit, header: ["req": .string(id), "bytes": .integer(n)]), to: .outbound(MeshPeerID(ep)))
        }
    }

    static func decodeHeaders(_ j: JSON?) -> [(String, String)] {
        (j?.arrayValue ?? []).compactMap { pair in
            guard let n = pair[0]?.stringValue, let v = pair[1]?.stringValue else { return nil }
            return (n, v)
        }
    }

    func forwardReply(_ msg: WireMessage) {
        guard let id = msg.requestID else { return }
        switch msg.type {
        case .responseHead:
            let window = msg.header["window"]?.intValue.flatMap { $0 > 0 ? $0 : nil }
            let (stream, cont) = AsyncThrowingStream<[UInt8], any Error>.makeStream()
            // The consumer of the body was cancelled (client gone mid-response): stop the serving node.
            cont.onTermination = { [weak self] termination in
                if case .cancelled = termination { self?.cancelForward(id) }
            }
            let taken = state.withLock { s -> CheckedContinuation<ForwardedResponse, any Error>? in
                guard let c = s.pending[id]?.head else { return nil }
                s.pending[id]!.head = nil
                s.pending[id]!.lastChunkNanos = clock.monotonicNanos()
                s.pending[id]!.window = window
                s.pending[id]!.body = cont
                return c
            }
            guard let head = taken else {
                cont.finish()
                return
            }
            let status = msg.header["status"]?.intValue ?? 502
            head.resume(returning: ForwardedResponse(status: status, headers: Self.decodeHeaders(msg.header["headers"]),
                                                     body: ForwardedBody(stream: stream, service: self, requestID: id)))
        case .response:
            // The whole answer at once: nothing more will come, so no credit is owed either.
            guard let p = state.withLock({ $0.pending.removeValue(forKey: id) }) else { return }
            guard let head = p.head else {
                // After a head (not what a server sends): the body's reader takes it as the last chunk.
                if !msg.payload.isEmpty { p.body?.yield(msg.payload) }
                p.body?.finish()
                return
            }
            let status = msg.header["status"]?.intValue ?? 502
            head.resume(returning: ForwardedResponse(status: status, headers: Self.decodeHeaders(msg.header["headers"]),
                                                     body: ForwardedBody(whole: msg.payload)))
        case .chunk:
            let now = clock.monotonicNanos()
            let c = state.withLock { s -> AsyncThrowingStream<[UInt8], any Error>.Continuation? in
                guard s.pending[id] != nil else { return nil }
                s.pending[id]!.lastChunkNanos = now
                return s.pending[id]!.body
            }
            c?.yield(msg.payload)
        case .end:
            let p = state.withLock { $0.pending.removeValue(forKey: id) }
            p?.head?.resume(throwing: MeshForwardError.lost("peer ended without a response head"))
            p?.body?.finish()
        case .error:
            let p = state.withLock { $0.pending.removeValue(forKey: id) }
            let status = msg.header["status"]?.intValue ?? 502
            let message = msg.header["message"]?.stringValue ?? "peer failed"
            if let h = p?.head {
                h.resume(throwing: MeshForwardError.remote(status: status, message: message))
                p?.body?.finish()
            } else {
                p?.body?.finish(throwing: MeshForwardError.lost(message))
            }
        default:
            break
        }
    }

    // MARK: serving (answering side)

    func startServing(_ msg: WireMessage, link: MeshLink) {
        guard let id = msg.requestID, let path = msg.header["path"]?.stringValue else { return }
        let from = msg.header["from"]?.stringValue ?? "?"
        let headers = Self.decodeHeaders(msg.header["headers"])
        guard let h = handler.withLock({ $0 }) else {
            send(WireMessage(type: .error, header: ["req": .string(id), "status": 503, "message": "node not serving"]), to: link)
            return
        }
        state.withLock { $0.served[id] = Served(link: link, node: from, outstanding: 0, waiter: nil, task: nil, cancelled: false) }
        let req = ForwardedRequest(requestID: id, fromNode: from, path: path, headers: headers, body: msg.payload)
        let responder = MeshResponder(service: self, requestID: id, wholeAccepted: msg.header["whole"]?.boolValue == true)
        // The handler runs on the socket thread too (see `MeshRequestHandler`): its answer is queued
        // there, and only the engine's HTTP client is another thread.
        let task = Task(executorPreference: loop) {
            await h.handle(req, responder: responder)
            self.finishServing(id)
        }
        let cancelNow = state.withLock { s -> Bool in
            guard s.served[id] != nil else { return true }
            s.served[id]!.task = task
            return s.served[id]!.cancelled
        }
        if cancelNow { task.cancel() }
    }

    func finishServing(_ id: String) {
        _ = state.withLock { $0.served.removeValue(forKey: id) }
    }

    func sendToRequester(_ id: String, _ m: WireMessage) {
        guard let link = state.withLock({ $0.served[id]?.link }) else { return }
        send(m, to: link)
    }

    func cancelServed(_ id: String) {
        let (task, waiter) = state.withLock { s -> (Task<Void, Never>?, CheckedContinuation<Void, any Error>?) in
            guard var sv = s.served[id] else { return (nil, nil) }
            sv.cancelled = true
            let w = sv.waiter
            sv.waiter = nil
            s.served[id] = sv
            return (sv.task, w)
        }
        task?.cancel()
        waiter?.resume(throwing: CancellationError())
    }

    func awaitCredit(_ id: String, bytes: Int) async throws {
        let window = configuration.creditWindowBytes
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, any Error>) in
            let go = state.withLock { s -> Bool? in
                guard var sv = s.served[id], !sv.cancelled else { return nil }
                if sv.outstanding == 0 || sv.outstanding + bytes <= window {
                    sv.outstanding += bytes
                    s.served[id] = sv
                    return true
                }
                sv.waiter = c
                sv.outstanding += bytes
                s.served[id] = sv
                return false
            }
            switch go {
            case nil: c.resume(throwing: CancellationError())
            case true?: c.resume()
            case false?: break
            }
        }
    }

    func creditReceived(_ id: String, bytes: Int) {
        let w = state.withLock { s -> CheckedContinuation<Void, any Error>? in
            guard var sv = s.served[id] else { return nil }
            sv.outstanding = max(0, sv.outstanding - bytes)
            var w: CheckedContinuation<Void, any Error>?
            if sv.waiter != nil && sv.outstanding <= configuration.creditWindowBytes {
                w = sv.waiter
                sv.waiter = nil
            }
            s.served[id] = sv
            return w
        }
        w?.resume()
    }
}
