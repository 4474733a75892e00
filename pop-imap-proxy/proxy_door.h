#ifndef PC_PROXY_DOOR_H
#define PC_PROXY_DOOR_H
/*
 * proxy_door - the login glue the IMAP and POP3 doors share around proxy
 * (see proxy.h): what is the same in both, named by the door ("imap",
 * "pop3", for log lines and counters); the replies stay the door's.
 *
 *   proxy_door_login()          a login that went through, of a user the
 *                               users file sends to a backend: the backend
 *                               login (the client's, or through
 *                               mail_proxy_master_user) and password
 *   proxy_door_backend_route()  mail_proxy_auth = backend: a PLAIN login of
 *                               a user of mail_proxy_domains that is not
 *                               ours goes to the default backend
 *   proxy_door_start()          proxy_new(), the client's conn paused, the
 *                               door's done hook at once if it failed
 *   proxy_door_verdict()        the backend's verdict on such a login into
 *                               authcheck (penalty, counters); a refusal
 *                               logged, counted, the proxy freed
 *   proxy_door_outcome(), proxy_door_over_userip()
 *                               the log line and proxy_sessions_total
 *                               counter of the backend login's outcome, or
 *                               of a session refused past
 *                               mail_max_userip_connections
 *
 * Owner: the door's loop thread; never blocks, never logs peer bytes.
 */
#include <stddef.h>
#include "pop-imap-proxy/proxy.h"

struct authcheck;
struct authcheck_hooks;
struct sasl_server;
struct userdb;

/* after userdb_proxy() gave r != 0 for user, whose login went through
 * (sasl: its exchange, NULL for one without: USER/PASS, APOP): 1 with the
 * backend login in *login_r (*mlogin_r: an xmalloc'd master login the door
 * frees, else NULL) and password in *pw_r; 0 when a SCRAM exchange must
 * end first (the door hands the session over late, through the master
 * user); -1 when it cannot go: r < 0 (the user's proxy fields are wrong)
 * or no password to forward (*pw_r NULL) */
int proxy_door_login(const struct proxy_conf *pc, int r, const struct userdb_proxy *where,
    const char *user, const struct sasl_server *sasl, const char **login_r, const char **pw_r,
    char **mlogin_r);

/* 1 when the PLAIN response in sasl names a user of mail_proxy_domains not
 * in db (NULL: none): the login and password (sasl's) in *login_r and
 * *pw_r, the default backend in *where, the login lowercased in user (cap
 * bytes); else 0 */
int proxy_door_backend_route(const struct proxy_conf *pc, const struct userdb *db,
    const struct sasl_server *sasl, const char **login_r, const char **pw_r,
    struct userdb_proxy *where, char *user, size_t cap);
/* proxy_new() into *px for the client conn c (the door marks its session
 * busy first), then c paused until h->done; when proxy_new() failed at once,
 * h->done(arg, PROXY_UNAVAILABLE, "", "cannot connect") on the spot */
void proxy_door_start(struct proxy **px, struct event_base *base, const struct proxy_conf *pc,
    enum proxy_proto proto, const struct userdb_proxy *where, struct conn *c,
    const char *login, const char *password, const struct proxy_hooks *h, void *arg);
/* the backend's verdict res (PROXY_OK, PROXY_REFUSED) on the login of user
 * (mail_proxy_auth = backend): a refusal gets the door's log line and
 * proxy_sessions_total counter, *px freed and user emptied; then
 * authcheck_finish() with c held (h's done releases it): its result */
int proxy_door_verdict(const char *door, struct conn *c, char *user, struct proxy **px,
    struct authcheck *ac, enum proxy_result res, const struct authcheck_hooks *h, void *arg);
/* "DOOR: conn=ID proxy: user=<USER> client=[ADDR] backend=HOST:PORT: logged
 * in|refused|unavailable[: WHY] (N ms)" and its proxy_sessions_total */
void proxy_door_outcome(const char *door, struct conn *c, const char *user,
    const struct proxy *px, enum proxy_result res, const char *why);
/* the same for a login the backend took but the door refuses: n sessions
 * of user from the client's address already (mail_max_userip_connections) */
void proxy_door_over_userip(const char *door, struct conn *c, const char *user,
    const struct proxy *px, unsigned n);

#endif
