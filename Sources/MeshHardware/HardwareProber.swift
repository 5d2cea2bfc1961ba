import Foundation
import Synchronization

/// Where the prober looks and which tools it runs.
public struct HardwareProbeOptions: Sendable, Hashable {
    /// Directory under which `sys/class/drm` and `proc/meminfo` are read (`/`; a fake tree in tests).
    public var root: String = "/"
    /// `nvidia-smi` executable (a name looked up on PATH, or a path).
    public var nvidiaSMI: String = "nvidia-smi"
    /// `rocm-smi` executable.
    public var rocmSMI: String = "rocm-smi"
    /// NVML library to `dlopen`; nil skips NVML.
    public var nvmlLibrary: String? = NVMLLibrary.defaultPath
    /// How long a tool may run before it is killed.
    public var toolTimeout: Duration = .seconds(5)

    public init() {}
}

/// Reads the node's GPUs and system RAM, degrading to what is known.
///
/// NVIDIA GPUs come from NVML when it loads and initialises, otherwise (or when NVML leaves sizes
/// unknown) from `nvidia-smi`. Only when no NVIDIA GPU is found are AMD GPUs looked for: in sysfs
/// (`/sys/class/drm/card*/device`, vendor 0x1002), and with `rocm-smi` when sysfs finds none or
/// lacks their sizes. System RAM always comes from `/proc/meminfo`; with no GPU the device list is
/// the CPU carrying system RAM. A missing tool is silent; a broken one becomes a problem in the
/// snapshot, never an error.
public final class HardwareProber: Sendable {
    public let options: HardwareProbeOptions
    let runner: any CommandRunner
    /// NVML once loaded (or the reason it cannot be); loaded on the first probe.
    private let nvml: Mutex<Result<any NVIDIAQuery, ProbeFailure>?>
    /// AMD names from `rocm-smi --showproductname`, asked once (names do not change).
    private let amdNames = Mutex<[Int: String]?>(nil)
    /// The CPU's model name, read once.
    private let cpuName = Mutex<String?>(nil)
    /// Set while an NVML query runs: one that hangs (a wedged driver) holds at most one thread,
    /// and later probes go to nvidia-smi until it returns.
    private let nvmlBusy = Mutex(false)

    /// - Parameter nvidia: replaces NVML (tests); nil loads `options.nvmlLibrary`.
    public init(options: HardwareProbeOptions = HardwareProbeOptions(), runner: any CommandRunner, nvidia: (any NVIDIAQuery)? = nil) {
        self.options = options
        self.runner = runner
        nvml = Mutex(nvidia.map { .success($0) })
    }

    /// One reading of the hardware.
    public func probe() async -> HardwareSnapshot {
        var problems: [String] = []

        let ram = readMeminfo(&problems)
        var gpus: [DeviceMemory] = []
        var source = HardwareSource.none

        var nvmlAnswered = false
        switch await queryNVML() {
        case .success(let found):
            (gpus, source, nvmlAnswered) = (found, found.isEmpty ? .none : .nvml, true)
        case .failure(let f): problems.note(f)
        }
        // NVML saying "no GPU" is believed; nvidia-smi stands in when NVML failed or left gaps.
        if !nvmlAnswered || !gpus.allSatisfy(\.isComplete) {
            switch await run(options.nvidiaSMI, HardwareParsers.nvidiaSMIArguments, absentWhen: "No devices were found") {
            case .success(let text):
                let parsed = HardwareParsers.nvidiaSMI(text)
                problems += parsed.problems
                if Self.replaces(gpus, with: parsed.value) { (gpus, source) = (parsed.value, .nvidiaSMI) }
            case .failure(let f): problems.note(f)
            }
        }

        if gpus.isEmpty {
            let sysfs = amdFromSysfs(&problems)
            if !sysfs.isEmpty { (gpus, source) = (sysfs, .sysfs) }
            if gpus.isEmpty || !gpus.allSatisfy(\.isComplete) {
                let rocm = await amdFromRocmSMI(&problems)
                if Self.replaces(gpus, with: rocm) { (gpus, source) = (rocm, .rocmSMI) }
            }
            if gpus.contains(where: { $0.name == Self.amdDefaultName }) {
                let names = await rocmNames(&problems)
                for i in gpus.indices where gpus[i].name == Self.amdDefaultName {
                    gpus[i].name = names[gpus[i].index] ?? Self.amdDefaultName
                }
            }
        }

        if gpus.isEmpty {
            let model = cpuName.withLock { name in
                if name == nil { name = read("proc/cpuinfo").flatMap(HardwareParsers.cpuModel) ?? "cpu" }
                return name ?? "cpu"
            }
            gpus = [DeviceMemory(kind: .cpu, index: 0, name: model, totalBytes: ram?.totalBytes, freeBytes: ram?.availableBytes)]
            source = .none
        }
        return HardwareSnapshot(devices: gpus, ram: ram, source: source, problems: problems)
    }

    static let amdDefaultName = "AMD GPU"

    /// Whether a later source's list should replace what is known: anything beats nothing, and a
    /// list with every size known beats one with gaps.
    static func replaces(_ current: [DeviceMemory], with candidate: [DeviceMemory]) -> Bool {
        if candidate.isEmpty { return false }
        if current.isEmpty { return true }
        return !current.allSatisfy(\.isComplete) && candidate.allSatisfy(\.isComplete)
    }

    /// NVML's devices, within the tool timeout.
    private func queryNVML() async -> Result<[DeviceMemory], ProbeFailure> {
        let query: any NVIDIAQuery
        switch nvidiaLibrary() {
        case .success(let q): query = q
        case .failure(let f): return .failure(f)
        }
        let wasBusy = nvmlBusy.withLock { busy in
            defer { busy = true }
            return busy
        }
        if wasBusy { return .failure(.failed("NVML has not returned from an earlier query")) }
        let answer = await withDeadline(options.toolTimeout) { [self] in
            defer { nvmlBusy.withLock { $0 = false } }
            return query.devices()
        }
        return answer ?? .failure(.failed("NVML did not answer within \(options.toolTimeout)"))
    }

    private func nvidiaLibrary() -> Result<any NVIDIAQuery, ProbeFailure> {
        nvml.withLock { cached in
            if let cached { return cached }
            let loaded: Result<any NVIDIAQuery, ProbeFailure>
            if let path = options.nvmlLibrary {
                loaded = NVMLLibrary.load(path: path).map { $0 }
            } else {
                loaded = .failure(.absent("NVML disabled"))
            }
            cached = loaded
            return loaded
        }
    }

    // MARK: AMD

    /// AMD cards under `sys/class/drm`: `cardN` entries whose `device/vendor` is 0x1002.
    func amdFromSysfs(_ problems: inout [String]) -> [DeviceMemory] {
        let drm = path("sys/class/drm")
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: drm) else { return [] }
        var cards: [Int] = []
        for e in entries where e.hasPrefix("card") {
            if let n = Int(e.dropFirst(4)) { cards.append(n) }
        }
        var out: [DeviceMemory] = []
        for n in cards.sorted() {
            let dir = "sys/class/drm/card\(n)/device/"
            guard let vendor = read(dir + "vendor").flatMap(HardwareParsers.pciVendor), vendor == 0x1002 else { continue }
            func size(_ file: String) -> Int64? {
                guard let text = read(dir + file) else {
                    problems.append("cannot read \(path(dir + file))")
                    return nil
                }
                guard let v = HardwareParsers.sysfsInteger(text) else {
                    problems.append("\(path(dir + file)) is not a byte count: \(HardwareParsers.quote(text))")
                    return nil
                }
                return v
            }
            let total = size("mem_info_vram_total")
            let used = size("mem_info_vram_used")
            let name = read(dir + "product_name").flatMap(HardwareParsers.amdName) ?? Self.amdDefaultName
            out.append(DeviceMemory(kind: .amd, index: n, name: name, totalBytes: total,
                                    freeBytes: total.flatMap { t in used.map { max(0, t - $0) } }))
        }
        return out
    }

    /// AMD GPUs as `rocm-smi` reports them (named when sysfs is consulted).
    func amdFromRocmSMI(_ problems: inout [String]) async -> [DeviceMemory] {
        switch await run(options.rocmSMI, HardwareParsers.rocmSMIMemoryArguments) {
        case .success(let text):
            let parsed = HardwareParsers.rocmSMI(memory: text)
            problems += parsed.problems
            return parsed.value
        case .failure(let f):
            problems.note(f)
            return []
        }
    }

    /// Card number → name from `rocm-smi --showproductname`, asked once: names do not change, and
    /// a failure only costs the names.
    func rocmNames(_ problems: inout [String]) async -> [Int: String] {
        if let known = amdNames.withLock({ $0 }) { return known }
        var names: [Int: String] = [:]
        switch await run(options.rocmSMI, HardwareParsers.rocmSMINameArguments) {
        case .success(let text):
            let parsed = HardwareParsers.rocmSMINames(text)
            problems += parsed.problems
            names = parsed.value
        case .failure(let f):
            problems.note(f)
        }
        amdNames.withLock { $0 = names }
        return names
    }

    // MARK: I/O

    /// `/proc/meminfo`, or nil with a problem.
    func readMeminfo(_ problems: inout [String]) -> SystemMemory? {
        guard let text = read("proc/meminfo") else {
            problems.append("cannot read \(path("proc/meminfo"))")
            return nil
        }
        let parsed = HardwareParsers.meminfo(text)
        problems += parsed.problems
        return parsed.value
    }

    /// `relative` under the root.
    func path(_ relative: String) -> String {
        options.root.hasSuffix("/") ? options.root + relative : options.root + "/" + relative
    }

    /// A small file under the root as text; nil when missing or unreadable.
    func read(_ relative: String) -> String? {
        guard let handle = FileHandle(forReadingAtPath: path(relative)) else { return nil }
        defer { try? handle.close() }
        guard let data = try? handle.read(upToCount: 1 << 20) else { return nil }
        return String(decoding: data, as: UTF8.self)
    }

    /// Runs a tool under the timeout (enforced here too, in case the runner does not); its
    /// standard output when it exited 0. A failure whose output contains `absentWhen` (the tool
    /// saying there is nothing to report) counts as absent, not as a problem.
    func run(_ executable: String, _ arguments: [String], absentWhen: String? = nil) async -> Result<String, ProbeFailure> {
        let runner = self.runner
        let timeout = options.toolTimeout
        let tool = executable.split(separator: "/").last.map(String.init) ?? executable
        let outcome = await withDeadline(timeout + min(timeout, .seconds(1))) {
            await runner.run(executable, arguments, timeout: timeout)
        }
        switch outcome {
        case nil, .failure(.timedOut)?:
            return .failure(.failed("\(tool) did not answer within \(timeout)"))
        case .failure(.notFound)?:
            return .failure(.absent("\(tool) is not installed"))
        case .failure(.failedToStart(let why))?:
            return .failure(.failed("\(tool) could not start: \(why)"))
        case .success(let out)?:
            guard out.status == 0 else {
                if let absentWhen, out.stdout.contains(absentWhen) || out.stderr.contains(absentWhen) {
                    return .failure(.absent("\(tool): \(absentWhen)"))
                }
                let said = out.stderr.trimmed.isEmpty ? out.stdout : out.stderr
                let how = out.status.map { "exited with status \($0)" } ?? "was killed"
                return .failure(.failed("\(tool) \(how): \(HardwareParsers.quote(said))"))
            }
            return .success(out.stdout)
        }
    }
}

extension [String] {
    /// Records a failure as a problem unless it only says that something is not installed.
    mutating func note(_ failure: ProbeFailure) {
        if case .failed(let why) = failure { append(why) }
    }
}
