import MeshCore
import MeshEngines
import Synchronization

/// The deciding node's queue (late binding): a request that no engine in the mesh could start
/// within `routing.queue_after_ms` waits here, not inside one engine's queue, and is let go when
/// an engine that serves its model frees up anywhere in the mesh (it is routed again then).
/// Served high priority first and client key by client key (``FairQueue``); bounded.
public final class MeshQueue: Sendable {
    /// How a wait ended.
    public enum Wake: Sendable, Equatable {
        /// An engine can take it now: route it again.
        case go
        /// The queue is full (or a more important request took its place): answer 429.
        case full(String)
        /// Nothing freed up within the longest wait.
        case timedOut
        /// The client went away.
        case cancelled
    }

    struct Entry: Sendable {
        let model: String
        let continuation: CheckedContinuation<Wake, Never>
    }

    struct State: Sendable {
        var queue: FairQueue<Entry>
        var rejected = 0
        var timedOut = 0
        var served = 0
        var waitedNanos: UInt64 = 0
        var maxWaitedNanos: UInt64 = 0
    }

    public let settings: RoutingSettings
    /// The longest a request waits before it is answered 503.
    public let maxWait: Duration
    private let state: Mutex<State>
    private let clock: any WallClock
    /// Yields when a request starts waiting (the node's pump loop runs while any wait).
    public let arrivals: AsyncStream<Void>
    private let arrived: AsyncStream<Void>.Continuation

    private let sleep: Sleeper

    public init(settings: RoutingSettings, clock: any WallClock, maxWait: Duration = .seconds(120),
                sleep: @escaping Sleeper = taskSleep) {
        self.sleep = sleep
        self.settings = settings
        self.clock = clock
        self.maxWait = maxWait
        state = Mutex(State(queue: FairQueue(capacity: settings.maxQueue)))
        (arrivals, arrived) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    /// Lets requests go whenever engines free up, while any wait: `pump` is called every
    /// `interval` then (and not at all while the queue is empty, so an idle node stays asleep).
    public func run(interval: Duration = .milliseconds(10), pump: @Sendable () -> Void) async {
        for await _ in arrivals {
            repeat {
                pump()
                await sleep(interval)
            } while count > 0 && !Task.isCancelled
            if Task.isCancelled { return }
        }
    }

    /// Ends ``run(interval:pump:)``.
    public func finish() { arrived.finish() }

    /// Whether a request whose soonest start is `startDelay` seconds away waits here: when that is
    /// past `queue_after_ms`, or when others wait for the same model already (a new request does
    /// not pass them when a place frees up).
    public func shouldQueue(model: String, startDelay: Double) -> Bool {
        guard settings.maxQueue > 0 else { return false }
        if startDelay * 1000 > Double(settings.queueAfterMs) { return true }
        return state.withLock { s in !s.queue.isEmpty && s.queue.contains { ModelName.matches($0.model, model) } }
    }

    public var count: Int { state.withLock { $0.queue.count } }

    /// Waits until ``pump(canStart:)`` lets this request go, the queue refuses it, `maxWait`
    /// passes, or the task is cancelled (the client left).
    public func wait(model: String, key: String, priority: RequestPriority) async -> Wake {
        // The ticket once queued; `cancelled` when the client left (maybe before it was queued).
        let holder = Mutex<(ticket: UInt64?, cancelled: Bool)>((nil, false))
        let timeout = Task { [maxWait] in
            await sleep(maxWait)
            guard !Task.isCancelled, let t = holder.withLock({ $0.ticket }) else { return }
            self.end(ticket: t, with: .timedOut)
        }
        defer { timeout.cancel() }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<Wake, Never>) in
                let now = clock.monotonicNanos()
                let (outcome, victim, ticket) = state.withLock { s -> (Wake?, Entry?, UInt64?) in
                    switch s.queue.enqueue(Entry(model: model, continuation: c), key: key, priority: priority, now: now) {
                    case .queued(let t):
                        return (nil, nil, t)
                    case .displaced(let t, let victim, _):
                        s.rejected += 1
                        return (nil, victim, t)
                    case .full:
                        s.rejected += 1
                        return (.full("the mesh queue is full (\(s.queue.count) requests waiting)"), nil, nil)
                    }
                }
                victim?.continuation.resume(returning: .full("a request of higher priority took this one's place in the full mesh queue"))
                if ticket != nil { arrived.yield() }
                if let outcome { c.resume(returning: outcome) }
                if let ticket, holder.withLock({ h in h.ticket = ticket; return h.cancelled }) { end(ticket: ticket, with: .cancelled) }
            }
        } onCancel: {
            if let t = holder.withLock({ h -> UInt64? in h.cancelled = true; return h.ticket }) { end(ticket: t, with: .cancelled) }
        }
    }

    private func end(ticket: UInt64, with wake: Wake) {
        let entry = state.withLock { s -> Entry? in
            let e = s.queue.remove(ticket: ticket)
            if e != nil, wake == .timedOut { s.timedOut += 1 }
            return e
        }
        entry?.continuation.resume(returning: wake)
    }

    /// Lets the next request go whose model `canStart` (an engine serving it has a free place now),
    /// in the queue's order. Returns the model of the one let go, nil if none.
    @discardableResult
    public func pump(canStart: (String) -> Bool) -> String? {
        let now = clock.monotonicNanos()
        var verdicts: [String: Bool] = [:]
        let next = state.withLock { s -> Entry? in
            guard let (_, e, waited) = s.queue.dequeue(now: now, where: { e in
                if let v = verdicts[e.model] { return v }
                let v = canStart(e.model)
                verdicts[e.model] = v
                return v
            }) else { return nil }
            s.served += 1
            s.waitedNanos &+= waited
            s.maxWaitedNanos = max(s.maxWaitedNanos, waited)
            return e
        }
        next?.continuation.resume(returning: .go)
        return next?.model
    }

    /// Counts for `/metrics`.
    public func stats() -> (waiting: Int, served: Int, rejected: Int, timedOut: Int, waitedSeconds: Double, maxWaitedSeconds: Double) {
        state.withLock { s in
            (s.queue.count, s.served, s.rejected, s.timedOut, Double(s.waitedNanos) / 1e9, Double(s.maxWaitedNanos) / 1e9)
        }
    }
}
