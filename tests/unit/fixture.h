#ifndef PC_TEST_FIXTURE_H
#define PC_TEST_FIXTURE_H
/*
 * fixture - what the protocol unit tests, the fuzzers and the test tools
 * (tests/integration/pop3_tool.c, imap_session_tool.c) share, instead of
 * each its own copy:
 *
 *   fixture_alice      SASL callbacks with one user: the login "alice" or
 *                      FIXTURE_USER is FIXTURE_USER, password "secret"
 *   fixture_nobody     SASL callbacks with no user at all
 *   fixture_no_user(), fixture_no_password(), fixture_no_cram()   lookups
 *                      and checks that always fail, for a caller's own
 *                      callbacks
 *   fixture_deliver()  messages into a user's INBOX the way the gateway
 *                      delivers them (storage-adapter/mailstore)
 *   fixture_rm_rf()    a test's store gone
 *   struct fixture_buf, fixture_put()   a growing NUL-terminated buffer
 *   fixture_piece()    how much of a client's input to feed next: all of
 *                      it, one byte, or a pseudo-random piece
 *
 * Nothing here uses CUnit: fuzzers link it too.
 */
#include <stddef.h>

#include "common/sasl.h"

#define FIXTURE_USER "alice@example.com"

extern const struct sasl_callbacks fixture_alice;
extern const struct sasl_callbacks fixture_nobody;

int fixture_no_user(void *arg, const char *login, struct sasl_user *r);
int fixture_no_password(void *arg, const struct sasl_user *u, const char *password);
int fixture_no_cram(void *arg, const struct sasl_user *u, const char *challenge,
    const char *digest);

/* msgs[0..n-1] delivered to user under the store root; -1 with *error_r */
int fixture_deliver(const char *root, const char *user, const char *const *msgs, size_t n,
    const char **error_r);

/* rm -rf dir; 0 or -1 */
int fixture_rm_rf(const char *dir);

struct fixture_buf {
	char *s;
	size_t n, cap;
};

void fixture_put(struct fixture_buf *b, const char *p, size_t n);

/* of left (> 0) bytes: mode 0 all, 1 one, 2 and more 1..most from *seed
 * (which advances; start it from the mode for a run that repeats) */
size_t fixture_piece(int mode, unsigned *seed, size_t left, size_t most);

#endif
