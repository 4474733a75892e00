#ifndef PC_LISTSTORE_H
#define PC_LISTSTORE_H
#include "storage-adapter/listentry.h"

/*
 * Where kill/accept lists persist. One interface, several backends
 * (liststore_file.c now; redis later). A liststore is used by one thread.
 */
struct liststore;

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
};

struct liststore {
	const struct liststore_ops *ops;
	void *priv;
	char err[512];
};

/* "file:DIR" */
struct liststore *liststore_open(const char *url, const char **error_r);
void liststore_free(struct liststore **s);
int liststore_load(struct liststore *s, enum list_kind k, struct entry_vec *out,
    const char **error_r) __attribute__((warn_unused_result));
int liststore_add(struct liststore *s, enum list_kind k, const struct list_entry *e,
    const char **error_r) __attribute__((warn_unused_result));
int liststore_del(struct liststore *s, enum list_kind k, const char *key, int *found_r,
    const char **error_r) __attribute__((warn_unused_result));
int liststore_changed(struct liststore *s, enum list_kind k);

extern const struct liststore_ops liststore_file_ops;

#endif
