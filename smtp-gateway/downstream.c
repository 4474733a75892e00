/*
 * downstream - the gateway's SMTP client for pass-through delivery, on the
 * event loop: one bufferevent per session and a small state machine, so a
 * pass-through message costs no thread hand-off.
 *
 *   downstream_open()     connect, greeting, EHLO/HELO, MAIL (or a cached
 *                         session: MAIL at once)
 *   downstream_rcpt()     recipients (the first one may go with MAIL)
 *   downstream_send()     the message as it arrives (DATA with the first call)
 *   downstream_finish()   the final dot and the verdict
 *   downstream_close()    keep the session for the next message, QUIT, or
 *                         just hang up mid-DATA
 *
 * Session cache (Postfix's smtp connection cache, on demand): a session
 * whose transaction ended with the verdict on its message waits up to
 * relay_connection_cache_time seconds for the next one, at most
 * DOWN_REUSE_MAX transactions and DOWN_LIFE_MAX seconds. A cached session
 * the downstream closed meanwhile is noticed while it waits; if it dies
 * just as it is reused (before any reply to the new MAIL, or with a 421),
 * the MAIL is sent again on a fresh connection.
 *
 * The downstream's replies are input: lines are capped, multi-line replies
 * read to the last line, text made printable before anyone repeats it.
 * Anything the downstream says out of turn ends the session.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
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

#include "common/connid.h"
#include "common/dotstuff.h"
#include "common/log.h"
#include "common/xmalloc.h"
#include "smtp-gateway/downstream.h"

#define DOWN_LINE_MAX 1000
#define DOWN_REPLY_LINES 100
#define DOWN_QUIT_WAIT 2	/* seconds for the 221 before we hang up anyway */
#define DOWN_IDLE_MAX 256	/* cached sessions per loop */
#define DOWN_REUSE_MAX 100	/* transactions per session */
#define DOWN_LIFE_MAX 300	/* seconds a session may be reused for */

enum ds_state {
	DS_CONNECT,		/* TCP connect in progress */
	DS_GREET,		/* waiting for 220 */
	DS_EHLO,
	DS_HELO,
	DS_MAIL,		/* waiting for MAIL's reply (RCPT maybe pipelined) */
	DS_RCPT,		/* waiting for a RCPT's reply */
	DS_IDLE,		/* nothing expected */
	DS_DATA,		/* waiting for 354 */
	DS_BODY,		/* message bytes go out, nothing expected */
	DS_FINAL,		/* waiting for the verdict on the message */
	DS_CACHED,		/* closed by the owner, waiting for the next message */
	DS_RSET,		/* closed by the owner mid-transaction: RSET, then cached */
	DS_QUIT,		/* closed by the owner: waiting for 221 */
	DS_DEAD,		/* failed: fail[] says why */
	DS_FREE			/* to be freed on the next loop turn */
};

struct downstream_set {
	struct event_base *base;
	struct downstream *head;	/* every session */
	struct downstream *idle;	/* cached ones, the most recently used first */
	size_t n, nidle;
	unsigned cache_time;		/* seconds; 0: one session per message */
};

struct downstream {
	char conn[CONNID_MAX];	/* the client session it serves now: on its log lines */
	struct downstream_set *set;
	struct downstream *prev, *next;
	struct downstream *iprev, *inext;	/* in set->idle while DS_CACHED */
	struct bufferevent *bev;
	struct event *defer;		/* reports and frees outside the caller's stack */
	struct evbuffer *pend;		/* message bytes written before the 354 */
	struct evbuffer *w;		/* what this step writes, sent at once if it can */
	enum ds_state st;
	unsigned timeout;
	int pipelining;			/* EHLO offered PIPELINING */
	int rcpt_wanted;		/* the owner asked for the first RCPT while opening */
	int rcpt_sent;			/* ... and it went out already */
	int bol;			/* the message is at the start of a line */
	int finishing;			/* the final dot follows the 354 */
	int quit_sent;			/* QUIT went with the final dot */
	int closed;			/* the owner let go: no more callbacks */
	int reused;			/* a cached session, no reply to the new MAIL yet */
	int tx_done;			/* the last transaction ended with its verdict */
	int closing;			/* it said 421: never reused, never RSET */
	int lost_early;			/* lost before the owner asked for a RCPT */
	unsigned nrcpt;			/* RCPT replies reported this transaction */
	unsigned ntx;			/* transactions on this connection */
	time_t born;
	unsigned nlines;		/* lines of the reply being read */
	int ehlo_pipe;			/* ... one of them said PIPELINING */
	downstream_cb cb;
	void *arg;
	struct event *room_ev;		/* tells the owner the queue has room again */
	void (*room_cb)(void *arg);
	void *room_arg;
	size_t room_below;
	char *head;			/* our Received: line, sent after 354 */
	struct sockaddr_storage ss;
	socklen_t sl;
	char target[300];
	char helo[256];
	char sender[600];
	char rcpt[600];
	char fail[DOWN_REPLY_MAX];	/* why the session died */
};

static int
parse_target(const char *t, char *host, size_t cap, int *port_r)
{
	const char *colon = strrchr(t, ':');
	const char *h = t, *he;
	char *end;
	long port;

	if (colon == NULL)
		return -1;
	port = strtol(colon + 1, &end, 10);
	if (*end != '\0' || end == colon + 1 || port < 1 || port > 65535)
		return -1;
	he = colon;
	if (*h == '[') {
		h++;
		if (he[-1] != ']')
			return -1;
		he--;
	}
	if (he <= h || (size_t)(he - h) >= cap)
		return -1;
	memcpy(host, h, (size_t)(he - h));
	host[he - h] = '\0';
	*port_r = (int)port;
	return 0;
}

int
downstream_target_is_valid(const char *target)
{
	char host[256];
	int port;
	struct in6_addr a6;
	struct in_addr a4;

	if (parse_target(target, host, sizeof(host), &port) < 0)
		return 0;
	/* numeric only: no DNS from the gateway */
	return inet_pton(AF_INET, host, &a4) == 1 || inet_pton(AF_INET6, host, &a6) == 1;
}

struct downstream_set *
downstream_set_new(struct event_base *base, unsigned cache_time)
{
	struct downstream_set *s = xcalloc(1, sizeof(*s));

	s->base = base;
	s->cache_time = cache_time;
	return s;
}

size_t
downstream_set_count(const struct downstream_set *s)
{
	return s->n;
}

size_t
downstream_set_cached(const struct downstream_set *s)
{
	return s->nidle;
}

static void
idle_remove(struct downstream *d)
{
	struct downstream_set *s = d->set;

	if (d->iprev)
		d->iprev->inext = d->inext;
	else
		s->idle = d->inext;
	if (d->inext)
		d->inext->iprev = d->iprev;
	d->iprev = d->inext = NULL;
	s->nidle--;
}

static void
idle_add(struct downstream *d)
{
	struct downstream_set *s = d->set;

	d->iprev = NULL;
	d->inext = s->idle;
	if (s->idle)
		s->idle->iprev = d;
	s->idle = d;
	s->nidle++;
}

static void
ds_free(struct downstream *d)
{
	struct downstream_set *s = d->set;

	if (d->st == DS_CACHED)
		idle_remove(d);
	if (d->prev)
		d->prev->next = d->next;
	else
		s->head = d->next;
	if (d->next)
		d->next->prev = d->prev;
	s->n--;
	if (d->bev != NULL)
		bufferevent_free(d->bev);
	event_free(d->defer);
	event_free(d->room_ev);
	evbuffer_free(d->pend);
	evbuffer_free(d->w);
	free(d->head);
	free(d);
}

void
downstream_set_free(struct downstream_set **sp)
{
	struct downstream_set *s = *sp;

	if (s == NULL)
		return;
	while (s->head != NULL) {
		struct downstream *d = s->head;

		/* stopping: a polite goodbye to sessions between transactions,
		 * without waiting for the 221 */
		if ((d->st == DS_CACHED || d->st == DS_IDLE) && d->bev != NULL &&
		    evbuffer_get_length(bufferevent_get_output(d->bev)) == 0)
			(void)send(bufferevent_getfd(d->bev), "QUIT\r\n", 6,
			    MSG_DONTWAIT | MSG_NOSIGNAL);
		ds_free(d);
	}
	free(s);
	*sp = NULL;
}

/* run the owner's callback for the step that waits (once) */
static void
report(struct downstream *d, const char *reply)
{
	downstream_cb cb = d->cb;

	d->cb = NULL;
	if (cb != NULL && !d->closed)
		cb(d->arg, reply);
}

/* later, from the loop: the caller of an API function is not re-entered */
static void
report_later(struct downstream *d)
{
	event_active(d->defer, EV_TIMEOUT, 0);
}

static void
defer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct downstream *d = arg;

	(void)fd;
	(void)what;
	if (d->st == DS_FREE) {
		ds_free(d);
		return;
	}
	if (d->st == DS_DEAD)
		report(d, d->fail);
}

/* the owner waits for room in the queue: tell it, later from the loop, once
 * there is some, or once the session is dead (nothing more is queued then) */
static void
room_check(struct downstream *d)
{
	if (d->room_cb != NULL && !d->closed && downstream_queued(d) < d->room_below)
		event_active(d->room_ev, EV_TIMEOUT, 0);
}

static void
room_ev_cb(evutil_socket_t fd, short what, void *arg)
{
	struct downstream *d = arg;
	void (*cb)(void *) = d->room_cb;

	(void)fd;
	(void)what;
	d->room_cb = NULL;
	if (cb != NULL && !d->closed)
		cb(d->room_arg);
}

static void
drop_bev(struct downstream *d)
{
	if (d->bev != NULL) {
		bufferevent_free(d->bev);	/* safe inside its own callbacks */
		d->bev = NULL;
	}
}

/* no owner any more: gone on the next loop turn */
static void
release(struct downstream *d)
{
	if (d->st == DS_CACHED)
		idle_remove(d);
	d->st = DS_FREE;
	drop_bev(d);
	report_later(d);
}

/* the 221 came, or the downstream hung up after QUIT */
static void
quit_done(struct downstream *d)
{
	if (d->closed) {
		release(d);
		return;
	}
	/* the owner still holds the session: it is of no further use */
	snprintf(d->fail, sizeof(d->fail), "451 4.3.0 downstream session ended");
	d->st = DS_DEAD;
	drop_bev(d);
}

/* the session is over: say why to whoever waits, now or at their next step */
static void
fail(struct downstream *d, const char *fmt, const char *arg)
{
	char tmp[DOWN_REPLY_MAX];

	if (d->st == DS_FREE)
		return;
	if (d->st == DS_QUIT) {
		quit_done(d);
		return;
	}
	if (d->closed) {
		release(d);	/* cached, resetting or opening for nobody: just go */
		return;
	}
	snprintf(tmp, sizeof(tmp), fmt, arg);
	snprintf(d->fail, sizeof(d->fail), "%s", tmp);
	/* opened ahead of the client's RCPT, MAIL accepted, then lost before
	 * the RCPT came (the downstream's idle timeout, a restart): that RCPT
	 * reconnects. A failure while opening (refused, unreachable) is the
	 * RCPT's answer as it is. */
	d->lost_early = d->st == DS_IDLE && !d->rcpt_wanted && d->nrcpt == 0;
	d->st = DS_DEAD;
	drop_bev(d);
	room_check(d);
	report(d, d->fail);
}

/* the downstream refused a step that ends the transaction (MAIL, DATA):
 * its reply is the answer, now or at the owner's next step; hang up */
static void
refused(struct downstream *d, const char *text, int tell)
{
	snprintf(d->fail, sizeof(d->fail), "%s", text);
	evbuffer_drain(d->pend, evbuffer_get_length(d->pend));
	d->st = DS_DEAD;
	drop_bev(d);	/* nothing more to read: a later close or timeout must not
			 * replace the refusal with a 451 */
	room_check(d);
	if (tell)
		report(d, d->fail);
}

/*
 * Send what this step wrote. Straight to the socket when nothing is queued:
 * the common case on a LAN, and it spares the write event's two epoll_ctl
 * calls and a loop turn. What does not fit goes through the bufferevent
 * (write timeout, errors reported to event_cb).
 */
static void
flush(struct downstream *d)
{
	if (d->bev == NULL) {
		evbuffer_drain(d->w, evbuffer_get_length(d->w));
		return;
	}
	if (evbuffer_get_length(d->w) == 0)
		return;
	if (d->st != DS_CONNECT && evbuffer_get_length(bufferevent_get_output(d->bev)) == 0)
		(void)evbuffer_write(d->w, bufferevent_getfd(d->bev));	/* SIGPIPE is ignored */
	if (evbuffer_get_length(d->w) > 0)
		bufferevent_write_buffer(d->bev, d->w);
}

/* replies are awaited with a timeout; between them the downstream may be idle */
static void
await(struct downstream *d, enum ds_state st)
{
	struct timeval tv = { d->timeout, 0 };

	flush(d);
	d->st = st;
	d->nlines = 0;
	d->ehlo_pipe = 0;
	bufferevent_set_timeouts(d->bev, &tv, &tv);
}

static void
quiet(struct downstream *d, enum ds_state st)
{
	struct timeval tv = { d->timeout, 0 };

	flush(d);
	d->st = st;
	bufferevent_set_timeouts(d->bev, NULL, &tv);
}

static void
put_line(struct downstream *d, const char *verb, const char *arg, const char *close)
{
	evbuffer_add_printf(d->w, "%s%s%s\r\n", verb, arg, close);
}

static void
send_mail(struct downstream *d)
{
	put_line(d, "MAIL FROM:<", d->sender, ">");
	d->tx_done = 0;
	d->rcpt_sent = d->pipelining && d->rcpt_wanted;
	if (d->rcpt_sent)
		put_line(d, "RCPT TO:<", d->rcpt, ">");
	await(d, DS_MAIL);
}

static void read_cb(struct bufferevent *bev, void *arg);
static void write_cb(struct bufferevent *bev, void *arg);
static void event_cb(struct bufferevent *bev, short what, void *arg);

/*
 * A new TCP connection for this session (the first, or after a lost one).
 * -1: it could not even start; the session is dead, fail[] says why, and
 * the caller reports it (at once from a callback, later from an API call).
 */
static int
connect_now(struct downstream *d)
{
	struct timeval tv = { d->timeout, 0 };
	int fd = socket(d->ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);

	d->pipelining = 0;
	d->ntx = 0;
	d->born = time(NULL);
	d->closing = 0;
	d->lost_early = 0;
	if (fd < 0) {
		snprintf(d->fail, sizeof(d->fail), "451 4.4.1 downstream unavailable: %s",
		    strerror(errno));
		d->st = DS_DEAD;
		return -1;
	}
	/* replies and the final dot are small writes: Nagle would hold them
	 * ~40 ms for the peer's delayed ACK */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &(int){ 1 }, sizeof(int));
	d->bev = bufferevent_socket_new(d->set->base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (d->bev == NULL) {
		close(fd);
		fatal("downstream: out of memory");
	}
	bufferevent_setcb(d->bev, read_cb, write_cb, event_cb, d);
	bufferevent_set_timeouts(d->bev, &tv, &tv);	/* the connect is a write */
	d->st = DS_CONNECT;
	if (bufferevent_socket_connect(d->bev, (struct sockaddr *)&d->ss, (int)d->sl) < 0) {
		snprintf(d->fail, sizeof(d->fail), "451 4.4.1 downstream unavailable: %s",
		    evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
		drop_bev(d);
		d->st = DS_DEAD;
		return -1;
	}
	return 0;
}

/* a cached session died as we reused it: the same MAIL on a new connection */
static void
retry_fresh(struct downstream *d)
{
	log_info("conn=%s downstream %s: cached session closed by the peer, reconnecting",
	    d->conn, d->target);
	drop_bev(d);
	d->reused = 0;
	d->rcpt_sent = 0;
	if (connect_now(d) < 0)
		report(d, d->fail);	/* we are in a callback of ours: at once */
}

/* the body so far, then the final dot if the owner already asked for it */
static void
body_go(struct downstream *d)
{
	struct evbuffer *out = d->w;

	if (d->head != NULL) {
		evbuffer_add(out, d->head, strlen(d->head));
		free(d->head);
		d->head = NULL;
	}
	evbuffer_add_buffer(out, d->pend);
	if (d->finishing) {
		if (!d->bol)
			evbuffer_add(out, "\r\n", 2);
		evbuffer_add(out, ".\r\n", 3);
		/* without a cache this session ends here: QUIT goes with the dot
		 * when the downstream pipelines (RFC 2920), saving a round trip */
		if (d->pipelining && d->set->cache_time == 0) {
			evbuffer_add(out, "QUIT\r\n", 6);
			d->quit_sent = 1;
		}
		await(d, DS_FINAL);
	} else {
		quiet(d, DS_BODY);
		room_check(d);	/* what waited for the 354 may be on the wire now */
	}
}

static int cache(struct downstream *d);

/* the owner is gone and the session is of no more use: QUIT, wait for 221 */
static void
quit_now(struct downstream *d)
{
	struct timeval tv = { DOWN_QUIT_WAIT, 0 };

	evbuffer_add(d->w, "QUIT\r\n", 6);
	flush(d);
	d->st = DS_QUIT;
	d->nlines = 0;
	bufferevent_set_timeouts(d->bev, &tv, &tv);
}

/* one whole reply: its code, the last line made printable */
static void
on_reply(struct downstream *d, int code, const char *text)
{
	switch (d->st) {
	case DS_GREET:
		if (code != 220) {
			fail(d, "451 4.4.2 downstream refused the connection%s", "");
			return;
		}
		put_line(d, "EHLO ", d->helo, "");
		await(d, DS_EHLO);
		return;
	case DS_EHLO:
	case DS_HELO:
		if (code == 250) {
			send_mail(d);
		} else if (code >= 500 && d->st == DS_EHLO) {
			put_line(d, "HELO ", d->helo, "");
			d->pipelining = 0;
			await(d, DS_HELO);
		} else {
			fail(d, "451 4.4.2 downstream did not accept %s", d->st == DS_EHLO ?
			    "EHLO" : "HELO");
		}
		return;
	case DS_MAIL:
		if (d->reused && code == 421 && !d->closed) {
			retry_fresh(d);	/* it timed us out just as we came back */
			return;
		}
		d->reused = 0;
		if (d->closed) {
			/* the client reset before its first RCPT: reset ours, keep it */
			if (code / 100 == 2 && !d->rcpt_sent) {
				evbuffer_add(d->w, "RSET\r\n", 6);
				await(d, DS_RSET);
			} else {
				quit_now(d);
			}
			return;
		}
		if (code / 100 != 2) {
			/* the MAIL refusal is the answer to the RCPT; the owner drops us */
			refused(d, text, 1);
			return;
		}
		if (!d->rcpt_wanted) {
			quiet(d, DS_IDLE);	/* ready for the owner's first RCPT */
			return;
		}
		if (!d->rcpt_sent)
			put_line(d, "RCPT TO:<", d->rcpt, ">");
		await(d, DS_RCPT);
		return;
	case DS_RCPT:
		quiet(d, DS_IDLE);
		d->nrcpt++;
		d->closing |= code == 421;
		report(d, text);
		return;
	case DS_DATA:
		if (code != 354) {
			/* the refusal of DATA answers the final dot */
			refused(d, text, d->finishing);
			return;
		}
		body_go(d);
		return;
	case DS_FINAL:
		d->finishing = 0;
		d->ntx++;
		d->tx_done = code != 421;	/* a 421 says the downstream closes */
		d->closing |= code == 421;
		if (d->quit_sent)
			await(d, DS_QUIT);	/* the 221 is on its way */
		else
			quiet(d, DS_IDLE);
		report(d, text);
		return;
	case DS_RSET:
		if (code == 250) {
			d->tx_done = 1;
			if (cache(d))
				return;
		}
		quit_now(d);
		return;
	case DS_QUIT:
		quit_done(d);
		return;
	default:
		/*
		 * Out of turn: a 421 while idle or cached, a reply in the middle of
		 * DATA. A 4xx mid-body is passed on; a 5xx there comes before the
		 * downstream has seen the message, so the client hears a temporary
		 * failure rather than a bounce it cannot take back.
		 */
		if (d->st == DS_BODY && code >= 400 && code < 500)
			fail(d, "%s", text);
		else if (d->st == DS_BODY)
			fail(d, "451 4.4.2 downstream broke off DATA%s", "");
		else
			fail(d, "451 4.4.2 downstream spoke out of turn%s", "");
		return;
	}
}

/* complete lines: the status line of a reply, or the end of the protocol */
static void
read_cb(struct bufferevent *bev, void *arg)
{
	struct downstream *d = arg;
	struct evbuffer *in = bufferevent_get_input(bev);

	/* a step may end this connection (fail, retry): then stop reading it */
	while (d->bev == bev && d->st != DS_DEAD && d->st != DS_FREE) {
		size_t eol_len = 0, n, l;
		struct evbuffer_ptr e = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_CRLF);
		char line[DOWN_LINE_MAX + 1];

		if (e.pos < 0) {
			if (evbuffer_get_length(in) > DOWN_LINE_MAX)
				fail(d, "451 4.4.2 downstream sent an over-long line%s", "");
			return;
		}
		l = (size_t)e.pos;
		if (l > DOWN_LINE_MAX) {	/* RFC 5321 §4.5.3.1.5: 512 with CRLF; we allow 1000 */
			fail(d, "451 4.4.2 downstream sent an over-long line%s", "");
			return;
		}
		n = l;
		evbuffer_copyout(in, line, n);
		evbuffer_drain(in, l + eol_len);
		line[n] = '\0';
		if (n < 3 || line[0] < '2' || line[0] > '5' || line[1] < '0' || line[1] > '9' ||
		    line[2] < '0' || line[2] > '9' || (n > 3 && line[3] != ' ' && line[3] != '-')) {
			fail(d, "451 4.4.2 downstream protocol error%s", "");
			return;
		}
		if (n > 3 && line[3] == '-') {
			if (++d->nlines >= DOWN_REPLY_LINES) {
				fail(d, "451 4.4.2 downstream reply too long%s", "");
				return;
			}
			if (d->st == DS_EHLO && strncasecmp(line + 4, "PIPELINING", 10) == 0 &&
			    (line[14] == '\0' || line[14] == ' '))
				d->ehlo_pipe = 1;
			continue;
		}
		if (d->st == DS_EHLO)
			d->pipelining = d->ehlo_pipe || (n > 3 && strncasecmp(line + 4,
			    "PIPELINING", 10) == 0 && (line[14] == '\0' || line[14] == ' '));
		for (size_t i = 0; i < n; i++)
			if (line[i] < 0x20 || line[i] >= 0x7f)
				line[i] = '?';
		on_reply(d, (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0'), line);
	}
}

/* the output fell to its low-water mark: the owner may queue more */
static void
write_cb(struct bufferevent *bev, void *arg)
{
	(void)bev;
	room_check(arg);
}

static void
event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct downstream *d = arg;

	(void)bev;
	if (what & BEV_EVENT_CONNECTED) {
		await(d, DS_GREET);
		bufferevent_enable(d->bev, EV_READ);
		return;
	}
	if (d->st == DS_CACHED && (what & BEV_EVENT_TIMEOUT)) {
		struct timeval tv = { DOWN_QUIT_WAIT, 0 };

		/* nobody came for it: say goodbye */
		idle_remove(d);
		evbuffer_add(d->w, "QUIT\r\n", 6);
		flush(d);
		d->st = DS_QUIT;
		d->nlines = 0;
		bufferevent_set_timeouts(d->bev, &tv, &tv);
		bufferevent_enable(d->bev, EV_READ);	/* a timeout disabled it */
		return;
	}
	if (d->st == DS_MAIL && d->reused && !d->closed) {
		retry_fresh(d);	/* it had closed the cached session */
		return;
	}
	if (d->st == DS_CONNECT)
		fail(d, "451 4.4.1 downstream unavailable: %s", (what & BEV_EVENT_TIMEOUT) ?
		    "connection timed out" : (what & BEV_EVENT_ERROR) ?
		    evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()) : "closed");
	else if (d->st == DS_BODY || d->st == DS_DATA || d->st == DS_FINAL)
		fail(d, "451 4.4.2 downstream connection lost during DATA%s", "");
	else if (what & BEV_EVENT_TIMEOUT)
		fail(d, "451 4.4.2 downstream timed out%s", "");
	else
		fail(d, "451 4.4.2 downstream connection lost%s", "");
}

/* the per-transaction state of a session, before its MAIL */
static void
tx_begin(struct downstream *d, unsigned timeout, const char *sender)
{
	d->timeout = timeout ? timeout : 60;
	d->bol = 1;
	d->rcpt_wanted = d->rcpt_sent = 0;
	d->finishing = d->quit_sent = 0;
	d->lost_early = 0;
	d->nrcpt = 0;
	d->closed = 0;
	d->cb = NULL;
	d->room_cb = NULL;
	free(d->head);
	d->head = NULL;
	evbuffer_drain(d->pend, evbuffer_get_length(d->pend));
	d->fail[0] = '\0';
	snprintf(d->sender, sizeof(d->sender), "%s", sender);
}

struct downstream *
downstream_open(struct downstream_set *set, const char *target, const char *helo,
    unsigned timeout, const char *sender, const char *conn_id)
{
	struct downstream *d;
	char host[256];
	int port;

	for (d = set->idle; d != NULL; d = d->inext)
		if (strcmp(d->target, target) == 0 && strcmp(d->helo, helo) == 0)
			break;
	if (d != NULL) {
		/* a cached session: MAIL at once */
		idle_remove(d);
		snprintf(d->conn, sizeof(d->conn), "%s", conn_id ? conn_id : "-");
		log_info("conn=%s downstream %s: cached session reused", d->conn, d->target);
		tx_begin(d, timeout, sender);
		d->reused = 1;
		send_mail(d);
		return d;
	}
	d = xcalloc(1, sizeof(*d));
	d->set = set;
	d->next = set->head;
	if (set->head)
		set->head->prev = d;
	set->head = d;
	set->n++;
	d->defer = event_new(set->base, -1, 0, defer_cb, d);
	d->room_ev = event_new(set->base, -1, 0, room_ev_cb, d);
	d->pend = evbuffer_new();
	d->w = evbuffer_new();
	if (d->defer == NULL || d->room_ev == NULL || d->pend == NULL || d->w == NULL)
		fatal("downstream: out of memory");
	tx_begin(d, timeout, sender);
	snprintf(d->target, sizeof(d->target), "%s", target);
	snprintf(d->helo, sizeof(d->helo), "%s", helo);
	snprintf(d->conn, sizeof(d->conn), "%s", conn_id ? conn_id : "-");
	log_info("conn=%s downstream %s: new session", d->conn, d->target);
	d->st = DS_DEAD;	/* until connecting has begun */

	if (parse_target(target, host, sizeof(host), &port) < 0) {
		snprintf(d->fail, sizeof(d->fail), "451 4.3.5 bad downstream address");
		return d;	/* the first RCPT hears it */
	}
	if (inet_pton(AF_INET, host, &((struct sockaddr_in *)&d->ss)->sin_addr) == 1) {
		((struct sockaddr_in *)&d->ss)->sin_family = AF_INET;
		((struct sockaddr_in *)&d->ss)->sin_port = htons((uint16_t)port);
		d->sl = sizeof(struct sockaddr_in);
	} else if (inet_pton(AF_INET6, host, &((struct sockaddr_in6 *)&d->ss)->sin6_addr) == 1) {
		((struct sockaddr_in6 *)&d->ss)->sin6_family = AF_INET6;
		((struct sockaddr_in6 *)&d->ss)->sin6_port = htons((uint16_t)port);
		d->sl = sizeof(struct sockaddr_in6);
	} else {
		snprintf(d->fail, sizeof(d->fail), "451 4.3.5 downstream is not a numeric address");
		return d;
	}
	(void)connect_now(d);	/* a failure waits for the first RCPT */
	return d;
}

void
downstream_rcpt(struct downstream *d, const char *rcpt, downstream_cb cb, void *arg)
{
	d->cb = cb;
	d->arg = arg;
	if (d->st == DS_DEAD && d->lost_early && d->sl > 0) {
		log_info("conn=%s downstream %s: session lost before the first RCPT (%s), "
		    "reconnecting", d->conn, d->target, d->fail);
		snprintf(d->rcpt, sizeof(d->rcpt), "%s", rcpt);
		d->rcpt_wanted = 1;
		d->rcpt_sent = 0;
		d->reused = 0;
		if (connect_now(d) < 0)
			report_later(d);
		return;
	}
	if (d->st <= DS_MAIL && !d->rcpt_wanted) {
		/* still opening: it goes with MAIL (pipelining) or after it */
		snprintf(d->rcpt, sizeof(d->rcpt), "%s", rcpt);
		d->rcpt_wanted = 1;
		if (d->st == DS_MAIL && d->pipelining) {
			put_line(d, "RCPT TO:<", d->rcpt, ">");
			d->rcpt_sent = 1;
			flush(d);
		}
		return;
	}
	if (d->st != DS_IDLE) {
		if (d->st != DS_DEAD)
			snprintf(d->fail, sizeof(d->fail), "451 4.3.0 downstream session busy");
		d->st = DS_DEAD;
		report_later(d);
		return;
	}
	put_line(d, "RCPT TO:<", rcpt, ">");
	await(d, DS_RCPT);
}

static void
evbuffer_emit(void *arg, const char *p, size_t n)
{
	evbuffer_add(arg, p, n);
}

/* the bytes with dot-stuffing added back (common/dotstuff) */
static void
stuff(struct downstream *d, struct evbuffer *out, const char *s, size_t len)
{
	dotstuff(&d->bol, s, len, evbuffer_emit, out);
}

static void
begin_data(struct downstream *d, const char *head)
{
	free(d->head);
	d->head = head != NULL ? xstrdup(head) : NULL;
	evbuffer_add(d->w, "DATA\r\n", 6);
	await(d, DS_DATA);
}

void
downstream_send(struct downstream *d, const char *head, const char *p, size_t n)
{
	switch (d->st) {
	case DS_IDLE:
		begin_data(d, head);
		/* FALLTHROUGH */
	case DS_DATA:
		stuff(d, d->pend, p, n);
		return;
	case DS_BODY:
		stuff(d, d->w, p, n);
		flush(d);
		return;
	default:
		return;		/* dead: the verdict at the end says why */
	}
}

size_t
downstream_queued(const struct downstream *d)
{
	size_t n;

	if (d->st == DS_DEAD || d->st == DS_FREE)
		return 0;	/* nothing more goes out: the owner need not wait */
	n = evbuffer_get_length(d->pend);
	if (d->bev != NULL)
		n += evbuffer_get_length(bufferevent_get_output(d->bev));
	return n;
}

void
downstream_wait_room(struct downstream *d, size_t below, void (*cb)(void *arg), void *arg)
{
	d->room_cb = cb;
	d->room_arg = arg;
	d->room_below = below;
	if (d->bev != NULL)
		bufferevent_setwatermark(d->bev, EV_WRITE, below, 0);
	room_check(d);
}

void
downstream_finish(struct downstream *d, const char *head, downstream_cb cb, void *arg)
{
	d->cb = cb;
	d->arg = arg;
	switch (d->st) {
	case DS_IDLE:
		begin_data(d, head);
		/* FALLTHROUGH */
	case DS_DATA:
		d->finishing = 1;
		return;
	case DS_BODY:
		d->finishing = 1;
		body_go(d);
		return;
	default:
		if (d->st != DS_DEAD)
			snprintf(d->fail, sizeof(d->fail), "451 4.3.0 downstream session busy");
		d->st = DS_DEAD;
		report_later(d);
		return;
	}
}

/* a session between transactions, given up by its owner: into the cache
 * if there is room and it may serve more; else 0 */
static int
cache(struct downstream *d)
{
	struct downstream_set *s = d->set;
	struct timeval tv = { s->cache_time, 0 };

	if (d->bev == NULL || d->closing || s->cache_time == 0 || s->nidle >= DOWN_IDLE_MAX ||
	    d->ntx >= DOWN_REUSE_MAX || time(NULL) - d->born >= DOWN_LIFE_MAX)
		return 0;
	d->st = DS_CACHED;
	idle_add(d);
	bufferevent_set_timeouts(d->bev, &tv, NULL);
	return 1;
}

void
downstream_close(struct downstream **dp)
{
	struct downstream *d = *dp;
	struct downstream_set *s;

	if (d == NULL)
		return;
	*dp = NULL;
	s = d->set;
	d->closed = 1;
	d->cb = NULL;
	d->room_cb = NULL;
	event_del(d->room_ev);
	if (d->st == DS_IDLE && d->tx_done && cache(d))
		return;		/* between transactions: kept for the next message */
	if (d->st == DS_IDLE && !d->tx_done && d->bev != NULL && !d->closing &&
	    s->cache_time > 0 && d->ntx < DOWN_REUSE_MAX) {
		/* the client reset its transaction (RSET, a new MAIL): reset ours
		 * and keep the session, rather than a new connection per MAIL */
		evbuffer_add(d->w, "RSET\r\n", 6);
		await(d, DS_RSET);
		return;
	}
	if (d->st <= DS_MAIL && d->bev != NULL && !d->rcpt_wanted && s->cache_time > 0 &&
	    d->ntx < DOWN_REUSE_MAX)
		return;	/* still opening: finishes, then RSET and into the cache */
	if ((d->st == DS_IDLE || d->st == DS_QUIT) && d->bev != NULL) {
		struct timeval tv = { DOWN_QUIT_WAIT, 0 };

		if (d->st == DS_IDLE)
			evbuffer_add(d->w, "QUIT\r\n", 6);
		flush(d);
		d->st = DS_QUIT;
		d->nlines = 0;
		bufferevent_set_timeouts(d->bev, &tv, &tv);
		return;		/* freed at the 221, the peer's close or the timeout */
	}
	release(d);	/* mid-step or mid-DATA: hang up, no final dot */
}
