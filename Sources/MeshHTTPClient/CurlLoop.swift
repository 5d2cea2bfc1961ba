import CCurl
import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// `curl_global_init` must run once before any other libcurl call; Swift globals initialise exactly once.
let curlGlobalInitResult: CURLcode = curl_global_init(Int(CURL_GLOBAL_ALL))

/// The thread-safe face of the curl loop: a command queue plus a self-pipe that wakes the loop.
///
/// Only the loop thread (``CurlLoopRunner``) touches curl handles. Other threads append commands here
/// and then write one byte to the pipe, which the loop polls next to curl's sockets
/// (`curl_multi_poll`'s extra fds). The byte is written after the lock is released: a wakeup issued
/// under the lock let the woken loop thread block on that lock (a PI futex, an extra sleep and wake
/// per request). The pipe lives as long as this object, so a late write is harmless.
final class CurlLoop: Sendable {
    enum Command: Sendable {
        case add(TransferState, HTTPClientRequest)
        /// Drop the transfer's easy handle (it has already been failed by the caller).
        case remove(TransferState)
        /// `curl_easy_pause(CURLPAUSE_CONT)` after the consumer drained the buffer.
        case resume(TransferState)
        case shutdown
    }

    private struct State {
        var commands: [Command] = []
        /// False once the loop thread has stopped taking commands.
        var accepting = true
        var shutdownRequested = false
        var wakeupPending = false
    }

    private struct ThreadState {
        var thread: pthread_t?
        var joined = false
    }

    private let state = Mutex(State())
    private let threadState = Mutex(ThreadState())
    /// Read end (polled by the loop thread) and write end of the wakeup pipe; both non-blocking.
    let wakeReadFD: Int32
    private let wakeWriteFD: Int32
    /// Easy handles in use by transfers, not counting reset ones kept for reuse (leak check for tests).
    let liveEasyHandles = Atomic<Int>(0)
    /// Per-transfer callback contexts alive (leak check for tests).
    let liveContexts = Atomic<Int>(0)

    /// Nil when the wakeup pipe cannot be made.
    init?() {
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { return nil }
        for fd in fds {
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        }
        wakeReadFD = fds[0]
        wakeWriteFD = fds[1]
    }

    deinit {
        close(wakeReadFD)
        close(wakeWriteFD)
    }

    /// Wakes the loop thread (any thread; never under `state`'s lock).
    private func signal() {
        var byte: UInt8 = 1
        _ = write(wakeWriteFD, &byte, 1)  // EAGAIN: the pipe is full, so the loop is woken anyway
    }

    /// Loop thread: empties the pipe after `curl_multi_poll` reported it readable.
    func drainWakeups() {
        var buffer = (UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0))
        let size = MemoryLayout.size(ofValue: buffer)
        while withUnsafeMutableBytes(of: &buffer, { read(wakeReadFD, $0.baseAddress, size) }) == size {}
    }

    func setThread(_ thread: pthread_t) {
        threadState.withLock { $0.thread = thread }
    }

    /// CPU time the loop thread has used (nil once it has been joined). For tests that check the
    /// loop does not spin, independent of whatever else the process is doing.
    var threadCPUTime: Duration? {
        threadState.withLock { st -> Duration? in
            guard let t = st.thread, !st.joined else { return nil }
            var cid = clockid_t()
            guard pthread_getcpuclockid(t, &cid) == 0 else { return nil }
            var ts = timespec()
            guard clock_gettime(cid, &ts) == 0 else { return nil }
            return .seconds(ts.tv_sec) + .nanoseconds(ts.tv_nsec)
        }
    }

    /// Enqueues a command and wakes the loop; false once shutdown has been requested.
    @discardableResult
    func submit(_ command: Command) -> Bool {
        let wake = state.withLock { s -> Bool? in
            guard !s.shutdownRequested, s.accepting else { return nil }
            s.commands.append(command)
            if s.wakeupPending { return false }
            s.wakeupPending = true
            return true
        }
        guard let wake else { return false }
        if wake { signal() }
        return true
    }

    /// Loop thread: takes all queued commands.
    func takeCommands() -> [Command] {
        state.withLock { s in
            s.wakeupPending = false
            if s.commands.isEmpty { return [] }
            let commands = s.commands
            s.commands = []
            return commands
        }
    }

    /// Loop thread: it takes no more commands; later submissions fail.
    func stopAccepting() {
        state.withLock { $0.accepting = false }
    }

    /// Requests shutdown and waits for the loop thread to exit (unless called on the loop thread itself).
    func shutdown() {
        let wake = state.withLock { s -> Bool in
            guard !s.shutdownRequested else { return false }
            s.shutdownRequested = true
            s.commands.append(.shutdown)
            s.wakeupPending = true
            return s.accepting
        }
        if wake { signal() }
        // Holding the lock while joining makes concurrent callers wait for the join too.
        threadState.withLock { t in
            guard !t.joined, let thread = t.thread else { return }
            if pthread_equal(thread, pthread_self()) != 0 { return }
            pthread_join(thread, nil)
            t.joined = true
        }
    }
}

/// Entry point of the loop thread; `arg` is a retained ``CurlLoopRunner``.
private func curlLoopThreadMain(_ arg: UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? {
    guard let arg else { return nil }
    let runner = Unmanaged<CurlLoopRunner>.fromOpaque(arg).takeRetainedValue()
    runner.run()
    return nil
}

/// Creates the multi handle and starts the loop thread.
func startCurlLoop(configuration: HTTPClientConfiguration, logger: Logger) throws(HTTPClientError) -> CurlLoop {
    guard curlGlobalInitResult == CURLE_OK else {
        throw .transport(code: Int(curlGlobalInitResult.rawValue), message: "curl_global_init failed")
    }
    guard let multi = curl_multi_init() else {
        throw .transport(code: -1, message: "curl_multi_init failed")
    }
    _ = meshd_curl_multi_setopt_long(multi, CURLMOPT_MAX_HOST_CONNECTIONS, max(0, configuration.maxConnectionsPerHost))
    guard let loop = CurlLoop() else {
        curl_multi_cleanup(multi)
        throw .transport(code: -1, message: "cannot create the curl loop's wakeup pipe")
    }
    let runner = CurlLoopRunner(loop: loop, multi: multi, configuration: configuration, logger: logger)
    let context = Unmanaged.passRetained(runner).toOpaque()
    var thread = pthread_t()
    let rc = pthread_create(&thread, nil, curlLoopThreadMain, context)
    guard rc == 0 else {
        Unmanaged<CurlLoopRunner>.fromOpaque(context).release()
        loop.stopAccepting()
        curl_multi_cleanup(multi)
        throw .transport(code: -1, message: "pthread_create failed: \(rc)")
    }
    loop.setThread(thread)
    return loop
}

/// Loop-thread-only state: the multi handle and the active transfers. Never shared with other threads.
final class CurlLoopRunner {
    private let loop: CurlLoop
    private let multi: UnsafeMutableRawPointer
    private let configuration: HTTPClientConfiguration
    private let logger: Logger
    private var active: [ObjectIdentifier: ActiveTransfer] = [:]
    private var shuttingDown = false
    private let clock = ContinuousClock()
    private let pool: EasyHandlePool

    /// Longest single sleep in `curl_multi_poll` when nothing is due.
    private static let maxPollMilliseconds = 1000

    init(loop: CurlLoop, multi: UnsafeMutableRawPointer, configuration: HTTPClientConfiguration, logger: Logger) {
        self.loop = loop
        self.multi = multi
        self.configuration = configuration
        self.logger = logger
        self.pool = EasyHandlePool(loop: loop)
    }

    func run() {
        while true {
            for command in loop.takeCommands() {
                handle(command)
            }
            if shuttingDown { break }

            var running: Int32 = 0
            let performResult = curl_multi_perform(multi, &running)
            if performResult != CURLM_OK {
                logger.error("curl_multi_perform failed", metadata: ["code": "\(performResult.rawValue)"])
            }
            drainMessages()
            enforceDeadlines()

            var ready: Int32 = 0
            var wakeup = curl_waitfd(fd: loop.wakeReadFD, events: Int16(CURL_WAIT_POLLIN), revents: 0)
            let pollResult = curl_multi_poll(multi, &wakeup, 1, Int32(pollTimeoutMilliseconds()), &ready)
            if pollResult != CURLM_OK {
                logger.error("curl_multi_poll failed", metadata: ["code": "\(pollResult.rawValue)"])
            }
            if wakeup.revents != 0 { loop.drainWakeups() }
        }

        for transfer in active.values {
            transfer.state.fail(.shutdown)
            remove(transfer)
        }
        active.removeAll()
        pool.drain()
        loop.stopAccepting()
        curl_multi_cleanup(multi)
        logger.debug("curl loop stopped")
    }

    private func handle(_ command: CurlLoop.Command) {
        switch command {
        case .add(let state, let request):
            if shuttingDown {
                state.fail(.shutdown)
                return
            }
            if state.isCompleted { return }
            let transfer: ActiveTransfer
            do {
                transfer = try ActiveTransfer(
                    request: request, state: state, configuration: configuration, loop: loop, pool: pool, now: clock.now)
            } catch {
                state.fail(error)
                return
            }
            let rc = curl_multi_add_handle(multi, transfer.easy)
            guard rc == CURLM_OK else {
                state.fail(.transport(code: Int(rc.rawValue), message: String(cString: curl_multi_strerror(rc))))
                transfer.cleanup()
                return
            }
            active[ObjectIdentifier(state)] = transfer
        case .remove(let state):
            if let transfer = active.removeValue(forKey: ObjectIdentifier(state)) {
                remove(transfer)
            }
        case .resume(let state):
            active[ObjectIdentifier(state)]?.resume(now: clock.now)
        case .shutdown:
            shuttingDown = true
        }
    }

    /// Detaches the easy handle from the multi (closing a half-used connection) and frees everything.
    private func remove(_ transfer: ActiveTransfer) {
        _ = curl_multi_remove_handle(multi, transfer.easy)
        transfer.cleanup()
    }

    private func drainMessages() {
        var remaining: Int32 = 0
        while let message = curl_multi_info_read(multi, &remaining) {
            guard message.pointee.msg == CURLMSG_DONE, let easy = message.pointee.easy_handle else { continue }
            let code = message.pointee.data.result
            var privatePointer: UnsafeMutableRawPointer?
            _ = meshd_curl_easy_getinfo_ptr(easy, CURLINFO_PRIVATE, &privatePointer)
            guard let privatePointer else { continue }
            let transfer = Unmanaged<ActiveTransfer>.fromOpaque(privatePointer).takeUnretainedValue()
            transfer.complete(code: code)
            active.removeValue(forKey: ObjectIdentifier(transfer.state))
            remove(transfer)
        }
    }

    private func enforceDeadlines() {
        let now = clock.now
        var expired: [(ActiveTransfer, HTTPClientError)] = []
        for transfer in active.values {
            if let error = transfer.expiredError(now: now) {
                expired.append((transfer, error))
            }
        }
        for (transfer, error) in expired {
            if transfer.state.fail(error) {
                logger.debug("transfer timed out", metadata: ["error": "\(error)"])
            }
            active.removeValue(forKey: ObjectIdentifier(transfer.state))
            remove(transfer)
        }
    }

    private func pollTimeoutMilliseconds() -> Int {
        var nearest: ContinuousClock.Instant?
        for transfer in active.values {
            if let deadline = transfer.nextDeadline, nearest.map({ deadline < $0 }) ?? true {
                nearest = deadline
            }
        }
        guard let nearest else { return Self.maxPollMilliseconds }
        return min(Self.maxPollMilliseconds, (nearest - clock.now).meshCeilMilliseconds)
    }
}
