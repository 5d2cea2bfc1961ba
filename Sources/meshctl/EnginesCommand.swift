import ArgumentParser
import Foundation

/// `meshctl engines`: the local node's engines, their health and load.
struct EnginesCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "engines", abstract: "List the local node's engines.")
    @OptionGroup var global: GlobalOptions

    func run() async throws {
        let (_, data) = try global.get("/v1/engines")
        if global.json { global.printJSON(data); return }
        guard let list = try global.decode(data) as? [[String: Any]] else { throw ExitCode(1) }
        let rows = list.map { e -> [String] in
            let models = ((e["models"] as? [[String: Any]]) ?? []).compactMap { $0["name"] as? String }
            let health = (e["healthy"] as? Bool) == true ? "healthy" : "down: \(e["detail"] as? String ?? "?")"
            return [e["id"] as? String ?? "?", e["kind"] as? String ?? "?", health, "\(e["open"] ?? 0)", "\(e["queued"] ?? 0)",
                    (e["limit"] as? Int).map(String.init) ?? "-", models.joined(separator: ",")]
        }
        print(table(["ENGINE", "KIND", "HEALTH", "OPEN", "WAITING", "LIMIT", "MODELS"], rows))
    }
}
