import CZeroMQ

/// Z85 (ZeroMQ RFC 32) encoding helpers backed by libzmq's `zmq_z85_encode` / `zmq_z85_decode`.
public enum Z85 {
    /// Encodes `bytes` (length must be a multiple of 4); nil otherwise.
    public static func encode(_ bytes: [UInt8]) -> String? {
        guard bytes.count % 4 == 0 else { return nil }
        var out = [CChar](repeating: 0, count: bytes.count / 4 * 5 + 1)
        let ok = bytes.withUnsafeBufferPointer { src in
            zmq_z85_encode(&out, src.baseAddress, src.count) != nil
        }
        guard ok else { return nil }
        return out.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }

    /// Decodes a Z85 string (length must be a multiple of 5, characters from the Z85 alphabet); nil otherwise.
    public static func decode(_ text: String) -> [UInt8]? {
        let chars = Array(text.utf8)
        guard chars.count % 5 == 0, chars.allSatisfy({ alphabet.contains($0) }) else { return nil }
        var out = [UInt8](repeating: 0, count: chars.count / 5 * 4)
        let ok = text.withCString { zmq_z85_decode(&out, $0) != nil }
        return ok ? out : nil
    }

    private static let alphabet = Set(
        "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#".utf8)
}

/// A CURVE25519 keypair in raw form (32-byte public key, 32-byte secret key).
///
/// `description` never prints the secret key.
public struct CurveKeyPair: Sendable, Hashable, CustomStringConvertible {
    /// Length of both keys in bytes.
    public static let keyLength = 32

    /// The public key (32 bytes).
    public let publicKey: [UInt8]
    /// The secret key (32 bytes). Never log it.
    public let secretKey: [UInt8]

    /// Pairs two raw keys after checking their lengths (the pairing itself is not verified; use
    /// ``fromSecretKey(_:)`` to derive the matching public key).
    public init(publicKey: [UInt8], secretKey: [UInt8]) throws(MeshZMQError) {
        guard publicKey.count == Self.keyLength else { throw .invalidKey("public key must be 32 bytes, got \(publicKey.count)") }
        guard secretKey.count == Self.keyLength else { throw .invalidKey("secret key must be 32 bytes, got \(secretKey.count)") }
        self.publicKey = publicKey
        self.secretKey = secretKey
    }

    /// A fresh random keypair from `zmq_curve_keypair` (libsodium's CSPRNG).
    public static func generate() throws(MeshZMQError) -> CurveKeyPair {
        guard zmq_has("curve") != 0 else { throw .curveUnavailable }
        var pub = [CChar](repeating: 0, count: 41)
        var sec = [CChar](repeating: 0, count: 41)
        guard zmq_curve_keypair(&pub, &sec) == 0 else { throw .lastZMQ("zmq_curve_keypair") }
        defer { for i in sec.indices { sec[i] = 0 } }
        let pubText = pub.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        let secText = sec.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        guard let publicKey = Z85.decode(pubText), let secretKey = Z85.decode(secText) else {
            throw .invalidKey("zmq_curve_keypair returned undecodable Z85")
        }
        return try CurveKeyPair(publicKey: publicKey, secretKey: secretKey)
    }

    /// The keypair whose secret key is `secretKey` (public key computed with `zmq_curve_public`).
    public static func fromSecretKey(_ secretKey: [UInt8]) throws(MeshZMQError) -> CurveKeyPair {
        guard zmq_has("curve") != 0 else { throw .curveUnavailable }
        guard secretKey.count == keyLength, let secretZ85 = Z85.encode(secretKey) else {
            throw .invalidKey("secret key must be 32 bytes, got \(secretKey.count)")
        }
        var pub = [CChar](repeating: 0, count: 41)
        let rc = secretZ85.withCString { zmq_curve_public(&pub, $0) }
        guard rc == 0 else { throw .lastZMQ("zmq_curve_public") }
        let pubText = pub.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        guard let publicKey = Z85.decode(pubText) else { throw .invalidKey("zmq_curve_public returned undecodable Z85") }
        return try CurveKeyPair(publicKey: publicKey, secretKey: secretKey)
    }

    /// The public key in Z85 (40 characters); safe to log and to put in configuration.
    public var publicKeyZ85: String { Z85.encode(publicKey) ?? "" }

    public var description: String { "CurveKeyPair(public: \(publicKeyZ85), secret: <redacted>)" }
}
