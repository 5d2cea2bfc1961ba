import MeshHTTPClient

/// The one HTTP operation engine polling needs. `CurlHTTPClient` conforms; tests can pass a fake.
public protocol EngineHTTPTransport: Sendable {
    /// Sends `GET url` and returns the status and the whole body. Throws on transport failures
    /// (connection refused, timeouts); any HTTP status is a normal return.
    func get(_ url: String, headers: [(String, String)], timeout: Duration) async throws -> (status: Int, body: [UInt8])
}

extension CurlHTTPClient: EngineHTTPTransport {
    public func get(_ url: String, headers: [(String, String)], timeout: Duration) async throws -> (status: Int, body: [UInt8]) {
        var request = HTTPClientRequest(method: "GET", url: url)
        request.headers = headers
        request.firstByteTimeout = timeout
        request.idleTimeout = timeout
        let (head, body) = try await execute(request)
        return (head.status, body)
    }
}

/// Short human-readable text for a transport error, used in `healthDetail`.
/// Whether a poll failed only by a slow answer (no head, or a stalled body, within its timeout),
/// not a refused or reset connection or a bad answer.
func isSlowAnswer(_ error: any Error) -> Bool {
    guard let e = error as? HTTPClientError else { return false }
    return e == .firstByteTimeout || e == .idleTimeout
}

func describeTransportError(_ error: any Error) -> String {
    if let e = error as? HTTPClientError {
        if case .connectFailed(let m) = e { return "connection failed: \(m)" }
        return e.description
    }
    return String(describing: error)
}
