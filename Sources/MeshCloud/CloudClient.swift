import Logging
import MeshCore
import MeshHTTPClient

/// Why a provider request failed. Messages never contain the provider key.
public enum CloudError: Error, Sendable, Equatable, CustomStringConvertible {
    /// HTTP 429 (or 503/529 with `retry-after`); the provider's `retry-after` in seconds when it sent a usable one.
    case rateLimited(retryAfter: Double?)
    /// Any other non-2xx status, with the provider's error message.
    case http(status: Int, message: String)
    /// No answer: connection, TLS, timeout or protocol failure before the response head.
    case transport(String)
    /// The stream ended (or broke) before the provider's end marker.
    case cut
    /// A 2xx answer that is not what the dialect promises (unparsable, no candidates).
    case invalidResponse(String)
    /// The caller cancelled the request.
    case cancelled

    public var description: String {
        switch self {
        case .rateLimited(let s): return "rate limited" + (s.map { " (retry after \($0) s)" } ?? "")
        case .http(let status, let message): return "HTTP \(status): \(message)"
        case .transport(let reason): return "transport: \(reason)"
        case .cut: return "stream cut before its end"
        case .invalidResponse(let reason): return "invalid response: \(reason)"
        case .cancelled: return "cancelled"
        }
    }
}

/// Token counts a provider reported.
public struct CloudUsage: Sendable, Equatable {
    /// Prompt tokens, cached ones included.
    public var promptTokens: Int
    /// Prompt tokens read from the provider's cache (billed at the cached-input price).
    public var cachedPromptTokens: Int
    public var completionTokens: Int

    /// Creates counts.
    public init(promptTokens: Int, cachedPromptTokens: Int = 0, completionTokens: Int) {
        self.promptTokens = promptTokens
        self.cachedPromptTokens = cachedPromptTokens
        self.completionTokens = completionTokens
    }

    /// From an OpenAI `usage` object; nil when it is not one.
    public init?(openAI u: JSON?) {
        guard let u, let p = u["prompt_tokens"]?.intValue else { return nil }
        self.init(promptTokens: p, cachedPromptTokens: u["prompt_tokens_details"]?["cached_tokens"]?.intValue ?? 0,
                  completionTokens: u["completion_tokens"]?.intValue ?? 0)
    }

    /// Without the cached split.
    public var tokenUsage: TokenUsage { TokenUsage(promptTokens: promptTokens, completionTokens: completionTokens) }
}

/// A whole (non-streamed) provider answer in OpenAI form.
public struct CloudResponse: Sendable {
    public var status: Int
    /// An OpenAI `chat.completion` (or the provider's own body for OpenAI-compatible providers).
    public var body: JSON
    public var usage: CloudUsage?
}

/// Sends requests to cloud providers over the shared ``CurlHTTPClient`` and turns their answers
/// into OpenAI form. Every outcome is recorded in ``health``. Logs carry the provider name,
/// status and error text, never the key. Does not check health before sending: the caller picks
/// a provider with ``ProviderHealthRegistry/admit(_:nowNanos:)``.
public final class CloudClient: Sendable {
    public let http: CurlHTTPClient
    public let health: ProviderHealthRegistry
    let clock: any WallClock
    let logger: Logger
    /// Bytes of an error body read for its message.
    static let maxErrorBody = 64 * 1024

    /// Creates a client; `clock` dates synthesised answers and health records.
    public init(http: CurlHTTPClient, health: ProviderHealthRegistry = ProviderHealthRegistry(), clock: any WallClock, logger: Logger) {
        self.http = http
        self.health = health
        self.clock = clock
        self.logger = logger
    }

    /// Sends a non-streamed request (`request.stream` false) for `model`; `id` names the
    /// synthesised OpenAI answer.
    public func send(_ request: EngineRequest, to provider: ProviderSettings, model: String, id: String) async throws(CloudError) -> CloudResponse {
        let head: HTTPClientResponseHead
        let bytes: [UInt8]
        do {
            (head, bytes) = try await http.execute(provider.httpRequest(for: request, nowNanos: clock.nowNanos()))
        } catch {
            throw failed(provider, transportError(error))
        }
        guard (200..<300).contains(head.status) else { throw failed(provider, statusError(head, bytes, provider)) }
        let body: JSON
        do {
            body = try JSONParser.parse(bytes)
        } catch {
            throw failed(provider, .invalidResponse("\(provider.kind.rawValue) provider sent invalid JSON: \(error)"))
        }
        switch ProviderResponse.toOpenAI(body, kind: provider.kind, model: model, id: id, created: createdSeconds) {
        case .success(let openAI):
            succeeded(provider, status: head.status)
            return CloudResponse(status: head.status, body: openAI, usage: CloudUsage(openAI: openAI["usage"]))
        case .failure(let e):
            throw failed(provider, .invalidResponse(provider.secret.redact(e.message)))
        }
    }

    /// Starts a streamed request (`request.stream` true); returns once the provider's response head
    /// arrived with a 2xx status. The stream yields OpenAI SSE bytes as provider chunks arrive.
    public func stream(_ request: EngineRequest, to provider: ProviderSettings, model: String, id: String) async throws(CloudError) -> CloudStream {
        let response: HTTPClientStreamingResponse
        do {
            response = try await http.stream(provider.httpRequest(for: request, nowNanos: clock.nowNanos()))
        } catch {
            throw failed(provider, transportError(error))
        }
        guard (200..<300).contains(response.head.status) else {
            var bytes: [UInt8] = []
            do {
                for try await chunk in response {
                    bytes += chunk
                    if bytes.count >= Self.maxErrorBody { break }
                }
            } catch {}
            throw failed(provider, statusError(response.head, bytes, provider))
        }
        let adapter = ProviderStreamAdapter(kind: provider.kind, model: model, id: id, created: createdSeconds)
        return CloudStream(head: response.head, response: response, adapter: adapter, provider: provider, client: self)
    }

    /// Whether `provider` may take a request now; takes the one probe slot of a half-open circuit.
    public func admit(_ provider: ProviderSettings) -> Bool {
        health.admit(provider.name, nowNanos: clock.nowNanos())
    }

    /// The health of `providers` now, for `meshctl`.
    public func healthSnapshots(_ providers: [ProviderSettings]) -> [ProviderHealthSnapshot] {
        health.snapshots(providers.map(\.name), nowNanos: clock.nowNanos())
    }

    var createdSeconds: Int64 { Int64(clock.nowNanos() / 1_000_000_000) }

    func transportError(_ error: any Error) -> CloudError {
        switch error {
        case HTTPClientError.cancelled: return .cancelled
        case is CancellationError: return .cancelled
        default: return .transport("\(error)")
        }
    }

    func statusError(_ head: HTTPClientResponseHead, _ bytes: [UInt8], _ provider: ProviderSettings) -> CloudError {
        let retryAfter = head.header("retry-after").flatMap { RetryAfter.seconds($0, nowNanos: clock.nowNanos()) }
        // 429, and an overloaded or unavailable provider that says when to come back (503, and
        // Anthropic's 529): back off for that long.
        if head.status == 429 || ([503, 529].contains(head.status) && retryAfter != nil) {
            return .rateLimited(retryAfter: retryAfter)
        }
        let parsed = try? JSONParser.parse(bytes)
        var message = parsed.flatMap { ProviderResponse.errorMessage($0, kind: provider.kind) }
            ?? String(decoding: bytes.prefix(300), as: UTF8.self).trimmedWhitespace
        if message.isEmpty { message = "HTTP \(head.status)" }
        // AWS names the error in a header (`x-amzn-ErrorType: InvalidSignatureException:http://...`).
        if let type = head.header("x-amzn-errortype")?.split(separator: ":").first, !type.isEmpty { message = "\(type): \(message)" }
        return .http(status: head.status, message: provider.secret.redact(message))
    }

    /// Records and logs a failure; returns it for throwing.
    func failed(_ provider: ProviderSettings, _ error: CloudError, detail: String? = nil) -> CloudError {
        let now = clock.nowNanos()
        switch error {
        case .rateLimited(let s):
            health.record(provider.name, .rateLimited(retryAfterSeconds: s), nowNanos: now)
        case .http(let status, _) where [400, 413, 422].contains(status):
            break  // the request's fault, not the provider's
        case .cancelled:
            break
        default:
            health.record(provider.name, .failure(error.description), nowNanos: now)
        }
        var metadata: Logger.Metadata = [
            "provider": .string(provider.name), "kind": .string(provider.kind.rawValue), "error": .string(error.description),
        ]
        if let detail { metadata["detail"] = .string(detail) }
        logger.warning("cloud provider request failed", metadata: metadata)
        return error
    }

    func succeeded(_ provider: ProviderSettings, status: Int) {
        health.record(provider.name, .success, nowNanos: clock.nowNanos())
        logger.debug("cloud provider answered", metadata: ["provider": .string(provider.name), "status": .stringConvertible(status)])
    }
}
