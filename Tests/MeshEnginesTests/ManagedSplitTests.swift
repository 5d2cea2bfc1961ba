import Foundation
import MeshCore
import MeshHTTPClient
import Synchronization
import Testing
@testable import MeshEngines

/// A split head that records what the engine asks of it; its "split" is the real llama-server run
/// with `arguments` (no RPC workers: the engine's side of the protocol is what is tested here).
final class RecordingLauncher: SplitLaunching {
    struct Calls {
        var prepared = 0
        var serving: [String] = []
        var ended: [(String, String?)] = []
    }
    let calls = Mutex(Calls())
    let reason: String?
    let refuse: String?
    let arguments: [String]

    init(reason: String?, refuse: String? = nil, arguments: [String] = []) {
        self.reason = reason
        self.refuse = refuse
        self.arguments = arguments
    }

    func splitReason(engineID: String, model: SplitModel) -> String? { reason }
    func prepareSplit(engineID: String, model: SplitModel) async throws -> SplitLaunch {
        let n = calls.withLock { c in
            c.prepared += 1
            return c.prepared
        }
        try await Task.sleep(for: .milliseconds(100))
        if let refuse { throw SplitUnavailable(refuse) }
        let plan = SplitPlan(model: model.name, head: "a", build: "b1", parts: [SplitPart(node: "a", bytes: model.weightsBytes, isHead: true)],
                             neededBytes: model.weightsBytes, reason: "test plan")
        return SplitLaunch(id: "a-\(model.name)-\(n)", plan: plan, arguments: arguments)
    }
    func splitServing(_ launch: SplitLaunch) async { calls.withLock { $0.serving.append(launch.id) } }
    func splitEnded(_ launch: SplitLaunch, failure: String?) async { calls.withLock { $0.ended.append((launch.id, failure)) } }
}

@Suite(.serialized, .timeLimit(.minutes(1))) struct ManagedSplitTests {
    func engine(_ launcher: RecordingLauncher) throws -> (ManagedLlamaCppEngine, CurlHTTPClient) {
        let (binary, model) = try llamaFixtures()
        let client = try makeClient()
        let e = ManagedLlamaCppEngine(config: EngineConfig(kind: .llamaCpp, model: model, args: ["-c", "256", "-t", "1"], binary: binary),
                                      transport: client, logger: testLogger)
        e.setSplitLauncher(launcher)
        return (e, client)
    }

    @Test func aModelThatMustBeSplitWaitsForARequestStartsOnceAndPlansAgainAfterItEnds() async throws {
        let launcher = RecordingLauncher(reason: "needs 19 MiB, this node offers 8 MiB", arguments: ["--cache-ram", "0"])
        let (e, client) = try engine(launcher)
        defer { client.shutdown() }
        let model = try #require(e.splitModel)
        #expect(model.weightsBytes > 10_000_000 && model.kvBytes > 0, "the file's bytes and the KV of -c 256")
        #expect(model.kvBytes % 256 == 0 && ManagedLlamaCppEngine.contextArgument(["-t", "1", "--ctx-size=512"]) == 512)
        #expect(ManagedLlamaCppEngine.contextArgument(["-c", "0"]) == nil, "0: the model's own")
        await e.start()
        #expect(e.status.phase == .awaitingSplit)
        #expect(e.status.detail == "needs 19 MiB, this node offers 8 MiB")
        var snap = await e.refresh()
        // Servable (routing sends the first request), not loaded (a cold start), marked as a split.
        #expect(snap.healthy && snap.models.count == 1)
        #expect(snap.models.first?.loaded == false && snap.models.first?.split == true && snap.models.first?.sizeBytes == model.weightsBytes)

        // Three requests at once: one split start, all served by it.
        let results = await withTaskGroup(of: String?.self) { g in
            for _ in 0..<3 { g.addTask { await e.prepare() } }
            var out: [String?] = []
            for await r in g { out.append(r) }
            return out
        }
        #expect(results.allSatisfy { $0 == nil }, "\(results)")
        #expect(launcher.calls.withLock { $0.prepared } == 1)
        #expect(launcher.calls.withLock { $0.serving } == ["a-meshd-tiny-1"])
        #expect(e.runningSplit?.id == "a-meshd-tiny-1")
        #expect(e.status.phase == .running)
        snap = await e.refresh()
        #expect(snap.healthy && snap.models.first?.loaded == true && snap.models.first?.split == true, "\(snap)")
        #expect(await e.prepare() == nil, "a running split serves at once")

        // A worker failed: the head's llama-server is stopped; the next request plans again.
        e.abortSplit("worker b failed: silent for 1.5 s")
        let ended = await eventually(timeout: .seconds(10)) { launcher.calls.withLock { !$0.ended.isEmpty } }
        #expect(ended)
        let (id, failure) = try #require(launcher.calls.withLock { $0.ended.first })
        #expect(id == "a-meshd-tiny-1")
        #expect(failure?.contains("worker b failed: silent for 1.5 s") == true, "\(failure ?? "nil")")
        #expect(e.status.phase == .awaitingSplit && e.runningSplit == nil)
        snap = await e.refresh()
        #expect(snap.healthy && snap.models.first?.loaded == false)
        #expect(await e.prepare() == nil)
        #expect(launcher.calls.withLock { $0.prepared } == 2)
        await e.stop()
        let stopped = await eventually(timeout: .seconds(10)) { launcher.calls.withLock { $0.ended.count == 2 } }
        #expect(stopped)
        #expect(launcher.calls.withLock { $0.ended.last?.1 } == nil, "stopping is no failure")
    }

    @Test func afterARequestBrokeOnASplitTheRegistrySettlesItServableForTheNextRoutingDecision() async throws {
        let launcher = RecordingLauncher(reason: "needs 19 MiB, this node offers 8 MiB", arguments: ["--cache-ram", "0"])
        let (e, client) = try engine(launcher)
        defer { client.shutdown() }
        // Polled rarely: only the settle's own poll can show the split's end in time.
        let reg = EngineRegistry(adapters: [e], logger: testLogger, pollInterval: .seconds(60))
        await reg.start()
        #expect(try await reg.prepare(e.id).get().hasPrefix("http://127.0.0.1:"))
        await reg.refreshNow()
        #expect(reg.snapshot(e.id)?.models.first?.loaded == true)
        // A worker failed mid-request: the request's connection broke, and the head's llama-server is being stopped.
        reg.noteFailure(e.id)
        e.abortSplit("worker b failed: connection reset")
        await reg.settle(e.id)
        let snap = try #require(reg.snapshot(e.id))
        #expect(snap.healthy && snap.models.first?.loaded == false && snap.models.first?.split == true,
                "servable again, to be planned anew: \(snap)")
        #expect(e.runningSplit == nil)
        #expect(try await reg.prepare(e.id).get().hasPrefix("http://127.0.0.1:"))
        #expect(launcher.calls.withLock { $0.prepared } == 2)
        await reg.shutdown()
    }

    @Test func noSplitNowIsTheRequestsAnswerAndTheEngineStaysServable() async throws {
        let launcher = RecordingLauncher(reason: "too big", refuse: "no node can hold 'meshd-tiny' and no split can")
        let (e, client) = try engine(launcher)
        defer { client.shutdown() }
        await e.start()
        let why = await e.prepare()
        #expect(why == "no node can hold 'meshd-tiny' and no split can")
        #expect(e.status.phase == .awaitingSplit)
        #expect(e.status.detail?.contains("no split now: no node can hold") == true)
        #expect(await e.refresh().healthy)
        #expect(launcher.calls.withLock { $0.ended.isEmpty && $0.serving.isEmpty })
        await e.stop()
    }

    @Test func aModelThatFitsStartsAtOnceAsBefore() async throws {
        let launcher = RecordingLauncher(reason: nil)
        let (e, client) = try engine(launcher)
        defer { client.shutdown() }
        await e.start()
        let up = await eventually(timeout: .seconds(30)) { e.status.phase == .running }
        #expect(up)
        #expect(await e.prepare() == nil)
        #expect(launcher.calls.withLock { $0.prepared } == 0)
        await e.stop()
    }
}
