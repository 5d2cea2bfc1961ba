import ArgumentParser
import Foundation

/// `meshctl nodes`: every node of the mesh as this node sees it.
struct NodesCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "nodes", abstract: "List the nodes of the mesh.")
    @OptionGroup var global: GlobalOptions

    func run() async throws {
        let (_, data) = try global.get("/v1/nodes")
        if global.json { global.printJSON(data); return }
        guard let list = try global.decode(data) as? [[String: Any]] else { throw ExitCode(1) }
        let rows = list.map { n -> [String] in
            let name = (n["name"] as? String ?? "?") + ((n["local"] as? Bool) == true ? " (this)" : "")
            let vram = (n["vram_total_bytes"] as? Int ?? 0) > 0
                ? "\((n["vram_free_bytes"] as? Int ?? 0) >> 20)/\((n["vram_total_bytes"] as? Int ?? 0) >> 20) MiB" : "-"
            return [name, n["state"] as? String ?? "?", n["address"] as? String ?? "?", vram, "\(n["in_flight"] ?? 0)",
                    ((n["models"] as? [String]) ?? []).joined(separator: ",")]
        }
        print(table(["NODE", "STATE", "ADDRESS", "VRAM FREE/TOTAL", "IN-FLIGHT", "MODELS"], rows))
    }
}
