import Foundation
import Testing
@testable import MeshCore
@testable import MeshLedger

@Suite struct UsageLogTests {
    let dir = NSTemporaryDirectory() + "meshd-usage-\(UUID().uuidString)"
    let clock = ManualClock(nanos: 1_795_446_000 * 1_000_000_000)  // 2026-11-23T15:00Z
    var nowMs: Int64 { Int64(clock.nowNanos() / 1_000_000) }

    func record(_ key: String, ts: Int64, prompt: Int = 10, output: Int = 5, status: Int = 200, provider: String = "",
                cost: Int64 = 0, ttft: Double? = nil) -> UsageRecord {
        UsageRecord(ts: ts, requestID: UUID().uuidString, key: key, user: "u-\(key)", model: "m", node: "A", engine: "e",
                    provider: provider, route: "local", api: "/v1/chat/completions", promptTokens: prompt, cachedTokens: prompt / 2,
                    outputTokens: output, ttftMs: ttft, durationMs: 100, status: status, costMicros: cost)
    }

    @Test func appendedRecordsAreDurableGroupedAndReadBackExactly() async throws {
        do {
            let log = try UsageLog(path: dir + "/usage.sqlite", retentionDays: 30, clock: clock)
            // Appends return at once; a report sees every record appended before it was asked.
            for i in 0..<250 { log.append(record(i % 5 == 0 ? "ci" : "dev", ts: nowMs - Int64(i) * 1000, ttft: i % 2 == 0 ? 20 : nil)) }
            log.append(record("ci", ts: nowMs, status: 429))
            log.append(record("dev", ts: nowMs, provider: "openai", cost: 1_500))
            let byKey = try await log.report(by: .key, sinceMs: 0)
            #expect(byKey.map(\.name) == ["dev", "ci"])
            let dev = byKey[0], ci = byKey[1]
            #expect(dev.requests == 201 && ci.requests == 51 && ci.errors == 1 && dev.errors == 0)
            #expect(dev.promptTokens == 2010 && dev.cachedTokens == 1005 && dev.outputTokens == 1005 && dev.costMicros == 1_500)
            #expect(ci.ttftCount == 25 && ci.meanTTFTMs == 20)
            let byProvider = try await log.report(by: .provider, sinceMs: 0)
            #expect(byProvider.map(\.name) == ["", "openai"] && byProvider[1].costMicros == 1_500)
            // The window: the last 10 s hold i = 0...10 (11 records) plus the two at "now".
            #expect(try await log.report(by: .model, sinceMs: nowMs - 10_000).first?.requests == 13)
            #expect(try await log.records(sinceMs: 0, limit: 1000).count == 252)
            #expect(log.writeFailures.count == 0)
        }
        // Reopened (a restart): everything is there, the file private.
        let again = try UsageLog(path: dir + "/usage.sqlite", retentionDays: 30, clock: clock)
        let rows = try await again.records(sinceMs: nowMs, limit: 10)
        #expect(rows.count == 3)
        #expect(rows.last?.provider == "openai" && rows.last?.costMicros == 1_500 && rows.first?.user == "u-ci")
        let mode = try FileManager.default.attributesOfItem(atPath: dir + "/usage.sqlite")[.posixPermissions] as? Int
        #expect(mode == 0o600)
    }

    /// A burst of appends is one transaction, written a batch delay after its first record; a
    /// flush (shutdown) writes what is queued at once.
    @Test func appendsAreWrittenInBatches() async throws {
        let log = try UsageLog(path: dir + "/usage.sqlite", retentionDays: 30, clock: clock, batchDelay: .seconds(1))
        for i in 0..<500 { log.append(record("burst", ts: nowMs - Int64(i))) }
        #expect(log.batchesWritten == 0, "written before the batch delay")
        let deadline = ContinuousClock.now + .seconds(10)
        while log.batchesWritten == 0 && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(50)) }
        #expect(log.batchesWritten == 1, "500 appends in one batch")
        for i in 0..<10 { log.append(record("late", ts: nowMs - Int64(i))) }
        log.flushNow()
        #expect(log.batchesWritten == 2)
        let reopened = try UsageLog(path: dir + "/usage.sqlite", retentionDays: 30, clock: clock)
        #expect(try await reopened.report(by: .key, sinceMs: 0).map { "\($0.name)=\($0.requests)" } == ["burst=500", "late=10"])
    }

    @Test func retentionDeletesOnlyOlderRecords() async throws {
        let log = try UsageLog(path: dir + "/usage.sqlite", retentionDays: 7, clock: clock)
        let day: Int64 = 86_400_000
        log.append(record("old", ts: nowMs - 8 * day))
        log.append(record("edge", ts: nowMs - 7 * day + 1000))
        log.append(record("new", ts: nowMs))
        _ = try await log.records(sinceMs: 0, limit: 10)  // written
        #expect(try log.expire() == 1)
        #expect(try await log.report(by: .key, sinceMs: 0).map(\.name).sorted() == ["edge", "new"])
        clock.advance(seconds: 2)
        #expect(try log.expire() == 1)
        #expect(try await log.report(by: .key, sinceMs: 0).map(\.name) == ["new"])
        // At start, too.
        clock.advance(seconds: 8 * 86_400)
        let reopened = try UsageLog(path: dir + "/usage.sqlite", retentionDays: 7, clock: clock)
        #expect(try await reopened.records(sinceMs: 0, limit: 10).isEmpty)
    }

    @Test func aFileOthersCanReadIsRefused() throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: dir + "/usage.sqlite", contents: nil, attributes: [.posixPermissions: 0o644])
        #expect(throws: LedgerError.self) { try UsageLog(path: dir + "/usage.sqlite", retentionDays: 7, clock: clock) }
    }
}
