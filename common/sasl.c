/*
 * sasl - the SASL mechanism layer every door calls (server side).
 *
 *   sasl_init()            GNU SASL's context, once per process
 *   sasl_server_new()      one exchange of PLAIN, LOGIN, CRAM-MD5, SCRAM-SHA-256, EXTERNAL
 *   sasl_server_step64()   a base64 response -> challenge | check | ok | fail
 *   sasl_server_check()    the slow part (password hash), on a pool thread
 *   sasl_server_checked()  its outcome, back on the caller's thread
 *   sasl_scram_make()      Dovecot-format SCRAM-SHA-256 keys for the users file
 *
 * GNU SASL runs PLAIN, LOGIN, SCRAM-SHA-256 and EXTERNAL; CRAM-MD5 is ours,
 * because GNU SASL's server side wants the plaintext password, which the
 * users file never holds. SCRAM is served from StoredKey/ServerKey alone: its
 * server-side check is a few HMACs, cheap enough for the caller's thread;
 * only PLAIN and LOGIN (yescrypt, milliseconds) return SASL_CHECK.
 *
 * Users are looked up only inside sasl_server_step() (the caller's thread) and
 * copied into the exchange, so sasl_server_check() on a pool thread never
 * reads a database the loop may replace meanwhile. An unknown user costs the
 * same: PLAIN/LOGIN hash against nothing, SCRAM answers with a salt derived
 * from the name (stable, so that it does not tell unknown from known).
 *
 * Never logs credentials, never blocks on I/O, knows nothing of SMTP.
 */
#include <errno.h>
#include <gsasl.h>
#include <openssl/hmac.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include "common/base64.h"
#include "common/sasl.h"
#include "common/xmalloc.h"

#define SASL_LINE_MAX 12288	/* RFC 4954 §4: a response line's base64 */

static Gsasl *gctx;
static int ginit_rc = -1;
static unsigned char fake_key[32];	/* salts for unknown SCRAM users */
static pthread_once_t once = PTHREAD_ONCE_INIT;

struct sasl_server {
	unsigned mech;
	const struct sasl_callbacks *cb;
	Gsasl_session *gs;
	int step;		/* responses taken */
	int found;		/* u came from the database */
	int ok;			/* outcome of a check */
	int done;		/* finished: every further step fails */
	struct sasl_user u;
	char login[256];
	char *external_id;
	char challenge[300];	/* CRAM-MD5 */
	unsigned char *held;	/* PLAIN/LOGIN: the response the check runs */
	size_t heldlen;
	char *out64;		/* the last challenge, base64 */
	char *password;		/* PLAIN/LOGIN, once verified: for a proxy's backend login */
};

const char *
sasl_mech_name(unsigned mech)
{
	switch (mech) {
	case AUTH_MECH_PLAIN: return "PLAIN";
	case AUTH_MECH_LOGIN: return "LOGIN";
	case AUTH_MECH_CRAM: return "CRAM-MD5";
	case AUTH_MECH_SCRAM: return "SCRAM-SHA-256";
	case AUTH_MECH_EXTERNAL: return "EXTERNAL";
	}
	return NULL;
}

static void
set_out(struct sasl_server *s, const unsigned char *p, size_t n)
{
	free(s->out64);
	s->out64 = xmalloc(4 * ((n + 2) / 3) + 1);
	base64_encode(p, n, s->out64);
}

/* login -> s->u; never fails: an unknown user is an empty record */
static void
lookup(struct sasl_server *s, const char *login)
{
	snprintf(s->login, sizeof(s->login), "%s", login);
	memset(&s->u, 0, sizeof(s->u));
	s->found = s->cb->lookup(s->cb->arg, login, &s->u) == 1;
	if (!s->found)
		memset(&s->u, 0, sizeof(s->u));
}

static int
scram_prop(Gsasl_session *gs, struct sasl_server *s, Gsasl_property prop)
{
	char salt[64], stored[64], server[64], iter[16];
	unsigned it;
	const char *authid;

	if (s->login[0] == '\0') {
		authid = gsasl_property_fast(gs, GSASL_AUTHID);
		if (authid == NULL)
			return GSASL_NO_CALLBACK;
		lookup(s, authid);
	}
	if (s->found && s->u.scram[0] != '\0' &&
	    sasl_scram_parse(s->u.scram, &it, salt, stored, server) == 0) {
		snprintf(iter, sizeof(iter), "%u", it);
	} else {
		/* unknown user, or one without keys yet: a salt that looks real */
		unsigned char mac[32];
		unsigned maclen = 0;

		if (prop == GSASL_SCRAM_SERVERKEY || prop == GSASL_SCRAM_STOREDKEY)
			return GSASL_NO_CALLBACK;	/* -> GSASL_NO_PASSWORD: fails */
		HMAC(EVP_sha256(), fake_key, sizeof(fake_key), (const unsigned char *)s->login,
		    strlen(s->login), mac, &maclen);
		base64_encode(mac, 16, salt);
		snprintf(iter, sizeof(iter), "%u", SASL_SCRAM_ITER);
	}
	switch (prop) {
	case GSASL_SCRAM_ITER: gsasl_property_set(gs, prop, iter); break;
	case GSASL_SCRAM_SALT: gsasl_property_set(gs, prop, salt); break;
	case GSASL_SCRAM_STOREDKEY: gsasl_property_set(gs, prop, stored); break;
	case GSASL_SCRAM_SERVERKEY: gsasl_property_set(gs, prop, server); break;
	default: return GSASL_NO_CALLBACK;
	}
	return GSASL_OK;
}

/* the authorization identity, if any, must be the user itself */
static int
authz_ok(Gsasl_session *gs, const struct sasl_server *s)
{
	const char *z = gsasl_property_fast(gs, GSASL_AUTHZID);

	return z == NULL || z[0] == '\0' || strcasecmp(z, s->login) == 0 ||
	    strcasecmp(z, s->u.name) == 0;
}

static int
gcallback(Gsasl *ctx, Gsasl_session *gs, Gsasl_property prop)
{
	struct sasl_server *s = gsasl_session_hook_get(gs);

	(void)ctx;
	if (s == NULL)
		return GSASL_NO_CALLBACK;
	switch (prop) {
	case GSASL_SCRAM_ITER:
	case GSASL_SCRAM_SALT:
	case GSASL_SCRAM_STOREDKEY:
	case GSASL_SCRAM_SERVERKEY:
		return s->mech == AUTH_MECH_SCRAM ? scram_prop(gs, s, prop) : GSASL_NO_CALLBACK;
	case GSASL_VALIDATE_SIMPLE: {
		/* PLAIN, LOGIN: inside sasl_server_check(), on a pool thread */
		const char *id = gsasl_property_fast(gs, GSASL_AUTHID);
		const char *pw = gsasl_property_fast(gs, GSASL_PASSWORD);
		int ok;

		if (id == NULL || pw == NULL)
			return GSASL_AUTHENTICATION_ERROR;
		/* the name hashed against is the one looked up before */
		ok = s->cb->verify_password(s->cb->arg, &s->u, pw);
		ok = ok && s->found && strcasecmp(id, s->login) == 0 && authz_ok(gs, s);
		if (ok && s->password == NULL)
			s->password = xstrdup(pw);
		return ok ? GSASL_OK : GSASL_AUTHENTICATION_ERROR;
	}
	case GSASL_VALIDATE_EXTERNAL:
		if (s->external_id == NULL)
			return GSASL_AUTHENTICATION_ERROR;
		lookup(s, s->external_id);
		return s->found && authz_ok(gs, s) ? GSASL_OK : GSASL_AUTHENTICATION_ERROR;
	default:
		return GSASL_NO_CALLBACK;
	}
}

static void
init_once(void)
{
	if (getrandom(fake_key, sizeof(fake_key), 0) != (ssize_t)sizeof(fake_key))
		return;
	if (gsasl_init(&gctx) != GSASL_OK)
		return;
	gsasl_callback_set(gctx, gcallback);
	ginit_rc = 0;
}

int
sasl_init(const char **error_r)
{
	pthread_once(&once, init_once);
	if (ginit_rc < 0) {
		*error_r = "GNU SASL (libgsasl) failed to initialise";
		return -1;
	}
	return 0;
}

struct sasl_server *
sasl_server_new(unsigned mech, const struct sasl_params *p)
{
	struct sasl_server *s;
	const char *e;

	if (sasl_mech_name(mech) == NULL || sasl_init(&e) < 0)
		return NULL;
	if (mech == AUTH_MECH_EXTERNAL && (p->external_id == NULL || p->external_id[0] == '\0'))
		return NULL;
	s = xcalloc(1, sizeof(*s));
	s->mech = mech;
	s->cb = p->cb;
	if (mech == AUTH_MECH_EXTERNAL)
		s->external_id = xstrdup(p->external_id);
	if (mech == AUTH_MECH_CRAM) {
		unsigned char rnd[8];

		/* a predictable challenge would let a recorded answer be replayed */
		if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd)) {
			free(s);
			return NULL;
		}
		snprintf(s->challenge, sizeof(s->challenge),
		    "<%02x%02x%02x%02x%02x%02x%02x%02x.%lld@%.200s>", rnd[0], rnd[1], rnd[2], rnd[3],
		    rnd[4], rnd[5], rnd[6], rnd[7], (long long)time(NULL),
		    p->hostname ? p->hostname : "localhost");
		return s;
	}
	if (gsasl_server_start(gctx, sasl_mech_name(mech), &s->gs) != GSASL_OK) {
		free(s->external_id);
		free(s);
		return NULL;
	}
	gsasl_session_hook_set(s->gs, s);
	return s;
}

void
sasl_server_free(struct sasl_server **sp)
{
	struct sasl_server *s = *sp;

	if (s == NULL)
		return;
	if (s->gs != NULL)
		gsasl_finish(s->gs);
	if (s->held != NULL) {
		explicit_bzero(s->held, s->heldlen);
		free(s->held);
	}
	explicit_bzero(&s->u, sizeof(s->u));
	if (s->password != NULL) {
		explicit_bzero(s->password, strlen(s->password));
		free(s->password);
	}
	free(s->external_id);
	free(s->out64);
	free(s);
	*sp = NULL;
}

const char *
sasl_server_user(const struct sasl_server *s)
{
	return s->u.name[0] ? s->u.name : s->login;
}

const char *
sasl_server_login(const struct sasl_server *s)
{
	return s->login;
}

const char *
sasl_server_password(const struct sasl_server *s)
{
	return s->password;
}

int
sasl_server_plain_response(const struct sasl_server *s, const char **authcid_r,
    const char **password_r)
{
	const unsigned char *a, *b;

	if (s->mech != AUTH_MECH_PLAIN || s->held == NULL)
		return -1;
	a = memchr(s->held, '\0', s->heldlen);
	if (a == NULL || a != s->held)	/* an authzid: not for a backend's verdict */
		return -1;
	b = memchr(a + 1, '\0', s->heldlen - 1);
	if (b == NULL || b == a + 1 || memchr(b + 1, '\0', s->heldlen - (size_t)(b + 1 - s->held)))
		return -1;
	*authcid_r = (const char *)a + 1;
	*password_r = (const char *)b + 1;	/* held[heldlen] is NUL */
	return 0;
}

unsigned
sasl_server_mech(const struct sasl_server *s)
{
	return s->mech;
}

static enum sasl_rc
finish(struct sasl_server *s, enum sasl_rc rc)
{
	if (rc == SASL_OK || rc == SASL_FAIL)
		s->done = 1;
	return rc;
}

/* one gsasl step on in; the output becomes s->out64 */
static enum sasl_rc
gstep(struct sasl_server *s, const unsigned char *in, size_t n)
{
	char *out = NULL;
	size_t outlen = 0;
	int rc = gsasl_step(s->gs, (const char *)in, n, &out, &outlen);

	if (rc == GSASL_OK || rc == GSASL_NEEDS_MORE)
		set_out(s, (const unsigned char *)(out ? out : ""), out ? outlen : 0);
	gsasl_free(out);
	if (rc == GSASL_NEEDS_MORE)
		return SASL_CONTINUE;
	if (rc == GSASL_OK)
		return finish(s, s->found ? SASL_OK : SASL_FAIL);
	return finish(s, SASL_FAIL);
}

static enum sasl_rc
hold(struct sasl_server *s, const unsigned char *in, size_t n)
{
	s->held = xmalloc(n + 1);
	memcpy(s->held, in, n);
	s->held[n] = '\0';
	s->heldlen = n;
	return SASL_CHECK;
}

static enum sasl_rc
step_bytes(struct sasl_server *s, const unsigned char *in, size_t n)
{
	int first = s->step++ == 0;

	switch (s->mech) {
	case AUTH_MECH_PLAIN: {
		/* authzid NUL authcid NUL password: the name is looked up now,
		 * the password hashed in the check */
		const unsigned char *a, *b;
		char login[256];
		size_t l;

		if (n == 0 && first && in == NULL) {
			set_out(s, NULL, 0);
			return SASL_CONTINUE;
		}
		a = memchr(in, '\0', n);
		if (a == NULL || (b = memchr(a + 1, '\0', n - (size_t)(a + 1 - in))) == NULL ||
		    (l = (size_t)(b - a - 1)) == 0 || l >= sizeof(login))
			return finish(s, SASL_FAIL);
		memcpy(login, a + 1, l);
		login[l] = '\0';
		lookup(s, login);
		return hold(s, in, n);
	}
	case AUTH_MECH_LOGIN: {
		/* GNU SASL asks "User Name", then "Password"; an initial response
		 * (RFC 4954 lets LOGIN have one) is the user name */
		enum sasl_rc rc;

		if (first) {
			rc = gstep(s, NULL, 0);
			if (rc != SASL_CONTINUE)
				return rc;
			/* the prompts every client knows (Postfix, Dovecot, the
			 * LOGIN draft), not GNU SASL's "User Name" */
			set_out(s, (const unsigned char *)"Username:", 9);
			if (in == NULL)
				return rc;
			s->step++;
		}
		if (s->step == 2) {
			char login[256];

			if (n == 0 || n >= sizeof(login) || memchr(in, '\0', n))
				return finish(s, SASL_FAIL);
			memcpy(login, in, n);
			login[n] = '\0';
			lookup(s, login);
			rc = gstep(s, in, n);
			if (rc == SASL_CONTINUE)
				set_out(s, (const unsigned char *)"Password:", 9);
			return rc;
		}
		if (memchr(in, '\0', n))
			return finish(s, SASL_FAIL);
		return hold(s, in, n);
	}
	case AUTH_MECH_CRAM: {
		/* "user hexdigest" answering our challenge */
		const unsigned char *sp;
		char login[256], digest[64];
		size_t l;
		int ok;

		if (first) {
			if (in != NULL)	/* CRAM-MD5 has no initial response */
				return finish(s, SASL_FAIL);
			set_out(s, (const unsigned char *)s->challenge, strlen(s->challenge));
			return SASL_CONTINUE;
		}
		sp = memchr(in, ' ', n);
		l = sp ? (size_t)(sp - in) : 0;
		if (sp == NULL || l == 0 || l >= sizeof(login) || n - l - 1 >= sizeof(digest) ||
		    memchr(in, '\0', n))
			return finish(s, SASL_FAIL);
		memcpy(login, in, l);
		login[l] = '\0';
		memcpy(digest, sp + 1, n - l - 1);
		digest[n - l - 1] = '\0';
		lookup(s, login);
		ok = s->found && s->u.cram[0] != '\0' &&
		    s->cb->verify_cram(s->cb->arg, &s->u, s->challenge, digest);
		set_out(s, NULL, 0);
		return finish(s, ok && s->found && s->u.cram[0] ? SASL_OK : SASL_FAIL);
	}
	case AUTH_MECH_SCRAM:
	case AUTH_MECH_EXTERNAL:
		if (first && n == 0 && in == NULL) {
			set_out(s, NULL, 0);	/* "334 " then the client's first message */
			return SASL_CONTINUE;
		}
		return gstep(s, in, n);
	}
	return finish(s, SASL_FAIL);
}

enum sasl_rc
sasl_server_step64(struct sasl_server *s, const char *line, const char **out64_r)
{
	unsigned char *buf;
	size_t n = 0, ll;
	enum sasl_rc rc;

	*out64_r = "";
	if (s->done || s->held != NULL)
		return SASL_FAIL;
	if (line != NULL && strcmp(line, "*") == 0) {
		s->done = 1;
		return SASL_CANCELLED;
	}
	if (line == NULL) {	/* no initial response: the first challenge */
		rc = step_bytes(s, NULL, 0);
		*out64_r = s->out64 ? s->out64 : "";
		return rc;
	}
	ll = strlen(line);
	if (ll > SASL_LINE_MAX)
		return SASL_BAD_BASE64;
	if (strcmp(line, "=") == 0)
		ll = 0;
	buf = xmalloc(ll / 4 * 3 + 2);
	if (base64_decode(line, ll, buf, ll / 4 * 3 + 2, &n) < 0) {
		free(buf);
		return SASL_BAD_BASE64;
	}
	rc = step_bytes(s, buf, n);
	explicit_bzero(buf, n);
	free(buf);
	*out64_r = s->out64 ? s->out64 : "";
	return rc;
}

void
sasl_server_check(struct sasl_server *s)
{
	s->ok = 0;
	if (s->held == NULL)
		return;
	s->ok = gstep(s, s->held, s->heldlen) == SASL_OK;
	explicit_bzero(s->held, s->heldlen);
	free(s->held);
	s->held = NULL;
}

enum sasl_rc
sasl_server_checked(struct sasl_server *s, const char **out64_r)
{
	*out64_r = "";
	s->done = 1;
	return s->ok && s->found ? SASL_OK : SASL_FAIL;
}

int
sasl_scram_make(const char *password, unsigned iter, const unsigned char *salt, size_t saltlen,
    char *out, size_t cap, const char **error_r)
{
	unsigned char rnd[16];
	char salted[GSASL_HASH_MAX_SIZE], ck[GSASL_HASH_MAX_SIZE], sk[GSASL_HASH_MAX_SIZE],
	    stk[GSASL_HASH_MAX_SIZE];
	char b_salt[64], b_stored[64], b_server[64];
	int n;

	if (iter < SASL_SCRAM_ITER) {
		*error_r = "SCRAM-SHA-256 needs at least 4096 iterations";
		return -1;
	}
	if (salt == NULL) {
		if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd)) {
			*error_r = "no randomness for a SCRAM salt";
			return -1;
		}
		salt = rnd;
		saltlen = sizeof(rnd);
	}
	if (saltlen > 45 || gsasl_scram_secrets_from_password(GSASL_HASH_SHA256, password, iter,
	    (const char *)salt, saltlen, salted, ck, sk, stk) != GSASL_OK) {
		*error_r = "GNU SASL cannot derive SCRAM-SHA-256 keys (is the password valid UTF-8?)";
		return -1;
	}
	base64_encode(salt, saltlen, b_salt);
	base64_encode((const unsigned char *)stk, GSASL_HASH_SHA256_SIZE, b_stored);
	base64_encode((const unsigned char *)sk, GSASL_HASH_SHA256_SIZE, b_server);
	explicit_bzero(salted, sizeof(salted));
	explicit_bzero(ck, sizeof(ck));
	n = snprintf(out, cap, "{SCRAM-SHA-256}%u,%s,%s,%s", iter, b_salt, b_stored, b_server);
	if (n < 0 || (size_t)n >= cap) {
		*error_r = "SCRAM-SHA-256 keys do not fit";
		return -1;
	}
	return 0;
}

int
sasl_scram_parse(const char *v, unsigned *iter_r, char salt_r[64], char stored_r[64],
    char server_r[64])
{
	char *parts[4], *copy, *p, *end;
	unsigned char bin[64];
	size_t n;
	unsigned long it;
	int k = 0, rc = -1;

	if (strncasecmp(v, "{SCRAM-SHA-256}", 15) != 0)
		return -1;
	copy = xstrdup(v + 15);
	for (p = copy; k < 4; k++) {
		parts[k] = p;
		p = strchr(p, ',');
		if (p == NULL)
			break;
		*p++ = '\0';
	}
	if (k != 3 || p != NULL)
		goto out;
	errno = 0;
	it = strtoul(parts[0], &end, 10);
	if (errno || *end || it < SASL_SCRAM_ITER || it > 100000000)
		goto out;
	for (int i = 1; i < 4; i++) {
		if (strlen(parts[i]) >= 64 ||
		    base64_decode(parts[i], strlen(parts[i]), bin, sizeof(bin), &n) < 0 ||
		    (i > 1 && n != 32) || (i == 1 && n == 0))
			goto out;
	}
	*iter_r = (unsigned)it;
	snprintf(salt_r, 64, "%s", parts[1]);
	snprintf(stored_r, 64, "%s", parts[2]);
	snprintf(server_r, 64, "%s", parts[3]);
	rc = 0;
out:
	free(copy);
	return rc;
}
