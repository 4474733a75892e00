/*
 * proxy_reply - the backend login's state machine (see proxy_reply.h).
 *
 *   proxy_reply_new(), proxy_reply_set_client(), proxy_reply_free()
 *   proxy_reply_line()      one backend line -> enum proxy_reply_act
 *   proxy_reply_tls_done()  after the STARTTLS handshake
 *   proxy_reply_out(), proxy_reply_caps(), proxy_reply_why()
 *
 * Each line is copied into a NUL-terminated buffer of its own before it is
 * looked at, so the parsing never reads past what the backend sent. Only
 * the response code of a refusal is kept for the log, never peer bytes.
 * Pure: no I/O, no libevent; one per backend login.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/base64.h"
#include "common/xmalloc.h"
#include "pop-imap-proxy/proxy_reply.h"

enum prstate {
	S_GREETING,
	S_STARTTLS,	/* "S STARTTLS" / "STLS" sent */
	S_TLS,		/* the handshake: no lines */
	S_ID,		/* IMAP ID / POP3 XCLIENT sent */
	S_AUTH,		/* IMAP AUTHENTICATE sent / POP3 USER sent */
	S_AUTH_CONT,	/* IMAP: waiting for "+" (no SASL-IR) */
	S_PASS,		/* POP3 PASS sent */
	S_CAPS,		/* IMAP CAPABILITY sent */
	S_DONE,
};

struct proxy_reply {
	int imap, starttls;
	enum prstate st;
	enum proxy_reply_act result;	/* once S_DONE */
	char *user, *password;
	char *client;			/* the ID / XCLIENT line; NULL: none */
	int sasl_ir;
	char caps[PROXY_REPLY_CAPS_MAX];
	const char *why;
	char *out;			/* what to send (wiped before reuse) */
	size_t outcap;
	char line[PROXY_REPLY_LINE_MAX + 1];
};

struct proxy_reply *
proxy_reply_new(int imap, int starttls, const char *user, const char *password)
{
	struct proxy_reply *pr = xcalloc(1, sizeof(*pr));

	pr->imap = imap;
	pr->starttls = starttls;
	pr->st = S_GREETING;
	pr->user = xstrdup(user);
	pr->password = xstrdup(password);
	pr->why = "";
	pr->outcap = 256;
	pr->out = xcalloc(1, pr->outcap);
	return pr;
}

void
proxy_reply_set_client(struct proxy_reply *pr, const char *rip, unsigned rport,
    const char *lip, unsigned lport)
{
	free(pr->client);
	pr->client = pr->imap ?
	    xasprintf("I ID (\"x-originating-ip\" \"%s\" \"x-originating-port\" \"%u\" "
	    "\"x-connected-ip\" \"%s\" \"x-connected-port\" \"%u\")", rip, rport, lip, lport) :
	    xasprintf("XCLIENT ADDR=%s PORT=%u", rip, rport);
}

static void
wipe(char *s)
{
	if (s != NULL)
		explicit_bzero(s, strlen(s));
}

void
proxy_reply_free(struct proxy_reply **prp)
{
	struct proxy_reply *pr = *prp;

	if (pr == NULL)
		return;
	*prp = NULL;
	wipe(pr->password);
	free(pr->password);
	free(pr->user);
	free(pr->client);
	explicit_bzero(pr->out, pr->outcap);
	free(pr->out);
	explicit_bzero(pr->line, sizeof(pr->line));
	free(pr);
}

/* append one line (CRLF added) to what is sent */
static void
emit(struct proxy_reply *pr, const char *a, const char *b)
{
	size_t have = strlen(pr->out), need = have + strlen(a) + strlen(b) + 3;

	if (need > pr->outcap) {
		char *n = xcalloc(1, need);

		memcpy(n, pr->out, have);
		explicit_bzero(pr->out, pr->outcap);
		free(pr->out);
		pr->out = n;
		pr->outcap = need;
	}
	snprintf(pr->out + have, pr->outcap - have, "%s%s\r\n", a, b);
}

static enum proxy_reply_act
end(struct proxy_reply *pr, enum proxy_reply_act res, const char *why)
{
	pr->st = S_DONE;
	pr->result = res;
	pr->why = why;
	return res;
}

/* "[CAPABILITY a b c]" at the start of p: the list into pr->caps */
static void
take_caps_code(struct proxy_reply *pr, const char *p)
{
	const char *e;

	p += strspn(p, " ");
	if (strncasecmp(p, "[CAPABILITY ", 12) != 0)
		return;
	p += 12;
	e = strchr(p, ']');
	if (e == NULL)
		return;
	snprintf(pr->caps, sizeof(pr->caps), "%.*s", (int)(e - p), p);
}

static int
has_word(const char *list, const char *w)
{
	size_t wl = strlen(w);

	for (const char *p = list; *p;) {
		size_t l = strcspn(p, " ");

		if (l == wl && strncasecmp(p, w, wl) == 0)
			return 1;
		p += l;
		p += strspn(p, " ");
	}
	return 0;
}

/* the status word after "TAG " (or "* "): l + n when it is w, else NULL */
static const char *
status_is(const char *l, size_t n, const char *w)
{
	size_t wl = strlen(w);

	if (strncasecmp(l + n, w, wl) != 0 || (l[n + wl] != '\0' && l[n + wl] != ' '))
		return NULL;
	return l + n + wl;
}

/* after the greeting (and TLS): the client's address, or straight the login */
static enum proxy_reply_act send_login(struct proxy_reply *pr);

static enum proxy_reply_act
after_tls(struct proxy_reply *pr)
{
	if (pr->client != NULL) {
		pr->st = S_ID;
		emit(pr, pr->client, "");
		return PR_SEND;
	}
	return send_login(pr);
}

static enum proxy_reply_act
send_login(struct proxy_reply *pr)
{
	size_t ul, pl, n;
	char *raw, *b64;

	pr->st = S_AUTH;
	if (!pr->imap) {
		emit(pr, "USER ", pr->user);
		return PR_SEND;
	}
	ul = strlen(pr->user);
	pl = strlen(pr->password);
	n = ul + pl + 2;
	raw = xmalloc(n);
	b64 = xmalloc(BASE64_ENCODED_LEN(n) + 1);
	raw[0] = '\0';
	memcpy(raw + 1, pr->user, ul);
	raw[1 + ul] = '\0';
	memcpy(raw + 2 + ul, pr->password, pl);
	base64_encode(raw, n, b64);
	explicit_bzero(raw, n);
	free(raw);
	if (pr->sasl_ir) {
		emit(pr, "L AUTHENTICATE PLAIN ", b64);
	} else {
		emit(pr, "L AUTHENTICATE PLAIN", "");
		pr->st = S_AUTH_CONT;
	}
	/* kept for the "+" when there was no SASL-IR */
	wipe(pr->password);
	free(pr->password);
	pr->password = b64;
	return PR_SEND;
}

static enum proxy_reply_act
imap_line(struct proxy_reply *pr, const char *l)
{
	const char *rest;

	switch (pr->st) {
	case S_GREETING:
		if ((rest = status_is(l, 0, "* OK")) == NULL)
			return end(pr, PR_UNAVAILABLE, "the backend's greeting is not * OK");
		take_caps_code(pr, rest);
		pr->sasl_ir = has_word(pr->caps, "SASL-IR");
		if (pr->starttls) {
			if (pr->caps[0] != '\0' && !has_word(pr->caps, "STARTTLS"))
				return end(pr, PR_UNAVAILABLE, "the backend does not offer STARTTLS");
			pr->st = S_STARTTLS;
			emit(pr, "S STARTTLS", "");
			return PR_SEND;
		}
		return after_tls(pr);
	case S_STARTTLS:
		if (l[0] == '*')
			return PR_NONE;
		if (status_is(l, 0, "S OK") == NULL)
			return end(pr, PR_UNAVAILABLE, "the backend refused STARTTLS");
		pr->st = S_TLS;
		return PR_STARTTLS;
	case S_ID:
		if (strncmp(l, "I ", 2) == 0)
			return send_login(pr);	/* whatever the backend made of the ID */
		return PR_NONE;
	case S_AUTH_CONT:
		if (l[0] == '+') {
			emit(pr, pr->password, "");
			pr->st = S_AUTH;
			return PR_SEND;
		}
		/* FALLTHROUGH */
	case S_AUTH:
		if (strncmp(l, "* CAPABILITY ", 13) == 0) {
			snprintf(pr->caps, sizeof(pr->caps), "%s", l + 13);
			return PR_NONE;
		}
		if (strncmp(l, "L ", 2) != 0)
			return PR_NONE;
		if ((rest = status_is(l, 2, "OK")) == NULL) {
			if (status_is(l, 2, "NO") != NULL)
				return strstr(l, "[UNAVAILABLE]") != NULL ?
				    end(pr, PR_UNAVAILABLE, "the backend answered NO [UNAVAILABLE]") :
				    end(pr, PR_REFUSED, "the backend answered NO");
			return end(pr, PR_UNAVAILABLE, "the backend answered BAD");
		}
		pr->caps[0] = '\0';
		take_caps_code(pr, rest);
		if (pr->caps[0] != '\0')
			return end(pr, PR_OK, "");
		pr->st = S_CAPS;
		emit(pr, "C CAPABILITY", "");
		return PR_SEND;
	case S_CAPS:
		if (strncmp(l, "* CAPABILITY ", 13) == 0) {
			snprintf(pr->caps, sizeof(pr->caps), "%s", l + 13);
			return PR_NONE;
		}
		if (strncmp(l, "C ", 2) == 0)
			return end(pr, PR_OK, "");
		return PR_NONE;
	default:
		return PR_NONE;
	}
}

static enum proxy_reply_act
pop3_line(struct proxy_reply *pr, const char *l)
{
	int ok = strncmp(l, "+OK", 3) == 0;

	switch (pr->st) {
	case S_GREETING:
		if (!ok)
			return end(pr, PR_UNAVAILABLE, "the backend's greeting is not +OK");
		if (pr->starttls) {
			pr->st = S_STARTTLS;
			emit(pr, "STLS", "");
			return PR_SEND;
		}
		return after_tls(pr);
	case S_STARTTLS:
		if (!ok)
			return end(pr, PR_UNAVAILABLE, "the backend refused STLS");
		pr->st = S_TLS;
		return PR_STARTTLS;
	case S_ID:
		/* XCLIENT's answer either way (a backend that does not trust us says -ERR) */
		return send_login(pr);
	case S_AUTH:
		if (!ok)
			return end(pr, PR_REFUSED, "the backend refused USER");
		pr->st = S_PASS;
		emit(pr, "PASS ", pr->password);
		return PR_SEND;
	case S_PASS:
		if (!ok)
			return end(pr, strstr(l, "[SYS/") || strstr(l, "[IN-USE]") ?
			    PR_UNAVAILABLE : PR_REFUSED, "the backend answered -ERR");
		return end(pr, PR_OK, "");
	default:
		return PR_NONE;
	}
}

enum proxy_reply_act
proxy_reply_line(struct proxy_reply *pr, const char *line, size_t len)
{
	explicit_bzero(pr->out, strlen(pr->out));
	if (pr->st == S_DONE)
		return pr->result;
	if (pr->st == S_TLS)
		return end(pr, PR_UNAVAILABLE, "a backend line during the TLS handshake");
	if (len > PROXY_REPLY_LINE_MAX || memchr(line, '\0', len) != NULL)
		return end(pr, PR_UNAVAILABLE, "a backend line is too long or holds NUL");
	memcpy(pr->line, line, len);
	pr->line[len] = '\0';
	return pr->imap ? imap_line(pr, pr->line) : pop3_line(pr, pr->line);
}

enum proxy_reply_act
proxy_reply_tls_done(struct proxy_reply *pr)
{
	explicit_bzero(pr->out, strlen(pr->out));
	if (pr->st == S_DONE)
		return pr->result;
	if (pr->st != S_TLS)
		return end(pr, PR_UNAVAILABLE, "a TLS handshake nobody asked for");
	return after_tls(pr);
}

const char *
proxy_reply_out(const struct proxy_reply *pr)
{
	return pr->out;
}

const char *
proxy_reply_caps(const struct proxy_reply *pr)
{
	return pr->caps;
}

const char *
proxy_reply_why(const struct proxy_reply *pr)
{
	return pr->why;
}

int
proxy_reply_is_done(const struct proxy_reply *pr)
{
	return pr->st == S_DONE;
}
