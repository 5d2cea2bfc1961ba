/// A prompt as a chain of hashes of fixed-size blocks: block `i`'s hash covers every byte up to
/// the end of block `i` (it is seeded with the hash before it), so two prompts share their first
/// `k` hashes exactly when they share their first `k` blocks, and a set of hashes answers "how
/// long a prefix of this prompt is held" without storing any text.
///
/// The bytes are meshd's own stable rendering of the request (``PromptRendering``), not the
/// engine's template: prefix relations carry over (a later turn of a chat starts with the earlier
/// turn's prompt and answer), and what the engine really reports corrects the rest.
public struct PromptChain: Sendable, Hashable {
    /// Bytes per block (about 16 tokens of English text).
    public static let blockBytes = 64

    /// Hash of each full block, in order.
    public private(set) var hashes: [UInt64]
    /// Bytes after the last full block (at most `blockBytes - 1`), kept to extend the chain.
    public private(set) var tail: [UInt8]
    /// All bytes hashed so far (full blocks and tail).
    public private(set) var byteCount: Int
    /// The seed: what the chain's first block is hashed after (the model's identity).
    public let seed: UInt64

    /// An empty chain for `model` (prompts of different models never share a block).
    public init(model: String) {
        seed = PromptHash.seed(model)
        hashes = []
        tail = []
        byteCount = 0
    }

    /// The chain of `bytes` for `model`.
    public init<C: Collection>(model: String, bytes: C) where C.Element == UInt8 {
        self.init(model: model)
        append(bytes)
    }

    /// The hash the next full block is chained to.
    var last: UInt64 { hashes.last ?? seed }

    /// Extends the chain with more bytes (the generated answer after the prompt).
    public mutating func append<C: Collection>(_ bytes: C) where C.Element == UInt8 {
        // Contiguous bytes (the usual case: a rendered prompt) are hashed a word at a time.
        if bytes.withContiguousStorageIfAvailable({ appendRaw(UnsafeRawBufferPointer($0)) }) != nil { return }
        appendGeneric(bytes)
    }

    private mutating func appendRaw(_ raw: UnsafeRawBufferPointer) {
        var i = 0
        if !tail.isEmpty {
            let take = min(Self.blockBytes - tail.count, raw.count)
            tail.append(contentsOf: raw[0..<take])
            byteCount += take
            i = take
            guard tail.count == Self.blockBytes else { return }
            hashes.append(PromptHash.block(last, tail))
            tail.removeAll(keepingCapacity: true)
        }
        let start = i
        let full = (raw.count - i) / Self.blockBytes
        if hashes.isEmpty { hashes.reserveCapacity(full) }
        var h = last
        for _ in 0..<full {
            h = PromptHash.fullBlock(h, raw, at: i)
            hashes.append(h)
            i += Self.blockBytes
        }
        tail.append(contentsOf: raw[i...])
        byteCount += raw.count - start
    }

    private mutating func appendGeneric<C: Collection>(_ bytes: C) where C.Element == UInt8 {
        byteCount += bytes.count
        var i = bytes.startIndex
        if !tail.isEmpty {
            while i != bytes.endIndex && tail.count < Self.blockBytes {
                tail.append(bytes[i])
                i = bytes.index(after: i)
            }
            guard tail.count == Self.blockBytes else { return }
            hashes.append(PromptHash.block(last, tail))
            tail.removeAll(keepingCapacity: true)
        }
        var block: [UInt8] = []
        block.reserveCapacity(Self.blockBytes)
        while i != bytes.endIndex {
            block.append(bytes[i])
            i = bytes.index(after: i)
            if block.count == Self.blockBytes {
                hashes.append(PromptHash.block(last, block))
                block.removeAll(keepingCapacity: true)
            }
        }
        tail = block
    }

    /// Drops blocks beyond the first `count` (what a slot keeps when its context is full).
    public mutating func truncate(toBlocks count: Int) {
        guard count < hashes.count else { return }
        hashes.removeLast(hashes.count - max(0, count))
        tail = []
        byteCount = hashes.count * Self.blockBytes
    }
}

/// The hash function of ``PromptChain``: stable across processes, builds and machines (unlike
/// Swift's `Hasher`), since peers compare the hashes they exchange.
public enum PromptHash {
    /// SplitMix64's finaliser: every input bit affects every output bit.
    @inline(__always) static func mix(_ x: UInt64) -> UInt64 {
        var z = x &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// ``block(_:_:)`` of the 64 bytes at `offset`, read as 8 little-endian words.
    @inline(__always) static func fullBlock(_ previous: UInt64, _ raw: UnsafeRawBufferPointer, at offset: Int) -> UInt64 {
        var h = previous
        for k in 0..<(PromptChain.blockBytes / 8) {
            h = mix(h ^ UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: offset + 8 * k, as: UInt64.self)))
        }
        return mix(h ^ UInt64(PromptChain.blockBytes))
    }

    /// Chains `previous` with one block's bytes, 8 bytes at a time (little-endian words; a short
    /// last word is zero-padded, and the length is mixed in so padding cannot collide).
    static func block<C: Collection>(_ previous: UInt64, _ bytes: C) -> UInt64 where C.Element == UInt8 {
        var h = previous
        var word: UInt64 = 0
        var shift: UInt64 = 0
        for b in bytes {
            word |= UInt64(b) << shift
            shift += 8
            if shift == 64 {
                h = mix(h ^ word)
                word = 0
                shift = 0
            }
        }
        if shift != 0 { h = mix(h ^ word) }
        return mix(h ^ UInt64(bytes.count))
    }

    /// The seed of a model's chains: its normalized name.
    public static func seed(_ model: String) -> UInt64 {
        block(0x6D65_7368_6421_0001, Array(ModelName.normalized(model).utf8))
    }
}

/// meshd's stable text form of a request's prompt, and of an answer appended to it.
///
/// Chat: each message as `0x1E role 0x1F content` (then `0x1A` and a hash of each image);
/// completion: `0x1D system 0x1C prompt`. The chat form of an answer is an assistant
/// message, so turn `n + 1`'s rendering starts with turn `n`'s prompt plus its answer.
public enum PromptRendering {
    /// The rendered prompt of a chat or completion request; nil for embeddings (no cache to use).
    public static func render(_ req: InferenceRequest) -> [UInt8]? {
        switch req.operation {
        case .embedding:
            return nil
        case .chat:
            var out: [UInt8] = []
            out.reserveCapacity(req.messages.reduce(16) { $0 + $1.content.utf8.count + $1.role.utf8.count + 2 })
            for m in req.messages { appendMessage(&out, role: m.role, content: m.content.utf8, images: m.images) }
            return out
        case .completion:
            var out: [UInt8] = [0x1D]
            out.reserveCapacity(req.prompt.utf8.count + (req.system?.utf8.count ?? 0) + 2)
            if let s = req.system { out.append(contentsOf: s.utf8) }
            out.append(0x1C)
            out.append(contentsOf: req.prompt.utf8)
            return out
        }
    }

    /// The bytes an answer (its text's UTF-8 bytes) adds after the prompt of a request of `operation`.
    public static func answer<C: Collection>(_ text: C, operation: APIOperation) -> [UInt8] where C.Element == UInt8 {
        guard operation == .chat else { return Array(text) }
        var out: [UInt8] = []
        appendMessage(&out, role: "assistant", content: text, images: [])
        return out
    }

    /// The chain of a request's prompt for `model` (the name the engine knows it by); nil for embeddings.
    public static func chain(_ req: InferenceRequest, model: String) -> PromptChain? {
        render(req).map { PromptChain(model: model, bytes: $0) }
    }

    static func appendMessage<C: Collection>(_ out: inout [UInt8], role: String, content: C, images: [String]) where C.Element == UInt8 {
        out.append(0x1E)
        out.append(contentsOf: role.utf8)
        out.append(0x1F)
        out.append(contentsOf: content)
        for image in images {
            // An image's identity without copying its megabytes into the rendering.
            out.append(0x1A)
            let h = PromptHash.block(0, image.utf8)
            for k in 0..<8 { out.append(UInt8(truncatingIfNeeded: h >> (8 * UInt64(k)))) }
        }
    }
}
