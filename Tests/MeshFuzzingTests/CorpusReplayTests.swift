import Foundation
import MeshFuzzing
import Testing

/// Every committed fuzz input (Tests/Fuzz/corpus/TARGET) runs through its target in the ordinary
/// build: the seeds, and the inputs that once crashed a target, stay regression tests.
@Suite struct CorpusReplayTests {
    static let corpus: String = {
        var parts = "\(#filePath)".split(separator: "/", omittingEmptySubsequences: false)
        parts.removeLast(2)  // MeshFuzzingTests/CorpusReplayTests.swift
        return parts.joined(separator: "/") + "/Fuzz/corpus"
    }()

    @Test(arguments: FuzzTarget.allCases)
    func corpusReplays(_ target: FuzzTarget) async {
        let files = Corpus.files(Self.corpus + "/" + target.rawValue)
        #expect(!files.isEmpty, "no corpus for \(target.rawValue)")
        // On a thread of its own, off Swift's cooperative pool: the http target blocks its thread
        // until its server (a task on that pool) is bound, which a pool busy with the rest of the
        // suite on 2 cores could never let happen.
        let ok = await withCheckedContinuation { (c: CheckedContinuation<Bool, Never>) in
            Thread.detachNewThread { c.resume(returning: FuzzDriver.replay(target, paths: files)) }
        }
        #expect(ok)
    }
}
