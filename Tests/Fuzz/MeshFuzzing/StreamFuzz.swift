import MeshCore

/// Streamed answers: a cloud provider's stream through `ProviderStreamAdapter`, or a local
/// engine's stream, into `StreamTranslator` for the client's dialect, fed in chunks.
///
/// Layout: byte 0 picks the source (``sources``), byte 1 the client route (low 2 bits, among the
/// routes that can ask that source), whether usage is asked for (bit 2), whether the answer is
/// kept (bit 3) and the chunk size (high 4 bits, ``chunkSizes``); the stream's bytes follow.
enum StreamFuzz {
    enum Source {
        case provider(ProviderKind)
        case engine(InferenceRoute)
    }

    static let sources: [Source] = [
        .provider(.anthropic), .provider(.gemini), .provider(.bedrock), .provider(.openai),
        .engine(.openaiChat), .engine(.ollamaChat), .engine(.openaiCompletion), .engine(.ollamaGenerate),
    ]
    static let chunkSizes = [1, 2, 3, 5, 8, 13, 31, 64, 100, 256, 1000, 4096, 65536, 7, 17, 1 << 30]

    /// The engine route the translator reads, and the client routes that can be answered from it.
    static func routes(_ source: Source) -> (engine: InferenceRoute, clients: [InferenceRoute]) {
        switch source {
        case .provider: return (.openaiChat, [.openaiChat, .ollamaChat, .ollamaGenerate])
        case .engine(.openaiChat): return (.openaiChat, [.openaiChat, .ollamaChat, .ollamaGenerate])
        case .engine(.ollamaChat): return (.ollamaChat, [.openaiChat, .ollamaChat])
        case .engine(let r): return (r, [.openaiCompletion, .ollamaGenerate])
        }
    }

    static func run(_ bytes: [UInt8]) {
        guard bytes.count >= 2 else { return }
        let source = sources[Int(bytes[0]) % sources.count]
        let (engineRoute, clients) = routes(source)
        let client = clients[Int(bytes[1] & 3) % clients.count]
        let chunk = chunkSizes[Int(bytes[1] >> 4)]
        let body = bytes[2...]

        var adapter: ProviderStreamAdapter?
        if case .provider(let kind) = source {
            adapter = ProviderStreamAdapter(kind: kind, model: "fuzz-model", id: "chatcmpl-fuzz", created: 1)
        }
        let context = ResponseContext(clientRoute: client, engineRoute: engineRoute, clientModel: "fuzz-model",
                                      includeUsage: bytes[1] & 4 != 0, id: "chatcmpl-fuzz", startNanos: 1)
        var translator = StreamTranslator(context: context, collectsAnswer: bytes[1] & 8 != 0)
        var adapted: [UInt8] = []
        var out: [UInt8] = []
        var now: UInt64 = 2
        var failed = false
        var i = body.startIndex
        while i < body.endIndex && !failed {
            let piece = Array(body[i..<min(body.endIndex, i + chunk)])
            i += piece.count
            now += 1_000
            do throws(APIError) {
                var engineBytes = piece
                if adapter != nil {
                    engineBytes = try adapter!.feed(piece)
                    adapted += engineBytes
                }
                out += try translator.feed(engineBytes, nowNanos: now)
            } catch {
                out += translator.fail(message: error.message, nowNanos: now)
                failed = true
            }
        }
        if !failed {
            if adapter != nil {
                let tail = adapter!.finish()
                adapted += tail
                do throws(APIError) { out += try translator.feed(tail, nowNanos: now) } catch {
                    out += translator.fail(message: error.message, nowNanos: now)
                }
            }
            out += translator.finish(nowNanos: now + 1)
        }
        _ = translator.usage
        invariant(translator.finished, "the translator did not finish")
        invariant(translator.answer.count <= StreamTranslator.answerCap + 4 * 1024 * 1024, "the kept answer is unbounded")
        if let adapter, adapter.kind != .openai, adapter.kind != .azure, adapter.kind != .groq {
            checkEvents(adapted, dialect: .openai, what: "\(adapter.kind) adapter output")
        }
        checkEvents(out, dialect: client.dialect, what: "\(source) → \(client.rawValue) client stream")
    }

    /// What a client is sent must be well-formed events of its dialect: `data: JSON` or
    /// `data: [DONE]` SSE events for OpenAI, one JSON object a line for Ollama.
    static func checkEvents(_ bytes: [UInt8], dialect: Dialect, what: String) {
        for line in bytes.split(separator: 0x0A, omittingEmptySubsequences: true) {
            switch dialect {
            case .openai:
                invariant(line.starts(with: Array("data: ".utf8)), "\(what): a line that is not a data field: \(String(decoding: line.prefix(200), as: UTF8.self))")
                let payload = line.dropFirst(6)
                if payload.elementsEqual(Array("[DONE]".utf8)) { continue }
                invariant((try? JSONParser.parse(payload)) != nil, "\(what): an event that is not JSON: \(String(decoding: payload.prefix(200), as: UTF8.self))")
            case .ollama:
                invariant((try? JSONParser.parse(line)) != nil, "\(what): a line that is not JSON: \(String(decoding: line.prefix(200), as: UTF8.self))")
            }
        }
    }
}
