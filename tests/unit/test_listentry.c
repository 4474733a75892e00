/* listentry: entries as admins type them; list-file lines. */
#include <stdlib.h>
#include <string.h>

#include "storage-adapter/listentry.h"
#include "tests/unit/unit.h"

static const struct { const char *in, *key; int kind, ok; } key_cases[] = {
	{ "192.0.2.1", "192.0.2.1", ENTRY_ADDR, 1 },
	{ "192.0.2.0/24", "192.0.2.0/24", ENTRY_ADDR, 1 },
	{ "2001:DB8::/32", "2001:db8::/32", ENTRY_ADDR, 1 },
	{ "::ffff:192.0.2.9", "192.0.2.9", ENTRY_ADDR, 1 },
	{ "host:MX.Example.COM", "host:mx.example.com", ENTRY_HOST, 1 },
	{ "host:mx.example.com.", "host:mx.example.com", ENTRY_HOST, 1 },
	{ "host:.example.com", "host:.example.com", ENTRY_HOST_SUFFIX, 1 },
	{ "User@Example.com", "user@example.com", ENTRY_SENDER, 1 },
	{ "@Example.com", "@example.com", ENTRY_SENDER_DOMAIN, 1 },
	{ "country:FR", "country:FR", ENTRY_COUNTRY, 1 },
	{ "country:fr", "country:FR", ENTRY_COUNTRY, 1 },
	{ "COUNTRY:xX", "country:XX", ENTRY_COUNTRY, 1 },
	{ "country:", NULL, 0, 0 },
	{ "country:F", NULL, 0, 0 },
	{ "country:FRA", NULL, 0, 0 },
	{ "country:F1", NULL, 0, 0 },
	{ "country: FR", NULL, 0, 0 },
	{ "country:\xc3\x89S", NULL, 0, 0 },
	{ "country:*", NULL, 0, 0 },
	{ "", NULL, 0, 0 },
	{ "foo", NULL, 0, 0 },
	{ "192.0.2.1/24", NULL, 0, 0 },
	{ "300.1.1.1", NULL, 0, 0 },
	{ "host:", NULL, 0, 0 },
	{ "host:.", NULL, 0, 0 },
	{ "host:a..b", NULL, 0, 0 },
	{ "host:bad_char!", NULL, 0, 0 },
	{ "user@", NULL, 0, 0 },
	{ "@", NULL, 0, 0 },
	{ "u ser@example.com", NULL, 0, 0 },
	{ "<user@example.com>", NULL, 0, 0 },
	{ "a@b@example.com", NULL, 0, 0 },
};

static void
test_listentry_keys(void)
{
	for (size_t i = 0; i < sizeof(key_cases) / sizeof(key_cases[0]); i++) {
		struct list_entry e;
		const char *err = NULL;
		int rc = listentry_parse_key(key_cases[i].in, &e, &err);

		if (key_cases[i].ok) {
			if (rc != 0 || strcmp(e.key, key_cases[i].key) != 0 ||
			    (int)e.kind != key_cases[i].kind) {
				fprintf(stderr, "\n  \"%s\": rc %d key %s\n", key_cases[i].in, rc,
				    rc == 0 ? e.key : err);
				CU_FAIL("entry parse differs");
			}
			listentry_clear(&e);
		} else if (rc != -1 || err == NULL) {
			fprintf(stderr, "\n  \"%s\" accepted\n", key_cases[i].in);
			CU_FAIL("bad entry accepted");
			if (rc == 0)
				listentry_clear(&e);
		}
	}
}

static const struct { const char *line; int ok; long long expires; int origin; const char *reason; } line_cases[] = {
	{ "192.0.2.1", 1, 0, ORIGIN_ADMIN, NULL },
	{ "192.0.2.1 added=5 expires=100 origin=auto-ban reason=too long a line", 1, 100,
	  ORIGIN_AUTOBAN, "too long a line" },
	{ "  @example.com\torigin=import  ", 1, 0, ORIGIN_IMPORT, NULL },
	{ "192.0.2.1 expires=soon", 0, 0, 0, NULL },
	{ "192.0.2.1 origin=martians", 0, 0, 0, NULL },
	{ "192.0.2.1 colour=blue", 0, 0, 0, NULL },
	{ "192.0.2.1 junk", 0, 0, 0, NULL },
	{ "192.0.2.1 expires=-5", 0, 0, 0, NULL },
	{ "192.0.2.1 expires=99999999999999999999", 0, 0, 0, NULL },
	{ "not-an-entry expires=5", 0, 0, 0, NULL },
	{ "country:de added=5 expires=100 origin=admin reason=geo block", 1, 100, ORIGIN_ADMIN,
	  "geo block" },
	{ "country:DEU reason=x", 0, 0, 0, NULL },
};

static void
test_listentry_lines(void)
{
	for (size_t i = 0; i < sizeof(line_cases) / sizeof(line_cases[0]); i++) {
		struct list_entry e;
		const char *err = NULL;
		int rc = listentry_parse_line(line_cases[i].line, &e, &err);

		if (!line_cases[i].ok) {
			if (rc != -1) {
				fprintf(stderr, "\n  \"%s\" accepted\n", line_cases[i].line);
				CU_FAIL("bad line accepted");
				listentry_clear(&e);
			}
			continue;
		}
		CU_ASSERT_EQUAL_FATAL(rc, 0);
		CU_ASSERT_EQUAL(e.expires, line_cases[i].expires);
		CU_ASSERT_EQUAL((int)e.origin, line_cases[i].origin);
		if (line_cases[i].reason) {
			CU_ASSERT_STRING_EQUAL(e.reason ? e.reason : "", line_cases[i].reason);
		} else {
			CU_ASSERT_PTR_NULL(e.reason);
		}
		listentry_clear(&e);
	}
}

static void
test_listentry_roundtrip(void)
{
	struct list_entry e, back;
	const char *err;
	char *line;

	CU_ASSERT_EQUAL_FATAL(listentry_parse_key("2001:db8::/48", &e, &err), 0);
	e.added = 1700000000;
	e.expires = 1800000000;
	e.origin = ORIGIN_AUTOBAN;
	e.reason = strdup("over-long MAIL");
	line = listentry_format_line(&e);
	CU_ASSERT_EQUAL_FATAL(listentry_parse_line(line, &back, &err), 0);
	CU_ASSERT_STRING_EQUAL(back.key, e.key);
	CU_ASSERT_EQUAL(back.added, e.added);
	CU_ASSERT_EQUAL(back.expires, e.expires);
	CU_ASSERT_EQUAL(back.origin, e.origin);
	CU_ASSERT_STRING_EQUAL(back.reason, e.reason);
	free(line);
	listentry_clear(&e);
	listentry_clear(&back);
	CU_ASSERT_FALSE(listentry_reason_is_valid("two\nlines"));

	/* a country entry's file line reads back as the same entry */
	CU_ASSERT_EQUAL_FATAL(listentry_parse_key("country:nl", &e, &err), 0);
	e.reason = strdup("geo");
	line = listentry_format_line(&e);
	CU_ASSERT_STRING_EQUAL(line, "country:NL added=0 expires=0 origin=admin reason=geo");
	CU_ASSERT_EQUAL_FATAL(listentry_parse_line(line, &back, &err), 0);
	CU_ASSERT_STRING_EQUAL(back.key, "country:NL");
	CU_ASSERT_EQUAL(back.kind, ENTRY_COUNTRY);
	free(line);
	listentry_clear(&e);
	listentry_clear(&back);
}

/* bytes with a length: a NUL byte rejects the line, never shortens it */
static void
test_listentry_buf(void)
{
	static const struct {
		const char *name;
		const char *buf;
		size_t len;
		const char *err;	/* NULL: parses */
		const char *key;
	} t[] = {
		{ "plain line", "192.0.2.1 reason=x", 18, NULL, "192.0.2.1" },
		{ "NUL after the entry", "192.0.2.1\0 junk", 15, "NUL byte", NULL },
		{ "NUL inside the entry", "192.0.2.1\0/8", 12, "NUL byte", NULL },
		{ "NUL in a reason", "192.0.2.1 reason=a\0b", 20, "NUL byte", NULL },
		{ "a lone NUL", "\0", 1, "NUL byte", NULL },
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		struct list_entry e;
		const char *err = NULL;
		int rc = listentry_parse_buf(t[i].buf, t[i].len, &e, &err);

		if (t[i].err == NULL ? rc != 0 || strcmp(e.key, t[i].key) != 0 :
		    rc != -1 || err == NULL || strstr(err, t[i].err) == NULL) {
			fprintf(stderr, "\n  case \"%s\": rc %d, %s\n", t[i].name, rc,
			    rc == 0 ? e.key : err ? err : "-");
			CU_FAIL("listentry_parse_buf differs");
		}
		if (rc == 0)
			listentry_clear(&e);
	}
}

static CU_TestInfo tests[] = {
	{ "bytes with a length: NUL rejects the line", test_listentry_buf },
	{ "entry keys: forms and garbage", test_listentry_keys },
	{ "list-file lines: attributes and garbage", test_listentry_lines },
	{ "format/parse round trip", test_listentry_roundtrip },
	CU_TEST_INFO_NULL,
};

void
test_listentry_register(void)
{
	unit_suite("listentry", tests);
}
