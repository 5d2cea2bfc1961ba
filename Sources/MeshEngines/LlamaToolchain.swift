#if canImport(Glibc)
import Glibc
#endif
import MeshCore
import Synchronization

/// The llama.cpp binaries on this machine, for splits (issue 13): which build its `llama-server`
/// is, and where an RPC server is (`ggml-rpc-server`, or `rpc-server` in older builds).
public enum LlamaToolchain {
    /// RPC server names, newest first.
    public static let rpcServerNames = ["ggml-rpc-server", "rpc-server"]

    /// An RPC server built with `llamaServer` (same directory) first, else one on PATH.
    public static func rpcServerBinary(nextTo llamaServer: String?) -> String? {
        if let llamaServer, let slash = llamaServer.lastIndex(of: "/") {
            let dir = llamaServer[..<slash]
            for name in rpcServerNames where access("\(dir)/\(name)", X_OK) == 0 { return "\(dir)/\(name)" }
        }
        for name in rpcServerNames {
            if let p = ManagedLlamaCppEngine.searchPath(name) { return p }
        }
        return nil
    }

    /// The RPC server beside the llama-server meshd would run (configured, PATH, or meshd's cache build), else one on PATH.
    public static func rpcServerBinary(llamaServer configured: String?) -> String? {
        let server = try? ManagedLlamaCppEngine.resolveBinary(configured).get()
        return rpcServerBinary(nextTo: server)
    }

    /// Runs `llama-server --version` (configured binary, else on PATH, else meshd's cache build)
    /// and looks for an RPC server beside it. nil when there is no llama-server or it names no build.
    public static func detect(llamaServer configured: String? = nil, timeout: Duration = .seconds(10)) async -> LlamaAdvert? {
        guard case .success(let server) = ManagedLlamaCppEngine.resolveBinary(configured) else { return nil }
        guard let output = await run(server, ["--version"], timeout: timeout), let build = LlamaBuild.parse(output) else { return nil }
        return LlamaAdvert(build: build, rpcServer: rpcServerBinary(nextTo: server) != nil)
    }

    /// Everything `executable` prints (stdout and stderr), or nil when it cannot start or outlives `timeout`.
    static func run(_ executable: String, _ arguments: [String], timeout: Duration) async -> String? {
        /// The output, and whether the reader has delivered all of it (`onExit` runs after the last line).
        final class Output: Sendable { let value = Mutex((text: "", done: false)) }
        let out = Output()
        guard let child = try? await ChildProcess.spawn(executable: executable, arguments: arguments, onLine: { line, _ in
            out.value.withLock { if $0.text.utf8.count < 64 * 1024 { $0.text += line + "\n" } }
        }, onExit: { _ in out.value.withLock { $0.done = true } }) else { return nil }
        let deadline = ContinuousClock.now + timeout
        while !out.value.withLock({ $0.done }) {
            if ContinuousClock.now >= deadline {
                child.signal(SIGKILL)
                _ = await child.waitForExit()
                return nil
            }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return out.value.withLock { $0.text }
    }
}
