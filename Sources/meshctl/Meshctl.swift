import ArgumentParser
import Foundation
import MeshCore

/// `meshctl`: see and steer a meshd node through its admin socket.
@main
struct Meshctl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "meshctl",
        abstract: "See and steer the meshd mesh through the local node's admin socket.",
        version: MeshdVersion.version,
        subcommands: [StatusCommand.self, NodesCommand.self, EnginesCommand.self, ModelsCommand.self, RouteCommand.self,
                      DrainCommand.self, UndrainCommand.self, InitCommand.self, TrustCommand.self, DoctorCommand.self, BudgetCommand.self,
                      SplitsCommand.self, UsageCommand.self])

    /// Options every command takes (`--socket PATH`, `--json`) are accepted before the command too
    /// (`meshctl --socket PATH status`), as after it.
    static func main() async {
        await main(hoistingGlobalOptions(Array(CommandLine.arguments.dropFirst())))
    }

    /// Moves `--socket PATH`, `--socket=PATH` and `--json` given before the first command word to the end.
    static func hoistingGlobalOptions(_ args: [String]) -> [String] {
        var leading: [String] = []
        var i = 0
        while i < args.count {
            let a = args[i]
            if a == "--socket", i + 1 < args.count {
                leading += [a, args[i + 1]]
                i += 2
            } else if a.hasPrefix("--socket=") || a == "--json" {
                leading.append(a)
                i += 1
            } else {
                break
            }
        }
        guard !leading.isEmpty, i < args.count else { return args }
        return Array(args[i...]) + leading
    }
}

/// Options every command shares.
struct GlobalOptions: ParsableArguments {
    @Option(name: .long, help: "Admin socket of the local node.")
    var socket: String = ProcessInfo.processInfo.environment["MESHD_ADMIN_SOCKET"] ?? "/run/meshd/meshd.sock"

    @Flag(name: .long, help: "Print JSON for scripts instead of tables.")
    var json = false

    /// GETs `path` on the admin socket; exits with a clear message when the node is not reachable.
    func get(_ path: String, method: String = "GET", body: [UInt8] = []) throws -> (Int, Data) {
        do {
            return try AdminClient(socketPath: socket).request(method, path, body: body)
        } catch {
            FileHandle.standardError.write(Data("meshctl: cannot reach meshd at \(socket): \(error)\n(is meshd running? use --socket PATH)\n".utf8))
            throw ExitCode(3)
        }
    }

    /// Prints the body as JSON (pretty) and returns it parsed.
    func decode(_ data: Data) throws -> Any {
        do {
            return try JSONSerialization.jsonObject(with: data)
        } catch {
            FileHandle.standardError.write(Data("meshctl: meshd answered with something that is not JSON\n".utf8))
            throw ExitCode(1)
        }
    }

    func printJSON(_ data: Data) {
        if let obj = try? JSONSerialization.jsonObject(with: data),
           let pretty = try? JSONSerialization.data(withJSONObject: obj, options: [.prettyPrinted, .sortedKeys]) {
            print(String(decoding: pretty, as: UTF8.self))
        } else {
            print(String(decoding: data, as: UTF8.self))
        }
    }
}

/// Renders rows as an aligned text table.
func table(_ header: [String], _ rows: [[String]]) -> String {
    var widths = header.map(\.count)
    for r in rows { for (i, c) in r.enumerated() where i < widths.count { widths[i] = max(widths[i], c.count) } }
    func line(_ cells: [String]) -> String {
        cells.enumerated().map { i, c in i == cells.count - 1 ? c : c.padding(toLength: widths[i], withPad: " ", startingAt: 0) }
            .joined(separator: "  ")
    }
    return ([line(header)] + rows.map(line)).joined(separator: "\n")
}
