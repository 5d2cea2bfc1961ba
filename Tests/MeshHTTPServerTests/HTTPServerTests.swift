import MeshCore
import MeshHTTPServer
import NIOCore
import NIOHTTP1
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The HTTP server over real loopback sockets. Serialized: several tests measure timing.
@Suite(.serialized, .timeLimit(.minutes(1)))
struct HTTPServerTests {
    // MARK: routing, framing, keep-alive

    @Test func routesRequestWithContentLength() async throws {
        try await withServer(extraHeaders: [("X-Node", "node-1")]) { server in
            let c = try server.connect()
            try await c.send("POST /echo/a?x=1&y=2 HTTP/1.1\r\nHost: t\r\nX-Test: hello\r\nContent-Length: 11\r\n\r\nhello world")
            let r = try await c.readResponse()
            #expect(r.version == "HTTP/1.1")
            #expect(r.status == 200)
            #expect(r.header("content-length") == "\(r.body.count)")
            #expect(r.headers("content-length").count == 1)
            #expect(r.header("transfer-encoding") == nil)
            #expect(r.header("content-type") == "application/json; charset=utf-8")
            #expect(r.header("x-node") == "node-1")
            #expect(!r.closes)
            let j = r.json
            #expect(j?["method"]?.stringValue == "POST")
            #expect(j?["path"]?.stringValue == "/echo/a")
            #expect(j?["query"]?.stringValue == "x=1&y=2")
            #expect(j?["body"]?.stringValue == "hello world")
            #expect(j?["x-test"]?.stringValue == "hello")
            #expect(j?["remotePort"]?.intValue != nil)

            // HEAD: the length of the body it would have, and no body; the connection stays usable.
            try await c.send("HEAD /echo HTTP/1.1\r\nHost: t\r\n\r\n")
            let h = try await c.readResponse(forHEAD: true)
            #expect(h.status == 200)
            #expect(Int(h.header("content-length") ?? "") ?? 0 > 0)
            try await c.send("GET /after-head HTTP/1.1\r\nHost: t\r\n\r\n")
            let after = try await c.readResponse()
            #expect(after.json?["path"]?.stringValue == "/after-head")
            #expect(after.json?["query"] == .null)
            #expect(after.json?["bodyLength"]?.intValue == 0)
            #expect(server.calls.value == 3)
        }
    }

    @Test func keepAliveServesThreeRequestsOnOneConnection() async throws {
        try await withServer { server in
            let c = try server.connect()
            var ports: Set<Int> = []
            for i in 1...3 {
                try await c.send("GET /echo/\(i) HTTP/1.1\r\nHost: t\r\n\r\n")
                let r = try await c.readResponse()
                #expect(r.status == 200)
                #expect(r.json?["path"]?.stringValue == "/echo/\(i)")
                #expect(!r.closes)
                if let p = r.json?["remotePort"]?.intValue { ports.insert(p) }
            }
            #expect(ports.count == 1)
            #expect(!c.eof)
            // Pipelined: three requests in one write, three responses in order.
            try await c.send((4...6).map { "POST /echo/\($0) HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\n\($0)" }.joined())
            for i in 4...6 {
                let r = try await c.readResponse()
                #expect(r.json?["path"]?.stringValue == "/echo/\(i)")
                #expect(r.json?["body"]?.stringValue == "\(i)")
            }
            #expect(server.calls.value == 6)
            #expect(server.server.inFlight == 0)
        }
    }

    @Test func pipelinedRequestsAreAnsweredInOrderWhateverTheirPace() async throws {
        // The first request is slow, the second streams, the third is whole: responses must come
        // back in request order, each complete, on one connection.
        let handler: Handler = { req in
            switch req.path {
            case "/slow":
                try? await Task.sleep(for: .milliseconds(150))
                return .json(.ok, ["path": "/slow"])
            case "/stream":
                return HTTPServerResponse(status: .ok, body: .stream { w in
                    for i in 0..<5 { try await w.write(Array("part\(i);".utf8)) }
                })
            default:
                return await echoHandler(req)
            }
        }
        try await withServer(maxBodyBytes: 64, handler) { server in
            let c = try server.connect()
            try await c.send("GET /slow HTTP/1.1\r\nHost: t\r\n\r\n"
                + "GET /stream HTTP/1.1\r\nHost: t\r\n\r\n"
                + "POST /echo/3 HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc")
            let first = try await c.readResponse()
            #expect(first.json?["path"]?.stringValue == "/slow")
            let second = try await c.readResponse()
            #expect(String(decoding: second.body, as: UTF8.self) == "part0;part1;part2;part3;part4;")
            let third = try await c.readResponse()
            #expect(third.json?["path"]?.stringValue == "/echo/3" && third.json?["body"]?.stringValue == "abc")
            #expect(!c.eof)
            #expect(server.server.inFlight == 0)

            // A pipelined request over the body limit is answered 413 in its turn, then the connection closes.
            try await c.send("GET /slow HTTP/1.1\r\nHost: t\r\n\r\n"
                + "POST /big HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n" + String(repeating: "x", count: 100)
                + "GET /never HTTP/1.1\r\nHost: t\r\n\r\n")
            #expect(try await c.readResponse().json?["path"]?.stringValue == "/slow")
            #expect(try await c.readResponse().status == 413)
            try await c.readToEOF(timeout: .seconds(10))
            #expect(c.buffer.isEmpty)
            #expect(server.calls.value == 4)  // /never was not served
        }
        // A client that pipelines far more than it lets us answer is cut off, not buffered.
        try await withServer(maxBodyBytes: 64, handler) { server in
            let c = try server.connect()
            let flood = String(repeating: "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 60\r\n\r\n" + String(repeating: "y", count: 60), count: 20_000)
            // The server may cut us off mid-send (reset): that is the expected outcome, not a failure.
            try? await c.send("GET /slow HTTP/1.1\r\nHost: t\r\n\r\n" + flood, timeout: .seconds(10))
            _ = try? await c.readToEOF(timeout: .seconds(10))
            #expect(c.eof || c.reset)
            #expect(server.calls.value < 1000, "served \(server.calls.value) pipelined requests of a flood")
        }
    }

    @Test func connectionCloseIsHonoured() async throws {
        try await withServer { server in
            let c = try server.connect()
            try await c.send("GET /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            let r = try await c.readResponse()
            #expect(r.status == 200)
            #expect(r.closes)
            try await c.readToEOF(timeout: .seconds(10))
            #expect(c.buffer.isEmpty)

            // HTTP/1.0 without keep-alive closes too.
            let old = try server.connect()
            try await old.send("GET /echo HTTP/1.0\r\n\r\n")
            let o = try await old.readResponse()
            #expect(o.status == 200)
            try await old.readToEOF(timeout: .seconds(10))
        }
    }

    // MARK: body limits

    @Test func bodyOverLimitByContentLength() async throws {
        try await withServer(maxBodyBytes: 1024) { server in
            let c = try server.connect()
            // A good request first, so the 413 comes on a kept-alive connection.
            try await c.send("GET /echo HTTP/1.1\r\nHost: t\r\n\r\n")
            #expect(try await c.readResponse().status == 200)
            try await c.send("POST /v1/chat/completions?debug=1 HTTP/1.1\r\nHost: t\r\nContent-Length: 2048\r\n\r\n" + String(repeating: "a", count: 2048))
            let r = try await c.readResponse()
            #expect(r.status == 413)
            #expect(r.header("x-server-error") == "1")  // built by the responder's serverError
            #expect(r.json?["error"]?["code"]?.stringValue == "request_too_large")
            #expect(r.json?["error"]?["path"]?.stringValue == "/v1/chat/completions")
            #expect(r.json?["error"]?["message"]?.stringValue?.contains("1024") == true)
            #expect(r.closes)
            try await c.readToEOF(timeout: .seconds(2))
            #expect(server.calls.value == 1)  // the responder never saw the big request

            // Refused by the announced length alone: the 413 comes before any of the body is sent,
            // then meshd stops sending (EOF) while it still drops what the client sends.
            let huge = try server.connect()
            try await huge.send("POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: 100000000\r\n\r\n")
            let early = try await huge.readResponse()
            #expect(early.status == 413 && early.closes)
            try await huge.send(String(repeating: "c", count: 64 * 1024))
            try await huge.readToEOF(timeout: .seconds(2))
            #expect(server.calls.value == 1)

            // The server still serves others, and a body of exactly the limit is fine.
            let d = try server.connect()
            try await d.send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1024\r\n\r\n" + String(repeating: "b", count: 1024))
            let ok = try await d.readResponse()
            #expect(ok.status == 200)
            #expect(ok.json?["bodyLength"]?.intValue == 1024)
        }
    }

    @Test func chunkedBodyOverLimit() async throws {
        try await withServer(maxBodyBytes: 1024) { server in
            func chunk(_ n: Int, _ byte: Character) -> String { String(n, radix: 16) + "\r\n" + String(repeating: byte, count: n) + "\r\n" }
            let c = try server.connect()
            try await c.send("POST /api/chat HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in 0..<3 { try await c.send(chunk(400, "x")) }
            try await c.send("0\r\n\r\n")
            let r = try await c.readResponse()
            #expect(r.status == 413)
            #expect(r.json?["error"]?["path"]?.stringValue == "/api/chat")
            #expect(r.closes)
            try await c.readToEOF(timeout: .seconds(2))
            #expect(server.calls.value == 0)

            // A chunked body under the limit is assembled and delivered whole.
            let d = try server.connect()
            try await d.send("POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk(400, "y") + chunk(400, "z") + "0\r\n\r\n")
            let ok = try await d.readResponse()
            #expect(ok.status == 200)
            #expect(ok.json?["body"]?.stringValue == String(repeating: "y", count: 400) + String(repeating: "z", count: 400))
        }
    }

    @Test func expect100Continue() async throws {
        try await withServer(maxBodyBytes: 1024) { server in
            let c = try server.connect()
            try await c.send("POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
            let interim = try await c.readResponse()
            #expect(interim.status == 100)
            #expect(interim.version == "HTTP/1.1")
            #expect(server.calls.value == 0)
            try await c.send("12345")
            let r = try await c.readResponse()
            #expect(r.status == 200)
            #expect(r.json?["body"]?.stringValue == "12345")

            // Over the limit: no invitation to send the body, the 413 at once instead.
            let big = try server.connect()
            try await big.send("POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 4096\r\n\r\n")
            let refused = try await big.readResponse()
            #expect(refused.status == 413 && refused.closes)
        }
    }

    // MARK: streamed responses

    @Test func streamedChunksArriveOneByOne() async throws {
        let gate = Gate()
        let handler: Handler = { req in
            guard req.path == "/stream" else { return await echoHandler(req) }
            return HTTPServerResponse(status: .ok, headers: HTTPHeaders([("Content-Type", "text/event-stream"), ("Content-Length", "999")]), body: .stream { w in
                for i in 0..<3 {
                    try await gate.wait(for: i + 1)
                    try await w.write(Array("data: event \(i)\n\n".utf8))
                }
            })
        }
        try await withServer(handler) { server in
            let c = try server.connect()
            try await c.send("GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
            try await c.read(until: "response head") { try parseHead($0.buffer[...]) != nil }
            guard let (_, status, headers, bodyStart) = try parseHead(c.buffer[...]) else { return }
            let head = HTTPResponseMessage(version: "", status: status, headers: headers, body: [], chunks: nil)
            #expect(status == 200)
            #expect(head.header("transfer-encoding")?.lowercased() == "chunked")
            #expect(head.header("content-length") == nil)  // a stale length from the responder is removed
            #expect(head.header("content-type") == "text/event-stream")
            #expect(server.server.inFlight == 1)

            for i in 0..<3 {
                try await Task.sleep(for: .milliseconds(100))
                try c.pump()
                #expect(try decodeChunked(c.buffer[bodyStart...]).chunks.count == i, "chunk \(i) arrived before its signal")
                gate.open()
                try await c.read(until: "chunk \(i)") { try decodeChunked($0.buffer[bodyStart...]).chunks.count == i + 1 }
                #expect(try decodeChunked(c.buffer[bodyStart...]).chunks.last == Array("data: event \(i)\n\n".utf8))
            }
            try await c.read(until: "last chunk") { try decodeChunked($0.buffer[bodyStart...]).done }
            let full = try parseHTTPResponse(c.buffer[...], forHEAD: false, atEOF: false)
            #expect(full?.0.chunks?.count == 3)
            #expect(full?.1 == c.buffer.count, "nothing after the terminating chunk")
            c.buffer.removeAll()
            try await eventually("request to end") { server.server.inFlight == 0 }

            // The connection is still usable after a streamed response.
            try await c.send("GET /echo/again HTTP/1.1\r\nHost: t\r\n\r\n")
            #expect(try await c.readResponse().json?["path"]?.stringValue == "/echo/again")
        }
    }

    /// Streamed chunks are framed by the connection itself (below the HTTP encoder): sizes across
    /// hex-digit boundaries, an empty write that must not end the body, then HTTP/1.0 (no chunked
    /// framing: the body ends with the connection) and HEAD (no body at all) on the same route.
    @Test func streamedChunkFramingAtEverySize() async throws {
        let sizes = [1, 15, 16, 255, 256, 4095, 4096, 70_000]
        let handler: Handler = { req in
            HTTPServerResponse(status: .ok, headers: HTTPHeaders([("Content-Type", "text/event-stream")]), body: .stream { w in
                for (i, n) in sizes.enumerated() {
                    try await w.write(Array(repeating: UInt8(ascii: "a") + UInt8(i), count: n))
                    if i == 2 { try await w.write([]) }
                }
            })
        }
        try await withServer(handler) { server in
            let c = try server.connect()
            try await c.send("GET /s HTTP/1.1\r\nHost: t\r\n\r\n")
            let r = try await c.readResponse()
            #expect(r.header("transfer-encoding")?.lowercased() == "chunked")
            #expect(r.chunks?.map(\.count) == sizes)
            #expect(r.body == sizes.enumerated().flatMap { Array(repeating: UInt8(ascii: "a") + UInt8($0.offset), count: $0.element) })
            // Still in step: the next response on the connection parses.
            try await c.send("HEAD /s HTTP/1.1\r\nHost: t\r\n\r\n")
            let h = try await c.readResponse(forHEAD: true)
            #expect(h.status == 200 && h.body.isEmpty)
            try await c.send("GET /s HTTP/1.1\r\nHost: t\r\n\r\n")
            #expect(try await c.readResponse().chunks?.map(\.count) == sizes)

            let old = try server.connect()
            try await old.send("GET /s HTTP/1.0\r\n\r\n")
            let raw = try await old.readToEOF()
            guard let split = firstIndex(of: Array("\r\n\r\n".utf8), in: raw[...]) else {
                Issue.record("no head in \(describe(raw))")
                return
            }
            let head = String(decoding: raw[..<split], as: UTF8.self).lowercased()
            #expect(!head.contains("transfer-encoding"))
            #expect(raw.count - split - 4 == sizes.reduce(0, +), "HTTP/1.0: the body as written, unframed")
        }
    }

    @Test func clientDisconnectCancelsSleepingProducer() async throws {
        let probe = ProducerProbe()
        let handler: Handler = { _ in
            HTTPServerResponse(status: .ok, body: .stream { w in
                probe.start()
                do {
                    while true {
                        try await w.write(Array("tick\n".utf8))
                        probe.wrote(5)
                        try await Task.sleep(for: .milliseconds(20))
                    }
                } catch {
                    probe.end(error)
                    throw error
                }
            })
        }
        try await withServer(handler) { server in
            let c = try server.connect()
            try await c.send("GET /forever HTTP/1.1\r\nHost: t\r\n\r\n")
            try await c.read(until: "two ticks") { String(decoding: $0.buffer, as: UTF8.self).components("tick") >= 2 }
            let closedAt = now()
            c.close()
            // Without the wake-up the producer would run (or sleep) forever: a generous bound still tells,
            // and survives the test process's 2-thread pool being held up by other suites under CI load.
            try await eventually("producer to stop", timeout: defaultWait) { probe.value.ended != nil }
            let v = probe.value
            let delay = seconds(v.ended! - closedAt)
            #expect(delay < 15.0, "producer ran on for \(delay) s after the client left")
            #expect(v.error != nil)
            try await eventually("in-flight count to drop") { server.server.inFlight == 0 }
        }
    }

    @Test func clientDisconnectWakesProducerSuspendedByBackpressure() async throws {
        let probe = ProducerProbe()
        let handler: Handler = { _ in
            HTTPServerResponse(status: .ok, body: .stream { w in
                let chunk = [UInt8](repeating: 0x41, count: 64 * 1024)
                do {
                    while true {
                        try await w.write(chunk)
                        probe.wrote(chunk.count)
                    }
                } catch {
                    probe.end(error)
                    throw error
                }
            })
        }
        try await withServer(handler) { server in
            let c = try server.connect(receiveBuffer: 64 * 1024)
            try await c.send("GET /firehose HTTP/1.1\r\nHost: t\r\n\r\n")
            // Let the producer fill every buffer and block.
            var last = -1
            try await eventually("producer to stall", timeout: .seconds(5)) {
                let b = probe.value.bytes
                defer { last = b }
                return b > 0 && b == last
            }
            try await Task.sleep(for: .milliseconds(100))
            #expect(probe.value.ended == nil)
            let closedAt = now()
            c.close()
            // Without the wake-up the producer would stay suspended forever (see above on the bound).
            try await eventually("suspended write to throw", timeout: defaultWait) { probe.value.ended != nil }
            let delay = seconds(probe.value.ended! - closedAt)
            #expect(delay < 15.0, "suspended producer woke \(delay) s after the client left")
            try await eventually("in-flight count to drop") { server.server.inFlight == 0 }
        }
    }

    @Test func backpressureBoundsTheProducer() async throws {
        let total = 64 * 1024 * 1024
        let probe = ProducerProbe()
        let handler: Handler = { _ in
            HTTPServerResponse(status: .ok, body: .stream { w in
                let chunk = [UInt8](repeating: 0x42, count: 64 * 1024)
                do {
                    for _ in 0..<(total / chunk.count) {
                        try await w.write(chunk)
                        probe.wrote(chunk.count)
                    }
                    probe.end(nil)
                } catch {
                    probe.end(error)
                    throw error
                }
            })
        }
        try await withServer(handler) { server in
            let c = try server.connect(receiveBuffer: 64 * 1024)
            try await c.send("GET /firehose HTTP/1.1\r\nHost: t\r\n\r\n")
            try await c.read(until: "response head") { try parseHead($0.buffer[...]) != nil }
            // Stop reading: the producer must be held back, not buffered without bound. Wait until it
            // stops moving (a loaded machine may take a while to fill the kernel buffers); one that is
            // never held back runs to the end (64 MiB) and fails the bound below.
            var stalled = probe.value.bytes
            let settleBy = ContinuousClock.now + .seconds(10)
            while ContinuousClock.now < settleBy {
                try await Task.sleep(for: .milliseconds(400))
                let b = probe.value.bytes
                if b == stalled && b > 0 { break }
                stalled = b
            }
            #expect(stalled > 0)
            // What the kernel may hold (socket send buffer + the client's receive buffer) plus at most
            // a megabyte in meshd/NIO. (About 5 MiB with Linux defaults.)
            let bound = kernelSendBufferMax() + 2 * 64 * 1024 + 1024 * 1024
            #expect(stalled < bound, "producer wrote \(stalled) bytes to a client that reads nothing (bound \(bound))")
            #expect(stalled < 8 * 1024 * 1024 || kernelSendBufferMax() > 6 * 1024 * 1024)
            try await Task.sleep(for: .milliseconds(300))
            #expect(probe.value.bytes - stalled <= 256 * 1024, "producer kept going while the client did not read")
            #expect(probe.value.ended == nil)

            // Read again: the producer resumes and every byte arrives.
            guard let (_, status, headers, bodyStart) = try parseHead(c.buffer[...]) else { return }
            #expect(status == 200)
            #expect(headers.contains { $0.0.lowercased() == "transfer-encoding" && $0.1 == "chunked" })
            var counter = ChunkedCounter()
            try c.buffer[bodyStart...].withUnsafeBytes { try counter.feed($0) }
            c.buffer.removeAll()
            c.sink = { try counter.feed($0) }
            try await c.read(until: "all \(total) bytes", timeout: .seconds(40)) { _ in counter.isDone }
            #expect(counter.payloadBytes == total)
            try await eventually("producer to finish") { probe.value.ended != nil }
            #expect(probe.value.error == nil)
            #expect(probe.value.bytes == total)
        }
    }

    // MARK: graceful shutdown

    @Test func gracefulShutdownLetsInFlightRequestFinish() async throws {
        let gate = Gate()
        let handler: Handler = { req in
            guard req.path == "/slow" else { return await echoHandler(req) }
            return HTTPServerResponse(status: .ok, body: .stream { w in
                try await w.write(Array("first;".utf8))
                try await gate.wait(for: 1)
                try await w.write(Array("second".utf8))
            })
        }
        let server = try await TestServer.start(handler)
        do {
            // An idle kept-alive connection, and one request in flight.
            let idle = try server.connect()
            try await idle.send("GET /echo HTTP/1.1\r\nHost: t\r\n\r\n")
            #expect(try await idle.readResponse().status == 200)
            let busy = try server.connect()
            try await busy.send("GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
            try await busy.read(until: "first chunk") { String(decoding: $0.buffer, as: UTF8.self).contains("first;") }

            let started = now()
            let shutdown = Task { await server.server.shutdown(grace: .seconds(5)) }

            // New connections are refused (or closed at once without an answer).
            try await eventually("listener to close", timeout: .seconds(10)) {
                do {
                    let late = try server.connect()
                    defer { late.close() }
                    return false
                } catch let e as SocketFailure {
                    return e.code == ECONNREFUSED
                }
            }
            // The idle connection is closed at once.
            try await idle.readToEOF(timeout: .seconds(1))
            #expect(idle.buffer.isEmpty)
            // The busy one is not.
            try busy.pump()
            #expect(!busy.eof)
            #expect(server.server.inFlight == 1)

            gate.open()
            let r = try await busy.readResponse()
            #expect(r.status == 200)
            #expect(r.text == "first;second")
            try await busy.readToEOF(timeout: .seconds(2))  // closed after the response during shutdown

            let runTask = server.runTask
            try await withTimeout("run() to return", .seconds(3)) { try await runTask.value }
            await shutdown.value
            let took = seconds(now() - started)
            #expect(took < 3, "shutdown waited \(took) s although the request had finished")
            #expect(server.server.inFlight == 0)
        } catch {
            try? await server.stop(grace: .zero)
            throw error
        }
    }

    @Test func gracePeriodEndsNeverEndingStream() async throws {
        let probe = ProducerProbe()
        let handler: Handler = { _ in
            HTTPServerResponse(status: .ok, body: .stream { w in
                do {
                    while true {
                        try await w.write(Array("tick\n".utf8))
                        try await Task.sleep(for: .milliseconds(20))
                    }
                } catch {
                    probe.end(error)
                    throw error
                }
            })
        }
        let server = try await TestServer.start(handler)
        do {
            let c = try server.connect()
            try await c.send("GET /forever HTTP/1.1\r\nHost: t\r\n\r\n")
            try await c.read(until: "a tick") { String(decoding: $0.buffer, as: UTF8.self).contains("tick") }
            let started = now()
            await server.server.shutdown(grace: .milliseconds(200))
            let took = seconds(now() - started)
            #expect(took >= 0.19, "shutdown returned after \(took) s, before the grace period")
            #expect(took < 3, "shutdown took \(took) s")
            try await c.readToEOF(timeout: .seconds(1))
            let closedAfter = seconds(now() - started)
            #expect(closedAfter < 3)
            #expect(!(String(decoding: c.buffer, as: UTF8.self).hasSuffix("0\r\n\r\n")), "the cut stream must not look complete")
            try await eventually("producer to be stopped", timeout: defaultWait) { probe.value.ended != nil }
            let runTask = server.runTask
            try await withTimeout("run() to return", .seconds(2)) { try await runTask.value }
        } catch {
            try? await server.stop(grace: .zero)
            throw error
        }
    }

    /// Connections arriving while the server shuts down are turned away without crashing the
    /// process (a dropped, unfinished NIOAsyncChannel traps in NIOAsyncWriter's deinit).
    @Test func connectionsArrivingDuringShutdown() async throws {
        for round in 0..<15 {
            let server = try await TestServer.start()
            let port = server.port
            let stop = Mutex(false)
            let connector = Task.detached {
                var clients: [RawClient] = []
                while !stop.withLock({ $0 }) {
                    if let c = try? RawClient.connectTCP(port: port) {
                        try? await c.send("GET /echo/\(round) HTTP/1.1\r\nHost: t\r\n\r\n")
                        clients.append(c)
                    }
                    if clients.count > 40 { clients.removeFirst(20) }
                    await Task.yield()
                }
                return clients.count
            }
            try await Task.sleep(for: .milliseconds(Int.random(in: 1...15)))
            await server.server.shutdown(grace: .milliseconds(50))
            let runTask = server.runTask
            try await withTimeout("run() to return (round \(round))", .seconds(5)) { try await runTask.value }
            stop.withLock { $0 = true }
            _ = await connector.value
        }
    }

    @Test func shutdownWithNothingInFlightIsQuick() async throws {
        let server = try await TestServer.start()
        let started = now()
        try await server.stop(grace: .seconds(5))
        #expect(seconds(now() - started) < 3)  // not the 5 s grace
        #expect(throws: SocketFailure.self) { _ = try server.connect() }
    }

    // MARK: hostile input

    @Test func malformedHTTPGets400AndServerSurvives() async throws {
        try await withServer { server in
            for garbage in ["THIS IS NOT HTTP\r\n\r\n", "GET / HTTP/1.1\r\nHost: t\r\nBroken Header Line\r\n\r\n",
                            "GET / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n12345", "\u{01}\u{02}\u{03}\r\n\r\n"] {
                let c = try server.connect()
                try await c.send(garbage)
                let r = try await c.readResponse()
                #expect(r.status == 400, "\(garbage.debugDescription)")
                try await c.readToEOF(timeout: .seconds(2))
            }
            #expect(server.calls.value == 0)
            let ok = try server.connect()
            try await ok.send("GET /echo HTTP/1.1\r\nHost: t\r\n\r\n")
            #expect(try await ok.readResponse().status == 200)
        }
    }

    @Test func manyConcurrentClients() async throws {
        try await withServer { server in
            let port = server.port
            try await withThrowingTaskGroup(of: Void.self) { group in
                for i in 0..<20 {
                    group.addTask {
                        let c = try RawClient.connectTCP(port: port)
                        for k in 0..<3 {
                            try await c.send("POST /echo/\(i)/\(k) HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc")
                            let r = try await c.readResponse()
                            guard r.json?["path"]?.stringValue == "/echo/\(i)/\(k)" else { throw TestFailure("wrong response \(r.text)") }
                        }
                    }
                }
                try await group.waitForAll()
            }
            #expect(server.calls.value == 60)
        }
    }

    // MARK: slow clients

    @Test func halfSentHeadIsClosedAfterHeaderTimeoutWhileOthersAreServed() async throws {
        try await withServer(configure: { $0.headerTimeout = .milliseconds(400) }) { server in
            let opened = now()
            let half = try server.connect()
            try await half.send("POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Le")
            // A trickling head (a byte every 100 ms) gets no more time than a silent one.
            let trickle = try server.connect()
            let trickleOpened = now()
            // A normal request on another connection is answered meanwhile.
            let ok = try server.connect()
            try await ok.send("GET /echo/ok HTTP/1.1\r\nHost: t\r\n\r\n")
            #expect(try await ok.readResponse().status == 200)
            var sent = 0
            for byte in "GET /echo HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaa".utf8 {
                try trickle.pump()
                if trickle.eof { break }
                try? await trickle.send([byte])
                sent += 1
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(trickle.eof, "trickling head still open after \(sent) bytes")
            let trickleTook = seconds(now() - trickleOpened)
            #expect(trickleTook >= 0.39 && trickleTook < 2.4, "trickle closed after \(trickleTook) s")
            let got = try await half.readToEOF(timeout: .seconds(3))
            let took = seconds(now() - opened)
            #expect(got.isEmpty, "\(describe(got))")
            #expect(took >= 0.39 && took < 2.4, "closed after \(took) s")
            #expect(server.server.timedOutConnections == 2)
            #expect(server.calls.value == 1)
            // The answered connection is kept alive (idle timeout is 75 s).
            try await ok.send("GET /echo/again HTTP/1.1\r\nHost: t\r\n\r\n")
            #expect(try await ok.readResponse().status == 200)
        }
    }

    @Test func stalledBodyIsClosedAfterBodyTimeout() async throws {
        // The gap between body bytes alone (the average rate is trickledBodyIsCutByTheMinimumRate's).
        try await withServer(configure: {
            $0.bodyTimeout = .milliseconds(600)
            $0.minBodyBytesPerSecond = 0
        }) { server in
            let c = try server.connect()
            let started = now()
            try await c.send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
            // Body bytes closer together than the timeout keep the request alive...
            for part in ["de", "f"] {
                try await Task.sleep(for: .milliseconds(250))
                try c.pump()
                #expect(!c.eof, "closed while the body was still moving")
                try await c.send(part)
            }
            let lastByte = now()
            // ...and a stall ends it.
            let got = try await c.readToEOF(timeout: .seconds(4))
            let sinceLast = seconds(now() - lastByte)
            #expect(got.isEmpty, "\(describe(got))")
            #expect(sinceLast >= 0.55 && sinceLast < 2.6, "closed \(sinceLast) s after the last body byte")
            #expect(seconds(now() - started) >= 1.0)
            #expect(server.calls.value == 0)
            #expect(server.server.timedOutConnections == 1)
        }
    }

    @Test func idleKeepAliveIsClosedButABusyOneIsNot() async throws {
        try await withServer(configure: { $0.idleTimeout = .milliseconds(400) }) { server in
            let c = try server.connect()
            // Requests closer together than the idle timeout: the connection stays.
            for i in 1...5 {
                try await c.send("GET /echo/\(i) HTTP/1.1\r\nHost: t\r\n\r\n")
                let r = try await c.readResponse()
                #expect(r.status == 200 && !r.closes)
                try await Task.sleep(for: .milliseconds(100))
            }
            try c.pump()
            #expect(!c.eof)
            #expect(server.server.timedOutConnections == 0)
            let idleSince = now()
            let got = try await c.readToEOF(timeout: .seconds(3))
            let took = seconds(now() - idleSince)
            #expect(got.isEmpty, "\(describe(got))")
            // Idle since the last response, up to 100 ms before `idleSince`.
            #expect(took >= 0.25 && took < 2.4, "idle connection closed after \(took) s")
            #expect(server.calls.value == 5)
            #expect(server.server.timedOutConnections == 1)
        }
    }

    @Test func requestBegunOnKeptAliveConnectionGetsTheHeaderTimeout() async throws {
        try await withServer(configure: {
            $0.headerTimeout = .milliseconds(400)
            $0.idleTimeout = .seconds(30)
        }) { server in
            let c = try server.connect()
            try await c.send("GET /echo/1 HTTP/1.1\r\nHost: t\r\n\r\n")
            #expect(try await c.readResponse().status == 200)
            // Idle for longer than the header timeout: still open (the idle timeout applies).
            try await Task.sleep(for: .milliseconds(700))
            try c.pump()
            #expect(!c.eof, "closed while idle before the idle timeout")
            // Half a head: now the header timeout runs.
            let begun = now()
            try await c.send("GET /echo/2 HTTP/1.1\r\nHo")
            try await c.readToEOF(timeout: .seconds(5))
            let took = seconds(now() - begun)
            #expect(took >= 0.39 && took < 2.4, "half head on a kept-alive connection closed after \(took) s")
            #expect(server.calls.value == 1)
        }
    }

    @Test func slowAnswersAndLongStreamsAreNotCut() async throws {
        let handler: Handler = { req in
            if req.path == "/slow" {
                try? await Task.sleep(for: .milliseconds(900))
                return .text(.ok, "late")
            }
            return HTTPServerResponse(status: .ok, body: .stream { w in
                for i in 0..<8 {
                    try await Task.sleep(for: .milliseconds(150))
                    try await w.write(Array("chunk\(i)\n".utf8))
                }
            })
        }
        try await withServer(configure: {
            $0.headerTimeout = .milliseconds(400)
            $0.bodyTimeout = .milliseconds(400)
            $0.idleTimeout = .milliseconds(400)
        }, handler) { server in
            let c = try server.connect()
            try await c.send("GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
            let slow = try await c.readResponse(timeout: .seconds(5))
            #expect(slow.status == 200 && slow.text == "late")
            try await c.send("GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
            let started = now()
            let r = try await c.readResponse(timeout: .seconds(8))
            #expect(seconds(now() - started) >= 1.1)
            #expect(r.status == 200)
            #expect(r.chunks?.count == 8)
            #expect(r.text == (0..<8).map { "chunk\($0)\n" }.joined())
            #expect(server.server.timedOutConnections == 0)
            // Once answered, the idle timeout applies again.
            try await c.readToEOF(timeout: .seconds(3))
            #expect(server.server.timedOutConnections == 1)
        }
    }

    @Test func connectionsOverTheCapGet503AndAreClosed() async throws {
        try await withServer(configure: { $0.maxConnections = 3 }) { server in
            let a = try server.connect(), b = try server.connect(), c = try server.connect()
            try await eventually("3 connections open") { server.server.openConnections == 3 }
            let d = try server.connect()
            let refused = try await d.readResponse()
            #expect(refused.status == 503)
            #expect(refused.closes)
            #expect(refused.header("content-type") == "application/json")
            #expect(refused.json?["error"]?["code"]?.stringValue == "too_many_connections")
            #expect(refused.json?["error"]?["type"]?.stringValue == "server_error")
            #expect(refused.json?["error"]?["message"]?.stringValue?.contains("cap 3, http.max_connections") == true)
            try await d.readToEOF(timeout: .seconds(3))
            #expect(server.server.refusedConnections == 1)
            #expect(server.server.openConnections == 3)
            // A refused client that already sent its request still reads the 503 (no reset).
            let e = try server.connect()
            try await e.send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello")
            #expect(try await e.readResponse().status == 503)
            #expect(server.server.refusedConnections == 2)
            // Room again once one closes.
            a.close()
            try await eventually("a connection slot freed") { server.server.openConnections == 2 }
            let f = try server.connect()
            try await f.send("GET /echo/f HTTP/1.1\r\nHost: t\r\n\r\n")
            #expect(try await f.readResponse().status == 200)
            for old in [b, c] {
                try await old.send("GET /echo/old HTTP/1.1\r\nHost: t\r\n\r\n")
                #expect(try await old.readResponse().status == 200)
            }
            #expect(server.calls.value == 3)
            #expect(server.server.refusedConnections == 2)
            #expect(server.server.timedOutConnections == 0)
        }
    }

    @Test func oneClientAddressOverItsCapGets429WhileOthersAreServed() async throws {
        try await withServer(configure: {
            $0.maxConnectionsPerClient = 2
            $0.perClientCapExemptsLoopback = false
        }) { server in
            let a1 = try server.connect(from: "127.0.0.2"), a2 = try server.connect(from: "127.0.0.2")
            try await eventually("2 connections open") { server.server.openConnections == 2 }
            let a3 = try server.connect(from: "127.0.0.2")
            let refused = try await a3.readResponse()
            #expect(refused.status == 429 && refused.closes && refused.header("retry-after") == "1")
            #expect(refused.json?["error"]?["code"]?.stringValue == "too_many_connections_from_client")
            #expect(refused.json?["error"]?["type"]?.stringValue == "requests")  // OpenAI's type for a request-count limit
            #expect(refused.json?["error"]?["message"]?.stringValue?.contains("from 127.0.0.2 (cap 2, http.max_connections_per_client)") == true)
            try await a3.readToEOF(timeout: .seconds(3))
            // Another client address is served meanwhile.
            let b = try server.connect(from: "127.0.0.3")
            try await b.send("GET /echo/b HTTP/1.1\r\nHost: t\r\n\r\n")
            #expect(try await b.readResponse().status == 200)
            #expect(server.server.refusedPerClientConnections == 1 && server.server.refusedConnections == 0)
            // The address gets a slot again once one of its connections closes.
            a1.close()
            try await eventually("a slot of 127.0.0.2 freed") { server.server.openConnections == 2 }
            let a4 = try server.connect(from: "127.0.0.2")
            try await a4.send("GET /echo/a4 HTTP/1.1\r\nHost: t\r\n\r\n")
            #expect(try await a4.readResponse().status == 200)
            try await a2.send("GET /echo/a2 HTTP/1.1\r\nHost: t\r\n\r\n")
            #expect(try await a2.readResponse().status == 200)
            #expect(server.server.refusedPerClientConnections == 1)
        }
    }

    @Test func loopbackClientsAreNotHeldToThePerClientCapByDefault() async throws {
        try await withServer(configure: { $0.maxConnectionsPerClient = 1 }) { server in
            let clients = try (0..<3).map { _ in try server.connect() } + [try server.connect(from: "127.0.0.2")]
            for (i, c) in clients.enumerated() {
                try await c.send("GET /echo/\(i) HTTP/1.1\r\nHost: t\r\n\r\n")
                #expect(try await c.readResponse().status == 200)
            }
            #expect(server.server.refusedPerClientConnections == 0)
        }
    }

    /// A body trickled a byte every 150 ms never stalls for `bodyTimeout` (600 ms), but at ~7
    /// bytes a second it is under `minBodyBytesPerSecond` (100): cut after about 0.6 s + what its
    /// bytes earned. Without the rate bound the same trickle is still open after 2 s.
    @Test(arguments: [100, 0])
    func trickledBodyIsCutByTheMinimumRate(minRate: Int) async throws {
        try await withServer(configure: {
            $0.bodyTimeout = .milliseconds(600)
            $0.minBodyBytesPerSecond = minRate
        }) { server in
            let c = try server.connect()
            let started = now()
            try await c.send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n")
            var sent = 0
            while seconds(now() - started) < 2.0 {
                try c.pump()
                if c.eof { break }
                try? await c.send("x")
                sent += 1
                try await Task.sleep(for: .milliseconds(150))
            }
            let took = seconds(now() - started)
            if minRate > 0 {
                #expect(c.eof, "a body trickled at \(Double(sent) / took) bytes/s still open after \(took) s")
                #expect(took >= 0.55 && took < 1.9, "cut after \(took) s")
                #expect(server.server.timedOutConnections == 1)
            } else {
                #expect(!c.eof && sent >= 10)
                #expect(server.server.timedOutConnections == 0)
            }
            #expect(server.calls.value == 0)
        }
    }

    // MARK: unix socket

    @Test func unixSocketListener() async throws {
        let path = "/tmp/meshd-http-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        defer { unlink(path) }
        // A stale socket file from an earlier run is replaced.
        let stale = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var addr = unixAddress(path)
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(stale, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        #expect(bound == 0)
        close(stale)
        #expect(fileMode(path)?.isSocket == true)

        try await withServer(unixSocketPath: path) { server in
            let mode = fileMode(path)
            #expect(mode?.isSocket == true)
            #expect(mode?.mode == 0o600, "socket mode \(String(mode?.mode ?? 0, radix: 8))")
            let c = try RawClient.connectUnix(path: path)
            try await c.send("POST /echo/unix HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\nhi")
            let r = try await c.readResponse()
            #expect(r.status == 200)
            #expect(r.json?["path"]?.stringValue == "/echo/unix")
            #expect(r.json?["body"]?.stringValue == "hi")
            try await c.send("GET /echo/2 HTTP/1.1\r\nHost: localhost\r\n\r\n")
            #expect(try await c.readResponse().status == 200)
        }
    }
}

@Suite struct HTTPServerTypesTests {
    @Test func requestSplitsPathAndQuery() {
        let head = HTTPRequestHead(version: .http1_1, method: .POST, uri: "/v1/chat/completions?a=1&b=?", headers: HTTPHeaders([("X-Key", "v")]))
        let r = HTTPServerRequest(head: head, body: ByteBuffer(bytes: [1, 2, 3]))
        #expect(r.path == "/v1/chat/completions")
        #expect(r.query == "a=1&b=?")
        #expect(r.method == .POST)
        #expect(r.header("x-key") == "v")
        #expect(r.header("missing") == nil)
        #expect(r.bodyBytes == [1, 2, 3])
        let plain = HTTPServerRequest(head: HTTPRequestHead(version: .http1_1, method: .GET, uri: "/api/tags"), body: ByteBuffer())
        #expect(plain.path == "/api/tags" && plain.query == nil)
        let empty = HTTPServerRequest(head: HTTPRequestHead(version: .http1_1, method: .GET, uri: "/x?"), body: ByteBuffer())
        #expect(empty.path == "/x" && empty.query == "")
    }

    @Test func responseHelpers() {
        let j = HTTPServerResponse.json(.created, ["a": 1], headers: HTTPHeaders([("X-A", "b"), ("Content-Type", "text/plain")]))
        #expect(j.status == .created)
        #expect(j.headers["content-type"] == ["application/json; charset=utf-8"])
        #expect(j.headers["x-a"] == ["b"])
        if case .buffer(let b) = j.body { #expect(Array(b.readableBytesView) == Array(#"{"a":1}"#.utf8)) } else { Issue.record("not a buffer") }
        let t = HTTPServerResponse.text(.notFound, "nope")
        #expect(t.headers["content-type"] == ["text/plain; charset=utf-8"])
        if case .buffer(let b) = t.body { #expect(String(buffer: b) == "nope") } else { Issue.record("not a buffer") }
    }

    @Test func configurationDefaults() {
        let c = HTTPServerConfiguration(host: "127.0.0.1", port: 1)
        #expect(c.maxBodyBytes == 8 << 20)
        #expect(c.unixSocketPath == nil)
        #expect(c.extraHeaders.isEmpty)
        #expect(c.headerTimeout == .seconds(10))
        #expect(c.bodyTimeout == .seconds(10))
        #expect(c.idleTimeout == .seconds(75))
        #expect(c.maxConnections == 4096)
        #expect(c.maxConnectionsPerClient == 256 && c.perClientCapExemptsLoopback && c.minBodyBytesPerSecond == 500)
    }
}

/// The largest send buffer the kernel gives a TCP socket (Linux `tcp_wmem` maximum; 4 MiB elsewhere).
func kernelSendBufferMax() -> Int {
    guard let f = fopen("/proc/sys/net/ipv4/tcp_wmem", "r") else { return 4 << 20 }
    defer { fclose(f) }
    var line = [CChar](repeating: 0, count: 128)
    guard fgets(&line, Int32(line.count), f) != nil else { return 4 << 20 }
    let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    return text.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).last.flatMap { Int($0) } ?? (4 << 20)
}

extension String {
    /// Non-overlapping occurrences of `needle`.
    func components(_ needle: String) -> Int {
        var count = 0
        var rest = Substring(self)
        while let r = rest.firstRange(of: needle) {
            count += 1
            rest = rest[r.upperBound...]
        }
        return count
    }
}
