import MeshCore
import Testing

@Suite struct HostPortTests {
    @Test func parsesForms() {
        #expect(HostPort(parsing: "127.0.0.1:11435") == HostPort(host: "127.0.0.1", port: 11435))
        #expect(HostPort(parsing: "[::1]:8080") == HostPort(host: "::1", port: 8080))
        #expect(HostPort(parsing: "[fe80::1%eth0]:1") == HostPort(host: "fe80::1%eth0", port: 1))
        #expect(HostPort(parsing: ":9000") == HostPort(host: "0.0.0.0", port: 9000))
        #expect(HostPort(parsing: "localhost:0") == HostPort(host: "localhost", port: 0))
        #expect(HostPort(parsing: "example.org:65535") == HostPort(host: "example.org", port: 65535))
        #expect(HostPort(parsing: "  198.18.0.1:80\n") == HostPort(host: "198.18.0.1", port: 80))
    }

    @Test(arguments: ["127.0.0.1", "127.0.0.1:", "127.0.0.1:65536", "127.0.0.1:-1", "127.0.0.1:http", "127.0.0.1:80x",
                      "::1:80", "[::1]", "[::1]80", "[::1:80", "", ":", "host:1:2", "127.0.0.1:99999999999999999999"])
    func rejectsMalformed(_ text: String) {
        #expect(HostPort(parsing: text) == nil)
    }

    @Test func descriptionRoundTrips() {
        for text in ["127.0.0.1:11435", "[::1]:80", "example.org:1"] {
            let hp = HostPort(parsing: text)
            #expect(hp?.description == text)
            #expect(hp.flatMap { HostPort(parsing: $0.description) } == hp)
        }
    }

    @Test func loopback() {
        for h in ["127.0.0.1", "127.1.2.3", "127.255.255.255", "localhost", "LocalHost", "::1", "0:0:0:0:0:0:0:1"] {
            #expect(HostPort(host: h, port: 1).isLoopback, "\(h)")
        }
        for h in ["0.0.0.0", "128.0.0.1", "198.18.0.1", "127.0.0.256", "127.0.0", "127.0.0.1.5", "::", "example.org", "127.0.0.1x", "1127.0.0.1", ""] {
            #expect(!HostPort(host: h, port: 1).isLoopback, "\(h)")
        }
    }
}

@Suite struct ISO8601Tests {
    @Test(arguments: [
        (UInt64(0), "1970-01-01T00:00:00.000000000Z"),
        (1_709_164_800 * 1_000_000_000, "2024-02-29T00:00:00.000000000Z"),
        (1_709_251_199 * 1_000_000_000 + 999_999_999, "2024-02-29T23:59:59.999999999Z"),
        (1_709_251_200 * 1_000_000_000, "2024-03-01T00:00:00.000000000Z"),
        (1_795_435_200 * 1_000_000_000 + 500_000_000, "2026-11-23T12:00:00.500000000Z"),
        (951_868_800 * 1_000_000_000, "2000-03-01T00:00:00.000000000Z"),
        (946_684_799 * 1_000_000_000 + 1, "1999-12-31T23:59:59.000000001Z"),
        (1_700_000_000_123_456_789, "2023-11-14T22:13:20.123456789Z"),
        (47_541 * 86_400 * 1_000_000_000, "2100-03-01T00:00:00.000000000Z"),
        (UInt64.max, "2554-07-21T23:34:33.709551615Z"),
    ] as [(UInt64, String)])
    func knownInstants(_ nanos: UInt64, _ expected: String) {
        #expect(ISO8601.format(nanos: nanos) == expected)
    }

    @Test func civilDays() {
        #expect(ISO8601.civil(days: 0) == (1970, 1, 1))
        #expect(ISO8601.civil(days: -1) == (1969, 12, 31))
        #expect(ISO8601.civil(days: -719_162) == (1, 1, 1))
        #expect(ISO8601.civil(days: 11_016) == (2000, 2, 29))
        #expect(ISO8601.civil(days: 47_540) == (2100, 2, 28))
        #expect(ISO8601.civil(days: 47_541) == (2100, 3, 1))  // 2100 is not a leap year
    }
}

@Suite struct APIErrorTests {
    @Test func openAIShape() {
        let e = APIError.invalid("messages[0].role", "unknown role 'x'")
        #expect(identical(e.body(for: .openai), J(#"""
            {"error":{"message":"invalid 'messages[0].role': unknown role 'x'","type":"invalid_request_error","param":"messages[0].role","code":"invalid_value"}}
            """#)))
        let n = APIError(status: 500, message: "m\"x")
        #expect(n.body(for: .openai).compactString == #"{"error":{"message":"m\"x","type":"invalid_request_error","param":null,"code":null}}"#)
    }

    @Test func ollamaShape() {
        #expect(identical(APIError.unauthorized.body(for: .ollama), .object([("error", .string(APIError.unauthorized.message))])))
        #expect(APIError.tooLarge(limit: 10).body(for: .ollama).compactString == #"{"error":"request body exceeds the limit of 10 bytes"}"#)
    }

    @Test func commonErrors() {
        #expect(APIError.tooLarge(limit: 5).status == 413)
        #expect(APIError.tooLarge(limit: 5).code == "request_too_large")
        #expect(APIError.unauthorized.status == 401)
        #expect(APIError.unauthorized.type == "authentication_error")
        #expect(APIError.engineTimeout("x").status == 504)
        #expect(APIError.engineFailed("x").status == 502)
        #expect(APIError.noHealthyEngine("x").status == 503)
        #expect(APIError.missing("model").message == "missing required field 'model'")
        #expect(APIError.modelNotFound("a", available: []).message == "model 'a' not found; no models are available")
        let parse = jsonError("[1,")!
        #expect(APIError.badJSON(parse).message == "request body is not valid JSON: invalid JSON at byte 3: unexpected end of input")
        #expect(APIError.badJSON(parse).status == 400)
        #expect(APIError.missing("x").description == "400 missing required field 'x'")
    }
}

@Suite struct ClockTests {
    @Test func manualClock() {
        let c = ManualClock()
        #expect(c.nowNanos() == 1_700_000_000_000_000_000)
        c.advance(nanos: 5)
        #expect(c.nowNanos() == 1_700_000_000_000_000_005)
        c.advance(seconds: 1.5)
        #expect(c.nowNanos() == 1_700_000_001_500_000_005)
        let z = ManualClock(nanos: 0)
        z.advance(seconds: 0.001)
        #expect(z.nowNanos() == 1_000_000)
        let asProtocol: any WallClock = z
        #expect(asProtocol.nowNanos() == 1_000_000)
    }

    @Test func manualClockIsSafeAcrossTasks() async {
        let c = ManualClock(nanos: 0)
        await withTaskGroup(of: Void.self) { g in
            for _ in 0..<8 { g.addTask { for _ in 0..<1000 { c.advance(nanos: 1) } } }
        }
        #expect(c.nowNanos() == 8000)
    }
}

@Suite struct ConfigModelTests {
    @Test func engineKinds() {
        #expect(EngineKind.ollama.dialect == .ollama)
        #expect(EngineKind.openai.dialect == .openai)
        #expect(EngineKind.llamaCpp.dialect == .openai)
        #expect(EngineKind(rawValue: "llama.cpp") == .llamaCpp)
    }

    @Test func managedModelName() {
        #expect(EngineConfig(kind: .llamaCpp, model: "/models/tiny-q4.gguf").managedModelName == "tiny-q4")
        #expect(EngineConfig(kind: .llamaCpp, model: "/models/x.gguf", alias: "nice").managedModelName == "nice")
        #expect(EngineConfig(kind: .llamaCpp).managedModelName == nil)
    }

    @Test func defaults() {
        let c = MeshdConfig(nodeName: "n")
        #expect(c.http.listen.isLoopback)
        #expect(c.effectiveEngines == MeshdConfig.autodetectEngines)
        var d = c
        d.engines = []
        #expect(d.effectiveEngines.isEmpty)  // explicitly none is not "auto-detect"
        #expect(ConfigIssue(source: "f.yaml", key: "http.listen", reason: "bad", line: 3).description == "f.yaml:3: error: http.listen: bad")
    }
}

@Suite struct ASCIITests {
    @Test func equalsIgnoresOnlyASCIICase() {
        #expect(ASCII.equalsIgnoringCase("Content-Length", "content-length"))
        #expect(ASCII.equalsIgnoringCase("CONNECTION", "connection"))
        #expect(!ASCII.equalsIgnoringCase("content-lengthx", "content-length"))
        #expect(!ASCII.equalsIgnoringCase("content_length", "content-length"))
        // '[' (0x5B) and '{' (0x7B) differ by the case bit but are not letters.
        #expect(!ASCII.equalsIgnoringCase("[", "{"))
        #expect(!ASCII.equalsIgnoringCase("é", "É"))
    }

    @Test func containsFindsAnywhereIgnoringCase() {
        #expect(ASCII.contains("text/event-stream; charset=utf-8", "event-stream"))
        #expect(ASCII.contains("Application/X-NDJSON", "ndjson"))
        #expect(ASCII.contains("ndjson", "ndjson"))
        #expect(!ASCII.contains("application/json", "ndjson"))
        #expect(!ASCII.contains("ndjso", "ndjson"))
        #expect(ASCII.contains("", ""))
        #expect(!ASCII.contains("", "x"))
        #expect(ASCII.contains("aaab", "aab"))
    }
}
