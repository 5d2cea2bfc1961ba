import Foundation
import MeshEngines
import MeshHardware
import Synchronization

/// Runs hardware tools (`nvidia-smi`, `rocm-smi`) as ``ChildProcess``es: looked up on PATH (absent
/// when not there, so a CPU-only node spawns nothing), output collected, killed at the timeout.
struct ChildProcessCommandRunner: CommandRunner {
    /// Lines kept per stream; tool output is a few lines per GPU.
    static let maxLines = 4096

    func run(_ executable: String, _ arguments: [String], timeout: Duration) async -> Result<CommandOutput, CommandFailure> {
        let path: String
        if executable.contains("/") {
            guard access(executable, X_OK) == 0 else { return .failure(.notFound) }
            path = executable
        } else {
            guard let found = ManagedLlamaCppEngine.searchPath(executable) else { return .failure(.notFound) }
            path = found
        }
        let lines = Mutex<(out: [String], err: [String])>(([], []))
        let child: ChildProcess
        do {
            var env = ProcessInfo.processInfo.environment
            env["LC_ALL"] = "C"
            child = try await ChildProcess.spawn(executable: path, arguments: arguments, environment: env, onLine: { line, isStderr in
                lines.withLock { l in
                    if isStderr {
                        if l.err.count < Self.maxLines { l.err.append(line) }
                    } else if l.out.count < Self.maxLines {
                        l.out.append(line)
                    }
                }
            })
        } catch {
            return .failure(.failedToStart("\(error)"))
        }
        guard let exit = await child.waitForExit(timeout: timeout) else {
            child.signal(SIGKILL)
            _ = await child.waitForExit(timeout: .seconds(2))
            return .failure(.timedOut)
        }
        let (out, err) = lines.withLock { ($0.out.joined(separator: "\n"), $0.err.joined(separator: "\n")) }
        let status: Int32?
        if case .exited(let code) = exit { status = code } else { status = nil }
        return .success(CommandOutput(status: status, stdout: out, stderr: err))
    }
}
