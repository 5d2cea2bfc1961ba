import MeshCore
import MeshHTTPClient
import Synchronization

/// A provider's streamed answer as OpenAI chat-completion SSE bytes, produced chunk by chunk as the
/// provider's bytes arrive. Iterate it once. The iterator throws ``CloudError``: `.cut` when the
/// body ended or broke before the provider's end marker (after yielding what arrived), `.cancelled`
/// when the caller cancelled. The outcome is recorded in the client's health registry.
public final class CloudStream: AsyncSequence, Sendable {
    public typealias Element = [UInt8]

    /// The provider's status and headers.
    public let head: HTTPClientResponseHead
    let response: HTTPClientStreamingResponse
    let provider: ProviderSettings
    let client: CloudClient
    private let state: Mutex<State>

    struct State: Sendable {
        var adapter: ProviderStreamAdapter
        var observer = SSEObserver()
        var finished = false
        /// The end marker (or an error event) passed and the outcome was recorded.
        var succeeded = false
        var pendingError: CloudError?
    }

    init(head: HTTPClientResponseHead, response: HTTPClientStreamingResponse, adapter: ProviderStreamAdapter,
         provider: ProviderSettings, client: CloudClient) {
        self.head = head
        self.response = response
        self.provider = provider
        self.client = client
        state = Mutex(State(adapter: adapter))
    }

    /// Usage from the stream's usage chunk, once it has passed (also after a cut, when the
    /// provider sent it early, as Anthropic does for the prompt).
    public var usage: CloudUsage? { state.withLock { $0.observer.usage } }

    /// Whether the provider ended the stream properly (end marker or an error event).
    public var completed: Bool { state.withLock { $0.observer.ended } }

    /// The message of the provider's error event, when it ended the stream with one.
    public var providerError: String? { state.withLock { $0.observer.errorMessage.map(provider.secret.redact) } }

    /// Aborts the transfer.
    public func cancel() { response.cancel() }

    /// Iterator over OpenAI SSE byte chunks.
    public struct AsyncIterator: AsyncIteratorProtocol {
        let stream: CloudStream
        var body: HTTPClientStreamingResponse.AsyncIterator

        /// The next non-empty chunk of OpenAI SSE bytes, nil at the end; throws ``CloudError``.
        public mutating func next() async throws -> [UInt8]? {
            try await stream.next(&body)
        }
    }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(stream: self, body: response.makeAsyncIterator())
    }

    func next(_ body: inout HTTPClientStreamingResponse.AsyncIterator) async throws(CloudError) -> [UInt8]? {
        while true {
            let done: (CloudError?, Bool) = state.withLock { s in
                defer { s.pendingError = nil }
                return (s.pendingError, s.finished)
            }
            if let e = done.0 { throw e }
            if done.1 { return nil }
            let chunk: [UInt8]?
            do {
                chunk = try await body.next()
            } catch {
                // A connection that breaks after the end marker lost nothing.
                if state.withLock({ $0.succeeded }) { return finish() }
                throw end(client.transportError(error) == .cancelled ? .cancelled : .cut, reason: "\(error)")
            }
            guard let chunk else {
                let tail = state.withLock { s in
                    let tail = s.adapter.finish()
                    s.observer.observe(tail)
                    return tail
                }
                recordSuccessIfEnded()
                if !state.withLock({ $0.succeeded }) {
                    let e = end(.cut, reason: "the body ended without the end marker")
                    state.withLock { $0.pendingError = e }
                }
                state.withLock { $0.finished = true }
                if !tail.isEmpty { return tail }
                continue
            }
            let out: Result<[UInt8], APIError> = state.withLock { s in
                do throws(APIError) {
                    let out = try s.adapter.feed(chunk)
                    s.observer.observe(out)
                    return .success(out)
                } catch {
                    return .failure(error)
                }
            }
            recordSuccessIfEnded()
            switch out {
            case .success(let bytes) where !bytes.isEmpty: return bytes
            case .success: continue
            case .failure(let e): throw end(.invalidResponse(provider.secret.redact(e.message)), reason: nil)
            }
        }
    }

    /// Records the outcome once, as soon as the end marker (or an error event) has passed: a
    /// consumer that stops reading there must not leave a half-open probe hanging. An error event
    /// is passed on to the client as it is and counts as a provider failure.
    private func recordSuccessIfEnded() {
        let ended: (Bool, String?) = state.withLock { s in
            guard s.observer.ended, !s.succeeded else { return (false, nil) }
            s.succeeded = true
            return (true, s.observer.errorMessage)
        }
        guard ended.0 else { return }
        if let message = ended.1 {
            _ = client.failed(provider, .invalidResponse("error event: " + provider.secret.redact(message)))
        } else {
            client.succeeded(provider, status: head.status)
        }
    }

    private func finish() -> [UInt8]? {
        state.withLock { $0.finished = true }
        return nil
    }

    /// Marks the stream finished with `error`, records and logs it.
    private func end(_ error: CloudError, reason: String?) -> CloudError {
        state.withLock { $0.finished = true }
        response.cancel()
        if error == .cancelled { return error }
        _ = client.failed(provider, error, detail: reason.map(provider.secret.redact))
        return error
    }
}

/// Watches an OpenAI SSE stream go by: its `[DONE]` marker, an error event, the usage chunk.
struct SSEObserver: Sendable {
    static let maxLine = 1 << 20
    var line: [UInt8] = []
    private(set) var sawDone = false
    private(set) var errorMessage: String?
    private(set) var usage: CloudUsage?

    /// The stream ended as the provider meant it to.
    var ended: Bool { sawDone || errorMessage != nil }

    mutating func observe(_ bytes: [UInt8]) {
        var start = bytes.startIndex
        while let nl = bytes[start...].firstIndex(of: 0x0A) {
            line += bytes[start..<nl]
            process()
            line.removeAll(keepingCapacity: true)
            start = nl + 1
        }
        if line.count < Self.maxLine { line += bytes[start...] }
    }

    static let dataPrefix = Array("data:".utf8)
    static let done = Array("[DONE]".utf8)
    static let errorKey = Array("\"error\"".utf8)
    static let usageKey = Array("\"usage\"".utf8)

    private mutating func process() {
        guard line.starts(with: Self.dataPrefix) else { return }
        var payload = line[Self.dataPrefix.count...]
        if payload.first == 0x20 { payload = payload.dropFirst() }
        if payload.last == 0x0D { payload = payload.dropLast() }
        if payload.elementsEqual(Self.done) {
            sawDone = true
            return
        }
        guard payload.firstRange(of: Self.errorKey) != nil || payload.firstRange(of: Self.usageKey) != nil,
              let event = try? JSONParser.parse(payload) else { return }
        if let message = ProviderResponse.errorMessage(event) { errorMessage = message }
        if let u = CloudUsage(openAI: event["usage"]) { usage = u }
    }
}
