/// Client-wide settings for ``CurlHTTPClient``.
public struct HTTPClientConfiguration: Sendable {
    /// Maximum time to establish a connection (DNS + TCP + TLS handshake). Maps to `CURLOPT_CONNECTTIMEOUT_MS`.
    public var connectTimeout: Duration
    /// Maximum time from the start of a request until the response head has arrived. `<= .zero` disables it.
    public var firstByteTimeout: Duration
    /// Maximum time without any response body bytes once the head has arrived (not counted while the
    /// transfer is paused by backpressure). `<= .zero` disables it.
    public var idleTimeout: Duration
    /// Maximum simultaneous connections per host (`CURLMOPT_MAX_HOST_CONNECTIONS`); further requests queue.
    public var maxConnectionsPerHost: Int
    /// PEM bundle of trusted CA certificates for TLS (`CURLOPT_CAINFO`); `nil` uses the system store.
    public var caFile: String?
    /// Per-stream high watermark: once this many body bytes are buffered and not consumed, the transfer is
    /// paused until the consumer has drained below half of it.
    public var maxBufferedBytes: Int
    /// A streamed body whose chunks come faster than one per half of this is read at most once per
    /// this (``ReadCoalescer``): fewer thread wakes per chunk when an engine streams fast, at most this
    /// much added to a chunk's latency. `.zero`: every chunk is read as it comes.
    public var streamCoalesce: Duration

    /// Creates a configuration; every parameter has a production default.
    public init(
        connectTimeout: Duration = .seconds(2),
        firstByteTimeout: Duration = .seconds(60),
        idleTimeout: Duration = .seconds(30),
        maxConnectionsPerHost: Int = 16,
        caFile: String? = nil,
        maxBufferedBytes: Int = 1 << 20,
        streamCoalesce: Duration = .zero
    ) {
        self.connectTimeout = connectTimeout
        self.firstByteTimeout = firstByteTimeout
        self.idleTimeout = idleTimeout
        self.maxConnectionsPerHost = maxConnectionsPerHost
        self.caFile = caFile
        self.maxBufferedBytes = maxBufferedBytes
        self.streamCoalesce = streamCoalesce
    }
}

/// One outbound HTTP request.
///
/// `Content-Length` is always computed from `body`; a caller-supplied `Content-Length` header is ignored.
/// `Expect: 100-continue` and curl's default form `Content-Type` are suppressed unless set explicitly.
public struct HTTPClientRequest: Sendable {
    /// HTTP method, e.g. `"GET"`, `"POST"`.
    public var method: String
    /// Absolute `http://` or `https://` URL.
    public var url: String
    /// Request headers in order; names and values must not contain CR or LF.
    public var headers: [(String, String)]
    /// Request body (sent with `Content-Length`).
    public var body: [UInt8]
    /// Overrides ``HTTPClientConfiguration/firstByteTimeout`` for this request.
    public var firstByteTimeout: Duration?
    /// Overrides ``HTTPClientConfiguration/idleTimeout`` for this request.
    public var idleTimeout: Duration?
    /// Overrides ``HTTPClientConfiguration/caFile`` for this request (`CURLOPT_CAINFO`). curl reuses a
    /// kept-alive TLS connection only for a request whose TLS settings, the CA file included, match.
    public var caFile: String?

    /// Creates a request.
    public init(
        method: String = "GET",
        url: String,
        headers: [(String, String)] = [],
        body: [UInt8] = [],
        firstByteTimeout: Duration? = nil,
        idleTimeout: Duration? = nil,
        caFile: String? = nil
    ) {
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self.firstByteTimeout = firstByteTimeout
        self.idleTimeout = idleTimeout
        self.caFile = caFile
    }
}

/// Status line and headers of a response (the final, non-1xx one).
public struct HTTPClientResponseHead: Sendable {
    /// HTTP status code.
    public var status: Int
    /// Response headers in wire order.
    public var headers: [(String, String)]

    /// Creates a response head.
    public init(status: Int, headers: [(String, String)]) {
        self.status = status
        self.headers = headers
    }

    /// First value of the header `name`, compared case-insensitively.
    public func header(_ name: String) -> String? {
        let wanted = name.lowercased()
        return headers.first { $0.0.lowercased() == wanted }?.1
    }
}

/// Errors thrown by ``CurlHTTPClient`` and ``HTTPClientStreamingResponse``.
public enum HTTPClientError: Error, Sendable, Equatable, CustomStringConvertible {
    /// No connection could be established (refused, DNS failure, connect timeout, TLS handshake failure).
    case connectFailed(String)
    /// The response head did not arrive within the first-byte timeout.
    case firstByteTimeout
    /// No body bytes arrived within the idle timeout while streaming.
    case idleTimeout
    /// The request was cancelled (task cancellation, `cancel()`, or the response was dropped).
    case cancelled
    /// The client was shut down.
    case shutdown
    /// Any other libcurl failure (`code` is the `CURLcode`), including errors in the middle of a body
    /// and invalid requests.
    case transport(code: Int, message: String)

    public var description: String {
        switch self {
        case .connectFailed(let message): return "connect failed: \(message)"
        case .firstByteTimeout: return "timed out waiting for the response head"
        case .idleTimeout: return "timed out waiting for response body bytes"
        case .cancelled: return "request cancelled"
        case .shutdown: return "HTTP client shut down"
        case .transport(let code, let message): return "transport error \(code): \(message)"
        }
    }
}

extension Duration {
    /// Whole milliseconds, rounded up, clamped to `0...Int.max`.
    var meshCeilMilliseconds: Int {
        if self <= .zero { return 0 }
        let (seconds, attoseconds) = components
        let ms = seconds.multipliedReportingOverflow(by: 1000)
        if ms.overflow { return Int.max }
        let total = ms.partialValue.addingReportingOverflow((attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000)
        return total.overflow ? Int.max : Int(clamping: total.partialValue)
    }
}
