#ifndef PC_STATS_H
#define PC_STATS_H
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/*
 * Counters shared by the master, every worker and the admin command: one
 * file ($state_dir/stats) mapped by all of them. A counter is named by its
 * Prometheus series, without the "portcullis_" prefix:
 *   verdicts_total{door="smtp",stage="RCPT",action="reject",reason="relay"}
 *   connections_total{door="smtp"}
 * Counting is lock-free (atomic adds); a new series takes a free slot with
 * one compare-and-swap. Past STATS_SLOTS series new names fold into
 * "dropped_series_total". Never blocks, never allocates.
 */
#define STATS_SLOTS 1024
#define STATS_NAME_MAX 160

/* create (master) or open the file for counting; -1 with *error_r */
int stats_open(const char *path, const char **error_r) __attribute__((warn_unused_result));
/* the admin command: map an existing file read-only; -1 with *error_r */
int stats_open_readonly(const char *path, const char **error_r)
    __attribute__((warn_unused_result));
void stats_close(void);
/* the door this process serves ("milter", "smtp"...): stats_door() returns it */
void stats_set_door(const char *door);
const char *stats_door(void);

/* add n to the series; a no-op before stats_open() or with a bad name */
void stats_add(const char *series, uint64_t n);
/* printf-style series name, then add n */
void stats_addf(uint64_t n, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* a verdict: counted as verdicts_total{door,stage,action,reason} */
void stats_verdict(const char *stage, const char *action, const char *reason);

/* each series as "portcullis_NAME VALUE\n", with # HELP/# TYPE lines: the
 * Prometheus text format (0.0.4); returns 0, or -1 before stats_open() */
int stats_write_prometheus(FILE *fp);
/* every series (and dropped_series_total), unsorted: cb(arg, name, value);
 * 0, or -1 before stats_open() */
int stats_each(void (*cb)(void *arg, const char *name, uint64_t value), void *arg);
/* the value of one series (0 when absent) */
uint64_t stats_get(const char *series);

#endif
