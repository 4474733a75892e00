/*
 * imap_proto: the IMAP4rev1 session state machine (see imap_proto.h).
 *
 *   imap_proto_new/free/start      one per connection; start queues the greeting
 *   imap_proto_input               client bytes in (imap_parser), stops at an action
 *   imap_proto_exec/_done          the store work of a command, on a job thread
 *   imap_list_match                LIST patterns
 *
 * A command table pairs each command with the states it is allowed in and
 * the handler that answers it or asks for an action. Commands that touch the
 * store set an exec function (x_*) and IMAP_ACT_EXEC; the parsed command
 * stays valid meanwhile because input is paused. What exec writes goes to a
 * queue of its own, joined to the output queue by exec_done on the loop, so
 * the door may send earlier output while a job runs.
 *
 * The client's view of the selected folder (UID, flags, keywords per
 * sequence number) is kept apart from the store's snapshot: after a sync
 * the differences become untagged EXISTS, RECENT, FETCH FLAGS and, when
 * allowed (not during FETCH, STORE or SEARCH by sequence number, as Dovecot
 * does), EXPUNGE.
 *
 * The output queue and FETCH's item writer are imap_fetch.c (the session's
 * struct is in imap_proto_int.h). FETCH's message side (ENVELOPE,
 * BODYSTRUCTURE, sections) and SEARCH are imap_mime/imap_search; a section
 * that is the file's own bytes goes out as a file range, one that needs
 * converting (bare LF, NUL) as a generator segment filled 64 KiB at a time
 * when the door asks. FETCH runs in batches (256 KiB of output in memory,
 * 4 MiB of message files or 32 of them). APPEND streams: the parser hands
 * the message out in pieces, gathered to 64 KiB and written by an exec.
 * Answers follow Dovecot 2.3's texts (tests/integration/
 * test_imap_session_dovecot.py compares them byte for byte).
 *
 * The AUTHENTICATE exchange reads raw lines itself (they are base64, not
 * commands); all else goes through the parser, whose limits widen after
 * login. Never logs peer bytes; LOGIN's password goes into a PLAIN exchange
 * and is wiped.
 */
#include "pop-imap-proxy/imap_proto_int.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/base64.h"
#include "common/xmalloc.h"
#include "pop-imap-proxy/imap_mime.h"
#include "pop-imap-proxy/imap_parser.h"
#include "pop-imap-proxy/imap_search.h"
#include "storage-adapter/mailstore.h"

#define IMAP_AUTH_LINE_MAX 12288
#define BATCH_BYTES (256u << 10)	/* an exec batch of FETCH stops past this output in memory */
#define BATCH_FILE_BYTES (4u << 20)	/* ... or this much of message files (the
					   first batch: BATCH_BYTES, for the first byte soon) */
#define BATCH_FILES 32			/* ... or this many file ranges */

#define IN_NOAUTH	(1u << ST_NOAUTH)
#define IN_AUTH		(1u << ST_AUTH)
#define IN_SELECTED	(1u << ST_SELECTED)
#define IN_ANY		(IN_NOAUTH | IN_AUTH | IN_SELECTED)
#define IN_LOGGED	(IN_AUTH | IN_SELECTED)

/* ---- output (the queue itself is imap_fetch.c) ---- */

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
	imap_out_add(p, buf, (size_t)n);
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

/* ---- exec ---- */

static void
want_exec(struct imap_proto *p, const struct imap_cmd *c, exec_fn *fn)
{
	p->cmd = c;
	p->exec = fn;
	p->after = NULL;
	p->more = 0;
	p->cursor = 0;
	p->act = IMAP_ACT_EXEC;
}

void
imap_proto_exec(struct imap_proto *p)
{
	if (p->act != IMAP_ACT_EXEC || p->exec == NULL)
		return;
	p->in_exec = 1;
	p->more = 0;
	p->exec(p);
	p->in_exec = 0;
}

void
imap_proto_exec_done(struct imap_proto *p)
{
	struct segq *x = &p->xq;

	if (p->act != IMAP_ACT_EXEC)
		return;
	imap_segq_join(&p->q, x);
	if (!p->more) {
		exec_fn *after = p->after;

		p->act = IMAP_ACT_NONE;
		p->exec = NULL;
		p->cmd = NULL;
		p->after = NULL;
		if (after != NULL && !p->logout_pending)
			after(p);
		if (p->logout_pending) {
			if (p->bye != NULL)
				reply(p, "* BYE %.200s", p->bye);
			p->close = 1;
		}
	}
}

/* ---- setup ---- */

struct imap_proto *
imap_proto_new(const struct imap_params *prm)
{
	struct imap_proto *p = xcalloc(1, sizeof(*p));
	struct imap_parser_limits lim;

	p->prm = *prm;
	p->store_root = xstrdup(prm->store_root ? prm->store_root : "");
	p->prm.store_root = p->store_root;
	imap_parser_limits_default(&lim, 0);
	p->parser = imap_parser_new(&lim);
	imap_parser_set_append_stream(p->parser, 1);
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

static void box_close(struct imap_proto *p);
static void append_cleanup(struct imap_proto *p);

void
imap_proto_free(struct imap_proto **pp)
{
	struct imap_proto *p = *pp;

	if (p == NULL)
		return;
	auth_end(p);
	if (p->line != NULL)
		explicit_bzero(p->line, IMAP_AUTH_LINE_MAX + 1);
	free(p->line);
	imap_parser_free(&p->parser);
	append_cleanup(p);
	box_close(p);
	mailstore_free(&p->ms);
	free(p->tls_peer);
	free(p->store_root);
	free(p->bye);
	imap_segq_clear(&p->q);
	imap_segq_clear(&p->xq);
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

#define CAPS_COMMON "IMAP4rev1 SASL-IR LITERAL+ ID ENABLE IDLE"
#define CAPS_LOGGED " NAMESPACE UNSELECT CHILDREN SPECIAL-USE UIDPLUS MOVE ESEARCH"

static void
capabilities(const struct imap_proto *p, char *buf, size_t cap)
{
	size_t n = (size_t)snprintf(buf, cap, CAPS_COMMON);

	if (p->st == ST_NOAUTH) {
		if (p->prm.tls_available && !p->tls)
			n += (size_t)snprintf(buf + n, cap - n, " STARTTLS");
		/* RFC 3501 6.2.3: LOGIN refused, for want of TLS or of PLAIN (Dovecot's rule) */
		if (!plain_ok(p) || !p->prm.login || p->prm.sasl_cb == NULL)
			n += (size_t)snprintf(buf + n, cap - n, " LOGINDISABLED");
		for (size_t i = 0; i < sizeof(mech_order) / sizeof(mech_order[0]) && n < cap; i++)
			if (mech_usable(p, mech_order[i]))
				n += (size_t)snprintf(buf + n, cap - n, " AUTH=%s",
				    sasl_mech_name(mech_order[i]));
	} else {
		snprintf(buf + n, cap - n, CAPS_LOGGED);
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

static exec_fn x_login;
static exec_fn x_idle_sync;

static void
logged_in(struct imap_proto *p, const char *user)
{
	struct imap_parser_limits lim;

	snprintf(p->user, sizeof(p->user), "%s", user);
	auth_end(p);
	p->st = ST_AUTH;
	imap_parser_limits_default(&lim, 1);
	imap_parser_set_limits(p->parser, &lim);
	/* the store is opened and the tagged OK written by the exec */
	want_exec(p, NULL, x_login);
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

const char *
imap_proto_tag(const struct imap_proto *p)
{
	return p->tag;
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

/* ---- the store and the selected folder ---- */

static const struct {
	const char *name, *use;
} special[] = {
	{ "Drafts", "\\Drafts" }, { "Junk", "\\Junk" }, { "Sent", "\\Sent" }, { "Trash", "\\Trash" },
};
#define NSPECIAL (sizeof(special) / sizeof(special[0]))

static const char *
special_use(const char *name)
{
	for (size_t i = 0; i < NSPECIAL; i++)
		if (strcmp(name, special[i].name) == 0)
			return special[i].use;
	return NULL;
}

static void
x_login(struct imap_proto *p)
{
	const char *err;
	char caps[512];

	if (mailstore_open(p->store_root, p->user, &p->ms, &err) < 0) {
		reply(p, "* BYE [SERVERBUG] Internal error occurred. Refer to server log for more "
		    "information.");
		reply(p, "%s NO [SERVERBUG] Internal error occurred.", p->tag);
		p->logout_pending = 1;
		p->st = ST_LOGOUT;
		return;
	}
	/* RFC 6154 folders, as Dovecot's default config creates and subscribes them */
	for (size_t i = 0; i < NSPECIAL; i++)
		if (mailstore_folder_ensure(p->ms, special[i].name, &err) < 0)
			break;
	capabilities(p, caps, sizeof(caps));
	reply(p, "%s OK [CAPABILITY %s] Logged in", p->tag, caps);
}

static void
box_close(struct imap_proto *p)
{
	mailstore_box_close(&p->box);
	free(p->view);
	p->view = NULL;
	p->nview = p->capview = 0;
	p->told = 0;
	p->recent_told = 0;
	p->idling = 0;
	if (p->st == ST_SELECTED)
		p->st = ST_AUTH;
}

static void
view_push(struct imap_proto *p, const struct mailstore_msg *m)
{
	struct vmsg *v;

	if (p->nview == p->capview) {
		p->capview = p->capview ? p->capview * 2 : 64;
		p->view = xrealloc(p->view, p->capview * sizeof(*p->view));
	}
	v = &p->view[p->nview++];
	memset(v, 0, sizeof(*v));
	v->uid = m->uid;
	v->flags = m->flags;
	v->kw = m->keywords;
	v->recent = m->recent;
}

static size_t
view_recent(const struct imap_proto *p)
{
	size_t r = 0;

	for (size_t i = 0; i < p->nview; i++)
		if (p->view[i].recent && !p->view[i].gone)
			r++;
	return r;
}

/* "\Answered ... \Recent kw1 kw2", Dovecot's order */
void
imap_flags_str(struct imap_proto *p, struct str *b, unsigned flags, uint32_t kw, int recent)
{
	static const char *const names[] = { "\\Answered", "\\Flagged", "\\Deleted", "\\Seen",
		"\\Draft" };
	size_t start = b->n;

	for (unsigned i = 0; i < 5; i++)
		if (flags & (1u << i))
			imap_str_add(b, "%s%s", b->n > start ? " " : "", names[i]);
	if (recent)
		imap_str_add(b, "%s\\Recent", b->n > start ? " " : "");
	for (unsigned i = 0; i < MAX_MAILSTORE_KEYWORDS; i++) {
		const char *k;

		if ((kw & (1u << i)) && p->box && (k = mailstore_box_keyword(p->box, i)) != NULL)
			imap_str_add(b, "%s%s", b->n > start ? " " : "", k);
	}
}

static uint32_t
kw_slots(const struct imap_proto *p)
{
	uint32_t m = 0;

	for (unsigned i = 0; i < MAX_MAILSTORE_KEYWORDS; i++)
		if (mailstore_box_keyword(p->box, i) != NULL)
			m |= 1u << i;
	return m;
}

static void flag_list(struct imap_proto *p, char *buf, size_t cap, int star);

/* new keywords in the folder: FLAGS and PERMANENTFLAGS again, as Dovecot */
static void
kw_announce(struct imap_proto *p)
{
	char flags[MAX_MAILSTORE_KEYWORDS * (MAX_MAILSTORE_KEYWORD_LEN + 1) + 64];
	uint32_t m;

	if (p->box == NULL || (m = kw_slots(p)) == p->kwmask)
		return;
	p->kwmask = m;
	flag_list(p, flags, sizeof(flags), 0);
	reply(p, "* FLAGS (%s)", flags);
	if (p->readonly) {
		reply(p, "* OK [PERMANENTFLAGS ()] Read-only mailbox.");
	} else {
		flag_list(p, flags, sizeof(flags), 1);
		reply(p, "* OK [PERMANENTFLAGS (%s)] Flags permitted.", flags);
	}
}

static void
fetch_flags_line(struct imap_proto *p, size_t i, int with_uid)
{
	struct str b = { 0 };
	const struct vmsg *v = &p->view[i];

	imap_str_add(&b, "* %zu FETCH (", i + 1);
	if (with_uid)
		imap_str_add(&b, "UID %u ", (unsigned)v->uid);
	imap_str_add(&b, "FLAGS (");
	imap_flags_str(p, &b, v->flags, v->kw, v->recent);
	imap_str_add(&b, "))\r\n");
	imap_out_str(p, &b);
}

/*
 * Bring the client's view up to the store: flag changes as FETCH, new mail
 * as EXISTS/RECENT, expunges as EXPUNGE when EXPUNGE_OK (else they wait).
 */
static void
view_sync(struct imap_proto *p, int expunge_ok)
{
	size_t n, bi = 0;
	uint32_t last;
	const char *err;

	if (p->box == NULL)
		return;
	if (mailstore_box_sync(p->box, &err) < 0)
		err = NULL;	/* the snapshot stays; the next sync retries */
	kw_announce(p);
	n = mailstore_box_count(p->box);
	for (size_t i = 0; i < p->nview; i++) {
		struct vmsg *v = &p->view[i];
		const struct mailstore_msg *m;

		if (v->gone)
			continue;
		while (bi < n && mailstore_box_msg(p->box, bi)->uid < v->uid)
			bi++;
		m = bi < n ? mailstore_box_msg(p->box, bi) : NULL;
		if (m == NULL || m->uid != v->uid) {
			v->gone = 1;
			continue;
		}
		if (m->flags != v->flags || m->keywords != v->kw) {
			v->flags = m->flags;
			v->kw = m->keywords;
			fetch_flags_line(p, i, 0);
		}
	}
	/* expunges first, numbered against the view as it shrinks; only the
	 * entries the client was told of can be gone (new ones come after) */
	last = p->nview ? p->view[p->nview - 1].uid : 0;
	if (expunge_ok) {
		size_t w = 0;

		for (size_t i = 0; i < p->nview; i++) {
			if (p->view[i].gone) {
				reply(p, "* %zu EXPUNGE", w + 1);
				p->told--;
				continue;
			}
			p->view[w++] = p->view[i];
		}
		p->nview = w;
	}
	/* then new mail, announced by EXISTS before anything names it */
	for (size_t i = 0; i < n; i++) {
		const struct mailstore_msg *m = mailstore_box_msg(p->box, i);

		if (m->uid > last && p->nview < MAX_MAILSTORE_MESSAGES)
			view_push(p, m);
	}
	if (p->nview > p->told) {
		size_t r = view_recent(p);

		p->told = p->nview;
		reply(p, "* %zu EXISTS", p->nview);
		/* RECENT only when the count changed, as Dovecot */
		if (r != p->recent_told)
			reply(p, "* %zu RECENT", r);
		p->recent_told = r;
	} else if (expunge_ok && view_recent(p) != p->recent_told) {
		/* an expunged message was \Recent: the count again, as Dovecot */
		p->recent_told = view_recent(p);
		reply(p, "* %zu RECENT", p->recent_told);
	}
}

/* the store's snapshot brought up to date without telling the client (that
 * is view_sync's): a message another session expunged is then gone for
 * COPY and STORE, as Dovecot answers NO [EXPUNGEISSUED] */
static void
box_refresh(struct imap_proto *p)
{
	const char *err;

	if (p->box != NULL && mailstore_box_sync(p->box, &err) < 0)
		err = NULL;	/* the old snapshot stays */
}

/* the message behind view entry I, or NULL when it is gone from the store */
const struct mailstore_msg *
imap_view_msg(struct imap_proto *p, size_t i)
{
	long k;

	if (i >= p->nview || p->view[i].gone)
		return NULL;
	k = mailstore_box_find(p->box, p->view[i].uid);
	return k < 0 ? NULL : mailstore_box_msg(p->box, (size_t)k);
}

static int
name_arg(const struct imap_arg *a, const char **r)
{
	if (memchr(a->str, '\0', a->len) != NULL)
		return -1;
	*r = a->str;
	return 0;
}

/* INBOX in any case is INBOX (RFC 3501 §5.1), also as a hierarchy's first part */
static char *
name_norm(const char *name)
{
	char *s = xstrdup(name);

	if (strncasecmp(s, "INBOX", 5) == 0 && (s[5] == '\0' || s[5] == '.'))
		memcpy(s, "INBOX", 5);
	return s;
}

static void
flag_list(struct imap_proto *p, char *buf, size_t cap, int star)
{
	size_t n = (size_t)snprintf(buf, cap, "\\Answered \\Flagged \\Deleted \\Seen \\Draft");

	for (unsigned i = 0; i < MAX_MAILSTORE_KEYWORDS && n < cap; i++) {
		const char *k = mailstore_box_keyword(p->box, i);

		if (k != NULL)
			n += (size_t)snprintf(buf + n, cap - n, " %s", k);
	}
	if (star && n < cap)
		snprintf(buf + n, cap - n, " \\*");
}

static void
x_select(struct imap_proto *p)
{
	char flags[MAX_MAILSTORE_KEYWORDS * (MAX_MAILSTORE_KEYWORD_LEN + 1) + 64];
	const struct imap_cmd *c = p->cmd;
	size_t count, unseen = 0;
	const char *name, *err;
	char *nname;

	if (p->box != NULL)
		reply(p, "* OK [CLOSED] Previous mailbox closed.");
	box_close(p);
	if (name_arg(&c->args[0], &name) < 0 || !(mailstore_folder_is_valid(name) ||
	    strcasecmp(name, "INBOX") == 0)) {
		reply(p, "%s NO Mailbox doesn't exist: %s.", p->tag,
		    name_arg(&c->args[0], &name) < 0 ? "" : name);
		return;
	}
	nname = name_norm(name);
	if ((strcmp(c->name, "EXAMINE") == 0 ? mailstore_box_open_peek :	/* no \Recent taken */
	    mailstore_box_open)(p->ms, nname, &p->box, &err) < 0) {
		/* as Dovecot 2.3 answers SELECT and STATUS: no response code */
		reply(p, "%s NO Mailbox doesn't exist: %.200s.", p->tag, nname);
		free(nname);
		return;
	}
	free(nname);
	p->readonly = strcmp(c->name, "EXAMINE") == 0;
	p->st = ST_SELECTED;
	count = mailstore_box_count(p->box);
	if (count > p->capview) {
		/* one allocation for the view, not a doubling per power of two */
		p->capview = count < MAX_MAILSTORE_MESSAGES ? count : MAX_MAILSTORE_MESSAGES;
		p->view = xreallocarray(p->view, p->capview, sizeof(*p->view));
	}
	for (size_t i = 0; i < count && p->nview < MAX_MAILSTORE_MESSAGES; i++) {
		const struct mailstore_msg *m = mailstore_box_msg(p->box, i);

		view_push(p, m);
		if (unseen == 0 && !(m->flags & MAILSTORE_SEEN))
			unseen = i + 1;
	}
	p->told = p->nview;
	p->recent_told = view_recent(p);
	p->kwmask = kw_slots(p);
	flag_list(p, flags, sizeof(flags), 0);
	reply(p, "* FLAGS (%s)", flags);
	if (p->readonly) {
		reply(p, "* OK [PERMANENTFLAGS ()] Read-only mailbox.");
	} else {
		flag_list(p, flags, sizeof(flags), 1);
		reply(p, "* OK [PERMANENTFLAGS (%s)] Flags permitted.", flags);
	}
	reply(p, "* %zu EXISTS", p->nview);
	reply(p, "* %zu RECENT", p->recent_told);
	if (unseen > 0)
		reply(p, "* OK [UNSEEN %zu] First unseen.", unseen);
	reply(p, "* OK [UIDVALIDITY %u] UIDs valid", (unsigned)mailstore_box_uidvalidity(p->box));
	reply(p, "* OK [UIDNEXT %u] Predicted next UID", (unsigned)mailstore_box_uidnext(p->box));
	reply(p, "%s OK [%s] %s completed.", p->tag, p->readonly ? "READ-ONLY" : "READ-WRITE",
	    p->readonly ? "Examine" : "Select");
}

static void
c_select(struct imap_proto *p, const struct imap_cmd *c)
{
	/* RFC 3501 §6.3.1: a SELECT deselects first, even when it fails */
	want_exec(p, c, x_select);
}

static void
x_unselect(struct imap_proto *p)
{
	box_close(p);
	reply(p, "%s OK Unselect completed.", p->tag);
}

static void
c_unselect(struct imap_proto *p, const struct imap_cmd *c)
{
	want_exec(p, c, x_unselect);
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

/* a mailbox name as Dovecot writes it: an atom when it can be, else quoted,
 * a literal for 8-bit or control bytes */
static void
name_str(struct str *b, const char *name)
{
	int atom = *name != '\0' && strcasecmp(name, "NIL") != 0, quote = 1;

	for (const char *s = name; *s != '\0'; s++) {
		unsigned char c = (unsigned char)*s;

		if (c < 0x20 || c >= 0x7f)
			quote = atom = 0;
		else if (strchr("(){ %*\"\\", c) != NULL)
			atom = 0;
	}
	if (atom) {
		imap_str_add(b, "%s", name);
	} else if (quote) {
		imap_str_addn(b, "\"", 1);
		for (const char *s = name; *s != '\0'; s++) {
			if (*s == '"' || *s == '\\')
				imap_str_addn(b, "\\", 1);
			imap_str_addn(b, s, 1);
		}
		imap_str_addn(b, "\"", 1);
	} else {
		imap_str_add(b, "{%zu}\r\n%s", strlen(name), name);
	}
}

static void
put_name(struct imap_proto *p, const char *prefix, const char *name)
{
	struct str b = { 0 };

	imap_str_add(&b, "%s", prefix);
	name_str(&b, name);
	imap_str_addn(&b, "\r\n", 2);
	imap_out_str(p, &b);
}

static int
names_have(char *const *v, size_t n, const char *name)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(v[i], name) == 0)
			return 1;
	return 0;
}

static int
names_have_implied(char *const *v, size_t n, const char *name)
{
	for (size_t i = 0; i < n; i++)
		if (v[i][0] == '\001' && strcmp(v[i] + 1, name) == 0)
			return 1;
	return 0;
}

/* LSUB: the subscriptions (Dovecot's file) matching the pattern, with the
 * special-use attribute (RFC 6154) of those that have one */
static void
x_lsub(struct imap_proto *p)
{
	const struct imap_cmd *c = p->cmd;
	const char *ref, *pat, *err;
	char **names = NULL, *pattern;
	size_t n = 0;

	if (name_arg(&c->args[0], &ref) < 0 || name_arg(&c->args[1], &pat) < 0) {
		reply(p, "%s OK Lsub completed.", p->tag);
		return;
	}
	if (mailstore_subscriptions(p->ms, &names, &n, &err) < 0) {
		reply(p, "%s NO [SERVERBUG] Internal error occurred.", p->tag);
		return;
	}
	{
		char *raw = xasprintf("%s%s", ref, pat);

		pattern = name_norm(raw);
		free(raw);
	}
	{
		/* subscribed names; a parent that only a '%' reaches is \Noselect */
		char **told = xcalloc(2 * n + 1, sizeof(*told));
		size_t nt = 0;

		for (size_t i = 0; i < n; i++) {
			char *name = xstrdup(names[i]);

			for (;;) {
				int self = strcmp(name, names[i]) == 0;
				char *dot;

				if (imap_list_match(pattern, name) && !names_have(told, nt, name) &&
				    (self || !names_have(names, n, name))) {
					/* a subscribed special-use folder has its
					 * attribute in LSUB too, as Dovecot gives it */
					const char *su = self ? special_use(name) : NULL;
					char pre[64];

					snprintf(pre, sizeof(pre), "* LSUB (%s) \".\" ",
					    !self ? "\\Noselect" : su != NULL ? su : "");
					put_name(p, pre, name);
					told[nt++] = xstrdup(name);
					break;
				}
				if ((dot = strrchr(name, '.')) == NULL || nt >= 2 * n)
					break;
				*dot = '\0';
			}
			free(name);
		}
		mailstore_names_free(&told, nt);
	}
	free(pattern);
	mailstore_names_free(&names, n);
	reply(p, "%s OK Lsub completed.", p->tag);
}

/*
 * LIST, with the LIST-EXTENDED forms (RFC 5258) clients send for
 * SPECIAL-USE (RFC 6154): selection (SUBSCRIBED SPECIAL-USE
 * RECURSIVEMATCH), several patterns, RETURN (SUBSCRIBED CHILDREN
 * SPECIAL-USE)
 */
static void
x_list_ext(struct imap_proto *p)
{
	const struct imap_cmd *c = p->cmd;
	const struct imap_arg *a = c->args;
	size_t na = c->nargs, i = 0, npat = 0, n = 0, ns = 0;
	int sel_sub = 0, sel_su = 0, ret_sub = 0, ret_children = 0, ret_su = 0, ext;
	const char *ref, *err;
	char *pats[IMAP_LIST_MAX > 64 ? 64 : IMAP_LIST_MAX], **names = NULL, **subs = NULL;
	const struct imap_arg *pl;
	size_t npl;

	if (na > 0 && a[0].type == IMAP_ARG_LIST) {
		for (size_t k = 0; k < a[0].count; k++) {
			const char *o = a[0].list[k].str;

			if (a[0].list[k].type != IMAP_ARG_ATOM)
				o = "";
			if (strcasecmp(o, "SUBSCRIBED") == 0)
				sel_sub = 1;
			else if (strcasecmp(o, "SPECIAL-USE") == 0)
				sel_su = 1;
			else if (strcasecmp(o, "RECURSIVEMATCH") != 0 && strcasecmp(o, "REMOTE") != 0) {
				reply(p, "%s BAD Error in IMAP command LIST: Unknown select options.", p->tag);
				return;
			}
		}
		i = 1;
	}
	if (i + 3 < na && a[i + 3].type == IMAP_ARG_LIST) {
		const struct imap_arg *r = &a[i + 3];

		for (size_t k = 0; k < r->count; k++) {
			const char *o = r->list[k].type == IMAP_ARG_ATOM ? r->list[k].str : "";

			if (strcasecmp(o, "SUBSCRIBED") == 0)
				ret_sub = 1;
			else if (strcasecmp(o, "CHILDREN") == 0)
				ret_children = 1;
			else if (strcasecmp(o, "SPECIAL-USE") == 0)
				ret_su = 1;
			else {
				reply(p, "%s BAD Error in IMAP command LIST: Unknown return options.", p->tag);
				return;
			}
		}
	}
	if (name_arg(&a[i], &ref) < 0) {
		reply(p, "%s OK List completed.", p->tag);
		return;
	}
	/* the extended syntax: children and special-use only when asked, a
	 * parent only children imply is \NonExistent (as Dovecot) */
	ext = i == 1 || na > i + 2 || a[i + 1].type == IMAP_ARG_LIST;
	pl = a[i + 1].type == IMAP_ARG_LIST ? a[i + 1].list : &a[i + 1];
	npl = a[i + 1].type == IMAP_ARG_LIST ? a[i + 1].count : 1;
	for (size_t k = 0; k < npl && npat < sizeof(pats) / sizeof(pats[0]); k++) {
		const char *pat;
		char *raw;

		if (name_arg(&pl[k], &pat) < 0)
			continue;
		if (*pat == '\0' && npl == 1 && i == 0 && na == 2) {
			/* the hierarchy separator */
			reply(p, "* LIST (\\Noselect) \".\" \"\"");
			reply(p, "%s OK List completed.", p->tag);
			return;
		}
		raw = xasprintf("%s%s", ref, pat);
		pats[npat++] = name_norm(raw);
		free(raw);
	}
	if (mailstore_folders(p->ms, &names, &n, &err) < 0 ||
	    ((sel_sub || ret_sub) && mailstore_subscriptions(p->ms, &subs, &ns, &err) < 0)) {
		mailstore_names_free(&names, n);
		for (size_t k = 0; k < npat; k++)
			free(pats[k]);
		reply(p, "%s NO [SERVERBUG] Internal error occurred.", p->tag);
		return;
	}
	/* a parent only its children imply (.A.B.C without .A.B): \Noselect */
	for (size_t k = 0, n0 = n; k < n0 && n < MAX_MAILSTORE_FOLDERS; k++) {
		char *name = xstrdup(names[k]), *dot;

		while ((dot = strrchr(name, '.')) != NULL) {
			*dot = '\0';
			if (!names_have(names, n, name) && !names_have_implied(names, n, name)) {
				names = xreallocarray(names, n + 2, sizeof(*names));
				names[n++] = xasprintf("\001%s", name);
				names[n] = NULL;
			}
		}
		free(name);
	}
	/* SUBSCRIBED selects subscriptions, also of folders that are gone */
	for (size_t k = 0; sel_sub && k < ns && n < MAX_MAILSTORE_FOLDERS; k++) {
		if (!names_have(names, n, subs[k])) {
			names = xreallocarray(names, n + 2, sizeof(*names));
			names[n++] = xasprintf("\002%s", subs[k]);
			names[n] = NULL;
		}
	}
	for (size_t k = 0; k < n; k++) {
		int implied = names[k][0] == '\001', gone = names[k][0] == '\002';
		const char *nm = names[k] + (implied || gone);
		size_t len = strlen(nm);
		int children = implied, sub, match = 0;
		const char *su;
		char attrs[128];
		struct str b = { 0 };

		for (size_t q = 0; q < npat && !match; q++)
			match = imap_list_match(pats[q], nm);
		if (!match)
			continue;
		sub = subs != NULL && names_have(subs, ns, nm);
		su = implied || gone ? NULL : special_use(nm);
		if ((sel_sub && !sub) || (sel_su && su == NULL))
			continue;
		for (size_t q = 0; q < n && !children && !gone; q++) {
			const char *o = names[q] + (names[q][0] == '\001' || names[q][0] == '\002');

			if (names[q][0] != '\002' && strncmp(o, nm, len) == 0 && o[len] == '.')
				children = 1;
		}
		if (ext && !sel_su && !ret_su)
			su = NULL;
		snprintf(attrs, sizeof(attrs), "%s%s%s%s%s", implied ? (ext ? " \\NonExistent" :
		    " \\Noselect") : "", sub ? " \\Subscribed" : "", gone ? " \\NonExistent" : "",
		    gone || (ext && !ret_children) ? "" : children ? " \\HasChildren" :
		    " \\HasNoChildren", su ? " " : "");
		if (su != NULL)
			snprintf(attrs + strlen(attrs), sizeof(attrs) - strlen(attrs), "%s", su);
		imap_str_add(&b, "* LIST (%s) \".\" ", attrs[0] == ' ' ? attrs + 1 : attrs);
		name_str(&b, nm);
		imap_str_addn(&b, "\r\n", 2);
		imap_out_str(p, &b);
	}
	for (size_t k = 0; k < npat; k++)
		free(pats[k]);
	mailstore_names_free(&names, n);
	mailstore_names_free(&subs, ns);
	reply(p, "%s OK List completed.", p->tag);
}

static void
c_list(struct imap_proto *p, const struct imap_cmd *c)
{
	want_exec(p, c, strcmp(c->name, "LSUB") == 0 ? x_lsub : x_list_ext);
}

/* ---- CREATE, DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE, STATUS ---- */

/* the folder argument I, INBOX normalised, a trailing '.' dropped (CREATE);
 * NULL with a NO sent when it cannot be a folder */
static char *
folder_arg(struct imap_proto *p, size_t i, int allow_inbox)
{
	const char *name;
	char *n;
	size_t len;

	if (name_arg(&p->cmd->args[i], &name) < 0) {
		reply(p, "%s NO [CANNOT] Invalid mailbox name.", p->tag);
		return NULL;
	}
	n = name_norm(name);
	len = strlen(n);
	if (len > 1 && n[len - 1] == '.')
		n[len - 1] = '\0';
	if (strcmp(n, "INBOX") == 0 ? !allow_inbox : !mailstore_folder_is_valid(n)) {
		if (strcmp(n, "INBOX") != 0)
			reply(p, "%s NO [CANNOT] Invalid mailbox name.", p->tag);
		else
			reply(p, "%s NO [ALREADYEXISTS] Mailbox already exists.", p->tag);
		free(n);
		return NULL;
	}
	return n;
}

static int
folder_exists(struct imap_proto *p, const char *name)
{
	char **names;
	size_t n;
	const char *err;
	int have;

	if (strcmp(name, "INBOX") == 0)
		return 1;
	if (mailstore_folders(p->ms, &names, &n, &err) < 0)
		return 0;
	have = names_have(names, n, name);
	mailstore_names_free(&names, n);
	return have;
}

/* a folder under NAME exists (NAME itself may not: a \Noselect parent) */
static int
folder_has_children(struct imap_proto *p, const char *name)
{
	char **names;
	size_t n, nl = strlen(name);
	const char *err;
	int have = 0;

	if (mailstore_folders(p->ms, &names, &n, &err) < 0)
		return 0;
	for (size_t i = 0; i < n && !have; i++)
		have = strncmp(names[i], name, nl) == 0 && names[i][nl] == '.';
	mailstore_names_free(&names, n);
	return have;
}

static void
done_sync(struct imap_proto *p)
{
	if (p->box != NULL)
		view_sync(p, 1);
}

static void
x_create(struct imap_proto *p)
{
	const char *err;
	char *name = folder_arg(p, 0, 0);

	if (name == NULL)
		return;
	if (folder_exists(p, name))
		reply(p, "%s NO [ALREADYEXISTS] Mailbox already exists.", p->tag);
	else if (mailstore_folder_create(p->ms, name, &err) < 0)
		reply(p, "%s NO [CANNOT] %.200s", p->tag, err);
	else {
		done_sync(p);
		reply(p, "%s OK Create completed.", p->tag);
	}
	free(name);
}

static void
x_delete(struct imap_proto *p)
{
	const char *err;
	char *name = folder_arg(p, 0, 1);

	if (name == NULL)
		return;
	if (strcmp(name, "INBOX") == 0) {
		reply(p, "%s NO INBOX can't be deleted.", p->tag);
	} else if (!folder_exists(p, name)) {
		reply(p, "%s NO [NONEXISTENT] Mailbox doesn't exist: %s.", p->tag, name);
	} else {
		if (p->box != NULL && strcmp(mailstore_box_name(p->box), name) == 0)
			box_close(p);	/* deleting the selected folder deselects it */
		if (mailstore_folder_delete(p->ms, name, &err) < 0) {
			reply(p, "%s NO [CANNOT] %.200s", p->tag, err);
		} else {
			/* the subscription stays, as Dovecot keeps it (LIST shows it
			 * \NonExistent) */
			done_sync(p);
			reply(p, "%s OK Delete completed.", p->tag);
		}
	}
	free(name);
}

/* RENAME INBOX: its messages move to a new folder, INBOX stays (RFC 3501 §6.3.5) */
static int
rename_inbox(struct imap_proto *p, const char *to, const char **err)
{
	struct mailstore_box *in, *dst;
	int rc = 0;

	if (mailstore_folder_create(p->ms, to, err) < 0)
		return -1;
	if (p->box != NULL && strcmp(mailstore_box_name(p->box), "INBOX") == 0)
		in = p->box;
	else if (mailstore_box_open_peek(p->ms, "INBOX", &in, err) < 0)
		return -1;
	if (mailstore_box_open_peek(p->ms, to, &dst, err) < 0) {
		if (in != p->box)
			mailstore_box_close(&in);
		return -1;
	}
	while (rc == 0 && mailstore_box_count(in) > 0) {
		uint32_t uid = mailstore_box_msg(in, 0)->uid, nu;

		if (mailstore_msg_copy(in, uid, dst, &nu, err) < 0 ||
		    mailstore_msg_expunge(in, uid, err) < 0)
			rc = -1;
	}
	mailstore_box_close(&dst);
	if (in != p->box)
		mailstore_box_close(&in);
	return rc;
}

static void
x_rename(struct imap_proto *p)
{
	const char *err = "";
	char *from = folder_arg(p, 0, 1), *to;
	size_t fl;

	if (from == NULL)
		return;
	to = folder_arg(p, 1, 0);
	if (to == NULL) {
		free(from);
		return;
	}
	fl = strlen(from);
	/* a \Noselect parent (only its children exist) is renamed too: its
	 * children move, as Dovecot does */
	if (!folder_exists(p, from) && !folder_has_children(p, from)) {
		reply(p, "%s NO [NONEXISTENT] Mailbox doesn't exist: %s.", p->tag, from);
	} else if (folder_exists(p, to)) {
		reply(p, "%s NO [ALREADYEXISTS] Mailbox already exists.", p->tag);
	} else if (strncmp(to, from, fl) == 0 && to[fl] == '.') {
		reply(p, "%s NO Can't rename mailbox under its own child.", p->tag);
	} else if (strcmp(from, "INBOX") == 0) {
		if (rename_inbox(p, to, &err) < 0)
			reply(p, "%s NO [CANNOT] %.200s", p->tag, err);
		else {
			done_sync(p);
			reply(p, "%s OK Rename completed.", p->tag);
		}
	} else {
		const char *sel = p->box != NULL ? mailstore_box_name(p->box) : "";
		/* the selected folder, or one under it, moves */
		int selected = strcmp(sel, from) == 0 ||
		    (strncmp(sel, from, fl) == 0 && sel[fl] == '.');
		char *newsel = selected ? xasprintf("%s%s", to, sel + fl) : NULL;

		if (mailstore_folder_rename(p->ms, from, to, &err) < 0) {
			reply(p, "%s NO [CANNOT] %.200s", p->tag, err);
		} else {
			if (selected) {
				/* it stays selected under its new name: same UIDs, same view */
				struct mailstore_box *nb;

				if (mailstore_box_open(p->ms, newsel, &nb, &err) == 0) {
					mailstore_box_close(&p->box);
					p->box = nb;
				} else {
					box_close(p);
				}
			}
		{
			/* subscriptions stay as they are, as Dovecot leaves them */
			done_sync(p);
			reply(p, "%s OK Rename completed.", p->tag);
		}
		}
		free(newsel);
	}
	free(from);
	free(to);
}

static void
x_subscribe(struct imap_proto *p)
{
	int on = strcmp(p->cmd->name, "SUBSCRIBE") == 0;
	const char *err;
	char *name = folder_arg(p, 0, 1);

	if (name == NULL)
		return;
	if (on && !folder_exists(p, name))
		reply(p, "%s NO Mailbox doesn't exist: %s.", p->tag, name);
	else if (mailstore_subscribe(p->ms, name, on, &err) < 0)
		reply(p, "%s NO [SERVERBUG] Internal error occurred.", p->tag);
	else {
		done_sync(p);
		reply(p, "%s OK %s completed.", p->tag, on ? "Subscribe" : "Unsubscribe");
	}
	free(name);
}

static void
x_status(struct imap_proto *p)
{
	static const char *const items[] = { "MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY",
		"UNSEEN" };
	const struct imap_arg *l = &p->cmd->args[1];
	struct mailstore_box *box;
	unsigned want = 0;
	const char *err;
	char *name;
	struct str b = { 0 };
	int own = 0;

	if (l->type != IMAP_ARG_LIST) {
		reply(p, "%s BAD Invalid arguments.", p->tag);
		return;
	}
	for (size_t i = 0; i < l->count; i++) {
		size_t k;

		for (k = 0; k < 5; k++)
			if (l->list[i].type == IMAP_ARG_ATOM && strcasecmp(l->list[i].str, items[k]) == 0)
				break;
		if (k == 5) {
			reply(p, "%s BAD Invalid status item", p->tag);
			return;
		}
		want |= 1u << k;
	}
	if ((name = folder_arg(p, 0, 1)) == NULL)
		return;
	if (p->box != NULL && strcmp(mailstore_box_name(p->box), name) == 0) {
		box = p->box;
		view_sync(p, 1);
	} else if (mailstore_box_open_peek(p->ms, name, &box, &err) < 0) {
		reply(p, "%s NO Mailbox doesn't exist: %s.", p->tag, name);
		free(name);
		return;
	} else {
		own = 1;
	}
	imap_str_add(&b, "* STATUS ");
	name_str(&b, name);
	imap_str_add(&b, " (");
	{
		size_t count = mailstore_box_count(box), recent = 0, unseen = 0;
		const char *sp = "";

		for (size_t i = 0; i < count; i++) {
			const struct mailstore_msg *m = mailstore_box_msg(box, i);

			recent += m->recent;
			unseen += !(m->flags & MAILSTORE_SEEN);
		}
		if (want & 1)
			imap_str_add(&b, "%sMESSAGES %zu", sp, count), sp = " ";
		if (want & 2)
			imap_str_add(&b, "%sRECENT %zu", sp, recent), sp = " ";
		if (want & 4)
			imap_str_add(&b, "%sUIDNEXT %u", sp, (unsigned)mailstore_box_uidnext(box)), sp = " ";
		if (want & 8)
			imap_str_add(&b, "%sUIDVALIDITY %u", sp, (unsigned)mailstore_box_uidvalidity(box)),
			    sp = " ";
		if (want & 16)
			imap_str_add(&b, "%sUNSEEN %zu", sp, unseen);
	}
	imap_str_add(&b, ")\r\n");
	imap_out_str(p, &b);
	if (own)
		mailstore_box_close(&box);
	free(name);
	if (own)
		reply(p, "%s OK Status completed.", p->tag);
	else
		reply(p, "%s OK [CLIENTBUG] Status on selected mailbox completed.", p->tag);
}

static void
c_folder(struct imap_proto *p, const struct imap_cmd *c)
{
	static const struct {
		const char *name;
		exec_fn *fn;
	} fns[] = { { "CREATE", x_create }, { "DELETE", x_delete }, { "RENAME", x_rename },
		{ "SUBSCRIBE", x_subscribe }, { "UNSUBSCRIBE", x_subscribe },
		{ "STATUS", x_status } };

	for (size_t i = 0; i < sizeof(fns) / sizeof(fns[0]); i++)
		if (strcmp(fns[i].name, c->name) == 0)
			want_exec(p, c, fns[i].fn);
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
x_noop(struct imap_proto *p)
{
	view_sync(p, 1);
	reply(p, "%s OK %s completed.", p->tag, strcmp(p->cmd->name, "CHECK") == 0 ? "Check" :
	    "NOOP");
}

static void
c_noop(struct imap_proto *p, const struct imap_cmd *c)
{
	if (p->st == ST_SELECTED) {
		want_exec(p, c, x_noop);
		return;
	}
	reply(p, "%s OK NOOP completed.", c->tag);
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
	/* no extension here can be enabled (RFC 5161): Dovecot sends no
	 * "* ENABLED" line then, and neither do we */
	reply(p, "%s OK Enabled.", c->tag);
}

static void
c_idle(struct imap_proto *p, const struct imap_cmd *c)
{
	snprintf(p->tag, sizeof(p->tag), "%s", c->tag);
	p->idling = 1;
	imap_parser_set_idle(p->parser);
	reply(p, "+ idling");
	/* what changed since the last command is told at once, as Dovecot */
	if (p->box != NULL)
		want_exec(p, c, x_idle_sync);
}

static void
x_idle_sync(struct imap_proto *p)
{
	view_sync(p, 1);
}

int
imap_proto_idling(const struct imap_proto *p)
{
	return p->idling;
}

const char *
imap_proto_watch_dir(const struct imap_proto *p)
{
	return p->idling && p->box != NULL ? mailstore_box_dir(p->box) : NULL;
}

void
imap_proto_notify(struct imap_proto *p)
{
	if (p->idling && p->box != NULL && p->act == IMAP_ACT_NONE && !p->close)
		want_exec(p, NULL, x_idle_sync);
}

void
imap_proto_keepalive(struct imap_proto *p)
{
	if (p->idling && p->act == IMAP_ACT_NONE && !p->close)
		reply(p, "* OK Still here");
}

void
imap_proto_bye(struct imap_proto *p, const char *text)
{
	if (p->act == IMAP_ACT_EXEC) {
		/* after the running exec: its output first */
		free(p->bye);
		p->bye = xstrdup(text ? text : "Server shutting down.");
		p->logout_pending = 1;
		return;
	}
	reply(p, "* BYE %.200s", text ? text : "Server shutting down.");
	p->close = 1;
}

/* ---- message sets ---- */

/* mark the view entries SET names (sequence numbers or UIDs) in SEL; -1 when a
 * sequence number is past the end (BAD), else how many were marked */
static long
set_select(struct imap_proto *p, const struct imap_seqset *set, int uid, unsigned char *sel)
{
	long n = 0;

	if (set->saved)
		return 0;
	for (size_t r = 0; r < set->n; r++) {
		uint32_t lo = set->r[r].lo, hi = set->r[r].hi, t;

		if (uid) {
			uint32_t max = p->nview ? p->view[p->nview - 1].uid : 0;
			size_t a = 0, b = p->nview;

			if (p->nview == 0)
				continue;
			if (lo == 0)
				lo = max;
			if (hi == 0)
				hi = max;
			if (lo > hi) {
				t = lo;
				lo = hi;
				hi = t;
			}
			while (a < b) {
				size_t m = a + (b - a) / 2;

				if (p->view[m].uid < lo)
					a = m + 1;
				else
					b = m;
			}
			for (size_t i = a; i < p->nview && p->view[i].uid <= hi; i++)
				if (!sel[i]) {
					sel[i] = 1;
					n++;
				}
		} else {
			uint32_t max = (uint32_t)p->nview;

			if (lo == 0)
				lo = max;
			if (hi == 0)
				hi = max;
			if (lo > hi) {
				t = lo;
				lo = hi;
				hi = t;
			}
			if (lo == 0 || hi > max)
				return -1;
			for (uint32_t i = lo - 1; i < hi; i++)
				if (!sel[i]) {
					sel[i] = 1;
					n++;
				}
		}
	}
	return n;
}

/* the selection of the command in exec (freed by the caller); NULL after a BAD */
static unsigned char *
cmd_select(struct imap_proto *p)
{
	unsigned char *sel = xcalloc(p->nview + 1, 1);

	if (set_select(p, &p->cmd->seq, p->cmd->uid, sel) < 0) {
		reply(p, "%s BAD Error in IMAP command %s: Invalid messageset.", p->tag,
		    p->cmd->name);
		free(sel);
		return NULL;
	}
	return sel;
}

/* system flags and keywords of a flag list; -1 with a BAD sent */
static int
parse_flags(struct imap_proto *p, const char *const *fl, size_t n, unsigned *flags_r,
    const char ***kw_r, size_t *nkw_r)
{
	static const char *const names[] = { "\\Answered", "\\Flagged", "\\Deleted", "\\Seen",
		"\\Draft" };
	const char **kw = xcalloc(n + 1, sizeof(*kw));
	size_t nkw = 0;

	*flags_r = 0;
	for (size_t i = 0; i < n; i++) {
		size_t k;

		if (fl[i][0] != '\\') {
			kw[nkw++] = fl[i];
			continue;
		}
		for (k = 0; k < 5; k++)
			if (strcasecmp(fl[i], names[k]) == 0)
				break;
		if (k < 5) {
			*flags_r |= 1u << k;
		} else {
			/* \Recent too: the server sets it, never a client (RFC 3501
			 * §2.3.2), and Dovecot answers BAD */
			reply(p, "%s BAD Invalid system flag %.100s", p->tag, fl[i]);
			free(kw);
			return -1;
		}
	}
	*kw_r = kw;
	*nkw_r = nkw;
	return 0;
}


static void
x_fetch(struct imap_proto *p)
{
	const struct imap_cmd *c = p->cmd;
	uint64_t start = p->xq.bytes, fstart = p->xq.fbytes;
	size_t files = p->xq.files;
	int first = p->cursor == 0;
	unsigned char *sel;
	size_t i;

	sel = cmd_select(p);
	if (sel == NULL)
		return;
	for (i = p->cursor; i < p->nview; i++) {
		if (!sel[i])
			continue;
		if (imap_fetch_one(p, i) < 0)
			p->fetch_gone = 1;
		if (p->xq.bytes - start - (p->xq.fbytes - fstart) > BATCH_BYTES ||
		    p->xq.fbytes - fstart > (first ? BATCH_BYTES : BATCH_FILE_BYTES) ||
		    p->xq.files - files >= BATCH_FILES) {
			i++;
			break;
		}
	}
	while (i < p->nview && !sel[i])
		i++;
	free(sel);
	if (i < p->nview) {
		p->cursor = i;
		p->more = 1;
		return;
	}
	mailstore_cache_flush(p->box);	/* what it computed, for the next process too */
	/* by UID, expunges may be told now (RFC 3501 §7.4.1); not by sequence number */
	view_sync(p, c->uid);
	if (p->fetch_gone)
		reply(p, "%s NO [EXPUNGEISSUED] Some of the requested messages no longer exist.",
		    p->tag);
	else
		reply(p, "%s OK Fetch completed.", p->tag);
	p->fetch_gone = 0;
}

static void
c_fetch(struct imap_proto *p, const struct imap_cmd *c)
{
	p->fetch_gone = 0;
	want_exec(p, c, x_fetch);
}

/* ---- STORE ---- */

static void
x_store(struct imap_proto *p)
{
	const struct imap_cmd *c = p->cmd;
	static const enum mailstore_flag_mode mode[] = { MAILSTORE_FLAGS_REPLACE,
		MAILSTORE_FLAGS_ADD, MAILSTORE_FLAGS_REMOVE };
	unsigned char *sel;
	unsigned flags;
	const char **kw;
	size_t nkw;
	int gone = 0, failed = 0;
	const char *err = NULL;

	if (parse_flags(p, c->flags, c->nflags, &flags, &kw, &nkw) < 0)
		return;
	sel = cmd_select(p);
	if (sel == NULL) {
		free(kw);
		return;
	}
	if (p->readonly) {
		free(sel);
		free(kw);
		view_sync(p, 0);
		reply(p, "%s OK Store ignored with read-only mailbox.", p->tag);
		return;
	}
	box_refresh(p);
	for (size_t i = 0; i < p->nview; i++) {
		const struct mailstore_msg *m;

		if (!sel[i])
			continue;
		if (imap_view_msg(p, i) == NULL) {
			gone = 1;
			continue;
		}
		if (mailstore_msg_set_flags(p->box, p->view[i].uid, mode[c->store_mode], flags,
		    kw, nkw, &err) < 0) {
			box_refresh(p);
			if (imap_view_msg(p, i) == NULL) {
				gone = 1;	/* expunged by another session meanwhile */
				continue;
			}
			failed = 1;
			break;
		}
		m = imap_view_msg(p, i);
		if (m == NULL)
			continue;
		p->view[i].flags = m->flags;
		p->view[i].kw = m->keywords;
		kw_announce(p);
		if (!c->store_silent)
			fetch_flags_line(p, i, c->uid);
	}
	free(sel);
	free(kw);
	view_sync(p, c->uid);
	if (failed)
		reply(p, "%s NO [LIMIT] %s", p->tag, err ? err : "Store failed.");
	else if (gone)
		reply(p, "%s NO [EXPUNGEISSUED] Some of the requested messages no longer exist.",
		    p->tag);
	else
		reply(p, "%s OK Store completed.", p->tag);
}

static void
c_store(struct imap_proto *p, const struct imap_cmd *c)
{
	want_exec(p, c, x_store);
}

/* ---- EXPUNGE, CLOSE ---- */

/* remove the \Deleted messages (those of SEL only, when given) */
static void
expunge_deleted(struct imap_proto *p, const unsigned char *sel)
{
	const char *err;

	for (size_t i = 0; i < p->nview; i++) {
		const struct mailstore_msg *m;

		if (sel != NULL && !sel[i])
			continue;
		m = imap_view_msg(p, i);
		if (m != NULL && (m->flags & MAILSTORE_DELETED) &&
		    mailstore_msg_expunge(p->box, m->uid, &err) < 0)
			continue;	/* gone already, or kept: the sync tells */
	}
}

static void
x_expunge(struct imap_proto *p)
{
	unsigned char *sel = NULL;

	if (p->cmd->uid && (sel = cmd_select(p)) == NULL)
		return;
	if (p->readonly) {
		free(sel);
		view_sync(p, 1);
		reply(p, "%s OK Expunge ignored: Mailbox is read-only.", p->tag);
		return;
	}
	expunge_deleted(p, sel);
	free(sel);
	view_sync(p, 1);
	reply(p, "%s OK Expunge completed.", p->tag);
}

static void
c_expunge(struct imap_proto *p, const struct imap_cmd *c)
{
	want_exec(p, c, x_expunge);
}

static void
x_close(struct imap_proto *p)
{
	/* silently: no untagged EXPUNGE (RFC 3501 §6.4.2) */
	if (!p->readonly)
		expunge_deleted(p, NULL);
	box_close(p);
	reply(p, "%s OK Close completed.", p->tag);
}

static void
c_close(struct imap_proto *p, const struct imap_cmd *c)
{
	want_exec(p, c, x_close);
}

/* ---- COPY, MOVE ---- */

/* "1:3,7" of ascending UIDS */
static void
uidset_str(struct str *b, const uint32_t *u, size_t n)
{
	for (size_t i = 0; i < n;) {
		size_t j = i;

		while (j + 1 < n && u[j + 1] == u[j] + 1)
			j++;
		if (j > i)
			imap_str_add(b, "%s%u:%u", i ? "," : "", (unsigned)u[i], (unsigned)u[j]);
		else
			imap_str_add(b, "%s%u", i ? "," : "", (unsigned)u[i]);
		i = j + 1;
	}
}

/* the folder a COPY, MOVE or APPEND writes to: the selected one or another;
 * NULL with the NO sent */
static struct mailstore_box *
dest_open(struct imap_proto *p, const struct imap_arg *a, int *own_r)
{
	struct mailstore_box *b;
	const char *name, *err;
	char *nname;

	*own_r = 0;
	if (name_arg(a, &name) < 0 || !(mailstore_folder_is_valid(name) ||
	    strcasecmp(name, "INBOX") == 0)) {
		reply(p, "%s NO [TRYCREATE] Mailbox doesn't exist: %.200s.", p->tag,
		    name_arg(a, &name) < 0 ? "" : name);
		return NULL;
	}
	nname = name_norm(name);
	if (p->box != NULL && strcmp(nname, mailstore_box_name(p->box)) == 0) {
		free(nname);
		return p->box;
	}
	if (mailstore_box_open_peek(p->ms, nname, &b, &err) < 0) {
		reply(p, "%s NO [TRYCREATE] Mailbox doesn't exist: %.200s.", p->tag, nname);
		free(nname);
		return NULL;
	}
	free(nname);
	*own_r = 1;
	return b;
}

static void
x_copy(struct imap_proto *p)
{
	const struct imap_cmd *c = p->cmd;
	int move = strcmp(c->name, "MOVE") == 0, own, failed = 0, gone = 0;
	struct mailstore_box *dst;
	unsigned char *sel;
	uint32_t *su, *du;
	size_t n = 0;
	const char *err = NULL;

	sel = cmd_select(p);
	if (sel == NULL)
		return;
	box_refresh(p);
	if (move && p->readonly) {
		free(sel);
		reply(p, "%s NO [READ-ONLY] Mailbox is read-only.", p->tag);
		return;
	}
	dst = dest_open(p, &c->args[1], &own);
	if (dst == NULL) {
		free(sel);
		return;
	}
	su = xcalloc(p->nview + 1, sizeof(*su));
	du = xcalloc(p->nview + 1, sizeof(*du));
	for (size_t i = 0; i < p->nview; i++) {
		uint32_t nu;

		if (!sel[i])
			continue;
		if (imap_view_msg(p, i) == NULL) {
			gone = 1;
			continue;
		}
		if (mailstore_msg_copy(p->box, p->view[i].uid, dst, &nu, &err) < 0) {
			box_refresh(p);
			if (imap_view_msg(p, i) == NULL) {
				gone = 1;
				continue;
			}
			failed = 1;
			break;
		}
		su[n] = p->view[i].uid;
		du[n++] = nu;
	}
	if (n > 0 && !failed) {
		struct str b = { 0 };

		imap_str_add(&b, "%s[COPYUID %u ", move ? "* OK " : "",
		    (unsigned)mailstore_box_uidvalidity(dst));
		uidset_str(&b, su, n);
		imap_str_add(&b, " ");
		uidset_str(&b, du, n);
		if (move) {
			imap_str_add(&b, "] Moved UIDs.\r\n");
			imap_out_str(p, &b);
			for (size_t k = 0; k < n; k++)
				if (mailstore_msg_expunge(p->box, su[k], &err) < 0)
					continue;	/* gone meanwhile: the sync tells */
			view_sync(p, 1);
			reply(p, "%s OK Move completed.", p->tag);
		} else {
			view_sync(p, c->uid);
			reply(p, "%s OK %s] Copy completed.", p->tag, b.s);
			free(b.s);
		}
	} else {
		view_sync(p, c->uid || move);
		if (failed)
			reply(p, "%s NO [SERVERBUG] %s failed: %.200s", p->tag, move ? "Move" : "Copy",
			    err ? err : "internal error");
		else if (gone)
			reply(p, "%s NO [EXPUNGEISSUED] Some of the requested messages no longer "
			    "exist.", p->tag);
		else
			reply(p, "%s OK No messages found.", p->tag);
	}
	if (own)
		mailstore_box_close(&dst);
	free(su);
	free(du);
	free(sel);
}

static void
c_copy(struct imap_proto *p, const struct imap_cmd *c)
{
	want_exec(p, c, x_copy);
}


/* ---- SEARCH, UID SEARCH, ESEARCH ---- */

struct sctx {
	struct imap_proto *p;
	uint32_t uid;
	struct fmsg f;
};

static int
s_date(void *ctx, time_t *date_r)
{
	struct sctx *s = ctx;
	const char *err;

	return mailstore_msg_date(s->p->box, s->uid, date_r, &err);
}

static int
s_open(void *ctx, struct imap_mime **m_r)
{
	struct sctx *s = ctx;

	if (imap_fmsg_mime(s->p, &s->f, s->uid) < 0)
		return -1;
	*m_r = s->f.mr->m;
	return 0;
}

static void
x_search(struct imap_proto *p)
{
	const struct imap_cmd *c = p->cmd;
	unsigned ret = c->search_return;
	const char *kwnames[MAX_MAILSTORE_KEYWORDS], *err;
	uint32_t *hits, maxuid = p->nview ? p->view[p->nview - 1].uid : 0;
	size_t nhits = 0, nkw = 0;
	struct str b = { 0 };

	if (imap_search_charset_check(c->charset, &err) < 0) {
		reply(p, "%s NO %s", p->tag, err);
		return;
	}
	for (unsigned i = 0; i < MAX_MAILSTORE_KEYWORDS; i++) {
		kwnames[i] = mailstore_box_keyword(p->box, i);
		if (kwnames[i] != NULL)
			nkw = i + 1;
	}
	hits = xcalloc(p->nview + 1, sizeof(*hits));
	for (size_t i = 0; i < p->nview; i++) {
		const struct mailstore_msg *m = imap_view_msg(p, i);
		struct imap_search_input in;
		struct sctx s = { p, 0, { -1, 0, NULL } };
		int match = 0;

		if (m == NULL)
			continue;
		s.uid = m->uid;
		memset(&in, 0, sizeof(in));
		in.msg = m;
		in.seq = (uint32_t)(i + 1);
		in.max_seq = (uint32_t)p->nview;
		in.max_uid = maxuid;
		in.keywords = kwnames;
		in.nkeywords = nkw;
		in.date = s_date;
		in.open = s_open;
		in.ctx = &s;
		if (imap_search_match(c->search, &in, &match, &err) == 0 && match)
			hits[nhits++] = c->uid ? m->uid : (uint32_t)(i + 1);
		imap_fmsg_close(&s.f);
	}
	if (ret == (IMAP_SEARCH_RETURN_ESEARCH | IMAP_SEARCH_RETURN_SAVE)) {
		/* only SAVE: no ESEARCH line, as Dovecot (the result itself is not
		 * kept: SEARCHRES is not offered) */
	} else if (ret & IMAP_SEARCH_RETURN_ESEARCH) {
		if ((ret & ~(IMAP_SEARCH_RETURN_ESEARCH | IMAP_SEARCH_RETURN_SAVE)) == 0)
			ret |= IMAP_SEARCH_RETURN_ALL;
		imap_str_add(&b, "* ESEARCH (TAG \"%s\")%s", p->tag, c->uid ? " UID" : "");
		if ((ret & IMAP_SEARCH_RETURN_MIN) && nhits > 0)
			imap_str_add(&b, " MIN %u", (unsigned)hits[0]);
		if ((ret & IMAP_SEARCH_RETURN_MAX) && nhits > 0)
			imap_str_add(&b, " MAX %u", (unsigned)hits[nhits - 1]);
		if ((ret & IMAP_SEARCH_RETURN_ALL) && nhits > 0) {
			imap_str_add(&b, " ALL ");
			uidset_str(&b, hits, nhits);
		}
		if (ret & IMAP_SEARCH_RETURN_COUNT)
			imap_str_add(&b, " COUNT %zu", nhits);
	} else {
		imap_str_add(&b, "* SEARCH");
		for (size_t i = 0; i < nhits; i++)
			imap_str_add(&b, " %u", (unsigned)hits[i]);
	}
	if (b.n > 0)
		imap_str_add(&b, "\r\n");
	imap_out_str(p, &b);
	free(hits);
	view_sync(p, c->uid);
	reply(p, "%s OK Search completed.", p->tag);
}

static void
c_search(struct imap_proto *p, const struct imap_cmd *c)
{
	want_exec(p, c, x_search);
}

/* ---- APPEND (streamed: IMAP_EV_APPEND, _DATA, then the command) ---- */

#define APPEND_CHUNK (64u << 10)	/* bytes gathered before an exec writes them */

/* RFC 3501 date-time: "dd-Mon-yyyy hh:mm:ss +zzzz" (a leading space for d) */
static int
parse_datetime(const char *s, time_t *t_r)
{
	static const char *const mon[] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug",
		"Sep", "Oct", "Nov", "Dec" };
	struct tm tm;
	char m[4], sign;
	int d, y, hh, mm, ss, zh, zm, k;

	memset(&tm, 0, sizeof(tm));
	while (*s == ' ')
		s++;
	if (sscanf(s, "%2d-%3s-%4d %2d:%2d:%2d %c%2d%2d", &d, m, &y, &hh, &mm, &ss, &sign, &zh,
	    &zm) != 9 || (sign != '+' && sign != '-'))
		return -1;
	for (k = 0; k < 12; k++)
		if (strcasecmp(m, mon[k]) == 0)
			break;
	if (k == 12 || d < 1 || d > 31 || y < 1970 || hh > 23 || mm > 59 || ss > 60)
		return -1;
	tm.tm_mday = d;
	tm.tm_mon = k;
	tm.tm_year = y - 1900;
	tm.tm_hour = hh;
	tm.tm_min = mm;
	tm.tm_sec = ss;
	*t_r = timegm(&tm) - (sign == '-' ? -1 : 1) * (zh * 3600 + zm * 60);
	return *t_r > 0 ? 0 : -1;
}

static void
append_cleanup(struct imap_proto *p)
{
	mailstore_append_abort(&p->app);
	if (p->abox_own)
		mailstore_box_close(&p->abox);
	p->abox = NULL;
	p->abox_own = 0;
	for (size_t i = 0; i < p->app_nkw; i++)
		free(p->app_kw[i]);
	free(p->app_kw);
	p->app_kw = NULL;
	p->app_nkw = 0;
	free(p->chunk);
	p->chunk = NULL;
	p->chunklen = p->chunkcap = 0;
	p->app_active = 0;
	p->app_failed = 0;
}

static void
x_append_begin(struct imap_proto *p)
{
	const char *err;

	p->abox = dest_open(p, &p->cmd->args[0], &p->abox_own);
	if (p->abox == NULL)
		return;
	if (mailstore_append_begin(p->abox, &p->app, &err) < 0) {
		reply(p, "%s NO [SERVERBUG] Internal error occurred.", p->tag);
		append_cleanup(p);
		return;
	}
	p->app_active = 1;
}

/* on the loop after x_append_begin: let the parser stream the message, or drop it */
static void
after_append_begin(struct imap_proto *p)
{
	imap_parser_append_continue(p->parser, p->app_active);
	if (p->app_active && p->app_sync)
		reply(p, "+ OK");
	if (!p->app_active)
		append_cleanup(p);
}

static void
append_flush(struct imap_proto *p)
{
	const char *err;

	if (p->chunklen > 0 && !p->app_failed &&
	    mailstore_append_write(p->app, p->chunk, p->chunklen, &err) < 0)
		p->app_failed = 1;
	p->chunklen = 0;
}

static void
x_append_write(struct imap_proto *p)
{
	append_flush(p);
}

static void
x_append_commit(struct imap_proto *p)
{
	uint32_t uid = 0;
	const char *err;

	append_flush(p);
	if (p->app_failed) {
		reply(p, "%s NO [SERVERBUG] Internal error occurred.", p->tag);
	} else if (mailstore_append_commit(&p->app, p->app_flags, (const char *const *)p->app_kw,
	    p->app_nkw, p->app_date, &uid, &err) < 0) {
		reply(p, "%s NO [%s] %.200s", p->tag, strstr(err, "keyword") != NULL ? "LIMIT" :
		    "SERVERBUG", err);
	} else {
		uint32_t uv = mailstore_box_uidvalidity(p->abox);

		if (p->box != NULL)
			view_sync(p, 1);
		reply(p, "%s OK [APPENDUID %u %u] Append completed.", p->tag, (unsigned)uv,
		    (unsigned)uid);
	}
	append_cleanup(p);
}

static void
x_append_abort(struct imap_proto *p)
{
	append_cleanup(p);
}

/* IMAP_EV_APPEND: check what the parser has, then open the folder in an exec */
static void
append_event(struct imap_proto *p, const struct imap_event *ev)
{
	const struct imap_cmd *c = ev->cmd;
	const char **kw;
	size_t nkw;

	snprintf(p->tag, sizeof(p->tag), "%s", c->tag);
	append_cleanup(p);
	if (p->st != ST_AUTH && p->st != ST_SELECTED) {
		reply(p, "%s BAD Please log in first.", p->tag);
		imap_parser_append_continue(p->parser, 0);
		return;
	}
	if (ev->append_size == 0) {
		reply(p, "%s NO Can't save a zero byte message.", p->tag);
		imap_parser_append_continue(p->parser, 0);
		return;
	}
	p->app_date = 0;
	if (c->append_date != NULL && parse_datetime(c->append_date, &p->app_date) < 0) {
		reply(p, "%s BAD Invalid internal date.", p->tag);
		imap_parser_append_continue(p->parser, 0);
		return;
	}
	if (parse_flags(p, c->flags, c->nflags, &p->app_flags, &kw, &nkw) < 0) {
		imap_parser_append_continue(p->parser, 0);
		return;
	}
	p->app_kw = xcalloc(nkw + 1, sizeof(*p->app_kw));
	for (size_t i = 0; i < nkw; i++)
		p->app_kw[i] = xstrdup(kw[i]);
	p->app_nkw = nkw;
	free(kw);
	p->app_sync = ev->append_sync;
	want_exec(p, c, x_append_begin);
	p->after = after_append_begin;
}

static void
append_data(struct imap_proto *p, const char *data, size_t len)
{
	if (!p->app_active || len == 0)
		return;
	if (p->chunklen + len > p->chunkcap) {
		p->chunkcap = p->chunklen + len > APPEND_CHUNK ? p->chunklen + len : APPEND_CHUNK;
		p->chunk = xrealloc(p->chunk, p->chunkcap);
	}
	memcpy(p->chunk + p->chunklen, data, len);
	p->chunklen += len;
	if (p->chunklen >= APPEND_CHUNK)
		want_exec(p, NULL, x_append_write);
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
	{ "CREATE", IN_LOGGED, c_folder }, { "DELETE", IN_LOGGED, c_folder },
	{ "RENAME", IN_LOGGED, c_folder }, { "SUBSCRIBE", IN_LOGGED, c_folder },
	{ "UNSUBSCRIBE", IN_LOGGED, c_folder }, { "STATUS", IN_LOGGED, c_folder },
	{ "CLOSE", IN_SELECTED, c_close }, { "EXPUNGE", IN_SELECTED, c_expunge },
	{ "SEARCH", IN_SELECTED, c_search }, { "FETCH", IN_SELECTED, c_fetch },
	{ "STORE", IN_SELECTED, c_store }, { "COPY", IN_SELECTED, c_copy },
	{ "MOVE", IN_SELECTED, c_copy },
};

/* a BAD in a row more than the parser's bad_max: BYE, as Dovecot */
static void
bad_counted(struct imap_proto *p)
{
	unsigned max = p->st == ST_NOAUTH ? IMAP_BAD_MAX_PRELOGIN : IMAP_BAD_MAX;

	if (++p->bad_row > max) {
		reply(p, "* BYE Too many invalid IMAP commands.");
		p->close = 1;
	}
}

/* the state error for NAME and TAG; 0 when NAME is allowed (or unknown) here */
static int
state_refuses(struct imap_proto *p, const char *tag, int taglen, const char *name)
{
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
		if (strcmp(commands[i].name, name) != 0)
			continue;
		if (commands[i].states & (1u << p->st))
			return 0;
		if (p->st == ST_AUTH && (commands[i].states & IN_SELECTED))
			reply(p, "%.*s BAD No mailbox selected.", taglen, tag);
		else if (p->st == ST_NOAUTH)
			reply(p, "%.*s BAD Please log in first.", taglen, tag);
		else
			reply(p, "%.*s BAD Command not permitted in this state.", taglen, tag);
		return 1;
	}
	return 0;
}

/*
 * A parse error of a command this state refuses anyway: Dovecot checks the
 * state first, so the state's BAD is the answer (the parser's text names
 * the command: "<tag> BAD Error in IMAP command [UID ]NAME: ...")
 */
static int
parse_error_state(struct imap_proto *p, const char *rep)
{
	const char *k = strstr(rep, " BAD Error in IMAP command "), *nm, *end;
	char name[40];

	if (k == NULL || k == rep || k - rep > IMAP_TAG_MAX)
		return 0;
	nm = k + strlen(" BAD Error in IMAP command ");
	if (strncmp(nm, "UID ", 4) == 0)
		nm += 4;
	end = strchr(nm, ':');
	if (end == NULL || (size_t)(end - nm) >= sizeof(name))
		return 0;
	memcpy(name, nm, (size_t)(end - nm));
	name[end - nm] = '\0';
	return state_refuses(p, rep, (int)(k - rep), name);
}

static void
x_close_quiet(struct imap_proto *p)
{
	box_close(p);
}

/*
 * SELECT or EXAMINE with arguments that are not a mailbox name: Dovecot
 * closes the selected folder before its BAD (a SELECT deselects first,
 * RFC 3501 §6.3.1), so the next FETCH is BAD No mailbox selected. 1 when
 * REP is that BAD and a folder is selected: [CLOSED], the BAD, the close.
 */
static int
select_bad_closes(struct imap_proto *p, const char *rep)
{
	const char *k = strstr(rep, " BAD Error in IMAP command ");

	if (p->st != ST_SELECTED || k == NULL || k == rep || k - rep > IMAP_TAG_MAX)
		return 0;
	k += strlen(" BAD Error in IMAP command ");
	if (strncmp(k, "SELECT: Invalid arguments", 25) != 0 &&
	    strncmp(k, "EXAMINE: Invalid arguments", 26) != 0)
		return 0;
	reply(p, "* OK [CLOSED] Previous mailbox closed.");
	imap_out_add(p, rep, strlen(rep));
	want_exec(p, NULL, x_close_quiet);
	return 1;
}

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
			bad_counted(p);
			return;
		}
		p->bad_row = 0;
		snprintf(p->tag, sizeof(p->tag), "%s", c->tag);
		commands[i].run(p, c);
		return;
	}
	reply(p, "%s BAD Unknown command.", c->tag);
	bad_counted(p);
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
		if (p->line != NULL)
			explicit_bzero(p->line, p->linelen);
		free(p->line);
		p->line = NULL;
		p->linelen = 0;
		reply(p, "%s BAD Authentication response too long.", p->tag);
		if (nl == NULL)
			p->skipping = 1;
		return nl ? take + 1 : take;
	}
	if (p->line == NULL)
		p->line = xmalloc(IMAP_AUTH_LINE_MAX + 1);
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
	free(p->line);
	p->line = NULL;
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
		case IMAP_EV_APPEND:
			append_event(p, &ev);
			break;
		case IMAP_EV_APPEND_DATA:
			append_data(p, ev.data, ev.datalen);
			break;
		case IMAP_EV_REPLY:
			if (p->app_active) {
				/* the line went wrong after the message: drop it */
				imap_out_add(p, ev.reply, strlen(ev.reply));
				want_exec(p, NULL, x_append_abort);
				break;
			}
			if (p->idling) {
				/* not DONE: the IDLE command ends with a tagged BAD */
				p->idling = 0;
				reply(p, "%s BAD Expected DONE.", p->tag);
				break;
			}
			if (!parse_error_state(p, ev.reply) && !select_bad_closes(p, ev.reply))
				imap_out_add(p, ev.reply, strlen(ev.reply));
			if (strstr(ev.reply, " BAD ") != NULL)
				bad_counted(p);
			break;
		case IMAP_EV_CONTINUE:
			imap_out_add(p, ev.reply, strlen(ev.reply));
			break;
		case IMAP_EV_DISCONNECT:
			imap_out_add(p, ev.reply, strlen(ev.reply));
			p->close = 1;
			break;
		case IMAP_EV_IDLE_DONE:
			p->idling = 0;
			reply(p, "%s OK Idle completed.", p->tag);
			break;
		case IMAP_EV_COMMAND:
			if (p->app_active && ev.cmd->append_streamed) {
				snprintf(p->tag, sizeof(p->tag), "%s", ev.cmd->tag);
				want_exec(p, ev.cmd, x_append_commit);
				break;
			}
			command(p, ev.cmd);
			break;
		}
		if (n == 0 && ev.type == IMAP_EV_NONE)
			break;
	}
	return i;
}
