// meshd-sim-engine: a simulated LLM inference engine speaking the Ollama and OpenAI HTTP APIs
// (plus llama-server / vLLM style extras) with deterministic output, timing, slots and failure injection.
// With --cache on it models llama-server's prompt cache (PromptCache.swift): slots keep their context, a
// request prefills only its uncached tokens, and GET /sim/cache, POST /sim/cache/match show what is cached.
// --cache-ram-tokens N adds llama-server's host-RAM prompt cache (--cache-ram): contexts a slot is about to lose, and
// idle slots' contexts, are kept in RAM and restored into a slot (at --cache-ram-restore-tps) when a prompt matches them.
import ArgumentParser
import NIOCore
import NIOHTTP1
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

struct SimEngineCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "meshd-sim-engine",
        abstract: "Simulated inference engine (Ollama + OpenAI APIs) for deterministic scheduling tests and benchmarks.")

    @Option(help: "Address to bind.") var host = "127.0.0.1"
    @Option(help: "Port to bind (0 = pick a free one).") var port = 0
    @Option(help: "Comma-separated model names served.") var models = "sim-small,sim-large"
    @Option(help: "Comma-separated models reported as loaded at start (default: the first model; \"\" for none).")
    var loaded: String?
    @Option(help: "Prompt processing speed in tokens/s (0 = instant).") var promptTps: Double = 5000
    @Option(help: "Generation speed in tokens/s (0 = as fast as possible).") var genTps: Double = 500
    @Option(help: "Requests generating in parallel.") var slots = 4
    @Option(help: "Maximum waiting requests before answering 503.") var queue = 64
    @Option(help: "Extra latency before the first token, in ms.") var latencyMs: Double = 0
    @Option(help: "Tokens generated when the request sets no limit.") var maxTokens = 16
    @Option(help: "Injected failure: none, refuse, hang, die-mid-stream.") var fail: FailMode = .none
    @Option(help: "Chunks sent before die-mid-stream drops the connection.") var failAfterTokens = 3
    @Option(help: "Fraction of requests that fail (deterministic: 0.5 = every second one).") var failRate: Double = 1.0
    @Option(help: "Embedding vector length.") var embeddingDim = 8
    @Option(help: "Extra first-token delay in ms when a request needs a model that is not loaded.") var loadMs: Double = 0
    @Option(help: "Context length reported by /api/show, /api/ps, /props, /slots; also each slot's cache size in tokens.")
    var contextLength = 4096
    @Option(help: ArgumentHelp(
        "Prompt-cache model: legacy, on, off.",
        discussion: "legacy (default): prompt tokens are words, slots keep no context, every request prefills its whole "
            + "prompt. on: prompt tokens are 4-byte chunks of the rendered prompt, each slot keeps its last prompt + "
            + "output and a request prefills only what follows the prefix it shares with its slot (like llama-server). "
            + "off: tokens and slots as with on, but nothing is reused."))
    var cache: CacheMode = .legacy
    @Flag(help: "Same as --cache off: count tokens like --cache on but reuse nothing (for comparisons).")
    var noCache = false
    @Option(help: ArgumentHelp("With --cache on/off: take the idle slot sharing the longest prefix when it is at least "
                               + "this fraction of the prompt, else the least recently used idle slot (0 = LRU only)."))
    var slotPromptSimilarity: Double = 0.1
    @Option(help: ArgumentHelp(
        "With --cache on: host-RAM prompt cache size in tokens, like llama-server's --cache-ram (0 = off).",
        discussion: "When a request takes a slot by LRU (or one that keeps under half of its context), the slot's "
            + "context is saved to RAM and the saved context that best matches the prompt is restored into the slot; "
            + "after each launch every other idle slot's context is copied to RAM too. Oldest entries are evicted first."))
    var cacheRamTokens = 0
    @Option(help: "Tokens/s at which a prompt state is restored from the RAM cache (0 = 20 x --prompt-tps).")
    var cacheRamRestoreTps: Double = 0
    @Option(help: "Event loop threads.") var threads = 1
    @Option(help: "Write the bound port number to this file.") var portFile: String?

    func validate() throws {
        guard slots >= 1 else { throw ValidationError("--slots must be >= 1") }
        guard queue >= 0 else { throw ValidationError("--queue must be >= 0") }
        guard threads >= 1 else { throw ValidationError("--threads must be >= 1") }
        guard embeddingDim >= 1 else { throw ValidationError("--embedding-dim must be >= 1") }
        guard promptTps >= 0, genTps >= 0, latencyMs >= 0, loadMs >= 0 else {
            throw ValidationError("rates and latencies must be >= 0")
        }
        guard (0...1).contains(failRate) else { throw ValidationError("--fail-rate must be in 0...1") }
        guard maxTokens >= 0, failAfterTokens >= 0 else { throw ValidationError("token counts must be >= 0") }
        guard !modelList.isEmpty else { throw ValidationError("--models must name at least one model") }
        guard (0...1).contains(slotPromptSimilarity) else {
            throw ValidationError("--slot-prompt-similarity must be in 0...1")
        }
        guard !noCache || cache != .on else { throw ValidationError("--no-cache contradicts --cache on") }
        guard contextLength >= 1 else { throw ValidationError("--context-length must be >= 1") }
        guard cacheRamTokens >= 0 else { throw ValidationError("--cache-ram-tokens must be >= 0") }
        guard cacheRamRestoreTps >= 0 else { throw ValidationError("--cache-ram-restore-tps must be >= 0") }
    }

    private var modelList: [String] {
        models.split(separator: ",").map { $0.trimmingCharacters() }.filter { !$0.isEmpty }
    }

    func run() throws {
        signal(SIGPIPE, SIG_IGN)
        let names = modelList
        var loadedNames: [String]
        if let loaded {
            loadedNames = loaded.split(separator: ",").map { $0.trimmingCharacters() }.filter { !$0.isEmpty }
        } else {
            loadedNames = [names[0]]
        }
        let infos = names.map(makeModelInfo)
        loadedNames = loadedNames.compactMap { n in
            infos.first { $0.name == n || $0.name == n + ":latest" || $0.name + ":latest" == n }?.name
        }
        let settings = Settings(fail: fail, failRate: failRate, failAfterTokens: failAfterTokens, latencyMs: latencyMs,
                                promptTps: promptTps, genTps: genTps, maxTokens: maxTokens, loadMs: loadMs,
                                cache: noCache ? .off : cache, slotPromptSimilarity: slotPromptSimilarity,
                                cacheRamTokens: cacheRamTokens, cacheRamRestoreTps: cacheRamRestoreTps)
        let engine = Engine(models: infos, loaded: loadedNames, slots: slots, queue: queue, embeddingDim: embeddingDim,
                            contextLength: contextLength, settings: settings)

        let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.maxMessagesPerRead, value: 16)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(HTTPHandler(engine: engine))
                }
            }
        let server = try bootstrap.bind(host: host, port: port).wait()
        let boundPort = server.localAddress?.port ?? port
        print("LISTENING \(host):\(boundPort)")
        fflush(nil)
        if let portFile {
            try writeFileAtomically(portFile, "\(boundPort)\n")
        }
        try server.closeFuture.wait()
        try group.syncShutdownGracefully()
    }
}

struct FileWriteError: Error, CustomStringConvertible {
    let path: String
    var description: String { "cannot write \(path)" }
}

func writeFileAtomically(_ path: String, _ contents: String) throws {
    let tmp = path + ".tmp.\(getpid())"
    let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    guard fd >= 0 else { throw FileWriteError(path: tmp) }
    let bytes = Array(contents.utf8)
    let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    close(fd)
    guard n == bytes.count, rename(tmp, path) == 0 else { throw FileWriteError(path: path) }
}

extension Substring {
    func trimmingCharacters() -> String {
        String(self.drop { $0 == " " || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\t" }.reversed())
    }
}

SimEngineCommand.main()
