/* conf: parsing, continuation, $expansion, unknown keys, types. */
#include <stdlib.h>
#include <string.h>

#include "common/conf.h"
#include "tests/unit/unit.h"

struct conf_case {
	const char *name;
	const char *text;
	const char *key;	/* checked when ok */
	const char *want;	/* expected value, or expected error substring */
	int ok;
};

static const struct conf_case cases[] = {
	{ "plain value", "max_recipients = 7\n", "max_recipients", "7", 1 },
	{ "no spaces around =", "max_recipients=8\n", "max_recipients", "8", 1 },
	{ "comment and blank lines", "# hi\n\n   # indented comment\nnull_sender = reject\n",
	  "null_sender", "reject", 1 },
	{ "continuation joins with a space", "mydomains = a.example\n  b.example\n\tc.example\n",
	  "mydomains", "a.example b.example c.example", 1 },
	{ "comment inside a continuation is skipped", "mydomains = a.example\n# x\n  b.example\n",
	  "mydomains", "a.example b.example", 1 },
	{ "$name expands", "state_dir = /srv/pc\n", "lists", "file:/srv/pc/lists", 1 },
	{ "${name} expands", "state_dir = /x\npid_file = ${state_dir}/p.pid\n", "pid_file",
	  "/x/p.pid", 1 },
	{ "nested expansion", "state_dir = /a\nlists = file:$pid_file.d\n", "lists",
	  "file:/a/portcullisd.pid.d", 1 },
	{ "$$ is a dollar", "state_dir = /a$$b\n", "state_dir", "/a$b", 1 },
	{ "later line wins", "max_recipients = 1\nmax_recipients = 2\n", "max_recipients", "2", 1 },
	{ "CRLF line ends", "max_recipients = 3\r\n", "max_recipients", "3", 1 },
	{ "no final newline", "max_recipients = 4", "max_recipients", "4", 1 },
	{ "time unit", "long_command_ban = 2h\n", "long_command_ban", "2h", 1 },
	{ "empty value", "mydomains =\n", "mydomains", "", 1 },
	{ "unknown key", "max_recipient = 5\n", NULL, "t.cf:1: unknown parameter \"max_recipient\"", 0 },
	{ "missing =", "\nmax_recipients 5\n", NULL, "t.cf:2: missing '='", 0 },
	{ "garbage line", "= 5\n", NULL, "t.cf:1: expected 'name = value'", 0 },
	{ "continuation first", "  mydomains = x\n", NULL, "t.cf:1: continuation line", 0 },
	{ "unknown $name", "lists = file:$nowhere\n", NULL, "t.cf:1: lists: $nowhere is not a known parameter", 0 },
	{ "expansion loop", "state_dir = $pid_file\npid_file = $state_dir\n", NULL, "loops", 0 },
	{ "unclosed ${", "lists = ${state_dir\n", NULL, "missing '}'", 0 },
	{ "lone $", "lists = a$\n", NULL, "not followed by a parameter name", 0 },
	{ "bad bool", "relay_authenticated = maybe\n", NULL, "t.cf:1: relay_authenticated: \"maybe\" is not yes or no", 0 },
	{ "bad int", "max_recipients = 10x\n", NULL, "is not a number", 0 },
	{ "int out of range", "max_recipients = -1\n", NULL, "out of range", 0 },
	{ "bad enum", "null_sender = sometimes\n", NULL, "is not one of accept|reject|reject_multi_rcpt", 0 },
	{ "bad time", "long_command_ban = 1y\n", NULL, "is not a time", 0 },
	{ "error names the first line of a continued value",
	  "\nrelay_authenticated = y\n  es\n", NULL, "t.cf:2: relay_authenticated: \"y es\"", 0 },
};

static void
test_conf_table(void)
{
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct conf_case *t = &cases[i];
		struct conf *c = conf_new();
		const char *err = NULL;
		int rc = conf_load_string(c, "t.cf", t->text, &err);

		if (rc == 0)
			rc = conf_finish(c, &err);
		if (t->ok) {
			CU_ASSERT_EQUAL_FATAL(rc, 0);
			if (rc == 0 && strcmp(conf_get(c, t->key), t->want) != 0) {
				fprintf(stderr, "\n  case \"%s\": %s = \"%s\", want \"%s\"\n", t->name,
				    t->key, conf_get(c, t->key), t->want);
				CU_FAIL("value differs");
			}
		} else {
			CU_ASSERT_EQUAL(rc, -1);
			if (rc != -1 || err == NULL || strstr(err, t->want) == NULL) {
				fprintf(stderr, "\n  case \"%s\": error \"%s\", want \"%s\"\n", t->name,
				    err ? err : "(none)", t->want);
				CU_FAIL("error differs");
			}
		}
		conf_free(&c);
	}
}

static void
test_conf_override_and_lists(void)
{
	struct conf *c = conf_new();
	const char *err;
	size_t n;
	char **l;

	CU_ASSERT_EQUAL(conf_load_string(c, "t.cf", "mydomains = a.example\n", &err), 0);
	CU_ASSERT_EQUAL(conf_set_override(c, "mydomains = b.example, c.example ,,d.example", &err), 0);
	CU_ASSERT_EQUAL(conf_set_override(c, "nosuch=1", &err), -1);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "-o: unknown parameter"));
	CU_ASSERT_EQUAL(conf_finish(c, &err), 0);
	l = conf_get_list(c, "mydomains", &n);
	CU_ASSERT_EQUAL(n, 3);
	CU_ASSERT_STRING_EQUAL(l[0], "b.example");
	CU_ASSERT_STRING_EQUAL(l[2], "d.example");
	CU_ASSERT_PTR_NULL(l[3]);
	conf_list_free(l);
	CU_ASSERT_STRING_EQUAL(conf_where(c, "mydomains"), "-o");
	CU_ASSERT_STRING_EQUAL(conf_where(c, "max_recipients"), "default");
	CU_ASSERT_EQUAL(conf_get_int(c, "long_command_ban"), 3600);
	CU_ASSERT_EQUAL(conf_get_bool(c, "relay_authenticated"), 1);
	conf_free(&c);
}

static void
test_conf_time_units(void)
{
	static const struct { const char *in; long want; int ok; } t[] = {
		{ "0", 0, 1 }, { "90", 90, 1 }, { "90s", 90, 1 }, { "10m", 600, 1 },
		{ "2h", 7200, 1 }, { "7d", 604800, 1 }, { "1w", 604800, 1 },
		{ "", 0, 0 }, { "h", 0, 0 }, { "1hh", 0, 0 }, { "-5", 0, 0 }, { "1y", 0, 0 },
		{ "99999999999999999999", 0, 0 },
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		long v = -1;
		int rc = conf_parse_time(t[i].in, &v);

		CU_ASSERT_EQUAL(rc, t[i].ok ? 0 : -1);
		if (t[i].ok)
			CU_ASSERT_EQUAL(v, t[i].want);
	}
}

static void
test_conf_file_errors(void)
{
	struct conf *c = conf_new();
	const char *err;

	CU_ASSERT_EQUAL(conf_load_file(c, "/nonexistent/portcullis.conf", &err), -1);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "/nonexistent/portcullis.conf: cannot open"));
	conf_free(&c);
}

static CU_TestInfo tests[] = {
	{ "table: values and errors", test_conf_table },
	{ "-o overrides and list splitting", test_conf_override_and_lists },
	{ "time units", test_conf_time_units },
	{ "missing file", test_conf_file_errors },
	CU_TEST_INFO_NULL,
};

void
test_conf_register(void)
{
	unit_suite("conf", tests);
}
