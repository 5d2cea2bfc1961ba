import MeshCore
@testable import MeshConfigLoader
import Testing

@Suite struct ValidationTests {
    // MARK: types

    @Test func intGivenAString() {
        expectSingleError("http: { threads: \"four\" }", key: "http.threads", reasonContains: "expected an integer, got a string (\"four\")")
    }

    @Test func quotedNumberIsAStringNotAnInt() {
        expectSingleError("timeouts: { connect_ms: \"2000\" }", key: "timeouts.connect_ms", reasonContains: "expected an integer")
    }

    @Test func stringGivenAList() {
        expectSingleError("state_dir: [a, b]", key: "state_dir", reasonContains: "expected a string, got a list")
    }

    @Test func stringGivenNothing() {
        expectSingleError("admin:\n  socket:\n", key: "admin.socket", reasonContains: "expected a string, got an empty value")
    }

    @Test func boolGivenAnInt() {
        expectSingleError("discovery: { mdns: 3 }", key: "discovery.mdns", reasonContains: "expected a boolean")
    }

    @Test func listGivenAString() {
        expectSingleError("mesh: { peers: \"198.18.0.2:11436\" }", key: "mesh.peers", reasonContains: "expected a list of strings, got a string")
    }

    @Test func listElementGivenAMap() {
        expectSingleError("mesh: { peers: [\"198.18.0.2:11436\", { host: x }] }", key: "mesh.peers[1]", reasonContains: "expected a string, got a map")
    }

    @Test func sectionGivenAScalar() {
        expectSingleError("http: 5", key: "http", reasonContains: "expected a map, got an integer")
    }

    @Test func enginesGivenAMap() {
        expectSingleError("engines: { kind: ollama }", key: "engines", reasonContains: "expected a list of engines")
    }

    @Test func engineEntryGivenAString() {
        expectSingleError("engines: [ollama]", key: "engines[0]", reasonContains: "expected a map")
    }

    @Test func numberAcceptsIntAndFloat() throws {
        #expect(try mustLoad("http: { shutdown_grace_seconds: 2.5 }").config.http.shutdownGraceSeconds == 2.5)
        #expect(try mustLoad("http: { shutdown_grace_seconds: 0 }").config.http.shutdownGraceSeconds == 0)
        expectSingleError("http: { shutdown_grace_seconds: -1 }", key: "http.shutdown_grace_seconds")
        expectSingleError("http: { shutdown_grace_seconds: .inf }", key: "http.shutdown_grace_seconds")
    }

    // MARK: listen addresses

    @Test func httpListenMustBeHostPort() {
        expectSingleError("http: { listen: \"localhost\" }", key: "http.listen", reasonContains: "expected host:port")
    }

    @Test func httpListenRejectsScheme() {
        expectSingleError("http: { listen: \"http://127.0.0.1:11435\" }", key: "http.listen", reasonContains: "without a scheme")
    }

    @Test func httpListenPortInRange() {
        expectSingleError("http: { listen: \"127.0.0.1:70000\" }", key: "http.listen", reasonContains: "port 70000 is out of range 1...65535")
        expectSingleError("http: { listen: \"127.0.0.1:0\" }", key: "http.listen", reasonContains: "out of range")
    }

    @Test func listenForms() throws {
        #expect(try mustLoad("http: { listen: \"[::1]:9000\" }").config.http.listen == HostPort(host: "::1", port: 9000))
        #expect(try mustLoad("http: { listen: \"localhost:9000\" }").config.http.listen == HostPort(host: "localhost", port: 9000))
        #expect(try mustLoad("mesh: { listen: \":9001\" }").config.mesh.listen == HostPort(host: "0.0.0.0", port: 9001))
    }

    @Test func meshListenMustBeHostPort() {
        expectSingleError("mesh: { listen: \"0.0.0.0\" }", key: "mesh.listen", reasonContains: "expected host:port")
    }

    @Test func meshListenMustNotCollideWithHTTP() {
        expectSingleError("mesh: { listen: \"0.0.0.0:11435\" }", key: "mesh.listen", reasonContains: "collides with http.listen")
    }

    @Test func listenersOfDifferentFamiliesDoNotCollide() throws {
        let loaded = try mustLoad("http: { listen: \"[::1]:11436\" }")
        #expect(loaded.config.mesh.listen.port == 11436)
        expectSingleError("http: { listen: \"127.0.0.1:11436\" }", key: "mesh.listen", reasonContains: "collides")
        expectSingleError("http: { listen: \"127.0.0.1:9000\" }\nmesh: { listen: \"[::]:9000\" }", key: "mesh.listen", line: 2)
    }

    @Test func meshPeersAreHostPorts() throws {
        let loaded = try mustLoad("mesh: { peers: [\"198.18.0.2:11436\", \"beta.local:11436\", \"[fd00::3]:11436\"] }")
        #expect(loaded.config.mesh.peers == [HostPort(host: "198.18.0.2", port: 11436), HostPort(host: "beta.local", port: 11436),
                                             HostPort(host: "fd00::3", port: 11436)])
        expectSingleError("mesh: { peers: [\"198.18.0.2:11436\", \"beta\"] }", key: "mesh.peers[1]", reasonContains: "expected host:port")
        expectSingleError("mesh: { peers: [\":11436\"] }", key: "mesh.peers[0]", reasonContains: "needs a host")
        expectSingleError("mesh: { peers: [\"b:99999\"] }", key: "mesh.peers[0]", reasonContains: "out of range")
    }

    // MARK: engines

    @Test func engineURLMustBeHTTP() {
        expectSingleError("engines: [{ kind: ollama, url: \"http://127.0.0.1:11434\" }, { kind: openai, url: \"ftp://127.0.0.1:8080\" }]",
                          key: "engines[1].url", reasonContains: "must start with http:// or https://")
    }

    @Test func engineURLNeedsAHost() {
        expectSingleError("engines: [{ kind: openai, url: \"http://:8080/v1\" }]", key: "engines[0].url", reasonContains: "has no host")
        expectSingleError("engines: [{ kind: openai, url: \"https://\" }]", key: "engines[0].url", reasonContains: "has no host")
    }

    @Test func engineURLPortInRange() {
        expectSingleError("engines: [{ kind: openai, url: \"http://h:65536\" }]", key: "engines[0].url", reasonContains: "invalid port")
    }

    @Test func engineURLWithCredentialsIsNotQuoted() {
        let issue = expectSingleError("engines: [{ kind: openai, url: \"ftp://user:hunter2@h:1\" }]", key: "engines[0].url")
        #expect(issue?.description.contains("hunter2") == false)
        let other = expectSingleError("engines: [{ kind: openai, url: \"http://user:hunter2@h:1\" }]", key: "engines[0].url",
                                      reasonContains: "credentials")
        #expect(other?.description.contains("hunter2") == false)
    }

    @Test func engineURLForms() throws {
        let loaded = try mustLoad("engines: [{ kind: openai, url: \"https://[::1]:8443/v1\" }, { kind: ollama, url: \"HTTP://gpu-box\" }]")
        #expect(loaded.config.engines?.count == 2)
    }

    @Test func engineKindMustBeKnown() {
        expectSingleError("engines: [{ kind: llamacpp, model: /m.gguf }]", key: "engines[0].kind",
                          reasonContains: "expected one of ollama, openai, llama.cpp; did you mean \"llama.cpp\"?")
    }

    @Test func engineKindIsRequired() {
        expectSingleError("engines: [{ url: \"http://127.0.0.1:11434\" }]", key: "engines[0].kind", reasonContains: "missing")
    }

    @Test func urlRequiredForOllama() {
        expectSingleError("engines:\n  - kind: ollama\n", key: "engines[0].url", reasonContains: "required for kind ollama", line: 2)
    }

    @Test func urlRequiredForOpenAI() {
        expectSingleError("engines: [{ kind: openai }]", key: "engines[0].url", reasonContains: "required for kind openai")
    }

    @Test func urlIgnoredWithWarningForLlamaCpp() throws {
        let loaded = try mustLoad("engines: [{ kind: llama.cpp, model: /m/x.gguf, url: \"http://127.0.0.1:9999\" }]")
        #expect(loaded.config.engines?.first?.url == nil)
        #expect(loaded.warnings.count == 1)
        #expect(loaded.warnings.first?.key == "engines[0].url")
        #expect(loaded.warnings.first?.severity == .warning)
        #expect(loaded.warnings.first?.reason.contains("ignored") == true)
    }

    @Test func managedOnlyKeysIgnoredWithWarningForOtherKinds() throws {
        let loaded = try mustLoad("engines: [{ kind: ollama, url: \"http://127.0.0.1:11434\", model: x.gguf, args: [a] }]")
        #expect(loaded.config.engines?.first == EngineConfig(kind: .ollama, url: "http://127.0.0.1:11434"))
        #expect(loaded.warnings.map(\.key) == ["engines[0].model", "engines[0].args"])
    }

    @Test func modelRequiredForLlamaCpp() {
        expectSingleError("engines: [{ kind: ollama, url: \"http://127.0.0.1:11434\" }, { kind: llama.cpp, alias: x }]",
                          key: "engines[1].model", reasonContains: "required for kind llama.cpp")
    }

    @Test func duplicateEngineURLWarns() throws {
        let loaded = try mustLoad("engines: [{ kind: ollama, url: \"http://a:1\" }, { kind: ollama, url: \"http://a:1/\" }]")
        #expect(loaded.warnings.map(\.key) == ["engines[1].url"])
    }

    // MARK: numbers

    @Test func timeoutsMustBePositive() {
        expectSingleError("timeouts: { connect_ms: 0 }", key: "timeouts.connect_ms", reasonContains: "must be positive")
        expectSingleError("timeouts: { first_byte_ms: -5 }", key: "timeouts.first_byte_ms", reasonContains: "must be positive")
        expectSingleError("timeouts: { between_chunks_ms: 0 }", key: "timeouts.between_chunks_ms")
        expectSingleError("engine_poll: { interval_ms: 0 }", key: "engine_poll.interval_ms")
        expectSingleError("mesh: { heartbeat_ms: 0 }", key: "mesh.heartbeat_ms")
        expectSingleError("mesh: { dead_after_missed: 0 }", key: "mesh.dead_after_missed")
    }

    @Test func slowClientLimits() throws {
        for key in ["header_timeout_ms", "body_timeout_ms", "idle_timeout_ms"] {
            expectSingleError("http: { \(key): 99 }", key: "http.\(key)", reasonContains: "must be at least 100")
        }
        let http = try mustLoad("http: { header_timeout_ms: 100, body_timeout_ms: 250, idle_timeout_ms: 5000, max_connections: 0 }").config.http
        #expect(http.headerTimeoutMs == 100 && http.bodyTimeoutMs == 250 && http.idleTimeoutMs == 5000 && http.maxConnections == 0)
        expectSingleError("http: { max_connections: -1 }", key: "http.max_connections", reasonContains: "must be at least 0")
        let slow = try mustLoad("http: { max_connections_per_client: 0, min_body_bytes_per_second: 2000 }").config.http
        #expect(slow.maxConnectionsPerClient == 0 && slow.minBodyBytesPerSecond == 2000)
        #expect(MeshdConfig(nodeName: "n").http.maxConnectionsPerClient == 256 && MeshdConfig(nodeName: "n").http.minBodyBytesPerSecond == 500)
        for key in ["max_connections_per_client", "min_body_bytes_per_second"] {
            expectSingleError("http: { \(key): -1 }", key: "http.\(key)", reasonContains: "must be at least 0")
        }
        #expect(MeshdConfig(nodeName: "n").http.streamCoalesceMs == 5)
        #expect(try mustLoad("http: { stream_coalesce_ms: 0 }").config.http.streamCoalesceMs == 0)
        for bad in [-1, 101] {
            expectSingleError("http: { stream_coalesce_ms: \(bad) }", key: "http.stream_coalesce_ms", reasonContains: "\(bad) is out of range 0...100")
        }
    }

    @Test func maxBodyBytesAtLeast1024() throws {
        expectSingleError("http: { max_body_bytes: 1023 }", key: "http.max_body_bytes", reasonContains: "must be at least 1024")
        #expect(try mustLoad("http: { max_body_bytes: 1024 }").config.http.maxBodyBytes == 1024)
    }

    @Test func threadsWithin1To64() throws {
        expectSingleError("http: { threads: 0 }", key: "http.threads", reasonContains: "out of range 1...64")
        expectSingleError("http: { threads: 65 }", key: "http.threads", reasonContains: "out of range 1...64")
        #expect(try mustLoad("http: { threads: 64 }").config.http.threads == 64)
    }

    // MARK: enumerations

    @Test func logLevelMustBeASwiftLogLevel() throws {
        expectSingleError("logging: { level: verbose }", key: "logging.level",
                          reasonContains: "expected one of trace, debug, info, notice, warning, error, critical")
        expectSingleError("logging: { level: debgu }", key: "logging.level", reasonContains: "did you mean \"debug\"?")
        #expect(try mustLoad("logging: { level: WARNING }").config.logging.level == "warning")
    }

    @Test func authMustBeKeysOrNone() {
        expectSingleError("http: { auth: token }", key: "http.auth", reasonContains: "expected one of keys, none")
    }

    @Test func nodeNameMustBeNonEmpty() {
        expectSingleError("node: { name: \"\" }", key: "node.name", reasonContains: "must not be empty")
        expectSingleError("node: { name: \"a b\" }", key: "node.name", reasonContains: "whitespace")
    }

    // MARK: unknown keys

    @Test func unknownTopLevelKeySuggests() {
        expectSingleError("htpp: { listen: \"127.0.0.1:1\" }", key: "htpp", reasonContains: "unknown key \"htpp\"; did you mean \"http\"?", line: 1)
    }

    @Test func unknownNestedKeySuggests() {
        expectSingleError("http:\n  lisen: \"127.0.0.1:1\"\n", key: "http.lisen",
                          reasonContains: "unknown key \"lisen\" in http; did you mean \"listen\"?", line: 2)
        expectSingleError("timeouts: { conect_ms: 5 }", key: "timeouts.conect_ms", reasonContains: "did you mean \"connect_ms\"?")
    }

    @Test func unknownEngineKeySuggests() {
        expectSingleError("engines: [{ kind: ollama, ulr: \"http://127.0.0.1:11434\" }]", key: "engines[0].ulr",
                          reasonContains: "did you mean \"url\"?")
    }

    @Test func unknownKeyWithoutCloseMatchListsKnownKeys() {
        expectSingleError("http: { frobnicate: 1 }", key: "http.frobnicate",
                          reasonContains: "known keys in http: listen, api_keys, admin_keys, auth, max_body_bytes, threads, shutdown_grace_seconds, header_timeout_ms, "
                          + "body_timeout_ms, idle_timeout_ms, max_connections")
    }

    @Test func everyProblemIsReportedAtOnce() {
        let errors = mustFail("""
            htpp: {}
            http: { threads: 0, listen: nope }
            timeouts: { connect_ms: -1 }
            engines: [{ kind: ollama }]
            """)
        #expect(Set(errors.map(\.key)) == ["htpp", "http.threads", "http.listen", "timeouts.connect_ms", "engines[0].url"])
    }

    // MARK: security

    @Test func offLoopbackWithoutKeysFails() {
        let issue = expectSingleError("http: { listen: \"0.0.0.0:11435\" }", key: "http.listen", line: 1)
        #expect(issue?.reason.contains("refusing to serve off loopback without api keys; set http.api_keys or http.auth: none") == true)
    }

    @Test func offLoopbackWithKeysPasses() throws {
        let loaded = try mustLoad("http: { listen: \"0.0.0.0:11435\", api_keys: [\"k1\", \"k2\"] }")
        #expect(loaded.config.http.apiKeys == ["k1", "k2"])
        #expect(loaded.warnings.isEmpty)
    }

    @Test func offLoopbackWithAuthNonePasses() throws {
        let loaded = try mustLoad("http: { listen: \"198.18.0.10:11435\", auth: none }")
        #expect(loaded.config.http.auth == HTTPAuthMode.none)
    }

    @Test func loopbackWithoutKeysPasses() throws {
        #expect(try mustLoad("http: { listen: \"[::1]:11435\" }").config.http.listen.isLoopback)
        #expect(try mustLoad("http: { listen: \"localhost:11435\" }").config.http.listen.isLoopback)
    }

    @Test func keysWithAuthNoneWarn() throws {
        let loaded = try mustLoad("http: { api_keys: [k], auth: none }")
        #expect(loaded.warnings.map(\.key) == ["http.api_keys"])
    }

    @Test func apiKeysAreValidatedWithoutBeingQuoted() {
        let errors = mustFail("http: { api_keys: [\"good\", \"bad key\", \"\"] }")
        #expect(errors.map(\.key) == ["http.api_keys[1]", "http.api_keys[2]"])
        #expect(!errors.joined.contains("bad key"))
    }

    @Test func apiKeyTypeErrorDoesNotQuoteTheValue() {
        let issue = expectSingleError("http: { api_keys: \"sk-secret-123\" }", key: "http.api_keys")
        #expect(issue?.description.contains("sk-secret-123") == false)
    }
}

@Suite struct SplitAndConcurrencyConfigTests {
    @Test func splitKeysLoad() throws {
        let c = try mustLoad("""
        split: { enabled: false, max_workers: 2, transport: direct, lease_seconds: 10 }
        hardware: { offer_bytes: 4000000000 }
        engines:
          - { kind: llama.cpp, model: /m/x.gguf, split: never, max_concurrency: 4 }
          - { kind: openai, url: "http://127.0.0.1:8080", max_concurrency: 256 }
        """).config
        #expect(c.split.enabled == false && c.split.maxWorkers == 2 && c.split.transport == .direct && c.split.leaseSeconds == 10)
        #expect(c.hardware.offerBytes == 4_000_000_000)
        #expect(c.engines?.map(\.split) == [.never, .auto])
        #expect(c.engines?.map(\.maxConcurrency) == [4, 256])
        let d = try mustLoad("").config
        #expect(d.split == SplitSettings() && d.hardware.offerBytes == nil)
    }

    @Test func badSplitAndConcurrencyValuesNameTheKey() {
        expectSingleError("split: { max_workers: 0 }", key: "split.max_workers", reasonContains: "out of range 1...16")
        expectSingleError("split: { transport: lan }", key: "split.transport", reasonContains: "expected one of mesh, direct")
        expectSingleError("split: { lease_seconds: 1 }", key: "split.lease_seconds", reasonContains: "out of range 2...3600")
        expectSingleError("hardware: { offer_bytes: -1 }", key: "hardware.offer_bytes", reasonContains: "at least 0")
        expectSingleError("engines: [{ kind: llama.cpp, model: /m/x.gguf, split: sometimes }]", key: "engines[0].split",
                          reasonContains: "expected one of auto, never")
        expectSingleError("engines: [{ kind: openai, url: \"http://127.0.0.1:8080\", max_concurrency: 0 }]",
                          key: "engines[0].max_concurrency", reasonContains: "out of range 1...100000")
    }

    @Test func splitOnAnEngineMeshdDoesNotStartIsIgnoredWithAWarning() throws {
        let loaded = try mustLoad("engines: [{ kind: openai, url: \"http://127.0.0.1:8080\", split: never }]")
        #expect(loaded.warnings.contains { $0.description.contains("split") }, "\(loaded.warnings)")
    }
}
