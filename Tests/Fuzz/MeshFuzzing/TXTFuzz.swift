import MeshCore

/// mDNS TXT records. Layout: the record's RDATA as it is on the wire, a sequence of
/// length-prefixed strings (one length byte each). Each string is split at its first `=` into key
/// and value as Avahi does (a key stops at a NUL byte; an empty key is dropped; a later key wins).
enum TXTFuzz {
    static func pairs(_ bytes: [UInt8]) -> [String: String] {
        var out: [String: String] = [:]
        var i = 0
        var count = 0
        while i < bytes.count, count < 64 {  // meshd reads at most 64 strings of a record
            let n = Int(bytes[i])
            let s = bytes[(i + 1)..<min(bytes.count, i + 1 + n)]
            i += 1 + n
            count += 1
            let eq = s.firstIndex(of: UInt8(ascii: "=")) ?? s.endIndex
            let keyBytes = s[..<eq].prefix { $0 != 0 }
            let value = eq < s.endIndex ? String(decoding: s[(eq + 1)...], as: UTF8.self) : ""
            let key = String(decoding: keyBytes, as: UTF8.self)
            if !key.isEmpty { out[key] = value }
        }
        return out
    }

    static func run(_ bytes: [UInt8]) {
        let txt = pairs(bytes)
        for own in ["", "fuzz-own-fingerprint"] {
            switch DiscoveryTXT.decode(txt, ownID: "fuzz-own-node", ownFingerprint: own) {
            case .failure(let why):
                _ = why.description
            case .success(let record):
                invariant(record.nodeID != "fuzz-own-node", "accepted this node's own record")
                invariant((1...65535).contains(record.meshPort), "mesh port \(record.meshPort) out of range")
                invariant(record.vramTotalBytes >= 0, "negative VRAM")
                // What this node would publish for such a record decodes to the same node.
                let again = TXTFuzz.pairs(wire(record.encode()))
                guard case .success(let back) = DiscoveryTXT.decode(again, ownID: "\0", ownFingerprint: own) else {
                    invariant(false, "a record re-encoded from an accepted one is rejected: \(record.encode())")
                    return
                }
                invariant(back.nodeID == record.nodeID && back.meshPort == record.meshPort && back.httpPort == record.httpPort,
                          "round trip changed the record")
            }
        }
    }

    /// Strings as TXT RDATA (strings over 255 bytes are cut, as a DNS record would have to).
    static func wire(_ strings: [String]) -> [UInt8] {
        var out: [UInt8] = []
        for s in strings {
            let b = Array(s.utf8.prefix(255))
            out.append(UInt8(b.count))
            out += b
        }
        return out
    }
}
