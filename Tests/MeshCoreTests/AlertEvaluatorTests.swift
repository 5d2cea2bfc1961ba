import MeshCore
import Testing

@Suite struct AlertEvaluatorTests {
    let s: UInt64 = 1_000_000_000

    func at(_ seconds: UInt64, _ fill: (inout AlertReadings) -> Void = { _ in }) -> AlertReadings {
        var r = AlertReadings(now: 1_000_000 * s + seconds * s)
        fill(&r)
        return r
    }

    @Test func aProviderIsDegradedAfterTwoMinutesDownAndRecovers() {
        var e = AlertEvaluator()
        #expect(e.evaluate(at(0) { $0.providersUnavailable = ["openai"] }).opened.isEmpty)
        #expect(e.evaluate(at(119) { $0.providersUnavailable = ["openai"] }).opened.isEmpty)
        let r = e.evaluate(at(120) { $0.providersUnavailable = ["openai"] })
        #expect(r.opened.map(\.kind) == [.providerDegraded] && r.opened[0].subject == "openai")
        #expect(r.opened[0].message.contains("has not taken requests for 120 s"))
        #expect(e.evaluate(at(150) { $0.providersUnavailable = ["openai"] }).opened.isEmpty, "opened once")
        let back = e.evaluate(at(160))
        #expect(back.resolved.map(\.subject) == ["openai"] && e.open.isEmpty)
        // Down again: the two minutes start over.
        #expect(e.evaluate(at(170) { $0.providersUnavailable = ["openai"] }).opened.isEmpty)
    }

    @Test func aCostSpikeIsTheLastHourOverThreeTimesTheHourlyAverageBefore() {
        var e = AlertEvaluator()
        // 0.01 USD an hour for 24 hours, one reading a minute.
        var t: UInt64 = 0
        var spent = 0.0
        while t <= 24 * 3600 {
            let r = e.evaluate(at(t) { $0.spendUSD = ["openai": spent] })
            #expect(r.opened.isEmpty, "steady spend raises nothing (t = \(t))")
            t += 60
            spent += 0.01 / 60
        }
        // Then 0.50 USD within the hour.
        var opened: [Alert] = []
        for _ in 0..<60 {
            spent += 0.5 / 60
            opened += e.evaluate(at(t) { $0.spendUSD = ["openai": spent] }).opened
            t += 60
        }
        #expect(opened.map(\.kind) == [.costSpike] && opened[0].subject == "openai", "\(opened)")
        #expect(opened[0].message.contains("USD in the last hour"))
        // Under the 0.10 USD floor nothing is a spike, however steep.
        var quiet = AlertEvaluator()
        _ = quiet.evaluate(at(0) { $0.spendUSD = ["p": 0] })
        _ = quiet.evaluate(at(3600) { $0.spendUSD = ["p": 0] })
        #expect(quiet.evaluate(at(7200) { $0.spendUSD = ["p": 0.05] }).opened.isEmpty)
        #expect(quiet.evaluate(at(7260) { $0.spendUSD = ["p": 0.2] }).opened.map(\.kind) == [.costSpike])
    }

    @Test func failoversOverATenthOfTheWindowsRequestsOpenAndCloseTheAlert() {
        var e = AlertEvaluator()
        _ = e.evaluate(at(0))
        // 100 requests, 5 failed over: fine.
        #expect(e.evaluate(at(60) { $0.requests = 100; $0.failovers = 5 }).opened.isEmpty)
        // 200 more, 40 failed over: 45 of 300 over the window.
        let r = e.evaluate(at(120) { $0.requests = 300; $0.failovers = 45 })
        #expect(r.opened.map(\.kind) == [.highFailoverRate] && r.opened[0].message.contains("45 of the last 300"))
        // Few requests never alert: 3 of 10.
        var few = AlertEvaluator()
        _ = few.evaluate(at(0))
        #expect(few.evaluate(at(60) { $0.requests = 10; $0.failovers = 3 }).opened.isEmpty)
        // Later, with clean traffic, the window moves past the failures and it resolves.
        var resolved: [Alert] = []
        var t: UInt64 = 180, n = 300
        while t <= 900 {
            n += 200
            resolved += e.evaluate(at(t) { $0.requests = n; $0.failovers = 45 }).resolved
            t += 60
        }
        #expect(resolved.map(\.kind) == [.highFailoverRate])
    }

    @Test func lostNodesAndFailedSplitsAndBudgetEvents() {
        var e = AlertEvaluator()
        #expect(e.evaluate(at(0) { $0.splitsFailed = 2 }).opened.isEmpty, "failures before the first look are history")
        let lost = e.evaluate(at(10) { $0.nodesDown = ["B"]; $0.splitsFailed = 3 })
        #expect(lost.opened.map(\.kind).sorted { $0.rawValue < $1.rawValue } == [.nodeLost, .splitFailed])
        #expect(lost.opened.first { $0.kind == .nodeLost }?.subject == "B")
        // The split alert stays shown for ten minutes, then goes; B back up resolves its alert.
        let back = e.evaluate(at(20) { $0.splitsFailed = 3 })
        #expect(back.resolved.map(\.kind) == [.nodeLost] && e.open.count == 1)
        #expect(e.evaluate(at(620) { $0.splitsFailed = 3 }).resolved.map(\.kind) == [.splitFailed])
        // A budget alert from the ledger: open for a while.
        e.fire(Alert(kind: .budgetThreshold, subject: "global daily", message: "80 % of 5 USD", sinceNanos: at(700).now))
        #expect(e.evaluate(at(710)).resolved.isEmpty && e.open.values.map(\.kind) == [.budgetThreshold])
        #expect(e.evaluate(at(1310)).resolved.map(\.kind) == [.budgetThreshold])
    }
}
