import MeshConfigLoader
import MeshCore

/// The configuration loader. Layout: YAML text, then optionally a NUL byte and `MESHD_*`
/// environment variables, one `NAME=value` a line. Text that is not UTF-8 is rejected as the
/// loader rejects such a file.
enum ConfigFuzz {
    static func run(_ bytes: [UInt8]) {
        let nul = bytes.firstIndex(of: 0) ?? bytes.endIndex
        guard let yaml = String(validating: bytes[..<nul], as: UTF8.self) else { return }
        var environment: [String: String] = [:]
        if nul < bytes.endIndex {
            for line in bytes[(nul + 1)...].split(separator: 0x0A) {
                let text = String(decoding: line, as: UTF8.self)
                guard let eq = text.firstIndex(of: "=") else { continue }
                environment[String(text[..<eq])] = String(text[text.index(after: eq)...])
            }
        }
        do {
            let loaded = try ConfigLoader.load(yaml: yaml, source: "fuzz.yaml", environment: environment, hostName: "fuzz-host")
            for w in loaded.warnings { _ = w.description }
            // `meshd --check-config` prints the effective configuration, which loads back to the
            // same configuration. Secrets print as `***`: each becomes a distinct stand-in to load.
            let rendered = ConfigLoader.render(loaded.config)
            var n = 0
            let standIns = rendered.split(separator: "\"***\"", omittingEmptySubsequences: false).map(String.init)
                .reduce(into: "") { text, part in
                    if n > 0 { text += "\"secret-\(n)\"" }
                    text += part
                    n += 1
                }
            let again: LoadedConfig
            do {
                again = try ConfigLoader.load(yaml: standIns, source: "rendered.yaml", hostName: "fuzz-host")
            } catch {
                invariant(false, "the rendered configuration does not load: \(error)\n\(rendered)")
                return
            }
            let twice = ConfigLoader.render(again.config)
            invariant(twice == rendered, "the rendered configuration loads back differently:\n\(rendered)\n---\n\(twice)")
        } catch {
            invariant(!error.errors.isEmpty, "load failed without an error")
            _ = error.description
        }
    }
}
