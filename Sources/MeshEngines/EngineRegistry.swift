import Logging
import MeshCore
import Synchronization

/// What happened to one request meshd proxied to an engine (for in-flight counts and speeds).
public struct EngineRequestOutcome: Sendable, Hashable {
    /// Whether the engine produced a complete answer. Failed requests update no speeds.
    public var succeeded: Bool
    /// Prompt tokens the engine reported processing.
    public var promptTokens: Int?
    /// Tokens generated.
    public var generatedTokens: Int?
    /// Time from sending the request to the first generated token. Only pass this when measured
    /// on a stream; for a non-streamed answer it would equal `totalTime` and skew prefill speed.
    public var timeToFirstToken: Duration?
    /// Time from sending the request to the end of the answer.
    public var totalTime: Duration?
    /// Time the engine says it spent on the prompt (`promptTokens` of it), when it says.
    public var prefillTime: Duration?
    /// The engine refused it as overloaded (429, 503): teaches the registry a concurrency limit
    /// for engines that report no slots (``EngineConcurrency/Learned``).
    public var overloaded: Bool

    public init(succeeded: Bool, promptTokens: Int? = nil, generatedTokens: Int? = nil,
                timeToFirstToken: Duration? = nil, totalTime: Duration? = nil, overloaded: Bool = false, prefillTime: Duration? = nil) {
        self.prefillTime = prefillTime
        self.succeeded = succeeded
        self.overloaded = overloaded
        self.promptTokens = promptTokens
        self.generatedTokens = generatedTokens
        self.timeToFirstToken = timeToFirstToken
        self.totalTime = totalTime
    }

    public static let failed = EngineRequestOutcome(succeeded: false)
}

/// All engines of the node: polls them, caches their latest state, and keeps meshd's own in-flight
/// counts and measured speeds. `snapshot()` never does I/O.
///
/// Each engine is polled by its own task every `pollInterval` (a slow engine does not delay the
/// others); a dead engine is seen at the next poll, one that comes back at the poll after.
///
/// It also admits requests to each engine: at most ``EngineConcurrency/limit(configured:reportedSlots:learned:)``
/// are open at once, and the rest wait here, first come first served, counted in the snapshots
/// (`load.queued`), never in the HTTP client's connection queue.
///
/// An engine's slot report (llama-server `/slots`) reaches the snapshots only from a quiet poll:
/// one during which no request meshd sent there started or ended. It is numbered and stamped with
/// the poll's start on `clock` (the cache shadows' clock), for ``CacheShadow/observe(_:)``.
public final class EngineRegistry: Sendable {
    public let pollInterval: Duration
    /// Whether these engines are the auto-detected defaults (absence is then logged quietly).
    public let autodetected: Bool
    /// The engines, in configuration order (stored models are added and removed as their files come and go).
    private var adapters: [any EngineAdapter] { state.withLock { $0.adapters } }
    private let logger: Logger
    private let clock: any WallClock
    /// Sleeps between polls (the event loop's timers in meshd).
    private let sleep: Sleeper
    private let state: Mutex<State>

    /// Weight of a new sample in the smoothed speeds.
    static let speedAlpha = 0.3

    struct EngineState {
        var snapshot: EngineSnapshot
        /// Requests sent to the engine and not yet ended.
        var open = 0
        /// Requests waiting for a place, oldest first.
        var waiters: [Waiter] = []
        /// `engines[].max_concurrency`.
        var configuredLimit: Int?
        var learned = EngineConcurrency.Learned()
        var speeds = EngineSpeeds()
        var mark: (reason: String, at: ContinuousClock.Instant)?
        var polled = false
        var loggedHealthy: Bool?
        /// What the engine reported running or waiting beyond the requests meshd had open at the
        /// poll: other clients' load, which does not go stale when meshd's own requests end.
        var external: Int?
        /// Requests meshd sent here that started or ended, counted: a poll during which it moved is
        /// not quiet (its slot report may show a request half-way).
        var activity: UInt64 = 0
        /// Slot reports taken from quiet polls, counted (their numbers).
        var slotReports: UInt64 = 0
        /// Requests meshd sent here that the engine answered in full, counted: one answered while a
        /// poll waited in vain shows an engine busy serving, not a hung one.
        var answered: UInt64 = 0
        /// Polls in a row that timed out while requests there were answered (kept in service).
        var slowPolls = 0
    }

    struct State {
        var engines: [String: EngineState] = [:]
        var adapters: [any EngineAdapter] = []
        /// Each engine's poll loop, by engine id.
        var tasks: [String: Task<Void, Never>] = [:]
        var started = false
        var shutDown = false
        var subscribers: [Int: AsyncStream<[EngineSnapshot]>.Continuation] = [:]
        /// Told when a request starts or ends (coalesced: the newest only).
        var loadWatcher: AsyncStream<Void>.Continuation?
        var nextSubscriber = 0
        var signature: [Signature] = []
        var nextTicket: UInt64 = 0
        /// Tickets of `acquire` calls between deciding to wait and registering their continuation.
        var undecided: Set<UInt64> = []
        /// Undecided tickets whose task was cancelled in that window.
        var cancelledTickets: Set<UInt64> = []
    }

    struct Waiter {
        let ticket: UInt64
        let continuation: CheckedContinuation<EngineAdmission, Never>
    }

    /// What `changes()` watches: which engines are healthy and which models they have.
    struct Signature: Hashable {
        var id: String
        var healthy: Bool
        var models: [String]
    }

    // MARK: construction

    /// The registry for a node configuration: configured engines, or the auto-detected defaults
    /// (then missing engines are logged once at info, not every poll).
    /// `clock` stamps slot reports: the node's clock, the one its cache shadows use.
    public convenience init(config: MeshdConfig, httpClient: any EngineHTTPTransport, logger: Logger,
                            managedOptions: ManagedEngineOptions = .init(), clock: any WallClock = SystemWallClock(),
                            sleep: @escaping Sleeper = taskSleep) {
        self.init(engines: config.effectiveEngines, httpClient: httpClient, logger: logger,
                  pollInterval: .milliseconds(max(50, config.enginePoll.intervalMs)),
                  autodetected: config.engines == nil, managedOptions: managedOptions, clock: clock, sleep: sleep)
    }

    public convenience init(engines: [EngineConfig], httpClient: any EngineHTTPTransport, logger: Logger,
                            pollInterval: Duration = .seconds(1), autodetected: Bool = false,
                            managedOptions: ManagedEngineOptions = .init(), clock: any WallClock = SystemWallClock(),
                            sleep: @escaping Sleeper = taskSleep) {
        let adapters = Self.makeAdapters(engines: engines, transport: httpClient, logger: logger,
                                         pollInterval: pollInterval, managedOptions: managedOptions)
        // makeAdapters makes one adapter per entry, in order.
        var limits: [String: Int] = [:]
        for (a, e) in zip(adapters, engines) { limits[a.id] = e.maxConcurrency }
        self.init(adapters: adapters, logger: logger, pollInterval: pollInterval, autodetected: autodetected,
                  concurrencyLimits: limits, clock: clock, sleep: sleep)
    }

    /// A registry over ready-made adapters (tests, custom engines). Ids must be unique.
    /// `concurrencyLimits`: `engines[].max_concurrency` by engine id.
    public init(adapters: [any EngineAdapter], logger: Logger, pollInterval: Duration = .seconds(1), autodetected: Bool = false,
                concurrencyLimits: [String: Int] = [:], clock: any WallClock = SystemWallClock(),
                sleep: @escaping Sleeper = taskSleep) {
        self.logger = logger
        self.clock = clock
        self.sleep = sleep
        self.pollInterval = pollInterval
        self.autodetected = autodetected
        var s = State()
        s.adapters = adapters
        for a in adapters {
            s.engines[a.id] = EngineState(snapshot: EngineSnapshot(id: a.id, kind: a.kind, url: a.baseURL, healthy: false,
                                                                   healthDetail: "not polled yet"),
                                          configuredLimit: concurrencyLimits[a.id])
        }
        s.signature = Self.signature(adapters.map { s.engines[$0.id]!.snapshot })
        self.state = Mutex(s)
    }

    /// The id of each engine entry, in order; duplicate ids get a `#2`, `#3`... suffix.
    public static func ids(_ engines: [EngineConfig]) -> [String] {
        var seen: [String: Int] = [:]
        return engines.map { e in
            let base: String
            switch e.kind {
            case .llamaCpp: base = "llama.cpp:\(e.managedModelName ?? "llama.cpp")"
            case .ollama, .openai: base = engineID(kind: e.kind, url: e.url)
            }
            let n = (seen[base] ?? 0) + 1
            seen[base] = n
            return n == 1 ? base : "\(base)#\(n)"
        }
    }

    /// One adapter per engine entry, with the ids of ``ids(_:)``.
    public static func makeAdapters(engines: [EngineConfig], transport: any EngineHTTPTransport, logger: Logger,
                                    pollInterval: Duration = .seconds(1),
                                    managedOptions: ManagedEngineOptions = .init()) -> [any EngineAdapter] {
        let timeout = min(max(pollInterval * 3, .seconds(2)), .seconds(5))
        var out: [any EngineAdapter] = []
        for (e, id) in zip(engines, ids(engines)) {
            switch e.kind {
            case .ollama:
                out.append(OllamaAdapter(url: e.url ?? "", transport: transport, id: id, timeout: timeout))
            case .openai:
                out.append(OpenAIAdapter(url: e.url ?? "", transport: transport, apiKeyFile: e.apiKeyFile, id: id, timeout: timeout))
            case .llamaCpp:
                var opts = managedOptions
                opts.requestTimeout = timeout
                out.append(ManagedLlamaCppEngine(config: e, transport: transport, logger: logger, options: opts, id: id))
            }
        }
        return out
    }

    // MARK: lifecycle

    /// Starts managed engines and the polling; returns after the first poll of every engine
    /// (managed engines are then usually still starting).
    public func start() async {
        let go = state.withLock { s -> Bool in
            guard !s.started, !s.shutDown else { return false }
            s.started = true
            return true
        }
        guard go else { return }
        for a in adapters { await a.start() }
        await refreshNow()
        var tasks: [String: Task<Void, Never>] = [:]
        for a in adapters { tasks[a.id] = Task { [self] in await self.pollLoop(a) } }
        let keep = state.withLock { s -> Bool in
            if s.shutDown { return false }
            s.tasks.merge(tasks) { old, _ in old }
            return true
        }
        if !keep { for t in tasks.values { t.cancel() } }
    }

    /// Polls every engine once now, concurrently, and waits for the results.
    public func refreshNow() async {
        await withTaskGroup(of: Void.self) { group in
            for a in adapters {
                group.addTask { [self] in await self.pollOnce(a) }
            }
        }
    }

    /// Stops polling and every managed process; ends all `changes()` streams.
    public func shutdown() async {
        let (tasks, subs, waiters) = state.withLock { s in
            s.shutDown = true
            defer { s.tasks = [:]; s.subscribers = [:]; s.loadWatcher?.finish(); s.loadWatcher = nil }
            var waiters: [Waiter] = []
            for id in s.engines.keys {
                waiters += s.engines[id]!.waiters
                s.engines[id]!.waiters = []
            }
            return (Array(s.tasks.values), Array(s.subscribers.values), waiters)
        }
        for w in waiters { w.continuation.resume(returning: .unavailable("node is shutting down")) }
        for t in tasks { t.cancel() }
        for t in tasks { await t.value }
        await withTaskGroup(of: Void.self) { group in
            for a in adapters { group.addTask { await a.stop() } }
        }
        for c in subs { c.finish() }
    }

    private func pollLoop(_ adapter: any EngineAdapter) async {
        var next = ContinuousClock.now + pollInterval
        while !Task.isCancelled {
            await sleep(max(next - ContinuousClock.now, .milliseconds(10)))
            if Task.isCancelled { return }
            next = ContinuousClock.now + pollInterval
            await pollOnce(adapter)
        }
    }

    private func pollOnce(_ adapter: any EngineAdapter) async {
        let startedAt = ContinuousClock.now
        let (activity, answered) = state.withLock { s in (s.engines[adapter.id]?.activity ?? 0, s.engines[adapter.id]?.answered ?? 0) }
        let polledAt = clock.nowNanos()
        let snap = await adapter.refresh()
        apply(snap, pollStartedAt: startedAt, activity: activity, polledAt: polledAt, answered: answered)
    }

    /// Whether a failed poll leaves an engine in service: the poll failed only because the engine
    /// answered too slowly, the engine was in service, and it answered one of meshd's own requests
    /// in full while the poll waited. That is an engine busy serving (a llama-server or a vLLM with
    /// hundreds of streams can take seconds to answer `/v1/models`), not a hung one: a hung engine
    /// answers nothing, and the proxy's own timeouts mark it unhealthy.
    static func keepsServing(after poll: EngineSnapshot, wasHealthy: Bool, answeredDuringPoll: Bool) -> Bool {
        !poll.healthy && poll.pollTimedOut && wasHealthy && answeredDuringPoll
    }

    // MARK: state

    /// A poll's result. `activity` is the engine's count of request starts and ends when the poll
    /// began (unchanged: the poll was quiet); `polledAt` its start on `clock`; `answered` its count
    /// of requests answered in full then (moved: the engine served while the poll waited).
    private func apply(_ snap: EngineSnapshot, pollStartedAt: ContinuousClock.Instant, activity: UInt64, polledAt: UInt64,
                       answered: UInt64) {
        enum LogEvent { case none, up(Int), down(String, first: Bool), detail(String), slow(String, serving: Int) }
        var woken: [Waiter] = []
        var failed: [Waiter] = []
        var loadChanged: AsyncStream<Void>.Continuation?
        let (event, published): (LogEvent, [EngineSnapshot]?) = state.withLock { s in
            guard var e = s.engines[snap.id], !s.shutDown else { return (.none, nil) }
            let before = e.snapshot
            if Self.keepsServing(after: snap, wasHealthy: before.healthy && e.loggedHealthy == true && e.mark == nil,
                                 answeredDuringPoll: e.answered != answered) {
                // Busy, not dead: what the last good poll said stands (models, slots, load).
                e.slowPolls += 1
                let first = e.slowPolls == 1
                s.engines[snap.id] = e
                return (first ? .slow(snap.healthDetail ?? "timed out", serving: e.open) : .none, nil)
            }
            e.slowPolls = 0
            e.snapshot = snap
            if var report = snap.slotReport {
                // Only a quiet poll's report, numbered and stamped; else the last quiet one stays
                // (applied once by its number; its stamp bounds what it may still correct).
                if e.activity == activity {
                    e.slotReports += 1
                    report.number = e.slotReports
                    report.polledAt = polledAt
                    e.snapshot.slotReport = report
                } else {
                    e.snapshot.slotReport = before.slotReport
                }
            }
            if let running = snap.load.running { e.external = max(0, running + (snap.load.waiting ?? 0) - e.open) }
            // A failure reported by the proxy after this poll began outlives the poll's result.
            if let m = e.mark, m.at < pollStartedAt { e.mark = nil }
            let healthy = snap.healthy && e.mark == nil
            var event = LogEvent.none
            if e.loggedHealthy != healthy {
                event = healthy ? .up(snap.models.count) : .down(e.mark?.reason ?? snap.healthDetail ?? "unhealthy", first: !e.polled)
                e.loggedHealthy = healthy
            } else if !healthy, before.healthDetail != snap.healthDetail, let d = snap.healthDetail {
                event = .detail(d)
            }
            e.polled = true
            if !healthy {
                // Requests waiting for this engine go elsewhere now rather than wait for it to return.
                failed = e.waiters
                e.waiters = []
            }
            s.engines[snap.id] = e
            woken = Self.admitWaiters(&s, snap.id)
            // What the engine says it runs moved (its requests ended since meshd's own count did):
            // peers hear of it now, not at the next heartbeat.
            if (before.load.running, before.load.waiting) != (snap.load.running, snap.load.waiting) { loadChanged = s.loadWatcher }
            return (event, publishIfChanged(&s))
        }
        loadChanged?.yield()
        for w in woken { w.continuation.resume(returning: .admitted) }
        let why = "\(snap.id) is unhealthy: \(snap.healthDetail ?? "unhealthy")"
        for w in failed { w.continuation.resume(returning: .unavailable(why)) }
        var meta: Logger.Metadata = ["engine": "\(snap.id)", "url": "\(snap.url)"]
        switch event {
        case .none: break
        case .up(let n):
            meta["models"] = "\(n)"
            logger.info("engine healthy", metadata: meta)
        case .down(let reason, let first):
            meta["reason"] = "\(reason)"
            if first && autodetected {
                logger.info("no engine answering (auto-detected default); will keep probing", metadata: meta)
            } else {
                logger.warning("engine unhealthy", metadata: meta)
            }
        case .detail(let d):
            meta["reason"] = "\(d)"
            logger.debug("engine still unhealthy", metadata: meta)
        case .slow(let d, let serving):
            meta["poll"] = "\(d)"
            meta["open_requests"] = "\(serving)"
            logger.notice("engine slow to answer its poll while it answers requests; kept in service", metadata: meta)
        }
        if let published { send(published) }
    }

    /// Recomputes the signature; returns the snapshots to publish when it changed.
    private func publishIfChanged(_ s: inout State) -> [EngineSnapshot]? {
        let snaps = compose(s)
        let sig = Self.signature(snaps)
        guard sig != s.signature else { return nil }
        s.signature = sig
        return s.subscribers.isEmpty ? nil : snaps
    }

    private func send(_ snaps: [EngineSnapshot]) {
        let subs = state.withLock { Array($0.subscribers.values) }
        for c in subs { c.yield(snaps) }
    }

    private static func signature(_ snaps: [EngineSnapshot]) -> [Signature] {
        snaps.map { Signature(id: $0.id, healthy: $0.healthy,
                              models: $0.healthy ? $0.models.map { "\($0.name)|\($0.loaded)" }.sorted() : []) }
    }

    private func compose(_ s: State) -> [EngineSnapshot] {
        s.adapters.compactMap { a in s.engines[a.id].map(Self.compose) }
    }

    private static func compose(_ e: EngineState) -> EngineSnapshot {
        var snap = e.snapshot
        snap.load.inFlight = e.open + e.waiters.count
        snap.load.queued = e.waiters.count
        snap.load.limit = limit(e)
        snap.load.external = e.external
        snap.speeds = e.speeds
        if let m = e.mark {
            snap.healthy = false
            snap.healthDetail = m.reason
        }
        return snap
    }

    // MARK: public queries and updates

    /// The latest state of every engine, in configuration order. No I/O.
    public func snapshot() -> [EngineSnapshot] {
        state.withLock { compose($0) }
    }

    /// The latest state of one engine. No I/O.
    public func snapshot(_ engineID: String) -> EngineSnapshot? {
        state.withLock { $0.engines[engineID].map(Self.compose) }
    }

    /// The adapter with this id (to reach a managed engine's status and output, for instance).
    public func adapter(_ engineID: String) -> (any EngineAdapter)? {
        adapters.first { $0.id == engineID }
    }

    /// Headers to send with every request proxied to this engine (an API key, if configured).
    public func requestHeaders(for engineID: String) -> [(String, String)] {
        adapter(engineID)?.requestHeaders ?? []
    }

    /// Makes an admitted request's engine ready (a split starts on its first request): the engine's
    /// base URL now, or why it cannot serve. The engine is polled again after a start, so its state
    /// (models, load) is current for the next routing decision.
    public func prepare(_ engineID: String) async -> Result<String, DetailError> {
        guard let a = adapter(engineID) else { return .failure(DetailError("no engine \(engineID)")) }
        let before = a.baseURL
        if let why = await a.prepare() { return .failure(DetailError(why)) }
        if a.baseURL != before { await pollOnce(a) }
        return .success(a.baseURL)
    }

    /// Unloads the engine's model now, where the engine can (a stored model); then polls it.
    public func unload(_ engineID: String) async {
        guard let a = adapter(engineID) else { return }
        await a.unload()
        await pollOnce(a)
    }

    /// A request's own keep-alive for the engine's model (Ollama `keep_alive`; nil: the default).
    public func setKeepAlive(_ engineID: String, seconds: Double?) { adapter(engineID)?.setKeepAlive(seconds) }

    /// A request failed on the engine before it answered, and the engine itself decides what that
    /// means (a split checks its llama-server before the next request).
    public func noteFailure(_ engineID: String) { adapter(engineID)?.noteFailure() }

    /// After ``noteFailure(_:)``: lets the engine take the failure in, then polls it, so routing
    /// sees it as the next request will find it (a split that ended is servable again, to be
    /// planned anew, rather than unhealthy from a health check that hit its dying llama-server).
    public func settle(_ engineID: String) async {
        guard let a = adapter(engineID) else { return }
        await a.settle()
        await pollOnce(a)
    }

    /// Managed `llama.cpp` engines, for the node to wire splits into (before `start()`).
    public var managedLlamaEngines: [ManagedLlamaCppEngine] {
        adapters.compactMap { $0 as? ManagedLlamaCppEngine }.filter { !$0.onDemand }
    }

    /// Adds an engine while the node runs (a model put in the store): started and polled at once
    /// when the registry runs. False when its id is taken or the registry has shut down.
    @discardableResult
    public func add(_ adapter: any EngineAdapter, maxConcurrency: Int? = nil) async -> Bool {
        let running = state.withLock { s -> Bool? in
            guard !s.shutDown, s.engines[adapter.id] == nil else { return nil }
            s.adapters.append(adapter)
            s.engines[adapter.id] = EngineState(snapshot: EngineSnapshot(id: adapter.id, kind: adapter.kind, url: adapter.baseURL,
                                                                         healthy: false, healthDetail: "not polled yet"),
                                                configuredLimit: maxConcurrency)
            return s.started
        }
        guard let running else { return false }
        guard running else { return true }
        await adapter.start()
        await pollOnce(adapter)
        let task = Task { [self] in await self.pollLoop(adapter) }
        let kept = state.withLock { s -> Bool in
            guard !s.shutDown, s.engines[adapter.id] != nil else { return false }
            s.tasks[adapter.id] = task
            return true
        }
        if !kept { task.cancel() }
        return true
    }

    /// Takes a reloaded engine list (`engines:` was `old`, is `new`): entries no longer listed
    /// are removed, new ones added, changed ones replaced (a managed llama-server restarts);
    /// unchanged ones are left alone, with their measured speeds and open requests. Engines the
    /// model store added are not entries and are never touched. Requests open on a removed
    /// engine run to their end. Returns the ids added, removed and replaced.
    public func reconfigure(from old: [EngineConfig], to new: [EngineConfig], transport: any EngineHTTPTransport,
                            managedOptions: ManagedEngineOptions = .init()) async -> (added: [String], removed: [String], replaced: [String]) {
        let oldByID = Dictionary(zip(Self.ids(old), old), uniquingKeysWith: { a, _ in a })
        let newIDs = Self.ids(new)
        let newByID = Dictionary(zip(newIDs, new), uniquingKeysWith: { a, _ in a })
        let removed = Self.ids(old).filter { newByID[$0] == nil }
        let added = newIDs.filter { oldByID[$0] == nil }
        let replaced = newIDs.filter { id in oldByID[id].map { $0 != newByID[id] } ?? false }
        for id in removed + replaced { await remove(id) }
        let adapters = Self.makeAdapters(engines: new, transport: transport, logger: logger, pollInterval: pollInterval,
                                         managedOptions: managedOptions)
        let wanted = Set(added + replaced)
        for a in adapters where wanted.contains(a.id) { await add(a, maxConcurrency: newByID[a.id]?.maxConcurrency) }
        return (added, removed, replaced)
    }

    /// Removes an engine while the node runs (a stored model's file was deleted): stops its poll
    /// and the adapter; requests waiting for it are refused. Requests open on it run to their end.
    public func remove(_ engineID: String) async {
        let taken = state.withLock { s -> (any EngineAdapter, Task<Void, Never>?, [Waiter], [EngineSnapshot]?)? in
            guard let i = s.adapters.firstIndex(where: { $0.id == engineID }) else { return nil }
            let a = s.adapters.remove(at: i)
            let waiters = s.engines[engineID]?.waiters ?? []
            s.engines[engineID] = nil
            let t = s.tasks.removeValue(forKey: engineID)
            return (a, t, waiters, publishIfChanged(&s))
        }
        guard let (adapter, task, waiters, published) = taken else { return }
        if let published { send(published) }
        for w in waiters { w.continuation.resume(returning: .unavailable("engine \(engineID) was removed")) }
        task?.cancel()
        await task?.value
        await adapter.stop()
    }

    /// A request is being sent to the engine now, whatever its limit (``acquire(_:)`` waits for a place).
    public func beginRequest(_ engineID: String) {
        let w = state.withLock { s in
            s.engines[engineID]?.open += 1
            s.engines[engineID]?.activity &+= 1
            return s.loadWatcher
        }
        w?.yield()
    }

    /// The limit of open requests in force for an engine, if any.
    static func limit(_ e: EngineState) -> Int? {
        EngineConcurrency.limit(configured: e.configuredLimit, reportedSlots: e.snapshot.load.slots, learned: e.learned.limit)
    }

    /// Takes a place for one request to `engineID`, waiting first come first served while the engine
    /// has as many open as its limit. Waiting ends when a place frees (`.admitted`), the task is
    /// cancelled (`.cancelled`) or the engine is marked unhealthy (`.unavailable`). An unknown id is
    /// admitted without counting. Pair every `.admitted` with ``endRequest(_:outcome:)``.
    public func acquire(_ engineID: String) async -> EngineAdmission {
        enum First { case admitted(AsyncStream<Void>.Continuation?), wait(UInt64) }
        let first: First = state.withLock { s in
            switch Self.takePlace(&s, engineID) {
            case nil: return .admitted(nil)
            case true?: return .admitted(s.loadWatcher)
            case false?: break
            }
            let t = s.nextTicket
            s.nextTicket &+= 1
            s.undecided.insert(t)
            return .wait(t)
        }
        let ticket: UInt64
        switch first {
        case .admitted(let w):
            w?.yield()
            return .admitted
        case .wait(let t):
            ticket = t
        }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<EngineAdmission, Never>) in
                let now: (EngineAdmission?, AsyncStream<Void>.Continuation?) = state.withLock { s in
                    s.undecided.remove(ticket)
                    if s.cancelledTickets.remove(ticket) != nil { return (.cancelled, nil) }
                    if s.shutDown { return (.unavailable("node is shutting down"), nil) }
                    switch Self.takePlace(&s, engineID) {
                    case nil: return (.admitted, nil)
                    case true?: return (.admitted, s.loadWatcher)
                    case false?:
                        s.engines[engineID]!.waiters.append(Waiter(ticket: ticket, continuation: c))
                        return (nil, s.loadWatcher)
                    }
                }
                now.1?.yield()
                if let r = now.0 { c.resume(returning: r) }
            }
        } onCancel: {
            let (found, watcher): (Waiter?, AsyncStream<Void>.Continuation?) = state.withLock { s in
                if s.undecided.contains(ticket) {
                    s.cancelledTickets.insert(ticket)
                    return (nil, nil)
                }
                guard let i = s.engines[engineID]?.waiters.firstIndex(where: { $0.ticket == ticket }) else { return (nil, nil) }
                return (s.engines[engineID]!.waiters.remove(at: i), s.loadWatcher)
            }
            watcher?.yield()
            found?.continuation.resume(returning: .cancelled)
        }
    }

    /// Takes a place on `engineID` when nobody waits before us and its limit allows (true); false:
    /// wait; nil: no such engine (admitted without counting).
    private static func takePlace(_ s: inout State, _ engineID: String) -> Bool? {
        guard let e = s.engines[engineID] else { return nil }
        guard e.waiters.isEmpty, limit(e).map({ e.open < $0 }) ?? true else { return false }
        s.engines[engineID]!.open += 1
        s.engines[engineID]!.activity &+= 1
        return true
    }

    /// Moves waiters of `engineID` into open places while its limit allows; returns them to resume
    /// (outside the lock).
    private static func admitWaiters(_ s: inout State, _ engineID: String) -> [Waiter] {
        guard var e = s.engines[engineID], !e.waiters.isEmpty else { return [] }
        let limit = Self.limit(e)
        var n = 0
        while n < e.waiters.count, limit.map({ e.open < $0 }) ?? true {
            e.open += 1
            n += 1
        }
        guard n > 0 else { return [] }
        e.activity &+= UInt64(n)
        let woken = Array(e.waiters.prefix(n))
        e.waiters.removeFirst(n)
        s.engines[engineID] = e
        return woken
    }

    /// Yields whenever a request starts or ends on an engine (in-flight counts changed), coalesced
    /// to the newest: the mesh sends its state on such changes, not only at heartbeats. One
    /// consumer; a new call replaces the previous stream.
    public func loadChanges() -> AsyncStream<Void> {
        let (stream, continuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        let old = state.withLock { s in
            defer { s.loadWatcher = continuation }
            return s.loadWatcher
        }
        old?.finish()
        return stream
    }

    /// A request begun with `acquire` or `beginRequest` ended: frees its place for the next waiter;
    /// successful outcomes update the smoothed speeds, overloaded ones the learned limit.
    public func endRequest(_ engineID: String, outcome: EngineRequestOutcome) {
        let (w, woken) = state.withLock { s -> (AsyncStream<Void>.Continuation?, [Waiter]) in
            guard var e = s.engines[engineID] else { return (nil, []) }
            if outcome.overloaded {
                e.learned.overloaded(open: e.open)
            } else if outcome.succeeded {
                e.learned.succeeded()
            }
            e.open = max(0, e.open - 1)
            e.activity &+= 1
            if outcome.succeeded {
                e.answered &+= 1
                e.speeds = Self.updated(e.speeds, with: outcome)
            }
            s.engines[engineID] = e
            return (s.loadWatcher, Self.admitWaiters(&s, engineID))
        }
        for x in woken { x.continuation.resume(returning: .admitted) }
        w?.yield()
        adapter(engineID)?.requestEnded()
    }

    /// A proxied request could not reach the engine: unhealthy until a poll that starts later
    /// succeeds. Requests waiting for a place on it are told at once, to try elsewhere.
    public func markUnhealthy(_ engineID: String, reason: String) {
        let (published, waiters): ([EngineSnapshot]?, [Waiter]) = state.withLock { s in
            guard s.engines[engineID] != nil else { return (nil, []) }
            s.engines[engineID]!.mark = (reason, ContinuousClock.now)
            s.engines[engineID]!.loggedHealthy = false
            let waiters = s.engines[engineID]!.waiters
            s.engines[engineID]!.waiters = []
            return (publishIfChanged(&s), waiters)
        }
        logger.warning("engine marked unhealthy", metadata: ["engine": "\(engineID)", "reason": "\(reason)"])
        for w in waiters { w.continuation.resume(returning: .unavailable("\(engineID) failed: \(reason)")) }
        if let published { send(published) }
    }

    /// A stream of all snapshots, yielding the current state first and then whenever the set of
    /// healthy engines or their models changes (load changes do not count). Each call is a new
    /// subscriber; slow consumers see only the newest state. Ends at `shutdown()`.
    public func changes() -> AsyncStream<[EngineSnapshot]> {
        let (stream, continuation) = AsyncStream.makeStream(of: [EngineSnapshot].self, bufferingPolicy: .bufferingNewest(1))
        let (id, current, alive): (Int, [EngineSnapshot], Bool) = state.withLock { s in
            guard !s.shutDown else { return (0, [], false) }
            let id = s.nextSubscriber
            s.nextSubscriber += 1
            s.subscribers[id] = continuation
            return (id, compose(s), true)
        }
        guard alive else {
            continuation.finish()
            return stream
        }
        continuation.onTermination = { [weak self] _ in
            _ = self?.state.withLock { $0.subscribers.removeValue(forKey: id) }
        }
        continuation.yield(current)
        return stream
    }

    // MARK: speeds

    static func updated(_ old: EngineSpeeds, with o: EngineRequestOutcome) -> EngineSpeeds {
        func smooth(_ prev: Double?, _ sample: Double?) -> Double? {
            guard let sample, sample.isFinite, sample > 0 else { return prev }
            guard let prev else { return sample }
            return prev + speedAlpha * (sample - prev)
        }
        func seconds(_ d: Duration?) -> Double? {
            guard let d else { return nil }
            let (s, a) = d.components
            return Double(s) + Double(a) / 1e18
        }
        var new = old
        let total = seconds(o.totalTime)
        let ttft = seconds(o.timeToFirstToken)
        // The engine's own prompt time when it reports one; else the time to the first token (which
        // also counts the time the request waited in the engine's queue: a slow guess).
        if let p = o.promptTokens, p > 0, let t = seconds(o.prefillTime) ?? ttft, t > 0 {
            new.prefillTokensPerSecond = smooth(old.prefillTokensPerSecond, Double(p) / t)
        }
        // Decode speed needs the first-token time: tokens after the first over the time after it.
        if let g = o.generatedTokens, g >= 2, let total, let ttft, total > ttft {
            new.decodeTokensPerSecond = smooth(old.decodeTokensPerSecond, Double(g - 1) / (total - ttft))
        }
        new.meanServiceSeconds = smooth(old.meanServiceSeconds, total)
        return new
    }
}
