import CSwiftHooks
import NIOCore
import NIOPosix

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

    /// Installs the hook; false when another hook is already there. Call once, before the node starts.
    static func install() -> Bool {
        let hook: EnqueueGlobalHook = { job, _ in
            // `any()` is the current loop when called on one of the group's threads (no hand-off).
            MultiThreadedEventLoopGroup.singleton.any().enqueue(ExecutorJob(job))
        }
        return withUnsafeTemporaryAllocation(of: EnqueueGlobalHook.self, capacity: 1) { slot in
            slot.baseAddress!.initialize(to: hook)
            return slot.baseAddress!.withMemoryRebound(to: UnsafeMutableRawPointer?.self, capacity: 1) { raw in
                meshd_swift_install_enqueue_global_hook(raw.pointee) == 1
            }
        }
    }
}
