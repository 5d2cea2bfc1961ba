import Foundation
import MeshCore
import MeshEngines
import MeshNet
import Synchronization

/// The dashboard's data (`/ui/state`): the mesh's nodes as `meshctl nodes --json` shows them, with
/// their engines, GPUs and the hop times between them; the last requests the mesh answered; the
/// budget; open alerts. Each node tells its own part (`/_mesh/ui`: its last requests, GPUs, hop
/// times, alerts and, on a gateway, the budget); the node asked gathers them. Hop times are
/// measured only while someone watches a page (a `/ui/state` here or a `/_mesh/ui` from a peer
/// within ``watchSeconds``): an unwatched mesh pays nothing.
final class Dashboard: Sendable {
    let admin: AdminResponder
    let usage: UsageRecorder
    let mesh: MeshService?
    let clock: any WallClock
    /// Until when (node clock, ns) someone watches; and the last measured hop to each peer (ms).
    private let state = Mutex<(watchedUntil: UInt64, hops: [String: Double])>((0, [:]))
    static let peerPath = "/_mesh/ui"
    static let pingPath = "/_mesh/ping"
    static let watchSeconds: UInt64 = 30
    static let recentLimit = 30
    static let peerTimeout: Duration = .seconds(1)

    private let sleep: Sleeper

    init(admin: AdminResponder, usage: UsageRecorder, mesh: MeshService?, clock: any WallClock,
         sleep: @escaping Sleeper = taskSleep) {
        self.sleep = sleep
        self.admin = admin
        self.usage = usage
        self.mesh = mesh
        self.clock = clock
    }

    private func watched() { state.withLock { $0.watchedUntil = clock.nowNanos() + Self.watchSeconds * 1_000_000_000 } }

    /// This node's own part, for the node gathering the page (`/_mesh/ui`).
    func ownPart() -> JSON {
        watched()
        var part: JSON = [
            "node": .string(admin.nodeName),
            "recent": (try? JSONValueCoding.encode(usage.last(Self.recentLimit))) ?? .array([]),
            "devices": .array(admin.hardware.latest.devices.map(AdminResponder.deviceJSON)),
            "hops_ms": .object(state.withLock { $0.hops }.sorted { $0.key < $1.key }.map { ($0.key, JSON.number(($0.value * 100).rounded() / 100)) }),
            "alerts": admin.alerts?.json() ?? .array([]),
        ]
        if let gw = admin.gateway { part = part.setting("budget", gw.budgetJSON()) }
        return part
    }

    /// The whole page's data, gathered from every live peer (1 s at most each).
    func snapshot() async -> JSON {
        watched()
        let snap = admin.engines.snapshot()
        var parts: [String: JSON] = [admin.nodeName: ownPart()]
        if let mesh {
            let peers = mesh.peers().map(\.state.id)
            let answers = await withTaskGroup(of: (String, JSON?).self) { group in
                for peer in peers { group.addTask { (peer, await Self.ask(mesh, peer, path: Self.peerPath)) } }
                var out: [(String, JSON?)] = []
                for await a in group { out.append(a) }
                return out
            }
            for (peer, part) in answers { if let part { parts[peer] = part } }
        }
        // Engines as routing sees them: this node's own, the peers' from their last state.
        var enginesByNode: [String: [EngineSnapshot]] = [admin.nodeName: snap]
        for p in mesh?.peers() ?? [] { enginesByNode[p.state.id] = p.state.engines }
        let nodes: [JSON] = admin.nodes(snap).map { n in
            let name = n["name"]?.stringValue ?? ""
            let part = parts[name]
            return n.setting("engines", .array((enginesByNode[name] ?? []).map(Self.engineJSON)))
                .setting("devices", part?["devices"] ?? n["devices"] ?? .array([]))
                .setting("hops_ms", part?["hops_ms"] ?? .object([]))
                .setting("answered", .bool(part != nil))
        }
        var recent: [(Int64, JSON)] = []
        var alerts: [JSON] = []
        var budget: JSON = .null
        var budgetNode: JSON = .null
        for (name, part) in parts.sorted(by: { $0.key < $1.key }) {
            for r in part["recent"]?.arrayValue ?? [] { recent.append((Int64(r["ts"]?.intValue ?? 0), r)) }
            for a in part["alerts"]?.arrayValue ?? [] { alerts.append(a.setting("node", .string(name))) }
            if budget.isNull, let b = part["budget"] {
                budget = b
                budgetNode = .string(name)
            }
        }
        recent.sort { $0.0 > $1.0 }
        return [
            "node": .string(admin.nodeName), "version": .string(APIResponder.version),
            "time": .string(ISO8601.format(nanos: clock.nowNanos())),
            "nodes": .array(nodes),
            "recent": .array(recent.prefix(Self.recentLimit).map(\.1)),
            "budget": budget, "budget_node": budgetNode,
            "alerts": .array(alerts),
        ]
    }

    /// One engine for the page: health, models (loaded or not), busy slots, queue, speeds.
    static func engineJSON(_ e: EngineSnapshot) -> JSON {
        AdminResponder.engineJSON(e)
            .setting("busy", .integer(e.load.busy))
            .setting("prefill_tokens_per_second", e.speeds.prefillTokensPerSecond.map(JSON.number) ?? .null)
            .setting("models", .array(e.models.map { m in
                ["name": .string(m.name), "loaded": .bool(m.loaded), "loading": .bool(m.loading ?? false), "split": .bool(m.split ?? false),
                 "size_bytes": m.sizeBytes.map { .int($0) } ?? .null]
            }))
    }

    /// A peer's answer on `path`, or nil within ``peerTimeout``.
    static func ask(_ mesh: MeshService, _ peer: String, path: String) async -> JSON? {
        guard case .success(let (status, json)) = await PeerQuery.ask(mesh, peer, path: path, timeout: peerTimeout), status == 200 else { return nil }
        return json
    }

    /// While watched, measures the round trip of a mesh request to every peer every 2 s.
    func runHopProbe() async {
        while !Task.isCancelled {
            await sleep(.seconds(2))
            guard let mesh, state.withLock({ $0.watchedUntil }) > clock.nowNanos() else { continue }
            let peers = mesh.peers().map(\.state.id)
            let measured = await withTaskGroup(of: (String, Double?).self) { group in
                for peer in peers {
                    group.addTask {
                        let start = ContinuousClock.now
                        guard await Self.ask(mesh, peer, path: Self.pingPath) != nil else { return (peer, nil) }
                        let d = ContinuousClock.now - start
                        return (peer, Double(d.components.seconds) * 1000 + Double(d.components.attoseconds) / 1e15)
                    }
                }
                var out: [(String, Double?)] = []
                for await m in group { out.append(m) }
                return out
            }
            let live = Set(peers)
            state.withLock { s in
                s.hops = s.hops.filter { live.contains($0.key) }
                for (peer, ms) in measured { if let ms { s.hops[peer] = ms } }
            }
        }
    }
}
