import ArgumentParser
import Foundation

/// `meshctl splits`: the split leases this node holds as a worker (model, head, bytes, build, state, age).
struct SplitsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "splits", abstract: "List the model splits this node takes part in (its leases as a worker).")
    @OptionGroup var global: GlobalOptions

    func run() async throws {
        let (_, data) = try global.get("/v1/splits")
        if global.json { global.printJSON(data); return }
        guard let s = try global.decode(data) as? [String: Any] else { throw ExitCode(1) }
        let leases = (s["leases"] as? [[String: Any]]) ?? []
        if leases.isEmpty {
            print("no splits: this node holds no lease (a model is split only when no node can hold it)")
            return
        }
        let rows = leases.map { l -> [String] in
            [l["split"] as? String ?? "?", l["model"] as? String ?? "?", l["role"] as? String ?? "?", l["head"] as? String ?? "?",
             "\((l["bytes"] as? Int ?? 0) >> 20) MiB", l["build"] as? String ?? "?", l["state"] as? String ?? "?",
             "\(l["age_seconds"] ?? 0) s", "\(l["seconds_left"] ?? 0) s", (l["port"] as? Int).map { "127.0.0.1:\($0)" } ?? "-"]
        }
        print(table(["SPLIT", "MODEL", "ROLE", "HEAD", "BYTES", "BUILD", "STATE", "AGE", "LEASE LEFT", "RPC SERVER"], rows))
    }
}
