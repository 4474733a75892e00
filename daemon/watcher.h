#ifndef PC_WATCHER_H
#define PC_WATCHER_H
#include "common/cidr.h"
#include "rules/snapshot.h"
#include "storage-adapter/liststore.h"

/*
 * The list watcher thread: keeps the published snapshot in step with the
 * list store (polls for changes, rebuilds at the next expiry) and writes the
 * auto-bans that front doors request. Owner: the daemon.
 */
struct watcher;

/* loads the lists once, publishes the first snapshot into *snaps. cache: a
 * file store holding the last copy of a shared store (NULL for file stores);
 * with a cache an unreachable store is not an error. snaps NULL: load, but
 * publish nothing until watcher_attach() (a live reload builds the new
 * watcher while the old one still serves) */
struct watcher *watcher_new(struct liststore *store, struct liststore *cache,
    struct snapref *snaps, const char **error_r);
/* publish the first snapshot into snaps, replacing what it holds (another
 * watcher's, stopped first); before watcher_start() */
void watcher_attach(struct watcher *w, struct snapref *snaps);
int watcher_start(struct watcher *w, const char **error_r) __attribute__((warn_unused_result));
void watcher_stop_and_free(struct watcher **w);
struct ratelimit;
/* share these counters through the store (before start) */
void watcher_set_ratelimit(struct watcher *w, struct ratelimit *rl);
/* called on the watcher thread every poll interval (before start) */
void watcher_set_tick(struct watcher *w, void (*tick)(void));
/* any thread; never blocks and never drops a ban: requests are coalesced by
 * address, enforced at the watcher's next round and saved in batches (kept
 * and retried while the store refuses them). origin: ORIGIN_AUTOBAN, ... */
void watcher_ban_as(void *w, const struct ipaddr *addr, unsigned long seconds,
    enum entry_origin origin, const char *why);
/* watcher_ban_as(..., ORIGIN_AUTOBAN, why); why "auth-ban": ORIGIN_AUTHBAN */
void watcher_ban(void *w, const struct ipaddr *addr, unsigned long seconds, const char *why);

#endif
