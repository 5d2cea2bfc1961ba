#if canImport(Glibc)
import Glibc
#endif
import Logging
import MeshCore
import MeshEngines
import Synchronization

/// Returns the heap a burst of connections or streams freed to the system (``HeapTrimPolicy``):
/// samples the node's load every second, trims with glibc's `malloc_trim` when a burst ended.
final class HeapTrimmer: Sendable {
    let policy: HeapTrimPolicy
    let clock: any WallClock
    let load: @Sendable () -> Int
    let sleep: Sleeper
    private let state = Mutex<(policy: HeapTrimPolicy.State, trims: Int)>((HeapTrimPolicy.State(), 0))

    init(policy: HeapTrimPolicy = HeapTrimPolicy(), clock: any WallClock, load: @escaping @Sendable () -> Int,
         sleep: @escaping Sleeper = taskSleep) {
        self.sleep = sleep
        self.policy = policy
        self.clock = clock
        self.load = load
    }

    /// glibc's `malloc_trim` (looked up at run time: `malloc.h` is not in Swift's Glibc module).
    static let mallocTrim: (@convention(c) (Int) -> Int32)? = {
        #if canImport(Glibc)
        guard let f = dlsym(nil, "malloc_trim") else { return nil }
        return unsafeBitCast(f, to: (@convention(c) (Int) -> Int32).self)
        #else
        return nil
        #endif
    }()

    /// One sample; true when it trimmed.
    @discardableResult
    func check() -> Bool {
        let l = load()
        let now = clock.monotonicNanos()
        guard state.withLock({ policy.sample(load: l, nowNanos: now, state: &$0.policy) }), let trim = Self.mallocTrim else { return false }
        _ = trim(0)
        state.withLock { $0.trims += 1 }
        return true
    }

    func run(logger: Logger) async {
        while !Task.isCancelled {
            await sleep(.seconds(1))
            if check() { logger.debug("returned freed heap to the system after a burst") }
        }
    }

    /// `/metrics` lines.
    func metricsText() -> String {
        """
        # HELP meshd_heap_trims_total Times meshd returned freed heap memory to the system after a burst of connections or requests.
        # TYPE meshd_heap_trims_total counter
        meshd_heap_trims_total \(state.withLock { $0.trims })

        """
    }
}
