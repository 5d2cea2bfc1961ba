#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

/// Minimal `sd_notify(3)` client (no libsystemd): sends state datagrams to `$NOTIFY_SOCKET`.
///
/// Used with `Type=notify` units: `ready()` once serving, `watchdog()` every
/// `watchdogPingInterval`, `stopping()` when draining starts. Every call is a no-op returning
/// `false` when not started by systemd (no `$NOTIFY_SOCKET`) or when sending fails.
public struct SystemdNotifier: Sendable {
    /// Environment variables systemd sets for the notify protocol. Remove them from the
    /// environment of child processes (engines) so they never talk to systemd on our behalf.
    public static let environmentKeys = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"]

    /// `$NOTIFY_SOCKET` when usable: a filesystem path (`/…`) or an abstract name (`@…`).
    public let socketPath: String?

    /// `WatchdogSec=` of the unit, from `$WATCHDOG_USEC`, when it is meant for this process
    /// (`$WATCHDOG_PID` unset or equal to `getpid()`); nil when the watchdog is off.
    public let watchdogInterval: Duration?

    public init(environment: [String: String] = ProcessInfo.processInfo.environment) {
        if let path = environment["NOTIFY_SOCKET"], path.count > 1,
           path.hasPrefix("/") || path.hasPrefix("@") {
            socketPath = path
        } else {
            socketPath = nil
        }
        watchdogInterval = Self.parseWatchdog(environment, pid: getpid())
    }

    /// True when a notify socket is configured, i.e. we run under systemd with `Type=notify`.
    public var isEnabled: Bool { socketPath != nil }

    /// How often to call `watchdog()`: half of `watchdogInterval`, as systemd recommends.
    public var watchdogPingInterval: Duration? { watchdogInterval.map { $0 / 2 } }

    /// `READY=1`: startup finished, the service is serving.
    @discardableResult public func ready() -> Bool { notify("READY=1") }

    /// `STOPPING=1`: shutdown (draining) has begun.
    @discardableResult public func stopping() -> Bool { notify("STOPPING=1") }

    /// Tells systemd a reload began (`ready()` tells it ended); `MONOTONIC_USEC` as systemd asks.
    @discardableResult public func reloading() -> Bool {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return notify("RELOADING=1\nMONOTONIC_USEC=\(UInt64(ts.tv_sec) * 1_000_000 + UInt64(ts.tv_nsec) / 1000)")
    }

    /// `WATCHDOG=1`: keep-alive ping.
    @discardableResult public func watchdog() -> Bool { notify("WATCHDOG=1") }

    /// `STATUS=…`: free-form status line shown by `systemctl status` (newlines become spaces).
    @discardableResult public func status(_ text: String) -> Bool {
        notify("STATUS=" + text.map { $0.isNewline ? " " : String($0) }.joined())
    }

    /// Sends `state` (newline-separated `KEY=VALUE` assignments) as one datagram.
    /// Non-blocking; returns false when disabled or on any error. Never traps.
    @discardableResult public func notify(_ state: String) -> Bool {
        guard let path = socketPath else { return false }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        var name = Array(path.utf8)
        if name.first == UInt8(ascii: "@") { name[0] = 0 }  // abstract namespace: leading NUL
        let capacity = MemoryLayout.size(ofValue: addr.sun_path)
        // A filesystem path needs room for its terminating NUL (sockaddr_un() is zeroed).
        guard name.count < capacity || (name[0] == 0 && name.count <= capacity) else { return false }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            raw.copyBytes(from: name)
        }
        let addrLen = socklen_t(MemoryLayout<sockaddr_un>.offset(of: \sockaddr_un.sun_path)! + name.count)

        #if canImport(Darwin)
        let fd = socket(AF_UNIX, SOCK_DGRAM, 0)
        #else
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
            | Int32(SOCK_NONBLOCK.rawValue), 0)
        #endif
        guard fd >= 0 else { return false }
        defer { close(fd) }

        let payload = Array(state.utf8)
        #if canImport(Darwin)
        let flags: Int32 = 0
        #else
        let flags = Int32(MSG_NOSIGNAL)
        #endif
        var sent: Int
        repeat {
            sent = payload.withUnsafeBytes { buf in
                withUnsafePointer(to: &addr) { ptr in
                    ptr.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                        sendto(fd, buf.baseAddress, buf.count, flags, sa, addrLen)
                    }
                }
            }
        } while sent < 0 && errno == EINTR
        return sent == payload.count
    }

    static func parseWatchdog(_ env: [String: String], pid: pid_t) -> Duration? {
        guard let usecText = env["WATCHDOG_USEC"], let usec = UInt64(usecText), usec > 0,
              usec <= UInt64(Int64.max) else { return nil }
        if let pidText = env["WATCHDOG_PID"], !pidText.isEmpty {
            guard let target = pid_t(pidText), target == pid else { return nil }
        }
        return .microseconds(Int64(usec))
    }
}
