import ArgumentParser
import Foundation

/// `meshctl trust`: per-node keys for meshes with `mesh.trust: keys`.
struct TrustCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "trust", abstract: "Manage which node keys may join the mesh (mesh.trust: keys).",
        subcommands: [Show.self, List.self, Add.self, Revoke.self], defaultSubcommand: List.self)

    /// Prints this node's public key (give it to `meshctl trust add` on the other nodes).
    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print this node's public key.")
        @OptionGroup var global: GlobalOptions
        func run() async throws {
            let (_, data) = try global.get("/v1/trust")
            guard let r = try global.decode(data) as? [String: Any] else { throw ExitCode(1) }
            if global.json { global.printJSON(data); return }
            guard let key = r["node_key"] as? String else {
                print("this node uses the shared mesh key (mesh.trust: \(r["mode"] ?? "secret")); set mesh.trust: keys for per-node keys")
                throw ExitCode(1)
            }
            print(key)
        }
    }

    /// Lists the trusted keys.
    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List trusted node keys.")
        @OptionGroup var global: GlobalOptions
        func run() async throws {
            let (_, data) = try global.get("/v1/trust")
            if global.json { global.printJSON(data); return }
            guard let r = try global.decode(data) as? [String: Any] else { throw ExitCode(1) }
            print("mode: \(r["mode"] ?? "?")   file: \(r["trusted_keys_file"] ?? "?")")
            let rows = ((r["trusted"] as? [[String: Any]]) ?? []).map { [$0["key"] as? String ?? "?", $0["name"] as? String ?? ""] }
            print(table(["KEY", "NAME"], rows))
        }
    }

    /// Admits a node key (takes effect at once for new connections).
    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Trust a node key.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "The node's public key (64 hex digits, from 'meshctl trust show' on that node).") var key: String
        @Option(help: "A name to remember it by.") var name: String = ""
        func run() async throws { try change(global, "/v1/trust/add", key, name) }
    }

    /// Refuses a node key for new connections.
    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Revoke a node key.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "The node's public key (64 hex digits).") var key: String
        func run() async throws { try change(global, "/v1/trust/revoke", key, "") }
    }
}

private func change(_ global: GlobalOptions, _ path: String, _ key: String, _ name: String) throws {
    let allowed = CharacterSet.alphanumerics.union(CharacterSet(charactersIn: "-._~"))
    let k = key.addingPercentEncoding(withAllowedCharacters: allowed) ?? key
    let n = name.addingPercentEncoding(withAllowedCharacters: allowed) ?? name
    let (status, data) = try global.get("\(path)?key=\(k)&name=\(n)", method: "POST")
    if global.json || status != 200 { global.printJSON(data) } else { print("ok") }
    if status != 200 { throw ExitCode(1) }
    // In `trust: secret` mode every node holds the mesh key: the list is saved for a switch to
    // `trust: keys`, but admits and shuts out nobody now. Say so instead of a bare "ok".
    if !global.json, let listing = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any], listing["mode"] as? String == "secret" {
        FileHandle.standardError.write(Data(("note: mesh.trust is \"secret\" on this node: every holder of the mesh secret is admitted, "
            + "so this list takes effect only with mesh.trust: keys (on every node)\n").utf8))
    }
}
