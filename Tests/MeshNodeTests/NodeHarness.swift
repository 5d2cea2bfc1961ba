import Foundation
import Logging
import MeshCore
import MeshEngines
@testable import MeshHTTPServer
@testable import MeshNode
import MeshNet
import MeshZMQ
import NIOCore
import NIOHTTP1
import Synchronization
import Testing

// A whole meshd node in process, in the manner of hummingbird's testing module: the real
// `MeshdNode` (engine registry, proxy, API and admin responders, mesh, gateway) built from a
// configuration over fake engines on loopback, running as `meshd` runs it, with requests handed
// straight to its responders (no client socket). Nodes given one mesh secret form a real mesh on
// 127.0.0.1 (ZeroMQ CURVE), so forwarding and escalation go over the node's own transport.

/// A response as a client reads it: a stream is drained whole.
struct Reply: Sendable {
    var status: Int
    var headers: HTTPHeaders
    var body: [UInt8]

    var text: String { String(decoding: body, as: UTF8.self) }
    var json: JSON? { try? JSONParser.parse(body) }
    func header(_ name: String) -> String? { headers.first(name: name) }
    /// The error message in either dialect's shape (OpenAI `error.message`, Ollama `error`).
    var errorMessage: String? { json?["error"]?["message"]?.stringValue ?? json?["error"]?.stringValue }

    /// Runs `response`'s body producer, if it has one, and keeps what it writes.
    static func read(_ response: HTTPServerResponse) async -> Reply {
        switch response.body {
        case .buffer(let b):
            return Reply(status: Int(response.status.code), headers: response.headers, body: Array(b.readableBytesView))
        case .stream(let produce):
            final class Sink: Sendable { let bytes = Mutex<[UInt8]>([]) }
            let sink = Sink()
            try? await produce(ResponseBodyWriter { b in sink.bytes.withLock { $0 += b } })
            return Reply(status: Int(response.status.code), headers: response.headers, body: sink.bytes.withLock { $0 })
        }
    }
}

/// Polls `condition` until it holds (generous: the suite runs in parallel on 2 cores); false on timeout.
@discardableResult
func eventually(timeout: Duration = .seconds(20), _ condition: () -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + timeout
    while !condition() {
        guard ContinuousClock.now < deadline else { return false }
        try? await Task.sleep(for: .milliseconds(10))
    }
    return true
}

/// One running node: its configuration, the node, and the task running it.
final class TestNode: Sendable {
    let name: String
    let node: MeshdNode
    let stateDir: String
    private let running: Task<Void, any Error>

    /// Starts a node over `engines` (an empty list means none, never auto-detection). With a
    /// `secret` it joins the mesh, dialling `peers`; `configure` changes anything else.
    static func start(_ name: String, engines: [FakeEngine] = [], secret: MeshSecret? = nil, peers: [TestNode] = [],
                      clock: any WallClock = SystemWallClock(), configure: (inout MeshdConfig) throws -> Void = { _ in }) async throws -> TestNode {
        let dir = NSTemporaryDirectory() + "meshd-node-\(name)-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        var c = MeshdConfig(nodeName: name)
        c.stateDir = dir
        c.admin.socket = dir + "/admin.sock"
        c.http.listen = HostPort(host: "127.0.0.1", port: 0)
        c.discovery.mdns = false
        c.models.enabled = false
        c.split.enabled = false
        // No GPU tools and an empty sysfs: the hardware probe finds nothing, quickly.
        c.hardware.nvidiaSMI = dir + "/no-nvidia-smi"
        c.hardware.rocmSMI = dir + "/no-rocm-smi"
        c.hardware.sysfsRoot = dir
        c.engines = engines.map { EngineConfig(kind: .openai, url: $0.url) }
        c.mesh.secretFile = dir + "/mesh.secret"
        c.mesh.listen = HostPort(host: "127.0.0.1", port: 0)
        c.mesh.heartbeatMs = 100
        c.mesh.deadAfterMissed = 50
        if let secret {
            try secret.write(path: c.mesh.secretFile)
            c.mesh.peers = peers.compactMap { HostPort(parsing: MeshService.normalize($0.node.mesh?.boundEndpoint ?? "")) }
        }
        try configure(&c)
        return try await TestNode(name: name, config: c, clock: clock)
    }

    private init(name: String, config: MeshdConfig, clock: any WallClock) async throws {
        self.name = name
        stateDir = config.stateDir
        let node = try MeshdNode(config: config, logger: nodeTestLogger, clock: clock)
        self.node = node
        running = Task { try await node.run() }
        // Bound once the engines were polled and the mesh port is open.
        let up = await eventually { node.boundAddress.address != nil && (node.mesh.map { !$0.boundEndpoint.isEmpty } ?? true) }
        if !up {
            await stop()
            throw TestNodeError("\(name) did not start listening")
        }
        // And its engines answered a poll: on a loaded machine the first poll can time out, and
        // the node listens anyway (CI runs saw a first request get 503). Not asserted: a test may
        // start a node over an engine that is down on purpose.
        if !(config.engines ?? []).isEmpty {
            _ = await eventually(timeout: .seconds(10)) { node.engines.snapshot().allSatisfy(\.healthy) }
        }
    }

    /// A request to the client API (`http.listen`), as its HTTP server would hand it over.
    func api(_ method: HTTPMethod, _ uri: String, json body: String? = nil, headers extra: [(String, String)] = []) async -> Reply {
        await send(node.http.responder, method, uri, body: body, headers: extra)
    }

    /// A request to the admin socket (what `meshctl` sends).
    func admin(_ method: HTTPMethod, _ uri: String, json body: String? = nil) async -> Reply {
        guard let admin = node.admin else { return Reply(status: 0, headers: [:], body: []) }
        return await send(admin.responder, method, uri, body: body, headers: [])
    }

    /// A chat request in `dialect` (`/v1/chat/completions` or `/api/chat`) for `model`.
    func chat(_ dialect: Dialect, model: String = "m", stream: Bool = false, headers: [(String, String)] = [],
              extra: String = "") async -> Reply {
        let path = dialect == .openai ? "/v1/chat/completions" : "/api/chat"
        return await api(.POST, path, json: #"{"model":"\#(model)","stream":\#(stream),"messages":[{"role":"user","content":"hi"}]\#(extra)}"#,
                         headers: headers)
    }

    private func send(_ responder: any HTTPResponder, _ method: HTTPMethod, _ uri: String, body: String?,
                      headers extra: [(String, String)]) async -> Reply {
        var headers: HTTPHeaders = body == nil ? [:] : ["Content-Type": "application/json"]
        headers.add(contentsOf: extra)
        let head = HTTPRequestHead(version: .http1_1, method: method, uri: uri, headers: headers)
        let request = HTTPServerRequest(head: head, body: ByteBuffer(string: body ?? ""))
        return await Reply.read(await responder.respond(to: request))
    }

    /// Whether this node's mesh sees `peer` live with at least `engines` engines.
    func sees(_ peer: String, engines: Int = 0) -> Bool {
        node.mesh?.peersForRouting().contains { $0.state.id == peer && $0.state.engines.count >= engines } ?? false
    }

    /// Stops as SIGTERM would (in-flight requests get up to `grace`) and removes the state directory.
    func stop(grace: Duration = .seconds(2)) async {
        await node.http.shutdown(grace: grace)
        _ = await running.result
        try? FileManager.default.removeItem(atPath: stateDir)
    }
}

struct TestNodeError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// Two nodes on one mesh secret that see each other (`b` dials `a`), each with its engines.
func meshPair(_ a: String, _ aEngines: [FakeEngine], _ b: String, _ bEngines: [FakeEngine],
              clockA: any WallClock = SystemWallClock(), clockB: any WallClock = SystemWallClock(),
              configureA: (inout MeshdConfig) throws -> Void = { _ in },
              configureB: (inout MeshdConfig) throws -> Void = { _ in }) async throws -> (TestNode, TestNode) {
    let secret = MeshSecret.generate()
    let na = try await TestNode.start(a, engines: aEngines, secret: secret, clock: clockA, configure: configureA)
    let nb: TestNode
    do {
        nb = try await TestNode.start(b, engines: bEngines, secret: secret, peers: [na], clock: clockB, configure: configureB)
    } catch {
        await na.stop()
        throw error
    }
    let met = await eventually { na.sees(b, engines: bEngines.count) && nb.sees(a, engines: aEngines.count) }
    if !met {
        await nb.stop()
        await na.stop()
        throw TestNodeError("\(a) and \(b) did not meet on the mesh")
    }
    return (na, nb)
}
