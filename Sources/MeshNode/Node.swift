import Foundation
import Logging
import MeshCore
import MeshConfigLoader
import MeshEngines
import MeshHardware
import MeshLedger
import MeshHTTPClient
import MeshHTTPServer
import MeshNet
import MeshZMQ
import NIOCore
import NIOHTTP1
import NIOPosix
import ServiceLifecycle
import Synchronization

extension EngineRegistry: EngineDirectory {
    public func requestHeaders(engineID: String) -> [(String, String)] { requestHeaders(for: engineID) }
    public func acquire(engineID: String) async -> EngineAdmission { await acquire(engineID) }
    public func requestFinished(engineID: String, usage: TokenUsage?, firstTokenSeconds: Double?, totalSeconds: Double, ok: Bool,
                                overloaded: Bool) {
        endRequest(engineID, outcome: EngineRequestOutcome(
            // The tokens it computed: a prompt taken from its cache is no sample of its prefill speed.
            succeeded: ok, promptTokens: usage.map { max(0, $0.promptTokens - ($0.cachedTokens ?? 0)) }, generatedTokens: usage?.completionTokens,
            timeToFirstToken: firstTokenSeconds.map { .nanoseconds(Int64($0 * 1e9)) },
            totalTime: totalSeconds > 0 ? .nanoseconds(Int64(totalSeconds * 1e9)) : nil, overloaded: overloaded,
            prefillTime: usage?.promptSeconds.map { .nanoseconds(Int64($0 * 1e9)) }))
    }
    public func engineUnreachable(engineID: String, reason: String) { markUnhealthy(engineID, reason: reason) }
    public func prepare(engineID: String) async -> Result<String, DetailError> { await prepare(engineID) }
    public func engineFailed(engineID: String) { noteFailure(engineID) }
    public func settle(engineID: String) async { await settle(engineID) }
    public func unload(engineID: String) async { await unload(engineID) }
    public func keepAlive(engineID: String, seconds: Double?) { setKeepAlive(engineID, seconds: seconds) }
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
    let group: any EventLoopGroup
    let ownsGroup: Bool
    /// Sleeps on the event loop's timers: every periodic task of the node uses it.
    let sleep: Sleeper
    public let notifier: SystemdNotifier
    let clock: any WallClock
    /// The ZeroMQ mesh, when a mesh secret is configured.
    public let mesh: MeshService?
    /// mDNS publishing and browsing (`discovery.mdns`), when the mesh is on.
    let discovery: DiscoveryAgent?
    let draining: DrainFlag
    /// GPUs and memory, refreshed every `hardware.refresh_seconds`; read into every state sent.
    public let hardware: HardwareMonitor
    /// The gateway role, when `cloud.providers` lists any.
    let gateway: Gateway?
    /// The model store (`models:`): GGUF files served by llama-servers started on demand.
    public let modelStore: ModelStore?
    /// Alerts this node raises (`alerts:`).
    let alerts: AlertCenter
    /// The usage and audit log, and the last requests.
    public let usage: UsageRecorder
    /// Per-key limits (`limits`), counted mesh-wide.
    public let limiter: KeyLimiter
    let heapTrim: HeapTrimmer
    /// The dashboard's data (`/ui`).
    let dashboard: Dashboard
    /// The client and admin keys the HTTP API checks (replaced by a reload).
    let keys: KeyRing
    /// The `cloud:` section the proxy escalates by (replaced by a reload).
    let cloudSetup: CloudSetup
    /// The configuration in force (the one at start, then each one reloaded).
    let current: Mutex<MeshdConfig>
    /// The HTTPS identity (`http.tls`), re-read by a reload.
    let tls: HTTPServerTLS?
    /// This machine's llama.cpp build, read once at start (for splits).
    let llama: LlamaInfo
    /// Leases this node grants heads of splits, with their rpc-servers.
    public let splitWorker: SplitWorker
    /// Requests waiting for an engine anywhere in the mesh to free up, and what lets them go.
    let meshQueue: MeshQueue
    let pumpQueue: @Sendable () -> Void
    /// Splits this node heads (a managed llama.cpp model it cannot hold), when the mesh is on and
    /// `split.enabled`.
    public let splitHead: SplitHead?

    /// - Parameter eventLoopGroup: loops for the HTTP servers; nil makes a private group of
    ///   `http.threads` loops. `meshd` passes NIO's singleton group, which it also installs as
    ///   Swift's global executor, so request handling does not hop between thread pools.
    public init(config: MeshdConfig, logger: Logger, clock: any WallClock = SystemWallClock(),
                notifier: SystemdNotifier = SystemdNotifier(), eventLoopGroup: (any EventLoopGroup)? = nil) throws {
        self.config = config
        self.logger = logger
        self.clock = clock
        self.notifier = notifier
        client = try CurlHTTPClient(configuration: HTTPClientConfiguration(
            connectTimeout: .milliseconds(config.timeouts.connectMs),
            firstByteTimeout: .milliseconds(config.timeouts.firstByteMs),
            idleTimeout: .milliseconds(config.timeouts.betweenChunksMs),
            // No per-host cap in libcurl: how many requests go to an engine at once is the engine
            // registry's decision (its slots or `max_concurrency`), and the rest wait in its queue.
            maxConnectionsPerHost: 0,
            streamCoalesce: .milliseconds(config.http.streamCoalesceMs)))
        if let eventLoopGroup {
            group = eventLoopGroup
            ownsGroup = false
        } else {
            group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, config.http.threads))
            ownsGroup = true
        }
        // Every periodic task sleeps on the event loop's timers (see LoopSleep): an idle node
        // then wakes the loop alone, not libdispatch's timer thread and a worker as well.
        let sleep = LoopSleep.on(group.next())
        self.sleep = sleep
        engines = EngineRegistry(config: config, httpClient: client, logger: logger, clock: clock, sleep: sleep)
        metrics = NodeMetrics()
        let draining = DrainFlag()
        self.draining = draining
        hardware = Self.makeHardwareMonitor(config.hardware, logger: logger, sleep: sleep)
        let gateway = config.cloud.providers.isEmpty ? nil : try Gateway(config: config, http: client, clock: clock, logger: logger)
        self.gateway = gateway
        let llama = LlamaInfo()
        self.llama = llama
        let configuredLlama = config.llamaServerBinary
        let hardwareMonitor = hardware
        let offerCap = config.hardware.offerBytes
        let offer: @Sendable () -> Int64 = { SplitWorker.offer(hardwareMonitor.latest, cap: offerCap) }
        let splitWorker = SplitWorker(settings: config.split, clock: clock, llama: { llama.value }, offerBytes: offer,
                                      rpcBinary: { LlamaToolchain.rpcServerBinary(llamaServer: configuredLlama) },
                                      cacheDirectory: config.stateDir + "/rpc-cache", directHost: config.mesh.listen.host,
                                      logger: logger, sleep: sleep)
        self.splitWorker = splitWorker
        if config.models.enabled {
            modelStore = ModelStore(settings: config.models, stateDir: config.stateDir, registry: engines, transport: client,
                                    logger: logger, clock: clock, binary: config.llamaServerBinary,
                                    freeBytes: Self.storeFreeBytes(hardware: hardwareMonitor, cap: offerCap), sleep: sleep)
        } else {
            modelStore = nil
        }
        let heads = SplitHeadRef()
        let mesh = try Self.makeMesh(config: config, logger: logger, clock: clock, engines: engines, draining: draining,
                                     hardware: hardware, gateway: gateway, llama: llama, offer: offer, splitWorker: splitWorker,
                                     splitHead: heads, sleep: sleep)
        self.mesh = mesh
        if let mesh, config.split.enabled, !engines.managedLlamaEngines.isEmpty {
            let engines = self.engines
            let head = SplitHead(nodeName: config.nodeName, settings: config.split, clock: clock, mesh: mesh, offerBytes: offer,
                                 relays: MeshSplitRelays(mesh: mesh, logger: logger),
                                 abort: { id, why in engines.managedLlamaEngines.first { $0.id == id }?.abortSplit(why) },
                                 repoll: { await engines.refreshNow() },
                                 logger: logger)
            heads.set(head)
            for e in engines.managedLlamaEngines { e.setSplitLauncher(head) }
            splitHead = head
        } else {
            splitHead = nil
        }
        if let mesh {
            splitWorker.setOnChange { mesh.broadcastState() }
        }
        if let mesh, config.discovery.mdns {
            discovery = DiscoveryAgent(mesh: mesh, nodeID: config.nodeName, httpPort: config.http.listen.port, logger: logger,
                                       sleep: sleep)
        } else {
            discovery = nil
        }
        let cacheShadows = CacheShadows(clock: clock)
        let meshQueue = MeshQueue(settings: config.routing, clock: clock, sleep: sleep)
        self.meshQueue = meshQueue
        if config.routing.cacheDeltas { mesh?.setCacheHooks(cacheShadows.meshHooks(node: config.nodeName)) }
        let usageLog = config.audit.enabled
            ? try UsageLog(path: (config.stateDir as NSString).appendingPathComponent("usage.sqlite"), retentionDays: config.audit.retentionDays,
                           clock: clock)
            : nil
        let usage = UsageRecorder(log: usageLog)
        self.usage = usage
        let usageReporter = UsageReporter(nodeName: config.nodeName, recorder: usage, mesh: mesh, clock: clock)
        let cloudSetup = CloudSetup(config: config.cloud, gateway: gateway)
        self.cloudSetup = cloudSetup
        current = Mutex(config)
        let responseCache = config.responseCache.enabled ? ResponseCacheService(settings: config.responseCache, clock: clock) : nil
        let limiter = KeyLimiter(node: config.nodeName, config: config.limits, clock: clock, sleep: sleep)
        if let mesh { limiter.attach(to: mesh) }
        self.limiter = limiter
        let proxy = InferenceProxy(nodeName: config.nodeName, engines: engines, client: client, metrics: metrics, clock: clock,
                                   timeouts: config.timeouts, logger: logger, mesh: mesh, localDraining: { draining.value },
                                   cloud: cloudSetup, routing: config.routing, cache: cacheShadows, queue: meshQueue,
                                   usage: usage, responseCache: responseCache, limiter: limiter)
        pumpQueue = { proxy.pumpQueue() }
        let connectionStats = HTTPConnectionStats()
        // Load for the heap trimmer: the client connections open and the requests they have in flight.
        let heapTrim = HeapTrimmer(clock: clock, load: { connectionStats.server.map { $0.openConnections + $0.inFlight } ?? 0 },
                                   sleep: sleep)
        self.heapTrim = heapTrim
        let copier: ModelCopier?
        if let mesh {
            copier = modelStore.map { store in
                ModelCopier(nodeName: config.nodeName, mesh: mesh, store: store, logger: logger,
                            sendRate: config.models.copyBytesPerSecond, view: { proxy.routingView(localOnly: false) })
            }
            mesh.setTunnelAcceptor(TunnelDispatch(split: SplitRelayAcceptor(worker: splitWorker, logger: logger), copier: copier))
        } else {
            copier = nil
        }
        let metricsRef = metrics
        let alerts = AlertCenter(nodeName: config.nodeName, settings: config.alerts, budgetWebhook: config.budget.webhook, clock: clock,
                                 http: client, logger: logger, sleep: sleep) { [gateway, mesh, splitHead] now in
            var r = AlertReadings(now: now)
            if let gw = gateway {
                r.providersUnavailable = Set(gw.cloud.providers.map(\.name).filter { !gw.client.health.isAvailable($0, nowNanos: now) })
                r.spendUSD = gw.spentByProvider.withLock { $0 }.mapValues { Double($0) / 1e6 }
            }
            r.requests = metricsRef.requestsEnded
            r.failovers = metricsRef.failovers
            r.nodesDown = Set(mesh?.recentlyDown().map(\.id) ?? [])
            r.splitsFailed = splitHead?.counts.failed ?? 0
            return r
        }
        self.alerts = alerts
        gateway?.onAlert.withLock { $0 = { [alerts] a in alerts.fire(a) } }
        let modelOps = ModelOps(nodeName: config.nodeName, store: modelStore, copier: copier, engines: engines, client: client,
                                timeouts: config.timeouts)
        var responder = APIResponder(nodeName: config.nodeName, proxy: proxy, engines: engines, metrics: metrics,
                                     apiKeys: config.http.apiKeys, clock: clock, connections: connectionStats,
                                     extraMetrics: { [splitHead, engines, mesh, metrics] in
                                         SplitMetrics.render(splitHead, engines: engines.snapshot()) + alerts.metricsText()
                                             + CacheMetrics.render(cacheShadows, mesh: mesh) + QueueMetrics.render(meshQueue)
                                             + (responseCache?.metricsText() ?? "") + heapTrim.metricsText()
                                             + metrics.executorMetricsText() })
        responder.modelOps = modelOps
        var adminResponder = AdminResponder(nodeName: config.nodeName, engines: engines, clock: clock, proxy: proxy,
                                            mesh: mesh, draining: draining, httpListen: config.http.listen.description,
                                            meshConfig: config.mesh, hardware: hardware,
                                            discovery: discovery, mdnsEnabled: config.discovery.mdns,
                                            gateway: gateway, llama: { [llama] in llama.value },
                                            splitWorker: splitWorker, splitHead: splitHead,
                                            managedLlama: engines.managedLlamaEngines)
        adminResponder.modelOps = modelStore == nil ? nil : modelOps
        adminResponder.alerts = alerts
        adminResponder.usage = usageReporter
        let dashboard = Dashboard(admin: adminResponder, usage: usage, mesh: mesh, clock: clock, sleep: sleep)
        self.dashboard = dashboard
        responder.dashboard = dashboard
        responder.keys.set(apiKeys: config.http.apiKeys, adminKeys: config.http.adminKeys)
        self.keys = responder.keys
        mesh?.setHandler(MeshHandler(proxy: proxy, draining: draining, splitWorker: splitWorker, logger: logger,
                                     usage: usageLog == nil ? nil : usageReporter, dashboard: dashboard))
        var hc = HTTPServerConfiguration(host: config.http.listen.host, port: config.http.listen.port,
                                         maxBodyBytes: config.http.maxBodyBytes,
                                         headerTimeout: .milliseconds(config.http.headerTimeoutMs),
                                         bodyTimeout: .milliseconds(config.http.bodyTimeoutMs),
                                         idleTimeout: .milliseconds(config.http.idleTimeoutMs),
                                         maxConnections: config.http.maxConnections,
                                         maxConnectionsPerClient: config.http.maxConnectionsPerClient,
                                         minBodyBytesPerSecond: config.http.minBodyBytesPerSecond)
        if let cert = config.http.tls.certFile, let key = config.http.tls.keyFile {
            do {
                hc.tls = try HTTPServerTLS(certFile: cert, keyFile: key)
            } catch let e as HTTPServerTLSError {
                // The files are configuration too: same message shape and exit status.
                throw ConfigLoadError(issues: [ConfigIssue(source: e.file, key: e.key, reason: e.reason)])
            }
        }
        tls = hc.tls
        http = HTTPServer(configuration: hc, group: group, responder: responder, logger: logger)
        connectionStats.server = http
        if config.admin.socket.isEmpty {
            admin = nil
        } else {
            var ac = HTTPServerConfiguration(host: "", port: 0, maxBodyBytes: 64 * 1024)
            ac.unixSocketPath = config.admin.socket
            admin = HTTPServer(configuration: ac, group: group, responder: adminResponder, logger: logger)
        }
    }

    /// Memory left for one more stored model, given the bytes stored models hold: the offer
    /// (`hardware.offer_bytes`) less them; without an offer, the free memory measured (which
    /// already leaves them out); nil while nothing is measured.
    static func storeFreeBytes(hardware: HardwareMonitor, cap: Int?) -> @Sendable (Int64) -> Int64? {
        { resident in
            if let cap { return Int64(cap) - resident }
            let free = SplitWorker.offer(hardware.latest, cap: nil)
            return free > 0 ? free : nil
        }
    }

    /// The hardware probe the `hardware:` section describes, running tools as child processes.
    static func makeHardwareMonitor(_ config: HardwareConfig, logger: Logger, sleep: @escaping Sleeper) -> HardwareMonitor {
        var options = HardwareProbeOptions()
        options.root = config.sysfsRoot
        options.nvidiaSMI = config.nvidiaSMI
        options.rocmSMI = config.rocmSMI
        let prober = HardwareProber(options: options, runner: ChildProcessCommandRunner())
        let seconds = min(max(config.refreshSeconds, 1), 3600)
        return HardwareMonitor(prober: prober, interval: .milliseconds(Int64(seconds * 1000)), logger: logger) { d in
            await sleep(d)
            try Task.checkCancellation()
        }
    }

    /// The mesh, if `mesh.secret_file` exists: without a secret the node runs standalone.
    static func makeMesh(config: MeshdConfig, logger: Logger, clock: any WallClock, engines: EngineRegistry,
                         draining: DrainFlag, hardware: HardwareMonitor, gateway: Gateway?, llama: LlamaInfo,
                         offer: @escaping @Sendable () -> Int64, splitWorker: SplitWorker, splitHead: SplitHeadRef,
                         sleep: @escaping @Sendable (Duration) async -> Void) throws -> MeshService? {
        let path = config.mesh.secretFile
        guard FileManager.default.fileExists(atPath: path) else {
            logger.notice("mesh disabled: no mesh secret", metadata: [
                "secret_file": "\(path)", "hint": "create one with 'meshctl init --secret-file \(path)' and copy it to every node"])
            return nil
        }
        let secret = try MeshSecret.load(path: path)
        var sc = MeshServiceConfiguration(nodeID: config.nodeName, listen: config.mesh.listen, staticPeers: config.mesh.peers,
                                          heartbeatMs: config.mesh.heartbeatMs, deadAfterMissed: config.mesh.deadAfterMissed,
                                          secret: secret)
        sc.trust = config.mesh.trust
        sc.sleep = sleep
        sc.forwardIdleMs = config.timeouts.betweenChunksMs
        if config.mesh.trust == .keys {
            let pair = try TrustStore.loadOrCreateNodeKey(path: config.mesh.nodeKeyFile)
            sc.nodeKeyPair = pair
            sc.trustedKeys = Set(try TrustStore.loadTrusted(path: config.mesh.trustedKeysFile).map(\.key))
            logger.info("mesh trust: node keys", metadata: [
                "node_key": "\(pair.publicKeyZ85)", "trusted": "\(sc.trustedKeys.count)",
                "trusted_keys_file": "\(config.mesh.trustedKeysFile)"])
        }
        let name = config.nodeName
        let http = config.http.listen.description
        return try MeshService(configuration: sc, logger: logger, clock: clock) {
            var s = NodeState(id: name, name: name, meshEndpoint: "", httpEndpoint: http, seq: clock.nowNanos(),
                              draining: draining.value, engines: engines.snapshot())
            s.apply(hardware.latest)
            s.gateway = gateway?.advert()
            if var advert = llama.value {
                // What it can lend or head with now, for the peers' split planners.
                advert.offerBytes = offer()
                if let lease = splitWorker.currentLease {
                    advert.leasedBytes = lease.bytes
                    advert.leasedTo = lease.split
                }
                let heads = splitHead.value?.headedSplits ?? []
                advert.heads = heads.isEmpty ? nil : heads
                s.llama = advert
            }
            return s
        }
    }

    /// Address the client API is bound to, once running.
    public let boundAddress = BoundAddress()

    public func run() async throws {
        let sleep = self.sleep
        // Whether a managed model fits this node is decided when its engine starts: from measured memory.
        if splitHead != nil { _ = await hardware.refresh() }
        await engines.start()
        await modelStore?.start()
        alerts.start()
        // Which llama.cpp this node could head or serve a split with: advertised in its state once
        // known (in the background: a slow or hanging binary must not delay serving).
        let configured = config.llamaServerBinary
        Task { [llama, logger, mesh] in
            guard let advert = await LlamaToolchain.detect(llamaServer: configured) else { return }
            llama.set(advert)
            logger.info("llama.cpp", metadata: ["build": "\(advert.build)", "rpc_server": "\(advert.rpcServer)"])
            mesh?.broadcastState()
        }
        if let dir = config.admin.socket.split(separator: "/").dropLast().joined(separator: "/") as String?, !dir.isEmpty {
            try? FileManager.default.createDirectory(atPath: "/" + dir, withIntermediateDirectories: true,
                                                     attributes: [.posixPermissions: 0o750])
        }
        let notifier = self.notifier
        let logger = self.logger
        let boundAddress = self.boundAddress
        let http = self.http
        let admin = self.admin
        let mesh = self.mesh
        let engines = self.engines
        let discovery = self.discovery
        let hardware = self.hardware
        let splitWorker = self.splitWorker
        let usage = self.usage
        // The mesh port first: the secure relay's ephemeral port must not take it (seen in tests,
        // where the configured mesh port is itself an ephemeral one). A failure is logged by `run`.
        if let mesh { try? await mesh.bind() }
        let secureRelay = SecureRelayCloser()
        let grace = Duration.milliseconds(Int64(config.http.shutdownGraceSeconds * 1000))

        try await withGracefulShutdownHandler {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { await hardware.run() }
                // The secure relay once the HTTP port is bound too (its ephemeral port must take neither).
                if let mesh, config.split.enabled {
                    let host = config.mesh.listen.host
                    group.addTask {
                        let deadline = ContinuousClock.now + .seconds(10)
                        while boundAddress.address == nil && ContinuousClock.now < deadline && !Task.isCancelled {
                            try? await Task.sleep(for: .milliseconds(5))
                        }
                        guard !Task.isCancelled else { return }
                        secureRelay.set(await SplitSecureRelay.start(mesh: mesh, host: host, worker: splitWorker, logger: logger))
                    }
                }
                // Lets requests waiting in the mesh queue go as engines free up (idle while none wait).
                let meshQueue = self.meshQueue, pumpQueue = self.pumpQueue
                group.addTask { await meshQueue.run(pump: pumpQueue) }
                // Expires split leases; stops their rpc-servers when the node stops.
                group.addTask { await splitWorker.run() }
                // Hop times for the dashboard, measured while someone watches it.
                let dashboard = self.dashboard
                group.addTask { await dashboard.runHopProbe() }
                // Heap a burst of connections or streams freed goes back to the system.
                let heapTrim = self.heapTrim
                group.addTask { await heapTrim.run(logger: logger) }
                // The audit log's retention: records older than audit.retention_days go, every hour.
                if let log = usage.log {
                    group.addTask {
                        while !Task.isCancelled {
                            await sleep(.seconds(3600))
                            do { try log.expire() } catch { logger.warning("usage log retention failed", metadata: ["error": "\(error)"]) }
                        }
                    }
                }
                if let admin {
                    group.addTask {
                        do {
                            try await admin.run()
                        } catch {
                            logger.warning("admin socket unavailable", metadata: ["error": "\(error)"])
                        }
                    }
                }
                if let mesh {
                    // Peers hear about engine and model changes at once, not at the next heartbeat.
                    let changes = engines.changes()
                    group.addTask {
                        for await _ in changes { mesh.broadcastState() }
                    }
                    // ...and of load changes (a request started or ended), at most every 20 ms, so
                    // peers do not route on a stale in-flight count for a whole heartbeat: a small
                    // `load` message, the whole state only to peers that do not read it.
                    let load = engines.loadChanges()
                    group.addTask {
                        for await _ in load {
                            pumpQueue()
                            mesh.broadcastLoad()
                            await sleep(.milliseconds(20))
                        }
                    }
                    group.addTask {
                        do {
                            try await mesh.run()
                        } catch {
                            logger.error("mesh stopped", metadata: ["error": "\(error)"])
                        }
                    }
                }
                if let discovery {
                    group.addTask { await discovery.run() }
                }
                if let interval = notifier.watchdogPingInterval {
                    group.addTask {
                        while !Task.isCancelled {
                            notifier.watchdog()
                            await sleep(interval)
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
                    mesh?.stop()
                    group.cancelAll()
                    throw error
                }
                await admin?.shutdown(grace: .zero)
                mesh?.stop()
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
        await secureRelay.close()
        await modelStore?.stop()
        await alerts.stop()
        await engines.shutdown()
        client.shutdown()
        // The usage log's last batch (it waits up to its batch delay for more records).
        usage.log?.flushNow()
        if ownsGroup { try? await group.shutdownGracefully() }
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

/// Stops the worker's secure relay (started once the node's ports are bound) when the node stops.
final class SecureRelayCloser: Sendable {
    private let closer = Mutex<(@Sendable () async -> Void)?>(nil)
    func set(_ c: (@Sendable () async -> Void)?) { closer.withLock { $0 = c } }
    func close() async { await closer.withLock({ v in defer { v = nil }; return v })?() }
}

/// Whether this node takes new work (`meshctl drain`).
final class DrainFlag: Sendable {
    private let v = Mutex(false)
    var value: Bool { v.withLock { $0 } }
    func set(_ b: Bool) { v.withLock { $0 = b } }
}

/// Serves requests peers forward to this node: runs them on local engines only and relays the
/// response (already in the client's dialect) back over the mesh.
struct MeshHandler: MeshRequestHandler {
    let proxy: InferenceProxy
    let draining: DrainFlag
    let splitWorker: SplitWorker
    let logger: Logger
    var usage: UsageReporter?
    var dashboard: Dashboard?

    func handle(_ request: ForwardedRequest, responder: MeshResponder) async {
        switch request.path {
        case "/_mesh/drain":
            draining.set(true)
            logger.notice("draining at a peer's request", metadata: ["peer": "\(request.fromNode)"])
            responder.end()
            return
        case "/_mesh/undrain":
            draining.set(false)
            logger.notice("undrained at a peer's request", metadata: ["peer": "\(request.fromNode)"])
            responder.end()
            return
        case Dashboard.pingPath:
            try? await responder.respond(status: 200, headers: [("Content-Type", "application/json")], body: Array("{}".utf8))
            return
        case Dashboard.peerPath:
            let part = dashboard?.ownPart() ?? ["error": "no dashboard"]
            try? await responder.respond(status: dashboard == nil ? 404 : 200, headers: [("Content-Type", "application/json")], body: part.serialized())
            return
        case UsageReporter.peerPath:
            let (status, body) = await usage?.answerPeer(request.body)
                ?? (404, ["error": "this node keeps no usage log (audit.enabled is false)"])
            try? await responder.respond(status: status, headers: [("Content-Type", "application/json")], body: body.serialized())
            return
        case "/_mesh/split/lease", "/_mesh/split/renew", "/_mesh/split/release":
            let (status, body) = await splitRequest(request.path, request.body)
            try? await responder.respond(status: status, headers: [("Content-Type", "application/json")], body: body.serialized())
            return
        default:
            break
        }
        guard let route = InferenceRoute(rawValue: request.path) else {
            responder.fail(status: 404, message: "no mesh route \(request.path)")
            return
        }
        var headers = HTTPHeaders()
        for (n, v) in request.headers { headers.add(name: n, value: v) }
        let head = HTTPRequestHead(version: .http1_1, method: .POST, uri: request.path, headers: headers)
        let httpRequest = HTTPServerRequest(head: head, body: ByteBuffer(bytes: request.body))
        // An escalated request touches the budget ledger (SQLite, fsync): not on the socket thread.
        if httpRequest.header(InferenceProxy.escalateHeader) != nil {
            await withTaskExecutorPreference(globalConcurrentExecutor) { await answer(route, httpRequest, responder) }
        } else {
            await answer(route, httpRequest, responder)
        }
    }

    /// A head's lease request, renewal or release (JSON in, JSON out).
    private func splitRequest(_ path: String, _ body: [UInt8]) async -> (Int, JSON) {
        func refused(_ e: LeaseError) -> (Int, JSON) {
            let status: Int
            switch e.code {
            case .invalid: status = 400
            case .unknown: status = 404
            case .busy, .buildMismatch, .tooLarge: status = 409
            case .disabled, .noRPCServer: status = 503
            }
            return (status, ["error": .string(e.message), "code": .string(e.code.rawValue)])
        }
        func granted(_ g: SplitWorker.Granted) -> (Int, JSON) {
            ((try? JSONValueCoding.encode(g.lease)).map { lease in
                (200, ["lease": lease, "port": .integer(g.port), "relay_port": g.relayPort.map(JSON.integer) ?? .null])
            })
                ?? (500, ["error": "cannot encode the lease"])
        }
        let json: JSON
        do { json = try JSONParser.parse(body) } catch { return refused(LeaseError(.invalid, "invalid JSON body: \(error)")) }
        if path == "/_mesh/split/lease" {
            guard let r = try? JSONValueCoding.decode(LeaseRequest.self, from: json) else {
                return refused(LeaseError(.invalid, "a lease request needs split, head, model, bytes, build and ttlSeconds"))
            }
            switch await splitWorker.lease(r) {
            case .success(let g): return granted(g)
            case .failure(let e): return refused(e)
            }
        }
        guard let split = json["split"]?.stringValue, !split.isEmpty else { return refused(LeaseError(.invalid, "split is required")) }
        if path == "/_mesh/split/renew" {
            switch splitWorker.renew(split: split) {
            case .success(let g): return granted(g)
            case .failure(let e): return refused(e)
            }
        }
        return await splitWorker.release(split: split) ? (200, ["released": .string(split)])
            : refused(LeaseError(.unknown, "no lease for split \(split)"))
    }

    private func answer(_ route: InferenceRoute, _ request: HTTPServerRequest, _ responder: MeshResponder) async {
        let response = await proxy.handle(route: route, request: request, localOnly: true)
        let status = Int(response.status.code)
        let responseHeaders = response.headers.map { ($0.name, $0.value) }
        do {
            switch response.body {
            case .buffer(let b):
                try await responder.respond(status: status, headers: responseHeaders, body: Array(b.readableBytesView))
            case .stream(let produce):
                responder.head(status: status, headers: responseHeaders)
                try await produce(ResponseBodyWriter { bytes in try await responder.chunk(bytes) })
                responder.end()
            }
        } catch {
            if !Task.isCancelled { responder.fail(status: 502, message: "\(error)") }
        }
    }
}

/// The split head, made after the mesh whose state builder reads it.
final class SplitHeadRef: Sendable {
    private let head = Mutex<SplitHead?>(nil)
    var value: SplitHead? { head.withLock { $0 } }
    func set(_ h: SplitHead) { head.withLock { $0 = h } }
}

/// This node's llama.cpp build, once known (read by the state builder on the mesh thread).
final class LlamaInfo: Sendable {
    private let advert = Mutex<LlamaAdvert?>(nil)
    var value: LlamaAdvert? { advert.withLock { $0 } }
    func set(_ a: LlamaAdvert?) { advert.withLock { $0 = a } }
}

extension MeshdConfig {
    /// The llama-server binary of the first managed `llama.cpp` engine entry, if it names one
    /// (else meshd looks on PATH and in its cache): the build splits are checked against.
    var llamaServerBinary: String? { effectiveEngines.first { $0.kind == .llamaCpp }?.binary }
}
