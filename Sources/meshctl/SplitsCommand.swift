import ArgumentParser
import Foundation

/// `meshctl splits`: the model splits this node takes part in: those it heads (model, workers,
/// bytes per node, build, state, age, tokens/s) and its leases as a worker.
struct SplitsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "splits", abstract: "List the model splits this node heads or lends memory to.")
    @OptionGroup var global: GlobalOptions

    func run() async throws {
        let (_, data) = try global.get("/v1/splits")
        if global.json { global.printJSON(data); return }
        guard let s = try global.decode(data) as? [String: Any] else { throw ExitCode(1) }
        let heads = (s["heads"] as? [[String: Any]]) ?? []
        let leases = (s["leases"] as? [[String: Any]]) ?? []
        let stats = s["head_stats"] as? [String: Any]
        if heads.isEmpty && leases.isEmpty {
            print("no splits: this node heads none and holds no lease (a model is split only when no node can hold it)")
        }
        if !heads.isEmpty {
            let rows = heads.map { h -> [String] in
                let parts = ((h["parts"] as? [[String: Any]]) ?? []).map { p in
                    "\(p["node"] as? String ?? "?")\((p["head"] as? Bool) == true ? "*" : "") \((p["bytes"] as? Int ?? 0) >> 20) MiB"
                }
                return [h["split"] as? String ?? "?", h["model"] as? String ?? "?", "head", parts.joined(separator: ", "),
                        h["build"] as? String ?? "?", h["transport"] as? String ?? "?", h["state"] as? String ?? "?",
                        "\(h["age_seconds"] ?? 0) s", (h["tokens_per_second"]).map { "\($0)" } ?? "-"]
            }
            print(table(["SPLIT", "MODEL", "ROLE", "NODES (* head)", "BUILD", "TRANSPORT", "STATE", "AGE", "TOKENS/S"], rows))
        }
        if !leases.isEmpty {
            if !heads.isEmpty { print("") }
            let rows = leases.map { l -> [String] in
                [l["split"] as? String ?? "?", l["model"] as? String ?? "?", l["role"] as? String ?? "?", l["head"] as? String ?? "?",
                 "\((l["bytes"] as? Int ?? 0) >> 20) MiB", l["build"] as? String ?? "?", l["state"] as? String ?? "?",
                 "\(l["age_seconds"] ?? 0) s", "\(l["seconds_left"] ?? 0) s", (l["port"] as? Int).map { (l["transport"] as? String) == "direct" ? "mesh address:\($0)" : "127.0.0.1:\($0)" } ?? "-"]
            }
            print(table(["SPLIT", "MODEL", "ROLE", "HEAD", "BYTES", "BUILD", "STATE", "AGE", "LEASE LEFT", "RPC SERVER"], rows))
        }
        if let stats {
            let off = (stats["backing_off"] as? [String: Any]) ?? [:]
            var line = "splits headed: \(stats["started"] ?? 0) served, \(stats["failed"] ?? 0) failed"
            if !off.isEmpty { line += "; backing off: " + off.keys.sorted().map { "\($0) (\(off[$0] ?? 0) s)" }.joined(separator: ", ") }
            if let last = stats["last_failure"] as? String { line += "\nlast failure: \(last)" }
            if let hops = stats["hop_ms"] as? [String: Any], !hops.isEmpty {
                line += "\nmeasured hops: " + hops.keys.sorted().map { "\($0) \(hops[$0] ?? 0) ms" }.joined(separator: ", ")
            }
            print(line)
        }
    }
}
