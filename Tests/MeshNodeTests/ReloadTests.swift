import Foundation
import Logging
import Testing
@testable import MeshCore
@testable import MeshNode

/// `MeshdNode.reload` in-process (no mesh, no engines reachable): what it applies at once, what it
/// says needs a restart, and that the running configuration keeps the values it did not apply.
@Suite struct ReloadTests {
    func node(_ config: MeshdConfig) throws -> MeshdNode {
        try MeshdNode(config: config, logger: Logger(label: "test"), clock: ManualClock())
    }

    func base() -> MeshdConfig {
        var c = MeshdConfig(nodeName: "t")
        c.stateDir = NSTemporaryDirectory() + "meshd-reload-\(UUID().uuidString)"
        c.admin.socket = ""
        c.http.listen = HostPort(host: "127.0.0.1", port: 0)
        c.mesh.secretFile = c.stateDir + "/no-secret"
        c.discovery.mdns = false
        c.engines = [EngineConfig(kind: .openai, url: "http://127.0.0.1:9")]
        return c
    }

    @Test func keysEnginesAndCloudApplyTheRestWaitsForARestart() async throws {
        let old = base()
        let n = try node(old)
        #expect(try await n.reload(old) == MeshdNode.ReloadReport())
        var new = old
        new.http.apiKeys = ["ci:secret-key-1"]
        new.http.adminKeys = ["ops:admin-key-1"]
        new.engines = [EngineConfig(kind: .openai, url: "http://127.0.0.1:9"), EngineConfig(kind: .ollama, url: "http://127.0.0.1:10")]
        new.cloud.localOnlyModels = ["secret-model"]
        new.http.listen = HostPort(host: "127.0.0.1", port: 1)
        new.routing.policy = .leastBusy
        new.mesh.peers = [HostPort(host: "127.0.0.1", port: 2)]
        let report = try await n.reload(new)
        #expect(report.applied.count == 3)
        #expect(report.applied.contains { $0.hasPrefix("http.api_keys") } && report.applied.contains { $0.hasPrefix("engines (added [\"ollama@127.0.0.1:10\"]") })
        #expect(report.applied.contains { $0.hasPrefix("cloud (") })
        #expect(report.needsRestart == ["mesh.peers (the mesh is off: no mesh.secret_file)", "http", "routing"])
        #expect(n.keys.current.api.map(\.name) == ["ci"] && n.keys.current.admin == [Array("admin-key-1".utf8)])
        #expect(n.engines.snapshot().map(\.id).sorted() == ["ollama@127.0.0.1:10", "openai@127.0.0.1:9"])
        #expect(n.cloudSetup.config.localOnlyModels == ["secret-model"])
        // The running values stay for what was not applied: asked again, the same sections are named.
        let again = try await n.reload(new)
        #expect(again.applied.isEmpty && again.needsRestart == report.needsRestart)
        // Back: the engine goes, the keys are cleared.
        let back = try await n.reload(old)
        #expect(back.applied.contains { $0.contains("removed [\"ollama@127.0.0.1:10\"]") } && back.needsRestart.isEmpty)
        #expect(n.engines.snapshot().map(\.id) == ["openai@127.0.0.1:9"] && n.keys.current.api.isEmpty)
        await n.engines.shutdown()
    }

    @Test func anUnreadableProviderSecretRefusesTheWholeReload() async throws {
        var old = base()
        let dir = old.stateDir
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let keyFile = dir + "/provider.key"
        FileManager.default.createFile(atPath: keyFile, contents: Data("sk-test-0123456789\n".utf8), attributes: [.posixPermissions: 0o600])
        var provider = CloudProviderConfig(name: "openai", kind: .openai)
        provider.keyFile = keyFile
        old.cloud.providers = [provider]
        old.cloud.pricesFile = dir + "/no-prices.yaml"
        old.budget.dailyUSD = 1
        let n = try node(old)
        var new = old
        new.http.apiKeys = ["ci:secret-key-1"]
        new.budget.dailyUSD = 2
        var broken = provider
        broken.keyFile = dir + "/missing.key"
        new.cloud.providers = [broken]
        await #expect(throws: (any Error).self) { try await n.reload(new) }
        #expect(n.keys.current.api.isEmpty)
        #expect(n.gateway?.budget.dailyUSD == 1)
        new.cloud.providers = old.cloud.providers
        let report = try await n.reload(new)
        #expect(report.applied.first == "cloud providers, prices and budget caps" && n.gateway?.budget.dailyUSD == 2)
        #expect(n.gateway?.ledger.usage().first { $0.scope == .global && $0.period == .daily }?.limit == 2_000_000)
        await n.engines.shutdown()
    }
}
