/*
 * engine - stage-by-stage verdicts for one SMTP connection.
 *
 *   engine_connect/helo/mail/rcpt/header/eom/abort()  facts in, verdict out
 *   engine_log()                                      one line per verdict
 *
 * Policy order (README "Policy order"): the accept list first (a listed
 * client may relay and bypasses the kill list; a listed sender bypasses the
 * kill list only), then the kill list, then the per-stage checks. Within a
 * list a client matches by address, then host name, then country (GeoIP,
 * looked up once at connect). Client
 * entries are looked up again at every MAIL and RCPT against the snapshot of
 * that moment, so a list change reaches open connections too.
 *
 * Never does I/O except logging; never blocks; one session per connection.
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/connid.h"
#include "common/log.h"
#include "common/mailaddr.h"
#include "common/stats.h"
#include "common/xmalloc.h"
#include "rules/engine.h"
#include "rules/geoip.h"
#include "storage-adapter/ratelimit.h"

#define ENGINE_TEXT_ADDR 100	/* bytes of an address quoted in a reply */

/*
 * What ESMTP parameters add to the 512 octets of RFC 5321 §4.5.3.1.4 ("SMTP
 * extensions may be used to increase this limit"): each keyword present earns
 * its longest form, leading space and keyword included.
 *   RFC 3461 §4.2 ORCPT: " ORCPT=" + 500 octets of addr-type;xtext   = 507
 *   RFC 3461 §4.1 NOTIFY: " NOTIFY=SUCCESS,FAILURE,DELAY"           =  29
 *   RFC 3461 §4.4 ENVID: " ENVID=" + 100 octets of xtext             = 107
 *   RFC 3461 §4.3 RET: " RET=HDRS"                                   =   9
 *   RFC 1870 SIZE: "the MAIL FROM command line is increased by 26"  =  26
 *   RFC 4954 §5 AUTH=: "increased by 500 characters"                = 500
 */
static const struct {
	enum engine_stage stage;
	const char *keyword;	/* "KEY=" */
	unsigned allowance;
} param_allowances[] = {
	{ STAGE_RCPT, "ORCPT=", 507 },
	{ STAGE_RCPT, "NOTIFY=", 29 },
	{ STAGE_MAIL, "ENVID=", 107 },
	{ STAGE_MAIL, "RET=", 9 },
	{ STAGE_MAIL, "SIZE=", 26 },
	{ STAGE_MAIL, "AUTH=", 500 },
};

struct engine_session {
	const struct policy *pol;
	struct ratelimit *rl;
	char conn[CONNID_MAX + 8];		/* "conn=ID " for log lines, or "" */
	/* connection */
	struct ipaddr addr;
	int has_addr;
	char addr_text[CIDR_TEXT_MAX];
	char hostname[MAX_HOSTNAME_LEN + 1];	/* verified, lower case; "" unknown */
	char client_text[MAX_HOSTNAME_LEN + CIDR_TEXT_MAX + 4];
	char country[3];			/* GeoIP: "FR"; "" unknown */
	int country_given;			/* engine_session_set_country() */
	char helo[LOG_ESCAPE_BUFSZ];		/* escaped for logs */
	char auth[LOG_ESCAPE_BUFSZ];		/* "" when not authenticated */
	/* transaction */
	int in_tx;
	struct mailaddr sender;
	int sender_ok;				/* parsed */
	/* for logs: the raw address, escaped, when it did not parse (else the
	 * parsed one is formatted when a line is written: most never are) */
	char sender_text[LOG_ESCAPE_BUFSZ];
	char rcpt_text[LOG_ESCAPE_BUFSZ];	/* last recipient, the same way */
	unsigned addr_flags;			/* MAILADDR_UTF8 in an SMTPUTF8 transaction */
	unsigned addr_flags_next;		/* ... for the next MAIL */
	struct mailaddr rcpt;			/* last recipient, as judged */
	int rcpt_ok;				/* ... it parsed */
	int rcpt_local;				/* ... it is in mydomains */
	unsigned nrcpt;				/* accepted recipients */
	int relayed;				/* some accepted recipient is relayed */
	unsigned headers_seen;			/* bit i: require_headers[i] */
	/* the next MAIL/RCPT: bit i of param_allowances[] present */
	unsigned params_seen;
	/* the last engine_rcpt() counted a recipient (and whether relayed) */
	int last_rcpt_counted, last_rcpt_relayed;
	unsigned nrelayed;			/* accepted relayed recipients */
};

struct engine_session *
engine_session_new(const struct policy *p)
{
	struct engine_session *s = xcalloc(1, sizeof(*s));

	s->pol = p;
	strcpy(s->client_text, "unknown[unknown]");
	return s;
}

void
engine_session_set_ratelimit(struct engine_session *s, struct ratelimit *rl)
{
	s->rl = rl;
}

void
engine_session_free(struct engine_session **sp)
{
	free(*sp);
	*sp = NULL;
}

const char *
engine_stage_name(enum engine_stage st)
{
	static const char *const names[] = {
		"CONNECT", "HELO", "MAIL", "RCPT", "HEADER", "END-OF-HEADERS",
		"END-OF-MESSAGE", "ABORT", "CLOSE", "COMMAND",
	};
	return names[st];
}

const char *
engine_action_name(enum verdict_action a)
{
	static const char *const names[] = {
		"continue", "accept", "reject", "tempfail", "discard", "quarantine",
	};
	return names[a];
}

const char *
engine_client_text(const struct engine_session *s)
{
	return s->client_text;
}

void
engine_mail_smtputf8(struct engine_session *s)
{
	s->addr_flags_next = MAILADDR_UTF8;
}

const struct mailaddr *
engine_sender_address(const struct engine_session *s)
{
	return s->sender_ok ? &s->sender : NULL;
}

const struct mailaddr *
engine_rcpt_address(const struct engine_session *s, int *local_r)
{
	if (!s->rcpt_ok)
		return NULL;
	if (local_r != NULL)
		*local_r = s->rcpt_local;
	return &s->rcpt;
}

unsigned
engine_rcpt_count(const struct engine_session *s)
{
	return s->nrcpt;
}

const struct ipaddr *
engine_client_addr(const struct engine_session *s)
{
	return s->has_addr ? &s->addr : NULL;
}

void
engine_session_set_country(struct engine_session *s, const char *cc)
{
	s->country[0] = '\0';
	s->country_given = 1;
	if (cc != NULL && strlen(cc) == 2 && isalpha((unsigned char)cc[0]) &&
	    isalpha((unsigned char)cc[1])) {
		s->country[0] = (char)toupper((unsigned char)cc[0]);
		s->country[1] = (char)toupper((unsigned char)cc[1]);
		s->country[2] = '\0';
	}
}

const char *
engine_session_country(const struct engine_session *s)
{
	return s->country[0] ? s->country : NULL;
}

static void
verdict_clear(struct verdict *v)
{
	memset(v, 0, sizeof(*v));
	v->action = VERDICT_CONTINUE;
}

/* printable ASCII only, capped: reply texts quote hostile input */
static void
safe_copy(char *dst, size_t cap, const char *src)
{
	size_t n = 0;

	for (; *src && n + 1 < cap && n < ENGINE_TEXT_ADDR; src++) {
		unsigned char c = (unsigned char)*src;

		dst[n++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
	}
	dst[n] = '\0';
}

static void
decide(const struct engine_session *s, struct verdict *v, enum verdict_action a,
    const char *code, const char *dsn, const char *tag, const char *fmt, ...)
    __attribute__((format(printf, 7, 8)));

static void
decide(const struct engine_session *s, struct verdict *v, enum verdict_action a,
    const char *code, const char *dsn, const char *tag, const char *fmt, ...)
{
	va_list ap;

	v->action = a;
	snprintf(v->code, sizeof(v->code), "%s", code);
	snprintf(v->dsn, sizeof(v->dsn), "%s", dsn);
	v->tag = tag;
	va_start(ap, fmt);
	vsnprintf(v->text, sizeof(v->text), fmt, ap);
	va_end(ap);
	if (s->pol->warn_only && (a == VERDICT_REJECT || a == VERDICT_TEMPFAIL)) {
		v->warned = 1;
		v->action = VERDICT_CONTINUE;
	}
}

static void
describe_entry(char *buf, size_t cap, const char *list, const struct listset_match *m)
{
	snprintf(buf, cap, "%s list entry %s (origin %s%s%s)", list, m->key,
	    listentry_origin_name(m->origin), m->reason ? ", reason: " : "",
	    m->reason ? m->reason : "");
}

static int
client_match(const struct engine_session *s, const struct snapshot *snap,
    enum list_kind k, long long now, struct listset_match *m)
{
	return snapshot_match_client(snap, k, s->has_addr ? &s->addr : NULL,
	    s->hostname[0] ? s->hostname : NULL, now, m) ||
	    snapshot_match_country(snap, k, s->country, now, m);
}

void
engine_connect(struct engine_session *s, const struct snapshot *snap,
    const struct ipaddr *addr, const char *hostname, long long now, struct verdict *v)
{
	struct listset_match m;

	verdict_clear(v);
	s->has_addr = addr != NULL;
	if (addr != NULL) {
		s->addr = *addr;
		cidr_addr_format(addr, s->addr_text);
	} else {
		strcpy(s->addr_text, "unknown");
	}
	s->hostname[0] = '\0';
	/* MTAs say "unknown" or "[addr]" for a name that did not verify */
	if (hostname != NULL && hostname[0] != '\0' && hostname[0] != '[' &&
	    strcasecmp(hostname, "unknown") != 0 && strlen(hostname) <= MAX_HOSTNAME_LEN) {
		size_t i;

		for (i = 0; hostname[i]; i++) {
			unsigned char c = (unsigned char)hostname[i];

			if (!(isalnum(c) || c == '.' || c == '-' || c == '_'))
				break;
			s->hostname[i] = (char)tolower(c);
		}
		s->hostname[hostname[i] ? 0 : i] = '\0';
	}
	snprintf(s->client_text, sizeof(s->client_text), "%s[%s]",
	    s->hostname[0] ? s->hostname : "unknown", s->addr_text);
	if (!s->country_given) {
		s->country[0] = '\0';
		if (addr != NULL && s->pol->geoip != NULL)
			(void)geoip_lookup(s->pol->geoip, addr, s->country);
	}

	/* nothing is refused here: a milter cannot give reply text at connect */
	if (client_match(s, snap, LIST_ACCEPT, now, &m))
		describe_entry(v->rule, sizeof(v->rule), "accept", &m);
	else if (client_match(s, snap, LIST_KILL, now, &m)) {
		describe_entry(v->rule, sizeof(v->rule), "kill", &m);
		strncat(v->rule, "; refused at MAIL and RCPT", sizeof(v->rule) - strlen(v->rule) - 1);
	} else
		snprintf(v->rule, sizeof(v->rule), "client on no list");
}

void
engine_command_params(struct engine_session *s, const char *params)
{
	while (params != NULL && *params != '\0') {
		size_t l;

		params += strspn(params, " ");
		l = strcspn(params, " ");
		for (size_t i = 0; i < sizeof(param_allowances) / sizeof(param_allowances[0]); i++) {
			size_t kl = strlen(param_allowances[i].keyword);

			if (l >= kl && strncasecmp(params, param_allowances[i].keyword, kl) == 0)
				s->params_seen |= 1u << i;
		}
		params += l;
	}
}

/* max_command_length plus what the parameters of this MAIL/RCPT earn */
static unsigned
command_limit(const struct engine_session *s, enum engine_stage stage)
{
	unsigned limit = s->pol->max_command_length;

	for (size_t i = 0; i < sizeof(param_allowances) / sizeof(param_allowances[0]); i++)
		if ((s->params_seen & (1u << i)) && param_allowances[i].stage == stage)
			limit += param_allowances[i].allowance;
	return limit;
}

/* HELO/EHLO, MAIL and RCPT only, as documented: other lines are the door's
 * business (a NOOP or a header line is never a reason to ban) */
static int
too_long(struct engine_session *s, enum engine_stage stage, size_t cmdlen,
    struct verdict *v, long long now, const struct snapshot *snap)
{
	struct listset_match m;
	unsigned limit = command_limit(s, stage);

	s->params_seen = 0;	/* they were for this command only */
	if (s->pol->max_command_length == 0 || cmdlen <= limit)
		return 0;
	if (stage != STAGE_HELO && stage != STAGE_MAIL && stage != STAGE_RCPT) {
		decide(s, v, VERDICT_REJECT, "500", "5.5.2", "long-line",
		    "Line too long (%zu octets)", cmdlen);
		snprintf(v->rule, sizeof(v->rule), "a line no command needs; no ban");
		return 1;
	}
	decide(s, v, VERDICT_REJECT, "500", "5.5.2", "long-command",
	    "Command line too long (%zu octets, limit %u)", cmdlen, limit);
	if (limit != s->pol->max_command_length)
		snprintf(v->rule, sizeof(v->rule), "max_command_length = %u, %u with its ESMTP "
		    "parameters", s->pol->max_command_length, limit);
	else
		snprintf(v->rule, sizeof(v->rule), "max_command_length = %u",
		    s->pol->max_command_length);
	/* the accept list overrides bans; warn mode only says what it would do */
	if (s->pol->long_command_ban > 0 && s->has_addr && !v->warned &&
	    !client_match(s, snap, LIST_ACCEPT, now, &m)) {
		v->ban_seconds = s->pol->long_command_ban;
		strncat(v->rule, "; client banned", sizeof(v->rule) - strlen(v->rule) - 1);
	}
	return 1;
}

void
engine_long_command(struct engine_session *s, const struct snapshot *snap,
    enum engine_stage stage, size_t cmdlen, long long now, struct verdict *v)
{
	verdict_clear(v);
	if (!too_long(s, stage, cmdlen, v, now, snap))
		snprintf(v->rule, sizeof(v->rule), "command within max_command_length");
}

int
engine_client_is_killed(const struct engine_session *s, const struct snapshot *snap,
    long long now, struct verdict *v)
{
	struct listset_match m;

	verdict_clear(v);
	if (client_match(s, snap, LIST_ACCEPT, now, &m) || !client_match(s, snap, LIST_KILL, now, &m))
		return 0;
	describe_entry(v->rule, sizeof(v->rule), "kill", &m);
	if (m.kind == ENTRY_COUNTRY)
		decide(s, v, VERDICT_REJECT, "554", "5.7.1", "kill-country",
		    "Client host [%s] (country %s) is on the kill list", s->addr_text, s->country);
	else
		decide(s, v, VERDICT_REJECT, "554", "5.7.1",
		    m.kind == ENTRY_ADDR ? "kill-ip" : "kill-host",
		    "Client host %s is on the kill list", s->client_text);
	return !v->warned;
}

int
engine_client_is_accepted(const struct engine_session *s, const struct snapshot *snap,
    long long now, struct verdict *v)
{
	struct listset_match m;

	verdict_clear(v);
	if (!client_match(s, snap, LIST_ACCEPT, now, &m))
		return 0;
	describe_entry(v->rule, sizeof(v->rule), "accept", &m);
	return 1;
}

int
engine_client_may_be_banned(const struct engine_session *s, const struct snapshot *snap,
    long long now)
{
	struct listset_match m;

	return s->has_addr && !s->pol->warn_only && !client_match(s, snap, LIST_ACCEPT, now, &m);
}

void
engine_helo(struct engine_session *s, const struct snapshot *snap, const char *helo,
    size_t cmdlen, long long now, struct verdict *v)
{
	verdict_clear(v);
	log_escape(s->helo, helo, strlen(helo));
	if (too_long(s, STAGE_HELO, cmdlen, v, now, snap))
		return;
	snprintf(v->rule, sizeof(v->rule), "no HELO check refused it");
}

/* for logs: the address without the <> the MTA passes, escaped and capped */
static void
escape_addr(char *dst, const char *a)
{
	size_t n = strlen(a);

	if (n >= 2 && a[0] == '<' && a[n - 1] == '>') {
		a++;
		n -= 2;
	}
	log_escape(dst, a, n);
}

/* the formatted address, escaped for logs */
static const char *
format_addr(char *dst, const struct mailaddr *a)
{
	char buf[MAILADDR_TEXT_MAX];

	mailaddr_format(a, buf);
	return log_escape(dst, buf, strlen(buf));
}

/*
 * An address that does not parse is refused whatever policy_mode says:
 * the MTA or the downstream would read it some other way than we did.
 */
static void
refuse_syntax(struct verdict *v, const char *code, const char *dsn, const char *text,
    const char *what, const char *why)
{
	v->action = VERDICT_REJECT;
	snprintf(v->code, sizeof(v->code), "%s", code);
	snprintf(v->dsn, sizeof(v->dsn), "%s", dsn);
	snprintf(v->text, sizeof(v->text), "%s", text);
	v->tag = "bad-address";
	snprintf(v->rule, sizeof(v->rule), "%s address syntax (RFC 5321 Mailbox): %s", what, why);
}

static void
tx_reset(struct engine_session *s)
{
	s->in_tx = 0;
	s->sender_ok = 0;	/* s->sender means nothing without it */
	s->sender_text[0] = '\0';
	s->rcpt_text[0] = '\0';
	s->rcpt.local[0] = '\0';
	s->rcpt_ok = s->rcpt_local = 0;
	s->nrcpt = 0;
	s->relayed = 0;
	s->nrelayed = 0;
	s->last_rcpt_counted = 0;
	s->headers_seen = 0;
}

/*
 * Kill list check for the current transaction; 1 with *v decided when refused.
 * A client or sender on the accept list bypasses it.
 */
static int
kill_check(struct engine_session *s, const struct snapshot *snap, long long now,
    struct verdict *v)
{
	struct listset_match m;
	char ent[sizeof(v->rule)];
	char who[ENGINE_TEXT_ADDR + 1];

	if (client_match(s, snap, LIST_ACCEPT, now, &m)) {
		describe_entry(v->rule, sizeof(v->rule), "accept", &m);
		return 0;
	}
	if (s->sender_ok && snapshot_match_sender(snap, LIST_ACCEPT, &s->sender, now, &m)) {
		describe_entry(v->rule, sizeof(v->rule), "accept", &m);
		return 0;
	}
	if (client_match(s, snap, LIST_KILL, now, &m)) {
		describe_entry(ent, sizeof(ent), "kill", &m);
		if (m.kind == ENTRY_ADDR)
			decide(s, v, VERDICT_REJECT, "550", "5.7.1", "kill-ip",
			    "Client host [%s] is on the kill list", s->addr_text);
		else if (m.kind == ENTRY_COUNTRY)
			decide(s, v, VERDICT_REJECT, "550", "5.7.1", "kill-country",
			    "Client host [%s] (country %s) is on the kill list", s->addr_text,
			    s->country);
		else
			decide(s, v, VERDICT_REJECT, "550", "5.7.1", "kill-host",
			    "Client host %s is on the kill list", s->client_text);
		snprintf(v->rule, sizeof(v->rule), "%s", ent);
		return 1;
	}
	if (s->sender_ok && snapshot_match_sender(snap, LIST_KILL, &s->sender, now, &m)) {
		describe_entry(ent, sizeof(ent), "kill", &m);
		if (m.kind == ENTRY_SENDER) {
			safe_copy(who, sizeof(who), m.key);
			decide(s, v, VERDICT_REJECT, "550", "5.7.1", "kill-sender",
			    "<%s>: Sender address is on the kill list", who);
		} else {
			safe_copy(who, sizeof(who), s->sender.domain);
			decide(s, v, VERDICT_REJECT, "550", "5.7.1", "kill-domain",
			    "Sender domain %s is on the kill list", who);
		}
		snprintf(v->rule, sizeof(v->rule), "%s", ent);
		return 1;
	}
	return 0;
}

void
engine_mail(struct engine_session *s, const struct snapshot *snap, const char *sender,
    size_t cmdlen, const char *auth_user, long long now, struct verdict *v)
{
	const char *why;

	verdict_clear(v);
	tx_reset(s);
	s->in_tx = 1;
	s->addr_flags = s->addr_flags_next;
	s->addr_flags_next = 0;
	/* the identity of this MAIL, never one left over from an earlier
	 * transaction or from before STARTTLS (RFC 3207 §4.2) */
	if (auth_user != NULL && auth_user[0] != '\0')
		log_escape(s->auth, auth_user, strlen(auth_user));
	else
		s->auth[0] = '\0';
	if (too_long(s, STAGE_MAIL, cmdlen, v, now, snap)) {
		escape_addr(s->sender_text, sender);
		return;
	}
	if (mailaddr_parse_flags(sender, s->addr_flags, &s->sender, &why) < 0) {
		memset(&s->sender, 0, sizeof(s->sender));
		escape_addr(s->sender_text, sender);
		refuse_syntax(v, "501", "5.1.7", "Bad sender address syntax", "sender", why);
		return;
	}
	s->sender_ok = 1;
	if (kill_check(s, snap, now, v))
		return;
	if (s->sender_ok && s->sender.is_null && s->pol->null_sender == NULL_SENDER_REJECT) {
		decide(s, v, VERDICT_REJECT, "550", "5.7.1", "null-sender",
		    "Null sender <> is not accepted here");
		snprintf(v->rule, sizeof(v->rule), "null_sender = reject");
		return;
	}
	if (v->rule[0] == '\0')
		snprintf(v->rule, sizeof(v->rule), "no MAIL check refused it");
}

static int
relay_allowed(struct engine_session *s, const struct snapshot *snap, long long now,
    char *why, size_t cap)
{
	struct listset_match m;

	if (client_match(s, snap, LIST_ACCEPT, now, &m)) {
		describe_entry(why, cap, "accept", &m);
		return 1;
	}
	if (s->has_addr && cidrtab_lookup(s->pol->relay_networks, &s->addr) != CIDRTAB_NONE) {
		snprintf(why, cap, "client [%s] is in relay_networks", s->addr_text);
		return 1;
	}
	if (s->pol->relay_authenticated && s->auth[0] != '\0') {
		snprintf(why, cap, "authenticated as %.180s (relay_authenticated = yes)", s->auth);
		return 1;
	}
	if (s->pol->relay_client_domains && s->hostname[0] != '\0' &&
	    policy_host_in_my_domains(s->pol, s->hostname)) {
		snprintf(why, cap, "client %.180s is in mydomains (relay_client_domains = yes)",
		    s->hostname);
		return 1;
	}
	return 0;
}

static const char *
window_text(unsigned w, char *buf, size_t cap)
{
	if (w % 86400 == 0)
		snprintf(buf, cap, "%ud", w / 86400);
	else if (w % 3600 == 0)
		snprintf(buf, cap, "%uh", w / 3600);
	else if (w % 60 == 0)
		snprintf(buf, cap, "%um", w / 60);
	else
		snprintf(buf, cap, "%us", w);
	return buf;
}

/* count one relayed recipient; 1 with *v decided when over the limit */
static int
rate_refused(struct engine_session *s, long long now, struct verdict *v)
{
	char who[LOG_ESCAPE_BUFSZ + 8], win[16];
	unsigned limit, window;
	unsigned long total;
	const char *user = s->auth[0] ? s->auth : NULL;

	if (!policy_rate_for(s->pol, user, &limit, &window))
		return 0;
	if (user != NULL) {
		size_t i;

		for (i = 0; user[i] && i + 1 < sizeof(who); i++)
			who[i] = (char)tolower((unsigned char)user[i]);
		who[i] = '\0';
	} else {
		snprintf(who, sizeof(who), "ip:%s", s->addr_text);
	}
	if (ratelimit_take(s->rl, who, limit, window, now, &total))
		return 0;
	window_text(window, win, sizeof(win));
	decide(s, v, VERDICT_TEMPFAIL, "452", "4.7.1", "rate-limit",
	    "Relay rate limit reached for %s: at most %u recipients per %s", user ? user :
	    s->addr_text, limit, win);
	snprintf(v->rule, sizeof(v->rule), "relay rate limit %u/%s for %.160s (%lu counted)", limit,
	    win, who, total);
	return 1;
}

void
engine_rcpt(struct engine_session *s, const struct snapshot *snap, const char *rcpt,
    size_t cmdlen, long long now, struct verdict *v)
{
	struct mailaddr *ra = &s->rcpt;
	char who[LOG_ESCAPE_BUFSZ];
	char why[sizeof(v->rule)];
	const char *err;
	int local;

	verdict_clear(v);
	s->rcpt_ok = s->rcpt_local = 0;
	s->last_rcpt_counted = 0;
	ra->local[0] = '\0';	/* for logs: not parsed (yet) */
	if (too_long(s, STAGE_RCPT, cmdlen, v, now, snap)) {
		escape_addr(s->rcpt_text, rcpt);
		return;
	}
	if (mailaddr_parse_flags(rcpt, s->addr_flags, ra, &err) < 0 || ra->is_null) {
		refuse_syntax(v, "501", "5.1.3", "Bad recipient address syntax", "recipient",
		    ra->is_null ? "the null address <> is no recipient" : err);
		memset(ra, 0, sizeof(*ra));
		escape_addr(s->rcpt_text, rcpt);
		return;
	}
	if (kill_check(s, snap, now, v))
		return;
	if (ra->domain[0] == '\0') {
		/*
		 * Unqualified (RFC 5321 §4.1.1.3 allows only <postmaster>):
		 * postmaster goes to postmaster_address; anything else only from a
		 * client that may relay, qualified with our first domain as
		 * Postfix appends $myorigin. Every check below judges the result.
		 */
		if (mailaddr_is_postmaster(ra) && s->pol->postmaster.local[0] != '\0') {
			*ra = s->pol->postmaster;
		} else if (s->pol->origin[0] != '\0' &&
		    relay_allowed(s, snap, now, why, sizeof(why))) {
			snprintf(ra->domain, sizeof(ra->domain), "%s", s->pol->origin);
		} else {
			char fmt[MAILADDR_TEXT_MAX];

			safe_copy(who, sizeof(who), mailaddr_format(ra, fmt));
			decide(s, v, VERDICT_REJECT, "504", "5.5.2", "non-fqdn",
			    "<%s>: Recipient address rejected: need fully-qualified address", who);
			snprintf(v->rule, sizeof(v->rule), "unqualified recipient from a client "
			    "that may not relay (only <postmaster> is accepted)");
			if (!v->warned)
				return;
			ra->is_null = 0;
			snprintf(ra->domain, sizeof(ra->domain), "%s",
			    s->pol->origin[0] ? s->pol->origin : "invalid");
		}
	}
	s->rcpt_ok = 1;
	/*
	 * Local only when the domain is ours and nothing in the address could
	 * route it elsewhere (%, !, quoted @, address literals; a source route
	 * was dropped, as Postfix drops it).
	 */
	local = !ra->routing_local && !ra->domain_literal && policy_is_my_domain(s->pol, ra->domain);
	s->rcpt_local = local;
	if (local) {
		snprintf(why, sizeof(why), "recipient domain is in mydomains");
	} else if (!relay_allowed(s, snap, now, why, sizeof(why))) {
		char fmt[MAILADDR_TEXT_MAX];

		safe_copy(who, sizeof(who), mailaddr_format(ra, fmt));
		decide(s, v, VERDICT_REJECT, "550", "5.7.1", "relay",
		    "<%s>: Relay access denied", who);
		snprintf(v->rule, sizeof(v->rule),
		    "recipient is not in mydomains and the client may not relay");
		if (!v->warned)
			return;
	}
	if (v->tag == NULL && s->sender_ok && s->sender.is_null && s->nrcpt >= 1 &&
	    s->pol->null_sender == NULL_SENDER_REJECT_MULTI) {
		decide(s, v, VERDICT_REJECT, "550", "5.7.1", "null-sender",
		    "Null sender <> may have only one recipient");
		snprintf(v->rule, sizeof(v->rule), "null_sender = reject_multi_rcpt");
		if (!v->warned)
			return;
	}
	if (v->tag == NULL && s->pol->max_recipients > 0 &&
	    s->nrcpt >= s->pol->max_recipients) {
		decide(s, v, VERDICT_TEMPFAIL, "452", "4.5.3", "max-rcpt",
		    "Too many recipients (at most %u per message)", s->pol->max_recipients);
		snprintf(v->rule, sizeof(v->rule), "max_recipients = %u", s->pol->max_recipients);
		if (!v->warned)
			return;
	}
	if (v->tag == NULL && !local && s->rl != NULL && rate_refused(s, now, v) && !v->warned)
		return;
	if (v->tag == NULL)
		snprintf(v->rule, sizeof(v->rule), "%s", why);
	/* only accepted recipients count (as Postfix's smtpd_recipient_limit);
	 * engine_rcpt_refused() takes back one the door refused after all */
	if (!local)
		s->nrelayed++;
	s->relayed = s->nrelayed > 0;
	s->nrcpt++;
	s->last_rcpt_counted = 1;
	s->last_rcpt_relayed = !local;
}

void
engine_rcpt_refused(struct engine_session *s)
{
	if (!s->last_rcpt_counted)
		return;
	s->last_rcpt_counted = 0;
	s->nrcpt--;
	if (s->last_rcpt_relayed)
		s->nrelayed--;
	s->relayed = s->nrelayed > 0;
}

void
engine_starttls(struct engine_session *s)
{
	tx_reset(s);
	s->helo[0] = '\0';
	s->auth[0] = '\0';
	s->params_seen = 0;
}

void
engine_header(struct engine_session *s, const char *name, struct verdict *v)
{
	verdict_clear(v);
	for (size_t i = 0; i < s->pol->nrequire_headers; i++)
		if (strcasecmp(name, s->pol->require_headers[i]) == 0)
			s->headers_seen |= 1u << i;
}

void
engine_eom(struct engine_session *s, struct verdict *v)
{
	char names[POLICY_MAX_HEADERS * 40] = "";

	verdict_clear(v);
	if (s->relayed && s->pol->nrequire_headers > 0 && s->headers_seen == 0) {
		for (size_t i = 0; i < s->pol->nrequire_headers; i++) {
			if (i > 0)
				strcat(names, i + 1 == s->pol->nrequire_headers ? " or " : ", ");
			strncat(names, s->pol->require_headers[i], 32);
			strcat(names, ":");
		}
		decide(s, v, VERDICT_REJECT, "550", "5.7.1", "missing-header",
		    "Relayed message must carry a %s header", names);
		snprintf(v->rule, sizeof(v->rule), "relay_require_headers = %.200s", names);
	} else {
		snprintf(v->rule, sizeof(v->rule), s->relayed ?
		    "relayed message carries a required header" : "no end-of-message check refused it");
	}
	/* the envelope stays for the log line; the next MAIL resets it */
	s->in_tx = 0;
}

void
engine_abort(struct engine_session *s)
{
	tx_reset(s);
}

void
engine_session_set_id(struct engine_session *s, const char *id)
{
	if (id == NULL || id[0] == '\0')
		s->conn[0] = '\0';
	else
		snprintf(s->conn, sizeof(s->conn), "conn=%.*s ", CONNID_MAX - 1, id);
}

const char *
engine_session_id(const struct engine_session *s)
{
	return s->conn;
}

void
engine_door_refusal(const struct engine_session *s, enum engine_stage stage,
    const char *tag, const char *code, const char *dsn, const char *text, const char *arg,
    struct verdict *v)
{
	verdict_clear(v);
	v->action = code[0] == '4' ? VERDICT_TEMPFAIL : VERDICT_REJECT;
	snprintf(v->code, sizeof(v->code), "%s", code);
	snprintf(v->dsn, sizeof(v->dsn), "%s", dsn);
	snprintf(v->text, sizeof(v->text), "%s", text);
	v->tag = tag;
	snprintf(v->rule, sizeof(v->rule), "door:%s", tag);
	engine_log(s, stage, v, NULL, arg);
}

void
engine_log(const struct engine_session *s, enum engine_stage stage,
    const struct verdict *v, const char *queue_id, const char *arg)
{
	char esc[LOG_ESCAPE_BUFSZ], from_buf[LOG_ESCAPE_BUFSZ], to_buf[LOG_ESCAPE_BUFSZ];
	const char *what, *from, *to;

	if (v->warned)
		what = "warn: would reject";
	else if (v->action == VERDICT_REJECT)
		what = "reject";
	else if (v->action == VERDICT_TEMPFAIL)
		what = "defer";
	else if (stage == STAGE_EOM)
		what = "pass";
	else
		what = NULL;
	if (what != NULL)
		stats_verdict(engine_stage_name(stage), v->warned ? "warn" : what, v->tag);
	if (what == NULL && !log_is_debug())
		return;
	/* the address as judged (formatted), or the raw one when it did not parse */
	from = s->sender_ok ? format_addr(from_buf, &s->sender) : s->sender_text;
	to = s->rcpt.local[0] != '\0' ? format_addr(to_buf, &s->rcpt) : s->rcpt_text;
	if (what == NULL) {
		if (log_is_debug())
			log_debug("%s%s: %s from %s: %s; from=<%s> helo=<%s>%s%s rule=%s",
			    s->conn, queue_id ? queue_id : "NOQUEUE", engine_stage_name(stage),
			    s->client_text, engine_action_name(v->action), from,
			    s->helo, s->country[0] ? " country=" : "", s->country, v->rule);
		return;
	}
	if (v->tag == NULL) {
		log_info("%s%s: %s: %s from %s: from=<%s> nrcpt=%u helo=<%s>%s%s%s%s",
		    s->conn, queue_id ? queue_id : "NOQUEUE", what, engine_stage_name(stage),
		    s->client_text, from, s->nrcpt, s->helo,
		    s->country[0] ? " country=" : "", s->country,
		    s->auth[0] ? " sasl_username=" : "", s->auth);
		return;
	}
	log_info("%s%s: %s: %s from %s: %s %s %s; from=<%s> to=<%s> helo=<%s>%s%s%s%s reason=%s%s%s",
	    s->conn, queue_id ? queue_id : "NOQUEUE", what, engine_stage_name(stage), s->client_text,
	    v->code, v->dsn, v->text, from,
	    stage == STAGE_RCPT ? to : "",
	    s->helo, s->country[0] ? " country=" : "", s->country,
	    s->auth[0] ? " sasl_username=" : "", s->auth, v->tag,
	    arg ? " arg=" : "", arg ? log_escape(esc, arg, strlen(arg)) : "");
}
