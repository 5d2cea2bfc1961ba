import CZeroMQ
import Foundation
import Testing
@testable import MeshZMQ

/// Real loops over tcp://127.0.0.1. Serialized so the idle-CPU measurement sees no other loop's traffic.
@Suite(.serialized) struct MeshSocketLoopTests {
    @Test func messagesFlowBothWaysBetweenLoopsWithTheSameSecret() async throws {
        let secret = MeshSecret.generate()
        let server = try makeLoop(secret: secret)
        let client = try makeLoop(secret: secret)
        defer { server.loop.stop(); client.loop.stop() }
        let endpoint = try await server.loop.bind("tcp://127.0.0.1:*")
        #expect(endpoint.hasPrefix("tcp://127.0.0.1:") && !endpoint.hasSuffix(":*"))
        try await client.loop.connect(peer: "server", endpoint: endpoint, serverKey: server.loop.publicKey)

        // Sent before the handshake completes: queued by the loop, delivered once connected.
        let request: [[UInt8]] = [bytes("request"), Array(0...255), [], randomBytes(1 << 20)]
        #expect(client.loop.send(request, to: .outbound("server")))
        let received = try #require(await server.message(request))
        guard case .inbound = received.link else { Issue.record("expected an inbound link"); return }
        #expect(received.peerKey == server.loop.publicKey)  // the mesh key, as authenticated by ZAP
        #expect(received.peerAddress == "127.0.0.1")
        #expect(await client.first { isConnected($0, "server") } != nil)

        let reply: [[UInt8]] = [bytes("reply"), randomBytes(1 << 20), [0, 0, 0]]
        #expect(server.loop.send(reply, to: received.link))
        let answer = try #require(await client.message(reply))
        #expect(answer.link == .outbound("server"))
        #expect(answer.peerKey == server.loop.publicKey)

        // Many messages keep their order.
        for i in 0..<200 { client.loop.send([bytes("n"), bytes("\(i)")], to: .outbound("server")) }
        #expect(await server.message([bytes("n"), bytes("199")]) != nil)
        let order = server.all.compactMap { event -> Int? in
            if case let .message(m) = event, m.frames.first == bytes("n") { return Int(String(decoding: m.frames[1], as: UTF8.self)) }
            return nil
        }
        #expect(order == Array(0..<200))
        #expect(!server.all.contains { isAuthFailure($0) })
    }

    @Test func aLoopWithAnotherSecretIsRefused() async throws {
        let server = try makeLoop(secret: MeshSecret.generate())
        let stranger = try makeLoop(secret: MeshSecret.generate())
        defer { server.loop.stop(); stranger.loop.stop() }
        let endpoint = try await server.loop.bind("tcp://127.0.0.1:*")

        // The stranger believes the mesh key is the one its own secret derives: the CURVE handshake fails.
        try await stranger.loop.connect(peer: "server", endpoint: endpoint, serverKey: stranger.loop.publicKey)
        stranger.loop.send([bytes("stranger-1")], to: .outbound("server"))
        #expect(await server.first { isAuthFailure($0, containing: "cryptographic") } != nil)
        #expect(await stranger.first { if case .handshakeFailed(peer: "server", _) = $0 { true } else { false } } != nil)

        // Even knowing our real public key it fails: its client key is not the mesh key, so ZAP refuses.
        try await stranger.loop.connect(peer: "server2", endpoint: endpoint, serverKey: server.loop.publicKey)
        stranger.loop.send([bytes("stranger-2")], to: .outbound("server2"))
        #expect(await server.first { isAuthFailure($0, containing: "not allow-listed") } != nil)
        #expect(await stranger.first { event in
            if case let .handshakeFailed(peer: "server2", reason) = event { reason.contains("ZAP") } else { false }
        } != nil)

        try await Task.sleep(for: .seconds(1))
        #expect(!server.hasMessage(containing: bytes("stranger-1")))
        #expect(!server.hasMessage(containing: bytes("stranger-2")))
        #expect(!stranger.all.contains { isConnected($0, "server") || isConnected($0, "server2") })
    }

    @Test func aClientWithoutCurveIsRefused() async throws {
        let server = try makeLoop(secret: MeshSecret.generate())
        defer { server.loop.stop() }
        let endpoint = try await server.loop.bind("tcp://127.0.0.1:*")
        let context = try #require(zmq_ctx_new())
        let dealer = try #require(zmq_socket(context, ZMQ_DEALER))  // NULL mechanism: no encryption at all
        try ZMQSocketOps.setInt(dealer, ZMQ_LINGER, 0, "linger")
        #expect(zmq_connect(dealer, endpoint) == 0)
        #expect(zmq_send(dealer, "plaintext", 9, 0) == 9)
        // Either side may notice the mismatch first: the server reports the mismatch, or an aborted handshake.
        #expect(await server.first {
            if isAuthFailure($0, containing: "mechanism mismatch") { return true }
            if case .handshakeAborted = $0 { return true }
            return false
        } != nil)
        try await Task.sleep(for: .milliseconds(300))
        #expect(!server.hasMessage(containing: bytes("plaintext")))
        zmq_close(dealer)
        zmq_ctx_term(context)
    }

    @Test func allowListAdmitsAndRevocationRefusesARandomKey() async throws {
        let server = try makeLoop(secret: MeshSecret.generate())
        let outsiderKeys = try CurveKeyPair.generate()
        let outsider = try makeLoop(keyPair: outsiderKeys)
        defer { server.loop.stop(); outsider.loop.stop() }
        let endpoint = try await server.loop.bind("tcp://127.0.0.1:*")

        try await outsider.loop.connect(peer: "try1", endpoint: endpoint, serverKey: server.loop.publicKey)
        outsider.loop.send([bytes("before-allow")], to: .outbound("try1"))
        let refusal = await server.first { isAuthFailure($0, containing: "not allow-listed") }
        guard case let .authFailure(address, _) = refusal else { Issue.record("no ZAP refusal"); return }
        #expect(address == "127.0.0.1")
        outsider.loop.disconnect(peer: "try1")

        try await server.loop.allow(key: outsiderKeys.publicKey)
        try await outsider.loop.connect(peer: "try2", endpoint: endpoint, serverKey: server.loop.publicKey)
        outsider.loop.send([bytes("after-allow")], to: .outbound("try2"))
        let admitted = try #require(await server.message([bytes("after-allow")]))
        #expect(admitted.peerKey == outsiderKeys.publicKey)
        #expect(!server.hasMessage(containing: bytes("before-allow")))

        try await server.loop.revoke(key: outsiderKeys.publicKey)
        outsider.loop.disconnect(peer: "try2")
        try await outsider.loop.connect(peer: "try3", endpoint: endpoint, serverKey: server.loop.publicKey)
        outsider.loop.send([bytes("after-revoke")], to: .outbound("try3"))
        #expect(await server.first { isAuthFailure($0, containing: "revoked") } != nil)
        try await Task.sleep(for: .seconds(1))
        #expect(!server.hasMessage(containing: bytes("after-revoke")))
    }

    @Test func revocationReachesAnEstablishedConnection() async throws {
        let server = try makeLoop(secret: MeshSecret.generate())
        let memberKeys = try CurveKeyPair.generate()
        let member = try makeLoop(keyPair: memberKeys)
        defer { server.loop.stop(); member.loop.stop() }
        let endpoint = try await server.loop.bind("tcp://127.0.0.1:*")
        try await server.loop.allow(key: memberKeys.publicKey)
        try await member.loop.connect(peer: "m", endpoint: endpoint, serverKey: server.loop.publicKey)
        member.loop.send([bytes("while-trusted")], to: .outbound("m"))
        #expect(try #require(await server.message([bytes("while-trusted")])).peerKey == memberKeys.publicKey)

        // Revoked while connected: the connection stays (libzmq cannot drop one ROUTER peer), but
        // nothing that comes over it is delivered, and that is reported once, not per message.
        try await server.loop.revoke(key: memberKeys.publicKey)
        for i in 0..<20 { member.loop.send([bytes("after-revoke-\(i)")], to: .outbound("m")) }
        #expect(await server.first { isAuthFailure($0, containing: "established connection is ignored") } != nil)
        try await Task.sleep(for: .milliseconds(500))
        for i in 0..<20 { #expect(!server.hasMessage(containing: bytes("after-revoke-\(i)"))) }
        #expect(server.all.filter { isAuthFailure($0, containing: "established connection is ignored") }.count == 1)

        // Trusted again: the same connection carries messages again.
        try await server.loop.allow(key: memberKeys.publicKey)
        member.loop.send([bytes("re-allowed")], to: .outbound("m"))
        #expect(await server.message([bytes("re-allowed")]) != nil)
    }

    @Test func oversizedMessageDropsOnlyThatConnection() async throws {
        let secret = MeshSecret.generate()
        let server = try makeLoop(secret: secret) { $0.maxMessageSize = 64 * 1024; $0.maxFramesPerMessage = 8 }
        let offender = try makeLoop(secret: secret)
        let bystander = try makeLoop(secret: secret)
        defer { server.loop.stop(); offender.loop.stop(); bystander.loop.stop() }
        let endpoint = try await server.loop.bind("tcp://127.0.0.1:*")
        try await offender.loop.connect(peer: "s", endpoint: endpoint, serverKey: server.loop.publicKey)
        try await bystander.loop.connect(peer: "s", endpoint: endpoint, serverKey: server.loop.publicKey)
        #expect(await offender.first { isConnected($0, "s") } != nil)
        #expect(await bystander.first { isConnected($0, "s") } != nil)

        offender.loop.send([bytes("big"), randomBytes(128 * 1024)], to: .outbound("s"))
        #expect(await offender.first { $0 == .peerDisconnected("s") } != nil)
        bystander.loop.send([bytes("still-served")], to: .outbound("s"))
        #expect(await server.message([bytes("still-served")]) != nil)

        // The offender's DEALER reconnects by itself and is served again.
        #expect(await offender.first { event in
            offender.all.filter { isConnected($0, "s") }.count >= 2
        } != nil)
        offender.loop.send([bytes("small-again")], to: .outbound("s"))
        #expect(await server.message([bytes("small-again")]) != nil)
        #expect(!server.hasMessage(containing: bytes("big")))

        // Too many frames (each within the size limit) are dropped by the loop and reported.
        bystander.loop.send(Array(repeating: bytes("f"), count: 9), to: .outbound("s"))
        #expect(await server.first { if case .malformed = $0 { true } else { false } } != nil)
        bystander.loop.send([bytes("after-malformed")], to: .outbound("s"))
        #expect(await server.message([bytes("after-malformed")]) != nil)
    }

    #if os(Linux)
    @Test func idleLoopsUseNoCPU() async throws {
        let secret = MeshSecret.generate()
        // Other suites run meshes in this process at the same time: only the ZeroMQ threads that
        // appear while this test makes its loops are counted (theirs carry traffic; ours must not).
        let threadsBefore = Set(zmqThreadTicks().keys)
        let loops = try (0..<3).map { _ in try makeLoop(secret: secret) }
        defer { for l in loops { l.loop.stop() } }
        var endpoints: [String] = []
        for l in loops { endpoints.append(try await l.loop.bind("tcp://127.0.0.1:*")) }
        let ours = Set(zmqThreadTicks().keys).subtracting(threadsBefore)
        for (i, l) in loops.enumerated() {
            for (j, endpoint) in endpoints.enumerated() where j != i {
                try await l.loop.connect(peer: MeshPeerID("n\(j)"), endpoint: endpoint, serverKey: l.loop.publicKey)
            }
        }
        for (i, l) in loops.enumerated() {
            for j in 0..<3 where j != i { #expect(await l.first { isConnected($0, MeshPeerID("n\(j)")) } != nil) }
        }
        // One round trip so every path has carried traffic, then settle.
        loops[0].loop.send([bytes("ping")], to: .outbound("n1"))
        #expect(await loops[1].message([bytes("ping")]) != nil)
        try await Task.sleep(for: .milliseconds(200))

        // Only the loop threads and libzmq's own threads are measured: the test's polling tasks are not ours.
        let before = zmqThreadTicks().filter { ours.contains($0.key) }
        let processBefore = processCPUSeconds()
        try await Task.sleep(for: .seconds(2))
        let after = zmqThreadTicks()
        let processAfter = processCPUSeconds()
        #expect(before.count >= 3 * 3)  // 3 loop threads + at least an I/O thread and a reaper per context
        let ticks = before.keys.reduce(0) { $0 + ((after[$1] ?? before[$1]!) - before[$1]!) }
        let seconds = Double(ticks) / Double(sysconf(Int32(_SC_CLK_TCK)))
        #expect(seconds < 0.04, "ZeroMQ threads used \(seconds) s of CPU in 2 s idle (process total \(processAfter - processBefore) s)")
    }
    #endif

    @Test func stopNeverHangs() async throws {
        let secret = MeshSecret.generate()
        let server = try makeLoop(secret: secret)
        let client = try makeLoop(secret: secret)
        let endpoint = try await server.loop.bind("tcp://127.0.0.1:*")
        try await client.loop.connect(peer: "s", endpoint: endpoint, serverKey: server.loop.publicKey)
        try await client.loop.connect(peer: "nobody", endpoint: "tcp://127.0.0.1:9", serverKey: server.loop.publicKey)
        #expect(await client.first { isConnected($0, "s") } != nil)

        // Fill libzmq's pipes and our per-peer queue, then kill the peer so nothing drains.
        let payload = randomBytes(64 * 1024)
        for _ in 0..<1500 { client.loop.send([payload], to: .outbound("s")) }
        server.loop.stop()
        for _ in 0..<1500 { client.loop.send([payload], to: .outbound("s")) }
        for _ in 0..<100 { client.loop.send([payload], to: .outbound("nobody")) }

        let clock = ContinuousClock()
        let elapsed = clock.measure { client.loop.stop() }
        #expect(elapsed < .seconds(3), "stop took \(elapsed)")  // linger is bounded; a blocked stop would hang
        #expect(clock.measure { client.loop.stop() } < .seconds(1))
        #expect(client.loop.isStopped)
        #expect(!client.loop.send([bytes("late")], to: .outbound("s")))
        await #expect(throws: MeshZMQError.stopped) { try await client.loop.bind("tcp://127.0.0.1:*") }
        await #expect(throws: MeshZMQError.stopped) { try await client.loop.allow(key: randomBytes(32)) }
        #expect(await client.waitFinished())
        #expect(await server.waitFinished())
    }

    @Test func commandErrorsAreReported() async throws {
        let recorder = try makeLoop(secret: MeshSecret.generate())
        defer { recorder.loop.stop() }
        let loop = recorder.loop
        await #expect(throws: MeshZMQError.self) { try await loop.bind("nonsense://x") }
        try await loop.connect(peer: "p", endpoint: "tcp://127.0.0.1:9", serverKey: loop.publicKey)
        await #expect(throws: MeshZMQError.peerExists("p")) {
            try await loop.connect(peer: "p", endpoint: "tcp://127.0.0.1:9", serverKey: loop.publicKey)
        }
        await #expect(throws: MeshZMQError.self) { try await loop.connect(peer: "q", endpoint: "tcp://127.0.0.1:9", serverKey: [1]) }
        #expect(!loop.send([], to: .outbound("p")))
        loop.send([bytes("x")], to: .outbound("unknown"))
        loop.send([bytes("x")], to: .inbound(routingID: [0, 1, 2, 3, 4]))
        #expect(await recorder.first { $0 == .sendFailed(link: .outbound("unknown"), reason: "unknown peer") } != nil)
        #expect(await recorder.first { if case .sendFailed(link: .inbound, _) = $0 { true } else { false } } != nil)
        _ = try await loop.bind("tcp://127.0.0.1:*")
        loop.send([bytes("x")], to: .inbound(routingID: [0, 1, 2, 3, 4]))
        #expect(await recorder.first { $0 == .sendFailed(link: .inbound(routingID: [0, 1, 2, 3, 4]), reason: "the client is no longer connected") } != nil)
    }
}

#if os(Linux)
/// utime+stime clock ticks of this process's `meshd-zmq` loop threads and libzmq `ZMQbg/*` threads, by tid.
func zmqThreadTicks() -> [String: Int] {
    var result: [String: Int] = [:]
    guard let tasks = try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task") else { return result }
    for tid in tasks {
        guard let comm = try? String(contentsOfFile: "/proc/self/task/\(tid)/comm", encoding: .utf8),
              comm.hasPrefix("meshd-zmq") || comm.hasPrefix("ZMQbg"),
              let stat = try? String(contentsOfFile: "/proc/self/task/\(tid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")")
        else { continue }
        // Fields after "(comm)": state is field 3, utime 14, stime 15.
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 12, let utime = Int(fields[11]), let stime = Int(fields[12]) else { continue }
        result[tid] = utime + stime
    }
    return result
}

func processCPUSeconds() -> Double {
    var usage = rusage()
    getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage)
    return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
}
#endif

/// The loop as a task executor: jobs run on the loop thread, between socket work, and never get lost.
/// (In the serialized suite: the idle-CPU test counts every ZeroMQ thread of the process.)
extension MeshSocketLoopTests {
    /// The calling thread's name (`/proc/thread-self/comm`); the loop thread is `meshd-zmq`.
    static func threadName() -> String {
        (try? String(contentsOfFile: "/proc/thread-self/comm", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "?"
    }

    @Test func tasksPreferringTheLoopRunOnItsThreadAndCanUseIt() async throws {
        let secret = MeshSecret.generate()
        let server = try makeLoop(secret: secret)
        let client = try makeLoop(secret: secret)
        defer { server.loop.stop(); client.loop.stop() }
        let endpoint = try await server.loop.bind("tcp://127.0.0.1:*")

        let names = try await Task(executorPreference: client.loop) { () async throws -> [String] in
            var seen = [Self.threadName()]
            // A command submitted from the loop thread (no wake-up) and awaited there.
            try await client.loop.connect(peer: "s", endpoint: endpoint, serverKey: server.loop.publicKey)
            seen.append(Self.threadName())
            // Suspensions resumed from other threads come back to the loop thread.
            try await Task.sleep(for: .milliseconds(20))
            seen.append(Self.threadName())
            for i in 0..<50 { client.loop.send([bytes("from-loop-\(i)")], to: .outbound("s")) }
            return seen
        }.value
        #expect(names == ["meshd-zmq", "meshd-zmq", "meshd-zmq"])
        for i in 0..<50 { #expect(await server.message([bytes("from-loop-\(i)")]) != nil) }
        #expect(Self.threadName() != "meshd-zmq")
    }

    @Test func manyJobsInterleaveWithSocketTraffic() async throws {
        let secret = MeshSecret.generate()
        let server = try makeLoop(secret: secret)
        let client = try makeLoop(secret: secret)
        defer { server.loop.stop(); client.loop.stop() }
        let endpoint = try await server.loop.bind("tcp://127.0.0.1:*")
        try await client.loop.connect(peer: "s", endpoint: endpoint, serverKey: server.loop.publicKey)
        // 500 tasks on the loop, each yielding a few times: more jobs than one round of commands takes.
        let total = await withTaskGroup(of: Int.self) { group in
            for i in 0..<500 {
                group.addTask(executorPreference: client.loop) {
                    for _ in 0..<3 { await Task.yield() }
                    client.loop.send([bytes("job-\(i)")], to: .outbound("s"))
                    return Self.threadName() == "meshd-zmq" ? 1 : 0
                }
            }
            return await group.reduce(0, +)
        }
        #expect(total == 500)
        for i in stride(from: 0, to: 500, by: 50) { #expect(await server.message([bytes("job-\(i)")]) != nil) }
    }

    @Test func jobsAfterStopRunElsewhere() async throws {
        let loop = try makeLoop(secret: MeshSecret.generate()).loop
        loop.stop()
        let name = await Task(executorPreference: loop) { Self.threadName() }.value
        #expect(name != "meshd-zmq")
    }
}
