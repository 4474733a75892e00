/*
 * imap_server - the IMAP door's event loop around the I/O-free session of
 * imap_proto, standing on service/conn (accept, limits, plain/TLS
 * bufferevents, STARTTLS with pipelined plaintext dropped, deadlines,
 * hold/release, flush-then-close, drain):
 *
 *   imap_server_run()   the loop on the listeners the master bound
 *                       (imap_listen; imaps_listen with implicit TLS, RFC
 *                       8314) until SIGTERM/SIGINT, or drained after SIGUSR2
 *                       (the signals and the tick: service/door_loop)
 *
 * The session's actions:
 *   IMAP_ACT_AUTH       the password check off the loop and the failed-login
 *                       penalty (service/authcheck: delays, then a ban on the
 *                       kill list, shared with every door and node)
 *   IMAP_ACT_STARTTLS   conn_starttls()
 *   IMAP_ACT_EXEC       imap_proto_exec() on the store job pool, then
 *                       imap_proto_exec_done() here; a command that goes in
 *                       batches (a large FETCH) runs again once the
 *                       session's queue is short (IMAP_OUT_LOW in memory,
 *                       IMAP_FILE_AHEAD of message files)
 *
 * Output is the session's queue of segments: bytes are written as they
 * are; a file range goes out without the message in memory, as a mapping of
 * the range (evbuffer_add_reference: write()/SSL_write read the page cache;
 * a plain connection writes up to IMAP_MAP_WRITE a wakeup; not sendfile,
 * whose page frags a client on the other core reads slower than the bytes
 * write() copied: BODY[] 20 x 1 MB ~790 -> ~1,040 MB/s); a mapping refused,
 * evbuffer_add_file (sendfile) on a plain connection; else (LF->CRLF work)
 * a copier that reads IMAP_COPY_CHUNK at a time while the socket's output
 * is below IMAP_OUT_HIGH. So a 20 MB FETCH
 * costs the worker a few hundred KiB of its own memory.
 * A FETCH's next batch is made while the socket sends the last one (up to
 * IMAP_FILE_AHEAD of message files queued ahead, open but not read).
 *
 * IDLE: one inotify instance per loop watches the selected folder's new/
 * and cur/ of every idling session (sessions on the same folder share the
 * watch); a change asks the session for a sync exec, whose untagged EXISTS/
 * EXPUNGE/FETCH go out at once. "* OK Still here" every IMAP_KEEPALIVE s.
 *
 * On imaps the greeting waits for the TLS handshake (conn's tls_ready), so
 * its [CAPABILITY] is what CAPABILITY answers after it (AUTH=EXTERNAL with a
 * verified client certificate); Dovecot's greeting, too, is CAPABILITY's list.
 *
 * A kill-listed client (the same lists and engine as SMTP) gets "* BYE" at
 * connect. Before login the connection has imap_login_timeout per request;
 * after it imap_idle_timeout (RFC 3501 §5.4: at least 30 minutes).
 * SIGUSR2 (live reload): no more accepts; every session is told "* BYE"
 * (after the command in progress) and closed.
 *
 * The proxy (issue 12) hooks in at the login: start_auth()'s outcome is the
 * one point where the user is known and nothing of the store has been
 * touched (imap_proto asks for the EXEC that opens the store only after
 * imap_proto_auth_done(1)). A proxied user is routed there instead
 * (proxy_route; SCRAM after its last exchange, proxy_route_late; with
 * mail_proxy_auth = backend before the check, proxy_backend_auth): the door
 * keeps the conn (TLS done, penalties applied, the kill list checked),
 * pop-imap-proxy/proxy connects to the backend on the loop (non-blocking)
 * and splices the two; the session object rests until the conn is freed.
 *
 * The loop never blocks: store I/O and password hashing run on job threads;
 * a connection a job points at is held (conn_hold) and its session freed
 * only after the job. Never logs peer bytes.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "common/log.h"
#include "common/stats.h"
#include "common/xmalloc.h"
#include "pop-imap-proxy/imap_server.h"
#include "pop-imap-proxy/proxy_door.h"
#include "rules/engine.h"
#include "rules/snapshot.h"
#include "service/authcheck.h"
#include "service/conn.h"
#include "service/door_loop.h"
#include "service/jobs.h"
#include "service/userip.h"
#include "service/users.h"
#include "storage-adapter/userdb.h"
#include "storage-adapter/userdb_sasl.h"

#define IMAP_STORE_THREADS 4	/* mail store I/O */
#define IMAP_AUTH_THREADS 2	/* password hashing: a pool of its own */
#define IMAP_AUTH_QUEUE 32	/* checks queued or running; past it NO [UNAVAILABLE] */
#define IMAP_DRAIN_MAX 60	/* seconds a draining worker waits for busy sessions */
#define IMAP_OUT_HIGH (256 * 1024)	/* stop queueing output above this */
#define IMAP_OUT_LOW (64 * 1024)	/* ... and go on below this */
/* a plain connection writes a mapped file range up to this a wakeup: the
 * worker copies the page cache into the socket as Dovecot's write() does,
 * which a client on another core reads faster than sendfile's page frags */
#define IMAP_MAP_WRITE (1024 * 1024)
/* a FETCH's next batch is made while at most this much of message files
 * (and IMAP_FILES_AHEAD files) waits in the session's queue, and
 * IMAP_OUT_LOW in memory: the job reads ahead of the socket */
#define IMAP_FILE_AHEAD (8 * 1024 * 1024)
#define IMAP_FILES_AHEAD 8
#define IMAP_COPY_CHUNK 65536	/* a file range copied (TLS, LF->CRLF) in these */
#define IMAP_KEEPALIVE 120	/* seconds between "* OK Still here" in IDLE */
#define IMAP_WATCH_DIRS 2	/* new/ and cur/ */

struct sess;

/* an inotify watch descriptor and one session idling on it */
struct watch {
	int wd;
	struct sess *s;
};

struct server {
	const struct imap_server_conf *c;
	struct imap_params params;
	struct event_base *base;
	struct conn_server_conf cf;
	struct conn_server *cs;
	struct jobs *jobs;		/* mail store I/O */
	struct authcheck *auth;		/* password checks and failed-login penalties */
	struct users users;		/* the user database, kept current */
	struct userip *userip;		/* logged-in sessions per user and address */
	struct sasl_callbacks sasl_cb;
	struct sess *sessions;		/* all sessions (drain, keepalive) */
	int ino;			/* inotify, -1 when unavailable */
	struct event *ino_ev;
	struct watch *watches;
	size_t nwatches, capwatches;
	int stopping;
};

struct sess {
	struct sess *prev, *next;
	struct server *srv;
	struct conn *conn;		/* NULL once the connection ended */
	struct imap_proto *ip;
	struct engine_session *es;	/* the kill list at connect and may_ban; dropped at login */
	int logged;
	int counted;			/* in srv->userip */
	int over_userip;		/* logged in past mail_max_userip_connections: BYE */
	char user[256];
	int peer_set;
	int greeted;			/* imap_proto_start() done */
	int authing;			/* a password check or its penalty runs */
	int execing;			/* an exec job runs */
	/* the file range being copied */
	int copying;
	int big_writes;			/* plain: max single write raised to IMAP_MAP_WRITE */
	uint64_t produced;		/* octets of the range sent */
	off_t in_off;			/* next file offset to read */
	int prev_cr;			/* the last byte read was CR */
	/* IDLE */
	int wd[IMAP_WATCH_DIRS];
	int watching;
	/* a proxied user (proxy.c): the session object rests, bytes are spliced */
	struct proxy *px;
	int spliced;
	int late;			/* handed over after the session logged in (SCRAM) */
	int dirty;			/* a change came while an exec ran */
	time_t keepalive_at;
};

static void step(struct sess *s);

/* ---- output ---- */

/* one piece of a file range through the copier (TLS or LF->CRLF): 0 ok, -1 gone */
static int
copy_some(struct sess *s, const struct imap_segment *g)
{
	char in[IMAP_COPY_CHUNK], out[2 * IMAP_COPY_CHUNK];
	uint64_t want = g->len - s->produced;
	size_t take = want < sizeof(in) ? (size_t)want : sizeof(in), o = 0;
	ssize_t n = pread(g->fd, in, take, s->in_off);

	if (n <= 0) {
		log_error("imap: conn=%s a message file ended %llu octets early: closing",
		    conn_id(s->conn), (unsigned long long)want);
		return -1;
	}
	s->in_off += n;
	if (!g->crlf) {
		memcpy(out, in, (size_t)n);
		o = (size_t)n;
	} else {
		for (ssize_t i = 0; i < n && o < want; i++) {
			if (in[i] == '\n' && !s->prev_cr) {
				out[o++] = '\r';
				if (o == want)
					break;
			}
			out[o++] = in[i];
			s->prev_cr = in[i] == '\r';
		}
	}
	if (o > want)
		o = (size_t)want;
	conn_write(s->conn, out, o);
	s->produced += o;
	return 0;
}

static void
unmap_range(const void *data, size_t len, void *map)
{
	munmap(map, len + (size_t)((const char *)data - (const char *)map));
}

/*
 * TLS: a file range goes to the TLS bufferevent as a mapping of the file
 * (evbuffer_add_reference): SSL_write reads the page cache, no copy through
 * the copier's buffers. Only a range the file still holds (a mapping past
 * the end faults); 0, or -1 for the copier.
 */
static int
add_mapped(struct conn *c, const struct imap_segment *g)
{
	long pg = sysconf(_SC_PAGESIZE);
	struct stat st;
	off_t start;
	size_t lead;
	void *map;

	if (pg <= 0 || fstat(g->fd, &st) < 0 || g->offset < 0 ||
	    (uint64_t)st.st_size < (uint64_t)g->offset + g->len)
		return -1;
	start = g->offset - g->offset % pg;
	lead = (size_t)(g->offset - start);
	map = mmap(NULL, lead + g->len, PROT_READ, MAP_PRIVATE, g->fd, start);
	if (map == MAP_FAILED)
		return -1;
	(void)madvise(map, lead + g->len, MADV_SEQUENTIAL);
	if (evbuffer_add_reference(bufferevent_get_output(conn_bev(c)), (char *)map + lead, g->len,
	    unmap_range, map) < 0) {
		munmap(map, lead + g->len);
		return -1;
	}
	return 0;
}

/* the session's output to the connection, as far as the socket takes it */
static void
pump(struct sess *s)
{
	struct conn *c = s->conn;
	struct imap_segment g;

	while (!conn_is_closing(c) && conn_output_pending(c) < IMAP_OUT_HIGH &&
	    imap_proto_output_segment(s->ip, &g)) {
		if (g.fd < 0) {
			conn_write(c, g.data, g.len);
			imap_proto_output_done(s->ip, g.len);
			continue;
		}
		if (!s->copying)	/* message octets going out from the store */
			stats_add("message_bytes_total{door=\"imap\",route=\"fetch\"}", g.len);
		if (!s->copying && !g.crlf && g.len > 0) {
			if (!conn_is_tls(c) && !s->big_writes) {
				/* libevent writes 16 KiB a wakeup by default */
				(void)bufferevent_set_max_single_write(conn_bev(c), IMAP_MAP_WRITE);
				s->big_writes = 1;
			}
			if (add_mapped(c, &g) == 0) {
				imap_proto_output_done(s->ip, g.len);
				continue;
			}
		}
		if (!s->copying && !g.crlf && !conn_is_tls(c) && g.len > 0) {
			int fd = dup(g.fd);

			if (fd >= 0 && evbuffer_add_file(bufferevent_get_output(conn_bev(c)), fd,
			    g.offset, (ev_off_t)g.len) == 0) {
				imap_proto_output_done(s->ip, g.len);
				continue;
			}
			if (fd >= 0)
				close(fd);
		}
		if (!s->copying) {
			s->copying = 1;
			s->produced = 0;
			s->in_off = g.offset;
			s->prev_cr = 0;
		}
		if (s->produced < g.len && copy_some(s, &g) < 0) {
			conn_close(c);
			return;
		}
		if (s->produced >= g.len) {
			s->copying = 0;
			imap_proto_output_done(s->ip, g.len);
		}
	}
}

/* ---- IDLE: inotify ---- */

static void
watch_stop(struct sess *s)
{
	struct server *srv = s->srv;

	if (!s->watching)
		return;
	s->watching = 0;
	for (int k = 0; k < IMAP_WATCH_DIRS; k++) {
		int wd = s->wd[k], shared = 0;

		if (wd < 0)
			continue;
		for (size_t i = 0; i < srv->nwatches;) {
			if (srv->watches[i].s == s && srv->watches[i].wd == wd) {
				srv->watches[i] = srv->watches[--srv->nwatches];
				continue;
			}
			if (srv->watches[i].wd == wd)
				shared = 1;
			i++;
		}
		if (!shared)
			(void)inotify_rm_watch(srv->ino, wd);
		s->wd[k] = -1;
	}
}

static void
watch_start(struct sess *s, const char *dir)
{
	static const char *const sub[IMAP_WATCH_DIRS] = { "new", "cur" };
	struct server *srv = s->srv;

	s->watching = 1;
	s->keepalive_at = time(NULL) + IMAP_KEEPALIVE;
	for (int k = 0; k < IMAP_WATCH_DIRS; k++) {
		char path[PATH_MAX];

		s->wd[k] = -1;
		if (srv->ino < 0)
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, sub[k]);
		s->wd[k] = inotify_add_watch(srv->ino, path, IN_CREATE | IN_MOVED_TO |
		    IN_MOVED_FROM | IN_DELETE | IN_ONLYDIR);
		if (s->wd[k] < 0) {
			log_warn("imap: conn=%s cannot watch a folder for IDLE: %s", conn_id(s->conn),
			    strerror(errno));
			continue;
		}
		if (srv->nwatches == srv->capwatches) {
			srv->capwatches = srv->capwatches ? 2 * srv->capwatches : 64;
			srv->watches = xrealloc(srv->watches, srv->capwatches * sizeof(*srv->watches));
		}
		srv->watches[srv->nwatches].wd = s->wd[k];
		srv->watches[srv->nwatches].s = s;
		srv->nwatches++;
	}
}

/*
 * The watch follows the session: armed as soon as it idles, BEFORE the sync
 * that IDLE starts with, so a change is either in that sync's reading of the
 * folder or an event after it (which, while the sync runs, marks the session
 * dirty and runs it again once it is done). Never a gap between the two.
 */
static void
watch_update(struct sess *s)
{
	const char *dir = imap_proto_watch_dir(s->ip);

	if (dir != NULL && !s->watching)
		watch_start(s, dir);
	else if (dir == NULL && s->watching)
		watch_stop(s);
}

/* the folder changed under an idling session */
static void
idle_kick(struct sess *s)
{
	if (s->conn == NULL || conn_is_closing(s->conn))
		return;
	if (s->execing || s->authing) {
		s->dirty = 1;
		return;
	}
	imap_proto_notify(s->ip);
	step(s);
}

static void
ino_cb(evutil_socket_t fd, short what, void *arg)
{
	struct server *srv = arg;
	char buf[16384] __attribute__((aligned(__alignof__(struct inotify_event))));
	ssize_t n;

	(void)what;
	while ((n = read(fd, buf, sizeof(buf))) > 0) {
		for (char *p = buf; p < buf + n;) {
			const struct inotify_event *ev = (const struct inotify_event *)p;

			/* a kick may start an exec; a later one in this batch marks it dirty.
			 * The kernel's queue overflowed: events were lost, every idler syncs.
			 * Backwards: a kick that closes its session drops its entries, each
			 * replaced by the last one, which has been seen already. */
			for (size_t i = srv->nwatches; i-- > 0;) {
				if (i >= srv->nwatches)
					continue;
				if (srv->watches[i].wd == ev->wd || (ev->mask & IN_Q_OVERFLOW))
					idle_kick(srv->watches[i].s);
			}
			p += sizeof(*ev) + ev->len;
		}
	}
}

/* ---- store work ---- */

static void
exec_run(void *arg)
{
	struct sess *s = arg;

	imap_proto_exec(s->ip);
}

static void
exec_done(void *arg)
{
	struct sess *s = arg;

	s->execing = 0;
	if (conn_release(s->conn))
		return;
	imap_proto_exec_done(s->ip);
	if (s->dirty && imap_proto_action(s->ip) == IMAP_ACT_NONE) {
		s->dirty = 0;
		imap_proto_notify(s->ip);
	}
	step(s);
}

static void
start_exec(struct sess *s)
{
	if (s->srv->stopping)
		return;		/* shutting down: nothing new starts */
	s->execing = 1;
	conn_hold(s->conn);
	conn_pause(s->conn);
	jobs_submit(s->srv->jobs, exec_run, exec_done, s);
}

/* ---- AUTHENTICATE / LOGIN ---- */

/*
 * A login went through: the idle timeout from now on, and
 * mail_max_userip_connections. Past that the session is told "* BYE" once
 * its login is answered, as Dovecot's mail process does.
 */
static void
login_done(struct sess *s)
{
	char who[CIDR_TEXT_MAX];
	const struct ipaddr *addr = conn_addr(s->conn);
	unsigned n = 0;

	if (s->logged || imap_proto_user(s->ip)[0] == '\0')
		return;
	s->logged = 1;
	snprintf(s->user, sizeof(s->user), "%s", imap_proto_user(s->ip));
	engine_session_free(&s->es);	/* the lists were for the login phase */
	conn_set_timeout(s->conn, s->srv->c->idle_timeout);
	if (addr != NULL) {
		if (userip_acquire(s->srv->userip, s->user, addr, s->srv->c->max_userip, &n)) {
			s->counted = 1;
		} else {
			s->over_userip = 1;
			log_info("imap: conn=%s user=<%s> client=[%s]: %u sessions from that address: "
			    "refused (mail_max_userip_connections)", conn_id(s->conn), s->user,
			    conn_addr_text(s->conn, who), n);
			return;
		}
	}
	log_info("imap: conn=%s login: user=<%s> client=[%s]%s", conn_id(s->conn), s->user,
	    conn_addr_text(s->conn, who), conn_is_tls(s->conn) ? " TLS" : "");
}

/* ---- the proxy: a user whose line says proxy=y host=... (issue 12) ---- */

/*
 * A proxied session counts in mail_max_userip_connections as a local one
 * does (Dovecot counts its proxied sessions at the login process): 1 when
 * counted (or nothing to count), 0 when the pair is full; then the login
 * is answered NO [UNAVAILABLE] with Dovecot's words and the connection
 * closes (the backend's session is dropped).
 */
static int
proxy_count(struct sess *s, unsigned *n_r)
{
	const struct ipaddr *addr = conn_addr(s->conn);

	*n_r = 0;
	if (addr == NULL || s->counted)
		return 1;
	if (!userip_acquire(s->srv->userip, s->user, addr, s->srv->c->max_userip, n_r))
		return 0;
	s->counted = 1;
	return 1;
}

static void
proxy_done(void *arg, enum proxy_result res, const char *caps, const char *why)
{
	struct sess *s = arg;
	unsigned n;

	s->authing = 0;
	if (res == PROXY_OK && !proxy_count(s, &n)) {
		char *line = xasprintf("%s NO [UNAVAILABLE] Maximum number of connections from "
		    "user+IP exceeded (mail_max_userip_connections=%u)\r\n", imap_proto_tag(s->ip),
		    s->srv->c->max_userip);

		proxy_door_over_userip("imap", s->conn, s->user, s->px, n);
		proxy_free(&s->px);
		conn_write(s->conn, line, strlen(line));
		free(line);
		conn_close(s->conn);	/* may free s */
		return;
	}
	proxy_door_outcome("imap", s->conn, s->user, s->px, res, why);
	if (res == PROXY_OK) {
		char *line = xasprintf("%s OK [CAPABILITY %s] Logged in\r\n",
		    imap_proto_tag(s->ip), caps);

		struct conn *c = s->conn;

		s->spliced = 1;
		engine_session_free(&s->es);
		conn_set_timeout(c, s->srv->c->idle_timeout);
		/* held: the splice may end the connection (and free s) on the spot */
		conn_hold(c);
		conn_write(c, line, strlen(line));
		free(line);
		if (s->px != NULL && !conn_is_closing(c))
			proxy_splice(s->px);
		if (conn_release(c))
			return;		/* ended meanwhile: s is gone */
		if (s->px != NULL)
			conn_resume(c);
		return;
	}
	proxy_free(&s->px);
	if (s->late) {
		/* the session counts itself logged in: this connection is done */
		char *line = xasprintf("%s NO [UNAVAILABLE] Account is temporarily unavailable.\r\n",
		    imap_proto_tag(s->ip));

		conn_write(s->conn, line, strlen(line));
		free(line);
		conn_close(s->conn);
		return;
	}
	s->user[0] = '\0';
	imap_proto_auth_done(s->ip, res == PROXY_REFUSED ? 0 : IMAP_AUTH_TEMPFAIL);
	step(s);
}

static const struct proxy_hooks proxy_hooks = { proxy_done };

/* a login that went through: 1 when the user lives on a backend (the
 * session is handed to it, or refused), 0 when it is served here */
static int
proxy_route(struct sess *s)
{
	struct imap_auth_req *req = imap_proto_auth_req(s->ip);
	const char *user = req && req->sasl ? sasl_server_user(req->sasl) : NULL, *pw, *login;
	char *mlogin;
	struct userdb_proxy where;
	int r, go;

	if (user == NULL || user[0] == '\0' || s->srv->users.db == NULL ||
	    (r = userdb_proxy(s->srv->users.db, user, &where)) == 0)
		return 0;
	snprintf(s->user, sizeof(s->user), "%s", user);
	/* SCRAM's server-final message reaches the client first: the session
	 * finishes the exchange, then step() hands it over (proxy_route_late);
	 * CRAM-MD5, EXTERNAL: through the backend's master user */
	go = proxy_door_login(&s->srv->c->proxy, r, &where, user, req->sasl, &login, &pw, &mlogin);
	if (go == 0) {
		s->user[0] = '\0';
		return 0;
	}
	if (go < 0) {
		log_warn("imap: conn=%s proxy: user=<%s>: %s: login answered NO [UNAVAILABLE]",
		    conn_id(s->conn), user, r < 0 ? "the user's proxy fields are wrong" :
		    "no password to forward for this mechanism (PLAIN/LOGIN; CRAM-MD5 and "
		    "EXTERNAL with mail_proxy_master_user)");
		s->user[0] = '\0';
		imap_proto_auth_done(s->ip, IMAP_AUTH_TEMPFAIL);
		return 1;
	}
	s->px = proxy_new(s->srv->base, &s->srv->c->proxy, PROXY_IMAP, &where, s->conn, login, pw,
	    &proxy_hooks, s);
	free(mlogin);
	if (proxy_start_failed(s->px)) {
		s->authing = 1;
		proxy_done(s, PROXY_UNAVAILABLE, "", "cannot connect");
		return 1;
	}
	s->authing = 1;		/* the drain and IDLE paths leave it alone */
	conn_pause(s->conn);
	return 1;
}

/* a login the session finished itself (SCRAM's last, empty response) of a
 * proxied user: handed over through the master user before the store is
 * touched; 1 when so */
static int
proxy_route_late(struct sess *s)
{
	const char *user = imap_proto_user(s->ip), *pw, *login;
	struct userdb_proxy where;
	char *mlogin;
	int r, go;

	if (s->srv->users.db == NULL || (r = userdb_proxy(s->srv->users.db, user, &where)) == 0)
		return 0;
	snprintf(s->user, sizeof(s->user), "%s", user);
	/* no exchange to take a password from: the master user's */
	go = proxy_door_login(&s->srv->c->proxy, r, &where, user, NULL, &login, &pw, &mlogin);
	s->late = 1;
	s->authing = 1;
	if (go < 0) {
		proxy_done(s, PROXY_UNAVAILABLE, "", r < 0 ? "the user's proxy fields are wrong" :
		    "no mail_proxy_master_user");
		return 1;
	}
	proxy_door_start(&s->px, s->srv->base, &s->srv->c->proxy, PROXY_IMAP, &where, s->conn,
	    login, pw, &proxy_hooks, s);
	free(mlogin);
	return 1;
}

static void auth_checked(void *arg, int result);
static const struct authcheck_hooks auth_hooks;

/* the backend's verdict on a login Portcullis could not check: the penalty
 * and counters as for any login (authcheck), then auth_checked() */
static void
backend_verdict(void *arg, enum proxy_result res, const char *caps, const char *why)
{
	struct sess *s = arg;
	int ok;

	if (res == PROXY_UNAVAILABLE) {
		proxy_done(s, res, caps, why);
		return;
	}
	/* conn held: auth_checked() releases */
	ok = proxy_door_verdict("imap", s->conn, s->user, &s->px, s->srv->auth, res, &auth_hooks, s);
	if (ok != AUTHCHECK_PENDING)
		auth_checked(s, ok == AUTHCHECK_BUSY ? IMAP_AUTH_TEMPFAIL : ok);
}

static const struct proxy_hooks backend_hooks = { backend_verdict };

/* mail_proxy_auth = backend: a PLAIN login (LOGIN, AUTHENTICATE PLAIN) of a
 * user of mail_proxy_domains with no line in the users file goes to the
 * default backend, whose verdict decides: 1 when so */
static int
proxy_backend_auth(struct sess *s, struct imap_auth_req *req)
{
	const char *login, *pw;
	struct userdb_proxy where;

	if (!req->check || req->sasl == NULL ||
	    !proxy_door_backend_route(&s->srv->c->proxy, s->srv->users.db, req->sasl, &login, &pw,
	    &where, s->user, sizeof(s->user)))
		return 0;
	s->authing = 1;
	proxy_door_start(&s->px, s->srv->base, &s->srv->c->proxy, PROXY_IMAP, &where, s->conn,
	    login, pw, &backend_hooks, s);
	return 1;
}

static void
auth_checked(void *arg, int result)
{
	struct sess *s = arg;

	s->authing = 0;
	if (conn_release(s->conn))
		return;
	if (result == 1 && s->px != NULL) {	/* the backend said yes (mail_proxy_auth = backend) */
		s->authing = 1;
		proxy_done(s, PROXY_OK, proxy_caps(s->px), "");
		return;
	}
	if (result == 1 && proxy_route(s)) {
		if (!s->authing)
			step(s);
		return;
	}
	imap_proto_auth_done(s->ip, result);
	login_done(s);
	step(s);
}

static int
auth_may_ban(void *arg)
{
	struct sess *s = arg;
	unsigned ticket;
	const struct snapshot *snap;
	int may;

	if (s->es == NULL || s->srv->c->snaps == NULL)
		return s->es != NULL;
	snap = snapref_acquire(s->srv->c->snaps, &ticket);
	may = engine_client_may_be_banned(s->es, snap, (long long)time(NULL));
	snapref_release(s->srv->c->snaps, ticket);
	return may;
}

static int
auth_gone(void *arg)
{
	struct sess *s = arg;

	return s->conn == NULL || conn_is_closing(s->conn);
}

static const struct authcheck_hooks auth_hooks = { auth_checked, auth_may_ban, auth_gone };

static void
start_auth(struct sess *s)
{
	struct imap_auth_req *req = imap_proto_auth_req(s->ip);
	struct authcheck_req r = {
		.sasl = req->check ? req->sasl : NULL,
		.ok = req->ok,
		.addr = conn_addr(s->conn),
		.conn_id = conn_id(s->conn),
	};
	int res;

	if (proxy_backend_auth(s, req))
		return;
	s->authing = 1;
	conn_hold(s->conn);
	conn_pause(s->conn);
	res = authcheck_finish(s->srv->auth, &r, &auth_hooks, s);
	if (res == AUTHCHECK_PENDING)
		return;
	s->authing = 0;
	if (conn_release(s->conn))	/* never: we are on its input */
		return;
	if (res == 1 && proxy_route(s))
		return;
	imap_proto_auth_done(s->ip, res == AUTHCHECK_BUSY ? IMAP_AUTH_TEMPFAIL : res);
	login_done(s);
}

/* ---- the session's turn ---- */

/*
 * After anything happened to the session: its output out, its pending
 * action started, the IDLE watch kept in line, input read on when nothing
 * waits, the connection closed when the session is done.
 */
static void
step(struct sess *s)
{
	struct conn *c = s->conn;

	if (s->px != NULL || s->late)
		return;		/* proxied: the splice runs it */
	if (!s->logged && imap_proto_user(s->ip)[0] != '\0' && proxy_route_late(s))
		return;
	/* a login may end in input too (SCRAM's last, empty response) */
	if (!s->logged && imap_proto_user(s->ip)[0] != '\0')
		login_done(s);
	for (int guard = 0; guard < 8; guard++) {
		enum imap_action a;

		pump(s);
		if (conn_is_closing(c))
			return;
		a = imap_proto_action(s->ip);
		if (a == IMAP_ACT_AUTH && !s->authing && !s->srv->stopping) {
			start_auth(s);
			if (s->authing)
				return;
			continue;	/* answered at once: its action may follow */
		}
		if (a == IMAP_ACT_STARTTLS) {
			if (conn_starttls(c) < 0)	/* bounds the socket's buffer under the filter */
				return;
			imap_proto_set_tls(s->ip, 1);
			continue;
		}
		if (a == IMAP_ACT_EXEC && !s->execing) {
			/* a batched command waits for the session's queue to go into
			 * the socket (which holds at most IMAP_OUT_HIGH of bytes and the
			 * file range being sent), but not for the socket: the next batch
			 * is made while the last one is sent, and a client that does
			 * not read still holds the worker to about two batches */
			uint64_t mem, fbytes;
			size_t files;

			imap_proto_output_queued(s->ip, &mem, &files, &fbytes);
			if (mem > IMAP_OUT_LOW || files > IMAP_FILES_AHEAD ||
			    fbytes > IMAP_FILE_AHEAD) {
				conn_pause(c);
				return;
			}
			watch_update(s);	/* IDLE's first sync: the watch is already on */
			start_exec(s);
			return;
		}
		break;
	}
	if (imap_proto_action(s->ip) != IMAP_ACT_NONE)
		return;
	if (s->over_userip == 1) {
		char text[160];

		s->over_userip = 2;
		snprintf(text, sizeof(text), "[UNAVAILABLE] Maximum number of connections from user+IP "
		    "exceeded (mail_max_userip_connections=%u)", s->srv->c->max_userip);
		imap_proto_bye(s->ip, text);
		pump(s);
	}
	watch_update(s);
	if (imap_proto_wants_close(s->ip)) {
		struct imap_segment g;

		if (!s->copying && !imap_proto_output_segment(s->ip, &g))
			conn_close(c);
		return;
	}
	if (imap_proto_output_pending(s->ip) > 0) {
		conn_pause(c);	/* the socket is behind: writable() goes on */
		return;
	}
	if (conn_server_is_draining(s->srv->cs)) {
		imap_proto_bye(s->ip, "[UNAVAILABLE] Server shutting down.");
		pump(s);
		conn_close(c);
		return;
	}
	conn_resume(c);
}

/* ---- the connection's callbacks (service/conn) ---- */

/* 1 when the client is on the kill list (and not on the accept list) */
static int
killed(struct sess *s)
{
	struct server *srv = s->srv;
	unsigned ticket;
	const struct snapshot *snap;
	struct verdict v;
	long long now = (long long)time(NULL);
	int k;

	if (srv->c->pol == NULL || srv->c->snaps == NULL)
		return 0;
	s->es = engine_session_new(srv->c->pol);
	engine_session_set_id(s->es, conn_id(s->conn));
	snap = snapref_acquire(srv->c->snaps, &ticket);
	engine_connect(s->es, snap, conn_addr(s->conn), NULL, now, &v);
	k = engine_client_is_killed(s->es, snap, now, &v);
	snapref_release(srv->c->snaps, ticket);
	if (k) {
		char line[MAX_REPLY_TEXT + 32];

		engine_log(s->es, STAGE_CONNECT, &v, NULL, "imap");
		snprintf(line, sizeof(line), "* BYE %s\r\n", v.text);
		conn_write(s->conn, line, strlen(line));
	}
	return k;
}

/* the greeting, with the capabilities as CAPABILITY would give them now */
static void
greet(struct sess *s)
{
	s->greeted = 1;
	if (!s->peer_set && conn_is_tls(s->conn)) {
		const char *id = conn_tls_peer(s->conn);

		if (id != NULL) {
			s->peer_set = 1;
			imap_proto_set_tls_peer(s->ip, id);
		}
	}
	imap_proto_start(s->ip);
	pump(s);
}

static void
on_opened(struct conn *c)
{
	struct server *srv = conn_server_arg(conn_server(c));
	struct sess *s = xcalloc(1, sizeof(*s));

	s->srv = srv;
	s->conn = c;
	s->wd[0] = s->wd[1] = -1;
	s->next = srv->sessions;
	if (srv->sessions != NULL)
		srv->sessions->prev = s;
	srv->sessions = s;
	conn_set_ctx(c, s);
	s->ip = imap_proto_new(&srv->params);
	if (conn_is_tls(c))
		imap_proto_set_tls(s->ip, 1);
	conn_set_write_low(c, IMAP_OUT_LOW);
	if (killed(s)) {
		conn_close(c);
		return;
	}
	/* imaps: the greeting waits for the handshake (the client speaks first
	 * there anyway), so its CAPABILITY is the one after it: AUTH=EXTERNAL
	 * when a verified client certificate came, as a CAPABILITY command says */
	if (!conn_is_tls(c))
		greet(s);
}

static void
on_tls_ready(struct conn *c)
{
	struct sess *s = conn_ctx(c);

	if (s != NULL && !s->greeted)
		greet(s);
}

static void
on_input(struct conn *c)
{
	struct sess *s = conn_ctx(c);

	if (s->px != NULL) {
		if (s->spliced)
			proxy_client_input(s->px);
		return;
	}
	if (!s->greeted)
		greet(s);	/* input on imaps: the handshake is done */
	if (!s->peer_set && conn_is_tls(c)) {
		const char *id = conn_tls_peer(c);

		if (id != NULL) {
			s->peer_set = 1;
			imap_proto_set_tls_peer(s->ip, id);
		}
	}
	while (!conn_is_closing(c) && imap_proto_action(s->ip) == IMAP_ACT_NONE &&
	    !imap_proto_wants_close(s->ip)) {
		struct evbuffer *in = conn_input(c);
		struct evbuffer_iovec v;
		size_t used;

		if (evbuffer_get_length(in) == 0 || evbuffer_peek(in, -1, NULL, &v, 1) < 1)
			break;
		used = imap_proto_input(s->ip, v.iov_base, v.iov_len);
		evbuffer_drain(in, used);
		if (imap_proto_action(s->ip) != IMAP_ACT_NONE || imap_proto_wants_close(s->ip) ||
		    imap_proto_output_pending(s->ip) > IMAP_OUT_HIGH)
			break;
		pump(s);
		if (used == 0)
			break;
	}
	if (!conn_is_closing(c))
		step(s);
}

/* the socket took output: more of it, or the next batch */
static void
on_writable(struct conn *c)
{
	struct sess *s = conn_ctx(c);

	if (s->px != NULL) {
		if (s->spliced)
			proxy_client_writable(s->px);
		return;
	}
	if (s->execing || s->authing)
		pump(s);	/* earlier output may go while a job runs */
	else
		step(s);
}

static void
on_closing(struct conn *c)
{
	struct sess *s = conn_ctx(c);

	watch_stop(s);
	proxy_free(&s->px);
}

static void
sess_free_run(void *arg)
{
	struct imap_proto *ip = arg;

	imap_proto_free(&ip);	/* closes the folder and the store: file I/O */
}

static void
sess_free_done(void *arg)
{
	(void)arg;
}

static void
on_free(struct conn *c)
{
	struct sess *s = conn_ctx(c);
	struct server *srv = s->srv;

	watch_stop(s);
	proxy_free(&s->px);
	if (s->prev != NULL)
		s->prev->next = s->next;
	else
		srv->sessions = s->next;
	if (s->next != NULL)
		s->next->prev = s->prev;
	engine_session_free(&s->es);
	if (s->counted)
		userip_release(srv->userip, s->user, conn_addr(c));
	if (srv->jobs != NULL && !srv->stopping)
		jobs_submit(srv->jobs, sess_free_run, sess_free_done, s->ip);
	else
		imap_proto_free(&s->ip);
	free(s);
}

static const struct conn_ops imap_ops = {
	.opened = on_opened,
	.input = on_input,
	.writable = on_writable,
	.closing = on_closing,
	.free = on_free,
	.tls_ready = on_tls_ready,
};

/* ---- the loop ---- */

/* live reload (SIGUSR2, door_loop): the new worker takes the listeners; our
 * sessions are told to reconnect */
static void
drain_cb(void *arg)
{
	struct server *srv = arg;
	struct sess *next;

	if (conn_server_is_draining(srv->cs))
		return;
	log_info("imap: draining for a reload: %u session%s told to reconnect",
	    conn_server_count(srv->cs), conn_server_count(srv->cs) == 1 ? "" : "s");
	conn_server_drain(srv->cs, IMAP_DRAIN_MAX, door_loop_exit, srv->base);
	for (struct sess *s = srv->sessions; s != NULL; s = next) {
		next = s->next;
		if (s->execing || s->authing || conn_is_closing(s->conn))
			continue;	/* after its answer (step) */
		step(s);
	}
}

/* once a second, after the conn layer's expiries and the users (door_loop): IDLE keepalives */
static void
tick_cb(void *arg, time_t now)
{
	struct server *srv = arg;
	struct sess *next;

	for (struct sess *s = srv->sessions; s != NULL; s = next) {
		next = s->next;
		if (s->watching && now >= s->keepalive_at && !s->execing &&
		    !conn_is_closing(s->conn)) {
			s->keepalive_at = now + IMAP_KEEPALIVE;
			imap_proto_keepalive(s->ip);
			step(s);
		}
	}
}

int
imap_server_run(const int *fds, const int *kinds, size_t nfds,
    const struct imap_server_conf *c, const char **error_r)
{
	struct server *srv = xcalloc(1, sizeof(*srv));
	struct door_loop *loop;
	int rc = 0;

	srv->c = c;
	srv->ino = -1;
	srv->params = c->params;
	srv->params.tls_available = c->tls != NULL;
	srv->params.store_root = c->mail_root;
	srv->params.sasl_cb = &srv->sasl_cb;
	if (users_open_sasl(&srv->users, c->users_url, &srv->sasl_cb, error_r) < 0) {
		free(srv);
		return -1;
	}
	srv->base = event_base_new();
	if (srv->base == NULL) {
		*error_r = "cannot create the event loop";
		users_close(&srv->users);
		free(srv);
		return -1;
	}
	srv->cf.door = "imap";
	srv->cf.max_connections = c->max_connections;
	srv->cf.max_per_client = c->max_per_client;
	srv->cf.timeout = c->login_timeout;	/* after login: conn_set_timeout() */
	srv->cf.stress_timeout = c->login_timeout;
	srv->cf.request_deadline = 1;
	srv->cf.tls = c->tls;
	srv->cf.words_timeout = "* BYE Disconnected for inactivity.\r\n";
	srv->cf.words_too_many = "* BYE [UNAVAILABLE] Too many connections, try again later.\r\n";
	srv->cf.words_too_many_client =
	    "* BYE [UNAVAILABLE] Too many connections from your address.\r\n";
	srv->cs = conn_server_new(srv->base, &srv->cf, &imap_ops, srv);
	srv->userip = userip_new();
	srv->jobs = jobs_new(srv->base, "imap-store", IMAP_STORE_THREADS, 0);
	srv->auth = authcheck_new(srv->base, "imap", "login answered NO [UNAVAILABLE]",
	    IMAP_AUTH_THREADS, IMAP_AUTH_QUEUE, &c->penalty, c->ban, c->ban_arg);
	srv->ino = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (srv->ino < 0) {
		log_warn("imap: no inotify (%s): IDLE clients see new mail at their next command",
		    strerror(errno));
	} else {
		srv->ino_ev = event_new(srv->base, srv->ino, EV_READ | EV_PERSIST, ino_cb, srv);
		event_add(srv->ino_ev, NULL);
	}
	for (size_t i = 0; i < nfds && rc == 0; i++) {
		int tls = kinds[i] == IMAP_LISTEN_IMAPS;

		if (conn_server_listen(srv->cs, fds[i], tls ? "imaps" : "imap", (int)kinds[i], tls,
		    error_r) < 0)
			rc = -1;
	}
	loop = door_loop_new(srv->cs, "imap", IMAP_DRAIN_MAX, &srv->users, drain_cb, tick_cb, srv);
	if (rc == 0)
		door_loop_run(loop);
	srv->stopping = 1;
	conn_server_stop(srv->cs);
	jobs_free(&srv->jobs);		/* store work in flight finishes (and releases) first */
	authcheck_free(&srv->auth);	/* checks in flight call back */
	conn_server_free(&srv->cs);	/* the sessions left: on_free, inline */
	if (srv->ino_ev != NULL)
		event_free(srv->ino_ev);
	if (srv->ino >= 0)
		close(srv->ino);
	free(srv->watches);
	userip_free(&srv->userip);
	proxy_dns_free(&srv->c->proxy);	/* host= names' resolver: on this loop */
	door_loop_free(&loop);
	event_base_free(srv->base);
	users_close(&srv->users);
	free(srv);
	return rc;
}
