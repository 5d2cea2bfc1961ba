#ifndef MESHD_SWIFT_HOOKS_H
#define MESHD_SWIFT_HOOKS_H

/// The Swift runtime's global-enqueue hook (`swift_task_enqueueGlobal_hook`, libswift_Concurrency):
/// where the runtime looks, for every job bound for the global executor, for a function to run
/// instead of its own pool. Resolved by the linker, so it is found whether the runtime is a shared
/// library or linked statically (`--static-swift-stdlib`), where the symbol is hidden and the
/// `dlsym` that SwiftNIO's takeover uses finds nothing.
void **meshd_swift_task_enqueue_global_hook_slot(void);

/// Stores `hook` in that slot if it is empty (an atomic compare-and-swap); 1 if it did, 0 if some
/// other hook was already installed.
int meshd_swift_install_enqueue_global_hook(void *hook);

#endif
