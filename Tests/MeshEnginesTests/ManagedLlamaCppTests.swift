#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MeshCore
import MeshHTTPClient
import Testing
@testable import MeshEngines

/// The real llama-server and tiny model: `$LLAMA_BIN_DIR/llama-server` and `$TINY_GGUF`, else the
/// meshd cache. Missing files fail the test with instructions (CI builds them first).
func llamaFixtures() throws -> (binary: String, model: String) {
    let env = ProcessInfo.processInfo.environment
    let cache = ManagedLlamaCppEngine.cacheDirectory
    let binDir = env["LLAMA_BIN_DIR"].flatMap { $0.isEmpty ? nil : $0 } ?? "\(cache)/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin"
    let binary = "\(binDir)/llama-server"
    let model = env["TINY_GGUF"].flatMap { $0.isEmpty ? nil : $0 } ?? "\(cache)/models/meshd-tiny.gguf"
    guard access(binary, X_OK) == 0 else {
        throw TestSetupError("llama-server not found at \(binary): build it with tools/build-llama.sh or set LLAMA_BIN_DIR")
    }
    guard access(model, R_OK) == 0 else {
        throw TestSetupError("tiny model not found at \(model): make it with tools/make-tiny-model.sh or set TINY_GGUF")
    }
    return (binary, model)
}

@Suite(.serialized, .timeLimit(.minutes(1))) struct ManagedLlamaCppTests {
    @Test func crashingBinaryIsUnhealthyAndBacksOff() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("meshd-managed-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let script = dir.appendingPathComponent("fake-llama-server").path
        try "#!/bin/sh\necho \"starting with $*\"\necho \"error: failed to load model\" >&2\nexit 1\n"
            .write(toFile: script, atomically: true, encoding: .utf8)
        chmod(script, 0o755)
        let model = dir.appendingPathComponent("fake.gguf").path
        try "x".write(toFile: model, atomically: true, encoding: .utf8)

        var opts = ManagedEngineOptions()
        opts.initialBackoff = .milliseconds(50)
        opts.maxBackoff = .milliseconds(400)
        let client = try makeClient()
        defer { client.shutdown() }
        let e = ManagedLlamaCppEngine(config: EngineConfig(kind: .llamaCpp, model: model, alias: "fake", args: ["-c", "64"], binary: script),
                                      transport: client, logger: testLogger, options: opts)
        #expect(e.id == "llama.cpp:fake" && e.kind == .llamaCpp)
        #expect(e.status.phase == .idle)
        await e.start()
        var delays: [Duration] = []
        // Generous: a CI run spawning processes under the whole parallel suite saw three restarts in 10 s.
        let grew = await eventually(timeout: .seconds(30)) {
            let s = e.status
            if s.phase == .restarting, let d = s.nextRestartDelay, delays.last != d { delays.append(d) }
            return delays.count >= 4
        }
        #expect(grew, "restart delays seen: \(delays)")
        #expect(Array(delays.prefix(4)) == [.milliseconds(50), .milliseconds(100), .milliseconds(200), .milliseconds(400)])
        // Read while it waits to restart (at 400 ms, the longest wait), not while it starts again.
        _ = await eventually(timeout: .seconds(10)) { e.status.phase == .restarting }
        let snap = await e.refresh()
        #expect(!snap.healthy)
        let detail = snap.healthDetail ?? ""
        #expect(detail.contains("llama-server exited with status 1; restarting in"), "\(detail)")
        #expect(detail.contains("error: failed to load model"), "\(detail)")
        #expect(e.status.lastExit == .exited(1))
        #expect(e.status.launches >= 4)
        let out = e.recentOutput()
        #expect(out.contains { $0.hasPrefix("starting with -m \(model) --host 127.0.0.1 --port ") && $0.hasSuffix("--alias fake -c 64") }, "\(out.suffix(4))")
        #expect(out.contains("[stderr] error: failed to load model"))
        await e.stop()
        #expect(e.status.phase == .stopped)
        let launches = e.status.launches
        try await Task.sleep(for: .milliseconds(300))
        #expect(e.status.launches == launches)
    }

    @Test func missingBinaryOrModelIsReported() async throws {
        var opts = ManagedEngineOptions()
        opts.initialBackoff = .milliseconds(20)
        let client = try makeClient()
        defer { client.shutdown() }
        let noModel = ManagedLlamaCppEngine(config: EngineConfig(kind: .llamaCpp, model: "/nonexistent/m.gguf", binary: "/bin/true"),
                                            transport: client, logger: testLogger, options: opts)
        #expect(noModel.id == "llama.cpp:m")
        await noModel.start()
        #expect(await eventually(timeout: .seconds(5)) { noModel.status.phase == .restarting })
        #expect(await noModel.refresh().healthDetail?.hasPrefix("model file /nonexistent/m.gguf not found or not readable; restarting in") == true)
        await noModel.stop()

        let noBinary = ManagedLlamaCppEngine(config: EngineConfig(kind: .llamaCpp, model: "/etc/hostname", binary: "/nonexistent/llama-server"),
                                             transport: client, logger: testLogger, options: opts)
        await noBinary.start()
        #expect(await eventually(timeout: .seconds(5)) { noBinary.status.phase == .restarting })
        #expect(noBinary.status.detail?.contains("/nonexistent/llama-server not found or not executable") == true)
        await noBinary.stop()
        #expect(ManagedLlamaCppEngine.resolveBinary("sh").map { $0.hasSuffix("/sh") } == .success(true))
    }

    @Test func realLlamaServerStartsRestartsAndStops() async throws {
        let (binary, model) = try llamaFixtures()
        let client = try makeClient()
        defer { client.shutdown() }
        var opts = ManagedEngineOptions()
        opts.initialBackoff = .milliseconds(200)
        opts.startupTimeout = .seconds(30)
        let e = ManagedLlamaCppEngine(
            config: EngineConfig(kind: .llamaCpp, model: model, alias: "meshd-tiny", args: ["-c", "256", "-t", "1", "--parallel", "2"], binary: binary),
            transport: client, logger: testLogger, options: opts)
        await e.start()
        #expect(await eventually(timeout: .seconds(30)) { e.status.phase == .running }, "\(e.status) \(e.recentOutput().suffix(5))")
        let s = await e.refresh()
        #expect(s.healthy, "\(s.healthDetail ?? "")")
        #expect(s.id == "llama.cpp:meshd-tiny" && s.kind == .llamaCpp)
        #expect(s.url == "http://127.0.0.1:\(e.status.port ?? 0)")
        #expect(s.models.map(\.name) == ["meshd-tiny"])
        #expect(s.models.first?.contextLength == 256)
        // What llama-server does not say comes from the GGUF file.
        #expect(s.models.first?.family == "llama")
        // llama-server reports its tensors' size itself; at most the file's.
        let fileSize = try #require((try FileManager.default.attributesOfItem(atPath: model)[.size] as? NSNumber)?.int64Value)
        #expect((s.models.first?.sizeBytes ?? 0) > 0 && (s.models.first?.sizeBytes ?? .max) <= fileSize)
        #expect(s.load.slots == 2 && s.load.running == 0)
        let pid1 = try #require(e.status.pid)

        kill(pid1, SIGKILL)
        #expect(await eventually(timeout: .seconds(5)) { !(await e.refresh().healthy) })
        #expect(await eventually(timeout: .seconds(30)) { e.status.phase == .running && e.status.pid != pid1 }, "\(e.status)")
        #expect(e.status.launches == 2)
        #expect(e.status.lastExit == .signaled(SIGKILL))
        #expect(await e.refresh().healthy)
        let pid2 = try #require(e.status.pid)

        await e.stop()
        #expect(!processExists(pid1) && !processExists(pid2))
        #expect(e.status.phase == .stopped && e.status.pid == nil)
        #expect(await e.refresh().healthy == false)
    }

    @Test func registryRunsAndShutsDownManagedEngine() async throws {
        let (binary, model) = try llamaFixtures()
        let client = try makeClient()
        defer { client.shutdown() }
        let reg = EngineRegistry(engines: [EngineConfig(kind: .llamaCpp, model: model, args: ["-c", "256", "-t", "1"], binary: binary)],
                                 httpClient: client, logger: testLogger, pollInterval: .milliseconds(200))
        await reg.start()
        #expect(reg.snapshot().map(\.id) == ["llama.cpp:meshd-tiny"])
        var changes = reg.changes().makeAsyncIterator()
        let up = await next(&changes) { $0.first?.healthy == true }
        #expect(up?.first?.models.map(\.name) == ["meshd-tiny"])
        let managed = try #require(reg.adapter("llama.cpp:meshd-tiny") as? ManagedLlamaCppEngine)
        let pid = try #require(managed.status.pid)
        await reg.shutdown()
        #expect(!processExists(pid))
    }
}
