/*
 * policy door: the Postfix policy protocol parser (table-driven, each input
 * fed whole and then one byte at a time, which must agree) and the door's
 * answers (a request through the engine -> the action Postfix gets).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/conf.h"
#include "common/xmalloc.h"
#include "policy/policy_check.h"
#include "policy/policy_proto.h"
#include "tests/unit/unit.h"

#define NOW 1800000000LL
#define FULL "request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n" \
	"client_address=198.51.100.7\nclient_name=unknown\nreverse_client_name=unknown\n" \
	"helo_name=mx.example.org\nsender=a@example.org\nrecipient=u@example.com\n" \
	"recipient_count=0\nqueue_id=\ninstance=123.456.7\nsize=0\netrn_domain=\n" \
	"stress=\nsasl_method=\nsasl_username=\nsasl_sender=\nccert_subject=\n" \
	"ccert_issuer=\nccert_fingerprint=\nencryption_protocol=\nencryption_cipher=\n" \
	"encryption_keysize=0\npolicy_context=\ncompatibility_level=3.6\n"
#define MIN "request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=192.0.2.1\n"

struct pcase {
	const char *name;
	const char *in;
	enum policy_feed st;	/* of the first request */
	const char *error;	/* substring of req->error; NULL: well formed */
	enum policy_state state;
	const char *sender;	/* expected sender value, NULL: not checked */
	int then_ok;		/* the rest of the input holds a second, clean request */
};

static char *
repeat(char c, size_t n)
{
	char *s = xmalloc(n + 1);

	memset(s, c, n);
	s[n] = '\0';
	return s;
}

static const struct pcase pcases[] = {
	{ "a full Postfix 3.7 request", FULL "\n", POLICY_FEED_REQUEST, NULL, PS_RCPT,
	  "a@example.org", 0 },
	{ "CRLF line ends", "request=smtpd_access_policy\r\nprotocol_state=MAIL\r\n"
	  "client_address=192.0.2.1\r\nsender=x@y.example\r\n\r\n", POLICY_FEED_REQUEST, NULL,
	  PS_MAIL, "x@y.example", 0 },
	{ "null sender is an empty value", MIN "sender=\n\n", POLICY_FEED_REQUEST, NULL, PS_RCPT,
	  "", 0 },
	{ "a value may hold '='", MIN "sender=a=b@c.example\n\n", POLICY_FEED_REQUEST, NULL,
	  PS_RCPT, "a=b@c.example", 0 },
	{ "unknown attributes are ignored", MIN "future_thing=1\nx-y_z=\n\n", POLICY_FEED_REQUEST,
	  NULL, PS_RCPT, NULL, 0 },
	{ "every state", "request=smtpd_access_policy\nprotocol_state=END-OF-MESSAGE\n"
	  "client_address=192.0.2.1\n\n", POLICY_FEED_REQUEST, NULL, PS_EOM, NULL, 0 },
	{ "EHLO state", "request=smtpd_access_policy\nprotocol_state=EHLO\n"
	  "client_address=192.0.2.1\n\n", POLICY_FEED_REQUEST, NULL, PS_HELO, NULL, 0 },
	{ "a state newer than us", "request=smtpd_access_policy\nprotocol_state=BDAT\n"
	  "client_address=192.0.2.1\n\n", POLICY_FEED_REQUEST, NULL, PS_OTHER, NULL, 0 },
	{ "two requests back to back", MIN "\n" MIN "\n", POLICY_FEED_REQUEST, NULL, PS_RCPT,
	  NULL, 1 },
	{ "no empty line yet", MIN, POLICY_FEED_MORE, NULL, PS_RCPT, NULL, 0 },
	{ "empty request", "\n", POLICY_FEED_REQUEST, "empty request", PS_OTHER, NULL, 0 },
	{ "garbage line", MIN "hello there\n\n", POLICY_FEED_REQUEST, "not name=value",
	  PS_RCPT, NULL, 0 },
	{ "garbage, then a clean request", "GET / HTTP/1.0\n\n" MIN "\n", POLICY_FEED_REQUEST,
	  "not name=value", PS_OTHER, NULL, 1 },
	{ "empty name", MIN "=x\n\n", POLICY_FEED_REQUEST, "bad attribute name", PS_RCPT, NULL, 0 },
	{ "space in a name", MIN "a b=x\n\n", POLICY_FEED_REQUEST, "bad attribute name", PS_RCPT,
	  NULL, 0 },
	{ "NUL byte", MIN "sender=a\0b\n\n", POLICY_FEED_REQUEST, "NUL", PS_RCPT, NULL, 0 },
	{ "attribute given twice", MIN "sender=a@b.example\nsender=c@d.example\n\n",
	  POLICY_FEED_REQUEST, "twice", PS_RCPT, NULL, 0 },
	{ "no request attribute", "protocol_state=RCPT\nclient_address=192.0.2.1\n\n",
	  POLICY_FEED_REQUEST, "no request attribute", PS_RCPT, NULL, 0 },
	{ "unknown request type", "request=junk_mail_please\nprotocol_state=RCPT\n"
	  "client_address=192.0.2.1\n\n", POLICY_FEED_REQUEST, "unknown request type", PS_RCPT,
	  NULL, 0 },
	{ "no protocol_state", "request=smtpd_access_policy\nclient_address=192.0.2.1\n\n",
	  POLICY_FEED_REQUEST, "no protocol_state", PS_OTHER, NULL, 0 },
	{ "no client_address", "request=smtpd_access_policy\nprotocol_state=RCPT\n\n",
	  POLICY_FEED_REQUEST, "no client_address", PS_RCPT, NULL, 0 },
	/* rows with a NULL input are built at run time */
	{ "over-long line: answered, stays in sync", NULL, POLICY_FEED_REQUEST,
	  "line too long", PS_RCPT, NULL, 1 },
	{ "request too long: fatal", NULL, POLICY_FEED_FATAL, "request too long", PS_OTHER,
	  NULL, 0 },
	{ "a line of exactly the limit", NULL, POLICY_FEED_REQUEST, NULL, PS_RCPT, NULL, 0 },
};

static char *
build_input(size_t i, size_t *len_r)
{
	char *s, *big;

	if (pcases[i].in != NULL) {
		/* the NUL row: count through the final "\n\n" */
		const char *in = pcases[i].in;
		size_t n = strlen(in);

		if (strstr(pcases[i].name, "NUL") != NULL)
			n += strlen(in + n + 1) + 1;
		s = xmalloc(n + 1);
		memcpy(s, in, n + 1);
		*len_r = n;
		return s;
	}
	if (strstr(pcases[i].name, "over-long") != NULL) {
		big = repeat('x', MAX_POLICY_LINE + 100);
		s = xasprintf(MIN "sender=%s\nrecipient=u@example.com\n\n" MIN "\n", big);
	} else if (strstr(pcases[i].name, "too long") != NULL) {
		big = repeat('y', 100);
		s = xmalloc(MAX_POLICY_REQUEST + 200);
		s[0] = '\0';
		while (strlen(s) < MAX_POLICY_REQUEST + 10)
			strcat(s, "x_attr=yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\n");
	} else {
		big = repeat('z', MAX_POLICY_LINE - strlen("sender="));
		s = xasprintf(MIN "sender=%s\n\n", big);
	}
	free(big);
	*len_r = strlen(s);
	return s;
}

/* feed all of in, step bytes at a time; first result in *st_r, req copied */
static size_t
feed(struct policy_parser *p, const char *in, size_t len, size_t step, enum policy_feed *st_r,
    const struct policy_request **req_r)
{
	size_t off = 0;

	*st_r = POLICY_FEED_MORE;
	while (off < len) {
		size_t n = len - off < step ? len - off : step, used = 0;

		*st_r = policy_parser_feed(p, in + off, n, &used, req_r);
		off += used;
		if (*st_r != POLICY_FEED_MORE)
			break;
	}
	return off;
}

static int
check_req(size_t i, enum policy_feed st, const struct policy_request *r)
{
	const struct pcase *t = &pcases[i];

	if (st != t->st)
		return 0;
	if (st == POLICY_FEED_MORE)
		return 1;
	if (t->error == NULL ? r->error != NULL :
	    (r->error == NULL || strstr(r->error, t->error) == NULL))
		return 0;
	if (r->state != t->state)
		return 0;
	if (t->sender != NULL && (r->attr[PA_SENDER] == NULL || strcmp(r->attr[PA_SENDER], t->sender)))
		return 0;
	return 1;
}

static void
test_policy_parser_table(void)
{
	static const size_t steps[] = { (size_t)-1, 1, 7 };

	for (size_t i = 0; i < sizeof(pcases) / sizeof(pcases[0]); i++) {
		size_t len;
		char *in = build_input(i, &len);

		for (size_t k = 0; k < sizeof(steps) / sizeof(steps[0]); k++) {
			struct policy_parser *p = xmalloc(sizeof(*p));
			const struct policy_request *r = NULL;
			enum policy_feed st;
			size_t off;

			policy_parser_init(p);
			off = feed(p, in, len, steps[k], &st, &r);
			if (!check_req(i, st, r)) {
				fprintf(stderr, "\n  case \"%s\" (step %zu): feed %d error %s state %s\n",
				    pcases[i].name, steps[k], (int)st, r && r->error ? r->error : "-",
				    r ? policy_state_name(r->state) : "-");
				CU_FAIL("request differs");
			}
			if (pcases[i].then_ok) {
				off += feed(p, in + off, len - off, steps[k], &st, &r);
				if (st != POLICY_FEED_REQUEST || r->error != NULL || off != len) {
					fprintf(stderr, "\n  case \"%s\" (step %zu): second request %d %s\n",
					    pcases[i].name, steps[k], (int)st, r->error ? r->error : "-");
					CU_FAIL("lost sync");
				}
			}
			free(p);
		}
		free(in);
	}
}

static void
test_policy_answer_format(void)
{
	char buf[MAX_POLICY_ANSWER], small[16];
	char *big = repeat('t', 3 * MAX_POLICY_ANSWER);

	CU_ASSERT_EQUAL(policy_answer_format(buf, sizeof(buf), "DUNNO"), 14);
	CU_ASSERT_STRING_EQUAL(buf, "action=DUNNO\n\n");
	/* a newline in the text would end the answer early: never */
	policy_answer_format(buf, sizeof(buf), "550 5.7.1 a\nb\rc\x80");
	CU_ASSERT_STRING_EQUAL(buf, "action=550 5.7.1 a?b?c?\n\n");
	CU_ASSERT(policy_answer_format(buf, sizeof(buf), big) < sizeof(buf));
	CU_ASSERT(strcmp(buf + strlen(buf) - 2, "\n\n") == 0);
	policy_answer_format(small, sizeof(small), "REJECT long text");
	CU_ASSERT_STRING_EQUAL(small, "action=REJECT\n\n");
	CU_ASSERT_EQUAL(strlen(small), 15);
	free(big);
}

/* ---- answers ---- */

struct acase {
	const char *name;
	const char *conf;	/* added to the base config */
	const char *kill, *accept;	/* list-file lines separated by '|' */
	const char *state, *client, *client_name, *sender, *rcpt, *sasl;
	const char *action;	/* expected answer, a prefix */
	int repeat;		/* ask this many times: every answer the same */
};

#define OUT "198.51.100.7"
#define ACONF "mydomains = example.com\nrelay_networks = 192.0.2.0/24\n"

static const struct acase acases[] = {
	{ "outside client, foreign recipient: Postfix decides", NULL, NULL, NULL, "RCPT", OUT,
	  "unknown", "a@b.example", "u@other.org", NULL, "DUNNO", 0 },
	{ "outside client, local recipient", NULL, NULL, NULL, "RCPT", OUT, "unknown",
	  "a@b.example", "u@example.com", NULL, "DUNNO", 0 },
	{ "relay_networks is Postfix's mynetworks' job", NULL, NULL, NULL, "RCPT", "192.0.2.9",
	  "unknown", "a@b.example", "u@other.org", NULL, "DUNNO", 0 },
	{ "accept-listed client may relay", NULL, NULL, OUT, "RCPT", OUT, "unknown",
	  "a@b.example", "u@other.org", NULL, "OK", 0 },
	{ "accept-listed CIDR, IPv6", NULL, NULL, "2001:db8::/32", "RCPT", "2001:db8::5",
	  "unknown", "a@b.example", "u@other.org", NULL, "OK", 0 },
	{ "accept-listed verified host name", NULL, NULL, "host:mx.partner.example", "RCPT", OUT,
	  "mx.partner.example", "a@b.example", "u@other.org", NULL, "OK", 0 },
	{ "unverified name is no name", NULL, NULL, "host:mx.partner.example", "RCPT", OUT,
	  "unknown", "a@b.example", "u@other.org", NULL, "DUNNO", 0 },
	{ "accept-listed sender never grants relay", NULL, NULL, "a@b.example", "RCPT", OUT,
	  "unknown", "a@b.example", "u@other.org", NULL, "DUNNO", 0 },
	{ "kill-listed client at RCPT", NULL, OUT, NULL, "RCPT", OUT, "unknown", "a@b.example",
	  "u@example.com", NULL, "550 5.7.1 Client host [" OUT "] is on the kill list", 0 },
	{ "kill-listed CIDR, foreign recipient", NULL, "198.51.100.0/24", NULL, "RCPT", OUT,
	  "unknown", "a@b.example", "u@other.org", NULL, "550 5.7.1 Client host [", 0 },
	{ "kill-listed host name", NULL, "host:.dyn.example", NULL, "RCPT", OUT,
	  "x1.dyn.example", "a@b.example", "u@example.com", NULL,
	  "550 5.7.1 Client host x1.dyn.example[" OUT "] is on the kill list", 0 },
	{ "kill-listed sender", NULL, "spam@bad.example", NULL, "RCPT", OUT, "unknown",
	  "Spam@BAD.example", "u@example.com", NULL,
	  "550 5.7.1 <spam@bad.example>: Sender address is on the kill list", 0 },
	{ "kill-listed sender domain at MAIL", NULL, "@bad.example", NULL, "MAIL", OUT, "unknown",
	  "x@bad.example", NULL, NULL, "550 5.7.1 Sender domain bad.example is on the kill list", 0 },
	{ "kill-listed sender, accept-listed client", NULL, "@bad.example", OUT, "RCPT", OUT,
	  "unknown", "x@bad.example", "u@other.org", NULL, "OK", 0 },
	{ "kill-listed client, accept-listed sender", NULL, OUT, "a@b.example", "RCPT", OUT,
	  "unknown", "a@b.example", "u@example.com", NULL, "DUNNO", 0 },
	{ "kill-listed client at CONNECT", NULL, OUT, NULL, "CONNECT", OUT, "unknown", NULL,
	  NULL, NULL, "554 5.7.1 Client host", 0 },
	{ "kill-listed client at VRFY", NULL, OUT, NULL, "VRFY", OUT, "unknown", NULL,
	  "u@example.com", NULL, "554 5.7.1", 0 },
	{ "clean client at CONNECT", NULL, NULL, NULL, "CONNECT", OUT, "unknown", NULL, NULL,
	  NULL, "DUNNO", 0 },
	{ "kill-listed sender at DATA", NULL, "spam@bad.example", NULL, "DATA", OUT, "unknown",
	  "spam@bad.example", NULL, NULL, "550 5.7.1 <spam@bad.example>", 0 },
	{ "null_sender = reject", "null_sender = reject\n", NULL, NULL, "RCPT", OUT, "unknown",
	  "", "u@example.com", NULL, "550 5.7.1 Null sender <> is not accepted here", 0 },
	{ "policy_mode = warn refuses nothing", "policy_mode = warn\n", OUT, NULL, "RCPT", OUT,
	  "unknown", "a@b.example", "u@example.com", NULL, "DUNNO", 0 },
	{ "no usable client address", NULL, OUT, NULL, "RCPT", "unknown", "unknown", "a@b.example",
	  "u@example.com", NULL, "DUNNO", 0 },
	{ "SASL users are Postfix's permit_sasl_authenticated", NULL, NULL, NULL, "RCPT", OUT,
	  "unknown", "a@b.example", "u@other.org", "alice", "DUNNO", 0 },
	/* the milter counts; the door never does (one request per recipient) */
	{ "rate limit and recipient count stay in the milter",
	  "relay_rate_limit = 1/1h\nmax_recipients = 1\nnull_sender = reject_multi_rcpt\n",
	  NULL, OUT, "RCPT", OUT, "unknown", "", "u@other.org", NULL, "OK", 5 },
	{ "a state newer than this code: client checks", NULL, OUT, NULL, "BDAT", OUT, "unknown",
	  NULL, NULL, NULL, "554 5.7.1", 0 },
};

static struct listset *
list_from(const char *spec)
{
	struct entry_vec v = { 0 };
	struct listset *l;

	if (spec != NULL) {
		char *copy = xstrdup(spec), *save = NULL;

		for (char *it = strtok_r(copy, "|", &save); it; it = strtok_r(NULL, "|", &save)) {
			struct list_entry e;
			const char *err;

			if (listentry_parse_line(it, &e, &err) < 0) {
				fprintf(stderr, "bad test entry %s: %s\n", it, err);
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
	char *text = xasprintf(ACONF "%s", extra ? extra : "");

	if (conf_load_string(c, "test", text, &err) < 0 || conf_finish(c, &err) < 0 ||
	    policy_new(c, &p, &err) < 0) {
		fprintf(stderr, "bad test config: %s\n", err);
		abort();
	}
	conf_free(&c);
	free(text);
	return p;
}

static void
test_policy_answers(void)
{
	for (size_t i = 0; i < sizeof(acases) / sizeof(acases[0]); i++) {
		const struct acase *t = &acases[i];
		struct policy *pol = policy_from(t->conf);
		struct snapshot *snap = snapshot_new(list_from(t->kill), list_from(t->accept));
		char *text = xasprintf("request=smtpd_access_policy\nprotocol_state=%s\n"
		    "client_address=%s\nclient_name=%s\nhelo_name=client.example\n%s%s%s%s%s%s"
		    "sasl_username=%s\n\n", t->state, t->client, t->client_name,
		    t->sender ? "sender=" : "", t->sender ? t->sender : "", t->sender ? "\n" : "",
		    t->rcpt ? "recipient=" : "", t->rcpt ? t->rcpt : "", t->rcpt ? "\n" : "",
		    t->sasl ? t->sasl : "");
		struct policy_parser *p = xmalloc(sizeof(*p));
		int n = t->repeat > 0 ? t->repeat : 1;

		for (int k = 0; k < n; k++) {
			const struct policy_request *r;
			char action[MAX_POLICY_ACTION];
			struct verdict v;
			size_t used;

			policy_parser_init(p);
			if (policy_parser_feed(p, text, strlen(text), &used, &r) != POLICY_FEED_REQUEST ||
			    r->error != NULL) {
				fprintf(stderr, "\n  case \"%s\": bad request %s\n", t->name,
				    r->error ? r->error : "");
				CU_FAIL("request not parsed");
				break;
			}
			policy_check(r, pol, snap, NOW, action, sizeof(action), &v, NULL);
			if (strncmp(action, t->action, strlen(t->action)) != 0) {
				fprintf(stderr, "\n  case \"%s\" (ask %d): action \"%s\", expected \"%s\"; "
				    "rule: %s\n", t->name, k + 1, action, t->action, v.rule);
				CU_FAIL("answer differs");
				break;
			}
		}
		free(p);
		free(text);
		snapshot_free(&snap);
		policy_free(&pol);
	}
}

static void
test_policy_malformed_answer(void)
{
	char action[MAX_POLICY_ACTION], out[MAX_POLICY_ANSWER];

	policy_check_malformed("unknown request type", action, sizeof(action));
	policy_answer_format(out, sizeof(out), action);
	CU_ASSERT_STRING_EQUAL(out, "action=DEFER_IF_PERMIT Policy request not understood "
	    "(unknown request type)\n\n");
}

static CU_TestInfo tests[] = {
	{ "parser table, whole and piecewise", test_policy_parser_table },
	{ "answer formatting", test_policy_answer_format },
	{ "answers through the engine", test_policy_answers },
	{ "answer to a malformed request", test_policy_malformed_answer },
	{ NULL, NULL },
};

void
test_policy_door_register(void)
{
	unit_suite("policy_door", tests);
}
