import MeshCore
import Testing

@Suite struct LlamaBuildTests {
    @Test func parsesTheFormsLlamaServerPrints() {
        // The vendored llama.cpp of llama-cpp-python 0.3.36 (tools/build-llama.sh).
        #expect(LlamaBuild.parse("version: 0.5.0-dev (build 1, commit 0c1e570)\nbuilt with GNU 12.2.0 for Linux x86_64\n") == "b1-0c1e570")
        // Upstream release builds.
        #expect(LlamaBuild.parse("ggml_cuda_init: found 1 CUDA devices\nversion: 4567 (abc1234)\nbuilt with cc\n") == "b4567-abc1234")
        #expect(LlamaBuild.parse("version: 1.2.3-custom\n") == "1.2.3-custom")
        #expect(LlamaBuild.parse("usage: llama-server [options]\n") == nil)
        #expect(LlamaBuild.parse("version:\n") == nil)
        // Two builds differ when their commits do.
        #expect(LlamaBuild.parse("version: 4567 (abc1234)") != LlamaBuild.parse("version: 4567 (abc1235)"))
    }
}
