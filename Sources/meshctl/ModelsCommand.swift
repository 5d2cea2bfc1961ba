import ArgumentParser
import Foundation

/// `meshctl models`: every model of the mesh, and where it is: loaded on which nodes, on disk
/// (loaded by its first request) on which, its size.
struct ModelsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "models",
        abstract: "List the mesh's models and where they are: loaded, loading, or on disk (loaded by the first request).")
    @OptionGroup var global: GlobalOptions

    func run() async throws {
        let (_, data) = try global.get("/v1/models")
        if global.json { global.printJSON(data); return }
        guard let list = try global.decode(data) as? [[String: Any]] else { throw ExitCode(1) }
        print(table(["MODEL", "SIZE", "LOADED ON", "LOADING ON", "ON DISK ON (NOT LOADED)"], Self.rows(list)))
    }

    /// One row per model: its size, and the nodes (engine in brackets where a node has several) by state.
    static func rows(_ list: [[String: Any]]) -> [[String]] {
        list.map { m in
            let places = m["where"] as? [[String: Any]] ?? []
            var perNode: [String: Int] = [:]
            for p in places { perNode[p["node"] as? String ?? "?", default: 0] += 1 }
            func nodes(_ state: String) -> String {
                let names = places.filter { ($0["state"] as? String) == state }.map { p -> String in
                    let node = p["node"] as? String ?? "?"
                    let split = (p["split"] as? Bool) == true ? " (split)" : ""
                    return (perNode[node] ?? 0) > 1 ? "\(node)[\(p["engine"] as? String ?? "?")]\(split)" : node + split
                }
                return names.isEmpty ? "-" : names.joined(separator: ",")
            }
            return [m["name"] as? String ?? "?", size(m["size_bytes"] as? Int), nodes("loaded"), nodes("loading"), nodes("available")]
        }
    }

    static func size(_ bytes: Int?) -> String {
        guard let b = bytes, b > 0 else { return "-" }
        if b >= 1 << 30 { return String(format: "%.1f GiB", Double(b) / Double(1 << 30)) }
        return "\(max(1, b >> 20)) MiB"
    }
}
