/*
 * The MTA side of the Sieve rules: the script store (install, list, delete,
 * a script that does not compile refused with the previous one in force)
 * and sieve_rules_eval()'s verdict mapping across the server and domain
 * levels (multiscript: what a higher level took, a lower cannot bring back).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/xmalloc.h"
#include "rules/sieve_rules.h"
#include "storage-adapter/sievestore.h"
#include "tests/unit/unit.h"

static const char *msg_text =
    "From: Alice <alice@example.org>\r\n"
    "To: bob@example.com\r\n"
    "Subject: cheap pills\r\n"
    "X-Spam: yes\r\n"
    "\r\n"
    "buy now\r\n";

static char *
mkdir_tmp(void)
{
	char tmpl[] = "/tmp/pc-sieverules-XXXXXX";
	char *d = mkdtemp(tmpl);

	CU_ASSERT_PTR_NOT_NULL_FATAL(d);
	return xstrdup(d);
}

static void
rm_rf(const char *d)
{
	char *cmd = xasprintf("rm -rf '%s'", d);

	if (system(cmd) != 0)
		CU_FAIL("rm -rf");
	free(cmd);
}

static void
install(const char *dir, enum sieve_level l, const char *name, const char *text)
{
	const char *err = NULL;

	if (text == NULL)
		return;
	CU_ASSERT_EQUAL_FATAL(sievestore_install(dir, l, name, text, strlen(text), &err), 0);
}

static const struct {
	const char *server, *domain;	/* scripts; NULL: none */
	const char *rcpt_domain;
	enum sieve_door_action want;
	const char *text;		/* reject text, or a trace substring */
	size_t nredirect;
	int drop_original;
	const char *hdr_name;		/* a header the result must carry, or "!Name" */
} cases[] = {
	{ NULL, NULL, "example.com", SIEVE_DOOR_PASS, NULL, 0, 0, NULL },
	{ "require \"reject\"; if header :contains \"subject\" \"pills\" { reject \"no pills here\"; }",
	  NULL, "example.com", SIEVE_DOOR_REJECT, "no pills here", 0, 0, NULL },
	{ "require \"ereject\"; ereject \"go away\";", NULL, "example.com", SIEVE_DOOR_REJECT,
	  "go away", 0, 0, NULL },
	{ "discard;", NULL, "example.com", SIEVE_DOOR_DISCARD, NULL, 0, 0, NULL },
	{ "require \"fileinto\"; if exists \"x-spam\" { fileinto \"Quarantine\"; }", NULL,
	  "example.com", SIEVE_DOOR_QUARANTINE, NULL, 0, 0, NULL },
	{ "require \"fileinto\"; fileinto \"quarantine\";", NULL, "example.com",
	  SIEVE_DOOR_QUARANTINE, NULL, 0, 0, NULL },
	/* the server discarded: the domain's keep cannot bring it back */
	{ "discard;", "keep;", "example.com", SIEVE_DOOR_DISCARD, "lower levels do not run", 0, 0,
	  NULL },
	/* the server rejected: the domain's fileinto does not run */
	{ "require \"reject\"; reject \"server says no\";",
	  "require \"fileinto\"; fileinto \"Quarantine\";", "example.com", SIEVE_DOOR_REJECT,
	  "server says no", 0, 0, NULL },
	/* the server kept: the domain decides */
	{ "keep;", "require \"reject\"; reject \"domain says no\";", "example.com",
	  SIEVE_DOOR_REJECT, "domain says no", 0, 0, NULL },
	/* another domain's script does not apply */
	{ NULL, "discard;", "example.net", SIEVE_DOOR_PASS, NULL, 0, 0, NULL },
	/* domain lookup ignores case */
	{ NULL, "discard;", "EXAMPLE.COM", SIEVE_DOOR_DISCARD, NULL, 0, 0, NULL },
	{ "require [\"editheader\"]; addheader \"X-Scanned\" \"portcullis\"; deleteheader \"X-Spam\";",
	  NULL, "example.com", SIEVE_DOOR_PASS, NULL, 0, 0, "X-Scanned" },
	{ "require [\"editheader\"]; deleteheader \"X-Spam\";", NULL, "example.com",
	  SIEVE_DOOR_PASS, NULL, 0, 0, "!X-Spam" },
	/* header edits carry over to the next level */
	{ "require [\"editheader\"]; addheader \"X-Level\" \"server\";",
	  "require [\"editheader\"]; if exists \"x-level\" { addheader \"X-Seen\" \"yes\"; }",
	  "example.com", SIEVE_DOOR_PASS, NULL, 0, 0, "X-Seen" },
	{ "require \"copy\"; redirect :copy \"audit@example.net\";", NULL, "example.com",
	  SIEVE_DOOR_PASS, NULL, 1, 0, NULL },
	{ "redirect \"elsewhere@example.net\";", NULL, "example.com", SIEVE_DOOR_PASS, NULL, 1, 1,
	  NULL },
	/* the environment: the client's facts */
	{ "require [\"environment\", \"reject\"]; if environment \"remote-ip\" \"192.0.2.7\" "
	  "{ reject \"bad ip\"; }", NULL, "example.com", SIEVE_DOOR_REJECT, "bad ip", 0, 0, NULL },
	{ "require [\"environment\", \"reject\"]; if environment \"vnd.portcullis.country\" \"FR\" "
	  "{ reject \"country\"; }", NULL, "example.com", SIEVE_DOOR_REJECT, "country", 0, 0, NULL },
	{ "require [\"envelope\", \"reject\"]; if envelope :domain \"from\" \"example.org\" "
	  "{ reject \"envelope\"; }", NULL, "example.com", SIEVE_DOOR_REJECT, "envelope", 0, 0, NULL },
	/* reject text made one printable line */
	{ "require \"reject\"; reject text:\r\nline one\r\nline two\r\n.\r\n;", NULL, "example.com",
	  SIEVE_DOOR_REJECT, "line one line two", 0, 0, NULL },
	/* a runtime failure keeps the message as it came */
	{ "require \"variables\"; set \"a\" \"x\"; redirect \"${a}\";", NULL, "example.com",
	  SIEVE_DOOR_PASS, "run failed", 0, 0, NULL },
};

static void
test_eval_table(void)
{
	struct sieve_limits lim;

	sieve_limits_default(&lim);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *dir = mkdir_tmp();
		struct sieve_rules *r;
		struct sieve_msg *m = sieve_msg_parse(msg_text, strlen(msg_text));
		struct sieve_door_result d;
		const struct sieve_rules *cr;
		int found = 0;

		install(dir, SIEVE_LEVEL_SERVER, NULL, cases[i].server);
		install(dir, SIEVE_LEVEL_DOMAIN, "example.com", cases[i].domain);
		r = sievestore_load(dir, &lim, NULL);
		sieve_msg_set_env(m, "from", "alice@example.org");
		sieve_msg_set_env(m, "to", "bob@example.com");
		sieve_rules_msg_facts(m, "192.0.2.7", "mx.example.org", "mx.example.org", NULL, "FR");
		sieve_rules_eval(r, cases[i].rcpt_domain, m, &lim, &d);
		if (d.action != cases[i].want)
			fprintf(stderr, "\ncase %zu: action %d, want %d\n", i, d.action, cases[i].want);
		CU_ASSERT_EQUAL(d.action, cases[i].want);
		if (cases[i].text != NULL && cases[i].want == SIEVE_DOOR_REJECT) {
			if (strcmp(d.text, cases[i].text) != 0)
				fprintf(stderr, "\ncase %zu: text \"%s\"\n", i, d.text);
			CU_ASSERT_STRING_EQUAL(d.text, cases[i].text);
			CU_ASSERT_STRING_EQUAL(d.tag ? d.tag : "", "sieve-reject");
		} else if (cases[i].text != NULL) {
			for (size_t k = 0; k < d.ntrace; k++)
				found |= strstr(d.trace[k], cases[i].text) != NULL;
			if (!found)
				fprintf(stderr, "\ncase %zu: no trace line with \"%s\"\n", i, cases[i].text);
			CU_ASSERT(found);
		}
		CU_ASSERT_EQUAL(d.nredirect, cases[i].nredirect);
		CU_ASSERT_EQUAL(d.drop_original, cases[i].drop_original);
		if (cases[i].hdr_name != NULL) {
			const char *h = cases[i].hdr_name;
			int neg = h[0] == '!';

			found = 0;
			CU_ASSERT_PTR_NOT_NULL(d.hdr);
			for (size_t k = 0; k < d.nhdr; k++)
				found |= strcasecmp(d.hdr[k].name, h + neg) == 0;
			CU_ASSERT_EQUAL(found, !neg);
		}
		if (d.action == SIEVE_DOOR_DISCARD)
			CU_ASSERT_STRING_EQUAL(d.tag ? d.tag : "", "sieve-discard");
		sieve_door_result_free(&d);
		sieve_msg_free(&m);
		cr = r;
		sieve_rules_unref(&cr);
		rm_rf(dir);
		free(dir);
	}
}

static void
count_cb(void *arg, enum sieve_level l, const char *name, const char *path)
{
	(void)l; (void)name; (void)path;
	(*(int *)arg)++;
}

static void
test_store(void)
{
	char *dir = mkdir_tmp();
	struct sieve_limits lim;
	struct sieve_rules *r1, *r2;
	const struct sieve_rules *c;
	const char *err = NULL;
	char *text, *p;
	size_t len;
	int n = 0;

	sieve_limits_default(&lim);
	install(dir, SIEVE_LEVEL_SERVER, NULL, "keep;");
	install(dir, SIEVE_LEVEL_DOMAIN, "Example.COM", "discard;");
	install(dir, SIEVE_LEVEL_USER, "bob@example.com", "keep;");
	sievestore_list(dir, count_cb, &n);
	CU_ASSERT_EQUAL(n, 3);
	CU_ASSERT_EQUAL(sievestore_read(dir, SIEVE_LEVEL_DOMAIN, "example.com", &text, &len, &err), 0);
	CU_ASSERT_STRING_EQUAL(text, "discard;");
	free(text);
	/* names that are no file names */
	CU_ASSERT_EQUAL(sievestore_path(dir, SIEVE_LEVEL_DOMAIN, "../x", &p, &err), -1);
	CU_ASSERT_EQUAL(sievestore_path(dir, SIEVE_LEVEL_DOMAIN, ".hidden", &p, &err), -1);
	CU_ASSERT_EQUAL(sievestore_path(dir, SIEVE_LEVEL_USER, "nodomain", &p, &err), -1);
	CU_ASSERT_EQUAL(sievestore_path(dir, SIEVE_LEVEL_DOMAIN, "a@b", &p, &err), -1);
	r1 = sievestore_load(dir, &lim, NULL);
	CU_ASSERT_PTR_NOT_NULL(r1->server);
	CU_ASSERT_EQUAL(r1->ndom, 1);
	CU_ASSERT_PTR_NOT_NULL(sieve_rules_domain(r1, "example.com"));
	/* a broken replacement is refused: the previous compiled version stays */
	install(dir, SIEVE_LEVEL_SERVER, NULL, "if true { keep;");
	r2 = sievestore_load(dir, &lim, r1);
	CU_ASSERT_PTR_EQUAL(r2->server, r1->server);
	CU_ASSERT_PTR_EQUAL(r2->dom[0], r1->dom[0]);	/* unchanged: shared */
	c = r1;
	sieve_rules_unref(&c);
	CU_ASSERT_EQUAL(sievestore_delete(dir, SIEVE_LEVEL_DOMAIN, "example.com", &err), 0);
	CU_ASSERT_EQUAL(sievestore_delete(dir, SIEVE_LEVEL_DOMAIN, "example.com", &err), -1);
	r1 = sievestore_load(dir, &lim, r2);
	CU_ASSERT_EQUAL(r1->ndom, 0);
	CU_ASSERT_PTR_NOT_NULL(r1->server);	/* still the good old one */
	c = r2;
	sieve_rules_unref(&c);
	c = r1;
	sieve_rules_unref(&c);
	rm_rf(dir);
	free(dir);
}

static void
test_publish(void)
{
	struct sieve_rules_ref ref;
	const struct sieve_rules *a, *b;

	sieve_rules_ref_init(&ref, sieve_rules_new());
	a = sieve_rules_ref_get(&ref);
	sieve_rules_ref_publish(&ref, sieve_rules_new());
	b = sieve_rules_ref_get(&ref);
	CU_ASSERT_PTR_NOT_EQUAL(a, b);
	CU_ASSERT_FALSE(sieve_rules_any(a));	/* still readable: held */
	sieve_rules_unref(&a);
	sieve_rules_unref(&b);
	sieve_rules_ref_deinit(&ref);
}

static CU_TestInfo tests[] = {
	{ "eval table (levels, verdicts, edits, redirects)", test_eval_table },
	{ "store: install, list, delete, broken refused", test_store },
	{ "publish: readers hold snapshots", test_publish },
	CU_TEST_INFO_NULL,
};

void
test_sieve_rules_register(void)
{
	unit_suite("sieve_rules", tests);
}
