#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import Logging
import MeshCore
import MeshHTTPClient
@testable import MeshEngines

/// Repository root (this file is Tests/MeshEnginesTests/TestSupport.swift).
let packageRoot: String = {
    var url = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { url.deleteLastPathComponent() }
    return url.path
}()

struct TestSetupError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

let testLogger: Logger = {
    var l = Logger(label: "meshd.engines.tests")
    l.logLevel = ProcessInfo.processInfo.environment["MESHD_TEST_LOG"] != nil ? .debug : .critical
    return l
}()

func makeClient() throws -> CurlHTTPClient {
    try CurlHTTPClient(configuration: HTTPClientConfiguration(connectTimeout: .seconds(1), firstByteTimeout: .seconds(5), idleTimeout: .seconds(5)))
}

/// Polls `condition` every 50 ms until it holds or `timeout` passes; returns whether it held.
func eventually(timeout: Duration, _ condition: () async -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if await condition() { return true }
        try? await Task.sleep(for: .milliseconds(50))
    }
    return await condition()
}

func processExists(_ pid: pid_t) -> Bool {
    // A zombie still "exists" for kill(0); look at /proc state too.
    guard kill(pid, 0) == 0 else { return false }
    if let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
       let close = stat.lastIndex(of: ")") {
        let rest = stat[stat.index(after: close)...].trimmingCharacters(in: .whitespaces)
        if rest.hasPrefix("Z") || rest.hasPrefix("X") { return false }
    }
    return true
}

/// The meshd-sim-engine binary: `$MESHD_SIM_ENGINE`, else `.build/debug` or `.build/release`.
func simEngineBinary() throws -> String {
    if let p = ProcessInfo.processInfo.environment["MESHD_SIM_ENGINE"], !p.isEmpty { return p }
    for config in ["debug", "release"] {
        let p = "\(packageRoot)/.build/\(config)/meshd-sim-engine"
        if access(p, X_OK) == 0 { return p }
    }
    throw TestSetupError("meshd-sim-engine not found in \(packageRoot)/.build/{debug,release}; run `swift build --product meshd-sim-engine` first (or set MESHD_SIM_ENGINE)")
}

/// A meshd-sim-engine subprocess.
final class SimEngine: @unchecked Sendable {
    let process: Process
    let port: Int
    var url: String { "http://127.0.0.1:\(port)" }

    /// Starts the engine on `port` (0 = any) and waits until it has written its port file.
    init(port: Int = 0, models: String = "sim-small,sim-large", loaded: String? = "sim-small", extra: [String] = []) async throws {
        let bin = try simEngineBinary()
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("meshd-engines-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let portFile = dir.appendingPathComponent("port").path
        var lastError = ""
        for _ in 0..<40 {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: bin)
            var args = ["--port", "\(port)", "--port-file", portFile, "--models", models]
            if let loaded { args += ["--loaded", loaded] }
            p.arguments = args + extra
            p.standardOutput = FileHandle.nullDevice
            let err = Pipe()
            p.standardError = err
            try p.run()
            let deadline = Date().addingTimeInterval(10)
            while Date() < deadline {
                if let text = try? String(contentsOfFile: portFile, encoding: .utf8),
                   let n = Int(text.trimmingCharacters(in: .whitespacesAndNewlines)) {
                    self.process = p
                    self.port = n
                    try? FileManager.default.removeItem(at: dir)
                    return
                }
                if !p.isRunning { break }
                // Polls without holding a thread of the test pool (two on a 2-core machine).
                try await Task.sleep(for: .milliseconds(20))
            }
            if p.isRunning { p.terminate() }
            p.waitUntilExit()
            lastError = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            // The port may still be held briefly after a kill: retry.
            try await Task.sleep(for: .milliseconds(100))
        }
        throw TestSetupError("meshd-sim-engine did not start: \(lastError)")
    }

    func kill9() {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }

    deinit {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }
}

/// A transport that answers from a table and records the paths it was asked for.
final class FakeTransport: EngineHTTPTransport, @unchecked Sendable {
    private let lock = NSLock()
    private var routes: [String: (Int, String)] = [:]
    private var calls: [(String, [(String, String)])] = []
    var refuse = false
    /// Paths that time out (no response head within the timeout).
    var slow: Set<String> = []

    func set(_ path: String, _ status: Int, _ body: String) {
        lock.withLock { routes[path] = (status, body) }
    }

    func remove(_ path: String) { _ = lock.withLock { routes.removeValue(forKey: path) } }

    var paths: [String] { lock.withLock { calls.map(\.0) } }
    var lastHeaders: [(String, String)] { lock.withLock { calls.last?.1 ?? [] } }
    func reset() { lock.withLock { calls = [] } }

    func get(_ url: String, headers: [(String, String)], timeout: Duration) async throws -> (status: Int, body: [UInt8]) {
        guard let r = url.range(of: "://") else { throw TestSetupError("bad url") }
        let rest = url[r.upperBound...]
        let path = rest.firstIndex(of: "/").map { String(rest[$0...]) } ?? "/"
        let (route, refused, timedOut): ((Int, String)?, Bool, Bool) = lock.withLock {
            calls.append((path, headers))
            return (routes[path], refuse, slow.contains(path))
        }
        if refused { throw HTTPClientError.connectFailed("Connection refused") }
        if timedOut { throw HTTPClientError.firstByteTimeout }
        guard let route else { return (404, Array("not found".utf8)) }
        return (route.0, Array(route.1.utf8))
    }
}

/// An adapter whose next snapshot is set by the test.
final class ScriptedAdapter: EngineAdapter, @unchecked Sendable {
    let id: String
    let kind: EngineKind = .openai
    let baseURL = "http://127.0.0.1:1"
    private let lock = NSLock()
    private var healthy = true
    private var models: [String] = ["m1"]
    private var slots: Int?
    private var slotReport: SlotReport?
    private var duringRefresh: (@Sendable () -> Void)?
    private var timedOut = false
    private(set) var refreshes = 0

    init(id: String, slots: Int? = nil) {
        self.id = id
        self.slots = slots
    }

    func set(slots: Int?) { lock.withLock { self.slots = slots } }

    /// Whether the next polls time out (no answer within the poll's timeout), as a busy or a hung engine's do.
    func set(timedOut: Bool) { lock.withLock { self.timedOut = timedOut } }

    /// The slot report the next polls return.
    func set(slotReport: SlotReport?) { lock.withLock { self.slotReport = slotReport } }

    /// Runs while the next polls are under way (a request starting or ending mid-poll).
    func set(duringRefresh: (@Sendable () -> Void)?) { lock.withLock { self.duringRefresh = duringRefresh } }

    func set(healthy: Bool, models: [String]? = nil) {
        lock.withLock {
            self.healthy = healthy
            if let models { self.models = models }
        }
    }

    func refresh() async -> EngineSnapshot {
        lock.withLock { duringRefresh }?()
        return lock.withLock {
            refreshes += 1
            var snap = EngineSnapshot(id: id, kind: kind, url: baseURL, healthy: healthy,
                                      healthDetail: healthy ? nil : "scripted down",
                                      models: healthy ? models.map { ModelInfo(name: $0, loaded: true) } : [],
                                      load: EngineLoad(slots: slots))
            snap.slotReport = slotReport
            if timedOut {
                snap = EngineSnapshot(id: id, kind: kind, url: baseURL, healthy: false,
                                      healthDetail: "GET /v1/models: timed out waiting for the response head")
                snap.pollTimedOut = true
            }
            return snap
        }
    }
}
