/*
 * sieve_deliver.c - a user's Sieve script at delivery into the bundled
 * store (issue 10); contract in sieve_deliver.h.
 *
 *   plan:  read the header (and the body when asked) from the spooled file,
 *          run the user's script, turn its actions into store copies and
 *          outgoing messages (redirect, vacation per RFC 5230, RFC 5429
 *          refusal as an MDN); nothing written
 *   store: copies into the mailstore (mailstore_deliver_* for a flagless
 *          INBOX copy, append with flags and keywords otherwise); a folder
 *          that is missing without :create, or cannot be written, is
 *          replaced by the INBOX (logged), as Pigeonhole's implicit keep on
 *          a failed fileinto
 *   sent:  the vacation periods recorded in STATE_DIR/sieve-vacation/USER
 *
 * Never logs raw message bytes: folder names and addresses are logged
 * through the mailstore's checks or as the script's own literals, capped.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/fsutil.h"
#include "common/log.h"
#include "common/xmalloc.h"
#include "rules/sieve_ast.h"
#include "storage-adapter/sieve_deliver.h"
#include "storage-adapter/sievestore.h"

static _Thread_local char errbuf[512];

static const char *
seterr(const char *fmt, const char *a)
{
	snprintf(errbuf, sizeof(errbuf), fmt, a);
	return errbuf;
}

int
sieve_deliver_load_user(const char *sieve_dir, const char *user, const struct sieve_limits *lim,
    struct sieve_script **s_r, const char **error_r)
{
	struct sieve_compile_opts o;
	struct sieve_errors err = { 0 };
	struct sieve_limits dl;
	char *path;

	*s_r = NULL;
	if (sievestore_path(sieve_dir, SIEVE_LEVEL_USER, user, &path, error_r) < 0)
		return -1;
	if (access(path, F_OK) < 0 && errno == ENOENT) {
		free(path);
		return 0;
	}
	if (lim == NULL) {
		sieve_limits_default(&dl);
		lim = &dl;
	}
	sievestore_compile_opts(sieve_dir, lim, &o);
	if (sieve_compile_file(path, &o, s_r, &err) < 0) {
		*error_r = seterr("%s", err.n > 0 ? err.msg[0] : "cannot compile the user script");
		sieve_errors_clear(&err);
		free(path);
		*s_r = NULL;
		return -1;
	}
	sieve_errors_clear(&err);
	free(path);
	return 0;
}

unsigned
sieve_deliver_flag_bit(const char *f)
{
	static const struct { const char *name; unsigned bit; } sys[] = {
		{ "\\seen", MAILSTORE_SEEN }, { "\\answered", MAILSTORE_ANSWERED },
		{ "\\flagged", MAILSTORE_FLAGGED }, { "\\deleted", MAILSTORE_DELETED },
		{ "\\draft", MAILSTORE_DRAFT },
	};

	for (size_t i = 0; i < sizeof(sys) / sizeof(sys[0]); i++)
		if (strcasecmp(f, sys[i].name) == 0)
			return sys[i].bit;
	return 0;
}

/* a keyword we can store: an IMAP atom, no '\\' */
static int
keyword_ok(const char *k)
{
	size_t n = strlen(k);

	if (n == 0 || n > MAX_MAILSTORE_KEYWORD_LEN)
		return 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)k[i];

		if (c <= 0x20 || c >= 0x7f || strchr("(){%*\"\\]", c) != NULL)
			return 0;
	}
	return 1;
}

/* the header section text of an edited header, in the message's line ends */
static char *
head_text(const struct sieve_header *h, size_t nh, int lf, size_t *len_r)
{
	const char *eol = lf ? "\n" : "\r\n";
	size_t cap = 3, n = 0;
	char *t;

	for (size_t i = 0; i < nh; i++)
		cap += strlen(h[i].name) + strlen(h[i].value) + 4;
	t = xmalloc(cap);
	for (size_t i = 0; i < nh; i++)
		n += (size_t)snprintf(t + n, cap - n, "%s: %s%s", h[i].name, h[i].value, eol);
	n += (size_t)snprintf(t + n, cap - n, "%s", eol);
	*len_r = n;
	return t;
}

static void
add_copy_hdr(struct sieve_deliver_plan *p, const char *folder, int create, char **flags,
    size_t nflags, unsigned line, const struct sieve_header *h, size_t nh, int lf);

static void
add_copy(struct sieve_deliver_plan *p, const char *folder, int create, char **flags,
    size_t nflags, unsigned line)
{
	add_copy_hdr(p, folder, create, flags, nflags, line, NULL, 0, 0);
}

static void
add_copy_hdr(struct sieve_deliver_plan *p, const char *folder, int create, char **flags,
    size_t nflags, unsigned line, const struct sieve_header *h, size_t nh, int lf)
{
	struct sieve_deliver_copy *c;
	int inbox = strcasecmp(folder, "INBOX") == 0;

	for (size_t i = 0; i < p->ncopy; i++)
		if (inbox ? strcasecmp(p->copy[i].folder, "INBOX") == 0 :
		    strcmp(p->copy[i].folder, folder) == 0)
			return;	/* one copy per folder, the first one's flags */
	p->copy = xreallocarray(p->copy, p->ncopy + 1, sizeof(*p->copy));
	c = &p->copy[p->ncopy++];
	memset(c, 0, sizeof(*c));
	c->folder = xstrdup(inbox ? "INBOX" : folder);
	c->create = create;
	c->line = line;
	if (h != NULL && p->body_off >= 0)
		c->head = head_text(h, nh, lf, &c->headlen);
	for (size_t i = 0; i < nflags; i++) {
		unsigned b;

		if (strcasecmp(flags[i], "\\recent") == 0)
			continue;
		if ((b = sieve_deliver_flag_bit(flags[i])) != 0) {
			c->flags |= b;
		} else if (flags[i][0] != '\\' && keyword_ok(flags[i]) &&
		    c->nkeywords < MAX_MAILSTORE_KEYWORDS) {
			int dup = 0;

			for (size_t k = 0; k < c->nkeywords; k++)
				dup |= strcasecmp(c->keywords[k], flags[i]) == 0;
			if (dup)
				continue;
			c->keywords = xreallocarray(c->keywords, c->nkeywords + 1, sizeof(char *));
			c->keywords[c->nkeywords++] = xstrdup(flags[i]);
		}
	}
}

static void
add_out(struct sieve_deliver_plan *p, enum sieve_deliver_out_kind k, const char *from,
    const char *to, char *text)
{
	struct sieve_deliver_out *o;

	p->out = xreallocarray(p->out, p->nout + 1, sizeof(*p->out));
	o = &p->out[p->nout++];
	o->kind = k;
	o->mail_from = xstrdup(from);
	o->rcpt_to = xstrdup(to);
	o->text = text;
	o->track = -1;
}

static void
logf_add(struct sieve_deliver_plan *p, const char *what, const char *arg)
{
	size_t n = strlen(p->log);
	char safe[80];
	size_t k = 0;

	for (const char *s = arg; s != NULL && *s && k + 1 < sizeof(safe); s++)
		safe[k++] = (*s >= 0x20 && *s < 0x7f) ? *s : '?';
	safe[k] = '\0';
	if (n < sizeof(p->log))
		snprintf(p->log + n, sizeof(p->log) - n, "%s%s%s%s", n ? "; " : "", what,
		    arg ? " " : "", arg ? safe : "");
}

/* ---- reading the spooled message ---- */

static ssize_t
pread_full(int fd, char *buf, size_t n, off_t off)
{
	size_t got = 0;

	while (got < n) {
		ssize_t r = pread(fd, buf + got, n - got, off + (off_t)got);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -1;
		if (r == 0)
			break;
		got += (size_t)r;
	}
	return (ssize_t)got;
}

/* the end of the header section (after the first empty line), or len */
static size_t
head_end(const char *buf, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		if (buf[i] != '\n')
			continue;
		if (i + 1 < len && buf[i + 1] == '\n')
			return i + 2;
		if (i + 2 < len && buf[i + 1] == '\r' && buf[i + 2] == '\n')
			return i + 3;
	}
	return len;
}

static struct sieve_msg *
read_msg(int fd, int need_body, long long *body_off_r, int *lf_r, const char **error_r)
{
	struct stat st;
	char *buf;
	ssize_t r;
	size_t len, h;
	struct sieve_msg *m;

	if (fstat(fd, &st) < 0) {
		*error_r = seterr("cannot stat the spooled message: %s", strerror(errno));
		return NULL;
	}
	/* most header sections fit the first read; a long one gets the cap */
	buf = xmalloc(SIEVE_DELIVER_FIRST_READ + 1);
	if ((r = pread_full(fd, buf, SIEVE_DELIVER_FIRST_READ, 0)) < 0) {
		*error_r = seterr("cannot read the spooled message: %s", strerror(errno));
		free(buf);
		return NULL;
	}
	len = (size_t)r;
	h = head_end(buf, len);
	if (h == len && len == SIEVE_DELIVER_FIRST_READ) {
		buf = xrealloc(buf, SIEVE_DELIVER_MAX_HEADER + 1);
		if ((r = pread_full(fd, buf + len, SIEVE_DELIVER_MAX_HEADER - len, (off_t)len)) < 0) {
			*error_r = seterr("cannot read the spooled message: %s", strerror(errno));
			free(buf);
			return NULL;
		}
		len += (size_t)r;
		h = head_end(buf, len);
	}
	*body_off_r = -1;	/* not found: edits cannot be applied */
	if (h < len || (size_t)st.st_size == len)
		*body_off_r = (long long)h;
	{
		char *nl = memchr(buf, '\n', len);

		*lf_r = nl != NULL && (nl == buf || nl[-1] != '\r');
	}
	if (need_body && h < (size_t)st.st_size) {
		size_t want = (size_t)st.st_size - h;

		if (want > SIEVE_DELIVER_MAX_BODY)
			want = SIEVE_DELIVER_MAX_BODY;
		buf = xrealloc(buf, h + want + 1);
		if ((r = pread_full(fd, buf + h, want, (off_t)h)) < 0) {
			*error_r = seterr("cannot read the spooled message: %s", strerror(errno));
			free(buf);
			return NULL;
		}
		len = h + (size_t)r;
	} else {
		len = h;
	}
	m = sieve_msg_parse(buf, len);
	m->size = (size_t)st.st_size;
	free(buf);
	return m;
}

/* ---- vacation tracking (a small file per user) ---- */

#define TRACK_LOCK_WAIT_MS 2000	/* at most, for PATH.lock */
#define TRACK_LOCK_POLL_MS 10

struct track_ctx {
	struct sieve_deliver_plan *p;
	const char *path;
	long now;
	int lockfd;		/* PATH.lock, held from the check to the record; -1 */
	int tried;		/* the lock was asked for */
};

static unsigned long long
fnv64(const char *s, size_t n)
{
	unsigned long long h = 0xcbf29ce484222325ULL;

	for (size_t i = 0; i < n; i++) {
		h ^= (unsigned char)s[i];
		h *= 0x100000001b3ULL;
	}
	return h;
}

static char *
track_path(const char *state_dir, const char *user)
{
	return xasprintf("%s/sieve-vacation/%s", state_dir, user);
}

/*
 * The tracking file's lock: PATH.lock, flock()ed (per open file: two job
 * threads exclude each other too). Waits at most TRACK_LOCK_WAIT_MS; -1
 * when it could not be had (then the check and the record go unlocked: at
 * worst a second reply, never a lost message or a stuck delivery).
 */
static int
track_lock(const char *path)
{
	char *dir = xstrdup(path), *slash = strrchr(dir, '/'), *lp;
	int fd, waited = 0;

	if (slash != NULL) {
		*slash = '\0';
		(void)fsutil_mkdir_p(dir, 0700, 0700);
	}
	free(dir);
	lp = xasprintf("%s.lock", path);
	fd = open(lp, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	free(lp);
	if (fd < 0) {
		log_warn("sieve: vacation tracking %s: no lock file: %s", path, strerror(errno));
		return -1;
	}
	for (;;) {
		struct timespec ts = { 0, TRACK_LOCK_POLL_MS * 1000000L };

		if (flock(fd, LOCK_EX | LOCK_NB) == 0)
			return fd;
		if (errno != EWOULDBLOCK && errno != EINTR)
			break;
		if (waited >= TRACK_LOCK_WAIT_MS)
			break;
		nanosleep(&ts, NULL);
		waited += TRACK_LOCK_POLL_MS;
	}
	log_warn("sieve: vacation tracking %s: not locked within %d ms; checked unlocked", path,
	    TRACK_LOCK_WAIT_MS);
	close(fd);
	return -1;
}

/*
 * Rewrite the tracking file: add (NULL: none) first, then the lines that
 * have not expired, without drop (NULL: none) and without a second add.
 */
static void
track_rewrite(const struct sieve_deliver_plan *p, const char *path, const char *add,
    unsigned long add_secs, const char *drop)
{
	char line[128], *out = NULL;
	size_t outlen = 0, kept = 0;
	FILE *f, *w;
	const char *error;

	if ((w = open_memstream(&out, &outlen)) == NULL)
		return;
	if (add != NULL)
		fprintf(w, "%lld %s\n", (long long)p->now + (long long)add_secs, add);
	if ((f = fopen(path, "r")) != NULL) {
		while (kept < SIEVE_DELIVER_MAX_TRACK && fgets(line, sizeof(line), f) != NULL) {
			long long exp;
			char h[32];

			if (sscanf(line, "%lld %31s", &exp, h) == 2 && exp > p->now &&
			    (add == NULL || strcmp(h, add) != 0) &&
			    (drop == NULL || strcmp(h, drop) != 0)) {
				fprintf(w, "%lld %s\n", exp, h);
				kept++;
			}
		}
		fclose(f);
	}
	fclose(w);
	if (fsutil_replace(path, out, outlen, 0600, &error) < 0)
		log_warn("sieve: vacation tracking for %s not saved: %s", p->user, error);
	free(out);
}

/* under the lock (taken here) from the check to the record (track_mark) or
 * to the end of the vacation action */
static int
track_check(void *vctx, const char *key, size_t keylen)
{
	struct track_ctx *c = vctx;
	char want[32], line[128];
	FILE *f;
	int seen = 0;

	if (!c->tried && c->path != NULL) {
		c->tried = 1;
		c->lockfd = track_lock(c->path);
	}
	snprintf(want, sizeof(want), "%016llx", fnv64(key, keylen));
	/* replies planned earlier in this delivery count too */
	for (size_t i = 0; i < c->p->ntrack; i++)
		if (strcmp(c->p->track[i], want) == 0)
			return 1;
	if ((f = fopen(c->path, "r")) == NULL)
		return 0;
	while (!seen && fgets(line, sizeof(line), f) != NULL) {
		long long exp;
		char h[32];

		if (sscanf(line, "%lld %31s", &exp, h) == 2 && exp > c->now && strcmp(h, want) == 0)
			seen = 1;
	}
	fclose(f);
	return seen;
}

static void
track_mark(void *vctx, const char *key, size_t keylen, unsigned long seconds)
{
	struct track_ctx *c = vctx;
	struct sieve_deliver_plan *p = c->p;

	p->track = xreallocarray(p->track, p->ntrack + 1, sizeof(char *));
	p->track_secs = xreallocarray(p->track_secs, p->ntrack + 1, sizeof(unsigned long));
	p->track[p->ntrack] = xasprintf("%016llx", fnv64(key, keylen));
	/* RFC 5230 4.1: at least a day unless :seconds said less; 7 days default */
	p->track_secs[p->ntrack] = seconds ? seconds : 7 * 86400UL;
	/* recorded now, still under the lock: a delivery planned at the same
	 * moment sees it (dropped again when the relayhost refuses the reply) */
	if (c->path != NULL)
		track_rewrite(p, c->path, p->track[p->ntrack], p->track_secs[p->ntrack], NULL);
	p->ntrack++;
}

void
sieve_deliver_sent(struct sieve_deliver_plan *p)
{
	(void)p;	/* the replies were recorded when planned (track_mark) */
}

/* ---- outgoing messages ---- */

static void
fmt_date(long now, char *buf, size_t n)
{
	time_t t = (time_t)now;
	struct tm tm;

	gmtime_r(&t, &tm);
	strftime(buf, n, "%a, %d %b %Y %H:%M:%S +0000", &tm);
}

static char *
new_msgid(const char *host, long now)
{
	static _Atomic unsigned long seq;
	unsigned long s = seq++;

	return xasprintf("<%ld.%lx.%d.sieve@%s>", now, s, (int)getpid(), host);
}

/* text with bare LF / CR made CRLF */
static char *
crlf(const char *s)
{
	size_t n = strlen(s), k = 0;
	char *o = xmalloc(2 * n + 1);

	for (size_t i = 0; i < n; i++) {
		if (s[i] == '\r' && s[i + 1] == '\n') {
			o[k++] = '\r';
			o[k++] = '\n';
			i++;
		} else if (s[i] == '\r' || s[i] == '\n') {
			o[k++] = '\r';
			o[k++] = '\n';
		} else {
			o[k++] = s[i];
		}
	}
	o[k] = '\0';
	return o;
}

/* RFC 5429 2.1: the refusal as an MDN (RFC 8098) from the null sender */
static char *
refusal_text(const struct sieve_msg *m, const char *rcpt, const char *sender,
    const char *reason, const char *host, long now)
{
	char date[64], *mid = new_msgid(host, now), *why = crlf(reason), *hdrs, *t;
	const char *omid = NULL;
	size_t hl = 0;
	char *bound = xasprintf("%ld/%s/sieve-reject", now, host);

	fmt_date(now, date, sizeof(date));
	for (size_t i = 0; i < m->nhdr; i++) {
		hl += strlen(m->hdr[i].name) + strlen(m->hdr[i].value) + 4;
		if (omid == NULL && strcasecmp(m->hdr[i].name, "message-id") == 0)
			omid = m->hdr[i].value;
	}
	hdrs = xmalloc(hl + 1);
	hl = 0;
	for (size_t i = 0; i < m->nhdr; i++) {
		char *v = crlf(m->hdr[i].value);

		hl += (size_t)sprintf(hdrs + hl, "%s: %s\r\n", m->hdr[i].name, v);
		free(v);
	}
	hdrs[hl] = '\0';
	t = xasprintf("From: Mail Delivery System <MAILER-DAEMON@%s>\r\n"
	    "To: <%s>\r\n"
	    "Subject: Automatically rejected mail\r\n"
	    "Date: %s\r\n"
	    "Message-ID: %s\r\n"
	    "%s%s%s"
	    "Auto-Submitted: auto-replied (rejected)\r\n"
	    "Precedence: bulk\r\n"
	    "MIME-Version: 1.0\r\n"
	    "Content-Type: multipart/report; report-type=disposition-notification;\r\n"
	    "\tboundary=\"%s\"\r\n"
	    "\r\n"
	    "This is a MIME-encapsulated message\r\n"
	    "\r\n"
	    "--%s\r\n"
	    "Content-Type: text/plain; charset=utf-8\r\n"
	    "Content-Disposition: inline\r\n"
	    "Content-Transfer-Encoding: 8bit\r\n"
	    "\r\n"
	    "Your message to <%s> was automatically rejected:\r\n"
	    "%s\r\n"
	    "\r\n"
	    "--%s\r\n"
	    "Content-Type: message/disposition-notification\r\n"
	    "\r\n"
	    "Reporting-UA: %s; Portcullis\r\n"
	    "Final-Recipient: rfc822; %s\r\n"
	    "%s%s%s"
	    "Disposition: automatic-action/MDN-sent-automatically; deleted\r\n"
	    "\r\n"
	    "--%s\r\n"
	    "Content-Type: text/rfc822-headers\r\n"
	    "\r\n"
	    "%s"
	    "\r\n"
	    "--%s--\r\n",
	    host, sender, date, mid,
	    omid ? "In-Reply-To: " : "", omid ? omid : "", omid ? "\r\n" : "",
	    bound, bound, rcpt, why, bound, host, rcpt,
	    omid ? "Original-Message-ID: " : "", omid ? omid : "", omid ? "\r\n" : "",
	    bound, hdrs, bound);
	free(bound);
	free(hdrs);
	free(why);
	free(mid);
	return t;
}

static char *
bare_addr(const char *a)
{
	const char *lt = strchr(a, '<'), *gt;

	if (lt != NULL && (gt = strchr(lt, '>')) != NULL)
		return xstrndup(lt + 1, (size_t)(gt - lt - 1));
	return xstrdup(a);
}

/*
 * Redirect loop protection (as Pigeonhole's X-Sieve-Redirected-From): a
 * message this user redirected before came back, or has been redirected
 * SIEVE_DELIVER_MAX_REDIRECT_HOPS times already.
 */
static int
redirect_loop(const struct sieve_msg *m, const char *user)
{
	unsigned hops = 0;

	for (size_t i = 0; i < m->nhdr; i++) {
		const char *v = m->hdr[i].value;
		size_t ul = strlen(user);

		if (strcasecmp(m->hdr[i].name, "X-Sieve-Redirected-From") != 0)
			continue;
		if (++hops >= SIEVE_DELIVER_MAX_REDIRECT_HOPS)
			return 1;
		while (*v == ' ' || *v == '\t' || *v == '<')
			v++;
		if (strncasecmp(v, user, ul) == 0 && (v[ul] == '>' || v[ul] == '\0' ||
		    v[ul] == ' ' || v[ul] == '\r' || v[ul] == '\n'))
			return 1;
	}
	return 0;
}

/* free m; borrowed: its fields and body are the door's (only the
 * envelope and facts set here are freed) */
static void
msg_release(struct sieve_msg **m, int borrowed)
{
	if (borrowed && *m != NULL) {
		(*m)->hdr = NULL;
		(*m)->nhdr = 0;
		(*m)->body = NULL;
	}
	sieve_msg_free(m);
}

/* the user's script or a level before it tests the body */
static int
need_body(const struct sieve_deliver_in *in)
{
	if (in->need_body || (in->rules != NULL && sieve_rules_need_body(in->rules)))
		return 1;
	for (size_t i = 0; in->script != NULL && i < in->script->ncaps; i++)
		if (strcmp(in->script->caps[i], "body") == 0 ||
		    strcmp(in->script->caps[i], "include") == 0)
			return 1;
	return 0;
}

int
sieve_deliver_reads_fd(const struct sieve_deliver_in *in)
{
	return in->pre == NULL || in->pre->msg == NULL || (!in->pre->has_body && need_body(in));
}

int
sieve_deliver_plan(const struct sieve_deliver_in *in, struct sieve_deliver_plan **p_r,
    const char **error_r)
{
	struct sieve_deliver_plan *p;
	struct sieve_msg *m;
	struct sieve_result *res = NULL;
	struct sieve_errors err = { 0 };
	struct sieve_limits dl;
	struct sieve_run_opts ro;
	const char *host = in->hostname != NULL ? in->hostname : "localhost";
	char *sender;
	long now = in->now ? in->now : (long)time(NULL);
	const struct sieve_rules_script *lv[2];
	size_t higher = 0;	/* actions of the server and domain levels */
	long long body_off = 0;
	int lf = 0, borrowed = 0;

	*p_r = NULL;
	if (!sieve_deliver_reads_fd(in)) {
		/* the door's parse: a copy of its own for the envelope, the
		 * fields and body borrowed (msg_release) */
		m = xmalloc(sizeof(*m));
		*m = *in->pre->msg;
		m->cache = NULL;	/* the door's index is its own */
		m->env_from = m->env_to = m->env_orig_to = m->env_auth = NULL;
		m->env_items = NULL;
		m->nenv = 0;
		body_off = in->pre->body_off;
		lf = in->pre->lf;
		borrowed = 1;
	} else if ((m = read_msg(in->fd, need_body(in), &body_off, &lf, error_r)) == NULL) {
		return -1;
	}
	p = xcalloc(1, sizeof(*p));
	p->store_root = xstrdup(in->store_root);
	p->user = xstrdup(in->user);
	p->state_dir = in->state_dir != NULL ? xstrdup(in->state_dir) : NULL;
	p->fd = in->fd;
	p->body_off = body_off;
	p->now = now;
	*p_r = p;
	if (in->script == NULL && (in->rules == NULL || !sieve_rules_any(in->rules))) {
		add_copy(p, "INBOX", 0, NULL, 0, 0);
		logf_add(p, "keep", NULL);
		msg_release(&m, borrowed);
		return 0;
	}
	sieve_msg_set_env(m, "from", in->env_from != NULL ? in->env_from : "");
	sieve_msg_set_env(m, "to", in->env_to != NULL ? in->env_to : in->user);
	if (in->env_orig_to != NULL)
		sieve_msg_set_env(m, "orig_to", in->env_orig_to);
	sieve_rules_msg_facts(m, in->remote_ip, in->remote_host, in->helo, in->auth, in->country);
	sieve_msg_set_item(m, "host", host);
	if (in->limits == NULL)
		sieve_limits_default(&dl);
	memset(&ro, 0, sizeof(ro));
	ro.limits = in->limits != NULL ? in->limits : &dl;
	ro.now = now;
	lv[0] = in->rules != NULL ? in->rules->server : NULL;
	lv[1] = in->rules != NULL && in->domain != NULL ? sieve_rules_domain(in->rules, in->domain) :
	    NULL;
	for (int i = 0; i < 3; i++) {
		const struct sieve_script *sc = i < 2 ? (lv[i] != NULL ? lv[i]->s : NULL) : in->script;
		size_t before = res != NULL ? res->n : 0;
		int kept;

		if (sc == NULL)
			continue;
		if (sieve_run(sc, m, &ro, &res, &err) < 0 || res == NULL || res->failed) {
			p->failed = 1;
			add_copy(p, "INBOX", 0, NULL, 0, 0);
			logf_add(p, "script failed, kept", err.n > 0 ? err.msg[0] : NULL);
			sieve_errors_clear(&err);
			sieve_result_free(&res);
			msg_release(&m, borrowed);
			return 0;
		}
		sieve_errors_clear(&err);
		if (i == 2)
			break;
		/* a higher level: later levels do not conflict with its actions */
		kept = res->implicit_keep;
		for (size_t k = before; k < res->n; k++) {
			res->a[k].executed = 1;
			kept |= res->a[k].type == SIEVE_A_KEEP;
			/* its header edits were made by the door: the file has them */
			sieve_headers_free(&res->a[k].hdr, res->a[k].nhdr);
			res->a[k].nhdr = 0;
		}
		sieve_headers_free(&res->keep_hdr, res->keep_nhdr);
		res->keep_nhdr = 0;
		higher = res->n;
		if (!kept)
			break;	/* what a higher level took, a lower one cannot bring back */
	}
	if (res == NULL) {	/* no script ran */
		add_copy(p, "INBOX", 0, NULL, 0, 0);
		logf_add(p, "keep", NULL);
		msg_release(&m, borrowed);
		return 0;
	}
	sender = bare_addr(in->env_from != NULL ? in->env_from : "");
	for (size_t i = 0; i < res->n; i++) {
		const struct sieve_action *a = &res->a[i];

		/* the door did the higher levels' MTA actions at end of data */
		if (i < higher && !(a->type == SIEVE_A_KEEP || a->type == SIEVE_A_VACATION ||
		    (a->type == SIEVE_A_FILEINTO && strcasecmp(a->target, "Quarantine") != 0)))
			continue;
		switch (a->type) {
		case SIEVE_A_KEEP:
			add_copy_hdr(p, "INBOX", 0, a->flags, a->nflags, a->line, a->hdr, a->nhdr, lf);
			logf_add(p, "keep", NULL);
			break;
		case SIEVE_A_FILEINTO:
			add_copy_hdr(p, a->target, a->create, a->flags, a->nflags, a->line, a->hdr,
			    a->nhdr, lf);
			logf_add(p, "fileinto", a->target);
			break;
		case SIEVE_A_DISCARD:
			logf_add(p, "discard", NULL);
			break;
		case SIEVE_A_REDIRECT:
			if (i >= higher && redirect_loop(m, in->user)) {
				/* never lost: kept instead */
				add_copy(p, "INBOX", 0, NULL, 0, a->line);
				logf_add(p, "redirect loop (the message was redirected here before), "
				    "kept; not redirected to", a->target);
				break;
			}
			add_out(p, SIEVE_OUT_REDIRECT, sender, a->target, NULL);
			logf_add(p, "redirect to", a->target);
			break;
		case SIEVE_A_REJECT:
		case SIEVE_A_EREJECT:
			if (sender[0] == '\0') {
				logf_add(p, "reject (null sender: no refusal sent)", NULL);
				break;
			}
			add_out(p, SIEVE_OUT_REFUSAL, "", sender,
			    refusal_text(m, in->env_to != NULL ? in->env_to : in->user, sender,
			    a->target != NULL ? a->target : "", host, now));
			logf_add(p, "reject, refusal to", sender);
			break;
		case SIEVE_A_VACATION: {
			struct sieve_vacation_conf vc = { 0 };
			struct track_ctx tc = { p, NULL, now, -1, 0 };
			size_t ntrack = p->ntrack;
			struct sieve_dupstore ds = { track_check, track_mark, &tc };
			char *from, *to, *text, *tp = NULL, *mid, date[64];

			vc.user_email = in->user;
			if (in->state_dir != NULL) {
				tp = track_path(in->state_dir, in->user);
				tc.path = tp;
				vc.track = &ds;
			}
			if (sieve_vacation_reply(m, a, &vc, &from, &to, &text) == 1) {
				mid = new_msgid(host, now);
				fmt_date(now, date, sizeof(date));
				add_out(p, SIEVE_OUT_VACATION, from, to,
				    xasprintf("Date: %s\r\nMessage-ID: %s\r\n%s", date, mid, text));
				p->out[p->nout - 1].track = p->ntrack > ntrack ? (long)ntrack : -1;
				logf_add(p, "vacation to", to);
				free(mid);
				free(from);
				free(to);
				free(text);
			} else {
				logf_add(p, "vacation: no reply", NULL);
			}
			if (tc.lockfd >= 0)
				close(tc.lockfd);	/* checked and recorded */
			free(tp);
			break;
		}
		case SIEVE_A_ADDHEADER:
		case SIEVE_A_DELETEHEADER:
			/* carried by the copies' headers (a->hdr, keep_hdr) */
			break;
		}
	}
	if (res->implicit_keep) {
		add_copy_hdr(p, "INBOX", 0, res->keep_flags, res->nkeep_flags, 0, res->keep_hdr,
		    res->keep_nhdr, lf);
		logf_add(p, "implicit keep", NULL);
	}
	p->discarded = p->ncopy == 0;
	free(sender);
	sieve_result_free(&res);
	msg_release(&m, borrowed);
	return 0;
}

/* ---- the store ---- */

static int
folder_exists(struct mailstore *ms, const char *name)
{
	char **v;
	size_t n;
	const char *error;
	int hit = 0;

	if (mailstore_folders(ms, &v, &n, &error) < 0)
		return 0;
	for (size_t i = 0; i < n; i++)
		hit |= strcmp(v[i], name) == 0;
	mailstore_names_free(&v, n);
	return hit;
}

/* the copy's header (when edited), then the file from off */
static int
copy_fd(int fd, off_t off, int (*wr)(void *, const void *, size_t, const char **), void *w,
    const char **error_r)
{
	char buf[65536];

	for (;;) {
		ssize_t r = pread(fd, buf, sizeof(buf), off);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			*error_r = seterr("cannot read the spooled message: %s", strerror(errno));
			return -1;
		}
		if (r == 0)
			return 0;
		if (wr(w, buf, (size_t)r, error_r) < 0)
			return -1;
		off += r;
	}
}

static int
wr_append(void *a, const void *p, size_t n, const char **error_r)
{
	return mailstore_append_write(a, p, n, error_r);
}

static int
wr_deliver(void *d, const void *p, size_t n, const char **error_r)
{
	return mailstore_deliver_write(d, p, n, error_r);
}

static int
store_inbox_new(struct sieve_deliver_plan *p, const char **error_r)
{
	struct mailstore_delivery *d;
	const char *users[1] = { p->user };
	char id[128];

	if (mailstore_deliver_begin(p->store_root, p->user, &d, error_r) < 0)
		return -1;
	if (copy_fd(p->fd, 0, wr_deliver, d, error_r) < 0) {
		mailstore_deliver_abort(&d);
		return -1;
	}
	return mailstore_deliver_commit(&d, p->store_root, users, 1, id, error_r);
}

static int
store_one(struct sieve_deliver_plan *p, struct mailstore *ms, const struct sieve_deliver_copy *c,
    const char *folder, const char **error_r)
{
	struct mailstore_box *box;
	struct mailstore_append *a;
	uint32_t uid;

	if (strcmp(folder, "INBOX") == 0 && c->flags == 0 && c->nkeywords == 0 && c->head == NULL)
		return store_inbox_new(p, error_r);
	if (mailstore_box_open_peek(ms, folder, &box, error_r) < 0)
		return -1;
	if (mailstore_append_begin(box, &a, error_r) < 0) {
		mailstore_box_close(&box);
		return -1;
	}
	if ((c->head != NULL && mailstore_append_write(a, c->head, c->headlen, error_r) < 0) ||
	    copy_fd(p->fd, c->head != NULL ? (off_t)p->body_off : 0, wr_append, a, error_r) < 0) {
		mailstore_append_abort(&a);
		mailstore_box_close(&box);
		return -1;
	}
	if (mailstore_append_commit(&a, c->flags, (const char *const *)c->keywords, c->nkeywords,
	    0, &uid, error_r) < 0) {
		mailstore_box_close(&box);
		return -1;
	}
	mailstore_box_close(&box);
	return 0;
}

int
sieve_deliver_store(struct sieve_deliver_plan *p, const char **error_r)
{
	struct mailstore *ms;
	int inbox_done = 0;

	if (p->ncopy == 0)
		return 0;
	if (mailstore_open(p->store_root, p->user, &ms, error_r) < 0)
		return -1;
	for (size_t i = 0; i < p->ncopy; i++) {
		const struct sieve_deliver_copy *c = &p->copy[i];
		const char *folder = c->folder, *e;
		char safe[80];	/* the name for logs: it may come from the message */
		size_t k = 0;

		for (const char *q = folder; *q && k + 1 < sizeof(safe); q++)
			safe[k++] = (*q >= 0x20 && *q < 0x7f) ? *q : '?';
		safe[k] = '\0';

		if (strcmp(folder, "INBOX") != 0) {
			if (!mailstore_folder_is_valid(folder)) {
				log_warn("sieve: %s: fileinto an invalid folder name (line %u), "
				    "kept in INBOX", p->user, c->line);
				folder = "INBOX";
			} else if (!folder_exists(ms, folder)) {
				if (!c->create) {
					log_warn("sieve: %s: folder %s does not exist (line %u, no "
					    ":create), kept in INBOX", p->user, safe, c->line);
					folder = "INBOX";
				} else if (mailstore_folder_create(ms, folder, &e) < 0) {
					log_warn("sieve: %s: cannot create folder %s: %s; kept in "
					    "INBOX", p->user, safe, e);
					folder = "INBOX";
				}
			}
		}
		if (strcmp(folder, "INBOX") == 0) {
			if (inbox_done)
				continue;
			inbox_done = 1;
		}
		if (store_one(p, ms, c, folder, error_r) == 0)
			continue;
		if (strcmp(folder, "INBOX") == 0) {
			mailstore_free(&ms);
			return -1;
		}
		log_warn("sieve: %s: cannot store into %s: %s; kept in INBOX", p->user, safe,
		    *error_r);
		if (!inbox_done) {
			static const struct sieve_deliver_copy plain;

			inbox_done = 1;
			if (store_one(p, ms, &plain, "INBOX", error_r) < 0) {
				mailstore_free(&ms);
				return -1;
			}
		}
	}
	mailstore_free(&ms);
	return 0;
}

const char *
sieve_deliver_out_name(enum sieve_deliver_out_kind k)
{
	switch (k) {
	case SIEVE_OUT_REDIRECT:
		return "redirect";
	case SIEVE_OUT_VACATION:
		return "vacation reply";
	case SIEVE_OUT_REFUSAL:
		return "refusal";
	}
	return "message";
}

int
sieve_deliver_fallback(struct sieve_deliver_plan *p, const struct sieve_deliver_out *out,
    const char *why, const char **error_r)
{
	char to[80];
	size_t k = 0;

	for (const char *s = out != NULL ? out->rcpt_to : ""; *s && k + 1 < sizeof(to); s++)
		to[k++] = (*s > 0x20 && *s < 0x7f) ? *s : '?';
	to[k] = '\0';
	log_warn("sieve: %s: the relayhost did not take the %s to <%s>: %.200s; kept in INBOX",
	    p->user, out != NULL ? sieve_deliver_out_name(out->kind) : "message", to,
	    why != NULL ? why : "unknown error");
	/* the replies from out on were not sent: not recorded either */
	for (size_t i = out != NULL ? (size_t)(out - p->out) : 0; i < p->nout; i++) {
		char *path;
		int fd;

		if (p->out[i].track < 0 || p->state_dir == NULL)
			continue;
		path = track_path(p->state_dir, p->user);
		fd = track_lock(path);
		track_rewrite(p, path, NULL, 0, p->track[p->out[i].track]);
		if (fd >= 0)
			close(fd);
		free(path);
	}
	return store_inbox_new(p, error_r);
}

int
sieve_deliver_plan_is_plain(const struct sieve_deliver_plan *p)
{
	return p->nout == 0 && p->ntrack == 0 && p->ncopy == 1 &&
	    strcmp(p->copy[0].folder, "INBOX") == 0 && p->copy[0].flags == 0 &&
	    p->copy[0].nkeywords == 0 && p->copy[0].head == NULL;
}

void
sieve_deliver_plan_free(struct sieve_deliver_plan **pp)
{
	struct sieve_deliver_plan *p = *pp;

	if (p == NULL)
		return;
	*pp = NULL;
	for (size_t i = 0; i < p->ncopy; i++) {
		free(p->copy[i].folder);
		free(p->copy[i].head);
		sieve_strv_free(p->copy[i].keywords, p->copy[i].nkeywords);
	}
	free(p->copy);
	for (size_t i = 0; i < p->nout; i++) {
		free(p->out[i].mail_from);
		free(p->out[i].rcpt_to);
		free(p->out[i].text);
	}
	free(p->out);
	sieve_strv_free(p->track, p->ntrack);
	free(p->track_secs);
	free(p->store_root);
	free(p->user);
	free(p->state_dir);
	free(p);
}
