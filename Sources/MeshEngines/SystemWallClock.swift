#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import MeshCore

/// The system clock as the core's ``WallClock``: `CLOCK_REALTIME` for the wall clock,
/// `CLOCK_MONOTONIC` for durations (it does not step when the time is set).
public struct SystemWallClock: WallClock {
    public init() {}
    public func nowNanos() -> UInt64 { Self.read(CLOCK_REALTIME) }
    public func monotonicNanos() -> UInt64 { Self.read(CLOCK_MONOTONIC) }

    static func read(_ id: clockid_t) -> UInt64 {
        var ts = timespec()
        clock_gettime(id, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }
}

/// `Task.sleep` as a ``Sleeper``, returning early without error when the task is cancelled: the
/// default where none is injected (tests). meshd injects the event loop's timers instead.
public let taskSleep: Sleeper = { try? await Task.sleep(for: $0) }
