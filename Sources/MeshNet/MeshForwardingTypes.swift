import Foundation
import Logging
import MeshCore
import MeshZMQ
import Synchronization

// What forwarding a request over the mesh looks like to callers: the request a peer sent, the
// responder that answers it, the response the forwarding node reads, and the errors.

/// A request a peer forwarded to this node.
public struct ForwardedRequest: Sendable {
    public var requestID: String
    public var fromNode: String
    /// Client route (`/v1/chat/completions`...).
    public var path: String
    public var headers: [(String, String)]
    public var body: [UInt8]
}

/// How a serving node answers a forwarded request: head, chunks (credit-limited), end or failure.
public struct MeshResponder: Sendable {
    let service: MeshService
    let requestID: String
    /// The requester accepts a whole response as one `response` message.
    let wholeAccepted: Bool

    /// The largest piece of body one wire message carries: under the requester's payload limit
    /// (libzmq drops the whole connection on a message over its size limit) and at most half the
    /// credit window, so a requester that returns credit in half-window batches never stalls us.
    var pieceLimit: Int {
        let c = service.configuration
        return max(1, min(1 << 20, c.maxPayloadBytes, c.creditWindowBytes / 2))
    }

    /// Sends the response head (status and headers). The head tells the requester our credit
    /// window, so it may return credit in batches instead of one message per chunk.
    public func head(status: Int, headers: [(String, String)]) {
        service.sendToRequester(requestID, WireMessage(type: .responseHead, header: [
            "req": .string(requestID), "status": .integer(status),
            "headers": Self.encode(headers), "window": .integer(service.configuration.creditWindowBytes),
        ]))
    }

    /// Sends a whole response that is already in memory: one `response` message when the
    /// requester accepts it and the body fits one piece (a non-streamed answer: one message
    /// instead of head, chunk, end and a credit back), else head, chunks and end.
    public func respond(status: Int, headers: [(String, String)], body: [UInt8]) async throws {
        if wholeAccepted && body.count <= pieceLimit {
            service.sendToRequester(requestID, WireMessage(type: .response, header: [
                "req": .string(requestID), "status": .integer(status), "headers": Self.encode(headers),
            ], payload: body))
            return
        }
        head(status: status, headers: headers)
        if !body.isEmpty { try await chunk(body) }
        end()
    }

    static func encode(_ headers: [(String, String)]) -> JSON {
        .array(headers.map { JSON.array([.string($0.0), .string($0.1)]) })
    }

    /// Sends one body chunk; suspends while the requester has not acknowledged enough bytes.
    /// Large bodies go out as several wire messages: the requester refuses payloads over
    /// `maxPayloadBytes`, and libzmq drops the whole connection on a message over its size limit.
    /// A piece is never larger than half the credit window (see `pieceLimit`).
    public func chunk(_ bytes: [UInt8]) async throws {
        let limit = pieceLimit
        var start = 0
        repeat {
            let end = min(bytes.count, start + limit)
            let piece = start == 0 && end == bytes.count ? bytes : Array(bytes[start..<end])
            try await service.awaitCredit(requestID, bytes: piece.count)
            service.sendToRequester(requestID, WireMessage(type: .chunk, header: ["req": .string(requestID)], payload: piece))
            start = end
        } while start < bytes.count
    }

    /// Ends the response normally.
    public func end() {
        service.sendToRequester(requestID, WireMessage(type: .end, header: ["req": .string(requestID)]))
    }

    /// Ends the response with an error (before or after the head).
    public func fail(status: Int, message: String) {
        service.sendToRequester(requestID, WireMessage(type: .error, header: [
            "req": .string(requestID), "status": .integer(status), "message": .string(message),
        ]))
    }
}

/// The answer to a request this node forwarded: head plus a body that acknowledges what it consumes.
public struct ForwardedResponse: Sendable {
    public var status: Int
    public var headers: [(String, String)]
    public var body: ForwardedBody
}

/// Body chunks of a forwarded response. Consuming a chunk returns credit to the serving node, so
/// a slow client slows the serving node instead of growing buffers; dropping it cancels the request.
/// An answer that came whole (one `response` message) is held as it is: one chunk, no credit owed,
/// nothing left to cancel.
public struct ForwardedBody: AsyncSequence, Sendable {
    public typealias Element = [UInt8]
    private enum Source: Sendable {
        case stream(AsyncThrowingStream<[UInt8], any Error>, MeshService, String, ForwardedBodyDropGuard)
        case whole([UInt8])
    }
    private let source: Source

    init(stream: AsyncThrowingStream<[UInt8], any Error>, service: MeshService, requestID: String) {
        source = .stream(stream, service, requestID, ForwardedBodyDropGuard(service: service, requestID: requestID))
    }

    init(whole: [UInt8]) {
        source = .whole(whole)
    }

    public struct AsyncIterator: AsyncIteratorProtocol {
        fileprivate var base: AsyncThrowingStream<[UInt8], any Error>.AsyncIterator?
        fileprivate let service: MeshService?
        fileprivate let requestID: String
        fileprivate let dropGuard: ForwardedBodyDropGuard?
        fileprivate var whole: [UInt8]?

        public mutating func next() async throws -> [UInt8]? {
            if base != nil {
                service?.awaiting(requestID)
                guard let chunk = try await base!.next() else { return nil }
                service?.consumed(requestID, bytes: chunk.count)
                return chunk
            }
            defer { whole = nil }
            return whole.flatMap { $0.isEmpty ? nil : $0 }
        }
    }

    public func makeAsyncIterator() -> AsyncIterator {
        switch source {
        case let .stream(stream, service, id, dropGuard):
            return AsyncIterator(base: stream.makeAsyncIterator(), service: service, requestID: id, dropGuard: dropGuard, whole: nil)
        case let .whole(bytes):
            return AsyncIterator(base: nil, service: nil, requestID: "", dropGuard: nil, whole: bytes)
        }
    }
}

/// Cancels a forwarded request at the serving node when the last copy of its body (and of its
/// iterators) goes away before the response ended: the client left and the relay gave up (a failed
/// write), or the body was never read. A no-op once the response ended.
final class ForwardedBodyDropGuard: Sendable {
    let service: MeshService
    let requestID: String
    init(service: MeshService, requestID: String) {
        self.service = service
        self.requestID = requestID
    }
    deinit { service.cancelForward(requestID) }
}

/// Why a forward failed.
public enum MeshForwardError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Nothing was received from the peer: safe to retry elsewhere.
    case unreachable(String)
    /// The peer failed after the head (stream cut): not retryable.
    case lost(String)
    /// The peer answered with an error message before the head.
    case remote(status: Int, message: String)

    public var description: String {
        switch self {
        case .unreachable(let m): return "peer unreachable: \(m)"
        case .lost(let m): return "peer lost mid-response: \(m)"
        case .remote(let s, let m): return "peer error \(s): \(m)"
        }
    }
}

/// Serves requests forwarded by peers. `handle` starts on the mesh socket thread (the loop is the
/// task's preferred executor): it must not block; work that may (disk, a slow lock) should move
/// off it with `withTaskExecutorPreference(globalConcurrentExecutor)`.
public protocol MeshRequestHandler: Sendable {
    func handle(_ request: ForwardedRequest, responder: MeshResponder) async
}
