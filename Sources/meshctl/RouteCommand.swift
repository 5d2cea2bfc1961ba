import ArgumentParser
import Foundation

/// `meshctl route MODEL [--prompt-file FILE]`: where a request for MODEL would go and why, without
/// sending one; with a prompt, each candidate's terms (wait, uncached prefill, decode, cold, hop).
struct RouteCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "route", abstract: "Explain where a request for MODEL would run.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Model name.") var model: String
    @Option(name: .customLong("prompt-file"),
            help: "A prompt to route (its text as one user message, or a chat/completion request body in JSON): prints every candidate's terms, with the cached part of the prompt.")
    var promptFile: String?

    func run() async throws {
        let escaped = model.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-._~:"))) ?? model
        let status: Int
        let data: Data
        if let promptFile {
            guard let text = FileManager.default.contents(atPath: promptFile) else {
                FileHandle.standardError.write(Data("meshctl: cannot read --prompt-file \(promptFile)\n".utf8))
                throw ExitCode(2)
            }
            (status, data) = try global.get("/v1/route?model=\(escaped)", method: "POST", body: [UInt8](Self.requestBody(model: model, file: text)))
        } else {
            (status, data) = try global.get("/v1/route?model=\(escaped)")
        }
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
                if let candidates = r["candidates"] as? [[String: Any]] { print(Self.termsTable(candidates, policy: r["policy"] as? String)) }
            }
        }
        if status != 200 { throw ExitCode(1) }
    }

    /// The file as a request body: a JSON object is used as it is (its model replaced), other text
    /// becomes one user message.
    static func requestBody(model: String, file: Data) -> Data {
        if var obj = (try? JSONSerialization.jsonObject(with: file)) as? [String: Any], obj["messages"] != nil || obj["prompt"] != nil {
            obj["model"] = model
            return (try? JSONSerialization.data(withJSONObject: obj)) ?? Data()
        }
        let body: [String: Any] = ["model": model, "messages": [["role": "user", "content": String(decoding: file, as: UTF8.self)]]]
        return (try? JSONSerialization.data(withJSONObject: body)) ?? Data()
    }

    static func termsTable(_ candidates: [[String: Any]], policy: String?) -> String {
        func ms(_ v: Any?) -> String { String(Int((((v as? Double) ?? 0) * 1000).rounded())) }
        let rows = candidates.enumerated().map { i, c -> [String] in
            [i == 0 ? "→" : "", "\(c["node"] ?? "?")", "\(c["engine"] ?? "?")", "\(c["cached_tokens"] ?? 0)/\((c["cached_tokens"] as? Int ?? 0) + (c["uncached_tokens"] as? Int ?? 0))",
             ms(c["wait"]), ms(c["prefill"]), ms(c["decode"]), ms(c["cold"]), ms(c["hop"]), ms(c["total"]),
             (c["skipped"] as? String).map { "skipped: " + $0 } ?? ""]
        }
        let header = ["", "NODE", "ENGINE", "CACHED", "WAIT ms", "PREFILL ms", "DECODE ms", "COLD ms", "HOP ms", "TOTAL ms", ""]
        return "  policy: \(policy ?? "?")\n" + table(header, rows).split(separator: "\n").map { "  " + $0 }.joined(separator: "\n")
    }
}
