/*
 * proxy - the backend side of a proxied IMAP/POP3 session (see proxy.h).
 *
 *   proxy_conf_parse()   mail_proxy_tls_ca_file, mail_proxy_timeout,
 *                        mail_proxy_forward_client
 *   proxy_new()          connect, greeting, TLS, client address, login
 *   proxy_splice()       bytes both ways, bounded, with backpressure
 *   proxy_free()         drop the backend connection
 *
 * The login is a small state machine on the backend's lines (at most
 * PROXY_LINE_MAX each, the whole of it bounded by mail_proxy_timeout):
 *   IMAP: greeting "* OK" -> [S STARTTLS, handshake] -> [I ID (...)] ->
 *         L AUTHENTICATE PLAIN (SASL-IR when offered) -> the tagged OK's
 *         [CAPABILITY ...], or C CAPABILITY when the OK carried none
 *   POP3: greeting "+OK" -> [STLS, handshake] -> [XCLIENT ADDR= PORT=] ->
 *         USER, PASS
 * TLS to the backend (tls=yes from the first byte, tls=starttls after the
 * upgrade) verifies the chain against mail_proxy_tls_ca_file and the
 * backend's address against the certificate's IP subjectAltName; a failed
 * handshake or a backend that does not offer STARTTLS ends the login
 * (PROXY_UNAVAILABLE): never plaintext when TLS was asked for.
 *
 * The splice: client bytes go to the backend's output untouched until it
 * holds PROXY_HIGH (then the client's conn is paused until the backend
 * took it below PROXY_LOW); backend bytes go to the client's conn until its
 * output holds PROXY_HIGH (then the backend is not read until the door's
 * writable() says the client took it below the door's low mark). Each side
 * buffers at most about PROXY_HIGH + one read. Never logs peer bytes (the
 * backend's refusal is logged by its response code only).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "common/base64.h"
#include "common/conf.h"
#include "common/log.h"
#include "common/xmalloc.h"
#include "pop-imap-proxy/proxy.h"
#include "service/conn.h"

#define PROXY_LINE_MAX 8192		/* a backend line during the login */
#define PROXY_CAPS_MAX 4096		/* the post-login CAPABILITY kept */
#define PROXY_HIGH (256 * 1024)		/* stop feeding a side above this */
#define PROXY_LOW (64 * 1024)		/* ... and go on below this */

enum pstate {
	P_CONNECT,	/* TCP (and implicit TLS) under way */
	P_GREETING,
	P_STARTTLS,	/* "S STARTTLS" / "STLS" sent */
	P_TLS,		/* the upgrade's handshake */
	P_ID,		/* IMAP ID / POP3 XCLIENT sent */
	P_AUTH,		/* IMAP AUTHENTICATE sent / POP3 USER sent */
	P_AUTH_CONT,	/* IMAP: waiting for "+" (no SASL-IR) */
	P_PASS,		/* POP3 PASS sent */
	P_CAPS,		/* IMAP CAPABILITY sent */
	P_SPLICE,
	P_DONE,		/* the login failed: done() was called */
};

struct proxy {
	struct event_base *base;
	const struct proxy_conf *pc;
	enum proxy_proto proto;
	struct userdb_proxy where;
	struct conn *c;
	struct bufferevent *bev;
	enum pstate st;
	char *user, *password;
	char backend[80];		/* "HOST:PORT" */
	int sasl_ir;			/* the greeting offered SASL-IR */
	int client_paused;		/* by us: the backend's output is full */
	char caps[PROXY_CAPS_MAX];
	struct timespec t0;		/* proxy_new(): for proxy_login_ms() */
	const struct proxy_hooks *h;
	void *arg;
	int busy;			/* a conn_write() of ours is on the stack */
	int gone;			/* proxy_free() came during it: free after */
};

/* ---- settings ---- */

int
proxy_conf_parse(const struct conf *c, struct proxy_conf *pc, const char **error_r)
{
	static char err[600];
	const char *ca = conf_get(c, "mail_proxy_tls_ca_file");

	memset(pc, 0, sizeof(*pc));
	pc->timeout = (unsigned)conf_get_int(c, "mail_proxy_timeout");
	pc->forward_client = conf_get_bool(c, "mail_proxy_forward_client");
	pc->tls = SSL_CTX_new(TLS_client_method());
	if (pc->tls == NULL) {
		*error_r = "cannot make a TLS client context for the proxy";
		return -1;
	}
	if (conf_get(c, "mail_proxy_master_user")[0] != '\0') {
		const char *mf = conf_get(c, "mail_proxy_master_password_file");
		FILE *f = mf[0] ? fopen(mf, "r") : NULL;
		char line[1100];

		if (f == NULL || fgets(line, sizeof(line), f) == NULL ||
		    (line[strcspn(line, "\r\n")] = '\0', line[0] == '\0')) {
			snprintf(err, sizeof(err), "%s: mail_proxy_master_user needs "
			    "mail_proxy_master_password_file, a file whose first line is the "
			    "password%s%s", conf_where(c, "mail_proxy_master_user"), mf[0] ? ": " : "",
			    mf[0] ? (f == NULL ? strerror(errno) : "empty") : "");
			if (f != NULL)
				fclose(f);
			explicit_bzero(line, sizeof(line));
			*error_r = err;
			SSL_CTX_free(pc->tls);
			pc->tls = NULL;
			return -1;
		}
		fclose(f);
		pc->master_user = xstrdup(conf_get(c, "mail_proxy_master_user"));
		pc->master_password = xstrdup(line);
		explicit_bzero(line, sizeof(line));
	}
	pc->auth_backend = strcmp(conf_get(c, "mail_proxy_auth"), "backend") == 0;
	pc->domains = conf_get_list(c, "mail_proxy_domains", &pc->ndomains);
	{
		const char *d = conf_get(c, "mail_proxy_default");
		char host[80];
		const char *perr;
		char *fields;
		size_t hl;
		const char *port = NULL;

		if (d[0] == '[') {
			hl = strcspn(d + 1, "]");
			snprintf(host, sizeof(host), "%.*s", (int)hl, d + 1);
			if (d[1 + hl] == ']' && d[2 + hl] == ':')
				port = d + 3 + hl;
		} else {
			hl = strcspn(d, ":");
			snprintf(host, sizeof(host), "%.*s", (int)hl, d);
			if (d[hl] == ':')
				port = d + hl + 1;
		}
		fields = d[0] ? xasprintf("proxy=y host=%s%s%s", host, port ? " port=" : "",
		    port ? port : "") : NULL;
		if (fields != NULL && userdb_proxy_parse(fields, &pc->def, &perr) != 1) {
			snprintf(err, sizeof(err), "%s: mail_proxy_default = %.100s: expected "
			    "ADDRESS[:PORT] or [IPV6]:PORT (%s)", conf_where(c, "mail_proxy_default"),
			    d, perr);
			free(fields);
			*error_r = err;
			proxy_conf_deinit(pc);
			return -1;
		}
		free(fields);
		if (pc->ndomains > 0 && d[0] == '\0') {
			snprintf(err, sizeof(err), "%s: mail_proxy_domains needs mail_proxy_default",
			    conf_where(c, "mail_proxy_domains"));
			*error_r = err;
			proxy_conf_deinit(pc);
			return -1;
		}
	}
	SSL_CTX_set_min_proto_version(pc->tls, TLS1_2_VERSION);
	SSL_CTX_set_verify(pc->tls, SSL_VERIFY_PEER, NULL);
	if (ca[0] != '\0' ? SSL_CTX_load_verify_locations(pc->tls, ca, NULL) != 1 :
	    SSL_CTX_set_default_verify_paths(pc->tls) != 1) {
		snprintf(err, sizeof(err), "%s: mail_proxy_tls_ca_file: cannot load the CA "
		    "certificates %s",
		    conf_where(c, "mail_proxy_tls_ca_file"), ca[0] ? ca : "(system default)");
		*error_r = err;
		proxy_conf_deinit(pc);
		return -1;
	}
	return 0;
}

void
proxy_conf_deinit(struct proxy_conf *pc)
{
	if (pc->tls != NULL)
		SSL_CTX_free(pc->tls);
	pc->tls = NULL;
	free(pc->master_user);
	pc->master_user = NULL;
	if (pc->master_password != NULL) {
		explicit_bzero(pc->master_password, strlen(pc->master_password));
		free(pc->master_password);
	}
	pc->master_password = NULL;
	if (pc->domains != NULL)
		conf_list_free(pc->domains);
	pc->domains = NULL;
	pc->ndomains = 0;
}

int
proxy_default_route(const struct proxy_conf *pc, const char *user, struct userdb_proxy *r)
{
	const char *at = strrchr(user, '@');

	if (!pc->auth_backend || at == NULL || pc->def.host[0] == '\0')
		return 0;
	for (size_t i = 0; i < pc->ndomains; i++)
		if (strcasecmp(at + 1, pc->domains[i]) == 0) {
			*r = pc->def;
			return 1;
		}
	return 0;
}

char *
proxy_master_login(const struct proxy_conf *pc, const char *user, const char **password_r)
{
	if (pc->master_user == NULL)
		return NULL;
	*password_r = pc->master_password;
	return xasprintf("%s*%s", user, pc->master_user);
}

/* ---- the login ---- */

static void event_cb(struct bufferevent *bev, short what, void *arg);
static void read_cb(struct bufferevent *bev, void *arg);
static void write_cb(struct bufferevent *bev, void *arg);

/* the end of the login: done() once; px may be freed by it */
static void
finish(struct proxy *px, enum proxy_result res, const char *why)
{
	px->st = res == PROXY_OK ? P_SPLICE : P_DONE;
	if (res != PROXY_OK) {
		bufferevent_disable(px->bev, EV_READ | EV_WRITE);
	} else {
		bufferevent_set_timeouts(px->bev, NULL, NULL);
		bufferevent_disable(px->bev, EV_READ);	/* until proxy_splice() */
	}
	px->h->done(px->arg, res, res == PROXY_OK ? px->caps : "", why);
}

static void
send_line(struct proxy *px, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
send_line(struct proxy *px, const char *fmt, ...)
{
	va_list ap;
	char *s;

	va_start(ap, fmt);
	if (vasprintf(&s, fmt, ap) < 0)
		s = NULL;
	va_end(ap);
	if (s == NULL)
		return;
	bufferevent_write(px->bev, s, strlen(s));
	bufferevent_write(px->bev, "\r\n", 2);
	explicit_bzero(s, strlen(s));
	free(s);
}

static SSL *
new_ssl(struct proxy *px)
{
	SSL *ssl = SSL_new(px->pc->tls);

	if (ssl == NULL)
		return NULL;
	/* the name checked is the address we connect to (an IP subjectAltName) */
	if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), px->where.host) != 1) {
		SSL_free(ssl);
		return NULL;
	}
	return ssl;
}

/* "a.b.c.d" and port of a socket's end: 0, -1 */
static int
sock_end(int fd, int peer, char *ip, size_t cap, unsigned *port_r)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	int rc = peer ? getpeername(fd, (struct sockaddr *)&ss, &sl) :
	    getsockname(fd, (struct sockaddr *)&ss, &sl);

	if (rc < 0)
		return -1;
	if (ss.ss_family == AF_INET) {
		struct sockaddr_in *a = (struct sockaddr_in *)&ss;

		inet_ntop(AF_INET, &a->sin_addr, ip, (socklen_t)cap);
		*port_r = ntohs(a->sin_port);
	} else if (ss.ss_family == AF_INET6) {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;

		inet_ntop(AF_INET6, &a->sin6_addr, ip, (socklen_t)cap);
		*port_r = ntohs(a->sin6_port);
	} else {
		return -1;
	}
	return 0;
}

static void send_login(struct proxy *px);

/* after the greeting (and TLS): the client's address, then the login */
static void
after_tls(struct proxy *px)
{
	char rip[INET6_ADDRSTRLEN], lip[INET6_ADDRSTRLEN];
	unsigned rport, lport;
	int fd = bufferevent_getfd(conn_bev(px->c));

	if (px->pc->forward_client && fd >= 0 && sock_end(fd, 1, rip, sizeof(rip), &rport) == 0 &&
	    sock_end(fd, 0, lip, sizeof(lip), &lport) == 0) {
		px->st = P_ID;
		if (px->proto == PROXY_IMAP)
			send_line(px, "I ID (\"x-originating-ip\" \"%s\" \"x-originating-port\" \"%u\" "
			    "\"x-connected-ip\" \"%s\" \"x-connected-port\" \"%u\")", rip, rport, lip, lport);
		else
			send_line(px, "XCLIENT ADDR=%s PORT=%u", rip, rport);
		return;
	}
	send_login(px);
}

/* the login with the client's credentials */
static void
send_login(struct proxy *px)
{
	px->st = P_AUTH;
	if (px->proto == PROXY_POP3) {
		send_line(px, "USER %s", px->user);
		return;
	}
	{
		size_t ul = strlen(px->user), pl = strlen(px->password), n = ul + pl + 2;
		char *raw = xmalloc(n), *b64 = xmalloc(BASE64_ENCODED_LEN(n) + 1);

		raw[0] = '\0';
		memcpy(raw + 1, px->user, ul);
		raw[1 + ul] = '\0';
		memcpy(raw + 2 + ul, px->password, pl);
		base64_encode(raw, n, b64);
		if (px->sasl_ir) {
			send_line(px, "L AUTHENTICATE PLAIN %s", b64);
		} else {
			send_line(px, "L AUTHENTICATE PLAIN");
			px->st = P_AUTH_CONT;
		}
		explicit_bzero(raw, n);
		/* kept for the "+" when there was no SASL-IR */
		free(px->password);
		px->password = b64;
		free(raw);
	}
}

/* 0 under way; -1: failed (done() was called: px may be gone) */
static int
start_tls_upgrade(struct proxy *px)
{
	SSL *ssl = new_ssl(px);
	struct bufferevent *b;

	if (ssl == NULL) {
		finish(px, PROXY_UNAVAILABLE, "cannot start TLS");
		return -1;
	}
	b = bufferevent_openssl_filter_new(px->base, px->bev, ssl, BUFFEREVENT_SSL_CONNECTING,
	    BEV_OPT_CLOSE_ON_FREE);
	if (b == NULL) {
		SSL_free(ssl);
		finish(px, PROXY_UNAVAILABLE, "cannot start TLS");
		return -1;
	}
	px->bev = b;
	px->st = P_TLS;
	bufferevent_setcb(b, read_cb, write_cb, event_cb, px);
	bufferevent_setwatermark(b, EV_READ, 0, PROXY_HIGH);
	{
		struct timeval t = { (time_t)px->pc->timeout, 0 };

		bufferevent_set_timeouts(b, &t, &t);
	}
	bufferevent_enable(b, EV_READ | EV_WRITE);
	return 0;
}

/* "[CAPABILITY a b c]" at p: copy the list into px->caps */
static void
take_caps_code(struct proxy *px, const char *p)
{
	const char *e;

	if (strncasecmp(p, "[CAPABILITY ", 12) != 0)
		return;
	p += 12;
	e = strchr(p, ']');
	if (e == NULL)
		return;
	snprintf(px->caps, sizeof(px->caps), "%.*s", (int)(e - p), p);
}

static int
has_word(const char *list, const char *w)
{
	size_t wl = strlen(w);

	for (const char *p = list; *p;) {
		size_t l = strcspn(p, " ");

		if (l == wl && strncasecmp(p, w, wl) == 0)
			return 1;
		p += l;
		p += strspn(p, " ");
	}
	return 0;
}

/* one backend line of the IMAP login; -1 when px is gone or done */
static int
imap_line(struct proxy *px, const char *l)
{
	switch (px->st) {
	case P_GREETING:
		if (strncasecmp(l, "* OK", 4) != 0) {
			finish(px, PROXY_UNAVAILABLE, "the backend's greeting is not * OK");
			return -1;
		}
		take_caps_code(px, l + 5);
		px->sasl_ir = has_word(px->caps, "SASL-IR");
		if (px->where.tls == USERDB_TLS_STARTTLS) {
			if (px->caps[0] != '\0' && !has_word(px->caps, "STARTTLS")) {
				finish(px, PROXY_UNAVAILABLE, "the backend does not offer STARTTLS");
				return -1;
			}
			px->st = P_STARTTLS;
			send_line(px, "S STARTTLS");
			return 0;
		}
		after_tls(px);
		return 0;
	case P_STARTTLS:
		if (l[0] == '*')
			return 0;
		if (strncasecmp(l, "S OK", 4) != 0) {
			finish(px, PROXY_UNAVAILABLE, "the backend refused STARTTLS");
			return -1;
		}
		/* 1: what follows is TLS: stop reading lines */
		return start_tls_upgrade(px) < 0 ? -1 : 1;
	case P_ID:
		if (strncmp(l, "I ", 2) == 0)
			send_login(px);	/* whatever the backend made of the ID */
		return 0;
	case P_AUTH_CONT:
		if (l[0] == '+') {
			send_line(px, "%s", px->password);
			px->st = P_AUTH;
			return 0;
		}
		/* FALLTHROUGH */
	case P_AUTH:
		if (strncmp(l, "* CAPABILITY ", 13) == 0) {
			snprintf(px->caps, sizeof(px->caps), "%s", l + 13);
			return 0;
		}
		if (strncmp(l, "L ", 2) != 0)
			return 0;
		if (strncasecmp(l + 2, "OK", 2) != 0) {
			finish(px, strncasecmp(l + 2, "NO", 2) == 0 &&
			    strstr(l, "[UNAVAILABLE]") == NULL ? PROXY_REFUSED : PROXY_UNAVAILABLE,
			    strncasecmp(l + 2, "NO", 2) == 0 ? "the backend answered NO" :
			    "the backend answered BAD");
			return -1;
		}
		px->caps[0] = '\0';
		take_caps_code(px, l + 5);
		if (px->caps[0] != '\0') {
			finish(px, PROXY_OK, "");
			return -1;
		}
		px->st = P_CAPS;
		send_line(px, "C CAPABILITY");
		return 0;
	case P_CAPS:
		if (strncmp(l, "* CAPABILITY ", 13) == 0) {
			snprintf(px->caps, sizeof(px->caps), "%s", l + 13);
			return 0;
		}
		if (strncmp(l, "C ", 2) == 0) {
			finish(px, PROXY_OK, "");
			return -1;
		}
		return 0;
	default:
		return 0;
	}
}

/* one backend line of the POP3 login; -1 when px is gone or done */
static int
pop3_line(struct proxy *px, const char *l)
{
	int ok = strncmp(l, "+OK", 3) == 0;

	switch (px->st) {
	case P_GREETING:
		if (!ok) {
			finish(px, PROXY_UNAVAILABLE, "the backend's greeting is not +OK");
			return -1;
		}
		if (px->where.tls == USERDB_TLS_STARTTLS) {
			px->st = P_STARTTLS;
			send_line(px, "STLS");
			return 0;
		}
		after_tls(px);
		return 0;
	case P_STARTTLS:
		if (!ok) {
			finish(px, PROXY_UNAVAILABLE, "the backend refused STLS");
			return -1;
		}
		return start_tls_upgrade(px) < 0 ? -1 : 1;
	case P_ID:
		/* XCLIENT's answer either way (a backend that does not trust us says -ERR) */
		send_login(px);
		return 0;
	case P_AUTH:
		if (!ok) {
			finish(px, PROXY_REFUSED, "the backend refused USER");
			return -1;
		}
		px->st = P_PASS;
		send_line(px, "PASS %s", px->password);
		return 0;
	case P_PASS:
		if (!ok) {
			finish(px, strstr(l, "[SYS/") || strstr(l, "[IN-USE]") ? PROXY_UNAVAILABLE :
			    PROXY_REFUSED, "the backend answered -ERR");
			return -1;
		}
		finish(px, PROXY_OK, "");
		return -1;
	default:
		return 0;
	}
}

static void
login_read(struct proxy *px)
{
	struct evbuffer *in = bufferevent_get_input(px->bev);

	while (px->st != P_SPLICE && px->st != P_DONE && px->st != P_CONNECT &&
	    px->st != P_TLS) {
		size_t n;
		char *l = evbuffer_readln(in, &n, EVBUFFER_EOL_CRLF);
		int r;

		if (l == NULL) {
			if (evbuffer_get_length(in) > PROXY_LINE_MAX)
				finish(px, PROXY_UNAVAILABLE, "a backend line is too long");
			return;
		}
		if (n > PROXY_LINE_MAX || memchr(l, '\0', n) != NULL) {
			free(l);
			finish(px, PROXY_UNAVAILABLE, "a backend line is too long or holds NUL");
			return;
		}
		r = px->proto == PROXY_IMAP ? imap_line(px, l) : pop3_line(px, l);
		free(l);
		if (r != 0)
			return;
	}
}

/* ---- the splice ---- */

static void px_destroy(struct proxy *px);

/*
 * conn_write() may end the client's connection on the spot (a TLS filter
 * that fails its write): the door's closing then calls proxy_free() while
 * we are still inside px. That free waits until we are out: 0, or -1 when
 * px is gone and the caller must not touch it again.
 */
static int
client_write(struct proxy *px, const void *p, size_t n)
{
	px->busy++;
	conn_write(px->c, p, n);
	px->busy--;
	if (!px->gone)
		return 0;
	if (px->busy == 0)
		px_destroy(px);
	return -1;
}

/* backend bytes to the client while its output has room */
static void
to_client(struct proxy *px)
{
	struct evbuffer *in = bufferevent_get_input(px->bev);

	while (evbuffer_get_length(in) > 0 && !conn_is_closing(px->c) &&
	    conn_output_pending(px->c) < PROXY_HIGH) {
		size_t room = PROXY_HIGH - conn_output_pending(px->c), n;
		struct evbuffer_iovec v;

		/* the first piece through conn_write (straight to the socket when
		 * nothing is queued; it also restarts the client's clock), the rest
		 * moved chain by chain into the client's output, not copied */
		if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
			break;
		n = v.iov_len < room ? v.iov_len : room;
		if (client_write(px, v.iov_base, n) != 0)
			return;		/* the client's end came with it: px is gone */
		evbuffer_drain(in, n);
		room -= n;
		if (room > 0 && evbuffer_get_length(in) > 0 && !conn_is_closing(px->c)) {
			/* a TLS filter encrypts it on the spot, and may fail there */
			px->busy++;
			evbuffer_remove_buffer(in, bufferevent_get_output(conn_bev(px->c)), room);
			px->busy--;
			if (px->gone) {
				if (px->busy == 0)
					px_destroy(px);
				return;
			}
		}
	}
	if (evbuffer_get_length(in) > 0)
		bufferevent_disable(px->bev, EV_READ);	/* the client is behind */
	else
		bufferevent_enable(px->bev, EV_READ);
}

void
proxy_splice(struct proxy *px)
{
	/* libevent moves 16 KiB per read/write call by default: a long FETCH
	 * goes in fewer system calls with 64 KiB */
	bufferevent_set_max_single_read(px->bev, PROXY_LOW);
	bufferevent_set_max_single_write(px->bev, PROXY_LOW);
	bufferevent_set_max_single_write(conn_bev(px->c), PROXY_LOW);
	bufferevent_setwatermark(px->bev, EV_WRITE, PROXY_LOW, 0);
	bufferevent_enable(px->bev, EV_READ | EV_WRITE);
	to_client(px);		/* anything the backend sent right after the login */
	proxy_client_input(px);	/* and what the client pipelined after its login */
}

void
proxy_client_input(struct proxy *px)
{
	struct evbuffer *out;

	if (px->st != P_SPLICE)
		return;
	out = bufferevent_get_output(px->bev);
	evbuffer_add_buffer(out, conn_input(px->c));
	if (evbuffer_get_length(out) >= PROXY_HIGH && !px->client_paused) {
		px->client_paused = 1;
		conn_pause(px->c);
	}
}

void
proxy_client_writable(struct proxy *px)
{
	if (px->st == P_SPLICE)
		to_client(px);
}

/* ---- backend events ---- */

static void
read_cb(struct bufferevent *bev, void *arg)
{
	struct proxy *px = arg;

	(void)bev;
	if (px->st == P_SPLICE)
		to_client(px);
	else
		login_read(px);
}

static void
write_cb(struct bufferevent *bev, void *arg)
{
	struct proxy *px = arg;

	(void)bev;
	/* the backend took the client's bytes below the low mark */
	if (px->st == P_SPLICE && px->client_paused) {
		px->client_paused = 0;
		conn_resume(px->c);
	}
}

/* what TLS says went wrong into buf: 1, or 0 when it has nothing to say */
static int
tls_why(struct proxy *px, char *buf, size_t cap, const char *what)
{
	unsigned long e = bufferevent_get_openssl_error(px->bev);
	SSL *ssl = bufferevent_openssl_get_ssl(px->bev);
	long vr = ssl != NULL ? SSL_get_verify_result(ssl) : X509_V_OK;

	if (vr != X509_V_OK)
		snprintf(buf, cap, "%s: TLS: certificate not accepted: %s", what,
		    X509_verify_cert_error_string(vr));
	else if (e != 0)
		snprintf(buf, cap, "%s: TLS: %s", what, ERR_reason_error_string(e) ?
		    ERR_reason_error_string(e) : "error");
	else
		return 0;
	while (bufferevent_get_openssl_error(px->bev) != 0)
		;
	return 1;
}

static void
event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct proxy *px = arg;
	char why[300];

	(void)bev;
	if (what & BEV_EVENT_CONNECTED) {
		if (px->st == P_CONNECT) {
			int one = 1, fd = (int)bufferevent_getfd(px->bev);

			/* an interactive protocol: no Nagle wait on our small writes */
			if (fd >= 0)
				(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
			px->st = P_GREETING;
			login_read(px);
		} else if (px->st == P_TLS) {
			after_tls(px);
			login_read(px);
		}
		return;
	}
	if (px->st == P_SPLICE) {
		/* the backend ended the session: what it sent goes out, then the client is closed */
		struct evbuffer *in = bufferevent_get_input(px->bev);

		while (evbuffer_get_length(in) > 0 && !conn_is_closing(px->c)) {
			struct evbuffer_iovec v;

			if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
				break;
			if (client_write(px, v.iov_base, v.iov_len) != 0)
				return;	/* the client's end came with it: px is gone */
			evbuffer_drain(in, v.iov_len);
		}
		px->st = P_DONE;
		bufferevent_disable(px->bev, EV_READ | EV_WRITE);
		log_info("%s: conn=%s proxy: backend=%s: the backend closed the session%s: closing "
		    "the client's", px->proto == PROXY_IMAP ? "imap" : "pop3", conn_id(px->c),
		    px->backend, (what & BEV_EVENT_EOF) ? "" :
		    " (error)");
		if (!conn_is_closing(px->c))
			conn_close(px->c);	/* may free px (the door's closing) */
		return;
	}
	if (px->st == P_DONE)
		return;
	if (what & BEV_EVENT_TIMEOUT) {
		snprintf(why, sizeof(why), "no answer within %u s (mail_proxy_timeout)",
		    px->pc->timeout);
	} else if (what & BEV_EVENT_EOF) {
		snprintf(why, sizeof(why), "the backend closed the connection during the login");
	} else {
		int err = EVUTIL_SOCKET_ERROR();
		int in_tls = px->st == P_TLS ||
		    (px->st == P_CONNECT && px->where.tls == USERDB_TLS_YES);

		if (!in_tls || !tls_why(px, why, sizeof(why), "TLS handshake failed"))
			snprintf(why, sizeof(why), "%s", err ? evutil_socket_error_to_string(err) :
			    "connection error");
	}
	finish(px, PROXY_UNAVAILABLE, why);
}

/* ---- the object ---- */

struct proxy *
proxy_new(struct event_base *base, const struct proxy_conf *pc, enum proxy_proto proto,
    const struct userdb_proxy *where, struct conn *c, const char *user, const char *password,
    const struct proxy_hooks *h, void *arg)
{
	struct proxy *px = xcalloc(1, sizeof(*px));
	struct sockaddr_storage ss;
	int sl = sizeof(ss);
	unsigned port = where->port ? where->port : proto == PROXY_IMAP ?
	    (where->tls == USERDB_TLS_YES ? 993 : 143) : (where->tls == USERDB_TLS_YES ? 995 : 110);
	char spec[96];
	struct timeval t = { (time_t)pc->timeout, 0 };

	px->base = base;
	px->pc = pc;
	px->proto = proto;
	px->where = *where;
	px->c = c;
	px->user = xstrdup(user);
	px->password = xstrdup(password);
	px->h = h;
	px->arg = arg;
	px->st = P_CONNECT;
	clock_gettime(CLOCK_MONOTONIC, &px->t0);
	/* POP3 sends them as they are: no line breaks smuggled into the backend's session */
	if (strpbrk(user, "\r\n") != NULL || strpbrk(password, "\r\n") != NULL) {
		px->bev = NULL;
		px->st = P_DONE;
	}
	snprintf(px->backend, sizeof(px->backend), strchr(where->host, ':') ? "[%s]:%u" : "%s:%u",
	    where->host, port);
	snprintf(spec, sizeof(spec), strchr(where->host, ':') ? "[%s]:%u" : "%s:%u", where->host,
	    port);
	memset(&ss, 0, sizeof(ss));
	if (px->st == P_DONE)
		return px;
	if (evutil_parse_sockaddr_port(spec, (struct sockaddr *)&ss, &sl) < 0) {
		px->bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
		px->st = P_DONE;
		return px;	/* the caller sees proxy_failed_at_start() */
	}
	if (where->tls == USERDB_TLS_YES) {
		SSL *ssl = new_ssl(px);

		px->bev = ssl ? bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_CONNECTING,
		    BEV_OPT_CLOSE_ON_FREE) : NULL;
		if (px->bev == NULL && ssl != NULL)
			SSL_free(ssl);
	} else {
		px->bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
	}
	if (px->bev == NULL) {
		px->bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
		px->st = P_DONE;
		return px;
	}
	bufferevent_setcb(px->bev, read_cb, write_cb, event_cb, px);
	bufferevent_setwatermark(px->bev, EV_READ, 0, PROXY_HIGH);
	bufferevent_set_timeouts(px->bev, &t, &t);
	bufferevent_enable(px->bev, EV_READ | EV_WRITE);
	if (bufferevent_socket_connect(px->bev, (struct sockaddr *)&ss, sl) < 0)
		px->st = P_DONE;	/* refused at once: reported by proxy_start_failed() */
	return px;
}

int
proxy_start_failed(const struct proxy *px)
{
	return px->st == P_DONE;
}

const char *
proxy_caps(const struct proxy *px)
{
	return px->caps;
}

unsigned
proxy_login_ms(const struct proxy *px)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (unsigned)((t.tv_sec - px->t0.tv_sec) * 1000 + (t.tv_nsec - px->t0.tv_nsec) / 1000000);
}

const char *
proxy_backend(const struct proxy *px)
{
	return px->backend;
}

void
proxy_free(struct proxy **pxp)
{
	struct proxy *px = *pxp;

	if (px == NULL)
		return;
	*pxp = NULL;
	if (px->busy > 0) {	/* client_write() is on the stack: it frees */
		px->gone = 1;
		if (px->bev != NULL)
			bufferevent_disable(px->bev, EV_READ | EV_WRITE);
		return;
	}
	px_destroy(px);
}

static void
px_destroy(struct proxy *px)
{
	if (px->bev != NULL)
		bufferevent_free(px->bev);
	free(px->user);
	if (px->password != NULL) {
		explicit_bzero(px->password, strlen(px->password));
		free(px->password);
	}
	free(px);
}
