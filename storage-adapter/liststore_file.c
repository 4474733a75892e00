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

struct filestore {
	char *dir;
	char *path[LIST_KINDS];
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
mkdir_p(const char *dir)
{
	char *p = xstrdup(dir);
	int rc = 0;

	for (char *q = p + 1; *q; q++) {
		if (*q != '/')
			continue;
		*q = '\0';
		if (mkdir(p, 0755) < 0 && errno != EEXIST) {
			rc = -1;
			break;
		}
		*q = '/';
	}
	if (rc == 0 && mkdir(p, 0750) < 0 && errno != EEXIST)
		rc = -1;
	free(p);
	return rc;
}

static int
fs_open(struct liststore *s, const char *arg, const char **error_r)
{
	struct filestore *fs;
	struct stat st;

	if (*arg == '\0')
		return fs_fail(s, error_r, "file: needs a directory, e.g. file:/var/lib/portcullis/lists");
	if (mkdir_p(arg) < 0)
		return fs_fail(s, error_r, "cannot create directory %s: %s", arg, strerror(errno));
	if (stat(arg, &st) < 0 || !S_ISDIR(st.st_mode))
		return fs_fail(s, error_r, "%s is not a directory", arg);
	fs = xcalloc(1, sizeof(*fs));
	fs->dir = xstrdup(arg);
	fs->path[LIST_KILL] = xasprintf("%s/kill.list", arg);
	fs->path[LIST_ACCEPT] = xasprintf("%s/accept.list", arg);
	s->priv = fs;
	return 0;
}

static void
fs_close(struct liststore *s)
{
	struct filestore *fs = s->priv;

	free(fs->dir);
	for (int k = 0; k < LIST_KINDS; k++)
		free(fs->path[k]);
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
		if (errno == ENOENT) {
			fs->seen[k] = id;
			fs->loaded[k] = 1;
			fs->loaded_at[k] = time(NULL);
			return 0;
		}
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
	fs->seen[k] = id;
	fs->loaded[k] = 1;
	fs->loaded_at[k] = time(NULL);
	if (bad > 0)
		log_warn("%s: %u bad line(s) skipped, %zu entries loaded", path, bad, out->n);
	return 0;
}

static int
fs_changed(struct liststore *s, enum list_kind k)
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

static int
fsync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY);
	int rc;

	if (fd < 0)
		return -1;
	rc = fsync(fd);
	close(fd);
	return rc;
}

/* a throw-away set of keys for one rewrite: key -> index into adds */
struct keyidx {
	const struct list_entry *adds;
	uint32_t *slot;
	size_t mask;
	char *used;	/* per add: already written */
};

static uint32_t
key_hash(const char *s)
{
	uint32_t h = 2166136261u;

	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 16777619u;
	return h;
}

static void
keyidx_init(struct keyidx *ki, const struct list_entry *adds, size_t n)
{
	size_t cap = 16;

	while (cap < n * 2)
		cap <<= 1;
	ki->adds = adds;
	ki->mask = cap - 1;
	ki->slot = xmalloc(cap * sizeof(uint32_t));
	memset(ki->slot, 0xff, cap * sizeof(uint32_t));
	ki->used = xcalloc(n ? n : 1, 1);
	for (size_t i = 0; i < n; i++) {
		size_t h = key_hash(adds[i].key) & ki->mask;

		while (ki->slot[h] != UINT32_MAX && strcmp(adds[ki->slot[h]].key, adds[i].key) != 0)
			h = (h + 1) & ki->mask;
		if (ki->slot[h] != UINT32_MAX)
			ki->used[ki->slot[h]] = 1;	/* an earlier duplicate: the later wins */
		ki->slot[h] = (uint32_t)i;
	}
}

static long
keyidx_find(const struct keyidx *ki, const char *key)
{
	size_t h = key_hash(key) & ki->mask;

	while (ki->slot[h] != UINT32_MAX) {
		if (strcmp(ki->adds[ki->slot[h]].key, key) == 0)
			return (long)ki->slot[h];
		h = (h + 1) & ki->mask;
	}
	return -1;
}

static void
write_entry(FILE *out, const struct list_entry *e)
{
	char *l = listentry_format_line(e);

	fprintf(out, "%s\n", l);
	free(l);
}

/*
 * Rewrite list k under the lock. adds: replace entries with the same key, or
 * append; delkey: drop that key; replace_all: write exactly adds.
 */
static int
fs_rewrite(struct liststore *s, enum list_kind k, const struct list_entry *adds, size_t nadd,
    const char *delkey, int replace_all, int *found_r, const char **error_r)
{
	struct filestore *fs = s->priv;
	const char *path = fs->path[k];
	char *lockpath = xasprintf("%s/.lock", fs->dir);
	char *tmp = xasprintf("%s/.%s.list.tmp.%ld", fs->dir, list_kind_name(k), (long)getpid());
	char *line = xmalloc(MAX_LIST_LINE + 2);
	long long now = (long long)time(NULL);
	int lockfd = -1, found = 0, rc = -1, toolong, fresh = 0;
	ssize_t n;
	FILE *in = NULL, *out = NULL;
	struct keyidx ki;

	keyidx_init(&ki, adds, nadd);
	lockfd = open(lockpath, O_CREAT | O_RDWR | O_CLOEXEC, 0640);
	if (lockfd < 0) {
		fs_fail(s, error_r, "cannot open %s: %s", lockpath, strerror(errno));
		goto done;
	}
	if (flock(lockfd, LOCK_EX) < 0) {
		fs_fail(s, error_r, "cannot lock %s: %s", lockpath, strerror(errno));
		goto done;
	}
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

			if (i >= 0) {
				drop = 1;
				if (!ki.used[i]) {
					write_entry(out, &adds[i]);
					ki.used[i] = 1;
				}
				found = 1;
			} else if (delkey != NULL && strcmp(e.key, delkey) == 0) {
				drop = 1;
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
	for (size_t i = 0; i < nadd; i++)
		if (!ki.used[i] && !listentry_is_expired(&adds[i], now))
			write_entry(out, &adds[i]);
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
	if (fsync_dir(fs->dir) < 0) {
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
	if (lockfd >= 0)
		close(lockfd);	/* releases the flock */
	free(ki.slot);
	free(ki.used);
	free(lockpath);
	free(tmp);
	free(line);
	return rc;
}

static int
fs_add(struct liststore *s, enum list_kind k, const struct list_entry *e, const char **error_r)
{
	return fs_rewrite(s, k, e, 1, NULL, 0, NULL, error_r);
}

static int
fs_add_many(struct liststore *s, enum list_kind k, const struct list_entry *v, size_t n,
    void (*progress)(void *arg, size_t done), void *arg, const char **error_r)
{
	int rc = fs_rewrite(s, k, v, n, NULL, 0, NULL, error_r);

	if (rc == 0 && progress != NULL)
		progress(arg, n);
	return rc;
}

static int
fs_save_all(struct liststore *s, enum list_kind k, const struct entry_vec *v,
    const char **error_r)
{
	return fs_rewrite(s, k, v->v, v->n, NULL, 1, NULL, error_r);
}

static int
fs_del(struct liststore *s, enum list_kind k, const char *key, int *found_r,
    const char **error_r)
{
	return fs_rewrite(s, k, NULL, 0, key, 0, found_r, error_r);
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
	.save_all = fs_save_all,
};
