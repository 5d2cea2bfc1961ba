import Foundation
import MeshCore
@testable import MeshNet
@testable import MeshRelay
import MeshZMQ
import NIOCore
import NIOPosix
import Synchronization
import Testing

// The secure relay over real TCP on loopback: an echo server stands for the worker's rpc-server,
// a blocking client for llama-server.

/// What a worker's `accept` was asked.
final class AcceptLog: Sendable {
    let asked = Mutex<[String]>([])
    func record(_ target: String, _ node: String, _ key: [UInt8], mesh: [UInt8]) {
        asked.withLock { $0.append("\(node) \(target) \(key == mesh ? "mesh-key" : "other-key")") }
    }
    var entries: [String] { asked.withLock { $0 } }
}

/// A worker relay in front of an echo server and a head listener to it, with raw keys.
struct SecureRig {
    let echo: EchoServer
    let server: SecureRelayServer
    let listener: SecureRelayListener
    let log = AcceptLog()

    /// `headKey` authenticates the head; the worker admits `admitted`; the head expects `expectedServerKey`.
    init(target: String = "rpc/s1", headKey: CurveKeyPair, workerKey: CurveKeyPair, admitted: [UInt8]? = nil,
         expectedServerKey: [UInt8]? = nil, accept: SecureRelayServer.Accept? = nil) async throws {
        let echo = try await EchoServer()
        let log = self.log
        let admitted = admitted ?? headKey.publicKey
        server = try await SecureRelayServer(host: "127.0.0.1", keyPair: workerKey, allow: { $0 == admitted },
                                             accept: accept ?? { target, node, key in
                                                 log.record(target, node, key, mesh: admitted)
                                                 return .success((host: "127.0.0.1", port: echo.port))
                                             })
        listener = try await SecureRelayListener(host: "127.0.0.1", port: server.port, serverKey: expectedServerKey ?? workerKey.publicKey,
                                                 node: "worker", target: target, localNode: "head", keyPair: headKey)
        self.echo = echo
    }

    func stop() async {
        await listener.close()
        await server.close()
        echo.stop()
    }
}

@Suite(.serialized) struct SecureRelayTests {
    @Test func meshServiceAdmitsWhatZAPAdmits() async throws {
        let secret = MeshSecret.generate()
        let node = try await startNode("keys-a", secret: secret)
        defer { node.stop() }
        let keys = try node.relayKeyPairs()
        #expect(keys.server == (try secret.curveKeyPair()) && keys.client == keys.server)
        #expect(node.relayKeyAllowed(keys.server.publicKey))
        let other = try CurveKeyPair.generate()
        #expect(!node.relayKeyAllowed(other.publicKey))
        #expect(!node.relayKeyAllowed([1, 2, 3]))
        try await node.trust(key: other.publicKey)
        #expect(node.relayKeyAllowed(other.publicKey))
        try await node.revoke(key: other.publicKey)
        #expect(!node.relayKeyAllowed(other.publicKey))
        try await node.revoke(key: keys.server.publicKey)
        #expect(!node.relayKeyAllowed(keys.server.publicKey))
    }

    @Test func bulkRoundTripsAndCostAgainstTunnel() async throws {
        // Two mesh nodes: the relay uses their keys and admission (the convenience inits).
        let (a, b) = try await startPair("sec-a", "sec-b")
        defer { a.stop(); b.stop() }
        let echo = try await EchoServer()
        defer { echo.stop() }
        let log = AcceptLog()
        let meshKey = try a.relayKeyPairs().server.publicKey
        let server = try await SecureRelayServer(service: b, host: "127.0.0.1") { target, node, key in
            log.record(target, node, key, mesh: meshKey)
            return .success((host: "127.0.0.1", port: echo.port))
        }
        let listener = try await SecureRelayListener(service: a, node: "sec-b", target: "rpc/s1", host: "127.0.0.1", port: server.port)
        let client = try BlockingClient(port: listener.port)

        // Several MB in uneven writes (the first before the worker said ok), read back concurrently, byte-exact.
        let data = randomBytes(6 << 20 + 12345)
        let (back, bulkTime) = try await echoInUnevenWrites(data, through: client)
        #expect(back == data)
        print("secure relay bulk: \(data.count) bytes echoed in \(bulkTime)")
        #expect(log.entries == ["sec-a rpc/s1 mesh-key"])

        // The same echo server through the ZeroMQ tunnel (same run, same machine) and directly.
        let rig = try await RelayRig("sectun", target: "rpc/s9")
        let direct = try BlockingClient(port: echo.port)
        // Interleaved in batches of 100 (after a warm-up batch), so a change of load on this
        // machine (other suites run in parallel) weighs on all three paths alike.
        // Each path's median over the batches: a batch that other suites' load hit does not decide.
        var (secures, tunnels, directs) = ([Double](), [Double](), [Double]())
        for batch in 0...10 {
            let s = try await meanRoundTrip(client, count: 100), t = try await meanRoundTrip(rig.client, count: 100)
            let d = try await meanRoundTrip(direct, count: 100)
            if batch > 0 { secures.append(s); tunnels.append(t); directs.append(d) }
        }
        func median(_ v: [Double]) -> Double { let s = v.sorted(); return (s[s.count / 2 - 1] + s[s.count / 2]) / 2 }
        let (viaSecure, viaTunnel, viaDirect) = (median(secures), median(tunnels), median(directs))
        print(String(format: "round trip of 64 bytes, median of 10 batches of 100: secure relay %.1f µs, ZeroMQ tunnel %.1f µs, direct %.1f µs; added: secure %.1f µs, tunnel %.1f µs",
                     viaSecure, viaTunnel, viaDirect, viaSecure - viaDirect, viaTunnel - viaDirect))
        // On a quiet machine the secure relay adds less than the tunnel (0.74 of it: 852 against
        // 1,156 µs); under the whole parallel suite a CI run measured 1.35 of it with medians of
        // batches. The comparison itself is the benches' (benches/split-mesh*.md); here it guards
        // against a relay that adds several times what the tunnel does.
        #expect(viaSecure - viaDirect < 2 * (viaTunnel - viaDirect))

        // The client closing closes the echo server's connection through the relay.
        let closedBefore = echo.closedClients
        client.close()
        direct.close()
        try await waitUntil("echo server sees both clients gone") { echo.closedClients >= closedBefore + 2 }
        #expect(await firstFailure(listener.failures, within: .milliseconds(300)) == nil)  // a clean close is no failure
        await rig.stop()
        await listener.close()
        await server.close()
    }

    @Test func farServerClosingClosesClientAndIsReported() async throws {
        let rig = try await SecureRig(headKey: try CurveKeyPair.generate(), workerKey: try CurveKeyPair.generate())
        let client = try BlockingClient(port: rig.listener.port)
        try client.write([1, 2, 3])
        #expect(try await blocking { try client.read(3) } == [1, 2, 3])
        rig.echo.hangUp()
        #expect(try await blocking { client.waitClosed() })
        let failure = await firstFailure(rig.listener.failures)
        #expect(failure?.error as? SecureRelayError == .connectionLost("worker closed the connection"), "\(String(describing: failure))")
        await rig.stop()
    }

    @Test func refusalClosesConnectionAndIsReported() async throws {
        let asked = Mutex<[String]>([])
        let rig = try await SecureRig(target: "rpc/s3", headKey: try CurveKeyPair.generate(), workerKey: try CurveKeyPair.generate()) { target, node, _ in
            asked.withLock { $0.append("\(node) \(target)") }
            return .failure(SecureRelayRefusal("no split s3 here"))
        }
        let client = try BlockingClient(port: rig.listener.port)
        #expect(try await blocking { client.waitClosed() })
        let failure = await firstFailure(rig.listener.failures)
        #expect(failure?.error as? SecureRelayError == .refused("no split s3 here"))
        #expect(failure?.node == "worker" && failure?.target == "rpc/s3")
        #expect(asked.withLock { $0 } == ["head rpc/s3"])
        await rig.stop()
    }

    @Test func bytesBeforeOkAreHeldUntilAccepted() async throws {
        let echoPort = Mutex(0)
        let rig = try await SecureRig(headKey: try CurveKeyPair.generate(), workerKey: try CurveKeyPair.generate()) { _, _, _ in
            try? await Task.sleep(for: .milliseconds(300))  // a slow decision: the client has long written
            return .success((host: "127.0.0.1", port: echoPort.withLock { $0 }))
        }
        echoPort.withLock { $0 = rig.echo.port }
        let client = try BlockingClient(port: rig.listener.port)
        try client.write([4, 5, 6])
        #expect(try await blocking { try client.read(3) } == [4, 5, 6])
        client.close()
        await rig.stop()
    }

    @Test func workerClosingClosesRpcServerSide() async throws {
        let rig = try await SecureRig(headKey: try CurveKeyPair.generate(), workerKey: try CurveKeyPair.generate())
        let client = try BlockingClient(port: rig.listener.port)
        try client.write([7])
        #expect(try await blocking { try client.read(1) } == [7])
        let closedBefore = rig.echo.closedClients
        await rig.server.close()  // the worker's meshd stops relaying
        try await waitUntil("the rpc-server's connection closes") { rig.echo.closedClients > closedBefore }
        #expect(try await blocking { client.waitClosed() })
        #expect(await firstFailure(rig.listener.failures) != nil)
        await rig.stop()
    }

    @Test func unadmittedClientKeyFailsClosed() async throws {
        let rig = try await SecureRig(headKey: try CurveKeyPair.generate(), workerKey: try CurveKeyPair.generate(),
                                      admitted: try CurveKeyPair.generate().publicKey)
        let client = try BlockingClient(port: rig.listener.port)
        try client.write([1])
        #expect(try await blocking { client.waitClosed() })
        let failure = await firstFailure(rig.listener.failures)
        guard case .handshakeFailed(let why)? = failure?.error as? SecureRelayError else {
            Issue.record("expected a handshake failure, got \(String(describing: failure))")
            return
        }
        #expect(why.contains("before answering"))
        #expect(rig.log.entries.isEmpty)
        await rig.stop()
    }

    @Test func clientExpectingAnotherServerKeyFailsClosed() async throws {
        let rig = try await SecureRig(headKey: try CurveKeyPair.generate(), workerKey: try CurveKeyPair.generate(),
                                      expectedServerKey: try CurveKeyPair.generate().publicKey)
        let client = try BlockingClient(port: rig.listener.port)
        try client.write([1])
        #expect(try await blocking { client.waitClosed() })
        #expect(await firstFailure(rig.listener.failures) != nil)
        #expect(rig.log.entries.isEmpty)  // the worker could not read the request
        await rig.stop()
    }

    @Test func unreachableWorkerIsReported() async throws {
        let listener = try await SecureRelayListener(host: "127.0.0.1", port: 1, serverKey: try CurveKeyPair.generate().publicKey,
                                                     node: "gone", target: "rpc/x", localNode: "head", keyPair: try CurveKeyPair.generate())
        let client = try BlockingClient(port: listener.port)
        #expect(try await blocking { client.waitClosed() })
        let failure = await firstFailure(listener.failures)
        let reason = failure.map { "\($0.error)" } ?? "no failure reported"
        #expect(reason.contains("cannot connect to gone's relay at 127.0.0.1:1"), "\(reason)")
        await listener.close()
    }

    @Test func closeEndsEveryConnection() async throws {
        let rig = try await SecureRig(headKey: try CurveKeyPair.generate(), workerKey: try CurveKeyPair.generate())
        let clients = try (0..<3).map { _ in try BlockingClient(port: rig.listener.port) }
        for (i, c) in clients.enumerated() {
            try c.write([UInt8(i)])
            #expect(try await blocking { try c.read(1) } == [UInt8(i)])
        }
        await rig.listener.close()
        for c in clients { #expect(try await blocking { c.waitClosed() }) }
        try await waitUntil("the echo server sees all three gone") { rig.echo.closedClients >= 3 }
        await rig.stop()
    }
}
