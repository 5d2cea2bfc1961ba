import MeshCore

/// Value checks shared by the file and the environment. Each returns the reason a value is
/// wrong, or nil. Reasons for secret values must never quote the value.
enum Check {
    /// Node names and model aliases: non-empty, no whitespace or control characters.
    static func name(_ text: String) -> String? {
        if text.isEmpty { return "must not be empty" }
        if text.unicodeScalars.contains(where: { $0.properties.isWhitespace || $0.value < 0x20 || $0.value == 0x7F }) {
            return "must not contain whitespace or control characters"
        }
        return nil
    }

    /// File-system paths: non-empty, no NUL or line breaks.
    static func path(_ text: String) -> String? {
        if text.trimmingCharacters([" ", "\t"]).isEmpty { return "must not be empty" }
        if text.unicodeScalars.contains(where: { $0.value < 0x20 }) { return "must not contain control characters" }
        return nil
    }

    /// Client API keys. Never quotes the key.
    static func apiKey(_ text: String) -> String? {
        if text.isEmpty { return "api key must not be empty" }
        if text == Schema.redacted {
            return "api key is the redaction placeholder \"\(Schema.redacted)\" (copied from --check-config output?); put the real key here"
        }
        if text.unicodeScalars.contains(where: { $0.properties.isWhitespace || $0.value < 0x20 || $0.value == 0x7F }) {
            return "api key must not contain whitespace or control characters"
        }
        return nil
    }

    /// `host:port`, `[v6]:port`, or `:port` (all interfaces) when `allowEmptyHost`.
    static func hostPort(_ text: String, allowEmptyHost: Bool) -> Result<HostPort, FieldProblem> {
        let example = allowEmptyHost ? "127.0.0.1:11435, [::1]:11435 or :11435" : "198.18.0.2:11436 or [fd00::2]:11436"
        let trimmed = text.trimmingCharacters([" ", "\t"])
        if trimmed.contains("://") {
            return .failure(FieldProblem(reason: "expected host:port without a scheme (e.g. \(example)), got \"\(text)\""))
        }
        // Diagnose the port first so an out-of-range port is reported as such.
        if let colon = trimmed.lastIndex(of: ":") {
            let portText = trimmed[trimmed.index(after: colon)...]
            if !portText.isEmpty, portText.allSatisfy(\.isASCIIDigit) {
                let port = Int(portText) ?? Int.max
                if !(1...65535).contains(port) {
                    return .failure(FieldProblem(reason: "port \(portText) is out of range 1...65535"))
                }
            }
        }
        guard let hostPort = HostPort(parsing: trimmed) else {
            return .failure(FieldProblem(reason: "expected host:port (e.g. \(example)), got \"\(text)\""))
        }
        let explicitHost = !(trimmed.hasPrefix(":"))
        if !allowEmptyHost && !explicitHost {
            return .failure(FieldProblem(reason: "needs a host (e.g. \(example)), got \"\(text)\""))
        }
        if hostPort.host.isEmpty || hostPort.host.unicodeScalars.contains(where: { $0.properties.isWhitespace || $0 == "/" }) {
            return .failure(FieldProblem(reason: "expected host:port (e.g. \(example)), got \"\(text)\""))
        }
        return .success(hostPort)
    }

    /// Engine base URLs: `http://` or `https://`, a host, a port in range.
    static func url(_ original: String) -> String? {
        // A URL with user:password@ is not quoted back.
        let text = original
        let shown = original.contains("@") ? "<URL with credentials>" : original
        let lower = text.lowercased()
        let rest: Substring
        if lower.hasPrefix("http://") {
            rest = text.dropFirst("http://".count)
        } else if lower.hasPrefix("https://") {
            rest = text.dropFirst("https://".count)
        } else {
            return "must start with http:// or https://, got \"\(shown)\""
        }
        let authority = rest.prefix { $0 != "/" && $0 != "?" && $0 != "#" }
        if authority.contains("@") { return "must not contain credentials; use api_key_file" }
        var host = Substring(authority)
        var port: Substring? = nil
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { return "has a malformed IPv6 host: \"\(shown)\"" }
            host = authority[authority.index(after: authority.startIndex)..<close]
            let after = authority[authority.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { return "has a malformed host: \"\(shown)\"" }
                port = after.dropFirst()
            }
        } else if let colon = authority.lastIndex(of: ":") {
            host = authority[..<colon]
            port = authority[authority.index(after: colon)...]
        }
        if host.isEmpty { return "has no host: \"\(shown)\"" }
        if host.unicodeScalars.contains(where: { $0.properties.isWhitespace || $0.value < 0x20 }) {
            return "has an invalid host: \"\(shown)\""
        }
        if let port {
            guard !port.isEmpty, port.allSatisfy(\.isASCIIDigit), let number = Int(port), (1...65535).contains(number) else {
                return "has an invalid port (1...65535 expected): \"\(shown)\""
            }
        }
        if text.unicodeScalars.contains(where: { $0.properties.isWhitespace || $0.value < 0x20 }) {
            return "must not contain whitespace: \"\(shown)\""
        }
        return nil
    }
}

extension Character {
    var isASCIIDigit: Bool { ("0"..."9").contains(self) }
}

extension String {
    func trimmingCharacters(_ set: Set<Character>) -> String {
        var s = Substring(self)
        while let f = s.first, set.contains(f) { s = s.dropFirst() }
        while let l = s.last, set.contains(l) { s = s.dropLast() }
        return String(s)
    }
}

/// "Did you mean" suggestions.
enum Suggest {
    /// The candidate closest to `word` within edit distance 2, if any (ties: first listed).
    static func closest(to word: String, among candidates: [String]) -> String? {
        var best: (name: String, distance: Int)? = nil
        for candidate in candidates {
            let distance = editDistance(word.lowercased(), candidate.lowercased())
            if distance <= 2, distance < (best?.distance ?? Int.max) { best = (candidate, distance) }
        }
        return best?.name
    }

    /// `; did you mean "x"?`, or empty.
    static func phrase(for word: String, among candidates: [String]) -> String {
        closest(to: word, among: candidates).map { "; did you mean \"\($0)\"?" } ?? ""
    }

    /// Levenshtein distance over characters.
    static func editDistance(_ a: String, _ b: String) -> Int {
        let a = Array(a), b = Array(b)
        if a.isEmpty { return b.count }
        if b.isEmpty { return a.count }
        var previous = Array(0...b.count)
        var current = [Int](repeating: 0, count: b.count + 1)
        for i in 1...a.count {
            current[0] = i
            for j in 1...b.count {
                let substitution = previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)
                current[j] = min(previous[j] + 1, current[j - 1] + 1, substitution)
            }
            swap(&previous, &current)
        }
        return previous[b.count]
    }
}
