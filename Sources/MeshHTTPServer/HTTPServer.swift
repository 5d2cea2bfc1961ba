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
    public let head: HTTPRequestHead
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

    init(outbound: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>, eventLoop: any EventLoop) {
        let unsynced = Mutex(0)
        sink = { bytes in
            try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: bytes))))
            // The outbound writer hands chunks to the event loop asynchronously and learns that the
            // channel became unwritable only once the loop has written them; without a round trip a
            // fast producer queues megabytes ahead of that signal. One round trip per 64 KiB bounds
            // that excess without paying a hop for every token-sized chunk.
            let due = unsynced.withLock { n -> Bool in
                n += bytes.count
                if n < Self.syncEveryBytes { return false }
                n = 0
                return true
            }
            if due { try await eventLoop.submit {}.get() }
        }
    }

    static let syncEveryBytes = 64 * 1024

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

    public init(host: String, port: Int, maxBodyBytes: Int = 8 << 20, extraHeaders: [(String, String)] = []) {
        self.host = host
        self.port = port
        self.unixSocketPath = nil
        self.maxBodyBytes = maxBodyBytes
        self.extraHeaders = extraHeaders
    }
}

/// The HTTP/1.1 data plane on SwiftNIO: keep-alive, bounded bodies, streamed responses with
/// channel-writability backpressure, client disconnect → task cancellation, graceful shutdown.
public final class HTTPServer: Sendable {
    public let configuration: HTTPServerConfiguration
    private let group: any EventLoopGroup
    private let responder: any HTTPResponder
    private let logger: Logger
    private let state = Mutex(State())

    private struct State {
        var serverChannel: (any Channel)?
        var connections: [ObjectIdentifier: ConnectionEntry] = [:]
        var shuttingDown = false
        var inFlight = 0
    }

    private struct ConnectionEntry {
        let channel: any Channel
        var busy: Bool
    }

    public init(configuration: HTTPServerConfiguration, group: any EventLoopGroup, responder: any HTTPResponder, logger: Logger) {
        self.configuration = configuration
        self.group = group
        self.responder = responder
        self.logger = logger
    }

    /// Requests being answered now.
    public var inFlight: Int { state.withLock { $0.inFlight } }

    /// Binds and serves until ``shutdown(grace:)``. `onBound` gets the bound address (port 0 → real port).
    public func run(onBound: @Sendable (SocketAddress) -> Void = { _ in }) async throws {
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 512)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.writeBufferWaterMark, value: .init(low: 32 * 1024, high: 64 * 1024))
        let initializer: @Sendable (any Channel) -> EventLoopFuture<NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>> = { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                return try NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>(wrappingChannelSynchronously: channel)
            }
        }
        let server: NIOAsyncChannel<NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>, Never>
        if let path = configuration.unixSocketPath {
            server = try await bootstrap.bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true, childChannelInitializer: initializer)
            // Connecting needs write permission on the socket: only the owner gets it.
            _ = chmod(path, 0o600)
        } else {
            server = try await bootstrap.childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
                .bind(host: configuration.host, port: configuration.port, childChannelInitializer: initializer)
        }
        let stop = state.withLock { st -> Bool in
            st.serverChannel = server.channel
            return st.shuttingDown
        }
        if stop { server.channel.close(promise: nil) }
        if let addr = server.channel.localAddress { onBound(addr) }
        logger.info("http listening", metadata: ["address": "\(server.channel.localAddress.map { "\($0)" } ?? "?")"])

        try await withThrowingDiscardingTaskGroup { group in
            try await server.executeThenClose { inbound in
                for try await connection in inbound {
                    group.addTask { await self.handle(connection) }
                }
            }
        }
    }

    /// Stops accepting, lets in-flight requests finish for up to `grace`, then closes everything.
    public func shutdown(grace: Duration) async {
        let (server, idle) = state.withLock { st -> ((any Channel)?, [any Channel]) in
            st.shuttingDown = true
            return (st.serverChannel, st.connections.values.filter { !$0.busy }.map(\.channel))
        }
        if let server {
            // Stop accepting, then let the event loops finish handing over connections already accepted
            // before the listener closes: NIO drops one still being set up at that moment, and the
            // dropped NIOAsyncChannel traps in NIOAsyncWriter's deinit (apple/swift-nio#2813).
            try? await server.setOption(ChannelOptions.autoRead, value: false).get()
            for _ in 0..<3 {
                for loop in group.makeIterator() { try? await loop.submit {}.get() }
            }
        }
        try? await server?.close()
        for c in idle { c.close(promise: nil) }
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: grace)
        while clock.now < deadline {
            if state.withLock({ $0.connections.isEmpty }) { return }
            try? await Task.sleep(for: .milliseconds(20))
        }
        let rest = state.withLock { Array($0.connections.values.map(\.channel)) }
        if !rest.isEmpty { logger.warning("grace period over; closing busy connections", metadata: ["count": "\(rest.count)"]) }
        for c in rest { c.close(promise: nil) }
    }

    // MARK: connections

    private func handle(_ connection: NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>) async {
        let channel = connection.channel
        let key = ObjectIdentifier(channel)
        let accepted = state.withLock { st -> Bool in
            if st.shuttingDown { return false }
            st.connections[key] = ConnectionEntry(channel: channel, busy: false)
            return true
        }
        guard accepted else {
            // Finish the async channel's writer as well as closing it: NIO traps when a wrapped
            // channel is dropped unfinished.
            try? await connection.executeThenClose { _, outbound in outbound.finish() }
            return
        }
        defer { _ = state.withLock { $0.connections.removeValue(forKey: key) } }
        // One task serves the current request; the channel closing (client gone) cancels it.
        let current = CurrentTask()
        channel.closeFuture.whenComplete { _ in current.cancel() }
        let remote = channel.remoteAddress

        do {
            try await connection.executeThenClose { inbound, outbound in
                var head: HTTPRequestHead?
                var body = ByteBuffer()
                var tooLarge = false
                for try await part in inbound {
                    switch part {
                    case .head(let h):
                        head = h
                        body.clear()
                        tooLarge = false
                        self.setBusy(key, true)
                        if let len = h.headers.first(name: "content-length").flatMap(Int.init), len > configuration.maxBodyBytes {
                            tooLarge = true
                        } else if h.headers.first(name: "expect")?.lowercased() == "100-continue" {
                            try await outbound.write(.head(HTTPResponseHead(version: h.version, status: .continue)))
                        }
                    case .body(var chunk):
                        if tooLarge { continue }
                        if body.readableBytes + chunk.readableBytes > configuration.maxBodyBytes {
                            tooLarge = true
                            body.clear()
                        } else {
                            body.writeBuffer(&chunk)
                        }
                    case .end:
                        guard let h = head else { continue }
                        head = nil
                        if tooLarge {
                            let path = String(h.uri.split(separator: "?", maxSplits: 1).first ?? "")
                            let resp = responder.serverError(
                                status: .payloadTooLarge,
                                message: "request body exceeds the limit of \(configuration.maxBodyBytes) bytes",
                                code: "request_too_large", path: path)
                            // The connection may hold an unread body: answer and close it.
                            try await self.write(resp, for: h, to: outbound, on: channel.eventLoop, keepAlive: false, current: current)
                            return
                        }
                        let request = HTTPServerRequest(head: h, body: body, remoteAddress: remote)
                        body = ByteBuffer()
                        let keepAlive = h.isKeepAlive && !self.isShuttingDown
                        self.beginRequest()
                        let response = await current.run { await self.responder.respond(to: request) }
                        let ok: Bool
                        do {
                            try await self.write(response, for: h, to: outbound, on: channel.eventLoop,
                                                 keepAlive: keepAlive && !self.isShuttingDown, current: current)
                            ok = true
                        } catch {
                            ok = false
                        }
                        self.endRequest()
                        self.setBusy(key, false)
                        if !ok || !keepAlive || self.isShuttingDown { return }
                    }
                }
            }
        } catch {
            logger.debug("connection ended", metadata: ["error": "\(error)"])
        }
    }

    private var isShuttingDown: Bool { state.withLock { $0.shuttingDown } }
    private func setBusy(_ key: ObjectIdentifier, _ busy: Bool) { state.withLock { $0.connections[key]?.busy = busy } }
    private func beginRequest() { state.withLock { $0.inFlight += 1 } }
    private func endRequest() { state.withLock { $0.inFlight -= 1 } }

    private func write(_ response: HTTPServerResponse, for request: HTTPRequestHead,
                       to outbound: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>, on eventLoop: any EventLoop,
                       keepAlive: Bool, current: CurrentTask) async throws {
        var head = HTTPResponseHead(version: request.version, status: response.status, headers: response.headers)
        for (n, v) in configuration.extraHeaders { head.headers.replaceOrAdd(name: n, value: v) }
        if !keepAlive { head.headers.replaceOrAdd(name: "Connection", value: "close") }
        switch response.body {
        case .buffer(let buf):
            head.headers.replaceOrAdd(name: "Content-Length", value: "\(buf.readableBytes)")
            if request.method == .HEAD {
                try await outbound.write(contentsOf: [.head(head), .end(nil)])
            } else {
                try await outbound.write(contentsOf: [.head(head), .body(.byteBuffer(buf)), .end(nil)])
            }
        case .stream(let produce):
            head.headers.remove(name: "Content-Length")
            try await outbound.write(.head(head))
            let writer = ResponseBodyWriter(outbound: outbound, eventLoop: eventLoop)
            let failed = await current.run { () async -> Bool in
                do {
                    try await produce(writer)
                    return false
                } catch {
                    return true
                }
            }
            if failed {
                // The client went away or the producer gave up mid-body: the connection is unusable.
                throw CancellationError()
            }
            try await outbound.write(.end(nil))
        }
    }
}

/// The task serving a connection, so a closing channel can cancel the request being served
/// without spawning a task per request.
final class CurrentTask: Sendable {
    private struct State: @unchecked Sendable {
        // Only set while `run` is executing on that task, and cancelled under the lock, so the
        // reference never outlives the task it names.
        var task: UnsafeCurrentTask?
        var cancelled = false
    }
    private let state = Mutex(State())

    /// Runs `body` on the current task; ``cancel()`` meanwhile cancels that task.
    func run<T: Sendable>(_ body: @Sendable () async -> T) async -> T {
        let cancelled = withUnsafeCurrentTask { t in
            state.withLock { st -> Bool in
                st.task = t
                return st.cancelled
            }
        }
        if cancelled { withUnsafeCurrentTask { $0?.cancel() } }
        defer { state.withLock { $0.task = nil } }
        return await body()
    }

    func cancel() {
        state.withLock { st in
            st.cancelled = true
            st.task?.cancel()
        }
    }
}
