/*
 * imap_server - the IMAP door's event loop (libevent) around the I/O-free
 * session of imap_proto: accept on imap_listen and imaps_listen (implicit
 * TLS, RFC 8314), feed client bytes in, write the replies out, and run the
 * actions the session asks for:
 *
 *   IMAP_ACT_AUTH       the password check off the loop and the failed-login
 *                       penalty (service/authcheck: delays, then a ban
 *                       through the kill list, shared with every door)
 *   IMAP_ACT_STARTTLS   the upgrade (service/tlsbev: pipelined plaintext
 *                       dropped)
 *   IMAP_ACT_SELECT,    mail store work (storage-adapter/mailstore) on the
 *   IMAP_ACT_LIST       store job pool; the session reads no input meanwhile
 *
 *   imap_server_run()   the loop on the listeners the master bound, until
 *                       SIGTERM/SIGINT, or until drained after SIGUSR2
 *
 * A kill-listed client (the same lists and engine as SMTP) gets "* BYE" at
 * connect. Connections are counted in total and per client address
 * (service/anvil). Before login each request has imap_login_timeout (a
 * deadline per request: one byte a minute does not keep a connection);
 * after login the connection may be silent for imap_idle_timeout (RFC 3501
 * §5.4: at least 30 minutes), IDLE included.
 *
 * SIGUSR2 (live reload: a new worker already serves the listeners): accept
 * nothing more; every session not in the middle of a command is told
 * "* BYE" and closed, the others once their command is answered.
 *
 * The loop never blocks: store I/O and password hashing run on job
 * threads; a connection a job still points at is freed only when the job
 * is done (a hold). The user database is reloaded when its file changes.
 * Never logs peer bytes.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "common/connid.h"
#include "common/log.h"
#include "common/stats.h"
#include "common/tls.h"
#include "common/xmalloc.h"
#include "pop-imap-proxy/imap_server.h"
#include "rules/engine.h"
#include "rules/snapshot.h"
#include "service/anvil.h"
#include "service/authcheck.h"
#include "service/deadline.h"
#include "service/jobs.h"
#include "service/listener.h"
#include "service/tlsbev.h"
#include "service/users.h"
#include "storage-adapter/mailstore.h"
#include "storage-adapter/userdb.h"
#include "storage-adapter/userdb_sasl.h"

#define IMAP_STORE_THREADS 4	/* mail store I/O */
#define IMAP_AUTH_THREADS 2	/* password hashing: a pool of its own */
#define IMAP_AUTH_QUEUE 32	/* checks queued or running; past it NO [UNAVAILABLE] */
#define IMAP_DRAIN_MAX 60	/* seconds a draining worker waits for busy sessions */

struct door {
	struct server *srv;
	enum imap_listener_kind kind;
	struct listener *l;
};

struct server {
	const struct imap_server_conf *c;
	struct imap_params params;
	struct event_base *base;
	struct jobs *jobs;		/* mail store I/O */
	struct authcheck *auth;		/* password checks and failed-login penalties */
	struct users users;		/* the user database, kept current */
	struct sasl_callbacks sasl_cb;
	struct anvil *anvil;		/* connections per client address */
	unsigned nconn;
	struct iconn *conns;
	struct door *doors;
	size_t ndoors;
	time_t drain_until;		/* draining (SIGUSR2): stop by then; 0 not */
	int stopping;
};

struct iconn {
	struct iconn *prev, *next;
	struct server *srv;
	struct bufferevent *bev;
	struct imap_proto *ip;
	char id[CONNID_MAX];
	struct ipaddr addr;
	int has_addr;
	struct engine_session *es;	/* the kill list at connect, may_ban; dropped at login */
	int tls;		/* the bev is an OpenSSL one */
	int peer_checked;	/* the client certificate was looked at (EXTERNAL) */
	int closing;		/* close once the output is on the wire */
	int holds;		/* jobs, checks, timers that will call back */
	int dead;		/* closed while held */
	int logged;		/* logged in: the idle timeout applies */
	struct event *timer;
	struct deadline dl;
	int replied;
	struct event *close_timer;
	int close_tries;
	struct mailstore *ms;	/* the user's store, opened by the first store job */
	struct mailstore_box *box;	/* the selected folder */
};

/* ---- connection: holds, output, close ---- */

static void conn_free(struct iconn *c);
static void read_cb(struct bufferevent *bev, void *arg);

static void
conn_hold(struct iconn *c)
{
	c->holds++;
}

/* 1 when the connection was closed meanwhile: the caller must not touch it */
static int
conn_release(struct iconn *c)
{
	c->holds--;
	if (!c->dead)
		return 0;
	if (c->holds == 0)
		conn_free(c);
	return 1;
}

static const char *
conn_who(const struct iconn *c, char *buf)
{
	return c->has_addr ? cidr_addr_format(&c->addr, buf) : "unknown";
}

static unsigned
conn_timeout(const struct iconn *c)
{
	return c->logged ? c->srv->c->idle_timeout : c->srv->c->login_timeout;
}

static void
arm_timer(struct iconn *c)
{
	long long left = deadline_due(&c->dl, conn_timeout(c)) - deadline_now_ms();
	struct timeval tv;

	if (left < 0)
		left = 0;
	tv.tv_sec = (time_t)(left / 1000);
	tv.tv_usec = (suseconds_t)(left % 1000) * 1000;
	evtimer_add(c->timer, &tv);
}

static void
set_write_timeout(struct iconn *c)
{
	struct timeval tv = { conn_timeout(c), 0 };

	bufferevent_set_timeouts(c->bev, NULL, &tv);
}

static void
flush_output(struct iconn *c)
{
	size_t n;
	const char *out = imap_proto_output(c->ip, &n);

	if (n > 0) {
		c->replied = 1;
		bufferevent_write(c->bev, out, n);
		imap_proto_output_done(c->ip, n);
	}
	if (imap_proto_wants_close(c->ip))
		c->closing = 1;
}

/* a final line of our own, then close (timeouts, limits, shutdown) */
static void
say_bye(struct iconn *c, const char *line)
{
	struct timeval tv = { 5, 0 };

	flush_output(c);
	bufferevent_write(c->bev, line, strlen(line));
	c->closing = 1;
	evtimer_del(c->timer);
	bufferevent_set_timeouts(c->bev, &tv, &tv);
	bufferevent_disable(c->bev, EV_READ);
	bufferevent_enable(c->bev, EV_WRITE);
}

/*
 * Close once the last reply is on the wire. Behind a STARTTLS filter the
 * filter's output empties into the socket's bufferevent first.
 */
static void
close_check(evutil_socket_t fd, short what, void *arg)
{
	struct iconn *c = arg;
	struct bufferevent *under = bufferevent_get_underlying(c->bev);

	(void)fd;
	(void)what;
	if (evbuffer_get_length(bufferevent_get_output(c->bev)) > 0)
		return;		/* write_cb comes again */
	if (under != NULL && evbuffer_get_length(bufferevent_get_output(under)) > 0 &&
	    c->close_tries++ < 100) {
		struct timeval tv = { 0, 20000 };

		if (c->close_timer == NULL)
			c->close_timer = evtimer_new(c->srv->base, close_check, c);
		evtimer_add(c->close_timer, &tv);
		return;
	}
	conn_free(c);
}

static void
conn_free(struct iconn *c)
{
	struct server *s = c->srv;

	if (c->holds > 0) {	/* a callback will come: the last release frees it */
		c->dead = 1;
		bufferevent_disable(c->bev, EV_READ | EV_WRITE);
		evtimer_del(c->timer);
		return;
	}
	if (c->has_addr)
		(void)anvil_disconnect(s->anvil, &c->addr, time(NULL));
	if (log_is_debug()) {
		char who[CIDR_TEXT_MAX];

		log_debug("conn=%s imap disconnect from [%s]", c->id, conn_who(c, who));
	}
	mailstore_box_close(&c->box);
	mailstore_free(&c->ms);
	engine_session_free(&c->es);
	if (c->close_timer != NULL)
		event_free(c->close_timer);
	event_free(c->timer);
	s->nconn--;
	if (c->prev)
		c->prev->next = c->next;
	else
		s->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	imap_proto_free(&c->ip);
	bufferevent_free(c->bev);
	free(c);
	if (s->drain_until != 0 && s->nconn == 0)
		event_base_loopexit(s->base, NULL);
}

/* an action is answered: its reply goes out, input is read on */
static void
resume(struct iconn *c)
{
	flush_output(c);
	if (c->closing) {
		bufferevent_disable(c->bev, EV_READ);
		close_check(-1, 0, c);
		return;
	}
	bufferevent_enable(c->bev, EV_READ);
	read_cb(c->bev, c);	/* pipelined input may be waiting */
}

/* ---- mail store jobs ---- */

struct store_job {
	struct iconn *c;
	enum imap_action act;
	char user[256];
	const char *root;
	/* SELECT */
	char *name;		/* NULL: only close */
	struct mailstore_box *box;
	/* LIST */
	char **names;
	size_t n;
	int ok;
	char err[300];
};

/* on a job thread: the user's store, opened once per session */
static int
job_store(struct store_job *j)
{
	const char *e;

	if (j->c->ms != NULL)
		return 0;
	if (mailstore_open(j->root, j->user, &j->c->ms, &e) < 0) {
		snprintf(j->err, sizeof(j->err), "%s", e);
		return -1;
	}
	return 0;
}

static void
store_run(void *arg)
{
	struct store_job *j = arg;
	struct iconn *c = j->c;
	const char *e;

	switch (j->act) {
	case IMAP_ACT_SELECT:
		mailstore_box_close(&c->box);
		if (j->name == NULL)
			break;
		if (job_store(j) < 0)
			break;
		if (mailstore_box_open(c->ms, j->name, &j->box, &e) < 0)
			snprintf(j->err, sizeof(j->err), "%s", e);
		break;
	case IMAP_ACT_LIST:
		if (job_store(j) < 0)
			break;
		if (mailstore_folders(c->ms, &j->names, &j->n, &e) < 0)
			snprintf(j->err, sizeof(j->err), "%s", e);
		else
			j->ok = 1;
		break;
	default:
		break;
	}
}

static void
store_done(void *arg)
{
	struct store_job *j = arg;
	struct iconn *c = j->c;

	if (j->err[0] != '\0' && strstr(j->err, "no such folder") == NULL &&
	    strstr(j->err, "invalid folder name") == NULL)
		log_warn("conn=%s imap user %s: %s", c->id, j->user, j->err);
	if (!conn_release(c)) {
		switch (j->act) {
		case IMAP_ACT_SELECT:
			c->box = j->box;
			j->box = NULL;
			/* a folder that is not there is the client's error, not ours */
			imap_proto_selected(c->ip, c->box, c->box != NULL || j->name == NULL ||
			    strstr(j->err, "no such folder") != NULL ||
			    strstr(j->err, "invalid folder name") != NULL ? NULL :
			    "[SERVERBUG] Internal error occurred.");
			break;
		case IMAP_ACT_LIST:
			imap_proto_list_done(c->ip, j->names, j->n, j->ok);
			break;
		default:
			break;
		}
		resume(c);
	}
	mailstore_box_close(&j->box);
	if (j->names != NULL)
		mailstore_names_free(&j->names, j->n);
	free(j->name);
	free(j);
}

static void
store_job(struct iconn *c, enum imap_action act)
{
	struct store_job *j = xcalloc(1, sizeof(*j));

	j->c = c;
	j->act = act;
	j->root = c->srv->c->mail_root;
	snprintf(j->user, sizeof(j->user), "%s", imap_proto_user(c->ip));
	if (act == IMAP_ACT_SELECT) {
		const char *name;
		int ro;

		imap_proto_select_req(c->ip, &name, &ro);
		j->name = name != NULL ? xstrdup(name) : NULL;
	}
	conn_hold(c);
	bufferevent_disable(c->bev, EV_READ);
	jobs_submit(c->srv->jobs, store_run, store_done, j);
}

/* ---- AUTHENTICATE / LOGIN ---- */

static void
logged_in(struct iconn *c)
{
	char who[CIDR_TEXT_MAX];

	c->logged = 1;
	engine_session_free(&c->es);	/* the lists were for the login phase */
	set_write_timeout(c);
	log_info("conn=%s imap login: user=<%s> client=[%s]%s", c->id, imap_proto_user(c->ip),
	    conn_who(c, who), c->tls ? " TLS" : "");
	stats_add("logins_total{door=\"imap\"}", 1);
}

static void
auth_checked(void *arg, int result)
{
	struct iconn *c = arg;

	if (conn_release(c))
		return;
	imap_proto_auth_done(c->ip, result);
	if (imap_proto_user(c->ip)[0] != '\0' && !c->logged)
		logged_in(c);
	resume(c);
}

static int
auth_may_ban(void *arg)
{
	struct iconn *c = arg;
	unsigned ticket;
	const struct snapshot *snap;
	int may;

	if (c->es == NULL)
		return 0;
	snap = snapref_acquire(c->srv->c->snaps, &ticket);
	may = engine_client_may_be_banned(c->es, snap, (long long)time(NULL));
	snapref_release(c->srv->c->snaps, ticket);
	return may;
}

static int
auth_gone(void *arg)
{
	return ((struct iconn *)arg)->dead;
}

static const struct authcheck_hooks auth_hooks = { auth_checked, auth_may_ban, auth_gone };

/* 1: answered now (read on); 0: the answer comes later */
static int
check_auth(struct iconn *c)
{
	struct imap_auth_req *req = imap_proto_auth_req(c->ip);
	struct authcheck_req r = {
		.sasl = req->check ? req->sasl : NULL,
		.ok = req->ok,
		.addr = c->has_addr ? &c->addr : NULL,
		.conn_id = c->id,
	};
	int res = authcheck_finish(c->srv->auth, &r, &auth_hooks, c);

	if (res == AUTHCHECK_PENDING) {
		conn_hold(c);
		bufferevent_disable(c->bev, EV_READ);
		return 0;
	}
	imap_proto_auth_done(c->ip, res == AUTHCHECK_BUSY ? IMAP_AUTH_TEMPFAIL : res);
	if (imap_proto_user(c->ip)[0] != '\0' && !c->logged)
		logged_in(c);
	return 1;
}

/* ---- TLS ---- */

static void write_cb(struct bufferevent *bev, void *arg);
static void event_cb(struct bufferevent *bev, short what, void *arg);

static int
start_tls(struct iconn *c)
{
	struct server *s = c->srv;
	struct bufferevent *tb;

	flush_output(c);	/* "OK Begin TLS negotiation now." in plaintext */
	tb = tlsbev_starttls(s->base, c->bev, s->c->tls);
	if (tb == NULL) {
		log_error("conn=%s imap: cannot start TLS", c->id);
		c->closing = 1;
		return -1;
	}
	c->bev = tb;
	c->tls = 1;
	bufferevent_setcb(tb, read_cb, write_cb, event_cb, c);
	set_write_timeout(c);
	bufferevent_enable(tb, EV_READ | EV_WRITE);
	imap_proto_set_tls(c->ip, 1);
	return 0;
}

static void
peer_check(struct iconn *c)
{
	SSL *ssl;
	char id[256];

	if (!c->tls || c->peer_checked)
		return;
	ssl = bufferevent_openssl_get_ssl(c->bev);
	if (ssl != NULL && SSL_is_init_finished(ssl)) {
		c->peer_checked = 1;
		if (tls_peer_identity(ssl, id, sizeof(id)) == 0)
			imap_proto_set_tls_peer(c->ip, id);
	}
}

/* ---- input ---- */

/* run the session's pending action; 1: read on, 0: wait for its answer */
static int
run_action(struct iconn *c)
{
	switch (imap_proto_action(c->ip)) {
	case IMAP_ACT_NONE:
		return 1;
	case IMAP_ACT_AUTH:
		return check_auth(c);
	case IMAP_ACT_STARTTLS:
		return start_tls(c) == 0;
	case IMAP_ACT_SELECT:
	case IMAP_ACT_LIST:
		store_job(c, imap_proto_action(c->ip));
		return 0;
	}
	return 1;
}

static void
read_cb(struct bufferevent *bev, void *arg)
{
	struct iconn *c = arg;
	struct evbuffer *in = bufferevent_get_input(bev);

	if (c->srv->stopping || c->dead)
		return;
	peer_check(c);
	while (!c->closing && evbuffer_get_length(in) > 0) {
		struct evbuffer_iovec v;
		size_t used;

		if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
			break;
		used = imap_proto_input(c->ip, v.iov_base, v.iov_len);
		evbuffer_drain(in, used);
		flush_output(c);
		if (imap_proto_action(c->ip) != IMAP_ACT_NONE) {
			if (!run_action(c))
				break;
			flush_output(c);
			bev = c->bev;	/* STARTTLS replaced it */
			in = bufferevent_get_input(bev);
			continue;
		}
		if (used == 0)
			break;
	}
	if (c->replied) {
		c->replied = 0;
		deadline_request(&c->dl, deadline_now_ms());
	}
	if (c->closing) {
		bufferevent_disable(c->bev, EV_READ);
		close_check(-1, 0, c);
		return;
	}
	if (c->logged)	/* after login the timeout is one of silence */
		deadline_request(&c->dl, deadline_now_ms());
	arm_timer(c);
	if (c->srv->drain_until != 0 && imap_proto_action(c->ip) == IMAP_ACT_NONE &&
	    evbuffer_get_length(bufferevent_get_input(c->bev)) == 0)
		say_bye(c, "* BYE [UNAVAILABLE] Server shutting down.\r\n");
}

static void
write_cb(struct bufferevent *bev, void *arg)
{
	struct iconn *c = arg;

	(void)bev;
	if (c->closing)
		close_check(-1, 0, c);
}

static void
event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct iconn *c = arg;

	if (what & BEV_EVENT_CONNECTED)
		return;
	if ((what & BEV_EVENT_TIMEOUT) && !c->closing) {
		/* a write: the client reads nothing */
		char who[CIDR_TEXT_MAX];

		log_info("conn=%s imap write timeout to [%s]", c->id, conn_who(c, who));
	} else if ((what & BEV_EVENT_ERROR) && c->tls) {
		unsigned long e = bufferevent_get_openssl_error(bev);

		if (e != 0) {
			char buf[200], who[CIDR_TEXT_MAX];

			ERR_error_string_n(e, buf, sizeof(buf));
			log_info("conn=%s imap TLS error from [%s]: %s", c->id, conn_who(c, who), buf);
		}
	}
	conn_free(c);
}

static void
timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct iconn *c = arg;
	char who[CIDR_TEXT_MAX];

	(void)fd;
	(void)what;
	if (c->closing || c->dead)
		return;
	if (c->holds > 0 || imap_proto_action(c->ip) != IMAP_ACT_NONE) {
		/* our turn, not the client's */
		deadline_request(&c->dl, deadline_now_ms());
		arm_timer(c);
		return;
	}
	if (deadline_now_ms() < deadline_due(&c->dl, conn_timeout(c))) {
		arm_timer(c);
		return;
	}
	log_info("conn=%s imap timeout after %u s from [%s]%s", c->id, conn_timeout(c),
	    conn_who(c, who), c->logged ? "" : " before login");
	say_bye(c, "* BYE Disconnected for inactivity.\r\n");
}

/* ---- accept ---- */

/* 1 when the client is on the kill list (and not on the accept list) */
static int
killed(struct iconn *c)
{
	struct server *s = c->srv;
	unsigned ticket;
	const struct snapshot *snap;
	struct verdict v;
	int k;

	if (s->c->pol == NULL || s->c->snaps == NULL)
		return 0;
	c->es = engine_session_new(s->c->pol);
	engine_session_set_id(c->es, c->id);
	snap = snapref_acquire(s->c->snaps, &ticket);
	engine_connect(c->es, snap, c->has_addr ? &c->addr : NULL, NULL, (long long)time(NULL), &v);
	k = engine_client_is_killed(c->es, snap, (long long)time(NULL), &v);
	snapref_release(s->c->snaps, ticket);
	if (k) {
		char line[MAX_REPLY_TEXT + 32];

		engine_log(c->es, STAGE_CONNECT, &v, NULL, "imap");
		snprintf(line, sizeof(line), "* BYE %s\r\n", v.text);
		bufferevent_write(c->bev, line, strlen(line));
		stats_add("connections_refused_total{door=\"imap\",reason=\"kill\"}", 1);
	}
	return k;
}

static void
accept_cb(void *arg, int fd, struct sockaddr *sa, socklen_t salen)
{
	struct door *d = arg;
	struct server *s = d->srv;
	struct iconn *c = xcalloc(1, sizeof(*c));
	unsigned per_client = 0;
	const char *refuse = NULL;

	(void)salen;
	stats_add("connections_total{door=\"imap\"}", 1);
	c->srv = s;
	c->next = s->conns;
	if (s->conns)
		s->conns->prev = c;
	s->conns = c;
	s->nconn++;
	c->has_addr = cidr_addr_from_sockaddr(sa, &c->addr) == 0;
	connid_new(c->id);
	if (d->kind == IMAP_LISTEN_IMAPS) {
		c->bev = tlsbev_accept(s->base, fd, s->c->tls);
		c->tls = 1;
	} else {
		c->bev = bufferevent_socket_new(s->base, fd, BEV_OPT_CLOSE_ON_FREE);
	}
	if (c->bev == NULL) {
		/* cannot even say why */
		close(fd);
		c->bev = bufferevent_socket_new(s->base, -1, 0);
	}
	if (log_is_debug()) {
		char who[CIDR_TEXT_MAX];

		log_debug("conn=%s imap connect from [%s]%s", c->id, conn_who(c, who),
		    c->tls ? " (imaps)" : "");
	}
	c->ip = imap_proto_new(&s->params);
	if (c->tls)
		imap_proto_set_tls(c->ip, 1);
	if (c->has_addr)
		per_client = anvil_connect(s->anvil, &c->addr, time(NULL));
	bufferevent_setcb(c->bev, read_cb, write_cb, event_cb, c);
	c->timer = evtimer_new(s->base, timer_cb, c);
	deadline_init(&c->dl, 1, 0, deadline_now_ms());
	set_write_timeout(c);
	if (s->c->max_connections && s->nconn > s->c->max_connections)
		refuse = "* BYE [UNAVAILABLE] Too many connections, try again later.\r\n";
	else if (s->c->max_per_client && per_client > s->c->max_per_client)
		refuse = "* BYE [UNAVAILABLE] Too many connections from your address.\r\n";
	if (refuse != NULL || killed(c)) {
		if (refuse != NULL)
			bufferevent_write(c->bev, refuse, strlen(refuse));
		c->closing = 1;
		bufferevent_enable(c->bev, EV_WRITE);
		arm_timer(c);
		return;
	}
	imap_proto_start(c->ip);
	flush_output(c);
	c->replied = 0;
	arm_timer(c);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

/* ---- the loop ---- */

static void
stop_cb(evutil_socket_t sig, short what, void *arg)
{
	struct server *s = arg;

	(void)what;
	log_info("imap: signal %d, stopping", (int)sig);
	event_base_loopexit(s->base, NULL);
}

static void
drain_cb(evutil_socket_t sig, short what, void *arg)
{
	struct server *s = arg;
	struct iconn *next;

	(void)sig;
	(void)what;
	if (s->drain_until != 0)
		return;
	for (size_t i = 0; i < s->ndoors; i++)
		listener_free(&s->doors[i].l);
	s->drain_until = time(NULL) + IMAP_DRAIN_MAX;
	log_info("imap: draining for a reload: %u session%s told to reconnect", s->nconn,
	    s->nconn == 1 ? "" : "s");
	if (s->nconn == 0) {
		event_base_loopexit(s->base, NULL);
		return;
	}
	/* sessions between commands go now; busy ones after their answer (read_cb) */
	for (struct iconn *c = s->conns; c != NULL; c = next) {
		next = c->next;
		if (!c->closing && !c->dead && c->holds == 0 &&
		    imap_proto_action(c->ip) == IMAP_ACT_NONE)
			say_bye(c, "* BYE [UNAVAILABLE] Server shutting down.\r\n");
	}
}

static void
tick_cb(evutil_socket_t fd, short what, void *arg)
{
	struct server *s = arg;

	(void)fd;
	(void)what;
	if (s->drain_until != 0 && time(NULL) >= s->drain_until) {
		log_warn("imap: drained for %d s, %u session%s still open: closing them",
		    IMAP_DRAIN_MAX, s->nconn, s->nconn == 1 ? "" : "s");
		event_base_loopexit(s->base, NULL);
		return;
	}
	anvil_expire(s->anvil, time(NULL));
	users_tick(&s->users, time(NULL));
}

int
imap_server_run(const int *fds, const enum imap_listener_kind *kinds, size_t nfds,
    const struct imap_server_conf *c, const char **error_r)
{
	struct server *s = xcalloc(1, sizeof(*s));
	struct door *ds = xcalloc(nfds + 1, sizeof(*ds));
	struct event *sig_term, *sig_int, *sig_drain, *tick;
	struct timeval one = { 1, 0 };
	sigset_t usr2;
	int rc = 0;

	s->c = c;
	s->params = c->params;
	s->params.tls_available = c->tls != NULL;
	if (sasl_init(error_r) < 0) {
		free(ds);
		free(s);
		return -1;
	}
	userdb_sasl_callbacks(&s->users.db, &s->sasl_cb);
	s->params.sasl_cb = &s->sasl_cb;
	if (users_open(&s->users, c->users_url, error_r) < 0) {
		free(ds);
		free(s);
		return -1;
	}
	s->base = event_base_new();
	if (s->base == NULL) {
		*error_r = "cannot create the event loop";
		users_close(&s->users);
		free(ds);
		free(s);
		return -1;
	}
	s->jobs = jobs_new(s->base, "imap-store", IMAP_STORE_THREADS, 0);
	s->auth = authcheck_new(s->base, "imap", "login answered NO [UNAVAILABLE]",
	    IMAP_AUTH_THREADS, IMAP_AUTH_QUEUE, &c->penalty, c->ban, c->ban_arg);
	s->anvil = anvil_new(60);
	for (size_t i = 0; i < nfds; i++) {
		ds[i].srv = s;
		ds[i].kind = kinds[i];
		ds[i].l = listener_new(s->base, fds[i], kinds[i] == IMAP_LISTEN_IMAPS ? "imaps" : "imap",
		    accept_cb, &ds[i]);
		if (ds[i].l == NULL) {
			*error_r = "cannot listen";
			rc = -1;
		}
	}
	s->doors = ds;
	s->ndoors = nfds;
	sig_term = evsignal_new(s->base, SIGTERM, stop_cb, s);
	sig_int = evsignal_new(s->base, SIGINT, stop_cb, s);
	sig_drain = evsignal_new(s->base, SIGUSR2, drain_cb, s);
	tick = event_new(s->base, -1, EV_PERSIST, tick_cb, s);
	evsignal_add(sig_term, NULL);
	evsignal_add(sig_int, NULL);
	evsignal_add(sig_drain, NULL);
	sigemptyset(&usr2);
	sigaddset(&usr2, SIGUSR2);
	pthread_sigmask(SIG_UNBLOCK, &usr2, NULL);
	event_add(tick, &one);
	if (rc == 0)
		event_base_dispatch(s->base);
	for (size_t i = 0; i < nfds; i++)
		listener_free(&ds[i].l);
	s->stopping = 1;
	jobs_free(&s->jobs);		/* store work in flight finishes first */
	authcheck_free(&s->auth);	/* checks in flight call back */
	while (s->conns != NULL) {
		s->conns->holds = 0;
		conn_free(s->conns);
	}
	event_free(sig_term);
	event_free(sig_int);
	event_free(sig_drain);
	event_free(tick);
	event_base_free(s->base);
	anvil_free(&s->anvil);
	users_close(&s->users);
	free(ds);
	free(s);
	return rc;
}
