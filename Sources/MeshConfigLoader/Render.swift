import MeshCore

extension ConfigLoader {
    /// The effective configuration as YAML (for `meshd --check-config`). Secrets (API keys) are
    /// printed as `***`; everything else loads back to the same configuration.
    public static func render(_ config: MeshdConfig) -> String {
        Render.document(config)
    }
}

enum Render {
    static func document(_ config: MeshdConfig) -> String {
        var lines = ["# meshd effective configuration (API keys are shown as \(Schema.redacted))"]
        emit(prefix: [], config: config, indent: "", into: &lines)
        return lines.joined(separator: "\n") + "\n"
    }

    private static func emit(prefix: [String], config: MeshdConfig, indent: String, into lines: inout [String]) {
        for name in Schema.childNames(of: prefix) {
            let path = prefix + [name]
            if prefix.isEmpty && name == Schema.enginesKey {
                engines(config.engines, into: &lines)
            } else if let sk = Schema.structured(at: path) {
                structured(sk, config, indent: indent, into: &lines)
            } else if let field = Schema.field(at: path) {
                if let v = field.read(config) {
                    lines.append("\(indent)\(name): \(value(v, secret: field.secret))")
                } else {
                    lines.append("\(indent)# \(name): not set")
                }
            } else {
                lines.append("\(indent)\(name):")
                emit(prefix: path, config: config, indent: indent + "  ", into: &lines)
            }
        }
    }

    private static func engines(_ engines: [EngineConfig]?, into lines: inout [String]) {
        guard let engines else {
            lines.append("# engines: not configured; auto-detecting "
                         + MeshdConfig.autodetectEngines.map { "\($0.kind.rawValue) at \($0.url ?? "?")" }.joined(separator: " and "))
            return
        }
        if engines.isEmpty {
            lines.append("\(Schema.enginesKey): []")
            return
        }
        lines.append("\(Schema.enginesKey):")
        for engine in engines {
            var first = true
            for field in Schema.engineFields where field.kinds.contains(engine.kind) {
                guard let value = field.read(engine) else { continue }
                lines.append("\(first ? "  - " : "    ")\(field.name): \(self.value(value, secret: false))")
                first = false
            }
        }
    }

    static func value(_ value: FieldValue, secret: Bool) -> String {
        switch value {
        case .string(let text): return secret ? quoted(Schema.redacted) : quoted(text)
        case .int(let number): return String(number)
        case .double(let number): return self.number(number)
        case .bool(let flag): return flag ? "true" : "false"
        case .list(let items):
            return "[" + items.map { secret ? quoted(Schema.redacted) : quoted($0) }.joined(separator: ", ") + "]"
        }
    }

    /// `30` for whole numbers, `0.5` otherwise.
    static func number(_ number: Double) -> String {
        if number.isFinite, number == number.rounded(), abs(number) < 1e15 { return String(Int(number)) }
        return String(number)
    }

    /// A YAML double-quoted scalar.
    static func quoted(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\t": out += "\\t"
            case "\r": out += "\\r"
            default:
                if scalar.value < 0x20 || scalar.value == 0x7F || scalar.value == 0x85
                    || scalar.value == 0x2028 || scalar.value == 0x2029 || scalar.value == 0xFEFF {
                    let hex = String(scalar.value, radix: 16, uppercase: true)
                    out += "\\u" + String(repeating: "0", count: max(0, 4 - hex.count)) + hex
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out + "\""
    }
}
