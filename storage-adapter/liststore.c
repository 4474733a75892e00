/*
 * liststore - pick a list backend by URL scheme and forward to it.
 *
 *   liststore_open("file:DIR")  open (and create) a store
 *   liststore_load/add/del/changed  see liststore.h
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/xmalloc.h"
#include "storage-adapter/liststore.h"

static const struct liststore_ops *const backends[] = {
	&liststore_file_ops,
};

struct liststore *
liststore_open(const char *url, const char **error_r)
{
	static char err[600];
	const char *colon = strchr(url, ':');

	for (size_t i = 0; colon && i < sizeof(backends) / sizeof(backends[0]); i++) {
		const struct liststore_ops *ops = backends[i];
		struct liststore *s;

		if (strlen(ops->scheme) != (size_t)(colon - url) ||
		    strncmp(ops->scheme, url, (size_t)(colon - url)) != 0)
			continue;
		s = xcalloc(1, sizeof(*s));
		s->ops = ops;
		if (ops->open(s, colon + 1, error_r) < 0) {
			snprintf(err, sizeof(err), "lists = %.200s: %s", url, *error_r);
			*error_r = err;
			free(s);
			return NULL;
		}
		return s;
	}
	snprintf(err, sizeof(err), "lists = %.200s: unknown store (expected file:DIR)", url);
	*error_r = err;
	return NULL;
}

void
liststore_free(struct liststore **sp)
{
	struct liststore *s = *sp;

	if (s == NULL)
		return;
	s->ops->close(s);
	free(s);
	*sp = NULL;
}

int
liststore_load(struct liststore *s, enum list_kind k, struct entry_vec *out,
    const char **error_r)
{
	return s->ops->load(s, k, out, error_r);
}

int
liststore_add(struct liststore *s, enum list_kind k, const struct list_entry *e,
    const char **error_r)
{
	return s->ops->add(s, k, e, error_r);
}

int
liststore_del(struct liststore *s, enum list_kind k, const char *key, int *found_r,
    const char **error_r)
{
	return s->ops->del(s, k, key, found_r, error_r);
}

int
liststore_changed(struct liststore *s, enum list_kind k)
{
	return s->ops->changed(s, k);
}
