/*
 * stats - counters in a file every process of the daemon maps (MAP_SHARED),
 * so the master, each worker and `portcullis stats` see one set.
 *
 *   stats_open(path)           master: create (reset) the file; workers inherit it
 *   stats_open_readonly(path)  the admin command
 *   stats_add(series, n)       lock-free: one atomic add (a CAS for a new series)
 *   stats_verdict(...)         verdicts_total{door,stage,action,reason}
 *   stats_write_prometheus()   the text format, families sorted, # TYPE lines
 *   stats_each()               every series, for daemon/statspub.c
 *
 * Never blocks, never allocates on the counting path; a series name that is
 * not [a-z_]+ optionally followed by {label="value",...} is not counted.
 */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/hash.h"
#include "common/stats.h"

#define STATS_MAGIC "PCSTATS2"	/* 2: series hashed with SipHash-1-3 */

struct stats_slot {
	_Atomic uint64_t hash;		/* 0: free */
	_Atomic uint32_t ready;		/* name written */
	uint32_t pad;
	char name[STATS_NAME_MAX];
	_Atomic uint64_t value;
};

struct stats_file {
	char magic[8];
	uint32_t nslots;
	uint32_t pad;
	int64_t started;		/* unix time the master opened it */
	_Atomic uint64_t dropped;	/* series that found no free slot */
	struct stats_slot slot[STATS_SLOTS];
};

static struct stats_file *sf;
static int sf_writable;
static const char *door = "";

static uint64_t
name_hash(const char *s)
{
	/* a fixed key: the file is shared with other processes (the CLI);
	 * the series names are ours, not a peer's */
	static const struct hash_key key = { 0x706f727463756c6cull, 0x6973737461747321ull };

	return hash_siphash13(&key, s, strlen(s)) | 1;	/* never 0: 0 marks a free slot */
}

/* metric[{label="value",...}], printable, no quote or backslash in values */
static int
name_ok(const char *s)
{
	size_t n = strlen(s);
	const char *b = strchr(s, '{');

	if (n == 0 || n >= STATS_NAME_MAX)
		return 0;
	for (const char *p = s; p < (b ? b : s + n); p++)
		if (!((*p >= 'a' && *p <= 'z') || *p == '_' || (*p >= '0' && *p <= '9')))
			return 0;
	if (b == NULL)
		return 1;
	if (b == s || s[n - 1] != '}')
		return 0;
	for (const char *p = b; p < s + n; p++)
		if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f || *p == '\\')
			return 0;
	return 1;
}

static int
map_file(const char *path, int writable, const char **error_r)
{
	static char err[600];
	int fd = open(path, writable ? O_RDWR | O_CREAT | O_CLOEXEC : O_RDONLY | O_CLOEXEC, 0644);
	struct stat st;
	void *p;

	if (fd < 0) {
		snprintf(err, sizeof(err), "%.400s: %s", path, strerror(errno));
		*error_r = err;
		return -1;
	}
	if (writable) {
		/* counters count since the daemon started: a fresh file each start */
		if (ftruncate(fd, 0) < 0 || ftruncate(fd, sizeof(struct stats_file)) < 0) {
			snprintf(err, sizeof(err), "%.400s: %s", path, strerror(errno));
			close(fd);
			*error_r = err;
			return -1;
		}
	} else if (fstat(fd, &st) < 0 || (size_t)st.st_size < sizeof(struct stats_file)) {
		snprintf(err, sizeof(err), "%.400s: not a statistics file (is portcullisd running?)",
		    path);
		close(fd);
		*error_r = err;
		return -1;
	}
	p = mmap(NULL, sizeof(struct stats_file), writable ? PROT_READ | PROT_WRITE : PROT_READ,
	    MAP_SHARED, fd, 0);
	close(fd);
	if (p == MAP_FAILED) {
		snprintf(err, sizeof(err), "%.400s: mmap: %s", path, strerror(errno));
		*error_r = err;
		return -1;
	}
	sf = p;
	sf_writable = writable;
	if (writable) {
		memcpy(sf->magic, STATS_MAGIC, 8);
		sf->nslots = STATS_SLOTS;
		sf->started = (int64_t)time(NULL);
	} else if (memcmp(sf->magic, STATS_MAGIC, 8) != 0 || sf->nslots != STATS_SLOTS) {
		stats_close();
		snprintf(err, sizeof(err), "%.400s: not a statistics file of this version", path);
		*error_r = err;
		return -1;
	}
	return 0;
}

int
stats_open(const char *path, const char **error_r)
{
	return map_file(path, 1, error_r);
}

int
stats_open_readonly(const char *path, const char **error_r)
{
	return map_file(path, 0, error_r);
}

void
stats_close(void)
{
	if (sf != NULL)
		munmap(sf, sizeof(*sf));
	sf = NULL;
}

void
stats_set_door(const char *d)
{
	door = d;
}

const char *
stats_door(void)
{
	return door;
}

/* the slot of series (made when make), or NULL */
static struct stats_slot *
find_slot(const char *series, int make)
{
	uint64_t h = name_hash(series);

	for (unsigned i = 0; i < STATS_SLOTS; i++) {
		struct stats_slot *sl = &sf->slot[(h + i) % STATS_SLOTS];
		uint64_t cur = atomic_load_explicit(&sl->hash, memory_order_acquire);

		if (cur == 0) {
			uint64_t zero = 0;

			if (!make)
				return NULL;
			if (atomic_compare_exchange_strong(&sl->hash, &zero, h)) {
				strcpy(sl->name, series);	/* name_ok() bounded it */
				atomic_store_explicit(&sl->ready, 1, memory_order_release);
				return sl;
			}
			cur = zero;	/* somebody else took it: look at theirs */
		}
		if (cur != h)
			continue;
		/* a writer between its CAS and its name: a few instructions away,
		 * unless it died there; then the slot is lost, not the process */
		for (int spin = 0; !atomic_load_explicit(&sl->ready, memory_order_acquire); spin++) {
			if (spin > 1000)
				break;
			sched_yield();
		}
		if (atomic_load_explicit(&sl->ready, memory_order_acquire) &&
		    strcmp(sl->name, series) == 0)
			return sl;
	}
	return NULL;
}

void
stats_add(const char *series, uint64_t n)
{
	struct stats_slot *sl;

	if (sf == NULL || !sf_writable || !name_ok(series))
		return;
	if ((sl = find_slot(series, 1)) == NULL) {
		atomic_fetch_add_explicit(&sf->dropped, 1, memory_order_relaxed);
		return;
	}
	atomic_fetch_add_explicit(&sl->value, n, memory_order_relaxed);
}

void
stats_addf(uint64_t n, const char *fmt, ...)
{
	char name[STATS_NAME_MAX];
	va_list ap;
	int m;

	if (sf == NULL)
		return;
	va_start(ap, fmt);
	m = vsnprintf(name, sizeof(name), fmt, ap);
	va_end(ap);
	if (m > 0 && (size_t)m < sizeof(name))
		stats_add(name, n);
	else
		atomic_fetch_add_explicit(&sf->dropped, 1, memory_order_relaxed);
}

void
stats_verdict(const char *stage, const char *action, const char *reason)
{
	stats_addf(1, "verdicts_total{door=\"%s\",stage=\"%s\",action=\"%s\",reason=\"%s\"}",
	    door[0] ? door : "none", stage, action, reason ? reason : "");
}

uint64_t
stats_get(const char *series)
{
	struct stats_slot *sl;

	if (sf == NULL || !name_ok(series) || (sl = find_slot(series, 0)) == NULL)
		return 0;
	return atomic_load_explicit(&sl->value, memory_order_relaxed);
}

int
stats_each(void (*cb)(void *arg, const char *name, uint64_t value), void *arg)
{
	if (sf == NULL)
		return -1;
	cb(arg, "dropped_series_total", atomic_load(&sf->dropped));
	for (unsigned i = 0; i < STATS_SLOTS; i++)
		if (atomic_load_explicit(&sf->slot[i].hash, memory_order_acquire) != 0 &&
		    atomic_load_explicit(&sf->slot[i].ready, memory_order_acquire))
			cb(arg, sf->slot[i].name,
			    atomic_load_explicit(&sf->slot[i].value, memory_order_relaxed));
	return 0;
}

static int
by_name(const void *a, const void *b)
{
	const struct stats_slot *x = *(const struct stats_slot *const *)a;
	const struct stats_slot *y = *(const struct stats_slot *const *)b;

	return strcmp(x->name, y->name);
}

static const char *
help_of(const char *family)
{
	static const struct { const char *f, *h; } t[] = {
		{ "verdicts_total", "Policy verdicts by door, stage, action and reason tag." },
		{ "connections_total", "Client connections accepted, by door." },
		{ "messages_total", "Messages accepted for delivery or passed on, by door." },
		{ "message_bytes_total", "Octets of accepted messages, by door." },
		{ "auth_total", "Logins (SMTP AUTH, POP3, IMAP), by door and result." },
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
		if (strcmp(t[i].f, family) == 0)
			return t[i].h;
	return "Portcullis counter.";
}

int
stats_write_prometheus(FILE *fp)
{
	struct stats_slot *sl[STATS_SLOTS];
	size_t n = 0;
	char family[STATS_NAME_MAX] = "";

	if (sf == NULL)
		return -1;
	for (unsigned i = 0; i < STATS_SLOTS; i++)
		if (atomic_load_explicit(&sf->slot[i].hash, memory_order_acquire) != 0 &&
		    atomic_load_explicit(&sf->slot[i].ready, memory_order_acquire))
			sl[n++] = &sf->slot[i];
	qsort(sl, n, sizeof(sl[0]), by_name);
	fprintf(fp, "# HELP portcullis_start_time_seconds When the daemon started (unix time).\n"
	    "# TYPE portcullis_start_time_seconds gauge\nportcullis_start_time_seconds %lld\n",
	    (long long)sf->started);
	fprintf(fp, "# HELP portcullis_dropped_series_total Counts not kept: no free series slot.\n"
	    "# TYPE portcullis_dropped_series_total counter\nportcullis_dropped_series_total %llu\n",
	    (unsigned long long)atomic_load(&sf->dropped));
	for (size_t i = 0; i < n; i++) {
		size_t flen = strcspn(sl[i]->name, "{");

		if (strlen(family) != flen || strncmp(family, sl[i]->name, flen) != 0) {
			memcpy(family, sl[i]->name, flen);
			family[flen] = '\0';
			fprintf(fp, "# HELP portcullis_%s %s\n# TYPE portcullis_%s counter\n",
			    family, help_of(family), family);
		}
		fprintf(fp, "portcullis_%s %llu\n", sl[i]->name,
		    (unsigned long long)atomic_load_explicit(&sl[i]->value, memory_order_relaxed));
	}
	return 0;
}
