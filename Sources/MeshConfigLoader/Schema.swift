import MeshCore

// The one table describing meshd's configuration keys. Unknown-key detection, the
// `MESHD_*` environment names, rendering and the documented `Config/meshd.yaml`
// (checked by tests) all derive from it.

/// The shape of a configuration value.
enum FieldType: Sendable, Hashable {
    case string
    case int
    case double
    case bool
    case stringList

    /// How the type is named in messages ("expected an integer").
    var expectation: String {
        switch self {
        case .string: "a string"
        case .int: "an integer"
        case .double: "a number"
        case .bool: "a boolean (true/false)"
        case .stringList: "a list of strings"
        }
    }
}

/// A value read from the file or the environment, before it is stored in the model.
enum FieldValue: Sendable, Hashable {
    case string(String)
    case int(Int)
    case double(Double)
    case bool(Bool)
    case list([String])
}

/// Something wrong with one value. `index` points into a list value.
struct FieldProblem: Error, Sendable, Hashable {
    var reason: String
    var index: Int? = nil
}

/// One scalar or scalar-list key of the configuration file.
struct Field: Sendable {
    /// YAML path, `["http", "listen"]`.
    let path: [String]
    let type: FieldType
    /// Never printed: redacted in output and in messages.
    let secret: Bool
    /// Validates `value` and stores it into the configuration; returns what is wrong instead.
    let apply: @Sendable (inout MeshdConfig, FieldValue) -> [FieldProblem]
    /// The current value, for rendering; nil when unset (an optional key left out).
    let read: @Sendable (MeshdConfig) -> FieldValue?

    /// `http.listen`
    var dotted: String { path.joined(separator: ".") }
    /// `MESHD_HTTP_LISTEN`
    var environmentName: String { Schema.environmentPrefix + path.joined(separator: "_").uppercased() }
}

/// One key of an `engines:` entry (file only).
struct EngineField: Sendable {
    let name: String
    let type: FieldType
    /// Kinds the key applies to; for others it is ignored with a warning.
    let kinds: Set<EngineKind>
    /// Kinds for which the key must be present.
    let requiredFor: Set<EngineKind>
    let apply: @Sendable (inout EngineConfig, FieldValue) -> [FieldProblem]
    /// The current value for rendering, nil when unset.
    let read: @Sendable (EngineConfig) -> FieldValue?
}

enum Schema {
    static let environmentPrefix = "MESHD_"
    /// The top-level key holding the engine list (file only).
    static let enginesKey = "engines"
    /// Top-level section after which `engines:` is rendered.
    static let enginesAfter = "admin"
    /// What redacted secrets are printed as.
    static let redacted = "***"

    static let logLevels = ["trace", "debug", "info", "notice", "warning", "error", "critical"]

    static let fields: [Field] = [
        .string(["node", "name"], \.nodeName, check: Check.name),
        .string(["state_dir"], \.stateDir, check: Check.path),

        .hostPort(["http", "listen"], \.http.listen),
        .stringList(["http", "api_keys"], \.http.apiKeys, secret: true, check: Check.apiKey),
        .stringList(["http", "admin_keys"], \.http.adminKeys, secret: true, check: Check.apiKey),
        .oneOf(["http", "auth"], \.http.auth),
        .int(["http", "max_body_bytes"], \.http.maxBodyBytes, min: 1024),
        .int(["http", "threads"], \.http.threads, min: 1, max: 64),
        .double(["http", "shutdown_grace_seconds"], \.http.shutdownGraceSeconds, min: 0),
        .int(["http", "header_timeout_ms"], \.http.headerTimeoutMs, min: 100),
        .int(["http", "body_timeout_ms"], \.http.bodyTimeoutMs, min: 100),
        .int(["http", "idle_timeout_ms"], \.http.idleTimeoutMs, min: 100),
        .int(["http", "max_connections"], \.http.maxConnections, min: 0),
        .int(["http", "max_connections_per_client"], \.http.maxConnectionsPerClient, min: 0),
        .int(["http", "min_body_bytes_per_second"], \.http.minBodyBytesPerSecond, min: 0),
        .int(["http", "stream_coalesce_ms"], \.http.streamCoalesceMs, min: 0, max: 100),
        .optionalString(["http", "tls", "cert_file"], \.http.tls.certFile, check: Check.path),
        .optionalString(["http", "tls", "key_file"], \.http.tls.keyFile, check: Check.path),

        .string(["admin", "socket"], \.admin.socket, check: Check.path),

        .int(["timeouts", "connect_ms"], \.timeouts.connectMs, min: 1),
        .int(["timeouts", "first_byte_ms"], \.timeouts.firstByteMs, min: 1),
        .int(["timeouts", "between_chunks_ms"], \.timeouts.betweenChunksMs, min: 1),

        .int(["engine_poll", "interval_ms"], \.enginePoll.intervalMs, min: 1),

        .logLevel(["logging", "level"], \.logging.level),

        .hostPort(["mesh", "listen"], \.mesh.listen),
        .hostPortList(["mesh", "peers"], \.mesh.peers),
        .string(["mesh", "secret_file"], \.mesh.secretFile, check: Check.path),
        .int(["mesh", "heartbeat_ms"], \.mesh.heartbeatMs, min: 1),
        .int(["mesh", "dead_after_missed"], \.mesh.deadAfterMissed, min: 1),
        .oneOf(["mesh", "trust"], \.mesh.trust),
        .string(["mesh", "node_key_file"], \.mesh.nodeKeyFile, check: Check.path),
        .string(["mesh", "trusted_keys_file"], \.mesh.trustedKeysFile, check: Check.path),

        .bool(["discovery", "mdns"], \.discovery.mdns),

        .double(["hardware", "refresh_seconds"], \.hardware.refreshSeconds, min: 1, max: 3600),
        .string(["hardware", "nvidia_smi"], \.hardware.nvidiaSMI, check: Check.path),
        .string(["hardware", "rocm_smi"], \.hardware.rocmSMI, check: Check.path),
        .string(["hardware", "sysfs_root"], \.hardware.sysfsRoot, check: Check.path),
        .optionalInt(["hardware", "offer_bytes"], \.hardware.offerBytes, min: 0),

        .bool(["split", "enabled"], \.split.enabled),
        .int(["split", "max_workers"], \.split.maxWorkers, min: 1, max: 16),
        .oneOf(["split", "transport"], \.split.transport),
        .int(["split", "lease_seconds"], \.split.leaseSeconds, min: 2, max: 3600),

        .oneOf(["routing", "policy"], \.routing.policy),
        .int(["routing", "queue_after_ms"], \.routing.queueAfterMs, min: 0, max: 600_000),
        .int(["routing", "max_queue"], \.routing.maxQueue, min: 0, max: 100_000),
        .bool(["routing", "cache_deltas"], \.routing.cacheDeltas),
        .double(["routing", "decode_weight"], \.routing.decodeWeight, min: 0, max: 1),
        .bool(["models", "enabled"], \.models.enabled),
        .string(["models", "dir"], \.models.dir, check: { $0.isEmpty ? nil : Check.path($0) }),
        .text(["models", "keep_alive"], check: { RequestParser.keepAlive(.string($0)) == nil
                    ? "must be a duration such as \"5m\", \"1h30m\", \"30s\" or a number of seconds (0: unload at once, -1: keep loaded)" : nil },
              store: { c, text in c.models.keepAliveSeconds = ModelStoreSettings.seconds(keepAlive: RequestParser.keepAlive(.string(text)) ?? 300) },
              read: { .string(ModelStoreSettings.keepAliveText($0.models.keepAliveSeconds)) }),
        .int(["models", "max_loaded"], \.models.maxLoaded, min: 0, max: 1000),
        .int(["models", "rescan_seconds"], \.models.rescanSeconds, min: 1, max: 86_400),
        .int(["models", "copy_bytes_per_second"], \.models.copyBytesPerSecond, min: 0),
        .stringList(["models", "args"], \.models.args, secret: false,
                    check: { $0.unicodeScalars.contains { $0.value < 0x20 } ? "must not contain control characters" : nil }),

        .int(["cloud", "escalate_after_ms"], \.cloud.escalateAfterMs, min: 0),
        .string(["cloud", "prices_file"], \.cloud.pricesFile, check: Check.path),
        .stringList(["cloud", "local_only_models"], \.cloud.localOnlyModels, secret: false, check: Check.name),
        .stringList(["cloud", "local_only_keys"], \.cloud.localOnlyKeys, secret: false, check: Check.name),

        .optionalDouble(["budget", "daily_usd"], \.budget.dailyUSD, min: 0),
        .optionalDouble(["budget", "monthly_usd"], \.budget.monthlyUSD, min: 0),
        .double(["budget", "alert_at"], \.budget.alertAt, min: 0, max: 1),
        .string(["budget", "time_zone"], \.budget.timeZone, check: Check.timeZone),
        .optionalString(["budget", "webhook"], \.budget.webhook, check: Check.url),
        .optionalString(["alerts", "webhook"], \.alerts.webhook, check: Check.url),
        .double(["alerts", "interval_seconds"], \.alerts.intervalSeconds, min: 0.1, max: 3600),
        .double(["alerts", "provider_degraded_seconds"], \.alerts.providerDegradedSeconds, min: 0, max: 86_400),
        .bool(["audit", "enabled"], \.audit.enabled),
        .int(["audit", "retention_days"], \.audit.retentionDays, min: 1, max: 36_500),
        .bool(["cache", "enabled"], \.responseCache.enabled),
        .int(["cache", "max_bytes"], \.responseCache.maxBytes, min: 0),
        .int(["cache", "ttl_seconds"], \.responseCache.ttlSeconds, min: 1, max: 31_536_000),
        .int(["cache", "max_entry_bytes"], \.responseCache.maxEntryBytes, min: 1),
        .optionalInt(["limits", "default", "rpm"], \.limits.defaultLimits.rpm, min: 1),
        .optionalInt(["limits", "default", "tpm"], \.limits.defaultLimits.tpm, min: 1),
        .optionalInt(["limits", "default", "concurrency"], \.limits.defaultLimits.concurrency, min: 1),
        .stringList(["limits", "default", "models"], \.limits.defaultLimits.models, secret: false, check: Check.name),
    ]

    /// Sections holding records (file only).
    static let structured: [StructuredKey] = [CloudSchema.providers, CloudSchema.prices, CloudSchema.aliases,
                                              CloudSchema.caps(["budget", "per_provider"], \.budget.perProvider),
                                              CloudSchema.caps(["budget", "per_key"], \.budget.perKey), LimitsSchema.perKey]

    static func structured(at path: [String]) -> StructuredKey? { structured.first { $0.path == path } }

    static let engineFields: [EngineField] = [
        EngineField(
            name: "kind", type: .string, kinds: Set(EngineKind.allCases), requiredFor: Set(EngineKind.allCases),
            apply: { engine, value in
                guard case .string(let text) = value else { return [] }
                guard let kind = EngineKind(rawValue: text) else {
                    let names = EngineKind.allCases.map(\.rawValue)
                    return [FieldProblem(reason: "unknown engine kind \"\(text)\"; expected one of \(names.joined(separator: ", "))"
                                         + Suggest.phrase(for: text, among: names))]
                }
                engine.kind = kind
                return []
            },
            read: { .string($0.kind.rawValue) }),
        EngineField(
            name: "url", type: .string, kinds: [.ollama, .openai], requiredFor: [.ollama, .openai],
            apply: { engine, value in
                guard case .string(let text) = value else { return [] }
                if let reason = Check.url(text) { return [FieldProblem(reason: reason)] }
                engine.url = text
                return []
            },
            read: { $0.url.map(FieldValue.string) }),
        EngineField(
            name: "api_key_file", type: .string, kinds: [.openai], requiredFor: [],
            apply: { engine, value in
                guard case .string(let text) = value else { return [] }
                if let reason = Check.path(text) { return [FieldProblem(reason: reason)] }
                engine.apiKeyFile = text
                return []
            },
            read: { $0.apiKeyFile.map(FieldValue.string) }),
        EngineField(
            name: "model", type: .string, kinds: [.llamaCpp], requiredFor: [.llamaCpp],
            apply: { engine, value in
                guard case .string(let text) = value else { return [] }
                if let reason = Check.path(text) { return [FieldProblem(reason: reason)] }
                engine.model = text
                return []
            },
            read: { $0.model.map(FieldValue.string) }),
        EngineField(
            name: "alias", type: .string, kinds: [.llamaCpp], requiredFor: [],
            apply: { engine, value in
                guard case .string(let text) = value else { return [] }
                if let reason = Check.name(text) { return [FieldProblem(reason: reason)] }
                engine.alias = text
                return []
            },
            read: { $0.alias.map(FieldValue.string) }),
        EngineField(
            name: "args", type: .stringList, kinds: [.llamaCpp], requiredFor: [],
            apply: { engine, value in
                guard case .list(let items) = value else { return [] }
                engine.args = items
                return []
            },
            read: { $0.args.isEmpty ? nil : .list($0.args) }),
        EngineField(
            name: "binary", type: .string, kinds: [.llamaCpp], requiredFor: [],
            apply: { engine, value in
                guard case .string(let text) = value else { return [] }
                if let reason = Check.path(text) { return [FieldProblem(reason: reason)] }
                engine.binary = text
                return []
            },
            read: { $0.binary.map(FieldValue.string) }),
        EngineField(
            name: "max_concurrency", type: .int, kinds: Set(EngineKind.allCases), requiredFor: [],
            apply: { engine, value in
                guard case .int(let n) = value else { return [] }
                guard (1...100_000).contains(n) else { return [FieldProblem(reason: "\(n) is out of range 1...100000")] }
                engine.maxConcurrency = n
                return []
            },
            read: { $0.maxConcurrency.map(FieldValue.int) }),
        EngineField(
            name: "split", type: .string, kinds: [.llamaCpp], requiredFor: [],
            apply: { engine, value in
                guard case .string(let text) = value else { return [] }
                guard let policy = SplitPolicy(rawValue: text) else {
                    let names = SplitPolicy.allCases.map(\.rawValue)
                    return [FieldProblem(reason: "unknown value \"\(text)\"; expected one of \(names.joined(separator: ", "))"
                                         + Suggest.phrase(for: text, among: names))]
                }
                engine.split = policy
                return []
            },
            read: { $0.split == .auto ? nil : .string($0.split.rawValue) }),
    ]

    static let fieldsByEnvironmentName: [String: Field] =
        Dictionary(uniqueKeysWithValues: fields.map { ($0.environmentName, $0) })

    /// Names allowed directly under the mapping at `prefix` (`[]` is the top level).
    static func childNames(of prefix: [String]) -> [String] {
        var names: [String] = []
        for path in fields.map(\.path) + structured.map(\.path) where path.count > prefix.count && Array(path.prefix(prefix.count)) == prefix {
            let name = path[prefix.count]
            if !names.contains(name) { names.append(name) }
        }
        if prefix.isEmpty, let at = names.firstIndex(of: enginesAfter) {
            names.insert(enginesKey, at: at + 1)
        }
        return names
    }

    static func field(at path: [String]) -> Field? {
        fields.first { $0.path == path }
    }
}

// MARK: - Field constructors

extension Field {
    static func string(_ path: [String], _ keyPath: any WritableKeyPath<MeshdConfig, String> & Sendable,
                       check: @escaping @Sendable (String) -> String?) -> Field {
        text(path, check: check, store: { $0[keyPath: keyPath] = $1 }, read: { .string($0[keyPath: keyPath]) })
    }

    static func text(_ path: [String], check: @escaping @Sendable (String) -> String?,
                     store: @escaping @Sendable (inout MeshdConfig, String) -> Void,
                     read: @escaping @Sendable (MeshdConfig) -> FieldValue?) -> Field {
        Field(path: path, type: .string, secret: false,
              apply: { config, value in
                  guard case .string(let text) = value else { return [] }
                  if let reason = check(text) { return [FieldProblem(reason: reason)] }
                  store(&config, text)
                  return []
              },
              read: read)
    }

    static func int(_ path: [String], _ keyPath: any WritableKeyPath<MeshdConfig, Int> & Sendable,
                    min: Int, max: Int? = nil) -> Field {
        Field(path: path, type: .int, secret: false,
              apply: { config, value in
                  guard case .int(let number) = value else { return [] }
                  if let max, !(min...max).contains(number) {
                      return [FieldProblem(reason: "\(number) is out of range \(min)...\(max)")]
                  }
                  if number < min {
                      let what = min == 1 ? "must be positive" : "must be at least \(min)"
                      return [FieldProblem(reason: "\(what), got \(number)")]
                  }
                  config[keyPath: keyPath] = number
                  return []
              },
              read: { .int($0[keyPath: keyPath]) })
    }

    static func double(_ path: [String], _ keyPath: any WritableKeyPath<MeshdConfig, Double> & Sendable,
                       min: Double, max: Double? = nil) -> Field {
        Field(path: path, type: .double, secret: false,
              apply: { config, value in
                  guard case .double(let number) = value else { return [] }
                  if let problem = checkDouble(number, min: min, max: max) { return [problem] }
                  config[keyPath: keyPath] = number
                  return []
              },
              read: { .double($0[keyPath: keyPath]) })
    }

    static func checkDouble(_ number: Double, min: Double, max: Double?) -> FieldProblem? {
        guard number.isFinite, number >= min else {
            return FieldProblem(reason: "must be a finite number of at least \(Render.number(min)), got \(number)")
        }
        if let max, number > max {
            return FieldProblem(reason: "must be at most \(Render.number(max)), got \(Render.number(number))")
        }
        return nil
    }

    static func optionalDouble(_ path: [String], _ keyPath: any WritableKeyPath<MeshdConfig, Double?> & Sendable, min: Double) -> Field {
        Field(path: path, type: .double, secret: false,
              apply: { config, value in
                  guard case .double(let number) = value else { return [] }
                  if let problem = checkDouble(number, min: min, max: nil) { return [problem] }
                  config[keyPath: keyPath] = number
                  return []
              },
              read: { $0[keyPath: keyPath].map(FieldValue.double) })
    }

    static func optionalInt(_ path: [String], _ keyPath: any WritableKeyPath<MeshdConfig, Int?> & Sendable, min: Int) -> Field {
        Field(path: path, type: .int, secret: false,
              apply: { config, value in
                  guard case .int(let number) = value else { return [] }
                  if number < min { return [FieldProblem(reason: "must be at least \(min), got \(number)")] }
                  config[keyPath: keyPath] = number
                  return []
              },
              read: { $0[keyPath: keyPath].map(FieldValue.int) })
    }

    static func optionalString(_ path: [String], _ keyPath: any WritableKeyPath<MeshdConfig, String?> & Sendable,
                               check: @escaping @Sendable (String) -> String?) -> Field {
        text(path, check: check, store: { $0[keyPath: keyPath] = $1 }, read: { $0[keyPath: keyPath].map(FieldValue.string) })
    }

    static func bool(_ path: [String], _ keyPath: any WritableKeyPath<MeshdConfig, Bool> & Sendable) -> Field {
        Field(path: path, type: .bool, secret: false,
              apply: { config, value in
                  guard case .bool(let flag) = value else { return [] }
                  config[keyPath: keyPath] = flag
                  return []
              },
              read: { .bool($0[keyPath: keyPath]) })
    }

    static func stringList(_ path: [String], _ keyPath: any WritableKeyPath<MeshdConfig, [String]> & Sendable,
                           secret: Bool, check: @escaping @Sendable (String) -> String?) -> Field {
        Field(path: path, type: .stringList, secret: secret,
              apply: { config, value in
                  guard case .list(let items) = value else { return [] }
                  let problems = items.enumerated().compactMap { index, item in
                      check(item).map { FieldProblem(reason: $0, index: index) }
                  }
                  if problems.isEmpty { config[keyPath: keyPath] = items }
                  return problems
              },
              read: { .list($0[keyPath: keyPath]) })
    }

    static func hostPort(_ path: [String], _ keyPath: any WritableKeyPath<MeshdConfig, HostPort> & Sendable) -> Field {
        Field(path: path, type: .string, secret: false,
              apply: { config, value in
                  guard case .string(let text) = value else { return [] }
                  switch Check.hostPort(text, allowEmptyHost: true) {
                  case .success(let hostPort):
                      config[keyPath: keyPath] = hostPort
                      return []
                  case .failure(let problem):
                      return [problem]
                  }
              },
              read: { .string($0[keyPath: keyPath].description) })
    }

    static func hostPortList(_ path: [String], _ keyPath: any WritableKeyPath<MeshdConfig, [HostPort]> & Sendable) -> Field {
        Field(path: path, type: .stringList, secret: false,
              apply: { config, value in
                  guard case .list(let items) = value else { return [] }
                  var parsed: [HostPort] = []
                  var problems: [FieldProblem] = []
                  for (index, item) in items.enumerated() {
                      switch Check.hostPort(item, allowEmptyHost: false) {
                      case .success(let hostPort): parsed.append(hostPort)
                      case .failure(var problem):
                          problem.index = index
                          problems.append(problem)
                      }
                  }
                  if problems.isEmpty { config[keyPath: keyPath] = parsed }
                  return problems
              },
              read: { .list($0[keyPath: keyPath].map(\.description)) })
    }

    static func oneOf<E: RawRepresentable & CaseIterable & Sendable>(_ path: [String], _ keyPath: any WritableKeyPath<MeshdConfig, E> & Sendable) -> Field
    where E.RawValue == String {
        Field(path: path, type: .string, secret: false,
              apply: { config, value in
                  guard case .string(let text) = value else { return [] }
                  guard let mode = E(rawValue: text) else {
                      let names = E.allCases.map(\.rawValue)
                      return [FieldProblem(reason: "unknown value \"\(text)\"; expected one of \(names.joined(separator: ", "))"
                                           + Suggest.phrase(for: text, among: names))]
                  }
                  config[keyPath: keyPath] = mode
                  return []
              },
              read: { .string($0[keyPath: keyPath].rawValue) })
    }

    static func logLevel(_ path: [String], _ keyPath: any WritableKeyPath<MeshdConfig, String> & Sendable) -> Field {
        Field(path: path, type: .string, secret: false,
              apply: { config, value in
                  guard case .string(let text) = value else { return [] }
                  let level = text.lowercased()
                  guard Schema.logLevels.contains(level) else {
                      return [FieldProblem(reason: "unknown log level \"\(text)\"; expected one of \(Schema.logLevels.joined(separator: ", "))"
                                           + Suggest.phrase(for: level, among: Schema.logLevels))]
                  }
                  config[keyPath: keyPath] = level
                  return []
              },
              read: { .string($0[keyPath: keyPath]) })
    }
}
