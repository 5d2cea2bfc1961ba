import ArgumentParser
import Foundation

/// `meshctl route MODEL`: where a request for MODEL would go and why, without sending one.
struct RouteCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "route", abstract: "Explain where a request for MODEL would run.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Model name.") var model: String

    func run() async throws {
        let escaped = model.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-._~:"))) ?? model
        let (status, data) = try global.get("/v1/route?model=\(escaped)")
        if global.json {
            global.printJSON(data)
        } else if let r = try global.decode(data) as? [String: Any] {
            if let err = r["error"] as? String {
                print("\(model): cannot be served: \(err)")
            } else if (r["cloud"] as? Bool) == true {
                let providers = (r["providers"] as? [String] ?? []).joined(separator: ", then ")
                print("\(model) → cloud through node \(r["node"] ?? "?"): \(providers)\n  why: \(r["reason"] ?? "?")")
            } else {
                print("\(model) → node \(r["node"] ?? "?"), engine \(r["engine"] ?? "?")\n  why: \(r["reason"] ?? "?")")
                if let split = r["split"] as? String { print("  split: \(split)") }
            }
        }
        if status != 200 { throw ExitCode(1) }
    }
}
