import Foundation
import Logging
import MeshCore
import MeshEngines
import MeshHTTPClient
import MeshHTTPServer
import MeshNode
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization
import Testing

// The node's wiring, in process: the real InferenceProxy, EngineRegistry and libcurl client in
// front of fake OpenAI-compatible engines served by MeshHTTPServer on loopback.

let nodeTestLogger: Logger = {
    var l = Logger(label: "meshd.node.tests")
    l.logLevel = ProcessInfo.processInfo.environment["MESHD_TEST_LOG"] != nil ? .debug : .critical
    return l
}()

/// How a fake engine answers chat completions.
enum FakeMode: Sendable {
    case ok
    case status(Int)
    /// Streams only: the head and a role chunk, then the connection breaks.
    case dieBeforeOutput
    /// Holds each request until `release()` is called (to see concurrency).
    case held
}

/// A fake llama-server: `/v1/models` (`models`, default `m`), `/props` (`total_slots` when given), chat
/// completions. Under a base URL ending `/v1` it is also a fake OpenAI-compatible cloud provider.
final class FakeEngine: Sendable {
    struct State {
        var mode: FakeMode = .ok
        var requests = 0
        var open = 0
        var peakOpen = 0
        var released = 0
        var port = 0
        /// The `id_slot` of the last request, if it had one.
        var lastSlot: Int?
        /// The answer's content in pieces (streamed one event each), as they stand in JSON; nil: `hello from PORT`.
        var pieces: [String]?
        /// Whether a non-streamed answer carries llama-server's `timings` (read by the full parser).
        var timings = false
        /// The `model` and `Authorization` of the last chat request (a fake cloud provider checks both).
        var lastModel: String?
        var lastAuthorization: String?
    }
    let responder: Responder
    private let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let server: HTTPServer
    let port: Int

    init(mode: FakeMode = .ok, slots: Int? = nil, models: [String] = ["m"]) async throws {
        responder = Responder(slots: slots, models: models)
        responder.state.withLock { $0.mode = mode }
        let server = HTTPServer(configuration: HTTPServerConfiguration(host: "127.0.0.1", port: 0), group: group,
                                responder: responder, logger: nodeTestLogger)
        self.server = server
        let bound = AsyncStream.makeStream(of: Int.self)
        Task { try await server.run { addr in bound.continuation.yield(addr.port ?? 0) } }
        var it = bound.stream.makeAsyncIterator()
        port = await it.next() ?? 0
        responder.state.withLock { [port] in $0.port = port }
    }

    var url: String { "http://127.0.0.1:\(port)" }
    var id: String { "openai@127.0.0.1:\(port)" }
    var requests: Int { responder.state.withLock { $0.requests } }
    var peakOpen: Int { responder.state.withLock { $0.peakOpen } }
    var open: Int { responder.state.withLock { $0.open } }
    var lastSlot: Int? { responder.state.withLock { $0.lastSlot } }
    var lastModel: String? { responder.state.withLock { $0.lastModel } }
    var lastAuthorization: String? { responder.state.withLock { $0.lastAuthorization } }
    func set(_ mode: FakeMode) { responder.state.withLock { $0.mode = mode } }
    func release(_ n: Int) { responder.state.withLock { $0.released += n } }
    /// Answers with `pieces` (raw JSON string contents), non-streamed answers with `timings` or without.
    func answer(_ pieces: [String], timings: Bool = false) {
        responder.state.withLock {
            $0.pieces = pieces
            $0.timings = timings
        }
    }

    /// Stops listening (idempotent): new connections are refused.
    func stop() async {
        await server.shutdown(grace: .milliseconds(100))
        try? await Task.sleep(for: .milliseconds(20))
    }

    /// Stops and frees the event loop.
    func close() async {
        await stop()
        try? await group.shutdownGracefully()
    }

    final class Responder: HTTPResponder, Sendable {
        let state = Mutex(State())
        let slots: Int?
        let models: [String]
        init(slots: Int?, models: [String]) {
            self.slots = slots
            self.models = models
        }

        func respond(to request: HTTPServerRequest) async -> HTTPServerResponse {
            switch request.path {
            case "/v1/models":
                return .json(.ok, ["object": "list", "data": .array(models.map { ["id": .string($0), "object": "model"] })])
            case "/props":
                guard let slots else { return .text(.notFound, "no") }
                return .json(.ok, ["total_slots": .integer(slots)])
            case "/v1/chat/completions":
                break
            default:
                return .text(.notFound, "not found")
            }
            let parsed = try? JSONParser.parse(request.bodyBytes)
            let stream = parsed?["stream"]?.boolValue ?? false
            let (mode, ticket, pieces, timings) = state.withLock { s -> (FakeMode, Int, [String], Bool) in
                s.lastSlot = parsed?["id_slot"]?.intValue
                s.lastModel = parsed?["model"]?.stringValue
                s.lastAuthorization = request.header("authorization")
                s.requests += 1
                s.open += 1
                s.peakOpen = max(s.peakOpen, s.open)
                return (s.mode, s.requests, s.pieces ?? ["hello from \(s.port)"], s.timings)
            }
            defer { state.withLock { $0.open -= 1 } }
            switch mode {
            case .status(let code):
                return .json(HTTPResponseStatus(statusCode: code), ["error": ["message": .string("fake failure \(code)"), "type": "server_error"]])
            case .held:
                while state.withLock({ $0.released < ticket }) {
                    try? await Task.sleep(for: .milliseconds(5))
                    if Task.isCancelled { break }
                }
            case .ok, .dieBeforeOutput:
                break
            }
            let meta = #""id":"c1","object":"chat.completion.chunk","created":1,"model":"m""#
            if !stream {
                let extra = timings ? #","timings":{"prompt_n":3,"prompt_ms":1.5}"# : ""
                return .bytes(.ok, Array(#"{"id":"c1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"\#(pieces.joined())"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}\#(extra)}"#.utf8),
                              contentType: "application/json")
            }
            return HTTPServerResponse(status: .ok, headers: ["Content-Type": "text/event-stream"], body: .stream { w in
                try await w.write(Array("data: {\(meta),\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null},\"finish_reason\":null}]}\n\n".utf8))
                if case .dieBeforeOutput = mode {
                    try await Task.sleep(for: .milliseconds(20))
                    throw CancellationError()  // the server cuts the connection mid-body
                }
                for piece in pieces {
                    try await w.write(Array("data: {\(meta),\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\(piece)\"},\"finish_reason\":null}]}\n\n".utf8))
                }
                try await w.write(Array("data: {\(meta),\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n".utf8))
            })
        }

        func serverError(status: HTTPResponseStatus, message: String, code: String, path: String) -> HTTPServerResponse {
            .text(status, message)
        }
    }
}

/// A TCP socket bound to a loopback port and never listening: connecting to the port is refused,
/// and nothing else can bind it while this lives.
final class PortBlocker: Sendable {
    let fd: Int32
    init?(port: Int) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return nil }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard rc == 0 else {
            Glibc.close(fd)
            return nil
        }
        self.fd = fd
    }
    func close() { Glibc.close(fd) }
}

/// A listener that accepts connections and closes each as soon as the request arrives (an
/// engine that crashed while reading it: curl sees "Empty reply from server").
final class EmptyReplyServer: Sendable {
    final class Closer: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        func channelRead(context: ChannelHandlerContext, data: NIOAny) { context.close(promise: nil) }
    }
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let channel: any Channel
    init(port: Int) async throws {
        channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { ch in ch.eventLoop.makeCompletedFuture { try ch.pipeline.syncOperations.addHandler(Closer()) } }
            .bind(host: "127.0.0.1", port: port).get()
    }
    var url: String { "http://127.0.0.1:\(channel.localAddress?.port ?? 0)" }
    func stop() async {
        try? await channel.close().get()
        try? await group.shutdownGracefully()
    }
}

/// A proxy over engines at `urls` (in routing order: ties go to the first).
struct ProxyRig {
    let client: CurlHTTPClient
    let registry: EngineRegistry
    let proxy: InferenceProxy

    init(_ urls: [String], limits: [Int?] = [], routing: RoutingSettings = RoutingSettings(), cache: CacheShadows? = nil,
         queue: MeshQueue? = nil) async throws {
        client = try CurlHTTPClient(configuration: HTTPClientConfiguration(connectTimeout: .seconds(1), firstByteTimeout: .seconds(10),
                                                                           idleTimeout: .seconds(10), maxConnectionsPerHost: 0))
        let engines = urls.enumerated().map { i, u in
            EngineConfig(kind: .openai, url: u, maxConcurrency: i < limits.count ? limits[i] : nil)
        }
        registry = EngineRegistry(engines: engines, httpClient: client, logger: nodeTestLogger, pollInterval: .seconds(60))
        await registry.start()
        proxy = InferenceProxy(nodeName: "n1", engines: registry, client: client, metrics: NodeMetrics(), clock: SystemWallClock(),
                               timeouts: TimeoutConfig(), logger: nodeTestLogger, routing: routing, cache: cache, queue: queue)
    }

    /// Sends a chat request; returns status, headers and the whole body (a stream drained).
    func chat(stream: Bool, messages: String = #"[{"role":"user","content":"hi"}]"#, headers extra: [(String, String)] = []) async -> (Int, HTTPHeaders, String) {
        let body = #"{"model":"m","stream":\#(stream),"messages":\#(messages)}"#
        var headers: HTTPHeaders = ["Content-Type": "application/json"]
        headers.add(contentsOf: extra)
        let head = HTTPRequestHead(version: .http1_1, method: .POST, uri: "/v1/chat/completions", headers: headers)
        let r = await Reply.read(await proxy.handle(route: .openaiChat, request: HTTPServerRequest(head: head, body: ByteBuffer(string: body))))
        return (r.status, r.headers, r.text)
    }

    func stop() async {
        await registry.shutdown()
        client.shutdown()
    }
}

@Suite(.timeLimit(.minutes(1))) struct ProxyFailoverTests {
    /// How the first engine fails once the proxy has seen it healthy (it is polled only at start).
    enum Death: CaseIterable, Sendable { case refused, emptyReply, badGateway, internalError }

    @Test(arguments: Death.allCases, [false, true])
    func aFailedEngineIsRetriedOnTheNextAndMarkedAtOnce(death: Death, stream: Bool) async throws {
        let first = try await FakeEngine()
        let good = try await FakeEngine()
        let rig = try await ProxyRig([first.url, good.url])
        #expect(rig.registry.snapshot(first.id)?.healthy == true)
        var empty: EmptyReplyServer?
        var blocker: PortBlocker?
        defer { blocker?.close() }
        switch death {
        case .refused:
            await first.stop()
            // Bound, never listening: connections are refused, and no server another test starts
            // meanwhile can take the port (one did: this request then hung on its held engine).
            blocker = PortBlocker(port: first.port)
        case .emptyReply:
            await first.stop()
            empty = try await EmptyReplyServer(port: first.port)
        case .badGateway:
            first.set(.status(502))
        case .internalError:
            first.set(.status(500))
        }
        let (status, headers, body) = await rig.chat(stream: stream)
        #expect(status == 200)
        #expect(headers.first(name: "X-Meshd-Engine") == good.id)
        #expect(body.contains("hello from \(good.port)"))
        #expect(good.requests == 1)
        // Out of rotation now, not at the next poll.
        #expect(rig.registry.snapshot(first.id)?.healthy == false)
        #expect(rig.registry.snapshot(first.id)?.load.inFlight == 0)
        // The next request goes straight to the good engine.
        let (again, headers2, _) = await rig.chat(stream: stream)
        #expect(again == 200 && headers2.first(name: "X-Meshd-Engine") == good.id && good.requests == 2)
        await rig.stop()
        await first.close()
        await good.close()
        await empty?.stop()
    }

    @Test(arguments: [501, 503]) func aMissingCapabilityOrOverloadIsRetriedButDoesNotMarkTheEngine(code: Int) async throws {
        let bad = try await FakeEngine(mode: .status(code))
        let good = try await FakeEngine()
        let rig = try await ProxyRig([bad.url, good.url])
        let (status, headers, _) = await rig.chat(stream: false)
        #expect(status == 200 && headers.first(name: "X-Meshd-Engine") == good.id)
        #expect(rig.registry.snapshot(bad.id)?.healthy == true)
        // Overloaded with one request open: meshd now sends it one at a time (it reports no slots).
        #expect(rig.registry.snapshot(bad.id)?.load.limit == (code == 503 ? 1 : nil))
        await rig.stop()
        await bad.close()
        await good.close()
    }

    @Test func aStreamThatDiesBeforeItsFirstTokenIsRetriedUnseen() async throws {
        let dying = try await FakeEngine(mode: .dieBeforeOutput)
        let good = try await FakeEngine()
        let rig = try await ProxyRig([dying.url, good.url])
        let (status, headers, body) = await rig.chat(stream: true)
        #expect(status == 200 && headers.first(name: "X-Meshd-Engine") == good.id)
        // The client sees one clean stream: one role chunk, the good engine's text, [DONE], no error event.
        #expect(body.components(separatedBy: "\"role\"").count == 2)
        #expect(body.contains("hello from \(good.port)") && body.hasSuffix("data: [DONE]\n\n") && !body.contains("error"))
        #expect(dying.requests == 1)
        #expect(rig.registry.snapshot(dying.id)?.healthy == false)
        await rig.stop()
        await dying.close()
        await good.close()
    }

    @Test(arguments: [false, true]) func whenEveryEngineFailsTheErrorNamesEachOne(stream: Bool) async throws {
        let a = try await FakeEngine(mode: .status(502))
        let b = try await FakeEngine(mode: stream ? .dieBeforeOutput : .status(500))
        let rig = try await ProxyRig([a.url, b.url])
        let (status, _, body) = await rig.chat(stream: stream)
        #expect(status == 502)
        #expect(body.contains("n1/\(a.id) (status 502"))
        #expect(body.contains("n1/\(b.id) ("))
        #expect(a.requests == 1 && b.requests == 1)
        await rig.stop()
        await a.close()
        await b.close()
    }

    @Test func openRequestsFollowTheEngineSlotsAndTheRestWaitInMeshd() async throws {
        let engine = try await FakeEngine(mode: .held, slots: 2)
        let rig = try await ProxyRig([engine.url])
        // Its slots come from a poll; under the parallel suite on 2 cores the first one can time out
        // (a CI run saw it), and the next one tells them.
        let polled = ContinuousClock.now + .seconds(20)
        while rig.registry.snapshot(engine.id)?.load.limit != 2 && ContinuousClock.now < polled {
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(rig.registry.snapshot(engine.id)?.load.limit == 2)
        var results: [Int] = []
        try await withThrowingTaskGroup(of: Int.self) { g in
            for i in 0..<6 {
                g.addTask { await rig.chat(stream: i % 2 == 0).0 }
            }
            // 2 open at the engine, 4 waiting in meshd's queue, visible in the snapshot.
            let deadline = ContinuousClock.now + .seconds(10)
            while (rig.registry.snapshot(engine.id)?.load.queued != 4 || engine.open != 2) && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(10))
            }
            let s = try #require(rig.registry.snapshot(engine.id))
            #expect(s.load.queued == 4 && s.load.open == 2 && s.load.inFlight == 6)
            #expect(engine.open == 2)
            engine.release(6)
            for try await status in g { results.append(status) }
        }
        #expect(results == Array(repeating: 200, count: 6))
        #expect(engine.peakOpen == 2 && engine.requests == 6)
        #expect(rig.registry.snapshot(engine.id)?.load.inFlight == 0)
        await rig.stop()
        await engine.close()
    }

    @Test func configuredMaxConcurrencyCapsAnEngineWithoutSlots() async throws {
        let engine = try await FakeEngine(mode: .held)
        let rig = try await ProxyRig([engine.url], limits: [3])
        try await withThrowingTaskGroup(of: Int.self) { g in
            for _ in 0..<5 { g.addTask { await rig.chat(stream: false).0 } }
            let deadline = ContinuousClock.now + .seconds(10)
            while (rig.registry.snapshot(engine.id)?.load.queued != 2 || engine.open != 3) && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(10))
            }
            #expect(rig.registry.snapshot(engine.id)?.load.queued == 2 && engine.open == 3)
            engine.release(5)
            for try await status in g { #expect(status == 200) }
        }
        #expect(engine.peakOpen == 3)
        await rig.stop()
        await engine.close()
    }
}
