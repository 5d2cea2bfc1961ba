import Dispatch
import Foundation
import Logging
import MeshCore
@testable import MeshNet
import MeshRelay
import MeshZMQ
import NIOCore
import NIOPosix
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

// Real meshes on 127.0.0.1 (ZeroMQ CURVE, ZAP), real TCP on loopback: no mocks.

struct UTCClock: WallClock {
    func nowNanos() -> UInt64 { UInt64(Date().timeIntervalSince1970 * 1e9) }
}

/// A mesh node for a test: its service runs until `stop`.
func startNode(_ name: String, secret: MeshSecret, peers: [String] = []) async throws -> MeshService {
    let config = MeshServiceConfiguration(nodeID: name, listen: HostPort(host: "127.0.0.1", port: 0),
                                          staticPeers: peers.compactMap { HostPort(parsing: $0) },
                                          heartbeatMs: 200, deadAfterMissed: 10, secret: secret)
    var logger = Logger(label: "test.\(name)")
    logger.logLevel = .warning
    let service = try MeshService(configuration: config, logger: logger, clock: UTCClock()) {
        NodeState(id: name, name: name, meshEndpoint: "", httpEndpoint: "127.0.0.1:1")
    }
    Task { try await service.run() }
    try await waitUntil("\(name) bound") { !service.boundEndpoint.isEmpty }
    return service
}

/// Two nodes that see each other both ways (each knows the other's connection to its ROUTER,
/// which is what admits a tunnel open).
func startPair(_ a: String, _ b: String) async throws -> (MeshService, MeshService) {
    let secret = MeshSecret.generate()
    let na = try await startNode(a, secret: secret)
    let nb = try await startNode(b, secret: secret, peers: [MeshService.normalize(na.boundEndpoint)])
    try await waitUntil("\(a) and \(b) meet") {
        na.peers().contains { $0.state.id == b } && nb.peers().contains { $0.state.id == a }
            && na.state.withLock { $0.inbound.values.contains(b) } && nb.state.withLock { $0.inbound.values.contains(a) }
    }
    return (na, nb)
}

func waitUntil(_ what: String, timeout: Duration = .seconds(30), _ condition: () -> Bool) async throws {
    let deadline = ContinuousClock.now + timeout
    while !condition() {
        guard ContinuousClock.now < deadline else { throw TestFailure("timed out waiting for: \(what)") }
        try await Task.sleep(for: .milliseconds(10))
    }
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

struct ClosureAcceptor: MeshTunnelAcceptor {
    let accept: @Sendable (MeshTunnel, String, String) async -> String?
    func acceptTunnel(_ tunnel: MeshTunnel, from node: String, target: String) async -> String? {
        await accept(tunnel, node, target)
    }
}

/// Accepts every tunnel by connecting it to `port` on loopback.
func relayAcceptor(port: Int) -> ClosureAcceptor {
    ClosureAcceptor { tunnel, _, _ in
        do {
            try await TunnelDialer.connect(tunnel, port: port)
            return nil
        } catch {
            return "cannot connect to 127.0.0.1:\(port): \(error)"
        }
    }
}

// MARK: a TCP echo server (NIO) that can hang up on its clients

final class EchoHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    func channelRead(context: ChannelHandlerContext, data: NIOAny) { context.write(data, promise: nil) }
    func channelReadComplete(context: ChannelHandlerContext) { context.flush() }
}

final class EchoClients: Sendable {
    let open = Mutex<[ObjectIdentifier: any Channel]>([:])
    let closed = Mutex(0)
}

final class EchoServer: Sendable {
    let channel: any Channel
    let port: Int
    let clients = EchoClients()
    var closedClients: Int { clients.closed.withLock { $0 } }

    init() async throws {
        let clients = self.clients
        channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { c in
                clients.open.withLock { $0[ObjectIdentifier(c)] = c }
                c.closeFuture.whenComplete { _ in clients.closed.withLock { $0 += 1 } }
                return c.pipeline.addHandler(EchoHandler())
            }
            .bind(host: "127.0.0.1", port: 0).get()
        port = channel.localAddress!.port!
    }

    func hangUp() {
        for c in clients.open.withLock({ Array($0.values) }) { c.close(promise: nil) }
    }

    func stop() { channel.close(promise: nil) }
}

// MARK: a blocking TCP client (plain sockets, on their own threads): what llama-server does

final class BlockingClient: @unchecked Sendable {
    let fd: Int32

    init(port: Int) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        var tv = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else { throw TestFailure("connect to \(port) failed: errno \(errno)") }
    }

    func write(_ bytes: [UInt8]) throws {
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw TestFailure("send failed: errno \(errno)") }
            off += n
        }
    }

    /// Exactly `count` bytes; throws on EOF or timeout.
    func read(_ count: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        var off = 0
        while off < count {
            let n = out[off...].withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard n > 0 else { throw TestFailure("read got \(n) after \(off) of \(count) bytes (errno \(errno))") }
            off += n
        }
        return out
    }

    /// Whether the peer closed (EOF or reset) within the receive timeout; bytes before it are skipped.
    func waitClosed() -> Bool {
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = recv(fd, &buf, buf.count, 0)
            if n == 0 { return true }
            if n < 0 { return errno == ECONNRESET }
        }
    }

    let closed = Mutex(false)

    /// Closes once: a second close(2) could hit a socket that reused the number meanwhile.
    func close() {
        if !closed.withLock({ was in defer { was = true }; return was }) { _ = Glibc.close(fd) }
    }

    deinit { close() }
}

/// Runs blocking work on its own thread, off the cooperative pool.
func blocking<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { c in
        Thread { c.resume(with: Result { try work() }) }.start()
    }
}

/// Random bytes, 8 at a time (a debug build draws one byte at a time slowly).
func randomBytes(_ n: Int) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: (n + 7) / 8 * 8)
    out.withUnsafeMutableBytes { raw in
        for i in 0..<raw.count / 8 { raw.storeBytes(of: UInt64.random(in: 0...UInt64.max), toByteOffset: i * 8, as: UInt64.self) }
    }
    return Array(out.prefix(n))
}

/// Writes `data` through `client` in uneven writes (from 1 byte to 1 MiB) while reading the echo
/// back concurrently: what came back and how long it took.
func echoInUnevenWrites(_ data: [UInt8], through client: BlockingClient) async throws -> ([UInt8], Duration) {
    let writer = Task {
        try await blocking {
            var off = 0, k = 0
            let sizes = [1, 7, 1500, 65536, 300_000, 13, 1 << 20, 4097, 65537]
            while off < data.count {
                let n = min(sizes[k % sizes.count], data.count - off)
                try client.write(Array(data[off..<off + n]))
                off += n
                k += 1
            }
        }
    }
    let started = ContinuousClock.now
    let back = try await blocking { try client.read(data.count) }
    try await writer.value
    return (back, ContinuousClock.now - started)
}

/// Mean microseconds of `count` round trips of 64 bytes (each checked).
func meanRoundTrip(_ c: BlockingClient, count: Int = 1000) async throws -> Double {
    try await blocking {
        let req = [UInt8](repeating: 0x5a, count: 64)
        let t0 = ContinuousClock.now
        for i in 0..<count {
            var r = req
            r[0] = UInt8(truncatingIfNeeded: i)
            try c.write(r)
            guard try c.read(r.count) == r else { throw TestFailure("round trip \(i) garbled") }
        }
        let d = ContinuousClock.now - t0
        return (Double(d.components.seconds) * 1e6 + Double(d.components.attoseconds) / 1e12) / Double(count)
    }
}

/// The first failure reported on `failures` within `within`, if any.
func firstFailure(_ failures: AsyncStream<TunnelFailure>, within: Duration = .seconds(20)) async -> TunnelFailure? {
    await withTaskGroup(of: TunnelFailure?.self) { g in
        g.addTask { for await f in failures { return f }; return nil }
        g.addTask { try? await Task.sleep(for: within); return nil }
        let first = await g.next() ?? nil
        g.cancelAll()
        return first
    }
}

/// Two nodes, an echo server behind a dialer on the second, a listener on the first and a
/// client connected to it: the head → worker path of a split.
struct RelayRig {
    let a: MeshService, b: MeshService
    let echo: EchoServer
    let listener: TunnelListener
    let client: BlockingClient

    init(_ name: String, target: String) async throws {
        (a, b) = try await startPair("\(name)-a", "\(name)-b")
        echo = try await EchoServer()
        b.setTunnelAcceptor(relayAcceptor(port: echo.port))
        // A generous silence limit: the whole test suite runs in parallel on few cores, and only
        // `silentWorkerIsDetected` is about silence.
        listener = try await TunnelListener(service: a, node: "\(name)-b", target: target, silenceLimit: .seconds(10))
        client = try BlockingClient(port: listener.port)
    }

    func stop() async {
        await listener.close()
        echo.stop()
        a.stop()
        b.stop()
    }
}

@Suite(.serialized) struct TunnelRelayTests {
    @Test func bulkBytesAndRoundTrips() async throws {
        let rig = try await RelayRig("bulk", target: "rpc/s1")
        let (a, b, echo, client) = (rig.a, rig.b, rig.echo, rig.client)

        // Several MB in uneven writes, read back concurrently, byte-exact.
        let data = randomBytes(6 << 20 + 12345)
        let (back, bulkTime) = try await echoInUnevenWrites(data, through: client)
        #expect(back == data)
        print("tunnel bulk: \(data.count) bytes echoed in \(bulkTime)")

        // Small request/response round trips, tunnel vs a direct connection.
        let viaTunnel = try await meanRoundTrip(client)
        let direct = try BlockingClient(port: echo.port)
        let viaDirect = try await meanRoundTrip(direct)
        print(String(format: "round trip of 64 bytes, mean over 1000: tunnel %.1f µs, direct %.1f µs, added %.1f µs",
                     viaTunnel, viaDirect, viaTunnel - viaDirect))
        let info = a.tunnels()
        #expect(info.count == 1 && info[0].peer == "bulk-b" && info[0].target == "rpc/s1" && info[0].isOpener)
        #expect(info.first?.bytesSent == data.count + 64_000)
        #expect(b.tunnels().first?.bytesReceived == data.count + 64_000)

        // The client closing closes the echo server's connection (through the tunnel), and both tunnel ends go.
        let closedBefore = echo.closedClients
        client.close()
        direct.close()
        try await waitUntil("echo server sees both clients gone") { echo.closedClients >= closedBefore + 2 }
        try await waitUntil("tunnels gone") { a.tunnels().isEmpty && b.tunnels().isEmpty }
        await rig.stop()
    }

    @Test func farServerClosingClosesClient() async throws {
        let rig = try await RelayRig("far", target: "rpc/s2")
        let client = rig.client
        try client.write([1, 2, 3])
        #expect(try await blocking { try client.read(3) } == [1, 2, 3])
        rig.echo.hangUp()
        #expect(try await blocking { client.waitClosed() })
        let failure = await firstFailure(rig.listener.failures)
        let reason = failure.map { "\($0.error)" } ?? "no failure reported"
        #expect(reason.contains("closed the connection"), "\(reason)")
        await rig.stop()
    }

    @Test func refusalClosesConnectionAndIsReported() async throws {
        let (a, b) = try await startPair("ref-a", "ref-b")
        defer { a.stop(); b.stop() }
        let asked = Mutex<[String]>([])
        b.setTunnelAcceptor(ClosureAcceptor { _, node, target in
            asked.withLock { $0.append("\(node) \(target)") }
            return "no split s3 here"
        })
        let listener = try await TunnelListener(service: a, node: "ref-b", target: "rpc/s3")
        let client = try BlockingClient(port: listener.port)
        #expect(try await blocking { client.waitClosed() })
        let failure = await firstFailure(listener.failures)
        #expect(failure?.error as? MeshTunnelError == .refused("no split s3 here"))
        #expect(asked.withLock { $0 } == ["ref-a rpc/s3"])
        #expect(a.tunnels().isEmpty && b.tunnels().isEmpty)
        await listener.close()
    }

    @Test func workerStoppingClosesWithinTwoSeconds() async throws {
        let rig = try await RelayRig("stop", target: "rpc/s4")
        let client = rig.client
        try client.write([9])
        #expect(try await blocking { try client.read(1) } == [9])
        let t0 = ContinuousClock.now
        rig.b.stop()
        #expect(try await blocking { client.waitClosed() })
        let took = ContinuousClock.now - t0
        print("worker stopped: head's connection closed after \(took)")
        #expect(took < .seconds(2))
        let failure = await firstFailure(rig.listener.failures)
        #expect(failure != nil)
        print("reported: \(failure.map { "\($0)" } ?? "nothing")")
        await rig.stop()
    }

    @Test func silentWorkerIsDetected() async throws {
        // The worker's meshd stays up but stops answering (its socket thread held up): the head
        // gives up after the silence limit and names the worker.
        let (a, b) = try await startPair("mute-a", "mute-b")
        defer { a.stop(); b.stop() }
        b.setTunnelAcceptor(ClosureAcceptor { _, _, _ in nil })
        let t = try await a.openTunnel(to: "mute-b", target: "x", silenceLimit: .milliseconds(600))
        try await Task.sleep(for: .milliseconds(800))
        #expect(a.tunnels().count == 1)  // pongs keep it alive while nobody sends data
        // Hold B's socket thread: no pongs any more.
        let t0 = ContinuousClock.now
        _ = Task(executorPreference: b.loop) { usleep(1_500_000) }
        var error: (any Error)?
        do { for try await _ in t.incoming {} } catch let e { error = e }
        let took = ContinuousClock.now - t0
        print("silent worker detected after \(took): \(error.map { "\($0)" } ?? "no error")")
        guard case .silent(peer: "mute-b", _)? = error as? MeshTunnelError else {
            Issue.record("expected silence, got \(String(describing: error))")
            return
        }
        #expect(took < .seconds(1.5))
    }

    @Test func nonMemberCannotOpen() async throws {
        let secret = MeshSecret.generate()
        let a = try await startNode("mem-a", secret: secret)
        defer { a.stop() }
        let accepted = Mutex(0)
        a.setTunnelAcceptor(ClosureAcceptor { _, _, _ in
            accepted.withLock { $0 += 1 }
            return nil
        })
        let outsider = try await startNode("mem-x", secret: MeshSecret.generate(), peers: [MeshService.normalize(a.boundEndpoint)])
        defer { outsider.stop() }
        try await waitUntil("the outsider is refused") { outsider.authFailureCount > 0 || a.authFailureCount > 0 }
        await #expect(throws: MeshTunnelError.unreachable("mem-a is not a live peer")) {
            _ = try await outsider.openTunnel(to: "mem-a", target: "rpc/s5")
        }
        try await Task.sleep(for: .milliseconds(300))
        #expect(accepted.withLock { $0 } == 0)
        #expect(a.peers().isEmpty && a.tunnels().isEmpty)
    }

    @Test func slowReaderBoundsBytesInFlight() async throws {
        let (a, b) = try await startPair("flow-a", "flow-b")
        defer { a.stop(); b.stop() }
        let accepted = Mutex<MeshTunnel?>(nil)
        b.setTunnelAcceptor(ClosureAcceptor { t, _, _ in
            accepted.withLock { $0 = t }
            return nil
        })
        let t = try await a.openTunnel(to: "flow-b", target: "bulk")
        let data = randomBytes(8 << 20)
        let sender = Task { try await t.send(data) }
        try await Task.sleep(for: .milliseconds(500))
        // Nobody reads on B: A stops at one window.
        let info = try #require(a.tunnels().first)
        print("slow reader: sent \(info.bytesSent) bytes, \(info.inFlight) in flight (window \(MeshTunnel.windowBytes))")
        #expect(info.bytesSent <= MeshTunnel.windowBytes && info.inFlight <= MeshTunnel.windowBytes)
        #expect(info.bytesSent > 0)
        let far = try #require(accepted.withLock { $0 })
        #expect(far.info.buffered <= MeshTunnel.windowBytes)
        // Now read slowly: the sender never runs ahead by more than a window.
        var got: [UInt8] = []
        var maxAhead = 0
        for try await chunk in far.incoming {
            got += chunk
            maxAhead = max(maxAhead, t.info.inFlight)
            far.consumed(chunk.count)
            if got.count >= data.count { break }
        }
        try await sender.value
        #expect(got == data)
        #expect(maxAhead <= MeshTunnel.windowBytes)
        t.close()
        try await waitUntil("both ends closed") { a.tunnels().isEmpty && b.tunnels().isEmpty }
    }
}
