#ifndef PC_POP3_SERVER_H
#define PC_POP3_SERVER_H
#include <stddef.h>
#include "common/cidr.h"
#include "pop-imap-proxy/pop3_proto.h"
#include "pop-imap-proxy/proxy.h"
#include "service/conn.h"
#include "service/penalty.h"

struct policy;
struct snapref;

enum pop3_listener_kind { POP3_LISTEN_POP3, POP3_LISTEN_POP3S };

/* What the daemon hands the POP3 door (pop3_conf_new() fills it). Must
 * outlive pop3_server_run(). */
struct pop3_server_conf {
	struct pop3_params params;	/* sasl_cb is filled by the server */
	struct conn_server_conf conn;	/* door "pop3", limits, timeouts, TLS, last words */
	const char *users_url;		/* "file:...", "" none */
	const char *maildir_root;	/* delivery = maildir:DIR */
	struct penalty_conf penalty;	/* failed logins: delays and the auth-ban */
	unsigned max_userip;		/* mail_max_userip_connections; 0: no limit */
	struct proxy_conf proxy;	/* users with proxy=y: their backends (proxy.tls owned) */
	/* run time, from the worker: the engine (kill list at connect, may a
	 * client be banned) and the ban hook (from the loop; must not block) */
	const struct policy *pol;
	struct snapref *snaps;
	void (*ban)(void *arg, const struct ipaddr *addr, unsigned long seconds, const char *why);
	void *ban_arg;
};

/* serve the given listening sockets (kinds[i], an enum pop3_listener_kind,
 * for fds[i]) until SIGTERM/SIGINT, or until drained after SIGUSR2 (live
 * reload) */
int pop3_server_run(const int *fds, const int *kinds, size_t nfds,
    const struct pop3_server_conf *c, const char **error_r) __attribute__((warn_unused_result));

#endif
