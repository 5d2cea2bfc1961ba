#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Why a provider key could not be loaded. Messages name the file or variable, never the key.
public enum ProviderSecretError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The key file cannot be opened or read.
    case unreadable(path: String, reason: String)
    /// The key file grants permissions to group or others.
    case tooOpen(path: String, mode: UInt32)
    /// The environment variable is not set.
    case missingEnvironment(name: String)
    /// The file or variable holds nothing but whitespace.
    case empty(source: String)
    /// The key contains whitespace or control characters inside (two lines, a stray label).
    case malformed(source: String)

    public var description: String {
        switch self {
        case .unreadable(let path, let reason): return "cannot read key file \(path): \(reason)"
        case .tooOpen(let path, let mode):
            return "key file \(path) is accessible by group or others (mode \(String(mode & 0o777, radix: 8))); run: chmod 600 \(path)"
        case .missingEnvironment(let name): return "environment variable \(name) (key_env) is not set"
        case .empty(let source): return "\(source) holds no key"
        case .malformed(let source): return "\(source) holds more than one word: a key has no spaces, tabs or line breaks inside"
        }
    }
}

/// A provider API key, loaded from a file (`key_file`, mode 0600 or stricter) or an environment
/// variable (`key_env`). Every textual form (`description`, `debugDescription`, reflection) is
/// redacted, so the key cannot reach a log by accident; only the request builder reads it.
public struct ProviderSecret: Sendable, Equatable, CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    /// The key itself; read only where a request header is built.
    let value: String
    /// Where it came from (`file /etc/meshd/openai.key`, `env OPENAI_API_KEY`), safe to show.
    public let source: String

    /// A key given directly (tests, keys handed over by another component).
    public init(key: String, source: String = "inline") {
        value = key
        self.source = source
    }

    /// Reads the key from `path`: the file must not be accessible by group or others; surrounding
    /// whitespace and newlines are trimmed.
    public static func fromFile(_ path: String) throws(ProviderSecretError) -> ProviderSecret {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .unreadable(path: path, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw .unreadable(path: path, reason: String(cString: strerror(errno))) }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw .unreadable(path: path, reason: "not a regular file") }
        guard UInt32(st.st_mode) & 0o077 == 0 else { throw .tooOpen(path: path, mode: UInt32(st.st_mode)) }
        var bytes: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while bytes.count <= 64 * 1024 {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw .unreadable(path: path, reason: String(cString: strerror(errno))) }
            if n == 0 { break }
            bytes += buf[0..<n]
        }
        guard bytes.count <= 64 * 1024 else { throw .unreadable(path: path, reason: "larger than 64 KiB") }
        return try make(String(decoding: bytes, as: UTF8.self), source: "key file \(path)")
    }

    /// Reads the key from the environment variable `name` (surrounding whitespace trimmed).
    public static func fromEnvironment(_ name: String, environment: [String: String]? = nil) throws(ProviderSecretError) -> ProviderSecret {
        let value: String?
        if let environment {
            value = environment[name]
        } else {
            value = getenv(name).map { String(cString: $0) }
        }
        guard let value else { throw .missingEnvironment(name: name) }
        return try make(value, source: "environment variable \(name)")
    }

    static func make(_ raw: String, source: String) throws(ProviderSecretError) -> ProviderSecret {
        let key = raw.trimmedWhitespace
        guard !key.isEmpty else { throw .empty(source: source) }
        guard !key.unicodeScalars.contains(where: { $0.properties.isWhitespace || $0.value < 0x20 || $0.value == 0x7F }) else {
            throw .malformed(source: source)
        }
        return ProviderSecret(key: key, source: source)
    }

    /// Removes every occurrence of the key from `text` (provider error messages may quote it).
    public func redact(_ text: String) -> String {
        guard value.count >= 4, text.contains(value) else { return text }
        return text.replacing(value, with: "<redacted>")
    }

    public var description: String { "<redacted \(source)>" }
    public var debugDescription: String { description }
    public var customMirror: Mirror { Mirror(self, children: ["source": source], displayStyle: .struct) }
}

extension String {
    /// Without leading and trailing whitespace and newlines.
    var trimmedWhitespace: String {
        var s = Substring(self)
        while s.first?.isWhitespace == true { s = s.dropFirst() }
        while s.last?.isWhitespace == true { s = s.dropLast() }
        return String(s)
    }
}
