import MeshCore
import MeshNet

/// A small JSON question to one peer over the mesh (`/_mesh/usage`, `/_mesh/ui`, `/_mesh/ping`),
/// answered within `timeout` or not at all: the status and the parsed body, or why not.
enum PeerQuery {
    static func ask(_ mesh: MeshService, _ peer: String, path: String, body: [UInt8] = [],
                    timeout: Duration) async -> Result<(status: Int, json: JSON), UsageError> {
        await withTaskGroup(of: Result<(status: Int, json: JSON), UsageError>?.self) { group in
            group.addTask {
                do {
                    let r = try await mesh.forward(to: peer, path: path, headers: [("Content-Type", "application/json")], body: body)
                    var bytes: [UInt8] = []
                    for try await chunk in r.body { bytes += chunk }
                    return .success((r.status, try JSONParser.parse(bytes)))
                } catch {
                    return .failure(UsageError("\(error)"))
                }
            }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return nil
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first ?? .failure(UsageError("no answer within \(timeout)"))
        }
    }
}
