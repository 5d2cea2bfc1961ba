import Foundation
import MeshCore
import MeshZMQ

/// Files behind `trust: keys`: this node's own CURVE keypair and the list of trusted node keys.
enum TrustStore {
    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    /// Loads the node keypair (one line: the secret key in Z85), creating it with mode 0600 when
    /// missing. Refuses a file readable by group or others.
    static func loadOrCreateNodeKey(path: String) throws -> CurveKeyPair {
        let fm = FileManager.default
        if fm.fileExists(atPath: path) {
            let attrs = try fm.attributesOfItem(atPath: path)
            if let mode = (attrs[.posixPermissions] as? NSNumber)?.intValue, mode & 0o077 != 0 {
                throw Failure(description: "\(path): mode \(String(mode, radix: 8)) lets others read this node's key; chmod 600 \(path)")
            }
            let text = try String(contentsOfFile: path, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
            guard let secret = Z85.decode(text), secret.count == CurveKeyPair.keyLength else {
                throw Failure(description: "\(path): not a Z85-encoded 32-byte CURVE secret key")
            }
            return try CurveKeyPair.fromSecretKey(secret)
        }
        let pair = try CurveKeyPair.generate()
        guard let z85 = Z85.encode(pair.secretKey) else { throw Failure(description: "cannot encode a node key") }
        try writePrivate(path: path, text: z85 + "\n")
        return pair
    }

    /// A public key as people handle it: 64 hex digits (shell-safe, unlike Z85).
    static func hex(_ key: [UInt8]) -> String {
        key.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
    }

    /// Parses a public key written as 64 hex digits or as 40 Z85 characters.
    static func parseKey(_ text: String) -> [UInt8]? {
        let t = text.trimmingCharacters(in: .whitespaces)
        if t.count == 64 {
            var out: [UInt8] = []
            var i = t.startIndex
            while i < t.endIndex {
                let j = t.index(i, offsetBy: 2)
                guard let b = UInt8(t[i..<j], radix: 16) else { return nil }
                out.append(b)
                i = j
            }
            return out
        }
        if t.count == 40, let k = Z85.decode(t), k.count == CurveKeyPair.keyLength { return k }
        return nil
    }

    /// Trusted node keys: one public key (hex or Z85) a line, optionally followed by a name; `#` comments.
    static func loadTrusted(path: String) throws -> [(key: [UInt8], name: String)] {
        guard FileManager.default.fileExists(atPath: path) else { return [] }
        let text = try String(contentsOfFile: path, encoding: .utf8)
        var out: [(key: [UInt8], name: String)] = []
        for (n, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") { continue }
            let parts = line.split(separator: " ", maxSplits: 1)
            guard let key = parseKey(String(parts[0])) else {
                throw Failure(description: "\(path):\(n + 1): not a public key (64 hex digits or 40 Z85 characters)")
            }
            out.append((key, parts.count > 1 ? String(parts[1]).trimmingCharacters(in: .whitespaces) : ""))
        }
        return out
    }

    static func saveTrusted(path: String, _ entries: [(key: [UInt8], name: String)]) throws {
        let lines = entries.map { e in hex(e.key) + (e.name.isEmpty ? "" : " " + e.name) }
        try writePrivate(path: path, text: "# meshd trusted node keys (meshctl trust)\n" + lines.joined(separator: "\n") + "\n")
    }

    /// Writes `text` to `path` atomically with mode 0600 from the start.
    static func writePrivate(path: String, text: String) throws {
        let dir = (path as NSString).deletingLastPathComponent
        if !dir.isEmpty { try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) }
        let tmp = path + ".tmp-\(getpid())"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw Failure(description: "\(tmp): \(String(cString: strerror(errno)))") }
        let bytes = Array(text.utf8)
        let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        _ = fchmod(fd, 0o600)
        _ = fsync(fd)
        close(fd)
        guard n == bytes.count, rename(tmp, path) == 0 else {
            unlink(tmp)
            throw Failure(description: "\(path): cannot write")
        }
    }
}
