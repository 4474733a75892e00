#ifndef PC_CONF_H
#define PC_CONF_H
#include <stdio.h>
#include <stddef.h>

/*
 * Configuration in Postfix main.cf style. Owner: whoever calls conf_new();
 * after conf_finish() it is read-only and may be shared between threads.
 */
enum conf_type { CT_STR, CT_BOOL, CT_INT, CT_TIME, CT_ENUM, CT_LIST };

struct conf_key {
	const char *name;
	const char *def;
	enum conf_type type;
	const char *enum_values;	/* CT_ENUM: "a|b|c" */
	long min, max;			/* CT_INT, CT_TIME */
};

extern const struct conf_key conf_keys[];	/* conf_keys.c; ends with name NULL */

/* A check beyond the type, keyed by name (conf_check.c; a name may have
 * several rows): 0 ok, or -1 and why_r. each_item: run on every item of a
 * list, as conf_get_list() splits it. */
struct conf_validator {
	const char *name;
	int each_item;
	int (*check)(const char *value, const char **why_r);
};

extern const struct conf_validator conf_validators[];	/* ends with name NULL */

/* "ADDR:PORT" or "[ADDR]:PORT" (IPv6 bracketed; IPv4 either way), numeric;
 * port_optional also takes a bare ADDR (IPv6 unbracketed) */
int conf_check_hostport(const char *s, int port_optional, const char **why_r)
    __attribute__((warn_unused_result));

struct conf;

struct conf *conf_new(void);
void conf_free(struct conf **c);
/* one file; errors read "FILE:LINE: what" */
int conf_load_file(struct conf *c, const char *path, const char **error_r)
    __attribute__((warn_unused_result));
/* load from a string (tests); name is used in errors */
int conf_load_string(struct conf *c, const char *name, const char *text,
    const char **error_r) __attribute__((warn_unused_result));
/* "key=value" from the command line (-o) */
int conf_set_override(struct conf *c, const char *kv, const char **error_r)
    __attribute__((warn_unused_result));
/* expand $names, check every value against its type */
int conf_finish(struct conf *c, const char **error_r)
    __attribute__((warn_unused_result));

/* After conf_finish(). Unknown names are a programming error (panic). */
const char *conf_get(const struct conf *c, const char *name);
int conf_get_bool(const struct conf *c, const char *name);
long conf_get_int(const struct conf *c, const char *name);	/* CT_INT, CT_TIME (seconds) */
/* split on commas and white space; *n_r items; free with conf_list_free() */
char **conf_get_list(const struct conf *c, const char *name, size_t *n_r);
void conf_list_free(char **list);
/* "FILE:LINE", "-o", or "default" - for errors found later */
const char *conf_where(const struct conf *c, const char *name);
/* print "name = value" lines; only_set: those set away from their default */
void conf_print(const struct conf *c, FILE *fp, int only_set);

/* "3600", "60s", "10m", "1h", "7d", "1w" -> seconds */
int conf_parse_time(const char *s, long *secs_r) __attribute__((warn_unused_result));

#endif
