import MeshCore
import MeshEngines
import MeshNode
import NIOHTTP1
import Synchronization
import Testing

/// The mesh queue through the real proxy, in process: one fake engine with one slot, held busy.
@Suite(.serialized, .timeLimit(.minutes(1))) struct MeshQueueTests {
    final class Order: Sendable {
        let done = Mutex<[String]>([])
        func add(_ s: String) { done.withLock { $0.append(s) } }
        var all: [String] { done.withLock { $0 } }
    }

    func rig(maxQueue: Int, slots: Int? = 1) async throws -> (FakeEngine, ProxyRig, MeshQueue, Task<Void, Never>) {
        let engine = try await FakeEngine(mode: .held, slots: slots)
        var routing = RoutingSettings()
        routing.maxQueue = maxQueue
        routing.queueAfterMs = 250
        let queue = MeshQueue(settings: routing, clock: SystemWallClock(), maxWait: .seconds(20))
        let rig = try await ProxyRig([engine.url], routing: routing, queue: queue)
        await rig.registry.refreshNow()
        let proxy = rig.proxy
        let pump = Task { await queue.run(pump: { proxy.pumpQueue() }) }
        return (engine, rig, queue, pump)
    }

    func waitFor(_ what: @autoclosure () -> Bool) async throws {
        let deadline = ContinuousClock.now + .seconds(10)
        while !what() && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
        #expect(what())
    }

    @Test func requestsWaitInTheMeshQueueThenGoInTurnAndAFullQueueAnswers429() async throws {
        let (engine, rig, queue, pump) = try await rig(maxQueue: 3)
        let order = Order()
        // One request holds the only slot; then key "flood" sends three and key "small" one.
        let first = Task { _ = await rig.chat(stream: false, headers: [("X-Meshd-Key-Name", "first")]); order.add("first") }
        try await waitFor(engine.open == 1)
        var tasks: [Task<Int, Never>] = []
        for (i, key) in ["flood", "flood", "small"].enumerated() {
            tasks.append(Task {
                let (status, headers, _) = await rig.chat(stream: false, headers: [("X-Meshd-Key-Name", key)])
                if status == 200 { order.add("\(key)\(i)") }
                #expect(status != 200 || headers.first(name: "X-Meshd-Route")?.contains("in the mesh queue") == true)
                return status
            })
            try await waitFor(queue.count == i + 1)
        }
        #expect(engine.requests == 1, "they wait in meshd, not in the engine")
        // The queue holds 3: a fourth normal request is refused at once, in the route's dialect.
        let (status, headers, body) = await rig.chat(stream: false, headers: [("X-Meshd-Key-Name", "late")])
        #expect(status == 429 && headers.first(name: "Retry-After") != nil && body.contains("queue_full"), "\(status) \(body)")
        // A high-priority one takes the newest place of the key with most waiting (flood's second).
        let vip = Task {
            let (s, _, _) = await rig.chat(stream: false, headers: [("X-Meshd-Key-Name", "boss"), ("X-Meshd-Priority", "high")])
            if s == 200 { order.add("boss") }
            return s
        }
        try await waitFor(queue.count == 3 && tasks[1].isCancelled == false)
        // Free the slot request by request: high first, then the keys in turn.
        for n in 1...4 {
            engine.release(n)
            try await waitFor(order.all.count == n)
        }
        _ = await first.value
        let statuses = [await tasks[0].value, await tasks[1].value, await tasks[2].value]
        #expect(statuses == [200, 429, 200], "flood's second lost its place to the high-priority request")
        #expect(await vip.value == 200)
        #expect(order.all == ["first", "boss", "flood0", "small2"], "\(order.all)")
        #expect(queue.stats().served == 3 && queue.stats().rejected == 2)
        pump.cancel()
        await rig.stop()
        await engine.close()
    }

    /// An engine without slots or a limit (vLLM, SGLang, a plain OpenAI-compatible server) batches
    /// what it is sent: concurrent requests all go to it at once, none waits in the mesh queue
    /// (it used to hand such an engine one request at a time, 100 a second at most).
    @Test func anEngineWithoutSlotsGetsEveryRequestAtOnce() async throws {
        let (engine, rig, queue, pump) = try await rig(maxQueue: 16, slots: nil)
        var tasks: [Task<Int, Never>] = []
        for _ in 0..<6 {
            tasks.append(Task { await rig.chat(stream: false).0 })
        }
        try await waitFor(engine.open == 6)
        #expect(queue.count == 0 && queue.stats().served == 0)
        engine.release(6)
        for t in tasks { #expect(await t.value == 200) }
        #expect(engine.peakOpen == 6)
        pump.cancel()
        await rig.stop()
        await engine.close()
    }

    @Test func aBadPriorityIsRefusedNamingTheHeader() async throws {
        let (engine, rig, _, pump) = try await rig(maxQueue: 3)
        engine.set(.ok)
        let (status, _, body) = await rig.chat(stream: false, headers: [("X-Meshd-Priority", "urgent")])
        #expect(status == 400 && body.contains("X-Meshd-Priority") && body.contains("high, normal or low"), "\(body)")
        #expect(engine.requests == 0)
        pump.cancel()
        await rig.stop()
        await engine.close()
    }
}
