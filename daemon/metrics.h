#ifndef PC_METRICS_H
#define PC_METRICS_H

/*
 * metrics_listen: the counters of common/stats.h over HTTP, in Prometheus'
 * text format (GET /metrics). Runs on a thread of the master, which never
 * serves mail, so a scrape never competes with a session.
 */
/* bind "HOST:PORT" / "[ADDR]:PORT" (as root, before privileges are dropped);
 * -1 with *error_r */
int metrics_bind(const char *spec, const char **error_r) __attribute__((warn_unused_result));
/* serve on a thread of its own (signals stay blocked there); -1 with *error_r */
int metrics_start(const char **error_r) __attribute__((warn_unused_result));
void metrics_stop(void);

#endif
