/*
 * liststore - pick a list backend by URL scheme and forward to it.
 *
 *   liststore_open("file:DIR")  open (and create) a store
 *   liststore_load/add/del/changed  see liststore.h
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "common/conf.h"
#include "common/xmalloc.h"
#include "storage-adapter/liststore.h"

static const struct liststore_ops *const backends[] = {
	&liststore_file_ops,
	&liststore_redis_ops,
};

static struct liststore_options options = { "portcullis:", "", 60 };

void
liststore_set_options(const struct liststore_options *o)
{
	options = *o;
}

const struct liststore_options *
liststore_get_options(void)
{
	return &options;
}

void
list_changes_add(struct list_changes *c, enum list_kind k, const char *key)
{
	if (c->n == c->cap) {
		c->cap = c->cap ? c->cap * 2 : 16;
		c->keys = xreallocarray(c->keys, c->cap, sizeof(*c->keys));
	}
	c->keys[c->n].kind = k;
	c->keys[c->n].key = xstrdup(key);
	c->n++;
}

void
list_changes_clear(struct list_changes *c)
{
	for (size_t i = 0; i < c->n; i++)
		free(c->keys[i].key);
	free(c->keys);
	for (int k = 0; k < LIST_KINDS; k++)
		entry_vec_clear(&c->got[k]);
	memset(c, 0, sizeof(*c));
}

struct liststore *
liststore_open(const char *url, const char **error_r)
{
	static char err[600];
	const char *colon = strchr(url, ':');

	/* redis+unix:///path is the redis backend too */
	if (strncmp(url, "redis+unix:", 11) == 0)
		colon = url + 5;
	for (size_t i = 0; colon && i < sizeof(backends) / sizeof(backends[0]); i++) {
		const struct liststore_ops *ops = backends[i];
		struct liststore *s;

		if (strlen(ops->scheme) != (size_t)(colon - url) ||
		    strncmp(ops->scheme, url, (size_t)(colon - url)) != 0)
			continue;
		s = xcalloc(1, sizeof(*s));
		s->ops = ops;
		if (ops->open(s, ops == &liststore_redis_ops ? url : colon + 1, error_r) < 0) {
			snprintf(err, sizeof(err), "lists = %.200s: %s", url, *error_r);
			*error_r = err;
			free(s);
			return NULL;
		}
		return s;
	}
	snprintf(err, sizeof(err), "lists = %.200s: unknown store (expected file:DIR, redis://HOST:PORT/DB or redis+unix:///PATH)", url);
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

int
liststore_watch_fd(struct liststore *s)
{
	return s->ops->watch_fd ? s->ops->watch_fd(s) : -1;
}

int
liststore_changes(struct liststore *s, struct list_changes *out)
{
	if (s->ops->changes)
		return s->ops->changes(s, out);
	for (int k = 0; k < LIST_KINDS; k++)
		if (s->ops->changed(s, (enum list_kind)k))
			out->reload[k] = 1;
	return 0;
}

int
liststore_get_many(struct liststore *s, enum list_kind k, char *const *keys, size_t n,
    struct entry_vec *out, const char **error_r)
{
	if (s->ops->get_many)
		return s->ops->get_many(s, k, keys, n, out, error_r);
	for (size_t i = 0; i < n; i++) {
		struct list_entry e;
		int found = 0;

		memset(&e, 0, sizeof(e));
		if (liststore_get(s, k, keys[i], &e, &found, error_r) < 0)
			return -1;
		if (found)
			entry_vec_push(out, &e);
	}
	return 0;
}

int
liststore_get(struct liststore *s, enum list_kind k, const char *key,
    struct list_entry *e, int *found_r, const char **error_r)
{
	struct entry_vec v = { 0 };

	if (s->ops->get)
		return s->ops->get(s, k, key, e, found_r, error_r);
	/* fallback: load and search */
	if (s->ops->load(s, k, &v, error_r) < 0)
		return -1;
	*found_r = 0;
	for (size_t i = 0; i < v.n; i++)
		if (strcmp(v.v[i].key, key) == 0) {
			listentry_clear(e);
			*e = v.v[i];
			memset(&v.v[i], 0, sizeof(v.v[i]));
			*found_r = 1;
		}
	entry_vec_clear(&v);
	return 0;
}

int
liststore_add_many(struct liststore *s, enum list_kind k, const struct list_entry *v,
    size_t n, void (*progress)(void *arg, size_t done), void *arg, const char **error_r)
{
	if (s->ops->add_many)
		return s->ops->add_many(s, k, v, n, progress, arg, error_r);
	for (size_t i = 0; i < n; i++) {
		if (s->ops->add(s, k, &v[i], error_r) < 0)
			return -1;
		if (progress && (i % 1000 == 999 || i + 1 == n))
			progress(arg, i + 1);
	}
	return 0;
}

int
liststore_add_batch(struct liststore *s, enum list_kind k, const struct list_entry *v,
    size_t n, const char **error_r)
{
	if (n == 0)
		return 0;
	if (s->ops->add_batch)
		return s->ops->add_batch(s, k, v, n, error_r);
	for (size_t i = 0; i < n; i++)
		if (s->ops->add(s, k, &v[i], error_r) < 0)
			return -1;
	return 0;
}

int
liststore_save_all(struct liststore *s, enum list_kind k, const struct entry_vec *v,
    const char **error_r)
{
	if (s->ops->save_all == NULL) {
		*error_r = "this store cannot replace a whole list";
		return -1;
	}
	return s->ops->save_all(s, k, v, error_r);
}

const char *
liststore_scheme(const struct liststore *s)
{
	return s->ops->scheme;
}

struct liststore *
liststore_open_conf(const struct conf *c, const char **error_r)
{
	static char err[600];
	struct liststore_options o;
	const char *prefix = conf_get(c, "lists_prefix");

	for (const char *p = prefix; *p; p++)
		if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f) {
			snprintf(err, sizeof(err), "%s: lists_prefix: no spaces or control characters",
			    conf_where(c, "lists_prefix"));
			*error_r = err;
			return NULL;
		}
	if (strlen(prefix) > 64) {
		snprintf(err, sizeof(err), "%s: lists_prefix: at most 64 characters",
		    conf_where(c, "lists_prefix"));
		*error_r = err;
		return NULL;
	}
	o.prefix = prefix;
	o.password_file = conf_get(c, "lists_password_file");
	o.resync_seconds = (int)conf_get_int(c, "lists_resync");
	liststore_set_options(&o);
	return liststore_open(conf_get(c, "lists"), error_r);
}

int
liststore_has_rate_sync(const struct liststore *s)
{
	return s->ops->rate_sync != NULL;
}

int
liststore_rate_sync(struct liststore *s, struct rate_delta *d, size_t n, const char **error_r)
{
	if (s->ops->rate_sync == NULL) {
		*error_r = "this store keeps no shared counters";
		return -1;
	}
	return s->ops->rate_sync(s, d, n, error_r);
}

int
liststore_has_stats(const struct liststore *s)
{
	return s->ops->stats_publish != NULL && s->ops->stats_fetch != NULL;
}

int
liststore_stats_publish(struct liststore *s, const char *node, const struct stats_series *v,
    size_t n, int ttl, const char **error_r)
{
	if (s->ops->stats_publish == NULL) {
		*error_r = "this store shares no node counters";
		return -1;
	}
	return s->ops->stats_publish(s, node, v, n, ttl, error_r);
}

int
liststore_stats_fetch(struct liststore *s, struct stats_node **nodes_r, size_t *n_r,
    const char **error_r)
{
	*nodes_r = NULL;
	*n_r = 0;
	if (s->ops->stats_fetch == NULL) {
		*error_r = "this store shares no node counters";
		return -1;
	}
	return s->ops->stats_fetch(s, nodes_r, n_r, error_r);
}

void
stats_nodes_free(struct stats_node *v, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		for (size_t j = 0; j < v[i].n; j++)
			free(v[i].v[j].name);
		free(v[i].v);
		free(v[i].node);
	}
	free(v);
}

int
liststore_has_meta(const struct liststore *s)
{
	return s->ops->meta_get != NULL && s->ops->meta_set != NULL;
}

int
liststore_meta_get(struct liststore *s, const char *name, char *buf, size_t cap,
    int *found_r, const char **error_r)
{
	if (!liststore_has_meta(s)) {
		*error_r = "this store keeps no values beside the lists";
		return -1;
	}
	return s->ops->meta_get(s, name, buf, cap, found_r, error_r);
}

int
liststore_meta_set(struct liststore *s, const char *name, const char *value,
    int only_if_absent, int *set_r, const char **error_r)
{
	if (!liststore_has_meta(s)) {
		*error_r = "this store keeps no values beside the lists";
		return -1;
	}
	return s->ops->meta_set(s, name, value, only_if_absent, set_r, error_r);
}

void
liststore_new_generation(char *buf, size_t cap)
{
	unsigned char r[8];

	if (getentropy(r, sizeof(r)) < 0)
		memset(r, 0, sizeof(r));	/* the time part still tells them apart */
	snprintf(buf, cap, "%lld-%02x%02x%02x%02x%02x%02x%02x%02x", (long long)time(NULL),
	    r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]);
}
