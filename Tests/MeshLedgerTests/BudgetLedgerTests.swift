import Foundation
import Testing
@testable import MeshCore
@testable import MeshLedger

@Suite struct BudgetLedgerTests {
    let dir: String
    let clock = ManualClock(nanos: 1_795_446_000 * 1_000_000_000)  // 2026-11-23T15:00Z
    let caps = BudgetCaps(global: .init(daily: 1_000_000, monthly: 3_000_000), providers: ["openai": .init(daily: 600_000)])

    init() {
        dir = NSTemporaryDirectory() + "meshd-ledger-\(UUID().uuidString)"
    }

    func open(_ caps: BudgetCaps? = nil) throws -> BudgetLedger {
        try BudgetLedger(path: dir + "/ledger.sqlite", caps: caps ?? self.caps, clock: clock, node: "gw")
    }

    func req(_ id: String, _ amount: MicroUSD, provider: String = "openai", key: String? = nil) -> BudgetRequest {
        BudgetRequest(id: id, provider: provider, apiKey: key, amount: amount)
    }

    func global(_ l: BudgetLedger, _ p: BudgetPeriod = .daily) -> CapUsage {
        l.usage().first { $0.scope == .global && $0.period == p }!
    }

    @Test func everyStepIsDurableAndReplayed() throws {
        do {
            let l = try open()
            _ = try l.reserve(req("a", 100_000), model: "gpt-4o-mini", estimatedPromptTokens: 50).get()
            _ = try l.reserve(req("b", 200_000, provider: "claude", key: "ci"), model: "claude-haiku", estimatedPromptTokens: 50).get()
            _ = try l.reserve(req("c", 300_000), model: "gpt-4o-mini", estimatedPromptTokens: 50).get()
            #expect(try l.settle(id: "a", model: "gpt-4o-mini", promptTokens: 40, completionTokens: 10, cost: 1_234) != nil)
            #expect(try l.release(id: "b"))
            #expect(try l.release(id: "b") == false)  // already finished
            #expect(try l.settle(id: "zz", model: "", promptTokens: 0, completionTokens: 0, cost: 5) == nil)
            #expect(global(l).spent == 1_234 && global(l).reserved == 300_000)
            // "c" stays open: the process "dies" here.
        }
        let attrs = try FileManager.default.attributesOfItem(atPath: dir + "/ledger.sqlite")
        #expect((attrs[.posixPermissions] as? NSNumber)?.intValue == 0o600)
        let l = try open()
        #expect(l.reconciledAtStart.map(\.request.id) == ["c"])
        #expect(global(l).spent == 1_234 + 300_000 && global(l).reserved == 0)
        #expect(l.openReservations == 0)
        let kinds = try l.entries().map { "\($0.kind.rawValue):\($0.requestID)" }
        #expect(kinds == ["reserve:a", "reserve:b", "reserve:c", "settle:a", "release:b", "reconcile:c"])
        let settle = try l.entries()[3]
        #expect(settle.promptTokens == 40 && settle.completionTokens == 10 && settle.amountMicros == 1_234 && settle.node == "gw")
        // A third start finds nothing open and changes nothing.
        let again = try open()
        #expect(again.reconciledAtStart.isEmpty)
        #expect(global(again).spent == 301_234)
    }

    @Test func concurrentAdmissionsNeverExceedTheCap() async throws {
        let l = try open(BudgetCaps(global: .init(daily: 50_000)))
        let admitted = await withTaskGroup(of: Bool.self) { g in
            for i in 0..<200 {
                g.addTask {
                    guard case .success? = try? l.reserve(self.req("r\(i)", 700), model: "m", estimatedPromptTokens: 1) else { return false }
                    // Half settle cheaper than reserved, half are released.
                    if i % 2 == 0 { _ = try? l.settle(id: "r\(i)", model: "m", promptTokens: 1, completionTokens: 1, cost: 300) }
                    else { _ = try? l.release(id: "r\(i)") }
                    return true
                }
            }
            var n = 0
            for await ok in g where ok { n += 1 }
            return n
        }
        // Money freed by settlements and releases is reused, so more than 50_000 / 700 get in,
        // but what is spent plus reserved never passes the cap, in memory or on disk.
        #expect(admitted > 71)
        let u = global(l)
        #expect(u.spent + u.reserved <= 50_000)
        let rows = try l.entries()
        let spentOnDisk = rows.filter { $0.kind == .settle }.reduce(0) { $0 + $1.amountMicros }
        #expect(spentOnDisk == u.spent)
        #expect(rows.filter { $0.kind == .reserve }.count == admitted)
    }

    @Test func rolloverUsesTheCalendar() throws {
        let l = try BudgetLedger(path: dir + "/tz.sqlite", caps: BudgetCaps(global: .init(daily: 1_000)),
                                 calendar: .fixed(offsetSeconds: 10 * 3600), clock: clock, node: "gw")
        // 15:00Z is 01:00 on the 24th at UTC+10: the day resets at 14:00Z on the 24th.
        _ = try l.reserve(req("a", 1_000), model: "m", estimatedPromptTokens: 1).get()
        guard case .failure(let d) = try l.reserve(req("b", 1), model: "m", estimatedPromptTokens: 1) else {
            Issue.record("expected a denial")
            return
        }
        #expect(d.resetsAt == 1_795_528_800)
        clock.advance(seconds: Double(1_795_528_800 - 1_795_446_000))
        #expect(try l.reserve(req("b", 1_000), model: "m", estimatedPromptTokens: 1).get().count == 1)  // 100 %: alert
        #expect(try l.entries().map(\.day) == ["2026-11-24", "2026-11-25"])
    }

    @Test func refusesAWorldReadableLedger() throws {
        let path = dir + "/open.sqlite"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: path, contents: nil, attributes: [.posixPermissions: 0o644])
        #expect(throws: LedgerError.self) { try BudgetLedger(path: path, caps: caps, clock: clock, node: "gw") }
    }
}
