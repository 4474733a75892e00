/*
 * sieve_addr.c - one RFC 5322 mailbox, strictly: `addr-spec` or
 * `[phrase] <addr-spec>`, with CFWS around the parts, as redirect and
 * vacation :from need it. Normalizes to local@domain, unquoting a quoted
 * local part that is a plain dot-atom.
 *
 *   sv_addr_parse(s, &norm)  0 and a fresh normalized address, or -1
 */
#include <string.h>
#include <stdlib.h>
#include "rules/sieve_ast.h"
#include "common/xmalloc.h"

static int atext(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	    (c && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL);
}

static int cfws(const char **pp)
{
	const char *p = *pp;
	for (;;) {
		while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')
			p++;
		if (*p != '(')
			break;
		int d = 0;
		do {
			if (*p == '\0')
				return -1;
			if (*p == '\\' && p[1])
				p++;
			else if (*p == '(')
				d++;
			else if (*p == ')')
				d--;
			p++;
		} while (d > 0);
	}
	*pp = p;
	return 0;
}

/* quoted-string at p ('"'); appends the raw text (with quotes) to o */
static int quoted(const char **pp, char **o)
{
	const char *p = *pp + 1;
	char *w = *o;
	*w++ = '"';
	while (*p && *p != '"') {
		if (*p == '\\') {
			if (!p[1])
				return -1;
			*w++ = *p++;
		}
		if ((unsigned char)*p >= 0x80)
			return -1;
		*w++ = *p++;
	}
	if (*p != '"')
		return -1;
	*w++ = '"';
	*o = w;
	*pp = p + 1;
	return 0;
}

static int is_dot_atom(const char *s, size_t n)
{
	if (n == 0 || s[0] == '.' || s[n - 1] == '.')
		return 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] == '.') {
			if (s[i + 1] == '.')
				return 0;
		} else if (!atext((unsigned char)s[i])) {
			return 0;
		}
	}
	return 1;
}

static int addr_spec(const char **pp, char **norm_r)
{
	const char *p = *pp;
	size_t cap = strlen(p) * 2 + 4;
	char *local = xmalloc(cap), *w = local;
	if (cfws(&p) < 0)
		goto fail;
	if (*p == '"') {
		if (quoted(&p, &w) < 0)
			goto fail;
	} else {
		/* atoms and dots (lenient on dots, as Pigeonhole is) */
		int any = 0, need_dot = 0;
		for (;;) {
			if (cfws(&p) < 0)
				goto fail;
			if (*p == '.') {
				*w++ = *p++;
				need_dot = 0;
				continue;
			}
			if (!atext((unsigned char)*p))
				break;
			if (need_dot)
				goto fail;	/* two words without a dot */
			while (atext((unsigned char)*p))
				*w++ = *p++;
			any = 1;
			need_dot = 1;
		}
		if (!any)
			goto fail;
	}
	*w = '\0';
	if (cfws(&p) < 0 || *p != '@')
		goto fail;
	p++;
	if (cfws(&p) < 0)
		goto fail;
	char *dom = xmalloc(strlen(p) + 1), *d = dom;
	if (*p == '[') {
		while (*p && *p != ']')
			*d++ = *p++;
		if (*p != ']') {
			free(dom);
			goto fail;
		}
		*d++ = *p++;
	} else {
		while (atext((unsigned char)*p) || *p == '.')
			*d++ = *p++;
	}
	*d = '\0';
	if (!is_dot_atom(dom, strlen(dom)) && dom[0] != '[') {
		free(dom);
		goto fail;
	}
	if (cfws(&p) < 0) {
		free(dom);
		goto fail;
	}
	/* unquote "plain"@ */
	size_t ll = strlen(local);
	if (local[0] == '"' && is_dot_atom(local + 1, ll - 2) && !memchr(local, '\\', ll)) {
		memmove(local, local + 1, ll - 2);
		local[ll - 2] = '\0';
	}
	{	/* local@dom (no printf: this runs for every address test) */
		size_t lo = strlen(local), dl = strlen(dom);
		char *r = xmalloc(lo + dl + 2);

		memcpy(r, local, lo);
		r[lo] = '@';
		memcpy(r + lo + 1, dom, dl + 1);
		*norm_r = r;
	}
	free(dom);
	free(local);
	*pp = p;
	return 0;
fail:
	free(local);
	return -1;
}

int sv_addr_parse(const char *s, char **norm_r)
{
	/* a '<' outside quotes means name-addr */
	int inq = 0;
	const char *lt = NULL;
	for (const char *p = s; *p; p++) {
		if (*p == '\\' && inq && p[1]) {
			p++;
			continue;
		}
		if (*p == '"')
			inq = !inq;
		else if (*p == '<' && !inq) {
			lt = p;
			break;
		}
	}
	const char *p;
	if (lt) {
		/* the phrase: words (atoms, quoted strings, dots) */
		p = s;
		while (p < lt) {
			if (cfws(&p) < 0)
				return -1;
			if (p >= lt)
				break;
			if (*p == '"') {
				p++;
				while (p < lt && *p != '"') {
					if (*p == '\\')
						p++;
					p++;
				}
				if (*p != '"')
					return -1;
				p++;
			} else if (atext((unsigned char)*p) || *p == '.' || (unsigned char)*p >= 0x80) {
				p++;
			} else {
				return -1;
			}
		}
		p = lt + 1;
		char *n;
		if (addr_spec(&p, &n) < 0)
			return -1;
		if (*p != '>') {
			free(n);
			return -1;
		}
		p++;
		if (cfws(&p) < 0 || *p) {
			free(n);
			return -1;
		}
		*norm_r = n;
		return 0;
	}
	p = s;
	char *n;
	if (addr_spec(&p, &n) < 0)
		return -1;
	if (*p) {
		free(n);
		return -1;
	}
	*norm_r = n;
	return 0;
}
