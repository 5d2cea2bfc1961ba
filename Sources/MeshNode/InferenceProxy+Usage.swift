import MeshCore
import MeshHTTPServer
import MeshLedger
import Synchronization

/// Who asked for the request being served, for the usage and audit log: set once per request by
/// ``InferenceProxy/handle(route:request:localOnly:)`` (a task local), and captured by the
/// closures that end streams later.
struct AuditTag: Sendable {
    var requestID: String
    var key: String
    var user: String
    /// The node the client asked, when a peer forwarded the request here.
    var via: String
    var api: String
    /// Arrival, Unix milliseconds.
    var startMs: Int64
    var startNanos: UInt64
    var started: ContinuousClock.Instant
}

/// The header a node passes the forwarded user in to the peer that serves the request.
let userHeader = "X-Meshd-User"

extension InferenceProxy {
    @TaskLocal static var auditTag: AuditTag?

    /// The request's audit tag. On a peer (`localOnly`), key and user come from the forwarding
    /// node's headers; from a client, the user comes from the front end's headers or the body.
    func auditTag(route: InferenceRoute, request: HTTPServerRequest, bodyUser: String?, localOnly: Bool,
                  startNanos: UInt64, started: ContinuousClock.Instant) -> AuditTag {
        let user = localOnly ? UsageRecord.clean(request.header(userHeader) ?? "", max: UsageRecord.maxUserLength)
            : UsageRecord.forwardedUser(header: { request.header($0) }, bodyUser: bodyUser)
        return AuditTag(requestID: Self.newID(route), key: request.header(APIResponder.keyNameHeader) ?? "", user: user,
                        via: localOnly ? request.header("X-Meshd-Via") ?? "" : "", api: route.rawValue,
                        startMs: Int64(startNanos / 1_000_000), startNanos: startNanos, started: started)
    }

    /// Headers that carry the client's key name and user to the peer that serves a forwarded request.
    static func auditHeaders(_ tag: AuditTag?) -> [(String, String)] {
        guard let tag else { return [] }
        var h: [(String, String)] = []
        if !tag.key.isEmpty { h.append((APIResponder.keyNameHeader, tag.key)) }
        if !tag.user.isEmpty { h.append((userHeader, tag.user)) }
        return h
    }

    /// Appends one record to the usage log for the request `tag` describes.
    /// - Parameters:
    ///   - firstTokenNanos: when the first token went out (node clock), if known.
    func record(_ tag: AuditTag?, model: String, status: Int, engine: String = "", provider: String = "", route: String = "",
                usage: TokenUsage? = nil, firstTokenNanos: UInt64? = nil, costMicros: Int64 = 0, cacheHit: Bool = false) {
        // The key's tokens count against its limits where the answer was made (a cached one used no engine).
        if let limiter, let tag, let usage, !cacheHit { limiter.settle(key: tag.key, tokens: usage.promptTokens + usage.completionTokens) }
        guard let recorder = self.usage, let tag else { return }
        var ttft: Double?
        if let f = firstTokenNanos, f >= tag.startNanos { ttft = Double(f - tag.startNanos) / 1e6 }
        let d = ContinuousClock.now - tag.started
        recorder.record(UsageRecord(
            ts: tag.startMs, requestID: tag.requestID, key: tag.key, user: tag.user, model: model, node: nodeName, via: tag.via,
            engine: engine, provider: provider, route: String(route.prefix(UsageRecord.maxRouteLength)), api: tag.api,
            promptTokens: usage?.promptTokens ?? 0, cachedTokens: usage?.cachedTokens ?? 0, outputTokens: usage?.completionTokens ?? 0,
            ttftMs: ttft, durationMs: Double(d.components.seconds) * 1000 + Double(d.components.attoseconds) / 1e15,
            status: status, costMicros: costMicros, cacheHit: cacheHit))
    }

    /// Records a request this node refuses or fails before any node served it (not on a peer:
    /// its refusals go back to the node that asked, which tries another or records them).
    func recordError(_ model: String, status: Int, message: String, localOnly: Bool = false) {
        guard !localOnly else { return }
        record(Self.auditTag, model: model, status: status, route: message)
    }
}

/// The node's usage log, and the last requests it answered (the page's "last requests").
public final class UsageRecorder: Sendable {
    public let log: UsageLog?
    private let recent = Mutex<[UsageRecord]>([])
    static let recentLimit = 50

    public init(log: UsageLog?) { self.log = log }

    func record(_ r: UsageRecord) {
        log?.append(r)
        recent.withLock { list in
            list.append(r)
            if list.count > Self.recentLimit { list.removeFirst(list.count - Self.recentLimit) }
        }
    }

    /// The last requests, newest first.
    public func last(_ n: Int) -> [UsageRecord] { recent.withLock { Array($0.suffix(n).reversed()) } }
}
