@testable import MeshRelay
import MeshZMQ
import NIOCore
import Testing

// The secure relay's handshake and framing, without sockets: every way it can go wrong must end
// in a thrown error (the connection then closes), never in bytes handed on.

/// A head and a worker with their own static keys, and the sessions of one handshake.
struct HandshakePair {
    let head = try! CurveKeyPair.generate()
    let worker = try! CurveKeyPair.generate()

    func handshake(expecting serverKey: [UInt8]? = nil) throws -> (head: SecureSession, worker: SecureSession, clientKey: [UInt8]) {
        let client = ClientHandshake(staticKey: try StaticKey(head), serverKey: serverKey ?? worker.publicKey)
        let (reply, workerSession, clientKey) = try ServerHandshake.respond(to: client.hello, staticKey: try StaticKey(worker)) {
            $0 == head.publicKey
        }
        return (try client.finish(serverHello: reply), workerSession, clientKey)
    }
}

func opened(_ session: inout SecureSession, _ wire: ByteBuffer) throws -> [[UInt8]] {
    var buffer = wire
    var out: [[UInt8]] = []
    while let frame = try session.open(&buffer) { out.append(Array(frame.readableBytesView)) }
    #expect(buffer.readableBytes == 0)
    return out
}

@Suite struct SecureChannelTests {
    @Test func handshakeBothWays() throws {
        let keys = HandshakePair()
        var (head, worker, clientKey) = try keys.handshake()
        #expect(clientKey == keys.head.publicKey)
        // Head → worker, several frames in one buffer, one over 64 KiB (split in two).
        let big = randomBytes(100_000)
        var wire = try head.seal([1, 2, 3])
        var second = try head.seal(big)
        wire.writeBuffer(&second)
        #expect(try opened(&worker, wire) == [[1, 2, 3], Array(big[..<65536]), Array(big[65536...])])
        // Worker → head: its own key and counter.
        #expect(try opened(&head, try worker.seal(Array("{\"ok\":true}".utf8))) == [Array("{\"ok\":true}".utf8)])
        // A frame arriving a byte at a time opens once whole.
        let frame = try worker.seal([9, 8, 7])
        var partial = ByteBuffer()
        for (i, byte) in frame.readableBytesView.enumerated() {
            partial.writeInteger(byte)
            let got = try head.open(&partial)
            #expect((got != nil) == (i == frame.readableBytes - 1))
            if let got { #expect(Array(got.readableBytesView) == [9, 8, 7]) }
        }
    }

    @Test func refusedClientKey() throws {
        let keys = HandshakePair()
        let client = ClientHandshake(staticKey: try StaticKey(keys.head), serverKey: keys.worker.publicKey)
        #expect(throws: SecureRelayError.keyRefused) {
            _ = try ServerHandshake.respond(to: client.hello, staticKey: try StaticKey(keys.worker)) { _ in false }
        }
    }

    @Test func clientExpectingAnotherServerKeyFails() throws {
        let keys = HandshakePair()
        let other = try CurveKeyPair.generate()
        var (head, worker, _) = try keys.handshake(expecting: other.publicKey)
        // Other session keys on each side: neither side's first frame opens.
        #expect(throws: SecureRelayError.frameRejected) { _ = try opened(&worker, try head.seal(Array("{\"target\":\"x\"}".utf8))) }
        #expect(throws: SecureRelayError.frameRejected) { _ = try opened(&head, try worker.seal([1])) }
    }

    @Test func tamperedReplayedAndOversizedFramesFail() throws {
        let keys = HandshakePair()
        var (head, worker, _) = try keys.handshake()
        let frame = try head.seal(randomBytes(200))
        // Any flipped bit (length excepted) fails the tag.
        for index in [4, 50, frame.readableBytes - 1] {
            var copy = worker
            var tampered = frame
            tampered.setInteger(tampered.getInteger(at: index, as: UInt8.self)! ^ 0x01, at: index)
            #expect(throws: SecureRelayError.frameRejected) { _ = try opened(&copy, tampered) }
        }
        // Opens once; the same frame again (a replay) fails: the counter moved on.
        #expect(try opened(&worker, frame).count == 1)
        var replayed = worker  // a failed open ends the connection: try on a copy
        #expect(throws: SecureRelayError.frameRejected) { _ = try opened(&replayed, frame) }
        // Frames out of order fail too.
        let (f1, f2) = (try head.seal([1]), try head.seal([2]))
        var reordered = worker
        #expect(throws: SecureRelayError.frameRejected) { _ = try opened(&reordered, f2) }
        #expect(try opened(&worker, f1) == [[1]])
        // An announced length over 64 KiB + 16, or under a tag, fails before any body arrives.
        for length in [UInt32(SecureRelayWire.maxSealedLength + 1), UInt32.max, 15] {
            var oversized = ByteBuffer()
            oversized.writeInteger(length)
            var copy = worker
            #expect(throws: SecureRelayError.frameTooLarge(Int(length))) { _ = try copy.open(&oversized) }
        }
        #expect(try opened(&worker, f2) == [[2]])
    }

    @Test func badHellosAndLowOrderKeysFail() throws {
        let keys = HandshakePair()
        let worker = try StaticKey(keys.worker)
        let client = ClientHandshake(staticKey: try StaticKey(keys.head), serverKey: keys.worker.publicKey)
        var wrongMagic = client.hello
        wrongMagic[0] = UInt8(ascii: "X")
        #expect(throws: SecureRelayError.badHello("wrong magic")) { _ = try ServerHandshake.respond(to: wrongMagic, staticKey: worker) { _ in true } }
        #expect(throws: SecureRelayError.badHello("67 bytes")) {
            _ = try ServerHandshake.respond(to: Array(client.hello.dropLast()), staticKey: worker) { _ in true }
        }
        // An all-zero (low-order) ephemeral key would make a DH result known to anyone.
        let zeroEphemeral = SecureRelayWire.magic + [UInt8](repeating: 0, count: 32) + keys.head.publicKey
        #expect(throws: SecureRelayError.badKey("low-order public key")) {
            _ = try ServerHandshake.respond(to: zeroEphemeral, staticKey: worker) { _ in true }
        }
        #expect(throws: SecureRelayError.badKey("low-order public key")) { _ = try client.finish(serverHello: [UInt8](repeating: 0, count: 32)) }
        // A keypair whose halves do not match is refused up front.
        let mismatched = try CurveKeyPair(publicKey: keys.head.publicKey, secretKey: keys.worker.secretKey)
        #expect(throws: SecureRelayError.badKey("the keypair's public key does not match its secret key")) { _ = try StaticKey(mismatched) }
    }
}
