import Foundation
import MeshCore
@testable import MeshConfigLoader
import Testing

@Suite struct EnvironmentTests {
    @Test func environmentWinsOverFile() throws {
        let loaded = try mustLoad("""
            node: { name: filename }
            http: { listen: "127.0.0.1:9000", threads: 2 }
            timeouts: { connect_ms: 100 }
            """, env: [
                "MESHD_NODE_NAME": "envname",
                "MESHD_HTTP_LISTEN": "127.0.0.1:9001",
                "MESHD_TIMEOUTS_CONNECT_MS": "250",
                "MESHD_DISCOVERY_MDNS": "false",
                "MESHD_HTTP_SHUTDOWN_GRACE_SECONDS": "1.5",
                "MESHD_MESH_PEERS": "198.18.0.2:11436, 198.18.0.3:11436",
                "PATH": "/usr/bin",
            ])
        #expect(loaded.warnings.isEmpty)
        #expect(loaded.config.nodeName == "envname")
        #expect(loaded.config.http.listen == HostPort(host: "127.0.0.1", port: 9001))
        #expect(loaded.config.http.threads == 2)
        #expect(loaded.config.timeouts.connectMs == 250)
        #expect(loaded.config.discovery.mdns == false)
        #expect(loaded.config.http.shutdownGraceSeconds == 1.5)
        #expect(loaded.config.mesh.peers == [HostPort(host: "198.18.0.2", port: 11436), HostPort(host: "198.18.0.3", port: 11436)])
    }

    @Test func apiKeysFromEnvironmentAreCommaSeparated() throws {
        let loaded = try mustLoad("http: { listen: \"0.0.0.0:11435\" }", env: ["MESHD_HTTP_API_KEYS": "a,b"])
        #expect(loaded.config.http.apiKeys == ["a", "b"])
    }

    @Test func emptyListVariableIsAnEmptyList() throws {
        let loaded = try mustLoad("http: { api_keys: [x] }", env: ["MESHD_HTTP_API_KEYS": ""])
        #expect(loaded.config.http.apiKeys == [])
    }

    @Test func environmentAppliesWithoutAFile() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let loaded = try ConfigLoader.load(path: nil, defaultPath: dir.appendingPathComponent("x.yaml").path,
                                           environment: ["MESHD_LOGGING_LEVEL": "debug"], hostName: testHost)
        #expect(loaded.config.logging.level == "debug")
        #expect(loaded.sourceFile == nil)
    }

    @Test func badIntegerVariableIsReported() {
        let issue = expectSingleError("", key: "MESHD_TIMEOUTS_CONNECT_MS", env: ["MESHD_TIMEOUTS_CONNECT_MS": "soon"],
                                      reasonContains: "expected an integer, got \"soon\"")
        #expect(issue?.source == "environment")
        #expect(issue?.line == nil)
    }

    @Test func badBoolVariableIsReported() {
        expectSingleError("", key: "MESHD_DISCOVERY_MDNS", env: ["MESHD_DISCOVERY_MDNS": "maybe"], reasonContains: "expected a boolean")
    }

    @Test func invalidVariableValueIsReported() {
        let issue = expectSingleError("", key: "MESHD_HTTP_THREADS", env: ["MESHD_HTTP_THREADS": "100"], reasonContains: "out of range 1...64")
        #expect(issue?.source == "environment")
        expectSingleError("", key: "MESHD_MESH_PEERS", env: ["MESHD_MESH_PEERS": "a:1,b"], reasonContains: "item 2:")
        expectSingleError("", key: "MESHD_HTTP_LISTEN", env: ["MESHD_HTTP_LISTEN": "nowhere"], reasonContains: "expected host:port")
    }

    @Test func badEnvironmentAndBadFileAreBothReported() {
        let errors = mustFail("http: { threads: 0 }", env: ["MESHD_TIMEOUTS_CONNECT_MS": "x"])
        #expect(errors.map(\.key) == ["http.threads", "MESHD_TIMEOUTS_CONNECT_MS"])
    }

    @Test func secretVariableIsNeverQuoted() {
        // Off loopback: the rejected keys are reported, not also the missing-keys rule.
        let errors = mustFail("http: { listen: \"0.0.0.0:11435\" }", env: ["MESHD_HTTP_API_KEYS": "fine,has space"])
        #expect(errors.map(\.key) == ["MESHD_HTTP_API_KEYS"])
        #expect(!errors.joined.contains("has space"))
        #expect(!errors.joined.contains("fine"))
    }

    @Test func unknownVariablesWarnWithSuggestion() throws {
        let loaded = try mustLoad("", env: ["MESHD_HTTP_LISTN": "127.0.0.1:1", "MESHD_ENGINES": "x", "MESHD_WHATEVER": "1"])
        #expect(loaded.warnings.map(\.key) == ["MESHD_ENGINES", "MESHD_HTTP_LISTN", "MESHD_WHATEVER"])
        #expect(loaded.warnings.allSatisfy { $0.severity == .warning && $0.source == "environment" })
        #expect(loaded.warnings[0].reason.contains("only be configured in the file"))
        #expect(loaded.warnings[1].reason.contains("did you mean \"MESHD_HTTP_LISTEN\"?"))
        #expect(loaded.config == defaults)
    }

    @Test func offLoopbackFromEnvironmentIsAttributedToIt() {
        let issue = expectSingleError("", key: "MESHD_HTTP_LISTEN", env: ["MESHD_HTTP_LISTEN": "0.0.0.0:11435"],
                                      reasonContains: "refusing to serve off loopback")
        #expect(issue?.source == "environment")
    }

    @Test func everyKeyHasAWorkingVariable() throws {
        // Feeding every key's rendered default through its variable must change nothing:
        // this checks each MESHD_ name reaches ConfigReader and parses back.
        var env: [String: String] = [:]
        var unset = 0
        for field in Schema.fields {
            guard let value = field.read(defaults) else {
                unset += 1  // optional keys left out by default
                continue
            }
            switch value {
            case .string(let text): env[field.environmentName] = text
            case .int(let number): env[field.environmentName] = String(number)
            case .double(let number): env[field.environmentName] = Render.number(number)
            case .bool(let flag): env[field.environmentName] = String(flag)
            case .list(let items): env[field.environmentName] = items.joined(separator: ",")
            }
        }
        #expect(env.count + unset == Schema.fields.count)
        let loaded = try mustLoad("", env: env)
        #expect(loaded.warnings.isEmpty)
        #expect(loaded.config == defaults)
        #expect(env["MESHD_HTTP_API_KEYS"] != nil && env["MESHD_ENGINE_POLL_INTERVAL_MS"] == "1000")
    }
}

@Suite struct RenderTests {
    static var rich: MeshdConfig {
        var config = MeshdConfig(nodeName: "node \"q\"\\x".replacingOccurrences(of: " ", with: "_"))
        config.stateDir = "/srv/meshd state"
        config.http.listen = HostPort(host: "::", port: 8000)
        config.http.auth = .none
        config.http.maxBodyBytes = 2048
        config.http.threads = 8
        config.http.shutdownGraceSeconds = 2.25
        config.admin.socket = "/tmp/m.sock"
        config.engines = [
            EngineConfig(kind: .ollama, url: "http://127.0.0.1:11434"),
            EngineConfig(kind: .openai, url: "https://vllm.internal:8443/v1", apiKeyFile: "/etc/meshd/vllm.key"),
            EngineConfig(kind: .llamaCpp, model: "/models/tiny: #1.gguf", alias: "tiny", args: ["-c", "4096", "--jinja", "a,b"],
                         binary: "/usr/local/bin/llama-server"),
            EngineConfig(kind: .llamaCpp, model: "/models/other.gguf"),
        ]
        config.timeouts.connectMs = 1
        config.timeouts.firstByteMs = 2
        config.timeouts.betweenChunksMs = 3
        config.enginePoll.intervalMs = 250
        config.logging.level = "trace"
        config.mesh.listen = HostPort(host: "198.18.0.1", port: 9999)
        config.mesh.peers = [HostPort(host: "198.18.0.2", port: 9999), HostPort(host: "fd00::2", port: 9999)]
        config.mesh.secretFile = "/etc/meshd/s"
        config.mesh.heartbeatMs = 500
        config.mesh.deadAfterMissed = 5
        config.discovery.mdns = false
        return config
    }

    @Test func defaultsRoundTrip() throws {
        let text = ConfigLoader.render(defaults)
        let loaded = try mustLoad(text)
        #expect(loaded.config == defaults)
        #expect(loaded.warnings.isEmpty)
        #expect(text.contains("# engines: not configured"))
    }

    @Test func richConfigRoundTrips() throws {
        let text = ConfigLoader.render(Self.rich)
        let loaded = try mustLoad(text)
        #expect(loaded.config == Self.rich, "rendered:\n\(text)")
        #expect(loaded.warnings.isEmpty)
    }

    @Test func renderSkipsKeysThatDoNotApplyToTheKind() throws {
        var config = defaults
        config.engines = [EngineConfig(kind: .llamaCpp, url: "http://127.0.0.1:1", model: "/m.gguf")]
        let text = ConfigLoader.render(config)
        #expect(!text.contains("http://127.0.0.1:1"))
        let loaded = try mustLoad(text)
        #expect(loaded.warnings.isEmpty)
        #expect(loaded.config.engines == [EngineConfig(kind: .llamaCpp, model: "/m.gguf")])
    }

    @Test func emptyEngineListRoundTrips() throws {
        var config = defaults
        config.engines = []
        #expect(try mustLoad(ConfigLoader.render(config)).config == config)
    }

    @Test func renderedFileRoundTripsThroughDisk() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("effective.yaml").path
        try ConfigLoader.render(Self.rich).write(toFile: path, atomically: true, encoding: .utf8)
        let loaded = try ConfigLoader.load(path: path, environment: [:], hostName: "other")
        #expect(loaded.config == Self.rich)
    }

    @Test func renderNeverContainsAnAPIKey() throws {
        var config = defaults
        config.http.apiKeys = ["sk-live-abcdef", "second-key-123"]
        let text = ConfigLoader.render(config)
        #expect(!text.contains("sk-live-abcdef"))
        #expect(!text.contains("second-key-123"))
        #expect(text.contains("api_keys: [\"***\", \"***\"]"))
        // A redacted rendering loads as the same configuration except for the keys, which are
        // refused, so pasting --check-config output never serves with "***" as a key.
        let errors = mustFail(text)
        #expect(errors.map(\.key) == ["http.api_keys[0]", "http.api_keys[1]"])
        var withoutKeys = config
        withoutKeys.http.apiKeys = []
        let stripped = text.replacingOccurrences(of: "api_keys: [\"***\", \"***\"]", with: "api_keys: []")
        #expect(try mustLoad(stripped).config == withoutKeys)
    }

    @Test func adminKeysAreRedactedLikeClientKeys() throws {
        let loaded = try mustLoad("http: { admin_keys: [\"ops:admin-secret-9\"] }", env: ["MESHD_HTTP_API_KEYS": "env-secret-1"])
        #expect(loaded.config.http.adminKeys == ["ops:admin-secret-9"])
        let text = ConfigLoader.render(loaded.config)
        #expect(!text.contains("admin-secret-9") && text.contains("admin_keys: [\"***\"]"))
        #expect(!"\(loaded.config.http)".contains("admin-secret-9"))
    }

    @Test func apiKeysFromEnvironmentAreRedactedToo() throws {
        let loaded = try mustLoad("", env: ["MESHD_HTTP_API_KEYS": "env-secret-1"])
        #expect(loaded.config.http.apiKeys == ["env-secret-1"])
        #expect(!ConfigLoader.render(loaded.config).contains("env-secret-1"))
    }

    @Test func renderLooksLikeTheDocumentedLayout() {
        let text = ConfigLoader.render(defaults)
        #expect(text.contains("http:\n  listen: \"127.0.0.1:11435\"\n  api_keys: []\n  admin_keys: []\n  auth: \"keys\"\n"))
        #expect(text.contains("mesh:\n  listen: \"0.0.0.0:11436\"\n  peers: []\n"))
        #expect(text.contains("discovery:\n  mdns: true\n"))
        #expect(text.contains("http:\n  listen: \"127.0.0.1:11435\"\n  api_keys: []\n  admin_keys: []\n  auth: \"keys\"\n  max_body_bytes: 8388608\n  threads: 1\n  shutdown_grace_seconds: 30\n"
                              + "  header_timeout_ms: 10000\n  body_timeout_ms: 10000\n  idle_timeout_ms: 75000\n  max_connections: 4096\n"))
    }
}
