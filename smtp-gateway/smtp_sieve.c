/*
 * smtp_sieve - the server and domain Sieve scripts in the SMTP gateway, at
 * the final dot (issue 10; the milter's counterpart is milter/milter.c).
 *
 *   smtp_sieve_open/write()   spool the message as it arrives (loop)
 *   smtp_sieve_open_mem()     a small message, whole in the session's
 *                             memory: spooled by smtp_sieve_run() (job)
 *   smtp_sieve_run()          run the scripts and do their side effects
 *                             (job thread: file I/O, relayhost sends)
 *   smtp_sieve_take_store()   the store route's spool, for the delivery
 *   smtp_sieve_pump()         the downstream route's spool, downstream
 *   smtp_sieve_verdict()      the verdict for engine_log()
 *
 * The message is never held whole: the scripts see the header section
 * (read up to SMTP_SIEVE_MAX_HEADER) and the body only when one requires it
 * (up to SMTP_SIEVE_MAX_BODY; `size` sees the real size). Header edits
 * write a new spool: the header section as the scripts left it -- fields
 * they kept are copied byte for byte, folding and all -- then the rest of
 * the message copied from the old spool in pieces. On the store route the
 * spool begins with our Return-Path: line: the scripts do not see it (the
 * milter's do not either), it stays on top, and redirects go without it.
 *
 * Quarantine is a copy into quarantine_dir (a Maildir: tmp/, fsync, link
 * into new/, fsync new/) that admins review with any Maildir reader; the
 * recipients get nothing. Redirect targets in mydomains are left to the
 * caller (store route: more recipients of the same delivery); the others
 * are sent through the relayhost before the reply, from the original
 * sender, as the message will be delivered (edits included). If one of
 * them cannot be sent the result is a temporary failure: the client tries
 * again later, nothing is lost.
 *
 * Never logs message bytes unescaped. Not thread-safe: one per message.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/hdrparse.h"
#include "common/log.h"
#include "common/mailaddr.h"
#include "common/xmalloc.h"
#include "rules/policy.h"
#include "rules/sieve.h"
#include "smtp-gateway/downstream.h"
#include "smtp-gateway/relay_send.h"
#include "smtp-gateway/smtp_sieve.h"
#include "storage-adapter/maildir.h"
#include "storage-adapter/sieve_deliver.h"

#define COPY_PIECE 65536

struct smtp_sieve {
	const struct smtp_sieve_conf *k;
	/* the spool: a store tmp/ file (store route) or a file of ours */
	struct maildir_tmp *st;
	int fd;			/* ours: read-write; -1 none */
	char *path;		/* ours: its name, removed at free */
	char *local, *domain;	/* the store route's first local recipient */
	size_t size;		/* message octets written (head not counted) */
	/* a small message not spooled yet (smtp_sieve_open_mem): the job
	 * thread writes head + mem to the spool before the scripts run */
	int store;		/* the route */
	int pending;		/* head + mem not spooled yet */
	char *head;
	const char *mem;
	size_t memlen;
	/* after an edit: the new spool, same kind */
	struct maildir_tmp *st2;
	int fd2;
	char *path2;
	off_t pump_off;
	struct smtp_sieve_result res;
	/* the store route, passed unedited: the parsed message for the user
	 * level in the same job (smtp_sieve_msg) */
	struct sieve_msg *pmsg;
	struct sieve_deliver_msg pre;
};

static atomic_uint seq;

static char errbuf_static[300];

static const char *
seterr(char *buf, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static const char *
seterr(char *buf, size_t cap, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, cap, fmt, ap);
	va_end(ap);
	return buf;
}

static int
mkdir_p(const char *dir)
{
	char *p = xstrdup(dir);
	int rc = 0;

	for (char *s = p + 1; *s; s++) {
		if (*s != '/')
			continue;
		*s = '\0';
		if (mkdir(p, 0700) < 0 && errno != EEXIST)
			rc = -1;
		*s = '/';
	}
	if (rc == 0 && mkdir(p, 0700) < 0 && errno != EEXIST)
		rc = -1;
	free(p);
	return rc;
}

int
smtp_sieve_dirs(const char *qdir, const char **error_r)
{
	static const char *const sub[] = { "tmp", "new", "cur" };

	for (int i = 0; i < 3; i++) {
		char *d = xasprintf("%s/%s", qdir, sub[i]);
		int rc = mkdir_p(d);

		free(d);
		if (rc < 0) {
			*error_r = seterr(errbuf_static, sizeof(errbuf_static),
			    "quarantine_dir = %s: cannot create it: %s", qdir, strerror(errno));
			return -1;
		}
	}
	return 0;
}

/* a unique Maildir name */
static char *
unique_name(const struct smtp_sieve_conf *k)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return xasprintf("%lld.M%ldP%dQ%u.%s", (long long)ts.tv_sec, ts.tv_nsec / 1000,
	    (int)getpid(), atomic_fetch_add(&seq, 1) + 1, k->myhostname != NULL ? k->myhostname :
	    "localhost");
}

/* a new file in quarantine_dir/tmp/ */
static int
own_open(const struct smtp_sieve_conf *k, int *fd_r, char **path_r, char **name_r)
{
	char *name = unique_name(k);
	char *path = xasprintf("%s/tmp/%s", k->quarantine_dir, name);
	int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);

	if (fd < 0) {
		free(path);
		free(name);
		return -1;
	}
	*fd_r = fd;
	*path_r = path;
	if (name_r != NULL)
		*name_r = name;
	else
		free(name);
	return 0;
}

static int
write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static ssize_t
pread_full(int fd, char *buf, size_t n, off_t off)
{
	size_t got = 0;

	while (got < n) {
		ssize_t r = pread(fd, buf + got, n - got, off + (off_t)got);

		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (r == 0)
			break;
		got += (size_t)r;
	}
	return (ssize_t)got;
}

/* the route's first local recipient (store) */
static int
first_local(struct smtp_sieve *sv, const struct smtp_msg *m)
{
	for (size_t i = 0; i < m->nrcpt && sv->local == NULL; i++) {
		if (!m->rcpt_local[i])
			continue;
		sv->local = xstrdup(m->rcpt[i]);
		sv->domain = strrchr(sv->local, '@');
		*sv->domain++ = '\0';
	}
	return sv->local != NULL ? 0 : -1;
}

/* the spool file, with head written first; errno tells why it failed */
static int
spool_create(struct smtp_sieve *sv, const char *head, const char **error_r)
{
	static __thread char err[300];
	const struct smtp_sieve_conf *k = sv->k;
	const char *e;

	if (sv->store) {
		struct maildir_rcpt r;

		r.local = sv->local;
		r.domain = sv->domain;
		if (maildir_tmp_open(k->maildir_root, &r, &sv->st, &e) < 0 ||
		    maildir_tmp_write(sv->st, head, strlen(head), &e) < 0) {
			int en = errno;

			maildir_tmp_abort(&sv->st);
			errno = en;
			*error_r = e;
			return -1;
		}
		return 0;
	}
	if (own_open(k, &sv->fd, &sv->path, NULL) < 0) {
		*error_r = seterr(err, sizeof(err), "%s/tmp: %s", k->quarantine_dir, strerror(errno));
		return -1;
	}
	if (write_all(sv->fd, head, strlen(head)) < 0) {
		*error_r = seterr(err, sizeof(err), "%s: %s", sv->path, strerror(errno));
		return -1;
	}
	return 0;
}

int
smtp_sieve_open(const struct smtp_sieve_conf *k, const struct smtp_msg *m, int store,
    const char *head, struct smtp_sieve **sv_r, const char **error_r)
{
	struct smtp_sieve *sv = xcalloc(1, sizeof(*sv));

	sv->k = k;
	sv->fd = sv->fd2 = -1;
	sv->store = store;
	if (store && first_local(sv, m) < 0) {
		*error_r = "no local recipient";
		goto fail;
	}
	if (spool_create(sv, head, error_r) < 0)
		goto fail;
	*sv_r = sv;
	return 0;
fail:
	smtp_sieve_free(&sv);
	return -1;
}

int
smtp_sieve_open_mem(const struct smtp_sieve_conf *k, const struct smtp_msg *m, int store,
    const char *head, const char *data, size_t len, struct smtp_sieve **sv_r,
    const char **error_r)
{
	struct smtp_sieve *sv = xcalloc(1, sizeof(*sv));

	sv->k = k;
	sv->fd = sv->fd2 = -1;
	sv->store = store;
	if (store && first_local(sv, m) < 0) {
		*error_r = "no local recipient";
		smtp_sieve_free(&sv);
		return -1;
	}
	sv->head = xstrdup(head);
	sv->pending = 1;
	sv->mem = data;
	sv->memlen = len;
	sv->size = len;
	*sv_r = sv;
	return 0;
}

int
smtp_sieve_write(struct smtp_sieve *sv, const char *p, size_t n, const char **error_r)
{
	static char err[300];

	if (sv->pending) {
		*error_r = "the message was given whole";
		errno = EINVAL;
		return -1;
	}
	if (sv->st != NULL) {
		if (maildir_tmp_write(sv->st, p, n, error_r) < 0)
			return -1;
	} else if (write_all(sv->fd, p, n) < 0) {
		*error_r = seterr(err, sizeof(err), "%s: %s", sv->path, strerror(errno));
		return -1;
	}
	sv->size += n;
	return 0;
}

size_t
smtp_sieve_size(const struct smtp_sieve *sv)
{
	return sv->size;
}

const struct smtp_sieve_result *
smtp_sieve_result(const struct smtp_sieve *sv)
{
	return &sv->res;
}

/* ---- reading the spool ---- */

/* a field of the spooled header section, as bytes */
struct rawfield {
	off_t off;
	size_t len;
};

struct spooled {
	int fd;			/* the spool, read-only use; -1: the message in memory */
	int own_fd;		/* ours to close */
	/* a small message (smtp_sieve_open_mem): read from head + mem, the
	 * same bytes as the spool, which is not read back */
	const char *head, *mem;
	size_t headlen, memlen;
	off_t size;
	char *hbuf;		/* the header section (and the body, when read) */
	int hbuf_tl;		/* hbuf is the thread's buffer (thread_hbuf), not ours */
	size_t hend;		/* the end of the fields (before the empty line) */
	int whole;		/* the header section ended within the cap */
	int body_read;		/* hbuf has the body (or there is none) */
	size_t body_off;	/* where the body starts (spool offsets) */
	size_t skip;		/* our Return-Path: line (store route): not the scripts' */
	struct rawfield *raw;
	size_t nraw;
	struct sieve_header rp;	/* our Return-Path: field, parsed */
	int has_rp;
};

/* n octets from off of the message (the spool, or head + mem) */
static ssize_t
spooled_pread(const struct spooled *s, char *buf, size_t n, off_t off)
{
	size_t got = 0, o = (size_t)off;

	if (s->fd >= 0)
		return pread_full(s->fd, buf, n, off);
	if (o < s->headlen) {
		got = s->headlen - o < n ? s->headlen - o : n;
		memcpy(buf, s->head + o, got);
	}
	if (got < n && o + got >= s->headlen && o + got - s->headlen < s->memlen) {
		size_t mo = o + got - s->headlen, k = s->memlen - mo < n - got ? s->memlen - mo :
		    n - got;

		memcpy(buf + got, s->mem + mo, k);
		got += k;
	}
	return (ssize_t)got;
}

static void
spooled_free(struct spooled *s)
{
	if (s->own_fd && s->fd >= 0)
		close(s->fd);
	if (!s->hbuf_tl)
		free(s->hbuf);
	free(s->raw);
	if (s->has_rp) {
		free(s->rp.name);
		free(s->rp.value);
	}
	memset(s, 0, sizeof(*s));
	s->fd = -1;
}

static int
count_cb(void *arg, const struct hdr_field *f)
{
	(void)arg;
	(void)f;
	return 0;
}

/* one header-section parser per job thread, reset for each message (it
 * carries a 64 KB field buffer: not allocated and cleared per message) */
static pthread_key_t hp_key;
static pthread_once_t hp_once = PTHREAD_ONCE_INIT;

static void
hp_destroy(void *p)
{
	struct hdrparse *hp = p;

	hdrparse_free(&hp);
}

static void
hp_key_init(void)
{
	if (pthread_key_create(&hp_key, hp_destroy) != 0)
		abort();
}

static struct hdrparse *
thread_hdrparse(void)
{
	struct hdrparse *hp;

	(void)pthread_once(&hp_once, hp_key_init);
	if ((hp = pthread_getspecific(hp_key)) != NULL) {
		hdrparse_reset(hp);
		return hp;
	}
	hp = hdrparse_new(count_cb, NULL);
	if (pthread_setspecific(hp_key, hp) != 0)
		abort();
	return hp;
}

/* one read buffer per job thread for messages whose header section fits in
 * HBUF_KEEP (a 1 KB message's malloc there cost ~6,000 instructions: glibc
 * consolidates its fast bins for it); larger ones get a buffer of their own */
#define HBUF_KEEP	(64 * 1024)
static pthread_key_t hbuf_key;
static pthread_once_t hbuf_once = PTHREAD_ONCE_INIT;

static void
hbuf_key_init(void)
{
	if (pthread_key_create(&hbuf_key, free) != 0)
		abort();
}

static char *
thread_hbuf(void)
{
	char *b;

	(void)pthread_once(&hbuf_once, hbuf_key_init);
	if ((b = pthread_getspecific(hbuf_key)) == NULL) {
		b = xmalloc(HBUF_KEEP);
		if (pthread_setspecific(hbuf_key, b) != 0)
			abort();
	}
	return b;
}

/* the fields in [skip, hend) of buf: a line beginning with a blank continues */
static void
split_fields(struct spooled *s)
{
	size_t i = s->skip;

	while (i < s->hend) {
		const char *nl = memchr(s->hbuf + i, '\n', s->hend - i);
		size_t end = nl != NULL ? (size_t)(nl - s->hbuf) + 1 : s->hend;

		if ((s->hbuf[i] == ' ' || s->hbuf[i] == '\t') && s->nraw > 0) {
			s->raw[s->nraw - 1].len = end - (size_t)s->raw[s->nraw - 1].off;
		} else {
			/* room for 16, then doubled (not a realloc per field) */
			if (s->nraw == 0 || (s->nraw >= 16 && (s->nraw & (s->nraw - 1)) == 0))
				s->raw = xreallocarray(s->raw, s->nraw ? 2 * s->nraw : 16,
				    sizeof(*s->raw));
			s->raw[s->nraw].off = (off_t)i;
			s->raw[s->nraw].len = end - i;
			s->nraw++;
		}
		i = end;
	}
}

/*
 * Read the header section (and maybe the body) into a sieve_msg. store: the
 * spool starts with our Return-Path: line, which the scripts do not see (the
 * milter's do not either: the MTA adds it at delivery) and which stays on
 * top of the stored copy.
 */
static struct sieve_msg *
spooled_read(struct spooled *s, int store, int need_body, const char **error_r)
{
	static __thread char err[200];
	struct stat st;
	struct hdrparse *hp;
	ssize_t r;
	size_t len, text_len;
	long used;
	int stop;
	struct sieve_msg *m;

	if (s->fd < 0) {
		s->size = (off_t)(s->headlen + s->memlen);
	} else if (fstat(s->fd, &st) < 0) {
		*error_r = seterr(err, sizeof(err), "cannot stat the spool: %s", strerror(errno));
		return NULL;
	} else {
		s->size = st.st_size;
	}
	len = s->size < SMTP_SIEVE_MAX_HEADER ? (size_t)s->size : SMTP_SIEVE_MAX_HEADER;
	s->hbuf_tl = len + 1 <= HBUF_KEEP;
	s->hbuf = s->hbuf_tl ? thread_hbuf() : xmalloc(len + 1);
	if ((r = spooled_pread(s, s->hbuf, len, 0)) < 0) {
		*error_r = seterr(err, sizeof(err), "cannot read the spool: %s", strerror(errno));
		return NULL;
	}
	len = (size_t)r;
	if (store && len > 12 && strncasecmp(s->hbuf, "Return-Path:", 12) == 0) {
		const char *nl = memchr(s->hbuf, '\n', len);

		s->skip = nl != NULL ? (size_t)(nl - s->hbuf) + 1 : 0;
	}
	hp = thread_hdrparse();
	used = hdrparse_feed(hp, s->hbuf + s->skip, len - s->skip, &stop);
	if (!hdrparse_done(hp) && (off_t)len == s->size)
		(void)hdrparse_finish(hp, &stop);
	s->whole = hdrparse_done(hp) || (off_t)len == s->size;
	text_len = s->whole && hdrparse_done(hp) ?
	    s->skip + (size_t)hdrparse_body_offset(hp) : len;
	(void)used;
	/* the fields end before the empty line, when there is one */
	s->hend = text_len;
	if (s->hend >= s->skip + 2 && s->hbuf[s->hend - 1] == '\n') {
		size_t e = s->hend - 1;

		if (e > s->skip && s->hbuf[e - 1] == '\r')
			e--;
		if (e == s->skip || s->hbuf[e - 1] == '\n')
			s->hend = e;	/* the empty line itself stays in the tail */
	}
	split_fields(s);
	s->body_off = text_len;
	s->body_read = need_body || (off_t)text_len >= s->size;
	if (need_body && (off_t)text_len < s->size) {
		size_t want = (size_t)(s->size - (off_t)text_len);

		if (want > SMTP_SIEVE_MAX_BODY)
			want = SMTP_SIEVE_MAX_BODY;
		if (s->hbuf_tl && text_len + want + 1 > HBUF_KEEP) {
			char *b = xmalloc(text_len + want + 1);

			memcpy(b, s->hbuf, text_len);
			s->hbuf = b;
			s->hbuf_tl = 0;
		} else if (!s->hbuf_tl) {
			s->hbuf = xrealloc(s->hbuf, text_len + want + 1);
		}
		if ((r = spooled_pread(s, s->hbuf + text_len, want, (off_t)text_len)) < 0) {
			*error_r = seterr(err, sizeof(err), "cannot read the spool: %s",
			    strerror(errno));
			return NULL;
		}
		text_len += (size_t)r;
	}
	/* parsed from offset 0: our Return-Path: field is kept aside for the
	 * user level (hand_over) and the scripts do not see it */
	m = sieve_msg_parse(s->hbuf, text_len);
	if (s->skip > 0 && m->nhdr > 0 && strcasecmp(m->hdr[0].name, "Return-Path") == 0) {
		s->rp = m->hdr[0];
		s->has_rp = 1;
		memmove(m->hdr, m->hdr + 1, --m->nhdr * sizeof(*m->hdr));
	} else if (s->skip > 0) {
		sieve_msg_free(&m);	/* not ours after all: as the scripts see it */
		m = sieve_msg_parse(s->hbuf + s->skip, text_len - s->skip);
	}
	m->size = (size_t)s->size - s->skip;
	if (m->nhdr != s->nraw)
		s->nraw = 0;	/* cannot pair them: an edit rewrites every field */
	return m;
}

/* ---- writing a copy: the edited header, then the rest ---- */

typedef int (*sink_fn)(void *arg, const char *p, size_t n);

struct sink_store {
	struct maildir_tmp *t;
};

static int
sink_store(void *arg, const char *p, size_t n)
{
	const char *e;

	return maildir_tmp_write(((struct sink_store *)arg)->t, p, n, &e);
}

static int
sink_fd(void *arg, const char *p, size_t n)
{
	return write_all(*(int *)arg, p, n);
}

/* a header value for a line of its own: no CR or LF of the script's */
static int
emit_field(sink_fn out, void *arg, const struct sieve_header *h)
{
	size_t nl = strlen(h->name), vl = strlen(h->value);
	char *line = xmalloc(nl + vl + 5);
	int rc;

	memcpy(line, h->name, nl);
	memcpy(line + nl, ": ", 2);
	for (size_t i = 0; i < vl; i++)
		line[nl + 2 + i] = h->value[i] == '\r' || h->value[i] == '\n' ? ' ' : h->value[i];
	memcpy(line + nl + 2 + vl, "\r\n", 2);
	rc = out(arg, line, nl + vl + 4);
	free(line);
	return rc;
}

static int
copy_range(const struct spooled *s, off_t from, off_t to, sink_fn out, void *arg)
{
	char *buf = xmalloc(COPY_PIECE);
	int rc = 0;

	while (from < to) {
		size_t want = (size_t)(to - from) < COPY_PIECE ? (size_t)(to - from) : COPY_PIECE;
		ssize_t r = spooled_pread(s, buf, want, from);

		if (r <= 0 || out(arg, buf, (size_t)r) < 0) {
			rc = -1;
			break;
		}
		from += r;
	}
	free(buf);
	return rc;
}

/*
 * The message as the scripts left it: hdr NULL copies the spool as it is;
 * else each field of hdr is written -- a field of the original, in order,
 * byte for byte -- then the empty line and the body.
 */
static int
emit_message(const struct spooled *s, const struct sieve_msg *m, const struct sieve_header *hdr,
    size_t nhdr, sink_fn out, void *arg)
{
	size_t j = 0;

	if (hdr == NULL)
		return copy_range(s, 0, s->size, out, arg);
	if (s->skip > 0 && out(arg, s->hbuf, s->skip) < 0)
		return -1;	/* our Return-Path: stays on top */
	for (size_t i = 0; i < nhdr; i++) {
		size_t k;

		for (k = j; k < s->nraw; k++)
			if (strcasecmp(m->hdr[k].name, hdr[i].name) == 0 &&
			    strcmp(m->hdr[k].value, hdr[i].value) == 0)
				break;
		if (k < s->nraw) {
			if (out(arg, s->hbuf + s->raw[k].off, s->raw[k].len) < 0)
				return -1;
			j = k + 1;
		} else if (emit_field(out, arg, &hdr[i]) < 0) {
			return -1;
		}
	}
	return copy_range(s, (off_t)s->hend, s->size, out, arg);
}

/* quarantine: a copy into quarantine_dir/new/, fsynced, named in qid */
static int
quarantine(struct smtp_sieve *sv, const struct spooled *s, const struct sieve_msg *m,
    const struct sieve_door_result *d, const char **error_r)
{
	static __thread char err[300];
	int fd, rc = -1, dfd;
	char *path, *name, *dst, *dir;

	if (own_open(sv->k, &fd, &path, &name) < 0) {
		*error_r = seterr(err, sizeof(err), "%s/tmp: %s", sv->k->quarantine_dir,
		    strerror(errno));
		return -1;
	}
	dst = xasprintf("%s/new/%s", sv->k->quarantine_dir, name);
	dir = xasprintf("%s/new", sv->k->quarantine_dir);
	if (emit_message(s, m, d->hdr, d->nhdr, sink_fd, &fd) < 0 || fsync(fd) < 0 ||
	    link(path, dst) < 0) {
		*error_r = seterr(err, sizeof(err), "quarantine %s: %s", dst, strerror(errno));
	} else {
		rc = 0;
		if ((dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) >= 0) {
			if (fsync(dfd) < 0)
				rc = -1;
			close(dfd);
		}
		if (rc < 0)
			*error_r = seterr(err, sizeof(err), "quarantine %s: %s", dir, strerror(errno));
		snprintf(sv->res.qid, sizeof(sv->res.qid), "%s", name);
	}
	close(fd);
	(void)unlink(path);
	free(path);
	free(name);
	free(dst);
	free(dir);
	return rc;
}

/* the edited message as a new spool of the same kind */
static int
rewrite(struct smtp_sieve *sv, const struct spooled *s, const struct sieve_msg *m,
    const struct sieve_door_result *d, const char **error_r)
{
	static __thread char err[300];

	if (sv->st != NULL) {
		struct maildir_rcpt r = { sv->local, sv->domain };
		struct sink_store ss;

		if (maildir_tmp_open(sv->k->maildir_root, &r, &sv->st2, error_r) < 0)
			return -1;
		ss.t = sv->st2;
		if (emit_message(s, m, d->hdr, d->nhdr, sink_store, &ss) < 0) {
			*error_r = "writing the edited message to tmp/ failed";
			maildir_tmp_abort(&sv->st2);
			return -1;
		}
		return 0;
	}
	if (own_open(sv->k, &sv->fd2, &sv->path2, NULL) < 0 ||
	    emit_message(s, m, d->hdr, d->nhdr, sink_fd, &sv->fd2) < 0) {
		*error_r = seterr(err, sizeof(err), "%s/tmp: %s", sv->k->quarantine_dir,
		    strerror(errno));
		return -1;
	}
	return 0;
}

/* a descriptor on what goes on (the edited spool when there is one) */
static int
final_fd(struct smtp_sieve *sv, int *own_r)
{
	const char *e;
	int fd;

	*own_r = 0;
	if (sv->st2 != NULL || (sv->st != NULL && sv->fd2 < 0)) {
		if (maildir_tmp_open_read(sv->st2 != NULL ? sv->st2 : sv->st, &fd, &e) < 0)
			return -1;
		*own_r = 1;
		return fd;
	}
	return sv->fd2 >= 0 ? sv->fd2 : sv->fd;
}

/* what a redirect sends: the final spool without our Return-Path: (skip
 * octets; then a copy in quarantine_dir/tmp/, *path_r to remove) */
static int
redirect_fd(struct smtp_sieve *sv, size_t skip, int *own_r, char **path_r)
{
	struct stat st;
	int fd = final_fd(sv, own_r), cfd;

	*path_r = NULL;
	if (fd < 0 || skip == 0)
		return fd;
	if (fstat(fd, &st) < 0 || own_open(sv->k, &cfd, path_r, NULL) < 0) {
		if (*own_r)
			close(fd);
		return -1;
	}
	struct spooled src = { .fd = fd };

	if (copy_range(&src, (off_t)skip, st.st_size, sink_fd, &cfd) < 0) {
		close(cfd);
		cfd = -1;
	}
	if (*own_r)
		close(fd);
	*own_r = cfd >= 0;
	return cfd;
}

/* redirects outside mydomains, through the relayhost; targets inside are
 * left for the caller (the store route adds them as recipients) */
static int
redirects(struct smtp_sieve *sv, const struct smtp_msg *m, const struct sieve_door_result *d,
    int store, size_t skip)
{
	int fd = -1, own = 0, rc = 0;
	char *copy = NULL;

	for (size_t i = 0; i < d->nredirect && rc == 0; i++) {
		const char *at = strrchr(d->redirect[i], '@');
		char reply[RELAY_REPLY_MAX];

		if (store && at != NULL && sv->k->pol != NULL && policy_is_my_domain(sv->k->pol, at + 1)) {
			sv->res.local = xreallocarray(sv->res.local, sv->res.nlocal + 1, sizeof(char *));
			sv->res.local[sv->res.nlocal++] = xstrdup(d->redirect[i]);
			continue;
		}
		if (sv->k->relayhost == NULL) {
			char esc[LOG_ESCAPE_BUFSZ];

			snprintf(sv->res.err, sizeof(sv->res.err),
			    "sieve redirect to %.200s: no relayhost is configured",
			    log_escape(esc, d->redirect[i], strlen(d->redirect[i])));
			rc = -1;
			break;
		}
		if (fd < 0 && (fd = redirect_fd(sv, skip, &own, &copy)) < 0) {
			snprintf(sv->res.err, sizeof(sv->res.err), "sieve redirect: cannot read the spool");
			rc = -1;
			break;
		}
		if (relay_send(sv->k->relayhost, sv->k->myhostname, sv->k->timeout,
		    m->sender != NULL ? m->sender : "", d->redirect[i], NULL, fd, reply,
		    sizeof(reply)) < 0) {
			char esc[LOG_ESCAPE_BUFSZ];

			char esc2[LOG_ESCAPE_BUFSZ];

			snprintf(sv->res.err, sizeof(sv->res.err), "sieve redirect to %.150s: the relayhost "
			    "said %.100s", log_escape(esc2, d->redirect[i], strlen(d->redirect[i])),
			    log_escape(esc, reply, strlen(reply)));
			rc = -1;
			break;
		}
		sv->res.nredirect++;
		{
			char esc[LOG_ESCAPE_BUFSZ];

			log_info("sieve: redirect to %s sent through the relayhost (%s)",
			    log_escape(esc, d->redirect[i], strlen(d->redirect[i])), d->where);
		}
	}
	if (own)
		close(fd);
	if (copy != NULL)
		(void)unlink(copy);
	free(copy);
	return rc;
}

static void hand_over(struct smtp_sieve *sv, struct spooled *s, struct sieve_msg **smp);

void
smtp_sieve_run(struct smtp_sieve *sv, const struct smtp_msg *m)
{
	struct smtp_sieve_result *res = &sv->res;
	struct spooled s;
	struct sieve_msg *sm;
	struct sieve_door_result d;
	const char *err = NULL;
	char ip[CIDR_TEXT_MAX];
	int store = sv->store;

	memset(&s, 0, sizeof(s));
	s.fd = -1;
	if (sv->pending) {	/* a small message: its spool is made here, off the loop */
		const char *mem = sv->mem;

		sv->pending = 0;	/* written: smtp_sieve_write() takes no more */
		sv->size = 0;
		errno = 0;
		if (spool_create(sv, sv->head, &err) < 0 ||
		    smtp_sieve_write(sv, mem, sv->memlen, &err) < 0) {
			res->tempfail = 1;
			res->spool_errno = errno ? errno : EIO;
			snprintf(res->err, sizeof(res->err), "spooling: %s", err);
			return;
		}
		/* the scripts read the same bytes from memory (the session's
		 * until this job is done): the spool is not read back */
		s.head = sv->head;
		s.headlen = strlen(sv->head);
		s.mem = mem;
		s.memlen = sv->memlen;
	} else if (store) {
		if (maildir_tmp_open_read(sv->st, &s.fd, &err) < 0) {
			res->tempfail = 1;
			snprintf(res->err, sizeof(res->err), "sieve: %s", err);
			return;
		}
		s.own_fd = 1;
	} else {
		s.fd = sv->fd;
	}
	sm = spooled_read(&s, store, sieve_rules_need_body(m->sieve), &err);
	if (sm == NULL) {
		res->tempfail = 1;
		snprintf(res->err, sizeof(res->err), "sieve: %s", err);
		spooled_free(&s);
		return;
	}
	sieve_msg_set_env(sm, "from", m->sender != NULL ? m->sender : "");
	if (m->sieve_rcpt != NULL)
		sieve_msg_set_env(sm, "to", m->sieve_rcpt);
	sieve_rules_msg_facts(sm, m->addr != NULL ? cidr_addr_format(m->addr, ip) : NULL,
	    m->remote_host, m->raw_helo, m->auth_user != NULL && m->auth_user[0] ? m->auth_user :
	    NULL, m->country);
	sieve_rules_eval(m->sieve, m->sieve_domain, sm, sv->k->limits, &d);
	if (log_is_debug())
		for (size_t i = 0; i < d.ntrace; i++)
			log_debug("sieve: %s", d.trace[i]);
	res->action = d.action;
	res->tag = d.tag;
	snprintf(res->text, sizeof(res->text), "%s", d.text);
	snprintf(res->where, sizeof(res->where), "%s", d.where);
	res->drop_original = d.drop_original;
	if (d.hdr != NULL && !s.whole) {
		log_warn("sieve: header section past %d octets: the edits of %s are not applied",
		    SMTP_SIEVE_MAX_HEADER, d.where);
		sieve_headers_free(&d.hdr, d.nhdr);
		d.nhdr = 0;
	}
	res->edited = d.hdr != NULL;
	if (d.action == SIEVE_DOOR_REJECT || d.action == SIEVE_DOOR_DISCARD)
		goto done;
	/* what goes on is the edited message: redirected copies too */
	if (d.action == SIEVE_DOOR_PASS && d.hdr != NULL && rewrite(sv, &s, sm, &d, &err) < 0) {
		res->tempfail = 1;
		snprintf(res->err, sizeof(res->err), "sieve: header edits: %s", err);
		goto done;
	}
	if (redirects(sv, m, &d, store, s.skip) < 0) {
		res->tempfail = 1;
		goto done;
	}
	if (d.action == SIEVE_DOOR_QUARANTINE && quarantine(sv, &s, sm, &d, &err) < 0) {
		res->tempfail = 1;
		snprintf(res->err, sizeof(res->err), "sieve: %s", err);
	}
	if (d.action == SIEVE_DOOR_PASS && !res->tempfail && d.hdr == NULL && store && s.whole)
		hand_over(sv, &s, &sm);
done:
	sieve_door_result_free(&d);
	sieve_msg_free(&sm);
	spooled_free(&s);
}

/*
 * Keep the parsed message for the user level (sieve_deliver_msg): as the
 * plan would read it from the spool, our Return-Path: field first and the
 * size the spool's; the envelope and facts are set there again.
 */
static void
hand_over(struct smtp_sieve *sv, struct spooled *s, struct sieve_msg **smp)
{
	struct sieve_msg *sm = *smp;
	const char *nl = memchr(s->hbuf, '\n', s->body_off);

	if (s->skip > 0) {
		if (!s->has_rp)
			return;	/* the user level reads the spool as before */
		sieve_msg_changed(sm);
		sm->hdr = xreallocarray(sm->hdr, sm->nhdr + 1, sizeof(*sm->hdr));
		memmove(sm->hdr + 1, sm->hdr, sm->nhdr * sizeof(*sm->hdr));
		sm->hdr[0] = s->rp;
		sm->nhdr++;
		s->has_rp = 0;	/* the message's now */
	}
	sm->size = (size_t)s->size;
	sv->pmsg = sm;
	*smp = NULL;
	sv->pre.msg = sm;
	sv->pre.has_body = s->body_read;
	sv->pre.body_off = (long long)s->body_off;
	sv->pre.lf = nl != NULL && (nl == s->hbuf || nl[-1] != '\r');
}

const struct sieve_deliver_msg *
smtp_sieve_msg(const struct smtp_sieve *sv)
{
	return sv != NULL && sv->pmsg != NULL ? &sv->pre : NULL;
}

struct maildir_tmp *
smtp_sieve_take_store(struct smtp_sieve *sv)
{
	struct maildir_tmp *t;

	if (sv->st2 != NULL) {
		t = sv->st2;
		sv->st2 = NULL;
		return t;
	}
	t = sv->st;
	sv->st = NULL;
	return t;
}

int
smtp_sieve_pump(struct smtp_sieve *sv, struct downstream *ds, size_t queue_max)
{
	int fd = sv->fd2 >= 0 ? sv->fd2 : sv->fd;
	char *buf;

	if (fd < 0)
		return -1;
	buf = xmalloc(COPY_PIECE);
	while (downstream_queued(ds) < queue_max) {
		ssize_t r = pread(fd, buf, COPY_PIECE, sv->pump_off);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			free(buf);
			return -1;
		}
		if (r == 0) {
			free(buf);
			return 1;
		}
		downstream_send(ds, NULL, buf, (size_t)r);
		sv->pump_off += r;
	}
	free(buf);
	return 0;
}

void
smtp_sieve_verdict(const struct smtp_sieve_result *r, struct verdict *v)
{
	memset(v, 0, sizeof(*v));
	v->tag = r->tag;
	switch (r->action) {
	case SIEVE_DOOR_REJECT:
		v->action = VERDICT_REJECT;
		snprintf(v->code, sizeof(v->code), "550");
		snprintf(v->dsn, sizeof(v->dsn), "5.7.1");
		snprintf(v->text, sizeof(v->text), "%.*s", (int)sizeof(v->text) - 1, r->text);
		break;
	case SIEVE_DOOR_DISCARD:
		v->action = VERDICT_DISCARD;
		break;
	case SIEVE_DOOR_QUARANTINE:
		v->action = VERDICT_QUARANTINE;
		break;
	case SIEVE_DOOR_PASS:
		v->action = VERDICT_CONTINUE;
		break;
	}
	snprintf(v->rule, sizeof(v->rule), "sieve %.240s", r->where);
}

void
smtp_sieve_free(struct smtp_sieve **svp)
{
	struct smtp_sieve *sv = *svp;

	if (sv == NULL)
		return;
	*svp = NULL;
	maildir_tmp_abort(&sv->st);
	maildir_tmp_abort(&sv->st2);
	if (sv->fd >= 0)
		close(sv->fd);
	if (sv->fd2 >= 0)
		close(sv->fd2);
	if (sv->path != NULL)
		(void)unlink(sv->path);
	if (sv->path2 != NULL)
		(void)unlink(sv->path2);
	free(sv->path);
	free(sv->path2);
	sieve_msg_free(&sv->pmsg);
	free(sv->head);
	free(sv->local);
	for (size_t i = 0; i < sv->res.nlocal; i++)
		free(sv->res.local[i]);
	free(sv->res.local);
	free(sv);
}
