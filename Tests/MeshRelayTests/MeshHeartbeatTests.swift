import Logging
import MeshCore
@testable import MeshNet
import MeshZMQ
import Synchronization
import Testing

/// What the heartbeat loop asks its sleep for, on a real service (ZeroMQ on 127.0.0.1).
@Suite struct MeshHeartbeatTests {
    final class Sleeps: Sendable {
        let asked = Mutex<[Duration]>([])
        var count: Int { asked.withLock { $0.count } }
        func since(_ i: Int) -> [Duration] { asked.withLock { Array($0[i...]) } }
    }

    /// Idle, the loop only expires peers and sends the beat: a quarter of the heartbeat between
    /// ticks. While a forward waits on a peer, its stall is checked every tenth of the heartbeat.
    @Test func theTickIsAQuarterBeatWhileNoForwardWaitsAndATenthWhileOneDoes() async throws {
        let sleeps = Sleeps()
        var config = MeshServiceConfiguration(nodeID: "hb", listen: HostPort(host: "127.0.0.1", port: 0), staticPeers: [],
                                              heartbeatMs: 200, deadAfterMissed: 10, secret: MeshSecret.generate())
        config.sleep = { (d: Duration) in
            sleeps.asked.withLock { $0.append(d) }
            try? await Task.sleep(for: d)
        }
        var logger = Logger(label: "test.hb")
        logger.logLevel = .warning
        let service = try MeshService(configuration: config, logger: logger, clock: UTCClock()) {
            NodeState(id: "hb", name: "hb", meshEndpoint: "", httpEndpoint: "127.0.0.1:1")
        }
        Task { try await service.run() }
        defer { service.stop() }

        try await waitUntil("three idle ticks") { sleeps.count >= 3 }
        #expect(sleeps.since(0).allSatisfy { $0 == .milliseconds(50) }, "\(sleeps.since(0))")

        // A forward waiting on a peer (no head yet).
        service.state.withLock { $0.pending["req-1"] = MeshService.Pending(node: "elsewhere") }
        var mark = sleeps.count + 1  // the tick asked for before the forward was added may be idle
        try await waitUntil("three busy ticks") { sleeps.count >= mark + 3 }
        #expect(sleeps.since(mark).allSatisfy { $0 == .milliseconds(20) }, "\(sleeps.since(mark))")

        service.state.withLock { $0.pending["req-1"] = nil }
        mark = sleeps.count + 1
        try await waitUntil("idle ticks again") { sleeps.count >= mark + 3 }
        #expect(sleeps.since(mark).allSatisfy { $0 == .milliseconds(50) }, "\(sleeps.since(mark))")
    }
}
