import MeshCore
import NIOCore

/// Sleeping on an event loop's own timers. `Task.sleep` (Swift 6.3) arms libdispatch's timer
/// thread, which wakes one of libdispatch's workers, which hands the task to the loop that runs
/// meshd's tasks: three threads woken per sleep. A periodic task (the mesh heartbeat's tick) that
/// sleeps here wakes the loop alone.
package enum LoopSleep {
    /// A sleep function for `loop`; returns early, without error, when the task is cancelled.
    /// The loop must outlive the sleeping tasks: a future's callbacks run on its loop, so a sleep on
    /// a loop already shut down never returns. meshd's loops are NIO's singleton (never shut
    /// down); a node with a group of its own shuts it down only after its tasks have ended.
    package static func on(_ loop: any EventLoop) -> Sleeper {
        { duration in
            let nanos = max(0, duration.nanoseconds)
            let scheduled = loop.scheduleTask(in: .nanoseconds(nanos)) {}
            await withTaskCancellationHandler {
                _ = try? await scheduled.futureResult.get()
            } onCancel: {
                scheduled.cancel()
            }
        }
    }
}
