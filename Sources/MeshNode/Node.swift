import Foundation
import Logging
import MeshCore
import MeshEngines
import MeshHTTPClient
import MeshHTTPServer
import NIOCore
import NIOPosix
import ServiceLifecycle
import Synchronization

/// The system clock as the core's ``WallClock``.
public struct SystemWallClock: WallClock {
    public init() {}
    public func nowNanos() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }
}

extension EngineRegistry: EngineDirectory {
    public func requestHeaders(engineID: String) -> [(String, String)] { requestHeaders(for: engineID) }
    public func requestStarted(engineID: String) { beginRequest(engineID) }
    public func requestFinished(engineID: String, usage: TokenUsage?, firstTokenSeconds: Double?, totalSeconds: Double, ok: Bool) {
        endRequest(engineID, outcome: EngineRequestOutcome(
            succeeded: ok, promptTokens: usage?.promptTokens, generatedTokens: usage?.completionTokens,
            timeToFirstToken: firstTokenSeconds.map { .nanoseconds(Int64($0 * 1e9)) },
            totalTime: totalSeconds > 0 ? .nanoseconds(Int64(totalSeconds * 1e9)) : nil))
    }
    public func engineUnreachable(engineID: String, reason: String) { markUnhealthy(engineID, reason: reason) }
}

/// One meshd node: engines, the client API, the admin socket, metrics, and systemd integration.
/// Runs as a swift-service-lifecycle `Service`: SIGTERM stops accepting, lets in-flight requests
/// finish up to the grace period, stops managed engines, and returns.
public final class MeshdNode: Service, Sendable {
    public let config: MeshdConfig
    public let logger: Logger
    public let engines: EngineRegistry
    public let client: CurlHTTPClient
    public let metrics: NodeMetrics
    let http: HTTPServer
    let admin: HTTPServer?
    let group: MultiThreadedEventLoopGroup
    let notifier: SystemdNotifier
    let clock: any WallClock

    public init(config: MeshdConfig, logger: Logger, clock: any WallClock = SystemWallClock(),
                notifier: SystemdNotifier = SystemdNotifier()) throws {
        self.config = config
        self.logger = logger
        self.clock = clock
        self.notifier = notifier
        client = try CurlHTTPClient(configuration: HTTPClientConfiguration(
            connectTimeout: .milliseconds(config.timeouts.connectMs),
            firstByteTimeout: .milliseconds(config.timeouts.firstByteMs),
            idleTimeout: .milliseconds(config.timeouts.betweenChunksMs)))
        engines = EngineRegistry(config: config, httpClient: client, logger: logger)
        metrics = NodeMetrics()
        group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, config.http.threads))
        let proxy = InferenceProxy(nodeName: config.nodeName, engines: engines, client: client, metrics: metrics, clock: clock,
                                   timeouts: config.timeouts, logger: logger)
        let responder = APIResponder(nodeName: config.nodeName, proxy: proxy, engines: engines, metrics: metrics,
                                     apiKeys: config.http.apiKeys, clock: clock)
        http = HTTPServer(configuration: HTTPServerConfiguration(host: config.http.listen.host, port: config.http.listen.port,
                                                                 maxBodyBytes: config.http.maxBodyBytes),
                          group: group, responder: responder, logger: logger)
        if config.admin.socket.isEmpty {
            admin = nil
        } else {
            var ac = HTTPServerConfiguration(host: "", port: 0, maxBodyBytes: 64 * 1024)
            ac.unixSocketPath = config.admin.socket
            admin = HTTPServer(configuration: ac, group: group,
                               responder: AdminResponder(nodeName: config.nodeName, engines: engines, clock: clock, httpServer: nil),
                               logger: logger)
        }
    }

    /// Address the client API is bound to, once running.
    public let boundAddress = BoundAddress()

    public func run() async throws {
        await engines.start()
        if let dir = config.admin.socket.split(separator: "/").dropLast().joined(separator: "/") as String?, !dir.isEmpty {
            try? FileManager.default.createDirectory(atPath: "/" + dir, withIntermediateDirectories: true,
                                                     attributes: [.posixPermissions: 0o750])
        }
        let notifier = self.notifier
        let logger = self.logger
        let boundAddress = self.boundAddress
        let http = self.http
        let admin = self.admin
        let grace = Duration.milliseconds(Int64(config.http.shutdownGraceSeconds * 1000))

        try await withGracefulShutdownHandler {
            try await withThrowingTaskGroup(of: Void.self) { group in
                if let admin {
                    group.addTask {
                        do {
                            try await admin.run()
                        } catch {
                            logger.warning("admin socket unavailable", metadata: ["error": "\(error)"])
                        }
                    }
                }
                if let interval = notifier.watchdogPingInterval {
                    group.addTask {
                        while !Task.isCancelled {
                            notifier.watchdog()
                            try? await Task.sleep(for: interval)
                        }
                    }
                }
                do {
                    try await http.run { addr in
                        boundAddress.set(addr)
                        notifier.ready()
                        notifier.status("serving on \(addr)")
                    }
                } catch {
                    await admin?.shutdown(grace: .zero)
                    group.cancelAll()
                    throw error
                }
                await admin?.shutdown(grace: .zero)
                group.cancelAll()
            }
        } onGracefulShutdown: {
            logger.info("shutting down: draining in-flight requests", metadata: ["grace_seconds": "\(grace)"])
            notifier.stopping()
            Task {
                await admin?.shutdown(grace: .milliseconds(100))
                await http.shutdown(grace: grace)
            }
        }
        await engines.shutdown()
        client.shutdown()
        try? await group.shutdownGracefully()
        logger.info("stopped")
    }
}

/// The bound address of the client API, set once the listener is up.
public final class BoundAddress: Sendable {
    private let value = Mutex<SocketAddress?>(nil)
    public init() {}
    func set(_ a: SocketAddress) { value.withLock { $0 = a } }
    public var address: SocketAddress? { value.withLock { $0 } }
}
