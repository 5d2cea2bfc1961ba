import Foundation
import MeshCore
import MeshHTTPClient
@testable import MeshNode
import NIOHTTP1
import Testing

/// Two nodes on a real mesh over loopback: forwarding to the peer that has the model or will
/// finish first, the mesh's model lists, and draining (this node's and a peer's).
@Suite(.timeLimit(.minutes(1))) struct NodeMeshTests {
    @Test(arguments: [Dialect.openai, .ollama], [false, true])
    func aRequestForAModelOnlyAPeerHasIsForwardedThere(dialect: Dialect, stream: Bool) async throws {
        let there = try await FakeEngine(models: ["m"])
        there.answer(["from ", "a"])
        let here = try await FakeEngine(models: ["other"])
        let (a, b) = try await meshPair("fa", [there], "fb", [here])
        let r = await b.chat(dialect, stream: stream)
        #expect(r.status == 200)
        #expect(r.header("X-Meshd-Node") == "fa" && r.header("X-Meshd-Via") == "fb" && r.header("X-Meshd-Engine") == there.id)
        #expect(r.header("X-Meshd-Route")?.hasPrefix("forwarded to fa") == true)
        #expect(there.requests == 1 && here.requests == 0)
        if stream {
            #expect(r.text.contains("from ") && r.text.contains(#""a""#))
            #expect(dialect == .openai ? r.text.hasSuffix("data: [DONE]\n\n") : r.text.contains(#""done":true"#))
        } else {
            let content = dialect == .openai ? r.json?["choices"]?[0]?["message"]?["content"] : r.json?["message"]?["content"]
            #expect(content?.stringValue == "from a")
        }
        // Nowhere in the mesh: 404 in the client's dialect.
        let missing = await b.chat(dialect, model: "nowhere")
        #expect(missing.status == 404 && missing.errorMessage?.contains("nowhere") == true)
        await b.stop()
        await a.stop()
        await there.close()
        await here.close()
    }

    @Test func theBusyLocalEngineLosesToAnIdlePeer() async throws {
        let local = try await FakeEngine(mode: .held, slots: 1)
        let remote = try await FakeEngine(slots: 1)
        let (a, b) = try await meshPair("ra", [remote], "rb", [local])
        #expect(await eventually { b.node.engines.snapshot().first?.load.limit == 1 })
        // Idle everywhere: this node's own engine (no hop).
        let held = Task { await b.chat(.openai) }
        #expect(await eventually { local.open == 1 })
        // Its one slot taken: the peer's idle engine finishes first.
        let r = await b.chat(.openai)
        #expect(r.status == 200 && r.header("X-Meshd-Node") == "ra" && r.header("X-Meshd-Engine") == remote.id)
        local.release(1)
        let first = await held.value
        #expect(first.status == 200 && first.header("X-Meshd-Node") == "rb")
        #expect(local.requests == 1 && remote.requests == 1)
        await b.stop()
        await a.stop()
        await local.close()
        await remote.close()
    }

    @Test func modelListsAndNodesCoverTheMesh() async throws {
        let ea = try await FakeEngine(models: ["m"])
        let eb = try await FakeEngine(models: ["z"])
        let (a, b) = try await meshPair("la", [ea], "lb", [eb])
        let ids = (await b.api(.GET, "/v1/models")).json?["data"]?.arrayValue?.compactMap { $0["id"]?.stringValue }
        #expect(ids?.sorted() == ["m", "z"])
        let tags = (await b.api(.GET, "/api/tags")).json?["models"]?.arrayValue?.compactMap { $0["name"]?.stringValue }
        #expect(tags?.sorted() == ["m", "z"])
        let models = await b.admin(.GET, "/v1/models").json?.arrayValue ?? []
        let m = try #require(models.first { $0["name"]?.stringValue == "m" })
        #expect(m["nodes"]?.arrayValue?.compactMap(\.stringValue) == ["la"] && m["engines"]?.arrayValue?.compactMap(\.stringValue) == ["la/\(ea.id)"])
        let nodes = await b.admin(.GET, "/v1/nodes").json?.arrayValue ?? []
        #expect(nodes.compactMap { $0["name"]?.stringValue } == ["lb", "la"])
        #expect(nodes.allSatisfy { $0["state"]?.stringValue == "up" })
        #expect(nodes.last?["models"]?.arrayValue?.compactMap(\.stringValue) == ["m"] && nodes.last?["local"]?.boolValue == false)
        let route = await b.admin(.GET, "/v1/route?model=m")
        #expect(route.json?["node"]?.stringValue == "la" && route.json?["engine"]?.stringValue == ea.id)
        let metrics = await b.api(.GET, "/metrics").text
        #expect(metrics.contains("\nmeshd_mesh_peers 1\n"))
        await b.stop()
        await a.stop()
        await ea.close()
        await eb.close()
    }

    @Test func aDrainedNodeTakesNoNewWorkAndFinishesWhatItHas() async throws {
        let engine = try await FakeEngine(mode: .held)
        let n = try await TestNode.start("d1", engines: [engine])
        let inFlight = Task { await n.chat(.openai, stream: true) }
        #expect(await eventually { engine.open == 1 })
        let drained = await n.admin(.POST, "/v1/drain")
        #expect(drained.status == 200 && drained.json?["node"]?.stringValue == "d1" && drained.json?["draining"]?.boolValue == true)
        #expect(await n.admin(.GET, "/v1/nodes").json?[0]?["state"]?.stringValue == "draining")
        for dialect in [Dialect.openai, .ollama] {
            let refused = await n.chat(dialect)
            #expect(refused.status == 503 && refused.errorMessage?.contains("draining (d1)") == true)
        }
        #expect(engine.requests == 1)
        // A load balancer in front of a lone drained node stops sending it work.
        let ready = await n.api(.GET, "/readyz")
        #expect(ready.status == 503 && ready.json?["reason"]?.stringValue?.contains("draining") == true)
        // The request it had finishes whole.
        engine.release(1)
        let done = await inFlight.value
        #expect(done.status == 200 && done.text.hasSuffix("data: [DONE]\n\n"))
        let undrained = await n.admin(.POST, "/v1/undrain")
        #expect(undrained.json?["draining"]?.boolValue == false)
        engine.set(.ok)
        #expect(await n.chat(.openai).status == 200)
        #expect(await n.api(.GET, "/readyz").status == 200)
        #expect(await n.admin(.POST, "/v1/drain?node=nobody").status == 404)
        await n.stop()
        await engine.close()
    }

    @Test func drainingAPeerStopsForwardsToItButNotTheOneItServes() async throws {
        let engine = try await FakeEngine(mode: .held)
        let (a, b) = try await meshPair("da", [engine], "db", [])
        let inFlight = Task { await b.chat(.ollama, stream: true) }
        #expect(await eventually { engine.open == 1 })
        // meshctl drain da, asked of db: db stops routing there at once, and tells da.
        let drained = await b.admin(.POST, "/v1/drain?node=da")
        #expect(drained.status == 200 && drained.json?["draining"]?.boolValue == true)
        let refused = await b.chat(.openai)
        #expect(refused.status == 503 && refused.errorMessage?.contains("draining (da)") == true)
        #expect(await eventually { a.node.draining.value })
        #expect(await eventually { (b.node.mesh?.peers().first?.state.draining ?? false) })
        engine.release(1)
        let done = await inFlight.value
        #expect(done.status == 200 && done.header("X-Meshd-Node") == "da" && done.text.contains(#""done":true"#))
        #expect(engine.requests == 1)
        _ = await b.admin(.POST, "/v1/undrain?node=da")
        #expect(await eventually { !a.node.draining.value })
        #expect(await eventually { b.node.mesh?.peersForRouting().first.map { !$0.state.draining && !$0.drainedLocally } ?? false })
        engine.set(.ok)
        #expect(await b.chat(.openai).status == 200)
        await b.stop()
        await a.stop()
        await engine.close()
    }

    /// The wall clock set forward on one node and back on the other (NTP, a board without an RTC,
    /// a resumed VM): liveness is measured on the monotonic clock, so no peer is expired for it and
    /// a forward in flight goes on; and the state a node sends after its clock went back is still
    /// newer than the last one, so its peers see the change.
    @Test func aStepOfTheWallClockNeitherExpiresPeersNorHidesANodesChanges() async throws {
        let engine = try await FakeEngine(mode: .held)
        let clockA = ManualClock(), clockB = ManualClock()
        let (a, b) = try await meshPair("wa", [], "wb", [engine], clockA: clockA, clockB: clockB,
                                        configureA: { $0.mesh.deadAfterMissed = 3 }, configureB: { $0.mesh.deadAfterMissed = 3 })
        let inFlight = Task { await a.chat(.openai, stream: true) }
        #expect(await eventually { engine.open == 1 })
        clockA.step(seconds: 60)
        clockB.step(seconds: -3600)
        // Thirty of wa's heartbeat ticks, ten times the 300 ms expiry, pass.
        try await Task.sleep(for: .seconds(1))
        #expect(a.node.mesh?.recentlyDown().isEmpty == true && b.node.mesh?.recentlyDown().isEmpty == true)
        #expect(a.node.mesh?.peers().map(\.state.id) == ["wb"])
        engine.release(1)
        let done = await inFlight.value
        #expect(done.status == 200 && done.header("X-Meshd-Node") == "wb" && done.text.hasSuffix("data: [DONE]\n\n"))
        #expect(!done.text.contains("error"))
        // wb drains itself with its clock an hour back: wa sees it.
        #expect(await b.admin(.POST, "/v1/drain").status == 200)
        #expect(await eventually(timeout: .seconds(5)) { a.node.mesh?.peers().first?.state.draining == true })
        await b.stop()
        await a.stop()
        await engine.close()
    }

    @Test func onShutdownARequestInFlightFinishesAndNewConnectionsAreRefused() async throws {
        let engine = try await FakeEngine(mode: .held)
        let n = try await TestNode.start("d3", engines: [engine])
        let port = try #require(n.node.boundAddress.address?.port)
        let client = try CurlHTTPClient(configuration: HTTPClientConfiguration(connectTimeout: .seconds(2), firstByteTimeout: .seconds(20),
                                                                               idleTimeout: .seconds(20), maxConnectionsPerHost: 0))
        let url = "http://127.0.0.1:\(port)/v1/chat/completions"
        let body = Array(#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#.utf8)
        let inFlight = Task { try await client.execute(HTTPClientRequest(method: "POST", url: url, headers: [("Content-Type", "application/json")], body: body)) }
        #expect(await eventually { engine.open == 1 })
        // SIGTERM: the listener closes, the open request has the grace period to finish.
        let stopping = Task { await n.stop(grace: .seconds(20)) }
        var refused = false
        let deadline = ContinuousClock.now + .seconds(20)
        while !refused && ContinuousClock.now < deadline {
            do {
                _ = try await client.execute(HTTPClientRequest(url: "http://127.0.0.1:\(port)/healthz"))
                try await Task.sleep(for: .milliseconds(10))
            } catch {
                refused = true
            }
        }
        #expect(refused)
        engine.release(1)
        let (head, answer) = try await inFlight.value
        #expect(head.status == 200 && String(decoding: answer, as: UTF8.self).contains("hello from \(engine.port)"))
        await stopping.value
        client.shutdown()
        await engine.close()
    }
}
