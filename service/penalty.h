#ifndef PC_PENALTY_H
#define PC_PENALTY_H
#include "common/cidr.h"

/*
 * Failed-login penalties per client address (IPv4 address, IPv6 /64), one
 * policy for every door (Dovecot's auth_failure_delay and anvil penalty):
 * the reply to the n-th consecutive failure waits delay * 2^(n-1), at most
 * max_delay; a success forgets the address. ban_count failures within
 * ban_window seconds ask for a kill-list ban of ban_time seconds.
 *
 * One table per node: every door process (SMTP, POP3, IMAP workers, the
 * old worker draining after a reload and its successor) counts in the same
 * fixed-size table, a file under state_dir mapped MAP_SHARED, so a guesser
 * rotating between doors or outlasting a reload is one guesser. The master
 * makes it before it forks (penalty_table_open()); the workers inherit the
 * mapping. Bounded memory (a fixed table; the stalest entry of a bucket gives
 * way); process-safe through one robust process-shared mutex per bucket,
 * held for a lookup of 16 entries (a process that dies holding it leaves it
 * usable). A struct penalty belongs to one thread (one event loop).
 */
struct conf;

struct penalty_conf {
	unsigned delay_ms;		/* the first failure's delay; 0: no delay */
	unsigned max_delay_ms;		/* doubling stops here */
	unsigned ban_count;		/* failures in ban_window that ban; 0: no ban */
	unsigned ban_window;		/* seconds */
	unsigned long ban_time;		/* seconds on the kill list; 0: no ban */
};

struct penalty;

/* auth_failure_delay, auth_failure_delay_max, auth_failure_ban ("N/TIME" or
 * 0), auth_failure_ban_time; -1 with *error_r naming the key and its place */
int penalty_conf_parse(const struct conf *c, struct penalty_conf *r, const char **error_r)
    __attribute__((warn_unused_result));

/* pure: the delay for the n-th consecutive failure (n >= 1) */
unsigned penalty_delay_for(const struct penalty_conf *c, unsigned n);
/* pure: failures in the sliding window, estimated from this window's count
 * and the previous one's (weighted by how much of it still overlaps) */
unsigned penalty_window_count(unsigned prev, unsigned cur, unsigned elapsed_in_cur,
    unsigned window);
/* pure: the table key: IPv4 as is, IPv6 cut to its /64 */
void penalty_key(const struct ipaddr *a, struct ipaddr *key_r);

/* the node's table for this process and the workers it forks: a fresh file
 * at path (the master, before forking; the old one is replaced); -1 with
 * *error_r (then penalty_new() falls back to tables of their own) */
int penalty_table_open(const char *path, const char **error_r)
    __attribute__((warn_unused_result));
/* unmap the node table (tests; a process keeps it until exit) */
void penalty_table_close(void);

/* path: the table file to count in (mapped now, made by its first user when
 * missing); NULL: the node table this process has (penalty_table_open(),
 * inherited from the master), else one of its own. A file that cannot be
 * mapped is logged and a table of its own used: penalties then apply per
 * process, as before. */
struct penalty *penalty_new(const struct penalty_conf *c, const char *path);
void penalty_free(struct penalty **p);
/* 1 when p counts in a table other processes can share */
int penalty_is_shared(const struct penalty *p);
/* a failed login from a at now_ms (monotonic): the delay for its reply;
 * *ban_r = 1 when a must go on the kill list now (once per address and
 * ban_time) */
unsigned penalty_failure(struct penalty *p, const struct ipaddr *a, long long now_ms, int *ban_r);
/* a successful login from a: its penalty is forgotten */
void penalty_success(struct penalty *p, const struct ipaddr *a);
/* the configuration in force */
const struct penalty_conf *penalty_conf(const struct penalty *p);
/* tests only: take a's bucket lock and keep it (a process dying inside) */
void penalty_lock_for_test(struct penalty *p, const struct ipaddr *a);

#endif
