import MeshCore
@testable import MeshHardware
import Testing

@Suite struct NvidiaSMIParserTests {
    @Test func oneGPU() {
        let p = HardwareParsers.nvidiaSMI("0, NVIDIA GeForce RTX 4090, 24564, 23987\n")
        #expect(p.problems.isEmpty)
        #expect(p.value == [DeviceMemory(kind: .nvidia, index: 0, name: "NVIDIA GeForce RTX 4090",
                                         totalBytes: 24564 * mib, freeBytes: 23987 * mib)])
    }

    @Test func twoGPUsSumAndSummarise() {
        let p = HardwareParsers.nvidiaSMI("""
            0, NVIDIA GeForce RTX 4090, 24564, 20000
            1, NVIDIA GeForce RTX 4090, 24564, 4000\r

            """)
        #expect(p.problems.isEmpty)
        #expect(p.value.map(\.index) == [0, 1])
        let snap = HardwareSnapshot(devices: p.value, ram: nil, source: .nvidiaSMI)
        #expect(snap.vramTotalBytes == 2 * 24564 * mib)
        #expect(snap.vramFreeBytes == 24000 * mib)
        #expect(snap.gpuSummary == "2x NVIDIA GeForce RTX 4090")
    }

    @Test func mixedNamesAreListedInOrder() {
        let p = HardwareParsers.nvidiaSMI("0, NVIDIA A100-SXM4-80GB, 81920, 80000\n1, Tesla T4, 15360, 15000\n2, Tesla T4, 15360, 15000")
        #expect(HardwareSnapshot.summary(of: p.value) == "NVIDIA A100-SXM4-80GB + 2x Tesla T4")
    }

    @Test func notAvailableValuesAreUnknownNotZeroOrDropped() {
        let p = HardwareParsers.nvidiaSMI("0, NVIDIA GB10, [N/A], [N/A]\n1, [Not Supported], 16384, [Insufficient Permissions]\n")
        #expect(p.value.count == 2)
        #expect(p.value[0].name == "NVIDIA GB10" && p.value[0].totalBytes == nil && p.value[0].freeBytes == nil)
        #expect(p.value[1].name == "NVIDIA GPU" && p.value[1].totalBytes == 16384 * mib && p.value[1].freeBytes == nil)
        #expect(p.problems == ["nvidia-smi does not report the memory of GPU 0, GPU 1"])
        // Unknown sizes count as nothing in the sums.
        #expect(HardwareSnapshot(devices: p.value, ram: nil, source: .nvidiaSMI).vramFreeBytes == 0)
    }

    @Test func nameWithACommaIsKept() {
        let p = HardwareParsers.nvidiaSMI("3, NVIDIA RTX 6000 Ada Generation, rev 2, 49140, 48000")
        #expect(p.value.first?.name == "NVIDIA RTX 6000 Ada Generation, rev 2")
        #expect(p.value.first?.index == 3)
    }

    @Test func garbageAndTruncatedLinesAreSkippedWithOneProblem() {
        let p = HardwareParsers.nvidiaSMI("""
            0, NVIDIA GeForce RTX 3090, 24576, 1000
            Failed to initialize NVML: Driver/library version mismatch
            1, NVIDIA GeForce RTX 3090, lots, 1000
            2, NVIDIA GeForce RTX 3090, 245
            """)
        #expect(p.value.map(\.index) == [0])
        #expect(p.problems.count == 1)
        #expect(p.problems.first?.contains("Driver/library version mismatch") == true)
        #expect(p.problems.first?.contains("(and 2 more)") == true)
    }

    @Test func emptyOutputIsAProblemNotAGPU() {
        for text in ["", "\n\n", "   "] {
            let p = HardwareParsers.nvidiaSMI(text)
            #expect(p.value.isEmpty)
            #expect(p.problems == ["nvidia-smi printed no GPU"])
        }
    }

    @Test func negativeOrHugeNumbersAreRejected() {
        let p = HardwareParsers.nvidiaSMI("-1, X, 1, 1\n0, X, -5, 1\n0, X, 99999999999999999999, 1")
        #expect(p.value.isEmpty)
        #expect(p.problems.count == 1)
    }
}

@Suite struct RocmSMIParserTests {
    static let memory = """
        {"card0": {"VRAM Total Memory (B)": "25753026560", "VRAM Total Used Memory (B)": "1200128000"}, \
        "card1": {"VRAM Total Memory (B)": 17163091968, "VRAM Total Used Memory (B)": "0"}}
        """
    static let names = """
        {"card0": {"Card series": "Navi 31 [Radeon RX 7900 XTX]", "Card model": "0x744c", \
        "Card vendor": "Advanced Micro Devices, Inc. [AMD/ATI]", "Card SKU": "EXT091029", "GFX Version": "gfx1100"}, \
        "card1": {"Card Series": "Radeon RX 6800", "Card Model": "0x73bf", "Card Vendor": "Advanced Micro Devices, Inc. [AMD/ATI]"}}
        """

    @Test func memoryAndNames() {
        let p = HardwareParsers.rocmSMI(memory: Self.memory, names: Self.names)
        #expect(p.problems.isEmpty)
        #expect(p.value == [
            DeviceMemory(kind: .amd, index: 0, name: "AMD Radeon RX 7900 XTX", totalBytes: 25753026560, freeBytes: 25753026560 - 1200128000),
            DeviceMemory(kind: .amd, index: 1, name: "AMD Radeon RX 6800", totalBytes: 17163091968, freeBytes: 17163091968),
        ])
    }

    @Test func withoutNamesCardsAreAMDGPU() {
        let p = HardwareParsers.rocmSMI(memory: Self.memory)
        #expect(p.value.map(\.name) == ["AMD GPU", "AMD GPU"])
    }

    @Test func nonCardKeysAreIgnoredAndMissingSizesAreUnknown() {
        let p = HardwareParsers.rocmSMI(memory: """
            {"system": {"Driver version": "6.7.0"}, "card2": {"VRAM Total Memory (B)": "N/A"}}
            """)
        #expect(p.value.count == 1)
        #expect(p.value.first?.index == 2 && p.value.first?.totalBytes == nil && p.value.first?.freeBytes == nil)
        #expect(p.problems == ["rocm-smi does not report the VRAM of card2"])
    }

    @Test func brokenJSONDegradesToNothingWithAProblem() {
        for text in ["", "WARNING: No AMD GPUs specified", "{\"card0\": {\"VRAM Total", "[1, 2]"] {
            let p = HardwareParsers.rocmSMI(memory: text)
            #expect(p.value.isEmpty)
            #expect(p.problems.count == 1, "\(text): \(p.problems)")
        }
    }

    @Test func brokenNamesKeepTheMemory() {
        let p = HardwareParsers.rocmSMI(memory: Self.memory, names: "garbage")
        #expect(p.value.count == 2)
        #expect(p.problems.count == 1 && p.problems[0].contains("--showproductname"))
    }

    @Test func amdNames() {
        #expect(HardwareParsers.amdName("Navi 31 [Radeon RX 7900 XTX]") == "AMD Radeon RX 7900 XTX")
        #expect(HardwareParsers.amdName("AMD Instinct MI300X") == "AMD Instinct MI300X")
        #expect(HardwareParsers.amdName("Radeon Pro W7900\n") == "AMD Radeon Pro W7900")
        #expect(HardwareParsers.amdName("0x744c") == nil)
        #expect(HardwareParsers.amdName("") == nil)
        #expect(HardwareParsers.amdName("[N/A]") == nil)
    }
}

@Suite struct KernelFileParserTests {
    @Test func meminfo() {
        let p = HardwareParsers.meminfo("""
            MemTotal:       65773568 kB
            MemFree:         3214528 kB
            MemAvailable:   40112640 kB
            Buffers:          912384 kB
            HugePages_Total:       0
            """)
        #expect(p.problems.isEmpty)
        #expect(p.value == SystemMemory(totalBytes: 65773568 * 1024, availableBytes: 40112640 * 1024))
    }

    @Test func meminfoWithoutMemAvailableFallsBackToMemFree() {
        let p = HardwareParsers.meminfo("MemTotal: 1000 kB\nMemFree: 400 kB\n")
        #expect(p.value == SystemMemory(totalBytes: 1000 * 1024, availableBytes: 400 * 1024))
        #expect(p.problems.count == 1)
    }

    @Test func meminfoWithoutTotalIsUnknown() {
        for text in ["", "MemFree: 400 kB", "MemTotal: lots kB", "garbage\u{0}\u{1}"] {
            let p = HardwareParsers.meminfo(text)
            #expect(p.value == nil)
            #expect(p.problems.count == 1)
        }
    }

    @Test func sysfsValues() {
        #expect(HardwareParsers.sysfsInteger("25753026560\n") == 25753026560)
        #expect(HardwareParsers.sysfsInteger("") == nil)
        #expect(HardwareParsers.sysfsInteger("-1") == nil)
        #expect(HardwareParsers.sysfsInteger("12 MB") == nil)
        #expect(HardwareParsers.pciVendor("0x1002\n") == 0x1002)
        #expect(HardwareParsers.pciVendor("0x8086") == 0x8086)
        #expect(HardwareParsers.pciVendor("1002") == nil)
        #expect(HardwareParsers.pciVendor("0xzz") == nil)
    }

    @Test func cpuModel() {
        #expect(HardwareParsers.cpuModel("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD Ryzen 9 7950X 16-Core Processor\n")
                == "AMD Ryzen 9 7950X 16-Core Processor")
        #expect(HardwareParsers.cpuModel("processor\t: 0\nBogoMIPS\t: 48.00\nCPU part\t: 0xd0c\n") == nil)
    }
}
