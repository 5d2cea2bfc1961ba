import CoreMetrics
import MeshCore
import Metrics
import Prometheus
import Synchronization

/// The node's metrics: swift-metrics instruments backed by a per-node Prometheus registry
/// (not the global bootstrap, so several nodes can live in one test process).
public final class NodeMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry
    private let factory: PrometheusMetricsFactory
    private let inFlight: CoreMetrics.Gauge
    private let inFlightCount = Mutex(0)

    static let latencyBuckets: [Duration] = [
        .milliseconds(1), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
        .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2.5), .seconds(5), .seconds(10), .seconds(30), .seconds(60),
        .seconds(120),
    ]

    public init() {
        registry = PrometheusCollectorRegistry()
        var f = PrometheusMetricsFactory(registry: registry)
        f.durationHistogramBuckets = [
            "meshd_request_duration_seconds": Self.latencyBuckets,
            "meshd_time_to_first_token_seconds": Self.latencyBuckets,
        ]
        factory = f
        inFlight = CoreMetrics.Gauge(label: "meshd_requests_in_flight", dimensions: [], factory: factory)
        inFlight.record(0)
    }

    /// Whether Swift tasks run on the node's event loops (meshd makes them Swift's global executor
    /// at start): 1, or 0 when they stay on the default pool, where every request and streamed
    /// chunk costs more thread hand-offs. `meshd_tasks_on_event_loops`.
    /// - Parameter jobsRun: how many jobs the event loops have run for Swift's global executor
    ///   (`meshd_executor_jobs_total`): each is a task starting, or resuming after it waited, or
    ///   after it switched executors; per request, it tells whether tasks hop needlessly.
    public func recordTasksOnEventLoops(_ on: Bool, jobsRun: (@Sendable () -> Int)? = nil) {
        CoreMetrics.Gauge(label: "meshd_tasks_on_event_loops", dimensions: [], factory: factory).record(on ? 1 : 0)
        executorJobs.withLock { $0 = jobsRun }
    }

    private let executorJobs = Mutex<(@Sendable () -> Int)?>(nil)

    /// `/metrics` lines of the executor (none when meshd did not say how many jobs ran).
    public func executorMetricsText() -> String {
        guard let jobs = executorJobs.withLock({ $0 }) else { return "" }
        return "# HELP meshd_executor_jobs_total Swift jobs run on the event loops for the global executor.\n"
            + "# TYPE meshd_executor_jobs_total counter\nmeshd_executor_jobs_total \(jobs())\n"
    }

    /// A request started.
    public func begin() {
        let n = inFlightCount.withLock { $0 += 1; return $0 }
        inFlight.record(n)
    }

    /// A request finished: counts it by API, model and status, and records its latency.
    public func end(api: String, route: String, model: String, status: Int, duration: Duration) {
        endedCount.withLock { $0 += 1 }
        let n = inFlightCount.withLock { $0 -= 1; return $0 }
        inFlight.record(n)
        let (counter, timer) = handles(api: api, route: route, model: model, status: status)
        counter.increment()
        timer.recordNanoseconds(duration.nanoseconds)
    }

    private struct HandleKey: Hashable {
        let api: String, route: String, model: String, status: Int
    }
    private let cache = Mutex<[HandleKey: (CoreMetrics.Counter, Metrics.Timer)]>([:])

    /// The request counter and latency timer for these labels, made once (a registry lookup per
    /// request showed up in profiles). Unknown models share one label, and the cache is capped.
    private func handles(api: String, route: String, model: String, status: Int) -> (CoreMetrics.Counter, Metrics.Timer) {
        let key = HandleKey(api: api, route: route, model: model, status: status)
        if let h = cache.withLock({ $0[key] }) { return h }
        let dims = [("api", api), ("route", route), ("model", model), ("status", String(status))]
        let h = (CoreMetrics.Counter(label: "meshd_requests_total", dimensions: dims, factory: factory),
                 Metrics.Timer(label: "meshd_request_duration_seconds", dimensions: [("api", api), ("model", model)], factory: factory))
        cache.withLock { c in if c.count < 4096 { c[key] = h } }
        return h
    }

    /// Time from request arrival to the first generated token.
    public func timeToFirstToken(api: String, model: String, _ d: Duration) {
        let timer = Self.cached(ttftCache, HandleKey(api: api, route: "", model: model, status: 0)) {
            Metrics.Timer(label: "meshd_time_to_first_token_seconds", dimensions: [("api", api), ("model", model)], factory: factory)
        }
        timer.recordNanoseconds(d.nanoseconds)
    }

    /// Tokens in (prompt) and out (generated).
    public func tokens(model: String, prompt: Int, completion: Int) {
        for (label, n) in [("meshd_tokens_in_total", prompt), ("meshd_tokens_out_total", completion)] where n > 0 {
            Self.cached(tokenCache, HandleKey(api: "", route: label, model: model, status: 0)) {
                CoreMetrics.Counter(label: label, dimensions: [("model", model)], factory: factory)
            }.increment(by: n)
        }
    }

    private let tokenCache = Mutex<[HandleKey: CoreMetrics.Counter]>([:])
    private let ttftCache = Mutex<[HandleKey: Metrics.Timer]>([:])

    /// The instrument for `key`, made once (capped, like ``handles(api:route:model:status:)``).
    private static func cached<V: Sendable>(_ cache: borrowing Mutex<[HandleKey: V]>, _ key: HandleKey, make: () -> V) -> V {
        if let v = cache.withLock({ $0[key] }) { return v }
        let v = make()
        cache.withLock { c in if c.count < 4096 { c[key] = v } }
        return v
    }

    /// Prometheus text exposition.
    public func render() -> [UInt8] {
        registry.emitToBuffer() + Array("""
        # HELP meshd_failovers_total Requests that went on to another engine, node or provider after one failed before answering.
        # TYPE meshd_failovers_total counter
        meshd_failovers_total \(failoverCount.withLock { $0 })

        """.utf8)
    }

    private let failoverCount = Mutex(0)
    private let endedCount = Mutex(0)

    /// Requests ended since start, and of all requests the failovers (for the alerts).
    public var requestsEnded: Int { endedCount.withLock { $0 } }
    public var failovers: Int { failoverCount.withLock { $0 } }

    /// A request's engine, node or provider failed before it answered, and it goes on to the next.
    public func failover() { failoverCount.withLock { $0 += 1 } }
}
