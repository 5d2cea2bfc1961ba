import ArgumentParser
import Foundation

/// `meshctl budget`: the gateway's cloud budget: every cap with its limit, spent, reserved,
/// remaining and reset time (ask the gateway node's socket).
struct BudgetCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "budget", abstract: "Show the cloud budget kept by this gateway node.")
    @OptionGroup var global: GlobalOptions

    func run() async throws {
        let (status, data) = try global.get("/v1/budget")
        if global.json { global.printJSON(data) }
        guard let b = try global.decode(data) as? [String: Any] else { throw ExitCode(1) }
        guard status == 200 else {
            if !global.json { FileHandle.standardError.write(Data("meshctl: \(b["error"] as? String ?? "no budget here")\n".utf8)) }
            throw ExitCode(1)
        }
        if global.json { return }
        func usd(_ v: Any?) -> String { (v as? Double).map { String(format: "$%.2f", $0) } ?? "-" }
        func row(_ name: String, _ period: String, _ c: [String: Any]?) -> [String]? {
            guard let c else { return nil }
            return [name, period, c["limit_usd"] is Double ? usd(c["limit_usd"]) : "no cap", usd(c["spent_usd"]), usd(c["reserved_usd"]),
                    usd(c["remaining_usd"]), c["resets_at"] as? String ?? "-"]
        }
        var rows: [[String]] = []
        for p in ["daily", "monthly"] { if let r = row("global", p, b[p] as? [String: Any]) { rows.append(r) } }
        for (kind, label) in [("providers", "provider "), ("keys", "key ")] {
            let scoped = b[kind] as? [String: [String: Any]] ?? [:]
            for name in scoped.keys.sorted() {
                for p in ["daily", "monthly"] {
                    if let r = row(label + name, p, scoped[name]?[p] as? [String: Any]) { rows.append(r) }
                }
            }
        }
        print(table(["CAP", "PERIOD", "LIMIT", "SPENT", "RESERVED", "REMAINING", "RESETS AT"], rows))
        let health = (b["provider_health"] as? [[String: Any]] ?? []).map { h -> [String] in
            let until = (h["cooldown_until"] as? Double).map { Date(timeIntervalSince1970: $0).ISO8601Format() } ?? "-"
            return [h["name"] as? String ?? "?", h["state"] as? String ?? "?", (h["available"] as? Bool) == true ? "yes" : "no",
                    "\(h["consecutive_failures"] ?? 0)", until, h["last_error"] as? String ?? "-"]
        }
        if !health.isEmpty {
            print("")
            print(table(["PROVIDER", "CIRCUIT", "AVAILABLE", "FAILURES", "COOLDOWN UNTIL", "LAST ERROR"], health))
        }
        print("\ntime zone \(b["time_zone"] as? String ?? "?"), alerts at \(Int(((b["alert_at"] as? Double) ?? 0) * 100))%, "
              + "\(b["in_flight"] as? Int ?? 0) cloud request(s) in flight")
    }
}
