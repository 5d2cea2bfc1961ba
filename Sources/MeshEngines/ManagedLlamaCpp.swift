#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import Logging
import MeshCore
import Synchronization

/// Timing knobs of a managed engine (defaults are the production values).
public struct ManagedEngineOptions: Sendable, Hashable {
    /// How long a started llama-server may take to answer `GET /health` with 200.
    public var startupTimeout: Duration = .seconds(120)
    /// How often `/health` is polled while starting.
    public var healthPollInterval: Duration = .milliseconds(100)
    /// First restart delay; doubled after every crash up to `maxBackoff`.
    public var initialBackoff: Duration = .milliseconds(500)
    public var maxBackoff: Duration = .seconds(30)
    /// A process that ran healthy this long before it died restarts after `initialBackoff` again.
    public var backoffResetAfter: Duration = .seconds(60)
    /// How long `stop()` waits after SIGTERM before SIGKILL.
    public var stopGrace: Duration = .seconds(5)
    /// Output lines kept for diagnostics.
    public var logLines: Int = 200
    /// Limit for each HTTP poll request to the engine.
    public var requestTimeout: Duration = .seconds(3)

    public init() {}
}

/// What a managed engine's supervisor is doing.
public struct ManagedEngineStatus: Sendable, Hashable {
    public enum Phase: Sendable, Hashable {
        /// `start()` not called yet.
        case idle
        /// Process started, waiting for `GET /health` == 200.
        case starting
        /// Healthy process serving at `port`.
        case running
        /// Process ended (or could not be started); waiting `nextRestartDelay` before the next try.
        case restarting
        /// `stop()` was called.
        case stopped
        /// The model does not fit this node: it is split across nodes, planned and started when a
        /// request first asks for it (and again after a split ends).
        case awaitingSplit
        /// A stored model (``ModelStore``): on disk, no process; started by its first request.
        case available
    }

    public var phase: Phase = .idle
    public var pid: Int32?
    public var port: Int?
    /// Processes started so far.
    public var launches: Int = 0
    public var lastExit: ProcessExit?
    /// Delay before the pending restart (set while `.restarting`).
    public var nextRestartDelay: Duration?
    /// Human-readable reason when not running.
    public var detail: String?
}

/// A llama-server meshd starts and supervises itself (`kind: llama.cpp`).
///
/// Starts `llama-server -m MODEL --host 127.0.0.1 --port FREEPORT --alias NAME [args...]`, keeps
/// the last output lines, waits for `GET /health` == 200, then behaves like an ``OpenAIAdapter`` at
/// that URL. A process that dies is restarted with exponential backoff; `stop()` sends SIGTERM,
/// then SIGKILL after `stopGrace`. Children get `PR_SET_PDEATHSIG=SIGKILL` through `setpriv` when
/// available (see ``ChildProcess``), so they die with meshd even on SIGKILL; without setpriv, meshd's
/// shutdown path (`EngineRegistry.shutdown()`) is what stops them.
public final class ManagedLlamaCppEngine: EngineAdapter {
    public let id: String
    public let kind: EngineKind = .llamaCpp
    public let config: EngineConfig
    public let options: ManagedEngineOptions
    /// The model name clients use.
    public let alias: String
    /// A model of the node's store: no process until a request asks for it (``prepare()``), and
    /// none again after ``unload()`` or a crash (the next request starts it).
    public let onDemand: Bool

    private let transport: any EngineHTTPTransport
    private let logger: Logger
    private let inner: OpenAIAdapter
    private let state = Mutex(State())
    private let output: Mutex<LineRing>

    struct State {
        var status = ManagedEngineStatus()
        var url: String = ""
        var child: ChildProcess?
        var task: Task<Void, Never>?
        var stopping = false
        var lastStderr: String?
        /// The model file's GGUF metadata and size, read once (nil: not read yet).
        var gguf: GGUFFacts?
        /// Splits across nodes, when meshd can (a mesh, `split.enabled`).
        var splitter: (any SplitLaunching)?
        /// The split starting now: requests that arrive meanwhile wait for the same one.
        var splitStart: Task<Void, any Error>?
        /// The split running now.
        var split: SplitLaunch?
        /// A request just failed on it (see ``noteFailure()``).
        var suspect = false
        /// meshd stopped the split's llama-server (a worker failed) and its end is not seen yet:
        /// the engine is servable (the next request plans anew), not unhealthy.
        var aborting = false
        /// On demand: the start under way (requests that arrive meanwhile wait for the same one).
        var loadStart: Task<String?, Never>?
        /// On demand: the last request's own keep-alive in seconds (nil: the store's).
        var keepAlive: Double?
        /// On demand: when the store will unload it if it stays idle (wall-clock nanoseconds).
        var expiresAt: UInt64?
        /// On demand: told when a request starts (prepare) and ends: the store's last use.
        var onUse: (@Sendable () -> Void)?
        /// On demand: asked before a start; makes room (unloads others) or says why not.
        var loadGate: (@Sendable (String) async -> String?)?
    }

    /// What the model file says of itself, for `/api/show` and split planning.
    struct GGUFFacts: Sendable {
        var architecture: String?
        var contextLength: Int?
        var fileBytes: Int64?
        /// KV cache bytes per token of context (f16).
        var kvBytesPerToken: Int64?
        var blockCount: Int?
    }

    /// - Parameter id: defaults to `llama.cpp:ALIAS`.
    public init(config: EngineConfig, transport: any EngineHTTPTransport, logger: Logger,
                options: ManagedEngineOptions = .init(), id: String? = nil, onDemand: Bool = false) {
        self.onDemand = onDemand
        self.config = config
        self.options = options
        self.alias = config.managedModelName ?? "llama.cpp"
        self.id = id ?? "llama.cpp:\(alias)"
        self.transport = transport
        var l = logger
        l[metadataKey: "engine"] = "\(self.id)"
        self.logger = l
        self.inner = OpenAIAdapter(url: "http://127.0.0.1:1", transport: transport, apiKeyFile: config.apiKeyFile,
                                   id: "llama.cpp:\(alias)", kind: .llamaCpp, timeout: options.requestTimeout)
        self.output = Mutex(LineRing(capacity: max(1, options.logLines)))
    }

    public var baseURL: String { state.withLock { $0.url } }
    public var requestHeaders: [(String, String)] { inner.requestHeaders }

    /// What the supervisor is doing now.
    public var status: ManagedEngineStatus { state.withLock { $0.status } }

    /// The last output lines of the process (stdout and stderr, `[stderr] ` marks the latter), oldest first.
    public func recentOutput() -> [String] { output.withLock { $0.lines } }

    // MARK: lifecycle

    /// Lets the engine split its model across nodes when it does not fit this one (call before `start()`).
    public func setSplitLauncher(_ launcher: any SplitLaunching) {
        state.withLock { $0.splitter = launcher }
    }

    /// The model as split planning sees it: the file's bytes, the KV cache of the context it is run
    /// with (`-c`/`--ctx-size` in `args`, else the model's own), its `split:` policy.
    public var splitModel: SplitModel? {
        let facts = ggufFacts()
        guard let weights = facts.fileBytes else { return nil }
        let ctx = Self.contextArgument(config.args) ?? facts.contextLength ?? 4096
        let kv = facts.kvBytesPerToken.map { $0 * Int64(max(ctx, 1)) } ?? 0
        return SplitModel(name: alias, weightsBytes: weights, kvBytes: kv, policy: config.split, layers: facts.blockCount)
    }

    /// `-c N` / `--ctx-size N` / `--ctx-size=N` (0 means the model's own).
    static func contextArgument(_ args: [String]) -> Int? {
        var value: String?
        for (i, a) in args.enumerated() {
            if (a == "-c" || a == "--ctx-size"), i + 1 < args.count { value = args[i + 1] }
            else if a.hasPrefix("--ctx-size=") { value = String(a.dropFirst("--ctx-size=".count)) }
        }
        return value.flatMap { Int($0) }.flatMap { $0 > 0 ? $0 : nil }
    }

    public func start() async {
        if onDemand {
            state.withLock { s in
                guard s.task == nil, s.loadStart == nil, !s.stopping, s.status.phase == .idle else { return }
                s.status.phase = .available
                s.status.detail = "on disk; loaded by its first request"
            }
            return
        }
        // A model this node cannot hold waits for a request, then runs as a split.
        if let splitter = state.withLock({ $0.splitter }), let model = splitModel,
           let reason = splitter.splitReason(engineID: id, model: model) {
            state.withLock { s in
                guard s.task == nil, !s.stopping else { return }
                s.status.phase = .awaitingSplit
                s.status.detail = reason
            }
            logger.notice("model does not fit this node: it will be split across nodes on its first request", metadata: ["reason": "\(reason)"])
            return
        }
        state.withLock { s in
            guard s.task == nil, !s.stopping else { return }
            s.status.phase = .starting
            s.status.detail = "starting llama-server"
            s.task = Task { [self] in await self.supervise() }
        }
    }

    /// On demand: asked before every start, to make room or refuse (the store's memory rule).
    public func setLoadGate(_ gate: @escaping @Sendable (String) async -> String?) {
        state.withLock { $0.loadGate = gate }
    }

    /// On demand: told when a request starts and ends (the store's least-recently-used order and idle time).
    public func setOnUse(_ f: @escaping @Sendable () -> Void) { state.withLock { $0.onUse = f } }

    public func requestEnded() { if onDemand { state.withLock { $0.onUse }?() } }

    /// The last request's own keep-alive (Ollama `keep_alive`), for the store's idle rule.
    public func setKeepAlive(_ seconds: Double?) { state.withLock { $0.keepAlive = seconds } }
    public var keepAliveOverride: Double? { state.withLock { $0.keepAlive } }
    /// When the store will unload the model if it stays idle (wall-clock nanoseconds), for `/api/ps`.
    public func setExpiry(_ nanos: UInt64?) { state.withLock { $0.expiresAt = nanos } }

    /// On demand: stops the model's llama-server (idle too long, or another model needs the
    /// memory); the next request starts it again. Returns once the process is gone.
    public func unload() async {
        guard onDemand else { return }
        // Marked available first: a poll meanwhile must not find a dying llama-server and call the engine unhealthy.
        let child = state.withLock { s -> ChildProcess? in
            guard !s.stopping, s.status.phase == .running, let child = s.child else { return nil }
            s.child = nil
            s.status.pid = nil
            s.status.phase = .available
            s.status.detail = "on disk; unloaded"
            return child
        }
        guard let child else { return }
        logger.info("unloading the model: stopping its llama-server", metadata: ["pid": "\(child.pid)"])
        await terminate(child)
    }

    /// On demand: loads the model (starts and waits for its llama-server), once for every request
    /// that arrives meanwhile. Returns why it cannot serve, nil when it can.
    private func loadOnDemand() async -> String? {
        let step = state.withLock { s -> (task: Task<String?, Never>?, refusal: String?) in
            if s.stopping { return (nil, "stopped") }
            if let t = s.loadStart { return (t, nil) }
            if s.status.phase == .running { return (nil, nil) }
            let gate = s.loadGate
            s.status.phase = .starting
            s.status.detail = "loading"
            let t = Task<String?, Never> { [self] in
                defer { state.withLock { $0.loadStart = nil } }
                if let gate, let refusal = await gate(alias) {
                    state.withLock { s in
                        if !s.stopping { s.status.phase = .available; s.status.detail = "not loaded: \(refusal)" }
                    }
                    return refusal
                }
                switch await launch(extraArguments: []) {
                case .failed(let outcome):
                    let why = outcome.reason + (outcome.lastLine.map { " (last output: \($0))" } ?? "")
                    state.withLock { s in
                        s.child = nil
                        s.status.pid = nil
                        if !s.stopping { s.status.phase = .available; s.status.detail = "the last load failed: \(why)" }
                    }
                    logger.warning("loading the model failed", metadata: ["why": "\(why)"])
                    return "loading '\(alias)' failed: \(why)"
                case .healthy(let child, let since):
                    Task {
                        let exit = await child.waitForExit()
                        let outcome = self.exited(exit, reason: nil, healthySince: since)
                        // Unloaded (or stopped) by meshd: the process was already let go; else it died.
                        let died = state.withLock { s -> Bool in
                            guard s.child?.pid == child.pid else { return false }
                            s.child = nil
                            s.status.pid = nil
                            guard !s.stopping else { return false }
                            s.status.phase = .available
                            s.status.detail = "on disk; its llama-server ended (\(outcome.reason)); loaded again by the next request"
                            return true
                        }
                        if died { self.logger.warning("llama-server of a stored model ended", metadata: ["why": "\(outcome.reason)"]) }
                    }
                    return nil
                }
            }
            s.loadStart = t
            return (t, nil)
        }
        if let refusal = step.refusal { return refusal }
        guard let task = step.task else { return nil }
        return await task.value
    }

    public func stop() async {
        let loadStart = state.withLock { $0.loadStart }
        let (task, child, splitStart): (Task<Void, Never>?, ChildProcess?, Task<Void, any Error>?) = state.withLock { s in
            s.stopping = true
            s.status.phase = .stopped
            s.status.detail = "stopped"
            s.status.nextRestartDelay = nil
            return (s.task, s.child, s.splitStart)
        }
        task?.cancel()
        splitStart?.cancel()
        if let child { await terminate(child) }
        // A load under way ends as its launch sees `stopping` (it stops the process it started).
        _ = await loadStart?.value
        if let late = state.withLock({ $0.child }), late !== child { await terminate(late) }
        await task?.value
        _ = try? await splitStart?.value
        state.withLock { s in
            s.child = nil
            s.status.pid = nil
        }
    }

    /// SIGTERM, wait `stopGrace`, then SIGKILL.
    private func terminate(_ child: ChildProcess) async {
        if child.exitStatus != nil { return }
        child.signal(SIGTERM)
        if await child.waitForExit(timeout: options.stopGrace) != nil { return }
        logger.warning("llama-server did not exit within \(options.stopGrace) of SIGTERM; sending SIGKILL", metadata: ["pid": "\(child.pid)"])
        child.signal(SIGKILL)
        _ = await child.waitForExit()
    }

    private var isStopping: Bool { state.withLock { $0.stopping } }

    private func supervise() async {
        var backoff = options.initialBackoff
        while !isStopping {
            let outcome = await runOnce()
            if isStopping { break }
            if let ranHealthy = outcome.ranHealthy, ranHealthy >= options.backoffResetAfter {
                backoff = options.initialBackoff
            }
            let delay = backoff
            var detail = "\(outcome.reason); restarting in \(formatSeconds(delay))"
            if let last = outcome.lastLine, !last.isEmpty { detail += " (last output: \(last))" }
            state.withLock { s in
                guard !s.stopping else { return }
                s.status.phase = .restarting
                s.status.nextRestartDelay = delay
                s.status.detail = detail
                s.status.pid = nil
                s.child = nil
            }
            logger.warning("\(detail)")
            try? await Task.sleep(for: delay)
            backoff = min(backoff * 2, options.maxBackoff)
        }
    }

    private struct RunOutcome {
        var reason: String
        var lastLine: String?
        var ranHealthy: Duration?
    }

    /// Starts one process and returns once it is gone (or could not be started).
    private func runOnce() async -> RunOutcome {
        switch await launch(extraArguments: []) {
        case .failed(let outcome):
            return outcome
        case .healthy(let child, let healthySince):
            let exit = await child.waitForExit()
            return exited(exit, reason: nil, healthySince: healthySince)
        }
    }

    private enum Launched {
        case healthy(ChildProcess, since: ContinuousClock.Instant)
        case failed(RunOutcome)
    }

    private func exited(_ exit: ProcessExit, reason: String?, healthySince: ContinuousClock.Instant?) -> RunOutcome {
        let lastLine: String? = state.withLock { s in
            s.status.lastExit = exit
            return s.lastStderr
        }
        return RunOutcome(reason: reason ?? "llama-server \(exit)", lastLine: lastLine,
                          ranHealthy: healthySince.map { ContinuousClock.now - $0 })
    }

    /// Starts llama-server (with `extraArguments` after the configured ones) and waits until it
    /// answers `/health`; a process that dies or does not become healthy in time is a failure.
    private func launch(extraArguments: [String]) async -> Launched {
        guard let model = config.model, !model.isEmpty else {
            return .failed(RunOutcome(reason: "no model configured for the managed llama.cpp engine"))
        }
        guard access(model, R_OK) == 0 else {
            return .failed(RunOutcome(reason: "model file \(model) not found or not readable"))
        }
        let binary: String
        switch Self.resolveBinary(config.binary) {
        case .success(let b): binary = b
        case .failure(let e): return .failed(RunOutcome(reason: e.message))
        }
        let port: Int
        do { port = try freeLoopbackPort() } catch { return .failed(RunOutcome(reason: "cannot find a free port: \(error)")) }
        let url = "http://127.0.0.1:\(port)"
        let args = ["-m", model, "--host", "127.0.0.1", "--port", "\(port)", "--alias", alias] + config.args + extraArguments

        state.withLock { s in s.lastStderr = nil }
        let child: ChildProcess
        do {
            child = try await ChildProcess.spawn(
                executable: binary, arguments: args,
                onLine: { [self] line, isStderr in self.record(line, isStderr: isStderr) })
        } catch {
            return .failed(RunOutcome(reason: "cannot start llama-server: \(error)"))
        }
        let accepted: Bool = state.withLock { s in
            guard !s.stopping else { return false }
            s.child = child
            s.url = url
            s.status.phase = .starting
            s.status.pid = child.pid
            s.status.port = port
            s.status.launches += 1
            s.status.nextRestartDelay = nil
            s.status.detail = "starting llama-server (loading model)"
            return true
        }
        guard accepted else {
            await terminate(child)
            return .failed(RunOutcome(reason: "stopped"))
        }
        inner.setBaseURL(url)
        logger.info("started llama-server", metadata: ["pid": "\(child.pid)", "port": "\(port)", "binary": "\(binary)"])

        // Wait for /health == 200, the process to die, or the startup timeout.
        let startedAt = ContinuousClock.now
        var healthy = false
        while !isStopping, child.exitStatus == nil {
            if let r = try? await transport.get(url + "/health", headers: inner.requestHeaders, timeout: .seconds(2)), r.status == 200 {
                healthy = true
                break
            }
            if ContinuousClock.now - startedAt >= options.startupTimeout { break }
            try? await Task.sleep(for: options.healthPollInterval)
        }
        if healthy && child.exitStatus == nil {
            let took = ContinuousClock.now - startedAt
            state.withLock { s in
                guard !s.stopping else { return }
                s.status.phase = .running
                s.status.detail = nil
            }
            logger.info("llama-server is healthy", metadata: ["after": "\(formatSeconds(took))", "url": "\(url)"])
            return .healthy(child, since: .now)
        }
        var reason: String?
        if child.exitStatus == nil && !isStopping {
            reason = "llama-server did not become healthy within \(formatSeconds(options.startupTimeout))"
            logger.warning("\(reason!); stopping it")
        }
        await terminate(child)
        return .failed(exited(await child.waitForExit(), reason: reason, healthySince: nil))
    }

    // MARK: splits

    /// Makes the engine ready for a request: a model that is split starts its split on the first
    /// request (later ones wait for the same start). Returns why it cannot serve, nil when it can.
    public func prepare() async -> String? {
        if onDemand {
            state.withLock { $0.onUse }?()
            return await loadOnDemand()
        }
        await settle()
        let step = state.withLock { s -> (task: Task<Void, any Error>?, refusal: String?) in
            if let t = s.splitStart { return (t, nil) }
            guard s.status.phase == .awaitingSplit else { return (nil, nil) }
            guard let splitter = s.splitter, !s.stopping else { return (nil, "llama-server is not running") }
            s.status.detail = "starting a split across nodes"
            let t = Task { try await self.startSplit(splitter) }
            s.splitStart = t
            return (t, nil)
        }
        if let refusal = step.refusal { return refusal }
        guard let task = step.task else { return nil }
        do {
            try await task.value
            return nil
        } catch {
            return "\(error)"
        }
    }

    /// Plans and starts a split, and watches it until it ends (then the next request plans again).
    private func startSplit(_ splitter: any SplitLaunching) async throws {
        defer { state.withLock { $0.splitStart = nil } }
        guard let model = splitModel else { throw SplitUnavailable("cannot read the model file \(config.model ?? "")") }
        let split: SplitLaunch
        do {
            split = try await splitter.prepareSplit(engineID: id, model: model)
        } catch {
            state.withLock { s in if s.status.phase == .awaitingSplit { s.status.detail = "no split now: \(error)" } }
            throw error
        }
        logger.notice("starting a split", metadata: ["split": "\(split.id)", "arguments": "\(split.arguments.joined(separator: " "))"])
        switch await launch(extraArguments: split.arguments) {
        case .failed(let outcome):
            let why = outcome.reason + (outcome.lastLine.map { " (last output: \($0))" } ?? "")
            state.withLock { s in
                s.child = nil
                s.status.pid = nil
                if !s.stopping {
                    s.status.phase = .awaitingSplit
                    s.status.detail = "the split did not start: \(why); planned again on the next request"
                }
            }
            await splitter.splitEnded(split, failure: why)
            throw SplitUnavailable("the split of \(alias) did not start: \(why)")
        case .healthy(let child, let since):
            state.withLock { $0.split = split }
            await splitter.splitServing(split)
            Task {
                let exit = await child.waitForExit()
                let outcome = self.exited(exit, reason: nil, healthySince: since)
                let stopping = state.withLock { s -> Bool in
                    s.split = nil
                    s.aborting = false
                    s.child = nil
                    s.status.pid = nil
                    if !s.stopping {
                        s.status.phase = .awaitingSplit
                        s.status.detail = "the split ended (\(outcome.reason)); planned again on the next request"
                    }
                    return s.stopping
                }
                let why = outcome.reason + (outcome.lastLine.map { " (last output: \($0))" } ?? "")
                if !stopping { self.logger.warning("split ended", metadata: ["split": "\(split.id)", "why": "\(why)"]) }
                await splitter.splitEnded(split, failure: stopping ? nil : why)
            }
        }
    }

    /// Ends the running split now (a worker failed or went silent: llama-server would abort or
    /// hang): SIGKILL its llama-server; the watcher then reports the end and the next request plans again.
    public func abortSplit(_ reason: String) {
        let child = state.withLock { s -> ChildProcess? in
            guard s.split != nil else { return nil }
            s.lastStderr = reason
            return s.child
        }
        guard let child else { return }
        state.withLock { $0.aborting = true }
        logger.warning("stopping the split's llama-server", metadata: ["why": "\(reason)"])
        child.signal(SIGKILL)
    }

    /// A request failed on this engine before it answered: the next `prepare()` gives a split's
    /// llama-server a moment to end (then plans anew) before sending to it again.
    public func noteFailure() {
        state.withLock { s in if s.split != nil { s.suspect = true } }
    }

    /// After a request's connection to the split broke: its llama-server is usually dying (a worker
    /// failed: it aborts, or meshd stops it), and may still answer for a moment. Gives it a second
    /// to end (then the split is planned anew); one still running after that serves.
    public func settle() async {
        // Stopped by meshd: its end comes (SIGKILL); wait for it however busy the machine is.
        let aborting = state.withLock { $0.aborting }
        guard state.withLock({ s in defer { s.suspect = false }; return s.suspect }) || aborting else { return }
        let deadline = ContinuousClock.now + .seconds(aborting ? 10 : 1)
        while ContinuousClock.now < deadline, state.withLock({ $0.split != nil }) {
            try? await Task.sleep(for: .milliseconds(10))
        }
    }

    /// The split this engine runs now, if any.
    public var runningSplit: SplitLaunch? { state.withLock { $0.split } }

    private func record(_ line: String, isStderr: Bool) {
        output.withLock { $0.append(isStderr ? "[stderr] " + line : line) }
        if isStderr, !line.allSatisfy({ $0 == " " || $0 == "\t" }) {
            state.withLock { $0.lastStderr = String(line.prefix(300)) }
        }
        logger.debug("\(line)", metadata: ["stream": isStderr ? "stderr" : "stdout"])
    }

    // MARK: polling

    public func refresh() async -> EngineSnapshot {
        let (status, url, split) = state.withLock { ($0.status, $0.url, $0.split) }
        if onDemand, status.phase == .available || status.phase == .starting || status.phase == .idle {
            // On disk: servable, at the cost of a cold load (routing counts it); `loading` while it starts.
            let facts = ggufFacts()
            var m = ModelInfo(name: alias, loaded: false, sizeBytes: facts.fileBytes, contextLength: facts.contextLength,
                              family: facts.architecture)
            if status.phase == .starting { m.loading = true }
            return EngineSnapshot(id: id, kind: kind, url: "", healthy: true, healthDetail: status.detail, models: [m])
        }
        let aborting = state.withLock { $0.aborting }
        if status.phase == .awaitingSplit || aborting
            || (status.phase == .starting && split == nil && state.withLock({ $0.splitStart != nil })) {
            // Servable: the first request plans and starts the split (a cold load, for routing).
            let facts = ggufFacts()
            var m = ModelInfo(name: alias, loaded: false, sizeBytes: facts.fileBytes, contextLength: facts.contextLength,
                              family: facts.architecture)
            m.split = true
            return EngineSnapshot(id: id, kind: kind, url: "", healthy: true, healthDetail: status.detail, models: [m])
        }
        guard status.phase == .running else {
            return EngineSnapshot(id: id, kind: kind, url: url, healthy: false,
                                  healthDetail: status.detail ?? "llama-server is not running")
        }
        var snap = await inner.refresh()
        snap.id = id
        snap.kind = kind
        // The engine does not say what its model is; the file does (architecture, size).
        let facts = ggufFacts()
        for i in snap.models.indices {
            if snap.models[i].family == nil { snap.models[i].family = facts.architecture }
            if snap.models[i].sizeBytes == nil { snap.models[i].sizeBytes = facts.fileBytes }
            if snap.models[i].contextLength == nil { snap.models[i].contextLength = facts.contextLength }
            if split != nil { snap.models[i].split = true }
            if let e = state.withLock({ $0.expiresAt }) { snap.models[i].expiresAt = ISO8601.format(nanos: e) }
        }
        if !snap.healthy, let d = snap.healthDetail { snap.healthDetail = "llama-server: \(d)" }
        // A process that died after the poll began is reported as such.
        let now = state.withLock { $0.status }
        if now.phase != .running {
            snap.healthy = false
            snap.pollTimedOut = false
            snap.models = []
            snap.healthDetail = now.detail ?? snap.healthDetail
        }
        return snap
    }

    /// The model file's GGUF facts, read on first use (a file that is no GGUF gives none).
    func ggufFacts() -> GGUFFacts {
        if let known = state.withLock({ $0.gguf }) { return known }
        var facts = GGUFFacts()
        if let path = config.model, let (m, size) = try? GGUFFile.read(path: path) {
            facts = GGUFFacts(architecture: m.architecture, contextLength: m.contextLength, fileBytes: size,
                              kvBytesPerToken: m.kvBytesPerToken, blockCount: m.blockCount)
        }
        state.withLock { $0.gguf = facts }
        return facts
    }

    // MARK: binary lookup

    /// The cache directory: `$MESHD_CACHE`, else `~/.cache/meshd`.
    public static var cacheDirectory: String {
        let env = ProcessInfo.processInfo.environment
        if let c = env["MESHD_CACHE"], !c.isEmpty { return c }
        return (env["HOME"] ?? NSHomeDirectory()) + "/.cache/meshd"
    }

    /// Where the bundled llama-server is built.
    public static var cachedBinaryPath: String {
        cacheDirectory + "/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin/llama-server"
    }

    /// `configured` (a path, or a name looked up on PATH), else `llama-server` on PATH, else the cache build.
    static func resolveBinary(_ configured: String?) -> Result<String, DetailError> {
        if let configured, !configured.isEmpty {
            if configured.contains("/") {
                return access(configured, X_OK) == 0 ? .success(configured)
                    : .failure(DetailError("llama-server binary \(configured) not found or not executable"))
            }
            if let p = searchPath(configured) { return .success(p) }
            return .failure(DetailError("\(configured) not found on PATH"))
        }
        if let p = searchPath("llama-server") { return .success(p) }
        let cached = cachedBinaryPath
        if access(cached, X_OK) == 0 { return .success(cached) }
        return .failure(DetailError("llama-server not found on PATH nor at \(cached)"))
    }

    /// The first executable `name` in the directories of PATH.
    public static func searchPath(_ name: String) -> String? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
        for dir in path.split(separator: ":") where !dir.isEmpty {
            let candidate = "\(dir)/\(name)"
            if access(candidate, X_OK) == 0 { return candidate }
        }
        return nil
    }
}

/// A fixed-size ring of text lines.
struct LineRing: Sendable {
    let capacity: Int
    private var storage: [String] = []
    private var head = 0

    init(capacity: Int) { self.capacity = capacity }

    mutating func append(_ line: String) {
        if storage.count < capacity {
            storage.append(line)
        } else {
            storage[head] = line
            head = (head + 1) % capacity
        }
    }

    var lines: [String] { Array(storage[head...] + storage[..<head]) }
}

/// `0.5 s`, `2 s`, `120 s`.
func formatSeconds(_ d: Duration) -> String {
    let (s, atto) = d.components
    let value = Double(s) + Double(atto) / 1e18
    if value == value.rounded() { return "\(Int(value)) s" }
    return "\((value * 10).rounded() / 10) s"
}

/// A loopback TCP port that was free a moment ago (bind 127.0.0.1:0, read it back, close).
public func freeLoopbackPort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw DetailError("socket: \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = 0
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    let rc = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard rc == 0 else { throw DetailError("bind: \(String(cString: strerror(errno)))") }
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    let rc2 = withUnsafeMutablePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
    }
    guard rc2 == 0 else { throw DetailError("getsockname: \(String(cString: strerror(errno)))") }
    return Int(UInt16(bigEndian: addr.sin_port))
}
