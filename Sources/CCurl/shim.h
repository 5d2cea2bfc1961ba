#ifndef MESHD_CCURL_SHIM_H
#define MESHD_CCURL_SHIM_H
#include <curl/curl.h>
#include <sys/epoll.h>  /* the curl loop watches curl's sockets with epoll */

/* curl_easy_setopt / curl_easy_getinfo / curl_multi_setopt are variadic; Swift needs typed entry points. */
static inline CURLcode meshd_curl_easy_setopt_long(CURL *h, CURLoption o, long v) { return curl_easy_setopt(h, o, v); }
static inline CURLcode meshd_curl_easy_setopt_ptr(CURL *h, CURLoption o, void *v) { return curl_easy_setopt(h, o, v); }
static inline CURLcode meshd_curl_easy_setopt_str(CURL *h, CURLoption o, const char *v) { return curl_easy_setopt(h, o, v); }
static inline CURLcode meshd_curl_easy_setopt_off(CURL *h, CURLoption o, curl_off_t v) { return curl_easy_setopt(h, o, v); }
static inline CURLcode meshd_curl_easy_setopt_slist(CURL *h, CURLoption o, struct curl_slist *v) { return curl_easy_setopt(h, o, v); }
typedef size_t (*meshd_curl_data_cb)(char *ptr, size_t size, size_t nmemb, void *userdata);
static inline CURLcode meshd_curl_easy_setopt_datacb(CURL *h, CURLoption o, meshd_curl_data_cb v) { return curl_easy_setopt(h, o, v); }
typedef int (*meshd_curl_xferinfo_cb)(void *clientp, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow);
static inline CURLcode meshd_curl_easy_setopt_xferinfo(CURL *h, meshd_curl_xferinfo_cb v) { return curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, v); }
static inline CURLcode meshd_curl_easy_getinfo_long(CURL *h, CURLINFO i, long *v) { return curl_easy_getinfo(h, i, v); }
static inline CURLcode meshd_curl_easy_getinfo_ptr(CURL *h, CURLINFO i, void **v) { return curl_easy_getinfo(h, i, v); }
static inline CURLcode meshd_curl_easy_getinfo_double(CURL *h, CURLINFO i, double *v) { return curl_easy_getinfo(h, i, v); }
static inline CURLMcode meshd_curl_multi_setopt_long(CURLM *m, CURLMoption o, long v) { return curl_multi_setopt(m, o, v); }
/* The event-driven multi interface (curl_multi_socket_action): curl tells which sockets to watch and
   when to call it back; the loop watches them with epoll, so each wake-up costs O(ready), not O(transfers). */
typedef int (*meshd_curl_socket_cb)(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp);
typedef int (*meshd_curl_timer_cb)(CURLM *multi, long timeout_ms, void *userp);
static inline CURLMcode meshd_curl_multi_setopt_ptr(CURLM *m, CURLMoption o, void *v) { return curl_multi_setopt(m, o, v); }
static inline CURLMcode meshd_curl_multi_setopt_socketcb(CURLM *m, meshd_curl_socket_cb cb) { return curl_multi_setopt(m, CURLMOPT_SOCKETFUNCTION, cb); }
static inline CURLMcode meshd_curl_multi_setopt_timercb(CURLM *m, meshd_curl_timer_cb cb) { return curl_multi_setopt(m, CURLMOPT_TIMERFUNCTION, cb); }
#endif
