#ifndef PC_POLICY_DOOR_H
#define PC_POLICY_DOOR_H
#include <stddef.h>
#include "common/cidr.h"
#include "rules/policy.h"
#include "rules/snapshot.h"

/* What the daemon hands the Postfix policy door. Must outlive policy_door_run(). */
struct policy_door_env {
	const struct policy *pol;
	struct snapref *snaps;
	unsigned max_connections;	/* over it a new connection is closed at once */
	unsigned idle_timeout;		/* seconds between requests */
	unsigned request_timeout;	/* seconds to read one request, or to write an answer */
	/* from the event loop; must not block */
	void (*ban)(void *arg, const struct ipaddr *addr, unsigned long seconds, const char *why);
	void *ban_arg;
};

/* the door's settings compiled from the configuration (policy_listen,
 * policy_max_connections, policy_idle_timeout, policy_timeout): the specs are
 * checked (inet: parsed, unix: by conf), nothing is bound. env's pol, snaps
 * and ban are left for the worker. NULL with *error_r (FILE:LINE). */
struct conf;
struct policy_door_conf {
	struct policy_door_env env;
	char **listen;
	size_t nlisten;
};
struct policy_door_conf *policy_door_conf_new(const struct conf *c, const char **error_r);
void policy_door_conf_free(struct policy_door_conf **pc);

/* "inet:HOST:PORT", "inet:[ADDR]:PORT", "unix:/path" -> a listening socket
 * (done by the master, so a restarted worker inherits it); -1 with *error_r */
int policy_door_listen(const char *spec, const char **error_r)
    __attribute__((warn_unused_result));
/* serve the listening sockets until SIGTERM/SIGINT */
int policy_door_run(const int *fds, size_t nfds, const struct policy_door_env *env,
    const char **error_r) __attribute__((warn_unused_result));

#endif
