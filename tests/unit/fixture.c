/*
 * fixture - the users, store and buffer the protocol tests, fuzzers and test
 * tools share (contract in fixture.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/xmalloc.h"
#include "storage-adapter/mailstore.h"
#include "tests/unit/fixture.h"

static int
alice_lookup(void *arg, const char *login, struct sasl_user *r)
{
	(void)arg;
	if (strcasecmp(login, "alice") != 0 && strcasecmp(login, FIXTURE_USER) != 0)
		return 0;
	snprintf(r->name, sizeof(r->name), "%s", FIXTURE_USER);
	snprintf(r->hash, sizeof(r->hash), "TEST:secret");
	return 1;
}

static int
alice_verify(void *arg, const struct sasl_user *u, const char *pw)
{
	(void)arg;
	return strcmp(u->hash, "TEST:secret") == 0 && strcmp(pw, "secret") == 0;
}

int
fixture_no_cram(void *arg, const struct sasl_user *u, const char *challenge, const char *digest)
{
	(void)arg;
	(void)u;
	(void)challenge;
	(void)digest;
	return 0;
}

const struct sasl_callbacks fixture_alice = { alice_lookup, alice_verify, fixture_no_cram, NULL };

int
fixture_no_user(void *arg, const char *login, struct sasl_user *r)
{
	(void)arg;
	(void)login;
	(void)r;
	return 0;
}

int
fixture_no_password(void *arg, const struct sasl_user *u, const char *password)
{
	(void)arg;
	(void)u;
	(void)password;
	return 0;
}

const struct sasl_callbacks fixture_nobody = { fixture_no_user, fixture_no_password, fixture_no_cram, NULL };

int
fixture_deliver(const char *root, const char *user, const char *const *msgs, size_t n,
    const char **error_r)
{
	const char *users[] = { user };

	for (size_t i = 0; i < n; i++) {
		struct mailstore_delivery *d;
		char id[128];

		if (mailstore_deliver_begin(root, user, &d, error_r) < 0)
			return -1;
		if (mailstore_deliver_write(d, msgs[i], strlen(msgs[i]), error_r) < 0) {
			mailstore_deliver_abort(&d);
			return -1;
		}
		if (mailstore_deliver_commit(&d, root, users, 1, id, error_r) < 0)
			return -1;
	}
	return 0;
}

int
fixture_rm_rf(const char *dir)
{
	char *cmd = xasprintf("rm -rf '%s'", dir);
	int rc = system(cmd) == 0 ? 0 : -1;

	free(cmd);
	return rc;
}

void
fixture_put(struct fixture_buf *b, const char *p, size_t n)
{
	if (b->n + n + 1 > b->cap) {
		b->cap = (b->n + n + 1) * 2;
		b->s = xrealloc(b->s, b->cap);
	}
	memcpy(b->s + b->n, p, n);
	b->n += n;
	b->s[b->n] = '\0';
}

size_t
fixture_piece(int mode, unsigned *seed, size_t left, size_t most)
{
	size_t piece = left;

	if (mode == 1)
		piece = 1;
	else if (mode >= 2) {
		*seed = *seed * 1103515245u + 12345u;
		piece = 1 + (*seed >> 16) % most;
		if (piece > left)
			piece = left;
	}
	return piece;
}
