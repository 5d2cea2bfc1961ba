#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MeshCore
import MeshHTTPClient
import Testing
@testable import MeshEngines

/// Adapters against meshd-sim-engine subprocesses.
@Suite(.serialized, .timeLimit(.minutes(1))) struct SimEngineTests {
    @Test func ollamaAdapter() async throws {
        let sim = try await SimEngine(models: "sim-small,sim-large,sim-embed", loaded: "sim-small")
        let client = try makeClient()
        defer { client.shutdown() }
        let a = OllamaAdapter(url: sim.url, transport: client)
        #expect(a.id == "ollama@127.0.0.1:\(sim.port)")
        let s = await a.refresh()
        #expect(s.healthy, "\(s.healthDetail ?? "")")
        #expect(s.kind == .ollama && s.url == sim.url)
        #expect(s.models.count == 3)
        let small = try #require(s.model(named: "sim-small"))
        #expect(small.loaded && small.vramBytes != nil && small.contextLength == 4096)
        #expect(small.family == "llama" && small.parameterSize == "1.2B" && small.sizeBytes == 807_694_464)
        let large = try #require(s.model(named: "sim-large"))
        #expect(!large.loaded && large.parameterSize == "70.6B")
        #expect(s.model(named: "sim-embed")?.embeddings == true)
        #expect(small.embeddings == nil)
    }

    @Test func openAIAdapter() async throws {
        let sim = try await SimEngine(models: "sim-small,sim-large", loaded: "sim-small", extra: ["--slots", "3"])
        let client = try makeClient()
        defer { client.shutdown() }
        let a = OpenAIAdapter(url: sim.url + "/v1", transport: client)
        #expect(a.id == "openai@127.0.0.1:\(sim.port)")
        let s = await a.refresh()
        #expect(s.healthy, "\(s.healthDetail ?? "")")
        #expect(s.models.count == 2 && s.models.allSatisfy(\.loaded))
        #expect(s.load.slots == 3 && s.load.running == 0 && s.load.waiting == 0)
        #expect(a.missingEndpoints.isEmpty)
    }

    @Test func killedEngineIsUnhealthyThenHealthyAgainOnTheSamePort() async throws {
        var sim = try await SimEngine()
        let port = sim.port
        let client = try makeClient()
        defer { client.shutdown() }
        let ollama = OllamaAdapter(url: sim.url, transport: client)
        let openai = OpenAIAdapter(url: sim.url, transport: client)
        #expect(await ollama.refresh().healthy)
        #expect(await openai.refresh().healthy)

        sim.kill9()
        let o = await ollama.refresh()
        let p = await openai.refresh()
        #expect(!o.healthy && o.models.isEmpty && o.healthDetail?.contains("connection failed") == true, "\(o.healthDetail ?? "")")
        #expect(!p.healthy && p.healthDetail?.contains("connection failed") == true, "\(p.healthDetail ?? "")")

        sim = try await SimEngine(port: port)
        #expect(sim.port == port)
        #expect(await ollama.refresh().healthy)
        #expect(await openai.refresh().healthy)
        sim.kill9()
    }

    @Test func registryNoticesDeathAndReturnWithinTwoIntervals() async throws {
        var sim = try await SimEngine()
        let port = sim.port
        let client = try makeClient()
        defer { client.shutdown() }
        let interval = Duration.milliseconds(200)
        let reg = EngineRegistry(engines: [EngineConfig(kind: .ollama, url: sim.url), EngineConfig(kind: .openai, url: sim.url)],
                                 httpClient: client, logger: testLogger, pollInterval: interval)
        await reg.start()
        #expect(reg.snapshot().map(\.healthy) == [true, true])
        var changes = reg.changes().makeAsyncIterator()
        _ = await changes.next()

        sim.kill9()
        let t0 = ContinuousClock.now
        #expect(await next(&changes) { $0.allSatisfy { !$0.healthy } } != nil)
        #expect(ContinuousClock.now - t0 <= interval * 2 + .seconds(2))  // "within seconds"; slack for a loaded CI machine

        sim = try await SimEngine(port: port)
        let t1 = ContinuousClock.now
        #expect(await next(&changes) { $0.allSatisfy(\.healthy) } != nil)
        #expect(ContinuousClock.now - t1 <= interval * 2 + .seconds(2))  // "within seconds"; slack for a loaded CI machine
        await reg.shutdown()
        sim.kill9()
    }
}
