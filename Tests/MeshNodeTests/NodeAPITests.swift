import Foundation
import MeshCore
@testable import MeshNode
import NIOHTTP1
import Testing

/// One node's client API through its own responder: both dialects to a fake engine, errors in the
/// client's dialect, routing between local engines, keys.
@Suite(.timeLimit(.minutes(1))) struct NodeProxyTests {
    @Test(arguments: [Dialect.openai, .ollama], [false, true])
    func bothDialectsReachTheEngineStreamedOrNot(dialect: Dialect, stream: Bool) async throws {
        let engine = try await FakeEngine()
        engine.answer(["hel", "lo"])
        let n = try await TestNode.start("p1", engines: [engine])
        let r = await n.chat(dialect, stream: stream)
        #expect(r.status == 200)
        #expect(r.header("X-Meshd-Node") == "p1" && r.header("X-Meshd-Engine") == engine.id)
        #expect(engine.requests == 1 && engine.lastModel == "m")
        switch (dialect, stream) {
        case (.openai, false):
            #expect(r.json?["choices"]?[0]?["message"]?["content"]?.stringValue == "hello")
            #expect(r.json?["usage"]?["total_tokens"]?.intValue == 5)
        case (.openai, true):
            #expect(r.header("Content-Type")?.hasPrefix("text/event-stream") == true)
            #expect(r.text.contains(#""content":"hel""#) && r.text.contains(#""content":"lo""#) && r.text.hasSuffix("data: [DONE]\n\n"))
        case (.ollama, false):
            #expect(r.json?["message"]?["content"]?.stringValue == "hello" && r.json?["done"]?.boolValue == true)
            #expect(r.json?["model"]?.stringValue == "m")
        case (.ollama, true):
            #expect(r.header("Content-Type") == "application/x-ndjson")
            let lines = r.text.split(separator: "\n").map { try? JSONParser.parse(Array($0.utf8)) }
            #expect(lines.count >= 3 && lines.allSatisfy { $0 != nil })
            #expect(lines.compactMap { $0?["message"]?["content"]?.stringValue }.joined() == "hello")
            #expect(lines.last??["done"]?.boolValue == true && lines.dropLast().allSatisfy { $0?["done"]?.boolValue == false })
        }
        await n.stop()
        await engine.close()
    }

    @Test(arguments: [Dialect.openai, .ollama], [false, true])
    func engineErrorsComeBackInTheClientsDialect(dialect: Dialect, stream: Bool) async throws {
        let engine = try await FakeEngine(mode: .status(400))
        let n = try await TestNode.start("p2", engines: [engine])
        // A client error from the engine: its status and message, in the client's shape.
        let bad = await n.chat(dialect, stream: stream)
        #expect(bad.status == 400)
        #expect(bad.errorMessage?.contains("fake failure 400") == true)
        if dialect == .openai {
            #expect(bad.json?["error"]?["type"]?.stringValue != nil)
        } else {
            #expect(bad.json?["error"]?.stringValue != nil)
        }
        // The only engine broken: 502 naming it (nothing to fail over to).
        engine.set(.status(500))
        let broken = await n.chat(dialect, stream: stream)
        #expect(broken.status == 502)
        #expect(broken.errorMessage?.contains("p2/\(engine.id)") == true)
        #expect(dialect == .openai ? broken.json?["error"]?["message"] != nil : broken.json?["error"]?.stringValue != nil)
        await n.stop()
        await engine.close()
    }

    @Test(arguments: [Dialect.openai, .ollama])
    func badInputIsA400NamingTheFieldAndReachesNoEngine(dialect: Dialect) async throws {
        let engine = try await FakeEngine()
        let n = try await TestNode.start("p3", engines: [engine])
        let path = dialect == .openai ? "/v1/chat/completions" : "/api/chat"
        let noMessages = await n.api(.POST, path, json: #"{"model":"m","messages":"hi"}"#)
        #expect(noMessages.status == 400 && noMessages.errorMessage?.contains("messages") == true)
        let noModel = await n.api(.POST, path, json: #"{"messages":[{"role":"user","content":"hi"}]}"#)
        #expect(noModel.status == 400 && noModel.errorMessage?.contains("model") == true)
        if dialect == .openai {
            #expect(noMessages.json?["error"]?["param"]?.stringValue == "messages")
            #expect(noModel.json?["error"]?["param"]?.stringValue == "model")
        }
        let notJSON = await n.api(.POST, path, json: "{not json")
        #expect(notJSON.status == 400 && notJSON.errorMessage?.contains("not valid JSON") == true)
        let priority = await n.chat(dialect, headers: [("X-Meshd-Priority", "urgent")])
        #expect(priority.status == 400 && priority.errorMessage?.contains("X-Meshd-Priority") == true)
        #expect(engine.requests == 0)
        // Ollama's chat without messages only loads the model: answered here, nothing generated.
        let load = await n.api(.POST, "/api/chat", json: #"{"model":"m","messages":[]}"#)
        #expect(load.status == 200 && load.json?["done_reason"]?.stringValue == "load" && engine.requests == 0, "\(load.status) \(load.text)")
        await n.stop()
        await engine.close()
    }

    @Test(arguments: [Dialect.openai, .ollama])
    func aModelNoEngineHasIsA404InTheClientsDialect(dialect: Dialect) async throws {
        let engine = try await FakeEngine()
        let n = try await TestNode.start("p4", engines: [engine])
        let r = await n.chat(dialect, model: "no-such-model")
        #expect(r.status == 404)
        #expect(r.errorMessage?.contains("no-such-model") == true && r.errorMessage?.contains("m") == true)
        if dialect == .openai {
            #expect(r.json?["error"]?["code"]?.stringValue == "model_not_found" && r.json?["error"]?["param"]?.stringValue == "model")
        } else {
            #expect(r.json?["error"]?.stringValue != nil)
        }
        #expect(engine.requests == 0)
        await n.stop()
        await engine.close()
    }

    @Test func aRequestGoesToTheEngineExpectedToFinishFirst() async throws {
        // Listed first (ties go to it), one slot, and busy: the idle second engine finishes first.
        let busy = try await FakeEngine(mode: .held, slots: 1)
        let idle = try await FakeEngine(slots: 1)
        let n = try await TestNode.start("p5", engines: [busy, idle])
        #expect(await eventually { n.node.engines.snapshot().allSatisfy { $0.load.limit == 1 } })
        let held = Task { await n.chat(.openai) }
        #expect(await eventually { busy.open == 1 })
        for stream in [false, true] {
            let r = await n.chat(.openai, stream: stream)
            #expect(r.status == 200 && r.header("X-Meshd-Engine") == idle.id)
        }
        #expect(idle.requests == 2 && busy.requests == 1)
        busy.release(1)
        let first = await held.value
        #expect(first.status == 200 && first.header("X-Meshd-Engine") == busy.id)
        await n.stop()
        await busy.close()
        await idle.close()
    }

    @Test func clientKeysAreRequiredOnEveryAPIRouteButHealth() async throws {
        let engine = try await FakeEngine()
        let n = try await TestNode.start("p6", engines: [engine]) { c in
            c.http.apiKeys = ["ci:key-ci-0123456789"]
            c.http.adminKeys = ["ops:admin-0123456789"]
        }
        let none = await n.chat(.openai)
        #expect(none.status == 401 && none.header("WWW-Authenticate") == "Bearer")
        #expect(none.json?["error"]?["message"]?.stringValue != nil)
        let ollama = await n.chat(.ollama, headers: [("Authorization", "Bearer wrong-key")])
        #expect(ollama.status == 401 && ollama.json?["error"]?.stringValue != nil)
        for path in ["/v1/models", "/api/tags", "/metrics"] {
            #expect(await n.api(.GET, path).status == 401, "\(path)")
        }
        // The admin key is no client key.
        #expect(await n.chat(.openai, headers: [("Authorization", "Bearer admin-0123456789")]).status == 401)
        #expect(engine.requests == 0)
        let ok = await n.chat(.openai, headers: [("Authorization", "Bearer key-ci-0123456789")])
        #expect(ok.status == 200 && engine.requests == 1)
        #expect(await n.api(.GET, "/v1/models", headers: [("Authorization", "Bearer key-ci-0123456789")]).status == 200)
        #expect(await n.api(.GET, "/healthz").status == 200)
        // The dashboard's data takes admin keys only (the request comes from no loopback address here).
        let ui = await n.api(.GET, "/ui/state", headers: [("Authorization", "Bearer key-ci-0123456789")])
        #expect(ui.status == 401 && ui.json?["error"]?["code"]?.stringValue == "admin_key_required")
        #expect(await n.api(.GET, "/ui/state", headers: [("Authorization", "Bearer admin-0123456789")]).status == 200)
        await n.stop()
        await engine.close()
    }
}

/// What the node reports: the client API's model lists, health and metrics, and the admin socket's
/// JSON, for a known state (two engines, a fixed clock).
@Suite(.timeLimit(.minutes(1))) struct NodeStatusTests {
    /// 2023-11-14T22:13:20Z.
    static let now: UInt64 = 1_700_000_000_000_000_000

    @Test func modelListsHealthAndMetrics() async throws {
        let a = try await FakeEngine(models: ["m", "shared"])
        let b = try await FakeEngine(models: ["shared", "z"])
        let n = try await TestNode.start("s1", engines: [a, b], clock: ManualClock(nanos: Self.now))
        let models = await n.api(.GET, "/v1/models")
        #expect(models.status == 200 && models.json?["object"]?.stringValue == "list")
        let data = models.json?["data"]?.arrayValue ?? []
        #expect(data.compactMap { $0["id"]?.stringValue }.sorted() == ["m", "shared", "z"])
        #expect(data.allSatisfy { $0["created"]?.intValue == 1_700_000_000 && $0["owned_by"]?.stringValue == "meshd:s1" })
        let one = await n.api(.GET, "/v1/models/shared")
        #expect(one.status == 200 && one.json?["id"]?.stringValue == "shared")
        let missing = await n.api(.GET, "/v1/models/nope")
        #expect(missing.status == 404 && missing.json?["error"]?["code"]?.stringValue == "model_not_found")
        let tags = await n.api(.GET, "/api/tags")
        let tagList = tags.json?["models"]?.arrayValue ?? []
        #expect(tagList.compactMap { $0["name"]?.stringValue }.sorted() == ["m", "shared", "z"])
        #expect(tagList.allSatisfy { $0["modified_at"]?.stringValue?.hasPrefix("2023-11-14T22:13:20") == true })
        #expect(await n.api(.GET, "/api/version").json?["version"]?.stringValue == APIResponder.ollamaAPIVersion)
        #expect(await n.api(.GET, "/healthz").json?["node"]?.stringValue == "s1")
        let ready = await n.api(.GET, "/readyz")
        #expect(ready.status == 200 && ready.json?["engines"]?.arrayValue?.compactMap(\.stringValue).sorted() == [a.id, b.id].sorted())
        // Wrong method and unknown path, in the path's dialect.
        let post = await n.api(.POST, "/v1/models", json: "{}")
        #expect(post.status == 405 && post.header("Allow") == "GET, HEAD")
        let unknown = await n.api(.GET, "/api/nothing")
        #expect(unknown.status == 404 && unknown.json?["error"]?.stringValue?.contains("/api/nothing") == true)
        // A request shows in the metrics.
        #expect(await n.chat(.openai, model: "z").status == 200)
        let metrics = await n.api(.GET, "/metrics")
        #expect(metrics.status == 200 && metrics.header("Content-Type")?.hasPrefix("text/plain") == true)
        let line = metrics.text.split(separator: "\n").first { $0.hasPrefix("meshd_requests_total{") && $0.contains("model=\"z\"") && $0.contains("status=\"200\"") }
        #expect(line?.hasSuffix(" 1") == true, "\(metrics.text.prefix(2000))")
        await n.stop()
        await a.close()
        await b.close()
    }

    @Test func adminStatusEnginesModelsRouteAndNodes() async throws {
        let a = try await FakeEngine(slots: 2, models: ["m"])
        let b = try await FakeEngine(models: ["m", "z"])
        let n = try await TestNode.start("s2", engines: [a, b], clock: ManualClock(nanos: Self.now))
        #expect(await eventually { n.node.engines.snapshot().first { $0.id == a.id }?.load.limit == 2 })
        let status = await n.admin(.GET, "/v1/status")
        #expect(status.status == 200)
        let s = try #require(status.json)
        #expect(s["node"]?.stringValue == "s2" && s["engines_total"]?.intValue == 2 && s["engines_healthy"]?.intValue == 2)
        #expect(s["in_flight"]?.intValue == 0 && s["queued"]?.intValue == 0)
        #expect(s["models"]?.arrayValue?.compactMap(\.stringValue).sorted() == ["m", "z"])
        #expect(s["engines"]?.arrayValue?.first { $0["id"]?.stringValue == a.id }?["limit"]?.intValue == 2)

        let engines = await n.admin(.GET, "/v1/engines").json?.arrayValue ?? []
        #expect(engines.compactMap { $0["id"]?.stringValue } == [a.id, b.id])
        #expect(engines.allSatisfy { $0["healthy"]?.boolValue == true && $0["kind"]?.stringValue == "openai" })
        #expect(engines.last?["models"]?.arrayValue?.compactMap { $0["name"]?.stringValue } == ["m", "z"])

        let models = await n.admin(.GET, "/v1/models").json?.arrayValue ?? []
        let m = try #require(models.first { $0["name"]?.stringValue == "m" })
        #expect(m["engines"]?.arrayValue?.compactMap(\.stringValue) == [a.id, b.id] && m["nodes"]?.arrayValue?.compactMap(\.stringValue) == ["s2"])
        #expect(models.first { $0["name"]?.stringValue == "z" }?["engines"]?.arrayValue?.compactMap(\.stringValue) == [b.id])

        let route = await n.admin(.GET, "/v1/route?model=z")
        #expect(route.status == 200 && route.json?["engine"]?.stringValue == b.id && route.json?["node"]?.stringValue == "s2")
        let noRoute = await n.admin(.GET, "/v1/route?model=nope")
        #expect(noRoute.status == 404 && noRoute.json?["error"]?.stringValue?.contains("nope") == true)
        #expect(await n.admin(.GET, "/v1/route").status == 400)

        let nodes = await n.admin(.GET, "/v1/nodes").json?.arrayValue ?? []
        #expect(nodes.count == 1 && nodes.first?["name"]?.stringValue == "s2" && nodes.first?["state"]?.stringValue == "up")
        #expect(nodes.first?["local"]?.boolValue == true)
        // Not a gateway: no budget here, and it says where to ask.
        let budget = await n.admin(.GET, "/v1/budget")
        #expect(budget.status == 404 && budget.json?["gateway"]?.boolValue == false)
        #expect(await n.admin(.GET, "/v1/nothing").status == 404)
        #expect(await n.admin(.DELETE, "/v1/status").status == 405)
        await n.stop()
        await a.close()
        await b.close()
    }

    @Test func aNodeWithNoHealthyEngineIsNotReady() async throws {
        let gone = try await FakeEngine()
        await gone.close()
        let n = try await TestNode.start("s3", engines: [gone])
        let ready = await n.api(.GET, "/readyz")
        #expect(ready.status == 503 && ready.json?["reason"]?.stringValue == "no healthy engine")
        #expect(await n.admin(.GET, "/v1/status").json?["engines_healthy"]?.intValue == 0)
        await n.stop()
    }
}
