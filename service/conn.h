#ifndef PC_CONN_H
#define PC_CONN_H
/*
 * conn - the connection layer every network door stands on (SMTP, POP3,
 * IMAP, later the web UI and the proxy): accepting on the listeners the
 * master bound, the per-door limits, plain or TLS bufferevents (implicit TLS
 * on its own listener, RFC 8314; the in-band upgrade STARTTLS/STLS with the
 * plaintext the client pipelined dropped), the request deadline
 * (service/deadline) with Postfix's stress mode, flush-then-close, and
 * reference counts so a job, a lookup, a timer or a penalty wait can point
 * at a connection safely. The door keeps only its protocol state.
 *
 * A door makes one struct conn_server per event loop:
 *
 *   conn_server_new()      settings (struct conn_server_conf: door name,
 *                          limits, timeouts, SSL_CTX, the door's last
 *                          words) and callbacks (struct conn_ops)
 *   conn_server_listen()   accept on a bound fd (service/listener); kind is
 *                          the door's own tag (smtp/submission/smtps...),
 *                          tls: implicit TLS on this listener
 *   conn_server_drain()    live reload: drop the listeners, let every open
 *                          connection finish, call back once none is left
 *                          (or the drain deadline passed: conn_server_tick())
 *   conn_server_tick()     once a second: anvil expiry, the drain deadline
 *   conn_server_stop()     no new input is taken (the door then frees its
 *                          job pools, whose completions may still release)
 *   conn_server_free()     closes what is left: ops->closing and ops->free
 *                          for each, holds or not
 *
 * A connection's life, as the door sees it through struct conn_ops:
 *   opened(c)     accepted and within the limits: make the door's state
 *                 (conn_set_ctx) and queue the greeting -- or the refusal
 *                 (kill-listed: conn_write + conn_close), or hold and pause
 *                 it while a client name lookup runs. Not called for a
 *                 connection refused by max_connections/max_per_client
 *                 (the conf's words go out instead).
 *   input(c)      bytes wait in conn_input(c): consume what the protocol
 *                 takes (evbuffer_drain), write replies. Not called while
 *                 paused or held (input stays in the buffer): after the
 *                 release, conn_resume() feeds it.
 *   writable(c)   optional: the output fell to the low mark set with
 *                 conn_set_write_low() (stream a big message in pieces)
 *   in_message(c) optional: the bytes being read are message data (DATA,
 *                 APPEND literal): they earn time at min_data_rate
 *   timed_out(c)  optional: the deadline passed; the conf's timeout words
 *                 go out after it and the connection closes
 *   closing(c)    once, when the connection ends (peer gone, error,
 *                 timeout, close done): abort what needs aborting; jobs
 *                 may still hold it
 *   free(c)       the last reference is gone: free the door's state
 *
 * The door's clock: while a connection is held, paused, or its output not
 * yet taken, the client is waiting for us and its deadline stands still;
 * each reply starts the next request's clock. While more than 80 % of
 * max_connections are in use (stress) stress_timeout applies to all.
 *
 * The SMTP door (smtp-gateway/smtp_server.c) stands on it: opened makes
 * the smtp_proto session and greets (or holds for the client name lookup),
 * input drives smtp_proto_next, each delivery job, password check (or its
 * penalty wait) and name lookup holds the connection, a downstream reply or
 * a full downstream only pauses it, closing aborts the spool and the
 * downstream session, in_message is smtp_proto_in_data.
 *
 * Owner: the event loop's thread; nothing here blocks. Never logs peer bytes.
 */
#include <stddef.h>
#include <time.h>

#include "common/cidr.h"

struct bufferevent;
struct evbuffer;
struct event_base;
typedef struct ssl_ctx_st SSL_CTX;
typedef struct ssl_st SSL;

struct conn;
struct conn_server;

struct conn_server_conf {
	const char *door;		/* "smtp", "pop3": log lines, connections_total{door=} */
	unsigned max_connections;	/* 0: no limit */
	unsigned max_per_client;	/* per client address (IPv6: /64); 0: no limit */
	unsigned timeout;		/* seconds per request (idle without request_deadline) */
	unsigned stress_timeout;	/* in force above 80 % of max_connections */
	int request_deadline;		/* the timeout bounds a whole request */
	unsigned min_data_rate;		/* bytes/s message data must keep up */
	SSL_CTX *tls;			/* NULL: no implicit TLS, no upgrade */
	/* the door's last words, whole lines with CRLF ("421 4.4.2 ... \r\n",
	 * "-ERR ...\r\n", "* BYE ...\r\n"); NULL: none, just close */
	const char *words_timeout;
	const char *words_too_many;		/* max_connections exceeded */
	const char *words_too_many_client;	/* max_per_client exceeded */
	/* what in_message() calls the data in the timeout's log line ("DATA":
	 * "timeout after 300 s in DATA"); NULL: "message data" */
	const char *message_name;
};

struct conn_ops {
	void (*opened)(struct conn *c);
	void (*input)(struct conn *c);
	void (*writable)(struct conn *c);	/* may be NULL */
	int (*in_message)(struct conn *c);	/* may be NULL */
	void (*timed_out)(struct conn *c);	/* may be NULL */
	void (*closing)(struct conn *c);	/* may be NULL */
	void (*free)(struct conn *c);		/* may be NULL */
	void (*tls_ready)(struct conn *c);	/* may be NULL: a TLS handshake is done */
};

/* cf and ops must outlive the server; arg is the door's (conn_server_arg) */
struct conn_server *conn_server_new(struct event_base *base, const struct conn_server_conf *cf,
    const struct conn_ops *ops, void *arg);
/* accept on fd (the caller closes it after conn_server_free); name for logs */
int conn_server_listen(struct conn_server *s, int fd, const char *name, int kind, int tls,
    const char **error_r) __attribute__((warn_unused_result));
/* stop accepting; drained(arg) once no connection is left, or when
 * conn_server_tick() finds `seconds` passed (said in the log) */
void conn_server_drain(struct conn_server *s, unsigned seconds, void (*drained)(void *arg),
    void *arg);
int conn_server_is_draining(const struct conn_server *s);
void conn_server_tick(struct conn_server *s, time_t now);
void conn_server_stop(struct conn_server *s);
void conn_server_free(struct conn_server **s);
void *conn_server_arg(const struct conn_server *s);
struct event_base *conn_server_base(const struct conn_server *s);
unsigned conn_server_count(const struct conn_server *s);
int conn_server_is_stressed(const struct conn_server *s);

/* ---- one connection ---- */
struct conn_server *conn_server(const struct conn *c);
void *conn_ctx(const struct conn *c);
void conn_set_ctx(struct conn *c, void *ctx);
const char *conn_id(const struct conn *c);		/* "conn=ID" on every log line */
const struct ipaddr *conn_addr(const struct conn *c);	/* NULL: unknown */
const char *conn_addr_text(const struct conn *c, char buf[CIDR_TEXT_MAX]);	/* or "unknown" */
int conn_kind(const struct conn *c);			/* the listener's kind */
int conn_is_tls(const struct conn *c);			/* handshake pending or done */
SSL *conn_ssl(const struct conn *c);			/* NULL: plain */
/* the verified client certificate's identity once the handshake is done
 * (common/tls tls_peer_identity: for AUTH EXTERNAL), else NULL */
const char *conn_tls_peer(struct conn *c);
struct bufferevent *conn_bev(const struct conn *c);
int conn_is_closing(const struct conn *c);

/* the bytes read and not yet consumed (drain what the protocol took) */
struct evbuffer *conn_input(const struct conn *c);
/* queue a reply; on a plain connection with nothing queued it goes straight
 * to the socket. Starts the next request's clock. */
void conn_write(struct conn *c, const void *p, size_t n);
size_t conn_output_pending(const struct conn *c);
/* writable() once the output is below low bytes (0: never) */
void conn_set_write_low(struct conn *c, size_t low);
/* this connection's timeout in seconds instead of the server's (IMAP IDLE,
 * a shorter one before login); 0: the server's again. Stress still cuts it
 * to stress_timeout. */
void conn_set_timeout(struct conn *c, unsigned seconds);
/* stop / go on reading; resume feeds input already buffered (pipelining) */
void conn_pause(struct conn *c);
void conn_resume(struct conn *c);
/* TLS now (after the door queued "220 Ready" / "+OK Begin TLS"): the
 * plaintext pipelined after the command is dropped. -1: cannot (logged;
 * the connection is closing) */
int conn_starttls(struct conn *c);
/* close once the output is on the wire (through a TLS filter too) */
void conn_close(struct conn *c);

/* a job, lookup or timer will call back with c */
void conn_hold(struct conn *c);
/* that callback came: 1 when c was closed meanwhile (then freed with the
 * last release): the caller must not touch it again */
int conn_release(struct conn *c) __attribute__((warn_unused_result));

#endif
