/// Copying a stored model between nodes over the mesh, the pure part: where to copy from, the
/// tunnel targets and the header lines both ends exchange, where a copy resumes, and the progress
/// lines clients read (Ollama's pull format). The bytes travel in a mesh tunnel (CURVE-encrypted,
/// credit flow control); see "Model copy" in docs/PROTOCOL.md.
public enum ModelCopyPlan {
    /// A node whose store holds the model, as the copying node sees it.
    public struct Holder: Sendable, Hashable {
        public var node: String
        /// Measured round trip to it (seconds); nil: not measured.
        public var hopSeconds: Double?
        public var bytes: Int64?
        public init(node: String, hopSeconds: Double?, bytes: Int64?) {
            self.node = node
            self.hopSeconds = hopSeconds
            self.bytes = bytes
        }
    }

    /// The nearest holder other than `exclude`: the shortest measured hop (unmeasured last), then by name.
    public static func source(_ holders: [Holder], exclude: String) -> Holder? {
        holders.filter { $0.node != exclude }.min { a, b in
            let (x, y) = (a.hopSeconds ?? .infinity, b.hopSeconds ?? .infinity)
            return x != y ? x < y : a.node < b.node
        }
    }

    /// Tunnel targets: `model/NAME` sends a stored model's bytes; `pull/NAME` asks a node to copy
    /// the model into its own store (from the nearest holder), with progress lines back;
    /// `delete/NAME` asks it to delete the model from its store; `copy/SOURCE/DESTINATION` asks it
    /// to store its SOURCE again under another name (Ollama's `/api/copy`).
    public enum Target: Sendable, Hashable {
        case send(model: String)
        case pull(model: String)
        case delete(model: String)
        case copy(source: String, destination: String)

        public var string: String {
            switch self {
            case .send(let m): "model/" + m
            case .pull(let m): "pull/" + m
            case .delete(let m): "delete/" + m
            case .copy(let s, let d): "copy/" + s + "/" + d
            }
        }

        /// Parses a tunnel target; nil for other targets and for names a store file could not have.
        public init?(_ target: String) {
            if target.hasPrefix("copy/") {
                let parts = target.dropFirst(5).split(separator: "/", omittingEmptySubsequences: false)
                guard parts.count == 2, ModelCopyPlan.isStoreName(String(parts[0])), ModelCopyPlan.isStoreName(String(parts[1])) else { return nil }
                self = .copy(source: String(parts[0]), destination: String(parts[1]))
                return
            }
            for (prefix, make) in [("model/", Target.send), ("pull/", Target.pull), ("delete/", Target.delete)] {
                guard target.hasPrefix(prefix) else { continue }
                let name = String(target.dropFirst(prefix.count))
                guard ModelCopyPlan.isStoreName(name) else { return nil }
                self = make(name)
                return
            }
            return nil
        }
    }

    /// A name a store file can carry: non-empty, no path separators, no leading dot, no control characters.
    public static func isStoreName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count <= 255 && !name.hasPrefix(".") && !name.contains("/")
            && !name.unicodeScalars.contains { $0.value < 0x20 || $0.value == 0x7F }
    }

    /// The opener's first line: copy from this byte on.
    public struct Request: Sendable, Hashable {
        public var offset: Int64
        public init(offset: Int64) { self.offset = offset }
        public var line: [UInt8] { JSON.object([("offset", .int(offset))]).serialized() + [10] }
        public init?(line: [UInt8]) {
            guard let j = try? JSONParser.parse(line), let o = j["offset"]?.intValue, o >= 0 else { return nil }
            offset = Int64(o)
        }
    }

    /// The sender's first line: the whole file's size and sha256 (hex), and the offset its bytes
    /// start at (0 when the asked one was past the end); or why it cannot send.
    public struct Header: Sendable, Hashable {
        public var size: Int64
        public var sha256: String
        public var offset: Int64
        public var error: String?

        public init(size: Int64, sha256: String, offset: Int64) {
            self.size = size
            self.sha256 = sha256
            self.offset = offset
        }

        public init(error: String) {
            self.size = 0
            self.sha256 = ""
            self.offset = 0
            self.error = error
        }

        public var line: [UInt8] {
            let j: JSON = error.map { ["error": .string($0)] }
                ?? ["size": .int(size), "sha256": .string(sha256), "offset": .int(offset)]
            return j.serialized() + [10]
        }

        public init?(line: [UInt8]) {
            guard let j = try? JSONParser.parse(line) else { return nil }
            if let e = j["error"]?.stringValue { self.init(error: e); return }
            guard let size = j["size"]?.intValue.map(Int64.init), let digest = j["sha256"]?.stringValue,
                  let offset = j["offset"]?.intValue.map(Int64.init),
                  size >= 0, offset >= 0, offset <= size, digest.utf8.count == 64,
                  digest.utf8.allSatisfy({ ($0 >= 48 && $0 <= 57) || ($0 >= 97 && $0 <= 102) }) else { return nil }
            self.init(size: size, sha256: digest, offset: offset)
        }
    }

    /// Where the sender starts for a request at `offset` of a `size`-byte file: there, or at 0 when
    /// it is past the end (the receiver's partial file is not a prefix of this one).
    public static func startOffset(requested: Int64, size: Int64) -> Int64 {
        requested >= 0 && requested <= size ? requested : 0
    }

    /// The first line of the bytes in `buffer` (without its newline) and what follows it; nil
    /// while no newline has come. A line over `limit` bytes is an error (nil line, empty rest).
    public static func splitLine(_ buffer: [UInt8], limit: Int = 4096) -> (line: [UInt8], rest: [UInt8])?? {
        guard let nl = buffer.firstIndex(of: 10) else { return buffer.count > limit ? .some(nil) : nil }
        guard nl <= limit else { return .some(nil) }
        return .some((Array(buffer[..<nl]), Array(buffer[(nl + 1)...])))
    }
}

/// Ollama's `/api/pull` progress lines, as its clients (Open WebUI, the `ollama` CLI and libraries) read them.
public enum OllamaPullProgress {
    public static let manifest: JSON = ["status": "pulling manifest"]
    public static let verifying: JSON = ["status": "verifying sha256 digest"]
    public static let writing: JSON = ["status": "writing manifest"]
    public static let success: JSON = ["status": "success"]

    /// One layer's progress: `pulling <short digest>` with the digest, total and completed bytes.
    public static func layer(sha256: String, total: Int64, completed: Int64) -> JSON {
        ["status": .string("pulling \(sha256.prefix(12))"), "digest": .string("sha256:" + sha256),
         "total": .int(total), "completed": .int(completed)]
    }

    /// The line that ends a failed pull (Ollama sends `{"error": ...}`).
    public static func error(_ message: String) -> JSON { ["error": .string(message)] }
}
