/*
 * metrics - the master's HTTP endpoint for Prometheus (metrics_listen).
 *
 *   metrics_bind(spec)   parse and bind the listener (before the privilege drop)
 *   metrics_start()      serve GET /metrics on a thread with its own event base
 *   metrics_stop()       end the loop and join the thread
 *
 * Answers only GET and HEAD of /metrics (404 otherwise, 405 for other
 * methods); evhttp caps header and body sizes, and a client gets 10 s.
 * Never touches the workers: it reads the shared counters file.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/util.h>

#include "common/stats.h"
#include "common/xmalloc.h"
#include "daemon/metrics.h"

static evutil_socket_t metrics_fd = -1;
static struct event_base *mbase;
static struct evhttp *mhttp;
static pthread_t mthread;
static int mrunning;
static int mstop[2] = { -1, -1 };	/* a byte here ends the loop from another thread */
static struct event *mstop_ev;

static void
stop_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	event_base_loopbreak(arg);
}

int
metrics_bind(const char *spec, const char **error_r)
{
	static char err[300];
	struct sockaddr_storage ss;
	int sslen = sizeof(ss), one = 1;
	evutil_socket_t fd;

	memset(&ss, 0, sizeof(ss));
	if (evutil_parse_sockaddr_port(spec, (struct sockaddr *)&ss, &sslen) < 0 ||
	    strchr(spec, ':') == NULL) {
		snprintf(err, sizeof(err), "metrics_listen: \"%.64s\" is not HOST:PORT or [ADDR]:PORT",
		    spec);
		*error_r = err;
		return -1;
	}
	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(fd, (struct sockaddr *)&ss, (socklen_t)sslen) < 0 || listen(fd, 64) < 0) {
		snprintf(err, sizeof(err), "metrics_listen %.64s: %s", spec, strerror(errno));
		if (fd >= 0)
			close(fd);
		*error_r = err;
		return -1;
	}
	metrics_fd = fd;
	return 0;
}

static void
metrics_cb(struct evhttp_request *req, void *arg)
{
	enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
	const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
	struct evbuffer *out;
	char *text = NULL;
	size_t len = 0;
	FILE *fp;

	(void)arg;
	if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
		evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
		evhttp_send_error(req, 405, "Method Not Allowed");
		return;
	}
	if (path == NULL || strcmp(path, "/metrics") != 0) {
		evhttp_send_error(req, HTTP_NOTFOUND, "Not Found");
		return;
	}
	fp = open_memstream(&text, &len);
	if (fp == NULL || stats_write_prometheus(fp) < 0) {
		if (fp != NULL)
			fclose(fp);
		free(text);
		evhttp_send_error(req, HTTP_SERVUNAVAIL, "No counters");
		return;
	}
	fclose(fp);
	out = evbuffer_new();
	evbuffer_add(out, text, len);
	free(text);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
	    "text/plain; version=0.0.4; charset=utf-8");
	evhttp_send_reply(req, HTTP_OK, "OK", out);
	evbuffer_free(out);
}

static void *
metrics_main(void *arg)
{
	(void)arg;
	event_base_dispatch(mbase);
	return NULL;
}

int
metrics_start(const char **error_r)
{
	if (metrics_fd < 0)
		return 0;
	mbase = event_base_new();
	mhttp = mbase ? evhttp_new(mbase) : NULL;
	if (mhttp == NULL || evhttp_accept_socket(mhttp, metrics_fd) < 0) {
		*error_r = "metrics_listen: cannot start the HTTP server";
		return -1;
	}
	evhttp_set_timeout(mhttp, 10);
	evhttp_set_max_headers_size(mhttp, 8192);
	evhttp_set_max_body_size(mhttp, 4096);
	evhttp_set_allowed_methods(mhttp, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST |
	    EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE);
	evhttp_set_gencb(mhttp, metrics_cb, NULL);
	if (pipe2(mstop, O_CLOEXEC) < 0 ||
	    (mstop_ev = event_new(mbase, mstop[0], EV_READ, stop_cb, mbase)) == NULL ||
	    event_add(mstop_ev, NULL) < 0) {
		*error_r = "metrics_listen: cannot make its stop pipe";
		return -1;
	}
	if (pthread_create(&mthread, NULL, metrics_main, NULL) != 0) {
		*error_r = "metrics_listen: cannot start its thread";
		return -1;
	}
	mrunning = 1;
	return 0;
}

void
metrics_stop(void)
{
	if (mrunning) {
		if (write(mstop[1], "x", 1) < 0)
			return;	/* cannot wake it: the process is on its way out anyway */
		pthread_join(mthread, NULL);
		mrunning = 0;
	}
	if (mstop_ev != NULL)
		event_free(mstop_ev);
	mstop_ev = NULL;
	for (int i = 0; i < 2; i++)
		if (mstop[i] >= 0) {
			close(mstop[i]);
			mstop[i] = -1;
		}
	if (mhttp != NULL)
		evhttp_free(mhttp);
	if (mbase != NULL)
		event_base_free(mbase);
	mhttp = NULL;
	mbase = NULL;
}
