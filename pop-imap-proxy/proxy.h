#ifndef PC_PROXY_H
#define PC_PROXY_H
/*
 * proxy - a door's session handed to the user's backend server (issue 12):
 * the backend-side client and the splice, door-neutral where it can be.
 *
 *   proxy_conf_parse()  the mail_proxy_* keys (the TLS client context with
 *                       mail_proxy_tls_ca_file, the timeout, forwarding)
 *   proxy_new()         connect to the backend (non-blocking, on the loop,
 *                       bounded by mail_proxy_timeout), read its greeting,
 *                       STARTTLS (tls=starttls) or implicit TLS (tls=yes),
 *                       verified against the CA file and the backend's
 *                       address or name, never falling back to plaintext; forward
 *                       the client's address (IMAP ID); log in with the
 *                       client's credentials; then hooks->done(ok)
 *   proxy_splice()      after the door answered the client: bytes both ways
 *                       with bounded buffers and backpressure, untouched
 *   proxy_client_input(), proxy_client_writable()
 *                       the door's conn callbacks, once spliced
 *   proxy_free()        drop the backend side (the client's conn stays the
 *                       door's)
 *
 * A backend that closes or fails mid-session closes the client's conn
 * (after what the backend sent). Owner: the loop's thread; never blocks,
 * never logs peer bytes. The login glue both doors share around it (routing,
 * the master login, the log lines and counters): proxy_door.h.
 */
#include <stddef.h>
#include "storage-adapter/userdb.h"

struct conf;
struct conn;
struct event_base;
struct proxy_dns;
typedef struct ssl_ctx_st SSL_CTX;

enum proxy_proto { PROXY_IMAP, PROXY_POP3 };

struct proxy_conf {
	SSL_CTX *tls;		/* the client context for tls=starttls|yes (owned) */
	unsigned timeout;	/* seconds: connect, TLS and login */
	unsigned max_reconnects;	/* a refused connect tried again (1 s apart) */
	int forward_client;	/* IMAP ID x-originating-ip..., POP3 XCLIENT */
	/* a backend master user for logins with no password to forward
	 * (CRAM-MD5, EXTERNAL, APOP): "USER*MASTER" with its password, Dovecot's
	 * auth_master_user_separator convention; NULL: none (owned) */
	char *master_user;
	char *master_password;
	/* mail_proxy_auth = backend: users of these domains with no line of
	 * their own log in to the default backend, whose verdict decides */
	int auth_backend;
	struct userdb_proxy def;	/* the door's mail_proxy_default; host "" none */
	char **domains;			/* mail_proxy_domains (conf list) */
	size_t ndomains;
	/* host= names: resolved on the loop with the resolver setting (made at
	 * the first name; owned; proxy_dns_free() before the loop goes) */
	struct proxy_dns *dns;
};

/* for the door of proto (its own default: imap_/pop3_mail_proxy_default,
 * which is mail_proxy_default unless set): 0, or -1 with *error_r (naming
 * the key) */
int proxy_conf_parse(const struct conf *c, enum proxy_proto proto, struct proxy_conf *pc,
    const char **error_r) __attribute__((warn_unused_result));
void proxy_conf_deinit(struct proxy_conf *pc);
/* the resolver of host= names, while its event loop still exists (the
 * door's end, before event_base_free) */
void proxy_dns_free(const struct proxy_conf *pc);
/* mail_proxy_auth = backend and user's domain is one of mail_proxy_domains:
 * 1 with the default backend in *r; else 0 */
int proxy_default_route(const struct proxy_conf *pc, const char *user, struct userdb_proxy *r);
/* the backend login for user when the client's mechanism left no password:
 * "USER*MASTER" (xmalloc'd) and *password_r, or NULL when there is no
 * master user */
char *proxy_master_login(const struct proxy_conf *pc, const char *user, const char **password_r);

/* the outcome of the backend login */
enum proxy_result {
	PROXY_OK,		/* logged in: caps (IMAP) is the post-login CAPABILITY */
	PROXY_REFUSED,		/* the backend refused the credentials */
	PROXY_UNAVAILABLE,	/* down, timed out, TLS failed, protocol error */
};

struct proxy_hooks {
	/* once, from the loop; why: for the log, "" on success */
	void (*done)(void *arg, enum proxy_result res, const char *caps, const char *why);
};

struct proxy;

/* start towards where for the client conn c; user/password: the backend
 * login (copied). The door keeps c held and paused until done. */
struct proxy *proxy_new(struct event_base *base, const struct proxy_conf *pc,
    enum proxy_proto proto, const struct userdb_proxy *where, struct conn *c,
    const char *user, const char *password, const struct proxy_hooks *h, void *arg);
/* 1 when proxy_new() failed at once (bad address, no socket): the door
 * answers as for PROXY_UNAVAILABLE and frees it; done() never comes */
int proxy_start_failed(const struct proxy *px);
/* "HOST:PORT" of the backend (for log lines and counters) */
const char *proxy_backend(const struct proxy *px);
/* after PROXY_OK: the backend's post-login CAPABILITY (IMAP) */
const char *proxy_caps(const struct proxy *px);
/* milliseconds since proxy_new() (the login's cost, for the log line) */
unsigned proxy_login_ms(const struct proxy *px);
void proxy_splice(struct proxy *px);
void proxy_client_input(struct proxy *px);
void proxy_client_writable(struct proxy *px);
void proxy_free(struct proxy **px);

#endif
