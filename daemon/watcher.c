/*
 * watcher - one thread that owns the list store for the daemon.
 *
 *   watcher_new()     first load (from the store, or from the local cache
 *                     when a shared store is unreachable); publish it
 *   watcher_attach()  publish what watcher_new(NULL snaps) loaded, in place
 *                     of another watcher's snapshot (live reload)
 *   watcher_start()   follow the store: file stores are polled every
 *                     WATCH_INTERVAL_MS; Redis pushes changes (pub/sub) and
 *                     is fully resynced now and then. Rebuild and publish
 *                     on change or when an entry expires.
 *   watcher_ban()     queue an auto-ban (any thread; never blocks, never drops)
 *   watcher_ban_as()  the same with another origin (auth-ban)
 *
 * All list I/O happens on this thread, so no milter callback ever waits for
 * disk or Redis. A shared store that goes away leaves the last snapshot in
 * force. Ban requests go into a queue under a mutex, coalesced by address
 * (a repeat only lengthens the ban), and one byte on a pipe wakes the
 * thread. Each round the thread enforces every queued ban at once (an
 * addition on top of the last full build) and writes them to the store in
 * one batch (a journal append, one Redis pipeline); bans the store would not
 * take (Redis down, the file lock held by another process) stay enforced
 * and are written again with backoff, and survive full reloads meanwhile.
 * The thread never waits for the list lock.
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

#include "common/hash.h"
#include "common/log.h"
#include "common/xmalloc.h"
#include "daemon/watcher.h"
#include "storage-adapter/ratelimit.h"

#define WATCH_INTERVAL_MS 200
#define OVERLAY_MAX 20000	/* added entries kept on top of the full list, at most */
#define MERGE_IDLE_S 10		/* a quiet list folds its additions in after this */
#define CACHE_SAVE_EVERY_S 30	/* the local copy, rewritten at most this often while busy */

/*
 * Which keys the entry copy holds, as 64-bit hashes (open addressing, 0 is
 * empty): a batch of announced keys none of which is there is a pure
 * addition and is appended without the O(n) pass over the copy. A hash
 * that is there (the key, or a collision) takes the exact, slow path.
 */
struct keyhash {
	uint64_t *slot;
	size_t *idx;		/* where in the copy the (first) key of that hash is */
	size_t cap, n;
};
#define KH_NONE ((size_t)-1)

static uint64_t
key_hash(const char *k)
{
	uint64_t h = hash_str(k);

	return h ? h : 1;
}

static void kh_insert(struct keyhash *kh, uint64_t h, size_t idx);

static void
kh_grow(struct keyhash *kh, size_t want)
{
	struct keyhash old = *kh;
	size_t cap = 1024;

	while (cap < want * 2)
		cap <<= 1;
	kh->slot = xcalloc(cap, sizeof(uint64_t));
	kh->idx = xcalloc(cap, sizeof(size_t));
	kh->cap = cap;
	kh->n = 0;
	for (size_t i = 0; i < old.cap; i++)
		if (old.slot[i] != 0)
			kh_insert(kh, old.slot[i], old.idx[i]);
	free(old.slot);
	free(old.idx);
}

static void
kh_insert(struct keyhash *kh, uint64_t h, size_t idx)
{
	size_t i;

	if ((kh->n + 1) * 2 > kh->cap)
		kh_grow(kh, kh->n + 1);
	for (i = h & (kh->cap - 1); kh->slot[i] != 0; i = (i + 1) & (kh->cap - 1))
		if (kh->slot[i] == h)
			return;
	kh->slot[i] = h;
	kh->idx[i] = idx;
	kh->n++;
}

/* the index stored with hash h, or KH_NONE */
static size_t
kh_find(const struct keyhash *kh, uint64_t h)
{
	if (kh->cap == 0)
		return KH_NONE;
	for (size_t i = h & (kh->cap - 1); kh->slot[i] != 0; i = (i + 1) & (kh->cap - 1))
		if (kh->slot[i] == h)
			return kh->idx[i];
	return KH_NONE;
}

static int
kh_has(const struct keyhash *kh, uint64_t h)
{
	return kh_find(kh, h) != KH_NONE;
}

static void
kh_free(struct keyhash *kh)
{
	free(kh->slot);
	free(kh->idx);
	memset(kh, 0, sizeof(*kh));
}

/* afresh from the copy (after anything but a pure addition) */
static void
kh_rebuild(struct keyhash *kh, const struct entry_vec *v)
{
	kh_free(kh);
	kh_grow(kh, v->n);
	for (size_t i = 0; i < v->n; i++)
		kh_insert(kh, key_hash(v->v[i].key), i);
}

/* the entry of v with e's key, or NULL (kh indexes v) */
static const struct list_entry *
kh_entry(const struct keyhash *kh, const struct entry_vec *v, const char *key)
{
	size_t i = kh_find(kh, key_hash(key));

	if (i == KH_NONE || i >= v->n || strcmp(v->v[i].key, key) != 0)
		return NULL;
	return &v->v[i];
}

static int
same_entry(const struct list_entry *a, const struct list_entry *b)
{
	const char *ra = a->reason ? a->reason : "", *rb = b->reason ? b->reason : "";

	return strcmp(a->key, b->key) == 0 && a->added == b->added &&
	    a->expires == b->expires && a->origin == b->origin && strcmp(ra, rb) == 0;
}

static void
entry_dup(const struct list_entry *src, struct list_entry *dst)
{
	*dst = *src;
	dst->key = xstrdup(src->key);
	dst->reason = src->reason ? xstrdup(src->reason) : NULL;
}

struct watcher;
static int new_keys_only(struct watcher *w, enum list_kind k, char *const *keys, size_t n);

struct ban_req {
	struct ipaddr addr;
	unsigned long seconds;
	enum entry_origin origin;
	char why[48];
};

#define BANQ_MAX (1u << 20)	/* distinct addresses waiting for one round, at most */
#define SAVE_BACKOFF_MIN_MS 200
#define SAVE_BACKOFF_MAX_MS 30000
#define SAVE_WARN_EVERY_S 60

/* requests from any thread, coalesced by address until the watcher takes them */
struct banq {
	pthread_mutex_t mu;
	struct ban_req *v;
	size_t n, cap;
	uint32_t *slot;		/* address hash -> index in v; UINT32_MAX empty */
	size_t nslot;		/* a power of two, > 2 n */
	int wake_pending;	/* a byte is on the pipe */
	int stop;
	unsigned long overflow;	/* refused past BANQ_MAX (logged by the watcher) */
};

struct watcher {
	struct liststore *store;
	struct liststore *cache;	/* local copy of a shared store, or NULL */
	struct snapref *snaps;
	struct snapshot *first;		/* built by watcher_new(NULL snaps), not yet attached */
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
	struct banq q;
	/* bans enforced here but not yet in the store, one per key */
	struct entry_vec unsaved;
	struct keyhash unsaved_keys;
	long long save_retry_ms;
	int save_backoff_ms;
	time_t save_warned;
	/* the shared store's generation mark: known, and whether it vanished */
	char gen[64];
	int vanished;
	time_t vanished_logged;
	int cache_dirty;	/* changes since the local copy was written */
	long long expiry_build_ok_ms;	/* no rebuild for an expiry before (monotonic) */
	time_t cache_saved_at;
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
mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
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

	if (w->cache == NULL)
		return;
	if (liststore_save_all(w->cache, k, &w->lists[k], &err) < 0) {
		/* busy: the other worker is writing it; ours follows later */
		if (strstr(err, LISTSTORE_BUSY) == NULL)
			log_warn("cannot save the local copy of the %s list: %s", list_kind_name(k),
			    err);
		w->cache_dirty = 1;
		return;
	}
	w->cache_saved_at = time(NULL);
}

#define GEN_ERROR_EVERY_S 60

static void
log_vanished(struct watcher *w)
{
	log_error("the lists in the shared store are gone (its generation mark %s vanished: "
	    "Redis restarted without persistence?); enforcing this node's last lists (%zu kill, "
	    "%zu accept entries) until `portcullis lists reseed` or `portcullis lists "
	    "accept-empty`", w->gen, w->lists[LIST_KILL].n, w->lists[LIST_ACCEPT].n);
	w->vanished_logged = time(NULL);
}

/*
 * May a full load from the shared store replace our lists? 1 yes; 0 no: the
 * store lost the lists we knew (their generation mark is gone), so ours stay
 * in force. A store with no mark and a node that knows none (the first
 * start) marks it. Unreachable: 1 (the load says why).
 */
static int
generation_ok(struct watcher *w)
{
	char have[64], known[64];
	int found = 0, kfound = 0, set = 0;
	const char *err;

	if (w->cache == NULL || !liststore_has_meta(w->store))
		return 1;
	if (liststore_meta_get(w->store, LISTSTORE_GENERATION, have, sizeof(have), &found,
	    &err) < 0)
		return 1;
	if (w->gen[0] == '\0' && liststore_meta_get(w->cache, LISTSTORE_GENERATION, known,
	    sizeof(known), &kfound, &err) == 0 && kfound)
		snprintf(w->gen, sizeof(w->gen), "%s", known);
	if (!found && w->gen[0] != '\0') {
		if (!w->vanished) {
			w->vanished = 1;
			log_vanished(w);
		}
		return 0;
	}
	if (!found) {
		char id[64];

		liststore_new_generation(id, sizeof(id));
		if (liststore_meta_set(w->store, LISTSTORE_GENERATION, id, 1, &set, &err) < 0 ||
		    liststore_meta_get(w->store, LISTSTORE_GENERATION, have, sizeof(have), &found,
		    &err) < 0 || !found)
			return 1;
		if (set)
			log_info("lists in the shared store marked with generation %s", have);
	}
	if (w->vanished)
		log_info("the shared store's lists are marked again (generation %s): enforcing "
		    "them", have);
	else if (w->gen[0] != '\0' && strcmp(w->gen, have) != 0)
		log_info("the shared store's lists were replaced (generation %s -> %s): reloading",
		    w->gen, have);
	w->vanished = 0;
	if (strcmp(w->gen, have) != 0) {
		snprintf(w->gen, sizeof(w->gen), "%s", have);
		if (liststore_meta_set(w->cache, LISTSTORE_GENERATION, have, 0, &set, &err) < 0)
			log_warn("cannot note the generation in the local copy: %s", err);
	}
	return 1;
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
	if (k == LIST_KILL && w->unsaved.n > 0) {
		/* the store does not have our unsaved bans yet: keep enforcing them */
		struct entry_vec copy = { 0 };
		char **keys = xcalloc(w->unsaved.n, sizeof(char *));

		for (size_t i = 0; i < w->unsaved.n; i++) {
			struct list_entry e;

			entry_dup(&w->unsaved.v[i], &e);
			entry_vec_push(&copy, &e);
			keys[i] = w->unsaved.v[i].key;
		}
		(void)entry_vec_replace_keys(&w->lists[k], keys, w->unsaved.n, &copy);
		free(keys);
		entry_vec_clear(&copy);
	}
	return 0;
}

/* the store lost our lists: keep them, and put what it holds now on top */
static int
merge_reload(struct watcher *w, enum list_kind k, const char **error_r)
{
	struct entry_vec v = { 0 };
	char **keys;

	if (liststore_load(w->store, k, &v, error_r) < 0) {
		entry_vec_clear(&v);
		return -1;
	}
	keys = xcalloc(v.n + 1, sizeof(char *));
	for (size_t i = 0; i < v.n; i++)
		keys[i] = v.v[i].key;
	(void)entry_vec_replace_keys(&w->lists[k], keys, v.n, &v);
	free(keys);
	entry_vec_clear(&v);
	w->full = 1;
	w->keys_stale[k] = 1;
	w->cache_dirty = 1;
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
	pthread_mutex_init(&w->q.mu, NULL);
	if (!generation_ok(w)) {
		ok = 0;
		err = "the lists in the shared store are gone (generation mark missing)";
	}
	for (int k = 0; k < LIST_KINDS && ok; k++)
		ok = reload(w, (enum list_kind)k, &err) == 0;
	if (!ok && cache == NULL) {
		*error_r = err;
		for (int k = 0; k < LIST_KINDS; k++)
			entry_vec_clear(&w->lists[k]);
		pthread_mutex_destroy(&w->q.mu);
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
		if (w->vanished)
			log_vanished(w);
	}
	for (int k = 0; k < LIST_KINDS; k++) {
		w->keys_stale[k] = 1;
		(void)new_keys_only(w, (enum list_kind)k, NULL, 0);	/* builds the key index */
	}
	s = build(w);
	log_info("lists loaded: %zu kill, %zu accept entries in force",
	    snapshot_count(s, LIST_KILL), snapshot_count(s, LIST_ACCEPT));
	if (snaps != NULL)
		snapref_init(snaps, s);
	else
		w->first = s;
	return w;
}

void
watcher_attach(struct watcher *w, struct snapref *snaps)
{
	w->snaps = snaps;
	snapref_publish(snaps, w->first);	/* waits for readers of the one it replaces */
	w->first = NULL;
}

/* into our own copy at once (an addition on top), and into the unsaved batch */
static void
do_ban(struct watcher *w, const struct ban_req *r)
{
	struct list_entry e, keep;
	struct entry_vec upd = { 0 };
	char a[CIDR_TEXT_MAX];
	const char *err;
	size_t u;

	memset(&e, 0, sizeof(e));
	cidr_addr_format(&r->addr, a);
	if (listentry_parse_key(a, &e, &err) < 0) {
		log_error("auto-ban of %s: %s", a, err);
		return;
	}
	e.added = (long long)time(NULL);
	e.expires = e.added + (long long)r->seconds;
	e.origin = r->origin;
	e.reason = xasprintf("%s", r->why);
	log_info("%s: %s on the kill list for %lus (%s)", listentry_origin_name(r->origin), a,
	    r->seconds, r->why);
	/* the batch for the store: one entry per key, the latest wins */
	entry_dup(&e, &keep);
	u = kh_find(&w->unsaved_keys, key_hash(keep.key));
	if (u != KH_NONE && u < w->unsaved.n && strcmp(w->unsaved.v[u].key, keep.key) == 0) {
		listentry_clear(&w->unsaved.v[u]);
		w->unsaved.v[u] = keep;
	} else {
		kh_insert(&w->unsaved_keys, key_hash(keep.key), w->unsaved.n);
		entry_vec_push(&w->unsaved, &keep);
	}
	entry_vec_push(&upd, &e);	/* moves e */
	w->cache_dirty = 1;
	{
		char *key = xstrdup(upd.v[0].key);

		if (new_keys_only(w, LIST_KILL, &key, 1)) {
			kh_insert(&w->keys[LIST_KILL], key_hash(key), w->lists[LIST_KILL].n);
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

/* write the unsaved bans in one batch; on failure keep them and back off */
static void
save_bans(struct watcher *w)
{
	long long now_ms;
	const char *err;

	if (w->unsaved.n == 0)
		return;
	now_ms = mono_ms();
	if (now_ms < w->save_retry_ms)
		return;
	if (liststore_add_batch(w->store, LIST_KILL, w->unsaved.v, w->unsaved.n, &err) < 0) {
		time_t now = time(NULL);

		w->save_backoff_ms = w->save_backoff_ms == 0 ? SAVE_BACKOFF_MIN_MS :
		    w->save_backoff_ms * 2 > SAVE_BACKOFF_MAX_MS ? SAVE_BACKOFF_MAX_MS :
		    w->save_backoff_ms * 2;
		w->save_retry_ms = now_ms + w->save_backoff_ms;
		if (w->save_warned == 0 || now - w->save_warned >= SAVE_WARN_EVERY_S) {
			log_error("%zu ban(s) enforced on this node but not saved yet (retrying "
			    "every %d s at most): %s", w->unsaved.n, SAVE_BACKOFF_MAX_MS / 1000, err);
			w->save_warned = now;
		}
		return;
	}
	if (w->save_warned != 0)
		log_info("%zu waiting ban(s) saved", w->unsaved.n);
	w->save_warned = 0;
	w->save_backoff_ms = 0;
	w->save_retry_ms = 0;
	entry_vec_clear(&w->unsaved);
	kh_free(&w->unsaved_keys);
}

/* everything queued since the last round: enforce it, then save it */
static int
take_bans(struct watcher *w)
{
	struct ban_req *v;
	size_t n;
	unsigned long overflow;
	char drain[64];

	while (read(w->pipefd[0], drain, sizeof(drain)) > 0)
		;
	pthread_mutex_lock(&w->q.mu);
	v = w->q.v;
	n = w->q.n;
	overflow = w->q.overflow;
	w->q.v = NULL;
	w->q.n = w->q.cap = 0;
	w->q.overflow = 0;
	if (w->q.slot != NULL)
		memset(w->q.slot, 0xff, w->q.nslot * sizeof(uint32_t));
	w->q.wake_pending = 0;
	pthread_mutex_unlock(&w->q.mu);
	if (overflow > 0)
		log_error("%lu ban request(s) beyond %u waiting addresses refused", overflow,
		    BANQ_MAX);
	for (size_t i = 0; i < n; i++)
		do_ban(w, &v[i]);
	free(v);
	save_bans(w);
	return n > 0;
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
	int changed = 0, gen = -1;

	/* one key may be announced twice (keyspace event and PUBLISH): fetch once */
	if (ch->n > 1)
		qsort(ch->keys, ch->n, sizeof(ch->keys[0]), cmp_change);
	for (int k = 0; k < LIST_KINDS; k++) {
		struct entry_vec upd = { 0 };
		char **keys = xcalloc(ch->n + 1, sizeof(char *));
		size_t nkeys = 0;
		const char *err;

		if (ch->reload[k] || w->reload_due[k]) {
			if (gen < 0)
				gen = generation_ok(w);
			if (!gen) {
				/* ours stay in force; what the store has now goes on top */
				if (merge_reload(w, (enum list_kind)k, &err) < 0)
					log_warn("%s list: %s", list_kind_name((enum list_kind)k), err);
				else
					changed = 1;
				w->reload_due[k] = 0;
			} else if (reload(w, (enum list_kind)k, &err) < 0) {
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
		if (ch->got[k].n > 0 && nkeys == 0) {
			/* the store handed the entries over (a journal's tail) */
			upd = ch->got[k];
			memset(&ch->got[k], 0, sizeof(ch->got[k]));
			free(keys);
			keys = xcalloc(upd.n + 1, sizeof(char *));
			for (size_t i = 0; i < upd.n; i++)
				keys[nkeys++] = upd.v[i].key;
		}
		if (nkeys > 0 && upd.n == nkeys) {
			/* what we hold already (our own bans coming back) changes nothing */
			size_t j = 0;

			if (w->keys_stale[k])
				(void)new_keys_only(w, (enum list_kind)k, NULL, 0);
			for (size_t i = 0; i < upd.n; i++) {
				const struct list_entry *have = kh_entry(&w->keys[k], &w->lists[k],
				    upd.v[i].key);

				if (have != NULL && same_entry(have, &upd.v[i])) {
					listentry_clear(&upd.v[i]);
					continue;
				}
				upd.v[j] = upd.v[i];
				keys[j] = upd.v[j].key;
				j++;
			}
			upd.n = nkeys = j;
		}
		if (nkeys > 0 && upd.n == nkeys && new_keys_only(w, (enum list_kind)k, keys, nkeys)) {
			/* pure addition: append, no pass over the whole copy */
			for (size_t i = 0; i < upd.n; i++) {
				kh_insert(&w->keys[k], key_hash(upd.v[i].key), w->lists[k].n);
				entry_vec_push(&w->lists[k], &upd.v[i]);
			}
			upd.n = 0;
			changed = 1;
			w->cache_dirty = 1;
		} else if (nkeys > 0) {
			if (entry_vec_replace_keys(&w->lists[k], keys, nkeys, &upd) > 0)
				w->full = 1;	/* a key changed or went */
			w->keys_stale[k] = 1;
			changed = 1;
			w->cache_dirty = 1;
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
		int changed = 0;

		/* woken by a ban, a store change, or the interval */
		(void)poll(pfd, pfd[1].fd >= 0 ? 2 : 1, w->rl ? WATCH_INTERVAL_MS / 2 :
		    WATCH_INTERVAL_MS);
		if (w->tick != NULL)
			w->tick();
		rate_sync(w);
		{
			int stop;

			pthread_mutex_lock(&w->q.mu);
			stop = w->q.stop;
			pthread_mutex_unlock(&w->q.mu);
			if (stop)
				return NULL;
		}
		/* every round, woken or not: a lost wake-up byte delays a ban by
		 * one interval at most; also retries a batch the store refused */
		changed |= take_bans(w);
		if (liststore_changes(w->store, &ch) < 0)
			log_warn("list store: cannot read changes");
		if (w->vanished && time(NULL) - w->vanished_logged >= GEN_ERROR_EVERY_S) {
			if (generation_ok(w))
				ch.reload[LIST_KILL] = ch.reload[LIST_ACCEPT] = 1;
			else
				log_vanished(w);
		}
		if (ch.reload[LIST_KILL] || ch.reload[LIST_ACCEPT] || ch.n > 0 ||
		    ch.got[LIST_KILL].n > 0 || ch.got[LIST_ACCEPT].n > 0 ||
		    w->reload_due[LIST_KILL] || w->reload_due[LIST_ACCEPT])
			changed |= apply_changes(w, &ch);
		list_changes_clear(&ch);
		{
			long long now = (long long)time(NULL);
			int expired = w->next_expiry != 0 && now >= w->next_expiry;

			/*
			 * An expired entry stops matching at once (lookups check
			 * expiry); the rebuild only lets a wider entry under it
			 * take over. Bans expire one by one, each at its own
			 * second: so that they cost no full build each, expiry
			 * rebuilds take at most 10 % of the time (a 200,000-entry
			 * list: one every half second or so; a small one at once).
			 */
			if (expired && mono_ms() < w->expiry_build_ok_ms)
				expired = 0;
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
					/* the local copy (what `lists reseed` pushes back)
					 * follows the changes made on top: when the list has
					 * gone quiet, or at a busy full build every
					 * CACHE_SAVE_EVERY_S at most (an import of a million
					 * entries must not rewrite it at each build) */
					if (w->cache_dirty && (fold || time(NULL) -
					    w->cache_saved_at >= CACHE_SAVE_EVERY_S)) {
						w->cache_dirty = 0;	/* set again if busy */
						for (int k = 0; k < LIST_KINDS; k++)
							save_cache(w, (enum list_kind)k);
					}
#ifdef __GLIBC__
					/* a full build frees the previous one (hundreds of MB
					 * for a million entries): pages back to the system */
					malloc_trim(0);
#endif
				}
				clock_gettime(CLOCK_MONOTONIC, &t1);
				if (s->over[LIST_KILL] == NULL && s->over[LIST_ACCEPT] == NULL) {
					long long t1ms = (long long)t1.tv_sec * 1000 + t1.tv_nsec / 1000000;
					long long t0ms = (long long)t0.tv_sec * 1000 + t0.tv_nsec / 1000000;

					w->expiry_build_ok_ms = t1ms + 9 * (t1ms - t0ms);
				}
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

static uint32_t
addr_hash(const struct ipaddr *a)
{
	/* keyed: the queue holds addresses peers chose */
	uint64_t w[3] = { a->family, a->family == 4 ? a->v4 : a->hi, a->family == 4 ? 0 : a->lo };

	return (uint32_t)hash_mem(w, sizeof(w));
}

static int
addr_equal(const struct ipaddr *a, const struct ipaddr *b)
{
	if (a->family != b->family)
		return 0;
	return a->family == 4 ? a->v4 == b->v4 : a->hi == b->hi && a->lo == b->lo;
}

/* q->mu held: the index of addr's request, or where it goes (UINT32_MAX slot) */
static size_t
banq_slot(const struct banq *q, const struct ipaddr *addr)
{
	size_t i = addr_hash(addr) & (q->nslot - 1);

	while (q->slot[i] != UINT32_MAX && !addr_equal(&q->v[q->slot[i]].addr, addr))
		i = (i + 1) & (q->nslot - 1);
	return i;
}

static void
banq_grow(struct banq *q)
{
	q->cap = q->cap ? q->cap * 2 : 64;
	q->v = xreallocarray(q->v, q->cap, sizeof(*q->v));
	if (q->nslot < q->cap * 2) {
		free(q->slot);
		q->nslot = q->cap * 2;
		q->slot = xmalloc(q->nslot * sizeof(uint32_t));
		memset(q->slot, 0xff, q->nslot * sizeof(uint32_t));
		for (size_t i = 0; i < q->n; i++)
			q->slot[banq_slot(q, &q->v[i].addr)] = (uint32_t)i;
	}
}

void
watcher_ban_as(void *arg, const struct ipaddr *addr, unsigned long seconds,
    enum entry_origin origin, const char *why)
{
	struct watcher *w = arg;
	struct banq *q = &w->q;
	int wake = 0;

	pthread_mutex_lock(&q->mu);
	if (q->n == q->cap && q->n < BANQ_MAX)
		banq_grow(q);
	if (q->nslot == 0) {
		pthread_mutex_unlock(&q->mu);
		return;	/* unreachable: banq_grow made the table */
	}
	{
		size_t i = banq_slot(q, addr);

		if (q->slot[i] != UINT32_MAX) {
			/* the same address again this round: one ban, the longest */
			struct ban_req *r = &q->v[q->slot[i]];

			if (seconds > r->seconds)
				r->seconds = seconds;
		} else if (q->n >= BANQ_MAX) {
			q->overflow++;
		} else {
			struct ban_req *r = &q->v[q->n];

			memset(r, 0, sizeof(*r));
			r->addr = *addr;
			r->seconds = seconds;
			r->origin = origin;
			snprintf(r->why, sizeof(r->why), "%s", why ? why : "auto-ban");
			q->slot[i] = (uint32_t)q->n++;
		}
	}
	if (!q->wake_pending) {
		q->wake_pending = 1;
		wake = 1;
	}
	pthread_mutex_unlock(&q->mu);
	/* one byte per round: the pipe never fills, a failed write means a
	 * wake-up is there already */
	if (wake && write(w->pipefd[1], "b", 1) < 0 && errno != EAGAIN) {
		pthread_mutex_lock(&q->mu);
		q->wake_pending = 0;	/* taken at the watcher's next round anyway */
		pthread_mutex_unlock(&q->mu);
	}
}

void
watcher_ban(void *arg, const struct ipaddr *addr, unsigned long seconds, const char *why)
{
	/* the auth penalty bans through this door with why "auth-ban" */
	watcher_ban_as(arg, addr, seconds, why != NULL && strcmp(why, "auth-ban") == 0 ?
	    ORIGIN_AUTHBAN : ORIGIN_AUTOBAN, why);
}

void
watcher_stop_and_free(struct watcher **wp)
{
	struct watcher *w = *wp;

	if (w == NULL)
		return;
	if (w->running) {
		pthread_mutex_lock(&w->q.mu);
		w->q.stop = 1;
		pthread_mutex_unlock(&w->q.mu);
		if (write(w->pipefd[1], "s", 1) < 0 && errno != EAGAIN)
			log_warn("cannot stop the list watcher: %s", strerror(errno));
		pthread_join(w->thread, NULL);
	}
	/* what the store never took is lost with the process: say so */
	if (w->pipefd[0] >= 0)
		(void)take_bans(w);
	if (w->unsaved.n > 0) {
		w->save_retry_ms = 0;
		save_bans(w);
		if (w->unsaved.n > 0)
			log_error("%zu ban(s) not saved at exit", w->unsaved.n);
	}
	if (w->pipefd[0] >= 0)
		close(w->pipefd[0]);
	if (w->pipefd[1] >= 0)
		close(w->pipefd[1]);
	for (int k = 0; k < LIST_KINDS; k++) {
		entry_vec_clear(&w->lists[k]);
		kh_free(&w->keys[k]);
	}
	snapshot_free(&w->first);
	entry_vec_clear(&w->unsaved);
	kh_free(&w->unsaved_keys);
	free(w->q.v);
	free(w->q.slot);
	pthread_mutex_destroy(&w->q.mu);
	free(w);
	*wp = NULL;
}
