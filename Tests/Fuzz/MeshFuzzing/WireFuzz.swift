import MeshCore

/// Mesh wire messages. Layout: frames, each a 3-byte big-endian length and that many bytes (the
/// last frame takes what is left when its length runs past the end). ZeroMQ hands meshd the
/// frames of one message; meshd decodes them and then reads the header by type.
enum WireFuzz {
    static func frames(_ bytes: [UInt8]) -> [[UInt8]] {
        var out: [[UInt8]] = []
        var i = 0
        while i + 3 <= bytes.count, out.count < 8 {
            let n = Int(bytes[i]) << 16 | Int(bytes[i + 1]) << 8 | Int(bytes[i + 2])
            let end = min(bytes.count, i + 3 + n)
            out.append(Array(bytes[(i + 3)..<end]))
            i = end
        }
        return out
    }

    /// The layout above, for seeds.
    static func layout(_ frames: [[UInt8]]) -> [UInt8] {
        var out: [UInt8] = []
        for f in frames {
            out += [UInt8(truncatingIfNeeded: f.count >> 16), UInt8(truncatingIfNeeded: f.count >> 8), UInt8(truncatingIfNeeded: f.count)]
            out += f
        }
        return out
    }

    static func run(_ bytes: [UInt8]) {
        let message: WireMessage
        do {
            message = try MeshWireCodec.decode(frames(bytes), maxPayloadBytes: 1 << 20)
        } catch {
            _ = error.description
            return
        }
        // Whatever was accepted encodes to frames that decode again, to a message that encodes to
        // the same frames (a first encoding may normalise: a number too large for a Double is null).
        let encoded = MeshWireCodec.encode(message)
        guard let back = try? MeshWireCodec.decode(encoded, maxPayloadBytes: 1 << 20) else {
            invariant(false, "re-encoded \(message.type) message is rejected")
            return
        }
        invariant(MeshWireCodec.encode(back) == encoded, "round trip changed a \(message.type) message")
        _ = message.requestID
        _ = message.tunnelID
        // What the receiver reads from each kind of message.
        switch message.type {
        case .state:
            if let s = try? JSONValueCoding.decode(NodeState.self, from: message.header) {
                _ = s.modelNames
                _ = s.load
                _ = try? JSONValueCoding.encode(s)
            }
        case .load:
            if let l = try? JSONValueCoding.decode(NodeLoad.self, from: message.header) { _ = try? JSONValueCoding.encode(l) }
        case .cacheDelta:
            if let d = CacheDeltaMessage(message) {
                let again = CacheDeltaMessage(d.wire)
                invariant(again == d, "a cache delta does not survive its own encoding")
            }
        case .keyUsage:
            if let r = KeyUsageReport(message) {
                invariant(KeyUsageReport(r.wire) == r, "a key usage report does not survive its own encoding")
                // What a receiver does with it: sums over the window, then its own report.
                var limiter = RateLimiter(node: "fuzz", instance: "i")
                limiter.receive(r, nowNanos: 1_800_000_000_000_000_000)
                for e in r.entries.prefix(4) { _ = limiter.used(key: e.key, nowNanos: 1_800_000_000_000_000_000) }
                _ = limiter.report(nowNanos: 1_800_000_001_000_000_000)
            }
        default:
            break
        }
    }
}
