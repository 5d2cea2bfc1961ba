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
                    Self.memory(n, "vram"), Self.memory(n, "ram"), "\(n["in_flight"] ?? 0)", Self.llama(n), Self.splitMemory(n),
                    ((n["models"] as? [String]) ?? []).joined(separator: ",")]
        }
        print(table(["NODE", "STATE", "ADDRESS", "GPU", "VRAM FREE/TOTAL", "RAM FREE/TOTAL", "IN-FLIGHT", "LLAMA.CPP", "SPLIT OFFER/LEASED", "MODELS"], rows))
    }

    /// The llama.cpp build, `+rpc` when the node can lend memory to a split, `-` without llama.cpp.
    static func llama(_ node: [String: Any]) -> String {
        guard let build = node["llama_build"] as? String else { return "-" }
        return build + ((node["rpc_server"] as? Bool) == true ? " +rpc" : "")
    }

    /// Memory offered to splits and leased to one now (`-` without llama.cpp), with the split it
    /// lends to, or the splits it heads.
    static func splitMemory(_ node: [String: Any]) -> String {
        guard let offer = node["offer_bytes"] as? Int else { return "-" }
        var s = "\(offer >> 20)/\((node["leased_bytes"] as? Int ?? 0) >> 20) MiB"
        if let to = node["leased_to"] as? String { s += " (\(to))" }
        if let heads = node["heads"] as? [String], !heads.isEmpty { s += " heads \(heads.joined(separator: ","))" }
        return s
    }

    /// `free/total MiB` from `<prefix>_free_bytes` and `<prefix>_total_bytes`, `-` when unknown or 0.
    static func memory(_ node: [String: Any], _ prefix: String) -> String {
        let total = node["\(prefix)_total_bytes"] as? Int ?? 0
        guard total > 0 else { return "-" }
        let free = node["\(prefix)_free_bytes"] as? Int ?? 0
        return "\(free >> 20)/\(total >> 20) MiB"
    }
}
