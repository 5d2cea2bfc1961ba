import Logging
import MeshNet
import MeshRelay

/// The head's relays: one loopback listener per worker of a split (`TunnelListener`), each
/// connection of its llama-server carried over a mesh tunnel to the worker's rpc-server.
struct MeshSplitRelays: SplitRelayOpener {
    let mesh: MeshService
    let logger: Logger

    func open(worker: String, split: String, onFailure: @escaping @Sendable (String) -> Void) async throws -> SplitRelayHandle {
        let listener = try await TunnelListener(service: mesh, node: worker, target: SplitRelayAcceptor.target(split: split))
        Task {
            for await failure in listener.failures { onFailure("relay: \(failure.error)") }
        }
        return SplitRelayHandle(port: listener.port, close: { await listener.close() })
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
