/*
 * listentry - kill/accept list entries: what an admin types, what a list
 * file holds.
 *
 *   listentry_parse_key()    "192.0.2.0/24", "2001:db8::1", "host:mx.example.com",
 *                            "host:.example.com", "user@example.com", "@example.com",
 *                            "country:fr" -> canonical key (lower case; CIDR in
 *                            canonical form; a country's two letters upper case)
 *   listentry_parse_line()   a list-file line (key + key=value attributes)
 *   listentry_parse_buf()    the same from bytes and a length: a NUL byte
 *                            rejects the line instead of cutting it short
 *   listentry_format_line()  the reverse
 *
 * Input is hostile (hand-edited files, CLI arguments, later Redis): every
 * field has a cap and a clear error; nothing is accepted truncated.
 */
#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/hash.h"
#include "common/pclimits.h"
#include "common/xmalloc.h"
#include "storage-adapter/listentry.h"

const char *
list_kind_name(enum list_kind k)
{
	return k == LIST_KILL ? "kill" : "accept";
}

int
list_kind_parse(const char *s, enum list_kind *k_r)
{
	if (strcmp(s, "kill") == 0)
		*k_r = LIST_KILL;
	else if (strcmp(s, "accept") == 0)
		*k_r = LIST_ACCEPT;
	else
		return -1;
	return 0;
}

const char *
listentry_origin_name(enum entry_origin o)
{
	switch (o) {
	case ORIGIN_AUTOBAN: return "auto-ban";
	case ORIGIN_IMPORT: return "import";
	case ORIGIN_AUTHBAN: return "auth-ban";
	default: return "admin";
	}
}

int
listentry_origin_parse(const char *s, enum entry_origin *o_r)
{
	if (strcmp(s, "admin") == 0)
		*o_r = ORIGIN_ADMIN;
	else if (strcmp(s, "auto-ban") == 0)
		*o_r = ORIGIN_AUTOBAN;
	else if (strcmp(s, "import") == 0)
		*o_r = ORIGIN_IMPORT;
	else if (strcmp(s, "auth-ban") == 0)
		*o_r = ORIGIN_AUTHBAN;
	else
		return -1;
	return 0;
}

/* a DNS name: letters, digits, '-', '_', dots between non-empty labels */
static int
hostname_is_valid(const char *s, size_t n)
{
	size_t label = 0;

	if (n == 0 || n > MAX_HOSTNAME_LEN)
		return 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c == '.') {
			if (label == 0)
				return 0;
			label = 0;
		} else if (isalnum(c) || c == '-' || c == '_') {
			if (++label > 63)
				return 0;
		} else {
			return 0;
		}
	}
	return label > 0;
}

static char *
lower_dup(const char *s, size_t n)
{
	char *p = xstrndup(s, n);

	for (char *q = p; *q; q++)
		*q = (char)tolower((unsigned char)*q);
	return p;
}

int
listentry_parse_key(const char *text, struct list_entry *e, const char **error_r)
{
	size_t n = strlen(text);
	const char *at;

	memset(e, 0, sizeof(*e));
	if (n == 0) {
		*error_r = "empty entry";
		return -1;
	}
	if (n > MAX_ENTRY_LEN) {
		*error_r = "entry too long";
		return -1;
	}
	if (strncasecmp(text, "country:", 8) == 0) {
		const char *cc = text + 8;

		/* ISO 3166-1 alpha-2, as GeoIP databases write it */
		if (n != 10 || !isalpha((unsigned char)cc[0]) || !isalpha((unsigned char)cc[1]) ||
		    (unsigned char)cc[0] >= 0x80 || (unsigned char)cc[1] >= 0x80) {
			*error_r = "country: needs a two-letter country code (ISO 3166-1), e.g. country:FR";
			return -1;
		}
		e->kind = ENTRY_COUNTRY;
		e->key = xasprintf("country:%c%c", toupper((unsigned char)cc[0]),
		    toupper((unsigned char)cc[1]));
		return 0;
	}
	if (strncasecmp(text, "host:", 5) == 0) {
		const char *h = text + 5;
		size_t hl = n - 5;
		int suffix = 0;

		if (hl > 0 && h[0] == '.') {
			suffix = 1;
			h++;
			hl--;
		}
		if (hl > 0 && h[hl - 1] == '.')
			hl--;
		if (!hostname_is_valid(h, hl)) {
			*error_r = "host: needs a host name (letters, digits, '-', dots), e.g. host:mx.example.com or host:.example.com";
			return -1;
		}
		char *name = lower_dup(h, hl);

		e->kind = suffix ? ENTRY_HOST_SUFFIX : ENTRY_HOST;
		e->key = xasprintf("host:%s%s", suffix ? "." : "", name);
		free(name);
		return 0;
	}
	if ((at = strrchr(text, '@')) != NULL) {
		const char *dom = at + 1;
		size_t dl = strlen(dom);

		if (dl > 0 && dom[dl - 1] == '.')
			dl--;
		if (!hostname_is_valid(dom, dl)) {
			*error_r = "the part after '@' is not a domain name";
			return -1;
		}
		if (at == text) {
			e->kind = ENTRY_SENDER_DOMAIN;
			char *d = lower_dup(dom, dl);

			e->key = xasprintf("@%s", d);
			free(d);
			return 0;
		}
		for (const char *p = text; p < at; p++) {
			unsigned char c = (unsigned char)*p;

			if (c <= 0x20 || c >= 0x7f || c == '<' || c == '>' || c == '"' ||
			    c == '@' || c == '\\') {
				*error_r = "the local part of a sender entry must be plain (no spaces, quotes, <, > or @)";
				return -1;
			}
		}
		char *l = lower_dup(text, (size_t)(at - text));
		char *d = lower_dup(dom, dl);

		e->kind = ENTRY_SENDER;
		e->key = xasprintf("%s@%s", l, d);
		free(l);
		free(d);
		return 0;
	}
	{
		char buf[CIDR_TEXT_MAX];
		const char *err;

		if (cidr_parse(text, &e->cidr, &err) < 0) {
			if (strpbrk(text, ".:/") == NULL || strspn(text, "0123456789abcdefABCDEF.:/[]") != n)
				*error_r = "not an IP address, CIDR, host:NAME, user@domain, @domain or country:XX";
			else
				*error_r = err;
			return -1;
		}
		e->kind = ENTRY_ADDR;
		e->key = xstrdup(cidr_format(&e->cidr, buf));
	}
	return 0;
}

int
listentry_reason_is_valid(const char *reason)
{
	size_t n = strlen(reason);

	if (n > MAX_REASON_LEN)
		return 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)reason[i];

		if (c < 0x20 || c == 0x7f)
			return 0;
	}
	return 1;
}

static int
parse_time_attr(const char *v, size_t n, long long *t_r)
{
	char buf[24];
	char *end;
	long long t;

	if (n == 0 || n >= sizeof(buf))
		return -1;
	memcpy(buf, v, n);
	buf[n] = '\0';
	if (!isdigit((unsigned char)buf[0]))
		return -1;
	errno = 0;
	t = strtoll(buf, &end, 10);
	if (*end != '\0' || errno != 0 || t < 0 || t > 32503680000LL)	/* year 3000 */
		return -1;
	*t_r = t;
	return 0;
}

int
listentry_parse_line(const char *line, struct list_entry *e, const char **error_r)
{
	const char *p = line, *tok;
	size_t tl;
	char key[MAX_ENTRY_LEN + 1];

	if (strlen(line) > MAX_LIST_LINE) {
		*error_r = "line too long";
		return -1;
	}
	while (*p == ' ' || *p == '\t')
		p++;
	tl = strcspn(p, " \t");
	if (tl == 0) {
		*error_r = "empty line";
		return -1;
	}
	if (tl > MAX_ENTRY_LEN) {
		*error_r = "entry too long";
		return -1;
	}
	memcpy(key, p, tl);
	key[tl] = '\0';
	if (listentry_parse_key(key, e, error_r) < 0)
		return -1;
	p += tl;
	for (;;) {
		const char *eq;

		while (*p == ' ' || *p == '\t')
			p++;
		if (*p == '\0')
			break;
		tok = p;
		tl = strcspn(p, " \t");
		eq = memchr(tok, '=', tl);
		if (eq == NULL) {
			*error_r = "expected name=value after the entry (added=, expires=, origin=, reason=)";
			goto bad;
		}
		size_t nl = (size_t)(eq - tok);
		const char *v = eq + 1;
		size_t vl = tl - nl - 1;

		if (nl == 6 && strncmp(tok, "reason", 6) == 0) {
			/* the reason runs to the end of the line */
			size_t rl = strlen(v);

			while (rl > 0 && (v[rl - 1] == ' ' || v[rl - 1] == '\t' || v[rl - 1] == '\r'))
				rl--;
			free(e->reason);
			e->reason = rl ? xstrndup(v, rl) : NULL;
			if (e->reason != NULL && !listentry_reason_is_valid(e->reason)) {
				*error_r = "reason has control characters or is too long";
				goto bad;
			}
			break;
		} else if (nl == 5 && strncmp(tok, "added", 5) == 0) {
			if (parse_time_attr(v, vl, &e->added) < 0) {
				*error_r = "added= is not a unix time";
				goto bad;
			}
		} else if (nl == 7 && strncmp(tok, "expires", 7) == 0) {
			if (parse_time_attr(v, vl, &e->expires) < 0) {
				*error_r = "expires= is not a unix time";
				goto bad;
			}
		} else if (nl == 6 && strncmp(tok, "origin", 6) == 0) {
			char o[16];

			if (vl >= sizeof(o)) {
				*error_r = "origin= is not admin, auto-ban, auth-ban or import";
				goto bad;
			}
			memcpy(o, v, vl);
			o[vl] = '\0';
			if (listentry_origin_parse(o, &e->origin) < 0) {
				*error_r = "origin= is not admin, auto-ban, auth-ban or import";
				goto bad;
			}
		} else {
			*error_r = "unknown attribute (expected added=, expires=, origin=, reason=)";
			goto bad;
		}
		p = tok + tl;
	}
	return 0;
bad:
	listentry_clear(e);
	return -1;
}

int
listentry_parse_buf(const char *buf, size_t len, struct list_entry *e, const char **error_r)
{
	memset(e, 0, sizeof(*e));
	/* a C string would end at the NUL and accept the truncated line */
	if (memchr(buf, '\0', len) != NULL) {
		*error_r = "NUL byte in the line";
		return -1;
	}
	if (len > MAX_LIST_LINE) {
		*error_r = "line too long";
		return -1;
	}
	return listentry_parse_line(buf, e, error_r);
}

char *
listentry_format_line(const struct list_entry *e)
{
	return xasprintf("%s added=%lld expires=%lld origin=%s%s%s", e->key,
	    e->added, e->expires, listentry_origin_name(e->origin),
	    e->reason ? " reason=" : "", e->reason ? e->reason : "");
}

void
listentry_clear(struct list_entry *e)
{
	free(e->key);
	free(e->reason);
	memset(e, 0, sizeof(*e));
}

int
listentry_is_expired(const struct list_entry *e, long long now)
{
	return e->expires != 0 && e->expires <= now;
}

void
entry_vec_push(struct entry_vec *v, struct list_entry *e)
{
	if (v->n == v->cap) {
		v->cap = v->cap ? v->cap * 2 : 16;
		v->v = xreallocarray(v->v, v->cap, sizeof(*v->v));
	}
	v->v[v->n++] = *e;
	memset(e, 0, sizeof(*e));
}

void
entry_vec_clear(struct entry_vec *v)
{
	for (size_t i = 0; i < v->n; i++)
		listentry_clear(&v->v[i]);
	free(v->v);
	memset(v, 0, sizeof(*v));
}

static const char *
keys_at(const void *keys, uint32_t i)
{
	return ((char *const *)keys)[i];
}

size_t
entry_vec_replace_keys(struct entry_vec *v, char *const *keys, size_t nkeys,
    struct entry_vec *upd)
{
	size_t j = 0, dropped;
	struct hashidx t;

	hashidx_init(&t, nkeys, keys_at, keys);
	for (size_t i = 0; i < nkeys; i++)
		(void)hashidx_put(&t, (uint32_t)i);
	/* one pass: drop every entry whose key changed, keep the rest in order */
	for (size_t i = 0; i < v->n; i++) {
		int hit = hashidx_find(&t, v->v[i].key, strlen(v->v[i].key)) != HASHIDX_NONE;

		if (hit)
			listentry_clear(&v->v[i]);
		else
			v->v[j++] = v->v[i];
	}
	dropped = v->n - j;
	v->n = j;
	for (size_t i = 0; i < upd->n; i++)
		entry_vec_push(v, &upd->v[i]);
	upd->n = 0;
	hashidx_deinit(&t);
	return dropped;
}
