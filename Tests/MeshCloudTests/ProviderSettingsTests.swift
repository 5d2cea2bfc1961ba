import Foundation
import MeshCloud
import MeshCore
import MeshHTTPClient
import Testing

@Suite struct ProviderSettingsTests {
    let key = ProviderSecret(key: "sk-unit-KEY-1234")

    func header(_ r: HTTPClientRequest, _ name: String) -> String? {
        r.headers.first { $0.0.lowercased() == name.lowercased() }?.1
    }

    @Test func urlsAndAuthPerKind() throws {
        let openai = ProviderSettings(name: "oa", kind: .openai, secret: key)
        let r = openai.httpRequest(for: try engineRequest(.openai, model: "gpt-4o-mini", stream: false), nowNanos: 0)
        #expect(r.method == "POST" && r.url == "https://api.openai.com/v1/chat/completions")
        #expect(header(r, "authorization") == "Bearer sk-unit-KEY-1234" && header(r, "content-type") == "application/json")
        #expect(try JSONParser.parse(r.body)["model"] == "gpt-4o-mini")

        let groq = ProviderSettings(name: "groq", kind: .openai, baseURL: "https://api.groq.com/openai/v1/", secret: key, caFile: "/ca.pem")
        let g = groq.httpRequest(for: try engineRequest(.openai, model: "llama", stream: true), nowNanos: 0)
        #expect(g.url == "https://api.groq.com/openai/v1/chat/completions" && g.caFile == "/ca.pem")
        #expect(header(g, "accept") == "text/event-stream")
        // kind groq: the OpenAI dialect at Groq's base URL, by default.
        let preset = ProviderSettings(name: "groq", kind: .groq, secret: key)
        let p = preset.httpRequest(for: try engineRequest(.groq, model: "llama-3.3-70b-versatile", stream: false), nowNanos: 0)
        #expect(p.url == "https://api.groq.com/openai/v1/chat/completions" && header(p, "authorization") == "Bearer sk-unit-KEY-1234")
        #expect(try JSONParser.parse(p.body)["model"] == "llama-3.3-70b-versatile")

        let azure = ProviderSettings(name: "az", kind: .azure, baseURL: "https://res.openai.azure.com/openai/deployments/dep", secret: key)
        let a = azure.httpRequest(for: try engineRequest(.azure, model: "gpt", stream: false), nowNanos: 0)
        #expect(a.url == "https://res.openai.azure.com/openai/deployments/dep/chat/completions?api-version=\(ProviderKind.defaultAzureAPIVersion)")
        #expect(header(a, "api-key") == "sk-unit-KEY-1234" && header(a, "authorization") == nil)
        var pinned = azure
        pinned.apiVersion = "2025-01-01-preview"
        #expect(pinned.url(path: "/v1/chat/completions").hasSuffix("/chat/completions?api-version=2025-01-01-preview"))
        pinned.baseURL += "?api-version=2024-06-01"
        #expect(pinned.url(path: "/v1/chat/completions") == "https://res.openai.azure.com/openai/deployments/dep/chat/completions?api-version=2024-06-01")

        let claude = ProviderSettings(name: "claude", kind: .anthropic, secret: key)
        let c = claude.httpRequest(for: try engineRequest(.anthropic, model: "claude-haiku", stream: true), nowNanos: 0)
        #expect(c.url == "https://api.anthropic.com/v1/messages")
        #expect(header(c, "x-api-key") == "sk-unit-KEY-1234" && header(c, "anthropic-version") == "2023-06-01")

        let gemini = ProviderSettings(name: "gem", kind: .gemini, secret: key, extraHeaders: [("X-Goog-Api-Key", "other"), ("x-extra", "1")])
        let s = gemini.httpRequest(for: try engineRequest(.gemini, model: "gemini-2.0-flash", stream: true), nowNanos: 0)
        #expect(s.url == "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse")
        // An extra header replaces the default of the same name instead of doubling it.
        #expect(s.headers.filter { $0.0.lowercased() == "x-goog-api-key" }.map(\.1) == ["other"] && header(s, "x-extra") == "1")
        #expect(gemini.url(path: "/models/g:generateContent") == "https://generativelanguage.googleapis.com/v1beta/models/g:generateContent")
    }

    @Test func secretFromFile() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("meshd-secret-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("openai.key").path
        try "  sk-file-KEY-5678\n\n".write(toFile: path, atomically: false, encoding: .utf8)

        chmod(path, 0o644)
        #expect(throws: ProviderSecretError.tooOpen(path: path, mode: 0o100644)) { try ProviderSecret.fromFile(path) }
        do {
            _ = try ProviderSecret.fromFile(path)
        } catch {
            #expect(error.description.contains(path) && error.description.contains("chmod 600"))
        }
        chmod(path, 0o640)
        #expect(throws: ProviderSecretError.self) { try ProviderSecret.fromFile(path) }

        chmod(path, 0o600)
        let secret = try ProviderSecret.fromFile(path)
        #expect(secret == ProviderSecret(key: "sk-file-KEY-5678", source: "key file \(path)"))
        for form in ["\(secret)", String(reflecting: secret), "\([secret])"] {
            #expect(!form.contains("sk-file") && form.contains("redacted"))
        }
        let settings = ProviderSettings(name: "oa", kind: .openai, secret: secret)
        #expect(!"\(settings)".contains("sk-file") && !String(reflecting: settings).contains("sk-file"))
        #expect(secret.redact("bad key sk-file-KEY-5678 given") == "bad key <redacted> given")

        try "sk-one\nsk-two\n".write(toFile: path, atomically: false, encoding: .utf8)
        #expect(throws: ProviderSecretError.malformed(source: "key file \(path)")) { try ProviderSecret.fromFile(path) }
        try "\n \n".write(toFile: path, atomically: false, encoding: .utf8)
        #expect(throws: ProviderSecretError.empty(source: "key file \(path)")) { try ProviderSecret.fromFile(path) }
        #expect(throws: ProviderSecretError.self) { try ProviderSecret.fromFile(dir.appendingPathComponent("missing").path) }
        #expect(throws: ProviderSecretError.self) { try ProviderSecret.fromFile(dir.path) }
    }

    @Test func secretFromEnvironment() throws {
        let env = ["ANTHROPIC_API_KEY": " sk-env-KEY-9\n", "EMPTY": ""]
        #expect(try ProviderSecret.fromEnvironment("ANTHROPIC_API_KEY", environment: env) == ProviderSecret(key: "sk-env-KEY-9", source: "environment variable ANTHROPIC_API_KEY"))
        #expect(throws: ProviderSecretError.missingEnvironment(name: "NOPE")) { try ProviderSecret.fromEnvironment("NOPE", environment: env) }
        #expect(throws: ProviderSecretError.empty(source: "environment variable EMPTY")) { try ProviderSecret.fromEnvironment("EMPTY", environment: env) }
        setenv("MESHD_CLOUD_TEST_KEY", "sk-process-env", 1)
        #expect(try ProviderSecret.fromEnvironment("MESHD_CLOUD_TEST_KEY") == ProviderSecret(key: "sk-process-env", source: "environment variable MESHD_CLOUD_TEST_KEY"))
    }

    @Test func healthRegistry() {
        let registry = ProviderHealthRegistry(policy: ProviderHealthPolicy(failureThreshold: 1, baseCooldownSeconds: 10))
        #expect(registry.isAvailable("x", nowNanos: 0) && registry.admit("x", nowNanos: 0))
        registry.record("x", .failure("boom"), nowNanos: 1_000_000_000)
        #expect(!registry.isAvailable("x", nowNanos: 2_000_000_000))
        #expect(registry.snapshots(["a"], nowNanos: 2_000_000_000).map(\.name) == ["a", "x"])
        #expect(registry.snapshot("x", nowNanos: 11_000_000_000).state == .halfOpen)
    }
}
