import Testing
@testable import MeshCore

@Suite struct EventStreamTests {
    /// A Bedrock-style event message.
    static func event(_ type: String, _ payload: String) -> EventStreamMessage {
        EventStreamMessage(headers: [(":event-type", .string(type)), (":content-type", .string("application/json")), (":message-type", .string("event"))],
                           payload: Array(payload.utf8))
    }

    @Test func crc32MatchesZlib() {
        #expect(CRC32.checksum(Array("123456789".utf8)) == 0xCBF4_3926)
        #expect(CRC32.checksum([UInt8]()) == 0)
    }

    /// AWS's "empty message" vector: 16 bytes, both CRCs known.
    @Test func emptyMessageVector() throws {
        let wire: [UInt8] = [0, 0, 0, 0x10, 0, 0, 0, 0, 0x05, 0xC2, 0x48, 0xEB, 0x7D, 0x98, 0xC8, 0xFF]
        #expect(EventStreamMessage(headers: [], payload: []).encoded() == wire)
        var d = EventStreamDecoder()
        #expect(try d.feed(wire) == [EventStreamMessage(headers: [], payload: [])])
        #expect(d.pendingBytes == 0)
    }

    @Test func everyHeaderTypeRoundTrips() throws {
        let m = EventStreamMessage(headers: [
            ("t", .bool(true)), ("f", .bool(false)), ("b", .byte(-3)), ("s", .short(-300)), ("i", .integer(70_000)),
            ("l", .long(-5_000_000_000)), ("bytes", .bytes([0, 1, 255])), ("str", .string("héllo")), ("ts", .timestamp(1_440_938_160_000)),
            ("u", .uuid(Array(0..<16))),
        ], payload: Array(#"{"a":1}"#.utf8))
        var d = EventStreamDecoder()
        let out = try d.feed(m.encoded())
        #expect(out == [m])
        #expect(out.first?.string("str") == "héllo" && out.first?.string("i") == nil)
    }

    /// Three messages split in two at every byte boundary, and fed one byte at a time, decode the same.
    @Test func splitAtEveryByteBoundary() throws {
        let messages = [Self.event("messageStart", #"{"role":"assistant"}"#), Self.event("contentBlockDelta", #"{"delta":{"text":"Hi 😀"}}"#),
                        Self.event("messageStop", #"{"stopReason":"end_turn"}"#)]
        let wire = messages.flatMap { $0.encoded() }
        for k in 0...wire.count {
            var d = EventStreamDecoder()
            let out = try d.feed(wire[..<k]) + d.feed(wire[k...])
            #expect(out == messages, "split at \(k)")
            #expect(d.pendingBytes == 0)
        }
        var d = EventStreamDecoder()
        var out: [EventStreamMessage] = []
        for b in wire { out += try d.feed([b]) }
        #expect(out == messages)
        // A message cut short stays pending: nothing is made up from it.
        var cut = EventStreamDecoder()
        #expect(try cut.feed(wire.dropLast(3)).count == 2 && cut.pendingBytes == messages[2].encoded().count - 3)
    }

    @Test func badCRCsAndLengthsAreRejected() throws {
        let wire = Self.event("contentBlockDelta", #"{"delta":{"text":"x"}}"#).encoded()
        func error(_ bytes: [UInt8]) -> String? {
            var d = EventStreamDecoder()
            do {
                _ = try d.feed(bytes)
                return nil
            } catch {
                // The decoder stays failed.
                #expect(throws: EventStreamError.self) { try d.feed(Self.event("x", "{}").encoded()) }
                return error.description
            }
        }
        var payloadFlipped = wire
        payloadFlipped[wire.count - 6] ^= 0x01
        #expect(error(payloadFlipped)?.contains("message CRC mismatch") == true)
        var preludeFlipped = wire
        preludeFlipped[3] ^= 0x01
        #expect(error(preludeFlipped)?.contains("prelude CRC mismatch") == true)
        var crcFlipped = wire
        crcFlipped[wire.count - 1] ^= 0x80
        #expect(error(crcFlipped)?.contains("message CRC mismatch") == true)
        // A consistent prelude that claims 32 MiB, or headers longer than the message.
        for (total, headers) in [(UInt64(32 << 20), UInt64(0)), (20, 10)] {
            var p = EventStreamMessage.bigEndian(total, 4) + EventStreamMessage.bigEndian(headers, 4)
            p += EventStreamMessage.bigEndian(UInt64(CRC32.checksum(p)), 4)
            #expect(error(p)?.contains("malformed or too large") == true)
        }
        // An unknown header value type, in a message whose CRCs are right.
        var m = EventStreamMessage(headers: [("x", .bool(true))], payload: []).encoded()
        m[14] = 42
        m.replaceSubrange(m.count - 4..<m.count, with: EventStreamMessage.bigEndian(UInt64(CRC32.checksum(m.dropLast(4))), 4))
        #expect(error(m)?.contains("unknown value type 42") == true)
    }
}
