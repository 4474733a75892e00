/*
 * smtp_proto - the ESMTP server side of one connection, without I/O.
 *
 *   smtp_proto_start()      greeting (or 554 for a kill-listed client)
 *   smtp_proto_input()      bytes in; replies appended to the output buffer
 *   smtp_proto_next()       what the caller must do now: write, ban, start
 *                           TLS, check a password, run a downstream step,
 *                           deliver, close, or read on
 *   smtp_proto_delivered()  a delivery's outcome: the reply to the final dot
 *
 * The session is an explicit state (enum smtp_state: what the next input
 * is) plus flag bits (SMTP_SF_*: what has been said). A command table, as
 * OpenSMTPD's smtp_session.c has it, gives each verb the states and flags
 * it needs (SMTP_CMD_*), a check_ (state, syntax: replies with the error)
 * and a proceed_ (engine verdict, side effects). The transaction (envelope,
 * route, held data) is one struct, freed by tx_reset().
 *
 * Lines are framed by common/linereader (hard cap; longer ones are answered
 * 500 5.5.2 and skipped to their end, and the engine decides on a ban), DATA
 * by common/dotstuff (only <CR><LF>.<CR><LF> ends it; a bare <CR> or <LF> is
 * remembered so that smtp_bare_newline = reject refuses the message), SASL
 * by common/sasl: what is left here of AUTH is its SMTP framing.
 *
 * Every refusal the door makes is recorded by the engine with a reason tag
 * (engine_door_refusal()): logged, counted, like a policy verdict.
 *
 * Never blocks, never allocates without bound: at most SMTP_DATA_HOLD_MAX
 * octets of a message are held (the caller takes pieces off to its spool
 * file or the downstream, else input waits), and DATA past the size limit
 * is counted, not stored. Header names reach the engine as they go by.
 * Not thread-safe: one per connection.
 */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "common/dotstuff.h"
#include "common/linereader.h"
#include "common/log.h"
#include "common/mailaddr.h"
#include "common/pclimits.h"
#include "common/xmalloc.h"
#include "smtp-gateway/smtp_proto.h"

#define SMTP_HARD_LINE_MAX 4096		/* lines but HELO/MAIL/RCPT; all when max_command_length = 0 */
#define SMTP_MAX_ERRORS 10		/* then 421; before AUTH */
#define SMTP_MAX_ERRORS_AUTH 30		/* after AUTH: a known user gets more room */
#define SMTP_MAX_RCPT_HARD 10000

#define HAS(sp, f)	(((sp)->flags & (f)) != 0)

/* one transaction: MAIL to the final dot (or RSET); tx_reset() frees it */
struct smtp_tx {
	char *sender;
	char **rcpt;
	int *rcpt_local;
	size_t nrcpt, rcptcap;
	/* DATA: at most SMTP_DATA_HOLD_MAX octets held, the caller takes the rest */
	char *data;
	size_t dlen, dcap, dtotal;
	struct dotunstuff du;
	struct hdrnames hn;	/* header names go to the engine as they arrive */
	int route;		/* 0 none yet, 1 local store, 2 downstream */
	int down_open;		/* pass-through: open downstream now (MAIL accepted) */
	int down_opened;	/* ... and that session belongs to this transaction */
	int down_pending;	/* a RCPT waits for the downstream */
	char down_rcpt[600];	/* ... this one */
	int stream;		/* DATA is being streamed downstream */
	int pending;		/* the message waits for delivery */
	/* Sieve: the snapshot held from MAIL to the end of the message, and
	 * the domain script of the first recipient (one per transaction) */
	const struct sieve_rules *sieve;
	const struct sieve_rules_script *sieve_dom;
	int sieve_set;		/* sieve_dom is the first recipient's */
	char sieve_domain[256];
	char sieve_rcpt[MAILADDR_TEXT_MAX];
};

struct smtp_proto {
	const struct smtp_params *p;
	struct engine_session *es;
	enum smtp_state st;
	unsigned flags;		/* SMTP_SF_* */
	char helo[128];
	char host[256];		/* the verified client name, "" none (Sieve) */
	struct ipaddr addr;
	int has_addr;
	struct linereader lr;
	struct smtp_tx tx;
	struct smtp_msg msg;
	struct smtp_down_req down;
	int down_reset;		/* the server must drop its downstream session */
	/* output */
	char *out;
	size_t olen, ocap;
	int close_after;
	unsigned long ban;
	struct ipaddr ban_addr;
	const char *ban_reason;	/* the verdict's tag (static) */
	int banned;		/* this session asked for its ban already */
	unsigned errors;
	int starttls;		/* the server must start TLS now */
	char auth_user[256];
	struct smtp_auth_req auth;	/* auth.sasl: the exchange under way, or NULL */
	char *auth_final;	/* SCRAM: the server's final data, sent after the check */
	char tls_peer[256];	/* verified client certificate's identity, "" none */
	int after_auth;		/* the last command was a refused or finished AUTH:
				 * the next line may be a SASL response, never logged */
	int bare_reject;	/* smtp_bare_newline = reject, and not an excepted client */
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

/* the engine records a refusal the door makes (tag, log, counters); reply it */
static void
refuse(struct smtp_proto *sp, enum engine_stage stage, const char *tag, const char *arg,
    const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static void
refuse(struct smtp_proto *sp, enum engine_stage stage, const char *tag, const char *arg,
    const char *fmt, ...)
{
	char buf[512], code[4] = "", dsn[8] = "";
	const char *text = buf;
	struct verdict v;
	va_list ap;
	size_t n;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	reply(sp, "%s", buf);
	/* "CODE DSN text" */
	n = strspn(text, "0123456789");
	if (n == 3 && text[3] == ' ') {
		memcpy(code, text, 3);
		text += 4;
		n = strspn(text, "0123456789.");
		if (n > 0 && n < sizeof(dsn) && text[n] == ' ') {
			memcpy(dsn, text, n);
			dsn[n] = '\0';
			text += n + 1;
		}
	}
	engine_door_refusal(sp->es, stage, tag, code, dsn, text, arg, &v);
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
	/* room for AUTH lines (and CR); other commands are held to max_command_length */
	linereader_init(&sp->lr, SMTP_AUTH_LINE_MAX + 2);
	sp->ocap = 1024;
	sp->out = xmalloc(sp->ocap);
	return sp;
}

/* end the transaction, whatever state it is in; the envelope arrays stay
 * allocated for the next one */
static void
tx_reset(struct smtp_proto *sp)
{
	struct smtp_tx *tx = &sp->tx;
	char **rcpt = tx->rcpt;
	int *rcpt_local = tx->rcpt_local;
	size_t rcptcap = tx->rcptcap;

	if (tx->route == 2 || tx->down_opened)
		sp->down_reset = 1;	/* the server drops the downstream session */
	free(tx->sender);
	for (size_t i = 0; i < tx->nrcpt; i++)
		free(tx->rcpt[i]);
	free(tx->data);
	sieve_rules_unref(&tx->sieve);
	memset(tx, 0, sizeof(*tx));
	tx->rcpt = rcpt;
	tx->rcpt_local = rcpt_local;
	tx->rcptcap = rcptcap;
	sp->flags &= ~SMTP_SF_TX;
	/* the message only pointed into the transaction */
	memset(&sp->msg, 0, sizeof(sp->msg));
}

void
smtp_proto_free(struct smtp_proto **spp)
{
	struct smtp_proto *sp = *spp;

	if (sp == NULL)
		return;
	tx_reset(sp);
	free(sp->tx.rcpt);
	free(sp->tx.rcpt_local);
	sasl_server_free(&sp->auth.sasl);
	free(sp->auth_final);
	linereader_deinit(&sp->lr);
	free(sp->out);
	engine_session_free(&sp->es);
	free(sp);
	*spp = NULL;
}

enum smtp_state
smtp_proto_state(const struct smtp_proto *sp)
{
	return sp->st;
}

unsigned
smtp_proto_flags(const struct smtp_proto *sp)
{
	return sp->flags;
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
	return sp->tx.pending ? &sp->msg : NULL;
}

enum smtp_action
smtp_proto_next(struct smtp_proto *sp, union smtp_action_arg *arg_r)
{
	if (sp->ban > 0) {
		arg_r->ban.seconds = sp->ban;
		arg_r->ban.addr = sp->ban_addr;
		arg_r->ban.reason = sp->ban_reason != NULL ? sp->ban_reason : "auto-ban";
		sp->ban = 0;
		return SMTP_ACT_BAN;
	}
	if (sp->olen > 0)
		return SMTP_ACT_WRITE;
	if (sp->starttls) {
		sp->starttls = 0;
		return SMTP_ACT_STARTTLS;
	}
	if (sp->down_reset) {
		sp->down_reset = 0;
		return SMTP_ACT_DOWN_RESET;
	}
	if (sp->tx.down_open) {
		sp->tx.down_open = 0;
		arg_r->down = &sp->down;
		return SMTP_ACT_DOWN_OPEN;
	}
	if (sp->st == SMTP_ST_WAIT_AUTH) {
		arg_r->auth = &sp->auth;
		return SMTP_ACT_AUTH_CHECK;
	}
	if (sp->tx.down_pending) {
		arg_r->down = &sp->down;
		return SMTP_ACT_DOWN_STEP;
	}
	if (sp->tx.pending) {
		arg_r->msg = &sp->msg;
		return SMTP_ACT_DELIVER;
	}
	if (sp->close_after)
		return SMTP_ACT_CLOSE;
	return SMTP_ACT_NEED_INPUT;
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
close_session(struct smtp_proto *sp)
{
	sp->close_after = 1;
	sp->st = SMTP_ST_CLOSED;
}

/* one more error against the budget; past it, 421 and close */
static void
count_error(struct smtp_proto *sp)
{
	if (++sp->errors >= (HAS(sp, SMTP_SF_AUTH) ? SMTP_MAX_ERRORS_AUTH : SMTP_MAX_ERRORS)) {
		refuse(sp, STAGE_COMMAND, "error-budget", NULL, "421 4.7.0 %s Error: too many errors",
		    sp->p->myhostname);
		close_session(sp);
	}
}

/* a refusal that counts toward the error budget */
static void
error_reply(struct smtp_proto *sp, enum engine_stage stage, const char *tag, const char *fmt,
    ...) __attribute__((format(printf, 4, 5)));

static void
error_reply(struct smtp_proto *sp, enum engine_stage stage, const char *tag, const char *fmt,
    ...)
{
	char buf[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	refuse(sp, stage, tag, NULL, "%s", buf);
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
	snprintf(sp->host, sizeof(sp->host), "%s", hostname != NULL ? hostname : "");
	sp->bare_reject = sp->p->bare_newline_reject;
	if (sp->bare_reject && addr != NULL && sp->p->bare_newline_exceptions != NULL &&
	    cidrtab_lookup(sp->p->bare_newline_exceptions, addr) != CIDRTAB_NONE)
		sp->bare_reject = 0;	/* an old client the admin vouches for: normalise */
	engine_connect(sp->es, snap, addr, hostname, now, &v);
	if (engine_client_is_killed(sp->es, snap, now, &v)) {
		snapref_release(sp->p->snaps, ticket);
		engine_log(sp->es, STAGE_CONNECT, &v, NULL, NULL);
		reply(sp, "%s %s %s", v.code, v.dsn, v.text);
		close_session(sp);
		return;
	}
	snapref_release(sp->p->snaps, ticket);
	reply(sp, "220 %s", sp->p->banner);
}

/* ---- session settings ---- */

void
smtp_proto_set_tls(struct smtp_proto *sp, int active)
{
	if (active)
		sp->flags |= SMTP_SF_TLS;
	else
		sp->flags &= ~SMTP_SF_TLS;
	if (active && sp->st == SMTP_ST_TLS) {
		/* RFC 3207: forget everything said before the handshake */
		engine_starttls(sp->es);	/* the engine forgets HELO and AUTH too */
		tx_reset(sp);
		sp->helo[0] = '\0';
		/* RFC 3207 §4.2: an AUTH from before the handshake does not carry over */
		sp->flags &= ~(SMTP_SF_HELO | SMTP_SF_EHLO | SMTP_SF_AUTH);
		sp->auth_user[0] = '\0';
		linereader_reset(&sp->lr);
		sp->st = SMTP_ST_COMMAND;
	}
}

void
smtp_proto_set_no_auth(struct smtp_proto *sp)
{
	sp->flags |= SMTP_SF_NO_AUTH;
}

void
smtp_proto_set_submission(struct smtp_proto *sp)
{
	sp->flags |= SMTP_SF_SUBMISSION;
}

void
smtp_proto_set_tls_peer(struct smtp_proto *sp, const char *identity)
{
	snprintf(sp->tls_peer, sizeof(sp->tls_peer), "%s", identity ? identity : "");
}

struct smtp_auth_req *
smtp_proto_pending_auth(struct smtp_proto *sp)
{
	return sp->st == SMTP_ST_WAIT_AUTH ? &sp->auth : NULL;
}

const char *
smtp_proto_auth_user(const struct smtp_proto *sp)
{
	return sp->auth_user;
}

/* ---- AUTH: the SMTP framing of common/sasl (RFC 4954) ---- */

/* the exchange is over (refused, aborted, or done) */
static void
auth_end(struct smtp_proto *sp)
{
	sasl_server_free(&sp->auth.sasl);
	free(sp->auth_final);
	sp->auth_final = NULL;
	if (sp->st == SMTP_ST_AUTH || sp->st == SMTP_ST_WAIT_AUTH)
		sp->st = SMTP_ST_COMMAND;
}

static void
auth_success(struct smtp_proto *sp)
{
	char esc[LOG_ESCAPE_BUFSZ];
	const char *user = sasl_server_user(sp->auth.sasl);

	snprintf(sp->auth_user, sizeof(sp->auth_user), "%s", user);
	sp->flags |= SMTP_SF_AUTH;
	log_info("%s%s: AUTH %s as %s", engine_session_id(sp->es), engine_client_text(sp->es),
	    sasl_mech_name(sasl_server_mech(sp->auth.sasl)), log_escape(esc, user, strlen(user)));
	reply(sp, "235 2.7.0 Authentication successful");
	auth_end(sp);
}

void
smtp_proto_auth_done(struct smtp_proto *sp, int ok)
{
	char esc[LOG_ESCAPE_BUFSZ];
	const char *login = sp->auth.sasl ? sasl_server_login(sp->auth.sasl) : "";

	sp->st = SMTP_ST_COMMAND;
	if (ok == SMTP_AUTH_TEMPFAIL) {
		log_info("%s%s: AUTH not checked, password checks busy; reason=auth-busy",
		    engine_session_id(sp->es), engine_client_text(sp->es));
		refuse(sp, STAGE_COMMAND, "auth-busy", NULL, "454 4.7.0 Temporary authentication failure");
	} else if (ok && sp->auth_final != NULL && sp->auth_final[0] != '\0') {
		/* RFC 4954 §4: final data goes in a 334; the client answers empty */
		reply(sp, "334 %s", sp->auth_final);
		sp->st = SMTP_ST_AUTH;
		return;
	} else if (ok) {
		auth_success(sp);
		return;
	} else {
		log_info("%s%s: AUTH failed for %s; reason=auth-failed", engine_session_id(sp->es),
		    engine_client_text(sp->es),
		    log_escape(esc, login, strlen(login)));
		error_reply(sp, STAGE_COMMAND, "auth-failed", "535 5.7.8 Error: authentication failed");
	}
	auth_end(sp);
}

/* the exchange says what comes next */
static void
auth_next(struct smtp_proto *sp, enum sasl_rc rc, const char *out64)
{
	switch (rc) {
	case SASL_CONTINUE:
		sp->st = SMTP_ST_AUTH;
		reply(sp, "334 %s", out64);
		return;
	case SASL_CHECK:
		sp->auth.check = 1;
		sp->st = SMTP_ST_WAIT_AUTH;
		return;
	case SASL_OK:
	case SASL_FAIL:
		/* every outcome goes by the caller: a failure's penalty applies */
		sp->auth.check = 0;
		sp->auth.ok = rc == SASL_OK;
		if (rc == SASL_OK && out64[0] != '\0')
			sp->auth_final = xstrdup(out64);
		sp->st = SMTP_ST_WAIT_AUTH;
		return;
	case SASL_BAD_BASE64:
		auth_end(sp);
		error_reply(sp, STAGE_COMMAND, "auth-syntax", "501 5.5.2 Error: invalid base64 data");
		return;
	case SASL_CANCELLED:
		auth_end(sp);
		error_reply(sp, STAGE_COMMAND, "auth-aborted", "501 5.7.0 Authentication aborted");
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
			error_reply(sp, STAGE_COMMAND, "auth-aborted", "501 5.7.0 Authentication aborted");
		} else if (line[0] != '\0') {
			auth_end(sp);
			error_reply(sp, STAGE_COMMAND, "auth-syntax",
			    "501 5.5.2 Error: expected an empty response");
		} else {
			auth_success(sp);
		}
		return;
	}
	rc = sasl_server_step64(sp->auth.sasl, line, &out64);
	auth_next(sp, rc, out64);
}

/* ---- the command table ---- */

/* a command line, parsed by its check_ for its proceed_ */
struct cmd_args {
	char *arg;		/* after the verb and one space */
	size_t cmdlen;		/* the line as sent, CRLF included */
	long long now;
	char *path;		/* MAIL, RCPT: <address> */
	char *params;
	struct mailaddr ma;	/* MAIL: the sender, parsed */
	unsigned mech;		/* AUTH */
	char *init;		/* AUTH: the initial response, or "" */
	int ehlo;		/* EHLO (else HELO) */
};

struct smtp_cmd {
	const char *verb;
	unsigned flags;		/* SMTP_CMD_* */
	const char *in_tx;	/* the 503 inside a transaction (SMTP_CMD_OUT_TX) */
	/* 0: go on to proceed_; -1: refused (replied, counted) */
	int (*check)(struct smtp_proto *sp, const struct smtp_cmd *cmd, struct cmd_args *a);
	void (*proceed)(struct smtp_proto *sp, struct cmd_args *a);
};

/* refuse a command in the wrong state; -1 when refused */
static int
check_state(struct smtp_proto *sp, const struct smtp_cmd *cmd)
{
	const char *why = NULL;

	if ((cmd->flags & SMTP_CMD_NEED_HELO) && !HAS(sp, SMTP_SF_HELO))
		why = "503 5.5.1 Error: send HELO/EHLO first";
	else if ((cmd->flags & SMTP_CMD_NEED_EHLO) && !HAS(sp, SMTP_SF_EHLO))
		why = "503 5.5.1 Error: send EHLO first";
	else if ((cmd->flags & SMTP_CMD_NOT_AUTH) && HAS(sp, SMTP_SF_AUTH))
		why = "503 5.5.1 Error: already authenticated";
	else if ((cmd->flags & SMTP_CMD_IN_TX) && !HAS(sp, SMTP_SF_TX))
		why = "503 5.5.1 Error: need MAIL command";
	else if ((cmd->flags & SMTP_CMD_OUT_TX) && HAS(sp, SMTP_SF_TX))
		why = cmd->in_tx;
	else if ((cmd->flags & SMTP_CMD_NOT_TLS) && HAS(sp, SMTP_SF_TLS))
		why = "503 5.5.1 Error: TLS already active";
	if (why == NULL)
		return 0;
	if (cmd->flags & SMTP_CMD_ERROR)
		error_reply(sp, STAGE_COMMAND, "bad-sequence", "%s", why);
	else
		refuse(sp, STAGE_COMMAND, "bad-sequence", NULL, "%s", why);
	return -1;
}

static int
check_plain(struct smtp_proto *sp, const struct smtp_cmd *cmd, struct cmd_args *a)
{
	(void)a;
	return check_state(sp, cmd);
}

/* a refusal at a check: the stage of the command, counted as an error */
#define CHECK_FAIL(sp, stage, tag, ...) \
	do { error_reply((sp), (stage), (tag), __VA_ARGS__); return -1; } while (0)

static int
check_auth(struct smtp_proto *sp, const struct smtp_cmd *cmd, struct cmd_args *a)
{
	char *mech = a->arg;

	if (sp->p->auth_mechs == 0 || HAS(sp, SMTP_SF_NO_AUTH))
		CHECK_FAIL(sp, STAGE_COMMAND, "auth-disabled",
		    "502 5.5.1 Error: authentication not enabled");
	if (check_state(sp, cmd) < 0)
		return -1;
	a->init = mech + strcspn(mech, " ");
	if (*a->init == ' ')
		*a->init++ = '\0';
	a->mech = authmech_from_name(mech);
	if (a->mech == 0 || !(sp->p->auth_mechs & a->mech) || sp->p->sasl_cb == NULL ||
	    (a->mech == SMTP_AUTH_EXTERNAL && sp->tls_peer[0] == '\0'))
		CHECK_FAIL(sp, STAGE_COMMAND, "auth-mechanism",
		    "504 5.5.4 Unrecognized authentication mechanism");
	if ((a->mech == SMTP_AUTH_PLAIN || a->mech == SMTP_AUTH_LOGIN) && !HAS(sp, SMTP_SF_TLS) &&
	    !sp->p->auth_allow_plaintext)
		CHECK_FAIL(sp, STAGE_COMMAND, "auth-encryption",
		    "538 5.7.11 Encryption required for requested authentication mechanism");
	if (a->mech == SMTP_AUTH_CRAM && *a->init != '\0')
		CHECK_FAIL(sp, STAGE_COMMAND, "syntax", "501 5.5.4 CRAM-MD5 takes no initial response");
	return 0;
}

static void
proceed_auth(struct smtp_proto *sp, struct cmd_args *a)
{
	struct sasl_params sp_params;
	const char *out64;
	enum sasl_rc rc;

	sp_params.cb = sp->p->sasl_cb;
	sp_params.hostname = sp->p->myhostname;
	sp_params.external_id = sp->tls_peer[0] ? sp->tls_peer : NULL;
	sasl_server_free(&sp->auth.sasl);
	memset(&sp->auth, 0, sizeof(sp->auth));
	sp->auth.sasl = sasl_server_new(a->mech, &sp_params);
	if (sp->auth.sasl == NULL) {
		error_reply(sp, STAGE_COMMAND, "auth-busy", "454 4.7.0 Temporary authentication failure");
		return;
	}
	sp->st = SMTP_ST_AUTH;
	rc = sasl_server_step64(sp->auth.sasl, *a->init ? a->init : NULL, &out64);
	auth_next(sp, rc, out64);
}

static int
check_starttls(struct smtp_proto *sp, const struct smtp_cmd *cmd, struct cmd_args *a)
{
	if (*a->arg != '\0')
		CHECK_FAIL(sp, STAGE_COMMAND, "syntax", "501 5.5.4 Syntax: STARTTLS");
	if (check_state(sp, cmd) < 0)
		return -1;
	if (!sp->p->tls_available)
		CHECK_FAIL(sp, STAGE_COMMAND, "tls-unavailable", "454 4.7.0 TLS not available");
	return 0;
}

static void
proceed_starttls(struct smtp_proto *sp, struct cmd_args *a)
{
	(void)a;
	reply(sp, "220 2.0.0 Ready to start TLS");
	sp->st = SMTP_ST_TLS;
	sp->starttls = 1;
}

static int
check_helo(struct smtp_proto *sp, const struct smtp_cmd *cmd, struct cmd_args *a)
{
	const char *verb = cmd->verb;
	char *arg = a->arg;
	size_t hl;
	char name[MAILADDR_PART_MAX];
	int bad;

	a->ehlo = strcmp(verb, "EHLO") == 0;
	while (*arg == ' ')
		arg++;
	a->arg = arg;
	if (*arg == '\0')
		CHECK_FAIL(sp, STAGE_HELO, "syntax", "501 5.5.4 Syntax: %s hostname", verb);
	/*
	 * RFC 5321 §4.1.1.1: a domain or an address literal; a bare name
	 * ("localhost", "DESKTOP-1") is tolerated, as Postfix does. Words
	 * after it are ignored; control and 8-bit bytes anywhere refuse the
	 * command, so nothing unchecked reaches the Received: line.
	 */
	hl = strcspn(arg, " ");
	bad = hl >= sizeof(sp->helo);	/* never cut short in Received: */
	for (const char *q = arg; *q && !bad; q++)
		bad = (unsigned char)*q < 0x20 || (unsigned char)*q > 0x7e;
	if (!bad) {
		memcpy(name, arg, hl);
		name[hl] = '\0';
		bad = !mailaddr_domain_is_valid(name);
	}
	if (bad) {
		refuse(sp, STAGE_HELO, "bad-helo", arg,
		    "501 5.5.4 Syntax: %s hostname (a domain or an address literal)", verb);
		count_error(sp);
		return -1;
	}
	return 0;
}

static void
proceed_helo(struct smtp_proto *sp, struct cmd_args *a)
{
	unsigned ticket;
	const struct snapshot *snap;
	struct verdict v;
	char *arg = a->arg;

	snap = snapref_acquire(sp->p->snaps, &ticket);
	engine_helo(sp->es, snap, arg, a->cmdlen, a->now, &v);
	snapref_release(sp->p->snaps, ticket);
	if (verdict_reply(sp, STAGE_HELO, &v, arg))
		return;
	snprintf(sp->helo, sizeof(sp->helo), "%.*s", (int)strcspn(arg, " "), arg);
	if (HAS(sp, SMTP_SF_TX))
		engine_abort(sp->es);
	tx_reset(sp);
	sp->flags = (sp->flags & ~SMTP_SF_EHLO) | SMTP_SF_HELO | (a->ehlo ? SMTP_SF_EHLO : 0);
	if (!a->ehlo) {
		reply(sp, "250 %s", sp->p->myhostname);
		return;
	}
	reply(sp, "250-%s", sp->p->myhostname);
	reply(sp, "250-PIPELINING");
	if (sp->p->tls_available && !HAS(sp, SMTP_SF_TLS))
		reply(sp, "250-STARTTLS");
	if (sp->p->message_size_limit)
		reply(sp, "250-SIZE %zu", sp->p->message_size_limit);
	else
		reply(sp, "250-SIZE");
	if (sp->p->vrfy)
		reply(sp, "250-VRFY");
	if (sp->p->auth_mechs != 0 && !HAS(sp, SMTP_SF_NO_AUTH) && !HAS(sp, SMTP_SF_AUTH)) {
		char mechs[96] = "";
		int plain_ok = HAS(sp, SMTP_SF_TLS) || sp->p->auth_allow_plaintext;

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

static int
check_mail(struct smtp_proto *sp, const struct smtp_cmd *cmd, struct cmd_args *a)
{
	char *tok, *save = NULL;
	unsigned ticket;
	const struct snapshot *snap;
	struct verdict v;

	if (check_state(sp, cmd) < 0)
		return -1;
	if (HAS(sp, SMTP_SF_SUBMISSION) && !HAS(sp, SMTP_SF_AUTH))
		CHECK_FAIL(sp, STAGE_MAIL, "auth-required", "530 5.7.0 Authentication required");
	if (split_path(a->arg, "FROM:", &a->path, &a->params) < 0)
		CHECK_FAIL(sp, STAGE_MAIL, "syntax", "501 5.5.4 Syntax: MAIL FROM:<address>");
	if (mailaddr_parse(a->path, &a->ma) < 0) {
		/* the engine gives (and logs) the verdict: 501 5.1.7 */
		snap = snapref_acquire(sp->p->snaps, &ticket);
		engine_mail(sp->es, snap, a->path, a->cmdlen,
		    HAS(sp, SMTP_SF_AUTH) ? sp->auth_user : NULL, a->now, &v);
		snapref_release(sp->p->snaps, ticket);
		if (!verdict_reply(sp, STAGE_MAIL, &v, a->path))
			refuse(sp, STAGE_MAIL, "bad-address", NULL, "501 5.1.7 Bad sender address syntax");
		engine_abort(sp->es);
		count_error(sp);
		return -1;
	}
	for (tok = strtok_r(a->params, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
		if (strncasecmp(tok, "SIZE=", 5) == 0) {
			const char *d = tok + 5;
			size_t nd = strspn(d, "0123456789");
			unsigned long long sz = 0;

			/* RFC 1870: size-value = 1*20DIGIT; strtoull would take "+5", " 5", "-5" */
			if (nd == 0 || nd > 20 || d[nd] != '\0')
				CHECK_FAIL(sp, STAGE_MAIL, "syntax", "501 5.5.4 Bad SIZE parameter");
			for (size_t i = 0; i < nd && sz <= ~0ULL / 10 - 9; i++)
				sz = sz * 10 + (unsigned)(d[i] - '0');
			if (sp->p->message_size_limit && (nd > 19 || sz > sp->p->message_size_limit)) {
				/* not an error: a client may try a smaller message */
				refuse(sp, STAGE_MAIL, "size", NULL,
				    "552 5.3.4 Message size exceeds fixed limit");
				return -1;
			}
			engine_command_params(sp->es, tok);	/* RFC 1870: 26 more octets */
		} else if (strncasecmp(tok, "BODY=", 5) == 0) {
			if (strcasecmp(tok + 5, "8BITMIME") != 0 && strcasecmp(tok + 5, "7BIT") != 0)
				CHECK_FAIL(sp, STAGE_MAIL, "syntax", "501 5.5.4 Bad BODY parameter");
		} else {
			char esc[64];

			CHECK_FAIL(sp, STAGE_MAIL, "syntax", "555 5.5.4 Unsupported option: %s",
			    printable(esc, sizeof(esc), tok));
		}
	}
	return 0;
}

static void
proceed_mail(struct smtp_proto *sp, struct cmd_args *a)
{
	unsigned ticket;
	const struct snapshot *snap;
	struct verdict v;
	char fmt[MAILADDR_TEXT_MAX];
	const struct mailaddr *judged;

	snap = snapref_acquire(sp->p->snaps, &ticket);
	engine_mail(sp->es, snap, a->path, a->cmdlen, HAS(sp, SMTP_SF_AUTH) ? sp->auth_user : NULL,
	    a->now, &v);
	snapref_release(sp->p->snaps, ticket);
	if (verdict_reply(sp, STAGE_MAIL, &v, a->path))
		return;
	tx_reset(sp);
	sp->flags |= SMTP_SF_TX;
	/* the Sieve scripts in force now hold for this transaction */
	if (sp->p->sieve != NULL)
		sp->tx.sieve = sieve_rules_ref_get(sp->p->sieve);
	/* what the engine judged is what goes on: the formatter re-quotes */
	judged = engine_sender_address(sp->es);
	sp->tx.sender = xstrdup(mailaddr_format(judged ? judged : &a->ma, fmt));
	if (sp->p->passthrough) {
		/* every recipient goes downstream: its connect, greeting, EHLO and
		 * MAIL overlap with the client's next round trip */
		snprintf(sp->down.sender, sizeof(sp->down.sender), "%s", sp->tx.sender);
		snprintf(sp->down.helo, sizeof(sp->down.helo), "%s", sp->p->myhostname);
		sp->tx.down_open = sp->tx.down_opened = 1;
	}
	reply(sp, "250 2.1.0 Ok");
}

static int
check_rcpt(struct smtp_proto *sp, const struct smtp_cmd *cmd, struct cmd_args *a)
{
	if (check_state(sp, cmd) < 0)
		return -1;
	if (split_path(a->arg, "TO:", &a->path, &a->params) < 0 || *a->params != '\0')
		CHECK_FAIL(sp, STAGE_RCPT, "syntax", "501 5.5.4 Syntax: RCPT TO:<address>");
	if (sp->tx.nrcpt >= SMTP_MAX_RCPT_HARD) {
		refuse(sp, STAGE_RCPT, "too-many-recipients", NULL, "452 4.5.3 Too many recipients");
		return -1;
	}
	return 0;
}

static void
rcpt_add(struct smtp_proto *sp, const char *rcpt, int local)
{
	struct smtp_tx *tx = &sp->tx;

	if (tx->nrcpt == tx->rcptcap) {
		tx->rcptcap = tx->rcptcap ? tx->rcptcap * 2 : 8;
		tx->rcpt = xreallocarray(tx->rcpt, tx->rcptcap, sizeof(char *));
		tx->rcpt_local = xreallocarray(tx->rcpt_local, tx->rcptcap, sizeof(int));
	}
	tx->rcpt[tx->nrcpt] = xstrdup(rcpt);
	tx->rcpt_local[tx->nrcpt] = local;
	tx->nrcpt++;
}

static int sieve_rcpt_refused(struct smtp_proto *sp, const struct mailaddr *ra);

static void
proceed_rcpt(struct smtp_proto *sp, struct cmd_args *a)
{
	const struct mailaddr *ra;
	char rcpt[MAILADDR_TEXT_MAX];
	unsigned ticket;
	const struct snapshot *snap;
	struct verdict v;
	int local = 0, route;

	snap = snapref_acquire(sp->p->snaps, &ticket);
	engine_rcpt(sp->es, snap, a->path, a->cmdlen, a->now, &v);
	snapref_release(sp->p->snaps, ticket);
	if (verdict_reply(sp, STAGE_RCPT, &v, a->path)) {
		if (v.tag != NULL && strcmp(v.tag, "bad-address") == 0)
			count_error(sp);
		return;
	}
	/* the address the engine judged (postmaster rewritten, qualified) */
	if ((ra = engine_rcpt_address(sp->es, &local)) == NULL || ra->domain[0] == '\0') {
		engine_rcpt_refused(sp->es);
		error_reply(sp, STAGE_RCPT, "bad-address", "501 5.1.3 Bad recipient address syntax");
		return;
	}
	mailaddr_format(ra, rcpt);
	if (local && !sp->p->passthrough) {
		/* delivered to the user database's canonical name, nothing else */
		if (sp->p->user_resolve != NULL) {
			if (!sp->p->user_resolve(sp->p->user_arg, ra->local, ra->domain, rcpt)) {
				char fmt[MAILADDR_TEXT_MAX];

				/* counts toward the error budget: a run of probes ends in 421;
				 * and not toward max_recipients: it was refused */
				engine_rcpt_refused(sp->es);
				error_reply(sp, STAGE_RCPT, "unknown-user",
				    "550 5.1.1 <%s>: Recipient address rejected: User unknown",
				    printable(fmt, sizeof(fmt), rcpt));
				return;
			}
		} else {
			mailaddr_key(ra, rcpt);
		}
	}
	if (!local && !sp->p->passthrough && !sp->p->have_relayhost) {
		engine_rcpt_refused(sp->es);
		refuse(sp, STAGE_RCPT, "no-relayhost", NULL,
		    "451 4.3.5 <%s>: relaying is allowed but no relayhost is configured", rcpt);
		return;
	}
	route = (sp->p->passthrough || !local) ? 2 : 1;
	if (sp->tx.route != 0 && sp->tx.route != route) {
		/* one message goes one way: RFC 5321 clients send the rest later */
		engine_rcpt_refused(sp->es);
		refuse(sp, STAGE_RCPT, "split-route", NULL,
		    "452 4.5.3 Error: send the recipients %s in a separate transaction",
		    route == 2 ? "outside our domains" : "in our domains");
		return;
	}
	if (sieve_rcpt_refused(sp, ra))
		return;
	if (route == 2) {
		sp->tx.down_pending = 1;
		sp->down.open = sp->tx.route == 0;
		snprintf(sp->down.sender, sizeof(sp->down.sender), "%s", sp->tx.sender);
		snprintf(sp->down.rcpt, sizeof(sp->down.rcpt), "%s", rcpt);
		snprintf(sp->down.helo, sizeof(sp->down.helo), "%s", sp->p->myhostname);
		snprintf(sp->tx.down_rcpt, sizeof(sp->tx.down_rcpt), "%s", sp->down.rcpt);
		sp->tx.route = 2;
		sp->st = SMTP_ST_WAIT_DOWN;
		return;	/* the downstream answers this RCPT */
	}
	sp->tx.route = 1;
	rcpt_add(sp, rcpt, local);
	reply(sp, "250 2.1.5 Ok");
}

/*
 * Sieve: one reply per message cannot carry two domains' verdicts. A
 * recipient under another domain script than the transaction's first one
 * (or under one when the first was under none) gets 452 4.5.3, the milter's
 * words; the client sends it in a new transaction. 1 when refused.
 */
static int
sieve_rcpt_refused(struct smtp_proto *sp, const struct mailaddr *ra)
{
	struct smtp_tx *tx = &sp->tx;
	const struct sieve_rules_script *dom;
	char fmt[MAILADDR_TEXT_MAX];

	if (tx->sieve == NULL || !sieve_rules_any(tx->sieve))
		return 0;
	dom = sieve_rules_domain(tx->sieve, ra->domain);
	if (tx->sieve_set && dom != tx->sieve_dom) {
		engine_rcpt_refused(sp->es);
		refuse(sp, STAGE_RCPT, "sieve-domains", NULL, "452 4.5.3 Too many recipients: %.100s "
		    "is under other rules, send to it in a new transaction",
		    printable(fmt, sizeof(fmt), ra->domain));
		return 1;
	}
	if (!tx->sieve_set) {
		tx->sieve_set = 1;
		tx->sieve_dom = dom;
		snprintf(tx->sieve_domain, sizeof(tx->sieve_domain), "%s", ra->domain);
		mailaddr_format(ra, tx->sieve_rcpt);
	}
	return 0;
}

static int
check_data(struct smtp_proto *sp, const struct smtp_cmd *cmd, struct cmd_args *a)
{
	if (*a->arg != '\0')
		CHECK_FAIL(sp, STAGE_COMMAND, "syntax", "501 5.5.4 Syntax: DATA");
	if (check_state(sp, cmd) < 0)
		return -1;
	if (sp->tx.nrcpt == 0)
		CHECK_FAIL(sp, STAGE_COMMAND, "no-recipients", "554 5.5.1 Error: no valid recipients");
	return 0;
}

static void
proceed_data(struct smtp_proto *sp, struct cmd_args *a)
{
	struct smtp_tx *tx = &sp->tx;

	(void)a;
	dotunstuff_init(&tx->du, !sp->bare_reject);
	hdrnames_init(&tx->hn);
	tx->dlen = tx->dtotal = 0;
	/* the envelope, for the caller's Received: line while the data comes */
	memset(&sp->msg, 0, sizeof(sp->msg));
	sp->msg.sender = tx->sender;
	sp->msg.rcpt = tx->rcpt;
	sp->msg.rcpt_local = tx->rcpt_local;
	sp->msg.nrcpt = tx->nrcpt;
	snprintf(sp->msg.client, sizeof(sp->msg.client), "%s", engine_client_text(sp->es));
	snprintf(sp->msg.helo, sizeof(sp->msg.helo), "%s", sp->helo);
	sp->msg.downstream = tx->route == 2;
	sp->msg.esmtp = HAS(sp, SMTP_SF_EHLO);
	sp->msg.tls = HAS(sp, SMTP_SF_TLS);
	sp->msg.auth = HAS(sp, SMTP_SF_AUTH);
	if (tx->sieve != NULL && (tx->sieve->server != NULL || tx->sieve_dom != NULL)) {
		/* the scripts run at the final dot on the spooled message */
		sp->msg.sieve = tx->sieve;
		sp->msg.sieve_domain = tx->sieve_domain[0] ? tx->sieve_domain : NULL;
		sp->msg.sieve_rcpt = tx->sieve_rcpt;
		sp->msg.remote_host = sp->host[0] ? sp->host : NULL;
		sp->msg.country = engine_session_country(sp->es);
		sp->msg.auth_user = HAS(sp, SMTP_SF_AUTH) ? sp->auth_user : "";
		sp->msg.raw_helo = sp->helo;
		sp->msg.addr = sp->has_addr ? &sp->addr : NULL;
	}
	if (tx->route == 2) {
		/*
		 * Every recipient was accepted downstream: the client may start at
		 * once. The server sends DATA downstream now and the message as it
		 * comes; should the downstream refuse it, the client hears that
		 * refusal as the answer to its final dot.
		 */
		snprintf(sp->down.rcpt, sizeof(sp->down.rcpt), "%s", tx->rcpt[0]);
		snprintf(sp->down.client, sizeof(sp->down.client), "%s", engine_client_text(sp->es));
		snprintf(sp->down.client_helo, sizeof(sp->down.client_helo), "%s", sp->helo);
		/* under Sieve the verdict comes first: spooled, sent after it */
		tx->stream = sp->msg.sieve == NULL;
	}
	sp->st = SMTP_ST_DATA;
	reply(sp, "354 End data with <CR><LF>.<CR><LF>");
}

static void
proceed_rset(struct smtp_proto *sp, struct cmd_args *a)
{
	(void)a;
	if (HAS(sp, SMTP_SF_TX))
		engine_abort(sp->es);
	tx_reset(sp);
	reply(sp, "250 2.0.0 Ok");
}

static void
proceed_noop(struct smtp_proto *sp, struct cmd_args *a)
{
	(void)a;
	reply(sp, "250 2.0.0 Ok");
}

static void
proceed_quit(struct smtp_proto *sp, struct cmd_args *a)
{
	(void)a;
	reply(sp, "221 2.0.0 Bye");
	close_session(sp);
}

static void
proceed_help(struct smtp_proto *sp, struct cmd_args *a)
{
	(void)a;
	reply(sp, "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT HELP");
}

static int
check_vrfy(struct smtp_proto *sp, const struct smtp_cmd *cmd, struct cmd_args *a)
{
	(void)a;
	if (!sp->p->vrfy)
		CHECK_FAIL(sp, STAGE_COMMAND, "disabled", "502 5.5.1 %s command is disabled", cmd->verb);
	return 0;
}

static void
proceed_vrfy(struct smtp_proto *sp, struct cmd_args *a)
{
	(void)a;
	reply(sp, "252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery");
}

static int
check_expn(struct smtp_proto *sp, const struct smtp_cmd *cmd, struct cmd_args *a)
{
	(void)a;
	CHECK_FAIL(sp, STAGE_COMMAND, "disabled", "502 5.5.1 %s command is disabled", cmd->verb);
}

#define E SMTP_CMD_ERROR
#define G SMTP_CMD_ENDS_GROUP
#define PRE SMTP_CMD_PRE_TLS
static const struct smtp_cmd commands[] = {
	{ "EHLO", PRE | E | G, NULL, check_helo, proceed_helo },
	{ "HELO", PRE | E, NULL, check_helo, proceed_helo },
	{ "MAIL", SMTP_CMD_NEED_HELO | SMTP_CMD_OUT_TX | E,
	  "503 5.5.1 Error: nested MAIL command", check_mail, proceed_mail },
	{ "RCPT", SMTP_CMD_IN_TX | E, NULL, check_rcpt, proceed_rcpt },
	{ "DATA", SMTP_CMD_IN_TX | E | G, NULL, check_data, proceed_data },
	{ "RSET", PRE, NULL, check_plain, proceed_rset },
	{ "NOOP", PRE | G, NULL, check_plain, proceed_noop },
	{ "QUIT", PRE | G, NULL, check_plain, proceed_quit },
	{ "HELP", PRE, NULL, check_plain, proceed_help },
	{ "VRFY", E | G, NULL, check_vrfy, proceed_vrfy },
	{ "EXPN", E | G, NULL, check_expn, NULL },
	{ "AUTH", SMTP_CMD_NEED_EHLO | SMTP_CMD_NOT_AUTH | SMTP_CMD_OUT_TX | E | G,
	  "503 5.5.1 Error: MAIL transaction in progress", check_auth, proceed_auth },
	{ "STARTTLS", PRE | SMTP_CMD_NOT_TLS | E | G, NULL, check_starttls, proceed_starttls },
};
#undef E
#undef G
#undef PRE

const struct smtp_cmd *
smtp_cmd_lookup(const char *verb, size_t len)
{
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (strlen(commands[i].verb) == len && strncasecmp(verb, commands[i].verb, len) == 0)
			return &commands[i];
	return NULL;
}

unsigned
smtp_cmd_flags(const struct smtp_cmd *cmd)
{
	return cmd->flags;
}

static void
command(struct smtp_proto *sp, char *line, size_t cmdlen, long long now)
{
	size_t vl = strcspn(line, " ");
	const struct smtp_cmd *cmd = smtp_cmd_lookup(line, vl);
	int after_auth = sp->after_auth;
	struct cmd_args a;

	sp->after_auth = 0;
	if (cmd == NULL) {
		char esc[LOG_ESCAPE_BUFSZ];

		/* after a refused AUTH the client may be sending its credentials */
		log_debug("unknown command from %s: %s", engine_client_text(sp->es), after_auth ?
		    "(a line after AUTH, not logged)" : log_escape(esc, line, strlen(line)));
		error_reply(sp, STAGE_COMMAND, "unknown-command", "502 5.5.2 Error: command not recognized");
		return;
	}
	memset(&a, 0, sizeof(a));
	a.arg = line + vl;
	if (*a.arg == ' ')
		a.arg++;
	a.cmdlen = cmdlen;
	a.now = now;
	if (cmd->proceed == proceed_auth)
		sp->after_auth = 1;
	if (cmd->check(sp, cmd, &a) == 0)
		cmd->proceed(sp, &a);
}

/* ---- DATA ---- */

static void
header_name(void *arg, const char *name)
{
	struct smtp_proto *sp = arg;
	struct verdict v;

	engine_header(sp->es, name, &v);
}

static int
over_size(const struct smtp_proto *sp)
{
	return sp->p->message_size_limit && sp->tx.dtotal > sp->p->message_size_limit;
}

/* message bytes from the DATA scanner: held (up to a cap), header names seen */
static void
data_put(void *arg, const char *s, size_t n)
{
	struct smtp_proto *sp = arg;
	struct smtp_tx *tx = &sp->tx;

	tx->dtotal += n;
	if (over_size(sp))
		return;		/* counted, not stored */
	if (!hdrnames_is_done(&tx->hn))
		hdrnames_feed(&tx->hn, s, n, header_name, sp);
	if (tx->dlen + n > tx->dcap) {
		tx->dcap = (tx->dlen + n) * 2 + 4096;
		if (tx->dcap > SMTP_DATA_HOLD_MAX + 8)
			tx->dcap = tx->dlen + n > SMTP_DATA_HOLD_MAX + 8 ? tx->dlen + n :
			    SMTP_DATA_HOLD_MAX + 8;
		tx->data = xrealloc(tx->data, tx->dcap);
	}
	memcpy(tx->data + tx->dlen, s, n);
	tx->dlen += n;
}

static void
data_end(struct smtp_proto *sp)
{
	struct verdict v;

	sp->st = SMTP_ST_COMMAND;
	if (over_size(sp)) {
		refuse(sp, STAGE_EOM, "size", NULL, "552 5.3.4 Message size exceeds fixed limit");
		engine_abort(sp->es);
		tx_reset(sp);
		return;
	}
	if (sp->tx.du.bare && sp->bare_reject) {
		refuse(sp, STAGE_EOM, "bare-newline", NULL, "550 5.5.2 Message refused: bare <CR> or "
		    "<LF> in it; lines must end with <CR><LF>");
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
	sp->msg.data = sp->tx.data;
	sp->msg.len = sp->tx.dlen;
	sp->tx.pending = 1;
	sp->st = SMTP_ST_WAIT_DELIVERY;
}

/* scan DATA bytes; returns bytes consumed (stops after the final dot, or
 * when SMTP_DATA_HOLD_MAX octets are held: the caller takes a piece first;
 * a message past the size limit is only counted: never full) */
static size_t
data_input(struct smtp_proto *sp, const char *buf, size_t len)
{
	struct smtp_tx *tx = &sp->tx;
	size_t room = over_size(sp) ? (size_t)-1 :
	    tx->dlen < SMTP_DATA_HOLD_MAX ? SMTP_DATA_HOLD_MAX - tx->dlen : 0;
	size_t used = dotunstuff_feed(&tx->du, buf, len, room, data_put, sp);

	if (tx->du.done)
		data_end(sp);
	return used;
}

/* ---- input ---- */

/* a whole line in the command (or AUTH) state */
static void
line_input(struct smtp_proto *sp, struct linereader_line *ln, int more, long long now)
{
	char *line = ln->text;
	size_t cmdlen = ln->total;
	int overflow = ln->overflow;
	int authline = sp->st == SMTP_ST_AUTH || (strlen(line) >= 5 &&
	    strncasecmp(line, "AUTH ", 5) == 0);
	/* AUTH exchanges may run to 12288 octets (RFC 4954). HELO/EHLO,
	 * MAIL and RCPT go to the engine, which holds them to
	 * max_command_length (plus what their ESMTP parameters earn)
	 * and bans past it; any other line only needs to fit */
	enum engine_stage cst = command_stage(line);
	struct verdict v;
	int judged = 0;

	if (!overflow && !authline && cmdlen > SMTP_HARD_LINE_MAX &&
	    (cst == STAGE_COMMAND || sp->p->pol->max_command_length == 0))
		overflow = 1;
	if (!overflow && !authline && cst != STAGE_COMMAND &&
	    sp->p->pol->max_command_length > 0 && cmdlen > sp->p->pol->max_command_length) {
		/* judged before the arguments are parsed, with the room
		 * its ESMTP parameters earn */
		unsigned ticket;
		const struct snapshot *snap = snapref_acquire(sp->p->snaps, &ticket);

		engine_command_params(sp->es, line + 4);
		engine_long_command(sp->es, snap, cst, cmdlen, now, &v);
		snapref_release(sp->p->snaps, ticket);
		judged = 1;
		overflow = v.tag != NULL;
	}
	if (sp->st == SMTP_ST_AUTH && !overflow) {
		if (!ln->crlf && sp->bare_reject) {
			auth_end(sp);
			error_reply(sp, STAGE_COMMAND, "bare-newline",
			    "500 5.5.2 Error: bare <LF> received; lines end with <CR><LF>");
		} else {
			auth_step(sp, line);
		}
		explicit_bzero(line, ln->len);
	} else if (overflow) {
		if (sp->st == SMTP_ST_AUTH)
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
		    authline ? "AUTH (credentials not logged)" : line))
			error_reply(sp, cst, "long-line", "500 5.5.2 Error: line too long");
		else
			count_error(sp);
		if (v.ban_seconds > 0)
			sp->banned = 1;
		if (authline)
			explicit_bzero(line, ln->len);
	} else if (!ln->crlf && sp->bare_reject) {
		error_reply(sp, cst, "bare-newline",
		    "500 5.5.2 Error: bare <LF> received; lines end with <CR><LF>");
	} else if (more && !HAS(sp, SMTP_SF_EHLO)) {
		/* RFC 2920: no pipelining before EHLO has offered it. Postfix's
		 * line names the command; an AUTH line carries credentials: its
		 * verb only */
		char esc[LOG_ESCAPE_BUFSZ];

		log_info("%sreject: %s: improper command pipelining after %s; reason=pipelining",
		    engine_session_id(sp->es), engine_client_text(sp->es), authline ? "AUTH" : log_escape(esc, line, strlen(line)));
		refuse(sp, cst, "pipelining", NULL,
		    "554 5.5.0 Error: improper use of SMTP command pipelining");
		close_session(sp);
	} else if (ln->nul) {
		error_reply(sp, cst, "nul-byte", "500 5.5.2 Error: NUL byte in command");
	} else {
		command(sp, line, cmdlen, now);
	}
}

size_t
smtp_proto_input(struct smtp_proto *sp, const char *buf, size_t len, long long now)
{
	size_t i = 0;

	while (i < len) {
		struct linereader_line ln;
		size_t used;

		switch (sp->st) {
		case SMTP_ST_CLOSED:
		case SMTP_ST_TLS:
			return len;	/* after STARTTLS, buffered plaintext is dropped */
		case SMTP_ST_WAIT_AUTH:
		case SMTP_ST_WAIT_DOWN:
		case SMTP_ST_WAIT_DELIVERY:
			return i;
		case SMTP_ST_DATA:
			used = data_input(sp, buf + i, len - i);
			i += used;
			if (used == 0)
				return i;	/* full: wait for smtp_proto_stream_taken() */
			continue;
		case SMTP_ST_COMMAND:
		case SMTP_ST_AUTH:
			break;
		}
		if (!linereader_feed(&sp->lr, buf + i, len - i, &used, &ln))
			return len;	/* wait for the rest of the line */
		i += used;
		line_input(sp, &ln, i < len, now);
	}
	return i;
}

/* ---- the caller's answers ---- */

void
smtp_proto_delivered(struct smtp_proto *sp, int ok, const char *code, const char *dsn,
    const char *text)
{
	if (ok)
		reply(sp, "250 2.0.0 Ok: %s", text);
	else
		reply(sp, "%s %s %s", code, dsn, text);
	tx_reset(sp);
	sp->st = SMTP_ST_COMMAND;
}

struct smtp_down_req *
smtp_proto_pending_down(struct smtp_proto *sp)
{
	return sp->tx.down_pending ? &sp->down : NULL;
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
		log_info("%sdownstream said 421 to %s: closing the session", engine_session_id(sp->es),
		    engine_client_text(sp->es));
		if (HAS(sp, SMTP_SF_TX))
			engine_abort(sp->es);
		tx_reset(sp);
		close_session(sp);
	}
}

void
smtp_proto_down_done(struct smtp_proto *sp, const char *line)
{
	sp->tx.down_pending = 0;
	sp->st = SMTP_ST_COMMAND;
	if (line[0] == '2')
		rcpt_add(sp, sp->tx.down_rcpt, 0);
	else
		engine_rcpt_refused(sp->es);	/* the downstream refused it */
	if (sp->tx.nrcpt == 0 && line[0] != '2') {
		/* no session worth keeping: the next recipient opens afresh */
		sp->tx.route = 0;
		sp->tx.sieve_set = 0;	/* nor a domain for Sieve */
		sp->down_reset = 1;
	}
	mirror(sp, line);	/* what the downstream said */
}

int
smtp_proto_in_data(const struct smtp_proto *sp)
{
	return sp->st == SMTP_ST_DATA;
}

int
smtp_proto_streaming(const struct smtp_proto *sp)
{
	return sp->tx.stream;
}

int
smtp_proto_stream_chunk(struct smtp_proto *sp, size_t min, const char **p_r, size_t *len_r)
{
	if (sp->st != SMTP_ST_DATA || sp->tx.dlen == 0 || sp->tx.dlen < min)
		return 0;
	if (over_size(sp))
		return 0;	/* will be refused at the end: send no more */
	*p_r = sp->tx.data;
	*len_r = sp->tx.dlen;
	return 1;
}

const struct smtp_msg *
smtp_proto_envelope(const struct smtp_proto *sp)
{
	return sp->st == SMTP_ST_DATA || sp->tx.pending ? &sp->msg : NULL;
}

void
smtp_proto_stream_taken(struct smtp_proto *sp, size_t n)
{
	struct smtp_tx *tx = &sp->tx;

	if (n > tx->dlen)
		n = tx->dlen;
	memmove(tx->data, tx->data + n, tx->dlen - n);
	tx->dlen -= n;
}

void
smtp_proto_delivered_reply(struct smtp_proto *sp, const char *line)
{
	sp->tx.route = 0;	/* the server closes the session it used */
	tx_reset(sp);
	sp->down_reset = 0;
	sp->st = SMTP_ST_COMMAND;
	mirror(sp, line);
}

void
smtp_proto_eof(struct smtp_proto *sp)
{
	if (HAS(sp, SMTP_SF_TX))
		engine_abort(sp->es);
	sp->st = SMTP_ST_CLOSED;
}

void
smtp_proto_log_verdict(struct smtp_proto *sp, const struct verdict *v)
{
	engine_log(sp->es, STAGE_EOM, v, NULL, NULL);
}

void
smtp_proto_add_rcpt(struct smtp_proto *sp, const char *rcpt, int local)
{
	rcpt_add(sp, rcpt, local);
	sp->msg.rcpt = sp->tx.rcpt;
	sp->msg.rcpt_local = sp->tx.rcpt_local;
	sp->msg.nrcpt = sp->tx.nrcpt;
}

void
smtp_proto_set_conn_id(struct smtp_proto *sp, const char *id)
{
	engine_session_set_id(sp->es, id);
}
