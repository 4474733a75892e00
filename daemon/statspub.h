#ifndef PC_STATSPUB_H
#define PC_STATSPUB_H

/*
 * With a redis:// `lists` store, a thread of the master publishes this
 * node's counters (common/stats.h) as PREFIXstats:NODE every
 * stats_publish_interval seconds, with a TTL of three intervals, so
 * `portcullis stats` can sum the live nodes. Never on a mail path: the
 * thread has its own Redis connection; Redis down is retried quietly.
 */
struct conf;
/* a no-op with a file store; -1 with *error_r (bad node_name, no thread) */
int statspub_start(const struct conf *c, const char **error_r)
    __attribute__((warn_unused_result));
void statspub_stop(void);
/* node_name as a key part: [A-Za-z0-9._-], 1..64 */
int statspub_node_ok(const char *node);

#endif
