import Testing
@testable import MeshCore

@Suite struct BudgetCalendarTests {
    // 2026-11-23T15:00:00Z
    let t: UInt64 = 1_795_446_000 * 1_000_000_000

    @Test func utcDayAndMonth() {
        let p = BudgetCalendar.utc.periods(atNanos: t)
        #expect(p.day == "2026-11-23")
        #expect(p.month == "2026-11")
        #expect(p.dayResetsAt == 1_795_478_400)   // 2026-11-24T00:00Z
        #expect(p.monthResetsAt == 1_796_083_200) // 2026-12-01T00:00Z
    }

    @Test func offsetsMoveTheBoundaries() {
        // 15:00Z is already the 24th at UTC+10 and still the 23rd at UTC-10.
        let east = BudgetCalendar.fixed(offsetSeconds: 10 * 3600).periods(atNanos: t)
        #expect(east.day == "2026-11-24")
        #expect(east.dayResetsAt == 1_795_478_400 + 86_400 - 10 * 3600)
        let west = BudgetCalendar.fixed(offsetSeconds: -10 * 3600).periods(atNanos: t)
        #expect(west.day == "2026-11-23")
        #expect(west.dayResetsAt == 1_795_478_400 + 10 * 3600)
        #expect(BudgetCalendar.fixed(offsetSeconds: -(5 * 3600 + 1800)).zoneName == "UTC-05:30")
    }

    @Test func yearEndAndLeapDay() {
        // 2027-12-31T23:30Z → month 2027-12, resets 2028-01-01T00:00Z.
        let p = BudgetCalendar.utc.periods(atNanos: 1_830_295_800 * 1_000_000_000)
        #expect(p.day == "2027-12-31")
        #expect(p.monthResetsAt == 1_830_297_600)
        // 2028-02-29 exists.
        let leap = BudgetCalendar.utc.periods(atNanos: 1_835_395_200 * 1_000_000_000)
        #expect(leap.day == "2028-02-29")
        #expect(leap.monthResetsAt == 1_835_481_600)  // 2028-03-01
        for days in stride(from: Int64(-800_000), through: 800_000, by: 997) {
            let (y, m, d) = BudgetCalendar.civil(fromDays: days)
            #expect(BudgetCalendar.days(fromCivil: y, m, d) == days)
        }
    }

    @Test func dstChangeUsesTheOffsetInEffect() {
        // A zone at +1h that moves to +2h at 2026-03-29T01:00Z (like Europe/Berlin).
        let change: Int64 = 1_774_746_000
        let cal = BudgetCalendar(zoneName: "test") { $0 >= change ? 7200 : 3600 }
        let p = cal.periods(atNanos: UInt64(change - 7200) * 1_000_000_000)  // 2026-03-28T23:00Z = 00:00 local on the 29th
        #expect(p.day == "2026-03-29")
        #expect(p.dayResetsAt == 1_774_821_600)  // 2026-03-30T00:00+02:00 = 2026-03-29T22:00Z
    }
}

@Suite struct PriceTests {
    let mini = ModelPrice(input: 0.15, output: 0.60, cachedInput: 0.075)

    @Test func costIsExactAndRoundsUp() {
        #expect(mini.cost(promptTokens: 1_000_000, completionTokens: 0) == 150_000)
        #expect(mini.cost(promptTokens: 1000, completionTokens: 500) == 150 + 300)
        #expect(mini.cost(promptTokens: 1000, cachedPromptTokens: 400, completionTokens: 0) == 90 + 30)
        #expect(mini.cost(promptTokens: 1, completionTokens: 0) == 1)  // 0.15 µ$ rounds up
        #expect(mini.cost(promptTokens: 10, cachedPromptTokens: 99, completionTokens: -3) == 1)
        #expect(MicroUSD.usd(5.0) == 5_000_000)
        #expect(MicroUSD(2_500_000).usd == 2.5)
    }

    @Test func providerEntryWinsAndUnknownModelsHaveNoPrice() {
        var t = PriceTable(models: ["gpt-4o-mini": mini, "groq/gpt-4o-mini": ModelPrice(input: 1, output: 1)])
        #expect(t.price(provider: "openai", model: "gpt-4o-mini") == mini)
        #expect(t.price(provider: "groq", model: "gpt-4o-mini")?.input == 1)
        #expect(t.price(provider: "openai", model: "nope") == nil)
        #expect(t.worstCase(provider: "openai", model: "nope", estimatedPromptTokens: 10, maxTokens: 10) == nil)
        #expect(t.worstCase(provider: "openai", model: "gpt-4o-mini", estimatedPromptTokens: 1000, maxTokens: 100) == MicroUSD(210))
        t.defaultMaxOutputTokens = 1000
        #expect(t.worstCase(provider: "openai", model: "gpt-4o-mini", estimatedPromptTokens: 0, maxTokens: nil) == 600)
        t.models["gpt-4o-mini"]?.maxOutputTokens = 10
        #expect(t.worstCase(provider: "openai", model: "gpt-4o-mini", estimatedPromptTokens: 0, maxTokens: nil) == 6)
        let merged = t.merging(PriceTable(models: ["gpt-4o-mini": ModelPrice(input: 9, output: 9)]))
        #expect(merged.price(provider: "openai", model: "gpt-4o-mini")?.input == 9)
        #expect(merged.price(provider: "groq", model: "gpt-4o-mini")?.input == 1)
    }

    @Test func promptEstimateNeverUnderCounts() {
        // A real tokenizer gives at least ~2 bytes per token: 1000 bytes → at most ~500 tokens.
        #expect(PriceTable.estimatePromptTokens(utf8Bytes: 1000, messages: 2) >= 500)
        #expect(PriceTable.estimatePromptTokens(utf8Bytes: 0, messages: 0) == 8)
    }
}

@Suite struct BudgetBookTests {
    let clock = ManualClock(nanos: 1_795_446_000 * 1_000_000_000)  // 2026-11-23T15:00Z

    func book(_ caps: BudgetCaps) -> BudgetBook { BudgetBook(caps: caps) }

    func req(_ id: String, _ amount: MicroUSD, provider: String = "openai", key: String? = nil) -> BudgetRequest {
        BudgetRequest(id: id, provider: provider, apiKey: key, amount: amount)
    }

    @Test func reservationsNeverTogetherExceedTheCap() throws {
        var b = book(BudgetCaps(global: .init(daily: 1_000)))
        var admitted = 0
        for i in 0..<50 {
            if case .success = b.reserve(req("r\(i)", 30), nowNanos: clock.nowNanos()) { admitted += 1 }
        }
        #expect(admitted == 33)  // 33 × 30 = 990 ≤ 1000 < 34 × 30
        let u = b.usage(.global, .daily, nowNanos: clock.nowNanos())
        #expect(u.reserved == 990 && u.spent == 0 && u.remaining == 10)
        // Settling below the reservation frees room; the denial names the cap.
        for i in 0..<33 { b.settle(id: "r\(i)", actual: 10) }
        #expect(b.usage(.global, .daily, nowNanos: clock.nowNanos()).spent == 330)
        guard case .failure(let d) = b.reserve(req("big", 700), nowNanos: clock.nowNanos()) else {
            Issue.record("expected a denial")
            return
        }
        #expect(d.scope == .global && d.period == .daily && d.limit == 1_000 && d.spent == 330)
        #expect(d.resetsAt == 1_795_478_400)
        #expect(d.description.contains("daily budget of the global exhausted"))
        #expect(b.settle(id: "nope", actual: 5) == nil)
    }

    @Test func providerAndKeyCapsApplyOnlyToThem() {
        var b = book(BudgetCaps(global: .init(monthly: 10_000), providers: ["openai": .init(daily: 100)], keys: ["ci": .init(daily: 50)]))
        let now = clock.nowNanos()
        #expect((try? b.reserve(req("a", 100), nowNanos: now).get()) != nil)
        guard case .failure(let d) = b.reserve(req("b", 1), nowNanos: now) else { Issue.record("openai cap"); return }
        #expect(d.scope == .provider("openai"))
        #expect((try? b.reserve(req("c", 60, provider: "claude"), nowNanos: now).get()) != nil)
        guard case .failure(let k) = b.reserve(req("d", 60, provider: "claude", key: "ci"), nowNanos: now) else { Issue.record("key cap"); return }
        #expect(k.scope == .key("ci"))
        #expect(b.usage(.global, .monthly, nowNanos: now).reserved == 160)
    }

    @Test func dayRolloverResetsDailyButNotMonthly() {
        var b = book(BudgetCaps(global: .init(daily: 100, monthly: 150)))
        #expect((try? b.reserve(req("a", 100), nowNanos: clock.nowNanos()).get()) != nil)
        b.settle(id: "a", actual: 100)
        #expect(throws: BudgetDenial.self) { try b.reserve(req("b", 1), nowNanos: clock.nowNanos()).get() }
        clock.advance(seconds: 9 * 3600 + 1)  // 2026-11-24T00:00:01Z
        #expect(b.usage(.global, .daily, nowNanos: clock.nowNanos()).spent == 0)
        #expect(b.usage(.global, .monthly, nowNanos: clock.nowNanos()).spent == 100)
        #expect((try? b.reserve(req("c", 50), nowNanos: clock.nowNanos()).get()) != nil)
        guard case .failure(let d) = b.reserve(req("d", 1), nowNanos: clock.nowNanos()) else { Issue.record("monthly"); return }
        #expect(d.period == .monthly && d.resetsAt == 1_796_083_200)
        // A reservation made yesterday settles into yesterday's day, not today's.
        clock.advance(seconds: 86_400)
        b.settle(id: "c", actual: 50)
        #expect(b.usage(.global, .daily, nowNanos: clock.nowNanos()).spent == 0)
        #expect(b.usage(.global, .monthly, nowNanos: clock.nowNanos()).spent == 150)
    }

    @Test func alertsFireOncePerCapAndPeriod() throws {
        var b = book(BudgetCaps(global: .init(daily: 1000), alertAt: 0.8))
        let now = clock.nowNanos()
        #expect(try b.reserve(req("a", 700), nowNanos: now).get().isEmpty)
        let alerts = try b.reserve(req("b", 100), nowNanos: now).get()
        #expect(alerts == [BudgetAlert(scope: .global, period: .daily, limit: 1000, used: 800)])
        #expect(try b.reserve(req("c", 100), nowNanos: now).get().isEmpty)
        #expect(b.settle(id: "c", actual: 100) == [])
    }

    @Test func crashRecoveryCountsOpenReservationsAsSpent() {
        var b = book(BudgetCaps(global: .init(daily: 1000)))
        let p = BudgetCalendar.utc.periods(atNanos: clock.nowNanos())
        b.apply(reserve: req("x", 300), day: p.day, month: p.month)
        b.apply(reserve: req("y", 200), day: p.day, month: p.month)
        b.settle(id: "y", actual: 50)
        let reconciled = b.reconcileOpen()
        #expect(reconciled.map(\.request.id) == ["x"])
        #expect(b.open.isEmpty)
        let u = b.usage(.global, .daily, nowNanos: clock.nowNanos())
        #expect(u.spent == 350 && u.reserved == 0)
    }
}
