import Logging
import MeshCore
import MeshEngines
import MeshHTTPClient
import Synchronization

/// POSTs `body` to an alert webhook in the background; a failure is logged, never retried.
func postWebhook(_ http: CurlHTTPClient, url: String, body: JSON, logger: Logger, what: String) {
    Task {
        do {
            _ = try await http.execute(HTTPClientRequest(method: "POST", url: url, headers: [("Content-Type", "application/json")],
                                                         body: body.serialized()))
        } catch {
            logger.warning("\(what) webhook failed", metadata: ["error": "\(error)"])
        }
    }
}

/// The node's alerts (``AlertEvaluator`` decides): every `alerts.interval_seconds` it reads the
/// figures (providers' health, cloud spend, failovers, lost nodes, failed splits), logs what opened
/// or resolved, counts it for `/metrics`, POSTs it to the webhook, and keeps the open ones for
/// `meshctl status`. Budget alerts come from the ledger (``fire(_:)``).
final class AlertCenter: Sendable {
    let nodeName: String
    let logger: Logger
    let clock: any WallClock
    let http: CurlHTTPClient
    let webhook: String?
    let interval: Duration
    private let readings: @Sendable (UInt64) -> AlertReadings
    private let sleep: Sleeper
    private let state: Mutex<State>

    struct State {
        var evaluator: AlertEvaluator
        var fired: [AlertKind: Int] = [:]
        var task: Task<Void, Never>?
    }

    init(nodeName: String, settings: AlertSettings, budgetWebhook: String?, clock: any WallClock, http: CurlHTTPClient, logger: Logger,
         sleep: @escaping Sleeper = taskSleep,
         readings: @escaping @Sendable (UInt64) -> AlertReadings) {
        self.sleep = sleep
        self.nodeName = nodeName
        self.logger = logger
        self.clock = clock
        self.http = http
        webhook = settings.webhook ?? budgetWebhook
        interval = .milliseconds(Int64(max(0.1, settings.intervalSeconds) * 1000))
        var thresholds = AlertThresholds()
        thresholds.providerDegradedSeconds = settings.providerDegradedSeconds
        self.readings = readings
        state = Mutex(State(evaluator: AlertEvaluator(thresholds: thresholds)))
    }

    func start() {
        let task = Task { [self] in
            while !Task.isCancelled {
                await sleep(interval)
                if Task.isCancelled { return }
                look()
            }
        }
        state.withLock { $0.task = task }
    }

    func stop() async {
        let task = state.withLock { s in defer { s.task = nil }; return s.task }
        task?.cancel()
        await task?.value
    }

    /// One look at the figures now.
    func look() {
        let now = clock.nowNanos()
        let r = readings(now)
        let (opened, resolved) = state.withLock { s in
            let out = s.evaluator.evaluate(r)
            for a in out.opened { s.fired[a.kind, default: 0] += 1 }
            return out
        }
        for a in opened { report(a, firing: true) }
        for a in resolved { report(a, firing: false) }
    }

    /// An alert raised elsewhere (a budget cap crossed): counted and shown; the ledger's path
    /// already logged it and sent its own webhook.
    func fire(_ a: Alert) {
        state.withLock { s in
            s.evaluator.fire(a)
            s.fired[a.kind, default: 0] += 1
        }
    }

    private func report(_ a: Alert, firing: Bool) {
        let meta: Logger.Metadata = ["alert": "\(a.kind.rawValue)", "subject": "\(a.subject)"]
        if firing { logger.warning("alert: \(a.message)", metadata: meta) } else { logger.notice("alert resolved: \(a.message)", metadata: meta) }
        guard let url = webhook else { return }
        let body: JSON = ["event": "alert", "alert": .string(a.kind.rawValue), "state": .string(firing ? "firing" : "resolved"),
                          "subject": .string(a.subject), "message": .string(a.message), "node": .string(nodeName),
                          "since": .string(ISO8601.format(nanos: a.sinceNanos))]
        postWebhook(http, url: url, body: body, logger: logger, what: "alert")
    }

    /// The open alerts, oldest first.
    var open: [Alert] {
        state.withLock { $0.evaluator.open.values.sorted { ($0.sinceNanos, $0.kind.rawValue, $0.subject) < ($1.sinceNanos, $1.kind.rawValue, $1.subject) } }
    }

    /// For `/v1/status` (`meshctl status`).
    func json() -> JSON {
        .array(open.map { a in
            ["alert": .string(a.kind.rawValue), "subject": .string(a.subject), "message": .string(a.message),
             "since": .string(ISO8601.format(nanos: a.sinceNanos))]
        })
    }

    /// `meshd_alerts_total{alert}` (opened since start) and `meshd_alerts_open{alert}`, every kind.
    func metricsText() -> String {
        let (fired, open) = state.withLock { s in (s.fired, s.evaluator.open.values.map(\.kind)) }
        var out = "# HELP meshd_alerts_total Alerts raised since meshd started, by kind.\n# TYPE meshd_alerts_total counter\n"
        for k in AlertKind.allCases { out += "meshd_alerts_total{alert=\"\(k.rawValue)\"} \(fired[k] ?? 0)\n" }
        out += "# HELP meshd_alerts_open Alerts open now, by kind.\n# TYPE meshd_alerts_open gauge\n"
        for k in AlertKind.allCases { out += "meshd_alerts_open{alert=\"\(k.rawValue)\"} \(open.filter { $0 == k }.count)\n" }
        return out
    }
}
