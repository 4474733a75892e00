/*
 * pop3_proto: golden dialogues against a real mail store in a temp dir.
 * Each row is a client's input and the exact bytes the server must send
 * ({V} stands for the mailbox's UIDVALIDITY in %08x), fed whole, one byte
 * at a time and in random pieces, with a small door that runs the actions
 * (SASL checks, APOP, opening the INBOX, streaming RETR/TOP from the file,
 * the UPDATE at QUIT, STLS). Then the store is checked: DELE applied only at
 * QUIT, \Seen on retrieved messages.
 */
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "common/sasl.h"
#include "common/xmalloc.h"
#include "pop-imap-proxy/pop3_proto.h"
#include "storage-adapter/mailstore.h"
#include "tests/unit/fixture.h"
#include "tests/unit/unit.h"

#define M1 "Subject: one\n\nbody\n.dot line\n"
#define M2 "Subject: two\r\nX: y\r\n\r\nl1\r\nl2\r\nl3\r\n"
#define M3 "Subject: three\n\nno newline at end"
#define USER FIXTURE_USER
#define STAMP "<1896.697170952@mx.example.com>"
#define APOP_SECRET "tanstaaf"


static void
md5_hex(const char *s, char out[33])
{
	unsigned char d[EVP_MAX_MD_SIZE];
	unsigned int n = 0;

	EVP_Digest(s, strlen(s), d, &n, EVP_md5(), NULL);
	for (unsigned i = 0; i < 16; i++)
		snprintf(out + 2 * i, 3, "%02x", d[i]);
}

struct env {
	char *root;
	struct mailstore *ms;
	struct mailstore_box *box;
	int in_use;
	uint32_t uidvalidity;
};

static void
store_make(struct env *e)
{
	const char *msgs[] = { M1, M2, M3 }, *err;

	memset(e, 0, sizeof(*e));
	e->root = unit_tmpdir();
	CU_ASSERT_EQUAL_FATAL(fixture_deliver(e->root, USER, msgs, 3, &err), 0);
}

static void
store_free(struct env *e)
{
	mailstore_box_close(&e->box);
	mailstore_free(&e->ms);
	if (fixture_rm_rf(e->root) != 0)
		CU_FAIL("rm");
	free(e->root);
}

static void
drain(struct pop3_proto *p, struct fixture_buf *out)
{
	for (int guard = 0; guard < 100000; guard++) {
		size_t n;
		const char *o = pop3_proto_output(p, &n);

		if (n == 0)
			return;
		fixture_put(out, o, n);
		pop3_proto_output_done(p, n);
	}
}

/* the door's side of each action; returns 1 when STLS was done */
static int
act(struct pop3_proto *p, struct env *e, struct fixture_buf *out)
{
	const char *err;

	switch (pop3_proto_action(p)) {
	case POP3_ACT_NONE:
		return 0;
	case POP3_ACT_AUTH: {
		struct pop3_auth_req *r = pop3_proto_auth_req(p);

		if (r->sasl != NULL) {
			int ok = r->ok;

			if (r->check) {
				const char *o;

				sasl_server_check(r->sasl);
				ok = sasl_server_checked(r->sasl, &o) == SASL_OK;
			}
			pop3_proto_auth_done(p, ok, NULL);
		} else {
			char want[33], *s = xasprintf("%s%s", r->apop_stamp, APOP_SECRET);
			int ok = strcasecmp(r->apop_login, "alice") == 0;

			md5_hex(s, want);
			free(s);
			pop3_proto_auth_done(p, ok && strcmp(want, r->apop_digest) == 0, USER);
		}
		return 0;
	}
	case POP3_ACT_OPEN:
		CU_ASSERT_STRING_EQUAL(pop3_proto_user(p), USER);
		if (e->in_use) {
			pop3_proto_opened(p, NULL, 1);
			return 0;
		}
		CU_ASSERT_EQUAL_FATAL(mailstore_open(e->root, pop3_proto_user(p), &e->ms, &err), 0);
		CU_ASSERT_EQUAL_FATAL(mailstore_box_open(e->ms, "INBOX", &e->box, &err), 0);
		e->uidvalidity = mailstore_box_uidvalidity(e->box);
		pop3_proto_opened(p, e->box, 0);
		return 0;
	case POP3_ACT_RETR: {
		uint32_t uid;
		long top;
		int fd, done = 0;
		struct pop3_stream st;

		pop3_proto_retr_req(p, &uid, &top);
		if (mailstore_msg_open(e->box, uid, &fd, &err) < 0) {
			pop3_proto_retr_opened(p, 0);
			return 0;
		}
		pop3_proto_retr_opened(p, 1);
		drain(p, out);
		pop3_stream_init(&st, fd, top);
		while (!done) {
			char chunk[16];	/* small, to cross every boundary */
			size_t n;

			CU_ASSERT_EQUAL_FATAL(pop3_stream_read(&st, chunk, sizeof(chunk), &n, &done,
			    &err), 0);
			fixture_put(out, chunk, n);
		}
		close(fd);
		pop3_proto_retr_done(p);
		return 0;
	}
	case POP3_ACT_UPDATE: {
		const uint32_t *ex, *seen;
		size_t nex, nseen;
		int ok = 1;

		pop3_proto_update(p, &ex, &nex, &seen, &nseen);
		for (size_t i = 0; i < nex; i++)
			ok &= mailstore_msg_expunge(e->box, ex[i], &err) == 0;
		for (size_t i = 0; i < nseen; i++)
			ok &= mailstore_msg_set_flags(e->box, seen[i], MAILSTORE_FLAGS_ADD,
			    MAILSTORE_SEEN, NULL, 0, &err) == 0;
		pop3_proto_update_done(p, ok);
		return 0;
	}
	case POP3_ACT_STARTTLS:
		drain(p, out);
		pop3_proto_set_tls(p, 1);
		return 1;
	}
	return 0;
}

struct pcase {
	const char *name;
	struct pop3_params prm;
	int in_use;
	const char *in;
	const char *after_tls;	/* input after STLS (what came before is dropped) */
	const char *want;
	int expunged;		/* messages gone from the store afterwards */
	unsigned seen;		/* bit i: message i+1 is \Seen afterwards */
};

static void
dialogue(const struct pcase *c, int mode, struct fixture_buf *out, struct env *e)
{
	struct pop3_proto *p = pop3_proto_new(&c->prm);
	const char *in = c->in;
	size_t len = strlen(in), off = 0;
	unsigned seed = (unsigned)mode * 2654435761u;

	e->in_use = c->in_use;
	out->n = 0;
	fixture_put(out, "", 0);
	pop3_proto_start(p, STAMP);
	for (int guard = 0; guard < 1000000; guard++) {
		size_t piece, used;

		drain(p, out);
		if (pop3_proto_action(p) != POP3_ACT_NONE) {
			if (act(p, e, out)) {
				/* RFC 2595: input that came with STLS is dropped */
				in = c->after_tls ? c->after_tls : "";
				len = strlen(in);
				off = 0;
			}
			continue;
		}
		if (pop3_proto_wants_close(p) || off >= len)
			break;
		piece = fixture_piece(mode, &seed, len - off, 9);
		used = pop3_proto_input(p, in + off, piece);
		off += used;
	}
	drain(p, out);
	pop3_proto_free(&p);
}

#define GREET "+OK mx.example.com ready.\r\n"
#define CAPA_HEAD "+OK\r\nCAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\nAUTH-RESP-CODE\r\n"
#define PLAINTEXT_NO "-ERR [AUTH] Plaintext authentication disallowed on non-secure " \
	"(SSL/TLS) connections.\r\n"
#define R1 "Subject: one\r\n\r\nbody\r\n..dot line\r\n.\r\n"
#define R3 "Subject: three\r\n\r\nno newline at end\r\n.\r\n"

#define P_OPEN { .myhostname = "mx.example.com", .tls_available = 1, .user_pass = 1, \
	.auth_mechs = AUTH_MECH_PLAIN | AUTH_MECH_LOGIN, .auth_allow_plaintext = 1, \
	.sasl_cb = &fixture_alice }
#define P_TLS { .myhostname = "mx.example.com", .tls_available = 1, .user_pass = 1, \
	.auth_mechs = AUTH_MECH_PLAIN | AUTH_MECH_LOGIN | AUTH_MECH_CRAM, .sasl_cb = &fixture_alice }
#define P_APOP { .myhostname = "mx.example.com", .apop = 1, .auth_allow_plaintext = 1, \
	.sasl_cb = &fixture_alice, .banner = "mx.example.com POP3 ready" }
#define P_BAD { .myhostname = "mx.example.com", .user_pass = 1, .auth_allow_plaintext = 1, \
	.sasl_cb = &fixture_alice, .bad_max = 3 }

static const struct pcase pcases[] = {
	{ "USER/PASS, every transaction command, DELE only at QUIT", P_OPEN, 0,
	  "CAPA\r\nUSER alice\r\nPASS secret\r\nSTAT\r\nLIST\r\nUIDL\r\nLIST 2\r\nUIDL 3\r\n"
	  "RETR 1\r\nTOP 2 1\r\nRETR 3\r\nDELE 1\r\nDELE 1\r\nLIST 1\r\nSTAT\r\nRSET\r\n"
	  "STAT\r\nDELE 2\r\nnoop\r\nQUIT\r\n", NULL,
	  GREET CAPA_HEAD "USER\r\nSASL PLAIN LOGIN\r\nSTLS\r\n.\r\n"
	  "+OK\r\n+OK Logged in.\r\n+OK 3 102\r\n"
	  "+OK 3 messages:\r\n1 33\r\n2 34\r\n3 35\r\n.\r\n"
	  "+OK\r\n1 00000001{V}\r\n2 00000002{V}\r\n3 00000003{V}\r\n.\r\n"
	  "+OK 2 34\r\n+OK 3 00000003{V}\r\n"
	  "+OK 33 octets\r\n" R1
	  "+OK\r\nSubject: two\r\nX: y\r\n\r\nl1\r\n.\r\n"
	  "+OK 35 octets\r\n" R3
	  "+OK Marked to be deleted.\r\n-ERR Message is deleted.\r\n-ERR Message is deleted.\r\n"
	  "+OK 2 69\r\n+OK\r\n+OK 3 102\r\n+OK Marked to be deleted.\r\n+OK\r\n"
	  "+OK Logging out, messages deleted.\r\n", 1, 0x5 },
	{ "no plaintext before STLS; input sent with STLS is dropped", P_TLS, 0,
	  "CAPA\r\nUSER alice\r\nAUTH PLAIN\r\nAUTH\r\nSTLS\r\nUSER alice\r\n",
	  "CAPA\r\nSTLS\r\nPASS secret\r\nUSER alice\r\nPASS wrong\r\nQUIT\r\n",
	  GREET CAPA_HEAD "SASL CRAM-MD5\r\nSTLS\r\n.\r\n" PLAINTEXT_NO PLAINTEXT_NO
	  "+OK\r\nCRAM-MD5\r\n.\r\n+OK Begin TLS negotiation now.\r\n"
	  CAPA_HEAD "USER\r\nSASL PLAIN LOGIN CRAM-MD5\r\n.\r\n"
	  "-ERR TLS is already active.\r\n-ERR No username given.\r\n+OK\r\n"
	  "-ERR [AUTH] Authentication failed.\r\n+OK Logging out.\r\n", 0, 0 },
	{ "AUTH PLAIN: empty challenge, cancel, bad base64, initial response", P_OPEN, 0,
	  "AUTH PLAIN\r\n*\r\nAUTH PLAIN !!!\r\nAUTH FOO\r\nAUTH PLAIN\r\nAGFsaWNlAHNlY3JldA==\r\n"
	  "STAT\r\nQUIT\r\n", NULL,
	  GREET "+ \r\n-ERR Authentication aborted by client.\r\n-ERR Invalid base64 data.\r\n"
	  "-ERR [AUTH] Unsupported authentication mechanism.\r\n+ \r\n+OK Logged in.\r\n"
	  "+OK 3 102\r\n+OK Logging out.\r\n", 0, 0 },
	{ "AUTH PLAIN with SASL-IR, wrong password", P_OPEN, 0,
	  "AUTH PLAIN AGFsaWNlAHdyb25n\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\nRETR 3\r\nQUIT\r\n",
	  NULL,
	  GREET "-ERR [AUTH] Authentication failed.\r\n+OK Logged in.\r\n"
	  "+OK 35 octets\r\n" R3 "+OK Logging out.\r\n", 0, 0x4 },
	{ "APOP: banner timestamp, bad digest, syntax, good digest", P_APOP, 0,
	  "CAPA\r\nAPOP alice 0123456789abcdef0123456789abcdef\r\nAPOP alice short\r\n"
	  "APOP alice {DIGEST}\r\nQUIT\r\n", NULL,
	  "+OK mx.example.com POP3 ready " STAMP "\r\n" CAPA_HEAD ".\r\n"
	  "-ERR [AUTH] Authentication failed.\r\n-ERR Invalid parameters.\r\n"
	  "+OK Logged in.\r\n+OK Logging out.\r\n", 0, 0 },
	{ "the mailbox is in use", P_OPEN, 1, "USER alice\r\nPASS secret\r\nSTAT\r\n", NULL,
	  GREET "+OK\r\n-ERR [IN-USE] Mailbox is locked by another POP3 session.\r\n", 0, 0 },
	{ "transaction errors", P_OPEN, 0,
	  "USER alice\r\nPASS secret\r\nRETR 9\r\nRETR x\r\nTOP 1\r\nTOP 1 x\r\nLIST 0\r\n"
	  "STAT x\r\nUSER bob\r\nTOP 1 0\r\nQUIT\r\n", NULL,
	  GREET "+OK\r\n+OK Logged in.\r\n-ERR There's no message 9.\r\n"
	  "-ERR Invalid message number.\r\n-ERR Invalid parameters.\r\n"
	  "-ERR Invalid number of lines.\r\n-ERR There's no message 0.\r\n"
	  "-ERR Noise after command.\r\n-ERR Unknown command.\r\n"
	  "+OK\r\nSubject: one\r\n\r\n.\r\n+OK Logging out.\r\n", 0, 0 },
	{ "bad commands before login, then disconnect", P_BAD, 0,
	  "STAT\r\nPASS x\r\nFOO\r\nUSER alice\r\n", NULL,
	  GREET "-ERR Unknown command.\r\n-ERR No username given.\r\n-ERR Unknown command.\r\n"
	  "+OK\r\n", 0, 0 },
	{ "bad arguments count too; a good command resets the count", P_BAD, 0,
	  "USER alice\r\nPASS secret\r\nRETR x\r\nNOOP\r\nRETR x\r\nDELE\r\nTOP 1\r\nQUIT\r\n",
	  NULL, GREET "+OK\r\n+OK Logged in.\r\n-ERR Invalid message number.\r\n+OK\r\n"
	  "-ERR Invalid message number.\r\n-ERR Missing argument.\r\n-ERR Invalid parameters.\r\n"
	  "-ERR Too many bad commands.\r\n", 0, 0 },
	{ "too many bad commands", P_BAD, 0, "A\r\nB\r\nC\r\nQUIT\r\n", NULL,
	  GREET "-ERR Unknown command.\r\n-ERR Unknown command.\r\n-ERR Unknown command.\r\n"
	  "-ERR Too many bad commands.\r\n", 0, 0 },
	{ "over-long line answered once, resync", P_BAD, 0,
	  "USER {LONG}\r\nQUIT\r\n", NULL,
	  GREET "-ERR Input line too long.\r\n+OK Logging out.\r\n", 0, 0 },
	{ "bare LF line ends, lower case", P_OPEN, 0, "user alice\npass secret\nstat\nquit\n", NULL,
	  GREET "+OK\r\n+OK Logged in.\r\n+OK 3 102\r\n+OK Logging out.\r\n", 0, 0 },
	{ NULL, { 0 }, 0, NULL, NULL, NULL, 0, 0 },
};

static char *
subst(const char *s, const char *key, const char *val)
{
	struct fixture_buf b = { 0 };
	const char *k;

	fixture_put(&b, "", 0);
	while ((k = strstr(s, key)) != NULL) {
		fixture_put(&b, s, (size_t)(k - s));
		fixture_put(&b, val, strlen(val));
		s = k + strlen(key);
	}
	fixture_put(&b, s, strlen(s));
	return b.s;
}

static void
test_pop3_dialogues(void)
{
	const char *err;
	char digest[33], *s = xasprintf("%s%s", STAMP, APOP_SECRET);
	char longuser[1000];

	CU_ASSERT_EQUAL_FATAL(sasl_init(&err), 0);
	md5_hex(s, digest);
	free(s);
	memset(longuser, 'x', sizeof(longuser) - 1);
	longuser[sizeof(longuser) - 1] = '\0';
	for (const struct pcase *c = pcases; c->name != NULL; c++) {
		for (int mode = 0; mode < 5; mode++) {
			struct env e;
			struct fixture_buf out = { 0 };
			struct pcase cc = *c;
			char *in1 = subst(c->in, "{DIGEST}", digest), *in2 = subst(in1, "{LONG}",
			    longuser), *want, v[9];

			cc.in = in2;
			store_make(&e);
			dialogue(&cc, mode, &out, &e);
			snprintf(v, sizeof(v), "%08x", e.uidvalidity);
			want = subst(c->want, "{V}", v);
			if (strcmp(out.s, want) != 0) {
				fprintf(stderr, "\npop3 case '%s' mode %d:\n--- got\n%s--- want\n%s",
				    c->name, mode, out.s, want);
				CU_FAIL(c->name);
			} else {
				CU_PASS(c->name);
			}
			/* what the store holds afterwards */
			if (e.box != NULL) {
				struct mailstore_box *b2;

				CU_ASSERT_EQUAL_FATAL(mailstore_box_open(e.ms, "INBOX", &b2, &err), 0);
				CU_ASSERT_EQUAL(mailstore_box_count(b2), (size_t)(3 - c->expunged));
				for (uint32_t uid = 1; uid <= 3; uid++) {
					long i = mailstore_box_find(b2, uid);
					int seen = i >= 0 &&
					    (mailstore_box_msg(b2, (size_t)i)->flags & MAILSTORE_SEEN);

					if (i >= 0)
						CU_ASSERT_EQUAL(seen, !!(c->seen & (1u << (uid - 1))));
				}
				mailstore_box_close(&b2);
			}
			store_free(&e);
			free(in1);
			free(in2);
			free(want);
			free(out.s);
		}
	}
}

/* RETR/TOP streaming: CRLF, dot-stuffing, TOP counts, the end dot */
static void
test_pop3_stream(void)
{
	static const struct {
		const char *in;
		long top;
		const char *want;
	} rows[] = {
		{ "", -1, ".\r\n" },
		{ "a", -1, "a\r\n.\r\n" },
		{ ".\n..\n.x\r\n", -1, "..\r\n...\r\n..x\r\n.\r\n" },
		{ "H: 1\nH: 2\n\nb1\nb2\nb3\n", 2, "H: 1\r\nH: 2\r\n\r\nb1\r\nb2\r\n.\r\n" },
		{ "H: 1\r\n\r\nb1\r\n", 0, "H: 1\r\n\r\n.\r\n" },
		{ "H: 1\n", 5, "H: 1\r\n.\r\n" },
		{ "a\rb\n", -1, "a\rb\r\n.\r\n" },
		{ "H: 1\n\n.b1\n", 9, "H: 1\r\n\r\n..b1\r\n.\r\n" },
	};

	for (size_t r = 0; r < sizeof(rows) / sizeof(rows[0]); r++) {
		for (size_t cap = 16; cap <= 64; cap += 48) {
			int fds[2], done = 0;
			struct pop3_stream st;
			struct fixture_buf out = { 0 };
			const char *err;

			CU_ASSERT_EQUAL_FATAL(pipe(fds), 0);
			CU_ASSERT_EQUAL(write(fds[1], rows[r].in, strlen(rows[r].in)),
			    (ssize_t)strlen(rows[r].in));
			close(fds[1]);
			fixture_put(&out, "", 0);
			pop3_stream_init(&st, fds[0], rows[r].top);
			while (!done) {
				char chunk[64];
				size_t n;

				CU_ASSERT_EQUAL_FATAL(pop3_stream_read(&st, chunk, cap, &n, &done, &err),
				    0);
				fixture_put(&out, chunk, n);
			}
			close(fds[0]);
			CU_ASSERT_STRING_EQUAL(out.s, rows[r].want);
			free(out.s);
		}
	}
}

static void
test_pop3_uidl_format(void)
{
	char u[17];

	/* Dovecot's pop3_uidl_format = %08Xu%08Xv, whose X writes lower-case hex
	 * (test_pop3_dovecot.py compares with a real Dovecot) */
	pop3_uidl(1, 0x5f3a1b2c, u);
	CU_ASSERT_STRING_EQUAL(u, "000000015f3a1b2c");
	pop3_uidl(0xffffffffu, 1, u);
	CU_ASSERT_STRING_EQUAL(u, "ffffffff00000001");
}

/* a listing bigger than POP3_OUTPUT_CHUNK is made in pieces as the output
 * drains, and pipelined commands wait for its end */
static void
test_pop3_big_listing(void)
{
	struct pop3_params prm = P_OPEN;
	struct env e;
	struct pop3_proto *p;
	struct fixture_buf out = { 0 };
	const char *in = "USER alice\r\nPASS secret\r\nUIDL\r\nSTAT\r\nQUIT\r\n", *err;
	size_t off = 0, n = 3500, lines = 0;
	char *dir, *last;

	CU_ASSERT_EQUAL_FATAL(sasl_init(&err), 0);
	memset(&e, 0, sizeof(e));
	e.root = unit_tmpdir();
	dir = xasprintf("%s/example.com/alice/Maildir", e.root);
	for (const char *sub = "tmp"; sub != NULL; sub = strcmp(sub, "tmp") == 0 ? "new" :
	    strcmp(sub, "new") == 0 ? "cur" : NULL) {
		char *d = xasprintf("%s/%s", dir, sub), *cmd = xasprintf("mkdir -p '%s'", d);

		CU_ASSERT_EQUAL_FATAL(system(cmd), 0);
		free(cmd);
		free(d);
	}
	for (size_t i = 0; i < n; i++) {
		char *path = xasprintf("%s/new/1700000000.M%zuP1Q%zu.host,S=5,W=6", dir, i, i);
		FILE *f = fopen(path, "w");

		CU_ASSERT_PTR_NOT_NULL_FATAL(f);
		fputs("x: y\n", f);
		fclose(f);
		free(path);
	}
	free(dir);
	fixture_put(&out, "", 0);
	p = pop3_proto_new(&prm);
	pop3_proto_start(p, STAMP);
	for (int guard = 0; guard < 1000000 && !pop3_proto_wants_close(p); guard++) {
		size_t len;
		const char *o = pop3_proto_output(p, &len);

		if (len > 0) {
			/* a slow reader: 1000 bytes at a time */
			if (len > 1000)
				len = 1000;
			fixture_put(&out, o, len);
			pop3_proto_output_done(p, len);
			continue;
		}
		if (pop3_proto_action(p) != POP3_ACT_NONE) {
			(void)act(p, &e, &out);
			continue;
		}
		if (in[off] == '\0')
			break;
		off += pop3_proto_input(p, in + off, strlen(in + off));
	}
	drain(p, &out);
	pop3_proto_free(&p);
	for (const char *l = strstr(out.s, "+OK\r\n1 "); l != NULL && strncmp(l, ".\r\n", 3) != 0;) {
		const char *eol = strstr(l, "\r\n");

		lines++;
		l = eol ? eol + 2 : NULL;
	}
	CU_ASSERT_EQUAL(lines, n + 1);	/* "+OK" and one line a message */
	last = xasprintf("3500 %08x%08x\r\n.\r\n+OK 3500 21000\r\n+OK Logging out.\r\n",
	    3500u, e.uidvalidity);
	CU_ASSERT(out.n > strlen(last) && strcmp(out.s + out.n - strlen(last), last) == 0);
	CU_ASSERT(out.n > POP3_OUTPUT_CHUNK);
	free(last);
	free(out.s);
	store_free(&e);
}

static CU_TestInfo tests[] = {
	{ "golden dialogues on a real store, whole/bytewise/random", test_pop3_dialogues },
	{ "RETR/TOP streaming", test_pop3_stream },
	{ "a listing bigger than the output chunk", test_pop3_big_listing },
	{ "UIDL is Dovecot's default", test_pop3_uidl_format },
	{ NULL, NULL },
};

void
test_pop3_proto_register(void)
{
	unit_suite("pop3_proto", tests);
}
