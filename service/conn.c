/*
 * conn - connections for every network door (see conn.h): accept and
 * limits, plain/TLS bufferevents, deadlines and stress, hold/release,
 * flush-then-close, drain.
 *
 * Never blocks; one event loop's thread. Never logs peer bytes.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>

#include <openssl/ssl.h>

#include "common/connid.h"
#include "common/log.h"
#include "common/stats.h"
#include "common/tls.h"
#include "common/xmalloc.h"
#include "service/anvil.h"
#include "service/conn.h"
#include "service/deadline.h"
#include "service/listener.h"
#include "service/tlsbev.h"

#define CONN_MAX_LISTENERS 16
#define CONN_CLOSE_TRIES 100	/* 20 ms apart: a TLS filter's last bytes, 2 s at most */
#define CONN_PEER_MAX 256
#define CONN_FILTER_HIGH (256 * 1024)	/* a TLS filter queues this much in the socket's bev */

struct door_listener {
	struct conn_server *srv;
	struct listener *l;
	int kind;
	int tls;
};

struct conn_server {
	struct event_base *base;
	const struct conn_server_conf *cf;
	const struct conn_ops *ops;
	void *arg;
	char counter[96];		/* connections_total{door="..."} */
	struct door_listener ls[CONN_MAX_LISTENERS];
	size_t nls;
	struct conn *conns;		/* all open connections, to close at stop */
	unsigned nconn;
	int stress;
	int stopping;
	struct anvil *anvil;
	time_t drain_until;		/* draining: give up by then; 0: not draining */
	void (*drained)(void *arg);
	void *drained_arg;
};

struct conn {
	struct conn *prev, *next;
	struct conn_server *srv;
	struct bufferevent *bev;
	void *ctx;			/* the door's state */
	char id[CONNID_MAX];
	struct ipaddr addr;
	int has_addr;
	int kind;
	int tls;			/* the bev is an OpenSSL one */
	int peer_checked;
	char *peer;			/* the client certificate's identity */
	int opened;			/* ops->opened ran: closing/free are due */
	int closing;			/* close once the output is out */
	int ended;			/* ops->closing ran */
	int dead;			/* ended while held: the last release frees */
	unsigned holds;
	int paused;
	int in_input;			/* inside ops->input: defer frees and re-reads */
	int again;			/* conn_resume() during ops->input */
	int free_pending;		/* conn_close finished during ops->input */
	size_t write_low;
	unsigned timeout;		/* this connection's own; 0: the server's */
	struct event *timer;
	struct event *close_timer;
	int close_tries;
	struct deadline dl;
	int replied;			/* a reply went out: the next request begins */
	size_t in_seen;			/* input bytes already counted for the deadline */
	long long armed_due;
};

static void read_cb(struct bufferevent *bev, void *arg);
static void write_cb(struct bufferevent *bev, void *arg);
static void event_cb(struct bufferevent *bev, short what, void *arg);
static void conn_free(struct conn *c);
static void close_check(evutil_socket_t fd, short what, void *arg);

/* ---- timeouts ---- */

static unsigned
conn_timeout(const struct conn *c)
{
	const struct conn_server_conf *k = c->srv->cf;
	unsigned t = c->timeout ? c->timeout : k->timeout;

	return c->srv->stress && k->stress_timeout < t ? k->stress_timeout : t;
}

static void
arm_timer(struct conn *c)
{
	long long due = deadline_due(&c->dl, conn_timeout(c)), left;
	struct timeval tv;

	if (due == c->armed_due && evtimer_pending(c->timer, NULL))
		return;		/* most reads change nothing: spare the timer heap */
	left = due - deadline_now_ms();
	if (left < 0)
		left = 0;
	tv.tv_sec = (time_t)(left / 1000);
	tv.tv_usec = (suseconds_t)(left % 1000) * 1000;
	evtimer_add(c->timer, &tv);
	c->armed_due = due;
}

/* a client that reads nothing is cut after the timeout in force too */
static void
set_write_timeout(struct conn *c)
{
	struct timeval tv = { conn_timeout(c), 0 };

	bufferevent_set_timeouts(c->bev, NULL, &tv);
}

static void
timed_out(struct conn *c)
{
	const char *w = c->srv->cf->words_timeout;
	char who[CIDR_TEXT_MAX];
	struct timeval tv = { 5, 0 };
	const char *what = c->srv->cf->message_name != NULL ? c->srv->cf->message_name
	    : "message data";
	int in_msg = c->srv->ops->in_message != NULL && c->srv->ops->in_message(c);

	log_info("%s: conn=%s timeout after %u s%s%s%s from [%s]", c->srv->cf->door, c->id,
	    conn_timeout(c), in_msg ? " in " : "", in_msg ? what : "",
	    c->srv->stress ? " (stress)" : "", conn_addr_text(c, who));
	if (c->srv->ops->timed_out != NULL && c->opened)
		c->srv->ops->timed_out(c);
	c->closing = 1;
	c->write_low = 0;
	bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
	evtimer_del(c->timer);
	bufferevent_disable(c->bev, EV_READ);
	bufferevent_set_timeouts(c->bev, &tv, &tv);
	if (w != NULL)
		bufferevent_write(c->bev, w, strlen(w));
	bufferevent_enable(c->bev, EV_WRITE);
	/* a TLS filter may have passed the words on to the socket's
	 * bufferevent already: close_check waits for that one too */
	if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
		close_check(-1, 0, c);
}

static void
timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;
	long long now = deadline_now_ms();

	(void)fd;
	(void)what;
	if (c->closing || c->dead)
		return;
	if (c->holds > 0 || c->paused || !(bufferevent_get_enabled(c->bev) & EV_READ) ||
	    evbuffer_get_length(bufferevent_get_output(c->bev)) > 0) {
		/* our turn, not the client's: its clock starts with our answer
		 * (a client that reads nothing meets the write timeout) */
		deadline_request(&c->dl, now);
		arm_timer(c);
		return;
	}
	if (now < deadline_due(&c->dl, conn_timeout(c))) {
		arm_timer(c);	/* stress is over, or data earned time */
		return;
	}
	timed_out(c);
}

/* Postfix's stress mode: short timeouts while the door is nearly full */
static void
update_stress(struct conn_server *s)
{
	unsigned max = s->cf->max_connections;

	if (max == 0 || s->stopping)
		return;
	if (!s->stress && s->nconn * 5 > max * 4) {
		s->stress = 1;
		log_warn("%s: stress: %u of %u connections in use; timeouts drop to %u s", s->cf->door,
		    s->nconn, max,
		    s->cf->stress_timeout < s->cf->timeout ? s->cf->stress_timeout : s->cf->timeout);
	} else if (s->stress && s->nconn * 10 <= max * 7) {
		s->stress = 0;
		log_info("%s: stress over: %u of %u connections in use; timeouts back to %u s",
		    s->cf->door, s->nconn, max, s->cf->timeout);
	} else {
		return;
	}
	for (struct conn *c = s->conns; c != NULL; c = c->next)
		if (!c->closing && !c->dead) {
			set_write_timeout(c);
			if (s->stress)
				arm_timer(c);	/* sooner; after stress the timers re-arm when they fire */
		}
}

/* ---- life and death ---- */

void
conn_hold(struct conn *c)
{
	c->holds++;
}

int
conn_release(struct conn *c)
{
	if (c->holds == 0)
		panic("conn=%s released more often than held", c->id);
	c->holds--;
	if (!c->dead)
		return 0;
	if (c->holds == 0)
		conn_free(c);
	return 1;
}

/* the connection ends: the door hears it once; freed once nothing holds it */
static void
conn_free(struct conn *c)
{
	struct conn_server *s = c->srv;
	char who[CIDR_TEXT_MAX];

	if (c->in_input) {	/* ops->input is on the stack: after it returns */
		c->free_pending = 1;
		return;
	}
	if (!c->ended) {
		c->ended = 1;
		if (c->opened && s->ops->closing != NULL)
			s->ops->closing(c);
	}
	if (c->holds > 0) {	/* a callback will come: the last release frees */
		c->dead = 1;
		bufferevent_disable(c->bev, EV_READ | EV_WRITE);
		if (c->timer != NULL)
			evtimer_del(c->timer);
		return;
	}
	if (c->has_addr)
		(void)anvil_disconnect(s->anvil, &c->addr, time(NULL));
	log_debug("%s: conn=%s disconnect from [%s]", s->cf->door, c->id, conn_addr_text(c, who));
	if (c->opened && s->ops->free != NULL)
		s->ops->free(c);
	if (c->close_timer != NULL)
		event_free(c->close_timer);
	if (c->timer != NULL)
		event_free(c->timer);
	s->nconn--;
	update_stress(s);
	if (c->prev)
		c->prev->next = c->next;
	else
		s->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	bufferevent_free(c->bev);
	free(c->peer);
	free(c);
	if (s->drain_until != 0 && s->nconn == 0 && s->drained != NULL) {
		void (*cb)(void *) = s->drained;

		s->drained = NULL;
		cb(s->drained_arg);
	}
}

/*
 * Close once the last reply is on the wire. Behind a STARTTLS filter the
 * filter's output empties into the socket's bufferevent first: wait for
 * that one too, or the last words would be lost.
 */
static void
close_check(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;
	struct bufferevent *under = bufferevent_get_underlying(c->bev);

	(void)fd;
	(void)what;
	if (c->dead)
		return;
	if (evbuffer_get_length(bufferevent_get_output(c->bev)) > 0)
		return;		/* write_cb comes back once it is out */
	if (under != NULL && evbuffer_get_length(bufferevent_get_output(under)) > 0 &&
	    c->close_tries++ < CONN_CLOSE_TRIES) {
		struct timeval tv = { 0, 20000 };

		if (c->close_timer == NULL)
			c->close_timer = evtimer_new(c->srv->base, close_check, c);
		evtimer_add(c->close_timer, &tv);
		return;
	}
	conn_free(c);
}

void
conn_close(struct conn *c)
{
	if (c->dead)
		return;
	c->closing = 1;
	c->write_low = 0;	/* write_cb once the output is empty, not below a mark */
	bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
	bufferevent_disable(c->bev, EV_READ);
	bufferevent_enable(c->bev, EV_WRITE);
	if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
		close_check(-1, 0, c);
}

/* ---- I/O ---- */

void
conn_write(struct conn *c, const void *p, size_t n)
{
	if (n == 0 || c->dead)
		return;
	c->replied = 1;
	/* on a plain connection with nothing queued the reply goes straight
	 * to the socket: no write event's epoll_ctl pair, no loop turn */
	if (!c->tls && !c->closing && evbuffer_get_length(bufferevent_get_output(c->bev)) == 0) {
		ssize_t w = send(bufferevent_getfd(c->bev), p, n, MSG_DONTWAIT | MSG_NOSIGNAL);

		if (w > 0) {
			p = (const char *)p + w;
			n -= (size_t)w;
		}
	}
	if (n > 0)
		bufferevent_write(c->bev, p, n);
}

size_t
conn_output_pending(const struct conn *c)
{
	return evbuffer_get_length(bufferevent_get_output(c->bev));
}

void
conn_set_write_low(struct conn *c, size_t low)
{
	c->write_low = low;
	bufferevent_setwatermark(c->bev, EV_WRITE, low, 0);
}

struct evbuffer *
conn_input(const struct conn *c)
{
	return bufferevent_get_input(c->bev);
}

/* the input is taken for now: the deadline after what came and went */
static void
input_done(struct conn *c)
{
	if (c->dead)
		return;
	if (c->replied) {	/* answered: the next request's clock starts */
		c->replied = 0;
		deadline_request(&c->dl, deadline_now_ms());
	}
	c->in_seen = evbuffer_get_length(bufferevent_get_input(c->bev));
	if (!c->closing)
		arm_timer(c);
}

/* feed the door what waits, again while it resumed itself meanwhile */
static void
conn_feed(struct conn *c)
{
	struct conn_server *s = c->srv;

	if (c->in_input) {
		c->again = 1;
		return;
	}
	c->in_input = 1;
	do {
		c->again = 0;
		if (c->closing || c->dead || c->paused || c->holds > 0 || s->stopping)
			break;
		if (evbuffer_get_length(bufferevent_get_input(c->bev)) == 0)
			break;
		s->ops->input(c);
	} while (c->again);
	c->in_input = 0;
	if (c->free_pending) {
		c->free_pending = 0;
		conn_free(c);
		return;
	}
	input_done(c);
	if (c->closing && !c->dead)
		conn_close(c);
}

static void
read_cb(struct bufferevent *bev, void *arg)
{
	struct conn *c = arg;
	size_t len = evbuffer_get_length(bufferevent_get_input(bev));

	if (c->srv->stopping)
		return;		/* shutting down: finish what runs, start nothing */
	if (len > c->in_seen)
		deadline_read(&c->dl, len - c->in_seen,
		    c->srv->ops->in_message != NULL && c->srv->ops->in_message(c), deadline_now_ms());
	conn_feed(c);
}

void
conn_set_timeout(struct conn *c, unsigned seconds)
{
	c->timeout = seconds;
	if (c->closing || c->dead)
		return;
	set_write_timeout(c);
	arm_timer(c);
}

void
conn_pause(struct conn *c)
{
	c->paused = 1;
	if (!c->dead)
		bufferevent_disable(c->bev, EV_READ);
}

void
conn_resume(struct conn *c)
{
	c->paused = 0;
	if (c->dead || c->closing)
		return;
	bufferevent_enable(c->bev, EV_READ);
	conn_feed(c);	/* pipelined input may be waiting */
}

static void
write_cb(struct bufferevent *bev, void *arg)
{
	struct conn *c = arg;

	(void)bev;
	if (c->closing) {
		close_check(-1, 0, c);
		return;
	}
	if (c->write_low > 0 && c->srv->ops->writable != NULL && !c->dead)
		c->srv->ops->writable(c);
}

static void
event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct conn *c = arg;

	if (what & BEV_EVENT_CONNECTED) {	/* a TLS handshake completed */
		if (c->srv->ops->tls_ready != NULL && !c->closing && !c->dead)
			c->srv->ops->tls_ready(c);
		return;
	}
	if ((what & BEV_EVENT_TIMEOUT) && !c->closing) {	/* a write: the client reads nothing */
		timed_out(c);
		return;
	}
	if ((what & BEV_EVENT_ERROR) && c->tls) {
		char buf[200], who[CIDR_TEXT_MAX];

		if (tlsbev_error(bev, buf, sizeof(buf)))
			log_info("%s: conn=%s TLS error from [%s]: %s", c->srv->cf->door, c->id,
			    conn_addr_text(c, who), buf);
	}
	conn_free(c);
}

int
conn_starttls(struct conn *c)
{
	struct conn_server *s = c->srv;
	struct bufferevent *tb;

	if (s->cf->tls == NULL || c->tls ||
	    (tb = tlsbev_starttls(s->base, c->bev, s->cf->tls)) == NULL) {
		log_error("%s: conn=%s cannot start TLS", s->cf->door, c->id);
		conn_close(c);
		return -1;
	}
	/* the filter fills the socket's bufferevent only up to its high mark:
	 * without one a fast producer queues a whole message there */
	bufferevent_setwatermark(c->bev, EV_WRITE, 0, CONN_FILTER_HIGH);
	c->bev = tb;
	c->tls = 1;
	c->in_seen = 0;
	bufferevent_setcb(tb, read_cb, write_cb, event_cb, c);
	if (c->write_low > 0)
		bufferevent_setwatermark(tb, EV_WRITE, c->write_low, 0);
	set_write_timeout(c);	/* reads: the request's deadline */
	bufferevent_enable(tb, EV_WRITE);
	if (!c->paused)
		bufferevent_enable(tb, EV_READ);
	return 0;
}

/* ---- accessors ---- */

struct conn_server *conn_server(const struct conn *c) { return c->srv; }
void *conn_ctx(const struct conn *c) { return c->ctx; }
void conn_set_ctx(struct conn *c, void *ctx) { c->ctx = ctx; }
const char *conn_id(const struct conn *c) { return c->id; }
const struct ipaddr *conn_addr(const struct conn *c) { return c->has_addr ? &c->addr : NULL; }
int conn_kind(const struct conn *c) { return c->kind; }
int conn_is_tls(const struct conn *c) { return c->tls; }
struct bufferevent *conn_bev(const struct conn *c) { return c->bev; }
int conn_is_closing(const struct conn *c) { return c->closing || c->dead; }

const char *
conn_addr_text(const struct conn *c, char buf[CIDR_TEXT_MAX])
{
	return c->has_addr ? cidr_addr_format(&c->addr, buf) : "unknown";
}

SSL *
conn_ssl(const struct conn *c)
{
	return c->tls ? bufferevent_openssl_get_ssl(c->bev) : NULL;
}

const char *
conn_tls_peer(struct conn *c)
{
	SSL *ssl = conn_ssl(c);

	if (!c->peer_checked && ssl != NULL && SSL_is_init_finished(ssl)) {
		char id[CONN_PEER_MAX];

		c->peer_checked = 1;
		if (tls_peer_identity(ssl, id, sizeof(id)) == 0)
			c->peer = xstrdup(id);
	}
	return c->peer;
}

/* ---- the server ---- */

static void
refuse(struct conn *c, const char *words)
{
	if (words != NULL)
		bufferevent_write(c->bev, words, strlen(words));
	conn_close(c);
}

static void
accept_cb(void *arg, int fd, struct sockaddr *sa, socklen_t salen)
{
	struct door_listener *li = arg;
	struct conn_server *s = li->srv;
	struct conn *c;
	unsigned per_client = 0;
	char who[CIDR_TEXT_MAX];
	struct bufferevent *bev;

	(void)salen;
	if (sa->sa_family == AF_INET || sa->sa_family == AF_INET6) {
		/* replies go out as written: with Nagle a reply written after
		 * another one still unacknowledged waits for the client's
		 * delayed ACK (40 ms a RETR, measured) */
		int one = 1;

		(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	}
	bev = li->tls ? tlsbev_accept(s->base, fd, s->cf->tls)
	    : bufferevent_socket_new(s->base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (bev == NULL) {
		log_error("%s: cannot make a connection (TLS: %s)", s->cf->door, li->tls ? "yes" : "no");
		close(fd);
		return;
	}
	stats_add(s->counter, 1);
	c = xcalloc(1, sizeof(*c));
	c->srv = s;
	c->bev = bev;
	c->tls = li->tls;
	c->kind = li->kind;
	c->next = s->conns;
	if (s->conns)
		s->conns->prev = c;
	s->conns = c;
	c->has_addr = cidr_addr_from_sockaddr(sa, &c->addr) == 0;
	connid_new(c->id);
	log_debug("%s: conn=%s connect from [%s]%s", s->cf->door, c->id, conn_addr_text(c, who),
	    c->tls ? " (TLS)" : "");
	s->nconn++;
	if (c->has_addr)
		per_client = anvil_connect(s->anvil, &c->addr, time(NULL));
	bufferevent_setcb(bev, read_cb, write_cb, event_cb, c);
	set_write_timeout(c);	/* reads: the request's deadline */
	c->timer = evtimer_new(s->base, timer_cb, c);
	deadline_init(&c->dl, s->cf->request_deadline, s->cf->min_data_rate, deadline_now_ms());
	arm_timer(c);
	update_stress(s);
	if (s->cf->max_connections && s->nconn > s->cf->max_connections) {
		log_info("%s: conn=%s refused [%s]: %u connections in use", s->cf->door, c->id,
		    conn_addr_text(c, who), s->nconn - 1);
		refuse(c, s->cf->words_too_many);
		return;
	}
	if (s->cf->max_per_client && per_client > s->cf->max_per_client) {
		log_info("%s: conn=%s refused [%s]: %u connections from that address", s->cf->door,
		    c->id, conn_addr_text(c, who), per_client - 1);
		refuse(c, s->cf->words_too_many_client);
		return;
	}
	c->opened = 1;
	c->in_input = 1;	/* a close in opened() frees after it */
	s->ops->opened(c);
	c->in_input = 0;
	if (c->free_pending) {
		c->free_pending = 0;
		conn_free(c);
		return;
	}
	if (c->closing) {
		conn_close(c);
		return;
	}
	/* the client's first request starts with the greeting */
	c->replied = 0;
	deadline_request(&c->dl, deadline_now_ms());
	arm_timer(c);
	bufferevent_enable(bev, EV_WRITE);
	if (!c->paused)
		bufferevent_enable(bev, EV_READ);
}

struct conn_server *
conn_server_new(struct event_base *base, const struct conn_server_conf *cf,
    const struct conn_ops *ops, void *arg)
{
	struct conn_server *s = xcalloc(1, sizeof(*s));

	s->base = base;
	s->cf = cf;
	s->ops = ops;
	s->arg = arg;
	s->anvil = anvil_new(60);
	snprintf(s->counter, sizeof(s->counter), "connections_total{door=\"%s\"}", cf->door);
	return s;
}

int
conn_server_listen(struct conn_server *s, int fd, const char *name, int kind, int tls,
    const char **error_r)
{
	struct door_listener *li;

	if (s->nls >= CONN_MAX_LISTENERS) {
		*error_r = "too many listeners";
		return -1;
	}
	if (tls && s->cf->tls == NULL) {
		*error_r = "implicit TLS without a certificate";
		return -1;
	}
	li = &s->ls[s->nls];
	li->srv = s;
	li->kind = kind;
	li->tls = tls;
	li->l = listener_new(s->base, fd, name, accept_cb, li);
	if (li->l == NULL) {
		*error_r = "cannot listen";
		return -1;
	}
	s->nls++;
	return 0;
}

static void
drop_listeners(struct conn_server *s)
{
	for (size_t i = 0; i < s->nls; i++)
		listener_free(&s->ls[i].l);
}

void
conn_server_drain(struct conn_server *s, unsigned seconds, void (*drained)(void *arg), void *arg)
{
	if (s->drain_until != 0)
		return;
	drop_listeners(s);
	s->drain_until = time(NULL) + (time_t)(seconds > 0 ? seconds : 1);
	s->drained = drained;
	s->drained_arg = arg;
	log_info("%s: draining for a reload: %u session%s left, none accepted", s->cf->door,
	    s->nconn, s->nconn == 1 ? "" : "s");
	if (s->nconn == 0 && s->drained != NULL) {
		s->drained = NULL;
		drained(arg);
	}
}

int
conn_server_is_draining(const struct conn_server *s)
{
	return s->drain_until != 0;
}

void
conn_server_tick(struct conn_server *s, time_t now)
{
	anvil_expire(s->anvil, now);
	if (s->drain_until != 0 && now >= s->drain_until && s->drained != NULL) {
		void (*cb)(void *) = s->drained;

		log_warn("%s: drained for its timeout, %u session%s still open: closing them",
		    s->cf->door, s->nconn, s->nconn == 1 ? "" : "s");
		s->drained = NULL;
		cb(s->drained_arg);
	}
}

void
conn_server_stop(struct conn_server *s)
{
	drop_listeners(s);
	s->stopping = 1;
}

void
conn_server_free(struct conn_server **sp)
{
	struct conn_server *s = *sp;

	if (s == NULL)
		return;
	drop_listeners(s);
	s->stopping = 1;
	s->drained = NULL;
	while (s->conns != NULL) {
		struct conn *c = s->conns;

		c->holds = 0;	/* the pools are gone: no callback comes */
		c->in_input = 0;
		c->dead = 0;
		conn_free(c);
	}
	anvil_free(&s->anvil);
	free(s);
	*sp = NULL;
}

void *conn_server_arg(const struct conn_server *s) { return s->arg; }
struct event_base *conn_server_base(const struct conn_server *s) { return s->base; }
unsigned conn_server_count(const struct conn_server *s) { return s->nconn; }
int conn_server_is_stressed(const struct conn_server *s) { return s->stress; }
