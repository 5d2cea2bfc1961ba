import MeshCore
import Testing

/// A GGUF header writer for tests.
struct GGUFWriter {
    var bytes: [UInt8] = Array("GGUF".utf8)
    var count = 0
    var body: [UInt8] = []

    init(version: UInt32 = 3) { bytes += le(UInt64(version), 4) }

    func le(_ v: UInt64, _ n: Int) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) } }
    func str(_ s: String) -> [UInt8] { le(UInt64(s.utf8.count), 8) + Array(s.utf8) }

    mutating func u32(_ k: String, _ v: UInt32) { body += str(k) + le(4, 4) + le(UInt64(v), 4); count += 1 }
    mutating func string(_ k: String, _ v: String) { body += str(k) + le(8, 4) + str(v); count += 1 }
    mutating func f32(_ k: String, _ v: Float) { body += str(k) + le(6, 4) + le(UInt64(v.bitPattern), 4); count += 1 }
    mutating func strings(_ k: String, _ v: [String]) {
        body += str(k) + le(9, 4) + le(8, 4) + le(UInt64(v.count), 8) + v.flatMap(str); count += 1
    }
    mutating func floats(_ k: String, _ v: [Float]) {
        body += str(k) + le(9, 4) + le(6, 4) + le(UInt64(v.count), 8) + v.flatMap { le(UInt64($0.bitPattern), 4) }; count += 1
    }

    var data: [UInt8] { bytes + le(7, 8) + le(UInt64(count), 8) + body }
}

@Suite struct GGUFTests {
    static func llamaHeader(kvHeads: UInt32? = nil) -> [UInt8] {
        var w = GGUFWriter()
        w.string("general.architecture", "llama")
        w.string("general.name", "tiny")
        w.u32("llama.context_length", 4096)
        w.u32("llama.block_count", 32)
        w.u32("llama.embedding_length", 4096)
        w.u32("llama.attention.head_count", 32)
        if let kvHeads { w.u32("llama.attention.head_count_kv", kvHeads) }
        w.f32("llama.rope.freq_base", 10000)
        w.strings("tokenizer.ggml.tokens", ["<s>", "</s>", "hello", "wörld"])
        w.floats("tokenizer.ggml.scores", [0, 0, -1.5, -2])
        return w.data
    }

    @Test func readsWhatPlanningAndClientsNeed() throws {
        let m = try GGUFReader.parse(Self.llamaHeader(kvHeads: 8))
        #expect(m.version == 3 && m.tensorCount == 7)
        #expect(m.architecture == "llama" && m.values["general.name"] == .string("tiny"))
        #expect(m.contextLength == 4096 && m.blockCount == 32 && m.headCount == 32 && m.headCountKV == 8)
        #expect(m.arrayLengths["tokenizer.ggml.tokens"] == 4 && m.arrayLengths["tokenizer.ggml.scores"] == 4)
        // Llama-3-8B's shape: 2 bytes x 32 layers x 8 KV heads x (128 + 128) = 128 KiB per token.
        #expect(m.kvBytesPerToken == 131_072)
        #expect(m.kvBytes() == 131_072 * 4096 && m.kvBytes(contextTokens: 8192) == 131_072 * 8192)
        let plan = SplitModel(name: "tiny", fileBytes: 4_000_000_000, metadata: m, contextTokens: 8192)
        #expect(plan.weightsBytes == 4_000_000_000 && plan.kvBytes == 1 << 30)
        // Without head_count_kv, every head keeps its KV.
        #expect(try GGUFReader.parse(Self.llamaHeader()).kvBytesPerToken == 524_288)
    }

    @Test func nonsenseShapesGiveNoEstimateInsteadOfATrap() throws {
        var w = GGUFWriter()
        w.string("general.architecture", "llama")
        w.u32("llama.block_count", UInt32.max)
        w.u32("llama.embedding_length", UInt32.max)
        w.u32("llama.attention.head_count", 1)
        w.u32("llama.context_length", UInt32.max)
        let m = try GGUFReader.parse(w.data)
        #expect(m.kvBytesPerToken == nil || m.kvBytes() == nil)
        var zero = GGUFWriter()
        zero.string("general.architecture", "llama")
        zero.u32("llama.block_count", 4)
        zero.u32("llama.embedding_length", 0)
        zero.u32("llama.attention.head_count", 4)
        #expect(try GGUFReader.parse(zero.data).kvBytesPerToken == nil)
    }

    @Test func everyTruncationIsAClearErrorNeverACrash() {
        let full = Self.llamaHeader(kvHeads: 8)
        for n in 0..<full.count {
            do {
                _ = try GGUFReader.parse(Array(full.prefix(n)))
                Issue.record("a \(n)-byte prefix parsed")
            } catch {
                #expect(!error.description.isEmpty)
            }
        }
    }

    @Test func badFilesAreNamed() {
        #expect(throws: GGUFError.self) { try GGUFReader.parse(Array("GGML0000".utf8)) }
        var w = GGUFWriter(version: 9)
        w.u32("x", 1)
        do { _ = try GGUFReader.parse(w.data); Issue.record("version 9 parsed") } catch { #expect(error.description.contains("version 9")) }
        // A string length beyond the limit or the data is refused, not allocated.
        var huge = GGUFWriter()
        huge.body += huge.le(UInt64.max, 8)
        huge.count = 1
        do { _ = try GGUFReader.parse(huge.data); Issue.record("parsed") } catch { #expect(error.description.contains("key of entry 0")) }
        var badType = GGUFWriter()
        badType.body += badType.str("k") + badType.le(77, 4)
        badType.count = 1
        do { _ = try GGUFReader.parse(badType.data); Issue.record("parsed") } catch { #expect(error.description.contains("unknown value type 77")) }
    }
}

@Suite struct GGUFFuzzTests {
    @Test func mutatedHeadersParseOrFailCleanly() {
        let base = GGUFTests.llamaHeader(kvHeads: 8)
        var rng = SplitMix64(seed: 12)
        var parsed = 0
        for _ in 0..<3000 {
            var b = base
            for _ in 0..<(1 + rng.below(4)) {
                b[rng.below(b.count)] = UInt8(truncatingIfNeeded: rng.next())
            }
            if let m = try? GGUFReader.parse(b) {
                parsed += 1
                // Whatever parsed is self-consistent: sizes are never negative.
                if let kv = m.kvBytesPerToken { #expect(kv > 0) }
            }
        }
        #expect(parsed > 0)  // most single-byte changes land in values and still parse
    }
}
