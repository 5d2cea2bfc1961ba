import Foundation
import MeshCore
@testable import MeshConfigLoader
import Testing

@Suite struct CloudConfigTests {
    let full = """
    cloud:
      escalate_after_ms: 1500
      local_only_models: [private-llm]
      local_only_keys: [ci]
      providers:
        - { name: openai, kind: openai, key_file: /etc/meshd/openai.key, models: [gpt-4o-mini] }
        - { name: lab, kind: openai, base_url: "https://llm.lab.example/v1", key_file: /etc/meshd/lab.key, ca_file: /etc/meshd/lab-ca.pem }
        - { name: claude, kind: anthropic, key_env: ANTHROPIC_API_KEY }
        - name: az
          kind: azure
          base_url: "https://x.openai.azure.com/openai/deployments/gpt4o"
          api_version: "2024-10-21"
          key_file: /etc/meshd/azure.key
        - name: bedrock
          kind: bedrock
          region: eu-central-1
          access_key_id: AKIAIOSFODNN7EXAMPLE
          key_env: AWS_SECRET_ACCESS_KEY
          session_token_env: AWS_SESSION_TOKEN
          models: ["amazon.nova-lite-v1:0"]
      prices:
        gpt-4o-mini: { input: 0.15, output: 0.60, cached_input: 0.075 }
        lab/qwen: { input: 0, output: 0.01, max_output_tokens: 2048 }
      aliases:
        gpt-4o-mini: "llama3.1:8b"
    budget:
      daily_usd: 5.00
      monthly_usd: 100
      alert_at: 0.9
      time_zone: Europe/Berlin
      webhook: "https://hooks.example/meshd"
      per_provider: { openai: { daily_usd: 2.0 } }
      per_key: { ci: { monthly_usd: 1.5 } }
    """

    @Test func fullSectionsLoad() throws {
        let c = try mustLoad(full).config
        #expect(c.cloud.escalateAfterMs == 1500)
        #expect(c.cloud.providers.map(\.name) == ["openai", "lab", "claude", "az", "bedrock"])
        #expect(c.cloud.providers[0].models == ["gpt-4o-mini"])
        #expect(c.cloud.providers[0].effectiveBaseURL == "https://api.openai.com/v1")
        #expect(c.cloud.providers[1].caFile == "/etc/meshd/lab-ca.pem")
        #expect(c.cloud.providers[2].keyEnv == "ANTHROPIC_API_KEY" && c.cloud.providers[2].keyFile == nil)
        #expect(c.cloud.providers[3].kind == .azure && c.cloud.providers[3].apiVersion == "2024-10-21")
        let b = c.cloud.providers[4]
        #expect(b.kind == .bedrock && b.region == "eu-central-1" && b.accessKeyID == "AKIAIOSFODNN7EXAMPLE" && b.keyEnv == "AWS_SECRET_ACCESS_KEY")
        #expect(b.sessionTokenEnv == "AWS_SESSION_TOKEN" && b.sessionTokenFile == nil && b.models == ["amazon.nova-lite-v1:0"])
        #expect(b.effectiveBaseURL == "https://bedrock-runtime.eu-central-1.amazonaws.com")
        #expect(c.cloud.prices["lab/qwen"] == ModelPrice(input: 0, output: 0.01, maxOutputTokens: 2048))
        #expect(c.cloud.aliases == ["gpt-4o-mini": "llama3.1:8b"])
        #expect(c.cloud.localOnlyModels == ["private-llm"] && c.cloud.localOnlyKeys == ["ci"])
        #expect(c.budget.dailyUSD == 5 && c.budget.monthlyUSD == 100 && c.budget.alertAt == 0.9)
        #expect(c.budget.timeZone == "Europe/Berlin" && c.budget.webhook == "https://hooks.example/meshd")
        let caps = c.budget.caps
        #expect(caps.global == BudgetCaps.Limit(daily: 5_000_000, monthly: 100_000_000))
        #expect(caps.providers["openai"] == BudgetCaps.Limit(daily: 2_000_000))
        #expect(caps.keys["ci"] == BudgetCaps.Limit(monthly: 1_500_000))
    }

    @Test func renderedSectionsLoadBackTheSame() throws {
        let c = try mustLoad(full).config
        let text = ConfigLoader.render(c)
        #expect(text.contains("providers:") && text.contains("per_provider:"))
        #expect(try mustLoad(text).config == c)
        // Defaults render too (unset caps as comments) and load back.
        #expect(try mustLoad(ConfigLoader.render(defaults)).config == defaults)
        #expect(ConfigLoader.render(defaults).contains("# daily_usd: not set"))
    }

    @Test func environmentSetsTheCaps() throws {
        let c = try mustLoad("", env: ["MESHD_BUDGET_DAILY_USD": "2.5", "MESHD_CLOUD_LOCAL_ONLY_MODELS": "a,b"]).config
        #expect(c.budget.dailyUSD == 2.5 && c.cloud.localOnlyModels == ["a", "b"])
        expectSingleError("", key: "MESHD_BUDGET_DAILY_USD", env: ["MESHD_BUDGET_DAILY_USD": "-1"], reasonContains: "at least 0")
    }

    @Test func providerMistakesNameTheEntryAndKey() {
        expectSingleError("cloud: { providers: [ { name: x, kind: opneai, key_env: K } ] }", key: "cloud.providers[0].kind",
                          reasonContains: "did you mean \"openai\"")
        expectSingleError("cloud: { providers: [ { name: x, kind: openai } ] }", key: "cloud.providers[0]",
                          reasonContains: "needs key_file")
        expectSingleError("cloud: { providers: [ { name: x, kind: openai, key_env: K, key_file: /k } ] }",
                          key: "cloud.providers[0].key_env", reasonContains: "not both")
        expectSingleError("cloud: { providers: [ { name: x, kind: openai, key_env: \"no such\" } ] }",
                          key: "cloud.providers[0].key_env", reasonContains: "environment variable name")
        expectSingleError("cloud: { providers: [ { name: x, kind: openai, key_env: K, base_url: ftp://x } ] }",
                          key: "cloud.providers[0].base_url", reasonContains: "http://")
        expectSingleError("cloud: { providers: [ { name: x, kind: openai, key_env: K, api_key: sk-123 } ] }",
                          key: "cloud.providers[0].api_key", reasonContains: "unknown key")
        expectSingleError("cloud: { providers: [ { kind: openai, key_env: K } ] }", key: "cloud.providers[0].name",
                          reasonContains: "missing")
        let dup = mustFail("cloud: { providers: [ { name: x, kind: openai, key_env: K }, { name: x, kind: gemini, key_env: G } ] }")
        #expect(dup.map(\.key) == ["cloud.providers[1].name"] && dup[0].reason.contains("same name"))
        let azure = mustFail("cloud: { providers: [ { name: az, kind: azure, key_env: K } ] }")
        #expect(Set(azure.map(\.key)) == ["cloud.providers[0].base_url", "cloud.providers[0].api_version"])
        expectSingleError("cloud: { providers: { name: x } }", key: "cloud.providers", reasonContains: "expected a list")
    }

    @Test func bedrockMistakesNameTheField() {
        let ok = "name: b, kind: bedrock, key_file: /k, access_key_id: AKIAIOSFODNN7EXAMPLE"
        let missing = mustFail("cloud: { providers: [ { name: b, kind: bedrock, key_env: K } ] }")
        #expect(Set(missing.map(\.key)) == ["cloud.providers[0].region", "cloud.providers[0].access_key_id"], "\(missing)")
        #expect(missing.first { $0.key.hasSuffix("region") }?.reason.contains("required for kind bedrock") == true)
        expectSingleError("cloud: { providers: [ { \(ok), region: US-East } ] }", key: "cloud.providers[0].region", reasonContains: "AWS region such as us-east-1")
        expectSingleError("cloud: { providers: [ { name: b, kind: bedrock, key_file: /k, region: us-east-1, access_key_id: \"AKIA short\" } ] }",
                          key: "cloud.providers[0].access_key_id", reasonContains: "AWS access key ID")
        expectSingleError("cloud: { providers: [ { \(ok), region: us-east-1, session_token_file: /t, session_token_env: T } ] }",
                          key: "cloud.providers[0].session_token_env", reasonContains: "set session_token_file or session_token_env, not both")
        expectSingleError("cloud: { providers: [ { \(ok), region: us-east-1, session_token_env: \"a b\" } ] }",
                          key: "cloud.providers[0].session_token_env", reasonContains: "environment variable name")
        expectSingleError("cloud: { providers: [ { name: b, kind: bedrock, region: us-east-1, access_key_id: AKIAIOSFODNN7EXAMPLE } ] }",
                          key: "cloud.providers[0]", reasonContains: "the AWS secret access key")
        expectSingleError("cloud: { providers: [ { name: o, kind: openai, key_env: K, region: us-east-1 } ] }",
                          key: "cloud.providers[0].region", reasonContains: "only for kind bedrock")
        // Keys never go in the YAML: a secret_access_key field is unknown.
        expectSingleError("cloud: { providers: [ { \(ok), region: us-east-1, secret_access_key: x } ] }",
                          key: "cloud.providers[0].secret_access_key", reasonContains: "unknown key")
    }

    @Test func pricesCapsAliasesAndZone() {
        expectSingleError("cloud: { prices: { m: { input: -1, output: 1 } } }", key: "cloud.prices.m.input", reasonContains: "0 or more")
        expectSingleError("cloud: { prices: { m: { input: 1 } } }", key: "cloud.prices.m.output", reasonContains: "missing")
        expectSingleError("cloud: { prices: { m: { input: 1, output: 1, max_output_tokens: 0 } } }",
                          key: "cloud.prices.m.max_output_tokens", reasonContains: "at least 1")
        expectSingleError("cloud: { prices: { m: 3 } }", key: "cloud.prices.m", reasonContains: "expected a price")
        expectSingleError("cloud: { aliases: { m: m } }", key: "cloud.aliases.m", reasonContains: "own alias")
        expectSingleError("budget: { per_provider: { openai: {} } }", key: "budget.per_provider.openai", reasonContains: "sets no cap")
        expectSingleError("budget: { per_key: { ci: { dayly_usd: 1 } } }", key: "budget.per_key.ci.dayly_usd",
                          reasonContains: "did you mean \"daily_usd\"")
        expectSingleError("budget: { time_zone: Mars/Olympus }", key: "budget.time_zone", reasonContains: "unknown time zone")
        expectSingleError("budget: { alert_at: 1.5 }", key: "budget.alert_at", reasonContains: "at most 1")
    }

    @Test func pricesFileLoadsAndMainConfigOverrides() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("prices.yaml").path
        try "models:\n  a: { input: 1, output: 2 }\n  b: { input: 3, output: 4, cached_input: 0.5 }\n".write(toFile: path, atomically: true, encoding: .utf8)
        let t = try PricesLoader.load(path: path, overrides: ["a": ModelPrice(input: 9, output: 9)])
        #expect(t.price(provider: "p", model: "a")?.input == 9)
        #expect(t.price(provider: "p", model: "b")?.cachedInput == 0.5)
        #expect(try PricesLoader.load(path: dir.appendingPathComponent("none.yaml").path).models.isEmpty)
        try "models:\n  a: { input: 1 }\n".write(toFile: path, atomically: true, encoding: .utf8)
        do {
            _ = try PricesLoader.load(path: path)
            Issue.record("expected an error")
        } catch {
            #expect(error.errors.first?.key == "models.a.output" && error.errors.first?.source == path && error.errors.first?.line == 2)
        }
        // The repository's price table loads.
        let repo = URL(fileURLWithPath: documentedConfigPath).deletingLastPathComponent().appendingPathComponent("prices.yaml").path
        let shipped = try PricesLoader.load(path: repo)
        #expect(shipped.price(provider: "openai", model: "gpt-4o-mini") == ModelPrice(input: 0.15, output: 0.60, cachedInput: 0.075, maxOutputTokens: 16384))
        #expect(shipped.price(provider: "bedrock", model: "amazon.nova-lite-v1:0")?.output == 0.24)
        #expect(shipped.price(provider: "openai", model: "amazon.nova-lite-v1:0") == nil)
    }
}

@Suite struct ClientKeyNameTests {
    @Test func keyNamesAreUniqueAndReferencesChecked() throws {
        expectSingleError("http: { api_keys: [\"ci:a1\", \"ci:b2\"] }", key: "http.api_keys", reasonContains: "named 'ci'")
        let loaded = try mustLoad("""
        http: { api_keys: ["ci:a1", "b2"] }
        cloud: { local_only_keys: [ci, key2, ghost] }
        budget: { per_key: { ci: { daily_usd: 1 }, nobody: { daily_usd: 1 } }, per_provider: { openai: { daily_usd: 1 } } }
        """)
        let keys = loaded.warnings.map(\.key).sorted()
        #expect(keys == ["budget.per_key.nobody", "budget.per_provider.openai", "cloud.local_only_keys"], "\(loaded.warnings)")
        #expect(loaded.warnings.first { $0.key == "cloud.local_only_keys" }?.reason.contains("'ghost'") == true)
    }
}
