import ArgumentParser
import Foundation

/// `meshctl drain [NODE]`: stop sending new work to NODE (default: the local node); in-flight
/// requests finish.
struct DrainCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "drain", abstract: "Stop new work to a node; in-flight requests finish.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Node name (default: the local node).") var node: String?

    func run() async throws { try setDrain(global, node, drain: true) }
}

/// `meshctl undrain [NODE]`: take new work again.
struct UndrainCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "undrain", abstract: "Let a drained node take new work again.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Node name (default: the local node).") var node: String?

    func run() async throws { try setDrain(global, node, drain: false) }
}

func setDrain(_ global: GlobalOptions, _ node: String?, drain: Bool) throws {
    let q = node.map { "?node=" + ($0.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-._~"))) ?? $0) } ?? ""
    let (status, data) = try global.get((drain ? "/v1/drain" : "/v1/undrain") + q, method: "POST")
    if global.json {
        global.printJSON(data)
    } else if let r = try global.decode(data) as? [String: Any] {
        if let err = r["error"] as? String { print("meshctl: \(err)") } else {
            print("\(r["node"] ?? "?"): \(drain ? "draining (no new work; in-flight requests finish)" : "taking new work")")
        }
    }
    if status != 200 { throw ExitCode(1) }
}
