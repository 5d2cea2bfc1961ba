import Configuration
import MeshCore

/// `MESHD_*` overrides, read through swift-configuration's `ConfigReader` over an
/// `EnvironmentVariablesProvider`. The key `meshd.http.api_keys` encodes to
/// `MESHD_HTTP_API_KEYS`, so every schema path maps onto its variable name.
struct EnvironmentSource {
    static let sourceName = "environment"

    let environment: [String: String]

    func apply(to state: inout LoadState) {
        let relevant = environment.filter { $0.key.hasPrefix(Schema.environmentPrefix) }
        if relevant.isEmpty { return }
        let secretNames = Set(Schema.fields.filter(\.secret).map(\.environmentName))
        let provider = EnvironmentVariablesProvider(
            environmentVariables: relevant,
            secretsSpecifier: .specific(secretNames),
            arraySeparator: ","
        )
        let reader = ConfigReader(provider: provider)
        let prefix = String(Schema.environmentPrefix.dropLast()).lowercased()

        for field in Schema.fields {
            let name = field.environmentName
            guard let raw = relevant[name] else { continue }
            let key = ConfigKey([prefix] + field.path)
            let value: FieldValue
            do {
                switch field.type {
                case .string:
                    value = .string(try reader.requiredString(forKey: key, isSecret: field.secret))
                case .int:
                    value = .int(try reader.requiredInt(forKey: key, isSecret: field.secret))
                case .double:
                    value = .double(try reader.requiredDouble(forKey: key, isSecret: field.secret))
                case .bool:
                    value = .bool(try reader.requiredBool(forKey: key, isSecret: field.secret))
                case .stringList:
                    // An empty variable is an empty list (`MESHD_HTTP_API_KEYS=`).
                    if raw.trimmingCharacters([" ", "\t"]).isEmpty {
                        value = .list([])
                    } else {
                        value = .list(try reader.requiredStringArray(forKey: key, isSecret: field.secret))
                    }
                }
            } catch {
                let got = field.secret ? "" : ", got \(Render.quoted(raw))"
                let extra = field.type == .bool ? " (true/false, yes/no, 1/0)" : field.type == .stringList ? " separated by commas" : ""
                state.error(Self.sourceName, name, "expected \(field.type.expectation)\(extra)\(got)")
                continue
            }
            let problems = field.apply(&state.config, value)
            for problem in problems {
                let reason = problem.index.map { "item \($0 + 1): \(problem.reason)" } ?? problem.reason
                state.error(Self.sourceName, name, reason)
            }
            if problems.isEmpty {
                state.origins[field.dotted] = Origin(source: Self.sourceName, key: name, line: nil)
            }
        }

        let known = Schema.fields.map(\.environmentName) + Self.processVariables
        for name in relevant.keys.sorted() where Schema.fieldsByEnvironmentName[name] == nil && !Self.processVariables.contains(name) {
            if name == "MESHD_ENGINES" || name.hasPrefix("MESHD_ENGINES_") {
                state.warning(Self.sourceName, name, "engines can only be configured in the file; ignored")
            } else {
                state.warning(Self.sourceName, name, "unknown meshd variable; ignored" + Suggest.phrase(for: name, among: known))
            }
        }
    }

    /// `MESHD_*` variables that are not configuration keys but are read by meshd or its tools:
    /// `MESHD_CACHE` (where llama.cpp builds and models are cached), `MESHD_ADMIN_SOCKET` (meshctl).
    static let processVariables = ["MESHD_CACHE", "MESHD_ADMIN_SOCKET"]
}
