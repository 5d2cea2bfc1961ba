import Crypto
import Foundation
import MeshZMQ
import NIOCore

// The secure relay's wire protocol: a direct TCP connection between two meshd processes,
// authenticated and encrypted with the mesh's CURVE (X25519) keys, so relayed bytes cross no
// thread but the event loop's (the ZeroMQ tunnels cost ~5 thread wakes per direction).
//
//   head → worker: "MRL1" ‖ e_h (32) ‖ s_h (32)       ephemeral and static public keys
//   worker → head: e_w (32)                            after checking s_h is admitted
//   both: transcript = SHA256("meshd-relay-v1" ‖ e_h ‖ s_h ‖ e_w ‖ s_w)
//         ikm = DH(e_h,e_w) ‖ DH(s_h,e_w) ‖ DH(e_h,s_w)
//         head→worker key ‖ worker→head key = HKDF-SHA256(ikm, salt: transcript, info: "meshd-relay-v1 keys", 64)
//   then frames: u32 big-endian length of the sealed part ‖ ChaChaPoly ciphertext ‖ tag,
//         nonce = 4 zero bytes ‖ u64 big-endian counter (per direction, from 0), plaintext ≤ 64 KiB.
//
// DH(s_h,e_w) proves the head holds s_h, DH(e_h,s_w) that the worker holds s_w (the head knows
// s_w in advance: the mesh public key); the ephemerals give forward secrecy. A wrong key on
// either side yields other session keys, so the first frame fails to open and the connection
// ends. The counter nonce makes a replayed, dropped or reordered frame fail to open too.

/// Why a secure relay connection failed.
public enum SecureRelayError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The peer's hello is not a meshd relay hello (another protocol, a port scanner).
    case badHello(String)
    /// The client's static key is not admitted (not the mesh key nor a trusted key, or revoked).
    case keyRefused
    /// A public key was malformed or of low order (a DH result of all zeros).
    case badKey(String)
    /// A frame failed to authenticate: tampered, replayed, reordered, or sealed with other keys
    /// (the peer holds another static key than expected).
    case frameRejected
    /// A frame announced a sealed length outside 16...64 KiB + 16.
    case frameTooLarge(Int)
    /// The worker refused the connection (its `accept` said no), with its reason.
    case refused(String)
    /// The control message (the head's request, the worker's answer) was not what the protocol says.
    case badControl(String)
    /// The connection ended before the relay was up.
    case handshakeFailed(String)
    /// The relayed connection ended abnormally (the worker or its rpc-server went away).
    case connectionLost(String)

    public var description: String {
        switch self {
        case .badHello(let why): "not a meshd relay hello: \(why)"
        case .keyRefused: "the client's key is not admitted to this mesh"
        case .badKey(let why): "bad key: \(why)"
        case .frameRejected: "a frame failed to authenticate (tampered, replayed, or the peer holds other keys)"
        case .frameTooLarge(let n): "a frame announced \(n) sealed bytes (limit \(SecureRelayWire.maxSealedLength))"
        case .refused(let why): "refused: \(why)"
        case .badControl(let why): "bad control message: \(why)"
        case .handshakeFailed(let why): "handshake failed: \(why)"
        case .connectionLost(let why): "connection lost: \(why)"
        }
    }
}

/// Constants of the wire format.
enum SecureRelayWire {
    static let magic: [UInt8] = Array("MRL1".utf8)
    static let label: [UInt8] = Array("meshd-relay-v1".utf8)
    static let keyInfo: [UInt8] = Array("meshd-relay-v1 keys".utf8)
    static let keyLength = 32
    static let clientHelloLength = 4 + 2 * keyLength
    static let serverHelloLength = keyLength
    /// The most plaintext one frame carries; larger writes are split.
    static let maxPlaintext = 64 * 1024
    static let tagLength = 16
    static let maxSealedLength = maxPlaintext + tagLength
}

/// One direction's AEAD key and frame counter.
struct FrameKey {
    let key: SymmetricKey
    var counter: UInt64 = 0

    init(_ bytes: [UInt8]) { key = SymmetricKey(data: bytes) }

    /// The nonce for the current counter, then counts it (a counter is never reused).
    mutating func nextNonce() throws -> ChaChaPoly.Nonce {
        guard counter < .max else { throw SecureRelayError.frameRejected }
        var n = [UInt8](repeating: 0, count: 12)
        for i in 0..<8 { n[4 + i] = UInt8(truncatingIfNeeded: counter >> (56 - 8 * UInt64(i))) }
        counter += 1
        return try ChaChaPoly.Nonce(data: n)
    }
}

/// The established session of one connection: seals what this side sends, opens what it receives.
/// Pure (no I/O), so tests drive it with byte buffers.
struct SecureSession {
    var sending: FrameKey
    var receiving: FrameKey

    /// Appends `plaintext` to `out` as frames of at most 64 KiB each.
    mutating func seal(_ plaintext: UnsafeRawBufferPointer, into out: inout ByteBuffer) throws {
        var offset = 0
        repeat {
            let chunk = UnsafeRawBufferPointer(rebasing: plaintext[offset..<min(plaintext.count, offset + SecureRelayWire.maxPlaintext)])
            let box = try ChaChaPoly.seal(chunk, using: sending.key, nonce: sending.nextNonce())
            out.writeInteger(UInt32(chunk.count + SecureRelayWire.tagLength))
            out.writeBytes(box.ciphertext)
            out.writeBytes(box.tag)
            offset += chunk.count
        } while offset < plaintext.count
    }

    /// Seals `plaintext` (one or more frames) into a new buffer.
    mutating func seal(_ plaintext: [UInt8], allocator: ByteBufferAllocator = ByteBufferAllocator()) throws -> ByteBuffer {
        var out = allocator.buffer(capacity: plaintext.count + 20 * (plaintext.count / SecureRelayWire.maxPlaintext + 1))
        try plaintext.withUnsafeBytes { try seal($0, into: &out) }
        return out
    }

    /// Opens the next whole frame at the front of `buffer` (consuming it); nil while the frame is
    /// incomplete. Throws on an oversized length or a frame that fails to authenticate: the
    /// connection must end then.
    mutating func open(_ buffer: inout ByteBuffer, allocator: ByteBufferAllocator = ByteBufferAllocator()) throws -> ByteBuffer? {
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else { return nil }
        guard length >= SecureRelayWire.tagLength, length <= SecureRelayWire.maxSealedLength else {
            throw SecureRelayError.frameTooLarge(Int(length))
        }
        guard buffer.readableBytes >= 4 + Int(length) else { return nil }
        buffer.moveReaderIndex(forwardBy: 4)
        let sealed = buffer.readSlice(length: Int(length))!
        let plaintext = try sealed.withUnsafeReadableBytes { raw -> Data in
            let cut = raw.count - SecureRelayWire.tagLength
            let box = try ChaChaPoly.SealedBox(nonce: receiving.nextNonce(),
                                               ciphertext: UnsafeRawBufferPointer(rebasing: raw[..<cut]),
                                               tag: UnsafeRawBufferPointer(rebasing: raw[cut...]))
            do { return try ChaChaPoly.open(box, using: receiving.key) } catch { throw SecureRelayError.frameRejected }
        }
        var out = allocator.buffer(capacity: plaintext.count)
        out.writeBytes(plaintext)
        return out
    }

    /// Derives both directions' keys from the three DH results and the transcript.
    static func derive(ephemeralClient eh: [UInt8], staticClient sh: [UInt8], ephemeralServer ew: [UInt8], staticServer sw: [UInt8],
                       dh: [SharedSecret], isClient: Bool) throws -> SecureSession {
        var ikm: [UInt8] = []
        for secret in dh {
            let bytes = secret.withUnsafeBytes { Array($0) }
            // A low-order public key makes X25519 output zeros, which would key the session with
            // nothing the attacker does not know.
            guard bytes.contains(where: { $0 != 0 }) else { throw SecureRelayError.badKey("low-order public key") }
            ikm += bytes
        }
        let transcript = Array(Crypto.SHA256.hash(data: SecureRelayWire.label + eh + sh + ew + sw))
        let okm = HKDF<Crypto.SHA256>.deriveKey(inputKeyMaterial: SymmetricKey(data: ikm), salt: transcript,
                                         info: SecureRelayWire.keyInfo, outputByteCount: 64)
        let keys: [UInt8] = okm.withUnsafeBytes { Array($0) }
        let toServer = FrameKey(Array(keys[0..<32])), toClient = FrameKey(Array(keys[32..<64]))
        return isClient ? SecureSession(sending: toServer, receiving: toClient) : SecureSession(sending: toClient, receiving: toServer)
    }
}

/// A parsed static keypair (the CURVE keys are X25519 keys: the ZeroMQ secret key is the scalar).
/// Kept as raw bytes (Sendable: servers and listeners share it across event loops).
struct StaticKey: Sendable {
    let secret: [UInt8]
    let publicKey: [UInt8]
    var privateKey: Curve25519.KeyAgreement.PrivateKey { try! .init(rawRepresentation: secret) }  // checked in init

    init(_ pair: CurveKeyPair) throws {
        let key: Curve25519.KeyAgreement.PrivateKey
        do { key = try .init(rawRepresentation: pair.secretKey) } catch { throw SecureRelayError.badKey("secret key: \(error)") }
        guard Array(key.publicKey.rawRepresentation) == pair.publicKey else {
            throw SecureRelayError.badKey("the keypair's public key does not match its secret key")
        }
        secret = pair.secretKey
        publicKey = pair.publicKey
    }
}

func x25519PublicKey(_ raw: [UInt8]) throws -> Curve25519.KeyAgreement.PublicKey {
    do { return try .init(rawRepresentation: raw) } catch { throw SecureRelayError.badKey("public key: \(error)") }
}

/// The head's side of the handshake: its hello, then the session from the worker's answer.
struct ClientHandshake {
    let ephemeral = Curve25519.KeyAgreement.PrivateKey()
    let staticKey: StaticKey
    /// The worker's static public key, known in advance (the mesh public key).
    let serverKey: [UInt8]

    var hello: [UInt8] {
        SecureRelayWire.magic + Array(ephemeral.publicKey.rawRepresentation) + staticKey.publicKey
    }

    /// The session, from the worker's 32-byte ephemeral public key.
    func finish(serverHello ew: [UInt8]) throws -> SecureSession {
        guard ew.count == SecureRelayWire.serverHelloLength else { throw SecureRelayError.badHello("server hello of \(ew.count) bytes") }
        let ewKey = try x25519PublicKey(ew), swKey = try x25519PublicKey(serverKey)
        let dh = try [ephemeral.sharedSecretFromKeyAgreement(with: ewKey),
                      staticKey.privateKey.sharedSecretFromKeyAgreement(with: ewKey),
                      ephemeral.sharedSecretFromKeyAgreement(with: swKey)]
        return try SecureSession.derive(ephemeralClient: Array(ephemeral.publicKey.rawRepresentation), staticClient: staticKey.publicKey,
                                        ephemeralServer: ew, staticServer: serverKey, dh: dh, isClient: true)
    }
}

/// The worker's side of the handshake, in one step.
enum ServerHandshake {
    /// Checks the head's hello (magic, keys, `allow` on its static key) and answers it: the reply to
    /// send, the session and the head's static key. Throws (close the connection) otherwise.
    static func respond(to hello: [UInt8], staticKey: StaticKey, allow: ([UInt8]) -> Bool) throws
        -> (reply: [UInt8], session: SecureSession, clientKey: [UInt8]) {
        guard hello.count == SecureRelayWire.clientHelloLength else { throw SecureRelayError.badHello("\(hello.count) bytes") }
        guard Array(hello[0..<4]) == SecureRelayWire.magic else { throw SecureRelayError.badHello("wrong magic") }
        let eh = Array(hello[4..<36]), sh = Array(hello[36..<68])
        guard allow(sh) else { throw SecureRelayError.keyRefused }
        let ephemeral = Curve25519.KeyAgreement.PrivateKey()
        let ehKey = try x25519PublicKey(eh), shKey = try x25519PublicKey(sh)
        let dh = try [ephemeral.sharedSecretFromKeyAgreement(with: ehKey),
                      ephemeral.sharedSecretFromKeyAgreement(with: shKey),
                      staticKey.privateKey.sharedSecretFromKeyAgreement(with: ehKey)]
        let ew = Array(ephemeral.publicKey.rawRepresentation)
        let session = try SecureSession.derive(ephemeralClient: eh, staticClient: sh, ephemeralServer: ew,
                                               staticServer: staticKey.publicKey, dh: dh, isClient: false)
        return (ew, session, sh)
    }
}

/// The control messages: the head's request (first frame) and the worker's answer.
struct RelayRequest: Codable, Equatable {
    var target: String
    var node: String
}

struct RelayAnswer: Codable, Equatable {
    var ok: Bool?
    var error: String?

    static func decode(_ frame: ByteBuffer) throws -> RelayAnswer {
        guard let a = try? JSONDecoder().decode(RelayAnswer.self, from: Data(frame.readableBytesView)), a.ok == true || a.error != nil else {
            throw SecureRelayError.badControl("the worker's answer is neither ok nor an error")
        }
        return a
    }
}

func encodeControl(_ value: some Encodable) -> [UInt8] {
    (try? Array(JSONEncoder().encode(value))) ?? []
}

/// Sent up the pipeline once the handshake is done: the peer's static public key.
struct SecureChannelEstablished {
    var peerKey: [UInt8]
}

/// Encrypts and authenticates one TCP connection: runs the handshake (as head or worker), then
/// turns each received frame into one plaintext `ByteBuffer` read and seals every write (split
/// into 64 KiB frames). Any failure fires the error and closes the connection (fail closed).
final class SecureChannelHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    enum Role {
        /// The head: sends its hello when connected, `firstFrame` once the session is up.
        case client(ClientHandshake, firstFrame: [UInt8])
        /// The worker: admits clients whose static key `allow` accepts.
        case server(StaticKey, allow: @Sendable ([UInt8]) -> Bool)
    }

    enum State {
        case handshaking(Role)
        case established(SecureSession)
        case failed
    }

    var state: State
    var inbound: ByteBuffer?
    var helloSent = false
    /// Writes from above before the session is up (sealed once it is).
    var early: [(ByteBuffer, EventLoopPromise<Void>?)] = []

    init(_ role: Role) { state = .handshaking(role) }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { sendHello(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        sendHello(context)
        context.fireChannelActive()
    }

    func sendHello(_ context: ChannelHandlerContext) {
        guard !helloSent, case .handshaking(.client(let hs, _)) = state else { return }
        helloSent = true
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(bytes: hs.hello)), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        if var pending = inbound, pending.readableBytes > 0 {
            inbound = nil  // no copy-on-write while we append
            pending.discardReadBytes()  // less than a frame: a small move
            pending.writeBuffer(&incoming)
            inbound = pending
        } else {
            inbound = incoming
        }
        do {
            try process(context)
        } catch {
            fail(context, error)
        }
    }

    /// Consumes what arrived: the peer's hello, then whole frames, each read up the pipeline.
    func process(_ context: ChannelHandlerContext) throws {
        while var buffer = inbound {
            inbound = nil  // no copy-on-write while we consume it
            defer { inbound = buffer }
            switch state {
            case .failed:
                return
            case .handshaking(let role):
                let need = if case .client = role { SecureRelayWire.serverHelloLength } else { SecureRelayWire.clientHelloLength }
                guard let hello = buffer.readBytes(length: need) else { return }
                try establish(context, role: role, hello: hello)
            case .established(var session):
                let frame = try session.open(&buffer, allocator: context.channel.allocator)
                state = .established(session)
                guard let frame else { return }
                context.fireChannelRead(wrapInboundOut(frame))
            }
        }
    }

    func establish(_ context: ChannelHandlerContext, role: Role, hello: [UInt8]) throws {
        switch role {
        case .client(let hs, let firstFrame):
            var session = try hs.finish(serverHello: hello)
            let request = try session.seal(firstFrame, allocator: context.channel.allocator)
            state = .established(session)
            context.writeAndFlush(wrapOutboundOut(request), promise: nil)
            context.fireUserInboundEventTriggered(SecureChannelEstablished(peerKey: hs.serverKey))
        case .server(let key, let allow):
            let (reply, session, clientKey) = try ServerHandshake.respond(to: hello, staticKey: key, allow: allow)
            state = .established(session)
            context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(bytes: reply)), promise: nil)
            context.fireUserInboundEventTriggered(SecureChannelEstablished(peerKey: clientKey))
        }
        let writes = early
        early = []
        for (data, promise) in writes { seal(context, data, promise: promise) }
        if !writes.isEmpty { context.flush() }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        seal(context, unwrapOutboundIn(data), promise: promise)
    }

    func seal(_ context: ChannelHandlerContext, _ plaintext: ByteBuffer, promise: EventLoopPromise<Void>?) {
        switch state {
        case .handshaking:
            early.append((plaintext, promise))
        case .failed:
            promise?.fail(ChannelError.ioOnClosedChannel)
        case .established(var session):
            // An empty write (a flush barrier before a close) goes through as is.
            guard plaintext.readableBytes > 0 else { return context.write(wrapOutboundOut(plaintext), promise: promise) }
            var out = context.channel.allocator.buffer(capacity: plaintext.readableBytes + 20 * (plaintext.readableBytes / SecureRelayWire.maxPlaintext + 1))
            do {
                try plaintext.withUnsafeReadableBytes { try session.seal($0, into: &out) }
            } catch {
                promise?.fail(error)
                return fail(context, error)
            }
            state = .established(session)
            context.write(wrapOutboundOut(out), promise: promise)
        }
    }

    func fail(_ context: ChannelHandlerContext, _ error: any Error) {
        if case .failed = state { return }
        state = .failed
        inbound = nil
        for (_, promise) in early { promise?.fail(error) }
        early = []
        context.fireErrorCaught(error)
        context.close(promise: nil)
    }
}
