import MeshCore
@testable import MeshConfigLoader
import Testing

@Suite struct HardwareConfigTests {
    @Test func builtInDefaults() throws {
        let h = try mustLoad("").config.hardware
        #expect(h.refreshSeconds == 10 && h.nvidiaSMI == "nvidia-smi" && h.rocmSMI == "rocm-smi" && h.sysfsRoot == "/")
    }

    @Test func sectionLoads() throws {
        let loaded = try mustLoad("""
            hardware: { refresh_seconds: 2.5, nvidia_smi: /usr/bin/nvidia-smi, rocm_smi: /opt/rocm/bin/rocm-smi, sysfs_root: /host }
            """)
        #expect(loaded.warnings.isEmpty)
        var expected = HardwareConfig()
        expected.refreshSeconds = 2.5
        expected.nvidiaSMI = "/usr/bin/nvidia-smi"
        expected.rocmSMI = "/opt/rocm/bin/rocm-smi"
        expected.sysfsRoot = "/host"
        #expect(loaded.config.hardware == expected)
    }

    @Test func refreshMustBeBetweenOneSecondAndAnHour() throws {
        let issue = expectSingleError("hardware:\n  refresh_seconds: 0.5\n", key: "hardware.refresh_seconds",
                                      reasonContains: "at least 1", line: 2)
        #expect(issue?.source == "test.yaml")
        expectSingleError("hardware: { refresh_seconds: fast }", key: "hardware.refresh_seconds", reasonContains: "expected a number")
        expectSingleError("hardware: { refresh_seconds: 1e300 }", key: "hardware.refresh_seconds", reasonContains: "must be at most 3600")
        #expect(try mustLoad("hardware: { refresh_seconds: 3600 }").config.hardware.refreshSeconds == 3600)
    }

    @Test func toolPathsMustNotBeEmpty() {
        expectSingleError("hardware: { nvidia_smi: \"\" }", key: "hardware.nvidia_smi", reasonContains: "must not be empty")
        expectSingleError("hardware: { sysfs_root: [a] }", key: "hardware.sysfs_root", reasonContains: "expected a string")
    }

    @Test func unknownKeySuggestsTheRightOne() {
        expectSingleError("hardware: { refresh_second: 5 }", key: "hardware.refresh_second", reasonContains: "did you mean \"refresh_seconds\"")
    }

    @Test func environmentOverrides() throws {
        let loaded = try mustLoad("hardware: { refresh_seconds: 30 }", env: [
            "MESHD_HARDWARE_REFRESH_SECONDS": "5", "MESHD_HARDWARE_NVIDIA_SMI": "/opt/nv/nvidia-smi",
            "MESHD_HARDWARE_ROCM_SMI": "/opt/rocm/bin/rocm-smi", "MESHD_HARDWARE_SYSFS_ROOT": "/host",
        ])
        #expect(loaded.config.hardware.refreshSeconds == 5)
        #expect(loaded.config.hardware.nvidiaSMI == "/opt/nv/nvidia-smi")
        #expect(loaded.config.hardware.rocmSMI == "/opt/rocm/bin/rocm-smi")
        #expect(loaded.config.hardware.sysfsRoot == "/host")
    }

    @Test func badEnvironmentValueIsReported() {
        let issue = expectSingleError("", key: "MESHD_HARDWARE_REFRESH_SECONDS", env: ["MESHD_HARDWARE_REFRESH_SECONDS": "0"],
                                      reasonContains: "at least 1")
        #expect(issue?.source == "environment")
    }

    @Test func renderedSectionRoundTrips() throws {
        var config = defaults
        config.hardware.refreshSeconds = 3
        config.hardware.sysfsRoot = "/host"
        let text = ConfigLoader.render(config)
        #expect(text.contains("hardware:\n  refresh_seconds: 3\n  nvidia_smi: \"nvidia-smi\"\n"))
        #expect(try mustLoad(text).config == config)
    }
}
