/*
 * The users file's proxy fields (storage-adapter/userdb, issue 12): the
 * parser over a table of extra-field strings, and userdb_set_fields()
 * editing a line while keeping its other fields (and a password change
 * keeping the proxy fields).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <CUnit/CUnit.h>

#include "common/base64.h"
#include "common/sasl.h"
#include "storage-adapter/userdb.h"
#include "tests/unit/fixture.h"
#include "tests/unit/unit.h"

/* mail_proxy_auth = backend reads the PLAIN response a check would hash:
 * login and password as sent; nothing for an authzid or another mechanism */
static void
test_plain_response(void)
{
	static const struct {
		const char *raw;
		size_t len;
		int rc;
		const char *login, *password;
	} t[] = {
#define RAW(s) s, sizeof(s) - 1
		{ RAW("\0carol@far.example\0pass word"), 0, "carol@far.example", "pass word" },
		{ RAW("\0c@f.example\0p:w\"\\"), 0, "c@f.example", "p:w\"\\" },
		{ RAW("admin\0c@f.example\0pw"), -1, NULL, NULL },
		{ RAW("\0c@f.example\0pw\0more"), -1, NULL, NULL },
#undef RAW
	};
	struct sasl_callbacks cb = { fixture_no_user, NULL, NULL, NULL };
	struct sasl_params sp = { &cb, "mx.example", NULL };
	const char *err, *out, *login, *pw;
	int rc;

	CU_ASSERT_EQUAL_FATAL(sasl_init(&err), 0);
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		struct sasl_server *s = sasl_server_new(AUTH_MECH_PLAIN, &sp);
		char b64[BASE64_ENCODED_LEN(64) + 1];

		CU_ASSERT_PTR_NOT_NULL_FATAL(s);
		base64_encode(t[i].raw, t[i].len, b64);
		CU_ASSERT_EQUAL(sasl_server_step64(s, b64, &out), SASL_CHECK);
		login = pw = NULL;
		rc = sasl_server_plain_response(s, &login, &pw);
		CU_ASSERT_EQUAL(rc, t[i].rc);
		if (t[i].rc == 0 && rc == 0) {
			CU_ASSERT_STRING_EQUAL(login, t[i].login);
			CU_ASSERT_STRING_EQUAL(pw, t[i].password);
		}
		sasl_server_free(&s);
	}
	{
		struct sasl_server *s = sasl_server_new(AUTH_MECH_LOGIN, &sp);

		CU_ASSERT_PTR_NOT_NULL_FATAL(s);
		CU_ASSERT_EQUAL(sasl_server_plain_response(s, &login, &pw), -1);
		sasl_server_free(&s);
	}
}

static void
test_proxy_parse(void)
{
	static const struct {
		const char *fields;
		int rc;
		const char *host;
		unsigned port;
		enum userdb_proxy_tls tls;
		const char *destuser, *err;
	} t[] = {
		{ "", 0, "", 0, USERDB_TLS_NO, "", NULL },
		{ "scram_sha_256=x cram_md5=y", 0, "", 0, USERDB_TLS_NO, "", NULL },
		{ "proxy=y host=192.0.2.1", 1, "192.0.2.1", 0, USERDB_TLS_NO, "", NULL },
		{ "proxy host=192.0.2.1", 1, "192.0.2.1", 0, USERDB_TLS_NO, "", NULL },
		{ "proxy=Y host=2001:db8::1 port=993 tls=yes destuser=a@b.c", 1, "2001:db8::1", 993,
		    USERDB_TLS_YES, "a@b.c", NULL },
		{ "x=1  proxy=yes  host=10.0.0.1 tls=starttls  y=2", 1, "10.0.0.1", 0,
		    USERDB_TLS_STARTTLS, "", NULL },
		{ "proxy=n host=10.0.0.1", 0, "10.0.0.1", 0, USERDB_TLS_NO, "", NULL },
		{ "host=10.0.0.1 port=110", 0, "10.0.0.1", 110, USERDB_TLS_NO, "", NULL },
		{ "proxy=y", -1, NULL, 0, 0, NULL, "needs host" },
		{ "proxy=y host=mail.example.com", 1, "mail.example.com", 0, USERDB_TLS_NO, "", NULL },
		{ "proxy=y host=imap-1.Example.COM. tls=yes", 1, "imap-1.Example.COM.", 0,
		    USERDB_TLS_YES, "", NULL },
		{ "proxy=y host=backend", 1, "backend", 0, USERDB_TLS_NO, "", NULL },
		{ "proxy=y host=mail..example.com", -1, NULL, 0, 0, NULL, "DNS name" },
		{ "proxy=y host=-mail.example.com", -1, NULL, 0, 0, NULL, "DNS name" },
		{ "proxy=y host=mail-.example.com", -1, NULL, 0, 0, NULL, "DNS name" },
		{ "proxy=y host=.example.com", -1, NULL, 0, 0, NULL, "DNS name" },
		{ "proxy=y host=mail_1.example.com", -1, NULL, 0, 0, NULL, "DNS name" },
		{ "proxy=y host=192.0.2.300", -1, NULL, 0, 0, NULL, "numeric IPv4 or IPv6" },
		{ "proxy=y host=1234", -1, NULL, 0, 0, NULL, "numeric IPv4 or IPv6" },
		{ "proxy=y host=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.com", -1,
		    NULL, 0, 0, NULL, "DNS name" },
		{ "proxy=y host=10.0.0.1 port=0", -1, NULL, 0, 0, NULL, "1-65535" },
		{ "proxy=y host=10.0.0.1 port=65536", -1, NULL, 0, 0, NULL, "1-65535" },
		{ "proxy=y host=10.0.0.1 port=1x", -1, NULL, 0, 0, NULL, "1-65535" },
		{ "proxy=y host=10.0.0.1 tls=ssl", -1, NULL, 0, 0, NULL, "starttls" },
		{ "proxy=y host=10.0.0.1 destuser=a\"b", -1, NULL, 0, 0, NULL, "login name" },
		{ "proxy=maybe host=10.0.0.1", -1, NULL, 0, 0, NULL, "y or n" },
		{ "proxy=y host", -1, NULL, 0, 0, NULL, "host=VALUE" },
	};

	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		struct userdb_proxy px;
		const char *err = NULL;
		int rc = userdb_proxy_parse(t[i].fields, &px, &err);

		if (rc != t[i].rc)
			fprintf(stderr, "\nproxy row %zu \"%s\": %d (%s)\n", i, t[i].fields, rc,
			    err ? err : "");
		CU_ASSERT_EQUAL(rc, t[i].rc);
		if (rc < 0) {
			CU_ASSERT_TRUE(err != NULL && strstr(err, t[i].err) != NULL);
			continue;
		}
		CU_ASSERT_STRING_EQUAL(px.host, t[i].host);
		CU_ASSERT_EQUAL(px.port, t[i].port);
		CU_ASSERT_EQUAL(px.tls, t[i].tls);
		CU_ASSERT_STRING_EQUAL(px.destuser, t[i].destuser);
	}
}

static void
test_proxy_set_fields(void)
{
	char dir[] = "/tmp/pc-uproxy.XXXXXX", url[128], path[96], line[1024];
	const char *err = NULL;
	char *set1[] = { "proxy=y", "host=192.0.2.7", "port=1143" };
	char *set2[] = { "port=", "tls=starttls" };
	char *bad[] = { "host=" };
	struct userdb_proxy px;
	struct userdb *db;
	FILE *f;

	CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/users", dir);
	snprintf(url, sizeof(url), "file:%s", path);
	CU_ASSERT_EQUAL_FATAL(userdb_set_password(url, "a@x.org", "pw one", 1, USERDB_CRAM, &err), 0);
	CU_ASSERT_EQUAL(userdb_set_fields(url, "a@x.org", set1, 3, &err), 0);
	CU_ASSERT_EQUAL(userdb_set_fields(url, "a@x.org", set2, 2, &err), 0);
	CU_ASSERT_EQUAL(userdb_set_fields(url, "a@x.org", bad, 1, &err), -1);
	/* a user with no line yet: no password, only the fields */
	CU_ASSERT_EQUAL(userdb_set_fields(url, "n@x.org", set1, 3, &err), 0);
	/* a password change keeps the fields */
	CU_ASSERT_EQUAL(userdb_set_password(url, "a@x.org", "pw two", 0, USERDB_CRAM, &err), 0);
	db = userdb_load(url, &err);
	CU_ASSERT_PTR_NOT_NULL_FATAL(db);
	CU_ASSERT_EQUAL(userdb_proxy(db, "A@x.org", &px), 1);
	CU_ASSERT_STRING_EQUAL(px.host, "192.0.2.7");
	CU_ASSERT_EQUAL(px.port, 0);
	CU_ASSERT_EQUAL(px.tls, USERDB_TLS_STARTTLS);
	CU_ASSERT_STRING_EQUAL(userdb_proxy_fields(db, "a@x.org"), "proxy=y host=192.0.2.7 tls=starttls");
	CU_ASSERT_TRUE(userdb_verify(db, "a@x.org", "pw two"));
	CU_ASSERT_PTR_NOT_NULL(userdb_cram_secret(db, "a@x.org"));
	CU_ASSERT_EQUAL(userdb_proxy(db, "n@x.org", &px), 1);
	CU_ASSERT_EQUAL(px.port, 1143);
	CU_ASSERT_FALSE(userdb_verify(db, "n@x.org", ""));
	CU_ASSERT_PTR_NULL(userdb_proxy_fields(db, "z@x.org"));
	userdb_free(&db);
	/* a hand-made line with proxy=y and no host: its logins fail, not served here */
	f = fopen(path, "a");
	CU_ASSERT_PTR_NOT_NULL_FATAL(f);
	fputs("b@x.org:{CRYPT}x::::::proxy=y port=143\n", f);
	fclose(f);
	db = userdb_load(url, &err);
	CU_ASSERT_PTR_NOT_NULL_FATAL(db);
	CU_ASSERT_EQUAL(userdb_proxy(db, "b@x.org", &px), -1);
	userdb_free(&db);
	f = fopen(path, "r");
	CU_ASSERT_PTR_NOT_NULL_FATAL(f);
	while (fgets(line, sizeof(line), f) != NULL)
		if (strncmp(line, "n@x.org:", 8) == 0)
			CU_ASSERT_STRING_EQUAL(line, "n@x.org:::::::proxy=y host=192.0.2.7 port=1143\n");
	fclose(f);
	unlink(path);
	snprintf(path, sizeof(path), "%s/users.lock", dir);
	unlink(path);
	rmdir(dir);
}

static CU_TestInfo tests[] = {
	{ "userdb proxy: the fields' parser", test_proxy_parse },
	{ "userdb proxy: user set keeps the line's other fields", test_proxy_set_fields },
	{ "userdb proxy: the PLAIN response for mail_proxy_auth = backend", test_plain_response },
	{ NULL, NULL },
};

void
test_userdb_proxy_register(void)
{
	unit_suite("userdb_proxy", tests);
}
