import Foundation
import MeshCore
import Yams

/// The record sections of `cloud:` and `budget:`.
enum CloudSchema {
    static let providerKeys: [RecordKey] = [
        RecordKey("name", .string, required: true), RecordKey("kind", .string, required: true), RecordKey("base_url", .string),
        RecordKey("key_file", .string), RecordKey("key_env", .string), RecordKey("ca_file", .string),
        RecordKey("api_version", .string), RecordKey("models", .stringList),
        RecordKey("region", .string), RecordKey("access_key_id", .string), RecordKey("session_token_file", .string),
        RecordKey("session_token_env", .string),
    ]

    /// `cloud.providers`: `- { name: openai, kind: openai, key_file: /etc/meshd/openai.key }`.
    static let providers = StructuredKey(
        path: ["cloud", "providers"], shape: .list,
        what: "a provider such as { name: openai, kind: openai, key_file: /etc/meshd/openai.key }",
        keys: providerKeys,
        apply: { config, records in
            var out: [CloudProviderConfig] = []
            var problems: [RecordProblem] = []
            var seen: [String: Int] = [:]
            for (i, r) in records.enumerated() {
                let before = problems.count
                func bad(_ key: String?, _ reason: String) { problems.append(RecordProblem(index: i, key: key, reason: reason)) }
                let name = r.string("name") ?? ""
                if let why = Check.name(name) { bad("name", why) }
                if let first = seen[name] { bad("name", "same name as cloud.providers[\(first)]") } else { seen[name] = i }
                let kindText = r.string("kind") ?? ""
                guard let kind = ProviderKind(rawValue: kindText) else {
                    let names = ProviderKind.allCases.map(\.rawValue)
                    bad("kind", "unknown provider kind \"\(kindText)\"; expected one of \(names.joined(separator: ", "))"
                        + Suggest.phrase(for: kindText, among: names))
                    continue
                }
                var p = CloudProviderConfig(name: name, kind: kind)
                p.baseURL = r.string("base_url")
                if let u = p.baseURL, let why = Check.url(u) { bad("base_url", why) }
                if kind == .azure {
                    if p.baseURL == nil { bad("base_url", "required for kind azure: the deployment URL (https://NAME.openai.azure.com/openai/deployments/DEPLOYMENT)") }
                    if r.string("api_version") == nil { bad("api_version", "required for kind azure (e.g. \"2024-10-21\")") }
                }
                p.keyFile = r.string("key_file")
                p.keyEnv = r.string("key_env")
                if p.keyFile == nil && p.keyEnv == nil {
                    let what = kind == .bedrock ? "the AWS secret access key" : "the API key"
                    bad(nil, "needs key_file (a file with \(what), mode 0600) or key_env (an environment variable); keys are never written in the YAML")
                }
                checkSecretSource(file: ("key_file", p.keyFile), env: ("key_env", p.keyEnv), bad)
                p.region = r.string("region")
                p.accessKeyID = r.string("access_key_id")
                p.sessionTokenFile = r.string("session_token_file")
                p.sessionTokenEnv = r.string("session_token_env")
                if kind == .bedrock {
                    checkAWS(p, bad)
                } else {
                    for key in ["region", "access_key_id", "session_token_file", "session_token_env"] where r.values[key] != nil {
                        bad(key, "only for kind bedrock")
                    }
                }
                p.caFile = r.string("ca_file")
                if let f = p.caFile, let why = Check.path(f) { bad("ca_file", why) }
                p.apiVersion = r.string("api_version")
                p.models = r.list("models") ?? []
                for (j, m) in p.models.enumerated() { if let why = Check.name(m) { bad("models[\(j)]", why) } }
                if problems.count == before { out.append(p) }
            }
            if problems.isEmpty { config.cloud.providers = out }
            return problems
        },
        read: { config in
            config.cloud.providers.map { p in
                var v: [String: FieldValue] = ["name": .string(p.name), "kind": .string(p.kind.rawValue)]
                if let x = p.baseURL { v["base_url"] = .string(x) }
                if let x = p.keyFile { v["key_file"] = .string(x) }
                if let x = p.keyEnv { v["key_env"] = .string(x) }
                if let x = p.caFile { v["ca_file"] = .string(x) }
                if let x = p.apiVersion { v["api_version"] = .string(x) }
                if let x = p.region { v["region"] = .string(x) }
                if let x = p.accessKeyID { v["access_key_id"] = .string(x) }
                if let x = p.sessionTokenFile { v["session_token_file"] = .string(x) }
                if let x = p.sessionTokenEnv { v["session_token_env"] = .string(x) }
                if !p.models.isEmpty { v["models"] = .list(p.models) }
                return ParsedRecord(name: nil, values: v)
            }
        })

    /// A secret read from a file or an environment variable: not both, a usable path or name.
    static func checkSecretSource(file: (key: String, value: String?), env: (key: String, value: String?), _ bad: (String?, String) -> Void) {
        switch (file.value, env.value) {
        case (nil, nil): break
        case (.some, .some): bad(env.key, "set \(file.key) or \(env.key), not both")
        case (let f?, nil): if let why = Check.path(f) { bad(file.key, why) }
        case (nil, let e?):
            if e.isEmpty || !e.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" }) { bad(env.key, "must be an environment variable name, got \"\(e)\"") }
        }
    }

    /// Bedrock's region (required: it names the endpoint and signs every request), access key ID
    /// (required) and optional session token.
    static func checkAWS(_ p: CloudProviderConfig, _ bad: (String?, String) -> Void) {
        if let region = p.region {
            if !Check.awsRegion(region) { bad("region", "must be an AWS region such as us-east-1 or eu-central-1, got \"\(region)\"") }
        } else {
            bad("region", "required for kind bedrock: the AWS region, e.g. us-east-1")
        }
        if let id = p.accessKeyID {
            if !(16...128).contains(id.count) || !id.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber) }) {
                bad("access_key_id", "must be an AWS access key ID (16 to 128 letters and digits, e.g. AKIAIOSFODNN7EXAMPLE)")
            }
        } else {
            bad("access_key_id", "required for kind bedrock: the AWS access key ID (its secret access key goes in key_file or key_env)")
        }
        checkSecretSource(file: ("session_token_file", p.sessionTokenFile), env: ("session_token_env", p.sessionTokenEnv), bad)
    }

    static let priceKeys: [RecordKey] = [
        RecordKey("input", .double, required: true), RecordKey("output", .double, required: true),
        RecordKey("cached_input", .double), RecordKey("max_output_tokens", .int),
    ]

    /// Price records (`model: { input, output, cached_input, max_output_tokens }`, USD per 1M tokens),
    /// shared by `cloud.prices` and the prices file.
    static func priceTable(_ records: [ParsedRecord]) -> ([String: ModelPrice], [RecordProblem]) {
        var out: [String: ModelPrice] = [:]
        var problems: [RecordProblem] = []
        for (i, r) in records.enumerated() {
            var ok = true
            for key in ["input", "output", "cached_input"] {
                if let d = r.double(key), !(d.isFinite && d >= 0 && d < 1_000_000) {
                    problems.append(RecordProblem(index: i, key: key, reason: "must be a price in USD per 1M tokens (0 or more), got \(d)"))
                    ok = false
                }
            }
            if let n = r.int("max_output_tokens"), n < 1 {
                problems.append(RecordProblem(index: i, key: "max_output_tokens", reason: "must be at least 1, got \(n)"))
                ok = false
            }
            guard ok, let name = r.name, let input = r.double("input"), let output = r.double("output") else { continue }
            out[name] = ModelPrice(input: input, output: output, cachedInput: r.double("cached_input"), maxOutputTokens: r.int("max_output_tokens"))
        }
        return (out, problems)
    }

    static func priceRecords(_ prices: [String: ModelPrice]) -> [ParsedRecord] {
        prices.keys.sorted().map { name in
            let p = prices[name]!
            var v: [String: FieldValue] = ["input": .double(p.input), "output": .double(p.output)]
            if let c = p.cachedInput { v["cached_input"] = .double(c) }
            if let m = p.maxOutputTokens { v["max_output_tokens"] = .int(m) }
            return ParsedRecord(name: name, values: v)
        }
    }

    /// `cloud.prices`: overrides of the prices file.
    static let prices = StructuredKey(
        path: ["cloud", "prices"], shape: .map, what: "a price such as { input: 0.15, output: 0.60, cached_input: 0.075 }",
        keys: priceKeys,
        apply: { config, records in
            let (table, problems) = priceTable(records)
            if problems.isEmpty { config.cloud.prices = table }
            return problems
        },
        read: { priceRecords($0.cloud.prices) })

    /// `cloud.aliases`: model → the name it may be served under elsewhere.
    static let aliases = StructuredKey(
        path: ["cloud", "aliases"], shape: .stringMap, what: "model names such as gpt-4o-mini: \"llama3.1:8b\"", keys: [],
        apply: { config, records in
            var out: [String: String] = [:]
            var problems: [RecordProblem] = []
            for (i, r) in records.enumerated() {
                let target = r.scalar ?? ""
                if let why = Check.name(target) { problems.append(RecordProblem(index: i, key: nil, reason: why)); continue }
                if target == r.name { problems.append(RecordProblem(index: i, key: nil, reason: "a model cannot be its own alias")); continue }
                out[r.name ?? ""] = target
            }
            if problems.isEmpty { config.cloud.aliases = out }
            return problems
        },
        read: { config in config.cloud.aliases.keys.sorted().map { ParsedRecord(name: $0, scalar: config.cloud.aliases[$0]) } })

    /// `budget.per_provider` and `budget.per_key`: name → { daily_usd, monthly_usd }.
    static func caps(_ path: [String], _ keyPath: any WritableKeyPath<MeshdConfig, [String: CapConfig]> & Sendable) -> StructuredKey {
        StructuredKey(
            path: path, shape: .map, what: "caps such as { daily_usd: 2.0, monthly_usd: 40 }",
            keys: [RecordKey("daily_usd", .double), RecordKey("monthly_usd", .double)],
            apply: { config, records in
                var out: [String: CapConfig] = [:]
                var problems: [RecordProblem] = []
                for (i, r) in records.enumerated() {
                    var ok = true
                    for key in ["daily_usd", "monthly_usd"] {
                        if let d = r.double(key), !(d.isFinite && d >= 0) {
                            problems.append(RecordProblem(index: i, key: key, reason: "must be 0 or more USD, got \(d)"))
                            ok = false
                        }
                    }
                    if r.values.isEmpty {
                        problems.append(RecordProblem(index: i, key: nil, reason: "sets no cap; give daily_usd and/or monthly_usd"))
                        ok = false
                    }
                    if ok { out[r.name ?? ""] = CapConfig(dailyUSD: r.double("daily_usd"), monthlyUSD: r.double("monthly_usd")) }
                }
                if problems.isEmpty { config[keyPath: keyPath] = out }
                return problems
            },
            read: { config in
                let m = config[keyPath: keyPath]
                return m.keys.sorted().map { name in
                    var v: [String: FieldValue] = [:]
                    if let d = m[name]!.dailyUSD { v["daily_usd"] = .double(d) }
                    if let d = m[name]!.monthlyUSD { v["monthly_usd"] = .double(d) }
                    return ParsedRecord(name: name, values: v)
                }
            })
    }
}

extension Check {
    /// An AWS region name: lower-case words and a number joined by dashes (`us-east-1`, `us-gov-west-1`).
    static func awsRegion(_ text: String) -> Bool {
        let parts = text.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count >= 3, let last = parts.last, !last.isEmpty, last.allSatisfy(\.isASCII), last.allSatisfy(\.isNumber) else { return false }
        return parts.dropLast().allSatisfy { !$0.isEmpty && $0.allSatisfy { $0.isASCII && $0.isLowercase } }
    }

    /// An IANA time zone name the system knows (`UTC`, `Europe/Berlin`).
    static func timeZone(_ text: String) -> String? {
        TimeZone(identifier: text) == nil ? "unknown time zone \"\(text)\"; use an IANA name such as UTC or Europe/Berlin" : nil
    }
}

/// The prices file (`cloud.prices_file`, format of `Config/prices.yaml`): `models:` maps each
/// model (or `provider/model`) to `{ input, output, cached_input, max_output_tokens }` in USD per
/// million tokens.
public enum PricesLoader {
    static let models = StructuredKey(
        path: ["models"], shape: .map, what: "a price such as { input: 0.15, output: 0.60, cached_input: 0.075 }",
        keys: CloudSchema.priceKeys,
        apply: { config, records in
            let (table, problems) = CloudSchema.priceTable(records)
            if problems.isEmpty { config.cloud.prices = table }
            return problems
        },
        read: { CloudSchema.priceRecords($0.cloud.prices) })

    /// Reads the file, then applies `overrides` (the main config's `cloud.prices`) on top.
    /// A missing file is an empty table; any other problem is an error naming file, key and line.
    public static func load(path: String, overrides: [String: ModelPrice] = [:]) throws(ConfigLoadError) -> PriceTable {
        var state = LoadState(config: MeshdConfig(nodeName: "prices"))
        switch FileRead.read(path: path) {
        case .missing: break
        case .failed(let reason): state.error(path, "(file)", reason)
        case .text(let text): FileSource(source: path).applyPrices(yaml: text, to: &state)
        }
        if state.issues.contains(where: { $0.severity == .error }) { throw ConfigLoadError(issues: state.issues) }
        return PriceTable(models: state.config.cloud.prices).merging(PriceTable(models: overrides))
    }
}

extension FileSource {
    func applyPrices(yaml text: String, to state: inout LoadState) {
        let root: Node?
        do {
            root = try Yams.compose(yaml: text, .basic)
        } catch {
            state.error(source, "(syntax)", "cannot parse YAML: \(error)")
            return
        }
        guard let root, !isNull(root) else { return }
        guard case .mapping(let mapping) = root else {
            state.error(source, "(top level)", "expected a map with a models: key, got \(describe(root, secret: false))", line: root.mark?.line)
            return
        }
        for (keyNode, valueNode) in mapping {
            let name = keyNode.scalar?.string ?? "?"
            guard name == "models" else {
                state.error(source, name, "unknown key \"\(name)\"; a prices file has only models:", line: keyNode.mark?.line)
                continue
            }
            structured(PricesLoader.models, valueNode, into: &state)
        }
    }
}
