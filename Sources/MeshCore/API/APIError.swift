/// An error a client sees: HTTP status plus the fields of OpenAI's error object.
/// Rendered in the dialect of the route that failed (``body(for:)``).
public struct APIError: Error, Sendable, Equatable, CustomStringConvertible {
    public var status: Int
    public var message: String
    /// OpenAI `type` (`invalid_request_error`, `server_error`...).
    public var type: String
    /// The request field at fault, when one is.
    public var param: String?
    /// Machine-readable code (`model_not_found`, `request_too_large`...).
    public var code: String?

    public init(status: Int, message: String, type: String = "invalid_request_error", param: String? = nil, code: String? = nil) {
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
    }

    public var description: String { "\(status) \(message)" }

    /// The error body in the given dialect: OpenAI `{"error":{message,type,param,code}}`,
    /// Ollama `{"error":"message"}`.
    public func body(for dialect: Dialect) -> JSON {
        switch dialect {
        case .openai:
            return ["error": [
                "message": .string(message),
                "type": .string(type),
                "param": param.map(JSON.string) ?? .null,
                "code": code.map(JSON.string) ?? .null,
            ]]
        case .ollama:
            return ["error": .string(message)]
        }
    }

    // MARK: common errors

    public static func badJSON(_ e: JSONParseError) -> APIError {
        APIError(status: 400, message: "request body is not valid JSON: \(e.description)", code: "invalid_json")
    }

    public static func missing(_ field: String) -> APIError {
        APIError(status: 400, message: "missing required field '\(field)'", param: field, code: "missing_field")
    }

    public static func invalid(_ field: String, _ why: String) -> APIError {
        APIError(status: 400, message: "invalid '\(field)': \(why)", param: field, code: "invalid_value")
    }

    public static func tooLarge(limit: Int) -> APIError {
        APIError(status: 413, message: "request body exceeds the limit of \(limit) bytes", code: "request_too_large")
    }

    public static func modelNotFound(_ model: String, available: [String]) -> APIError {
        let list = available.isEmpty ? "no models are available" : "available models: " + available.joined(separator: ", ")
        return APIError(status: 404, message: "model '\(model)' not found; \(list)", param: "model", code: "model_not_found")
    }

    public static func noHealthyEngine(_ detail: String) -> APIError {
        APIError(status: 503, message: "no healthy engine can serve this request: \(detail)", type: "server_error", code: "engine_unavailable")
    }

    public static func engineTimeout(_ detail: String) -> APIError {
        APIError(status: 504, message: "engine timed out: \(detail)", type: "server_error", code: "engine_timeout")
    }

    public static func engineFailed(_ detail: String) -> APIError {
        APIError(status: 502, message: "engine failed: \(detail)", type: "server_error", code: "engine_error")
    }

    public static let unauthorized = APIError(
        status: 401, message: "missing or invalid API key (send 'Authorization: Bearer KEY')",
        type: "authentication_error", code: "invalid_api_key")
}

/// The engines and nodes a request was tried on that failed before any byte reached the client,
/// in order, and the error the client gets when no candidate is left (it names every one).
public struct FailedAttempts: Sendable, Equatable {
    public struct Entry: Sendable, Equatable {
        /// The engine (`id` locally, `node/id` on a peer) or node tried.
        public var label: String
        /// HTTP status the failure maps to (502 broken, 503 overloaded or unavailable).
        public var status: Int
        public var reason: String
    }

    public private(set) var entries: [Entry] = []

    public init() {}

    public var isEmpty: Bool { entries.isEmpty }

    public mutating func add(_ label: String, status: Int, reason: String) {
        entries.append(Entry(label: label, status: status, reason: reason))
    }

    /// 503 when every attempt was refused as overloaded or unavailable, else 502; the message lists
    /// every engine tried and why it failed.
    public func error(model: String) -> APIError {
        let status = entries.allSatisfy { $0.status == 503 } ? 503 : 502
        let list = entries.map { "\($0.label) (\($0.reason))" }.joined(separator: "; ")
        return APIError(status: status,
                        message: "no engine could serve '\(model)'; each failed before answering or is out of rotation: \(list)",
                        type: "server_error", code: status == 503 ? "engine_unavailable" : "engine_error")
    }
}
