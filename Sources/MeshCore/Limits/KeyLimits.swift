/// Limits on one client key (`limits.default`, `limits.per_key.NAME`): requests per minute,
/// tokens per minute (prompt + output, settled after the answer), concurrent requests, and the
/// models it may use. nil: no limit of that kind; `models` empty: every model.
public struct KeyLimits: Sendable, Hashable, Codable {
    public var rpm: Int?
    public var tpm: Int?
    public var concurrency: Int?
    /// Model names (`llama3:8b`) or prefixes ending in `*` (`qwen*`); empty: any model.
    public var models: [String]

    public init(rpm: Int? = nil, tpm: Int? = nil, concurrency: Int? = nil, models: [String] = []) {
        self.rpm = rpm
        self.tpm = tpm
        self.concurrency = concurrency
        self.models = models
    }

    /// No limit of any kind.
    public var isEmpty: Bool { rpm == nil && tpm == nil && concurrency == nil && models.isEmpty }

    /// These limits, each kind unset here taken from `base` (a key's own entry over the default).
    public func over(_ base: KeyLimits) -> KeyLimits {
        KeyLimits(rpm: rpm ?? base.rpm, tpm: tpm ?? base.tpm, concurrency: concurrency ?? base.concurrency,
                  models: models.isEmpty ? base.models : models)
    }

    /// Whether the key may use `model`.
    public func allows(model: String) -> Bool {
        models.isEmpty || models.contains { pattern in
            if pattern.hasSuffix("*") { return model.hasPrefix(pattern.dropLast()) }
            return ModelName.matches(pattern, model)
        }
    }
}

/// The `limits` section: a default for every key and per-key entries over it.
public struct LimitsConfig: Sendable, Hashable, Codable {
    public var defaultLimits = KeyLimits()
    public var perKey: [String: KeyLimits] = [:]

    public init(defaultLimits: KeyLimits = KeyLimits(), perKey: [String: KeyLimits] = [:]) {
        self.defaultLimits = defaultLimits
        self.perKey = perKey
    }

    /// Whether any key is limited at all (nothing is counted otherwise).
    public var enabled: Bool { !defaultLimits.isEmpty || perKey.values.contains { !$0.isEmpty } }

    /// The limits of key `name` (the anonymous key `""` when the node has no client keys).
    public func limits(for name: String) -> KeyLimits {
        perKey[name].map { $0.over(defaultLimits) } ?? defaultLimits
    }
}
