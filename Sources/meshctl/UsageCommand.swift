import ArgumentParser
import Foundation
import MeshCore

/// `meshctl usage`: requests, tokens and cost per key, model, node, provider or user, over the
/// whole mesh (each node keeps its own records; the node asked gathers them).
struct UsageCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "usage", abstract: "Show the mesh's usage (requests, tokens, cost) per key, model, node, provider or user.")
    @OptionGroup var global: GlobalOptions

    @Option(name: .long, help: "Group by: key, model, node, provider, user or engine.")
    var by: String = "key"

    @Option(name: .long, help: "Window: a duration back from now (90s, 30m, 24h, 7d, 2w) or a UTC date (2026-12-01).")
    var since: String = "30d"

    @Flag(name: .long, help: "Print CSV (a header line, one line per group, then the total).")
    var csv = false

    @Flag(name: .long, help: "This node's records only (default: every node of the mesh).")
    var local = false

    func validate() throws {
        guard UsageDimension(rawValue: by) != nil else {
            throw ValidationError("--by must be one of \(UsageDimension.allCases.map(\.rawValue).joined(separator: ", ")) (got '\(by)')")
        }
        if case .failure(let e) = UsageReport.since(since, nowMs: 0) { throw ValidationError("--\(e.description)") }
        if csv && global.json { throw ValidationError("--csv and --json exclude each other") }
    }

    func run() async throws {
        let query = "by=\(by)&since=\(since.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? since)&scope=\(local ? "node" : "mesh")"
        let (status, data) = try global.get("/v1/usage?\(query)")
        if global.json { global.printJSON(data) }
        guard let body = try global.decode(data) as? [String: Any] else { throw ExitCode(1) }
        guard status == 200 else {
            if !global.json { FileHandle.standardError.write(Data("meshctl: \(body["error"] as? String ?? "status \(status)")\n".utf8)) }
            throw ExitCode(1)
        }
        let nodes = body["nodes"] as? [[String: Any]] ?? []
        let missing = nodes.filter { ($0["ok"] as? Bool) != true }
        defer {
            for n in missing {
                FileHandle.standardError.write(Data("meshctl: not counted: \(n["node"] as? String ?? "?"): \(n["error"] as? String ?? "no answer")\n".utf8))
            }
        }
        if global.json { return }
        let dimension = UsageDimension(rawValue: by) ?? .key
        let groups = (try? JSONDecoder().decode([UsageGroup].self, from: JSONSerialization.data(withJSONObject: body["groups"] ?? []))) ?? []
        if csv {
            FileHandle.standardOutput.write(Data(UsageReport.csv(groups, by: dimension).utf8))
            return
        }
        print(table(UsageReport.columns(dimension), UsageReport.rows(groups, by: dimension)))
        print("\nsince \(body["since"] as? String ?? since), \(nodes.count - missing.count) of \(nodes.count) node(s) counted")
        let limits = body["limits"] as? [[String: Any]] ?? []
        if !limits.isEmpty {
            print("\nlimits now (limits.default / limits.per_key):")
            for l in limits { print("  \(StatusCommand.limitLine(l))") }
        }
    }
}
