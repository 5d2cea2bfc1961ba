import Synchronization

/// Wall-clock time, injected so the core and its tests never read the system clock or sleep.
public protocol WallClock: Sendable {
    /// Nanoseconds since the Unix epoch.
    func nowNanos() -> UInt64
}

/// A clock tests move by hand.
public final class ManualClock: WallClock {
    private let value: Mutex<UInt64>

    public init(nanos: UInt64 = 1_700_000_000_000_000_000) { value = Mutex(nanos) }

    public func nowNanos() -> UInt64 { value.withLock { $0 } }

    /// Moves the clock forward.
    public func advance(nanos: UInt64) { value.withLock { $0 += nanos } }
    /// Moves the clock forward by seconds.
    public func advance(seconds: Double) { advance(nanos: UInt64(seconds * 1e9)) }
}
