import MeshCore
import Testing

@Suite struct ModelCopyPlanTests {
    @Test func theNearestHolderIsTheSourceMeasuredHopsFirstThenByName() {
        typealias H = ModelCopyPlan.Holder
        let holders = [H(node: "far", hopSeconds: 0.009, bytes: 1), H(node: "near", hopSeconds: 0.001, bytes: 1),
                       H(node: "me", hopSeconds: 0, bytes: 1), H(node: "unmeasured", hopSeconds: nil, bytes: 1)]
        #expect(ModelCopyPlan.source(holders, exclude: "me")?.node == "near")
        #expect(ModelCopyPlan.source(holders.filter { $0.node != "near" }, exclude: "me")?.node == "far")
        #expect(ModelCopyPlan.source([H(node: "b", hopSeconds: nil, bytes: nil), H(node: "a", hopSeconds: nil, bytes: nil)], exclude: "x")?.node == "a")
        #expect(ModelCopyPlan.source([H(node: "me", hopSeconds: 0.001, bytes: 1)], exclude: "me") == nil)
    }

    @Test func tunnelTargetsRoundTripAndRefuseNamesNoStoreFileCanHave() {
        for t in [ModelCopyPlan.Target.send(model: "qwen2.5-7b"), .pull(model: "m"), .delete(model: "a.b_c"),
                  .copy(source: "m", destination: "m-backup")] {
            #expect(ModelCopyPlan.Target(t.string) == t)
        }
        #expect(ModelCopyPlan.Target.send(model: "m").string == "model/m")
        for bad in ["model/", "model/../etc/passwd", "pull/.hidden", "delete/a/b", "rpc/split-1", "model/x\u{1}", "other",
                    "copy/a", "copy/a/b/c", "copy//b", "copy/a/.b"] {
            #expect(ModelCopyPlan.Target(bad) == nil, "\(bad)")
        }
    }

    @Test func headerAndRequestLinesRoundTripAndBadOnesAreRefused() {
        let req = ModelCopyPlan.Request(offset: 1 << 40)
        #expect(req.line.last == 10 && ModelCopyPlan.Request(line: Array(req.line.dropLast())) == req)
        #expect(ModelCopyPlan.Request(line: Array(#"{"offset":-1}"#.utf8)) == nil)
        #expect(ModelCopyPlan.Request(line: Array("garbage".utf8)) == nil)
        let digest = String(repeating: "ab", count: 32)
        let h = ModelCopyPlan.Header(size: 100, sha256: digest, offset: 40)
        #expect(ModelCopyPlan.Header(line: Array(h.line.dropLast())) == h)
        let e = ModelCopyPlan.Header(error: "not here")
        #expect(ModelCopyPlan.Header(line: Array(e.line.dropLast()))?.error == "not here")
        for bad in [#"{"size":10,"sha256":"\#(digest)","offset":11}"#, #"{"size":10,"sha256":"abc","offset":0}"#,
                    #"{"size":10,"sha256":"\#(String(repeating: "AB", count: 32))","offset":0}"#, #"{"size":-1,"sha256":"\#(digest)","offset":0}"#] {
            #expect(ModelCopyPlan.Header(line: Array(bad.utf8)) == nil, "\(bad)")
        }
    }

    @Test func aCopyResumesWhereThePartialEndsUnlessThatIsPastTheFile() {
        #expect(ModelCopyPlan.startOffset(requested: 0, size: 10) == 0)
        #expect(ModelCopyPlan.startOffset(requested: 7, size: 10) == 7)
        #expect(ModelCopyPlan.startOffset(requested: 10, size: 10) == 10)
        #expect(ModelCopyPlan.startOffset(requested: 11, size: 10) == 0)
        #expect(ModelCopyPlan.startOffset(requested: -3, size: 10) == 0)
    }

    @Test func linesAreSplitOffTheStreamWithALimit() {
        if case .none = ModelCopyPlan.splitLine(Array("abc".utf8)) {} else { Issue.record("no newline yet: no line") }
        let r = ModelCopyPlan.splitLine(Array("ab\ncd".utf8))
        #expect(r??.line == Array("ab".utf8) && r??.rest == Array("cd".utf8))
        let long = [UInt8](repeating: 65, count: 20)
        if case .some(.none) = ModelCopyPlan.splitLine(long, limit: 10) {} else { Issue.record("an unended line over the limit must be an error") }
        if case .some(.none) = ModelCopyPlan.splitLine(long + [10], limit: 10) {} else { Issue.record("a line over the limit must be an error") }
    }

    @Test func pullProgressIsOllamasShape() {
        let digest = String(repeating: "0f", count: 32)
        let l = OllamaPullProgress.layer(sha256: digest, total: 10, completed: 4)
        #expect(l["status"]?.stringValue == "pulling 0f0f0f0f0f0f" && l["digest"]?.stringValue == "sha256:" + digest)
        #expect(l["total"]?.intValue == 10 && l["completed"]?.intValue == 4)
        #expect(OllamaPullProgress.success["status"]?.stringValue == "success")
        #expect(OllamaPullProgress.error("x")["error"]?.stringValue == "x")
    }
}
