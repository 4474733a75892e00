/*
 * imap_fetch: the IMAP session's output queue and FETCH's item writer
 * (internal to the session: see imap_proto_int.h; the door sees only the
 * imap_proto_output_* calls of imap_proto.h).
 *
 *   imap_out_add/_str, imap_str_add/_addn   bytes into the queue, growing strings
 *   imap_segq_join/_clear                   an exec's queue onto the output; free
 *   imap_proto_output_segment/_done/_pending/imap_proto_output
 *                                           the door takes segments off the queue
 *   imap_fetch_one                          one message's "* n FETCH (...)" response
 *
 * The queue holds byte segments, file ranges (a section that is the file's
 * own bytes: the door sends them from the file) and generator segments (a
 * section that needs converting, made 64 KiB at a time as the door asks).
 * While an exec runs its output goes to a queue of its own (xq), joined on
 * the loop. fetch_one follows Dovecot 2.3's item order. BODY[], RFC822 and
 * their partials skip the MIME parse when a scan finds no bare LF and no
 * NUL in the file: the file range is then what the client gets. Never blocks on the
 * network; runs on the job thread (fetch_one) or the loop (output calls).
 */
#include "pop-imap-proxy/imap_proto_int.h"

#include <ctype.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/xmalloc.h"
#include "pop-imap-proxy/imap_mime.h"
#include "pop-imap-proxy/imap_parser.h"
#include "storage-adapter/mailstore.h"

#define SEG_BYTES_MAX (64u << 10)	/* one byte segment grows to this, then a new one */

/* ---- output ---- */

static struct segq *
curq(struct imap_proto *p)
{
	return p->in_exec ? &p->xq : &p->q;
}

static struct seg *
seg_push(struct segq *q)
{
	struct seg *s;

	if (q->head > 0 && q->head == q->n) {
		q->head = q->n = 0;
	}
	if (q->n == q->cap) {
		if (q->head > 0) {
			memmove(q->v, q->v + q->head, (q->n - q->head) * sizeof(*q->v));
			q->n -= q->head;
			q->head = 0;
		} else {
			q->cap = q->cap ? q->cap * 2 : 8;
			q->v = xrealloc(q->v, q->cap * sizeof(*q->v));
		}
	}
	s = &q->v[q->n++];
	memset(s, 0, sizeof(*s));
	s->fd = -1;
	return s;
}

static void
mref_unref(struct mref **rp)
{
	struct mref *r = *rp;

	*rp = NULL;
	if (r != NULL && --r->refs == 0) {
		imap_mime_free(&r->m);
		free(r);
	}
}

static void
seg_free(struct seg *s)
{
	free(s->buf);
	s->buf = NULL;
	if (s->fd >= 0)
		close(s->fd);
	s->fd = -1;
	if (s->kind == SEG_GEN) {
		imap_mime_section_deinit(&s->sec);
		mref_unref(&s->mr);
	}
}

void
imap_segq_clear(struct segq *q)
{
	for (size_t i = q->head; i < q->n; i++)
		seg_free(&q->v[i]);
	free(q->v);
	memset(q, 0, sizeof(*q));
}

void
imap_out_add(struct imap_proto *p, const char *s, size_t n)
{
	struct segq *q = curq(p);
	struct seg *g = q->n > q->head ? &q->v[q->n - 1] : NULL;

	if (g == NULL || g->kind != SEG_BYTES || g->len + n > SEG_BYTES_MAX) {
		g = seg_push(q);
		g->kind = SEG_BYTES;
		g->cap = n > 1024 ? n : 1024;
		g->buf = xmalloc(g->cap);
	}
	if (g->len + n > g->cap) {
		size_t cap = g->cap;

		while (cap < g->len + n)
			cap *= 2;
		g->buf = xrealloc(g->buf, cap);
		g->cap = cap;
	}
	memcpy(g->buf + g->len, s, n);
	g->len += n;
	q->bytes += n;
}

/* a file range: FD is the queue's from now on */
static void
out_file(struct imap_proto *p, int fd, off_t offset, uint64_t len, int crlf)
{
	struct segq *q = curq(p);
	struct seg *g = seg_push(q);

	g->kind = SEG_FILE;
	g->fd = fd;
	g->offset = offset;
	g->flen = len;
	g->crlf = crlf;
	q->bytes += len;
	q->fbytes += len;
	q->files++;
}

/* a section made as it is sent (LF -> CRLF, NUL -> 0x80, HEADER.FIELDS): SEC is the queue's */
static void
out_gen(struct imap_proto *p, struct mref *mr, struct imap_mime_section *sec)
{
	struct segq *q = curq(p);
	struct seg *g = seg_push(q);

	g->kind = SEG_GEN;
	g->mr = mr;
	mr->refs++;
	g->sec = *sec;
	memset(sec, 0, sizeof(*sec));
	g->flen = g->sec.size;
	q->bytes += g->flen;
	q->fbytes += g->flen;
	q->files++;
}

void
imap_str_addn(struct str *b, const char *s, size_t n)
{
	if (b->n + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 256;

		while (cap < b->n + n + 1)
			cap *= 2;
		b->s = xrealloc(b->s, cap);
		b->cap = cap;
	}
	memcpy(b->s + b->n, s, n);
	b->n += n;
	b->s[b->n] = '\0';
}

void
imap_str_add(struct str *b, const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n < sizeof(buf)) {
		imap_str_addn(b, buf, (size_t)n);
		return;
	}
	{
		char *big = xmalloc((size_t)n + 1);

		va_start(ap, fmt);
		(void)vsnprintf(big, (size_t)n + 1, fmt, ap);
		va_end(ap);
		imap_str_addn(b, big, (size_t)n);
		free(big);
	}
}

void
imap_out_str(struct imap_proto *p, struct str *b)
{
	if (b->n > 0)
		imap_out_add(p, b->s, b->n);
	free(b->s);
	memset(b, 0, sizeof(*b));
}

/* move what an exec queued (X) to the end of the output queue Q */
void
imap_segq_join(struct segq *q, struct segq *x)
{
	for (size_t i = x->head; i < x->n; i++) {
		struct seg *g = seg_push(q);

		*g = x->v[i];
	}
	q->bytes += x->bytes;
	q->files += x->files;
	q->fbytes += x->fbytes;
	x->head = x->n = 0;
	x->bytes = 0;
	x->files = 0;
	x->fbytes = 0;
}

#define GEN_PIECE (64u << 10)

int
imap_proto_output_segment(struct imap_proto *p, struct imap_segment *r)
{
	struct segq *q = &p->q;

	while (q->head < q->n) {
		struct seg *g = &q->v[q->head];

		if (g->kind == SEG_GEN && g->off == g->len && g->pos < g->sec.size) {
			/* the next piece of a converted section (reads the mapped file) */
			if (g->buf == NULL)
				g->buf = xmalloc(GEN_PIECE);
			g->len = imap_mime_section_read(g->mr->m, &g->sec, g->pos, g->buf, GEN_PIECE);
			g->off = 0;
			g->pos += g->len;
			if (g->len == 0) {
				/* shorter than promised (cannot be): pad the literal */
				memset(g->buf, ' ', GEN_PIECE);
				g->len = g->sec.size - g->pos < GEN_PIECE ?
				    (size_t)(g->sec.size - g->pos) : GEN_PIECE;
				g->pos += g->len;
			}
		}
		if ((g->kind != SEG_FILE && g->off == g->len &&
		    (g->kind == SEG_BYTES || g->pos >= g->sec.size)) ||
		    (g->kind == SEG_FILE && g->flen == 0)) {
			if (g->kind != SEG_BYTES)
				q->files--;
			seg_free(g);
			q->head++;
			continue;
		}
		memset(r, 0, sizeof(*r));
		if (g->kind != SEG_FILE) {
			r->data = g->buf + g->off;
			r->len = g->len - g->off;
			r->fd = -1;
		} else {
			r->fd = g->fd;
			r->offset = g->offset;
			r->len = (size_t)g->flen;
			r->crlf = g->crlf;
		}
		return 1;
	}
	q->head = q->n = 0;
	return 0;
}

void
imap_proto_output_done(struct imap_proto *p, size_t n)
{
	struct segq *q = &p->q;
	struct imap_segment s;
	struct seg *g;

	if (!imap_proto_output_segment(p, &s))
		return;
	g = &q->v[q->head];
	if (g->kind != SEG_FILE) {
		if (n > g->len - g->off)
			n = g->len - g->off;
		g->off += n;
		q->bytes -= n;
		if (g->kind == SEG_GEN)
			q->fbytes -= n;
		if (g->off == g->len && (g->kind == SEG_BYTES || g->pos >= g->sec.size)) {
			if (g->kind != SEG_BYTES)
				q->files--;
			seg_free(g);
			q->head++;
		}
	} else if (n >= g->flen) {
		q->bytes -= g->flen;
		q->fbytes -= g->flen;
		q->files--;
		seg_free(g);
		q->head++;
	}
}

uint64_t
imap_proto_output_pending(const struct imap_proto *p)
{
	return p->q.bytes;
}

void
imap_proto_output_queued(const struct imap_proto *p, uint64_t *mem_r, size_t *files_r,
    uint64_t *file_bytes_r)
{
	*mem_r = p->q.bytes - p->q.fbytes;
	*files_r = p->q.files;
	*file_bytes_r = p->q.fbytes;
}

const char *
imap_proto_output(const struct imap_proto *p, size_t *len_r)
{
	struct imap_segment s;

	if (!imap_proto_output_segment((struct imap_proto *)p, &s) || s.fd >= 0) {
		*len_r = 0;
		return "";
	}
	*len_r = s.len;
	return s.data;
}
/* ---- FETCH ---- */

static void
internaldate(time_t t, char *buf, size_t cap)
{
	static const char *const mon[] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug",
		"Sep", "Oct", "Nov", "Dec" };
	struct tm tm;
	long off;

	localtime_r(&t, &tm);
	off = tm.tm_gmtoff / 60;
	snprintf(buf, cap, "%02d-%s-%04d %02d:%02d:%02d %c%02ld%02ld", tm.tm_mday, mon[tm.tm_mon],
	    tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec, off < 0 ? '-' : '+',
	    (off < 0 ? -off : off) / 60, (off < 0 ? -off : off) % 60);
}

static int
fmsg_open(struct imap_proto *p, struct fmsg *f, uint32_t uid)
{
	const char *err;
	struct stat st;

	if (f->fd >= 0)
		return 0;
	if (mailstore_msg_open(p->box, uid, &f->fd, &err) < 0) {
		f->fd = -1;
		return -1;
	}
	f->size = fstat(f->fd, &st) == 0 ? (uint64_t)st.st_size : 0;
	return 0;
}

int
imap_fmsg_mime(struct imap_proto *p, struct fmsg *f, uint32_t uid)
{
	struct imap_mime *m;
	const char *err;

	if (f->mr != NULL)
		return 0;
	if (fmsg_open(p, f, uid) < 0 || imap_mime_open(f->fd, f->size, &m, &err) < 0)
		return -1;
	f->mr = xcalloc(1, sizeof(*f->mr));
	f->mr->m = m;
	f->mr->refs = 1;
	return 0;
}

void
imap_fmsg_close(struct fmsg *f)
{
	if (f->fd >= 0)
		close(f->fd);
	f->fd = -1;
	mref_unref(&f->mr);
}

/* 1 when D[0..N) has no NUL and no LF without a CR before it: sent as it is.
 * 16 octets at a time (GCC/Clang vector extensions: SSE2/NEON or plain
 * words), checked every 4 KiB: a 1 MB message in well under its sendfile. */
typedef unsigned char v16 __attribute__((vector_size(16)));

static int
bytes_plain(const unsigned char *d, size_t n)
{
	size_t i = 1;

	if (n == 0)
		return 1;
	if (d[0] == '\n' || d[0] == '\0')
		return 0;
	while (i + 16 <= n) {
		size_t end = n - i > 4096 ? i + 4096 : n;
		v16 acc = { 0 };
		uint64_t w[2];

		for (; i + 16 <= end; i += 16) {
			v16 a, b;

			memcpy(&a, d + i, 16);
			memcpy(&b, d + i - 1, 16);	/* each octet's predecessor */
			acc |= (v16)((a == '\n') & (b != '\r')) | (v16)(a == '\0');
		}
		memcpy(w, &acc, sizeof(w));
		if (w[0] | w[1])
			return 0;
	}
	for (; i < n; i++)
		if (d[i] == '\0' || (d[i] == '\n' && d[i - 1] != '\r'))
			return 0;
	return 1;
}

/*
 * The scan's answers, remembered by the worker process (its job threads
 * share them): keyed by the file's identity (device, inode, size, mtime),
 * which a Maildir message keeps for life, and its UIDVALIDITY and UID (an
 * inode freed by an expunge and taken by a new file of the same size within
 * one clock tick is another UID), so a message fetched again (other
 * clients, other sessions) is not read twice. Direct-mapped, 1,024 entries.
 */
#define PLAIN_CACHE 1024

struct plain_ent {
	uint32_t uidvalidity, uid;
	dev_t dev;
	ino_t ino;
	off_t size;
	struct timespec mtim;
	int plain;		/* 0: empty slot */
};

static struct plain_ent plain_cache[PLAIN_CACHE];
static pthread_mutex_t plain_lock = PTHREAD_MUTEX_INITIALIZER;

static struct plain_ent *
plain_slot(const struct stat *st)
{
	uint64_t h = ((uint64_t)st->st_ino * 0x9e3779b97f4a7c15ull) ^ (uint64_t)st->st_dev;

	return &plain_cache[(h >> 32) % PLAIN_CACHE];
}

static int
plain_cached(const struct stat *st, uint32_t uidvalidity, uint32_t uid)
{
	const struct plain_ent *e;
	int r = 0;

	pthread_mutex_lock(&plain_lock);
	e = plain_slot(st);
	if (e->plain != 0 && e->uidvalidity == uidvalidity && e->uid == uid &&
	    e->dev == st->st_dev && e->ino == st->st_ino &&
	    e->size == st->st_size && e->mtim.tv_sec == st->st_mtim.tv_sec &&
	    e->mtim.tv_nsec == st->st_mtim.tv_nsec)
		r = e->plain;
	pthread_mutex_unlock(&plain_lock);
	return r;
}

static void
plain_remember(const struct stat *st, uint32_t uidvalidity, uint32_t uid, int plain)
{
	struct plain_ent *e;

	pthread_mutex_lock(&plain_lock);
	e = plain_slot(st);
	e->uidvalidity = uidvalidity;
	e->uid = uid;
	e->dev = st->st_dev;
	e->ino = st->st_ino;
	e->size = st->st_size;
	e->mtim = st->st_mtim;
	e->plain = plain;
	pthread_mutex_unlock(&plain_lock);
}

/*
 * Is F's file what BODY[] sends (no bare LF, no NUL)? Then the whole
 * message, or a partial of it, is a plain file range and needs no MIME
 * parse (imap_mime_open reads the structure of the whole message: most of
 * the cost of a large BODY[]). 1 yes, 0 no (the parsed path decides), -1
 * the file cannot be opened. *KNOWN keeps the answer for the message
 * (0: not looked at yet, 1 plain, -1 not).
 */
static int
fmsg_plain(struct imap_proto *p, struct fmsg *f, uint32_t uid, int *known)
{
	struct stat st;
	void *map;

	if (*known != 0)
		return *known > 0;
	if (fmsg_open(p, f, uid) < 0)
		return -1;
	*known = -1;
	if (f->size > IMAP_MIME_SIZE_MAX)
		return 0;	/* the parsed path refuses it, as before */
	if (f->size == 0) {
		*known = 1;
		return 1;
	}
	if (fstat(f->fd, &st) < 0 || (uint64_t)st.st_size != f->size)
		return 0;
	if ((*known = plain_cached(&st, mailstore_box_uidvalidity(p->box), uid)) != 0)
		return *known > 0;
	*known = -1;
	map = mmap(NULL, (size_t)f->size, PROT_READ, MAP_PRIVATE | MAP_POPULATE, f->fd, 0);
	if (map == MAP_FAILED)
		return 0;
	if (bytes_plain(map, (size_t)f->size))
		*known = 1;
	munmap(map, (size_t)f->size);
	plain_remember(&st, mailstore_box_uidvalidity(p->box), uid, *known);
	return *known > 0;
}

/* BODY[], BODY.PEEK[], RFC822 (and their partials): the whole message */
static int
fetch_is_whole(const struct imap_fetch_att *a)
{
	return a->kind == IMAP_FETCH_RFC822 ||
	    (a->kind == IMAP_FETCH_SECTION && a->nparts == 0 && a->text == IMAP_SECTION_ALL);
}

static int
fetch_sets_seen(const struct imap_fetch_att *f)
{
	return f->kind == IMAP_FETCH_RFC822 || f->kind == IMAP_FETCH_RFC822_TEXT ||
	    (f->kind == IMAP_FETCH_SECTION && !f->peek);
}

static void
section_name(struct str *b, const struct imap_fetch_att *f)
{
	static const char *const text[] = { "", "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT",
		"TEXT", "MIME" };

	imap_str_add(b, "BODY[");
	for (size_t i = 0; i < f->nparts; i++)
		imap_str_add(b, "%s%u", i ? "." : "", (unsigned)f->part[i]);
	if (f->text != IMAP_SECTION_ALL)
		imap_str_add(b, "%s%s", f->nparts ? "." : "", text[f->text]);
	if (f->text == IMAP_SECTION_HEADER_FIELDS || f->text == IMAP_SECTION_HEADER_FIELDS_NOT) {
		imap_str_add(b, " (");
		/* the field names upper-cased, as Dovecot echoes them */
		for (size_t i = 0; i < f->nfields; i++) {
			imap_str_add(b, "%s", i ? " " : "");
			for (const char *s = f->fields[i]; *s != '\0'; s++) {
				char u = (char)toupper((unsigned char)*s);

				imap_str_addn(b, &u, 1);
			}
		}
		imap_str_add(b, ")");
	}
	imap_str_add(b, "]");
	if (f->partial)
		imap_str_add(b, "<%u>", (unsigned)f->offset);
}

/* one message's FETCH response; 0, or -1 when it is gone from the store */
int
imap_fetch_one(struct imap_proto *p, size_t i)
{
	const struct imap_cmd *c = p->cmd;
	const struct mailstore_msg *m = imap_view_msg(p, i);
	struct vmsg *v = &p->view[i];
	struct str b = { 0 };
	struct fmsg f = { .fd = -1, .size = 0, .mr = NULL };
	int want_flags = 0, first = 1, seen_set = 0, plain_known = 0;
	const char *err;

	if (m == NULL)
		return -1;
	for (size_t k = 0; k < c->nfetch; k++) {
		if (c->fetch[k].kind == IMAP_FETCH_FLAGS)
			want_flags = 1;
		if (!p->readonly && fetch_sets_seen(&c->fetch[k]) && !(m->flags & MAILSTORE_SEEN))
			seen_set = 1;
	}
	if (seen_set) {
		if (mailstore_msg_set_flags(p->box, v->uid, MAILSTORE_FLAGS_ADD, MAILSTORE_SEEN,
		    NULL, 0, &err) == 0) {
			m = imap_view_msg(p, i);
			if (m == NULL)
				return -1;
			v->flags = m->flags;
			v->kw = m->keywords;
		} else {
			seen_set = 0;
		}
	}
	imap_str_add(&b, "* %zu FETCH (", i + 1);
	/* as Dovecot: UID first for UID FETCH, then UID/FLAGS/INTERNALDATE/
	 * RFC822.SIZE in the order asked, FLAGS when \Seen was set on the way,
	 * then the rest (ENVELOPE, BODY..., sections) in the order asked */
	if (c->uid) {
		imap_str_add(&b, "UID %u", (unsigned)v->uid);
		first = 0;
	}
	for (int pass = 0; pass < 2; pass++)
	for (size_t k = 0; k < c->nfetch; k++) {
		const struct imap_fetch_att *a = &c->fetch[k];
		const char *sp = first ? "" : " ";
		/* Dovecot's "buffered" handlers come first */
		int later = !(a->kind == IMAP_FETCH_UID || a->kind == IMAP_FETCH_FLAGS ||
		    a->kind == IMAP_FETCH_INTERNALDATE || a->kind == IMAP_FETCH_RFC822_SIZE);

		if (pass == 1 && k == 0 && seen_set && !want_flags) {
			/* FLAGS for the \Seen just set: the last of the buffered ones */
			imap_str_add(&b, "%sFLAGS (", first ? "" : " ");
			imap_flags_str(p, &b, v->flags, v->kw, v->recent);
			imap_str_add(&b, ")");
			first = 0;
			sp = " ";
		}
		if (later != pass)
			continue;
		switch (a->kind) {
		case IMAP_FETCH_UID:
			if (c->uid)
				continue;
			imap_str_add(&b, "%sUID %u", sp, (unsigned)v->uid);
			break;
		case IMAP_FETCH_FLAGS:
			imap_str_add(&b, "%sFLAGS (", sp);
			imap_flags_str(p, &b, v->flags, v->kw, v->recent);
			imap_str_add(&b, ")");
			break;
		case IMAP_FETCH_INTERNALDATE: {
			time_t t = 0;
			char d[64];

			if (mailstore_msg_date(p->box, v->uid, &t, &err) < 0)
				t = 0;
			internaldate(t, d, sizeof(d));
			imap_str_add(&b, "%sINTERNALDATE \"%s\"", sp, d);
			break;
		}
		case IMAP_FETCH_RFC822_SIZE:
			imap_str_add(&b, "%sRFC822.SIZE %llu", sp, (unsigned long long)m->vsize);
			break;
		case IMAP_FETCH_RFC822:
		case IMAP_FETCH_RFC822_HEADER:
		case IMAP_FETCH_RFC822_TEXT:
		case IMAP_FETCH_SECTION: {
			struct imap_mime_section sec;
			int plain = f.mr == NULL && fetch_is_whole(a) ?
			    fmsg_plain(p, &f, v->uid, &plain_known) : 0;
			int dfd = -1;

			if (plain < 0) {
				free(b.s);
				imap_fmsg_close(&f);
				return -1;
			}
			if (plain && (dfd = dup(f.fd)) >= 0) {
				/* the file as it is: a range of it, no parse; a partial
				 * cut as imap_mime_section cuts one without bare LFs */
				uint64_t off = 0, n = f.size;

				if (a->kind == IMAP_FETCH_SECTION && a->partial) {
					off = a->offset < f.size ? a->offset : f.size;
					n = f.size - off;
					if (a->length < n)
						n = a->length;
				}
				if (a->kind == IMAP_FETCH_SECTION) {
					imap_str_add(&b, "%s", sp);
					section_name(&b, a);
				} else {
					imap_str_add(&b, "%sRFC822", sp);
				}
				imap_str_add(&b, " {%llu}\r\n", (unsigned long long)n);
				imap_out_str(p, &b);
				if (n > 0)
					out_file(p, dfd, (off_t)off, n, 0);
				else
					close(dfd);
				break;
			}
			if (imap_fmsg_mime(p, &f, v->uid) < 0) {
				free(b.s);
				imap_fmsg_close(&f);
				return -1;
			}
			if (a->kind == IMAP_FETCH_SECTION) {
				imap_str_add(&b, "%s", sp);
				section_name(&b, a);
			} else {
				imap_str_add(&b, "%s%s", sp, a->kind == IMAP_FETCH_RFC822 ? "RFC822" :
				    a->kind == IMAP_FETCH_RFC822_HEADER ? "RFC822.HEADER" : "RFC822.TEXT");
			}
			if (imap_mime_section(f.mr->m, a, &sec) < 0) {
				imap_str_add(&b, " NIL");
				break;
			}
			imap_str_add(&b, " {%llu}\r\n", (unsigned long long)sec.size);
			imap_out_str(p, &b);
			if (sec.size == 0) {
				imap_mime_section_deinit(&sec);
			} else if (sec.built == NULL && !sec.crlf) {
				/* the file's own bytes: the door sends them from the file */
				int dfd = dup(f.fd);

				if (dfd >= 0) {
					out_file(p, dfd, (off_t)sec.offset, sec.size, 0);
					imap_mime_section_deinit(&sec);
				} else {
					out_gen(p, f.mr, &sec);
				}
			} else {
				out_gen(p, f.mr, &sec);
			}
			break;
		}
		case IMAP_FETCH_ENVELOPE:
		case IMAP_FETCH_BODY:
		case IMAP_FETCH_BODYSTRUCTURE: {
			char *s;
			size_t len;
			enum mailstore_cache_field cf = a->kind == IMAP_FETCH_ENVELOPE ?
			    MAILSTORE_CACHE_ENVELOPE : a->kind == IMAP_FETCH_BODY ?
			    MAILSTORE_CACHE_BODY : MAILSTORE_CACHE_BODYSTRUCTURE;

			/* computed once per message, then from the store's cache */
			if (mailstore_cache_get(p->box, v->uid, cf, &s, &len) < 0) {
				if (imap_fmsg_mime(p, &f, v->uid) < 0) {
					free(b.s);
					imap_fmsg_close(&f);
					return -1;
				}
				s = a->kind == IMAP_FETCH_ENVELOPE ? imap_mime_envelope(f.mr->m, &len) :
				    imap_mime_bodystructure(f.mr->m, a->kind == IMAP_FETCH_BODYSTRUCTURE,
				    &len);
				if (s != NULL)
					mailstore_cache_put(p->box, v->uid, cf, s, len);
			}
			imap_str_add(&b, "%s%s ", sp, a->kind == IMAP_FETCH_ENVELOPE ? "ENVELOPE" :
			    a->kind == IMAP_FETCH_BODY ? "BODY" : "BODYSTRUCTURE");
			if (s != NULL)
				imap_str_addn(&b, s, len);
			else
				imap_str_add(&b, "NIL");
			free(s);
			break;
		}
		}
		first = 0;
	}
	imap_str_add(&b, ")\r\n");
	imap_out_str(p, &b);
	imap_fmsg_close(&f);
	return 0;
}
