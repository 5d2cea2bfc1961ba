import Testing
@testable import MeshCloud

@Suite struct SSEObserverTests {
    @Test func doneErrorAndUsageAcrossChunkBoundaries() {
        let text = "data: {\"choices\":[{\"delta\":{\"content\":\"usage\"}}],\"usage\":null}\n\n"
            + "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":2,\"prompt_tokens_details\":{\"cached_tokens\":1}}}\r\n\r\n"
            + "data: [DONE]\n\n"
        let bytes = Array(text.utf8)
        for split in [1, 7, 40, bytes.count - 3] {
            var o = SSEObserver()
            o.observe(Array(bytes[..<split]))
            #expect(!o.ended)
            o.observe(Array(bytes[split...]))
            #expect(o.sawDone && o.ended && o.usage == CloudUsage(promptTokens: 4, cachedPromptTokens: 1, completionTokens: 2))
        }
        var e = SSEObserver()
        e.observe(Array("data: {\"error\":{\"message\":\"overloaded\"}}\n\n".utf8))
        #expect(e.ended && !e.sawDone && e.errorMessage == "overloaded")
        var cut = SSEObserver()
        cut.observe(Array("data: [DONE]".utf8))  // no line end yet
        #expect(!cut.ended)
    }
}
