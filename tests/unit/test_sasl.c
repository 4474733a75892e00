/* common/sasl: RFC 7677's SCRAM-SHA-256 vector, Dovecot's key format, and
 * whole exchanges against GNU SASL's client for every mechanism. */
#include <gsasl.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "common/base64.h"
#include "common/sasl.h"
#include "common/xmalloc.h"
#include "storage-adapter/crammd5.h"
#include "storage-adapter/userdb.h"
#include "tests/unit/unit.h"

/* users: u@example.org / pencil with every secret; old@example.org / pencil
 * without SCRAM keys (made before SCRAM); cert@example.org for EXTERNAL */
static int
t_lookup(void *arg, const char *login, struct sasl_user *r)
{
	const char *e;

	(void)arg;
	if (strcasecmp(login, "u@example.org") != 0 && strcasecmp(login, "old@example.org") != 0 &&
	    strcasecmp(login, "cert@example.org") != 0)
		return 0;
	snprintf(r->name, sizeof(r->name), "%s", login);
	for (char *p = r->name; *p; p++)
		*p = (char)(*p >= 'A' && *p <= 'Z' ? *p + 32 : *p);
	snprintf(r->hash, sizeof(r->hash), "TEST:pencil");
	crammd5_secret("pencil", r->cram);
	if (strcasecmp(login, "old@example.org") != 0)
		CU_ASSERT_EQUAL(sasl_scram_make("pencil", 4096, NULL, 0, r->scram, sizeof(r->scram),
		    &e), 0);
	return 1;
}

static int
t_verify(void *arg, const struct sasl_user *u, const char *pw)
{
	(void)arg;
	return strncmp(u->hash, "TEST:", 5) == 0 && strcmp(u->hash + 5, pw) == 0;
}

static int
t_cram(void *arg, const struct sasl_user *u, const char *ch, const char *digest)
{
	(void)arg;
	return crammd5_verify(u->cram, ch, strlen(ch), digest);
}

static const struct sasl_callbacks cbs = { t_lookup, t_verify, t_cram, NULL };

static void
test_scram_rfc7677(void)
{
	/* RFC 7677 §3: user "user", password "pencil" */
	static const char cfb[] = "n=user,r=rOprNGfwEbeRWgbNEkqO";
	static const char sf[] = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
	    "s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
	static const char cfwp[] = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
	static const char proof64[] = "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
	static const char verifier64[] = "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
	unsigned char salt[32], stored[64], server[64], proof[64], sig[32], key[32], h[32];
	char keys[200], s_salt[64], s_stored[64], s_server[64], am[400], sig64[64];
	size_t n, sn, pn;
	unsigned it, sl = 0;
	const char *e;

	CU_ASSERT_EQUAL_FATAL(base64_decode("W22ZaJ0SNY7soEsUEjb6gQ==", 24, salt, sizeof(salt),
	    &n), 0);
	CU_ASSERT_EQUAL_FATAL(sasl_scram_make("pencil", 4096, salt, n, keys, sizeof(keys), &e), 0);
	/* the same string as `gsasl --mkpasswd` and `doveadm pw -s SCRAM-SHA-256` make */
	CU_ASSERT_STRING_EQUAL(keys, "{SCRAM-SHA-256}4096,W22ZaJ0SNY7soEsUEjb6gQ==,"
	    "WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=,wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=");
	CU_ASSERT_EQUAL_FATAL(sasl_scram_parse(keys, &it, s_salt, s_stored, s_server), 0);
	CU_ASSERT_EQUAL(it, 4096);
	CU_ASSERT_EQUAL_FATAL(base64_decode(s_stored, strlen(s_stored), stored, sizeof(stored),
	    &sn), 0);
	CU_ASSERT_EQUAL_FATAL(base64_decode(s_server, strlen(s_server), server, sizeof(server),
	    &n), 0);
	CU_ASSERT_EQUAL_FATAL(base64_decode(proof64, strlen(proof64), proof, sizeof(proof), &pn), 0);
	CU_ASSERT_EQUAL_FATAL(sn, 32);
	CU_ASSERT_EQUAL_FATAL(pn, 32);
	snprintf(am, sizeof(am), "%s,%s,%s", cfb, sf, cfwp);
	/* the client's proof checks out against StoredKey alone */
	HMAC(EVP_sha256(), stored, 32, (const unsigned char *)am, strlen(am), sig, &sl);
	for (int i = 0; i < 32; i++)
		key[i] = proof[i] ^ sig[i];
	SHA256(key, 32, h);
	CU_ASSERT_EQUAL(memcmp(h, stored, 32), 0);
	/* and ServerKey signs what the RFC's server sent */
	HMAC(EVP_sha256(), server, 32, (const unsigned char *)am, strlen(am), sig, &sl);
	base64_encode(sig, 32, sig64);
	CU_ASSERT_STRING_EQUAL(sig64, verifier64);
}

static const struct {
	const char *name, *v;
	int ok;
} scram_fmt[] = {
	{ "gsasl --mkpasswd output", "{SCRAM-SHA-256}4096,W22ZaJ0SNY7soEsUEjb6gQ==,"
	    "WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=,wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=", 1 },
	{ "lower-case scheme", "{scram-sha-256}4096,W22ZaJ0SNY7soEsUEjb6gQ==,"
	    "WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=,wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=", 1 },
	{ "too few iterations", "{SCRAM-SHA-256}4095,W22ZaJ0SNY7soEsUEjb6gQ==,"
	    "WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=,wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=", 0 },
	{ "short key", "{SCRAM-SHA-256}4096,W22ZaJ0SNY7soEsUEjb6gQ==,AAAA,"
	    "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=", 0 },
	{ "five fields", "{SCRAM-SHA-256}4096,W22ZaJ0SNY7soEsUEjb6gQ==,"
	    "WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=,wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=,x", 0 },
	{ "other scheme", "{SCRAM-SHA-1}4096,a,b,c", 0 },
	{ "not base64", "{SCRAM-SHA-256}4096,!!!!,"
	    "WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=,wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=", 0 },
};

static void
test_scram_format(void)
{
	char a[64], b[64], c[64];
	unsigned it;

	for (size_t i = 0; i < sizeof(scram_fmt) / sizeof(scram_fmt[0]); i++) {
		int ok = sasl_scram_parse(scram_fmt[i].v, &it, a, b, c) == 0;

		if (ok != scram_fmt[i].ok)
			fprintf(stderr, "\n  %s: parse %d\n", scram_fmt[i].name, ok);
		CU_ASSERT_EQUAL(ok, scram_fmt[i].ok);
	}
}

static const struct {
	const char *name, *in;
	int ok;
	const char *out;
} b64[] = {
	{ "plain text", "aGVsbG8=", 1, "hello" },
	{ "empty", "", 1, "" },
	{ "no padding", "aGVsbG8", 0, NULL },
	{ "pad in the middle", "aG=sbG8=", 0, NULL },
	{ "bad character", "aGVs!G8=", 0, NULL },
	{ "non-zero spare bits", "aGVsbG9=", 0, NULL },
	{ "three pads", "a===", 0, NULL },
};

static void
test_base64(void)
{
	for (size_t i = 0; i < sizeof(b64) / sizeof(b64[0]); i++) {
		unsigned char out[64];
		size_t n = 0;
		int ok = base64_decode(b64[i].in, strlen(b64[i].in), out, sizeof(out), &n) == 0;

		if (ok != b64[i].ok)
			fprintf(stderr, "\n  %s: decode %d\n", b64[i].name, ok);
		CU_ASSERT_EQUAL(ok, b64[i].ok);
		if (ok && b64[i].out)
			CU_ASSERT_STRING_EQUAL((char *)out, b64[i].out);
	}
}

enum { T_NONE, T_PROOF, T_GARBAGE, T_CANCEL, T_IR };	/* T_IR: initial response */

static const struct {
	const char *name, *mech, *user, *pass, *ext;
	int tamper;
	enum sasl_rc want;
	const char *as;		/* the canonical user on success */
} ex[] = {
	{ "SCRAM: right password", "SCRAM-SHA-256", "u@example.org", "pencil", NULL, T_NONE,
	  SASL_OK, "u@example.org" },
	{ "SCRAM: login in capitals is the canonical user", "SCRAM-SHA-256", "U@Example.ORG",
	  "pencil", NULL, T_NONE, SASL_OK, "u@example.org" },
	{ "SCRAM: wrong password", "SCRAM-SHA-256", "u@example.org", "pencils", NULL, T_NONE,
	  SASL_FAIL, NULL },
	{ "SCRAM: tampered proof", "SCRAM-SHA-256", "u@example.org", "pencil", NULL, T_PROOF,
	  SASL_FAIL, NULL },
	{ "SCRAM: unknown user", "SCRAM-SHA-256", "nobody@example.org", "pencil", NULL, T_NONE,
	  SASL_FAIL, NULL },
	{ "SCRAM: user without keys yet", "SCRAM-SHA-256", "old@example.org", "pencil", NULL,
	  T_NONE, SASL_FAIL, NULL },
	{ "SCRAM: garbage response", "SCRAM-SHA-256", "u@example.org", "pencil", NULL, T_GARBAGE,
	  SASL_BAD_BASE64, NULL },
	{ "SCRAM: cancelled", "SCRAM-SHA-256", "u@example.org", "pencil", NULL, T_CANCEL,
	  SASL_CANCELLED, NULL },
	{ "PLAIN: right password", "PLAIN", "u@example.org", "pencil", NULL, T_NONE, SASL_OK,
	  "u@example.org" },
	{ "PLAIN: user without SCRAM keys still logs in", "PLAIN", "old@example.org", "pencil",
	  NULL, T_NONE, SASL_OK, "old@example.org" },
	{ "PLAIN: wrong password", "PLAIN", "u@example.org", "x", NULL, T_NONE, SASL_FAIL, NULL },
	{ "PLAIN: unknown user", "PLAIN", "n@example.org", "pencil", NULL, T_NONE, SASL_FAIL, NULL },
	{ "LOGIN: right password", "LOGIN", "u@example.org", "pencil", NULL, T_NONE, SASL_OK,
	  "u@example.org" },
	{ "LOGIN: user name as initial response", "LOGIN", "u@example.org", "pencil", NULL, T_IR,
	  SASL_OK, "u@example.org" },
	{ "PLAIN: initial response", "PLAIN", "u@example.org", "pencil", NULL, T_IR, SASL_OK,
	  "u@example.org" },
	{ "SCRAM: initial response", "SCRAM-SHA-256", "u@example.org", "pencil", NULL, T_IR,
	  SASL_OK, "u@example.org" },
	{ "EXTERNAL: initial response", "EXTERNAL", NULL, NULL, "cert@example.org", T_IR,
	  SASL_OK, "cert@example.org" },
	{ "LOGIN: wrong password", "LOGIN", "u@example.org", "x", NULL, T_NONE, SASL_FAIL, NULL },
	{ "CRAM-MD5: right password", "CRAM-MD5", "u@example.org", "pencil", NULL, T_NONE, SASL_OK,
	  "u@example.org" },
	{ "CRAM-MD5: wrong password", "CRAM-MD5", "u@example.org", "x", NULL, T_NONE, SASL_FAIL,
	  NULL },
	{ "EXTERNAL: certificate of a user", "EXTERNAL", NULL, NULL, "cert@example.org", T_NONE,
	  SASL_OK, "cert@example.org" },
	{ "EXTERNAL: certificate of nobody", "EXTERNAL", NULL, NULL, "who@example.org", T_NONE,
	  SASL_FAIL, NULL },
	{ "EXTERNAL: asks to be another user", "EXTERNAL", NULL, NULL, "cert@example.org", T_NONE,
	  SASL_FAIL, NULL },
};

static unsigned
mech_bit(const char *m)
{
	return authmech_from_name(m);
}

static void
test_exchanges(void)
{
	Gsasl *cctx;

	CU_ASSERT_EQUAL_FATAL(gsasl_init(&cctx), GSASL_OK);
	for (size_t i = 0; i < sizeof(ex) / sizeof(ex[0]); i++) {
		struct sasl_params p = { &cbs, "mx.example.org", ex[i].ext };
		struct sasl_server *s = sasl_server_new(mech_bit(ex[i].mech), &p);
		Gsasl_session *c = NULL;
		const char *out;
		enum sasl_rc rc;
		int rounds = 0;

		CU_ASSERT_PTR_NOT_NULL_FATAL(s);
		CU_ASSERT_EQUAL_FATAL(gsasl_client_start(cctx, ex[i].mech, &c), GSASL_OK);
		if (ex[i].user)
			gsasl_property_set(c, GSASL_AUTHID, ex[i].user);
		if (ex[i].pass)
			gsasl_property_set(c, GSASL_PASSWORD, ex[i].pass);
		if (strstr(ex[i].name, "another user"))
			gsasl_property_set(c, GSASL_AUTHZID, "u@example.org");
		if (ex[i].tamper == T_IR) {
			char *cout = NULL;

			CU_ASSERT_TRUE(gsasl_step64(c, "", &cout) >= 0);
			rc = sasl_server_step64(s, cout[0] ? cout : "=", &out);
			gsasl_free(cout);
		} else {
			rc = sasl_server_step64(s, NULL, &out);
		}
		while (rc == SASL_CONTINUE && rounds++ < 5) {
			char *cout = NULL;
			int crc = gsasl_step64(c, out, &cout);

			CU_ASSERT_TRUE(crc == GSASL_OK || crc == GSASL_NEEDS_MORE);
			if (cout == NULL)
				break;
			if (ex[i].tamper != T_NONE && ex[i].tamper != T_IR) {
				unsigned char dec[600];
				size_t n;

				if (base64_decode(cout, strlen(cout), dec, sizeof(dec), &n) == 0 &&
				    strstr((char *)dec, ",p=") != NULL) {
					char *pp = strstr((char *)dec, ",p=") + 3;

					*pp = *pp == 'A' ? 'B' : 'A';
					base64_encode(dec, n, cout);
					if (ex[i].tamper == T_GARBAGE)
						cout[1] = '!';
					if (ex[i].tamper == T_CANCEL)
						strcpy(cout, "*");
				}
			}
			rc = sasl_server_step64(s, cout, &out);
			gsasl_free(cout);
		}
		if (rc == SASL_CHECK) {
			sasl_server_check(s);
			rc = sasl_server_checked(s, &out);
		}
		if (rc == SASL_OK && out[0] != '\0') {	/* SCRAM: the client checks the server */
			char *cout = NULL;

			CU_ASSERT_EQUAL(gsasl_step64(c, out, &cout), GSASL_OK);
			gsasl_free(cout);
		}
		if (rc != ex[i].want)
			fprintf(stderr, "\n  %s: rc %d, want %d\n", ex[i].name, rc, ex[i].want);
		CU_ASSERT_EQUAL(rc, ex[i].want);
		if (rc == SASL_OK && ex[i].as)
			CU_ASSERT_STRING_EQUAL(sasl_server_user(s), ex[i].as);
		/* a finished exchange takes nothing more */
		if (rc == SASL_OK || rc == SASL_FAIL)
			CU_ASSERT_EQUAL(sasl_server_step64(s, "", &out), SASL_FAIL);
		gsasl_finish(c);
		sasl_server_free(&s);
		CU_ASSERT_PTR_NULL(s);
	}
	gsasl_done(cctx);
	/* EXTERNAL without a verified certificate is not on offer */
	{
		struct sasl_params p = { &cbs, "mx", NULL };

		CU_ASSERT_PTR_NULL(sasl_server_new(AUTH_MECH_EXTERNAL, &p));
	}
}

#define KEYS "{SCRAM-SHA-256}4096,W22ZaJ0SNY7soEsUEjb6gQ==," \
	"WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=,wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="
#define CRAM "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

/* the users file's extra fields, in either order, and what set_password writes */
static void
test_userdb_scram_fields(void)
{
	static const struct {
		const char *line, *user;
		int scram, cram;
	} t[] = {
		{ "a@x.org:{CRYPT}h::::::scram_sha_256=" KEYS " cram_md5=" CRAM, "a@x.org", 1, 1 },
		{ "b@x.org:{CRYPT}h::::::cram_md5=" CRAM " scram_sha_256=" KEYS, "b@x.org", 1, 1 },
		{ "c@x.org:{CRYPT}h::::::userdb_quota=1G scram_sha_256=" KEYS, "c@x.org", 1, 0 },
		{ "d@x.org:{CRYPT}h::::::", "d@x.org", 0, 0 },
		{ "e@x.org:{CRYPT}h::::::scram_sha_256={SCRAM-SHA-256}12,a,b,c", "e@x.org", 0, 0 },
		{ "f@x.org:{CRYPT}h::::::xscram_sha_256=" KEYS, "f@x.org", 0, 0 },
	};
	char *dir = unit_tmpdir(), *path = xasprintf("%s/users", dir), *url = xasprintf("file:%s", path);
	FILE *fp = fopen(path, "w");
	struct userdb *db;
	const char *err, *v;

	CU_ASSERT_PTR_NOT_NULL_FATAL(fp);
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
		fprintf(fp, "%s\n", t[i].line);
	fclose(fp);
	db = userdb_load(url, &err);
	CU_ASSERT_PTR_NOT_NULL_FATAL(db);
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		v = userdb_scram_secret(db, t[i].user);
		CU_ASSERT_EQUAL(v != NULL, t[i].scram);
		if (v != NULL && t[i].scram)
			CU_ASSERT_STRING_EQUAL(v, KEYS);
		v = userdb_cram_secret(db, t[i].user);
		CU_ASSERT_EQUAL(v != NULL, t[i].cram);
		if (v != NULL && t[i].cram)
			CU_ASSERT_STRING_EQUAL(v, CRAM);
	}
	userdb_free(&db);
	/* user passwd writes keys that check out, CRAM-MD5 or not */
	CU_ASSERT_EQUAL(userdb_set_password(url, "d@x.org", "pencil", 0, 0, &err), 0);
	CU_ASSERT_EQUAL(userdb_set_password(url, "a@x.org", "pencil", 0, 1, &err), 0);
	db = userdb_load(url, &err);
	CU_ASSERT_PTR_NOT_NULL_FATAL(db);
	for (int k = 0; k < 2; k++) {
		char a[64], b[64], c[64];
		unsigned it = 0;

		v = userdb_scram_secret(db, k ? "a@x.org" : "d@x.org");
		CU_ASSERT_PTR_NOT_NULL_FATAL(v);
		CU_ASSERT_EQUAL(sasl_scram_parse(v, &it, a, b, c), 0);
		CU_ASSERT_EQUAL(it, 4096);
	}
	CU_ASSERT_PTR_NULL(userdb_cram_secret(db, "d@x.org"));
	CU_ASSERT_PTR_NOT_NULL(userdb_cram_secret(db, "a@x.org"));
	userdb_free(&db);
	unlink(path);
	{
		char *lock = xasprintf("%s.lock", path);

		unlink(lock);
		free(lock);
	}
	rmdir(dir);
	free(url);
	free(path);
	free(dir);
}

static CU_TestInfo tests[] = {
	{ "userdb: scram_sha_256 and cram_md5 extra fields", test_userdb_scram_fields },
	{ "SCRAM-SHA-256: RFC 7677 vector from stored keys", test_scram_rfc7677 },
	{ "SCRAM-SHA-256: Dovecot's stored format", test_scram_format },
	{ "base64: strict decoding", test_base64 },
	{ "exchanges against GNU SASL's client", test_exchanges },
	CU_TEST_INFO_NULL,
};

void
test_sasl_register(void)
{
	unit_suite("sasl", tests);
}
