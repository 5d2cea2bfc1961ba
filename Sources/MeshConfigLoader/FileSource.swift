import MeshCore
import Yams

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Where a value came from, for messages about it.
struct Origin: Sendable, Hashable {
    var source: String
    var key: String
    var line: Int?
}

/// Collects issues and value origins while a configuration is assembled.
struct LoadState {
    var config: MeshdConfig
    var issues: [ConfigIssue] = []
    /// Dotted path (`http.listen`) → where its effective value was set.
    var origins: [String: Origin] = [:]

    mutating func error(_ source: String, _ key: String, _ reason: String, line: Int? = nil) {
        issues.append(ConfigIssue(source: source, key: key, reason: reason, line: line, severity: .error))
    }

    mutating func warning(_ source: String, _ key: String, _ reason: String, line: Int? = nil) {
        issues.append(ConfigIssue(source: source, key: key, reason: reason, line: line, severity: .warning))
    }
}

// MARK: - Reading the file

private func systemRead(_ fd: Int32, _ buffer: UnsafeMutableRawPointer?, _ count: Int) -> Int {
    read(fd, buffer, count)
}

enum FileRead {
    case missing
    case failed(String)
    case text(String)

    static let maximumBytes = 4 * 1024 * 1024

    static func read(path: String) -> FileRead {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            let code = errno
            if code == ENOENT { return .missing }
            return .failed("cannot open: \(String(cString: strerror(code)))")
        }
        defer { close(fd) }
        var info = stat()
        if fstat(fd, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR {
            return .failed("is a directory, not a configuration file")
        }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let count = chunk.withUnsafeMutableBytes { systemRead(fd, $0.baseAddress, $0.count) }
            if count < 0 {
                let code = errno
                if code == EINTR { continue }
                return .failed("cannot read: \(String(cString: strerror(code)))")
            }
            if count == 0 { break }
            bytes.append(contentsOf: chunk[0..<count])
            if bytes.count > maximumBytes { return .failed("is larger than \(maximumBytes) bytes") }
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            return .failed("is not valid UTF-8")
        }
        return .text(text)
    }
}

// MARK: - Walking the YAML document

/// Applies a YAML document onto a configuration, reporting every problem with its line.
struct FileSource {
    let source: String

    func apply(yaml text: String, to state: inout LoadState) {
        let root: Node?
        do {
            root = try Yams.compose(yaml: text, .basic)
        } catch let error as YamlError {
            report(error, text: text, into: &state)
            return
        } catch {
            state.error(source, "(syntax)", "cannot parse YAML: \(error)")
            return
        }
        guard let root else { return }  // empty file: all defaults
        if isNull(root) { return }
        guard case .mapping(let mapping) = root else {
            state.error(source, "(top level)", "expected a map of settings, got \(describe(root, secret: false))", line: root.mark?.line)
            return
        }
        walk(mapping, prefix: [], into: &state)
    }

    private func walk(_ mapping: Node.Mapping, prefix: [String], into state: inout LoadState) {
        let allowed = Schema.childNames(of: prefix)
        for (keyNode, valueNode) in mapping {
            let line = keyNode.mark?.line
            guard case .scalar(let keyScalar) = keyNode, !isNull(keyNode) else {
                state.error(source, dotted(prefix + ["?"]), "keys must be plain names, got \(describe(keyNode, secret: false))", line: line)
                continue
            }
            let name = keyScalar.string
            let path = prefix + [name]
            guard allowed.contains(name) else {
                let place = prefix.isEmpty ? "" : " in \(dotted(prefix))"
                let hint = Suggest.closest(to: name, among: allowed).map { "did you mean \"\($0)\"?" }
                    ?? "known keys\(place): \(allowed.joined(separator: ", "))"
                state.error(source, dotted(path), "unknown key \"\(name)\"\(place); \(hint)", line: line)
                continue
            }
            if prefix.isEmpty && name == Schema.enginesKey {
                engines(valueNode, into: &state)
            } else if let sk = Schema.structured(at: path) {
                structured(sk, valueNode, into: &state)
            } else if let field = Schema.field(at: path) {
                leaf(field, valueNode, keyLine: line, into: &state)
            } else if isNull(valueNode) {
                continue  // an empty section (all keys commented out) keeps the defaults
            } else if case .mapping(let child) = valueNode {
                walk(child, prefix: path, into: &state)
            } else {
                state.error(source, dotted(path), "expected a map, got \(describe(valueNode, secret: false))",
                            line: valueNode.mark?.line ?? line)
            }
        }
    }

    private func leaf(_ field: Field, _ node: Node, keyLine: Int?, into state: inout LoadState) {
        let key = field.dotted
        switch convert(node, to: field.type, secret: field.secret) {
        case .failure(let problem):
            state.error(source, problem.index.map { "\(key)[\($0)]" } ?? key, problem.reason,
                        line: problem.line ?? node.mark?.line ?? keyLine)
        case .success(let value):
            let problems = field.apply(&state.config, value)
            for problem in problems {
                let line = problem.index.flatMap { elementLine(node, $0) } ?? node.mark?.line ?? keyLine
                state.error(source, problem.index.map { "\(key)[\($0)]" } ?? key, problem.reason, line: line)
            }
            if problems.isEmpty {
                state.origins[key] = Origin(source: source, key: key, line: node.mark?.line ?? keyLine)
            }
        }
    }

    private func engines(_ node: Node, into state: inout LoadState) {
        if isNull(node) { return }  // `engines:` with every entry commented out: auto-detect
        guard case .sequence(let sequence) = node else {
            state.error(source, Schema.enginesKey, "expected a list of engines, got \(describe(node, secret: false))", line: node.mark?.line)
            return
        }
        var engines: [EngineConfig] = []
        var ok = true
        var urls: [String: Int] = [:]
        for (index, entry) in sequence.enumerated() {
            let base = "\(Schema.enginesKey)[\(index)]"
            if let engine = self.engine(entry, base: base, into: &state) {
                if let url = engine.url {
                    let normalized = url.lowercased().trimmingCharacters(["/"])
                    if let first = urls[normalized] {
                        state.warning(source, "\(base).url", "same engine URL as engines[\(first)]", line: entry.mark?.line)
                    } else {
                        urls[normalized] = index
                    }
                }
                engines.append(engine)
            } else {
                ok = false
            }
        }
        if ok {
            state.config.engines = engines
            state.origins[Schema.enginesKey] = Origin(source: source, key: Schema.enginesKey, line: node.mark?.line)
        }
    }

    private func engine(_ node: Node, base: String, into state: inout LoadState) -> EngineConfig? {
        guard case .mapping(let mapping) = node else {
            state.error(source, base, "expected a map such as { kind: ollama, url: \"http://127.0.0.1:11434\" }, got \(describe(node, secret: false))",
                        line: node.mark?.line)
            return nil
        }
        let keys = Schema.engineFields.map { RecordKey($0.name, $0.type) }
        let read = recordValues(mapping, base: base, keys: keys, what: "an engine", into: &state)
        var ok = read.ok
        let suggested = read.suggested
        let values = read.values.compactMap { v -> (field: EngineField, value: FieldValue, line: Int?, node: Node)? in
            Schema.engineFields.first { $0.name == v.key.name }.map { ($0, v.value, v.line, v.node) }
        }

        // `kind` decides which keys apply.
        let kindNames = EngineKind.allCases.map(\.rawValue).joined(separator: ", ")
        guard let kindEntry = values.first(where: { $0.field.name == "kind" }) else {
            if ok || !mapping.keys.contains(where: { $0.scalar?.string == "kind" }) {
                state.error(source, "\(base).kind", "missing; expected one of \(kindNames)", line: node.mark?.line)
            }
            return nil
        }
        var engine = EngineConfig(kind: .ollama)
        if let problem = kindEntry.field.apply(&engine, kindEntry.value).first {
            state.error(source, "\(base).kind", problem.reason, line: kindEntry.line)
            return nil
        }
        let kind = engine.kind
        for entry in values where entry.field.name != "kind" {
            let key = "\(base).\(entry.field.name)"
            guard entry.field.kinds.contains(kind) else {
                let why = entry.field.name == "url"
                    ? "ignored: meshd chooses the URL of a managed llama.cpp engine"
                    : "ignored: \(entry.field.name) applies only to kind \(entry.field.kinds.map(\.rawValue).sorted().joined(separator: "/"))"
                state.warning(source, key, why, line: entry.line)
                continue
            }
            for problem in entry.field.apply(&engine, entry.value) {
                let line = problem.index.flatMap { elementLine(entry.node, $0) } ?? entry.line
                state.error(source, problem.index.map { "\(key)[\($0)]" } ?? key, problem.reason, line: line)
                ok = false
            }
        }
        for field in Schema.engineFields where field.requiredFor.contains(kind) && !suggested.contains(field.name) {
            if !values.contains(where: { $0.field.name == field.name }) && !mapping.keys.contains(where: { $0.scalar?.string == field.name }) {
                state.error(source, "\(base).\(field.name)", "required for kind \(kind.rawValue)", line: node.mark?.line)
                ok = false
            }
        }
        return ok ? engine : nil
    }

    // MARK: conversions

    struct ConvertProblem: Error {
        var reason: String
        var index: Int? = nil
        var line: Int? = nil
    }

    func convert(_ node: Node, to type: FieldType, secret: Bool) -> Result<FieldValue, ConvertProblem> {
        func mismatch(_ node: Node, index: Int? = nil) -> ConvertProblem {
            let expected = index == nil ? type.expectation : "a string"
            return ConvertProblem(reason: "expected \(expected), got \(describe(node, secret: secret))", index: index, line: node.mark?.line)
        }
        switch type {
        case .string:
            guard case .scalar(let scalar) = node, !isNull(node) else { return .failure(mismatch(node)) }
            return .success(.string(scalar.string))
        case .int:
            guard tagName(node) == .int, let number = node.int else {
                if tagName(node) == .int {
                    return .failure(ConvertProblem(reason: "integer \(node.scalar?.string ?? "") is too large", line: node.mark?.line))
                }
                return .failure(mismatch(node))
            }
            return .success(.int(number))
        case .double:
            let tag = tagName(node)
            guard tag == .int || tag == .float, let number = node.float else { return .failure(mismatch(node)) }
            return .success(.double(number))
        case .bool:
            guard tagName(node) == .bool, let flag = node.scalar.flatMap({ ScalarTags.bool($0.string) }) else { return .failure(mismatch(node)) }
            return .success(.bool(flag))
        case .stringList:
            if isNull(node) { return .success(.list([])) }
            guard case .sequence(let sequence) = node else { return .failure(mismatch(node)) }
            var items: [String] = []
            for (index, element) in sequence.enumerated() {
                guard case .scalar(let scalar) = element, !isNull(element) else {
                    return .failure(mismatch(element, index: index))
                }
                items.append(scalar.string)
            }
            return .success(.list(items))
        }
    }

    func elementLine(_ node: Node, _ index: Int) -> Int? {
        guard case .sequence(let sequence) = node, index < sequence.count else { return nil }
        return sequence[index].mark?.line
    }

    /// A node's tag; plain scalars are resolved here (files are composed with Yams' basic resolver,
    /// see ``ScalarTags``).
    func tagName(_ node: Node) -> Tag.Name {
        let name = Tag.Name(rawValue: node.tag.rawValue)
        if case .scalar(let s) = node, s.style == .plain || s.style == .any, name == .str { return ScalarTags.resolve(s.string) }
        return name
    }

    func isNull(_ node: Node) -> Bool {
        guard case .scalar = node else { return false }
        return tagName(node) == .null
    }

    /// "a string (\"abc\")", "a list", ...; never quotes a secret.
    func describe(_ node: Node, secret: Bool) -> String {
        switch node {
        case .mapping: return "a map"
        case .sequence: return "a list"
        case .alias: return "an alias"
        case .scalar(let scalar):
            let what: String
            switch tagName(node) {
            case .str: what = "a string"
            case .int: what = "an integer"
            case .float: what = "a number"
            case .bool: what = "a boolean"
            case .null: return "an empty value"
            case .timestamp: what = "a timestamp"
            default: what = "a value tagged \(node.tag.rawValue)"
            }
            return secret ? what : "\(what) (\(Render.quoted(scalar.string)))"
        }
    }

    func dotted(_ path: [String]) -> String { path.joined(separator: ".") }

    // MARK: syntax errors

    private func report(_ error: YamlError, text: String, into state: inout LoadState) {
        // Yams' own descriptions quote the offending source line; that line could hold an
        // API key, so only the problem and its position are reported.
        func context(_ context: YamlError.Context?) -> String {
            guard let context else { return "" }
            return " (\(context.text) at line \(context.mark.line))"
        }
        switch error {
        case .scanner(let ctx, let problem, let mark, _),
             .parser(let ctx, let problem, let mark, _),
             .composer(let ctx, let problem, let mark, _):
            let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
            let offending = mark.line >= 1 && mark.line <= lines.count ? lines[mark.line - 1] : ""
            let tabs = offending.prefix { $0 == " " || $0 == "\t" }.contains("\t") ? "; indent with spaces, not tabs" : ""
            state.error(source, "(syntax)", "YAML syntax error at column \(mark.column): \(problem)\(context(ctx))\(tabs)", line: mark.line)
        case .reader(let problem, let offset, _, _):
            let line = offset.map { offset in text.prefix(offset).reduce(1) { $1 == "\n" ? $0 + 1 : $0 } }
            state.error(source, "(syntax)", "cannot read YAML: \(problem)", line: line)
        case .duplicatedKeysInMapping(let duplicates, let ctx):
            let names = duplicates.map { Render.quoted($0) }.joined(separator: ", ")
            state.error(source, duplicates.first ?? "(syntax)", "duplicate key \(names) in one map", line: ctx.mark.line)
        default:
            state.error(source, "(syntax)", "cannot parse YAML: \(error)")
        }
    }
}
