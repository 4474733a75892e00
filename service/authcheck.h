#ifndef PC_AUTHCHECK_H
#define PC_AUTHCHECK_H
/*
 * authcheck - the end of a login, for every network door (SMTP AUTH, POP3,
 * IMAP): the password check off the loop (common/sasl's slow step, on a
 * bounded pool of its own: a guessing storm never delays store I/O, and
 * past the bound the door answers "try later" instead of queueing), then
 * the failed-login penalty of service/penalty (one per client address: the
 * reply waits its delay on a timer, enough failures ban the address through
 * the door's ban hook), and the auth_total counters.
 * Owner: the event loop's thread.
 */
#include "service/penalty.h"

struct event_base;
struct ipaddr;
struct sasl_server;
struct authcheck;

#define AUTHCHECK_BUSY (-1)	/* the pool is full: "try again later" (454, -ERR [IN-USE]...) */
#define AUTHCHECK_PENDING (-2)	/* the outcome comes through hooks->done */

struct authcheck_hooks {
	/* the outcome, later from the loop: 1 authenticated, 0 refused (its
	 * penalty waited already) */
	void (*done)(void *arg, int result);
	/* may the client be banned now? (the engine's word: not when
	 * accept-listed, nor in policy_mode = warn) */
	int (*may_ban)(void *arg);
	/* the owner is going away: no penalty wait, done comes at once */
	int (*gone)(void *arg);
};

struct authcheck_req {
	struct sasl_server *sasl;	/* != NULL: sasl_server_check() off the loop first */
	int ok;				/* sasl == NULL: the outcome, decided already */
	const struct ipaddr *addr;	/* the client's; NULL: unknown (no penalty) */
	const char *conn_id;		/* for the log lines (common/connid) */
};

/* door names the door in the counters: auth_total{door=DOOR,result=success|
 * failure}, DOOR as given ("smtp", "pop3", "imap": [a-z0-9_], the name of
 * its `services` entry), so a new door is counted apart with no other code;
 * the failed-login penalty is the node's one table (service/penalty.h)
 * whatever the door. busy_what what the log says was answered when the pool
 * is full ("AUTH answered 454"); threads hash, at most max_pending checks
 * queued or running; ban may be NULL */
struct authcheck *authcheck_new(struct event_base *base, const char *door, const char *busy_what,
    unsigned threads, size_t max_pending, const struct penalty_conf *pc,
    void (*ban)(void *arg, const struct ipaddr *addr, unsigned long seconds, const char *why),
    void *ban_arg);
/* checks still queued run and call back first; penalty waits still under
 * way are dropped without a callback (the owners are being closed) */
void authcheck_free(struct authcheck **ac);

/*
 * An exchange at its end. Returns the outcome at once (1, 0, or
 * AUTHCHECK_BUSY) with no callback, or AUTHCHECK_PENDING: hooks->done(arg,
 * ...) comes exactly once, later; the owner stays alive until then (and
 * reads no more input). r->sasl must stay valid until then.
 */
int authcheck_finish(struct authcheck *ac, const struct authcheck_req *r,
    const struct authcheck_hooks *hooks, void *arg);

#endif
