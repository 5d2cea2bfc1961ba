import Foundation
import Logging
import MeshCloud
import MeshCore
import MeshEngines
import MeshHTTPClient
import Synchronization
import Testing

/// The repository root (three levels above this file).
let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

/// The key the fake cloud expects, and one it rejects (for Bedrock: the secret access key).
let goodKey = "sk-fake-GOOD-4f1c9e"
let wrongKey = "sk-fake-WRONG-77ab02"
/// The AWS access key ID and region the fake cloud's Bedrock expects (its defaults).
let fakeAccessKeyID = "AKIDFAKECLOUD0000001"
let fakeRegion = "us-east-1"

/// A test setup failure.
struct SetupError: Error, CustomStringConvertible {
    var description: String
}

/// Runs `executable` to completion (bounded); returns its exit and output lines.
func runTool(_ executable: String, _ arguments: [String], timeout: Duration = .seconds(60)) async throws -> (ProcessExit?, [String]) {
    let lines = Mutex<[String]>([])
    let child = try await ChildProcess.spawn(executable: executable, arguments: arguments, onLine: { line, _ in
        lines.withLock { $0.append(line) }
    })
    let exit = await child.waitForExit(timeout: timeout)
    if exit == nil { child.signal(SIGKILL) }
    return (exit, lines.withLock { $0 })
}

/// The test CA and server certificate, made once per test process by `Tests/cloud/make-test-ca.sh`.
enum TestCA {
    static let directory = FileManager.default.temporaryDirectory.appendingPathComponent("meshd-cloud-tests-\(getpid())").path
    static var caFile: String { directory + "/ca.pem" }
    static var otherCAFile: String { directory + "/other-ca.pem" }

    private static let made = Mutex<Task<Void, any Error>?>(nil)

    /// Makes the CA (once) and returns its directory.
    static func make() async throws -> String {
        let task = made.withLock { t in
            if let t { return t }
            let new = Task<Void, any Error> {
                atexit { try? FileManager.default.removeItem(atPath: TestCA.directory) }
                let (exit, lines) = try await runTool("/bin/bash", [repoRoot + "/Tests/cloud/make-test-ca.sh", directory])
                guard exit == .exited(0) else {
                    throw SetupError(description: "make-test-ca.sh \(exit.map { "\($0)" } ?? "timed out"): \(lines.joined(separator: "\n"))")
                }
            }
            t = new
            return new
        }
        try await task.value
        return directory
    }
}

/// `Tests/cloud/fake_cloud.py` running as a child process over TLS with the test CA.
final class FakeCloud: Sendable {
    let process: ChildProcess
    let port: Int
    var baseURL: String { "https://127.0.0.1:\(port)" }

    private init(process: ChildProcess, port: Int) {
        self.process = process
        self.port = port
    }

    /// Starts the server (with `arguments` added) and waits (bounded) for its `LISTENING` line.
    static func start(slowDelay: Double = 0.2, arguments: [String] = []) async throws -> FakeCloud {
        let dir = try await TestCA.make()
        let (lines, continuation) = AsyncStream.makeStream(of: String.self)
        let stderr = Mutex<[String]>([])
        let child = try await ChildProcess.spawn(
            executable: "/usr/bin/env",
            arguments: ["python3", repoRoot + "/Tests/cloud/fake_cloud.py", "--cert", dir + "/server.pem", "--key", dir + "/server.key",
                        "--port", "0", "--api-key", goodKey, "--slow-delay", "\(slowDelay)"] + arguments,
            onLine: { line, isStderr in
                if isStderr { stderr.withLock { $0.append(line) } } else { continuation.yield(line) }
            },
            onExit: { _ in continuation.finish() })
        let port = await withTaskGroup(of: Int?.self) { group in
            group.addTask {
                for await line in lines where line.hasPrefix("LISTENING ") {
                    return line.split(separator: ":").last.flatMap { Int($0) }
                }
                return nil
            }
            group.addTask {
                try? await Task.sleep(for: .seconds(30))
                return nil
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first
        }
        guard let port else {
            child.signal(SIGKILL)
            _ = await child.waitForExit(timeout: .seconds(5))
            throw SetupError(description: "fake_cloud.py did not start: \(stderr.withLock { $0 }.joined(separator: "\n"))")
        }
        return FakeCloud(process: child, port: port)
    }

    /// Stops the server and waits for it.
    func stop() async {
        process.signal(SIGKILL)
        _ = await process.waitForExit(timeout: .seconds(5))
    }

    /// `GET /_stats`.
    func stats(_ http: CurlHTTPClient) async throws -> JSON {
        let (_, body) = try await http.execute(HTTPClientRequest(url: baseURL + "/_stats", caFile: TestCA.caFile))
        return try JSONParser.parse(body)
    }

    /// Provider settings for this server; `model` names the Azure deployment (the fake's failure
    /// injection reads it there); `aws` signs Bedrock requests.
    func provider(_ kind: ProviderKind, key: String = goodKey, caFile: String? = TestCA.caFile, model: String = "m",
                  aws: AWSAccount = AWSAccount(region: fakeRegion, accessKeyID: fakeAccessKeyID)) -> ProviderSettings {
        let base: String
        switch kind {
        case .openai: base = baseURL + "/v1"
        case .azure: base = baseURL + "/openai/deployments/" + model
        case .anthropic: base = baseURL + "/v1"
        case .gemini: base = baseURL + "/v1beta"
        case .groq: base = baseURL + "/openai/v1"
        case .bedrock: base = baseURL
        }
        return ProviderSettings(name: kind.rawValue, kind: kind, baseURL: base, secret: ProviderSecret(key: key), aws: kind == .bedrock ? aws : nil,
                                caFile: caFile)
    }
}

/// A log handler that keeps every line (message and metadata) for inspection.
final class CapturedLog: Sendable {
    private let lines = Mutex<[String]>([])

    var text: String { lines.withLock { $0.joined(separator: "\n") } }

    var logger: Logger {
        var logger = Logger(label: "cloud-test") { _ in Handler(sink: self) }
        logger.logLevel = .trace
        return logger
    }

    struct Handler: LogHandler {
        let sink: CapturedLog
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            let all = metadata.merging(event.metadata ?? [:]) { $1 }
            sink.lines.withLock { $0.append("\(event.level) \(event.message) \(all)") }
        }
    }
}

/// A wall clock tests can also move forward by hand: real time plus an offset.
final class TestClock: WallClock {
    private let offset = Mutex<UInt64>(0)

    func nowNanos() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec) + offset.withLock { $0 }
    }

    func advance(seconds: Double) { offset.withLock { $0 += UInt64(seconds * 1e9) } }
}

/// One fake cloud (started with `arguments` added), one HTTP client and one cloud client for
/// `body`; everything is stopped after.
func withCloud(slowDelay: Double = 0.2, arguments: [String] = [], _ body: (FakeCloud, CloudClient, CapturedLog, TestClock) async throws -> Void) async throws {
    let cloud = try await FakeCloud.start(slowDelay: slowDelay, arguments: arguments)
    let log = CapturedLog()
    let clock = TestClock()
    let http: CurlHTTPClient
    do {
        http = try CurlHTTPClient(configuration: HTTPClientConfiguration(connectTimeout: .seconds(5), firstByteTimeout: .seconds(20),
                                                                       idleTimeout: .seconds(20)))
    } catch {
        await cloud.stop()
        throw error
    }
    let client = CloudClient(http: http, clock: clock, logger: log.logger)
    do {
        try await body(cloud, client, log, clock)
    } catch {
        http.shutdown()
        await cloud.stop()
        throw error
    }
    http.shutdown()
    await cloud.stop()
}

/// A parsed client request built into `kind`'s dialect.
func engineRequest(_ kind: ProviderKind, model: String, stream: Bool, maxTokens: Int? = 3) throws -> EngineRequest {
    var body: JSON = ["model": .string(model), "messages": [["role": "system", "content": "be brief"], ["role": "user", "content": "say three words"]],
                      "stream": .bool(stream)]
    if let maxTokens { body = body.setting("max_tokens", .integer(maxTokens)) }
    let req = try RequestParser.parse(route: .openaiChat, json: body)
    return try ProviderRequestBuilder.build(req, kind: kind, model: model)
}

/// The content and usage carried by an OpenAI SSE stream, and whether it ended with `[DONE]`.
func parseOpenAISSE(_ bytes: [UInt8]) -> (content: String, usage: CloudUsage?, finish: String?, done: Bool) {
    var content = "", usage: CloudUsage?, finish: String?, done = false
    for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") where line.hasPrefix("data: ") {
        let payload = line.dropFirst(6)
        if payload == "[DONE]" { done = true; continue }
        guard let event = try? JSONParser.parse(String(payload)) else { continue }
        if let t = event["choices"]?[0]?["delta"]?["content"]?.stringValue { content += t }
        if let f = event["choices"]?[0]?["finish_reason"]?.stringValue { finish = f }
        if let u = CloudUsage(openAI: event["usage"]) { usage = u }
    }
    return (content, usage, finish, done)
}
