#ifndef PC_USERIP_H
#define PC_USERIP_H
/*
 * userip - logged-in sessions per user and client address, for
 * mail_max_userip_connections (Dovecot's setting of that name: one user
 * may hold at most N sessions from one address on a door; a shared
 * family router gets N, a runaway client no more). A door keeps one table
 * per event loop, as Dovecot counts per protocol.
 * Owner: the loop's thread; not thread-safe; never blocks. Memory grows
 * with the sessions counted and shrinks as they end.
 */
#include "common/cidr.h"

struct userip;

struct userip *userip_new(void);
void userip_free(struct userip **u);
/* a login of user from addr: counted and 1 while the pair holds fewer than
 * max sessions (max 0: no limit); else 0, not counted. *count_r: the
 * pair's sessions before this one */
int userip_acquire(struct userip *u, const char *user, const struct ipaddr *addr,
    unsigned max, unsigned *count_r) __attribute__((warn_unused_result));
/* a session userip_acquire() counted ended */
void userip_release(struct userip *u, const char *user, const struct ipaddr *addr);
/* the pair's sessions now */
unsigned userip_count(const struct userip *u, const char *user, const struct ipaddr *addr);

#endif
