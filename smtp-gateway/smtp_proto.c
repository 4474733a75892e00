/*
 * smtp_proto - the ESMTP server side of one connection, without I/O.
 *
 *   smtp_proto_start()      greeting (or 554 for a kill-listed client)
 *   smtp_proto_input()      bytes in; replies appended to the output buffer
 *   smtp_proto_pending()    a message the caller must deliver
 *   smtp_proto_delivered()  its outcome: the reply to the final dot
 *
 * A command table pairs each verb's check (state, syntax) with its proceed
 * (engine verdict, side effects), as OpenSMTPD does. DATA is parsed byte by
 * byte: only <CR><LF>.<CR><LF> ends it, dot-stuffing is removed, and a bare
 * <CR> or <LF> anywhere is remembered so that smtp_bare_newline = reject
 * refuses the message (the SMTP smuggling defence, CVE-2023-51764 class).
 * Command lines have a hard cap; longer ones are answered 500 5.5.2 and
 * skipped to their end, and the engine decides on a ban.
 *
 * Never blocks, never allocates without bound: at most SMTP_DATA_HOLD_MAX
 * octets of a message are held (the caller takes pieces off to its spool
 * file or the downstream, else input waits), and DATA past the size limit
 * is counted, not stored. Header names reach the engine as they go by.
 */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "common/log.h"
#include "common/mailaddr.h"
#include "common/pclimits.h"
#include "common/xmalloc.h"
#include "smtp-gateway/smtp_proto.h"

#define SMTP_HARD_LINE_MAX 4096		/* lines but HELO/MAIL/RCPT; all when max_command_length = 0 */
#define SMTP_MAX_ERRORS 10		/* then 421; before AUTH */
#define SMTP_MAX_ERRORS_AUTH 30		/* after AUTH: a known user gets more room */
#define SMTP_MAX_RCPT_HARD 10000

enum st { ST_CMD, ST_DATA, ST_WAIT, ST_TLS, ST_AUTH, ST_AUTHWAIT, ST_DOWNWAIT, ST_CLOSED };

/* DATA scanner states */
enum ds { DS_LS_CRLF, DS_LS_LF, DS_DOT, DS_DOT_LF, DS_DOT_CR, DS_MID, DS_CR };
/* header-name scanner states (over the message after unstuffing) */
enum hs { HS_BOL, HS_NAME, HS_SKIP, HS_CR, HS_DONE };

struct smtp_proto {
	const struct smtp_params *p;
	struct engine_session *es;
	enum st st;
	int greeted;		/* 0 none, 1 HELO, 2 EHLO */
	int in_tx;
	char helo[128];
	struct ipaddr addr;
	int has_addr;
	/* command line */
	char *line;
	size_t linelen, linecap;
	int overflow;
	size_t overflow_len;
	/* transaction */
	char *sender;
	char **rcpt;
	int *rcpt_local;
	size_t nrcpt, rcptcap;
	/* DATA: at most SMTP_DATA_HOLD_MAX octets held, the caller takes the rest */
	char *data;
	size_t dlen, dcap, dtotal;
	enum ds ds;
	int bare;
	enum hs hs;		/* header names go to the engine as they arrive */
	char hname[80];
	size_t hlen;
	/* output */
	char *out;
	size_t olen, ocap;
	int close_after;
	struct smtp_msg msg;
	int pending;
	unsigned long ban;
	struct ipaddr ban_addr;
	const char *ban_reason;	/* the verdict's tag (static) */
	unsigned errors;
	int tls;		/* encrypted */
	int submission;		/* AUTH required before MAIL */
	int authenticated;
	int starttls;		/* the server must start TLS now */
	char auth_user[256];
	struct smtp_auth_req auth;	/* auth.sasl: the exchange under way, or NULL */
	char *auth_final;	/* SCRAM: the server's final data, sent after the check */
	char tls_peer[256];	/* verified client certificate's identity, "" none */
	int auth_pending;
	int no_auth;		/* smtp_auth = no on this listener */
	int after_auth;		/* the last command was a refused or finished AUTH:
				 * the next line may be a SASL response, never logged */
	/* pass-through */
	int bare_reject;	/* smtp_bare_newline = reject, and not an excepted client */
	int banned;		/* this session asked for its ban already */
	int route;		/* 0 none yet, 1 local store, 2 downstream */
	struct smtp_down_req down;
	int down_pending;
	int down_reset;
	int down_open;		/* pass-through: open downstream now (MAIL accepted) */
	int down_opened;	/* ... and that session belongs to this transaction */
	char down_rcpt[600];	/* the recipient waiting for the downstream */
	int stream;		/* DATA is being streamed downstream */
};

static void
reply(struct smtp_proto *sp, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
reply(struct smtp_proto *sp, const char *fmt, ...)
{
	va_list ap;
	int n;

	for (;;) {
		size_t room = sp->ocap - sp->olen;

		va_start(ap, fmt);
		n = vsnprintf(sp->out + sp->olen, room, fmt, ap);
		va_end(ap);
		if (n >= 0 && (size_t)n + 2 < room)
			break;
		sp->ocap = sp->ocap * 2 + (size_t)(n > 0 ? n : 0) + 64;
		sp->out = xrealloc(sp->out, sp->ocap);
	}
	sp->olen += (size_t)n;
	memcpy(sp->out + sp->olen, "\r\n", 2);
	sp->olen += 2;
}

/* printable ASCII of s for a reply or a log: never echo raw control or 8-bit bytes */
static const char *
printable(char *dst, size_t cap, const char *s)
{
	size_t n = 0;

	for (; *s && n + 1 < cap; s++)
		dst[n++] = ((unsigned char)*s >= 0x20 && (unsigned char)*s < 0x7f) ? *s : '?';
	dst[n] = '\0';
	return dst;
}

struct smtp_proto *
smtp_proto_new(const struct smtp_params *p)
{
	struct smtp_proto *sp = xcalloc(1, sizeof(*sp));

	sp->p = p;
	sp->bare_reject = p->bare_newline_reject;
	sp->es = engine_session_new(p->pol);
	if (p->rl != NULL)
		engine_session_set_ratelimit(sp->es, p->rl);
	/* room for AUTH lines; other commands are held to max_command_length */
	sp->linecap = SMTP_AUTH_LINE_MAX + 3;
	sp->line = xmalloc(sp->linecap);
	sp->ocap = 1024;
	sp->out = xmalloc(sp->ocap);
	return sp;
}

static void
msg_clear(struct smtp_msg *m)
{
	/* the envelope arrays belong to the session; only detach them */
	memset(m, 0, sizeof(*m));
}

static void
tx_reset(struct smtp_proto *sp)
{
	if (sp->route == 2 || sp->down_opened)
		sp->down_reset = 1;	/* the server drops the downstream session */
	sp->down_open = sp->down_opened = 0;
	sp->route = 0;
	sp->down_pending = 0;
	sp->stream = 0;
	free(sp->sender);
	sp->sender = NULL;
	for (size_t i = 0; i < sp->nrcpt; i++)
		free(sp->rcpt[i]);
	sp->nrcpt = 0;
	free(sp->data);
	sp->data = NULL;
	sp->dlen = sp->dcap = sp->dtotal = 0;
	sp->in_tx = 0;
	sp->bare = 0;
	msg_clear(&sp->msg);
	sp->pending = 0;
}

void
smtp_proto_free(struct smtp_proto **spp)
{
	struct smtp_proto *sp = *spp;

	if (sp == NULL)
		return;
	tx_reset(sp);
	sasl_server_free(&sp->auth.sasl);
	free(sp->auth_final);
	free(sp->rcpt);
	free(sp->rcpt_local);
	free(sp->line);
	free(sp->out);
	engine_session_free(&sp->es);
	free(sp);
	*spp = NULL;
}

const char *
smtp_proto_output(const struct smtp_proto *sp, size_t *len_r)
{
	*len_r = sp->olen;
	return sp->out;
}

void
smtp_proto_output_done(struct smtp_proto *sp, size_t n)
{
	if (n >= sp->olen) {
		sp->olen = 0;
		return;
	}
	memmove(sp->out, sp->out + n, sp->olen - n);
	sp->olen -= n;
}

int
smtp_proto_wants_close(const struct smtp_proto *sp)
{
	return sp->close_after;
}

unsigned
smtp_proto_errors(const struct smtp_proto *sp)
{
	return sp->errors;
}

unsigned long
smtp_proto_take_ban(struct smtp_proto *sp, struct ipaddr *addr_r)
{
	unsigned long b = sp->ban;

	sp->ban = 0;
	if (b)
		*addr_r = sp->ban_addr;
	return b;
}

const char *
smtp_proto_ban_reason(const struct smtp_proto *sp)
{
	return sp->ban_reason != NULL ? sp->ban_reason : "auto-ban";
}

int
smtp_proto_may_ban(struct smtp_proto *sp, long long now)
{
	unsigned ticket;
	const struct snapshot *snap = snapref_acquire(sp->p->snaps, &ticket);
	int may = engine_client_may_be_banned(sp->es, snap, now);

	snapref_release(sp->p->snaps, ticket);
	return may;
}

struct smtp_msg *
smtp_proto_pending(struct smtp_proto *sp)
{
	return sp->pending ? &sp->msg : NULL;
}

/* say a verdict's reply; 1 when it refused */
static int
verdict_reply(struct smtp_proto *sp, enum engine_stage stage, const struct verdict *v,
    const char *arg)
{
	engine_log(sp->es, stage, v, NULL,
	    v->tag && strcmp(v->tag, "long-command") == 0 ? arg : NULL);
	if (v->ban_seconds > 0 && sp->has_addr) {
		sp->ban = v->ban_seconds;
		sp->ban_addr = sp->addr;
		sp->ban_reason = v->tag;
	}
	if (v->action == VERDICT_REJECT || v->action == VERDICT_TEMPFAIL) {
		reply(sp, "%s %s %s", v->code, v->dsn, v->text);
		return 1;
	}
	return 0;
}

static void
error_reply(struct smtp_proto *sp, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* one more error against the budget; past it, 421 and close */
static void
count_error(struct smtp_proto *sp)
{
	if (++sp->errors >= (sp->authenticated ? SMTP_MAX_ERRORS_AUTH : SMTP_MAX_ERRORS)) {
		reply(sp, "421 4.7.0 %s Error: too many errors", sp->p->myhostname);
		sp->close_after = 1;
		sp->st = ST_CLOSED;
	}
}

static void
error_reply(struct smtp_proto *sp, const char *fmt, ...)
{
	char buf[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	reply(sp, "%s", buf);
	count_error(sp);
}

/* the stage a line counts as: its verb, whole (MAILX is no MAIL) */
static enum engine_stage
command_stage(const char *line)
{
	if (strcspn(line, " ") != 4)
		return STAGE_COMMAND;
	if (strncasecmp(line, "MAIL", 4) == 0)
		return STAGE_MAIL;
	if (strncasecmp(line, "RCPT", 4) == 0)
		return STAGE_RCPT;
	if (strncasecmp(line, "HELO", 4) == 0 || strncasecmp(line, "EHLO", 4) == 0)
		return STAGE_HELO;
	return STAGE_COMMAND;
}

void
smtp_proto_start(struct smtp_proto *sp, const struct ipaddr *addr, const char *hostname,
    long long now)
{
	unsigned ticket;
	const struct snapshot *snap = snapref_acquire(sp->p->snaps, &ticket);
	struct verdict v;

	sp->has_addr = addr != NULL;
	if (addr != NULL)
		sp->addr = *addr;
	sp->bare_reject = sp->p->bare_newline_reject;
	if (sp->bare_reject && addr != NULL && sp->p->bare_newline_exceptions != NULL &&
	    cidrtab_lookup(sp->p->bare_newline_exceptions, addr) != CIDRTAB_NONE)
		sp->bare_reject = 0;	/* an old client the admin vouches for: normalise */
	engine_connect(sp->es, snap, addr, hostname, now, &v);
	if (engine_client_is_killed(sp->es, snap, now, &v)) {
		snapref_release(sp->p->snaps, ticket);
		engine_log(sp->es, STAGE_CONNECT, &v, NULL, NULL);
		reply(sp, "%s %s %s", v.code, v.dsn, v.text);
		sp->close_after = 1;
		sp->st = ST_CLOSED;
		return;
	}
	snapref_release(sp->p->snaps, ticket);
	reply(sp, "220 %s", sp->p->banner);
}

/* ---- commands ---- */

/* "FROM:<addr> PARAMS" -> addr (with brackets) and params; -1 on bad syntax */
static int
split_path(char *arg, const char *kw, char **path_r, char **params_r)
{
	size_t kl = strlen(kw);
	char *p, *end;

	if (strncasecmp(arg, kw, kl) != 0)
		return -1;
	p = arg + kl;
	while (*p == ' ')	/* tolerated, as most servers do */
		p++;
	if (*p != '<')
		return -1;
	end = p + 1;
	for (int inq = 0; *end && (inq || *end != '>'); end++) {
		if (*end == '"')
			inq = !inq;
		else if (*end == '\\' && end[1])
			end++;
	}
	if (*end != '>')
		return -1;
	end++;
	if (*end != '\0' && *end != ' ')
		return -1;
	*params_r = *end ? end + 1 : end;
	*end = '\0';
	*path_r = p;
	return 0;
}

void
smtp_proto_set_tls(struct smtp_proto *sp, int active)
{
	sp->tls = active;
	if (active && sp->st == ST_TLS) {
		/* RFC 3207: forget everything said before the handshake */
		engine_starttls(sp->es);	/* the engine forgets HELO and AUTH too */
		tx_reset(sp);
		sp->greeted = 0;
		sp->helo[0] = '\0';
		/* RFC 3207 §4.2: an AUTH from before the handshake does not carry over */
		sp->authenticated = 0;
		sp->auth_user[0] = '\0';
		sp->st = ST_CMD;
	}
}

void
smtp_proto_set_no_auth(struct smtp_proto *sp)
{
	sp->no_auth = 1;
}

void
smtp_proto_set_submission(struct smtp_proto *sp)
{
	sp->submission = 1;
}

int
smtp_proto_take_starttls(struct smtp_proto *sp)
{
	int s = sp->starttls;

	sp->starttls = 0;
	return s;
}

void
smtp_proto_set_tls_peer(struct smtp_proto *sp, const char *identity)
{
	snprintf(sp->tls_peer, sizeof(sp->tls_peer), "%s", identity ? identity : "");
}

struct smtp_auth_req *
smtp_proto_pending_auth(struct smtp_proto *sp)
{
	return sp->auth_pending ? &sp->auth : NULL;
}

const char *
smtp_proto_auth_user(const struct smtp_proto *sp)
{
	return sp->auth_user;
}

/* the exchange is over (refused, aborted, or done) */
static void
auth_end(struct smtp_proto *sp)
{
	sasl_server_free(&sp->auth.sasl);
	free(sp->auth_final);
	sp->auth_final = NULL;
	sp->auth_pending = 0;
	if (sp->st == ST_AUTH || sp->st == ST_AUTHWAIT)
		sp->st = ST_CMD;
}

static void
auth_success(struct smtp_proto *sp)
{
	char esc[LOG_ESCAPE_BUFSZ];
	const char *user = sasl_server_user(sp->auth.sasl);

	snprintf(sp->auth_user, sizeof(sp->auth_user), "%s", user);
	sp->authenticated = 1;
	log_info("%s: AUTH %s as %s", engine_client_text(sp->es),
	    sasl_mech_name(sasl_server_mech(sp->auth.sasl)), log_escape(esc, user, strlen(user)));
	reply(sp, "235 2.7.0 Authentication successful");
	auth_end(sp);
}

void
smtp_proto_auth_done(struct smtp_proto *sp, int ok)
{
	char esc[LOG_ESCAPE_BUFSZ];
	const char *login = sp->auth.sasl ? sasl_server_login(sp->auth.sasl) : "";

	sp->auth_pending = 0;
	sp->st = ST_CMD;
	if (ok == SMTP_AUTH_TEMPFAIL) {
		log_info("%s: AUTH not checked, password checks busy; reason=auth-busy",
		    engine_client_text(sp->es));
		reply(sp, "454 4.7.0 Temporary authentication failure");
	} else if (ok && sp->auth_final != NULL && sp->auth_final[0] != '\0') {
		/* RFC 4954 §4: final data goes in a 334; the client answers empty */
		reply(sp, "334 %s", sp->auth_final);
		sp->st = ST_AUTH;
		return;
	} else if (ok) {
		auth_success(sp);
		return;
	} else {
		log_info("%s: AUTH failed for %s; reason=auth-failed", engine_client_text(sp->es),
		    log_escape(esc, login, strlen(login)));
		error_reply(sp, "535 5.7.8 Error: authentication failed");
	}
	auth_end(sp);
}

/* the exchange says what comes next */
static void
auth_next(struct smtp_proto *sp, enum sasl_rc rc, const char *out64)
{
	switch (rc) {
	case SASL_CONTINUE:
		sp->st = ST_AUTH;
		reply(sp, "334 %s", out64);
		return;
	case SASL_CHECK:
		sp->auth.check = 1;
		sp->auth_pending = 1;
		sp->st = ST_AUTHWAIT;
		return;
	case SASL_OK:
	case SASL_FAIL:
		/* every outcome goes by the caller: a failure's penalty applies */
		sp->auth.check = 0;
		sp->auth.ok = rc == SASL_OK;
		if (rc == SASL_OK && out64[0] != '\0')
			sp->auth_final = xstrdup(out64);
		sp->auth_pending = 1;
		sp->st = ST_AUTHWAIT;
		return;
	case SASL_BAD_BASE64:
		auth_end(sp);
		error_reply(sp, "501 5.5.2 Error: invalid base64 data");
		return;
	case SASL_CANCELLED:
		auth_end(sp);
		error_reply(sp, "501 5.7.0 Authentication aborted");
		return;
	}
}

/* one AUTH response line; moves the exchange on */
static void
auth_step(struct smtp_proto *sp, const char *line)
{
	const char *out64;
	enum sasl_rc rc;

	if (sp->auth_final != NULL) {
		/* SCRAM: the client has checked our signature; an empty line closes */
		if (strcmp(line, "*") == 0) {
			auth_end(sp);
			error_reply(sp, "501 5.7.0 Authentication aborted");
		} else if (line[0] != '\0') {
			auth_end(sp);
			error_reply(sp, "501 5.5.2 Error: expected an empty response");
		} else {
			auth_success(sp);
		}
		return;
	}
	rc = sasl_server_step64(sp->auth.sasl, line, &out64);
	auth_next(sp, rc, out64);
}

static void
cmd_auth(struct smtp_proto *sp, char *arg, size_t cmdlen, long long now)
{
	char *mech = arg, *init;
	unsigned m;
	struct sasl_params sp_params;
	const char *out64;
	enum sasl_rc rc;

	(void)cmdlen;
	(void)now;
	if (sp->p->auth_mechs == 0 || sp->no_auth) {
		error_reply(sp, "502 5.5.1 Error: authentication not enabled");
		return;
	}
	if (sp->greeted != 2) {
		error_reply(sp, "503 5.5.1 Error: send EHLO first");
		return;
	}
	if (sp->authenticated) {
		error_reply(sp, "503 5.5.1 Error: already authenticated");
		return;
	}
	if (sp->in_tx) {
		error_reply(sp, "503 5.5.1 Error: MAIL transaction in progress");
		return;
	}
	init = mech + strcspn(mech, " ");
	if (*init == ' ')
		*init++ = '\0';
	m = authmech_from_name(mech);
	if (m == 0 || !(sp->p->auth_mechs & m) || sp->p->sasl_cb == NULL ||
	    (m == SMTP_AUTH_EXTERNAL && sp->tls_peer[0] == '\0')) {
		error_reply(sp, "504 5.5.4 Unrecognized authentication mechanism");
		return;
	}
	if ((m == SMTP_AUTH_PLAIN || m == SMTP_AUTH_LOGIN) && !sp->tls &&
	    !sp->p->auth_allow_plaintext) {
		error_reply(sp, "538 5.7.11 Encryption required for requested authentication mechanism");
		return;
	}
	if (m == SMTP_AUTH_CRAM && *init != '\0') {
		error_reply(sp, "501 5.5.4 CRAM-MD5 takes no initial response");
		return;
	}
	sp_params.cb = sp->p->sasl_cb;
	sp_params.hostname = sp->p->myhostname;
	sp_params.external_id = sp->tls_peer[0] ? sp->tls_peer : NULL;
	sasl_server_free(&sp->auth.sasl);
	memset(&sp->auth, 0, sizeof(sp->auth));
	sp->auth.sasl = sasl_server_new(m, &sp_params);
	if (sp->auth.sasl == NULL) {
		error_reply(sp, "454 4.7.0 Temporary authentication failure");
		return;
	}
	sp->st = ST_AUTH;
	rc = sasl_server_step64(sp->auth.sasl, *init ? init : NULL, &out64);
	auth_next(sp, rc, out64);
}

static void
cmd_starttls(struct smtp_proto *sp, char *arg, size_t cmdlen, long long now)
{
	(void)cmdlen;
	(void)now;
	if (*arg != '\0') {
		error_reply(sp, "501 5.5.4 Syntax: STARTTLS");
		return;
	}
	if (sp->tls) {
		error_reply(sp, "503 5.5.1 Error: TLS already active");
		return;
	}
	if (!sp->p->tls_available) {
		error_reply(sp, "454 4.7.0 TLS not available");
		return;
	}
	reply(sp, "220 2.0.0 Ready to start TLS");
	sp->st = ST_TLS;
	sp->starttls = 1;
}

static void
cmd_helo(struct smtp_proto *sp, char *arg, size_t cmdlen, long long now, int ehlo)
{
	unsigned ticket;
	const struct snapshot *snap;
	struct verdict v;

	while (*arg == ' ')
		arg++;
	if (*arg == '\0') {
		error_reply(sp, "501 5.5.4 Syntax: %s hostname", ehlo ? "EHLO" : "HELO");
		return;
	}
	{
		/*
		 * RFC 5321 §4.1.1.1: a domain or an address literal; a bare name
		 * ("localhost", "DESKTOP-1") is tolerated, as Postfix does. Words
		 * after it are ignored; control and 8-bit bytes anywhere refuse the
		 * command, so nothing unchecked reaches the Received: line.
		 */
		size_t hl = strcspn(arg, " ");
		char name[MAILADDR_PART_MAX];
		int bad = hl >= sizeof(sp->helo);	/* never cut short in Received: */

		for (const char *q = arg; *q && !bad; q++)
			bad = (unsigned char)*q < 0x20 || (unsigned char)*q > 0x7e;
		if (!bad) {
			memcpy(name, arg, hl);
			name[hl] = '\0';
			bad = !mailaddr_domain_is_valid(name);
		}
		if (bad) {
			char esc[LOG_ESCAPE_BUFSZ];

			log_info("reject: %s from %s: 501 5.5.4 invalid host name; helo=<%s> "
			    "reason=bad-helo", ehlo ? "EHLO" : "HELO", engine_client_text(sp->es),
			    log_escape(esc, arg, strlen(arg)));
			error_reply(sp, "501 5.5.4 Syntax: %s hostname (a domain or an address literal)",
			    ehlo ? "EHLO" : "HELO");
			return;
		}
	}
	snap = snapref_acquire(sp->p->snaps, &ticket);
	engine_helo(sp->es, snap, arg, cmdlen, now, &v);
	snapref_release(sp->p->snaps, ticket);
	if (verdict_reply(sp, STAGE_HELO, &v, arg))
		return;
	snprintf(sp->helo, sizeof(sp->helo), "%.*s", (int)strcspn(arg, " "), arg);
	if (sp->in_tx)
		engine_abort(sp->es);
	tx_reset(sp);
	sp->greeted = ehlo ? 2 : 1;
	if (!ehlo) {
		reply(sp, "250 %s", sp->p->myhostname);
		return;
	}
	reply(sp, "250-%s", sp->p->myhostname);
	reply(sp, "250-PIPELINING");
	if (sp->p->tls_available && !sp->tls)
		reply(sp, "250-STARTTLS");
	if (sp->p->message_size_limit)
		reply(sp, "250-SIZE %zu", sp->p->message_size_limit);
	else
		reply(sp, "250-SIZE");
	if (sp->p->vrfy)
		reply(sp, "250-VRFY");
	if (sp->p->auth_mechs != 0 && !sp->no_auth && !sp->authenticated) {
		char mechs[96] = "";
		int plain_ok = sp->tls || sp->p->auth_allow_plaintext;

		if ((sp->p->auth_mechs & SMTP_AUTH_PLAIN) && plain_ok)
			strcat(mechs, " PLAIN");
		if ((sp->p->auth_mechs & SMTP_AUTH_LOGIN) && plain_ok)
			strcat(mechs, " LOGIN");
		if (sp->p->auth_mechs & SMTP_AUTH_CRAM)
			strcat(mechs, " CRAM-MD5");
		if (sp->p->auth_mechs & SMTP_AUTH_SCRAM)
			strcat(mechs, " SCRAM-SHA-256");
		/* EXTERNAL only where a client certificate was verified */
		if ((sp->p->auth_mechs & SMTP_AUTH_EXTERNAL) && sp->tls_peer[0] != '\0')
			strcat(mechs, " EXTERNAL");
		if (mechs[0] != '\0')
			reply(sp, "250-AUTH%s", mechs);
	}
	reply(sp, "250-ENHANCEDSTATUSCODES");
	reply(sp, "250 8BITMIME");
}

static void
cmd_mail(struct smtp_proto *sp, char *arg, size_t cmdlen, long long now)
{
	char *path, *params, *tok, *save = NULL;
	struct mailaddr ma;
	unsigned ticket;
	const struct snapshot *snap;
	struct verdict v;

	if (!sp->greeted) {
		error_reply(sp, "503 5.5.1 Error: send HELO/EHLO first");
		return;
	}
	if (sp->in_tx) {
		error_reply(sp, "503 5.5.1 Error: nested MAIL command");
		return;
	}
	if (sp->submission && !sp->authenticated) {
		error_reply(sp, "530 5.7.0 Authentication required");
		return;
	}
	if (split_path(arg, "FROM:", &path, &params) < 0) {
		error_reply(sp, "501 5.5.4 Syntax: MAIL FROM:<address>");
		return;
	}
	if (mailaddr_parse(path, &ma) < 0) {
		/* the engine gives (and logs) the verdict: 501 5.1.7 */
		snap = snapref_acquire(sp->p->snaps, &ticket);
		engine_mail(sp->es, snap, path, cmdlen, sp->authenticated ? sp->auth_user : NULL,
		    now, &v);
		snapref_release(sp->p->snaps, ticket);
		if (!verdict_reply(sp, STAGE_MAIL, &v, path))
			reply(sp, "501 5.1.7 Bad sender address syntax");
		engine_abort(sp->es);
		count_error(sp);
		return;
	}
	for (tok = strtok_r(params, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
		if (strncasecmp(tok, "SIZE=", 5) == 0) {
			const char *d = tok + 5;
			size_t nd = strspn(d, "0123456789");
			unsigned long long sz = 0;

			/* RFC 1870: size-value = 1*20DIGIT; strtoull would take "+5", " 5", "-5" */
			if (nd == 0 || nd > 20 || d[nd] != '\0') {
				error_reply(sp, "501 5.5.4 Bad SIZE parameter");
				return;
			}
			for (size_t i = 0; i < nd && sz <= ~0ULL / 10 - 9; i++)
				sz = sz * 10 + (unsigned)(d[i] - '0');
			if (sp->p->message_size_limit && (nd > 19 || sz > sp->p->message_size_limit)) {
				reply(sp, "552 5.3.4 Message size exceeds fixed limit");
				return;
			}
			engine_command_params(sp->es, tok);	/* RFC 1870: 26 more octets */
		} else if (strncasecmp(tok, "BODY=", 5) == 0) {
			if (strcasecmp(tok + 5, "8BITMIME") != 0 && strcasecmp(tok + 5, "7BIT") != 0) {
				error_reply(sp, "501 5.5.4 Bad BODY parameter");
				return;
			}
		} else {
			char esc[64];

			error_reply(sp, "555 5.5.4 Unsupported option: %s", printable(esc, sizeof(esc), tok));
			return;
		}
	}
	snap = snapref_acquire(sp->p->snaps, &ticket);
	engine_mail(sp->es, snap, path, cmdlen, sp->authenticated ? sp->auth_user : NULL, now, &v);
	snapref_release(sp->p->snaps, ticket);
	if (verdict_reply(sp, STAGE_MAIL, &v, path))
		return;
	tx_reset(sp);
	sp->in_tx = 1;
	{
		char fmt[MAILADDR_TEXT_MAX];
		const struct mailaddr *judged = engine_sender_address(sp->es);

		/* what the engine judged is what goes on: the formatter re-quotes */
		sp->sender = xstrdup(mailaddr_format(judged ? judged : &ma, fmt));
	}
	if (sp->p->passthrough) {
		/* every recipient goes downstream: its connect, greeting, EHLO and
		 * MAIL overlap with the client's next round trip */
		snprintf(sp->down.sender, sizeof(sp->down.sender), "%s", sp->sender);
		snprintf(sp->down.helo, sizeof(sp->down.helo), "%s", sp->p->myhostname);
		sp->down_open = sp->down_opened = 1;
	}
	reply(sp, "250 2.1.0 Ok");
}

static void
cmd_rcpt(struct smtp_proto *sp, char *arg, size_t cmdlen, long long now)
{
	char *path, *params;
	const struct mailaddr *ra;
	char rcpt[MAILADDR_TEXT_MAX];
	unsigned ticket;
	const struct snapshot *snap;
	struct verdict v;
	int local = 0;

	if (!sp->in_tx) {
		error_reply(sp, "503 5.5.1 Error: need MAIL command");
		return;
	}
	if (split_path(arg, "TO:", &path, &params) < 0 || *params != '\0') {
		error_reply(sp, "501 5.5.4 Syntax: RCPT TO:<address>");
		return;
	}
	if (sp->nrcpt >= SMTP_MAX_RCPT_HARD) {
		reply(sp, "452 4.5.3 Too many recipients");
		return;
	}
	snap = snapref_acquire(sp->p->snaps, &ticket);
	engine_rcpt(sp->es, snap, path, cmdlen, now, &v);
	snapref_release(sp->p->snaps, ticket);
	if (verdict_reply(sp, STAGE_RCPT, &v, path)) {
		if (v.tag != NULL && strcmp(v.tag, "bad-address") == 0)
			count_error(sp);
		return;
	}
	/* the address the engine judged (postmaster rewritten, qualified) */
	if ((ra = engine_rcpt_address(sp->es, &local)) == NULL || ra->domain[0] == '\0') {
		engine_rcpt_refused(sp->es);
		error_reply(sp, "501 5.1.3 Bad recipient address syntax");
		return;
	}
	mailaddr_format(ra, rcpt);
	if (local && !sp->p->passthrough) {
		/* delivered to the user database's canonical name, nothing else */
		if (sp->p->user_resolve != NULL) {
			if (!sp->p->user_resolve(sp->p->user_arg, ra->local, ra->domain, rcpt)) {
				char fmt[MAILADDR_TEXT_MAX];

				log_info("reject: RCPT from %s: 550 5.1.1 User unknown; to=<%s> "
				    "reason=unknown-user", engine_client_text(sp->es),
				    printable(fmt, sizeof(fmt), rcpt));
				/* counts toward the error budget: a run of probes ends in 421;
				 * and not toward max_recipients: it was refused */
				engine_rcpt_refused(sp->es);
				error_reply(sp, "550 5.1.1 <%s>: Recipient address rejected: User unknown",
				    printable(fmt, sizeof(fmt), rcpt));
				return;
			}
		} else {
			mailaddr_key(ra, rcpt);
		}
	}
	if (!local && !sp->p->passthrough && !sp->p->have_relayhost) {
		engine_rcpt_refused(sp->es);
		reply(sp, "451 4.3.5 <%s>: relaying is allowed but no relayhost is configured",
		    rcpt);
		return;
	}
	{
		int route = (sp->p->passthrough || !local) ? 2 : 1;

		if (sp->route != 0 && sp->route != route) {
			/* one message goes one way: RFC 5321 clients send the rest later */
			engine_rcpt_refused(sp->es);
			reply(sp, "452 4.5.3 Error: send the recipients %s in a separate transaction",
			    route == 2 ? "outside our domains" : "in our domains");
			return;
		}
		if (route == 2) {
			sp->down_pending = 1;
			sp->down.open = sp->route == 0;
			snprintf(sp->down.sender, sizeof(sp->down.sender), "%s", sp->sender);
			snprintf(sp->down.rcpt, sizeof(sp->down.rcpt), "%s", rcpt);
			snprintf(sp->down.helo, sizeof(sp->down.helo), "%s", sp->p->myhostname);
			snprintf(sp->down_rcpt, sizeof(sp->down_rcpt), "%s", sp->down.rcpt);
			sp->route = 2;
			sp->st = ST_DOWNWAIT;
			return;	/* the downstream answers this RCPT */
		}
		sp->route = 1;
	}
	if (sp->nrcpt == sp->rcptcap) {
		sp->rcptcap = sp->rcptcap ? sp->rcptcap * 2 : 8;
		sp->rcpt = xreallocarray(sp->rcpt, sp->rcptcap, sizeof(char *));
		sp->rcpt_local = xreallocarray(sp->rcpt_local, sp->rcptcap, sizeof(int));
	}
	sp->rcpt[sp->nrcpt] = xstrdup(rcpt);
	sp->rcpt_local[sp->nrcpt] = local;
	sp->nrcpt++;
	reply(sp, "250 2.1.5 Ok");
}

static void
cmd_data(struct smtp_proto *sp, char *arg)
{
	if (*arg != '\0') {
		error_reply(sp, "501 5.5.4 Syntax: DATA");
		return;
	}
	if (!sp->in_tx) {
		error_reply(sp, "503 5.5.1 Error: need MAIL command");
		return;
	}
	if (sp->nrcpt == 0) {
		error_reply(sp, "554 5.5.1 Error: no valid recipients");
		return;
	}
	sp->ds = DS_LS_CRLF;
	sp->dlen = sp->dtotal = 0;
	sp->bare = 0;
	sp->hs = HS_BOL;
	sp->hlen = 0;
	/* the envelope, for the caller's Received: line while the data comes */
	msg_clear(&sp->msg);
	sp->msg.sender = sp->sender;
	sp->msg.rcpt = sp->rcpt;
	sp->msg.rcpt_local = sp->rcpt_local;
	sp->msg.nrcpt = sp->nrcpt;
	snprintf(sp->msg.client, sizeof(sp->msg.client), "%s", engine_client_text(sp->es));
	snprintf(sp->msg.helo, sizeof(sp->msg.helo), "%s", sp->helo);
	sp->msg.downstream = sp->route == 2;
	sp->msg.esmtp = sp->greeted == 2;
	sp->msg.tls = sp->tls;
	sp->msg.auth = sp->authenticated;
	if (sp->route == 2) {
		/*
		 * Every recipient was accepted downstream: the client may start at
		 * once. The server sends DATA downstream now and the message as it
		 * comes; should the downstream refuse it, the client hears that
		 * refusal as the answer to its final dot.
		 */
		snprintf(sp->down.rcpt, sizeof(sp->down.rcpt), "%s", sp->rcpt[0]);
		snprintf(sp->down.client, sizeof(sp->down.client), "%s", engine_client_text(sp->es));
		snprintf(sp->down.client_helo, sizeof(sp->down.client_helo), "%s", sp->helo);
		sp->stream = 1;
	}
	sp->st = ST_DATA;
	reply(sp, "354 End data with <CR><LF>.<CR><LF>");
}

typedef void (*cmd_fn)(struct smtp_proto *sp, char *arg, size_t cmdlen, long long now);

static void c_ehlo(struct smtp_proto *sp, char *a, size_t l, long long n) { cmd_helo(sp, a, l, n, 1); }
static void c_helo(struct smtp_proto *sp, char *a, size_t l, long long n) { cmd_helo(sp, a, l, n, 0); }
static void c_data(struct smtp_proto *sp, char *a, size_t l, long long n) { (void)l; (void)n; cmd_data(sp, a); }

static void
c_rset(struct smtp_proto *sp, char *a, size_t l, long long n)
{
	(void)a; (void)l; (void)n;
	if (sp->in_tx)
		engine_abort(sp->es);
	tx_reset(sp);
	reply(sp, "250 2.0.0 Ok");
}

static void
c_noop(struct smtp_proto *sp, char *a, size_t l, long long n)
{
	(void)a; (void)l; (void)n;
	reply(sp, "250 2.0.0 Ok");
}

static void
c_quit(struct smtp_proto *sp, char *a, size_t l, long long n)
{
	(void)a; (void)l; (void)n;
	reply(sp, "221 2.0.0 Bye");
	sp->close_after = 1;
	sp->st = ST_CLOSED;
}

static void
c_help(struct smtp_proto *sp, char *a, size_t l, long long n)
{
	(void)a; (void)l; (void)n;
	reply(sp, "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT HELP");
}

static void
c_vrfy(struct smtp_proto *sp, char *a, size_t l, long long n)
{
	(void)a; (void)l; (void)n;
	if (sp->p->vrfy)
		reply(sp, "252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery");
	else
		error_reply(sp, "502 5.5.1 VRFY command is disabled");
}

static void
c_expn(struct smtp_proto *sp, char *a, size_t l, long long n)
{
	(void)a; (void)l; (void)n;
	error_reply(sp, "502 5.5.1 EXPN command is disabled");
}

static const struct {
	const char *verb;
	cmd_fn fn;
} commands[] = {
	{ "EHLO", c_ehlo }, { "HELO", c_helo }, { "MAIL", cmd_mail }, { "RCPT", cmd_rcpt },
	{ "DATA", c_data }, { "RSET", c_rset }, { "NOOP", c_noop }, { "QUIT", c_quit },
	{ "HELP", c_help }, { "VRFY", c_vrfy }, { "EXPN", c_expn }, { "AUTH", cmd_auth },
};

static const struct {
	const char *verb;
	cmd_fn fn;
} long_commands[] = {
	{ "STARTTLS", cmd_starttls },
};

static void
command(struct smtp_proto *sp, char *line, size_t cmdlen, long long now)
{
	size_t vl = strcspn(line, " ");
	char *arg = line + vl;
	int after_auth = sp->after_auth;

	sp->after_auth = 0;
	if (*arg == ' ')
		arg++;
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (vl == 4 && strncasecmp(line, commands[i].verb, 4) == 0) {
			commands[i].fn(sp, arg, cmdlen, now);
			if (commands[i].fn == cmd_auth)
				sp->after_auth = 1;
			return;
		}
	for (size_t i = 0; i < sizeof(long_commands) / sizeof(long_commands[0]); i++)
		if (vl == strlen(long_commands[i].verb) &&
		    strncasecmp(line, long_commands[i].verb, vl) == 0) {
			long_commands[i].fn(sp, arg, cmdlen, now);
			return;
		}
	{
		char esc[LOG_ESCAPE_BUFSZ];

		/* after a refused AUTH the client may be sending its credentials */
		log_debug("unknown command from %s: %s", engine_client_text(sp->es), after_auth ?
		    "(a line after AUTH, not logged)" : log_escape(esc, line, strlen(line)));
	}
	error_reply(sp, "502 5.5.2 Error: command not recognized");
}

/* ---- DATA ---- */

/*
 * Header names for the engine's header stage, as the bytes go by (after
 * unstuffing), so a message never has to be held to find its header
 * section: a line starting with NAME: is a header; a continuation line,
 * anything else and everything after the first empty line are not.
 */
static void
scan_headers(struct smtp_proto *sp, const char *s, size_t n)
{
	struct verdict v;

	for (size_t i = 0; i < n && sp->hs != HS_DONE; i++) {
		char c = s[i];

		switch (sp->hs) {
		case HS_BOL:
			if (c == '\r') {
				sp->hs = HS_CR;
			} else if (c == '\n') {
				sp->hs = HS_DONE;
			} else if (c == ' ' || c == '\t' || c == ':') {
				sp->hs = HS_SKIP;
			} else {
				sp->hname[0] = c;
				sp->hlen = 1;
				sp->hs = (unsigned char)c > ' ' ? HS_NAME : HS_SKIP;
			}
			break;
		case HS_CR:
			sp->hs = c == '\n' ? HS_DONE : HS_SKIP;
			break;
		case HS_NAME:
			if (c == ':') {
				sp->hname[sp->hlen] = '\0';
				engine_header(sp->es, sp->hname, &v);
				sp->hs = HS_SKIP;
			} else if ((unsigned char)c <= ' ' || sp->hlen + 1 >= sizeof(sp->hname)) {
				sp->hs = c == '\n' ? HS_BOL : HS_SKIP;
			} else {
				sp->hname[sp->hlen++] = c;
			}
			break;
		case HS_SKIP: {
			const char *nl = memchr(s + i, '\n', n - i);

			if (nl == NULL)
				return;
			i = (size_t)(nl - s);
			sp->hs = HS_BOL;
			break;
		}
		case HS_DONE:
			break;
		}
	}
}

static void
data_put(struct smtp_proto *sp, const char *s, size_t n)
{
	sp->dtotal += n;
	if (sp->p->message_size_limit && sp->dtotal > sp->p->message_size_limit)
		return;		/* counted, not stored */
	if (sp->hs != HS_DONE)
		scan_headers(sp, s, n);
	if (sp->dlen + n > sp->dcap) {
		sp->dcap = (sp->dlen + n) * 2 + 4096;
		if (sp->dcap > SMTP_DATA_HOLD_MAX + 8)
			sp->dcap = sp->dlen + n > SMTP_DATA_HOLD_MAX + 8 ? sp->dlen + n :
			    SMTP_DATA_HOLD_MAX + 8;
		sp->data = xrealloc(sp->data, sp->dcap);
	}
	memcpy(sp->data + sp->dlen, s, n);
	sp->dlen += n;
}

/* the held data is full: the caller must take some before more is scanned
 * (a message past the size limit is only counted: never full) */
static int
data_full(const struct smtp_proto *sp)
{
	return sp->dlen >= SMTP_DATA_HOLD_MAX &&
	    !(sp->p->message_size_limit && sp->dtotal > sp->p->message_size_limit);
}

static void
data_end(struct smtp_proto *sp)
{
	struct verdict v;

	sp->st = ST_CMD;
	if (sp->p->message_size_limit && sp->dtotal > sp->p->message_size_limit) {
		reply(sp, "552 5.3.4 Message size exceeds fixed limit");
		engine_abort(sp->es);
		tx_reset(sp);
		return;
	}
	if (sp->bare && sp->bare_reject) {
		log_info("reject: END-OF-MESSAGE from %s: bare <CR> or <LF> in message; reason=bare-newline",
		    engine_client_text(sp->es));
		reply(sp, "550 5.5.2 Message refused: bare <CR> or <LF> in it; lines must end "
		    "with <CR><LF>");
		engine_abort(sp->es);
		tx_reset(sp);
		return;
	}
	engine_eom(sp->es, &v);
	if (verdict_reply(sp, STAGE_EOM, &v, NULL)) {
		tx_reset(sp);
		return;
	}
	/* the envelope was filled at DATA; the data is what was not taken */
	sp->msg.data = sp->data;
	sp->msg.len = sp->dlen;
	sp->pending = 1;
	sp->st = ST_WAIT;
}

/* scan DATA bytes; returns bytes consumed (stops after the final dot) */
static size_t
data_input(struct smtp_proto *sp, const char *buf, size_t len)
{
	int norm = !sp->bare_reject;

	for (size_t i = 0; i < len; i++) {
		char c = buf[i];

		/* full: the caller takes a piece, then feeds the rest; the final
		 * dot, which stores nothing, may still come */
		if (data_full(sp) && !(sp->ds == DS_LS_CRLF && c == '.') &&
		    !(sp->ds == DS_DOT && c == '\r') && !(sp->ds == DS_DOT_CR && c == '\n'))
			return i;
		switch (sp->ds) {
		case DS_LS_CRLF:
		case DS_LS_LF:
			if (c == '.') {
				/* "\n." can never end DATA, but is still dot-stuffing */
				sp->ds = sp->ds == DS_LS_CRLF ? DS_DOT : DS_DOT_LF;
			} else if (c == '\r') {
				sp->ds = DS_CR;
			} else if (c == '\n') {
				sp->bare = 1;
				data_put(sp, norm ? "\r\n" : "\n", norm ? 2 : 1);
				sp->ds = DS_LS_LF;
			} else {
				data_put(sp, &c, 1);
				sp->ds = DS_MID;
			}
			break;
		case DS_DOT:
			if (c == '\r') {
				sp->ds = DS_DOT_CR;
			} else if (c == '\n') {
				sp->bare = 1;	/* ".<LF>": not the end */
				data_put(sp, norm ? ".\r\n" : ".\n", norm ? 3 : 2);
				sp->ds = DS_LS_LF;
			} else {
				data_put(sp, &c, 1);	/* the leading dot is stuffing */
				sp->ds = DS_MID;
			}
			break;
		case DS_DOT_LF:
			if (c == '\r' || c == '\n') {
				data_put(sp, ".", 1);	/* a lone dot here ends nothing: keep it */
				sp->ds = DS_MID;
				i--;
			} else {
				data_put(sp, &c, 1);	/* the leading dot was stuffing */
				sp->ds = DS_MID;
			}
			break;
		case DS_DOT_CR:
			if (c == '\n') {
				data_end(sp);
				return i + 1;
			}
			sp->bare = 1;	/* ".<CR>x" */
			data_put(sp, norm ? ".\r\n" : ".\r", norm ? 3 : 2);
			sp->ds = DS_MID;
			i--;	/* look at c again */
			break;
		case DS_MID:
			if (c == '\r') {
				sp->ds = DS_CR;
			} else if (c == '\n') {
				sp->bare = 1;
				data_put(sp, norm ? "\r\n" : "\n", norm ? 2 : 1);
				sp->ds = DS_LS_LF;
			} else {
				/* copy the run up to the next CR or LF at once */
				size_t j = i + 1, lim = len;

				if (sp->dlen < SMTP_DATA_HOLD_MAX && lim - i > SMTP_DATA_HOLD_MAX - sp->dlen)
					lim = i + (SMTP_DATA_HOLD_MAX - sp->dlen);
				while (j < lim && buf[j] != '\r' && buf[j] != '\n')
					j++;
				data_put(sp, buf + i, j - i);
				i = j - 1;
			}
			break;
		case DS_CR:
			if (c == '\n') {
				data_put(sp, "\r\n", 2);
				sp->ds = DS_LS_CRLF;
			} else {
				sp->bare = 1;	/* bare CR */
				data_put(sp, norm ? "\r\n" : "\r", norm ? 2 : 1);
				sp->ds = DS_MID;
				i--;
			}
			break;
		}
	}
	return len;
}

/* ---- input ---- */

size_t
smtp_proto_input(struct smtp_proto *sp, const char *buf, size_t len, long long now)
{
	size_t i = 0;

	while (i < len) {
		if (sp->st == ST_CLOSED || sp->st == ST_TLS)
			return len;	/* after STARTTLS, buffered plaintext is dropped */
		if (sp->st == ST_WAIT || sp->st == ST_AUTHWAIT || sp->st == ST_DOWNWAIT)
			return i;
		if (sp->st == ST_DATA) {
			size_t k = data_input(sp, buf + i, len - i);

			i += k;
			if (k == 0)
				return i;	/* full: wait for smtp_proto_stream_taken() */
			continue;
		}
		{
			const char *nl = memchr(buf + i, '\n', len - i);
			size_t n = nl ? (size_t)(nl - (buf + i)) : len - i;
			size_t room = sp->linecap - 1 - sp->linelen;

			if (!sp->overflow && n <= room) {
				memcpy(sp->line + sp->linelen, buf + i, n);
				sp->linelen += n;
			} else {
				sp->overflow = 1;
			}
			sp->overflow_len += n;
			i += n;
			if (nl == NULL)
				return i;	/* wait for the rest of the line */
			i++;	/* the LF */
		}
		{
			size_t cmdlen = sp->overflow_len + 1;
			int crlf = !sp->overflow && sp->linelen > 0 && sp->line[sp->linelen - 1] == '\r';
			int more = i < len;	/* the client sent more without waiting */
			int authline = sp->st == ST_AUTH || (sp->linelen >= 5 &&
			    strncasecmp(sp->line, "AUTH ", 5) == 0);

			sp->line[sp->linelen - (crlf ? 1 : 0)] = '\0';
			/* AUTH exchanges may run to 12288 octets (RFC 4954). HELO/EHLO,
			 * MAIL and RCPT go to the engine, which holds them to
			 * max_command_length (plus what their ESMTP parameters earn)
			 * and bans past it; any other line only needs to fit */
			enum engine_stage cst = command_stage(sp->line);
			struct verdict v;
			int judged = 0;

			if (!sp->overflow && !authline && cmdlen > SMTP_HARD_LINE_MAX &&
			    (cst == STAGE_COMMAND || sp->p->pol->max_command_length == 0))
				sp->overflow = 1;
			if (!sp->overflow && !authline && cst != STAGE_COMMAND &&
			    sp->p->pol->max_command_length > 0 &&
			    cmdlen > sp->p->pol->max_command_length) {
				/* judged before the arguments are parsed, with the room
				 * its ESMTP parameters earn */
				unsigned ticket;
				const struct snapshot *snap = snapref_acquire(sp->p->snaps, &ticket);

				engine_command_params(sp->es, sp->line + 4);
				engine_long_command(sp->es, snap, cst, cmdlen, now, &v);
				snapref_release(sp->p->snaps, ticket);
				judged = 1;
				sp->overflow = v.tag != NULL;
			}
			if (sp->st == ST_AUTH && !sp->overflow) {
				if (!crlf && sp->bare_reject) {
					auth_end(sp);
					error_reply(sp, "500 5.5.2 Error: bare <LF> received; lines end with <CR><LF>");
				} else {
					auth_step(sp, sp->line);
				}
				explicit_bzero(sp->line, sp->linelen);
			} else if (sp->overflow) {
				if (sp->st == ST_AUTH)
					auth_end(sp);
				if (!judged) {
					unsigned ticket;
					const struct snapshot *snap = snapref_acquire(sp->p->snaps, &ticket);

					engine_long_command(sp->es, snap, cst, cmdlen, now, &v);
					snapref_release(sp->p->snaps, ticket);
				}
				/* the engine's verdict (and ban), or our hard cap; one ban a session */
				if (sp->banned)
					v.ban_seconds = 0;
				/* an AUTH line or SASL response is never logged, not even cut short */
				if (v.tag == NULL || !verdict_reply(sp, cst, &v,
				    authline ? "AUTH (credentials not logged)" : sp->line))
					error_reply(sp, "500 5.5.2 Error: line too long");
				else
					count_error(sp);
				if (v.ban_seconds > 0)
					sp->banned = 1;
			} else if (!crlf && sp->bare_reject) {
				error_reply(sp, "500 5.5.2 Error: bare <LF> received; lines end with <CR><LF>");
			} else if (more && sp->greeted != 2) {
				/* RFC 2920: no pipelining before EHLO has offered it */
				char esc[LOG_ESCAPE_BUFSZ];

				/* an AUTH line carries credentials: its verb only */
				log_info("reject: %s: improper command pipelining after %s; reason=pipelining",
				    engine_client_text(sp->es), authline ? "AUTH" :
				    log_escape(esc, sp->line, strlen(sp->line)));
				reply(sp, "554 5.5.0 Error: improper use of SMTP command pipelining");
				sp->close_after = 1;
				sp->st = ST_CLOSED;
			} else {
				if (memchr(sp->line, '\0', sp->linelen - (crlf ? 1 : 0)) != NULL)
					error_reply(sp, "500 5.5.2 Error: NUL byte in command");
				else
					command(sp, sp->line, cmdlen, now);
			}
			sp->linelen = 0;
			sp->overflow = 0;
			sp->overflow_len = 0;
		}
	}
	return i;
}

void
smtp_proto_delivered(struct smtp_proto *sp, int ok, const char *code, const char *dsn,
    const char *text)
{
	if (ok)
		reply(sp, "250 2.0.0 Ok: %s", text);
	else
		reply(sp, "%s %s %s", code, dsn, text);
	tx_reset(sp);
	sp->st = ST_CMD;
}

struct smtp_down_req *
smtp_proto_pending_down(struct smtp_proto *sp)
{
	return sp->down_pending ? &sp->down : NULL;
}

const struct smtp_down_req *
smtp_proto_take_down_open(struct smtp_proto *sp)
{
	if (!sp->down_open)
		return NULL;
	sp->down_open = 0;
	return &sp->down;
}

int
smtp_proto_take_down_reset(struct smtp_proto *sp)
{
	int r = sp->down_reset;

	sp->down_reset = 0;
	return r;
}

/*
 * A downstream reply passed on as it is. A 421 says the downstream is
 * closing: it ends the client's session too once said (Postfix hangs up
 * after its before-queue filter's 421), so the client does not go on in a
 * session whose downstream is gone, and retries later elsewhere.
 */
static void
mirror(struct smtp_proto *sp, const char *line)
{
	reply(sp, "%s", line);
	if (strncmp(line, "421", 3) == 0) {
		log_info("downstream said 421 to %s: closing the session", engine_client_text(sp->es));
		if (sp->in_tx)
			engine_abort(sp->es);
		tx_reset(sp);
		sp->close_after = 1;
		sp->st = ST_CLOSED;
	}
}

void
smtp_proto_down_done(struct smtp_proto *sp, const char *line)
{
	sp->down_pending = 0;
	sp->st = ST_CMD;
	if (line[0] == '2') {
		if (sp->nrcpt == sp->rcptcap) {
			sp->rcptcap = sp->rcptcap ? sp->rcptcap * 2 : 8;
			sp->rcpt = xreallocarray(sp->rcpt, sp->rcptcap, sizeof(char *));
			sp->rcpt_local = xreallocarray(sp->rcpt_local, sp->rcptcap, sizeof(int));
		}
		sp->rcpt[sp->nrcpt] = xstrdup(sp->down_rcpt);
		sp->rcpt_local[sp->nrcpt] = 0;
		sp->nrcpt++;
	} else {
		engine_rcpt_refused(sp->es);	/* the downstream refused it */
	}
	if (sp->nrcpt == 0 && line[0] != '2') {
		/* no session worth keeping: the next recipient opens afresh */
		sp->route = 0;
		sp->down_reset = 1;
	}
	mirror(sp, line);	/* what the downstream said */
}

const struct smtp_down_req *
smtp_proto_down_info(const struct smtp_proto *sp)
{
	return &sp->down;
}

int
smtp_proto_in_data(const struct smtp_proto *sp)
{
	return sp->st == ST_DATA;
}

int
smtp_proto_streaming(const struct smtp_proto *sp)
{
	return sp->stream;
}

int
smtp_proto_stream_chunk(struct smtp_proto *sp, size_t min, const char **p_r, size_t *len_r)
{
	if (sp->st != ST_DATA || sp->dlen == 0 || sp->dlen < min)
		return 0;
	if (sp->p->message_size_limit && sp->dtotal > sp->p->message_size_limit)
		return 0;	/* will be refused at the end: send no more */
	*p_r = sp->data;
	*len_r = sp->dlen;
	return 1;
}

const struct smtp_msg *
smtp_proto_envelope(const struct smtp_proto *sp)
{
	return sp->st == ST_DATA || sp->pending ? &sp->msg : NULL;
}

void
smtp_proto_stream_taken(struct smtp_proto *sp, size_t n)
{
	if (n > sp->dlen)
		n = sp->dlen;
	memmove(sp->data, sp->data + n, sp->dlen - n);
	sp->dlen -= n;
}

void
smtp_proto_delivered_reply(struct smtp_proto *sp, const char *line)
{
	sp->route = 0;		/* the server closes the session it used */
	tx_reset(sp);
	sp->down_reset = 0;
	sp->st = ST_CMD;
	mirror(sp, line);
}

void
smtp_proto_eof(struct smtp_proto *sp)
{
	if (sp->in_tx)
		engine_abort(sp->es);
	sp->st = ST_CLOSED;
}
