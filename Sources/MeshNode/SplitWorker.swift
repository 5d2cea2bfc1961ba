import Logging
import MeshCore
import MeshEngines
import MeshHardware
import Synchronization

/// The worker side of splits on this node (issue 13): leases that heads ask for over the mesh
/// (`/_mesh/split/lease`, `renew`, `release`), each served by an rpc-server meshd starts on
/// loopback and stops when the lease is released or expires (no renewal within its ttl). The
/// decisions are `LeaseTable`'s (MeshCore); this class runs the processes and the expiry loop.
public final class SplitWorker: Sendable {
    struct State {
        var table = LeaseTable()
        var servers: [String: RPCServerProcess] = [:]
        /// Splits whose rpc-server is being started.
        var starting: Set<String> = []
        var shutDown = false
    }

    private let state = Mutex(State())
    /// The port of this node's secure relay (heads reach relayed rpc-servers through it), once it listens.
    private let secureRelayPort = Mutex<Int?>(nil)
    public func setSecureRelayPort(_ port: Int?) { secureRelayPort.withLock { $0 = port } }

    /// Told when a lease starts or ends (the node's state, which shows leased memory, is sent then).
    private let onChange = Mutex<(@Sendable () -> Void)?>(nil)
    private let clock: any WallClock
    private let settings: SplitSettings
    private let llama: @Sendable () -> LlamaAdvert?
    private let offerBytes: @Sendable () -> Int64
    private let rpcBinary: @Sendable () -> String?
    private let cacheDirectory: String
    /// The address an rpc-server listens on for `split.transport: direct` (the node's mesh address).
    private let directHost: String
    private let logger: Logger
    private let sleep: Sleeper
    /// A lease was asked for: the expiry loop waits for this while there is nothing to expire.
    private let leaseRequests: AsyncStream<Void>
    private let wakeSweeper: AsyncStream<Void>.Continuation

    /// - Parameters:
    ///   - offerBytes: memory this node offers now (free, capped by `hardware.offer_bytes`).
    ///   - rpcBinary: the RPC server to run, nil when there is none.
    ///   - cacheDirectory: the rpc-server's tensor cache (under `state_dir`).
    init(settings: SplitSettings, clock: any WallClock, llama: @escaping @Sendable () -> LlamaAdvert?,
         offerBytes: @escaping @Sendable () -> Int64, rpcBinary: @escaping @Sendable () -> String?,
         cacheDirectory: String, directHost: String = "0.0.0.0", logger: Logger,
         sleep: @escaping Sleeper = taskSleep) {
        self.directHost = directHost
        self.sleep = sleep
        (leaseRequests, wakeSweeper) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        self.settings = settings
        self.clock = clock
        self.llama = llama
        self.offerBytes = offerBytes
        self.rpcBinary = rpcBinary
        self.cacheDirectory = cacheDirectory
        self.logger = logger
    }

    public func setOnChange(_ f: @escaping @Sendable () -> Void) { onChange.withLock { $0 = f } }
    private func changed() { onChange.withLock { $0 }?() }

    /// What a lease request is answered with.
    public struct Granted: Sendable {
        public var lease: Lease
        /// The rpc-server's loopback port.
        public var port: Int
        /// This node's secure relay port, for a relayed lease (nil: relay over mesh tunnels).
        public var relayPort: Int? = nil
    }

    /// Grants (starting its rpc-server) or renews a lease.
    public func lease(_ r: LeaseRequest) async -> Result<Granted, LeaseError> {
        let advert = llama()
        let binary = rpcBinary()
        enum Step { case done(Result<Granted, LeaseError>), start(Lease) }
        let step: Step = state.withLock { s in
            if s.shutDown { return .done(.failure(LeaseError(.disabled, "this node is shutting down"))) }
            let wasHeld = s.table.leases[r.split] != nil
            switch s.table.request(r, now: clock.monotonicNanos(), enabled: settings.enabled, build: advert?.build,
                                   rpcServer: (advert?.rpcServer ?? false) && binary != nil, offerBytes: offerBytes()) {
            case .failure(let e):
                return .done(.failure(e))
            case .success(let lease):
                if wasHeld {
                    if let server = s.servers[r.split] { return .done(.success(granted(lease, server.port))) }
                    return .done(.failure(LeaseError(.busy, "the rpc-server of split \(r.split) is starting; ask again")))
                }
                s.starting.insert(r.split)
                wakeSweeper.yield()
                return .start(lease)
            }
        }
        let lease: Lease
        switch step {
        case .done(let result): return result
        case .start(let l): lease = l
        }
        do {
            guard let binary else { throw RPCServerError("no rpc-server binary") }
            let host = r.transport == .direct ? directHost : "127.0.0.1"
            let server = try await RPCServerProcess.start(binary: binary, cacheDirectory: cacheDirectory, host: host, logger: logger)
            let keep = state.withLock { s -> Bool in
                s.starting.remove(r.split)
                guard !s.shutDown, s.table.leases[r.split] != nil else { return false }
                s.servers[r.split] = server
                return true
            }
            guard keep else {
                await server.stop()
                return .failure(LeaseError(.unknown, "lease \(r.split) ended while its rpc-server started"))
            }
            logger.notice("split lease granted", metadata: [
                "split": "\(lease.split)", "head": "\(lease.head)", "model": "\(lease.model)", "bytes": "\(lease.bytes)",
                "ttl_s": "\(lease.ttlSeconds)", "port": "\(server.port)"])
            changed()
            return .success(granted(lease, server.port))
        } catch {
            state.withLock { s in
                s.starting.remove(r.split)
                s.table.release(split: r.split)
            }
            logger.warning("split lease failed: rpc-server did not start", metadata: ["split": "\(r.split)", "error": "\(error)"])
            return .failure(LeaseError(.noRPCServer, "the rpc-server did not start: \(error)"))
        }
    }

    private func granted(_ lease: Lease, _ port: Int) -> Granted {
        Granted(lease: lease, port: port, relayPort: (lease.terms.transport ?? .mesh) == .mesh ? secureRelayPort.withLock { $0 } : nil)
    }

    public func renew(split: String) -> Result<Granted, LeaseError> {
        state.withLock { s in
            s.table.renew(split: split, now: clock.monotonicNanos()).flatMap { lease in
                guard let server = s.servers[split] else {
                    return .failure(LeaseError(.busy, "the rpc-server of split \(split) is starting; ask again"))
                }
                return .success(granted(lease, server.port))
            }
        }
    }

    /// Ends a lease and stops its rpc-server; false when none was held.
    @discardableResult
    public func release(split: String, why: String = "released by its head") async -> Bool {
        let (lease, server) = state.withLock { s in (s.table.release(split: split), s.servers.removeValue(forKey: split)) }
        guard let lease else { return false }
        logger.notice("split lease ended", metadata: ["split": "\(lease.split)", "head": "\(lease.head)", "why": "\(why)"])
        changed()
        await server?.stop()
        return true
    }

    /// Expires leases that were not renewed, and ends those whose rpc-server died; every `interval`
    /// while there are any (a node without leases sleeps until one is asked for), until cancelled,
    /// then stops every rpc-server.
    public func run(interval: Duration = .milliseconds(200)) async {
        var asked = leaseRequests.makeAsyncIterator()
        while !Task.isCancelled {
            await sweep()
            if isIdle {
                // A lease asked for since the check is buffered: `next` returns at once then.
                if await asked.next() == nil { break }
                continue
            }
            await sleep(interval)
        }
        await shutdown()
    }

    /// No lease, no rpc-server running or starting: nothing for ``run(interval:)`` to sweep.
    var isIdle: Bool { state.withLock { $0.table.leases.isEmpty && $0.servers.isEmpty && $0.starting.isEmpty } }

    /// One pass of `run()`.
    func sweep() async {
        let (expired, dead) = state.withLock { s -> ([(Lease, RPCServerProcess?)], [String]) in
            let gone = s.table.expire(now: clock.monotonicNanos()).map { ($0, s.servers.removeValue(forKey: $0.split)) }
            let dead = s.servers.filter { $0.value.exited }.map(\.key)
            return (gone, dead)
        }
        for (lease, server) in expired {
            logger.notice("split lease expired", metadata: ["split": "\(lease.split)", "head": "\(lease.head)"])
            changed()
            await server?.stop()
        }
        for split in dead { await release(split: split, why: "its rpc-server exited") }
    }

    /// Stops every rpc-server; later requests are refused.
    public func shutdown() async {
        let servers = state.withLock { s -> [RPCServerProcess] in
            s.shutDown = true
            defer { s.servers = [:] }
            return Array(s.servers.values)
        }
        for server in servers { await server.stop() }
    }

    /// The loopback port of the rpc-server serving `split` for `head`, nil when no such lease is
    /// held (a relayed connection is accepted only from the split's own head).
    public func relayPort(split: String, head: String) -> Int? {
        state.withLock { s in
            guard let l = s.table.leases[split], l.head == head, (l.terms.transport ?? .mesh) == .mesh else { return nil }
            return s.servers[split]?.port
        }
    }

    /// The lease held now, if any (a worker serves one split at a time).
    public var currentLease: Lease? { state.withLock { $0.table.leases.values.first } }

    /// Leases held now, for `meshctl splits`.
    public func statusJSON() -> JSON {
        let now = clock.monotonicNanos()
        let rows = state.withLock { s in
            s.table.leases.values.sorted { $0.split < $1.split }.map { l -> JSON in
                ["split": .string(l.split), "role": "worker", "head": .string(l.head), "model": .string(l.model),
                 "bytes": .int(l.bytes), "build": .string(l.build), "ttl_seconds": .integer(l.ttlSeconds),
                 "seconds_left": .number((l.secondsLeft(now: now) * 10).rounded() / 10),
                 "age_seconds": .number((Double(now - min(now, l.grantedNanos)) / 1e8).rounded() / 10),
                 "port": s.servers[l.split].map { .integer($0.port) } ?? .null,
                 "pid": s.servers[l.split].map { .integer(Int($0.pid)) } ?? .null,
                 "transport": .string((l.terms.transport ?? .mesh).rawValue),
                 "state": s.servers[l.split] == nil ? "starting" : "serving"]
            }
        }
        return ["leases": .array(rows), "relay_port": secureRelayPort.withLock { $0 }.map(JSON.integer) ?? .null]
    }

    /// Memory this node offers: free VRAM, else (CPU engines) available RAM, capped by `offer`.
    static func offer(_ hw: HardwareSnapshot, cap: Int?) -> Int64 {
        let free = hw.vramFreeBytes > 0 ? hw.vramFreeBytes : (hw.ram?.availableBytes ?? 0)
        return cap.map { min(free, Int64($0)) } ?? free
    }
}
