/// When to hand freed heap memory back to the system: glibc keeps what a burst freed in its arenas
/// (4,096 keep-alive connections left a node 30 MB bigger after they closed; `malloc_trim` took
/// it back to 47 MB). A burst is told by the node's load (open connections + requests in flight)
/// falling well below its peak since the last trim. Pure: the node samples and asks.
public struct HeapTrimPolicy: Sendable, Equatable {
    /// How far the load must fall below its peak to count as a burst that ended.
    public var minDrop: Int
    /// Seconds between two trims at least (a trim walks every arena under its lock).
    public var minIntervalSeconds: Double

    public init(minDrop: Int = 64, minIntervalSeconds: Double = 30) {
        self.minDrop = minDrop
        self.minIntervalSeconds = minIntervalSeconds
    }

    /// The peak load since the last trim and when that was.
    public struct State: Sendable, Equatable {
        public var peak = 0
        public var lastTrimNanos: UInt64?
        public init() {}
    }

    /// Takes a sample of the load; true when the node should trim now (the peak then restarts).
    public func sample(load: Int, nowNanos: UInt64, state: inout State) -> Bool {
        state.peak = max(state.peak, load)
        guard state.peak - load >= minDrop else { return false }
        if let last = state.lastTrimNanos, nowNanos < last || Double(nowNanos - last) / 1e9 < minIntervalSeconds { return false }
        state.lastTrimNanos = nowNanos
        state.peak = load
        return true
    }
}
