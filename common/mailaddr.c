/*
 * mailaddr - parse an SMTP envelope address for policy decisions.
 *
 *   mailaddr_parse()   "<@route:local@domain>" -> final local part and domain
 *   mailaddr_key()     canonical lower-case "local@domain" for list lookups
 *
 * Conservative on purpose: anything that could route elsewhere (source
 * routes, % and ! in the local part, a quoted @, an address literal) is
 * flagged so the relay check can refuse it. Never allocates.
 */
#include <ctype.h>
#include <string.h>

#include "common/mailaddr.h"

int
mailaddr_parse(const char *raw, struct mailaddr *a)
{
	const char *s = raw, *e;
	const char *at = NULL;
	size_t n, ln = 0;
	int inq = 0;

	memset(a, 0, sizeof(*a));
	while (*s == ' ' || *s == '\t')
		s++;
	e = s + strlen(s);
	while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
		e--;
	if (e > s && *s == '<') {
		if (e[-1] != '>')
			return -1;
		s++;
		e--;
	}
	if (s == e) {
		a->is_null = 1;
		return 0;
	}
	/* source route: "@a,@b:user@dom" keeps the part after the colon */
	if (*s == '@') {
		const char *colon = memchr(s, ':', (size_t)(e - s));

		if (colon == NULL)
			return -1;
		a->source_route = 1;
		s = colon + 1;
		if (s == e)
			return -1;
	}
	/* find the last @ outside quotes; unquote the local part as we go */
	for (const char *p = s; p < e; p++) {
		if (*p == '\\' && inq && p + 1 < e) {
			p++;
		} else if (*p == '"') {
			inq = !inq;
		} else if (*p == '@' && !inq) {
			at = p;
		}
	}
	if (inq)
		return -1;
	for (const char *p = s; p < (at ? at : e); p++) {
		unsigned char c = (unsigned char)*p;

		if (c == '"') {
			a->quoted = 1;
			continue;
		}
		if (c == '\\' && p + 1 < (at ? at : e))
			c = (unsigned char)*++p;
		if (c < 0x20 || c == 0x7f)
			return -1;
		if (c == '%' || c == '!' || c == '@')
			a->routing_local = 1;
		if (ln + 1 >= sizeof(a->local))
			return -1;
		a->local[ln++] = (char)c;
	}
	a->local[ln] = '\0';
	if (at == NULL)
		return ln > 0 ? 0 : -1;
	n = (size_t)(e - (at + 1));
	if (n > 0 && at[n] == '.')	/* trailing dot: "other.org." is other.org */
		n--;
	if (n == 0 || n >= sizeof(a->domain))
		return -1;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)at[1 + i];

		if (c <= 0x20 || c == 0x7f || c == '@' || c == '"' || c == '\\')
			return -1;
		a->domain[i] = (char)tolower(c);
	}
	a->domain[n] = '\0';
	if (a->domain[0] == '[')
		a->domain_literal = 1;
	return 0;
}

const char *
mailaddr_key(const struct mailaddr *a, char *buf)
{
	size_t n = 0;

	for (const char *p = a->local; *p; p++)
		buf[n++] = (char)tolower((unsigned char)*p);
	if (a->domain[0] != '\0') {
		buf[n++] = '@';
		memcpy(buf + n, a->domain, strlen(a->domain) + 1);
	} else {
		buf[n] = '\0';
	}
	return buf;
}
