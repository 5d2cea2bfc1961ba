import Foundation
import MeshEngines
import MeshHardware
import Synchronization

/// Runs hardware tools (`nvidia-smi`, `rocm-smi`) as ``ChildProcess``es: looked up on PATH (absent
/// when not there, so a CPU-only node spawns nothing), output collected, killed at the timeout.
/// A tool that outlives even SIGKILL (stuck in the kernel on a wedged driver) is not started again
/// until it has gone, so refreshes cannot pile up stuck processes.
final class ChildProcessCommandRunner: CommandRunner {
    /// Lines kept per stream; tool output is a few lines per GPU.
    static let maxLines = 4096
    /// How long a killed tool gets to be reaped before it counts as stuck.
    let reapGrace: Duration
    private let stuck = Mutex<[String: ChildProcess]>([:])

    init(reapGrace: Duration = .seconds(2)) { self.reapGrace = reapGrace }

    func run(_ executable: String, _ arguments: [String], timeout: Duration) async -> Result<CommandOutput, CommandFailure> {
        let path: String
        if executable.contains("/") {
            guard access(executable, X_OK) == 0 else { return .failure(.notFound) }
            path = executable
        } else {
            guard let found = ManagedLlamaCppEngine.searchPath(executable) else { return .failure(.notFound) }
            path = found
        }
        if let earlier = stuck.withLock({ s -> ChildProcess? in
            if let c = s[path], c.exitStatus == nil { return c }
            s[path] = nil
            return nil
        }) {
            return .failure(.failedToStart("an earlier run (pid \(earlier.pid)) is still stuck after SIGKILL"))
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
            if await child.waitForExit(timeout: reapGrace) == nil { markStuck(path, child) }
            return .failure(.timedOut)
        }
        let (out, err) = lines.withLock { ($0.out.joined(separator: "\n"), $0.err.joined(separator: "\n")) }
        let status: Int32?
        if case .exited(let code) = exit { status = code } else { status = nil }
        return .success(CommandOutput(status: status, stdout: out, stderr: err))
    }

    /// Remembers a child of `path` that would not die: `path` is not started again while it lives.
    func markStuck(_ path: String, _ child: ChildProcess) {
        stuck.withLock { $0[path] = child }
    }
}
