import Foundation
import MeshCore
import MeshConfigLoader
import MeshEngines
import MeshHTTPServer

extension MeshdNode {
    /// What a configuration reload did: what changed now, and what changed but waits for a restart.
    public struct ReloadReport: Sendable, Equatable {
        public var applied: [String] = []
        public var needsRestart: [String] = []
    }

    /// Takes `new` (a configuration the loader accepted, as `--check-config` does) while serving:
    /// client and admin keys, the `cloud:` section (a gateway's providers, prices and caps too),
    /// budgets, static peers and engines change now, and no stream is dropped (requests in flight
    /// finish with what they began with; a changed managed llama-server entry restarts). Other
    /// changed sections are named in ``ReloadReport/needsRestart`` and keep their running values.
    /// Throws ``MeshConfigLoader/ConfigLoadError`` (a provider secret or the prices file cannot be
    /// read) and then changes nothing.
    public func reload(_ new: MeshdConfig, environment: [String: String] = ProcessInfo.processInfo.environment) async throws -> ReloadReport {
        let old = current.withLock { $0 }
        var report = ReloadReport()
        var now = old  // what runs once this reload is done

        // TLS files and the gateway first: an unreadable certificate, secret or prices file
        // refuses the whole reload.
        var tlsReady: HTTPServerTLS.Prepared?
        if tls != nil, let cert = new.http.tls.certFile, let key = new.http.tls.keyFile {
            do {
                tlsReady = try HTTPServerTLS.prepare(certFile: cert, keyFile: key)
            } catch let e as HTTPServerTLSError {
                throw ConfigLoadError(issues: [ConfigIssue(source: e.file, key: e.key, reason: e.reason)])
            }
        }
        let wasGateway = gateway != nil, isGateway = !new.cloud.providers.isEmpty
        if let gateway, isGateway, new.cloud != old.cloud || new.budget != old.budget {
            var next = new
            next.budget.timeZone = old.budget.timeZone
            try gateway.reload(next, environment: environment)
            report.applied.append("cloud providers, prices and budget caps")
        }
        if wasGateway != isGateway {
            report.needsRestart.append(isGateway ? "cloud.providers (this node becomes a gateway)" : "cloud.providers (this node stops being a gateway)")
        }
        if new.budget.timeZone != old.budget.timeZone { report.needsRestart.append("budget.time_zone") }
        if wasGateway == isGateway {
            now.cloud = new.cloud
            now.budget = new.budget
            now.budget.timeZone = old.budget.timeZone
            if new.cloud != old.cloud {
                cloudSetup.set(new.cloud)
                if !wasGateway { report.applied.append("cloud (escalation, local-only models and keys)") }
            }
        }

        if let tlsReady, let tls {
            // Re-read on every reload: a renewed certificate usually replaces the same files.
            tls.apply(tlsReady)
            now.http.tls = new.http.tls
            report.applied.append("http.tls (certificate and key read again; open connections keep theirs)")
        } else if new.http.tls.enabled != old.http.tls.enabled {
            report.needsRestart.append(new.http.tls.enabled ? "http.tls (turning HTTPS on)" : "http.tls (turning HTTPS off)")
        }

        if new.http.apiKeys != old.http.apiKeys || new.http.adminKeys != old.http.adminKeys {
            keys.set(apiKeys: new.http.apiKeys, adminKeys: new.http.adminKeys)
            now.http.apiKeys = new.http.apiKeys
            now.http.adminKeys = new.http.adminKeys
            report.applied.append("http.api_keys and http.admin_keys (\(ClientKey.parse(new.http.apiKeys).count) and \(ClientKey.parse(new.http.adminKeys).count) keys)")
        }

        if new.limits != old.limits {
            limiter.set(new.limits)
            now.limits = new.limits
            report.applied.append("limits (\(new.limits.perKey.count) per-key entries; counts kept)")
        }

        if new.mesh.peers != old.mesh.peers {
            if let mesh {
                let (added, removed) = await mesh.setStaticPeers(new.mesh.peers)
                now.mesh.peers = new.mesh.peers
                report.applied.append("mesh.peers (added \(added), removed \(removed))")
            } else {
                report.needsRestart.append("mesh.peers (the mesh is off: no mesh.secret_file)")
            }
        }

        if new.effectiveEngines != old.effectiveEngines {
            let (added, removed, replaced) = await engines.reconfigure(from: old.effectiveEngines, to: new.effectiveEngines, transport: client)
            now.engines = new.engines
            report.applied.append("engines (added \(added), removed \(removed), replaced \(replaced))")
        }

        // Everything else runs as it started until a restart.
        var rest = new
        rest.http.apiKeys = now.http.apiKeys
        rest.http.adminKeys = now.http.adminKeys
        rest.http.tls = now.http.tls
        rest.cloud = now.cloud
        rest.budget = now.budget
        rest.mesh.peers = now.mesh.peers
        rest.engines = now.engines
        rest.limits = now.limits
        let sections: [(String, Bool)] = [
            ("node.name", rest.nodeName != now.nodeName), ("state_dir", rest.stateDir != now.stateDir), ("http", rest.http != now.http),
            ("admin", rest.admin != now.admin), ("timeouts", rest.timeouts != now.timeouts), ("engine_poll", rest.enginePoll != now.enginePoll),
            ("logging", rest.logging != now.logging), ("mesh", rest.mesh != now.mesh), ("discovery", rest.discovery != now.discovery),
            ("hardware", rest.hardware != now.hardware), ("split", rest.split != now.split), ("routing", rest.routing != now.routing),
            ("models", rest.models != now.models), ("alerts", rest.alerts != now.alerts), ("audit", rest.audit != now.audit),
            ("cache", rest.responseCache != now.responseCache),
        ]
        report.needsRestart += sections.filter(\.1).map(\.0)
        current.withLock { $0 = now }
        return report
    }
}
