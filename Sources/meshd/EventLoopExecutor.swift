import CSwiftHooks
import NIOCore
import NIOPosix
import Synchronization

/// Makes NIO's singleton event loops Swift's global executor, so a request's task runs on the
/// thread that owns its connection instead of bouncing between the event loop and Swift's
/// cooperative pool (the thread hand-offs dominated meshd's per-request cost on 2 cores).
///
/// SwiftNIO's own takeover finds the runtime's hook with `dlsym`, which finds nothing when the
/// Swift runtime is linked statically (`--static-swift-stdlib`, as the Debian package is built):
/// there the runtime's symbols are hidden, and every streamed chunk then cost two more thread
/// wakes (measured on one paced stream: 4.2-4.6 sleeps and 205-290 µs of CPU per relayed chunk,
/// against 2.2 and 150-180 µs with this hook, same binary and run).
/// This one takes the hook's address from the linker, so it works the same either way.
enum EventLoopExecutor {
    /// The runtime's hook type: the job, and the runtime's own enqueue (unused: every job goes to NIO).
    private typealias EnqueueGlobalHook = @convention(thin) (UnownedJob, @convention(thin) (UnownedJob) -> Void) -> Void

    /// The generic executor ("no particular one"), as Swift's own global executor runs its jobs:
    /// an executor reference whose identity and implementation are both zero.
    ///
    /// SwiftNIO runs a global job *on the event loop's serial executor* (`SelectableEventLoop`
    /// passes itself). The task then counts as isolated to that loop, so every hop the compiler
    /// emits back to the generic executor (after each call into an actor, at each nonisolated
    /// async function) is a real executor switch: the task is parked, enqueued on the loop again
    /// and picked up on a later tick. A non-streamed request took 27 such jobs (counted with uprobes on
    /// `swift_job_run`). Run as generic, the runtime switches between the generic executor and
    /// free default actors in place, on the same thread.
    ///
    /// Not kept in an `Optional`: a zero identity is how `Optional<UnownedSerialExecutor>` spells nil.
    static let genericFits = MemoryLayout<UnownedSerialExecutor>.size == 2 * MemoryLayout<UInt>.size
    static var generic: UnownedSerialExecutor { unsafeBitCast((UInt(0), UInt(0)), to: UnownedSerialExecutor.self) }

    /// Jobs handed to the event loops (`meshd_executor_jobs_total`).
    static let jobsRun = Atomic<Int>(0)

    /// Installs the hook; false when another hook is already there. Call once, before the node starts.
    static func install() -> Bool {
        let hook: EnqueueGlobalHook = { job, _ in
            EventLoopExecutor.jobsRun.add(1, ordering: .relaxed)
            // `any()` is the current loop when called on one of the group's threads (no hand-off).
            let loop = MultiThreadedEventLoopGroup.singleton.any()
            if EventLoopExecutor.genericFits {
                loop.execute { job.runSynchronously(on: EventLoopExecutor.generic) }
            } else {
                loop.enqueue(ExecutorJob(job))
            }
        }
        return withUnsafeTemporaryAllocation(of: EnqueueGlobalHook.self, capacity: 1) { slot in
            slot.baseAddress!.initialize(to: hook)
            return slot.baseAddress!.withMemoryRebound(to: UnsafeMutableRawPointer?.self, capacity: 1) { raw in
                meshd_swift_install_enqueue_global_hook(raw.pointee) == 1
            }
        }
    }
}
