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

/// The node's model store (`models:`): every GGUF file in its folder is a model this node serves
/// through a llama-server of its own, started when a request first asks for the model and stopped
/// when the model has been idle `keep_alive` or another needs the memory. The decisions are
/// ``ModelStorePlan``'s; this is the I/O: the folder, the engines in the registry, the timer.
public final class ModelStore: Sendable {
    public let directory: String
    private let settings: ModelStoreSettings
    private let registry: EngineRegistry
    private let transport: any EngineHTTPTransport
    private let logger: Logger
    private let clock: any WallClock
    private let binary: String?
    private let options: ManagedEngineOptions
    /// Memory the node offers for models besides what stored models hold now (nil: unknown).
    private let freeBytes: @Sendable (_ residentBytes: Int64) -> Int64?
    /// Sleeps between ticks (the event loop's timers in meshd).
    private let sleep: Sleeper
    private let state = Mutex(State())

    struct Entry {
        var engine: ManagedLlamaCppEngine
        var path: String
        var bytes: Int64
        var lastUsedNanos: UInt64
        /// The file's (newest shard's) modification time when scanned: a file still being written,
        /// or replaced, is read again while its model is not loaded.
        var mtime: Int = 0
    }

    struct State {
        var entries: [String: Entry] = [:]
        var task: Task<Void, Never>?
        var stopped = false
    }

    /// How long a load waits for models that serve requests to become idle (to unload them).
    static let roomWait: Duration = .seconds(60)

    /// - Parameters:
    ///   - freeBytes: given the bytes stored models hold now, the memory left for another (the
    ///     node's `hardware.offer_bytes` minus them, or its free memory); nil: not checked.
    public init(settings: ModelStoreSettings, stateDir: String, registry: EngineRegistry, transport: any EngineHTTPTransport,
                logger: Logger, clock: any WallClock, binary: String?, options: ManagedEngineOptions = .init(),
                freeBytes: @escaping @Sendable (_ residentBytes: Int64) -> Int64?,
                sleep: @escaping Sleeper = taskSleep) {
        self.sleep = sleep
        self.settings = settings
        self.directory = settings.directory(stateDir: stateDir)
        self.registry = registry
        self.transport = transport
        self.logger = logger
        self.clock = clock
        self.binary = binary
        self.options = options
        self.freeBytes = freeBytes
    }

    // MARK: lifecycle

    /// Creates the folder if missing, adds its models to the registry, and starts the timer that
    /// unloads idle models and looks at the folder again every `rescan_seconds`.
    public func start() async {
        var isDir: ObjCBool = false
        if !FileManager.default.fileExists(atPath: directory, isDirectory: &isDir) {
            do {
                try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            } catch {
                logger.warning("cannot create the model store folder; no stored models", metadata: [
                    "dir": "\(directory)", "error": "\(error)"])
            }
        }
        await rescan()
        let task = Task { [self] in await self.run() }
        let keep = state.withLock { s -> Bool in
            guard !s.stopped else { return false }
            s.task = task
            return true
        }
        if !keep { task.cancel() }
    }

    /// Stops the timer (the registry's shutdown stops the engines).
    public func stop() async {
        let task = state.withLock { s -> Task<Void, Never>? in
            s.stopped = true
            defer { s.task = nil }
            return s.task
        }
        task?.cancel()
        await task?.value
    }

    private func run() async {
        let tick = Duration.milliseconds(250)
        var nextScan = ContinuousClock.now + .seconds(settings.rescanSeconds)
        while !Task.isCancelled {
            // With no stored model there is nothing to unload, only the next rescan to wait for:
            // an engine-only node wakes once a second for the store, not four times. Not longer:
            // a model copy that lands rescans at once, and its keep-alive counts from then.
            let idle = state.withLock { $0.entries.isEmpty }
            await sleep(idle ? min(.seconds(1), max(nextScan - ContinuousClock.now, tick)) : tick)
            if Task.isCancelled { return }
            await unloadExpired()
            if ContinuousClock.now >= nextScan {
                await rescan()
                nextScan = ContinuousClock.now + .seconds(settings.rescanSeconds)
            }
        }
    }

    // MARK: the folder

    /// The store's GGUF files now: model name → (path of the file or first shard, total bytes, newest mtime).
    func scan() -> [String: (path: String, bytes: Int64, mtime: Int)] {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return [:] }
        var out: [String: (path: String, bytes: Int64, mtime: Int)] = [:]
        for file in names.sorted() {
            guard let model = ModelStorePlan.modelName(fileName: file) else { continue }
            let path = directory + "/" + file
            var st = stat()
            guard stat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { continue }
            var bytes = Int64(st.st_size)
            var mtime = Int(st.st_mtim.tv_sec) * 1000 + Int(st.st_mtim.tv_nsec / 1_000_000)
            let stem = String(file.dropLast(5))
            if model != stem {
                // The first shard of a split GGUF (`NAME-00001-of-0000N.gguf`): its shards together.
                let stem = model
                for other in names where other != file && other.hasPrefix(stem + "-") && other.hasSuffix(".gguf")
                    && ModelStorePlan.modelName(fileName: other) == nil {
                    var o = stat()
                    if stat(directory + "/" + other, &o) == 0 {
                        bytes += Int64(o.st_size)
                        mtime = max(mtime, Int(o.st_mtim.tv_sec) * 1000 + Int(o.st_mtim.tv_nsec / 1_000_000))
                    }
                }
            }
            out[model] = (path, bytes, mtime)
        }
        return out
    }

    /// Adds engines for new files and removes those whose file is gone (a loaded one is stopped).
    /// A file that changed (still being copied in, or replaced) is read again while its model is
    /// not loaded: its size and GGUF facts are then current.
    public func rescan() async {
        let found = scan()
        let (added, removed, changed) = state.withLock { s -> ([String], [(String, Entry)], Set<String>) in
            guard !s.stopped else { return ([], [], []) }
            let removed = s.entries.filter { found[$0.key] == nil || found[$0.key]!.path != $0.value.path }.map { ($0.key, $0.value) }
            let changed = s.entries.filter { name, e in
                guard let f = found[name], f.path == e.path, f.bytes != e.bytes || f.mtime != e.mtime else { return false }
                return e.engine.status.phase == .available
            }
            for (name, _) in removed { s.entries[name] = nil }
            for (name, _) in changed { s.entries[name] = nil }
            return (found.keys.filter { s.entries[$0] == nil }.sorted(), removed + changed.map { ($0.key, $0.value) }, Set(changed.keys))
        }
        for (name, entry) in removed {
            if changed.contains(name) {
                logger.info("a stored model's file changed: reading it again", metadata: ["model": "\(name)", "path": "\(entry.path)"])
            } else {
                logger.notice("a stored model's file is gone: no longer served", metadata: ["model": "\(name)", "path": "\(entry.path)"])
            }
            await registry.remove(entry.engine.id)
        }
        for name in added {
            guard let file = found[name] else { continue }
            var config = EngineConfig(kind: .llamaCpp, model: file.path, alias: name, args: settings.args, binary: binary)
            config.split = .never
            let engine = ManagedLlamaCppEngine(config: config, transport: transport, logger: logger, options: options,
                                               id: Self.engineID(name), onDemand: true)
            engine.setLoadGate { [weak self] model in await self?.makeRoom(for: model) }
            engine.setOnUse { [weak self] in self?.touch(name) }
            let fresh = state.withLock { s -> Bool in
                guard !s.stopped, s.entries[name] == nil else { return false }
                s.entries[name] = Entry(engine: engine, path: file.path, bytes: file.bytes, lastUsedNanos: clock.nowNanos(), mtime: file.mtime)
                return true
            }
            guard fresh else { continue }
            if await registry.add(engine) {
                logger.info("stored model found", metadata: ["model": "\(name)", "path": "\(file.path)", "bytes": "\(file.bytes)"])
            } else {
                state.withLock { $0.entries[name] = nil }
                logger.warning("a stored model's engine id is taken; not served", metadata: ["model": "\(name)"])
            }
        }
    }

    /// A stored model's file (the first shard of a split GGUF) and its bytes, as last scanned.
    public func file(_ model: String) -> (path: String, bytes: Int64)? {
        state.withLock { s in s.entries[model].map { ($0.path, $0.bytes) } }
    }

    /// Deletes a stored model: stops its llama-server, removes its file (every shard) and its engine.
    /// False when the store has no such model.
    public func delete(_ model: String) async throws -> Bool {
        guard let entry = state.withLock({ $0.entries[model] }) else { return false }
        await entry.engine.unload()
        var paths = [entry.path]
        if let names = try? FileManager.default.contentsOfDirectory(atPath: directory) {
            paths += names.filter { $0.hasPrefix(model + "-") && $0.hasSuffix(".gguf") && ModelStorePlan.modelName(fileName: $0) == nil
                && entry.path.hasSuffix("-00001-of-" + $0.dropLast(5).suffix(5) + ".gguf") }.map { directory + "/" + $0 }
        }
        for p in paths where unlink(p) != 0 && errno != ENOENT {
            throw DetailError("cannot delete \(p): \(String(cString: strerror(errno)))")
        }
        logger.notice("stored model deleted", metadata: ["model": "\(model)", "path": "\(entry.path)"])
        await rescan()
        return true
    }

    /// Stores `source` again as `destination` (Ollama's copy): a hard link to the same file (no
    /// space used) where the folder allows, else a byte copy. False when the store has no `source`;
    /// throws when `destination` exists or the file cannot be made.
    public func copy(_ source: String, to destination: String) async throws -> Bool {
        guard let entry = state.withLock({ $0.entries[source] }) else { return false }
        guard entry.path == directory + "/" + source + ".gguf" else {
            throw DetailError("'\(source)' is a split GGUF; copy its shards by hand")
        }
        let target = directory + "/" + destination + ".gguf"
        if access(target, F_OK) == 0 { throw DetailError("a model '\(destination)' is already in the store") }
        if link(entry.path, target) != 0 {
            do {
                try FileManager.default.copyItem(atPath: entry.path, toPath: target)
            } catch {
                throw DetailError("cannot copy \(entry.path) to \(target): \(error)")
            }
        }
        logger.notice("stored model copied", metadata: ["model": "\(source)", "as": "\(destination)"])
        await rescan()
        return true
    }

    /// The registry id of a stored model's engine.
    public static func engineID(_ model: String) -> String { "store:\(model)" }

    // MARK: decisions

    /// Each stored model as planning sees it now; requests open on one count as use now.
    func states(now: UInt64, asking: String? = nil) -> [StoredModelState] {
        let ids = state.withLock { s in s.entries.mapValues { $0.engine.id } }
        var busy: [String: Int] = [:]
        for (name, id) in ids { busy[name] = registry.snapshot(id)?.load.busy ?? 0 }
        let entries = state.withLock { s -> [(String, Entry)] in
            for (name, n) in busy where n > 0 && s.entries[name] != nil { s.entries[name]!.lastUsedNanos = now }
            return s.entries.map { ($0.key, $0.value) }
        }
        return entries.map { name, e in
            let phase: StoredModelState.Phase
            switch e.engine.status.phase {
            case .running: phase = .loaded
            case .starting: phase = name == asking ? .available : .loading
            default: phase = .available
            }
            var m = StoredModelState(name: name, bytes: e.bytes, phase: phase, busy: busy[name] ?? 0, lastUsedNanos: e.lastUsedNanos)
            m.keepAliveSeconds = e.engine.keepAliveOverride
            // Only a loaded model's expiry is updated here: while it loads (and when a load asks for
            // room), the one its request's start set stays, so the poll right after the load carries it.
            if phase == .loaded { e.engine.setExpiry(ModelStorePlan.expiry(m, keepAliveSeconds: settings.keepAliveSeconds)) }
            return m
        }
    }

    /// A request to `model` started or ended: its last use is now, and it expires its keep-alive from now.
    func touch(_ model: String) {
        let now = clock.nowNanos()
        guard let engine = state.withLock({ s -> ManagedLlamaCppEngine? in
            s.entries[model]?.lastUsedNanos = now
            return s.entries[model]?.engine
        }) else { return }
        var m = StoredModelState(name: model, bytes: 0, phase: .loaded, lastUsedNanos: now)
        m.keepAliveSeconds = engine.keepAliveOverride
        engine.setExpiry(ModelStorePlan.expiry(m, keepAliveSeconds: settings.keepAliveSeconds))
    }

    /// Unloads models idle past the keep-alive.
    func unloadExpired() async {
        let now = clock.nowNanos()
        let expired = ModelStorePlan.expired(states(now: now), keepAliveSeconds: settings.keepAliveSeconds, now: now)
        for name in expired {
            guard let engine = state.withLock({ $0.entries[name]?.engine }) else { continue }
            logger.info("unloading an idle stored model", metadata: ["model": "\(name)", "keep_alive_seconds": "\(settings.keepAliveSeconds)"])
            await engine.unload()
        }
    }

    /// Before `model` loads: unloads what must go for it to fit (least recently used idle models
    /// first), waiting up to ``roomWait`` for busy ones; nil when it may load, else why not.
    func makeRoom(for model: String) async -> String? {
        let deadline = ContinuousClock.now + Self.roomWait
        while true {
            let now = clock.nowNanos()
            let models = states(now: now, asking: model)
            let resident = models.filter { $0.phase != .available && $0.name != model }.reduce(Int64(0)) { $0 + $1.bytes }
            switch ModelStorePlan.makeRoom(for: model, models: models, freeBytes: freeBytes(resident), maxLoaded: settings.maxLoaded) {
            case .success(let unload):
                for name in unload {
                    guard let engine = state.withLock({ $0.entries[name]?.engine }) else { continue }
                    logger.info("unloading a stored model to make room", metadata: ["model": "\(name)", "for": "\(model)"])
                    await engine.unload()
                }
                state.withLock { s in s.entries[model]?.lastUsedNanos = clock.nowNanos() }
                return nil
            case .failure(let refusal):
                if case .busy = refusal, ContinuousClock.now < deadline {
                    try? await Task.sleep(for: .milliseconds(100))
                    continue
                }
                logger.warning("a stored model cannot be loaded", metadata: ["model": "\(model)", "why": "\(refusal)"])
                return refusal.description
            }
        }
    }

    /// The store's models and their state, for `meshctl models` and the admin API.
    public func models() -> [(name: String, path: String, bytes: Int64, phase: StoredModelState.Phase, engineID: String)] {
        let now = clock.nowNanos()
        let byName = Dictionary(uniqueKeysWithValues: states(now: now).map { ($0.name, $0.phase) })
        return state.withLock { s in
            s.entries.map { ($0.key, $0.value.path, $0.value.bytes, byName[$0.key] ?? .available, $0.value.engine.id) }
        }.sorted { $0.name < $1.name }
    }
}
