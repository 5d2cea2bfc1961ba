import MeshCore
import NIOCore

// The simulator reads request bodies with meshd's own JSON parser (MeshCore) and writes its
// answers as hand-built strings, shaped exactly like the real servers' output.

extension JSON {
    var isObject: Bool { objectValue != nil }
}

extension JSONParser {
    static func parse(_ buffer: ByteBuffer) throws(JSONParseError) -> JSON {
        try parse(buffer.readableBytesView)
    }
}

extension String {
    /// Appends `s` as a quoted JSON string literal.
    mutating func appendJSONString(_ s: String) {
        var bytes: [UInt8] = []
        JSON.writeString(s, into: &bytes)
        self.append(String(decoding: bytes, as: UTF8.self))
    }
}

/// `s` as a quoted JSON string literal.
func jsonQuote(_ s: String) -> String {
    var bytes: [UInt8] = []
    JSON.writeString(s, into: &bytes)
    return String(decoding: bytes, as: UTF8.self)
}
