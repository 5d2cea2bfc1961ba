/// The HTTP dialect a client speaks to meshd or meshd speaks to an engine.
public enum Dialect: String, Sendable, Hashable, Codable {
    case openai
    case ollama
}

/// How meshd reaches an engine: an Ollama server, any OpenAI-compatible server
/// (llama-server, vLLM, LM Studio), or a llama-server meshd starts and supervises itself.
public enum EngineKind: String, Sendable, Hashable, Codable, CaseIterable {
    case ollama
    case openai
    case llamaCpp = "llama.cpp"

    /// The API dialect meshd uses to talk to this kind of engine.
    public var dialect: Dialect { self == .ollama ? .ollama : .openai }
}

/// One model an engine can serve.
public struct ModelInfo: Sendable, Hashable, Codable {
    /// The name clients use (Ollama names carry a tag, e.g. `llama3.1:8b`).
    public var name: String
    /// Whether the model is resident in memory now (a request to it starts without a cold load).
    public var loaded: Bool
    /// Size on disk or in memory in bytes, when the engine says.
    public var sizeBytes: Int64?
    /// Bytes of accelerator memory it holds while loaded, when known.
    public var vramBytes: Int64?
    /// Maximum context length in tokens, when known.
    public var contextLength: Int?
    /// Model family (`llama`, `qwen2`...), when known.
    public var family: String?
    /// Parameter count as the engine prints it (`8.0B`), when known.
    public var parameterSize: String?
    /// Quantisation as the engine prints it (`Q4_K_M`), when known.
    public var quantization: String?
    /// Whether the engine can embed with it, when known.
    public var embeddings: Bool?
    /// Served by a split of meshd's across nodes (llama.cpp RPC): true both while the split runs
    /// and while it waits for a first request to be planned and started (then `loaded` is false).
    public var split: Bool? = nil
    /// Being loaded now (a stored model whose llama-server is starting): `loaded` is still false.
    public var loading: Bool? = nil
    /// When a loaded model will be unloaded if nothing uses it (RFC 3339, Ollama's `/api/ps`
    /// `expires_at`: Ollama's own, or the model store's keep-alive), when known.
    public var expiresAt: String? = nil

    public init(name: String, loaded: Bool, sizeBytes: Int64? = nil, vramBytes: Int64? = nil,
                contextLength: Int? = nil, family: String? = nil, parameterSize: String? = nil,
                quantization: String? = nil, embeddings: Bool? = nil) {
        self.name = name
        self.loaded = loaded
        self.sizeBytes = sizeBytes
        self.vramBytes = vramBytes
        self.contextLength = contextLength
        self.family = family
        self.parameterSize = parameterSize
        self.quantization = quantization
        self.embeddings = embeddings
    }
}

/// Load signals an engine exposes, plus meshd's own count of requests it sent there.
public struct EngineLoad: Sendable, Hashable, Codable {
    /// Requests meshd has for this engine right now: sent to it, plus those waiting in meshd's own
    /// queue for a free place (`queued`).
    public var inFlight: Int
    /// Requests the engine reports as running (llama-server busy slots, vLLM running), if it says.
    public var running: Int?
    /// Requests the engine reports as waiting (vLLM waiting), if it says.
    public var waiting: Int?
    /// Parallel slots (llama-server `total_slots`), if known.
    public var slots: Int?
    /// Of `inFlight`, the requests waiting in meshd's queue because the engine is at its limit.
    public var queued: Int?
    /// How many requests meshd keeps open to the engine at once (see ``EngineConcurrency``); nil: no limit.
    public var limit: Int?
    /// Of what the engine last reported running or waiting, the requests meshd had not sent (other
    /// clients'), when it reports; nil: unknown.
    public var external: Int? = nil

    public init(inFlight: Int = 0, running: Int? = nil, waiting: Int? = nil, slots: Int? = nil,
                queued: Int? = nil, limit: Int? = nil) {
        self.inFlight = inFlight
        self.running = running
        self.waiting = waiting
        self.slots = slots
        self.queued = queued
        self.limit = limit
    }

    /// Requests meshd has sent to the engine and not yet seen end.
    public var open: Int { max(0, inFlight - (queued ?? 0)) }

    /// Best estimate of requests ahead of a new one: what meshd sent (exact the moment one ends)
    /// plus other clients' load as the engine last reported it; without that split, the larger of
    /// what the engine says and what meshd sent.
    public var busy: Int {
        if let external { return inFlight + external }
        return max(inFlight, (running ?? 0) + (waiting ?? 0))
    }
}

/// Measured speeds of an engine, carried in node state for routing (exponentially smoothed).
public struct EngineSpeeds: Sendable, Hashable, Codable {
    /// Prompt tokens per second (prefill), when measured.
    public var prefillTokensPerSecond: Double?
    /// Generated tokens per second (decode), when measured.
    public var decodeTokensPerSecond: Double?
    /// Recent mean service time of a request in seconds, when measured.
    public var meanServiceSeconds: Double?

    public init(prefillTokensPerSecond: Double? = nil, decodeTokensPerSecond: Double? = nil, meanServiceSeconds: Double? = nil) {
        self.prefillTokensPerSecond = prefillTokensPerSecond
        self.decodeTokensPerSecond = decodeTokensPerSecond
        self.meanServiceSeconds = meanServiceSeconds
    }
}

/// A point-in-time view of one engine, as the routing core sees it.
public struct EngineSnapshot: Sendable, Hashable, Codable {
    /// Stable id within the node (`ollama@127.0.0.1:11434`, `llama.cpp:meshd-tiny`).
    public var id: String
    public var kind: EngineKind
    /// Base URL meshd sends requests to.
    public var url: String
    public var healthy: Bool
    /// Human-readable reason when not healthy.
    public var healthDetail: String?
    public var models: [ModelInfo]
    public var load: EngineLoad
    public var speeds: EngineSpeeds
    /// What the engine last said of its slots in a quiet poll (llama-server `GET /slots`), to correct
    /// the node's shadow of its cache. This node's own business: not encoded (peers never see it).
    public var slotReport: SlotReport? = nil
    /// The poll failed only because the engine answered too slowly (no response head, or a body
    /// that stalled, within the poll's timeout): an engine busy serving, or a hung one. The node
    /// tells them apart by its own requests there (``EngineRegistry``). Not encoded either.
    public var pollTimedOut = false

    /// Every field but ``slotReport`` and ``pollTimedOut``.
    enum CodingKeys: String, CodingKey {
        case id, kind, url, healthy, healthDetail, models, load, speeds
    }

    public init(id: String, kind: EngineKind, url: String, healthy: Bool, healthDetail: String? = nil,
                models: [ModelInfo] = [], load: EngineLoad = .init(), speeds: EngineSpeeds = .init()) {
        self.id = id
        self.kind = kind
        self.url = url
        self.healthy = healthy
        self.healthDetail = healthDetail
        self.models = models
        self.load = load
        self.speeds = speeds
    }

    /// The model entry matching `name` (see ``ModelName/matches(_:_:)``).
    public func model(named name: String) -> ModelInfo? {
        models.first { ModelName.matches($0.name, name) }
    }
}

/// What an engine said of its slots at one poll (llama-server `GET /slots`): per slot, whether it
/// runs a task and how many tokens it holds. Checked against the node's shadow of the engine's
/// cache (``CacheShadow/observe(_:)``), so a wrong guess corrects itself.
public struct SlotReport: Sendable, Hashable {
    public struct Slot: Sendable, Hashable {
        /// The slot's id (llama-server `id`; the shadow's sequence of that index).
        public var id: Int
        /// Whether it runs a task now (`is_processing`).
        public var processing: Bool
        /// Tokens it holds, when it says: llama-server's `n_prompt_tokens`, the prompt and output of
        /// its last task (0 once the slot was cleared, e.g. after saving it to host RAM).
        public var tokens: Int?

        public init(id: Int, processing: Bool, tokens: Int? = nil) {
            self.id = id
            self.processing = processing
            self.tokens = tokens
        }
    }

    public var slots: [Slot]
    /// The engine's reports numbered in poll order from 1, so that each is applied once (0: not yet stamped).
    public var number: UInt64
    /// When the poll that fetched it began, in nanoseconds of the node's ``WallClock`` (the cache
    /// shadows' clock): a slot used since then may have changed.
    public var polledAt: UInt64

    public init(slots: [Slot], number: UInt64 = 0, polledAt: UInt64 = 0) {
        self.slots = slots
        self.number = number
        self.polledAt = polledAt
    }
}

/// Model-name rules shared by routing and the APIs.
public enum ModelName {
    /// Ollama treats `llama3` and `llama3:latest` as the same model; so does meshd.
    public static func normalized(_ name: String) -> String {
        let trimmed = name.trimmingSpaces()
        if trimmed.contains(":") { return trimmed }
        return trimmed + ":latest"
    }

    /// Whether two names denote the same model.
    public static func matches(_ a: String, _ b: String) -> Bool {
        a == b || normalized(a) == normalized(b)
    }
}

extension String {
    func trimmingSpaces() -> String {
        // Usually nothing to trim: decide on the end bytes (each of these characters is one byte)
        // before walking Characters, which costs grapheme breaking on every request.
        func isSpace(_ b: UInt8?) -> Bool { b == 0x20 || b == 0x09 || b == 0x0A || b == 0x0D }
        if !isSpace(utf8.first) && !isSpace(utf8.last) { return self }
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" || f == "\n" || f == "\r" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" || l == "\n" || l == "\r" { s = s.dropLast() }
        return String(s)
    }
}
