import Synchronization

/// What a finished command printed, and how it ended.
public struct CommandOutput: Sendable, Hashable {
    /// Exit status; nil when the command was killed by a signal or its status is unknown.
    public var status: Int32?
    public var stdout: String
    public var stderr: String

    public init(status: Int32?, stdout: String, stderr: String = "") {
        self.status = status
        self.stdout = stdout
        self.stderr = stderr
    }
}

/// Why a command produced no output.
public enum CommandFailure: Error, Sendable, Hashable {
    /// The executable does not exist (the tool is not installed): not a problem, just absent.
    case notFound
    /// It ran past its timeout and was killed.
    case timedOut
    /// It could not be started.
    case failedToStart(String)
}

/// Runs hardware tools. Injected so tests replay recorded outputs; meshd runs real processes.
public protocol CommandRunner: Sendable {
    /// Runs `executable` (a path, or a name looked up on PATH) with `arguments`, killing it once
    /// `timeout` has passed.
    func run(_ executable: String, _ arguments: [String], timeout: Duration) async -> Result<CommandOutput, CommandFailure>
}

/// Awaits `body` for at most `limit`: nil when it has not finished by then (it is then cancelled
/// and left behind). Never waits on a body that ignores cancellation.
func withDeadline<T: Sendable>(_ limit: Duration, _ body: @escaping @Sendable () async -> T) async -> T? {
    let race = DeadlineRace<T>()
    return await withCheckedContinuation { (c: CheckedContinuation<T?, Never>) in
        race.start(c, limit: limit, body: body)
    }
}

/// The shared state of ``withDeadline(_:_:)``: the first of body and timer to finish resumes.
private final class DeadlineRace<T: Sendable>: Sendable {
    private struct State: ~Copyable {
        var continuation: CheckedContinuation<T?, Never>?
        var work: Task<Void, Never>?
        var timer: Task<Void, Never>?
    }

    private let state = Mutex(State())

    func start(_ c: CheckedContinuation<T?, Never>, limit: Duration, body: @escaping @Sendable () async -> T) {
        state.withLock { $0.continuation = c }
        let timer = Task { [self] in
            do { try await Task.sleep(for: limit) } catch { return }
            finish(nil)
        }
        let work = Task { [self] in finish(await body()) }
        let finished = state.withLock { s -> Bool in
            s.timer = timer
            s.work = work
            return s.continuation == nil
        }
        if finished { cancelBoth() }
    }

    private func finish(_ value: T?) {
        let c = state.withLock { s -> CheckedContinuation<T?, Never>? in
            defer { s.continuation = nil }
            return s.continuation
        }
        guard let c else { return }
        c.resume(returning: value)
        cancelBoth()
    }

    private func cancelBoth() {
        let (work, timer) = state.withLock { ($0.work, $0.timer) }
        work?.cancel()
        timer?.cancel()
    }
}
