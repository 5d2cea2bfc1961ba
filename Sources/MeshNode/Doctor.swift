import Foundation
import MeshCore
import MeshNet
import MeshZMQ
import NIOCore
import NIOPosix

/// One `meshctl doctor` finding: a check, whether it passed, what was seen, and what to do.
struct DoctorCheck {
    enum Level: String { case ok, warn, fail }
    var name: String
    var level: Level
    var detail: String
    var fix: String?

    var json: JSON {
        ["check": .string(name), "status": .string(level.rawValue), "detail": .string(detail),
         "fix": fix.map(JSON.string) ?? .null]
    }
}

extension AdminResponder {
    /// `GET /v1/doctor`: the node checks what it can see from where it runs (its secret file, the
    /// avahi-daemon, its published service, TCP reachability of every mesh peer it knows, its
    /// engines) and says what to fix in words.
    func doctor(_ snap: [EngineSnapshot]) async -> JSON {
        var checks: [DoctorCheck] = [Self.secretFileCheck(meshConfig.secretFile)]
        if let mesh {
            checks.append(DoctorCheck(name: "mesh", level: .ok, detail: "listening on \(mesh.boundEndpoint)", fix: nil))
            for c in mesh.nameConflicts() {
                checks.append(DoctorCheck(
                    name: "node name \(c.name)", level: .fail,
                    detail: c.isOwnName ? "the machine at \(c.endpoint) also calls itself \(c.name): the mesh cannot tell the two apart"
                                        : "the machine at \(c.endpoint) calls itself \(c.name), which a live peer already is: it is ignored",
                    fix: "give every machine its own node.name (meshd.yaml `node: { name: ... }` or MESHD_NODE_NAME) and restart it"))
            }
            let refused = mesh.authFailureCount
            if refused > 0 {
                checks.append(DoctorCheck(
                    name: "mesh authentication", level: .warn,
                    detail: "\(refused) mesh connection(s) refused by authentication since start",
                    fix: "a machine with another mesh secret (or an untrusted node key) tries to join; copy this mesh's secret file to it, or `meshctl trust add` its key"))
            }
        } else {
            checks.append(DoctorCheck(name: "mesh", level: .warn, detail: "mesh disabled: no secret at \(meshConfig.secretFile)",
                                      fix: "run `meshctl init --secret-file \(meshConfig.secretFile)`, copy the file (mode 0600) to every node, restart meshd"))
        }
        checks += discoveryChecks()
        checks += await peerChecks()
        checks += Self.engineChecks(snap)
        let worst = checks.contains { $0.level == .fail } ? "fail" : checks.contains { $0.level == .warn } ? "warn" : "ok"
        return ["node": .string(nodeName), "status": .string(worst), "checks": .array(checks.map(\.json))]
    }

    static func secretFileCheck(_ path: String) -> DoctorCheck {
        let name = "secret file"
        guard let attrs = try? FileManager.default.attributesOfItem(atPath: path) else {
            return DoctorCheck(name: name, level: .fail, detail: "\(path) does not exist (or cannot be read)",
                               fix: "create it once with `meshctl init --secret-file \(path)` and copy it to every node of the mesh")
        }
        let mode = (attrs[.posixPermissions] as? NSNumber)?.intValue ?? 0
        if mode & 0o077 != 0 {
            return DoctorCheck(name: name, level: .fail, detail: "\(path) has mode \(String(mode, radix: 8)): others can read the mesh secret",
                               fix: "chmod 600 \(path)")
        }
        if (try? MeshSecret.load(path: path)) == nil {
            return DoctorCheck(name: name, level: .fail, detail: "\(path) is not a valid mesh secret (one line of 64 hex digits)",
                               fix: "copy the secret file from another node of the mesh, or make a new mesh with `meshctl init --force`")
        }
        return DoctorCheck(name: name, level: .ok, detail: "\(path), mode \(String(mode, radix: 8))", fix: nil)
    }

    func discoveryChecks() -> [DoctorCheck] {
        guard mdnsEnabled else {
            return [DoctorCheck(name: "mDNS", level: .ok, detail: "disabled (discovery.mdns: false); peers come from mesh.peers", fix: nil)]
        }
        guard let discovery else {
            return [DoctorCheck(name: "mDNS", level: .warn, detail: "enabled, but the mesh is off, so nothing is published",
                                fix: "create the mesh secret (see 'mesh' above)")]
        }
        let st = discovery.avahi.status
        var out: [DoctorCheck] = []
        switch st.daemon {
        case .running:
            out.append(DoctorCheck(name: "avahi-daemon", level: .ok, detail: "connected", fix: nil))
        case .starting:
            out.append(DoctorCheck(name: "avahi-daemon", level: .warn, detail: "not contacted yet", fix: "wait a second and run doctor again"))
        case .connecting, .unavailable, .stopped:
            out.append(DoctorCheck(name: "avahi-daemon", level: .fail, detail: st.detail.isEmpty ? st.daemon.rawValue : st.detail,
                                   fix: "install and start it (`apt install avahi-daemon`, `systemctl enable --now avahi-daemon`), or set discovery.mdns: false and list peers in mesh.peers"))
        }
        if let published = st.publishedName {
            if published == nodeName {
                out.append(DoctorCheck(name: "mDNS service", level: .ok, detail: "published as '\(published)' (_meshd._tcp)", fix: nil))
            } else {
                out.append(DoctorCheck(name: "mDNS service", level: .warn,
                                       detail: "published as '\(published)': another host already uses the name '\(nodeName)'",
                                       fix: "give each machine its own node.name"))
            }
        } else if st.daemon == .running {
            out.append(DoctorCheck(name: "mDNS service", level: .fail, detail: "not published (yet)",
                                   fix: "check meshd's log for 'mDNS' errors; avahi-daemon may refuse the service type"))
        }
        let other = st.services.count
        out.append(DoctorCheck(name: "mDNS peers", level: other > 0 || !meshConfig.peers.isEmpty ? .ok : .warn,
                               detail: "\(other) other _meshd._tcp service(s) seen",
                               fix: other > 0 ? nil : "no other node announces itself: are they on this network segment, with discovery.mdns on? (mDNS does not cross routers)"))
        return out
    }

    /// TCP reachability of every mesh endpoint this node knows: static peers, live peers, recently
    /// lost ones and what mDNS found.
    func peerChecks() async -> [DoctorCheck] {
        guard let mesh else { return [] }
        var endpoints: [String: String] = [:]  // endpoint → who
        var otherMesh: [DoctorCheck] = []
        for p in meshConfig.peers { endpoints[p.description] = "static peer" }
        for e in mesh.peers() { endpoints[e.state.meshEndpoint] = "node \(e.state.id)" }
        for s in mesh.recentlyDown() where !s.meshEndpoint.isEmpty { endpoints[s.meshEndpoint] = "node \(s.id) (down)" }
        let ignored = discovery?.ignored.withLock { $0 } ?? [:]
        for svc in discovery?.avahi.status.services.values ?? [:].values {
            guard let p = svc.txt["mesh"].flatMap(Int.init) else { continue }
            if let why = ignored[svc.name] {
                otherMesh.append(DoctorCheck(name: "mDNS '\(svc.name)'", level: .ok,
                                             detail: "\(svc.address): not dialed: \(why)", fix: nil))
                continue
            }
            endpoints[HostPort(host: svc.address, port: p).description] = "mDNS '\(svc.name)'"
        }
        let live = Set(mesh.peers().map(\.state.meshEndpoint))
        let ordered = endpoints.keys.sorted()
        return await withTaskGroup(of: DoctorCheck.self) { group in
            for ep in ordered {
                let who = endpoints[ep]!
                let isLive = live.contains(ep)
                group.addTask {
                    let name = "peer \(ep)"
                    switch await Self.tcpReachable(ep) {
                    case nil:
                        return DoctorCheck(name: name, level: isLive ? .ok : .warn,
                                           detail: isLive ? "\(who): reachable, in the mesh" : "\(who): TCP port open, but not in the mesh",
                                           fix: isLive ? nil : "the handshake fails or no state arrives: does it hold the same mesh secret (and trust this node's key)?")
                    case let err?:
                        return DoctorCheck(name: name, level: .fail, detail: "\(who): cannot connect: \(err)",
                                           fix: "is meshd running there? is TCP port \(HostPort(parsing: ep)?.port ?? 0) open in its firewall (mesh.listen)?")
                    }
                }
            }
            var out: [DoctorCheck] = []
            for await c in group { out.append(c) }
            return out.sorted { $0.name < $1.name } + otherMesh
        }
    }

    /// nil when a TCP connection to `endpoint` succeeds within a second, else why not.
    static func tcpReachable(_ endpoint: String) async -> String? {
        guard let hp = HostPort(parsing: endpoint) else { return "not host:port" }
        do {
            let ch = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connectTimeout(.seconds(1))
                .connect(host: hp.host, port: hp.port).get()
            try? await ch.close().get()
            return nil
        } catch {
            return "\(error)"
        }
    }

    static func engineChecks(_ snap: [EngineSnapshot]) -> [DoctorCheck] {
        guard !snap.isEmpty else {
            return [DoctorCheck(name: "engines", level: .warn, detail: "no engine configured or detected",
                                fix: "start Ollama (:11434) or llama-server (:8080), or list engines in the config; this node can still forward to peers")]
        }
        return snap.map { e in
            e.healthy
                ? DoctorCheck(name: "engine \(e.id)", level: .ok, detail: "\(e.kind.rawValue) at \(e.url): healthy, \(e.models.count) model(s)", fix: nil)
                : DoctorCheck(name: "engine \(e.id)", level: .fail, detail: "\(e.kind.rawValue) at \(e.url): \(e.healthDetail ?? "unhealthy")",
                              fix: "start the engine or correct its url in the config (engines:)")
        }
    }
}
