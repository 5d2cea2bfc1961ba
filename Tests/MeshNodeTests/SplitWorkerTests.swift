import Foundation
import Logging
import MeshCore
import MeshEngines
import Synchronization
import Testing
@testable import MeshNode

/// The worker side of splits over the real `ggml-rpc-server` (built by tools/build-llama.sh next to
/// llama-server), with a manual clock for lease time.
@Suite(.timeLimit(.minutes(1))) struct SplitWorkerTests {
    static func rpcBinary() throws -> String {
        let env = ProcessInfo.processInfo.environment
        let dir = env["LLAMA_BIN_DIR"].flatMap { $0.isEmpty ? nil : $0 }
            ?? ManagedLlamaCppEngine.cacheDirectory + "/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin"
        let p = dir + "/ggml-rpc-server"
        guard FileManager.default.isExecutableFile(atPath: p) else {
            throw RPCServerError("ggml-rpc-server not found at \(p): build it with tools/build-llama.sh or set LLAMA_BIN_DIR")
        }
        return p
    }

    let advert = LlamaAdvert(build: "b1-abc1234", rpcServer: true)

    func worker(_ clock: ManualClock, binary: String?, offer: Int64 = 1 << 30, enabled: Bool = true,
                sleep: @escaping Sleeper = { try? await Task.sleep(for: $0) }) -> (SplitWorker, String) {
        var settings = SplitSettings()
        settings.enabled = enabled
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("meshd-split-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
        let w = SplitWorker(settings: settings, clock: clock, llama: { [advert] in advert }, offerBytes: { offer },
                            rpcBinary: { binary }, cacheDirectory: dir + "/rpc-cache", logger: nodeTestLogger,
                            sleep: sleep)
        return (w, dir)
    }

    func request(_ split: String = "s1", build: String = "b1-abc1234", ttl: Int = 5) -> LeaseRequest {
        LeaseRequest(split: split, head: "A", model: "big", bytes: 100 << 20, build: build, ttlSeconds: ttl)
    }

    @Test func aLeaseRunsAnRPCServerOnLoopbackUntilItExpires() async throws {
        let clock = ManualClock()
        let (w, dir) = worker(clock, binary: try Self.rpcBinary())
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let g = try await w.lease(request()).get()
        #expect(RPCServerProcess.canConnect(port: g.port))
        #expect(FileManager.default.fileExists(atPath: dir + "/rpc-cache"))
        #expect(w.statusJSON()["leases"]?[0]?["state"]?.stringValue == "serving")
        // Asking again is a renewal of the same server.
        clock.advance(seconds: 3)
        #expect(try await w.lease(request()).get().port == g.port)
        #expect(try w.renew(split: "s1").get().lease.expiresNanos == clock.nowNanos() + 5_000_000_000)
        // Not renewed for its ttl: the lease ends and so does the server.
        clock.advance(seconds: 4.9)
        await w.sweep()
        #expect(RPCServerProcess.canConnect(port: g.port))
        clock.advance(seconds: 0.2)
        await w.sweep()
        #expect(!RPCServerProcess.canConnect(port: g.port))
        #expect(w.statusJSON()["leases"]?.arrayValue?.isEmpty == true)
        #expect((try? w.renew(split: "s1").get()) == nil)
    }

    @Test func releaseStopsTheServerAndRefusalsNameTheProblem() async throws {
        let clock = ManualClock()
        let (w, dir) = worker(clock, binary: try Self.rpcBinary())
        defer { try? FileManager.default.removeItem(atPath: dir) }
        guard case .failure(let mismatch) = await w.lease(request(build: "b9-fffffff")) else { Issue.record("granted"); return }
        #expect(mismatch.code == .buildMismatch && mismatch.message.contains("b9-fffffff") && mismatch.message.contains("b1-abc1234"))
        let g = try await w.lease(request()).get()
        guard case .failure(let busy) = await w.lease(request("s2")) else { Issue.record("granted"); return }
        #expect(busy.code == .busy)
        #expect(await w.release(split: "s1"))
        #expect(!RPCServerProcess.canConnect(port: g.port))
        #expect(await w.release(split: "s1") == false)
        // A server that dies ends its lease at the next sweep.
        let g2 = try await w.lease(request("s2")).get()
        let pid = try #require(w.statusJSON()["leases"]?[0]?["pid"]?.intValue)
        kill(pid_t(pid), SIGKILL)
        for _ in 0..<100 where w.statusJSON()["leases"]?.arrayValue?.isEmpty == false {
            await w.sweep()
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(w.statusJSON()["leases"]?.arrayValue?.isEmpty == true)
        #expect(!RPCServerProcess.canConnect(port: g2.port))
        await w.shutdown()
    }

    @Test func withoutAnRPCServerOrWhenDisabledNothingIsLeased() async throws {
        let clock = ManualClock()
        let (none, _) = worker(clock, binary: nil)
        guard case .failure(let e) = await none.lease(request()) else { Issue.record("granted"); return }
        #expect(e.code == .noRPCServer)
        let (off, _) = worker(clock, binary: "/bin/true", enabled: false)
        guard case .failure(let e2) = await off.lease(request()) else { Issue.record("granted"); return }
        #expect(e2.code == .disabled)
        // A binary that exits at once: the lease is not kept.
        let (bad, dir) = worker(clock, binary: "/bin/true")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        guard case .failure(let e3) = await bad.lease(request()) else { Issue.record("granted"); return }
        #expect(e3.code == .noRPCServer && e3.message.contains("exited during start"))
        #expect(bad.statusJSON()["leases"]?.arrayValue?.isEmpty == true)
    }

    /// The expiry loop runs only while something can expire: a node that holds no lease (almost
    /// every node, almost always) does not wake for it.
    @Test func theExpiryLoopSleepsUntilALeaseIsAskedForAndAgainOnceItEnds() async throws {
        let clock = ManualClock()
        let sleeps = Mutex(0)
        let (w, dir) = worker(clock, binary: try Self.rpcBinary()) { d in
            sleeps.withLock { $0 += 1 }
            try? await Task.sleep(for: d)
        }
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let loop = Task { await w.run(interval: .milliseconds(20)) }
        try await Task.sleep(for: .milliseconds(300))
        #expect(sleeps.withLock { $0 } == 0, "the loop ran with no lease to expire")
        let g = try await w.lease(request(ttl: 5)).get()
        // Held: the loop sweeps every interval, and ends the lease once its ttl passes unrenewed.
        for _ in 0..<500 where sleeps.withLock({ $0 }) < 3 { try await Task.sleep(for: .milliseconds(10)) }
        #expect(sleeps.withLock { $0 } >= 3)
        clock.advance(seconds: 6)
        for _ in 0..<500 where RPCServerProcess.canConnect(port: g.port) { try await Task.sleep(for: .milliseconds(10)) }
        #expect(!RPCServerProcess.canConnect(port: g.port))
        #expect(w.isIdle)
        // Idle again: at most the sweep in progress when the lease ended still sleeps.
        try await Task.sleep(for: .milliseconds(100))
        let settled = sleeps.withLock { $0 }
        try await Task.sleep(for: .milliseconds(300))
        #expect(sleeps.withLock { $0 } == settled, "the loop kept waking after the lease ended")
        loop.cancel()
        await loop.value
    }
}
