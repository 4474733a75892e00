#ifndef PC_TLSBEV_H
#define PC_TLSBEV_H
/*
 * tlsbev - TLS on a door's bufferevent, both ways every door needs it:
 * implicit TLS on a listener of its own (smtps, pop3s, imaps) and the
 * in-band upgrade (STARTTLS, STLS), which drops whatever the client
 * pipelined in plaintext before the handshake (RFC 3207 §4, RFC 2595 §4:
 * such bytes must not be taken as coming from inside TLS).
 * The handshake runs as the server; errors show as BEV_EVENT_ERROR on the
 * returned bufferevent (tlsbev_error() says which). Owner: the loop's thread.
 */
#include <stddef.h>

struct bufferevent;
struct event_base;
typedef struct ssl_ctx_st SSL_CTX;

/* a bufferevent on the accepted fd that handshakes first (closes fd when
 * freed); NULL when it cannot be made (fd then still the caller's) */
struct bufferevent *tlsbev_accept(struct event_base *base, int fd, SSL_CTX *ctx);
/* the upgrade: plain's unread input is dropped and plain is wrapped (freed
 * with the result); its queued output (the "220 Ready") still goes out in
 * plaintext first. NULL when TLS cannot start (plain untouched). */
struct bufferevent *tlsbev_starttls(struct event_base *base, struct bufferevent *plain,
    SSL_CTX *ctx);
/* the OpenSSL error behind the last BEV_EVENT_ERROR as text in buf; 0 when
 * there is none (a plain socket error or EOF) */
int tlsbev_error(struct bufferevent *bev, char *buf, size_t cap);

#endif
