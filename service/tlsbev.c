/*
 * tlsbev - implicit TLS and STARTTLS on libevent's OpenSSL bufferevents
 * (see tlsbev.h).
 */
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "service/tlsbev.h"

struct bufferevent *
tlsbev_accept(struct event_base *base, int fd, SSL_CTX *ctx)
{
	SSL *ssl = SSL_new(ctx);
	struct bufferevent *b;

	if (ssl == NULL)
		return NULL;
	b = bufferevent_openssl_socket_new(base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
	    BEV_OPT_CLOSE_ON_FREE);
	if (b == NULL)
		SSL_free(ssl);
	return b;
}

struct bufferevent *
tlsbev_starttls(struct event_base *base, struct bufferevent *plain, SSL_CTX *ctx)
{
	SSL *ssl = SSL_new(ctx);
	struct evbuffer *in = bufferevent_get_input(plain);
	struct bufferevent *b;

	if (ssl == NULL)
		return NULL;
	/* whatever the client sent before the handshake is dropped */
	evbuffer_drain(in, evbuffer_get_length(in));
	b = bufferevent_openssl_filter_new(base, plain, ssl, BUFFEREVENT_SSL_ACCEPTING,
	    BEV_OPT_CLOSE_ON_FREE);
	if (b == NULL)
		SSL_free(ssl);
	return b;
}

int
tlsbev_error(struct bufferevent *bev, char *buf, size_t cap)
{
	unsigned long e = bufferevent_get_openssl_error(bev);

	if (e == 0)
		return 0;
	ERR_error_string_n(e, buf, cap);
	return 1;
}
