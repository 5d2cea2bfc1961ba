import Logging
import MeshCore
import MeshHTTPServer
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Raw bytes on one connection to the real ``HTTPServer`` (its NIO pipeline, head and body limits,
/// keep-alive, streamed responses), served on a unix socket by ``FuzzResponder``. Layout: the bytes
/// a client sends; the connection is half-closed once the server has been quiet for a moment, and
/// the server must then close it.
enum HTTPFuzz {
    /// Longest the server may keep a half-closed connection open.
    static let closeDeadlineMs = 5_000

    static let socketPath: String = {
        let dir = "/tmp/meshd-fuzz-\(getpid())"
        mkdir(dir, 0o700)
        let path = dir + "/http.sock"
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        var configuration = HTTPServerConfiguration(host: "127.0.0.1", port: 0, maxBodyBytes: 4096,
                                                    extraHeaders: [("X-Meshd-Node", "fuzz")],
                                                    headerTimeout: .seconds(2), bodyTimeout: .seconds(2),
                                                    idleTimeout: .seconds(2), maxConnections: 64)
        configuration.unixSocketPath = path
        let server = HTTPServer(configuration: configuration, group: group, responder: FuzzResponder(),
                                logger: Logger(label: "fuzz", factory: { _ in SwiftLogNoOpLogHandler() }))
        let bound = Flag()
        Task.detached { try await server.run(onBound: { _ in bound.value.store(true, ordering: .releasing) }) }
        var waited = 0
        while !bound.value.load(ordering: .acquiring) {
            usleep(1_000)
            waited += 1
            if waited > 30_000 { fatalError("the fuzz HTTP server did not bind \(path)") }
        }
        atexit { HTTPFuzz.removeSocket() }
        return path
    }()

    final class Flag: Sendable {
        let value = Atomic<Bool>(false)
    }

    static func removeSocket() {
        let dir = "/tmp/meshd-fuzz-\(getpid())"
        unlink(dir + "/http.sock")
        rmdir(dir)
    }

    static func run(_ bytes: [UInt8]) {
        let fd = connectSocket(socketPath)
        defer { close(fd) }
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { break }  // the server closed early (an error response): fine
            sent += n
        }
        // Read what the server answers; once it has been quiet for 5 ms, half-close. The server
        // must then close the connection: one left open is a hang.
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        var halfClosed = false
        var waitedMs = 0
        while true {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&p, 1, 5)
            if ready == 0 {
                if !halfClosed {
                    shutdown(fd, Int32(SHUT_WR))
                    halfClosed = true
                }
                waitedMs += 5
                invariant(waitedMs < closeDeadlineMs, "the server kept a half-closed connection open for \(closeDeadlineMs) ms")
                continue
            }
            if ready < 0 { if errno == EINTR { continue }; break }
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
        }
    }

    static func connectSocket(_ path: String) -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        invariant(fd >= 0, "socket() failed: \(errno)")
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in path.utf8.enumerated() where i < raw.count - 1 { raw[i] = b }
        }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        invariant(rc == 0, "cannot connect to the fuzz HTTP server: errno \(errno)")
        return fd
    }
}

/// A small stand-in for meshd's responder: inference routes parse their body in the route's
/// dialect and answer in it (streamed when asked), a bearer key is checked when one is sent, a
/// few fixed routes answer, everything else is a 404.
struct FuzzResponder: HTTPResponder {
    func respond(to request: HTTPServerRequest) async -> HTTPServerResponse {
        if let auth = request.header("Authorization"), auth != "Bearer fuzz-key" {
            return error(APIError.unauthorized, dialect: request.path.hasPrefix("/api/") ? .ollama : .openai)
        }
        if let route = InferenceRoute(rawValue: request.path) {
            guard request.method == .POST else {
                return error(APIError(status: 405, message: "use POST"), dialect: route.dialect)
            }
            let req: InferenceRequest
            do {
                req = try RequestParser.parse(route: route, body: request.bodyBytes)
            } catch {
                return self.error(error, dialect: route.dialect)
            }
            if req.stream {
                let line: [UInt8] = route.dialect == .openai
                    ? Array("data: {\"model\":\"fuzz\"}\n\n".utf8) : Array("{\"model\":\"fuzz\",\"done\":false}\n".utf8)
                return HTTPServerResponse(status: .ok, headers: ["Content-Type": "text/event-stream"], body: .stream { w in
                    for _ in 0..<3 { try await w.write(line) }
                })
            }
            return .json(.ok, ["model": .string(req.model), "query": request.query.map(JSON.string) ?? .null])
        }
        switch (request.method, request.path) {
        case (.GET, "/health"): return .text(.ok, "ok\n")
        case (.GET, "/v1/models"): return .json(.ok, ["object": "list", "data": []])
        case (.GET, "/api/tags"): return .json(.ok, ["models": []])
        case (.HEAD, _): return HTTPServerResponse(status: .ok, body: .buffer(ByteBuffer()))
        default: return .json(.notFound, ["error": "not found"])
        }
    }

    func serverError(status: HTTPResponseStatus, message: String, code: String, path: String) -> HTTPServerResponse {
        error(APIError(status: Int(status.code), message: message, code: code), dialect: path.hasPrefix("/api/") ? .ollama : .openai)
    }

    func error(_ e: APIError, dialect: Dialect) -> HTTPServerResponse {
        .json(HTTPResponseStatus(statusCode: e.status), e.body(for: dialect))
    }
}
