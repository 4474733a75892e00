#ifndef PC_GEOIP_H
#define PC_GEOIP_H
#include "common/cidr.h"

/*
 * GeoIP: the country of a client address, from a MaxMind DB file
 * (geoip_database), read with libmaxminddb.
 *
 * The open database is published like the list snapshots: immutable,
 * swapped atomically; any number of threads look up without locks,
 * allocation or waits, and one thread (geoip_watch_start()) reopens the
 * file when it is replaced. Owner: the policy (policy_new() opens it).
 */
#define GEOIP_MAX_FIELD_KEYS 8	/* keys in geoip_country_field */

struct geoip;

/* field: the map path to the two-letter code, "country.iso_code" for
 * GeoIP2/GeoLite2 layouts. Errors name the file. */
int geoip_open(const char *path, const char *field, struct geoip **g_r, const char **error_r)
    __attribute__((warn_unused_result));
/* stops the watch thread first; no lookups may be running */
void geoip_free(struct geoip **g);
/* 1 with cc_r = two upper-case letters and a NUL, 0 when the address is not
 * in the database or its record has no such code. Any thread; never
 * allocates, locks or blocks. */
int geoip_lookup(struct geoip *g, const struct ipaddr *addr, char cc_r[3]);
/* the reload step (one thread at a time): 1 when a new file was opened and
 * published, 0 when nothing changed (or the change is still settling), -1
 * with *error_r when the new file does not open -- the old database stays
 * in force and the same file is not tried again; -1 too (once) when the
 * file has been missing at two calls in a row */
int geoip_reload_if_changed(struct geoip *g, const char **error_r);
/* a thread running geoip_reload_if_changed() every interval_ms, logging
 * what it does; geoip_free() stops it */
int geoip_watch_start(struct geoip *g, unsigned interval_ms, const char **error_r)
    __attribute__((warn_unused_result));
void geoip_watch_stop(struct geoip *g);
const char *geoip_path(const struct geoip *g);

#endif
