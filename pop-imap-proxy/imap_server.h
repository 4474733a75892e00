#ifndef PC_IMAP_SERVER_H
#define PC_IMAP_SERVER_H
/*
 * imap_server - the IMAP door's event loop: accept (imap_listen, imaps_listen),
 * feed client bytes to the I/O-free session (imap_proto), write its replies,
 * run its actions (password checks through service/authcheck, mail store
 * work on a job pool), TLS both ways, the kill list at connect, connection
 * limits and timeouts. See imap_server.c.
 */
#include <stddef.h>
#include "common/cidr.h"
#include "pop-imap-proxy/imap_proto.h"
#include "pop-imap-proxy/proxy.h"
#include "service/penalty.h"

struct policy;
struct snapref;
typedef struct ssl_ctx_st SSL_CTX;

enum imap_listener_kind { IMAP_LISTEN_IMAP, IMAP_LISTEN_IMAPS };

/* What the daemon hands the IMAP door. Must outlive imap_server_run(). */
struct imap_server_conf {
	struct imap_params params;	/* sasl_cb is filled by the server */
	const char *users_url;		/* "file:/etc/portcullis/users", "" none */
	const char *mail_root;		/* the Maildir store (delivery = maildir:DIR) */
	unsigned max_connections;	/* total */
	unsigned max_per_client;	/* per client address */
	unsigned max_userip;		/* per user and address once logged in; 0 none */
	unsigned login_timeout;		/* seconds per request before login */
	unsigned idle_timeout;		/* seconds of silence after login (RFC 3501: >= 30 min) */
	SSL_CTX *tls;			/* NULL: no STARTTLS, no imaps */
	struct penalty_conf penalty;	/* failed logins: delays and the auth-ban */
	struct proxy_conf proxy;	/* users with proxy=y: their backends (proxy.tls owned) */
	/* the kill and accept lists (run time, set by the daemon) */
	const struct policy *pol;
	struct snapref *snaps;
	/* from the event loop; must not block */
	void (*ban)(void *arg, const struct ipaddr *addr, unsigned long seconds, const char *why);
	void *ban_arg;
};

/* serve the given listening sockets (kinds[i], an enum imap_listener_kind,
 * for fds[i], bound with listener_bind()) until SIGTERM/SIGINT, or drained
 * after SIGUSR2 */
int imap_server_run(const int *fds, const int *kinds, size_t nfds,
    const struct imap_server_conf *c, const char **error_r)
    __attribute__((warn_unused_result));

#endif
