#ifndef PC_REDIS_SCHEMA_H
#define PC_REDIS_SCHEMA_H
#include <stddef.h>
#include "storage-adapter/listentry.h"

/*
 * The Redis key schema for lists, as pure functions (no connection), so it
 * can be tested and documented in one place.
 *   PREFIX kill:ENTRY / PREFIX accept:ENTRY -> hash {added, origin, reason}
 */

/* "portcullis:kill:192.0.2.0/24"; xmalloc'd */
char *redis_schema_key(const char *prefix, enum list_kind k, const char *entry);
/* the reverse; *entry_r points into rkey. -1: not one of ours */
int redis_schema_split_key(const char *prefix, const char *rkey, enum list_kind *k_r,
    const char **entry_r) __attribute__((warn_unused_result));
/*
 * A hash's fields (name/value pairs, binary-safe lengths) and the key's
 * EXPIRETIME (-1 none) into an entry. offset: Redis clock minus ours.
 * -1 with *error_r for a bad entry name or field value.
 */
int redis_schema_decode(const char *entry, const char *const *fv, const size_t *fvlen,
    size_t nfv, long long expiretime, long long offset, struct list_entry *e,
    const char **error_r) __attribute__((warn_unused_result));

/*
 * Redis clock minus ours, in whole seconds (rounded), from Redis's TIME
 * (their_s, their_us) and our CLOCK_REALTIME just before and after asking
 * (t0_*, t1_*: seconds, nanoseconds). Against the middle of the round trip
 * and to the microsecond: whole-second readings taken on either side of a
 * second's turn (time(2) is the kernel's coarse clock, a tick behind)
 * said 1 s where the clocks agree.
 */
#define REDIS_CLOCK_MAX_S 100000000000LL	/* year ~5138: past it, garbage: offset 0 */
long long redis_schema_clock_offset(long long their_s, long long their_us, long long t0_s,
    long t0_ns, long long t1_s, long t1_ns);

#endif
