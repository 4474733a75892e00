/*
 * engine: every verdict, table-driven. Each row runs one transaction through
 * connect, HELO, MAIL, RCPT... and names the stage where the first refusal
 * must come, with its reply code, enhanced status and reason tag.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/conf.h"
#include "common/xmalloc.h"
#include "rules/engine.h"
#include "tests/unit/unit.h"

#define NOW 1800000000LL
#define BASE_CONF "mydomains = example.com .sub.example.com\n" \
	"relay_networks = 192.0.2.0/24 2001:db8::/32\nmax_recipients = 3\n"

struct ecase {
	const char *name;
	const char *conf;	/* added to BASE_CONF */
	const char *kill;	/* list-file lines separated by '|' */
	const char *accept;
	const char *client, *host, *auth, *helo;
	const char *from, *rcpt;
	int before;		/* local recipients accepted before rcpt */
	const char *headers;	/* space separated; NULL: stop before the message */
	enum engine_stage stage;	/* first refusal; STAGE_CLOSE: none */
	const char *code, *dsn, *tag;
	int ban;		/* a ban is requested */
};

#define OUT "198.51.100.7"
#define IN "192.0.2.10"

static const struct ecase cases[] = {
	/* relay control */
	{ "outside client, local recipient", NULL, NULL, NULL, OUT, NULL, NULL, NULL,
	  "<a@b.example>", "<user@example.com>", 0, "From", STAGE_CLOSE, NULL, NULL, NULL, 0 },
	{ "outside client, remote recipient", NULL, NULL, NULL, OUT, NULL, NULL, NULL,
	  "<a@b.example>", "<user@other.org>", 0, NULL, STAGE_RCPT, "550", "5.7.1", "relay", 0 },
	{ "relay_networks client relays", NULL, NULL, NULL, IN, NULL, NULL, NULL,
	  "<a@example.com>", "<user@other.org>", 0, "From", STAGE_CLOSE, NULL, NULL, NULL, 0 },
	{ "IPv6 relay_networks client relays", NULL, NULL, NULL, "2001:db8::25", NULL, NULL, NULL,
	  "<a@example.com>", "<user@other.org>", 0, "From", STAGE_CLOSE, NULL, NULL, NULL, 0 },
	{ "IPv4-mapped client counts as IPv4", NULL, NULL, NULL, "::ffff:192.0.2.10", NULL, NULL, NULL,
	  "<a@example.com>", "<user@other.org>", 0, "From", STAGE_CLOSE, NULL, NULL, NULL, 0 },
	{ "authenticated client relays", NULL, NULL, NULL, OUT, NULL, "alice", NULL,
	  "<a@example.com>", "<user@other.org>", 0, "From", STAGE_CLOSE, NULL, NULL, NULL, 0 },
	{ "relay_authenticated = no", "relay_authenticated = no\n", NULL, NULL, OUT, NULL, "alice",
	  NULL, "<a@example.com>", "<user@other.org>", 0, NULL, STAGE_RCPT, "550", "5.7.1", "relay", 0 },
	{ "relay_client_domains: verified name in mydomains", "relay_client_domains = yes\n", NULL,
	  NULL, OUT, "mx.example.com", NULL, NULL, "<a@example.com>", "<u@other.org>", 0, "From",
	  STAGE_CLOSE, NULL, NULL, NULL, 0 },
	{ "relay_client_domains: other name", "relay_client_domains = yes\n", NULL, NULL, OUT,
	  "mx.other.org", NULL, NULL, "<a@example.com>", "<u@other.org>", 0, NULL, STAGE_RCPT,
	  "550", "5.7.1", "relay", 0 },
	{ "relay_client_domains off by default", NULL, NULL, NULL, OUT, "mx.example.com", NULL, NULL,
	  "<a@example.com>", "<u@other.org>", 0, NULL, STAGE_RCPT, "550", "5.7.1", "relay", 0 },
	{ "unverified [addr] name is no name", "relay_client_domains = yes\n", NULL, NULL, OUT,
	  "[198.51.100.7]", NULL, NULL, "<a@example.com>", "<u@other.org>", 0, NULL, STAGE_RCPT,
	  "550", "5.7.1", "relay", 0 },

	/* required headers on relayed mail */
	{ "relayed without From/Reply-To", NULL, NULL, NULL, IN, NULL, NULL, NULL,
	  "<a@example.com>", "<u@other.org>", 0, "Subject To", STAGE_EOM, "550", "5.7.1",
	  "missing-header", 0 },
	{ "relayed with Reply-To only", NULL, NULL, NULL, IN, NULL, NULL, NULL,
	  "<a@example.com>", "<u@other.org>", 0, "Subject reply-to", STAGE_CLOSE, NULL, NULL, NULL, 0 },
	{ "inbound mail needs no From", NULL, NULL, NULL, OUT, NULL, NULL, NULL,
	  "<a@b.example>", "<u@example.com>", 0, "Subject", STAGE_CLOSE, NULL, NULL, NULL, 0 },
	{ "relay_require_headers empty", "relay_require_headers =\n", NULL, NULL, IN, NULL, NULL, NULL,
	  "<a@example.com>", "<u@other.org>", 0, "Subject", STAGE_CLOSE, NULL, NULL, NULL, 0 },

	/* kill list */
	{ "kill: client address", NULL, OUT, NULL, OUT, NULL, NULL, NULL,
	  "<a@b.example>", "<u@example.com>", 0, NULL, STAGE_MAIL, "550", "5.7.1", "kill-ip", 0 },
	{ "kill: client CIDR", NULL, "198.51.100.0/24", NULL, OUT, NULL, NULL, NULL,
	  "<a@b.example>", "<u@example.com>", 0, NULL, STAGE_MAIL, "550", "5.7.1", "kill-ip", 0 },
	{ "kill: IPv6 CIDR", NULL, "2001:db8:bad::/48", NULL, "2001:db8:bad::1", NULL, NULL, NULL,
	  "<a@b.example>", "<u@example.com>", 0, NULL, STAGE_MAIL, "550", "5.7.1", "kill-ip", 0 },
	{ "kill: v4 entry hits v4-mapped client", NULL, "203.0.113.9", NULL, "::ffff:203.0.113.9",
	  NULL, NULL, NULL, "<a@b.example>", "<u@example.com>", 0, NULL, STAGE_MAIL, "550", "5.7.1",
	  "kill-ip", 0 },
	{ "kill: host name", NULL, "host:bad.host.example", NULL, OUT, "BAD.host.example", NULL,
	  NULL, "<a@b.example>", "<u@example.com>", 0, NULL, STAGE_MAIL, "550", "5.7.1", "kill-host", 0 },
	{ "kill: host suffix", NULL, "host:.evil.example", NULL, OUT, "a.b.evil.example", NULL,
	  NULL, "<a@b.example>", "<u@example.com>", 0, NULL, STAGE_MAIL, "550", "5.7.1", "kill-host", 0 },
	{ "kill: host suffix needs a label boundary", NULL, "host:.evil.example", NULL, OUT,
	  "notevil.example", NULL, NULL, "<a@b.example>", "<u@example.com>", 0, NULL, STAGE_CLOSE,
	  NULL, NULL, NULL, 0 },
	{ "kill: sender", NULL, "spammer@bad.example", NULL, OUT, NULL, NULL, NULL,
	  "<Spammer@BAD.example>", "<u@example.com>", 0, NULL, STAGE_MAIL, "550", "5.7.1",
	  "kill-sender", 0 },
	{ "kill: sender domain", NULL, "@bad.example", NULL, OUT, NULL, NULL, NULL,
	  "<x@bad.example>", "<u@example.com>", 0, NULL, STAGE_MAIL, "550", "5.7.1", "kill-domain", 0 },
	{ "kill: sender domain is not its subdomains", NULL, "@bad.example", NULL, OUT, NULL, NULL,
	  NULL, "<x@sub.bad.example>", "<u@example.com>", 0, NULL, STAGE_CLOSE, NULL, NULL, NULL, 0 },
	{ "kill: expired entry no longer applies", NULL, OUT " expires=1000", NULL, OUT, NULL, NULL,
	  NULL, "<a@b.example>", "<u@example.com>", 0, NULL, STAGE_CLOSE, NULL, NULL, NULL, 0 },
	{ "kill: entry not yet expired", NULL, OUT " expires=1900000000", NULL, OUT, NULL, NULL, NULL,
	  "<a@b.example>", "<u@example.com>", 0, NULL, STAGE_MAIL, "550", "5.7.1", "kill-ip", 0 },
	{ "kill: client in relay_networks is still killed", NULL, IN, NULL, IN, NULL, NULL, NULL,
	  "<a@example.com>", "<u@other.org>", 0, NULL, STAGE_MAIL, "550", "5.7.1", "kill-ip", 0 },

	/* accept list */
	{ "accept: client may relay", NULL, NULL, OUT, OUT, NULL, NULL, NULL,
	  "<a@b.example>", "<u@other.org>", 0, "From", STAGE_CLOSE, NULL, NULL, NULL, 0 },
	{ "accept: client bypasses its kill entry", NULL, "198.51.100.0/24", OUT, OUT, NULL, NULL,
	  NULL, "<a@b.example>", "<u@other.org>", 0, "From", STAGE_CLOSE, NULL, NULL, NULL, 0 },
	{ "accept: host may relay", NULL, NULL, "host:.partner.example", OUT, "mx.partner.example",
	  NULL, NULL, "<a@b.example>", "<u@other.org>", 0, "From", STAGE_CLOSE, NULL, NULL, NULL, 0 },
	{ "accept: sender bypasses kill list", NULL, OUT "|@friend.example", "good@friend.example",
	  OUT, NULL, NULL, NULL, "<good@friend.example>", "<u@example.com>", 0, NULL, STAGE_CLOSE,
	  NULL, NULL, NULL, 0 },
	{ "accept: sender never grants relay", NULL, NULL, "good@friend.example", OUT, NULL, NULL,
	  NULL, "<good@friend.example>", "<u@other.org>", 0, NULL, STAGE_RCPT, "550", "5.7.1",
	  "relay", 0 },
	{ "accept: sender domain never grants relay", NULL, NULL, "@friend.example", OUT, NULL, NULL,
	  NULL, "<good@friend.example>", "<u@other.org>", 0, NULL, STAGE_RCPT, "550", "5.7.1",
	  "relay", 0 },

	/* null sender */
	{ "null sender accepted by default", NULL, NULL, NULL, OUT, NULL, NULL, NULL,
	  "<>", "<u@example.com>", 1, NULL, STAGE_CLOSE, NULL, NULL, NULL, 0 },
	{ "null_sender = reject", "null_sender = reject\n", NULL, NULL, OUT, NULL, NULL, NULL,
	  "<>", "<u@example.com>", 0, NULL, STAGE_MAIL, "550", "5.7.1", "null-sender", 0 },
	{ "reject_multi_rcpt: one recipient passes", "null_sender = reject_multi_rcpt\n", NULL, NULL,
	  OUT, NULL, NULL, NULL, "<>", "<u@example.com>", 0, NULL, STAGE_CLOSE, NULL, NULL, NULL, 0 },
	{ "reject_multi_rcpt: second recipient refused", "null_sender = reject_multi_rcpt\n", NULL,
	  NULL, OUT, NULL, NULL, NULL, "<>", "<u@example.com>", 1, NULL, STAGE_RCPT, "550", "5.7.1",
	  "null-sender", 0 },

	/* recipient limit */
	{ "max_recipients: the limit itself passes", NULL, NULL, NULL, OUT, NULL, NULL, NULL,
	  "<a@b.example>", "<u@example.com>", 2, NULL, STAGE_CLOSE, NULL, NULL, NULL, 0 },
	{ "max_recipients: one over gets 452", NULL, NULL, NULL, OUT, NULL, NULL, NULL,
	  "<a@b.example>", "<u@example.com>", 3, NULL, STAGE_RCPT, "452", "4.5.3", "max-rcpt", 0 },
	{ "max_recipients = 0: no limit", "max_recipients = 0\n", NULL, NULL, OUT, NULL, NULL, NULL,
	  "<a@b.example>", "<u@example.com>", 3, NULL, STAGE_CLOSE, NULL, NULL, NULL, 0 },

	/* over-long commands */
	{ "long HELO is refused and banned", NULL, NULL, NULL, OUT, NULL, NULL, "LONG",
	  "<a@b.example>", "<u@example.com>", 0, NULL, STAGE_HELO, "500", "5.5.2", "long-command", 1 },
	{ "long MAIL is refused and banned", NULL, NULL, NULL, OUT, NULL, NULL, NULL,
	  "LONG", "<u@example.com>", 0, NULL, STAGE_MAIL, "500", "5.5.2", "long-command", 1 },
	{ "long RCPT is refused and banned", NULL, NULL, NULL, OUT, NULL, NULL, NULL,
	  "<a@b.example>", "LONG", 0, NULL, STAGE_RCPT, "500", "5.5.2", "long-command", 1 },
	{ "long_command_ban = 0: refused, no ban", "long_command_ban = 0\n", NULL, NULL, OUT, NULL,
	  NULL, NULL, "LONG", "<u@example.com>", 0, NULL, STAGE_MAIL, "500", "5.5.2", "long-command", 0 },
	{ "accept-listed client is never banned", NULL, NULL, OUT, OUT, NULL, NULL, NULL,
	  "LONG", "<u@example.com>", 0, NULL, STAGE_MAIL, "500", "5.5.2", "long-command", 0 },

	/* address syntax (RFC 5321 Mailbox): refused, never guessed -- also in warn mode */
	{ "comment in recipient domain", NULL, NULL, NULL, OUT, NULL, NULL, NULL,
	  "<a@b.example>", "<victim@other.org(.example.com>", 0, NULL, STAGE_RCPT, "501", "5.1.3",
	  "bad-address", 0 },
	{ "comment after recipient", NULL, NULL, NULL, OUT, NULL, NULL, NULL,
	  "<a@b.example>", "<u@example.com(x)>", 0, NULL, STAGE_RCPT, "501", "5.1.3",
	  "bad-address", 0 },
	{ "comment trick from a relay client is refused too", NULL, NULL, NULL, IN, NULL, NULL, NULL,
	  "<a@example.com>", "<victim@other.org(.example.com>", 0, NULL, STAGE_RCPT, "501", "5.1.3",
	  "bad-address", 0 },
	{ "kill-listed domain behind a comment", NULL, "@evil.org", NULL, OUT, NULL, NULL, NULL,
	  "<x@evil.org(c)>", "<u@example.com>", 0, NULL, STAGE_MAIL, "501", "5.1.7", "bad-address", 0 },
	{ "null sender made of a comment", "null_sender = reject\n", NULL, NULL, OUT, NULL, NULL, NULL,
	  "<(x)>", "<u@example.com>", 0, NULL, STAGE_MAIL, "501", "5.1.7", "bad-address", 0 },
	{ "bare comment sender, null_sender = accept", NULL, NULL, NULL, OUT, NULL, NULL, NULL,
	  "<(x)>", "<u@example.com>", 0, NULL, STAGE_MAIL, "501", "5.1.7", "bad-address", 0 },
	{ "syntax is refused in warn mode", "policy_mode = warn\n", NULL, NULL, OUT, NULL, NULL,
	  NULL, "<a@b.example>", "<victim@other.org(.example.com>", 0, NULL, STAGE_RCPT, "501",
	  "5.1.3", "bad-address", 0 },
	{ "null recipient", NULL, NULL, NULL, OUT, NULL, NULL, NULL,
	  "<a@b.example>", "<>", 0, NULL, STAGE_RCPT, "501", "5.1.3", "bad-address", 0 },
	{ "quoted local part with > is fine", NULL, NULL, NULL, OUT, NULL, NULL, NULL,
	  "<a@b.example>", "<\"root> NOTIFY=NEVER\"@example.com>", 0, NULL, STAGE_CLOSE, NULL, NULL,
	  NULL, 0 },

	/* unqualified recipients (RFC 5321 §4.1.1.3, §4.5.1) */
	{ "postmaster from outside", NULL, NULL, NULL, OUT, NULL, NULL, NULL,
	  "<a@b.example>", "<PostMaster>", 0, NULL, STAGE_CLOSE, NULL, NULL, NULL, 0 },
	{ "other unqualified from outside", NULL, NULL, NULL, OUT, NULL, NULL, NULL,
	  "<a@b.example>", "<root>", 0, NULL, STAGE_RCPT, "504", "5.5.2", "non-fqdn", 0 },
	{ "unqualified from a relay client", NULL, NULL, NULL, IN, NULL, NULL, NULL,
	  "<a@example.com>", "<root>", 0, NULL, STAGE_CLOSE, NULL, NULL, NULL, 0 },
	{ "postmaster_address elsewhere: relay check applies", "postmaster_address = pm@other.org\n",
	  NULL, NULL, OUT, NULL, NULL, NULL, "<a@b.example>", "<postmaster>", 0, NULL, STAGE_RCPT,
	  "550", "5.7.1", "relay", 0 },

	/* warn mode lets everything pass */
	{ "policy_mode = warn: relay passes", "policy_mode = warn\n", NULL, NULL, OUT, NULL, NULL,
	  NULL, "<a@b.example>", "<u@other.org>", 0, "From", STAGE_CLOSE, NULL, NULL, NULL, 0 },
	{ "policy_mode = warn: kill passes", "policy_mode = warn\n", OUT, NULL, OUT, NULL, NULL,
	  NULL, "<a@b.example>", "<u@example.com>", 0, NULL, STAGE_CLOSE, NULL, NULL, NULL, 0 },
	{ "policy_mode = warn: no ban", "policy_mode = warn\n", NULL, NULL, OUT, NULL, NULL, NULL,
	  "LONG", "<u@example.com>", 0, NULL, STAGE_CLOSE, NULL, NULL, NULL, 0 },
};

/* recipients that must never be local from an outside client */
static const char *const relay_tricks[] = {
	"<user%other.org@example.com>", "<@example.com:user@other.org>",
	"<\"user@other.org\"@example.com>", "<other.org!user@example.com>", "<user@other.org.>",
	"<USER@OTHER.ORG>", "<user@[192.0.2.1]>", "<user@sub.example.com>",
	"<user@notexample.com>", "<user@example.com.evil.org>",
	"<\"user%other.org\"@example.com>", "<user@other.org>",
};

/* recipients that do not parse: 501 5.1.3, whoever the client */
static const char *const syntax_tricks[] = {
	"<victim@other.org(.example.com>", "<x@example.com(c)>", "<(x)>", "<(x)x@example.com>",
	"<user@example.com@other.org>", "<>", "<user@exa mple.com>", "<a,b@example.com>",
	"<a;b@example.com>", "<a:b@example.com>", "<a<b@example.com>", "<u@example.com>>",
	"<u@example.com,other.org>", "<u@example.com;other.org>", "<\"u\"x@example.com>",
	"<u@[192.0.2.1>", "<u@[999.0.2.1]>", "<u@[example.com]>", "<@a:>", "<@:u@example.com>",
	"<u@example..com>", "<.u@example.com>", "<u.@example.com>", "<u@-example.com>",
	"<\"\"@example.com>", "<u\x01@example.com>", "<u@example.com\x7f>",
	"<\xc3\xa9@example.com>", "<u @example.com>", "<u@ example.com>",
};

/* recipients that are local */
static const char *const local_forms[] = {
	"<user@EXAMPLE.COM>", "<user@example.com.>", "<x@a.sub.example.com>", "<Postmaster>",
	"<@other.org:user@example.com>", "user@example.com",
};

static char *
long_arg(void)
{
	char *s = xmalloc(620);

	memset(s, 'x', 619);
	s[619] = '\0';
	s[0] = '<';
	s[300] = '@';
	s[617] = '>';
	s[618] = '\0';
	return s;
}

static struct listset *
list_from(const char *spec)
{
	struct entry_vec v = { 0 };
	struct listset *l;

	if (spec != NULL) {
		char *copy = xstrdup(spec), *save = NULL;

		for (char *item = strtok_r(copy, "|", &save); item; item = strtok_r(NULL, "|", &save)) {
			struct list_entry e;
			const char *err;

			if (listentry_parse_line(item, &e, &err) < 0) {
				fprintf(stderr, "bad test entry %s: %s\n", item, err);
				abort();
			}
			entry_vec_push(&v, &e);
		}
		free(copy);
	}
	l = listset_build(&v, NOW);
	entry_vec_clear(&v);
	return l;
}

static struct policy *
policy_from(const char *extra)
{
	struct conf *c = conf_new();
	struct policy *p;
	const char *err;
	char *text = xasprintf("%s%s", BASE_CONF, extra ? extra : "");

	if (conf_load_string(c, "test", text, &err) < 0 || conf_finish(c, &err) < 0 ||
	    policy_new(c, &p, &err) < 0) {
		fprintf(stderr, "bad test config: %s\n", err);
		abort();
	}
	conf_free(&c);
	free(text);
	return p;
}

static int
refused(const struct verdict *v)
{
	return v->action == VERDICT_REJECT || v->action == VERDICT_TEMPFAIL;
}

/* run one row; returns the stage of the first refusal (STAGE_CLOSE: none) */
static enum engine_stage
run_case(const struct ecase *t, struct verdict *v)
{
	struct policy *p = policy_from(t->conf);
	struct snapshot *snap = snapshot_new(list_from(t->kill), list_from(t->accept));
	struct engine_session *s = engine_session_new(p);
	struct ipaddr addr;
	char *longa = long_arg();
	const char *helo = t->helo && strcmp(t->helo, "LONG") == 0 ? longa : (t->helo ? t->helo : "client.example");
	const char *from = strcmp(t->from, "LONG") == 0 ? longa : t->from;
	const char *rcpt = strcmp(t->rcpt, "LONG") == 0 ? longa : t->rcpt;
	enum engine_stage st = STAGE_CLOSE;
	char more[64];

	if (cidr_addr_parse(t->client, &addr) < 0)
		abort();
	engine_connect(s, snap, &addr, t->host, NOW, v);
	if (refused(v)) { st = STAGE_CONNECT; goto out; }
	engine_helo(s, snap, helo, strlen(helo) + 7, NOW, v);
	if (refused(v)) { st = STAGE_HELO; goto out; }
	engine_mail(s, snap, from, strlen(from) + 12, t->auth, NOW, v);
	if (refused(v)) { st = STAGE_MAIL; goto out; }
	for (int i = 0; i < t->before; i++) {
		snprintf(more, sizeof(more), "<r%d@example.com>", i);
		engine_rcpt(s, snap, more, strlen(more) + 10, NOW, v);
		if (refused(v)) { st = STAGE_RCPT; goto out; }
	}
	engine_rcpt(s, snap, rcpt, strlen(rcpt) + 10, NOW, v);
	if (refused(v)) { st = STAGE_RCPT; goto out; }
	if (t->headers != NULL) {
		char *h = xstrdup(t->headers), *save = NULL;

		for (char *n = strtok_r(h, " ", &save); n; n = strtok_r(NULL, " ", &save))
			engine_header(s, n, v);
		free(h);
		engine_eom(s, v);
		if (refused(v)) st = STAGE_EOM;
	}
out:
	free(longa);
	engine_session_free(&s);
	snapshot_free(&snap);
	policy_free(&p);
	return st;
}

static void
test_engine_table(void)
{
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct ecase *t = &cases[i];
		struct verdict v;
		enum engine_stage st = run_case(t, &v);
		int ok = st == t->stage;

		if (ok && t->code != NULL)
			ok = strcmp(v.code, t->code) == 0 && strcmp(v.dsn, t->dsn) == 0 &&
			    v.tag != NULL && strcmp(v.tag, t->tag) == 0 && (v.ban_seconds > 0) == t->ban;
		if (ok && t->code == NULL && t->ban == 0)
			ok = v.ban_seconds == 0;
		if (!ok) {
			fprintf(stderr, "\n  case \"%s\": stage %s, %s %s %s [%s] ban %lu; rule: %s\n",
			    t->name, engine_stage_name(st), v.code, v.dsn, v.text, v.tag ? v.tag : "-",
			    v.ban_seconds, v.rule);
			CU_FAIL("verdict differs");
		}
	}
}

static void
test_engine_relay_tricks(void)
{
	for (size_t i = 0; i < sizeof(relay_tricks) / sizeof(relay_tricks[0]); i++) {
		struct ecase t = { "trick", NULL, NULL, NULL, OUT, NULL, NULL, NULL, "<a@b.example>",
		    relay_tricks[i], 0, NULL, STAGE_RCPT, "550", "5.7.1", "relay", 0 };
		struct verdict v;

		if (run_case(&t, &v) != STAGE_RCPT || v.tag == NULL || strcmp(v.tag, "relay") != 0 ||
		    strcmp(v.code, "550") != 0) {
			fprintf(stderr, "\n  %s was not refused as relay\n", relay_tricks[i]);
			CU_FAIL("relay trick passed");
		}
	}
	for (size_t i = 0; i < sizeof(syntax_tricks) / sizeof(syntax_tricks[0]); i++) {
		struct ecase t = { "syntax", NULL, NULL, NULL, IN, NULL, NULL, NULL, "<a@b.example>",
		    syntax_tricks[i], 0, NULL, STAGE_RCPT, "501", "5.1.3", "bad-address", 0 };
		struct verdict v;

		if (run_case(&t, &v) != STAGE_RCPT || v.tag == NULL ||
		    strcmp(v.tag, "bad-address") != 0 || strcmp(v.code, "501") != 0 ||
		    strcmp(v.dsn, "5.1.3") != 0) {
			fprintf(stderr, "\n  %s was not refused as bad syntax: %s\n", syntax_tricks[i],
			    v.text);
			CU_FAIL("syntax trick passed");
		}
	}
	for (size_t i = 0; i < sizeof(local_forms) / sizeof(local_forms[0]); i++) {
		struct ecase t = { "local", NULL, NULL, NULL, OUT, NULL, NULL, NULL, "<a@b.example>",
		    local_forms[i], 0, NULL, STAGE_CLOSE, NULL, NULL, NULL, 0 };
		struct verdict v;

		if (run_case(&t, &v) != STAGE_CLOSE) {
			fprintf(stderr, "\n  %s was refused: %s\n", local_forms[i], v.text);
			CU_FAIL("local form refused");
		}
	}
}

static void
test_engine_reply_texts_are_clean(void)
{
	/* hostile bytes in an address never reach a reply text raw */
	struct ecase t = { "ctl", NULL, NULL, NULL, OUT, NULL, NULL, NULL, "<a@b.example>",
	    "<us\x01\x7f%er@other.org>", 0, NULL, STAGE_RCPT, "550", "5.7.1", "relay", 0 };
	struct verdict v;

	run_case(&t, &v);
	for (const char *p = v.text; *p; p++)
		CU_ASSERT_TRUE((unsigned char)*p >= 0x20 && (unsigned char)*p < 0x7f);
}

static void
test_engine_rset_clears_transaction(void)
{
	struct policy *p = policy_from("null_sender = reject_multi_rcpt\n");
	struct snapshot *snap = snapshot_new(list_from(NULL), list_from(NULL));
	struct engine_session *s = engine_session_new(p);
	struct ipaddr a;
	struct verdict v;

	CU_ASSERT_EQUAL(cidr_addr_parse(OUT, &a), 0);
	engine_connect(s, snap, &a, NULL, NOW, &v);
	engine_mail(s, snap, "<>", 14, NULL, NOW, &v);
	engine_rcpt(s, snap, "<a@example.com>", 25, NOW, &v);
	CU_ASSERT_EQUAL(v.action, VERDICT_CONTINUE);
	engine_abort(s);
	engine_mail(s, snap, "<x@b.example>", 25, NULL, NOW, &v);
	engine_rcpt(s, snap, "<a@example.com>", 25, NOW, &v);
	engine_rcpt(s, snap, "<b@example.com>", 25, NOW, &v);
	CU_ASSERT_EQUAL(v.action, VERDICT_CONTINUE);
	CU_ASSERT_EQUAL(engine_rcpt_count(s), 2);
	engine_session_free(&s);
	snapshot_free(&snap);
	policy_free(&p);
}

/* the long-command limit: where it applies, and what ESMTP parameters earn */
static void
test_engine_long_commands(void)
{
	static const struct {
		const char *name;
		enum engine_stage stage;	/* HELO, MAIL, RCPT: that call; else engine_long_command */
		const char *params;		/* engine_command_params() before, or NULL */
		size_t cmdlen;
		const char *tag;		/* NULL: not refused */
		int ban;
	} t[] = {
		{ "RCPT at the limit", STAGE_RCPT, NULL, 512, NULL, 0 },
		{ "RCPT one over", STAGE_RCPT, NULL, 513, "long-command", 1 },
		{ "Postfix DSN RCPT (523 octets) with NOTIFY and ORCPT", STAGE_RCPT,
		  "NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;user@example.com", 523, NULL, 0 },
		{ "RCPT with ORCPT: 507 more", STAGE_RCPT, "ORCPT=rfc822;u@example.com", 1019, NULL, 0 },
		{ "RCPT with ORCPT: past its 507", STAGE_RCPT, "ORCPT=rfc822;u@example.com", 1020,
		  "long-command", 1 },
		{ "RCPT with NOTIFY and ORCPT: 536 more", STAGE_RCPT,
		  "notify=never orcpt=rfc822;u@example.com", 1048, NULL, 0 },
		{ "RCPT with NOTIFY and ORCPT: past 536", STAGE_RCPT,
		  "NOTIFY=NEVER ORCPT=rfc822;u@example.com", 1049, "long-command", 1 },
		{ "RCPT: MAIL's ENVID earns nothing", STAGE_RCPT, "ENVID=abc", 600, "long-command", 1 },
		{ "MAIL with ENVID and RET: 116 more", STAGE_MAIL, "RET=HDRS ENVID=abc", 628, NULL, 0 },
		{ "MAIL with ENVID and RET: past 116", STAGE_MAIL, "RET=HDRS ENVID=abc", 629,
		  "long-command", 1 },
		{ "MAIL with SIZE: 26 more (RFC 1870)", STAGE_MAIL, "SIZE=1000", 538, NULL, 0 },
		{ "MAIL with AUTH=: 500 more (RFC 4954)", STAGE_MAIL, "AUTH=<>", 1012, NULL, 0 },
		{ "MAIL: RCPT's ORCPT earns nothing", STAGE_MAIL, "ORCPT=rfc822;x@y", 600, "long-command", 1 },
		{ "MAIL: an unknown parameter earns nothing", STAGE_MAIL, "XFOO=1", 513, "long-command", 1 },
		{ "a keyword inside a value earns nothing", STAGE_MAIL, "XFOO=ENVID=1", 600,
		  "long-command", 1 },
		{ "HELO one over", STAGE_HELO, NULL, 513, "long-command", 1 },
		{ "HELO: parameters earn nothing", STAGE_HELO, "SIZE=1", 530, "long-command", 1 },
		{ "over-long MAIL the door could not hold", STAGE_COMMAND + 100, NULL, 9000,
		  "long-command", 1 },
		{ "another line (NOOP, DATA...): refused, never banned", STAGE_COMMAND, NULL, 9000,
		  "long-line", 0 },
		{ "another line within the limit", STAGE_COMMAND, NULL, 400, NULL, 0 },
	};
	struct policy *p = policy_from(NULL);
	struct snapshot *snap = snapshot_new(list_from(NULL), list_from(NULL));
	struct ipaddr a;

	CU_ASSERT_EQUAL(cidr_addr_parse(OUT, &a), 0);
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		struct engine_session *s = engine_session_new(p);
		struct verdict v;
		int ok;

		engine_connect(s, snap, &a, NULL, NOW, &v);
		if (t[i].stage == STAGE_MAIL || t[i].stage == STAGE_RCPT)
			engine_mail(s, snap, "<a@b.example>", 30, NULL, NOW, &v);
		if (t[i].params != NULL)
			engine_command_params(s, t[i].params);
		if (t[i].stage == STAGE_HELO)
			engine_helo(s, snap, "c.example", t[i].cmdlen, NOW, &v);
		else if (t[i].stage == STAGE_MAIL)
			engine_mail(s, snap, "<a@b.example>", t[i].cmdlen, NULL, NOW, &v);
		else if (t[i].stage == STAGE_RCPT)
			engine_rcpt(s, snap, "<u@example.com>", t[i].cmdlen, NOW, &v);
		else
			engine_long_command(s, snap, t[i].stage == STAGE_COMMAND ? STAGE_COMMAND :
			    STAGE_MAIL, t[i].cmdlen, NOW, &v);
		ok = t[i].tag == NULL ? v.tag == NULL :
		    v.tag != NULL && strcmp(v.tag, t[i].tag) == 0 && strcmp(v.code, "500") == 0 &&
		    strcmp(v.dsn, "5.5.2") == 0;
		ok = ok && (v.ban_seconds > 0) == t[i].ban;
		if (!ok) {
			fprintf(stderr, "\n  case \"%s\": %s %s [%s] ban %lu; rule: %s\n", t[i].name,
			    v.code, v.text, v.tag ? v.tag : "-", v.ban_seconds, v.rule);
			CU_FAIL("long-command verdict differs");
		}
		engine_session_free(&s);
	}
	snapshot_free(&snap);
	policy_free(&p);
}

/* max_recipients counts accepted recipients only (Postfix's rule) */
static void
test_engine_refused_recipients_do_not_count(void)
{
	struct policy *p = policy_from(NULL);	/* max_recipients = 3 */
	struct snapshot *snap = snapshot_new(list_from(NULL), list_from(NULL));
	struct engine_session *s = engine_session_new(p);
	struct ipaddr a;
	struct verdict v;

	CU_ASSERT_EQUAL(cidr_addr_parse(IN, &a), 0);
	engine_connect(s, snap, &a, NULL, NOW, &v);
	engine_mail(s, snap, "<x@example.com>", 30, NULL, NOW, &v);
	for (int i = 0; i < 5; i++) {	/* the door refuses each: unknown user */
		engine_rcpt(s, snap, "<nobody@example.com>", 30, NOW, &v);
		CU_ASSERT_PTR_NULL(v.tag);
		engine_rcpt_refused(s);
	}
	engine_rcpt_refused(s);	/* twice for one recipient changes nothing */
	CU_ASSERT_EQUAL(engine_rcpt_count(s), 0);
	/* a relayed recipient refused downstream no longer makes it "relayed" */
	engine_rcpt(s, snap, "<u@other.org>", 30, NOW, &v);
	CU_ASSERT_PTR_NULL(v.tag);
	engine_rcpt_refused(s);
	for (int i = 0; i < 3; i++) {
		engine_rcpt(s, snap, "<a@example.com>", 30, NOW, &v);
		CU_ASSERT_PTR_NULL(v.tag);
	}
	CU_ASSERT_EQUAL(engine_rcpt_count(s), 3);
	engine_rcpt(s, snap, "<b@example.com>", 30, NOW, &v);
	CU_ASSERT_PTR_NOT_NULL_FATAL(v.tag);
	CU_ASSERT_STRING_EQUAL(v.tag, "max-rcpt");
	engine_rcpt_refused(s);	/* the engine's own refusal was never counted */
	CU_ASSERT_EQUAL(engine_rcpt_count(s), 3);
	engine_eom(s, &v);	/* no relayed recipient left: no required header */
	CU_ASSERT_PTR_NULL(v.tag);
	engine_session_free(&s);
	snapshot_free(&snap);
	policy_free(&p);
}

/* an AUTH identity never outlives its transaction or STARTTLS */
static void
test_engine_auth_does_not_carry_over(void)
{
	struct policy *p = policy_from(NULL);
	struct snapshot *snap = snapshot_new(list_from(NULL), list_from(NULL));
	struct ipaddr a;
	struct verdict v;

	CU_ASSERT_EQUAL(cidr_addr_parse(OUT, &a), 0);
	for (int starttls = 0; starttls < 2; starttls++) {
		struct engine_session *s = engine_session_new(p);

		engine_connect(s, snap, &a, NULL, NOW, &v);
		engine_helo(s, snap, "c.example", 20, NOW, &v);
		engine_mail(s, snap, "<x@b.example>", 30, "alice", NOW, &v);
		engine_rcpt(s, snap, "<u@other.org>", 30, NOW, &v);
		CU_ASSERT_PTR_NULL(v.tag);	/* authenticated: relays */
		engine_abort(s);		/* RSET */
		if (starttls)
			engine_starttls(s);
		engine_helo(s, snap, "c.example", 20, NOW, &v);
		engine_mail(s, snap, "<x@b.example>", 30, NULL, NOW, &v);
		engine_rcpt(s, snap, "<u@other.org>", 30, NOW, &v);
		CU_ASSERT_PTR_NOT_NULL(v.tag);
		if (v.tag == NULL || strcmp(v.tag, "relay") != 0) {
			fprintf(stderr, "\n  %s: a MAIL without AUTH relayed\n",
			    starttls ? "after STARTTLS" : "after RSET");
			CU_FAIL("AUTH identity carried over");
		}
		engine_session_free(&s);
	}
	snapshot_free(&snap);
	policy_free(&p);
}

static void
test_policy_errors(void)
{
	static const struct { const char *conf, *want; } bad[] = {
		{ "relay_networks = 10.0.0.1/8\n", "test:1: relay_networks: \"10.0.0.1/8\": host bits set" },
		{ "relay_networks = banana\n", "relay_networks: \"banana\"" },
		{ "mydomains = exa mple..com\n", "mydomains: \"mple..com\" is not a domain name" },
		{ "relay_require_headers = From Reply:To\n", "\"Reply:To\" is not a header name" },
		{ "postmaster_address = root\n", "test:1: postmaster_address: \"root\" is not a "
		  "qualified address: need user@domain" },
		{ "postmaster_address = pm@example.com(x)\n", "postmaster_address: \"pm@example.com(x)\" "
		  "is not a qualified address: comment in the address" },
		{ "postmaster_address = <>\n", "need user@domain" },
		{ "geoip_database = /nonexistent/GeoIP.mmdb\n", "test:1: geoip_database: "
		  "/nonexistent/GeoIP.mmdb: No such file or directory" },
		{ "geoip_database = /etc/passwd\n", "geoip_database: /etc/passwd: not a MaxMind DB file" },
		{ "geoip_database = /etc/passwd\ngeoip_country_field = country..iso_code\n",
		  "test:2: geoip_country_field: \"country..iso_code\" is not a path" },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct conf *c = conf_new();
		struct policy *p = NULL;
		const char *err = NULL;

		int rc;

		CU_ASSERT_EQUAL(conf_load_string(c, "test", bad[i].conf, &err), 0);
		/* the config reader or the policy: refused either way */
		rc = conf_finish(c, &err);
		if (rc == 0)
			rc = policy_new(c, &p, &err);
		CU_ASSERT_EQUAL(rc, -1);
		if (err == NULL || strstr(err, bad[i].want) == NULL) {
			fprintf(stderr, "\n  %s: got \"%s\"\n", bad[i].conf, err ? err : "");
			CU_FAIL("policy error differs");
		}
		conf_free(&c);
	}
}

/* UTF-8 addresses: only in a transaction the MTA marked SMTPUTF8 (milter door) */
static void
test_engine_smtputf8(void)
{
	struct policy *p = policy_from(NULL);
	struct snapshot *snap = snapshot_new(list_from(NULL), list_from(NULL));
	struct engine_session *s = engine_session_new(p);
	struct ipaddr addr;
	struct verdict v;
	const char *from = "<j\xc3\xb6rg@b.example>", *to = "<m\xc3\xbcller@example.com>";

	CU_ASSERT_FATAL(cidr_addr_parse(OUT, &addr) == 0);
	engine_connect(s, snap, &addr, NULL, NOW, &v);
	engine_mail(s, snap, from, 40, NULL, NOW, &v);
	CU_ASSERT(v.action == VERDICT_REJECT && strcmp(v.code, "501") == 0);
	engine_mail_smtputf8(s);
	engine_mail(s, snap, from, 40, NULL, NOW, &v);
	CU_ASSERT(v.action == VERDICT_CONTINUE);
	engine_rcpt(s, snap, to, 40, NOW, &v);
	CU_ASSERT(v.action == VERDICT_CONTINUE);
	engine_abort(s);
	engine_mail(s, snap, "<a@b.example>", 40, NULL, NOW, &v);	/* one transaction only */
	engine_rcpt(s, snap, to, 40, NOW, &v);
	CU_ASSERT(v.action == VERDICT_REJECT && strcmp(v.code, "501") == 0);
	engine_session_free(&s);
	snapshot_free(&snap);
	policy_free(&p);
}

/*
 * country:XX entries, with the country as GeoIP would give it: the reply,
 * the tag, and the README's order (accept list first, then the kill list;
 * within a list address, host, then country).
 */
static void
test_engine_country(void)
{
	static const struct {
		const char *name, *kill, *accept, *client, *country, *rcpt;
		enum engine_stage stage;	/* first refusal; STAGE_CLOSE: none */
		const char *tag, *text;
	} rows[] = {
		{ "killed country refused at MAIL", "country:XX", NULL, OUT, "XX", "<u@example.com>",
		  STAGE_MAIL, "kill-country",
		  "Client host [198.51.100.7] (country XX) is on the kill list" },
		{ "country code case does not matter", "country:xx", NULL, OUT, "xx", "<u@example.com>",
		  STAGE_MAIL, "kill-country", NULL },
		{ "other country passes", "country:XX", NULL, OUT, "YY", "<u@example.com>",
		  STAGE_CLOSE, NULL, NULL },
		{ "unknown country passes", "country:XX", NULL, OUT, NULL, "<u@example.com>",
		  STAGE_CLOSE, NULL, NULL },
		{ "IPv6 client's country", "country:XX", NULL, "2001:db8:1::5", "XX",
		  "<u@example.com>", STAGE_MAIL, "kill-country",
		  "Client host [2001:db8:1::5] (country XX) is on the kill list" },
		{ "address entry named before the country", OUT "|country:XX", NULL, OUT, "XX",
		  "<u@example.com>", STAGE_MAIL, "kill-ip", NULL },
		{ "accept-listed address beats killed country", "country:XX", OUT, OUT, "XX",
		  "<u@example.com>", STAGE_CLOSE, NULL, NULL },
		{ "accept-listed country beats killed address", OUT, "country:XX", OUT, "XX",
		  "<u@example.com>", STAGE_CLOSE, NULL, NULL },
		{ "accept-listed country may relay", NULL, "country:XX", OUT, "XX", "<u@other.org>",
		  STAGE_CLOSE, NULL, NULL },
		{ "other country may not relay", NULL, "country:XX", OUT, "YY", "<u@other.org>",
		  STAGE_RCPT, "relay", NULL },
	};
	struct policy *p = policy_from(NULL);

	for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		struct snapshot *snap = snapshot_new(list_from(rows[i].kill), list_from(rows[i].accept));
		struct engine_session *s = engine_session_new(p);
		enum engine_stage st = STAGE_CLOSE;
		struct ipaddr addr;
		struct verdict v, kv;
		int killed;

		CU_ASSERT_FATAL(cidr_addr_parse(rows[i].client, &addr) == 0);
		engine_session_set_country(s, rows[i].country);
		engine_connect(s, snap, &addr, NULL, NOW, &v);
		killed = engine_client_is_killed(s, snap, NOW, &kv);
		engine_mail(s, snap, "<a@b.example>", 20, NULL, NOW, &v);
		if (refused(&v)) {
			st = STAGE_MAIL;
		} else {
			engine_rcpt(s, snap, rows[i].rcpt, 20, NOW, &v);
			if (refused(&v))
				st = STAGE_RCPT;
		}
		if (st != rows[i].stage || (rows[i].tag != NULL && (v.tag == NULL ||
		    strcmp(v.tag, rows[i].tag) != 0)) ||
		    (rows[i].text != NULL && strcmp(v.text, rows[i].text) != 0) ||
		    killed != (st == STAGE_MAIL) ||
		    (killed && strcmp(kv.tag, rows[i].tag) != 0)) {
			fprintf(stderr, "\n  %s: stage %s tag %s text \"%s\" killed %d\n", rows[i].name,
			    engine_stage_name(st), v.tag ? v.tag : "-", v.text, killed);
			CU_FAIL("country verdict differs");
		}
		if (rows[i].country != NULL) {
			CU_ASSERT_PTR_NOT_NULL(engine_session_country(s));
		} else {
			CU_ASSERT_PTR_NULL(engine_session_country(s));
		}
		engine_session_free(&s);
		snapshot_free(&snap);
	}
	policy_free(&p);
}

static CU_TestInfo tests[] = {
	{ "every verdict (table)", test_engine_table },
	{ "SMTPUTF8 transactions take UTF-8 addresses", test_engine_smtputf8 },
	{ "relay tricks refused, local forms accepted", test_engine_relay_tricks },
	{ "reply texts are printable", test_engine_reply_texts_are_clean },
	{ "RSET clears the transaction", test_engine_rset_clears_transaction },
	{ "long commands: where the limit applies, what parameters earn", test_engine_long_commands },
	{ "refused recipients do not count toward max_recipients",
	  test_engine_refused_recipients_do_not_count },
	{ "AUTH does not carry over to the next MAIL or past STARTTLS",
	  test_engine_auth_does_not_carry_over },
	{ "policy: bad settings named", test_policy_errors },
	{ "country:XX entries and the policy order", test_engine_country },
	CU_TEST_INFO_NULL,
};

void
test_engine_register(void)
{
	unit_suite("engine", tests);
}
