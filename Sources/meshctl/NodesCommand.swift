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
            return [name, n["state"] as? String ?? "?", n["address"] as? String ?? "?", n["gpu"] as? String ?? "-",
                    Self.memory(n, "vram"), Self.memory(n, "ram"), "\(n["in_flight"] ?? 0)", Self.llama(n),
                    ((n["models"] as? [String]) ?? []).joined(separator: ",")]
        }
        print(table(["NODE", "STATE", "ADDRESS", "GPU", "VRAM FREE/TOTAL", "RAM FREE/TOTAL", "IN-FLIGHT", "LLAMA.CPP", "MODELS"], rows))
    }

    /// The llama.cpp build, `+rpc` when the node can lend memory to a split, `-` without llama.cpp.
    static func llama(_ node: [String: Any]) -> String {
        guard let build = node["llama_build"] as? String else { return "-" }
        return build + ((node["rpc_server"] as? Bool) == true ? " +rpc" : "")
    }

    /// `free/total MiB` from `<prefix>_free_bytes` and `<prefix>_total_bytes`, `-` when unknown or 0.
    static func memory(_ node: [String: Any], _ prefix: String) -> String {
        let total = node["\(prefix)_total_bytes"] as? Int ?? 0
        guard total > 0 else { return "-" }
        let free = node["\(prefix)_free_bytes"] as? Int ?? 0
        return "\(free >> 20)/\(total >> 20) MiB"
    }
}
