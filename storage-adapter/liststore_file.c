/*
 * liststore_file - kill/accept lists as plain text files (the embedded default).
 *
 *   DIR/kill.list, DIR/accept.list: one entry a line,
 *     ENTRY [added=UNIX] [expires=UNIX] [origin=admin|auto-ban|import] [reason=TEXT]
 *   '#' starts a comment line. A bad line is logged with FILE:LINE and skipped;
 *   the good lines still load. Rewrites keep comments and bad lines verbatim
 *   (an admin's typo is theirs to fix, not ours to delete) and drop expired
 *   entries.
 *
 * Writers take an exclusive flock on DIR/.lock, write a temporary file, fsync
 * it, rename it over the list and fsync the directory: a reader sees the old
 * file or the new one, never half of one. Change detection is a stat() of the
 * file (inode, size, mtime), cheap enough to poll several times a second.
 *
 * DIR/kill.journal, DIR/accept.journal: entries added in batches (the
 * daemon's auto-bans), in the list-file format, appended with one write and
 * an fdatasync: a ban costs O(1) however long the list. A journal entry
 * replaces the list's entry with the same key. Every rewrite of the list
 * folds the journal in and removes it; add_batch() does so itself once the
 * journal outgrows half the list (amortised O(1) per entry). Readers that
 * follow the store (changes()) read only the journal's new tail and hand the
 * entries over, so a ban is an addition, not a reload.
 *
 *   add_batch()  journal append; never waits for DIR/.lock (fails, retry later)
 *   changes()    list rewritten -> reload; journal grew -> its new entries
 *   load()       the list with the journal applied
 */
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/fsutil.h"
#include "common/hash.h"
#include "common/pclimits.h"
#include "common/xmalloc.h"
#include "storage-adapter/liststore.h"

struct file_ident {
	int exists;
	dev_t dev;
	ino_t ino;
	off_t size;
	struct timespec mtime;
};

/* how much of a journal this store has read (or written itself) */
struct journal_pos {
	int exists;
	dev_t dev;
	ino_t ino;
	off_t off;
};

#define JOURNAL_COMPACT_MIN (256 * 1024)	/* fold the journal in past this size ... */
#define JOURNAL_READ_MAX (256 * 1024 * 1024)	/* ... and never read more than this of it */

struct filestore {
	char *dir;
	char *path[LIST_KINDS];
	char *jpath[LIST_KINDS];
	struct journal_pos jseen[LIST_KINDS];
	struct file_ident seen[LIST_KINDS];
	time_t loaded_at[LIST_KINDS];
	int loaded[LIST_KINDS];
};

static int
fs_fail(struct liststore *s, const char **error_r, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int
fs_fail(struct liststore *s, const char **error_r, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(s->err, sizeof(s->err), fmt, ap);
	va_end(ap);
	*error_r = s->err;
	return -1;
}

static int
fs_open(struct liststore *s, const char *arg, const char **error_r)
{
	struct filestore *fs;
	struct stat st;

	if (*arg == '\0')
		return fs_fail(s, error_r, "file: needs a directory, e.g. file:/var/lib/portcullis/lists");
	if (fsutil_mkdir_p(arg, 0750, 0755) < 0)
		return fs_fail(s, error_r, "cannot create directory %s: %s", arg, strerror(errno));
	if (stat(arg, &st) < 0 || !S_ISDIR(st.st_mode))
		return fs_fail(s, error_r, "%s is not a directory", arg);
	fs = xcalloc(1, sizeof(*fs));
	fs->dir = xstrdup(arg);
	fs->path[LIST_KILL] = xasprintf("%s/kill.list", arg);
	fs->path[LIST_ACCEPT] = xasprintf("%s/accept.list", arg);
	fs->jpath[LIST_KILL] = xasprintf("%s/kill.journal", arg);
	fs->jpath[LIST_ACCEPT] = xasprintf("%s/accept.journal", arg);
	s->priv = fs;
	return 0;
}

static void
fs_close(struct liststore *s)
{
	struct filestore *fs = s->priv;

	free(fs->dir);
	for (int k = 0; k < LIST_KINDS; k++) {
		free(fs->path[k]);
		free(fs->jpath[k]);
	}
	free(fs);
	s->priv = NULL;
}

static void
ident_of(const char *path, struct file_ident *id)
{
	struct stat st;

	memset(id, 0, sizeof(*id));
	if (stat(path, &st) < 0)
		return;
	id->exists = 1;
	id->dev = st.st_dev;
	id->ino = st.st_ino;
	id->size = st.st_size;
	id->mtime = st.st_mtim;
}

static int
ident_equal(const struct file_ident *a, const struct file_ident *b)
{
	if (a->exists != b->exists)
		return 0;
	if (!a->exists)
		return 1;
	return a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
	    a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec;
}

/*
 * Read one line with a hard cap. Returns the length (NUL bytes included: the
 * caller must not take the line as a C string), -1 at EOF. An over-long line
 * is consumed to its end and reported through *toolong_r; with spill, it is
 * copied there whole, newline included (a rewrite keeps it verbatim).
 */
static ssize_t
read_line(FILE *fp, char *buf, size_t cap, int *toolong_r, FILE *spill)
{
	size_t n = 0;
	int c;

	*toolong_r = 0;
	while ((c = getc_unlocked(fp)) != EOF && c != '\n') {
		if (n + 1 < cap) {
			buf[n++] = (char)c;
			continue;
		}
		if (!*toolong_r && spill != NULL)
			fwrite(buf, 1, n, spill);
		*toolong_r = 1;
		if (spill != NULL)
			putc_unlocked(c, spill);
	}
	if (*toolong_r && spill != NULL)
		putc_unlocked('\n', spill);
	if (c == EOF && n == 0 && !*toolong_r)
		return -1;
	if (n > 0 && buf[n - 1] == '\r')
		n--;
	buf[n] = '\0';
	return (ssize_t)n;
}

static int
line_is_blank_or_comment(const char *line)
{
	while (*line == ' ' || *line == '\t')
		line++;
	return *line == '\0' || *line == '#';
}

static int journal_read(struct liststore *s, enum list_kind k, off_t from,
    struct entry_vec *out, struct journal_pos *pos_r, const char **error_r);

/* journal entries jv (deduplicated) replace the entries with their keys in out */
static void
apply_journal(struct entry_vec *out, struct entry_vec *jv)
{
	char **keys;

	if (jv->n == 0)
		return;
	keys = xcalloc(jv->n, sizeof(char *));
	for (size_t i = 0; i < jv->n; i++)
		keys[i] = jv->v[i].key;
	/* the keys stay valid: replace_keys reads them before it moves jv's
	 * entries (which own them) into out */
	(void)entry_vec_replace_keys(out, keys, jv->n, jv);
	free(keys);
}

/* the list file (identity id) is in out: apply the journal, note both as seen */
static int
load_journal(struct liststore *s, enum list_kind k, const struct file_ident *id,
    struct entry_vec *out, const char **error_r)
{
	struct filestore *fs = s->priv;
	struct entry_vec jv = { 0 };
	struct journal_pos pos;

	if (journal_read(s, k, 0, &jv, &pos, error_r) < 0) {
		entry_vec_clear(&jv);
		return -1;
	}
	apply_journal(out, &jv);
	entry_vec_clear(&jv);
	fs->jseen[k] = pos;
	fs->seen[k] = *id;
	fs->loaded[k] = 1;
	fs->loaded_at[k] = time(NULL);
	return 0;
}

static int
fs_load(struct liststore *s, enum list_kind k, struct entry_vec *out, const char **error_r)
{
	struct filestore *fs = s->priv;
	const char *path = fs->path[k];
	char *line = xmalloc(MAX_LIST_LINE + 2);
	struct file_ident id;
	unsigned lineno = 0, bad = 0;
	int toolong;
	ssize_t n;
	FILE *fp;

	ident_of(path, &id);
	fp = fopen(path, "r");
	if (fp == NULL) {
		free(line);
		if (errno == ENOENT)
			return load_journal(s, k, &id, out, error_r);
		return fs_fail(s, error_r, "cannot open %s: %s", path, strerror(errno));
	}
	while ((n = read_line(fp, line, MAX_LIST_LINE + 1, &toolong, NULL)) >= 0) {
		struct list_entry e;
		const char *err;

		lineno++;
		if (toolong) {
			log_warn("%s:%u: line longer than %d bytes; line skipped", path, lineno,
			    MAX_LIST_LINE);
			bad++;
			continue;
		}
		if (line_is_blank_or_comment(line) && memchr(line, '\0', (size_t)n) == NULL)
			continue;
		if (listentry_parse_buf(line, (size_t)n, &e, &err) < 0) {
			char esc[LOG_ESCAPE_BUFSZ];

			log_warn("%s:%u: %s: \"%s\"; line skipped", path, lineno, err,
			    log_escape(esc, line, (size_t)n));
			bad++;
			continue;
		}
		if (out->n >= MAX_LIST_ENTRIES) {
			log_warn("%s:%u: more than %u entries; the rest is ignored", path, lineno,
			    MAX_LIST_ENTRIES);
			listentry_clear(&e);
			break;
		}
		entry_vec_push(out, &e);
	}
	if (ferror(fp)) {
		fclose(fp);
		free(line);
		return fs_fail(s, error_r, "read error on %s: %s", path, strerror(errno));
	}
	fclose(fp);
	free(line);
	if (bad > 0)
		log_warn("%s: %u bad line(s) skipped, %zu entries loaded", path, bad, out->n);
	return load_journal(s, k, &id, out, error_r);
}

/* 0 the journal is as far as we read it, 1 it grew (only), 2 anything else */
static int
journal_state(const struct filestore *fs, enum list_kind k)
{
	const struct journal_pos *js = &fs->jseen[k];
	struct stat st;

	if (stat(fs->jpath[k], &st) < 0)
		return js->exists ? 2 : 0;
	if (!js->exists)
		return st.st_size == 0 ? 0 : 1;	/* a new journal: all of it is new */
	if (st.st_dev != js->dev || st.st_ino != js->ino || st.st_size < js->off)
		return 2;
	return st.st_size > js->off ? 1 : 0;
}

static int list_changed(struct liststore *s, enum list_kind k);

static int
fs_changed(struct liststore *s, enum list_kind k)
{
	struct filestore *fs = s->priv;

	return !fs->loaded[k] || list_changed(s, k) || journal_state(fs, k) != 0;
}

/* list k needs a reload, or only the journal's new tail; never blocks */
static int
fs_changes(struct liststore *s, struct list_changes *out)
{
	struct filestore *fs = s->priv;

	for (int k = 0; k < LIST_KINDS; k++) {
		struct journal_pos pos;
		const char *err;
		int js;

		if (!fs->loaded[k] || list_changed(s, (enum list_kind)k)) {
			out->reload[k] = 1;
			continue;
		}
		js = journal_state(fs, (enum list_kind)k);
		if (js == 0)
			continue;
		if (js == 2 || journal_read(s, (enum list_kind)k, fs->jseen[k].off, &out->got[k],
		    &pos, &err) < 0) {
			entry_vec_clear(&out->got[k]);
			out->reload[k] = 1;
			continue;
		}
		if (fs->jseen[k].exists && (pos.dev != fs->jseen[k].dev ||
		    pos.ino != fs->jseen[k].ino)) {
			/* replaced between the stat and the read: start over */
			entry_vec_clear(&out->got[k]);
			out->reload[k] = 1;
			continue;
		}
		fs->jseen[k] = pos;
	}
	return 0;
}

static int
list_changed(struct liststore *s, enum list_kind k)
{
	struct filestore *fs = s->priv;
	struct file_ident id;

	if (!fs->loaded[k])
		return 1;
	ident_of(fs->path[k], &id);
	if (!ident_equal(&id, &fs->seen[k]))
		return 1;
	/*
	 * Two rewrites in one timestamp tick can leave size and mtime equal and
	 * the inode reused. When the file we loaded was that fresh, load it once
	 * more a little later, when a further change would show.
	 */
	if (id.exists && id.mtime.tv_sec + 1 >= fs->loaded_at[k] &&
	    time(NULL) > fs->loaded_at[k] + 1)
		return 1;
	return 0;
}

/* a throw-away set of keys for one rewrite: key -> index into adds */
struct keyidx {
	struct hashidx t;
	char *used;	/* per add: already written */
};

static const char *
add_key(const void *adds, uint32_t i)
{
	return ((const struct list_entry *)adds)[i].key;
}

static void
keyidx_init(struct keyidx *ki, const struct list_entry *adds, size_t n)
{
	hashidx_init(&ki->t, n, add_key, adds);
	ki->used = xcalloc(n ? n : 1, 1);
	for (size_t i = 0; i < n; i++) {
		uint32_t old = hashidx_put(&ki->t, (uint32_t)i);

		if (old != HASHIDX_NONE)
			ki->used[old] = 1;	/* an earlier duplicate: the later wins */
	}
}

static long
keyidx_find(const struct keyidx *ki, const char *key)
{
	uint32_t i = hashidx_find(&ki->t, key, strlen(key));

	return i == HASHIDX_NONE ? -1 : (long)i;
}

/* keep the last entry of each key (a journal may hold one key twice) */
static void
dedupe_keep_last(struct entry_vec *v)
{
	struct keyidx ki;
	size_t j = 0;

	if (v->n < 2)
		return;
	keyidx_init(&ki, v->v, v->n);	/* marks every earlier duplicate used */
	for (size_t i = 0; i < v->n; i++) {
		if (ki.used[i])
			listentry_clear(&v->v[i]);
		else
			v->v[j++] = v->v[i];
	}
	v->n = j;
	hashidx_deinit(&ki.t);
	free(ki.used);
}

/*
 * The entries of journal k from byte `from` on, appended to out (bad lines
 * logged and skipped, the last of a key kept); *pos_r: the journal's
 * identity and the offset after the last whole line. A line still being
 * written is left for the next read. A missing journal is an empty one.
 */
static int
journal_read(struct liststore *s, enum list_kind k, off_t from, struct entry_vec *out,
    struct journal_pos *pos_r, const char **error_r)
{
	struct filestore *fs = s->priv;
	const char *path = fs->jpath[k];
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct entry_vec got = { 0 };
	struct stat st;
	char *buf, *p, *end;
	size_t len, have = 0;
	unsigned bad = 0;

	memset(pos_r, 0, sizeof(*pos_r));
	if (fd < 0) {
		if (errno == ENOENT)
			return 0;
		return fs_fail(s, error_r, "cannot open %s: %s", path, strerror(errno));
	}
	if (fstat(fd, &st) < 0) {
		close(fd);
		return fs_fail(s, error_r, "cannot stat %s: %s", path, strerror(errno));
	}
	pos_r->exists = 1;
	pos_r->dev = st.st_dev;
	pos_r->ino = st.st_ino;
	pos_r->off = from;
	if (st.st_size <= from) {
		close(fd);
		return 0;
	}
	if (st.st_size - from > JOURNAL_READ_MAX) {
		close(fd);
		return fs_fail(s, error_r, "%s: more than %d MB to read; not read", path,
		    JOURNAL_READ_MAX >> 20);
	}
	len = (size_t)(st.st_size - from);
	buf = xmalloc(len + 1);
	while (have < len) {
		ssize_t r = pread(fd, buf + have, len - have, from + (off_t)have);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			close(fd);
			free(buf);
			return fs_fail(s, error_r, "read error on %s: %s", path, strerror(errno));
		}
		if (r == 0)
			break;
		have += (size_t)r;
	}
	close(fd);
	end = have ? memrchr(buf, '\n', have) : NULL;
	for (p = buf; end != NULL && p <= end; ) {
		char *nl = memchr(p, '\n', (size_t)(end - p) + 1);
		size_t n = (size_t)(nl - p);
		struct list_entry e;
		const char *err;

		*nl = '\0';
		if (n > 0 && p[n - 1] == '\r')
			p[--n] = '\0';
		if (n > MAX_LIST_LINE || memchr(p, '\0', n) != NULL) {
			bad++;
		} else if (!line_is_blank_or_comment(p)) {
			if (listentry_parse_line(p, &e, &err) < 0)
				bad++;
			else if (out->n + got.n >= MAX_LIST_ENTRIES)
				listentry_clear(&e);
			else
				entry_vec_push(&got, &e);
		}
		p = nl + 1;
	}
	if (end != NULL)
		pos_r->off = from + (off_t)(end - buf) + 1;
	free(buf);
	if (bad > 0)
		log_warn("%s: %u bad line(s) skipped", path, bad);
	dedupe_keep_last(&got);
	for (size_t i = 0; i < got.n; i++)
		entry_vec_push(out, &got.v[i]);
	got.n = 0;
	entry_vec_clear(&got);
	return 0;
}

static void
write_entry(FILE *out, const struct list_entry *e)
{
	char *l = listentry_format_line(e);

	fprintf(out, "%s\n", l);
	free(l);
}

/*
 * DIR/.lock, open and locked. wait: block until it is free (an admin's
 * command; says so when it has to wait); else fail at once if another
 * process holds it. -1 with *error_r, or the descriptor (close to unlock).
 */
static int
take_lock(struct liststore *s, int wait, const char **error_r)
{
	struct filestore *fs = s->priv;
	char *lockpath = xasprintf("%s/.lock", fs->dir);
	int fd = open(lockpath, O_CREAT | O_RDWR | O_CLOEXEC, 0640);

	if (fd < 0) {
		fs_fail(s, error_r, "cannot open %s: %s", lockpath, strerror(errno));
		free(lockpath);
		return -1;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		if (errno != EWOULDBLOCK || !wait) {
			fs_fail(s, error_r, errno == EWOULDBLOCK ? "%s " LISTSTORE_BUSY "%s" :
			    "cannot lock %s: %s", lockpath, errno == EWOULDBLOCK ? "" : strerror(errno));
			close(fd);
			free(lockpath);
			return -1;
		}
		log_warn("waiting for %s (another process holds it)", lockpath);
		if (flock(fd, LOCK_EX) < 0) {
			fs_fail(s, error_r, "cannot lock %s: %s", lockpath, strerror(errno));
			close(fd);
			free(lockpath);
			return -1;
		}
	}
	free(lockpath);
	return fd;
}

/*
 * Rewrite list k under the lock (taken here, waiting for it, unless the
 * caller holds it: held >= 0). The journal is folded in and removed. adds:
 * replace entries with the same key, or append; delkey: drop that key;
 * replace_all: write exactly adds (the journal is dropped).
 */
static int
fs_rewrite(struct liststore *s, enum list_kind k, const struct list_entry *adds0, size_t nadd0,
    const char *delkey, int replace_all, int *found_r, int held, const char **error_r)
{
	struct filestore *fs = s->priv;
	const char *path = fs->path[k];
	char *tmp = xasprintf("%s/.%s.list.tmp.%ld", fs->dir, list_kind_name(k), (long)getpid());
	char *line = xmalloc(MAX_LIST_LINE + 2);
	long long now = (long long)time(NULL);
	int lockfd = held, found = 0, rc = -1, toolong, fresh = 0;
	ssize_t n;
	FILE *in = NULL, *out = NULL;
	struct keyidx ki;
	struct entry_vec jv = { 0 };
	struct journal_pos jpos = { 0 };
	struct list_entry *adds = NULL;
	size_t nadd = 0;

	memset(&ki, 0, sizeof(ki));
	if (held < 0 && (lockfd = take_lock(s, 1, error_r)) < 0)
		goto done;
	/* the journal's entries first: the caller's adds replace them */
	if (!replace_all && journal_read(s, k, 0, &jv, &jpos, error_r) < 0)
		goto done;
	nadd = jv.n + nadd0;
	adds = xcalloc(nadd + 1, sizeof(*adds));
	if (jv.n > 0)
		memcpy(adds, jv.v, jv.n * sizeof(*adds));
	if (nadd0 > 0)
		memcpy(adds + jv.n, adds0, nadd0 * sizeof(*adds));	/* shallow: jv, caller own */
	keyidx_init(&ki, adds, nadd);
	if (!replace_all) {
		in = fopen(path, "r");
		if (in == NULL && errno != ENOENT) {
			fs_fail(s, error_r, "cannot open %s: %s", path, strerror(errno));
			goto done;
		}
	}
	fresh = (in == NULL);
	out = fopen(tmp, "w");
	if (out == NULL) {
		fs_fail(s, error_r, "cannot create %s: %s", tmp, strerror(errno));
		goto done;
	}
	if (fresh)
		fprintf(out, "# Portcullis %s list: one entry a line.\n"
		    "# ENTRY [added=UNIXTIME] [expires=UNIXTIME|0] [origin=admin|auto-ban|import] [reason=TEXT]\n"
		    "# ENTRY: 192.0.2.1, 192.0.2.0/24, 2001:db8::/32, host:mx.example.com, host:.example.com,\n"
		    "#        user@example.com, @example.com\n", list_kind_name(k));
	while (in != NULL && (n = read_line(in, line, MAX_LIST_LINE + 1, &toolong, out)) >= 0) {
		struct list_entry e;
		const char *err;

		if (!toolong && !line_is_blank_or_comment(line) &&
		    listentry_parse_buf(line, (size_t)n, &e, &err) == 0) {
			int drop = listentry_is_expired(&e, now);
			long i = nadd ? keyidx_find(&ki, e.key) : -1;

			if (delkey != NULL && strcmp(e.key, delkey) == 0) {
				drop = 1;
				found = 1;
				if (i >= 0)
					ki.used[i] = 1;	/* journalled too: gone as well */
			} else if (i >= 0) {
				drop = 1;
				if (!ki.used[i]) {
					write_entry(out, &adds[i]);
					ki.used[i] = 1;
				}
				found = 1;
			}
			listentry_clear(&e);
			if (drop)
				continue;
		}
		if (toolong)
			continue;	/* read_line() copied it whole */
		/* comments and bad lines verbatim, NUL bytes and all */
		fwrite(line, 1, (size_t)n, out);
		putc('\n', out);
	}
	if (in != NULL && ferror(in)) {
		fs_fail(s, error_r, "read error on %s: %s", path, strerror(errno));
		goto done;
	}
	for (size_t i = 0; i < nadd; i++) {
		if (ki.used[i] || listentry_is_expired(&adds[i], now))
			continue;
		if (delkey != NULL && strcmp(adds[i].key, delkey) == 0) {
			found = 1;	/* only in the journal */
			continue;
		}
		write_entry(out, &adds[i]);
	}
	if (fflush(out) != 0 || fsync(fileno(out)) != 0 || ferror(out)) {
		fs_fail(s, error_r, "cannot write %s: %s", tmp, strerror(errno));
		goto done;
	}
	if (fclose(out) != 0) {
		out = NULL;
		fs_fail(s, error_r, "cannot write %s: %s", tmp, strerror(errno));
		goto done;
	}
	out = NULL;
	if (rename(tmp, path) < 0) {
		fs_fail(s, error_r, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
		goto done;
	}
	/* the list holds the journal now (a crash before this line only
	 * applies the same entries twice) */
	if (unlink(fs->jpath[k]) < 0 && errno != ENOENT) {
		fs_fail(s, error_r, "cannot remove %s: %s", fs->jpath[k], strerror(errno));
		goto done;
	}
	if (fsutil_fsync_dir(fs->dir) < 0) {
		fs_fail(s, error_r, "cannot fsync %s: %s", fs->dir, strerror(errno));
		goto done;
	}
	if (found_r != NULL)
		*found_r = found;
	rc = 0;
done:
	if (out != NULL)
		fclose(out);
	if (rc < 0)
		unlink(tmp);
	if (in != NULL)
		fclose(in);
	if (lockfd >= 0 && held < 0)
		close(lockfd);	/* releases the flock */
	hashidx_deinit(&ki.t);
	free(ki.used);
	free(adds);
	entry_vec_clear(&jv);
	free(tmp);
	free(line);
	return rc;
}

static int
fs_add(struct liststore *s, enum list_kind k, const struct list_entry *e, const char **error_r)
{
	return fs_rewrite(s, k, e, 1, NULL, 0, NULL, -1, error_r);
}

static int
fs_add_many(struct liststore *s, enum list_kind k, const struct list_entry *v, size_t n,
    void (*progress)(void *arg, size_t done), void *arg, const char **error_r)
{
	int rc = fs_rewrite(s, k, v, n, NULL, 0, NULL, -1, error_r);

	if (rc == 0 && progress != NULL)
		progress(arg, n);
	return rc;
}

static int
fs_save_all(struct liststore *s, enum list_kind k, const struct entry_vec *v,
    const char **error_r)
{
	/* the daemon's local copy: never wait for the lock (another worker
	 * is writing the same copy; the caller tries again later) */
	int lockfd = take_lock(s, 0, error_r), rc;

	if (lockfd < 0)
		return -1;
	rc = fs_rewrite(s, k, v->v, v->n, NULL, 1, NULL, lockfd, error_r);
	close(lockfd);
	return rc;
}

static int
fs_del(struct liststore *s, enum list_kind k, const char *key, int *found_r,
    const char **error_r)
{
	return fs_rewrite(s, k, NULL, 0, key, 0, found_r, -1, error_r);
}

/*
 * Append entries to journal k: one write, one fdatasync, O(batch) whatever
 * the list's size. Never waits for the lock. Folds the journal into the list
 * once it outgrows half of it.
 */
static int
fs_add_batch(struct liststore *s, enum list_kind k, const struct list_entry *v, size_t n,
    const char **error_r)
{
	struct filestore *fs = s->priv;
	struct journal_pos *js = &fs->jseen[k];
	long long now = (long long)time(NULL);
	int lockfd, fd = -1, rc = -1, created;
	struct stat before, lst;
	char *buf = NULL;
	size_t len = 0, cap = 0, done = 0;
	off_t after;

	if ((lockfd = take_lock(s, 0, error_r)) < 0)
		return -1;
	for (size_t i = 0; i < n; i++) {
		char *l;
		size_t ll;

		if (listentry_is_expired(&v[i], now))
			continue;
		l = listentry_format_line(&v[i]);
		ll = strlen(l);
		if (len + ll + 2 > cap) {
			cap = (len + ll + 2) * 2;
			buf = xrealloc(buf, cap);
		}
		memcpy(buf + len, l, ll);
		len += ll;
		buf[len++] = '\n';
		free(l);
	}
	if (len == 0) {
		rc = 0;
		goto done;
	}
	created = access(fs->jpath[k], F_OK) != 0;
	fd = open(fs->jpath[k], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
	if (fd < 0 || fstat(fd, &before) < 0) {
		fs_fail(s, error_r, "cannot open %s: %s", fs->jpath[k], strerror(errno));
		goto done;
	}
	while (done < len) {
		ssize_t w = write(fd, buf + done, len - done);

		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0) {
			fs_fail(s, error_r, "cannot write %s: %s", fs->jpath[k], strerror(errno));
			/* a torn last line is skipped by readers, and the next
			 * append starts on a fresh line */
			if (done > 0 && write(fd, "\n", 1) < 0)
				log_warn("%s: cannot end a torn line", fs->jpath[k]);
			goto done;
		}
		done += (size_t)w;
	}
	if (fdatasync(fd) < 0 || (created && fsutil_fsync_dir(fs->dir) < 0)) {
		fs_fail(s, error_r, "cannot fsync %s: %s", fs->jpath[k], strerror(errno));
		goto done;
	}
	after = before.st_size + (off_t)len;
	/* our own lines: this store need not read them back */
	if (fs->loaded[k] && ((js->exists && js->dev == before.st_dev &&
	    js->ino == before.st_ino && js->off == before.st_size) ||
	    (!js->exists && before.st_size == 0))) {
		js->exists = 1;
		js->dev = before.st_dev;
		js->ino = before.st_ino;
		js->off = after;
	}
	rc = 0;
	/* amortised O(1): the O(list) rewrite once the journal is half the list */
	if (after > JOURNAL_COMPACT_MIN &&
	    (stat(fs->path[k], &lst) < 0 || after > lst.st_size / 2)) {
		const char *err;

		if (fs_rewrite(s, k, NULL, 0, NULL, 0, NULL, lockfd, &err) < 0)
			log_warn("%s not folded into %s (its entries stay in force): %s",
			    fs->jpath[k], fs->path[k], err);
	}
done:
	if (fd >= 0)
		close(fd);
	close(lockfd);
	free(buf);
	return rc;
}

/* DIR/.NAME, one line (a cache's note of the shared store's generation) */
static int
fs_meta_get(struct liststore *s, const char *name, char *buf, size_t cap, int *found_r,
    const char **error_r)
{
	struct filestore *fs = s->priv;
	char *path = xasprintf("%s/.%s", fs->dir, name);
	FILE *fp = fopen(path, "r");

	*found_r = 0;
	buf[0] = '\0';
	if (fp == NULL) {
		if (errno == ENOENT) {
			free(path);
			return 0;
		}
		fs_fail(s, error_r, "cannot open %s: %s", path, strerror(errno));
		free(path);
		return -1;
	}
	if (fgets(buf, (int)cap, fp) != NULL) {
		buf[strcspn(buf, "\r\n")] = '\0';
		*found_r = 1;
	}
	fclose(fp);
	free(path);
	return 0;
}

static int
fs_meta_set(struct liststore *s, const char *name, const char *value, int only_if_absent,
    int *set_r, const char **error_r)
{
	struct filestore *fs = s->priv;
	char *path = xasprintf("%s/.%s", fs->dir, name);
	char *text = xasprintf("%s\n", value);
	const char *err;
	int rc = -1;

	*set_r = 0;
	if (only_if_absent && access(path, F_OK) == 0) {
		rc = 0;
		goto done;
	}
	if (fsutil_replace(path, text, strlen(text), 0644, &err) < 0) {
		fs_fail(s, error_r, "%s", err);
		goto done;
	}
	*set_r = 1;
	rc = 0;
done:
	free(path);
	free(text);
	return rc;
}

const struct liststore_ops liststore_file_ops = {
	.scheme = "file",
	.open = fs_open,
	.close = fs_close,
	.load = fs_load,
	.add = fs_add,
	.del = fs_del,
	.changed = fs_changed,
	.add_many = fs_add_many,
	.add_batch = fs_add_batch,
	.changes = fs_changes,
	.save_all = fs_save_all,
	.meta_get = fs_meta_get,
	.meta_set = fs_meta_set,
};
