/* cidr: address and prefix parsing, longest-prefix match. */
#include <stdlib.h>
#include <string.h>

#include "common/cidr.h"
#include "tests/unit/unit.h"

static const struct { const char *name, *in, *canon; int ok; } parse_cases[] = {
	{ "bare v4", "192.0.2.1", "192.0.2.1", 1 },
	{ "v4 /24", "192.0.2.0/24", "192.0.2.0/24", 1 },
	{ "v4 /0", "0.0.0.0/0", "0.0.0.0/0", 1 },
	{ "v4 /32 shown bare", "192.0.2.1/32", "192.0.2.1", 1 },
	{ "bare v6", "2001:db8::1", "2001:db8::1", 1 },
	{ "v6 bracketed", "[2001:db8::1]", "2001:db8::1", 1 },
	{ "v6 /32", "2001:DB8::/32", "2001:db8::/32", 1 },
	{ "v6 /0", "::/0", "::/0", 1 },
	{ "v6 /128 shown bare", "::1/128", "::1", 1 },
	{ "v4-mapped becomes v4", "::ffff:192.0.2.7", "192.0.2.7", 1 },
	{ "v4-mapped prefix in v6 length", "::ffff:192.0.2.0/120", "192.0.2.0/24", 1 },
	{ "host bits set v4", "192.0.2.1/24", NULL, 0 },
	{ "host bits set v6", "2001:db8::1/64", NULL, 0 },
	{ "length over 32", "192.0.2.0/33", NULL, 0 },
	{ "length over 128", "::/129", NULL, 0 },
	{ "empty length", "192.0.2.0/", NULL, 0 },
	{ "signed length", "192.0.2.0/+8", NULL, 0 },
	{ "length with junk", "10.0.0.0/8x", NULL, 0 },
	{ "short v4", "10.1", NULL, 0 },
	{ "octet over 255", "256.1.1.1", NULL, 0 },
	{ "words", "localhost", NULL, 0 },
	{ "empty", "", NULL, 0 },
	{ "unclosed bracket", "[::1", NULL, 0 },
	{ "v4 in brackets", "[192.0.2.1]", NULL, 0 },
	{ "two slashes", "10.0.0.0/8/8", NULL, 0 },
	{ "very long", "1111111111111111111111111111111111111111111111111111111111111111111111", NULL, 0 },
};

static void
test_cidr_parse_table(void)
{
	for (size_t i = 0; i < sizeof(parse_cases) / sizeof(parse_cases[0]); i++) {
		struct cidr c;
		const char *err = NULL;
		char buf[CIDR_TEXT_MAX];
		int rc = cidr_parse(parse_cases[i].in, &c, &err);

		if (parse_cases[i].ok) {
			CU_ASSERT_EQUAL(rc, 0);
			if (rc == 0 && strcmp(cidr_format(&c, buf), parse_cases[i].canon) != 0) {
				fprintf(stderr, "\n  case \"%s\": got %s\n", parse_cases[i].name, buf);
				CU_FAIL("canonical form differs");
			}
		} else {
			if (rc != -1 || err == NULL) {
				fprintf(stderr, "\n  case \"%s\" parsed\n", parse_cases[i].name);
				CU_FAIL("garbage accepted");
			}
		}
	}
}

static struct ipaddr
A(const char *s)
{
	struct ipaddr a;

	if (cidr_addr_parse(s, &a) < 0)
		CU_FAIL_FATAL("bad test address");
	return a;
}

static struct cidr
C(const char *s)
{
	struct cidr c;
	const char *err;

	if (cidr_parse(s, &c, &err) < 0)
		CU_FAIL_FATAL("bad test prefix");
	return c;
}

static void
test_cidrtab_lookup_table(void)
{
	static const char *prefixes[] = {
		"10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.3",	/* nested */
		"192.0.2.0/24", "192.0.2.128/25",			/* overlapping */
		"255.255.255.255", "0.0.0.0/32",			/* edges */
		"2001:db8::/32", "2001:db8:1::/48", "::1",
		"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
		"172.16.0.0/12", "172.16.0.0/12",			/* duplicate: later wins */
	};
	static const struct { const char *addr; int want; } q[] = {
		{ "10.9.9.9", 0 }, { "10.1.9.9", 1 }, { "10.1.2.9", 2 }, { "10.1.2.3", 3 },
		{ "10.1.2.4", 2 }, { "10.255.255.255", 0 }, { "11.0.0.0", -1 }, { "9.255.255.255", -1 },
		{ "192.0.2.1", 4 }, { "192.0.2.127", 4 }, { "192.0.2.128", 5 }, { "192.0.2.255", 5 },
		{ "192.0.3.0", -1 }, { "255.255.255.255", 6 }, { "255.255.255.254", -1 },
		{ "0.0.0.0", 7 }, { "0.0.0.1", -1 },
		{ "2001:db8::5", 8 }, { "2001:db8:1::5", 9 }, { "2001:db8:2::", 8 },
		{ "2001:db9::", -1 }, { "::1", 10 }, { "::2", -1 }, { "::", -1 },
		{ "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 11 },
		{ "::ffff:10.1.2.3", 3 },	/* v4-mapped looks up as v4 */
		{ "172.20.0.1", 13 },
	};
	struct cidrtab_builder *b = cidrtab_builder_new();
	struct cidrtab *t;

	for (size_t i = 0; i < sizeof(prefixes) / sizeof(prefixes[0]); i++) {
		struct cidr c = C(prefixes[i]);

		cidrtab_builder_add(b, &c, (uint32_t)i);
	}
	t = cidrtab_build(&b);
	CU_ASSERT_PTR_NULL(b);
	for (size_t i = 0; i < sizeof(q) / sizeof(q[0]); i++) {
		struct ipaddr a = A(q[i].addr);
		uint32_t got = cidrtab_lookup(t, &a);
		uint32_t want = q[i].want < 0 ? CIDRTAB_NONE : (uint32_t)q[i].want;

		if (got != want) {
			fprintf(stderr, "\n  lookup %s: got %d want %d\n", q[i].addr, (int)got, (int)want);
			CU_FAIL("lookup differs");
		}
	}
	cidrtab_free(&t);
	CU_ASSERT_PTR_NULL(t);
}

static void
test_cidrtab_default_routes(void)
{
	struct cidrtab_builder *b = cidrtab_builder_new();
	struct cidr c4 = C("0.0.0.0/0"), c6 = C("::/0");
	struct ipaddr a;
	struct cidrtab *t;

	cidrtab_builder_add(b, &c4, 4);
	cidrtab_builder_add(b, &c6, 6);
	t = cidrtab_build(&b);
	a = A("1.2.3.4");
	CU_ASSERT_EQUAL(cidrtab_lookup(t, &a), 4);
	a = A("255.255.255.255");
	CU_ASSERT_EQUAL(cidrtab_lookup(t, &a), 4);
	a = A("2001:db8::1");
	CU_ASSERT_EQUAL(cidrtab_lookup(t, &a), 6);
	cidrtab_free(&t);

	b = cidrtab_builder_new();	/* empty table */
	t = cidrtab_build(&b);
	a = A("1.2.3.4");
	CU_ASSERT_EQUAL(cidrtab_lookup(t, &a), CIDRTAB_NONE);
	a = A("::1");
	CU_ASSERT_EQUAL(cidrtab_lookup(t, &a), CIDRTAB_NONE);
	cidrtab_free(&t);
}

/* random prefixes, checked against a linear longest-prefix scan */
static void
test_cidrtab_random_vs_linear(void)
{
	enum { N = 3000, Q = 20000 };
	struct cidr *pref = calloc(N, sizeof(*pref));
	struct cidrtab_builder *b = cidrtab_builder_new();
	struct cidrtab *t;
	unsigned seed = 12345;

	for (int i = 0; i < N; i++) {
		unsigned len = (unsigned)(rand_r(&seed) % 33);
		uint32_t a = (uint32_t)rand_r(&seed) << 1 ^ (uint32_t)rand_r(&seed);

		/* cluster prefixes so they overlap often */
		a = (a & 0x00ffffffu) | (uint32_t)(rand_r(&seed) % 4) << 24;
		pref[i].addr.family = 4;
		pref[i].addr.v4 = len ? a & ~((len == 32) ? 0u : (0xffffffffu >> len)) : 0;
		pref[i].len = (uint8_t)len;
		cidrtab_builder_add(b, &pref[i], (uint32_t)i);
	}
	t = cidrtab_build(&b);
	for (int k = 0; k < Q; k++) {
		struct ipaddr a = { .family = 4 };
		int best = -1;

		a.v4 = ((uint32_t)rand_r(&seed) << 1 ^ (uint32_t)rand_r(&seed)) & 0x03ffffffu;
		for (int i = 0; i < N; i++)
			if (cidr_contains(&pref[i], &a) &&
			    (best < 0 || pref[i].len >= pref[best].len))
				best = i;
		if (cidrtab_lookup(t, &a) != (best < 0 ? CIDRTAB_NONE : (uint32_t)best)) {
			CU_FAIL("random lookup differs from linear scan");
			break;
		}
	}
	cidrtab_free(&t);
	free(pref);
}

static void
test_cidr_contains_families(void)
{
	struct cidr c = C("10.0.0.0/8");
	struct ipaddr v6 = A("::a00:1"), v4 = A("10.0.0.1");

	CU_ASSERT_TRUE(cidr_contains(&c, &v4));
	CU_ASSERT_FALSE(cidr_contains(&c, &v6));
}

static CU_TestInfo tests[] = {
	{ "parse table (v4, v6, mapped, garbage)", test_cidr_parse_table },
	{ "LPM: nested, overlapping, edges, duplicates", test_cidrtab_lookup_table },
	{ "LPM: /0 and empty tables", test_cidrtab_default_routes },
	{ "LPM: random prefixes vs linear scan", test_cidrtab_random_vs_linear },
	{ "contains never crosses families", test_cidr_contains_families },
	CU_TEST_INFO_NULL,
};

void
test_cidr_register(void)
{
	unit_suite("cidr", tests);
}
