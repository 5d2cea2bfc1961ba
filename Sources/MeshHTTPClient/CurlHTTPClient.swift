import Logging

/// HTTP/1.1 client over the libcurl multi interface.
///
/// One dedicated OS thread owns the `CURLM` handle and every easy handle; callers talk to it through a
/// command queue and a wakeup pipe the loop polls. Connections are kept alive and reused through the multi handle's
/// connection cache. Call ``shutdown()`` (or drop the client) to stop the thread.
public final class CurlHTTPClient: Sendable {
    /// The configuration the client was created with.
    public let configuration: HTTPClientConfiguration
    let loop: CurlLoop

    /// Creates the multi handle and starts the loop thread.
    public init(
        configuration: HTTPClientConfiguration = .init(),
        logger: Logger = Logger(label: "meshd.http-client")
    ) throws {
        self.configuration = configuration
        self.loop = try startCurlLoop(configuration: configuration, logger: logger)
    }

    deinit {
        loop.shutdown()
    }

    /// Performs `request` and returns the response head with the whole body.
    ///
    /// Throws ``HTTPClientError``; task cancellation aborts the transfer and throws ``HTTPClientError/cancelled``.
    public func execute(_ request: HTTPClientRequest) async throws -> (HTTPClientResponseHead, [UInt8]) {
        let response = try await start(request, collectWhole: true)
        var body: [UInt8] = []
        if let length = response.head.header("content-length").flatMap({ Int($0) }), length > 0 {
            body.reserveCapacity(min(length, 64 << 20))
        }
        for try await chunk in response {
            body.append(contentsOf: chunk)
        }
        return (response.head, body)
    }

    /// Starts `request` and returns once the response head has arrived; the body is then pulled chunk by
    /// chunk, as it comes off the wire, by iterating the returned response.
    ///
    /// Task cancellation while waiting for the head aborts the transfer and throws ``HTTPClientError/cancelled``.
    public func stream(_ request: HTTPClientRequest) async throws -> HTTPClientStreamingResponse {
        try await start(request, collectWhole: false)
    }

    private func start(_ request: HTTPClientRequest, collectWhole: Bool) async throws -> HTTPClientStreamingResponse {
        let transfer = TransferState(loop: loop, maxBufferedBytes: configuration.maxBufferedBytes, collectWhole: collectWhole)
        let head = try await withTaskCancellationHandler {
            try await transfer.start(request)
        } onCancel: {
            transfer.cancel(.cancelled)
        }
        if Task.isCancelled {
            transfer.cancel(.cancelled)
            throw HTTPClientError.cancelled
        }
        return HTTPClientStreamingResponse(head: head, transfer: transfer, client: self)
    }

    /// Stops the client: fails in-flight transfers with ``HTTPClientError/shutdown``, joins the loop thread
    /// and frees the multi handle. Idempotent; later requests fail with ``HTTPClientError/shutdown``.
    public func shutdown() {
        loop.shutdown()
    }

    /// Easy handles in use by transfers (for leak checks in tests); reset ones kept for reuse do not count.
    package var loopThreadCPUTime: Duration { loop.threadCPUTime ?? .zero }
    package var liveEasyHandleCount: Int { loop.liveEasyHandles.load(ordering: .relaxed) }
    /// Times the loop thread woke up (returned from `epoll_wait`).
    package var loopWakeups: Int { loop.wakeups.load(ordering: .relaxed) }
    /// Per-transfer callback contexts currently alive (for leak checks in tests).
    package var liveTransferContextCount: Int { loop.liveContexts.load(ordering: .relaxed) }
}

/// A response whose head has arrived and whose body is read by iterating it (each element is one chunk
/// as delivered by the connection).
///
/// The body is pull-based: at most about ``HTTPClientConfiguration/maxBufferedBytes`` are buffered before
/// the transfer is paused. Mid-body failures are thrown by the iterator. ``cancel()``, cancelling the
/// iterating task, or dropping the response before the body ended closes the connection.
public final class HTTPClientStreamingResponse: Sendable, AsyncSequence {
    public typealias Element = [UInt8]

    /// Status and headers.
    public let head: HTTPClientResponseHead
    let transfer: TransferState
    /// Keeps the client (and its loop thread) alive while the body is being read.
    private let client: CurlHTTPClient

    init(head: HTTPClientResponseHead, transfer: TransferState, client: CurlHTTPClient) {
        self.head = head
        self.transfer = transfer
        self.client = client
    }

    deinit {
        transfer.cancel(.cancelled)
    }

    /// Aborts the transfer; pending and later reads throw ``HTTPClientError/cancelled``. No-op once the body ended.
    public func cancel() {
        transfer.cancel(.cancelled)
    }

    /// Iterator over body chunks.
    public struct AsyncIterator: AsyncIteratorProtocol {
        let response: HTTPClientStreamingResponse

        /// The next chunk, or `nil` after the complete body; throws ``HTTPClientError``.
        public mutating func next() async throws -> [UInt8]? {
            try await response.transfer.next()
        }
    }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(response: self)
    }

    /// Body bytes received and not yet consumed.
    package var bufferedByteCount: Int { transfer.bufferedBytes }
    /// Highest value ``bufferedByteCount`` has reached.
    package var peakBufferedByteCount: Int { transfer.peakBufferedBytes }
    /// How many times the transfer was paused because the buffer was full.
    package var pauseCount: Int { transfer.pauseCount }
}
