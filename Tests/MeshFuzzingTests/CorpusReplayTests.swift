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
    func corpusReplays(_ target: FuzzTarget) {
        let files = Corpus.files(Self.corpus + "/" + target.rawValue)
        #expect(!files.isEmpty, "no corpus for \(target.rawValue)")
        #expect(FuzzDriver.replay(target, paths: files))
    }
}
