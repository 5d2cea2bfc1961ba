import ArgumentParser
import Foundation

/// `meshctl models`: every model of the mesh and where it is; `copy` and `rm` manage the nodes' model stores.
struct ModelsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "models",
        abstract: "List the mesh's models and where they are; copy them between nodes' stores, or remove them.",
        subcommands: [ModelsListCommand.self, ModelsCopyCommand.self, ModelsRemoveCommand.self],
        defaultSubcommand: ModelsListCommand.self)
}

/// `meshctl models [list]`: per model, where it is loaded, loading, or on disk (loaded by its first request), and its size.
struct ModelsListCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list",
        abstract: "List the mesh's models and where they are: loaded, loading, or on disk (loaded by the first request).")
    @OptionGroup var global: GlobalOptions

    func run() async throws {
        let (_, data) = try global.get("/v1/models")
        if global.json { global.printJSON(data); return }
        guard let list = try global.decode(data) as? [[String: Any]] else { throw ExitCode(1) }
        print(table(["MODEL", "SIZE", "LOADED ON", "LOADING ON", "ON DISK ON (NOT LOADED)"], Self.rows(list)))
        let (_, nodeData) = try global.get("/v1/nodes")
        if let nodes = try? JSONSerialization.jsonObject(with: nodeData) as? [[String: Any]], !nodes.isEmpty {
            print("")
            print(table(["NODE", "MEMORY OFFERED", "COULD LOAD NOW (ON DISK, FITS)"], Self.nodeRows(nodes, models: list)))
        }
    }

    /// Per node: the memory it offers for models now, and the models on its disk that fit it.
    static func nodeRows(_ nodes: [[String: Any]], models: [[String: Any]]) -> [[String]] {
        nodes.compactMap { n -> [String]? in
            guard let name = n["name"] as? String, (n["state"] as? String) != "down" else { return nil }
            let vram = n["vram_free_bytes"] as? Int ?? 0
            let offer = n["offer_bytes"] as? Int ?? (vram > 0 ? vram : n["ram_free_bytes"] as? Int)
            let fits = models.compactMap { m -> String? in
                let places = m["where"] as? [[String: Any]] ?? []
                guard let p = places.first(where: { ($0["node"] as? String) == name && ($0["state"] as? String) == "available" }) else { return nil }
                let bytes = p["size_bytes"] as? Int ?? m["size_bytes"] as? Int
                guard let offer, let bytes else { return m["name"] as? String }
                return bytes <= offer ? m["name"] as? String : nil
            }
            return [name, size(offer), fits.isEmpty ? "-" : fits.joined(separator: ",")]
        }
    }

    /// One row per model: its size, and the nodes (engine in brackets where a node has several) by state.
    static func rows(_ list: [[String: Any]]) -> [[String]] {
        list.map { m in
            let places = m["where"] as? [[String: Any]] ?? []
            var perNode: [String: Int] = [:]
            for p in places { perNode[p["node"] as? String ?? "?", default: 0] += 1 }
            func nodes(_ state: String) -> String {
                let names = places.filter { ($0["state"] as? String) == state }.map { p -> String in
                    let node = p["node"] as? String ?? "?"
                    let split = (p["split"] as? Bool) == true ? " (split)" : ""
                    return (perNode[node] ?? 0) > 1 ? "\(node)[\(p["engine"] as? String ?? "?")]\(split)" : node + split
                }
                return names.isEmpty ? "-" : names.joined(separator: ",")
            }
            return [m["name"] as? String ?? "?", size(m["size_bytes"] as? Int), nodes("loaded"), nodes("loading"), nodes("available")]
        }
    }
}

/// `1.5 GiB`, `17 MiB`, `-`.
func size(_ bytes: Int?) -> String {
    guard let b = bytes, b > 0 else { return "-" }
    if b >= 1 << 30 { return String(format: "%.1f GiB", Double(b) / Double(1 << 30)) }
    return "\(max(1, b >> 20)) MiB"
}

/// `meshctl models copy MODEL --to NODE|--all`: each node copies the model into its store from the
/// nearest node that has it (over the mesh, checked against its sha256, resumed if interrupted).
struct ModelsCopyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "copy",
        abstract: "Copy a stored model to other nodes' stores, from the nearest node that has it.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "The model (its store name: the GGUF file name without .gguf).") var model: String
    @Option(name: .customLong("to"), help: "A node to copy it to (repeat for several).") var to: [String] = []
    @Flag(name: .long, help: "Copy it to every node of the mesh.") var all = false

    func validate() throws {
        if to.isEmpty == !all { throw ValidationError("give --to NODE (one or more) or --all") }
    }

    func run() async throws {
        let body = try JSONSerialization.data(withJSONObject: ["model": model, "to": all ? ["all"] : to])
        var pending: [UInt8] = []
        var failed: [String] = []
        // Nodes heard of, and those whose copy ended (success or error): a stream that stops before
        // a node's end (the node meshctl talks to went away) is a failure, not a success.
        var seen: [String] = []
        var ended: Set<String> = []
        var bars = ProgressBars(enabled: !global.json && isatty(1) != 0)
        let status: Int
        do {
            status = try AdminClient(socketPath: global.socket).stream("POST", "/v1/models/copy", body: Array(body), silenceSeconds: 600) { bytes in
                pending += bytes
                while let nl = pending.firstIndex(of: 10) {
                    let line = Data(pending[..<nl])
                    pending.removeSubrange(...nl)
                    if global.json { print(String(decoding: line, as: UTF8.self)); continue }
                    guard let obj = try? JSONSerialization.jsonObject(with: line) as? [String: Any] else {
                        print(String(decoding: line, as: UTF8.self))
                        continue
                    }
                    if let node = obj["node"] as? String {
                        if !seen.contains(node) { seen.append(node) }
                        if obj["error"] != nil { failed.append(node) }
                        if obj["error"] != nil || (obj["status"] as? String) == "success" { ended.insert(node) }
                    }
                    bars.show(obj)
                }
            }
        } catch {
            FileHandle.standardError.write(Data("meshctl: \(error)\n".utf8))
            throw ExitCode(3)
        }
        bars.finish()
        if status != 200 {
            let text = String(decoding: pending, as: UTF8.self)
            let message = (try? JSONSerialization.jsonObject(with: Data(pending)) as? [String: Any])?["error"] as? String ?? text
            FileHandle.standardError.write(Data("meshctl: \(message)\n".utf8))
            throw ExitCode(1)
        }
        let unfinished = seen.filter { !ended.contains($0) }
        for node in unfinished { print("\(node): error: the copy's progress stopped before its end (meshd closed the connection)") }
        if seen.isEmpty {
            FileHandle.standardError.write(Data("meshctl: meshd ended the copy without a word\n".utf8))
            throw ExitCode(1)
        }
        if !failed.isEmpty || !unfinished.isEmpty { throw ExitCode(1) }
    }
}

/// Progress of a copy per node: a bar redrawn in place on a terminal, a line per step otherwise.
struct ProgressBars {
    let enabled: Bool
    var lastPercent: [String: Int] = [:]
    var drawing = false

    mutating func show(_ line: [String: Any]) {
        let node = line["node"] as? String ?? "?"
        if let e = line["error"] as? String {
            end()
            print("\(node): error: \(e)")
            return
        }
        let status = line["status"] as? String ?? ""
        if let total = line["total"] as? Int, let done = line["completed"] as? Int, total > 0 {
            let pct = Int(Double(done) / Double(total) * 100)
            if enabled {
                let width = 30
                let filled = width * done / total
                let bar = String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled)
                print("\r\(node): [\(bar)] \(String(format: "%3d", pct))% \(size(done))/\(size(total))", terminator: "")
                fflush(nil)
                drawing = true
            } else if lastPercent[node].map({ pct >= $0 + 25 || (pct == 100 && $0 < 100) }) ?? true {
                // Without a terminal: a line at 0, 25, 50, 75 and 100 %.
                lastPercent[node] = pct - pct % 25
                print("\(node): \(pct)% of \(size(total))")
            }
            return
        }
        end()
        print("\(node): \(status == "success" ? "done" : status)")
    }

    mutating func end() {
        if drawing { print(""); drawing = false }
    }

    mutating func finish() { end() }
}

/// `meshctl models rm MODEL --node NODE|--all`: deletes the model from those nodes' stores.
struct ModelsRemoveCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rm",
        abstract: "Delete a stored model from nodes' stores.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "The model (its store name).") var model: String
    @Option(name: .customLong("node"), help: "A node to delete it from (repeat for several).") var nodes: [String] = []
    @Flag(name: .long, help: "Delete it from every node of the mesh.") var all = false

    func validate() throws {
        if nodes.isEmpty == !all { throw ValidationError("give --node NODE (one or more) or --all") }
    }

    func run() async throws {
        let body = try JSONSerialization.data(withJSONObject: ["model": model, "nodes": all ? ["all"] : nodes])
        let (status, data) = try global.get("/v1/models/rm", method: "POST", body: Array(body))
        if global.json { global.printJSON(data) }
        guard let obj = try global.decode(data) as? [String: Any] else { throw ExitCode(1) }
        if let e = obj["error"] as? String {
            FileHandle.standardError.write(Data("meshctl: \(e)\n".utf8))
            throw ExitCode(1)
        }
        if !global.json {
            for n in obj["deleted"] as? [String] ?? [] { print("\(n): deleted") }
            for n in obj["absent"] as? [String] ?? [] { print("\(n): not there") }
            for (n, e) in obj["errors"] as? [String: Any] ?? [:] { print("\(n): error: \(e)") }
        }
        if status != 200 { throw ExitCode(1) }
    }
}
