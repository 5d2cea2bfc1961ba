import Foundation
import Testing
@testable import MeshZMQ

@Suite struct CurveKeyTests {
    @Test func z85KnownVectorAndRoundTrip() throws {
        // ZeroMQ RFC 32 test vector.
        #expect(Z85.encode([0x86, 0x4F, 0xD2, 0x6F, 0xB5, 0x59, 0xF7, 0x5B]) == "HelloWorld")
        #expect(Z85.decode("HelloWorld") == [0x86, 0x4F, 0xD2, 0x6F, 0xB5, 0x59, 0xF7, 0x5B])
        let data = randomBytes(32)
        #expect(Z85.decode(try #require(Z85.encode(data))) == data)
        #expect(Z85.encode([1, 2, 3]) == nil)
        #expect(Z85.decode("abcd") == nil)
        #expect(Z85.decode("Hello\"orld") == nil)
    }

    @Test func generateAndDerivePublicKey() throws {
        let pair = try CurveKeyPair.generate()
        #expect(pair.publicKey.count == 32 && pair.secretKey.count == 32)
        #expect(try CurveKeyPair.fromSecretKey(pair.secretKey) == pair)
        #expect(try CurveKeyPair.generate() != pair)
        #expect(!pair.description.contains(Z85.encode(pair.secretKey)!))
        #expect(pair.description.contains(pair.publicKeyZ85))
        #expect(throws: MeshZMQError.self) { try CurveKeyPair.fromSecretKey([1, 2, 3]) }
    }
}

@Suite struct MeshSecretTests {
    @Test func derivationIsDeterministicAndSecretSpecific() throws {
        let secret = MeshSecret.generate()
        let again = try MeshSecret(bytes: secret.bytes)
        #expect(try secret.curveKeyPair() == again.curveKeyPair())
        #expect(try secret.curveKeyPair() != MeshSecret.generate().curveKeyPair())
        #expect(try secret.curveKeyPair().secretKey == SHA256.hash(Array("meshd-curve-v1".utf8) + secret.bytes))
        #expect(secret.description == "MeshSecret(<redacted>)")
        #expect(MeshSecret.generate() != secret)
    }

    @Test func fileIsWrittenWith0600AndRoundTrips() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/mesh.secret"
        let secret = MeshSecret.generate()
        let oldMask = umask(0)  // even with a permissive umask the file must be 0600
        defer { umask(oldMask) }
        try secret.write(path: path)
        var info = stat()
        #expect(stat(path, &info) == 0)
        #expect(info.st_mode & 0o777 == 0o600)
        let content = try String(contentsOfFile: path, encoding: .utf8)
        #expect(content.count == 65 && content.hasSuffix("\n"))
        #expect(content.dropLast().allSatisfy { "0123456789abcdef".contains($0) })
        #expect(try MeshSecret.load(path: path) == secret)
    }

    @Test func writeRefusesToOverwriteUnlessForced() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/mesh.secret"
        let first = MeshSecret.generate()
        try first.write(path: path)
        let second = MeshSecret.generate()
        #expect(throws: MeshSecretError.alreadyExists(path: path)) { try second.write(path: path) }
        #expect(try MeshSecret.load(path: path) == first)
        // A symlink at the path is refused too (O_EXCL | O_NOFOLLOW).
        let link = dir + "/link.secret"
        #expect(symlink(dir + "/nowhere", link) == 0)
        #expect(throws: MeshSecretError.alreadyExists(path: link)) { try second.write(path: link) }

        chmod(path, 0o640)
        try second.write(path: path, force: true)
        #expect(try MeshSecret.load(path: path) == second)
        var info = stat()
        #expect(stat(path, &info) == 0 && info.st_mode & 0o777 == 0o600)
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.contains(".tmp-") }
        #expect(leftovers.isEmpty)
    }

    @Test func loadRefusesGroupOrWorldAccess() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/mesh.secret"
        try MeshSecret.generate().write(path: path)
        for mode: mode_t in [0o644, 0o640, 0o604, 0o660, 0o606] {
            chmod(path, mode)
            do {
                _ = try MeshSecret.load(path: path)
                Issue.record("mode \(String(mode, radix: 8)) was accepted")
            } catch {
                #expect(error == .insecurePermissions(path: path, mode: UInt32(mode)))
                #expect(error.description.contains("chmod 600"))
                #expect(error.description.contains(String(mode, radix: 8)))
            }
        }
        chmod(path, 0o400)
        #expect(throws: Never.self) { try MeshSecret.load(path: path) }
    }

    @Test func loadRefusesMalformedContent() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let cases: [String] = [
            "", "garbage\n", String(repeating: "a", count: 63) + "\n", String(repeating: "a", count: 66) + "\n",
            String(repeating: "g", count: 64) + "\n", String(repeating: "ab", count: 16) + " " + String(repeating: "ab", count: 16),
            String(repeating: "x", count: 10_000),
        ]
        for (index, text) in cases.enumerated() {
            let path = dir + "/bad\(index)"
            let fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0o600)
            #expect(fd >= 0)
            _ = Array(text.utf8).withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            close(fd)
            do {
                _ = try MeshSecret.load(path: path)
                Issue.record("case \(index) was accepted")
            } catch {
                guard case .malformed = error else { Issue.record("case \(index): \(error)"); continue }
                #expect(error.description.contains("64 hex digits"))
            }
        }
        #expect(throws: MeshSecretError.self) { try MeshSecret.load(path: dir + "/missing") }
        #expect(throws: MeshSecretError.notRegularFile(path: dir)) { try MeshSecret.load(path: dir) }
        // Upper case and surrounding blanks are accepted.
        let secret = MeshSecret.generate()
        let upper = "  " + String(decoding: secret.fileContent, as: UTF8.self).uppercased() + "\n\n"
        #expect(try MeshSecret.parse(Array(upper.utf8)) == secret)
    }
}

@Suite struct ZAPPolicyTests {
    let mesh = randomBytes(32)
    var policy: ZAPPolicy { ZAPPolicy(domain: "meshd", meshKey: mesh, allowedKeys: [], revokedKeys: []) }

    func request(domain: String = "meshd", mechanism: String = "CURVE", credentials: [[UInt8]]) -> [[UInt8]] {
        [bytes("1.0"), bytes("7"), bytes(domain), bytes("198.18.0.9"), [0, 1], bytes(mechanism)] + credentials
    }

    @Test func acceptsTheMeshKeyAndRepliesWithItsZ85() throws {
        let decision = policy.evaluate(request(credentials: [mesh]))
        #expect(decision.accepted && decision.address == "198.18.0.9" && decision.clientKey == mesh)
        #expect(decision.replyFrames == [bytes("1.0"), bytes("7"), bytes("200"), bytes("OK"), bytes(try #require(Z85.encode(mesh))), []])
    }

    @Test func refusesEverythingElse() {
        let other = randomBytes(32)
        var revoked = policy
        revoked.revoke(mesh)
        let cases: [(ZAPPolicy, [[UInt8]], String)] = [
            (policy, request(credentials: [other]), "not allow-listed"),
            (revoked, request(credentials: [mesh]), "revoked"),
            (policy, request(mechanism: "NULL", credentials: []), "CURVE only"),
            (policy, request(mechanism: "PLAIN", credentials: [bytes("u"), bytes("p")]), "CURVE only"),
            (policy, request(domain: "other", credentials: [mesh]), "domain"),
            (policy, request(credentials: [Array(mesh.prefix(31))]), "malformed"),
            (policy, request(credentials: [mesh, mesh]), "malformed"),
            (policy, [bytes("2.0")] + Array(request(credentials: [mesh]).dropFirst()), "version"),
            (policy, [bytes("1.0"), bytes("7")], "malformed"),
            (policy, [], "malformed"),
        ]
        for (policy, frames, reason) in cases {
            let decision = policy.evaluate(frames)
            #expect(!decision.accepted)
            #expect(decision.reason?.contains(reason) == true, "\(String(describing: decision.reason)) lacks \(reason)")
            #expect(decision.replyFrames[2] == bytes("400"))
            #expect(decision.replyFrames[4].isEmpty)
        }
    }

    @Test func allowAndRevokeUpdateEachOther() {
        let key = randomBytes(32)
        var p = policy
        p.allow(key)
        #expect(p.evaluate(request(credentials: [key])).accepted)
        p.revoke(key)
        #expect(!p.evaluate(request(credentials: [key])).accepted)
        p.allow(key)
        #expect(p.evaluate(request(credentials: [key])).accepted)
    }
}
