#ifndef PC_SMTP_SERVER_H
#define PC_SMTP_SERVER_H
#include <stddef.h>
#include "common/cidr.h"
#include "smtp-gateway/smtp_proto.h"

struct userdb;

/* What the daemon hands the SMTP front door. Must outlive smtp_server_run(). */
struct smtp_server_conf {
	struct smtp_params params;	/* user_exists is filled by the server */
	const char *users_url;		/* "file:/etc/portcullis/users", "" none */
	const char *maildir_root;	/* delivery = maildir:DIR */
	unsigned max_connections;	/* total */
	unsigned max_per_client;	/* per client address */
	unsigned timeout;		/* seconds idle / per command */
	/* from the event loop; must not block */
	void (*ban)(void *arg, const struct ipaddr *addr, unsigned long seconds, const char *why);
	void *ban_arg;
};

/* "127.0.0.1:2525", "[::1]:2525" -> a listening socket; -1 with *error_r */
int smtp_server_listen(const char *spec, const char **error_r)
    __attribute__((warn_unused_result));
/* serve the given listening sockets until SIGTERM/SIGINT; 0 on a clean stop */
int smtp_server_run(const int *fds, size_t nfds, const struct smtp_server_conf *c,
    const char **error_r) __attribute__((warn_unused_result));

#endif
