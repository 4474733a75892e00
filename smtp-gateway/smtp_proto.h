#ifndef PC_SMTP_PROTO_H
#define PC_SMTP_PROTO_H
#include <stddef.h>
#include "common/authmech.h"
#include "common/cidr.h"
#include "common/sasl.h"
#include "rules/engine.h"
#include "rules/sieve_rules.h"
#include "rules/snapshot.h"

/*
 * The ESMTP server protocol (RFC 5321) for one connection, without I/O:
 * bytes in, reply bytes and actions out, so tests can feed it piecewise.
 * Owner: the connection; one thread.
 */
struct smtp_params {
	const struct policy *pol;
	struct snapref *snaps;
	struct ratelimit *rl;		/* NULL: no rate limits */
	const char *myhostname;
	const char *banner;		/* text after "220 " */
	size_t message_size_limit;	/* octets, 0: none */
	int vrfy;			/* 0: 502 for VRFY/EXPN */
	int bare_newline_reject;	/* 1: refuse bare CR/LF in DATA; 0: normalise */
	struct cidrtab *bare_newline_exceptions;	/* clients normalised even so; NULL none */
	int have_relayhost;		/* relayed recipients can be passed on */
	int passthrough;		/* delivery = relay: every recipient goes downstream */
	int tls_available;		/* STARTTLS can be offered */
	unsigned auth_mechs;		/* SMTP_AUTH_*; 0: no AUTH */
	int auth_allow_plaintext;	/* PLAIN/LOGIN without TLS */
	const struct sasl_callbacks *sasl_cb;	/* the user database, for common/sasl */
	/*
	 * A local recipient (local part unquoted, domain lower case) -> the
	 * user database's canonical "user@domain" in canon_r (MAILADDR_TEXT_MAX
	 * bytes), which is what is delivered to; 0: no such user (canon_r
	 * untouched). NULL: every
	 * local recipient exists under its lower-cased address.
	 */
	int (*user_resolve)(void *arg, const char *local, const char *domain, char *canon_r);
	void *user_arg;
	/* the server and domain Sieve scripts (smtp_sieve); NULL: none. A
	 * transaction holds the snapshot in force at MAIL to its end */
	struct sieve_rules_ref *sieve;
};

#define SMTP_AUTH_PLAIN	AUTH_MECH_PLAIN
#define SMTP_AUTH_LOGIN	AUTH_MECH_LOGIN
#define SMTP_AUTH_CRAM	AUTH_MECH_CRAM
#define SMTP_AUTH_LINE_MAX 12288	/* RFC 4954 §4 */

#define SMTP_AUTH_SCRAM	AUTH_MECH_SCRAM
#define SMTP_AUTH_EXTERNAL AUTH_MECH_EXTERNAL

/*
 * An AUTH exchange at its end, for the caller: check != 0: run
 * sasl_server_check(sasl) off the loop (password hashing), then the outcome
 * is sasl_server_checked(); check == 0: ok is the outcome already. Either
 * way the caller applies the failure penalty and calls smtp_proto_auth_done().
 * The exchange belongs to the session.
 */
struct smtp_auth_req {
	struct sasl_server *sasl;
	int check;
	int ok;
};

/*
 * The session holds at most this much of a message: once full it consumes
 * no more input until the caller took a piece (smtp_proto_stream_chunk()),
 * to a spool file or downstream. Memory per connection is bounded whatever
 * the message size; a message that fits is delivered from memory.
 */
#define SMTP_DATA_HOLD_MAX (128 * 1024)

/* A message: the envelope (from DATA on) and, at the final dot, the data
 * the caller has not taken yet (CRLF lines, dot-stuffing removed). Owned by
 * the session until smtp_proto_delivered(). */
struct smtp_msg {
	char *sender;			/* "" for <> */
	char **rcpt;			/* "local@domain" */
	int *rcpt_local;		/* 1: in mydomains */
	size_t nrcpt;
	char *data;
	size_t len;
	char client[128];		/* for the Received: line */
	char helo[128];
	int downstream;			/* 1: pass to the open downstream session */
	int esmtp;			/* EHLO (else HELO): "with ESMTP..." */
	int tls;			/* the session was encrypted at DATA */
	int auth;			/* ... and authenticated */
	/* Sieve: the scripts this message goes through (held by the
	 * transaction), NULL: none; then it is not streamed downstream, the
	 * caller spools it and runs them at the final dot (smtp_sieve) */
	const struct sieve_rules *sieve;
	const char *sieve_domain;	/* the recipients' domain */
	const char *sieve_rcpt;		/* the first recipient: envelope "to" */
	const char *remote_host;	/* the verified client name; NULL none */
	const char *country;		/* GeoIP, NULL unknown */
	const char *auth_user;		/* "" none */
	const char *raw_helo;		/* as the client said it */
	const struct ipaddr *addr;	/* NULL unknown */
};

/* A step of a pass-through session the caller must run downstream. */
struct smtp_down_req {
	int open;			/* open the session and send MAIL first */
	char sender[600];		/* MAIL FROM:<...> */
	char rcpt[600];			/* RCPT TO:<...>; at DATA: the first recipient */
	char helo[128];			/* what we say to the downstream */
	char client[128];		/* at DATA: for the Received: line */
	char client_helo[128];
};

struct smtp_proto;

/*
 * Where the session is (what the next input is), and what has been said
 * (flag bits). A command-table row names the flags it needs.
 */
enum smtp_state {
	SMTP_ST_COMMAND,	/* a command line comes next */
	SMTP_ST_DATA,		/* message bytes come next */
	SMTP_ST_AUTH,		/* an AUTH response line comes next */
	SMTP_ST_WAIT_AUTH,	/* the caller checks a password (input paused) */
	SMTP_ST_WAIT_DOWN,	/* the downstream answers a RCPT (input paused) */
	SMTP_ST_WAIT_DELIVERY,	/* a message is being delivered (input paused) */
	SMTP_ST_TLS,		/* STARTTLS said: the handshake, buffered input dropped */
	SMTP_ST_CLOSED,		/* the last reply said: close */
};

#define SMTP_SF_HELO		0x01	/* HELO or EHLO accepted */
#define SMTP_SF_EHLO		0x02	/* ... and it was EHLO */
#define SMTP_SF_TX		0x04	/* MAIL accepted: a transaction is open */
#define SMTP_SF_TLS		0x08	/* encrypted */
#define SMTP_SF_AUTH		0x10	/* authenticated */
#define SMTP_SF_SUBMISSION	0x20	/* MAIL needs AUTH first */
#define SMTP_SF_NO_AUTH		0x40	/* no AUTH on this listener */

/* command-table row flags */
#define SMTP_CMD_PRE_TLS	0x001	/* may come before STARTTLS (on a listener that required it) */
#define SMTP_CMD_NEED_HELO	0x002	/* 503 before HELO/EHLO */
#define SMTP_CMD_NEED_EHLO	0x004	/* 503 before EHLO */
#define SMTP_CMD_NOT_AUTH	0x008	/* 503 once authenticated */
#define SMTP_CMD_IN_TX		0x010	/* 503 outside a transaction */
#define SMTP_CMD_OUT_TX		0x020	/* 503 inside a transaction */
#define SMTP_CMD_NOT_TLS	0x040	/* 503 once encrypted */
#define SMTP_CMD_ERROR		0x080	/* a refusal counts toward the error budget */
#define SMTP_CMD_ENDS_GROUP	0x100	/* ends a pipelining group (RFC 2920 §3.1) */

/* the row of a verb (case-insensitive); NULL: not a command */
const struct smtp_cmd *smtp_cmd_lookup(const char *verb, size_t len);
unsigned smtp_cmd_flags(const struct smtp_cmd *cmd);

enum smtp_state smtp_proto_state(const struct smtp_proto *sp);
unsigned smtp_proto_flags(const struct smtp_proto *sp);

/*
 * What the caller must do next, in this order; ask again after doing it
 * until SMTP_ACT_NEED_INPUT. Once-only actions (BAN, STARTTLS, DOWN_RESET,
 * DOWN_OPEN) are taken by asking; the waits (AUTH_CHECK, DOWN_STEP,
 * DELIVER) are answered until their _done call; WRITE until the output is
 * consumed; CLOSE once the output is written and the session is over.
 */
enum smtp_action {
	SMTP_ACT_NEED_INPUT,	/* read on */
	SMTP_ACT_BAN,		/* arg.ban: put the address on the kill list */
	SMTP_ACT_WRITE,		/* reply bytes wait: smtp_proto_output() */
	SMTP_ACT_STARTTLS,	/* flush the 220, drop buffered input, start TLS */
	SMTP_ACT_DOWN_RESET,	/* drop the open downstream session */
	SMTP_ACT_DOWN_OPEN,	/* arg.down: open the downstream session now (MAIL accepted) */
	SMTP_ACT_AUTH_CHECK,	/* arg.auth: check it, then smtp_proto_auth_done() */
	SMTP_ACT_DOWN_STEP,	/* arg.down: this RCPT downstream, then smtp_proto_down_done() */
	SMTP_ACT_DELIVER,	/* arg.msg: deliver it, then smtp_proto_delivered() */
	SMTP_ACT_CLOSE,		/* nothing more to say: close */
};

union smtp_action_arg {
	struct {
		unsigned long seconds;
		struct ipaddr addr;
		const char *reason;	/* the verdict's tag (static) */
	} ban;
	struct smtp_auth_req *auth;
	const struct smtp_down_req *down;
	struct smtp_msg *msg;
};

enum smtp_action smtp_proto_next(struct smtp_proto *sp, union smtp_action_arg *arg_r);

struct smtp_proto *smtp_proto_new(const struct smtp_params *p);
void smtp_proto_free(struct smtp_proto **sp);
/* the connection opened: writes the greeting (or a 554 and asks to close) */
void smtp_proto_start(struct smtp_proto *sp, const struct ipaddr *addr, const char *hostname,
    long long now);
/* feed client bytes; returns how many were consumed (less when a delivery
 * must finish first: feed the rest after smtp_proto_delivered(); or when
 * SMTP_DATA_HOLD_MAX octets of DATA are held: after smtp_proto_stream_taken()) */
size_t smtp_proto_input(struct smtp_proto *sp, const char *buf, size_t len, long long now);
/* the peer closed or timed out */
void smtp_proto_eof(struct smtp_proto *sp);
/* reply bytes to send; consume with smtp_proto_output_done() */
const char *smtp_proto_output(const struct smtp_proto *sp, size_t *len_r);
void smtp_proto_output_done(struct smtp_proto *sp, size_t n);
/* close once the output is written */
int smtp_proto_wants_close(const struct smtp_proto *sp);
/* a message waits for delivery (input is paused until it is done) */
struct smtp_msg *smtp_proto_pending(struct smtp_proto *sp);
/* 1 while DATA is being received */
int smtp_proto_in_data(const struct smtp_proto *sp);
/* the envelope of the message being received or pending; NULL otherwise */
const struct smtp_msg *smtp_proto_envelope(const struct smtp_proto *sp);
/* ok: the 250 text (queue id); !ok: code, dsn, text of the failure */
void smtp_proto_delivered(struct smtp_proto *sp, int ok, const char *code, const char *dsn,
    const char *text);
/* an AUTH exchange waits for checking (input is paused) */
struct smtp_auth_req *smtp_proto_pending_auth(struct smtp_proto *sp);
/* ok: 1 authenticated, 0 refused (535), SMTP_AUTH_TEMPFAIL: not checked (454) */
#define SMTP_AUTH_TEMPFAIL (-1)
void smtp_proto_auth_done(struct smtp_proto *sp, int ok);
/* "" when not authenticated */
const char *smtp_proto_auth_user(const struct smtp_proto *sp);
/* a RCPT waits for the downstream's answer (input is paused) */
struct smtp_down_req *smtp_proto_pending_down(struct smtp_proto *sp);
/* the downstream's reply line ("250 2.1.5 Ok", "354 ...") to that step;
 * a 421 (here and in smtp_proto_delivered_reply()) closes the session after it */
void smtp_proto_down_done(struct smtp_proto *sp, const char *reply);
/*
 * DATA as it arrives (streamed downstream, or spooled to a file): message
 * bytes (dot-stuffing removed) held, when at least min are; 0 when none, or
 * when the message is past the size limit (it will be refused). The caller
 * copies them and reports how many it took with smtp_proto_stream_taken(),
 * which drops them. The engine has seen the header names in them already.
 * Whatever is not taken by the final dot is smtp_msg.data.
 */
int smtp_proto_stream_chunk(struct smtp_proto *sp, size_t min, const char **p_r, size_t *len_r);
void smtp_proto_stream_taken(struct smtp_proto *sp, size_t n);
/* 1 while a streamed DATA is being received */
int smtp_proto_streaming(const struct smtp_proto *sp);
/* the downstream's final reply to the message, passed on as it is */
void smtp_proto_delivered_reply(struct smtp_proto *sp, const char *reply);
/* may this client be banned for failed logins (not accept-listed, not warn mode) */
int smtp_proto_may_ban(struct smtp_proto *sp, long long now);
/* the connection is (now) encrypted: after implicit TLS or a STARTTLS handshake */
void smtp_proto_set_tls(struct smtp_proto *sp, int active);
/* the verified TLS client certificate's identity (for AUTH EXTERNAL) */
void smtp_proto_set_tls_peer(struct smtp_proto *sp, const char *identity);
/* a submission listener: MAIL needs AUTH first */
void smtp_proto_set_submission(struct smtp_proto *sp);
/* no AUTH on this connection (smtp_auth = no on a plain SMTP listener) */
void smtp_proto_set_no_auth(struct smtp_proto *sp);
/* the client sent a command that makes an error budget: counts for 421 */
unsigned smtp_proto_errors(const struct smtp_proto *sp);

/* a Sieve verdict at the final dot, logged and counted by the engine as
 * the other verdicts (tag sieve-reject, sieve-discard, sieve-quarantine) */
void smtp_proto_log_verdict(struct smtp_proto *sp, const struct verdict *v);
/* Sieve redirect: one more recipient for the message pending delivery */
void smtp_proto_add_rcpt(struct smtp_proto *sp, const char *rcpt, int local);

/* the connection's id (common/connid): the engine's lines carry it */
void smtp_proto_set_conn_id(struct smtp_proto *sp, const char *id);

#endif
