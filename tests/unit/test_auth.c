/* crammd5 (RFC 2195 vector), userdb hashes, base64 AUTH dialogues. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/xmalloc.h"
#include "storage-adapter/crammd5.h"
#include "storage-adapter/userdb.h"
#include "tests/unit/unit.h"

static void
test_crammd5_rfc2195(void)
{
	char secret[CRAMMD5_SECRET_HEX + 1];
	const char *ch = "<1896.697170952@postoffice.reston.mci.net>";

	crammd5_secret("tanstaaftanstaaf", secret);
	CU_ASSERT_EQUAL(strlen(secret), 64);
	CU_ASSERT_TRUE(crammd5_verify(secret, ch, strlen(ch), "b913a602c7eda7a495b4e6e7334d3890"));
	CU_ASSERT_TRUE(crammd5_verify(secret, ch, strlen(ch), "B913A602C7EDA7A495B4E6E7334D3890"));
	CU_ASSERT_FALSE(crammd5_verify(secret, ch, strlen(ch), "b913a602c7eda7a495b4e6e7334d3891"));
	CU_ASSERT_FALSE(crammd5_verify(secret, "<other>", 7, "b913a602c7eda7a495b4e6e7334d3890"));
	CU_ASSERT_FALSE(crammd5_verify(NULL, ch, strlen(ch), "b913a602c7eda7a495b4e6e7334d3890"));
	CU_ASSERT_FALSE(crammd5_verify("zz", ch, strlen(ch), "b913a602c7eda7a495b4e6e7334d3890"));
	CU_ASSERT_FALSE(crammd5_verify(secret, ch, strlen(ch), "short"));
	/* keys over 64 bytes are hashed first (RFC 2104) */
	crammd5_secret("0123456789012345678901234567890123456789012345678901234567890123456789", secret);
	CU_ASSERT_EQUAL(strlen(secret), 64);
}

static void
test_userdb_roundtrip(void)
{
	char *dir = unit_tmpdir();
	char *url = xasprintf("file:%s/sub/users", dir);
	const char *err;
	struct userdb *db;
	int found;

	CU_ASSERT_EQUAL(userdb_set_password(url, "Alice@Example.com", "pw one", 1, 1, &err), 0);
	CU_ASSERT_EQUAL(userdb_set_password(url, "bob@example.com", "pw two", 1, 0, &err), 0);
	CU_ASSERT_EQUAL(userdb_set_password(url, "carol@example.com", "x", 0, 0, &err), -1);
	CU_ASSERT_EQUAL(userdb_set_password(url, "no-at-sign", "x", 1, 0, &err), -1);
	CU_ASSERT_EQUAL(userdb_set_password(url, "a:b@example.com", "x", 1, 0, &err), -1);
	CU_ASSERT_EQUAL(userdb_set_password(url, "dave@example.com", "", 1, 0, &err), -1);
	db = userdb_load(url, &err);
	CU_ASSERT_PTR_NOT_NULL_FATAL(db);
	CU_ASSERT_EQUAL(userdb_count(db), 2);
	CU_ASSERT_TRUE(userdb_has_user(db, "ALICE", "example.COM"));
	CU_ASSERT_TRUE(userdb_verify(db, "alice@example.com", "pw one"));
	CU_ASSERT_FALSE(userdb_verify(db, "alice@example.com", "pw two"));
	CU_ASSERT_FALSE(userdb_verify(db, "nobody@example.com", "pw one"));
	CU_ASSERT_PTR_NOT_NULL(userdb_cram_secret(db, "alice@example.com"));
	CU_ASSERT_PTR_NULL(userdb_cram_secret(db, "bob@example.com"));	/* not asked for */
	CU_ASSERT_PTR_NOT_NULL(strstr(userdb_password(db, "bob@example.com"), "{CRYPT}$y$"));
	userdb_free(&db);
	CU_ASSERT_EQUAL(userdb_delete(url, "bob@example.com", &found, &err), 0);
	CU_ASSERT_EQUAL(found, 1);
	CU_ASSERT_EQUAL(userdb_delete(url, "bob@example.com", &found, &err), 0);
	CU_ASSERT_EQUAL(found, 0);
	db = userdb_load(url, &err);
	CU_ASSERT_EQUAL(userdb_count(db), 1);
	userdb_free(&db);
	CU_ASSERT_PTR_NULL(userdb_load("ldap://x", &err));
	free(url);
	free(dir);
}

static void
put(const char *path, const char *text)
{
	char *tmp = xasprintf("%s.new", path);
	FILE *f = fopen(tmp, "w");

	CU_ASSERT_PTR_NOT_NULL_FATAL(f);
	fputs(text, f);
	fclose(f);
	CU_ASSERT_EQUAL(rename(tmp, path), 0);
	free(tmp);
}

/* a broken file never replaces a good userdb; a good one does */
static void
test_userdb_reload(void)
{
	static const char good[] = "alice@example.com:{CRYPT}$y$x::::::\n";
	static const char two[] = "alice@example.com:{CRYPT}$y$x::::::\n"
	    "bob@example.com:{CRYPT}$y$x::::::\n";
	static const struct {
		const char *name;
		const char *text;	/* NULL: remove; "<dir>": a directory */
		int rc;
		size_t users;
		const char *why;
	} t[] = {
		{ "unchanged", "", 0, 1, NULL },
		{ "truncated to zero bytes", "", -1, 1, "is empty" },
		{ "removed", NULL, -1, 1, "No such file" },
		{ "a directory", "<dir>", -1, 1, "Is a directory" },
		{ "garbage", "garbage\nmore: garbage\n", -1, 1, "no valid user line" },
		{ "two users", two, 1, 2, NULL },
		{ "comments only: no users on purpose", "# nobody\n", 1, 0, NULL },
		{ "back to one", good, 1, 1, NULL },
	};
	char *dir = unit_tmpdir();
	char *path = xasprintf("%s/users", dir), *url = xasprintf("file:%s", path);
	const char *err;
	struct userdb *db;

	put(path, good);
	db = userdb_load(url, &err);
	CU_ASSERT_PTR_NOT_NULL_FATAL(db);
	CU_ASSERT_TRUE(userdb_is_usable(db, &err));
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		const char *why = "";
		int rc;

		rmdir(path);
		if (i > 0 && t[i].text == NULL)
			unlink(path);
		else if (i > 0 && strcmp(t[i].text, "<dir>") == 0)
			unlink(path), mkdir(path, 0700);
		else if (i > 0)
			put(path, t[i].text);
		usleep(2000);	/* a new mtime */
		rc = userdb_reload(&db, url, &why);
		if (rc != t[i].rc || userdb_count(db) != t[i].users ||
		    (t[i].why && strstr(why, t[i].why) == NULL))
			fprintf(stderr, "\n  %s: rc %d users %zu why %s\n", t[i].name, rc,
			    userdb_count(db), why);
		CU_ASSERT_EQUAL(rc, t[i].rc);
		CU_ASSERT_EQUAL(userdb_count(db), t[i].users);
		if (t[i].why != NULL)
			CU_ASSERT_PTR_NOT_NULL(strstr(why, t[i].why));
		/* asking again about the same broken file says the same, quietly */
		if (rc < 0)
			CU_ASSERT_EQUAL(userdb_reload(&db, url, &why), -1);
	}
	userdb_free(&db);
	unlink(path);
	rmdir(dir);
	free(path);
	free(url);
	free(dir);
}

static CU_TestInfo tests[] = {
	{ "userdb: broken files keep the last good users", test_userdb_reload },
	{ "CRAM-MD5: RFC 2195 vector, garbage", test_crammd5_rfc2195 },
	{ "userdb: add, verify, delete, bad names", test_userdb_roundtrip },
	CU_TEST_INFO_NULL,
};

void
test_auth_register(void)
{
	unit_suite("auth", tests);
}
