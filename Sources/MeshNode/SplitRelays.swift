import Logging
import MeshNet
import MeshRelay

/// The head's relays: one loopback listener per worker of a split, each connection of its
/// llama-server carried to the worker's loopback rpc-server over the worker's secure relay (a
/// direct TCP connection encrypted and authenticated with the mesh's keys, relayed on one event
/// loop on each side: the fastest), or over a mesh tunnel when the worker has no secure relay.
struct MeshSplitRelays: SplitRelayOpener {
    let mesh: MeshService
    let logger: Logger

    func open(worker: String, split: String, secure: (host: String, port: Int)?,
              onFailure: @escaping @Sendable (String) -> Void) async throws -> SplitRelayHandle {
        let target = SplitRelayAcceptor.target(split: split)
        let listener: any RelayListener = if let secure {
            try await SecureRelayListener(service: mesh, node: worker, target: target, host: secure.host, port: secure.port)
        } else {
            try await TunnelListener(service: mesh, node: worker, target: target)
        }
        Task {
            for await failure in listener.failures { onFailure("relay: \(failure.error)") }
        }
        return SplitRelayHandle(port: listener.port, kind: secure == nil ? "tunnel" : "secure", close: { await listener.close() })
    }
}

/// The worker's secure relay: a head's connection for `rpc/SPLIT` is taken only from the split's
/// head while its relayed lease lives, and connected to that lease's loopback rpc-server.
enum SplitSecureRelay {
    /// Starts it; returns how to stop it (nil when it could not listen: heads then use tunnels).
    static func start(mesh: MeshService, host: String, worker: SplitWorker, logger: Logger) async -> (@Sendable () async -> Void)? {
        do {
            let server = try await SecureRelayServer(service: mesh, host: host, port: 0) { target, node, _ in
                guard target.hasPrefix("rpc/") else { return .failure(SecureRelayRefusal("no relay target \(target) on this node")) }
                let split = String(target.dropFirst(4))
                guard let port = worker.relayPort(split: split, head: node) else {
                    return .failure(SecureRelayRefusal("this node holds no relayed lease of split \(split) for \(node)"))
                }
                return .success((host: "127.0.0.1", port: port))
            }
            worker.setSecureRelayPort(server.port)
            logger.info("secure relay listening", metadata: ["host": "\(host)", "port": "\(server.port)"])
            return { await server.close() }
        } catch {
            logger.warning("no secure relay (splits relay over mesh tunnels)", metadata: ["error": "\(error)"])
            return nil
        }
    }
}

/// The worker's side: a tunnel to `rpc/SPLIT` is accepted only from that split's head while its
/// lease lives (relayed transport), and connected to the lease's rpc-server on loopback.
struct SplitRelayAcceptor: MeshTunnelAcceptor {
    let worker: SplitWorker
    let logger: Logger

    static func target(split: String) -> String { "rpc/\(split)" }

    static func install(on mesh: MeshService, worker: SplitWorker, logger: Logger) {
        mesh.setTunnelAcceptor(SplitRelayAcceptor(worker: worker, logger: logger))
    }

    func acceptTunnel(_ tunnel: MeshTunnel, from node: String, target: String) async -> String? {
        guard target.hasPrefix("rpc/") else { return "no tunnel target \(target) on this node" }
        let split = String(target.dropFirst(4))
        guard let port = worker.relayPort(split: split, head: node) else {
            logger.warning("relay refused: no such lease", metadata: ["split": "\(split)", "from": "\(node)"])
            return "this node holds no relayed lease of split \(split) for \(node)"
        }
        do {
            try await TunnelDialer.connect(tunnel, port: port)
        } catch {
            return "cannot reach the rpc-server of split \(split): \(error)"
        }
        return nil
    }
}
