/*
 * pop3_server - the POP3 door's event loop: service/conn connections fed to
 * the I/O-free core pop3_proto, whose actions run here.
 *
 *   pop3_server_run()   the loop on the listeners the master bound, until
 *                       SIGTERM/SIGINT, or until drained after SIGUSR2
 *                       (the signals and the tick: service/door_loop)
 *
 * Actions: AUTH through service/authcheck (the password check pool and the
 * failed-login penalty with its ban hook, shared with every door; APOP is
 * checked here, a fast MD5, and takes the same penalty); OPEN, RETR's open
 * and UPDATE on a job thread (service/jobs: mailstore calls do file I/O);
 * a message is then streamed on the loop in page-cache reads of the open
 * descriptor, never more than POP3_OUT_HIGH bytes queued, so a 20 MB
 * message costs the worker no more memory than a small one.
 *
 * One POP3 session per mailbox at a time: OPEN takes an flock(2) on
 * Maildir/dovecot-pop3-session.lock (the name Dovecot's pop3_lock_session
 * uses) for the session's life; a second session gets -ERR [IN-USE].
 * mail_max_userip_connections counts logged-in sessions per user and client
 * address, as Dovecot's anvil does. A kill-listed client is refused at
 * connect with -ERR, through the same engine and lists as SMTP.
 *
 * A proxied user (issue 12: proxy=y on the user's line, or a user of
 * mail_proxy_domains with mail_proxy_auth = backend) is handed over at the
 * login's outcome (proxy_route, proxy_backend_auth; SCRAM at start_open,
 * proxy_route_late) to pop-imap-proxy/proxy, which logs in to the backend
 * and splices the two connections; the core then rests.
 *
 * Never blocks the loop; never logs peer bytes. Owner: the worker process.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "common/apop.h"
#include "common/log.h"
#include "common/stats.h"
#include "common/xmalloc.h"
#include "pop-imap-proxy/pop3_server.h"
#include "pop-imap-proxy/proxy_door.h"
#include "rules/engine.h"
#include "rules/snapshot.h"
#include "service/authcheck.h"
#include "service/conn.h"
#include "service/door_loop.h"
#include "service/jobs.h"
#include "service/userip.h"
#include "service/users.h"
#include "storage-adapter/mailstore.h"
#include "storage-adapter/userdb.h"
#include "storage-adapter/userdb_sasl.h"

#define POP3_STORE_THREADS 4	/* mailbox opens, message opens, expunges */
#define POP3_AUTH_THREADS 2	/* password hashing, apart from store I/O */
#define POP3_AUTH_QUEUE 32	/* checks queued or running; past it -ERR [SYS/TEMP] */
#define POP3_OUT_HIGH (256 * 1024)	/* output queued before we wait for the client */
#define POP3_OUT_LOW (64 * 1024)	/* ... and go on below this */
#define POP3_STREAM_CHUNK 16384
#define POP3_LOCK_NAME "dovecot-pop3-session.lock"
#define POP3_LOGIN_TIMEOUT 180	/* seconds before login (Dovecot's login processes: 3 min) */

struct server {
	const struct pop3_server_conf *c;
	struct event_base *base;
	struct conn_server *cs;
	struct jobs *jobs;		/* store I/O */
	struct authcheck *auth;		/* password checks and failed-login penalties */
	struct users users;
	struct sasl_callbacks sasl_cb;
	struct pop3_params params;
	struct userip *userip;		/* logged-in sessions per user and address */
	int stopping;
};

struct session {
	int counted;		/* in srv->userip */
	struct server *srv;
	struct conn *c;
	struct pop3_proto *pp;
	struct engine_session *es;	/* the engine's view of the client, or NULL */
	struct mailstore *ms;
	struct mailstore_box *box;
	int lockfd;
	int busy;		/* a job or a login check is under way */
	int room;		/* waiting for the output to drain */
	int peer_set;
	int streaming;		/* RETR/TOP bytes going out */
	int msgfd;
	uint64_t msgsize;	/* the streamed message's octets, for the counters */
	unsigned nretr, ndele;	/* for the logout line, as Dovecot's */
	uint64_t retr_bytes;
	struct pop3_stream st;
	char user[POP3_USER_MAX];	/* canonical, once logged in (or APOP's) */
	/* a proxied user (proxy.c): the core rests, bytes are spliced */
	struct proxy *px;
	int spliced;
	int late;		/* handed over after the core logged in (SCRAM) */
};

enum job_kind { JOB_OPEN, JOB_RETR, JOB_UPDATE };

struct job {
	enum job_kind kind;
	struct conn *c;
	struct session *s;	/* valid while the hold lasts */
	const char *root;
	char user[POP3_USER_MAX];
	char conn_id[32];
	/* results */
	int ok, in_use, gone;
	struct mailstore *ms;
	struct mailstore_box *box;
	int lockfd;
	int fd;
	uint32_t uid;
	char err[300];
};

static void advance(struct session *s);

/* ---- waiting: a job, a check, the client's reading ---- */

static void
session_wait(struct session *s)
{
	conn_hold(s->c);
	conn_pause(s->c);
	s->busy = 1;
}

/* the wait is over (the caller released): answer, read on */
static void
session_go(struct session *s)
{
	struct conn *c = s->c;

	s->busy = 0;
	conn_hold(c);	/* advance() may close it: still ours afterwards */
	advance(s);
	if (!s->busy && !s->room && !conn_is_closing(c))
		conn_resume(c);
	if (conn_release(c))
		return;	/* closed meanwhile */
}

/* ---- output ---- */

/* pop3_proto's replies into the connection; 0 when the client must read first */
static int
flush(struct session *s)
{
	for (;;) {
		size_t n;
		const char *out = pop3_proto_output(s->pp, &n);

		if (n == 0)
			return 1;
		if (conn_output_pending(s->c) >= POP3_OUT_HIGH)
			return 0;
		conn_write(s->c, out, n);
		pop3_proto_output_done(s->pp, n);	/* LIST/UIDL: the next piece */
	}
}

/* the message on its way: page-cache reads, bounded by the output queue */
static int
stream_more(struct session *s)
{
	char buf[POP3_STREAM_CHUNK];

	while (conn_output_pending(s->c) < POP3_OUT_HIGH) {
		size_t n = 0;
		int done = 0;
		const char *err;

		if (pop3_stream_read(&s->st, buf, sizeof(buf), &n, &done, &err) < 0) {
			log_error("pop3: conn=%s reading a message of %s: %s", conn_id(s->c), s->user,
			    err);
			close(s->msgfd);
			s->msgfd = -1;
			s->streaming = 0;
			conn_close(s->c);	/* the client cannot tell a short message */
			return 1;
		}
		conn_write(s->c, buf, n);
		if (done) {
			close(s->msgfd);
			s->msgfd = -1;
			s->streaming = 0;
			if (s->st.top < 0) {
				stats_add("messages_total{door=\"pop3\",route=\"retr\"}", 1);
				stats_add("message_bytes_total{door=\"pop3\",route=\"retr\"}",
				    s->msgsize);
				s->nretr++;
				s->retr_bytes += s->msgsize;
			}
			pop3_proto_retr_done(s->pp);
			return 1;
		}
	}
	return 0;
}

static void
wait_room(struct session *s)
{
	s->room = 1;
	conn_pause(s->c);
}

static void
s_writable(struct conn *c)
{
	struct session *s = conn_ctx(c);

	if (s->spliced) {
		if (s->px != NULL)
			proxy_client_writable(s->px);
		return;
	}
	if (!s->room)
		return;
	s->room = 0;
	session_go(s);
}

/* ---- the proxy: a user whose line says proxy=y host=... (issue 12) ---- */

/* a proxied session counts in mail_max_userip_connections as a local one
 * (Dovecot counts them at the login process): 1 counted (or nothing to
 * count), 0 when the pair is full (-ERR [IN-USE], the connection closes) */
static int
proxy_count(struct session *s, unsigned *n_r)
{
	const struct ipaddr *addr = conn_addr(s->c);

	*n_r = 0;
	if (addr == NULL || s->counted)
		return 1;
	if (!userip_acquire(s->srv->userip, s->user, addr, s->srv->c->max_userip, n_r))
		return 0;
	s->counted = 1;
	return 1;
}

static void
proxy_done(void *arg, enum proxy_result res, const char *caps, const char *why)
{
	struct session *s = arg;
	unsigned n;

	(void)caps;
	if (res == PROXY_OK && !proxy_count(s, &n)) {
		char *line = xasprintf("-ERR [IN-USE] Maximum number of connections from user+IP "
		    "exceeded (mail_max_userip_connections=%u)\r\n", s->srv->c->max_userip);

		proxy_door_over_userip("pop3", s->c, s->user, s->px, n);
		proxy_free(&s->px);
		s->busy = 0;
		conn_write(s->c, line, strlen(line));
		free(line);
		conn_close(s->c);	/* may free s */
		return;
	}
	proxy_door_outcome("pop3", s->c, s->user, s->px, res, why);
	if (res == PROXY_OK) {
		static const char ok[] = "+OK Logged in.\r\n";

		struct conn *c = s->c;

		s->spliced = 1;
		s->busy = 0;
		engine_session_free(&s->es);
		conn_set_timeout(c, 0);	/* the door's pop3_timeout */
		/* held: the splice may end the connection (and free s) on the spot */
		conn_hold(c);
		conn_write(c, ok, sizeof(ok) - 1);
		if (s->px != NULL && !conn_is_closing(c))
			proxy_splice(s->px);
		if (conn_release(c))
			return;		/* ended meanwhile: s is gone */
		if (!conn_is_closing(c))
			conn_resume(c);
		return;
	}
	proxy_free(&s->px);
	if (s->late) {		/* the core is past its login: -ERR and the end */
		pop3_proto_open_refused(s->pp, "[SYS/TEMP] Temporary failure.");
		session_go(s);
		return;
	}
	s->user[0] = '\0';
	pop3_proto_auth_done(s->pp, res == PROXY_REFUSED ? 0 : POP3_AUTH_TEMPFAIL, NULL);
	session_go(s);
}

static const struct proxy_hooks proxy_hooks;

/* a login the core finished itself (SCRAM's last, empty response) of a
 * proxied user: handed over through the master user before the mailbox is
 * opened; 1 when so */
static int
proxy_route_late(struct session *s)
{
	const char *pw, *login;
	struct userdb_proxy where;
	char *mlogin;
	int r;

	if (s->srv->users.db == NULL ||
	    (r = userdb_proxy(s->srv->users.db, pop3_proto_user(s->pp), &where)) == 0)
		return 0;
	snprintf(s->user, sizeof(s->user), "%s", pop3_proto_user(s->pp));
	s->late = 1;
	/* no exchange to take a password from: the master user's */
	if (proxy_door_login(&s->srv->c->proxy, r, &where, s->user, NULL, &login, &pw,
	    &mlogin) < 0) {
		log_warn("pop3: conn=%s proxy: user=<%s>: %s: -ERR [SYS/TEMP]", conn_id(s->c),
		    s->user, r < 0 ? "the user's proxy fields are wrong" : "no mail_proxy_master_user");
		pop3_proto_open_refused(s->pp, "[SYS/TEMP] Temporary failure.");
		return 1;
	}
	s->busy = 1;
	proxy_door_start(&s->px, s->srv->base, &s->srv->c->proxy, PROXY_POP3, &where, s->c,
	    login, pw, &proxy_hooks, s);
	free(mlogin);
	return 1;
}

static const struct proxy_hooks proxy_hooks = { proxy_done };

/* a login that went through: 1 when the user lives on a backend (the
 * session is handed to it, or refused), 0 when it is served here */
static int
proxy_route(struct session *s)
{
	struct pop3_auth_req *a = pop3_proto_auth_req(s->pp);
	const char *user = a && a->sasl ? sasl_server_user(a->sasl) : s->user, *pw, *login;
	char *mlogin;
	struct userdb_proxy where;
	int r, go;

	if (user == NULL || user[0] == '\0' || s->srv->users.db == NULL ||
	    (r = userdb_proxy(s->srv->users.db, user, &where)) == 0)
		return 0;
	if (user != s->user)
		snprintf(s->user, sizeof(s->user), "%s", user);
	/* SCRAM's server-final message reaches the client first: the core
	 * finishes the exchange, then start_open() hands it over; APOP,
	 * CRAM-MD5, EXTERNAL: through the backend's master user */
	go = proxy_door_login(&s->srv->c->proxy, r, &where, s->user, a ? a->sasl : NULL, &login,
	    &pw, &mlogin);
	if (go == 0)
		return 0;
	if (go < 0) {
		log_warn("pop3: conn=%s proxy: user=<%s>: %s: login answered -ERR [SYS/TEMP]",
		    conn_id(s->c), s->user, r < 0 ? "the user's proxy fields are wrong" :
		    "no password to forward for this mechanism (USER/PASS, PLAIN, LOGIN; APOP, "
		    "CRAM-MD5 and EXTERNAL with mail_proxy_master_user)");
		s->user[0] = '\0';
		pop3_proto_auth_done(s->pp, POP3_AUTH_TEMPFAIL, NULL);
		return 1;
	}
	s->busy = 1;
	proxy_door_start(&s->px, s->srv->base, &s->srv->c->proxy, PROXY_POP3, &where, s->c,
	    login, pw, &proxy_hooks, s);
	free(mlogin);
	return 1;
}

/* ---- AUTH ---- */

static void auth_checked(void *arg, int result);
static const struct authcheck_hooks auth_hooks;

/* the backend's verdict on a login Portcullis could not check: the penalty
 * and counters as for any login (authcheck), then auth_checked() */
static void
backend_verdict(void *arg, enum proxy_result res, const char *caps, const char *why)
{
	struct session *s = arg;
	int ok;

	if (res == PROXY_UNAVAILABLE) {
		proxy_done(s, res, caps, why);
		return;
	}
	/* conn held: auth_checked() releases */
	ok = proxy_door_verdict("pop3", s->c, s->user, &s->px, s->srv->auth, res, &auth_hooks, s);
	if (ok != AUTHCHECK_PENDING)
		auth_checked(s, ok == AUTHCHECK_BUSY ? POP3_AUTH_TEMPFAIL : ok);
}

static const struct proxy_hooks backend_hooks = { backend_verdict };

/* mail_proxy_auth = backend: a PLAIN login (USER/PASS, AUTH PLAIN) of a user
 * of mail_proxy_domains with no line in the users file goes to the default
 * backend, whose verdict decides: 1 when so */
static int
proxy_backend_auth(struct session *s, struct pop3_auth_req *a)
{
	const char *login, *pw;
	struct userdb_proxy where;

	if (a->sasl == NULL || !a->check ||
	    !proxy_door_backend_route(&s->srv->c->proxy, s->srv->users.db, a->sasl, &login, &pw,
	    &where, s->user, sizeof(s->user)))
		return 0;
	s->busy = 1;
	proxy_door_start(&s->px, s->srv->base, &s->srv->c->proxy, PROXY_POP3, &where, s->c,
	    login, pw, &backend_hooks, s);
	return 1;
}

static void
auth_checked(void *arg, int result)
{
	struct session *s = arg;

	if (conn_release(s->c))
		return;
	if (result == 1 && s->px != NULL) {	/* the backend said yes (mail_proxy_auth = backend) */
		proxy_done(s, PROXY_OK, "", "");
		return;
	}
	if (result == 1 && proxy_route(s)) {
		if (!s->busy && s->px == NULL)
			session_go(s);
		return;
	}
	pop3_proto_auth_done(s->pp, result, s->user[0] ? s->user : NULL);
	session_go(s);
}

static int
auth_may_ban(void *arg)
{
	struct session *s = arg;
	struct snapref *sr = s->srv->c->snaps;
	unsigned ticket;
	int may;

	if (s->es == NULL || sr == NULL)
		return conn_addr(s->c) != NULL;
	may = engine_client_may_be_banned(s->es, snapref_acquire(sr, &ticket), (long long)time(NULL));
	snapref_release(sr, ticket);
	return may;
}

static int
auth_gone(void *arg)
{
	return conn_is_closing(((struct session *)arg)->c);
}

static const struct authcheck_hooks auth_hooks = { auth_checked, auth_may_ban, auth_gone };

/* APOP login digest -> 1 ok (canonical name into s->user), 0 refused. The
 * secret is the users file's apop= field, kept only while pop3_apop = yes
 * (storage-adapter/userdb.h); common/apop compares in constant time. */
static int
apop_check(struct session *s, const struct pop3_auth_req *a)
{
	const struct userdb *db = s->srv->users.db;
	char local[POP3_USER_MAX], *at;
	const char *canon = NULL, *secret = NULL;

	s->user[0] = '\0';
	snprintf(local, sizeof(local), "%s", a->apop_login);
	at = strrchr(local, '@');
	if (db != NULL && at != NULL) {
		*at = '\0';
		canon = userdb_resolve(db, local, at + 1);
	}
	if (canon != NULL)
		secret = userdb_apop_secret(db, canon);
	if (secret == NULL || apop_verify(secret, a->apop_stamp, a->apop_digest) != 1)
		return 0;
	snprintf(s->user, sizeof(s->user), "%s", canon);
	return 1;
}

static void
start_auth(struct session *s)
{
	struct pop3_auth_req *a = pop3_proto_auth_req(s->pp);
	struct authcheck_req r = { .addr = conn_addr(s->c), .conn_id = conn_id(s->c) };
	int res;

	if (proxy_backend_auth(s, a))
		return;
	if (a->sasl == NULL) {
		r.ok = apop_check(s, a);
	} else {
		s->user[0] = '\0';
		r.sasl = a->check ? a->sasl : NULL;
		r.ok = a->ok;
	}
	res = authcheck_finish(s->srv->auth, &r, &auth_hooks, s);
	if (res == AUTHCHECK_PENDING) {
		session_wait(s);
		return;
	}
	if (res == 1 && proxy_route(s))
		return;
	pop3_proto_auth_done(s->pp, res == AUTHCHECK_BUSY ? POP3_AUTH_TEMPFAIL : res,
	    s->user[0] ? s->user : NULL);
}

/* ---- store jobs ---- */

static void
job_run(void *arg)
{
	struct job *j = arg;
	const char *err = "";

	switch (j->kind) {
	case JOB_OPEN: {
		char *path, dom[256];
		const char *at = strrchr(j->user, '@');

		j->lockfd = -1;
		if (mailstore_open(j->root, j->user, &j->ms, &err) < 0) {
			snprintf(j->err, sizeof(j->err), "%s", err);
			return;
		}
		/* mailstore_open() checked the name: ROOT/DOMAIN/LOCAL/Maildir */
		snprintf(dom, sizeof(dom), "%s", at + 1);
		for (char *p = dom; *p; p++)
			*p = (char)(*p >= 'A' && *p <= 'Z' ? *p + 32 : *p);
		path = xasprintf("%s/%s/%.*s/Maildir/" POP3_LOCK_NAME, j->root, dom,
		    (int)(at - j->user), j->user);
		j->lockfd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
		free(path);
		if (j->lockfd < 0) {
			snprintf(j->err, sizeof(j->err), "the POP3 lock: %s", strerror(errno));
			return;
		}
		if (flock(j->lockfd, LOCK_EX | LOCK_NB) < 0) {
			if (errno == EWOULDBLOCK)
				j->in_use = 1;
			else
				snprintf(j->err, sizeof(j->err), "the POP3 lock: %s", strerror(errno));
			return;
		}
		if (mailstore_box_open_peek(j->ms, "INBOX", &j->box, &err) < 0) {
			snprintf(j->err, sizeof(j->err), "%s", err);
			return;
		}
		j->ok = 1;
		return;
	}
	case JOB_RETR:
		j->fd = -1;
		switch (mailstore_msg_open(j->s->box, j->uid, &j->fd, &err)) {
		case 0:
			j->ok = 1;
			break;
		case MAILSTORE_GONE:	/* expunged meanwhile (IMAP): not an error */
			j->gone = 1;
			/* fall through */
		default:
			snprintf(j->err, sizeof(j->err), "%s", err);
		}
		return;
	case JOB_UPDATE: {
		const uint32_t *ex, *seen;
		size_t nex, nseen;

		j->ok = 1;
		pop3_proto_update(j->s->pp, &ex, &nex, &seen, &nseen);
		for (size_t i = 0; i < nex; i++)
			if (mailstore_msg_expunge(j->s->box, ex[i], &err) < 0) {
				j->ok = 0;
				snprintf(j->err, sizeof(j->err), "%s", err);
			}
		for (size_t i = 0; i < nseen; i++) {
			int rc = mailstore_msg_set_flags(j->s->box, seen[i], MAILSTORE_FLAGS_ADD,
			    MAILSTORE_SEEN, NULL, 0, &err);

			/* gone (an IMAP session expunged it) is no error: Dovecot says +OK */
			if (rc < 0 && rc != MAILSTORE_GONE) {
				j->ok = 0;
				snprintf(j->err, sizeof(j->err), "%s", err);
			}
		}
		return;
	}
	}
}

static void
job_drop(struct job *j)
{
	mailstore_box_close(&j->box);
	mailstore_free(&j->ms);
	if (j->lockfd >= 0)
		close(j->lockfd);
	if (j->fd >= 0)
		close(j->fd);
	free(j);
}

static void
uncount(struct session *s)
{
	if (!s->counted)
		return;
	userip_release(s->srv->userip, s->user, conn_addr(s->c));
	s->counted = 0;
}

static void
job_done(void *arg)
{
	struct job *j = arg;
	struct session *s;

	if (conn_release(j->c)) {	/* the client left meanwhile */
		job_drop(j);
		return;
	}
	s = j->s;
	switch (j->kind) {
	case JOB_OPEN:
		if (!j->ok) {
			if (!j->in_use)
				log_error("pop3: conn=%s opening the INBOX of %s: %s", j->conn_id, j->user,
				    j->err);
			else
				log_info("pop3: conn=%s %s: mailbox in use by another POP3 session",
				    j->conn_id, j->user);
			uncount(s);
			pop3_proto_opened(s->pp, NULL, j->in_use);
			break;
		}
		s->ms = j->ms;
		s->box = j->box;
		s->lockfd = j->lockfd;
		j->ms = NULL;
		j->box = NULL;
		j->lockfd = -1;
		conn_set_timeout(s->c, 0);	/* pop3_timeout from here */
		log_info("pop3: conn=%s login: user=%s messages=%zu%s", j->conn_id, s->user,
		    mailstore_box_count(s->box), conn_is_tls(s->c) ? " TLS" : "");
		pop3_proto_opened(s->pp, s->box, 0);
		break;
	case JOB_RETR:
		pop3_proto_retr_opened(s->pp, j->ok);
		if (j->ok) {
			long top;
			uint32_t uid;

			pop3_proto_retr_req(s->pp, &uid, &top);
			{
				long k = mailstore_box_find(s->box, uid);

				s->msgsize = k < 0 ? 0 : mailstore_box_msg(s->box, (size_t)k)->vsize;
			}
			s->msgfd = j->fd;
			j->fd = -1;
			pop3_stream_init(&s->st, s->msgfd, top);
			s->streaming = 1;
		} else if (j->gone) {
			log_info("pop3: conn=%s %s: message %u: expunged meanwhile", j->conn_id,
			    s->user, (unsigned)j->uid);
		} else {
			log_error("pop3: conn=%s %s: message %u: %s", j->conn_id, s->user,
			    (unsigned)j->uid, j->err);
		}
		break;
	case JOB_UPDATE: {
		const uint32_t *ex, *seen;
		size_t nex, nseen;

		pop3_proto_update(s->pp, &ex, &nex, &seen, &nseen);
		stats_add("messages_total{door=\"pop3\",route=\"dele\"}", nex);
		if (j->ok)
			s->ndele = (unsigned)nex;
		if (!j->ok)
			log_error("pop3: conn=%s %s: update at QUIT: %s", j->conn_id, s->user, j->err);
		pop3_proto_update_done(s->pp, j->ok);
		break;
	}
	}
	job_drop(j);
	session_go(s);
}

static void
start_job(struct session *s, enum job_kind kind)
{
	struct job *j = xcalloc(1, sizeof(*j));

	j->kind = kind;
	j->c = s->c;
	j->s = s;
	j->root = s->srv->c->maildir_root;
	j->lockfd = -1;
	j->fd = -1;
	snprintf(j->user, sizeof(j->user), "%s", s->user);
	snprintf(j->conn_id, sizeof(j->conn_id), "%s", conn_id(s->c));
	if (kind == JOB_RETR) {
		long top;

		pop3_proto_retr_req(s->pp, &j->uid, &top);
	}
	session_wait(s);
	jobs_submit(s->srv->jobs, job_run, job_done, j);
}

/* a login: mail_max_userip_connections, then the INBOX on a job thread */
static void
start_open(struct session *s)
{
	const struct ipaddr *addr = conn_addr(s->c);
	unsigned n = 0, max = s->srv->c->max_userip;

	if (proxy_route_late(s))
		return;
	snprintf(s->user, sizeof(s->user), "%s", pop3_proto_user(s->pp));
	if (addr != NULL) {
		if (!userip_acquire(s->srv->userip, s->user, addr, max, &n)) {
			char text[200];

			log_info("pop3: conn=%s %s: %u connections from the same address: refused",
			    conn_id(s->c), s->user, n);
			snprintf(text, sizeof(text), "[IN-USE] Maximum number of connections from user+IP "
			    "exceeded (mail_max_userip_connections=%u)", max);
			pop3_proto_open_refused(s->pp, text);
			return;
		}
		s->counted = 1;
	}
	start_job(s, JOB_OPEN);
}

/* the session is over: the mailbox and its POP3 lock go now, before the
 * last reply is on the wire (a client that logs in again at once after
 * "+OK Logging out." must not find its own old session holding the lock) */
static void
store_release(struct session *s)
{
	if (s->box != NULL)
		log_info("pop3: conn=%s logout: user=%s retr=%u/%llu del=%u", conn_id(s->c), s->user,
		    s->nretr, (unsigned long long)s->retr_bytes, s->ndele);
	uncount(s);
	if (s->msgfd >= 0)
		close(s->msgfd);
	s->msgfd = -1;
	mailstore_box_close(&s->box);
	mailstore_free(&s->ms);
	if (s->lockfd >= 0)
		close(s->lockfd);	/* the POP3 lock goes with it */
	s->lockfd = -1;
}

/* ---- the session's engine ---- */

/*
 * What pop3_proto asks for, in its order, until it needs input, a job, or
 * the client to read. Called from input, from a job's completion, when the
 * output has room again. The caller holds the connection.
 */
static void
advance(struct session *s)
{
	struct conn *c = s->c;

	while (!conn_is_closing(c) && !s->busy && !s->room) {
		struct evbuffer *in;
		struct evbuffer_iovec v;
		size_t used;

		if (!s->peer_set && conn_is_tls(c)) {
			const char *id = conn_tls_peer(c);

			if (id != NULL) {
				s->peer_set = 1;
				pop3_proto_set_tls_peer(s->pp, id);
			}
		}
		if (!flush(s) || (s->streaming && !stream_more(s))) {
			wait_room(s);
			return;
		}
		if (s->streaming)
			continue;
		if (pop3_proto_wants_close(s->pp)) {
			store_release(s);
			conn_close(c);
			return;
		}
		if (s->srv->stopping)
			return;
		switch (pop3_proto_action(s->pp)) {
		case POP3_ACT_NONE:
			break;
		case POP3_ACT_AUTH:
			start_auth(s);
			continue;
		case POP3_ACT_OPEN:
			start_open(s);
			continue;
		case POP3_ACT_RETR:
			start_job(s, JOB_RETR);
			return;
		case POP3_ACT_UPDATE:
			start_job(s, JOB_UPDATE);
			return;
		case POP3_ACT_STARTTLS:
			/* "+OK Begin TLS" is queued; what was pipelined after STLS is dropped */
			if (conn_starttls(c) == 0)
				pop3_proto_set_tls(s->pp, 1);
			return;
		}
		in = conn_input(c);
		if (evbuffer_get_length(in) == 0 || evbuffer_peek(in, -1, NULL, &v, 1) < 1)
			return;
		used = pop3_proto_input(s->pp, v.iov_base, v.iov_len);
		evbuffer_drain(in, used);
		if (used == 0) {
			size_t n;

			(void)pop3_proto_output(s->pp, &n);
			if (n == 0 && pop3_proto_action(s->pp) == POP3_ACT_NONE &&
			    !pop3_proto_wants_close(s->pp))
				return;	/* cannot happen: an idle core takes bytes */
		}
	}
}

/* ---- conn ops ---- */

static void
s_opened(struct conn *c)
{
	struct server *srv = conn_server_arg(conn_server(c));
	struct session *s = xcalloc(1, sizeof(*s));
	const struct ipaddr *addr = conn_addr(c);

	s->srv = srv;
	s->c = c;
	s->lockfd = -1;
	s->msgfd = -1;
	conn_set_ctx(c, s);
	conn_set_write_low(c, POP3_OUT_LOW);
	if (srv->c->pol != NULL && srv->c->snaps != NULL && addr != NULL) {
		unsigned ticket;
		const struct snapshot *snap = snapref_acquire(srv->c->snaps, &ticket);
		struct verdict v;

		s->es = engine_session_new(srv->c->pol);
		engine_session_set_id(s->es, conn_id(c));
		engine_connect(s->es, snap, addr, NULL, (long long)time(NULL), &v);
		if (engine_client_is_killed(s->es, snap, (long long)time(NULL), &v)) {
			char line[MAX_REPLY_TEXT + 32];
			int n;

			snapref_release(srv->c->snaps, ticket);
			engine_log(s->es, STAGE_CONNECT, &v, NULL, NULL);
			n = snprintf(line, sizeof(line), "-ERR [SYS/PERM] %s\r\n", v.text);
			conn_write(c, line, (size_t)n);
			conn_close(c);
			return;
		}
		snapref_release(srv->c->snaps, ticket);
	}
	if (srv->c->conn.timeout > POP3_LOGIN_TIMEOUT)
		conn_set_timeout(c, POP3_LOGIN_TIMEOUT);	/* tighter before login */
	s->pp = pop3_proto_new(&srv->params);
	if (conn_is_tls(c))
		pop3_proto_set_tls(s->pp, 1);	/* pop3s */
	pop3_proto_start(s->pp, NULL);
	conn_hold(c);
	advance(s);
	if (conn_release(c))
		return;	/* closed meanwhile */
}

static void
s_input(struct conn *c)
{
	struct session *s = conn_ctx(c);

	if (s->px != NULL) {
		if (s->spliced)
			proxy_client_input(s->px);
		return;
	}
	conn_hold(c);
	advance(s);
	if (conn_release(c))
		return;	/* closed meanwhile */
}

static void
s_free(struct conn *c)
{
	struct session *s = conn_ctx(c);

	if (s == NULL)
		return;
	proxy_free(&s->px);
	pop3_proto_free(&s->pp);	/* points into the box: first */
	store_release(s);
	engine_session_free(&s->es);
	free(s);
}

static const struct conn_ops pop3_ops = {
	.opened = s_opened,
	.input = s_input,
	.writable = s_writable,
	.free = s_free,
};

/* ---- the loop ---- */

int
pop3_server_run(const int *fds, const int *kinds, size_t nfds,
    const struct pop3_server_conf *c, const char **error_r)
{
	struct server *s = xcalloc(1, sizeof(*s));
	struct door_loop *loop;
	int rc = 0;

	s->c = c;
	s->params = c->params;
	s->params.sasl_cb = &s->sasl_cb;
	if (users_open_sasl(&s->users, c->users_url, &s->sasl_cb, error_r) < 0) {
		free(s);
		return -1;
	}
	s->base = event_base_new();
	if (s->base == NULL) {
		*error_r = "cannot create the event loop";
		users_close(&s->users);
		free(s);
		return -1;
	}
	s->cs = conn_server_new(s->base, &c->conn, &pop3_ops, s);
	s->userip = userip_new();
	s->jobs = jobs_new(s->base, "pop3-store", POP3_STORE_THREADS, 0);
	s->auth = authcheck_new(s->base, "pop3", "login answered -ERR [SYS/TEMP]", POP3_AUTH_THREADS,
	    POP3_AUTH_QUEUE, &c->penalty, c->ban, c->ban_arg);
	for (size_t i = 0; i < nfds; i++)
		if (conn_server_listen(s->cs, fds[i], kinds[i] == POP3_LISTEN_POP3S ? "pop3s" : "pop3",
		    (int)kinds[i], kinds[i] == POP3_LISTEN_POP3S, error_r) < 0)
			rc = -1;
	/* SIGUSR2 (live reload): no new connection; each finishes, within the
	 * timeout; each second the users file is reopened if it changed */
	loop = door_loop_new(s->cs, "pop3", c->conn.timeout, &s->users, NULL, NULL, s);
	if (rc == 0)
		door_loop_run(loop);
	s->stopping = 1;
	conn_server_stop(s->cs);
	jobs_free(&s->jobs);	/* jobs in flight finish and call back first */
	authcheck_free(&s->auth);
	conn_server_free(&s->cs);
	userip_free(&s->userip);
	proxy_dns_free(&s->c->proxy);	/* host= names' resolver: on this loop */
	door_loop_free(&loop);
	event_base_free(s->base);
	users_close(&s->users);
	free(s);
	return rc;
}
