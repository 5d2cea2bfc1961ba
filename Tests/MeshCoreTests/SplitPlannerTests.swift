import MeshCore
import Testing

@Suite struct SplitPlannerTests {
    static let mib: Int64 = 1_048_576
    /// 900 MiB of weights + 100 MiB of KV: 1,100 MiB needed with the 10 % margin.
    let model = SplitModel(name: "big", weightsBytes: 900 * mib, kvBytes: 100 * mib)

    func node(_ id: String, _ offerMiB: Int64, build: String? = "b100", file: Bool = false, local: Bool = false,
              hopMs: Double? = nil, leased: Bool = false, backingOff: Bool = false) -> SplitNode {
        SplitNode(id: id, isLocal: local, offerBytes: offerMiB * Self.mib, llamaBuild: build, hasModelFile: file,
                  leased: leased, hopSeconds: hopMs.map { $0 / 1000 }, backingOff: backingOff)
    }

    func plan(_ nodes: [SplitNode], _ settings: SplitSettings = SplitSettings(), model: SplitModel? = nil) -> SplitDecision {
        SplitPlanner.plan(model: model ?? self.model, nodes: nodes, settings: settings)
    }

    @Test func neededBytesAddTheMargin() {
        #expect(SplitPlanner.neededBytes(model) == 1100 * Self.mib)
    }

    @Test func aModelThatFitsOneNodeIsNeverSplit() {
        let d = plan([node("a", 600, file: true), node("b", 1200, file: true), node("c", 5000)])
        guard case .single(let n, let why) = d else { Issue.record("\(d)"); return }
        #expect(n == "b")
        #expect(why.contains("fits b"))
    }

    @Test func splitsOverTheFewestNodesWithTheHeadHoldingTheFileAndLast() throws {
        let d = plan([node("head", 500, file: true, local: true), node("w1", 300), node("w2", 700), node("w3", 400)])
        guard case .split(let p) = d else { Issue.record("\(d)"); return }
        #expect(p.head == "head" && p.build == "b100")
        // 500 + 700 = 1200 >= 1100: one worker is enough, the largest.
        #expect(p.parts.map(\.node) == ["w2", "head"])
        #expect(p.parts.last?.isHead == true)
        #expect(p.parts.reduce(0) { $0 + $1.bytes } == p.neededBytes)
        for part in p.parts {
            let offer: Int64 = part.node == "head" ? 500 : 700
            #expect(part.bytes <= offer * Self.mib)
        }
        // In proportion to what each offers: 700:500.
        #expect(p.tensorSplit == [0.583, 0.417])
        #expect(p.tensorSplitArgument == "0.583,0.417")
        #expect(p.reason.contains("split over 2 nodes") && p.reason.contains("head (head)"))
    }

    @Test func workersMustRunTheHeadsBuildAndBeFree() throws {
        let d = plan([node("head", 400, file: true), node("old", 2000, build: "b90"), node("none", 2000, build: nil),
                      node("busy", 2000, leased: true), node("flaky", 2000, backingOff: true), node("w", 300), node("v", 450)])
        guard case .split(let p) = d else { Issue.record("\(d)"); return }
        #expect(Set(p.workers.map(\.node)) == ["w", "v"])
        #expect(p.reason.contains("old runs llama.cpp b90, not b100"))
        #expect(p.reason.contains("busy is leased"))
        #expect(p.reason.contains("flaky is backing off"))
    }

    @Test func theWorstLinkGoesFirst() throws {
        // Any two of the three workers would do: the slowest link is left out.
        let d = plan([node("head", 400, file: true), node("near", 400, hopMs: 0.3), node("mid", 400, hopMs: 0.8),
                      node("far", 400, hopMs: 9)])
        guard case .split(let p) = d else { Issue.record("\(d)"); return }
        #expect(Set(p.workers.map(\.node)) == ["near", "mid"])
        #expect(p.reason.contains("left out for their links: far"))
    }

    @Test func atMostMaxWorkers() {
        var s = SplitSettings()
        s.maxWorkers = 2
        let nodes = [node("head", 200, file: true), node("a", 300), node("b", 300), node("c", 300)]
        guard case .refused(let why) = plan(nodes, s) else { Issue.record("expected a refusal"); return }
        #expect(why.contains("at most 2 workers"))
        s.maxWorkers = 3
        guard case .split(let p) = plan(nodes, s) else { Issue.record("expected a split"); return }
        #expect(p.workers.count == 3)
    }

    @Test func refusalsSayWhy() {
        let small = [node("head", 500, file: true), node("w", 700)]
        var off = SplitSettings()
        off.enabled = false
        #expect(plan(small, off).reason.contains("split.enabled: false"))
        let never = SplitModel(name: "big", weightsBytes: 900 * Self.mib, kvBytes: 100 * Self.mib, policy: .never)
        #expect(plan(small, model: never).reason.contains("split: never"))
        #expect(plan([node("w", 5000)]).reason.contains("no node has the model file"))
        #expect(plan([node("head", 500, build: nil, file: true), node("w", 700)]).reason.contains("runs llama.cpp to head"))
        let mismatch = plan([node("head", 500, file: true), node("w", 700, build: "b90")])
        guard case .refused(let why) = mismatch else { Issue.record("\(mismatch)"); return }
        #expect(why.contains("w runs llama.cpp b90, not b100"))
    }

    @Test func anotherHolderHeadsWhenTheBestCannot() throws {
        // The holder with the most room is leased; the other holder heads.
        let d = plan([node("h1", 900, file: true, leased: true), node("h2", 600, file: true), node("w", 600)])
        guard case .split(let p) = d else { Issue.record("\(d)"); return }
        #expect(p.head == "h2" && p.workers.map(\.node) == ["w"])
    }
}
