import Foundation
import MeshCore
import Synchronization
import Testing
@testable import MeshEngines

/// The registry's per-engine admission: at most the engine's limit open, the rest waiting in
/// meshd's queue (first come first served), visible in the snapshots.
@Suite(.timeLimit(.minutes(1))) struct AdmissionTests {
    /// A task that acquires a place and records the answer.
    final class Waiting: Sendable {
        final class Box: Sendable { let value = Mutex<EngineAdmission?>(nil) }
        private let box = Box()
        let task: Task<Void, Never>
        init(_ reg: EngineRegistry, _ id: String) {
            let box = self.box
            task = Task { let a = await reg.acquire(id); box.value.withLock { $0 = a } }
        }
        var value: EngineAdmission? { box.value.withLock { $0 } }
    }

    func started(_ slots: Int?, configured: Int? = nil) async -> EngineRegistry {
        let a = ScriptedAdapter(id: "e", slots: slots)
        let reg = EngineRegistry(adapters: [a], logger: testLogger, pollInterval: .seconds(30),
                                 concurrencyLimits: configured.map { ["e": $0] } ?? [:])
        await reg.start()
        return reg
    }

    @Test func reportedSlotsLimitOpenRequestsAndTheRestQueueInOrder() async throws {
        let reg = await started(2)
        #expect(reg.snapshot("e")?.load.limit == 2)
        #expect(await reg.acquire("e") == .admitted)
        #expect(await reg.acquire("e") == .admitted)
        let third = Waiting(reg, "e")
        #expect(await eventually(timeout: .seconds(5)) { reg.snapshot("e")?.load.queued == 1 })
        let fourth = Waiting(reg, "e")
        #expect(await eventually(timeout: .seconds(5)) { reg.snapshot("e")?.load.queued == 2 })
        let s = try #require(reg.snapshot("e"))
        #expect(s.load.inFlight == 4 && s.load.open == 2)
        #expect(third.value == nil && fourth.value == nil)

        reg.endRequest("e", outcome: .failed)
        await third.task.value
        #expect(third.value == .admitted)
        #expect(fourth.value == nil)  // first come, first served
        #expect(reg.snapshot("e")?.load.open == 2 && reg.snapshot("e")?.load.queued == 1)
        reg.endRequest("e", outcome: .failed)
        await fourth.task.value
        #expect(fourth.value == .admitted)
        reg.endRequest("e", outcome: .failed)
        reg.endRequest("e", outcome: .failed)
        #expect(reg.snapshot("e")?.load.inFlight == 0)
        await reg.shutdown()
    }

    @Test func cancelledWaiterLeavesTheQueueAndHoldsNothing() async throws {
        let reg = await started(1)
        #expect(await reg.acquire("e") == .admitted)
        let w = Waiting(reg, "e")
        #expect(await eventually(timeout: .seconds(5)) { reg.snapshot("e")?.load.queued == 1 })
        w.task.cancel()
        await w.task.value
        #expect(w.value == .cancelled)
        #expect(reg.snapshot("e")?.load.queued == 0 && reg.snapshot("e")?.load.inFlight == 1)
        reg.endRequest("e", outcome: .failed)
        // The place freed by the first request is not lost to the cancelled one.
        #expect(await reg.acquire("e") == .admitted)
        reg.endRequest("e", outcome: .failed)
        await reg.shutdown()
    }

    @Test func waitersAreToldWhenTheEngineIsMarkedUnhealthy() async throws {
        let reg = await started(1)
        #expect(await reg.acquire("e") == .admitted)
        let w = Waiting(reg, "e")
        #expect(await eventually(timeout: .seconds(5)) { reg.snapshot("e")?.load.queued == 1 })
        reg.markUnhealthy("e", reason: "connection refused")
        await w.task.value
        guard case .unavailable(let why)? = w.value else { Issue.record("got \(String(describing: w.value))"); return }
        #expect(why.contains("connection refused"))
        #expect(reg.snapshot("e")?.load.queued == 0)
        await reg.shutdown()
    }

    @Test func configuredLimitWinsOverSlotsAndNoLimitWithoutEither() async throws {
        let reg = await started(2, configured: 3)
        #expect(reg.snapshot("e")?.load.limit == 3)
        for _ in 0..<3 { #expect(await reg.acquire("e") == .admitted) }
        let w = Waiting(reg, "e")
        #expect(await eventually(timeout: .seconds(5)) { reg.snapshot("e")?.load.queued == 1 })
        w.task.cancel()
        await w.task.value
        await reg.shutdown()

        let free = await started(nil)
        #expect(free.snapshot("e")?.load.limit == nil)
        for _ in 0..<500 { #expect(await free.acquire("e") == .admitted) }
        #expect(free.snapshot("e")?.load.open == 500 && free.snapshot("e")?.load.queued == 0)
        await free.shutdown()
    }

    @Test func overloadAnswersTeachALimitThatGrowsBack() async throws {
        let reg = await started(nil)
        for _ in 0..<4 { #expect(await reg.acquire("e") == .admitted) }
        // The 4th open request was refused as overloaded: 3 is what it could take.
        reg.endRequest("e", outcome: EngineRequestOutcome(succeeded: false, overloaded: true))
        #expect(reg.snapshot("e")?.load.limit == 3)
        let w = Waiting(reg, "e")
        try await Task.sleep(for: .milliseconds(100))
        #expect(w.value == nil)  // 3 open of 3: waits
        for _ in 0..<3 { reg.endRequest("e", outcome: EngineRequestOutcome(succeeded: true)) }
        await w.task.value
        #expect(w.value == .admitted)
        // 3 successes in a row at limit 3: the limit grows by one.
        #expect(reg.snapshot("e")?.load.limit == 4)
        reg.endRequest("e", outcome: .failed)
        await reg.shutdown()
    }

    @Test func slotsReportedLaterAdmitWaiters() async throws {
        let a = ScriptedAdapter(id: "e", slots: 1)
        let reg = EngineRegistry(adapters: [a], logger: testLogger, pollInterval: .milliseconds(100))
        await reg.start()
        #expect(await reg.acquire("e") == .admitted)
        let w = Waiting(reg, "e")
        #expect(await eventually(timeout: .seconds(5)) { reg.snapshot("e")?.load.queued == 1 })
        a.set(slots: 4)  // the engine restarted with more slots: the next poll lets the waiter in
        await w.task.value
        #expect(w.value == .admitted)
        #expect(reg.snapshot("e")?.load.limit == 4)
        await reg.shutdown()
    }

    @Test func shutdownReleasesWaiters() async throws {
        let reg = await started(1)
        #expect(await reg.acquire("e") == .admitted)
        let w = Waiting(reg, "e")
        #expect(await eventually(timeout: .seconds(5)) { reg.snapshot("e")?.load.queued == 1 })
        await reg.shutdown()
        await w.task.value
        #expect(w.value == .unavailable("node is shutting down"))
    }
}
