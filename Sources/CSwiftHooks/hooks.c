#include "meshd_swift_hooks.h"

/// Declared here as an opaque pointer: only its address is taken, and Swift stores into it atomically.
extern void *swift_task_enqueueGlobal_hook;

void **meshd_swift_task_enqueue_global_hook_slot(void) {
    return &swift_task_enqueueGlobal_hook;
}

int meshd_swift_install_enqueue_global_hook(void *hook) {
    void *expected = 0;
    return __atomic_compare_exchange_n(&swift_task_enqueueGlobal_hook, &expected, hook, 0,
                                       __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST) ? 1 : 0;
}
