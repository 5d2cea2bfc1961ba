import CCurl
import MeshCore
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
/// (in the loop's epoll set). The byte is written after the lock is released: a wakeup issued
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
    /// Times the loop thread has returned from `epoll_wait` (tests: an idle loop must sleep).
    let wakeups = Atomic<Int>(0)

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

    /// Loop thread: empties the pipe after epoll reported it readable.
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
    nameCurlThread()
    runner.run()
    return nil
}

/// Names the loop thread `meshd-curl` (`top -H`, `perf`, `/proc/<pid>/task/*/comm`). Without it,
/// it inherits the name of whichever thread started the client, often one of libdispatch's
/// (`com.apple.root.default-qos`). Glibc does not export `pthread_setname_np` to Swift.
private func nameCurlThread() {
    #if os(Linux)
    let fd = open("/proc/thread-self/comm", O_WRONLY | O_CLOEXEC)
    guard fd >= 0 else { return }
    _ = write(fd, "meshd-curl", 10)
    close(fd)
    #endif
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
///
/// Event-driven: curl says through its socket callback which sockets to watch (kept in an epoll set
/// next to the wake-up pipe) and through its timer callback when to call it back; the loop hands it
/// only the sockets that are ready (`curl_multi_socket_action`). A wake-up therefore costs O(ready
/// sockets), not O(transfers) as `curl_multi_perform` + `curl_multi_poll` did (a poll of every
/// socket and a walk over every handle per wake-up: ~0.3 ms per chunk with 1,000 open streams).
final class CurlLoopRunner {
    private let loop: CurlLoop
    private let multi: UnsafeMutableRawPointer
    private let configuration: HTTPClientConfiguration
    private let logger: Logger
    private var active: [ObjectIdentifier: ActiveTransfer] = [:]
    private var shuttingDown = false
    private let clock = ContinuousClock()
    private let pool: EasyHandlePool
    private let deliveries = PendingDeliveries()
    private let epollFD: Int32
    /// When curl wants `curl_multi_socket_action(CURL_SOCKET_TIMEOUT)`; nil: no timer.
    private var curlTimer: ContinuousClock.Instant?
    /// Counts timer callbacks, to tell whether curl set a new timer during a call.
    private var timerCalls = 0
    /// No transfer's own deadline (first byte, idle) falls before this: the scan over all transfers
    /// runs only then (deadlines move later with activity, never earlier, except on add or resume).
    private var nextDeadlineScan: ContinuousClock.Instant
    /// Coalescing of fast streams' reads (``ReadCoalescer``); all empty when it is off.
    /// The easy handle using each socket curl watches, and the events curl wants for it.
    private var socketOwner: [Int32: UnsafeMutableRawPointer] = [:]
    private var wantedEvents: [Int32: UInt32] = [:]
    /// The other way round: each easy handle's sockets (usually one), so a transfer's end costs
    /// O(its sockets), not a scan of every socket (a thousand open streams: a thousand per end).
    private var socketsOf: [UnsafeMutableRawPointer: [Int32]] = [:]
    /// Sockets of fast streams left unread until then (their EPOLLIN interest is off).
    private var snoozed: [Int32: ContinuousClock.Instant] = [:]
    private let coalescing: Bool
    private let start: ContinuousClock.Instant

    /// Longest single sleep when nothing is due.
    private static let maxPollMilliseconds = 1000
    private static let maxEvents = 256

    init(loop: CurlLoop, multi: UnsafeMutableRawPointer, configuration: HTTPClientConfiguration, logger: Logger) {
        self.loop = loop
        self.multi = multi
        self.configuration = configuration
        self.logger = logger
        self.pool = EasyHandlePool(loop: loop)
        self.epollFD = epoll_create1(Int32(EPOLL_CLOEXEC))
        self.nextDeadlineScan = clock.now
        self.coalescing = configuration.streamCoalesce > .zero
        self.start = clock.now
    }

    func run() {
        let me = Unmanaged.passUnretained(self).toOpaque()
        _ = meshd_curl_multi_setopt_socketcb(multi, curlSocketCallback)
        _ = meshd_curl_multi_setopt_ptr(multi, CURLMOPT_SOCKETDATA, me)
        _ = meshd_curl_multi_setopt_timercb(multi, curlTimerCallback)
        _ = meshd_curl_multi_setopt_ptr(multi, CURLMOPT_TIMERDATA, me)
        if epollFD < 0 { logger.critical("epoll_create1 failed", metadata: ["errno": "\(errno)"]) }
        watch(loop.wakeReadFD, events: UInt32(EPOLLIN.rawValue))
        var events = [epoll_event](repeating: epoll_event(), count: Self.maxEvents)

        while true {
            for command in loop.takeCommands() {
                handle(command)
            }
            if shuttingDown { break }

            if let t = curlTimer, t <= clock.now {
                curlTimer = nil
                let calls = timerCalls
                action(CURL_SOCKET_TIMEOUT, 0)
                // curl calls the timer callback only when it thinks its earliest expiry changed.
                // When it said nothing, ask it when that is: we may have come a little early (its
                // timeouts are whole milliseconds), or it may keep no timer at all. Not a blind retry
                // in 1 ms: after a timer fired and curl went on with no timer and no word (seen after
                // an engine poll's transfers), that polled every millisecond until the next event,
                // up to ~1,000 wakes a second on an idle node.
                if timerCalls == calls { curlTimer = nextCurlExpiry() }
            }
            if !snoozed.isEmpty { wakeSnoozed() }
            drainMessages()
            enforceDeadlines()

            deliveries.flush()  // a resume (`curl_easy_pause`) may have delivered chunks
            let n = events.withUnsafeMutableBufferPointer { buf in
                epoll_wait(epollFD, buf.baseAddress, Int32(Self.maxEvents), Int32(pollTimeoutMilliseconds()))
            }
            loop.wakeups.add(1, ordering: .relaxed)
            if n == 0 && curlTimer == nil {
                // Nothing happened for a whole poll period: let curl run its timers anyway.
                action(CURL_SOCKET_TIMEOUT, 0)
                drainMessages()
            }
            if n > 0 {
                for i in 0..<Int(n) {
                    let fd = Int32(truncatingIfNeeded: events[i].data.u64)
                    let ev = events[i].events
                    if fd == loop.wakeReadFD {
                        loop.drainWakeups()
                        continue
                    }
                    var mask: Int32 = 0
                    if ev & UInt32(EPOLLIN.rawValue) != 0 { mask |= CURL_CSELECT_IN }
                    if ev & UInt32(EPOLLOUT.rawValue) != 0 { mask |= CURL_CSELECT_OUT }
                    if ev & (UInt32(EPOLLERR.rawValue) | UInt32(EPOLLHUP.rawValue)) != 0 { mask |= CURL_CSELECT_ERR }
                    if !snoozed.isEmpty, snoozed.removeValue(forKey: fd) != nil {
                        // A snoozed socket hung up or became writable: read it now, as it is.
                        watch(fd, events: wantedEvents[fd] ?? 0)
                        mask |= CURL_CSELECT_IN
                    }
                    action(fd, mask)
                    if coalescing, mask & CURL_CSELECT_IN != 0 { considerSnooze(fd) }
                }
                drainMessages()
            }
        }

        for transfer in active.values {
            transfer.state.fail(.shutdown)
            remove(transfer)
        }
        active.removeAll()
        pool.drain()
        loop.stopAccepting()
        curl_multi_cleanup(multi)
        if epollFD >= 0 { close(epollFD) }
        logger.debug("curl loop stopped")
    }

    private func action(_ fd: Int32, _ mask: Int32) {
        var running: Int32 = 0
        let rc = curl_multi_socket_action(multi, fd, mask, &running)
        if rc != CURLM_OK {
            logger.error("curl_multi_socket_action failed", metadata: ["code": "\(rc.rawValue)"])
        }
    }

    /// Adds or changes the epoll interest for `fd` (the fd number is the event's data).
    private func watch(_ fd: Int32, events: UInt32) {
        var ev = epoll_event()
        ev.events = events
        ev.data.u64 = UInt64(UInt32(bitPattern: fd))
        if epoll_ctl(epollFD, EPOLL_CTL_MOD, fd, &ev) != 0 && errno == ENOENT {
            _ = epoll_ctl(epollFD, EPOLL_CTL_ADD, fd, &ev)
        }
    }

    /// curl's socket callback: which sockets to watch for what.
    fileprivate func socketChanged(_ fd: Int32, easy: UnsafeMutableRawPointer?, what: Int32) {
        if what == CURL_POLL_REMOVE {
            _ = epoll_ctl(epollFD, EPOLL_CTL_DEL, fd, nil)  // EBADF/ENOENT: already closed, nothing to do
            if coalescing {
                setOwner(of: fd, to: nil)
                wantedEvents[fd] = nil
                snoozed[fd] = nil
            }
            return
        }
        var events: UInt32 = 0
        if what & CURL_POLL_IN != 0 { events |= UInt32(EPOLLIN.rawValue) }
        if what & CURL_POLL_OUT != 0 { events |= UInt32(EPOLLOUT.rawValue) }
        if coalescing {
            setOwner(of: fd, to: easy)
            wantedEvents[fd] = events
            if snoozed[fd] != nil { events &= ~UInt32(EPOLLIN.rawValue) }
        }
        watch(fd, events: events)
    }

    /// After a read of `fd`: if it belongs to a fast stream, leave it unread for a while.
    private func considerSnooze(_ fd: Int32) {
        guard let easy = socketOwner[fd] else { return }
        var privatePointer: UnsafeMutableRawPointer?
        _ = meshd_curl_easy_getinfo_ptr(easy, CURLINFO_PRIVATE, &privatePointer)
        guard let privatePointer else { return }
        let transfer = Unmanaged<ActiveTransfer>.fromOpaque(privatePointer).takeUnretainedValue()
        guard transfer.coalesces else { return }
        let now = clock.now
        let chunks = transfer.takeChunkCount()
        guard let until = transfer.coalescer.afterRead(nowNanos: UInt64(max(0, (now - start).nanoseconds)), chunks: chunks),
              !transfer.state.isCompleted
        else { return }
        let untilInstant = start + .nanoseconds(Int64(clamping: until))
        snoozed[fd] = untilInstant
        watch(fd, events: (wantedEvents[fd] ?? 0) & ~UInt32(EPOLLIN.rawValue))
    }

    /// The handle is leaving the multi handle (it may be reused or freed): its sockets, which curl
    /// may keep as cached connections, are no longer its, and none stays snoozed.
    private func forgetSockets(of easy: UnsafeMutableRawPointer) {
        guard let fds = socketsOf.removeValue(forKey: easy) else { return }
        for fd in fds {
            socketOwner[fd] = nil
            if snoozed.removeValue(forKey: fd) != nil { watch(fd, events: wantedEvents[fd] ?? 0) }
        }
    }

    /// Records which easy handle uses `fd` (nil: none), in both maps.
    private func setOwner(of fd: Int32, to easy: UnsafeMutableRawPointer?) {
        let previous = socketOwner[fd]
        guard previous != easy else { return }
        if let previous {
            socketsOf[previous]?.removeAll { $0 == fd }
            if socketsOf[previous]?.isEmpty == true { socketsOf[previous] = nil }
        }
        socketOwner[fd] = easy
        if let easy { socketsOf[easy, default: []].append(fd) }
    }

    /// Reads the snoozed sockets whose time has come, and watches them again.
    private func wakeSnoozed() {
        let now = clock.now
        let due = snoozed.filter { $0.value <= now }.map(\.key)
        for fd in due {
            snoozed[fd] = nil
            watch(fd, events: wantedEvents[fd] ?? 0)
            action(fd, CURL_CSELECT_IN)
            considerSnooze(fd)
        }
    }

    /// curl's timer callback: call `socket_action(CURL_SOCKET_TIMEOUT)` in `ms` (-1: never).
    fileprivate func timerChanged(_ ms: Int) {
        timerCalls &+= 1
        curlTimer = ms < 0 ? nil : clock.now + .milliseconds(ms)
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
                    request: request, state: state, configuration: configuration, loop: loop, pool: pool,
                    deliveries: deliveries, now: clock.now)
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
            noteDeadline(transfer)
        case .remove(let state):
            if let transfer = active.removeValue(forKey: ObjectIdentifier(state)) {
                remove(transfer)
            }
        case .resume(let state):
            if let transfer = active[ObjectIdentifier(state)] {
                transfer.resume(now: clock.now)
                noteDeadline(transfer)
            }
        case .shutdown:
            shuttingDown = true
        }
    }

    /// Detaches the easy handle from the multi (closing a half-used connection) and frees everything.
    private func remove(_ transfer: ActiveTransfer) {
        if coalescing { forgetSockets(of: transfer.easy) }
        _ = curl_multi_remove_handle(multi, transfer.easy)
        transfer.cleanup()
    }

    /// Wakes the consumers of the chunks read so far, then ends the transfers curl says are done.
    private func drainMessages() {
        deliveries.flush()
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

    /// A transfer's deadline may now come before the next scan (added or resumed).
    private func noteDeadline(_ transfer: ActiveTransfer) {
        if let d = transfer.nextDeadline, d < nextDeadlineScan { nextDeadlineScan = d }
    }

    /// Fails the transfers whose first-byte or idle deadline has passed. Walks every transfer, but
    /// only when the earliest deadline seen at the last walk has come.
    private func enforceDeadlines() {
        let now = clock.now
        guard now >= nextDeadlineScan else { return }
        var expired: [(ActiveTransfer, HTTPClientError)] = []
        var nearest = now + .milliseconds(Self.maxPollMilliseconds)
        for transfer in active.values {
            if let error = transfer.expiredError(now: now) {
                expired.append((transfer, error))
            } else if let d = transfer.nextDeadline, d < nearest {
                nearest = d
            }
        }
        nextDeadlineScan = nearest
        for (transfer, error) in expired {
            if transfer.state.fail(error) {
                logger.debug("transfer timed out", metadata: ["error": "\(error)"])
            }
            active.removeValue(forKey: ObjectIdentifier(transfer.state))
            remove(transfer)
        }
    }

    /// When curl's earliest timer is due (`curl_multi_timeout`); at least 1 ms ahead, nil: none.
    private func nextCurlExpiry() -> ContinuousClock.Instant? {
        var ms = -1
        guard curl_multi_timeout(multi, &ms) == CURLM_OK, ms >= 0 else { return nil }
        return clock.now + .milliseconds(max(1, ms))
    }

    private func pollTimeoutMilliseconds() -> Int {
        let now = clock.now
        var nearest = nextDeadlineScan
        if let t = curlTimer, t < nearest { nearest = t }
        for until in snoozed.values where until < nearest { nearest = until }
        if nearest <= now { return 0 }
        return min(Self.maxPollMilliseconds, (nearest - now).meshCeilMilliseconds)
    }
}

/// curl's `CURLMOPT_SOCKETFUNCTION`; `userp` is the (unretained) runner, called on its thread.
private func curlSocketCallback(_ easy: UnsafeMutableRawPointer?, _ fd: curl_socket_t, _ what: Int32,
                                _ userp: UnsafeMutableRawPointer?, _ socketp: UnsafeMutableRawPointer?) -> Int32 {
    guard let userp else { return 0 }
    Unmanaged<CurlLoopRunner>.fromOpaque(userp).takeUnretainedValue().socketChanged(fd, easy: easy, what: what)
    return 0
}

/// curl's `CURLMOPT_TIMERFUNCTION`.
private func curlTimerCallback(_ multi: UnsafeMutableRawPointer?, _ ms: Int, _ userp: UnsafeMutableRawPointer?) -> Int32 {
    guard let userp else { return 0 }
    Unmanaged<CurlLoopRunner>.fromOpaque(userp).takeUnretainedValue().timerChanged(ms)
    return 0
}
