import Foundation
import Logging
import Testing
@testable import MeshDiscovery

/// Without avahi-daemon (and here without a system bus: the test points libdbus at a socket that
/// does not exist, so no daemon on the machine is ever contacted), discovery must degrade to a
/// clear "unavailable" state, keep retrying, and stop cleanly. Real publishing and browsing run on
/// the multi-host test bed (Tests/testbed), where each host has its own avahi-daemon.
@Suite(.serialized) struct AvahiDiscoveryTests {
    init() {
        setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent/meshd-test-no-bus", 1)
    }

    let announcement = MDNSAnnouncement(name: "test-node", port: 11436, txt: ["id=test-node", "proto=1", "mesh=11436"])

    @Test func missingDaemonIsReportedAndRetried() async throws {
        let d = AvahiDiscovery(logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }), retryMs: 50)
        let events = try d.start(announcement)
        var it = events.makeAsyncIterator()
        let first = await it.next()
        guard case .daemonUnavailable(let why)? = first else {
            Issue.record("expected daemonUnavailable, got \(String(describing: first))")
            d.stop()
            return
        }
        #expect(why.contains("D-Bus") || why.contains("avahi-daemon"))
        #expect(d.status.daemon == .unavailable)
        #expect(d.status.publishedName == nil)
        // Retries keep running (the reason does not change, so no new event) and updates are safe.
        try await Task.sleep(for: .milliseconds(300))
        d.update(MDNSAnnouncement(name: "test-node", port: 11437, txt: ["id=test-node"]))
        #expect(d.status.daemon == .unavailable)
        d.stop()
        #expect(d.status.daemon == .stopped)
        // The stream ends after stop.
        while await it.next() != nil {}
        d.stop()  // idempotent
        d.update(announcement)  // no-op after stop
    }

    @Test func startStopCyclesReleaseEverything() throws {
        for _ in 0..<25 {
            let d = AvahiDiscovery(logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }), retryMs: 10)
            _ = try d.start(announcement)
            d.stop()
        }
        // A discovery dropped without stop() stops itself.
        weak var weakRef: AvahiDiscovery?
        do {
            let d = AvahiDiscovery(logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }))
            _ = try d.start(announcement)
            weakRef = d
        }
        #expect(weakRef == nil)
    }
}
