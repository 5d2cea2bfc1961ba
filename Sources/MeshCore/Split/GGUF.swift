/// The metadata of a GGUF model file (llama.cpp's format), read from the bytes of its header: what
/// split planning needs (architecture, layers, context length, attention shape, so the KV cache's
/// size) and what clients ask `/api/show` for. Pure: the caller reads the file's first bytes.
///
/// Layout (GGUF v2/v3, little-endian): magic `GGUF`, version u32, tensor count u64, metadata count
/// u64, then `key: string, type: u32, value` pairs (strings are u64 length + UTF-8; arrays are
/// element type u32 + count u64 + elements).
public struct GGUFMetadata: Sendable, Hashable {
    public var version: UInt32
    public var tensorCount: UInt64
    /// Scalar and string values by key; arrays are recorded by their length only (`arrayLengths`).
    public var values: [String: Value]
    public var arrayLengths: [String: UInt64]

    public enum Value: Sendable, Hashable {
        case int(Int64)
        case uint(UInt64)
        case float(Double)
        case bool(Bool)
        case string(String)

        public var intValue: Int? {
            switch self {
            case .int(let v): return Int(exactly: v)
            case .uint(let v): return Int(exactly: v)
            default: return nil
            }
        }
    }

    public var architecture: String? {
        if case .string(let a)? = values["general.architecture"] { return a }
        return nil
    }

    /// An architecture-specific integer (`<arch>.<key>`).
    public func archInt(_ key: String) -> Int? {
        architecture.flatMap { values["\($0).\(key)"]?.intValue }
    }

    public var contextLength: Int? { archInt("context_length") }
    public var blockCount: Int? { archInt("block_count") }
    public var embeddingLength: Int? { archInt("embedding_length") }
    public var headCount: Int? { archInt("attention.head_count") }
    /// Grouped-query attention: fewer KV heads than query heads (defaults to `headCount`).
    public var headCountKV: Int? { archInt("attention.head_count_kv") ?? headCount }

    /// Bytes of KV cache per token of context with an f16 cache: 2 bytes × layers × KV heads ×
    /// (key length + value length), the head lengths defaulting to embedding ÷ heads.
    public var kvBytesPerToken: Int64? {
        guard let layers = blockCount, let kvHeads = headCountKV, layers > 0, kvHeads > 0 else { return nil }
        let headDim = embeddingLength.flatMap { e in headCount.flatMap { $0 > 0 ? e / $0 : nil } }
        guard let k = archInt("attention.key_length") ?? headDim, let v = archInt("attention.value_length") ?? headDim,
              k >= 0, v >= 0, k + v > 0 else { return nil }
        // Values come from a file: nonsense (overflowing) shapes give no estimate rather than a trap.
        return Self.product([2, Int64(layers), Int64(kvHeads), Int64(k + v)])
    }

    /// Bytes of KV cache for `contextTokens` (the model's own context length when nil).
    public func kvBytes(contextTokens: Int? = nil) -> Int64? {
        guard let perToken = kvBytesPerToken, let n = contextTokens ?? contextLength, n > 0 else { return nil }
        return Self.product([perToken, Int64(n)])
    }

    /// The product of positive factors, nil when it overflows.
    static func product(_ factors: [Int64]) -> Int64? {
        var p: Int64 = 1
        for f in factors {
            let (r, overflow) = p.multipliedReportingOverflow(by: f)
            if overflow || r <= 0 { return nil }
            p = r
        }
        return p
    }
}

public struct GGUFError: Error, Sendable, Hashable, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}

public enum GGUFReader {
    /// Longest string value read (a key, a name, a chat template).
    static let maxString: UInt64 = 4 << 20
    /// Most metadata entries accepted.
    static let maxEntries: UInt64 = 100_000

    /// Parses the metadata at the start of a GGUF file. `bytes` must hold at least the whole
    /// metadata section (tokenizer arrays included); an error names what is wrong and where.
    public static func parse(_ bytes: [UInt8]) throws(GGUFError) -> GGUFMetadata {
        var r = Cursor(bytes: bytes)
        guard bytes.count >= 4, bytes[0] == 0x47, bytes[1] == 0x47, bytes[2] == 0x55, bytes[3] == 0x46 else {
            throw GGUFError("not a GGUF file (no GGUF magic)")
        }
        r.i = 4
        let version = try r.u32()
        guard version == 2 || version == 3 else { throw GGUFError("GGUF version \(version) is not supported (2 or 3)") }
        let tensors = try r.u64()
        let count = try r.u64()
        guard count <= maxEntries else { throw GGUFError("\(count) metadata entries is more than \(maxEntries)") }
        var meta = GGUFMetadata(version: version, tensorCount: tensors, values: [:], arrayLengths: [:])
        for n in 0..<count {
            let key = try r.string(what: "the key of entry \(n)")
            let type = try r.u32()
            if type == 9 {
                let elementType = try r.u32()
                let length = try r.u64()
                meta.arrayLengths[key] = length
                for _ in 0..<length { try r.skip(type: elementType, key: key) }
            } else if let v = try r.value(type: type, key: key) {
                meta.values[key] = v
            }
        }
        return meta
    }

    struct Cursor {
        let bytes: [UInt8]
        var i = 0

        mutating func take(_ n: Int, _ what: String) throws(GGUFError) -> ArraySlice<UInt8> {
            guard n >= 0, i <= bytes.count - n else {
                throw GGUFError("the header ends inside \(what) at byte \(i) (\(bytes.count) bytes read)")
            }
            defer { i += n }
            return bytes[i..<(i + n)]
        }

        mutating func le(_ n: Int, _ what: String) throws(GGUFError) -> UInt64 {
            var v: UInt64 = 0
            for (k, b) in try take(n, what).enumerated() { v |= UInt64(b) << (8 * UInt64(k)) }
            return v
        }

        mutating func u32() throws(GGUFError) -> UInt32 { UInt32(try le(4, "a 32-bit integer")) }
        mutating func u64() throws(GGUFError) -> UInt64 { try le(8, "a 64-bit integer") }

        mutating func string(what: String) throws(GGUFError) -> String {
            let n = try u64()
            guard n <= GGUFReader.maxString else { throw GGUFError("\(what) is \(n) bytes long, over \(GGUFReader.maxString)") }
            return String(decoding: try take(Int(n), what), as: UTF8.self)
        }

        mutating func value(type: UInt32, key: String) throws(GGUFError) -> GGUFMetadata.Value? {
            switch type {
            case 0: return .uint(try le(1, key))
            case 1: return .int(Int64(Int8(truncatingIfNeeded: try le(1, key))))
            case 2: return .uint(try le(2, key))
            case 3: return .int(Int64(Int16(truncatingIfNeeded: try le(2, key))))
            case 4: return .uint(try le(4, key))
            case 5: return .int(Int64(Int32(truncatingIfNeeded: try le(4, key))))
            case 6: return .float(Double(Float(bitPattern: UInt32(try le(4, key)))))
            case 7: return .bool(try le(1, key) != 0)
            case 8: return .string(try string(what: key))
            case 10: return .uint(try le(8, key))
            case 11: return .int(Int64(bitPattern: try le(8, key)))
            case 12: return .float(Double(bitPattern: try le(8, key)))
            default: throw GGUFError("\(key) has unknown value type \(type)")
            }
        }

        mutating func skip(type: UInt32, key: String) throws(GGUFError) {
            switch type {
            case 0, 1, 7: i = try advance(1, key)
            case 2, 3: i = try advance(2, key)
            case 4, 5, 6: i = try advance(4, key)
            case 10, 11, 12: i = try advance(8, key)
            case 8: _ = try string(what: "an element of \(key)")
            default: throw GGUFError("\(key) is an array of unknown type \(type)")
            }
        }

        func advance(_ n: Int, _ what: String) throws(GGUFError) -> Int {
            guard i <= bytes.count - n else { throw GGUFError("the header ends inside \(what) at byte \(i) (\(bytes.count) bytes read)") }
            return i + n
        }
    }
}

extension SplitModel {
    /// The planner's view of a GGUF model: the file's size as its weights, the KV cache for
    /// `contextTokens` (the model's own context length when nil; 0 when the file does not say).
    public init(name: String, fileBytes: Int64, metadata: GGUFMetadata, contextTokens: Int? = nil, policy: SplitPolicy = .auto) {
        self.init(name: name, weightsBytes: fileBytes, kvBytes: metadata.kvBytes(contextTokens: contextTokens) ?? 0, policy: policy)
    }
}
