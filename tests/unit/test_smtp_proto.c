/*
 * smtp_proto: golden dialogues. Each row feeds client bytes (split at every
 * '|' so a command can arrive in pieces) and names the replies, in order,
 * that the server must give; delivery is simulated.
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "common/conf.h"
#include "common/stats.h"
#include "common/xmalloc.h"
#include "smtp-gateway/smtp_conf.h"
#include "smtp-gateway/smtp_proto.h"
#include "tests/unit/fixture.h"
#include "tests/unit/unit.h"

struct pcase {
	const char *name;
	const char *conf;
	const char *kill;
	const char *client;
	const char *input;	/* '|' splits the writes */
	const char *want;	/* reply codes, space separated; "." ends at close */
	const char *body;	/* expected delivered data, or NULL */
};

/* every login is a user, named in lower case (as the users file names it) */
static int
lower_user(void *arg, const char *login, struct sasl_user *r)
{
	size_t i;

	(void)arg;
	for (i = 0; login[i] && i + 1 < sizeof(r->name); i++)
		r->name[i] = (char)tolower((unsigned char)login[i]);
	r->name[i] = '\0';
	return 1;
}

static const struct sasl_callbacks lower_users = {
	lower_user, fixture_no_password, fixture_no_cram, NULL
};

static int
user_resolve(void *arg, const char *local, const char *domain, char *canon_r)
{
	(void)arg;
	if (strcasecmp(local, "alice") != 0 || strcmp(domain, "example.com") != 0)
		return 0;
	strcpy(canon_r, "alice@example.com");
	return 1;
}

#define EHLO "EHLO c.example\r\n"
#define N10 "nnnnnnnnnn"
#define N100 N10 N10 N10 N10 N10 N10 N10 N10 N10 N10
#define Z10 "0000000000"
#define Z100 Z10 Z10 Z10 Z10 Z10 Z10 Z10 Z10 Z10 Z10
#define TX "MAIL FROM:<s@o.example>\r\n|RCPT TO:<alice@example.com>\r\n|DATA\r\n|"

static const struct pcase cases[] = {
	{ "greeting and QUIT", NULL, NULL, "198.51.100.1", "QUIT\r\n", "220 221 .", NULL },
	{ "EHLO advertises", NULL, NULL, "198.51.100.1", EHLO, "220 250", NULL },
	{ "a message, dot-stuffing removed", NULL, NULL, "198.51.100.1",
	  EHLO "|" TX "Subject: x\r\n\r\n..dot\r\nline\r\n.\r\n|QUIT\r\n",
	  "220 250 250 250 354 250 221 .", "Subject: x\r\n\r\n.dot\r\nline\r\n" },
	{ "command split in pieces", NULL, NULL, "198.51.100.1", "EH|LO c.exa|mple\r|\n|NOOP\r\n",
	  "220 250 250", NULL },
	{ "final dot split across writes", NULL, NULL, "198.51.100.1",
	  EHLO "|" TX "x\r\n|.|\r|\n", "220 250 250 250 354 250", "x\r\n" },
	{ "MAIL before HELO", NULL, NULL, "198.51.100.1", "MAIL FROM:<a@b.example>\r\n", "220 503", NULL },
	{ "RCPT before MAIL", NULL, NULL, "198.51.100.1", EHLO "|RCPT TO:<alice@example.com>\r\n",
	  "220 250 503", NULL },
	{ "DATA without recipients", NULL, NULL, "198.51.100.1",
	  EHLO "|MAIL FROM:<a@b.example>\r\n|DATA\r\n", "220 250 250 554", NULL },
	{ "unknown user", NULL, NULL, "198.51.100.1",
	  EHLO "|MAIL FROM:<a@b.example>\r\n|RCPT TO:<bob@example.com>\r\n", "220 250 250 550", NULL },
	{ "relay denied, same code as the milter", NULL, NULL, "198.51.100.1",
	  EHLO "|MAIL FROM:<a@b.example>\r\n|RCPT TO:<u@other.example>\r\n", "220 250 250 550", NULL },
	{ "kill-listed client refused at connect", NULL, "198.51.100.1", "198.51.100.1",
	  EHLO, "554 .", NULL },
	{ "kill-listed sender", NULL, "@bad.example", "198.51.100.1",
	  EHLO "|MAIL FROM:<x@bad.example>\r\n", "220 250 550", NULL },
	{ "VRFY and EXPN disabled", NULL, NULL, "198.51.100.1", EHLO "|VRFY alice\r\n|EXPN list\r\n",
	  "220 250 502 502", NULL },
	{ "unknown command", NULL, NULL, "198.51.100.1", "FOO\r\n", "220 502", NULL },
	{ "syntax errors", NULL, NULL, "198.51.100.1",
	  EHLO "|MAIL FROM:a@b.example\r\n|MAIL FROM:<a@b.example> FOO=1\r\n|HELO\r\n",
	  "220 250 501 555 501", NULL },
	{ "declared SIZE over the limit", "message_size_limit = 1000\n", NULL, "198.51.100.1",
	  EHLO "|MAIL FROM:<a@b.example> SIZE=5000\r\n", "220 250 552", NULL },
	{ "streamed size over the limit", "message_size_limit = 10\n", NULL, "198.51.100.1",
	  EHLO "|" TX "0123456789abcdef\r\n.\r\n|NOOP\r\n", "220 250 250 250 354 552 250", NULL },
	{ "pipelining before EHLO refused", NULL, NULL, "198.51.100.1",
	  "HELO c.example\r\nMAIL FROM:<a@b.example>\r\n", "220 554 .", NULL },
	{ "EHLO then a pipelined transaction", NULL, NULL, "198.51.100.1",
	  EHLO "|MAIL FROM:<s@o.example>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n|x\r\n.\r\nQUIT\r\n",
	  "220 250 250 250 354 250 221 .", "x\r\n" },
	{ "bare LF in DATA refused", NULL, NULL, "198.51.100.1",
	  EHLO "|" TX "a\nb\r\n.\r\n", "220 250 250 250 354 550", NULL },
	{ "bare CR in DATA refused", NULL, NULL, "198.51.100.1",
	  EHLO "|" TX "a\rb\r\n.\r\n", "220 250 250 250 354 550", NULL },
	{ "<LF>.<LF> does not end DATA (smuggling)", NULL, NULL, "198.51.100.1",
	  EHLO "|" TX "a\r\n\n.\nMAIL FROM:<evil@x.example>\r\nRCPT TO:<alice@example.com>\r\n\r\n.\r\n",
	  "220 250 250 250 354 550", NULL },
	{ "<CR><LF>.<LF> does not end DATA (smuggling)", NULL, NULL, "198.51.100.1",
	  EHLO "|" TX "a\r\n.\nQUIT\r\n.\r\n", "220 250 250 250 354 550", NULL },
	{ "normalize: bare LF stored as CRLF, <LF>.<LF> still not the end",
	  "smtp_bare_newline = normalize\n", NULL, "198.51.100.1",
	  EHLO "|" TX "a\nb\n.\nc\r\n.\r\n", "220 250 250 250 354 250", "a\r\nb\r\n.\r\nc\r\n" },
	{ "an excepted client is normalised", "smtp_bare_newline_exceptions = 198.51.100.0/24\n", NULL, "198.51.100.1",
	  EHLO "|" TX "a\nb\r\n.\r\n", "220 250 250 250 354 250", "a\r\nb\r\n" },
	{ "bare LF command refused", NULL, NULL, "198.51.100.1", "NOOP\n", "220 500", NULL },
	{ "long command refused", NULL, NULL, "198.51.100.1",
	  "EHLO c.example\r\n|MAIL FROM:<xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx@b.example>\r\n|NOOP\r\n",
	  "220 250 500 250", NULL },
	{ "a 600-octet NOOP is answered (the limit is for HELO, MAIL, RCPT)", NULL, NULL,
	  "198.51.100.1", EHLO "|NOOP " N100 N100 N100 N100 N100 N100 "\r\n|NOOP\r\n",
	  "220 250 250 250", NULL },
	{ "a 600-octet EHLO is refused", NULL, NULL, "198.51.100.1",
	  "EHLO " N100 N100 N100 N100 N100 N100 "\r\n", "220 500", NULL },
	{ "MAIL with SIZE: 539 octets is one too many", NULL, NULL, "198.51.100.1",
	  EHLO "|MAIL FROM:<s@o.example> SIZE=" Z100 Z100 Z100 Z100 Z100 "00000000\r\n", "220 250 500", NULL },
	{ "refused recipients do not count toward max_recipients", "max_recipients = 2\n", NULL,
	  "198.51.100.1", EHLO "|MAIL FROM:<a@b.example>\r\n|RCPT TO:<bob@example.com>\r\n"
	  "|RCPT TO:<bob@example.com>\r\n|RCPT TO:<alice@example.com>\r\n"
	  "|RCPT TO:<alice@example.com>\r\n|RCPT TO:<alice@example.com>\r\n",
	  "220 250 250 550 550 250 250 452", NULL },
	{ "ten errors end the session", NULL, NULL, "198.51.100.1",
	  "A\r\n|B\r\n|C\r\n|D\r\n|E\r\n|F\r\n|G\r\n|H\r\n|I\r\n|J\r\n|NOOP\r\n",
	  "220 502 502 502 502 502 502 502 502 502 502 421 .", NULL },
	{ "several commands in one write before EHLO: refused", NULL, NULL, "198.51.100.1",
	  "A\r\nB\r\n", "220 554 .", NULL },
	{ "AUTH PLAIN refused without TLS", NULL, NULL, "198.51.100.1",
	  EHLO "|AUTH PLAIN AGFsaWNlAHB3\r\n", "220 250 538", NULL },
	{ "AUTH with an unknown mechanism", NULL, NULL, "198.51.100.1",
	  EHLO "|AUTH NTLM\r\n", "220 250 504", NULL },
	{ "AUTH CRAM-MD5 cancelled", NULL, NULL, "198.51.100.1",
	  EHLO "|AUTH CRAM-MD5\r\n|*\r\n", "220 250 334 501", NULL },
	{ "AUTH with garbage base64", NULL, NULL, "198.51.100.1",
	  EHLO "|AUTH CRAM-MD5\r\n|!!!\r\n", "220 250 334 501", NULL },
	{ "AUTH SCRAM-SHA-256 cancelled before the first message", NULL, NULL, "198.51.100.1",
	  EHLO "|AUTH SCRAM-SHA-256\r\n|*\r\n", "220 250 334 501", NULL },
	{ "AUTH SCRAM-SHA-256 initial response gets the server-first message", NULL, NULL,
	  "198.51.100.1", EHLO "|AUTH SCRAM-SHA-256 biwsbj11QGV4YW1wbGUub3JnLHI9YWJjZGVmZ2g=\r\n|*\r\n", "220 250 334 501", NULL },
	{ "AUTH SCRAM-SHA-256 garbage base64 in the exchange", NULL, NULL, "198.51.100.1",
	  EHLO "|AUTH SCRAM-SHA-256\r\n|bi=sbj1\r\n", "220 250 334 501", NULL },
	{ "AUTH EXTERNAL without a verified certificate", NULL, NULL, "198.51.100.1",
	  EHLO "|AUTH EXTERNAL =\r\n", "220 250 504", NULL },
	{ "AUTH before EHLO", NULL, NULL, "198.51.100.1", "AUTH CRAM-MD5\r\n", "220 503", NULL },
	{ "STARTTLS when TLS is not configured", NULL, NULL, "198.51.100.1",
	  EHLO "|STARTTLS\r\n", "220 250 454", NULL },
	/* addresses: RFC 5321 Mailbox, nothing else (issue 8 items 1, 4, 10, 22) */
	{ "comment in the recipient domain: 501 5.1.3", NULL, NULL, "198.51.100.1",
	  EHLO "|MAIL FROM:<a@b.example>\r\n|RCPT TO:<victim@other.org(.example.com>\r\n",
	  "220 250 250 501", NULL },
	{ "comment in the sender: 501 5.1.7", NULL, "@evil.org", "198.51.100.1",
	  EHLO "|MAIL FROM:<x@evil.org(c)>\r\n|MAIL FROM:<(x)>\r\n", "220 250 501 501", NULL },
	{ "the relay client gets 501 for the trick too", NULL, NULL, "192.0.2.1",
	  EHLO "|MAIL FROM:<a@b.example>\r\n|RCPT TO:<victim@other.org(.example.com>\r\n",
	  "220 250 250 501", NULL },
	{ "postmaster goes to postmaster_address", "postmaster_address = alice@example.com\n", NULL,
	  "198.51.100.1", EHLO "|MAIL FROM:<a@b.example>\r\n|RCPT TO:<PostMaster>\r\n|DATA\r\n|x\r\n.\r\n",
	  "220 250 250 250 354 250", "x\r\n" },
	{ "postmaster_address is checked like any recipient", NULL, NULL,
	  "198.51.100.1", EHLO "|MAIL FROM:<a@b.example>\r\n|RCPT TO:<postmaster>\r\n",
	  "220 250 250 550", NULL },
	{ "other unqualified recipients from outside: 504", NULL, NULL, "198.51.100.1",
	  EHLO "|MAIL FROM:<a@b.example>\r\n|RCPT TO:<root>\r\n", "220 250 250 504", NULL },
	{ "SIZE=+5 is a syntax error", NULL, NULL, "198.51.100.1",
	  EHLO "|MAIL FROM:<a@b.example> SIZE=+5\r\n|MAIL FROM:<a@b.example> SIZE=-5\r\n"
	  "|MAIL FROM:<a@b.example> SIZE=\r\n|MAIL FROM:<a@b.example> SIZE=5\r\n",
	  "220 250 501 501 501 250", NULL },
	{ "EHLO with a CR in it", NULL, NULL, "198.51.100.1",
	  "EHLO a\rX-Injected: yes\r\n|EHLO (x)\r\n|EHLO a\x01b\r\n|HELO [300.1.1.1]\r\n"
	  "|EHLO c.example\r\n", "220 501 501 501 501 250", NULL },
	{ "EHLO forms tolerated", NULL, NULL, "198.51.100.1",
	  "EHLO localhost\r\n|EHLO [192.0.2.1]\r\n|EHLO [IPv6:::1]\r\n|HELO DESKTOP-1 extra\r\n",
	  "220 250 250 250 250", NULL },
	{ "RSET clears the envelope", NULL, NULL, "198.51.100.1",
	  EHLO "|MAIL FROM:<a@b.example>\r\n|RSET\r\n|RCPT TO:<alice@example.com>\r\n",
	  "220 250 250 250 503", NULL },
};

static struct policy *
make_policy(const char *extra)
{
	struct conf *c = conf_new();
	struct policy *p;
	const char *err;
	char *text = xasprintf("mydomains = example.com\nrelay_networks = 192.0.2.0/24\n%s",
	    extra ? extra : "");

	if (conf_load_string(c, "t", text, &err) < 0 || conf_finish(c, &err) < 0 ||
	    policy_new(c, &p, &err) < 0) {
		fprintf(stderr, "bad test config: %s\n", err);
		abort();
	}
	free(text);
	conf_free(&c);
	return p;
}

/* the SMTP door's settings as the daemon compiles them, from the same text;
 * *c_r must outlive the result */
static struct smtp_conf *
make_settings(const char *extra, struct conf **c_r)
{
	struct conf *c = conf_new();
	struct smtp_conf *sc;
	const char *err;
	char *text = xasprintf("mydomains = example.com\nrelay_networks = 192.0.2.0/24\n"
	    "myhostname = mx.example.com\n%s", extra ? extra : "");

	if (conf_load_string(c, "t", text, &err) < 0 || conf_finish(c, &err) < 0 ||
	    (sc = smtp_conf_new(c, &err)) == NULL) {
		fprintf(stderr, "bad test config: %s\n", err);
		abort();
	}
	free(text);
	*c_r = c;
	return sc;
}

static struct listset *
list_of(const char *entry)
{
	struct entry_vec v = { 0 };
	struct list_entry e;
	const char *err;
	struct listset *l;

	if (entry != NULL) {
		if (listentry_parse_key(entry, &e, &err) < 0)
			abort();
		entry_vec_push(&v, &e);
	}
	l = listset_build(&v, 0);
	entry_vec_clear(&v);
	return l;
}

static void
run(const struct pcase *t)
{
	struct policy *pol = make_policy(t->conf);
	struct conf *conf;
	struct smtp_conf *settings = make_settings(t->conf, &conf);
	struct snapref snaps;
	struct smtp_params p;
	struct smtp_proto *sp;
	struct ipaddr a;
	char *in = xstrdup(t->input), *save = NULL, *got = xcalloc(1, 4096), *body = NULL;
	size_t glen = 0;
	const char *out;
	size_t olen;
	int closed = 0;

	snapref_init(&snaps, snapshot_new(list_of(t->kill), list_of(NULL)));
	p = settings->srv.params;	/* as the daemon compiles them */
	p.pol = pol;
	p.snaps = &snaps;
	p.user_resolve = user_resolve;
	p.sasl_cb = &fixture_nobody;
	if (cidr_addr_parse(t->client, &a) < 0)
		abort();
	sp = smtp_proto_new(&p);
	smtp_proto_start(sp, &a, NULL, 1000);
	/* collect reply codes: the first 3 digits of each final reply line */
#define COLLECT() do { \
		out = smtp_proto_output(sp, &olen); \
		for (size_t i = 0; i + 3 < olen; ) { \
			const char *eol = memchr(out + i, '\n', olen - i); \
			if (out[i + 3] == ' ') { memcpy(got + glen, out + i, 3); glen += 3; got[glen++] = ' '; } \
			i = eol ? (size_t)(eol - out) + 1 : olen; \
		} \
		smtp_proto_output_done(sp, olen); \
	} while (0)
	COLLECT();
	for (char *piece = strtok_r(in, "|", &save); piece && !closed; piece = strtok_r(NULL, "|", &save)) {
		size_t len = strlen(piece), off = 0;

		while (off < len && !closed) {
			struct smtp_msg *m;

			off += smtp_proto_input(sp, piece + off, len - off, 1000);
			if ((m = smtp_proto_pending(sp)) != NULL) {
				free(body);
				body = xstrndup(m->data, m->len);
				smtp_proto_delivered(sp, 1, NULL, NULL, "ID");
			}
			COLLECT();
			if (smtp_proto_wants_close(sp))
				closed = 1;
		}
	}
	if (closed) {
		got[glen++] = '.';
		got[glen++] = ' ';
	}
	if (glen > 0)
		got[glen - 1] = '\0';
	if ((t->want != NULL && strcmp(got, t->want) != 0) || (t->body && (body == NULL || strcmp(body, t->body) != 0)) ||
	    (!t->body && body != NULL)) {
		fprintf(stderr, "\n  case \"%s\": replies \"%s\", want \"%s\"; body %s\n", t->name, got,
		    t->want, body ? "delivered" : "none");
		CU_FAIL("dialogue differs");
	}
	smtp_proto_free(&sp);
	smtp_conf_free(&settings);
	conf_free(&conf);
	snapref_deinit(&snaps);
	policy_free(&pol);
	free(in);
	free(got);
	free(body);
}

static void
test_smtp_dialogues(void)
{
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		run(&cases[i]);
}

/* feed one command line, return the last reply code it produced (0: none) */
static int
feed(struct smtp_proto *sp, const char *line)
{
	size_t olen;
	const char *out;
	int code = 0;

	smtp_proto_input(sp, line, strlen(line), 1000);
	out = smtp_proto_output(sp, &olen);
	for (size_t i = 0; i + 3 < olen; ) {
		const char *eol = memchr(out + i, '\n', olen - i);

		if (out[i + 3] == ' ')
			code = atoi(out + i);
		i = eol ? (size_t)(eol - out) + 1 : olen;
	}
	smtp_proto_output_done(sp, olen);
	return code;
}

/*
 * Ask the session for its next actions until want (1, *a filled) or until
 * it waits for input or for an answer (0). Output is dropped; once-only
 * actions other than want are taken and dropped.
 */
static int
take(struct smtp_proto *sp, enum smtp_action want, union smtp_action_arg *a)
{
	for (;;) {
		enum smtp_action act = smtp_proto_next(sp, a);
		size_t n;

		if (act == want)
			return 1;
		switch (act) {
		case SMTP_ACT_WRITE:
			(void)smtp_proto_output(sp, &n);
			smtp_proto_output_done(sp, n);
			break;
		case SMTP_ACT_BAN:
		case SMTP_ACT_STARTTLS:
		case SMTP_ACT_DOWN_RESET:
		case SMTP_ACT_DOWN_OPEN:
			break;
		default:
			return 0;
		}
	}
}

static unsigned long
take_ban(struct smtp_proto *sp, struct ipaddr *addr_r, const char **reason_r)
{
	union smtp_action_arg a;

	if (!take(sp, SMTP_ACT_BAN, &a))
		return 0;
	*addr_r = a.ban.addr;
	if (reason_r != NULL)
		*reason_r = a.ban.reason;
	return a.ban.seconds;
}

static const struct smtp_down_req *
take_down_open(struct smtp_proto *sp)
{
	union smtp_action_arg a;

	return take(sp, SMTP_ACT_DOWN_OPEN, &a) ? a.down : NULL;
}

static int
take_down_reset(struct smtp_proto *sp)
{
	union smtp_action_arg a;

	return take(sp, SMTP_ACT_DOWN_RESET, &a);
}

/*
 * Pass-through (delivery = relay:): an accepted MAIL asks the server to open
 * the downstream session at once, a refused one does not; RSET and a new
 * MAIL drop it; the first RCPT then waits for the downstream, whose reply is
 * mirrored; DATA starts the stream.
 */
static void
test_passthrough_signals(void)
{
	struct policy *pol = make_policy(NULL);
	struct snapref snaps;
	struct smtp_params p;
	struct smtp_proto *sp;
	struct ipaddr a;
	const struct smtp_down_req *r;

	snapref_init(&snaps, snapshot_new(list_of("@bad.example"), list_of(NULL)));
	memset(&p, 0, sizeof(p));
	p.pol = pol;
	p.snaps = &snaps;
	p.myhostname = "mx.example.com";
	p.banner = "mx.example.com ESMTP";
	p.bare_newline_reject = 1;
	p.passthrough = 1;
	CU_ASSERT_FATAL(cidr_addr_parse("198.51.100.1", &a) == 0);
	sp = smtp_proto_new(&p);
	smtp_proto_start(sp, &a, NULL, 1000);
	CU_ASSERT(feed(sp, EHLO) == 250);
	CU_ASSERT(feed(sp, "MAIL FROM:<x@bad.example>\r\n") == 550);
	CU_ASSERT(take_down_open(sp) == NULL);	/* refused: nothing opens */
	CU_ASSERT(feed(sp, "MAIL FROM:<s@o.example>\r\n") == 250);
	r = take_down_open(sp);
	CU_ASSERT_FATAL(r != NULL);
	CU_ASSERT_STRING_EQUAL(r->sender, "s@o.example");
	CU_ASSERT_STRING_EQUAL(r->helo, "mx.example.com");
	CU_ASSERT(take_down_open(sp) == NULL);	/* once */
	CU_ASSERT(take_down_reset(sp) == 0);
	CU_ASSERT(feed(sp, "RSET\r\n") == 250);
	CU_ASSERT(take_down_reset(sp) == 1);		/* the early session goes */
	CU_ASSERT(feed(sp, "MAIL FROM:<t@o.example>\r\n") == 250);
	{
		/* the next action is the open, no reset before it */
		union smtp_action_arg x;
		enum smtp_action act;
		size_t n;

		while ((act = smtp_proto_next(sp, &x)) == SMTP_ACT_WRITE) {
			(void)smtp_proto_output(sp, &n);
			smtp_proto_output_done(sp, n);
		}
		CU_ASSERT(act == SMTP_ACT_DOWN_OPEN);
	}
	CU_ASSERT(feed(sp, "RCPT TO:<u@example.com>\r\n") == 0);	/* the downstream answers */
	CU_ASSERT_FATAL(smtp_proto_pending_down(sp) != NULL);
	CU_ASSERT(smtp_proto_pending_down(sp)->open == 1);
	CU_ASSERT_STRING_EQUAL(smtp_proto_pending_down(sp)->sender, "t@o.example");
	CU_ASSERT_STRING_EQUAL(smtp_proto_pending_down(sp)->rcpt, "u@example.com");
	smtp_proto_down_done(sp, "250 2.1.5 downstream ok");
	CU_ASSERT(feed(sp, "") == 250);
	CU_ASSERT(smtp_proto_pending_down(sp) == NULL);
	CU_ASSERT(feed(sp, "RCPT TO:<v@example.com>\r\n") == 0);
	CU_ASSERT_FATAL(smtp_proto_pending_down(sp) != NULL);
	CU_ASSERT(smtp_proto_pending_down(sp)->open == 0);	/* same session */
	smtp_proto_down_done(sp, "550 5.1.1 no such user downstream");
	CU_ASSERT(feed(sp, "") == 550);
	CU_ASSERT(smtp_proto_streaming(sp) == 0);
	CU_ASSERT(feed(sp, "DATA\r\n") == 354);
	CU_ASSERT(smtp_proto_streaming(sp) == 1);
	smtp_proto_free(&sp);
	snapref_deinit(&snaps);
	policy_free(&pol);
}

/*
 * DATA is held up to SMTP_DATA_HOLD_MAX: past it the session consumes no
 * more until the caller takes a piece (to its spool file or downstream);
 * what it took plus what is left at the dot is the message, byte for byte.
 */
static const struct {
	const char *name;
	size_t size;		/* message octets (lines of 64) */
	size_t write;		/* the client's writes */
	size_t min;		/* take pieces of at least this much; 0: never take */
	int delivered;		/* 1: the dot is reached */
} hold_cases[] = {
	{ "small message held whole", 4096, 1000, 0, 1 },
	{ "exactly the cap, held whole", SMTP_DATA_HOLD_MAX, 65536, 0, 1 },
	{ "a line past the cap, never taken: input stops", SMTP_DATA_HOLD_MAX + 64, 65536, 0, 0 },
	{ "1 MiB, never taken: input stops at the cap", 1024 * 1024, 65536, 0, 0 },
	{ "1 MiB in 64 KiB pieces", 1024 * 1024, 65536, 65536, 1 },
	{ "1 MiB in one write, any piece", 1024 * 1024, 1024 * 1024 + 5, 1, 1 },
	{ "2 MiB in odd writes and pieces", 2 * 1024 * 1024 + 640, 7777, 100000, 1 },
};

static void
test_data_hold(void)
{
	struct policy *pol = make_policy(NULL);
	struct snapref snaps;
	struct smtp_params p;
	struct ipaddr a;

	snapref_init(&snaps, snapshot_new(list_of(NULL), list_of(NULL)));
	memset(&p, 0, sizeof(p));
	p.pol = pol;
	p.snaps = &snaps;
	p.myhostname = "mx.example.com";
	p.banner = "mx.example.com ESMTP";
	p.bare_newline_reject = 1;
	CU_ASSERT_FATAL(cidr_addr_parse("198.51.100.1", &a) == 0);
	for (size_t k = 0; k < sizeof(hold_cases) / sizeof(hold_cases[0]); k++) {
		size_t size = hold_cases[k].size, wire = size + 3, off = 0, got = 0, held_max = 0;
		char *msg = xmalloc(wire), *out = xmalloc(size);
		struct smtp_proto *sp = smtp_proto_new(&p);
		int delivered = 0, stuck = 0;

		for (size_t i = 0; i < size; i++)
			msg[i] = i % 64 == 62 ? '\r' : i % 64 == 63 ? '\n' : (char)('a' + i % 26);
		memcpy(msg + size, ".\r\n", 3);
		smtp_proto_start(sp, &a, NULL, 1000);
		CU_ASSERT(feed(sp, EHLO) == 250);
		CU_ASSERT(feed(sp, "MAIL FROM:<s@o.example>\r\n") == 250);
		CU_ASSERT(feed(sp, "RCPT TO:<alice@example.com>\r\n") == 250);
		CU_ASSERT(feed(sp, "DATA\r\n") == 354);
		while (off < wire && !delivered && stuck < 3) {
			size_t n = wire - off < hold_cases[k].write ? wire - off : hold_cases[k].write;
			size_t used = smtp_proto_input(sp, msg + off, n, 1000);
			const char *pc;
			size_t pn;
			struct smtp_msg *m;

			off += used;
			stuck = used == 0 ? stuck + 1 : 0;
			if (hold_cases[k].min > 0)
				while (smtp_proto_stream_chunk(sp, hold_cases[k].min, &pc, &pn)) {
					held_max = pn > held_max ? pn : held_max;
					CU_ASSERT_FATAL(got + pn <= size);
					memcpy(out + got, pc, pn);
					got += pn;
					smtp_proto_stream_taken(sp, pn);
				}
			else if (smtp_proto_stream_chunk(sp, 0, &pc, &pn))
				held_max = pn > held_max ? pn : held_max;
			if ((m = smtp_proto_pending(sp)) != NULL) {
				held_max = m->len > held_max ? m->len : held_max;
				CU_ASSERT_FATAL(got + m->len == size);
				memcpy(out + got, m->data, m->len);
				got += m->len;
				smtp_proto_delivered(sp, 1, NULL, NULL, "ID");
				delivered = 1;
			}
		}
		if (delivered != hold_cases[k].delivered || held_max > SMTP_DATA_HOLD_MAX ||
		    (delivered && (got != size || memcmp(out, msg, size) != 0))) {
			fprintf(stderr, "\n  case \"%s\": delivered %d, held at most %zu\n",
			    hold_cases[k].name, delivered, held_max);
			CU_FAIL("DATA hold");
		}
		smtp_proto_free(&sp);
		free(msg);
		free(out);
	}
	snapref_deinit(&snaps);
	policy_free(&pol);
}

/*
 * Header names reach the engine as the bytes go by, in any pieces, for the
 * end-of-message check of a relayed message (relay_require_headers = From
 * Reply-To): only names before the empty line count, continuation lines and
 * non-field lines are not names.
 */
static const struct {
	const char *name;
	const char *data;	/* '|' splits the writes; the final dot follows */
	int want;		/* reply to the final dot: 250 (passed on) or 550 */
} header_cases[] = {
	{ "From: present", "From: a@b.example\r\n\r\nbody\r\n", 250 },
	{ "From: split across writes", "Fr|om|: a@b.example\r\n\r\nbody\r\n", 250 },
	{ "Reply-To: after a folded header", "Subject: x\r\n y\r\nReply-To: <r@b.example>\r\n\r\nb\r\n", 250 },
	{ "none", "Subject: x\r\n\r\nbody\r\n", 550 },
	{ "From: only in the body", "Subject: x\r\n\r\nFrom: a@b.example\r\n", 550 },
	{ "From: as a continuation line", "Subject: x\r\n From: a@b.example\r\n\r\nb\r\n", 550 },
	{ "name with a space before the colon", "From : a@b.example\r\n\r\nb\r\n", 550 },
	{ "From: after a long header, in pieces", "X-Long: |aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa|\r|\nFrom: a@b.example\r\n\r\nb\r\n", 250 },
	{ "no body, From: last", "From: a@b.example\r\n", 250 },
};

static void
test_header_names(void)
{
	struct policy *pol = make_policy("relay_require_headers = From Reply-To\n");
	struct snapref snaps;
	struct smtp_params p;
	struct ipaddr a;

	snapref_init(&snaps, snapshot_new(list_of(NULL), list_of(NULL)));
	memset(&p, 0, sizeof(p));
	p.pol = pol;
	p.snaps = &snaps;
	p.myhostname = "mx.example.com";
	p.banner = "mx.example.com ESMTP";
	p.bare_newline_reject = 1;
	p.have_relayhost = 1;
	CU_ASSERT_FATAL(cidr_addr_parse("192.0.2.1", &a) == 0);
	for (size_t k = 0; k < sizeof(header_cases) / sizeof(header_cases[0]); k++) {
		struct smtp_proto *sp = smtp_proto_new(&p);
		char *in = xasprintf("%s.\r\n", header_cases[k].data), *save = NULL;
		int got = 0;

		smtp_proto_start(sp, &a, NULL, 1000);
		CU_ASSERT(feed(sp, EHLO) == 250);
		CU_ASSERT(feed(sp, "MAIL FROM:<s@o.example>\r\n") == 250);
		CU_ASSERT(feed(sp, "RCPT TO:<u@other.example>\r\n") == 0);	/* downstream */
		CU_ASSERT_FATAL(smtp_proto_pending_down(sp) != NULL);
		smtp_proto_down_done(sp, "250 2.1.5 ok");
		CU_ASSERT(feed(sp, "") == 250);
		CU_ASSERT(feed(sp, "DATA\r\n") == 354);
		for (char *piece = strtok_r(in, "|", &save); piece; piece = strtok_r(NULL, "|", &save)) {
			int c = feed(sp, piece);

			got = c ? c : got;
		}
		if (smtp_proto_pending(sp) != NULL)
			got = 250;	/* the server passes it on */
		if (got != header_cases[k].want) {
			fprintf(stderr, "\n  case \"%s\": %d, want %d\n", header_cases[k].name, got,
			    header_cases[k].want);
			CU_FAIL("header names");
		}
		free(in);
		smtp_proto_free(&sp);
	}
	snapref_deinit(&snaps);
	policy_free(&pol);
}

/* what is delivered: the canonical user, the re-quoted address downstream */
static void
test_delivered_addresses(void)
{
	static const struct { const char *rcpt; int pass; const char *want; } t[] = {
		{ "RCPT TO:<ALICE@example.com>\r\n", 0, "alice@example.com" },
		{ "RCPT TO:<\"Alice\"@Example.COM.>\r\n", 0, "alice@example.com" },
		{ "RCPT TO:<@relay.example:alice@EXAMPLE.com>\r\n", 0, "alice@example.com" },
		{ "RCPT TO:<\"root> NOTIFY=NEVER\"@example.com>\r\n", 1,
		  "\"root> NOTIFY=NEVER\"@example.com" },
		{ "RCPT TO:<\"Alice\"@Example.COM.>\r\n", 1, "Alice@example.com" },
	};
	struct policy *pol = make_policy(NULL);
	struct snapref snaps;

	snapref_init(&snaps, snapshot_new(list_of(NULL), list_of(NULL)));
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		struct smtp_params p;
		struct smtp_proto *sp;
		struct ipaddr a;
		const char *got = NULL;

		memset(&p, 0, sizeof(p));
		p.pol = pol;
		p.snaps = &snaps;
		p.myhostname = "mx.example.com";
		p.banner = "mx.example.com ESMTP";
		p.bare_newline_reject = 1;
		p.passthrough = t[i].pass;
		p.user_resolve = user_resolve;
		CU_ASSERT_FATAL(cidr_addr_parse("198.51.100.1", &a) == 0);
		sp = smtp_proto_new(&p);
		smtp_proto_start(sp, &a, NULL, 1000);
		CU_ASSERT(feed(sp, EHLO) == 250);
		CU_ASSERT(feed(sp, "MAIL FROM:<\"a b\"@o.example>\r\n") == 250);
		if (t[i].pass) {
			CU_ASSERT(feed(sp, t[i].rcpt) == 0);
			if (smtp_proto_pending_down(sp) != NULL) {
				got = smtp_proto_pending_down(sp)->rcpt;
				CU_ASSERT_STRING_EQUAL(smtp_proto_pending_down(sp)->sender,
				    "\"a b\"@o.example");
			}
		} else {
			struct smtp_msg *m;

			CU_ASSERT(feed(sp, t[i].rcpt) == 250);
			CU_ASSERT(feed(sp, "DATA\r\n") == 354);
			CU_ASSERT(feed(sp, "x\r\n.\r\n") == 0);
			m = smtp_proto_pending(sp);
			if (m != NULL && m->nrcpt == 1)
				got = m->rcpt[0];
		}
		if (got == NULL || strcmp(got, t[i].want) != 0) {
			fprintf(stderr, "\n  %s: delivered to \"%s\", want \"%s\"\n", t[i].rcpt,
			    got ? got : "(nothing)", t[i].want);
			CU_FAIL("delivered address differs");
		}
		smtp_proto_free(&sp);
	}
	snapref_deinit(&snaps);
	policy_free(&pol);
}

/* a login is named as the user database names it (issue 8 item 3) */
static void
test_login_canonical(void)
{
	struct policy *pol = make_policy(NULL);
	struct snapref snaps;
	struct smtp_params p;
	struct smtp_proto *sp;
	struct ipaddr a;

	snapref_init(&snaps, snapshot_new(list_of(NULL), list_of(NULL)));
	memset(&p, 0, sizeof(p));
	p.pol = pol;
	p.snaps = &snaps;
	p.myhostname = "mx.example.com";
	p.banner = "mx.example.com ESMTP";
	p.bare_newline_reject = 1;
	p.user_resolve = user_resolve;
	p.auth_mechs = SMTP_AUTH_PLAIN;
	p.sasl_cb = &lower_users;	/* the canonical name comes from the user lookup */
	p.auth_allow_plaintext = 1;
	CU_ASSERT_FATAL(cidr_addr_parse("198.51.100.1", &a) == 0);
	sp = smtp_proto_new(&p);
	smtp_proto_start(sp, &a, NULL, 1000);
	CU_ASSERT(feed(sp, EHLO) == 250);
	/* "\0ALICE@Example.COM\0pw" */
	CU_ASSERT(feed(sp, "AUTH PLAIN AEFMSUNFQEV4YW1wbGUuQ09NAHB3\r\n") == 0);
	CU_ASSERT_FATAL(smtp_proto_pending_auth(sp) != NULL);
	smtp_proto_auth_done(sp, 1);
	CU_ASSERT_STRING_EQUAL(smtp_proto_auth_user(sp), "alice@example.com");
	smtp_proto_free(&sp);
	snapref_deinit(&snaps);
	policy_free(&pol);
}

/* a ban carries the tag of the verdict that asked for it as its reason */
static void
test_ban_reason_is_the_verdict_tag(void)
{
	struct policy *pol = make_policy(NULL);
	struct snapref snaps;
	struct smtp_params p;
	struct smtp_proto *sp;
	struct ipaddr a, banned;
	char line[700];
	const char *reason = "";

	snapref_init(&snaps, snapshot_new(list_of(NULL), list_of(NULL)));
	memset(&p, 0, sizeof(p));
	p.pol = pol;
	p.snaps = &snaps;
	p.myhostname = "mx.example.com";
	p.banner = "mx.example.com ESMTP";
	p.bare_newline_reject = 1;
	CU_ASSERT_FATAL(cidr_addr_parse("198.51.100.1", &a) == 0);
	sp = smtp_proto_new(&p);
	smtp_proto_start(sp, &a, NULL, 1000);
	CU_ASSERT(feed(sp, EHLO) == 250);
	CU_ASSERT(take_ban(sp, &banned, NULL) == 0);
	snprintf(line, sizeof(line), "MAIL FROM:<%0600d@b.example>\r\n", 0);
	CU_ASSERT(feed(sp, line) == 500);
	CU_ASSERT(take_ban(sp, &banned, &reason) > 0);
	CU_ASSERT_STRING_EQUAL(reason, "long-command");
	smtp_proto_free(&sp);
	snapref_deinit(&snaps);
	policy_free(&pol);
}

/*
 * The command table: each command in each state, allowed (the reply it
 * starts with) or refused (the exact reply).
 */
enum { S_START, S_HELO, S_EHLO, S_MAIL, S_RCPT, S_AUTHED, NSTATES };

static const char *const state_setup[NSTATES] = {
	"", "HELO c.example\r\n", EHLO, EHLO "MAIL FROM:<a@b.example>\r\n",
	EHLO "MAIL FROM:<a@b.example>\r\n" "RCPT TO:<alice@example.com>\r\n",
	EHLO "AUTH PLAIN AGFsaWNlAHB3\r\n",
};

#define HELO1 "503 5.5.1 Error: send HELO/EHLO first\r\n"
#define NEEDMAIL "503 5.5.1 Error: need MAIL command\r\n"
#define NEEDEHLO "503 5.5.1 Error: send EHLO first\r\n"
static const struct {
	const char *line;
	const char *want[NSTATES];	/* the whole reply, or its start */
} table_rows[] = {
	{ "EHLO c.example\r\n", { "250-mx", "250-mx", "250-mx", "250-mx", "250-mx", "250-mx" } },
	{ "HELO c.example\r\n", { "250 mx", "250 mx", "250 mx", "250 mx", "250 mx", "250 mx" } },
	{ "MAIL FROM:<a@b.example>\r\n", { HELO1, "250 2.1.0 Ok\r\n", "250 2.1.0 Ok\r\n",
	  "503 5.5.1 Error: nested MAIL command\r\n", "503 5.5.1 Error: nested MAIL command\r\n",
	  "250 2.1.0 Ok\r\n" } },
	{ "RCPT TO:<alice@example.com>\r\n", { NEEDMAIL, NEEDMAIL, NEEDMAIL, "250 2.1.5 Ok\r\n",
	  "250 2.1.5 Ok\r\n", NEEDMAIL } },
	{ "DATA\r\n", { NEEDMAIL, NEEDMAIL, NEEDMAIL, "554 5.5.1 Error: no valid recipients\r\n",
	  "354 ", NEEDMAIL } },
	{ "DATA x\r\n", { "501 5.5.4 Syntax: DATA\r\n", "501 5.5.4 Syntax: DATA\r\n",
	  "501 5.5.4 Syntax: DATA\r\n", "501 5.5.4 Syntax: DATA\r\n", "501 5.5.4 Syntax: DATA\r\n",
	  "501 5.5.4 Syntax: DATA\r\n" } },
	{ "RSET\r\n", { "250 2.0.0 Ok\r\n", "250 2.0.0 Ok\r\n", "250 2.0.0 Ok\r\n", "250 2.0.0 Ok\r\n",
	  "250 2.0.0 Ok\r\n", "250 2.0.0 Ok\r\n" } },
	{ "NOOP\r\n", { "250 2.0.0 Ok\r\n", "250 2.0.0 Ok\r\n", "250 2.0.0 Ok\r\n", "250 2.0.0 Ok\r\n",
	  "250 2.0.0 Ok\r\n", "250 2.0.0 Ok\r\n" } },
	{ "QUIT\r\n", { "221 2.0.0 Bye\r\n", "221 2.0.0 Bye\r\n", "221 2.0.0 Bye\r\n",
	  "221 2.0.0 Bye\r\n", "221 2.0.0 Bye\r\n", "221 2.0.0 Bye\r\n" } },
	{ "HELP\r\n", { "214 ", "214 ", "214 ", "214 ", "214 ", "214 " } },
	{ "VRFY alice\r\n", { "502 5.5.1 VRFY command is disabled\r\n",
	  "502 5.5.1 VRFY command is disabled\r\n", "502 5.5.1 VRFY command is disabled\r\n",
	  "502 5.5.1 VRFY command is disabled\r\n", "502 5.5.1 VRFY command is disabled\r\n",
	  "502 5.5.1 VRFY command is disabled\r\n" } },
	{ "EXPN list\r\n", { "502 5.5.1 EXPN command is disabled\r\n",
	  "502 5.5.1 EXPN command is disabled\r\n", "502 5.5.1 EXPN command is disabled\r\n",
	  "502 5.5.1 EXPN command is disabled\r\n", "502 5.5.1 EXPN command is disabled\r\n",
	  "502 5.5.1 EXPN command is disabled\r\n" } },
	{ "AUTH CRAM-MD5\r\n", { NEEDEHLO, NEEDEHLO, "334 ",
	  "503 5.5.1 Error: MAIL transaction in progress\r\n",
	  "503 5.5.1 Error: MAIL transaction in progress\r\n",
	  "503 5.5.1 Error: already authenticated\r\n" } },
	{ "STARTTLS\r\n", { "454 4.7.0 TLS not available\r\n", "454 4.7.0 TLS not available\r\n",
	  "454 4.7.0 TLS not available\r\n", "454 4.7.0 TLS not available\r\n",
	  "454 4.7.0 TLS not available\r\n", "454 4.7.0 TLS not available\r\n" } },
	{ "STARTTLS now\r\n", { "501 5.5.4 Syntax: STARTTLS\r\n", "501 5.5.4 Syntax: STARTTLS\r\n",
	  "501 5.5.4 Syntax: STARTTLS\r\n", "501 5.5.4 Syntax: STARTTLS\r\n",
	  "501 5.5.4 Syntax: STARTTLS\r\n", "501 5.5.4 Syntax: STARTTLS\r\n" } },
	{ "BDAT 10\r\n", { "502 5.5.2 Error: command not recognized\r\n",
	  "502 5.5.2 Error: command not recognized\r\n", "502 5.5.2 Error: command not recognized\r\n",
	  "502 5.5.2 Error: command not recognized\r\n", "502 5.5.2 Error: command not recognized\r\n",
	  "502 5.5.2 Error: command not recognized\r\n" } },
};

/* all the output, as one string, dropped from the session */
static void
drain(struct smtp_proto *sp, char *buf, size_t cap)
{
	size_t n;
	const char *out = smtp_proto_output(sp, &n);

	snprintf(buf, cap, "%.*s", (int)n, out);
	smtp_proto_output_done(sp, n);
}

static void
test_command_table(void)
{
	struct policy *pol = make_policy(NULL);
	struct snapref snaps;
	struct smtp_params p;
	struct ipaddr a;
	static const char *const state_name[NSTATES] = {
		"start", "after HELO", "after EHLO", "after MAIL", "after RCPT", "authenticated",
	};

	snapref_init(&snaps, snapshot_new(list_of(NULL), list_of(NULL)));
	memset(&p, 0, sizeof(p));
	p.pol = pol;
	p.snaps = &snaps;
	p.myhostname = "mx.example.com";
	p.banner = "mx.example.com ESMTP";
	p.bare_newline_reject = 1;
	p.user_resolve = user_resolve;
	p.auth_mechs = SMTP_AUTH_PLAIN | SMTP_AUTH_CRAM;
	p.auth_allow_plaintext = 1;
	p.sasl_cb = &lower_users;
	CU_ASSERT_FATAL(cidr_addr_parse("198.51.100.1", &a) == 0);
	for (size_t r = 0; r < sizeof(table_rows) / sizeof(table_rows[0]); r++) {
		for (int st = 0; st < NSTATES; st++) {
			struct smtp_proto *sp = smtp_proto_new(&p);
			const char *want = table_rows[r].want[st];
			char got[2048];
			char *save = NULL, *setup = xstrdup(state_setup[st]);

			smtp_proto_start(sp, &a, NULL, 1000);
			/* the setup one line at a time (no pipelining before EHLO) */
			for (char *l = strtok_r(setup, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
				char *line = xasprintf("%s\n", l);

				smtp_proto_input(sp, line, strlen(line), 1000);
				if (smtp_proto_pending_auth(sp) != NULL)
					smtp_proto_auth_done(sp, 1);
				free(line);
			}
			free(setup);
			drain(sp, got, sizeof(got));
			CU_ASSERT(smtp_proto_state(sp) == SMTP_ST_COMMAND);
			smtp_proto_input(sp, table_rows[r].line, strlen(table_rows[r].line), 1000);
			drain(sp, got, sizeof(got));
			if (strncmp(got, want, strlen(want)) != 0) {
				fprintf(stderr, "\n  %.*s %s: \"%s\", want \"%s\"\n",
				    (int)strcspn(table_rows[r].line, "\r"), table_rows[r].line,
				    state_name[st], got, want);
				CU_FAIL("command table");
			}
			smtp_proto_free(&sp);
		}
	}
	/* the rows carry the flags the dispatcher checks */
	CU_ASSERT(smtp_cmd_lookup("mail", 4) != NULL);
	CU_ASSERT(smtp_cmd_lookup("MAILX", 5) == NULL);
	CU_ASSERT(smtp_cmd_flags(smtp_cmd_lookup("RCPT", 4)) & SMTP_CMD_IN_TX);
	CU_ASSERT(smtp_cmd_flags(smtp_cmd_lookup("AUTH", 4)) & SMTP_CMD_NEED_EHLO);
	CU_ASSERT(smtp_cmd_flags(smtp_cmd_lookup("DATA", 4)) & SMTP_CMD_ENDS_GROUP);
	CU_ASSERT(!(smtp_cmd_flags(smtp_cmd_lookup("RCPT", 4)) & SMTP_CMD_ENDS_GROUP));
	CU_ASSERT(smtp_cmd_flags(smtp_cmd_lookup("STARTTLS", 8)) & SMTP_CMD_PRE_TLS);
	snapref_deinit(&snaps);
	policy_free(&pol);
}

/*
 * Every refusal the door makes is a verdict the engine records: counted by
 * stage and reason tag like the engine's own (issue 9).
 */
static void
test_refusals_are_counted(void)
{
	static const struct {
		const char *conf, *input, *series;
	} t[] = {
		{ NULL, EHLO "|MAIL FROM:<a@b.example>\r\n|RCPT TO:<bob@example.com>\r\n",
		  "stage=\"RCPT\",action=\"reject\",reason=\"unknown-user\"" },
		{ "message_size_limit = 1000\n", EHLO "|MAIL FROM:<a@b.example> SIZE=5000\r\n",
		  "stage=\"MAIL\",action=\"reject\",reason=\"size\"" },
		{ "message_size_limit = 10\n", EHLO "|" TX "0123456789abcdef\r\n.\r\n",
		  "stage=\"END-OF-MESSAGE\",action=\"reject\",reason=\"size\"" },
		{ NULL, EHLO "|" TX "a\nb\r\n.\r\n",
		  "stage=\"END-OF-MESSAGE\",action=\"reject\",reason=\"bare-newline\"" },
		{ NULL, "HELO c.example\r\nMAIL FROM:<a@b.example>\r\n",
		  "stage=\"HELO\",action=\"reject\",reason=\"pipelining\"" },
		{ NULL, "A\r\n|B\r\n|C\r\n|D\r\n|E\r\n|F\r\n|G\r\n|H\r\n|I\r\n|J\r\n",
		  "stage=\"COMMAND\",action=\"defer\",reason=\"error-budget\"" },
		{ NULL, EHLO "|AUTH CRAM-MD5\r\n|*\r\n",
		  "stage=\"COMMAND\",action=\"reject\",reason=\"auth-aborted\"" },
		{ NULL, "MAIL FROM:<a@b.example>\r\n",
		  "stage=\"COMMAND\",action=\"reject\",reason=\"bad-sequence\"" },
		{ NULL, "NOOP\n", "stage=\"COMMAND\",action=\"reject\",reason=\"bare-newline\"" },
	};
	char *dir = unit_tmpdir(), *path = xasprintf("%s/stats", dir);
	const char *err;

	CU_ASSERT_FATAL(stats_open(path, &err) == 0);
	stats_set_door("smtp");
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		struct pcase c = { "counted", t[i].conf, NULL, "198.51.100.1", t[i].input, NULL, NULL };
		char *series = xasprintf("verdicts_total{door=\"smtp\",%s}", t[i].series);
		uint64_t before = stats_get(series);

		run(&c);
		if (stats_get(series) != before + 1) {
			fprintf(stderr, "\n  %s: %llu, want %llu\n", series,
			    (unsigned long long)stats_get(series), (unsigned long long)before + 1);
			CU_FAIL("refusal not counted");
		}
		free(series);
	}
	stats_close();
	unlink(path);
	rmdir(dir);
	free(path);
	free(dir);
}

static CU_TestInfo tests[] = {
	{ "header names as they go by", test_header_names },
	{ "DATA held up to a cap", test_data_hold },
	{ "golden dialogues", test_smtp_dialogues },
	{ "command table: each command in each state", test_command_table },
	{ "door refusals are counted verdicts", test_refusals_are_counted },
	{ "a ban's reason is the verdict's tag", test_ban_reason_is_the_verdict_tag },
	{ "pass-through signals", test_passthrough_signals },
	{ "delivered addresses: canonical user, re-quoted downstream", test_delivered_addresses },
	{ "a login is named canonically", test_login_canonical },
	CU_TEST_INFO_NULL,
};

void
test_smtp_proto_register(void)
{
	unit_suite("smtp_proto", tests);
}
