import Foundation
import MeshCore
import MeshLedger
import MeshNet

/// `meshctl usage`: this node's usage report, or the whole mesh's. Each node keeps its own
/// records; asked for the mesh, a node asks every live peer for its groups (`/_mesh/usage`, in
/// parallel, 5 s at most each) and adds them up. Nodes that did not answer are named.
struct UsageReporter: Sendable {
    let nodeName: String
    let recorder: UsageRecorder
    let mesh: MeshService?
    let clock: any WallClock
    static let peerPath = "/_mesh/usage"
    static let peerTimeout: Duration = .seconds(5)

    /// This node's groups (what a peer asks for).
    func local(by dimension: UsageDimension, sinceMs: Int64) async -> Result<[UsageGroup], UsageError> {
        guard let log = recorder.log else { return .failure(UsageError("\(nodeName) keeps no usage log (audit.enabled is false)")) }
        do {
            return .success(try await log.report(by: dimension, sinceMs: sinceMs))
        } catch {
            return .failure(UsageError("\(nodeName): cannot read the usage log: \(error)"))
        }
    }

    /// A peer's `/_mesh/usage` request: `{"by": "key", "since_ms": N}` → `{"node", "groups"}` or `{"error"}`.
    func answerPeer(_ body: [UInt8]) async -> (Int, JSON) {
        guard let json = try? JSONParser.parse(body), let by = json["by"]?.stringValue.flatMap(UsageDimension.init(rawValue:)),
              let since = json["since_ms"]?.intValue else {
            return (400, ["error": "a usage request needs by (key, model, node, provider, user or engine) and since_ms"])
        }
        switch await local(by: by, sinceMs: Int64(since)) {
        case .success(let groups):
            return (200, ["node": .string(nodeName), "groups": (try? JSONValueCoding.encode(groups)) ?? .array([])])
        case .failure(let e):
            return (503, ["node": .string(nodeName), "error": .string(e.description)])
        }
    }

    /// The report as `meshctl usage` reads it: by, since, the groups, their total, and per node
    /// whether it answered.
    func report(by dimension: UsageDimension, sinceMs: Int64, meshWide: Bool) async -> JSON {
        var reports: [[UsageGroup]] = []
        var nodes: [JSON] = []
        switch await local(by: dimension, sinceMs: sinceMs) {
        case .success(let g):
            reports.append(g)
            nodes.append(["node": .string(nodeName), "ok": true])
        case .failure(let e):
            nodes.append(["node": .string(nodeName), "ok": false, "error": .string(e.description)])
        }
        if meshWide, let mesh {
            let peers = mesh.peers().map(\.state.id).sorted()
            let request: JSON = ["by": .string(dimension.rawValue), "since_ms": .integer(Int(sinceMs))]
            let answers = await withTaskGroup(of: (String, Result<[UsageGroup], UsageError>).self) { group in
                for peer in peers {
                    group.addTask { (peer, await Self.ask(mesh, peer, request.serialized())) }
                }
                var out: [(String, Result<[UsageGroup], UsageError>)] = []
                for await a in group { out.append(a) }
                return out.sorted { $0.0 < $1.0 }
            }
            for (peer, r) in answers {
                switch r {
                case .success(let g):
                    reports.append(g)
                    nodes.append(["node": .string(peer), "ok": true])
                case .failure(let e):
                    nodes.append(["node": .string(peer), "ok": false, "error": .string(e.description)])
                }
            }
        }
        if meshWide, let mesh {
            // Nodes lost lately are named too: their records are not in this report.
            let listed = Set(nodes.compactMap { $0["node"]?.stringValue })
            for down in mesh.recentlyDown() where !listed.contains(down.id) {
                nodes.append(["node": .string(down.id), "ok": false, "error": "down (lost from the mesh)"])
            }
        }
        let groups = UsageReport.merge(reports)
        let encoded = (try? JSONValueCoding.encode(groups)) ?? .array([])
        return ["by": .string(dimension.rawValue), "since_ms": .integer(Int(sinceMs)),
                "since": .string(ISO8601.format(nanos: UInt64(max(0, sinceMs)) * 1_000_000)),
                "groups": encoded, "total": (try? JSONValueCoding.encode(UsageReport.total(groups))) ?? .null,
                "nodes": .array(nodes)]
    }

    /// One peer's groups, or why not (within ``peerTimeout``).
    static func ask(_ mesh: MeshService, _ peer: String, _ body: [UInt8]) async -> Result<[UsageGroup], UsageError> {
        switch await PeerQuery.ask(mesh, peer, path: peerPath, body: body, timeout: peerTimeout) {
        case .failure(let e):
            return .failure(e)
        case .success(let (status, json)):
            guard status == 200, let g = json["groups"] else { return .failure(UsageError(json["error"]?.stringValue ?? "status \(status)")) }
            do { return .success(try JSONValueCoding.decode([UsageGroup].self, from: g)) } catch { return .failure(UsageError("\(error)")) }
        }
    }
}
