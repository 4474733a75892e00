/*
 * smtp_server - the SMTP gateway's event loop (libevent): accept, feed bytes
 * to smtp_proto, write its replies, deliver its messages into the Maildir
 * store or stream them downstream, TLS (STARTTLS, implicit), client name
 * lookups (evdns), connection limits and timeouts.
 *
 *   smtp_server_listen()   bind one "HOST:PORT" (done by the master, so a
 *                          restarted worker inherits the socket)
 *   smtp_server_run()      the loop, until SIGTERM/SIGINT
 *
 * The loop never waits: Maildir writes and fsyncs and password checks run on
 * a pool of job threads whose completions come back on the loop; a
 * connection a job still points at is freed only when the job is done.
 * Pass-through sessions are non-blocking clients on the loop itself
 * (downstream.c): closing one guarantees no callback for its connection.
 * The user database is reloaded when its file changes (checked each second).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>
#include <event2/listener.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "common/log.h"
#include "common/xmalloc.h"
#include "smtp-gateway/jobs.h"
#include "smtp-gateway/smtp_server.h"
#include "smtp-gateway/downstream.h"
#include "storage-adapter/crammd5.h"
#include "storage-adapter/maildir.h"
#include "storage-adapter/userdb.h"

#define PER_CLIENT_SLOTS 1024
#define SMTP_DELIVERY_THREADS 8	/* concurrent fsyncs let the file system group commits */
#define SMTP_STREAM_MIN 65536		/* pass a streamed message on in pieces this big */
#define SMTP_STREAM_QUEUE (1024 * 1024)	/* at most this much waits for a slow downstream */

struct listener {
	struct server *srv;
	enum smtp_listener_kind kind;
	struct evconnlistener *l;
};

struct server {
	const struct smtp_server_conf *c;
	struct jobs *jobs;		/* fsync and password hashing */
	struct downstream_set *downs;	/* pass-through sessions, on this loop */
	struct evdns_base *dns;		/* client name lookups, or NULL */
	int stopping;			/* no new work while the pools drain */
	struct smtp_params params;
	struct event_base *base;
	struct userdb *users;
	unsigned nconn;
	struct conn *conns;
	struct { struct ipaddr addr; unsigned n; } per[PER_CLIENT_SLOTS];
	char errbuf[300];
};

struct conn {
	struct conn *prev, *next;	/* all open connections, to close at stop */
	struct server *srv;
	struct bufferevent *bev;
	struct smtp_proto *sp;
	struct ipaddr addr;
	int has_addr;
	int closing;
	int delivering;		/* a delivery job holds this connection */
	int tls;		/* the bev is an OpenSSL one, handshake pending or done */
	int dead;		/* the peer went away while delivering */
	struct downstream *ds;	/* an open pass-through session */
	char ptrname[256];	/* the reverse name being forward-confirmed */
	struct event *close_timer;
	int close_tries;
	int down_wait;		/* the downstream's reply is awaited (input paused) */
	int ds_data;		/* DATA went to ds */
};

struct delivery {
	struct conn *c;
	struct maildir_rcpt *r;
	char **split;
	size_t n;
	char *head;
	const char *data;
	size_t len;
	const char *root;
	char id[64];
	char err[300];
	int ok;
	char sender[320];
	char client[128];
};

int
smtp_server_listen(const char *spec, const char **error_r)
{
	static char err[300];
	struct sockaddr_storage ss;
	socklen_t sl;
	const char *colon = strrchr(spec, ':');
	char host[128];
	long port;
	char *end;
	int fd, one = 1;

	memset(&ss, 0, sizeof(ss));
	if (colon == NULL || (size_t)(colon - spec) >= sizeof(host))
		goto bad;
	port = strtol(colon + 1, &end, 10);
	if (*end != '\0' || port < 1 || port > 65535)
		goto bad;
	memcpy(host, spec, (size_t)(colon - spec));
	host[colon - spec] = '\0';
	if (host[0] == '[') {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
		size_t hl = strlen(host);

		if (hl < 3 || host[hl - 1] != ']')
			goto bad;
		host[hl - 1] = '\0';
		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons((uint16_t)port);
		if (inet_pton(AF_INET6, host + 1, &s6->sin6_addr) != 1)
			goto bad;
		sl = sizeof(*s6);
	} else {
		struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;

		s4->sin_family = AF_INET;
		s4->sin_port = htons((uint16_t)port);
		if (inet_pton(AF_INET, host, &s4->sin_addr) != 1)
			goto bad;
		sl = sizeof(*s4);
	}
	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		goto sys;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (ss.ss_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&ss, sl) < 0 || listen(fd, 511) < 0) {
		int e = errno;

		close(fd);
		errno = e;
		goto sys;
	}
	return fd;
sys:
	snprintf(err, sizeof(err), "smtp_listen = %.100s: %s", spec, strerror(errno));
	*error_r = err;
	return -1;
bad:
	snprintf(err, sizeof(err), "smtp_listen = %.100s: expected HOST:PORT or [ADDRESS]:PORT",
	    spec);
	*error_r = err;
	return -1;
}

static unsigned *
per_client(struct server *s, const struct ipaddr *a, int make)
{
	uint32_t h = a->family == 4 ? a->v4 * 2654435761u : (uint32_t)(a->lo ^ a->hi) * 2654435761u;

	for (unsigned i = 0; i < 32; i++) {
		unsigned k = (h + i) % PER_CLIENT_SLOTS;

		if (s->per[k].n > 0 && memcmp(&s->per[k].addr, a, sizeof(*a)) == 0)
			return &s->per[k].n;
		if (make && s->per[k].n == 0) {
			s->per[k].addr = *a;
			return &s->per[k].n;
		}
	}
	return NULL;
}

static int
user_exists(void *arg, const char *local, const char *domain)
{
	struct server *s = arg;

	return s->users != NULL && userdb_has_user(s->users, local, domain);
}

static void
conn_free(struct conn *c)
{
	struct server *s = c->srv;

	downstream_close(&c->ds);	/* no callback comes for this connection after this */
	if (c->delivering) {	/* a job still points here: free it when done */
		c->dead = 1;
		bufferevent_disable(c->bev, EV_READ | EV_WRITE);
		return;
	}
	if (c->has_addr) {
		unsigned *pc = per_client(s, &c->addr, 0);

		if (pc != NULL && *pc > 0)
			(*pc)--;
	}
	if (c->close_timer != NULL)
		event_free(c->close_timer);
	s->nconn--;
	if (c->prev)
		c->prev->next = c->next;
	else
		s->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	smtp_proto_free(&c->sp);
	bufferevent_free(c->bev);
	free(c);
}

/*
 * The replies so far. On a plain connection with nothing queued they go
 * straight to the socket: that spares the write event's epoll_ctl pair and
 * a loop turn per reply. A last reply before closing goes through the
 * bufferevent, whose write callback then closes the connection.
 */
static void
flush_output(struct conn *c)
{
	size_t n;
	const char *out = smtp_proto_output(c->sp, &n);

	if (n > 0 && !c->tls && !smtp_proto_wants_close(c->sp) &&
	    evbuffer_get_length(bufferevent_get_output(c->bev)) == 0) {
		ssize_t w = send(bufferevent_getfd(c->bev), out, n, MSG_DONTWAIT | MSG_NOSIGNAL);

		if (w > 0) {
			smtp_proto_output_done(c->sp, (size_t)w);
			out = smtp_proto_output(c->sp, &n);
		}
	}
	if (n > 0) {
		bufferevent_write(c->bev, out, n);
		smtp_proto_output_done(c->sp, n);
	}
	if (smtp_proto_wants_close(c->sp))
		c->closing = 1;
}

static void read_cb(struct bufferevent *bev, void *arg);

/* a job for this connection is done: send its answer, read on */
static void
resume(struct conn *c)
{
	flush_output(c);
	bufferevent_enable(c->bev, EV_READ);
	read_cb(c->bev, c);	/* pipelined input may be waiting */
}


/* on a job thread: the blocking part */
static void
delivery_run(void *arg)
{
	struct delivery *d = arg;
	const char *err;

	if (d->n == 0) {
		snprintf(d->err, sizeof(d->err), "no local recipient to deliver to");
		return;
	}
	if (maildir_deliver(d->root, d->r, d->n, d->head, strlen(d->head), d->data, d->len,
	    d->id, &err) < 0)
		snprintf(d->err, sizeof(d->err), "%s", err);
	else
		d->ok = 1;
}

/* back on the loop: answer the final dot, go on with the client's input */
static void
delivery_done(void *arg)
{
	struct delivery *d = arg;
	struct conn *c = d->c;

	c->delivering = 0;
	if (d->ok)
		log_info("%s: delivered: from=<%s> nrcpt=%zu size=%zu client=%s", d->id, d->sender,
		    d->n, d->len, d->client);
	else
		log_error("delivery from %s failed: %s", d->client, d->err);
	if (c->dead) {
		conn_free(c);
	} else {
		if (d->ok)
			smtp_proto_delivered(c->sp, 1, NULL, NULL, d->id);
		else
			smtp_proto_delivered(c->sp, 0, "451", "4.3.0",
			    "Error: local delivery failed, try again later");
		resume(c);	/* pipelined input may be waiting */
	}
	free(d->head);
	for (size_t i = 0; i < d->n; i++)
		free(d->split[i]);
	free(d->split);
	free(d->r);
	free(d);
}

/* ---- pass-through: the downstream session runs on this loop ---- */

static char *data_header(struct server *s, const struct smtp_down_req *r);

/* the downstream answered a RCPT (or failed before it): mirror it */
static void
down_rcpt_cb(void *arg, const char *reply)
{
	struct conn *c = arg;

	c->down_wait = 0;
	smtp_proto_down_done(c->sp, reply);
	resume(c);
}

/* the RCPT the session waits on goes downstream; the first one opens it */
static void
down_step(struct conn *c, const struct smtp_down_req *req)
{
	struct server *s = c->srv;
	unsigned timeout = s->c->timeout < 60 ? s->c->timeout : 60;

	if (!req->open && c->ds == NULL) {	/* cannot happen: the first RCPT opened it */
		smtp_proto_down_done(c->sp, "451 4.3.0 no downstream session");
		flush_output(c);
		return;
	}
	c->down_wait = 1;
	bufferevent_disable(c->bev, EV_READ);
	if (req->open && c->ds == NULL) {	/* else opened at MAIL already */
		c->ds_data = 0;
		c->ds = downstream_open(s->downs, s->c->downstream, req->helo, timeout,
		    req->sender);
	}
	downstream_rcpt(c->ds, req->rcpt, down_rcpt_cb, c);
}

/* pass-through: the client's MAIL was accepted, open the downstream now */
static void
down_open_early(struct conn *c, const struct smtp_down_req *req)
{
	struct server *s = c->srv;

	downstream_close(&c->ds);
	c->ds_data = 0;
	c->ds = downstream_open(s->downs, s->c->downstream, req->helo,
	    s->c->timeout < 60 ? s->c->timeout : 60, req->sender);
}

/* the downstream's verdict on the message is the client's answer */
static void
down_final_cb(void *arg, const char *reply)
{
	struct conn *c = arg;

	c->down_wait = 0;
	log_info("passed on downstream (%s): %s", c->srv->c->downstream, reply);
	downstream_close(&c->ds);	/* cached for the next message, or QUIT */
	smtp_proto_delivered_reply(c->sp, reply);
	resume(c);
}

/* message bytes the session holds, for the downstream's first DATA line */
static void
down_send(struct conn *c, const char *p, size_t n, int last)
{
	char *head = NULL;

	if (!c->ds_data)	/* DATA goes with the first bytes, our Received: line after 354 */
		head = data_header(c->srv, smtp_proto_down_info(c->sp));
	downstream_send(c->ds, head, p, n);
	if (last)
		downstream_finish(c->ds, head, down_final_cb, c);
	c->ds_data = 1;
	free(head);
}

/* pass on what has arrived of a streamed message; no waiting: the bytes
 * queue in the downstream's buffer, up to a bound, the rest stays here */
static void
stream_more(struct conn *c)
{
	const char *p;
	size_t n;

	/* DATA goes down as the client starts its message: the 354 is back
	 * before the client's final dot, which then costs one round trip */
	if (c->ds != NULL && !c->ds_data && !c->down_wait && smtp_proto_streaming(c->sp))
		down_send(c, "", 0, 0);
	while (c->ds != NULL && !c->down_wait && downstream_queued(c->ds) < SMTP_STREAM_QUEUE &&
	    smtp_proto_stream_chunk(c->sp, SMTP_STREAM_MIN, &p, &n)) {
		down_send(c, p, n, 0);
		smtp_proto_stream_taken(c->sp, n);
	}
}

static char *
received_header(struct server *s, struct smtp_msg *m)
{
	char date[64];
	time_t now = time(NULL);
	struct tm tm;

	localtime_r(&now, &tm);
	strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S %z", &tm);
	return xasprintf("Received: from %s (%s)\r\n\tby %s with ESMTP\r\n\t"
	    "for <%s>; %s\r\n", m->helo[0] ? m->helo : "unknown", m->client,
	    s->params.myhostname, m->nrcpt ? m->rcpt[0] : "", date);
}

/* the Received: line for a streamed message, from what the DATA step knows */
static char *
data_header(struct server *s, const struct smtp_down_req *r)
{
	struct smtp_msg m;

	memset(&m, 0, sizeof(m));
	snprintf(m.helo, sizeof(m.helo), "%s", r->client_helo);
	snprintf(m.client, sizeof(m.client), "%s", r->client);
	m.rcpt = (char **)&(const char *){ r->rcpt };
	m.nrcpt = 1;
	return received_header(s, &m);
}

static void
deliver(struct conn *c, struct smtp_msg *m)
{
	struct server *s = c->srv;
	struct delivery *d;
	char date[64];
	time_t now = time(NULL);
	struct tm tm;

	if (m->downstream) {
		if (c->ds == NULL) {	/* cannot happen: RCPTs opened it */
			smtp_proto_delivered_reply(c->sp, "451 4.3.0 no downstream session");
			flush_output(c);
			return;
		}
		c->down_wait = 1;
		bufferevent_disable(c->bev, EV_READ);
		down_send(c, m->data, m->len, 1);	/* the rest and the final dot */
		return;
	}
	d = xcalloc(1, sizeof(*d));

	d->c = c;
	d->r = xcalloc(m->nrcpt + 1, sizeof(*d->r));
	d->split = xcalloc(m->nrcpt + 1, sizeof(char *));
	for (size_t i = 0; i < m->nrcpt; i++) {
		char *at;
		int dup = 0;

		if (!m->rcpt_local[i])
			continue;
		for (size_t j = 0; j < i; j++)
			dup |= m->rcpt_local[j] && strcasecmp(m->rcpt[j], m->rcpt[i]) == 0;
		if (dup)
			continue;
		d->split[d->n] = xstrdup(m->rcpt[i]);
		at = strrchr(d->split[d->n], '@');
		*at = '\0';
		d->r[d->n].local = d->split[d->n];
		d->r[d->n].domain = at + 1;
		d->n++;
	}
	localtime_r(&now, &tm);
	strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S %z", &tm);
	d->head = xasprintf("Received: from %s (%s)\r\n\tby %s with ESMTP\r\n\t"
	    "for <%s>; %s\r\n", m->helo[0] ? m->helo : "unknown", m->client,
	    s->params.myhostname, m->nrcpt ? m->rcpt[0] : "", date);
	d->data = m->data;	/* stays with the session until smtp_proto_delivered() */
	d->len = m->len;
	d->root = s->c->maildir_root;
	snprintf(d->sender, sizeof(d->sender), "%s", m->sender);
	snprintf(d->client, sizeof(d->client), "%s", m->client);
	c->delivering = 1;
	bufferevent_disable(c->bev, EV_READ);
	jobs_submit(s->jobs, delivery_run, delivery_done, d);
}

static void write_cb(struct bufferevent *bev, void *arg);
static void event_cb(struct bufferevent *bev, short what, void *arg);
static void close_check(evutil_socket_t fd, short what, void *arg);

/* STARTTLS: "220 Ready" is queued on the plain bev; TLS wraps it from here */
static void
start_tls(struct conn *c)
{
	struct server *s = c->srv;
	SSL *ssl = SSL_new(s->c->tls);
	struct bufferevent *tb;
	struct timeval tv = { s->c->timeout, 0 };

	/* RFC 3207 §4: whatever the client sent before the handshake is dropped */
	evbuffer_drain(bufferevent_get_input(c->bev), evbuffer_get_length(bufferevent_get_input(c->bev)));
	tb = ssl ? bufferevent_openssl_filter_new(s->base, c->bev, ssl, BUFFEREVENT_SSL_ACCEPTING,
	    BEV_OPT_CLOSE_ON_FREE) : NULL;
	if (tb == NULL) {
		log_error("cannot start TLS");
		c->closing = 1;
		return;
	}
	c->bev = tb;
	c->tls = 1;
	bufferevent_setcb(tb, read_cb, write_cb, event_cb, c);
	bufferevent_set_timeouts(tb, &tv, &tv);
	bufferevent_enable(tb, EV_READ | EV_WRITE);
	smtp_proto_set_tls(c->sp, 1);
}

struct authcheck {
	struct conn *c;
	unsigned mech;
	char *hash;		/* copies: the userdb may be reloaded meanwhile */
	char *cram;
	char user[256];
	char pass[1024];
	char challenge[160];
	char digest[64];
	int ok;
};

/* on a job thread: hashing takes milliseconds, not for the event loop */
static void
auth_run(void *arg)
{
	struct authcheck *a = arg;

	if (a->mech == SMTP_AUTH_CRAM)
		a->ok = a->cram != NULL &&
		    crammd5_verify(a->cram, a->challenge, strlen(a->challenge), a->digest);
	else
		a->ok = userdb_hash_verify(a->hash, a->pass);
	explicit_bzero(a->pass, sizeof(a->pass));
}

static void
auth_done(void *arg)
{
	struct authcheck *a = arg;
	struct conn *c = a->c;

	c->delivering = 0;
	if (c->dead) {
		conn_free(c);
	} else {
		smtp_proto_auth_done(c->sp, a->ok);
		resume(c);
	}
	free(a->hash);
	free(a->cram);
	free(a);
}

static void
check_auth(struct conn *c, struct smtp_auth_req *req)
{
	struct server *s = c->srv;
	struct authcheck *a = xcalloc(1, sizeof(*a));
	const char *h = s->users ? userdb_password(s->users, req->user) : NULL;
	const char *cr = s->users ? userdb_cram_secret(s->users, req->user) : NULL;

	a->c = c;
	a->mech = req->mech;
	/* an unknown user costs the same hashing as a known one */
	a->hash = h ? xstrdup(h) : NULL;
	a->cram = cr ? xstrdup(cr) : NULL;
	memcpy(a->user, req->user, sizeof(a->user));
	memcpy(a->pass, req->pass, sizeof(a->pass));
	memcpy(a->challenge, req->challenge, sizeof(a->challenge));
	memcpy(a->digest, req->digest, sizeof(a->digest));
	explicit_bzero(req->pass, sizeof(req->pass));
	c->delivering = 1;	/* the job holds the connection */
	bufferevent_disable(c->bev, EV_READ);
	jobs_submit(s->jobs, auth_run, auth_done, a);
}

static void
handle_ban(struct conn *c)
{
	struct ipaddr a;
	unsigned long secs = smtp_proto_take_ban(c->sp, &a);

	if (secs > 0 && c->srv->c->ban != NULL)
		c->srv->c->ban(c->srv->c->ban_arg, &a, secs, smtp_proto_ban_reason(c->sp));
}

static void
read_cb(struct bufferevent *bev, void *arg)
{
	struct conn *c = arg;
	struct evbuffer *in = bufferevent_get_input(bev);

	if (c->srv->stopping)
		return;		/* shutting down: finish what runs, start nothing */
	while (!c->closing && evbuffer_get_length(in) > 0) {
		struct evbuffer_iovec v;
		size_t used;

		if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
			break;
		used = smtp_proto_input(c->sp, v.iov_base, v.iov_len, (long long)time(NULL));
		evbuffer_drain(in, used);
		handle_ban(c);
		flush_output(c);
		if (smtp_proto_take_starttls(c->sp)) {
			start_tls(c);
			return;
		}
		if (smtp_proto_take_down_reset(c->sp))
			downstream_close(&c->ds);
		if (smtp_proto_take_down_open(c->sp) != NULL)
			down_open_early(c, smtp_proto_down_info(c->sp));
		if (smtp_proto_pending_auth(c->sp) != NULL) {
			if (!c->delivering && !c->down_wait)
				check_auth(c, smtp_proto_pending_auth(c->sp));
			return;
		}
		if (smtp_proto_pending_down(c->sp) != NULL) {
			if (!c->delivering && !c->down_wait)
				down_step(c, smtp_proto_pending_down(c->sp));
			return;
		}
		if (smtp_proto_pending(c->sp) != NULL) {
			if (!c->delivering && !c->down_wait)
				deliver(c, smtp_proto_pending(c->sp));
			return;	/* the rest waits for the delivery */
		}
		stream_more(c);
		if (used == 0)
			break;
	}
	if (c->closing) {
		bufferevent_disable(bev, EV_READ);
		if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
			close_check(-1, 0, c);
	}
}

/*
 * Close once the last reply is on the wire. Behind a STARTTLS filter the
 * filter's output empties into the socket's bufferevent first: wait for
 * that one too, or the final 221/421/554 would be lost.
 */
static void
close_check(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;
	struct bufferevent *under = bufferevent_get_underlying(c->bev);

	(void)fd;
	(void)what;
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
write_cb(struct bufferevent *bev, void *arg)
{
	struct conn *c = arg;

	(void)bev;
	if (c->closing)
		close_check(-1, 0, c);
}

static void
event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct conn *c = arg;

	if (what & BEV_EVENT_CONNECTED)
		return;		/* a TLS handshake completed */
	if ((what & BEV_EVENT_TIMEOUT) && !c->closing) {
		char msg[160], who[CIDR_TEXT_MAX];
		int n = snprintf(msg, sizeof(msg), "421 4.4.2 %s Error: timeout exceeded\r\n",
		    c->srv->params.myhostname);
		struct timeval tv = { 5, 0 };

		log_info("timeout after %u s from [%s]", c->srv->c->timeout,
		    c->has_addr ? cidr_addr_format(&c->addr, who) : "unknown");
		/* through the bufferevent: inside TLS the 421 must be encrypted too */
		smtp_proto_eof(c->sp);
		c->closing = 1;
		bufferevent_set_timeouts(bev, &tv, &tv);
		bufferevent_write(bev, msg, (size_t)n);
		bufferevent_enable(bev, EV_WRITE);
		return;
	}
	if ((what & BEV_EVENT_ERROR) && c->tls) {
		unsigned long e = bufferevent_get_openssl_error(bev);

		if (e != 0) {
			char buf[200];

			char who[CIDR_TEXT_MAX];

			ERR_error_string_n(e, buf, sizeof(buf));
			log_info("TLS error from [%s]: %s",
			    c->has_addr ? cidr_addr_format(&c->addr, who) : "unknown", buf);
		}
	}
	smtp_proto_eof(c->sp);
	conn_free(c);
}

static void
greet(struct conn *c, const char *hostname)
{
	smtp_proto_start(c->sp, c->has_addr ? &c->addr : NULL, hostname, (long long)time(NULL));
	flush_output(c);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

/* forward-confirmed reverse DNS: the PTR name must resolve back to the client */
static void
fwd_cb(int result, char type, int count, int ttl, void *addrs, void *arg)
{
	struct conn *c = arg;
	int ok = 0;

	(void)ttl;
	c->delivering = 0;
	if (result == DNS_ERR_NONE && type == DNS_IPv4_A && c->addr.family == 4) {
		const uint32_t *a = addrs;

		for (int i = 0; i < count; i++)
			ok |= ntohl(a[i]) == c->addr.v4;
	} else if (result == DNS_ERR_NONE && type == DNS_IPv6_AAAA && c->addr.family == 6) {
		const struct in6_addr *a = addrs;

		for (int i = 0; i < count; i++) {
			struct ipaddr x;
			struct sockaddr_in6 sin6;

			memset(&sin6, 0, sizeof(sin6));
			sin6.sin6_family = AF_INET6;
			sin6.sin6_addr = a[i];
			if (cidr_addr_from_sockaddr((struct sockaddr *)&sin6, &x) == 0)
				ok |= x.hi == c->addr.hi && x.lo == c->addr.lo;
		}
	}
	if (c->dead) {
		conn_free(c);
		return;
	}
	greet(c, ok ? c->ptrname : NULL);
}

static void
ptr_cb(int result, char type, int count, int ttl, void *addrs, void *arg)
{
	struct conn *c = arg;

	(void)ttl;
	if (c->dead) {
		c->delivering = 0;
		conn_free(c);
		return;
	}
	if (result == DNS_ERR_NONE && type == DNS_PTR && count > 0 && addrs != NULL) {
		const char *name = *(const char **)addrs;

		if (name != NULL && strlen(name) < sizeof(c->ptrname)) {
			snprintf(c->ptrname, sizeof(c->ptrname), "%s", name);
			if ((c->addr.family == 4 ? evdns_base_resolve_ipv4(c->srv->dns, c->ptrname, 0,
			    fwd_cb, c) : evdns_base_resolve_ipv6(c->srv->dns, c->ptrname, 0, fwd_cb, c)) != NULL)
				return;
		}
	}
	c->delivering = 0;
	greet(c, NULL);
}

static void
lookup_client(struct conn *c)
{
	struct evdns_request *r;

	c->delivering = 1;	/* the lookup holds the connection */
	if (c->addr.family == 4) {
		struct in_addr in = { .s_addr = htonl(c->addr.v4) };

		r = evdns_base_resolve_reverse(c->srv->dns, &in, 0, ptr_cb, c);
	} else {
		struct in6_addr in6;

		for (int i = 0; i < 8; i++) {
			in6.s6_addr[i] = (uint8_t)(c->addr.hi >> (56 - 8 * i));
			in6.s6_addr[8 + i] = (uint8_t)(c->addr.lo >> (56 - 8 * i));
		}
		r = evdns_base_resolve_reverse_ipv6(c->srv->dns, &in6, 0, ptr_cb, c);
	}
	if (r == NULL) {
		c->delivering = 0;
		greet(c, NULL);
	}
}

static void
accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen,
    void *arg)
{
	struct listener *li = arg;
	struct server *s = li->srv;
	struct conn *c = xcalloc(1, sizeof(*c));
	struct timeval tv = { s->c->timeout, 0 };
	unsigned *pc = NULL;

	(void)l;
	(void)salen;
	c->srv = s;
	c->next = s->conns;
	if (s->conns)
		s->conns->prev = c;
	s->conns = c;
	c->has_addr = cidr_addr_from_sockaddr(sa, &c->addr) == 0;
	if (li->kind == LISTEN_SMTPS) {
		SSL *ssl = SSL_new(s->c->tls);

		c->bev = bufferevent_openssl_socket_new(s->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
		    BEV_OPT_CLOSE_ON_FREE);
		c->tls = 1;
	} else {
		c->bev = bufferevent_socket_new(s->base, fd, BEV_OPT_CLOSE_ON_FREE);
	}
	c->sp = smtp_proto_new(&s->params);
	if (li->kind == LISTEN_SMTPS)
		smtp_proto_set_tls(c->sp, 1);
	if (li->kind != LISTEN_SMTP)
		smtp_proto_set_submission(c->sp);
	s->nconn++;
	if (c->has_addr)
		pc = per_client(s, &c->addr, 1);
	if (pc != NULL)
		(*pc)++;
	bufferevent_setcb(c->bev, read_cb, write_cb, event_cb, c);
	bufferevent_set_timeouts(c->bev, &tv, &tv);
	if (s->c->max_connections && s->nconn > s->c->max_connections) {
		static const char msg[] = "421 4.7.0 Too many connections, try again later\r\n";

		bufferevent_write(c->bev, msg, sizeof(msg) - 1);
		c->closing = 1;
		return;
	}
	if (s->c->max_per_client && pc != NULL && *pc > s->c->max_per_client) {
		static const char msg[] = "421 4.7.0 Too many connections from your address\r\n";

		bufferevent_write(c->bev, msg, sizeof(msg) - 1);
		c->closing = 1;
		return;
	}
	if (s->dns != NULL && c->has_addr) {
		lookup_client(c);	/* the greeting waits for a verified name */
		return;
	}
	greet(c, NULL);
}

static void
stop_cb(evutil_socket_t sig, short what, void *arg)
{
	struct server *s = arg;

	(void)what;
	log_info("smtp: signal %d, stopping", (int)sig);
	event_base_loopexit(s->base, NULL);
}

static void
users_cb(evutil_socket_t fd, short what, void *arg)
{
	struct server *s = arg;
	const char *err;

	(void)fd;
	(void)what;
	if (s->users != NULL && userdb_changed(s->users)) {
		struct userdb *db = userdb_load(s->c->users_url, &err);

		if (db == NULL) {
			log_warn("users not reloaded, the previous ones stay: %s", err);
			return;
		}
		userdb_free(&s->users);
		s->users = db;
		log_info("users reloaded: %zu", userdb_count(db));
	}
}

int
smtp_server_run(const int *fds, const enum smtp_listener_kind *kinds, size_t nfds,
    const struct smtp_server_conf *c, const char **error_r)
{
	struct server *s = xcalloc(1, sizeof(*s));
	struct listener *ls = xcalloc(nfds + 1, sizeof(*ls));
	struct event *sig_term, *sig_int, *tick;
	struct timeval one = { 1, 0 };
	int rc = 0;

	s->c = c;
	s->params = c->params;
	s->params.tls_available = c->tls != NULL;
	if (c->users_url != NULL && c->users_url[0] != '\0') {
		s->users = userdb_load(c->users_url, error_r);
		if (s->users == NULL) {
			free(ls);
			free(s);
			return -1;
		}
		s->params.user_exists = user_exists;
		s->params.user_arg = s;
	}
	s->base = event_base_new();
	if (s->base == NULL) {
		*error_r = "cannot create the event loop";
		userdb_free(&s->users);
		free(ls);
		free(s);
		return -1;
	}
	s->jobs = jobs_new(s->base, SMTP_DELIVERY_THREADS);
	s->downs = downstream_set_new(s->base, c->downstream_cache_time);
	if (c->resolver != NULL) {
		/* no search domains, our own nameserver: no query leaves by surprise */
		s->dns = evdns_base_new(s->base, 0);
		if (strcmp(c->resolver, "system") == 0) {
			if (evdns_base_resolv_conf_parse(s->dns, DNS_OPTION_NAMESERVERS,
			    "/etc/resolv.conf") != 0)
				log_warn("client_hostname_lookups: cannot read /etc/resolv.conf");
		} else if (evdns_base_nameserver_ip_add(s->dns, c->resolver) != 0) {
			*error_r = "resolver: not an IP[:PORT]";
			rc = -1;
		}
		evdns_base_set_option(s->dns, "timeout:", "3");
		evdns_base_set_option(s->dns, "attempts:", "2");
	}
	for (size_t i = 0; i < nfds; i++) {
		evutil_make_socket_nonblocking(fds[i]);
		ls[i].srv = s;
		ls[i].kind = kinds[i];
		ls[i].l = evconnlistener_new(s->base, accept_cb, &ls[i], LEV_OPT_CLOSE_ON_EXEC, -1,
		    fds[i]);
		if (ls[i].l == NULL) {
			*error_r = "cannot listen";
			rc = -1;
		}
	}
	sig_term = evsignal_new(s->base, SIGTERM, stop_cb, s);
	sig_int = evsignal_new(s->base, SIGINT, stop_cb, s);
	tick = event_new(s->base, -1, EV_PERSIST, users_cb, s);
	evsignal_add(sig_term, NULL);
	evsignal_add(sig_int, NULL);
	event_add(tick, &one);
	if (rc == 0)
		event_base_dispatch(s->base);
	for (size_t i = 0; i < nfds; i++)
		if (ls[i].l != NULL)
			evconnlistener_free(ls[i].l);
	s->stopping = 1;
	if (s->dns != NULL)
		evdns_base_free(s->dns, 1);	/* pending lookups call back with an error */
	jobs_free(&s->jobs);	/* deliveries in flight finish first */
	while (s->conns != NULL) {
		smtp_proto_eof(s->conns->sp);
		s->conns->delivering = 0;
		conn_free(s->conns);
	}
	downstream_set_free(&s->downs);	/* sessions saying QUIT are cut short */
	event_free(sig_term);
	event_free(sig_int);
	event_free(tick);
	event_base_free(s->base);
	userdb_free(&s->users);
	free(ls);
	free(s);
	return rc;
}
