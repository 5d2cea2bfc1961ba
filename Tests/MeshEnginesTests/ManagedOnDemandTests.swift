#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MeshCore
import MeshHTTPClient
import Synchronization
import Testing
@testable import MeshEngines

/// A stored model's engine (`onDemand`): no process until a request prepares it, `loading` while
/// its real llama-server starts (slowed by a wrapper), unloaded on demand, available again after
/// a crash, and a load gate that refuses keeps it unloaded with the reason.
@Suite(.serialized, .timeLimit(.minutes(1))) struct ManagedOnDemandTests {
    @Test func aStoredModelLoadsOnDemandShowsLoadingUnloadsAndComesBackAfterACrash() async throws {
        let (binary, model) = try llamaFixtures()
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("meshd-ondemand-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        // llama-server, half a second late: long enough to see the load.
        let slow = dir.appendingPathComponent("slow-llama-server").path
        try "#!/bin/sh\nsleep 0.5\nexec \(binary) \"$@\"\n".write(toFile: slow, atomically: true, encoding: .utf8)
        chmod(slow, 0o755)
        let client = try makeClient()
        defer { client.shutdown() }
        let gate = Mutex<String?>(nil)
        let asked = Mutex(0)
        let e = ManagedLlamaCppEngine(config: EngineConfig(kind: .llamaCpp, model: model, alias: "tiny", args: ["-t", "1", "-c", "256"], binary: slow),
                                      transport: client, logger: testLogger, id: "store:tiny", onDemand: true)
        e.setLoadGate { _ in
            asked.withLock { $0 += 1 }
            return gate.withLock { $0 }
        }
        await e.start()
        #expect(e.status.phase == .available)
        var snap = await e.refresh()
        #expect(snap.healthy && snap.models.first?.name == "tiny" && snap.models.first?.loaded == false && snap.models.first?.loading == nil)
        #expect((snap.models.first?.sizeBytes ?? 0) > 0 && snap.models.first?.family == "llama")

        // A refusing gate: nothing starts, the reason comes back and stays in the detail.
        gate.withLock { $0 = "no room to load 'tiny' while 'other' serve requests" }
        #expect(await e.prepare() == "no room to load 'tiny' while 'other' serve requests")
        #expect(e.status.phase == .available && e.status.pid == nil)
        gate.withLock { $0 = nil }

        // Two requests at once: one start; `loading` while it starts.
        let first = Task { await e.prepare() }
        let second = Task { await e.prepare() }
        #expect(await eventually(timeout: .seconds(5)) { await e.refresh().models.first?.loading == true })
        let (r1, r2) = (await first.value, await second.value)
        #expect(r1 == nil && r2 == nil)
        #expect(asked.withLock { $0 } == 2, "the gate is asked once per start (the refused one and this one)")
        #expect(e.status.phase == .running && e.status.launches == 1)
        snap = await e.refresh()
        #expect(snap.healthy && snap.models.first?.loaded == true && !e.baseURL.isEmpty)

        // Unloaded: the process is gone, the model available again; the next prepare starts it anew.
        let pid = try #require(e.status.pid)
        await e.unload()
        #expect(kill(pid, 0) != 0 && e.status.phase == .available)
        snap = await e.refresh()
        #expect(snap.healthy && snap.models.first?.loaded == false)
        #expect(await e.prepare() == nil && e.status.launches == 2)

        // A crash: available again (not unhealthy), and the next request loads it once more.
        let pid2 = try #require(e.status.pid)
        kill(pid2, SIGKILL)
        #expect(await eventually(timeout: .seconds(5)) { e.status.phase == .available })
        #expect(e.status.detail?.contains("its llama-server ended") == true, "\(e.status.detail ?? "")")
        #expect(await e.refresh().healthy)
        #expect(await e.prepare() == nil && e.status.launches == 3)
        await e.stop()
        #expect(e.status.phase == .stopped && e.status.pid == nil)
    }
}
