import ArgumentParser
import Foundation

/// `meshctl models`: every model the node can serve, and where.
struct ModelsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "models", abstract: "List the models that can be served.")
    @OptionGroup var global: GlobalOptions

    func run() async throws {
        let (_, data) = try global.get("/v1/models")
        if global.json { global.printJSON(data); return }
        guard let list = try global.decode(data) as? [[String: Any]] else { throw ExitCode(1) }
        let rows = list.map { m -> [String] in
            [m["name"] as? String ?? "?", (m["loaded"] as? Bool) == true ? "loaded" : "available",
             ((m["nodes"] as? [String]) ?? [m["node"] as? String ?? "?"]).joined(separator: ","), ((m["engines"] as? [String]) ?? []).joined(separator: ",")]
        }
        print(table(["MODEL", "STATE", "NODES", "ENGINES"], rows))
    }
}
