import Foundation
import Logging
import MeshCore
@testable import MeshHardware
import Synchronization
import Testing

/// Replays recorded tool outputs, keyed by `executable arguments...`; anything else is "not installed".
final class RecordedRunner: CommandRunner {
    let responses: [String: Result<CommandOutput, CommandFailure>]
    private let log = Mutex<[String]>([])

    init(_ responses: [String: Result<CommandOutput, CommandFailure>] = [:]) { self.responses = responses }

    /// Commands run so far, `executable arguments...`.
    var calls: [String] { log.withLock { $0 } }

    func run(_ executable: String, _ arguments: [String], timeout: Duration) async -> Result<CommandOutput, CommandFailure> {
        let key = ([executable] + arguments).joined(separator: " ")
        log.withLock { $0.append(key) }
        return responses[key] ?? .failure(.notFound)
    }
}

/// A runner whose commands never return, not even when cancelled (a stuck tool and a runner that
/// forgot its timeout). `release()` lets them go at the end of a test.
final class HangingRunner: CommandRunner {
    private let waiting = Mutex<[UnsafeContinuation<Void, Never>]>([])
    private let count = Mutex(0)

    var started: Int { count.withLock { $0 } }

    func run(_ executable: String, _ arguments: [String], timeout: Duration) async -> Result<CommandOutput, CommandFailure> {
        count.withLock { $0 += 1 }
        await withUnsafeContinuation { c in waiting.withLock { $0.append(c) } }
        return .failure(.timedOut)
    }

    func release() {
        for c in waiting.withLock({ w in defer { w = [] }; return w }) { c.resume() }
    }
}

/// NVML stand-in.
final class FakeNVML: NVIDIAQuery {
    let answer: Result<[DeviceMemory], ProbeFailure>
    private let count = Mutex(0)
    init(_ answer: Result<[DeviceMemory], ProbeFailure>) { self.answer = answer }
    var calls: Int { count.withLock { $0 } }
    func devices() -> Result<[DeviceMemory], ProbeFailure> {
        count.withLock { $0 += 1 }
        return answer
    }
}

/// Keeps what was logged.
final class LogRecorder: Sendable {
    private let entries = Mutex<[(Logger.Level, String, String)]>([])

    /// `(level, message, metadata rendered)` in order.
    var all: [(Logger.Level, String, String)] { entries.withLock { $0 } }
    func count(level: Logger.Level, containing text: String) -> Int {
        all.filter { $0.0 == level && ($0.1.contains(text) || $0.2.contains(text)) }.count
    }

    var logger: Logger {
        var l = Logger(label: "test") { _ in Handler(recorder: self) }
        l.logLevel = .trace
        return l
    }

    func append(_ level: Logger.Level, _ message: String, _ metadata: String) {
        entries.withLock { $0.append((level, message, metadata)) }
    }

    struct Handler: LogHandler {
        let recorder: LogRecorder
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }
        func log(event: LogEvent) {
            recorder.append(event.level, "\(event.message)", "\(event.metadata ?? [:])")
        }
    }
}

/// A fake file system root with `sys/` and `proc/` trees, removed by `remove()`.
struct FakeRoot {
    let url: URL
    var path: String { url.path }

    init() throws {
        url = FileManager.default.temporaryDirectory.appendingPathComponent("meshd-hw-tests-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }

    func write(_ relative: String, _ text: String) throws {
        let file = url.appendingPathComponent(relative)
        try FileManager.default.createDirectory(at: file.deletingLastPathComponent(), withIntermediateDirectories: true)
        try text.write(to: file, atomically: true, encoding: .utf8)
    }

    func mkdir(_ relative: String) throws {
        try FileManager.default.createDirectory(at: url.appendingPathComponent(relative), withIntermediateDirectories: true)
    }

    /// A DRM card: `files` go into `sys/class/drm/cardN/device/`.
    func card(_ n: Int, _ files: [String: String]) throws {
        try mkdir("sys/class/drm/card\(n)/device")
        for (name, text) in files { try write("sys/class/drm/card\(n)/device/\(name)", text) }
    }

    func meminfo(totalKB: Int, availableKB: Int) throws {
        try write("proc/meminfo", """
            MemTotal:       \(totalKB) kB
            MemFree:         1000000 kB
            MemAvailable:   \(availableKB) kB
            Buffers:          262144 kB

            """)
    }

    func remove() { try? FileManager.default.removeItem(at: url) }
}

func ok(_ stdout: String) -> Result<CommandOutput, CommandFailure> { .success(CommandOutput(status: 0, stdout: stdout)) }

let nvidiaSMIKey = "nvidia-smi --query-gpu=index,name,memory.total,memory.free --format=csv,noheader,nounits"
let rocmMemoryKey = "rocm-smi --showmeminfo vram --json"
let rocmNamesKey = "rocm-smi --showproductname --json"

/// Options for a prober over `root` with NVML off unless a fake is passed.
func options(root: String, timeout: Duration = .seconds(5)) -> HardwareProbeOptions {
    var o = HardwareProbeOptions()
    o.root = root
    o.nvmlLibrary = nil
    o.toolTimeout = timeout
    return o
}

let mib: Int64 = 1 << 20
let gib: Int64 = 1 << 30

/// NVML stuck in the driver: `devices()` blocks its thread until `release()`.
final class BlockingNVML: NVIDIAQuery {
    private let gate = DispatchSemaphore(value: 0)
    private let count = Mutex(0)
    var calls: Int { count.withLock { $0 } }
    func devices() -> Result<[DeviceMemory], ProbeFailure> {
        count.withLock { $0 += 1 }
        gate.wait()
        gate.signal()
        return .success([DeviceMemory(kind: .nvidia, index: 0, name: "NVIDIA L40S", totalBytes: 48 * gib, freeBytes: 40 * gib)])
    }
    func release() { gate.signal() }
}
