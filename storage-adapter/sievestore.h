#ifndef PC_SIEVESTORE_H
#define PC_SIEVESTORE_H
#include <stddef.h>
#include "rules/sieve.h"
#include "rules/sieve_rules.h"

/*
 * The Sieve script store: sieve_dir (default $state_dir/sieve) holding
 *
 *   server.sieve              the server's script
 *   domains/DOMAIN.sieve      one per domain
 *   users/USER@DOMAIN.sieve   one per user (run at delivery into the store)
 *   global/NAME.sieve         for include :global
 *
 *   sievestore_path()     level + name -> file (names checked: no '/', no dot
 *                         files, printable ASCII, lower case)
 *   sievestore_read/install/delete/list()   the admin side; install writes
 *                         a temporary file, fsyncs it, renames it over the
 *                         script and fsyncs the directory
 *   sievestore_load()     compile every server and domain script into a new
 *                         snapshot; a file unchanged since prev is shared; a
 *                         file that does not compile is refused (its
 *                         FILE:LINE:COLUMN errors logged) and prev's version
 *                         stays in force
 *   sievewatch_*()        a thread polling sieve_dir every 200 ms and
 *                         publishing a new snapshot when anything changed
 *
 * Owner: the caller; strings returned are the caller's to free.
 */
enum sieve_level { SIEVE_LEVEL_SERVER, SIEVE_LEVEL_DOMAIN, SIEVE_LEVEL_USER };

/* "server", "domain", "user" */
int sieve_level_parse(const char *s, enum sieve_level *l_r);
const char *sieve_level_name(enum sieve_level l);

int sievestore_path(const char *dir, enum sieve_level l, const char *name, char **path_r,
    const char **error_r) __attribute__((warn_unused_result));
/* 0, or -1 with errno ENOENT when there is none */
int sievestore_read(const char *dir, enum sieve_level l, const char *name, char **text_r,
    size_t *len_r, const char **error_r) __attribute__((warn_unused_result));
int sievestore_install(const char *dir, enum sieve_level l, const char *name,
    const char *text, size_t len, const char **error_r) __attribute__((warn_unused_result));
int sievestore_delete(const char *dir, enum sieve_level l, const char *name,
    const char **error_r) __attribute__((warn_unused_result));
/* every script: cb(level, name ("" for the server), path) */
void sievestore_list(const char *dir,
    void (*cb)(void *arg, enum sieve_level l, const char *name, const char *path), void *arg);

/* compile options for a script of sieve_dir (include :personal/:global) */
void sievestore_compile_opts(const char *dir, const struct sieve_limits *lim,
    struct sieve_compile_opts *o);
/* prev may be NULL; never fails (a script that does not compile is left out) */
struct sieve_rules *sievestore_load(const char *dir, const struct sieve_limits *lim,
    const struct sieve_rules *prev);

struct conf;
/* the sieve_max_* keys */
void sievestore_limits_conf(const struct conf *c, struct sieve_limits *l);

struct sievewatch;
/* loads once and publishes into ref (initialised here), then polls */
struct sievewatch *sievewatch_start(const char *dir, const struct sieve_limits *lim,
    struct sieve_rules_ref *ref, const char **error_r);
void sievewatch_stop(struct sievewatch **w);

#endif
