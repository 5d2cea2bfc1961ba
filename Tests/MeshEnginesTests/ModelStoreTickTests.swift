import Foundation
import MeshCore
@testable import MeshEngines
import Synchronization
import Testing

/// How often the model store's timer wakes: what it asks its (injected) sleep for.
@Suite struct ModelStoreTickTests {
    final class Sleeps: Sendable {
        let asked = Mutex<[Duration]>([])
        var count: Int { asked.withLock { $0.count } }
        func since(_ i: Int) -> [Duration] { asked.withLock { Array($0[i...]) } }
    }

    /// With no stored model there is nothing to unload before the next rescan: a second between
    /// wakes. Once the folder holds one, the keep-alive is checked every 250 ms.
    @Test func anEmptyStoreWakesOnceASecondAndOneWithAModelFourTimes() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("meshd-store-tick-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var settings = ModelStoreSettings()
        settings.dir = dir + "/models"
        settings.rescanSeconds = 60
        let sleeps = Sleeps()
        let registry = EngineRegistry(adapters: [], logger: testLogger, pollInterval: .seconds(30))
        let store = ModelStore(settings: settings, stateDir: dir, registry: registry, transport: FakeTransport(), logger: testLogger,
                               clock: SystemWallClock(), binary: nil, freeBytes: { _ in nil },
                               sleep: { (d: Duration) in
                                   sleeps.asked.withLock { $0.append(d) }
                                   try? await Task.sleep(for: .milliseconds(5))  // the test need not wait the whole tick
                               })
        await store.start()
        try #require(await eventually(timeout: .seconds(20)) { sleeps.count >= 3 })
        #expect(sleeps.since(0).allSatisfy { $0 == .seconds(1) }, "\(sleeps.since(0))")

        FileManager.default.createFile(atPath: settings.dir + "/tiny.gguf", contents: Data("GGUF".utf8))
        await store.rescan()
        #expect(store.states(now: 0).map(\.name) == ["tiny"])
        let mark = sleeps.count + 1  // the sleep asked for before the rescan may still be the idle one
        try #require(await eventually(timeout: .seconds(20)) { sleeps.count >= mark + 3 })
        #expect(sleeps.since(mark).allSatisfy { $0 == .milliseconds(250) }, "\(sleeps.since(mark))")
        await store.stop()
        await registry.shutdown()
    }
}
