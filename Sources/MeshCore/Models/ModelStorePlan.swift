/// `models:` section: the node's model store, a folder of GGUF files served by llama-servers meshd
/// starts when a model is first asked for and stops when it has been idle `keep_alive`, or
/// when another needs the memory (least recently used first), as Ollama does with its own models.
public struct ModelStoreSettings: Sendable, Hashable, Codable {
    /// Whether the store is used at all.
    public var enabled = true
    /// The folder of GGUF files; empty: `STATE_DIR/models`.
    public var dir = ""
    /// Seconds a loaded model stays loaded after its last request ends (`models.keep_alive`, a
    /// duration as Ollama's `OLLAMA_KEEP_ALIVE`: 5 minutes by default); 0 unloads it as soon as it
    /// is idle, -1 keeps it until memory is needed.
    public var keepAliveSeconds = 300

    /// A keep-alive in seconds as stored: whole seconds (at least 1 when positive), any negative one -1.
    public static func seconds(keepAlive: Double) -> Int {
        keepAlive < 0 ? -1 : keepAlive == 0 ? 0 : max(1, Int(min(keepAlive, 31_536_000).rounded()))
    }

    /// How `models.keep_alive` is written back: `5m`, `90s`, `1h`, `0`, `-1`.
    public static func keepAliveText(_ seconds: Int) -> String {
        if seconds <= 0 { return String(seconds) }
        if seconds % 3600 == 0 { return "\(seconds / 3600)h" }
        if seconds % 60 == 0 { return "\(seconds / 60)m" }
        return "\(seconds)s"
    }
    /// Most stored models loaded at once (0: as many as the memory offer holds).
    public var maxLoaded = 0
    /// Seconds between two looks at the folder for models added or removed.
    public var rescanSeconds = 10
    /// Extra `llama-server` arguments for every stored model.
    public var args: [String] = []
    /// Most bytes per second this node sends of a model another node copies (0: no limit), so a
    /// copy does not take the whole link.
    public var copyBytesPerSecond = 0
    public init() {}

    /// The folder, with the default filled in.
    public func directory(stateDir: String) -> String {
        dir.isEmpty ? (stateDir.hasSuffix("/") ? stateDir + "models" : stateDir + "/models") : dir
    }
}

/// One model of the store as its planning sees it.
public struct StoredModelState: Sendable, Hashable {
    public enum Phase: String, Sendable, Hashable, Codable {
        /// On disk, no llama-server running.
        case available
        /// Its llama-server is starting (loading the weights).
        case loading
        /// Its llama-server serves it.
        case loaded
    }

    public var name: String
    /// Memory it takes while loaded (the file's bytes: the weights; the KV cache comes on top).
    public var bytes: Int64
    public var phase: Phase
    /// Requests open on it now.
    public var busy: Int
    /// When its last request ended or was seen open (the shared clock's nanoseconds).
    public var lastUsedNanos: UInt64
    /// Its last request's own keep-alive (Ollama `keep_alive`, seconds; negative: keep), over the store's.
    public var keepAliveSeconds: Double? = nil

    public init(name: String, bytes: Int64, phase: Phase, busy: Int = 0, lastUsedNanos: UInt64 = 0) {
        self.name = name
        self.bytes = bytes
        self.phase = phase
        self.busy = busy
        self.lastUsedNanos = lastUsedNanos
    }

    var resident: Bool { phase != .available }
}

/// Why a stored model cannot be loaded now.
public enum ModelStoreRefusal: Error, Sendable, Hashable, CustomStringConvertible {
    /// It needs more than the node offers even with every other stored model unloaded.
    case tooLarge(model: String, bytes: Int64, offer: Int64)
    /// Room could be made only by unloading models that are serving requests now: wait for them.
    case busy(model: String, waitingFor: [String])

    public var description: String {
        switch self {
        case .tooLarge(let m, let b, let o):
            "model '\(m)' needs \(mib(b)) and this node offers \(mib(o)) for models (hardware.offer_bytes, free memory)"
        case .busy(let m, let w):
            "no room to load '\(m)' while \(w.map { "'\($0)'" }.joined(separator: ", ")) serve requests"
        }
    }

    private func mib(_ b: Int64) -> String { "\(b / (1 << 20)) MiB" }
}

/// The store's decisions, pure: which loaded models to unload because they have been idle past
/// the keep-alive, and which to unload (least recently used first) to make room for one that is
/// asked for. Memory is counted in the models' file bytes against the node's offer.
public enum ModelStorePlan {
    /// Loaded, idle models whose keep-alive (their last request's, else `keepAliveSeconds`) has run
    /// out at `now` (oldest first).
    public static func expired(_ models: [StoredModelState], keepAliveSeconds: Int, now: UInt64) -> [String] {
        func runOut(_ m: StoredModelState) -> Bool {
            let k = m.keepAliveSeconds ?? Double(keepAliveSeconds)
            guard k >= 0, now >= m.lastUsedNanos else { return false }
            return Double(now - m.lastUsedNanos) >= k * 1e9
        }
        return models
            .filter { $0.phase == .loaded && $0.busy == 0 && runOut($0) }
            .sorted { ($0.lastUsedNanos, $0.name) < ($1.lastUsedNanos, $1.name) }
            .map(\.name)
    }

    /// When a loaded model will be unloaded if it stays idle (nanoseconds; a century ahead when it
    /// is kept until memory is needed); nil while it is not loaded.
    public static func expiry(_ m: StoredModelState, keepAliveSeconds: Int) -> UInt64? {
        guard m.phase == .loaded else { return nil }
        let k = m.keepAliveSeconds ?? Double(keepAliveSeconds)
        let seconds = k < 0 ? 100 * 365 * 86400 : k
        return m.lastUsedNanos &+ UInt64(seconds * 1e9)
    }

    /// To load `name`: the loaded models to unload first, least recently used first (empty when it
    /// fits as things are), or why it cannot be loaded now.
    ///
    /// - Parameters:
    ///   - freeBytes: memory the node offers for models now, besides what the store's resident
    ///     models already hold (nil: unknown, memory is not checked).
    ///   - maxLoaded: most resident models at once (0: no limit).
    public static func makeRoom(for name: String, models: [StoredModelState], freeBytes: Int64?,
                                maxLoaded: Int) -> Result<[String], ModelStoreRefusal> {
        guard let wanted = models.first(where: { $0.name == name }) else { return .success([]) }
        if wanted.resident { return .success([]) }
        let others = models.filter { $0.resident && $0.name != name }
        let heldBytes = others.reduce(Int64(0)) { $0 + $1.bytes }
        if let free = freeBytes, wanted.bytes > free + heldBytes {
            return .failure(.tooLarge(model: name, bytes: wanted.bytes, offer: free + heldBytes))
        }
        var needBytes = freeBytes.map { max(0, wanted.bytes - $0) } ?? 0
        var needCount = maxLoaded > 0 ? max(0, others.count + 1 - maxLoaded) : 0
        if needBytes == 0 && needCount == 0 { return .success([]) }
        // Idle loaded models, least recently used first; loading or busy ones are not touched.
        let idle = others.filter { $0.phase == .loaded && $0.busy == 0 }
            .sorted { ($0.lastUsedNanos, $0.name) < ($1.lastUsedNanos, $1.name) }
        var out: [String] = []
        for m in idle where needBytes > 0 || needCount > 0 {
            out.append(m.name)
            needBytes = max(0, needBytes - m.bytes)
            needCount = max(0, needCount - 1)
        }
        if needBytes > 0 || needCount > 0 {
            let inUse = others.filter { !out.contains($0.name) }.map(\.name).sorted()
            return .failure(.busy(model: name, waitingFor: inUse))
        }
        return .success(out)
    }

    /// The model name a GGUF file in the store serves: its file name without `.gguf`; nil for a
    /// file that is not a model (not `.gguf`, hidden, a partial copy, or a later shard of a split
    /// GGUF `NAME-0000K-of-0000N.gguf`, whose first shard names it).
    public static func modelName(fileName: String) -> String? {
        guard fileName.hasSuffix(".gguf"), !fileName.hasPrefix("."), fileName.count > 5 else { return nil }
        var stem = String(fileName.dropLast(5))
        if let shard = shardSuffix(stem) {
            guard shard.index == 1 else { return nil }
            stem = String(stem.dropLast(shard.length))
        }
        return stem.isEmpty ? nil : stem
    }

    /// `-00001-of-00003` at the end of a stem: the shard's number and the suffix's length.
    static func shardSuffix(_ stem: String) -> (index: Int, length: Int)? {
        let parts = stem.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count >= 4, parts[parts.count - 2] == "of" else { return nil }
        let a = parts[parts.count - 3], b = parts[parts.count - 1]
        guard a.count == 5, b.count == 5, let i = Int(a), let n = Int(b), i >= 1, i <= n else { return nil }
        return (i, 15)
    }
}
