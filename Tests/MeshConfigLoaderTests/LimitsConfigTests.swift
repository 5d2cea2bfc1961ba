import MeshCore
@testable import MeshConfigLoader
import Testing

@Suite struct LimitsConfigTests {
    @Test func defaultAndPerKeyLoadRenderAndLoadBack() throws {
        let yaml = """
        http: { api_keys: ["alice:sk-a", "bob:sk-b"] }
        limits:
          default: { rpm: 60, tpm: 10000 }
          per_key:
            alice: { rpm: 5, concurrency: 2, models: [tiny, "qwen*"] }
        """
        let loaded = try mustLoad(yaml)
        let l = loaded.config.limits
        #expect(l.defaultLimits == KeyLimits(rpm: 60, tpm: 10000))
        #expect(l.perKey == ["alice": KeyLimits(rpm: 5, concurrency: 2, models: ["tiny", "qwen*"])])
        // A key's own entry over the default, kind by kind.
        #expect(l.limits(for: "alice") == KeyLimits(rpm: 5, tpm: 10000, concurrency: 2, models: ["tiny", "qwen*"]))
        #expect(l.limits(for: "bob") == KeyLimits(rpm: 60, tpm: 10000))
        #expect(loaded.warnings.isEmpty, "\(loaded.warnings)")
        var keyless = loaded.config
        keyless.http.apiKeys = []  // rendered as *** (never printed)
        let again = try mustLoad(ConfigLoader.render(keyless)).config
        #expect(again.limits == l)
    }

    @Test func environmentSetsTheDefault() throws {
        let c = try mustLoad("", env: ["MESHD_LIMITS_DEFAULT_RPM": "30", "MESHD_LIMITS_DEFAULT_CONCURRENCY": "3"]).config
        #expect(c.limits.defaultLimits == KeyLimits(rpm: 30, concurrency: 3))
        #expect(c.limits.enabled)
    }

    @Test func badValuesNameTheirKey() {
        expectSingleError("limits: { default: { rpm: 0 } }", key: "limits.default.rpm", reasonContains: "at least 1")
        expectSingleError("limits: { per_key: { alice: { tpm: -5 } } }", key: "limits.per_key.alice.tpm", reasonContains: "at least 1")
        expectSingleError("limits: { per_key: { alice: { rmp: 5 } } }", key: "limits.per_key.alice.rmp", reasonContains: "did you mean \"rpm\"")
        expectSingleError("limits: { per_key: { alice: {} } }", key: "limits.per_key.alice", reasonContains: "sets no limit")
        expectSingleError("limits: { per_key: { \"a b\": { rpm: 1 } } }", key: "limits.per_key.a b", reasonContains: "not a key name")
        expectSingleError("limits: { per_key: { alice: { models: [\"two words\"] } } }", key: "limits.per_key.alice.models",
                          reasonContains: "whitespace")
    }

    @Test func warnsOfUnknownKeysAndOfLimitsWithoutKeys() throws {
        let named = try mustLoad("http: { api_keys: [\"alice:sk\"] }\nlimits: { per_key: { carol: { rpm: 1 } } }")
        #expect(named.warnings.map(\.key) == ["limits.per_key.carol"], "\(named.warnings)")
        let anonymous = try mustLoad("limits: { default: { rpm: 100 } }")
        #expect(anonymous.warnings.contains { $0.key == "limits.default" && $0.reason.contains("one anonymous key") }, "\(anonymous.warnings)")
        #expect(try mustLoad("").config.limits.enabled == false)
    }
}
