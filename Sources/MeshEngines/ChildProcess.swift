#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import Synchronization

/// How a child process ended.
public enum ProcessExit: Sendable, Hashable, CustomStringConvertible {
    case exited(Int32)
    case signaled(Int32)
    /// The status could not be collected (someone else reaped the child).
    case unknown

    init(waitStatus s: Int32) {
        let low = s & 0x7f
        if low == 0 {
            self = .exited((s >> 8) & 0xff)
        } else if low != 0x7f {
            self = .signaled(low)
        } else {
            self = .unknown
        }
    }

    public var description: String {
        switch self {
        case .exited(let c): return "exited with status \(c)"
        case .signaled(let s): return "was killed by signal \(s)\(signalName(s).map { " (\($0))" } ?? "")"
        case .unknown: return "exited"
        }
    }
}

func signalName(_ s: Int32) -> String? {
    switch s {
    case SIGKILL: return "SIGKILL"
    case SIGTERM: return "SIGTERM"
    case SIGSEGV: return "SIGSEGV"
    case SIGABRT: return "SIGABRT"
    case SIGINT: return "SIGINT"
    case SIGBUS: return "SIGBUS"
    case SIGILL: return "SIGILL"
    case SIGFPE: return "SIGFPE"
    default: return nil
    }
}

/// Errors starting a child process.
public struct SpawnError: Error, Sendable, CustomStringConvertible {
    public var description: String
}

/// A child process whose stdout and stderr are read line by line on a dedicated thread, and whose
/// exit is collected with `waitpid` on that same thread.
///
/// Spawned from one long-lived thread (``SpawnerThread``) and, when `/usr/bin/setpriv` supports it,
/// through `setpriv --pdeathsig KILL`: Linux delivers the parent-death signal when the *thread* that
/// created the child exits, so spawning from a pool thread that may retire would kill children early.
/// The signal mask is cleared and common signals reset to default in the child (meshd may ignore
/// SIGTERM/SIGPIPE for its own signal handling; those dispositions would otherwise be inherited).
public final class ChildProcess: Sendable {
    public let pid: pid_t
    private let state = Mutex(State())

    struct State {
        /// Set as soon as waitpid collected the child (the pid may be reused from then on).
        var reaped: ProcessExit?
        /// Published after the remaining output has been drained.
        var exit: ProcessExit?
        var waiters: [CheckedContinuation<ProcessExit, Never>] = []
    }

    private init(pid: pid_t) { self.pid = pid }

    /// The exit status once the child has been reaped.
    public var exitStatus: ProcessExit? { state.withLock { $0.exit } }

    /// Waits until the child has exited and been reaped.
    public func waitForExit() async -> ProcessExit {
        await withCheckedContinuation { (c: CheckedContinuation<ProcessExit, Never>) in
            let done: ProcessExit? = state.withLock { s in
                if let e = s.exit { return e }
                s.waiters.append(c)
                return nil
            }
            if let done { c.resume(returning: done) }
        }
    }

    /// Waits up to `timeout` for the exit; nil if still running.
    public func waitForExit(timeout: Duration) async -> ProcessExit? {
        let deadline = ContinuousClock.now + timeout
        while true {
            if let e = exitStatus { return e }
            if ContinuousClock.now >= deadline { return nil }
            try? await Task.sleep(for: .milliseconds(20))
        }
    }

    /// Sends `sig` to the child if it has not been reaped yet (never to a recycled pid).
    public func signal(_ sig: Int32) {
        // Held under the lock so that the reaper cannot collect the pid between check and kill.
        state.withLock { s in
            if s.reaped == nil { _ = kill(pid, sig) }
        }
    }

    fileprivate func publishExit() {
        let waiters: [CheckedContinuation<ProcessExit, Never>] = state.withLock { s in
            s.exit = s.reaped ?? .unknown
            defer { s.waiters = [] }
            return s.waiters
        }
        let e = exitStatus ?? .unknown
        for w in waiters { w.resume(returning: e) }
    }

    /// Non-blocking reap; true once the child has been collected. Runs under the lock so that
    /// `signal` never targets a recycled pid.
    fileprivate func tryReap() -> Bool {
        state.withLock { s in
            if s.reaped != nil { return true }
            var status: Int32 = 0
            let r = waitpid(pid, &status, WNOHANG)
            if r == pid {
                s.reaped = ProcessExit(waitStatus: status)
                return true
            }
            if r < 0 && errno != EINTR {
                s.reaped = .unknown
                return true
            }
            return false
        }
    }

    /// Starts `executable` with `arguments` (argv[1...]); each complete output line goes to
    /// `onLine(line, isStderr)` on the reader thread; `onExit` runs there after the reap.
    public static func spawn(executable: String, arguments: [String], environment: [String: String]? = nil,
                             usePdeathsig: Bool = true,
                             onLine: @escaping @Sendable (String, Bool) -> Void,
                             onExit: @escaping @Sendable (ProcessExit) -> Void = { _ in }) async throws -> ChildProcess {
        let env = environment ?? ProcessInfo.processInfo.environment
        let wrapper = usePdeathsig ? PdeathsigWrapper.path : nil
        let argv: [String]
        let path: String
        if let wrapper {
            path = wrapper
            argv = [wrapper, "--pdeathsig", "KILL", "--", executable] + arguments
        } else {
            path = executable
            argv = [executable] + arguments
        }
        let envList = env.map { "\($0.key)=\($0.value)" }
        let spawned = try await SpawnerThread.shared.run { () throws(SpawnError) -> (pid_t, Int32, Int32) in
            try rawSpawn(path: path, argv: argv, env: envList)
        }
        let child = ChildProcess(pid: spawned.0)
        let outFD = spawned.1, errFD = spawned.2
        let thread = Thread {
            readLinesUntilExit(child: child, outFD: outFD, errFD: errFD, onLine: onLine)
            child.publishExit()
            if let e = child.exitStatus { onExit(e) }
        }
        thread.name = "meshd-child-\(spawned.0)"
        thread.start()
        return child
    }
}

/// Reads the child's output, split into lines, until it has exited and been reaped; partial last
/// lines are flushed at the end. The exit is checked every 100 ms rather than inferred from EOF, so
/// a pipe end leaked into some other process cannot hide it. Lines are capped at 8 KiB.
private func readLinesUntilExit(child: ChildProcess, outFD: Int32, errFD: Int32, onLine: @Sendable (String, Bool) -> Void) {
    var fds = [pollfd(fd: outFD, events: Int16(POLLIN), revents: 0), pollfd(fd: errFD, events: Int16(POLLIN), revents: 0)]
    var pending: [[UInt8]] = [[], []]
    var open = [true, true]
    var buf = [UInt8](repeating: 0, count: 16 * 1024)
    let maxLine = 8 * 1024
    func emit(_ i: Int) {
        var line = pending[i]
        if line.last == 0x0D { line.removeLast() }
        onLine(String(decoding: line, as: UTF8.self), i == 1)
        pending[i].removeAll(keepingCapacity: true)
    }
    var exited = false
    var drainRounds = 0
    while true {
        if !exited { exited = child.tryReap() }
        if exited {
            // Drain what is already buffered, then stop (bounded: a leaked writer may never close).
            drainRounds += 1
            if drainRounds > 64 || !(open[0] || open[1]) { break }
        } else if !(open[0] || open[1]) {
            // Both pipes closed but the child lives: wait for it without reading.
            usleep(100_000)
            continue
        }
        for i in 0..<2 { fds[i].fd = open[i] ? (i == 0 ? outFD : errFD) : -1; fds[i].revents = 0 }
        let r = fds.withUnsafeMutableBufferPointer { poll($0.baseAddress, nfds_t($0.count), exited ? 0 : 100) }
        if r < 0 {
            if errno == EINTR { continue }
            usleep(100_000)
            continue
        }
        if r == 0 {
            if exited { break }
            continue
        }
        for i in 0..<2 where open[i] && fds[i].revents != 0 {
            let n = buf.withUnsafeMutableBytes { read(fds[i].fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 {
                open[i] = false
                continue
            }
            for b in buf[0..<n] {
                if b == 0x0A {
                    emit(i)
                } else if pending[i].count < maxLine {
                    pending[i].append(b)
                }
            }
        }
    }
    for i in 0..<2 where !pending[i].isEmpty { emit(i) }
    close(outFD)
    close(errFD)
}

/// posix_spawn with stdin from /dev/null and stdout/stderr on fresh pipes; returns (pid, outR, errR).
/// glibc's `posix_spawn_file_actions_addclosefrom_np` (2.34+; not visible to Swift's Glibc module),
/// nil where the C library lacks it.
private let spawnCloseFrom: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32)? = {
    guard let sym = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np") else { return nil }
    return unsafeBitCast(sym, to: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32).self)
}()

private func rawSpawn(path: String, argv: [String], env: [String]) throws(SpawnError) -> (pid_t, Int32, Int32) {
    var outPipe: [Int32] = [-1, -1]
    var errPipe: [Int32] = [-1, -1]
    // pipe2 is not visible to Swift; spawns are serialised on the spawner thread, so setting
    // FD_CLOEXEC right after pipe() cannot race with our own spawns.
    guard pipe(&outPipe) == 0 else { throw SpawnError(description: "pipe: \(String(cString: strerror(errno)))") }
    guard pipe(&errPipe) == 0 else {
        let e = errno
        close(outPipe[0]); close(outPipe[1])
        throw SpawnError(description: "pipe: \(String(cString: strerror(e)))")
    }
    for fd in outPipe + errPipe { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_adddup2(&actions, outPipe[1], 1)
    posix_spawn_file_actions_adddup2(&actions, errPipe[1], 2)
    // Nothing but 0-2 reaches the child: a descriptor another thread opened without FD_CLOEXEC (a
    // pipe of some other spawn in this process) would otherwise stay open for the child's lifetime,
    // and whoever waits for EOF on it would wait that long.
    if let closeFrom = spawnCloseFrom { _ = closeFrom(&actions, 3) }

    var attr = posix_spawnattr_t()
    posix_spawnattr_init(&attr)
    defer { posix_spawnattr_destroy(&attr) }
    var defaults = sigset_t()
    sigemptyset(&defaults)
    for s in [SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGPIPE, SIGCHLD, SIGUSR1, SIGUSR2, SIGALRM] { sigaddset(&defaults, s) }
    posix_spawnattr_setsigdefault(&attr, &defaults)
    var mask = sigset_t()
    sigemptyset(&mask)
    posix_spawnattr_setsigmask(&attr, &mask)
    // Own process group: a Ctrl-C at meshd's terminal goes to meshd, which stops the child in order.
    posix_spawnattr_setpgroup(&attr, 0)
    posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETPGROUP))

    var cArgv: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
    var cEnv: [UnsafeMutablePointer<CChar>?] = env.map { strdup($0) } + [nil]
    defer {
        for p in cArgv { free(p) }
        for p in cEnv { free(p) }
    }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, path, &actions, &attr, &cArgv, &cEnv)
    close(outPipe[1])
    close(errPipe[1])
    guard rc == 0 else {
        close(outPipe[0]); close(errPipe[0])
        throw SpawnError(description: "cannot start \(path): \(String(cString: strerror(rc)))")
    }
    return (pid, outPipe[0], errPipe[0])
}

/// Whether `setpriv --pdeathsig` is usable here (checked once).
enum PdeathsigWrapper {
    static let path: String? = {
        #if os(Linux)
        for p in ["/usr/bin/setpriv", "/bin/setpriv"] where access(p, X_OK) == 0 {
            // Run it once to make sure this build knows --pdeathsig (util-linux >= 2.33).
            var pid: pid_t = 0
            var actions = posix_spawn_file_actions_t()
            posix_spawn_file_actions_init(&actions)
            defer { posix_spawn_file_actions_destroy(&actions) }
            posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
            posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
            let words: [String] = [p, "--pdeathsig", "KILL", "--", "/bin/true"]
            var argv: [UnsafeMutablePointer<CChar>?] = words.map { strdup($0) } + [nil]
            defer { for a in argv { free(a) } }
            guard posix_spawn(&pid, p, &actions, nil, &argv, nil) == 0 else { continue }
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
            if ProcessExit(waitStatus: status) == .exited(0) { return p }
        }
        #endif
        return nil
    }()
}

/// One thread that lives as long as the process and performs every spawn, so that the
/// parent-death signal of children is tied to the process lifetime, not to a pool thread.
final class SpawnerThread: Sendable {
    static let shared = SpawnerThread()

    private let jobs = Mutex<[@Sendable () -> Void]>([])
    private let semaphore = DispatchSemaphore(value: 0)

    private init() {
        let thread = Thread { [self] in self.loop() }
        thread.name = "meshd-spawner"
        thread.start()
    }

    private func loop() -> Never {
        while true {
            semaphore.wait()
            let job: (@Sendable () -> Void)? = jobs.withLock { $0.isEmpty ? nil : $0.removeFirst() }
            job?()
        }
    }

    func run<T: Sendable>(_ body: @escaping @Sendable () throws(SpawnError) -> T) async throws(SpawnError) -> T {
        let result: Result<T, SpawnError> = await withCheckedContinuation { c in
            jobs.withLock { $0.append({ c.resume(returning: Result { () throws(SpawnError) -> T in try body() }) }) }
            semaphore.signal()
        }
        return try result.get()
    }
}

/// The whole content of a (small) file, or nil when it cannot be read.
func readWholeFile(_ path: String, limit: Int = 1 << 20) -> [UInt8]? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var out: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 4096)
    while out.count < limit {
        let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 && errno == EINTR { continue }
        if n < 0 { return nil }
        if n == 0 { break }
        out.append(contentsOf: buf[0..<n])
    }
    return out
}
