import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// A request as seen by the test server.
struct ServerRequest: Sendable {
    var method: String
    var uri: String
    var headers: [(String, String)]
    var body: [UInt8]

    func header(_ name: String) -> String? {
        headers.first { $0.0.lowercased() == name.lowercased() }?.1
    }
}

/// What the server does with a request.
enum ServerAction: Sendable {
    /// Complete response with `Content-Length`.
    case respond(status: Int, headers: [(String, String)], body: [UInt8])
    /// The route keeps the ``ResponseWriter`` and answers (or never answers) on its own.
    case manual
    /// Streams `total` bytes of ``TestPattern`` (chunked) as fast as the client reads them.
    case pump(total: Int)
}

/// Deterministic body bytes: byte at stream offset `i` is `i % 251`.
enum TestPattern {
    static let period = 251
    static let blockSize = 64 * 1024
    /// `period + blockSize` bytes, so any window of `blockSize` bytes can start at `offset % period`.
    static let block: [UInt8] = (0..<(period + blockSize)).map { UInt8($0 % period) }
}

/// Writes a response from any thread; writes are ordered.
final class ResponseWriter: Sendable {
    let channel: any Channel

    init(channel: any Channel) { self.channel = channel }

    func head(status: Int = 200, headers: [(String, String)] = []) {
        let head = HTTPResponseHead(version: .http1_1, status: .init(statusCode: status), headers: HTTPHeaders(headers))
        channel.writeAndFlush(HTTPServerResponsePart.head(head), promise: nil)
    }

    func chunk(_ bytes: [UInt8]) {
        channel.writeAndFlush(HTTPServerResponsePart.body(.byteBuffer(ByteBuffer(bytes: bytes))), promise: nil)
    }

    func chunk(_ text: String) { chunk(Array(text.utf8)) }

    /// Several body chunks written with one flush (they leave in one TCP segment on loopback).
    func burst(_ texts: [String]) {
        let channel = self.channel
        channel.eventLoop.execute {
            for text in texts {
                channel.write(HTTPServerResponsePart.body(.byteBuffer(ByteBuffer(bytes: Array(text.utf8)))), promise: nil)
            }
            channel.flush()
        }
    }

    func end() { channel.writeAndFlush(HTTPServerResponsePart.end(nil), promise: nil) }

    func close() { channel.close(promise: nil) }
}

struct ServerStats: Sendable {
    var connectionsAccepted = 0
    var connectionsClosed = 0
    var requests = 0
    var pumpedBytes = 0
    var lastClose: ContinuousClock.Instant?
}

/// Minimal HTTP/1.1 keep-alive server on 127.0.0.1 with an ephemeral port.
final class TestHTTPServer: Sendable {
    typealias Route = @Sendable (ServerRequest, ResponseWriter) -> ServerAction

    let group: MultiThreadedEventLoopGroup
    let channel: any Channel
    let port: Int
    private let box: StatsBox

    var baseURL: String { "http://127.0.0.1:\(port)" }
    var snapshot: ServerStats { box.stats.withLock { $0 } }

    private init(group: MultiThreadedEventLoopGroup, channel: any Channel, box: StatsBox) {
        self.group = group
        self.channel = channel
        self.port = channel.localAddress?.port ?? 0
        self.box = box
    }

    static func start(route: @escaping Route) async throws -> TestHTTPServer {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let box = StatsBox()
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(TestHandler(stats: box, route: route))
                }
            }
            .bind(host: "127.0.0.1", port: 0)
            .get()
        return TestHTTPServer(group: group, channel: channel, box: box)
    }

    func shutdown() async {
        try? await channel.close()
        try? await group.shutdownGracefully()
    }

    /// Polls `condition` every 5 ms until it holds or `timeout` elapses; returns whether it held.
    func waitFor(timeout: Duration = .seconds(10), _ condition: (ServerStats) -> Bool) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if condition(snapshot) { return true }
            try? await Task.sleep(for: .milliseconds(5))
        }
        return condition(snapshot)
    }
}

/// Counters shared by all connections of one server.
final class StatsBox: Sendable {
    let stats = Mutex(ServerStats())
    func update(_ body: (inout ServerStats) -> Void) {
        stats.withLock { body(&$0) }
    }
}

private final class TestHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let stats: StatsBox
    let route: TestHTTPServer.Route
    var head: HTTPRequestHead?
    var body: [UInt8] = []
    var pumpRemaining = 0
    var pumpOffset = 0
    var pumping = false

    init(stats: StatsBox, route: @escaping TestHTTPServer.Route) {
        self.stats = stats
        self.route = route
    }

    func channelActive(context: ChannelHandlerContext) {
        stats.update { $0.connectionsAccepted += 1 }
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        stats.update {
            $0.connectionsClosed += 1
            $0.lastClose = .now
        }
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h):
            head = h
            body = []
        case .body(var buffer):
            body += buffer.readBytes(length: buffer.readableBytes) ?? []
        case .end:
            guard let h = head else { return }
            head = nil
            stats.update { $0.requests += 1 }
            let request = ServerRequest(
                method: h.method.rawValue, uri: h.uri, headers: h.headers.map { ($0.name, $0.value) }, body: body)
            switch route(request, ResponseWriter(channel: context.channel)) {
            case .respond(let status, let headers, let body):
                var responseHeaders = HTTPHeaders(headers)
                responseHeaders.replaceOrAdd(name: "content-length", value: "\(body.count)")
                let responseHead = HTTPResponseHead(version: .http1_1, status: .init(statusCode: status), headers: responseHeaders)
                context.write(wrapOutboundOut(.head(responseHead)), promise: nil)
                context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: body)))), promise: nil)
                context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
            case .manual:
                break
            case .pump(let total):
                context.writeAndFlush(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok))), promise: nil)
                pumpRemaining = total
                pumpOffset = 0
                pump(context: context)
            }
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if pumpRemaining > 0, context.channel.isWritable {
            pump(context: context)
        }
        context.fireChannelWritabilityChanged()
    }

    private func pump(context: ChannelHandlerContext) {
        // Writes can re-enter via channelWritabilityChanged; only the outermost call loops.
        if pumping { return }
        pumping = true
        defer { pumping = false }
        while pumpRemaining > 0, context.channel.isWritable, context.channel.isActive {
            let count = min(TestPattern.blockSize, pumpRemaining)
            let start = pumpOffset % TestPattern.period
            let buffer = ByteBuffer(bytes: TestPattern.block[start..<(start + count)])
            pumpOffset += count
            pumpRemaining -= count
            stats.update { $0.pumpedBytes += count }
            context.writeAndFlush(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        }
        if pumpRemaining == 0, context.channel.isActive {
            pumpRemaining = -1
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        }
    }
}
