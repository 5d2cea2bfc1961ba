import Logging
import MeshCore
import MeshEngines
import MeshDiscovery
import MeshNet
import Synchronization

/// Ties mDNS to the mesh: publishes this node's `_meshd._tcp` service (TXT from ``DiscoveryTXT``),
/// dials what it finds, and forgets endpoints whose service went away. What mDNS says is a hint:
/// a found node is dialed, and it becomes a peer only when the CURVE handshake succeeds and its
/// state arrives over the mesh. Records of other meshes (fingerprint), other protocol versions and
/// our own service are not dialed at all.
final class DiscoveryAgent: Sendable {
    let avahi: AvahiDiscovery
    let mesh: MeshService
    let logger: Logger
    let nodeID: String
    let httpPort: Int
    /// Instance name → endpoint we dialed for it.
    let dialed = Mutex<[String: String]>([:])
    /// Instance name → why it is not dialed (for status and doctor).
    let ignored = Mutex<[String: String]>([:])

    let sleep: Sleeper

    init(mesh: MeshService, nodeID: String, httpPort: Int, logger: Logger, sleep: @escaping Sleeper = taskSleep) {
        self.sleep = sleep
        self.mesh = mesh
        self.nodeID = nodeID
        self.httpPort = httpPort
        self.logger = logger
        avahi = AvahiDiscovery(serviceType: DiscoveryTXT.serviceType, logger: logger)
    }

    /// The record as it would be published now (mesh port from the bound socket).
    func announcement() -> MDNSAnnouncement? {
        guard let bound = HostPort(parsing: MeshService.normalize(mesh.boundEndpoint)) else { return nil }
        let s = mesh.localState()
        let txt = DiscoveryTXT(nodeID: nodeID, proto: Int(meshProtocolVersion), meshPort: bound.port, httpPort: httpPort,
                               gpu: s.gpuSummary, vramTotalBytes: s.vramTotalBytes, meshFingerprint: mesh.meshFingerprint,
                               version: APIResponder.version)
        return MDNSAnnouncement(name: nodeID, port: UInt16(bound.port), txt: txt.encode())
    }

    /// Publishes and browses until cancelled; re-announces when the record changes (checked every
    /// `refresh`). Returns at once, with a warning, if discovery cannot start at all.
    func run(refresh: Duration = .seconds(5)) async {
        // The mesh port is known once the ROUTER is bound.
        var first: MDNSAnnouncement?
        for _ in 0..<200 where !Task.isCancelled {
            first = announcement()
            if first != nil { break }
            try? await Task.sleep(for: .milliseconds(25))
        }
        guard let first else { return }
        let events: AsyncStream<MDNSEvent>
        do {
            events = try avahi.start(first)
        } catch {
            logger.warning("mDNS discovery disabled", metadata: ["error": "\(error)"])
            return
        }
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                for await e in events { self.handle(e) }
            }
            group.addTask {
                while !Task.isCancelled {
                    await self.sleep(refresh)
                    if let a = self.announcement() { self.avahi.update(a) }
                }
            }
            await withTaskCancellationHandler {
                await group.next()
            } onCancel: {
                self.avahi.stop()
            }
            group.cancelAll()
        }
        avahi.stop()
    }

    func handle(_ event: MDNSEvent) {
        switch event {
        case .found(let svc):
            switch DiscoveryTXT.decode(svc.txt, ownID: nodeID, ownFingerprint: mesh.meshFingerprint) {
            case .success(let txt):
                let ep = HostPort(host: svc.address, port: txt.meshPort).description
                let previous = dialed.withLock { d -> String? in
                    defer { d[svc.name] = ep }
                    return d[svc.name]
                }
                _ = ignored.withLock { $0.removeValue(forKey: svc.name) }
                if previous != ep {
                    logger.info("mDNS: found a node; dialing it (it joins only if the handshake succeeds)", metadata: [
                        "service": "\(svc.name)", "node": "\(txt.nodeID)", "endpoint": "\(ep)", "gpu": "\(txt.gpu)"])
                    if let previous { mesh.forgetDiscovered(previous) }
                }
                mesh.dialDiscovered(ep)
            case .failure(let why):
                let changed = ignored.withLock { i -> Bool in
                    defer { i[svc.name] = why.description }
                    return i[svc.name] != why.description
                }
                if changed && why != .ownNode {
                    logger.notice("mDNS: not dialing a discovered service", metadata: [
                        "service": "\(svc.name)", "address": "\(svc.address)", "reason": "\(why)"])
                }
            }
        case .lost(let name):
            _ = ignored.withLock { $0.removeValue(forKey: name) }
            if let ep = dialed.withLock({ $0.removeValue(forKey: name) }) {
                logger.info("mDNS: service withdrawn", metadata: ["service": "\(name)", "endpoint": "\(ep)"])
                mesh.forgetDiscovered(ep)
            }
        case .daemonUnavailable, .daemonRunning, .published, .nameCollision:
            break  // AvahiDiscovery logs these and keeps them in its status
        }
    }

    /// For `/v1/status` and `meshctl doctor`.
    func statusJSON() -> JSON {
        let st = avahi.status
        let d = dialed.withLock { $0 }
        let ig = ignored.withLock { $0 }
        let services = st.services.values.sorted { $0.name < $1.name }.map { svc -> JSON in
            var o: [(String, JSON)] = [
                ("name", .string(svc.name)), ("address", .string(svc.address)), ("port", .int(Int64(svc.port))),
                ("node", svc.txt["id"].map { .string($0) } ?? .null),
            ]
            if let ep = d[svc.name] { o.append(("dialed", .string(ep))) }
            if let why = ig[svc.name] { o.append(("ignored", .string(why))) }
            return .object(o)
        }
        return .object([
            ("enabled", .bool(true)),
            ("daemon", .string(st.daemon.rawValue)),
            ("detail", .string(st.detail)),
            ("published_name", st.publishedName.map { .string($0) } ?? .null),
            ("services", .array(services)),
        ])
    }
}
