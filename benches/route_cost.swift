// Cost of one cache-aware routing decision (benches/route_cost.sh): 4 nodes, each engine's cache
// shadow holding 10,000 blocks, a 2,176-token prompt (~136 blocks) hashed and matched against
// all of them, then ranked. Built with -O from MeshCore's sources; prints JSON.
import MeshCore

@inline(never) func blackHole<T>(_ x: T) { withExtendedLifetime(x) {} }

func text(_ tag: String, _ n: Int) -> [UInt8] {
    var out: [UInt8] = []
    var i = 0
    while out.count < n {
        out.append(contentsOf: "\(tag) word \(i) ".utf8)
        i += 1
    }
    return Array(out.prefix(n))
}

let clock = ContinuousClock()
let blocksPerEngine = 10_000
var shadows: [CacheShadow] = []
for node in 0..<4 {
    var o = CacheShadow.Options()
    o.maxBlocks = blocksPerEngine
    var s = CacheShadow(slots: 8, options: o)
    for k in 0..<8 {
        // Each slot holds a long chat: its system prompt is the text tagged with the node and slot.
        let p = PromptChain(model: "m", bytes: [0x1E] + Array("system".utf8) + [0x1F] + text("n\(node)-s\(k)", 64 * (blocksPerEngine / 8) - 8))
        let (seq, pred) = s.begin(p, now: UInt64(k + 1))
        s.finish(sequence: seq, held: p, predictedBlocks: pred, promptBytes: p.byteCount, promptTokens: nil, cachedTokens: nil, now: UInt64(k + 1))
    }
    shadows.append(s)
}
// Node 2 holds the prompt's prefix: it was one of its slots' prompts.
let prefix = text("n2-s3", 64 * 128)
var body = "{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"\(String(decoding: prefix, as: UTF8.self))\"},"
body += "{\"role\":\"user\",\"content\":\"\(String(decoding: text("question", 512), as: UTF8.self))\"}]}"
let req = try RequestParser.parse(route: .openaiChat, body: Array(body.utf8))
let speeds = EngineSpeeds(prefillTokensPerSecond: 2000, decodeTokensPerSecond: 40, meanServiceSeconds: 4)
let nodes = (0..<4).map { i in
    RoutingNode(id: "n\(i)", isLocal: i == 0, hopSeconds: 0.001,
                engines: [EngineSnapshot(id: "e", kind: .openai, url: "http://127.0.0.1:1", healthy: true,
                                         models: [ModelInfo(name: "m", loaded: true)], load: EngineLoad(inFlight: i % 2, slots: 8), speeds: speeds)])
}

func decide() -> RouteDecision {
    let chain = PromptRendering.chain(req, model: req.model)!
    var context = RoutingContext(policy: .cacheAware)
    context.cached = { n, _ in
        let s = shadows[Int(n.id.dropFirst())!]
        let m = s.match(chain)
        return m.anyBlocks > 0 ? CacheEstimate(tokens: s.tokens(m) * s.accuracy, slot: m.slot) : nil
    }
    context.held = { n, _ in shadows[Int(n.id.dropFirst())!].deviceBlockCount }
    return try! Router.choose(model: req.model, operation: req.operation, promptTokens: req.estimatedPromptTokens,
                              maxTokens: 256, nodes: nodes, context: context).get()
}

let check = decide()
precondition(check.nodeID == "n2" && check.cachedTokens > 1500, "the prefix's node should win: \(check)")
// Hashing alone, for the split of the cost.
func hashOnly() -> Int { PromptRendering.chain(req, model: req.model)!.hashes.count }
for _ in 0..<2000 { blackHole(decide()) }
var samples: [Double] = []
var hashSamples: [Double] = []
for _ in 0..<15 {
    let n = 2000
    var t0 = clock.now
    for _ in 0..<n { blackHole(decide()) }
    samples.append(Double((clock.now - t0).components.attoseconds) / 1e12 / Double(n) + Double((clock.now - t0).components.seconds) * 1e6 / Double(n))
    t0 = clock.now
    for _ in 0..<n { blackHole(hashOnly()) }
    hashSamples.append(Double((clock.now - t0).components.attoseconds) / 1e12 / Double(n) + Double((clock.now - t0).components.seconds) * 1e6 / Double(n))
}
samples.sort()
hashSamples.sort()
print("{\"blocks_per_engine\": \(shadows[0].deviceBlockCount), \"engines\": 4, \"prompt_blocks\": \(PromptRendering.chain(req, model: req.model)!.hashes.count), "
      + "\"decision_us_median\": \(samples[samples.count / 2]), \"decision_us_min\": \(samples[0]), "
      + "\"hashing_us_median\": \(hashSamples[hashSamples.count / 2]), \"winner\": \"\(check.nodeID ?? "")\", \"cached_tokens\": \(check.cachedTokens)}")
