import Logging
import MeshNet

// TEMPORARY until the tunnel branch lands.
struct MeshSplitRelays: SplitRelayOpener {
    let mesh: MeshService
    let logger: Logger
    func open(worker: String, split: String, onFailure: @escaping @Sendable (String) -> Void) async throws -> SplitRelayHandle {
        throw SplitUnavailableRelay()
    }
}
struct SplitUnavailableRelay: Error {}
enum SplitRelayAcceptor {
    static func install(on mesh: MeshService, worker: SplitWorker, logger: Logger) {}
}
