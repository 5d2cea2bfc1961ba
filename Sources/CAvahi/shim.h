#ifndef MESHD_CAVAHI_SHIM_H
#define MESHD_CAVAHI_SHIM_H
#include <avahi-client/client.h>
#include <avahi-client/lookup.h>
#include <avahi-client/publish.h>
#include <avahi-common/address.h>
#include <avahi-common/alternative.h>
#include <avahi-common/error.h>
#include <avahi-common/malloc.h>
#include <avahi-common/strlst.h>
#include <avahi-common/thread-watch.h>

/* avahi_entry_group_add_service() is variadic (a NULL-terminated list of TXT strings);
   Swift cannot call it, so publish through the AvahiStringList variant. */
static inline int meshd_avahi_add_service(AvahiEntryGroup *group, const char *name, const char *type,
                                          uint16_t port, AvahiStringList *txt) {
    return avahi_entry_group_add_service_strlst(group, AVAHI_IF_UNSPEC, AVAHI_PROTO_UNSPEC, (AvahiPublishFlags)0,
                                                name, type, NULL, NULL, port, txt);
}
#endif
