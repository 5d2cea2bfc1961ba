import Foundation
import MeshHTTPClient
import NIOCore
import Synchronization
import Testing

/// Request handler used by most tests: `/echo` echoes method, a header and the body.
@Sendable func echoRoute(_ request: ServerRequest, _ writer: ResponseWriter) -> ServerAction {
    if request.uri.hasPrefix("/echo") {
        var headers = [("x-method", request.method), ("x-uri", request.uri)]
        if let test = request.header("x-test") { headers.append(("X-Echo-Test", test)) }
        if let type = request.header("content-type") { headers.append(("x-echo-content-type", type)) }
        if request.header("expect") != nil { headers.append(("x-saw-expect", "1")) }
        let body = request.method == "GET" ? Array("hello".utf8) : request.body
        return .respond(status: 200, headers: headers, body: body)
    }
    return .respond(status: 404, headers: [], body: Array("not found".utf8))
}

/// Elapsed time of `body`.
func measure<T>(_ body: () async throws -> T) async rethrows -> (T, Duration) {
    let start = ContinuousClock.now
    let value = try await body()
    return (value, ContinuousClock.now - start)
}

/// Waits (bounded) until the client has freed every easy handle and callback context.
func expectNoLeaks(_ client: CurlHTTPClient, sourceLocation: SourceLocation = #_sourceLocation) async {
    let deadline = ContinuousClock.now + .seconds(2)
    while ContinuousClock.now < deadline, client.liveEasyHandleCount != 0 || client.liveTransferContextCount != 0 {
        try? await Task.sleep(for: .milliseconds(5))
    }
    #expect(client.liveEasyHandleCount == 0, sourceLocation: sourceLocation)
    #expect(client.liveTransferContextCount == 0, sourceLocation: sourceLocation)
}

/// Runs `body` against a fresh server and client, then tears both down.
func withServerAndClient(
    configuration: HTTPClientConfiguration = .init(connectTimeout: .seconds(2), firstByteTimeout: .seconds(5), idleTimeout: .seconds(5)),
    route: @escaping TestHTTPServer.Route = echoRoute,
    _ body: (TestHTTPServer, CurlHTTPClient) async throws -> Void
) async throws {
    let server = try await TestHTTPServer.start(route: route)
    let client = try CurlHTTPClient(configuration: configuration)
    do {
        try await body(server, client)
    } catch {
        client.shutdown()
        await server.shutdown()
        throw error
    }
    client.shutdown()
    await server.shutdown()
}

/// Routes that hand the writer to the test so it can drive the response step by step.
final class WriterMailbox: Sendable {
    let stream: AsyncStream<ResponseWriter>
    let continuation: AsyncStream<ResponseWriter>.Continuation

    init() {
        (stream, continuation) = AsyncStream.makeStream(of: ResponseWriter.self)
    }

    /// Next writer, or nil after `timeout`.
    func next(timeout: Duration = .seconds(2)) async -> ResponseWriter? {
        let stream = self.stream
        return await withTaskGroup(of: ResponseWriter?.self) { group in
            group.addTask {
                var iterator = stream.makeAsyncIterator()
                return await iterator.next()
            }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return nil
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first
        }
    }
}

@Suite(.serialized, .timeLimit(.minutes(1)))
struct CurlHTTPClientTests {
    @Test func bufferedGetAndPost() async throws {
        try await withServerAndClient { server, client in
            let (head, body) = try await client.execute(
                HTTPClientRequest(url: server.baseURL + "/echo?x=1", headers: [("X-Test", "abc")]))
            #expect(head.status == 200)
            #expect(head.header("x-method") == "GET")
            #expect(head.header("X-ECHO-TEST") == "abc")
            #expect(head.header("x-uri") == "/echo?x=1")
            #expect(head.header("content-length") == "5")
            #expect(String(decoding: body, as: UTF8.self) == "hello")

            // Bodies above curl's Expect threshold must go out immediately (no 100-continue wait).
            let payload = (0..<200_000).map { UInt8($0 % 253) }
            let ((postHead, postBody), elapsed) = try await measure {
                try await client.execute(HTTPClientRequest(
                    method: "POST", url: server.baseURL + "/echo",
                    headers: [("Content-Type", "application/octet-stream")], body: payload))
            }
            #expect(postHead.status == 200)
            #expect(postHead.header("x-method") == "POST")
            #expect(postHead.header("x-echo-content-type") == "application/octet-stream")
            #expect(postHead.header("x-saw-expect") == nil)
            #expect(postBody == payload)
            // No `Expect` reached the server (checked above); the bound only catches a stall. It is
            // wide: a CI run with every suite in parallel on 2 cores once took 3.5 s here.
            #expect(elapsed < .seconds(10))

            let (putHead, putBody) = try await client.execute(
                HTTPClientRequest(method: "PUT", url: server.baseURL + "/echo", body: Array("put-body".utf8)))
            #expect(putHead.header("x-method") == "PUT")
            #expect(putHead.header("x-echo-content-type") == nil)
            #expect(putBody == Array("put-body".utf8))

            let (emptyPostHead, emptyPostBody) = try await client.execute(
                HTTPClientRequest(method: "POST", url: server.baseURL + "/echo"))
            #expect(emptyPostHead.status == 200)
            #expect(emptyPostBody.isEmpty)

            let (deleteHead, _) = try await client.execute(HTTPClientRequest(method: "DELETE", url: server.baseURL + "/echo"))
            #expect(deleteHead.header("x-method") == "DELETE")

            let (missingHead, missingBody) = try await client.execute(HTTPClientRequest(url: server.baseURL + "/missing"))
            #expect(missingHead.status == 404)
            #expect(String(decoding: missingBody, as: UTF8.self) == "not found")
            await expectNoLeaks(client)
        }
    }

    @Test func invalidRequestsAreRejected() async throws {
        try await withServerAndClient { server, client in
            await #expect(throws: HTTPClientError.self) {
                _ = try await client.execute(
                    HTTPClientRequest(url: server.baseURL + "/echo", headers: [("X-Bad", "a\r\nInjected: 1")]))
            }
            await #expect(throws: HTTPClientError.self) {
                _ = try await client.execute(HTTPClientRequest(url: "ftp://127.0.0.1:\(server.port)/"))
            }
            #expect(server.snapshot.requests == 0)
            await expectNoLeaks(client)
        }
    }

    @Test func streamingDeliversEachChunkBeforeTheNextIsSent() async throws {
        let mailbox = WriterMailbox()
        try await withServerAndClient(route: { _, writer in
            writer.head(headers: [("content-type", "text/event-stream")])
            writer.chunk("one")
            mailbox.continuation.yield(writer)
            return .manual
        }) { server, client in
            let response = try await client.stream(HTTPClientRequest(url: server.baseURL + "/stream"))
            #expect(response.head.status == 200)
            #expect(response.head.header("Content-Type") == "text/event-stream")
            var iterator = response.makeAsyncIterator()
            // The server has sent only "one" and now waits for us.
            #expect(try await iterator.next().map { String(decoding: $0, as: UTF8.self) } == "one")
            let writer = try #require(await mailbox.next())
            for word in ["two", "three", "four"] {
                writer.chunk(word)
                #expect(try await iterator.next().map { String(decoding: $0, as: UTF8.self) } == word)
            }
            writer.end()
            #expect(try await iterator.next() == nil)
            #expect(try await iterator.next() == nil)
            await expectNoLeaks(client)
        }
    }

    /// The chunks one read brings reach a waiting consumer in one wake, joined, not one wake a
    /// chunk (coalescing off: this is about the hand-off alone).
    @Test func theChunksOfOneReadReachTheConsumerTogether() async throws {
        let mailbox = WriterMailbox()
        try await withServerAndClient(route: { _, writer in
            writer.head(headers: [("content-type", "text/event-stream")])
            mailbox.continuation.yield(writer)
            return .manual
        }) { server, client in
            let response = try await client.stream(HTTPClientRequest(url: server.baseURL + "/stream"))
            let writer = try #require(await mailbox.next())
            var iterator = response.makeAsyncIterator()
            let words = (0..<40).map { "w\($0);" }
            let sender = Task {
                try? await Task.sleep(for: .milliseconds(50))  // the consumer waits before the burst comes
                writer.burst(words)
            }
            var received = try #require(try await iterator.next())
            await sender.value
            let firstCount = String(decoding: received, as: UTF8.self).split(separator: ";").count
            writer.end()
            while let more = try await iterator.next() { received += more }
            #expect(String(decoding: received, as: UTF8.self) == words.joined())
            // One segment, one read: the first wake carries (nearly) all of it, not one chunk.
            #expect(firstCount >= 20, "the first delivery held \(firstCount) of \(words.count) chunks")
            await expectNoLeaks(client)
        }
    }

    /// A stream whose chunks come a millisecond apart is read in batches once its rate is known
    /// (``ReadCoalescer``): far fewer deliveries than chunks, every byte in order, the first chunk
    /// at once; the connection is reused afterwards, and a stream cancelled while its socket is
    /// left unread frees everything.
    @Test func aFastStreamIsReadInBatchesLosingNothing() async throws {
        let mailbox = WriterMailbox()
        let configuration = HTTPClientConfiguration(connectTimeout: .seconds(2), firstByteTimeout: .seconds(5), idleTimeout: .seconds(5),
                                                    streamCoalesce: .milliseconds(40))
        try await withServerAndClient(configuration: configuration, route: { request, writer in
            if request.uri.hasPrefix("/echo") { return echoRoute(request, writer) }
            writer.head(headers: [("content-type", "text/event-stream")])
            mailbox.continuation.yield(writer)
            return .manual
        }) { server, client in
            for cancelMidway in [false, true] {
                let response = try await client.stream(HTTPClientRequest(url: server.baseURL + "/stream"))
                let writer = try #require(await mailbox.next())
                var iterator = response.makeAsyncIterator()
                // The first chunk is never held (no rate is known yet).
                writer.chunk("c0;")
                let (got, waited) = try await measure { try await iterator.next() }
                #expect(got == Array("c0;".utf8))
                #expect(waited < .seconds(1))
                let count = 150
                let producer = Task {
                    for i in 1..<count {
                        writer.chunk("c\(i);")
                        try? await Task.sleep(for: .milliseconds(1))
                    }
                    if !cancelMidway { writer.end() }
                }
                let expected = (1..<count).map { "c\($0);" }.joined()
                var received: [UInt8] = []
                var deliveries = 0
                while let chunk = try await iterator.next() {
                    received += chunk
                    deliveries += 1
                    if cancelMidway, deliveries == 2 {
                        response.cancel()
                        break
                    }
                }
                await producer.value
                if cancelMidway {
                    await #expect(throws: HTTPClientError.cancelled) { _ = try await iterator.next() }
                    await expectNoLeaks(client)
                } else {
                    #expect(String(decoding: received, as: UTF8.self) == expected)
                    // ~150 ms of chunks in 40 ms batches; unbatched it would be one delivery a chunk.
                    #expect(deliveries <= count / 4, "\(deliveries) deliveries for \(count - 1) chunks")
                    await expectNoLeaks(client)
                    // The cached connection still works (its socket is not left snoozed).
                    let (head, body) = try await client.execute(HTTPClientRequest(method: "POST", url: server.baseURL + "/echo", body: Array("x".utf8)))
                    #expect(head.status == 200 && body == Array("x".utf8))
                    #expect(server.snapshot.connectionsAccepted == 1)
                }
            }
        }
    }

    @Test func sequentialRequestsReuseOneConnection() async throws {
        try await withServerAndClient { server, client in
            for i in 0..<20 {
                let (head, body) = try await client.execute(
                    HTTPClientRequest(method: "POST", url: server.baseURL + "/echo", body: Array("req \(i)".utf8)))
                #expect(head.status == 200)
                #expect(body == Array("req \(i)".utf8))
            }
            let stats = server.snapshot
            #expect(stats.requests == 20)
            #expect(stats.connectionsAccepted == 1)
            await expectNoLeaks(client)
        }
    }

    @Test func connectionRefusedFailsQuickly() async throws {
        // A port held by a bound socket that does not listen refuses connections, and no other
        // test can take it meanwhile (a closed server's port could be reused by a parallel test).
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        try #require(fd >= 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0 }
        }
        try #require(bound)
        let port = Int(UInt16(bigEndian: addr.sin_port))
        let client = try CurlHTTPClient()
        defer { client.shutdown() }
        let (error, elapsed) = await measure { () async -> HTTPClientError? in
            do {
                _ = try await client.execute(HTTPClientRequest(url: "http://127.0.0.1:\(port)/"))
                return nil
            } catch {
                return error as? HTTPClientError
            }
        }
        guard case .connectFailed = error else {
            Issue.record("expected connectFailed, got \(String(describing: error))")
            return
        }
        #expect(elapsed < .seconds(3))  // refused at once, not after a connect timeout
        await expectNoLeaks(client)
    }

    @Test func connectTimeoutIsAConnectFailure() async throws {
        let blackhole = try BlackholeListener()
        let client = try CurlHTTPClient(configuration: .init(connectTimeout: .milliseconds(200), firstByteTimeout: .seconds(5)))
        defer { client.shutdown() }
        let (error, elapsed) = await measure { () async -> HTTPClientError? in
            do {
                _ = try await client.execute(HTTPClientRequest(url: "http://127.0.0.1:\(blackhole.port)/"))
                return nil
            } catch {
                return error as? HTTPClientError
            }
        }
        guard case .connectFailed = error else {
            Issue.record("expected connectFailed, got \(String(describing: error))")
            return
        }
        #expect(elapsed >= .milliseconds(190))
        #expect(elapsed < .milliseconds(2500))  // the connect timeout fired, not the 5 s first-byte one
        await expectNoLeaks(client)
    }

    @Test func idleClientDoesNotSpin() async throws {
        try await withServerAndClient { server, client in
            _ = try await client.execute(HTTPClientRequest(url: server.baseURL + "/echo"))
            let before = client.loopThreadCPUTime
            try await Task.sleep(for: .milliseconds(500))
            let used = client.loopThreadCPUTime - before
            #expect(used < .milliseconds(50), "CPU used while idle: \(used)")
        }
    }

    /// While requests wait (one for its answer, one for a connection to the host, which curl
    /// keeps no timer for), the loop sleeps. It used to poll every millisecond whenever curl's
    /// timer fired and curl set no new one: up to ~1,000 wakes a second, until some other event.
    @Test func aWaitingLoopSleeps() async throws {
        let mailbox = WriterMailbox()
        let configuration = HTTPClientConfiguration(connectTimeout: .seconds(2), firstByteTimeout: .seconds(5), idleTimeout: .seconds(5),
                                                    maxConnectionsPerHost: 1)
        try await withServerAndClient(configuration: configuration, route: { request, writer in
            if request.uri.hasPrefix("/hold") {
                mailbox.continuation.yield(writer)
                return .manual
            }
            return echoRoute(request, writer)
        }) { server, client in
            _ = try await client.execute(HTTPClientRequest(url: server.baseURL + "/echo"))  // the connection to reuse
            async let held = client.execute(HTTPClientRequest(url: server.baseURL + "/hold"))
            let writer = try #require(await mailbox.next())
            async let queued = client.execute(HTTPClientRequest(url: server.baseURL + "/echo?queued"))  // waits for the connection
            try await Task.sleep(for: .milliseconds(20))
            let before = client.loopWakeups
            try await Task.sleep(for: .milliseconds(400))
            let wakes = client.loopWakeups - before
            writer.head()
            writer.end()
            #expect(try await held.0.status == 200)
            #expect(try await queued.0.status == 200)
            #expect(wakes <= 20, "the loop woke \(wakes) times in 400 ms")
            await expectNoLeaks(client)
        }
    }

    @Test func theLoopThreadIsNamed() async throws {
        try await withServerAndClient { server, client in
            _ = try await client.execute(HTTPClientRequest(url: server.baseURL + "/echo"))
            let tasks = try FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")
            let names = tasks.compactMap { try? String(contentsOfFile: "/proc/self/task/\($0)/comm", encoding: .utf8) }
            #expect(names.contains("meshd-curl\n"), "thread names: \(Set(names))")
        }
    }

    @Test func tlsFailureIsAConnectFailure() async throws {
        let configuration = HTTPClientConfiguration(caFile: "/nonexistent/meshd-test-ca.pem")
        try await withServerAndClient(configuration: configuration) { server, client in
            do {
                _ = try await client.execute(HTTPClientRequest(url: "https://127.0.0.1:\(server.port)/echo"))
                Issue.record("TLS to a plain HTTP server succeeded")
            } catch let error as HTTPClientError {
                guard case .connectFailed = error else {
                    Issue.record("expected connectFailed, got \(error)")
                    return
                }
            }
            await expectNoLeaks(client)
        }
    }

    @Test func firstByteTimeout() async throws {
        let configuration = HTTPClientConfiguration(firstByteTimeout: .milliseconds(300), idleTimeout: .seconds(5))
        try await withServerAndClient(configuration: configuration, route: { _, _ in .manual }) { server, client in
            let (_, elapsed) = await measure {
                await #expect(throws: HTTPClientError.firstByteTimeout) {
                    _ = try await client.execute(HTTPClientRequest(url: server.baseURL + "/hang"))
                }
            }
            #expect(elapsed >= .milliseconds(290))
            #expect(elapsed < .milliseconds(2500))  // not the 5 s idle timeout

            // Per-request override: a longer window than the configured one, so only a lower bound
            // (which a loaded machine cannot break) tells whether the override was used.
            let (_, overridden) = await measure {
                await #expect(throws: HTTPClientError.firstByteTimeout) {
                    _ = try await client.stream(
                        HTTPClientRequest(url: server.baseURL + "/hang", firstByteTimeout: .milliseconds(900)))
                }
            }
            #expect(overridden >= .milliseconds(890))
            #expect(overridden < .milliseconds(4500))
            // The timed-out transfers closed their connections.
            #expect(await server.waitFor { $0.connectionsClosed == 2 })
            await expectNoLeaks(client)
        }
    }

    @Test func idleTimeoutBetweenChunks() async throws {
        let configuration = HTTPClientConfiguration(firstByteTimeout: .seconds(5), idleTimeout: .milliseconds(300))
        try await withServerAndClient(configuration: configuration, route: { _, writer in
            writer.head()
            writer.chunk("first")
            return .manual
        }) { server, client in
            let response = try await client.stream(HTTPClientRequest(url: server.baseURL + "/idle"))
            var iterator = response.makeAsyncIterator()
            #expect(try await iterator.next() == Array("first".utf8))
            let (_, elapsed) = await measure {
                await #expect(throws: HTTPClientError.idleTimeout) {
                    _ = try await iterator.next()
                }
            }
            #expect(elapsed >= .milliseconds(200))  // part of the window may have passed before the first next()
            #expect(elapsed < .milliseconds(2500))  // the idle timeout fired, not the 5 s first-byte one
            // Errors are sticky.
            await #expect(throws: HTTPClientError.idleTimeout) { _ = try await iterator.next() }
            #expect(await server.waitFor { $0.connectionsClosed == 1 })
            await expectNoLeaks(client)
        }
    }

    @Test func truncatedBodyThrowsFromIterator() async throws {
        try await withServerAndClient(route: { _, writer in
            writer.head(headers: [("content-length", "100")])
            writer.chunk("only ten b")
            writer.close()
            return .manual
        }) { server, client in
            let response = try await client.stream(HTTPClientRequest(url: server.baseURL + "/short"))
            var received: [UInt8] = []
            do {
                for try await chunk in response { received += chunk }
                Issue.record("truncated body ended without an error")
            } catch let error as HTTPClientError {
                guard case .transport = error else {
                    Issue.record("expected transport error, got \(error)")
                    return
                }
            }
            #expect(received == Array("only ten b".utf8))
            await #expect(throws: HTTPClientError.self) { _ = try await client.execute(HTTPClientRequest(url: server.baseURL + "/short")) }
            await expectNoLeaks(client)
        }
    }

    @Test func cancellationClosesTheConnection() async throws {
        try await withServerAndClient(route: { request, writer in
            if request.uri == "/hang" { return .manual }
            writer.head()
            writer.chunk("first")
            return .manual
        }) { server, client in
            // 1. Task cancellation while iterating the body.
            let started = Mutex(false)
            let task = Task {
                let response = try await client.stream(HTTPClientRequest(url: server.baseURL + "/stream"))
                for try await _ in response {
                    started.withLock { $0 = true }
                }
            }
            let deadline = ContinuousClock.now + .seconds(2)
            while !started.withLock({ $0 }), ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(5))
            }
            #expect(started.withLock { $0 })
            let cancelledAt = ContinuousClock.now
            task.cancel()
            await #expect(throws: HTTPClientError.cancelled) { try await task.value }
            #expect(await server.waitFor(timeout: .seconds(5)) { $0.connectionsClosed == 1 })
            if let closedAt = server.snapshot.lastClose { #expect(closedAt - cancelledAt < .seconds(1)) }

            // 2. Explicit cancel().
            let response = try await client.stream(HTTPClientRequest(url: server.baseURL + "/stream"))
            var iterator = response.makeAsyncIterator()
            #expect(try await iterator.next() == Array("first".utf8))
            response.cancel()
            await #expect(throws: HTTPClientError.cancelled) { _ = try await iterator.next() }
            #expect(await server.waitFor(timeout: .seconds(5)) { $0.connectionsClosed == 2 })

            // 3. The consumer drops the response.
            do {
                let dropped = try await client.stream(HTTPClientRequest(url: server.baseURL + "/stream"))
                #expect(dropped.head.status == 200)
            }
            #expect(await server.waitFor(timeout: .seconds(5)) { $0.connectionsClosed == 3 })

            // 4. Task cancellation while waiting for the head.
            let headTask = Task { try await client.stream(HTTPClientRequest(url: server.baseURL + "/hang")) }
            #expect(await server.waitFor { $0.requests == 4 })
            headTask.cancel()
            let (_, elapsed) = await measure {
                await #expect(throws: HTTPClientError.cancelled) { _ = try await headTask.value }
            }
            #expect(elapsed < .seconds(3))  // cancelled, not the first-byte timeout
            #expect(await server.waitFor(timeout: .seconds(5)) { $0.connectionsClosed == 4 })
            await expectNoLeaks(client)
        }
    }

    @Test func slowConsumerBackpressure() async throws {
        let limit = 1 << 20
        let curlChunk = 16 * 1024  // CURL_MAX_WRITE_SIZE
        let total = 64 << 20
        let configuration = HTTPClientConfiguration(firstByteTimeout: .seconds(5), idleTimeout: .seconds(5), maxBufferedBytes: limit)
        try await withServerAndClient(configuration: configuration, route: { _, _ in .pump(total: total) }) { server, client in
            let response = try await client.stream(HTTPClientRequest(url: server.baseURL + "/big"))
            // Consumer stalls: the client must stop reading instead of buffering the stream (without spinning).
            try await Task.sleep(for: .milliseconds(200))
            let cpuBefore = client.loopThreadCPUTime
            try await Task.sleep(for: .milliseconds(300))
            let cpuWhileStalled = client.loopThreadCPUTime - cpuBefore
            #expect(cpuWhileStalled < .milliseconds(60), "CPU used while paused: \(cpuWhileStalled)")
            #expect(response.pauseCount >= 1)
            #expect(response.bufferedByteCount <= limit + curlChunk)
            let pumpedWhileStalled = server.snapshot.pumpedBytes
            #expect(pumpedWhileStalled < total / 2, "server was not blocked: \(pumpedWhileStalled) bytes sent")

            var received = 0
            var nextStall = 16 << 20
            var mismatch = false
            for try await chunk in response {
                let matches = chunk.withUnsafeBytes { bytes in
                    TestPattern.block.withUnsafeBytes { pattern in
                        let start = received % TestPattern.period
                        return bytes.count <= TestPattern.blockSize
                            && memcmp(bytes.baseAddress!, pattern.baseAddress! + start, bytes.count) == 0
                    }
                }
                if !matches, !mismatch {
                    mismatch = true
                    let start = received % TestPattern.period
                    let firstBad = chunk.indices.first { chunk[$0] != UInt8((received + $0) % TestPattern.period) }
                    Issue.record("mismatch at offset \(received) count \(chunk.count) start \(start) firstBad \(String(describing: firstBad)) bytes \(chunk.prefix(8)) pauses \(response.pauseCount)")
                }
                received += chunk.count
                if received >= nextStall {
                    nextStall += 16 << 20
                    try await Task.sleep(for: .milliseconds(50))
                }
            }
            #expect(!mismatch)
            #expect(received == total)
            #expect(response.peakBufferedByteCount <= limit + curlChunk)
            #expect(response.pauseCount >= 2)
            await expectNoLeaks(client)
        }
    }

    @Test func fiftyConcurrentRequests() async throws {
        try await withServerAndClient(route: { request, writer in
            // Answer a little later so that requests overlap.
            let body = request.body
            writer.channel.eventLoop.scheduleTask(in: .milliseconds(20)) {
                writer.head(headers: [("content-length", "\(body.count)")])
                writer.chunk(body)
                writer.end()
            }
            return .manual
        }) { server, client in
            let results = try await withThrowingTaskGroup(of: Bool.self) { group in
                for i in 0..<50 {
                    group.addTask {
                        let payload = Array("request number \(i)".utf8)
                        let (head, body) = try await client.execute(
                            HTTPClientRequest(method: "POST", url: server.baseURL + "/c", body: payload))
                        return head.status == 200 && body == payload
                    }
                }
                var all: [Bool] = []
                for try await ok in group { all.append(ok) }
                return all
            }
            #expect(results.count == 50)
            #expect(results.allSatisfy { $0 })
            let stats = server.snapshot
            #expect(stats.requests == 50)
            #expect(stats.connectionsAccepted <= 16)
            #expect(stats.connectionsAccepted > 1)
            await expectNoLeaks(client)
        }
    }

    @Test func shutdownFailsInFlightRequestsPromptly() async throws {
        let server = try await TestHTTPServer.start(route: { request, writer in
            if request.uri == "/stream" {
                writer.head()
                writer.chunk("first")
            }
            return .manual
        })
        let client = try CurlHTTPClient(configuration: .init(firstByteTimeout: .seconds(10), idleTimeout: .seconds(10)))
        let tasks = (0..<5).map { _ in
            Task { try await client.execute(HTTPClientRequest(url: server.baseURL + "/hang")) }
        }
        let response = try await client.stream(HTTPClientRequest(url: server.baseURL + "/stream"))
        var iterator = response.makeAsyncIterator()
        #expect(try await iterator.next() == Array("first".utf8))
        #expect(await server.waitFor { $0.requests == 6 })

        let (_, elapsed) = measureSync { client.shutdown() }
        #expect(elapsed < .seconds(3))  // the hung transfers have 10 s timeouts
        for task in tasks {
            await #expect(throws: HTTPClientError.shutdown) { _ = try await task.value }
        }
        await #expect(throws: HTTPClientError.shutdown) { _ = try await iterator.next() }
        await #expect(throws: HTTPClientError.shutdown) {
            _ = try await client.execute(HTTPClientRequest(url: server.baseURL + "/echo"))
        }
        client.shutdown()  // idempotent
        #expect(client.liveEasyHandleCount == 0)
        #expect(client.liveTransferContextCount == 0)
        #expect(await server.waitFor(timeout: .seconds(5)) { $0.connectionsClosed == 6 })
        await server.shutdown()
    }
}

/// CPU time consumed by the whole test process so far.

/// A listening socket that never accepts, with its (tiny) accept queue filled, so that further connects
/// hang in SYN retransmission: the only way to provoke a connect timeout on loopback.
final class BlackholeListener {
    let port: Int
    private var fds: [Int32] = []

    init() throws {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard listener >= 0 else { throw POSIXError(.EIO) }
        fds.append(listener)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer -> Bool in
                bind(listener, pointer, length) == 0 && listen(listener, 0) == 0
                    && getsockname(listener, pointer, &length) == 0
            }
        }
        guard bound else { throw POSIXError(.EADDRINUSE) }
        port = Int(UInt16(bigEndian: address.sin_port))
        // Fill the accept queue (backlog 0 admits one, plus one in flight).
        for _ in 0..<3 {
            let client = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
            fds.append(client)
            _ = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(client, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
        }
        usleep(50_000)
    }

    deinit {
        for fd in fds { close(fd) }
    }
}

func measureSync<T>(_ body: () throws -> T) rethrows -> (T, Duration) {
    let start = ContinuousClock.now
    let value = try body()
    return (value, ContinuousClock.now - start)
}
