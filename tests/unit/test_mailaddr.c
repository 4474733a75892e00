/*
 * mailaddr: the one envelope address parser (RFC 5321 §4.1.2) and formatter.
 * Each row: input, whether it parses, the parts, the flags, and the
 * formatted form (what is logged, stored and sent downstream).
 */
#include <string.h>

#include "common/mailaddr.h"
#include "tests/unit/unit.h"

static const struct {
	const char *name, *in;
	int ok;
	const char *local, *domain, *formatted;
	int is_null, route, routing_local, literal;
} cases[] = {
	/* plain forms */
	{ "plain", "<user@example.com>", 1, "user", "example.com", "user@example.com", 0, 0, 0, 0 },
	{ "no brackets", "user@example.com", 1, "user", "example.com", "user@example.com", 0, 0, 0, 0 },
	{ "white space around", "  <user@example.com>\t", 1, "user", "example.com",
	  "user@example.com", 0, 0, 0, 0 },
	{ "null sender", "<>", 1, "", "", "", 1, 0, 0, 0 },
	{ "empty", "", 1, "", "", "", 1, 0, 0, 0 },
	{ "domain lower-cased, local kept", "<USER@EXAMPLE.COM>", 1, "USER", "example.com",
	  "USER@example.com", 0, 0, 0, 0 },
	{ "trailing dot dropped", "<u@other.org.>", 1, "u", "other.org", "u@other.org", 0, 0, 0, 0 },
	{ "dotted local part", "<first.last@example.com>", 1, "first.last", "example.com",
	  "first.last@example.com", 0, 0, 0, 0 },
	{ "atext specials", "<a+b=c/d{e}~f'g@example.com>", 1, "a+b=c/d{e}~f'g", "example.com",
	  "a+b=c/d{e}~f'g@example.com", 0, 0, 0, 0 },
	{ "underscore in domain tolerated", "<u@mail_1.example.com>", 1, "u", "mail_1.example.com",
	  "u@mail_1.example.com", 0, 0, 0, 0 },
	{ "unqualified", "<postmaster>", 1, "postmaster", "", "postmaster", 0, 0, 0, 0 },
	/* source routes: accepted, dropped (RFC 5321 §4.1.2 C, as Postfix) */
	{ "source route dropped", "<@example.com:user@other.org>", 1, "user", "other.org",
	  "user@other.org", 0, 1, 0, 0 },
	{ "multi-hop source route", "<@a.example,@b.example:u@c.example>", 1, "u", "c.example",
	  "u@c.example", 0, 1, 0, 0 },
	{ "route without colon", "<@example.com>", 0, NULL, NULL, NULL, 0, 0, 0, 0 },
	{ "route with empty domain", "<@:u@example.com>", 0, NULL, NULL, NULL, 0, 0, 0, 0 },
	{ "route to nothing", "<@a.example:>", 0, NULL, NULL, NULL, 0, 0, 0, 0 },
	{ "route with a literal", "<@[192.0.2.1]:u@example.com>", 0, NULL, NULL, NULL, 0, 0, 0, 0 },
	/* % and ! routing: parse, flagged */
	{ "percent hack", "<user%other.org@example.com>", 1, "user%other.org", "example.com",
	  "user%other.org@example.com", 0, 0, 1, 0 },
	{ "bang path", "<other.org!user@example.com>", 1, "other.org!user", "example.com",
	  "other.org!user@example.com", 0, 0, 1, 0 },
	/* quoted local parts: unquoted inside, re-quoted on the way out */
	{ "quoted @", "<\"user@other.org\"@example.com>", 1, "user@other.org", "example.com",
	  "\"user@other.org\"@example.com", 0, 0, 1, 0 },
	{ "quoted with escape", "<\"a\\\"b\"@example.com>", 1, "a\"b", "example.com",
	  "\"a\\\"b\"@example.com", 0, 0, 0, 0 },
	{ "quoted backslash", "<\"a\\\\b\"@example.com>", 1, "a\\b", "example.com",
	  "\"a\\\\b\"@example.com", 0, 0, 0, 0 },
	{ "needless quotes dropped", "<\"Alice\"@Example.COM.>", 1, "Alice", "example.com",
	  "Alice@example.com", 0, 0, 0, 0 },
	{ "quoted > and space (ESMTP injection)", "<\"root> NOTIFY=NEVER\"@example.com>", 1,
	  "root> NOTIFY=NEVER", "example.com", "\"root> NOTIFY=NEVER\"@example.com", 0, 0, 0, 0 },
	{ "quoted comment characters", "<\"a(b)\"@example.com>", 1, "a(b)", "example.com",
	  "\"a(b)\"@example.com", 0, 0, 0, 0 },
	{ "quoted double dot", "<\"a..b\"@example.com>", 1, "a..b", "example.com",
	  "\"a..b\"@example.com", 0, 0, 0, 0 },
	{ "quoted postmaster", "<\"postmaster\">", 1, "postmaster", "", "postmaster", 0, 0, 0, 0 },
	{ "empty quoted local part", "<\"\"@example.com>", 0, NULL, NULL, NULL, 0, 0, 0, 0 },
	{ "unbalanced quote", "<\"user@example.com>", 0, NULL, NULL, NULL, 0, 0, 0, 0 },
	{ "quote in the middle", "<a\"b\"@example.com>", 0, NULL, NULL, NULL, 0, 0, 0, 0 },
	{ "text after the quote", "<\"a\"b@example.com>", 0, NULL, NULL, NULL, 0, 0, 0, 0 },
	{ "control char in quotes", "<\"a\tb\"@example.com>", 0, NULL, NULL, NULL, 0, 0, 0, 0 },
	{ "quoted pair of a control", "<\"a\\\rb\"@example.com>", 0, NULL, NULL, NULL, 0, 0, 0, 0 },
	/* address literals */
	{ "IPv4 literal", "<user@[192.0.2.1]>", 1, "user", "[192.0.2.1]", "user@[192.0.2.1]", 0, 0, 0, 1 },
	{ "IPv6 literal", "<user@[IPv6:2001:DB8::1]>", 1, "user", "[ipv6:2001:db8::1]",
	  "user@[ipv6:2001:db8::1]", 0, 0, 0, 1 },
	{ "bad IPv4 literal", "<u@[192.0.2.300]>", 0, NULL, NULL, NULL, 0, 0, 0, 0 },
	{ "IPv6 without tag", "<u@[2001:db8::1]>", 0, NULL, NULL, NULL, 0, 0, 0, 0 },
	{ "general literal", "<u@[x-tag:foo]>", 0, NULL, NULL, NULL, 0, 0, 0, 0 },
	{ "name in brackets", "<u@[example.com]>", 0, NULL, NULL, NULL, 0, 0, 0, 0 },
	{ "literal with tail", "<u@[192.0.2.1].evil.org>", 0, NULL, NULL, NULL, 0, 0, 0, 0 },
	{ "unclosed literal", "<u@[192.0.2.1>", 0, NULL, NULL, NULL, 0, 0, 0, 0 },
	/* the comment trick and friends (RFC 5322 syntax is not RFC 5321's) */
	{ "comment in domain", "<victim@other.org(.example.com>", 0, NULL, NULL, NULL, 0, 0, 0, 0 },
	{ "closed comment", "<x@evil.org(c)>", 0, NULL, NULL, NULL, 0, 0, 0, 0 },
	{ "comment alone", "<(x)>", 0, NULL, NULL, NULL, 0, 0, 0, 0 },
	{ "comment first", "<(x)u@example.com>", 0, NULL, NULL, NULL, 0, 0, 0, 0 },
	{ "comment in local part", "<u(x)@example.com>", 0, NULL, NULL, NULL, 0, 0, 0, 0 },
	{ "two addresses", "<a@example.com,b@other.org>", 0, NULL, NULL, NULL, 0, 0, 0, 0 },
	{ "group syntax", "<g:a@other.org;>", 0, NULL, NULL, NULL, 0, 0, 0, 0 },
	{ "angle inside", "<a<b@example.com>", 0, NULL, NULL, NULL, 0, 0, 0, 0 },
	{ "angle after", "<a@example.com>>", 0, NULL, NULL, NULL, 0, 0, 0, 0 },
	{ "display name", "Bob <b@example.com>", 0, NULL, NULL, NULL, 0, 0, 0, 0 },
	{ "two @", "<user@example.com@other.org>", 0, NULL, NULL, NULL, 0, 0, 0, 0 },
	{ "missing >", "<user@example.com", 0, NULL, NULL, NULL, 0, 0, 0, 0 },
	{ "lone <", "<", 0, NULL, NULL, NULL, 0, 0, 0, 0 },
	{ "empty domain", "<user@>", 0, NULL, NULL, NULL, 0, 0, 0, 0 },
	{ "empty local part", "<@example.com>", 0, NULL, NULL, NULL, 0, 0, 0, 0 },
	{ "leading dot", "<.u@example.com>", 0, NULL, NULL, NULL, 0, 0, 0, 0 },
	{ "trailing dot in local", "<u.@example.com>", 0, NULL, NULL, NULL, 0, 0, 0, 0 },
	{ "double dot in local", "<a..b@example.com>", 0, NULL, NULL, NULL, 0, 0, 0, 0 },
	{ "double dot in domain", "<u@example..com>", 0, NULL, NULL, NULL, 0, 0, 0, 0 },
	{ "dot-only domain", "<u@.>", 0, NULL, NULL, NULL, 0, 0, 0, 0 },
	{ "two trailing dots", "<u@example.com..>", 0, NULL, NULL, NULL, 0, 0, 0, 0 },
	{ "hyphen first in label", "<u@-a.example>", 0, NULL, NULL, NULL, 0, 0, 0, 0 },
	{ "hyphen last in label", "<u@a-.example>", 0, NULL, NULL, NULL, 0, 0, 0, 0 },
	{ "control char", "<us\ter@example.com>", 0, NULL, NULL, NULL, 0, 0, 0, 0 },
	{ "CR in domain", "<u@example.com\rRCPT TO:<v@other.org>", 0, NULL, NULL, NULL, 0, 0, 0, 0 },
	{ "DEL", "<u\x7f@example.com>", 0, NULL, NULL, NULL, 0, 0, 0, 0 },
	{ "8-bit local part (no SMTPUTF8)", "<\xc3\xa9@example.com>", 0, NULL, NULL, NULL, 0, 0, 0, 0 },
	{ "8-bit domain", "<u@\xc3\xa9.example>", 0, NULL, NULL, NULL, 0, 0, 0, 0 },
	{ "space in domain", "<u@exa mple.com>", 0, NULL, NULL, NULL, 0, 0, 0, 0 },
	{ "space before @", "<u @example.com>", 0, NULL, NULL, NULL, 0, 0, 0, 0 },
	{ "space inside brackets", "< u@example.com>", 0, NULL, NULL, NULL, 0, 0, 0, 0 },
	{ "backslash outside quotes", "<a\\b@example.com>", 0, NULL, NULL, NULL, 0, 0, 0, 0 },
	{ "square bracket in local", "<a[b@example.com>", 0, NULL, NULL, NULL, 0, 0, 0, 0 },
	{ "unqualified with trailing @", "<postmaster@>", 0, NULL, NULL, NULL, 0, 0, 0, 0 },
};

static void
test_mailaddr_table(void)
{
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct mailaddr a;
		char fmt[MAILADDR_TEXT_MAX];
		const char *why = NULL;
		int rc = mailaddr_parse_why(cases[i].in, &a, &why);

		if (!cases[i].ok) {
			if (rc != -1 || why == NULL) {
				fprintf(stderr, "\n  case \"%s\" parsed\n", cases[i].name);
				CU_FAIL("garbage accepted");
			}
			continue;
		}
		if (rc != 0 || strcmp(a.local, cases[i].local) != 0 ||
		    strcmp(a.domain, cases[i].domain) != 0 || a.is_null != cases[i].is_null ||
		    a.source_route != cases[i].route || a.routing_local != cases[i].routing_local ||
		    a.domain_literal != cases[i].literal ||
		    strcmp(mailaddr_format(&a, fmt), cases[i].formatted) != 0) {
			fprintf(stderr, "\n  case \"%s\": rc %d (%s) local \"%s\" domain \"%s\" "
			    "formatted \"%s\"\n", cases[i].name, rc, rc ? why : "", a.local, a.domain,
			    rc ? "" : mailaddr_format(&a, fmt));
			CU_FAIL("parse differs");
		}
	}
}

/* parse(format(parse(x))) == parse(x): what goes downstream means what we judged */
static void
test_mailaddr_round_trip(void)
{
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct mailaddr a, b;
		char fmt[MAILADDR_TEXT_MAX], path[MAILADDR_TEXT_MAX + 2];

		if (!cases[i].ok)
			continue;
		if (mailaddr_parse(cases[i].in, &a) < 0)
			continue;	/* the table test reports it */
		snprintf(path, sizeof(path), "<%s>", mailaddr_format(&a, fmt));
		if (mailaddr_parse(path, &b) < 0 || strcmp(a.local, b.local) != 0 ||
		    strcmp(a.domain, b.domain) != 0 || a.is_null != b.is_null ||
		    a.routing_local != b.routing_local || a.domain_literal != b.domain_literal) {
			fprintf(stderr, "\n  case \"%s\": %s does not parse back\n", cases[i].name, path);
			CU_FAIL("round trip differs");
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
	/* local part: 255 octets parse, 256 do not */
	memset(buf, 'a', 256);
	strcpy(buf + 255, "@example.com");
	CU_ASSERT_EQUAL(mailaddr_parse(buf, &a), 0);
	memset(buf, 'a', 256);
	strcpy(buf + 256, "@example.com");
	CU_ASSERT_EQUAL(mailaddr_parse(buf, &a), -1);
	/* a 64-octet label */
	strcpy(buf, "u@");
	memset(buf + 2, 'b', 64);
	strcpy(buf + 66, ".example");
	CU_ASSERT_EQUAL(mailaddr_parse(buf, &a), -1);
	strcpy(buf + 65, ".example");
	CU_ASSERT_EQUAL(mailaddr_parse(buf, &a), 0);
	/* 255 quotes need 512 octets quoted: refused, never cut */
	buf[0] = '"';
	for (int i = 1; i <= 255; i++) {
		buf[2 * i - 1] = '\\';
		buf[2 * i] = '"';
	}
	strcpy(buf + 511, "\"@example.com");
	CU_ASSERT_EQUAL(mailaddr_parse(buf, &a), -1);
	/* a domain over 255 octets */
	strcpy(buf, "u@");
	for (int i = 0; i < 64; i++)
		memcpy(buf + 2 + 4 * i, "abc.", 4);
	strcpy(buf + 2 + 4 * 64, "com");
	CU_ASSERT_EQUAL(mailaddr_parse(buf, &a), -1);
}

static void
test_mailaddr_key(void)
{
	struct mailaddr a;
	char key[2 * MAILADDR_PART_MAX + 2];

	CU_ASSERT_EQUAL(mailaddr_parse("<Mixed.Case@Example.COM>", &a), 0);
	CU_ASSERT_STRING_EQUAL(mailaddr_key(&a, key), "mixed.case@example.com");
	CU_ASSERT_EQUAL(mailaddr_parse("<PostMaster>", &a), 0);
	CU_ASSERT_TRUE(mailaddr_is_postmaster(&a));
	CU_ASSERT_EQUAL(mailaddr_parse("<postmaster@example.com>", &a), 0);
	CU_ASSERT_FALSE(mailaddr_is_postmaster(&a));
}

static void
test_mailaddr_domain(void)
{
	static const struct { const char *in; int ok; } d[] = {
		{ "mx.example.com", 1 }, { "localhost", 1 }, { "DESKTOP-1", 1 }, { "example.com.", 1 },
		{ "[192.0.2.1]", 1 }, { "[IPv6:::1]", 1 }, { "", 0 }, { "a b", 0 }, { "a\rX", 0 },
		{ "[1.2.3]", 0 }, { "a..b", 0 }, { "-a", 0 }, { "a(b)", 0 }, { "\xc3\xa9", 0 },
	};

	for (size_t i = 0; i < sizeof(d) / sizeof(d[0]); i++)
		if (mailaddr_domain_is_valid(d[i].in) != d[i].ok) {
			fprintf(stderr, "\n  HELO name \"%s\"\n", d[i].in);
			CU_FAIL("domain check differs");
		}
}

/* SMTPUTF8 transactions (RFC 6531): well-formed UTF-8 only, and only when asked */
static void
test_mailaddr_utf8(void)
{
	static const struct { const char *in; int ok; const char *formatted; } t[] = {
		{ "<j\xc3\xb6" "e@example.com>", 1, "j\xc3\xb6" "e@example.com" },
		{ "<u@b\xc3\xbc" "cher.Example>", 1, "u@b\xc3\xbc" "cher.example" },
		{ "<\"j\xc3\xb6 e\"@example.com>", 1, "\"j\xc3\xb6 e\"@example.com" },
		{ "<\xe2\x82\xac.\xf0\x9f\x98\x80@example.com>", 1,
		  "\xe2\x82\xac.\xf0\x9f\x98\x80@example.com" },
		{ "<\xc3@example.com>", 0, NULL },			/* cut short */
		{ "<\xc0\xafx@example.com>", 0, NULL },		/* overlong "/" */
		{ "<\xed\xa0\x80@example.com>", 0, NULL },		/* surrogate */
		{ "<\xc2\x85@example.com>", 0, NULL },		/* C1 control NEL */
		{ "<\xf4\x90\x80\x80@example.com>", 0, NULL },	/* past U+10FFFF */
		{ "<\xff@example.com>", 0, NULL },
		{ "<u@example.com(\xc3\xa9)>", 0, NULL },		/* still no comments */
	};

	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		struct mailaddr a, b;
		char fmt[MAILADDR_TEXT_MAX], path[MAILADDR_TEXT_MAX + 2];
		const char *why;
		int rc = mailaddr_parse_flags(t[i].in, MAILADDR_UTF8, &a, &why);

		/* without SMTPUTF8 every one of them is refused */
		CU_ASSERT_EQUAL(mailaddr_parse(t[i].in, &b), -1);
		if (rc != (t[i].ok ? 0 : -1) ||
		    (t[i].ok && strcmp(mailaddr_format(&a, fmt), t[i].formatted) != 0)) {
			fprintf(stderr, "\n  UTF-8 case %zu: rc %d\n", i, rc);
			CU_FAIL("UTF-8 parse differs");
			continue;
		}
		if (!t[i].ok)
			continue;
		snprintf(path, sizeof(path), "<%s>", fmt);
		CU_ASSERT_EQUAL(mailaddr_parse_flags(path, MAILADDR_UTF8, &b, &why), 0);
		CU_ASSERT_STRING_EQUAL(a.local, b.local);
		CU_ASSERT_STRING_EQUAL(a.domain, b.domain);
	}
}

/* Postfix's internal form (policy delegation) back to what the parser reads */
static void
test_mailaddr_externalize(void)
{
	static const struct { const char *in, *out; } t[] = {
		{ "user@example.com", "<user@example.com>" },
		{ "", "" },
		{ "postmaster", "<postmaster>" },
		{ "root> NOTIFY=NEVER@example.com", "<\"root> NOTIFY=NEVER\"@example.com>" },
		{ "a\"b@example.com", "<\"a\\\"b\"@example.com>" },
		{ "user@other.org@example.com", "<\"user@other.org\"@example.com>" },
	};
	char buf[MAILADDR_TEXT_MAX + 2];
	struct mailaddr a;

	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
		CU_ASSERT_STRING_EQUAL(mailaddr_externalize(t[i].in, buf, sizeof(buf)), t[i].out);
	/* what Postfix parsed as one address stays one address */
	CU_ASSERT_EQUAL(mailaddr_parse(mailaddr_externalize("root> NOTIFY=NEVER@example.com", buf,
	    sizeof(buf)), &a), 0);
	CU_ASSERT_STRING_EQUAL(a.local, "root> NOTIFY=NEVER");
	CU_ASSERT_EQUAL(mailaddr_parse(mailaddr_externalize("user@other.org@example.com", buf,
	    sizeof(buf)), &a), 0);
	CU_ASSERT_TRUE(a.routing_local);
	/* control characters stay refused */
	CU_ASSERT_EQUAL(mailaddr_parse(mailaddr_externalize("a\rb@example.com", buf, sizeof(buf)),
	    &a), -1);
}

static CU_TestInfo tests[] = {
	{ "Postfix internal form -> external", test_mailaddr_externalize },
	{ "SMTPUTF8: UTF-8 addresses, well-formed only", test_mailaddr_utf8 },
	{ "table: forms, tricks, formatted form", test_mailaddr_table },
	{ "formatted form parses back to the same address", test_mailaddr_round_trip },
	{ "over-long parts are refused", test_mailaddr_overlong },
	{ "lookup key is lower case; postmaster", test_mailaddr_key },
	{ "HELO names: domain, literal, bare name", test_mailaddr_domain },
	CU_TEST_INFO_NULL,
};

void
test_mailaddr_register(void)
{
	unit_suite("mailaddr", tests);
}
