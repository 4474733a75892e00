/*
 * listener - listening sockets and the accept loop, for every network door.
 *
 *   listener_parse()  "HOST:PORT" / "[ADDRESS]:PORT" (numeric only) or
 *                     "unix:/PATH" -> sockaddr
 *   listener_bind()   parse, socket, bind, listen (the master does this); a
 *                     unix: socket replaces a stale socket at PATH (never
 *                     another kind of file) and is made 0666: who may
 *                     connect is the containing directory's call
 *   listener_new()    accept on a loop; listener_free() stops
 *
 * Out of file descriptors (EMFILE, ENFILE) or kernel memory, accept() fails
 * while the listening socket stays readable: a loop that only logs spins
 * at full speed and fills the disk with log lines. Here accepting pauses
 * instead, LISTENER_PAUSE_MIN ms doubling up to LISTENER_PAUSE_MAX, until an
 * accept succeeds again; the clients meanwhile wait in the kernel's backlog.
 * One log line a minute at most says so, with the count of the others.
 *
 * Never blocks; one loop's thread only.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/listener.h>
#include <event2/util.h>

#include "common/log.h"
#include "common/xmalloc.h"
#include "service/listener.h"

#define LISTENER_BACKLOG	511
#define LISTENER_PAUSE_MIN	50	/* ms */
#define LISTENER_PAUSE_MAX	1000	/* ms */
#define LISTENER_LOG_EVERY	60	/* s */

struct listener {
	struct evconnlistener *el;
	struct event *resume;
	listener_accept_fn *cb;
	void *arg;
	char name[64];
	unsigned pause_ms;	/* 0: not backing off */
	time_t logged;		/* last log line about failing accepts */
	unsigned long unlogged;	/* failures since */
	int counted;		/* in live_listeners */
};

/* the process's live listeners, and the master's pipe to close when the
 * last one goes (listener_ack_when_closed); one loop per worker process */
static int live_listeners;
static int ack_fd = -1;

int
listener_parse(const char *spec, const char *key, struct sockaddr_storage *ss_r,
    socklen_t *len_r, const char **error_r)
{
	static char err[300];
	struct sockaddr_storage ss;
	const char *colon = strrchr(spec, ':');
	char host[128];
	long port;
	char *end;

	memset(&ss, 0, sizeof(ss));
	if (strncmp(spec, "unix:", 5) == 0) {
		struct sockaddr_un *su = (struct sockaddr_un *)&ss;
		const char *path = spec + 5;

		if (path[0] != '/' || strlen(path) >= sizeof(su->sun_path))
			goto bad;
		su->sun_family = AF_UNIX;
		memcpy(su->sun_path, path, strlen(path) + 1);
		*len_r = sizeof(*su);
		*ss_r = ss;
		return 0;
	}
	if (colon == NULL || colon == spec || (size_t)(colon - spec) >= sizeof(host))
		goto bad;
	if (strspn(colon + 1, "0123456789") != strlen(colon + 1) || strlen(colon + 1) > 5)
		goto bad;	/* digits only: no sign, no blank */
	port = strtol(colon + 1, &end, 10);
	if (colon[1] == '\0' || *end != '\0' || port < 1 || port > 65535)
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
		*len_r = sizeof(*s6);
	} else {
		struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;

		s4->sin_family = AF_INET;
		s4->sin_port = htons((uint16_t)port);
		if (inet_pton(AF_INET, host, &s4->sin_addr) != 1)
			goto bad;
		*len_r = sizeof(*s4);
	}
	*ss_r = ss;
	return 0;
bad:
	snprintf(err, sizeof(err), "%s = %.100s: expected HOST:PORT or [ADDRESS]:PORT (numeric)%s",
	    key, spec, strncmp(spec, "unix:", 5) == 0 ? ", or unix:/PATH" : "");
	*error_r = err;
	return -1;
}

int
listener_bind(const char *spec, const char *key, int *fd_r, const char **error_r)
{
	static char err[300];
	struct sockaddr_storage ss;
	socklen_t sl;
	int fd, one = 1;

	if (listener_parse(spec, key, &ss, &sl, error_r) < 0)
		return -1;
	if (ss.ss_family == AF_UNIX) {
		const char *path = ((struct sockaddr_un *)&ss)->sun_path;
		struct stat st;

		/* a socket left by a daemon that died; never anything else */
		if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
			(void)unlink(path);
	}
	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		goto sys;
	(void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (ss.ss_family == AF_INET6)
		(void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&ss, sl) < 0 || listen(fd, LISTENER_BACKLOG) < 0) {
		int e = errno;

		close(fd);
		errno = e;
		goto sys;
	}
	/* Postfix's daemons run as their own users; the directory holding the
	 * socket decides who may connect */
	if (ss.ss_family == AF_UNIX)
		(void)chmod(((struct sockaddr_un *)&ss)->sun_path, 0666);
	*fd_r = fd;
	return 0;
sys:
	snprintf(err, sizeof(err), "%s = %.100s: %s", key, spec, strerror(errno));
	*error_r = err;
	return -1;
}

static void
accept_cb(struct evconnlistener *el, evutil_socket_t fd, struct sockaddr *sa, int salen,
    void *arg)
{
	struct listener *l = arg;

	(void)el;
	l->pause_ms = 0;	/* descriptors are back */
	l->cb(l->arg, fd, sa, (socklen_t)salen);
}

static void
resume_cb(evutil_socket_t fd, short what, void *arg)
{
	struct listener *l = arg;

	(void)fd;
	(void)what;
	evconnlistener_enable(l->el);
}

static void
error_cb(struct evconnlistener *el, void *arg)
{
	struct listener *l = arg;
	int e = EVUTIL_SOCKET_ERROR();
	time_t now = time(NULL);
	struct timeval tv;

	l->unlogged++;
	if (now - l->logged >= LISTENER_LOG_EVERY) {
		char since[80] = "";

		if (l->logged != 0)
			snprintf(since, sizeof(since), "; %lu failed accepts since the last such line",
			    l->unlogged);
		log_error("%s: cannot accept: %s; accepting paused%s%s", l->name, strerror(e),
		    e == EMFILE || e == ENFILE ?
		    " (raise the open files limit, or lower the connection limits)" : "", since);
		l->logged = now;
		l->unlogged = 0;
	}
	/* any other error would spin just the same: pause for all of them */
	l->pause_ms = l->pause_ms == 0 ? LISTENER_PAUSE_MIN :
	    l->pause_ms * 2 > LISTENER_PAUSE_MAX ? LISTENER_PAUSE_MAX : l->pause_ms * 2;
	tv.tv_sec = l->pause_ms / 1000;
	tv.tv_usec = (long)(l->pause_ms % 1000) * 1000;
	evconnlistener_disable(el);
	evtimer_add(l->resume, &tv);
}

struct listener *
listener_new(struct event_base *base, int fd, const char *name, listener_accept_fn *cb,
    void *arg)
{
	struct listener *l = xcalloc(1, sizeof(*l));

	l->cb = cb;
	l->arg = arg;
	snprintf(l->name, sizeof(l->name), "%s", name);
	evutil_make_socket_nonblocking(fd);
	l->el = evconnlistener_new(base, accept_cb, l, LEV_OPT_CLOSE_ON_EXEC, -1, fd);
	l->resume = evtimer_new(base, resume_cb, l);
	if (l->el == NULL || l->resume == NULL) {
		listener_free(&l);
		return NULL;
	}
	evconnlistener_set_error_cb(l->el, error_cb);
	l->counted = 1;
	live_listeners++;
	return l;
}

void
listener_ack_when_closed(int fd)
{
	if (ack_fd >= 0)
		close(ack_fd);
	ack_fd = fd;	/* (a worker says ready before its loop makes the listeners) */
}

void
listener_free(struct listener **lp)
{
	struct listener *l = *lp;

	if (l == NULL)
		return;
	if (l->resume != NULL)
		event_free(l->resume);
	if (l->el != NULL)
		evconnlistener_free(l->el);
	if (l->counted && --live_listeners == 0 && ack_fd >= 0) {
		close(ack_fd);	/* the master waits for this: nothing accepts here now */
		ack_fd = -1;
	}
	free(l);
	*lp = NULL;
}
