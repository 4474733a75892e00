#ifndef PC_FCRDNS_H
#define PC_FCRDNS_H
/*
 * fcrdns - the forward-confirmed reverse DNS name of a client, for every
 * network door: the PTR name of its address, kept only when that name
 * resolves back (A or AAAA) to the same address. Non-blocking, on the
 * loop's evdns base: no search domains, 3 s per try, 2 tries.
 * Owner: the event loop's thread.
 */
struct event_base;
struct evdns_base;
struct ipaddr;

/* "system" (/etc/resolv.conf's nameservers) or "IP[:PORT]"; NULL with
 * *error_r when the address is not one. A missing /etc/resolv.conf is
 * logged, not an error (lookups then fail and the client has no name). */
struct evdns_base *fcrdns_resolver_new(struct event_base *base, const char *resolver,
    const char **error_r);
/* pending lookups call back (with no name) before it goes */
void fcrdns_resolver_free(struct evdns_base **dns);

/* name: the verified name (valid during the call), or NULL: none */
typedef void fcrdns_cb(void *arg, const char *name);

/* 0: cb(arg, ...) will be called exactly once, later from the loop (also
 * when the resolver is freed first); -1: the lookup could not start, no
 * callback comes */
int fcrdns_lookup(struct evdns_base *dns, const struct ipaddr *addr, fcrdns_cb *cb, void *arg)
    __attribute__((warn_unused_result));

#endif
