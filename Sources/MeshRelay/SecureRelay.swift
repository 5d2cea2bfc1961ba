import Foundation
import Logging
import MeshNet
import MeshZMQ
import NIOCore
import NIOPosix

// The secure relay: the head's llama-server reaches a worker's rpc-server (loopback only: the RPC
// protocol has no authentication) over a direct TCP connection between the two meshd processes,
// encrypted and authenticated with the mesh's CURVE keys (SecureChannel.swift). Each connection
// lives on one event loop from end to end (the accepted connection and the one meshd opens for it
// share it), so a relayed byte crosses no thread but that loop's: a 64-byte round trip costs a
// fraction of the ZeroMQ tunnel's (TunnelRelay.swift), which crosses ~5 threads per direction.

/// A worker's refusal of a relayed connection; the head reports `reason`.
public struct SecureRelayRefusal: Error, Sendable, Equatable, CustomStringConvertible {
    public var reason: String
    public init(_ reason: String) { self.reason = reason }
    public var description: String { reason }
}

/// Options shared by every relayed connection.
enum RelayBootstrap {
    /// A client bootstrap on `loop` (the loop of the connection it relays), with Nagle off.
    static func client(on loop: any EventLoop) -> ClientBootstrap {
        ClientBootstrap(group: loop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connectTimeout(.seconds(5))
    }

    /// A server bootstrap whose accepted connections have Nagle off.
    static func server(group: any EventLoopGroup) -> ServerBootstrap {
        ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
    }
}

/// The worker side: one listener per meshd on its mesh address. Per connection: the handshake
/// (the head's static key must pass `allow`), the head's request `{target, node}`, then `accept`
/// says where to connect (the loopback rpc-server) or why not; the connection to it is made on
/// the accepted connection's event loop and the two are relayed until either closes.
public final class SecureRelayServer: Sendable {
    /// Decides a request: `target` and `node` as the head sent them, `clientKey` the static key it
    /// authenticated with. Returns where to connect (usually 127.0.0.1 and the rpc-server's port)
    /// or the refusal the head is told.
    public typealias Accept = @Sendable (_ target: String, _ node: String, _ clientKey: [UInt8]) async
        -> Result<(host: String, port: Int), SecureRelayRefusal>

    /// The bound port (the one asked for, or the system's choice for 0).
    public let port: Int
    let serverChannel: any Channel
    let connections = TunnelListener.Connections()

    /// Listens on `host:port` (port 0: any free port, see ``port``). `keyPair` is the worker's
    /// static (server) keypair, which heads must expect; `allow` admits heads' static keys.
    public init(host: String, port: Int = 0, keyPair: CurveKeyPair, allow: @escaping @Sendable ([UInt8]) -> Bool,
                accept: @escaping Accept, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
                logger: Logger = Logger(label: "meshd.relay")) async throws {
        let key = try StaticKey(keyPair)
        let connections = self.connections
        serverChannel = try await RelayBootstrap.server(group: group)
            .childChannelInitializer { channel in
                guard connections.add(channel) else { return channel.close() }
                return channel.eventLoop.makeCompletedFuture {
                    let glue = RelayGlue(phase: .control)
                    glue.onControl = { frame in Self.handle(frame, glue: glue, on: channel, accept: accept, connections: connections, logger: logger) }
                    glue.onInactive = { glue in
                        if let error = glue.error { logger.debug("relay connection ended", metadata: ["error": "\(error)"]) }
                    }
                    try channel.pipeline.syncOperations.addHandlers(SecureChannelHandler(.server(key, allow: allow)), glue)
                }
            }
            .bind(host: host, port: port).get()
        self.port = serverChannel.localAddress?.port ?? port
    }

    /// A worker's relay for `service`'s mesh: served with the mesh keypair, admitting the keys the
    /// mesh's ZAP handler admits.
    public convenience init(service: MeshService, host: String, port: Int = 0, accept: @escaping Accept,
                            group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) async throws {
        try await self.init(host: host, port: port, keyPair: service.relayKeyPairs().server,
                            allow: { [service] in service.relayKeyAllowed($0) }, accept: accept, group: group)
    }

    /// The head's request: ask `accept`, connect, answer, relay (on `channel`'s event loop).
    static func handle(_ frame: ByteBuffer, glue: RelayGlue, on channel: any Channel, accept: @escaping Accept,
                       connections: TunnelListener.Connections, logger: Logger) {
        guard let request = try? JSONDecoder().decode(RelayRequest.self, from: Data(frame.readableBytesView)) else {
            return glue.answerAndClose(encodeControl(RelayAnswer(error: "bad request: expected {\"target\", \"node\"}")))
        }
        let clientKey = glue.peerKey
        let loop = channel.eventLoop
        let head = NIOLoopBound(glue, eventLoop: loop)
        loop.makeFutureWithTask { await accept(request.target, request.node, clientKey) }.whenSuccess { decision in
            let glue = head.value
            switch decision {
            case .failure(let refusal):
                logger.info("relay refused", metadata: ["node": "\(request.node)", "target": "\(request.target)", "reason": "\(refusal.reason)"])
                glue.answerAndClose(encodeControl(RelayAnswer(error: refusal.reason)))
            case .success(let destination):
                guard channel.isActive else { return }
                RelayBootstrap.client(on: loop)
                    .channelInitializer { local in
                        local.eventLoop.makeCompletedFuture {
                            guard connections.add(local) else { throw ChannelError.ioOnClosedChannel }
                            try local.pipeline.syncOperations.addHandler(RelayGlue(phase: .waiting))
                        }
                    }
                    .connect(host: destination.host, port: destination.port)
                    .whenComplete { result in
                        let glue = head.value
                        switch result {
                        case .failure(let error):
                            let reason = "cannot connect to \(destination.host):\(destination.port): \(error)"
                            logger.warning("relay refused", metadata: ["node": "\(request.node)", "target": "\(request.target)", "reason": "\(reason)"])
                            glue.answerAndClose(encodeControl(RelayAnswer(error: reason)))
                        case .success(let local):
                            guard channel.isActive, let localGlue = try? local.pipeline.syncOperations.handler(type: RelayGlue.self) else {
                                local.close(promise: nil)
                                return
                            }
                            // The ok goes before anything the rpc-server sends (same loop, in order).
                            glue.send(encodeControl(RelayAnswer(ok: true)))
                            RelayGlue.pair(glue, localGlue)
                        }
                    }
            }
        }
    }

    /// Stops listening and closes every relayed connection (both sides).
    public func close() async {
        try? await serverChannel.close()
        for c in connections.closeAll() { try? await c.close() }
    }
}

/// The head side of secure relays to one worker's target, shaped like ``TunnelListener``: listens
/// on 127.0.0.1 (port chosen by the system) and relays every accepted connection (llama-server's
/// `--rpc`) over a new secure connection to the worker's relay. The accepted connection is not
/// read until the worker said ok. A connection that cannot be set up or ends from the worker's
/// side closes its accepted connection (llama-server then aborts) and is reported on ``failures``.
public final class SecureRelayListener: RelayListener {
    /// The loopback port to give llama-server (`--rpc 127.0.0.1:PORT`).
    public let port: Int
    /// The worker's node id.
    public let node: String
    public let target: String
    /// Connections that could not be set up or were lost, with the reason (usually a ``SecureRelayError``).
    public let failures: AsyncStream<TunnelFailure>
    let failuresContinuation: AsyncStream<TunnelFailure>.Continuation
    let serverChannel: any Channel
    let connections = TunnelListener.Connections()

    /// Starts listening. `host:port` is the worker's ``SecureRelayServer``, `serverKey` its static
    /// public key (the mesh public key); `localNode` (this node's id) and `target` are sent in
    /// the request; `keyPair` is this node's static key, which the worker must admit.
    public init(host: String, port: Int, serverKey: [UInt8], node: String, target: String, localNode: String,
                keyPair: CurveKeyPair, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) async throws {
        let key = try StaticKey(keyPair)
        _ = try x25519PublicKey(serverKey)
        let request = encodeControl(RelayRequest(target: target, node: localNode))
        let (failures, failuresContinuation) = AsyncStream<TunnelFailure>.makeStream(bufferingPolicy: .bufferingNewest(64))
        let connections = self.connections
        let report: @Sendable (any Error) -> Void = { failuresContinuation.yield(TunnelFailure(node: node, target: target, error: $0)) }
        serverChannel = try await RelayBootstrap.server(group: group)
            .childChannelInitializer { channel in
                guard connections.add(channel) else { return channel.close() }
                return channel.eventLoop.makeCompletedFuture {
                    let local = RelayGlue(phase: .waiting)
                    try channel.pipeline.syncOperations.addHandler(local)
                    let bound = NIOLoopBound(local, eventLoop: channel.eventLoop)
                    RelayBootstrap.client(on: channel.eventLoop)
                        .channelInitializer { remote in
                            remote.eventLoop.makeCompletedFuture {
                                // llama-server gone already, or the listener closed: give up. (Not
                                // `channel.isActive`: this may run before the accepted channel is.)
                                guard !bound.value.isClosed, connections.add(remote) else { throw ChannelError.ioOnClosedChannel }
                                let glue = Self.remoteGlue(local: bound.value, node: node, report: report)
                                let handshake = ClientHandshake(staticKey: key, serverKey: serverKey)
                                try remote.pipeline.syncOperations.addHandlers(
                                    SecureChannelHandler(.client(handshake, firstFrame: request)), glue)
                            }
                        }
                        .connect(host: host, port: port)
                        .whenFailure { error in
                            if !bound.value.isClosed { report(SecureRelayError.handshakeFailed("cannot connect to \(node)'s relay at \(host):\(port): \(error)")) }
                            channel.close(promise: nil)
                        }
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        self.port = serverChannel.localAddress?.port ?? 0
        self.node = node
        self.target = target
        self.failures = failures
        self.failuresContinuation = failuresContinuation
    }

    /// Relays to `node`'s relay at `host:port` for `service`'s mesh: authenticates with this
    /// node's client key (its node key in `trust: keys` meshes, else the mesh keypair) and expects
    /// the mesh public key as the worker's.
    public convenience init(service: MeshService, node: String, target: String, host: String, port: Int,
                            group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) async throws {
        let keys = try service.relayKeyPairs()
        try await self.init(host: host, port: port, serverKey: keys.server.publicKey, node: node, target: target,
                            localNode: service.configuration.nodeID, keyPair: keys.client, group: group)
    }

    /// The glue of the connection to the worker: awaits its answer, then pairs with `local` (or
    /// reports the refusal); reports the connection ending unless `local` ended it.
    static func remoteGlue(local: RelayGlue, node: String, report: @escaping @Sendable (any Error) -> Void) -> RelayGlue {
        let glue = RelayGlue(phase: .control)
        local.partner = glue  // a close of either side closes the other from now on
        glue.partner = local
        glue.onControl = { [unowned glue] frame in
            do {
                let answer = try RelayAnswer.decode(frame)
                if let error = answer.error { throw SecureRelayError.refused(error) }
                RelayGlue.pair(local, glue)
            } catch {
                glue.fail(error)
            }
        }
        glue.onInactive = { glue in
            guard !glue.closedByPartner else { return }
            report(glue.error ?? (glue.phase == .paired
                ? SecureRelayError.connectionLost("\(node) closed the connection")
                : SecureRelayError.handshakeFailed("\(node) closed the connection before answering (our key not admitted, or its key not the one expected?)")))
        }
        return glue
    }

    /// Stops listening and closes every relayed connection (nothing more is reported).
    public func close() async {
        failuresContinuation.finish()
        try? await serverChannel.close()
        for c in connections.closeAll() { try? await c.close() }
    }
}
