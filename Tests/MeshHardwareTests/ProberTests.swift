import Foundation
import MeshCore
@testable import MeshHardware
import Testing

@Suite struct ProberTests {
    static let twoGPUs = "0, NVIDIA GeForce RTX 4090, 24564, 20000\n1, NVIDIA GeForce RTX 4090, 24564, 4000\n"

    @Test func cpuOnlyNodeReportsRAMAsTheCPUDeviceAndNoVRAM() async throws {
        let root = try FakeRoot()
        defer { root.remove() }
        try root.meminfo(totalKB: 32 * 1024 * 1024, availableKB: 20 * 1024 * 1024)
        try root.write("proc/cpuinfo", "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz\n")
        let runner = RecordedRunner()
        let snap = await HardwareProber(options: options(root: root.path), runner: runner).probe()
        #expect(snap.source == .none)
        #expect(snap.gpuSummary == "cpu")
        #expect(snap.vramTotalBytes == 0 && snap.vramFreeBytes == 0)
        #expect(snap.ram == SystemMemory(totalBytes: 32 * gib, availableBytes: 20 * gib))
        #expect(snap.devices == [DeviceMemory(kind: .cpu, index: 0, name: "Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz",
                                              totalBytes: 32 * gib, freeBytes: 20 * gib)])
        // Tools that are not installed are not problems.
        #expect(snap.problems.isEmpty)
        #expect(runner.calls == [nvidiaSMIKey, rocmMemoryKey])
    }

    @Test func nothingReadableAtAllStillGivesASnapshot() async {
        let snap = await HardwareProber(options: options(root: "/nonexistent-meshd-root"), runner: RecordedRunner()).probe()
        #expect(snap.gpuSummary == "cpu")
        #expect(snap.ram == nil)
        #expect(snap.devices == [DeviceMemory(kind: .cpu, index: 0, name: "cpu", totalBytes: nil, freeBytes: nil)])
        #expect(snap.problems == ["cannot read /nonexistent-meshd-root/proc/meminfo"])
    }

    @Test func nvidiaSMIWhenNVMLIsAbsent() async throws {
        let root = try FakeRoot()
        defer { root.remove() }
        try root.meminfo(totalKB: 64 * 1024 * 1024, availableKB: 60 * 1024 * 1024)
        var o = options(root: root.path)
        o.nvmlLibrary = "/nonexistent/libnvidia-ml.so.1"
        let runner = RecordedRunner([nvidiaSMIKey: ok(Self.twoGPUs)])
        let snap = await HardwareProber(options: o, runner: runner).probe()
        #expect(snap.source == .nvidiaSMI)
        #expect(snap.gpuSummary == "2x NVIDIA GeForce RTX 4090")
        #expect(snap.vramTotalBytes == 2 * 24564 * mib && snap.vramFreeBytes == 24000 * mib)
        #expect(snap.ram?.totalBytes == 64 * gib)
        #expect(snap.problems.isEmpty, "a missing NVML is expected, not a problem: \(snap.problems)")
        #expect(runner.calls == [nvidiaSMIKey], "AMD is not looked for once NVIDIA GPUs are found")
    }

    @Test func aLibraryThatIsNotNVMLFallsBackWithAProblem() async throws {
        var o = options(root: "/nonexistent-meshd-root")
        o.nvmlLibrary = "libc.so.6"
        let runner = RecordedRunner([nvidiaSMIKey: ok(Self.twoGPUs)])
        let snap = await HardwareProber(options: o, runner: runner).probe()
        #expect(snap.source == .nvidiaSMI)
        #expect(snap.problems.contains { $0.contains("not a usable NVML") })
    }

    @Test func nvmlLoadReportsAbsentAndBrokenLibrariesDifferently() {
        guard case .failure(.absent) = NVMLLibrary.load(path: "/nonexistent/libnvidia-ml.so.1") else {
            Issue.record("a missing library must be .absent")
            return
        }
        guard case .failure(.failed(let why)) = NVMLLibrary.load(path: "libc.so.6") else {
            Issue.record("libc has no nvmlInit_v2: must be .failed")
            return
        }
        #expect(why.contains("nvml"))
    }

    @Test func nvmlIsUsedFirstAndNvidiaSMIIsNotRun() async {
        let nvml = FakeNVML(.success([DeviceMemory(kind: .nvidia, index: 0, name: "NVIDIA H100 80GB HBM3",
                                                   totalBytes: 80 * gib, freeBytes: 79 * gib)]))
        let runner = RecordedRunner([nvidiaSMIKey: ok(Self.twoGPUs)])
        let prober = HardwareProber(options: options(root: "/nonexistent-meshd-root"), runner: runner, nvidia: nvml)
        let snap = await prober.probe()
        #expect(snap.source == .nvml)
        #expect(snap.gpuSummary == "NVIDIA H100 80GB HBM3")
        #expect(snap.vramFreeBytes == 79 * gib)
        #expect(runner.calls.isEmpty)
        _ = await prober.probe()
        #expect(nvml.calls == 2)
    }

    @Test func nvmlSayingNoGPUIsBelievedButAMDIsStillLookedFor() async {
        let runner = RecordedRunner([nvidiaSMIKey: ok(Self.twoGPUs)])
        let snap = await HardwareProber(options: options(root: "/nonexistent-meshd-root"), runner: runner,
                                        nvidia: FakeNVML(.success([]))).probe()
        #expect(snap.gpuSummary == "cpu")
        #expect(runner.calls == [rocmMemoryKey])
    }

    @Test func failingNVMLFallsBackToNvidiaSMI() async {
        let runner = RecordedRunner([nvidiaSMIKey: ok(Self.twoGPUs)])
        let snap = await HardwareProber(options: options(root: "/nonexistent-meshd-root"), runner: runner,
                                        nvidia: FakeNVML(.failure(.failed("nvmlInit failed: NVML_ERROR_DRIVER_NOT_LOADED (9)")))).probe()
        #expect(snap.source == .nvidiaSMI)
        #expect(snap.gpuSummary == "2x NVIDIA GeForce RTX 4090")
        #expect(snap.problems.contains("nvmlInit failed: NVML_ERROR_DRIVER_NOT_LOADED (9)"))
    }

    @Test func nvmlWithUnknownSizesIsCompletedByNvidiaSMI() async {
        let nvml = FakeNVML(.success([DeviceMemory(kind: .nvidia, index: 0, name: "NVIDIA GB10", totalBytes: nil, freeBytes: nil)]))
        let gapless = RecordedRunner([nvidiaSMIKey: ok("0, NVIDIA GB10, 122000, 100000")])
        let better = await HardwareProber(options: options(root: "/x"), runner: gapless, nvidia: nvml).probe()
        #expect(better.source == .nvidiaSMI && better.vramTotalBytes == 122000 * mib)
        // When nvidia-smi knows no more, NVML's list (with its gaps) stays.
        let same = RecordedRunner([nvidiaSMIKey: ok("0, NVIDIA GB10, [N/A], [N/A]")])
        let kept = await HardwareProber(options: options(root: "/x"), runner: same, nvidia: nvml).probe()
        #expect(kept.source == .nvml && kept.gpuSummary == "NVIDIA GB10" && kept.vramTotalBytes == 0)
    }

    @Test(.timeLimit(.minutes(1)))
    func aHangingNVMLIsAbandonedAndNotQueriedAgainUntilItReturns() async throws {
        let nvml = BlockingNVML()
        defer { nvml.release() }
        let runner = RecordedRunner([nvidiaSMIKey: ok(Self.twoGPUs)])
        let prober = HardwareProber(options: options(root: "/x", timeout: .milliseconds(100)), runner: runner, nvidia: nvml)
        let first = await prober.probe()
        #expect(first.source == .nvidiaSMI && first.gpuSummary == "2x NVIDIA GeForce RTX 4090")
        #expect(first.problems.contains("NVML did not answer within 0.1 seconds"))
        let second = await prober.probe()
        #expect(second.source == .nvidiaSMI)
        #expect(second.problems.contains("NVML has not returned from an earlier query"))
        #expect(nvml.calls == 1)
        nvml.release()
        var after = second
        for _ in 0..<1000 where after.source != .nvml {
            try await Task.sleep(for: .milliseconds(10))
            after = await prober.probe()
        }
        #expect(after.source == .nvml && after.gpuSummary == "NVIDIA L40S")
    }

    @Test func nvidiaSMIExitingNonZeroIsAProblemAndTheNodeIsCPU() async {
        let runner = RecordedRunner([nvidiaSMIKey: .success(CommandOutput(
            status: 9, stdout: "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the latest NVIDIA driver is installed and running.\n"))])
        let snap = await HardwareProber(options: options(root: "/x"), runner: runner).probe()
        #expect(snap.gpuSummary == "cpu")
        let problem = snap.problems.first { $0.hasPrefix("nvidia-smi") }
        #expect(problem?.contains("exited with status 9") == true)
        #expect(problem?.contains("couldn't communicate") == true)
    }

    @Test func nvidiaSMIFindingNoDeviceIsNotAProblem() async {
        let runner = RecordedRunner([nvidiaSMIKey: .success(CommandOutput(status: 6, stdout: "No devices were found\n"))])
        let snap = await HardwareProber(options: options(root: "/x"), runner: runner).probe()
        #expect(snap.gpuSummary == "cpu")
        #expect(!snap.problems.contains { $0.contains("nvidia-smi") })
        #expect(runner.calls == [nvidiaSMIKey, rocmMemoryKey])
    }

    @Test func garbageFromNvidiaSMIKeepsTheGoodLines() async {
        let runner = RecordedRunner([nvidiaSMIKey: ok("0, NVIDIA GeForce RTX 3090, 24576, 1000\n<html>oops</html>\n")])
        let snap = await HardwareProber(options: options(root: "/x"), runner: runner).probe()
        #expect(snap.gpuSummary == "NVIDIA GeForce RTX 3090")
        #expect(snap.problems.contains { $0.contains("<html>") })
    }

    @Test func toolThatCannotStartIsAProblem() async {
        let runner = RecordedRunner([nvidiaSMIKey: .failure(.failedToStart("Permission denied"))])
        let snap = await HardwareProber(options: options(root: "/x"), runner: runner).probe()
        #expect(snap.problems.contains("nvidia-smi could not start: Permission denied"))
    }

    @Test func runnerTimeoutIsReported() async {
        let runner = RecordedRunner([nvidiaSMIKey: .failure(.timedOut)])
        let snap = await HardwareProber(options: options(root: "/x", timeout: .milliseconds(300)), runner: runner).probe()
        #expect(snap.problems.contains("nvidia-smi did not answer within 0.3 seconds"))
    }

    @Test(.timeLimit(.minutes(1)))
    func aHangingToolIsAbandonedAfterTheTimeout() async {
        let runner = HangingRunner()
        defer { runner.release() }
        let started = ContinuousClock.now
        let snap = await HardwareProber(options: options(root: "/x", timeout: .milliseconds(100)), runner: runner).probe()
        let took = ContinuousClock.now - started
        // nvidia-smi and rocm-smi each get the timeout plus as much grace: 0.4 s. The runner never
        // returns until released, so any end proves it was abandoned; the bound leaves room for a
        // test pool busy with other suites for seconds (10.05 s was seen on a 2-core CI machine).
        #expect(took < .seconds(30), "took \(took)")
        #expect(took >= .milliseconds(200))
        #expect(runner.started == 2)
        #expect(snap.gpuSummary == "cpu")
        #expect(snap.problems.filter { $0.contains("did not answer") }.count == 2)
    }
}

@Suite struct AMDProberTests {
    static let vram: [String: String] = [
        "vendor": "0x1002\n", "mem_info_vram_total": "25753026560\n", "mem_info_vram_used": "753026560\n",
    ]

    @Test func amdCardFromSysfsIntelCardIgnored() async throws {
        let root = try FakeRoot()
        defer { root.remove() }
        try root.card(0, ["vendor": "0x8086\n", "mem_info_vram_total": "999999\n", "mem_info_vram_used": "0\n"])
        try root.card(1, Self.vram.merging(["product_name": "Radeon RX 7900 XTX\n"]) { $1 })
        try root.mkdir("sys/class/drm/card1-DP-1")
        try root.mkdir("sys/class/drm/renderD128")
        try root.meminfo(totalKB: 1024 * 1024, availableKB: 512 * 1024)
        let runner = RecordedRunner()
        let snap = await HardwareProber(options: options(root: root.path), runner: runner).probe()
        #expect(snap.source == .sysfs)
        #expect(snap.devices == [DeviceMemory(kind: .amd, index: 1, name: "AMD Radeon RX 7900 XTX",
                                              totalBytes: 25753026560, freeBytes: 25_000_000_000)])
        #expect(snap.vramTotalBytes == 25753026560)
        #expect(snap.ram?.totalBytes == gib)
        #expect(snap.problems.isEmpty)
        // Sizes and name known: rocm-smi is not needed.
        #expect(runner.calls == [nvidiaSMIKey])
    }

    @Test func unnamedSysfsCardsAreNamedByRocmSMIOnce() async throws {
        let root = try FakeRoot()
        defer { root.remove() }
        try root.card(0, Self.vram)
        try root.card(1, Self.vram)
        let runner = RecordedRunner([rocmNamesKey: ok(RocmSMIParserTests.names)])
        let prober = HardwareProber(options: options(root: root.path), runner: runner)
        let snap = await prober.probe()
        #expect(snap.gpuSummary == "AMD Radeon RX 7900 XTX + AMD Radeon RX 6800")
        _ = await prober.probe()
        #expect(runner.calls.filter { $0 == rocmNamesKey }.count == 1)
        #expect(!runner.calls.contains(rocmMemoryKey))
    }

    @Test func unnamedSysfsCardWithoutRocmSMIIsAMDGPU() async throws {
        let root = try FakeRoot()
        defer { root.remove() }
        try root.card(0, Self.vram.merging(["product_name": "\n"]) { $1 })
        try root.meminfo(totalKB: 1024, availableKB: 1024)
        let snap = await HardwareProber(options: options(root: root.path), runner: RecordedRunner()).probe()
        #expect(snap.gpuSummary == "AMD GPU")
        #expect(snap.problems.isEmpty)
    }

    @Test func missingMemInfoFilesFallBackToRocmSMI() async throws {
        let root = try FakeRoot()
        defer { root.remove() }
        try root.card(0, ["vendor": "0x1002\n"])
        let runner = RecordedRunner([rocmMemoryKey: ok(RocmSMIParserTests.memory), rocmNamesKey: ok(RocmSMIParserTests.names)])
        let snap = await HardwareProber(options: options(root: root.path), runner: runner).probe()
        #expect(snap.source == .rocmSMI)
        #expect(snap.devices.map(\.name) == ["AMD Radeon RX 7900 XTX", "AMD Radeon RX 6800"])
        #expect(snap.vramTotalBytes == 25753026560 + 17163091968)
        // The sysfs gap is reported even though rocm-smi filled it.
        #expect(snap.problems.contains { $0.contains("card0/device/mem_info_vram_total") })
    }

    @Test func missingMemInfoAndNoRocmSMIKeepsTheCardWithUnknownSize() async throws {
        let root = try FakeRoot()
        defer { root.remove() }
        try root.card(0, ["vendor": "0x1002\n", "mem_info_vram_total": "garbage\n"])
        let snap = await HardwareProber(options: options(root: root.path), runner: RecordedRunner()).probe()
        #expect(snap.source == .sysfs)
        #expect(snap.devices == [DeviceMemory(kind: .amd, index: 0, name: "AMD GPU", totalBytes: nil, freeBytes: nil)])
        #expect(snap.vramTotalBytes == 0)
        #expect(snap.problems.contains { $0.contains("is not a byte count: \"garbage\"") })
        #expect(snap.problems.contains { $0.contains("cannot read") && $0.hasSuffix("mem_info_vram_used") })
    }

    @Test func unreadableFileIsAProblemNotACrash() async throws {
        let root = try FakeRoot()
        defer { root.remove() }
        try root.card(0, ["vendor": "0x1002\n", "mem_info_vram_used": "0\n"])
        // A directory where the file should be cannot be read, even by root.
        try root.mkdir("sys/class/drm/card0/device/mem_info_vram_total")
        try root.mkdir("proc/meminfo")
        let snap = await HardwareProber(options: options(root: root.path), runner: RecordedRunner()).probe()
        #expect(snap.devices.first?.kind == .amd && snap.devices.first?.totalBytes == nil)
        #expect(snap.ram == nil)
        #expect(snap.problems.contains { $0.hasPrefix("cannot read") && $0.hasSuffix("mem_info_vram_total") })
        #expect(snap.problems.contains { $0.hasPrefix("cannot read") && $0.hasSuffix("proc/meminfo") })
    }

    @Test func rocmSMIWithoutSysfs() async {
        let runner = RecordedRunner([rocmMemoryKey: ok(RocmSMIParserTests.memory), rocmNamesKey: .success(CommandOutput(status: 2, stdout: ""))])
        let snap = await HardwareProber(options: options(root: "/x"), runner: runner).probe()
        #expect(snap.source == .rocmSMI)
        #expect(snap.gpuSummary == "2x AMD GPU")
        #expect(snap.problems.filter { $0.hasPrefix("rocm-smi") } == ["rocm-smi exited with status 2: (empty)"])
    }

    @Test func nvidiaWinsOverAnAMDIntegratedGPU() async throws {
        let root = try FakeRoot()
        defer { root.remove() }
        try root.card(0, Self.vram)
        let runner = RecordedRunner([nvidiaSMIKey: ok("0, NVIDIA GeForce RTX 4090, 24564, 20000")])
        let snap = await HardwareProber(options: options(root: root.path), runner: runner).probe()
        #expect(snap.gpuSummary == "NVIDIA GeForce RTX 4090")
        #expect(snap.devices.allSatisfy { $0.kind == .nvidia })
    }
}
