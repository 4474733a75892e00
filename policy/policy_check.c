/*
 * policy_check - the Postfix policy door's decisions: a request's facts go
 * through the engine as the milter feeds them (connect, HELO, MAIL, RCPT),
 * on a fresh session per request, and the verdict becomes an action.
 *
 *   policy_check()            a well-formed request -> "OK" | "DUNNO" | "550 5.7.1 ..."
 *   policy_check_malformed()  "DEFER_IF_PERMIT ..." for a request we cannot read
 *
 * What the door answers (README "the policy door"):
 *   - a refusal by the engine (kill-listed client, host, sender or sender
 *     domain; null_sender = reject) -> the engine's code, status and text;
 *   - the engine's "relay" refusal -> DUNNO: relay is Postfix's decision
 *     (mynetworks, SASL, relay_domains, then reject_unauth_destination);
 *   - an accept-listed client that nothing refused -> OK, which lets it
 *     relay inside smtpd_relay_restrictions;
 *   - anything else -> DUNNO.
 * What it leaves to the milter: everything that needs the whole transaction
 * (recipient counts, null sender with several recipients, relay rate limits,
 * required headers), so the session gets no rate counter and a request never
 * counts twice. Never blocks; a request is stateless.
 */
#include <stdio.h>
#include <string.h>

#include "common/cidr.h"
#include "common/log.h"
#include "common/mailaddr.h"
#include "policy/policy_check.h"

static int
refused(const struct verdict *v)
{
	return v->action == VERDICT_REJECT || v->action == VERDICT_TEMPFAIL;
}

static void
action_of(const struct verdict *v, int accepted, char *buf, size_t cap)
{
	switch (v->action) {
	case VERDICT_REJECT:
	case VERDICT_TEMPFAIL:
		snprintf(buf, cap, "%s %s %s", v->code, v->dsn, v->text);
		break;
	case VERDICT_DISCARD:
		snprintf(buf, cap, "DISCARD %s", v->text);
		break;
	case VERDICT_QUARANTINE:
		snprintf(buf, cap, "HOLD %s", v->text);
		break;
	case VERDICT_ACCEPT:
		snprintf(buf, cap, "OK");
		break;
	default:
		snprintf(buf, cap, "%s", accepted ? "OK" : "DUNNO");
		break;
	}
}

static const char *
qid_of(const struct policy_request *req, char *buf, size_t cap)
{
	const char *q = req->attr[PA_QUEUE_ID];
	size_t n;

	if (q == NULL || *q == '\0')
		return NULL;
	n = strspn(q, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789");
	if (n == 0)
		return NULL;
	if (n >= cap)
		n = cap - 1;
	memcpy(buf, q, n);
	buf[n] = '\0';
	return buf;
}

void
policy_check(const struct policy_request *req, const struct policy *pol,
    const struct snapshot *snap, long long now, char *action_r, size_t cap,
    struct verdict *v_r, const char *conn_id)
{
	struct engine_session *es = engine_session_new(pol);
	const char *addr_text = req->attr[PA_CLIENT_ADDRESS];
	const char *helo = req->attr[PA_HELO_NAME];
	/* Postfix sends addresses in its internal (unquoted) form: quote them
	 * again, so the engine judges the address Postfix uses */
	char sbuf[MAILADDR_TEXT_MAX + 2], rbuf[MAILADDR_TEXT_MAX + 2];
	const char *sender = req->attr[PA_SENDER] ?
	    mailaddr_externalize(req->attr[PA_SENDER], sbuf, sizeof(sbuf)) : "";
	const char *rcpt = req->attr[PA_RECIPIENT] ?
	    mailaddr_externalize(req->attr[PA_RECIPIENT], rbuf, sizeof(rbuf)) : "";
	const char *auth = req->attr[PA_SASL_USERNAME];
	enum engine_stage stage;
	struct ipaddr addr;
	struct verdict v, acc;
	char qbuf[32];
	int have = addr_text != NULL && cidr_addr_parse(addr_text, &addr) == 0;
	int accepted, decided = 0;
	engine_session_set_id(es, conn_id);

	/* client_name: the verified name, or "unknown" (as the milter's hostname) */
	engine_connect(es, snap, have ? &addr : NULL, req->attr[PA_CLIENT_NAME], now, &v);
	if (helo != NULL && helo[0] != '\0') {
		/* the HELO only goes into log lines: the engine checks its length,
		 * which Postfix has bounded already */
		engine_helo(es, snap, helo, 0, now, &v);
	}
	switch (req->state) {
	case PS_MAIL:
	case PS_RCPT:
	case PS_DATA:
	case PS_EOM:
		engine_mail(es, snap, sender, 0, auth && *auth ? auth : NULL, now, &v);
		if (refused(&v) || v.warned) {
			decided = 1;
			if (req->state == PS_RCPT)	/* only for the log line's to=<> */
				engine_rcpt(es, snap, rcpt, 0, now, &acc);
			break;
		}
		if (req->state != PS_RCPT)
			break;
		engine_rcpt(es, snap, rcpt, 0, now, &v);
		if (v.tag != NULL && strcmp(v.tag, "relay") == 0) {
			/* Postfix's own relay decision comes next */
			if (log_is_debug())
				log_debug("%spolicy: relay for %s left to Postfix: %s", engine_session_id(es),
				    engine_client_text(es), v.rule);
			v.action = VERDICT_CONTINUE;
			v.tag = NULL;
			v.warned = 0;
		} else if (refused(&v) || v.warned) {
			decided = 1;
		}
		break;
	default:
		/* CONNECT, HELO, VRFY, ETRN and states newer than this code */
		if (engine_client_is_killed(es, snap, now, &v) || v.warned)
			decided = 1;
		break;
	}
	/* log under the stage Postfix asked at */
	stage = req->state == PS_CONNECT ? STAGE_CONNECT : req->state == PS_HELO ? STAGE_HELO :
	    req->state == PS_MAIL ? STAGE_MAIL : req->state == PS_RCPT ? STAGE_RCPT :
	    req->state == PS_EOM ? STAGE_EOM : STAGE_COMMAND;
	accepted = !refused(&v) && engine_client_is_accepted(es, snap, now, &acc);
	if (accepted && !decided)
		snprintf(v.rule, sizeof(v.rule), "%s", acc.rule);
	engine_log(es, stage, &v, qid_of(req, qbuf, sizeof(qbuf)), NULL);
	action_of(&v, accepted, action_r, cap);
	*v_r = v;
	engine_session_free(&es);
}

void
policy_check_malformed(const char *why, char *action_r, size_t cap)
{
	snprintf(action_r, cap, "DEFER_IF_PERMIT Policy request not understood (%s)", why);
}
