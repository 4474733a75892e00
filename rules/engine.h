#ifndef PC_ENGINE_H
#define PC_ENGINE_H
#include <stddef.h>
#include "common/cidr.h"
#include "common/pclimits.h"
#include "rules/policy.h"
#include "rules/snapshot.h"

/*
 * The policy engine: facts in, verdicts out, one call per SMTP stage.
 * Pure: no sockets, no libmilter, no I/O but logging. A session belongs to
 * one connection (one thread at a time); policy and snapshot are shared.
 */
enum verdict_action {
	VERDICT_CONTINUE, VERDICT_ACCEPT, VERDICT_REJECT, VERDICT_TEMPFAIL,
	VERDICT_DISCARD, VERDICT_QUARANTINE,
};

enum engine_stage {
	STAGE_CONNECT, STAGE_HELO, STAGE_MAIL, STAGE_RCPT, STAGE_HEADER,
	STAGE_EOH, STAGE_EOM, STAGE_ABORT, STAGE_CLOSE, STAGE_COMMAND,
};

struct verdict {
	enum verdict_action action;
	char code[4];			/* "550" (reject/tempfail) */
	char dsn[8];			/* "5.7.1" */
	char text[MAX_REPLY_TEXT];	/* reply text, printable ASCII */
	const char *tag;		/* reason tag: "relay", "kill-ip", ...; NULL on continue */
	char rule[256];			/* what decided, for logs and `explain` */
	unsigned long ban_seconds;	/* >0: put the client address on the kill list */
	int warned;			/* policy_mode=warn let a reject pass */
};

struct engine_session;

struct ratelimit;

struct engine_session *engine_session_new(const struct policy *p);
/* relay rate limits count here (shared by all sessions); NULL: not counted */
void engine_session_set_ratelimit(struct engine_session *s, struct ratelimit *rl);
void engine_session_free(struct engine_session **s);
/* the connection's id (common/connid): every engine_log() line carries it
 * as "conn=ID"; NULL or "": none */
void engine_session_set_id(struct engine_session *s, const char *id);
/* "conn=ID " (with the space) or "": a prefix for the door's own lines */
const char *engine_session_id(const struct engine_session *s);

/* addr NULL when the MTA gave none; hostname: the verified (FCrDNS) name or NULL */
void engine_connect(struct engine_session *s, const struct snapshot *snap,
    const struct ipaddr *addr, const char *hostname, long long now, struct verdict *v);
/* cmdlen: the whole command line as the client sent it, CRLF included */
void engine_helo(struct engine_session *s, const struct snapshot *snap, const char *helo,
    size_t cmdlen, long long now, struct verdict *v);
/* auth_user: SMTP AUTH identity or NULL */
void engine_mail(struct engine_session *s, const struct snapshot *snap, const char *sender,
    size_t cmdlen, const char *auth_user, long long now, struct verdict *v);
void engine_rcpt(struct engine_session *s, const struct snapshot *snap, const char *rcpt,
    size_t cmdlen, long long now, struct verdict *v);
/* the door refused the recipient the last engine_rcpt() passed (unknown
 * user, the downstream's refusal...): it does not count toward
 * max_recipients, nor as relayed */
void engine_rcpt_refused(struct engine_session *s);
/* TLS is up after STARTTLS: forget HELO, AUTH and the transaction, keep the
 * client's address and name (RFC 3207 §4.2) */
void engine_starttls(struct engine_session *s);
void engine_header(struct engine_session *s, const char *name, struct verdict *v);
/* a command line of cmdlen octets (CRLF included) the door could not hold:
 * for HELO/EHLO, MAIL, RCPT past max_command_length 500 5.5.2 and a ban;
 * any other stage (STAGE_COMMAND) 500 5.5.2 without a ban */
void engine_long_command(struct engine_session *s, const struct snapshot *snap,
    enum engine_stage stage, size_t cmdlen, long long now, struct verdict *v);
/* ESMTP parameters of the next MAIL or RCPT (as sent, space-separated; may
 * be called once per parameter): DSN (RFC 3461), SIZE (RFC 1870) and AUTH=
 * (RFC 4954) raise its length limit by what they may add */
void engine_command_params(struct engine_session *s, const char *params);
/* after engine_connect(): 1 with a 554 5.7.1 verdict when the client is
 * kill-listed and not accept-listed (front doors that can refuse at connect) */
int engine_client_is_killed(const struct engine_session *s, const struct snapshot *snap,
    long long now, struct verdict *v);
/* after engine_connect(): 1 when the client is accept-listed (v->rule says
 * which entry); the Postfix policy door answers OK for it */
int engine_client_is_accepted(const struct engine_session *s, const struct snapshot *snap,
    long long now, struct verdict *v);
/* may the client's address be banned (failed logins)? 0 when accept-listed
 * (the accept list overrides bans), in policy_mode = warn, or without an address */
int engine_client_may_be_banned(const struct engine_session *s, const struct snapshot *snap,
    long long now);
void engine_eom(struct engine_session *s, struct verdict *v);
/* end of transaction without a message (RSET, rejected DATA...) */
void engine_abort(struct engine_session *s);

/*
 * A refusal a door made itself -- protocol, not policy: unknown user, SIZE,
 * bare newline, improper pipelining, the error budget, a failed AUTH, bad
 * syntax or sequence... -- recorded as a verdict like any other: v is
 * filled (code "4xx": tempfail, else reject; tag, a static string, is the
 * reason), logged by engine_log() and so counted in the verdict counters.
 * arg: a word for the log (escaped there), or NULL; never credentials.
 */
void engine_door_refusal(const struct engine_session *s, enum engine_stage stage,
    const char *tag, const char *code, const char *dsn, const char *text, const char *arg,
    struct verdict *v);
/* one Postfix-like log line for a verdict; queue_id NULL: NOQUEUE */
void engine_log(const struct engine_session *s, enum engine_stage stage,
    const struct verdict *v, const char *queue_id, const char *arg);
const char *engine_stage_name(enum engine_stage st);
const char *engine_action_name(enum verdict_action a);
/* "name[addr]" of the client */
const char *engine_client_text(const struct engine_session *s);
unsigned engine_rcpt_count(const struct engine_session *s);
struct mailaddr;
/* the next engine_mail() starts an SMTPUTF8 transaction (RFC 6531): UTF-8
 * addresses parse in it. Only a door that saw the MTA's SMTPUTF8 says so. */
void engine_mail_smtputf8(struct engine_session *s);
/* the sender the last engine_mail() judged; NULL when it did not parse */
const struct mailaddr *engine_sender_address(const struct engine_session *s);
/* the recipient the last engine_rcpt() judged -- <postmaster> rewritten to
 * postmaster_address, unqualified names qualified -- and whether it is in
 * mydomains; NULL when it did not parse. Deliver to this address. */
const struct mailaddr *engine_rcpt_address(const struct engine_session *s, int *local_r);
const struct ipaddr *engine_client_addr(const struct engine_session *s);
/* the client's country: engine_connect() looks it up in the policy's
 * geoip_database; this sets it instead, for the rest of the session (NULL
 * or anything but two letters: unknown). Call it before engine_connect()
 * for the connect stage to see it. */
void engine_session_set_country(struct engine_session *s, const char *cc);
/* "FR" (upper case), NULL when unknown -- for logs, `explain`, Sieve's
 * environment "vnd.portcullis.country" */
const char *engine_session_country(const struct engine_session *s);

#endif
