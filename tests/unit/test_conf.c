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
	/* values beyond their type (conf_check.c) */
	{ "resolver: system", "resolver = system\n", "resolver", "system", 1 },
	{ "resolver: IPv4:port", "resolver = 192.0.2.53:5353\n", "resolver", "192.0.2.53:5353", 1 },
	{ "resolver: bare IPv6", "resolver = 2001:db8::53\n", "resolver", "2001:db8::53", 1 },
	{ "resolver: [IPv6]:port", "resolver = [2001:db8::53]:53\n", "resolver", "[2001:db8::53]:53", 1 },
	{ "resolver: a name is refused", "\nresolver = not-an-ip\n", NULL,
	  "t.cf:2: resolver: \"not-an-ip\": expected system, ADDRESS", 0 },
	{ "resolver: [IPv4]:port is not what evdns takes", "resolver = [192.0.2.53]:53\n", NULL,
	  "resolver: \"[192.0.2.53]:53\"", 0 },
	{ "resolver: port 0", "resolver = 192.0.2.53:0\n", NULL, "resolver: \"192.0.2.53:0\"", 0 },
	{ "resolver: port 65536", "resolver = 192.0.2.53:65536\n", NULL, "resolver: \"192.0.2.53:65536\"", 0 },
	{ "relayhost: [IPv4]:port", "relayhost = [192.0.2.25]:25\n", "relayhost", "[192.0.2.25]:25", 1 },
	{ "relayhost: empty", "relayhost =\n", "relayhost", "", 1 },
	{ "relayhost: a name is refused (no DNS)", "relayhost = [mx.example]:25\n", NULL,
	  "relayhost: \"[mx.example]:25\": not an IP address", 0 },
	{ "relayhost: no port", "relayhost = 192.0.2.25\n", NULL, "expected ADDRESS:PORT", 0 },
	{ "relayhost: IPv6 without brackets", "relayhost = 2001:db8::25:25\n", NULL,
	  "write an IPv6 address as [ADDRESS]:PORT", 0 },
	{ "delivery: relay", "delivery = relay:[::1]:2526\n", "delivery", "relay:[::1]:2526", 1 },
	{ "delivery: relative maildir", "delivery = maildir:mail\n", NULL,
	  "delivery: \"maildir:mail\": expected maildir:/absolute/dir", 0 },
	{ "delivery: unknown kind", "delivery = lmtp:[::1]:24\n", NULL, "expected maildir:/absolute/dir or relay:", 0 },
	{ "smtp_listen: v4 and [v6]", "smtp_listen = 127.0.0.1:25, [::1]:25\n", "smtp_listen",
	  "127.0.0.1:25, [::1]:25", 1 },
	{ "smtp_listen: [IPv4] is not what the listener parses", "smtp_listen = [127.0.0.1]:25\n", NULL,
	  "write an IPv4 address without brackets", 0 },
	{ "smtp_listen: the bad item is named", "smtp_listen = 127.0.0.1:25 127.0.0.1:x\n", NULL,
	  "smtp_listen: \"127.0.0.1:x\": the port is not a number", 0 },
	{ "smtp_listen: 17 listeners",
	  "smtp_listen = 127.0.0.1:1 127.0.0.1:2 127.0.0.1:3 127.0.0.1:4 127.0.0.1:5 127.0.0.1:6\n"
	  " 127.0.0.1:7 127.0.0.1:8 127.0.0.1:9 127.0.0.1:10 127.0.0.1:11 127.0.0.1:12 127.0.0.1:13\n"
	  " 127.0.0.1:14 127.0.0.1:15 127.0.0.1:16 127.0.0.1:17\n", NULL, "too many listeners", 0 },
	{ "relay_networks: host bits", "relay_networks = 10.0.0.1/8\n", NULL,
	  "relay_networks: \"10.0.0.1/8\": host bits set", 0 },
	{ "bare newline exceptions: not a CIDR", "smtp_bare_newline_exceptions = 10/8\n", NULL,
	  "smtp_bare_newline_exceptions: \"10/8\"", 0 },
	{ "services: unknown", "services = milter gopher\n", NULL, "services: \"gopher\": unknown service", 0 },
	{ "services: empty", "services = ,\n", NULL, "services: \",\": nothing to run", 0 },
	{ "lists: redis", "lists = redis://127.0.0.1:6379/0\n", "lists", "redis://127.0.0.1:6379/0", 1 },
	{ "lists: unknown store", "lists = ldap://x\n", NULL, "lists: \"ldap://x\": unknown store", 0 },
	{ "lists_cache: relative", "lists_cache = cache\n", NULL, "lists_cache: \"cache\": expected an absolute path", 0 },
	{ "users: a bare path", "users = /etc/portcullis/users\n", NULL, "expected file:/path/to/users", 0 },
	{ "tls_cert_file: missing", "tls_cert_file = /nonexistent/c.pem\n", NULL,
	  "tls_cert_file: \"/nonexistent/c.pem\": no such file", 0 },
	{ "tls_key_file: a directory", "tls_key_file = /\n", NULL, "is a directory", 0 },
	{ "myhostname: empty label", "myhostname = mx..example\n", NULL, "empty label", 0 },
	{ "myhostname: longer than the gateway keeps", "myhostname = "
	  "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.example\n",
	  NULL, "longer than 127 characters", 0 },
	{ "myhostname: white space", "myhostname = mx example\n", NULL, "myhostname: \"mx example\": not a host name", 0 },
	{ "smtp_banner: control bytes escaped in the error", "smtp_banner = a\033b\n", NULL,
	  "smtp_banner: \"a\\x1bb\": control characters", 0 },
	{ "smtp_banner: past a reply line", "smtp_banner = $myhostname "
	  "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
	  "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
	  "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
	  "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n",
	  NULL, "smtp_banner: \"", 0 },
	{ "milter_listen: a unix path past sun_path", "milter_listen = unix:/"
	  "ssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssss\n",
	  NULL, "a unix socket path is at most 107 bytes", 0 },
	{ "milter_listen: a unix path that fits", "milter_listen = unix:/run/portcullis/milter.sock\n",
	  "milter_listen", "unix:/run/portcullis/milter.sock", 1 },
	{ "max_command_length: below RFC 5321's 512", "max_command_length = 100\n", NULL,
	  "max_command_length: \"100\": 0 (no limit) or at least 512", 0 },
	{ "max_command_length: 0 is off", "max_command_length = 0\n", "max_command_length", "0", 1 },
	{ "a bad default names its cause", "state_dir = relative\n", NULL,
	  "t.cf:1: state_dir: \"relative\": expected an absolute path", 0 },
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
