import Logging
import MeshCore
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A request as the responder sees it: head plus the whole body (bounded by the server's limit).
public struct HTTPServerRequest: Sendable {
    /// Mutable so a responder can annotate headers (e.g. the authenticated key's name); change
    /// headers only: `path` and `query` were taken from the URI.
    public var head: HTTPRequestHead
    public let body: ByteBuffer
    /// Path without the query string.
    public let path: String
    /// Query string after `?`, if any.
    public let query: String?
    public let remoteAddress: SocketAddress?

    public init(head: HTTPRequestHead, body: ByteBuffer, remoteAddress: SocketAddress? = nil) {
        self.head = head
        self.body = body
        if let q = head.uri.firstIndex(of: "?") {
            self.path = String(head.uri[..<q])
            self.query = String(head.uri[head.uri.index(after: q)...])
        } else {
            self.path = head.uri
            self.query = nil
        }
        self.remoteAddress = remoteAddress
    }

    public var method: HTTPMethod { head.method }

    /// First value of a header (case-insensitive).
    public func header(_ name: String) -> String? { head.headers.first(name: name) }

    /// The body as bytes.
    public var bodyBytes: [UInt8] { Array(body.readableBytesView) }
}

/// Writes the body of a streamed response. On an HTTP connection `write` suspends while the
/// client's connection is not writable (channel writability), so a slow client slows the
/// producer instead of growing a buffer; the mesh supplies its own credit-based sink.
public struct ResponseBodyWriter: Sendable {
    private let sink: @Sendable ([UInt8]) async throws -> Void

    /// A writer over any sink (the mesh relays chunks to a peer with it).
    public init(_ sink: @escaping @Sendable ([UInt8]) async throws -> Void) {
        self.sink = sink
    }

    /// Sends one chunk now (no buffering in meshd). Throws when the receiver has gone.
    public func write(_ bytes: [UInt8]) async throws {
        try await sink(bytes)
    }
}

/// A response: status, headers and either a complete body or a producer that streams it.
public struct HTTPServerResponse: Sendable {
    public enum Body: Sendable {
        case buffer(ByteBuffer)
        /// Streams the body; the server ends the response when the closure returns or throws.
        case stream(@Sendable (ResponseBodyWriter) async throws -> Void)
    }

    public var status: HTTPResponseStatus
    public var headers: HTTPHeaders
    public var body: Body

    public init(status: HTTPResponseStatus, headers: HTTPHeaders = HTTPHeaders(), body: Body) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    /// A JSON response.
    public static func json(_ status: HTTPResponseStatus, _ value: JSON, headers: HTTPHeaders = HTTPHeaders()) -> HTTPServerResponse {
        bytes(status, value.serialized(), contentType: "application/json; charset=utf-8", headers: headers)
    }

    /// A response with a fixed body.
    public static func bytes(_ status: HTTPResponseStatus, _ body: [UInt8], contentType: String, headers: HTTPHeaders = HTTPHeaders()) -> HTTPServerResponse {
        var h = headers
        h.replaceOrAdd(name: "Content-Type", value: contentType)
        return HTTPServerResponse(status: status, headers: h, body: .buffer(ByteBuffer(bytes: body)))
    }

    /// A plain-text response.
    public static func text(_ status: HTTPResponseStatus, _ body: String, headers: HTTPHeaders = HTTPHeaders()) -> HTTPServerResponse {
        bytes(status, Array(body.utf8), contentType: "text/plain; charset=utf-8", headers: headers)
    }
}

/// What answers requests. The server owns connections, limits and shutdown; the responder owns routes.
public protocol HTTPResponder: Sendable {
    func respond(to request: HTTPServerRequest) async -> HTTPServerResponse
    /// The body for errors the server raises before the responder sees a request (413 too large),
    /// so they come in the dialect of the route that was asked.
    func serverError(status: HTTPResponseStatus, message: String, code: String, path: String) -> HTTPServerResponse
}

/// Server settings.
public struct HTTPServerConfiguration: Sendable {
    public var host: String
    public var port: Int
    /// When set, listen on this unix socket (mode 0600) instead of host:port.
    public var unixSocketPath: String?
    public var maxBodyBytes: Int
    /// Headers added to every response (e.g. the node's name).
    public var extraHeaders: [(String, String)]
    /// A request head must be complete this long after the connection opened, or after the first
    /// byte of a request on a kept-alive connection; otherwise the connection is closed.
    public var headerTimeout: Duration
    /// Longest gap with no body bytes while a request body is incomplete.
    public var bodyTimeout: Duration
    /// How long a kept-alive connection may sit idle between requests.
    public var idleTimeout: Duration
    /// Most connections served at once; connections over it get a 503 and are closed. 0: no cap.
    public var maxConnections: Int
    /// Most connections one client address holds at once; more get a 429 and are closed, so one
    /// machine cannot take every slot of `maxConnections`. 0: no cap.
    public var maxConnectionsPerClient: Int
    /// Loopback clients (this machine, e.g. a front end next to meshd) are not held to
    /// `maxConnectionsPerClient`.
    public var perClientCapExemptsLoopback: Bool = true
    /// A request body must come at this many bytes a second on average: besides `bodyTimeout`
    /// between bytes, the whole body gets `bodyTimeout` plus one second per this many bytes
    /// received, so a client trickling a byte now and then cannot hold a connection. 0: no bound.
    public var minBodyBytesPerSecond: Int
    /// Serve HTTPS with this identity (nil: plain HTTP). The head timeout runs from the accept,
    /// so a client that stalls in the handshake is cut off like one that stalls in its head.
    public var tls: HTTPServerTLS?

    public init(host: String, port: Int, maxBodyBytes: Int = 8 << 20, extraHeaders: [(String, String)] = [],
                headerTimeout: Duration = .seconds(10), bodyTimeout: Duration = .seconds(10),
                idleTimeout: Duration = .seconds(75), maxConnections: Int = 4096, maxConnectionsPerClient: Int = 256,
                minBodyBytesPerSecond: Int = 500) {
        self.host = host
        self.port = port
        self.unixSocketPath = nil
        self.maxBodyBytes = maxBodyBytes
        self.extraHeaders = extraHeaders
        self.headerTimeout = headerTimeout
        self.bodyTimeout = bodyTimeout
        self.idleTimeout = idleTimeout
        self.maxConnections = maxConnections
        self.maxConnectionsPerClient = maxConnectionsPerClient
        self.minBodyBytesPerSecond = minBodyBytesPerSecond
    }
}

/// The HTTP/1.1 data plane on SwiftNIO: keep-alive, bounded bodies, streamed responses with
/// channel-writability backpressure, client disconnect → task cancellation, graceful shutdown.
///
/// Each connection is served by a plain channel handler on its event loop; a request, once its
/// body is complete, is answered by one Swift task that calls the responder and hands the
/// response back to the loop.
public final class HTTPServer: Sendable {
    public let configuration: HTTPServerConfiguration
    private let group: any EventLoopGroup
    let responder: any HTTPResponder
    let logger: Logger
    private let state = Mutex(State())
    private let inFlightCount = Atomic<Int>(0)
    private let refusedCount = Atomic<Int>(0)
    private let refusedPerClientCount = Atomic<Int>(0)
    private let timedOutCount = Atomic<Int>(0)

    private struct State {
        var serverChannel: (any Channel)?
        var connections: [ObjectIdentifier: HTTPConnectionHandler] = [:]
        /// Connections open per client address (those held to `maxConnectionsPerClient`).
        var perClient: [String: Int] = [:]
        var shuttingDown = false
        var drainWaiters: [CheckedContinuation<Void, Never>] = []
    }

    public init(configuration: HTTPServerConfiguration, group: any EventLoopGroup, responder: any HTTPResponder, logger: Logger) {
        self.configuration = configuration
        self.group = group
        self.responder = responder
        self.logger = logger
    }

    /// Requests being answered now.
    public var inFlight: Int { inFlightCount.load(ordering: .relaxed) }

    /// Connections open now (served ones; refused ones are not counted).
    public var openConnections: Int { state.withLock { $0.connections.count } }

    /// Connections refused because `maxConnections` were open.
    public var refusedConnections: Int { refusedCount.load(ordering: .relaxed) }

    /// Connections refused because their client address held `maxConnectionsPerClient` already.
    public var refusedPerClientConnections: Int { refusedPerClientCount.load(ordering: .relaxed) }

    /// Connections closed because a head, a body or an idle keep-alive connection timed out.
    public var timedOutConnections: Int { timedOutCount.load(ordering: .relaxed) }

    func connectionTimedOut() { timedOutCount.wrappingAdd(1, ordering: .relaxed) }

    @inline(__always) func requestStarted() { inFlightCount.wrappingAdd(1, ordering: .relaxed) }
    @inline(__always) func requestEnded() { inFlightCount.wrappingSubtract(1, ordering: .relaxed) }

    /// Binds and serves until ``shutdown(grace:)``. `onBound` gets the bound address (port 0 → real port).
    public func run(onBound: @Sendable (SocketAddress) -> Void = { _ in }) async throws {
        var bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 512)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.writeBufferWaterMark, value: .init(low: 32 * 1024, high: 64 * 1024))
            .childChannelInitializer { [self] channel in self.initialize(channel) }
        let server: any Channel
        if let path = configuration.unixSocketPath {
            server = try await bootstrap.bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true).get()
            // Connecting needs write permission on the socket: only the owner gets it.
            _ = chmod(path, 0o600)
        } else {
            bootstrap = bootstrap.childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
            server = try await bootstrap.bind(host: configuration.host, port: configuration.port).get()
        }
        let stop = state.withLock { st -> Bool in
            st.serverChannel = server
            return st.shuttingDown
        }
        if stop { server.close(promise: nil) }
        if let addr = server.localAddress { onBound(addr) }
        logger.info("http listening", metadata: ["address": "\(server.localAddress.map { "\($0)" } ?? "?")"])

        try? await server.closeFuture.get()
        await waitForConnectionsToClose()
    }

    /// Stops accepting, lets in-flight requests finish for up to `grace`, then closes everything.
    public func shutdown(grace: Duration) async {
        let (server, connections) = state.withLock { st -> ((any Channel)?, [HTTPConnectionHandler]) in
            st.shuttingDown = true
            return (st.serverChannel, Array(st.connections.values))
        }
        try? await server?.close().get()
        // Idle connections close now; busy ones after their current response.
        for c in connections { c.quiesce() }
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: grace)
        while clock.now < deadline {
            if state.withLock({ $0.connections.isEmpty }) { return }
            try? await Task.sleep(for: .milliseconds(20))
        }
        let rest = state.withLock { Array($0.connections.values) }
        if !rest.isEmpty { logger.warning("grace period over; closing busy connections", metadata: ["count": "\(rest.count)"]) }
        for c in rest { c.channel.close(promise: nil) }
    }

    // MARK: connections

    /// Sets up an accepted connection (on its event loop).
    private func initialize(_ channel: any Channel) -> EventLoopFuture<Void> {
        let handler = HTTPConnectionHandler(server: self, channel: channel)
        let key = ObjectIdentifier(handler)
        let cap = configuration.maxConnections
        let clientCap = configuration.maxConnectionsPerClient
        // The client address this connection counts against (none: no per-client cap applies).
        let client = clientCap > 0 ? channel.remoteAddress?.ipAddress.flatMap { ip in
            configuration.perClientCapExemptsLoopback && HostPort.isLoopbackAddress(ip) ? nil : ip
        } : nil
        enum Admission { case accepted, shuttingDown, overCap, overClientCap }
        let admission = state.withLock { st -> Admission in
            if st.shuttingDown { return .shuttingDown }
            if cap > 0 && st.connections.count >= cap { return .overCap }
            if let client, st.perClient[client, default: 0] >= clientCap { return .overClientCap }
            st.connections[key] = handler
            if let client { st.perClient[client, default: 0] += 1 }
            return .accepted
        }
        let refusal: [UInt8]
        switch admission {
        case .accepted:
            refusal = []
        case .shuttingDown:
            channel.close(promise: nil)
            return channel.eventLoop.makeSucceededVoidFuture()
        case .overCap:
            refusedCount.wrappingAdd(1, ordering: .relaxed)
            refusal = Self.tooManyConnections(cap: cap)
        case .overClientCap:
            refusedPerClientCount.wrappingAdd(1, ordering: .relaxed)
            refusal = Self.tooManyConnectionsFromClient(client ?? "?", cap: clientCap)
        }
        if !refusal.isEmpty {
            // Refused rather than accepted and starved: an answer the client can read, then close.
            do {
                if let tls = configuration.tls { try channel.pipeline.syncOperations.addHandler(tls.handler()) }
                try channel.pipeline.syncOperations.addHandler(RefuseConnectionHandler(response: refusal))
                return channel.eventLoop.makeSucceededVoidFuture()
            } catch {
                return channel.eventLoop.makeFailedFuture(error)
            }
        }
        channel.closeFuture.whenComplete { _ in self.connectionClosed(key, client: client) }
        do {
            if let tls = configuration.tls { try channel.pipeline.syncOperations.addHandler(tls.handler()) }
            // Sees (decrypted) bytes before the HTTP decoder: the first byte of a request ends the idle phase.
            try channel.pipeline.syncOperations.addHandler(RequestBytesWatcher(connection: handler))
            // Pipelined requests are queued by the connection handler itself (NIO's pipelining helper stops and
            // restarts reading around every request: two epoll_ctl calls per request, ~15 µs here).
            try channel.pipeline.syncOperations.configureHTTPServerPipeline(withPipeliningAssistance: false, withErrorHandling: true)
            try channel.pipeline.syncOperations.addHandler(handler)
            return channel.eventLoop.makeSucceededVoidFuture()
        } catch {
            return channel.eventLoop.makeFailedFuture(error)
        }
    }

    /// The whole response sent to a connection over `maxConnections` (no HTTP pipeline runs on it).
    static func tooManyConnections(cap: Int) -> [UInt8] {
        let body = #"{"error":{"message":"too many connections (cap \#(cap), http.max_connections)","type":"server_error","param":null,"code":"too_many_connections"}}"#
        let head = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n"
            + "Connection: close\r\nRetry-After: 1\r\n\r\n"
        return Array((head + body).utf8)
    }

    /// The whole response sent to a connection over `maxConnectionsPerClient`.
    static func tooManyConnectionsFromClient(_ client: String, cap: Int) -> [UInt8] {
        let body = #"{"error":{"message":"too many connections from \#(client) (cap \#(cap), http.max_connections_per_client)","type":"requests","param":null,"code":"too_many_connections_from_client"}}"#
        let head = "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n"
            + "Connection: close\r\nRetry-After: 1\r\n\r\n"
        return Array((head + body).utf8)
    }

    private func connectionClosed(_ key: ObjectIdentifier, client: String?) {
        let waiters = state.withLock { st -> [CheckedContinuation<Void, Never>] in
            st.connections.removeValue(forKey: key)
            if let client, let n = st.perClient[client] { st.perClient[client] = n > 1 ? n - 1 : nil }
            guard st.connections.isEmpty, !st.drainWaiters.isEmpty else { return [] }
            defer { st.drainWaiters = [] }
            return st.drainWaiters
        }
        for w in waiters { w.resume() }
    }

    private func waitForConnectionsToClose() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let done = state.withLock { st -> Bool in
                if st.connections.isEmpty { return true }
                st.drainWaiters.append(c)
                return false
            }
            if done { c.resume() }
        }
    }
}

/// One connection. All mutable state is confined to the channel's event loop; the request's task
/// touches it only through hops to that loop (or directly when it already runs there).
final class HTTPConnectionHandler: ChannelInboundHandler, RemovableChannelHandler, @unchecked Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let server: HTTPServer
    let channel: any Channel
    private let eventLoop: any EventLoop
    private let maxBodyBytes: Int
    private let extraHeaders: [(String, String)]

    // Event-loop state.
    private var context: ChannelHandlerContext?
    private var remoteAddress: SocketAddress?
    private var remoteFetched = false
    private var head: HTTPRequestHead?
    private var body: ByteBuffer?
    private var tooLarge = false
    /// A request's head has arrived and its response has not ended.
    private var busy = false
    /// The server is shutting down: close after the current response.
    private var quiescing = false
    /// No further requests are served on this connection.
    private var closing = false
    private var closed = false
    private var task: Task<Void, Never>?
    /// Fulfilled when the channel becomes writable again (a streamed write waits on it).
    private var writable: EventLoopPromise<Void>?
    /// Whether the streamed response now being written keeps the connection open.
    private var streamKeepAlive = false
    /// A complete request is being answered: parts arriving now belong to pipelined requests.
    private var answering = false
    /// Parts of pipelined requests, served in order once the current response has ended.
    private var queued = CircularBuffer<HTTPServerRequestPart>()
    private var queuedBytes = 0

    // Slow clients: one deadline per connection, checked by one scheduled task.
    private let headerTimeout: TimeAmount
    private let bodyTimeout: TimeAmount
    private let idleTimeout: TimeAmount
    /// 0: no bound on the whole body's time; else bytes a second it must average.
    private let minBodyRate: Int
    /// When the current request's head arrived, and the body bytes received since.
    private var bodyStarted = NIODeadline.uptimeNanoseconds(0)
    private var bodyReceived = 0
    /// The shortest timeout: the timer never sleeps longer, so a deadline set later (always at
    /// least this far ahead) is never earlier than the pending check and needs no rescheduling.
    private let timerStep: TimeAmount
    /// When the connection is closed unless it moves on; nil while a request is answered.
    private var deadline: NIODeadline?
    private var deadlinePhase = Phase.head
    private var timer: Scheduled<Void>?
    /// Kept alive with no request started: the next raw byte starts the head phase.
    private var idle = false
    /// Bytes arrived while a request was answered: the next request has begun.
    private var nextRequestBegun = false

    enum Phase: String { case head, body, idle }

    init(server: HTTPServer, channel: any Channel) {
        self.server = server
        self.channel = channel
        self.eventLoop = channel.eventLoop
        self.maxBodyBytes = server.configuration.maxBodyBytes
        self.extraHeaders = server.configuration.extraHeaders
        self.headerTimeout = TimeAmount(server.configuration.headerTimeout)
        self.bodyTimeout = TimeAmount(server.configuration.bodyTimeout)
        self.idleTimeout = TimeAmount(server.configuration.idleTimeout)
        self.minBodyRate = max(0, server.configuration.minBodyBytesPerSecond)
        self.timerStep = max(.milliseconds(1), min(headerTimeout, bodyTimeout, idleTimeout))
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        // A fresh connection must deliver a whole request head within headerTimeout.
        setDeadline(.head, .now() + headerTimeout)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        markClosed()
        self.context = nil
    }

    // MARK: deadlines

    /// Moves the connection's deadline (event loop). Cheap: schedules only when no check is pending.
    @inline(__always)
    private func setDeadline(_ phase: Phase, _ at: NIODeadline) {
        deadline = at
        deadlinePhase = phase
        if timer == nil && !closed { armTimer(now: .now()) }
    }

    private func armTimer(now: NIODeadline) {
        guard let d = deadline else { return }
        timer = eventLoop.scheduleTask(deadline: min(d, now + timerStep)) { [self] in deadlineCheck() }
    }

    private func deadlineCheck() {
        timer = nil
        guard !closed, !closing, let d = deadline else { return }
        let now = NIODeadline.now()
        guard now >= d else {
            armTimer(now: now)
            return
        }
        closing = true
        server.connectionTimedOut()
        server.logger.debug("closing slow connection", metadata: [
            "phase": "\(deadlinePhase.rawValue)", "remote": "\(channel.remoteAddress.map { "\($0)" } ?? "?")",
        ])
        channel.close(promise: nil)
    }

    /// Raw bytes arrived (before HTTP decoding): on an idle kept-alive connection a request has
    /// begun, and its head must be complete within headerTimeout.
    @inline(__always)
    func requestBytesArrived() {
        if idle {
            idle = false
            setDeadline(.head, .now() + headerTimeout)
        } else if answering {
            nextRequestBegun = true
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        markClosed()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // Malformed HTTP has been answered with 400 by NIO's error handler; the connection is done.
        closing = true
        context.close(promise: nil)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable, let w = writable {
            writable = nil
            w.succeed(())
        }
        context.fireChannelWritabilityChanged()
    }

    private func markClosed() {
        guard !closed else { return }
        closed = true
        closing = true
        deadline = nil
        timer?.cancel()
        timer = nil
        task?.cancel()
        if let w = writable {
            writable = nil
            w.fail(ChannelError.ioOnClosedChannel)
        }
    }

    /// Called by the server's shutdown from any thread.
    func quiesce() {
        if eventLoop.inEventLoop {
            quiesceOnLoop()
        } else {
            eventLoop.execute { self.quiesceOnLoop() }
        }
    }

    private func quiesceOnLoop() {
        quiescing = true
        if !busy && !closed {
            closing = true
            channel.close(promise: nil)
        }
    }

    // MARK: requests

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if closing { return }
        let part = unwrapInboundIn(data)
        if answering || !queued.isEmpty {
            enqueue(part, context: context)
        } else {
            handle(part, context: context)
        }
    }

    /// Holds a pipelined request's part until the responses before it have ended. A client that
    /// pipelines more than a body limit's worth (plus 1 MiB) is cut off instead of buffered.
    private func enqueue(_ part: HTTPServerRequestPart, context: ChannelHandlerContext) {
        queuedBytes += Self.weight(part)
        guard queuedBytes <= maxBodyBytes + (1 << 20), queued.count < 10_000 else {
            closing = true
            queued.removeAll()
            context.close(promise: nil)
            return
        }
        queued.append(part)
    }

    private static func weight(_ part: HTTPServerRequestPart) -> Int {
        if case .body(let b) = part { return b.readableBytes + 64 }
        return 256
    }

    /// Serves queued pipelined parts until one of them starts a response (event loop).
    private func drainQueued(context: ChannelHandlerContext) {
        while !answering, !closing, let part = queued.popFirst() {
            queuedBytes -= Self.weight(part)
            handle(part, context: context)
        }
    }

    private func handle(_ part: HTTPServerRequestPart, context: ChannelHandlerContext) {
        switch part {
        case .head(let h):
            head = h
            body = nil
            tooLarge = false
            busy = true
            idle = false
            bodyStarted = .now()
            bodyReceived = 0
            setDeadline(.body, bodyStarted + bodyTimeout)
            if !remoteFetched {
                remoteFetched = true
                remoteAddress = context.channel.remoteAddress
            }
            if let cl = h.headers.first(name: "content-length"), let len = Int(cl), len > maxBodyBytes {
                // Refused by its announced length: answered now, not after reading it all.
                head = nil
                respondTooLarge(h, early: true, context: context)
            } else if let expect = h.headers.first(name: "expect"), expect.lowercased() == "100-continue" {
                let interim = HTTPResponseHead(version: h.version, status: .continue)
                context.writeAndFlush(wrapOutboundOut(.head(interim)), promise: nil)
            }
        case .body(var chunk):
            // Not `setDeadline`: a check is pending since the head (cheapest per chunk). The next
            // byte within bodyTimeout, and the whole body at minBodyRate (plus bodyTimeout).
            let gap = NIODeadline.now() + bodyTimeout
            if minBodyRate > 0 {
                bodyReceived += chunk.readableBytes
                let earned = TimeAmount.nanoseconds(Int64(min(bodyReceived, Int.max / 1_000_000_000)) * 1_000_000_000 / Int64(minBodyRate))
                deadline = min(gap, bodyStarted + bodyTimeout + earned)
            } else {
                deadline = gap
            }
            guard head != nil, !tooLarge else { return }
            if var b = body {
                body = nil
                if b.readableBytes + chunk.readableBytes > maxBodyBytes {
                    tooLarge = true
                } else {
                    b.writeBuffer(&chunk)
                    body = b
                }
            } else if chunk.readableBytes > maxBodyBytes {
                tooLarge = true
            } else {
                body = chunk
            }
        case .end:
            // No deadline while the request is answered (streams may last minutes).
            deadline = nil
            guard let h = head else { return }
            head = nil
            let b = body ?? ByteBuffer()
            body = nil
            if tooLarge {
                respondTooLarge(h, context: context)
                return
            }
            let request = HTTPServerRequest(head: h, body: b, remoteAddress: remoteAddress)
            let keepAlive = h.isKeepAlive && !quiescing
            answering = true
            nextRequestBegun = false
            server.requestStarted()
            let responder = server.responder
            task = Task {
                let response = await responder.respond(to: request)
                await self.send(response, for: h, keepAlive: keepAlive)
            }
        }
    }

    /// Answers 413 and ends the connection. `early`: refused by its head's Content-Length, before
    /// its body arrived; the answer goes out at once and the connection lingers: meshd stops
    /// sending (half-close) and drops what the client still sends until it closes or
    /// `bodyTimeout` passes, so the client reads the 413 instead of a reset.
    private func respondTooLarge(_ h: HTTPRequestHead, early: Bool = false, context: ChannelHandlerContext) {
        let path = String(h.uri.split(separator: "?", maxSplits: 1).first ?? "")
        let resp = server.responder.serverError(
            status: .payloadTooLarge,
            message: "request body exceeds the limit of \(maxBodyBytes) bytes",
            code: "request_too_large", path: path)
        busy = false
        // The connection may hold an unread body: answer and close it.
        guard case .buffer(let buf) = resp.body else {
            closing = true
            context.close(promise: nil)
            return
        }
        guard early else {
            writeWhole(status: resp.status, headers: resp.headers, body: buf, for: h, keepAlive: false, context: context)
            return
        }
        closing = true
        deadline = nil
        var head = responseHead(status: resp.status, headers: resp.headers, for: h, keepAlive: false)
        head.headers.replaceOrAdd(name: "Content-Length", value: String(buf.readableBytes))
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(buf))), promise: nil)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
            channel.close(mode: .output).whenFailure { _ in channel.close(promise: nil) }
        }
        eventLoop.scheduleTask(in: bodyTimeout) { channel.close(promise: nil) }
    }

    /// Finishes the bookkeeping of the request being answered (once per request).
    private func requestDone() {
        server.requestEnded()
        task = nil
        busy = false
        answering = false
    }

    private func responseHead(status: HTTPResponseStatus, headers: HTTPHeaders, for request: HTTPRequestHead, keepAlive: Bool) -> HTTPResponseHead {
        var head = HTTPResponseHead(version: request.version, status: status, headers: headers)
        for (n, v) in extraHeaders { head.headers.replaceOrAdd(name: n, value: v) }
        if !keepAlive { head.headers.replaceOrAdd(name: "Connection", value: "close") }
        return head
    }

    /// Writes a complete response in one flush (event loop).
    private func writeWhole(status: HTTPResponseStatus, headers: HTTPHeaders, body: ByteBuffer, for request: HTTPRequestHead,
                            keepAlive: Bool, context: ChannelHandlerContext) {
        var head = responseHead(status: status, headers: headers, for: request, keepAlive: keepAlive)
        head.headers.replaceOrAdd(name: "Content-Length", value: String(body.readableBytes))
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        if request.method != .HEAD {
            context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        }
        endResponse(keepAlive: keepAlive, context: context)
    }

    /// Ends the response, then serves the next pipelined request if one is queued; the request's
    /// state must already be reset.
    private func endResponse(keepAlive: Bool, context: ChannelHandlerContext) {
        if keepAlive && !quiescing {
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
            drainQueued(context: context)
            // Nothing queued to answer and no request parsed yet: the connection is idle, unless bytes
            // of a next request came while this one was answered (its head is then already due).
            if !answering && !closing && head == nil {
                if nextRequestBegun {
                    nextRequestBegun = false
                    setDeadline(.head, .now() + headerTimeout)
                } else {
                    idle = true
                    setDeadline(.idle, .now() + idleTimeout)
                }
            }
        } else {
            closing = true
            let channel = self.channel
            context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
        }
    }

    // MARK: the request's task

    private func send(_ response: HTTPServerResponse, for request: HTTPRequestHead, keepAlive: Bool) async {
        switch response.body {
        case .buffer(let buf):
            if eventLoop.inEventLoop {
                sendWhole(response.status, response.headers, buf, for: request, keepAlive: keepAlive)
            } else {
                let status = response.status, headers = response.headers
                eventLoop.execute { self.sendWhole(status, headers, buf, for: request, keepAlive: keepAlive) }
            }
        case .stream(let produce):
            // An HTTP/1.0 streamed body is delimited by closing the connection.
            let keep = keepAlive && !(request.version.major == 1 && request.version.minor == 0)
            let status = response.status, headers = response.headers
            let started: Bool
            if eventLoop.inEventLoop {
                started = startStream(status, headers, for: request, keepAlive: keep)
            } else {
                started = (try? await eventLoop.submit { self.startStream(status, headers, for: request, keepAlive: keep) }.get()) ?? false
            }
            guard started else { return }
            let ok: Bool
            do {
                try await produce(ResponseBodyWriter { bytes in try await self.writeChunk(bytes) })
                ok = true
            } catch {
                ok = false
            }
            if eventLoop.inEventLoop {
                endStream(ok: ok)
            } else {
                eventLoop.execute { self.endStream(ok: ok) }
            }
        }
    }

    private func sendWhole(_ status: HTTPResponseStatus, _ headers: HTTPHeaders, _ body: ByteBuffer, for request: HTTPRequestHead, keepAlive: Bool) {
        requestDone()
        guard !closed, let context else { return }
        writeWhole(status: status, headers: headers, body: body, for: request, keepAlive: keepAlive && !quiescing, context: context)
    }

    /// Writes the head of a streamed response; false when the connection is gone (the request is then done).
    private func startStream(_ status: HTTPResponseStatus, _ headers: HTTPHeaders, for request: HTTPRequestHead, keepAlive: Bool) -> Bool {
        guard !closed, let context else {
            requestDone()
            return false
        }
        streamKeepAlive = keepAlive && !quiescing
        var head = responseHead(status: status, headers: headers, for: request, keepAlive: streamKeepAlive)
        head.headers.remove(name: "Content-Length")
        context.writeAndFlush(wrapOutboundOut(.head(head)), promise: nil)
        return true
    }

    private func writeChunk(_ bytes: [UInt8]) async throws {
        if eventLoop.inEventLoop {
            if let wait = try writeChunkOnLoop(bytes) { try await wait.get() }
        } else {
            let wait = try await eventLoop.submit { try self.writeChunkOnLoop(bytes) }.get()
            if let wait { try await wait.get() }
        }
    }

    /// Writes one chunk; returns a future to wait on when the channel is not writable (backpressure).
    private func writeChunkOnLoop(_ bytes: [UInt8]) throws -> EventLoopFuture<Void>? {
        guard !closed, let context else { throw ChannelError.ioOnClosedChannel }
        var buf = context.channel.allocator.buffer(capacity: bytes.count)
        buf.writeBytes(bytes)
        context.writeAndFlush(wrapOutboundOut(.body(.byteBuffer(buf))), promise: nil)
        if context.channel.isWritable { return nil }
        if let w = writable { return w.futureResult }
        let p = context.eventLoop.makePromise(of: Void.self)
        writable = p
        return p.futureResult
    }

    private func endStream(ok: Bool) {
        requestDone()
        guard !closed, let context else { return }
        if ok {
            endResponse(keepAlive: streamKeepAlive, context: context)
        } else {
            // The producer gave up mid-body: the connection is unusable and the body must not look complete.
            closing = true
            context.close(promise: nil)
        }
    }
}

/// First in a connection's pipeline: forwards reads unchanged and tells the connection bytes
/// arrived (it only matters on an idle kept-alive connection).
final class RequestBytesWatcher: ChannelInboundHandler, RemovableChannelHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let connection: HTTPConnectionHandler

    init(connection: HTTPConnectionHandler) {
        self.connection = connection
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        connection.requestBytesArrived()
        context.fireChannelRead(data)
    }
}

/// The only handler of a connection over `maxConnections`: writes a complete 503 once active,
/// half-closes, and closes fully when the client does or after a second. What the client sent is
/// read and dropped, so closing does not reset the connection before the 503 is read.
final class RefuseConnectionHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let response: [UInt8]

    init(response: [UInt8]) {
        self.response = response
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { refuse(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        refuse(context: context)
        context.fireChannelActive()
    }

    private func refuse(context: ChannelHandlerContext) {
        let channel = context.channel
        let buffer = channel.allocator.buffer(bytes: response)
        context.writeAndFlush(wrapOutboundOut(buffer)).whenComplete { _ in
            channel.close(mode: .output, promise: nil)
        }
        channel.eventLoop.scheduleTask(in: .seconds(1)) { channel.close(promise: nil) }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {}

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
