/*
 * libFuzzer target: APOP, the digest a POP3 client sends and the users
 * file's apop= field. Properties:
 *   apop_verify  (secret, stamp, digest) cut from the input at NULs: it says
 *                yes exactly when the digest is 32 hex digits equal, in any
 *                case, to apop_digest() of the same secret and stamp.
 *   userdb       the input as a users file: loading never crashes, and an
 *                APOP secret it returns is non-empty and answers its own
 *                digest.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "common/apop.h"
#include "common/log.h"
#include "storage-adapter/userdb.h"

static int
all_hex(const char *s)
{
	for (; *s; s++)
		if (!((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f') || (*s >= 'A' && *s <= 'F')))
			return 0;
	return 1;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static char path[64];
	char *buf = malloc(size + 3), *secret, *stamp, *digest, want[APOP_DIGEST_HEX + 1];
	const char *err;
	struct userdb *db;
	FILE *f;
	int ref;

	if (buf == NULL)
		abort();
	memcpy(buf, data, size);
	buf[size] = buf[size + 1] = buf[size + 2] = '\0';
	secret = buf;
	stamp = secret + strlen(secret) + 1;
	digest = stamp + strlen(stamp) + 1;
	if (digest > buf + size)
		digest = buf + size;	/* "" */
	apop_digest(secret, stamp, want);
	ref = strlen(digest) == APOP_DIGEST_HEX && all_hex(digest) && strcasecmp(want, digest) == 0;
	if (apop_verify(secret, stamp, digest) != ref)
		abort();
	if (!apop_verify(secret, stamp, want))
		abort();

	if (path[0] == '\0') {
		log_open("fuzz-apop", 1);
		log_set_level(LOG_LVL_ERROR);
		snprintf(path, sizeof(path), "/tmp/fuzz-apop-users.%ld", (long)getpid());
	}
	if ((f = fopen(path, "wb")) == NULL)
		abort();
	fwrite(data, 1, size, f);
	fclose(f);
	{
		char url[80];

		snprintf(url, sizeof(url), "file:%s", path);
		db = userdb_load(url, &err);
	}
	if (db != NULL) {
		for (size_t i = 0; i < userdb_count(db); i++) {
			const char *s = userdb_apop_secret(db, userdb_user_at(db, i));

			if (s == NULL)
				continue;
			if (s[0] == '\0')
				abort();
			apop_digest(s, "<1.2@fuzz>", want);
			if (!apop_verify(s, "<1.2@fuzz>", want))
				abort();
		}
		userdb_free(&db);
	}
	unlink(path);
	free(buf);
	return 0;
}
