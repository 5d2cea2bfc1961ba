import Foundation
import MeshCore
import Synchronization
import Testing
@testable import MeshEngines

/// Engines added and removed while the registry runs (the model store's files coming and going).
@Suite(.timeLimit(.minutes(1))) struct RegistryChangeTests {
    @Test func anEngineAddedWhileRunningIsPolledListedAndPublishedAndARemovedOneGoesWithItsWaiters() async throws {
        let first = ScriptedAdapter(id: "a", slots: 1)
        let reg = EngineRegistry(adapters: [first], logger: testLogger, pollInterval: .milliseconds(50))
        var changes = reg.changes().makeAsyncIterator()
        await reg.start()
        #expect(reg.snapshot().map(\.id) == ["a"])

        let added = ScriptedAdapter(id: "b", slots: 1)
        added.set(healthy: true, models: ["m2"])
        #expect(await reg.add(added))
        // Polled at once (healthy, its model listed), after the first in order, and polled on.
        #expect(reg.snapshot().map(\.id) == ["a", "b"] && reg.snapshot("b")?.healthy == true)
        #expect(reg.snapshot("b")?.model(named: "m2") != nil && reg.adapter("b") != nil)
        let polls = added.refreshes
        // (Generous: the whole suite runs in parallel on 2 cores, and a CI run once took over 5 s.)
        #expect(await eventually(timeout: .seconds(20)) { added.refreshes >= polls + 2 })
        // Subscribers hear of it.
        var sawB = false
        while !sawB, let snaps = await changes.next() { sawB = snaps.contains { $0.id == "b" } }
        #expect(sawB)
        // The same id again is refused.
        #expect(await reg.add(ScriptedAdapter(id: "b")) == false)

        // A request waiting for a place on it is refused when it is removed.
        #expect(await reg.acquire("b") == .admitted)
        let waiting = Task { await reg.acquire("b") }
        #expect(await eventually(timeout: .seconds(5)) { reg.snapshot("b")?.load.queued == 1 })
        await reg.remove("b")
        #expect(await waiting.value == .unavailable("engine b was removed"))
        #expect(reg.snapshot().map(\.id) == ["a"] && reg.snapshot("b") == nil && reg.adapter("b") == nil)
        var goneB = false
        while !goneB, let snaps = await changes.next() { goneB = !snaps.contains { $0.id == "b" } }
        #expect(goneB)
        // No longer polled.
        let after = added.refreshes
        try await Task.sleep(for: .milliseconds(300))
        #expect(added.refreshes == after)
        await reg.shutdown()
        #expect(await reg.add(ScriptedAdapter(id: "c")) == false)
    }

    @Test func anEngineAddedBeforeTheStartStartsWithTheOthers() async throws {
        let reg = EngineRegistry(adapters: [], logger: testLogger, pollInterval: .seconds(30))
        let a = ScriptedAdapter(id: "a")
        #expect(await reg.add(a))
        #expect(reg.snapshot("a")?.healthy == false)
        await reg.start()
        #expect(reg.snapshot("a")?.healthy == true && a.refreshes >= 1)
        await reg.shutdown()
    }
}
