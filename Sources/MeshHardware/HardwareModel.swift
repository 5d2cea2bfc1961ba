import MeshCore

/// What kind of device a ``DeviceMemory`` describes.
public enum DeviceKind: String, Sendable, Hashable, Codable, CaseIterable {
    case nvidia
    case amd
    /// The CPU with system RAM, reported when no GPU was found.
    case cpu
}

/// Where a snapshot's GPU list came from.
public enum HardwareSource: String, Sendable, Hashable, Codable {
    case nvml
    case nvidiaSMI = "nvidia-smi"
    case sysfs
    case rocmSMI = "rocm-smi"
    /// No GPU found: the devices list holds the CPU with system RAM.
    case none
}

/// Memory of one device. `nil` means the source could not say (`[N/A]`, a missing file).
public struct DeviceMemory: Sendable, Hashable, Codable {
    public var kind: DeviceKind
    /// The driver's number for it: the GPU index for NVIDIA, the DRM card number (`cardN`, as
    /// rocm-smi numbers them too) for AMD, 0 for the CPU.
    public var index: Int
    public var name: String
    public var totalBytes: Int64?
    public var freeBytes: Int64?

    public init(kind: DeviceKind, index: Int, name: String, totalBytes: Int64?, freeBytes: Int64?) {
        self.kind = kind
        self.index = index
        self.name = name
        self.totalBytes = totalBytes
        self.freeBytes = freeBytes
    }

    /// Whether both sizes are known.
    public var isComplete: Bool { totalBytes != nil && freeBytes != nil }
}

/// System RAM as `/proc/meminfo` reports it.
public struct SystemMemory: Sendable, Hashable, Codable {
    public var totalBytes: Int64
    /// `MemAvailable` (what can be allocated without swapping), or `MemFree` on old kernels.
    public var availableBytes: Int64

    public init(totalBytes: Int64, availableBytes: Int64) {
        self.totalBytes = totalBytes
        self.availableBytes = availableBytes
    }
}

/// One reading of the node's hardware: its GPUs (or the CPU when it has none) and system RAM.
///
/// VRAM sums cover GPUs only, so a CPU-only node reports 0 VRAM and `gpuSummary` "cpu"; its
/// memory is in ``ram``. Unknown sizes count as 0 in the sums (free memory is never overstated).
public struct HardwareSnapshot: Sendable, Hashable, Codable {
    /// GPUs, or a single `cpu` device carrying system RAM when there is no GPU.
    public var devices: [DeviceMemory]
    public var ram: SystemMemory?
    public var source: HardwareSource
    /// What could not be read during this probe (each a short sentence).
    public var problems: [String]

    public init(devices: [DeviceMemory], ram: SystemMemory?, source: HardwareSource, problems: [String] = []) {
        self.devices = devices
        self.ram = ram
        self.source = source
        self.problems = problems
    }

    /// Before the first probe: nothing known.
    public static let unknown = HardwareSnapshot(devices: [], ram: nil, source: .none)

    public var gpus: [DeviceMemory] { devices.filter { $0.kind != .cpu } }
    public var vramTotalBytes: Int64 { gpus.reduce(0) { $0 + ($1.totalBytes ?? 0) } }
    public var vramFreeBytes: Int64 { gpus.reduce(0) { $0 + ($1.freeBytes ?? 0) } }

    /// `2x NVIDIA GeForce RTX 4090`, `AMD Radeon RX 7900 XTX`, `NVIDIA A100 + NVIDIA T4`, or `cpu`.
    public var gpuSummary: String { Self.summary(of: gpus) }

    /// Groups equal names in order of first appearance.
    public static func summary(of gpus: [DeviceMemory]) -> String {
        guard !gpus.isEmpty else { return "cpu" }
        var order: [String] = []
        var counts: [String: Int] = [:]
        for g in gpus {
            if counts[g.name] == nil { order.append(g.name) }
            counts[g.name, default: 0] += 1
        }
        return order.map { counts[$0]! > 1 ? "\(counts[$0]!)x \($0)" : $0 }.joined(separator: " + ")
    }
}

extension NodeState {
    /// Fills the hardware fields from a snapshot: VRAM sums and the GPU summary (0 and `cpu`
    /// without a GPU), and system RAM.
    public mutating func apply(_ snapshot: HardwareSnapshot) {
        vramTotalBytes = snapshot.vramTotalBytes
        vramFreeBytes = snapshot.vramFreeBytes
        gpuSummary = snapshot.gpuSummary
        ramTotalBytes = snapshot.ram?.totalBytes
        ramFreeBytes = snapshot.ram?.availableBytes
    }
}
