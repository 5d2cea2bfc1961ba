/// `Codable` straight to and from a ``JSON`` value, without bytes in between.
///
/// The mesh's `state` header is already a parsed ``JSON`` when it arrives, and is sent as one; going
/// through Foundation's `JSONEncoder`/`JSONDecoder` meant serialising and parsing it once more on
/// each side (and Foundation's coders are the slow part). Semantics follow the Foundation coders'
/// defaults: keys as declared, `nil` optionals omitted (`encodeIfPresent`), numbers exact or an error.
public enum JSONValueCoding {
    /// Decodes `type` from `json`; throws `DecodingError` like `JSONDecoder` does on a mismatch.
    public static func decode<T: Decodable>(_ type: T.Type, from json: JSON) throws -> T {
        try T(from: ValueDecoder(value: json, codingPath: []))
    }

    /// Encodes `value` as a ``JSON`` value (object members in encoding order).
    public static func encode<T: Encodable>(_ value: T) throws -> JSON {
        let root = EncodedBox()
        try value.encode(to: ValueEncoder(box: root, codingPath: []))
        return root.json
    }
}

// MARK: decoding

private struct AnyKey: CodingKey {
    var stringValue: String
    var intValue: Int?
    init(stringValue: String) { self.stringValue = stringValue }
    init(intValue: Int) {
        stringValue = String(intValue)
        self.intValue = intValue
    }
}

private struct ValueDecoder: Decoder {
    let value: JSON
    let codingPath: [any CodingKey]
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        guard case .object(let members) = value else { throw mismatch([String: JSON].self, value, codingPath) }
        var map: [String: JSON] = Dictionary(minimumCapacity: members.count)
        for (k, v) in members { map[k] = v }  // the last duplicate wins, as in `JSON`'s subscript
        return KeyedDecodingContainer(KeyedValueDecoder<Key>(members: map, codingPath: codingPath))
    }

    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        guard case .array(let items) = value else { throw mismatch([JSON].self, value, codingPath) }
        return UnkeyedValueDecoder(items: items, codingPath: codingPath)
    }

    func singleValueContainer() throws -> any SingleValueDecodingContainer {
        SingleValueDecoder(value: value, codingPath: codingPath)
    }
}

private func mismatch(_ type: Any.Type, _ value: JSON, _ path: [any CodingKey]) -> DecodingError {
    .typeMismatch(type, .init(codingPath: path, debugDescription: "expected \(type), found \(value.kindName)"))
}

private extension JSON {
    var kindName: String {
        switch self {
        case .null: return "null"
        case .bool: return "a boolean"
        case .number, .int: return "a number"
        case .string: return "a string"
        case .array: return "an array"
        case .object: return "an object"
        }
    }
}

/// Scalar conversions shared by the three decoding containers.
private enum Scalar {
    static func bool(_ v: JSON, _ path: [any CodingKey]) throws -> Bool {
        guard case .bool(let b) = v else { throw mismatch(Bool.self, v, path) }
        return b
    }

    static func string(_ v: JSON, _ path: [any CodingKey]) throws -> String {
        guard case .string(let s) = v else { throw mismatch(String.self, v, path) }
        return s
    }

    static func double(_ v: JSON, _ path: [any CodingKey]) throws -> Double {
        switch v {
        case .number(let d): return d
        case .int(let i): return Double(i)
        default: throw mismatch(Double.self, v, path)
        }
    }

    static func integer<T: FixedWidthInteger>(_ v: JSON, _ path: [any CodingKey]) throws -> T {
        switch v {
        case .int(let i):
            if let x = T(exactly: i) { return x }
        case .number(let d):
            if d.isFinite, d.rounded() == d, let x = T(exactly: d) { return x }
        default:
            throw mismatch(T.self, v, path)
        }
        throw DecodingError.dataCorrupted(.init(codingPath: path, debugDescription: "number does not fit \(T.self)"))
    }

    static func decode<T: Decodable>(_ type: T.Type, _ v: JSON, _ path: [any CodingKey]) throws -> T {
        // Fast paths for the scalars the synthesized code asks for through the generic entry point.
        if T.self == String.self { return try string(v, path) as! T }
        if T.self == Int.self { return try (integer(v, path) as Int) as! T }
        if T.self == Int64.self { return try (integer(v, path) as Int64) as! T }
        if T.self == Double.self { return try double(v, path) as! T }
        if T.self == Bool.self { return try bool(v, path) as! T }
        return try T(from: ValueDecoder(value: v, codingPath: path))
    }
}

private struct KeyedValueDecoder<Key: CodingKey>: KeyedDecodingContainerProtocol {
    let members: [String: JSON]
    let codingPath: [any CodingKey]

    var allKeys: [Key] { members.keys.compactMap { Key(stringValue: $0) } }
    func contains(_ key: Key) -> Bool { members[key.stringValue] != nil }

    private func value(_ key: Key) throws -> JSON {
        guard let v = members[key.stringValue] else {
            throw DecodingError.keyNotFound(key, .init(codingPath: codingPath, debugDescription: "no value for \"\(key.stringValue)\""))
        }
        return v
    }

    private func path(_ key: Key) -> [any CodingKey] { codingPath + [key] }

    func decodeNil(forKey key: Key) throws -> Bool { try value(key).isNull }
    func decode(_ type: Bool.Type, forKey key: Key) throws -> Bool { try Scalar.bool(value(key), path(key)) }
    func decode(_ type: String.Type, forKey key: Key) throws -> String { try Scalar.string(value(key), path(key)) }
    func decode(_ type: Double.Type, forKey key: Key) throws -> Double { try Scalar.double(value(key), path(key)) }
    func decode(_ type: Float.Type, forKey key: Key) throws -> Float { Float(try Scalar.double(value(key), path(key))) }
    func decode(_ type: Int.Type, forKey key: Key) throws -> Int { try Scalar.integer(value(key), path(key)) }
    func decode(_ type: Int8.Type, forKey key: Key) throws -> Int8 { try Scalar.integer(value(key), path(key)) }
    func decode(_ type: Int16.Type, forKey key: Key) throws -> Int16 { try Scalar.integer(value(key), path(key)) }
    func decode(_ type: Int32.Type, forKey key: Key) throws -> Int32 { try Scalar.integer(value(key), path(key)) }
    func decode(_ type: Int64.Type, forKey key: Key) throws -> Int64 { try Scalar.integer(value(key), path(key)) }
    func decode(_ type: UInt.Type, forKey key: Key) throws -> UInt { try Scalar.integer(value(key), path(key)) }
    func decode(_ type: UInt8.Type, forKey key: Key) throws -> UInt8 { try Scalar.integer(value(key), path(key)) }
    func decode(_ type: UInt16.Type, forKey key: Key) throws -> UInt16 { try Scalar.integer(value(key), path(key)) }
    func decode(_ type: UInt32.Type, forKey key: Key) throws -> UInt32 { try Scalar.integer(value(key), path(key)) }
    func decode(_ type: UInt64.Type, forKey key: Key) throws -> UInt64 { try Scalar.integer(value(key), path(key)) }
    func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T { try Scalar.decode(type, value(key), path(key)) }

    func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type, forKey key: Key) throws -> KeyedDecodingContainer<NestedKey> {
        try ValueDecoder(value: value(key), codingPath: path(key)).container(keyedBy: type)
    }

    func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer {
        try ValueDecoder(value: value(key), codingPath: path(key)).unkeyedContainer()
    }

    func superDecoder() throws -> any Decoder {
        ValueDecoder(value: members["super"] ?? .null, codingPath: codingPath + [AnyKey(stringValue: "super")])
    }

    func superDecoder(forKey key: Key) throws -> any Decoder {
        ValueDecoder(value: members[key.stringValue] ?? .null, codingPath: path(key))
    }
}

private struct UnkeyedValueDecoder: UnkeyedDecodingContainer {
    let items: [JSON]
    let codingPath: [any CodingKey]
    var currentIndex = 0

    init(items: [JSON], codingPath: [any CodingKey]) {
        self.items = items
        self.codingPath = codingPath
    }

    var count: Int? { items.count }
    var isAtEnd: Bool { currentIndex >= items.count }

    private mutating func next<T>(_ type: T.Type) throws -> (JSON, [any CodingKey]) {
        let path = codingPath + [AnyKey(intValue: currentIndex)]
        guard !isAtEnd else {
            throw DecodingError.valueNotFound(type, .init(codingPath: path, debugDescription: "unkeyed container is at its end"))
        }
        defer { currentIndex += 1 }
        return (items[currentIndex], path)
    }

    mutating func decodeNil() throws -> Bool {
        guard !isAtEnd, items[currentIndex].isNull else { return false }
        currentIndex += 1
        return true
    }

    mutating func decode(_ type: Bool.Type) throws -> Bool { let (v, p) = try next(type); return try Scalar.bool(v, p) }
    mutating func decode(_ type: String.Type) throws -> String { let (v, p) = try next(type); return try Scalar.string(v, p) }
    mutating func decode(_ type: Double.Type) throws -> Double { let (v, p) = try next(type); return try Scalar.double(v, p) }
    mutating func decode(_ type: Float.Type) throws -> Float { let (v, p) = try next(type); return Float(try Scalar.double(v, p)) }
    mutating func decode(_ type: Int.Type) throws -> Int { let (v, p) = try next(type); return try Scalar.integer(v, p) }
    mutating func decode(_ type: Int8.Type) throws -> Int8 { let (v, p) = try next(type); return try Scalar.integer(v, p) }
    mutating func decode(_ type: Int16.Type) throws -> Int16 { let (v, p) = try next(type); return try Scalar.integer(v, p) }
    mutating func decode(_ type: Int32.Type) throws -> Int32 { let (v, p) = try next(type); return try Scalar.integer(v, p) }
    mutating func decode(_ type: Int64.Type) throws -> Int64 { let (v, p) = try next(type); return try Scalar.integer(v, p) }
    mutating func decode(_ type: UInt.Type) throws -> UInt { let (v, p) = try next(type); return try Scalar.integer(v, p) }
    mutating func decode(_ type: UInt8.Type) throws -> UInt8 { let (v, p) = try next(type); return try Scalar.integer(v, p) }
    mutating func decode(_ type: UInt16.Type) throws -> UInt16 { let (v, p) = try next(type); return try Scalar.integer(v, p) }
    mutating func decode(_ type: UInt32.Type) throws -> UInt32 { let (v, p) = try next(type); return try Scalar.integer(v, p) }
    mutating func decode(_ type: UInt64.Type) throws -> UInt64 { let (v, p) = try next(type); return try Scalar.integer(v, p) }
    mutating func decode<T: Decodable>(_ type: T.Type) throws -> T { let (v, p) = try next(type); return try Scalar.decode(type, v, p) }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type) throws -> KeyedDecodingContainer<NestedKey> {
        let (v, p) = try next([String: JSON].self)
        return try ValueDecoder(value: v, codingPath: p).container(keyedBy: type)
    }

    mutating func nestedUnkeyedContainer() throws -> any UnkeyedDecodingContainer {
        let (v, p) = try next([JSON].self)
        return try ValueDecoder(value: v, codingPath: p).unkeyedContainer()
    }

    mutating func superDecoder() throws -> any Decoder {
        let (v, p) = try next(JSON.self)
        return ValueDecoder(value: v, codingPath: p)
    }
}

private struct SingleValueDecoder: SingleValueDecodingContainer {
    let value: JSON
    let codingPath: [any CodingKey]

    func decodeNil() -> Bool { value.isNull }
    func decode(_ type: Bool.Type) throws -> Bool { try Scalar.bool(value, codingPath) }
    func decode(_ type: String.Type) throws -> String { try Scalar.string(value, codingPath) }
    func decode(_ type: Double.Type) throws -> Double { try Scalar.double(value, codingPath) }
    func decode(_ type: Float.Type) throws -> Float { Float(try Scalar.double(value, codingPath)) }
    func decode(_ type: Int.Type) throws -> Int { try Scalar.integer(value, codingPath) }
    func decode(_ type: Int8.Type) throws -> Int8 { try Scalar.integer(value, codingPath) }
    func decode(_ type: Int16.Type) throws -> Int16 { try Scalar.integer(value, codingPath) }
    func decode(_ type: Int32.Type) throws -> Int32 { try Scalar.integer(value, codingPath) }
    func decode(_ type: Int64.Type) throws -> Int64 { try Scalar.integer(value, codingPath) }
    func decode(_ type: UInt.Type) throws -> UInt { try Scalar.integer(value, codingPath) }
    func decode(_ type: UInt8.Type) throws -> UInt8 { try Scalar.integer(value, codingPath) }
    func decode(_ type: UInt16.Type) throws -> UInt16 { try Scalar.integer(value, codingPath) }
    func decode(_ type: UInt32.Type) throws -> UInt32 { try Scalar.integer(value, codingPath) }
    func decode(_ type: UInt64.Type) throws -> UInt64 { try Scalar.integer(value, codingPath) }
    func decode<T: Decodable>(_ type: T.Type) throws -> T { try Scalar.decode(type, value, codingPath) }
}

// MARK: encoding

/// A value under construction; containers hold boxes so nested containers can fill in later.
private final class EncodedBox {
    enum Content {
        case empty
        case value(JSON)
        case object([(String, EncodedBox)])
        case array([EncodedBox])
    }

    var content: Content = .empty

    var json: JSON {
        switch content {
        case .empty: return .object([])
        case .value(let v): return v
        case .object(let members): return .object(members.map { ($0.0, $0.1.json) })
        case .array(let items): return .array(items.map(\.json))
        }
    }

    func member(_ key: String) -> EncodedBox {
        let child = EncodedBox()
        if case .object(var members) = content {
            content = .empty  // keep the array uniquely referenced while appending
            members.append((key, child))
            content = .object(members)
        } else {
            content = .object([(key, child)])
        }
        return child
    }

    func element() -> EncodedBox {
        let child = EncodedBox()
        if case .array(var items) = content {
            content = .empty
            items.append(child)
            content = .array(items)
        } else {
            content = .array([child])
        }
        return child
    }
}

private struct ValueEncoder: Encoder {
    let box: EncodedBox
    let codingPath: [any CodingKey]
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        if case .object = box.content {} else { box.content = .object([]) }
        return KeyedEncodingContainer(KeyedValueEncoder<Key>(box: box, codingPath: codingPath))
    }

    func unkeyedContainer() -> any UnkeyedEncodingContainer {
        if case .array = box.content {} else { box.content = .array([]) }
        return UnkeyedValueEncoder(box: box, codingPath: codingPath)
    }

    func singleValueContainer() -> any SingleValueEncodingContainer {
        SingleValueEncoder(box: box, codingPath: codingPath)
    }
}

/// Scalars as ``JSON``; integers stay exact (`.int`) where they fit Int64.
private enum Encode {
    static func integer<T: FixedWidthInteger>(_ v: T) -> JSON {
        if let i = Int64(exactly: v) { return .int(i) }
        return .number(Double(v))
    }

    static func value<T: Encodable>(_ v: T, into box: EncodedBox, path: [any CodingKey]) throws {
        switch v {
        case let s as String: box.content = .value(.string(s))
        case let i as Int: box.content = .value(.int(Int64(i)))
        case let i as Int64: box.content = .value(.int(i))
        case let d as Double: box.content = .value(try number(d, path))
        case let b as Bool: box.content = .value(.bool(b))
        default: try v.encode(to: ValueEncoder(box: box, codingPath: path))
        }
    }

    static func number(_ d: Double, _ path: [any CodingKey]) throws -> JSON {
        guard d.isFinite else {
            throw EncodingError.invalidValue(d, .init(codingPath: path, debugDescription: "JSON has no \(d)"))
        }
        return .number(d)
    }
}

private struct KeyedValueEncoder<Key: CodingKey>: KeyedEncodingContainerProtocol {
    let box: EncodedBox
    let codingPath: [any CodingKey]

    private func put(_ v: JSON, _ key: Key) { box.member(key.stringValue).content = .value(v) }

    mutating func encodeNil(forKey key: Key) throws { put(.null, key) }
    mutating func encode(_ value: Bool, forKey key: Key) throws { put(.bool(value), key) }
    mutating func encode(_ value: String, forKey key: Key) throws { put(.string(value), key) }
    mutating func encode(_ value: Double, forKey key: Key) throws { put(try Encode.number(value, codingPath + [key]), key) }
    mutating func encode(_ value: Float, forKey key: Key) throws { put(try Encode.number(Double(value), codingPath + [key]), key) }
    mutating func encode(_ value: Int, forKey key: Key) throws { put(Encode.integer(value), key) }
    mutating func encode(_ value: Int8, forKey key: Key) throws { put(Encode.integer(value), key) }
    mutating func encode(_ value: Int16, forKey key: Key) throws { put(Encode.integer(value), key) }
    mutating func encode(_ value: Int32, forKey key: Key) throws { put(Encode.integer(value), key) }
    mutating func encode(_ value: Int64, forKey key: Key) throws { put(Encode.integer(value), key) }
    mutating func encode(_ value: UInt, forKey key: Key) throws { put(Encode.integer(value), key) }
    mutating func encode(_ value: UInt8, forKey key: Key) throws { put(Encode.integer(value), key) }
    mutating func encode(_ value: UInt16, forKey key: Key) throws { put(Encode.integer(value), key) }
    mutating func encode(_ value: UInt32, forKey key: Key) throws { put(Encode.integer(value), key) }
    mutating func encode(_ value: UInt64, forKey key: Key) throws { put(Encode.integer(value), key) }
    mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws {
        try Encode.value(value, into: box.member(key.stringValue), path: codingPath + [key])
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type, forKey key: Key) -> KeyedEncodingContainer<NestedKey> {
        ValueEncoder(box: box.member(key.stringValue), codingPath: codingPath + [key]).container(keyedBy: keyType)
    }

    mutating func nestedUnkeyedContainer(forKey key: Key) -> any UnkeyedEncodingContainer {
        ValueEncoder(box: box.member(key.stringValue), codingPath: codingPath + [key]).unkeyedContainer()
    }

    mutating func superEncoder() -> any Encoder {
        ValueEncoder(box: box.member("super"), codingPath: codingPath + [AnyKey(stringValue: "super")])
    }

    mutating func superEncoder(forKey key: Key) -> any Encoder {
        ValueEncoder(box: box.member(key.stringValue), codingPath: codingPath + [key])
    }
}

private struct UnkeyedValueEncoder: UnkeyedEncodingContainer {
    let box: EncodedBox
    let codingPath: [any CodingKey]
    var count: Int {
        if case .array(let items) = box.content { return items.count }
        return 0
    }

    private func put(_ v: JSON) { box.element().content = .value(v) }
    private var nextPath: [any CodingKey] { codingPath + [AnyKey(intValue: count)] }

    mutating func encodeNil() throws { put(.null) }
    mutating func encode(_ value: Bool) throws { put(.bool(value)) }
    mutating func encode(_ value: String) throws { put(.string(value)) }
    mutating func encode(_ value: Double) throws { put(try Encode.number(value, nextPath)) }
    mutating func encode(_ value: Float) throws { put(try Encode.number(Double(value), nextPath)) }
    mutating func encode(_ value: Int) throws { put(Encode.integer(value)) }
    mutating func encode(_ value: Int8) throws { put(Encode.integer(value)) }
    mutating func encode(_ value: Int16) throws { put(Encode.integer(value)) }
    mutating func encode(_ value: Int32) throws { put(Encode.integer(value)) }
    mutating func encode(_ value: Int64) throws { put(Encode.integer(value)) }
    mutating func encode(_ value: UInt) throws { put(Encode.integer(value)) }
    mutating func encode(_ value: UInt8) throws { put(Encode.integer(value)) }
    mutating func encode(_ value: UInt16) throws { put(Encode.integer(value)) }
    mutating func encode(_ value: UInt32) throws { put(Encode.integer(value)) }
    mutating func encode(_ value: UInt64) throws { put(Encode.integer(value)) }
    mutating func encode<T: Encodable>(_ value: T) throws {
        let path = nextPath
        try Encode.value(value, into: box.element(), path: path)
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type) -> KeyedEncodingContainer<NestedKey> {
        let path = nextPath
        return ValueEncoder(box: box.element(), codingPath: path).container(keyedBy: keyType)
    }

    mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer {
        let path = nextPath
        return ValueEncoder(box: box.element(), codingPath: path).unkeyedContainer()
    }

    mutating func superEncoder() -> any Encoder {
        let path = nextPath
        return ValueEncoder(box: box.element(), codingPath: path)
    }
}

private struct SingleValueEncoder: SingleValueEncodingContainer {
    let box: EncodedBox
    let codingPath: [any CodingKey]

    mutating func encodeNil() throws { box.content = .value(.null) }
    mutating func encode(_ value: Bool) throws { box.content = .value(.bool(value)) }
    mutating func encode(_ value: String) throws { box.content = .value(.string(value)) }
    mutating func encode(_ value: Double) throws { box.content = .value(try Encode.number(value, codingPath)) }
    mutating func encode(_ value: Float) throws { box.content = .value(try Encode.number(Double(value), codingPath)) }
    mutating func encode(_ value: Int) throws { box.content = .value(Encode.integer(value)) }
    mutating func encode(_ value: Int8) throws { box.content = .value(Encode.integer(value)) }
    mutating func encode(_ value: Int16) throws { box.content = .value(Encode.integer(value)) }
    mutating func encode(_ value: Int32) throws { box.content = .value(Encode.integer(value)) }
    mutating func encode(_ value: Int64) throws { box.content = .value(Encode.integer(value)) }
    mutating func encode(_ value: UInt) throws { box.content = .value(Encode.integer(value)) }
    mutating func encode(_ value: UInt8) throws { box.content = .value(Encode.integer(value)) }
    mutating func encode(_ value: UInt16) throws { box.content = .value(Encode.integer(value)) }
    mutating func encode(_ value: UInt32) throws { box.content = .value(Encode.integer(value)) }
    mutating func encode(_ value: UInt64) throws { box.content = .value(Encode.integer(value)) }
    mutating func encode<T: Encodable>(_ value: T) throws { try Encode.value(value, into: box, path: codingPath) }
}
