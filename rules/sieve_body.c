/*
 * sieve_body.c - the body test (RFC 5173): the raw body, or the MIME parts
 * whose Content-Type matches (:content, :text = "text"), decoded from
 * base64 / quoted-printable. MIME nesting is capped at MAX_MIME_DEPTH.
 *
 *   sv_body_values()      the strings the body test matches its keys against
 *   sv_body_cache_free()  drop what the run's body tests shared
 *
 * The MIME structure is walked and every part decoded once per evaluation
 * (the first body test builds it, on the run); each body test then picks the
 * parts its content types name. Freed when the run ends or its message
 * changes (sieve_run_set_msg).
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "rules/sieve_eval.h"
#include "common/hdrparse.h"
#include "common/xmalloc.h"

#define MAX_MIME_DEPTH 10

struct part_hdr { char *ctype; char *boundary; char *cte; };

/* what one entity gives a body test, in the order of the message */
enum part_kind {
	PK_LEAF,	/* a part's decoded content */
	PK_PRE,		/* a multipart's text before its first boundary */
	PK_EPI,		/* ... after its closing boundary */
	PK_NESTED,	/* a message/rfc822's header (RFC 5173 5.2) */
};
struct body_part {
	enum part_kind kind;
	char *ctype;	/* the entity's type/subtype (lower case) */
	char *value;
	char *text;	/* PK_LEAF HTML: the text without markup, made when asked */
};
struct sv_body_cache {
	const struct sieve_msg *msg;
	char *raw;	/* :raw */
	struct body_part *p;
	size_t n;
};

static void add_part(struct sv_body_cache *c, enum part_kind k, const char *ctype, char *value)
{
	c->p = xreallocarray(c->p, c->n + 1, sizeof(*c->p));
	c->p[c->n].kind = k;
	c->p[c->n].ctype = xstrdup(ctype);
	c->p[c->n].value = value;
	c->p[c->n].text = NULL;
	c->n++;
}

static int on_field(void *arg, const struct hdr_field *f)
{
	struct part_hdr *h = arg;
	if (f->name_len == 12 && strncasecmp(f->name, "content-type", 12) == 0 && !h->ctype) {
		char *v = xstrndup(f->value, f->value_len);
		size_t l = strcspn(v, ";");
		h->ctype = xstrndup(v, l);
		char *p = h->ctype;
		while (*p == ' ') p++;
		memmove(h->ctype, p, strlen(p) + 1);
		for (char *q = h->ctype; *q; q++) *q = (char)tolower((unsigned char)*q);
		size_t e = strlen(h->ctype);
		while (e > 0 && isspace((unsigned char)h->ctype[e - 1])) h->ctype[--e] = '\0';
		char *b = strcasestr(v, "boundary=");
		if (b) {
			b += 9;
			if (*b == '"') {
				b++;
				h->boundary = xstrndup(b, strcspn(b, "\""));
			} else {
				h->boundary = xstrndup(b, strcspn(b, "; \t\r\n"));
			}
		}
		free(v);
	} else if (f->name_len == 25 && strncasecmp(f->name, "content-transfer-encoding", 25) == 0) {
		free(h->cte);
		h->cte = xstrndup(f->value, f->value_len);
	}
	return 0;
}

static int b64(int c)
{
	if (c >= 'A' && c <= 'Z') return c - 'A';
	if (c >= 'a' && c <= 'z') return c - 'a' + 26;
	if (c >= '0' && c <= '9') return c - '0' + 52;
	if (c == '+') return 62;
	if (c == '/') return 63;
	return -1;
}

static int hx(int c)
{
	if (c >= '0' && c <= '9') return c - '0';
	c = tolower(c);
	return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

static char *decode(const char *cte, const char *s, size_t len)
{
	char *o = xmalloc(len + 1), *w = o;
	if (cte && strncasecmp(cte, "base64", 6) == 0) {
		unsigned acc = 0;
		int bits = 0;
		for (size_t i = 0; i < len; i++) {
			int v = b64((unsigned char)s[i]);
			if (v < 0) continue;
			acc = (acc << 6) | (unsigned)v;
			bits += 6;
			if (bits >= 8) {
				bits -= 8;
				*w++ = (char)((acc >> bits) & 0xff);
			}
		}
	} else if (cte && strncasecmp(cte, "quoted-printable", 16) == 0) {
		for (size_t i = 0; i < len; i++) {
			if (s[i] == '=' && i + 1 < len && (s[i + 1] == '\n' || s[i + 1] == '\r')) {
				i++;
				if (s[i] == '\r' && i + 1 < len && s[i + 1] == '\n')
					i++;
			} else if (s[i] == '=' && i + 2 < len && hx((unsigned char)s[i + 1]) >= 0 &&
			    hx((unsigned char)s[i + 2]) >= 0) {
				*w++ = (char)(hx((unsigned char)s[i + 1]) * 16 + hx((unsigned char)s[i + 2]));
				i += 2;
			} else {
				*w++ = s[i];
			}
		}
	} else {
		memcpy(o, s, len);
		w = o + len;
	}
	*w = '\0';
	return o;
}

/* :text of an HTML part: the text without the markup */
static char *html_text(char *h)
{
	char *o = h, *w = h;
	int in_tag = 0;
	for (const char *p = h; *p; p++) {
		if (in_tag) {
			if (*p == '>')
				in_tag = 0;
			continue;
		}
		if (*p == '<') {
			in_tag = 1;
			continue;
		}
		if (*p == '&') {
			static const struct { const char *e; char c; } ents[] = {
				{ "&amp;", '&' }, { "&lt;", '<' }, { "&gt;", '>' }, { "&quot;", '"' },
				{ "&nbsp;", ' ' }, { "&#39;", '\'' },
			};
			size_t k;
			for (k = 0; k < sizeof(ents) / sizeof(ents[0]); k++)
				if (!strncasecmp(p, ents[k].e, strlen(ents[k].e)))
					break;
			if (k < sizeof(ents) / sizeof(ents[0])) {
				*w++ = ents[k].c;
				p += strlen(ents[k].e) - 1;
				continue;
			}
		}
		*w++ = *p;
	}
	*w = '\0';
	return o;
}

static int type_matches(const char *ctype, char **types, size_t nt)
{
	for (size_t i = 0; i < nt; i++) {
		const char *t = types[i];
		if (t[0] == '\0')
			return 1;
		size_t l = strlen(t);
		const char *sl = strchr(t, '/');
		if (sl && (sl == t || sl[1] == '\0' || strchr(sl + 1, '/')))
			continue;	/* "/x", "x/", "x/y/z" name no type */
		if (sl) {
			if (strcasecmp(ctype, t) == 0)
				return 1;
		} else if (strncasecmp(ctype, t, l) == 0 && ctype[l] == '/') {
			return 1;
		}
	}
	return 0;
}

/* one entity: headers at s (or none when headless), its body; every part
 * it holds recorded in c */
static void walk(const char *s, size_t len, int headless, int depth, struct sv_body_cache *c)
{
	struct part_hdr h = { 0 };
	size_t off = 0;
	if (!headless) {
		struct hdrparse *hp = hdrparse_new(on_field, &h);
		int stop;
		(void)hdrparse_feed(hp, s, len, &stop);
		if (!hdrparse_done(hp))
			(void)hdrparse_finish(hp, &stop);
		off = hdrparse_done(hp) ? (size_t)hdrparse_body_offset(hp) : len;
		if (off > len)
			off = len;
		hdrparse_free(&hp);
	} else {
		h.ctype = NULL;
	}
	const char *ctype = h.ctype ? h.ctype : "text/plain";
	{
		const char *sl = strchr(ctype, '/');
		if (!sl || sl == ctype || !sl[1] || strchr(sl + 1, '/') || strchr(ctype, ' '))
			ctype = "application/octet-stream";	/* not a type/subtype */
	}
	const char *body = s + off;
	size_t blen = len - off;
	if (strncmp(ctype, "multipart/", 10) == 0 && h.boundary && depth < MAX_MIME_DEPTH) {
		size_t bl = strlen(h.boundary);
		const char *p = body, *end = body + blen, *part = NULL;
		int first = 1;
		while (p < end) {
			const char *eol = memchr(p, '\n', (size_t)(end - p));
			const char *next = eol ? eol + 1 : end;
			if (end - p >= (long)(bl + 2) && p[0] == '-' && p[1] == '-' &&
			    memcmp(p + 2, h.boundary, bl) == 0) {
				if (first) {
					const char *pe = p;
					if (pe > body && pe[-1] == '\n') pe--;
					if (pe > body && pe[-1] == '\r') pe--;
					add_part(c, PK_PRE, ctype, xstrndup(body, (size_t)(pe - body)));
				}
				first = 0;
				if (part) {
					const char *pe = p;
					if (pe > part && pe[-1] == '\n') pe--;
					if (pe > part && pe[-1] == '\r') pe--;
					walk(part, (size_t)(pe - part), 0, depth + 1, c);
				}
				if (p + bl + 4 <= end && p[bl + 2] == '-' && p[bl + 3] == '-') {
					add_part(c, PK_EPI, ctype, xstrndup(next, (size_t)(end - next)));
					break;
				}
				part = next;
			}
			p = next;
		}
	} else if (strcmp(ctype, "message/rfc822") == 0 && depth < MAX_MIME_DEPTH) {
		/* RFC 5173 5.2: only the nested message's header, as one string */
		size_t hl = blen;
		for (size_t i = 0; i + 1 < blen; i++) {
			if (body[i] == '\n' && (body[i + 1] == '\n' ||
			    (body[i + 1] == '\r' && i + 2 < blen && body[i + 2] == '\n'))) {
				hl = i + 1;
				break;
			}
		}
		add_part(c, PK_NESTED, ctype, xstrndup(body, hl));
		walk(body, blen, 0, depth + 1, c);
	} else if (h.cte && strncasecmp(h.cte, "7bit", 4) && strncasecmp(h.cte, "8bit", 4) &&
	    strncasecmp(h.cte, "binary", 6) && strncasecmp(h.cte, "base64", 6) &&
	    strncasecmp(h.cte, "quoted-printable", 16)) {
		/* an unknown transfer encoding: the content cannot be read */
	} else {
		add_part(c, PK_LEAF, ctype, decode(h.cte, body, blen));
	}
	free(h.ctype);
	free(h.boundary);
	free(h.cte);
}

void sv_body_cache_free(struct sieve_run *run)
{
	struct sv_body_cache *c = run->body;
	if (c == NULL)
		return;
	run->body = NULL;
	for (size_t i = 0; i < c->n; i++) {
		free(c->p[i].ctype);
		free(c->p[i].value);
		free(c->p[i].text);
	}
	free(c->p);
	free(c->raw);
	free(c);
}

/* the message's parts, walked and decoded once per run */
static struct sv_body_cache *body_cache(struct sieve_run *run)
{
	const struct sieve_msg *m = run->msg;
	if (run->body != NULL && run->body->msg == m)
		return run->body;
	sv_body_cache_free(run);
	struct sv_body_cache *c = xcalloc(1, sizeof(*c));
	c->msg = m;
	c->raw = xstrndup(m->body, m->body_len);
	/* the top-level entity: rebuilt from the parsed header fields */
	const char *ct = NULL, *cte = NULL;
	for (size_t i = 0; i < m->nhdr; i++) {
		if (!ct && !strcasecmp(m->hdr[i].name, "content-type"))
			ct = m->hdr[i].value;
		if (!cte && !strcasecmp(m->hdr[i].name, "content-transfer-encoding"))
			cte = m->hdr[i].value;
	}
	char *top = xasprintf("%s%s%s%s%s%s\r\n", ct ? "Content-Type: " : "", ct ? ct : "",
	    ct ? "\r\n" : "", cte ? "Content-Transfer-Encoding: " : "", cte ? cte : "",
	    cte ? "\r\n" : "");
	size_t tl = strlen(top);
	char *whole = xmalloc(tl + m->body_len + 1);
	memcpy(whole, top, tl);
	memcpy(whole + tl, m->body, m->body_len);
	whole[tl + m->body_len] = '\0';
	walk(whole, tl + m->body_len, 0, 0, c);
	free(whole);
	free(top);
	run->body = c;
	return c;
}

int sv_body_values(struct sieve_run *run, const struct sieve_node *n, char ***vals_r, size_t *n_r)
{
	const struct sieve_msg *m = run->msg;
	*vals_r = NULL;
	*n_r = 0;
	if (m == NULL || m->body == NULL)
		return 0;
	struct sv_body_cache *c = body_cache(run);
	run->steps += m->body_len / 64;
	if (n->tagset[0]) {	/* :raw */
		*vals_r = xcalloc(1, sizeof(char *));
		(*vals_r)[0] = c->raw;
		*n_r = 1;
		return 0;
	}
	char **types;
	size_t nt;
	char *text[1] = { (char *)"text" };
	int text_mode = !n->tagset[1];
	if (n->tagset[1]) {
		size_t k;
		types = xcalloc(n->tagv[1]->n + 1, sizeof(char *));
		for (k = 0; k < n->tagv[1]->n; k++)
			types[k] = sv_expand(run, n->tagv[1]->v[k].s);
		nt = k;
	} else {
		types = text;
		nt = 1;
	}
	char **v = xcalloc(c->n + 1, sizeof(char *));
	size_t nv = 0;
	for (size_t i = 0; i < c->n; i++) {
		struct body_part *p = &c->p[i];
		int html = strcmp(p->ctype, "text/html") == 0 ||
		    strcmp(p->ctype, "application/xhtml+xml") == 0;
		if (p->kind != PK_LEAF) {
			if (type_matches(p->ctype, types, nt))
				v[nv++] = p->value;
		} else if (type_matches(p->ctype, types, nt) ||
		    (text_mode && strcmp(p->ctype, "application/xhtml+xml") == 0)) {
			if (text_mode && html) {
				if (p->text == NULL)
					p->text = html_text(xstrdup(p->value));
				v[nv++] = p->text;
			} else {
				v[nv++] = p->value;
			}
		}
	}
	if (types != text)
		sieve_strv_free(types, nt);
	*vals_r = v;
	*n_r = nv;
	return 0;
}
