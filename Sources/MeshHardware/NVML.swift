#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization

/// Why a GPU source gave no answer.
public enum ProbeFailure: Error, Sendable, Hashable {
    /// The library or tool is not installed here: expected on machines without that vendor.
    case absent(String)
    /// It is there but did not work; a problem worth reporting.
    case failed(String)
}

/// Something that lists NVIDIA GPUs with their memory: NVML, or a fake in tests.
public protocol NVIDIAQuery: Sendable {
    func devices() -> Result<[DeviceMemory], ProbeFailure>
}

/// NVIDIA's management library, loaded with `dlopen` so meshd neither links nor needs it.
/// Initialised on first use and kept initialised; ``shutdown()`` releases it.
public final class NVMLLibrary: NVIDIAQuery {
    private typealias InitFn = @convention(c) () -> Int32
    private typealias CountFn = @convention(c) (UnsafeMutablePointer<UInt32>) -> Int32
    private typealias HandleFn = @convention(c) (UInt32, UnsafeMutablePointer<OpaquePointer?>) -> Int32
    /// `nvmlMemory_t` is `{ unsigned long long total, free, used }`: passed as three UInt64s.
    private typealias MemoryFn = @convention(c) (OpaquePointer?, UnsafeMutablePointer<UInt64>) -> Int32
    private typealias NameFn = @convention(c) (OpaquePointer?, UnsafeMutablePointer<CChar>, UInt32) -> Int32

    private struct Functions {
        let initialize: InitFn
        let shutdown: InitFn
        let count: CountFn
        let handle: HandleFn
        let memory: MemoryFn
        let name: NameFn
    }

    private struct State: ~Copyable {
        let functions: Functions
        var initialized = false
    }

    private let state: Mutex<State>

    private init(functions: Functions) { state = Mutex(State(functions: functions)) }

    /// The default soname of the library the NVIDIA driver installs.
    public static let defaultPath = "libnvidia-ml.so.1"

    /// Opens the library at `path` and resolves the functions meshd uses. `.absent` when there
    /// is no such library, `.failed` when it lacks a function.
    public static func load(path: String = defaultPath) -> Result<NVMLLibrary, ProbeFailure> {
        guard let handle = dlopen(path, RTLD_NOW | RTLD_LOCAL) else {
            return .failure(.absent("cannot load \(path): \(lastDLError())"))
        }
        func symbol<F>(_ name: String, as: F.Type) -> F? {
            dlsym(handle, name).map { unsafeBitCast($0, to: F.self) }
        }
        guard let initialize = symbol("nvmlInit_v2", as: InitFn.self),
              let shutdown = symbol("nvmlShutdown", as: InitFn.self),
              let count = symbol("nvmlDeviceGetCount_v2", as: CountFn.self),
              let handleFn = symbol("nvmlDeviceGetHandleByIndex_v2", as: HandleFn.self),
              let memory = symbol("nvmlDeviceGetMemoryInfo", as: MemoryFn.self),
              let name = symbol("nvmlDeviceGetName", as: NameFn.self) else {
            let why = lastDLError()
            dlclose(handle)
            return .failure(.failed("\(path) is not a usable NVML: \(why)"))
        }
        // The handle stays open for the life of the process: NVML keeps state in it.
        return .success(NVMLLibrary(functions: Functions(initialize: initialize, shutdown: shutdown, count: count,
                                                         handle: handleFn, memory: memory, name: name)))
    }

    public func devices() -> Result<[DeviceMemory], ProbeFailure> {
        state.withLock { s -> Result<[DeviceMemory], ProbeFailure> in
            let f = s.functions
            if !s.initialized {
                let rc = f.initialize()
                guard rc == 0 else { return .failure(.failed("nvmlInit failed: \(Self.describe(rc))")) }
                s.initialized = true
            }
            var count: UInt32 = 0
            let rc = f.count(&count)
            guard rc == 0 else { return .failure(.failed("nvmlDeviceGetCount failed: \(Self.describe(rc))")) }
            var out: [DeviceMemory] = []
            for i in 0..<min(count, 64) {
                var device: OpaquePointer? = nil
                let hrc = f.handle(i, &device)
                guard hrc == 0 else { return .failure(.failed("nvmlDeviceGetHandleByIndex(\(i)) failed: \(Self.describe(hrc))")) }
                var nameBuffer = [CChar](repeating: 0, count: 97)
                let nrc = nameBuffer.withUnsafeMutableBufferPointer { f.name(device, $0.baseAddress!, 96) }
                let name = nrc == 0 ? String(decoding: nameBuffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) : ""
                var memory: [UInt64] = [0, 0, 0]
                let mrc = memory.withUnsafeMutableBufferPointer { f.memory(device, $0.baseAddress!) }
                let known = mrc == 0 && memory[0] <= UInt64(Int64.max)
                out.append(DeviceMemory(kind: .nvidia, index: Int(i), name: name.isEmpty ? "NVIDIA GPU" : name,
                                        totalBytes: known ? Int64(memory[0]) : nil,
                                        freeBytes: known ? Int64(min(memory[1], memory[0])) : nil))
            }
            return .success(out)
        }
    }

    /// Releases NVML; a later ``devices()`` initialises it again.
    public func shutdown() {
        state.withLock { s in
            if s.initialized { _ = s.functions.shutdown() }
            s.initialized = false
        }
    }

    deinit { shutdown() }

    /// Names of the `nvmlReturn_t` codes one meets in practice.
    static func describe(_ rc: Int32) -> String {
        let names: [Int32: String] = [
            1: "NVML_ERROR_UNINITIALIZED", 2: "NVML_ERROR_INVALID_ARGUMENT", 3: "NVML_ERROR_NOT_SUPPORTED",
            4: "NVML_ERROR_NO_PERMISSION", 9: "NVML_ERROR_DRIVER_NOT_LOADED", 12: "NVML_ERROR_LIBRARY_NOT_FOUND",
            15: "NVML_ERROR_GPU_IS_LOST", 18: "NVML_ERROR_LIB_RM_VERSION_MISMATCH", 999: "NVML_ERROR_UNKNOWN",
        ]
        return names[rc].map { "\($0) (\(rc))" } ?? "error \(rc)"
    }

    private static func lastDLError() -> String {
        dlerror().map { String(cString: $0) } ?? "unknown dlopen error"
    }
}
