/*
 * imap_proto: the IMAP4rev1 session state machine (see imap_proto.h).
 *
 *   imap_proto_new/free/start      one per connection; start queues the greeting
 *   imap_proto_input               client bytes in (imap_parser), stops at an action
 *   imap_proto_output/_done        reply bytes out
 *   imap_proto_action + _done's    AUTH, STARTTLS, SELECT, LIST for the door
 *   imap_list_match                LIST patterns
 *
 * A command table pairs each command with the states it is allowed in and
 * the handler that answers it or asks for an action. The AUTHENTICATE
 * exchange reads raw lines itself (they are base64, not commands); all else
 * goes through the parser, whose limits widen after login. Never does I/O,
 * never logs peer bytes; LOGIN's password goes into a PLAIN exchange and
 * is wiped.
 */
#include "pop-imap-proxy/imap_proto.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/base64.h"
#include "common/xmalloc.h"
#include "pop-imap-proxy/imap_parser.h"
#include "storage-adapter/mailstore.h"

#define IMAP_AUTH_LINE_MAX 12288

enum imap_state { ST_NEW, ST_NOAUTH, ST_AUTH, ST_SELECTED, ST_LOGOUT };

#define IN_NOAUTH	(1u << ST_NOAUTH)
#define IN_AUTH		(1u << ST_AUTH)
#define IN_SELECTED	(1u << ST_SELECTED)
#define IN_ANY		(IN_NOAUTH | IN_AUTH | IN_SELECTED)
#define IN_LOGGED	(IN_AUTH | IN_SELECTED)

struct imap_proto {
	struct imap_params prm;
	enum imap_state st;
	enum imap_action act;
	struct imap_parser *parser;
	int tls;
	char *tls_peer;
	char tag[IMAP_TAG_MAX + 1];	/* of the command an action or exchange belongs to */
	/* AUTHENTICATE */
	struct imap_auth_req auth;
	char *auth_final;
	int in_sasl;
	char line[IMAP_AUTH_LINE_MAX + 1];
	size_t linelen;
	int skipping;
	char user[256];
	unsigned auth_failures;
	/* SELECT / LIST */
	struct mailstore_box *box;
	int readonly;
	char *select_name;
	int select_readonly;
	int unselecting;
	char *list_pattern;
	int lsub;
	int idling;
	/* output */
	char *out;
	size_t outlen, outcap, outoff;
	int close;
};

/* ---- output ---- */

static void
out_add(struct imap_proto *p, const char *s, size_t n)
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

static void reply(struct imap_proto *p, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
reply(struct imap_proto *p, const char *fmt, ...)
{
	char buf[1024];
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
imap_proto_output(const struct imap_proto *p, size_t *len_r)
{
	*len_r = p->outlen - p->outoff;
	return p->out + p->outoff;
}

void
imap_proto_output_done(struct imap_proto *p, size_t n)
{
	if (n > p->outlen - p->outoff)
		n = p->outlen - p->outoff;
	p->outoff += n;
	if (p->outoff == p->outlen)
		p->outoff = p->outlen = 0;
}

int
imap_proto_wants_close(const struct imap_proto *p)
{
	return p->close;
}

enum imap_action
imap_proto_action(const struct imap_proto *p)
{
	return p->act;
}

const char *
imap_proto_user(const struct imap_proto *p)
{
	return p->user;
}

unsigned
imap_proto_auth_failures(const struct imap_proto *p)
{
	return p->auth_failures;
}

/* ---- setup ---- */

struct imap_proto *
imap_proto_new(const struct imap_params *prm)
{
	struct imap_proto *p = xcalloc(1, sizeof(*p));
	struct imap_parser_limits lim;

	p->prm = *prm;
	imap_parser_limits_default(&lim, 0);
	p->parser = imap_parser_new(&lim);
	return p;
}

static void
auth_end(struct imap_proto *p)
{
	sasl_server_free(&p->auth.sasl);
	free(p->auth_final);
	p->auth_final = NULL;
	memset(&p->auth, 0, sizeof(p->auth));
	p->in_sasl = 0;
}

void
imap_proto_free(struct imap_proto **pp)
{
	struct imap_proto *p = *pp;

	if (p == NULL)
		return;
	auth_end(p);
	explicit_bzero(p->line, sizeof(p->line));
	imap_parser_free(&p->parser);
	free(p->tls_peer);
	free(p->select_name);
	free(p->list_pattern);
	free(p->out);
	free(p);
	*pp = NULL;
}

static int
plain_ok(const struct imap_proto *p)
{
	return p->tls || p->prm.auth_allow_plaintext;
}

static const unsigned mech_order[] = { AUTH_MECH_PLAIN, AUTH_MECH_LOGIN, AUTH_MECH_CRAM,
	AUTH_MECH_SCRAM, AUTH_MECH_EXTERNAL };

static int
mech_usable(const struct imap_proto *p, unsigned m)
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
capabilities(const struct imap_proto *p, char *buf, size_t cap)
{
	size_t n = (size_t)snprintf(buf, cap, "IMAP4rev1 SASL-IR LITERAL+ ID ENABLE IDLE");

	if (p->st == ST_NOAUTH) {
		if (p->prm.tls_available && !p->tls)
			n += (size_t)snprintf(buf + n, cap - n, " STARTTLS");
		if (!plain_ok(p))
			n += (size_t)snprintf(buf + n, cap - n, " LOGINDISABLED");
		for (size_t i = 0; i < sizeof(mech_order) / sizeof(mech_order[0]) && n < cap; i++)
			if (mech_usable(p, mech_order[i]))
				n += (size_t)snprintf(buf + n, cap - n, " AUTH=%s",
				    sasl_mech_name(mech_order[i]));
	} else {
		snprintf(buf + n, cap - n, " NAMESPACE UNSELECT CHILDREN SPECIAL-USE");
	}
}

void
imap_proto_start(struct imap_proto *p)
{
	char caps[512];

	p->st = ST_NOAUTH;
	capabilities(p, caps, sizeof(caps));
	if (p->prm.banner != NULL)
		reply(p, "* OK [CAPABILITY %s] %.300s", caps, p->prm.banner);
	else
		reply(p, "* OK [CAPABILITY %s] %.255s ready.", caps,
		    p->prm.myhostname ? p->prm.myhostname : "localhost");
}

void
imap_proto_set_tls(struct imap_proto *p, int active)
{
	p->tls = active;
	if (p->act == IMAP_ACT_STARTTLS)
		p->act = IMAP_ACT_NONE;
}

void
imap_proto_set_tls_peer(struct imap_proto *p, const char *identity)
{
	free(p->tls_peer);
	p->tls_peer = identity ? xstrdup(identity) : NULL;
}

/* ---- authentication ---- */

static void
logged_in(struct imap_proto *p, const char *user)
{
	struct imap_parser_limits lim;
	char caps[512];

	snprintf(p->user, sizeof(p->user), "%s", user);
	auth_end(p);
	p->st = ST_AUTH;
	imap_parser_limits_default(&lim, 1);
	imap_parser_set_limits(p->parser, &lim);
	capabilities(p, caps, sizeof(caps));
	reply(p, "%s OK [CAPABILITY %s] Logged in", p->tag, caps);
}

void
imap_proto_auth_done(struct imap_proto *p, int ok)
{
	const char *user;

	if (p->act != IMAP_ACT_AUTH)
		return;
	p->act = IMAP_ACT_NONE;
	if (ok == IMAP_AUTH_TEMPFAIL) {
		reply(p, "%s NO [UNAVAILABLE] Temporary authentication failure.", p->tag);
	} else if (ok && p->auth_final != NULL && p->auth_final[0] != '\0') {
		/* SCRAM's server-final data as a continuation; the client answers empty */
		reply(p, "+ %s", p->auth_final);
		p->in_sasl = 1;
		return;
	} else if (ok && (user = sasl_server_user(p->auth.sasl)) != NULL && *user != '\0') {
		logged_in(p, user);
		return;
	} else if (ok) {
		reply(p, "%s NO [UNAVAILABLE] Temporary authentication failure.", p->tag);
	} else {
		p->auth_failures++;
		reply(p, "%s NO [AUTHENTICATIONFAILED] Authentication failed.", p->tag);
	}
	auth_end(p);
}

struct imap_auth_req *
imap_proto_auth_req(struct imap_proto *p)
{
	return p->act == IMAP_ACT_AUTH ? &p->auth : NULL;
}

static void
auth_next(struct imap_proto *p, enum sasl_rc rc, const char *out64)
{
	if (out64 == NULL)
		out64 = "";
	switch (rc) {
	case SASL_CONTINUE:
		p->in_sasl = 1;
		reply(p, "+ %s", out64);
		return;
	case SASL_CHECK:
		p->in_sasl = 0;
		p->auth.check = 1;
		p->act = IMAP_ACT_AUTH;
		return;
	case SASL_OK:
	case SASL_FAIL:
		p->in_sasl = 0;
		p->auth.check = 0;
		p->auth.ok = rc == SASL_OK;
		if (rc == SASL_OK && out64[0] != '\0')
			p->auth_final = xstrdup(out64);
		p->act = IMAP_ACT_AUTH;
		return;
	case SASL_BAD_BASE64:
		auth_end(p);
		reply(p, "%s BAD Invalid base64 data.", p->tag);
		return;
	case SASL_CANCELLED:
		auth_end(p);
		reply(p, "%s BAD Authentication aborted by client.", p->tag);
		return;
	}
}

static void
sasl_line(struct imap_proto *p, const char *line)
{
	const char *out64 = "";

	if (p->auth_final != NULL) {
		if (line[0] == '\0' || strcmp(line, "=") == 0) {
			logged_in(p, sasl_server_user(p->auth.sasl));
		} else {
			auth_end(p);
			reply(p, "%s BAD Authentication aborted by client.", p->tag);
		}
		return;
	}
	enum sasl_rc rc = sasl_server_step64(p->auth.sasl, line, &out64);

	auth_next(p, rc, out64);	/* out64 is set by the step: call it first */
}

static int
sasl_begin(struct imap_proto *p, unsigned mech)
{
	struct sasl_params sp = { p->prm.sasl_cb, p->prm.myhostname, p->tls_peer };

	auth_end(p);
	p->auth.sasl = sasl_server_new(mech, &sp);
	return p->auth.sasl != NULL ? 0 : -1;
}

static void
c_authenticate(struct imap_proto *p, const struct imap_cmd *c)
{
	unsigned mech = authmech_from_name(c->args[0].str);
	const char *out64 = "";
	enum sasl_rc rc;

	if ((mech == AUTH_MECH_PLAIN || mech == AUTH_MECH_LOGIN) &&
	    (p->prm.auth_mechs & mech) && !plain_ok(p)) {
		reply(p, "%s NO [PRIVACYREQUIRED] Plaintext authentication disallowed on "
		    "non-secure (SSL/TLS) connections.", c->tag);
		return;
	}
	if (mech == 0 || !mech_usable(p, mech) || sasl_begin(p, mech) < 0) {
		reply(p, "%s NO Unsupported authentication mechanism.", c->tag);
		return;
	}
	rc = sasl_server_step64(p->auth.sasl, c->nargs == 2 ? c->args[1].str : NULL, &out64);
	auth_next(p, rc, out64);
}

static void
c_login(struct imap_proto *p, const struct imap_cmd *c)
{
	const struct imap_arg *u = &c->args[0], *pw = &c->args[1];
	size_t n;
	unsigned char *raw;
	char *b64;
	const char *out64 = "";

	if (!p->prm.login || p->prm.sasl_cb == NULL) {
		reply(p, "%s NO [CANNOT] LOGIN is disabled; use AUTHENTICATE.", c->tag);
		return;
	}
	if (!plain_ok(p)) {
		reply(p, "%s NO [PRIVACYREQUIRED] Plaintext authentication disallowed on "
		    "non-secure (SSL/TLS) connections.", c->tag);
		return;
	}
	if (memchr(u->str, '\0', u->len) != NULL || memchr(pw->str, '\0', pw->len) != NULL ||
	    u->len == 0 || u->len > 255 || pw->len > 1024) {
		p->auth_failures++;
		reply(p, "%s NO [AUTHENTICATIONFAILED] Authentication failed.", c->tag);
		return;
	}
	n = 2 + u->len + pw->len;
	raw = xmalloc(n);
	raw[0] = '\0';
	memcpy(raw + 1, u->str, u->len);
	raw[1 + u->len] = '\0';
	memcpy(raw + 2 + u->len, pw->str, pw->len);
	b64 = xmalloc(BASE64_ENCODED_LEN(n) + 1);
	(void)base64_encode(raw, n, b64);
	explicit_bzero(raw, n);
	free(raw);
	if (sasl_begin(p, AUTH_MECH_PLAIN) < 0) {
		reply(p, "%s NO [UNAVAILABLE] Temporary authentication failure.", c->tag);
	} else {
		enum sasl_rc rc = sasl_server_step64(p->auth.sasl, b64, &out64);

		auth_next(p, rc, out64);
		if (p->in_sasl) {
			/* PLAIN with a full response never continues */
			auth_end(p);
			reply(p, "%s NO [UNAVAILABLE] Temporary authentication failure.", c->tag);
		}
	}
	explicit_bzero(b64, strlen(b64));
	free(b64);
}

/* ---- mailboxes ---- */

static int
name_arg(const struct imap_arg *a, const char **r)
{
	if (memchr(a->str, '\0', a->len) != NULL)
		return -1;
	*r = a->str;
	return 0;
}

static void
c_select(struct imap_proto *p, const struct imap_cmd *c)
{
	const char *name;

	if (name_arg(&c->args[0], &name) < 0) {
		reply(p, "%s NO [NONEXISTENT] Mailbox doesn't exist.", c->tag);
		return;
	}
	free(p->select_name);
	p->select_name = xstrdup(name);
	p->select_readonly = strcmp(c->name, "EXAMINE") == 0;
	/* RFC 3501 §6.3.1: a SELECT deselects first, even when it fails */
	p->st = ST_AUTH;
	p->box = NULL;
	p->unselecting = 0;
	p->act = IMAP_ACT_SELECT;
}

static void
c_unselect(struct imap_proto *p, const struct imap_cmd *c)
{
	(void)c;
	free(p->select_name);
	p->select_name = NULL;
	p->st = ST_AUTH;
	p->box = NULL;
	p->unselecting = 1;
	p->act = IMAP_ACT_SELECT;
}

void
imap_proto_select_req(const struct imap_proto *p, const char **name_r, int *readonly_r)
{
	*name_r = p->select_name;
	*readonly_r = p->select_readonly;
}

static void
flag_list(struct imap_proto *p, struct mailstore_box *box, char *buf, size_t cap, int star)
{
	size_t n = (size_t)snprintf(buf, cap, "\\Answered \\Flagged \\Deleted \\Seen \\Draft");

	for (unsigned i = 0; i < MAX_MAILSTORE_KEYWORDS && n < cap; i++) {
		const char *k = mailstore_box_keyword(box, i);

		if (k != NULL)
			n += (size_t)snprintf(buf + n, cap - n, " %s", k);
	}
	if (star && n < cap)
		snprintf(buf + n, cap - n, " \\*");
	(void)p;
}

void
imap_proto_selected(struct imap_proto *p, struct mailstore_box *box, const char *error)
{
	char flags[MAX_MAILSTORE_KEYWORDS * (MAX_MAILSTORE_KEYWORD_LEN + 1) + 64];
	size_t count, recent = 0, unseen = 0;

	if (p->act != IMAP_ACT_SELECT)
		return;
	p->act = IMAP_ACT_NONE;
	if (p->unselecting) {
		p->unselecting = 0;
		reply(p, "%s OK Unselect completed.", p->tag);
		return;
	}
	if (box == NULL) {
		reply(p, "%s NO %s", p->tag, error ? error : "[NONEXISTENT] Mailbox doesn't exist.");
		return;
	}
	p->box = box;
	p->readonly = p->select_readonly;
	p->st = ST_SELECTED;
	count = mailstore_box_count(box);
	for (size_t i = 0; i < count; i++) {
		const struct mailstore_msg *m = mailstore_box_msg(box, i);

		if (m->recent)
			recent++;
		if (unseen == 0 && !(m->flags & MAILSTORE_SEEN))
			unseen = i + 1;
	}
	flag_list(p, box, flags, sizeof(flags), 0);
	reply(p, "* FLAGS (%s)", flags);
	if (p->readonly) {
		reply(p, "* OK [PERMANENTFLAGS ()] Read-only mailbox.");
	} else {
		flag_list(p, box, flags, sizeof(flags), 1);
		reply(p, "* OK [PERMANENTFLAGS (%s)] Flags permitted.", flags);
	}
	reply(p, "* %zu EXISTS", count);
	reply(p, "* %zu RECENT", recent);
	if (unseen > 0)
		reply(p, "* OK [UNSEEN %zu] First unseen.", unseen);
	reply(p, "* OK [UIDVALIDITY %u] UIDs valid", (unsigned)mailstore_box_uidvalidity(box));
	reply(p, "* OK [UIDNEXT %u] Predicted next UID", (unsigned)mailstore_box_uidnext(box));
	reply(p, "%s OK [%s] %s completed.", p->tag, p->readonly ? "READ-ONLY" : "READ-WRITE",
	    p->readonly ? "Examine" : "Select");
}

/* '%' matches within one level, '*' across levels */
int
imap_list_match(const char *pat, const char *name)
{
	for (; *pat != '\0'; pat++, name++) {
		if (*pat == '*' || *pat == '%') {
			for (const char *s = name;; s++) {
				if (imap_list_match(pat + 1, s))
					return 1;
				if (*s == '\0' || (*pat == '%' && *s == '.'))
					return 0;
			}
		}
		if (*name == '\0' || *pat != *name)
			return 0;
	}
	return *name == '\0';
}

static void
c_list(struct imap_proto *p, const struct imap_cmd *c)
{
	const char *ref, *pat;

	if (c->nargs != 2 || c->args[0].type == IMAP_ARG_LIST ||
	    c->args[1].type == IMAP_ARG_LIST) {
		reply(p, "%s NO [CANNOT] LIST-EXTENDED is not supported yet.", c->tag);
		return;
	}
	if (name_arg(&c->args[0], &ref) < 0 || name_arg(&c->args[1], &pat) < 0) {
		reply(p, "%s OK List completed.", c->tag);
		return;
	}
	p->lsub = strcmp(c->name, "LSUB") == 0;
	if (*pat == '\0' && !p->lsub) {
		/* the hierarchy separator */
		reply(p, "* LIST (\\Noselect) \".\" \"\"");
		reply(p, "%s OK List completed.", c->tag);
		return;
	}
	free(p->list_pattern);
	p->list_pattern = xasprintf("%s%s", ref, pat);
	/* INBOX is case-insensitive (RFC 3501 §5.1) */
	if (strncasecmp(p->list_pattern, "INBOX", 5) == 0 &&
	    (p->list_pattern[5] == '\0' || p->list_pattern[5] == '.'))
		memcpy(p->list_pattern, "INBOX", 5);
	p->act = IMAP_ACT_LIST;
}

static void
put_name(struct imap_proto *p, const char *prefix, const char *name)
{
	int plain = 1;

	for (const char *s = name; *s != '\0'; s++)
		if ((unsigned char)*s < 0x20 || (unsigned char)*s >= 0x7f)
			plain = 0;
	if (plain) {
		char q[2 * MAX_MAILSTORE_FOLDER_NAME + 3];
		size_t n = 0;

		q[n++] = '"';
		for (const char *s = name; *s != '\0' && n < sizeof(q) - 3; s++) {
			if (*s == '"' || *s == '\\')
				q[n++] = '\\';
			q[n++] = *s;
		}
		q[n++] = '"';
		q[n] = '\0';
		reply(p, "%s%s", prefix, q);
	} else {
		reply(p, "%s{%zu}", prefix, strlen(name));
		out_add(p, name, strlen(name));
		out_add(p, "\r\n", 2);
	}
}

static const char *
special_use(const char *name)
{
	static const char *const su[][2] = { { "Sent", "\\Sent" }, { "Drafts", "\\Drafts" },
		{ "Junk", "\\Junk" }, { "Trash", "\\Trash" } };

	for (size_t i = 0; i < 4; i++)
		if (strcmp(name, su[i][0]) == 0)
			return su[i][1];
	return NULL;
}

void
imap_proto_list_done(struct imap_proto *p, char *const *names, size_t n, int ok)
{
	if (p->act != IMAP_ACT_LIST)
		return;
	p->act = IMAP_ACT_NONE;
	if (!ok) {
		reply(p, "%s NO [SERVERBUG] Couldn't list the folders.", p->tag);
		return;
	}
	for (size_t i = 0; i < n; i++) {
		char attrs[64], prefix[128];
		size_t len = strlen(names[i]);
		int children = 0;
		const char *su;

		if (!imap_list_match(p->list_pattern, names[i]))
			continue;
		for (size_t k = 0; k < n; k++)
			if (strncmp(names[k], names[i], len) == 0 && names[k][len] == '.')
				children = 1;
		su = p->lsub ? NULL : special_use(names[i]);
		snprintf(attrs, sizeof(attrs), "%s%s%s", children ? "\\HasChildren" : "\\HasNoChildren",
		    su ? " " : "", su ? su : "");
		snprintf(prefix, sizeof(prefix), "* %s (%s) \".\" ", p->lsub ? "LSUB" : "LIST", attrs);
		put_name(p, prefix, names[i]);
	}
	reply(p, "%s OK %s completed.", p->tag, p->lsub ? "Lsub" : "List");
}

/* ---- simple commands ---- */

static void
c_capability(struct imap_proto *p, const struct imap_cmd *c)
{
	char caps[512];

	capabilities(p, caps, sizeof(caps));
	reply(p, "* CAPABILITY %s", caps);
	reply(p, "%s OK Capability completed.", c->tag);
}

static void
c_noop(struct imap_proto *p, const struct imap_cmd *c)
{
	reply(p, "%s OK %s completed.", c->tag, strcmp(c->name, "CHECK") == 0 ? "Check" : "NOOP");
}

static void
c_logout(struct imap_proto *p, const struct imap_cmd *c)
{
	reply(p, "* BYE Logging out");
	reply(p, "%s OK Logout completed.", c->tag);
	p->st = ST_LOGOUT;
	p->close = 1;
}

static void
c_starttls(struct imap_proto *p, const struct imap_cmd *c)
{
	if (p->tls) {
		reply(p, "%s BAD TLS is already active.", c->tag);
		return;
	}
	if (!p->prm.tls_available) {
		reply(p, "%s BAD TLS support isn't enabled.", c->tag);
		return;
	}
	reply(p, "%s OK Begin TLS negotiation now.", c->tag);
	p->act = IMAP_ACT_STARTTLS;
}

static void
c_namespace(struct imap_proto *p, const struct imap_cmd *c)
{
	reply(p, "* NAMESPACE ((\"\" \".\")) NIL NIL");
	reply(p, "%s OK Namespace completed.", c->tag);
}

static void
c_id(struct imap_proto *p, const struct imap_cmd *c)
{
	/* no software name or version, for the banner's reason */
	reply(p, "* ID NIL");
	reply(p, "%s OK ID completed.", c->tag);
}

static void
c_enable(struct imap_proto *p, const struct imap_cmd *c)
{
	reply(p, "* ENABLED");
	reply(p, "%s OK Enabled.", c->tag);
}

static void
c_idle(struct imap_proto *p, const struct imap_cmd *c)
{
	snprintf(p->tag, sizeof(p->tag), "%s", c->tag);
	p->idling = 1;
	imap_parser_set_idle(p->parser);
	reply(p, "+ idling");
}

static void
c_later(struct imap_proto *p, const struct imap_cmd *c)
{
	reply(p, "%s NO [CANNOT] %s is not implemented yet.", c->tag, c->name);
}

static const struct {
	const char *name;
	unsigned states;
	void (*run)(struct imap_proto *, const struct imap_cmd *);
} commands[] = {
	{ "CAPABILITY", IN_ANY, c_capability }, { "NOOP", IN_ANY, c_noop },
	{ "LOGOUT", IN_ANY, c_logout }, { "ID", IN_ANY, c_id },
	{ "STARTTLS", IN_NOAUTH, c_starttls }, { "LOGIN", IN_NOAUTH, c_login },
	{ "AUTHENTICATE", IN_NOAUTH, c_authenticate },
	{ "SELECT", IN_LOGGED, c_select }, { "EXAMINE", IN_LOGGED, c_select },
	{ "LIST", IN_LOGGED, c_list }, { "LSUB", IN_LOGGED, c_list },
	{ "NAMESPACE", IN_LOGGED, c_namespace }, { "ENABLE", IN_LOGGED, c_enable },
	{ "IDLE", IN_LOGGED, c_idle }, { "UNSELECT", IN_SELECTED, c_unselect },
	{ "CHECK", IN_SELECTED, c_noop },
	{ "CREATE", IN_LOGGED, c_later }, { "DELETE", IN_LOGGED, c_later },
	{ "RENAME", IN_LOGGED, c_later }, { "SUBSCRIBE", IN_LOGGED, c_later },
	{ "UNSUBSCRIBE", IN_LOGGED, c_later }, { "STATUS", IN_LOGGED, c_later },
	{ "APPEND", IN_LOGGED, c_later },
	{ "CLOSE", IN_SELECTED, c_later }, { "EXPUNGE", IN_SELECTED, c_later },
	{ "SEARCH", IN_SELECTED, c_later }, { "FETCH", IN_SELECTED, c_later },
	{ "STORE", IN_SELECTED, c_later }, { "COPY", IN_SELECTED, c_later },
	{ "MOVE", IN_SELECTED, c_later },
};

static void
command(struct imap_proto *p, const struct imap_cmd *c)
{
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
		if (strcmp(commands[i].name, c->name) != 0)
			continue;
		if (!(commands[i].states & (1u << p->st))) {
			if (p->st == ST_AUTH && (commands[i].states & IN_SELECTED))
				reply(p, "%s BAD No mailbox selected.", c->tag);
			else if (p->st == ST_NOAUTH)
				reply(p, "%s BAD Please log in first.", c->tag);
			else
				reply(p, "%s BAD Command not permitted in this state.", c->tag);
			return;
		}
		snprintf(p->tag, sizeof(p->tag), "%s", c->tag);
		commands[i].run(p, c);
		return;
	}
	reply(p, "%s BAD Unknown command.", c->tag);
}

/* ---- input ---- */

/* AUTHENTICATE response lines: raw, up to IMAP_AUTH_LINE_MAX */
static size_t
sasl_input(struct imap_proto *p, const char *buf, size_t len)
{
	const char *nl = memchr(buf, '\n', len);
	size_t take = nl ? (size_t)(nl - buf) : len;

	if (p->skipping) {
		if (nl != NULL)
			p->skipping = 0;
		return nl ? take + 1 : take;
	}
	if (p->linelen + take > IMAP_AUTH_LINE_MAX) {
		auth_end(p);
		p->linelen = 0;
		reply(p, "%s BAD Authentication response too long.", p->tag);
		if (nl == NULL)
			p->skipping = 1;
		return nl ? take + 1 : take;
	}
	memcpy(p->line + p->linelen, buf, take);
	p->linelen += take;
	if (nl == NULL)
		return take;
	if (p->linelen > 0 && p->line[p->linelen - 1] == '\r')
		p->linelen--;
	p->line[p->linelen] = '\0';
	if (memchr(p->line, '\0', p->linelen) != NULL) {
		auth_end(p);
		reply(p, "%s BAD Invalid base64 data.", p->tag);
	} else {
		sasl_line(p, p->line);
	}
	explicit_bzero(p->line, p->linelen + 1);
	p->linelen = 0;
	return take + 1;
}

size_t
imap_proto_input(struct imap_proto *p, const char *buf, size_t len)
{
	size_t i = 0;

	while (i < len && p->act == IMAP_ACT_NONE && !p->close && p->st != ST_NEW) {
		struct imap_event ev;
		size_t n;

		if (p->in_sasl) {
			i += sasl_input(p, buf + i, len - i);
			continue;
		}
		n = imap_parser_feed(p->parser, buf + i, len - i, &ev);
		i += n;
		switch (ev.type) {
		case IMAP_EV_NONE:
			break;
		case IMAP_EV_REPLY:
			if (p->idling) {
				/* not DONE: the IDLE command ends with a tagged BAD */
				p->idling = 0;
				reply(p, "%s BAD Expected DONE.", p->tag);
				break;
			}
			/* FALLTHROUGH */
			__attribute__((fallthrough));
		case IMAP_EV_CONTINUE:
			out_add(p, ev.reply, strlen(ev.reply));
			break;
		case IMAP_EV_DISCONNECT:
			out_add(p, ev.reply, strlen(ev.reply));
			p->close = 1;
			break;
		case IMAP_EV_IDLE_DONE:
			p->idling = 0;
			reply(p, "%s OK Idle completed.", p->tag);
			break;
		case IMAP_EV_COMMAND:
			command(p, ev.cmd);
			break;
		}
		if (n == 0 && ev.type == IMAP_EV_NONE)
			break;
	}
	return i;
}
