import CZeroMQ
import Dispatch
import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The mesh's ZeroMQ endpoint: one dedicated I/O thread that owns a `zmq_ctx` and every socket in it.
///
/// The thread runs a poll loop (`poll(2)` on each socket's `ZMQ_FD`, asking `ZMQ_EVENTS` only of sockets that
/// fired or were just used; see `MeshSocketRunner.runLoop`) over a wake-up pipe, the ZAP handler (a REP socket bound to
/// `inproc://zeromq.zap.01` before any other socket exists), the node's CURVE ROUTER, one CURVE DEALER per
/// outbound peer, and one monitor PAIR per ROUTER/DEALER. It waits with an infinite timeout, so an idle loop
/// uses no CPU. Other threads never touch a socket: the methods below append a command to a lock-protected queue
/// and wake the loop by writing one byte to the pipe. Everything the loop observes arrives on ``events``.
///
/// Security: every server socket sets `ZMQ_CURVE_SERVER`, `ZMQ_ZAP_DOMAIN` and `ZMQ_ZAP_ENFORCE_DOMAIN`, so a
/// client is admitted only if the ZAP handler says so, and a missing handler refuses everyone (fails closed).
/// The handler accepts CURVE clients whose key is the mesh key or allow-listed, and not revoked.
///
/// ``stop()`` closes every socket with linger 0, terminates the context and joins the thread; it never waits for
/// peers and may be called any number of times, from any thread. Dropping the last reference also stops it.
///
/// The loop is also a `TaskExecutor`: a task created with `Task(executorPreference: loop)` runs its jobs on the
/// loop thread, between socket work, so code that reacts to mesh messages and answers them (the mesh service's
/// event consumer, the handlers of forwarded requests) does so without a thread hand-off either way. Such jobs must
/// never block. After ``stop()`` jobs go to Swift's global executor instead, so no task is stranded.
public final class MeshSocketLoop: TaskExecutor, Sendable {
    /// Messages and connection/security events, in the order the loop saw them. Single consumer; finishes
    /// when the loop stops.
    public let events: AsyncStream<MeshSocketEvent>
    /// This node's CURVE public key (what peers must pass as `serverKey` to ``connect(peer:endpoint:serverKey:)``).
    public let publicKey: [UInt8]

    private let shared: LoopShared
    private let thread: Mutex<ThreadState>

    private struct ThreadState {
        var thread: pthread_t
        var joined = false
    }

    /// Starts the loop thread, creates the context and binds the ZAP handler; returns once that is done.
    public init(configuration: MeshSocketConfiguration, logger: Logger = Logger(label: "meshd.zmq")) throws(MeshZMQError) {
        guard zmq_has("curve") != 0 else { throw .curveUnavailable }
        guard configuration.meshPublicKey.count == CurveKeyPair.keyLength else {
            throw .invalidKey("mesh public key must be 32 bytes, got \(configuration.meshPublicKey.count)")
        }
        for key in configuration.allowedKeys.union(configuration.revokedKeys) where key.count != CurveKeyPair.keyLength {
            throw .invalidKey("allowed/revoked keys must be 32 bytes, got \(key.count)")
        }

        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { throw .zmq(operation: "pipe", errno: errno, message: String(cString: strerror(errno))) }
        for fd in fds {
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        }

        let (stream, continuation) = AsyncStream.makeStream(
            of: MeshSocketEvent.self, bufferingPolicy: .bufferingOldest(max(1, configuration.eventBufferLimit)))
        let shared = LoopShared(wakeReadFD: fds[0], wakeWriteFD: fds[1])
        let startup = StartupSignal()
        let runner = MeshSocketRunner(
            shared: shared, configuration: configuration, logger: logger,
            continuation: continuation, startup: startup)

        let context = Unmanaged.passRetained(runner).toOpaque()
        var handle = pthread_t()
        let rc = pthread_create(&handle, nil, meshSocketThreadMain, context)
        guard rc == 0 else {
            Unmanaged<MeshSocketRunner>.fromOpaque(context).release()
            continuation.finish()
            throw .threadStartFailed(rc)
        }
        if let error = startup.wait() {
            // The runner has torn everything down (sockets, context) and is exiting; the pipe goes with `shared`.
            pthread_join(handle, nil)
            throw error
        }
        self.events = stream
        self.publicKey = configuration.keyPair.publicKey
        self.shared = shared
        self.thread = Mutex(ThreadState(thread: handle))
    }

    deinit {
        stop()
    }

    /// Runs `job` on the loop thread (from the loop thread itself without a wake-up), or on the global
    /// executor once the loop is stopping.
    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        if !shared.submit(.job(job, UnownedTaskExecutor(ordinary: self))) {
            globalConcurrentExecutor.enqueue(job)
        }
    }

    /// Binds the ROUTER (created with the first bind) to `endpoint`, e.g. `tcp://127.0.0.1:*` or
    /// `tcp://0.0.0.0:11436`. Returns the resolved endpoint (`ZMQ_LAST_ENDPOINT`, with the chosen port).
    public func bind(_ endpoint: String) async throws(MeshZMQError) -> String {
        let result = await withCheckedContinuation { (reply: CheckedContinuation<Result<String, MeshZMQError>, Never>) in
            if !shared.submit(.bind(endpoint, reply)) { reply.resume(returning: .failure(.stopped)) }
        }
        return try result.get()
    }

    /// Creates a DEALER for `peer` and connects it to `endpoint` (e.g. `tcp://198.18.0.2:11436`), authenticating
    /// the server with `serverKey` (32 bytes; the mesh public key when every node shares the mesh keypair).
    /// Returns once the connect is issued; ``MeshSocketEvent/peerConnected(_:)`` follows after the handshake.
    /// Messages sent to `.outbound(peer)` before that are queued (up to `maxQueuedMessagesPerPeer`).
    public func connect(peer: MeshPeerID, endpoint: String, serverKey: [UInt8]) async throws(MeshZMQError) {
        guard serverKey.count == CurveKeyPair.keyLength else {
            throw .invalidKey("server key must be 32 bytes, got \(serverKey.count)")
        }
        let result = await withCheckedContinuation { (reply: CheckedContinuation<Result<Void, MeshZMQError>, Never>) in
            if !shared.submit(.connect(peer, endpoint: endpoint, serverKey: serverKey, reply)) {
                reply.resume(returning: .failure(.stopped))
            }
        }
        try result.get()
    }

    /// Queues a multi-frame message for `link` (an inbound client's routing id, or an outbound peer). Never
    /// blocks. Returns false if the loop is stopped or `frames` is empty; delivery problems found later (peer gone,
    /// queue full, unknown peer) are reported as ``MeshSocketEvent/sendFailed(link:reason:)``.
    @discardableResult
    public func send(_ frames: [[UInt8]], to link: MeshLink) -> Bool {
        guard !frames.isEmpty else { return false }
        return shared.submit(.send(link, frames))
    }

    /// Closes the DEALER of `peer` (queued messages are dropped after `lingerMilliseconds`). False if stopped.
    @discardableResult
    public func disconnect(peer: MeshPeerID) -> Bool {
        shared.submit(.disconnect(peer))
    }

    /// Lets the ZAP handler accept the 32-byte client `key` (and un-revokes it). Returns once the handler
    /// applies it, so every handshake that starts afterwards sees the change.
    public func allow(key: [UInt8]) async throws(MeshZMQError) {
        try await updatePolicy(.allow, key: key)
    }

    /// Makes the ZAP handler refuse the client `key`, even if it is the mesh key. Returns once applied.
    /// Connections already established with that key stay up (libzmq cannot drop a single ROUTER peer),
    /// but every message that arrives over them from then on is dropped and reported once as an
    /// ``MeshSocketEvent/authFailure(address:reason:)``.
    public func revoke(key: [UInt8]) async throws(MeshZMQError) {
        try await updatePolicy(.revoke, key: key)
    }

    private func updatePolicy(_ change: LoopShared.PolicyChange, key: [UInt8]) async throws(MeshZMQError) {
        guard key.count == CurveKeyPair.keyLength else { throw .invalidKey("client key must be 32 bytes, got \(key.count)") }
        let result = await withCheckedContinuation { (reply: CheckedContinuation<Result<Void, MeshZMQError>, Never>) in
            if !shared.submit(.policy(change, key, reply)) { reply.resume(returning: .failure(.stopped)) }
        }
        try result.get()
    }

    /// True once ``stop()`` was called (or the loop failed).
    public var isStopped: Bool { shared.isStopRequested }

    /// Stops the loop: fails queued commands, closes every socket with linger 0, terminates the context,
    /// finishes ``events`` and joins the thread. Idempotent; concurrent callers all wait for the join.
    public func stop() {
        shared.requestStop()
        thread.withLock { state in
            guard !state.joined else { return }
            if pthread_equal(state.thread, pthread_self()) != 0 { return }
            pthread_join(state.thread, nil)
            state.joined = true
        }
    }
}

/// Entry point of the loop thread; `arg` is a retained ``MeshSocketRunner``.
private func meshSocketThreadMain(_ arg: UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? {
    guard let arg else { return nil }
    let runner = Unmanaged<MeshSocketRunner>.fromOpaque(arg).takeRetainedValue()
    nameCurrentThread("meshd-zmq")
    runner.run()
    return nil
}

/// Best-effort thread name (shows in `top -H`, `/proc/<pid>/task/*/comm`); Glibc does not export
/// `pthread_setname_np` to Swift, so on Linux write the calling thread's `comm` file instead.
private func nameCurrentThread(_ name: String) {
    #if os(Linux)
    let fd = open("/proc/thread-self/comm", O_WRONLY | O_CLOEXEC)
    guard fd >= 0 else { return }
    _ = Array(name.utf8.prefix(15)).withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    close(fd)
    #endif
}

/// Hands the loop thread's set-up outcome to the initializer.
final class StartupSignal: Sendable {
    private let semaphore = DispatchSemaphore(value: 0)
    private let outcome = Mutex<MeshZMQError?>(nil)

    func finish(_ error: MeshZMQError?) {
        outcome.withLock { $0 = error }
        semaphore.signal()
    }

    func wait() -> MeshZMQError? {
        semaphore.wait()
        return outcome.withLock { $0 }
    }
}

/// The thread-safe half of the loop: the command queue and the wake-up pipe.
///
/// The pipe's byte is written after the lock is released: written under it, the woken loop thread
/// (often scheduled at once, on the submitter's own CPU) ran into the held lock in `takeCommands`
/// and slept on it, an extra sleep and wake-up per forwarded request. Both ends of the pipe live as
/// long as this object, so a late write is harmless.
final class LoopShared: Sendable {
    enum Command: Sendable {
        case bind(String, CheckedContinuation<Result<String, MeshZMQError>, Never>)
        case connect(MeshPeerID, endpoint: String, serverKey: [UInt8], CheckedContinuation<Result<Void, MeshZMQError>, Never>)
        case disconnect(MeshPeerID)
        case send(MeshLink, [[UInt8]])
        case policy(PolicyChange, [UInt8], CheckedContinuation<Result<Void, MeshZMQError>, Never>)
        /// A Swift job of a task that prefers this loop as its executor.
        case job(UnownedJob, UnownedTaskExecutor)
        case stop

        /// Completes a command the loop will never run (a job runs on the global executor instead).
        func fail() {
            switch self {
            case let .bind(_, reply): reply.resume(returning: .failure(.stopped))
            case let .connect(_, _, _, reply): reply.resume(returning: .failure(.stopped))
            case let .policy(_, _, reply): reply.resume(returning: .failure(.stopped))
            case let .job(job, _): globalConcurrentExecutor.enqueue(job)
            default: break
            }
        }
    }

    enum PolicyChange: Sendable {
        case allow, revoke
    }

    private struct State {
        var commands: [Command] = []
        var stopRequested = false
        var wakePending = false
        /// The loop thread, once it runs: its own submits need no wake-up (it takes commands again
        /// before it polls).
        var loopThread: pthread_t?
    }

    private let state: Mutex<State>
    /// Read end (polled by the loop thread) and write end of the wake-up pipe; both non-blocking.
    let wakeReadFD: Int32
    private let wakeWriteFD: Int32

    init(wakeReadFD: Int32, wakeWriteFD: Int32) {
        state = Mutex(State())
        self.wakeReadFD = wakeReadFD
        self.wakeWriteFD = wakeWriteFD
    }

    deinit {
        close(wakeReadFD)
        close(wakeWriteFD)
    }

    /// Enqueues a command and wakes the loop (unless called on the loop thread); false once stop has been requested.
    func submit(_ command: Command) -> Bool {
        let wake = state.withLock { s -> Bool? in
            guard !s.stopRequested else { return nil }
            s.commands.append(command)
            if let t = s.loopThread, pthread_equal(t, pthread_self()) != 0 { return false }
            return Self.claimWake(&s)
        }
        guard let wake else { return false }
        if wake { signal() }
        return true
    }

    /// Loop thread, at start: marks the calling thread as the loop thread.
    func setLoopThread() {
        state.withLock { $0.loopThread = pthread_self() }
    }

    /// Enqueues `.stop` once; later submits are refused.
    func requestStop() {
        let wake = state.withLock { s -> Bool in
            guard !s.stopRequested else { return false }
            s.stopRequested = true
            s.commands.append(.stop)
            return Self.claimWake(&s)
        }
        if wake { signal() }
    }

    var isStopRequested: Bool { state.withLock { $0.stopRequested } }

    /// Loop thread: takes every queued command. Call after draining the pipe, so no wake-up is lost.
    func takeCommands() -> [Command] {
        state.withLock { s in
            s.wakePending = false
            let commands = s.commands
            s.commands = []
            return commands
        }
    }

    /// Loop thread: commands are still queued after its bounded rounds: make the next poll return at once.
    func rearmIfPending() {
        let wake = state.withLock { s in !s.commands.isEmpty && Self.claimWake(&s) }
        if wake { signal() }
    }

    /// Loop thread, on exit: later submits are refused.
    func stopAccepting() {
        state.withLock { $0.stopRequested = true }
    }

    /// Under the lock: whether this caller writes the wake-up byte (one write until the loop takes the commands).
    private static func claimWake(_ s: inout State) -> Bool {
        guard !s.wakePending else { return false }
        s.wakePending = true
        return true
    }

    /// Writes the wake-up byte (never under the lock).
    private func signal() {
        var byte: UInt8 = 1
        // EAGAIN means the pipe already holds bytes, so the loop wakes anyway.
        _ = write(wakeWriteFD, &byte, 1)
    }
}
