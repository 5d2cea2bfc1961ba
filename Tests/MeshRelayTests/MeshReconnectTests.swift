@testable import MeshNet
import Testing

/// A node that comes back learns each peer's state only over that peer's connection to it, so the
/// peers' DEALERs must not back off past one heartbeat (issue 17, the chaos suite: a restarted node
/// saw the mesh only up to 5 s after the mesh saw it).
@Suite struct MeshReconnectTests {
    @Test func reconnectBackoffIsCappedAtOneHeartbeat() {
        #expect(MeshService.reconnectBackoffCapMs(heartbeatMs: 1000) == 1000)
        #expect(MeshService.reconnectBackoffCapMs(heartbeatMs: 250) == 250)
        #expect(MeshService.reconnectBackoffCapMs(heartbeatMs: 20) == 100)
        #expect(MeshService.reconnectBackoffCapMs(heartbeatMs: 60_000) == 5000)
    }
}
