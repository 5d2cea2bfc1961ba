import Foundation
import MeshCore
@testable import MeshHardware
import Synchronization
import Testing

@Suite struct MonitorTests {
    @Test func latestFollowsFreeMemoryAndEachProblemIsLoggedOnce() async throws {
        let root = try FakeRoot()
        defer { root.remove() }
        try root.card(0, ["vendor": "0x1002\n", "mem_info_vram_total": "\(16 * gib)\n", "mem_info_vram_used": "\(gib)\n"])
        try root.write("proc/meminfo", "MemTotal: 1024 kB\n")
        let log = LogRecorder()
        let monitor = HardwareMonitor(prober: HardwareProber(options: options(root: root.path), runner: RecordedRunner()),
                                      logger: log.logger)
        #expect(monitor.latest == .unknown && monitor.refreshCount == 0)
        await monitor.refresh()
        #expect(monitor.latest.vramFreeBytes == 15 * gib)
        try root.write("sys/class/drm/card0/device/mem_info_vram_used", "\(10 * gib)\n")
        await monitor.refresh()
        await monitor.refresh()
        #expect(monitor.latest.vramFreeBytes == 6 * gib)
        #expect(monitor.refreshCount == 3)
        // The MemAvailable problem recurs at every refresh but is logged once.
        #expect(monitor.latest.problems.count == 1)
        #expect(log.count(level: .warning, containing: "MemAvailable") == 1)
        // A new problem is logged too.
        try root.write("sys/class/drm/card0/device/mem_info_vram_used", "N/A\n")
        await monitor.refresh()
        #expect(log.count(level: .warning, containing: "not a byte count") == 1)
        #expect(log.all.filter { $0.0 == .warning }.count == 2)
        // Free memory changing is not news; the device list appearing was.
        #expect(log.count(level: .info, containing: "AMD GPU") == 1)
    }

    @Test func runRefreshesEveryIntervalUntilTheSleepStops() async {
        let slept = Mutex<[Duration]>([])
        let nvml = FakeNVML(.success([DeviceMemory(kind: .nvidia, index: 0, name: "NVIDIA L4", totalBytes: 24 * gib, freeBytes: gib)]))
        let prober = HardwareProber(options: options(root: "/x"), runner: RecordedRunner(), nvidia: nvml)
        let monitor = HardwareMonitor(prober: prober, interval: .seconds(7), logger: LogRecorder().logger) { d in
            let n = slept.withLock { $0.append(d); return $0.count }
            if n == 3 { throw CancellationError() }
        }
        await monitor.run()
        #expect(monitor.refreshCount == 3)
        #expect(nvml.calls == 3)
        #expect(slept.withLock { $0 } == [.seconds(7), .seconds(7), .seconds(7)])
        #expect(monitor.latest.gpuSummary == "NVIDIA L4")
    }

    @Test func runStopsWhenCancelled() async {
        let monitor = HardwareMonitor(prober: HardwareProber(options: options(root: "/x"), runner: RecordedRunner()),
                                      interval: .seconds(3600), logger: LogRecorder().logger)
        let task = Task { await monitor.run() }
        while monitor.refreshCount == 0 { await Task.yield() }
        task.cancel()
        await task.value
        #expect(monitor.refreshCount == 1)
    }
}

@Suite struct NodeStateHardwareTests {
    @Test func stateWithoutRAMFieldsStillDecodes() throws {
        let old = """
            {"id":"a","name":"a","proto":1,"meshEndpoint":"198.18.0.2:11436","httpEndpoint":"198.18.0.2:11435","seq":5,
             "draining":false,"vramTotalBytes":0,"vramFreeBytes":0,"gpuSummary":"cpu","engines":[],"knownPeers":[]}
            """
        let s = try JSONDecoder().decode(NodeState.self, from: Data(old.utf8))
        #expect(s.id == "a" && s.seq == 5 && s.ramTotalBytes == nil && s.ramFreeBytes == nil)
    }

    @Test func ramFieldsRoundTripAndOlderDecodersIgnoreThem() throws {
        let snap = HardwareSnapshot(devices: [DeviceMemory(kind: .nvidia, index: 0, name: "NVIDIA L4", totalBytes: 24 * gib, freeBytes: gib)],
                                    ram: SystemMemory(totalBytes: 64 * gib, availableBytes: 32 * gib), source: .nvml)
        var s = NodeState(id: "a", name: "a", meshEndpoint: "", httpEndpoint: "")
        s.apply(snap)
        #expect(s.vramTotalBytes == 24 * gib && s.vramFreeBytes == gib && s.gpuSummary == "NVIDIA L4")
        #expect(s.ramTotalBytes == 64 * gib && s.ramFreeBytes == 32 * gib)
        let data = try JSONEncoder().encode(s)
        #expect(try JSONDecoder().decode(NodeState.self, from: data) == s)
        // What a build without the RAM fields reads.
        struct Before: Decodable { var id: String; var vramTotalBytes: Int64; var gpuSummary: String }
        let before = try JSONDecoder().decode(Before.self, from: data)
        #expect(before.vramTotalBytes == 24 * gib && before.gpuSummary == "NVIDIA L4")
    }

    @Test func cpuNodeHasNoVRAMButReportsRAM() {
        let snap = HardwareSnapshot(devices: [DeviceMemory(kind: .cpu, index: 0, name: "cpu", totalBytes: 8 * gib, freeBytes: 4 * gib)],
                                    ram: SystemMemory(totalBytes: 8 * gib, availableBytes: 4 * gib), source: .none)
        var s = NodeState(id: "a", name: "a", meshEndpoint: "", httpEndpoint: "", vramTotalBytes: 1, vramFreeBytes: 1, gpuSummary: "x")
        s.apply(snap)
        #expect(s.vramTotalBytes == 0 && s.vramFreeBytes == 0 && s.gpuSummary == "cpu")
        #expect(s.ramTotalBytes == 8 * gib && s.ramFreeBytes == 4 * gib)
    }
}
