/*
 * common/apop: the APOP digest (RFC 1939 section 7), one row per case; and
 * the users file's APOP secret (storage-adapter/userdb): stored only when
 * asked for, read back exactly, whatever the password holds.
 */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <stdlib.h>
#include <unistd.h>

#include "common/apop.h"
#include "storage-adapter/userdb.h"
#include "tests/unit/unit.h"

#define RFC_STAMP "<1896.697170952@dbc.mtview.ca.us>"
#define RFC_DIGEST "c4c9334bac560ecc979e58001b3e22fb"

static void
test_apop_verify(void)
{
	static const struct {
		const char *name, *secret, *stamp, *digest;
		int ok;
	} t[] = {
		{ "RFC 1939's example", "tanstaaf", RFC_STAMP, RFC_DIGEST, 1 },
		{ "upper-case hex", "tanstaaf", RFC_STAMP, "C4C9334BAC560ECC979E58001B3E22FB", 1 },
		{ "another secret", "tanstaaftanstaaf", RFC_STAMP, RFC_DIGEST, 0 },
		{ "the secret's case counts", "Tanstaaf", RFC_STAMP, RFC_DIGEST, 0 },
		{ "another stamp (a replay)", "tanstaaf", "<1897.697170952@dbc.mtview.ca.us>",
		    RFC_DIGEST, 0 },
		{ "one digit off", "tanstaaf", RFC_STAMP, "c4c9334bac560ecc979e58001b3e22fc", 0 },
		{ "31 digits", "tanstaaf", RFC_STAMP, "c4c9334bac560ecc979e58001b3e22f", 0 },
		{ "33 digits", "tanstaaf", RFC_STAMP, RFC_DIGEST "0", 0 },
		{ "not hex", "tanstaaf", RFC_STAMP, "g4c9334bac560ecc979e58001b3e22fb", 0 },
		{ "empty digest", "tanstaaf", RFC_STAMP, "", 0 },
		{ "UTF-8, spaces and colons in the secret", "p\xc3\xa4ssw\xc3\xb6rd with spaces: and "
		    "colons", "<1.2@x>", "790e96dfe763749da65342826fd2e2c4", 1 },
		{ "empty secret", "", "<1.2@x>", "bb4bc525255bbbd2e17e73544bba3150", 1 },
		{ "no secret stored", NULL, RFC_STAMP, RFC_DIGEST, 0 },
	};

	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		int got = apop_verify(t[i].secret, t[i].stamp, t[i].digest);

		if (got != t[i].ok)
			fprintf(stderr, "\napop row \"%s\": got %d\n", t[i].name, got);
		CU_ASSERT_EQUAL(got, t[i].ok);
		if (t[i].ok && t[i].secret != NULL) {
			char d[APOP_DIGEST_HEX + 1];

			apop_digest(t[i].secret, t[i].stamp, d);
			CU_ASSERT_EQUAL(strcasecmp(d, t[i].digest), 0);
			CU_ASSERT_EQUAL(strlen(d), APOP_DIGEST_HEX);
		}
	}
}

/* user add|passwd with and without USERDB_APOP: the secret round-trips
 * (spaces, colons, UTF-8, the 511 characters libcrypt takes), a line without it
 * holds none, a hand-made apop= that is not {PLAIN.BASE64} is ignored */
static void
test_apop_userdb_secret(void)
{
	static char longpw[512];	/* libxcrypt hashes at most 511 (CRYPT_MAX_PASSPHRASE_SIZE) */
	static const struct {
		const char *name, *user, *password;
		unsigned secrets;
		int has_apop, has_cram;
	} t[] = {
		{ "APOP on", "a@x.org", "tanstaaf", USERDB_APOP, 1, 0 },
		{ "APOP and CRAM-MD5", "b@x.org", "p\xc3\xa4ss: with spaces", USERDB_APOP | USERDB_CRAM,
		    1, 1 },
		{ "neither", "c@x.org", "tanstaaf", 0, 0, 0 },
		{ "CRAM-MD5 only", "d@x.org", "tanstaaf", USERDB_CRAM, 0, 1 },
		{ "the longest password", "e@x.org", longpw, USERDB_APOP, 1, 0 },
		{ "a off again: its new line has none", "a@x.org", "new one", 0, 0, 0 },
	};
	char dir[] = "/tmp/pc-apop.XXXXXX", url[128], path[96];
	const char *err = NULL;
	struct userdb *db;
	FILE *f;

	memset(longpw, 'k', 511);
	longpw[510] = ':';
	CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/users", dir);
	snprintf(url, sizeof(url), "file:%s", path);
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		if (userdb_set_password(url, t[i].user, t[i].password, 1, t[i].secrets, &err) < 0) {
			fprintf(stderr, "\napop row \"%s\": %s\n", t[i].name, err);
			CU_FAIL_FATAL("userdb_set_password");
		}
		db = userdb_load(url, &err);
		CU_ASSERT_PTR_NOT_NULL_FATAL(db);
		if (t[i].has_apop) {
			const char *s = userdb_apop_secret(db, t[i].user);
			char d[APOP_DIGEST_HEX + 1];

			CU_ASSERT_PTR_NOT_NULL(s);
			CU_ASSERT_TRUE(s != NULL && strcmp(s, t[i].password) == 0);
			apop_digest(t[i].password, "<7.8@mx.example.com>", d);
			CU_ASSERT_TRUE(apop_verify(s, "<7.8@mx.example.com>", d));
		} else {
			CU_ASSERT_PTR_NULL(userdb_apop_secret(db, t[i].user));
		}
		CU_ASSERT_EQUAL(userdb_cram_secret(db, t[i].user) != NULL, t[i].has_cram);
		CU_ASSERT_TRUE(userdb_verify(db, t[i].user, t[i].password));
		userdb_free(&db);
	}
	/* hand-edited: another scheme, bad base64, nothing after the scheme */
	f = fopen(path, "a");
	CU_ASSERT_PTR_NOT_NULL_FATAL(f);
	fputs("f@x.org:{CRYPT}x::::::apop={PLAIN}tanstaaf\n"
	    "g@x.org:{CRYPT}x::::::apop={PLAIN.BASE64}dGFuc3RhYW=\n"
	    "h@x.org:{CRYPT}x::::::apop={PLAIN.BASE64}\n"
	    "i@x.org:{CRYPT}x::::::apop={PLAIN.BASE64}dGFuc3RhYWY= cram_md5=00\n", f);
	fclose(f);
	db = userdb_load(url, &err);
	CU_ASSERT_PTR_NOT_NULL_FATAL(db);
	CU_ASSERT_PTR_NULL(userdb_apop_secret(db, "f@x.org"));
	CU_ASSERT_PTR_NULL(userdb_apop_secret(db, "g@x.org"));
	CU_ASSERT_PTR_NULL(userdb_apop_secret(db, "h@x.org"));
	CU_ASSERT_TRUE(userdb_apop_secret(db, "I@X.org") != NULL &&
	    strcmp(userdb_apop_secret(db, "i@x.org"), "tanstaaf") == 0);
	CU_ASSERT_TRUE(apop_verify(userdb_apop_secret(db, "i@x.org"), RFC_STAMP, RFC_DIGEST));
	CU_ASSERT_PTR_NULL(userdb_apop_secret(db, "nobody@x.org"));
	userdb_free(&db);
	unlink(path);
	snprintf(path, sizeof(path), "%s/users.lock", dir);
	unlink(path);
	rmdir(dir);
}

static CU_TestInfo tests[] = {
	{ "apop: digests (RFC 1939 section 7)", test_apop_verify },
	{ "apop: the users file's secret", test_apop_userdb_secret },
	{ NULL, NULL },
};

void
test_apop_register(void)
{
	unit_suite("apop", tests);
}
