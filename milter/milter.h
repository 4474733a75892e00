#ifndef PC_MILTER_H
#define PC_MILTER_H
#include "common/cidr.h"
#include "rules/policy.h"
#include "rules/snapshot.h"
#include "rules/sieve_rules.h"

/* What the daemon hands the milter front door. Must outlive milter_run(). */
struct milter_env {
	const struct policy *pol;
	struct snapref *snaps;
	struct ratelimit *rl;	/* relay rate counters, or NULL */
	/* called from milter threads; must not block */
	void (*ban)(void *arg, const struct ipaddr *addr, unsigned long seconds,
	    const char *why);
	void *ban_arg;
	/* Sieve server and domain scripts (NULL: none): run at end of message */
	struct sieve_rules_ref *sieve;
	const struct sieve_limits *sieve_limits;
	size_t message_size_limit;	/* cap of the body kept for Sieve */
};

/* "inet:HOST:PORT", "inet6:[ADDR]:PORT", "unix:/path" -> libmilter's form */
int milter_listen_spec(const char *ours, char *buf, size_t cap, const char **error_r)
    __attribute__((warn_unused_result));
/* the milter's settings from the configuration: milter_listen, checked;
 * NULL with *error_r (FILE:LINE) */
struct conf;
struct milter_conf {
	const char *listen;	/* points into the conf */
};
struct milter_conf *milter_conf_new(const struct conf *c, const char **error_r);
void milter_conf_free(struct milter_conf **mc);
/* bind the listener; errors are for the admin (address in use...) */
int milter_setup(const char *listen, const struct milter_env *env, const char **error_r)
    __attribute__((warn_unused_result));
/* serve until SIGTERM/SIGINT (libmilter's signal thread) or milter_stop() */
int milter_run(void);
void milter_stop(void);
/* live reload: new sessions take pol (the milter owns it from now on);
 * running sessions keep the policy they began with, freed after the last */
void milter_set_policy(struct policy *pol);
/* call periodically from another thread: wakes libmilter's listener once a
 * stop was requested, so shutdown takes milliseconds, not seconds */
void milter_poke_if_stopping(void);

#endif
