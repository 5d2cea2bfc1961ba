import MeshCore
import Testing

@Suite struct SplitViewTests {
    static let mib: Int64 = 1_048_576

    func state(_ id: String, offerMiB: Int64?, build: String? = "b1-abc", leasedTo: String? = nil, heads: [String]? = nil,
               draining: Bool = false, splitModel: String? = nil) -> NodeState {
        var s = NodeState(id: id, name: id, meshEndpoint: "198.18.0.1:7000", httpEndpoint: "198.18.0.1:8000", draining: draining)
        if let build {
            s.llama = LlamaAdvert(build: build, rpcServer: true, offerBytes: offerMiB.map { $0 * Self.mib }, leasedTo: leasedTo, heads: heads)
        }
        if let splitModel {
            var m = ModelInfo(name: splitModel, loaded: false)
            m.split = true
            s.engines = [EngineSnapshot(id: "llama.cpp:\(splitModel)", kind: .llamaCpp, url: "", healthy: true, models: [m])]
        }
        return s
    }

    @Test func nodesComeFromTheStatesThePeersAdvertise() {
        let nodes = SplitView.nodes(
            local: state("a", offerMiB: 100), localHasFile: true,
            peers: [(state("b", offerMiB: 300), 0.002), (state("c", offerMiB: 200, leasedTo: "x-1"), nil),
                    (state("d", offerMiB: 400, draining: true), nil), (state("e", offerMiB: 50, heads: ["e-m-1"]), nil),
                    (state("f", offerMiB: nil, build: nil), nil), (state("a", offerMiB: 999), nil)],
            backingOff: ["b"])
        #expect(nodes.map(\.id) == ["a", "b", "c", "d", "e", "f"])
        let byID = Dictionary(uniqueKeysWithValues: nodes.map { ($0.id, $0) })
        #expect(byID["a"]!.isLocal && byID["a"]!.hasModelFile && byID["a"]!.offerBytes == 100 * Self.mib)
        #expect(byID["b"]!.backingOff && byID["b"]!.hopSeconds == 0.002 && !byID["b"]!.hasModelFile)
        #expect(byID["c"]!.leased, "lends memory to another split")
        #expect(byID["d"]!.offerBytes == 0, "a draining node offers nothing")
        #expect(byID["e"]!.leased, "heads a split of its own")
        #expect(byID["f"]!.llamaBuild == nil && byID["f"]!.offerBytes == 0)
    }

    @Test func aSplitIsPlannedFromTheView() {
        let nodes = SplitView.nodes(local: state("a", offerMiB: 10), localHasFile: true,
                                    peers: [(state("b", offerMiB: 10), nil), (state("c", offerMiB: 10, build: "b2-def"), nil)],
                                    backingOff: [])
        let d = SplitPlanner.plan(model: SplitModel(name: "m", weightsBytes: 15 * Self.mib, kvBytes: Self.mib), nodes: nodes,
                                  settings: SplitSettings())
        guard case .split(let p) = d else { Issue.record("\(d)"); return }
        #expect(p.parts.map(\.node) == ["b", "a"])
        #expect(p.reason.contains("c runs llama.cpp b2-def, not b1-abc"), "\(p.reason)")
    }

    @Test func splitReasonOnlyWhenItDoesNotFitAndMaySplit() {
        let m = SplitModel(name: "m", weightsBytes: 90 * Self.mib, kvBytes: 10 * Self.mib)
        #expect(SplitView.splitReason(model: m, offerBytes: SplitPlanner.neededBytes(m)) == nil)
        let why = SplitView.splitReason(model: m, offerBytes: 99 * Self.mib) ?? ""
        #expect(why.contains("needs 110 MiB") && why.contains("offers 99.0 MiB"), "\(why)")
        var never = m
        never.policy = .never
        #expect(SplitView.splitReason(model: never, offerBytes: 0) == nil)
    }

    @Test func argumentsListTheEndpointsInPlanOrderWithTheTensorSplit() {
        let p = SplitPlan(model: "m", head: "a", build: "b1", parts: [SplitPart(node: "b", bytes: 30, isHead: false),
                                                                      SplitPart(node: "c", bytes: 30, isHead: false),
                                                                      SplitPart(node: "a", bytes: 40, isHead: true)],
                          neededBytes: 100, reason: "")
        #expect(SplitView.arguments(plan: p, endpoints: ["127.0.0.1:1", "127.0.0.1:2"])
                == ["--rpc", "127.0.0.1:1,127.0.0.1:2", "-ngl", "999", "--tensor-split", "0.3,0.3,0.4", "--cache-ram", "0"])
        // A head without a GPU: the split covers the workers; the head keeps 40 % of 10 layers (and the output layer).
        #expect(SplitView.arguments(plan: p, endpoints: ["127.0.0.1:1", "127.0.0.1:2"], layers: 10, headHasDevice: false)
                == ["--rpc", "127.0.0.1:1,127.0.0.1:2", "-ngl", "6", "--tensor-split", "0.5,0.5", "--cache-ram", "0"])
        #expect(SplitView.arguments(plan: p, endpoints: ["e1", "e2"], layers: nil, headHasDevice: false)[3] == "999")
    }

    @Test func backoffDoublesAndClearsWhenANodeServes() {
        var b = SplitBackoff()
        let s: UInt64 = 1_000_000_000
        b.failed("w", now: 0)
        #expect(b.active(now: 14 * s) == ["w"] && b.active(now: 15 * s).isEmpty)
        b.failed("w", now: 20 * s)
        #expect(b.secondsLeft("w", now: 20 * s) == 30)
        for _ in 0..<10 { b.failed("w", now: 100 * s) }
        #expect(b.secondsLeft("w", now: 100 * s) == 300, "capped at 5 minutes")
        b.served("w")
        #expect(b.active(now: 100 * s).isEmpty)
        b.failed("w", now: 200 * s)
        #expect(b.secondsLeft("w", now: 200 * s) == 15, "a served node starts over")
    }
}

@Suite struct HopTableTests {
    @Test func aHopIsHalfTheRoundTripSmoothed() {
        var t = HopTable()
        #expect(t["b"] == nil)
        t.record("b", rtt: 0.004)
        #expect(t["b"] == 0.002)
        t.record("b", rtt: 0.014)
        #expect(abs((t["b"] ?? 0) - (0.002 + HopTable.alpha * (0.007 - 0.002))) < 1e-12)
        t.record("b", rtt: -1)
        t.record("b", rtt: .nan)
        #expect(abs((t["b"] ?? 0) - 0.0035) < 1e-12, "nonsense samples are ignored")
    }

    @Test func measuredHopsDecideWhichWorkerIsLeftOut() {
        let mib: Int64 = 1_048_576
        var hops = HopTable()
        hops.record("far", rtt: 0.040)
        hops.record("near", rtt: 0.001)
        func node(_ id: String, local: Bool = false) -> SplitNode {
            SplitNode(id: id, isLocal: local, offerBytes: 600 * mib, llamaBuild: "b1", hasModelFile: local, hopSeconds: hops[id])
        }
        let d = SplitPlanner.plan(model: SplitModel(name: "m", weightsBytes: 900 * mib, kvBytes: 100 * mib),
                                  nodes: [node("head", local: true), node("far"), node("near")], settings: SplitSettings())
        guard case .split(let p) = d else { Issue.record("\(d)"); return }
        #expect(p.parts.map(\.node) == ["near", "head"])
        #expect(p.reason.contains("left out for their links: far"), "\(p.reason)")
    }
}
