/*
 * mailstore_maildir - the Maildir++ backend of mailstore.h, in Dovecot's
 * formats, so that Dovecot and Portcullis can serve one store in turn.
 *
 * Layout: ROOT/DOMAIN/LOCAL/Maildir is INBOX; folder "A.B" is the directory
 * Maildir/.A.B (each with tmp/ new/ cur/ and a "maildirfolder" file). In each
 * folder:
 *   dovecot-uidlist   "3 V<uidvalidity> N<next uid> G<guid> r<uid>" then one
 *                     line "<uid> [<ext>...] :<base name>" per message; r is
 *                     ours, the first UID still \Recent (Dovecot keeps a
 *                     header field it does not know); W<n> in a record is
 *                     the size with CRLF when the name has no ,W=
 *   dovecot-uidlist.lock  the dotlock ("PID:HOST") held while UIDs are
 *                     assigned or the list rewritten; stale after 120 s or
 *                     when its local PID is gone (Dovecot's rules)
 *   dovecot-keywords  "<index> <name>" lines; keyword index i is letter 'a'+i
 *                     in file names; rewritten under the uidlist lock
 *   cur/BASE:2,FLAGS  flags D F P R S T then keyword letters, ASCII order;
 *                     BASE carries ,S=<size> and ,W=<size with CRLF>
 *   portcullis.cache  ours: strings the doors computed per message (IMAP
 *                     ENVELOPE, BODYSTRUCTURE), by base name (mailstore_cache.c;
 *                     Dovecot ignores files it does not know)
 *
 *   mdname_* / md_uidlist_* / md_keywords_*
 *                     the pure parsers and writers: mailstore_maildir_fmt.c
 *   mailstore_*       mailstore.h
 *   mailstore_deliver_*  delivery into new/ (names with ,S= and ,W=), for
 *                     storage-adapter/maildir.c and so the SMTP door
 *
 * Opening a folder moves new/ to cur/ as Dovecot does (name + ":2,") and gives
 * new files UIDs in Dovecot's order (time, microseconds, name). A corrupt
 * dovecot-uidlist is logged and rebuilt with a new, larger UIDVALIDITY; bad
 * dovecot-keywords lines are skipped (both as Dovecot does). Never follows a
 * message name that is not one path component; never reads a message into
 * memory (mailstore_msg_open gives a descriptor).
 *
 * A sync of a folder nothing changed in since the last one is served from
 * the process's folder snapshot (snap_*: stamps of new/, cur/ and the two
 * dovecot-* files, Dovecot's one-second rule for directories), without the
 * lock, the uidlist parse or the directory reads.
 *
 * Not thread-safe per object: one store, one thread at a time (the
 * process-wide snapshots and string cache have their own mutexes). Several
 * processes and Dovecot may share a store: the uidlist lock orders them.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include "common/fsutil.h"
#include "common/log.h"
#include "common/xmalloc.h"
#include "storage-adapter/mailstore.h"
#include "storage-adapter/mailstore_cache.h"
#include "storage-adapter/mailstore_maildir.h"

#define UIDLIST "dovecot-uidlist"
#define KEYWORDS "dovecot-keywords"
#define LOCK_STALE_SECS 120	/* Dovecot's MAILDIR_UIDLIST_LOCK_STALE_TIMEOUT */
#define TRASH_DIR "..DOVECOT-TRASHED"	/* Dovecot's, so a leftover is one name */

static _Thread_local char errbuf[512];
static atomic_ulong append_seq;

static const char *
err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static const char *
err(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(errbuf, sizeof(errbuf), fmt, ap);
	va_end(ap);
	return errbuf;
}

/* ------------------------------------------------------------------ */
/* files                                                                */

/* LFs without a CR before them in P (a piece of a stream; *last_cr carries
 * the previous piece's last byte), found with memchr: a delivery's hot path */
static uint64_t
bare_lfs(const unsigned char *p, size_t n, int *last_cr)
{
	const unsigned char *q = p, *end = p + n;
	uint64_t k = 0;

	if (n == 0)
		return 0;
	while ((q = memchr(q, '\n', (size_t)(end - q))) != NULL) {
		if (q == p ? !*last_cr : q[-1] != '\r')
			k++;
		q++;
	}
	*last_cr = end[-1] == '\r';
	return k;
}

/* the whole file (capped) into a fresh buffer; -1 with errno; ENOENT kept */
static int
read_capped(const char *path, size_t cap, char **buf_r, size_t *len_r)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	struct stat st;
	char *buf;
	size_t n = 0, alloc;

	if (fd < 0)
		return -1;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		errno = EINVAL;
		return -1;
	}
	if ((uint64_t)st.st_size > cap) {
		close(fd);
		errno = EFBIG;
		return -1;
	}
	alloc = (size_t)st.st_size + 1;
	buf = xmalloc(alloc);
	for (;;) {
		ssize_t r;

		if (n + 1 >= alloc) {
			if (alloc > cap) {
				free(buf);
				close(fd);
				errno = EFBIG;
				return -1;
			}
			alloc *= 2;
			buf = xrealloc(buf, alloc);
		}
		r = read(fd, buf + n, alloc - n - 1);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			int e = errno;

			free(buf);
			close(fd);
			errno = e;
			return -1;
		}
		if (r == 0)
			break;
		n += (size_t)r;
	}
	close(fd);
	buf[n] = '\0';
	*buf_r = buf;
	*len_r = n;
	return 0;
}

/*
 * Write DATA to TMP and rename it over PATH, its mtime past PATH's old one
 * (Dovecot notices a rewrite by mtime).
 */
static int
replace_file(const char *path, const char *tmp, const char *data, size_t len,
    const char **error_r)
{
	struct stat old;
	int have_old = stat(path, &old) == 0;
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	struct stat st;

	if (fd < 0) {
		*error_r = err("cannot create %s: %s", tmp, strerror(errno));
		return -1;
	}
	if (fsutil_write_all(fd, data, len) < 0 || fstat(fd, &st) < 0) {
		*error_r = err("cannot write %s: %s", tmp, strerror(errno));
		close(fd);
		unlink(tmp);
		return -1;
	}
	if (have_old && st.st_mtime <= old.st_mtime) {
		struct timespec ts[2] = { { .tv_sec = old.st_mtime + 1 },
			{ .tv_sec = old.st_mtime + 1 } };

		(void)futimens(fd, ts);
	}
	if (fdatasync(fd) < 0 || close(fd) < 0) {
		*error_r = err("cannot write %s: %s", tmp, strerror(errno));
		unlink(tmp);
		return -1;
	}
	if (rename(tmp, path) < 0) {
		*error_r = err("cannot rename %s: %s", tmp, strerror(errno));
		unlink(tmp);
		return -1;
	}
	return 0;
}

static void
my_hostname(char *host, size_t n)
{
	if (gethostname(host, n) < 0 || host[0] == '\0')
		snprintf(host, n, "localhost");
	host[n - 1] = '\0';
	host[strcspn(host, "/:")] = '\0';
}

/*
 * Dovecot's dotlock on PATH: PATH.lock created exclusively with "PID:HOST".
 * A lock whose local PID is gone, or untouched for 120 s, is stale.
 */
static int
dotlock_take(const char *path, char **lock_r, const char **error_r)
{
	char *lock = xasprintf("%s.lock", path);
	char host[256], content[320];
	time_t deadline = time(NULL) + MAX_MAILSTORE_LOCK_WAIT;
	unsigned delay_ms = 5;

	my_hostname(host, sizeof(host));
	snprintf(content, sizeof(content), "%ld:%s", (long)getpid(), host);
	for (;;) {
		int fd = open(lock, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
		struct stat st;

		if (fd >= 0) {
			int e = fsutil_write_all(fd, content, strlen(content));

			if (close(fd) < 0 || e < 0) {
				*error_r = err("cannot write %s: %s", lock, strerror(errno));
				unlink(lock);
				free(lock);
				return -1;
			}
			*lock_r = lock;
			return 0;
		}
		if (errno != EEXIST) {
			*error_r = err("cannot create %s: %s", lock, strerror(errno));
			free(lock);
			return -1;
		}
		if (lstat(lock, &st) == 0) {
			char buf[320];
			int lfd = open(lock, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
			ssize_t r = lfd >= 0 ? read(lfd, buf, sizeof(buf) - 1) : -1;
			int stale = time(NULL) - st.st_mtime > LOCK_STALE_SECS;

			if (lfd >= 0)
				close(lfd);
			if (r > 0) {
				char *colon;

				buf[r] = '\0';
				buf[strcspn(buf, "\n")] = '\0';
				colon = strchr(buf, ':');
				if (colon && strcmp(colon + 1, host) == 0) {
					long pid = strtol(buf, NULL, 10);

					if (pid > 0 && pid != (long)getpid() &&
					    kill((pid_t)pid, 0) < 0 && errno == ESRCH)
						stale = 1;
				}
			}
			if (stale) {
				log_warn("mailstore: overriding stale lock %s", lock);
				unlink(lock);
				continue;
			}
		}
		if (time(NULL) >= deadline) {
			*error_r = err("timed out waiting for %s", lock);
			free(lock);
			return -1;
		}
		{
			struct timespec ts = { 0, (long)delay_ms * 1000000L };

			nanosleep(&ts, NULL);
			if (delay_ms < 100)
				delay_ms *= 2;
		}
	}
}

static void
dotlock_release(char **lock)
{
	if (*lock == NULL)
		return;
	unlink(*lock);
	free(*lock);
	*lock = NULL;
}

/* rm -r of a folder directory: depth capped, symlinks removed not followed */
static int
rm_tree_at(int at, const char *name, int depth)
{
	int fd;
	DIR *d;
	struct dirent *de;
	int rc = 0;

	if (unlinkat(at, name, 0) == 0 || errno == ENOENT)
		return 0;
	if (errno != EISDIR && errno != EPERM)
		return -1;
	if (depth > 4)
		return -1;
	fd = openat(at, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -1;
	d = fdopendir(fd);
	if (d == NULL) {
		close(fd);
		return -1;
	}
	while ((de = readdir(d)) != NULL) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		if (rm_tree_at(dirfd(d), de->d_name, depth + 1) < 0)
			rc = -1;
	}
	closedir(d);
	if (unlinkat(at, name, AT_REMOVEDIR) < 0 && errno != ENOENT)
		rc = -1;
	return rc;
}

/* ------------------------------------------------------------------ */
/* the store                                                            */

struct mailstore {
	char *md;		/* ROOT/DOMAIN/LOCAL/Maildir */
	char *user;
};

struct ms_msg {
	struct mailstore_msg pub;
	char *fname;		/* current name, in cur/ or new/ (fname_free) */
	time_t date;		/* the file's mtime, once read */
	unsigned in_new:1, date_known:1;
	unsigned fname_in_block:1;	/* fname points into box->names */
};

struct snap;

struct mailstore_box {
	struct mailstore *ms;
	char *dir;		/* the folder's Maildir */
	char *name;
	uint32_t uidvalidity, uidnext;
	struct ms_msg *msgs;
	size_t n, cap;
	char *names;		/* the names of a list copied from a snapshot, in one block */
	struct snap *shared;	/* msgs is this snapshot's own array (read-only; box_own) */
	struct snap *retired;	/* the one box_own left: kept until the next sync, for
				   the mailstore_box_msg pointers callers hold */
	char *kw[26];
	unsigned claim:1;	/* takes \Recent (SELECT), else only looks (STATUS) */
	/* the folder snapshot (snap_*) this list was built from: 0 none */
	uint64_t snap_gen;
	/* new/ and cur/ as the last full sync saw them before reading them */
	struct stat st_new, st_cur;
	int st_new_ok, st_cur_ok;
};

struct mailstore_append {
	struct mailstore_box *box;
	char *tmp;		/* DIR/tmp/NAME */
	char *name;
	int fd;
	uint64_t size, vsize;
	int last_cr;
};

static int
component_ok(const char *s, size_t n)
{
	if (n == 0 || n > 255 || s[0] == '.')
		return 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c <= 0x20 || c >= 0x7f || c == '/' || c == '\\')
			return 0;
	}
	return 1;
}

int
mailstore_folder_is_valid(const char *name)
{
	size_t n = strnlen(name, MAX_MAILSTORE_FOLDER_NAME + 1);

	if (n == 0 || n > MAX_MAILSTORE_FOLDER_NAME || name[0] == '.' || name[n - 1] == '.' ||
	    strstr(name, "..") != NULL)
		return 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)name[i];

		if (c < 0x20 || c >= 0x7f || c == '/' || c == '\\' || c == '*' || c == '%')
			return 0;
	}
	return 1;
}

static int
is_inbox(const char *name)
{
	return strcasecmp(name, "INBOX") == 0;
}

int
mailstore_open(const char *root, const char *user, struct mailstore **ms_r, const char **error_r)
{
	const char *at = strrchr(user, '@');
	char dom[256];
	size_t dl;
	struct mailstore *ms;
	char *path;

	if (at == NULL || !component_ok(user, (size_t)(at - user))) {
		*error_r = err("user name not usable as a mailbox");
		return -1;
	}
	dl = strlen(at + 1);
	if (dl >= sizeof(dom) || !component_ok(at + 1, dl)) {
		*error_r = err("user name not usable as a mailbox");
		return -1;
	}
	for (size_t i = 0; i <= dl; i++)
		dom[i] = (char)tolower((unsigned char)at[1 + i]);
	ms = xcalloc(1, sizeof(*ms));
	ms->user = xstrdup(user);
	ms->md = xasprintf("%s/%s/%.*s/Maildir", root, dom, (int)(at - user), user);
	/* ROOT/DOMAIN/LOCAL/Maildir/{cur,new,tmp}, made as needed (mkdir -p);
	 * on a delivery's path: three stats when they are there */
	{
		static const char *const sub[] = { "cur", "new", "tmp" };
		int have = 0;

		for (int i = 0; i < 3; i++) {
			struct stat st;

			path = xasprintf("%s/%s", ms->md, sub[i]);
			if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
				have++;
			free(path);
		}
		if (have == 3) {
			*ms_r = ms;
			return 0;
		}
	}
	(void)fsutil_mkdir_p(ms->md, 0700, 0700);	/* the subdirectories below say why */
	{
		static const char *const sub[] = { "cur", "new", "tmp" };

		for (int i = 0; i < 3; i++) {
			path = xasprintf("%s/%s", ms->md, sub[i]);
			if (mkdir(path, 0700) < 0 && errno != EEXIST) {
				*error_r = err("cannot create %s: %s", path, strerror(errno));
				free(path);
				mailstore_free(&ms);
				return -1;
			}
			free(path);
		}
	}
	*ms_r = ms;
	return 0;
}

void
mailstore_free(struct mailstore **msp)
{
	struct mailstore *ms = *msp;

	if (ms == NULL)
		return;
	*msp = NULL;
	free(ms->md);
	free(ms->user);
	free(ms);
}

static char *
folder_dir(const struct mailstore *ms, const char *name)
{
	if (is_inbox(name))
		return xstrdup(ms->md);
	return xasprintf("%s/.%s", ms->md, name);
}

static int
strp_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

int
mailstore_folders(struct mailstore *ms, char ***names_r, size_t *n_r, const char **error_r)
{
	DIR *d = opendir(ms->md);
	struct dirent *de;
	char **v = xcalloc(1, sizeof(char *));
	size_t n = 0;

	if (d == NULL) {
		*error_r = err("cannot read %s: %s", ms->md, strerror(errno));
		free(v);
		return -1;
	}
	v[n++] = xstrdup("INBOX");
	while ((de = readdir(d)) != NULL) {
		struct stat st;

		if (de->d_name[0] != '.' || !mailstore_folder_is_valid(de->d_name + 1) ||
		    is_inbox(de->d_name + 1))
			continue;
		if (de->d_type != DT_DIR && (de->d_type != DT_UNKNOWN ||
		    fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISDIR(st.st_mode)))
			continue;
		if (n >= MAX_MAILSTORE_FOLDERS) {
			log_warn("mailstore: %s has more than %d folders; the rest are not listed",
			    ms->user, MAX_MAILSTORE_FOLDERS);
			break;
		}
		v = xreallocarray(v, n + 1, sizeof(char *));
		v[n++] = xstrdup(de->d_name + 1);
	}
	closedir(d);
	qsort(v + 1, n - 1, sizeof(char *), strp_cmp);
	*names_r = v;
	*n_r = n;
	return 0;
}

void
mailstore_names_free(char ***names, size_t n)
{
	if (*names == NULL)
		return;
	for (size_t i = 0; i < n; i++)
		free((*names)[i]);
	free(*names);
	*names = NULL;
}

int
mailstore_folder_create(struct mailstore *ms, const char *name, const char **error_r)
{
	static const char *const sub[] = { "cur", "new", "tmp" };
	char *dir, *p;
	int fd;

	if (is_inbox(name)) {
		*error_r = err("INBOX exists");
		return -1;
	}
	if (!mailstore_folder_is_valid(name)) {
		*error_r = err("invalid folder name");
		return -1;
	}
	dir = folder_dir(ms, name);
	if (mkdir(dir, 0700) < 0) {
		*error_r = errno == EEXIST ? err("folder exists") :
		    err("cannot create %s: %s", dir, strerror(errno));
		free(dir);
		return -1;
	}
	for (int i = 0; i < 3; i++) {
		p = xasprintf("%s/%s", dir, sub[i]);
		if (mkdir(p, 0700) < 0 && errno != EEXIST) {
			*error_r = err("cannot create %s: %s", p, strerror(errno));
			free(p);
			free(dir);
			return -1;
		}
		free(p);
	}
	/* Maildir++ marks a folder with an empty "maildirfolder" file */
	p = xasprintf("%s/maildirfolder", dir);
	fd = open(p, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
	if (fd >= 0)
		close(fd);
	free(p);
	(void)fsutil_fsync_dir(ms->md);
	free(dir);
	return 0;
}

/* ---- subscriptions: Dovecot's Maildir++ "subscriptions" file ----
 * version 2: "V\t2\n\n", then one name a line, its hierarchy levels joined
 * by TAB, each level tab-escaped (\001 then 1 t r n for \001 TAB CR LF);
 * version 1 (no header): the names as they are. */

#define SUBS_FILE "subscriptions"
#define SUBS_V2 "V\t2\n\n"
#define SUBS_MAX (1u << 20)

static void
subs_push(char ***v, size_t *n, size_t *cap, char *s)
{
	if (*n + 1 >= *cap) {
		*cap = *cap ? *cap * 2 : 16;
		*v = xreallocarray(*v, *cap, sizeof(**v));
	}
	(*v)[(*n)++] = s;
	(*v)[*n] = NULL;
}

/* the names in the file (INBOX as is); *v2_r: the file's version is 2 (or absent) */
static int
subs_read(struct mailstore *ms, char ***names_r, size_t *n_r, int *v2_r, const char **error_r)
{
	char *path = xasprintf("%s/" SUBS_FILE, ms->md), *buf = NULL, *line, *next;
	size_t len = 0, n = 0, cap = 0;
	char **v = NULL;

	*v2_r = 1;
	if (read_capped(path, SUBS_MAX, &buf, &len) < 0) {
		if (errno != ENOENT) {
			*error_r = err("cannot read %s: %s", path, strerror(errno));
			free(path);
			return -1;
		}
		buf = xstrdup("");
		len = 0;
	}
	free(path);
	buf = xrealloc(buf, len + 1);
	buf[len] = '\0';
	line = buf;
	if (len > 0) {
		if (len >= strlen(SUBS_V2) && memcmp(buf, SUBS_V2, strlen(SUBS_V2)) == 0)
			line += strlen(SUBS_V2);
		else
			*v2_r = 0;
	}
	for (; line < buf + len; line = next) {
		char *nl = memchr(line, '\n', (size_t)(buf + len - line)), *o, *q;
		size_t ll = (size_t)((nl ? nl : buf + len) - line);

		next = nl ? nl + 1 : buf + len;
		line[ll] = '\0';
		if (ll == 0 || strlen(line) != ll || ll > 2 * MAX_MAILSTORE_FOLDER_NAME)
			continue;
		o = xstrdup(line);
		if (*v2_r) {
			/* unescape in place; TAB is the hierarchy separator */
			for (q = o, line = o; *line != '\0'; line++) {
				if (*line == '\t') {
					*q++ = '.';
				} else if (*line == '\001' && line[1] != '\0') {
					line++;
					*q++ = *line == '1' ? '\001' : *line == 't' ? '\t' :
					    *line == 'r' ? '\r' : *line == 'n' ? '\n' : *line;
				} else {
					*q++ = *line;
				}
			}
			*q = '\0';
		}
		if (n < MAX_MAILSTORE_FOLDERS)
			subs_push(&v, &n, &cap, o);
		else
			free(o);
	}
	free(buf);
	if (v == NULL)
		v = xcalloc(1, sizeof(*v));
	*names_r = v;
	*n_r = n;
	return 0;
}

int
mailstore_subscriptions(struct mailstore *ms, char ***names_r, size_t *n_r, const char **error_r)
{
	int v2;

	return subs_read(ms, names_r, n_r, &v2, error_r);
}

static void
subs_escape(char **out, size_t *len, size_t *cap, const char *name, int v2)
{
	for (const char *s = name; *s != '\0'; s++) {
		char e[2] = { *s, 0 };
		size_t k = 1;

		if (v2 && *s == '.') {
			e[0] = '\t';
		} else if (v2 && (*s == '\001' || *s == '\t' || *s == '\r' || *s == '\n')) {
			e[0] = '\001';
			e[1] = *s == '\001' ? '1' : *s == '\t' ? 't' : *s == '\r' ? 'r' : 'n';
			k = 2;
		}
		if (*len + k + 2 > *cap) {
			*cap = (*len + k + 2) * 2;
			*out = xrealloc(*out, *cap);
		}
		memcpy(*out + *len, e, k);
		*len += k;
	}
	(*out)[(*len)++] = '\n';
}

int
mailstore_subscribe(struct mailstore *ms, const char *name, int on, const char **error_r)
{
	char *path = xasprintf("%s/" SUBS_FILE, ms->md), *lock = NULL, *tmp, *out;
	char **names = NULL;
	size_t n = 0, len = 0, cap = 256;
	int v2, found = 0, rc = -1;
	const char *want = is_inbox(name) ? "INBOX" : name;

	if (dotlock_take(path, &lock, error_r) < 0) {
		free(path);
		return -1;
	}
	if (subs_read(ms, &names, &n, &v2, error_r) < 0)
		goto out;
	out = xmalloc(cap);
	if (v2) {
		memcpy(out, SUBS_V2, strlen(SUBS_V2));
		len = strlen(SUBS_V2);
	}
	for (size_t i = 0; i < n; i++) {
		if (strcmp(names[i], want) == 0) {
			if (found || !on)
				continue;
			found = 1;
		}
		subs_escape(&out, &len, &cap, names[i], v2);
	}
	if (on && !found)
		subs_escape(&out, &len, &cap, want, v2);
	tmp = xasprintf("%s.tmp", path);
	rc = replace_file(path, tmp, out, len, error_r);
	free(tmp);
	free(out);
out:
	mailstore_names_free(&names, n);
	dotlock_release(&lock);
	free(path);
	return rc;
}

int
mailstore_folder_ensure(struct mailstore *ms, const char *name, const char **error_r)
{
	char *dir;
	struct stat st;
	int have;

	if (is_inbox(name))
		return 0;
	dir = folder_dir(ms, name);
	have = stat(dir, &st) == 0 && S_ISDIR(st.st_mode);
	free(dir);
	if (have)
		return 0;
	if (mailstore_folder_create(ms, name, error_r) < 0)
		return -1;
	return mailstore_subscribe(ms, name, 1, error_r);
}

int
mailstore_folder_delete(struct mailstore *ms, const char *name, const char **error_r)
{
	char *dir, *trash;
	int rc = 0;

	if (is_inbox(name)) {
		*error_r = err("INBOX cannot be deleted");
		return -1;
	}
	if (!mailstore_folder_is_valid(name)) {
		*error_r = err("invalid folder name");
		return -1;
	}
	dir = folder_dir(ms, name);
	trash = xasprintf("%s/%s", ms->md, TRASH_DIR);
	{
		int rootfd = open(ms->md, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

		if (rootfd >= 0) {
			(void)rm_tree_at(rootfd, TRASH_DIR, 0);	/* a leftover */
			/* out of sight at once, then removed at leisure */
			if (rename(dir, trash) < 0) {
				*error_r = errno == ENOENT ? err("no such folder") :
				    err("cannot delete %s: %s", dir, strerror(errno));
				rc = -1;
			} else if (rm_tree_at(rootfd, TRASH_DIR, 0) < 0) {
				log_warn("mailstore: cannot remove %s: %s", trash, strerror(errno));
			}
			close(rootfd);
		} else {
			*error_r = err("cannot open %s: %s", ms->md, strerror(errno));
			rc = -1;
		}
	}
	free(trash);
	free(dir);
	return rc;
}

int
mailstore_folder_rename(struct mailstore *ms, const char *from, const char *to,
    const char **error_r)
{
	char **names = NULL;
	size_t n = 0, fl = strlen(from);
	char *a, *b;
	struct stat st;
	int rc = 0;

	if (is_inbox(from) || is_inbox(to)) {
		*error_r = err("renaming INBOX is not supported");
		return -1;
	}
	if (!mailstore_folder_is_valid(from) || !mailstore_folder_is_valid(to) ||
	    strlen(to) + MAX_MAILSTORE_FOLDER_NAME > 2 * MAX_MAILSTORE_FOLDER_NAME) {
		*error_r = err("invalid folder name");
		return -1;
	}
	if (strncmp(to, from, fl) == 0 && to[fl] == '.') {
		*error_r = err("cannot rename a folder under itself");
		return -1;
	}
	a = folder_dir(ms, from);
	b = folder_dir(ms, to);
	if (lstat(b, &st) == 0) {
		*error_r = err("target folder exists");
		free(a);
		free(b);
		return -1;
	}
	if (mailstore_folders(ms, &names, &n, error_r) < 0) {
		free(a);
		free(b);
		return -1;
	}
	if (rename(a, b) < 0 && errno != ENOENT) {
		*error_r = err("cannot rename %s: %s", a, strerror(errno));
		rc = -1;
	}
	/* the children follow: .from.x -> .to.x */
	for (size_t i = 0; rc == 0 && i < n; i++) {
		if (strncmp(names[i], from, fl) == 0 && names[i][fl] == '.') {
			char *nn = xasprintf("%s%s", to, names[i] + fl);
			char *ca = folder_dir(ms, names[i]), *cb = folder_dir(ms, nn);

			if (mailstore_folder_is_valid(nn) && rename(ca, cb) < 0)
				log_warn("mailstore: cannot rename %s: %s", ca, strerror(errno));
			free(nn);
			free(ca);
			free(cb);
		}
	}
	mailstore_names_free(&names, n);
	free(a);
	free(b);
	return rc;
}

/* ------------------------------------------------------------------ */
/* a mailbox                                                            */

const char *
mailstore_box_name(const struct mailstore_box *box)
{
	return box->name;
}

const char *
mailstore_box_dir(const struct mailstore_box *box)
{
	return box->dir;
}

uint32_t
mailstore_box_uidvalidity(const struct mailstore_box *box)
{
	return box->uidvalidity;
}

uint32_t
mailstore_box_uidnext(const struct mailstore_box *box)
{
	return box->uidnext;
}

size_t
mailstore_box_count(const struct mailstore_box *box)
{
	return box->n;
}

const struct mailstore_msg *
mailstore_box_msg(const struct mailstore_box *box, size_t i)
{
	return i < box->n ? &box->msgs[i].pub : NULL;
}

long
mailstore_box_find(const struct mailstore_box *box, uint32_t uid)
{
	size_t lo = 0, hi = box->n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (box->msgs[mid].pub.uid == uid)
			return (long)mid;
		if (box->msgs[mid].pub.uid < uid)
			lo = mid + 1;
		else
			hi = mid;
	}
	return -1;
}

const char *
mailstore_box_keyword(const struct mailstore_box *box, unsigned i)
{
	return i < 26 ? box->kw[i] : NULL;
}

static void
kw_clear(char *kw[26])
{
	for (int i = 0; i < 26; i++) {
		free(kw[i]);
		kw[i] = NULL;
	}
}

static void
kw_load(struct mailstore_box *box)
{
	char *path = xasprintf("%s/" KEYWORDS, box->dir), *buf;
	size_t len;

	kw_clear(box->kw);
	if (read_capped(path, 64 * 1024, &buf, &len) == 0) {
		md_keywords_parse(buf, len, box->kw);
		free(buf);
	} else if (errno != ENOENT) {
		log_warn("mailstore: cannot read %s: %s", path, strerror(errno));
	}
	free(path);
}

/* under the uidlist lock */
static int
kw_save(struct mailstore_box *box, const char **error_r)
{
	char *path = xasprintf("%s/" KEYWORDS, box->dir);
	char *tmp = xasprintf("%s/" KEYWORDS ".lock", box->dir);
	size_t len;
	char *data = md_keywords_format(box->kw, &len);
	int rc = replace_file(path, tmp, data, len, error_r);

	free(data);
	free(tmp);
	free(path);
	return rc;
}

/* keyword names to a letter mask; new names get free letters when CREATE */
static int
kw_mask(struct mailstore_box *box, const char *const *names, size_t n, int create,
    uint32_t *mask_r, int *created_r, const char **error_r)
{
	uint32_t m = 0;

	for (size_t i = 0; i < n; i++) {
		int found = -1, free_slot = -1;

		if (!md_keyword_is_valid(names[i], strlen(names[i]))) {
			*error_r = err("invalid keyword");
			return -1;
		}
		for (int k = 0; k < 26; k++) {
			if (box->kw[k] && strcasecmp(box->kw[k], names[i]) == 0)
				found = k;
			else if (!box->kw[k] && free_slot < 0)
				free_slot = k;
		}
		if (found < 0 && !create)
			continue;
		if (found < 0) {
			if (free_slot < 0) {
				*error_r = err("too many keywords in this folder");
				return -1;
			}
			box->kw[free_slot] = xstrdup(names[i]);
			*created_r = 1;
			found = free_slot;
		}
		m |= 1u << found;
	}
	*mask_r = m;
	return 0;
}

static void
guid_new(char out[33])
{
	unsigned char r[16];

	if (getrandom(r, sizeof(r), 0) != (ssize_t)sizeof(r)) {
		struct timeval tv;

		gettimeofday(&tv, NULL);
		for (size_t i = 0; i < sizeof(r); i++)
			r[i] = (unsigned char)((tv.tv_usec >> (i % 3 * 8)) ^ (getpid() >> (i % 2 * 8)) ^ i);
	}
	for (int i = 0; i < 16; i++)
		snprintf(out + 2 * i, 3, "%02x", r[i]);
}

#define UIDVALIDITY "dovecot-uidvalidity"

/* "PATH.%08x" */
static char *
uv_marker(const char *path, uint32_t v)
{
	return xasprintf("%s.%08x", path, v);
}

static void
uv_write(const char *path, uint32_t v)
{
	char buf[16];
	int fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);

	if (fd < 0)
		return;
	snprintf(buf, sizeof(buf), "%08x", v);
	if (pwrite(fd, buf, 8, 0) != 8)
		log_warn("mailstore: cannot write %s: %s", path, strerror(errno));
	close(fd);
}

/* rename PATH.<*v> to PATH.<*v + 1>: the atomic step of the counter */
static int
uv_step(const char *path, uint32_t *v)
{
	for (int i = 0; i < 10; i++) {
		char *src = uv_marker(path, *v), *dst;
		int rc, e;

		if (++*v == 0)
			*v = 1;
		dst = uv_marker(path, *v);
		rc = rename(src, dst);
		e = errno;
		free(src);
		free(dst);
		if (rc == 0)
			return 0;
		if (e != ENOENT)
			return -1;
	}
	return -1;
}

/*
 * The next UIDVALIDITY for a new folder of this user, from the counter
 * Dovecot keeps in the Maildir root (dovecot-uidvalidity holding the value
 * in hex, and an empty dovecot-uidvalidity.<value> renamed one step on each
 * use), so UIDVALIDITY never repeats for a name, whichever server made it.
 */
static uint32_t
uidvalidity_next(const struct mailstore *ms)
{
	char *path = xasprintf("%s/" UIDVALIDITY, ms->md), buf[9];
	uint32_t v = 0, now = (uint32_t)time(NULL);
	int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);

	if (fd >= 0) {
		ssize_t r = read(fd, buf, 8);

		close(fd);
		if (r > 0) {
			char *end;
			unsigned long x;

			buf[r] = '\0';
			x = strtoul(buf, &end, 16);
			if (end != buf && *end == '\0' && x != 0 && x <= UINT32_MAX)
				v = (uint32_t)x;
		}
		if (v != 0 && uv_step(path, &v) == 0) {
			uv_write(path, v);
			free(path);
			return v;
		}
	}
	/* no counter yet (or a broken one): find the marker, or start one */
	{
		DIR *d = opendir(ms->md);
		struct dirent *de;
		size_t pl = strlen(UIDVALIDITY ".");
		uint32_t max = 0;

		while (d != NULL && (de = readdir(d)) != NULL) {
			char *end;
			unsigned long x;

			if (strncmp(de->d_name, UIDVALIDITY ".", pl) != 0)
				continue;
			x = strtoul(de->d_name + pl, &end, 16);
			if (end != de->d_name + pl && *end == '\0' && x <= UINT32_MAX && x > max)
				max = (uint32_t)x;
		}
		if (d != NULL)
			closedir(d);
		v = max;
		if (max == 0 || uv_step(path, &v) < 0) {
			char *m;

			v = now;
			m = uv_marker(path, v);
			fd = open(m, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0444);
			if (fd >= 0)
				close(fd);
			free(m);
		}
	}
	uv_write(path, v);
	free(path);
	return v;
}

/* a new, empty uidlist whose UIDVALIDITY is past every one this folder had */
static void
uidlist_reset(struct mailstore_box *box, struct md_uidlist *ul, uint32_t old_validity)
{
	uint32_t now = uidvalidity_next(box->ms);

	md_uidlist_clear(ul);
	ul->version = 3;
	ul->uidvalidity = now;
	if (box->uidvalidity >= ul->uidvalidity && box->uidvalidity < UINT32_MAX)
		ul->uidvalidity = box->uidvalidity + 1;
	if (old_validity >= ul->uidvalidity && old_validity < UINT32_MAX)
		ul->uidvalidity = old_validity + 1;
	ul->next_uid = 1;
	guid_new(ul->guid);
}

/* read the uidlist (lock held); a missing or corrupt one starts anew */
static void
uidlist_load(struct mailstore_box *box, struct md_uidlist *ul, int *dirty_r)
{
	char *path = xasprintf("%s/" UIDLIST, box->dir), *buf = NULL;
	size_t len = 0;
	const char *why = NULL;
	uint32_t old_validity = 0;

	memset(ul, 0, sizeof(*ul));
	if (read_capped(path, MAX_MAILSTORE_UIDLIST_BYTES, &buf, &len) == 0 && len > 0) {
		if (md_uidlist_parse(buf, len, ul, &why) == 0) {
			if (ul->version != 3 || ul->guid[0] == '\0')
				*dirty_r = 1;
			free(buf);
			free(path);
			return;
		}
		old_validity = ul->uidvalidity;
	} else if (buf == NULL && errno != ENOENT) {
		why = strerror(errno);
	} else if (buf != NULL) {
		why = "empty file";
	}
	free(buf);
	uidlist_reset(box, ul, old_validity);
	if (why != NULL)
		log_warn("mailstore: %s: %s is broken (%s): rebuilt with UIDVALIDITY %u", box->ms->user,
		    path, why, ul->uidvalidity);
	*dirty_r = 1;
	free(path);
}

static int
uidlist_save(struct mailstore_box *box, const struct md_uidlist *ul, const char **error_r)
{
	char *path = xasprintf("%s/" UIDLIST, box->dir);
	char *tmp = xasprintf("%s/" UIDLIST ".tmp", box->dir);
	size_t len;
	char *data = md_uidlist_format(ul, &len);
	int rc = replace_file(path, tmp, data, len, error_r);

	free(data);
	free(tmp);
	free(path);
	return rc;
}

struct scanned {
	char *name;
	long rec;		/* index into the uidlist, or -1 */
	unsigned recent:1, in_new:1;
};

static int
u32_cmp(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

static int
scanned_base_cmp(const void *a, const void *b)
{
	return mdname_base_cmp(((const struct scanned *)a)->name, ((const struct scanned *)b)->name);
}

static int
scanned_sort_cmp(const void *a, const void *b)
{
	return mdname_sort_cmp(((const struct scanned *)a)->name, ((const struct scanned *)b)->name);
}

static int
rec_base_cmp(const void *a, const void *b)
{
	return strcmp((*(struct md_uidrec *const *)a)->base, (*(struct md_uidrec *const *)b)->base);
}

static void
fname_free(struct ms_msg *m)
{
	if (!m->fname_in_block)
		free(m->fname);
	m->fname = NULL;
	m->fname_in_block = 0;
}

static void snap_unref(struct snap **s);

static void
msgs_free(struct mailstore_box *box)
{
	if (box->retired != NULL)
		snap_unref(&box->retired);
	if (box->shared != NULL) {
		/* the snapshot's array: not ours to free */
		snap_unref(&box->shared);
		box->msgs = NULL;
		box->n = box->cap = 0;
		return;
	}
	for (size_t i = 0; i < box->n; i++)
		fname_free(&box->msgs[i]);
	free(box->names);
	box->names = NULL;
	free(box->msgs);
	box->msgs = NULL;
	box->n = box->cap = 0;
}

/* read one directory's message names into *v */
static int
scan_dir(const char *dir, int is_new, struct scanned **v, size_t *n, size_t *cap,
    const char **error_r)
{
	DIR *d = opendir(dir);
	struct dirent *de;

	if (d == NULL) {
		*error_r = err("cannot read %s: %s", dir, strerror(errno));
		return -1;
	}
	while ((de = readdir(d)) != NULL) {
		struct mdname mn;

		if (de->d_name[0] == '.' || mdname_parse(de->d_name, &mn) < 0)
			continue;
		if (*n >= MAX_MAILSTORE_MESSAGES) {
			closedir(d);
			*error_r = err("%s holds too many messages", dir);
			return -1;
		}
		if (*n == *cap) {
			*cap = *cap ? *cap * 2 : 64;
			*v = xreallocarray(*v, *cap, sizeof(**v));
		}
		(*v)[*n].name = xstrdup(de->d_name);
		(*v)[*n].rec = -1;
		(*v)[*n].recent = 0;
		(*v)[*n].in_new = is_new ? 1 : 0;
		(*n)++;
	}
	closedir(d);
	return 0;
}

/* new/ -> cur/ (name + ":2,"), as Dovecot does when a session sees new mail */
static int
move_new(struct mailstore_box *box, struct scanned **v, size_t *n, size_t *cap,
    const char **error_r)
{
	char *newd = xasprintf("%s/new", box->dir);
	struct scanned *nv = NULL;
	size_t nn = 0, ncap = 0;
	int moved = 0;

	if (scan_dir(newd, 1, &nv, &nn, &ncap, error_r) < 0) {
		free(newd);
		return -1;
	}
	for (size_t i = 0; i < nn; i++) {
		char *src = xasprintf("%s/%s", newd, nv[i].name);
		char *dst = xasprintf("%s/cur/%s%s", box->dir, nv[i].name,
		    strchr(nv[i].name, ':') ? "" : ":2,");

		if (rename(src, dst) == 0) {
			moved = 1;
			/* remembered so the cur/ scan finds it under its new name */
			if (*n == *cap) {
				*cap = *cap ? *cap * 2 : 64;
				*v = xreallocarray(*v, *cap, sizeof(**v));
			}
			(*v)[*n].name = xstrdup(strrchr(dst, '/') + 1);
			(*v)[*n].rec = -1;
			(*v)[*n].recent = 1;
			(*v)[*n].in_new = 0;
			(*n)++;
		} else if (errno != ENOENT) {
			/* stays in new/ (read-only, full): still a message */
			if (*n == *cap) {
				*cap = *cap ? *cap * 2 : 64;
				*v = xreallocarray(*v, *cap, sizeof(**v));
			}
			(*v)[*n] = nv[i];
			(*v)[*n].recent = 1;
			nv[i].name = NULL;
			(*n)++;
		}
		free(src);
		free(dst);
		free(nv[i].name);
	}
	free(nv);
	if (moved) {
		char *curd = xasprintf("%s/cur", box->dir);

		(void)fsutil_fsync_dir(curd);
		free(curd);
	}
	free(newd);
	return 0;
}

/* a record extension's number ("W123" in "S100 W123") */
static int
ext_get(const char *ext, char key, uint64_t *v_r)
{
	for (const char *p = ext; p && *p; p++) {
		if ((p == ext || p[-1] == ' ') && *p == key && p[1] >= '0' && p[1] <= '9') {
			uint64_t v = 0;
			int k = 0;

			for (p++; *p >= '0' && *p <= '9' && k < 18; p++, k++)
				v = v * 10 + (uint64_t)(*p - '0');
			*v_r = v;
			return 0;
		}
	}
	return -1;
}

/*
 * Our own field in the uidlist header: "r<uid>", the first UID that is still
 * \Recent (no session took it yet). Dovecot keeps header fields it does not
 * know (maildir-uidlist.c hdr_extensions) and writes them back, and ignores
 * them otherwise, so the store stays Dovecot's to read.
 */
#define RECENT_KEY 'r'

static int
hdr_get(const struct md_uidlist *ul, char key, uint32_t *v_r)
{
	uint64_t v;

	if (ext_get(ul->hdr_ext, key, &v) < 0 || v == 0 || v > UINT32_MAX)
		return -1;
	*v_r = (uint32_t)v;
	return 0;
}

/* KEY's field set to V (the others kept in their order, ours last) */
static void
hdr_set(struct md_uidlist *ul, char key, uint32_t v)
{
	size_t cap = (ul->hdr_ext ? strlen(ul->hdr_ext) : 0) + 16, o = 0;
	char *out = xmalloc(cap);

	for (const char *p = ul->hdr_ext; p && *p;) {
		size_t len = strcspn(p, " ");

		if (len > 0 && *p != key) {
			memcpy(out + o, p, len);
			o += len;
			out[o++] = ' ';
		}
		p += len;
		while (*p == ' ')
			p++;
	}
	snprintf(out + o, cap - o, "%c%u", key, v);
	free(ul->hdr_ext);
	ul->hdr_ext = out;
}

/* append "KEY<v>" to a record's extensions */
static void
rec_add_ext(struct md_uidrec *rec, char key, uint64_t v)
{
	char *ext = rec->ext != NULL && rec->ext[0] != '\0' ?
	    xasprintf("%s %c%llu", rec->ext, key, (unsigned long long)v) :
	    xasprintf("%c%llu", key, (unsigned long long)v);

	free(rec->ext);
	rec->ext = ext;
}

/* the size with every bare LF counted as CRLF, read in pieces */
static int
count_vsize(const struct mailstore_box *box, int in_new, const char *name, uint64_t *vsize_r)
{
	char *path = xasprintf("%s/%s/%s", box->dir, in_new ? "new" : "cur", name);
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	unsigned char buf[65536];
	uint64_t v = 0;
	int last_cr = 0;
	ssize_t r;

	free(path);
	if (fd < 0)
		return -1;
	while ((r = read(fd, buf, sizeof(buf))) > 0)
		v += (uint64_t)r + bare_lfs(buf, (size_t)r, &last_cr);
	close(fd);
	if (r < 0)
		return -1;
	*vsize_r = v;
	return 0;
}

/*
 * The sync, lock held: keywords, uidlist, new/ to cur/, new UIDs; the
 * message list rebuilt. *dirty_r says the uidlist must be written.
 */
static int
sync_locked(struct mailstore_box *box, struct md_uidlist *ul, int *dirty_r, const char **error_r)
{
	struct scanned *v = NULL;
	size_t n = 0, cap = 0, nnew = 0;
	struct md_uidrec **byname = NULL;
	char *curd = xasprintf("%s/cur", box->dir);
	struct stat before, after;
	int rc = -1;
	size_t recent_n = 0;
	uint32_t *recent_uids = NULL, first_recent;

	box->snap_gen = 0;	/* the list is rebuilt from the files */
	kw_load(box);
	uidlist_load(box, ul, dirty_r);
	/* \Recent: UIDs from the header's first-recent mark on (none: the UIDs
	 * given from now on), as Dovecot keeps first_recent_uid in its index */
	if (hdr_get(ul, RECENT_KEY, &first_recent) < 0 || first_recent > ul->next_uid) {
		first_recent = ul->next_uid;
		hdr_set(ul, RECENT_KEY, first_recent);	/* kept, or it would move */
		*dirty_r = 1;
	}
	/* new/ as it was before it was read: a snapshot keeps this stamp */
	{
		char *newd = xasprintf("%s/new", box->dir);

		box->st_new_ok = stat(newd, &box->st_new) == 0;
		free(newd);
	}
	box->st_cur_ok = 0;
	if (move_new(box, &v, &n, &cap, error_r) < 0)
		goto out;
	/* names moved into cur/ are read again by the scan below: the two meet
	 * by base name */
	for (int tries = 0;; tries++) {
		size_t start = n;

		if (stat(curd, &before) < 0) {
			*error_r = err("cannot read %s: %s", curd, strerror(errno));
			goto out;
		}
		if (scan_dir(curd, 0, &v, &n, &cap, error_r) < 0)
			goto out;
		if (stat(curd, &after) == 0 && after.st_mtim.tv_sec == before.st_mtim.tv_sec &&
		    after.st_mtim.tv_nsec == before.st_mtim.tv_nsec) {
			box->st_cur = before;
			box->st_cur_ok = 1;
			break;
		}
		if (tries >= 2)
			break;
		/* renamed under us while reading: read again */
		for (size_t i = start; i < n; i++)
			free(v[i].name);
		n = start;
	}
	/* one entry per base name: the recent marks first, then the scan */
	if (n > 0)
		qsort(v, n, sizeof(*v), scanned_base_cmp);
	{
		size_t keep = 0;

		for (size_t i = 0; i < n; i++) {
			if (keep > 0 && mdname_base_cmp(v[keep - 1].name, v[i].name) == 0) {
				struct scanned *k = &v[keep - 1];

				k->recent |= v[i].recent;
				/* prefer what is on disk in cur/ now */
				if (!v[i].recent && !v[i].in_new) {
					free(k->name);
					k->name = v[i].name;
					k->in_new = 0;
				} else {
					free(v[i].name);
				}
				continue;
			}
			v[keep++] = v[i];
		}
		n = keep;
	}
again:
	nnew = 0;
	free(byname);
	byname = xcalloc(ul->n + 1, sizeof(*byname));
	for (size_t i = 0; i < ul->n; i++)
		byname[i] = &ul->recs[i];
	qsort(byname, ul->n, sizeof(*byname), rec_base_cmp);
	for (size_t i = 0; i < n; i++) {
		struct mdname mn;
		struct md_uidrec key, *kp = &key, **hit;
		char base[MAX_MAILSTORE_FNAME + 1];

		v[i].rec = -1;
		if (mdname_parse(v[i].name, &mn) < 0)
			continue;
		memcpy(base, v[i].name, mn.baselen);
		base[mn.baselen] = '\0';
		key.base = base;
		hit = bsearch(&kp, byname, ul->n, sizeof(*byname), rec_base_cmp);
		if (hit != NULL) {
			v[i].rec = *hit - ul->recs;
		} else {
			nnew++;
		}
	}
	if (nnew > 0 && (uint64_t)ul->next_uid + nnew >= UINT32_MAX && ul->n > 0) {
		/* UIDs run out: renumber under a new UIDVALIDITY, as IMAP allows */
		log_warn("mailstore: %s: UIDs of %s run out: renumbered", box->ms->user, box->dir);
		uidlist_reset(box, ul, ul->uidvalidity);
		*dirty_r = 1;
		goto again;
	}
	if (nnew > 0 && (uint64_t)ul->next_uid + nnew >= UINT32_MAX) {
		uidlist_reset(box, ul, ul->uidvalidity);
		*dirty_r = 1;
	}
	/* new files get UIDs in Dovecot's order */
	if (nnew > 0) {
		struct scanned *nv = xcalloc(nnew, sizeof(*nv));
		size_t k = 0;

		for (size_t i = 0; i < n; i++)
			if (v[i].rec < 0)
				nv[k++] = v[i];
		qsort(nv, nnew, sizeof(*nv), scanned_sort_cmp);
		for (size_t i = 0; i < nnew; i++) {
			struct mdname mn;

			if (ul->next_uid >= UINT32_MAX - 1 || ul->n >= MAX_MAILSTORE_MESSAGES) {
				*error_r = err("no UIDs left in this folder");
				free(nv);
				goto out;
			}
			if (mdname_parse(nv[i].name, &mn) < 0)
				continue;
			{
				/* no ,W= in the name: the size with CRLF goes into the
				 * record ("W<n>"), where Dovecot keeps it too */
				char ext[48] = "";
				uint64_t vs;

				if (!mn.has_vsize && count_vsize(box, nv[i].in_new, nv[i].name, &vs) == 0)
					snprintf(ext, sizeof(ext), "W%llu", (unsigned long long)vs);
				md_uidlist_add(ul, ul->next_uid++, nv[i].name, mn.baselen, ext);
			}
		}
		free(nv);
		*dirty_r = 1;
		/* ul->recs moved: find each file's record again (the new ones are last) */
		free(byname);
		byname = xcalloc(ul->n + 1, sizeof(*byname));
		for (size_t i = 0; i < ul->n; i++)
			byname[i] = &ul->recs[i];
		qsort(byname, ul->n, sizeof(*byname), rec_base_cmp);
		for (size_t i = 0; i < n; i++) {
			struct mdname mn;
			struct md_uidrec key, *kp = &key, **hit;
			char base[MAX_MAILSTORE_FNAME + 1];

			if (mdname_parse(v[i].name, &mn) < 0)
				continue;
			memcpy(base, v[i].name, mn.baselen);
			base[mn.baselen] = '\0';
			key.base = base;
			hit = bsearch(&kp, byname, ul->n, sizeof(*byname), rec_base_cmp);
			v[i].rec = hit ? *hit - ul->recs : -1;
		}
	}
	/* the message list, in UID order (the records are) */
	for (size_t i = 0; i < box->n; i++)
		if (box->msgs[i].pub.recent) {
			recent_uids = xreallocarray(recent_uids, recent_n + 1, sizeof(uint32_t));
			recent_uids[recent_n++] = box->msgs[i].pub.uid;
		}
	msgs_free(box);
	{
		long *at = xcalloc(ul->n + 1, sizeof(long));

		for (size_t i = 0; i < ul->n; i++)
			at[i] = -1;
		for (size_t i = 0; i < n; i++)
			if (v[i].rec >= 0)
				at[v[i].rec] = (long)i;
		box->msgs = xcalloc(ul->n + 1, sizeof(*box->msgs));
		box->cap = ul->n + 1;
		for (size_t r = 0; r < ul->n; r++) {
			struct scanned *s;
			struct ms_msg *m;
			struct mdname mn;
			struct stat st;
			char *path;

			if (at[r] < 0)
				continue;
			s = &v[at[r]];
			if (mdname_parse(s->name, &mn) < 0)
				continue;
			/* a name with ,S= needs no stat: the date is read when asked */
			memset(&st, 0, sizeof(st));
			if (!mn.has_size) {
				path = xasprintf("%s/%s/%s", box->dir, s->in_new ? "new" : "cur",
				    s->name);
				if (stat(path, &st) < 0) {
					free(path);
					continue;	/* gone meanwhile: the next sync says so */
				}
				free(path);
			}
			m = &box->msgs[box->n++];
			m->fname = s->name;
			s->name = NULL;
			m->in_new = s->in_new;
			m->pub.uid = ul->recs[r].uid;
			m->pub.flags = mn.flags;
			m->pub.keywords = mn.keywords;
			for (int k = 0; k < 26; k++)
				if (!box->kw[k])
					m->pub.keywords &= ~(1u << k);	/* an unknown letter */
			m->pub.size = mn.has_size ? mn.size : (uint64_t)st.st_size;
			m->pub.vsize = m->pub.size;
			if (mn.has_vsize) {
				m->pub.vsize = mn.vsize;
			} else if (ext_get(ul->recs[r].ext, 'W', &m->pub.vsize) < 0) {
				/* no W= anywhere (another MDA's file, a UID Dovecot gave):
				 * counted once, kept in the record as Dovecot keeps it */
				uint64_t vs;

				if (count_vsize(box, m->in_new, m->fname, &vs) == 0) {
					rec_add_ext(&ul->recs[r], 'W', vs);
					m->pub.vsize = vs;
					*dirty_r = 1;
				}
			}
			if (!mn.has_size) {
				m->date = st.st_mtime;
				m->date_known = 1;
			}
			m->pub.recent = m->pub.uid >= first_recent ||
			    (recent_n > 0 && bsearch(&m->pub.uid, recent_uids, recent_n,
			    sizeof(uint32_t), u32_cmp) != NULL);
		}
		free(at);
	}
	/* a claiming session takes them: the next one sees none of these */
	if (box->claim && first_recent < ul->next_uid) {
		hdr_set(ul, RECENT_KEY, ul->next_uid);
		*dirty_r = 1;
	}
	box->uidvalidity = ul->uidvalidity;
	box->uidnext = ul->next_uid;
	rc = 0;
out:
	for (size_t i = 0; i < n; i++)
		free(v[i].name);
	free(v);
	free(byname);
	free(recent_uids);
	free(curd);
	return rc;
}

static char *
uidlist_path(const struct mailstore_box *box)
{
	return xasprintf("%s/" UIDLIST, box->dir);
}

/* ------------------------------------------------------------------ */
/* the folder snapshot: a sync without re-reading an unchanged folder   */

/*
 * What a full sync found, kept per process and shared by every session on
 * the folder (as Dovecot keeps its index): the message list, the keywords,
 * UIDVALIDITY, UIDNEXT and the first \Recent UID, with the stamps of what it
 * was read from. A sync first stats new/, cur/, dovecot-uidlist and
 * dovecot-keywords; when all four match, the session's list is copied from
 * the snapshot: no lock, no uidlist parse, no directory read. The rules
 * (Dovecot's maildir sync rules):
 *  - new/ and cur/ are stamped before they are read (cur/ by the rename-race
 *    loop of sync_locked). A directory changed within SNAP_DIRTY_SECS of
 *    the read may change again within the same timestamp tick without its
 *    mtime moving: such a sync is not kept, the next one reads again.
 *  - dovecot-uidlist and dovecot-keywords match when inode, size and mtime
 *    (ns) do and the mtime was old when they were read; a file written a
 *    moment before (ours are, on every sync that writes) is kept as bytes
 *    and compared byte for byte, so an equal inode number and size after a
 *    rewrite in the same tick cannot pass.
 *  - a session that takes \Recent (SELECT) while a UID is still \Recent
 *    does the full sync: it must rewrite the uidlist header under the lock.
 * Every writer (any session of this process, another process, the SMTP
 * door, POP3, Dovecot) moves one of the four stamps: a rename or unlink in
 * new/ or cur/, new UIDs or the \Recent mark in the uidlist, a keyword in
 * its file. Bounded: SNAP_MAX folders, SNAP_MAX_MSGS messages in all
 * (least recently used out first). One mutex; copies are made under it.
 */
#define SNAP_MAX	64
#define SNAP_MAX_MSGS	400000
#define SNAP_DIRTY_SECS	1

struct snap {
	struct snap *next;
	char *dir;
	uint64_t gen, used;
	struct stat st_new, st_cur, st_ul, st_kw;
	int kw_exists;
	char *ul_bytes, *kw_bytes;	/* the bytes when the mtime was recent, else NULL */
	size_t ul_len, kw_len;
	uint32_t uidvalidity, uidnext, first_recent;
	char *kw[26];
	struct ms_msg *msgs;	/* .recent 0; fname into names */
	size_t n;
	char *names;
	size_t names_len;
	unsigned refs;		/* the list, the boxes sharing msgs */
};

static pthread_mutex_t snap_mutex = PTHREAD_MUTEX_INITIALIZER;
static struct snap *snaps;
static size_t snap_count, snap_nmsgs;
static uint64_t snap_gen_next = 1, snap_clock;

static int
stamp_eq(const struct stat *a, const struct stat *b)
{
	return a->st_dev == b->st_dev && a->st_ino == b->st_ino && a->st_size == b->st_size &&
	    a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

static int
stamp_is_recent(const struct stat *st, time_t now)
{
	return st->st_mtim.tv_sec + SNAP_DIRTY_SECS >= now;
}

static void
snap_free(struct snap *s)
{
	if (--s->refs > 0)
		return;	/* unlinked; the last box sharing it frees it */
	kw_clear(s->kw);
	free(s->ul_bytes);
	free(s->kw_bytes);
	free(s->msgs);
	free(s->names);
	free(s->dir);
	free(s);
}

static void
snap_unref(struct snap **sp)
{
	pthread_mutex_lock(&snap_mutex);
	snap_free(*sp);
	pthread_mutex_unlock(&snap_mutex);
	*sp = NULL;
}

/* a list of its own for BOX, before it changes one (copy on write) */
static void
box_own(struct mailstore_box *box)
{
	struct snap *s = box->shared;
	struct ms_msg *nm;
	char *names;

	if (s == NULL)
		return;
	nm = xcalloc(box->n + 1, sizeof(*nm));
	names = xmalloc(s->names_len + 1);
	memcpy(names, s->names, s->names_len);
	memcpy(nm, box->msgs, box->n * sizeof(*nm));
	for (size_t i = 0; i < box->n; i++)
		nm[i].fname = names + (box->msgs[i].fname - s->names);
	/* pointers into the old array stay valid until the next sync, as the
	 * list's always did */
	if (box->retired != NULL)
		snap_unref(&box->retired);
	box->retired = s;
	box->shared = NULL;
	box->msgs = nm;
	box->names = names;
	box->cap = box->n + 1;
}

/* mutex held: unlink DIR's snapshot (freed when no box shares it) */
static void
snap_drop_locked(const char *dir)
{
	for (struct snap **sp = &snaps; *sp != NULL; sp = &(*sp)->next) {
		if (strcmp((*sp)->dir, dir) == 0) {
			struct snap *s = *sp;

			*sp = s->next;
			snap_count--;
			snap_nmsgs -= s->n;
			snap_free(s);
			return;
		}
	}
}

static void
snap_drop(const char *dir)
{
	pthread_mutex_lock(&snap_mutex);
	snap_drop_locked(dir);
	pthread_mutex_unlock(&snap_mutex);
}

/* the file's stamp, and its bytes when it was written a moment ago */
static int
snap_file(const char *dir, const char *name, time_t now, struct stat *st, char **bytes_r,
    size_t *len_r)
{
	char *path = xasprintf("%s/%s", dir, name);
	int rc = 0;

	*bytes_r = NULL;
	*len_r = 0;
	if (stat(path, st) < 0) {
		rc = errno == ENOENT ? 1 : -1;
	} else if (stamp_is_recent(st, now)) {
		struct stat again;

		if (read_capped(path, MAX_MAILSTORE_UIDLIST_BYTES, bytes_r, len_r) < 0 ||
		    stat(path, &again) < 0 || !stamp_eq(st, &again)) {
			free(*bytes_r);
			*bytes_r = NULL;
			rc = -1;
		}
	}
	free(path);
	return rc;
}

/*
 * After a full sync that succeeded, uidlist lock held (no writer of the
 * uidlist or keywords runs): keep what it found, if it may be trusted.
 */
static void
snap_record(struct mailstore_box *box, uint32_t first_recent)
{
	time_t now = time(NULL);
	struct snap *s;
	size_t names_len = 0;
	int r;

	if (!box->st_new_ok || !box->st_cur_ok || box->n > SNAP_MAX_MSGS / 4 ||
	    stamp_is_recent(&box->st_new, now) || stamp_is_recent(&box->st_cur, now)) {
		snap_drop(box->dir);
		box->snap_gen = 0;
		return;
	}
	s = xcalloc(1, sizeof(*s));
	s->dir = xstrdup(box->dir);
	s->st_new = box->st_new;
	s->st_cur = box->st_cur;
	if (snap_file(box->dir, UIDLIST, now, &s->st_ul, &s->ul_bytes, &s->ul_len) != 0 ||
	    (r = snap_file(box->dir, KEYWORDS, now, &s->st_kw, &s->kw_bytes, &s->kw_len)) < 0) {
		snap_free(s);
		snap_drop(box->dir);
		box->snap_gen = 0;
		return;
	}
	s->kw_exists = r == 0;
	s->uidvalidity = box->uidvalidity;
	s->uidnext = box->uidnext;
	s->first_recent = first_recent;
	for (int k = 0; k < 26; k++)
		s->kw[k] = box->kw[k] ? xstrdup(box->kw[k]) : NULL;
	for (size_t i = 0; i < box->n; i++)
		names_len += strlen(box->msgs[i].fname) + 1;
	s->names = xmalloc(names_len + 1);
	s->names_len = names_len;
	s->msgs = xcalloc(box->n + 1, sizeof(*s->msgs));
	s->n = box->n;
	names_len = 0;
	for (size_t i = 0; i < box->n; i++) {
		const struct ms_msg *m = &box->msgs[i];
		size_t l = strlen(m->fname) + 1;

		s->msgs[i] = *m;
		s->msgs[i].pub.recent = 0;
		s->msgs[i].fname = s->names + names_len;
		s->msgs[i].fname_in_block = 1;
		memcpy(s->names + names_len, m->fname, l);
		names_len += l;
	}
	s->refs = 1;
	pthread_mutex_lock(&snap_mutex);
	snap_drop_locked(box->dir);
	s->gen = snap_gen_next++;
	s->used = ++snap_clock;
	s->next = snaps;
	snaps = s;
	snap_count++;
	snap_nmsgs += s->n;
	while (snap_count > SNAP_MAX || snap_nmsgs > SNAP_MAX_MSGS) {
		struct snap *old = NULL;

		for (struct snap *t = snaps; t != NULL; t = t->next)
			if (t != s && (old == NULL || t->used < old->used))
				old = t;
		if (old == NULL)
			break;
		snap_drop_locked(old->dir);
	}
	box->snap_gen = s->gen;
	pthread_mutex_unlock(&snap_mutex);
}

/* snapshot GEN (mutex held), or NULL when it is gone */
static struct snap *
snap_by_gen(uint64_t gen)
{
	struct snap *s;

	for (s = snaps; s != NULL && s->gen != gen; s = s->next)
		;
	return s;
}

/*
 * One of the snapshot's files (0 dovecot-uidlist, 1 dovecot-keywords) still
 * as it was: by its stamp, else by its bytes. Bytes that match in a file
 * that is no longer recent make the stamp trusted from then on (a later
 * write cannot share its mtime).
 */
static int
snap_file_same(const char *dir, uint64_t gen, int which)
{
	char *path = xasprintf("%s/%s", dir, which ? KEYWORDS : UIDLIST), *buf = NULL;
	struct stat st;
	struct snap *s;
	size_t n = 0;
	int have = stat(path, &st) == 0, gone = !have && errno == ENOENT, same = 0, need_read = 0;

	pthread_mutex_lock(&snap_mutex);
	if ((s = snap_by_gen(gen)) != NULL) {
		int existed = which ? s->kw_exists : 1;
		const char *bytes = which ? s->kw_bytes : s->ul_bytes;

		if (!have)
			same = gone && !existed;
		else if (existed && bytes == NULL)
			same = stamp_eq(&st, which ? &s->st_kw : &s->st_ul);
		else if (existed)
			need_read = (size_t)st.st_size == (which ? s->kw_len : s->ul_len);
	}
	pthread_mutex_unlock(&snap_mutex);
	if (need_read && read_capped(path, MAX_MAILSTORE_UIDLIST_BYTES, &buf, &n) == 0) {
		struct stat again;
		int steady = stat(path, &again) == 0 && stamp_eq(&st, &again);

		pthread_mutex_lock(&snap_mutex);
		if ((s = snap_by_gen(gen)) != NULL) {
			char **bytes = which ? &s->kw_bytes : &s->ul_bytes;
			size_t len = which ? s->kw_len : s->ul_len;

			same = *bytes != NULL && n == len && memcmp(buf, *bytes, len) == 0;
			if (same && steady && !stamp_is_recent(&st, time(NULL))) {
				*(which ? &s->st_kw : &s->st_ul) = st;
				free(*bytes);
				*bytes = NULL;
			}
		}
		pthread_mutex_unlock(&snap_mutex);
	}
	free(buf);
	free(path);
	return same;
}

/*
 * The sync's fast way: 0 when the folder is as its snapshot says, the
 * session's list then being the snapshot's; -1 to do the full sync.
 */
static int
snap_try(struct mailstore_box *box)
{
	struct stat st_new, st_cur;
	char *p;
	struct snap *s;
	uint64_t gen;
	int ok;

	p = xasprintf("%s/new", box->dir);
	ok = stat(p, &st_new) == 0;
	free(p);
	p = xasprintf("%s/cur", box->dir);
	ok = ok && stat(p, &st_cur) == 0;
	free(p);
	if (!ok)
		return -1;
	/* 1: the directories and the \Recent rule, under the mutex */
	pthread_mutex_lock(&snap_mutex);
	for (s = snaps; s != NULL && strcmp(s->dir, box->dir) != 0; s = s->next)
		;
	if (s == NULL || !stamp_eq(&s->st_new, &st_new) || !stamp_eq(&s->st_cur, &st_cur) ||
	    (box->claim && s->first_recent < s->uidnext)) {
		pthread_mutex_unlock(&snap_mutex);
		return -1;
	}
	/* 2: the files, the mutex taken only to look */
	gen = s->gen;
	pthread_mutex_unlock(&snap_mutex);
	if (!snap_file_same(box->dir, gen, 0) || !snap_file_same(box->dir, gen, 1))
		return -1;
	/* 3: the session's list from the snapshot, if it is still that one */
	pthread_mutex_lock(&snap_mutex);
	if ((s = snap_by_gen(gen)) == NULL) {
		pthread_mutex_unlock(&snap_mutex);
		return -1;
	}
	s->used = ++snap_clock;
	if (box->snap_gen != s->gen) {
		int any_recent = s->n > 0 && s->msgs[s->n - 1].pub.uid >= s->first_recent;

		for (size_t j = 0; j < box->n && !any_recent; j++)
			any_recent = box->msgs[j].pub.recent;
		if (!any_recent) {
			/* nothing \Recent for this box: share the snapshot's array,
			 * copied only if the box changes it (box_own) */
			msgs_free(box);
			s->refs++;
			box->shared = s;
			box->msgs = s->msgs;
			box->n = s->n;
			box->cap = s->n;
		} else {
			struct ms_msg *nm = xcalloc(s->n + 1, sizeof(*nm));
			char *names = xmalloc(s->names_len + 1);
			size_t j = 0;

			/* one copy of every name (not one allocation per message) */
			memcpy(names, s->names, s->names_len);
			for (size_t i = 0; i < s->n; i++) {
				struct ms_msg *m = &nm[i];

				*m = s->msgs[i];
				/* \Recent: from the mark on, and what this box saw so stays */
				while (j < box->n && box->msgs[j].pub.uid < m->pub.uid)
					j++;
				m->pub.recent = m->pub.uid >= s->first_recent ||
				    (j < box->n && box->msgs[j].pub.uid == m->pub.uid &&
				    box->msgs[j].pub.recent);
				m->fname = names + (s->msgs[i].fname - s->names);
			}
			msgs_free(box);
			box->msgs = nm;
			box->names = names;
			box->n = s->n;
			box->cap = s->n + 1;
		}
		kw_clear(box->kw);
		for (int k = 0; k < 26; k++)
			box->kw[k] = s->kw[k] ? xstrdup(s->kw[k]) : NULL;
		box->uidvalidity = s->uidvalidity;
		box->uidnext = s->uidnext;
		box->snap_gen = s->gen;
	}
	pthread_mutex_unlock(&snap_mutex);
	return 0;
}

int
mailstore_box_sync(struct mailstore_box *box, const char **error_r)
{
	struct md_uidlist ul;
	char *path, *lock = NULL;
	int dirty = 0, rc;

	if (snap_try(box) == 0)
		return 0;
	path = uidlist_path(box);
	if (dotlock_take(path, &lock, error_r) < 0) {
		free(path);
		return -1;
	}
	memset(&ul, 0, sizeof(ul));
	rc = sync_locked(box, &ul, &dirty, error_r);
	if (rc == 0 && dirty)
		rc = uidlist_save(box, &ul, error_r);
	if (rc == 0) {
		uint32_t first_recent = ul.next_uid;

		(void)hdr_get(&ul, RECENT_KEY, &first_recent);
		snap_record(box, first_recent);
	} else {
		snap_drop(box->dir);
		box->snap_gen = 0;
	}
	dotlock_release(&lock);
	md_uidlist_clear(&ul);
	free(path);
	return rc;
}

static int
box_open(struct mailstore *ms, const char *name, int claim, struct mailstore_box **box_r,
    const char **error_r)
{
	struct mailstore_box *box;
	struct stat st;

	if (!is_inbox(name) && !mailstore_folder_is_valid(name)) {
		*error_r = err("invalid folder name");
		return -1;
	}
	box = xcalloc(1, sizeof(*box));
	box->ms = ms;
	box->claim = claim ? 1 : 0;
	box->name = xstrdup(is_inbox(name) ? "INBOX" : name);
	box->dir = folder_dir(ms, name);
	if (stat(box->dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
		*error_r = err("no such folder");
		mailstore_box_close(&box);
		return -1;
	}
	{
		static const char *const sub[] = { "cur", "new", "tmp" };

		for (int i = 0; i < 3; i++) {
			char *p = xasprintf("%s/%s", box->dir, sub[i]);

			(void)mkdir(p, 0700);
			free(p);
		}
	}
	if (mailstore_box_sync(box, error_r) < 0) {
		mailstore_box_close(&box);
		return -1;
	}
	*box_r = box;
	return 0;
}

int
mailstore_box_open(struct mailstore *ms, const char *name, struct mailstore_box **box_r,
    const char **error_r)
{
	return box_open(ms, name, 1, box_r, error_r);
}

int
mailstore_box_open_peek(struct mailstore *ms, const char *name, struct mailstore_box **box_r,
    const char **error_r)
{
	return box_open(ms, name, 0, box_r, error_r);
}

void
mailstore_box_close(struct mailstore_box **boxp)
{
	struct mailstore_box *box = *boxp;

	if (box == NULL)
		return;
	*boxp = NULL;
	msgs_free(box);
	kw_clear(box->kw);
	free(box->dir);
	free(box->name);
	free(box);
}

/* the current file name of message I (for mailstore_cache.c) */
const char *
mailstore_maildir_fname(const struct mailstore_box *box, size_t i)
{
	return i < box->n ? box->msgs[i].fname : NULL;
}

/*
 * The file of a message may have been renamed by another session (flags are
 * in the name): find it by its base name, new/ first (files only move from
 * new/ to cur/), as Dovecot's maildir_file_do does. 0 found, -1 not there.
 * Callers retry up to REFIND_TRIES times: a file renamed again while we read
 * the directory is found on the next round; only a file in neither place
 * after that many rounds is gone (expunged).
 */
#define REFIND_TRIES 10	/* Dovecot's MAILDIR_RESYNC_RETRY_COUNT */

static int
refind(struct mailstore_box *box, struct ms_msg *m)
{
	static const char *const sub[] = { "new", "cur" };
	struct mdname mn;

	if (mdname_parse(m->fname, &mn) < 0)
		return -1;
	for (int s = 0; s < 2; s++) {
		char *dir = xasprintf("%s/%s", box->dir, sub[s]);
		DIR *d = opendir(dir);
		struct dirent *de;

		free(dir);
		if (d == NULL)
			continue;
		while ((de = readdir(d)) != NULL) {
			if (de->d_name[0] != '.' && strncmp(de->d_name, m->fname, mn.baselen) == 0 &&
			    (de->d_name[mn.baselen] == ':' || de->d_name[mn.baselen] == '\0') &&
			    strnlen(de->d_name, MAX_MAILSTORE_FNAME + 1) <= MAX_MAILSTORE_FNAME) {
				fname_free(m);
				m->fname = xstrdup(de->d_name);
				m->in_new = s == 0;
				closedir(d);
				return 0;
			}
		}
		closedir(d);
	}
	return -1;
}

static char *
msg_path(const struct mailstore_box *box, const struct ms_msg *m)
{
	return xasprintf("%s/%s/%s", box->dir, m->in_new ? "new" : "cur", m->fname);
}

int
mailstore_msg_open(struct mailstore_box *box, uint32_t uid, int *fd_r, const char **error_r)
{
	long i = mailstore_box_find(box, uid);

	if (i < 0) {
		*error_r = err("no such message");
		return -1;
	}
	for (int tries = 0; tries < REFIND_TRIES; tries++) {
		char *path = msg_path(box, &box->msgs[i]);
		int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW), e = errno;

		free(path);
		if (fd >= 0) {
			*fd_r = fd;
			return 0;
		}
		if (e != ENOENT) {
			*error_r = err("cannot open message %u: %s", uid, strerror(e));
			return -1;
		}
		box_own(box);
		if (refind(box, &box->msgs[i]) < 0)
			break;
	}
	*error_r = err("message %u is gone", uid);
	return MAILSTORE_GONE;
}

int
mailstore_msg_date(struct mailstore_box *box, uint32_t uid, time_t *date_r, const char **error_r)
{
	long i;

	box_own(box);	/* the date is kept in the list */
	i = mailstore_box_find(box, uid);

	if (i < 0) {
		*error_r = err("no such message");
		return -1;
	}
	for (int tries = 0; !box->msgs[i].date_known && tries < REFIND_TRIES; tries++) {
		char *path = msg_path(box, &box->msgs[i]);
		struct stat st;
		int rc = stat(path, &st);

		free(path);
		if (rc == 0) {
			box->msgs[i].date = st.st_mtime;
			box->msgs[i].date_known = 1;
		} else if (errno != ENOENT || refind(box, &box->msgs[i]) < 0) {
			break;
		}
	}
	if (!box->msgs[i].date_known) {
		*error_r = err("message %u is gone", uid);
		return MAILSTORE_GONE;
	}
	*date_r = box->msgs[i].date;
	return 0;
}

int
mailstore_msg_set_flags(struct mailstore_box *box, uint32_t uid, enum mailstore_flag_mode mode,
    unsigned flags, const char *const *keywords, size_t nkeywords, const char **error_r)
{
	box_own(box);

	long i = mailstore_box_find(box, uid);
	struct ms_msg *m;
	uint32_t mask = 0;
	unsigned nf;
	uint32_t nk;
	int created = 0;

	if (i < 0) {
		*error_r = err("no such message");
		return -1;
	}
	m = &box->msgs[i];
	if (nkeywords > 0) {
		/* names to letters; a new name needs the lock to take a letter */
		kw_load(box);
		if (kw_mask(box, keywords, nkeywords, 0, &mask, &created, error_r) < 0)
			return -1;
		if (mode != MAILSTORE_FLAGS_REMOVE) {
			uint32_t probe = 0;
			size_t known = 0;

			for (size_t k = 0; k < nkeywords; k++)
				for (int j = 0; j < 26; j++)
					if (box->kw[j] && strcasecmp(box->kw[j], keywords[k]) == 0 &&
					    !(probe & (1u << j))) {
						probe |= 1u << j;
						known++;
					}
			if (known < nkeywords) {
				char *path = uidlist_path(box), *lock = NULL;
				int rc;

				if (dotlock_take(path, &lock, error_r) < 0) {
					free(path);
					return -1;
				}
				kw_load(box);
				rc = kw_mask(box, keywords, nkeywords, 1, &mask, &created, error_r);
				if (rc == 0 && created)
					rc = kw_save(box, error_r);
				dotlock_release(&lock);
				free(path);
				if (rc < 0) {
					kw_load(box);
					return -1;
				}
			}
		}
	}
	for (int tries = 0;; tries++) {
		char nn[MAX_MAILSTORE_FNAME + 1];
		struct mdname mn;
		char *from, *to;

		if (mdname_parse(m->fname, &mn) < 0) {
			*error_r = err("message %u has a name we do not touch", uid);
			return -1;
		}
		nf = mn.flags;
		nk = mn.keywords;
		switch (mode) {
		case MAILSTORE_FLAGS_REPLACE:
			nf = flags & MAILSTORE_FLAGS_ALL;
			nk = mask;
			break;
		case MAILSTORE_FLAGS_ADD:
			nf |= flags & MAILSTORE_FLAGS_ALL;
			nk |= mask;
			break;
		case MAILSTORE_FLAGS_REMOVE:
			nf &= ~flags;
			nk &= ~mask;
			break;
		}
		if (nf == mn.flags && nk == mn.keywords && !m->in_new)
			break;
		if (mdname_set_flags(m->fname, nf, nk, nn, sizeof(nn)) < 0) {
			*error_r = err("file name too long for these flags");
			return -1;
		}
		from = msg_path(box, m);
		to = xasprintf("%s/cur/%s", box->dir, nn);
		if (rename(from, to) == 0) {
			free(from);
			free(to);
			fname_free(m);
			m->fname = xstrdup(nn);
			m->in_new = 0;
			break;
		}
		{
			int e = errno;

			free(from);
			free(to);
			if (e != ENOENT) {
				*error_r = err("cannot set flags of message %u: %s", uid, strerror(e));
				return -1;
			}
		}
		/* renamed by another session meanwhile (or expunged): look again */
		if (tries + 1 >= REFIND_TRIES || refind(box, m) < 0) {
			*error_r = err("cannot set flags of message %u: it is gone", uid);
			return MAILSTORE_GONE;
		}
	}
	m->pub.flags = nf;
	m->pub.keywords = nk;
	return 0;
}

int
mailstore_msg_expunge(struct mailstore_box *box, uint32_t uid, const char **error_r)
{
	box_own(box);

	long i = mailstore_box_find(box, uid);
	struct md_uidlist ul;
	char *path, *lock = NULL;
	int dirty = 0, rc = 0;

	if (i < 0) {
		*error_r = err("no such message");
		return -1;
	}
	for (int tries = 0; tries < REFIND_TRIES; tries++) {
		char *p = msg_path(box, &box->msgs[i]);
		int e = unlink(p) == 0 ? 0 : errno;

		free(p);
		if (e == 0 || e != ENOENT || refind(box, &box->msgs[i]) < 0) {
			if (e != 0 && e != ENOENT) {
				*error_r = err("cannot expunge message %u: %s", uid, strerror(e));
				return -1;
			}
			break;
		}
	}
	fname_free(&box->msgs[i]);
	memmove(&box->msgs[i], &box->msgs[i + 1], (box->n - (size_t)i - 1) * sizeof(*box->msgs));
	box->n--;
	/* the record goes too (Dovecot would drop it at its next rewrite) */
	path = uidlist_path(box);
	if (dotlock_take(path, &lock, error_r) < 0) {
		free(path);
		return -1;
	}
	memset(&ul, 0, sizeof(ul));
	uidlist_load(box, &ul, &dirty);
	for (size_t r = 0; r < ul.n; r++) {
		if (ul.recs[r].uid == uid) {
			free(ul.recs[r].base);
			free(ul.recs[r].ext);
			memmove(&ul.recs[r], &ul.recs[r + 1], (ul.n - r - 1) * sizeof(*ul.recs));
			ul.n--;
			dirty = 1;
			break;
		}
	}
	if (dirty && ul.uidvalidity == box->uidvalidity)
		rc = uidlist_save(box, &ul, error_r);
	dotlock_release(&lock);
	md_uidlist_clear(&ul);
	free(path);
	return rc;
}

int
mailstore_append_begin(struct mailstore_box *box, struct mailstore_append **a_r,
    const char **error_r)
{
	struct mailstore_append *a = xcalloc(1, sizeof(*a));
	char host[128];
	struct timeval tv;

	my_hostname(host, sizeof(host));
	host[strcspn(host, ",")] = '\0';
	gettimeofday(&tv, NULL);
	a->box = box;
	a->name = xasprintf("%lld.M%ldP%ldQ%lu.%s", (long long)tv.tv_sec, (long)tv.tv_usec,
	    (long)getpid(), atomic_fetch_add(&append_seq, 1), host);
	a->tmp = xasprintf("%s/tmp/%s", box->dir, a->name);
	a->fd = open(a->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (a->fd < 0) {
		*error_r = err("cannot create %s: %s", a->tmp, strerror(errno));
		free(a->tmp);
		free(a->name);
		free(a);
		return -1;
	}
	*a_r = a;
	return 0;
}

int
mailstore_append_write(struct mailstore_append *a, const void *p, size_t n, const char **error_r)
{
	const unsigned char *c = p;

	if (fsutil_write_all(a->fd, p, n) < 0) {
		int e = errno;

		*error_r = err("cannot write %s: %s", a->tmp, strerror(e));
		errno = e;
		return -1;
	}
	/* the size with CRLF line ends, as IMAP counts it (Dovecot's ,W=) */
	a->vsize += n + bare_lfs(c, n, &a->last_cr);
	a->size += n;
	return 0;
}

void
mailstore_append_abort(struct mailstore_append **ap)
{
	struct mailstore_append *a = *ap;

	if (a == NULL)
		return;
	*ap = NULL;
	if (a->fd >= 0)
		close(a->fd);
	unlink(a->tmp);
	free(a->tmp);
	free(a->name);
	free(a);
}

int
mailstore_append_commit(struct mailstore_append **ap, unsigned flags,
    const char *const *keywords, size_t nkeywords, time_t date, uint32_t *uid_r,
    const char **error_r)
{
	struct mailstore_append *a = *ap;
	struct mailstore_box *box = a->box;
	struct md_uidlist ul;
	char *path = NULL, *lock = NULL, *base = NULL, *dst = NULL, *curd = NULL;
	char final[MAX_MAILSTORE_FNAME + 1];
	uint32_t mask = 0, uid;
	int dirty = 0, created = 0, rc = -1;

	memset(&ul, 0, sizeof(ul));
	if (fsync(a->fd) < 0) {
		*error_r = err("cannot write %s: %s", a->tmp, strerror(errno));
		goto out;
	}
	if (date > 0) {
		struct timespec ts[2] = { { .tv_sec = date }, { .tv_sec = date } };

		(void)futimens(a->fd, ts);
	}
	{
		int e = close(a->fd);

		a->fd = -1;
		if (e < 0) {
			*error_r = err("cannot write %s: %s", a->tmp, strerror(errno));
			goto out;
		}
	}
	base = xasprintf("%s,S=%llu,W=%llu", a->name, (unsigned long long)a->size,
	    (unsigned long long)a->vsize);
	path = uidlist_path(box);
	if (dotlock_take(path, &lock, error_r) < 0)
		goto out;
	if (sync_locked(box, &ul, &dirty, error_r) < 0)
		goto unlock;
	if (nkeywords > 0) {
		if (kw_mask(box, keywords, nkeywords, 1, &mask, &created, error_r) < 0)
			goto unlock;
		if (created && kw_save(box, error_r) < 0)
			goto unlock;
	}
	if (mdname_set_flags(base, flags, mask, final, sizeof(final)) < 0) {
		*error_r = err("message file name too long");
		goto unlock;
	}
	if (ul.next_uid >= UINT32_MAX - 1 || ul.n >= MAX_MAILSTORE_MESSAGES) {
		*error_r = err("no UIDs left in this folder");
		goto unlock;
	}
	dst = xasprintf("%s/cur/%s", box->dir, final);
	if (rename(a->tmp, dst) < 0) {
		*error_r = err("cannot move %s into cur/: %s", a->tmp, strerror(errno));
		goto unlock;
	}
	curd = xasprintf("%s/cur", box->dir);
	if (fsutil_fsync_dir(curd) < 0) {
		*error_r = err("cannot sync %s: %s", curd, strerror(errno));
		unlink(dst);
		goto unlock;
	}
	uid = ul.next_uid++;
	md_uidlist_add(&ul, uid, base, strlen(base), NULL);
	if (uidlist_save(box, &ul, error_r) < 0) {
		/* the file stays: the next sync gives it a UID */
		goto unlock;
	}
	{
		struct ms_msg *m;

		if (box->n + 1 > box->cap) {
			box->cap = box->n + 16;
			box->msgs = xreallocarray(box->msgs, box->cap, sizeof(*box->msgs));
		}
		m = &box->msgs[box->n++];
		memset(m, 0, sizeof(*m));
		m->fname = xstrdup(final);
		m->pub.uid = uid;
		m->pub.flags = flags & MAILSTORE_FLAGS_ALL;
		m->pub.keywords = mask;
		m->pub.size = a->size;
		m->pub.vsize = a->vsize;
		m->date = date > 0 ? date : time(NULL);
		m->date_known = 1;
		box->uidnext = ul.next_uid;
	}
	*uid_r = uid;
	rc = 0;
unlock:
	dotlock_release(&lock);
out:
	md_uidlist_clear(&ul);
	free(path);
	free(base);
	free(dst);
	free(curd);
	mailstore_append_abort(ap);
	return rc;
}

/* the copy's bytes when no hard link can be made (another file system) */
static int
copy_bytes(int from, int to)
{
	char buf[65536];
	ssize_t n;

	while ((n = read(from, buf, sizeof(buf))) > 0)
		if (fsutil_write_all(to, buf, (size_t)n) < 0)
			return -1;
	return n < 0 ? -1 : 0;
}

int
mailstore_msg_copy(struct mailstore_box *src, uint32_t uid, struct mailstore_box *dst,
    uint32_t *uid_r, const char **error_r)
{
	box_own(src);
	box_own(dst);

	long i = mailstore_box_find(src, uid);
	char *kw[MAX_MAILSTORE_KEYWORDS];
	size_t nkw = 0;
	struct mailstore_append *a;
	struct ms_msg *m;
	time_t date = 0;
	int linked = 0, rc;

	if (i < 0) {
		*error_r = err("no such message");
		return -1;
	}
	m = &src->msgs[i];
	for (unsigned k = 0; k < MAX_MAILSTORE_KEYWORDS; k++)
		if ((m->pub.keywords & (1u << k)) && src->kw[k] != NULL)
			kw[nkw++] = xstrdup(src->kw[k]);	/* the commit reloads src's if src == dst */
	rc = mailstore_msg_date(src, uid, &date, error_r);
	if (rc < 0)
		goto out;
	rc = -1;
	if (mailstore_append_begin(dst, &a, error_r) < 0)
		goto out;
	/* a hard link, as Dovecot's maildir_copy_with_hardlinks: same inode, same mtime */
	(void)unlink(a->tmp);
	for (int tries = 0; tries < REFIND_TRIES && !linked; tries++) {
		char *path = msg_path(src, m);

		if (link(path, a->tmp) == 0) {
			linked = 1;
		} else if (errno == ENOENT) {
			free(path);
			if (refind(src, m) < 0) {
				/* expunged by another session meanwhile */
				*error_r = err("message %u is gone", uid);
				rc = MAILSTORE_GONE;
				mailstore_append_abort(&a);
				goto out;
			}
			continue;	/* renamed by another session: once more */
		} else {
			int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW), out;

			out = open(a->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
			if (fd < 0 || out < 0 || copy_bytes(fd, out) < 0) {
				*error_r = err("cannot copy message %u: %s", uid, strerror(errno));
				if (fd >= 0)
					close(fd);
				if (out >= 0)
					close(out);
				free(path);
				mailstore_append_abort(&a);
				goto out;
			}
			close(fd);
			close(a->fd);
			a->fd = out;
			free(path);
			break;
		}
		free(path);
	}
	if (!linked && access(a->tmp, F_OK) < 0) {
		*error_r = err("message %u is gone", uid);	/* renamed away each time */
		rc = MAILSTORE_GONE;
		mailstore_append_abort(&a);
		goto out;
	}
	if (linked) {
		close(a->fd);
		a->fd = open(a->tmp, O_RDONLY | O_CLOEXEC);
		if (a->fd < 0) {
			*error_r = err("cannot open %s: %s", a->tmp, strerror(errno));
			mailstore_append_abort(&a);
			goto out;
		}
	}
	a->size = m->pub.size;
	a->vsize = m->pub.vsize;
	rc = mailstore_append_commit(&a, m->pub.flags, (const char *const *)kw, nkw, date, uid_r,
	    error_r);
out:
	for (size_t k = 0; k < nkw; k++)
		free(kw[k]);
	return rc;
}

/* ------------------------------------------------------------------ */
/* delivery                                                             */

struct mailstore_delivery {
	char *tmp;		/* first user's Maildir/tmp/NAME */
	char *name;
	int fd;
	uint64_t size, vsize;
	int last_cr;
};

int
mailstore_deliver_open_read(const struct mailstore_delivery *d, int *fd_r, const char **error_r)
{
	if ((*fd_r = open(d->tmp, O_RDONLY | O_CLOEXEC)) < 0) {
		*error_r = err("cannot read back %s: %s", d->tmp, strerror(errno));
		return -1;
	}
	return 0;
}

int
mailstore_deliver_begin(const char *root, const char *user, struct mailstore_delivery **d_r,
    const char **error_r)
{
	struct mailstore *ms;
	struct mailstore_delivery *d;
	char host[128];
	struct timeval tv;

	if (mailstore_open(root, user, &ms, error_r) < 0)
		return -1;
	my_hostname(host, sizeof(host));
	host[strcspn(host, ",")] = '\0';
	gettimeofday(&tv, NULL);
	d = xcalloc(1, sizeof(*d));
	d->name = xasprintf("%lld.M%ldP%ldQ%lu.%s", (long long)tv.tv_sec, (long)tv.tv_usec,
	    (long)getpid(), atomic_fetch_add(&append_seq, 1), host);
	d->tmp = xasprintf("%s/tmp/%s", ms->md, d->name);
	mailstore_free(&ms);
	d->fd = open(d->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (d->fd < 0) {
		*error_r = err("cannot create %s: %s", d->tmp, strerror(errno));
		free(d->tmp);
		free(d->name);
		free(d);
		return -1;
	}
	*d_r = d;
	return 0;
}

int
mailstore_deliver_write(struct mailstore_delivery *d, const void *p, size_t n,
    const char **error_r)
{
	const unsigned char *c = p;

	if (fsutil_write_all(d->fd, p, n) < 0) {
		int e = errno;

		*error_r = err("cannot write %s: %s", d->tmp, strerror(e));
		errno = e;	/* the caller tells ENOSPC from the rest */
		return -1;
	}
	d->vsize += n + bare_lfs(c, n, &d->last_cr);
	d->size += n;
	return 0;
}

void
mailstore_deliver_abort(struct mailstore_delivery **dp)
{
	struct mailstore_delivery *d = *dp;

	if (d == NULL)
		return;
	*dp = NULL;
	if (d->fd >= 0)
		close(d->fd);
	unlink(d->tmp);
	free(d->tmp);
	free(d->name);
	free(d);
}

int
mailstore_deliver_commit(struct mailstore_delivery **dp, const char *root,
    const char *const *users, size_t n, char *id_r, const char **error_r)
{
	struct mailstore_delivery *d = *dp;
	char **newdirs = xcalloc(n + 1, sizeof(char *));
	char *final = NULL;
	size_t linked = 0;
	int rc = -1;

	if (n == 0) {
		*error_r = err("no recipient");
		goto done;
	}
	for (size_t i = 0; i < n; i++) {
		struct mailstore *ms;

		if (mailstore_open(root, users[i], &ms, error_r) < 0)
			goto done;
		newdirs[i] = xasprintf("%s/new", ms->md);
		mailstore_free(&ms);
	}
	if (fsync(d->fd) < 0) {
		*error_r = err("cannot write %s: %s", d->tmp, strerror(errno));
		goto done;
	}
	{
		int e = close(d->fd);

		d->fd = -1;
		if (e < 0) {
			*error_r = err("cannot write %s: %s", d->tmp, strerror(errno));
			goto done;
		}
	}
	final = xasprintf("%s,S=%llu,W=%llu", d->name, (unsigned long long)d->size,
	    (unsigned long long)d->vsize);
	for (linked = 0; linked < n; linked++) {
		char *dst = xasprintf("%s/%s", newdirs[linked], final);
		int e = link(d->tmp, dst) < 0 ? errno : 0;

		if (e == 0 && fsutil_fsync_dir(newdirs[linked]) < 0)
			e = errno;
		if (e != 0) {
			*error_r = err("cannot deliver to %s: %s", dst, strerror(e));
			unlink(dst);
			free(dst);
			goto done;
		}
		free(dst);
	}
	snprintf(id_r, 64, "%.63s", final);	/* the name in new/, as the 250 says */
	rc = 0;
done:
	if (rc < 0) {
		/* all or nothing: take back the copies already linked */
		for (size_t i = 0; i < linked; i++) {
			char *dst = xasprintf("%s/%s", newdirs[i], final);

			unlink(dst);
			free(dst);
		}
	}
	for (size_t i = 0; i < n; i++)
		free(newdirs[i]);
	free(newdirs);
	free(final);
	mailstore_deliver_abort(dp);	/* the tmp/ name goes: new/ holds the links */
	return rc;
}
