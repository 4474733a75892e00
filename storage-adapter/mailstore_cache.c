/*
 * mailstore_cache - the message string cache of the Maildir backend (see
 * mailstore_cache.h for what it keeps, why the key is safe, and its file).
 *
 *   mscache_parse()        a portcullis.cache file -> records; all or nothing
 *   mscache_format_*()     its text
 *   mscache_get/_put()     the process's copy of a folder's cache (read
 *                          from the file on first use)
 *   mscache_flush()        the file rewritten (tmp + rename) with the live
 *                          messages, when the copy gained entries
 *   mscache_reset()        everything in memory forgotten (tests)
 *   mailstore_cache_get/_put/_flush   mailstore.h's calls on a Maildir box
 *
 * Thread-safe (one mutex; values are copied under it). Bounded:
 * MSCACHE_MAX_FOLDERS folders and MSCACHE_MAX_BYTES bytes in memory in all
 * (least recently used folder out first), and the limits of the file
 * format. Never logs a value or a raw file byte. A damaged or unreadable
 * file is not an error of the store: it is logged, thrown away and written
 * anew at the next flush.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/fsutil.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/xmalloc.h"
#include "storage-adapter/mailstore.h"
#include "storage-adapter/mailstore_cache.h"

#define MSCACHE_MAGIC		"portcullis-cache 1\n"
#define MSCACHE_MAX_FOLDERS	64
#define MSCACHE_MAX_BYTES	(128u << 20)

static _Thread_local char errbuf[128];

/* ---- the file format ---- */

/* a decimal number (or "-" when DASH_OK: *absent_r) ending at STOP */
static int
num_parse(const char **pp, const char *end, char stop, int dash_ok, uint64_t max, uint64_t *v_r,
    int *absent_r)
{
	const char *p = *pp;
	uint64_t v = 0;

	if (absent_r != NULL)
		*absent_r = 0;
	if (dash_ok && p < end && *p == '-') {
		p++;
		*absent_r = 1;
	} else {
		const char *start = p;

		while (p < end && *p >= '0' && *p <= '9') {
			v = v * 10 + (uint64_t)(*p - '0');
			if (v > max)
				return -1;
			p++;
		}
		if (p == start || (p - start > 1 && *start == '0'))
			return -1;
	}
	if (p >= end || *p != stop)
		return -1;
	*pp = p + 1;
	*v_r = v;
	return 0;
}

static int
base_is_valid(const char *b, size_t n)
{
	if (n == 0 || n > MAX_MAILSTORE_FNAME || b[0] == '.')
		return 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)b[i];

		if (c < 0x20 || c == 0x7f || c == '/' || c == ':')
			return 0;
	}
	return 1;
}

int
mscache_parse(const char *buf, size_t len, int (*fn)(void *ctx, const struct mscache_rec *rec),
    void *ctx, const char **error_r)
{
	const char *p = buf, *end = buf + len;
	size_t nrecs = 0, ml = strlen(MSCACHE_MAGIC);

	if (len > MAX_MAILSTORE_CACHE_FILE) {
		*error_r = "file too large";
		return -1;
	}
	if (len < ml || memcmp(buf, MSCACHE_MAGIC, ml) != 0) {
		*error_r = "not a cache file (header)";
		return -1;
	}
	p += ml;
	for (;;) {
		struct mscache_rec rec;
		uint64_t v;
		int absent;

		if (end - p >= 4 && memcmp(p, "end ", 4) == 0) {
			const char *q = p + 4;

			if (num_parse(&q, end, '\n', 0, MAX_MAILSTORE_MESSAGES, &v, NULL) < 0 ||
			    v != nrecs || q != end) {
				*error_r = "bad trailer";
				return -1;
			}
			return 0;
		}
		if (nrecs >= MAX_MAILSTORE_MESSAGES) {
			*error_r = "too many messages";
			return -1;
		}
		memset(&rec, 0, sizeof(rec));
		if (num_parse(&p, end, ' ', 0, MAX_MAILSTORE_FNAME, &v, NULL) < 0) {
			*error_r = p >= end ? "truncated" : "bad record line";
			return -1;
		}
		rec.baselen = (size_t)v;
		for (int i = 0; i < MSCACHE_FIELDS; i++) {
			if (num_parse(&p, end, i == MSCACHE_FIELDS - 1 ? '\n' : ' ', 1,
			    MAX_MAILSTORE_CACHE_VALUE, &v, &absent) < 0) {
				*error_r = "bad record line";
				return -1;
			}
			rec.len[i] = absent ? 0 : (size_t)v;
			rec.val[i] = absent ? NULL : "";	/* set below */
		}
		if ((size_t)(end - p) < rec.baselen) {
			*error_r = "truncated";
			return -1;
		}
		rec.base = p;
		if (!base_is_valid(rec.base, rec.baselen)) {
			*error_r = "bad base name";
			return -1;
		}
		p += rec.baselen;
		for (int i = 0; i < MSCACHE_FIELDS; i++) {
			if (rec.val[i] == NULL)
				continue;
			if ((size_t)(end - p) < rec.len[i]) {
				*error_r = "truncated";
				return -1;
			}
			rec.val[i] = p;
			p += rec.len[i];
		}
		if (p >= end || *p != '\n') {
			*error_r = "bad record end";
			return -1;
		}
		p++;
		nrecs++;
		if (fn != NULL && fn(ctx, &rec) != 0) {
			*error_r = "refused by the reader";
			return -1;
		}
	}
}

static void
buf_add(char **out, size_t *len, size_t *cap, const void *p, size_t n)
{
	if (*len + n + 1 > *cap) {
		size_t c = *cap ? *cap : 4096;

		while (c < *len + n + 1)
			c *= 2;
		*out = xrealloc(*out, c);
		*cap = c;
	}
	memcpy(*out + *len, p, n);
	*len += n;
	(*out)[*len] = '\0';
}

void
mscache_format_head(char **out, size_t *len, size_t *cap)
{
	buf_add(out, len, cap, MSCACHE_MAGIC, strlen(MSCACHE_MAGIC));
}

void
mscache_format_rec(char **out, size_t *len, size_t *cap, const struct mscache_rec *rec)
{
	char line[96];
	int n = snprintf(line, sizeof(line), "%zu", rec->baselen);

	for (int i = 0; i < MSCACHE_FIELDS; i++)
		n += rec->val[i] ? snprintf(line + n, sizeof(line) - (size_t)n, " %zu", rec->len[i]) :
		    snprintf(line + n, sizeof(line) - (size_t)n, " -");
	n += snprintf(line + n, sizeof(line) - (size_t)n, "\n");
	buf_add(out, len, cap, line, (size_t)n);
	buf_add(out, len, cap, rec->base, rec->baselen);
	for (int i = 0; i < MSCACHE_FIELDS; i++)
		if (rec->val[i])
			buf_add(out, len, cap, rec->val[i], rec->len[i]);
	buf_add(out, len, cap, "\n", 1);
}

void
mscache_format_tail(char **out, size_t *len, size_t *cap, size_t nrecs)
{
	char line[32];
	int n = snprintf(line, sizeof(line), "end %zu\n", nrecs);

	buf_add(out, len, cap, line, (size_t)n);
}

/* ---- the process's copy ---- */

struct ent {
	char *base;		/* NUL-terminated */
	size_t baselen;
	char *val[MSCACHE_FIELDS];
	size_t len[MSCACHE_FIELDS];
};

struct folder {
	struct folder *next;
	char *dir;
	uint64_t used;
	struct ent *ents;
	size_t n, cap;
	uint32_t *tab;		/* open addressing: index + 1, 0 empty */
	size_t tabsz;		/* a power of two, > 2 n */
	size_t bytes;
	int dirty;
};

static pthread_mutex_t mc_mutex = PTHREAD_MUTEX_INITIALIZER;
static struct folder *folders;
static size_t nfolders, total_bytes;
static uint64_t mc_clock;
static atomic_ulong tmp_seq;

static size_t
ent_slot(const struct folder *f, const char *base, size_t baselen)
{
	size_t mask = f->tabsz - 1, i = (size_t)hash_mem(base, baselen) & mask;

	for (;; i = (i + 1) & mask) {
		uint32_t t = f->tab[i];

		if (t == 0)
			return i;
		if (f->ents[t - 1].baselen == baselen && memcmp(f->ents[t - 1].base, base, baselen) == 0)
			return i;
	}
}

static void
tab_rebuild(struct folder *f, size_t want)
{
	size_t sz = 64;

	while (sz < want * 2 + 2)
		sz *= 2;
	free(f->tab);
	f->tab = xcalloc(sz, sizeof(*f->tab));
	f->tabsz = sz;
	for (size_t i = 0; i < f->n; i++)
		f->tab[ent_slot(f, f->ents[i].base, f->ents[i].baselen)] = (uint32_t)i + 1;
}

static struct ent *
ent_find(const struct folder *f, const char *base, size_t baselen)
{
	uint32_t t;

	if (f->tabsz == 0)
		return NULL;
	t = f->tab[ent_slot(f, base, baselen)];
	return t ? &f->ents[t - 1] : NULL;
}

static struct ent *
ent_add(struct folder *f, const char *base, size_t baselen)
{
	struct ent *e;

	if (f->n >= MAX_MAILSTORE_MESSAGES)
		return NULL;
	if ((f->n + 1) * 2 >= f->tabsz)
		tab_rebuild(f, f->n + 1);
	if (f->n == f->cap) {
		f->cap = f->cap ? f->cap * 2 : 64;
		f->ents = xreallocarray(f->ents, f->cap, sizeof(*f->ents));
	}
	e = &f->ents[f->n];
	memset(e, 0, sizeof(*e));
	e->base = xmalloc(baselen + 1);
	memcpy(e->base, base, baselen);
	e->base[baselen] = '\0';
	e->baselen = baselen;
	f->tab[ent_slot(f, base, baselen)] = (uint32_t)++f->n;
	f->bytes += baselen + sizeof(*e) + 2 * sizeof(uint32_t);
	total_bytes += baselen + sizeof(*e) + 2 * sizeof(uint32_t);
	return e;
}

static void
ent_clear(struct ent *e)
{
	free(e->base);
	for (int i = 0; i < MSCACHE_FIELDS; i++)
		free(e->val[i]);
}

static void
folder_free(struct folder *f)
{
	for (size_t i = 0; i < f->n; i++)
		ent_clear(&f->ents[i]);
	total_bytes -= f->bytes;
	free(f->ents);
	free(f->tab);
	free(f->dir);
	free(f);
}

static void
folder_unlink_locked(struct folder *f)
{
	for (struct folder **fp = &folders; *fp != NULL; fp = &(*fp)->next) {
		if (*fp == f) {
			*fp = f->next;
			nfolders--;
			folder_free(f);
			return;
		}
	}
}

/* room for BYTES more: other folders out, least recently used first */
static int
make_room_locked(const struct folder *keep, size_t bytes)
{
	while (total_bytes + bytes > MSCACHE_MAX_BYTES || nfolders > MSCACHE_MAX_FOLDERS) {
		struct folder *old = NULL;

		for (struct folder *f = folders; f != NULL; f = f->next)
			if (f != keep && (old == NULL || f->used < old->used))
				old = f;
		if (old == NULL)
			return -1;
		folder_unlink_locked(old);
	}
	return 0;
}

static void
ent_set(struct folder *f, struct ent *e, unsigned field, const char *val, size_t len)
{
	e->val[field] = xmalloc(len + 1);
	memcpy(e->val[field], val, len);
	e->val[field][len] = '\0';
	e->len[field] = len;
	f->bytes += len + 1;
	total_bytes += len + 1;
}

static int
load_rec(void *ctx, const struct mscache_rec *rec)
{
	struct folder *f = ctx;
	struct ent *e;
	size_t need = rec->baselen + sizeof(struct ent);

	for (int i = 0; i < MSCACHE_FIELDS; i++)
		need += rec->val[i] ? rec->len[i] + 1 : 0;
	if (ent_find(f, rec->base, rec->baselen) != NULL)
		return 1;	/* twice the same message: not our writing */
	if (make_room_locked(f, need) < 0)
		return 0;	/* full: the rest stays on disk */
	if ((e = ent_add(f, rec->base, rec->baselen)) == NULL)
		return 0;
	for (int i = 0; i < MSCACHE_FIELDS; i++)
		if (rec->val[i])
			ent_set(f, e, (unsigned)i, rec->val[i], rec->len[i]);
	return 0;
}

static char *
read_all(const char *path, size_t cap, size_t *len_r)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	struct stat st;
	char *buf;
	size_t n = 0;

	if (fd < 0)
		return NULL;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size > cap) {
		close(fd);
		errno = EFBIG;
		return NULL;
	}
	buf = xmalloc((size_t)st.st_size + 1);
	while (n < (size_t)st.st_size) {
		ssize_t r = read(fd, buf + n, (size_t)st.st_size - n);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		n += (size_t)r;
	}
	close(fd);
	buf[n] = '\0';
	*len_r = n;
	return buf;
}

static void
folder_clear(struct folder *f)
{
	for (size_t i = 0; i < f->n; i++)
		ent_clear(&f->ents[i]);
	total_bytes -= f->bytes;
	f->bytes = 0;
	f->n = 0;
	if (f->tab != NULL)
		memset(f->tab, 0, f->tabsz * sizeof(*f->tab));
}

/* DIR's copy, read from its file when first asked (mutex held) */
static struct folder *
folder_get_locked(const char *dir)
{
	struct folder *f;
	char *path, *buf;
	size_t len = 0;
	const char *why = NULL;

	for (f = folders; f != NULL; f = f->next) {
		if (strcmp(f->dir, dir) == 0) {
			f->used = ++mc_clock;
			return f;
		}
	}
	f = xcalloc(1, sizeof(*f));
	f->dir = xstrdup(dir);
	f->used = ++mc_clock;
	f->next = folders;
	folders = f;
	nfolders++;
	(void)make_room_locked(f, 0);
	path = xasprintf("%s/" MSCACHE_FILE, dir);
	buf = read_all(path, MAX_MAILSTORE_CACHE_FILE, &len);
	if (buf == NULL && errno != ENOENT)
		why = strerror(errno);
	else if (buf != NULL && mscache_parse(buf, len, load_rec, f, &why) < 0)
		folder_clear(f);
	else
		why = NULL;
	if (why != NULL) {
		snprintf(errbuf, sizeof(errbuf), "%s", why);
		log_warn("mailstore: %s is damaged (%s): rebuilt", path, errbuf);
		f->dirty = 1;
	}
	free(buf);
	free(path);
	return f;
}

int
mscache_get(const char *dir, const char *base, size_t baselen, unsigned field, char **val_r,
    size_t *len_r)
{
	struct folder *f;
	struct ent *e;
	int rc = -1;

	if (field >= MSCACHE_FIELDS)
		return -1;
	pthread_mutex_lock(&mc_mutex);
	f = folder_get_locked(dir);
	e = ent_find(f, base, baselen);
	if (e != NULL && e->val[field] != NULL) {
		*val_r = xmalloc(e->len[field] + 1);
		memcpy(*val_r, e->val[field], e->len[field] + 1);
		*len_r = e->len[field];
		rc = 0;
	}
	pthread_mutex_unlock(&mc_mutex);
	return rc;
}

void
mscache_put(const char *dir, const char *base, size_t baselen, unsigned field, const char *val,
    size_t len)
{
	struct folder *f;
	struct ent *e;

	if (field >= MSCACHE_FIELDS || len > MAX_MAILSTORE_CACHE_VALUE ||
	    !base_is_valid(base, baselen))
		return;
	pthread_mutex_lock(&mc_mutex);
	f = folder_get_locked(dir);
	e = ent_find(f, base, baselen);
	if ((e == NULL || e->val[field] == NULL) &&
	    make_room_locked(f, len + baselen + sizeof(*e) + 16) == 0 &&
	    (e != NULL || (e = ent_add(f, base, baselen)) != NULL)) {
		ent_set(f, e, field, val, len);
		f->dirty = 1;
	}
	pthread_mutex_unlock(&mc_mutex);
}

void
mscache_flush(const char *dir, int (*is_live)(void *ctx, const char *base, size_t baselen),
    void *ctx)
{
	struct folder *f;
	char *out = NULL, *path, *tmp;
	size_t len = 0, cap = 0, nrecs = 0, keep = 0;
	int fd;

	pthread_mutex_lock(&mc_mutex);
	for (f = folders; f != NULL && strcmp(f->dir, dir) != 0; f = f->next)
		;
	if (f == NULL || !f->dirty) {
		pthread_mutex_unlock(&mc_mutex);
		return;
	}
	/* expunged messages go, from memory and from the file */
	for (size_t i = 0; i < f->n; i++) {
		struct ent *e = &f->ents[i];

		if (!is_live(ctx, e->base, e->baselen)) {
			size_t b = e->baselen + sizeof(*e) + 2 * sizeof(uint32_t);

			for (int k = 0; k < MSCACHE_FIELDS; k++)
				b += e->val[k] ? e->len[k] + 1 : 0;
			f->bytes -= b;
			total_bytes -= b;
			ent_clear(e);
			continue;
		}
		f->ents[keep++] = *e;
	}
	if (keep != f->n) {
		f->n = keep;
		tab_rebuild(f, keep);
	}
	mscache_format_head(&out, &len, &cap);
	for (size_t i = 0; i < f->n; i++) {
		const struct ent *e = &f->ents[i];
		struct mscache_rec rec = { .base = e->base, .baselen = e->baselen };

		if (len > MAX_MAILSTORE_CACHE_FILE - 64 - e->baselen)
			break;
		for (int k = 0; k < MSCACHE_FIELDS; k++) {
			rec.val[k] = e->val[k];
			rec.len[k] = e->len[k];
		}
		mscache_format_rec(&out, &len, &cap, &rec);
		nrecs++;
	}
	mscache_format_tail(&out, &len, &cap, nrecs);
	f->dirty = 0;
	pthread_mutex_unlock(&mc_mutex);

	/* no fsync: a file torn by a crash fails to parse and is rebuilt */
	path = xasprintf("%s/" MSCACHE_FILE, dir);
	tmp = xasprintf("%s/" MSCACHE_FILE ".%ld.%lu.tmp", dir, (long)getpid(),
	    (unsigned long)atomic_fetch_add(&tmp_seq, 1));
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0) {
		log_warn("mailstore: cannot create %s: %s", tmp, strerror(errno));
	} else {
		int bad = fsutil_write_all(fd, out, len) < 0;

		bad |= close(fd) < 0;
		if (bad || rename(tmp, path) < 0) {
			log_warn("mailstore: cannot write %s: %s", path, strerror(errno));
			(void)unlink(tmp);
		}
	}
	free(tmp);
	free(path);
	free(out);
}

int
mscache_is_dirty(const char *dir)
{
	int dirty = 0;

	pthread_mutex_lock(&mc_mutex);
	for (struct folder *f = folders; f != NULL; f = f->next)
		if (strcmp(f->dir, dir) == 0)
			dirty = f->dirty;
	pthread_mutex_unlock(&mc_mutex);
	return dirty;
}

/* ------------------------------------------------------------------ */
/* mailstore.h's cache calls: the backend's messages by base name       */

static int
msg_base(const struct mailstore_box *box, uint32_t uid, size_t *baselen_r, const char **base_r)
{
	long i = mailstore_box_find(box, uid);
	const char *colon;

	if (i < 0)
		return -1;
	*base_r = mailstore_maildir_fname(box, (size_t)i);
	colon = strchr(*base_r, ':');
	*baselen_r = colon ? (size_t)(colon - *base_r) : strlen(*base_r);
	return 0;
}

int
mailstore_cache_get(struct mailstore_box *box, uint32_t uid, enum mailstore_cache_field field,
    char **val_r, size_t *len_r)
{
	const char *base;
	size_t bl;

	if (msg_base(box, uid, &bl, &base) < 0)
		return -1;
	return mscache_get(mailstore_box_dir(box), base, bl, (unsigned)field, val_r, len_r);
}

void
mailstore_cache_put(struct mailstore_box *box, uint32_t uid, enum mailstore_cache_field field,
    const char *val, size_t len)
{
	const char *base;
	size_t bl;

	if (msg_base(box, uid, &bl, &base) == 0)
		mscache_put(mailstore_box_dir(box), base, bl, (unsigned)field, val, len);
}

struct live_ctx {
	const char **bases;	/* sorted, each ending at ':' or NUL */
	size_t n;
};

static int
base_end_cmp(const char *a, size_t al, const char *b)
{
	size_t bl = strcspn(b, ":");
	int c = memcmp(a, b, al < bl ? al : bl);

	return c != 0 ? c : al < bl ? -1 : al > bl;
}

static int
live_sort_cmp(const void *x, const void *y)
{
	const char *a = *(const char *const *)x, *b = *(const char *const *)y;

	return base_end_cmp(a, strcspn(a, ":"), b);
}

/* a base name of the folder's current list (bisection) */
static int
live_has(void *ctx, const char *base, size_t baselen)
{
	const struct live_ctx *lc = ctx;
	size_t lo = 0, hi = lc->n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = base_end_cmp(base, baselen, lc->bases[mid]);

		if (c == 0)
			return 1;
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return 0;
}

void
mailstore_cache_flush(struct mailstore_box *box)
{
	struct live_ctx lc;

	if (!mscache_is_dirty(mailstore_box_dir(box)))
		return;
	lc.n = mailstore_box_count(box);
	lc.bases = xcalloc(lc.n + 1, sizeof(*lc.bases));
	for (size_t i = 0; i < lc.n; i++)
		lc.bases[i] = mailstore_maildir_fname(box, i);
	qsort(lc.bases, lc.n, sizeof(*lc.bases), live_sort_cmp);
	mscache_flush(mailstore_box_dir(box), live_has, &lc);
	free(lc.bases);
}

void
mscache_reset(void)
{
	pthread_mutex_lock(&mc_mutex);
	while (folders != NULL)
		folder_unlink_locked(folders);
	pthread_mutex_unlock(&mc_mutex);
}
