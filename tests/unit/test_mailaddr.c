/* mailaddr: envelope address parsing and the routing tricks it flags. */
#include <string.h>

#include "common/mailaddr.h"
#include "tests/unit/unit.h"

static const struct {
	const char *name, *in, *local, *domain;
	int ok, is_null, route, routing_local, literal;
} cases[] = {
	{ "plain", "<user@example.com>", "user", "example.com", 1, 0, 0, 0, 0 },
	{ "no brackets", "user@example.com", "user", "example.com", 1, 0, 0, 0, 0 },
	{ "null sender", "<>", "", "", 1, 1, 0, 0, 0 },
	{ "empty", "", "", "", 1, 1, 0, 0, 0 },
	{ "domain lower-cased", "<USER@EXAMPLE.COM>", "USER", "example.com", 1, 0, 0, 0, 0 },
	{ "trailing dot dropped", "<u@other.org.>", "u", "other.org", 1, 0, 0, 0, 0 },
	{ "source route kept final", "<@example.com:user@other.org>", "user", "other.org", 1, 0, 1, 0, 0 },
	{ "multi-hop source route", "<@a.example,@b.example:u@c.example>", "u", "c.example", 1, 0, 1, 0, 0 },
	{ "percent hack", "<user%other.org@example.com>", "user%other.org", "example.com", 1, 0, 0, 1, 0 },
	{ "bang path", "<other.org!user@example.com>", "other.org!user", "example.com", 1, 0, 0, 1, 0 },
	{ "quoted @", "<\"user@other.org\"@example.com>", "user@other.org", "example.com", 1, 0, 0, 1, 0 },
	{ "quoted with escape", "<\"a\\\"b\"@example.com>", "a\"b", "example.com", 1, 0, 0, 0, 0 },
	{ "address literal", "<user@[192.0.2.1]>", "user", "[192.0.2.1]", 1, 0, 0, 0, 1 },
	{ "unqualified", "<postmaster>", "postmaster", "", 1, 0, 0, 0, 0 },
	{ "missing >", "<user@example.com", NULL, NULL, 0, 0, 0, 0, 0 },
	{ "route without colon", "<@example.com>", NULL, NULL, 0, 0, 0, 0, 0 },
	{ "unbalanced quote", "<\"user@example.com>", NULL, NULL, 0, 0, 0, 0, 0 },
	{ "empty domain", "<user@>", NULL, NULL, 0, 0, 0, 0, 0 },
	{ "control char", "<us\ter@example.com>", NULL, NULL, 0, 0, 0, 0, 0 },
	{ "space in domain", "<u@exa mple.com>", NULL, NULL, 0, 0, 0, 0, 0 },
};

static void
test_mailaddr_table(void)
{
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct mailaddr a;
		int rc = mailaddr_parse(cases[i].in, &a);

		if (!cases[i].ok) {
			if (rc != -1) {
				fprintf(stderr, "\n  case \"%s\" parsed\n", cases[i].name);
				CU_FAIL("garbage accepted");
			}
			continue;
		}
		if (rc != 0 || strcmp(a.local, cases[i].local) != 0 ||
		    strcmp(a.domain, cases[i].domain) != 0 || a.is_null != cases[i].is_null ||
		    a.source_route != cases[i].route || a.routing_local != cases[i].routing_local ||
		    a.domain_literal != cases[i].literal) {
			fprintf(stderr, "\n  case \"%s\": rc %d local \"%s\" domain \"%s\"\n",
			    cases[i].name, rc, a.local, a.domain);
			CU_FAIL("parse differs");
		}
	}
}

static void
test_mailaddr_overlong(void)
{
	char buf[1200];
	struct mailaddr a;

	memset(buf, 'a', sizeof(buf) - 1);
	buf[sizeof(buf) - 1] = '\0';
	buf[600] = '@';
	CU_ASSERT_EQUAL(mailaddr_parse(buf, &a), -1);
}

static void
test_mailaddr_key(void)
{
	struct mailaddr a;
	char key[2 * MAILADDR_PART_MAX + 2];

	CU_ASSERT_EQUAL(mailaddr_parse("<Mixed.Case@Example.COM>", &a), 0);
	CU_ASSERT_STRING_EQUAL(mailaddr_key(&a, key), "mixed.case@example.com");
}

static CU_TestInfo tests[] = {
	{ "table: forms and routing tricks", test_mailaddr_table },
	{ "over-long parts are refused", test_mailaddr_overlong },
	{ "lookup key is lower case", test_mailaddr_key },
	CU_TEST_INFO_NULL,
};

void
test_mailaddr_register(void)
{
	unit_suite("mailaddr", tests);
}
