/* sieve evaluator: script x message -> actions (with implicit keep and
 * conflicts), match types, comparators, address parts, extensions, and the
 * CPU budget. Each row: a script, a message, the envelope, and the action
 * list as a string ("store:A keep +implicit"), or "ERROR" for a runtime error. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rules/sieve.h"
#include "rules/sieve_ast.h"
#include "tests/unit/unit.h"

#define MSG "Received: from a by b; Mon, 1 Feb 2021 03:04:05 -0800\r\n" \
	"Received: from c by d; Sun, 06 Dec 2026 20:13:52 +0100\r\n" \
	"From: Alice <alice@example.org>\r\nTo: bob+box@example.com, carol@example.net\r\n" \
	"Subject: Hello World\r\nX-Spam-Score: 7\r\nDate: Sun, 06 Dec 2026 20:13:52 +0100\r\n" \
	"Message-ID: <m1@example.org>\r\n\r\nThe body text.\r\n"

static const struct { const char *name, *src, *want; } cases[] = {
	{ "empty script keeps", "", "+implicit" },
	{ "header contains", "require \"fileinto\";\nif header :contains \"subject\" \"world\" "
	  "{ fileinto \"A\"; }", "store:A" },
	{ "header is casemap", "if header :is \"subject\" \"hello world\" { discard; }", "discard" },
	{ "header is octet", "if header :is :comparator \"i;octet\" \"subject\" \"hello world\" "
	  "{ discard; }", "+implicit" },
	{ "matches star and question", "if header :matches \"subject\" \"H?llo *\" { discard; }",
	  "discard" },
	{ "matches escaped star", "if header :matches \"subject\" \"Hello\\\\*\" { discard; }",
	  "+implicit" },
	{ "address domain", "if address :domain \"from\" \"example.org\" { discard; }", "discard" },
	{ "address localpart of list", "if address :localpart \"to\" \"carol\" { discard; }",
	  "discard" },
	{ "address all strips display name", "if address :all :is \"from\" \"alice@example.org\" "
	  "{ discard; }", "discard" },
	{ "envelope from", "require \"envelope\";\nif envelope :is \"from\" \"sender@example.org\" "
	  "{ discard; }", "discard" },
	{ "exists all", "if exists [\"subject\", \"to\"] { discard; }", "discard" },
	{ "exists missing", "if exists [\"subject\", \"x-none\"] { discard; }", "+implicit" },
	{ "size over", "if size :over 10 { discard; }", "discard" },
	{ "size under", "if size :under 10 { discard; }", "+implicit" },
	{ "not and anyof", "if not anyof (false, header :is \"subject\" \"x\") { discard; }",
	  "discard" },
	{ "allof short-circuit false", "if allof (true, false) { discard; }", "+implicit" },
	{ "numeric comparator", "require [\"relational\", \"comparator-i;ascii-numeric\"];\n"
	  "if header :value \"ge\" :comparator \"i;ascii-numeric\" \"x-spam-score\" \"5\" "
	  "{ discard; }", "discard" },
	{ "relational count", "require \"relational\";\nif address :count \"eq\" :comparator "
	  "\"i;ascii-numeric\" \"to\" \"2\" { discard; }", "ERROR-COMPILE" },
	{ "elsif else", "if false { discard; } elsif false { stop; } else { keep; }", "keep" },
	{ "stop keeps implicitly", "stop; discard;", "+implicit" },
	{ "redirect cancels keep", "redirect \"x@example.com\";", "redirect:x@example.com" },
	{ "redirect copy keeps", "require \"copy\";\nredirect :copy \"x@example.com\";",
	  "redirect:x@example.com +implicit" },
	{ "duplicate redirect collapses", "redirect \"x@example.com\";\n"
	  "redirect \"X <x@example.com>\";", "redirect:x@example.com" },
	{ "duplicate fileinto collapses", "require \"fileinto\";\nfileinto \"A\"; fileinto \"A\";",
	  "store:A" },
	{ "fileinto INBOX is the keep", "require \"fileinto\";\nkeep; fileinto \"INBOX\";", "keep" },
	{ "reject conflicts with keep", "require \"reject\";\nkeep; reject \"no\";", "ERROR" },
	{ "reject cancels keep", "require \"reject\";\nreject \"no thanks\";", "reject:no thanks" },
	{ "ereject", "require \"ereject\";\nereject \"no\";", "ereject:no" },
	{ "too many redirects", "redirect \"a@x.y\"; redirect \"b@x.y\"; redirect \"c@x.y\"; "
	  "redirect \"d@x.y\"; redirect \"e@x.y\";", "ERROR" },
	{ "variables and match values", "require [\"variables\", \"fileinto\"];\n"
	  "if header :matches \"subject\" \"* *\" { fileinto \"F.${2}\"; }", "store:F.World" },
	{ "set modifiers", "require [\"variables\", \"fileinto\"];\nset :upper \"a\" \"box\";\n"
	  "fileinto \"${a}\";", "store:BOX" },
	{ "imap4flags on keep", "require \"imap4flags\";\naddflag \"\\\\Seen\";\nkeep;",
	  "keep[\\Seen]" },
	{ "imap4flags implicit keep", "require \"imap4flags\";\nsetflag [\"a\", \"b\"];\n"
	  "removeflag \"a\";", "+implicit[b]" },
	{ "subaddress detail", "require [\"subaddress\", \"fileinto\", \"variables\"];\n"
	  "if address :detail :matches \"to\" \"*\" { fileinto \"${1}\"; }", "store:box" },
	{ "regex", "require \"regex\";\nif header :regex \"subject\" \"^H.l+o\" { discard; }",
	  "discard" },
	{ "body contains", "require \"body\";\nif body :contains \"body text\" { discard; }",
	  "discard" },
	{ "date part", "require \"date\";\nif date :zone \"+0000\" \"date\" \"hour\" \"19\" "
	  "{ discard; }", "discard" },
	{ "date looks at the first field only (differential)", "require \"date\";\n"
	  "if date :zone \"+0000\" \"received\" \"year\" \"2026\" { discard; }", "+implicit" },
	{ "date with :index 2", "require [\"date\", \"index\"];\n"
	  "if date :index 2 :zone \"+0000\" \"received\" \"year\" \"2026\" { discard; }",
	  "discard" },
	{ "editheader delete then test", "require \"editheader\";\ndeleteheader \"subject\";\n"
	  "if not exists \"subject\" { discard; }", "deleteheader:subject discard" },
	{ "vacation action", "require \"vacation\";\nvacation :days 3 \"away\";",
	  "vacation:away +implicit" },
	{ "environment", "require \"environment\";\nif environment :is \"phase\" \"during\" "
	  "{ discard; }", "discard" },
	{ "duplicate first time", "require \"duplicate\";\nif duplicate { discard; }", "+implicit" },
	{ "invalid flag dropped (differential)", "require \"imap4flags\";\n"
	  "setflag \"\\\\\\\\Flagged $work\";", "+implicit[$work]" },
	{ "duplicate of a :copy store keeps the implicit keep (differential)",
	  "require [\"fileinto\", \"copy\"];\nfileinto :copy \"J\"; fileinto \"J\";",
	  "store:J +implicit" },
	{ "include missing optional", "require \"include\";\ninclude :optional \"nope\";",
	  "+implicit" },
};

static char *summary(const struct sieve_result *r)
{
	static char b[1024];
	size_t n = 0;
	b[0] = '\0';
	for (size_t i = 0; i < r->n; i++) {
		const struct sieve_action *a = &r->a[i];
		n += (size_t)snprintf(b + n, sizeof(b) - n, "%s%s", n ? " " : "", sieve_action_name(a));
		if (a->target)
			n += (size_t)snprintf(b + n, sizeof(b) - n, ":%s", a->target);
		if (a->nflags) {
			n += (size_t)snprintf(b + n, sizeof(b) - n, "[");
			for (size_t k = 0; k < a->nflags; k++)
				n += (size_t)snprintf(b + n, sizeof(b) - n, "%s%s", k ? " " : "", a->flags[k]);
			n += (size_t)snprintf(b + n, sizeof(b) - n, "]");
		}
	}
	if (r->implicit_keep) {
		n += (size_t)snprintf(b + n, sizeof(b) - n, "%s+implicit", n ? " " : "");
		if (r->nkeep_flags) {
			n += (size_t)snprintf(b + n, sizeof(b) - n, "[");
			for (size_t k = 0; k < r->nkeep_flags; k++)
				n += (size_t)snprintf(b + n, sizeof(b) - n, "%s%s", k ? " " : "",
				    r->keep_flags[k]);
			n += (size_t)snprintf(b + n, sizeof(b) - n, "]");
		}
	}
	return b;
}

static int seen(void *ctx, const char *k, size_t l) { (void)ctx; (void)k; (void)l; return 0; }
static void mark(void *ctx, const char *k, size_t l, unsigned long s)
{
	(void)k; (void)l; (void)s;
	(*(int *)ctx)++;
}

static void test_sieve_eval_table(void)
{
	struct sieve_msg *m = sieve_msg_parse(MSG, strlen(MSG));
	sieve_msg_set_env(m, "from", "sender@example.org");
	sieve_msg_set_env(m, "to", "bob+box@example.com");
	int marks = 0;
	struct sieve_dupstore dup = { seen, mark, &marks };
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct sieve_errors err = { 0 };
		struct sieve_script *s = NULL;
		struct sieve_result *r = NULL;
		const char *got;
		if (sieve_compile("t", cases[i].src, strlen(cases[i].src), NULL, &s, &err) < 0) {
			got = "ERROR-COMPILE";
		} else {
			struct sieve_run_opts o = { .dup = &dup };
			got = sieve_run(s, m, &o, &r, &err) < 0 ? "ERROR" : summary(r);
		}
		if (strcmp(got, cases[i].want) != 0) {
			fprintf(stderr, "\n  case \"%s\": got \"%s\" (%s)\n", cases[i].name, got,
			    err.n ? err.msg[0] : "");
			CU_FAIL("actions differ");
		}
		sieve_result_free(&r);
		sieve_script_free(&s);
		sieve_errors_clear(&err);
	}
	CU_ASSERT_EQUAL(marks, 1);	/* the duplicate test marked the message once */
	sieve_msg_free(&m);
}

static void test_sieve_eval_cpu_budget(void)
{
	/* a :matches over a long value must stop at the budget, not run away
	 * (the glob is iterative: this one costs about one step per octet) */
	struct sieve_limits l;
	sieve_limits_default(&l);
	l.max_cpu_steps = 1000;
	char subj[4200] = "Subject: ";
	for (int i = 0; i < 4000; i++)
		strcat(subj, "a");
	strcat(subj, "\r\n\r\nx\r\n");
	struct sieve_msg *m = sieve_msg_parse(subj, strlen(subj));
	const char *src = "if header :matches \"subject\" \"*a*a*a*a*a*a*a*a*b\" { discard; }";
	struct sieve_errors err = { 0 };
	struct sieve_script *s = NULL;
	struct sieve_result *r = NULL;
	struct sieve_compile_opts co = { .limits = &l };
	CU_ASSERT_EQUAL(sieve_compile("t", src, strlen(src), &co, &s, &err), 0);
	struct sieve_run_opts o = { .limits = &l };
	CU_ASSERT_EQUAL(sieve_run(s, m, &o, &r, &err), -1);
	CU_ASSERT(err.n == 1 && strstr(err.msg[0], "CPU") != NULL);
	sieve_result_free(&r);
	sieve_script_free(&s);
	sieve_errors_clear(&err);
	sieve_msg_free(&m);
}

/* a tiny in-memory store: remembers keys */
struct memstore { char keys[8][256]; int n; };
static int ms_check(void *ctx, const char *k, size_t l)
{
	struct memstore *m = ctx;
	(void)l;
	for (int i = 0; i < m->n; i++)
		if (!strcmp(m->keys[i], k))
			return 1;
	return 0;
}
static void ms_mark(void *ctx, const char *k, size_t l, unsigned long s)
{
	struct memstore *m = ctx;
	(void)l;
	(void)s;
	if (m->n < 8)
		snprintf(m->keys[m->n++], sizeof(m->keys[0]), "%s", k);
}

static void test_sieve_eval_vacation_tracking(void)
{
	/* one reply per sender within the period; another sender gets one too */
	const char *src = "require \"vacation\";\nvacation :days 1 \"away\";";
	struct sieve_errors err = { 0 };
	struct sieve_script *s = NULL;
	CU_ASSERT_EQUAL(sieve_compile("t", src, strlen(src), NULL, &s, &err), 0);
	struct memstore ms = { .n = 0 };
	struct sieve_dupstore st = { ms_check, ms_mark, &ms };
	struct sieve_vacation_conf vc = { .track = &st };
	const char *senders[] = { "sender@example.org", "sender@example.org", "other@example.org" };
	const int want[] = { 1, 0, 1 };
	for (int i = 0; i < 3; i++) {
		struct sieve_msg *m = sieve_msg_parse(MSG, strlen(MSG));
		sieve_msg_set_env(m, "from", senders[i]);
		sieve_msg_set_env(m, "to", "bob+box@example.com");
		struct sieve_result *r = NULL;
		CU_ASSERT_EQUAL(sieve_run(s, m, NULL, &r, &err), 0);
		CU_ASSERT_EQUAL(sieve_vacation_should_reply(m, &r->a[0], &vc), want[i]);
		sieve_result_free(&r);
		sieve_msg_free(&m);
	}
	CU_ASSERT_EQUAL(ms.n, 2);
	sieve_script_free(&s);
	sieve_errors_clear(&err);
}

static void test_sieve_eval_regex_limit(void)
{
	/* catastrophic backtracking stops at PCRE2's match limit: a runtime error */
	const char *text = "Subject: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!\r\n\r\nx\r\n";
	struct sieve_msg *m = sieve_msg_parse(text, strlen(text));
	const char *src = "require \"regex\";\nif header :regex \"subject\" \"^(a+)+$\" "
	    "{ discard; }";
	struct sieve_errors err = { 0 };
	struct sieve_script *s = NULL;
	struct sieve_result *r = NULL;
	CU_ASSERT_EQUAL(sieve_compile("t", src, strlen(src), NULL, &s, &err), 0);
	CU_ASSERT_EQUAL(sieve_run(s, m, NULL, &r, &err), -1);
	CU_ASSERT(err.n >= 1 && strstr(err.msg[0], "regex match exceeded its limits") != NULL);
	CU_ASSERT(r != NULL && r->failed && r->implicit_keep);	/* the message is kept */
	sieve_result_free(&r);
	sieve_script_free(&s);
	sieve_errors_clear(&err);
	sieve_msg_free(&m);
}

static void test_sieve_eval_vacation_decision(void)
{
	/* never answer the null sender, nor list mail */
	const char *src = "require \"vacation\";\nvacation \"away\";";
	struct sieve_errors err = { 0 };
	struct sieve_script *s = NULL;
	CU_ASSERT_EQUAL(sieve_compile("t", src, strlen(src), NULL, &s, &err), 0);
	const char *texts[] = { MSG, "List-Id: <l.example.org>\r\n" MSG };
	const char *froms[] = { "", "sender@example.org" };
	for (int i = 0; i < 2; i++) {
		struct sieve_msg *m = sieve_msg_parse(texts[i], strlen(texts[i]));
		sieve_msg_set_env(m, "from", froms[i]);
		sieve_msg_set_env(m, "to", "bob+box@example.com");
		struct sieve_result *r = NULL;
		CU_ASSERT_EQUAL(sieve_run(s, m, NULL, &r, &err), 0);
		CU_ASSERT_EQUAL(r->n, 1);
		CU_ASSERT_EQUAL(sieve_vacation_should_reply(m, &r->a[0], NULL), 0);
		sieve_result_free(&r);
		sieve_msg_free(&m);
	}
	struct sieve_msg *m = sieve_msg_parse(MSG, strlen(MSG));
	sieve_msg_set_env(m, "from", "sender@example.org");
	sieve_msg_set_env(m, "to", "bob+box@example.com");
	struct sieve_result *r = NULL;
	CU_ASSERT_EQUAL(sieve_run(s, m, NULL, &r, &err), 0);
	CU_ASSERT_EQUAL(sieve_vacation_should_reply(m, &r->a[0], NULL), 1);
	sieve_result_free(&r);
	sieve_msg_free(&m);
	sieve_script_free(&s);
	sieve_errors_clear(&err);
}

/*
 * The index a message keeps for the runs on it (values per header name,
 * parsed addresses, envelope paths) follows the message: a field added
 * (nhdr), a value changed in place (sieve_msg_changed), an envelope item
 * set again -- each run sees the message as it is, as the levels do.
 */
static const char *run_one(struct sieve_msg *m, const char *src)
{
	static char got[64];
	struct sieve_errors err = { 0 };
	struct sieve_script *s = NULL;
	struct sieve_result *r = NULL;
	snprintf(got, sizeof(got), "ERROR");
	if (sieve_compile("t", src, strlen(src), NULL, &s, &err) == 0 &&
	    sieve_run(s, m, NULL, &r, &err) == 0)
		snprintf(got, sizeof(got), "%s", summary(r));
	sieve_result_free(&r);
	sieve_script_free(&s);
	sieve_errors_clear(&err);
	return got;
}

static void test_sieve_eval_msg_index(void)
{
	struct sieve_msg *m = sieve_msg_parse(MSG, strlen(MSG));
	const char *xnew = "if header :is \"x-new\" \"yes\" { discard; }";
	const char *from = "if address :domain \"from\" \"other.example\" { discard; }";
	const char *env = "require \"envelope\";\n"
	    "if envelope :domain \"from\" \"b.example\" { discard; }";
	sieve_msg_set_env(m, "from", "a@a.example");
	/* names found absent from the index's mask of names, in any case */
	CU_ASSERT_STRING_EQUAL(run_one(m, "if exists [\"FROM\", \"x-absent\"] { discard; }"),
	    "+implicit");
	CU_ASSERT_STRING_EQUAL(run_one(m, "if exists [\"FROM\", \"sUbJeCt\"] { discard; }"),
	    "discard");
	CU_ASSERT_STRING_EQUAL(run_one(m, "require \"relational\";\n"
	    "if header :count \"eq\" \"x-absent\" \"0\" { discard; }"), "discard");
	CU_ASSERT_STRING_EQUAL(run_one(m, "if address :all \"FROM\" \"alice@example.org\" "
	    "{ discard; }"), "discard");
	CU_ASSERT_STRING_EQUAL(run_one(m, "if address :localpart \"from\" \"alice\" "
	    "{ discard; }"), "discard");
	CU_ASSERT_STRING_EQUAL(run_one(m, "if header :contains [\"x-absent\", \"SUBJECT\"] "
	    "\"world\" { discard; }"), "discard");
	CU_ASSERT_STRING_EQUAL(run_one(m, xnew), "+implicit");
	CU_ASSERT_STRING_EQUAL(run_one(m, from), "+implicit");
	CU_ASSERT_STRING_EQUAL(run_one(m, env), "+implicit");
	/* a field added: seen without a word from the caller */
	m->hdr = realloc(m->hdr, (m->nhdr + 1) * sizeof(*m->hdr));
	m->hdr[m->nhdr].name = strdup("X-New");
	m->hdr[m->nhdr++].value = strdup("yes");
	CU_ASSERT_STRING_EQUAL(run_one(m, xnew), "discard");
	CU_ASSERT_STRING_EQUAL(run_one(m, from), "+implicit");
	/* a value changed in place, said with sieve_msg_changed() */
	for (size_t i = 0; i < m->nhdr; i++)
		if (strcmp(m->hdr[i].name, "From") == 0) {
			free(m->hdr[i].value);
			m->hdr[i].value = strdup("Other <o@other.example>");
		}
	sieve_msg_changed(m);
	CU_ASSERT_STRING_EQUAL(run_one(m, from), "discard");
	CU_ASSERT_STRING_EQUAL(run_one(m, "if address :localpart \"from\" \"alice\" "
	    "{ discard; }"), "+implicit");
	CU_ASSERT_STRING_EQUAL(run_one(m, "if address :localpart \"from\" \"o\" "
	    "{ discard; }"), "discard");
	/* the envelope set again */
	sieve_msg_set_env(m, "from", "<b@b.example>");
	CU_ASSERT_STRING_EQUAL(run_one(m, env), "discard");
	sieve_msg_set_env(m, "from", "a@a.example");
	CU_ASSERT_STRING_EQUAL(run_one(m, env), "+implicit");
	sieve_msg_free(&m);

	/* 40 fields: the parse's array grows past its first 16 and 32 */
	char text[2048];
	size_t tl = 0;
	for (int i = 0; i < 40; i++)
		tl += (size_t)snprintf(text + tl, sizeof(text) - tl, "X-N: %d\r\n", i);
	tl += (size_t)snprintf(text + tl, sizeof(text) - tl, "\r\nbody\r\n");
	m = sieve_msg_parse(text, tl);
	CU_ASSERT_EQUAL(m->nhdr, 40);
	CU_ASSERT_STRING_EQUAL(run_one(m, "require \"relational\";\n"
	    "if allof (header :count \"eq\" \"x-n\" \"40\", header :is \"x-n\" \"39\") "
	    "{ discard; }"), "discard");
	sieve_msg_free(&m);
}

/* the plain scan :contains was: every position, its matched length */
static int contains_ref(int comp, const char *h, size_t hl, const char *nd, size_t nl,
    unsigned long *steps)
{
	if (nl == 0)
		return 1;
	for (size_t i = 0; i + nl <= hl; i++) {
		size_t j = 0;
		while (j < nl && (comp == CMP_CASEMAP ? tolower((unsigned char)h[i + j]) ==
		    tolower((unsigned char)nd[j]) : h[i + j] == nd[j]))
			j++;
		*steps += j + 1;
		if (j == nl)
			return 1;
	}
	return 0;
}

/* sv_contains() (memchr for the candidates) answers and counts as the plain
 * scan, for both comparators, on random strings of a few letters */
static void test_sieve_eval_contains_steps(void)
{
	const char alpha[] = "aAbB-\xc3";
	unsigned seed = 12345;
	for (int n = 0; n < 20000; n++) {
		char h[48], nd[8];
		seed = seed * 1103515245u + 12345u;
		size_t hl = (seed >> 8) % 40, nl = (seed >> 20) % 6;
		for (size_t i = 0; i < hl; i++) {
			seed = seed * 1103515245u + 12345u;
			h[i] = alpha[(seed >> 16) % 6];
		}
		for (size_t i = 0; i < nl; i++) {
			seed = seed * 1103515245u + 12345u;
			nd[i] = alpha[(seed >> 16) % 6];
		}
		for (int comp = CMP_CASEMAP; comp <= CMP_OCTET; comp++) {
			unsigned long s1 = 0, s2 = 0;
			int r1 = sv_contains(comp, h, hl, nd, nl, &s1);
			int r2 = contains_ref(comp, h, hl, nd, nl, &s2);
			if (r1 != r2 || s1 != s2) {
				fprintf(stderr, "\n  contains %d/%d steps %lu/%lu (comp %d, %zu/%zu)\n",
				    r1, r2, s1, s2, comp, hl, nl);
				CU_FAIL("sv_contains differs from the plain scan");
				return;
			}
		}
	}
}

static CU_TestInfo tests[] = {
	{ "evaluator table", test_sieve_eval_table },
	{ "CPU budget", test_sieve_eval_cpu_budget },
	{ "vacation decision", test_sieve_eval_vacation_decision },
	{ "regex match limit", test_sieve_eval_regex_limit },
	{ "vacation tracked per sender", test_sieve_eval_vacation_tracking },
	{ "message index follows the message", test_sieve_eval_msg_index },
	{ ":contains counts as the plain scan", test_sieve_eval_contains_steps },
	CU_TEST_INFO_NULL,
};

void test_sieve_eval_register(void)
{
	unit_suite("sieve_eval", tests);
}
