#ifndef MESHD_CZEROMQ_SHIM_H
#define MESHD_CZEROMQ_SHIM_H
#include <zmq.h>

/* zmq.h hides ZMQ_ZAP_ENFORCE_DOMAIN behind ZMQ_BUILD_DRAFT_API, but libzmq 4.3.x honours it.
   Without it a CURVE server with no ZAP handler accepts any client key (fails open). */
#ifndef ZMQ_ZAP_ENFORCE_DOMAIN
#define ZMQ_ZAP_ENFORCE_DOMAIN 93
#endif

static inline int meshd_zmq_errno(void) { return zmq_errno(); }
#endif
