import Synchronization

/// Time, injected so the core and its tests never read the system clock or sleep: the wall clock
/// (timestamps, days, what people read) and a monotonic count for measuring durations.
public protocol WallClock: Sendable {
    /// Nanoseconds since the Unix epoch. It can step (NTP setting it, a machine without an RTC
    /// booting in 1970, a VM resumed): never measure a timeout with it.
    func nowNanos() -> UInt64
    /// Nanoseconds from an arbitrary start that only move forward, at a steady rate: for timeouts
    /// and liveness (a peer unheard for 3 s), which a step of the wall clock must not decide.
    /// The default is `nowNanos()`, for test clocks that only ever move forward.
    func monotonicNanos() -> UInt64
}

extension WallClock {
    public func monotonicNanos() -> UInt64 { nowNanos() }
}

/// A clock tests move by hand. `advance` moves both of its times; `step` moves only the wall
/// clock, as NTP setting the time does.
public final class ManualClock: WallClock {
    private struct Value {
        var monotonic: UInt64
        var wallOffset: Int64 = 0
    }
    private let value: Mutex<Value>

    public init(nanos: UInt64 = 1_700_000_000_000_000_000) { value = Mutex(Value(monotonic: nanos)) }

    public func nowNanos() -> UInt64 { value.withLock { UInt64(Int64(bitPattern: $0.monotonic) &+ $0.wallOffset) } }
    public func monotonicNanos() -> UInt64 { value.withLock { $0.monotonic } }

    /// Moves the clock forward.
    public func advance(nanos: UInt64) { value.withLock { $0.monotonic += nanos } }
    /// Moves the clock forward by seconds.
    public func advance(seconds: Double) { advance(nanos: UInt64(seconds * 1e9)) }
    /// Sets the wall clock `seconds` forward (negative: back); the monotonic count does not move.
    public func step(seconds: Double) { value.withLock { $0.wallOffset &+= Int64(seconds * 1e9) } }
}

extension Duration {
    /// Whole nanoseconds (traps past about 292 years, as `Int64` arithmetic does).
    public var nanoseconds: Int64 {
        let (s, a) = components
        return s * 1_000_000_000 + a / 1_000_000_000
    }
}

/// A sleep, injected like the clock: `Task.sleep` in tests and by default, the event loop's own
/// timers in meshd (`LoopSleep`), where `Task.sleep` would wake three threads per sleep. It
/// returns early, without error, when the task is cancelled: callers check `Task.isCancelled`.
public typealias Sleeper = @Sendable (Duration) async -> Void
