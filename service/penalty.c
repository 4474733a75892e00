/*
 * penalty - failed-login delays and bans per client address (IPv6 per /64),
 * one table per node shared by every door process.
 *
 *   penalty_conf_parse()    the auth_failure_* keys
 *   penalty_table_open()    master: a fresh $state_dir/penalty, inherited by workers
 *   penalty_new()           count in the node table (or a file, or a private one)
 *   penalty_failure()       a failed login: its reply's delay, maybe a ban
 *   penalty_success()       a success forgets the address
 *   penalty_delay_for(), penalty_window_count(), penalty_key()  the pure math
 *
 * The table: PENALTY_BUCKETS buckets of PENALTY_WAYS entries in one mapping
 * (MAP_SHARED: a file, or anonymous for a private table). An address hashes
 * to one bucket; a lookup scans the bucket's entries, a new address takes a
 * free or forgotten entry, else the stalest one. Memory stays bounded
 * whatever the churn; an address pushed out merely starts again from its
 * first delay.
 * Each bucket has a robust, process-shared mutex, held for one scan of 16
 * entries (well under a microsecond; contention needs two processes on one
 * bucket at once). A process that dies holding it (SIGKILL, a crash) hands
 * it over: the next locker gets EOWNERDEAD and marks it consistent; the
 * entry being written may be off by one failure, never unusable.
 * Times are CLOCK_MONOTONIC milliseconds from the caller: one clock for every
 * process of the machine. The file is made fresh at each start (a reboot
 * restarts the clock).
 * The ban window is a sliding estimate over two fixed windows (this one and
 * the previous one, weighted by their overlap), so a burst that straddles a
 * window boundary is still counted. Never blocks beyond a bucket lock.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/conf.h"
#include "common/log.h"
#include "common/xmalloc.h"
#include "service/penalty.h"
#include "storage-adapter/ratelimit.h"

#define PENALTY_BUCKETS 256
#define PENALTY_WAYS 16				/* 4,096 addresses in all */
#define PENALTY_FORGET_MS (3600LL * 1000)	/* an hour without failure: forgotten */
#define PENALTY_MAGIC "PCPENAL1"

struct pentry {
	struct ipaddr key;
	int used;
	unsigned fails;			/* consecutive, for the delay */
	long long last_ms;		/* last failure */
	long long win_start_ms;		/* this ban window */
	unsigned win_cur, win_prev;
	struct ipaddr banned;		/* the last address banned from this key */
	long long banned_until_ms;
};

struct pbucket {
	pthread_mutex_t lock;		/* robust, process-shared */
	struct pentry e[PENALTY_WAYS];
};

struct ptable {
	char magic[8];
	uint32_t buckets, ways;		/* the layout, checked by each mapper */
	uint32_t entry_size, bucket_size;
	struct pbucket b[PENALTY_BUCKETS];
};

struct penalty {
	struct penalty_conf c;
	struct ptable *t;
	int own_map;			/* t is ours to unmap (not the node table) */
	int shared;
};

static struct ptable *node_table;	/* penalty_table_open(); forked workers inherit it */

int
penalty_conf_parse(const struct conf *c, struct penalty_conf *r, const char **error_r)
{
	static char err[300];
	const char *ban = conf_get(c, "auth_failure_ban");
	struct penalty_conf pc;

	memset(&pc, 0, sizeof(pc));
	pc.delay_ms = (unsigned)conf_get_int(c, "auth_failure_delay") * 1000u;
	pc.max_delay_ms = (unsigned)conf_get_int(c, "auth_failure_delay_max") * 1000u;
	if (pc.max_delay_ms < pc.delay_ms)
		pc.max_delay_ms = pc.delay_ms;
	if (strcmp(ban, "0") != 0 && ban[0] != '\0' &&
	    ratelimit_parse(ban, &pc.ban_count, &pc.ban_window) < 0) {
		snprintf(err, sizeof(err), "%s: auth_failure_ban: \"%.40s\" is not N/TIME "
		    "(e.g. 20/10m) or 0", conf_where(c, "auth_failure_ban"), ban);
		*error_r = err;
		return -1;
	}
	pc.ban_time = (unsigned long)conf_get_int(c, "auth_failure_ban_time");
	if (pc.ban_time == 0)
		pc.ban_count = 0;
	*r = pc;
	return 0;
}

unsigned
penalty_delay_for(const struct penalty_conf *c, unsigned n)
{
	unsigned long long d = c->delay_ms;

	if (d == 0 || n == 0)
		return 0;
	for (unsigned i = 1; i < n && d < c->max_delay_ms; i++)
		d *= 2;
	return d > c->max_delay_ms ? c->max_delay_ms : (unsigned)d;
}

unsigned
penalty_window_count(unsigned prev, unsigned cur, unsigned elapsed_in_cur, unsigned window)
{
	unsigned long long overlap;

	if (window == 0 || elapsed_in_cur >= window)
		return cur;
	overlap = (unsigned long long)prev * (window - elapsed_in_cur);
	return cur + (unsigned)(overlap / window);
}

void
penalty_key(const struct ipaddr *a, struct ipaddr *key_r)
{
	memset(key_r, 0, sizeof(*key_r));
	key_r->family = a->family;
	if (a->family == 4)
		key_r->v4 = a->v4;
	else
		key_r->hi = a->hi;
}

/* a mapping's header and locks, all entries empty */
static int
table_init(struct ptable *t)
{
	pthread_mutexattr_t ma;

	if (pthread_mutexattr_init(&ma) != 0)
		return -1;
	if (pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED) != 0 ||
	    pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST) != 0) {
		pthread_mutexattr_destroy(&ma);
		return -1;
	}
	for (unsigned i = 0; i < PENALTY_BUCKETS; i++)
		if (pthread_mutex_init(&t->b[i].lock, &ma) != 0) {
			pthread_mutexattr_destroy(&ma);
			return -1;
		}
	pthread_mutexattr_destroy(&ma);
	t->buckets = PENALTY_BUCKETS;
	t->ways = PENALTY_WAYS;
	t->entry_size = sizeof(struct pentry);
	t->bucket_size = sizeof(struct pbucket);
	memcpy(t->magic, PENALTY_MAGIC, 8);	/* last: a mapper checks it */
	return 0;
}

static int
table_layout_ok(const struct ptable *t)
{
	return memcmp(t->magic, PENALTY_MAGIC, 8) == 0 && t->buckets == PENALTY_BUCKETS &&
	    t->ways == PENALTY_WAYS && t->entry_size == sizeof(struct pentry) &&
	    t->bucket_size == sizeof(struct pbucket);
}

static char *
sys_error(const char *what, const char *path)
{
	static char err[600];

	snprintf(err, sizeof(err), "%s %.400s: %s", what, path, strerror(errno));
	return err;
}

/* a new initialised table file at path: made under a temporary name, then
 * renamed over path (replace) or linked to it (when missing: a concurrent
 * first user's stays); NULL with *error_r, or the mapping */
static struct ptable *
table_create(const char *path, int replace, const char **error_r)
{
	char *tmp = xasprintf("%s.XXXXXX", path);
	int fd = mkstemp(tmp);
	struct ptable *t = MAP_FAILED;

	if (fd < 0) {
		*error_r = sys_error("cannot create", tmp);
		free(tmp);
		return NULL;
	}
	if (ftruncate(fd, sizeof(struct ptable)) < 0) {
		*error_r = sys_error("cannot size", tmp);
		goto fail;
	}
	t = mmap(NULL, sizeof(struct ptable), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (t == MAP_FAILED) {
		*error_r = sys_error("cannot map", tmp);
		goto fail;
	}
	if (table_init(t) < 0) {
		*error_r = "cannot make process-shared robust locks";
		goto fail;
	}
	if (replace ? rename(tmp, path) < 0 : link(tmp, path) < 0) {
		*error_r = errno == EEXIST ? "" : sys_error("cannot create", path);
		goto fail;
	}
	if (!replace)
		unlink(tmp);
	close(fd);
	free(tmp);
	return t;
fail:
	if (t != MAP_FAILED)
		munmap(t, sizeof(*t));
	close(fd);
	unlink(tmp);
	free(tmp);
	return NULL;
}

/* map the table file at path, made when missing; NULL with *error_r */
static struct ptable *
table_map(const char *path, const char **error_r)
{
	static char err[600];

	for (int tries = 0; tries < 3; tries++) {
		int fd = open(path, O_RDWR | O_CLOEXEC);
		struct stat st;
		struct ptable *t;

		if (fd < 0 && errno == ENOENT) {
			if ((t = table_create(path, 0, error_r)) != NULL)
				return t;
			if (**error_r != '\0')
				return NULL;
			continue;	/* another process made it first: map theirs */
		}
		if (fd < 0) {
			*error_r = sys_error("cannot open", path);
			return NULL;
		}
		if (fstat(fd, &st) < 0 || (size_t)st.st_size != sizeof(struct ptable)) {
			snprintf(err, sizeof(err), "%.400s: not a penalty table of this version", path);
			close(fd);
			*error_r = err;
			return NULL;
		}
		t = mmap(NULL, sizeof(struct ptable), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		close(fd);
		if (t == MAP_FAILED) {
			*error_r = sys_error("cannot map", path);
			return NULL;
		}
		if (!table_layout_ok(t)) {
			munmap(t, sizeof(*t));
			snprintf(err, sizeof(err), "%.400s: not a penalty table of this version", path);
			*error_r = err;
			return NULL;
		}
		return t;
	}
	*error_r = sys_error("cannot create", path);
	return NULL;
}

int
penalty_table_open(const char *path, const char **error_r)
{
	struct ptable *t = table_create(path, 1, error_r);

	if (t == NULL)
		return -1;
	penalty_table_close();
	node_table = t;
	return 0;
}

void
penalty_table_close(void)
{
	if (node_table != NULL)
		munmap(node_table, sizeof(*node_table));
	node_table = NULL;
}

struct penalty *
penalty_new(const struct penalty_conf *c, const char *path)
{
	struct penalty *p = xcalloc(1, sizeof(*p));
	const char *err = "";

	p->c = *c;
	if (path == NULL && node_table != NULL) {
		p->t = node_table;
		p->shared = 1;
		return p;
	}
	if (path != NULL) {
		if ((p->t = table_map(path, &err)) != NULL) {
			p->own_map = 1;
			p->shared = 1;
			return p;
		}
		log_warn("login penalties counted per process: %s", err);
	}
	/* a table of its own: the same layout, anonymous */
	p->t = mmap(NULL, sizeof(struct ptable), PROT_READ | PROT_WRITE,
	    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (p->t == MAP_FAILED || table_init(p->t) < 0)
		fatal("penalty: cannot make a table: %s", strerror(errno));
	p->own_map = 1;
	return p;
}

void
penalty_free(struct penalty **pp)
{
	if (*pp == NULL)
		return;
	if ((*pp)->own_map)
		munmap((*pp)->t, sizeof(struct ptable));
	free(*pp);
	*pp = NULL;
}

int
penalty_is_shared(const struct penalty *p)
{
	return p->shared;
}

const struct penalty_conf *
penalty_conf(const struct penalty *p)
{
	return &p->c;
}

static struct pbucket *
bucket_of(struct penalty *p, const struct ipaddr *k)
{
	uint64_t h = k->family == 4 ? k->v4 : k->hi;

	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	return &p->t->b[h % PENALTY_BUCKETS];
}

/* 0 locked, -1 not (a broken lock: the caller goes without the table) */
static int
bucket_lock(struct pbucket *b)
{
	int rc = pthread_mutex_lock(&b->lock);

	if (rc == EOWNERDEAD) {
		/* its holder died mid-update: at worst one entry is off by one failure */
		log_warn("penalty: a process died holding a table lock; taken over");
		pthread_mutex_consistent(&b->lock);
		return 0;
	}
	return rc == 0 ? 0 : -1;
}

static int
same_key(const struct ipaddr *a, const struct ipaddr *b)
{
	return a->family == b->family && a->v4 == b->v4 && a->hi == b->hi && a->lo == b->lo;
}

/* k's entry in its (locked) bucket; made when make */
static struct pentry *
lookup(struct pbucket *b, const struct ipaddr *k, long long now_ms, int make)
{
	struct pentry *take = NULL;
	int take_free = 0;

	for (unsigned i = 0; i < PENALTY_WAYS; i++) {
		struct pentry *e = &b->e[i];

		if (e->used && same_key(&e->key, k))
			return e;
		if (!make || take_free)
			continue;
		if (!e->used || (now_ms - e->last_ms > PENALTY_FORGET_MS &&
		    now_ms >= e->banned_until_ms)) {
			take = e;	/* free or forgotten */
			take_free = 1;
		} else if (take == NULL || e->last_ms < take->last_ms) {
			take = e;	/* the stalest so far */
		}
	}
	if (!make)
		return NULL;
	memset(take, 0, sizeof(*take));
	take->key = *k;
	take->win_start_ms = now_ms;
	take->used = 1;
	return take;
}

/* a failure counted in e (locked): the delay; *ban_r */
static unsigned
count_failure(const struct penalty_conf *c, struct pentry *e, const struct ipaddr *a,
    long long now_ms, int *ban_r)
{
	long long win_ms = (long long)c->ban_window * 1000;

	if (now_ms - e->last_ms > PENALTY_FORGET_MS)
		e->fails = 0;
	e->fails++;
	e->last_ms = now_ms;
	if (c->ban_count > 0 && win_ms > 0) {
		unsigned n;

		if (now_ms - e->win_start_ms >= 2 * win_ms) {
			e->win_prev = 0;
			e->win_cur = 0;
			e->win_start_ms = now_ms;
		} else if (now_ms - e->win_start_ms >= win_ms) {
			e->win_prev = e->win_cur;
			e->win_cur = 0;
			e->win_start_ms += win_ms;
		}
		e->win_cur++;
		n = penalty_window_count(e->win_prev, e->win_cur,
		    (unsigned)((now_ms - e->win_start_ms) / 1000), c->ban_window);
		if (n >= c->ban_count &&
		    (now_ms >= e->banned_until_ms || !same_key(&e->banned, a))) {
			*ban_r = 1;
			e->banned = *a;
			e->banned_until_ms = now_ms + (long long)c->ban_time * 1000;
		}
	}
	return penalty_delay_for(c, e->fails);
}

unsigned
penalty_failure(struct penalty *p, const struct ipaddr *a, long long now_ms, int *ban_r)
{
	struct ipaddr k;
	struct pbucket *b;
	unsigned delay;

	*ban_r = 0;
	penalty_key(a, &k);
	b = bucket_of(p, &k);
	if (bucket_lock(b) < 0)
		return penalty_delay_for(&p->c, 1);	/* never reached with a sane table */
	delay = count_failure(&p->c, lookup(b, &k, now_ms, 1), a, now_ms, ban_r);
	pthread_mutex_unlock(&b->lock);
	return delay;
}

void
penalty_success(struct penalty *p, const struct ipaddr *a)
{
	struct ipaddr k;
	struct pbucket *b;
	struct pentry *e;

	penalty_key(a, &k);
	b = bucket_of(p, &k);
	if (bucket_lock(b) < 0)
		return;
	e = lookup(b, &k, 0, 0);
	if (e != NULL)
		e->fails = 0;	/* the delay goes; the ban count stays (a guesser's one hit) */
	pthread_mutex_unlock(&b->lock);
}

void
penalty_lock_for_test(struct penalty *p, const struct ipaddr *a)
{
	struct ipaddr k;

	penalty_key(a, &k);
	(void)bucket_lock(bucket_of(p, &k));
}
