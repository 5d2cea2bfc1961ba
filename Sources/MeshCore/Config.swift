/// A `host:port` pair as written in the configuration (`127.0.0.1:11435`, `[::1]:11435`).
public struct HostPort: Sendable, Hashable, Codable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses `host:port`, `[v6]:port` or `:port` (all interfaces). Returns nil when malformed.
    public init?(parsing text: String) {
        let t = text.trimmingSpaces()
        let hostPart: Substring
        let portPart: Substring
        if t.hasPrefix("[") {
            guard let close = t.firstIndex(of: "]") else { return nil }
            hostPart = t[t.index(after: t.startIndex)..<close]
            let rest = t[t.index(after: close)...]
            guard rest.hasPrefix(":") else { return nil }
            portPart = rest.dropFirst()
        } else {
            guard let colon = t.lastIndex(of: ":") else { return nil }
            hostPart = t[..<colon]
            portPart = t[t.index(after: colon)...]
            if hostPart.contains(":") { return nil }
        }
        guard let port = Int(portPart), (0...65535).contains(port) else { return nil }
        self.host = hostPart.isEmpty ? "0.0.0.0" : String(hostPart)
        self.port = port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// Whether `host` is a loopback address or name (127.0.0.0/8, ::1, localhost).
    public var isLoopback: Bool {
        let h = host.lowercased()
        if h == "localhost" || h == "::1" || h == "0:0:0:0:0:0:0:1" { return true }
        let parts = h.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count == 4 && parts[0] == "127" && parts.allSatisfy { UInt8($0) != nil }
    }

    /// Whether `ip` (an address as a socket reports it) is loopback: 127.0.0.0/8, ::1, or
    /// 127.0.0.0/8 mapped into IPv6.
    public static func isLoopbackAddress(_ ip: String) -> Bool {
        var s = Substring(ip)
        if s.hasPrefix("[") && s.hasSuffix("]") { s = s.dropFirst().dropLast() }
        if s == "::1" || s == "0:0:0:0:0:0:0:1" { return true }
        let lower = s.lowercased()
        if lower.hasPrefix("::ffff:") { s = Substring(lower.dropFirst(7)) }
        let parts = s.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count == 4 && parts[0] == "127" && parts.allSatisfy { UInt8($0) != nil }
    }
}

/// How clients authenticate to the HTTP API.
public enum HTTPAuthMode: String, Sendable, Hashable, Codable, CaseIterable {
    /// Keys required when `api_keys` is non-empty; refused at start when bound off loopback with no keys.
    case keys
    /// Explicitly no authentication, even off loopback.
    case none
}

/// `http:` section.
public struct HTTPConfig: Sendable, Hashable, Codable {
    public var listen: HostPort = HostPort(host: "127.0.0.1", port: 11435)
    /// Client API keys accepted as `Authorization: Bearer KEY`. Never logged.
    public var apiKeys: [String] = []
    /// Keys that open the dashboard (`/ui`) to clients off loopback (`NAME:KEY` or `KEY`). Never logged.
    public var adminKeys: [String] = []
    public var auth: HTTPAuthMode = .keys
    /// Largest request body accepted, in bytes (413 beyond).
    public var maxBodyBytes: Int = 8 * 1024 * 1024
    /// Event-loop threads serving HTTP.
    public var threads: Int = 1
    /// How long SIGTERM waits for in-flight requests before exiting.
    public var shutdownGraceSeconds: Double = 30
    /// A connection must send a whole request head within this many milliseconds.
    public var headerTimeoutMs: Int = 10_000
    /// Longest gap with no body bytes while a request body is incomplete, in milliseconds.
    public var bodyTimeoutMs: Int = 10_000
    /// Idle kept-alive connections are closed after this many milliseconds.
    public var idleTimeoutMs: Int = 75_000
    /// Most HTTP connections open at once (more are refused with 503); 0: no cap.
    public var maxConnections: Int = 4096
    /// Most HTTP connections one client address (loopback aside) holds at once (more get 429); 0: no cap.
    public var maxConnectionsPerClient: Int = 256
    /// Bytes a second a request body must average (it gets `body_timeout_ms` plus a second per
    /// this many bytes in all); 0: only the gap between bytes is bounded.
    public var minBodyBytesPerSecond: Int = 500
    /// A streamed answer whose chunks come faster than one per half of this many milliseconds is
    /// read from its engine at most once per this, and what came meanwhile is relayed together
    /// (``ReadCoalescer``): fewer thread wakes per token; 0 relays every chunk as it comes.
    public var streamCoalesceMs: Int = 5
    /// Serve HTTPS (both set) instead of HTTP.
    public var tls = TLSFiles()
    public init() {}
}

/// `http.tls`: PEM files of the certificate chain and its private key (re-read on reload).
public struct TLSFiles: Sendable, Hashable, Codable {
    public var certFile: String? = nil
    public var keyFile: String? = nil
    public var enabled: Bool { certFile != nil && keyFile != nil }
    public init() {}
}

/// `admin:` section.
public struct AdminConfig: Sendable, Hashable, Codable {
    /// Unix socket meshctl talks to.
    public var socket: String = "/run/meshd/meshd.sock"
    public init() {}
}

/// One entry of `engines:`.
public struct EngineConfig: Sendable, Hashable, Codable {
    public var kind: EngineKind
    /// Base URL for `ollama` and `openai` engines; for a managed `llama.cpp` engine, meshd picks it.
    public var url: String?
    /// GGUF file for a managed `llama.cpp` engine.
    public var model: String?
    /// Name clients use for the managed model (default: the file name without `.gguf`).
    public var alias: String?
    /// Extra `llama-server` arguments for a managed engine.
    public var args: [String] = []
    /// `llama-server` binary for a managed engine (default: found on PATH or in the meshd cache).
    public var binary: String?
    /// API key sent to an OpenAI-compatible engine (`Authorization: Bearer`), read from this file.
    public var apiKeyFile: String?
    /// Requests meshd keeps open to this engine at once (more wait in meshd's queue). Nil: the slots
    /// the engine reports, else a limit learned from its overload answers (``EngineConcurrency``).
    public var maxConcurrency: Int?
    /// For a managed `llama.cpp` engine: whether its model may be split across nodes when no node can hold it.
    public var split: SplitPolicy = .auto

    public init(kind: EngineKind, url: String? = nil, model: String? = nil, alias: String? = nil,
                args: [String] = [], binary: String? = nil, apiKeyFile: String? = nil, maxConcurrency: Int? = nil) {
        self.maxConcurrency = maxConcurrency
        self.kind = kind
        self.url = url
        self.model = model
        self.alias = alias
        self.args = args
        self.binary = binary
        self.apiKeyFile = apiKeyFile
    }

    /// The model name a managed engine serves.
    public var managedModelName: String? {
        if let alias { return alias }
        guard let model else { return nil }
        var base = model.split(separator: "/").last.map(String.init) ?? model
        if base.hasSuffix(".gguf") { base.removeLast(5) }
        return base
    }
}

/// `timeouts:` section: outbound HTTP to engines.
public struct TimeoutConfig: Sendable, Hashable, Codable {
    public var connectMs: Int = 2000
    /// Until the engine sends response headers (includes queueing and prompt processing).
    public var firstByteMs: Int = 120_000
    /// Longest silence between two chunks of a stream.
    public var betweenChunksMs: Int = 60_000
    public init() {}
}

/// `engine_poll:` settings: how often engines are asked for models, health and load.
public struct EnginePollConfig: Sendable, Hashable, Codable {
    public var intervalMs: Int = 1000
    public init() {}
}

/// `logging:` section.
public struct LoggingConfig: Sendable, Hashable, Codable {
    /// trace, debug, info, notice, warning, error, critical
    public var level: String = "info"
    public init() {}
}

/// `mesh:` section: links to peer meshd nodes (upcoming feature; parsed and validated now).
public struct MeshConfig: Sendable, Hashable, Codable {
    /// Address the node-to-node listener binds.
    public var listen: HostPort = HostPort(host: "0.0.0.0", port: 11436)
    /// Peers to connect to, as `host:port`.
    public var peers: [HostPort] = []
    /// File holding the shared secret that authenticates peers.
    public var secretFile: String = "/etc/meshd/mesh.secret"
    /// Interval between heartbeats sent to peers.
    public var heartbeatMs: Int = 1000
    /// A peer is considered dead after this many missed heartbeats.
    public var deadAfterMissed: Int = 3
    /// Who may join: every holder of the mesh secret, or only nodes whose own key is trusted.
    public var trust: MeshTrustMode = .secret
    /// This node's own CURVE keypair (made at first start, mode 0600), used when `trust` is `keys`.
    public var nodeKeyFile: String = "/var/lib/meshd/node.key"
    /// Public keys of the nodes admitted when `trust` is `keys` (one hex key a line, then an
    /// optional name), kept by `meshctl trust`.
    public var trustedKeysFile: String = "/var/lib/meshd/trusted-keys"
    public init() {}
}

/// How mesh peers are admitted.
public enum MeshTrustMode: String, Sendable, Hashable, Codable, CaseIterable {
    /// Any node holding the mesh secret joins (it authenticates with the secret-derived key).
    case secret
    /// The mesh secret encrypts and authenticates servers, but a node joins only if its own
    /// public key is in `mesh.trusted_keys_file`; `meshctl trust revoke` shuts one machine out.
    case keys
}

/// `discovery:` section.
public struct DiscoveryConfig: Sendable, Hashable, Codable {
    /// Announce this node and discover peers on the local network with mDNS (Avahi,
    /// `_meshd._tcp`); found nodes are dialed and join only through the CURVE handshake.
    public var mdns: Bool = true
    public init() {}
}

/// `hardware:` section: how the node reads its GPUs and memory.
public struct HardwareConfig: Sendable, Hashable, Codable {
    /// Seconds between two readings of free GPU memory and RAM.
    public var refreshSeconds: Double = 10
    /// `nvidia-smi` (a name looked up on PATH, or a path), used when NVML cannot be loaded.
    public var nvidiaSMI: String = "nvidia-smi"
    /// `rocm-smi`, used when sysfs does not tell an AMD GPU's memory.
    public var rocmSMI: String = "rocm-smi"
    /// Directory under which `sys/class/drm` and `proc/meminfo` are read (`/`; other for containers).
    public var sysfsRoot: String = "/"
    /// Most bytes of memory this node offers to models (and to splits), whatever it has free; nil: all free memory.
    public var offerBytes: Int? = nil
    public init() {}
}

/// `audit:` section: the usage and audit log (`STATE_DIR/usage.sqlite`).
public struct AuditSettings: Sendable, Hashable, Codable {
    /// Record every answered request (who, what, where, tokens, cost).
    public var enabled: Bool = true
    /// Records older than this many days are deleted (at start and every hour).
    public var retentionDays: Int = 90
    public init() {}
}

/// `cache:` section: answers to deterministic requests (temperature 0 or a fixed seed) kept and
/// served again for the same request to the same model.
public struct ResponseCacheSettings: Sendable, Hashable, Codable {
    public var enabled: Bool = false
    /// Most bytes of answers kept (least recently used out first).
    public var maxBytes: Int = 64 << 20
    /// Seconds an answer stays valid.
    public var ttlSeconds: Int = 3600
    /// Largest single answer kept.
    public var maxEntryBytes: Int = 1 << 20
    public init() {}
}

/// The whole effective configuration of a node.
public struct MeshdConfig: Sendable, Hashable, Codable {
    public var nodeName: String
    public var stateDir: String = "/var/lib/meshd"
    public var http = HTTPConfig()
    public var admin = AdminConfig()
    /// nil means "not configured": auto-detect Ollama at :11434 and llama-server at :8080.
    public var engines: [EngineConfig]? = nil
    public var timeouts = TimeoutConfig()
    public var enginePoll = EnginePollConfig()
    public var logging = LoggingConfig()
    public var mesh = MeshConfig()
    public var discovery = DiscoveryConfig()
    public var hardware = HardwareConfig()
    /// Splitting models no node can hold across nodes (llama.cpp RPC).
    public var split = SplitSettings()
    /// Where requests go: the policy and the mesh-wide queue.
    public var routing = RoutingSettings()
    /// The node's model store: GGUF files served by llama-servers meshd starts on demand.
    public var models = ModelStoreSettings()
    /// Alerts meshd raises itself (provider degraded, cost spike, failovers, node lost, split failed).
    public var alerts = AlertSettings()
    /// The usage and audit log: every answered request, kept `retention_days`.
    public var audit = AuditSettings()
    /// The exact-match response cache of deterministic requests (opt-in).
    public var responseCache = ResponseCacheSettings()
    public var cloud = CloudConfig()
    public var budget = BudgetConfig()
    /// Per client key: requests and tokens per minute, concurrency and models, mesh-wide.
    public var limits = LimitsConfig()

    public init(nodeName: String) {
        self.nodeName = nodeName
    }

    /// Engines probed when none are configured.
    public static let autodetectEngines: [EngineConfig] = [
        EngineConfig(kind: .ollama, url: "http://127.0.0.1:11434"),
        EngineConfig(kind: .openai, url: "http://127.0.0.1:8080"),
    ]

    /// The engines to use: configured ones, or the auto-detected defaults.
    public var effectiveEngines: [EngineConfig] { engines ?? Self.autodetectEngines }
}

/// One problem found in a configuration: where, which key, and why.
public struct ConfigIssue: Sendable, Hashable, CustomStringConvertible {
    public enum Severity: String, Sendable { case error, warning }
    /// File (or `environment`) the value came from.
    public var source: String
    /// Dotted key path, `engines[1].url`.
    public var key: String
    public var reason: String
    public var line: Int?
    public var severity: Severity

    public init(source: String, key: String, reason: String, line: Int? = nil, severity: Severity = .error) {
        self.source = source
        self.key = key
        self.reason = reason
        self.line = line
        self.severity = severity
    }

    public var description: String {
        let loc = line.map { "\(source):\($0)" } ?? source
        return "\(loc): \(severity.rawValue): \(key): \(reason)"
    }
}

extension HTTPConfig: CustomStringConvertible, CustomReflectable {
    /// Printing a config never shows client API keys.
    public var description: String {
        "HTTPConfig(listen: \(listen), apiKeys: \(apiKeys.count) redacted, adminKeys: \(adminKeys.count) redacted, auth: \(auth.rawValue), maxBodyBytes: \(maxBodyBytes), "
            + "threads: \(threads), shutdownGraceSeconds: \(shutdownGraceSeconds), headerTimeoutMs: \(headerTimeoutMs), "
            + "bodyTimeoutMs: \(bodyTimeoutMs), idleTimeoutMs: \(idleTimeoutMs), maxConnections: \(maxConnections), "
            + "maxConnectionsPerClient: \(maxConnectionsPerClient), minBodyBytesPerSecond: \(minBodyBytesPerSecond), streamCoalesceMs: \(streamCoalesceMs), tls: \(tls.enabled))"
    }

    public var customMirror: Mirror {
        Mirror(self, children: [
            "listen": listen, "apiKeys": "\(apiKeys.count) redacted", "adminKeys": "\(adminKeys.count) redacted", "auth": auth, "maxBodyBytes": maxBodyBytes,
            "threads": threads, "shutdownGraceSeconds": shutdownGraceSeconds, "headerTimeoutMs": headerTimeoutMs,
            "bodyTimeoutMs": bodyTimeoutMs, "idleTimeoutMs": idleTimeoutMs, "maxConnections": maxConnections,
            "maxConnectionsPerClient": maxConnectionsPerClient, "minBodyBytesPerSecond": minBodyBytesPerSecond,
            "streamCoalesceMs": streamCoalesceMs,
        ])
    }
}
