#ifndef PC_RATELIMIT_H
#define PC_RATELIMIT_H
#include <stddef.h>

/*
 * Fixed-window event counters (relayed recipients per user or client).
 * Shared by all milter threads: ratelimit_take() never does I/O and holds a
 * striped lock for a few instructions only. With a shared store the counts
 * of every node meet in Redis: ratelimit_sync(), run on the watcher thread,
 * pushes this node's new counts and pulls the cluster-wide totals.
 */
struct ratelimit;

struct ratelimit *ratelimit_new(void);
void ratelimit_free(struct ratelimit **rl);

/*
 * One event for who (max 255 bytes) in the window of `window` seconds that
 * holds `now`. Returns 1 and counts it when the total stays within limit,
 * 0 (not counted) when it would exceed it. *total_r: the total after.
 */
int ratelimit_take(struct ratelimit *rl, const char *who, unsigned limit, unsigned window,
    long long now, unsigned long *total_r);

/* what to push: per counter, the Redis-side name and the new local count */
struct rate_delta {
	char *name;		/* "WINDOW:INDEX:WHO" */
	long long delta;
	long long expire_at;	/* end of the window */
	long long total;	/* filled by the store: the cluster-wide count */
};

/* hand out this node's unsynced counts (caller frees with ratelimit_deltas_free) */
size_t ratelimit_collect(struct ratelimit *rl, struct rate_delta **d_r, long long now);
/* take back the cluster-wide totals for the same counters */
void ratelimit_apply(struct ratelimit *rl, const struct rate_delta *d, size_t n);
void ratelimit_deltas_free(struct rate_delta *d, size_t n);

/* "200/1h" -> 200, 3600; -1 on garbage */
int ratelimit_parse(const char *s, unsigned *limit_r, unsigned *window_r)
    __attribute__((warn_unused_result));

#endif
