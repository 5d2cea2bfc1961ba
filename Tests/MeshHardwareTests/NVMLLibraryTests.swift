import Foundation
@testable import MeshHardware
import Testing

/// NVML through dlopen/dlsym for real, against a stand-in `libnvidia-ml` compiled from C here
/// (this machine has no NVIDIA driver): checks the C signatures, `nvmlMemory_t` layout and name
/// buffer, the init-once lifecycle and failing calls.
@Suite struct NVMLLibraryTests {
    static let source = """
        #include <stdio.h>
        typedef struct { unsigned long long total, free, used; } memory_t;
        static int inits = 0, shutdowns = 0;
        int nvmlInit_v2(void) { if (INIT_RC) return INIT_RC; inits++; return 0; }
        int nvmlShutdown(void) { shutdowns++; return 0; }
        int nvmlDeviceGetCount_v2(unsigned int *n) { *n = 2; return 0; }
        int nvmlDeviceGetHandleByIndex_v2(unsigned int i, void **h) {
            if (i >= 2) return 2;
            *h = (void *)(unsigned long)(0x1000 + i);
            return 0;
        }
        int nvmlDeviceGetMemoryInfo(void *h, memory_t *m) {
            if ((unsigned long)h == 0x1001) return 3; /* NVML_ERROR_NOT_SUPPORTED */
            m->total = 25769803776ULL; m->free = 21474836480ULL; m->used = m->total - m->free;
            return 0;
        }
        int nvmlDeviceGetName(void *h, char *name, unsigned int length) {
            snprintf(name, length, "NVIDIA Fake %lu", (unsigned long)h - 0x1000);
            return 0;
        }
        int fake_inits(void) { return inits; }
        int fake_shutdowns(void) { return shutdowns; }
        """

    static let compiler: String? = ["cc", "clang", "gcc"].lazy.compactMap { name in
        (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin").split(separator: ":")
            .map { "\($0)/\(name)" }.first { FileManager.default.isExecutableFile(atPath: $0) }
    }.first

    /// Builds the stand-in with `nvmlInit_v2` returning `initRC`; returns its path.
    static func build(initRC: Int, in root: FakeRoot) throws -> String {
        let c = root.url.appendingPathComponent("fake-nvml.c")
        try source.write(to: c, atomically: true, encoding: .utf8)
        let lib = root.url.appendingPathComponent("libfake-nvml-\(initRC).so").path
        let p = Process()
        p.executableURL = URL(fileURLWithPath: try #require(compiler))
        p.arguments = ["-shared", "-fPIC", "-DINIT_RC=\(initRC)", "-o", lib, c.path]
        try p.run()
        p.waitUntilExit()
        try #require(p.terminationStatus == 0, "compiling the stand-in NVML failed")
        return lib
    }

    /// Calls an `int f(void)` counter exported by the stand-in.
    static func counter(_ lib: String, _ name: String) -> Int32 {
        guard let h = dlopen(lib, RTLD_NOW), let f = dlsym(h, name) else { return -1 }
        return unsafeBitCast(f, to: (@convention(c) () -> Int32).self)()
    }

    @Test(.enabled(if: compiler != nil, "needs a C compiler"))
    func readsDevicesThroughTheCABI() throws {
        let root = try FakeRoot()
        defer { root.remove() }
        let lib = try Self.build(initRC: 0, in: root)
        let nvml = try NVMLLibrary.load(path: lib).get()
        let devices = try nvml.devices().get()
        #expect(devices == [
            DeviceMemory(kind: .nvidia, index: 0, name: "NVIDIA Fake 0", totalBytes: 24 * gib, freeBytes: 20 * gib),
            DeviceMemory(kind: .nvidia, index: 1, name: "NVIDIA Fake 1", totalBytes: nil, freeBytes: nil),
        ])
        // Initialised once and kept; shutdown releases it and the next query initialises again.
        _ = nvml.devices()
        #expect(Self.counter(lib, "fake_inits") == 1)
        nvml.shutdown()
        #expect(Self.counter(lib, "fake_shutdowns") == 1)
        _ = nvml.devices()
        #expect(Self.counter(lib, "fake_inits") == 2)
    }

    /// One probe with the stand-in as NVML.
    static func probe(initRC: Int, runner: RecordedRunner) async throws -> HardwareSnapshot {
        let root = try FakeRoot()
        defer { root.remove() }
        var o = options(root: root.path)
        o.nvmlLibrary = try build(initRC: initRC, in: root)
        return await HardwareProber(options: o, runner: runner).probe()
    }

    @Test(.enabled(if: compiler != nil, "needs a C compiler"))
    func failedInitIsAProblemAndNvidiaSMIStandsIn() async throws {
        let runner = RecordedRunner([nvidiaSMIKey: ok("0, NVIDIA GeForce RTX 4090, 24564, 20000")])
        let snap = try await Self.probe(initRC: 9, runner: runner)
        #expect(snap.source == .nvidiaSMI)
        #expect(snap.problems.contains("nvmlInit failed: NVML_ERROR_DRIVER_NOT_LOADED (9)"))
    }

    @Test(.enabled(if: compiler != nil, "needs a C compiler"))
    func proberUsesTheLibraryAndAsksNvidiaSMIOnlyForTheGaps() async throws {
        let runner = RecordedRunner()
        let snap = try await Self.probe(initRC: 0, runner: runner)
        // GPU 1's size is unknown to NVML, so nvidia-smi is asked; it is not installed, so NVML's list stays.
        #expect(runner.calls == [nvidiaSMIKey])
        #expect(snap.source == .nvml)
        #expect(snap.gpuSummary == "NVIDIA Fake 0 + NVIDIA Fake 1")
        #expect(snap.vramTotalBytes == 24 * gib && snap.vramFreeBytes == 20 * gib)
    }
}
