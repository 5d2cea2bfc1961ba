import Foundation
import MeshCloud
import MeshCore
import MeshHTTPClient
import Testing

/// Collects a whole cloud stream; returns its bytes and the error that ended it, if any.
func drain(_ stream: CloudStream) async -> ([UInt8], CloudError?) {
    var bytes: [UInt8] = []
    do {
        for try await chunk in stream { bytes += chunk }
        return (bytes, nil)
    } catch let e as CloudError {
        return (bytes, e)
    } catch {
        Issue.record("unexpected error type: \(error)")
        return (bytes, nil)
    }
}

/// Runs `body`, which must throw a ``CloudError``, and returns it.
func cloudError(_ body: () async throws -> Void) async -> CloudError? {
    do {
        try await body()
        Issue.record("expected a CloudError")
    } catch let e as CloudError {
        return e
    } catch {
        Issue.record("unexpected error type: \(error)")
    }
    return nil
}

@Suite(.timeLimit(.minutes(2)))
struct FakeCloudDialectTests {
    /// Prompt words of ``engineRequest``: "be brief" + "say three words".
    static let promptWords = 5

    @Test(arguments: ProviderKind.allCases)
    func wholeAnswer(kind: ProviderKind) async throws {
        try await withCloud { cloud, client, log, _ in
            let provider = cloud.provider(kind)
            let r = try await client.send(try engineRequest(kind, model: "m-\(kind)", stream: false), to: provider, model: "m-\(kind)", id: "chatcmpl-t")
            #expect(r.status == 200)
            #expect(r.body["choices"]?[0]?["message"]?["content"] == "tok0 tok1 tok2")
            #expect(r.usage == CloudUsage(promptTokens: Self.promptWords, completionTokens: 3))
            #expect(r.body["usage"]?["total_tokens"]?.intValue == Self.promptWords + 3)
            let stats = try await cloud.stats(client.http)
            #expect(stats["total"]?.intValue == 1 && stats["unauthorized"]?.intValue == 0)
            #expect(!log.text.contains(goodKey))
        }
    }

    @Test(arguments: ProviderKind.allCases)
    func streamedAnswer(kind: ProviderKind) async throws {
        try await withCloud { cloud, client, log, _ in
            let stream = try await client.stream(try engineRequest(kind, model: "m", stream: true), to: cloud.provider(kind), model: "m", id: "chatcmpl-s")
            #expect(stream.head.status == 200)
            let (bytes, error) = await drain(stream)
            #expect(error == nil)
            let parsed = parseOpenAISSE(bytes)
            #expect(parsed.content == "tok0 tok1 tok2")
            #expect(parsed.done && parsed.finish == "length")
            #expect(parsed.usage == CloudUsage(promptTokens: Self.promptWords, completionTokens: 3))
            #expect(stream.usage == parsed.usage && stream.completed)
            #expect(client.health.snapshot(cloud.provider(kind).name, nowNanos: 0).consecutiveFailures == 0)
            #expect(!log.text.contains(goodKey))
        }
    }

    /// Bedrock's answer is 403: the fake recomputes the SigV4 signature, which the wrong secret
    /// access key does not match.
    @Test(arguments: ProviderKind.allCases)
    func wrongKeyIs401WithoutTheKey(kind: ProviderKind) async throws {
        try await withCloud { cloud, client, log, _ in
            let provider = cloud.provider(kind, key: wrongKey)
            for stream in [false, true] {
                let req = try engineRequest(kind, model: "m", stream: stream)
                let error = await cloudError {
                    if stream { _ = try await client.stream(req, to: provider, model: "m", id: "i") } else { _ = try await client.send(req, to: provider, model: "m", id: "i") }
                }
                let status = kind == .bedrock ? 403 : 401
                guard case .http(status, let message) = error else {
                    Issue.record("expected HTTP \(status), got \(String(describing: error))")
                    continue
                }
                // The fake quotes the key it got; the message keeps the text and drops the key.
                if kind == .bedrock {
                    #expect(message.hasPrefix("InvalidSignatureException: The request signature we calculated does not match"), "\(message)")
                } else {
                    #expect(message.contains("Incorrect API key provided"))
                }
                #expect(!message.contains(wrongKey))
            }
            #expect(try await cloud.stats(client.http)["unauthorized"]?.intValue == 2)
            #expect(log.text.contains("provider") && log.text.contains("\(kind == .bedrock ? 403 : 401)") && !log.text.contains(wrongKey))
        }
    }
}

@Suite(.timeLimit(.minutes(2)))
struct FakeCloudConcurrencyTests {
    /// 100 requests at once, half streamed, over the four dialects: every answer whole, every
    /// request counted by the fake.
    @Test func hundredConcurrentRequests() async throws {
        try await withCloud { cloud, client, _, _ in
            let ok = try await withThrowingTaskGroup(of: Bool.self) { group in
                for i in 0..<100 {
                    let kind = ProviderKind.allCases[i % 4]
                    let stream = i % 2 == 0
                    let req = try engineRequest(kind, model: "m", stream: stream)
                    group.addTask {
                        if stream {
                            let (bytes, error) = await drain(try await client.stream(req, to: cloud.provider(kind), model: "m", id: "i"))
                            return error == nil && parseOpenAISSE(bytes).content == "tok0 tok1 tok2"
                        }
                        let r = try await client.send(req, to: cloud.provider(kind), model: "m", id: "i")
                        return r.body["choices"]?[0]?["message"]?["content"] == "tok0 tok1 tok2"
                    }
                }
                return try await group.reduce(0) { $0 + ($1 ? 1 : 0) }
            }
            #expect(ok == 100)
            let stats = try await cloud.stats(client.http)
            #expect(stats["total"]?.intValue == 100 && stats["by_path"]?["/v1/messages"]?.intValue == 25)
        }
    }
}

@Suite(.timeLimit(.minutes(2)))
struct FakeCloudTLSTests {
    /// The CA file set on one request is trusted for that request only; a kept-alive connection
    /// verified with it is not reused for a request without it.
    @Test func perRequestCAFile() async throws {
        try await withCloud { cloud, client, _, _ in
            let url = cloud.baseURL + "/_stats"
            let (head, _) = try await client.http.execute(HTTPClientRequest(url: url, caFile: TestCA.caFile))
            #expect(head.status == 200)
            for caFile in [nil, TestCA.otherCAFile] {
                do {
                    _ = try await client.http.execute(HTTPClientRequest(url: url, caFile: caFile))
                    Issue.record("TLS with CA file \(caFile ?? "(system)") succeeded")
                } catch let e as HTTPClientError {
                    guard case .connectFailed(let message) = e else {
                        Issue.record("expected a connect failure, got \(e)")
                        continue
                    }
                    #expect(message.lowercased().contains("certificate"), "\(message)")
                }
            }
            // Trusted again, on the same client.
            #expect(try await client.http.execute(HTTPClientRequest(url: url, caFile: TestCA.caFile)).0.status == 200)
        }
    }

    @Test func providerWithoutTheCAIsATransportFailure() async throws {
        try await withCloud { cloud, client, _, _ in
            let provider = cloud.provider(.openai, caFile: nil)
            let error = await cloudError { _ = try await client.send(try engineRequest(.openai, model: "m", stream: false), to: provider, model: "m", id: "i") }
            guard case .transport(let reason) = error else {
                Issue.record("expected a transport failure, got \(String(describing: error))")
                return
            }
            #expect(reason.contains("connect failed"))
            #expect(client.health.snapshot(provider.name, nowNanos: 0).consecutiveFailures == 1)
            let stats = try await cloud.stats(client.http)
            #expect(stats["total"]?.intValue == 0)
        }
    }
}

@Suite(.timeLimit(.minutes(2)))
struct FakeCloudFailureTests {
    /// Streams 8 tokens of `model` (a failure injected by its name) from the fake's `kind`
    /// endpoint; returns the provider, the stream, its bytes, the error that ended it and the
    /// provider's health after it.
    func streamInjected(_ kind: ProviderKind, _ model: String, _ cloud: FakeCloud, _ client: CloudClient, _ clock: TestClock) async throws
        -> (ProviderSettings, CloudStream, [UInt8], CloudError?, ProviderHealthSnapshot) {
        let provider = cloud.provider(kind, model: model)
        let stream = try await client.stream(try engineRequest(kind, model: model, stream: true, maxTokens: 8), to: provider, model: "x", id: "i")
        let (bytes, error) = await drain(stream)
        return (provider, stream, bytes, error, client.health.snapshot(provider.name, nowNanos: clock.nowNanos()))
    }

    @Test func rateLimitHonoursRetryAfter() async throws {
        try await withCloud { cloud, client, _, clock in
            let provider = cloud.provider(.anthropic)
            let error = await cloudError { _ = try await client.send(try engineRequest(.anthropic, model: "c-fail-429", stream: false), to: provider, model: "c", id: "i") }
            #expect(error == .rateLimited(retryAfter: 2))
            let now = clock.nowNanos()
            let snap = client.health.snapshot(provider.name, nowNanos: now)
            #expect(snap.state == .open && !snap.available)
            let until = try #require(snap.cooldownUntilNanos)
            #expect(until > now && until <= now + 2_000_000_000)
            clock.advance(seconds: 1)
            #expect(!client.health.isAvailable(provider.name, nowNanos: clock.nowNanos()))
            clock.advance(seconds: 1.1)
            #expect(client.health.snapshot(provider.name, nowNanos: clock.nowNanos()).state == .halfOpen)
            #expect(client.health.admit(provider.name, nowNanos: clock.nowNanos()))
            #expect(!client.health.admit(provider.name, nowNanos: clock.nowNanos()))  // one probe only
            // The probe succeeds: closed again.
            _ = try await client.send(try engineRequest(.anthropic, model: "c", stream: false), to: provider, model: "c", id: "i")
            #expect(client.health.snapshot(provider.name, nowNanos: clock.nowNanos()).state == .closed)
        }
    }

    @Test func overloadedWithRetryAfterCoolsDownToo() async throws {
        try await withCloud { cloud, client, _, clock in
            let provider = cloud.provider(.anthropic)
            let error = await cloudError { _ = try await client.send(try engineRequest(.anthropic, model: "c-fail-529", stream: false), to: provider, model: "c", id: "i") }
            #expect(error == .rateLimited(retryAfter: 3))
            let now = clock.nowNanos()
            let until = try #require(client.health.snapshot(provider.name, nowNanos: now).cooldownUntilNanos)
            #expect(until > now + 2_000_000_000 && until <= now + 3_000_000_000)
        }
    }

    @Test func rateLimitedStream() async throws {
        try await withCloud { cloud, client, _, _ in
            let error = await cloudError { _ = try await client.stream(try engineRequest(.gemini, model: "g-fail-429", stream: true), to: cloud.provider(.gemini), model: "g", id: "i") }
            #expect(error == .rateLimited(retryAfter: 2))
        }
    }

    @Test func serverErrorsOpenTheCircuit() async throws {
        try await withCloud { cloud, client, log, clock in
            let provider = cloud.provider(.openai)
            for i in 1...3 {
                let error = await cloudError { _ = try await client.send(try engineRequest(.openai, model: "gpt-fail-500", stream: i == 2), to: provider, model: "gpt", id: "i") }
                guard case .http(500, let message) = error else {
                    Issue.record("expected HTTP 500, got \(String(describing: error))")
                    return
                }
                #expect(message.contains("server had an error"))
                let snap = client.health.snapshot(provider.name, nowNanos: clock.nowNanos())
                #expect(snap.consecutiveFailures == i && snap.lastError?.contains("500") == true)
                #expect(snap.state == (i < 3 ? .closed : .open))
            }
            #expect(log.text.contains("HTTP 500"))
        }
    }

    @Test(arguments: ProviderKind.allCases)
    func cutStream(kind: ProviderKind) async throws {
        try await withCloud { cloud, client, _, clock in
            let (provider, stream, bytes, error, health) = try await streamInjected(kind, "x-cut-stream", cloud, client, clock)
            #expect(error == .cut)
            let parsed = parseOpenAISSE(bytes)
            #expect(parsed.content == "tok0 tok1 tok2 tok3" && !parsed.done && !stream.completed)
            #expect(health.consecutiveFailures == 1)
            // A whole answer cut short of its Content-Length is a transport failure.
            let whole = await cloudError { _ = try await client.send(try engineRequest(kind, model: "x-cut-stream", stream: false), to: provider, model: "x", id: "i") }
            guard case .transport = whole else {
                Issue.record("expected a transport failure, got \(String(describing: whole))")
                return
            }
        }
    }

    /// A provider's error event mid-stream reaches the client in OpenAI form and counts as a failure.
    @Test(arguments: ProviderKind.allCases)
    func errorEventInStream(kind: ProviderKind) async throws {
        try await withCloud { cloud, client, _, clock in
            let (_, stream, bytes, error, snap) = try await streamInjected(kind, "x-stream-error", cloud, client, clock)
            #expect(error == nil && stream.completed)
            #expect(stream.providerError?.contains("Overloaded") == true)
            let text = String(decoding: bytes, as: UTF8.self)
            #expect(text.contains("tok3") && text.contains(#"{"error":"#) && !text.contains("[DONE]"))
            #expect(snap.consecutiveFailures == 1 && snap.lastError?.contains("Overloaded") == true)
        }
    }

    /// The success is recorded when the end marker passes, even if the reader stops there.
    @Test func successRecordedAtTheEndMarker() async throws {
        try await withCloud { cloud, client, _, clock in
            let provider = cloud.provider(.anthropic)
            client.health.record(provider.name, .failure("earlier"), nowNanos: clock.nowNanos())
            let stream = try await client.stream(try engineRequest(.anthropic, model: "c", stream: true), to: provider, model: "c", id: "i")
            var bytes: [UInt8] = []
            for try await chunk in stream {
                bytes += chunk
                if parseOpenAISSE(bytes).done { break }
            }
            #expect(client.health.snapshot(provider.name, nowNanos: clock.nowNanos()).consecutiveFailures == 0)
        }
    }

    /// Chunks are handed on as they arrive: with 0.3 s before each provider chunk, six chunks follow
    /// the first content (1.8 s), so it comes long before the stream ends. A buffered stream hands
    /// everything on at the end (0 s apart); the bound is two of those gaps, so a loaded machine that
    /// delays the first chunk (a CI run measured 1.2 s) does not fail it.
    @Test func streamIsNotBuffered() async throws {
        try await withCloud(slowDelay: 0.3) { cloud, client, _, _ in
            let start = ContinuousClock.now
            let stream = try await client.stream(try engineRequest(.anthropic, model: "c-slow", stream: true, maxTokens: 4), to: cloud.provider(.anthropic), model: "c", id: "i")
            var firstContent: Duration?
            var bytes: [UInt8] = []
            for try await chunk in stream {
                bytes += chunk
                if firstContent == nil && parseOpenAISSE(bytes).content.hasPrefix("tok0") { firstContent = ContinuousClock.now - start }
            }
            let total = ContinuousClock.now - start
            let first = try #require(firstContent)
            #expect(total - first >= .milliseconds(600), "first content at \(first), end at \(total)")
            #expect(parseOpenAISSE(bytes).content == "tok0 tok1 tok2 tok3")
        }
    }

    /// A stream the caller cancels ends with `.cancelled` and is not held against the provider.
    @Test func cancelledStream() async throws {
        try await withCloud(slowDelay: 0.2) { cloud, client, _, clock in
            let provider = cloud.provider(.openai)
            #expect(client.admit(provider))
            let stream = try await client.stream(try engineRequest(.openai, model: "gpt-slow", stream: true, maxTokens: 20), to: provider, model: "gpt", id: "i")
            var iterator = stream.makeAsyncIterator()
            let first = try await iterator.next()
            #expect(first?.isEmpty == false)
            stream.cancel()
            let error = await cloudError { while try await iterator.next() != nil {} }
            #expect(error == .cancelled)
            #expect(client.healthSnapshots([provider]).map(\.consecutiveFailures) == [0])
            #expect(client.health.snapshot(provider.name, nowNanos: clock.nowNanos()).state == .closed)
        }
    }

    @Test func keyNeverLogged() async throws {
        try await withCloud { cloud, client, log, _ in
            for (kind, model) in [(ProviderKind.openai, "m"), (.azure, "m-fail-500"), (.anthropic, "m-fail-429"), (.gemini, "m-cut-stream"),
                                  (.bedrock, "m-stream-error")] {
                for key in [goodKey, wrongKey] {
                    let provider = cloud.provider(kind, key: key, model: model)
                    _ = try? await client.send(try engineRequest(kind, model: model, stream: false), to: provider, model: model, id: "i")
                    if let stream = try? await client.stream(try engineRequest(kind, model: model, stream: true), to: provider, model: model, id: "i") {
                        _ = await drain(stream)
                    }
                    // Every textual form of the settings is redacted too.
                    let forms = ["\(provider)", String(reflecting: provider), "\(provider.secret)", String(reflecting: provider.secret)]
                    var dumped = ""
                    dump(provider, to: &dumped)
                    for form in forms + [dumped] { #expect(!form.contains(key), "\(form)") }
                }
            }
            let text = log.text
            #expect(text.contains("openai") || text.contains("azure"))
            #expect(!text.contains(goodKey) && !text.contains(wrongKey))
        }
    }
}
