import Logging
import MeshNet
import NIOCore
import NIOPosix
import Synchronization

// TCP over mesh tunnels: a split's head (llama-server --rpc) reaches each worker's rpc-server,
// which listens on the worker's loopback only (the RPC protocol has no authentication), through a
// `TunnelListener` on the head's loopback and a `TunnelDialer` on the worker.

/// A relayed connection whose tunnel could not open or ended with an error: the orchestration
/// learns why (refused, "worker-b silent for 1500 ms", the rpc-server closed the connection).
public struct TunnelFailure: Sendable, CustomStringConvertible {
    /// The node the tunnel leads to.
    public var node: String
    public var target: String
    /// Usually a ``MeshTunnelError``.
    public var error: any Error
    public var description: String { "tunnel to \(node) (\(target)): \(error)" }
}

/// Relays one TCP connection through one tunnel. TCP → tunnel: reads only while the tunnel has
/// credit (auto-read off; the next read is asked for once the last batch was handed to the
/// mesh), so a slow far end stops the TCP sender instead of growing buffers. Tunnel → TCP: each
/// chunk is credited back once NIO has written it to the socket.
final class TunnelPipe: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    let tunnel: MeshTunnel
    /// The reason the far end is given when our TCP peer closes (nil: a clean close).
    let eofReason: String?
    var pending: [UInt8] = []
    var sending = false
    var inactive = false

    init(tunnel: MeshTunnel, eofReason: String?) {
        self.tunnel = tunnel
        self.eofReason = eofReason
    }

    /// Installs the pipe on `channel` (made with auto-read off) and relays until the tunnel ends,
    /// then closes the connection (after what was written reached the socket). Throws the
    /// tunnel's failure.
    static func run(_ tunnel: MeshTunnel, on channel: any Channel, eofReason: String?) async throws {
        try await attach(tunnel, on: channel, eofReason: eofReason).get()
    }

    /// Installs the pipe; returns once bytes flow both ways, with a future of the tunnel's end.
    /// The far end's bytes are written from the mesh's socket thread as they arrive (the tunnel's
    /// sink, set before this side reads anything, so before the far end can answer), each chunk
    /// credited back once written.
    static func attach(_ tunnel: MeshTunnel, on channel: any Channel, eofReason: String?) async -> EventLoopFuture<Void> {
        let ended = channel.eventLoop.makePromise(of: Void.self)
        tunnel.deliver { event in
            switch event {
            case .data(let chunk):
                let n = chunk.count
                channel.writeAndFlush(ByteBuffer(bytes: chunk)).whenSuccess { tunnel.consumed(n) }
            case .ended(nil):
                // After what was written before it (writes complete in order).
                channel.writeAndFlush(ByteBuffer()).whenComplete { _ in
                    channel.close(promise: nil)
                    ended.succeed()
                }
            case .ended(let error?):
                channel.close(promise: nil)
                ended.fail(error)
            }
        }
        do {
            try await channel.eventLoop.submit {
                try channel.pipeline.syncOperations.addHandler(TunnelPipe(tunnel: tunnel, eofReason: eofReason))
            }.get()
        } catch {
            // The connection is gone already (closed while the tunnel opened).
            tunnel.close(reason: eofReason)
            channel.close(promise: nil)
        }
        return ended.futureResult
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive {
            context.read()
        } else {
            inactive = true
            tunnel.close(reason: eofReason)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        pending.append(contentsOf: buffer.readableBytesView)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        pump(context.channel)
        context.fireChannelReadComplete()
    }

    func channelInactive(context: ChannelHandlerContext) {
        inactive = true
        pump(context.channel)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // A reset or failed read: what is pending still goes, then the tunnel closes (inactive).
        context.close(promise: nil)
    }

    /// Hands what was read to the tunnel (one send at a time, in order), then asks for the next
    /// read; once the connection is closed and everything went, closes the tunnel.
    func pump(_ channel: any Channel) {
        guard !sending else { return }
        guard !pending.isEmpty else {
            if inactive { tunnel.close(reason: eofReason) }
            return
        }
        let batch = pending
        pending = []
        // Usually a small RPC message with credit to spare: straight to the mesh, no task hop.
        if tunnel.trySend(batch) {
            sent(channel)
            return
        }
        sending = true
        let me = NIOLoopBound(self, eventLoop: channel.eventLoop)
        let tunnel = self.tunnel
        Task {
            do {
                try await tunnel.send(batch)
                channel.eventLoop.execute { me.value.sent(channel) }
            } catch {
                channel.close(promise: nil)
            }
        }
    }

    func sent(_ channel: any Channel) {
        sending = false
        if pending.isEmpty && !inactive {
            channel.read()
        } else {
            pump(channel)
        }
    }
}

/// What the head side of a relay gives the orchestration, whichever way it relays: the loopback
/// port for llama-server's `--rpc`, the failures with their reasons, and a way to stop.
public protocol RelayListener: Sendable {
    var port: Int { get }
    var failures: AsyncStream<TunnelFailure> { get }
    func close() async
}

/// The head side of relayed connections: listens on 127.0.0.1 (port chosen by the system) and
/// relays every accepted connection through a new tunnel to `node`'s `target`. A tunnel that
/// cannot open or fails closes its connection at once (llama-server then aborts, which the
/// orchestration handles) and is reported on ``failures``.
public final class TunnelListener: RelayListener {
    /// The loopback port to give llama-server (`--rpc 127.0.0.1:PORT`).
    public let port: Int
    public let node: String
    public let target: String
    /// Tunnels that could not open or ended with an error, with the reason.
    public let failures: AsyncStream<TunnelFailure>
    let failuresContinuation: AsyncStream<TunnelFailure>.Continuation
    let serverChannel: any Channel
    let connections: Connections

    /// The accepted connections, so `close` can end them.
    final class Connections: Sendable {
        let open = Mutex<(closed: Bool, channels: [ObjectIdentifier: any Channel])>((false, [:]))

        /// Tracks a new connection; false once the listener closed.
        func add(_ c: any Channel) -> Bool {
            let ok = open.withLock { o -> Bool in
                guard !o.closed else { return false }
                o.channels[ObjectIdentifier(c)] = c
                return true
            }
            if ok { c.closeFuture.whenComplete { [self] _ in _ = open.withLock { $0.channels.removeValue(forKey: ObjectIdentifier(c)) } } }
            return ok
        }

        func closeAll() -> [any Channel] {
            open.withLock { o in
                o.closed = true
                return Array(o.channels.values)
            }
        }
    }

    /// Starts listening. `silenceLimit`: how long the worker's meshd may be silent before a tunnel
    /// (and its connection) is given up.
    public init(service: MeshService, node: String, target: String, silenceLimit: Duration = .milliseconds(1500),
                group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) async throws {
        let (failures, failuresContinuation) = AsyncStream<TunnelFailure>.makeStream(bufferingPolicy: .bufferingNewest(64))
        let connections = Connections()
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.autoRead, value: false)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                guard connections.add(channel) else { return channel.close() }
                Task {
                    let tunnel: MeshTunnel
                    do {
                        tunnel = try await service.openTunnel(to: node, target: target, silenceLimit: silenceLimit)
                    } catch {
                        channel.close(promise: nil)
                        failuresContinuation.yield(TunnelFailure(node: node, target: target, error: error))
                        return
                    }
                    do {
                        try await TunnelPipe.run(tunnel, on: channel, eofReason: nil)
                    } catch {
                        failuresContinuation.yield(TunnelFailure(node: node, target: target, error: error))
                    }
                }
                return channel.eventLoop.makeSucceededVoidFuture()
            }
            .bind(host: "127.0.0.1", port: 0).get()
        self.port = channel.localAddress?.port ?? 0
        self.node = node
        self.target = target
        self.failures = failures
        self.failuresContinuation = failuresContinuation
        self.serverChannel = channel
        self.connections = connections
    }

    /// Stops listening and closes every relayed connection (their tunnels close with them).
    public func close() async {
        try? await serverChannel.close()
        for c in connections.closeAll() { try? await c.close() }
        failuresContinuation.finish()
    }
}

/// The worker side: connects an accepted tunnel to a local TCP server (the rpc-server on loopback).
public enum TunnelDialer {
    /// Connects to `host:port` and relays `tunnel` both ways in the background. Returns once the
    /// connection is up; throws when it cannot connect (refuse the tunnel then). When the server
    /// closes the connection (rpc-server died) the tunnel closes with a reason the head sees; when
    /// the tunnel ends, the connection closes.
    public static func connect(_ tunnel: MeshTunnel, host: String = "127.0.0.1", port: Int,
                               group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) async throws {
        let channel = try await ClientBootstrap(group: group)
            .channelOption(.autoRead, value: false)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connectTimeout(.seconds(5))
            .connect(host: host, port: port).get()
        // Attached before returning: the tunnel is accepted after this, so nothing can arrive earlier.
        _ = await TunnelPipe.attach(tunnel, on: channel, eofReason: "\(host):\(port) closed the connection")
    }
}
