import Logging
import MeshCore
import MeshHTTPServer
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

struct SocketFailure: Error, CustomStringConvertible {
    let call: String
    let code: Int32
    var description: String { "\(call) failed: \(String(cString: strerror(code))) (\(code))" }
}

// MARK: - time

/// How long a read or a wait may take before the test fails. Generous: on a 2-core CI machine
/// the test pool's two threads can be busy with other suites for seconds, and a bound that only
/// guards against a hang must not fail a test that was merely scheduled late.
let defaultWait: Duration = .seconds(20)

func now() -> ContinuousClock.Instant { ContinuousClock.now }

func seconds(_ d: Duration) -> Double {
    Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
}

/// Polls `condition` until it holds; throws after `timeout`.
func eventually(_ what: String, timeout: Duration = defaultWait, _ condition: () throws -> Bool) async throws {
    let deadline = now() + timeout
    while try !condition() {
        if now() > deadline { throw TestFailure("timed out after \(timeout) waiting for \(what)") }
        try await Task.sleep(for: .milliseconds(2))
    }
}

/// Runs `body`, failing with a timeout error if it takes longer than `timeout`.
func withTimeout<T: Sendable>(_ what: String, _ timeout: Duration, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: timeout)
            throw TestFailure("timed out after \(timeout): \(what)")
        }
        defer { group.cancelAll() }
        return try await group.next()!
    }
}

// MARK: - shared state for responders

/// A gate a streaming producer waits on; the test opens it one step at a time. Waiting is
/// cancellation-aware (it polls with `Task.sleep`), so a cancelled producer never hangs.
final class Gate: Sendable {
    private let opened = Mutex(0)
    func open() { opened.withLock { $0 += 1 } }
    func wait(for n: Int) async throws {
        while opened.withLock({ $0 }) < n { try await Task.sleep(for: .milliseconds(2)) }
    }
}

/// What a producer did: bytes written, when it stopped and how.
final class ProducerProbe: Sendable {
    struct State {
        var bytes = 0
        var started = false
        var ended: ContinuousClock.Instant?
        var error: String?
        var cancelled = false
    }
    private let state = Mutex(State())
    var value: State { state.withLock { $0 } }
    func start() { state.withLock { $0.started = true } }
    func wrote(_ n: Int) { state.withLock { $0.bytes += n } }
    func end(_ error: (any Error)?) {
        let cancelled = Task.isCancelled
        state.withLock {
            if $0.ended == nil {
                $0.ended = now()
                $0.error = error.map { "\($0)" }
                $0.cancelled = cancelled
            }
        }
    }
}

final class Counter: Sendable {
    private let v = Mutex(0)
    func increment() { v.withLock { $0 += 1 } }
    var value: Int { v.withLock { $0 } }
}

// MARK: - server harness

typealias Handler = @Sendable (HTTPServerRequest) async -> HTTPServerResponse

struct ClosureResponder: HTTPResponder {
    let handler: Handler
    let calls: Counter

    func respond(to request: HTTPServerRequest) async -> HTTPServerResponse {
        calls.increment()
        return await handler(request)
    }

    func serverError(status: HTTPResponseStatus, message: String, code: String, path: String) -> HTTPServerResponse {
        .json(status, ["error": ["message": .string(message), "code": .string(code), "path": .string(path)]],
              headers: HTTPHeaders([("X-Server-Error", "1")]))
    }
}

/// Echoes what the server parsed, as JSON.
let echoHandler: Handler = { req in
    var members: [(String, JSON)] = [
        ("method", .string(req.method.rawValue)), ("path", .string(req.path)), ("query", req.query.map(JSON.string) ?? .null),
        ("body", .string(String(decoding: req.bodyBytes, as: UTF8.self))), ("bodyLength", .integer(req.body.readableBytes)),
        ("x-test", req.header("X-TEST").map(JSON.string) ?? .null),
    ]
    if let port = req.remoteAddress?.port { members.append(("remotePort", .integer(port))) }
    return .json(.ok, .object(members))
}

final class TestServer: Sendable {
    let server: HTTPServer
    let address: SocketAddress
    let calls: Counter
    let runTask: Task<Void, any Error>

    var port: Int { address.port ?? 0 }

    private init(server: HTTPServer, address: SocketAddress, calls: Counter, runTask: Task<Void, any Error>) {
        self.server = server
        self.address = address
        self.calls = calls
        self.runTask = runTask
    }

    static func start(maxBodyBytes: Int = 1024, unixSocketPath: String? = nil, extraHeaders: [(String, String)] = [],
                      configure: (inout HTTPServerConfiguration) -> Void = { _ in },
                      _ handler: @escaping Handler = echoHandler) async throws -> TestServer {
        var config = HTTPServerConfiguration(host: "127.0.0.1", port: 0, maxBodyBytes: maxBodyBytes, extraHeaders: extraHeaders)
        config.unixSocketPath = unixSocketPath
        configure(&config)
        var logger = Logger(label: "meshd.test.http")
        logger.logLevel = .error
        let calls = Counter()
        let server = HTTPServer(configuration: config, group: MultiThreadedEventLoopGroup.singleton,
                                responder: ClosureResponder(handler: handler, calls: calls), logger: logger)
        let (bound, continuation) = AsyncStream.makeStream(of: SocketAddress.self)
        let runTask = Task {
            defer { continuation.finish() }
            try await server.run(onBound: { continuation.yield($0) })
        }
        let address = try await withTimeout("server bind", .seconds(10)) {
            var it = bound.makeAsyncIterator()
            if let a = await it.next() { return a }
            try await runTask.value
            throw TestFailure("server returned without binding")
        }
        return TestServer(server: server, address: address, calls: calls, runTask: runTask)
    }

    /// Shuts down and waits for `run()` to return.
    func stop(grace: Duration = .milliseconds(200)) async throws {
        await server.shutdown(grace: grace)
        let task = runTask
        try await withTimeout("run() to return after shutdown", .seconds(10)) { try await task.value }
    }

    func connect(receiveBuffer: Int? = nil, from source: String? = nil) throws -> RawClient {
        try RawClient.connectTCP(port: port, receiveBuffer: receiveBuffer, source: source)
    }
}

/// Runs `body` against a fresh server and always shuts the server down afterwards.
func withServer(maxBodyBytes: Int = 1024, unixSocketPath: String? = nil, extraHeaders: [(String, String)] = [],
                configure: (inout HTTPServerConfiguration) -> Void = { _ in },
                _ handler: @escaping Handler = echoHandler, _ body: (TestServer) async throws -> Void) async throws {
    let server = try await TestServer.start(maxBodyBytes: maxBodyBytes, unixSocketPath: unixSocketPath, extraHeaders: extraHeaders,
                                            configure: configure, handler)
    do {
        try await body(server)
    } catch {
        try? await server.stop(grace: .zero)
        throw error
    }
    try await server.stop()
}

// MARK: - a raw HTTP/1.1 client over plain sockets

/// A non-blocking socket client. It never blocks a thread of the cooperative pool: waiting is
/// done by polling with short `Task.sleep`s, so the server under test always gets to run.
final class RawClient {
    let fd: Int32
    /// Bytes received and not yet consumed.
    var buffer: [UInt8] = []
    /// When set, received bytes go here instead of `buffer`.
    var sink: ((UnsafeRawBufferPointer) throws -> Void)?
    private(set) var eof = false
    private(set) var reset = false
    private(set) var received = 0
    private var isClosed = false

    private init(fd: Int32) { self.fd = fd }
    deinit { close() }

    /// Connects to 127.0.0.1:`port`; from the loopback address `source` when given (another
    /// client address on this machine: 127.0.0.2, 127.0.0.3, ...).
    static func connectTCP(port: Int, receiveBuffer: Int? = nil, source: String? = nil) throws -> RawClient {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw SocketFailure(call: "socket", code: errno) }
        if let size = receiveBuffer {
            var v = Int32(size)
            _ = setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &v, socklen_t(MemoryLayout<Int32>.size))
        }
        if let source { try ipv4(fd, "bind", source, port: 0, Glibc.bind) }
        try ipv4(fd, "connect", "127.0.0.1", port: port, Glibc.connect)
        return try RawClient(fd: fd).nonBlocking()
    }

    /// `call` (bind or connect) of `fd` with an IPv4 address; closes `fd` when it fails.
    private static func ipv4(_ fd: Int32, _ name: String, _ host: String, port: Int,
                             _ call: (Int32, UnsafePointer<sockaddr>, socklen_t) -> Int32) throws {
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port)).bigEndian
        addr.sin_addr = in_addr(s_addr: inet_addr(host))
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { call(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if rc != 0 {
            let e = errno
            Glibc.close(fd)
            throw SocketFailure(call: name, code: e)
        }
    }

    static func connectUnix(path: String) throws -> RawClient {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw SocketFailure(call: "socket", code: errno) }
        var addr = unixAddress(path)
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        if rc != 0 {
            let e = errno
            Glibc.close(fd)
            throw SocketFailure(call: "connect", code: e)
        }
        return try RawClient(fd: fd).nonBlocking()
    }

    private func nonBlocking() throws -> RawClient {
        let flags = fcntl(fd, F_GETFL)
        guard flags >= 0, fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0 else { throw SocketFailure(call: "fcntl", code: errno) }
        return self
    }

    func close() {
        if !isClosed {
            isClosed = true
            Glibc.close(fd)
        }
    }

    /// Closes the write side only (the client sends FIN but can still read).
    func shutdownWrite() { _ = Glibc.shutdown(fd, Int32(SHUT_WR)) }

    func send(_ text: String, timeout: Duration = defaultWait) async throws { try await send(Array(text.utf8), timeout: timeout) }

    func send(_ bytes: [UInt8], timeout: Duration = defaultWait) async throws {
        let deadline = now() + timeout
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n > 0 {
                offset += n
                continue
            }
            let e = errno
            guard n < 0, e == EAGAIN || e == EWOULDBLOCK || e == EINTR else { throw SocketFailure(call: "send", code: e) }
            if now() > deadline { throw TestFailure("send timed out after \(offset) of \(bytes.count) bytes") }
            try await Task.sleep(for: .milliseconds(1))
        }
    }

    /// Reads everything available now (non-blocking). Returns the number of bytes read.
    @discardableResult
    func pump() throws -> Int {
        var total = 0
        var chunk = [UInt8](repeating: 0, count: 256 * 1024)
        while !eof {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n > 0 {
                total += n
                received += n
                if let sink {
                    try chunk.withUnsafeBytes { try sink(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
                } else {
                    buffer += chunk[0..<n]
                }
                continue
            }
            if n == 0 {
                eof = true
                break
            }
            let e = errno
            if e == EINTR { continue }
            if e == EAGAIN || e == EWOULDBLOCK { break }
            if e == ECONNRESET {
                eof = true
                reset = true
                break
            }
            throw SocketFailure(call: "recv", code: e)
        }
        return total
    }

    /// Reads until `condition` holds; throws on timeout, or when the peer closed first.
    func read(until what: String, timeout: Duration = defaultWait, _ condition: (RawClient) throws -> Bool) async throws {
        let deadline = now() + timeout
        while true {
            try pump()
            if try condition(self) { return }
            if eof { throw TestFailure("connection closed while waiting for \(what); got \(describe(buffer))") }
            if now() > deadline { throw TestFailure("timed out after \(timeout) waiting for \(what); got \(describe(buffer))") }
            try await Task.sleep(for: .microseconds(200))
        }
    }

    /// Waits until the server closes the connection; returns what arrived before.
    @discardableResult
    func readToEOF(timeout: Duration = defaultWait) async throws -> [UInt8] {
        let deadline = now() + timeout
        while true {
            try pump()
            if eof { return buffer }
            if now() > deadline { throw TestFailure("timed out after \(timeout) waiting for the server to close; got \(describe(buffer))") }
            try await Task.sleep(for: .milliseconds(1))
        }
    }

    /// Reads and consumes one response (skipping nothing: a 100 Continue is a response too).
    func readResponse(timeout: Duration = defaultWait, forHEAD: Bool = false) async throws -> HTTPResponseMessage {
        var result: (HTTPResponseMessage, Int)?
        let deadline = now() + timeout
        while true {
            try pump()
            result = try parseHTTPResponse(buffer[...], forHEAD: forHEAD, atEOF: eof)
            if result != nil { break }
            if eof { throw TestFailure("connection closed before a full response; got \(describe(buffer))") }
            if now() > deadline { throw TestFailure("timed out after \(timeout) waiting for a response; got \(describe(buffer))") }
            try await Task.sleep(for: .microseconds(200))
        }
        let (message, consumed) = result!
        buffer.removeFirst(consumed)
        return message
    }
}

func unixAddress(_ path: String) -> sockaddr_un {
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    withUnsafeMutableBytes(of: &addr.sun_path) { raw in
        for (i, b) in bytes.prefix(raw.count - 1).enumerated() { raw[i] = b }
    }
    return addr
}

func describe(_ bytes: [UInt8], limit: Int = 300) -> String {
    let s = String(decoding: bytes.prefix(limit), as: UTF8.self).debugDescription
    return "\(bytes.count) bytes \(s)\(bytes.count > limit ? "…" : "")"
}

// MARK: - HTTP/1.1 response parsing (the test's own, independent of NIO)

struct HTTPResponseMessage {
    var version: String
    var status: Int
    var headers: [(String, String)]
    var body: [UInt8]
    /// The chunk payloads, when the body was chunked.
    var chunks: [[UInt8]]?

    func header(_ name: String) -> String? { headers.first { $0.0.lowercased() == name.lowercased() }?.1 }
    func headers(_ name: String) -> [String] { headers.filter { $0.0.lowercased() == name.lowercased() }.map(\.1) }
    var text: String { String(decoding: body, as: UTF8.self) }
    var json: JSON? { try? JSONParser.parse(body) }
    var closes: Bool { header("connection")?.lowercased() == "close" }
}

func firstIndex(of pattern: [UInt8], in b: ArraySlice<UInt8>, from start: Int? = nil) -> Int? {
    var i = start ?? b.startIndex
    guard !pattern.isEmpty, b.count >= pattern.count else { return nil }
    while i + pattern.count <= b.endIndex {
        if b[i] == pattern[0] && b[i..<(i + pattern.count)].elementsEqual(pattern) { return i }
        i += 1
    }
    return nil
}

let crlf: [UInt8] = [0x0D, 0x0A]

/// Decodes the complete chunks at the start of `b`: payloads, whether the last (0) chunk and the
/// trailers arrived, and how many bytes that took. Throws on malformed framing.
func decodeChunked(_ b: ArraySlice<UInt8>) throws -> (chunks: [[UInt8]], done: Bool, consumed: Int) {
    var chunks: [[UInt8]] = []
    var i = b.startIndex
    while true {
        guard let lineEnd = firstIndex(of: crlf, in: b, from: i) else { return (chunks, false, i - b.startIndex) }
        let line = String(decoding: b[i..<lineEnd], as: UTF8.self)
        let sizeText = line.split(separator: ";").first.map(String.init) ?? ""
        guard let size = Int(sizeText.trimmingCharacters(), radix: 16), size >= 0 else {
            throw TestFailure("bad chunk size line \(line.debugDescription)")
        }
        if size == 0 {
            // Trailers (none expected) end with an empty line.
            var j = lineEnd + 2
            while true {
                guard let end = firstIndex(of: crlf, in: b, from: j) else { return (chunks, false, i - b.startIndex) }
                if end == j { return (chunks, true, end + 2 - b.startIndex) }
                j = end + 2
            }
        }
        let dataStart = lineEnd + 2
        guard dataStart + size + 2 <= b.endIndex else { return (chunks, false, i - b.startIndex) }
        guard b[(dataStart + size)..<(dataStart + size + 2)].elementsEqual(crlf) else { throw TestFailure("chunk of \(size) not followed by CRLF") }
        chunks.append(Array(b[dataStart..<(dataStart + size)]))
        i = dataStart + size + 2
    }
}

extension String {
    func trimmingCharacters() -> String {
        var s = Substring(self)
        while s.first == " " || s.first == "\t" { s = s.dropFirst() }
        while s.last == " " || s.last == "\t" { s = s.dropLast() }
        return String(s)
    }
}

/// Splits off the head of a response: (version, status, headers, index after the blank line).
func parseHead(_ b: ArraySlice<UInt8>) throws -> (String, Int, [(String, String)], Int)? {
    guard let headEnd = firstIndex(of: crlf + crlf, in: b) else { return nil }
    var lines: [String] = []
    var i = b.startIndex
    while i < headEnd {
        let end = firstIndex(of: crlf, in: b, from: i) ?? headEnd
        lines.append(String(decoding: b[i..<end], as: UTF8.self))
        i = end + 2
    }
    guard let statusLine = lines.first else { throw TestFailure("empty response head") }
    let parts = statusLine.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: false)
    guard parts.count >= 2, parts[0].hasPrefix("HTTP/"), let status = Int(parts[1]) else {
        throw TestFailure("bad status line \(statusLine.debugDescription)")
    }
    var headers: [(String, String)] = []
    for line in lines.dropFirst() {
        guard let colon = line.firstIndex(of: ":") else { throw TestFailure("bad header line \(line.debugDescription)") }
        headers.append((String(line[..<colon]), String(line[line.index(after: colon)...]).trimmingCharacters()))
    }
    return (String(parts[0]), status, headers, headEnd + 4)
}

/// Parses one complete response at the start of `b`; nil when more bytes are needed.
func parseHTTPResponse(_ b: ArraySlice<UInt8>, forHEAD: Bool, atEOF: Bool) throws -> (HTTPResponseMessage, Int)? {
    guard let (version, status, headers, bodyStart) = try parseHead(b) else { return nil }
    var msg = HTTPResponseMessage(version: version, status: status, headers: headers, body: [], chunks: nil)
    if forHEAD || (100..<200).contains(status) || status == 204 || status == 304 {
        return (msg, bodyStart - b.startIndex)
    }
    if msg.header("transfer-encoding")?.lowercased().contains("chunked") == true {
        let (chunks, done, consumed) = try decodeChunked(b[bodyStart...])
        guard done else { return nil }
        msg.chunks = chunks
        msg.body = chunks.flatMap { $0 }
        return (msg, bodyStart + consumed - b.startIndex)
    }
    if let lengthText = msg.header("content-length") {
        guard let length = Int(lengthText) else { throw TestFailure("bad content-length \(lengthText)") }
        guard b.endIndex - bodyStart >= length else { return nil }
        msg.body = Array(b[bodyStart..<(bodyStart + length)])
        return (msg, bodyStart + length - b.startIndex)
    }
    guard atEOF else { return nil }  // delimited by close
    msg.body = Array(b[bodyStart...])
    return (msg, b.endIndex - b.startIndex)
}

/// Counts the payload of a chunked body as it streams past, without keeping it.
struct ChunkedCounter {
    enum State { case sizeLine, data(Int), dataEnd(Int), trailer, done }
    var state = State.sizeLine
    var line: [UInt8] = []
    var payloadBytes = 0
    var chunks = 0

    var isDone: Bool { if case .done = state { return true } else { return false } }

    mutating func feed(_ p: UnsafeRawBufferPointer) throws {
        var i = 0
        while i < p.count {
            switch state {
            case .sizeLine, .trailer:
                let c = p[i]
                i += 1
                guard c == 0x0A else { line.append(c); continue }
                if line.last == 0x0D { line.removeLast() }
                defer { line.removeAll(keepingCapacity: true) }
                if case .trailer = state {
                    if line.isEmpty { state = .done }
                    continue
                }
                let text = String(decoding: line, as: UTF8.self).split(separator: ";").first.map(String.init) ?? ""
                guard let n = Int(text, radix: 16) else { throw TestFailure("bad chunk size \(text.debugDescription)") }
                if n == 0 {
                    state = .trailer
                } else {
                    chunks += 1
                    state = .data(n)
                }
            case .data(let n):
                let take = min(n, p.count - i)
                i += take
                payloadBytes += take
                state = take == n ? .dataEnd(2) : .data(n - take)
            case .dataEnd(let k):
                guard p[i] == (k == 2 ? 0x0D : 0x0A) else { throw TestFailure("chunk not followed by CRLF") }
                i += 1
                state = k == 2 ? .dataEnd(1) : .sizeLine
            case .done:
                throw TestFailure("bytes after the end of the chunked body")
            }
        }
    }
}

func fileMode(_ path: String) -> (mode: UInt32, isSocket: Bool)? {
    var st = stat()
    guard stat(path, &st) == 0 else { return nil }
    return (UInt32(st.st_mode) & 0o7777, (UInt32(st.st_mode) & UInt32(S_IFMT)) == UInt32(S_IFSOCK))
}
