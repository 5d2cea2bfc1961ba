import Foundation
import MeshCore
@testable import MeshNode
import NIOHTTP1
import Testing

/// Per-key limits in the node's wiring: admission before routing, the headers on every answer, the
/// tokens settled from the engine's usage, the window on the node's (injected) clock, and the
/// status the admin API shows. The sums over peers are RateLimiterTests'; the mesh is test_mesh_limits.py's.
@Suite struct NodeLimitsTests {
    @Test func keysAreHeldToTheirLimitsWithOpenAIHeaders() async throws {
        let engine = try await FakeEngine()
        let clock = ManualClock(nanos: 1_800_000_000_000_000_000)
        let n = try await TestNode.start("lim", engines: [engine], clock: clock) { c in
            c.http.apiKeys = ["alice:alice-key", "bob:bob-key"]
            c.limits = LimitsConfig(defaultLimits: KeyLimits(rpm: 100), perKey: ["alice": KeyLimits(rpm: 2, tpm: 12, models: ["m"])])
        }
        let alice = [("Authorization", "Bearer alice-key")]
        // The engine polled healthy first (a CI run of the whole suite saw the node start before
        // its first poll got through, and every request then failed with 503).
        #expect(await eventually { n.node.engines.snapshot().allSatisfy(\.healthy) })
        let first = await n.chat(.openai, headers: alice)
        #expect(first.status == 200)
        #expect(first.header("x-ratelimit-limit-requests") == "2" && first.header("x-ratelimit-remaining-requests") == "1")
        #expect(first.header("x-ratelimit-limit-tokens") == "12")
        // The fake engine's usage (3 + 2 tokens) settled; the estimate of the request in flight released.
        let used = n.node.limiter.view().first { $0.key == "alice" }?.used
        #expect(used?.tokens == 5 && used?.inFlight == 0 && used?.requests == 1)
        #expect(await n.chat(.ollama, stream: true, headers: alice).status == 200)
        let third = await n.chat(.openai, headers: alice)
        #expect(third.status == 429 && third.json?["error"]?["type"]?.stringValue == "requests")
        #expect(third.header("Retry-After") == "60" && third.header("x-ratelimit-remaining-requests") == "0")
        let ollama = await n.chat(.ollama, headers: alice)
        #expect(ollama.status == 429 && ollama.json?["error"]?.stringValue?.contains("requests per minute") == true)
        // Refused requests never reached the engine; another key is not held by alice's use.
        #expect(engine.requests == 2)
        #expect(await n.chat(.openai, headers: [("Authorization", "Bearer bob-key")]).status == 200)
        // A model the key may not use: 403 naming the field, whatever the window holds.
        let other = await n.chat(.openai, model: "other", headers: alice)
        #expect(other.status == 403 && other.json?["error"]?["param"]?.stringValue == "model")
        // The admin status shows each key's minute.
        let status = await n.admin(.GET, "/v1/status")
        let row = status.json?["limits"]?.arrayValue?.first { $0["key"]?.stringValue == "alice" }
        #expect(row?["requests"]?.intValue == 2 && row?["rpm"]?.intValue == 2 && row?["refused"]?["requests"]?.intValue == 2)
        // A minute later the window has moved on: alice is served again.
        clock.advance(seconds: 61)
        let later = await n.chat(.openai, headers: alice)
        #expect(later.status == 200 && later.header("x-ratelimit-remaining-requests") == "1")
        await n.stop()
        await engine.close()
    }
}

/// How often a node tells its peers about a key's counts: the changes of a request made within a
/// couple of milliseconds (admitted, tokens settled, place released) go out together, so a request
/// costs each peer at most two messages (three before), fewer when requests end together.
@Suite struct KeyUsageTrafficTests {
    @Test func aRequestCostsItsPeersAtMostTwoKeyUsageMessages() async throws {
        let engine = try await FakeEngine()
        let limits = LimitsConfig(defaultLimits: KeyLimits(rpm: 1000), perKey: [:])
        let (a, b) = try await meshPair("ku-a", [engine], "ku-b", [], configureA: { c in
            c.limits = limits
            c.mesh.heartbeatMs = 2000
        }, configureB: { c in
            c.limits = limits
            c.mesh.heartbeatMs = 2000
        })
        #expect(await eventually { a.node.engines.snapshot().allSatisfy(\.healthy) })
        #expect(await eventually { a.node.mesh?.peers().first?.state.acceptsKeyUsage == true })
        let before = try #require(a.node.mesh?.keyUsageTraffic.sent)
        let start = ContinuousClock.now
        let requests = 10
        for _ in 0..<requests {
            #expect(await a.chat(.openai).status == 200)
        }
        try await Task.sleep(for: .milliseconds(50))  // the last request's message goes out
        let elapsed = ContinuousClock.now - start
        let sent = try #require(a.node.mesh?.keyUsageTraffic.sent) - before
        // Heartbeats (every 2 s) add one each; a request added three before.
        let heartbeats = Int(elapsed / .seconds(2)) + 1
        #expect(sent >= 1 && sent <= 2 * requests + heartbeats, "\(sent) messages for \(requests) requests")
        // b still counts every request a admitted (the messages carry what changed).
        #expect(await eventually { b.node.limiter.view().first { $0.key == "" }?.used.requests == requests })
        await b.stop()
        await a.stop()
        await engine.close()
    }
}
