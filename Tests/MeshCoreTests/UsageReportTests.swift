import Testing
@testable import MeshCore

@Suite struct UsageReportTests {
    func r(_ key: String, node: String, prompt: Int, output: Int, status: Int = 200, cost: Int64 = 0, ttft: Double? = nil,
           hit: Bool = false) -> UsageRecord {
        UsageRecord(ts: 0, requestID: "x", key: key, model: "m", node: node, api: "/api/chat", promptTokens: prompt, outputTokens: output,
                    ttftMs: ttft, durationMs: 10, status: status, costMicros: cost, cacheHit: hit)
    }

    @Test func groupsAddUpAndNodesMerge() {
        let a = UsageReport.aggregate([r("ci", node: "A", prompt: 10, output: 2, ttft: 30), r("dev", node: "A", prompt: 5, output: 1),
                                       r("ci", node: "A", prompt: 1, output: 1, status: 500)], by: .key)
        let b = UsageReport.aggregate([r("ci", node: "B", prompt: 7, output: 3, cost: 250, ttft: 10, hit: true)], by: .key)
        #expect(a.map(\.name) == ["ci", "dev"])
        let merged = UsageReport.merge([a, b])
        let ci = merged[0]
        #expect(ci.name == "ci" && ci.requests == 3 && ci.errors == 1 && ci.cacheHits == 1)
        #expect(ci.promptTokens == 18 && ci.outputTokens == 6 && ci.totalTokens == 24 && ci.costMicros == 250)
        // The mean TTFT is over the requests that had one, across nodes.
        #expect(ci.meanTTFTMs == 20 && ci.meanDurationMs == 10)
        #expect(UsageReport.total(merged).requests == 4)
        #expect(UsageReport.aggregate([r("ci", node: "A", prompt: 1, output: 1), r("ci", node: "B", prompt: 1, output: 1)], by: .node)
            .map(\.name) == ["A", "B"])
    }

    @Test func sinceTakesDurationsAndUTCDates() throws {
        let now: Int64 = 1_795_446_000_000  // 2026-11-23T15:00Z
        #expect(try UsageReport.since("7d", nowMs: now).get() == now - 7 * 86_400_000)
        #expect(try UsageReport.since("90s", nowMs: now).get() == now - 90_000)
        #expect(try UsageReport.since(" 2w", nowMs: now).get() == now - 14 * 86_400_000)
        #expect(try UsageReport.since("24h", nowMs: now).get() == now - 86_400_000)
        #expect(try UsageReport.since("2026-11-23", nowMs: now).get() == now - 15 * 3_600_000)
        #expect(try UsageReport.since("2026-11-23T15:00Z", nowMs: now).get() == now)
        #expect(try UsageReport.since("2026-11-23T14:59:30Z", nowMs: now).get() == now - 30_000)
        #expect(try UsageReport.since("1970-01-01", nowMs: now).get() == 0)
        #expect(try UsageReport.since("2000-03-01", nowMs: now).get() == 951_868_800_000)
        for bad in ["", "7", "d", "7y", "-3d", "2026-13-01", "2026-11-23T25:00Z", "2026-11-23 15:00", "yesterday"] {
            guard case .failure(let e) = UsageReport.since(bad, nowMs: now) else {
                Issue.record("'\(bad)' accepted")
                continue
            }
            #expect(e.description.hasPrefix("since: "))
        }
    }

    @Test func csvAndTableRows() {
        var g = UsageGroup(name: "a,\"b\"")
        g.requests = 2
        g.promptTokens = 3
        g.outputTokens = 4
        g.costMicros = 1_500
        g.ttftSumMs = 41
        g.ttftCount = 2
        let text = UsageReport.csv([g, UsageGroup(name: "")], by: .provider)
        let lines = text.split(separator: "\r\n", omittingEmptySubsequences: false)
        #expect(lines[0] == "provider,requests,errors,cache_hits,prompt_tokens,cached_tokens,output_tokens,total_tokens,cost_usd,mean_ttft_ms,mean_duration_ms")
        #expect(lines[1] == "\"a,\"\"b\"\"\",2,0,0,3,0,4,7,0.001500,21,0")
        #expect(lines[2] == "(mesh),0,0,0,0,0,0,0,0.000000,-,-")
        #expect(lines[3].hasPrefix("TOTAL,2,"))
        #expect(lines.count == 5 && lines[4].isEmpty)
        #expect(UsageReport.usd(12_345_678) == "12.345678" && UsageReport.usd(-5) == "-0.000005")
    }

    @Test func forwardedUserComesFromTheFrontEndThenTheBody() {
        let headers = ["X-OpenWebUI-User-Name": "Alice", "X-OpenWebUI-User-Email": "alice@example.org"]
        #expect(UsageRecord.forwardedUser(header: { headers[$0] }, bodyUser: "body-user") == "alice@example.org")
        #expect(UsageRecord.forwardedUser(header: { _ in nil }, bodyUser: "body-user") == "body-user")
        #expect(UsageRecord.forwardedUser(header: { _ in nil }, bodyUser: nil) == "")
        #expect(UsageRecord.forwardedUser(header: { $0 == "X-Forwarded-User" ? "bob\u{0}\n\tx" : nil }, bodyUser: nil) == "bobx")
        #expect(UsageRecord.forwardedUser(header: { _ in nil }, bodyUser: String(repeating: "u", count: 500)).count == 200)
    }
}
