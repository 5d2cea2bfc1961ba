import Foundation
import Logging
import MeshCloud
import MeshConfigLoader
import MeshCore
import MeshHTTPClient
import MeshLedger
import Synchronization

/// The gateway role of a node that lists cloud providers: its price table, its durable budget
/// ledger (`state_dir/ledger.sqlite`), and what it advertises to the mesh. (Sending requests to the
/// providers is being wired up; see issue 5.)
final class Gateway: Sendable {
    /// What the configuration decides (providers with their keys, prices, caps): replaced whole
    /// by ``reload(_:environment:)`` (SIGHUP); requests in flight keep what they read.
    struct Rules: Sendable {
        var cloud: CloudConfig
        var budget: BudgetConfig
        var prices: PriceTable
        /// Provider endpoints with their keys, by name.
        var settings: [String: ProviderSettings]
        /// What ``advert()`` lists per provider.
        var providerModels: [String: [String]]
    }

    private let rules: Mutex<Rules>
    var cloud: CloudConfig { rules.withLock { $0.cloud } }
    var budget: BudgetConfig { rules.withLock { $0.budget } }
    var prices: PriceTable { rules.withLock { $0.prices } }
    var settings: [String: ProviderSettings] { rules.withLock { $0.settings } }
    var providerModels: [String: [String]] { rules.withLock { $0.providerModels } }
    let ledger: BudgetLedger
    let calendar: BudgetCalendar
    let clock: any WallClock
    let client: CloudClient
    let logger: Logger
    /// Budget alerts fired since start (also a metric).
    let alertCount = Mutex(0)
    /// Cloud spend settled since start, by provider (micro-USD): `meshd_cloud_spend_usd_total`,
    /// which alert rules compare hour by hour (a cost spike).
    let spentByProvider = Mutex<[String: Int64]>([:])
    /// Told of every budget alert (the node's alert center shows and counts it).
    let onAlert = Mutex<(@Sendable (Alert) -> Void)?>(nil)
    /// How far each provider's model bills more prompt tokens than estimated (learned).
    let overshoot = OvershootBook()

    init(config: MeshdConfig, http: CurlHTTPClient, clock: any WallClock, logger: Logger,
         environment: [String: String] = ProcessInfo.processInfo.environment) throws {
        self.clock = clock
        self.logger = logger
        let r = try Self.rules(config, environment: environment)
        rules = Mutex(r)
        client = CloudClient(http: http, clock: clock, logger: logger)
        calendar = Self.calendar(config.budget.timeZone)
        let path = (config.stateDir as NSString).appendingPathComponent("ledger.sqlite")
        ledger = try BudgetLedger(path: path, caps: config.budget.caps, calendar: calendar, clock: clock, node: config.nodeName)
        // What the ledger's settled requests teach about over-billing survives a restart.
        if let rows = try? ledger.entries() { overshoot.learn(from: rows) }
        for o in ledger.reconciledAtStart {
            logger.warning("budget: a cloud request was in flight when meshd stopped; counted as spent at its reservation", metadata: [
                "request": "\(o.request.id)", "provider": "\(o.request.provider)", "usd": "\(o.request.amount.usd)"])
        }
        logger.info("gateway: cloud providers configured", metadata: [
            "providers": "\(config.cloud.providers.map(\.name))", "priced_models": "\(r.prices.models.count)", "ledger": "\(path)",
            "daily_usd": "\(config.budget.dailyUSD.map { "\($0)" } ?? "no cap")", "monthly_usd": "\(config.budget.monthlyUSD.map { "\($0)" } ?? "no cap")"])
    }

    /// The rules `config` sets: every provider's secret read (a failure names the key it came
    /// from) and the prices file loaded; throws ``ConfigLoadError`` as `--check-config` would show.
    static func rules(_ config: MeshdConfig, environment: [String: String]) throws -> Rules {
        var settings: [String: ProviderSettings] = [:]
        var issues: [ConfigIssue] = []
        for (i, p) in config.cloud.providers.enumerated() {
            // The secret at `file` or in `env` (nil when neither is set and it is optional); a failure
            // is an issue naming the key it came from.
            func load(_ file: (String, String?), _ env: (String, String?), required: Bool) -> ProviderSecret? {
                do throws(ProviderSecretError) {
                    if let f = file.1 { return try ProviderSecret.fromFile(f) }
                    if env.1 != nil || required { return try ProviderSecret.fromEnvironment(env.1 ?? "", environment: environment) }
                } catch {
                    issues.append(ConfigIssue(source: "cloud.providers", key: "cloud.providers[\(i)].\(file.1 != nil ? file.0 : env.0)",
                                              reason: "provider '\(p.name)': \(error)"))
                }
                return nil
            }
            let secret = load(("key_file", p.keyFile), ("key_env", p.keyEnv), required: true)
            let token = load(("session_token_file", p.sessionTokenFile), ("session_token_env", p.sessionTokenEnv), required: false)
            guard let secret, token != nil || (p.sessionTokenFile == nil && p.sessionTokenEnv == nil) else { continue }
            let aws = p.kind == .bedrock ? AWSAccount(region: p.region ?? "", accessKeyID: p.accessKeyID ?? "", sessionToken: token) : nil
            settings[p.name] = ProviderSettings(name: p.name, kind: p.kind, baseURL: p.baseURL, secret: secret, aws: aws, caFile: p.caFile,
                                                apiVersion: p.apiVersion)
        }
        if !issues.isEmpty { throw ConfigLoadError(issues: issues) }
        let prices = try PricesLoader.load(path: config.cloud.pricesFile, overrides: config.cloud.prices)
        return Rules(cloud: config.cloud, budget: config.budget, prices: prices, settings: settings,
                     providerModels: servedModels(config.cloud, prices))
    }

    /// Takes `config`'s providers, prices and caps (SIGHUP). Nothing changes when a secret or the
    /// prices file cannot be read (the error says which). Requests in flight finish as they began;
    /// money already reserved or spent stays counted under the new caps.
    func reload(_ config: MeshdConfig, environment: [String: String] = ProcessInfo.processInfo.environment) throws {
        let r = try Self.rules(config, environment: environment)
        ledger.setCaps(config.budget.caps)
        rules.withLock { $0 = r }
        logger.info("gateway: configuration reloaded", metadata: [
            "providers": "\(config.cloud.providers.map(\.name))", "priced_models": "\(r.prices.models.count)",
            "daily_usd": "\(config.budget.dailyUSD.map { "\($0)" } ?? "no cap")", "monthly_usd": "\(config.budget.monthlyUSD.map { "\($0)" } ?? "no cap")"])
    }

    /// Priced, not local-only models each provider may be asked for, by provider name.
    static func servedModels(_ cloud: CloudConfig, _ prices: PriceTable) -> [String: [String]] {
        let policy = EscalationPolicy(cloud: cloud, prices: prices, hasGateway: true)
        var out: [String: [String]] = [:]
        for p in cloud.providers {
            let own = p.name + "/"
            out[p.name] = Set(prices.models.keys.compactMap { k in k.hasPrefix(own) ? String(k.dropFirst(own.count)) : k.contains("/") ? nil : k })
                .filter { EscalationPolicy.serves(p, $0, prices: prices) && !policy.isLocalOnly(model: $0, apiKeyName: nil) }
                .sorted()
        }
        return out
    }

    /// Day and month boundaries in an IANA zone (validated by the config loader).
    static func calendar(_ zone: String) -> BudgetCalendar {
        let tz = TimeZone(identifier: zone) ?? TimeZone(identifier: "UTC")!
        return BudgetCalendar(zoneName: zone) { tz.secondsFromGMT(for: Date(timeIntervalSince1970: TimeInterval($0))) }
    }

    /// What the mesh sees of this gateway.
    /// Sent with every state (heartbeats and load changes): the models each provider may be asked
    /// for are computed when the rules are (``providerModels``).
    func advert() -> GatewayAdvert {
        let now = clock.nowNanos()
        let providers = cloud.providers.map { p in
            GatewayAdvert.Provider(name: p.name, kind: p.kind, healthy: client.health.isAvailable(p.name, nowNanos: now),
                                   models: providerModels[p.name] ?? [])
        }
        let left = ledger.usage().filter { $0.scope == .global }.allSatisfy { ($0.remaining ?? 1) > 0 }
        return GatewayAdvert(providers: providers, budgetLeft: left)
    }

    /// `GET /v1/budget` (what `meshctl budget` shows): every cap with limit, spent, reserved,
    /// remaining and reset time.
    func budgetJSON() -> JSON {
        let usage = ledger.usage()
        func cap(_ u: CapUsage?) -> JSON {
            guard let u else { return .null }
            return ["limit_usd": u.limit.map { .number($0.usd) } ?? .null, "spent_usd": .number(u.spent.usd),
                    "reserved_usd": .number(u.reserved.usd), "remaining_usd": u.remaining.map { .number($0.usd) } ?? .null,
                    "resets_at": .string(ISO8601.format(nanos: UInt64(u.resetsAt) * 1_000_000_000))]
        }
        func scoped(_ match: (BudgetScope) -> String?) -> JSON {
            var names: [String] = []
            for u in usage { if let n = match(u.scope), !names.contains(n) { names.append(n) } }
            return .object(names.sorted().map { n in
                (n, ["daily": cap(usage.first { match($0.scope) == n && $0.period == .daily }),
                     "monthly": cap(usage.first { match($0.scope) == n && $0.period == .monthly })] as JSON)
            })
        }
        let global = { (p: BudgetPeriod) in usage.first { $0.scope == .global && $0.period == p } }
        return ["gateway": true, "time_zone": .string(calendar.zoneName), "alert_at": .number(budget.alertAt),
                "daily": cap(global(.daily)), "monthly": cap(global(.monthly)),
                "providers": scoped { if case .provider(let p) = $0 { return p } else { return nil } },
                "keys": scoped { if case .key(let k) = $0 { return k } else { return nil } },
                "in_flight": .integer(ledger.openReservations),
                "prompt_overshoot": overshoot.json(),
                "provider_health": .array(client.health.snapshots(cloud.providers.map(\.name), nowNanos: clock.nowNanos()).map(\.json))]
    }
}

extension Gateway {
    /// Prometheus lines for `/metrics`: every cap's spent, reserved and limit, alerts fired, and
    /// whether each provider is available.
    func metricsText() -> String {
        func label(_ s: BudgetScope) -> String {
            switch s {
            case .global: return "scope=\"global\""
            case .provider(let p): return "scope=\"provider\",name=\"\(p)\""
            case .key(let k): return "scope=\"key\",name=\"\(k)\""
            }
        }
        var out = """
        # HELP meshd_budget_spent_usd Cloud spend in the current period, USD.
        # TYPE meshd_budget_spent_usd gauge
        # HELP meshd_budget_reserved_usd Worst-case cost of cloud requests in flight, USD.
        # TYPE meshd_budget_reserved_usd gauge
        # HELP meshd_budget_limit_usd Cap of the period, USD.
        # TYPE meshd_budget_limit_usd gauge

        """
        for u in ledger.usage() {
            let l = "\(label(u.scope)),period=\"\(u.period.rawValue)\""
            out += "meshd_budget_spent_usd{\(l)} \(u.spent.usd)\nmeshd_budget_reserved_usd{\(l)} \(u.reserved.usd)\n"
            if let limit = u.limit { out += "meshd_budget_limit_usd{\(l)} \(limit.usd)\n" }
        }
        out += """
        # HELP meshd_budget_alerts_total Budget alerts fired (a cap crossed budget.alert_at).
        # TYPE meshd_budget_alerts_total counter
        meshd_budget_alerts_total \(alertCount.withLock { $0 })
        # HELP meshd_cloud_provider_available Whether a cloud provider takes requests (not cooling down).
        # TYPE meshd_cloud_provider_available gauge

        """
        let now = clock.nowNanos()
        for p in cloud.providers {
            out += "meshd_cloud_provider_available{provider=\"\(p.name)\"} \(client.health.isAvailable(p.name, nowNanos: now) ? 1 : 0)\n"
        }
        out += "# HELP meshd_cloud_spend_usd_total Cloud spend settled since meshd started, USD.\n"
            + "# TYPE meshd_cloud_spend_usd_total counter\n"
        let spent = spentByProvider.withLock { $0 }
        for p in cloud.providers {
            out += "meshd_cloud_spend_usd_total{provider=\"\(p.name)\"} \(Double(spent[p.name] ?? 0) / 1_000_000)\n"
        }
        return out
    }
}
