/*
 * userdb_sasl - the users file as common/sasl sees it.
 *
 *   userdb_sasl_callbacks()  lookup / verify_password / verify_cram over *dbp
 *
 * lookup runs on the door's loop (where the userdb is reloaded); the two
 * checks touch nothing but the copied record: verify_password (yescrypt,
 * slow) runs on the password pool. An unknown user's password check costs
 * the same hashing as a known one's.
 */
#include <stdio.h>
#include <string.h>

#include "common/mailaddr.h"
#include "storage-adapter/crammd5.h"
#include "storage-adapter/userdb.h"
#include "storage-adapter/userdb_sasl.h"

static int
lookup(void *arg, const char *login, struct sasl_user *r)
{
	const struct userdb *db = *(struct userdb *const *)arg;
	const char *h, *cr, *sc, *at = strrchr(login, '@'), *canon;
	char local[MAILADDR_PART_MAX];
	size_t ll = at ? (size_t)(at - login) : 0;

	/* a login names its user as the user database does: the canonical
	 * name is what logs, rate limits and relay decisions see */
	if (db == NULL || at == NULL || ll == 0 || ll >= sizeof(local))
		return 0;
	memcpy(local, login, ll);
	local[ll] = '\0';
	if ((canon = userdb_resolve(db, local, at + 1)) == NULL ||
	    (h = userdb_password(db, canon)) == NULL)
		return 0;
	snprintf(r->name, sizeof(r->name), "%s", canon);
	snprintf(r->hash, sizeof(r->hash), "%s", h);
	cr = userdb_cram_secret(db, canon);
	sc = userdb_scram_secret(db, canon);
	snprintf(r->cram, sizeof(r->cram), "%s", cr ? cr : "");
	snprintf(r->scram, sizeof(r->scram), "%s", sc ? sc : "");
	return 1;
}

static int
verify_password(void *arg, const struct sasl_user *u, const char *password)
{
	(void)arg;
	return userdb_hash_verify(u->hash[0] ? u->hash : NULL, password);
}

static int
verify_cram(void *arg, const struct sasl_user *u, const char *challenge, const char *digest)
{
	(void)arg;
	return u->cram[0] != '\0' && crammd5_verify(u->cram, challenge, strlen(challenge), digest);
}

void
userdb_sasl_callbacks(struct userdb *const *dbp, struct sasl_callbacks *r)
{
	r->lookup = lookup;
	r->verify_password = verify_password;
	r->verify_cram = verify_cram;
	r->arg = (void *)dbp;
}
