import MeshCore

/// One engine meshd talks to: polled for inventory, health and load.
///
/// `refresh()` never throws: every failure becomes `healthy: false` with a `healthDetail`.
/// The snapshot an adapter returns carries the engine's own load signals only; meshd's in-flight
/// count and measured speeds are overlaid by ``EngineRegistry``.
public protocol EngineAdapter: Sendable {
    /// Stable id within the node (`ollama@127.0.0.1:11434`, `llama.cpp:meshd-tiny`).
    var id: String { get }
    var kind: EngineKind { get }
    /// Base URL requests go to now (scheme, host and port; no trailing slash, no `/v1`).
    /// A managed engine's URL can change when it is restarted.
    var baseURL: String { get }
    /// Headers to send with every request to this engine (an `Authorization` bearer, if configured).
    var requestHeaders: [(String, String)] { get }
    /// Asks the engine for its models, health and load. Never throws.
    func refresh() async -> EngineSnapshot
    /// Starts whatever the adapter runs itself (a managed process). Returns without waiting for health.
    func start() async
    /// Stops whatever the adapter runs itself.
    func stop() async
    /// Makes the engine ready for a request that was just admitted (a split starts on its first
    /// request); returns why it cannot serve, nil when it can.
    func prepare() async -> String?
    /// A request failed on this engine before it answered (its connection broke).
    func noteFailure()
    /// After ``noteFailure()``: waits, briefly, until the engine has taken the failure in (a split's
    /// llama-server has ended), so that the poll that follows shows what the next request finds.
    func settle() async
    /// Unloads the model now where the adapter can (a stored model's llama-server stops).
    func unload() async
    /// A request's own keep-alive (Ollama `keep_alive`, seconds; nil: the default) for the model after it.
    func setKeepAlive(_ seconds: Double?)
    /// A request meshd sent to the engine ended (a stored model's idle time counts from here).
    func requestEnded()
}

extension EngineAdapter {
    public var requestHeaders: [(String, String)] { [] }
    public func start() async {}
    public func stop() async {}
    public func prepare() async -> String? { nil }
    public func noteFailure() {}
    public func settle() async {}
    public func unload() async {}
    public func setKeepAlive(_ seconds: Double?) {}
    public func requestEnded() {}
}

/// A parsed engine base URL.
struct EngineURL: Sendable, Hashable {
    var scheme: String
    var host: String
    var port: Int
    /// Path prefix without trailing slash (usually empty).
    var path: String

    /// Parses `http://host:port[/path]`. A trailing `/v1` is dropped when `dropV1` (OpenAI base URLs
    /// are often written with it; meshd appends `/v1/...` itself).
    init?(_ text: String, dropV1: Bool) {
        var t = Substring(text.trimmingCharacters(in: " \t\r\n"))
        guard let sep = t.range(of: "://") else { return nil }
        let scheme = t[..<sep.lowerBound].lowercased()
        guard scheme == "http" || scheme == "https" else { return nil }
        t = t[sep.upperBound...]
        let slash = t.firstIndex(of: "/") ?? t.endIndex
        let authority = t[..<slash]
        var path = String(t[slash...])
        while path.hasSuffix("/") { path.removeLast() }
        if dropV1, path.hasSuffix("/v1") { path.removeLast(3) }
        let hostPart: Substring
        var port: Int?
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { return nil }
            hostPart = authority[authority.index(after: authority.startIndex)..<close]
            let rest = authority[authority.index(after: close)...]
            if rest.hasPrefix(":") {
                guard let p = Int(rest.dropFirst()) else { return nil }
                port = p
            } else if !rest.isEmpty { return nil }
        } else if let colon = authority.lastIndex(of: ":") {
            hostPart = authority[..<colon]
            guard let p = Int(authority[authority.index(after: colon)...]) else { return nil }
            port = p
        } else {
            hostPart = authority
        }
        guard !hostPart.isEmpty else { return nil }
        let resolvedPort = port ?? (scheme == "https" ? 443 : 80)
        guard (1...65535).contains(resolvedPort) else { return nil }
        self.scheme = scheme
        self.host = String(hostPart)
        self.port = resolvedPort
        self.path = path
    }

    var hostPort: HostPort { HostPort(host: host, port: port) }

    /// `scheme://host:port/path` with the port always written.
    var base: String { "\(scheme)://\(hostPort)\(path)" }
}

extension String {
    func trimmingCharacters(in set: String) -> String {
        var s = Substring(self)
        while let f = s.first, set.contains(f) { s = s.dropFirst() }
        while let l = s.last, set.contains(l) { s = s.dropLast() }
        return String(s)
    }
}

/// The id of a URL engine: `kind@host:port`.
func engineID(kind: EngineKind, url: String?) -> String {
    guard let url, let u = EngineURL(url, dropV1: kind != .ollama) else {
        return "\(kind.rawValue)@\(url ?? "unconfigured")"
    }
    return "\(kind.rawValue)@\(u.hostPort)"
}

/// Reads a bearer key file: the first non-empty line, trimmed.
func readAPIKeyFile(_ path: String) -> Result<String, DetailError> {
    guard let bytes = readWholeFile(path) else {
        return .failure(DetailError("cannot read api key file \(path)"))
    }
    let text = String(decoding: bytes, as: UTF8.self)
    for line in text.split(whereSeparator: { $0 == "\n" || $0 == "\r\n" }) {
        let k = String(line).trimmingCharacters(in: " \t\r")
        if !k.isEmpty { return .success(k) }
    }
    return .failure(DetailError("api key file \(path) is empty"))
}

