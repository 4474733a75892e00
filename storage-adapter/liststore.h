#ifndef PC_LISTSTORE_H
#define PC_LISTSTORE_H
#include "storage-adapter/listentry.h"

/*
 * Where kill/accept lists persist. One interface, several backends
 * (liststore_file.c now; redis later). A liststore is used by one thread.
 */
struct liststore;
struct rate_delta;

/* What changed in a store, for a watcher that keeps a copy in memory. */
struct list_change {
	enum list_kind kind;
	char *key;
};

struct list_changes {
	int reload[LIST_KINDS];		/* reload the whole list */
	struct list_change *keys;	/* these keys changed (added, updated or gone) */
	size_t n, cap;
	/* entries the store handed over with the change (a file store's
	 * journal tail): no fetch needed, each replaces its key */
	struct entry_vec got[LIST_KINDS];
	int lost;			/* the store became unreachable (just now) */
	int back;			/* ... and is reachable again */
};

void list_changes_add(struct list_changes *c, enum list_kind k, const char *key);
void list_changes_clear(struct list_changes *c);

/* one counter of one node, as shared through a store (`portcullis stats`) */
struct stats_series {
	char *name;			/* "verdicts_total{door=\"smtp\",...}" */
	unsigned long long value;
};
struct stats_node {
	char *node;			/* node_name */
	struct stats_series *v;
	size_t n;
};
void stats_nodes_free(struct stats_node *v, size_t n);

struct liststore_ops {
	const char *scheme;	/* "file" */
	int (*open)(struct liststore *s, const char *arg, const char **error_r);
	void (*close)(struct liststore *s);
	/* every entry, expired ones included; bad records are logged and skipped */
	int (*load)(struct liststore *s, enum list_kind k, struct entry_vec *out,
	    const char **error_r);
	/* insert, or replace the entry with the same key */
	int (*add)(struct liststore *s, enum list_kind k, const struct list_entry *e,
	    const char **error_r);
	/* *found_r = 0 when there was no such key */
	int (*del)(struct liststore *s, enum list_kind k, const char *key, int *found_r,
	    const char **error_r);
	/* 1 when the list changed since this store last loaded it, else 0 */
	int (*changed)(struct liststore *s, enum list_kind k);
	/* optional: a descriptor that turns readable when changes arrive (-1: none) */
	int (*watch_fd)(struct liststore *s);
	/* optional: what changed since the last call; never blocks */
	int (*changes)(struct liststore *s, struct list_changes *out);
	/* optional: one entry by key; *found_r = 0 when absent */
	int (*get)(struct liststore *s, enum list_kind k, const char *key,
	    struct list_entry *e, int *found_r, const char **error_r);
	/* optional: the entries of many keys at once, appended to out (absent
	 * keys are simply not there) */
	int (*get_many)(struct liststore *s, enum list_kind k, char *const *keys, size_t n,
	    struct entry_vec *out, const char **error_r);
	/* optional: many entries at once (import), replacing same keys;
	 * progress(arg, done) is called now and then */
	int (*add_many)(struct liststore *s, enum list_kind k, const struct list_entry *v,
	    size_t n, void (*progress)(void *arg, size_t done), void *arg,
	    const char **error_r);
	/* optional: store many entries (replacing same keys) as cheaply as
	 * the store can -- a file store appends them to its journal -- and
	 * never wait for a lock another process holds: -1 then, try later */
	int (*add_batch)(struct liststore *s, enum list_kind k, const struct list_entry *v,
	    size_t n, const char **error_r);
	/* optional: a small named value beside the lists (Redis: the key
	 * PREFIXNAME; file: DIR/.NAME); *found_r = 0 when there is none */
	int (*meta_get)(struct liststore *s, const char *name, char *buf, size_t cap,
	    int *found_r, const char **error_r);
	/* only_if_absent: leave an existing value alone (*set_r = 0) */
	int (*meta_set)(struct liststore *s, const char *name, const char *value,
	    int only_if_absent, int *set_r, const char **error_r);
	/* optional: add this node's counts to the shared ones, learn the totals */
	int (*rate_sync)(struct liststore *s, struct rate_delta *d, size_t n,
	    const char **error_r);
	/* optional: this node's counters as PREFIXstats:NODE (replaced whole,
	 * expiring after ttl seconds) */
	int (*stats_publish)(struct liststore *s, const char *node,
	    const struct stats_series *v, size_t n, int ttl, const char **error_r);
	/* optional: every live node's counters (xmalloc'd; stats_nodes_free) */
	int (*stats_fetch)(struct liststore *s, struct stats_node **nodes_r, size_t *n_r,
	    const char **error_r);
	/* optional: replace the whole list (a local cache of another store) */
	int (*save_all)(struct liststore *s, enum list_kind k, const struct entry_vec *v,
	    const char **error_r);
};

struct liststore {
	const struct liststore_ops *ops;
	void *priv;
	char err[512];
};

struct conf;
/* the store named by `lists`, with lists_prefix, lists_password_file, lists_resync */
struct liststore *liststore_open_conf(const struct conf *c, const char **error_r);
/* "file:DIR", "redis://...", "redis+unix://..." */
struct liststore *liststore_open(const char *url, const char **error_r);
void liststore_free(struct liststore **s);
int liststore_load(struct liststore *s, enum list_kind k, struct entry_vec *out,
    const char **error_r) __attribute__((warn_unused_result));
int liststore_add(struct liststore *s, enum list_kind k, const struct list_entry *e,
    const char **error_r) __attribute__((warn_unused_result));
int liststore_del(struct liststore *s, enum list_kind k, const char *key, int *found_r,
    const char **error_r) __attribute__((warn_unused_result));
int liststore_changed(struct liststore *s, enum list_kind k);
int liststore_watch_fd(struct liststore *s);
/* file stores: a reload of each list whose file changed */
int liststore_changes(struct liststore *s, struct list_changes *out)
    __attribute__((warn_unused_result));
int liststore_get(struct liststore *s, enum list_kind k, const char *key,
    struct list_entry *e, int *found_r, const char **error_r)
    __attribute__((warn_unused_result));
/* the entries of keys[] that exist, appended to out (one round trip per
 * batch where the store can; else one get per key) */
int liststore_get_many(struct liststore *s, enum list_kind k, char *const *keys, size_t n,
    struct entry_vec *out, const char **error_r) __attribute__((warn_unused_result));
int liststore_add_many(struct liststore *s, enum list_kind k, const struct list_entry *v,
    size_t n, void (*progress)(void *arg, size_t done), void *arg, const char **error_r)
    __attribute__((warn_unused_result));
/* entries for the store now, e.g. the auto-bans of one watcher round:
 * one journal append (file) or one pipeline (redis); never blocks on a
 * lock held by another process (fails instead: try again later) */
int liststore_add_batch(struct liststore *s, enum list_kind k, const struct list_entry *v,
    size_t n, const char **error_r) __attribute__((warn_unused_result));
/* in the error of a write that would have had to wait for a lock */
#define LISTSTORE_BUSY "is held by another process"
/* replace list k whole (a local copy); never waits for a lock (LISTSTORE_BUSY) */
int liststore_save_all(struct liststore *s, enum list_kind k, const struct entry_vec *v,
    const char **error_r) __attribute__((warn_unused_result));
/* named values beside the lists (the generation mark of a shared store);
 * -1 with "this store keeps no ..." where the backend has none */
int liststore_meta_get(struct liststore *s, const char *name, char *buf, size_t cap,
    int *found_r, const char **error_r) __attribute__((warn_unused_result));
int liststore_meta_set(struct liststore *s, const char *name, const char *value,
    int only_if_absent, int *set_r, const char **error_r) __attribute__((warn_unused_result));
int liststore_has_meta(const struct liststore *s);
/* the lists of a shared store carry a generation mark (meta "generation"):
 * it vanishes when the store loses its data (Redis restarted empty) */
#define LISTSTORE_GENERATION "generation"
/* a fresh, random generation id ("TIME-HEX") */
void liststore_new_generation(char *buf, size_t cap);
/* 1 when counters are shared through this store */
int liststore_has_rate_sync(const struct liststore *s);
int liststore_rate_sync(struct liststore *s, struct rate_delta *d, size_t n,
    const char **error_r) __attribute__((warn_unused_result));
/* 1 when node counters are shared through this store (redis) */
int liststore_has_stats(const struct liststore *s);
int liststore_stats_publish(struct liststore *s, const char *node, const struct stats_series *v,
    size_t n, int ttl, const char **error_r) __attribute__((warn_unused_result));
int liststore_stats_fetch(struct liststore *s, struct stats_node **nodes_r, size_t *n_r,
    const char **error_r) __attribute__((warn_unused_result));
/* "file" or "redis" */
const char *liststore_scheme(const struct liststore *s);

extern const struct liststore_ops liststore_file_ops;
extern const struct liststore_ops liststore_redis_ops;

/* options the redis backend reads (set before liststore_open) */
struct liststore_options {
	const char *prefix;		/* "portcullis:" */
	const char *password_file;	/* "" none */
	int resync_seconds;		/* full resync interval */
};
void liststore_set_options(const struct liststore_options *o);
const struct liststore_options *liststore_get_options(void);

#endif
