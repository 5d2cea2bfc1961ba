import MeshCore
import Testing

@Suite struct FairQueueTests {
    @Test func aFloodingKeyDoesNotStarveAnother() {
        var q = FairQueue<String>(capacity: 200)
        for i in 0..<100 { _ = q.enqueue("a\(i)", key: "flood", priority: .normal, now: UInt64(i)) }
        for i in 0..<10 { _ = q.enqueue("b\(i)", key: "small", priority: .normal, now: UInt64(100 + i)) }
        var order: [String] = []
        while let (_, item, _) = q.dequeue(now: 1000) { order.append(item) }
        #expect(order.count == 110)
        // Turns alternate while both wait: b's 10th request starts 20th, not 110th.
        #expect(Array(order.prefix(20)) == (0..<10).flatMap { ["a\($0)", "b\($0)"] })
        #expect(order.suffix(90) == (10..<100).map { "a\($0)" })
    }

    @Test func aKeyArrivingBehindAFloodCatchesUpFirst() {
        var q = FairQueue<String>(capacity: 200)
        for i in 0..<100 { _ = q.enqueue("a\(i)", key: "flood", priority: .normal, now: 0) }
        // Ten of the flood's are let go before the small key arrives.
        for i in 0..<10 { #expect(q.dequeue(now: 1)?.item == "a\(i)") }
        for i in 0..<5 { _ = q.enqueue("b\(i)", key: "small", priority: .normal, now: 2) }
        var order: [String] = []
        for _ in 0..<7 { order.append(q.dequeue(now: 3)!.item) }
        // Small has been served 0 times against flood's 10: its five go first.
        #expect(order == ["b0", "b1", "b2", "b3", "b4", "a10", "a11"])
        // Once its queue emptied, small starts from nothing again next time; flood keeps its count.
        _ = q.enqueue("b5", key: "small", priority: .normal, now: 4)
        #expect(q.dequeue(now: 5)?.item == "b5")
    }

    @Test func highPriorityFirstAndTheWaitIsMeasured() {
        var q = FairQueue<String>(capacity: 10)
        _ = q.enqueue("low", key: "k", priority: .low, now: 0)
        _ = q.enqueue("n1", key: "k", priority: .normal, now: 1)
        _ = q.enqueue("n2", key: "j", priority: .normal, now: 2)
        _ = q.enqueue("high", key: "k", priority: .high, now: 5)
        let first = q.dequeue(now: 9)
        #expect(first?.item == "high" && first?.waited == 4)
        #expect(q.dequeue(now: 9)?.item == "n1")
        #expect(q.dequeue(now: 9)?.item == "n2")
        #expect(q.dequeue(now: 10)?.waited == 10)
        #expect(q.isEmpty && q.dequeue(now: 11) == nil)
        #expect(RequestPriority(header: " HIGH ") == .high && RequestPriority(header: "urgent") == nil)
    }

    @Test func aFullQueueRefusesOrMakesRoomForAMoreImportantRequest() {
        var q = FairQueue<String>(capacity: 3)
        _ = q.enqueue("x1", key: "x", priority: .normal, now: 0)
        _ = q.enqueue("x2", key: "x", priority: .normal, now: 1)
        _ = q.enqueue("y1", key: "y", priority: .normal, now: 2)
        guard case .full = q.enqueue("y2", key: "y", priority: .normal, now: 3) else { Issue.record("not full"); return }
        // High priority sent last into the full queue: the newest request of the key with most
        // waiting makes room (answered 429), and the high one starts first.
        guard case .displaced(_, let victim, _) = q.enqueue("vip", key: "y", priority: .high, now: 4) else {
            Issue.record("not displaced"); return
        }
        #expect(victim == "x2" && q.count == 3)
        #expect(q.dequeue(now: 5)?.item == "vip")
        // Capacity 0: nothing ever waits.
        var none = FairQueue<Int>(capacity: 0)
        guard case .full = none.enqueue(1, key: "k", priority: .high, now: 0) else { Issue.record("capacity 0 queued"); return }
    }

    @Test func requestsAreBoundOnlyToAnEngineThatServesThemAndCanLeave() {
        var q = FairQueue<String>(capacity: 10)
        guard case .queued(let t1) = q.enqueue("llama:1", key: "a", priority: .normal, now: 0) else { return }
        _ = q.enqueue("qwen:1", key: "a", priority: .normal, now: 1)
        _ = q.enqueue("qwen:2", key: "b", priority: .normal, now: 2)
        // A qwen engine freed up: a's oldest qwen request, though a's llama request is older.
        #expect(q.dequeue(now: 3) { $0.hasPrefix("qwen") }?.item == "qwen:1")
        #expect(q.dequeue(now: 3) { $0.hasPrefix("mistral") } == nil)
        // The llama request's client went away.
        #expect(q.remove(ticket: t1) == "llama:1" && q.remove(ticket: t1) == nil)
        #expect(q.waiting().map(\.item) == ["qwen:2"] && q.oldest() == 2)
        #expect(q.contains { $0.hasPrefix("qwen") } && !q.contains { $0.hasPrefix("llama") })
        #expect(q.dequeue(now: 4)?.item == "qwen:2" && q.isEmpty)
    }
}
