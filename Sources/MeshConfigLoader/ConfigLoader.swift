import MeshCore

/// A configuration that passed validation, with the warnings found on the way.
public struct LoadedConfig: Sendable {
    public var config: MeshdConfig
    /// Problems that did not stop loading (ignored keys, unknown `MESHD_*` variables...).
    public var warnings: [ConfigIssue]
    /// The file read, or nil when built-in defaults served (no file at the default path).
    public var sourceFile: String?

    public init(config: MeshdConfig, warnings: [ConfigIssue], sourceFile: String?) {
        self.config = config
        self.warnings = warnings
        self.sourceFile = sourceFile
    }
}

/// The configuration is unusable. `issues` holds every problem found, errors and warnings,
/// in the order found; `description` lists them one per line. Callers exit with ``exitCode``.
public struct ConfigLoadError: Error, CustomStringConvertible, Sendable {
    public var issues: [ConfigIssue]

    /// The process exit status for a configuration error.
    public static let exitCode: Int32 = 2

    public init(issues: [ConfigIssue]) {
        self.issues = issues
    }

    /// Only the issues of severity `error`.
    public var errors: [ConfigIssue] { issues.filter { $0.severity == .error } }

    public var description: String { issues.map(\.description).joined(separator: "\n") }
}

/// Loads meshd's configuration: built-in defaults, then the YAML file, then `MESHD_*`
/// environment overrides (which win), then cross-field validation.
public enum ConfigLoader {
    /// Where `meshd` looks when no `--config` is given.
    public static let defaultPath = "/etc/meshd/meshd.yaml"

    /// Loads the file at `path` (an explicit `--config`: it must exist), or at `defaultPath`
    /// when `path` is nil (a missing default file means built-in defaults).
    ///
    /// - Parameters:
    ///   - environment: the process environment (`ProcessInfo.processInfo.environment`); only
    ///     `MESHD_*` variables are read.
    ///   - hostName: the default `node.name`.
    public static func load(
        path: String?,
        defaultPath: String = ConfigLoader.defaultPath,
        environment: [String: String],
        hostName: String
    ) throws(ConfigLoadError) -> LoadedConfig {
        var state = LoadState(config: MeshdConfig(nodeName: defaultNodeName(hostName)))
        let filePath = path ?? defaultPath
        var sourceFile: String? = nil
        switch FileRead.read(path: filePath) {
        case .missing:
            if path != nil {
                state.error(filePath, "--config", "no such file")
            }
        case .failed(let reason):
            state.error(filePath, "--config", reason)
        case .text(let text):
            sourceFile = filePath
            FileSource(source: filePath).apply(yaml: text, to: &state)
        }
        return try finish(&state, environment: environment, sourceFile: sourceFile)
    }

    /// Loads configuration from YAML text (as if read from a file named `source`), then
    /// applies the environment. Used by `load(path:)`; handy for tests and tools.
    public static func load(
        yaml: String,
        source: String = "<string>",
        environment: [String: String] = [:],
        hostName: String
    ) throws(ConfigLoadError) -> LoadedConfig {
        var state = LoadState(config: MeshdConfig(nodeName: defaultNodeName(hostName)))
        FileSource(source: source).apply(yaml: yaml, to: &state)
        return try finish(&state, environment: environment, sourceFile: source)
    }

    /// The node name used when `node.name` is not set.
    static func defaultNodeName(_ hostName: String) -> String {
        let trimmed = hostName.trimmingCharacters([" ", "\t", "\n", "\r"])
        return trimmed.isEmpty ? "meshd" : trimmed
    }

    private static func finish(
        _ state: inout LoadState,
        environment: [String: String],
        sourceFile: String?
    ) throws(ConfigLoadError) -> LoadedConfig {
        EnvironmentSource(environment: environment).apply(to: &state)
        crossValidate(&state, fallbackSource: sourceFile ?? "defaults")
        if state.issues.contains(where: { $0.severity == .error }) {
            throw ConfigLoadError(issues: state.issues)
        }
        return LoadedConfig(config: state.config, warnings: state.issues, sourceFile: sourceFile)
    }

    /// Rules that involve more than one key.
    private static func crossValidate(_ state: inout LoadState, fallbackSource: String) {
        func origin(_ key: String) -> Origin {
            state.origins[key] ?? Origin(source: fallbackSource, key: key, line: nil)
        }
        let http = state.config.http
        // When the keys or the auth mode were rejected, the rule below would only repeat that.
        let authRejected = state.issues.contains { issue in
            issue.severity == .error
                && ["http.api_keys", "http.auth", "MESHD_HTTP_API_KEYS", "MESHD_HTTP_AUTH"].contains { issue.key.hasPrefix($0) }
        }
        if !authRejected && !http.listen.isLoopback && http.apiKeys.isEmpty && http.auth != .none {
            let at = origin("http.listen")
            state.error(at.source, at.key,
                        "\(http.listen) is not a loopback address: refusing to serve off loopback without api keys; set http.api_keys or http.auth: none",
                        line: at.line)
        }
        if (http.tls.certFile == nil) != (http.tls.keyFile == nil) {
            let missing = http.tls.certFile == nil ? "http.tls.cert_file" : "http.tls.key_file"
            let at = origin(http.tls.certFile == nil ? "http.tls.key_file" : "http.tls.cert_file")
            state.error(at.source, at.key, "TLS needs both http.tls.cert_file and http.tls.key_file; set \(missing) too", line: at.line)
        }
        if http.auth == .none && !http.apiKeys.isEmpty {
            let at = origin("http.api_keys")
            state.warning(at.source, at.key, "ignored because http.auth is none", line: at.line)
        }
        let names = ClientKey.parse(http.apiKeys).map(\.name)
        if let dup = names.first(where: { n in names.filter { $0 == n }.count > 1 }) {
            let at = origin("http.api_keys")
            state.error(at.source, at.key, "two api keys are named '\(dup)'; give each NAME:KEY entry its own name", line: at.line)
        }
        let cloud = state.config.cloud
        for k in cloud.localOnlyKeys where !names.contains(k) {
            let at = origin("cloud.local_only_keys")
            state.warning(at.source, at.key, "no api key is named '\(k)' (http.api_keys entries are NAME:KEY, or key1, key2... by position)", line: at.line)
        }
        for k in state.config.budget.perKey.keys.sorted() where !names.contains(k) {
            let at = origin("budget.per_key")
            state.warning(at.source, "\(at.key).\(k)", "no api key is named '\(k)' (http.api_keys entries are NAME:KEY, or key1, key2... by position)", line: at.line)
        }
        for k in state.config.limits.perKey.keys.sorted() where !names.contains(k) {
            let at = origin("limits.per_key")
            state.warning(at.source, "\(at.key).\(k)", "no api key is named '\(k)' (http.api_keys entries are NAME:KEY, or key1, key2... by position)", line: at.line)
        }
        if state.config.limits.enabled && (names.isEmpty || http.auth == .none) {
            let at = origin("limits.default")
            state.warning(at.source, at.key, "with no client keys every client counts as one anonymous key: limits.default applies to all of them together", line: at.line)
        }
        for p in state.config.budget.perProvider.keys.sorted() where !cloud.providers.contains(where: { $0.name == p }) {
            let at = origin("budget.per_provider")
            state.warning(at.source, "\(at.key).\(p)", "no cloud provider is named '\(p)'", line: at.line)
        }
        let mesh = state.config.mesh
        if mesh.listen.port == http.listen.port && listenersOverlap(mesh.listen.host, http.listen.host) {
            let at = origin("mesh.listen")
            state.error(at.source, at.key, "\(mesh.listen) collides with http.listen \(http.listen); use another port", line: at.line)
        }
    }

    /// Whether two listeners on the same port would fight over it: the same host, the IPv6
    /// wildcard (dual-stack) against anything, or the IPv4 wildcard against a non-IPv6 host.
    private static func listenersOverlap(_ a: String, _ b: String) -> Bool {
        let v6Wildcard: Set<String> = ["::", "0:0:0:0:0:0:0:0"]
        if a.lowercased() == b.lowercased() || v6Wildcard.contains(a) || v6Wildcard.contains(b) { return true }
        if a == "0.0.0.0" { return !b.contains(":") }
        if b == "0.0.0.0" { return !a.contains(":") }
        return false
    }
}
