/*
 * smtp_server - the SMTP door: feeds the bytes of each connection to
 * smtp_proto, writes its replies, delivers its messages into the Maildir
 * store or streams them downstream, checks passwords (service/authcheck)
 * and looks up client names (service/fcrdns). The connections themselves
 * -- accept, limits, TLS (STARTTLS, implicit), timeouts and stress,
 * flush-then-close, drain -- are service/conn's; a session here is the
 * door's state on one (struct sess, conn_ctx()).
 *
 *   smtp_server_run()      the loop on the listeners the master bound
 *                          (service/listener), until SIGTERM/SIGINT, or
 *                          until drained after SIGUSR2 (the signals and
 *                          the tick: service/door_loop)
 *
 * SIGUSR2 (live reload: a new worker already serves the same listeners)
 * drains (conn_server_drain): accept nothing more, let every open session
 * finish as usual, and return once none is left, or after smtp_timeout;
 * then the cached downstream sessions are closed.
 *
 * The loop never waits: fsyncs run on one pool of job threads, password
 * checks on another (service/authcheck, with the failed-login penalty:
 * bounded, deliveries never wait behind a guessing storm); completions
 * come back on the loop, and a connection a job still
 * points at is freed only when the job is done: each wait holds the
 * connection (conn_hold) and has its own flag in struct sess -- a delivery
 * job, a password check or its penalty wait, a client name lookup; the
 * downstream's replies need no hold (closing the session guarantees none
 * comes) and only pause the client. No message is held whole:
 * a local one past 64 KiB is written to the store's tmp/ as it arrives (in
 * 64 KiB page-cache writes on the loop; see spool_more()), a pass-through
 * one streams downstream and the client is not read while the downstream
 * is behind. Pass-through sessions are non-blocking clients on the loop
 * itself (downstream.c): closing one guarantees no callback for its
 * connection.
 * The user database is reloaded when its file changes (checked each second);
 * a missing, empty, unreadable or garbled file keeps the last good one.
 *
 * Timeouts (service/conn): smtp_timeout bounds a whole command line, DATA
 * earns time at smtp_min_data_rate, and while more than 80 % of
 * smtp_max_connections are in use (stress) the shorter smtp_stress_timeout
 * applies to every connection. While the door works for a connection (a
 * job, a lookup, the downstream: held or paused) its clock stands still.
 */
#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include <openssl/ssl.h>

#include "common/connid.h"
#include "common/log.h"
#include "common/mailaddr.h"
#include "common/stats.h"
#include "common/tls.h"
#include "common/xmalloc.h"
#include "service/jobs.h"
#include "service/penalty.h"
#include "smtp-gateway/smtp_server.h"
#include "smtp-gateway/downstream.h"
#include "smtp-gateway/smtp_sieve.h"
#include "smtp-gateway/smtp_deliver_sieve.h"
#include "service/authcheck.h"
#include "service/conn.h"
#include "service/door_loop.h"
#include "service/fcrdns.h"
#include "service/users.h"
#include "storage-adapter/maildir.h"
#include "storage-adapter/userdb.h"
#include "storage-adapter/userdb_sasl.h"

#define SMTP_DELIVERY_THREADS 8	/* concurrent fsyncs let the file system group commits */
#define SMTP_AUTH_THREADS 2	/* password hashing: a pool of its own, never the deliveries' */
#define SMTP_AUTH_QUEUE 32	/* checks queued or running; past it 454 4.7.0 */
#define SMTP_STREAM_MIN 65536		/* pass a streamed message on in pieces this big */
#define SMTP_STREAM_QUEUE (256 * 1024)	/* at most this much waits for a slow downstream */
#define SMTP_STREAM_ROOM (128 * 1024)	/* a client paused for it reads on below this */
#define SMTP_SPOOL_MIN 65536		/* a message past this goes to tmp/ in such pieces */

struct server {
	const struct smtp_server_conf *c;
	struct jobs *jobs;		/* store I/O: fsync */
	struct authcheck *auth;		/* password checks and failed-login penalties */
	struct downstream_set *downs;	/* pass-through sessions, on this loop */
	struct evdns_base *dns;		/* client name lookups, or NULL */
	struct conn_server *cs;		/* the connections (service/conn) */
	int stopping;			/* no new work while the pools drain */
	struct conn_server_conf ccf;
	char timeout_words[160];	/* "421 4.4.2 HOST Error: timeout exceeded" */
	struct smtp_params params;
	struct event_base *base;
	struct users users;		/* the user database, kept current (service/users) */
	struct sasl_callbacks sasl_cb;	/* common/sasl reads users through these */
	struct smtp_sieve_conf sieve;	/* server and domain scripts (smtp_sieve) */
};

/* the door's state on one connection (conn_ctx) */
struct sess {
	struct conn *conn;	/* service/conn: socket, TLS, timeouts, holds */
	struct server *srv;
	struct smtp_proto *sp;
	const char *id;		/* conn_id(conn), on every log line: "conn=ID" */
	/*
	 * What the session waits for. A delivery job, a password check (or
	 * its penalty wait) and a client name lookup each hold the connection
	 * (conn_hold: freed only after their callback) and pause its input;
	 * the downstream's reply only pauses it (closing the downstream
	 * session guarantees no callback comes).
	 */
	int delivering;		/* a delivery job */
	int auth_wait;		/* a password check or its penalty */
	int naming;		/* the client name lookup, before the greeting */
	int down_wait;		/* the downstream's reply */
	int closing;		/* the session said its last words (conn_close) */
	int peer_told;		/* the client certificate's name went to smtp_proto */
	struct downstream *ds;	/* an open pass-through session */
	int ds_data;		/* DATA went to ds */
	struct maildir_tmp *spool;	/* the message being received, in the store's tmp/ */
	size_t spooled;		/* message octets in it (our header lines not counted) */
	int spool_err;		/* errno of a failed spool write: the final dot gets a 4xx */
	struct smtp_sieve *sv;	/* a message under Sieve scripts, spooled (smtp_sieve) */
	int sv_failed;		/* ... or spooling it failed (errno): the final dot gets a 4xx */
	int sv_done;		/* its scripts ran: deliver() delivers */
};

struct delivery {
	struct sess *c;
	struct maildir_rcpt *r;
	char **split;
	size_t n;
	char *head;
	struct maildir_tmp *spool;	/* head and the first part are in tmp/ already */
	int spool_err;		/* ... or writing them failed */
	const char *data;	/* the rest (or all) of the message */
	size_t len;
	size_t size;		/* the message's octets, for the log */
	const char *root;
	char id[64];
	char err[300];
	int ok;
	char sender[320];
	char client[128];
	char conn[CONNID_MAX];	/* the session's id, for the log line */
	struct smtp_deliver_sieve_job *sv;	/* user Sieve scripts; NULL none */
	/* server and domain scripts run first, in the same job (c->sv) */
	struct smtp_sieve *door;
	const struct smtp_msg *m;	/* the pending message (stable while held) */
	int door_back;		/* not a plain pass: the loop decides (sieve_decided) */
};

/*
 * A local recipient -> the user database's canonical name (delivered to that
 * only). Without a users file (users =) every name that can be a mailbox is
 * one, lower-cased; the others are unknown here, not a failed delivery later.
 */
static int
user_resolve(void *arg, const char *local, const char *domain, char *canon_r)
{
	struct server *s = arg;
	char low[MAILADDR_PART_MAX];
	const char *u;
	size_t i;

	if (s->users.db == NULL) {
		for (i = 0; local[i] && i + 1 < sizeof(low); i++)
			low[i] = (char)tolower((unsigned char)local[i]);
		low[i] = '\0';
		if (local[i] != '\0' || !maildir_name_is_safe(low) || !maildir_name_is_safe(domain))
			return 0;
		snprintf(canon_r, MAILADDR_TEXT_MAX, "%s@%s", low, domain);
		return 1;
	}
	u = userdb_resolve(s->users.db, local, domain);
	if (u == NULL || strlen(u) >= MAILADDR_TEXT_MAX)
		return 0;
	memcpy(canon_r, u, strlen(u) + 1);
	return 1;
}

/* ---- the session's waits and replies ---- */

/* a job, a check or a lookup will call back with c (flag: which): hold the
 * connection and read nothing meanwhile */
static void
sess_hold(struct sess *c, int *flag)
{
	*flag = 1;
	conn_hold(c->conn);
	conn_pause(c->conn);
}

/* that callback came: 1 when the connection was closed meanwhile (and c is
 * gone, or goes with the last hold): the caller must not touch it again */
static int
sess_release(struct sess *c, int *flag)
{
	*flag = 0;
	return conn_release(c->conn);
}

/* a wait the next command cannot overtake */
static int
sess_busy(const struct sess *c)
{
	return c->delivering || c->auth_wait || c->naming || c->down_wait;
}

/*
 * The replies so far (service/conn sends them straight to the socket when
 * it can); the session's last words close the connection once they are on
 * the wire. Outside the door's input callback the close may free c: call
 * it through resume() there.
 */
static void
flush_output(struct sess *c)
{
	size_t n;
	const char *out = smtp_proto_output(c->sp, &n);

	if (n > 0) {
		conn_write(c->conn, out, n);
		smtp_proto_output_done(c->sp, n);
	}
	if (smtp_proto_wants_close(c->sp) && !c->closing) {
		c->closing = 1;
		conn_close(c->conn);
	}
}

/* a wait is over: send its answer, read on (pipelined input may be waiting) */
static void
resume(struct sess *c)
{
	struct conn *conn = c->conn;

	conn_hold(conn);	/* the last words may close it: not under our feet */
	flush_output(c);
	if (conn_release(conn))
		return;
	conn_resume(conn);
}


static void
delivery_free(struct delivery *d)
{
	maildir_tmp_abort(&d->spool);
	smtp_deliver_sieve_job_free(&d->sv);
	free(d->head);
	for (size_t i = 0; i < d->n; i++)
		free(d->split[i]);
	free(d->split);
	free(d->r);
	free(d);
}

static void sieve_decided(struct sess *c);

/* on a job thread: the blocking part */
static void
delivery_run(void *arg)
{
	struct delivery *d = arg;
	const char *err;

	if (d->door != NULL) {	/* the server and domain scripts: a plain pass goes on here */
		const struct smtp_sieve_result *r;

		smtp_sieve_run(d->door, d->m);
		r = smtp_sieve_result(d->door);
		if (r->tempfail || r->action != SIEVE_DOOR_PASS || r->nlocal > 0 ||
		    r->drop_original) {
			d->door_back = 1;
			return;
		}
		d->spool = smtp_sieve_take_store(d->door);
		d->size = smtp_sieve_size(d->door);
		smtp_deliver_sieve_job_set_msg(d->sv, smtp_sieve_msg(d->door));	/* parsed once */
	}
	if (d->n == 0) {
		snprintf(d->err, sizeof(d->err), "no local recipient to deliver to");
		maildir_tmp_abort(&d->spool);
		return;
	}
	if (d->spool_err != 0) {
		snprintf(d->err, sizeof(d->err), "writing to tmp/ failed: %s", strerror(d->spool_err));
		return;
	}
	/* Sieve scripts at delivery (smtp_deliver_sieve.h); 0: none apply */
	if (d->sv != NULL && smtp_deliver_sieve_run(d->sv, &d->spool, d->root, d->r, d->n, d->head,
	    d->data, d->len, d->id, &d->ok, &d->spool_err, d->err, sizeof(d->err)))
		return;
	if (d->spool != NULL) {
		/* the rest of the message, then fsync and links, here off the loop */
		if (maildir_tmp_write(d->spool, d->data, d->len, &err) < 0) {
			d->spool_err = errno;
			snprintf(d->err, sizeof(d->err), "%s", err);
			maildir_tmp_abort(&d->spool);
		} else if (maildir_tmp_commit(&d->spool, d->root, d->r, d->n, d->id, &err) < 0) {
			snprintf(d->err, sizeof(d->err), "%s", err);
		} else {
			d->ok = 1;
		}
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
	struct sess *c = d->c;

	if (d->door_back) {	/* the scripts did more than pass it: as sieve_job_done */
		delivery_free(d);
		if (sess_release(c, &c->delivering))
			return;
		if (c->srv->stopping)
			smtp_sieve_free(&c->sv);
		else
			sieve_decided(c);
		return;
	}
	if (d->door != NULL)
		smtp_sieve_free(&c->sv);	/* its spool was delivered (or dropped) */
	if (d->ok) {
		log_info("conn=%s %s: delivered: from=<%s> nrcpt=%zu size=%zu client=%s", d->conn,
		    d->id, d->sender,
		    d->n, d->size, d->client);
		stats_add("messages_total{door=\"smtp\",route=\"store\"}", 1);
		stats_add("message_bytes_total{door=\"smtp\",route=\"store\"}", d->size);
	}
	else
		log_error("conn=%s delivery from %s failed: %s", d->conn, d->client, d->err);
	if (!sess_release(c, &c->delivering)) {
		if (d->ok)
			smtp_proto_delivered(c->sp, 1, NULL, NULL, d->id);
		else if (d->spool_err == ENOSPC || d->spool_err == EDQUOT)
			smtp_proto_delivered(c->sp, 0, "452", "4.3.1", "Insufficient system storage");
		else
			smtp_proto_delivered(c->sp, 0, "451", "4.3.0",
			    "Error: local delivery failed, try again later");
		resume(c);	/* pipelined input may be waiting */
	}
	delivery_free(d);
}

/* ---- pass-through: the downstream session runs on this loop ---- */

static char *received_header(struct sess *c, const struct smtp_msg *m, int store);

/* the downstream answered a RCPT (or failed before it): mirror it */
static void
down_rcpt_cb(void *arg, const char *reply)
{
	struct sess *c = arg;

	c->down_wait = 0;
	smtp_proto_down_done(c->sp, reply);
	resume(c);
}

/* the RCPT the session waits on goes downstream; the first one opens it */
static void
down_step(struct sess *c, const struct smtp_down_req *req)
{
	struct server *s = c->srv;
	unsigned timeout = s->c->timeout < 60 ? s->c->timeout : 60;

	if (!req->open && c->ds == NULL) {	/* cannot happen: the first RCPT opened it */
		smtp_proto_down_done(c->sp, "451 4.3.0 no downstream session");
		flush_output(c);
		return;
	}
	c->down_wait = 1;
	conn_pause(c->conn);
	if (req->open && c->ds == NULL) {	/* else opened at MAIL already */
		c->ds_data = 0;
		c->ds = downstream_open(s->downs, s->c->downstream, req->helo, timeout,
		    req->sender, c->id);
	}
	downstream_rcpt(c->ds, req->rcpt, down_rcpt_cb, c);
}

/* pass-through: the client's MAIL was accepted, open the downstream now */
static void
down_open_early(struct sess *c, const struct smtp_down_req *req)
{
	struct server *s = c->srv;

	downstream_close(&c->ds);
	c->ds_data = 0;
	c->ds = downstream_open(s->downs, s->c->downstream, req->helo,
	    s->c->timeout < 60 ? s->c->timeout : 60, req->sender, c->id);
}

/* the downstream's verdict on the message is the client's answer */
static void
down_final_cb(void *arg, const char *reply)
{
	struct sess *c = arg;

	c->down_wait = 0;
	log_info("conn=%s passed on downstream (%s): %s", c->id, c->srv->c->downstream, reply);
	if (reply[0] == '2')
		stats_add("messages_total{door=\"smtp\",route=\"relay\"}", 1);
	downstream_close(&c->ds);	/* cached for the next message, or QUIT */
	smtp_proto_delivered_reply(c->sp, reply);
	resume(c);
}

/* message bytes the session holds, for the downstream's first DATA line */
static void
down_send(struct sess *c, const char *p, size_t n, int last)
{
	char *head = NULL;

	if (!c->ds_data)	/* DATA goes with the first bytes, our Received: line after 354 */
		head = received_header(c, smtp_proto_envelope(c->sp), 0);
	downstream_send(c->ds, head, p, n);
	if (last)
		downstream_finish(c->ds, head, down_final_cb, c);
	c->ds_data = 1;
	free(head);
}

/* pass on what has arrived of a streamed message; no waiting: the bytes
 * queue in the downstream's buffer, up to a bound, the rest stays here (and
 * once the session holds its most, the client is not read: sess_input) */
static void
stream_more(struct sess *c)
{
	const char *p;
	size_t n;

	if (!smtp_proto_streaming(c->sp) || c->down_wait)
		return;
	if (c->ds == NULL) {	/* cannot happen: RCPTs opened it; the dot hears why */
		while (smtp_proto_stream_chunk(c->sp, 0, &p, &n))
			smtp_proto_stream_taken(c->sp, n);
		return;
	}
	/* DATA goes down as the client starts its message: the 354 is back
	 * before the client's final dot, which then costs one round trip */
	if (!c->ds_data)
		down_send(c, "", 0, 0);
	while (downstream_queued(c->ds) < SMTP_STREAM_QUEUE &&
	    smtp_proto_stream_chunk(c->sp, SMTP_STREAM_MIN, &p, &n)) {
		down_send(c, p, n, 0);
		smtp_proto_stream_taken(c->sp, n);
	}
}

/* the downstream has room again: read the client on */
static void
down_room_cb(void *arg)
{
	resume(arg);
}

/* the first local recipient of m (its mailbox gets the tmp/ file); split
 * holds the copy the names point into */
static int
first_local(const struct smtp_msg *m, struct maildir_rcpt *r, char **split)
{
	for (size_t i = 0; i < m->nrcpt; i++) {
		char *at;

		if (!m->rcpt_local[i])
			continue;
		*split = xstrdup(m->rcpt[i]);
		at = strrchr(*split, '@');
		*at = '\0';
		r->local = *split;
		r->domain = at + 1;
		return 0;
	}
	return -1;
}

/*
 * Local delivery: a message past SMTP_SPOOL_MIN goes to the store's tmp/
 * as it arrives, in pieces, written here on the loop: a write(2) of 64 KiB
 * to a regular file is a copy into the page cache (tens of microseconds);
 * it waits for the disk only when the kernel throttles a writer that
 * dirties pages faster than the disk takes them, which is the disk's pace
 * and the right brake for every connection alike (Postfix's smtpd too
 * writes its queue file synchronously). The fsync that makes it durable
 * runs on a job thread at the final dot (delivery_run). A failed write
 * (disk full) is remembered, the rest of the message is read and dropped,
 * and the final dot gets a 4xx.
 */
static void
spool_more(struct sess *c)
{
	const struct smtp_msg *m = smtp_proto_envelope(c->sp);
	const char *p, *err;
	size_t n;

	if (m == NULL || m->downstream || m->sieve != NULL || !smtp_proto_in_data(c->sp) ||
	    c->srv->c->maildir_root == NULL)
		return;	/* (under Sieve: sieve_spool_more) */
	while (smtp_proto_stream_chunk(c->sp, SMTP_SPOOL_MIN, &p, &n)) {
		if (c->spool == NULL && c->spool_err == 0) {
			struct maildir_rcpt r;
			char *split = NULL, *head;

			if (first_local(m, &r, &split) < 0) {
				c->spool_err = EINVAL;	/* cannot happen: DATA needs a recipient */
			} else if (maildir_tmp_open(c->srv->c->maildir_root, &r, &c->spool, &err) < 0) {
				c->spool_err = errno ? errno : EIO;
				log_error("conn=%s spooling a message from %s: %s", c->id, m->client, err);
			} else {
				head = received_header(c, m, 1);
				if (maildir_tmp_write(c->spool, head, strlen(head), &err) < 0) {
					c->spool_err = errno;
					log_error("conn=%s spooling a message from %s: %s", c->id, m->client, err);
					maildir_tmp_abort(&c->spool);
				}
				free(head);
				c->spooled = 0;
			}
			free(split);
		}
		if (c->spool != NULL) {
			if (maildir_tmp_write(c->spool, p, n, &err) < 0) {
				c->spool_err = errno;
				log_error("conn=%s spooling a message from %s: %s", c->id, m->client, err);
				maildir_tmp_abort(&c->spool);
			} else {
				c->spooled += n;
			}
		}
		smtp_proto_stream_taken(c->sp, n);
	}
}

/* the transaction ended without a delivery (refused at the dot, size): its
 * tmp/ file goes */
static void
spool_drop(struct sess *c)
{
	maildir_tmp_abort(&c->spool);
	c->spool_err = 0;
	c->spooled = 0;
}

/* a copy for a header line: controls and 8-bit made '?' (never fold or
 * smuggle a line into the message) */
static void
header_text(char *dst, size_t cap, const char *src)
{
	size_t i;

	for (i = 0; src[i] != '\0' && i + 1 < cap; i++)
		dst[i] = (unsigned char)src[i] < 0x20 || (unsigned char)src[i] >= 0x7f ? '?' : src[i];
	dst[i] = '\0';
}

/*
 * Our trace lines, from the envelope of the message being received, as
 * Postfix writes them: "with" names the protocol as RFC 3848 does (ESMTP,
 * ESMTPS with TLS, ESMTPA with AUTH, ESMTPSA with both; SMTP after HELO),
 * the TLS version and cipher follow the client, and "for <rcpt>" is there
 * only for a message with one recipient: every copy of a message for
 * several would otherwise name the first, Bcc or not. store: final
 * delivery into the Maildir store, which adds Return-Path: (RFC 5321
 * §4.4); pass-through leaves that to the MTA that delivers.
 */
static char *
received_header(struct sess *c, const struct smtp_msg *m, int store)
{
	struct server *s = c->srv;
	char date[64], helo[128], client[128], rcpt[600], sender[600], tls[200] = "";
	char rp[640] = "";
	time_t now = time(NULL);
	struct tm tm;
	SSL *ssl = conn_ssl(c->conn);

	localtime_r(&now, &tm);
	strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S %z", &tm);
	header_text(helo, sizeof(helo), m->helo[0] ? m->helo : "unknown");
	header_text(client, sizeof(client), m->client);
	if (ssl != NULL && SSL_get_current_cipher(ssl) != NULL) {
		const SSL_CIPHER *ci = SSL_get_current_cipher(ssl);
		int alg = 0, used = SSL_CIPHER_get_bits(ci, &alg);

		snprintf(tls, sizeof(tls), "\r\n\t(using %s with cipher %s (%d/%d bits))",
		    SSL_get_version(ssl), SSL_CIPHER_get_name(ci), used, alg);
	}
	if (store) {
		header_text(sender, sizeof(sender), m->sender ? m->sender : "");
		snprintf(rp, sizeof(rp), "Return-Path: <%s>\r\n", sender);
	}
	if (m->nrcpt == 1) {
		header_text(rcpt, sizeof(rcpt), m->rcpt[0]);
		return xasprintf("%sReceived: from %s (%s)%s\r\n\tby %s with %s%s%s\r\n\t"
		    "for <%s>; %s\r\n", rp, helo, client, tls, s->params.myhostname,
		    m->esmtp ? "ESMTP" : "SMTP", m->esmtp && m->tls ? "S" : "",
		    m->esmtp && m->auth ? "A" : "", rcpt, date);
	}
	return xasprintf("%sReceived: from %s (%s)%s\r\n\tby %s with %s%s%s;\r\n\t%s\r\n",
	    rp, helo, client, tls, s->params.myhostname, m->esmtp ? "ESMTP" : "SMTP",
	    m->esmtp && m->tls ? "S" : "", m->esmtp && m->auth ? "A" : "", date);
}

/* ---- Sieve: server and domain scripts at the final dot (smtp_sieve) ---- */

static void deliver(struct sess *c, struct smtp_msg *m);
static struct delivery *delivery_new(struct sess *c, struct smtp_msg *m);

/* message bytes into the spool of a message under scripts (opened with our
 * trace lines at the first bytes); -1 once spooling failed */
static int
sieve_put(struct sess *c, const struct smtp_msg *m, const char *p, size_t n)
{
	const char *err;

	if (c->sv_failed)
		return -1;
	if (c->sv == NULL) {
		int store = !m->downstream;
		char *head = received_header(c, m, store);

		errno = 0;
		if (store && c->srv->c->maildir_root == NULL)
			err = "no store";
		else if (smtp_sieve_open(&c->srv->sieve, m, store, head, &c->sv, &err) == 0)
			err = NULL;
		free(head);
		if (err != NULL) {
			log_error("conn=%s spooling a message from %s: %s", c->id, m->client, err);
			c->sv_failed = errno ? errno : EIO;
			return -1;
		}
	}
	if (n > 0 && smtp_sieve_write(c->sv, p, n, &err) < 0) {
		int e = errno ? errno : EIO;

		log_error("conn=%s spooling a message from %s: %s", c->id, m->client, err);
		smtp_sieve_free(&c->sv);
		c->sv_failed = e;
		return -1;
	}
	return 0;
}

/* DATA of a message under scripts goes to its spool as it arrives, in
 * pieces, as spool_more() does for the store: nothing streams on before
 * the verdict, and the session never holds more than its cap */
static void
sieve_spool_more(struct sess *c)
{
	const struct smtp_msg *m = smtp_proto_envelope(c->sp);
	const char *p;
	size_t n;

	if (m == NULL || m->sieve == NULL || !smtp_proto_in_data(c->sp))
		return;
	while (smtp_proto_stream_chunk(c->sp, SMTP_SPOOL_MIN, &p, &n)) {
		(void)sieve_put(c, m, p, n);	/* a failure answers the final dot */
		smtp_proto_stream_taken(c->sp, n);
	}
}

/* the scripts' verdict is the reply to the final dot */
static void
sieve_answer(struct sess *c, int ok, const char *code, const char *dsn, const char *text)
{
	smtp_proto_delivered(c->sp, ok, code, dsn, text);	/* text may be in c->sv */
	smtp_sieve_free(&c->sv);
	resume(c);
}

static void sieve_pump(struct sess *c);

static void
sieve_room_cb(void *arg)
{
	sieve_pump(arg);
}

/* a passed message, from its spool to the downstream session it was
 * accepted for; the downstream's verdict is the client's answer */
static void
sieve_pump(struct sess *c)
{
	int rc = smtp_sieve_pump(c->sv, c->ds, SMTP_STREAM_QUEUE);

	if (rc == 0) {
		downstream_wait_room(c->ds, SMTP_STREAM_ROOM, sieve_room_cb, c);
		return;
	}
	if (rc < 0) {	/* closed without its final dot: discarded downstream */
		log_error("conn=%s reading the spool back failed: %s", c->id, strerror(errno));
		c->down_wait = 0;
		downstream_close(&c->ds);
		sieve_answer(c, 0, "451", "4.3.0", "Error: the message cannot be passed on, try "
		    "again later");
		return;
	}
	smtp_sieve_free(&c->sv);	/* all of it is queued downstream */
	downstream_finish(c->ds, NULL, down_final_cb, c);
}

/* store route: redirect targets in our domains become recipients; the
 * number of them that exist */
static size_t
sieve_local_targets(struct sess *c, const struct smtp_sieve_result *r)
{
	size_t added = 0;

	for (size_t i = 0; i < r->nlocal; i++) {
		struct mailaddr a;
		char canon[MAILADDR_TEXT_MAX];

		if (mailaddr_parse(r->local[i], &a) < 0 || a.domain[0] == '\0' ||
		    !user_resolve(c->srv, a.local, a.domain, canon)) {
			char esc[LOG_ESCAPE_BUFSZ];

			log_warn("conn=%s sieve: redirect to %s: no such user here; not redirected",
			    c->id, log_escape(esc, r->local[i], strlen(r->local[i])));
			continue;
		}
		smtp_proto_add_rcpt(c->sp, canon, 1);
		log_info("conn=%s sieve: redirect to %s: an added recipient (%s)", c->id, canon,
		    r->where);
		added++;
	}
	return added;
}

/* back on the loop with the scripts' result */
static void
sieve_decided(struct sess *c)
{
	struct smtp_msg *m = smtp_proto_pending(c->sp);
	const struct smtp_sieve_result *r = smtp_sieve_result(c->sv);
	struct verdict v;

	if (r->tempfail) {
		log_error("conn=%s message from %s not accepted: %s", c->id, m->client, r->err);
		if (r->spool_errno == ENOSPC || r->spool_errno == EDQUOT)
			sieve_answer(c, 0, "452", "4.3.1", "Insufficient system storage");
		else
			sieve_answer(c, 0, "451", "4.3.0", "Error: the message cannot be processed "
			    "now, try again later");
		return;
	}
	if (r->action != SIEVE_DOOR_PASS) {
		smtp_sieve_verdict(r, &v);
		smtp_proto_log_verdict(c->sp, &v);
	}
	switch (r->action) {
	case SIEVE_DOOR_REJECT:
		sieve_answer(c, 0, "550", "5.7.1", r->text);
		return;
	case SIEVE_DOOR_DISCARD:
		log_info("conn=%s sieve: discarded: from=<%s> nrcpt=%zu size=%zu (%s)", c->id,
		    m->sender, m->nrcpt, smtp_sieve_size(c->sv), r->where);
		sieve_answer(c, 1, NULL, NULL, "discarded");
		return;
	case SIEVE_DOOR_QUARANTINE:
		log_info("conn=%s %s: quarantined in %s: from=<%s> nrcpt=%zu size=%zu (%s)", c->id,
		    r->qid, c->srv->c->quarantine_dir, m->sender, m->nrcpt, smtp_sieve_size(c->sv),
		    r->where);
		sieve_answer(c, 1, NULL, NULL, r->qid);
		return;
	case SIEVE_DOOR_PASS:
		break;
	}
	if (!m->downstream) {
		size_t norig = m->nrcpt, added = sieve_local_targets(c, r);

		if (r->drop_original && added == 0 && r->nredirect > 0) {
			sieve_answer(c, 1, NULL, NULL, "redirected");
			return;
		}
		if (r->drop_original && added > 0)
			for (size_t i = 0; i < norig; i++)
				m->rcpt_local[i] = 0;	/* the redirect took it from them */
		c->spool = smtp_sieve_take_store(c->sv);
		c->spooled = smtp_sieve_size(c->sv);
		c->spool_err = 0;
		smtp_sieve_free(&c->sv);
		c->sv_done = 1;
		deliver(c, m);	/* the spool, as the scripts left it */
		c->sv_done = 0;
		return;
	}
	if (r->drop_original && r->nredirect > 0) {
		sieve_answer(c, 1, NULL, NULL, "redirected");
		return;
	}
	if (c->ds == NULL) {	/* cannot happen: RCPTs opened it */
		sieve_answer(c, 0, "451", "4.3.0", "no downstream session");
		return;
	}
	c->down_wait = 1;
	sieve_pump(c);
}

/* what the job needs; the connection waits for it (conn_hold) */
struct sieve_job {
	struct sess *c;
	struct smtp_sieve *sv;
	const struct smtp_msg *m;	/* the session's, stable while it waits */
};

/* on a job thread: the scripts and their file work */
static void
sieve_job_run(void *arg)
{
	struct sieve_job *j = arg;

	smtp_sieve_run(j->sv, j->m);
}

static void
sieve_job_done(void *arg)
{
	struct sieve_job *j = arg;
	struct sess *c = j->c;

	free(j);
	if (sess_release(c, &c->delivering))
		return;
	if (c->srv->stopping) {	/* no new work: unanswered, the client tries again */
		smtp_sieve_free(&c->sv);
		return;
	}
	sieve_decided(c);
}

/* the final dot of a message under scripts: the rest into its spool, then
 * the scripts run off the loop */
static void
sieve_start(struct sess *c, struct smtp_msg *m)
{
	struct sieve_job *j;
	int rc;

	if (c->sv == NULL && !c->sv_failed) {	/* small: spooled on the job thread */
		char *head = received_header(c, m, !m->downstream);
		const char *err = "no store";

		rc = m->downstream || c->srv->c->maildir_root != NULL ?
		    smtp_sieve_open_mem(&c->srv->sieve, m, !m->downstream, head, m->data, m->len,
		    &c->sv, &err) : -1;
		free(head);
		if (rc < 0) {
			log_error("conn=%s spooling a message from %s: %s", c->id, m->client, err);
			c->sv_failed = EIO;
		}
	} else {
		rc = sieve_put(c, m, m->data, m->len);
	}
	if (rc < 0) {
		int full = c->sv_failed == ENOSPC || c->sv_failed == EDQUOT;

		smtp_sieve_free(&c->sv);
		c->sv_failed = 0;
		if (full)
			smtp_proto_delivered(c->sp, 0, "452", "4.3.1", "Insufficient system storage");
		else
			smtp_proto_delivered(c->sp, 0, "451", "4.3.0", "Error: local delivery failed, "
			    "try again later");
		flush_output(c);
		return;
	}
	m->len = 0;	/* in the spool now */
	if (!m->downstream) {	/* store: the scripts, then the delivery, in one job */
		struct delivery *d = delivery_new(c, m);

		d->door = c->sv;
		d->m = m;
		sess_hold(c, &c->delivering);
		jobs_submit(c->srv->jobs, delivery_run, delivery_done, d);
		return;
	}
	j = xcalloc(1, sizeof(*j));
	j->c = c;
	j->sv = c->sv;
	j->m = m;
	sess_hold(c, &c->delivering);	/* the scripts are the delivery's first part */
	jobs_submit(c->srv->jobs, sieve_job_run, sieve_job_done, j);
}

static void
deliver(struct sess *c, struct smtp_msg *m)
{
	struct server *s = c->srv;
	struct delivery *d;

	if (m->sieve != NULL && !c->sv_done) {
		sieve_start(c, m);	/* the scripts first; they deliver() after */
		return;
	}
	if (m->downstream) {
		if (c->ds == NULL) {	/* cannot happen: RCPTs opened it */
			smtp_proto_delivered_reply(c->sp, "451 4.3.0 no downstream session");
			flush_output(c);
			return;
		}
		c->down_wait = 1;
		conn_pause(c->conn);
		down_send(c, m->data, m->len, 1);	/* the rest and the final dot */
		return;
	}
	d = delivery_new(c, m);
	sess_hold(c, &c->delivering);
	jobs_submit(s->jobs, delivery_run, delivery_done, d);
}

/* what a delivery job needs of the session (the message data stays the
 * session's until smtp_proto_delivered()) */
static struct delivery *
delivery_new(struct sess *c, struct smtp_msg *m)
{
	struct server *s = c->srv;
	struct delivery *d = xcalloc(1, sizeof(*d));

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
	/* spooled: the head is in tmp/ already; else it goes with the data */
	d->spool = c->spool;
	d->spool_err = c->spool_err;
	d->size = c->spooled + m->len;
	c->spool = NULL;
	c->spool_err = 0;
	c->spooled = 0;
	if (d->spool == NULL && d->spool_err == 0 && (m->sieve == NULL || c->sv_done))
		d->head = received_header(c, m, 1);	/* (else the door's spool has it) */
	d->data = m->data;	/* stays with the session until smtp_proto_delivered() */
	d->len = m->len;
	d->root = s->c->maildir_root;
	snprintf(d->sender, sizeof(d->sender), "%s", m->sender);
	snprintf(d->client, sizeof(d->client), "%s", m->client);
	snprintf(d->conn, sizeof(d->conn), "%s", c->id);
	d->sv = smtp_deliver_sieve_job_new(s->c->deliver_sieve, m->sender, m->client, m->helo, c->id);
	return d;
}

/* ---- AUTH: the password check and its penalty (service/authcheck) ---- */

/* the check's outcome, after its penalty: the reply goes out */
static void
auth_checked(void *arg, int result)
{
	struct sess *c = arg;

	if (sess_release(c, &c->auth_wait))
		return;
	smtp_proto_auth_done(c->sp, result);
	resume(c);
}

static int
auth_may_ban(void *arg)
{
	struct sess *c = arg;

	return smtp_proto_may_ban(c->sp, (long long)time(NULL));
}

static int
auth_gone(void *arg)
{
	return conn_is_closing(((struct sess *)arg)->conn);
}

static const struct authcheck_hooks auth_hooks = { auth_checked, auth_may_ban, auth_gone };

/* an exchange at its end; from sess_input, which reads on by itself */
static void
check_auth(struct sess *c, struct smtp_auth_req *req)
{
	struct authcheck_req r = {
		.sasl = req->check ? req->sasl : NULL,
		.ok = req->ok,
		.addr = conn_addr(c->conn),
		.conn_id = c->id,
	};
	int res = authcheck_finish(c->srv->auth, &r, &auth_hooks, c);

	if (res == AUTHCHECK_PENDING) {
		sess_hold(c, &c->auth_wait);	/* the check or the penalty */
		return;
	}
	smtp_proto_auth_done(c->sp, res == AUTHCHECK_BUSY ? SMTP_AUTH_TEMPFAIL : res);
	flush_output(c);
}

/* the bytes the client sent: to the session, and what it asks for done */
static void
sess_input(struct conn *conn)
{
	struct sess *c = conn_ctx(conn);
	struct evbuffer *in = conn_input(conn);

	if (conn_is_tls(conn) && !c->peer_told) {
		/* input comes after the handshake: a verified certificate names
		 * the user AUTH EXTERNAL logs in as */
		const char *peer = conn_tls_peer(conn);

		if (peer != NULL) {
			c->peer_told = 1;
			smtp_proto_set_tls_peer(c->sp, peer);
		}
	}
	while (!c->closing && !conn_is_closing(conn) && evbuffer_get_length(in) > 0) {
		struct evbuffer_iovec v;
		size_t used;

		if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
			break;
		used = smtp_proto_input(c->sp, v.iov_base, v.iov_len, (long long)time(NULL));
		evbuffer_drain(in, used);
		if ((c->spool != NULL || c->spool_err != 0) && !smtp_proto_in_data(c->sp) &&
		    smtp_proto_pending(c->sp) == NULL)
			spool_drop(c);	/* refused at the final dot */
		if ((c->sv != NULL || c->sv_failed) && !smtp_proto_in_data(c->sp) &&
		    smtp_proto_pending(c->sp) == NULL && !c->delivering) {
			smtp_sieve_free(&c->sv);	/* refused at the final dot */
			c->sv_failed = 0;
		}
		/* what the session asks for, in its order, until it needs input */
		for (int more = 1; more;) {
			union smtp_action_arg a;

			switch (smtp_proto_next(c->sp, &a)) {
			case SMTP_ACT_BAN:
				if (c->srv->c->ban != NULL)
					c->srv->c->ban(c->srv->c->ban_arg, &a.ban.addr, a.ban.seconds,
					    a.ban.reason);
				break;
			case SMTP_ACT_WRITE:
				flush_output(c);
				break;
			case SMTP_ACT_STARTTLS:
				/* "220 Ready" is queued; RFC 3207 §4: whatever the
				 * client sent before the handshake is dropped */
				if (conn_starttls(conn) == 0)
					smtp_proto_set_tls(c->sp, 1);
				else
					c->closing = 1;	/* closing (logged) */
				return;
			case SMTP_ACT_DOWN_RESET:
				downstream_close(&c->ds);
				break;
			case SMTP_ACT_DOWN_OPEN:
				down_open_early(c, a.down);
				break;
			case SMTP_ACT_AUTH_CHECK:
				if (!sess_busy(c))
					check_auth(c, a.auth);
				if (smtp_proto_pending_auth(c->sp) != NULL)
					return;
				break;	/* answered at once (454): say it, read on */
			case SMTP_ACT_DOWN_STEP:
				if (!sess_busy(c))
					down_step(c, smtp_proto_pending_down(c->sp));
				return;
			case SMTP_ACT_DELIVER:
				if (!sess_busy(c))
					deliver(c, a.msg);
				return;	/* the rest waits for the delivery */
			case SMTP_ACT_CLOSE:
				if (!c->closing) {
					c->closing = 1;
					conn_close(conn);
				}
				more = 0;
				break;
			case SMTP_ACT_NEED_INPUT:
				more = 0;
				break;
			}
		}
		stream_more(c);
		spool_more(c);
		sieve_spool_more(c);
		if (used == 0) {
			if (smtp_proto_streaming(c->sp) && smtp_proto_in_data(c->sp) && c->ds != NULL) {
				/* the session holds its most and the downstream is behind:
				 * leave the rest in the client's socket until it has room */
				conn_pause(conn);
				downstream_wait_room(c->ds, SMTP_STREAM_ROOM, down_room_cb, c);
				return;
			}
			break;
		}
	}
}

/* message data is being read: it earns time at smtp_min_data_rate */
static int
sess_in_message(struct conn *conn)
{
	return smtp_proto_in_data(((struct sess *)conn_ctx(conn))->sp);
}

/* the client took too long: the 421 is service/conn's (words_timeout) */
static void
sess_timed_out(struct conn *conn)
{
	struct sess *c = conn_ctx(conn);

	smtp_proto_eof(c->sp);
	c->closing = 1;
}

/* the connection ends (peer gone, error, timeout, our close): what is open
 * goes; a job may still hold it */
static void
sess_closing(struct conn *conn)
{
	struct sess *c = conn_ctx(conn);

	if (!c->closing)
		smtp_proto_eof(c->sp);	/* the client left (or we stop) */
	maildir_tmp_abort(&c->spool);	/* the client left mid-DATA */
	downstream_close(&c->ds);	/* no callback comes for this connection after this */
}

/* nothing holds it any more */
static void
sess_free(struct conn *conn)
{
	struct sess *c = conn_ctx(conn);

	smtp_sieve_free(&c->sv);	/* no job holds it now */
	smtp_proto_free(&c->sp);
	free(c);
}

/* the greeting (or the refusal of a kill-listed client) */
static void
greet(struct sess *c, const char *hostname)
{
	smtp_proto_start(c->sp, conn_addr(c->conn), hostname, (long long)time(NULL));
}

/* the client's verified name (service/fcrdns), or none: greet */
static void
client_named(void *arg, const char *name)
{
	struct sess *c = arg;

	if (sess_release(c, &c->naming))
		return;
	greet(c, name);
	resume(c);
}

static void
lookup_client(struct sess *c)
{
	sess_hold(c, &c->naming);	/* the lookup */
	if (fcrdns_lookup(c->srv->dns, conn_addr(c->conn), client_named, c) < 0) {
		(void)sess_release(c, &c->naming);	/* in opened(): not closed */
		conn_resume(c->conn);
		greet(c, NULL);
		flush_output(c);
	}
}

/* a connection within the limits: the session, and its greeting */
static void
sess_opened(struct conn *conn)
{
	struct server *s = conn_server_arg(conn_server(conn));
	struct sess *c = xcalloc(1, sizeof(*c));
	int kind = conn_kind(conn);

	c->conn = conn;
	c->srv = s;
	c->id = conn_id(conn);
	conn_set_ctx(conn, c);
	c->sp = smtp_proto_new(&s->params);
	smtp_proto_set_conn_id(c->sp, c->id);
	if (kind == LISTEN_SMTPS)
		smtp_proto_set_tls(c->sp, 1);
	if (kind != LISTEN_SMTP)
		smtp_proto_set_submission(c->sp);
	else if (!s->c->smtp_auth)
		smtp_proto_set_no_auth(c->sp);
	if (s->dns != NULL && conn_addr(conn) != NULL) {
		lookup_client(c);	/* the greeting waits for a verified name */
		return;
	}
	greet(c, NULL);
	flush_output(c);
}

static const struct conn_ops sess_ops = {
	.opened = sess_opened,
	.input = sess_input,
	.in_message = sess_in_message,
	.timed_out = sess_timed_out,
	.closing = sess_closing,
	.free = sess_free,
};

int
smtp_server_run(const int *fds, const int *kinds, size_t nfds,
    const struct smtp_server_conf *c, const char **error_r)
{
	struct server *s = xcalloc(1, sizeof(*s));
	struct door_loop *loop;
	int rc = 0;

	s->c = c;
	s->params = c->params;
	s->params.tls_available = c->tls != NULL;
	if (sasl_init(error_r) < 0) {
		free(s);
		return -1;
	}
	userdb_sasl_callbacks(&s->users.db, &s->sasl_cb);	/* s->users.db may be reloaded */
	s->params.sasl_cb = &s->sasl_cb;
	if (users_open(&s->users, c->users_url, error_r) < 0) {
		free(s);
		return -1;
	}
	s->params.user_resolve = user_resolve;
	s->params.user_arg = s;
	s->sieve.quarantine_dir = c->quarantine_dir;
	s->sieve.maildir_root = c->maildir_root;
	s->sieve.relayhost = c->downstream;
	s->sieve.myhostname = c->params.myhostname;
	s->sieve.timeout = c->timeout < 60 ? c->timeout : 60;
	s->sieve.limits = c->sieve_limits;
	s->sieve.pol = c->params.pol;
	if (c->params.sieve != NULL && smtp_sieve_dirs(c->quarantine_dir, error_r) < 0) {
		users_close(&s->users);
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
	s->jobs = jobs_new(s->base, "delivery", SMTP_DELIVERY_THREADS, 0);
	s->auth = authcheck_new(s->base, "smtp", "AUTH answered 454", SMTP_AUTH_THREADS,
	    SMTP_AUTH_QUEUE, &c->penalty, c->ban, c->ban_arg);
	s->downs = downstream_set_new(s->base, c->downstream_cache_time);
	if (c->resolver != NULL && (s->dns = fcrdns_resolver_new(s->base, c->resolver,
	    error_r)) == NULL)
		rc = -1;
	snprintf(s->timeout_words, sizeof(s->timeout_words),
	    "421 4.4.2 %s Error: timeout exceeded\r\n", s->params.myhostname);
	s->ccf = (struct conn_server_conf){
		.door = "smtp",
		.max_connections = c->max_connections,
		.max_per_client = c->max_per_client,
		.timeout = c->timeout,
		.stress_timeout = c->stress_timeout,
		.request_deadline = c->request_deadline,
		.min_data_rate = c->min_data_rate,
		.tls = c->tls,
		.words_timeout = s->timeout_words,
		.words_too_many = "421 4.7.0 Too many connections, try again later\r\n",
		.words_too_many_client = "421 4.7.0 Too many connections from your address\r\n",
		.message_name = "DATA",
	};
	s->cs = conn_server_new(s->base, &s->ccf, &sess_ops, s);
	for (size_t i = 0; i < nfds && rc == 0; i++) {
		static const char *const names[] = { "smtp", "submission", "smtps" };

		if (conn_server_listen(s->cs, fds[i], names[kinds[i]], (int)kinds[i],
		    kinds[i] == LISTEN_SMTPS, error_r) < 0)
			rc = -1;
	}
	/* live reload: the new worker takes the listeners; we finish what runs.
	 * Each second: the drain's deadline and the anvil's expiry, and the users
	 * reloaded when their file changed (a broken file keeps the last good
	 * users; the alternative is a permanent 550 5.1.1 for every local
	 * recipient). */
	loop = door_loop_new(s->cs, "smtp", c->timeout, &s->users, NULL, NULL, s);
	if (rc == 0)
		door_loop_run(loop);
	conn_server_stop(s->cs);	/* no new input; what runs finishes */
	s->stopping = 1;
	fcrdns_resolver_free(&s->dns);	/* pending lookups call back first */
	jobs_free(&s->jobs);	/* deliveries in flight finish first */
	authcheck_free(&s->auth);	/* checks in flight call back; penalty waits are dropped */
	conn_server_free(&s->cs);	/* every session hears closing, then free */
	downstream_set_free(&s->downs);	/* sessions saying QUIT are cut short */
	door_loop_free(&loop);
	event_base_free(s->base);
	users_close(&s->users);
	free(s);
	return rc;
}
