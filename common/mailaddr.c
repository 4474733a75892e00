/*
 * mailaddr - the one parser and the one formatter of SMTP envelope
 * addresses, for every door (gateway, milter, CLI) and the engine.
 *
 *   mailaddr_parse()       "<@route:local@domain>" -> local part and domain,
 *                          strictly by RFC 5321 §4.1.2 (Path, Mailbox)
 *   mailaddr_format()      the address as it is logged, stored and sent on:
 *                          the local part re-quoted when it is not a Dot-string
 *   mailaddr_key()         lower-case "local@domain" for list lookups
 *   mailaddr_domain_is_valid()  a domain or address literal (HELO/EHLO)
 *   mailaddr_externalize() Postfix's internal (unquoted) form -> "<quoted>"
 *
 * Strict on purpose. A lenient parser and the MTA behind it read hostile
 * input differently: "victim@other.org(.example.com" was ours to the old
 * parser and other.org to Postfix, which drops RFC 5322 comments. Nothing
 * is guessed: comments, brackets, commas, semicolons, colons outside
 * quotes, control characters and 8-bit bytes make the address an error --
 * unless the transaction is SMTPUTF8 (RFC 6531, MAILADDR_UTF8: the milter
 * door, when the MTA says so), where well-formed UTF-8 is atext. What can
 * still route elsewhere (source routes, % and ! in the local part, a quoted
 * @, an address literal) is flagged so the relay check can refuse it. A
 * trailing dot on the domain is dropped, as Postfix does.
 *
 * Never allocates; no state; safe from any thread.
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "common/mailaddr.h"

#define MAILADDR_LABEL_MAX 63	/* RFC 1035 */

static int
is_alnum(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

/* RFC 5322 atext */
static int
is_atext(unsigned char c)
{
	return is_alnum(c) || (c != '\0' && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL);
}

static char
lower(char c)
{
	return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

/*
 * Length of the well-formed UTF-8 sequence for one non-ASCII character at s
 * (RFC 3629: no overlong forms, no surrogates, nothing past U+10FFFF; C1
 * controls refused too), 0 when there is none.
 */
static size_t
utf8_len(const char *s)
{
	const unsigned char *p = (const unsigned char *)s;
#define CONT(x) (((x) & 0xc0) == 0x80)

	if (p[0] == 0xc2)
		return p[1] >= 0xa0 && p[1] <= 0xbf ? 2 : 0;
	if (p[0] >= 0xc3 && p[0] <= 0xdf)
		return CONT(p[1]) ? 2 : 0;
	if (p[0] == 0xe0)
		return p[1] >= 0xa0 && p[1] <= 0xbf && CONT(p[2]) ? 3 : 0;
	if ((p[0] >= 0xe1 && p[0] <= 0xec) || p[0] == 0xee || p[0] == 0xef)
		return CONT(p[1]) && CONT(p[2]) ? 3 : 0;
	if (p[0] == 0xed)
		return p[1] >= 0x80 && p[1] <= 0x9f && CONT(p[2]) ? 3 : 0;
	if (p[0] == 0xf0)
		return p[1] >= 0x90 && p[1] <= 0xbf && CONT(p[2]) && CONT(p[3]) ? 4 : 0;
	if (p[0] >= 0xf1 && p[0] <= 0xf3)
		return CONT(p[1]) && CONT(p[2]) && CONT(p[3]) ? 4 : 0;
	if (p[0] == 0xf4)
		return p[1] >= 0x80 && p[1] <= 0x8f && CONT(p[2]) && CONT(p[3]) ? 4 : 0;
#undef CONT
	return 0;
}

/* a UTF-8 character at s that flags allow: its length, else 0 */
static size_t
utf8_ok(const char *s, unsigned flags)
{
	return (flags & MAILADDR_UTF8) && (unsigned char)*s >= 0x80 ? utf8_len(s) : 0;
}

/*
 * A Domain (sub-domains separated by dots; letters, digits, hyphens, and
 * underscores as Postfix's valid_hostname tolerates) starting at s. Writes
 * it lower-cased to out (cap bytes, NUL added); returns its end, or NULL.
 */
static const char *
domain_scan(const char *s, unsigned flags, char *out, size_t cap, const char **why)
{
	size_t n = 0, label = 0, k;
	const char *p = s;

	for (;; p += k) {
		unsigned char c = (unsigned char)*p;

		k = 1;
		if (is_alnum(c) || c == '-' || c == '_' || (k = utf8_ok(p, flags)) > 0) {
			if (k == 0)
				k = 1;
			if (c == '-' && label == 0) {
				*why = "a domain label starts with a hyphen";
				return NULL;
			}
			if ((label += k) > MAILADDR_LABEL_MAX) {
				*why = "a domain label is longer than 63 octets";
				return NULL;
			}
		} else if (c == '.' && label > 0 && p[-1] != '-') {
			k = 1;
			label = 0;
		} else {
			break;
		}
		if (n + k >= cap) {
			*why = "the domain is longer than 255 octets";
			return NULL;
		}
		for (size_t i = 0; i < k; i++)
			out[n++] = lower(p[i]);
	}
	if (n == 0) {
		*why = "the domain is missing";
		return NULL;
	}
	if (label > 0 && p[-1] == '-') {
		*why = "a domain label ends with a hyphen";
		return NULL;
	}
	if (label == 0)		/* "dom." : the trailing dot is dropped */
		n--;
	out[n] = '\0';
	return p;
}

/* "[IPv4]" or "[IPv6:addr]" at s; written lower-cased to out; returns its end */
static const char *
literal_scan(const char *s, char *out, size_t cap, const char **why)
{
	const char *end = strchr(s, ']');
	char ip[64];
	unsigned char bin[16];
	size_t n;

	*why = "bad address literal";
	if (end == NULL || (n = (size_t)(end - s - 1)) == 0 || n >= sizeof(ip) || n + 3 > cap)
		return NULL;
	memcpy(ip, s + 1, n);
	ip[n] = '\0';
	if (strncasecmp(ip, "IPv6:", 5) == 0) {
		if (inet_pton(AF_INET6, ip + 5, bin) != 1)
			return NULL;
	} else if (inet_pton(AF_INET, ip, bin) != 1) {
		return NULL;	/* General-address-literal: no use here */
	}
	out[0] = '[';
	for (size_t i = 0; i < n; i++)
		out[1 + i] = lower(ip[i]);
	out[n + 1] = ']';
	out[n + 2] = '\0';
	return end + 1;
}

/* Local-part = Dot-string / Quoted-string, unquoted into out; returns its end */
static const char *
local_scan(const char *s, unsigned flags, struct mailaddr *a, const char **why)
{
	size_t n = 0, k;
	const char *p = s;

	if (*p == '"') {
		a->quoted = 1;
		for (p++; *p != '"'; p += k) {
			unsigned char c = (unsigned char)*p;

			k = 1;
			if (c == '\\') {
				c = (unsigned char)*++p;
				if (c < 0x20 || c > 0x7e) {
					*why = "bad quoted pair in the local part";
					return NULL;
				}
			} else if (c == '\0') {
				*why = "unbalanced quote in the local part";
				return NULL;
			} else if (c < 0x20 || c > 0x7e) {
				if ((k = utf8_ok(p, flags)) == 0) {
					*why = "control or 8-bit character in the local part";
					return NULL;
				}
			}
			if (n + k >= sizeof(a->local)) {
				*why = "the local part is longer than 255 octets";
				return NULL;
			}
			memcpy(a->local + n, p, k);
			n += k;
		}
		p++;
	} else {
		for (;; p += k) {
			k = 1;
			if (*p == '.') {
				if (p == s || p[-1] == '.') {
					*why = "empty atom in the local part (leading or double dot)";
					return NULL;
				}
			} else if (!is_atext((unsigned char)*p) && (k = utf8_ok(p, flags)) == 0) {
				break;
			}
			if (n + k >= sizeof(a->local)) {
				*why = "the local part is longer than 255 octets";
				return NULL;
			}
			memcpy(a->local + n, p, k);
			n += k;
		}
		if (n > 0 && p[-1] == '.') {
			*why = "the local part ends with a dot";
			return NULL;
		}
	}
	a->local[n] = '\0';
	if (n == 0) {
		*why = "the local part is empty";
		return NULL;
	}
	if (strpbrk(a->local, "%!@") != NULL)
		a->routing_local = 1;
	return p;
}

/* bytes >= 0x80 are in a local part only when it was parsed with MAILADDR_UTF8,
 * where they are atext (RFC 6531) */
static int
is_dot_string(const char *s)
{
	if (*s == '\0' || *s == '.')
		return 0;
	for (const char *p = s; *p; p++)
		if (!(is_atext((unsigned char)*p) || (unsigned char)*p >= 0x80 ||
		    (*p == '.' && p[1] != '.' && p[1] != '\0')))
			return 0;
	return 1;
}

/* strlen(mailaddr_format(a)), without formatting */
static size_t
formatted_len(const struct mailaddr *a)
{
	size_t n = strlen(a->local);

	if (!is_dot_string(a->local)) {
		n += 2;
		for (const char *p = a->local; *p; p++)
			n += *p == '"' || *p == '\\';
	}
	return n + (a->domain[0] != '\0' ? 1 + strlen(a->domain) : 0);
}

int
mailaddr_parse_flags(const char *raw, unsigned flags, struct mailaddr *a, const char **why)
{
	char buf[MAILADDR_TEXT_MAX + 2], dom[MAILADDR_PART_MAX];
	const char *s = raw, *e, *p;
	size_t n;

	/* not memset: parsing is on every MAIL and RCPT; the parts are always
	 * written NUL-terminated */
	a->local[0] = a->domain[0] = '\0';
	a->is_null = a->source_route = a->routing_local = a->domain_literal = a->quoted = 0;
	while (*s == ' ' || *s == '\t')
		s++;
	e = s + strlen(s);
	while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
		e--;
	n = (size_t)(e - s);
	if (n > MAILADDR_TEXT_MAX) {
		*why = "the address is longer than 512 octets";
		return -1;
	}
	if (n > 0 && *s == '<') {
		if (n < 2 || e[-1] != '>') {
			*why = "unbalanced < >";
			return -1;
		}
		s++;
		n -= 2;
	}
	memcpy(buf, s, n);
	buf[n] = '\0';
	if (n == 0) {
		a->is_null = 1;
		return 0;
	}
	p = buf;
	if (*p == '@') {
		/* A-d-l ":" -- accepted and ignored (RFC 5321 §4.1.2, C.) */
		for (;;) {
			if (*p != '@' || (p = domain_scan(p + 1, flags, dom, sizeof(dom), why)) == NULL) {
				if (p != NULL)
					*why = "bad source route";
				return -1;
			}
			if (*p == ':')
				break;
			if (*p != ',') {
				*why = "bad source route";
				return -1;
			}
			p++;
		}
		a->source_route = 1;
		p++;
	}
	if ((p = local_scan(p, flags, a, why)) == NULL)
		return -1;
	if (*p == '@') {
		p++;
		p = *p == '[' ? literal_scan(p, a->domain, sizeof(a->domain), why) :
		    domain_scan(p, flags, a->domain, sizeof(a->domain), why);
		if (p == NULL)
			return -1;
		a->domain_literal = a->domain[0] == '[';
	}
	if (*p != '\0') {
		*why = (*p == '(' || *p == ')') ? "comment in the address" :
		    ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e) ?
		    "control or 8-bit character in the address" :
		    "character not allowed in the address";
		return -1;
	}
	if (formatted_len(a) > MAILADDR_TEXT_MAX - 3) {
		*why = "the address is longer than 512 octets";
		return -1;
	}
	return 0;
}

int
mailaddr_parse_why(const char *raw, struct mailaddr *a, const char **why)
{
	return mailaddr_parse_flags(raw, 0, a, why);
}

int
mailaddr_parse(const char *raw, struct mailaddr *a)
{
	const char *why;

	return mailaddr_parse_why(raw, a, &why);
}

const char *
mailaddr_format(const struct mailaddr *a, char *buf)
{
	size_t n = 0, cap = MAILADDR_TEXT_MAX;

	buf[0] = '\0';
	if (a->is_null)
		return buf;
	if (is_dot_string(a->local)) {
		n = (size_t)snprintf(buf, cap, "%s", a->local);
	} else {
		buf[n++] = '"';
		for (const char *p = a->local; *p && n + 3 < cap; p++) {
			if (*p == '"' || *p == '\\')
				buf[n++] = '\\';
			buf[n++] = *p;
		}
		buf[n++] = '"';
		buf[n] = '\0';
	}
	if (a->domain[0] != '\0' && n < cap)
		snprintf(buf + n, cap - n, "@%s", a->domain);
	return buf;
}

const char *
mailaddr_externalize(const char *internal, char *buf, size_t cap)
{
	const char *at = strrchr(internal, '@');
	size_t ll = at ? (size_t)(at - internal) : strlen(internal), n = 0;
	char local[MAILADDR_PART_MAX];

	if (internal[0] == '\0' || ll >= sizeof(local) || cap < 2 * ll + 6)
		return internal;
	memcpy(local, internal, ll);
	local[ll] = '\0';
	buf[n++] = '<';
	if (is_dot_string(local)) {
		memcpy(buf + n, local, ll);
		n += ll;
	} else {
		buf[n++] = '"';
		for (size_t i = 0; i < ll; i++) {
			if (local[i] == '"' || local[i] == '\\')
				buf[n++] = '\\';
			buf[n++] = local[i];
		}
		buf[n++] = '"';
	}
	if (at != NULL && (size_t)snprintf(buf + n, cap - n, "%s>", at) >= cap - n)
		return internal;
	if (at == NULL) {
		buf[n++] = '>';
		buf[n] = '\0';
	}
	return buf;
}

const char *
mailaddr_key(const struct mailaddr *a, char *buf)
{
	size_t n = 0;

	for (const char *p = a->local; *p; p++)
		buf[n++] = lower(*p);
	if (a->domain[0] != '\0') {
		buf[n++] = '@';
		memcpy(buf + n, a->domain, strlen(a->domain) + 1);
	} else {
		buf[n] = '\0';
	}
	return buf;
}

int
mailaddr_is_postmaster(const struct mailaddr *a)
{
	return !a->is_null && a->domain[0] == '\0' && strcasecmp(a->local, "postmaster") == 0;
}

int
mailaddr_domain_is_valid(const char *s)
{
	char out[MAILADDR_PART_MAX];
	const char *why, *end;

	end = s[0] == '[' ? literal_scan(s, out, sizeof(out), &why) :
	    domain_scan(s, 0, out, sizeof(out), &why);
	return end != NULL && *end == '\0';
}
