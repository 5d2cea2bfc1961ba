/// How many requests meshd keeps open to one engine at once, and how that limit is learned.
///
/// The limit follows what the engine can run, never a hidden constant:
/// 1. `engines[].max_concurrency` when the operator set it;
/// 2. else the slots the engine reports (llama-server `/props` `total_slots` or `/slots`, the sim engine);
/// 3. else a limit learned from the engine itself: when it answers "overloaded" (429, 503) while meshd
///    had `n` requests open to it, the limit becomes `n - 1` (at least 1), and it grows back by one
///    after `limit` requests in a row succeed (additive increase, multiplicative-ish decrease);
/// 4. else none: the engine queues for itself (Ollama, vLLM and SGLang batch and queue internally).
///
/// Requests over the limit wait in meshd's queue for that engine (counted, shown in `/metrics` and
/// `meshctl status`), not in the HTTP client's connection queue. Pure: no I/O, no clock.
public enum EngineConcurrency {
    /// The limit in force: configured, else reported slots, else learned; nil means no limit.
    public static func limit(configured: Int?, reportedSlots: Int?, learned: Int?) -> Int? {
        if let configured, configured > 0 { return configured }
        if let reportedSlots, reportedSlots > 0 { return reportedSlots }
        if let learned, learned > 0 { return learned }
        return nil
    }

    /// What was learned so far from an engine's overload answers.
    public struct Learned: Sendable, Hashable {
        /// The learned limit, once the engine has said it was overloaded.
        public var limit: Int?
        /// Successful requests since the limit last changed.
        public var successes = 0

        public init(limit: Int? = nil, successes: Int = 0) {
            self.limit = limit
            self.successes = successes
        }

        /// The engine answered overloaded while `open` requests (this one included) were open to it.
        public mutating func overloaded(open: Int) {
            let next = max(1, open - 1)
            limit = min(limit ?? next, next)
            successes = 0
        }

        /// A request succeeded. After `limit` successes in a row the limit grows by one.
        public mutating func succeeded() {
            guard let l = limit else { return }
            successes += 1
            if successes >= l {
                limit = l + 1
                successes = 0
            }
        }
    }

    /// Whether an engine's failure status means it is overloaded (try elsewhere, learn a limit)
    /// rather than broken.
    public static func isOverload(status: Int) -> Bool { status == 429 || status == 503 }

    /// Whether an answer with this status, before any byte reached the client, should be tried on
    /// the next candidate: every 5xx and 429. 4xx answers are about the request and go to the client.
    public static func isRetryable(status: Int) -> Bool { status == 429 || (500...599).contains(status) }

    /// Whether a failed status means the engine itself is unhealthy (taken out of rotation until a
    /// poll says otherwise): every 5xx except overload (503, handled by the learned limit and the
    /// queue) and 501 (a capability it lacks, such as embeddings on a llama-server started without
    /// `--embeddings`: it still serves everything else).
    public static func marksUnhealthy(status: Int) -> Bool {
        (500...599).contains(status) && status != 503 && status != 501
    }
}

/// The answer to a request for a place on an engine (see `EngineRegistry.acquire`).
public enum EngineAdmission: Sendable, Equatable {
    /// A place is held: send the request, then report its end.
    case admitted
    /// The waiting task was cancelled (the client left); nothing is held.
    case cancelled
    /// The engine went down while the request waited; nothing is held: try another candidate.
    case unavailable(String)
}
