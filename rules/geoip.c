/*
 * geoip - the country of a client address, from a MaxMind DB file.
 *
 *   geoip_open()               open and check the file; the field path split once
 *   geoip_lookup()             address -> "XX" or nothing: lock-free, allocation-free
 *   geoip_reload_if_changed()  reopen a replaced file, publish it, close the old one
 *   geoip_watch_start()        a thread doing that twice a second
 *
 * Publication follows rules/snapshot.c: a reader counts itself in
 * readers[epoch & 1] before loading the pointer; the reloading thread swaps
 * the pointer, then twice flips the epoch and waits for the previous
 * parity's count to drain before it closes the old database. A lookup holds
 * the database for a microsecond or so, so that wait is short. The counts
 * are striped over cache lines (a thread keeps to one stripe), so threads
 * looking up at once do not fight over one line; the writer sums them.
 *
 * A reload waits until the file has stayed the same (inode, size, mtime) for
 * one poll, so a file still being written is not read half-way; a file that
 * does not open is logged once and the old database stays in force. Replace
 * the file by rename (scripts/geoip-mmdb.pl does): libmaxminddb maps the file
 * it reads, so a file rewritten in place changes under its readers.
 *
 * Never allocates, locks or blocks in geoip_lookup(); only the reloading
 * thread opens files.
 */
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>

#include <maxminddb.h>

#include "common/log.h"
#include "common/xmalloc.h"
#include "rules/geoip.h"

struct fileid {
	dev_t dev;
	ino_t ino;
	off_t size;
	struct timespec mtime;
	int valid;
};

struct geoip_db {
	MMDB_s mmdb;
	struct fileid id;
};

#define GEOIP_STRIPES 16

struct stripe {
	atomic_long readers[2];
	char pad[64 - 2 * sizeof(atomic_long)];
};

struct geoip {
	struct stripe stripes[GEOIP_STRIPES];	/* first: 64-byte aligned */
	char *path;
	char *field;			/* as configured, for messages */
	char *keys_buf;			/* the split path, NUL-separated */
	const char *keys[GEOIP_MAX_FIELD_KEYS + 1];	/* NULL-terminated */
	_Atomic(struct geoip_db *) cur;
	atomic_uint epoch;
	/* the reloading thread's own */
	struct fileid pending;		/* seen changed at the last poll */
	struct fileid failed;		/* did not open: not tried again */
	unsigned missing;		/* polls the path has been missing */
	char errbuf[512];
	pthread_t thread;
	int running;
	atomic_int stop;
	unsigned interval_ms;
};

static atomic_uint next_stripe;
static _Thread_local int my_stripe = -1;

static void
fileid_of(const struct stat *st, struct fileid *id)
{
	id->dev = st->st_dev;
	id->ino = st->st_ino;
	id->size = st->st_size;
	id->mtime = st->st_mtim;
	id->valid = 1;
}

static int
fileid_eq(const struct fileid *a, const struct fileid *b)
{
	return a->valid && b->valid && a->dev == b->dev && a->ino == b->ino &&
	    a->size == b->size && a->mtime.tv_sec == b->mtime.tv_sec &&
	    a->mtime.tv_nsec == b->mtime.tv_nsec;
}

/* opens g->path; NULL with g->errbuf set */
static struct geoip_db *
db_open(struct geoip *g)
{
	struct geoip_db *db = xcalloc(1, sizeof(*db));
	struct stat st;
	int rc;

	errno = 0;
	rc = MMDB_open(g->path, MMDB_MODE_MMAP, &db->mmdb);
	if (rc != MMDB_SUCCESS) {
		if (rc == MMDB_FILE_OPEN_ERROR || rc == MMDB_IO_ERROR)
			snprintf(g->errbuf, sizeof(g->errbuf), "%s: %s", g->path,
			    errno != 0 ? strerror(errno) : MMDB_strerror(rc));
		else
			snprintf(g->errbuf, sizeof(g->errbuf), "%s: not a MaxMind DB file: %s",
			    g->path, MMDB_strerror(rc));
		free(db);
		return NULL;
	}
	/* the file we mapped: libmaxminddb keeps no descriptor, so stat the
	 * path; a replacement in between is seen (and loaded) at the next poll */
	if (stat(g->path, &st) == 0)
		fileid_of(&st, &db->id);
	return db;
}

static void
db_close(struct geoip_db **dbp)
{
	if (*dbp == NULL)
		return;
	MMDB_close(&(*dbp)->mmdb);
	free(*dbp);
	*dbp = NULL;
}

int
geoip_open(const char *path, const char *field, struct geoip **g_r, const char **error_r)
{
	static char errbuf[600];
	struct geoip *g = aligned_alloc(64, (sizeof(*g) + 63) / 64 * 64);
	struct geoip_db *db;
	size_t nkeys = 0;
	char *p;

	if (g == NULL)
		fatal("out of memory");
	memset(g, 0, sizeof(*g));
	g->path = xstrdup(path);
	g->field = xstrdup(field);
	g->keys_buf = xstrdup(field);
	for (p = g->keys_buf;; p++) {
		char *dot = strchr(p, '.');

		if (dot != NULL)
			*dot = '\0';
		if (*p == '\0' || nkeys == GEOIP_MAX_FIELD_KEYS) {
			snprintf(errbuf, sizeof(errbuf), "geoip_country_field: \"%.100s\" is not "
			    "a path of at most %d map keys such as country.iso_code", field,
			    GEOIP_MAX_FIELD_KEYS);
			goto fail;
		}
		g->keys[nkeys++] = p;
		if (dot == NULL)
			break;
		p = dot;
	}
	g->keys[nkeys] = NULL;
	atomic_init(&g->epoch, 0);
	for (int i = 0; i < GEOIP_STRIPES; i++) {
		atomic_init(&g->stripes[i].readers[0], 0);
		atomic_init(&g->stripes[i].readers[1], 0);
	}
	atomic_init(&g->stop, 0);
	if ((db = db_open(g)) == NULL) {
		snprintf(errbuf, sizeof(errbuf), "geoip_database: %s", g->errbuf);
		goto fail;
	}
	atomic_init(&g->cur, db);
	*g_r = g;
	return 0;
fail:
	free(g->path);
	free(g->field);
	free(g->keys_buf);
	free(g);
	*error_r = errbuf;
	return -1;
}

void
geoip_free(struct geoip **gp)
{
	struct geoip *g = *gp;
	struct geoip_db *db;

	if (g == NULL)
		return;
	geoip_watch_stop(g);
	db = atomic_exchange(&g->cur, NULL);
	db_close(&db);
	free(g->path);
	free(g->field);
	free(g->keys_buf);
	free(g);
	*gp = NULL;
}

const char *
geoip_path(const struct geoip *g)
{
	return g->path;
}

int
geoip_lookup(struct geoip *g, const struct ipaddr *addr, char cc_r[3])
{
	union {
		struct sockaddr sa;
		struct sockaddr_in in;
		struct sockaddr_in6 in6;
	} u;
	MMDB_lookup_result_s res;
	MMDB_entry_data_s data;
	const struct geoip_db *db;
	atomic_long *readers;
	unsigned e;
	int err, found = 0;

	memset(&u, 0, sizeof(u));
	if (addr->family == 4) {
		u.in.sin_family = AF_INET;
		u.in.sin_addr.s_addr = htonl(addr->v4);
	} else {
		u.in6.sin6_family = AF_INET6;
		for (int i = 0; i < 8; i++) {
			u.in6.sin6_addr.s6_addr[i] = (uint8_t)(addr->hi >> (56 - 8 * i));
			u.in6.sin6_addr.s6_addr[8 + i] = (uint8_t)(addr->lo >> (56 - 8 * i));
		}
	}
	if (my_stripe < 0)
		my_stripe = (int)(atomic_fetch_add(&next_stripe, 1) % GEOIP_STRIPES);
	readers = g->stripes[my_stripe].readers;
	e = atomic_load(&g->epoch) & 1;
	atomic_fetch_add(&readers[e], 1);
	db = atomic_load(&g->cur);
	/* an IPv6 address in an IPv4-only database is an error: not found */
	res = MMDB_lookup_sockaddr(&db->mmdb, &u.sa, &err);
	if (err == MMDB_SUCCESS && res.found_entry &&
	    MMDB_aget_value(&res.entry, &data, g->keys) == MMDB_SUCCESS &&
	    data.has_data && data.type == MMDB_DATA_TYPE_UTF8_STRING && data.data_size == 2) {
		char a = data.utf8_string[0], b = data.utf8_string[1];

		if (a >= 'a' && a <= 'z')
			a = (char)(a - 'a' + 'A');
		if (b >= 'a' && b <= 'z')
			b = (char)(b - 'a' + 'A');
		if (a >= 'A' && a <= 'Z' && b >= 'A' && b <= 'Z') {
			cc_r[0] = a;
			cc_r[1] = b;
			cc_r[2] = '\0';
			found = 1;
		}
	}
	atomic_fetch_sub(&readers[e], 1);
	return found;
}

static void
wait_drain(atomic_long *counter)
{
	const struct timespec ts = { 0, 50 * 1000 };

	while (atomic_load(counter) != 0)
		nanosleep(&ts, NULL);
}

int
geoip_reload_if_changed(struct geoip *g, const char **error_r)
{
	struct geoip_db *db, *old;
	struct fileid now;
	struct stat st;

	if (stat(g->path, &st) < 0) {
		/* gone for a moment (a replace by unlink and rename) is nothing
		 * to say; gone at two polls in a row is said once. Either way
		 * the loaded database serves on. */
		memset(&g->pending, 0, sizeof(g->pending));
		if (++g->missing != 2)
			return 0;
		snprintf(g->errbuf, sizeof(g->errbuf), "%s: %s", g->path, strerror(errno));
		*error_r = g->errbuf;
		return -1;
	}
	g->missing = 0;
	fileid_of(&st, &now);
	old = atomic_load(&g->cur);
	if (fileid_eq(&now, &old->id) || fileid_eq(&now, &g->failed))
		return 0;
	if (!fileid_eq(&now, &g->pending)) {
		g->pending = now;	/* still changing? look again at the next poll */
		return 0;
	}
	memset(&g->pending, 0, sizeof(g->pending));
	if ((db = db_open(g)) == NULL) {
		g->failed = now;
		*error_r = g->errbuf;
		return -1;
	}
	memset(&g->failed, 0, sizeof(g->failed));
	old = atomic_exchange(&g->cur, db);
	for (int phase = 0; phase < 2; phase++) {
		unsigned e = atomic_fetch_add(&g->epoch, 1);

		for (int i = 0; i < GEOIP_STRIPES; i++)
			wait_drain(&g->stripes[i].readers[e & 1]);
	}
	db_close(&old);
	return 1;
}

static void *
watch_main(void *arg)
{
	struct geoip *g = arg;
	const struct timespec step = { 0, 50L * 1000 * 1000 };
	unsigned waited = 0;

	while (!atomic_load(&g->stop)) {
		const char *err;
		int rc;

		nanosleep(&step, NULL);
		waited += 50;
		if (waited < g->interval_ms)
			continue;
		waited = 0;
		rc = geoip_reload_if_changed(g, &err);
		if (rc > 0) {
			const struct geoip_db *db = atomic_load(&g->cur);

			log_info("geoip_database %s reloaded (%s, built %llu)", g->path,
			    db->mmdb.metadata.database_type,
			    (unsigned long long)db->mmdb.metadata.build_epoch);
		} else if (rc < 0) {
			log_error("geoip_database: cannot reload %s; the previous database stays "
			    "in force", err);
		}
	}
	return NULL;
}

int
geoip_watch_start(struct geoip *g, unsigned interval_ms, const char **error_r)
{
	int rc;

	if (g->running)
		return 0;
	g->interval_ms = interval_ms ? interval_ms : 500;
	atomic_store(&g->stop, 0);
	if ((rc = pthread_create(&g->thread, NULL, watch_main, g)) != 0) {
		snprintf(g->errbuf, sizeof(g->errbuf), "cannot start the geoip_database "
		    "watcher: %s", strerror(rc));
		*error_r = g->errbuf;
		return -1;
	}
	g->running = 1;
	return 0;
}

void
geoip_watch_stop(struct geoip *g)
{
	if (!g->running)
		return;
	atomic_store(&g->stop, 1);
	pthread_join(g->thread, NULL);
	g->running = 0;
}
