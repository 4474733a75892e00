/*
 * imap_mime: the message side of IMAP FETCH (see imap_mime.h).
 *
 *   imap_mime_open/_open_mem/_free   map a message and scan its MIME structure
 *   imap_mime_vsize                  octets with CRLF line ends
 *   imap_mime_envelope               ENVELOPE
 *   imap_mime_bodystructure          BODYSTRUCTURE (extensible) or BODY
 *   imap_mime_section(_by_name)      where BODY[section]<n.m> is in the file
 *   imap_mime_section_read           its octets, converted where needed
 *   imap_mime_sent_date, _header_foreach, _body_foreach   for SEARCH
 *
 * What the output must be is Dovecot 2.3's, byte for byte, so the structure
 * scan follows the rules of Dovecot's message parser (boundaries match by
 * prefix, the longest and innermost wins; the [CR]LF before a boundary
 * belongs to the boundary; a part without Content-Type is text/plain, or
 * message/rfc822 under multipart/digest; Content-* headers count only in a
 * MIME part; 100 nested parts and 10,000 parts at most) and the header
 * values are tokenised by RFC 822/2045/2231 rules the same way. The code is
 * our own. For SEARCH, GMime 3 undoes quoted-printable and converts body
 * charsets to UTF-8; encoded words (RFC 2047) and Date: are read by
 * Dovecot's rules with our own code (GMime's guesses at raw 8-bit, broken
 * words and odd dates select other messages than Dovecot does). The scan is iterative
 * (no recursion, whatever the nesting), one pass over the mapped file.
 *
 * Never reads the file into memory (mmap, read-only; a Maildir file is
 * never truncated, so the mapping stays valid), never writes it, never
 * logs message bytes. One object, one thread; objects on different threads
 * are independent (GMime is initialised once, under pthread_once).
 */
#include "pop-imap-proxy/imap_mime.h"
#include "pop-imap-proxy/imap_mime_int.h"

#include <ctype.h>
#include <errno.h>
#include <iconv.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gmime/gmime.h>

#include "common/xmalloc.h"
#include "pop-imap-proxy/imap_parser.h"

#define BOUNDARY_MAX	80	/* longer boundaries are cut (as Dovecot) */
#define BOUNDARY_LINE_MAX (BOUNDARY_MAX + 4)
#define NAME_MAX_LEN	1000	/* longer header names count as no name */
#define REPL_CHAR	"\xEF\xBF\xBD"	/* NUL in header values */
#define PARAMS_MAX	128	/* parameters of one Content-Type/-Disposition */
#define FIELD_MAX	IMAP_MIME_HEADER_MAX	/* bytes of one header value we tokenise */

/* ---- growing strings ---- */

static void
str_grow(struct str *s, size_t more)
{
	if (s->len + more + 1 <= s->cap)
		return;
	size_t cap = s->cap ? s->cap : 64;
	while (cap < s->len + more + 1)
		cap *= 2;
	s->p = xrealloc(s->p, cap);
	s->cap = cap;
}

void
str_add(struct str *s, const void *d, size_t n)
{
	str_grow(s, n);
	if (n > 0)
		memcpy(s->p + s->len, d, n);
	s->len += n;
	s->p[s->len] = '\0';
}

void
str_addc(struct str *s, char c)
{
	str_add(s, &c, 1);
}

void
str_adds(struct str *s, const char *z)
{
	str_add(s, z, strlen(z));
}

void __attribute__((format(printf, 2, 3)))
str_printf(struct str *s, const char *fmt, ...)
{
	char tmp[64];
	va_list ap;

	va_start(ap, fmt);
	int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	if (n > 0)
		str_add(s, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

void
str_trunc(struct str *s, size_t len)
{
	if (len < s->len) {
		s->len = len;
		s->p[len] = '\0';
	}
}

const char *
str_c(struct str *s)
{
	if (s->p == NULL)
		str_grow(s, 0), s->p[0] = '\0';
	return s->p;
}

void
str_free(struct str *s)
{
	free(s->p);
	s->p = NULL;
	s->len = s->cap = 0;
}

/* ---- a pool for the strings of one answer: freed at once ---- */

void *
pool_alloc(struct pool *pl, size_t n)
{
	if (pl->n == pl->cap) {
		pl->cap = pl->cap ? pl->cap * 2 : 16;
		pl->blk = xreallocarray(pl->blk, pl->cap, sizeof(*pl->blk));
	}
	void *p = xcalloc(1, n ? n : 1);
	pl->blk[pl->n++] = p;
	return p;
}

char *
pool_strndup(struct pool *pl, const char *s, size_t n)
{
	char *p = pool_alloc(pl, n + 1);

	memcpy(p, s, n);
	p[n] = '\0';
	return p;
}

char *
pool_strdup(struct pool *pl, const char *s)
{
	return pool_strndup(pl, s, strlen(s));
}

void
pool_free(struct pool *pl)
{
	for (size_t i = 0; i < pl->n; i++)
		free(pl->blk[i]);
	free(pl->blk);
	pl->blk = NULL;
	pl->n = pl->cap = 0;
}

/* a header value as a C string: NUL bytes become U+FFFD */
char *
pool_hdrdup(struct pool *pl, const unsigned char *d, size_t n)
{
	if (memchr(d, '\0', n) == NULL)
		return pool_strndup(pl, (const char *)d, n);
	struct str s = { 0 };
	for (size_t i = 0; i < n; i++) {
		if (d[i] == '\0')
			str_adds(&s, REPL_CHAR);
		else
			str_addc(&s, (char)d[i]);
	}
	char *r = pool_strdup(pl, str_c(&s));
	str_free(&s);
	return r;
}

/* ---- RFC 822 / 2045 tokens ---- */

/* 1: atext; 2: alpha, digit, 8-bit; 4: atext but a MIME tspecial */
static const unsigned char atext_tab[256] = {
	0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
	0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
	0, 1, 0, 1, 1, 1, 1, 1, 0, 0, 1, 1, 0, 1, 0, 4,
	2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 4, 0, 4,
	0, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
	2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 1, 1,
	1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
	2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 0,
	2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
	2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
	2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
	2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
	2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
	2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
	2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
	2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
};
#define IS_ATEXT(c)	(atext_tab[(unsigned char)(c)] != 0)
#define IS_TOKEN(c)	((atext_tab[(unsigned char)(c)] & 3) != 0)
#define IS_LWSP(c)	((c) == ' ' || (c) == '\t')

/* struct rp, the tokeniser over one header value: imap_mime_int.h */

#define RP_CUR(r)	((r)->d < (r)->end ? *(r)->d : 0)

void
rp_init(struct rp *r, const unsigned char *d, size_t n)
{
	memset(r, 0, sizeof(*r));
	r->d = d;
	r->end = d + n;
}

static int
rp_skip_comment(struct rp *r)
{
	const unsigned char *start;
	int level = 1;

	if (r->comment != NULL)
		str_trunc(r->comment, 0);
	start = ++r->d;
	for (; r->d < r->end; r->d++) {
		switch (*r->d) {
		case '\0':
			if (r->comment != NULL && r->nul_repl) {
				str_add(r->comment, start, r->d - start);
				str_adds(r->comment, REPL_CHAR);
				start = r->d + 1;
			}
			break;
		case '(':
			level++;
			break;
		case ')':
			if (--level == 0) {
				if (r->comment != NULL)
					str_add(r->comment, start, r->d - start);
				r->d++;
				return r->d < r->end ? 1 : 0;
			}
			break;
		case '\n':
			if (r->comment == NULL)
				break;
			{
				size_t len = r->d - start;
				if (len > 0 && start[len - 1] == '\r')
					len--;
				str_add(r->comment, start, len);
				start = r->d + 1;
			}
			break;
		case '\\':
			r->d++;
			if (r->d >= r->end)
				return -1;
			if (*r->d == '\r' || *r->d == '\n' || *r->d == '\0') {
				r->d--;
				break;
			}
			if (r->comment != NULL)
				str_add(r->comment, start, r->d - start - 1);
			start = r->d;
			break;
		}
	}
	return -1;
}

int
rp_skip_lwsp(struct rp *r)
{
	while (r->d < r->end) {
		unsigned char c = *r->d;
		if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
			r->d++;
			continue;
		}
		if (c != '(')
			break;
		if (rp_skip_comment(r) < 0)
			return -1;
	}
	return r->d < r->end ? 1 : 0;
}

int
rp_atom(struct rp *r, struct str *s)
{
	const unsigned char *start;

	if (r->d >= r->end || !IS_ATEXT(*r->d))
		return -1;
	for (start = r->d++; r->d < r->end; r->d++) {
		if (IS_ATEXT(*r->d))
			continue;
		str_add(s, start, r->d - start);
		return rp_skip_lwsp(r);
	}
	str_add(s, start, r->d - start);
	return 0;
}

static int
rp_dot_atom(struct rp *r, struct str *s)
{
	const unsigned char *start;
	int ret;

	if (r->d >= r->end || !IS_ATEXT(*r->d))
		return -1;
	for (start = r->d++; r->d < r->end;) {
		if (IS_ATEXT(*r->d)) {
			r->d++;
			continue;
		}
		if (start == r->d)
			return -1;
		str_add(s, start, r->d - start);
		if ((ret = rp_skip_lwsp(r)) <= 0)
			return ret;
		if (*r->d != '.')
			return 1;
		r->d++;
		str_addc(s, '.');
		if (rp_skip_lwsp(r) <= 0)
			return -1;
		start = r->d;
	}
	str_add(s, start, r->d - start);
	return 0;
}

int
rp_mime_token(struct rp *r, struct str *s)
{
	const unsigned char *start;

	for (start = r->d; r->d < r->end; r->d++) {
		if (IS_TOKEN(*r->d) || *r->d == '.')
			continue;
		str_add(s, start, r->d - start);
		return rp_skip_lwsp(r);
	}
	str_add(s, start, r->d - start);
	return 0;
}

static int
rp_quoted(struct rp *r, struct str *s)
{
	const unsigned char *start;

	r->d++;
	for (start = r->d; r->d < r->end; r->d++) {
		switch (*r->d) {
		case '\0':
			if (r->nul_repl) {
				str_add(s, start, r->d - start);
				str_adds(s, REPL_CHAR);
				start = r->d + 1;
			}
			break;
		case '"':
			str_add(s, start, r->d - start);
			r->d++;
			return rp_skip_lwsp(r);
		case '\n': {
			size_t len = r->d - start;
			if (len > 0 && start[len - 1] == '\r')
				len--;
			str_add(s, start, len);
			start = r->d + 1;
			break;
		}
		case '\\':
			r->d++;
			if (r->d >= r->end)
				return -1;
			if (*r->d == '\r' || *r->d == '\n' || *r->d == '\0') {
				r->d--;
				break;
			}
			str_add(s, start, r->d - start - 1);
			start = r->d;
			break;
		}
	}
	return -1;
}

static int
rp_atom_or_dot(struct rp *r, struct str *s)
{
	const unsigned char *start;

	for (start = r->d; r->d < r->end; r->d++) {
		if (IS_ATEXT(*r->d) || *r->d == '.')
			continue;
		str_add(s, start, r->d - start);
		return rp_skip_lwsp(r);
	}
	str_add(s, start, r->d - start);
	return 0;
}

static int
rp_phrase(struct rp *r, struct str *s)
{
	int ret;

	if (r->d >= r->end)
		return 0;
	if (*r->d == '.')
		return -1;
	for (;;) {
		if (*r->d == '"')
			ret = rp_quoted(r, s);
		else
			ret = rp_atom_or_dot(r, s);
		if (ret <= 0)
			return ret;
		if (!IS_ATEXT(*r->d) && *r->d != '"' && *r->d != '.')
			break;
		str_addc(s, ' ');
	}
	return rp_skip_lwsp(r);
}

static int
rp_domain_literal(struct rp *r, struct str *s)
{
	const unsigned char *start;

	for (start = r->d++; r->d < r->end; r->d++) {
		switch (*r->d) {
		case '\0':
			if (r->nul_repl) {
				str_add(s, start, r->d - start);
				str_adds(s, REPL_CHAR);
				start = r->d + 1;
			}
			break;
		case '[':
			return -1;
		case ']':
			str_add(s, start, r->d - start + 1);
			r->d++;
			return rp_skip_lwsp(r);
		case '\n': {
			size_t len = r->d - start;
			if (len > 0 && start[len - 1] == '\r')
				len--;
			str_add(s, start, len);
			start = r->d + 1;
			break;
		}
		case '\\':
			r->d++;
			if (r->d >= r->end)
				return -1;
			if (*r->d == '\r' || *r->d == '\n' || *r->d == '\0') {
				str_add(s, start, r->d - start);
				start = r->d;
				r->d--;
				break;
			}
		}
	}
	return -1;
}

static int
rp_domain(struct rp *r, struct str *s)
{
	r->d++;		/* '@' */
	if (rp_skip_lwsp(r) <= 0)
		return -1;
	if (*r->d == '[')
		return rp_domain_literal(r, s);
	return rp_dot_atom(r, s);
}

int
rp_content_type(struct rp *r, struct str *s)
{
	size_t pos0 = s->len;

	if (rp_skip_lwsp(r) <= 0)
		return -1;
	if (rp_mime_token(r, s) <= 0 || s->len == pos0)
		return -1;
	if (*r->d != '/') {
		str_trunc(s, pos0);
		return -1;
	}
	r->d++;
	if (rp_skip_lwsp(r) <= 0) {
		str_trunc(s, pos0);
		return -1;
	}
	str_addc(s, '/');
	size_t pos = s->len;
	int ret = rp_mime_token(r, s);
	if (ret < 0 || s->len == pos || (r->d != r->end && *r->d != ';')) {
		str_trunc(s, pos0);
		return -1;
	}
	return ret;
}

/* 1: *key_r (a fresh string) and value; 0: end; -1: broken */
static int
rp_content_param(struct rp *r, char **key_r, struct str *value)
{
	struct str key = { 0 };
	int ret;

	*key_r = NULL;
	str_trunc(value, 0);
	if (r->d >= r->end)
		return 0;
	if (*r->d != ';')
		return -1;
	r->d++;
	if (rp_skip_lwsp(r) <= 0)
		return -1;
	if (rp_mime_token(r, &key) <= 0 || *r->d != '=') {
		str_free(&key);
		return -1;
	}
	r->d++;
	if ((ret = rp_skip_lwsp(r)) <= 0) {
		/* no value */
	} else if (*r->d == '"') {
		ret = rp_quoted(r, value);
	} else if (*r->d == '=') {
		/* name==?utf-8?b?...?= */
		while (r->d < r->end && *r->d != ';' && *r->d != ' ' && *r->d != '\t' &&
		    *r->d != '\r' && *r->d != '\n')
			str_addc(value, (char)*r->d++);
	} else {
		ret = rp_mime_token(r, value);
	}
	*key_r = xstrdup(str_c(&key));
	str_free(&key);
	str_c(value);
	return ret < 0 ? -1 : 1;
}

/* ---- RFC 2231 parameters: the list name, value, name, value, ... ---- */

struct p2231 {
	char *key, *value;
	unsigned idx;
	int extended;
	size_t order;
};

static int
p2231_cmp(const void *a, const void *b)
{
	const struct p2231 *x = a, *y = b;
	int r = strcmp(x->key, y->key);

	if (r != 0)
		return r;
	if (x->idx != y->idx)
		return x->idx < y->idx ? -1 : 1;
	return x->order < y->order ? -1 : x->order > y->order;
}

void
params_parse(struct rp *r, struct pool *pl, struct param **params_r, size_t *n_r)
{
	struct param *res = NULL;
	size_t nres = 0, capres = 0;
	struct p2231 *ext = NULL;
	size_t next = 0, capext = 0;
	struct str value = { 0 };
	char *key;
	int ret, saved = r->nul_repl;

	r->nul_repl = 1;
#define RES_ADD(k, v) do { \
		if (nres == capres) { \
			capres = capres ? capres * 2 : 8; \
			res = xreallocarray(res, capres, sizeof(*res)); \
		} \
		res[nres].name = (k); \
		res[nres].value = (v); \
		nres++; \
	} while (0)
	unsigned seen = 0;
	while ((ret = rp_content_param(r, &key, &value)) != 0) {
		/* at most 128 parameters, as Dovecot (since its CVE-2026-27852 fix) */
		if (++seen > PARAMS_MAX) {
			free(key);
			break;
		}
		if (ret < 0) {
			free(key);
			if (r->d >= r->end)
				break;
			r->d++;
			continue;
		}
		char *star = strchr(key, '*');
		int plain = 1;
		if (star != NULL) {
			char *p = star;
			struct p2231 e = { 0 };
			if (p[1] != '\0') {
				p++;
				for (; *p >= '0' && *p <= '9'; p++)
					e.idx = e.idx * 10 + (unsigned)(*p - '0');
			}
			if (*p == '*') {
				e.extended = 1;
				p++;
			}
			if (*p == '\0') {
				plain = 0;
				e.key = xstrndup(key, star - key);
				e.value = xstrdup(str_c(&value));
				e.order = next;
				if (next == capext) {
					capext = capext ? capext * 2 : 8;
					ext = xreallocarray(ext, capext, sizeof(*ext));
				}
				ext[next++] = e;
			}
		}
		if (plain)
			RES_ADD(pool_strdup(pl, key), pool_strdup(pl, str_c(&value)));
		free(key);
	}
	r->nul_repl = saved;
	if (next > 0) {
		qsort(ext, next, sizeof(*ext), p2231_cmp);
		for (size_t i = 0, j; i < next; i = j) {
			int ok = 1, have_ext = 0;
			unsigned want = 0;
			for (j = i; j < next; j++) {
				if (strcasecmp(ext[i].key, ext[j].key) != 0)
					break;
				if (ext[j].idx != want)
					ok = 0;
				if (ext[j].extended)
					have_ext = 1;
				want++;
			}
			if (!ok) {
				for (size_t k = i; k < j; k++) {
					char num[16];
					snprintf(num, sizeof(num), "%u", ext[k].idx);
					struct str kk = { 0 };
					str_adds(&kk, ext[k].key);
					str_addc(&kk, '*');
					str_adds(&kk, num);
					if (ext[k].extended)
						str_addc(&kk, '*');
					RES_ADD(pool_strdup(pl, str_c(&kk)), pool_strdup(pl, ext[k].value));
					str_free(&kk);
				}
			} else {
				struct str v = { 0 };
				if (!ext[i].extended && have_ext)
					str_adds(&v, "''");
				for (size_t k = i; k < j; k++) {
					if (!ext[k].extended && have_ext) {
						for (const char *c = ext[k].value; *c; c++) {
							if (*c == '%')
								str_adds(&v, "%25");
							else
								str_addc(&v, *c);
						}
					} else {
						str_adds(&v, ext[k].value);
					}
				}
				struct str kk = { 0 };
				str_adds(&kk, ext[i].key);
				if (have_ext)
					str_addc(&kk, '*');
				RES_ADD(pool_strdup(pl, str_c(&kk)), pool_strdup(pl, str_c(&v)));
				str_free(&kk);
				str_free(&v);
			}
		}
		for (size_t i = 0; i < next; i++) {
			free(ext[i].key);
			free(ext[i].value);
		}
		free(ext);
	}
#undef RES_ADD
	str_free(&value);
	if (nres > 0) {
		struct param *pp = pool_alloc(pl, nres * sizeof(*pp));
		memcpy(pp, res, nres * sizeof(*pp));
		*params_r = pp;
	} else {
		*params_r = NULL;
	}
	*n_r = nres;
	free(res);
}

/* ---- addresses (RFC 5322, with the obsolete forms), as for ENVELOPE ---- */

struct ap {
	struct pool *pl;
	struct rp r;
	struct str comment;
	struct str s;
	struct addr *first, *last, cur;
	unsigned count;
};

static void
ap_add(struct ap *a)
{
	struct addr *n = pool_alloc(a->pl, sizeof(*n));

	*n = a->cur;
	n->next = NULL;
	memset(&a->cur, 0, sizeof(a->cur));
	if (a->first == NULL)
		a->first = n;
	else
		a->last->next = n;
	a->last = n;
	a->count++;
}

static int
ap_nonstrict_dot_atom(struct ap *a)
{
	struct rp *r = &a->r;
	int ret = -1;

	do {
		while (RP_CUR(r) == '.' && r->d < r->end) {
			str_addc(&a->s, '.');
			r->d++;
			if (r->d == r->end)
				return 0;
			ret = 1;
		}
		if (RP_CUR(r) == '@')
			break;
		ret = rp_atom(r, &a->s);
	} while (ret > 0 && RP_CUR(r) == '.');
	return ret;
}

static int
ap_local_part(struct ap *a)
{
	int ret;

	str_trunc(&a->s, 0);
	if (RP_CUR(&a->r) == '"' && a->r.d < a->r.end)
		ret = rp_quoted(&a->r, &a->s);
	else
		ret = ap_nonstrict_dot_atom(a);
	if (ret < 0)
		return -1;
	a->cur.mailbox = pool_strdup(a->pl, str_c(&a->s));
	return ret;
}

static int
ap_domain(struct ap *a)
{
	int ret;

	str_trunc(&a->s, 0);
	if ((ret = rp_domain(&a->r, &a->s)) < 0)
		return -1;
	a->cur.domain = pool_strdup(a->pl, str_c(&a->s));
	return ret;
}

static int
ap_domain_list(struct ap *a)
{
	int ret;

	str_trunc(&a->s, 0);
	for (;;) {
		if (a->r.d >= a->r.end)
			return 0;
		if (*a->r.d != '@')
			break;
		if (a->s.len > 0)
			str_addc(&a->s, ',');
		str_addc(&a->s, '@');
		if ((ret = rp_domain(&a->r, &a->s)) <= 0)
			return ret;
		while (rp_skip_lwsp(&a->r) > 0 && *a->r.d == ',')
			a->r.d++;
	}
	a->cur.route = pool_strdup(a->pl, str_c(&a->s));
	return 1;
}

static int
ap_angle_addr(struct ap *a)
{
	struct rp *r = &a->r;

	r->d++;		/* '<' */
	if (rp_skip_lwsp(r) <= 0)
		return -1;
	if (*r->d == '@') {
		if (ap_domain_list(a) > 0 && RP_CUR(r) == ':' && r->d < r->end) {
			r->d++;
		} else {
			a->cur.route = "INVALID_ROUTE";
			if (r->d >= r->end)
				return -1;
		}
		if (rp_skip_lwsp(r) <= 0)
			return -1;
	}
	if (*r->d != '>') {
		if (ap_local_part(a) <= 0)
			return -1;
		if (*r->d == '@') {
			if (ap_domain(a) <= 0)
				return -1;
		}
	}
	if (RP_CUR(r) != '>' || r->d >= r->end)
		return -1;
	r->d++;
	return rp_skip_lwsp(r);
}

static int
ap_name_addr(struct ap *a)
{
	str_trunc(&a->s, 0);
	if (rp_phrase(&a->r, &a->s) <= 0 || *a->r.d != '<')
		return -1;
	a->cur.name = pool_strdup(a->pl, str_c(&a->s));
	if (*a->cur.name == '\0')
		a->cur.name = NULL;
	if (ap_angle_addr(a) < 0) {
		a->cur.domain = "SYNTAX_ERROR";
		a->cur.invalid = 1;
	}
	return a->r.d < a->r.end ? 1 : 0;
}

static int
ap_addr_spec(struct ap *a)
{
	int ret, ret2 = -2;
	int quoted = *a->r.d == '"';

	str_trunc(&a->comment, 0);
	ret = ap_local_part(a);
	if (ret <= 0)
		a->cur.invalid = 1;
	if (ret != 0 && a->r.d < a->r.end && *a->r.d == '@') {
		ret2 = ap_domain(a);
		if (ret2 <= 0)
			ret = ret2;
	}
	if (a->comment.len > 0) {
		a->cur.name = pool_strdup(a->pl, str_c(&a->comment));
	} else if (ret2 == -2) {
		str_addc(&a->s, ' ');
		size_t orig = a->s.len;
		(void)rp_phrase(&a->r, &a->s);
		if (a->s.len != orig) {
			a->cur.mailbox = NULL;
			a->cur.name = pool_strdup(a->pl, str_c(&a->s));
		} else if (!quoted) {
			a->cur.domain = "";
		}
		a->cur.invalid = 1;
		ret = -1;
	}
	return ret;
}

static void
ap_add_fixed(struct ap *a)
{
	if (a->cur.mailbox == NULL) {
		a->cur.mailbox = "MISSING_MAILBOX";
		a->cur.invalid = 1;
	}
	if (a->cur.domain == NULL || a->cur.domain[0] == '\0') {
		a->cur.domain = "MISSING_DOMAIN";
		a->cur.invalid = 1;
	}
	ap_add(a);
}

static int
ap_mailbox(struct ap *a)
{
	const unsigned char *start = a->r.d;
	int ret;

	if ((ret = ap_name_addr(a)) < 0) {
		a->r.d = start;
		ret = ap_addr_spec(a);
		if (a->cur.invalid && a->cur.name == NULL && a->cur.mailbox != NULL &&
		    a->cur.domain == NULL) {
			a->cur.name = a->cur.mailbox;
			a->cur.mailbox = NULL;
		}
	}
	if (ret < 0)
		a->cur.invalid = 1;
	ap_add_fixed(a);
	return ret;
}

static int
ap_group(struct ap *a)
{
	struct rp *r = &a->r;
	int ret;

	str_trunc(&a->s, 0);
	if (rp_phrase(r, &a->s) <= 0 || *r->d != ':')
		return -1;
	r->d++;
	if ((ret = rp_skip_lwsp(r)) <= 0)
		a->cur.invalid = 1;
	a->cur.mailbox = pool_strdup(a->pl, str_c(&a->s));
	ap_add(a);
	if (ret > 0 && *r->d != ';') {
		for (;;) {
			if (a->count > ADDR_MAX)
				break;
			(void)ap_mailbox(a);
			if (r->d >= r->end || *r->d != ',')
				break;
			r->d++;
			if (rp_skip_lwsp(r) <= 0) {
				ret = -1;
				break;
			}
		}
	}
	if (ret >= 0) {
		if (r->d >= r->end || *r->d != ';') {
			ret = -1;
		} else {
			r->d++;
			ret = rp_skip_lwsp(r);
		}
	}
	if (ret < 0)
		a->cur.invalid = 1;
	ap_add(a);
	return ret == 0 ? 0 : 1;
}

struct addr *
addr_parse(struct pool *pl, const unsigned char *d, size_t n)
{
	struct ap a;

	memset(&a, 0, sizeof(a));
	a.pl = pl;
	rp_init(&a.r, d, n);
	a.r.comment = &a.comment;
	a.r.nul_repl = 1;
	if (rp_skip_lwsp(&a.r) > 0) {
		for (;;) {
			if (a.count > ADDR_MAX)
				break;
			const unsigned char *start = a.r.d;
			int ret = ap_group(&a);
			if (ret < 0) {
				a.r.d = start;
				ret = ap_mailbox(&a);
			}
			if (ret == 0)
				break;
			if (a.r.d >= a.r.end || *a.r.d != ',')
				break;
			a.r.d++;
			if ((ret = rp_skip_lwsp(&a.r)) <= 0) {
				if (ret < 0)
					ap_add_fixed(&a);
				break;
			}
		}
	}
	str_free(&a.comment);
	str_free(&a.s);
	return a.first;
}

/* ---- the message, its parts ---- */

static struct part *
part_new(struct imap_mime *m, struct part *parent)
{
	struct part *p = xcalloc(1, sizeof(*p));

	if (m->nall == m->capall) {
		m->capall = m->capall ? m->capall * 2 : 16;
		m->all = xreallocarray(m->all, m->capall, sizeof(*m->all));
	}
	m->all[m->nall++] = p;
	p->parent = parent;
	if (parent != NULL) {
		p->pos = parent->pos + parent->hdr.phys + parent->body.phys;
		p->depth = parent->depth + 1;
		if (parent->last_child == NULL)
			parent->children = p;
		else
			parent->last_child->next = p;
		parent->last_child = p;
		parent->nchildren++;
	}
	return p;
}

/* lines and missing CRs of [a, b) */
static void
range_size(const struct imap_mime *m, uint64_t a, uint64_t b, struct msize *sz)
{
	const unsigned char *d = m->d;
	uint64_t lines = 0, missing = 0;

	for (uint64_t i = a; i < b;) {
		const unsigned char *lf = memchr(d + i, '\n', b - i);
		if (lf == NULL)
			break;
		uint64_t k = lf - d;
		lines++;
		if (k == 0 || d[k - 1] != '\r')
			missing++;
		i = k + 1;
	}
	sz->phys += b - a;
	sz->virt += b - a + missing;
	sz->lines += lines;
}

static void
msize_add(struct msize *to, const struct msize *from)
{
	to->phys += from->phys;
	to->virt += from->virt;
	to->lines += from->lines;
}

/* the end of the line at POS: the LF's offset, or the file's end */
static uint64_t
line_end(const struct imap_mime *m, uint64_t pos)
{
	const unsigned char *lf = memchr(m->d + pos, '\n', m->size - pos);

	return lf ? (uint64_t)(lf - m->d) : m->size;
}

static struct boundary *
boundary_find(struct imap_mime *m, const unsigned char *data, size_t len, int trailing_dashes)
{
	struct boundary *best = NULL;

	for (size_t i = m->nbnd; i-- > 0;) {
		struct boundary *b = &m->bnd[i];
		if (b->len <= len && memcmp(b->b, data, b->len) == 0 &&
		    (best == NULL || best->len < b->len)) {
			best = b;
			if (best->len == len || (best->len + 2 == len && trailing_dashes))
				break;
		}
	}
	return best;
}

/* is the line at POS a boundary of an open multipart? */
static struct boundary *
boundary_line(struct imap_mime *m, struct part *cur, uint64_t pos)
{
	if (m->nbnd == 0 || m->size - pos < 2)
		return NULL;
	if (m->d[pos] != '-' || m->d[pos + 1] != '-')
		return NULL;
	if (m->total >= IMAP_MIME_PARTS_MAX) {
		(void)cur;
		return NULL;
	}
	const unsigned char *data = m->d + pos + 2;
	size_t size = m->size - pos - 2;
	const unsigned char *lf = memchr(data, '\n', size);
	size_t find = size;
	int dashes = 0;
	if (lf != NULL) {
		find = lf - data;
		if (find > 0 && data[find - 1] == '\r')
			find--;
		if (find > 2 && data[find - 1] == '-' && data[find - 2] == '-')
			dashes = 1;
	} else if (find > BOUNDARY_LINE_MAX) {
		find = BOUNDARY_LINE_MAX;
	}
	struct boundary *b = boundary_find(m, data, find, dashes);
	if (b == NULL)
		return NULL;
	b->epilogue = size >= b->len + 2 && memcmp(data + b->len, "--", 2) == 0;
	return b;
}

static void
boundary_pop_to(struct imap_mime *m, size_t n)
{
	while (m->nbnd > n)
		free(m->bnd[--m->nbnd].b);
}

static void
part_finish(struct part *p)
{
	msize_add(&p->parent->body, &p->body);
	msize_add(&p->parent->body, &p->hdr);
}

/* ---- header lines ---- */

static int
is_eoh(const unsigned char *d, uint64_t pos, uint64_t end)
{
	return (pos < end && d[pos] == '\n') ||
	    (pos + 1 < end && d[pos] == '\r' && d[pos + 1] == '\n');
}

/*
 * The next logical header of [pos, end): 1 and *h, 0 at the end of the
 * header (an empty line or the range's end). Values are capped (FIELD_MAX).
 */
int
hdr_next(struct hdr_iter *it, struct hdr *h)
{
	const unsigned char *d = it->m->d;
	uint64_t pos = it->pos;

	str_trunc(&h->value, 0);
	str_c(&h->value);
	if (pos >= it->end || is_eoh(d, pos, it->end))
		return 0;
	h->start = pos;
	int first = 1;
	for (;;) {
		const unsigned char *lf = memchr(d + pos, '\n', it->end - pos);
		uint64_t le = lf ? (uint64_t)(lf - d) : it->end;	/* content end */
		uint64_t next = lf ? le + 1 : it->end;
		uint64_t ce = le;
		if (lf && ce > pos && d[ce - 1] == '\r')
			ce--;
		h->no_newline = lf == NULL;
		if (first) {
			const unsigned char *colon = NULL;
			for (uint64_t i = pos; i < ce; i++) {
				if (d[i] == ':') {
					colon = d + i;
					break;
				}
			}
			if (colon == NULL) {
				h->name = NULL;
				h->name_len = 0;
				h->middle = d + pos;
				h->middle_len = 0;
				str_add(&h->value, d + pos, ce - pos < FIELD_MAX ? ce - pos : FIELD_MAX);
			} else {
				const unsigned char *v = colon + 1, *ve = d + ce;
				const unsigned char *vs = v;
				if (it->mode == HDR_DATA) {
					while (vs < ve && IS_LWSP(*vs))
						vs++;
					if (vs == ve && v < ve)
						vs = v + 1;
				} else if (vs < ve && IS_LWSP(*vs)) {
					vs++;
				}
				const unsigned char *ne = colon;
				while (ne > d + pos && IS_LWSP(ne[-1]))
					ne--;
				if ((size_t)(ne - (d + pos)) > NAME_MAX_LEN) {
					h->name = NULL;
					h->name_len = 0;
					h->middle = d + pos;
					h->middle_len = 0;
					vs = d + pos;
				} else {
					h->name = d + pos;
					h->name_len = ne - (d + pos);
					h->middle = ne;
					h->middle_len = vs - ne;
				}
				size_t n = ve - vs;
				str_add(&h->value, vs, n < FIELD_MAX ? n : FIELD_MAX);
			}
			first = 0;
		} else if (h->value.len < FIELD_MAX) {
			const unsigned char *v = d + pos;
			size_t n = ce - pos;
			if (n > FIELD_MAX - h->value.len)
				n = FIELD_MAX - h->value.len;
			if (it->mode == HDR_DATA) {
				str_addc(&h->value, '\n');
				str_add(&h->value, v, n);
			} else if (n > 0 && *v == '\t') {
				str_addc(&h->value, ' ');
				str_add(&h->value, v + 1, n - 1);
			} else {
				str_add(&h->value, v, n);
			}
		}
		pos = next;
		if (lf == NULL || pos >= it->end || !IS_LWSP(d[pos]))
			break;
	}
	h->end = pos;
	it->pos = pos;
	return 1;
}

void
hdr_iter_init(struct hdr_iter *it, const struct imap_mime *m, const struct part *p,
    enum hdr_mode mode)
{
	it->m = m;
	it->pos = p->pos;
	it->end = p->pos + p->hdr.phys;
	it->mode = mode;
}

int
hdr_is(const struct hdr *h, const char *name)
{
	size_t n = strlen(name);

	return h->name != NULL && h->name_len == n && strncasecmp((const char *)h->name, name, n) == 0;
}

/* ---- the structure scan ---- */

/* the Content-Type of the scan: flags and the boundary */
static void
scan_content_type(struct imap_mime *m, struct part *p, const struct hdr *h)
{
	struct rp r;
	struct str ct = { 0 };

	rp_init(&r, (const unsigned char *)h->value.p, h->value.len);
	rp_skip_lwsp(&r);
	int ret = rp_content_type(&r, &ct);
	const char *c = str_c(&ct);
	if (strcasecmp(c, "message/rfc822") == 0)
		p->flags |= PF_RFC822;
	else if (strncasecmp(c, "text", 4) == 0 && (ct.len == 4 || c[4] == '/'))
		p->flags |= PF_TEXT;
	else if (strncasecmp(c, "multipart/", 10) == 0) {
		p->flags |= PF_MULTIPART;
		if (strcasecmp(c + 10, "digest") == 0)
			p->flags |= PF_DIGEST;
	}
	if (ret >= 0 && (p->flags & PF_MULTIPART) && m->last_boundary == NULL) {
		struct pool pl = { 0 };
		struct param *params;
		size_t n;
		params_parse(&r, &pl, &params, &n);
		for (size_t i = 0; i < n; i++) {
			if (strcasecmp(params[i].name, "boundary") == 0) {
				m->last_boundary = xstrndup(params[i].value, BOUNDARY_MAX);
				break;
			}
		}
		pool_free(&pl);
	}
	str_free(&ct);
}

static int
too_many_nested(const struct imap_mime *m)
{
	return m->nested + 1 >= IMAP_MIME_DEPTH_MAX;
}

/*
 * Headers of P from *pos: sets P's header size and flags; returns what the
 * body is: 0 leaf, 1 multipart (boundary pushed), 2 message/rfc822.
 */
static int
scan_header(struct imap_mime *m, struct part *p, uint64_t *pos_io)
{
	uint64_t pos = *pos_io;
	const unsigned char *d = m->d;
	int seen_ct = 0, multipart = 0;
	uint64_t prev_nl = 0;
	struct hdr h;

	memset(&h, 0, sizeof(h));
	/* p->pos is where the parent's sizes put it (part_new), as Dovecot
	   counts it: that is POS, except for a message/rfc822 part whose own
	   header gave its last newline to a boundary (then it is that newline) */
	free(m->last_boundary);
	m->last_boundary = NULL;
	for (;;) {
		int eoh = is_eoh(d, pos, m->size);
		if (eoh && m->last_boundary != NULL && (p->flags & PF_IS_MIME) && !multipart) {
			if (!too_many_nested(m)) {
				if (m->nbnd == m->capbnd) {
					m->capbnd = m->capbnd ? m->capbnd * 2 : 8;
					m->bnd = xreallocarray(m->bnd, m->capbnd, sizeof(*m->bnd));
				}
				m->bnd[m->nbnd].part = p;
				m->bnd[m->nbnd].b = m->last_boundary;
				m->bnd[m->nbnd].len = strlen(m->last_boundary);
				m->bnd[m->nbnd].epilogue = 0;
				m->nbnd++;
				m->last_boundary = NULL;
				multipart = 1;
			} else {
				p->flags &= ~PF_MULTIPART;
			}
		}
		if (pos >= m->size)
			break;
		struct boundary *b = boundary_line(m, p, pos);
		if (b != NULL && b->part != p) {
			/* the header ends at a boundary; its last newline is the boundary's */
			if (prev_nl > 0) {
				p->hdr.lines--;
				p->hdr.phys -= prev_nl;
				p->hdr.virt -= 2;
				p->parent->body.lines++;
				p->parent->body.phys += prev_nl;
				p->parent->body.virt += 2;
			}
			break;
		}
		if (eoh) {
			uint64_t n = d[pos] == '\n' ? 1 : 2;
			p->hdr.lines++;
			p->hdr.phys += n;
			p->hdr.virt += 2;
			pos += n;
			/* an empty body right before a boundary: the empty line's
			   newline is the boundary's, not the header's */
			b = pos < m->size ? boundary_line(m, p, pos) : NULL;
			if (b != NULL && b->part != p) {
				p->hdr.lines--;
				p->hdr.phys -= n;
				p->hdr.virt -= 2;
				p->parent->body.lines++;
				p->parent->body.phys += n;
				p->parent->body.virt += 2;
			}
			break;
		}
		/* one logical header, line by line */
		struct hdr_iter it = { m, pos, m->size, HDR_DATA };
		(void)hdr_next(&it, &h);
		range_size(m, pos, h.end, &p->hdr);
		if (h.no_newline)
			prev_nl = 0;
		else
			prev_nl = (h.end >= 2 && d[h.end - 2] == '\r') ? 2 : 1;
		pos = h.end;
		if (hdr_is(&h, "Mime-Version")) {
			p->flags |= PF_IS_MIME;
		} else if (hdr_is(&h, "Content-Type")) {
			p->flags |= PF_IS_MIME;
			if (!seen_ct) {
				seen_ct = 1;
				scan_content_type(m, p, &h);
			}
		}
	}
	str_free(&h.value);
	if (!(p->flags & PF_IS_MIME))
		p->flags = 0;
	free(m->last_boundary);
	m->last_boundary = NULL;
	if (!seen_ct || !(p->flags & PF_IS_MIME)) {
		if (p->parent != NULL && (p->parent->flags & PF_DIGEST))
			p->flags |= PF_RFC822;
		else
			p->flags |= PF_TEXT;
	}
	/* keep PF_IS_MIME: BODYSTRUCTURE data needs it */
	*pos_io = pos;
	if (multipart)
		return 1;
	if (!(p->flags & PF_RFC822))
		return 0;
	if (!too_many_nested(m) && m->total < IMAP_MIME_PARTS_MAX)
		return 2;
	p->flags &= ~PF_RFC822;
	return 0;
}

static void
scan(struct imap_mime *m)
{
	uint64_t pos = 0;
	struct part *cur = part_new(m, NULL);
	int kind;

	m->root = cur;
	m->total = 1;
	m->nested = 0;
	kind = scan_header(m, cur, &pos);
	for (;;) {
		while (kind == 2) {
			/* message/rfc822: the body is a message */
			cur = part_new(m, cur);
			m->nested++;
			m->total++;
			kind = scan_header(m, cur, &pos);
		}
		if (m->nbnd == 0) {
			range_size(m, pos, m->size, &cur->body);
			pos = m->size;
			break;
		}
		/* to the next boundary line */
		uint64_t ls = pos;
		struct boundary *b = NULL;
		for (;;) {
			b = boundary_line(m, cur, ls);
			if (b != NULL)
				break;
			uint64_t le = line_end(m, ls);
			if (le >= m->size) {
				ls = m->size;
				break;
			}
			ls = le + 1;
		}
		if (b == NULL) {
			range_size(m, pos, m->size, &cur->body);
			pos = m->size;
			break;
		}
		uint64_t content_end = ls;
		if (ls > pos) {
			content_end = ls - 1;	/* the LF */
			if (content_end > pos && m->d[content_end - 1] == '\r')
				content_end--;
		}
		range_size(m, pos, content_end, &cur->body);
		while (cur != b->part) {
			part_finish(cur);
			cur = cur->parent;
			m->nested--;
		}
		size_t bi = b - m->bnd;
		int epi = b->epilogue;
		uint64_t bend = ls + 2 + b->len + (epi ? 2 : 0);
		boundary_pop_to(m, epi ? bi : bi + 1);
		/* the boundary line, to its end, is the multipart's */
		uint64_t le = line_end(m, bend > m->size ? m->size : bend);
		pos = le < m->size ? le + 1 : m->size;
		range_size(m, content_end, pos, &cur->body);
		if (m->nbnd > 0 && m->bnd[m->nbnd - 1].part == cur) {
			/* a new part */
			cur = part_new(m, cur);
			cur->flags |= PF_IS_MIME;
			m->nested++;
			m->total++;
			kind = scan_header(m, cur, &pos);
		} else {
			kind = 0;	/* epilogue */
		}
	}
	while (cur->parent != NULL) {
		part_finish(cur);
		cur = cur->parent;
	}
	boundary_pop_to(m, 0);
}

static struct imap_mime *
mime_new(const unsigned char *d, uint64_t size)
{
	struct imap_mime *m = xcalloc(1, sizeof(*m));

	m->d = d;
	m->size = size;
	for (uint64_t i = 0; i < size;) {
		const unsigned char *lf = memchr(d + i, '\n', size - i);
		if (lf == NULL)
			break;
		if (lf == d || lf[-1] != '\r') {
			m->has_bare_lf = 1;
			break;
		}
		i = lf - d + 1;
	}
	m->has_nul = memchr(d, '\0', size) != NULL;
	scan(m);
	return m;
}

static const unsigned char empty_msg[1];

struct imap_mime *
imap_mime_open_mem(const void *data, size_t size)
{
	return mime_new(size ? data : empty_msg, size);
}

int
imap_mime_open(int fd, uint64_t size, struct imap_mime **m_r, const char **error_r)
{
	void *map = NULL;

	struct stat st;

	/* the file decides: a size from a file name (S=) may lie, and a
	   mapping past the end of the file faults when touched */
	if (fstat(fd, &st) < 0) {
		*error_r = "fstat failed";
		return -1;
	}
	if ((uint64_t)st.st_size < size)
		size = (uint64_t)st.st_size;
	if (size > IMAP_MIME_SIZE_MAX) {
		*error_r = "message too large";
		return -1;
	}
	if (size > 0) {
		map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
		if (map == MAP_FAILED) {
			*error_r = "mmap failed";
			return -1;
		}
		(void)madvise(map, size, MADV_SEQUENTIAL);
	}
	struct imap_mime *m = mime_new(map ? map : empty_msg, size);
	m->map = map;
	*m_r = m;
	return 0;
}

void
imap_mime_free(struct imap_mime **mp)
{
	struct imap_mime *m = *mp;

	if (m == NULL)
		return;
	*mp = NULL;
	for (size_t i = 0; i < m->nall; i++)
		free(m->all[i]);
	free(m->all);
	boundary_pop_to(m, 0);
	free(m->bnd);
	free(m->last_boundary);
	if (m->map != NULL)
		munmap(m->map, m->size);
	free(m);
}

uint64_t
imap_mime_vsize(const struct imap_mime *m)
{
	return m->root->hdr.virt + m->root->body.virt;
}

/* ---- BODY[section] ---- */

/* the part a section number names (Dovecot's rules), or NULL */
static struct part *
part_find(struct imap_mime *m, const uint32_t *num, size_t n)
{
	struct part *p = m->root;

	for (size_t i = 0; i < n && p != NULL; i++) {
		int more = i + 1 < n;
		if (p->flags & PF_MULTIPART) {
			uint32_t k = num[i];
			p = k == 0 ? NULL : p->children;
			for (; k > 1 && p != NULL; k--)
				p = p->next;
		} else if (num[i] != 1) {
			p = NULL;
		} else if (more && !(p->flags & PF_RFC822)) {
			p = NULL;
		}
		if (p != NULL && (p->flags & PF_RFC822) && more)
			p = p->children;
	}
	return p;
}

/* does [a, b) hold a bare LF (the first octet's LF counts as bare)? */
static int
range_has_bare_lf(const struct imap_mime *m, uint64_t a, uint64_t b)
{
	const unsigned char *d = m->d;

	if (!m->has_bare_lf)
		return 0;
	for (uint64_t i = a; i < b;) {
		const unsigned char *lf = memchr(d + i, '\n', b - i);
		if (lf == NULL)
			return 0;
		uint64_t k = lf - d;
		if (k == a || d[k - 1] != '\r')
			return 1;
		i = k + 1;
	}
	return 0;
}

static int
range_has_nul(const struct imap_mime *m, uint64_t a, uint64_t b)
{
	return m->has_nul && a < b && memchr(m->d + a, '\0', b - a) != NULL;
}

/*
 * The section [a, b) of VSIZE octets sent, with the partial applied the way
 * Dovecot does it: where the range has no bare LF, a plain skip; where it
 * has, a walk over virtual octets, and when that walk stops right after a
 * CR (ours or the file's) the first octet of what follows is dropped.
 */
static void
section_range(struct imap_mime *m, uint64_t a, uint64_t b, uint64_t vsize, int partial,
    uint64_t p_off, uint64_t p_len, struct imap_mime_section *sec)
{
	int bare = range_has_bare_lf(m, a, b);

	memset(sec, 0, sizeof(*sec));
	sec->offset = a;
	sec->length = b - a;
	sec->size = vsize;
	sec->crlf = bare ? 1 : range_has_nul(m, a, b) ? 2 : 0;
	if (!partial)
		return;
	if (p_off >= vsize) {
		sec->offset = b;
		sec->length = 0;
		sec->size = 0;
		sec->crlf = 0;
		return;
	}
	uint64_t left = vsize - p_off;
	sec->size = p_len < left ? p_len : left;
	if (!bare) {
		sec->offset = a + p_off;
		sec->length = sec->size;
		sec->crlf = range_has_nul(m, sec->offset, sec->offset + sec->length) ? 2 : 0;
		return;
	}
	const unsigned char *d = m->d;
	uint64_t skip = p_off, i = a;
	int last_cr = 0;
	while (i < b && skip > 0) {
		skip--;
		if (d[i] == '\r') {
			if (skip == 0)
				last_cr = 1;
		} else if (d[i] == '\n' && (i == a || d[i - 1] != '\r')) {
			if (skip == 0) {
				last_cr = 1;	/* between our CR and the LF */
				break;
			}
			skip--;
		}
		i++;
	}
	sec->offset = i;
	sec->length = b - i;
	sec->skip = (uint64_t)last_cr;
	sec->crlf = 1;
}

/*
 * HEADER.FIELDS(.NOT): the matching lines as they are (CRLF, NUL -> 0x80),
 * then the empty line if the header has one, or always (ALWAYS_EOH: Dovecot
 * builds the top-level HEADER.FIELDS from its cache and always ends it so).
 * Like Dovecot's header filter, the lines are read from the header's start
 * to the first empty line or the file's end, not to the part's end: a
 * message/rfc822 part whose header a boundary cuts short goes on past it.
 */
static void
build_fields(struct imap_mime *m, const struct part *p, const char *const *fields, size_t nf,
    int exclude, int always_eoh, struct str *out)
{
	struct hdr_iter it;
	struct hdr h;

	memset(&h, 0, sizeof(h));
	hdr_iter_init(&it, m, p, HDR_DATA);
	it.end = m->size;
	while (hdr_next(&it, &h) > 0) {
		int match = 0;
		for (size_t i = 0; i < nf && h.name != NULL; i++) {
			size_t fl = strlen(fields[i]);
			if (fl == h.name_len && strncasecmp(fields[i], (const char *)h.name, fl) == 0) {
				match = 1;
				break;
			}
		}
		if (match == exclude)
			continue;
		for (uint64_t i = h.start; i < h.end; i++) {
			unsigned char c = m->d[i];
			if (c == '\n' && (i == h.start || m->d[i - 1] != '\r'))
				str_addc(out, '\r');
			str_addc(out, c ? (char)c : (char)0x80);
		}
	}
	str_free(&h.value);
	if (always_eoh || is_eoh(m->d, it.pos, it.end))
		str_adds(out, "\r\n");
	str_c(out);
}

int
imap_mime_section_by_name(struct imap_mime *m, const uint32_t *part, size_t nparts, int text,
    const char *const *fields, size_t nfields, int partial, uint32_t p_offset,
    uint32_t p_length, struct imap_mime_section *sec_r)
{
	struct part *p = m->root;
	uint64_t a, b, v;

	memset(sec_r, 0, sizeof(*sec_r));
	if (nparts > 0) {
		p = part_find(m, part, nparts);
		if (p == NULL)
			return 0;	/* Dovecot sends an empty string */
		switch (text) {
		case IMAP_SECTION_HEADER:
		case IMAP_SECTION_HEADER_FIELDS:
		case IMAP_SECTION_HEADER_FIELDS_NOT:
		case IMAP_SECTION_TEXT:
			if (!(p->flags & PF_RFC822))
				return 0;
			p = p->children;
			break;
		default:
			break;
		}
	} else if (text == IMAP_SECTION_MIME) {
		return 0;
	}
	switch (text) {
	case IMAP_SECTION_ALL:
		if (nparts == 0) {
			a = 0;
			b = m->size;
			v = imap_mime_vsize(m);
		} else {
			a = p->pos + p->hdr.phys;
			b = a + p->body.phys;
			v = p->body.virt;
		}
		break;
	case IMAP_SECTION_MIME:
	case IMAP_SECTION_HEADER:
		a = p->pos;
		b = a + p->hdr.phys;
		v = p->hdr.virt;
		break;
	case IMAP_SECTION_TEXT:
		a = p->pos + p->hdr.phys;
		b = a + p->body.phys;
		v = p->body.virt;
		break;
	case IMAP_SECTION_HEADER_FIELDS:
	case IMAP_SECTION_HEADER_FIELDS_NOT: {
		struct str s = { 0 };
		build_fields(m, p, fields, nfields, text == IMAP_SECTION_HEADER_FIELDS_NOT,
		    nparts == 0 && text == IMAP_SECTION_HEADER_FIELDS, &s);
		uint64_t off = 0, n = s.len;
		if (partial) {
			off = p_offset < s.len ? p_offset : s.len;
			n = s.len - off;
			if (p_length < n)
				n = p_length;
		}
		if (off > 0)
			memmove(s.p, s.p + off, n);
		s.p[n] = '\0';
		sec_r->built = s.p;
		sec_r->size = n;
		sec_r->length = n;
		return 0;
	}
	default:
		return 0;
	}
	section_range(m, a, b, v, partial, p_offset, p_length, sec_r);
	return 0;
}

int
imap_mime_section(struct imap_mime *m, const struct imap_fetch_att *att,
    struct imap_mime_section *sec_r)
{
	switch (att->kind) {
	case IMAP_FETCH_RFC822:
		return imap_mime_section_by_name(m, NULL, 0, IMAP_SECTION_ALL, NULL, 0, 0, 0, 0, sec_r);
	case IMAP_FETCH_RFC822_HEADER:
		return imap_mime_section_by_name(m, NULL, 0, IMAP_SECTION_HEADER, NULL, 0, 0, 0, 0, sec_r);
	case IMAP_FETCH_RFC822_TEXT:
		return imap_mime_section_by_name(m, NULL, 0, IMAP_SECTION_TEXT, NULL, 0, 0, 0, 0, sec_r);
	default:
		break;
	}
	return imap_mime_section_by_name(m, att->part, att->nparts, (int)att->text, att->fields,
	    att->nfields, att->partial, att->offset, att->length, sec_r);
}

void
imap_mime_section_deinit(struct imap_mime_section *sec)
{
	free(sec->built);
	sec->built = NULL;
}

size_t
imap_mime_section_read(struct imap_mime *m, const struct imap_mime_section *sec, uint64_t pos,
    void *buf, size_t len)
{
	unsigned char *o = buf;

	if (pos >= sec->size)
		return 0;
	if (len > sec->size - pos)
		len = sec->size - pos;
	if (sec->built != NULL) {
		memcpy(o, sec->built + pos, len);
		return len;
	}
	if (!sec->crlf) {
		memcpy(o, m->d + sec->offset + pos, len);
		return len;
	}
	if (sec->crlf == 2) {
		const unsigned char *src = m->d + sec->offset + pos;
		for (size_t k = 0; k < len; k++)
			o[k] = src[k] ? src[k] : 0x80;
		return len;
	}
	/* LF -> CRLF from sec->offset on (its first LF is bare), the first
	   sec->skip octets dropped: find converted octet POS + skip (cached) */
	const unsigned char *d = m->d;
	uint64_t a = sec->offset, b = sec->offset + sec->length;
	uint64_t want = pos + sec->skip, i, out;
	int half;	/* the CR of a bare LF was produced, the LF not yet */
	if (m->cache_valid && m->cache_sec == sec->offset && m->cache_out <= want) {
		i = m->cache_file;
		out = m->cache_out;
		half = m->cache_half;
	} else {
		i = a;
		out = 0;
		half = 0;
	}
	while (out < want && i < b) {
		int bare = d[i] == '\n' && (i == a || d[i - 1] != '\r');
		if (bare && !half) {
			half = 1;
			out++;
			continue;
		}
		half = 0;
		i++;
		out++;
	}
	size_t n = 0;
	while (n < len && i < b) {
		unsigned char c = d[i];
		int bare = c == '\n' && (i == a || d[i - 1] != '\r');
		if (bare && !half) {
			o[n++] = '\r';
			half = 1;
			continue;
		}
		half = 0;
		o[n++] = c ? c : 0x80;
		i++;
	}
	out += n;
	/* a dropped octet can leave the literal one short at the end: pad */
	while (n < len)
		o[n++] = ' ';
	m->cache_valid = 1;
	m->cache_sec = sec->offset;
	m->cache_out = out;
	m->cache_file = i;
	m->cache_half = half;
	return n;
}

/* ---- for SEARCH ---- */

static void
gmime_init(void)
{
	g_mime_init();
}

/* GMime's global state, once per process: job threads may race here */
static void
gmime_init_once(void)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;

	(void)pthread_once(&once, gmime_init);
}

/* ---- Date: as Dovecot's search reads it ---- */

static int
date_zone(const unsigned char *z, size_t len)
{
	if (len == 5 && (*z == '+' || *z == '-')) {
		for (int i = 1; i < 5; i++)
			if (z[i] < '0' || z[i] > '9')
				return 0;
		int off = ((z[1] - '0') * 10 + (z[2] - '0')) * 60 + (z[3] - '0') * 10 + (z[4] - '0');
		return *z == '+' ? off : -off;
	}
	if (len == 1) {
		/* military zones, as Dovecot computes them (from the letter as written) */
		int c = toupper(*z);
		if (c < 'J')
			return (*z - 'A' + 1) * 60;
		if (c == 'J')
			return 0;
		if (c <= 'M')
			return (*z - 'A') * 60;
		if (c < 'Z')
			return ('M' - *z) * 60;
		return 0;
	}
	if (len == 2 && toupper(z[0]) == 'U' && toupper(z[1]) == 'T')
		return 0;
	if (len == 3 && z[2] == 'T') {
		int off;
		switch (toupper(*z)) {
		case 'E': off = -5 * 60; break;
		case 'C': off = -6 * 60; break;
		case 'M': off = -7 * 60; break;
		case 'P': off = -8 * 60; break;
		default: return 0;
		}
		if (toupper(z[1]) == 'D')
			return off + 60;
		if (toupper(z[1]) == 'S')
			return off;
	}
	return 0;
}

/* the next atom: 1 and *tok, 0 at the end, -1 broken */
static int
date_token(struct rp *r, struct str *tok)
{
	str_trunc(tok, 0);
	str_c(tok);
	int ret = r->d >= r->end ? 0 : rp_atom(r, tok);
	return ret < 0 ? -1 : tok->len > 0;
}

static int
all_digits(const char *v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (v[i] < '0' || v[i] > '9')
			return 0;
	return 1;
}

/* [weekday ","] dd month [yy]yy hh:mm[:ss] [zone]; 0 and the time, or -1 */
static int
date_parse(const unsigned char *d, size_t n, time_t *t_r, int *tz_r)
{
	static const char *const months[] = {
		"Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
	};
	struct rp r;
	struct str tok = { 0 };
	struct tm tm;
	int ret = -1, tz = 0;
	const char *v;

	memset(&tm, 0, sizeof(tm));
	rp_init(&r, d, n);
	rp_skip_lwsp(&r);
#define TOK() (date_token(&r, &tok) > 0 ? (v = tok.p, 1) : 0)
	if (!TOK())
		goto out;
	if (tok.len == 3) {
		if (RP_CUR(&r) != ',' || r.d >= r.end)
			goto out;
		r.d++;
		rp_skip_lwsp(&r);
		if (!TOK())
			goto out;
	}
	if (tok.len < 1 || tok.len > 2 || !all_digits(v, tok.len))
		goto out;
	tm.tm_mday = atoi(v);
	if (!TOK() || tok.len < 3)
		goto out;
	for (tm.tm_mon = 0; tm.tm_mon < 12; tm.tm_mon++)
		if (strncasecmp(months[tm.tm_mon], v, 3) == 0)
			break;
	if (tm.tm_mon == 12)
		goto out;
	if (!TOK() || (tok.len != 2 && tok.len != 4) || !all_digits(v, tok.len))
		goto out;
	tm.tm_year = atoi(v);
	if (tok.len == 2) {
		if (tm.tm_year < 70)
			tm.tm_year += 100;
	} else {
		if (tm.tm_year < 1900)
			goto out;
		tm.tm_year -= 1900;
	}
	if (!TOK() || tok.len < 1 || tok.len > 2 || !all_digits(v, tok.len))
		goto out;
	tm.tm_hour = atoi(v);
	if (RP_CUR(&r) != ':' && RP_CUR(&r) != '.')
		goto out;
	if (r.d >= r.end)
		goto out;
	r.d++;
	rp_skip_lwsp(&r);
	if (date_token(&r, &tok) < 0 || tok.len != 2 || !all_digits(tok.p, 2))
		goto out;
	tm.tm_min = atoi(tok.p);
	if (r.d < r.end && (*r.d == ':' || *r.d == '.')) {
		r.d++;
		rp_skip_lwsp(&r);
		if (!TOK() || tok.len != 2 || !all_digits(v, 2))
			goto out;
		tm.tm_sec = atoi(v);
	}
	int z = date_token(&r, &tok);
	if (z < 0)
		goto out;
	if (z > 0)
		tz = date_zone((const unsigned char *)tok.p, tok.len);
#undef TOK
	/* as timegm, but a field out of range is no date (a leap second is :59) */
	if (tm.tm_sec == 60)
		tm.tm_sec = 59;
	struct tm chk = tm;
	time_t t = timegm(&chk);
	if (t == (time_t)-1 || chk.tm_year != tm.tm_year || chk.tm_mon != tm.tm_mon ||
	    chk.tm_mday != tm.tm_mday || chk.tm_hour != tm.tm_hour || chk.tm_min != tm.tm_min ||
	    chk.tm_sec != tm.tm_sec)
		goto out;
	*t_r = t - (time_t)tz * 60;
	*tz_r = tz;
	ret = 0;
out:
	str_free(&tok);
	return ret;
}

int
imap_mime_sent_date(struct imap_mime *m, time_t *t_r, int *tz_minutes_r)
{
	struct hdr_iter it;
	struct hdr h;
	int ret = -1;

	memset(&h, 0, sizeof(h));
	hdr_iter_init(&it, m, m->root, HDR_DATA);
	while (hdr_next(&it, &h) > 0) {
		if (!hdr_is(&h, "Date"))
			continue;
		ret = date_parse((const unsigned char *)h.value.p, h.value.len, t_r, tz_minutes_r);
		break;
	}
	str_free(&h.value);
	return ret;
}

static char *decode_words(const char *v);

/* the addresses as Dovecot writes them to search them */
static void
addr_write(struct str *s, const struct addr *a)
{
	int first = 1, in_group = 0;

	for (; a != NULL; a = a->next) {
		if (first)
			first = 0;
		else
			str_adds(s, ", ");
		if (a->domain == NULL) {
			if (!in_group) {
				if (a->mailbox != NULL && *a->mailbox != '\0')
					str_adds(s, a->mailbox);
				else
					str_adds(s, "\"\"");
				str_adds(s, ": ");
				first = 1;
			} else {
				if (s->len >= 2 && s->p[s->len - 2] == ',' && s->p[s->len - 1] == ' ')
					str_trunc(s, s->len - 2);
				else if (s->len >= 2 && s->p[s->len - 2] == ':' && s->p[s->len - 1] == ' ')
					str_trunc(s, s->len - 1);
				str_addc(s, ';');
			}
			in_group = !in_group;
			continue;
		}
		if (a->name != NULL)
			str_adds(s, a->name);
		if (a->route != NULL || a->mailbox[0] != '\0' || a->domain[0] != '\0') {
			if (a->name != NULL && a->name[0] != '\0')
				str_addc(s, ' ');
			str_addc(s, '<');
			if (a->route != NULL) {
				str_adds(s, a->route);
				str_addc(s, ':');
			}
			str_adds(s, a->mailbox[0] ? a->mailbox : "\"\"");
			if (a->domain[0] != '\0') {
				str_addc(s, '@');
				str_adds(s, a->domain);
			}
			str_addc(s, '>');
		}
	}
}

/* values as Dovecot's search parses headers: folded lines joined without
 * their line ends, one blank after the colon skipped */
int
imap_mime_header_foreach(struct imap_mime *m, const char *name, unsigned flags,
    int (*fn)(void *ctx, const char *name, const char *value), void *ctx)
{
	struct hdr_iter it;
	struct hdr h;
	int ret = 0;

	memset(&h, 0, sizeof(h));
	hdr_iter_init(&it, m, m->root, HDR_ONELINE);
	while (ret == 0 && hdr_next(&it, &h) > 0) {
		if (name != NULL && !hdr_is(&h, name))
			continue;
		struct str v = { 0 };
		if (flags & IMAP_MIME_HDR_ADDRESS) {
			struct pool pl = { 0 };
			struct addr *a = addr_parse(&pl, (const unsigned char *)h.value.p, h.value.len);
			addr_write(&v, a);
			pool_free(&pl);
		} else if (flags & IMAP_MIME_HDR_COMPRESS) {
			int prev = 1;
			for (size_t i = 0; i < h.value.len; i++) {
				char c = h.value.p[i];
				if (IS_LWSP(c)) {
					if (!prev)
						str_addc(&v, ' ');
					prev = 1;
				} else {
					str_addc(&v, c ? c : '\x01');
					prev = 0;
				}
			}
		} else {
			for (size_t i = 0; i < h.value.len; i++)
				str_addc(&v, h.value.p[i] ? h.value.p[i] : '\x01');
		}
		char *dec = decode_words(str_c(&v));
		char *nm = h.name ? xstrndup((const char *)h.name, h.name_len) : xstrdup("");
		ret = fn(ctx, nm, dec);
		free(nm);
		free(dec);
		str_free(&v);
	}
	str_free(&h.value);
	return ret;
}

struct text_out {
	uint64_t left;
	int start;
	int (*fn)(void *ctx, int part_start, const char *data, size_t len);
	void *ctx;
	int stop;
};

static int
text_emit(struct text_out *t, const char *d, size_t n)
{
	if (t->stop || n == 0)
		return t->stop;
	if (n > t->left)
		n = (size_t)t->left;
	t->left -= n;
	if (n > 0 && t->fn(t->ctx, t->start, d, n) != 0)
		t->stop = 1;
	t->start = 0;
	if (t->left == 0)
		t->stop = 1;
	return t->stop;
}

static void
text_headers(struct imap_mime *m, const struct part *p, struct text_out *t)
{
	struct hdr_iter it;
	struct hdr h;

	memset(&h, 0, sizeof(h));
	hdr_iter_init(&it, m, p, HDR_ONELINE);
	while (!t->stop && hdr_next(&it, &h) > 0) {
		struct str line = { 0 };
		if (h.name != NULL) {
			str_add(&line, h.name, h.name_len);
			str_add(&line, h.middle, h.middle_len);
		}
		/* a NUL must not end the value early; it matches nothing */
		for (size_t i = 0; i < h.value.len; i++)
			if (h.value.p[i] == '\0')
				h.value.p[i] = '\x01';
		char *dec = decode_words(str_c(&h.value));
		str_adds(&line, dec);
		free(dec);
		if (!h.no_newline)
			str_adds(&line, "\r\n");
		text_emit(t, line.p, line.len);
		str_free(&line);
	}
	str_free(&h.value);
}

enum cte { CTE_78BIT, CTE_BASE64, CTE_QP, CTE_UNKNOWN };

/* Content-Transfer-Encoding as the search decoder reads it: one token, an
 * optional ';'; anything else (or an empty value) is unknown, not searched */
static enum cte
cte_parse(const struct hdr *h)
{
	struct rp r;
	struct str v = { 0 };
	enum cte c = CTE_UNKNOWN;

	rp_init(&r, (const unsigned char *)h->value.p, h->value.len);
	rp_skip_lwsp(&r);
	if (rp_mime_token(&r, &v) == 1) {
		rp_skip_lwsp(&r);
		if (RP_CUR(&r) != ';') {
			str_free(&v);
			return CTE_UNKNOWN;
		}
	}
	const char *t = str_c(&v);
	if (strcasecmp(t, "7bit") == 0 || strcasecmp(t, "8bit") == 0 || strcasecmp(t, "binary") == 0)
		c = CTE_78BIT;
	else if (strcasecmp(t, "base64") == 0)
		c = CTE_BASE64;
	else if (strcasecmp(t, "quoted-printable") == 0)
		c = CTE_QP;
	str_free(&v);
	return c;
}

/* base64 as the search decoder takes it: whitespace skipped, the first
 * invalid character (or the end after padding) ends the part's text */
struct b64 {
	unsigned acc, n;
	int done;
};

static size_t
b64_decode(struct b64 *b, const unsigned char *in, size_t n, unsigned char *out)
{
	size_t o = 0;

	for (size_t i = 0; i < n && !b->done; i++) {
		unsigned char c = in[i];
		int v;
		if (c >= 'A' && c <= 'Z')
			v = c - 'A';
		else if (c >= 'a' && c <= 'z')
			v = c - 'a' + 26;
		else if (c >= '0' && c <= '9')
			v = c - '0' + 52;
		else if (c == '+')
			v = 62;
		else if (c == '/')
			v = 63;
		else if (c == ' ' || c == '\t' || c == '\r' || c == '\n')
			continue;
		else {
			b->done = 1;	/* '=' or garbage: the rest is ignored */
			break;
		}
		b->acc = (b->acc << 6) | (unsigned)v;
		if (++b->n == 4) {
			out[o++] = (unsigned char)(b->acc >> 16);
			out[o++] = (unsigned char)(b->acc >> 8);
			out[o++] = (unsigned char)b->acc;
			b->n = 0;
			b->acc = 0;
		}
	}
	if (b->done && b->n > 1) {
		/* the octets of a padded last group */
		unsigned acc = b->acc << (6 * (4 - b->n));
		out[o++] = (unsigned char)(acc >> 16);
		if (b->n == 3)
			out[o++] = (unsigned char)(acc >> 8);
		b->n = 0;
	}
	return o;
}

/* ---- encoded words (RFC 2047) as Dovecot's search decodes them ---- */

static void
utf8_append_valid(struct str *out, const char *d, size_t n)
{
	if (g_utf8_validate(d, (gssize)n, NULL)) {
		str_add(out, d, n);
		return;
	}
	char *v = g_utf8_make_valid(d, (gssize)n);
	str_adds(out, v);
	g_free(v);
}

static int
charset_is_utf8(const char *cs)
{
	return strcasecmp(cs, "us-ascii") == 0 || strcasecmp(cs, "ascii") == 0 ||
	    strcasecmp(cs, "utf-8") == 0 || strcasecmp(cs, "utf8") == 0;
}

/* D (N octets) from CS to UTF-8: bad octets become U+FFFD; an unknown
 * charset leaves the text as it is (made valid) */
static void
charset_append(struct str *out, const char *cs, const char *d, size_t n)
{
	if (charset_is_utf8(cs)) {
		utf8_append_valid(out, d, n);
		return;
	}
	iconv_t cd = iconv_open("UTF-8", cs);
	if (cd == (iconv_t)-1) {
		utf8_append_valid(out, d, n);
		return;
	}
	char buf[1024];
	char *in = (char *)d;
	size_t left = n;
	while (left > 0) {
		char *o = buf;
		size_t room = sizeof(buf);
		size_t r = iconv(cd, &in, &left, &o, &room);
		str_add(out, buf, o - buf);
		if (r == (size_t)-1) {
			if (errno == E2BIG)
				continue;
			if (errno == EILSEQ) {
				str_adds(out, REPL_CHAR);
				in++;
				left--;
				continue;
			}
			break;	/* EINVAL: cut short at the end */
		}
	}
	iconv_close(cd);
}

/* "charset?e?text?=" at D: 0 if it is no encoded word, else its length,
 * and the decoded octets into *dec (charset first, then a NUL) */
static size_t
word_decode(const unsigned char *d, size_t n, struct str *dec, size_t *cslen_r)
{
	size_t q[3], nq = 0, i;

	for (i = 0; i < n; i++) {
		if (d[i] == '?') {
			q[nq++] = i;
			if (nq == 3)
				break;
		}
	}
	if (nq < 3 || i + 1 >= n || d[i + 1] != '=')
		return 0;
	str_add(dec, d, q[0]);
	str_addc(dec, '\0');
	*cslen_r = dec->len;
	const unsigned char *t = d + q[1] + 1;
	size_t tl = q[2] - q[1] - 1;
	switch (d[q[0] + 1]) {
	case 'q':
	case 'Q': {
		size_t next = 0, k;
		for (k = 0; k < tl; k++) {
			if (t[k] != '_' && t[k] != '=')
				continue;
			str_add(dec, t + next, k - next);
			next = k;
			if (t[k] == '_') {
				str_addc(dec, ' ');
				next++;
				continue;
			}
			if (k + 2 >= tl)
				break;
			if (isxdigit(t[k + 1]) && isxdigit(t[k + 2])) {
				char hex[3] = { (char)t[k + 1], (char)t[k + 2], 0 };
				str_addc(dec, (char)strtol(hex, NULL, 16));
				k += 2;
				next = k + 1;
			} else {
				next = k;	/* not hex: as it is */
			}
		}
		str_add(dec, t + next, tl - next);
		break;
	}
	case 'b':
	case 'B': {
		struct b64 b = { 0, 0, 0 };
		str_grow(dec, tl);
		dec->len += b64_decode(&b, t, tl, (unsigned char *)dec->p + dec->len);
		dec->p[dec->len] = '\0';
		break;
	}
	default:
		return 0;
	}
	return q[2] + 2;
}

/* V's encoded words decoded (blanks between them dropped), the rest taken
 * as UTF-8; all made valid UTF-8 */
static char *
decode_words(const char *v)
{
	const unsigned char *d = (const unsigned char *)v;
	size_t n = strlen(v), start = 0, pos = 0;
	struct str out = { 0 }, dec = { 0 };

	while (pos + 1 < n) {
		if (d[pos] != '=' || d[pos + 1] != '?') {
			pos++;
			continue;
		}
		int blank = 1;
		for (size_t k = start; k < pos; k++)
			if (d[k] != ' ' && d[k] != '\t' && d[k] != '\r' && d[k] != '\n')
				blank = 0;
		if (!blank)
			utf8_append_valid(&out, v + start, pos - start);
		pos += 2;
		size_t cslen = 0;
		str_trunc(&dec, 0);
		size_t len = word_decode(d + pos, n - pos, &dec, &cslen);
		if (len == 0) {
			start = pos - 2;
			continue;
		}
		pos += len;
		if (dec.len > cslen)
			charset_append(&out, dec.p, dec.p + cslen, dec.len - cslen);
		start = pos;
	}
	if (start < n)
		utf8_append_valid(&out, v + start, n - start);
	str_free(&dec);
	char *r = xstrdup(str_c(&out));
	str_free(&out);
	return r;
}

/* quoted-printable as the search decoder reads it: line ends become CRLF,
 * trailing blanks go, soft breaks join, lower-case hex is taken, a bad '='
 * sequence stays as it is */
enum qp_state { QP_TEXT, QP_WS, QP_EQ, QP_EQ_WS, QP_HEX2, QP_CR, QP_SOFTCR };

struct qp {
	enum qp_state st;
	char ws[80];
	size_t nws;
	char hex;
};

#define QP_WS_MAX 76

static int
qp_hexval(unsigned char c)
{
	return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 :
	    c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

static void
qp_ws_add(struct qp *q, char c)
{
	if (q->nws <= QP_WS_MAX && q->nws < sizeof(q->ws))
		q->ws[q->nws++] = c;
}

/* a sequence that turned out invalid: out as it came */
static void
qp_invalid(struct qp *q, struct str *out)
{
	switch (q->st) {
	case QP_EQ:
		str_addc(out, '=');
		break;
	case QP_HEX2:
		str_addc(out, '=');
		str_addc(out, q->hex);
		break;
	case QP_EQ_WS:
		str_addc(out, '=');
		str_add(out, q->ws, q->nws);
		break;
	case QP_CR:
		str_add(out, q->ws, q->nws);
		str_addc(out, '\r');
		break;
	case QP_SOFTCR:
		str_addc(out, '=');
		str_add(out, q->ws, q->nws);
		str_addc(out, '\r');
		break;
	default:
		break;
	}
	q->nws = 0;
	q->st = QP_TEXT;
}

static void
qp_feed(struct qp *q, const unsigned char *in, size_t n, struct str *out)
{
	for (size_t i = 0; i < n;) {
		unsigned char c = in[i];
		switch (q->st) {
		case QP_TEXT:
			if (c == '=')
				q->st = QP_EQ;
			else if (c == '\r')
				q->st = QP_CR;
			else if (c == '\n')
				str_add(out, "\r\n", 2);
			else if (c == ' ' || c == '\t') {
				q->st = QP_WS;
				qp_ws_add(q, (char)c);
			} else
				str_addc(out, (char)c);
			break;
		case QP_WS:
			if (c == ' ' || c == '\t')
				qp_ws_add(q, (char)c);
			else if (c == '\r')
				q->st = QP_CR;
			else if (c == '\n') {
				str_add(out, "\r\n", 2);	/* trailing blanks dropped */
				q->nws = 0;
				q->st = QP_TEXT;
			} else {
				str_add(out, q->ws, q->nws);
				q->nws = 0;
				q->st = QP_TEXT;
				continue;	/* this octet again, as text */
			}
			break;
		case QP_EQ:
			if (qp_hexval(c) >= 0) {
				q->hex = (char)c;
				q->st = QP_HEX2;
			} else if (c == ' ' || c == '\t') {
				qp_ws_add(q, (char)c);
				q->st = QP_EQ_WS;
			} else if (c == '\r')
				q->st = QP_SOFTCR;
			else if (c == '\n')
				q->st = QP_TEXT;
			else {
				qp_invalid(q, out);
				continue;
			}
			break;
		case QP_HEX2:
			if (qp_hexval(c) >= 0) {
				str_addc(out, (char)(qp_hexval((unsigned char)q->hex) * 16 + qp_hexval(c)));
				q->st = QP_TEXT;
			} else {
				qp_invalid(q, out);
				continue;
			}
			break;
		case QP_EQ_WS:
			if (c == ' ' || c == '\t')
				qp_ws_add(q, (char)c);
			else if (c == '\r')
				q->st = QP_SOFTCR;
			else if (c == '\n') {
				q->nws = 0;
				q->st = QP_TEXT;
			} else {
				qp_invalid(q, out);
				continue;
			}
			break;
		case QP_CR:
		case QP_SOFTCR:
			if (c == '\n') {
				q->nws = 0;
				if (q->st != QP_SOFTCR)
					str_add(out, "\r\n", 2);
				q->st = QP_TEXT;
			} else {
				qp_invalid(q, out);
				continue;
			}
			break;
		}
		i++;
	}
}

/* the body of a leaf part, decoded to UTF-8 */
static void
text_body(struct imap_mime *m, const struct part *p, enum cte cte, const char *charset,
    struct text_out *t)
{
	uint64_t a = p->pos + p->hdr.phys, b = a + p->body.phys;
	GMimeFilter *cs = NULL;
	struct b64 b64 = { 0, 0, 0 };
	struct qp qp;
	struct str qpout = { 0 };

	gmime_init_once();
	memset(&qp, 0, sizeof(qp));
	if (charset != NULL && *charset != '\0' && strcasecmp(charset, "utf-8") != 0 &&
	    strcasecmp(charset, "us-ascii") != 0 && strcasecmp(charset, "utf8") != 0)
		cs = g_mime_filter_charset_new(charset, "UTF-8");
	char *buf = xmalloc(65536 + 64);
	for (uint64_t pos = a; pos <= b && !t->stop;) {
		size_t n = b - pos > 65536 ? 65536 : (size_t)(b - pos);
		int last = pos + n >= b;
		char *out = buf + 64;
		size_t outlen = n, pre = 64;
		if (cte == CTE_BASE64)
			outlen = b64_decode(&b64, m->d + pos, n, (unsigned char *)out);
		else
			memcpy(out, m->d + pos, n);
		pos += n;
		if (cte == CTE_QP) {
			str_trunc(&qpout, 0);
			qp_feed(&qp, (const unsigned char *)out, outlen, &qpout);
			str_grow(&qpout, 64);
			/* the charset filter may want room before the data */
			memmove(qpout.p + 64, qpout.p, qpout.len);
			out = qpout.p + 64;
			outlen = qpout.len;
			pre = 64;
		}
		if (cs != NULL) {
			if (last)
				g_mime_filter_complete(cs, out, outlen, pre, &out, &outlen, &pre);
			else
				g_mime_filter_filter(cs, out, outlen, pre, &out, &outlen, &pre);
		}
		text_emit(t, out, outlen);
		if (last)
			break;
	}
	free(buf);
	str_free(&qpout);
	if (cs != NULL)
		g_object_unref(cs);
}

int
imap_mime_text_foreach(struct imap_mime *m, int with_headers, uint64_t max,
    int (*fn)(void *ctx, int part_start, const char *data, size_t len), void *ctx)
{
	struct text_out t = { max, 1, fn, ctx, 0 };
	struct part *p = m->root;

	if (max == 0)
		return 0;
	/* pre-order: file order */
	while (p != NULL && !t.stop) {
		t.start = 1;
		if (with_headers)
			text_headers(m, p, &t);
		if (!(p->flags & PF_MULTIPART) && p->children == NULL && !t.stop) {
			/* a leaf; never a multipart's own text, even without parts
			   (Dovecot searches that only when the structure happens to
			   be in its cache). As Dovecot's search decoder: the last
			   Content-Type says
			   whether it is text, the first gives the charset, the last
			   Content-Transfer-Encoding the decoding (MIME or not) */
			int textual = 1, first_ct = 1;
			enum cte cte = CTE_78BIT;
			char *charset = NULL;
			struct hdr_iter it;
			struct hdr h;
			memset(&h, 0, sizeof(h));
			hdr_iter_init(&it, m, p, HDR_DATA);
			while (hdr_next(&it, &h) > 0) {
				if (hdr_is(&h, "Content-Transfer-Encoding")) {
					cte = cte_parse(&h);
					continue;
				}
				if (!hdr_is(&h, "Content-Type"))
					continue;
				struct rp r;
				struct str ct = { 0 };
				rp_init(&r, (const unsigned char *)h.value.p, h.value.len);
				rp_skip_lwsp(&r);
				int ret = rp_content_type(&r, &ct);
				const char *c = str_c(&ct);
				textual = strncasecmp(c, "text/", 5) == 0 || strncasecmp(c, "message/", 8) == 0;
				if (first_ct && ret >= 0) {
					struct pool pl = { 0 };
					struct param *pp;
					size_t np;
					params_parse(&r, &pl, &pp, &np);
					for (size_t i = 0; i < np; i++) {
						if (strcasecmp(pp[i].name, "charset") == 0) {
							charset = xstrdup(pp[i].value);
							break;
						}
					}
					pool_free(&pl);
				}
				first_ct = 0;
				str_free(&ct);
			}
			str_free(&h.value);
			if (textual && cte != CTE_UNKNOWN)
				text_body(m, p, cte, charset, &t);
			free(charset);
		}
		if (p->children != NULL) {
			p = p->children;
			continue;
		}
		while (p != NULL && p->next == NULL)
			p = p->parent;
		if (p != NULL)
			p = p->next;
	}
	return t.stop && t.left > 0 ? 1 : 0;
}
