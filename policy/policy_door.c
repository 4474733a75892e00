/*
 * policy_door - the Postfix SMTPD access policy server (check_policy_service):
 * a libevent loop that reads requests with policy_proto, answers each with
 * policy_check, and keeps the connection for the next one.
 *
 *   policy_door_listen()  bind "inet:HOST:PORT", "inet:[ADDR]:PORT" or
 *                         "unix:/path" through service/listener, as every door
 *   policy_door_run()     the loop, until SIGTERM/SIGINT, or until
 *                         drained after SIGUSR2
 *
 * Bounded everywhere: at most max_connections clients; a request must
 * arrive whole within request_timeout of its first byte and an idle
 * connection closes after idle_timeout (more than Postfix's
 * smtpd_policy_service_max_idle, so Postfix closes first); answers that the
 * peer does not read stop the reading past POLICY_OUT_MAX; a request too
 * long to resynchronise gets a DEFER_IF_PERMIT answer and the connection is
 * closed once that is flushed. Never blocks: the engine reads the
 * lock-free snapshot. One thread.
 *
 * SIGUSR2 (live reload: a new worker already serves the same listeners)
 * drains: accept nothing more, close each connection once it has no request
 * under way (Postfix's policy client reconnects, to the new worker, and
 * retries), return when none is left or after idle_timeout.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "common/conf.h"
#include "common/connid.h"
#include "common/log.h"
#include "common/pclimits.h"
#include "common/stats.h"
#include "common/xmalloc.h"
#include "policy/policy_check.h"
#include "policy/policy_door.h"
#include "service/listener.h"

#define POLICY_OUT_MAX 65536	/* unread answers queued before reading pauses */

struct door {
	const struct policy_door_env *env;
	struct event_base *base;
	struct pconn *conns;
	unsigned nconn;
	time_t full_logged;	/* last "too many connections" line */
	struct listener **ls;	/* dropped when draining */
	size_t nls;
	int draining;		/* SIGUSR2: close each connection when it is between requests */
};

struct pconn {
	struct pconn *prev, *next;
	struct door *d;
	struct bufferevent *bev;
	struct event *deadline;	/* the request under way must be whole by then */
	int closing;		/* flush, then free */
	int paused;		/* reading stopped until the peer reads our answers */
	int warned;		/* one malformed-request line per connection */
	char peer[CIDR_TEXT_MAX + 8];
	char id[CONNID_MAX];	/* "conn=ID" on the connection's log lines */
	struct policy_parser parser;
};

struct policy_door_conf *
policy_door_conf_new(const struct conf *c, const char **error_r)
{
	static char err[600];
	struct policy_door_conf *pc = xcalloc(1, sizeof(*pc));

	pc->env.max_connections = (unsigned)conf_get_int(c, "policy_max_connections");
	pc->env.idle_timeout = (unsigned)conf_get_int(c, "policy_idle_timeout");
	pc->env.request_timeout = (unsigned)conf_get_int(c, "policy_timeout");
	pc->listen = conf_get_list(c, "policy_listen", &pc->nlisten);
	if (pc->nlisten > MAX_LISTENERS) {	/* refused, never dropped */
		snprintf(err, sizeof(err), "%s: policy_listen: too many listeners (at most %d)",
		    conf_where(c, "policy_listen"), MAX_LISTENERS);
		goto fail;
	}
	if (pc->nlisten == 0) {
		snprintf(err, sizeof(err), "%s: policy_listen: nothing to listen on",
		    conf_where(c, "policy_listen"));
		goto fail;
	}
	for (size_t j = 0; j < pc->nlisten; j++) {
		/* what binding would parse, without binding (unix: in conf) */
		struct sockaddr_storage ss;
		socklen_t sl;
		const char *e;

		if (strncmp(pc->listen[j], "inet:", 5) == 0 &&
		    listener_parse(pc->listen[j] + 5, "policy_listen", &ss, &sl, &e) < 0) {
			snprintf(err, sizeof(err), "%s: %s", conf_where(c, "policy_listen"), e);
			goto fail;
		}
	}
	return pc;
fail:
	*error_r = err;
	policy_door_conf_free(&pc);
	return NULL;
}

void
policy_door_conf_free(struct policy_door_conf **pcp)
{
	struct policy_door_conf *pc = *pcp;

	if (pc == NULL)
		return;
	conf_list_free(pc->listen);
	free(pc);
	*pcp = NULL;
}

int
policy_door_listen(const char *spec, const char **error_r)
{
	static char err[400];
	int fd;

	if (strncmp(spec, "inet:", 5) == 0 && strncmp(spec + 5, "unix:", 5) != 0) {
		/* Postfix's form of the service's HOST:PORT / [ADDRESS]:PORT */
		if (listener_bind(spec + 5, "policy_listen", &fd, error_r) < 0) {
			snprintf(err, sizeof(err), "%s (policy_listen takes inet:HOST:PORT, "
			    "inet:[ADDRESS]:PORT or unix:/PATH)", *error_r);
			*error_r = err;
			return -1;
		}
		return fd;
	}
	if (strncmp(spec, "unix:", 5) != 0 || spec[5] != '/' ||
	    listener_bind(spec, "policy_listen", &fd, error_r) < 0) {
		if (strncmp(spec, "unix:", 5) != 0 || spec[5] != '/')
			snprintf(err, sizeof(err), "policy_listen = %.200s: expected inet:HOST:PORT, "
			    "inet:[ADDRESS]:PORT or unix:/PATH", spec);
		else
			snprintf(err, sizeof(err), "%s", *error_r);
		*error_r = err;
		return -1;
	}
	return fd;
}

static void
conn_free(struct pconn *c)
{
	struct door *d = c->d;

	if (c->prev != NULL)
		c->prev->next = c->next;
	else
		d->conns = c->next;
	if (c->next != NULL)
		c->next->prev = c->prev;
	d->nconn--;
	event_free(c->deadline);
	bufferevent_free(c->bev);
	free(c);
	if (d->draining && d->nconn == 0)
		event_base_loopexit(d->base, NULL);	/* drained */
}

/* stop reading; free once the answers are out (the write timeout bounds it) */
static void
conn_close(struct pconn *c)
{
	c->closing = 1;
	bufferevent_disable(c->bev, EV_READ);
	evtimer_del(c->deadline);
	if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
		conn_free(c);
}

static void
answer(struct pconn *c, const struct policy_request *req, int fatal)
{
	const struct policy_door_env *env = c->d->env;
	char action[MAX_POLICY_ACTION], out[MAX_POLICY_ANSWER];
	size_t n;

	if (req->error != NULL) {
		if (!c->warned) {
			log_warn("conn=%s policy: malformed request from %s: %s%s", c->id, c->peer, req->error,
			    fatal ? "; closing" : "");
			c->warned = 1;
		}
		policy_check_malformed(req->error, action, sizeof(action));
	} else {
		unsigned ticket;
		const struct snapshot *snap = snapref_acquire(env->snaps, &ticket);
		struct verdict v;

		policy_check(req, env->pol, snap, (long long)time(NULL), action, sizeof(action), &v,
		    c->id);
		snapref_release(env->snaps, ticket);
		if (v.ban_seconds > 0 && env->ban != NULL) {
			struct ipaddr a;

			if (cidr_addr_parse(req->attr[PA_CLIENT_ADDRESS], &a) == 0)
				env->ban(env->ban_arg, &a, v.ban_seconds, v.tag);
		}
	}
	/* refusals are counted by engine_log() as verdicts; every answer here */
	stats_addf(1, "policy_answers_total{action=\"%s\"}", req->error != NULL ? "malformed" :
	    action[0] == '4' ? "defer" : action[0] == '5' ? "reject" :
	    strcmp(action, "OK") == 0 ? "OK" : strcmp(action, "DUNNO") == 0 ? "DUNNO" : "other");
	n = policy_answer_format(out, sizeof(out), action);
	bufferevent_write(c->bev, out, n);
}

/* feed what has arrived; answer every complete request */
static void
serve(struct pconn *c)
{
	struct evbuffer *in = bufferevent_get_input(c->bev);
	struct evbuffer *out = bufferevent_get_output(c->bev);
	int answered = 0;

	while (!c->closing && evbuffer_get_length(in) > 0) {
		struct evbuffer_iovec v;
		const struct policy_request *req;
		enum policy_feed st;
		size_t used = 0;

		if (evbuffer_get_length(out) > POLICY_OUT_MAX) {
			/* the peer sends but does not read: wait for write_cb */
			c->paused = 1;
			bufferevent_disable(c->bev, EV_READ);
			evtimer_del(c->deadline);	/* the write timeout runs now */
			return;
		}
		if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
			break;
		st = policy_parser_feed(&c->parser, v.iov_base, v.iov_len, &used, &req);
		evbuffer_drain(in, used);
		if (st == POLICY_FEED_MORE)
			continue;
		answer(c, req, st == POLICY_FEED_FATAL);
		answered = 1;
		if (st == POLICY_FEED_FATAL) {
			conn_close(c);
			return;
		}
	}
	if (answered)
		evtimer_del(c->deadline);	/* the next request has its own */
	if (c->d->draining && !c->closing && !policy_parser_is_partial(&c->parser) &&
	    evbuffer_get_length(in) == 0) {
		conn_close(c);	/* between requests: the client reconnects to the new worker */
		return;
	}
	if (policy_parser_is_partial(&c->parser)) {
		if (!evtimer_pending(c->deadline, NULL)) {
			struct timeval tv = { (time_t)c->d->env->request_timeout, 0 };

			evtimer_add(c->deadline, &tv);
		}
	} else {
		evtimer_del(c->deadline);
	}
}

static void
read_cb(struct bufferevent *bev, void *arg)
{
	(void)bev;
	serve(arg);
}

static void
write_cb(struct bufferevent *bev, void *arg)
{
	struct pconn *c = arg;

	(void)bev;
	if (c->closing) {
		conn_free(c);
		return;
	}
	if (c->paused) {
		c->paused = 0;
		bufferevent_enable(c->bev, EV_READ);
		serve(c);
	}
}

static void
event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct pconn *c = arg;

	(void)bev;
	if ((what & BEV_EVENT_TIMEOUT) && (what & BEV_EVENT_WRITING))
		log_warn("conn=%s policy: %s does not read its answers; closing", c->id, c->peer);
	else if ((what & BEV_EVENT_TIMEOUT) && log_is_debug())
		log_debug("conn=%s policy: %s idle for %us, closing", c->id, c->peer, c->d->env->idle_timeout);
	/* EOF, error or timeout: nothing more can be answered */
	conn_free(c);
}

static void
deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pconn *c = arg;

	(void)fd;
	(void)what;
	log_warn("conn=%s policy: %s did not finish a request within %us; closing", c->id, c->peer,
	    c->d->env->request_timeout);
	conn_free(c);
}

static void
accept_cb(void *arg, int fd, struct sockaddr *sa, socklen_t salen)
{
	struct door *d = arg;
	struct pconn *c;
	struct ipaddr a;
	struct timeval idle = { (time_t)d->env->idle_timeout, 0 };
	struct timeval wr = { (time_t)d->env->request_timeout, 0 };
	char buf[CIDR_TEXT_MAX];

	(void)salen;
	if (d->nconn >= d->env->max_connections) {
		time_t now = time(NULL);

		if (now != d->full_logged)
			log_warn("policy: %u connections (policy_max_connections): refusing more",
			    d->nconn);
		d->full_logged = now;
		evutil_closesocket(fd);
		return;
	}
	c = xcalloc(1, sizeof(*c));
	c->d = d;
	connid_new(c->id);
	if (cidr_addr_from_sockaddr(sa, &a) == 0)
		snprintf(c->peer, sizeof(c->peer), "[%s]", cidr_addr_format(&a, buf));
	else
		snprintf(c->peer, sizeof(c->peer), "local socket");
	policy_parser_init(&c->parser);
	c->bev = bufferevent_socket_new(d->base, fd, BEV_OPT_CLOSE_ON_FREE);
	c->deadline = evtimer_new(d->base, deadline_cb, c);
	if (c->bev == NULL || c->deadline == NULL) {
		log_error("policy: cannot set up a connection");
		if (c->bev != NULL)
			bufferevent_free(c->bev);
		else
			evutil_closesocket(fd);
		if (c->deadline != NULL)
			event_free(c->deadline);
		free(c);
		return;
	}
	c->next = d->conns;
	if (d->conns != NULL)
		d->conns->prev = c;
	d->conns = c;
	d->nconn++;
	stats_add("connections_total{door=\"policy\"}", 1);
	bufferevent_setcb(c->bev, read_cb, write_cb, event_cb, c);
	bufferevent_set_timeouts(c->bev, &idle, &wr);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

static void
stop_cb(evutil_socket_t sig, short what, void *arg)
{
	struct door *d = arg;

	(void)what;
	log_info("policy: signal %d, stopping", (int)sig);
	event_base_loopexit(d->base, NULL);
}

/* live reload: the new worker takes the listeners; we finish what runs */
static void
drain_cb(evutil_socket_t sig, short what, void *arg)
{
	struct door *d = arg;
	struct timeval bound = { (time_t)d->env->idle_timeout, 0 };
	struct pconn *next;

	(void)sig;
	(void)what;
	if (d->draining)
		return;
	d->draining = 1;
	for (size_t i = 0; i < d->nls; i++)
		listener_free(&d->ls[i]);
	log_info("policy: draining for a reload: %u connection%s left, none accepted", d->nconn,
	    d->nconn == 1 ? "" : "s");
	for (struct pconn *c = d->conns; c != NULL; c = next) {
		next = c->next;
		if (!c->closing && !c->paused && !policy_parser_is_partial(&c->parser) &&
		    evbuffer_get_length(bufferevent_get_input(c->bev)) == 0)
			conn_close(c);
	}
	if (d->nconn == 0)
		event_base_loopexit(d->base, NULL);
	else
		event_base_loopexit(d->base, &bound);
}

int
policy_door_run(const int *fds, size_t nfds, const struct policy_door_env *env,
    const char **error_r)
{
	struct door *d = xcalloc(1, sizeof(*d));
	struct listener **ls = xcalloc(nfds + 1, sizeof(*ls));
	struct event *sig_term, *sig_int, *sig_drain;
	sigset_t usr2;
	int rc = 0;

	d->env = env;
	d->base = event_base_new();
	if (d->base == NULL) {
		*error_r = "cannot create the event loop";
		free(ls);
		free(d);
		return -1;
	}
	for (size_t i = 0; i < nfds; i++) {
		ls[i] = listener_new(d->base, fds[i], "policy", accept_cb, d);
		if (ls[i] == NULL) {
			*error_r = "cannot listen";
			rc = -1;
		}
	}
	sig_term = evsignal_new(d->base, SIGTERM, stop_cb, d);
	sig_int = evsignal_new(d->base, SIGINT, stop_cb, d);
	sig_drain = evsignal_new(d->base, SIGUSR2, drain_cb, d);
	evsignal_add(sig_term, NULL);
	evsignal_add(sig_int, NULL);
	evsignal_add(sig_drain, NULL);
	d->ls = ls;
	d->nls = nfds;
	/* the master spawns us with SIGUSR2 blocked: one sent early waits for us */
	sigemptyset(&usr2);
	sigaddset(&usr2, SIGUSR2);
	pthread_sigmask(SIG_UNBLOCK, &usr2, NULL);
	if (rc == 0)
		event_base_dispatch(d->base);
	for (size_t i = 0; i < nfds; i++)
		listener_free(&ls[i]);
	while (d->conns != NULL)
		conn_free(d->conns);
	event_free(sig_term);
	event_free(sig_int);
	event_free(sig_drain);
	event_base_free(d->base);
	free(ls);
	free(d);
	return rc;
}
