/*
 * pop3_proto: the POP3 server protocol core (see pop3_proto.h).
 *
 *   pop3_proto_new/free/start      one per connection; start queues the greeting
 *   pop3_proto_input               client bytes in, stops at a pending action
 *   pop3_proto_output/_done        reply bytes out (LIST/UIDL made in pieces)
 *   pop3_proto_action              AUTH, OPEN, RETR, UPDATE, STARTTLS for the door
 *   pop3_proto_*_done              the door's answers
 *   pop3_uidl                      Dovecot's default UIDL
 *   pop3_stream_*                  RETR/TOP bytes: CRLF, dot-stuffing, the end dot
 *
 * States: AUTHORIZATION (USER/PASS, APOP, AUTH, STLS, CAPA, QUIT),
 * TRANSACTION (STAT LIST UIDL RETR TOP DELE RSET NOOP CAPA QUIT) and UPDATE
 * (the door's expunge at QUIT). Replies and response codes follow Dovecot's
 * so clients see no difference. Never does I/O, never logs peer bytes; the
 * password of USER/PASS goes straight into a PLAIN exchange and is wiped.
 */
#include "pop-imap-proxy/pop3_proto.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "common/base64.h"
#include "common/xmalloc.h"
#include "storage-adapter/mailstore.h"

enum pop3_state {
	ST_NEW,		/* before pop3_proto_start() */
	ST_AUTHZ,
	ST_SASL,	/* reading AUTH response lines */
	ST_TRANS,
	ST_DONE,	/* closing */
};

#define MSG_DELETED	1u
#define MSG_RETRIEVED	2u

struct pop3_proto {
	struct pop3_params prm;
	enum pop3_state st;
	enum pop3_action act;
	int tls;
	char *tls_peer;
	char stamp[160];
	char given_user[POP3_USER_MAX];
	int have_user;
	char user[POP3_USER_MAX];
	struct pop3_auth_req auth;
	char apop_login[POP3_USER_MAX];
	char apop_digest[33];
	char *auth_final;
	unsigned bad, auth_failures;
	/* input */
	char line[POP3_AUTH_LINE_MAX + 1];
	size_t linelen;
	int skipping;
	/* output */
	char *out;
	size_t outlen, outcap, outoff;
	int close;
	/* the mailbox */
	struct mailstore_box *box;
	size_t n;
	unsigned char *mflags;
	uint32_t uidvalidity;
	/* LIST/UIDL in progress: 0 none, 1 LIST, 2 UIDL */
	int listing;
	size_t list_next;
	/* RETR/TOP */
	size_t retr_idx;
	long retr_top;
	/* UPDATE */
	uint32_t *upd_exp, *upd_seen;
	size_t nexp, nseen;
};

/* ---- output ---- */

static void
out_add(struct pop3_proto *p, const char *s, size_t n)
{
	if (p->outlen + n > p->outcap) {
		size_t cap = p->outcap ? p->outcap : 1024;

		while (cap < p->outlen + n)
			cap *= 2;
		p->out = xrealloc(p->out, cap);
		p->outcap = cap;
	}
	memcpy(p->out + p->outlen, s, n);
	p->outlen += n;
}

static void reply(struct pop3_proto *p, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
reply(struct pop3_proto *p, const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf) - 2, fmt, ap);
	va_end(ap);
	if (n < 0)
		n = 0;
	if ((size_t)n > sizeof(buf) - 3)
		n = (int)sizeof(buf) - 3;
	buf[n++] = '\r';
	buf[n++] = '\n';
	out_add(p, buf, (size_t)n);
}

const char *
pop3_proto_output(const struct pop3_proto *p, size_t *len_r)
{
	*len_r = p->outlen - p->outoff;
	return p->out + p->outoff;
}

static void list_fill(struct pop3_proto *p);

void
pop3_proto_output_done(struct pop3_proto *p, size_t n)
{
	if (n > p->outlen - p->outoff)
		n = p->outlen - p->outoff;
	p->outoff += n;
	if (p->outoff == p->outlen) {
		p->outoff = p->outlen = 0;
		if (p->outcap > 4 * POP3_OUTPUT_CHUNK) {
			free(p->out);
			p->out = NULL;
			p->outcap = 0;
		}
	}
	if (p->listing)
		list_fill(p);
}

int
pop3_proto_wants_close(const struct pop3_proto *p)
{
	return p->close;
}

enum pop3_action
pop3_proto_action(const struct pop3_proto *p)
{
	return p->act;
}

/* ---- setup ---- */

struct pop3_proto *
pop3_proto_new(const struct pop3_params *prm)
{
	struct pop3_proto *p = xcalloc(1, sizeof(*p));

	p->prm = *prm;
	p->st = ST_NEW;
	return p;
}

static void
auth_end(struct pop3_proto *p)
{
	sasl_server_free(&p->auth.sasl);
	free(p->auth_final);
	p->auth_final = NULL;
	memset(&p->auth, 0, sizeof(p->auth));
}

void
pop3_proto_free(struct pop3_proto **pp)
{
	struct pop3_proto *p = *pp;

	if (p == NULL)
		return;
	auth_end(p);
	explicit_bzero(p->line, sizeof(p->line));
	free(p->tls_peer);
	free(p->out);
	free(p->mflags);
	free(p->upd_exp);
	free(p->upd_seen);
	free(p);
	*pp = NULL;
}

void
pop3_proto_start(struct pop3_proto *p, const char *stamp)
{
	const char *host = p->prm.myhostname ? p->prm.myhostname : "localhost";

	if (stamp != NULL) {
		snprintf(p->stamp, sizeof(p->stamp), "%s", stamp);
	} else {
		unsigned char r[8] = { 0 };

		if (getrandom(r, sizeof(r), 0) != (ssize_t)sizeof(r))
			memset(r, 0, sizeof(r));
		snprintf(p->stamp, sizeof(p->stamp), "<%02x%02x%02x%02x%02x%02x%02x%02x.%lld@%.100s>",
		    r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], (long long)time(NULL), host);
	}
	p->st = ST_AUTHZ;
	if (p->prm.banner != NULL)
		reply(p, "+OK %.300s%s%s", p->prm.banner, p->prm.apop ? " " : "",
		    p->prm.apop ? p->stamp : "");
	else
		reply(p, "+OK %.255s ready.%s%s", host, p->prm.apop ? " " : "",
		    p->prm.apop ? p->stamp : "");
}

void
pop3_proto_set_tls(struct pop3_proto *p, int active)
{
	p->tls = active;
	if (p->act == POP3_ACT_STARTTLS) {
		p->act = POP3_ACT_NONE;
		/* RFC 2595 §4: forget what was said in the clear */
		p->have_user = 0;
		p->given_user[0] = '\0';
	}
}

void
pop3_proto_set_tls_peer(struct pop3_proto *p, const char *identity)
{
	free(p->tls_peer);
	p->tls_peer = identity ? xstrdup(identity) : NULL;
}

const char *
pop3_proto_user(const struct pop3_proto *p)
{
	return p->user;
}

unsigned
pop3_proto_auth_failures(const struct pop3_proto *p)
{
	return p->auth_failures;
}

void
pop3_uidl(uint32_t uid, uint32_t uidvalidity, char out[17])
{
	/* Dovecot's %X var_expand modifier writes lower-case hex */
	snprintf(out, 17, "%08x%08x", (unsigned)uid, (unsigned)uidvalidity);
}

/* ---- helpers ---- */

static int
plain_ok(const struct pop3_proto *p)
{
	return p->tls || p->prm.auth_allow_plaintext;
}

static const unsigned mech_order[] = { AUTH_MECH_PLAIN, AUTH_MECH_LOGIN, AUTH_MECH_CRAM,
	AUTH_MECH_SCRAM, AUTH_MECH_EXTERNAL };

static int
mech_usable(const struct pop3_proto *p, unsigned m)
{
	if ((p->prm.auth_mechs & m) == 0 || p->prm.sasl_cb == NULL)
		return 0;
	if ((m == AUTH_MECH_PLAIN || m == AUTH_MECH_LOGIN) && !plain_ok(p))
		return 0;
	if (m == AUTH_MECH_EXTERNAL && p->tls_peer == NULL)
		return 0;
	return 1;
}

static void
bad_command(struct pop3_proto *p, const char *text)
{
	unsigned max = p->prm.bad_max ? p->prm.bad_max :
	    (p->st == ST_TRANS ? POP3_BAD_MAX : POP3_BAD_MAX_PRELOGIN);

	reply(p, "-ERR %s", text);
	if (++p->bad >= max) {
		reply(p, "-ERR Too many bad commands.");
		p->close = 1;
		p->st = ST_DONE;
	}
}

/* a message number argument -> index; replies and returns -1 when bad */
static int
msg_arg(struct pop3_proto *p, const char *arg, size_t *idx_r)
{
	unsigned long long v = 0;

	if (arg == NULL || *arg == '\0') {
		bad_command(p, "Invalid message number.");
		return -1;
	}
	for (const char *s = arg; *s != '\0'; s++) {
		if (!isdigit((unsigned char)*s) || v > 100000000ull) {
			bad_command(p, "Invalid message number.");
			return -1;
		}
		v = v * 10 + (unsigned)(*s - '0');
	}
	if (v == 0 || v > p->n) {
		reply(p, "-ERR There's no message %llu.", v);
		return -1;
	}
	if (p->mflags[v - 1] & MSG_DELETED) {
		reply(p, "-ERR Message is deleted.");
		return -1;
	}
	*idx_r = (size_t)(v - 1);
	return 0;
}

static const struct mailstore_msg *
msg(const struct pop3_proto *p, size_t i)
{
	return mailstore_box_msg(p->box, i);
}

/* ---- LIST / UIDL, in pieces ---- */

static void
list_fill(struct pop3_proto *p)
{
	while (p->listing && p->outlen - p->outoff < POP3_OUTPUT_CHUNK) {
		size_t i = p->list_next;

		if (i >= p->n) {
			out_add(p, ".\r\n", 3);
			p->listing = 0;
			break;
		}
		p->list_next++;
		if (p->mflags[i] & MSG_DELETED)
			continue;
		if (p->listing == 1) {
			reply(p, "%zu %llu", i + 1, (unsigned long long)msg(p, i)->vsize);
		} else {
			char u[17];

			pop3_uidl(msg(p, i)->uid, p->uidvalidity, u);
			reply(p, "%zu %s", i + 1, u);
		}
	}
}

/* ---- authentication ---- */

static void
auth_failed(struct pop3_proto *p)
{
	p->auth_failures++;
	reply(p, "-ERR [AUTH] Authentication failed.");
}

static void
auth_success(struct pop3_proto *p, const char *user)
{
	snprintf(p->user, sizeof(p->user), "%s", user);
	auth_end(p);
	p->st = ST_AUTHZ;
	p->act = POP3_ACT_OPEN;
}

void
pop3_proto_auth_done(struct pop3_proto *p, int ok, const char *user)
{
	if (p->act != POP3_ACT_AUTH)
		return;
	p->act = POP3_ACT_NONE;
	p->st = ST_AUTHZ;
	if (ok == POP3_AUTH_TEMPFAIL) {
		reply(p, "-ERR [SYS/TEMP] Temporary authentication failure.");
	} else if (ok && p->auth.sasl != NULL && p->auth_final != NULL &&
	    p->auth_final[0] != '\0') {
		/* RFC 5034 §4: the server's final data as a challenge; the client answers empty */
		reply(p, "+ %s", p->auth_final);
		p->st = ST_SASL;
		return;
	} else if (ok) {
		if (p->auth.sasl != NULL)
			user = sasl_server_user(p->auth.sasl);
		if (user == NULL || *user == '\0') {
			reply(p, "-ERR [SYS/TEMP] Temporary authentication failure.");
		} else {
			auth_success(p, user);
			return;
		}
	} else {
		auth_failed(p);
	}
	auth_end(p);
}

static void
auth_next(struct pop3_proto *p, enum sasl_rc rc, const char *out64)
{
	if (out64 == NULL)
		out64 = "";
	switch (rc) {
	case SASL_CONTINUE:
		p->st = ST_SASL;
		reply(p, "+ %s", out64);
		return;
	case SASL_CHECK:
		p->auth.check = 1;
		p->st = ST_AUTHZ;
		p->act = POP3_ACT_AUTH;
		return;
	case SASL_OK:
	case SASL_FAIL:
		/* every outcome goes by the door: a failure's penalty applies */
		p->auth.check = 0;
		p->auth.ok = rc == SASL_OK;
		if (rc == SASL_OK && out64[0] != '\0')
			p->auth_final = xstrdup(out64);
		p->st = ST_AUTHZ;
		p->act = POP3_ACT_AUTH;
		return;
	case SASL_BAD_BASE64:
		auth_end(p);
		p->st = ST_AUTHZ;
		bad_command(p, "Invalid base64 data.");
		return;
	case SASL_CANCELLED:
		auth_end(p);
		p->st = ST_AUTHZ;
		reply(p, "-ERR Authentication aborted by client.");
		return;
	}
}

/* one SASL step: out64 is set by sasl_server_step64(), so it must not be
 * read in the same argument list (their evaluation order is unspecified:
 * with -O1 the challenge went out empty) */
static void
auth_step(struct pop3_proto *p, const char *in64)
{
	const char *out64 = "";
	enum sasl_rc rc = sasl_server_step64(p->auth.sasl, in64, &out64);

	auth_next(p, rc, out64);
}

static void
sasl_line(struct pop3_proto *p, const char *line)
{
	if (p->auth_final != NULL) {
		/* SCRAM: the client has checked our signature; an empty line closes */
		if (line[0] == '\0' || strcmp(line, "=") == 0) {
			auth_success(p, sasl_server_user(p->auth.sasl));
		} else {
			auth_end(p);
			p->st = ST_AUTHZ;
			reply(p, "-ERR Authentication aborted by client.");
		}
		return;
	}
	auth_step(p, line);
}

static int
sasl_begin(struct pop3_proto *p, unsigned mech)
{
	struct sasl_params sp = { p->prm.sasl_cb, p->prm.myhostname, p->tls_peer };

	auth_end(p);
	p->auth.sasl = sasl_server_new(mech, &sp);
	return p->auth.sasl != NULL ? 0 : -1;
}

static void
cmd_auth(struct pop3_proto *p, char *arg)
{
	char *init = NULL;
	unsigned mech;

	if (arg == NULL) {
		/* not in RFC 5034, but clients ask it and Dovecot answers: the list */
		reply(p, "+OK");
		for (size_t i = 0; i < sizeof(mech_order) / sizeof(mech_order[0]); i++)
			if (mech_usable(p, mech_order[i]))
				reply(p, "%s", sasl_mech_name(mech_order[i]));
		out_add(p, ".\r\n", 3);
		return;
	}
	init = strchr(arg, ' ');
	if (init != NULL)
		*init++ = '\0';
	mech = authmech_from_name(arg);
	if ((mech == AUTH_MECH_PLAIN || mech == AUTH_MECH_LOGIN) &&
	    (p->prm.auth_mechs & mech) && !plain_ok(p)) {
		reply(p, "-ERR [AUTH] Plaintext authentication disallowed on non-secure "
		    "(SSL/TLS) connections.");
		return;
	}
	if (mech == 0 || !mech_usable(p, mech) || sasl_begin(p, mech) < 0) {
		reply(p, "-ERR [AUTH] Unsupported authentication mechanism.");
		return;
	}
	auth_step(p, init);
}

static void
cmd_user(struct pop3_proto *p, char *arg)
{
	if (!p->prm.user_pass || p->prm.sasl_cb == NULL) {
		bad_command(p, "Unknown command.");
		return;
	}
	if (!plain_ok(p)) {
		reply(p, "-ERR [AUTH] Plaintext authentication disallowed on non-secure "
		    "(SSL/TLS) connections.");
		return;
	}
	if (arg == NULL || strlen(arg) >= sizeof(p->given_user)) {
		bad_command(p, "Invalid user name.");
		return;
	}
	snprintf(p->given_user, sizeof(p->given_user), "%s", arg);
	p->have_user = 1;
	reply(p, "+OK");
}

static void
cmd_pass(struct pop3_proto *p, char *arg)
{
	size_t ul, pl, n;
	unsigned char *raw;
	char *b64;

	if (!p->have_user) {
		reply(p, "-ERR No username given.");
		return;
	}
	p->have_user = 0;
	if (arg == NULL)
		arg = "";
	ul = strlen(p->given_user);
	pl = strlen(arg);
	n = 2 + ul + pl;
	raw = xmalloc(n);
	raw[0] = '\0';
	memcpy(raw + 1, p->given_user, ul);
	raw[1 + ul] = '\0';
	memcpy(raw + 2 + ul, arg, pl);
	b64 = xmalloc(BASE64_ENCODED_LEN(n) + 1);
	(void)base64_encode(raw, n, b64);
	explicit_bzero(raw, n);
	free(raw);
	if (sasl_begin(p, AUTH_MECH_PLAIN) < 0) {
		explicit_bzero(b64, strlen(b64));
		free(b64);
		reply(p, "-ERR [SYS/TEMP] Temporary authentication failure.");
		return;
	}
	auth_step(p, b64);
	explicit_bzero(b64, strlen(b64));
	free(b64);
}

static void
cmd_apop(struct pop3_proto *p, char *arg)
{
	char *digest;
	size_t dl;

	if (!p->prm.apop) {
		bad_command(p, "APOP not enabled.");
		return;
	}
	if (!plain_ok(p)) {
		/* fetchmail-SA-2007-01: APOP's MD5 gives the secret away to a MITM */
		reply(p, "-ERR [AUTH] Plaintext authentication disallowed on non-secure "
		    "(SSL/TLS) connections.");
		return;
	}
	digest = arg ? strrchr(arg, ' ') : NULL;
	if (digest == NULL) {
		bad_command(p, "Invalid parameters.");
		return;
	}
	*digest++ = '\0';
	dl = strlen(digest);
	if (dl != 32 || strspn(digest, "0123456789abcdefABCDEF") != 32 ||
	    strlen(arg) == 0 || strlen(arg) >= sizeof(p->apop_login)) {
		bad_command(p, "Invalid parameters.");
		return;
	}
	auth_end(p);
	snprintf(p->apop_login, sizeof(p->apop_login), "%s", arg);
	for (size_t i = 0; i < 32; i++)
		p->apop_digest[i] = (char)tolower((unsigned char)digest[i]);
	p->apop_digest[32] = '\0';
	p->auth.apop_login = p->apop_login;
	p->auth.apop_stamp = p->stamp;
	p->auth.apop_digest = p->apop_digest;
	p->auth.check = 1;
	p->act = POP3_ACT_AUTH;
}

struct pop3_auth_req *
pop3_proto_auth_req(struct pop3_proto *p)
{
	return p->act == POP3_ACT_AUTH ? &p->auth : NULL;
}

/* ---- the mailbox ---- */

void
pop3_proto_opened(struct pop3_proto *p, struct mailstore_box *box, int in_use)
{
	if (p->act != POP3_ACT_OPEN)
		return;
	p->act = POP3_ACT_NONE;
	if (box == NULL) {
		if (in_use)
			reply(p, "-ERR [IN-USE] Mailbox is locked by another POP3 session.");
		else
			reply(p, "-ERR [SYS/TEMP] Couldn't open INBOX.");
		p->close = 1;
		p->st = ST_DONE;
		return;
	}
	p->box = box;
	p->n = mailstore_box_count(box);
	p->mflags = xcalloc(p->n ? p->n : 1, 1);
	p->uidvalidity = mailstore_box_uidvalidity(box);
	p->st = ST_TRANS;
	p->bad = 0;
	reply(p, "+OK Logged in.");
}

void
pop3_proto_open_refused(struct pop3_proto *p, const char *text)
{
	if (p->act != POP3_ACT_OPEN)
		return;
	p->act = POP3_ACT_NONE;
	reply(p, "-ERR %.400s", text);
	p->close = 1;
	p->st = ST_DONE;
}

static void
cmd_capa(struct pop3_proto *p)
{
	reply(p, "+OK");
	out_add(p, "CAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\nAUTH-RESP-CODE\r\n",
	    sizeof("CAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\nAUTH-RESP-CODE\r\n") - 1);
	if (p->st == ST_AUTHZ) {
		char sasl[128] = "SASL";
		size_t sl = 4;

		if (p->prm.user_pass && p->prm.sasl_cb != NULL && plain_ok(p))
			out_add(p, "USER\r\n", 6);
		for (size_t i = 0; i < sizeof(mech_order) / sizeof(mech_order[0]); i++)
			if (mech_usable(p, mech_order[i]))
				sl += (size_t)snprintf(sasl + sl, sizeof(sasl) - sl, " %s",
				    sasl_mech_name(mech_order[i]));
		if (sl > 4)
			reply(p, "%s", sasl);
		if (p->prm.tls_available && !p->tls)
			out_add(p, "STLS\r\n", 6);
	}
	out_add(p, ".\r\n", 3);
}

static void
cmd_stat(struct pop3_proto *p)
{
	size_t count = 0;
	unsigned long long size = 0;

	for (size_t i = 0; i < p->n; i++)
		if (!(p->mflags[i] & MSG_DELETED)) {
			count++;
			size += msg(p, i)->vsize;
		}
	reply(p, "+OK %zu %llu", count, size);
}

static void
cmd_list(struct pop3_proto *p, char *arg, int uidl)
{
	size_t i;

	if (arg != NULL) {
		if (msg_arg(p, arg, &i) < 0)
			return;
		if (uidl) {
			char u[17];

			pop3_uidl(msg(p, i)->uid, p->uidvalidity, u);
			reply(p, "+OK %zu %s", i + 1, u);
		} else {
			reply(p, "+OK %zu %llu", i + 1, (unsigned long long)msg(p, i)->vsize);
		}
		return;
	}
	if (uidl) {
		reply(p, "+OK");
	} else {
		size_t count = 0;
		unsigned long long size = 0;

		for (i = 0; i < p->n; i++)
			if (!(p->mflags[i] & MSG_DELETED)) {
				count++;
				size += msg(p, i)->vsize;
			}
		reply(p, "+OK %zu messages:", count);
		(void)size;
	}
	p->listing = uidl ? 2 : 1;
	p->list_next = 0;
	list_fill(p);
}

static void
cmd_retr(struct pop3_proto *p, char *arg, int top)
{
	size_t i;
	char *lines = NULL;
	long n = -1;

	if (top) {
		lines = arg ? strchr(arg, ' ') : NULL;
		if (lines == NULL) {
			bad_command(p, "Invalid parameters.");
			return;
		}
		*lines++ = '\0';
		if (*lines == '\0' || strspn(lines, "0123456789") != strlen(lines) ||
		    strlen(lines) > 9) {
			bad_command(p, "Invalid number of lines.");
			return;
		}
		n = strtol(lines, NULL, 10);
	}
	if (msg_arg(p, arg, &i) < 0)
		return;
	p->retr_idx = i;
	p->retr_top = n;
	p->act = POP3_ACT_RETR;
}

void
pop3_proto_retr_req(const struct pop3_proto *p, uint32_t *uid_r, long *top_r)
{
	*uid_r = p->act == POP3_ACT_RETR ? msg(p, p->retr_idx)->uid : 0;
	*top_r = p->retr_top;
}

void
pop3_proto_retr_opened(struct pop3_proto *p, int ok)
{
	if (p->act != POP3_ACT_RETR)
		return;
	if (!ok) {
		p->act = POP3_ACT_NONE;
		reply(p, "-ERR [SYS/TEMP] Couldn't read the message.");
		return;
	}
	if (p->retr_top < 0) {
		p->mflags[p->retr_idx] |= MSG_RETRIEVED;
		reply(p, "+OK %llu octets", (unsigned long long)msg(p, p->retr_idx)->vsize);
	} else {
		reply(p, "+OK");
	}
}

void
pop3_proto_retr_done(struct pop3_proto *p)
{
	if (p->act == POP3_ACT_RETR)
		p->act = POP3_ACT_NONE;
}

static void
cmd_quit(struct pop3_proto *p)
{
	if (p->st != ST_TRANS) {
		reply(p, "+OK Logging out.");
		p->close = 1;
		p->st = ST_DONE;
		return;
	}
	free(p->upd_exp);
	free(p->upd_seen);
	p->upd_exp = xcalloc(p->n ? p->n : 1, sizeof(uint32_t));
	p->upd_seen = xcalloc(p->n ? p->n : 1, sizeof(uint32_t));
	p->nexp = p->nseen = 0;
	for (size_t i = 0; i < p->n; i++) {
		const struct mailstore_msg *m = msg(p, i);

		if (p->mflags[i] & MSG_DELETED)
			p->upd_exp[p->nexp++] = m->uid;
		else if ((p->mflags[i] & MSG_RETRIEVED) && !(m->flags & MAILSTORE_SEEN))
			p->upd_seen[p->nseen++] = m->uid;
	}
	if (p->nexp == 0 && p->nseen == 0) {
		reply(p, "+OK Logging out.");
		p->close = 1;
		p->st = ST_DONE;
		return;
	}
	p->act = POP3_ACT_UPDATE;
	p->st = ST_DONE;
}

void
pop3_proto_update(const struct pop3_proto *p, const uint32_t **expunge_r, size_t *nexpunge_r,
    const uint32_t **seen_r, size_t *nseen_r)
{
	*expunge_r = p->upd_exp;
	*nexpunge_r = p->nexp;
	*seen_r = p->upd_seen;
	*nseen_r = p->nseen;
}

void
pop3_proto_update_done(struct pop3_proto *p, int ok)
{
	if (p->act != POP3_ACT_UPDATE)
		return;
	p->act = POP3_ACT_NONE;
	if (!ok)
		reply(p, "-ERR [SYS/TEMP] Couldn't delete all messages.");
	else if (p->nexp > 0)
		reply(p, "+OK Logging out, messages deleted.");
	else
		reply(p, "+OK Logging out.");
	p->close = 1;
}

/* ---- the command table ---- */

enum { IN_AUTHZ = 1, IN_TRANS = 2 };

static void c_capa(struct pop3_proto *p, char *a) { (void)a; cmd_capa(p); }
static void c_user(struct pop3_proto *p, char *a) { cmd_user(p, a); }
static void c_pass(struct pop3_proto *p, char *a) { cmd_pass(p, a); }
static void c_apop(struct pop3_proto *p, char *a) { cmd_apop(p, a); }
static void c_auth(struct pop3_proto *p, char *a) { cmd_auth(p, a); }
static void c_quit(struct pop3_proto *p, char *a) { (void)a; cmd_quit(p); }
static void c_stat(struct pop3_proto *p, char *a) { (void)a; cmd_stat(p); }
static void c_list(struct pop3_proto *p, char *a) { cmd_list(p, a, 0); }
static void c_uidl(struct pop3_proto *p, char *a) { cmd_list(p, a, 1); }
static void c_retr(struct pop3_proto *p, char *a) { cmd_retr(p, a, 0); }
static void c_top(struct pop3_proto *p, char *a) { cmd_retr(p, a, 1); }

static void
c_stls(struct pop3_proto *p, char *a)
{
	(void)a;
	if (p->tls) {
		reply(p, "-ERR TLS is already active.");
		return;
	}
	if (!p->prm.tls_available) {
		reply(p, "-ERR TLS support isn't enabled.");
		return;
	}
	reply(p, "+OK Begin TLS negotiation now.");
	p->act = POP3_ACT_STARTTLS;
}

static void
c_dele(struct pop3_proto *p, char *a)
{
	size_t i;

	if (msg_arg(p, a, &i) < 0)
		return;
	p->mflags[i] |= MSG_DELETED;
	reply(p, "+OK Marked to be deleted.");
}

static void
c_rset(struct pop3_proto *p, char *a)
{
	(void)a;
	for (size_t i = 0; i < p->n; i++)
		p->mflags[i] &= (unsigned char)~MSG_DELETED;
	reply(p, "+OK");
}

static void
c_noop(struct pop3_proto *p, char *a)
{
	(void)a;
	reply(p, "+OK");
}

static const struct {
	const char *name;
	unsigned states;
	int args;	/* 0 none, 1 optional, 2 required */
	void (*run)(struct pop3_proto *, char *);
} commands[] = {
	{ "CAPA", IN_AUTHZ | IN_TRANS, 0, c_capa },
	{ "QUIT", IN_AUTHZ | IN_TRANS, 0, c_quit },
	{ "USER", IN_AUTHZ, 2, c_user },
	{ "PASS", IN_AUTHZ, 1, c_pass },
	{ "APOP", IN_AUTHZ, 2, c_apop },
	{ "AUTH", IN_AUTHZ, 1, c_auth },
	{ "STLS", IN_AUTHZ, 0, c_stls },
	{ "STAT", IN_TRANS, 0, c_stat },
	{ "LIST", IN_TRANS, 1, c_list },
	{ "UIDL", IN_TRANS, 1, c_uidl },
	{ "RETR", IN_TRANS, 2, c_retr },
	{ "TOP", IN_TRANS, 2, c_top },
	{ "DELE", IN_TRANS, 2, c_dele },
	{ "RSET", IN_TRANS, 0, c_rset },
	{ "NOOP", IN_TRANS, 0, c_noop },
};

static void
command(struct pop3_proto *p, char *line)
{
	char *arg = strchr(line, ' ');
	unsigned in = p->st == ST_TRANS ? IN_TRANS : IN_AUTHZ, before;

	if (arg != NULL) {
		*arg++ = '\0';
		if (*arg == '\0')
			arg = NULL;
	}
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
		if (strcasecmp(commands[i].name, line) != 0)
			continue;
		if (!(commands[i].states & in))
			break;
		if (commands[i].args == 0 && arg != NULL) {
			bad_command(p, "Noise after command.");
			return;
		}
		if (commands[i].args == 2 && arg == NULL) {
			bad_command(p, "Missing argument.");
			return;
		}
		before = p->bad;
		commands[i].run(p, arg);
		if (p->bad == before)
			p->bad = 0;	/* the budget is for errors in a row, as Dovecot's */
		return;
	}
	bad_command(p, "Unknown command.");
}

/* ---- input ---- */

static size_t
line_max(const struct pop3_proto *p)
{
	if (p->st == ST_SASL)
		return POP3_AUTH_LINE_MAX;
	return p->st == ST_TRANS ? POP3_LINE_MAX : POP3_LINE_MAX_PRELOGIN;
}

static void
one_line(struct pop3_proto *p)
{
	char *line = p->line;
	size_t n = p->linelen;

	if (n > 0 && line[n - 1] == '\r')
		n--;
	line[n] = '\0';
	if (memchr(line, '\0', n) != NULL) {
		if (p->st == ST_SASL) {
			auth_end(p);
			p->st = ST_AUTHZ;
		}
		bad_command(p, "Invalid command.");
	} else if (p->st == ST_SASL) {
		sasl_line(p, line);
	} else {
		command(p, line);
	}
	explicit_bzero(p->line, p->linelen + 1);
	p->linelen = 0;
}

size_t
pop3_proto_input(struct pop3_proto *p, const char *buf, size_t len)
{
	size_t i = 0;

	while (i < len) {
		if (p->close || p->st == ST_DONE || p->st == ST_NEW || p->act != POP3_ACT_NONE ||
		    p->listing)
			break;
		const char *nl = memchr(buf + i, '\n', len - i);
		size_t take = nl ? (size_t)(nl - (buf + i)) : len - i;

		if (p->skipping) {
			i += take;
			if (nl != NULL) {
				i++;
				p->skipping = 0;
			}
			continue;
		}
		if (p->linelen + take > line_max(p)) {
			/* answer once, then drop the rest of the line */
			i += take;
			p->linelen = 0;
			if (p->st == ST_SASL) {
				auth_end(p);
				p->st = ST_AUTHZ;
			}
			bad_command(p, "Input line too long.");
			if (nl != NULL)
				i++;
			else
				p->skipping = 1;
			continue;
		}
		memcpy(p->line + p->linelen, buf + i, take);
		p->linelen += take;
		i += take;
		if (nl == NULL)
			break;
		i++;
		one_line(p);
	}
	return i;
}

/* ---- RETR/TOP streaming ---- */

void
pop3_stream_init(struct pop3_stream *s, int fd, long top)
{
	memset(s, 0, sizeof(*s));
	s->fd = fd;
	s->top = top;
	s->bol = 1;
	s->line_empty = 1;
}

int
pop3_stream_read(struct pop3_stream *s, char *out, size_t cap, size_t *len_r, int *done_r,
    const char **error_r)
{
	size_t o = 0;

	*done_r = 0;
	while (!s->done && cap - o >= 8) {
		unsigned char c;

		if (s->pos == s->len && !s->eof) {
			ssize_t r = read(s->fd, s->buf, sizeof(s->buf));

			if (r < 0) {
				if (errno == EINTR)
					continue;
				*error_r = "read error";
				return -1;
			}
			s->pos = 0;
			s->len = (size_t)r;
			if (r == 0)
				s->eof = 1;
		}
		if (s->eof) {
			/* a last line without its line end gets one */
			if (!s->bol) {
				out[o++] = '\r';
				out[o++] = '\n';
			}
			memcpy(out + o, ".\r\n", 3);
			o += 3;
			s->done = 1;
			break;
		}
		if (s->top >= 0 && s->in_body && s->bol && s->body_lines >= s->top) {
			s->eof = 1;	/* TOP: enough body lines */
			continue;
		}
		c = s->buf[s->pos++];
		if (s->bol && c == '.')
			out[o++] = '.';
		if (c == '\n') {
			if (!s->cr)
				out[o++] = '\r';
			out[o++] = '\n';
			if (s->in_body)
				s->body_lines++;
			else if (s->line_empty)
				s->in_body = 1;	/* the empty line ends the header */
			s->bol = 1;
			s->line_empty = 1;
			s->cr = 0;
			continue;
		}
		if (s->cr) {
			/* a CR not before LF is kept as it is, but ends emptiness */
			s->line_empty = 0;
		}
		out[o++] = (char)c;
		s->cr = c == '\r';
		if (c != '\r')
			s->line_empty = 0;
		s->bol = 0;
	}
	*len_r = o;
	*done_r = s->done;
	return 0;
}
