/*
 * proxy - the backend side of a proxied IMAP/POP3 session (see proxy.h).
 *
 *   proxy_conf_parse()   mail_proxy_tls_ca_file, mail_proxy_timeout,
 *                        mail_proxy_forward_client, the door's default
 *   proxy_dns_free()     the resolver of host= names, before the loop goes
 *   proxy_new()          connect (a host= name looked up on the loop
 *                        through the resolver setting; a refused connect
 *                        tried again, mail_proxy_max_reconnects), greeting,
 *                        TLS, client address, login
 *   proxy_splice()       bytes both ways, bounded, with backpressure
 *   proxy_free()         drop the backend connection (deferred while one
 *                        of our functions is on the stack: px_enter)
 *
 * The login is pop-imap-proxy/proxy_reply's state machine on the backend's
 * lines (greeting, STARTTLS, ID/XCLIENT, the login, CAPABILITY; at most
 * PROXY_REPLY_LINE_MAX each, the whole of it bounded by mail_proxy_timeout):
 * here only the I/O it asks for.
 * TLS to the backend (tls=yes from the first byte, tls=starttls after the
 * upgrade) verifies the chain against mail_proxy_tls_ca_file and the
 * backend's address against the certificate's IP subjectAltName (a host=
 * name against its DNS subjectAltName, sent as SNI too); a failed
 * handshake or a backend that does not offer STARTTLS ends the login
 * (PROXY_UNAVAILABLE): never plaintext when TLS was asked for.
 *
 * The splice: client bytes go to the backend's output untouched until it
 * holds PROXY_HIGH (then the client's conn is paused until the backend
 * took it below PROXY_LOW); backend bytes go to the client's conn until its
 * output holds PROXY_HIGH (then the backend is not read until the door's
 * writable() says the client took it below the door's low mark). Each side
 * buffers at most about PROXY_HIGH + one read. A plaintext backend is read
 * by us, PROXY_READ at a time (libevent 2.1's bufferevent reads 4 KiB a
 * call: a loop turn per 4 KiB, the proxy's CPU doubled); when the client's
 * side is plaintext too, the backend's bytes go socket -> pipe -> socket
 * with splice(2), never through our memory, the pipe (PROXY_READ) taking
 * the place of the buffer: reading stops while it holds what the client
 * did not take, its own write event on the client's socket goes on; while
 * the backend fills the pipe and the client takes it all, one wakeup goes
 * on up to PROXY_TURN (a loop turn per 1 MiB, not per pipe-full). Either
 * path only starts when the other holds nothing, so the order is kept.
 * Never logs peer bytes (the backend's refusal is logged by its response
 * code only).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "common/conf.h"
#include "common/log.h"
#include "common/xmalloc.h"
#include "pop-imap-proxy/proxy.h"
#include "pop-imap-proxy/proxy_reply.h"
#include "service/conn.h"
#include "storage-adapter/userdb.h"

#define PROXY_HIGH (256 * 1024)		/* stop feeding a side above this */
#define PROXY_LOW (64 * 1024)		/* ... and go on below this */
#define PROXY_READ (256 * 1024)		/* one read from a plaintext backend, at most */
#define PROXY_TURN (1024 * 1024)	/* spliced in one wakeup, at most (the others' turn) */
#define PROXY_RETRY_MS 1000		/* a refused connect tried again after this */

enum pstate {
	P_CONNECT,	/* TCP (and implicit TLS) under way */
	P_LOGIN,	/* lines to proxy_reply */
	P_TLS,		/* the STARTTLS upgrade's handshake */
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
	struct proxy_reply *pr;		/* the login's state machine */
	char backend[300];		/* "HOST:PORT" */
	unsigned port;
	int client_paused;		/* by us: the backend's output is full */
	int host_is_name;		/* host= is a DNS name: resolved, checked by name */
	struct timespec t0;		/* proxy_new(): for proxy_login_ms() */
	const struct proxy_hooks *h;
	void *arg;
	/* a plaintext backend once spliced: read by us, not by the bufferevent
	 * (libevent 2.1 reads at most 4 KiB a call: a wakeup per 4 KiB) */
	struct event *rd;
	int rd_on;			/* rd is added */
	/* both sides plaintext: backend -> pipe -> client with splice(2), no
	 * copy through our memory; wr waits for the client's socket while the
	 * pipe holds what it did not take yet (inpipe bytes) */
	int pipe_ok;			/* splice allowed (both plaintext) */
	int pfd[2];			/* the pipe, made at the first splice; -1 */
	size_t inpipe;
	ssize_t pipe_cap;		/* what the pipe holds at most */
	struct event *wr;
	/* a connect the backend refused is tried again after PROXY_RETRY_MS,
	 * mail_proxy_max_reconnects times within mail_proxy_timeout, as
	 * Dovecot's login_proxy_max_reconnects: a backend restarting is not
	 * an error for the user; retry holds the timer, the refused bev stays
	 * (disabled) until then */
	unsigned reconnects;
	struct event *retry;
	int busy;			/* our functions on the stack (px_enter) */
	int gone;			/* proxy_free() came meanwhile: the last px_leave frees */
};

struct proxy_dns {
	char *resolver;			/* "system" or IP[:PORT] */
	struct evdns_base *evdns;	/* made at the first host= name */
};

/* ---- settings ---- */

int
proxy_conf_parse(const struct conf *c, enum proxy_proto proto, struct proxy_conf *pc,
    const char **error_r)
{
	/* the door's own, which is mail_proxy_default unless set */
	const char *dkey = proto == PROXY_IMAP ? "imap_mail_proxy_default" :
	    "pop3_mail_proxy_default";
	static char err[600];
	const char *ca = conf_get(c, "mail_proxy_tls_ca_file");

	memset(pc, 0, sizeof(*pc));
	pc->timeout = (unsigned)conf_get_int(c, "mail_proxy_timeout");
	pc->max_reconnects = (unsigned)conf_get_int(c, "mail_proxy_max_reconnects");
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
	pc->dns = xcalloc(1, sizeof(*pc->dns));
	pc->dns->resolver = xstrdup(conf_get(c, "resolver"));
	pc->auth_backend = strcmp(conf_get(c, "mail_proxy_auth"), "backend") == 0;
	pc->domains = conf_get_list(c, "mail_proxy_domains", &pc->ndomains);
	{
		const char *d = conf_get(c, dkey);
		char host[300];
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
		if (fields != NULL && (strpbrk(d, " \t") != NULL ||
		    userdb_proxy_parse(fields, &pc->def, &perr) != 1)) {
			snprintf(err, sizeof(err), "%s: %s = %.100s: expected ADDRESS[:PORT], "
			    "[IPV6]:PORT or NAME[:PORT] (%s)", conf_where(c, dkey), dkey, d,
			    strpbrk(d, " \t") != NULL ? "one value" : perr);
			free(fields);
			*error_r = err;
			proxy_conf_deinit(pc);
			return -1;
		}
		free(fields);
		if (pc->ndomains > 0 && d[0] == '\0') {
			snprintf(err, sizeof(err), "%s: mail_proxy_domains needs mail_proxy_default "
			    "(or %s)", conf_where(c, "mail_proxy_domains"), dkey);
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
	if (pc->dns != NULL) {
		/* an evdns base left here (no proxy_dns_free) is left alone: its
		 * loop may be gone */
		free(pc->dns->resolver);
		free(pc->dns);
	}
	pc->dns = NULL;
}

void
proxy_dns_free(const struct proxy_conf *pc)
{
	if (pc->dns != NULL && pc->dns->evdns != NULL) {
		evdns_base_free(pc->dns->evdns, 0);
		pc->dns->evdns = NULL;
	}
}

/* the resolver for host= names on base: NULL with *error_r */
static struct evdns_base *
dns_for(const struct proxy_conf *pc, struct event_base *base, const char **error_r)
{
	struct proxy_dns *d = pc->dns;

	if (d == NULL) {
		*error_r = "no resolver";
		return NULL;
	}
	if (d->evdns != NULL)
		return d->evdns;
	/* no search domains: the name is taken as written */
	d->evdns = evdns_base_new(base, 0);
	if (d->evdns == NULL) {
		*error_r = "cannot create the resolver";
		return NULL;
	}
	if (strcmp(d->resolver, "system") == 0 ?
	    evdns_base_resolv_conf_parse(d->evdns, DNS_OPTION_NAMESERVERS | DNS_OPTION_HOSTSFILE,
	    "/etc/resolv.conf") != 0 : evdns_base_nameserver_ip_add(d->evdns, d->resolver) != 0)
		log_warn("proxy: resolver = %s: no name server to ask (host= names will fail)",
		    d->resolver);
	{
		/* the lookup within mail_proxy_timeout too: two tries of half of it
		 * (the bufferevent's own timeouts do not run while it waits) */
		char t[16];

		snprintf(t, sizeof(t), "%u", pc->timeout > 1 ? pc->timeout / 2 : 1);
		(void)evdns_base_set_option(d->evdns, "timeout:", t);
		(void)evdns_base_set_option(d->evdns, "attempts:", "2");
	}
	return d->evdns;
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

static void px_destroy(struct proxy *px);
static int try_again(struct proxy *px, int err);

/*
 * Re-entrance. Whatever we call may come back into us before it returns:
 * conn_write()/conn_close() may end the client's connection (the door's
 * closing calls proxy_free()), and a TLS filter towards the backend reads
 * on the spot when its input is drained or its reading enabled, so read_cb
 * and event_cb run nested inside our own loops (the backend's close_notify
 * then closes the client in the middle of them). Every entry point brackets
 * itself with px_enter()/px_leave(); proxy_free() while any is on the stack
 * only marks px gone, and each caller checks px->gone after such a call.
 */
static void
px_enter(struct proxy *px)
{
	px->busy++;
}

/* 0, or -1 when px is gone (freed now if this was the outermost) */
static int
px_leave(struct proxy *px)
{
	if (--px->busy > 0 || !px->gone)
		return px->gone ? -1 : 0;
	px_destroy(px);
	return -1;
}

/* the end of the login: done() once; px may be gone after it */
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
	px->h->done(px->arg, res, res == PROXY_OK ? proxy_reply_caps(px->pr) : "", why);
}

static SSL *
new_ssl(struct proxy *px)
{
	SSL *ssl = SSL_new(px->pc->tls);

	if (ssl == NULL)
		return NULL;
	/* the name checked is the address we connect to (an IP subjectAltName),
	 * or the host= name (a DNS subjectAltName, also sent as SNI) */
	if (px->host_is_name ? SSL_set_tlsext_host_name(ssl, px->where.host) != 1 ||
	    X509_VERIFY_PARAM_set1_host(SSL_get0_param(ssl), px->where.host, 0) != 1 :
	    X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), px->where.host) != 1) {
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

/* do what proxy_reply asks: 0 go on with the lines, -1 stop (the login
 * ended, the handshake starts, or px is gone) */
static int
apply(struct proxy *px, enum proxy_reply_act act)
{
	const char *out = proxy_reply_out(px->pr);

	switch (act) {
	case PR_NONE:
		return 0;
	case PR_SEND: {
		size_t len = strlen(out);
		ssize_t w = 0;

		/* a plaintext backend with nothing queued: to the socket now, not
		 * after a loop turn waiting for it to be writable (as conn_write
		 * does it for the client); what it did not take, and anything for
		 * TLS, through the bufferevent (a TLS filter encrypts, and may
		 * read, on the spot) */
		if (bufferevent_get_underlying(px->bev) == NULL &&
		    bufferevent_openssl_get_ssl(px->bev) == NULL &&
		    evbuffer_get_length(bufferevent_get_output(px->bev)) == 0) {
			w = send((int)bufferevent_getfd(px->bev), out, len, MSG_NOSIGNAL | MSG_DONTWAIT);
			if (w < 0)
				w = 0;		/* EAGAIN, or an error the bufferevent will meet */
		}
		if ((size_t)w < len)
			bufferevent_write(px->bev, out + w, len - (size_t)w);
		return px->gone || px->st != P_LOGIN ? -1 : 0;
	}
	case PR_STARTTLS:
		/* nothing may stand behind the answer: plaintext there was sent
		 * (or injected on the path) before TLS, and is neither the
		 * handshake's nor the backend's word (the injection of CVE-2011-0411) */
		if (evbuffer_get_length(bufferevent_get_input(px->bev)) > 0) {
			finish(px, PROXY_UNAVAILABLE, "the backend sent more behind its STARTTLS answer");
			return -1;
		}
		start_tls_upgrade(px);	/* on failure done() came */
		return -1;
	case PR_OK:
		finish(px, PROXY_OK, "");
		return -1;
	case PR_REFUSED:
		finish(px, PROXY_REFUSED, proxy_reply_why(px->pr));
		return -1;
	default:
		finish(px, PROXY_UNAVAILABLE, proxy_reply_why(px->pr));
		return -1;
	}
}

static void
login_read(struct proxy *px)
{
	struct evbuffer *in = bufferevent_get_input(px->bev);

	while (!px->gone && px->st == P_LOGIN) {
		size_t n;
		char *l = evbuffer_readln(in, &n, EVBUFFER_EOL_CRLF);
		int r;

		if (l == NULL) {
			if (evbuffer_get_length(in) > PROXY_REPLY_LINE_MAX)
				finish(px, PROXY_UNAVAILABLE, "a backend line is too long");
			return;
		}
		r = apply(px, proxy_reply_line(px->pr, l, n));
		explicit_bzero(l, n);
		free(l);
		if (r != 0)
			return;
	}
}

/* ---- the splice ---- */

/* conn_write() inside px_enter(): 0, or -1 when px is gone */
static int
client_write(struct proxy *px, const void *p, size_t n)
{
	conn_write(px->c, p, n);
	return px->gone ? -1 : 0;
}

/* read the backend or not (backpressure); a TLS filter may read on the spot */
static void
backend_reading(struct proxy *px, int on)
{
	if (on && px->inpipe > 0)
		return;		/* the pipe first: splice_wr_cb turns reading on */
	if (px->rd == NULL) {
		if (on)
			bufferevent_enable(px->bev, EV_READ);
		else
			bufferevent_disable(px->bev, EV_READ);
	} else if (on && !px->rd_on) {
		event_add(px->rd, NULL);
		px->rd_on = 1;
	} else if (!on && px->rd_on) {
		event_del(px->rd);
		px->rd_on = 0;
	}
}

static void event_cb_in(struct proxy *px, short what);
static void to_client(struct proxy *px);

/* the pipe's bytes to the client: 0 when it took them all (or the client
 * is gone and closing: px may be gone then), 1 when it is behind */
static int
pipe_to_client(struct proxy *px)
{
	int cfd = (int)bufferevent_getfd(conn_bev(px->c));

	while (px->inpipe > 0) {
		ssize_t w = splice(px->pfd[0], NULL, cfd, NULL, px->inpipe,
		    SPLICE_F_MOVE | SPLICE_F_NONBLOCK);

		if (w > 0) {
			px->inpipe -= (size_t)w;
			continue;
		}
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			event_add(px->wr, NULL);	/* on when the client took some */
			return 1;
		}
		/* the client is gone: its conn notices; stop feeding it */
		px->inpipe = 0;
		backend_reading(px, 0);
		if (!conn_is_closing(px->c))
			conn_close(px->c);
		return 0;
	}
	return 0;
}

/* the client's socket has room again for what waits in the pipe */
static void
splice_wr_cb(evutil_socket_t fd, short what, void *arg)
{
	struct proxy *px = arg;

	(void)fd;
	(void)what;
	if (px->gone || px->st != P_SPLICE)
		return;
	px_enter(px);
	if (pipe_to_client(px) == 0 && !px->gone && px->st == P_SPLICE &&
	    !conn_is_closing(px->c))
		backend_reading(px, 1);
	px_leave(px);
}

/*
 * Backend bytes straight into the client's socket through the pipe, when
 * nothing else is queued for the client (else the order would break):
 * 1 done (px may be gone), 0 not possible now (take the buffered path).
 */
static int
splice_read(struct proxy *px, int bfd)
{
	ssize_t r;
	size_t moved = 0;

	if (!px->pipe_ok || conn_is_closing(px->c))
		return 0;
	/* what is queued the usual way goes first; while the pipe holds bytes
	 * nothing is (the buffered path never runs then) */
	if (px->inpipe == 0 && (conn_output_pending(px->c) > 0 ||
	    evbuffer_get_length(bufferevent_get_input(px->bev)) > 0))
		return 0;
	if (px->pfd[0] < 0) {
		if (pipe2(px->pfd, O_NONBLOCK | O_CLOEXEC) < 0) {
			px->pfd[0] = px->pfd[1] = -1;
			px->pipe_ok = 0;
			return 0;
		}
		/* best effort: else the pipe's default (64 KiB) */
		(void)fcntl(px->pfd[1], F_SETPIPE_SZ, PROXY_READ);
		px->pipe_cap = fcntl(px->pfd[1], F_GETPIPE_SZ);
		if (px->pipe_cap <= 0)
			px->pipe_cap = PROXY_READ;	/* unknown: one splice a wakeup */
		px->wr = event_new(px->base, bufferevent_getfd(conn_bev(px->c)), EV_WRITE,
		    splice_wr_cb, px);
	}
	/* up to PROXY_TURN a wakeup: one pipe-full after another while the
	 * backend has more (a full pipe's worth read) and the client takes it
	 * all; a short read means the socket is drained (the next splice would
	 * only say EAGAIN) */
	px_enter(px);
	do {
		r = splice(bfd, NULL, px->pfd[1], NULL, PROXY_READ, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			break;
		if (r <= 0) {
			backend_reading(px, 0);
			event_cb_in(px, (short)(BEV_EVENT_READING | (r == 0 ? BEV_EVENT_EOF :
			    BEV_EVENT_ERROR)));
			break;
		}
		px->inpipe += (size_t)r;
		moved += (size_t)r;
		if (pipe_to_client(px) == 1) {
			backend_reading(px, 0);		/* the client is behind */
			break;
		}
	} while (!px->gone && px->st == P_SPLICE && !conn_is_closing(px->c) &&
	    r > 0 && r >= px->pipe_cap && moved < PROXY_TURN);
	px_leave(px);
	return 1;
}

/* a plaintext backend is readable: one big read, then on to the client */
static void
own_read_cb(evutil_socket_t fd, short what, void *arg)
{
	struct proxy *px = arg;
	struct evbuffer *in = bufferevent_get_input(px->bev);
	struct evbuffer_iovec v[2];
	size_t have = evbuffer_get_length(in);
	size_t want = have >= PROXY_HIGH ? 0 : PROXY_HIGH - have;
	int nv;
	ssize_t r;

	(void)what;
	if (px->gone || px->st != P_SPLICE || splice_read(px, (int)fd))
		return;
	if (want > PROXY_READ)
		want = PROXY_READ;
	if (want == 0) {
		backend_reading(px, 0);
		return;
	}
	/* the bufferevent keeps its input's end frozen but while it reads itself */
	evbuffer_unfreeze(in, 0);
	nv = evbuffer_reserve_space(in, (ev_ssize_t)want, v, 2);
	if (nv < 1) {
		evbuffer_freeze(in, 0);
		return;
	}
	if (v[0].iov_len > want) {
		v[0].iov_len = want;
		nv = 1;
	} else if (nv == 2 && v[0].iov_len + v[1].iov_len > want) {
		v[1].iov_len = want - v[0].iov_len;
	}
	r = readv(fd, (struct iovec *)v, nv);
	if (r > 0) {
		size_t left = (size_t)r;

		for (int i = 0; i < nv; i++) {
			size_t l = v[i].iov_len < left ? v[i].iov_len : left;

			v[i].iov_len = l;
			left -= l;
		}
		evbuffer_commit_space(in, v, nv);
	}
	evbuffer_freeze(in, 0);
	if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
		return;
	px_enter(px);
	if (r > 0) {
		to_client(px);
	} else {
		backend_reading(px, 0);
		event_cb_in(px, (short)(BEV_EVENT_READING | (r == 0 ? BEV_EVENT_EOF :
		    BEV_EVENT_ERROR)));
	}
	px_leave(px);
}

/* backend bytes to the client while its output has room (inside px_enter) */
static void
to_client(struct proxy *px)
{
	struct evbuffer *in = bufferevent_get_input(px->bev);

	while (!px->gone && px->st == P_SPLICE && evbuffer_get_length(in) > 0 &&
	    !conn_is_closing(px->c) &&
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
			return;		/* the client's end came with it */
		evbuffer_drain(in, n);	/* a TLS filter may read (and close) on the spot */
		if (px->gone || px->st != P_SPLICE)
			return;
		room -= n;
		if (room > 0 && evbuffer_get_length(in) > 0 && !conn_is_closing(px->c)) {
			/* a TLS filter encrypts it on the spot, and may fail there */
			evbuffer_remove_buffer(in, bufferevent_get_output(conn_bev(px->c)), room);
			if (px->gone || px->st != P_SPLICE)
				return;
		}
	}
	if (px->gone || px->st != P_SPLICE)
		return;
	backend_reading(px, evbuffer_get_length(in) == 0);	/* or: the client is behind */
}

void
proxy_splice(struct proxy *px)
{
	px_enter(px);
	/* the login is over and the door has its CAPABILITY: no need for the
	 * machine any more (4 KiB less for each idle session) */
	proxy_reply_free(&px->pr);
	/* libevent moves 16 KiB per read/write call by default: a long FETCH
	 * goes in fewer system calls with 64 KiB */
	bufferevent_set_max_single_read(px->bev, PROXY_LOW);
	bufferevent_set_max_single_write(px->bev, PROXY_LOW);
	bufferevent_set_max_single_write(conn_bev(px->c), PROXY_HIGH);
	bufferevent_setwatermark(px->bev, EV_WRITE, PROXY_LOW, 0);
	if (bufferevent_get_underlying(px->bev) == NULL &&
	    bufferevent_openssl_get_ssl(px->bev) == NULL && bufferevent_getfd(px->bev) >= 0) {
		/* plaintext: our own reads, PROXY_READ at a time */
		px->rd = event_new(px->base, bufferevent_getfd(px->bev), EV_READ | EV_PERSIST,
		    own_read_cb, px);
		px->pipe_ok = !conn_is_tls(px->c) && bufferevent_getfd(conn_bev(px->c)) >= 0;
		bufferevent_enable(px->bev, EV_WRITE);
		backend_reading(px, 1);
	} else {
		bufferevent_enable(px->bev, EV_READ | EV_WRITE);
	}
	to_client(px);		/* anything the backend sent right after the login */
	if (!px->gone)
		proxy_client_input(px);	/* and what the client pipelined after its login */
	px_leave(px);
}

void
proxy_client_input(struct proxy *px)
{
	struct evbuffer *out;

	if (px->gone || px->st != P_SPLICE)
		return;
	px_enter(px);
	out = bufferevent_get_output(px->bev);
	/* a TLS filter encrypts (and may read) on the spot */
	evbuffer_add_buffer(out, conn_input(px->c));
	if (!px->gone && px->st == P_SPLICE && evbuffer_get_length(out) >= PROXY_HIGH &&
	    !px->client_paused) {
		px->client_paused = 1;
		conn_pause(px->c);
	}
	px_leave(px);
}

void
proxy_client_writable(struct proxy *px)
{
	if (px->gone || px->st != P_SPLICE)
		return;
	px_enter(px);
	to_client(px);
	px_leave(px);
}

/* ---- backend events ---- */

static void
read_cb(struct bufferevent *bev, void *arg)
{
	struct proxy *px = arg;

	(void)bev;
	if (px->gone)
		return;
	px_enter(px);
	if (px->st == P_SPLICE)
		to_client(px);
	else
		login_read(px);
	px_leave(px);
}

static void
write_cb(struct bufferevent *bev, void *arg)
{
	struct proxy *px = arg;

	(void)bev;
	/* the backend took the client's bytes below the low mark */
	if (!px->gone && px->st == P_SPLICE && px->client_paused) {
		px->client_paused = 0;
		px_enter(px);
		conn_resume(px->c);	/* feeds the door: proxy_client_input() */
		px_leave(px);
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

	(void)bev;
	if (px->gone)
		return;
	px_enter(px);
	event_cb_in(px, what);
	px_leave(px);
}

static void
event_cb_in(struct proxy *px, short what)
{
	char why[300];

	if (what & BEV_EVENT_CONNECTED) {
		if (px->st == P_CONNECT) {
			int one = 1, fd = (int)bufferevent_getfd(px->bev);

			/* an interactive protocol: no Nagle wait on our small writes */
			if (fd >= 0)
				(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
			px->st = P_LOGIN;
			login_read(px);
		} else if (px->st == P_TLS) {
			px->st = P_LOGIN;
			if (apply(px, proxy_reply_tls_done(px->pr)) == 0)
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
				return;	/* the client's end came with it */
			evbuffer_drain(in, v.iov_len);
			if (px->gone || px->st != P_SPLICE)
				return;	/* a nested event_cb did the rest */
		}
		px->st = P_DONE;
		bufferevent_disable(px->bev, EV_READ | EV_WRITE);
		backend_reading(px, 0);
		log_info("%s: conn=%s proxy: backend=%s: the backend closed the session%s: closing "
		    "the client's", px->proto == PROXY_IMAP ? "imap" : "pop3", conn_id(px->c),
		    px->backend, (what & BEV_EVENT_EOF) ? "" :
		    " (error)");
		if (!conn_is_closing(px->c))
			conn_close(px->c);	/* may end px (the door's closing): px_leave frees */
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
		int derr = px->host_is_name && px->st == P_CONNECT ?
		    bufferevent_socket_get_dns_error(px->bev) : 0;

		if (px->st == P_CONNECT && derr == 0 && try_again(px, err))
			return;
		if (derr != 0)
			snprintf(why, sizeof(why), "cannot resolve %.200s: %s", px->where.host,
			    evutil_gai_strerror(derr));
		else if (!in_tls || !tls_why(px, why, sizeof(why), "TLS handshake failed"))
			snprintf(why, sizeof(why), "%s", err ? evutil_socket_error_to_string(err) :
			    "connection error");
	}
	if (px->reconnects > 0) {
		size_t n = strlen(why);

		snprintf(why + n, sizeof(why) - n, " (after %u reconnect%s)", px->reconnects,
		    px->reconnects == 1 ? "" : "s");
	}
	finish(px, PROXY_UNAVAILABLE, why);
}

/* ---- the object ---- */

/*
 * A new bufferevent towards px->where, connecting: 0 under way (the result
 * comes to event_cb), -1 failed at once (px->st P_DONE, px->bev a bare
 * one: the caller reports it). The bufferevent's timeouts are what is left
 * of mail_proxy_timeout.
 */
static int
px_connect(struct proxy *px)
{
	const struct userdb_proxy *where = &px->where;
	struct sockaddr_storage ss;
	int sl = sizeof(ss);
	char spec[300];
	struct evdns_base *dns = NULL;
	long left = (long)px->pc->timeout * 1000 - (long)proxy_login_ms(px);
	struct timeval t;

	if (left < 100)
		left = 100;
	t.tv_sec = left / 1000;
	t.tv_usec = (left % 1000) * 1000;
	snprintf(spec, sizeof(spec), strchr(where->host, ':') ? "[%s]:%u" : "%s:%u", where->host,
	    px->port);
	memset(&ss, 0, sizeof(ss));
	if (evutil_parse_sockaddr_port(spec, (struct sockaddr *)&ss, &sl) < 0) {
		const char *err;

		px->host_is_name = userdb_is_hostname(where->host);
		if (!px->host_is_name || (dns = dns_for(px->pc, px->base, &err)) == NULL) {
			px->bev = bufferevent_socket_new(px->base, -1, BEV_OPT_CLOSE_ON_FREE);
			px->st = P_DONE;
			return -1;
		}
	}
	if (where->tls == USERDB_TLS_YES) {
		SSL *ssl = new_ssl(px);

		px->bev = ssl ? bufferevent_openssl_socket_new(px->base, -1, ssl,
		    BUFFEREVENT_SSL_CONNECTING, BEV_OPT_CLOSE_ON_FREE) : NULL;
		if (px->bev == NULL && ssl != NULL)
			SSL_free(ssl);
	} else {
		px->bev = bufferevent_socket_new(px->base, -1, BEV_OPT_CLOSE_ON_FREE);
	}
	if (px->bev == NULL) {
		px->bev = bufferevent_socket_new(px->base, -1, BEV_OPT_CLOSE_ON_FREE);
		px->st = P_DONE;
		return -1;
	}
	bufferevent_setcb(px->bev, read_cb, write_cb, event_cb, px);
	bufferevent_setwatermark(px->bev, EV_READ, 0, PROXY_HIGH);
	bufferevent_set_timeouts(px->bev, &t, &t);
	bufferevent_enable(px->bev, EV_READ | EV_WRITE);
	/* a name: looked up on the loop (bounded by the timeouts set above) */
	if (dns != NULL ? bufferevent_socket_connect_hostname(px->bev, dns, AF_UNSPEC,
	    where->host, (int)px->port) < 0 :
	    bufferevent_socket_connect(px->bev, (struct sockaddr *)&ss, sl) < 0) {
		px->st = P_DONE;	/* refused at once: reported by the caller */
		return -1;
	}
	return 0;
}

/* the timer of a refused connect: the next try */
static void
retry_cb(evutil_socket_t fd, short what, void *arg)
{
	struct proxy *px = arg;

	(void)fd;
	(void)what;
	if (px->gone || px->st != P_CONNECT)
		return;
	px_enter(px);
	bufferevent_free(px->bev);
	px->bev = NULL;
	if (px_connect(px) < 0)
		finish(px, PROXY_UNAVAILABLE, "cannot connect");
	px_leave(px);
}

/* a connect the backend refused (no answer, TLS, a name that does not
 * resolve: not this): tried again in PROXY_RETRY_MS when the budget
 * allows, 1 when so (the refused bev disabled until then) */
static int
try_again(struct proxy *px, int err)
{
	struct timeval t = { PROXY_RETRY_MS / 1000, (PROXY_RETRY_MS % 1000) * 1000 };

	if ((err != ECONNREFUSED && err != EHOSTUNREACH && err != ENETUNREACH) ||
	    px->reconnects >= px->pc->max_reconnects ||
	    (long)proxy_login_ms(px) + PROXY_RETRY_MS >= (long)px->pc->timeout * 1000)
		return 0;
	if (px->retry == NULL && (px->retry = evtimer_new(px->base, retry_cb, px)) == NULL)
		return 0;
	bufferevent_disable(px->bev, EV_READ | EV_WRITE);
	bufferevent_set_timeouts(px->bev, NULL, NULL);
	evtimer_add(px->retry, &t);
	px->reconnects++;
	return 1;
}

struct proxy *
proxy_new(struct event_base *base, const struct proxy_conf *pc, enum proxy_proto proto,
    const struct userdb_proxy *where, struct conn *c, const char *user, const char *password,
    const struct proxy_hooks *h, void *arg)
{
	struct proxy *px = xcalloc(1, sizeof(*px));

	px->base = base;
	px->pc = pc;
	px->proto = proto;
	px->where = *where;
	px->port = where->port ? where->port : proto == PROXY_IMAP ?
	    (where->tls == USERDB_TLS_YES ? 993 : 143) : (where->tls == USERDB_TLS_YES ? 995 : 110);
	px->c = c;
	px->pr = proxy_reply_new(proto == PROXY_IMAP, where->tls == USERDB_TLS_STARTTLS, user,
	    password);
	if (pc->forward_client) {
		char rip[INET6_ADDRSTRLEN], lip[INET6_ADDRSTRLEN];
		unsigned rport, lport;
		int fd = (int)bufferevent_getfd(conn_bev(c));

		if (fd >= 0 && sock_end(fd, 1, rip, sizeof(rip), &rport) == 0 &&
		    sock_end(fd, 0, lip, sizeof(lip), &lport) == 0)
			proxy_reply_set_client(px->pr, rip, rport, lip, lport);
	}
	px->h = h;
	px->arg = arg;
	px->st = P_CONNECT;
	px->pfd[0] = px->pfd[1] = -1;
	clock_gettime(CLOCK_MONOTONIC, &px->t0);
	snprintf(px->backend, sizeof(px->backend), strchr(where->host, ':') ? "[%s]:%u" : "%s:%u",
	    where->host, px->port);
	/* POP3 sends them as they are: no line breaks smuggled into the backend's session */
	if (strpbrk(user, "\r\n") != NULL || strpbrk(password, "\r\n") != NULL) {
		px->bev = NULL;
		px->st = P_DONE;
		return px;
	}
	(void)px_connect(px);	/* a failure at once: proxy_start_failed() */
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
	return px->pr != NULL ? proxy_reply_caps(px->pr) : "";
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
	if (px->busy > 0) {	/* we are on the stack: the outermost px_leave frees */
		px->gone = 1;
		if (px->rd != NULL)
			event_del(px->rd);
		if (px->wr != NULL)
			event_del(px->wr);
		if (px->retry != NULL)
			event_del(px->retry);
		if (px->bev != NULL) {
			bufferevent_setcb(px->bev, NULL, NULL, NULL, NULL);
			bufferevent_disable(px->bev, EV_READ | EV_WRITE);
		}
		return;
	}
	px_destroy(px);
}

static void
px_destroy(struct proxy *px)
{
	if (px->rd != NULL)
		event_free(px->rd);
	if (px->wr != NULL)
		event_free(px->wr);
	if (px->retry != NULL)
		event_free(px->retry);
	if (px->pfd[0] >= 0) {
		close(px->pfd[0]);
		close(px->pfd[1]);
	}
	if (px->bev != NULL)
		bufferevent_free(px->bev);
	proxy_reply_free(&px->pr);
	free(px);
}
