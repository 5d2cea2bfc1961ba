#ifndef MESHD_CAVAHI_SHIM_H
#define MESHD_CAVAHI_SHIM_H
#include <stddef.h>
#include <avahi-client/client.h>
#include <avahi-client/lookup.h>
#include <avahi-client/publish.h>
#include <avahi-common/address.h>
#include <avahi-common/alternative.h>
#include <avahi-common/error.h>
#include <avahi-common/malloc.h>
#include <avahi-common/strlst.h>
#include <avahi-common/thread-watch.h>
#include <avahi-common/timeval.h>
#include <avahi-common/watch.h>

/* avahi_entry_group_add_service() is variadic (a NULL-terminated list of TXT strings);
   Swift cannot call it, so publish through the AvahiStringList variant. */
static inline int meshd_avahi_add_service(AvahiEntryGroup *group, const char *name, const char *type,
                                          uint16_t port, AvahiStringList *txt) {
    return avahi_entry_group_add_service_strlst(group, AVAHI_IF_UNSPEC, AVAHI_PROTO_UNSPEC, (AvahiPublishFlags)0,
                                                name, type, NULL, NULL, port, txt);
}

/* IPv4 only: mDNS results are dialed as `address:port`, and IPv6 link-local results would need a
   zone index; the mesh listens on IPv4. */
static inline AvahiServiceBrowser *meshd_avahi_browse(AvahiClient *c, const char *type,
                                                      AvahiServiceBrowserCallback cb, void *userdata) {
    return avahi_service_browser_new(c, AVAHI_IF_UNSPEC, AVAHI_PROTO_INET, type, NULL, (AvahiLookupFlags)0, cb, userdata);
}

static inline AvahiServiceResolver *meshd_avahi_resolve(AvahiClient *c, AvahiIfIndex iface, AvahiProtocol proto,
                                                        const char *name, const char *type, const char *domain,
                                                        AvahiServiceResolverCallback cb, void *userdata) {
    return avahi_service_resolver_new(c, iface, proto, name, type, domain, AVAHI_PROTO_INET, (AvahiLookupFlags)0, cb, userdata);
}

static inline int meshd_avahi_update_txt(AvahiEntryGroup *group, const char *name, const char *type, AvahiStringList *txt) {
    return avahi_entry_group_update_service_txt_strlst(group, AVAHI_IF_UNSPEC, AVAHI_PROTO_UNSPEC, (AvahiPublishFlags)0,
                                                       name, type, NULL, txt);
}

/* Timers of the threaded poll (the AvahiPoll vtable is not callable from Swift as is). */
static inline AvahiTimeout *meshd_avahi_timeout_new(AvahiThreadedPoll *p, unsigned ms, AvahiTimeoutCallback cb, void *userdata) {
    const AvahiPoll *api = avahi_threaded_poll_get(p);
    struct timeval tv;
    avahi_elapse_time(&tv, ms, 0);
    return api->timeout_new(api, &tv, cb, userdata);
}

static inline void meshd_avahi_timeout_free(AvahiThreadedPoll *p, AvahiTimeout *t) {
    avahi_threaded_poll_get(p)->timeout_free(t);
}

static inline int meshd_avahi_result_is_own(AvahiLookupResultFlags flags) {
    return (flags & AVAHI_LOOKUP_RESULT_OUR_OWN) != 0;
}
#endif
