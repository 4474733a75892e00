/*
 * liststore_redis - kill/accept lists in Redis, shared by many gateways.
 *
 * Key schema (README "Redis key schema"), PREFIX = lists_prefix:
 *   PREFIX kill:ENTRY, PREFIX accept:ENTRY   one hash per entry
 *       fields: added (unix time), origin (admin|auto-ban|import), reason
 *       expiry: the key's own Redis TTL (EXPIREAT), so every node sees it
 *       vanish at the same moment, by Redis's clock, with no cron job
 *   PREFIX changes                          PUBLISH channel: "kill ENTRY",
 *                                           "accept ENTRY", "kill *" (reload)
 *   PREFIX stats:NODE                       hash: one node's counters
 *                                           (series -> count), TTL 3x
 *                                           stats_publish_interval
 *   PREFIX generation                       string: an id set when the lists
 *                                           were first stored (or reseeded);
 *                                           gone = Redis lost its data
 * Watchers also listen to keyspace notifications for PREFIX*, which the
 * daemon switches on when Redis allows CONFIG SET, so writes made with plain
 * redis-cli are seen at once; otherwise at the next full resync.
 *
 *   open()       parse redis://[:PASSWORD@]HOST[:PORT][/DB] or
 *                redis+unix:///PATH[?db=N]; connects lazily
 *   load/get/add/del/add_many   one connection, pipelined where it counts
 *   add_batch    many entries, one MULTI and one PUBLISH each, pipelined
 *                (the watcher's auto-bans: other nodes fetch just those keys)
 *   changes()    never blocks: drains the subscription, reconnects with
 *                backoff, asks for full reloads on (re)connect and every
 *                lists_resync seconds
 *
 * Every reply is input: a key whose name is not an entry, a hash with a bad
 * field, a value of the wrong type is logged with its key and skipped.
 * Commands time out after a couple of seconds; nothing here runs on a milter
 * thread.
 */
#include <ctype.h>
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include <hiredis/hiredis.h>

#include "common/log.h"
#include "common/pclimits.h"
#include "common/xmalloc.h"
#include "storage-adapter/liststore.h"
#include "storage-adapter/ratelimit.h"
#include "storage-adapter/redis_schema.h"

#define REDIS_CONNECT_TIMEOUT_MS 1000
#define REDIS_COMMAND_TIMEOUT_MS 3000
#define REDIS_BATCH 1000
#define REDIS_BACKOFF_MAX_MS 5000

struct rstore {
	char *host;
	int port;
	char *path;		/* unix socket */
	int db;
	char *password;
	char *prefix;
	char *where;		/* for messages: "127.0.0.1:6379/0" */
	redisContext *cmd;
	redisContext *sub;
	long long offset;	/* Redis clock minus ours, seconds */
	/* watcher state */
	int watching, down, announced_down;
	long long next_retry_ms;
	int backoff_ms;
	time_t last_resync;
	int resync_seconds;
	double load_seconds[LIST_KINDS];	/* how long the last full load of each list took */
	int stretch_noted;
	int notify_warned;
};

static long long
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int
rs_fail(struct liststore *s, const char **error_r, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int
rs_fail(struct liststore *s, const char **error_r, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(s->err, sizeof(s->err), fmt, ap);
	va_end(ap);
	*error_r = s->err;
	return -1;
}

static char *
read_password_file(const char *path, const char **why_r)
{
	FILE *fp = fopen(path, "r");
	char buf[512];
	size_t n;

	if (fp == NULL) {
		*why_r = strerror(errno);
		return NULL;
	}
	if (fgets(buf, sizeof(buf), fp) == NULL)
		buf[0] = '\0';
	fclose(fp);
	n = strlen(buf);
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' '))
		buf[--n] = '\0';
	if (n == 0) {
		*why_r = "empty";
		return NULL;
	}
	return xstrdup(buf);
}

static int
rs_open(struct liststore *s, const char *url, const char **error_r)
{
	const struct liststore_options *o = liststore_get_options();
	struct rstore *r = xcalloc(1, sizeof(*r));
	const char *p, *why;

	r->port = 6379;
	r->prefix = xstrdup(o->prefix ? o->prefix : "portcullis:");
	r->resync_seconds = o->resync_seconds > 0 ? o->resync_seconds : 60;
	if (strncmp(url, "redis+unix://", 13) == 0) {
		const char *q;

		p = url + 13;
		if (*p != '/') {
			free(r->prefix);
			free(r);
			return rs_fail(s, error_r, "write redis+unix:///path/to/redis.sock?db=N");
		}
		q = strchr(p, '?');
		r->path = q ? xstrndup(p, (size_t)(q - p)) : xstrdup(p);
		if (q != NULL) {
			if (strncmp(q, "?db=", 4) != 0 || !isdigit((unsigned char)q[4]) ||
			    strspn(q + 4, "0123456789") != strlen(q + 4)) {
				free(r->path);
				free(r->prefix);
				free(r);
				return rs_fail(s, error_r, "after the socket path only ?db=N is understood");
			}
			r->db = atoi(q + 4);
		}
		r->where = xasprintf("%s?db=%d", r->path, r->db);
	} else if (strncmp(url, "redis://", 8) == 0) {
		const char *at, *hs, *he, *slash;

		p = url + 8;
		at = strrchr(p, '@');
		if (at != NULL) {
			const char *colon = memchr(p, ':', (size_t)(at - p));

			/* redis://:password@host or redis://user:password@host */
			r->password = colon ? xstrndup(colon + 1, (size_t)(at - colon - 1)) :
			    xstrndup(p, (size_t)(at - p));
			p = at + 1;
		}
		slash = strchr(p, '/');
		hs = p;
		if (*p == '[') {
			he = strchr(p, ']');
			if (he == NULL)
				goto bad_url;
			r->host = xstrndup(p + 1, (size_t)(he - p - 1));
			he++;
		} else {
			he = p + strcspn(p, ":/");
			r->host = xstrndup(hs, (size_t)(he - hs));
		}
		if (*he == ':') {
			char *end;
			long port = strtol(he + 1, &end, 10);

			if (end == he + 1 || port < 1 || port > 65535 || (*end != '\0' && *end != '/'))
				goto bad_url;
			r->port = (int)port;
		} else if (*he != '\0' && *he != '/') {
			goto bad_url;
		}
		if (slash != NULL && slash[1] != '\0') {
			if (strspn(slash + 1, "0123456789") != strlen(slash + 1) ||
			    strlen(slash + 1) > 4)
				goto bad_url;
			r->db = atoi(slash + 1);
		}
		if (r->host[0] == '\0')
			goto bad_url;
		r->where = xasprintf("%s:%d/%d", r->host, r->port, r->db);
	} else {
		free(r->prefix);
		free(r);
		return rs_fail(s, error_r, "expected redis://HOST:PORT/DB or redis+unix:///PATH");
	}
	if (o->password_file != NULL && o->password_file[0] != '\0') {
		char *pw = read_password_file(o->password_file, &why);

		if (pw == NULL) {
			rs_fail(s, error_r, "lists_password_file %s: %s", o->password_file, why);
			free(r->host); free(r->path); free(r->password); free(r->prefix);
			free(r->where); free(r);
			return -1;
		}
		free(r->password);
		r->password = pw;
	}
	s->priv = r;
	return 0;
bad_url:
	free(r->host);
	free(r->password);
	free(r->prefix);
	free(r);
	return rs_fail(s, error_r, "cannot parse; expected redis://[:PASSWORD@]HOST[:PORT][/DB]");
}

static void
rs_close(struct liststore *s)
{
	struct rstore *r = s->priv;

	if (r->cmd)
		redisFree(r->cmd);
	if (r->sub)
		redisFree(r->sub);
	free(r->host);
	free(r->path);
	free(r->password);
	free(r->prefix);
	free(r->where);
	free(r);
	s->priv = NULL;
}

static redisReply *
cmdv(redisContext *c, int argc, const char **argv)
{
	return redisCommandArgv(c, argc, argv, NULL);
}

/* a fresh, authenticated connection with db selected, or NULL with *error_r */
static redisContext *
rs_connect(struct liststore *s, const char **error_r)
{
	struct rstore *r = s->priv;
	struct timeval ct = { 0, REDIS_CONNECT_TIMEOUT_MS * 1000 };
	struct timeval tt = { REDIS_COMMAND_TIMEOUT_MS / 1000, 0 };
	redisContext *c = r->path ? redisConnectUnixWithTimeout(r->path, ct) :
	    redisConnectWithTimeout(r->host, r->port, ct);
	redisReply *rep;
	char dbs[16];

	if (c == NULL) {
		rs_fail(s, error_r, "cannot reach Redis at %s: out of memory", r->where);
		return NULL;
	}
	if (c->err) {
		rs_fail(s, error_r, "cannot reach Redis at %s: %s", r->where, c->errstr);
		redisFree(c);
		return NULL;
	}
	redisSetTimeout(c, tt);
	redisEnableKeepAlive(c);
	if (r->password != NULL) {
		const char *argv[] = { "AUTH", r->password };

		rep = cmdv(c, 2, argv);
		if (rep == NULL || rep->type == REDIS_REPLY_ERROR) {
			rs_fail(s, error_r, "Redis at %s refused the password: %s", r->where,
			    rep ? rep->str : c->errstr);
			if (rep)
				freeReplyObject(rep);
			redisFree(c);
			return NULL;
		}
		freeReplyObject(rep);
	}
	snprintf(dbs, sizeof(dbs), "%d", r->db);
	{
		const char *argv[] = { "SELECT", dbs };

		rep = cmdv(c, 2, argv);
		if (rep == NULL || rep->type == REDIS_REPLY_ERROR) {
			rs_fail(s, error_r, "Redis at %s: SELECT %d: %s", r->where, r->db,
			    rep ? rep->str : c->errstr);
			if (rep)
				freeReplyObject(rep);
			redisFree(c);
			return NULL;
		}
		freeReplyObject(rep);
	}
	return c;
}

/*
 * An idle command connection has nothing to read: a readable, hung-up or
 * failed socket is one that Redis closed (its `timeout`, CLIENT KILL, a
 * restart). Checked before each use so the command goes to a fresh one.
 */
static int
cmd_is_alive(const redisContext *c)
{
	struct pollfd pfd = { .fd = c->fd, .events = POLLIN | POLLRDHUP };

	if (c->fd < 0)
		return 0;
	return poll(&pfd, 1, 0) == 0;
}

/* the command connection, connecting if needed; learns the clock offset */
static redisContext *
rs_cmd(struct liststore *s, const char **error_r)
{
	struct rstore *r = s->priv;
	redisReply *rep;
	struct timespec t0, t1;

	if (r->cmd != NULL && r->cmd->err == 0 && cmd_is_alive(r->cmd))
		return r->cmd;
	if (r->cmd != NULL) {
		redisFree(r->cmd);
		r->cmd = NULL;
	}
	r->cmd = rs_connect(s, error_r);
	if (r->cmd == NULL)
		return NULL;
	/* to the microsecond, against the middle of our round trip */
	clock_gettime(CLOCK_REALTIME, &t0);
	rep = redisCommand(r->cmd, "TIME");
	clock_gettime(CLOCK_REALTIME, &t1);
	if (rep != NULL && rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 &&
	    rep->element[0]->type == REDIS_REPLY_STRING &&
	    rep->element[1]->type == REDIS_REPLY_STRING)
		r->offset = redis_schema_clock_offset(atoll(rep->element[0]->str),
		    atoll(rep->element[1]->str), (long long)t0.tv_sec, t0.tv_nsec,
		    (long long)t1.tv_sec, t1.tv_nsec);
	if (rep)
		freeReplyObject(rep);
	return r->cmd;
}

static void
rs_drop(struct rstore *r)
{
	if (r->cmd) {
		redisFree(r->cmd);
		r->cmd = NULL;
	}
	if (r->sub) {
		redisFree(r->sub);
		r->sub = NULL;
	}
}

static char *
entry_key(const struct rstore *r, enum list_kind k, const char *key)
{
	return redis_schema_key(r->prefix, k, key);
}

/* glob-escape the prefix for SCAN MATCH */
static char *
match_pattern(const struct rstore *r, enum list_kind k)
{
	size_t n = strlen(r->prefix);
	char *out = xmalloc(2 * n + 16), *q = out;

	for (size_t i = 0; i < n; i++) {
		if (strchr("*?[]\\", r->prefix[i]))
			*q++ = '\\';
		*q++ = r->prefix[i];
	}
	sprintf(q, "%s:*", list_kind_name(k));
	return out;
}

/*
 * Turn the replies for one key into an entry. h: HGETALL; exp: EXPIRETIME. Returns 0 and fills *e, 1
 * when the key is gone, -1 (logged) when it is malformed.
 */
static int
decode_entry(struct rstore *r, const char *rkey, const char *key, redisReply *h,
    redisReply *exp, struct list_entry *e)
{
	const char *err;
	char esc[LOG_ESCAPE_BUFSZ];
	long long xt = exp != NULL && exp->type == REDIS_REPLY_INTEGER ? exp->integer : -1;
	const char **fv = NULL;
	size_t *fl = NULL, n = 0;
	int rc;

	if (xt == -2 || h->type == REDIS_REPLY_NIL ||
	    (h->type == REDIS_REPLY_ARRAY && h->elements == 0))
		return 1;	/* gone */
	/* a string, list... (WRONGTYPE): only hashes are entries */
	if (h->type == REDIS_REPLY_ARRAY) {
		fv = xcalloc(h->elements + 1, sizeof(char *));
		fl = xcalloc(h->elements + 1, sizeof(size_t));
		for (size_t i = 0; i < h->elements; i++) {
			if (h->element[i]->type != REDIS_REPLY_STRING)
				continue;
			fv[n] = h->element[i]->str;
			fl[n++] = h->element[i]->len;
		}
	} else {
		log_warn("redis key \"%s\": not a hash; skipped",
		    log_escape(esc, rkey, strlen(rkey)));
		return -1;
	}
	rc = redis_schema_decode(key, fv, fl, n, xt, r->offset, e, &err);
	free(fv);
	free(fl);
	if (rc < 0) {
		log_warn("redis key \"%s\": %s; skipped", log_escape(esc, rkey, strlen(rkey)), err);
		return -1;
	}
	return 0;
}

/*
 * Pipeline HGETALL + EXPIRETIME for keys[0..n), decode into out. Every reply
 * of the batch is read before anything else is sent or any error returned,
 * so a reply can never be taken for another key's. A key of another type
 * (WRONGTYPE) is logged and skipped by decode_entry().
 */
static int
fetch_keys(struct liststore *s, redisContext *c, char **rkeys, size_t n, size_t skip,
    struct entry_vec *out, const char **error_r)
{
	struct rstore *r = s->priv;
	redisReply **h = xcalloc(n + 1, sizeof(*h)), **x = xcalloc(n + 1, sizeof(*x));
	int rc = 0;

	for (size_t i = 0; i < n; i++) {
		const char *a1[] = { "HGETALL", rkeys[i] };
		const char *a2[] = { "EXPIRETIME", rkeys[i] };

		redisAppendCommandArgv(c, 2, a1, NULL);
		redisAppendCommandArgv(c, 2, a2, NULL);
	}
	for (size_t i = 0; i < n && rc == 0; i++) {
		if (redisGetReply(c, (void **)&h[i]) != REDIS_OK ||
		    redisGetReply(c, (void **)&x[i]) != REDIS_OK) {
			rc = rs_fail(s, error_r, "Redis at %s: %s", r->where,
			    c->errstr[0] ? c->errstr : "connection lost");
			break;
		}
	}
	for (size_t i = 0; i < n; i++) {
		struct list_entry e;

		if (rc == 0 && h[i] != NULL && x[i] != NULL) {
			memset(&e, 0, sizeof(e));
			if (decode_entry(r, rkeys[i], rkeys[i] + skip, h[i], x[i], &e) == 0)
				entry_vec_push(out, &e);
		}
		if (h[i])
			freeReplyObject(h[i]);
		if (x[i])
			freeReplyObject(x[i]);
	}
	free(h);
	free(x);
	if (rc < 0)
		rs_drop(r);	/* a half-read pipeline: start afresh */
	return rc;
}

static int
rs_load_once(struct liststore *s, enum list_kind k, struct entry_vec *out, const char **error_r)
{
	struct rstore *r = s->priv;
	redisContext *c = rs_cmd(s, error_r);
	char *pattern, cursor[32] = "0";
	size_t skip = strlen(r->prefix) + strlen(list_kind_name(k)) + 1;
	int rc = 0;
	long long t0;

	if (c == NULL)
		return -1;
	t0 = now_ms();
	pattern = match_pattern(r, k);
	do {
		const char *argv[] = { "SCAN", cursor, "MATCH", pattern, "COUNT", "1000" };
		redisReply *rep = cmdv(c, 6, argv);
		char **keys;
		size_t n = 0;

		if (rep == NULL || rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 ||
		    rep->element[0]->type != REDIS_REPLY_STRING ||
		    rep->element[1]->type != REDIS_REPLY_ARRAY) {
			rc = rs_fail(s, error_r, "Redis at %s: SCAN: %s", r->where,
			    rep == NULL ? c->errstr : rep->type == REDIS_REPLY_ERROR ? rep->str :
			    "unexpected reply");
			if (rep)
				freeReplyObject(rep);
			break;
		}
		snprintf(cursor, sizeof(cursor), "%s", rep->element[0]->str);
		keys = xcalloc(rep->element[1]->elements + 1, sizeof(char *));
		for (size_t i = 0; i < rep->element[1]->elements; i++)
			if (rep->element[1]->element[i]->type == REDIS_REPLY_STRING)
				keys[n++] = rep->element[1]->element[i]->str;
		if (out->n + n > MAX_LIST_ENTRIES) {
			log_warn("Redis at %s: more than %u %s entries; the rest is ignored", r->where,
			    MAX_LIST_ENTRIES, list_kind_name(k));
			free(keys);
			freeReplyObject(rep);
			break;
		}
		rc = fetch_keys(s, c, keys, n, skip, out, error_r);
		free(keys);
		freeReplyObject(rep);
	} while (rc == 0 && strcmp(cursor, "0") != 0);
	free(pattern);
	if (rc < 0) {
		rs_drop(r);
		r->down = 1;	/* "reachable again" is logged when it returns */
	} else {
		r->load_seconds[k] = (double)(now_ms() - t0) / 1000.0;
	}
	return rc;
}

/*
 * Reads and writes here are idempotent (a write replaces the whole entry):
 * when a connection that had served before broke under one (Redis closed
 * it between the check and the command), the call is made once more, on a
 * fresh connection. A fresh connection that fails is not retried: Redis is
 * down, and the caller hears so at once.
 */
static int
rs_load(struct liststore *s, enum list_kind k, struct entry_vec *out, const char **error_r)
{
	struct rstore *r = s->priv;
	size_t n0 = out->n;
	int reused = r->cmd != NULL, was_down = r->down;
	int rc = rs_load_once(s, k, out, error_r);

	if (rc == 0 || !reused || r->cmd != NULL)
		return rc;
	while (out->n > n0)
		listentry_clear(&out->v[--out->n]);
	rc = rs_load_once(s, k, out, error_r);
	if (rc == 0)
		r->down = was_down;
	return rc;
}

static int
rs_get_once(struct liststore *s, enum list_kind k, const char *key, struct list_entry *e,
    int *found_r, const char **error_r)
{
	struct rstore *r = s->priv;
	redisContext *c = rs_cmd(s, error_r);
	struct entry_vec v = { 0 };
	char *rkey;
	int rc;

	if (c == NULL)
		return -1;
	rkey = entry_key(r, k, key);
	rc = fetch_keys(s, c, &rkey, 1, strlen(rkey) - strlen(key), &v, error_r);
	free(rkey);
	if (rc < 0) {
		/* fetch_keys dropped (freed) c already: not a byte of it is read */
		entry_vec_clear(&v);
		return -1;
	}
	*found_r = v.n > 0;
	if (v.n > 0) {
		listentry_clear(e);
		*e = v.v[0];
		memset(&v.v[0], 0, sizeof(v.v[0]));
	}
	entry_vec_clear(&v);
	return 0;
}

static int
rs_get(struct liststore *s, enum list_kind k, const char *key, struct list_entry *e,
    int *found_r, const char **error_r)
{
	struct rstore *r = s->priv;
	int reused = r->cmd != NULL;
	int rc = rs_get_once(s, k, key, e, found_r, error_r);

	if (rc == 0 || !reused || r->cmd != NULL)
		return rc;
	return rs_get_once(s, k, key, e, found_r, error_r);
}

/* many keys, pipelined in batches: a bulk import announces a million keys,
 * and one round trip each would take the watcher half a minute */
static int
rs_get_many_once(struct liststore *s, enum list_kind k, char *const *keys, size_t n,
    struct entry_vec *out, const char **error_r)
{
	struct rstore *r = s->priv;
	redisContext *c = rs_cmd(s, error_r);
	size_t skip;

	if (c == NULL)
		return -1;
	skip = strlen(r->prefix) + strlen(list_kind_name(k)) + 1;
	for (size_t i = 0; i < n; i += 1000) {
		size_t m = n - i < 1000 ? n - i : 1000;
		char **rkeys = xcalloc(m, sizeof(char *));
		int rc;

		for (size_t j = 0; j < m; j++)
			rkeys[j] = entry_key(r, k, keys[i + j]);
		rc = fetch_keys(s, c, rkeys, m, skip, out, error_r);
		for (size_t j = 0; j < m; j++)
			free(rkeys[j]);
		free(rkeys);
		if (rc < 0)
			return -1;	/* fetch_keys dropped the connection */
		c = rs_cmd(s, error_r);
		if (c == NULL)
			return -1;
	}
	return 0;
}

static int
rs_get_many(struct liststore *s, enum list_kind k, char *const *keys, size_t n,
    struct entry_vec *out, const char **error_r)
{
	struct rstore *r = s->priv;
	size_t n0 = out->n;
	int reused = r->cmd != NULL;
	int rc = rs_get_many_once(s, k, keys, n, out, error_r);

	if (rc == 0 || !reused || r->cmd != NULL)
		return rc;
	while (out->n > n0)
		listentry_clear(&out->v[--out->n]);
	return rs_get_many_once(s, k, keys, n, out, error_r);
}

/* queue the commands that store one entry */
static void
append_entry(struct rstore *r, redisContext *c, enum list_kind k, const struct list_entry *e)
{
	char *rkey = entry_key(r, k, e->key);
	char added[24], exp[24];
	const char *del[] = { "DEL", rkey };
	const char *hset[] = { "HSET", rkey, "added", added, "origin",
	    listentry_origin_name(e->origin), "reason", e->reason ? e->reason : "" };

	snprintf(added, sizeof(added), "%lld", e->added);
	redisAppendCommandArgv(c, 2, del, NULL);
	redisAppendCommandArgv(c, e->reason ? 8 : 6, hset, NULL);
	if (e->expires != 0) {
		const char *ex[] = { "EXPIREAT", rkey, exp };

		snprintf(exp, sizeof(exp), "%lld", e->expires + r->offset);	/* ours -> Redis's */
		redisAppendCommandArgv(c, 3, ex, NULL);
	}
	free(rkey);
}

/*
 * Read n queued replies. On a connection error the message is taken from
 * c before the connection (c itself) is freed: nothing of c is read after.
 */
static int
drain(struct liststore *s, redisContext *c, int n, const char **error_r)
{
	struct rstore *r = s->priv;
	int rc = 0;

	for (int i = 0; i < n; i++) {
		redisReply *rep = NULL;

		if (redisGetReply(c, (void **)&rep) != REDIS_OK) {
			rs_fail(s, error_r, "Redis at %s: %s", r->where,
			    c->errstr[0] ? c->errstr : "connection lost");
			rs_drop(r);	/* frees c */
			return -1;
		}
		if (rep->type == REDIS_REPLY_ERROR && rc == 0)
			rc = rs_fail(s, error_r, "Redis at %s: %s", r->where, rep->str);
		freeReplyObject(rep);
	}
	return rc;
}

static void
append_publish(struct rstore *r, redisContext *c, enum list_kind k, const char *key)
{
	char *chan = xasprintf("%schanges", r->prefix);
	char *msg = xasprintf("%s %s", list_kind_name(k), key);
	const char *pub[] = { "PUBLISH", chan, msg };

	redisAppendCommandArgv(c, 3, pub, NULL);
	free(chan);
	free(msg);
}

static int
rs_add_once(struct liststore *s, enum list_kind k, const struct list_entry *e,
    const char **error_r)
{
	struct rstore *r = s->priv;
	redisContext *c = rs_cmd(s, error_r);
	const char *multi[] = { "MULTI" }, *exec[] = { "EXEC" };

	if (c == NULL)
		return -1;
	/* one MULTI: no reader ever sees the entry half-written */
	redisAppendCommandArgv(c, 1, multi, NULL);
	append_entry(r, c, k, e);
	redisAppendCommandArgv(c, 1, exec, NULL);
	append_publish(r, c, k, e->key);
	return drain(s, c, 1 + 2 + (e->expires != 0) + 1 + 1, error_r);
}

static int
rs_add(struct liststore *s, enum list_kind k, const struct list_entry *e, const char **error_r)
{
	struct rstore *r = s->priv;
	int reused = r->cmd != NULL;
	int rc = rs_add_once(s, k, e, error_r);

	if (rc == 0 || !reused || r->cmd != NULL)
		return rc;
	return rs_add_once(s, k, e, error_r);
}

static int
rs_del_once(struct liststore *s, enum list_kind k, const char *key, int *found_r,
    const char **error_r)
{
	struct rstore *r = s->priv;
	redisContext *c = rs_cmd(s, error_r);
	char *rkey;
	redisReply *rep;

	if (c == NULL)
		return -1;
	rkey = entry_key(r, k, key);
	{
		const char *argv[] = { "DEL", rkey };

		rep = cmdv(c, 2, argv);
	}
	free(rkey);
	if (rep == NULL || rep->type != REDIS_REPLY_INTEGER) {
		rs_fail(s, error_r, "Redis at %s: DEL: %s", r->where,
		    rep == NULL ? c->errstr : rep->type == REDIS_REPLY_ERROR ? rep->str : "unexpected reply");
		if (rep)
			freeReplyObject(rep);
		if (c->err)
			rs_drop(r);
		return -1;
	}
	*found_r = rep->integer > 0;
	freeReplyObject(rep);
	append_publish(r, c, k, key);
	return drain(s, c, 1, error_r);
}

static int
rs_del(struct liststore *s, enum list_kind k, const char *key, int *found_r,
    const char **error_r)
{
	struct rstore *r = s->priv;
	int reused = r->cmd != NULL;
	int rc = rs_del_once(s, k, key, found_r, error_r);

	if (rc == 0 || !reused || r->cmd != NULL)
		return rc;
	return rs_del_once(s, k, key, found_r, error_r);
}

static int
rs_add_many(struct liststore *s, enum list_kind k, const struct list_entry *v, size_t n,
    void (*progress)(void *arg, size_t done), void *arg, const char **error_r)
{
	struct rstore *r = s->priv;
	redisContext *c = rs_cmd(s, error_r);
	size_t done = 0;

	if (c == NULL)
		return -1;
	while (done < n) {
		size_t batch = n - done < REDIS_BATCH ? n - done : REDIS_BATCH;
		int queued = 0;

		for (size_t i = 0; i < batch; i++) {
			append_entry(r, c, k, &v[done + i]);
			queued += 2 + (v[done + i].expires != 0);
		}
		if (drain(s, c, queued, error_r) < 0) {
			char why[sizeof(s->err)];

			/* c is freed when the connection broke; *error_r is s->err */
			snprintf(why, sizeof(why), "%s", *error_r);
			return rs_fail(s, error_r, "%s (%zu of %zu entries confirmed written before; "
			    "running the same import again is safe)", why, done, n);
		}
		done += batch;
		if (progress)
			progress(arg, done);
	}
	append_publish(r, c, k, "*");	/* watchers reload the whole list */
	return drain(s, c, 1, error_r);
}

/* each entry in its own MULTI with its own PUBLISH (watchers fetch just
 * those keys), pipelined in batches */
static int
rs_add_batch_once(struct liststore *s, enum list_kind k, const struct list_entry *v,
    size_t n, const char **error_r)
{
	struct rstore *r = s->priv;
	redisContext *c = rs_cmd(s, error_r);
	const char *multi[] = { "MULTI" }, *exec[] = { "EXEC" };
	size_t done = 0;

	if (c == NULL)
		return -1;
	while (done < n) {
		size_t batch = n - done < REDIS_BATCH / 4 ? n - done : REDIS_BATCH / 4;
		int queued = 0;

		for (size_t i = done; i < done + batch; i++) {
			redisAppendCommandArgv(c, 1, multi, NULL);
			append_entry(r, c, k, &v[i]);
			redisAppendCommandArgv(c, 1, exec, NULL);
			append_publish(r, c, k, v[i].key);
			queued += 1 + 2 + (v[i].expires != 0) + 1 + 1;
		}
		if (drain(s, c, queued, error_r) < 0)
			return -1;
		done += batch;
	}
	return 0;
}

static int
rs_add_batch(struct liststore *s, enum list_kind k, const struct list_entry *v, size_t n,
    const char **error_r)
{
	struct rstore *r = s->priv;
	int reused = r->cmd != NULL;
	int rc = rs_add_batch_once(s, k, v, n, error_r);

	if (rc == 0 || !reused || r->cmd != NULL)
		return rc;
	return rs_add_batch_once(s, k, v, n, error_r);
}

static int
rs_changed(struct liststore *s, enum list_kind k)
{
	(void)s; (void)k;
	return 0;	/* Redis reports changes through rs_changes() */
}

static int
rs_watch_fd(struct liststore *s)
{
	struct rstore *r = s->priv;

	return r->sub != NULL ? r->sub->fd : -1;
}

/* keyspace notifications for hash, generic and expiry events, if allowed */
static void
enable_notifications(struct liststore *s)
{
	struct rstore *r = s->priv;
	redisReply *rep = redisCommand(r->cmd, "CONFIG GET notify-keyspace-events");
	char have[64] = "", want[64];
	const char *need = "Kg$hx";

	if (rep != NULL && rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 &&
	    rep->element[1]->type == REDIS_REPLY_STRING)
		snprintf(have, sizeof(have), "%s", rep->element[1]->str);
	if (rep)
		freeReplyObject(rep);
	snprintf(want, sizeof(want), "%s", have);
	for (const char *p = need; *p; p++) {
		int covered = strchr(have, *p) != NULL ||
		    (*p != 'K' && strchr(have, 'A') != NULL);

		if (!covered && strlen(want) + 1 < sizeof(want)) {
			size_t l = strlen(want);

			want[l] = *p;
			want[l + 1] = '\0';
		}
	}
	/*
	 * An import of a million entries makes a million notifications; with
	 * Redis's default pubsub output limit (32 MB) every watcher would be
	 * cut off. Ask for more room where Redis lets us (best effort).
	 */
	rep = redisCommand(r->cmd, "CONFIG SET client-output-buffer-limit %s",
	    "pubsub 512mb 256mb 120");
	if (rep)
		freeReplyObject(rep);
	if (strcmp(want, have) == 0)
		return;
	rep = redisCommand(r->cmd, "CONFIG SET notify-keyspace-events %s", want);
	if ((rep == NULL || rep->type == REDIS_REPLY_ERROR) && !r->notify_warned) {
		log_warn("Redis at %s: cannot enable keyspace notifications (%s): entries written "
		    "with plain redis-cli are seen at the next full resync (every %ds); the "
		    "portcullis command announces its own writes", r->where,
		    rep ? rep->str : "no reply", r->resync_seconds);
		r->notify_warned = 1;
	}
	if (rep)
		freeReplyObject(rep);
}

static int
subscribe(struct liststore *s, const char **error_r)
{
	struct rstore *r = s->priv;
	char *pat, *chan;
	redisReply *rep;
	int ok = 1;

	r->sub = rs_connect(s, error_r);
	if (r->sub == NULL)
		return -1;
	enable_notifications(s);
	/* only list keys: rate counters and the like must not wake watchers */
	pat = xasprintf("__keyspace@%d__:%skill:*", r->db, r->prefix);
	char *pat2 = xasprintf("__keyspace@%d__:%saccept:*", r->db, r->prefix);
	chan = xasprintf("%schanges", r->prefix);
	{
		const char *a1[] = { "PSUBSCRIBE", pat, pat2 };
		const char *a2[] = { "SUBSCRIBE", chan };

		redisAppendCommandArgv(r->sub, 3, a1, NULL);
		redisAppendCommandArgv(r->sub, 2, a2, NULL);
		for (int i = 0; i < 3 && ok; i++) {
			if (redisGetReply(r->sub, (void **)&rep) != REDIS_OK ||
			    rep->type != REDIS_REPLY_ARRAY)
				ok = 0;
			if (rep)
				freeReplyObject(rep);
			rep = NULL;
		}
	}
	free(pat);
	free(pat2);
	free(chan);
	if (!ok) {
		rs_fail(s, error_r, "Redis at %s: cannot subscribe: %s", r->where, r->sub->errstr);
		redisFree(r->sub);
		r->sub = NULL;
		return -1;
	}
	return 0;
}

/* "PREFIXkill:ENTRY" -> change */
static void
note_key(struct rstore *r, const char *rkey, struct list_changes *out)
{
	enum list_kind k;
	const char *entry;

	if (redis_schema_split_key(r->prefix, rkey, &k, &entry) < 0 ||
	    strlen(entry) > MAX_ENTRY_LEN)
		return;
	list_changes_add(out, k, entry);
}

static void
handle_message(struct rstore *r, redisReply *m, struct list_changes *out)
{
	if (m->type != REDIS_REPLY_ARRAY || m->elements < 3)
		return;
	for (size_t i = 0; i < m->elements; i++)
		if (m->element[i]->type != REDIS_REPLY_STRING)
			return;
	if (strcmp(m->element[0]->str, "pmessage") == 0 && m->elements == 4) {
		/* __keyspace@DB__:PREFIXkill:ENTRY */
		const char *ch = strchr(m->element[2]->str, ':');

		if (ch != NULL)
			note_key(r, ch + 1, out);
	} else if (strcmp(m->element[0]->str, "message") == 0) {
		/* "kill ENTRY" or "kill *" */
		const char *msg = m->element[2]->str, *sp = strchr(msg, ' ');
		char kind[16];
		enum list_kind k;

		if (sp == NULL || (size_t)(sp - msg) >= sizeof(kind))
			return;
		memcpy(kind, msg, (size_t)(sp - msg));
		kind[sp - msg] = '\0';
		if (list_kind_parse(kind, &k) < 0)
			return;
		if (strcmp(sp + 1, "*") == 0)
			out->reload[k] = 1;
		else if (strlen(sp + 1) <= MAX_ENTRY_LEN)
			list_changes_add(out, k, sp + 1);
	}
}

static void
went_down(struct liststore *s, struct list_changes *out, const char *why)
{
	struct rstore *r = s->priv;
	char reason[128];

	snprintf(reason, sizeof(reason), "%s", why);	/* why may live in a context we free */
	why = reason;
	rs_drop(r);
	r->down = 1;
	r->backoff_ms = r->backoff_ms ? r->backoff_ms : 100;
	r->next_retry_ms = now_ms() + r->backoff_ms;
	if (!r->announced_down) {
		log_warn("Redis at %s unreachable (%s): enforcing the last lists while "
		    "reconnecting", r->where, why);
		r->announced_down = 1;
		out->lost = 1;
	}
}

static int
resync_interval(struct rstore *r)
{
	double load = r->load_seconds[LIST_KILL] + r->load_seconds[LIST_ACCEPT];
	double stretched = 20.0 * load;

	if (stretched <= r->resync_seconds)
		return r->resync_seconds;
	if (!r->stretch_noted) {
		log_info("Redis at %s: a full load takes %.1f s; resyncing every %.0f s instead "
		    "of every %d s (lists_resync)", r->where, load, stretched,
		    r->resync_seconds);
		r->stretch_noted = 1;
	}
	return stretched > 86400 ? 86400 : (int)stretched;
}

static int
rs_changes(struct liststore *s, struct list_changes *out)
{
	struct rstore *r = s->priv;
	const char *err;

	if (r->sub == NULL) {
		if (r->watching && now_ms() < r->next_retry_ms)
			return 0;
		if (rs_cmd(s, &err) == NULL || subscribe(s, &err) < 0) {
			r->watching = 1;
			went_down(s, out, err);
			r->backoff_ms = r->backoff_ms * 2 > REDIS_BACKOFF_MAX_MS ?
			    REDIS_BACKOFF_MAX_MS : r->backoff_ms * 2;
			return 0;
		}
		if (r->down)
			log_info("Redis at %s reachable again: full resync", r->where);
		out->back = r->down;
		r->watching = 1;
		r->down = 0;
		r->announced_down = 0;
		r->backoff_ms = 0;
		for (int k = 0; k < LIST_KINDS; k++)
			out->reload[k] = 1;
		r->last_resync = time(NULL);
		return 0;
	}
	/* drain what arrived, without blocking */
	for (;;) {
		struct pollfd pfd = { .fd = r->sub->fd, .events = POLLIN };
		void *rep = NULL;
		int got = 0;

		while (redisReaderGetReply(r->sub->reader, &rep) == REDIS_OK && rep != NULL) {
			handle_message(r, rep, out);
			freeReplyObject(rep);
			rep = NULL;
			got = 1;
		}
		if (poll(&pfd, 1, 0) <= 0)
			break;
		if (redisBufferRead(r->sub) != REDIS_OK) {
			went_down(s, out, r->sub->errstr[0] ? r->sub->errstr : "connection closed");
			return 0;
		}
		(void)got;
	}
	if (r->sub->reader->err) {
		went_down(s, out, "protocol error");
		return 0;
	}
	/*
	 * The full resync is a safety net, and with a million entries a load
	 * takes seconds during which pushes wait: it runs at most 5 % of the
	 * time (every lists_resync seconds, or 20 loads' time if longer).
	 */
	if (time(NULL) - r->last_resync >= resync_interval(r)) {
		for (int k = 0; k < LIST_KINDS; k++)
			out->reload[k] = 1;
		r->last_resync = time(NULL);
	}
	return 0;
}

/* PREFIXNAME: a plain string (the generation mark) */
static int
rs_meta_get_once(struct liststore *s, const char *name, char *buf, size_t cap, int *found_r,
    const char **error_r)
{
	struct rstore *r = s->priv;
	redisContext *c = rs_cmd(s, error_r);
	redisReply *rep;
	char *key;

	if (c == NULL)
		return -1;
	key = xasprintf("%s%s", r->prefix, name);
	{
		const char *argv[] = { "GET", key };

		rep = cmdv(c, 2, argv);
	}
	free(key);
	if (rep == NULL || (rep->type != REDIS_REPLY_STRING && rep->type != REDIS_REPLY_NIL)) {
		rs_fail(s, error_r, "Redis at %s: GET %s%s: %s", r->where, r->prefix, name,
		    rep == NULL ? c->errstr : rep->type == REDIS_REPLY_ERROR ? rep->str :
		    "not a string");
		if (rep)
			freeReplyObject(rep);
		if (c->err)
			rs_drop(r);
		return -1;
	}
	*found_r = rep->type == REDIS_REPLY_STRING;
	snprintf(buf, cap, "%s", *found_r ? rep->str : "");
	freeReplyObject(rep);
	return 0;
}

static int
rs_meta_get(struct liststore *s, const char *name, char *buf, size_t cap, int *found_r,
    const char **error_r)
{
	struct rstore *r = s->priv;
	int reused = r->cmd != NULL;
	int rc = rs_meta_get_once(s, name, buf, cap, found_r, error_r);

	if (rc == 0 || !reused || r->cmd != NULL)
		return rc;
	return rs_meta_get_once(s, name, buf, cap, found_r, error_r);
}

static int
rs_meta_set(struct liststore *s, const char *name, const char *value, int only_if_absent,
    int *set_r, const char **error_r)
{
	struct rstore *r = s->priv;
	redisContext *c = rs_cmd(s, error_r);
	redisReply *rep;
	char *key;

	if (c == NULL)
		return -1;
	key = xasprintf("%s%s", r->prefix, name);
	{
		const char *argv[] = { "SET", key, value, "NX" };

		rep = cmdv(c, only_if_absent ? 4 : 3, argv);
	}
	free(key);
	if (rep == NULL || rep->type == REDIS_REPLY_ERROR) {
		rs_fail(s, error_r, "Redis at %s: SET %s%s: %s", r->where, r->prefix, name,
		    rep == NULL ? c->errstr : rep->str);
		if (rep)
			freeReplyObject(rep);
		if (c->err)
			rs_drop(r);
		return -1;
	}
	*set_r = rep->type != REDIS_REPLY_NIL;
	freeReplyObject(rep);
	return 0;
}

/* PREFIXrate:WINDOW:INDEX:WHO, INCRBY then EXPIREAT (Redis clock), pipelined */
static int
rs_rate_sync(struct liststore *s, struct rate_delta *d, size_t n, const char **error_r)
{
	struct rstore *r = s->priv;
	redisContext *c = rs_cmd(s, error_r);

	if (c == NULL)
		return -1;
	for (size_t i = 0; i < n; i++) {
		char *key = xasprintf("%srate:%s", r->prefix, d[i].name);
		char delta[24], at[24];
		const char *incr[] = { "INCRBY", key, delta };
		const char *exp[] = { "EXPIREAT", key, at };

		snprintf(delta, sizeof(delta), "%lld", d[i].delta);
		snprintf(at, sizeof(at), "%lld", d[i].expire_at + r->offset);
		redisAppendCommandArgv(c, 3, incr, NULL);
		redisAppendCommandArgv(c, 3, exp, NULL);
		free(key);
	}
	for (size_t i = 0; i < n; i++) {
		redisReply *a = NULL, *b = NULL;

		if (redisGetReply(c, (void **)&a) != REDIS_OK ||
		    redisGetReply(c, (void **)&b) != REDIS_OK) {
			if (a)
				freeReplyObject(a);
			rs_drop(r);
			return rs_fail(s, error_r, "Redis at %s: %s", r->where, "connection lost");
		}
		d[i].total = a->type == REDIS_REPLY_INTEGER ? a->integer : -1;
		freeReplyObject(a);
		freeReplyObject(b);
	}
	return 0;
}

/*
 * PREFIXstats:NODE, one hash per node: field = series, value = count.
 * MULTI / DEL / HSET all / EXPIRE / EXEC, pipelined: one round trip, and a
 * reader never sees half a set. The TTL ages out a node that stopped.
 */
static int
rs_stats_publish(struct liststore *s, const char *node, const struct stats_series *v,
    size_t n, int ttl, const char **error_r)
{
	struct rstore *r = s->priv;
	redisContext *c = rs_cmd(s, error_r);
	char *key, ttls[24];
	const char **argv;
	char (*vals)[24];
	int failed = 0;

	if (c == NULL)
		return -1;
	key = xasprintf("%sstats:%s", r->prefix, node);
	snprintf(ttls, sizeof(ttls), "%d", ttl);
	argv = xcalloc(2 + 2 * n, sizeof(*argv));
	vals = xcalloc(n + 1, sizeof(*vals));
	argv[0] = "HSET";
	argv[1] = key;
	for (size_t i = 0; i < n; i++) {
		snprintf(vals[i], sizeof(vals[i]), "%llu", v[i].value);
		argv[2 + 2 * i] = v[i].name;
		argv[3 + 2 * i] = vals[i];
	}
	{
		const char *multi[] = { "MULTI" }, *del[] = { "DEL", key };
		const char *exp[] = { "EXPIRE", key, ttls }, *exec[] = { "EXEC" };

		redisAppendCommandArgv(c, 1, multi, NULL);
		redisAppendCommandArgv(c, 2, del, NULL);
		if (n > 0)
			redisAppendCommandArgv(c, (int)(2 + 2 * n), argv, NULL);
		redisAppendCommandArgv(c, 3, exp, NULL);
		redisAppendCommandArgv(c, 1, exec, NULL);
	}
	free(argv);
	free(vals);
	for (int i = 0; i < (n > 0 ? 5 : 4); i++) {
		redisReply *rep = NULL;

		if (redisGetReply(c, (void **)&rep) != REDIS_OK) {
			free(key);
			rs_drop(r);
			return rs_fail(s, error_r, "Redis at %s: connection lost", r->where);
		}
		if (rep->type == REDIS_REPLY_ERROR && !failed) {
			rs_fail(s, error_r, "Redis at %s: storing %sstats:%s: %.200s", r->where,
			    r->prefix, node, rep->str);
			failed = 1;
		}
		freeReplyObject(rep);
	}
	free(key);
	return failed ? -1 : 0;
}

static int
rs_stats_fetch_once(struct liststore *s, struct stats_node **nodes_r, size_t *n_r,
    const char **error_r)
{
	struct rstore *r = s->priv;
	redisContext *c = rs_cmd(s, error_r);
	size_t pl = strlen(r->prefix), n = 0, cap = 0;
	struct stats_node *nodes = NULL;
	char *pattern, *q, cursor[32] = "0";
	int rc = 0;

	if (c == NULL)
		return -1;
	q = pattern = xmalloc(2 * pl + 16);
	for (size_t i = 0; i < pl; i++) {
		if (strchr("*?[]\\", r->prefix[i]))
			*q++ = '\\';
		*q++ = r->prefix[i];
	}
	strcpy(q, "stats:*");
	do {
		const char *argv[] = { "SCAN", cursor, "MATCH", pattern, "COUNT", "1000" };
		redisReply *rep = cmdv(c, 6, argv), *keys;
		size_t nk;

		if (rep == NULL || rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 ||
		    rep->element[0]->type != REDIS_REPLY_STRING ||
		    rep->element[1]->type != REDIS_REPLY_ARRAY) {
			rc = rs_fail(s, error_r, "Redis at %s: SCAN: %s", r->where,
			    rep == NULL ? c->errstr : rep->type == REDIS_REPLY_ERROR ? rep->str :
			    "unexpected reply");
			if (rep)
				freeReplyObject(rep);
			break;
		}
		snprintf(cursor, sizeof(cursor), "%s", rep->element[0]->str);
		keys = rep->element[1];
		nk = keys->elements;
		for (size_t i = 0; i < nk; i++) {
			const char *hg[] = { "HGETALL", keys->element[i]->type == REDIS_REPLY_STRING ?
			    keys->element[i]->str : "" };

			redisAppendCommandArgv(c, 2, hg, NULL);
		}
		for (size_t i = 0; i < nk; i++) {
			redisReply *h = NULL;
			const char *name = keys->element[i]->type == REDIS_REPLY_STRING ?
			    keys->element[i]->str + pl + 6 : NULL;
			struct stats_node *nd;

			if (redisGetReply(c, (void **)&h) != REDIS_OK) {
				rc = rs_fail(s, error_r, "Redis at %s: connection lost", r->where);
				rs_drop(r);
				break;
			}
			/* another type under the name (an admin's key) or gone since SCAN */
			if (name == NULL || h->type != REDIS_REPLY_ARRAY || h->elements == 0 ||
			    n >= 100000) {
				freeReplyObject(h);
				continue;
			}
			if (n == cap) {
				cap = cap ? 2 * cap : 8;
				nodes = xrealloc(nodes, cap * sizeof(*nodes));
			}
			nd = &nodes[n++];
			nd->node = xstrdup(name);
			nd->v = xcalloc(h->elements / 2 + 1, sizeof(*nd->v));
			nd->n = 0;
			for (size_t j = 0; j + 1 < h->elements; j += 2) {
				redisReply *f = h->element[j], *val = h->element[j + 1];
				char *end;
				unsigned long long x;

				if (f->type != REDIS_REPLY_STRING || val->type != REDIS_REPLY_STRING ||
				    strlen(f->str) != f->len || f->len == 0 || f->len >= 200)
					continue;
				x = strtoull(val->str, &end, 10);
				if (*end != '\0' || val->str[0] < '0' || val->str[0] > '9')
					continue;	/* not a count: skipped, never summed */
				nd->v[nd->n].name = xstrdup(f->str);
				nd->v[nd->n++].value = x;
			}
			freeReplyObject(h);
		}
		freeReplyObject(rep);
	} while (rc == 0 && strcmp(cursor, "0") != 0);
	free(pattern);
	if (rc < 0) {
		stats_nodes_free(nodes, n);
		return -1;
	}
	*nodes_r = nodes;
	*n_r = n;
	return 0;
}

static int
rs_stats_fetch(struct liststore *s, struct stats_node **nodes_r, size_t *n_r,
    const char **error_r)
{
	struct rstore *r = s->priv;
	int reused = r->cmd != NULL;
	int rc = rs_stats_fetch_once(s, nodes_r, n_r, error_r);

	if (rc == 0 || !reused || r->cmd != NULL)
		return rc;
	return rs_stats_fetch_once(s, nodes_r, n_r, error_r);
}

const struct liststore_ops liststore_redis_ops = {
	.scheme = "redis",
	.open = rs_open,
	.close = rs_close,
	.load = rs_load,
	.add = rs_add,
	.del = rs_del,
	.changed = rs_changed,
	.watch_fd = rs_watch_fd,
	.changes = rs_changes,
	.get = rs_get,
	.get_many = rs_get_many,
	.add_many = rs_add_many,
	.add_batch = rs_add_batch,
	.meta_get = rs_meta_get,
	.meta_set = rs_meta_set,
	.rate_sync = rs_rate_sync,
	.stats_publish = rs_stats_publish,
	.stats_fetch = rs_stats_fetch,
};
