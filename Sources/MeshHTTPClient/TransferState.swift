import Synchronization

/// FIFO of body chunks with O(1) amortised pops.
struct ChunkQueue {
    private var storage: [[UInt8]] = []
    private var headIndex = 0

    var isEmpty: Bool { headIndex == storage.count }

    mutating func append(_ chunk: [UInt8]) { storage.append(chunk) }

    mutating func popFirst() -> [UInt8]? {
        guard headIndex < storage.count else { return nil }
        let chunk = storage[headIndex]
        storage[headIndex] = []
        headIndex += 1
        if headIndex == storage.count {
            storage.removeAll(keepingCapacity: true)
            headIndex = 0
        } else if headIndex >= 64, headIndex * 2 >= storage.count {
            storage.removeFirst(headIndex)
            headIndex = 0
        }
        return chunk
    }

    /// The queued chunks as one, up to `limit` bytes (or the first chunk alone, if larger): a relay
    /// that woke once for several chunks writes them once.
    mutating func popJoined(limit: Int = 64 * 1024) -> [UInt8]? {
        guard var joined = popFirst() else { return nil }
        while headIndex < storage.count, joined.count + storage[headIndex].count <= limit, let more = popFirst() {
            joined += more
        }
        return joined
    }

    mutating func removeAll() {
        storage = []
        headIndex = 0
    }
}

/// The part of a transfer shared between the loop thread (producer) and Swift tasks (consumer).
///
/// Every continuation is taken out of the locked state before it is resumed, so each is resumed exactly once.
final class TransferState: Sendable {
    enum Outcome: Equatable {
        case finished
        case failed(HTTPClientError)
    }

    /// Result of offering a body chunk from the write callback.
    enum OfferResult {
        case accepted
        /// Accepted, and the consumer is waiting: wake it with ``wakeConsumer()`` once the loop is
        /// done with this read (so the chunks one read brings reach it together, in one wake).
        case acceptedWake
        case pause
        case reject
    }

    private struct State {
        var head: HTTPClientResponseHead?
        var headContinuation: CheckedContinuation<HTTPClientResponseHead, any Error>?
        var bodyContinuation: CheckedContinuation<[UInt8]?, any Error>?
        var chunks = ChunkQueue()
        var bufferedBytes = 0
        var peakBufferedBytes = 0
        var pauseCount = 0
        var paused = false
        var resumeQueued = false
        /// ``OfferResult/acceptedWake`` was returned and ``wakeConsumer()`` has not run since.
        var wakeQueued = false
        var outcome: Outcome?

        /// Whether the consumer has drained enough that a paused transfer should be resumed; marks it queued.
        mutating func takeResumeNeed(maxBufferedBytes: Int) -> Bool {
            guard paused, !resumeQueued, bufferedBytes <= maxBufferedBytes / 2 else { return false }
            resumeQueued = true
            return true
        }
    }

    private enum Poll {
        case chunk([UInt8], resume: Bool)
        case end
        case failure(HTTPClientError)
        case wait
    }

    let loop: CurlLoop
    let maxBufferedBytes: Int
    /// Buffered mode (`execute`): the waiting task is resumed once, when the transfer completes,
    /// with the head; the whole body is then already buffered. One thread hand-off per request
    /// instead of one for the head and more for the body.
    let collectWhole: Bool
    /// Largest body accepted in buffered mode.
    static let maxWholeBodyBytes = 256 << 20
    private let state = Mutex(State())

    init(loop: CurlLoop, maxBufferedBytes: Int, collectWhole: Bool = false) {
        self.loop = loop
        self.maxBufferedBytes = max(1, maxBufferedBytes)
        self.collectWhole = collectWhole
    }

    var isCompleted: Bool { state.withLock { $0.outcome != nil } }
    var bufferedBytes: Int { state.withLock { $0.bufferedBytes } }
    var peakBufferedBytes: Int { state.withLock { $0.peakBufferedBytes } }
    var pauseCount: Int { state.withLock { $0.pauseCount } }

    // MARK: consumer side

    /// Submits the transfer to the loop and waits for the response head.
    func start(_ request: HTTPClientRequest) async throws -> HTTPClientResponseHead {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<HTTPClientResponseHead, any Error>) in
            let error: HTTPClientError? = state.withLock { s in
                if case .failed(let e) = s.outcome { return e }
                s.headContinuation = continuation
                return nil
            }
            if let error {
                continuation.resume(throwing: error)
            } else if !loop.submit(.add(self, request)) {
                fail(.shutdown)
            }
        }
    }

    /// Fails the transfer with `error` (if still running) and asks the loop to drop its easy handle.
    func cancel(_ error: HTTPClientError = .cancelled) {
        if fail(error) {
            loop.submit(.remove(self))
        }
    }

    /// The body bytes that have arrived since the last call (the chunks buffered by then, joined up
    /// to 64 KiB), `nil` at the end of the body; throws the transfer's error.
    func next() async throws -> [UInt8]? {
        if Task.isCancelled {
            cancel(.cancelled)
        }
        switch poll(installing: nil) {
        case .chunk(let chunk, let resume):
            if resume { loop.submit(.resume(self)) }
            return chunk
        case .end:
            return nil
        case .failure(let error):
            throw error
        case .wait:
            break
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<[UInt8]?, any Error>) in
                switch poll(installing: continuation) {
                case .chunk(let chunk, let resume):
                    if resume { loop.submit(.resume(self)) }
                    continuation.resume(returning: chunk)
                case .end:
                    continuation.resume(returning: nil)
                case .failure(let error):
                    continuation.resume(throwing: error)
                case .wait:
                    break
                }
            }
        } onCancel: {
            self.cancel(.cancelled)
        }
    }

    private func poll(installing continuation: CheckedContinuation<[UInt8]?, any Error>?) -> Poll {
        state.withLock { s in
            if let chunk = s.chunks.popJoined() {
                s.bufferedBytes -= chunk.count
                return .chunk(chunk, resume: s.takeResumeNeed(maxBufferedBytes: maxBufferedBytes))
            }
            switch s.outcome {
            case .finished: return .end
            case .failed(let error): return .failure(error)
            case nil: break
            }
            guard let continuation else { return .wait }
            if s.bodyContinuation != nil {
                return .failure(.transport(code: -1, message: "concurrent iteration of one response body"))
            }
            s.bodyContinuation = continuation
            return .wait
        }
    }

    // MARK: loop side (any thread for `fail`)

    /// Records the response head and resumes `start`. Returns false if the transfer already completed.
    @discardableResult
    func deliverHead(_ head: HTTPClientResponseHead) -> Bool {
        let collectWhole = self.collectWhole
        let continuation: CheckedContinuation<HTTPClientResponseHead, any Error>?? = state.withLock { s in
            guard s.outcome == nil, s.head == nil else { return .none }
            s.head = head
            if collectWhole { return .some(nil) }  // resumed by finish()
            defer { s.headContinuation = nil }
            return .some(s.headContinuation)
        }
        guard let continuation else { return false }
        continuation?.resume(returning: head)
        return true
    }

    /// Offers a body chunk; decides between accepting it, pausing the transfer, or aborting it.
    /// A waiting consumer is not resumed here: the loop calls ``wakeConsumer()`` after the read.
    func offer(_ bytes: UnsafeRawBufferPointer) -> OfferResult {
        let count = bytes.count
        let collectWhole = self.collectWhole
        return state.withLock { s in
            guard s.outcome == nil else { return .reject }
            if collectWhole {
                guard s.bufferedBytes + count <= Self.maxWholeBodyBytes else { return .reject }
            } else if s.bufferedBytes > 0, s.bufferedBytes + count > maxBufferedBytes {
                s.paused = true
                s.pauseCount += 1
                return .pause
            }
            s.chunks.append(Array(bytes))
            s.bufferedBytes += count
            s.peakBufferedBytes = max(s.peakBufferedBytes, s.bufferedBytes)
            guard s.bodyContinuation != nil, !s.wakeQueued else { return .accepted }
            s.wakeQueued = true
            return .acceptedWake
        }
    }

    /// Loop thread, after a read that returned ``OfferResult/acceptedWake``: hands the waiting
    /// consumer everything buffered, in one resume.
    func wakeConsumer() {
        let (waiter, chunk, resume): (CheckedContinuation<[UInt8]?, any Error>?, [UInt8]?, Bool) = state.withLock { s in
            s.wakeQueued = false
            guard let waiter = s.bodyContinuation, let chunk = s.chunks.popJoined() else { return (nil, nil, false) }
            s.bodyContinuation = nil
            s.bufferedBytes -= chunk.count
            return (waiter, chunk, s.takeResumeNeed(maxBufferedBytes: maxBufferedBytes))
        }
        if resume { loop.submit(.resume(self)) }
        waiter?.resume(returning: chunk)
    }

    /// Called on the loop thread right before `curl_easy_pause(CONT)`.
    func prepareResume() {
        state.withLock { s in
            s.paused = false
            s.resumeQueued = false
        }
    }

    /// Marks the body complete. A consumer still waiting gets what is buffered first, if anything.
    func finish() {
        let (headWaiter, bodyWaiter, head, last) = state.withLock { s -> (CheckedContinuation<HTTPClientResponseHead, any Error>?, CheckedContinuation<[UInt8]?, any Error>?, HTTPClientResponseHead?, [UInt8]?) in
            guard s.outcome == nil else { return (nil, nil, nil, nil) }
            s.outcome = .finished
            defer {
                s.headContinuation = nil
                s.bodyContinuation = nil
            }
            let last = s.bodyContinuation == nil ? nil : s.chunks.popJoined()
            if let last { s.bufferedBytes -= last.count }
            return (s.headContinuation, s.bodyContinuation, s.head, last)
        }
        if let head, collectWhole {
            headWaiter?.resume(returning: head)
        } else {
            headWaiter?.resume(throwing: HTTPClientError.transport(code: -1, message: "transfer ended without a response head"))
        }
        bodyWaiter?.resume(returning: last)
    }

    /// Fails the transfer if it is still running; returns whether this call completed it.
    /// `.cancelled` and `.shutdown` drop already-buffered data; other errors are thrown after it is consumed.
    @discardableResult
    func fail(_ error: HTTPClientError) -> Bool {
        let result: (CheckedContinuation<HTTPClientResponseHead, any Error>?, CheckedContinuation<[UInt8]?, any Error>?, [UInt8]?)? = state.withLock { s in
            guard s.outcome == nil else { return nil }
            s.outcome = .failed(error)
            if error == .cancelled || error == .shutdown {
                s.chunks.removeAll()
                s.bufferedBytes = 0
            }
            defer {
                s.headContinuation = nil
                s.bodyContinuation = nil
            }
            // A consumer still waiting gets what is buffered first; the error comes on its next call.
            let last = s.bodyContinuation == nil ? nil : s.chunks.popJoined()
            if let last { s.bufferedBytes -= last.count }
            return (s.headContinuation, s.bodyContinuation, last)
        }
        guard let (headWaiter, bodyWaiter, last) = result else { return false }
        headWaiter?.resume(throwing: error)
        if let last {
            bodyWaiter?.resume(returning: last)
        } else {
            bodyWaiter?.resume(throwing: error)
        }
        return true
    }
}
