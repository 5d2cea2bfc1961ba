/// The AWS event-stream binary framing (`application/vnd.amazon.eventstream`), as Bedrock's
/// `ConverseStream` sends it. A message is
///
///     total length (UInt32 BE) | headers length (UInt32 BE) | prelude CRC32 (of the 8 bytes before)
///     headers | payload | message CRC32 (of every byte before it)
///
/// and each header is `name length (UInt8) | name | value type (UInt8) | value`, the value's size
/// given by its type (strings and byte arrays carry a UInt16 BE length first).
public struct EventStreamMessage: Sendable, Equatable {
    /// A header value, by the wire type it was sent as.
    public enum HeaderValue: Sendable, Equatable {
        case bool(Bool)
        case byte(Int8)
        case short(Int16)
        case integer(Int32)
        case long(Int64)
        case bytes([UInt8])
        case string(String)
        /// Milliseconds since the Unix epoch.
        case timestamp(Int64)
        case uuid([UInt8])
    }

    /// Headers in wire order (names are case-sensitive, e.g. `:event-type`).
    public var headers: [(String, HeaderValue)]
    public var payload: [UInt8]

    public init(headers: [(String, HeaderValue)], payload: [UInt8]) {
        self.headers = headers
        self.payload = payload
    }

    /// The value of header `name` when it is a string.
    public func string(_ name: String) -> String? {
        for (n, v) in headers where n == name {
            if case .string(let s) = v { return s }
        }
        return nil
    }

    public static func == (a: EventStreamMessage, b: EventStreamMessage) -> Bool {
        a.payload == b.payload && a.headers.elementsEqual(b.headers, by: { $0.0 == $1.0 && $0.1 == $1.1 })
    }

    /// The message on the wire, both CRCs included.
    public func encoded() -> [UInt8] {
        var h: [UInt8] = []
        for (name, value) in headers {
            let n = Array(name.utf8)
            h.append(UInt8(truncatingIfNeeded: n.count))
            h += n
            switch value {
            case .bool(let b): h.append(b ? 0 : 1)
            case .byte(let v): h += [2, UInt8(bitPattern: v)]
            case .short(let v): h.append(3); h += Self.bigEndian(UInt64(UInt16(bitPattern: v)), 2)
            case .integer(let v): h.append(4); h += Self.bigEndian(UInt64(UInt32(bitPattern: v)), 4)
            case .long(let v): h.append(5); h += Self.bigEndian(UInt64(bitPattern: v), 8)
            case .bytes(let b): h.append(6); h += Self.bigEndian(UInt64(b.count), 2) + b
            case .string(let s): let b = Array(s.utf8); h.append(7); h += Self.bigEndian(UInt64(b.count), 2) + b
            case .timestamp(let v): h.append(8); h += Self.bigEndian(UInt64(bitPattern: v), 8)
            case .uuid(let b): h.append(9); h += b
            }
        }
        let total = 12 + h.count + payload.count + 4
        var out = Self.bigEndian(UInt64(total), 4) + Self.bigEndian(UInt64(h.count), 4)
        out += Self.bigEndian(UInt64(CRC32.checksum(out)), 4)
        out += h
        out += payload
        out += Self.bigEndian(UInt64(CRC32.checksum(out)), 4)
        return out
    }

    static func bigEndian(_ v: UInt64, _ bytes: Int) -> [UInt8] {
        (0..<bytes).reversed().map { UInt8(truncatingIfNeeded: v >> (UInt64($0) * 8)) }
    }
}

/// Why event-stream bytes were rejected.
public struct EventStreamError: Error, Sendable, Equatable, CustomStringConvertible {
    public var description: String
}

/// Splits event-stream bytes, arriving in chunks of any size, into messages, checking both CRCs
/// and every length. After an error the decoder stays failed: the stream cannot be resynchronised.
public struct EventStreamDecoder: Sendable {
    /// The largest message accepted (the format's limit is 16 MiB; a Bedrock event is far smaller).
    public static let maxMessageBytes = 16 * 1024 * 1024
    /// The format's limit on the headers of one message.
    public static let maxHeaderBytes = 128 * 1024

    var buffer: [UInt8] = []
    var failure: EventStreamError?

    public init() {}

    /// Bytes received but not yet part of a whole message (a message cut here was incomplete).
    public var pendingBytes: Int { buffer.count }

    /// Consumes `bytes`; returns the messages they complete, in order.
    public mutating func feed(_ bytes: some Collection<UInt8>) throws(EventStreamError) -> [EventStreamMessage] {
        if let failure { throw failure }
        buffer += bytes
        var out: [EventStreamMessage] = []
        var start = 0
        do throws(EventStreamError) {
            while buffer.count - start >= 12 {
                let total = Int(Self.uint32(buffer, start))
                let headersLength = Int(Self.uint32(buffer, start + 4))
                let preludeCRC = Self.uint32(buffer, start + 8)
                guard CRC32.checksum(buffer[start..<start + 8]) == preludeCRC else {
                    throw EventStreamError(description: "event-stream prelude CRC mismatch (message at byte \(start) of the chunk)")
                }
                guard total >= 16 + headersLength, total <= Self.maxMessageBytes, headersLength <= Self.maxHeaderBytes else {
                    throw EventStreamError(description: "event-stream message of \(total) bytes with \(headersLength) bytes of headers is malformed or too large")
                }
                guard buffer.count - start >= total else { break }
                let end = start + total
                let crc = Self.uint32(buffer, end - 4)
                guard CRC32.checksum(buffer[start..<end - 4]) == crc else {
                    throw EventStreamError(description: "event-stream message CRC mismatch (a \(total)-byte message)")
                }
                let headers = try Self.headers(buffer[start + 12..<start + 12 + headersLength])
                out.append(EventStreamMessage(headers: headers, payload: Array(buffer[start + 12 + headersLength..<end - 4])))
                start = end
            }
        } catch {
            failure = error
            buffer.removeAll()
            throw error
        }
        buffer.removeFirst(start)
        return out
    }

    static func uint32(_ b: [UInt8], _ i: Int) -> UInt32 {
        UInt32(b[i]) << 24 | UInt32(b[i + 1]) << 16 | UInt32(b[i + 2]) << 8 | UInt32(b[i + 3])
    }

    static func headers(_ bytes: ArraySlice<UInt8>) throws(EventStreamError) -> [(String, EventStreamMessage.HeaderValue)] {
        var out: [(String, EventStreamMessage.HeaderValue)] = []
        var i = bytes.startIndex
        func take(_ n: Int) throws(EventStreamError) -> ArraySlice<UInt8> {
            guard n >= 0, bytes.endIndex - i >= n else { throw EventStreamError(description: "event-stream header runs past the headers' length") }
            defer { i += n }
            return bytes[i..<i + n]
        }
        func number(_ n: Int) throws(EventStreamError) -> UInt64 {
            try take(n).reduce(0) { $0 << 8 | UInt64($1) }
        }
        while i < bytes.endIndex {
            let nameLength = Int(try number(1))
            guard nameLength > 0 else { throw EventStreamError(description: "event-stream header with an empty name") }
            let name = String(decoding: try take(nameLength), as: UTF8.self)
            let type = try number(1)
            let value: EventStreamMessage.HeaderValue
            switch type {
            case 0: value = .bool(true)
            case 1: value = .bool(false)
            case 2: value = .byte(Int8(bitPattern: UInt8(try number(1))))
            case 3: value = .short(Int16(bitPattern: UInt16(try number(2))))
            case 4: value = .integer(Int32(bitPattern: UInt32(try number(4))))
            case 5: value = .long(Int64(bitPattern: try number(8)))
            case 6: value = .bytes(Array(try take(Int(try number(2)))))
            case 7: value = .string(String(decoding: try take(Int(try number(2))), as: UTF8.self))
            case 8: value = .timestamp(Int64(bitPattern: try number(8)))
            case 9: value = .uuid(Array(try take(16)))
            default: throw EventStreamError(description: "event-stream header \(name) has unknown value type \(type)")
            }
            out.append((name, value))
        }
        return out
    }
}

/// CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320), as zlib computes it.
public enum CRC32 {
    static let table: [UInt32] = (0..<256).map { n in
        var c = UInt32(n)
        for _ in 0..<8 { c = c & 1 == 1 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }

    /// The checksum of `bytes`.
    public static func checksum(_ bytes: some Sequence<UInt8>) -> UInt32 {
        var c: UInt32 = 0xFFFF_FFFF
        for b in bytes { c = table[Int((c ^ UInt32(b)) & 0xFF)] ^ (c >> 8) }
        return c ^ 0xFFFF_FFFF
    }
}
