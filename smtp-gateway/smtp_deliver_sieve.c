/*
 * smtp_deliver_sieve.c - the gateway's delivery with the user Sieve scripts
 * (contract in smtp_deliver_sieve.h).
 *
 *   smtp_deliver_sieve_new/free()      settings + compiled-script cache
 *   smtp_deliver_sieve_job_new/free()  one message's facts, a held snapshot
 *   smtp_deliver_sieve_run()           plan, send, store; on a job thread
 *
 * Never runs on the event loop except job_new/job_free (no I/O there).
 * Thread-safe: the cache is behind a mutex, compiled scripts are shared by
 * reference count and never changed once compiled. Never logs raw message
 * bytes: what it logs comes from the plan (made printable there), user
 * names (canonical) and relayhost replies (made printable by relay_send).
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/xmalloc.h"
#include "rules/sieve_ast.h"
#include "smtp-gateway/relay_send.h"
#include "smtp-gateway/smtp_deliver_sieve.h"
#include "storage-adapter/sieve_deliver.h"
#include "storage-adapter/sievestore.h"

/* a compiled user script, or why it did not compile; shared */
struct uscript {
	atomic_int refs;
	struct sieve_script *s;	/* NULL: broken */
	char *error;
};

struct cached {
	char *path;
	char *user;		/* the name last looked up for it, as given (NULL: none) */
	dev_t dev;
	ino_t ino;
	off_t size;
	long long mtime_ns;
	struct uscript *us;	/* NULL: absent (ENOENT when checked) */
	unsigned long long used;
	long long checked_ns;	/* the last stat (CLOCK_MONOTONIC) */
};

struct smtp_deliver_sieve {
	char *sieve_dir, *state_dir, *relayhost, *hostname;
	unsigned timeout;
	struct sieve_limits lim;
	struct sieve_rules_ref *rules;
	pthread_mutex_t mu;
	struct cached *c;
	size_t n;
	unsigned long long tick;
};

struct smtp_deliver_sieve_job {
	struct smtp_deliver_sieve *sv;
	const struct sieve_rules *rules;	/* held; NULL none */
	const struct sieve_deliver_msg *pre;	/* the door's parse; NULL */
	char *sender, *ip, *host, *helo, *conn;
};

static char *
dupnull(const char *s)
{
	return s != NULL && s[0] != '\0' ? xstrdup(s) : NULL;
}

struct smtp_deliver_sieve *
smtp_deliver_sieve_new(const struct smtp_deliver_sieve_conf *c)
{
	struct smtp_deliver_sieve *sv;

	if ((c->sieve_dir == NULL || c->sieve_dir[0] == '\0') && c->rules == NULL)
		return NULL;
	sv = xcalloc(1, sizeof(*sv));
	sv->sieve_dir = dupnull(c->sieve_dir);
	sv->state_dir = dupnull(c->state_dir);
	sv->relayhost = dupnull(c->relayhost);
	sv->hostname = xstrdup(c->hostname != NULL ? c->hostname : "localhost");
	sv->timeout = c->timeout ? c->timeout : 30;
	if (c->limits != NULL)
		sv->lim = *c->limits;
	else
		sieve_limits_default(&sv->lim);
	sv->rules = c->rules;
	pthread_mutex_init(&sv->mu, NULL);
	return sv;
}

static void
us_unref(struct uscript **up)
{
	struct uscript *u = *up;

	*up = NULL;
	if (u == NULL || atomic_fetch_sub(&u->refs, 1) != 1)
		return;
	sieve_script_free(&u->s);
	free(u->error);
	free(u);
}

void
smtp_deliver_sieve_free(struct smtp_deliver_sieve **svp)
{
	struct smtp_deliver_sieve *sv = *svp;

	if (sv == NULL)
		return;
	*svp = NULL;
	for (size_t i = 0; i < sv->n; i++) {
		free(sv->c[i].path);
		free(sv->c[i].user);
		us_unref(&sv->c[i].us);
	}
	free(sv->c);
	pthread_mutex_destroy(&sv->mu);
	free(sv->sieve_dir);
	free(sv->state_dir);
	free(sv->relayhost);
	free(sv->hostname);
	free(sv);
}

struct smtp_deliver_sieve_job *
smtp_deliver_sieve_job_new(struct smtp_deliver_sieve *sv, const char *sender, const char *client,
    const char *helo, const char *conn)
{
	struct smtp_deliver_sieve_job *j;
	const char *lb, *rb;

	if (sv == NULL)
		return NULL;
	j = xcalloc(1, sizeof(*j));
	j->sv = sv;
	if (sv->rules != NULL)
		j->rules = sieve_rules_ref_get(sv->rules);
	j->sender = xstrdup(sender != NULL ? sender : "");
	/* the client as the Received: line has it, "name [IP]" */
	if (client != NULL && (lb = strrchr(client, '[')) != NULL &&
	    (rb = strchr(lb, ']')) != NULL) {
		j->ip = xstrndup(lb + 1, (size_t)(rb - lb - 1));
		if (lb > client && !(lb - client == 7 && strncmp(client, "unknown", 7) == 0))
			j->host = xstrndup(client, (size_t)(lb - client));
	}
	j->helo = dupnull(helo);
	j->conn = xstrdup(conn != NULL ? conn : "-");
	return j;
}

void
smtp_deliver_sieve_job_set_msg(struct smtp_deliver_sieve_job *j, const struct sieve_deliver_msg *pre)
{
	if (j != NULL)
		j->pre = pre;
}

void
smtp_deliver_sieve_job_free(struct smtp_deliver_sieve_job **jp)
{
	struct smtp_deliver_sieve_job *j = *jp;

	if (j == NULL)
		return;
	*jp = NULL;
	if (j->rules != NULL)
		sieve_rules_unref(&j->rules);
	free(j->sender);
	free(j->ip);
	free(j->host);
	free(j->helo);
	free(j->conn);
	free(j);
}

/* ---- compiled user scripts ---- */

static int
stat_same(const struct cached *c, const struct stat *st)
{
	return c->dev == st->st_dev && c->ino == st->st_ino && c->size == st->st_size &&
	    c->mtime_ns == (long long)st->st_mtim.tv_sec * 1000000000LL + st->st_mtim.tv_nsec;
}

static long long
mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* the cache entry of path; sv->n when none (under sv->mu) */
static size_t
cache_find(const struct smtp_deliver_sieve *sv, const char *path)
{
	size_t i;

	for (i = 0; i < sv->n; i++)
		if (strcmp(sv->c[i].path, path) == 0)
			break;
	return i;
}

/* the slot for path: its entry, a new one, or the least recently used
 * one (under sv->mu) */
static size_t
cache_slot(struct smtp_deliver_sieve *sv, const char *path)
{
	size_t i = cache_find(sv, path);

	if (i == sv->n && sv->n >= SMTP_SIEVE_CACHE_MAX) {
		size_t old = 0;

		for (size_t k = 1; k < sv->n; k++)
			if (sv->c[k].used < sv->c[old].used)
				old = k;
		i = old;
	}
	if (i == sv->n) {
		sv->c = xreallocarray(sv->c, sv->n + 1, sizeof(*sv->c));
		memset(&sv->c[sv->n++], 0, sizeof(*sv->c));
	}
	return i;
}

/*
 * USER's script: 0 with *u_r (NULL: the user has none), never -1: a script
 * that cannot be read or compiled comes back as a uscript with its error.
 * The file is looked at (stat) at most once per SMTP_SIEVE_RECHECK_NS per
 * user, present or absent: a changed script is in force within a second.
 */
static void
user_script(struct smtp_deliver_sieve *sv, const char *user, struct uscript **u_r)
{
	struct stat st;
	char *path;
	const char *e;
	struct uscript *u;
	struct sieve_script *s = NULL;
	size_t i;
	long long now;

	*u_r = NULL;
	if (sv->sieve_dir == NULL)
		return;
	now = mono_ns();
	/* looked at less than a second ago under this very name: its path
	 * (a check of the name, a lower-cased copy, a format) is not made again */
	pthread_mutex_lock(&sv->mu);
	for (i = 0; i < sv->n; i++)
		if (sv->c[i].user != NULL && strcmp(sv->c[i].user, user) == 0)
			break;
	if (i < sv->n && now - sv->c[i].checked_ns < SMTP_SIEVE_RECHECK_NS) {
		u = sv->c[i].us;
		if (u != NULL)
			atomic_fetch_add(&u->refs, 1);
		sv->c[i].used = ++sv->tick;
		pthread_mutex_unlock(&sv->mu);
		*u_r = u;
		return;
	}
	pthread_mutex_unlock(&sv->mu);
	if (sievestore_path(sv->sieve_dir, SIEVE_LEVEL_USER, user, &path, &e) < 0)
		return;	/* a name no script can have */
	pthread_mutex_lock(&sv->mu);
	i = cache_find(sv, path);
	if (i < sv->n && now - sv->c[i].checked_ns < SMTP_SIEVE_RECHECK_NS) {
		u = sv->c[i].us;	/* looked at less than a second ago */
		if (u != NULL)
			atomic_fetch_add(&u->refs, 1);
		sv->c[i].used = ++sv->tick;
		pthread_mutex_unlock(&sv->mu);
		free(path);
		*u_r = u;
		return;
	}
	pthread_mutex_unlock(&sv->mu);
	if (stat(path, &st) < 0) {
		if (errno != ENOENT) {
			u = xcalloc(1, sizeof(*u));
			atomic_init(&u->refs, 1);
			u->error = xasprintf("%s: %s", path, strerror(errno));
			*u_r = u;
			free(path);
			return;
		}
		pthread_mutex_lock(&sv->mu);	/* remembered as absent */
		i = cache_slot(sv, path);
		free(sv->c[i].path);
		free(sv->c[i].user);
		us_unref(&sv->c[i].us);
		memset(&sv->c[i], 0, sizeof(sv->c[i]));
		sv->c[i].path = path;
		sv->c[i].user = xstrdup(user);
		sv->c[i].checked_ns = now;
		sv->c[i].used = ++sv->tick;
		pthread_mutex_unlock(&sv->mu);
		return;
	}
	pthread_mutex_lock(&sv->mu);
	i = cache_find(sv, path);
	if (i < sv->n && sv->c[i].us != NULL && stat_same(&sv->c[i], &st)) {
		u = sv->c[i].us;
		atomic_fetch_add(&u->refs, 1);
		sv->c[i].used = ++sv->tick;
		sv->c[i].checked_ns = now;
		pthread_mutex_unlock(&sv->mu);
		free(path);
		*u_r = u;
		return;
	}
	pthread_mutex_unlock(&sv->mu);	/* new or changed: compiled below */

	u = xcalloc(1, sizeof(*u));
	atomic_init(&u->refs, 1);
	if (sieve_deliver_load_user(sv->sieve_dir, user, &sv->lim, &s, &e) < 0)
		u->error = xstrdup(e);
	else if (s == NULL)
		u->error = xasprintf("%s: vanished while read", path);
	u->s = s;
	*u_r = u;
	/* included scripts are not tracked: compiled each time */
	if (s != NULL && sv_script_has_cap(s, "include")) {
		free(path);
		return;
	}
	pthread_mutex_lock(&sv->mu);
	i = cache_slot(sv, path);
	free(sv->c[i].path);
	free(sv->c[i].user);
	us_unref(&sv->c[i].us);
	sv->c[i].path = path;
	sv->c[i].user = xstrdup(user);
	sv->c[i].dev = st.st_dev;
	sv->c[i].ino = st.st_ino;
	sv->c[i].size = st.st_size;
	sv->c[i].mtime_ns = (long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec;
	atomic_fetch_add(&u->refs, 1);
	sv->c[i].us = u;
	sv->c[i].used = ++sv->tick;
	sv->c[i].checked_ns = now;
	pthread_mutex_unlock(&sv->mu);
}

/* ---- the server and domain levels at delivery ---- */

/*
 * 1 when a command of the tree acts on the store: imap4flags, vacation,
 * fileinto other than the door's "Quarantine", keep with tags, include
 * and extension commands (unknown: assumed to). What else a higher level
 * does -- reject, discard, redirect, quarantine, header edits -- the door
 * did at end of data, so a script without these need not run again here.
 */
static int
acts_on_store(struct sieve_node *const *cmds, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		const struct sieve_node *c = cmds[i];

		if (c->ext != NULL || c->def == NULL)
			return 1;
		switch (c->def->id) {
		case C_ADDFLAG: case C_SETFLAG: case C_REMOVEFLAG: case C_VACATION:
		case C_INCLUDE: case C_FOREVERYPART:
			return 1;
		case C_FILEINTO:
			if (c->npos == 0 || c->pos[0]->n != 1 || strstr(c->pos[0]->v[0].s, "${") ||
			    strcasecmp(c->pos[0]->v[0].s, "Quarantine") != 0)
				return 1;
			break;
		case C_KEEP:
			for (size_t t = 0; t < sizeof(c->tagset) / sizeof(c->tagset[0]); t++)
				if (c->tagset[t])
					return 1;
			break;
		default:
			break;
		}
		if (acts_on_store(c->cmds, c->ncmds))
			return 1;
	}
	return 0;
}

/* found once per compiled script (it never changes): not a walk of the
 * whole tree for every message */
static int
level_acts(const struct sieve_rules_script *rs)
{
	atomic_int *memo;
	int v;

	if (rs == NULL || rs->s == NULL)
		return 0;
	memo = (atomic_int *)&rs->acts_store;	/* a cache beside the immutable script */
	v = atomic_load_explicit(memo, memory_order_relaxed);
	if (v == 0) {
		v = acts_on_store(rs->s->cmds, rs->s->ncmds) ? 2 : 1;
		atomic_store_explicit(memo, v, memory_order_relaxed);
	}
	return v == 2;
}

/* ---- one delivery ---- */

/* where the stored message starts without our Return-Path: line */
static long long
after_return_path(int fd)
{
	char buf[1100];
	ssize_t r = pread(fd, buf, sizeof(buf) - 1, 0);
	char *nl;

	if (r <= 12 || strncasecmp(buf, "Return-Path:", 12) != 0)
		return 0;
	buf[r] = '\0';
	if ((nl = memchr(buf, '\n', (size_t)r)) == NULL)
		return 0;
	return (long long)(nl - buf) + 1;
}

/*
 * Send every outgoing message of p; 0 when the relayhost took them all,
 * else -1 with *bad_r and why (the reply).
 */
static int
send_all(struct smtp_deliver_sieve_job *j, struct sieve_deliver_plan *p, int fd,
    const struct sieve_deliver_out **bad_r, char *why, size_t whysz)
{
	struct smtp_deliver_sieve *sv = j->sv;

	for (size_t i = 0; i < p->nout; i++) {
		const struct sieve_deliver_out *o = &p->out[i];
		int rc;

		if (sv->relayhost == NULL) {
			snprintf(why, whysz, "no relayhost is configured");
			*bad_r = o;
			return -1;
		}
		if (o->kind == SIEVE_OUT_REDIRECT) {
			char *top = xasprintf("X-Sieve-Redirected-From: <%s>\r\n", p->user);

			rc = relay_send_at(sv->relayhost, sv->hostname, sv->timeout, o->mail_from,
			    o->rcpt_to, top, fd, after_return_path(fd), why, whysz);
			free(top);
		} else {
			rc = relay_send(sv->relayhost, sv->hostname, sv->timeout, o->mail_from,
			    o->rcpt_to, o->text, -1, why, whysz);
		}
		if (rc < 0) {
			*bad_r = o;
			return -1;
		}
	}
	return 0;
}

struct rcpt_state {
	char *user;
	char *domain;
	struct uscript *us;
	struct sieve_deliver_plan *plan;
	int linked;		/* goes with the hard-linked copy */
	int higher;		/* the server or domain level acts on the store */
};

int
smtp_deliver_sieve_run(struct smtp_deliver_sieve_job *j, struct maildir_tmp **spool,
    const char *root, const struct maildir_rcpt *r, size_t n, const char *head,
    const char *data, size_t len, char *id_r, int *ok_r, int *spool_err_r, char *err,
    size_t errsz)
{
	struct smtp_deliver_sieve *sv = j->sv;
	struct rcpt_state *rs = xcalloc(n + 1, sizeof(*rs));
	struct maildir_rcpt *lr = xcalloc(n + 1, sizeof(*lr));
	int any = 0, fd = -1, handled = 1;
	int server_acts = j->rules != NULL && level_acts(j->rules->server);
	size_t nl = 0;
	const char *e;

	*ok_r = 0;
	for (size_t i = 0; i < n; i++) {
		char *d;

		rs[i].domain = xstrdup(r[i].domain);
		for (d = rs[i].domain; *d; d++)
			if (*d >= 'A' && *d <= 'Z')
				*d = (char)(*d + 32);
		rs[i].user = xasprintf("%s@%s", r[i].local, rs[i].domain);
		user_script(sv, rs[i].user, &rs[i].us);
		rs[i].higher = j->rules != NULL && (server_acts ||
		    level_acts(sieve_rules_domain(j->rules, rs[i].domain)));
		any |= rs[i].us != NULL || rs[i].higher;
	}
	if (!any) {
		handled = 0;
		goto out;
	}

	/* the whole message in tmp/, read back from there */
	if (*spool == NULL) {
		if (maildir_tmp_open(root, &r[0], spool, &e) < 0 ||
		    maildir_tmp_write(*spool, head, strlen(head), &e) < 0) {
			*spool_err_r = errno;
			snprintf(err, errsz, "%s", e);
			goto out;
		}
	}
	if (maildir_tmp_write(*spool, data, len, &e) < 0) {
		*spool_err_r = errno;
		snprintf(err, errsz, "%s", e);
		goto out;
	}
	/* read back only when the door did not hand its parse over (or a
	 * script tests the body it did not read), or for a plan that is not
	 * a plain keep (below) */

	/* plan each recipient: nothing is written or sent yet */
	for (size_t i = 0; i < n; i++) {
		struct sieve_deliver_in in;

		if (rs[i].us != NULL && rs[i].us->s == NULL) {
			log_warn("conn=%s sieve: %s: the user script is broken: %.300s; kept in INBOX",
			    j->conn, rs[i].user, rs[i].us->error);
			us_unref(&rs[i].us);	/* the levels above still run */
		}
		if (rs[i].us == NULL && !rs[i].higher) {
			rs[i].linked = 1;
			continue;
		}
		memset(&in, 0, sizeof(in));
		in.store_root = root;
		in.user = rs[i].user;
		in.env_from = j->sender;
		in.env_to = rs[i].user;
		in.fd = fd;
		in.pre = j->pre;
		in.script = rs[i].us != NULL ? rs[i].us->s : NULL;
		in.rules = rs[i].higher ? j->rules : NULL;
		in.domain = rs[i].domain;
		in.remote_ip = j->ip;
		in.remote_host = j->host;
		in.helo = j->helo;
		in.limits = &sv->lim;
		in.state_dir = sv->state_dir;
		in.hostname = sv->hostname;
		if (fd < 0 && sieve_deliver_reads_fd(&in)) {
			if (maildir_tmp_open_read(*spool, &fd, &e) < 0) {
				snprintf(err, errsz, "%s", e);
				goto out;
			}
			in.fd = fd;
		}
		if (sieve_deliver_plan(&in, &rs[i].plan, &e) < 0) {
			snprintf(err, errsz, "sieve: %s: %s", rs[i].user, e);
			goto out;
		}
		log_info("conn=%s sieve: %s: %s", j->conn, rs[i].user, rs[i].plan->log);
		rs[i].linked = sieve_deliver_plan_is_plain(rs[i].plan);
	}

	/* the others read the spool (copies, redirects): open it before the
	 * commit takes it */
	for (size_t i = 0; i < n; i++) {
		if (rs[i].linked || rs[i].plan == NULL)
			continue;
		if (fd < 0 && maildir_tmp_open_read(*spool, &fd, &e) < 0) {
			snprintf(err, errsz, "%s", e);
			goto out;
		}
		rs[i].plan->fd = fd;
	}

	/* the plain ones: one file, hard-linked, all or nothing */
	for (size_t i = 0; i < n; i++)
		if (rs[i].linked)
			lr[nl++] = r[i];
	if (nl > 0) {
		if (maildir_tmp_commit(spool, root, lr, nl, id_r, &e) < 0) {
			snprintf(err, errsz, "%s", e);
			goto out;
		}
	} else {
		snprintf(id_r, 64, "sieve.%s", j->conn);
	}

	/* the others: the relayhost first, then the store */
	for (size_t i = 0; i < n; i++) {
		struct sieve_deliver_plan *p = rs[i].plan;
		const struct sieve_deliver_out *bad = NULL;
		char why[RELAY_REPLY_MAX + 64];

		if (rs[i].linked || p == NULL)
			continue;
		if (send_all(j, p, fd, &bad, why, sizeof(why)) < 0) {
			if (sieve_deliver_fallback(p, bad, why, &e) < 0) {
				snprintf(err, errsz, "sieve: %s: %s", p->user, e);
				goto out;
			}
			continue;
		}
		if (sieve_deliver_store(p, &e) < 0) {
			snprintf(err, errsz, "sieve: %s: %s", p->user, e);
			goto out;
		}
		sieve_deliver_sent(p);
	}
	*ok_r = 1;
out:
	if (handled)
		maildir_tmp_abort(spool);	/* NULL after a commit */
	if (fd >= 0)
		close(fd);
	for (size_t i = 0; i < n; i++) {
		free(rs[i].user);
		free(rs[i].domain);
		us_unref(&rs[i].us);
		sieve_deliver_plan_free(&rs[i].plan);
	}
	free(rs);
	free(lr);
	return handled;
}
