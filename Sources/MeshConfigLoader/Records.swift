import MeshCore
import Yams

// Sections whose value is a list of records, a map of name → record, or a map of name → string
// (`cloud.providers`, `budget.per_provider`, `cloud.aliases`). File only: they have no `MESHD_*`
// environment names.

/// One key of a record.
struct RecordKey: Sendable {
    let name: String
    let type: FieldType
    let required: Bool

    init(_ name: String, _ type: FieldType, required: Bool = false) {
        self.name = name
        self.type = type
        self.required = required
    }
}

/// A record as read from the file: its name (map key) or position (list), converted values, line.
struct ParsedRecord: Sendable, Equatable {
    var name: String?
    var values: [String: FieldValue]
    /// For a map of strings: the value.
    var scalar: String?
    var line: Int?

    init(name: String?, values: [String: FieldValue] = [:], scalar: String? = nil, line: Int? = nil) {
        self.name = name
        self.values = values
        self.scalar = scalar
        self.line = line
    }

    func string(_ k: String) -> String? { if case .string(let s)? = values[k] { return s } else { return nil } }
    func double(_ k: String) -> Double? { if case .double(let d)? = values[k] { return d } else { return nil } }
    func int(_ k: String) -> Int? { if case .int(let i)? = values[k] { return i } else { return nil } }
    func list(_ k: String) -> [String]? { if case .list(let l)? = values[k] { return l } else { return nil } }
}

/// Something wrong in record `index`, at `key` (nil: the record as a whole).
struct RecordProblem: Sendable {
    var index: Int
    var key: String?
    var reason: String
}

/// A key holding records (file only).
struct StructuredKey: Sendable {
    enum Shape: Sendable { case list, map, stringMap }
    let path: [String]
    let shape: Shape
    /// What one record is, for messages ("a provider such as { name: openai, kind: openai, ... }").
    let what: String
    let keys: [RecordKey]
    /// Builds the configuration from the records; returns what is wrong instead.
    let apply: @Sendable (inout MeshdConfig, [ParsedRecord]) -> [RecordProblem]
    /// The records of a configuration, for rendering (values in `keys` order).
    let read: @Sendable (MeshdConfig) -> [ParsedRecord]

    var dotted: String { path.joined(separator: ".") }

    func label(_ r: ParsedRecord, index: Int) -> String {
        switch shape {
        case .list: return "\(dotted)[\(index)]"
        case .map, .stringMap: return "\(dotted).\(r.name ?? "?")"
        }
    }
}

extension FileSource {
    /// Reads a record's keys with their types. Unknown keys (with a suggestion), values of the
    /// wrong type and missing required keys are reported under `base`; `ok` is false if any was.
    func recordValues(_ mapping: Node.Mapping, base: String, keys: [RecordKey], what: String,
                      into state: inout LoadState)
        -> (values: [(key: RecordKey, value: FieldValue, line: Int?, node: Node)], ok: Bool, suggested: Set<String>) {
        let names = keys.map(\.name)
        var values: [(key: RecordKey, value: FieldValue, line: Int?, node: Node)] = []
        var ok = true
        // Keys suggested for a misspelt one are not also reported as missing.
        var suggested: Set<String> = []
        for (keyNode, valueNode) in mapping {
            let line = keyNode.mark?.line
            guard case .scalar(let keyScalar) = keyNode, !isNull(keyNode) else {
                state.error(source, "\(base).?", "keys must be plain names, got \(describe(keyNode, secret: false))", line: line)
                ok = false
                continue
            }
            let name = keyScalar.string
            guard let key = keys.first(where: { $0.name == name }) else {
                let suggestion = Suggest.closest(to: name, among: names)
                if let suggestion { suggested.insert(suggestion) }
                let hint = suggestion.map { "did you mean \"\($0)\"?" } ?? "known keys: \(names.joined(separator: ", "))"
                state.error(source, "\(base).\(name)", "unknown key \"\(name)\" in \(what); \(hint)", line: line)
                ok = false
                continue
            }
            switch convert(valueNode, to: key.type, secret: false) {
            case .failure(let problem):
                state.error(source, problem.index.map { "\(base).\(name)[\($0)]" } ?? "\(base).\(name)", problem.reason,
                            line: problem.line ?? valueNode.mark?.line ?? line)
                ok = false
            case .success(let value):
                values.append((key, value, valueNode.mark?.line ?? line, valueNode))
            }
        }
        for key in keys where key.required && !suggested.contains(key.name) {
            if !mapping.keys.contains(where: { $0.scalar?.string == key.name }) {
                state.error(source, "\(base).\(key.name)", "missing; required in \(what)", line: mapping.keys.first?.mark?.line)
                ok = false
            }
        }
        return (values, ok, suggested)
    }

    /// One record of `sk` (nil, reported, if it is not a map or has a bad key).
    func record(_ sk: StructuredKey, _ node: Node, base: String, name: String?, line: Int?, into state: inout LoadState) -> ParsedRecord? {
        guard case .mapping(let mapping) = node else {
            state.error(source, base, "expected \(sk.what), got \(describe(node, secret: false))", line: node.mark?.line)
            return nil
        }
        let (values, good, _) = recordValues(mapping, base: base, keys: sk.keys, what: sk.what, into: &state)
        return good ? ParsedRecord(name: name, values: Dictionary(values.map { ($0.key.name, $0.value) }) { a, _ in a }, line: line) : nil
    }

    /// Reads a structured section and applies it.
    func structured(_ sk: StructuredKey, _ node: Node, into state: inout LoadState) {
        if isNull(node) { return }
        var records: [ParsedRecord] = []
        var ok = true
        switch sk.shape {
        case .list:
            guard case .sequence(let sequence) = node else {
                state.error(source, sk.dotted, "expected a list of \(sk.what), got \(describe(node, secret: false))", line: node.mark?.line)
                return
            }
            for (index, entry) in sequence.enumerated() {
                let r = record(sk, entry, base: "\(sk.dotted)[\(index)]", name: nil, line: entry.mark?.line, into: &state)
                if let r { records.append(r) } else { ok = false }
            }
        case .map, .stringMap:
            guard case .mapping(let mapping) = node else {
                state.error(source, sk.dotted, "expected a map of \(sk.what), got \(describe(node, secret: false))", line: node.mark?.line)
                return
            }
            for (keyNode, valueNode) in mapping {
                guard case .scalar(let keyScalar) = keyNode, !isNull(keyNode), !keyScalar.string.isEmpty else {
                    state.error(source, "\(sk.dotted).?", "keys must be plain names, got \(describe(keyNode, secret: false))", line: keyNode.mark?.line)
                    ok = false
                    continue
                }
                let name = keyScalar.string
                let base = "\(sk.dotted).\(name)"
                if sk.shape == .stringMap {
                    guard case .scalar(let v) = valueNode, !isNull(valueNode) else {
                        state.error(source, base, "expected a string, got \(describe(valueNode, secret: false))", line: valueNode.mark?.line)
                        ok = false
                        continue
                    }
                    records.append(ParsedRecord(name: name, scalar: v.string, line: keyNode.mark?.line))
                    continue
                }
                let r = record(sk, valueNode, base: base, name: name, line: keyNode.mark?.line, into: &state)
                if let r { records.append(r) } else { ok = false }
            }
        }
        guard ok else { return }
        let problems = sk.apply(&state.config, records)
        for p in problems {
            let r = records[p.index]
            let label = sk.label(r, index: p.index)
            state.error(source, p.key.map { "\(label).\($0)" } ?? label, p.reason, line: r.line ?? node.mark?.line)
        }
        if problems.isEmpty { state.origins[sk.dotted] = Origin(source: source, key: sk.dotted, line: node.mark?.line) }
    }
}

extension Render {
    /// A structured section at `indent` (its own name line included).
    static func structured(_ sk: StructuredKey, _ config: MeshdConfig, indent: String, into lines: inout [String]) {
        let name = sk.path.last!
        let records = sk.read(config)
        guard !records.isEmpty else {
            lines.append("\(indent)\(name): \(sk.shape == .list ? "[]" : "{}")")
            return
        }
        lines.append("\(indent)\(name):")
        for r in records {
            if sk.shape == .stringMap {
                lines.append("\(indent)  \(quoted(r.name ?? "")): \(quoted(r.scalar ?? ""))")
                continue
            }
            let pairs = sk.keys.compactMap { k in r.values[k.name].map { "\(k.name): \(value($0, secret: false))" } }
            switch sk.shape {
            case .list: lines.append("\(indent)  - { \(pairs.joined(separator: ", ")) }")
            case .map, .stringMap: lines.append("\(indent)  \(quoted(r.name ?? "")): { \(pairs.joined(separator: ", ")) }")
            }
        }
    }
}
