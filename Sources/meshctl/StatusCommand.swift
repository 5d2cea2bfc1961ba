import ArgumentParser
import Foundation

/// `meshctl status`: the node at a glance.
struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "status", abstract: "Show the local node's status.")
    @OptionGroup var global: GlobalOptions

    func run() async throws {
        let (_, data) = try global.get("/v1/status")
        if global.json { global.printJSON(data); return }
        guard let s = try global.decode(data) as? [String: Any] else { throw ExitCode(1) }
        let models = (s["models"] as? [String]) ?? []
        let hw = s["hardware"] as? [String: Any] ?? [:]
        print("""
        node:     \(s["node"] ?? "?") (meshd \(s["version"] ?? "?"))
        uptime:   \(Int((s["uptime_seconds"] as? Double) ?? 0)) s
        engines:  \(s["engines_healthy"] ?? 0) healthy of \(s["engines_total"] ?? 0)
        in flight: \(s["in_flight"] ?? 0) (\(s["queued"] ?? 0) waiting in meshd's queues)
        models:   \(models.isEmpty ? "(none)" : models.joined(separator: ", "))
        gpu:      \(hw["gpu"] ?? "?") (VRAM \(NodesCommand.memory(hw, "vram")), RAM \(NodesCommand.memory(hw, "ram")))
        """)
        for p in (hw["problems"] as? [String]) ?? [] { print("hardware: \(p)") }
        for e in (s["engines"] as? [[String: Any]]) ?? [] {
            print(Self.engineLine(e))
        }
        for l in (s["limits"] as? [[String: Any]]) ?? [] { print("limit:    \(Self.limitLine(l))") }
        for a in (s["alerts"] as? [[String: Any]]) ?? [] {
            print("ALERT:    \(a["alert"] as? String ?? "?") since \(a["since"] as? String ?? "?"): \(a["message"] as? String ?? "")")
        }
    }

    /// `key alice: 12/60 requests, 3400/10000 tokens over the last minute, 1/2 in flight (mesh-wide); refused 3`
    /// for one key of the status's or usage report's `limits`.
    static func limitLine(_ l: [String: Any]) -> String {
        func of(_ used: String, _ limit: String, _ what: String) -> String {
            "\(l[used] as? Int ?? 0)\((l[limit] as? Int).map { "/\($0)" } ?? "") \(what)"
        }
        let key = (l["key"] as? String).flatMap { $0.isEmpty ? nil : $0 } ?? "(anonymous)"
        var line = "key \(key): \(of("requests", "rpm", "requests")), \(of("tokens", "tpm", "tokens")) over the last minute, "
            + "\(of("in_flight", "concurrency", "in flight")) (mesh-wide)"
        if let models = l["models"] as? [String], !models.isEmpty { line += "; models \(models.joined(separator: ", "))" }
        let refused = (l["refused"] as? [String: Int] ?? [:]).filter { $0.value > 0 }.sorted { $0.key < $1.key }
        if !refused.isEmpty { line += "; refused here: " + refused.map { "\($0.value) (\($0.key))" }.joined(separator: ", ") }
        return line
    }

    /// `engine ID: open 3 of 4 (limit), 2 waiting` for one engine of the status.
    static func engineLine(_ e: [String: Any]) -> String {
        let limit = (e["limit"] as? Int).map { " of \($0)" } ?? " (no limit)"
        let health = (e["healthy"] as? Bool) == true ? "" : " [down]"
        return "engine:   \(e["id"] as? String ?? "?")\(health): \(e["open"] as? Int ?? 0) open\(limit), \(e["queued"] as? Int ?? 0) waiting"
    }
}
