import Logging
import Synchronization

/// Probes the hardware periodically and keeps the latest snapshot for the node's state.
///
/// Each distinct problem is logged once (as a warning), not at every refresh; a change of the GPU
/// list is logged at info. The sleep between refreshes is injected, so tests never wait.
public final class HardwareMonitor: Sendable {
    /// Sleeps between refreshes; throws (cancellation) to stop ``run()``.
    public typealias Sleep = @Sendable (Duration) async throws -> Void

    public let prober: HardwareProber
    public let interval: Duration
    let logger: Logger
    let sleep: Sleep

    private struct State {
        var latest = HardwareSnapshot.unknown
        var refreshes = 0
        /// Problems already logged (bounded: a flood of distinct messages stops being logged).
        var logged = Set<String>()
    }

    private let state = Mutex(State())
    static let maxLoggedProblems = 256

    public init(prober: HardwareProber, interval: Duration = .seconds(10), logger: Logger,
                sleep: @escaping Sleep = { try await Task.sleep(for: $0) }) {
        self.prober = prober
        self.interval = interval
        self.logger = logger
        self.sleep = sleep
    }

    /// The latest snapshot (``HardwareSnapshot/unknown`` before the first refresh).
    public var latest: HardwareSnapshot { state.withLock { $0.latest } }

    /// How many refreshes have completed.
    public var refreshCount: Int { state.withLock { $0.refreshes } }

    /// Probes once, stores and returns the result, and logs what is new.
    @discardableResult
    public func refresh() async -> HardwareSnapshot {
        let snap = await prober.probe()
        let (previous, fresh, first) = state.withLock { s -> (HardwareSnapshot, [String], Bool) in
            let previous = s.latest
            let first = s.refreshes == 0
            s.latest = snap
            s.refreshes += 1
            var fresh: [String] = []
            for p in snap.problems where !s.logged.contains(p) && s.logged.count < Self.maxLoggedProblems {
                s.logged.insert(p)
                fresh.append(p)
            }
            return (previous, fresh, first)
        }
        for p in fresh { logger.warning("hardware probe problem", metadata: ["problem": "\(p)"]) }
        if first || Self.identities(previous) != Self.identities(snap) {
            logger.info("hardware", metadata: [
                "gpu": "\(snap.gpuSummary)", "source": "\(snap.source.rawValue)",
                "vram_total_mib": "\(snap.vramTotalBytes >> 20)", "ram_total_mib": "\((snap.ram?.totalBytes ?? 0) >> 20)",
            ])
        }
        return snap
    }

    /// Refreshes every `interval` until cancelled (or the injected sleep throws).
    public func run() async {
        while !Task.isCancelled {
            await refresh()
            do { try await sleep(interval) } catch { return }
        }
    }

    /// Which devices there are, ignoring how much memory is free.
    static func identities(_ s: HardwareSnapshot) -> [String] {
        s.devices.map { "\($0.kind.rawValue)/\($0.index)/\($0.name)/\($0.totalBytes ?? -1)" }
    }
}
