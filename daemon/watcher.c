/*
 * watcher - one thread that owns the list store for the daemon.
 *
 *   watcher_new()     first load (from the store, or from the local cache
 *                     when a shared store is unreachable); publish it
 *   watcher_start()   follow the store: file stores are polled every
 *                     WATCH_INTERVAL_MS; Redis pushes changes (pub/sub) and
 *                     is fully resynced now and then. Rebuild and publish
 *                     on change or when an entry expires.
 *   watcher_ban()     queue an auto-ban (from milter threads: a pipe write)
 *
 * All list I/O happens on this thread, so no milter callback ever waits for
 * disk or Redis. A shared store that goes away leaves the last snapshot in
 * force. Ban requests arrive through a non-blocking pipe whose records are
 * smaller than PIPE_BUF, so writes are atomic.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/xmalloc.h"
#include "daemon/watcher.h"
#include "storage-adapter/ratelimit.h"

#define WATCH_INTERVAL_MS 200
#define OVERLAY_MAX 20000	/* added entries kept on top of the full list, at most */
#define MERGE_IDLE_S 10		/* a quiet list folds its additions in after this */

/*
 * Which keys the entry copy holds, as 64-bit hashes (open addressing, 0 is
 * empty): a batch of announced keys none of which is there is a pure
 * addition and is appended without the O(n) pass over the copy. A hash
 * that is there (the key, or a collision) takes the exact, slow path.
 */
struct keyhash {
	uint64_t *slot;
	size_t cap, n;
};

static uint64_t
key_hash(const char *k)
{
	uint64_t h = 1469598103934665603ull;	/* FNV-1a 64 */

	for (; *k; k++) {
		h ^= (unsigned char)*k;
		h *= 1099511628211ull;
	}
	return h ? h : 1;
}

static void kh_insert(struct keyhash *kh, uint64_t h);

static void
kh_grow(struct keyhash *kh, size_t want)
{
	struct keyhash old = *kh;
	size_t cap = 1024;

	while (cap < want * 2)
		cap <<= 1;
	kh->slot = xcalloc(cap, sizeof(uint64_t));
	kh->cap = cap;
	kh->n = 0;
	for (size_t i = 0; i < old.cap; i++)
		if (old.slot[i] != 0)
			kh_insert(kh, old.slot[i]);
	free(old.slot);
}

static void
kh_insert(struct keyhash *kh, uint64_t h)
{
	size_t i;

	if ((kh->n + 1) * 2 > kh->cap)
		kh_grow(kh, kh->n + 1);
	for (i = h & (kh->cap - 1); kh->slot[i] != 0; i = (i + 1) & (kh->cap - 1))
		if (kh->slot[i] == h)
			return;
	kh->slot[i] = h;
	kh->n++;
}

static int
kh_has(const struct keyhash *kh, uint64_t h)
{
	if (kh->cap == 0)
		return 0;
	for (size_t i = h & (kh->cap - 1); kh->slot[i] != 0; i = (i + 1) & (kh->cap - 1))
		if (kh->slot[i] == h)
			return 1;
	return 0;
}

/* afresh from the copy (after anything but a pure addition) */
static void
kh_rebuild(struct keyhash *kh, const struct entry_vec *v)
{
	free(kh->slot);
	memset(kh, 0, sizeof(*kh));
	kh_grow(kh, v->n);
	for (size_t i = 0; i < v->n; i++)
		kh_insert(kh, key_hash(v->v[i].key));
}

struct watcher;
static int new_keys_only(struct watcher *w, enum list_kind k, char *const *keys, size_t n);

struct ban_req {
	struct ipaddr addr;
	unsigned long seconds;
	char why[48];
	int stop;
};

struct watcher {
	struct liststore *store;
	struct liststore *cache;	/* local copy of a shared store, or NULL */
	struct snapref *snaps;
	struct entry_vec lists[LIST_KINDS];
	/*
	 * Additions go on top of the last full build: base[k] is that build
	 * (owned by the published snapshots), lists[k].v[0 .. base_n[k]) the
	 * entries it holds; the entries after them are all new keys. Anything
	 * else (a key changed or removed, a reload) sets full and the next
	 * publication rebuilds everything.
	 */
	struct listset *base[LIST_KINDS];
	size_t base_n[LIST_KINDS];
	struct keyhash keys[LIST_KINDS];	/* valid while !keys_stale[k] */
	int keys_stale[LIST_KINDS];
	int full;
	int reload_due[LIST_KINDS];	/* changes could not be fetched: reload the list */
	long long last_change;
	long long next_expiry;
	int pipefd[2];
	pthread_t thread;
	int running;
	void (*tick)(void);
	struct ratelimit *rl;	/* counters to share through the store, or NULL */
	int rate_warned;
};

void
watcher_set_ratelimit(struct watcher *w, struct ratelimit *rl)
{
	w->rl = rl;
}

/* push this node's counts, pull the cluster-wide totals */
static void
rate_sync(struct watcher *w)
{
	struct rate_delta *d;
	size_t n;
	const char *err;

	if (w->rl == NULL || !liststore_has_rate_sync(w->store))
		return;
	n = ratelimit_collect(w->rl, &d, (long long)time(NULL));
	if (n == 0) {
		free(d);
		return;
	}
	if (liststore_rate_sync(w->store, d, n, &err) < 0) {
		if (!w->rate_warned)
			log_warn("relay rate counters not shared (counting on this node only): %s", err);
		w->rate_warned = 1;
		for (size_t i = 0; i < n; i++)
			d[i].total = -1;
	} else {
		w->rate_warned = 0;
	}
	ratelimit_apply(w->rl, d, n);
	ratelimit_deltas_free(d, n);
}

void
watcher_set_tick(struct watcher *w, void (*tick)(void))
{
	w->tick = tick;
}

static long long
earliest(long long a, long long b)
{
	return a == 0 ? b : (b == 0 || a < b) ? a : b;
}

/* everything compiled afresh: the new base */
static struct snapshot *
build(struct watcher *w)
{
	long long now = (long long)time(NULL);

	w->next_expiry = 0;
	for (int k = 0; k < LIST_KINDS; k++) {
		w->base[k] = listset_build(&w->lists[k], now);
		w->base_n[k] = w->lists[k].n;
		w->next_expiry = earliest(w->next_expiry, listset_next_expiry(w->base[k]));
	}
	w->full = 0;
	return snapshot_new(w->base[LIST_KILL], w->base[LIST_ACCEPT]);
}

/* the last base, shared, and only the entries added since compiled on top;
 * NULL when that would not be the cheaper way */
static struct snapshot *
build_overlay(struct watcher *w)
{
	long long now = (long long)time(NULL);
	struct listset *over[LIST_KINDS] = { NULL, NULL };
	size_t added = 0;

	if (w->full || w->base[LIST_KILL] == NULL)
		return NULL;
	for (int k = 0; k < LIST_KINDS; k++)
		added += w->lists[k].n - w->base_n[k];
	if (added == 0 || added > OVERLAY_MAX)
		return NULL;
	w->next_expiry = 0;
	for (int k = 0; k < LIST_KINDS; k++) {
		struct entry_vec tail = { 0 };

		w->next_expiry = earliest(w->next_expiry, listset_next_expiry(w->base[k]));
		if (w->lists[k].n == w->base_n[k])
			continue;
		/* a view of the tail: listset_build() only reads v and n */
		tail.v = w->lists[k].v + w->base_n[k];
		tail.n = w->lists[k].n - w->base_n[k];
		over[k] = listset_build(&tail, now);
		w->next_expiry = earliest(w->next_expiry, listset_next_expiry(over[k]));
	}
	return snapshot_new_overlay(listset_ref(w->base[LIST_KILL]),
	    listset_ref(w->base[LIST_ACCEPT]), over[LIST_KILL], over[LIST_ACCEPT]);
}

static void
save_cache(struct watcher *w, enum list_kind k)
{
	const char *err;

	if (w->cache != NULL && liststore_save_all(w->cache, k, &w->lists[k], &err) < 0)
		log_warn("cannot save the local copy of the %s list: %s", list_kind_name(k), err);
}

static int
reload(struct watcher *w, enum list_kind k, const char **error_r)
{
	struct entry_vec v = { 0 };

	if (liststore_load(w->store, k, &v, error_r) < 0) {
		entry_vec_clear(&v);
		return -1;
	}
	entry_vec_clear(&w->lists[k]);
	w->lists[k] = v;
	w->full = 1;
	w->keys_stale[k] = 1;
	save_cache(w, k);
	return 0;
}

struct watcher *
watcher_new(struct liststore *store, struct liststore *cache, struct snapref *snaps,
    const char **error_r)
{
	struct watcher *w = xcalloc(1, sizeof(*w));
	struct snapshot *s;
	const char *err = NULL;
	int ok = 1;

	w->store = store;
	w->cache = cache;
	w->snaps = snaps;
	w->pipefd[0] = w->pipefd[1] = -1;
	for (int k = 0; k < LIST_KINDS && ok; k++)
		ok = reload(w, (enum list_kind)k, &err) == 0;
	if (!ok && cache == NULL) {
		*error_r = err;
		for (int k = 0; k < LIST_KINDS; k++)
			entry_vec_clear(&w->lists[k]);
		free(w);
		return NULL;
	}
	if (!ok) {
		/* a shared store that is down must not keep the gateway down */
		for (int k = 0; k < LIST_KINDS; k++) {
			const char *cerr;

			entry_vec_clear(&w->lists[k]);
			if (liststore_load(cache, (enum list_kind)k, &w->lists[k], &cerr) < 0)
				log_warn("local copy of the lists unreadable: %s", cerr);
		}
		if (w->lists[LIST_KILL].n + w->lists[LIST_ACCEPT].n > 0)
			log_warn("%s; enforcing the last saved lists (%zu kill, %zu accept entries) "
			    "while retrying", err, w->lists[LIST_KILL].n, w->lists[LIST_ACCEPT].n);
		else
			log_warn("%s; starting with empty lists (no saved copy) while retrying", err);
	}
	for (int k = 0; k < LIST_KINDS; k++) {
		w->keys_stale[k] = 1;
		(void)new_keys_only(w, (enum list_kind)k, NULL, 0);	/* builds the key index */
	}
	s = build(w);
	log_info("lists loaded: %zu kill, %zu accept entries in force",
	    snapshot_count(s, LIST_KILL), snapshot_count(s, LIST_ACCEPT));
	snapref_init(snaps, s);
	return w;
}

/* put the ban into our own copy at once, then into the store */
static void
do_ban(struct watcher *w, const struct ban_req *r)
{
	struct list_entry e;
	struct entry_vec upd = { 0 };
	char a[CIDR_TEXT_MAX];
	const char *err;

	memset(&e, 0, sizeof(e));
	cidr_addr_format(&r->addr, a);
	if (listentry_parse_key(a, &e, &err) < 0) {
		log_error("auto-ban of %s: %s", a, err);
		return;
	}
	e.added = (long long)time(NULL);
	e.expires = e.added + (long long)r->seconds;
	e.origin = strcmp(r->why, "auth-ban") == 0 ? ORIGIN_AUTHBAN : ORIGIN_AUTOBAN;
	e.reason = xasprintf("%s", r->why);
	if (liststore_add(w->store, LIST_KILL, &e, &err) < 0)
		log_error("auto-ban of %s enforced on this node only, not saved: %s", a, err);
	else
		log_info("auto-ban: %s on the kill list for %lus (%s)", a, r->seconds, r->why);
	entry_vec_push(&upd, &e);	/* moves e */
	{
		char *key = xstrdup(upd.v[0].key);

		if (new_keys_only(w, LIST_KILL, &key, 1)) {
			kh_insert(&w->keys[LIST_KILL], key_hash(key));
			entry_vec_push(&w->lists[LIST_KILL], &upd.v[0]);
			upd.n = 0;
		} else {
			if (entry_vec_replace_keys(&w->lists[LIST_KILL], &key, 1, &upd) > 0)
				w->full = 1;	/* a key changed: not an addition */
			w->keys_stale[LIST_KILL] = 1;
		}
		free(key);
	}
	entry_vec_clear(&upd);
}

static int
cmp_change(const void *a, const void *b)
{
	const struct list_change *x = a, *y = b;

	if (x->kind != y->kind)
		return x->kind < y->kind ? -1 : 1;
	return strcmp(x->key, y->key);
}

/* none of keys[] is in the copy of list k (by hash: a collision says "maybe") */
static int
new_keys_only(struct watcher *w, enum list_kind k, char *const *keys, size_t n)
{
	if (w->keys_stale[k]) {
		kh_rebuild(&w->keys[k], &w->lists[k]);
		w->keys_stale[k] = 0;
	}
	for (size_t i = 0; i < n; i++)
		if (kh_has(&w->keys[k], key_hash(keys[i])))
			return 0;
	return 1;
}

/* fetch the changed keys and fold them into our copy; 1 when anything changed */
static int
apply_changes(struct watcher *w, struct list_changes *ch)
{
	int changed = 0;

	/* one key may be announced twice (keyspace event and PUBLISH): fetch once */
	if (ch->n > 1)
		qsort(ch->keys, ch->n, sizeof(ch->keys[0]), cmp_change);
	for (int k = 0; k < LIST_KINDS; k++) {
		struct entry_vec upd = { 0 };
		char **keys = xcalloc(ch->n + 1, sizeof(char *));
		size_t nkeys = 0;
		const char *err;

		if (ch->reload[k] || w->reload_due[k]) {
			if (reload(w, (enum list_kind)k, &err) < 0) {
				log_warn("%s list not reloaded, the previous one stays in force: %s",
				    list_kind_name((enum list_kind)k), err);
			} else {
				changed = 1;
				w->reload_due[k] = 0;
			}
			free(keys);
			continue;
		}
		for (size_t i = 0; i < ch->n; i++) {
			if (ch->keys[i].kind != (enum list_kind)k ||
			    (i > 0 && cmp_change(&ch->keys[i - 1], &ch->keys[i]) == 0))
				continue;
			keys[nkeys++] = ch->keys[i].key;
		}
		if (nkeys > 0 && liststore_get_many(w->store, (enum list_kind)k, keys, nkeys, &upd,
		    &err) < 0) {
			log_warn("%s list: %zu changed entries not fetched (the list is reloaded "
			    "next): %s", list_kind_name((enum list_kind)k), nkeys, err);
			w->reload_due[k] = 1;
			entry_vec_clear(&upd);
			nkeys = 0;
		}
		if (upd.n < nkeys)
			w->full = 1;	/* some removed (or gone already): not only additions */
		if (nkeys > 0 && upd.n == nkeys && new_keys_only(w, (enum list_kind)k, keys, nkeys)) {
			/* pure addition: append, no pass over the whole copy */
			for (size_t i = 0; i < upd.n; i++) {
				kh_insert(&w->keys[k], key_hash(upd.v[i].key));
				entry_vec_push(&w->lists[k], &upd.v[i]);
			}
			upd.n = 0;
			changed = 1;
		} else if (nkeys > 0) {
			if (entry_vec_replace_keys(&w->lists[k], keys, nkeys, &upd) > 0)
				w->full = 1;	/* a key changed or went */
			w->keys_stale[k] = 1;
			changed = 1;
		}
		entry_vec_clear(&upd);
		free(keys);
	}
	return changed;
}

static void *
watcher_main(void *arg)
{
	struct watcher *w = arg;

	for (;;) {
		struct pollfd pfd[2] = {
			{ .fd = w->pipefd[0], .events = POLLIN },
			{ .fd = liststore_watch_fd(w->store), .events = POLLIN },
		};
		struct list_changes ch = { 0 };
		int changed = 0, n;

		n = poll(pfd, pfd[1].fd >= 0 ? 2 : 1, w->rl ? WATCH_INTERVAL_MS / 2 : WATCH_INTERVAL_MS);
		if (w->tick != NULL)
			w->tick();
		rate_sync(w);
		if (n > 0 && (pfd[0].revents & POLLIN)) {
			struct ban_req r;

			while (read(w->pipefd[0], &r, sizeof(r)) == (ssize_t)sizeof(r)) {
				if (r.stop)
					return NULL;
				do_ban(w, &r);
				changed = 1;
			}
		}
		if (liststore_changes(w->store, &ch) < 0)
			log_warn("list store: cannot read changes");
		if (ch.reload[LIST_KILL] || ch.reload[LIST_ACCEPT] || ch.n > 0 ||
		    w->reload_due[LIST_KILL] || w->reload_due[LIST_ACCEPT])
			changed |= apply_changes(w, &ch);
		list_changes_clear(&ch);
		{
			long long now = (long long)time(NULL);
			int expired = w->next_expiry != 0 && now >= w->next_expiry;
			/* additions on top for a while; folded in once the list is quiet */
			int fold = !changed && !expired && w->last_change != 0 &&
			    now - w->last_change >= MERGE_IDLE_S;

			if (changed)
				w->last_change = now;
			if (changed || expired || fold) {
				struct timespec t0, t1;
				struct snapshot *s = NULL;

				clock_gettime(CLOCK_MONOTONIC, &t0);
				if (changed && !expired)
					s = build_overlay(w);
				if (s == NULL) {
					s = build(w);
					w->last_change = 0;
				}
				snapref_publish(w->snaps, s);
				if (s->over[LIST_KILL] == NULL && s->over[LIST_ACCEPT] == NULL) {
					/* the key index now, not when the next push waits */
					for (int k = 0; k < LIST_KINDS; k++)
						(void)new_keys_only(w, (enum list_kind)k, NULL, 0);
#ifdef __GLIBC__
					/* a full build frees the previous one (hundreds of MB
					 * for a million entries): pages back to the system */
					malloc_trim(0);
#endif
				}
				clock_gettime(CLOCK_MONOTONIC, &t1);
				if (changed || fold)
					log_info("lists %s: %zu kill, %zu accept entries in force "
					    "(%s in %.1f ms)", changed ? "reloaded" : "compacted",
					    snapshot_count(s, LIST_KILL), snapshot_count(s, LIST_ACCEPT),
					    s->over[LIST_KILL] || s->over[LIST_ACCEPT] ?
					    "additions compiled" : "snapshot built",
					    (double)(t1.tv_sec - t0.tv_sec) * 1e3 +
					    (double)(t1.tv_nsec - t0.tv_nsec) / 1e6);
			}
		}
	}
}

int
watcher_start(struct watcher *w, const char **error_r)
{
	if (pipe2(w->pipefd, O_CLOEXEC) < 0) {
		*error_r = "pipe2 failed";
		return -1;
	}
	fcntl(w->pipefd[0], F_SETFL, O_NONBLOCK);
	fcntl(w->pipefd[1], F_SETFL, O_NONBLOCK);
	if (pthread_create(&w->thread, NULL, watcher_main, w) != 0) {
		*error_r = "cannot start the list watcher thread";
		return -1;
	}
	w->running = 1;
	return 0;
}

void
watcher_ban(void *arg, const struct ipaddr *addr, unsigned long seconds, const char *why)
{
	struct watcher *w = arg;
	struct ban_req r;

	memset(&r, 0, sizeof(r));
	r.addr = *addr;
	r.seconds = seconds;
	snprintf(r.why, sizeof(r.why), "%s", why ? why : "auto-ban");
	if (write(w->pipefd[1], &r, sizeof(r)) != (ssize_t)sizeof(r))
		log_warn("auto-ban queue full; ban not recorded");
}

void
watcher_stop_and_free(struct watcher **wp)
{
	struct watcher *w = *wp;

	if (w == NULL)
		return;
	if (w->running) {
		struct ban_req r;
		int fl = fcntl(w->pipefd[1], F_GETFL);

		memset(&r, 0, sizeof(r));
		r.stop = 1;
		fcntl(w->pipefd[1], F_SETFL, fl & ~O_NONBLOCK);
		if (write(w->pipefd[1], &r, sizeof(r)) != (ssize_t)sizeof(r))
			log_warn("cannot stop the list watcher");
		pthread_join(w->thread, NULL);
	}
	if (w->pipefd[0] >= 0)
		close(w->pipefd[0]);
	if (w->pipefd[1] >= 0)
		close(w->pipefd[1]);
	for (int k = 0; k < LIST_KINDS; k++) {
		entry_vec_clear(&w->lists[k]);
		free(w->keys[k].slot);
	}
	free(w);
	*wp = NULL;
}
