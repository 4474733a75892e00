/*
 * The proxy's backend login (pop-imap-proxy/proxy_reply, issue 12): one row
 * per dialogue, the backend's lines fed one by one ("TLS" for a finished
 * handshake), the lines the machine sent (all of them, in order), its last
 * verdict and the post-login CAPABILITY it kept.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/CUnit.h>

#include "pop-imap-proxy/proxy_reply.h"
#include "tests/unit/unit.h"

#define B64 "AGFsaWNlQGV4YW1wbGUuY29tAHB3"	/* "\0alice@example.com\0pw" */
#define IMAP_ID "I ID (\"x-originating-ip\" \"192.0.2.7\" \"x-originating-port\" \"50000\" " \
	"\"x-connected-ip\" \"127.0.0.1\" \"x-connected-port\" \"143\")\r\n"

static const char *const act_name[] = { "NONE", "SEND", "STARTTLS", "OK", "REFUSED",
	"UNAVAILABLE" };

static void
test_dialogues(void)
{
	static const struct {
		const char *name;
		int imap, starttls, client;
		const char *backend;	/* lines separated by '\n'; "TLS": handshake done */
		enum proxy_reply_act last;
		const char *sent;
		const char *caps;	/* NULL: not checked */
	} t[] = {
		{ "imap: SASL-IR, the tagged OK carries the CAPABILITY", 1, 0, 0,
		  "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN] hi\nL OK [CAPABILITY IMAP4rev1 IDLE] in",
		  PR_OK, "L AUTHENTICATE PLAIN " B64 "\r\n", "IMAP4rev1 IDLE" },
		{ "imap: no SASL-IR: the response after the +", 1, 0, 0,
		  "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] hi\n+ \nL OK [CAPABILITY IMAP4rev1 X] in",
		  PR_OK, "L AUTHENTICATE PLAIN\r\n" B64 "\r\n", "IMAP4rev1 X" },
		{ "imap: an OK without CAPABILITY: asked for", 1, 0, 0,
		  "* OK hi\n+\nL OK in\n* CAPABILITY IMAP4rev1 IDLE\nC OK done",
		  PR_OK, "L AUTHENTICATE PLAIN\r\n" B64 "\r\nC CAPABILITY\r\n", "IMAP4rev1 IDLE" },
		{ "imap: a bare greeting and a bare OK (nothing after the status)", 1, 0, 0,
		  "* OK\n+\nL OK\n* CAPABILITY IMAP4rev1\nC OK",
		  PR_OK, "L AUTHENTICATE PLAIN\r\n" B64 "\r\nC CAPABILITY\r\n", "IMAP4rev1" },
		{ "imap: an untagged CAPABILITY before a bare OK is not the post-login one", 1, 0, 0,
		  "* OK [CAPABILITY SASL-IR]\n* CAPABILITY OLD\nL OK",
		  PR_SEND, "L AUTHENTICATE PLAIN " B64 "\r\nC CAPABILITY\r\n", "" },
		{ "imap: NO refuses", 1, 0, 0, "* OK [CAPABILITY SASL-IR]\nL NO [AUTHENTICATIONFAILED] no",
		  PR_REFUSED, "L AUTHENTICATE PLAIN " B64 "\r\n", NULL },
		{ "imap: NO [UNAVAILABLE] is unavailable", 1, 0, 0,
		  "* OK [CAPABILITY SASL-IR]\nL NO [UNAVAILABLE] later",
		  PR_UNAVAILABLE, "L AUTHENTICATE PLAIN " B64 "\r\n", NULL },
		{ "imap: BAD is unavailable", 1, 0, 0, "* OK [CAPABILITY SASL-IR]\nL BAD what",
		  PR_UNAVAILABLE, "L AUTHENTICATE PLAIN " B64 "\r\n", NULL },
		{ "imap: NOT is not NO", 1, 0, 0, "* OK [CAPABILITY SASL-IR]\nL NOT",
		  PR_UNAVAILABLE, "L AUTHENTICATE PLAIN " B64 "\r\n", NULL },
		{ "imap: a BYE greeting", 1, 0, 0, "* BYE busy", PR_UNAVAILABLE, "", NULL },
		{ "imap: * OKAY is no greeting", 1, 0, 0, "* OKAY", PR_UNAVAILABLE, "", NULL },
		{ "imap: status words in lower case", 1, 0, 0, "* ok hi\n+\nL ok",
		  PR_SEND, "L AUTHENTICATE PLAIN\r\n" B64 "\r\nC CAPABILITY\r\n", NULL },
		{ "imap: another tag's OK is not ours", 1, 0, 0, "* OK [CAPABILITY SASL-IR]\nl OK",
		  PR_NONE, "L AUTHENTICATE PLAIN " B64 "\r\n", NULL },
		{ "imap: untagged lines during the login are skipped", 1, 0, 0,
		  "* OK [CAPABILITY SASL-IR]\n* NO warning\n* CAPABILITY A\nL OK [CAPABILITY B]",
		  PR_OK, "L AUTHENTICATE PLAIN " B64 "\r\n", "B" },
		{ "imap: an unterminated CAPABILITY code is none", 1, 0, 0,
		  "* OK [CAPABILITY SASL-IR\n+\nL OK [CAPABILITY B",
		  PR_SEND, "L AUTHENTICATE PLAIN\r\n" B64 "\r\nC CAPABILITY\r\n", "" },
		{ "imap: STARTTLS, then the login", 1, 1, 0,
		  "* OK [CAPABILITY IMAP4rev1 STARTTLS SASL-IR]\n* note\nS OK go\nTLS\nL OK [CAPABILITY Z]",
		  PR_OK, "S STARTTLS\r\nL AUTHENTICATE PLAIN " B64 "\r\n", "Z" },
		{ "imap: STARTTLS asked though the greeting lists no CAPABILITY", 1, 1, 0,
		  "* OK hi\nS OK", PR_STARTTLS, "S STARTTLS\r\n", NULL },
		{ "imap: STARTTLS not offered: never plaintext", 1, 1, 0,
		  "* OK [CAPABILITY IMAP4rev1 SASL-IR]", PR_UNAVAILABLE, "", NULL },
		{ "imap: STARTTLS refused", 1, 1, 0, "* OK [CAPABILITY STARTTLS]\nS NO", PR_UNAVAILABLE,
		  "S STARTTLS\r\n", NULL },
		{ "imap: a line during the handshake", 1, 1, 0, "* OK [CAPABILITY STARTTLS]\nS OK\n* OK",
		  PR_UNAVAILABLE, "S STARTTLS\r\n", NULL },
		{ "imap: a handshake nobody asked for", 1, 0, 0, "TLS", PR_UNAVAILABLE, "", NULL },
		{ "imap: the client's address by ID, then the login", 1, 0, 1,
		  "* OK [CAPABILITY SASL-IR ID]\n* ID NIL\nI OK\nL OK [CAPABILITY Y]",
		  PR_OK, IMAP_ID "L AUTHENTICATE PLAIN " B64 "\r\n", "Y" },
		{ "imap: an ID refused still logs in", 1, 0, 1,
		  "* OK [CAPABILITY SASL-IR]\nI BAD no ID here\nL OK [CAPABILITY Y]",
		  PR_OK, IMAP_ID "L AUTHENTICATE PLAIN " B64 "\r\n", "Y" },
		{ "imap: lines after the verdict repeat it", 1, 0, 0,
		  "* OK [CAPABILITY SASL-IR]\nL NO\n* OK\nL OK", PR_REFUSED,
		  "L AUTHENTICATE PLAIN " B64 "\r\n", NULL },
		{ "pop3: USER, PASS", 0, 0, 0, "+OK hi\n+OK\n+OK in", PR_OK,
		  "USER alice@example.com\r\nPASS pw\r\n", NULL },
		{ "pop3: USER refused", 0, 0, 0, "+OK hi\n-ERR who", PR_REFUSED,
		  "USER alice@example.com\r\n", NULL },
		{ "pop3: PASS refused", 0, 0, 0, "+OK\n+OK\n-ERR [AUTH] no", PR_REFUSED,
		  "USER alice@example.com\r\nPASS pw\r\n", NULL },
		{ "pop3: -ERR [SYS/TEMP] is unavailable", 0, 0, 0, "+OK\n+OK\n-ERR [SYS/TEMP] later",
		  PR_UNAVAILABLE, "USER alice@example.com\r\nPASS pw\r\n", NULL },
		{ "pop3: -ERR [IN-USE] is unavailable", 0, 0, 0, "+OK\n+OK\n-ERR [IN-USE] locked",
		  PR_UNAVAILABLE, "USER alice@example.com\r\nPASS pw\r\n", NULL },
		{ "pop3: a -ERR greeting", 0, 0, 0, "-ERR go away", PR_UNAVAILABLE, "", NULL },
		{ "pop3: STLS, then the login", 0, 1, 0, "+OK hi\n+OK go\nTLS\n+OK\n+OK", PR_OK,
		  "STLS\r\nUSER alice@example.com\r\nPASS pw\r\n", NULL },
		{ "pop3: STLS refused", 0, 1, 0, "+OK hi\n-ERR no", PR_UNAVAILABLE, "STLS\r\n", NULL },
		{ "pop3: XCLIENT, answered either way, then the login", 0, 0, 1,
		  "+OK\n-ERR not trusted\n+OK\n+OK", PR_OK,
		  "XCLIENT ADDR=192.0.2.7 PORT=50000\r\nUSER alice@example.com\r\nPASS pw\r\n", NULL },
	};

	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		struct proxy_reply *pr = proxy_reply_new(t[i].imap, t[i].starttls,
		    "alice@example.com", "pw");
		char sent[2048] = "", *script = strdup(t[i].backend), *save = NULL;
		enum proxy_reply_act act = PR_NONE;
		int ok;

		if (t[i].client)
			proxy_reply_set_client(pr, "192.0.2.7", 50000, "127.0.0.1", 143);
		for (char *l = strtok_r(script, "\n", &save); l != NULL;
		    l = strtok_r(NULL, "\n", &save)) {
			/* each line in a buffer of its exact size: ASan sees any overrun */
			size_t n = strlen(l);
			char *exact = malloc(n ? n : 1);

			memcpy(exact, l, n);
			act = strcmp(l, "TLS") == 0 ? proxy_reply_tls_done(pr) :
			    proxy_reply_line(pr, exact, n);
			free(exact);
			if (act == PR_SEND)
				strncat(sent, proxy_reply_out(pr), sizeof(sent) - strlen(sent) - 1);
		}
		ok = act == t[i].last && strcmp(sent, t[i].sent) == 0 &&
		    (t[i].caps == NULL || strcmp(proxy_reply_caps(pr), t[i].caps) == 0) &&
		    proxy_reply_is_done(pr) == (act >= PR_OK) &&
		    (act < PR_REFUSED) == (proxy_reply_why(pr)[0] == '\0');
		if (!ok)
			fprintf(stderr, "\n  %s: got %s, sent \"%s\", caps \"%s\", why \"%s\"\n",
			    t[i].name, act_name[act], sent, proxy_reply_caps(pr), proxy_reply_why(pr));
		CU_ASSERT(ok);
		free(script);
		proxy_reply_free(&pr);
		CU_ASSERT_PTR_NULL(pr);
	}
}

/* a line at the cap is taken, one byte more or a NUL ends the login */
static void
test_line_limits(void)
{
	static const struct {
		const char *name;
		size_t len;
		int nul;
		enum proxy_reply_act want;
	} t[] = {
		{ "at the cap", PROXY_REPLY_LINE_MAX, 0, PR_SEND },
		{ "one past the cap", PROXY_REPLY_LINE_MAX + 1, 0, PR_UNAVAILABLE },
		{ "a NUL inside", 40, 1, PR_UNAVAILABLE },
	};

	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		struct proxy_reply *pr = proxy_reply_new(1, 0, "u", "p");
		char *l = malloc(t[i].len);

		memset(l, 'x', t[i].len);
		memcpy(l, "* OK ", 5);
		if (t[i].nul)
			l[20] = '\0';
		CU_ASSERT_EQUAL(proxy_reply_line(pr, l, t[i].len), t[i].want);
		free(l);
		proxy_reply_free(&pr);
	}
}

void
test_proxy_reply_register(void)
{
	static CU_TestInfo tests[] = {
		{ "the backend login's dialogues", test_dialogues },
		{ "backend line limits", test_line_limits },
		CU_TEST_INFO_NULL,
	};

	unit_suite("proxy_reply", tests);
}
